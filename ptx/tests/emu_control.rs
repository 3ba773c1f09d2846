//! Control flow, synchronisation and the sanitizer of the PTX emulator: divergence and
//! reconvergence (nested if/else, loops with per-thread trip counts, early exit),
//! barriers across warps, shuffles and votes after reconvergence, deadlock and divergent
//! barrier detection, each sanitizer check with a planted bug and its fix, launch errors,
//! and parser robustness.
//!
//! Expected values come from plain Rust models of what each thread computes, and from
//! the CUDA-level semantics of the warp intrinsics (`__shfl_*_sync(width)`, `__ballot_sync`).

use frugal_ptx::emu::{launch, Checks, DeviceMemory, LaunchDims, Module};
use frugal_ptx::error::{PtxError, Space};

const HEADER: &str = ".version 8.0\n.target sm_80\n.address_size 64\n";

fn dims(grid: u32, block: u32) -> LaunchDims {
    LaunchDims {
        grid: [grid, 1, 1],
        block: [block, 1, 1],
        dynamic_shared_bytes: 0,
    }
}

/// Runs `kernel` (the module's first kernel) with one buffer parameter initialised to
/// `init`; returns the buffer afterwards, or the launch error.
fn run(text: &str, d: LaunchDims, init: &[u8], checks: Checks) -> Result<Vec<u8>, PtxError> {
    let module = Module::parse(text).unwrap_or_else(|e| panic!("parse: {e}"));
    let name = module.kernel_names()[0].to_string();
    let mut mem = DeviceMemory::new();
    let buf = mem.alloc(init.len(), "buf");
    mem.write(buf, init)?;
    launch(&module, &name, &d, &buf.to_le_bytes(), &mut mem, &checks)?;
    let mut out = vec![0u8; init.len()];
    mem.read(buf, &mut out)?;
    Ok(out)
}

