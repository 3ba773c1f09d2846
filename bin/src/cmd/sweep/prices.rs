//! What one device-hour costs, for tokens per dollar: `--prices FILE` first,
//! then the built-in table (runtime facts: each price with its source and
//! date, or the paper's relative units), then, on the CPU, the default price
//! per core-hour times the rank's threads. A device with none of these has
//! no price, and its tokens per dollar are unknown (never a guess).
//!
//! `--prices FILE` is a JSON object keyed by a device's table label
//! ("H100-SXM-80GB"), the name its driver reports ("NVIDIA H100 80GB HBM3"),
//! `cpu-core` (one CPU thread-hour) or `emu`; each value is the price of one
//! device-hour in the sweep's units, as a number or as
//! `{"per_hour": 2.5, "source": "our contract", "date": "2026-11"}`.

use std::collections::HashMap;
use std::path::Path;

use frugal_runtime::facts::{self, CPU_USD_PER_CORE_HOUR};

use super::record::PriceRecord;
use crate::error::CliError;
use crate::train::cost::PriceUnits;

/// The key of a CPU thread-hour in a prices file.
pub const CPU_CORE_KEY: &str = "cpu-core";

/// One price from a `--prices` file.
#[derive(Clone, Debug, PartialEq)]
struct Given {
    per_hour: f64,
    source: Option<String>,
    date: Option<String>,
}

/// Prices as the sweep resolves them.
#[derive(Clone, Debug)]
pub struct Prices {
    units: PriceUnits,
    /// Keys lower-cased: labels and driver names match without regard to case.
    given: HashMap<String, Given>,
    file: Option<String>,
}

impl Prices {
    /// The built-in table alone.
    pub fn builtin(units: PriceUnits) -> Prices {
        Prices {
            units,
            given: HashMap::new(),
            file: None,
        }
    }

