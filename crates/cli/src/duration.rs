//! CLI durations: `500ms`, `10s`, `2m`, `1h`; a plain number means seconds.

use std::time::Duration;

/// Parses a CLI duration. A bare number is seconds so `--ttl 90` reads naturally.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err("empty duration".to_owned());
    }
    if let Ok(seconds) = trimmed.parse::<f64>() {
        if !seconds.is_finite() || seconds < 0.0 {
            return Err(format!("invalid duration {input:?}"));
        }
        return Ok(Duration::from_secs_f64(seconds));
    }
    humantime::parse_duration(trimmed)
        .map_err(|err| format!("invalid duration {input:?} (use 500ms, 10s, 2m or seconds): {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_units_and_plain_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-3").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
