//! The upgrade planner: from an observed snapshot of the members and the recorded upgrade, the
//! record to write and the one thing to do next. Pure: no client, no clock (time is an input).
//!
//! Order: standbys one at a time by ordinal, then the primary — by a switchover and then as a
//! standby, or by an in-place restart (`Restart`, or a single member). With `secondSwitch`, a
//! final switchover returns the role to the original primary. The record is written before its
//! act, and every act is idempotent, so a pass repeated after a crash does no harm.
//!
//! The switchover (Baton's guarded protocol): fence the primary; choose the candidate only
//! now, by position, among upgraded standbys streaming from it; wait until it has the fenced
//! position; record it as the primary and promote it (it stays fenced); point the label, the
//! topology ConfigMap and the other members at it; confirm it is the only member that could
//! take a write; unfence it. Until that unfence no member accepts a write, so the switchover
//! can be undone at any stage before it without losing anything: past the fence deadline, or
//! when the promoted candidate turns out not to hold the fenced position, `from` becomes the
//! primary again by the same stages and the step fails.
//!
//! An UpgradeRequest adds: `Switchover` (no version change: the switchover step alone, to a
//! named member or the best caught-up standby), `InPlace` (every member restarted together, one step), `hold`
//! (stop at `AwaitingCommit` before the primary is touched), `cancel` (at the next step
//! boundary, return to the source while the primary still runs it, else finish), and a
//! maintenance window (no forward step starts while it is closed).
//!
//! The switchover stages are in `switchover`, an offline hop's check and order in `offline`.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};

use super::model::{Act, CheckOutcome, Member, View, runs};
use crate::crd::{
    LastSwitchover, OfflineUpgrade, PrimaryUpdateMethod, StepKind, SwitchoverStage,
    SwitchoverState, UpgradeInFlight, UpgradeStep, UpgradeType,
};

mod offline;
mod switchover;
#[cfg(test)]
mod tests;

use offline::*;
use switchover::*;

/// The outcome of one planning pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The upgrade record after this pass; None when the upgrade ended.
    pub upgrade: Option<UpgradeInFlight>,
    /// The recorded primary, when this pass changes it.
    pub primary: Option<String>,
    pub act: Act,
    /// With `upgrade: None`: every member went back to the source version.
    pub reverted: bool,
    /// What the pass waits for, in words.
    pub waiting: Option<String>,
    /// The wait is on a member just back Ready on the goal version to catch up: replication
    /// reconnects within moments of readiness, and no event says when it has.
    pub catching_up: bool,
}

impl Plan {
    fn keep(u: &UpgradeInFlight, act: Act) -> Plan {
        Plan {
            upgrade: Some(u.clone()),
            primary: None,
            act,
            reverted: false,
            waiting: None,
            catching_up: false,
        }
    }

    fn wait(u: &UpgradeInFlight, why: impl Into<String>) -> Plan {
        Plan {
            waiting: Some(why.into()),
            ..Plan::keep(u, Act::None)
        }
    }

    fn record(u: UpgradeInFlight, act: Act) -> Plan {
        Plan {
            upgrade: Some(u),
            ..Plan::keep_none(act)
        }
    }

    fn keep_none(act: Act) -> Plan {
        Plan {
            upgrade: None,
            primary: None,
            act,
            reverted: false,
            waiting: None,
            catching_up: false,
        }
    }

    fn with_primary(mut self, primary: &str) -> Plan {
        self.primary = Some(primary.into());
        self
    }
}

fn now(v: &View) -> Time {
    Time(v.now)
}

/// The pass's clock to the microsecond, for what windows are measured from.
fn now_micro(v: &View) -> MicroTime {
    MicroTime(v.now)
}

/// Whole milliseconds from `from` to `to` (the outage and switchover windows, their logs).
pub fn millis_between(from: jiff::Timestamp, to: jiff::Timestamp) -> Option<i64> {
    let ms = to.since(from).ok()?.total(jiff::Unit::Millisecond).ok()?;
    Some(ms as i64)
}

/// The versions an upgrade moves members to: the source when reverting.
fn goal(u: &UpgradeInFlight, reverting: bool) -> &str {
    if reverting {
        &u.source_version
    } else {
        &u.target_version
    }
}

/// A member's pod runs (or is asked to run) `version`.
fn on(m: &Member, version: &str) -> bool {
    m.version.as_deref() == Some(version)
}

