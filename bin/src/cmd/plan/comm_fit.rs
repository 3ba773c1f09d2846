//! `--calibrate` with `frugal bench allreduce --json` lines: the communication model
//! against measured collectives on this host.
//!
//! Each line (bytes, ranks, time_ms, op, and `same_host`: shm or tcp) is predicted as the
//! plan predicts a CPU job's collective on this host (`host::cpu_path`: the transport's
//! table figures, slowed by ranks that outnumber the cores). Then, per transport, one
//! latency and one bandwidth are fitted: least squares on the relative errors (linear in
//! latency and 1/bandwidth, as the
//! model is `time = (latencies x latency + bytes / bandwidth) x oversubscription`),
//! reweighted towards the least mean absolute percentage error, the error reported. Every
//! point is printed with its measured time, the table's prediction and the fitted one.

use serde::Deserialize;
use serde_json::{json, Value};

use super::calibrate::percent_error;
use super::cpu::host_cores;
use super::host::{cpu_path, CommKind, Op, Path};

/// The fields of a `frugal bench allreduce --json` line the plan reads.
#[derive(Deserialize)]
pub struct AllreduceLine {
    bytes: u64,
    ranks: usize,
    time_ms: f64,
    #[serde(default)]
    op: Option<String>,
    /// shm, unix or tcp (absent from lines of older builds: the plan's --comm says).
    #[serde(default)]
    same_host: Option<String>,
}

/// One measured collective.
#[derive(Clone, Debug)]
pub struct CommPoint {
    pub source: String,
    pub transport: CommKind,
    pub op: &'static str,
    pub ranks: usize,
    pub bytes: u64,
    pub measured_s: f64,
    /// With the table's figures.
    pub predicted_s: f64,
    /// With the figures fitted to the transport's points.
    pub fitted_s: f64,
    /// The model's terms: (latencies, bytes at the link's rate) x oversubscription.
    terms: (f64, f64),
}

/// The fitted figures of one transport.
#[derive(Clone, Debug)]
pub struct CommFit {
    pub transport: CommKind,
    pub table: Path,
    pub latency_s: f64,
    pub bytes_per_s: f64,
    pub points: usize,
    pub mape_before: f64,
    pub mape_after: f64,
}

/// The communication model's calibration.
#[derive(Clone, Debug, Default)]
pub struct CommCalibration {
    pub points: Vec<CommPoint>,
    pub fits: Vec<CommFit>,
}

/// The point of `line`, or why it is not used. `comm` is the plan's `--comm`, which says
/// the transport of a line that does not.
pub fn point(line: &AllreduceLine, source: String, comm: CommKind) -> Result<CommPoint, String> {
    let transport = match line.same_host.as_deref() {
        Some("shm") => CommKind::Shm,
        Some("tcp") => CommKind::Socket,
        Some(other) => {
            return Err(format!(
                "same_host {other}: the plan models shm and tcp (--comm shm, --comm socket)"
            ))
        }
        None => match comm {
            CommKind::Nccl => {
                return Err(
                    "the line does not say its transport (same_host): give plan \
                            --comm shm or --comm socket, as it was measured"
                        .into(),
                )
            }
            other => other,
        },
    };
    let name = line.op.as_deref().unwrap_or("all-reduce");
    let op = Op::parse(name).ok_or_else(|| format!("op '{name}' is not a collective"))?;
    if line.ranks < 2 {
        return Err(format!("{} rank(s): nothing moves", line.ranks));
    }
    if !(line.time_ms.is_finite() && line.time_ms > 0.0) || line.bytes == 0 {
        return Err("no time or no bytes measured".into());
    }
    let path = cpu_path(transport, line.ranks, host_cores());
    let (latencies, per_byte) = path.terms(op, line.bytes as f64, line.ranks);
    let terms = (
        latencies * path.oversubscribed,
        per_byte * path.oversubscribed,
    );
    let predicted_s = path.time(op, line.bytes as f64, line.ranks);
    Ok(CommPoint {
        source,
        transport,
        op: match op {
            Op::AllReduce => "all-reduce",
            Op::ReduceScatter => "reduce-scatter",
            Op::AllGather => "all-gather",
        },
        ranks: line.ranks,
        bytes: line.bytes,
        measured_s: line.time_ms / 1e3,
        predicted_s,
        fitted_s: predicted_s,
        terms,
    })
}

