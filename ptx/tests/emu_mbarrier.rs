//! `mbarrier` in the PTX emulator: phases, arrival and transaction counts, state tokens
//! and parity waits, the scheduler parking failed waits (no livelock, deadlock reported
//! with the barrier), and each sanitizer check with a planted misuse. Every kernel is also
//! assembled by ptxas for sm_90a (`all_kernels_assemble_for_sm90a`) to prove it is real PTX.

use frugal_ptx::catalogue::Target;
use frugal_ptx::emu::{launch, Checks, DeviceMemory, LaunchDims, Module};
use frugal_ptx::error::PtxError;
use frugal_ptx::ptxas::Ptxas;

const HEADER: &str = ".version 8.3\n.target sm_90a\n.address_size 64\n";

fn dims(block: u32) -> LaunchDims {
    LaunchDims {
        grid: [1, 1, 1],
        block: [block, 1, 1],
        dynamic_shared_bytes: 0,
    }
}

/// A kernel with a 64-byte shared `bar` (barriers at 0, 8, ...), 1 KiB shared `data`,
/// `%rd1` = the buffer parameter, `%r3` = tid, `%rd2` = buffer + 4·tid.
fn kernel(body: &str) -> String {
    format!(
        "{HEADER}
.visible .entry k(.param .u64 buf)
{{
    .reg .pred %p<8>;
    .reg .b32 %r<32>;
    .reg .b64 %rd<16>;
    .shared .align 8 .b8 bar[64];
    .shared .align 16 .b8 data[1024];
    ld.param.u64 %rd1, [buf];
    mov.u32 %r3, %tid.x;
    mul.wide.u32 %rd3, %r3, 4;
    add.s64 %rd2, %rd1, %rd3;
{body}
    ret;
}}
"
    )
}

fn run(text: &str, block: u32, init: &[u8]) -> Result<Vec<u8>, PtxError> {
    let module = Module::parse(text).unwrap_or_else(|e| panic!("parse: {e}"));
    let mut mem = DeviceMemory::new();
    let buf = mem.alloc(init.len(), "buf");
    mem.write(buf, init)?;
    launch(
        &module,
        "k",
        &dims(block),
        &buf.to_le_bytes(),
        &mut mem,
        &Checks::default(),
    )?;
    let mut out = vec![0u8; init.len()];
    mem.read(buf, &mut out)?;
    Ok(out)
}

