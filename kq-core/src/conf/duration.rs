//! Go-style durations (`300ms`, `1s`, `1m30s`, `1.5h`), the format go-zero's YAML uses.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};

/// Deserializes a Go duration string; a bare number is read as seconds.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct Visitor;

    impl de::Visitor<'_> for Visitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as `500ms`, `1s` or `1m30s`")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("a duration cannot be negative, got {v}")))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v).map_err(|_| E::custom(format!("invalid duration {v}")))
        }
    }

    deserializer.deserialize_any(Visitor)
}

/// Writes a duration as Go does (`5m0s`, `1h30m0s`, `500ms`), for messages about config.
pub(crate) fn format(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return if d.is_zero() {
            "0s".to_owned()
        } else {
            format!("{d:?}")
        };
    }
    let secs = d.as_secs();
    let (hours, minutes, seconds) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if hours > 0 {
        out += &format!("{hours}h");
    }
    if hours > 0 || minutes > 0 {
        out += &format!("{minutes}m");
    }
    out += &seconds.to_string();
    if d.subsec_nanos() > 0 {
        let fraction = format!("{:09}", d.subsec_nanos());
        out += ".";
        out += fraction.trim_end_matches('0');
    }
    out + "s"
}

/// Parses a Go duration: a sequence of decimal numbers, each with a unit among
/// `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`. Negative durations are refused.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let invalid =
        || format!("invalid duration {text:?}: expected a form like `500ms`, `1s` or `1m30s`");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(invalid());
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        if number_len == 0 {
            return Err(invalid());
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        total += number * seconds_per_unit;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn formats_as_go_does() {
        let ms = Duration::from_millis;
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(ms(500)), "500ms");
        assert_eq!(format(ms(5500)), "5.5s");
        assert_eq!(format(Duration::from_secs(300)), "5m0s");
        assert_eq!(format(Duration::from_secs(5400)), "1h30m0s");
        assert_eq!(format(ms(i32::MAX as u64)), "596h31m23.647s");
    }

    #[test]
    fn refuses_what_go_refuses() {
        for bad in ["", "1", "s", "-1s", "1x", "1s2", "1..2s"] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
