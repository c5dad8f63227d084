//! When rotations run: a fixed interval (`every = "24h"`) or a five-field cron expression in UTC
//! (`cron = "0 3 * * *"`), optionally spread over a jitter window.
use time::{Duration, OffsetDateTime};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Every so many seconds after the last rotation.
    Every(u64),
    /// Cron, UTC.
    Cron(Cron),
}

impl Schedule {
    /// The next run strictly after `after_ms` (ms since epoch), before jitter. For `Every` the
    /// interval counts from `after_ms` (the last rotation).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        match self {
            Schedule::Every(secs) => Some(after_ms + secs * 1000),
            Schedule::Cron(c) => c.next_after(after_ms),
        }
    }

    /// Shortest gap between two runs (to refuse a jitter window wider than it).
    pub fn min_gap_secs(&self) -> u64 {
        match self {
            Schedule::Every(s) => *s,
            Schedule::Cron(c) => c.min_gap_secs(),
        }
    }
}

/// A five-field cron expression: minute hour day-of-month month day-of-week.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minute: u64,
    hour: u32,
    dom: u32,
    month: u16,
    dow: u8,
    dom_any: bool,
    dow_any: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Why a cron expression is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// Not five fields (nor an `@` shorthand).
    #[error("{0:?}: a cron expression has five fields: minute hour day-of-month month day-of-week (UTC)")]
    Shape(String),
    /// One field is wrong.
    #[error("cron {field} field: {source}")]
    Field {
        /// `minute`, `hour`, `day-of-month`, `month`, `day-of-week`.
        field: &'static str,
        /// What is wrong with it.
        #[source]
        source: FieldError,
    },
}

/// What is wrong with one cron field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// Neither a number nor a name.
    #[error("{0:?} is not a number")]
    NotNumber(String),
    /// `/0` or a step that is not a number.
    #[error("bad step in {0:?}")]
    Step(String),
    /// Outside the field's range, or a backwards range.
    #[error("{part:?} is outside {lo}-{hi}")]
    Range {
        /// The list item.
        part: String,
        /// Lowest allowed.
        lo: u32,
        /// Highest allowed.
        hi: u32,
    },
}

fn cut(s: &str) -> String {
    s.chars().take(100).collect()
}

