//! The decision of one pass, as a pure function of what the pass observed: the whole status to
//! write (intent recorded before any side effect) and at most one act.
//!
//! In order: no engine → Error; a version the catalog lacks → reported; paused → nothing;
//! missing or drifted children → apply them; a member that accepts writes and is not the
//! recorded primary → fence and quarantine it (never resync its writes away); an upgrade in
//! flight → the planner; otherwise converge (publish the primary, unfence it once it is the
//! only writer, repoint strays) and, once every member is caught up, start, refuse or wait on
//! the upgrade the spec asks for.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::model::{Act, Member, NewPod, Observation, View, Wake};
use super::plan::{self, Plan};
use crate::catalog::{self, PathError};
use crate::crd::{
    DatabaseInstanceStatus, DatastoreVersion, Durability, InstancePhase, MemberRole, MemberStatus,
    OfflineUpgrade, QuarantinedMember, UpgradeInFlight, UpgradeOutcome, UpgradeResult, UpgradeStep,
    UpgradeType,
};
use crate::engine::{Lag, Role, Strategy};
use crate::status::{self, Desired};

mod failover;

/// How long into a fence a waiting pass looks again at the database's pace ([`Wake::Fenced`]).
const FENCED_PACE_MS: i64 = 2_000;

/// What one pass decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The whole status to write before the act.
    pub status: DatabaseInstanceStatus,
    pub act: Act,
    pub wake: Wake,
}

/// The status being built, with the pass it is built from.
struct Draft<'a> {
    o: &'a Observation,
    s: DatabaseInstanceStatus,
}

impl<'a> Draft<'a> {
    fn new(o: &'a Observation) -> Draft<'a> {
        let mut s = o.inst.status.clone().unwrap_or_default();
        s.observed_generation = o.inst.metadata.generation;
        Draft { o, s }
    }

    fn now(&self) -> Time {
        Time(self.o.now)
    }

    fn cond(&mut self, type_: &'static str, ok: bool, reason: &'static str, message: String) {
        self.s.conditions = status::merge(
            &self.s.conditions,
            Desired {
                type_,
                status: ok,
                reason,
                message,
            },
            self.o.inst.metadata.generation,
            self.now(),
        );
    }

    fn done(mut self, act: Act, wake: Wake) -> Decision {
        // Every pass ends here: the GitOps pair follows whatever the pass decided.
        let health = crate::health::instance(&self.s);
        self.s.conditions = crate::health::apply(
            &self.s.conditions,
            &health,
            self.o.inst.metadata.generation,
            self.now(),
        );
        Decision {
            status: self.s,
            act,
            wake,
        }
    }

    fn entry(&self, version: &str) -> Option<&'a DatastoreVersion> {
        catalog::find(&self.o.catalog, self.o.inst.spec.datastore.type_, version)
    }
}

/// Decides the pass.
pub fn decide(o: &Observation) -> Decision {
    let mut d = Draft::new(o);
    let running = d.s.version.clone();
    let base = running
        .clone()
        .unwrap_or_else(|| o.inst.spec.datastore.version.clone());
    if !setup_usable(&mut d) || !version_listed(&mut d, &base) {
        return d.done(Act::None, Wake::Idle);
    }
    let primary = d.s.primary.clone().unwrap_or_else(|| {
        o.members
            .first()
            .map(|m| m.name.clone())
            .unwrap_or_default()
    });
    d.s.primary = Some(primary.clone());
    d.s.members = member_statuses(o, &primary);
    release_quarantine(&mut d);

    if o.inst.spec.paused {
        d.s.phase = Some(InstancePhase::Paused);
        d.s.message = Some("paused: Baton touches nothing until spec.paused is false".into());
        return d.done(Act::None, Wake::Idle);
    }
    if o.drift.is_some_and(|d| d.any()) || o.members.iter().any(|m| !m.exists) {
        let pods = missing_pods(&d, &primary, &base);
        // Only for an instance that has run: a new one's pods do not exist yet by design.
        if running.is_some() && o.members.iter().any(|m| m.name == primary && !m.exists) {
            primary_available(&mut d);
        }
        d.s.phase.get_or_insert(InstancePhase::Building);
        return d.done(Act::ApplyChildren { pods }, Wake::Poll);
    }
    if o.inst.cluster_owner().is_some() {
        return cluster_shard(d, &base);
    }
    if let Some(stray) = o.members.iter().find(|m| m.name != primary && m.writable()) {
        return second_writer(d, stray, &primary);
    }
    if let Some(f) = d.s.failover.clone() {
        return failover::failing_over(d, f);
    }
    match d.s.upgrade.clone() {
        Some(u) => in_flight(d, u, &primary),
        None => steady(d, &primary, &base),
    }
}

/// Whether the engine, the credentials and TLS let Baton start or touch anything; the
/// conditions that say so (or why not) either way.
fn setup_usable(d: &mut Draft) -> bool {
    let o = d.o;
    if let Some(why) = &o.unsupported {
        d.cond("VersionApplied", false, "DatastoreUnsupported", why.clone());
        d.s.phase = Some(InstancePhase::Error);
        d.s.message = Some(why.clone());
        return false;
    }
    if let Some(why) = &o.credentials_problem {
        // Nothing is started or touched: members could not log in, nor could Baton.
        d.cond("CredentialsReady", false, "CredentialsInvalid", why.clone());
        if d.s.version.is_none() {
            d.s.phase = Some(InstancePhase::Error);
        }
        d.s.message = Some(why.clone());
        return false;
    }
    match (&o.credentials_change_refused, &o.credentials_changed) {
        (Some(why), _) => d.cond("CredentialsReady", false, "ChangeRefused", why.clone()),
        (None, Some(_)) => d.cond(
            "CredentialsReady",
            true,
            "Changing",
            "the credentials Secret changed: Baton sets the new passwords on every member, online, once all are Ready and no upgrade is in flight".into(),
        ),
        (None, None) => d.cond("CredentialsReady", true, "Ready", String::new()),
    }
    if let Some(why) = &o.tls_problem {
        d.cond("TLSReady", false, "TLSUnavailable", why.clone());
        if d.s.version.is_none() {
            d.s.phase = Some(InstancePhase::Error);
        }
        d.s.message = Some(why.clone());
        return false;
    }
    let no_tls = o.members.iter().find_map(|m| {
        m.waiting
            .as_deref()
            .filter(|w| o.ca.is_some() && w.contains(crate::engine::NO_TLS))
            .map(|w| format!("member {}: {w}", m.name))
    });
    if let Some(why) = no_tls {
        // The member's image cannot serve TLS; it is not started without it.
        d.cond("TLSReady", false, "TLSUnavailable", why.clone());
        d.s.message = Some(why);
    } else if o.ca.is_some() {
        d.cond("TLSReady", true, "Serving", "members serve TLS only".into());
    }
    true
}

