//! CEL's `duration()` and `timestamp()` of a string, and timestamps' calendar getters, as cel-go
//! reads and computes them (pure, no I/O): a duration is Go's `time.ParseDuration` (units `ns`,
//! `us`, `µs`, `ms`, `s`, `m`, `h`; nothing left over), a timestamp Go's `time.Parse(time.RFC3339)`
//! (an upper-case `T`, seconds up to 59, a fraction, `Z` or an offset), and a getter without a
//! time zone computes in UTC (Kubernetes runs cel-go with `DefaultUTCTimeZone(true)`). The `cel`
//! crate parses both more loosely (it ignores what follows a duration's last unit, and accepts a
//! leap second or a lower-case `t`) and computes getters in the timestamp's own offset.

use cel::common::value::{CowVal, Val};
use cel::objects::Value;
use cel::ExecutionError;
use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone};

/// `duration(x)` as the simulator evaluates it.
pub const DURATION_FN: &str = "@kube_sim_duration";
/// `timestamp(x)` as the simulator evaluates it.
pub const TIMESTAMP_FN: &str = "@kube_sim_timestamp";
/// `string(x)` as the simulator evaluates it: a timestamp in its own offset.
pub const STRING_FN: &str = "@kube_sim_string";
/// `@kube_sim_utc(x)`: a timestamp at offset zero (the same instant); anything else as it is.
pub const UTC_FN: &str = "@kube_sim_utc";

/// The getters that take an optional time zone.
pub const GETTERS: &[&str] = &[
    "getFullYear",
    "getMonth",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
];

/// Go's `time.ParseDuration`, in nanoseconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = |t: &str| t.bytes().take_while(u8::is_ascii_digit).count();
        if !(rest.starts_with('.') || rest.starts_with(|c: char| c.is_ascii_digit())) {
            return None;
        }
        let n = digits(rest);
        let whole: u128 = if n > 0 { rest[..n].parse().ok()? } else { 0 };
        if whole > 1 << 63 {
            return None;
        }
        rest = &rest[n..];
        let mut fraction = "";
        if let Some(after) = rest.strip_prefix('.') {
            let f = digits(after);
            fraction = &after[..f];
            rest = &after[f..];
        }
        if n == 0 && fraction.is_empty() {
            return None;
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        if unit_len == 0 {
            return None;
        }
        let unit: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        let mut v = whole.checked_mul(unit).filter(|v| *v <= 1 << 63)?;
        if !fraction.is_empty() {
            // As Go: the fraction's digits (up to what an int64 holds) scaled by the unit.
            let kept = &fraction[..fraction.len().min(18)];
            let f: u128 = kept.parse().ok()?;
            let scale = 10u128.pow(kept.len() as u32);
            v += ((f as f64) * (unit as f64 / scale as f64)) as u128;
            if v > 1 << 63 {
                return None;
            }
        }
        total += v;
        if total > 1 << 63 {
            return None;
        }
    }
    if neg {
        return Some((total as i128).wrapping_neg() as i64);
    }
    i64::try_from(total).ok()
}

/// Go's `time.Parse(time.RFC3339, s)` (an offset of 24 hours, which Go reads, has no chrono
/// offset: such a string is refused).
pub fn parse_rfc3339(s: &str) -> Option<DateTime<FixedOffset>> {
    let b = s.as_bytes();
    // Go reads an hour of one digit too.
    if b.len() > 12 && b[10] == b'T' && b[11].is_ascii_digit() && b[12] == b':' {
        return parse_rfc3339(&format!("{}0{}", &s[..11], &s[11..]));
    }
    let num = |from: usize, len: usize| -> Option<u32> {
        let part = s.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut at = 19;
    let mut nanos = 0u32;
    if b.get(at) == Some(&b'.') || b.get(at) == Some(&b',') {
        let digits = b[at + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let kept = &s[at + 1..at + 1 + digits.min(9)];
        nanos = kept.parse::<u32>().ok()? * 10u32.pow(9 - kept.len() as u32);
        at += 1 + digits;
    }
    let zone = &s[at..];
    let offset = if zone == "Z" {
        0
    } else {
        let zb = zone.as_bytes();
        if zb.len() != 6 || !(zb[0] == b'+' || zb[0] == b'-') || zb[3] != b':' {
            return None;
        }
        let (h, m) = (num(at + 1, 2)?, num(at + 4, 2)?);
        if h > 24 || m > 59 {
            return None;
        }
        let secs = (h * 3600 + m * 60) as i32;
        if zb[0] == b'-' {
            -secs
        } else {
            secs
        }
    };
    let date = NaiveDate::from_ymd_opt(year as i32, month, day)?;
    let local = date.and_hms_nano_opt(hour, minute, second, nanos)?;
    FixedOffset::east_opt(offset)?.from_local_datetime(&local).single()
}

fn string_arg(args: &[CowVal]) -> Option<String> {
    args.first()
        .and_then(|v| v.downcast_ref::<cel::common::types::CelString>())
        .map(|s| s.inner().to_string())
}

fn owned<'b, 'v>(v: Value) -> Result<CowVal<'b, 'v>, ExecutionError> {
    Ok(CowVal::Owned(Box::<dyn Val>::try_from(v)?))
}

/// What the `cel` crate's own overload of `name` makes of `args` (and, for `string()`, what
/// Kubernetes' IP and CIDR libraries make of an address or a range).
fn theirs<'b, 'v>(name: &str, args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    static STDLIB: std::sync::OnceLock<cel::Env> = std::sync::OnceLock::new();
    if name == "string" {
        if let [v] = args.as_slice() {
            if let Some(s) = Value::try_from(v.as_ref())
                .ok()
                .as_ref()
                .and_then(super::cel_net::to_string)
            {
                return owned(Value::String(std::sync::Arc::new(s)));
            }
        }
    }
    match STDLIB.get_or_init(cel::Env::stdlib).find_overload(name, &args) {
        Some(f) => f(args),
        None => Err(ExecutionError::no_such_overload(name, vec![])),
    }
}

/// [`DURATION_FN`].
pub fn duration<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let Some(s) = string_arg(&args) else {
        return theirs("duration", args);
    };
    let nanos = parse_duration(&s).ok_or_else(|| ExecutionError::function_error("duration", "invalid duration"))?;
    owned(Value::Duration(chrono::Duration::nanoseconds(nanos)))
}

/// [`TIMESTAMP_FN`]: also within cel-go's range, years 1 to 9999.
pub fn timestamp<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let Some(s) = string_arg(&args) else {
        return theirs("timestamp", args);
    };
    let t = parse_rfc3339(&s)
        .filter(|t| {
            let utc = t.naive_utc();
            utc >= NaiveDate::from_ymd_opt(1, 1, 1)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .unwrap_or(utc)
                && utc.date() <= NaiveDate::from_ymd_opt(9999, 12, 31).unwrap_or(utc.date())
        })
        .ok_or_else(|| ExecutionError::function_error("timestamp", "invalid timestamp"))?;
    owned(Value::Timestamp(t))
}

