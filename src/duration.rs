//! Durations as plans write them (pure): Go's form, `500ms`, `30s`, `5m`, `1h30m`.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("failed to parse duration {text:?}: {reason} (write e.g. 500ms, 30s, 5m, 1h30m)")]
pub struct DurationError {
    pub text: String,
    pub reason: String,
}

pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let err = |reason: &str| DurationError {
        text: text.to_string(),
        reason: reason.to_string(),
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(err("expected a number"));
        }
        let number: f64 = rest[..digits].parse().map_err(|_| err("bad number"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "" => return Err(err("a unit is missing")),
            other => return Err(err(&format!("unknown unit {other:?}"))),
        };
        total = Duration::try_from_secs_f64(number * seconds)
            .ok()
            .and_then(|d| total.checked_add(d))
            .ok_or_else(|| err("it is too large"))?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// A duration the way plans write it, for messages: `1m30s`, `250ms`.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s, rem) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if m > 0 {
        out += &format!("{m}m");
    }
    if s > 0 || rem > 0 {
        if rem > 0 && h == 0 && m == 0 {
            out += &format!("{s}.{:01}s", rem / 100);
        } else {
            out += &format!("{s}s");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_durations_parse() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn bad_durations_say_why() {
        assert!(parse("30").unwrap_err().reason.contains("unit"));
        assert!(parse("5 minutes").unwrap_err().reason.contains("unknown unit"));
        assert!(parse("").is_err());
        assert!(parse("99999999999999999999h").unwrap_err().reason.contains("too large"));
    }

    #[test]
    fn durations_format_compactly() {
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
    }
}