/// Whether `base` (the running version, or the spec's for a new instance) is in the catalog:
/// a new instance needs an active entry before anything is created; a running one only needs
/// its version listed.
fn version_listed(d: &mut Draft, base: &str) -> bool {
    let ds = d.o.inst.spec.datastore.type_;
    let new = d.s.version.is_none();
    let problem = match d.entry(base) {
        None => Some((
            "VersionNotInCatalog",
            format!(
                "{ds} {base} is not in the DatastoreVersion catalog; add it or choose a listed version"
            ),
        )),
        Some(e) if new && !e.spec.active => Some((
            "VersionInactive",
            format!("{ds} {base} is inactive in the catalog; choose an active version"),
        )),
        Some(_) => None,
    };
    let Some((reason, msg)) = problem else {
        return true;
    };
    d.cond("VersionApplied", false, reason, msg.clone());
    if new {
        d.s.phase = Some(InstancePhase::Error);
        d.s.message = Some(msg);
    }
    false
}

/// The status entry of every member, from its probe.
fn member_statuses(o: &Observation, primary: &str) -> Vec<MemberStatus> {
    let leader = o.members.iter().find(|m| m.name == primary);
    let view = view(o, primary, &o.inst.spec.upgrade_policy, Duration::ZERO);
    o.members
        .iter()
        .map(|m| {
            let lag = leader
                .filter(|l| l.name != m.name)
                .and_then(|l| view.lag_behind(m, l));
            MemberStatus {
                pod: m.name.clone(),
                role: m.probe.as_ref().map(|p| match p.role {
                    Role::Primary => MemberRole::Primary,
                    Role::Standby => MemberRole::Standby,
                }),
                version: m.probe.as_ref().map(|p| p.version.clone()),
                ready: m.ready,
                lag_bytes: match lag {
                    Some(Lag::Bytes(n)) => Some(n as i64),
                    _ => None,
                },
                lag_transactions: match lag {
                    Some(Lag::Transactions(n)) => Some(n as i64),
                    _ => None,
                },
                position: m
                    .probe
                    .as_ref()
                    .map(|p| p.position.to_string())
                    .or_else(|| last_recorded(o, &m.name)),
                received_position: m
                    .probe
                    .as_ref()
                    .and_then(|p| p.received.as_ref())
                    .map(ToString::to_string),
                fenced: m
                    .probe
                    .as_ref()
                    .is_some_and(|p| p.fenced && p.role == Role::Primary),
                error: m.probe_error.clone(),
            }
        })
        .collect()
}

/// The position status last recorded for member `name`.
fn last_recorded(o: &Observation, name: &str) -> Option<String> {
    o.inst
        .status
        .as_ref()?
        .members
        .iter()
        .find(|m| m.pod == name)?
        .position
        .clone()
}

/// Whether `a` and `b` differ only in what members' servers report from moment to moment
/// (positions and lag), or, while an upgrade is in flight and its record did not change, in
/// anything the members report (a restarting member goes not-ready, errs, comes back on the new
/// version and catches up within a second or two). Such a change alone is written at most every
/// few seconds: a write wakes this controller, and under load the next pass would see new
/// positions again. The step, the primary, the phase, conditions and message are never held.
pub fn differs_only_in_volatile(a: &DatabaseInstanceStatus, b: &DatabaseInstanceStatus) -> bool {
    let upgrading = a.upgrade.is_some() && a.upgrade == b.upgrade;
    let steady = |s: &DatabaseInstanceStatus| {
        let mut s = s.clone();
        for m in &mut s.members {
            *m = if upgrading {
                MemberStatus {
                    pod: std::mem::take(&mut m.pod),
                    ..Default::default()
                }
            } else {
                MemberStatus {
                    position: None,
                    received_position: None,
                    lag_bytes: None,
                    lag_transactions: None,
                    ..m.clone()
                }
            };
        }
        s
    };
    a != b && steady(a) == steady(b)
}

/// How long a change of positions and lag alone may wait for its status write: 10 s while an
/// upgrade is in flight (a person watches the standbys catch up) or when a standby crosses the
/// lag bound either way (the dry run and `kubectl baton status` read that), 5 minutes
/// otherwise. A settled primary's position moves even without clients (Redis pings its replicas
/// through the stream, PostgreSQL logs snapshots), and a status write per instance per health
/// pass is what a fleet cannot afford.
pub fn volatile_refresh(
    before: &DatabaseInstanceStatus,
    after: &DatabaseInstanceStatus,
    policy: &crate::crd::UpgradePolicy,
) -> Duration {
    let behind = |s: &DatabaseInstanceStatus| -> Vec<(String, bool)> {
        s.members
            .iter()
            .map(|m| {
                let late = m.lag_bytes.is_some_and(|b| b > policy.max_lag_bytes)
                    || m.lag_transactions
                        .is_some_and(|t| t > policy.max_lag_transactions);
                (m.pod.clone(), late)
            })
            .collect()
    };
    if after.upgrade.is_some() || behind(before) != behind(after) {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(300)
    }
}

