//! What training costs: the price per hour, where it came from, and the money
//! spent so far (carried across resume), from which tokens per dollar follow.
//!
//! Price resolution, first match wins:
//! - GPU: `--price-per-gpu-hour`, env `FRUGAL_PRICE_PER_GPU_HOUR`, the built-in
//!   table by device name (runtime facts; the paper's relative units with
//!   `--price-units paper`); an unknown device has no price ("unknown", never a guess).
//! - CPU: `--price-per-core-hour` × threads, `--price-per-gpu-hour` or the env
//!   variable as the price of the whole machine per hour, the built-in default
//!   price per core-hour × threads.
//!
//! A price given by flag or env is in the units `--price-units` names.

use std::fmt;
use std::time::Instant;

use frugal_runtime::facts::{DeviceFacts, CPU_USD_PER_CORE_HOUR};

/// The environment variable that sets the price of one device-hour.
pub const PRICE_ENV: &str = "FRUGAL_PRICE_PER_GPU_HOUR";

/// The built-in price of one CPU core-hour (see runtime facts for its origin).
pub const DEFAULT_PRICE_PER_CORE_HOUR: f64 = CPU_USD_PER_CORE_HOUR;

/// Units of the price table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriceUnits {
    /// US dollars.
    Usd,
    /// The paper's relative prices (A100-40GB = 1.00).
    Paper,
}

impl fmt::Display for PriceUnits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PriceUnits::Usd => "usd",
            PriceUnits::Paper => "paper",
        })
    }
}

/// What trains, as far as pricing is concerned.
#[derive(Clone, Copy, Debug)]
pub enum PricedDevice<'a> {
    /// The CPU backend with this many worker threads (cores billed).
    Cpu { threads: usize },
    /// `count` GPUs of one model; `facts` is `None` for a model not in the table.
    Gpu {
        name: &'a str,
        facts: Option<&'a DeviceFacts>,
        count: usize,
    },
}

/// The price flags, as parsed.
#[derive(Clone, Copy, Debug)]
pub struct PriceFlags {
    pub per_gpu_hour: Option<f64>,
    pub per_core_hour: Option<f64>,
    pub units: PriceUnits,
}

/// Where the price came from, for the log.
#[derive(Clone, Debug, PartialEq)]
pub enum PriceSource {
    GpuHourFlag,
    Env,
    /// The built-in table's entry: its label, and where and when its price
    /// was listed.
    Table {
        label: &'static str,
        source: &'static str,
        date: &'static str,
    },
    PaperUnits {
        label: &'static str,
    },
    CoreHourFlag {
        per_core_hour: f64,
        threads: usize,
    },
    CoreHourDefault {
        per_core_hour: f64,
        threads: usize,
    },
    /// A device with no table entry and no price given.
    Unknown,
}

/// The resolved price of the whole job per hour (all devices).
#[derive(Clone, Debug, PartialEq)]
pub struct Price {
    /// `None` when unknown: money figures are then reported as unknown.
    pub per_hour: Option<f64>,
    pub units: PriceUnits,
    pub source: PriceSource,
}

impl Price {
    /// What one unit of money is called after "tokens/": "$" or "paper-unit".
    pub fn unit_label(&self) -> &'static str {
        match self.units {
            PriceUnits::Usd => "$",
            PriceUnits::Paper => "paper-unit",
        }
    }

    /// Formats an amount in this price's units.
    pub fn format(&self, amount: f64) -> String {
        match self.units {
            PriceUnits::Usd => super::metrics::money(amount, "$"),
            PriceUnits::Paper => format!("{} paper-units", super::metrics::money(amount, "")),
        }
    }
}

impl Price {
    /// The price of one device (one rank) for one hour: the job's price over
    /// its `world` ranks. On the CPU a rank's device is its threads.
    pub fn per_device_hour(&self, world: usize) -> Option<f64> {
        self.per_hour.map(|p| p / world.max(1) as f64)
    }

