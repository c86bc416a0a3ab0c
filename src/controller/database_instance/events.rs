//! The Events of a pass, derived from what changed between the status that was and the status
//! written (and, for a restart, the act that ran). Pure: the driver publishes them after the
//! write, so an Event never announces a step that was not recorded.

use super::model::Act;
use crate::crd::{DatabaseInstanceStatus, UpgradeResult};

/// One Event: Warning or Normal, a fixed reason, and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

fn normal(reason: &'static str, message: String) -> Note {
    Note {
        warning: false,
        reason,
        message,
    }
}

fn warning(reason: &'static str, message: String) -> Note {
    Note {
        warning: true,
        reason,
        message,
    }
}

/// Condition reasons that are worth a Warning the moment they appear.
const WARN_REASONS: [&str; 13] = [
    // The node confirms these; `PrimaryUnreachable` (Baton alone gets no answer, which one
    // slow probe under load also gives) stays in the condition, not an Event.
    "PrimaryDown",
    "PrimaryMissing",
    "FailingOver",
    "TLSUnavailable",
    "ChangeRefused",
    "DatastoreUnsupported",
    "VersionNotInCatalog",
    "VersionInactive",
    "DowngradeRefused",
    "PathNotAllowed",
    "PathNeedsOffline",
    "PreCheckFailed",
    "RevertImpossible",
];

/// The milestones of an upgrade, from the change of its record.
fn upgrade_notes(old: &DatabaseInstanceStatus, new: &DatabaseInstanceStatus, out: &mut Vec<Note>) {
    match (&old.upgrade, &new.upgrade) {
        (None, Some(u)) if u.request.is_none() => out.push(normal(
            "UpgradeStarted",
            format!(
                "rolling upgrade {} → {}, standbys first",
                u.source_version, u.target_version
            ),
        )),
        (Some(a), Some(b)) => record_notes(a, b, out),
        _ => {}
    }
    switchover_completed(old, new, out);
    outcome_note(old, new, out);
}

/// The changes of an upgrade's record within a pass: a step done, a fallback, a switchover
/// started or undone, a failure, a rollback or revert started.
fn record_notes(
    a: &crate::crd::UpgradeInFlight,
    b: &crate::crd::UpgradeInFlight,
    out: &mut Vec<Note>,
) {
    let fallback = b
        .restarted_in_place
        .as_ref()
        .filter(|_| a.restarted_in_place.is_none());
    if let Some(why) = fallback {
        out.push(warning("PrimaryRestartedInPlace", why.clone()));
    } else if a.step != b.step && b.failure.is_none() && a.failure.is_none() {
        out.push(normal(
            "StepCompleted",
            format!("{} finished; next {}", a.describe(), b.step),
        ));
    }
    let (sa, sb) = (a.switchover.as_ref(), b.switchover.as_ref());
    if sa.is_none() && sb.is_some() {
        let from = sb.map(|s| s.from.as_str()).unwrap_or_default();
        out.push(normal(
            "SwitchoverStarted",
            format!("fencing writes on the primary {from}"),
        ));
    }
    if let Some(why) = sb.and_then(|s| s.undoing.as_ref())
        && sa.and_then(|s| s.undoing.as_ref()).is_none()
    {
        out.push(warning(
            "SwitchoverUndone",
            format!(
                "{why}; returning the role to {}",
                sb.map_or("", |s| s.from.as_str())
            ),
        ));
    }
    if let (None, Some(why)) = (&a.failure, &b.failure) {
        out.push(warning("UpgradeFailed", why.clone()));
    }
    if let (None, Some(why)) = (&a.aborted, &b.aborted) {
        out.push(warning(
            "RollbackStarted",
            format!("returning every member to {}: {why}", b.source_version),
        ));
    }
    if a.failure.is_some() && b.failure.is_none() && b.aborted.is_none() {
        out.push(normal(
            "RevertStarted",
            format!("returning every member to {}", b.source_version),
        ));
    }
}

