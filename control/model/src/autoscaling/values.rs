//! Values as Knative reads them: Go's number, boolean and duration syntax,
//! shared by `config-autoscaler` and the annotations, because that is what
//! Knative manifests and ConfigMaps contain.

use std::time::Duration;

/// A finite number, as Go's `strconv.ParseFloat` reads one. Infinities and NaN
/// are refused: every comparison with NaN is false, so it would pass any bound.
pub(crate) fn parse_float(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// A 32-bit whole number (Knative's `int32` fields), sign allowed.
pub(crate) fn parse_int32(text: &str) -> Option<i32> {
    text.parse().ok()
}

/// Go's `strconv.ParseBool`.
pub(crate) fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `time.ParseDuration`, in signed nanoseconds: an optional sign, then
/// one or more decimal numbers each with a unit (`ns`, `us`/`µs`, `ms`, `s`,
/// `m`, `h`), e.g. `1h30m`, `1.5s`, `-300ms`; a bare `0` is allowed.
pub fn parse_go_duration(text: &str) -> Option<i64> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
        let (whole, after) = rest.split_at(digits(rest));
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => after.split_at(digits(after)),
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let unit_end = after.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
        let mut value = whole.checked_mul(unit)?;
        if !fraction.is_empty() {
            // Digits beyond the 18th cannot change a nanosecond count.
            let fraction = &fraction[..fraction.len().min(18)];
            let scale = 10u128.pow(u32::try_from(fraction.len()).ok()?);
            value += fraction.parse::<u128>().ok()? * unit / scale;
        }
        total = total.checked_add(value)?;
        if total > 1 << 63 {
            return None;
        }
        rest = after;
    }
    let signed = if negative { -(total as i128) } else { total as i128 };
    i64::try_from(signed).ok()
}

/// A whole-second duration the way Go prints it in Knative's messages: `6s`, `1h`.
pub(crate) fn go_duration_text(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => "0s".to_string(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let s = 1_000_000_000i64;
        for (text, want) in [
            ("0", Some(0)),
            ("0s", Some(0)),
            ("60s", Some(60 * s)),
            ("1m30s", Some(90 * s)),
            ("1h", Some(3600 * s)),
            ("1.5h", Some(5400 * s)),
            ("+6s", Some(6 * s)),
            ("-1s", Some(-s)),
            ("300ms", Some(s * 3 / 10)),
            ("1.s", Some(s)),
            (".5s", Some(s / 2)),
            ("1us", Some(1_000)),
            ("1µs", Some(1_000)),
            ("2h45m0.5s", Some(9900 * s + s / 2)),
            ("", None),
            ("60", None),
            ("s", None),
            (".s", None),
            ("1d", None),
            ("1 s", None),
            ("3000000h", None),
        ] {
            assert_eq!(parse_go_duration(text), want, "{text:?}");
        }
    }
}