/// The snapshot the planner sees.
fn view<'a>(
    o: &'a Observation,
    primary: &'a str,
    policy: &'a crate::crd::UpgradePolicy,
    step_elapsed: Duration,
) -> View<'a> {
    let status = o.inst.status.as_ref();
    let fenced_at = status
        .and_then(|s| s.upgrade.as_ref())
        .and_then(|u| u.switchover.as_ref())
        .and_then(|sw| sw.fenced_at.as_ref());
    View {
        members: &o.members,
        primary,
        policy,
        step_elapsed,
        fence_elapsed: fenced_at.map_or(Duration::ZERO, |t| elapsed(o, &t.0)),
        may_start_step: true,
        fence_goal: o.fence_goal.as_ref(),
        published: o.published.as_deref(),
        quarantined: &[],
        now: o.now,
        offline_check: o.offline_check.as_ref(),
        offline_leftovers: o.offline_leftovers,
        replicated: o.inst.spec.durability == Durability::Replicated,
    }
}

fn elapsed(o: &Observation, since: &jiff::Timestamp) -> Duration {
    Duration::try_from(o.now.duration_since(*since)).unwrap_or(Duration::ZERO)
}

/// A quarantine ends when the member's claim was replaced (a person chose to discard its data).
/// An upgrade paused for a deposed member discarded so resumes with its step's clock restarted.
fn release_quarantine(d: &mut Draft) {
    let members = &d.o.members;
    let held = |s: &DatabaseInstanceStatus| s.quarantine.iter().filter(|q| q.held).count();
    let before = held(&d.s);
    d.s.quarantine.retain(|q| {
        let claim = members
            .iter()
            .find(|m| m.name == q.member)
            .and_then(|m| m.claim_uid.as_deref());
        q.claim_uid.is_none() || claim.is_none() || claim == q.claim_uid.as_deref()
    });
    if held(&d.s) < before
        && let Some(u) = d.s.upgrade.as_mut()
    {
        u.step_started = Some(Time(d.o.now));
    }
}

/// Pods to create: a member's pod runs the version its instance runs (the source, during an
/// upgrade).
fn missing_pods(d: &Draft, primary: &str, base: &str) -> Vec<NewPod> {
    let version =
        d.s.upgrade
            .as_ref()
            .map(|u| u.source_version.clone())
            .unwrap_or_else(|| base.to_string());
    // An offline hop's primary, once stopped for the conversion, runs the target: on the
    // source it would go back to the kept old data.
    let converted =
        d.s.upgrade
            .as_ref()
            .filter(|u| !u.rollback && u.offline.as_ref().is_some_and(|o| o.stopped_at.is_some()))
            .map(|u| u.target_version.clone());
    let image_of = |v: &str| {
        d.entry(v)
            .or_else(|| d.entry(base))
            .map(|e| e.spec.image.clone())
            .unwrap_or_default()
    };
    // A pod only on a claim that exists (and is not being deleted): the claims come first.
    d.o.members
        .iter()
        .filter(|m| !m.exists && m.claim_uid.is_some())
        .map(|m| {
            let version = match &converted {
                Some(v) if m.name == primary => v.clone(),
                _ => version.clone(),
            };
            NewPod {
                name: m.name.clone(),
                image: image_of(&version),
                version,
                // A primary being failed over comes back unlabelled: label-following clients
                // wait for the promoted standby rather than knock on a fenced member.
                primary: m.name == primary && d.s.failover.is_none(),
            }
        })
        .collect()
}

/// A member that is not the recorded primary accepts writes: fence it and quarantine it. Its
/// writes stay on it — never repointed, never resynced away — until a person decides.
fn second_writer(mut d: Draft, stray: &Member, primary: &str) -> Decision {
    if !d.s.quarantine.iter().any(|q| q.member == stray.name) {
        d.s.quarantine.push(QuarantinedMember {
            member: stray.name.clone(),
            reason: format!(
                "accepted writes while {primary} is the primary; fenced, and never repointed by Baton (a resync would throw its writes away)"
            ),
            since: Some(d.now()),
            claim_uid: stray.claim_uid.clone(),
            held: false,
        });
    }
    mark_quarantine(&mut d);
    let act = Act::Fence {
        member: stray.name.clone(),
    };
    d.done(act, Wake::Now)
}

fn mark_quarantine(d: &mut Draft) {
    // A member a failover holds until it is measured has not been found holding anything.
    let names: Vec<&str> =
        d.s.quarantine
            .iter()
            .filter(|q| !q.held)
            .map(|q| q.member.as_str())
            .collect();
    if names.is_empty() {
        return;
    }
    let msg = format!(
        "{} took writes the primary does not have and {} fenced; to discard {} writes, delete {} claim and pod (see docs/operations.md)",
        names.join(", "),
        if names.len() == 1 { "is" } else { "are" },
        if names.len() == 1 { "its" } else { "their" },
        if names.len() == 1 { "its" } else { "their" },
    );
    d.cond("Degraded", true, "SecondPrimary", msg);
}