fn words(b: &[u8]) -> Vec<u32> {
    b.chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Thread 0 initialises the barrier at `bar` for `count` arrivals, then a bar.sync.
fn init(count: u32) -> String {
    format!(
        "
    setp.eq.u32 %p7, %r3, 0;
    @%p7 mbarrier.init.shared::cta.b64 [bar], {count};
    bar.sync 0;"
    )
}

/// Every thread stores `tid * 3 + round` to data[tid], arrives, waits (spinning on
/// try_wait with the state), then reads its neighbour's value.
fn exchange_rounds(wait: &str) -> String {
    let mut body = init(64);
    for round in 0..3 {
        body.push_str(&format!(
            "
    mul.lo.u32 %r4, %r3, 3;
    add.u32 %r4, %r4, {round};
    mov.u32 %r5, data;
    shl.b32 %r6, %r3, 2;
    add.u32 %r6, %r5, %r6;
    st.shared.u32 [%r6], %r4;
    mbarrier.arrive.shared::cta.b64 %rd5, [bar];
WAIT{round}:
    {wait}
    @!%p1 bra WAIT{round};
    add.u32 %r7, %r3, 1;
    and.b32 %r7, %r7, 63;
    shl.b32 %r7, %r7, 2;
    add.u32 %r7, %r5, %r7;
    ld.shared.u32 %r8, [%r7];
    ld.global.u32 %r9, [%rd2];
    add.u32 %r9, %r9, %r8;
    st.global.u32 [%rd2], %r9;
    bar.sync 0;",
            wait = wait.replace("ROUND", &round.to_string())
        ));
    }
    body
}

fn exchange_expected() -> Vec<u32> {
    (0..64u32)
        .map(|t| (0..3).map(|round| ((t + 1) % 64) * 3 + round).sum())
        .collect()
}

#[test]
fn arrive_then_try_wait_with_the_state_orders_shared_memory() {
    let text = kernel(&exchange_rounds(
        "mbarrier.try_wait.shared::cta.b64 %p1, [bar], %rd5;",
    ));
    let out = run(&text, 64, &[0u8; 256]).unwrap();
    assert_eq!(words(&out), exchange_expected());
}

#[test]
fn parity_waits_track_phases_and_take_a_suspend_hint() {
    // Round r waits for the phase of parity r % 2 (the phase numbers are 0, 1, 2).
    let text = kernel(&exchange_rounds(
        "and.b32 %r10, ROUND, 1;
    mbarrier.try_wait.parity.shared::cta.b64 %p1, [bar], %r10, 1000;",
    ));
    let text = text.replace("and.b32 %r10, 0, 1;", "mov.u32 %r10, 0;");
    let text = text.replace("and.b32 %r10, 1, 1;", "mov.u32 %r10, 1;");
    let text = text.replace("and.b32 %r10, 2, 1;", "mov.u32 %r10, 0;");
    let out = run(&text, 64, &[0u8; 256]).unwrap();
    assert_eq!(words(&out), exchange_expected());
}

#[test]
fn test_wait_polls_and_a_warp_that_does_not_spin_still_progresses() {
    // Warp 0 polls once with test_wait (the phase is not complete: warp 1 has not
    // arrived), records the answer, and only then arrives; warp 1 arrives after a
    // bar.sync with warp 0. The scheduler must not wait forever on warp 0's failed poll.
    let body = format!(
        "{}
    setp.lt.u32 %p2, %r3, 32;
    @!%p2 bra LATE;
    mbarrier.test_wait.parity.shared::cta.b64 %p1, [bar], 0;
    selp.u32 %r4, 1, 0, %p1;
    st.global.u32 [%rd2], %r4;
    mbarrier.arrive.shared::cta.b64 %rd5, [bar];
    bra.uni JOIN;
LATE:
    mbarrier.arrive.shared::cta.b64 %rd5, [bar];
JOIN:
SPIN:
    mbarrier.try_wait.parity.shared::cta.b64 %p1, [bar], 0;
    @!%p1 bra SPIN;
    mbarrier.test_wait.parity.shared::cta.b64 %p3, [bar], 0;
    selp.u32 %r4, 10, 0, %p3;
    ld.global.u32 %r5, [%rd2];
    add.u32 %r5, %r5, %r4;
    st.global.u32 [%rd2], %r5;",
        init(64)
    );
    let out = run(&kernel(&body), 64, &[0u8; 256]).unwrap();
    assert_eq!(words(&out), vec![10u32; 64]);
}

#[test]
fn a_bounded_poll_that_gives_up_is_not_taken_for_a_deadlock() {
    // Count 32: only warp 0 arrives, and only after polling five times in vain; warp 1
    // spins until the phase completes. Each failed poll parks warp 0; its counter changes,
    // so the scheduler keeps waking it until it gives up and arrives.
    let body = format!(
        "{}
    setp.ge.u32 %p2, %r3, 32;
    @%p2 bra SPIN;
    mov.u32 %r10, 0;
POLL:
    mbarrier.test_wait.parity.shared::cta.b64 %p1, [bar], 0;
    @%p1 bra ARRIVE;
    add.u32 %r10, %r10, 1;
    setp.lt.u32 %p3, %r10, 5;
    @%p3 bra POLL;
ARRIVE:
    mbarrier.arrive.shared::cta.b64 %rd5, [bar];
    st.global.u32 [%rd2], %r10;
SPIN:
    mbarrier.try_wait.parity.shared::cta.b64 %p1, [bar], 0;
    @!%p1 bra SPIN;",
        init(32)
    );
    let out = run(&kernel(&body), 64, &[0u8; 256]).unwrap();
    let w = words(&out);
    assert_eq!(&w[..32], &[5u32; 32][..]);
    assert_eq!(&w[32..], &[0u32; 32][..]);
}

#[test]
fn expect_tx_holds_the_phase_until_complete_tx_and_pending_count_reads_the_state() {
    // One thread: init(1), arrive.expect_tx(32) (arrivals 0 but 32 bytes owed), the
    // phase stays open; complete_tx 16 twice closes it. pending_count of a state from an
    // arrive on a count-3 barrier reads 2.
    let body = "
    setp.eq.u32 %p7, %r3, 0;
    @!%p7 bra END;
    mbarrier.init.shared::cta.b64 [bar], 1;
    mbarrier.arrive.expect_tx.shared::cta.b64 %rd5, [bar], 32;
    mbarrier.test_wait.shared::cta.b64 %p1, [bar], %rd5;
    mbarrier.complete_tx.shared::cta.b64 [bar], 16;
    mbarrier.test_wait.shared::cta.b64 %p2, [bar], %rd5;
    mbarrier.complete_tx.shared::cta.b64 [bar], 16;
    mbarrier.test_wait.shared::cta.b64 %p3, [bar], %rd5;
    selp.u32 %r4, 1, 0, %p1;
    selp.u32 %r5, 2, 0, %p2;
    selp.u32 %r6, 4, 0, %p3;
    add.u32 %r4, %r4, %r5;
    add.u32 %r4, %r4, %r6;
    st.global.u32 [%rd1], %r4;
    mbarrier.init.shared::cta.b64 [bar+8], 3;
    mbarrier.expect_tx.shared::cta.b64 [bar+8], 64;
    mbarrier.arrive.shared::cta.b64 %rd6, [bar+8];
    mbarrier.pending_count.b64 %r7, %rd6;
    st.global.u32 [%rd1+4], %r7;
    mbarrier.arrive.shared::cta.b64 %rd6, [bar+8], 2;
    mbarrier.pending_count.b64 %r7, %rd6;
    st.global.u32 [%rd1+8], %r7;
END:";
    let out = run(&kernel(body), 32, &[0u8; 12]).unwrap();
    assert_eq!(words(&out), vec![4, 2, 0]);
}

#[test]
fn arrive_drop_lowers_the_count_of_later_phases() {
    // Count 64: warp 1 arrives once with arrive_drop and exits; warp 0 then completes
    // three phases alone (each needs only its 32 arrivals after the drop).
    let body = format!(
        "{}
    setp.ge.u32 %p2, %r3, 32;
    @%p2 mbarrier.arrive_drop.shared::cta.b64 _, [bar];
    @%p2 bra END;
    mov.u32 %r10, 0;
    mov.u32 %r11, 0;
LOOP:
    mbarrier.arrive.shared::cta.b64 %rd5, [bar];
SPIN:
    mbarrier.try_wait.parity.shared::cta.b64 %p1, [bar], %r11;
    @!%p1 bra SPIN;
    xor.b32 %r11, %r11, 1;
    add.u32 %r10, %r10, 1;
    setp.lt.u32 %p3, %r10, 3;
    @%p3 bra LOOP;
    st.global.u32 [%rd2], %r10;
END:",
        init(64)
    );
    let out = run(&kernel(&body), 64, &[0u8; 256]).unwrap();
    let w = words(&out);
    assert_eq!(&w[..32], &[3u32; 32][..]);
    assert_eq!(&w[32..], &[0u32; 32][..]);
}

#[test]
fn a_wait_nobody_completes_is_a_deadlock_naming_the_barrier() {
    // Count 64 but warp 1 never arrives: it waits too. Without parking the scheduler
    // would spin until the step limit; it reports the barrier instead.
    let body = format!(
        "{}
    setp.lt.u32 %p2, %r3, 32;
    @%p2 mbarrier.arrive.shared::cta.b64 %rd5, [bar];
SPIN:
    mbarrier.try_wait.parity.shared::cta.b64 %p1, [bar], 0;
    @!%p1 bra SPIN;",
        init(64)
    );
    match run(&kernel(&body), 64, &[0u8; 256]) {
        Err(PtxError::Deadlock { detail, .. }) => {
            assert!(
                detail.contains("mbarrier at shared 0x0 for phase parity 0"),
                "{detail}"
            );
            assert!(detail.contains("32 of 64 arrivals pending"), "{detail}");
        }
        other => panic!("expected a deadlock, got {other:?}"),
    }
}

fn misuse(body: &str, block: u32) -> String {
    match run(&kernel(body), block, &[0u8; 256]) {
        Err(PtxError::AsyncMisuse { detail, .. }) => detail,
        other => panic!("expected an async misuse, got {other:?}"),
    }
}

#[test]
fn arriving_on_an_uninitialised_barrier_is_reported() {
    let d = misuse("    mbarrier.arrive.shared::cta.b64 %rd5, [bar];", 32);
    assert!(d.contains("not an initialised mbarrier"), "{d}");
    // ... and after inval too.
    let d = misuse(
        "    mbarrier.init.shared::cta.b64 [bar], 32;
    mbarrier.inval.shared::cta.b64 [bar];
    mbarrier.arrive.shared::cta.b64 %rd5, [bar];",
        32,
    );
    assert!(d.contains("not an initialised mbarrier"), "{d}");
}

#[test]
fn more_arrivals_than_the_count_are_reported() {
    let d = misuse(
        "    setp.eq.u32 %p7, %r3, 0;
    @%p7 mbarrier.init.shared::cta.b64 [bar], 8;
    bar.sync 0;
    @%p7 mbarrier.arrive.shared::cta.b64 %rd5, [bar], 9;",
        32,
    );
    assert!(d.contains("arrivals pending"), "{d}");
}

#[test]
fn tx_count_underflow_is_reported() {
    let d = misuse(
        "    setp.eq.u32 %p7, %r3, 0;
    @!%p7 bra END;
    mbarrier.init.shared::cta.b64 [bar], 1;
    mbarrier.expect_tx.shared::cta.b64 [bar], 16;
    mbarrier.complete_tx.shared::cta.b64 [bar], 32;
END:",
        32,
    );
    assert!(d.contains("tx-count underflow"), "{d}");
}

#[test]
fn a_state_two_phases_old_is_reported() {
    let d = misuse(
        "    setp.eq.u32 %p7, %r3, 0;
    @!%p7 bra END;
    mbarrier.init.shared::cta.b64 [bar], 1;
    mbarrier.arrive.shared::cta.b64 %rd5, [bar];
    mbarrier.arrive.shared::cta.b64 %rd6, [bar];
    mbarrier.arrive.shared::cta.b64 %rd6, [bar];
    mbarrier.test_wait.shared::cta.b64 %p1, [bar], %rd5;
END:",
        32,
    );
    assert!(d.contains("current or the preceding phase"), "{d}");
}

#[test]
fn ordinary_stores_and_loads_of_a_live_barrier_are_reported() {
    let d = misuse(
        "    mbarrier.init.shared::cta.b64 [bar], 32;
    st.shared.u32 [bar+4], %r3;",
        32,
    );
    assert!(d.contains("touches the live mbarrier at 0x0"), "{d}");
    let d = misuse(
        "    mbarrier.init.shared::cta.b64 [bar+8], 32;
    ld.shared.u64 %rd9, [bar+8];",
        32,
    );
    assert!(d.contains("live mbarrier at 0x8"), "{d}");
    // After inval the bytes are ordinary memory again.
    run(
        &kernel(
            "    setp.eq.u32 %p7, %r3, 0;
    @!%p7 bra END;
    mbarrier.init.shared::cta.b64 [bar], 32;
    mbarrier.inval.shared::cta.b64 [bar];
    st.shared.u32 [bar], %r3;
END:",
        ),
        32,
        &[0u8; 256],
    )
    .unwrap();
}

#[test]
fn reading_data_without_waiting_on_the_barrier_is_a_race() {
    // The exchange, but the wait is skipped: the neighbour's store is unordered.
    let text = kernel(&exchange_rounds("setp.eq.u32 %p1, 1, 1;"));
    match run(&text, 64, &[0u8; 256]) {
        Err(PtxError::SharedRace { .. }) => {}
        other => panic!("expected a shared race, got {other:?}"),
    }
}

/// All the kernels above, for ptxas.
fn all_kernels() -> Vec<String> {
    vec![
        kernel(&exchange_rounds(
            "mbarrier.try_wait.shared::cta.b64 %p1, [bar], %rd5;",
        )),
        kernel(
            "    mbarrier.init.shared::cta.b64 [bar], 1;
    mbarrier.arrive.expect_tx.shared::cta.b64 %rd5, [bar], 32;
    mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [bar], 16;
    mbarrier.complete_tx.relaxed.cta.shared::cta.b64 [bar], 16;
    mbarrier.test_wait.shared::cta.b64 %p1, [bar], %rd5;
    mbarrier.test_wait.parity.shared::cta.b64 %p1, [bar], 0;
    mbarrier.try_wait.parity.shared::cta.b64 %p1, [bar], 0, 1000;
    mbarrier.pending_count.b64 %r7, %rd5;
    mbarrier.arrive_drop.shared::cta.b64 _, [bar];
    mbarrier.arrive.release.cta.shared::cta.b64 %rd5, [bar], 2;
    mbarrier.inval.shared::cta.b64 [bar];",
        ),
    ]
}

#[test]
fn all_kernels_assemble_for_sm90a() {
    let ptxas = Ptxas::locate().unwrap_or_else(|e| panic!("{e}"));
    for (i, text) in all_kernels().iter().enumerate() {
        if let Err(e) = ptxas.assemble(&format!("mbarrier{i}"), text, Target::Sm90a) {
            panic!("kernel {i}: {e}\n{text}");
        }
        Module::parse(text).unwrap_or_else(|e| panic!("kernel {i}: {e}"));
    }
}
