//! The result of a run: rows of figures with their ratio to a ceiling and
//! their target, printed as a table and written as JSON.
//!
//! ```
//! use loadgen::report::{Row, Target};
//!
//! let row = Row::new("fetch", "ops/s", 9_000.0, "/s")
//!     .ratio("fetch-size", 20_000.0)
//!     .target(Target::RatioAtLeast(0.40));
//! assert_eq!(row.met, Some(true));
//! ```

use std::fmt::Write as _;

use serde::Serialize;

use crate::{proc::Machine, stats::ratio};

/// What a figure must reach.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Target {
    /// The ratio to the row's ceiling is at least this.
    RatioAtLeast(f64),
    /// The value is at least this.
    AtLeast(f64),
    /// The value is at most this.
    AtMost(f64),
    /// The ratio to the row's reference is at most this (latencies).
    RatioAtMost(f64),
}

impl Target {
    fn describe(self, unit: &str, reference: Option<&str>) -> String {
        match self {
            Target::RatioAtLeast(r) => {
                format!("≥ {:.0} % of {}", r * 100.0, reference.unwrap_or("ceiling"))
            }
            Target::AtLeast(v) => format!("≥ {} {unit}", human(v)),
            Target::AtMost(v) => format!("≤ {} {unit}", human(v)),
            Target::RatioAtMost(r) => {
                format!("≤ {r:.1}× {}", reference.unwrap_or("ceiling"))
            }
        }
    }
}

/// One figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// What was measured (`ops/s`, `p99`, `RSS/instance`, …).
    pub figure: String,
    /// The absolute value.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// Which ceiling the ratio refers to.
    pub ceiling: Option<String>,
    /// `value / ceiling`.
    pub ratio: Option<f64>,
    /// The target, if the issue sets one.
    pub target: Option<Target>,
    /// Whether the target is met.
    pub met: Option<bool>,
    /// A remark (scaled-down sizes, body size, …).
    pub note: String,
}

impl Row {
    /// A figure without ratio or target.
    pub fn new(scenario: &str, figure: &str, value: f64, unit: &str) -> Row {
        Row {
            scenario: scenario.into(),
            figure: figure.into(),
            value,
            unit: unit.into(),
            ceiling: None,
            ratio: None,
            target: None,
            met: None,
            note: String::new(),
        }
    }

    /// The ratio to the same figure of the named ceiling.
    pub fn ratio(mut self, ceiling: &str, reference: f64) -> Row {
        self.ceiling = Some(ceiling.into());
        self.ratio = ratio(self.value, reference);
        self.evaluate();
        self
    }

    /// Sets the target and evaluates it.
    pub fn target(mut self, target: Target) -> Row {
        self.target = Some(target);
        self.evaluate();
        self
    }

    /// Adds a remark.
    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = note.into();
        self
    }

    fn evaluate(&mut self) {
        self.met = match self.target {
            None => None,
            Some(Target::RatioAtLeast(r)) => self.ratio.map(|x| x >= r),
            Some(Target::AtLeast(v)) => Some(self.value >= v),
            Some(Target::AtMost(v)) => Some(self.value <= v),
            Some(Target::RatioAtMost(r)) => self.ratio.map(|x| x <= r),
        };
    }
}

/// Memory per unit of work: per instance, or per parked poller.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PerUnit {
    /// `instance` or `poller`.
    pub unit: String,
    /// Our server's RSS growth per unit, bytes.
    pub ours: f64,
    /// The ceiling's, when it has one (parked pollers).
    pub ceiling: Option<f64>,
}

/// One line of the scaling table: a figure at one size of the work, next
/// to its ceiling at the same size, with the CPU time each process spent
/// per operation and the server's memory at that size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScalingRow {
    /// The size: `100/app (36.9 kB)`, `1M instances`, `10k pollers`.
    pub size: String,
    /// What was measured: `fetch ops/s`, `register ops/s`, `wake-up p99`…
    pub figure: String,
    /// Unit of `ours` and `ceiling`.
    pub unit: String,
    /// Our server's figure (none on a memory-only line).
    pub ours: Option<f64>,
    /// The ceiling's figure.
    pub ceiling: Option<f64>,
    /// Which ceiling.
    pub ceiling_name: Option<String>,
    /// Our server's CPU time per operation, microseconds.
    pub cpu_us_ours: Option<f64>,
    /// The ceiling's CPU time per operation, microseconds.
    pub cpu_us_ceiling: Option<f64>,
    /// Our server's RSS at this size, bytes.
    pub rss_bytes: Option<u64>,
    /// RSS per unit of the size.
    pub rss_per: Option<PerUnit>,
}