/// No upgrade in flight: keep the members converged, then start, refuse or wait on the
/// version the spec asks for.
fn steady(mut d: Draft, primary: &str, base: &str) -> Decision {
    let o = d.o;
    if let Some(act) = failover::rejoin(&mut d, primary) {
        mark_quarantine(&mut d);
        return d.done(act, Wake::Now);
    }
    let quarantined: Vec<String> = d.s.quarantine.iter().map(|q| q.member.clone()).collect();
    let v = View {
        quarantined: &quarantined,
        ..view(o, primary, &o.inst.spec.upgrade_policy, Duration::ZERO)
    };
    if let Some(act) = converge(o, &v, primary) {
        // A repoint is seen by a later probe; one ahead of an unfence holds writes off, so
        // that probe comes at the fenced pace.
        let wake = match act {
            Act::Repoint { .. } if v.primary_member().is_some_and(Member::fenced) => Wake::Fenced,
            Act::Repoint { .. } => Wake::Poll,
            _ => Wake::Now,
        };
        return d.done(act, wake);
    }
    mark_quarantine(&mut d);
    let leading = v.primary_member().is_some_and(|p| p.ready && p.writable());
    let all_caught_up = leading
        && o.members
            .iter()
            .filter(|m| m.name != primary && !v.is_quarantined(&m.name))
            .all(|m| v.caught_up(m));
    let version = v
        .primary_member()
        .and_then(|m| m.version.clone())
        .unwrap_or_else(|| base.to_string());
    let (up, mut why) = primary_available(&mut d);
    match failover::trigger(&d, &v).filter(|_| !up) {
        Some(failover::Trigger::Start(f, act)) => {
            failover::say(&mut d, failover::deposing(&f));
            failover::hold(&mut d, &f.from);
            d.s.failover = Some(*f);
            return d.done(act, Wake::Poll);
        }
        Some(failover::Trigger::Wait(w)) => {
            why = format!("{why}; {w}");
            d.cond("PrimaryAvailable", false, "PrimaryDown", why.clone());
        }
        None => {}
    }
    if !all_caught_up {
        return not_caught_up(d, (!up).then_some(why));
    }
    settled(&mut d, &version);
    if o.credentials_changed.is_some() {
        // Every member that answers; one that does not (quarantined and down) boots with the
        // applied copy later, which then holds the new passwords.
        let members = o
            .members
            .iter()
            .filter(|m| m.probe.is_some())
            .map(|m| m.name.clone())
            .collect();
        return d.done(Act::SetPasswords { members }, Wake::Now);
    }
    if let Some(reload) = reload_renewed_certificate(&mut d) {
        return d.done(reload, Wake::Poll);
    }
    start_or_refuse(d, primary, &version, &v)
}

/// Not every member is Ready and caught up: Building (an Active instance stays Active), with
/// why the primary is unavailable when it is (`down`).
fn not_caught_up(mut d: Draft, down: Option<String>) -> Decision {
    if d.s.phase != Some(InstancePhase::Active) {
        d.s.phase = Some(InstancePhase::Building);
    }
    d.s.message =
        Some(down.unwrap_or_else(|| "waiting for every member to be Ready and replicating".into()));
    d.cond(
        "Ready",
        false,
        "MembersNotReady",
        "not every member is Ready and caught up".into(),
    );
    d.done(Act::None, Wake::Poll)
}

/// Every member runs `version`, Ready and caught up: Active.
fn settled(d: &mut Draft, version: &str) {
    d.s.version = Some(version.to_string());
    d.s.phase = Some(InstancePhase::Active);
    d.s.message = None;
    members_ready(d, version);
    d.cond("Progressing", false, "Idle", String::new());
    if d.s.quarantine.iter().all(|q| q.held) {
        d.cond("Degraded", false, "NoFailure", String::new());
    }
}

/// Members serving a certificate other than the TLS Secret's (renewed) reload it, online: the
/// server reloads once its pod's files hold the new certificate (the node updates mounted
/// Secrets on its own schedule); until then each pass looks again. None: none to reload.
fn reload_renewed_certificate(d: &mut Draft) -> Option<Act> {
    let stale: Vec<String> =
        d.o.members
            .iter()
            .filter(|m| m.probe.as_ref().is_some_and(|p| p.stale_certificate))
            .map(|m| m.name.clone())
            .collect();
    if stale.is_empty() {
        return None;
    }
    d.cond(
        "TLSReady",
        true,
        "Reloading",
        format!(
            "{} {} a certificate other than the TLS Secret's; reloading once the mounted files are updated",
            stale.join(", "),
            if stale.len() == 1 { "serves" } else { "serve" }
        ),
    );
    Some(Act::ReloadTls { members: stale })
}

/// A Cluster's shard. Its members' roles are the Cluster's to change (formation,
/// `CLUSTER REPLICATE`, a graceful `CLUSTER FAILOVER`, the fence), because only every node's
/// view of the cluster can say which node leads: the instance runs its members and reports
/// them, and never promotes, repoints, unfences or upgrades one by itself.
fn cluster_shard(mut d: Draft, base: &str) -> Decision {
    let o = d.o;
    // Before formation every node is a master without slots; the shard's primary is then the
    // one it was laid out with. After it, the one member that is a master leads.
    let masters: Vec<&Member> = o.members.iter().filter(|m| m.is_primary()).collect();
    if let [leader] = masters.as_slice() {
        d.s.primary = Some(leader.name.clone());
        d.s.members = member_statuses(o, &leader.name);
    }
    let up = o.members.iter().all(|m| m.ready && m.probe.is_some());
    let versions: std::collections::BTreeSet<&str> = o
        .members
        .iter()
        .filter_map(|m| m.probe.as_ref().map(|p| p.version.as_str()))
        .collect();
    if !up {
        if d.s.phase != Some(InstancePhase::Active) {
            d.s.phase = Some(InstancePhase::Building);
        }
        d.s.message = Some("waiting for every member of the shard to be Ready".into());
        d.cond(
            "Ready",
            false,
            "MembersNotReady",
            "not every member is Ready".into(),
        );
        return d.done(Act::None, Wake::Poll);
    }
    d.s.version = Some(match versions.iter().next() {
        Some(v) if versions.len() == 1 => v.to_string(),
        _ => base.to_string(),
    });
    d.s.phase = Some(InstancePhase::Active);
    let cluster = o.inst.cluster_owner().unwrap_or_default();
    d.s.message = Some(format!(
        "a shard of Cluster {cluster}: the Cluster drives its roles and upgrades"
    ));
    d.cond(
        "Ready",
        true,
        "MembersReady",
        format!("{} members running", o.members.len()),
    );
    // The shared Secret changed: each shard sets the passwords on its own members, as an
    // instance does, while the Cluster restarts none of them.
    if o.credentials_changed.is_some() && o.credentials_change_refused.is_none() {
        if o.cluster_upgrading {
            d.cond(
                "CredentialsReady",
                true,
                "Changing",
                format!("the credentials Secret changed: Baton sets the new passwords on every member, online, once Cluster {cluster}'s upgrade has ended"),
            );
            return d.done(Act::None, Wake::Idle);
        }
        let members = o.members.iter().map(|m| m.name.clone()).collect();
        return d.done(Act::SetPasswords { members }, Wake::Now);
    }
    match reload_renewed_certificate(&mut d) {
        Some(reload) => d.done(reload, Wake::Poll),
        None => d.done(Act::None, Wake::Idle),
    }
}