/// A switchover that ended without an undo or a failure, whether or not the upgrade goes on (a
/// switch back ends it in the same pass), with the window writes were refused.
fn switchover_completed(
    old: &DatabaseInstanceStatus,
    new: &DatabaseInstanceStatus,
    out: &mut Vec<Note>,
) {
    let ended = old.upgrade.as_ref().and_then(|a| a.switchover.as_ref());
    let failed = new.upgrade.as_ref().is_some_and(|b| b.failure.is_some());
    let still = new.upgrade.as_ref().is_some_and(|b| b.switchover.is_some());
    if let Some(sa) = ended
        && !still
        && !failed
        && sa.undoing.is_none()
        && let Some(c) = &sa.candidate
    {
        let window = new
            .last_switchover
            .as_ref()
            .filter(|l| old.last_switchover.as_ref() != Some(*l))
            .map(|l| format!(" (writes refused for {} ms)", l.window_ms))
            .unwrap_or_default();
        out.push(normal(
            "SwitchoverCompleted",
            format!("{c} is the primary; {} follows it{window}", sa.from),
        ));
    }
}

/// The upgrade's outcome, once recorded.
fn outcome_note(old: &DatabaseInstanceStatus, new: &DatabaseInstanceStatus, out: &mut Vec<Note>) {
    if old.last_upgrade != new.last_upgrade
        && let Some(l) = &new.last_upgrade
    {
        let msg = l.message.clone().unwrap_or_default();
        match l.result {
            UpgradeResult::Succeeded => out.push(normal(
                "UpgradeCompleted",
                format!("{msg}; primary {}", new.primary.clone().unwrap_or_default()),
            )),
            UpgradeResult::Failed if new.upgrade.is_some() => {}
            _ => out.push(normal("UpgradeReverted", msg)),
        }
    }
}

/// Every Event of a pass: upgrade milestones, a newly quarantined member, a condition turning
/// to a refusal, and a member restart the act performed.
pub fn notes(old: &DatabaseInstanceStatus, new: &DatabaseInstanceStatus, act: &Act) -> Vec<Note> {
    let mut out = Vec::new();
    upgrade_notes(old, new, &mut out);
    for q in &new.quarantine {
        if !old.quarantine.iter().any(|o| o.member == q.member) {
            out.push(warning(
                "SecondPrimary",
                format!("member {} {}", q.member, q.reason),
            ));
        }
    }
    for c in &new.conditions {
        let was = old.conditions.iter().find(|o| o.type_ == c.type_);
        let reason = c.reason.as_str();
        if c.status == "False"
            && was.is_none_or(|w| w.reason != reason)
            && let Some(r) = WARN_REASONS.iter().find(|r| **r == reason)
        {
            out.push(warning(r, c.message.clone()));
        }
    }
    // A primary told down by a Warning is told back.
    let primary = |s: &'_ DatabaseInstanceStatus| {
        crate::status::find(&s.conditions, "PrimaryAvailable").cloned()
    };
    if let (Some(was), Some(now)) = (primary(old), primary(new))
        && matches!(
            was.reason.as_str(),
            "PrimaryDown" | "PrimaryMissing" | "FailingOver"
        )
        && now.reason == "Leading"
    {
        out.push(normal("PrimaryAvailable", now.message));
    }
    // Once per failover: measuring the old member later changes the record, not the failover.
    if let Some(f) = new
        .last_failover
        .as_ref()
        .filter(|f| old.last_failover.as_ref().map(|o| &o.promoted_at) != Some(&f.promoted_at))
    {
        out.push(warning(
            "FailedOver",
            format!(
                "{} was promoted in place of {}, down since {}; writes {} acknowledged that had not reached {} are not on it",
                f.to, f.from, f.down_since.0, f.from, f.to
            ),
        ));
    }
    if let Act::SetVersion {
        member,
        version,
        image,
    } = act
    {
        out.push(normal(
            "MemberRestarting",
            format!("{member} → {version} ({image})"),
        ));
    }
    fold_step_completed(old, &mut out);
    if let Act::SetPasswords { members } = act {
        out.push(normal(
            "PasswordsChanging",
            format!(
                "setting the credentials Secret's passwords on {}",
                members.join(", ")
            ),
        ));
    }
    out
}

