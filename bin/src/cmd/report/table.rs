//! The report's figures as text, and its tables as markdown and HTML.
//!
//! Every figure is printed so that a reader (or a test) can recompute it from
//! `results.jsonl` to the precision shown:
//! - tokens/s, tokens/s per device, tokens per money unit, price per
//!   device-hour, comm wait: [`sig4`], at least 4 significant digits (more for
//!   numbers of 5 or more digits, which print whole);
//! - the spread of a repeated figure: `mean ± std`, each [`sig4`];
//! - MFU: a percentage with one decimal ([`percent`]), "unknown" where the
//!   device's peak is not known;
//! - memory: GiB (2^30 bytes) with two decimals ([`gib`]);
//! - losses: three decimals.
//!
//! A figure that does not apply (a configuration that did not run) is "-".

use crate::cmd::sweep::record::{Record, Spread, Status};

/// What a cell holds where a figure does not apply or was not measured.
pub const NONE: &str = "-";

/// `x` with at least 4 significant digits, as a plain decimal (no exponent):
/// 12.35, 0.001235, 1235, 123457.
pub fn sig4(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    if x == 0.0 {
        return "0.000".into();
    }
    let magnitude = x.abs().log10().floor() as i32;
    let decimals = (3 - magnitude).max(0) as usize;
    let text = format!("{x:.decimals$}");
    // Rounding may carry into a new digit (9.9996 -> "10.000"): then one
    // decimal fewer is still 4 significant digits.
    let rounded: f64 = text.parse().unwrap_or(x);
    if decimals > 0 && rounded.abs() >= 10f64.powi(magnitude + 1) {
        let fewer = decimals - 1;
        return format!("{x:.fewer$}");
    }
    text
}

/// A repeated figure: "mean ± std".
pub fn spread(s: &Spread) -> String {
    format!("{} ± {}", sig4(s.mean), sig4(s.std))
}

/// A fraction as a percentage with one decimal: 0.4131 -> "41.3%".
pub fn percent(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

/// Bytes in GiB (2^30) with two decimals, no unit: the columns name it.
pub fn gib(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / (1u64 << 30) as f64)
}

