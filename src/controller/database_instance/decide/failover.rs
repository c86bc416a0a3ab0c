//! Automatic failover (`spec.failover`): a primary down for `afterSeconds` outside an upgrade
//! is deposed, then the standby holding the most is promoted.
//!
//! Deposed first: its pod is deleted, so its node stops the server for good and the pod created
//! in its place boots fenced, held in the quarantine list so that it follows nobody. Only then
//! is a standby chosen (nothing moves any more) and recorded as the primary before it is
//! promoted; the usual convergence publishes it, lifts its fence once it is the only member that
//! could take a write, and repoints the rest. The old member, once it answers, is measured
//! against what the promoted standby got: released to rejoin when it holds nothing more, kept
//! with its writes otherwise. Each stage is recorded before its act and each act is idempotent,
//! so an operator that dies mid-way finishes it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

use super::*;
use crate::crd::{FailoverState, LastFailover, StepKind};
use crate::engine::Position;

/// What the trigger decided for a primary that does not lead.
pub(super) enum Trigger {
    /// Fail over now: the record to write and its first act.
    Start(Box<FailoverState>, Act),
    /// Enabled, not yet: what the message adds.
    Wait(String),
}

/// Whether a primary that does not lead is to be failed over. Only `PrimaryDown` counts: its
/// node confirms it. A primary the node reports Ready may be cut off from Baton alone.
pub(super) fn trigger(d: &Draft, v: &View) -> Option<Trigger> {
    let o = d.o;
    let policy = &o.inst.spec.failover;
    let cond = status::find(&d.s.conditions, "PrimaryAvailable")?;
    if !policy.enabled || cond.status != "False" || cond.reason != "PrimaryDown" {
        return None;
    }
    let from = v.primary_member()?;
    if candidates(o, &from.name).next().is_none() {
        return Some(Trigger::Wait(
            "no standby answers to take over; failing over once one does".into(),
        ));
    }
    let after = Duration::from_secs(policy.after_seconds.max(1) as u64);
    let down = elapsed(o, &cond.last_transition_time.0);
    if down < after {
        // A moment, not a countdown: the message stays the same until it is due, so waiting
        // costs no status write.
        let at =
            cond.last_transition_time.0 + jiff::SignedDuration::from_secs(after.as_secs() as i64);
        return Some(Trigger::Wait(format!(
            "failing over at {at} (spec.failover.afterSeconds {})",
            policy.after_seconds
        )));
    }
    let f = FailoverState {
        from: from.name.clone(),
        from_pod_uid: from.pod_uid.clone(),
        down_since: cond.last_transition_time.clone(),
        started_at: MicroTime(o.now),
        to: None,
        to_position: None,
        last_seen_position: last_recorded(o, &from.name),
    };
    let act = depose(from);
    Some(Trigger::Start(Box::new(f), act))
}

/// `from` held by the failover: its new pod starts following nobody (the topology lists it),
/// so it comes back with what it holds, to be measured before anything resyncs it away.
pub(super) fn hold(d: &mut Draft, from: &str) {
    let claim_uid =
        d.o.members
            .iter()
            .find(|m| m.name == from)
            .and_then(|m| m.claim_uid.clone());
    if !d.s.quarantine.iter().any(|q| q.member == from) {
        d.s.quarantine.push(QuarantinedMember {
            member: from.to_string(),
            reason: "deposed by an automatic failover: it follows nobody until Baton has compared what it holds with what the promoted standby got".into(),
            since: Some(Time(d.o.now)),
            claim_uid,
            held: true,
        });
    }
}

/// The act that deposes `from`: its pod deleted, when there is one.
fn depose(from: &Member) -> Act {
    match &from.pod_uid {
        Some(uid) => Act::Depose {
            member: from.name.clone(),
            uid: uid.clone(),
        },
        None => Act::None,
    }
}

/// Members that may take over from `from`: answering as standbys, Ready, not quarantined.
fn candidates<'a>(o: &'a Observation, from: &'a str) -> impl Iterator<Item = &'a Member> {
    let quarantined = o.inst.status.as_ref().map(|s| &s.quarantine);
    o.members.iter().filter(move |m| {
        m.name != from
            && m.ready
            && m.probe.as_ref().is_some_and(|p| p.role == Role::Standby)
            && !quarantined.is_some_and(|q| q.iter().any(|q| q.member == m.name))
    })
}

/// What a standby holds: what it received when the engine tells it apart from what it
/// applied (it applies the rest before it leads), else its position.
fn holds(m: &Member) -> Option<&Position> {
    let p = m.probe.as_ref()?;
    Some(p.received.as_ref().unwrap_or(&p.position))
}

