//! Human durations: `90s`, `30m`, `1h30m`, `2d`, `500ms`, bounded by
//! [`MAX`]; and date arithmetic with them that never panics.

use std::time::Duration;

use crate::task::Timestamp;

/// The longest duration taskq accepts anywhere (`--lease`, `--timeout`, a
/// task's `timeout:`, every duration of the config and of role
/// templates): 100 years. Past it, a lease's end date can pass year 9999,
/// which RFC 3339 cannot write (taskq would write a date it then cannot
/// read, and the task would turn invalid), and chrono's date arithmetic
/// overflows (`--lease 1000000000d` and `history_after: 99999999999d` made
/// taskq panic).
pub const MAX: Duration = Duration::from_secs(MAX_DAYS * 86400);

/// [`MAX`] in days, as messages say it.
const MAX_DAYS: u64 = 36500;

fn out_of_range(text: &str) -> String {
    format!(
        "duration `{}` is out of range (at most {MAX_DAYS}d)",
        text.trim()
    )
}

/// Parses a duration made of `<number><unit>` parts (`ms`, `s`, `m`, `h`,
/// `d`); a bare number is seconds. Refuses one longer than [`MAX`].
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return seconds(secs).ok_or_else(|| {
            if secs.is_finite() && secs >= 0.0 {
                out_of_range(text)
            } else {
                format!("invalid duration `{text}`")
            }
        });
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| {
                format!("invalid duration `{text}`: a number needs a unit (ms, s, m, h, d)")
            })?;
        if digits == 0 {
            return Err(format!(
                "invalid duration `{text}`: expected a number like `30m`"
            ));
        }
        let n: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration `{text}`"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" | "sec" | "secs" => n,
            "m" | "min" | "mins" => n * 60.0,
            "h" | "hr" | "hrs" => n * 3600.0,
            "d" | "day" | "days" => n * 86400.0,
            _ => {
                return Err(format!(
                    "invalid duration `{text}`: unknown unit `{unit}` (use ms, s, m, h, d)"
                ))
            }
        };
        // Checked part by part: `18446744073709551615s` overflows a
        // `Duration` before any sum does.
        total = seconds(secs)
            .and_then(|part| total.checked_add(part))
            .filter(|t| *t <= MAX)
            .ok_or_else(|| out_of_range(text))?;
    }
    Ok(total)
}

/// `secs` as a duration, if it is a number of seconds from 0 to [`MAX`].
pub fn seconds(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0 && secs <= MAX.as_secs_f64())
        .then(|| Duration::from_secs_f64(secs))
}

/// The message for a number of seconds [`seconds`] refuses (for readers
/// that take numbers, like the config's `heartbeat: 30`).
pub fn seconds_error(secs: f64) -> String {
    // As YAML would write it (`1e300`, not 301 digits).
    let text = if secs.abs() >= 1e15 {
        format!("{secs:e}")
    } else {
        secs.to_string()
    };
    if secs.is_finite() && secs >= 0.0 {
        out_of_range(&text)
    } else {
        format!("invalid duration `{text}`")
    }
}

/// The last moment taskq can write: RFC 3339 has four-digit years.
fn last_writable() -> Timestamp {
    chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_opt(23, 59, 59))
        .expect("a valid date")
        .and_utc()
        .fixed_offset()
}

/// `t + d`, or an error when that passes the last date taskq can write
/// (9999-12-31T23:59:59Z): checked, never a panic.
pub fn after(t: Timestamp, d: Duration) -> Result<Timestamp, String> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .filter(|end| *end <= last_writable())
        .ok_or_else(|| {
            format!(
                "`{}` plus {} is past 9999-12-31, the last date taskq can write",
                crate::task::format_timestamp(t),
                format(d)
            )
        })
}

/// `t - d`, or the earliest date there is when that is earlier still: for
/// cutoffs ("finished longer than `d` ago"), never a panic. The factory's
/// history rotation wants this (`now - history_after`).
pub fn before(t: Timestamp, d: Duration) -> Timestamp {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or_else(|| chrono::DateTime::<chrono::Utc>::MIN_UTC.fixed_offset())
}

/// The wait before retry `attempt` (1 for the first): `base` doubled for
/// each attempt after the first, at most `max`, never overflowing (a
/// `Duration::mul_f64` by `2^attempts` panics past 2^64 seconds). The
/// factory's `fail_attempt` wants this.
pub fn backoff(base: Duration, attempt: u32, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.checked_mul(factor).map_or(max, |d| d.min(max))
}

/// Formats a duration compactly: `45s`, `12m`, `1h05m`, `2d3h`.
pub fn format(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        assert_eq!(parse("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("20").unwrap(), Duration::from_secs(20));
        assert!(parse("5x").is_err());
        assert!(parse("m").is_err());
        assert_eq!(format(Duration::from_secs(3900)), "1h05m");
    }

    #[test]
    fn values_past_the_bound_are_refused_not_panicked_on() {
        assert_eq!(parse("36500d").unwrap(), MAX);
        assert_eq!(parse("36499d24h").unwrap(), MAX);
        for text in [
            "1000000000d",
            "18446744073709551615s",
            "3000000d",
            "36500d1s",
            "99999999999d",
            "1e30",
            "3153600001",
            "36500d36500d",
        ] {
            assert_eq!(
                parse(text).unwrap_err(),
                format!("duration `{text}` is out of range (at most 36500d)"),
                "{text}"
            );
        }
        assert_eq!(parse("inf").unwrap_err(), "invalid duration `inf`");
        assert_eq!(parse("-5").unwrap_err(), "invalid duration `-5`");
        assert_eq!(parse("NaN").unwrap_err(), "invalid duration `NaN`");
        assert!(seconds(MAX.as_secs_f64() + 1.0).is_none());
    }

    #[test]
    fn date_arithmetic_is_checked() {
        let t = crate::task::parse_timestamp("2026-01-01T00:00:00Z").unwrap();
        let later = after(t, MAX).unwrap();
        assert_eq!(crate::task::format_timestamp(later), "2125-12-08T00:00:00Z");
        // What is written reads back.
        assert_eq!(
            crate::task::parse_timestamp(&crate::task::format_timestamp(later)),
            Some(later)
        );
        let late = crate::task::parse_timestamp("9990-01-01T00:00:00Z").unwrap();
        let e = after(late, MAX).unwrap_err();
        assert!(e.contains("past 9999-12-31"), "{e}");
        assert!(after(late, Duration::from_secs(86400)).is_ok());
        assert!(after(t, Duration::MAX).is_err());
        // Cutoffs saturate.
        assert_eq!(
            before(t, Duration::from_secs(86400)).to_rfc3339(),
            "2025-12-31T00:00:00+00:00"
        );
        assert!(before(t, Duration::MAX) < t);
        let early = crate::task::parse_timestamp("0001-01-01T00:00:00Z").unwrap();
        assert!(before(early, MAX) < early);
        // Backoff doubles, caps, never overflows.
        let s = Duration::from_secs;
        assert_eq!(backoff(s(30), 1, s(3600)), s(30));
        assert_eq!(backoff(s(30), 3, s(3600)), s(120));
        assert_eq!(backoff(s(30), 20, s(3600)), s(3600));
        assert_eq!(backoff(MAX, u32::MAX, s(3600)), s(3600));
        assert_eq!(backoff(Duration::ZERO, 100, s(3600)), Duration::ZERO);
    }
}