/// The first line of `reason`, cut to `max` characters: a table cell, not a log.
pub fn short(reason: &str, max: usize) -> String {
    let first = reason.lines().map(str::trim).find(|l| !l.is_empty());
    let first = first.unwrap_or("");
    if first.chars().count() <= max {
        return first.to_string();
    }
    let cut: String = first.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// A status cell: "ok", the oom's reason as the sweep recorded it ("oom
/// (planned X GiB of Y)"), or "failed: why" / "timeout: why".
pub fn status(r: &Record) -> String {
    let word = match r.status {
        Status::Ok => return "ok".into(),
        Status::Oom => "oom",
        Status::Failed => "failed",
        Status::Timeout => "timeout",
    };
    match r.reason.as_deref().map(|why| short(why, 80)) {
        Some(why) if why.starts_with(word) => why,
        Some(why) if !why.is_empty() => format!("{word}: {why}"),
        _ => word.to_string(),
    }
}

/// A table of text cells; markdown and HTML render the same cells.
#[derive(Clone, Debug)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// The columns of a configuration's row, in order ([`row`] fills them).
pub const COLUMNS: [&str; 17] = [
    "device",
    "devices",
    "batch",
    "attention",
    "shard",
    "comm",
    "threads",
    "tokens/s",
    "tokens/s per device",
    "MFU",
    "planned / capacity GiB",
    "measured peak GiB",
    "price per device-hour",
    "tokens per money unit",
    "comm wait ms",
    "loss first→last",
    "status",
];

/// One configuration's cells, in [`COLUMNS`]' order.
pub fn row(r: &Record) -> Vec<String> {
    let c = &r.config;
    let opt = |v: Option<String>| v.unwrap_or_else(|| NONE.to_string());
    let ran = r.status == Status::Ok;
    let memory = match (r.planned_bytes, r.capacity_bytes) {
        (Some(p), Some(cap)) => format!("{} / {}", gib(p), gib(cap)),
        (Some(p), None) => format!("{} / ?", gib(p)),
        (None, Some(cap)) => format!("? / {}", gib(cap)),
        (None, None) => NONE.into(),
    };
    let money = r.money_label();
    let price = r.price.as_ref().map(|p| match money {
        "$" => format!("${}", sig4(p.per_device_hour)),
        unit => format!("{} {unit}", sig4(p.per_device_hour)),
    });
    let per_money = r.tokens_per_dollar.map(|t| match money {
        "$" => format!("{} per $", sig4(t)),
        unit => format!("{} per {unit}", sig4(t)),
    });
    let loss = match (r.first_loss, r.last_loss) {
        (Some(a), Some(b)) => Some(format!("{a:.3}→{b:.3}")),
        _ => None,
    };
    // MFU is "unknown" only for a run that ran: there it means the device's
    // peak is not known; a configuration that did not run has no figure.
    let mfu = match (r.mfu, ran) {
        (Some(m), _) => percent(m),
        (None, true) => "unknown".into(),
        (None, false) => NONE.into(),
    };
    vec![
        crate::cmd::report::device_type(r),
        c.devices.to_string(),
        c.batch.to_string(),
        c.attention.clone(),
        c.shard.clone(),
        c.comm.clone(),
        opt(c.threads.map(|t| t.to_string())),
        opt(r.tokens_per_s.as_ref().map(spread)),
        opt(r.tokens_per_s_per_device.as_ref().map(spread)),
        mfu,
        memory,
        opt(r.measured_peak_bytes.map(gib)),
        opt(price),
        opt(per_money),
        opt(r.comm_wait_ms.map(sig4)),
        opt(loss),
        status(r),
    ]
}

/// The full table of `records`, one row each, in their order.
pub fn full(records: &[&Record]) -> Table {
    Table {
        columns: COLUMNS.iter().map(|c| c.to_string()).collect(),
        rows: records.iter().map(|r| row(r)).collect(),
    }
}

/// Text made safe inside a markdown table cell: a `|` would end the cell, a
/// newline the row, and `<` could open HTML in a renderer.
pub fn md_cell(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace(['\n', '\r'], " ")
}

/// Text made safe as HTML (and XML) character data or attribute value.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl Table {
    /// A GitHub-flavoured markdown table.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let line = |cells: &[String]| {
            let cells: Vec<String> = cells.iter().map(|c| md_cell(c)).collect();
            format!("| {} |\n", cells.join(" | "))
        };
        out.push_str(&line(&self.columns));
        out.push_str(&format!("|{}\n", "---|".repeat(self.columns.len())));
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }

    /// An HTML `<table>`, every cell escaped.
    pub fn html(&self) -> String {
        let mut out = String::from("<table>\n<thead><tr>");
        for c in &self.columns {
            out.push_str(&format!("<th>{}</th>", html_escape(c)));
        }
        out.push_str("</tr></thead>\n<tbody>\n");
        for r in &self.rows {
            out.push_str("<tr>");
            for c in r {
                out.push_str(&format!("<td>{}</td>", html_escape(c)));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</tbody>\n</table>\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::report::tests::record;

    #[test]
    fn sig4_keeps_four_significant_digits() {
        assert_eq!(sig4(12.3456), "12.35");
        assert_eq!(sig4(0.0012345), "0.001234");
        assert_eq!(sig4(1234.4), "1234");
        assert_eq!(sig4(123456.7), "123457");
        assert_eq!(sig4(-5.0), "-5.000");
        assert_eq!(sig4(0.0), "0.000");
        assert_eq!(sig4(9.9996), "10.00");
        assert_eq!(sig4(0.99996), "1.000");
    }

    #[test]
    fn figures_and_reasons() {
        assert_eq!(percent(0.41309), "41.3%");
        assert_eq!(gib(3 << 29), "1.50");
        assert_eq!(short("exit 1\nlast line", 80), "exit 1");
        assert_eq!(short("abcdef", 4), "abc…");
        let mut r = record("tiny", 1, 1, 100.0);
        assert_eq!(status(&r), "ok");
        r.status = Status::Oom;
        r.reason = Some("oom (planned 90.00 GiB of 79.10)".into());
        assert_eq!(status(&r), "oom (planned 90.00 GiB of 79.10)");
        r.status = Status::Timeout;
        r.reason = Some("stopped after 600 s".into());
        assert_eq!(status(&r), "timeout: stopped after 600 s");
    }

    #[test]
    fn a_row_shows_every_figure() {
        let r = record("tiny", 2, 4, 1000.0);
        let cells = row(&r);
        assert_eq!(cells.len(), COLUMNS.len());
        assert_eq!(cells[7], "1000 ± 0.000");
        assert_eq!(cells[8], "500.0 ± 0.000");
        assert_eq!(cells[9], "25.0%");
        assert_eq!(cells[10], "1.00 / 80.00");
        assert_eq!(cells[12], "$2.000");
        assert_eq!(cells[13], "900000 per $");
        assert_eq!(cells[15], "10.000→8.000");
    }

    #[test]
    fn cells_are_escaped() {
        assert_eq!(md_cell("a|b\nc<d>"), "a\\|b c&lt;d&gt;");
        assert_eq!(
            html_escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let t = Table {
            columns: vec!["a".into()],
            rows: vec![vec!["<script>".into()]],
        };
        assert!(t.html().contains("<td>&lt;script&gt;</td>"));
        assert_eq!(t.markdown(), "| a |\n|---|\n| &lt;script&gt; |\n");
    }
}