fn words(b: &[u8]) -> Vec<u32> {
    b.chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// A kernel with the usual prologue: `%rd1` = buffer, `%r0` = global thread index,
/// `%rd2` = buffer + 4·`%r0`.
fn kernel(regs: &str, body: &str) -> String {
    format!(
        "{HEADER}
.visible .entry k(.param .u64 buf)
{{
    .reg .pred %p<8>;
    .reg .b32 %r<32>;
    .reg .b64 %rd<8>;
{regs}
    ld.param.u64 %rd1, [buf];
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mad.lo.s32 %r0, %r1, %r2, %r3;
    mul.wide.u32 %rd3, %r0, 4;
    add.s64 %rd2, %rd1, %rd3;
{body}
    ret;
}}
"
    )
}

// ---------------------------------------------------------------- divergence

#[test]
fn nested_if_else_reconverges_for_a_full_warp_ballot() {
    // Path by tid: t%2==0 ? (t%4==0 ? A : B) : (t%3==0 ? C : D); each path adds its own
    // constant; after the outer join a full-mask ballot must see every lane (which only
    // works if all 32 lanes reconverged), and its popcount is added.
    let body = "
    mov.u32 %r10, 0;
    and.b32 %r4, %r3, 1;
    setp.ne.u32 %p1, %r4, 0;
    @%p1 bra ODD;
    and.b32 %r5, %r3, 3;
    setp.ne.u32 %p2, %r5, 0;
    @%p2 bra EVEN_B;
    add.s32 %r10, %r10, 100;
    bra.uni EVEN_JOIN;
EVEN_B:
    add.s32 %r10, %r10, 200;
EVEN_JOIN:
    add.s32 %r10, %r10, 1;
    bra.uni JOIN;
ODD:
    rem.u32 %r6, %r3, 3;
    setp.eq.u32 %p3, %r6, 0;
    @!%p3 bra ODD_D;
    add.s32 %r10, %r10, 300;
    bra.uni JOIN;
ODD_D:
    add.s32 %r10, %r10, 400;
JOIN:
    setp.ne.u32 %p4, %r10, 0;
    vote.sync.ballot.b32 %r11, %p4, 0xffffffff;
    popc.b32 %r12, %r11;
    add.s32 %r10, %r10, %r12;
    st.global.u32 [%rd2], %r10;";
    let out = run(
        &kernel("", body),
        dims(2, 64),
        &[0u8; 4 * 128],
        Checks::default(),
    )
    .unwrap();
    for (i, v) in words(&out).into_iter().enumerate() {
        let t = (i % 64) as u32;
        let path = if t.is_multiple_of(2) {
            (if t.is_multiple_of(4) { 100 } else { 200 }) + 1
        } else if t.is_multiple_of(3) {
            300
        } else {
            400
        };
        assert_eq!(v, path + 32, "thread {i}");
    }
}

#[test]
fn loops_with_per_thread_trip_counts_and_break_then_shuffle_reduce() {
    // Outer loop runs t%7+1 times; the inner loop runs (outer index + t%3) times; the
    // outer loop breaks early when the running sum exceeds 40. Afterwards a butterfly
    // shuffle reduction over the warp (needs all lanes back together).
    let body = "
    rem.u32 %r4, %r3, 7;
    add.s32 %r4, %r4, 1;
    rem.u32 %r5, %r3, 3;
    mov.u32 %r10, 0;
    mov.u32 %r6, 0;
OUTER:
    add.s32 %r7, %r6, %r5;
    mov.u32 %r8, 0;
    setp.ge.u32 %p1, %r8, %r7;
    @%p1 bra INNER_DONE;
INNER:
    add.s32 %r10, %r10, %r8;
    add.s32 %r10, %r10, 1;
    add.s32 %r8, %r8, 1;
    setp.lt.u32 %p1, %r8, %r7;
    @%p1 bra INNER;
INNER_DONE:
    setp.gt.u32 %p2, %r10, 40;
    @%p2 bra OUT;
    add.s32 %r6, %r6, 1;
    setp.lt.u32 %p3, %r6, %r4;
    @%p3 bra OUTER;
OUT:
    mov.u32 %r11, %r10;
    shfl.sync.bfly.b32 %r12, %r11, 16, 0x1f, 0xffffffff;
    add.s32 %r11, %r11, %r12;
    shfl.sync.bfly.b32 %r12, %r11, 8, 0x1f, 0xffffffff;
    add.s32 %r11, %r11, %r12;
    shfl.sync.bfly.b32 %r12, %r11, 4, 0x1f, 0xffffffff;
    add.s32 %r11, %r11, %r12;
    shfl.sync.bfly.b32 %r12, %r11, 2, 0x1f, 0xffffffff;
    add.s32 %r11, %r11, %r12;
    shfl.sync.bfly.b32 %r12, %r11, 1, 0x1f, 0xffffffff;
    add.s32 %r11, %r11, %r12;
    st.global.v2.u32 [%rd3+0], {%r10, %r11};";
    // Each thread stores 8 bytes at 8*t: recompute the address for the v2 store.
    let body = body.replace(
        "st.global.v2.u32 [%rd3+0]",
        "mul.wide.u32 %rd3, %r0, 8;\n    add.s64 %rd3, %rd1, %rd3;\n    st.global.v2.u32 [%rd3]",
    );
    let out = words(
        &run(
            &kernel("", &body),
            dims(1, 96),
            &[0u8; 8 * 96],
            Checks::default(),
        )
        .unwrap(),
    );
    let model = |t: u32| {
        let mut sum = 0u32;
        for i in 0..(t % 7 + 1) {
            for j in 0..(i + t % 3) {
                sum += j + 1;
            }
            if sum > 40 {
                break;
            }
        }
        sum
    };
    for t in 0..96u32 {
        let warp_total: u32 = (t / 32 * 32..t / 32 * 32 + 32).map(model).sum();
        assert_eq!(out[2 * t as usize], model(t), "thread {t} sum");
        assert_eq!(out[2 * t as usize + 1], warp_total, "thread {t} warp total");
    }
}

#[test]
fn early_exit_of_some_lanes_then_warp_ops_on_the_rest() {
    // Threads with t%5==4 exit; the others take a ballot (membermask from %lanemask-free
    // activemask: a ballot of true over the survivors) and shuffle down within it.
    let body = "
    rem.u32 %r4, %r3, 5;
    setp.eq.u32 %p1, %r4, 4;
    @%p1 exit;
    setp.eq.u32 %p2, %r4, %r4;
    vote.sync.ballot.b32 %r5, %p2, 0xffffffff;
    mov.u32 %r6, %laneid;
    shfl.sync.idx.b32 %r7, %r6, 0, 0x1f, %r5;
    add.s32 %r8, %r5, %r7;
    st.global.u32 [%rd2], %r8;";
    let out = words(
        &run(
            &kernel("", body),
            dims(1, 40),
            &[0xAAu8; 4 * 40],
            Checks::default(),
        )
        .unwrap(),
    );
    for t in 0..40u32 {
        if t % 5 == 4 {
            assert_eq!(
                out[t as usize], 0xAAAA_AAAA,
                "exited thread {t} wrote nothing"
            );
            continue;
        }
        let warp = t / 32;
        let survivors: u32 = (0..32)
            .filter(|l| warp * 32 + l < 40 && (warp * 32 + l) % 5 != 4)
            .map(|l| 1u32 << l)
            .sum();
        assert_eq!(
            out[t as usize], survivors,
            "thread {t}: ballot of the survivors plus lane 0's lane id (0)"
        );
    }
}

#[test]
fn barriers_order_shared_memory_across_warps_in_rounds() {
    // 128 threads, 4 warps; round r: thread t writes v[t] = v[t] + v[(t+1+r) % 128] read
    // from shared after a barrier; divergent amounts of dummy work before each barrier.
    let body = "
    mov.u32 %r20, sh;
    shl.b32 %r4, %r3, 2;
    add.s32 %r5, %r20, %r4;
    st.shared.u32 [%r5], %r3;
    mov.u32 %r6, 0;
ROUND:
    rem.u32 %r7, %r3, 13;
    mov.u32 %r8, 0;
SPIN:
    add.s32 %r8, %r8, 1;
    setp.le.u32 %p1, %r8, %r7;
    @%p1 bra SPIN;
    bar.sync 0;
    add.s32 %r9, %r3, 1;
    add.s32 %r9, %r9, %r6;
    and.b32 %r9, %r9, 127;
    shl.b32 %r9, %r9, 2;
    add.s32 %r9, %r20, %r9;
    ld.shared.u32 %r10, [%r9];
    ld.shared.u32 %r11, [%r5];
    add.s32 %r11, %r11, %r10;
    barrier.sync 0;
    st.shared.u32 [%r5], %r11;
    add.s32 %r6, %r6, 1;
    setp.lt.u32 %p2, %r6, 3;
    @%p2 bra ROUND;
    bar.sync 0;
    ld.shared.u32 %r12, [%r5];
    st.global.u32 [%rd2], %r12;";
    let out = words(
        &run(
            &kernel(".shared .align 4 .b32 sh[128];", body),
            dims(1, 128),
            &[0u8; 512],
            Checks::default(),
        )
        .unwrap(),
    );
    let mut v: Vec<u32> = (0..128).collect();
    for r in 0..3 {
        v = (0..128).map(|t| v[t] + v[(t + 1 + r) % 128]).collect();
    }
    assert_eq!(out, v);
}

#[test]
fn barrier_ignores_warps_that_exited() {
    // Warp 1 exits at once; warp 0 still passes its barrier.
    let body = "
    setp.ge.u32 %p1, %r3, 32;
    @%p1 exit;
    bar.sync 0;
    st.global.u32 [%rd2], 7;";
    let out = words(
        &run(
            &kernel("", body),
            dims(1, 64),
            &[0u8; 256],
            Checks::default(),
        )
        .unwrap(),
    );
    assert_eq!(&out[..32], &[7; 32]);
    assert_eq!(&out[32..], &[0; 32]);
}

#[test]
fn divergent_barrier_is_an_error_not_a_hang() {
    let body = "
    setp.lt.u32 %p1, %r3, 16;
    @!%p1 bra SKIP;
    bar.sync 0;
SKIP:
    st.global.u32 [%rd2], 1;";
    match run(
        &kernel("", body),
        dims(1, 32),
        &[0u8; 128],
        Checks::default(),
    ) {
        Err(PtxError::Divergence {
            kernel,
            instruction,
            active,
            required,
            line,
            ..
        }) => {
            assert_eq!(kernel, "k");
            assert_eq!(instruction, "bar.sync");
            assert_eq!((active, required), (0x0000_FFFF, 0xFFFF_FFFF));
            assert!(line > 0);
        }
        other => panic!("expected a divergence error, got {other:?}"),
    }
}

#[test]
fn barriers_that_cannot_complete_are_a_deadlock() {
    // Two warps wait at different barriers.
    let body = "
    setp.lt.u32 %p1, %r3, 32;
    @%p1 bra A;
    bar.sync 1;
    bra.uni END;
A:
    bar.sync 0;
END:
    st.global.u32 [%rd2], 1;";
    match run(
        &kernel("", body),
        dims(1, 64),
        &[0u8; 256],
        Checks::default(),
    ) {
        Err(PtxError::Deadlock { kernel, detail, .. }) => {
            assert_eq!(kernel, "k");
            assert!(
                detail.contains("barrier 1") && detail.contains("barrier 0"),
                "{detail}"
            );
        }
        other => panic!("expected a deadlock, got {other:?}"),
    }
    // A counted barrier waiting for more threads than exist.
    let body = "bar.sync 1, 64;\n    st.global.u32 [%rd2], 1;";
    assert!(matches!(
        run(
            &kernel("", body),
            dims(1, 32),
            &[0u8; 128],
            Checks::default()
        ),
        Err(PtxError::Deadlock { .. })
    ));
    // The same counted barrier with enough threads passes.
    assert!(run(
        &kernel("", body),
        dims(1, 64),
        &[0u8; 256],
        Checks::default()
    )
    .is_ok());
}

// ---------------------------------------------------------------- shuffles and votes

/// CUDA semantics of the shuffles with a `width` (a power of two up to 32).
fn shfl_model(mode: &str, lane: u32, arg: u32, width: u32) -> (u32, bool) {
    let seg = lane & !(width - 1);
    match mode {
        "up" => {
            if lane - seg >= arg {
                (lane - arg, true)
            } else {
                (lane, false)
            }
        }
        "down" => {
            if lane - seg + arg < width {
                (lane + arg, true)
            } else {
                (lane, false)
            }
        }
        "bfly" => {
            let j = lane ^ arg;
            if j < seg + width {
                (j, true)
            } else {
                (lane, false)
            }
        }
        _ => (seg + (arg % width), true),
    }
}

#[test]
fn shfl_modes_widths_clamps_and_predicate() {
    for mode in ["up", "down", "bfly", "idx"] {
        for width in [32u32, 16, 8, 4] {
            for arg in [0u32, 1, 3, 5] {
                if mode == "bfly" && arg >= width {
                    continue;
                }
                // c = ((32 - width) << 8) | clamp; clamp is 0 for up, 0x1f otherwise.
                let clamp = if mode == "up" { 0 } else { 0x1f };
                let c = ((32 - width) << 8) | clamp;
                // idx takes a per-lane source (lane * 3 + arg).
                let b = if mode == "idx" {
                    "%r6".to_string()
                } else {
                    arg.to_string()
                };
                let body = format!(
                    "
    mov.u32 %r4, %laneid;
    mad.lo.s32 %r5, %r4, 1000, 7;
    mad.lo.s32 %r6, %r4, 3, {arg};
    shfl.sync.{mode}.b32 %r7|%p1, %r5, {b}, {c}, 0xffffffff;
    selp.u32 %r8, 1, 0, %p1;
    mul.wide.u32 %rd3, %r0, 8;
    add.s64 %rd3, %rd1, %rd3;
    st.global.v2.u32 [%rd3], {{%r7, %r8}};"
                );
                let out = words(
                    &run(
                        &kernel("", &body),
                        dims(1, 64),
                        &[0u8; 512],
                        Checks::default(),
                    )
                    .unwrap(),
                );
                for t in 0..64u32 {
                    let lane = t % 32;
                    let a = if mode == "idx" { lane * 3 + arg } else { arg };
                    let (src, p) = shfl_model(mode, lane, a, width);
                    assert_eq!(
                        (out[2 * t as usize], out[2 * t as usize + 1]),
                        (src * 1000 + 7, u32::from(p)),
                        "shfl.{mode} width {width} arg {arg} lane {lane}"
                    );
                }
            }
        }
    }
}

#[test]
fn vote_all_any_uni_ballot() {
    // Predicate q = (t % k == 0) for k = 1, 2, 33 (all, some, one lane).
    for k in [1u32, 2, 33] {
        let body = format!(
            "
    rem.u32 %r4, %r3, {k};
    setp.eq.u32 %p1, %r4, 0;
    vote.sync.all.pred %p2, %p1, 0xffffffff;
    vote.sync.any.pred %p3, %p1, 0xffffffff;
    vote.sync.uni.pred %p4, %p1, 0xffffffff;
    vote.sync.ballot.b32 %r5, %p1, 0xffffffff;
    vote.sync.ballot.b32 %r9, !%p1, 0xffffffff;
    selp.u32 %r6, 1, 0, %p2;
    selp.u32 %r7, 2, 0, %p3;
    selp.u32 %r8, 4, 0, %p4;
    or.b32 %r6, %r6, %r7;
    or.b32 %r6, %r6, %r8;
    mul.wide.u32 %rd3, %r0, 12;
    add.s64 %rd3, %rd1, %rd3;
    st.global.u32 [%rd3], %r6;
    st.global.u32 [%rd3+4], %r5;
    st.global.u32 [%rd3+8], %r9;"
        );
        let out = words(
            &run(
                &kernel("", &body),
                dims(1, 32),
                &[0u8; 384],
                Checks::default(),
            )
            .unwrap(),
        );
        let ballot: u32 = (0..32).filter(|t| t % k == 0).map(|t| 1u32 << t).sum();
        let all = ballot == u32::MAX;
        let any = ballot != 0;
        let uni = all || !any;
        for t in 0..32 {
            assert_eq!(
                out[3 * t],
                u32::from(all) | u32::from(any) << 1 | u32::from(uni) << 2,
                "k={k} lane {t}"
            );
            assert_eq!(out[3 * t + 1], ballot);
            assert_eq!(out[3 * t + 2], !ballot);
        }
    }
}

#[test]
fn activemask_and_redux_inside_a_divergent_branch() {
    // Lanes with t%3 != 0 take the branch; inside it activemask shows them, and redux
    // over that mask reduces their tids.
    let body = "
    rem.u32 %r4, %r3, 3;
    setp.eq.u32 %p1, %r4, 0;
    mov.u32 %r5, 0;
    mov.u32 %r6, 0;
    mov.u32 %r7, 0;
    @%p1 bra SKIP;
    activemask.b32 %r5;
    redux.sync.add.u32 %r6, %r3, %r5;
    redux.sync.max.s32 %r7, %r3, %r5;
SKIP:
    mul.wide.u32 %rd3, %r0, 12;
    add.s64 %rd3, %rd1, %rd3;
    st.global.u32 [%rd3], %r5;
    st.global.u32 [%rd3+4], %r6;
    st.global.u32 [%rd3+8], %r7;";
    let out = words(
        &run(
            &kernel("", body),
            dims(1, 32),
            &[0u8; 384],
            Checks::default(),
        )
        .unwrap(),
    );
    let mask: u32 = (0..32).filter(|t| t % 3 != 0).map(|t| 1u32 << t).sum();
    let sum: u32 = (0..32).filter(|t| t % 3 != 0).sum();
    for t in 0..32u32 {
        let want = if t % 3 == 0 {
            [0, 0, 0]
        } else {
            [mask, sum, 31]
        };
        assert_eq!(&out[3 * t as usize..3 * t as usize + 3], &want, "lane {t}");
    }
}

#[test]
fn shfl_with_unconverged_member_lanes_is_an_error() {
    let body = "
    setp.lt.u32 %p1, %r3, 8;
    @!%p1 bra SKIP;
    shfl.sync.bfly.b32 %r4, %r3, 1, 0x1f, 0xffffffff;
    st.global.u32 [%rd2], %r4;
SKIP:";
    assert!(matches!(
        run(&kernel("", body), dims(1, 32), &[0u8; 128], Checks::default()),
        Err(PtxError::Divergence { instruction, .. }) if instruction == "shfl.sync"
    ));
}

#[test]
fn mma_and_ldmatrix_need_the_whole_warp() {
    let mma = "
    mov.b32 %r10, 0x3f803f80;
    mov.f32 %f1, 0f00000000;
    setp.lt.u32 %p1, %r3, 16;
    @%p1 mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f2, %f3, %f4, %f5}, {%r10, %r10, %r10, %r10}, {%r10, %r10}, {%f1, %f1, %f1, %f1};";
    let regs = ".reg .f32 %f<8>;\n    .shared .align 16 .b8 sh[512];";
    match run(
        &kernel(regs, mma),
        dims(1, 32),
        &[0u8; 128],
        Checks::default(),
    ) {
        Err(PtxError::Divergence {
            instruction,
            active,
            required,
            ..
        }) => {
            assert_eq!(
                (instruction.as_str(), active, required),
                ("mma.sync", 0xFFFF, u32::MAX)
            );
        }
        other => panic!("expected a divergence error, got {other:?}"),
    }
    // The whole warp: all-ones bf16 (1.0) A and B give 16.0 in every element of D.
    let full = mma.replace("@%p1 ", "") + "\n    st.global.f32 [%rd2], %f3;";
    let out = words(
        &run(
            &kernel(regs, &full),
            dims(1, 32),
            &[0u8; 128],
            Checks::default(),
        )
        .unwrap(),
    );
    assert!(out.iter().all(|&v| f32::from_bits(v) == 16.0), "{out:?}");
    let ld = "
    setp.lt.u32 %p1, %r3, 31;
    mov.u32 %r11, sh;
    @%p1 ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%r12}, [%r11];";
    assert!(matches!(
        run(&kernel(regs, ld), dims(1, 32), &[0u8; 128], Checks::default()),
        Err(PtxError::Divergence { instruction, .. }) if instruction == "ldmatrix"
    ));
}

