//! Figures as people read them, the same in every command and the report:
//! "1.5 MiB", "2.50 s", "4.56 kJ".

/// "512 B", "1.5 KiB", "3.2 GiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// "0.42 s", "3.5 min", "1.2 h".
pub fn secs(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.2} s")
    }
}

/// "12.3 J", "4.56 kJ", "7.89 MJ".
pub fn joules(j: f64) -> String {
    if j >= 1e6 {
        format!("{:.2} MJ", j / 1e6)
    } else if j >= 1e3 {
        format!("{:.2} kJ", j / 1e3)
    } else {
        format!("{j:.1} J")
    }
}
