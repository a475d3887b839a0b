//! Human-friendly sizes and durations for flags, environment and the config file.
//!
//! Durations are written `30s`, `500ms`, `2m`, `1h` (a bare number means seconds); sizes `64KiB`,
//! `4MiB`, `1GiB`, `10KB` (a bare number means bytes). Both are what SPEC §2 asks for.

use std::time::Duration;

/// Parses `30s`, `500ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = split_number(text);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 30s, 500ms, 2m"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("invalid duration {text:?}: must not be negative"));
    }
    let seconds = match unit.to_ascii_lowercase().as_str() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1_000.0,
        "us" | "µs" => value / 1_000_000.0,
        "m" | "min" | "mins" => value * 60.0,
        "h" => value * 3_600.0,
        other => return Err(format!("invalid duration {text:?}: unknown unit {other:?}")),
    };
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("invalid duration {text:?}: too large"))
}

/// Parses `64KiB`, `4MiB`, `1GiB`, `10KB`, `2MB` or a bare number of bytes.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (number, unit) = split_number(text);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected e.g. 64KiB, 4MiB, 8192"))?;
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("invalid size {text:?}: unknown unit {other:?}")),
    };
    value
        .checked_mul(multiplier)
        .and_then(|bytes| usize::try_from(bytes).ok())
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// Formats a size the way it is written on the command line.
pub fn format_size(bytes: usize) -> String {
    const UNITS: [(usize, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}")
}

fn split_number(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    (&text[..end], text[end..].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_every_documented_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("75"), Ok(Duration::from_secs(75)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn durations_reject_garbage_with_a_reason() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(
            parse_duration("10 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_duration("1e999").is_err());
    }

    #[test]
    fn sizes_accept_binary_and_decimal_units() {
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("10KB"), Ok(10_000));
        assert_eq!(parse_size("8192"), Ok(8192));
        assert_eq!(parse_size("8 kib"), Ok(8192));
    }

    #[test]
    fn sizes_reject_garbage_and_overflow() {
        assert!(parse_size("-1").is_err());
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
        assert!(parse_size("12 parsecs").is_err());
    }

    #[test]
    fn sizes_format_the_way_they_are_written() {
        for text in ["64KiB", "4MiB", "1GiB", "100"] {
            let formatted = format_size(parse_size(text).unwrap());
            assert_eq!(formatted, text);
        }
    }
}
