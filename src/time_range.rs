//! Time ranges of a query, read from its `time_range` strings: whether its
//! results can still change (the rules' `time_range` class).

use crate::config::TimeRangeClass;

/// Classify all time ranges of a query: any relative → relative; all absolute
/// and ended → absolute_past; none at all → none.
pub fn classify_time_ranges(ranges: &[String], now_ms: u64) -> TimeRangeClass {
    time_range_end(ranges).classify(now_ms)
}

/// What a query's time ranges say whatever the day: the part of
/// [`classify_time_ranges`] that needs parsing, done once per canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeRangeEnd {
    /// No time range at all.
    None,
    /// At least one range is not two fixed dates.
    Relative,
    /// All ranges are fixed; the latest ends (exclusively) on this day since
    /// the Unix epoch.
    Until(i64),
}

/// Parse a query's time ranges into a [`TimeRangeEnd`].
pub fn time_range_end(ranges: &[String]) -> TimeRangeEnd {
    let mut last = None;
    for r in ranges {
        let Some((start, end)) = r.split_once(" : ") else {
            return TimeRangeEnd::Relative;
        };
        match (parse_day(start.trim()), parse_day(end.trim())) {
            (Some(_), Some(end_day)) => last = Some(last.map_or(end_day, |l: i64| l.max(end_day))),
            _ => return TimeRangeEnd::Relative,
        }
    }
    last.map_or(TimeRangeEnd::None, TimeRangeEnd::Until)
}

impl TimeRangeEnd {
    /// The class on the day of `now_ms`.
    pub fn classify(self, now_ms: u64) -> TimeRangeClass {
        let today = (now_ms / 86_400_000) as i64;
        match self {
            TimeRangeEnd::None => TimeRangeClass::None,
            // The end is exclusive in Superset; a range ending today still moves.
            TimeRangeEnd::Until(day) if day <= today => TimeRangeClass::AbsolutePast,
            TimeRangeEnd::Until(_) | TimeRangeEnd::Relative => TimeRangeClass::Relative,
        }
    }
}

/// Days since the Unix epoch for `YYYY-MM-DD` optionally followed by `THH:MM:SS`
/// or ` HH:MM:SS` (a time of day rounds the end up to the next day).
fn parse_day(s: &str) -> Option<i64> {
    let (date, time) = match s.find(['T', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut it = date.split('-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: u32 = it.next()?.parse().ok()?;
    let d: u32 = it.next()?.parse().ok()?;
    if it.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) || date.len() != 10 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    match time {
        None => Some(days),
        Some(t)
            if t.chars()
                .all(|c| c.is_ascii_digit() || c == ':' || c == '.')
                && !t.is_empty() =>
        {
            let midnight = t.trim_start_matches(['0', ':', '.']).is_empty();
            Some(if midnight { days } else { days + 1 })
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;
    // 2026-11-25
    const NOW: u64 = 20_782 * DAY + 3_600_000;

    #[test]
    fn time_range_classes() {
        let c = |v: &[&str]| {
            classify_time_ranges(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>(), NOW)
        };
        assert_eq!(c(&[]), TimeRangeClass::None);
        assert_eq!(c(&["No filter"]), TimeRangeClass::Relative);
        assert_eq!(c(&["Last week"]), TimeRangeClass::Relative);
        assert_eq!(c(&["today : now"]), TimeRangeClass::Relative);
        assert_eq!(
            c(&["2023-01-01 : 2024-01-01"]),
            TimeRangeClass::AbsolutePast
        );
        assert_eq!(
            c(&["2023-01-01T00:00:00 : 2024-01-01T00:00:00"]),
            TimeRangeClass::AbsolutePast
        );
        assert_eq!(c(&["2023-01-01 : 2026-12-31"]), TimeRangeClass::Relative);
        assert_eq!(
            c(&["2023-01-01 : 2024-01-01", "Last day"]),
            TimeRangeClass::Relative
        );
        assert_eq!(c(&["2023-13-01 : 2024-01-01"]), TimeRangeClass::Relative);
        assert_eq!(parse_day("1970-01-01"), Some(0));
        assert_eq!(parse_day("2026-11-25"), Some(20_782));
        assert_eq!(parse_day("2026-11-25T10:00:00"), Some(20_783));
    }
}
