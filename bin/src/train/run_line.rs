//! The metrics file's first line: what ran and what it was priced at, so that
//! a program reading the file (`frugal sweep`) needs nothing else to file the
//! run: frugal's version and commit, the device and its driver, the job's
//! size, the memory planned against the memory there was, and the price per
//! device-hour with its source and date.

use frugal_runtime::device::{cuda, Device};

use super::cost::Price;
use super::metrics::JsonObject;

/// What the device side of a run is, known once the device is prepared.
#[derive(Clone, Debug, PartialEq)]
pub struct RunInfo {
    /// The backend: "cpu", "cuda" or "emu".
    pub device: &'static str,
    /// The driver's name of the GPU, "emulated GPU", or the CPU's model name.
    pub device_name: String,
    /// The CUDA driver's version ("12.8"); `None` on cpu and emu.
    pub driver: Option<String>,
    /// CPU worker threads per rank; `None` off the CPU.
    pub threads: Option<usize>,
    /// One rank's memory plan, in bytes: on the CPU its fixed state and
    /// activations, on a GPU or emu the arena plan's peak.
    pub planned_bytes: Option<u64>,
    /// What that plan had to fit in: the device's free memory (times
    /// `--mem-target` when given), or the host's limit on the CPU.
    pub capacity_bytes: Option<u64>,
}

impl RunInfo {
    /// The CPU backend with `threads` worker threads per rank.
    pub fn cpu(threads: usize, planned_bytes: u64, capacity_bytes: Option<u64>) -> RunInfo {
        RunInfo {
            device: "cpu",
            device_name: cpu_model_name(),
            driver: None,
            threads: Some(threads),
            planned_bytes: Some(planned_bytes),
            capacity_bytes,
        }
    }

    /// A GPU or the emulated one, whose arena plan peaks at `planned_bytes`
    /// of `capacity_bytes`.
    pub fn gpu(device: &Device, planned_bytes: u64, capacity_bytes: u64) -> RunInfo {
        let (kind, name, driver) = match device {
            Device::Cuda(d) => (
                "cuda",
                d.name().to_string(),
                Some(cuda::format_version(d.driver_version())),
            ),
            // Device::name's longer text says how it is emulated; a table
            // wants the short one.
            Device::Emu(_) => ("emu", "emulated GPU".to_string(), None),
            Device::Cpu(_) => ("cpu", cpu_model_name(), None),
        };
        RunInfo {
            device: kind,
            device_name: name,
            driver,
            threads: None,
            planned_bytes: Some(planned_bytes),
            capacity_bytes: Some(capacity_bytes),
        }
    }

    /// The run line: this run of `world` ranks (this process is `rank`),
    /// training `tokens_per_step` tokens per step over the whole job, at
    /// `price` (the whole job's).
    pub fn json(
        &self,
        world: usize,
        rank: usize,
        tokens_per_step: u64,
        price: &Price,
    ) -> JsonObject {
        let obj = JsonObject::new()
            .boolean("run", true)
            .string("frugal_version", env!("CARGO_PKG_VERSION"))
            .string("commit", env!("FRUGAL_GIT_COMMIT"))
            .string("device", self.device)
            .string("device_name", &self.device_name);
        let obj = match &self.driver {
            Some(d) => obj.string("driver", d),
            None => obj.null("driver"),
        };
        let obj = obj
            .uint("world", world as u64)
            .uint("rank", rank as u64)
            .opt_uint("threads", self.threads.map(|t| t as u64))
            .uint("tokens_per_step", tokens_per_step)
            .opt_uint("planned_bytes", self.planned_bytes)
            .opt_uint("capacity_bytes", self.capacity_bytes)
            .opt_num("price_per_device_hour", price.per_device_hour(world))
            .string("price_units", &price.units.to_string())
            .string("price_source", &price.source_text());
        match price.date() {
            Some(d) => obj.string("price_date", d),
            None => obj.null("price_date"),
        }
    }
}

/// The CPU's model name from `/proc/cpuinfo`, or "cpu" where there is none
/// (another OS, or an architecture whose cpuinfo has no such line).
pub fn cpu_model_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| model_name_in(&text))
        .unwrap_or_else(|| "cpu".to_string())
}

/// The first `model name : ...` line's value in a `/proc/cpuinfo` text.
fn model_name_in(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        let value = value.trim();
        (key.trim() == "model name" && !value.is_empty()).then(|| value.to_string())
    })
}

/// Device memory in use now, in bytes, as the runtime can tell: total minus
/// free on a GPU (the driver counts other processes' memory too), the bytes
/// allocated on the emulator; `None` on the CPU (the resident set measures it)
/// or when the driver does not answer.
pub fn device_in_use(device: &Device) -> Option<u64> {
    match device {
        Device::Cpu(_) => None,
        Device::Cuda(_) | Device::Emu(_) => device
            .memory_info()
            .ok()
            .map(|m| m.total.saturating_sub(m.free)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::cost::{PriceSource, PriceUnits};
    use std::collections::BTreeMap;

    #[test]
    fn the_model_name_is_the_first_model_name_line() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\n\
                    model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\nprocessor\t: 1\n\
                    model name\t: other\n";
        assert_eq!(
            model_name_in(text).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        // aarch64's cpuinfo has no model name: the caller says "cpu".
        assert_eq!(model_name_in("processor\t: 0\nBogoMIPS\t: 50.00\n"), None);
        assert_eq!(model_name_in("model name\t:\n"), None);
    }

    #[test]
    fn the_run_line_has_every_field_with_nulls_for_unknowns() {
        let info = RunInfo {
            device: "cpu",
            device_name: "Some \"CPU\", 4 cores".into(),
            driver: None,
            threads: Some(4),
            planned_bytes: Some(1000),
            capacity_bytes: None,
        };
        let price = Price {
            per_hour: Some(0.36),
            units: PriceUnits::Usd,
            source: PriceSource::CoreHourFlag {
                per_core_hour: 0.045,
                threads: 8,
            },
        };
        let line = info.json(2, 0, 512, &price).finish();
        let v: BTreeMap<String, serde_json::Value> = serde_json::from_str(&line).unwrap();
        let keys: Vec<&str> = v.keys().map(String::as_str).collect();
        let mut want = vec![
            "run",
            "frugal_version",
            "commit",
            "device",
            "device_name",
            "driver",
            "world",
            "rank",
            "threads",
            "tokens_per_step",
            "planned_bytes",
            "capacity_bytes",
            "price_per_device_hour",
            "price_units",
            "price_source",
            "price_date",
        ];
        want.sort();
        assert_eq!(keys, want, "{line}");
        assert!(line.starts_with("{\"run\":true,"), "{line}");
        assert_eq!(v["device_name"], "Some \"CPU\", 4 cores");
        assert_eq!(v["driver"], serde_json::Value::Null);
        assert_eq!(v["capacity_bytes"], serde_json::Value::Null);
        assert_eq!(v["price_date"], serde_json::Value::Null);
        // Per device-hour: the job's price over its two ranks.
        assert_eq!(v["price_per_device_hour"], 0.18);
        assert_eq!(v["tokens_per_step"], 512);
        assert_eq!(v["frugal_version"], env!("CARGO_PKG_VERSION"));
    }
}
