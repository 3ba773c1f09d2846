//! The links a job's collectives cross, and the ring model of their time.
//!
//! The ring's time (`host::Path::terms`): an all-reduce of B bytes over n ranks is a
//! reduce-scatter then an all-gather, n−1 steps each, every step moving B/n bytes and
//! paying one latency: 2(n−1)/n · B / bandwidth + 2(n−1) · latency.
//!
//! A node holds [`NODE_SIZE`] GPUs joined by the interconnect (NVLink through NVSwitch on
//! SXM boards, or PCIe); nodes are joined by the network. Every figure below is a nominal
//! (data-sheet) rate in one direction, so a predicted collective is a floor: NCCL's measured
//! bus bandwidth is typically 70-85 % of these (NVIDIA's nccl-tests report ~230 GB/s of
//! A100 NVLink's 300 and ~370 of H100's 450). `frugal plan --calibrate`
//! is where such a factor would be fitted.
//!
//! Assumptions, each printed by `frugal plan`:
//! - With `--comm nccl` the collectives are NCCL's rings on these links (frugal's own
//!   collectives, `--comm socket|shm`, are in `host`).
//! - One network adapter of the `--network` speed per GPU, as on DGX/HGX A100 and H100
//!   nodes (8 adapters per node), so each GPU's share of a ring across nodes gets the whole
//!   adapter. A node with one adapter for 8 GPUs would get an eighth of it.
//! - A ring is as fast as its slowest hop: a ring over several nodes moves at the network's
//!   bandwidth and pays the larger of the two latencies per hop.

/// GPUs per node: the HGX/DGX board size, and the most one interconnect joins.
pub const NODE_SIZE: usize = 8;

/// One kind of link: bandwidth in one direction per GPU and the latency of one ring hop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// The flag word (`nvlink`, `pcie`, `200g`, ...).
    pub name: &'static str,
    /// Bytes per second one GPU can send while receiving as much.
    pub bytes_per_s: f64,
    /// Seconds per ring step that do not depend on the bytes.
    pub latency_s: f64,
    /// Where the figures come from.
    pub source: &'static str,
}

const GB: f64 = 1e9;
const US: f64 = 1e-6;

/// NVLink 3 (A100 SXM4): 12 links × 25 GB/s per direction = 300 GB/s per GPU.
pub const NVLINK_A100: Link = Link {
    name: "nvlink",
    bytes_per_s: 300.0 * GB,
    latency_s: 5.0 * US,
    source: "NVLink 3 on A100 SXM4: 600 GB/s bidirectional per GPU (A100 data sheet), 300 each way; \
             ~5 us per ring step (NCCL's small-message all-reduce latency over NVSwitch, order of magnitude)",
};

/// NVLink 4 (H100/H200 SXM5): 18 links, 900 GB/s bidirectional = 450 per direction.
pub const NVLINK_H100: Link = Link {
    name: "nvlink",
    bytes_per_s: 450.0 * GB,
    latency_s: 5.0 * US,
    source: "NVLink 4 on H100/H200 SXM5: 900 GB/s bidirectional per GPU (H100 data sheet), 450 each way; \
             ~5 us per ring step (as NVLink 3)",
};

/// PCIe 4.0 x16: 16 GT/s × 16 lanes × 128/130 ≈ 31.5 GB/s per direction.
pub const PCIE_GEN4: Link = Link {
    name: "pcie",
    bytes_per_s: 31.5 * GB,
    latency_s: 10.0 * US,
    source: "PCIe 4.0 x16: 31.5 GB/s each way (PCI-SIG 4.0 base spec: 16 GT/s, 128b/130b); \
             ~10 us per ring step through the host bridge (estimate)",
};

/// PCIe 5.0 x16: twice 4.0.
pub const PCIE_GEN5: Link = Link {
    name: "pcie",
    bytes_per_s: 63.0 * GB,
    latency_s: 10.0 * US,
    source: "PCIe 5.0 x16: 63 GB/s each way (PCI-SIG 5.0 base spec: 32 GT/s, 128b/130b); \
             ~10 us per ring step (estimate)",
};

/// The networks `--network` names: line rate per adapter, one adapter per GPU.
pub const NETWORKS: &[Link] = &[
    Link {
        name: "100g",
        bytes_per_s: 12.5 * GB,
        latency_s: 5.0 * US,
        source: "100 Gb/s per GPU (EDR InfiniBand or 100 GbE RoCE line rate); ~5 us per hop (RDMA, estimate)",
    },
    Link {
        name: "200g",
        bytes_per_s: 25.0 * GB,
        latency_s: 5.0 * US,
        source: "200 Gb/s per GPU (HDR InfiniBand, DGX A100's compute fabric); ~5 us per hop (RDMA, estimate)",
    },
    Link {
        name: "400g-ib",
        bytes_per_s: 50.0 * GB,
        latency_s: 5.0 * US,
        source: "400 Gb/s per GPU (NDR InfiniBand, DGX H100's compute fabric); ~5 us per hop (RDMA, estimate)",
    },
    Link {
        name: "ethernet-25g",
        bytes_per_s: 3.125 * GB,
        latency_s: 30.0 * US,
        source: "25 Gb/s Ethernet per GPU (TCP, no RDMA); ~30 us per hop through the kernel's network stack (estimate)",
    },
];

/// The `--network` names, for messages.
pub fn network_names() -> Vec<&'static str> {
    NETWORKS.iter().map(|l| l.name).collect()
}

