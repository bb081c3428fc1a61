//! Names and "did you mean" suggestions.

/// Whether `s` can name a step, input, output, param or fan-out variable: it must
/// be usable inside placeholders (`{in.NAME}`) and references (`step.output`).
pub fn is_valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub const NAME_RULE: &str =
    "names start with a letter or `_` and go on with letters, digits, `_` and `-`";

/// The candidate closest to `name`, if one is close enough to be a likely typo.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    for (i, c) in candidates.into_iter().enumerate() {
        // Past this many candidates a suggestion is not worth the time.
        if i >= 10_000 {
            break;
        }
        let score = strsim::jaro_winkler(name, c);
        let close = score >= 0.8 || strsim::levenshtein(name, c) <= name.len().min(c.len()) / 3;
        if close && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

/// "did you mean `x`?" or `None`.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    closest(name, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// `a`, `a` and `b`, `a`, `b` and `c` (with backquotes).
pub fn list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.len() {
        0 => "nothing".to_string(),
        1 => quoted[0].clone(),
        n => format!("{} and {}", quoted[..n - 1].join(", "), quoted[n - 1]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "clean_2", "_x", "bwa-map", "A"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "2a", "a.b", "a b", "-a", "é"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn suggestions() {
        let c = ["memory", "cpus", "gpus", "time", "disk"];
        assert_eq!(closest("memroy", c), Some("memory"));
        assert_eq!(closest("cpu", c), Some("cpus"));
        assert_eq!(closest("walltime", c), None);
        assert_eq!(list(&["a", "b", "c"]), "`a`, `b` and `c`");
    }
}
