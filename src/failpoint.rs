//! Fault injection for the crash tests: `BATON_FAILPOINTS=a,b` makes the operator exit abruptly
//! (as a SIGKILL would leave it) the first time it passes a named point. Unset, it costs a
//! lookup in an empty list.

use std::sync::OnceLock;

fn points() -> &'static [String] {
    static POINTS: OnceLock<Vec<String>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var("BATON_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    })
}

/// Exits the process at once if `point` is armed.
pub fn hit(point: &str) {
    if points().iter().any(|p| p == point) {
        eprintln!("baton: failpoint {point} hit; exiting abruptly");
        std::process::exit(137);
    }
}