/// A timestamp as Go's `Format(time.RFC3339Nano)` writes it: its own offset (`Z` for zero),
/// the fraction of a second without trailing zeros.
pub fn rfc3339_nano(t: &DateTime<FixedOffset>) -> String {
    use chrono::{Datelike, Timelike};
    let mut out = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let nanos = t.nanosecond() % 1_000_000_000;
    if nanos > 0 {
        out.push('.');
        out.push_str(format!("{nanos:09}").trim_end_matches('0'));
    }
    let offset = t.offset().local_minus_utc();
    if offset == 0 {
        out.push('Z');
    } else {
        let sign = if offset < 0 { '-' } else { '+' };
        let abs = offset.abs();
        out.push_str(&format!("{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60));
    }
    out
}

/// [`STRING_FN`].
pub fn string<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    if let [v] = args.as_slice() {
        if let Ok(Value::Timestamp(t)) = Value::try_from(v.as_ref()) {
            return owned(Value::String(std::sync::Arc::new(rfc3339_nano(&t))));
        }
    }
    theirs("string", args)
}

/// [`UTC_FN`].
pub fn utc<'b, 'v>(mut args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let v = args
        .pop()
        .ok_or_else(|| ExecutionError::no_such_overload("utc", vec![]))?;
    if let Ok(Value::Timestamp(t)) = Value::try_from(v.as_ref()) {
        if let Some(zero) = FixedOffset::east_opt(0) {
            return owned(Value::Timestamp(t.with_timezone(&zero)));
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_go_parses_them() {
        let s = 1_000_000_000;
        assert_eq!(parse_duration("1h"), Some(3600 * s));
        assert_eq!(parse_duration("1.5h"), Some(5400 * s));
        assert_eq!(parse_duration("-5m"), Some(-300 * s));
        assert_eq!(parse_duration("+0"), Some(0));
        assert_eq!(parse_duration("100ms"), Some(100_000_000));
        assert_eq!(parse_duration("5\u{b5}s"), Some(5_000));
        assert_eq!(parse_duration("1h1s"), Some(3601 * s));
        assert_eq!(parse_duration(".5s"), Some(s / 2));
        assert_eq!(parse_duration("9007199254740993ns"), Some(9_007_199_254_740_993));
        for bad in [
            "",
            "1",
            "1d",
            "1hxyz",
            "1h 5m",
            "1h-5m",
            "1e3s",
            ".s",
            "s",
            "-",
            "9223372036854775808ns",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps_are_written_as_go_writes_rfc3339_nano() {
        for s in [
            "2021-01-01T00:00:00.5+02:00",
            "2021-01-01T00:00:00Z",
            "2021-01-01T00:00:00.123456789-05:30",
        ] {
            assert_eq!(rfc3339_nano(&parse_rfc3339(s).unwrap()), s);
        }
        assert_eq!(
            rfc3339_nano(&parse_rfc3339("2021-01-01T00:00:00.100+00:00").unwrap()),
            "2021-01-01T00:00:00.1Z"
        );
    }

    #[test]
    fn timestamps_parse_as_go_parses_rfc3339() {
        let t = parse_rfc3339("2021-03-04T05:06:07.089+09:00").unwrap();
        assert_eq!(t.timestamp(), 1_614_801_967);
        assert!(parse_rfc3339("2021-01-01T00:00:00Z").is_some());
        assert!(parse_rfc3339("2021-01-01T00:00:00-23:59").is_some());
        assert_eq!(
            parse_rfc3339("2021-01-01T1:00:00Z"),
            parse_rfc3339("2021-01-01T01:00:00Z")
        );
        for bad in [
            "2016-12-31T23:59:60Z",
            "2021-01-01 00:00:00Z",
            "2021-01-01t00:00:00z",
            "2021-01-01T00:00:00",
            "2021-02-30T00:00:00Z",
            "2021-01-01T00:00:00.Z",
            "2021-01-01T00:00:00+0200",
        ] {
            assert!(parse_rfc3339(bad).is_none(), "{bad}");
        }
    }
}
