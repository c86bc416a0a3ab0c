//! Hooks for the crash-anywhere harness. Every side effect the operator performs — each API
//! write and each database command — passes a named point right after it took effect:
//!
//! - `BATON_TRACE=<file>` appends `<point>#<n>` (the n-th time this process passed it) per line,
//!   so a clean run enumerates the points;
//! - `BATON_CRASH_AT=<point>#<n>` kills the process with SIGKILL the n-th time it passes
//!   `<point>` (`#1` may be omitted): the effect happened, its result was never seen;
//! - `BATON_HOLD_AT=<point>#<n>:<ms>` sleeps that long there, so a test can hurt a member
//!   while the operator is in the middle of a stage.
//!
//! Points are `api:<what>` or `db:<command>`, with `@<ordinal>` for the member they touch
//! (from [`scoped`]). `@*` matches any member and counts the point's passes on all members:
//! which standby becomes the candidate depends on which one a probe found further along, so
//! "the first unfence" is `db:unfence@*#1`, whoever the candidate is. Unset, each hook costs
//! one check of an empty setting.
//!
//! Only a build with the `test-hooks` Cargo feature reads these settings (the end-to-end suites
//! turn it on); in any other build, the release image's among them, [`passed`] does nothing.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Whether this build has the hooks at all (the `test-hooks` feature).
pub const ENABLED: bool = cfg!(feature = "test-hooks");

struct Settings {
    trace: Option<Mutex<std::fs::File>>,
    crash: Option<(String, u32)>,
    hold: Option<((String, u32), Duration)>,
    seen: Mutex<HashMap<String, u32>>,
}

/// `point#n`, with `#1` implied.
fn occurrence(s: &str) -> (String, u32) {
    match s.rsplit_once('#') {
        Some((p, n)) if n.parse::<u32>().is_ok() => (p.to_string(), n.parse().unwrap_or(1)),
        _ => (s.to_string(), 1),
    }
}

fn settings() -> &'static Settings {
    static S: OnceLock<Settings> = OnceLock::new();
    S.get_or_init(|| {
        let var = |k| {
            std::env::var(k)
                .ok()
                .filter(|v: &String| !v.trim().is_empty())
        };
        Settings {
            trace: var("BATON_TRACE").and_then(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .ok()
                    .map(Mutex::new)
            }),
            crash: var("BATON_CRASH_AT").map(|c| occurrence(c.trim())),
            hold: var("BATON_HOLD_AT").and_then(|h| {
                let (point, ms) = h.trim().rsplit_once(':')?;
                Some((occurrence(point), Duration::from_millis(ms.parse().ok()?)))
            }),
            seen: Mutex::new(HashMap::new()),
        }
    })
}

tokio::task_local! {
    static MEMBER: String;
}

/// Runs `f` with `member`'s ordinal attached to every point passed inside it.
pub async fn scoped<F: Future>(member: &str, f: F) -> F::Output {
    let ordinal = member.rsplit('-').next().unwrap_or(member).to_string();
    MEMBER.scope(ordinal, f).await
}

/// Whether `want` (`point#n`) names this pass: under the point's own name and count, or
/// under its any-member name (`base@*`) and the count of passes on all members.
fn hits(want: &(String, u32), this: (&str, u32), any: Option<(&str, u32)>) -> bool {
    *want == (this.0.to_string(), this.1) || any.is_some_and(|(p, n)| *want == (p.to_string(), n))
}

/// Marks that the side effect `point` just took effect.
pub async fn passed(point: &str) {
    if !ENABLED {
        return;
    }
    let s = settings();
    if s.trace.is_none() && s.crash.is_none() && s.hold.is_none() {
        return;
    }
    let point = match MEMBER.try_with(Clone::clone) {
        Ok(m) if !point.contains('@') => format!("{point}@{m}"),
        _ => point.to_string(),
    };
    let any = point.split_once('@').map(|(base, _)| format!("{base}@*"));
    let (n, n_any) = {
        let mut seen = s.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut count = |k: &str| {
            let n = seen.entry(k.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        (count(&point), any.as_deref().map(&mut count))
    };
    let is = |want: &(String, u32)| hits(want, (&point, n), any.as_deref().zip(n_any));
    if let Some(f) = &s.trace {
        let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(f, "{point}#{n}");
    }
    if let Some((at, pause)) = &s.hold
        && is(at)
    {
        eprintln!("baton: holding {} ms at {point}#{n}", pause.as_millis());
        tokio::time::sleep(*pause).await;
    }
    if let Some(at) = &s.crash
        && is(at)
    {
        eprintln!("baton: crash point {point}#{n}; SIGKILL");
        // A real SIGKILL: no destructor, no flush, no goodbye to the API server.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::{hits, occurrence};

    #[test]
    fn any_member_counts_passes_on_all_members() {
        let want = occurrence("db:unfence@*#1");
        // The candidate is db-2 this time: its first unfence is the first on any member.
        assert!(hits(&want, ("db:unfence@2", 1), Some(("db:unfence@*", 1))));
        assert!(!hits(&want, ("db:unfence@2", 2), Some(("db:unfence@*", 2))));
        let second = occurrence("db:repoint@*#2");
        assert!(!hits(
            &second,
            ("db:repoint@2", 1),
            Some(("db:repoint@*", 1))
        ));
        assert!(hits(
            &second,
            ("db:repoint@0", 1),
            Some(("db:repoint@*", 2))
        ));
        // A named member still means that member.
        let named = occurrence("db:fence@0#1");
        assert!(hits(&named, ("db:fence@0", 1), Some(("db:fence@*", 1))));
        assert!(!hits(&named, ("db:fence@1", 1), Some(("db:fence@*", 1))));
    }

    #[test]
    fn a_point_names_its_occurrence_or_means_the_first() {
        assert_eq!(occurrence("db:fence@0#3"), ("db:fence@0".into(), 3));
        assert_eq!(
            occurrence("api:status:Switchover:Fencing"),
            ("api:status:Switchover:Fencing".into(), 1)
        );
    }
}