fn field(spec: &str, lo: u32, hi: u32, names: &[&str], name_base: u32) -> Result<u64, FieldError> {
    let value = |s: &str| -> Result<u32, FieldError> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + name_base);
        }
        s.parse::<u32>().map_err(|_| FieldError::NotNumber(cut(s)))
    };
    let mut bits = 0u64;
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| FieldError::Step(cut(part)))?,
            ),
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let a = value(range)?;
            (a, if part.contains('/') { hi } else { a })
        };
        if a < lo || b > hi || a > b {
            return Err(FieldError::Range {
                part: cut(part),
                lo,
                hi,
            });
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl Cron {
    /// Parses `m h dom mon dow` (numbers, `*`, ranges `a-b`, steps `/n`, lists, month and day
    /// names, 0 or 7 = Sunday) or `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
    pub fn parse(expr: &str) -> Result<Self, CronError> {
        let expr = match expr.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            e => e,
        };
        let parts: Vec<&str> = expr.split_whitespace().collect();
        let [mi, h, dom, mon, dow] = parts[..] else {
            return Err(CronError::Shape(cut(expr)));
        };
        let err = |field: &'static str, source: FieldError| CronError::Field { field, source };
        let mut dow_bits = field(dow, 0, 7, &DAYS, 0).map_err(|e| err("day-of-week", e))? as u8;
        if dow_bits & 0x80 != 0 {
            dow_bits = (dow_bits & 0x7f) | 1;
        }
        Ok(Self {
            minute: field(mi, 0, 59, &[], 0).map_err(|e| err("minute", e))?,
            hour: field(h, 0, 23, &[], 0).map_err(|e| err("hour", e))? as u32,
            dom: field(dom, 1, 31, &[], 0).map_err(|e| err("day-of-month", e))? as u32,
            month: field(mon, 1, 12, &MONTHS, 1).map_err(|e| err("month", e))? as u16,
            dow: dow_bits,
            dom_any: dom == "*",
            dow_any: dow == "*",
        })
    }

    fn day_matches(&self, t: &OffsetDateTime) -> bool {
        let dom = self.dom & (1 << t.day()) != 0;
        let dow = self.dow & (1 << t.weekday().number_days_from_sunday()) != 0;
        // classic cron: when both are restricted, either may match
        match (self.dom_any, self.dow_any) {
            (false, false) => dom || dow,
            _ => dom && dow,
        }
    }

    /// The first matching minute strictly after `after_ms`.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let start = OffsetDateTime::from_unix_timestamp((after_ms / 1000) as i64).ok()?;
        let mut t =
            start.replace_second(0).ok()?.replace_nanosecond(0).ok()? + Duration::minutes(1);
        // at most ~5 years of days; an impossible date (Feb 30) ends the search
        for _ in 0..(366 * 5 * 24 * 60) {
            if self.month & (1 << u8::from(t.month())) == 0 {
                let (y, m) = if t.month() == time::Month::December {
                    (t.year() + 1, time::Month::January)
                } else {
                    (t.year(), t.month().next())
                };
                t = time::Date::from_calendar_date(y, m, 1)
                    .ok()?
                    .midnight()
                    .assume_utc();
                continue;
            }
            if !self.day_matches(&t) {
                t = (t.date().next_day()?).midnight().assume_utc();
                continue;
            }
            if self.hour & (1 << t.hour()) == 0 {
                t = t.replace_minute(0).ok()? + Duration::hours(1);
                continue;
            }
            if self.minute & (1 << t.minute()) == 0 {
                t += Duration::minutes(1);
                continue;
            }
            return Some(t.unix_timestamp() as u64 * 1000);
        }
        None
    }

    /// The smallest gap between consecutive runs over the next two years (sampled).
    pub fn min_gap_secs(&self) -> u64 {
        let mut prev = match self.next_after(0) {
            Some(p) => p,
            None => return u64::MAX,
        };
        let mut min = u64::MAX;
        for _ in 0..500 {
            let Some(n) = self.next_after(prev) else {
                break;
            };
            min = min.min((n - prev) / 1000);
            prev = n;
        }
        min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> u64 {
        let t = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap();
        t.unix_timestamp() as u64 * 1000
    }

    #[test]
    fn cron_next_runs() {
        let c = Cron::parse("0 3 * * *").unwrap();
        assert_eq!(
            c.next_after(at("2026-11-27T02:59:59Z")),
            Some(at("2026-11-27T03:00:00Z"))
        );
        assert_eq!(
            c.next_after(at("2026-11-27T03:00:00Z")),
            Some(at("2026-11-28T03:00:00Z"))
        );
        let c = Cron::parse("*/15 * * * *").unwrap();
        assert_eq!(
            c.next_after(at("2026-11-27T10:07:00Z")),
            Some(at("2026-11-27T10:15:00Z"))
        );
        // the last day of February, and a leap year
        let c = Cron::parse("30 12 29 2 *").unwrap();
        assert_eq!(
            c.next_after(at("2026-01-01T00:00:00Z")),
            Some(at("2028-02-29T12:30:00Z"))
        );
        // Mondays (named), and 7 = Sunday
        let c = Cron::parse("0 9 * * mon").unwrap();
        assert_eq!(
            c.next_after(at("2026-11-27T00:00:00Z")),
            Some(at("2026-11-30T09:00:00Z"))
        );
        let c = Cron::parse("0 0 * * 7").unwrap();
        assert_eq!(
            c.next_after(at("2026-11-27T00:00:00Z")),
            Some(at("2026-11-29T00:00:00Z"))
        );
        // day-of-month OR day-of-week when both are set
        let c = Cron::parse("0 0 1 * fri").unwrap();
        assert_eq!(
            c.next_after(at("2026-11-26T00:00:00Z")),
            Some(at("2026-11-27T00:00:00Z"))
        );
        assert_eq!(
            c.next_after(at("2026-11-28T00:00:00Z")),
            Some(at("2026-12-01T00:00:00Z"))
        );
        let c = Cron::parse("@monthly").unwrap();
        assert_eq!(
            c.next_after(at("2026-12-15T00:00:00Z")),
            Some(at("2027-01-01T00:00:00Z"))
        );
        assert_eq!(Cron::parse("0 0 30 2 *").unwrap().next_after(0), None);
        assert_eq!(Cron::parse("*/10 * * * *").unwrap().min_gap_secs(), 600);
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "*/0 * * * *",
            "a b c d e",
            "5-1 * * * *",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
