//! The sm_90a wgmma + TMA matmul (`frugal_ptx::matmul::wgmma`): every variant assembles with
//! ptxas for sm_90a without spills, warnings or wgmma performance notes (serialised wgmma,
//! injected warpgroup fences).
//!
//! Needs ptxas (`$FRUGAL_PTXAS` or PATH; `scripts/ensure-ptxas.sh` fetches one): without it the
//! ptxas test fails and says so, as tests/ptxas.rs does.

use frugal_ptx::catalogue::Target;
use frugal_ptx::matmul::wgmma::{self, WGMMA_CONFIGS};
use frugal_ptx::matmul::{Layout, OutType};
use frugal_ptx::ptxas::Ptxas;
use sm90::performance_notes;

mod sm90;

const OUTS: [OutType; 2] = [OutType::F32, OutType::Bf16];

#[test]
fn every_variant_assembles_for_sm90a_without_spills_or_warnings() {
    let ptxas = Ptxas::locate().unwrap_or_else(|e| panic!("{e}"));
    let mut problems = Vec::new();
    for cfg in WGMMA_CONFIGS {
        for layout in Layout::ALL {
            for out in OUTS {
                let name = wgmma::entry_name(&cfg, layout, out);
                let text = wgmma::emit::emit_module(cfg, layout, out);
                assert!(text.is_ascii(), "{name}: PTX must be ASCII");
                match ptxas.assemble(&name, &text, Target::Sm90a) {
                    Err(e) => problems.push(e.to_string()),
                    Ok(report) => {
                        for w in &report.warnings {
                            problems.push(format!("{name}: {w}"));
                        }
                        for k in &report.kernels {
                            eprintln!(
                                "{name}: {} registers, {} spill bytes",
                                k.registers,
                                k.spill_stores + k.spill_loads
                            );
                            if k.spills() {
                                problems.push(format!("{name}: spills {k:?}"));
                            }
                        }
                    }
                }
                problems.extend(performance_notes(&ptxas, &name, &text));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn tma_dispatch_takes_wgmma_on_sm90_only_where_tma_can_read_the_operands() {
    use frugal_ptx::matmul::wgmma::dispatch::select_tma;
    use frugal_ptx::matmul::{select, KernelKind};
    let wg = |arch, m, n, k, align| {
        matches!(
            select_tma(arch, Layout::Nt, m, n, k, align).kernel,
            KernelKind::Wgmma(_)
        )
    };
    // A paper-sized forward product: 128x256 tiles on sm_90, never on sm_80.
    assert_eq!(
        select_tma(90, Layout::Nt, 8192, 3072, 768, 16).kernel,
        KernelKind::Wgmma(wgmma::WGMMA_128X256)
    );
    assert_eq!(
        select_tma(90, Layout::Tn, 768, 768, 8192, 16).kernel,
        KernelKind::Wgmma(wgmma::WGMMA_128X128)
    );
    assert!(!wg(80, 8192, 3072, 768, 16));
    // TMA needs 16-byte granular operands; 8-byte ones (paper-100m's F = 2332) stay on mma.sync.
    assert!(!wg(90, 8192, 2332, 768, 8));
    assert_eq!(
        select_tma(90, Layout::Nt, 8192, 2332, 768, 8),
        select(90, Layout::Nt, 8192, 2332, 768, 8)
    );
    // Small products keep the 64x64 mma.sync tiles.
    assert!(!wg(90, 64, 64, 64, 16));
    // The address-only dispatch never picks wgmma (its callers cannot encode tensor maps).
    for (m, n, k) in [(8192, 3072, 768), (768, 768, 8192), (256, 128, 64)] {
        for layout in Layout::ALL {
            assert!(!matches!(
                select(90, layout, m, n, k, 16).kernel,
                KernelKind::Wgmma(_)
            ));
        }
    }
}
