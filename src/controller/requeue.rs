//! The requeue policy, in one place: a long jittered resync when idle, a short poll while
//! waiting on something, and per-object exponential back-off after errors.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::controller::Action;
use rand::Rng;

/// Resync an idle object every 5 to 6 minutes (jittered so objects do not resync in step).
pub fn idle() -> Action {
    let jitter = rand::rng().random_range(0..60);
    Action::requeue(Duration::from_secs(300 + jitter))
}

/// A settled database is looked at every `every` (jittered up to a fifth more): its servers
/// change without any Kubernetes event.
pub fn health(every: Duration) -> Action {
    let jitter = rand::rng().random_range(0..=every.as_millis() as u64 / 5);
    Action::requeue(every + Duration::from_millis(jitter))
}

/// Look again soon: something the controller waits on (a server catching up) has no watch
/// event of its own.
pub fn poll() -> Action {
    Action::requeue(Duration::from_millis(500))
}

/// Look again at the database's pace: writes are held off (a switchover's fence is on) until
/// a server reports what the step waits for. Each pass probes every member over a new
/// connection (a PostgreSQL backend forked for each), so not tighter: on a loaded machine a
/// tighter loop slowed the very servers it waited on.
pub fn fenced() -> Action {
    Action::requeue(Duration::from_millis(50))
}

/// A member just back Ready catches up within moments, and the upgrade waits on it: look
/// again at a tenth of the usual poll (bounded by the step's age, see the planner).
pub fn catching_up() -> Action {
    Action::requeue(Duration::from_millis(100))
}

/// The next step is ready and its act's effect is observable at once.
pub fn now() -> Action {
    Action::requeue(Duration::from_millis(10))
}

/// Read the object again soon: this pass recorded a step (or lost its write to a concurrent
/// one), and the next pass decides from what is on record.
pub fn reread() -> Action {
    Action::requeue(Duration::from_millis(100))
}

/// A handover the servers confirm within a few hundred milliseconds (a Redis Cluster failover
/// spreading through the bus).
pub fn confirm() -> Action {
    Action::requeue(Duration::from_millis(200))
}

/// A server call failed, or a member has not reached what the step waits for: try again in a
/// second, without hammering it.
pub fn retry() -> Action {
    Action::requeue(Duration::from_secs(1))
}

/// Members (pods, servers) are still coming up; their pods' events wake the controller too.
pub fn members() -> Action {
    Action::requeue(Duration::from_secs(2))
}

/// Waiting on a person (a Commit or Rollback, a catalog entry, a layout Baton does not undo).
pub fn person() -> Action {
    Action::requeue(Duration::from_secs(30))
}

/// Until `wait` has passed (a maintenance window opening), looking again at least every 30 s.
pub fn after(wait: Duration) -> Action {
    Action::requeue(wait.clamp(Duration::from_secs(1), Duration::from_secs(30)))
}

/// A job watching its targets: at the soonest time something of theirs is due (not sooner
/// than 200 ms), else every 2 s — their status changes wake it too.
pub fn soonest(due: Option<Duration>) -> Action {
    let poll = Duration::from_secs(2);
    Action::requeue(due.map_or(poll, |d| d.min(poll).max(Duration::from_millis(200))))
}

/// Per-object error counts, so repeated failures of one object back off without slowing others.
#[derive(Default)]
pub struct Backoffs {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoffs {
    /// Records a failure of `key` and returns how long to wait: 1 s doubling up to 5 min.
    pub fn failed(&self, key: &str) -> Action {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        Action::requeue(delay(*n))
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
    }
}

fn delay(failures: u32) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(9);
    Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_a_time_are_bounded() {
        assert_eq!(
            after(Duration::ZERO),
            Action::requeue(Duration::from_secs(1))
        );
        assert_eq!(after(Duration::from_secs(3600)), person());
        assert_eq!(soonest(None), members());
        assert_eq!(
            soonest(Some(Duration::from_millis(5))),
            Action::requeue(Duration::from_millis(200))
        );
        assert_eq!(
            soonest(Some(Duration::from_millis(700))),
            Action::requeue(Duration::from_millis(700))
        );
    }

    #[test]
    fn back_off_doubles_and_is_capped() {
        let d: Vec<u64> = (1..=12).map(|n| delay(n).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }

    #[test]
    fn success_resets_one_object_only() {
        let b = Backoffs::default();
        b.failed("a");
        b.failed("a");
        b.failed("b");
        b.succeeded("a");
        assert_eq!(b.failed("a"), Action::requeue(Duration::from_secs(1)));
        assert_eq!(b.failed("b"), Action::requeue(Duration::from_secs(2)));
    }
}