/// The candidate that holds the most: one that has reached every other's position, else the
/// one least behind the others in total (positions of unrelated histories compare as far
/// behind); ties by ordinal.
fn best<'a>(cands: &[&'a Member]) -> Option<&'a Member> {
    let behind_others = |m: &Member| -> u64 {
        let Some(mine) = holds(m) else {
            return u64::MAX;
        };
        cands
            .iter()
            .filter(|o| o.name != m.name)
            .filter_map(|o| holds(o))
            .map(|theirs| match mine.behind(theirs) {
                Some(Lag::Bytes(n) | Lag::Transactions(n)) => n,
                None => u64::MAX / 16,
            })
            .fold(0u64, u64::saturating_add)
    };
    cands.iter().copied().min_by(|a, b| {
        behind_others(a)
            .cmp(&behind_others(b))
            .then(a.name.cmp(&b.name))
    })
}

/// A failover in flight: depose, choose, promote; then done, and convergence takes over.
pub(super) fn failing_over(mut d: Draft, f: FailoverState) -> Decision {
    let o = d.o;
    let Some(to) = f.to.clone() else {
        return choose(d, f);
    };
    let Some(c) = o.members.iter().find(|m| m.name == to) else {
        return d.done(Act::None, Wake::Poll);
    };
    if c.is_primary() {
        // It leads (fenced): the failover is done; publishing, the fence and the repoints are
        // the usual convergence from the next pass on.
        d.s.last_failover = Some(LastFailover {
            from: f.from.clone(),
            to: to.clone(),
            down_since: f.down_since.clone(),
            promoted_at: MicroTime(o.now),
            position: f.to_position.clone(),
            unreplicated: None,
            last_seen_position: f.last_seen_position.clone(),
        });
        d.s.failover = None;
        d.s.message = Some(format!("{to} was promoted in place of {}", f.from));
        return d.done(Act::None, Wake::Now);
    }
    let msg = format!(
        "failing over: promoting {to} in place of {} (down since {})",
        f.from, f.down_since.0
    );
    say(&mut d, msg);
    if c.probe.is_none() {
        return d.done(Act::None, Wake::Poll);
    }
    let act = Act::Promote {
        member: to,
        at_least: None,
    };
    d.done(act, Wake::Poll)
}

/// No standby chosen yet: the down pod is deleted first (a pod created since is not it), then
/// the best candidate that has applied all it received is recorded as the primary and promoted.
fn choose(mut d: Draft, mut f: FailoverState) -> Decision {
    let o = d.o;
    let from = o.members.iter().find(|m| m.name == f.from);
    if let Some(from) = from.filter(|m| m.exists && m.pod_uid == f.from_pod_uid) {
        say(&mut d, deposing(&f));
        return d.done(depose(from), Wake::Poll);
    }
    let cands: Vec<&Member> = candidates(o, &f.from).collect();
    let Some(c) = best(&cands) else {
        say(
            &mut d,
            format!(
                "failing over: {} is deposed; waiting for a standby that answers to promote",
                f.from
            ),
        );
        return d.done(Act::None, Wake::Poll);
    };
    let probe = c.probe.as_ref().expect("a candidate answers");
    if let Some(received) = probe
        .received
        .as_ref()
        .filter(|r| !probe.position.reached(r))
    {
        // Applied first: promoting would drop what it received and had not applied yet.
        say(
            &mut d,
            format!(
                "failing over: {} applies what it received ({received}) before it is promoted",
                c.name
            ),
        );
        return d.done(Act::None, Wake::Poll);
    }
    // Recorded as the primary before it is promoted: the old member, when its pod comes back,
    // is created and repointed as a standby.
    f.to = Some(c.name.clone());
    f.to_position = Some(probe.position.to_string());
    d.s.primary = Some(c.name.clone());
    d.s.members = member_statuses(o, &c.name);
    let act = Act::Promote {
        member: c.name.clone(),
        at_least: None,
    };
    let msg = format!(
        "failing over: promoting {} in place of {} (down since {})",
        c.name, f.from, f.down_since.0
    );
    d.s.failover = Some(f);
    say(&mut d, msg);
    d.done(act, Wake::Now)
}

