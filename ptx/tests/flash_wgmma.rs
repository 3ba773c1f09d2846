//! The sm_90a wgmma FlashAttention forward (`frugal_ptx::flash::wgmma_fwd`): every head size
//! assembles with ptxas for sm_90a without spills, warnings or wgmma performance notes.
//!
//! Needs ptxas (`$FRUGAL_PTXAS` or PATH; `scripts/ensure-ptxas.sh` fetches one): without it the
//! test fails and says so, as tests/ptxas.rs does.

use frugal_ptx::catalogue::Target;
use frugal_ptx::flash::wgmma_fwd::{self, HEAD_SIZES};
use frugal_ptx::ptxas::Ptxas;
use sm90::performance_notes;

mod sm90;

#[test]
fn every_head_size_assembles_for_sm90a_without_spills_or_warnings() {
    let ptxas = Ptxas::locate().unwrap_or_else(|e| panic!("{e}"));
    let mut problems = Vec::new();
    for hs in HEAD_SIZES {
        let name = wgmma_fwd::entry_name(hs);
        let text = wgmma_fwd::emit_module(hs);
        assert!(text.is_ascii(), "{name}: PTX must be ASCII");
        match ptxas.assemble(&name, &text, Target::Sm90a) {
            Err(e) => problems.push(e.to_string()),
            Ok(report) => {
                problems.extend(report.warnings.iter().map(|w| format!("{name}: {w}")));
                for k in &report.kernels {
                    eprintln!("{name}: {} registers", k.registers);
                    if k.spills() {
                        problems.push(format!("{name}: spills {k:?}"));
                    }
                }
            }
        }
        problems.extend(performance_notes(&ptxas, &name, &text));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