/// A pass that ends a step and starts the next (a restart, a switchover) tells both in the
/// Event of the start: one Event, not two, for what a person reads as one moment.
fn fold_step_completed(old: &DatabaseInstanceStatus, out: &mut Vec<Note>) {
    let starts = |n: &Note| matches!(n.reason, "MemberRestarting" | "SwitchoverStarted");
    let Some(done) = out.iter().position(|n| n.reason == "StepCompleted") else {
        return;
    };
    if !out.iter().any(starts) {
        return;
    }
    out.remove(done);
    let finished = old
        .upgrade
        .as_ref()
        .map(|u| u.describe())
        .unwrap_or_default();
    if let Some(n) = out.iter_mut().find(|n| starts(n)) {
        n.message = format!("{}; {finished} finished", n.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{
        QuarantinedMember, StepKind, SwitchoverStage, SwitchoverState, UpgradeInFlight,
        UpgradeOutcome, UpgradeStep,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn status(u: Option<UpgradeInFlight>) -> DatabaseInstanceStatus {
        DatabaseInstanceStatus {
            upgrade: u,
            primary: Some("db-1".into()),
            ..Default::default()
        }
    }

    fn up(step: UpgradeStep) -> UpgradeInFlight {
        UpgradeInFlight {
            step,
            ..UpgradeInFlight::new(
                "6.2.14",
                "7.0.15",
                "db-0",
                Time(jiff::Timestamp::UNIX_EPOCH),
            )
        }
    }

    fn sw_state() -> Option<SwitchoverState> {
        Some(SwitchoverState {
            stage: SwitchoverStage::Unfencing,
            from: "db-1".into(),
            candidate: Some("db-0".into()),
            fence_position: None,
            fenced_at: None,
            undoing: None,
            writable_at: None,
        })
    }

    fn reasons(n: &[Note]) -> Vec<&str> {
        n.iter().map(|n| n.reason).collect()
    }

    #[test]
    fn an_upgrade_is_told_from_start_to_end() {
        let started = status(Some(up(UpgradeStep::default())));
        assert_eq!(
            reasons(&notes(&status(None), &started, &Act::None)),
            ["UpgradeStarted"]
        );
        let step = status(Some(up(UpgradeStep::on(StepKind::UpgradeStandby, "db-1"))));
        assert_eq!(
            reasons(&notes(&started, &step, &Act::None)),
            ["StepCompleted"]
        );
        let mut sw = up(UpgradeStep::of(StepKind::Switchover));
        let before = status(Some(sw.clone()));
        sw.switchover = Some(SwitchoverState {
            stage: SwitchoverStage::Unfencing,
            from: "db-0".into(),
            candidate: Some("db-1".into()),
            fence_position: None,
            fenced_at: None,
            undoing: None,
            writable_at: None,
        });
        let fencing = status(Some(UpgradeInFlight {
            switchover: Some(SwitchoverState {
                stage: SwitchoverStage::Fencing,
                candidate: None,
                ..sw.switchover.clone().unwrap()
            }),
            ..sw.clone()
        }));
        assert_eq!(
            reasons(&notes(&before, &fencing, &Act::None)),
            ["SwitchoverStarted"]
        );
        let after = status(Some(up(UpgradeStep::on(StepKind::UpgradeStandby, "db-0"))));
        let n = notes(&status(Some(sw)), &after, &Act::None);
        assert_eq!(reasons(&n), ["StepCompleted", "SwitchoverCompleted"]);
        assert!(
            n[1].message
                .contains("db-1 is the primary; db-0 follows it")
        );
        let mut done = status(None);
        done.last_upgrade = Some(UpgradeOutcome {
            request: None,
            job: None,
            source_version: "6.2.14".into(),
            target_version: "7.0.15".into(),
            result: UpgradeResult::Succeeded,
            message: Some("every member runs 7.0.15".into()),
            finish_time: None,
            outage_ms: None,
            switchover_ms: None,
        });
        assert_eq!(
            reasons(&notes(&after, &done, &Act::None)),
            ["UpgradeCompleted"]
        );
        // A switch back ends the upgrade in the same pass that ends the switchover.
        let mut back = up(UpgradeStep::of(StepKind::SwitchBack));
        back.switchover = sw_state();
        let n = notes(&status(Some(back)), &done, &Act::None);
        assert_eq!(reasons(&n), ["SwitchoverCompleted", "UpgradeCompleted"]);
    }

    #[test]
    fn auto_falling_back_to_a_restart_in_place_is_a_warning_not_a_completed_step() {
        let waiting = up(UpgradeStep::of(StepKind::Switchover));
        let restart = UpgradeInFlight {
            step: UpgradeStep::on(StepKind::RestartPrimary, "db-0"),
            restarted_in_place: Some("no standby caught up; Auto restarts it in place".into()),
            ..waiting.clone()
        };
        let n = notes(
            &status(Some(waiting)),
            &status(Some(restart.clone())),
            &Act::None,
        );
        assert_eq!(reasons(&n), ["PrimaryRestartedInPlace"]);
        assert!(n[0].warning && n[0].message.contains("Auto restarts it in place"));
        // Said once: the next pass of the same step says nothing.
        let again = status(Some(restart));
        assert!(notes(&again, &again, &Act::None).is_empty());
    }

    #[test]
    fn failures_refusals_quarantine_and_restarts_are_told_once() {
        let running = up(UpgradeStep::on(StepKind::UpgradeStandby, "db-1"));
        let failed = UpgradeInFlight {
            failure: Some("db-1 did not start".into()),
            ..running.clone()
        };
        let n = notes(
            &status(Some(running)),
            &status(Some(failed.clone())),
            &Act::None,
        );
        assert_eq!(reasons(&n), ["UpgradeFailed"]);
        assert!(n[0].warning);
        assert!(
            notes(
                &status(Some(failed.clone())),
                &status(Some(failed)),
                &Act::None
            )
            .is_empty()
        );

        let mut refused = status(None);
        refused.conditions = vec![Condition {
            type_: "VersionApplied".into(),
            status: "False".into(),
            reason: "DowngradeRefused".into(),
            message: "older".into(),
            last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
            observed_generation: None,
        }];
        assert_eq!(
            reasons(&notes(&status(None), &refused, &Act::None)),
            ["DowngradeRefused"]
        );
        assert!(
            notes(&refused, &refused, &Act::None).is_empty(),
            "only when it appears"
        );

        let primary = |reason: &str| {
            let mut s = status(None);
            s.conditions = vec![Condition {
                type_: "PrimaryAvailable".into(),
                status: if reason == "Leading" { "True" } else { "False" }.into(),
                reason: reason.into(),
                message: format!("db-0 {reason}"),
                last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
                observed_generation: None,
            }];
            s
        };
        let (leading, down) = (primary("Leading"), primary("PrimaryDown"));
        let n = notes(&leading, &down, &Act::None);
        assert_eq!(reasons(&n), ["PrimaryDown"]);
        assert!(n[0].warning && n[0].message == "db-0 PrimaryDown");
        assert!(notes(&down, &down, &Act::None).is_empty(), "told once");
        assert!(
            notes(&leading, &primary("PrimaryUnreachable"), &Act::None).is_empty(),
            "Baton alone not getting an answer is no Event"
        );
        let n = notes(&down, &leading, &Act::None);
        assert_eq!(reasons(&n), ["PrimaryAvailable"]);
        assert!(!n[0].warning);
        assert!(notes(&leading, &leading, &Act::None).is_empty());
        assert!(notes(&primary("PrimaryUnreachable"), &leading, &Act::None).is_empty());

        let mut q = status(None);
        q.quarantine = vec![QuarantinedMember {
            member: "db-2".into(),
            reason: "accepted writes".into(),
            since: None,
            claim_uid: None,
            held: false,
        }];
        assert_eq!(
            reasons(&notes(&status(None), &q, &Act::None)),
            ["SecondPrimary"]
        );
        let restart = Act::SetVersion {
            member: "db-1".into(),
            version: "7.0.15".into(),
            image: "redis:7.0.15".into(),
        };
        let n = notes(&q, &q, &restart);
        assert_eq!(reasons(&n), ["MemberRestarting"]);
        assert!(n[0].message.starts_with("db-1 → 7.0.15"));
    }

    #[test]
    fn a_step_that_ends_as_the_next_starts_is_told_in_one_event() {
        let restart = Act::SetVersion {
            member: "db-2".into(),
            version: "7.0.15".into(),
            image: "redis:7.0.15".into(),
        };
        let a = status(Some(up(UpgradeStep::on(StepKind::UpgradeStandby, "db-1"))));
        let b = status(Some(up(UpgradeStep::on(StepKind::UpgradeStandby, "db-2"))));
        let n = notes(&a, &b, &restart);
        assert_eq!(reasons(&n), ["MemberRestarting"]);
        assert_eq!(
            n[0].message,
            "db-2 → 7.0.15 (redis:7.0.15); UpgradeStandby db-1 finished"
        );
        // Without a start in the same pass, the step's end has an Event of its own.
        assert_eq!(reasons(&notes(&a, &b, &Act::None)), ["StepCompleted"]);
    }
}

#[cfg(test)]
mod failover_tests {
    use super::*;
    use crate::crd::LastFailover;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};

    fn available(reason: &str, message: &str) -> DatabaseInstanceStatus {
        DatabaseInstanceStatus {
            conditions: vec![Condition {
                type_: "PrimaryAvailable".into(),
                status: if reason == "Leading" { "True" } else { "False" }.into(),
                reason: reason.into(),
                message: message.into(),
                last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
                observed_generation: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_failover_is_told_when_it_starts_when_it_is_done_and_when_the_new_primary_leads() {
        let down = available("PrimaryDown", "db-0 is down");
        let failing = available("FailingOver", "failing over: db-0 …");
        let n = notes(&down, &failing, &Act::None);
        assert_eq!(
            n.iter().map(|n| n.reason).collect::<Vec<_>>(),
            ["FailingOver"]
        );
        // Its later stages change the message only: no second Warning.
        let promoting = available("FailingOver", "failing over: promoting db-2 …");
        assert!(notes(&failing, &promoting, &Act::None).is_empty());
        let mut done = promoting.clone();
        done.last_failover = Some(LastFailover {
            from: "db-0".into(),
            to: "db-2".into(),
            down_since: Time(jiff::Timestamp::UNIX_EPOCH),
            promoted_at: MicroTime(jiff::Timestamp::UNIX_EPOCH),
            position: None,
            last_seen_position: None,
            unreplicated: None,
        });
        let n = notes(&promoting, &done, &Act::None);
        assert_eq!(
            n.iter().map(|n| n.reason).collect::<Vec<_>>(),
            ["FailedOver"]
        );
        assert!(
            n[0].message
                .starts_with("db-2 was promoted in place of db-0")
        );
        // Measuring the old member later is no new failover.
        let mut measured = done.clone();
        measured.last_failover.as_mut().unwrap().unreplicated = Some("0 bytes".into());
        let leads = DatabaseInstanceStatus {
            conditions: available("Leading", "db-2 leads").conditions,
            ..measured
        };
        let n = notes(&done, &leads, &Act::None);
        assert_eq!(
            n.iter().map(|n| n.reason).collect::<Vec<_>>(),
            ["PrimaryAvailable"]
        );
    }
}