/// Fits a latency and a bandwidth per transport and fills in every point's fitted time.
pub fn fit(mut points: Vec<CommPoint>) -> CommCalibration {
    let mut fits = Vec::new();
    for transport in [CommKind::Shm, CommKind::Socket] {
        let mine: Vec<&CommPoint> = points.iter().filter(|p| p.transport == transport).collect();
        if mine.is_empty() {
            continue;
        }
        let table = cpu_path(transport, 1, 1);
        let (latency_s, inverse_bw) =
            fit_pair(&mine, table.link.latency_s, 1.0 / table.link.bytes_per_s);
        let mape = |f: &dyn Fn(&CommPoint) -> f64| {
            mine.iter()
                .map(|p| percent_error(f(p), p.measured_s).abs())
                .sum::<f64>()
                / mine.len() as f64
        };
        let fitted = |p: &CommPoint| p.terms.0 * latency_s + p.terms.1 * inverse_bw;
        fits.push(CommFit {
            transport,
            table,
            latency_s,
            bytes_per_s: 1.0 / inverse_bw,
            points: mine.len(),
            mape_before: mape(&|p| p.predicted_s),
            mape_after: mape(&fitted),
        });
        for p in points.iter_mut().filter(|p| p.transport == transport) {
            p.fitted_s = p.terms.0 * latency_s + p.terms.1 * inverse_bw;
        }
    }
    CommCalibration { points, fits }
}

/// (latency, 1/bandwidth) with the least mean absolute percentage error over the points
/// (the error the plan reports), both positive: iteratively reweighted least squares on
/// the relative errors, started from the plain least-squares fit, keeping the best pair
/// seen and the table's own where nothing beats it (so the error after the fit is never
/// above the error before).
fn fit_pair(points: &[&CommPoint], table_latency: f64, table_inverse_bw: f64) -> (f64, f64) {
    // Rows scaled by 1/t: the relative error of (L, β) at row i is x·L + y·β − 1.
    let rows: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p.terms.0 / p.measured_s, p.terms.1 / p.measured_s))
        .collect();
    let mape = |(l, b): (f64, f64)| {
        rows.iter()
            .map(|(x, y)| (x * l + y * b - 1.0).abs())
            .sum::<f64>()
    };
    let mut best = (table_latency, table_inverse_bw);
    let mut weights = vec![1.0; rows.len()];
    for _ in 0..50 {
        let Some(candidate) = weighted_least_squares(&rows, &weights) else {
            break;
        };
        if mape(candidate) < mape(best) {
            best = candidate;
        }
        for (w, (x, y)) in weights.iter_mut().zip(&rows) {
            *w = 1.0 / (x * candidate.0 + y * candidate.1 - 1.0).abs().max(1e-6);
        }
    }
    best
}

/// (L, β) > 0 minimising Σ wᵢ(xᵢ·L + yᵢ·β − 1)²; where the minimum has a term ≤ 0, the
/// other fitted alone; None if neither is positive.
fn weighted_least_squares(rows: &[(f64, f64)], weights: &[f64]) -> Option<(f64, f64)> {
    let (mut sxx, mut sxy, mut syy, mut sx, mut sy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for ((x, y), w) in rows.iter().zip(weights) {
        sxx += w * x * x;
        sxy += w * x * y;
        syy += w * y * y;
        sx += w * x;
        sy += w * y;
    }
    let det = sxx * syy - sxy * sxy;
    if det.abs() > 1e-12 * sxx * syy {
        let latency = (sx * syy - sy * sxy) / det;
        let inverse_bw = (sxx * sy - sxy * sx) / det;
        if latency > 0.0 && inverse_bw > 0.0 {
            return Some((latency, inverse_bw));
        }
    }
    // Bandwidth alone (no latency) is the only other physical answer.
    (syy > 0.0 && sy > 0.0).then(|| (0.0, sy / syy))
}

fn name(t: CommKind) -> &'static str {
    match t {
        CommKind::Shm => "shm",
        _ => "tcp",
    }
}