/// The act that brings the members back to one writable primary that every other member
/// follows: publish the primary (label and topology), unfence it once it is the only member
/// that could take a write, repoint strays. Each is safe at any time, failed upgrade or not.
/// Under `durability: Replicated` standbys are repointed before the unfence
/// ([`View::repoint_before_unfence`]).
fn converge(o: &Observation, v: &View, primary: &str) -> Option<Act> {
    let leader = v.primary_member().filter(|p| p.is_primary())?;
    if o.published.as_deref() != Some(primary) {
        return Some(Act::Publish {
            primary: primary.into(),
        });
    }
    if leader.fenced()
        && let Some(first) = v.repoint_before_unfence(leader)
    {
        return Some(first);
    }
    if leader.fenced() && v.only_writer_could_be(primary).is_ok() {
        return Some(Act::Unfence {
            member: primary.into(),
        });
    }
    let members = v.to_repoint(leader);
    (!members.is_empty()).then(|| Act::Repoint {
        members,
        primary: primary.into(),
    })
}

/// Sets `PrimaryAvailable` from the recorded primary as observed (outside upgrades: within
/// one, the step says what happens to the primary), and returns it with its message.
fn primary_available(d: &mut Draft) -> (bool, String) {
    let primary = d.s.primary.clone().unwrap_or_default();
    let o = d.o;
    let v = view(o, &primary, &o.inst.spec.upgrade_policy, Duration::ZERO);
    let (up, reason, mut why) = primary_availability(&v);
    if matches!(reason, "PrimaryDown" | "PrimaryNotLeading") && !o.inst.spec.failover.enabled {
        why = format!("{why}; no standby is promoted (spec.failover is off)");
    }
    if reason == "PrimaryDown" {
        // `afterSeconds` counts from when the primary is down (its node agrees), not from a
        // spell of not answering Baton alone: entering PrimaryDown from another reason starts
        // the condition afresh, so its transition time is now.
        d.s.conditions
            .retain(|c| c.type_ != "PrimaryAvailable" || c.reason == reason);
    }
    d.cond("PrimaryAvailable", up, reason, why.clone());
    (up, why)
}

/// Whether the recorded primary leads, and if not, what its node and its server say: a server
/// that does not answer while its node reports the pod Ready may be cut off from Baton rather
/// than dead, and the two reasons keep that apart (`status.conditions` keeps since when).
fn primary_availability(v: &View) -> (bool, &'static str, String) {
    let name = v.primary;
    let Some(p) = v.primary_member().filter(|p| p.exists) else {
        return (
            false,
            "PrimaryMissing",
            format!("the primary {name} has no pod; Baton creates it again"),
        );
    };
    let unanswered = || {
        p.probe_error
            .clone()
            .unwrap_or_else(|| "no address yet".into())
    };
    match (&p.probe, &p.waiting) {
        (Some(probe), _) if probe.role == Role::Primary => {
            (true, "Leading", format!("{name} leads"))
        }
        (Some(_), _) => (
            false,
            "PrimaryNotLeading",
            format!("the recorded primary {name} answers as a standby"),
        ),
        (None, Some(w)) => (
            false,
            "PrimaryDown",
            format!("the primary {name} is down: its node reports {w}"),
        ),
        (None, None) if p.ready => (
            false,
            "PrimaryUnreachable",
            format!(
                "the primary {name} does not answer Baton ({}) though its node reports it Ready: it may be cut off rather than down",
                unanswered()
            ),
        ),
        (None, None) => (
            false,
            "PrimaryDown",
            format!(
                "the primary {name} does not answer ({}) and its node reports it not Ready",
                unanswered()
            ),
        ),
    }
}

fn members_ready(d: &mut Draft, version: &str) {
    let n = d.o.members.len();
    d.cond(
        "Ready",
        true,
        "MembersReady",
        format!("{n} members on {version}"),
    );
}

fn applied(d: &mut Draft, running: &str) {
    d.cond(
        "VersionApplied",
        true,
        "Applied",
        format!("running {running}"),
    );
}

/// The spec names a version: apply it if the path and the members allow, else say why.
fn start_or_refuse(mut d: Draft, primary: &str, running: &str, v: &View) -> Decision {
    let spec_version = d.o.inst.spec.datastore.version.clone();
    if spec_version == running {
        applied(&mut d, running);
        return d.done(Act::None, Wake::Idle);
    }
    let hops = match path_to_spec(&d, running, &spec_version, v) {
        Ok(hops) => hops,
        Err((reason, msg)) => {
            d.cond("VersionApplied", false, reason, msg);
            let wake = if reason == "PreCheckFailed" {
                Wake::Poll
            } else {
                Wake::Idle
            };
            return d.done(Act::None, wake);
        }
    };
    let now = d.now();
    let first = hops
        .first()
        .map_or(spec_version.clone(), |h| h.version.clone());
    let mut u = UpgradeInFlight::new(running, &first, primary, now);
    if hops.len() > 1 {
        // Along several catalog hops, each rolled like a whole upgrade.
        u.path = hops.iter().map(|h| h.version.clone()).collect();
        u.origin_version = Some(running.to_string());
    }
    d.s.upgrade = Some(u);
    d.s.phase = Some(InstancePhase::Upgrading);
    d.s.message = Some(if hops.len() > 1 {
        let path: Vec<&str> = hops.iter().map(|h| h.version.as_str()).collect();
        format!(
            "upgrading {running} → {} along {}",
            spec_version,
            path.join(" → ")
        )
    } else {
        format!("upgrading {running} → {spec_version}")
    });
    d.cond(
        "Progressing",
        true,
        "Upgrading",
        format!("{running} → {spec_version}"),
    );
    d.done(Act::None, Wake::Now)
}

