//! From the name a GPU's driver reports (`frugal bench step --json`'s `device_name`, a
//! sweep record's) to the plan's device table.
//!
//! The runtime's table holds one driver name per part, but the same part is reported
//! under more than one: drivers before the R470 series left out the "NVIDIA " prefix
//! ("A100-SXM4-40GB"), the H100 SXM5 board reports its memory ("NVIDIA H100 80GB HBM3")
//! where the PCIe card reports its bus ("NVIDIA H100 PCIe"), and the 80 GB A100 PCIe card
//! writes its size first ("NVIDIA A100 80GB PCIe") where the 40 GB one writes it last
//! ("NVIDIA A100-PCIE-40GB"). So a name is matched exactly first (the table, its labels
//! and aliases), then by family: the part (A100, H100, H200), the form factor (PCIe, NVL,
//! else SXM) and, for the A100, the memory (from the name, else from the driver's total
//! memory). A part the table does not have (an H800, a GH200) is refused with the reason,
//! never mapped onto a neighbour.

use frugal_runtime::facts::{lookup_label, DeviceFacts};

use super::gpu_named;

const GIB: u64 = 1 << 30;

/// The plan's device for a GPU the driver calls `name`, with `memory_bytes` in total
/// where known; or why there is none.
pub fn gpu_of_driver_name(
    name: &str,
    memory_bytes: Option<u64>,
) -> Result<&'static DeviceFacts, String> {
    let name = name.trim();
    if name.is_empty() {
        return Err("the line does not name its GPU (no device_name)".into());
    }
    if let Some(facts) = gpu_named(name) {
        return Ok(facts);
    }
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("NVIDIA ").unwrap_or(&upper);
    let words: Vec<&str> = bare
        .split([' ', '-', '_'])
        .filter(|w| !w.is_empty())
        .collect();
    let has = |w: &str| words.contains(&w);
    let pcie = has("PCIE");
    let nvl = has("NVL");
    let label = match words.first().copied() {
        Some("A100") => {
            let gb = if has("80GB") {
                80
            } else if has("40GB") {
                40
            } else {
                // 40 GB parts report about 39.4 GiB, 80 GB parts about 79.2.
                match memory_bytes {
                    Some(m) if m > 60 * GIB => 80,
                    Some(_) => 40,
                    None => {
                        return Err(format!(
                            "GPU '{name}': an A100 whose memory size is neither in its name nor \
                             in the line (device_memory_bytes)"
                        ))
                    }
                }
            };
            match (pcie, gb) {
                (true, 80) => "A100-PCIe-80GB",
                (true, _) => "A100-PCIe-40GB",
                (false, 80) => "A100-SXM-80GB",
                (false, _) => "A100-SXM-40GB",
            }
        }
        Some("H100") if pcie => "H100-PCIe-80GB",
        Some("H100") if nvl => "H100-NVL-94GB",
        Some("H100") => "H100-SXM-80GB",
        Some("H200") if nvl => "H200-NVL-141GB",
        Some("H200") => "H200-SXM-141GB",
        _ => {
            return Err(format!(
                "GPU '{name}' is not in frugal's device table (see frugal plan --help for the \
                 GPUs it has figures for)"
            ))
        }
    };
    lookup_label(label)
        .filter(|f| f.roofline.is_some())
        .ok_or_else(|| format!("GPU '{name}' ({label}) has no roofline figures"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(name: &str, memory: Option<u64>) -> Result<&'static str, String> {
        gpu_of_driver_name(name, memory).map(|f| f.label)
    }

    #[test]
    fn the_names_nvidias_driver_reports_map_onto_the_table() {
        // As nvidia-smi and cudaGetDeviceProperties print them (e.g. NVIDIA/nccl issue
        // 1264's nvidia-smi table: "NVIDIA H100 80GB HBM3", 81559 MiB).
        let cases = [
            ("NVIDIA A100-SXM4-40GB", "A100-SXM-40GB"),
            ("NVIDIA A100-SXM4-80GB", "A100-SXM-80GB"),
            ("NVIDIA A100-PCIE-40GB", "A100-PCIe-40GB"),
            ("NVIDIA A100 80GB PCIe", "A100-PCIe-80GB"),
            ("NVIDIA H100 80GB HBM3", "H100-SXM-80GB"),
            ("NVIDIA H100 PCIe", "H100-PCIe-80GB"),
            ("NVIDIA H100 NVL", "H100-NVL-94GB"),
            ("NVIDIA H200", "H200-SXM-141GB"),
            ("NVIDIA L4", "L4"),
            ("NVIDIA A10G", "A10G"),
            // Drivers before R470 wrote no "NVIDIA " prefix.
            ("A100-SXM4-40GB", "A100-SXM-40GB"),
            ("A100-PCIE-40GB", "A100-PCIe-40GB"),
            // Other spellings of the same parts.
            ("NVIDIA H100 SXM5 80GB", "H100-SXM-80GB"),
            ("  NVIDIA A100-SXM4-80GB  ", "A100-SXM-80GB"),
        ];
        for (name, want) in cases {
            assert_eq!(label(name, None).as_deref(), Ok(want), "{name}");
        }
        // The plan's own short names are accepted too.
        assert_eq!(label("a100-40", None).as_deref(), Ok("A100-SXM-40GB"));
    }

    #[test]
    fn an_a100_without_its_size_in_the_name_is_sized_by_its_memory() {
        let total = |mib: u64| Some(mib << 20);
        assert_eq!(
            label("NVIDIA A100-SXM4", total(81_920)).as_deref(),
            Ok("A100-SXM-80GB")
        );
        assert_eq!(
            label("NVIDIA A100-SXM4", total(40_536)).as_deref(),
            Ok("A100-SXM-40GB")
        );
        assert!(label("NVIDIA A100-SXM4", None)
            .unwrap_err()
            .contains("memory"));
    }

    #[test]
    fn parts_not_in_the_table_are_refused_with_the_reason() {
        for name in [
            "NVIDIA H800",
            "NVIDIA GH200 480GB",
            "Tesla V100-SXM2-16GB",
            "",
        ] {
            let why = label(name, Some(80 * GIB)).unwrap_err();
            assert!(why.contains("GPU") || why.contains("name"), "{name}: {why}");
        }
    }
}
