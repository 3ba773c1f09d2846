//! What the report says, before it is markdown or HTML: the sweeps' facts,
//! and per model its best configurations, its full table and its plots.
//! `report.md` ([`Document::markdown`]) and `index.html` (`html.rs`) render
//! this one structure, so they cannot disagree.

use std::collections::BTreeSet;

use super::plots::Drawn;
use super::table::{self, sig4, Table};
use super::{device_type, Loaded};
use crate::cmd::sweep::record::{Record, Status};

/// How the tables print their figures (`table.rs` says the same for tests).
pub const FIGURES: &str = "Figures: tokens/s, prices, tokens per money unit and comm wait with \
    at least 4 significant digits (mean ± sample std over the repeats); MFU in percent with one \
    decimal; memory in GiB (2^30 bytes) with two decimals; - where a figure does not apply.";

/// What the report says when the sweeps hold no record.
pub const NOTHING_YET: &str =
    "No configuration has finished yet: the sweeps hold no record. Run the report again later.";

/// One fact of the header: "protocol: 3 repeats × 10 steps ...".
#[derive(Clone, Debug)]
pub struct Fact {
    pub label: &'static str,
    pub value: String,
}

/// A model's part of the report.
#[derive(Clone, Debug)]
pub struct ModelSection {
    pub model: String,
    /// The best configurations: a first column says by what.
    pub best: Table,
    /// Every configuration of the model.
    pub full: Table,
    /// The model's plots: file name, title and note.
    pub plots: Vec<PlotEntry>,
    /// Plots not drawn: "title: why".
    pub not_drawn: Vec<String>,
}

/// A drawn plot as the report lists it.
#[derive(Clone, Debug)]
pub struct PlotEntry {
    pub file: String,
    pub title: String,
    pub note: String,
}

/// The whole report.
#[derive(Clone, Debug)]
pub struct Document {
    pub facts: Vec<Fact>,
    pub models: Vec<ModelSection>,
}

impl Document {
    pub fn of(loaded: &Loaded, drawn: &Drawn) -> Document {
        let mut records: Vec<&Record> = loaded.records.iter().collect();
        records.sort_by_key(|r| order(r));
        let models: BTreeSet<&str> = records.iter().map(|r| r.config.model.as_str()).collect();
        let models = models
            .into_iter()
            .map(|model| {
                let of_model: Vec<&Record> = records
                    .iter()
                    .copied()
                    .filter(|r| r.config.model == model)
                    .collect();
                ModelSection {
                    model: model.to_string(),
                    best: best_table(&of_model),
                    full: table::full(&of_model),
                    plots: drawn
                        .plots
                        .iter()
                        .filter(|p| p.model == model)
                        .map(|p| PlotEntry {
                            file: p.file.clone(),
                            title: p.title.clone(),
                            note: p.note.clone(),
                        })
                        .collect(),
                    not_drawn: drawn
                        .skipped
                        .iter()
                        .filter(|s| s.model == model)
                        .map(|s| format!("{}: {}", s.title, s.why))
                        .collect(),
                }
            })
            .collect();
        Document {
            facts: facts(loaded),
            models,
        }
    }

    /// `report.md`.
    pub fn markdown(&self) -> String {
        let mut out = String::from("# frugal sweep report\n\n");
        for f in &self.facts {
            out.push_str(&format!(
                "- **{}**: {}\n",
                f.label,
                table::md_cell(&f.value)
            ));
        }
        out.push_str(&format!("\n{FIGURES}\n"));
        if self.models.is_empty() {
            out.push_str(&format!("\n{NOTHING_YET}\n"));
        }
        for m in &self.models {
            out.push_str(&format!("\n## {}\n\n", table::md_cell(&m.model)));
            out.push_str("### Best configurations\n\n");
            if m.best.rows.is_empty() {
                out.push_str("No configuration of this model ran.\n\n");
            } else {
                out.push_str(&m.best.markdown());
                out.push('\n');
            }
            out.push_str("### All configurations\n\n");
            out.push_str(&m.full.markdown());
            out.push('\n');
            out.push_str("### Plots\n\n");
            for p in &m.plots {
                out.push_str(&format!(
                    "![{}]({})\n\n{}\n\n",
                    table::md_cell(&p.title),
                    p.file,
                    table::md_cell(&p.note)
                ));
            }
            for why in &m.not_drawn {
                out.push_str(&format!("- not drawn: {}\n", table::md_cell(why)));
            }
        }
        out
    }
}

/// The order of the tables' rows: by device type, then every axis.
fn order(r: &Record) -> (String, usize, usize, String, String, String, Option<usize>) {
    let c = &r.config;
    (
        device_type(r),
        c.devices,
        c.batch,
        c.attention.clone(),
        c.shard.clone(),
        c.comm.clone(),
        c.threads,
    )
}

/// The first column of the best table.
pub const BEST_BY: &str = "best by";

/// The best configuration by tokens per money unit (one row per unit, when
/// records price in several) and by tokens/s, of `records` that ran.
fn best_table(records: &[&Record]) -> Table {
    let ran: Vec<&Record> = records
        .iter()
        .copied()
        .filter(|r| r.status == Status::Ok)
        .collect();
    let mut rows = Vec::new();
    let units: BTreeSet<&str> = ran.iter().map(|r| r.money_label()).collect();
    for unit in units {
        let best = ran
            .iter()
            .copied()
            .filter(|r| r.money_label() == unit)
            .filter_map(|r| r.tokens_per_dollar.map(|t| (t, r)))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((_, r)) = best {
            rows.push(labelled(&format!("tokens per {unit}"), r));
        }
    }
    let fastest = ran
        .iter()
        .copied()
        .filter_map(|r| r.tokens_per_s.as_ref().map(|s| (s.mean, r)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, r)) = fastest {
        rows.push(labelled("tokens/s", r));
    }
    let mut columns = vec![BEST_BY.to_string()];
    columns.extend(table::COLUMNS.iter().map(|c| c.to_string()));
    Table { columns, rows }
}