impl ScalingRow {
    /// A figure at `size` without ceiling, CPU or memory yet.
    pub fn new(size: &str, figure: &str, ours: Option<f64>, unit: &str) -> ScalingRow {
        ScalingRow {
            size: size.into(),
            figure: figure.into(),
            unit: unit.into(),
            ours,
            ceiling: None,
            ceiling_name: None,
            cpu_us_ours: None,
            cpu_us_ceiling: None,
            rss_bytes: None,
            rss_per: None,
        }
    }

    /// Our figure divided by the ceiling's.
    pub fn ratio(&self) -> Option<f64> {
        ratio(self.ours?, self.ceiling?)
    }

    /// The same figures as rows of the main table, under the scenario
    /// `scaling`, so that the JSON and the table hold them too.
    pub fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let at = |what: &str| format!("{what} @ {}", self.size);
        if let Some(v) = self.ours {
            let mut r = Row::new("scaling", &at(&self.figure), v, &self.unit);
            if let (Some(c), Some(name)) = (self.ceiling, &self.ceiling_name) {
                r = r.ratio(name, c);
            }
            rows.push(r);
        }
        if let Some(v) = self.cpu_us_ours {
            let op = self.figure.trim_end_matches(" ops/s");
            let mut r = Row::new("scaling", &at(&format!("{op} CPU/op")), v, "µs")
                .note("utime + stime of the server process per operation");
            if let Some(c) = self.cpu_us_ceiling {
                r = r.ratio("ceiling CPU/op", c);
            }
            rows.push(r);
        }
        if let Some(b) = self.rss_bytes {
            rows.push(Row::new(
                "scaling",
                &at("RSS"),
                b as f64 / (1024.0 * 1024.0),
                "MiB",
            ));
        }
        if let Some(p) = &self.rss_per {
            let mut r = Row::new("scaling", &at(&format!("RSS per {}", p.unit)), p.ours, "B");
            if let Some(c) = p.ceiling {
                r = r.ratio("ceiling", c);
            }
            rows.push(r);
        }
        rows
    }
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// UTC start time, `YYYY-MM-DDTHH:MM:SSZ`.
    pub started: String,
    /// `full`, `quick` or `check`.
    pub mode: String,
    /// Where it ran.
    pub machine: Machine,
    /// The figures.
    pub rows: Vec<Row>,
    /// The scaling table (its figures are in `rows` too).
    pub scaling: Vec<ScalingRow>,
    /// Remarks about the run.
    pub notes: Vec<String>,
}

/// `1234567.0` → `1.23M`, `12345.0` → `12.3k`, `12.345` → `12.3`.
pub fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Report {
    /// The table printed at the end of a run (also pasted in BENCHMARKS.md).
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| scenario | figure | value | ratio to ceiling | target | met | note |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---|---|---|");
        for r in &self.rows {
            let ratio = match (&r.ratio, &r.ceiling) {
                (Some(x), Some(c)) => format!("{x:.2} ({c})"),
                _ => String::new(),
            };
            let target = r
                .target
                .map_or_else(String::new, |t| t.describe(&r.unit, r.ceiling.as_deref()));
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} {} | {ratio} | {target} | {met} | {} |",
                r.scenario,
                r.figure,
                human(r.value),
                r.unit,
                r.note
            );
        }
        out
    }
}