/// The catalog hops from `running` to `spec_version`, or the condition reason and message that
/// say why the upgrade is refused (or, `PreCheckFailed`, waits).
fn path_to_spec(
    d: &Draft,
    running: &str,
    spec_version: &str,
    v: &View,
) -> Result<Vec<catalog::Hop>, (&'static str, String)> {
    let o = d.o;
    let ds = o.inst.spec.datastore.type_;
    // An UpgradeRequest moved the instance past its spec: say so, and how to align Git.
    let by_request =
        d.s.last_upgrade
            .as_ref()
            .filter(|l| l.target_version == running && l.result == UpgradeResult::Succeeded)
            .and_then(|l| l.request.clone());
    let Some(target) = d.entry(spec_version) else {
        return Err((
            "VersionNotInCatalog",
            format!(
                "{ds} {spec_version} is not in the DatastoreVersion catalog; nothing was changed"
            ),
        ));
    };
    match catalog::resolve_path(&o.catalog, ds, running, &target.spec) {
        Err(PathError::Downgrade { .. }) => Err((
            "DowngradeRefused",
            match &by_request {
                Some(r) => format!(
                    "UpgradeRequest {r} upgraded the instance to {running}; spec version {spec_version} is older and is not acted on — set spec.datastore.version to {running}"
                ),
                None => format!(
                    "spec version {spec_version} is older than the running {running}; downgrades are never performed — set it back to {running}"
                ),
            },
        )),
        Err(e) => Err(("PathNotAllowed", format!("{e}; nothing was changed"))),
        Ok(hops)
            if !o.inst.spec.upgrade_policy.allow_offline
                && (o.strategy_to_spec == Some(Strategy::Offline)
                    || offline_hop(ds, running, &hops).is_some()) =>
        {
            let (a, b) = offline_hop(ds, running, &hops)
                .unwrap_or((running.to_string(), spec_version.to_string()));
            Err((
                "PathNeedsOffline",
                format!(
                    "{ds} {a} → {b} needs an offline upgrade: the primary's data is converted while it is stopped (a write outage) and the standbys are cloned again; set spec.upgradePolicy.allowOffline: true to accept it; nothing was changed"
                ),
            ))
        }
        Ok(hops) => plan::precheck(v).map(|()| hops).map_err(|e| {
            (
                "PreCheckFailed",
                format!("upgrade to {spec_version} waits: {e}"),
            )
        }),
    }
}

/// The first hop of `hops` (from `running`) that replication cannot cross.
fn offline_hop(
    ds: crate::crd::Datastore,
    running: &str,
    hops: &[catalog::Hop],
) -> Option<(String, String)> {
    let mut from = running.to_string();
    for h in hops {
        if crate::engine::strategy(ds, &from, &h.version) == Some(Strategy::Offline) {
            return Some((from, h.version.clone()));
        }
        from = h.version.clone();
    }
    None
}

/// An upgrade is in flight (or failed).
fn in_flight(mut d: Draft, mut u: UpgradeInFlight, primary: &str) -> Decision {
    let o = d.o;
    // A hop replication cannot cross runs offline; the record says so from its first pass.
    if u.offline.is_none()
        && u.kind() != UpgradeType::Switchover
        && crate::engine::strategy(
            o.inst.spec.datastore.type_,
            &u.source_version,
            &u.target_version,
        ) == Some(Strategy::Offline)
    {
        u.offline = Some(OfflineUpgrade::default());
    }
    let spec_version = o.inst.spec.datastore.version.clone();
    // A request's upgrade goes back only when asked (`rollback`); a spec-driven one when the
    // spec is set back to the source version.
    let reverting = u.rollback || (u.request.is_none() && spec_version == u.source_version);
    let mut policy = o.inst.spec.upgrade_policy.clone();
    if let Some(second) = u.second_switch {
        policy.second_switch = second;
    }
    let quarantined: Vec<String> = d.s.quarantine.iter().map(|q| q.member.clone()).collect();
    let step_elapsed = u
        .step_started
        .as_ref()
        .map_or(Duration::ZERO, |t| elapsed(o, &t.0));
    let v = View {
        quarantined: &quarantined,
        may_start_step: !u.window_only || o.window_open,
        ..view(o, primary, &policy, step_elapsed)
    };
    if let Some((act, wake)) = failover::during_upgrade(&mut d, &u, &v) {
        return d.done(act, wake);
    }
    if let Some(why) = u.failure.clone() {
        return failed(d, u, why, reverting, &v);
    }
    if reverting && !plan::revertible(&v, &u) {
        let msg = format!(
            "the primary already runs {}; the upgrade can only move forward to it",
            u.target_version
        );
        d.cond("VersionApplied", false, "RevertImpossible", msg);
        return d.done(Act::None, Wake::Poll);
    }
    if !reverting && u.request.is_none() && spec_version != u.final_version() {
        let msg = format!(
            "an upgrade to {} is in flight; {spec_version} waits until it ends",
            u.final_version()
        );
        d.cond("VersionApplied", false, "UpgradeInFlight", msg);
    }
    let p = plan::pass(&v, &u, reverting);
    apply_plan(d, &u, p)
}

