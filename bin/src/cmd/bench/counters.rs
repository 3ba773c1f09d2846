//! `--counters` of the kernel benchmarks: one extra launch of what a row timed, with the
//! emulator's hardware counters on, and the figures Nsight Compute would show for it
//! (sectors per request, coalescing, bank conflicts per request, tensor FLOPs, distinct
//! DRAM sectors). The counters come from the emulator only: on a GPU, Nsight Compute
//! measures them.

use frugal_ptx::emu::{Counters, Profiling};
use frugal_ptx::kernels::Launch;
use frugal_runtime::device::{Device, DeviceSpec};

use super::shared::json_str;
use crate::cmd::profile::predict::{ratios, Ratios};
use crate::error::CliError;

/// `--counters` on a device other than the emulator: a usage error of `command` saying
/// where counters come from.
///
/// # Errors
/// `--counters` with `--device` cpu or cuda (auto is allowed: it may fall back to the
/// emulator, and [`count`] says when it did not).
pub fn check_device(
    command: &'static str,
    counters: bool,
    device: DeviceSpec,
) -> Result<(), CliError> {
    match device {
        DeviceSpec::Emu | DeviceSpec::Auto => Ok(()),
        _ if !counters => Ok(()),
        other => Err(super::shared::usage(command, not_on(&other.to_string()))),
    }
}

fn not_on(device: &str) -> String {
    format!(
        "--counters: hardware counters come from the PTX emulator (--device emu); on \
         --device {device} use Nsight Compute (ncu) to read them from the GPU"
    )
}

/// The counters of one more run of `launches` on `dev`, every CTA counted; summed over
/// the launches.
///
/// # Errors
/// The device is not the emulator (`--device auto` found a GPU), or a launch failed.
pub fn count(
    command: &'static str,
    dev: &Device,
    launches: &[Launch],
) -> Result<Counters, CliError> {
    let Device::Emu(emu) = dev else {
        return Err(super::shared::usage(
            command,
            not_on(dev.backend().as_str()),
        ));
    };
    let failed = |e: frugal_runtime::RuntimeError| CliError::Bench {
        bench: command,
        what: Some("the counted launch".to_string()),
        source: Box::new(e),
    };
    // Records of launches before this one are not ours.
    let _ = emu.take_launch_records();
    emu.set_profiling(Profiling {
        count: true,
        sample_ctas: None,
    });
    let ran: Result<(), CliError> = launches
        .iter()
        .try_for_each(|l| dev.run(l).map(|_| ()).map_err(failed));
    emu.set_profiling(Profiling::default());
    let records = emu.take_launch_records();
    ran?;
    let mut total = Counters::default();
    for r in &records {
        total.add(&r.counters);
    }
    Ok(total)
}

/// The figures `--counters` prints, from one run's counters.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub ratios: Ratios,
    pub tensor_flops: u64,
    pub dram_read_sectors: u64,
    pub dram_write_sectors: u64,
    pub instructions: u64,
}

impl Summary {
    pub fn of(c: &Counters) -> Summary {
        Summary {
            ratios: ratios(c),
            tensor_flops: c.tensor_flops,
            dram_read_sectors: c.dram_read_sectors,
            dram_write_sectors: c.dram_write_sectors,
            instructions: c.instructions,
        }
    }

    /// One line for the tables.
    pub fn text(&self) -> String {
        let r = &self.ratios;
        format!(
            "counters (emulated): sectors/req {}, coalesced {}, conflicts/req {}, tensor {} FLOP, \
             DRAM sectors {} read + {} written, {} warp instructions",
            opt(r.sectors_per_request, |x| format!("{x:.2}")),
            opt(r.coalescing, |x| format!("{:.0}%", x * 100.0)),
            opt(r.conflicts_per_request, |x| format!("{x:.2}")),
            self.tensor_flops,
            self.dram_read_sectors,
            self.dram_write_sectors,
            self.instructions,
        )
    }

    /// The JSON object of the `"counters"` field.
    pub fn json(&self) -> String {
        let r = &self.ratios;
        let num = |x: Option<f64>| opt(x.filter(|v| v.is_finite()), |v| format!("{v}"));
        format!(
            "{{\"source\":{},\"sectors_per_request\":{},\"coalescing\":{},\
             \"conflicts_per_request\":{},\"tensor_flops\":{},\"dram_read_sectors\":{},\
             \"dram_write_sectors\":{},\"instructions\":{}}}",
            json_str("emulator"),
            num(r.sectors_per_request),
            num(r.coalescing),
            num(r.conflicts_per_request),
            self.tensor_flops,
            self.dram_read_sectors,
            self.dram_write_sectors,
            self.instructions,
        )
    }
}

fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or_else(|| "null".to_string(), f)
}

/// `line` (one JSON object) with a `"counters"` field added when there are counters.
pub fn with_counters(line: String, summary: Option<&Summary>) -> String {
    match (summary, line.strip_suffix('}')) {
        (Some(s), Some(open)) => format!("{open},\"counters\":{}}}", s.json()),
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_spliced_into_a_json_line_that_still_parses() {
        let c = Counters {
            global_load_requests: 2,
            global_load_sectors: 8,
            global_load_sectors_ideal: 4,
            tensor_flops: 4096,
            ..Counters::default()
        };
        let s = Summary::of(&c);
        let line = with_counters("{\"a\":1}".to_string(), Some(&s));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(v["counters"]["sectors_per_request"], 4.0);
        assert_eq!(v["counters"]["coalescing"], 0.5);
        assert_eq!(
            v["counters"]["conflicts_per_request"],
            serde_json::Value::Null
        );
        assert_eq!(v["counters"]["tensor_flops"], 4096);
        assert_eq!(with_counters("{}".into(), None), "{}");
    }

    #[test]
    fn counters_on_a_gpu_or_the_cpu_are_refused() {
        assert!(check_device("bench matmul", true, DeviceSpec::Emu).is_ok());
        assert!(check_device("bench matmul", false, DeviceSpec::Cpu).is_ok());
        for d in [DeviceSpec::Cpu, DeviceSpec::Cuda(0)] {
            let e = check_device("bench matmul", true, d)
                .unwrap_err()
                .to_string();
            assert!(e.contains("emulator") && e.contains("Nsight"), "{e}");
        }
    }
}