impl Report {
    /// The compact scaling table printed at the end of a run (pasted in
    /// BENCHMARKS.md); empty when the run had none.
    pub fn scaling_table(&self) -> String {
        let mut out = String::new();
        if self.scaling.is_empty() {
            return out;
        }
        let _ = writeln!(
            out,
            "| size | figure | ours | ceiling | ratio | CPU/op ours | CPU/op ceiling | RSS |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---|");
        let value = |v: Option<f64>, unit: &str| {
            v.map_or_else(String::new, |v| format!("{} {unit}", human(v)))
        };
        for r in &self.scaling {
            let ceiling = match (&r.ceiling, &r.ceiling_name) {
                (Some(c), Some(name)) => format!("{} {} ({name})", human(*c), r.unit),
                (Some(c), None) => format!("{} {}", human(*c), r.unit),
                _ => String::new(),
            };
            let ratio = r.ratio().map_or_else(String::new, |x| format!("{x:.2}"));
            let mut rss = r.rss_bytes.map_or_else(String::new, |b| {
                format!("{} MiB", human(b as f64 / (1024.0 * 1024.0)))
            });
            if let Some(p) = &r.rss_per {
                if !rss.is_empty() {
                    rss.push_str(", ");
                }
                let _ = write!(rss, "{} B/{}", human(p.ours), p.unit);
                if let Some(c) = p.ceiling {
                    let _ = write!(rss, " (ceiling {} B)", human(c));
                }
            }
            let _ = writeln!(
                out,
                "| {} | {} | {} | {ceiling} | {ratio} | {} | {} | {rss} |",
                r.size,
                r.figure,
                value(r.ours, &r.unit),
                value(r.cpu_us_ours, "µs"),
                value(r.cpu_us_ceiling, "µs"),
            );
        }
        out
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch.
pub fn utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn targets() {
        let r = Row::new("register", "ops/s", 30.0, "/s")
            .ratio("small", 100.0)
            .target(Target::RatioAtLeast(0.5));
        assert_eq!((r.ratio, r.met), (Some(0.3), Some(false)));
        // The order of ratio() and target() does not matter.
        let r = Row::new("register", "ops/s", 60.0, "/s")
            .target(Target::RatioAtLeast(0.5))
            .ratio("small", 100.0);
        assert_eq!(r.met, Some(true));
        let r = Row::new("poll", "p99", 40.0, "ms").target(Target::AtMost(50.0));
        assert_eq!(r.met, Some(true));
        let r = Row::new("renew", "ops/s", 1.0, "/s").target(Target::AtLeast(33_000.0));
        assert_eq!(r.met, Some(false));
        assert_eq!(Row::new("x", "y", 1.0, "").met, None);
        let r = Row::new("fetch, slow", "p99", 3.0, "ms")
            .ratio("unloaded", 1.0)
            .target(Target::RatioAtMost(2.0));
        assert_eq!(r.met, Some(false));
    }

    #[test]
    fn human_numbers() {
        assert_eq!(human(1_234_567.0), "1.23M");
        assert_eq!(human(12_345.0), "12.3k");
        assert_eq!(human(1_234.4), "1234");
        assert_eq!(human(12.34), "12.3");
        assert_eq!(human(0.123), "0.12");
    }

    #[test]
    fn table_marks_missed_targets() {
        let report = Report {
            started: utc(0),
            mode: "check".into(),
            machine: Machine::probe(0),
            rows: vec![
                Row::new("fetch", "ops/s", 10.0, "/s")
                    .ratio("fetch-size", 100.0)
                    .target(Target::RatioAtLeast(0.4)),
            ],
            scaling: vec![],
            notes: vec![],
        };
        assert_eq!(report.scaling_table(), "");
        let t = report.table();
        assert!(
            t.contains(
                "| fetch | ops/s | 10.0 /s | 0.10 (fetch-size) | ≥ 40 % of fetch-size | **no** |"
            ),
            "{t}"
        );
    }

    #[test]
    fn scaling_table_and_rows() {
        let mut fetch = ScalingRow::new("100/app (36.9 kB)", "fetch ops/s", Some(40_000.0), "/s");
        fetch.ceiling = Some(50_000.0);
        fetch.ceiling_name = Some("36899 B".into());
        fetch.cpu_us_ours = Some(30.0);
        fetch.cpu_us_ceiling = Some(20.0);
        let mut reg = ScalingRow::new("1.00M instances", "register ops/s", Some(10.0), "/s");
        reg.rss_bytes = Some(1024 * 1024 * 1400);
        reg.rss_per = Some(PerUnit {
            unit: "instance".into(),
            ours: 1400.0,
            ceiling: None,
        });
        let mut empty = ScalingRow::new("0 instances", "RSS", None, "");
        empty.rss_bytes = Some(8 * 1024 * 1024);
        let report = Report {
            started: utc(0),
            mode: "check".into(),
            machine: Machine::probe(0),
            rows: vec![],
            scaling: vec![fetch.clone(), reg, empty.clone()],
            notes: vec![],
        };
        let t = report.scaling_table();
        assert!(
            t.contains("| 100/app (36.9 kB) | fetch ops/s | 40.0k /s | 50.0k /s (36899 B) | 0.80 | 30.0 µs | 20.0 µs |  |"),
            "{t}"
        );
        assert!(t.contains("| 1400 MiB, 1400 B/instance |"), "{t}");
        assert!(
            t.contains("| 0 instances | RSS |  |  |  |  |  | 8.00 MiB |"),
            "{t}"
        );
        let rows = fetch.rows();
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.scenario == "scaling"));
        assert_eq!(rows[0].figure, "fetch ops/s @ 100/app (36.9 kB)");
        assert_eq!(rows[0].ratio, Some(0.8));
        assert_eq!(rows[1].figure, "fetch CPU/op @ 100/app (36.9 kB)");
        assert_eq!(rows[1].ratio, Some(1.5));
        assert_eq!(empty.rows().len(), 1);
    }
}
