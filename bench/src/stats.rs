//! Figures: what each run measured, kept per figure across runs and summarised as min, median
//! and max beside its target. A target is only compared, never asserted: the median decides
//! "meets" (for yes/no figures, every run must be yes).

use std::time::Duration;

/// How a figure's number reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Ms,
    PerSec,
    Percent,
    /// KiB (1,024 bytes).
    Kib,
    Count,
    /// 1 for yes, 0 for no.
    YesNo,
    /// One figure divided by another (edgehub's by nchan's): 2.0 is twice as much.
    Ratio,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::PerSec => "/s",
            Unit::Percent => "%",
            Unit::Kib => "KiB",
            Unit::Count => "",
            Unit::YesNo => "yes/no",
            Unit::Ratio => "x",
        }
    }

    /// The unit `name` gives (as results.json spells it).
    pub fn from_name(name: &str) -> Option<Unit> {
        [
            Unit::Ms,
            Unit::PerSec,
            Unit::Percent,
            Unit::Kib,
            Unit::Count,
            Unit::YesNo,
            Unit::Ratio,
        ]
        .into_iter()
        .find(|u| u.name() == name)
    }

    pub fn format(self, v: f64) -> String {
        match self {
            Unit::Ms if v < 10.0 => format!("{v:.2} ms"),
            Unit::Ms => format!("{v:.1} ms"),
            Unit::PerSec => format!("{}/s", thousands(v)),
            Unit::Percent if (99.95..100.0).contains(&v) => format!("{v:.2} %"),
            Unit::Percent => format!("{v:.1} %"),
            Unit::Kib if v < 100.0 => format!("{v:.1} KiB"),
            Unit::Kib => format!("{} KiB", thousands(v)),
            Unit::Count => thousands(v),
            Unit::YesNo if v >= 0.5 => "yes".into(),
            Unit::YesNo => "no".into(),
            Unit::Ratio if v < 0.1 => format!("{v:.3} ×"),
            Unit::Ratio if v < 10.0 => format!("{v:.2} ×"),
            Unit::Ratio if v < 100.0 => format!("{v:.1} ×"),
            Unit::Ratio => format!("{} ×", thousands(v)),
        }
    }
}

/// `12,345` from 12345.4.
fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// What a figure is compared against.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
}

impl Target {
    pub fn met_by(self, v: f64) -> bool {
        match self {
            Target::AtMost(t) => v <= t,
            Target::AtLeast(t) => v >= t,
        }
    }

    pub fn describe(self, unit: Unit) -> String {
        match (self, unit) {
            (Target::AtLeast(_), Unit::YesNo) => "yes".into(),
            (Target::AtMost(t), u) => format!("≤ {}", u.format(t)),
            (Target::AtLeast(t), u) => format!("≥ {}", u.format(t)),
        }
    }
}

/// One figure and its value in each run.
#[derive(Clone, Debug)]
pub struct Figure {
    pub id: String,
    pub scenario: &'static str,
    pub label: String,
    pub unit: Unit,
    pub target: Option<Target>,
    pub values: Vec<f64>,
}

impl Figure {
    pub fn min(&self) -> f64 {
        self.values.iter().copied().fold(f64::INFINITY, f64::min)
    }
    pub fn max(&self) -> f64 {
        self.values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
    pub fn median(&self) -> f64 {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => v.get(n / 2).copied().unwrap_or(f64::NAN),
            _ => {
                let (a, b) = (v.get(n / 2 - 1), v.get(n / 2));
                a.zip(b).map_or(f64::NAN, |(a, b)| (a + b) / 2.0)
            }
        }
    }
    /// Whether the figure meets its target: by the median, or every run for yes/no.
    pub fn meets(&self) -> Option<bool> {
        let target = self.target?;
        let judged = match self.unit {
            Unit::YesNo => self.min(),
            _ => self.median(),
        };
        Some(target.met_by(judged))
    }
    /// "2/3" for yes/no figures.
    pub fn yes_runs(&self) -> String {
        let yes = self.values.iter().filter(|v| **v >= 0.5).count();
        format!("{yes}/{}", self.values.len())
    }
}

/// Every figure of a bench run, in the order first measured, plus notes on how.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub list: Vec<Figure>,
    pub notes: Vec<String>,
}

impl Figures {
    /// Adds one run's value of a figure.
    pub fn add(
        &mut self,
        scenario: &'static str,
        id: &str,
        label: &str,
        unit: Unit,
        target: Option<Target>,
        value: f64,
    ) {
        if let Some(f) = self.list.iter_mut().find(|f| f.id == id) {
            f.values.push(value);
            return;
        }
        self.list.push(Figure {
            id: id.to_string(),
            scenario,
            label: label.to_string(),
            unit,
            target,
            values: vec![value],
        });
    }

    /// A note on the method, once however many runs repeat it.
    pub fn note(&mut self, text: String) {
        if !self.notes.contains(&text) {
            self.notes.push(text);
        }
    }

    pub fn extend(&mut self, other: Figures) {
        for f in other.list {
            for v in f.values {
                self.add(f.scenario, &f.id, &f.label, f.unit, f.target, v);
            }
        }
        for n in other.notes {
            self.note(n);
        }
    }
}

/// `part` as a percentage of `whole` (0 when `whole` is not positive: nothing to compare with).
pub fn percent_of(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

/// `a ÷ b` (NaN when `b` is not positive: nothing to compare with).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// Nearest-rank percentile (`p` in 0..=1) of a sorted slice, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    sorted.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&v, 0.5), 50.0);
        assert_eq!(percentile_ms(&v, 0.99), 99.0);
        assert_eq!(percentile_ms(&v, 1.0), 100.0);
        assert_eq!(percentile_ms(&v[..1], 0.99), 1.0);
        assert!(percentile_ms(&[], 0.5).is_nan());
    }

    #[test]
    fn median_min_max_and_targets() {
        let mut f = Figures::default();
        for v in [3.0, 1.0, 2.0] {
            f.add("s", "x", "x", Unit::Ms, Some(Target::AtMost(2.0)), v);
        }
        let x = &f.list[0];
        assert_eq!((x.min(), x.median(), x.max()), (1.0, 2.0, 3.0));
        assert_eq!(x.meets(), Some(true));
        f.add("s", "h", "h", Unit::YesNo, Some(Target::AtLeast(1.0)), 1.0);
        f.add("s", "h", "h", Unit::YesNo, Some(Target::AtLeast(1.0)), 0.0);
        assert_eq!(f.list[1].meets(), Some(false));
        assert_eq!(f.list[1].yes_runs(), "1/2");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }
}