/// The section `frugal plan` prints.
pub fn text(c: &CommCalibration) -> String {
    let mut s = format!(
        "\ncommunication: measured collectives (frugal bench allreduce) against the plan's \
         model of this host ({} core(s))\n",
        host_cores()
    );
    s += &format!(
        "{:<5} {:<14} {:>5} {:>10} {:>12} {:>12} {:>8} {:>10} {:>8}  {}\n",
        "path",
        "op",
        "ranks",
        "bytes",
        "measured ms",
        "predicted ms",
        "error",
        "fitted ms",
        "error",
        "source"
    );
    for p in &c.points {
        s += &format!(
            "{:<5} {:<14} {:>5} {:>10} {:>12.4} {:>12.4} {:>7.1}% {:>10.4} {:>7.1}%  {}\n",
            name(p.transport),
            p.op,
            p.ranks,
            p.bytes,
            p.measured_s * 1e3,
            p.predicted_s * 1e3,
            percent_error(p.predicted_s, p.measured_s),
            p.fitted_s * 1e3,
            percent_error(p.fitted_s, p.measured_s),
            p.source
        );
    }
    for f in &c.fits {
        s += &format!(
            "{}: table {:.2} GB/s, {:.1} us -> fitted {:.3} GB/s, {:.1} us per {} ({} point(s)); \
             mean absolute percentage error {:.1}% before, {:.1}% after\n",
            name(f.transport),
            f.table.link.bytes_per_s / 1e9,
            f.table.link.latency_s * 1e6,
            f.bytes_per_s / 1e9,
            f.latency_s * 1e6,
            if f.table.shared_memory {
                "barrier"
            } else {
                "ring step"
            },
            f.points,
            f.mape_before,
            f.mape_after
        );
    }
    s
}

/// The section of `frugal plan --json`.
pub fn json(c: &CommCalibration) -> Value {
    json!({
        "points": c.points.iter().map(|p| json!({
            "source": p.source,
            "same_host": name(p.transport),
            "op": p.op,
            "ranks": p.ranks,
            "bytes": p.bytes,
            "measured_s": p.measured_s,
            "predicted_s": p.predicted_s,
            "error_percent": percent_error(p.predicted_s, p.measured_s),
            "fitted_s": p.fitted_s,
            "fitted_error_percent": percent_error(p.fitted_s, p.measured_s),
        })).collect::<Vec<_>>(),
        "fits": c.fits.iter().map(|f| json!({
            "same_host": name(f.transport),
            "table_bytes_per_s": f.table.link.bytes_per_s,
            "table_latency_s": f.table.link.latency_s,
            "fitted_bytes_per_s": f.bytes_per_s,
            "fitted_latency_s": f.latency_s,
            "points": f.points,
            "mape_before_percent": f.mape_before,
            "mape_after_percent": f.mape_after,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(bytes: u64, ranks: usize, time_ms: f64, same_host: &str) -> AllreduceLine {
        AllreduceLine {
            bytes,
            ranks,
            time_ms,
            op: Some("all-reduce".into()),
            same_host: Some(same_host.into()),
        }
    }

    #[test]
    fn the_fit_recovers_a_hosts_latency_and_bandwidth() {
        // Synthetic measurements from a ring of 30 us per step and 2 GB/s.
        let host = Path {
            link: super::super::links::Link {
                latency_s: 30e-6,
                bytes_per_s: 2e9,
                ..super::super::host::LOOPBACK_TCP
            },
            ..cpu_path(CommKind::Socket, 2, host_cores())
        };
        let mut points = Vec::new();
        for ranks in [2, 4] {
            for bytes in [4096u64, 1 << 20, 16 << 20] {
                let path = Path {
                    oversubscribed: cpu_path(CommKind::Socket, ranks, host_cores()).oversubscribed,
                    ..host
                };
                let t = path.all_reduce_s(bytes as f64, ranks);
                points.push(
                    point(
                        &line(bytes, ranks, t * 1e3, "tcp"),
                        String::new(),
                        CommKind::Nccl,
                    )
                    .unwrap(),
                );
            }
        }
        let c = fit(points);
        assert_eq!(c.fits.len(), 1);
        let f = &c.fits[0];
        assert!((f.latency_s - 30e-6).abs() < 1e-9, "{}", f.latency_s);
        assert!((f.bytes_per_s - 2e9).abs() < 1.0, "{}", f.bytes_per_s);
        assert!(f.mape_after < 1e-6 && f.mape_after <= f.mape_before);
    }

    #[test]
    fn lines_that_do_not_say_their_transport_take_the_plans() {
        let mut l = line(4096, 2, 0.05, "shm");
        l.same_host = None;
        assert!(point(&l, String::new(), CommKind::Nccl).is_err());
        assert_eq!(
            point(&l, String::new(), CommKind::Shm).unwrap().transport,
            CommKind::Shm
        );
        let unix = line(4096, 2, 0.05, "unix");
        assert!(point(&unix, String::new(), CommKind::Shm)
            .unwrap_err()
            .contains("unix"));
    }
}
