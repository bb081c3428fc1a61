//! Sizes (`"512MiB"`) and durations (`"2h"`, `"1h30m"`, `"01:30:00"`).

/// Why a size or duration was rejected: the message, then a hint.
pub type UnitError = (String, &'static str);

const SIZE_HINT: &str = "write a number and a unit, such as \"512MiB\", \"4GiB\" or \"1.5GB\" (K, M, G, T alone are binary, as in Slurm)";
const TIME_HINT: &str =
    "write a duration such as \"30s\", \"15m\", \"2h\", \"1d\", \"1h30m\" or \"01:30:00\"";

/// Parses a size into bytes.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim_start();
    let mut lower = [0u8; 3];
    let unit_key = if unit.len() <= 3 {
        for (d, b) in lower.iter_mut().zip(unit.bytes()) {
            *d = b.to_ascii_lowercase();
        }
        std::str::from_utf8(&lower[..unit.len()]).unwrap_or("?")
    } else {
        "?"
    };
    let multiplier: u64 = match unit_key {
        "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "" => return Err((format!("size `{text}` has no unit"), SIZE_HINT)),
        "?" => return Err((format!("`{unit}` is not a size unit"), SIZE_HINT)),
        _ => return Err((format!("`{unit}` is not a size unit"), SIZE_HINT)),
    };
    let value: f64 = num
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && !num.is_empty())
        .ok_or_else(|| (format!("`{text}` is not a size"), SIZE_HINT))?;
    let bytes = value * multiplier as f64;
    if bytes < 1.0 {
        return Err((format!("size `{text}` must be more than zero"), SIZE_HINT));
    }
    if bytes >= u64::MAX as f64 {
        return Err((format!("size `{text}` is too large"), SIZE_HINT));
    }
    Ok(bytes.round() as u64)
}

/// Parses a duration into seconds.
pub fn parse_duration(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    let bad = || (format!("`{text}` is not a duration"), TIME_HINT);
    let seconds = if t.contains(':') {
        // [D-]HH:MM:SS or MM:SS, as Slurm writes them.
        let (days, clock) = match t.split_once('-') {
            Some((d, c)) => (d.parse::<u64>().map_err(|_| bad())?, c),
            None => (0, t),
        };
        let fields: Vec<&str> = clock.split(':').collect();
        let nums: Vec<u64> = fields
            .iter()
            .map(|f| {
                if f.len() == 2 || f.len() == 1 {
                    f.parse::<u64>().ok()
                } else {
                    None
                }
            })
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        let (h, m, s) = match nums.as_slice() {
            [h, m, s] => (*h, *m, *s),
            [m, s] => (0, *m, *s),
            _ => return Err(bad()),
        };
        if m >= 60 || s >= 60 {
            return Err(bad());
        }
        days.checked_mul(86_400)
            .and_then(|d| h.checked_mul(3600).and_then(|h| d.checked_add(h)))
            .and_then(|t| t.checked_add(m * 60 + s))
            .ok_or_else(|| (format!("duration `{text}` is too long"), TIME_HINT))?
    } else {
        let mut total: u64 = 0;
        let mut rest = t;
        if rest.is_empty() {
            return Err(bad());
        }
        while !rest.is_empty() {
            let n_end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if n_end == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..n_end].parse().map_err(|_| bad())?;
            rest = rest[n_end..].trim_start();
            let u_end = rest
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(rest.len());
            let unit = match &rest[..u_end] {
                "s" | "sec" | "secs" | "second" | "seconds" => 1,
                "m" | "min" | "mins" | "minute" | "minutes" => 60,
                "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
                "d" | "day" | "days" => 86_400,
                "" => return Err((format!("duration `{text}` has no unit"), TIME_HINT)),
                u => return Err((format!("`{u}` is not a time unit"), TIME_HINT)),
            };
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| (format!("duration `{text}` is too long"), TIME_HINT))?;
            rest = rest[u_end..].trim_start();
        }
        total
    };
    if seconds == 0 {
        return Err((
            format!("duration `{text}` must be more than zero"),
            TIME_HINT,
        ));
    }
    Ok(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4 GiB"), Ok(4 << 30));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("100b"), Ok(100));
        assert!(parse_size("4 gigs").is_err());
        assert!(parse_size("4096").is_err());
        assert!(parse_size("0MiB").is_err());
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("1.2.3GiB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("1h 30m"), Ok(5400));
        assert_eq!(parse_duration("90min"), Ok(5400));
        assert_eq!(parse_duration("01:30:00"), Ok(5400));
        assert_eq!(parse_duration("2-00:00:00"), Ok(172_800));
        assert_eq!(parse_duration("05:00"), Ok(300));
        assert_eq!(parse_duration("2 hours"), Ok(7200));
        for bad in [
            "",
            "2",
            "0h",
            "2 fortnights",
            "1:99",
            "h",
            "-1h",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