    /// Where the price came from, as one line of text for files that cite it
    /// (the metrics file's run line, a sweep's results).
    pub fn source_text(&self) -> String {
        match &self.source {
            PriceSource::GpuHourFlag => "--price-per-gpu-hour".to_string(),
            PriceSource::Env => format!("env {PRICE_ENV}"),
            PriceSource::Table { label, source, .. } => {
                format!("built-in table, {label}: {source}")
            }
            PriceSource::PaperUnits { label } => {
                format!("the paper's relative prices (Ashkboos et al. 2024), {label}")
            }
            PriceSource::CoreHourFlag {
                per_core_hour,
                threads,
            } => format!("--price-per-core-hour {per_core_hour} x {threads} threads of the job"),
            PriceSource::CoreHourDefault {
                per_core_hour,
                threads,
            } => format!(
                "built-in CPU price {per_core_hour} usd/core-hour x {threads} threads of the job"
            ),
            PriceSource::Unknown => "unknown".to_string(),
        }
    }

    /// When the source listed the price, where the source says: only the
    /// built-in table's entries carry a date.
    pub fn date(&self) -> Option<&'static str> {
        match self.source {
            PriceSource::Table { date, .. } => Some(date),
            _ => None,
        }
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(per_hour) = self.per_hour else {
            return write!(
                f,
                "price: unknown for this device; pass --price-per-gpu-hour X or set {PRICE_ENV} to get $ figures"
            );
        };
        write!(f, "price: {}/hour from ", self.format(per_hour))?;
        match &self.source {
            PriceSource::GpuHourFlag => write!(f, "--price-per-gpu-hour"),
            PriceSource::Env => write!(f, "env {PRICE_ENV}"),
            PriceSource::Table { label, source, date } => {
                write!(f, "the built-in table ({label}: {source}, {date})")
            }
            PriceSource::PaperUnits { label } => write!(f, "the paper's relative prices ({label})"),
            PriceSource::CoreHourFlag { per_core_hour, threads } => {
                write!(f, "--price-per-core-hour {per_core_hour} x {threads} threads")
            }
            PriceSource::CoreHourDefault { per_core_hour, threads } => write!(
                f,
                "the built-in CPU price ${per_core_hour}/core-hour x {threads} threads; set --price-per-core-hour"
            ),
            PriceSource::Unknown => write!(f, "nowhere"),
        }
    }
}

/// A price that cannot be used: a usage error (exit 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceError(pub String);

/// Resolves the price per hour of the whole job. `env` is the value of
/// [`PRICE_ENV`], if set.
///
/// # Errors
/// A bad env value (not a finite number >= 0), or `--price-units paper` for a
/// device the paper did not price.
pub fn resolve_price(
    flags: PriceFlags,
    env: Option<&str>,
    device: PricedDevice<'_>,
) -> Result<Price, PriceError> {
    let env_price = || -> Result<Option<f64>, PriceError> {
        let Some(raw) = env else { return Ok(None) };
        match raw.trim().parse::<f64>() {
            Ok(p) if p.is_finite() && p >= 0.0 => Ok(Some(p)),
            _ => Err(PriceError(format!(
                "env {PRICE_ENV}='{raw}' is not a price: set it to a number >= 0 (dollars per device-hour), or unset it"
            ))),
        }
    };
    let units = flags.units;
    match device {
        PricedDevice::Cpu { threads } => {
            let cores = threads as f64;
            if let Some(p) = flags.per_core_hour {
                return Ok(Price {
                    per_hour: Some(p * cores),
                    units,
                    source: PriceSource::CoreHourFlag {
                        per_core_hour: p,
                        threads,
                    },
                });
            }
            if let Some(p) = flags.per_gpu_hour {
                return Ok(Price {
                    per_hour: Some(p),
                    units,
                    source: PriceSource::GpuHourFlag,
                });
            }
            if let Some(p) = env_price()? {
                return Ok(Price {
                    per_hour: Some(p),
                    units,
                    source: PriceSource::Env,
                });
            }
            if units == PriceUnits::Paper {
                return Err(PriceError(
                    "--price-units paper: the paper priced only A100-40GB, A100-80GB and H100-80GB, not CPUs; \
                     use --price-per-core-hour or --price-units usd"
                        .into(),
                ));
            }
            Ok(Price {
                per_hour: Some(DEFAULT_PRICE_PER_CORE_HOUR * cores),
                units,
                source: PriceSource::CoreHourDefault {
                    per_core_hour: DEFAULT_PRICE_PER_CORE_HOUR,
                    threads,
                },
            })
        }
        PricedDevice::Gpu { name, facts, count } => {
            let n = count as f64;
            if let Some(p) = flags.per_gpu_hour {
                return Ok(Price {
                    per_hour: Some(p * n),
                    units,
                    source: PriceSource::GpuHourFlag,
                });
            }
            if let Some(p) = env_price()? {
                return Ok(Price {
                    per_hour: Some(p * n),
                    units,
                    source: PriceSource::Env,
                });
            }
            match (facts, units) {
                (Some(f), PriceUnits::Usd) => Ok(Price {
                    per_hour: Some(f.default_usd_per_gpu_hour * n),
                    units,
                    source: PriceSource::Table {
                        label: f.label,
                        source: f.price_source,
                        date: f.price_date,
                    },
                }),
                (Some(DeviceFacts { paper_price_units: Some(p), label, .. }), PriceUnits::Paper) => {
                    Ok(Price { per_hour: Some(p * n), units, source: PriceSource::PaperUnits { label } })
                }
                (_, PriceUnits::Paper) => Err(PriceError(format!(
                    "--price-units paper: the paper priced only A100-40GB, A100-80GB and H100-80GB, not '{name}'; \
                     give --price-per-gpu-hour in paper units or use --price-units usd"
                ))),
                (None, PriceUnits::Usd) => Ok(Price { per_hour: None, units, source: PriceSource::Unknown }),
            }
        }
    }
}

