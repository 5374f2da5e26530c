//! Timestamp parsing for input files: numeric times in a unit, RFC 3339
//! text, plain dates, and MovieLens release dates. All results are Unix
//! seconds (UTC), rounded down. Pure functions, no I/O.

use super::args::TimeUnit;

/// Days from 1970-01-01 to the given proleptic Gregorian date.
///
/// Counts in 400-year eras (146,097 days each) starting on March 1st, so the
/// leap day is the last day of the shifted year and needs no special case.
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (m, d) = (month as i64, day as i64);
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = if m > 2 { m - 3 } else { m + 9 };
    let day_of_year = (153 * month_from_march + 2) / 5 + d - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719,468 days separate 0000-03-01 from 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

fn date_seconds(year: i64, month: u32, day: u32) -> Option<i64> {
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400)
}

/// Parses `n` ASCII digits at the start of `b`.
fn digits(b: &[u8], n: usize) -> Option<u32> {
    let part = b.get(..n)?;
    part.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

/// `YYYY-MM-DD`, optionally followed by `THH:MM:SS[.frac]` (or a space or
/// `t` instead of `T`) and an offset `Z` / `±HH:MM`. A time without offset is
/// taken as UTC.
pub(crate) fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = i64::from(digits(b, 4)?);
    let month = digits(&b[5..], 2)?;
    let day = digits(&b[8..], 2)?;
    let midnight = date_seconds(year, month, day)?;
    if b.len() == 10 {
        return Some(midnight);
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let hour = digits(&b[11..], 2)?;
    let minute = digits(&b[14..], 2)?;
    // 60 is a leap second; it lands on the next second, as Unix time does.
    let second = digits(&b[17..], 2)?;
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        // Sub-second precision is dropped: times are whole seconds.
        rest = &frac[n..];
    }
    let offset = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), oh1, oh2, b':', om1, om2] => {
            let oh = digits(&[*oh1, *oh2], 2)?;
            let om = digits(&[*om1, *om2], 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = i64::from(oh * 3600 + om * 60);
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    Some(midnight + i64::from(hour * 3600 + minute * 60 + second) - offset)
}

/// MovieLens release dates such as `01-Jan-1995`, at 00:00 UTC.
pub(crate) fn parse_movielens_date(s: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let mut parts = s.trim().split('-');
    let (d, m, y) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || d.is_empty() || d.len() > 2 || y.len() != 4 {
        return None;
    }
    let day = digits(d.as_bytes(), d.len())?;
    let year = i64::from(digits(y.as_bytes(), 4)?);
    let month = MONTHS
        .iter()
        .position(|name| m.eq_ignore_ascii_case(name))? as u32
        + 1;
    date_seconds(year, month, day)
}

/// Seconds from an integer time in `unit`.
pub(crate) fn int_to_seconds(v: i64, unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Seconds => v,
        TimeUnit::Millis => v.div_euclid(1000),
    }
}

/// Seconds from a decimal time in `unit`; `None` when not finite or out of
/// the i64 range.
pub(crate) fn float_to_seconds(v: f64, unit: TimeUnit) -> Option<i64> {
    let secs = match unit {
        TimeUnit::Seconds => v,
        TimeUnit::Millis => v / 1000.0,
    }
    .floor();
    // i64::MAX as f64 rounds up to 2^63, which is itself out of range.
    (secs.is_finite() && secs >= i64::MIN as f64 && secs < i64::MAX as f64).then_some(secs as i64)
}

/// A time cell given as text: an integer or decimal number in `unit`, or an
/// RFC 3339 timestamp / date.
pub(crate) fn parse_time_text(s: &str, unit: TimeUnit) -> Option<i64> {
    let t = s.trim();
    if let Ok(v) = t.parse::<i64>() {
        return Some(int_to_seconds(v, unit));
    }
    if t.bytes()
        .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        if let Ok(v) = t.parse::<f64>() {
            return float_to_seconds(v, unit);
        }
    }
    parse_rfc3339(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days_match_known_dates() {
        // Well-known Unix times, independent of this code.
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(1995, 1, 1) * 86_400, 788_918_400);
        assert_eq!(days_from_civil(2000, 3, 1) * 86_400, 951_868_800);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(
            days_from_civil(2038, 1, 19) * 86_400 + 3 * 3600 + 14 * 60 + 7,
            i32::MAX as i64
        );
    }

    #[test]
    fn rfc3339_variants() {
        assert_eq!(parse_rfc3339("2009-02-13T23:31:30Z"), Some(1_234_567_890));
        assert_eq!(
            parse_rfc3339("2009-02-13t23:31:30.999z"),
            Some(1_234_567_890)
        );
        assert_eq!(
            parse_rfc3339("2009-02-14T01:31:30+02:00"),
            Some(1_234_567_890)
        );
        assert_eq!(
            parse_rfc3339("2009-02-13T18:01:30-05:30"),
            Some(1_234_567_890)
        );
        assert_eq!(parse_rfc3339("2009-02-13 23:31:30"), Some(1_234_567_890));
        assert_eq!(parse_rfc3339("1970-01-01"), Some(0));
        for bad in [
            "2009-02-30",
            "2009-13-01",
            "2009-02-13T24:00:00Z",
            "2009-02-13T23:31:30+0200",
            "2009-02-13T23:31Z",
            "2009-02-13T23:31:30.Z",
            "13/02/2009",
            "2009-02-13T23:31:30Zjunk",
            "２００９-02-13",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(parse_rfc3339("2024-02-29"), Some(1_709_164_800));
        assert_eq!(parse_rfc3339("2023-02-29"), None);
    }

    #[test]
    fn movielens_dates() {
        assert_eq!(parse_movielens_date("01-Jan-1995"), Some(788_918_400));
        assert_eq!(parse_movielens_date("1-jan-1995"), Some(788_918_400));
        assert_eq!(parse_movielens_date(""), None);
        assert_eq!(parse_movielens_date("31-Feb-1995"), None);
        assert_eq!(parse_movielens_date("01-Foo-1995"), None);
    }

    #[test]
    fn numeric_times_in_units() {
        assert_eq!(
            parse_time_text("881250949", TimeUnit::Seconds),
            Some(881_250_949)
        );
        assert_eq!(
            parse_time_text("881250949999", TimeUnit::Millis),
            Some(881_250_949)
        );
        assert_eq!(parse_time_text("-1", TimeUnit::Millis), Some(-1));
        assert_eq!(
            parse_time_text("881250949.7", TimeUnit::Seconds),
            Some(881_250_949)
        );
        assert_eq!(parse_time_text(" 1.5e3 ", TimeUnit::Seconds), Some(1500));
        assert_eq!(parse_time_text("NaN", TimeUnit::Seconds), None);
        assert_eq!(parse_time_text("inf", TimeUnit::Seconds), None);
        assert_eq!(parse_time_text("1e300", TimeUnit::Seconds), None);
        assert_eq!(parse_time_text("yesterday", TimeUnit::Seconds), None);
        assert_eq!(
            parse_time_text("2009-02-13T23:31:30Z", TimeUnit::Millis),
            Some(1_234_567_890)
        );
    }
}