/// A failed upgrade: an UpgradeRequest's goes back to the source on its own while the primary
/// still runs it; a spec-driven one waits for the spec to be set back.
fn failed(mut d: Draft, u: UpgradeInFlight, why: String, reverting: bool, v: &View) -> Decision {
    if u.request.is_some() {
        if !u.rollback && plan::revertible(v, &u) {
            d.s.upgrade = Some(UpgradeInFlight {
                aborted: Some(why.clone()),
                rollback: true,
                hold: false,
                ..back_to_source(u.clone(), d.now())
            });
            d.s.message = Some(format!("rolling back to {}: {why}", u.source_version));
            return d.done(Act::None, Wake::Now);
        }
        // Cannot go back (the primary already runs the target, or the rollback itself failed):
        // stop in Error and report the outcome to the request.
        let why = if u.rollback {
            format!("rolling back to {} failed: {why}", u.source_version)
        } else {
            format!(
                "{why}; the primary already runs {}, so it cannot be rolled back: the member needs a person to start on it",
                u.target_version
            )
        };
        d.s.phase = Some(InstancePhase::Error);
        d.s.message = Some(why.clone());
        d.cond("Degraded", true, "UpgradeFailed", why.clone());
        if d.s.last_upgrade.as_ref().and_then(|l| l.job.as_ref()) != u.job.as_ref() {
            d.s.last_upgrade = Some(outcome(d.now(), &u, UpgradeResult::Failed, why));
        }
        return stopped(d, v);
    }
    if !reverting {
        d.s.phase = Some(InstancePhase::Error);
        d.s.message = Some(why.clone());
        d.cond("Degraded", true, "UpgradeFailed", why);
        d.cond(
            "Progressing",
            false,
            "UpgradeFailed",
            format!(
                "set spec.datastore.version back to {} to return every member to it",
                u.source_version
            ),
        );
        return stopped(d, v);
    }
    // The spec went back to the source version: start returning every member to it.
    d.s.upgrade = Some(back_to_source(u, d.now()));
    d.s.phase = Some(InstancePhase::Upgrading);
    d.done(Act::None, Wake::Now)
}

/// A stopped upgrade still keeps the members converged (a switchover undone mid-way may leave
/// a member that followed nobody).
fn stopped(d: Draft, v: &View) -> Decision {
    match converge(d.o, v, v.primary) {
        Some(act) => d.done(act, Wake::Poll),
        None => d.done(Act::None, Wake::Idle),
    }
}

/// `u` restarted at its first step, to return every member to its source version: the failure
/// and any switchover state are cleared.
fn back_to_source(u: UpgradeInFlight, now: Time) -> UpgradeInFlight {
    UpgradeInFlight {
        failure: None,
        step: UpgradeStep::default(),
        step_started: Some(now),
        switchover: None,
        ..u
    }
}

/// Writes the planner's outcome into the status.
fn apply_plan(mut d: Draft, prev: &UpgradeInFlight, mut p: Plan) -> Decision {
    let prev = &measure_switchover(&mut d, prev, &mut p);
    let mut act = p.act;
    if let Err(why) = resolve_images(&d, prev, &mut act) {
        d.s.upgrade = Some(UpgradeInFlight {
            failure: Some(why.clone()),
            switchover: None,
            ..prev.clone()
        });
        d.s.phase = Some(InstancePhase::Error);
        d.s.message = Some(why);
        return d.done(Act::None, Wake::Now);
    }
    if let Some(primary) = &p.primary {
        d.s.primary = Some(primary.clone());
    }
    d.s.phase = Some(InstancePhase::Upgrading);
    let changed = p.upgrade.as_ref() != Some(prev);
    let catching_up = p.catching_up;
    match p.upgrade {
        Some(r) => record_progress(&mut d, r, p.waiting.as_deref()),
        None => match prev.next_hop().filter(|_| !p.reverted && !prev.cancel) {
            Some(next) => next_hop(&mut d, prev, next),
            None => finish(&mut d, prev, p.reverted),
        },
    }
    // While a switchover holds writes off, every poll interval is write outage: wait at the
    // database's pace rather than the usual poll. A fence held past two seconds is waiting on
    // something slower than a poll (a restart, a catch-up): the usual poll then, so a stuck
    // fence does not probe its members forty times a second until its deadline.
    let holding_writes =
        d.s.upgrade
            .as_ref()
            .and_then(|u| u.switchover.as_ref())
            .filter(|sw| sw.writable_at.is_none())
            .and_then(|sw| sw.fenced_at.as_ref())
            .and_then(|at| plan::millis_between(at.0, d.o.now))
            .is_some_and(|ms| ms < FENCED_PACE_MS);
    let wake = if changed || act != Act::None {
        Wake::Now
    } else if holding_writes {
        Wake::Fenced
    } else if catching_up {
        Wake::CatchingUp
    } else {
        Wake::Poll
    };
    d.done(act, wake)
}

/// A switchover this pass ends is measured, and its window kept with the upgrade's outcome (the
/// longest of the upgrade's switchovers, in the plan's record and in the previous one).
fn measure_switchover(d: &mut Draft, prev: &UpgradeInFlight, p: &mut Plan) -> UpgradeInFlight {
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(d.o.now);
    let Some(m) = plan::measured_switchover(prev, p.upgrade.as_ref(), &now) else {
        return prev.clone();
    };
    let longest = |u: &UpgradeInFlight| u.switchover_ms.max(Some(m.window_ms));
    if let Some(r) = p.upgrade.as_mut() {
        r.switchover_ms = longest(r);
    }
    let prev = UpgradeInFlight {
        switchover_ms: longest(prev),
        ..prev.clone()
    };
    d.s.last_switchover = Some(m);
    prev
}

