//! Cron schedules as CronJobs write them: five fields (minute hour day-of-month month
//! day-of-week) with lists, ranges, steps and names, or a macro such as `@hourly`.

use std::collections::BTreeSet;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CronError {
    #[error("expected exactly 5 fields, found {0}: {1:?}")]
    FieldCount(usize, String),
    #[error("unrecognized descriptor: {0}")]
    Descriptor(String),
    #[error("{field} field: {detail}")]
    Field { field: &'static str, detail: String },
}

/// A parsed schedule: the set of allowed values of each field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub minutes: BTreeSet<u32>,
    pub hours: BTreeSet<u32>,
    pub days_of_month: BTreeSet<u32>,
    pub months: BTreeSet<u32>,
    /// 0 = Sunday.
    pub days_of_week: BTreeSet<u32>,
    /// Whether day-of-month and day-of-week were both restricted (then either may match).
    pub dom_and_dow_restricted: (bool, bool),
}

struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DOM: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const DOW: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

impl Schedule {
    pub fn parse(s: &str) -> Result<Schedule, CronError> {
        let s = s.trim();
        let expanded = match s {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            d if d.starts_with('@') => return Err(CronError::Descriptor(d.to_string())),
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(CronError::FieldCount(fields.len(), s.to_string()));
        }
        let mut days_of_week = parse_field(fields[4], &DOW)?;
        if days_of_week.remove(&7) {
            days_of_week.insert(0);
        }
        Ok(Schedule {
            minutes: parse_field(fields[0], &MINUTE)?,
            hours: parse_field(fields[1], &HOUR)?,
            days_of_month: parse_field(fields[2], &DOM)?,
            months: parse_field(fields[3], &MONTH)?,
            days_of_week,
            dom_and_dow_restricted: (!is_star(fields[2]), !is_star(fields[4])),
        })
    }
}

impl Schedule {
    /// Does the schedule fire on this day?
    fn day_matches(&self, d: jiff::civil::Date) -> bool {
        let dom = self.days_of_month.contains(&(d.day() as u32));
        let dow = self
            .days_of_week
            .contains(&(d.weekday().to_sunday_zero_offset() as u32));
        // Cron's rule: with both fields restricted either may match; otherwise both must
        // (and an unrestricted field matches every day).
        if self.dom_and_dow_restricted == (true, true) {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// The first time after `t` at which the schedule fires, read on the clocks of `tz`;
    /// `None` if it never does within five years (e.g. February 30th).
    pub fn next_after(
        &self,
        t: jiff::Timestamp,
        tz: &jiff::tz::TimeZone,
    ) -> Option<jiff::Timestamp> {
        use jiff::ToSpan;
        let local = t.to_zoned(tz.clone()).datetime();
        let mut dt = local
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = local.date().checked_add(5.years()).ok()?;
        while dt.date() <= limit {
            if !self.months.contains(&(dt.month() as u32)) {
                let first = dt.date().first_of_month().checked_add(1.month()).ok()?;
                dt = first.to_datetime(jiff::civil::Time::midnight());
                continue;
            }
            if !self.day_matches(dt.date()) {
                dt = dt
                    .date()
                    .tomorrow()
                    .ok()?
                    .to_datetime(jiff::civil::Time::midnight());
                continue;
            }
            if !self.hours.contains(&(dt.hour() as u32)) {
                dt = dt
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if !self.minutes.contains(&(dt.minute() as u32)) {
                dt = dt.checked_add(1.minute()).ok()?;
                continue;
            }
            let at = tz.to_ambiguous_zoned(dt).compatible().ok()?.timestamp();
            if at > t {
                return Some(at);
            }
            dt = dt.checked_add(1.minute()).ok()?;
        }
        None
    }
}

fn is_star(f: &str) -> bool {
    f == "*" || f == "?"
}

fn parse_value(s: &str, spec: &FieldSpec) -> Result<u32, CronError> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = spec.names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + if spec.min == 1 { 1 } else { 0 });
    }
    let v: u32 = s.parse().map_err(|_| CronError::Field {
        field: spec.name,
        detail: format!("failed to parse {s:?}"),
    })?;
    if v < spec.min || v > spec.max {
        return Err(CronError::Field {
            field: spec.name,
            detail: format!("{v} is outside {}-{}", spec.min, spec.max),
        });
    }
    Ok(v)
}