    /// The built-in table overridden by `path`.
    ///
    /// # Errors
    /// An unreadable file, or one that is not an object of prices (the message
    /// names the entry and shows the format).
    pub fn load(path: &Path, units: PriceUnits) -> Result<Prices, CliError> {
        let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
            action: "read the prices file",
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |why: String| {
            CliError::usage(format!(
                "sweep: --prices {}: {why}; the file is a JSON object like \
                 {{\"H100-SXM-80GB\": 2.99, \"cpu-core\": {{\"per_hour\": 0.04, \"source\": \"...\", \"date\": \"2026-11\"}}}}",
                path.display()
            ))
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON ({e})")))?;
        let serde_json::Value::Object(map) = value else {
            return Err(bad("not a JSON object".into()));
        };
        let mut given = HashMap::new();
        for (key, v) in map {
            let price = |v: &serde_json::Value| v.as_f64().filter(|p| p.is_finite() && *p >= 0.0);
            let text = |v: &serde_json::Value, field: &str| -> Result<Option<String>, CliError> {
                match v.get(field) {
                    None | Some(serde_json::Value::Null) => Ok(None),
                    Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                    Some(_) => Err(bad(format!("'{key}': {field} is not text"))),
                }
            };
            let entry = match &v {
                serde_json::Value::Number(_) => Given {
                    per_hour: price(&v).ok_or_else(|| {
                        bad(format!("'{key}': {v} is not a price (a number >= 0)"))
                    })?,
                    source: None,
                    date: None,
                },
                serde_json::Value::Object(_) => Given {
                    per_hour: v
                        .get("per_hour")
                        .and_then(price)
                        .ok_or_else(|| bad(format!("'{key}' has no per_hour (a number >= 0)")))?,
                    source: text(&v, "source")?,
                    date: text(&v, "date")?,
                },
                _ => return Err(bad(format!("'{key}' is neither a number nor an object"))),
            };
            given.insert(key.to_lowercase(), entry);
        }
        Ok(Prices {
            units,
            given,
            file: Some(path.display().to_string()),
        })
    }

    fn given_for(&self, keys: &[&str]) -> Option<PriceRecord> {
        let file = self.file.as_deref()?;
        let (key, g) = keys
            .iter()
            .find_map(|k| self.given.get(&k.to_lowercase()).map(|g| (k, g)))?;
        Some(PriceRecord {
            per_device_hour: g.per_hour,
            units: self.units.to_string(),
            source: match &g.source {
                Some(s) => format!("{s} (--prices {file}, '{key}')"),
                None => format!("--prices {file}, '{key}'"),
            },
            date: g.date.clone(),
        })
    }

    /// One CPU rank of `threads` threads for one hour.
    pub fn cpu(&self, threads: usize) -> Option<PriceRecord> {
        let t = threads as f64;
        if let Some(mut p) = self.given_for(&[CPU_CORE_KEY]) {
            p.per_device_hour *= t;
            p.source = format!(
                "{} x {}",
                crate::train::target::threads_label(threads),
                p.source
            );
            return Some(p);
        }
        // The paper prices GPUs only: a CPU has no paper units.
        (self.units == PriceUnits::Usd).then(|| PriceRecord {
            per_device_hour: CPU_USD_PER_CORE_HOUR * t,
            units: self.units.to_string(),
            source: format!(
                "{} x frugal's default ${CPU_USD_PER_CORE_HOUR} per core-hour \
                 (a general-purpose cloud vCPU on demand)",
                crate::train::target::threads_label(threads)
            ),
            date: Some("2025".into()),
        })
    }

    /// One GPU the driver names `name` (or the emulated one) for one hour.
    pub fn gpu(&self, name: &str, emulated: bool) -> Option<PriceRecord> {
        if emulated {
            return self.given_for(&["emu"]);
        }
        let facts = facts::lookup(name);
        let mut keys = vec![name];
        if let Some(f) = facts {
            keys.insert(0, f.label);
        }
        if let Some(p) = self.given_for(&keys) {
            return Some(p);
        }
        let f = facts?;
        match self.units {
            PriceUnits::Usd => Some(PriceRecord {
                per_device_hour: f.default_usd_per_gpu_hour,
                units: self.units.to_string(),
                source: format!("built-in table, {}: {}", f.label, f.price_source),
                date: Some(f.price_date.to_string()),
            }),
            PriceUnits::Paper => f.paper_price_units.map(|p| PriceRecord {
                per_device_hour: p,
                units: self.units.to_string(),
                source: format!(
                    "the paper's relative price of {} (Ashkboos et al. 2024; A100-40GB = 1.00)",
                    f.label
                ),
                date: Some("2024".into()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("frugal-prices-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!(
            "{:x}.json",
            text.len() * 31 + text.bytes().map(usize::from).sum::<usize>()
        ));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn the_table_prices_known_gpus_with_source_and_date() {
        let p = Prices::builtin(PriceUnits::Usd);
        let h = p.gpu("NVIDIA H100 80GB HBM3", false).unwrap();
        assert!(h.per_device_hour > 0.0 && h.source.contains("H100-SXM-80GB"));
        assert!(h.date.is_some());
        assert!(p.gpu("NVIDIA Mystery", false).is_none());
        assert!(p.gpu("emulated GPU", true).is_none());
        let paper = Prices::builtin(PriceUnits::Paper);
        assert_eq!(
            paper
                .gpu("NVIDIA H100 80GB HBM3", false)
                .unwrap()
                .per_device_hour,
            2.53
        );
        assert!(
            paper.gpu("NVIDIA L4", false).is_none(),
            "the paper has no L4 price"
        );
        assert!(paper.cpu(2).is_none());
        let c = p.cpu(4).unwrap();
        assert!((c.per_device_hour - 4.0 * CPU_USD_PER_CORE_HOUR).abs() < 1e-12);
    }

    #[test]
    fn a_prices_file_overrides_by_label_name_or_key() {
        let path = file(
            r#"{"h100-sxm-80gb": {"per_hour": 2.0, "source": "quote", "date": "2026-11"},
                "NVIDIA L4": 0.5, "cpu-core": 0.01, "emu": 0.0}"#,
        );
        let p = Prices::load(&path, PriceUnits::Usd).unwrap();
        let h = p.gpu("NVIDIA H100 80GB HBM3", false).unwrap();
        assert_eq!(h.per_device_hour, 2.0);
        assert!(h.source.starts_with("quote (--prices"), "{}", h.source);
        assert_eq!(h.date.as_deref(), Some("2026-11"));
        assert_eq!(p.gpu("NVIDIA L4", false).unwrap().per_device_hour, 0.5);
        assert_eq!(p.cpu(3).unwrap().per_device_hour, 0.03);
        assert_eq!(p.gpu("emulated GPU", true).unwrap().per_device_hour, 0.0);
        // Not in the file: the table.
        assert!(p
            .gpu("NVIDIA A100-SXM4-40GB", false)
            .unwrap()
            .source
            .contains("built-in"));
    }

    #[test]
    fn bad_prices_files_say_the_format() {
        for text in [
            "[1]",
            "{\"x\": -1}",
            "{\"x\": \"cheap\"}",
            "{\"x\": {\"source\": \"a\"}}",
            "{",
        ] {
            let e = Prices::load(&file(text), PriceUnits::Usd)
                .unwrap_err()
                .to_string();
            assert!(e.contains("the file is a JSON object like"), "{text}: {e}");
        }
        let e = Prices::load(Path::new("/nonexistent/prices.json"), PriceUnits::Usd).unwrap_err();
        assert!(e.to_string().contains("prices"), "{e}");
    }
}