// ---------------------------------------------------------------- sanitizer

#[test]
fn out_of_bounds_global_names_kernel_thread_line_address_and_buffer() {
    // Thread 37 of CTA 1 writes one element past the end of a 64-element buffer.
    let body = "
    st.global.u32 [%rd2], %r0;";
    let text = kernel("", body);
    let module = Module::parse(&text).unwrap();
    let mut mem = DeviceMemory::new();
    let buf = mem.alloc(4 * 101, "activations");
    let err = launch(
        &module,
        "k",
        &dims(2, 64),
        &buf.to_le_bytes(),
        &mut mem,
        &Checks::default(),
    )
    .unwrap_err();
    match &err {
        PtxError::OutOfBounds {
            kernel,
            at,
            line,
            space,
            addr,
            size,
            nearest,
        } => {
            assert_eq!(kernel, "k");
            assert_eq!(at.cta, [1, 0, 0]);
            assert_eq!(at.thread, [37, 0, 0]);
            assert_eq!(*space, Space::Global);
            assert_eq!(*addr, buf + 4 * 101);
            assert_eq!(*size, 4);
            let line_text = text.lines().nth(*line as usize - 1).unwrap();
            assert!(
                line_text.contains("st.global.u32"),
                "line {line} is `{line_text}`"
            );
            let n = nearest.as_ref().unwrap();
            assert_eq!(
                (n.label.as_str(), n.start, n.end),
                ("activations", buf, buf + 404)
            );
        }
        other => panic!("expected OutOfBounds, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("activations")
            && msg.contains("thread (37,0,0)")
            && msg.contains("CTA (1,0,0)"),
        "{msg}"
    );
    // The fixed kernel (a bounds guard) passes.
    let fixed = kernel(
        "",
        "    setp.ge.u32 %p1, %r0, 101;\n    @%p1 bra DONE;\n    st.global.u32 [%rd2], %r0;\nDONE:",
    );
    let module = Module::parse(&fixed).unwrap();
    launch(
        &module,
        "k",
        &dims(2, 64),
        &buf.to_le_bytes(),
        &mut mem,
        &Checks::default(),
    )
    .unwrap();
}

#[test]
fn out_of_bounds_shared_static_and_dynamic() {
    // Static 64 bytes + dynamic region: thread t writes dyn[t]; dynamic size decides.
    let text = kernel(
        ".shared .align 4 .b8 st[64];\n    .extern .shared .align 16 .b8 dyn[];",
        "    mov.u32 %r4, dyn;\n    shl.b32 %r5, %r3, 2;\n    add.s32 %r4, %r4, %r5;\n    st.shared.u32 [%r4], %r3;\n    mov.u32 %r6, st;\n    st.shared.u32 [%r6+60], %r3;",
    );
    let with = |dynb: u32| {
        run(
            &text,
            LaunchDims {
                grid: [1, 1, 1],
                block: [32, 1, 1],
                dynamic_shared_bytes: dynb,
            },
            &[0u8; 128],
            Checks::default(),
        )
    };
    match with(64) {
        Err(PtxError::OutOfBounds {
            space: Space::Shared,
            addr,
            at,
            ..
        }) => {
            assert_eq!(at.thread, [16, 0, 0]);
            assert_eq!(addr, 64 + 64);
        }
        other => panic!("expected a shared OutOfBounds, got {other:?}"),
    }
    assert!(with(128).is_ok());
}

#[test]
fn race_on_shared_memory_is_reported_and_a_barrier_fixes_it() {
    let racy = "
    mov.u32 %r20, sh;
    shl.b32 %r4, %r3, 2;
    add.s32 %r5, %r20, %r4;
    st.shared.u32 [%r5], %r3;
    xor.b32 %r6, %r4, 128;
    add.s32 %r6, %r20, %r6;
    BARRIER
    ld.shared.u32 %r7, [%r6];
    st.global.u32 [%rd2], %r7;";
    let regs = ".shared .align 4 .b32 sh[64];";
    match run(
        &kernel(regs, &racy.replace("BARRIER", "")),
        dims(1, 64),
        &[0u8; 256],
        Checks::default(),
    ) {
        Err(PtxError::SharedRace {
            at,
            writer,
            pending_async,
            addr,
            ..
        }) => {
            // Warp 0 reads before warp 1 has written anything (warps run in order), so the
            // first conflicting read is warp 1's, of a byte warp 0 wrote.
            assert!(!pending_async);
            assert_eq!(
                at.thread[0] ^ 32,
                writer[0],
                "reader and writer are partners"
            );
            assert_eq!(addr, u64::from(writer[0]) * 4);
        }
        Ok(_) => panic!("the race was not reported"),
        Err(e) => panic!("unexpected error {e}"),
    }
    let out = words(
        &run(
            &kernel(regs, &racy.replace("BARRIER", "bar.sync 0;")),
            dims(1, 64),
            &[0u8; 256],
            Checks::default(),
        )
        .unwrap(),
    );
    assert_eq!(out, (0..64u32).map(|t| t ^ 32).collect::<Vec<_>>());
    // With the race check off the racy kernel runs (and warp 0 reads stale zeros).
    let out = words(
        &run(
            &kernel(regs, &racy.replace("BARRIER", "")),
            dims(1, 64),
            &[0u8; 256],
            Checks::none(),
        )
        .unwrap(),
    );
    assert_eq!(&out[..32], &[0; 32]);
}

#[test]
fn warp_level_shared_exchange_needs_bar_warp_sync() {
    let body = "
    mov.u32 %r20, sh;
    shl.b32 %r4, %r3, 2;
    add.s32 %r5, %r20, %r4;
    st.shared.u32 [%r5], %r3;
    SYNC
    xor.b32 %r6, %r4, 4;
    add.s32 %r6, %r20, %r6;
    ld.shared.u32 %r7, [%r6];
    st.global.u32 [%rd2], %r7;";
    let regs = ".shared .align 4 .b32 sh[32];";
    assert!(matches!(
        run(
            &kernel(regs, &body.replace("SYNC", "")),
            dims(1, 32),
            &[0u8; 128],
            Checks::default()
        ),
        Err(PtxError::SharedRace { .. })
    ));
    let out = words(
        &run(
            &kernel(regs, &body.replace("SYNC", "bar.warp.sync 0xffffffff;")),
            dims(1, 32),
            &[0u8; 128],
            Checks::default(),
        )
        .unwrap(),
    );
    assert_eq!(out, (0..32u32).map(|t| t ^ 1).collect::<Vec<_>>());
}

#[test]
fn cp_async_copies_land_at_wait_time() {
    // Each thread copies 16 bytes from global (buf[4t..4t+4]) into shared, then reads
    // them back and stores them at buf[128 + 4t..]. Without the wait the read sees the
    // pending copy: a race error, or with checks off the stale zeros.
    let body = "
    mov.u32 %r20, sh;
    shl.b32 %r4, %r3, 4;
    add.s32 %r5, %r20, %r4;
    mul.wide.u32 %rd4, %r3, 16;
    add.s64 %rd5, %rd1, %rd4;
    cp.async.cg.shared.global [%r5], [%rd5], 16;
    cp.async.commit_group;
    WAIT
    ld.shared.v4.u32 {%r10, %r11, %r12, %r13}, [%r5];
    st.global.v4.u32 [%rd5+512], {%r10, %r11, %r12, %r13};";
    let regs = ".shared .align 16 .b8 sh[512];";
    let init: Vec<u8> = (0..1024u32)
        .map(|i| if i < 512 { (i * 7 + 1) as u8 } else { 0 })
        .collect();
    match run(
        &kernel(regs, &body.replace("WAIT", "")),
        dims(1, 32),
        &init,
        Checks::default(),
    ) {
        Err(PtxError::SharedRace {
            pending_async: true,
            at,
            writer,
            ..
        }) => assert_eq!(at.thread, writer),
        other => panic!("expected a pending cp.async race, got {other:?}"),
    }
    let stale = run(
        &kernel(regs, &body.replace("WAIT", "")),
        dims(1, 32),
        &init,
        Checks::none(),
    )
    .unwrap();
    assert!(
        stale[512..].iter().all(|&b| b == 0),
        "reads before the wait see the old shared contents"
    );
    for wait in ["cp.async.wait_group 0;", "cp.async.wait_all;"] {
        let out = run(
            &kernel(regs, &body.replace("WAIT", wait)),
            dims(1, 32),
            &init,
            Checks::default(),
        )
        .unwrap();
        assert_eq!(&out[512..], &init[..512], "{wait}");
    }
    // src-size zero-fill: copy only 4 of 16 bytes.
    let zf = body
        .replace("[%rd5], 16;", "[%rd5], 16, 4;")
        .replace("WAIT", "cp.async.wait_all;");
    let out = run(&kernel(regs, &zf), dims(1, 32), &init, Checks::default()).unwrap();
    for t in 0..32 {
        assert_eq!(
            &out[512 + 16 * t..512 + 16 * t + 4],
            &init[16 * t..16 * t + 4]
        );
        assert_eq!(&out[512 + 16 * t + 4..512 + 16 * t + 16], &[0u8; 12]);
    }
}

#[test]
fn cp_async_wait_group_keeps_the_newest_groups_pending() {
    // Two groups; wait_group 1 completes only the first.
    let body = "
    mov.u32 %r20, sh;
    shl.b32 %r4, %r3, 3;
    add.s32 %r5, %r20, %r4;
    mul.wide.u32 %rd4, %r3, 8;
    add.s64 %rd5, %rd1, %rd4;
    cp.async.ca.shared.global [%r5], [%rd5], 4;
    cp.async.commit_group;
    cp.async.ca.shared.global [%r5+4], [%rd5+4], 4;
    cp.async.commit_group;
    cp.async.wait_group 1;
    ld.shared.u32 %r10, [%r5];
    READ2
    st.global.u32 [%rd5+256], %r10;";
    let regs = ".shared .align 16 .b8 sh[256];";
    let init: Vec<u8> = (0..512u32)
        .map(|i| if i < 256 { i as u8 | 1 } else { 0 })
        .collect();
    let out = run(
        &kernel(regs, &body.replace("READ2", "")),
        dims(1, 32),
        &init,
        Checks::default(),
    )
    .unwrap();
    for t in 0..32 {
        assert_eq!(&out[256 + 8 * t..256 + 8 * t + 4], &init[8 * t..8 * t + 4]);
    }
    assert!(matches!(
        run(
            &kernel(regs, &body.replace("READ2", "ld.shared.u32 %r11, [%r5+4];")),
            dims(1, 32),
            &init,
            Checks::default()
        ),
        Err(PtxError::SharedRace {
            pending_async: true,
            ..
        })
    ));
}

#[test]
fn misaligned_accesses_are_reported() {
    let body = "    st.global.u32 [%rd2+2], %r0;";
    match run(
        &kernel("", body),
        dims(1, 32),
        &[0u8; 256],
        Checks::default(),
    ) {
        Err(PtxError::Misaligned {
            align, addr, at, ..
        }) => {
            assert_eq!(align, 4);
            assert_eq!(addr % 4, 2);
            assert_eq!(at.thread, [0, 0, 0]);
        }
        other => panic!("expected Misaligned, got {other:?}"),
    }
    let v4 = "    mul.wide.u32 %rd3, %r0, 8;\n    add.s64 %rd3, %rd1, %rd3;\n    ld.global.v4.u32 {%r4, %r5, %r6, %r7}, [%rd3];";
    match run(&kernel("", v4), dims(1, 32), &[0u8; 512], Checks::default()) {
        Err(PtxError::Misaligned { align: 16, at, .. }) => assert_eq!(at.thread, [1, 0, 0]),
        other => panic!("expected a 16-byte Misaligned, got {other:?}"),
    }
    assert!(run(
        &kernel("", body),
        dims(1, 32),
        &[0u8; 256],
        Checks {
            alignment: false,
            ..Checks::default()
        }
    )
    .is_ok());
}

#[test]
fn uninitialised_register_read_names_the_register() {
    let body =
        "    setp.lt.u32 %p1, %r3, 5;\n    @%p1 mov.u32 %r9, 1;\n    st.global.u32 [%rd2], %r9;";
    match run(
        &kernel("", body),
        dims(1, 32),
        &[0u8; 128],
        Checks::default(),
    ) {
        Err(PtxError::UninitRegister { register, at, .. }) => {
            assert_eq!(register, "%r9");
            assert_eq!(at.thread, [5, 0, 0]);
        }
        other => panic!("expected UninitRegister, got {other:?}"),
    }
    let fixed = "    mov.u32 %r9, 0;\n".to_string() + body;
    assert!(run(
        &kernel("", &fixed),
        dims(1, 32),
        &[0u8; 128],
        Checks::default()
    )
    .is_ok());
}

#[test]
fn trap_is_an_error() {
    let body = "    setp.eq.u32 %p1, %r3, 3;\n    @%p1 trap;";
    assert!(
        matches!(run(&kernel("", body), dims(1, 32), &[0u8; 128], Checks::default()), Err(PtxError::Trap { at, .. }) if at.thread == [3, 0, 0])
    );
}

// ---------------------------------------------------------------- launch and parse errors

#[test]
fn launch_errors_say_what_is_wrong() {
    let module = Module::parse(&kernel("", "")).unwrap();
    let mut mem = DeviceMemory::new();
    let p = 0u64.to_le_bytes();
    assert!(
        matches!(launch(&module, "nope", &dims(1, 1), &p, &mut mem, &Checks::default()), Err(PtxError::UnknownKernel { available, .. }) if available == vec!["k".to_string()])
    );
    assert!(matches!(
        launch(
            &module,
            "k",
            &dims(1, 2048),
            &p,
            &mut mem,
            &Checks::default()
        ),
        Err(PtxError::BadLaunch { .. })
    ));
    assert!(matches!(
        launch(&module, "k", &dims(0, 32), &p, &mut mem, &Checks::default()),
        Err(PtxError::BadLaunch { .. })
    ));
    assert!(matches!(
        launch(
            &module,
            "k",
            &dims(1, 32),
            &p[..4],
            &mut mem,
            &Checks::default()
        ),
        Err(PtxError::BadLaunch { .. })
    ));
    let big = LaunchDims {
        grid: [1, 1, 1],
        block: [32, 1, 1],
        dynamic_shared_bytes: 1 << 20,
    };
    assert!(matches!(
        launch(&module, "k", &big, &p, &mut mem, &Checks::default()),
        Err(PtxError::BadLaunch { .. })
    ));
    assert!(matches!(mem.free(12345), Err(PtxError::HostAccess { .. })));
    let a = mem.alloc(10, "a");
    let b = mem.alloc(10, "b");
    assert!(a != 0 && b != a && a.is_multiple_of(256) && b.is_multiple_of(256));
    assert!(
        mem.write(a + 8, &[0; 4]).is_err(),
        "host writes are bounds-checked too"
    );
    mem.free(a).unwrap();
    assert!(mem.read(a, &mut [0u8; 1]).is_err(), "freed memory is gone");
}

#[test]
fn parse_errors_carry_line_column_and_text() {
    let text = kernel("", "    frobnicate.u32 %r4, %r3;");
    match Module::parse(&text) {
        Err(PtxError::Parse {
            line, col, text: t, ..
        }) => {
            assert_eq!(
                text.lines().nth(line as usize - 1).unwrap().trim(),
                "frobnicate.u32 %r4, %r3;"
            );
            assert_eq!(col, 5);
            assert!(t.contains("frobnicate"));
        }
        other => panic!("expected a parse error, got {:?}", other.err()),
    }
    for (bad, what) in [
        ("    add.s32 %r4, %r3;", "operand count"),
        ("    add.s32 %r4, %r3, %q1;", "undeclared register"),
        ("    bra NOWHERE;", "unknown label"),
        ("    add.s32.ftz %r4, %r3, 1;", "bad modifier"),
        (
            "    ld.global.v4.u64 {%rd4, %rd5, %rd6, %rd7}, [%rd1];",
            "vector too wide",
        ),
        ("    mov.u32 %r4, 0fXYZ;", "bad literal"),
    ] {
        assert!(
            matches!(Module::parse(&kernel("", bad)), Err(PtxError::Parse { .. })),
            "{what}: `{bad}` was accepted"
        );
    }
}

#[test]
fn parser_never_panics_on_mutated_input() {
    // Truncations and byte mutations of a valid kernel; every result is Ok or a Parse
    // error (the fuzz target does the same at scale).
    let base = kernel(
        ".shared .align 16 .b8 sh[64];",
        "    st.global.u32 [%rd2+4], %r0;\n    @%p1 bra.uni DONE;\nDONE:",
    );
    let bytes = base.as_bytes();
    let mut s = 0x1234_5678_9ABC_DEF0u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let alphabet = b"%.;,[]{}()<>+-!@|_:0x9fd \n/*azAZ\"";
    for i in 0..3000 {
        let mut m = bytes.to_vec();
        match i % 3 {
            0 => m.truncate((next() % (bytes.len() as u64 + 1)) as usize),
            1 => {
                for _ in 0..(next() % 4 + 1) {
                    let at = (next() % m.len() as u64) as usize;
                    m[at] = alphabet[(next() % alphabet.len() as u64) as usize];
                }
            }
            _ => {
                let at = (next() % m.len() as u64) as usize;
                let n = (next() % 20) as usize;
                m.drain(at..(at + n).min(m.len()));
            }
        }
        let text = String::from_utf8_lossy(&m);
        if let Err(e) = Module::parse(&text) {
            assert!(matches!(e, PtxError::Parse { .. }), "non-parse error {e:?}");
        }
    }
}