/// Money spent: what earlier runs of this job spent (from the checkpoint) plus
/// this run's wall time at the job's price. The whole wall time is billed
/// (start-up, validation, checkpoints), as a rented machine bills it.
#[derive(Clone, Debug)]
pub struct CostMeter {
    per_hour: Option<f64>,
    spent_before: f64,
    start: Instant,
}

impl CostMeter {
    /// Starts the clock now.
    pub fn start(price: &Price, spent_before: f64) -> CostMeter {
        CostMeter {
            per_hour: price.per_hour,
            spent_before,
            start: Instant::now(),
        }
    }

    /// Seconds since [`CostMeter::start`].
    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Total spent by the job so far, or `None` when the price is unknown.
    pub fn spent(&self) -> Option<f64> {
        self.spent_at(self.elapsed_s())
    }

    /// Total spent after `elapsed_s` seconds of this run.
    pub fn spent_at(&self, elapsed_s: f64) -> Option<f64> {
        self.per_hour
            .map(|p| self.spent_before + p * elapsed_s / 3600.0)
    }

    /// What to store in a checkpoint: the total, or what was carried in when
    /// the price is unknown (so a later run with a price keeps counting).
    pub fn spent_for_checkpoint(&self) -> f64 {
        self.spent().unwrap_or(self.spent_before)
    }
}