fn labelled(by: &str, r: &Record) -> Vec<String> {
    let mut row = vec![by.to_string()];
    row.extend(table::row(r));
    row
}

/// The distinct values of `f` over `records`, in first-seen order.
fn distinct(records: &[Record], f: impl Fn(&Record) -> String) -> Vec<String> {
    let mut seen = Vec::new();
    for r in records {
        let v = f(r);
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    seen
}

/// The header: what was read and what it was measured with.
fn facts(loaded: &Loaded) -> Vec<Fact> {
    let records = &loaded.records;
    let mut facts = Vec::new();
    let sweeps: Vec<String> = loaded
        .sweeps
        .iter()
        .map(|s| {
            let cut = if s.skipped_tail {
                ", a cut-off last line skipped"
            } else {
                ""
            };
            format!("{} ({} records{cut})", s.dir.display(), s.records)
        })
        .collect();
    facts.push(Fact {
        label: "sweeps read",
        value: sweeps.join("; "),
    });
    let count = |s: Status| records.iter().filter(|r| r.status == s).count();
    let replaced = match loaded.replaced {
        0 => String::new(),
        n => format!("; {n} earlier record(s) replaced by a later measurement"),
    };
    facts.push(Fact {
        label: "configurations",
        value: format!(
            "{}: {} ok, {} oom, {} failed, {} timeout{replaced}",
            records.len(),
            count(Status::Ok),
            count(Status::Oom),
            count(Status::Failed),
            count(Status::Timeout)
        ),
    });
    facts.push(Fact {
        label: "protocol",
        value: distinct(records, |r| {
            let p = r.protocol;
            format!(
                "{} repeat(s) × {} measured step(s) after {} warm-up step(s)",
                p.repeats, p.steps, p.warmup_steps
            )
        })
        .join("; "),
    });
    facts.push(Fact {
        label: "train flags",
        value: distinct(records, |r| {
            if r.train_flags.is_empty() {
                "(none)".to_string()
            } else {
                r.train_flags.join(" ")
            }
        })
        .join("; "),
    });
    facts.push(Fact {
        label: "frugal",
        value: distinct(records, |r| {
            format!("{} (commit {})", r.frugal_version, r.commit)
        })
        .join("; "),
    });
    facts.push(Fact {
        label: "devices",
        value: distinct(records, |r| {
            let driver = r
                .driver
                .as_deref()
                .map_or(String::new(), |d| format!(", driver {d}"));
            format!("{} ({}{driver})", device_type(r), r.config.device)
        })
        .join("; "),
    });
    facts.push(Fact {
        label: "prices",
        value: distinct(records, |r| {
            let price = match &r.price {
                Some(p) => format!(
                    "{} {} per device-hour (source: {}, {})",
                    sig4(p.per_device_hour),
                    match p.units.as_str() {
                        "usd" => "$",
                        other => other,
                    },
                    p.source,
                    p.date.as_deref().unwrap_or("date unknown")
                ),
                None => "unknown".to_string(),
            };
            format!("{}: {price}", device_type(r))
        })
        .join("; "),
    });
    facts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::report::tests::record;
    use crate::cmd::report::SweepRead;

    #[test]
    fn the_best_rows_are_the_best_records() {
        let mut cheap = record("tiny", 1, 8, 900.0);
        // Cheaper per device-hour: most tokens per $, not the fastest.
        cheap.tokens_per_dollar = Some(1e9);
        let mut failed = record("tiny", 4, 8, 1e6);
        failed.status = Status::Failed;
        let records = [record("tiny", 2, 4, 1000.0), cheap, failed];
        let best = best_table(&records.iter().collect::<Vec<_>>());
        assert_eq!(best.rows.len(), 2);
        assert_eq!(best.rows[0][0], "tokens per $");
        assert_eq!(best.rows[0][3], "8");
        assert_eq!(best.rows[1][0], "tokens/s");
        assert_eq!(best.rows[1][2], "2");
    }

    #[test]
    fn the_header_names_protocol_devices_and_prices() {
        let mut no_price = record("tiny", 1, 1, 10.0);
        no_price.device_name = Some("Some CPU".into());
        no_price.config.device = "cpu".into();
        no_price.driver = None;
        no_price.price = None;
        let loaded = Loaded {
            records: vec![record("tiny", 1, 1, 10.0), no_price],
            sweeps: vec![SweepRead {
                dir: "sweeps/a".into(),
                records: 3,
                skipped_tail: true,
            }],
            replaced: 1,
        };
        let md = Document::of(&loaded, &Drawn::default()).markdown();
        for text in [
            "sweeps/a (3 records, a cut-off last line skipped)",
            "2: 2 ok, 0 oom, 0 failed, 0 timeout; 1 earlier record(s) replaced",
            "1 repeat(s) × 2 measured step(s) after 1 warm-up step(s)",
            "0.1.0 (commit abc)",
            "NVIDIA H100 80GB HBM3 (cuda, driver 550.54)",
            "Some CPU (cpu)",
            "NVIDIA H100 80GB HBM3: 2.000 $ per device-hour (source: list price, 2025-01)",
            "Some CPU: unknown",
        ] {
            assert!(md.contains(text), "{text} not in\n{md}");
        }
    }
}