/// Fills the images an act runs from the catalog; why not, when the version it sets has no
/// entry any more (the upgrade stops there).
fn resolve_images(d: &Draft, prev: &UpgradeInFlight, act: &mut Act) -> Result<(), String> {
    let image = |v: &str| d.entry(v).map(|e| e.spec.image.clone());
    match act {
        Act::CheckOffline {
            from_image,
            to_image,
            ..
        } => {
            *from_image = image(&prev.source_version).unwrap_or_default();
            *to_image = image(&prev.target_version).unwrap_or_default();
        }
        Act::SetVersion {
            version, image: to, ..
        } => {
            *to = image(version).ok_or_else(|| {
                format!(
                    "{} {version} has no DatastoreVersion entry any more; the upgrade stopped",
                    d.o.inst.spec.datastore.type_
                )
            })?;
        }
        _ => {}
    }
    Ok(())
}

/// An upgrade still in flight: its record, and what it is doing or why it failed.
fn record_progress(d: &mut Draft, r: UpgradeInFlight, waiting: Option<&str>) {
    if let Some(f) = &r.failure {
        d.s.phase = Some(InstancePhase::Error);
        d.s.message = Some(f.clone());
        d.cond("Degraded", true, "UpgradeFailed", f.clone());
    } else {
        let mut msg = if r.kind() == UpgradeType::Switchover {
            format!("planned switchover: {}", r.describe())
        } else {
            format!(
                "{} → {}: {}",
                r.source_version,
                r.target_version,
                r.describe()
            )
        };
        if let Some(w) = waiting {
            msg = format!("{msg}; {w}");
        }
        if let Some(e) = &d.o.last_act_error {
            msg = format!("{msg}; the last attempt failed: {e}");
        }
        d.s.message = Some(msg);
        d.cond("Degraded", false, "NoFailure", String::new());
    }
    d.s.upgrade = Some(r);
}

/// A hop of a longer path is done: every member runs it; on to the next.
fn next_hop(d: &mut Draft, prev: &UpgradeInFlight, next: &str) {
    let (i, n) = prev.hop().unwrap_or((1, 1));
    d.s.version = Some(prev.target_version.clone());
    d.s.message = Some(format!(
        "hop {i}/{n} done: every member runs {}; next {} → {next}",
        prev.target_version, prev.target_version
    ));
    d.s.upgrade = Some(UpgradeInFlight {
        source_version: prev.target_version.clone(),
        target_version: next.to_string(),
        step: UpgradeStep::default(),
        step_started: Some(d.now()),
        switchover: None,
        original_primary: d.s.primary.clone(),
        // A hold is the first hop's: once committed, the path goes on.
        hold: false,
        offline: None,
        ..prev.clone()
    });
}

/// The upgrade ended: record its outcome, the version every member runs, and go Active.
fn finish(d: &mut Draft, prev: &UpgradeInFlight, reverted: bool) {
    let from = prev.original_primary.clone().unwrap_or_default();
    let switched = prev.kind() == UpgradeType::Switchover;
    // Stopped between hops of a longer path: on a version of the way, not the last.
    let short = prev.next_hop().is_some();
    let (result, message) = match (reverted, &prev.aborted, prev.cancel) {
        (false, _, true) if short => (
            UpgradeResult::Cancelled,
            format!(
                "cancelled after hop {}: every member runs {}, not {}",
                prev.hop().map_or(1, |h| h.0),
                prev.target_version,
                prev.final_version()
            ),
        ),
        (false, _, _) if switched => (
            UpgradeResult::Succeeded,
            match d.s.primary.as_deref() {
                Some(to) if to != from => format!("the primary moved from {from} to {to}"),
                _ => format!("{from} is still the primary"),
            },
        ),
        (true, None, true) if switched => (
            UpgradeResult::Cancelled,
            format!("cancelled before the switchover; {from} is still the primary"),
        ),
        (true, Some(why), _) if switched => (
            UpgradeResult::Failed,
            format!("{why}; {from} is still the primary"),
        ),
        (false, _, false) => (
            UpgradeResult::Succeeded,
            match &prev.restarted_in_place {
                Some(why) => format!("every member runs {}; {why}", prev.target_version),
                None => format!("every member runs {}", prev.target_version),
            },
        ),
        (false, _, true) => (
            UpgradeResult::Succeeded,
            format!(
                "cancelled after the primary had moved to {}: finished, the only way to a healthy instance",
                prev.target_version
            ),
        ),
        (true, Some(why), _) => (
            UpgradeResult::Failed,
            format!("{why}; every member is back on {}", prev.source_version),
        ),
        (true, None, true) => (
            UpgradeResult::Cancelled,
            format!("cancelled; every member is back on {}", prev.source_version),
        ),
        (true, None, false) => (
            UpgradeResult::RolledBack,
            format!("every member is back on {}", prev.source_version),
        ),
    };
    d.s.last_upgrade = Some(outcome(d.now(), prev, result, message));
    d.s.version = Some(if reverted {
        prev.source_version.clone()
    } else {
        prev.target_version.clone()
    });
    d.s.upgrade = None;
    d.s.phase = Some(InstancePhase::Active);
    d.s.message = None;
    d.cond("Progressing", false, "Idle", String::new());
    d.cond("Degraded", false, "NoFailure", String::new());
    // Every member runs it and is caught up (the last step saw to that): the conditions say so
    // now, or the next pass would write again only to change them.
    let version = d.s.version.clone().unwrap_or_default();
    members_ready(d, &version);
    if d.o.inst.spec.datastore.version == version {
        applied(d, &version);
    }
    primary_available(d);
}

fn outcome(
    now: Time,
    u: &UpgradeInFlight,
    result: UpgradeResult,
    message: String,
) -> UpgradeOutcome {
    UpgradeOutcome {
        request: u.request.clone(),
        job: u.job.clone(),
        source_version: u.first_version().to_string(),
        target_version: u.target_version.clone(),
        result,
        message: Some(message),
        finish_time: Some(now),
        outage_ms: u.offline.as_ref().and_then(|o| o.outage_ms),
        switchover_ms: u.switchover_ms,
    }
}

#[cfg(test)]
mod tests;