/// Tokens per unit of money; `None` when the price is unknown or nothing was spent.
pub fn tokens_per_money(tokens: u64, spent: Option<f64>) -> Option<f64> {
    match spent {
        Some(s) if s > 0.0 && s.is_finite() => Some(tokens as f64 / s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use frugal_runtime::facts::lookup;

    fn flags(gpu: Option<f64>, core: Option<f64>, units: PriceUnits) -> PriceFlags {
        PriceFlags {
            per_gpu_hour: gpu,
            per_core_hour: core,
            units,
        }
    }

    #[test]
    fn gpu_price_order_is_flag_env_table() {
        let h100 = lookup("NVIDIA H100 80GB HBM3");
        let dev = PricedDevice::Gpu {
            name: "NVIDIA H100 80GB HBM3",
            facts: h100,
            count: 2,
        };
        let usd = PriceUnits::Usd;
        let p = resolve_price(flags(Some(2.0), None, usd), Some("9"), dev).unwrap();
        assert_eq!(
            (p.per_hour, p.source),
            (Some(4.0), PriceSource::GpuHourFlag)
        );
        let p = resolve_price(flags(None, None, usd), Some(" 3 "), dev).unwrap();
        assert_eq!((p.per_hour, p.source), (Some(6.0), PriceSource::Env));
        let p = resolve_price(flags(None, None, usd), None, dev).unwrap();
        let table = h100.map(|f| f.default_usd_per_gpu_hour * 2.0);
        assert_eq!(p.per_hour, table);
        let p = resolve_price(flags(None, None, PriceUnits::Paper), None, dev).unwrap();
        assert_eq!(
            p.per_hour,
            h100.and_then(|f| f.paper_price_units).map(|u| u * 2.0)
        );
    }

    #[test]
    fn the_table_price_cites_its_source_and_date_per_device() {
        let a100 = lookup("NVIDIA A100-SXM4-80GB").unwrap();
        let dev = PricedDevice::Gpu {
            name: a100.name,
            facts: Some(a100),
            count: 4,
        };
        let p = resolve_price(flags(None, None, PriceUnits::Usd), None, dev).unwrap();
        assert_eq!(p.per_device_hour(4), Some(a100.default_usd_per_gpu_hour));
        assert!(
            p.source_text().contains(a100.price_source),
            "{}",
            p.source_text()
        );
        assert!(p.source_text().contains(a100.label), "{}", p.source_text());
        assert_eq!(p.date(), Some(a100.price_date));
        assert!(p.to_string().contains(a100.price_date), "{p}");
        let flag = resolve_price(flags(Some(2.0), None, PriceUnits::Usd), None, dev).unwrap();
        assert_eq!((flag.per_device_hour(4), flag.date()), (Some(2.0), None));
        assert_eq!(flag.source_text(), "--price-per-gpu-hour");
        // The CPU: one rank's threads at the core price.
        let cpu = resolve_price(
            flags(None, Some(0.5), PriceUnits::Usd),
            None,
            PricedDevice::Cpu { threads: 3 * 2 },
        )
        .unwrap();
        assert_eq!(cpu.per_device_hour(2), Some(1.5));
    }

    #[test]
    fn unknown_gpu_has_no_price_and_bad_env_is_an_error() {
        let dev = PricedDevice::Gpu {
            name: "Mystery GPU",
            facts: None,
            count: 1,
        };
        let p = resolve_price(flags(None, None, PriceUnits::Usd), None, dev).unwrap();
        assert_eq!(p.per_hour, None);
        assert!(resolve_price(flags(None, None, PriceUnits::Paper), None, dev).is_err());
        for bad in ["abc", "-1", "nan", "inf", ""] {
            let e = resolve_price(flags(None, None, PriceUnits::Usd), Some(bad), dev).unwrap_err();
            assert!(e.0.contains(PRICE_ENV), "{}", e.0);
        }
    }

    #[test]
    fn cpu_price_is_per_core_hour() {
        let dev = PricedDevice::Cpu { threads: 4 };
        let p =
            resolve_price(flags(Some(9.0), Some(0.5), PriceUnits::Usd), Some("7"), dev).unwrap();
        assert_eq!(p.per_hour, Some(2.0));
        let p = resolve_price(flags(None, None, PriceUnits::Usd), None, dev).unwrap();
        assert_eq!(p.per_hour, Some(4.0 * DEFAULT_PRICE_PER_CORE_HOUR));
        let p = resolve_price(flags(None, None, PriceUnits::Usd), Some("1.5"), dev).unwrap();
        assert_eq!((p.per_hour, p.source), (Some(1.5), PriceSource::Env));
        assert!(resolve_price(flags(None, None, PriceUnits::Paper), None, dev).is_err());
    }

    #[test]
    fn spending_adds_to_what_was_carried_in() {
        let price = Price {
            per_hour: Some(3600.0),
            units: PriceUnits::Usd,
            source: PriceSource::GpuHourFlag,
        };
        let m = CostMeter::start(&price, 10.0);
        assert_eq!(m.spent_at(2.0), Some(12.0));
        assert_eq!(tokens_per_money(120, Some(12.0)), Some(10.0));
        assert_eq!(tokens_per_money(120, Some(0.0)), None);
        let unknown = Price {
            per_hour: None,
            units: PriceUnits::Usd,
            source: PriceSource::Unknown,
        };
        let m = CostMeter::start(&unknown, 10.0);
        assert_eq!(m.spent(), None);
        assert_eq!(m.spent_for_checkpoint(), 10.0);
    }
}
