//! wgmma's shared-memory operands are read asynchronously: between the issue and the
//! `wgmma.wait_group` that retires the group, a write into them (any thread, any proxy) is a
//! write-after-read race the emulator reports, naming the wgmma, its group and the address;
//! the same write after the wait is clean; the project's wgmma flash forward releasing a K/V
//! stage to its TMA producer before the wait that retires the PV product reading it is
//! caught. (The same fault in the wgmma matmul is in `matmul_wgmma.rs`.) Kernels from
//! `wgmma_harness` and `frugal_ptx::flash::wgmma_fwd`; none needs ptxas.

mod wgmma_harness;

use frugal_ptx::emu::{DeviceMemory, MmaNumerics, Module};
use frugal_ptx::error::PtxError;
use frugal_ptx::flash::{wgmma_fwd, AttnShape, FlashFwd};
use frugal_ptx::tensor_map::TensorMap;
use frugal_ptx::testing::emu_checks;
use wgmma_harness::*;

#[test]
fn a_store_into_an_operand_before_wait_group_is_a_reported_race() {
    let c = Case {
        fault: Fault::StoreBeforeWait,
        ..Case::new(32)
    };
    match run_case(&c, 61, true, MmaNumerics::Exact) {
        Err(PtxError::Wgmma { problem, line, .. }) => {
            assert!(
                problem.contains("write-after-read race on a wgmma operand")
                    && problem.contains("st by thread")
                    && problem.contains("writes shared 0x0")
                    && problem.contains("commit group 0")
                    && problem.contains("no wgmma.wait_group has retired it"),
                "{problem}"
            );
            // The report is at the store, and names the wgmma's own line.
            let text = kernel_text(&c, smem_of(&c));
            let lines: Vec<&str> = text.lines().collect();
            assert!(
                lines[line as usize - 1].contains("st.shared.u32"),
                "line {line}: {}",
                lines[line as usize - 1]
            );
            let wgmma_line = lines
                .iter()
                .position(|l| l.contains("wgmma.mma_async"))
                .map(|i| i + 1)
                .unwrap_or_else(|| panic!("no wgmma in the kernel"));
            assert!(
                problem.contains(&format!("wgmma.mma_async at line {wgmma_line}")),
                "{problem}"
            );
        }
        Err(e) => panic!("expected a wgmma race, got {e}"),
        Ok(_) => panic!("a store into a pending wgmma's operand went unnoticed"),
    }
}

#[test]
fn the_same_store_after_wait_group_is_clean() {
    let c = Case {
        fault: Fault::StoreAfterWait,
        ..Case::new(32)
    };
    let o = run_case(&c, 61, true, MmaNumerics::Exact).unwrap_or_else(|e| panic!("{e}"));
    assert!(mismatches(&o, c.n).is_empty());
}

/// Runs the wgmma flash forward `text` (head size 64) on zeros for one head of T = 512: four
/// key tiles through three K/V stages, so the producer reloads released stages.
fn run_flash(text: &str) -> Result<(), PtxError> {
    let shape = AttnShape {
        b: 1,
        t: 512,
        nh: 1,
        nkv: 1,
        hs: 64,
    };
    let name = wgmma_fwd::entry_name(64);
    let module = Module::parse(text).unwrap_or_else(|e| panic!("{e}"));
    let layout = module.params(&name).unwrap_or_else(|e| panic!("{e}"));
    let mut mem = DeviceMemory::new();
    let rows = shape.t * shape.hs;
    let mut buf = |bytes: usize, label: &str| mem.alloc(bytes, label);
    let bufs = FlashFwd {
        q: buf(2 * rows, "q"),
        k: buf(2 * rows, "k"),
        v: buf(2 * rows, "v"),
        o: buf(2 * rows, "o"),
        lse: buf(4 * shape.t, "lse"),
    };
    let mut encode = |m: &TensorMap| {
        m.encode().map_err(|reason| PtxError::BadLaunch {
            kernel: name.clone(),
            reason,
        })
    };
    let launch = wgmma_fwd::launch(shape, &bufs, &layout, &mut encode)?;
    launch.run_emu(&module, &mut mem, &emu_checks()).map(|_| ())
}

#[test]
fn the_flash_forward_releasing_a_stage_before_its_pv_wait_is_caught() {
    let text = wgmma_fwd::emit_module(64);
    run_flash(&text).unwrap_or_else(|e| panic!("unplanted: {e}"));
    // In the main loop the stage of tile j-1 is released after `wait_group 0` retires the
    // PV product reading its V. Plant: release it before `wait_group 1`, with PV in flight.
    let (head, tail) = text
        .split_once("C_KV:")
        .unwrap_or_else(|| panic!("no C_KV loop in the module"));
    let lines: Vec<&str> = tail.lines().collect();
    let first = lines
        .iter()
        .position(|l| l.trim() == "shl.b32 %r0, %prev, 3;")
        .unwrap_or_else(|| panic!("no release of the previous stage in the loop"));
    assert!(
        lines[first + 3].contains("mbarrier.arrive"),
        "unexpected release block: {:?}",
        &lines[first..first + 4]
    );
    let release: Vec<&str> = lines[first..first + 4].to_vec();
    let wait1 = lines
        .iter()
        .position(|l| l.trim() == "wgmma.wait_group.sync.aligned 1;")
        .unwrap_or_else(|| panic!("no wait_group 1 in the loop"));
    assert!(wait1 < first);
    let mut planted: Vec<&str> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if i == wait1 {
            planted.extend(&release);
        }
        if !(first..first + 4).contains(&i) {
            planted.push(l);
        }
    }
    let text = format!("{head}C_KV:{}\n", planted.join("\n"));
    let e = run_flash(&text)
        .expect_err("releasing a stage with its PV product in flight went unnoticed");
    let msg = e.to_string();
    assert!(
        msg.contains("write-after-read race on a wgmma operand") && msg.contains("not ordered"),
        "{msg}"
    );
}