fn parse_field(f: &str, spec: &FieldSpec) -> Result<BTreeSet<u32>, CronError> {
    let mut out = BTreeSet::new();
    for part in f.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().ok().filter(|s| *s > 0).ok_or(CronError::Field {
                    field: spec.name,
                    detail: format!("bad step {s:?}"),
                })?;
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if is_star(range) {
            (spec.min, spec.max)
        } else if let Some((a, b)) = range.split_once('-') {
            (parse_value(a, spec)?, parse_value(b, spec)?)
        } else {
            let v = parse_value(range, spec)?;
            // "5/10" means from 5 to the end in steps of 10.
            (v, if part.contains('/') { spec.max } else { v })
        };
        if lo > hi {
            return Err(CronError::Field {
                field: spec.name,
                detail: format!("range {lo}-{hi} is backwards"),
            });
        }
        out.extend((lo..=hi).step_by(step as usize));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(schedule: &str, after: &str, tz: &str) -> String {
        let tz = jiff::tz::TimeZone::get(tz).unwrap();
        let t: jiff::Timestamp = after.parse().unwrap();
        Schedule::parse(schedule)
            .unwrap()
            .next_after(t, &tz)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn next_firing_times() {
        let cases = [
            (
                "* * * * *",
                "2026-11-22T10:15:30Z",
                "UTC",
                "2026-11-22T10:16:00Z",
            ),
            (
                "*/15 * * * *",
                "2026-11-22T10:15:00Z",
                "UTC",
                "2026-11-22T10:30:00Z",
            ),
            (
                "0 9 * * mon-fri",
                "2026-11-21T12:00:00Z",
                "UTC",
                "2026-11-23T09:00:00Z",
            ),
            (
                "@monthly",
                "2026-12-15T00:00:00Z",
                "UTC",
                "2027-01-01T00:00:00Z",
            ),
            // Both day fields restricted: either matches (the 1st, or a Friday).
            (
                "0 0 1 * 5",
                "2026-11-22T00:00:00Z",
                "UTC",
                "2026-11-27T00:00:00Z",
            ),
            (
                "0 0 29 2 *",
                "2026-03-01T00:00:00Z",
                "UTC",
                "2028-02-29T00:00:00Z",
            ),
            // On the clocks of the time zone: 9:00 in Tokyo is 0:00 UTC.
            (
                "0 9 * * *",
                "2026-11-22T01:00:00Z",
                "Asia/Tokyo",
                "2026-11-23T00:00:00Z",
            ),
            ("0 0 30 2 *", "2026-01-01T00:00:00Z", "UTC", ""),
        ];
        for (schedule, after, tz, want) in cases {
            assert_eq!(
                next(schedule, after, tz),
                want,
                "{schedule} after {after} in {tz}"
            );
        }
    }

    #[test]
    fn parses_common_schedules() {
        let s = Schedule::parse("*/15 9-17 * * mon-fri").unwrap();
        assert_eq!(
            s.minutes.iter().copied().collect::<Vec<_>>(),
            [0, 15, 30, 45]
        );
        assert_eq!(s.hours.len(), 9);
        assert_eq!(
            s.days_of_week.iter().copied().collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        let s = Schedule::parse("0 0 1 jan,jul 7").unwrap();
        assert_eq!(s.months.iter().copied().collect::<Vec<_>>(), [1, 7]);
        assert_eq!(s.days_of_week.iter().copied().collect::<Vec<_>>(), [0]);
        assert_eq!(
            Schedule::parse("@hourly").unwrap(),
            Schedule::parse("0 * * * *").unwrap()
        );
    }

    #[test]
    fn rejects_bad_schedules() {
        for bad in [
            "* * * *",
            "60 * * * *",
            "* * 0 * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "@sometimes",
            "a * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }
}