/// The old primary of the last failover answers again, before it is repointed: what it holds
/// beyond what the promoted standby got is measured. None of it: it rejoins (convergence
/// repoints it). Some, or a position that cannot be compared: it is quarantined with its
/// writes, as any member that took writes the primary does not have.
pub(super) fn rejoin(d: &mut Draft, primary: &str) -> Option<Act> {
    let o = d.o;
    let last = d.s.last_failover.clone()?;
    if last.unreplicated.is_some() || last.from == primary {
        return None;
    }
    // Measured only while held: a member a person discarded meanwhile (its claim replaced) is
    // rebuilt from the new primary, and would look as if it held everything written since.
    if !d
        .s
        .quarantine
        .iter()
        .any(|q| q.member == last.from && q.held)
    {
        return None;
    }
    let m = o.members.iter().find(|m| m.name == last.from)?;
    let mine = m.position()?;
    let ds = o.inst.spec.datastore.type_;
    let fork = last.position.as_deref().and_then(|t| {
        crate::engine::for_datastore(ds)
            .ok()?
            .parse_position(t)
            .ok()
    });
    let beyond = fork.and_then(|f| f.behind(mine));
    let text = beyond.map_or_else(|| "unknown".to_string(), |l| l.to_string());
    if let Some(f) = d.s.last_failover.as_mut() {
        f.unreplicated = Some(text.clone());
    }
    // Judged now: released, or kept with what it holds. An upgrade paused for this resumes
    // with its step's clock restarted.
    d.s.quarantine.retain(|q| !(q.member == m.name && q.held));
    if let Some(u) = d.s.upgrade.as_mut() {
        u.step_started = Some(Time(o.now));
    }
    if beyond.is_some_and(Lag::is_zero) {
        return None;
    }
    if !d.s.quarantine.iter().any(|q| q.member == m.name) {
        let what = match beyond {
            Some(_) => format!("holds {text} that {} never got", last.to),
            None => format!(
                "holds a history Baton cannot compare with what {} got (it may hold writes {} lacks)",
                last.to, last.to
            ),
        };
        d.s.quarantine.push(QuarantinedMember {
            member: m.name.clone(),
            reason: format!(
                "was the primary until {} was promoted in its place and {what}; fenced with them, and never repointed by Baton (a resync would throw them away)",
                last.to
            ),
            since: Some(Time(o.now)),
            claim_uid: m.claim_uid.clone(),
            held: false,
        });
    }
    Some(Act::Fence {
        member: m.name.clone(),
    })
}

/// A primary that dies while an upgrade is in flight. A step that leaves the primary alone (a
/// standby restarting, the pre-check, a canary awaiting commit; no switchover fencing it, not
/// offline) lets the failover take over as outside an upgrade: the upgrade pauses from the
/// moment the primary is down until the deposed member has been measured, then resumes at its
/// step on the new primary with the step's clock restarted. A step that owns the primary (its
/// switchover or its own restart) keeps it: that step's timeout and undo apply. `None`: the
/// upgrade plans as usual.
pub(super) fn during_upgrade(d: &mut Draft, u: &UpgradeInFlight, v: &View) -> Option<(Act, Wake)> {
    let o = d.o;
    let measured = |d: &Draft| {
        d.s.last_failover
            .as_ref()
            .is_some_and(|l| l.unreplicated.is_some())
    };
    let before = measured(d);
    if let Some(act) = rejoin(d, v.primary) {
        mark_quarantine(d);
        return Some((act, Wake::Now));
    }
    if measured(d) != before {
        // Released: repointed now (the plan repoints only its step's member); the next pass
        // plans from the record with its clock restarted.
        let quarantined: Vec<String> = d.s.quarantine.iter().map(|q| q.member.clone()).collect();
        let v = View {
            quarantined: &quarantined,
            ..*v
        };
        return Some((converge(o, &v, v.primary).unwrap_or(Act::None), Wake::Now));
    }
    let leaves_primary = u.switchover.is_none()
        && u.offline.is_none()
        && matches!(
            u.step.kind,
            StepKind::PreCheck | StepKind::UpgradeStandby | StepKind::AwaitingCommit
        )
        && u.step.member.as_deref() != Some(v.primary);
    if o.inst.spec.failover.enabled && leaves_primary {
        let (up, why) = primary_available(d);
        match trigger(d, v).filter(|_| !up) {
            Some(Trigger::Start(f, act)) => {
                say(d, deposing(&f));
                hold(d, &f.from);
                d.s.failover = Some(*f);
                return Some((act, Wake::Poll));
            }
            Some(Trigger::Wait(w)) => {
                let why = format!("{why}; {w}");
                d.cond("PrimaryAvailable", false, "PrimaryDown", why.clone());
                d.s.message = Some(format!("upgrade paused: {why}"));
                return Some((Act::None, Wake::Poll));
            }
            None => {}
        }
    }
    let held = d.s.quarantine.iter().find(|q| q.held)?.member.clone();
    d.s.message = Some(format!(
        "upgrade paused after a failover: it resumes once {held}, the deposed primary, answers and what it holds is measured"
    ));
    Some((converge(o, v, v.primary).unwrap_or(Act::None), Wake::Poll))
}

/// The message while `f.from` is deposed.
pub(super) fn deposing(f: &FailoverState) -> String {
    format!(
        "failing over: the primary {} has been down since {}; its pod is being deleted so its server stops before a standby is promoted",
        f.from, f.down_since.0
    )
}

/// The failover's progress, in the message and the `PrimaryAvailable` condition.
pub(super) fn say(d: &mut Draft, msg: String) {
    d.cond("PrimaryAvailable", false, "FailingOver", msg.clone());
    d.cond(
        "Ready",
        false,
        "FailingOver",
        "the primary is being replaced".into(),
    );
    d.s.message = Some(msg);
}
