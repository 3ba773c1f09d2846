//! wgmma's shared-memory operands are read asynchronously: between the issue and the
//! `wgmma.wait_group` that retires the group, a write into them (any thread, any proxy) is a
//! write-after-read race the emulator reports, naming the wgmma, its group and the address;
//! the same write after the wait is clean. (The planted fault in the project's matmul — a
//! stage released to the TMA producer before the wait — is in `matmul_wgmma.rs`.) Kernels
//! from `wgmma_harness`; the direct ones need no ptxas.

mod wgmma_harness;

use frugal_ptx::emu::MmaNumerics;
use frugal_ptx::error::PtxError;
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