/// The network called `name`.
pub fn network(name: &str) -> Option<Link> {
    NETWORKS.iter().copied().find(|l| l.name == name)
}

/// What joins the GPUs inside a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interconnect {
    NvLink,
    Pcie,
}

impl std::str::FromStr for Interconnect {
    type Err = String;
    fn from_str(s: &str) -> Result<Interconnect, String> {
        match s {
            "nvlink" => Ok(Interconnect::NvLink),
            "pcie" => Ok(Interconnect::Pcie),
            _ => Err(format!("'{s}' is not nvlink or pcie")),
        }
    }
}

/// The interconnect link of a GPU of compute capability `sm` whose label is `label`;
/// `None` for NVLink on a part without an NVSwitch board (only SXM parts have one).
pub fn interconnect(kind: Interconnect, sm: u32, label: &str) -> Option<Link> {
    let hopper = sm >= 90;
    match kind {
        Interconnect::NvLink if !label.contains("SXM") => None,
        Interconnect::NvLink if hopper => Some(NVLINK_H100),
        Interconnect::NvLink => Some(NVLINK_A100),
        Interconnect::Pcie if hopper => Some(PCIE_GEN5),
        Interconnect::Pcie => Some(PCIE_GEN4),
    }
}

/// The link a ring over `devices` GPUs moves at: the interconnect inside one node, else
/// the slower bandwidth and the larger latency of interconnect and network.
pub fn ring_link(devices: usize, inside: Link, network: Link) -> Link {
    if devices <= NODE_SIZE {
        return inside;
    }
    Link {
        name: network.name,
        bytes_per_s: inside.bytes_per_s.min(network.bytes_per_s),
        latency_s: inside.latency_s.max(network.latency_s),
        source: network.source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::plan::host::Path;

    fn all_reduce_s(bytes: f64, n: usize, link: &Link) -> f64 {
        Path::ring(*link).all_reduce_s(bytes, n)
    }
    fn reduce_scatter_s(bytes: f64, n: usize, link: &Link) -> f64 {
        Path::ring(*link).reduce_scatter_s(bytes, n)
    }
    fn all_gather_s(bytes: f64, n: usize, link: &Link) -> f64 {
        Path::ring(*link).all_gather_s(bytes, n)
    }

    /// 1 GB/s and 1 ms: every time below is worked out by hand.
    const ROUND: Link = Link {
        name: "test",
        bytes_per_s: 1e9,
        latency_s: 1e-3,
        source: "",
    };

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
    }

    #[test]
    fn ring_formulas_on_hand_computed_cases() {
        // 4 ranks, 1 GB: all-reduce 2·3/4·1 s + 6 ms = 1.506 s.
        assert!(close(all_reduce_s(1e9, 4, &ROUND), 1.506));
        // Reduce-scatter and all-gather: 3/4 s + 3 ms each.
        assert!(close(reduce_scatter_s(1e9, 4, &ROUND), 0.753));
        assert!(close(all_gather_s(1e9, 4, &ROUND), 0.753));
        // 2 ranks, 400 MB: all-reduce 2·1/2·0.4 s + 2 ms.
        assert!(close(all_reduce_s(4e8, 2, &ROUND), 0.402));
        // One rank moves nothing.
        assert_eq!(all_reduce_s(1e9, 1, &ROUND), 0.0);
        assert_eq!(reduce_scatter_s(1e9, 1, &ROUND), 0.0);
        // An all-reduce is exactly a reduce-scatter and an all-gather.
        for n in [2, 3, 8, 64] {
            let ar = all_reduce_s(3e8, n, &ROUND);
            let rs_ag = reduce_scatter_s(3e8, n, &ROUND) + all_gather_s(3e8, n, &ROUND);
            assert!(close(ar, rs_ag), "{n}");
        }
    }

    #[test]
    fn a_ring_across_nodes_moves_at_its_slowest_link() {
        let net = network("200g").unwrap();
        assert_eq!(ring_link(8, NVLINK_A100, net), NVLINK_A100);
        let across = ring_link(16, NVLINK_A100, net);
        assert_eq!(across.bytes_per_s, 25e9);
        assert_eq!(across.latency_s, net.latency_s);
        let slow = network("ethernet-25g").unwrap();
        assert_eq!(ring_link(64, PCIE_GEN4, slow).latency_s, slow.latency_s);
        // More network bandwidth never makes a collective slower.
        let mut by_speed: Vec<Link> = NETWORKS.to_vec();
        by_speed.sort_by(|a, b| a.bytes_per_s.total_cmp(&b.bytes_per_s));
        let times: Vec<f64> = by_speed
            .iter()
            .map(|n| all_reduce_s(1e9, 32, &ring_link(32, NVLINK_H100, *n)))
            .collect();
        assert!(times.windows(2).all(|w| w[1] <= w[0]), "{times:?}");
    }

    #[test]
    fn nvlink_only_on_sxm_boards() {
        assert_eq!(
            interconnect(Interconnect::NvLink, 80, "A100-SXM-40GB"),
            Some(NVLINK_A100)
        );
        assert_eq!(
            interconnect(Interconnect::NvLink, 90, "H100-SXM-80GB"),
            Some(NVLINK_H100)
        );
        assert_eq!(interconnect(Interconnect::NvLink, 89, "L4"), None);
        assert_eq!(
            interconnect(Interconnect::Pcie, 90, "H100-PCIe-80GB"),
            Some(PCIE_GEN5)
        );
    }
}