/// The checks before an upgrade may start; the message says what is wrong.
pub fn precheck(v: &View) -> Result<(), String> {
    let Some(p) = v.primary_member() else {
        return Err(format!("the primary {} is missing", v.primary));
    };
    if !p.ready || !p.is_primary() {
        return Err(format!("the primary {} is not Ready as a primary", p.name));
    }
    if let Some(q) = v.quarantined.first() {
        return Err(format!(
            "member {q} is quarantined (it took writes the primary does not have); a person must decide first"
        ));
    }
    for m in v.members.iter().filter(|m| m.name != v.primary) {
        if !m.ready {
            return Err(format!("member {} is not Ready", m.name));
        }
        match v.lag(m) {
            None => {
                return Err(format!(
                    "member {} is not replicating from the primary {}",
                    m.name, v.primary
                ));
            }
            Some(l) if !v.within_bound(l) => {
                return Err(format!(
                    "member {} lags {l} behind the primary (bound {})",
                    m.name,
                    bound(v, l)
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn bound(v: &View, l: crate::engine::Lag) -> String {
    match l {
        crate::engine::Lag::Bytes(_) => format!("maxLagBytes {}", v.policy.max_lag_bytes),
        crate::engine::Lag::Transactions(_) => {
            format!("maxLagTransactions {}", v.policy.max_lag_transactions)
        }
    }
}

/// The step after the ones already done, or None when the upgrade is complete.
fn next_step(v: &View, u: &UpgradeInFlight, reverting: bool) -> Option<UpgradeStep> {
    let target = goal(u, reverting);
    if u.kind() == UpgradeType::Switchover {
        // One switchover, then done: nothing to restart, nothing to return to.
        let original = u.original_primary.as_deref().unwrap_or(v.primary);
        let moved = v.primary != original || u.switchover_to.as_deref() == Some(v.primary);
        return (!reverting && !moved).then(|| UpgradeStep::of(StepKind::Switchover));
    }
    if let Some(off) = &u.offline {
        return offline_step(v, u, off, reverting);
    }
    if u.kind() == UpgradeType::InPlace {
        return v
            .members
            .iter()
            .any(|m| !on(m, target))
            .then(|| UpgradeStep::of(StepKind::RestartAll));
    }
    // A quarantined member is never restarted by an upgrade: its writes stay where they are.
    if let Some(m) = v
        .members
        .iter()
        .find(|m| m.name != v.primary && !on(m, target) && !v.is_quarantined(&m.name))
    {
        return Some(UpgradeStep::on(StepKind::UpgradeStandby, &m.name));
    }
    let primary = v.primary_member()?;
    if !on(primary, target) {
        if reverting {
            return None; // the primary is never reverted: it is still on the source version
        }
        if u.hold {
            return Some(UpgradeStep::of(StepKind::AwaitingCommit));
        }
        if v.members.len() == 1 || v.policy.primary_update_method == PrimaryUpdateMethod::Restart {
            return Some(UpgradeStep::on(StepKind::RestartPrimary, &primary.name));
        }
        return Some(UpgradeStep::of(StepKind::Switchover));
    }
    let original = u.original_primary.as_deref().unwrap_or(v.primary);
    if !reverting && v.policy.second_switch && original != v.primary && v.member(original).is_some()
    {
        return Some(UpgradeStep::of(StepKind::SwitchBack));
    }
    None
}

/// The switchover `prev` had in flight, when this pass ends it: it was lifting the fence and
/// `next` has none (done, or undone with `from` leading again). Its window runs from the
/// recorded fence to the first pass that saw the leader unfenced (`now` when that is this one).
pub fn measured_switchover(
    prev: &UpgradeInFlight,
    next: Option<&UpgradeInFlight>,
    now: &MicroTime,
) -> Option<LastSwitchover> {
    let sw = prev.switchover.as_ref()?;
    if sw.stage != SwitchoverStage::Unfencing || next.is_some_and(|n| n.switchover.is_some()) {
        return None;
    }
    let fenced_at = sw.fenced_at.clone()?;
    let undone = sw.undoing.is_some();
    let to = if undone {
        sw.from.clone()
    } else {
        sw.candidate.clone()?
    };
    let writable_at = sw.writable_at.clone().unwrap_or_else(|| now.clone());
    let window_ms = millis_between(fenced_at.0, writable_at.0)?;
    Some(LastSwitchover {
        from: sw.from.clone(),
        to,
        fenced_at,
        writable_at,
        window_ms: window_ms.max(0),
        undone,
    })
}

/// Whether the upgrade can still go back to its source version: the primary still runs it, or
/// (an offline hop) it was converted and has taken no write since — its old data is kept. An
/// InPlace upgrade restarts every member, the primary included, so it can always go back.
pub fn revertible(v: &View, u: &UpgradeInFlight) -> bool {
    u.kind() == UpgradeType::InPlace
        || v.primary_member().is_some_and(|p| on(p, &u.source_version))
        || u.offline.as_ref().is_some_and(|o| o.writable_at.is_none())
}

/// The attempt an offline check pod belongs to: the hop and when its pre-check started.
pub fn check_key(u: &UpgradeInFlight) -> String {
    format!(
        "{}->{}@{}",
        u.source_version,
        u.target_version,
        u.step_started.as_ref().map_or(0, |t| t.0.as_second())
    )
}

/// Records the next step (or the end). A cancel takes effect here, between steps; with
/// `gated`, a forward step waits for the maintenance window.
fn advance(v: &View, u: &UpgradeInFlight, reverting: bool, gated: bool) -> Plan {
    let mut u = u.clone();
    let mut reverting = reverting;
    if u.cancel && !reverting && revertible(v, &u) {
        u.rollback = true;
        reverting = true;
    }
    if !reverting && !v.quarantined.is_empty() {
        return fail(
            &u,
            format!(
                "member {} took writes the primary does not have (quarantined); the upgrade stopped, and a person must decide",
                v.quarantined.join(", ")
            ),
            Act::None,
        );
    }
    match next_step(v, &u, reverting) {
        Some(step) => {
            if gated && !reverting && !v.may_start_step {
                return Plan::wait(
                    &u,
                    format!("the maintenance window is closed; {step} starts when it opens"),
                );
            }
            Plan::record(
                UpgradeInFlight {
                    step,
                    step_started: Some(now(v)),
                    switchover: None,
                    ..u
                },
                Act::None,
            )
        }
        None => Plan {
            reverted: reverting,
            ..Plan::keep_none(Act::None)
        },
    }
}

/// The upgrade stops here: the failure is recorded, the act (an undo) still runs.
fn fail(u: &UpgradeInFlight, why: String, act: Act) -> Plan {
    Plan::record(
        UpgradeInFlight {
            failure: Some(why),
            switchover: None,
            ..u.clone()
        },
        act,
    )
}

/// One planning pass: [`next`], and when that only records a new step, the new step's first
/// act planned from the same observation. A step and its first act then cost one status write
/// instead of two, and the record still precedes the act (both are in that one write).
pub fn pass(v: &View, u: &UpgradeInFlight, reverting: bool) -> Plan {
    let p = next(v, u, reverting);
    let Some(r) = p
        .upgrade
        .as_ref()
        .filter(|r| p.act == Act::None && r.step != u.step && r.failure.is_none())
    else {
        return p;
    };
    let fresh = View {
        step_elapsed: Duration::ZERO,
        fence_elapsed: Duration::ZERO,
        fence_goal: None,
        ..*v
    };
    let q = next(&fresh, r, reverting || r.rollback);
    // A switchover that ends here is measured and announced against the next record: that
    // record must not carry the next one already.
    let another = |n: &UpgradeInFlight| u.switchover.is_some() && n.switchover.is_some();
    if q.act == Act::None || q.upgrade.as_ref().is_none_or(another) {
        return p;
    }
    Plan {
        primary: q.primary.or(p.primary),
        ..q
    }
}

/// Decides the next thing to do for the upgrade `u` (`reverting`: returning to its source).
pub fn next(v: &View, u: &UpgradeInFlight, reverting: bool) -> Plan {
    let timeout = Duration::from_secs(v.policy.step_timeout_seconds.max(1) as u64);
    match u.step.kind {
        StepKind::PreCheck => {
            // A request's upgrade is claimed without the members' view: check them first, and
            // wait out a passing condition (a standby a few writes behind) up to the timeout.
            if u.request.is_some()
                && !reverting
                && !u.cancel
                && let Err(e) = precheck(v)
            {
                if v.step_elapsed <= timeout {
                    return Plan::wait(u, format!("pre-check: {e}"));
                }
                return fail(
                    u,
                    format!(
                        "pre-check failed for {}s: {e}; nothing was changed",
                        timeout.as_secs()
                    ),
                    Act::None,
                );
            }
            if !reverting && !u.cancel && u.offline.as_ref().is_some_and(|o| !o.checked) {
                return offline_check(v, u, timeout);
            }
            advance(v, u, reverting, true)
        }
        StepKind::AwaitingCommit => {
            if u.hold && !reverting && !u.cancel {
                let why = match &u.offline {
                    Some(_) => format!(
                        "awaiting commit: the primary runs {} read-only, the standbys still run {}; Commit lets writes in, Rollback returns to the kept {} data (nothing is lost: no write was taken)",
                        u.target_version, u.source_version, u.source_version
                    ),
                    None => "awaiting commit: the standbys run the new version".into(),
                };
                return Plan::wait(u, why);
            }
            advance(v, u, reverting, true)
        }
        StepKind::Finalize => match v.offline_leftovers {
            Some(true) => Plan::keep(
                u,
                Act::FinishOffline {
                    member: v.primary.into(),
                },
            ),
            Some(false) => {
                let mut u = u.clone();
                if let Some(o) = u.offline.as_mut() {
                    o.finalized = true;
                }
                advance(v, &u, reverting, false)
            }
            None => Plan::wait(u, format!("asking {} for the kept old data", v.primary)),
        },
        StepKind::RestartAll => restart_all(v, u, reverting, timeout),
        StepKind::UpgradeStandby | StepKind::RestartPrimary => {
            restart_member(v, u, reverting, timeout)
        }
        StepKind::SwitchBack
            if u.switchover.is_none() && u.original_primary.as_deref() == Some(v.primary) =>
        {
            advance(v, u, reverting, true)
        }
        // A planned switchover whose role already moved (or went where it was asked) is done.
        StepKind::Switchover
            if u.kind() == UpgradeType::Switchover
                && u.switchover.is_none()
                && next_step(v, u, reverting).is_none() =>
        {
            advance(v, u, reverting, true)
        }
        StepKind::Switchover | StepKind::SwitchBack => switchover(v, u),
    }
}

/// One member onto the goal version, then: a standby caught up, a primary leading unfenced.
fn restart_member(v: &View, u: &UpgradeInFlight, reverting: bool, timeout: Duration) -> Plan {
    let target = goal(u, reverting);
    let Some(name) = u.step.member.as_deref() else {
        return fail(u, format!("step {} names no member", u.step), Act::None);
    };
    let Some(m) = v.member(name).filter(|m| m.exists) else {
        return Plan::wait(u, format!("member {name} has no pod yet"));
    };
    if !on(m, target) {
        // One member down at a time: never restart while another is not Ready.
        if let Err(why) = v.others_ready(name) {
            return Plan::wait(u, format!("{name} restarts once {why}"));
        }
        let mut u = u.clone();
        if let Some(o) = u
            .offline
            .as_mut()
            .filter(|_| !reverting && name == v.primary)
        {
            // Writes stop here: the start of the outage.
            o.stopped_at.get_or_insert_with(|| now_micro(v));
        }
        // Said now what the passes after the restart will say, so they need no write.
        return Plan {
            waiting: Some(restart_wait(name, target)),
            ..Plan::record(
                u,
                Act::SetVersion {
                    member: name.into(),
                    version: target.into(),
                    image: String::new(),
                },
            )
        };
    }
    let is_primary = name == v.primary;
    let running = runs(m, target);
    if running && is_primary && m.ready && m.is_primary() {
        if !m.fenced() {
            return advance(v, u, reverting, true);
        }
        let offline = u.offline.as_ref().filter(|_| !reverting);
        if offline.is_some() && u.hold {
            // Converted and read-only: held until Commit, its old data kept for a Rollback.
            return advance(v, u, reverting, true);
        }
        // Restarted in place, it boots fenced: lift the fence once it is the only candidate.
        if v.only_writer_could_be(name).is_ok() {
            let mut u = u.clone();
            if let Some(o) = u.offline.as_mut().filter(|_| offline.is_some()) {
                // Recorded before the first write: from now on the kept data lacks writes.
                let at = now_micro(v);
                o.outage_ms = o
                    .stopped_at
                    .as_ref()
                    .and_then(|s| millis_between(s.0, at.0));
                o.writable_at = Some(at);
            }
            return Plan::record(
                u,
                Act::Unfence {
                    member: name.into(),
                },
            );
        }
    }
    if running && !is_primary {
        if v.caught_up(m) {
            return advance(v, u, reverting, true);
        }
        if let Some(p) = v.primary_member()
            && v.needs_repoint(m, p)
        {
            return Plan::keep(
                u,
                Act::Repoint {
                    members: vec![name.into()],
                    primary: v.primary.into(),
                },
            );
        }
    }
    if v.step_elapsed > timeout {
        let why = match (&m.waiting, running, m.ready, v.lag(m)) {
            (Some(w), _, _, _) => format!("member {name} did not start on {target}: {w}"),
            (None, false, _, _) => format!("member {name} did not come up on {target}"),
            (None, true, false, _) => format!("member {name} did not become Ready on {target}"),
            (None, true, true, Some(l)) => {
                format!("member {name} still lags {l} behind the primary")
            }
            (None, true, true, None) if is_primary => {
                format!("member {name} did not lead again on {target}")
            }
            (None, true, true, None) => {
                format!("member {name} is not replicating from the primary")
            }
        };
        let why = if is_primary {
            format!("{why} within {}s", timeout.as_secs())
        } else {
            format!(
                "{why} within {}s; the primary {} is untouched",
                timeout.as_secs(),
                v.primary
            )
        };
        return fail(u, why, Act::None);
    }
    Plan {
        catching_up: running && m.ready && !is_primary && v.step_elapsed < CATCH_UP_PACE,
        ..Plan::wait(u, restart_wait(name, target))
    }
}

/// How long into a restart step a member back Ready is looked at again at the catch-up pace
/// ([`Plan::catching_up`]): a restart here is Ready in about a second and caught up moments
/// later. One still behind after that is catching up on something large, and the usual poll
/// serves; on a loaded machine restarts outlast the window, so the pace adds no probes (each
/// one a new session on every member) when the servers are slowest.
const CATCH_UP_PACE: Duration = Duration::from_secs(3);

fn restart_wait(name: &str, target: &str) -> String {
    format!("waiting for {name} to run {target}, Ready and caught up")
}

/// InPlace: every member onto the goal at once (one image change per pass), then wait until
/// the primary leads again unfenced and every standby has resynced from it.
fn restart_all(v: &View, u: &UpgradeInFlight, reverting: bool, timeout: Duration) -> Plan {
    let target = goal(u, reverting);
    if let Some(m) = v
        .members
        .iter()
        .find(|m| !on(m, target) && !v.is_quarantined(&m.name))
    {
        return Plan::keep(
            u,
            Act::SetVersion {
                member: m.name.clone(),
                version: target.into(),
                image: String::new(),
            },
        );
    }
    let primary = v.primary_member();
    let leading = primary.is_some_and(|p| runs(p, target) && p.ready && p.is_primary());
    let pending: Vec<&Member> = v
        .members
        .iter()
        .filter(|m| m.name != v.primary && !(runs(m, target) && v.caught_up(m)))
        .collect();
    if leading && primary.is_some_and(Member::fenced) && v.only_writer_could_be(v.primary).is_ok() {
        return Plan::keep(
            u,
            Act::Unfence {
                member: v.primary.into(),
            },
        );
    }
    if leading && pending.is_empty() {
        return advance(v, u, reverting, true);
    }
    if let Some(p) = primary.filter(|_| leading) {
        let members: Vec<String> = pending
            .iter()
            .filter(|m| runs(m, target) && v.needs_repoint(m, p))
            .map(|m| m.name.clone())
            .collect();
        if !members.is_empty() {
            return Plan::keep(
                u,
                Act::Repoint {
                    members,
                    primary: v.primary.into(),
                },
            );
        }
    }
    if v.step_elapsed > timeout {
        let who = if leading {
            pending
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            format!("the primary {}", v.primary)
        };
        let why = pending
            .iter()
            .copied()
            .chain(primary)
            .find_map(|m| m.waiting.clone())
            .map(|w| format!(": {w}"))
            .unwrap_or_default();
        return fail(
            u,
            format!(
                "{who} did not come back on {target} within {}s{why}",
                timeout.as_secs()
            ),
            Act::None,
        );
    }
    Plan::wait(u, format!("waiting for every member to run {target} again"))
}
