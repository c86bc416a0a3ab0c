//! The upgrade planner: from an observed snapshot of the members and the recorded upgrade, the
//! one thing to do next. Pure: no client, no clock (elapsed time is an input).
//!
//! Order: standbys one at a time by ordinal, then the primary — by a switchover (fence, choose
//! the most advanced standby *after* the fence, wait until it has the fenced primary's position,
//! promote, repoint, unfence) and then as a standby, or by an in-place restart (`Restart`, or a
//! single member). With `secondSwitch`, a final switchover returns the role to the original
//! primary. Every state change is recorded (`before`) ahead of its side effect (`act`), and
//! every act is idempotent, so a pass repeated after a crash does no harm.
//!
//! An UpgradeRequest adds: `InPlace` (every member restarted together, one step), `hold`
//! (stop at `AwaitingCommit` before the primary is touched), `cancel` (at the next step
//! boundary, return to the source while the primary still runs it, else finish), and a
//! maintenance window (no forward step starts while it is closed).

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::crd::{PrimaryUpdateMethod, UpgradeInFlight, UpgradePolicy, UpgradeType};
use crate::engine::{Probe, Role};

/// What was observed of one member.
#[derive(Debug, Clone, Default)]
pub struct Member {
    pub name: String,
    /// The catalog version of the member's pod (its `baton.dev/version` annotation).
    pub version: Option<String>,
    pub ready: bool,
    pub ip: Option<Ipv4Addr>,
    pub probe: Option<Probe>,
    /// Why the member's container is not running, as the node reports it.
    pub waiting: Option<String>,
    /// The node reports the pod's current image running (an image change has taken effect).
    pub image_current: bool,
}

/// The member runs `version` for real: its pod's image change has taken effect and the server
/// itself reports that release. Without this, the old process — still answering while it is
/// being stopped — would pass for the new one.
pub fn runs(m: &Member, version: &str) -> bool {
    let release = |v: &str| v.split('-').next().unwrap_or(v).to_string();
    m.version.as_deref() == Some(version)
        && m.image_current
        && m.probe.as_ref().is_some_and(|p| {
            match (
                release(&p.version).parse::<crate::version::Version>(),
                release(version).parse::<crate::version::Version>(),
            ) {
                (Ok(a), Ok(b)) => a.cmp_release(&b).is_eq(),
                _ => false,
            }
        })
}

/// The snapshot a decision is made from.
#[derive(Debug, Clone)]
pub struct View<'a> {
    /// Sorted by ordinal.
    pub members: &'a [Member],
    pub primary: &'a str,
    pub policy: &'a UpgradePolicy,
    /// How long the recorded step has been running.
    pub step_elapsed: Duration,
    /// A new forward step may start now (false while a required maintenance window is closed).
    pub may_start_step: bool,
}

/// A side effect, each idempotent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act {
    /// Nothing to do until something changes.
    Wait(String),
    /// Run `member` on the image of `version` (an in-place image change).
    SetVersion {
        member: String,
        version: String,
    },
    /// Make `member` replicate from the primary.
    Repoint {
        member: String,
    },
    Fence {
        member: String,
    },
    Unfence {
        member: String,
    },
    /// Promote `candidate`, make every other member follow it, move the primary label.
    Promote {
        candidate: String,
    },
}

/// The decision of one pass: record `before`, do `act`, then record `after` (if the act worked).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub before: Option<Option<UpgradeInFlight>>,
    pub act: Act,
    pub after: Option<Option<UpgradeInFlight>>,
    /// A new primary, recorded with `after`.
    pub new_primary: Option<String>,
    /// A milestone worth an Event: (reason, message).
    pub event: Option<(&'static str, String)>,
    /// With `before: Some(None)`: the upgrade ends with every member back on the source.
    pub reverted: bool,
}

impl Decision {
    fn act(act: Act) -> Decision {
        Decision {
            before: None,
            act,
            after: None,
            new_primary: None,
            event: None,
            reverted: false,
        }
    }
    fn wait(why: impl Into<String>) -> Decision {
        Decision::act(Act::Wait(why.into()))
    }
    fn record(u: Option<UpgradeInFlight>, act: Act) -> Decision {
        Decision {
            before: Some(u),
            ..Decision::act(act)
        }
    }
    fn with_event(mut self, reason: &'static str, message: String) -> Decision {
        self.event = Some((reason, message));
        self
    }
}

fn member<'a>(v: &'a View, name: &str) -> Option<&'a Member> {
    v.members.iter().find(|m| m.name == name)
}

/// The replication lag of `m` behind the primary, if it is replicating from it.
pub fn lag(v: &View, m: &Member) -> Option<i64> {
    let p = member(v, v.primary)?;
    let (pp, mp) = (p.probe.as_ref()?, m.probe.as_ref()?);
    (mp.role == Role::Standby && mp.following.is_some() && mp.following == p.ip && mp.link_up)
        .then(|| (pp.offset - mp.offset).max(0))
}

/// Ready, replicating from the primary with its link up, and within the lag bound.
pub fn caught_up(v: &View, m: &Member) -> bool {
    m.ready && lag(v, m).is_some_and(|l| l <= v.policy.max_lag_bytes)
}

/// The checks before an upgrade may start; the message says what is wrong.
pub fn precheck(v: &View) -> Result<(), String> {
    let Some(p) = member(v, v.primary) else {
        return Err(format!("the primary {} is missing", v.primary));
    };
    if !p.ready || p.probe.as_ref().is_none_or(|pr| pr.role != Role::Primary) {
        return Err(format!("the primary {} is not Ready as a primary", p.name));
    }
    for m in v.members.iter().filter(|m| m.name != v.primary) {
        if !m.ready {
            return Err(format!("member {} is not Ready", m.name));
        }
        match lag(v, m) {
            None => {
                return Err(format!(
                    "member {} is not replicating from the primary {}",
                    m.name, v.primary
                ));
            }
            Some(l) if l > v.policy.max_lag_bytes => {
                return Err(format!(
                    "member {} lags {l} bytes behind the primary (bound {})",
                    m.name, v.policy.max_lag_bytes
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The step after the ones already done, or None when the upgrade is complete.
fn next_step(v: &View, u: &UpgradeInFlight, reverting: bool) -> Option<String> {
    let target = if reverting {
        &u.source_version
    } else {
        &u.target_version
    };
    let on_target = |m: &Member| m.version.as_deref() == Some(target.as_str());
    if u.kind() == UpgradeType::InPlace {
        return v
            .members
            .iter()
            .any(|m| !on_target(m))
            .then(|| "RestartAll".to_string());
    }
    if let Some(m) = v
        .members
        .iter()
        .find(|m| m.name != v.primary && !on_target(m))
    {
        return Some(format!("UpgradeStandby/{}", m.name));
    }
    let primary = member(v, v.primary)?;
    if !on_target(primary) {
        if reverting {
            return None; // the primary is never reverted: it is still on the source version
        }
        if u.hold {
            return Some("AwaitingCommit".into());
        }
        return Some(
            if v.members.len() == 1
                || v.policy.primary_update_method == PrimaryUpdateMethod::Restart
            {
                format!("RestartPrimary/{}", primary.name)
            } else {
                "Switchover".to_string()
            },
        );
    }
    let original = u.original_primary.as_deref().unwrap_or(v.primary);
    if !reverting
        && v.policy.second_switch
        && original != v.primary
        && member(v, original).is_some()
    {
        return Some("SwitchBack".into());
    }
    None
}

/// Whether the primary still runs the source version, so the upgrade can go back to it (an
/// InPlace upgrade restarts every member, the primary included, so it can always go back).
pub fn revertible(v: &View, u: &UpgradeInFlight) -> bool {
    u.kind() == UpgradeType::InPlace
        || member(v, v.primary).is_some_and(|p| p.version.as_deref() == Some(&u.source_version))
}

fn advance(v: &View, u: &UpgradeInFlight, reverting: bool, done: &str) -> Decision {
    advance_gated(v, u, reverting, done, true)
}

/// Records the next step (or the end). A cancel takes effect here, between steps; with
/// `gated`, a forward step waits for the maintenance window.
fn advance_gated(
    v: &View,
    u: &UpgradeInFlight,
    reverting: bool,
    done: &str,
    gated: bool,
) -> Decision {
    let mut u = u.clone();
    let mut reverting = reverting;
    if u.cancel && !reverting && revertible(v, &u) {
        u.rollback = true;
        reverting = true;
    }
    match next_step(v, &u, reverting) {
        Some(step) => {
            if gated && !reverting && !v.may_start_step {
                return Decision::wait(format!(
                    "the maintenance window is closed; {step} starts when it opens"
                ));
            }
            let next = UpgradeInFlight {
                step: step.clone(),
                step_started: None,
                switchover: None,
                candidate: None,
                fence_offset: None,
                ..u.clone()
            };
            Decision::record(Some(next), Act::Wait(format!("starting {step}")))
                .with_event("StepCompleted", done.to_string())
        }
        None => {
            let (reason, msg) = if reverting {
                (
                    "UpgradeReverted",
                    format!("every member is back on {}", u.source_version),
                )
            } else {
                (
                    "UpgradeCompleted",
                    format!(
                        "every member runs {}; primary {}",
                        u.target_version, v.primary
                    ),
                )
            };
            Decision {
                reverted: reverting,
                ..Decision::record(None, Act::Wait("upgrade finished".into()))
                    .with_event(reason, msg)
            }
        }
    }
}

fn fail(u: &UpgradeInFlight, why: String, act: Act) -> Decision {
    let failed = UpgradeInFlight {
        failure: Some(why.clone()),
        switchover: None,
        candidate: None,
        fence_offset: None,
        ..u.clone()
    };
    Decision::record(Some(failed), act).with_event("UpgradeFailed", why)
}

/// Decides the next thing to do for the upgrade `u` (`reverting`: returning to its source).
pub fn next(v: &View, u: &UpgradeInFlight, reverting: bool) -> Decision {
    let timeout = Duration::from_secs(v.policy.step_timeout_seconds.max(1) as u64);
    let target = if reverting {
        u.source_version.clone()
    } else {
        u.target_version.clone()
    };
    let step = u.step.clone();
    if step.is_empty() {
        // A request's upgrade is claimed without the members' view: check them first, and
        // wait out a passing condition (a standby a few writes behind) up to the step timeout.
        if u.request.is_some()
            && !reverting
            && !u.cancel
            && let Err(e) = precheck(v)
        {
            if v.step_elapsed <= timeout {
                return Decision::wait(format!("pre-check: {e}"));
            }
            return fail(
                u,
                format!(
                    "pre-check failed for {}s: {e}; nothing was changed",
                    timeout.as_secs()
                ),
                Act::Wait("failed".into()),
            );
        }
        return advance(v, u, reverting, "upgrade started");
    }
    if step == "AwaitingCommit" {
        if u.hold && !reverting && !u.cancel {
            return Decision::wait("awaiting commit: the standbys run the new version");
        }
        return advance(v, u, reverting, "commit received");
    }
    if step == "RestartAll" {
        return restart_all(v, u, reverting, timeout);
    }

    if let Some(name) = step
        .strip_prefix("UpgradeStandby/")
        .or_else(|| step.strip_prefix("RestartPrimary/"))
    {
        let Some(m) = member(v, name) else {
            return Decision::wait(format!("member {name} has no pod yet"));
        };
        if m.version.as_deref() != Some(target.as_str()) {
            return Decision::act(Act::SetVersion {
                member: name.into(),
                version: target,
            });
        }
        let is_primary = name == v.primary;
        let running = runs(m, &target);
        if running {
            let done = if is_primary {
                m.ready
                    && m.probe
                        .as_ref()
                        .is_some_and(|p| p.role == Role::Primary && !p.fenced)
            } else {
                caught_up(v, m)
            };
            if done {
                let what = if is_primary {
                    "primary restarted on"
                } else {
                    "standby caught up on"
                };
                return advance(v, u, reverting, format!("{name}: {what} {target}").as_str());
            }
            if !is_primary
                && m.ready
                && m.probe.as_ref().is_some_and(|p| {
                    p.following.is_none() || p.following != member(v, v.primary).and_then(|p| p.ip)
                })
            {
                return Decision::act(Act::Repoint {
                    member: name.into(),
                });
            }
        }
        if v.step_elapsed > timeout {
            let why = match (&m.waiting, running, m.ready, lag(v, m)) {
                (Some(w), _, _, _) => format!("member {name} did not start on {target}: {w}"),
                (None, false, _, _) => format!("member {name} did not come up on {target}"),
                (None, true, false, _) => format!("member {name} did not become Ready on {target}"),
                (None, true, true, Some(l)) => {
                    format!("member {name} still lags {l} bytes behind the primary")
                }
                (None, true, true, None) => {
                    format!("member {name} is not replicating from the primary")
                }
            };
            let why = format!(
                "{why} within {}s; the primary {} is untouched",
                timeout.as_secs(),
                v.primary
            );
            return fail(u, why, Act::Wait("failed".into()));
        }
        return Decision::wait(format!(
            "waiting for {name} to run {target}, Ready and caught up"
        ));
    }

    if step == "SwitchBack"
        && u.switchover.is_none()
        && u.original_primary.as_deref() == Some(v.primary)
    {
        return advance(v, u, reverting, "the original primary leads again");
    }
    if step == "Switchover" || step == "SwitchBack" {
        return switchover(v, u, step == "SwitchBack", timeout);
    }
    Decision::wait(format!("unknown step {step:?}"))
}

/// InPlace: every member onto `target` at once (one image change per pass), then wait until
/// the primary leads again and every standby has resynced from it.
fn restart_all(v: &View, u: &UpgradeInFlight, reverting: bool, timeout: Duration) -> Decision {
    let target = if reverting {
        u.source_version.as_str()
    } else {
        u.target_version.as_str()
    };
    if let Some(m) = v
        .members
        .iter()
        .find(|m| m.version.as_deref() != Some(target))
    {
        return Decision::act(Act::SetVersion {
            member: m.name.clone(),
            version: target.into(),
        });
    }
    let primary_ok = member(v, v.primary).is_some_and(|p| {
        runs(p, target)
            && p.ready
            && p.probe
                .as_ref()
                .is_some_and(|pr| pr.role == Role::Primary && !pr.fenced)
    });
    let pending: Vec<&Member> = v
        .members
        .iter()
        .filter(|m| m.name != v.primary && !(runs(m, target) && caught_up(v, m)))
        .collect();
    if primary_ok && pending.is_empty() {
        return advance(
            v,
            u,
            reverting,
            &format!("every member restarted on {target}"),
        );
    }
    if primary_ok
        && let Some(m) = pending.iter().find(|m| {
            runs(m, target)
                && m.ready
                && m.probe.as_ref().is_some_and(|p| {
                    p.following.is_none() || p.following != member(v, v.primary).and_then(|p| p.ip)
                })
        })
    {
        return Decision::act(Act::Repoint {
            member: m.name.clone(),
        });
    }
    if v.step_elapsed > timeout {
        let who = if primary_ok {
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
            .chain(member(v, v.primary).iter())
            .find_map(|m| m.waiting.clone())
            .map(|w| format!(": {w}"))
            .unwrap_or_default();
        return fail(
            u,
            format!(
                "{who} did not come back on {target} within {}s{why}",
                timeout.as_secs()
            ),
            Act::Wait("failed".into()),
        );
    }
    Decision::wait(format!("waiting for every member to run {target} again"))
}

fn switchover(v: &View, u: &UpgradeInFlight, back: bool, timeout: Duration) -> Decision {
    let sub = u.switchover.clone().unwrap_or_default();
    let (stage, who) = sub.split_once('/').unwrap_or((sub.as_str(), ""));
    let old = v.primary.to_string();
    match stage {
        "" => {
            // Fence only when an upgraded standby is ready to take over.
            let ready = v.members.iter().any(|m| {
                m.name != old
                    && m.version.as_deref() == Some(u.target_version.as_str())
                    && caught_up(v, m)
            });
            if !ready {
                if v.step_elapsed > timeout {
                    return fail(
                        u,
                        format!(
                            "no standby on {} caught up with the primary {old} within {}s; nothing was fenced",
                            u.target_version,
                            timeout.as_secs()
                        ),
                        Act::Wait("failed".into()),
                    );
                }
                return Decision::wait(
                    "waiting for an upgraded standby to be caught up before fencing",
                );
            }
            let rec = UpgradeInFlight {
                switchover: Some(format!("Fencing/{old}")),
                ..u.clone()
            };
            Decision::record(
                Some(rec),
                Act::Fence {
                    member: old.clone(),
                },
            )
            .with_event(
                "SwitchoverStarted",
                format!("fencing writes on the primary {old}"),
            )
        }
        "Fencing" => {
            let Some(p) = member(v, &old) else {
                return Decision::wait("primary missing");
            };
            if !p.probe.as_ref().is_some_and(|pr| pr.fenced) {
                return Decision::act(Act::Fence { member: old });
            }
            let fence_offset = p.probe.as_ref().map_or(0, |pr| pr.offset);
            // Chosen only now, after the fence: the standby furthest along, on the target version.
            let wanted = back.then(|| u.original_primary.clone()).flatten();
            let candidate = v
                .members
                .iter()
                .filter(|m| {
                    m.name != old
                        && m.ready
                        && m.version.as_deref() == Some(u.target_version.as_str())
                })
                .filter(|m| wanted.as_ref().is_none_or(|w| &m.name == w))
                .filter(|m| lag(v, m).is_some())
                .max_by(|a, b| {
                    let off = |m: &Member| m.probe.as_ref().map_or(0, |p| p.offset);
                    off(a).cmp(&off(b)).then_with(|| b.name.cmp(&a.name))
                });
            match candidate {
                Some(c) => {
                    let rec = UpgradeInFlight {
                        switchover: Some(format!("CatchingUp/{}", c.name)),
                        candidate: Some(c.name.clone()),
                        fence_offset: Some(fence_offset),
                        ..u.clone()
                    };
                    Decision::record(
                        Some(rec),
                        Act::Wait(format!("waiting for {} to reach {fence_offset}", c.name)),
                    )
                }
                None if v.step_elapsed <= timeout => Decision::wait(
                    "fenced; waiting for an upgraded standby that follows the primary",
                ),
                None => fail(
                    u,
                    format!(
                        "no standby on {} is replicating from the primary {old}; the primary is unfenced and unchanged",
                        u.target_version
                    ),
                    Act::Unfence { member: old },
                ),
            }
        }
        "CatchingUp" => {
            let Some(c) = member(v, who) else {
                return Decision::wait("candidate missing");
            };
            let at = c.probe.as_ref().map_or(0, |p| p.offset);
            let goal = u.fence_offset.unwrap_or(i64::MAX);
            if lag(v, c).is_some() && at >= goal {
                let rec = UpgradeInFlight {
                    switchover: Some(format!("Promoting/{who}")),
                    ..u.clone()
                };
                return Decision::record(
                    Some(rec),
                    Act::Promote {
                        candidate: who.into(),
                    },
                );
            }
            if v.step_elapsed > timeout {
                return fail(
                    u,
                    format!(
                        "standby {who} did not reach the fenced primary's position {goal} (at {at}) within {}s; the primary {old} is unfenced and unchanged",
                        timeout.as_secs()
                    ),
                    Act::Unfence { member: old },
                );
            }
            Decision::wait(format!("{who} at {at} of {goal}"))
        }
        "Promoting" => {
            let rec = UpgradeInFlight {
                switchover: Some(format!("Unfencing/{old}")),
                ..u.clone()
            };
            Decision {
                before: None,
                act: Act::Promote {
                    candidate: who.into(),
                },
                after: Some(Some(rec)),
                new_primary: Some(who.into()),
                reverted: false,
                event: Some((
                    "SwitchoverCompleted",
                    format!("{who} is the primary; {old} follows it"),
                )),
            }
        }
        "Unfencing" => {
            let done = UpgradeInFlight {
                switchover: None,
                candidate: None,
                fence_offset: None,
                ..u.clone()
            };
            // Finishing the switchover is not a new step: never held by the window.
            let mut d = advance_gated(
                v,
                &done,
                false,
                &format!("switchover to {} finished", v.primary),
                false,
            );
            d.after = d.before.take();
            d.act = Act::Unfence { member: who.into() };
            d
        }
        other => Decision::wait(format!("unknown switchover stage {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "6.2.14";
    const DST: &str = "7.0.15";

    fn ip(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, 1, 0, i)
    }

    /// db-0 primary at offset 100, db-1 and db-2 following it, all on `SRC`.
    fn members() -> Vec<Member> {
        (0..3u8)
            .map(|i| Member {
                name: format!("db-{i}"),
                version: Some(SRC.into()),
                ready: true,
                ip: Some(ip(i + 2)),
                probe: Some(Probe {
                    role: if i == 0 { Role::Primary } else { Role::Standby },
                    version: SRC.into(),
                    offset: 100,
                    following: (i != 0).then(|| ip(2)),
                    link_up: i != 0,
                    fenced: false,
                }),
                waiting: None,
                image_current: true,
            })
            .collect()
    }

    /// The member's pod and server both on `DST`.
    fn upgrade_member(m: &mut Member) {
        m.version = Some(DST.into());
        if let Some(p) = m.probe.as_mut() {
            p.version = DST.into();
        }
    }

    fn upgrade(step: &str) -> UpgradeInFlight {
        let t = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH);
        UpgradeInFlight {
            step: step.into(),
            step_started: None,
            ..UpgradeInFlight::new(SRC, DST, "db-0", t)
        }
    }

    fn view<'a>(m: &'a [Member], primary: &'a str, policy: &'a UpgradePolicy) -> View<'a> {
        View {
            members: m,
            primary,
            policy,
            step_elapsed: Duration::ZERO,
            may_start_step: true,
        }
    }

    fn recorded_step(d: &Decision) -> String {
        d.before
            .clone()
            .flatten()
            .map(|u| u.step)
            .unwrap_or_default()
    }

    #[test]
    fn standbys_go_first_in_ordinal_order_then_the_switchover() {
        let policy = UpgradePolicy::default();
        let mut m = members();
        let d = next(&view(&m, "db-0", &policy), &upgrade(""), false);
        assert_eq!(recorded_step(&d), "UpgradeStandby/db-1");
        let d = next(
            &view(&m, "db-0", &policy),
            &upgrade("UpgradeStandby/db-1"),
            false,
        );
        assert_eq!(
            d.act,
            Act::SetVersion {
                member: "db-1".into(),
                version: DST.into()
            }
        );
        upgrade_member(&mut m[1]);
        let d = next(
            &view(&m, "db-0", &policy),
            &upgrade("UpgradeStandby/db-1"),
            false,
        );
        assert_eq!(recorded_step(&d), "UpgradeStandby/db-2");
        upgrade_member(&mut m[2]);
        let d = next(
            &view(&m, "db-0", &policy),
            &upgrade("UpgradeStandby/db-2"),
            false,
        );
        assert_eq!(recorded_step(&d), "Switchover");
    }

    #[test]
    fn the_old_process_still_answering_does_not_count_as_upgraded() {
        let policy = UpgradePolicy::default();
        let mut m = members();
        // The image change is on the pod, but the 6.2 process has not stopped yet.
        m[1].version = Some(DST.into());
        let d = next(
            &view(&m, "db-0", &policy),
            &upgrade("UpgradeStandby/db-1"),
            false,
        );
        assert!(matches!(d.act, Act::Wait(_)), "{d:?}");
        assert!(d.before.is_none());
        // The node has not reported the new image running either.
        upgrade_member(&mut m[1]);
        m[1].image_current = false;
        let d = next(
            &view(&m, "db-0", &policy),
            &upgrade("UpgradeStandby/db-1"),
            false,
        );
        assert!(d.before.is_none(), "{d:?}");
        m[1].image_current = true;
        let d = next(
            &view(&m, "db-0", &policy),
            &upgrade("UpgradeStandby/db-1"),
            false,
        );
        assert_eq!(recorded_step(&d), "UpgradeStandby/db-2");
    }

    #[test]
    fn a_standby_that_is_not_caught_up_is_waited_for_then_fails_with_the_primary_untouched() {
        let policy = UpgradePolicy::default();
        let mut m = members();
        upgrade_member(&mut m[1]);
        m[1].ready = false;
        m[1].waiting = Some("ErrImagePull: image not mapped".into());
        let v = view(&m, "db-0", &policy);
        assert!(matches!(
            next(&v, &upgrade("UpgradeStandby/db-1"), false).act,
            Act::Wait(_)
        ));
        let late = View {
            step_elapsed: Duration::from_secs(601),
            ..v
        };
        let d = next(&late, &upgrade("UpgradeStandby/db-1"), false);
        let failure = d
            .before
            .flatten()
            .and_then(|u| u.failure)
            .expect("failure recorded");
        assert!(
            failure.contains("db-1 did not start on 7.0.15: ErrImagePull"),
            "{failure}"
        );
        assert!(failure.contains("primary db-0 is untouched"), "{failure}");
        assert_eq!(d.act, Act::Wait("failed".into()));
    }

    #[test]
    fn a_lagging_standby_is_not_caught_up() {
        let policy = UpgradePolicy::default();
        let mut m = members();
        m[1].probe.as_mut().unwrap().offset = 90;
        let v = view(&m, "db-0", &policy);
        assert!(!caught_up(&v, &m[1]));
        assert!(precheck(&v).unwrap_err().contains("db-1 lags 10 bytes"));
        let loose = UpgradePolicy {
            max_lag_bytes: 10,
            ..UpgradePolicy::default()
        };
        assert!(caught_up(&view(&m, "db-0", &loose), &m[1]));
    }

    #[test]
    fn the_candidate_is_chosen_after_the_fence_by_position() {
        let policy = UpgradePolicy::default();
        let mut m = members();
        for x in &mut m[1..] {
            upgrade_member(x);
        }
        let mut u = upgrade("Switchover");
        let d = next(&view(&m, "db-0", &policy), &u, false);
        assert_eq!(
            d.act,
            Act::Fence {
                member: "db-0".into()
            }
        );
        u = d.before.flatten().unwrap();
        // Not fenced yet: fence again, choose nobody.
        assert_eq!(
            next(&view(&m, "db-0", &policy), &u, false).act,
            Act::Fence {
                member: "db-0".into()
            }
        );
        m[0].probe.as_mut().unwrap().fenced = true;
        m[0].probe.as_mut().unwrap().offset = 180;
        m[1].probe.as_mut().unwrap().offset = 150;
        m[2].probe.as_mut().unwrap().offset = 170;
        let d = next(&view(&m, "db-0", &policy), &u, false);
        let rec = d.before.flatten().unwrap();
        assert_eq!(rec.candidate.as_deref(), Some("db-2"));
        assert_eq!(rec.fence_offset, Some(180));
        // Promoted only once it has the fenced primary's position.
        let d = next(&view(&m, "db-0", &policy), &rec, false);
        assert!(matches!(d.act, Act::Wait(_)));
        m[2].probe.as_mut().unwrap().offset = 180;
        let d = next(&view(&m, "db-0", &policy), &rec, false);
        assert_eq!(
            d.act,
            Act::Promote {
                candidate: "db-2".into()
            }
        );
        let promoting = d.before.flatten().unwrap();
        let d = next(&view(&m, "db-0", &policy), &promoting, false);
        assert_eq!(d.new_primary.as_deref(), Some("db-2"));
        let unfencing = d.after.flatten().unwrap();
        assert_eq!(unfencing.switchover.as_deref(), Some("Unfencing/db-0"));
        // After the promotion db-2 leads; unfence db-0, then upgrade it as a standby.
        m[2].probe.as_mut().unwrap().role = Role::Primary;
        let d = next(&view(&m, "db-2", &policy), &unfencing, false);
        assert_eq!(
            d.act,
            Act::Unfence {
                member: "db-0".into()
            }
        );
        assert_eq!(d.after.flatten().unwrap().step, "UpgradeStandby/db-0");
    }

    #[test]
    fn nothing_is_fenced_until_an_upgraded_standby_is_caught_up() {
        let policy = UpgradePolicy::default();
        let mut m = members();
        for x in &mut m[1..] {
            upgrade_member(x);
            x.ready = false; // e.g. a readiness probe flapping under load
        }
        let v = view(&m, "db-0", &policy);
        let d = next(&v, &upgrade("Switchover"), false);
        assert!(matches!(d.act, Act::Wait(_)) && d.before.is_none(), "{d:?}");
        // Fenced already, but no candidate for now: wait, keep the fence, do not fail yet.
        m[0].probe.as_mut().unwrap().fenced = true;
        let mut u = upgrade("Switchover");
        u.switchover = Some("Fencing/db-0".into());
        let d = next(&view(&m, "db-0", &policy), &u, false);
        assert!(matches!(d.act, Act::Wait(_)) && d.before.is_none(), "{d:?}");
        let late = View {
            step_elapsed: Duration::from_secs(601),
            ..view(&m, "db-0", &policy)
        };
        let d = next(&late, &u, false);
        assert_eq!(
            d.act,
            Act::Unfence {
                member: "db-0".into()
            }
        );
        assert!(d.before.flatten().and_then(|u| u.failure).is_some());
    }

    #[test]
    fn a_candidate_that_cannot_catch_up_unfences_and_fails() {
        let policy = UpgradePolicy::default();
        let m = members();
        let mut u = upgrade("Switchover");
        u.switchover = Some("CatchingUp/db-1".into());
        u.candidate = Some("db-1".into());
        u.fence_offset = Some(500);
        let v = View {
            step_elapsed: Duration::from_secs(700),
            ..view(&m, "db-0", &policy)
        };
        let d = next(&v, &u, false);
        assert_eq!(
            d.act,
            Act::Unfence {
                member: "db-0".into()
            }
        );
        assert!(d.new_primary.is_none());
        let failure = d.before.flatten().and_then(|u| u.failure).unwrap();
        assert!(
            failure.contains("did not reach the fenced primary's position 500"),
            "{failure}"
        );
    }

    #[test]
    fn restart_method_and_single_members_restart_the_primary_in_place() {
        let restart = UpgradePolicy {
            primary_update_method: PrimaryUpdateMethod::Restart,
            ..UpgradePolicy::default()
        };
        let mut m = members();
        for x in &mut m[1..] {
            upgrade_member(x);
        }
        let d = next(
            &view(&m, "db-0", &restart),
            &upgrade("UpgradeStandby/db-2"),
            false,
        );
        assert_eq!(recorded_step(&d), "RestartPrimary/db-0");
        let single = &members()[..1];
        let d = next(
            &view(single, "db-0", &UpgradePolicy::default()),
            &upgrade(""),
            false,
        );
        assert_eq!(recorded_step(&d), "RestartPrimary/db-0");
    }

    #[test]
    fn second_switch_returns_to_the_original_primary() {
        let policy = UpgradePolicy {
            second_switch: true,
            ..UpgradePolicy::default()
        };
        let mut m = members();
        for x in &mut m {
            upgrade_member(x);
            let p = x.probe.as_mut().unwrap();
            p.role = if x.name == "db-1" {
                Role::Primary
            } else {
                Role::Standby
            };
            p.following = (x.name != "db-1").then(|| ip(3));
            p.link_up = x.name != "db-1";
        }
        let d = next(
            &view(&m, "db-1", &policy),
            &upgrade("UpgradeStandby/db-0"),
            false,
        );
        assert_eq!(recorded_step(&d), "SwitchBack");
        let d = next(&view(&m, "db-0", &policy), &upgrade("SwitchBack"), false);
        assert!(
            d.before.flatten().is_none(),
            "back on the original primary: done"
        );
    }

    #[test]
    fn reverting_returns_standbys_to_the_source_and_never_touches_the_primary() {
        let policy = UpgradePolicy::default();
        let mut m = members();
        upgrade_member(&mut m[1]);
        let mut u = upgrade("UpgradeStandby/db-1");
        u.failure = Some("boom".into());
        let d = next(
            &view(&m, "db-0", &policy),
            &UpgradeInFlight {
                step: String::new(),
                ..u.clone()
            },
            true,
        );
        assert_eq!(recorded_step(&d), "UpgradeStandby/db-1");
        let d = next(&view(&m, "db-0", &policy), &u, true);
        assert_eq!(
            d.act,
            Act::SetVersion {
                member: "db-1".into(),
                version: SRC.into()
            }
        );
        m[1].version = Some(SRC.into());
        m[1].probe.as_mut().unwrap().version = SRC.into();
        let d = next(&view(&m, "db-0", &policy), &u, true);
        assert_eq!(
            d.before,
            Some(None),
            "all back on the source: the upgrade is cleared"
        );
        assert_eq!(d.event.map(|e| e.0), Some("UpgradeReverted"));
    }

    #[test]
    fn hold_stops_before_the_primary_and_commit_goes_on() {
        let policy = UpgradePolicy::default();
        let mut m = members();
        for x in &mut m[1..] {
            upgrade_member(x);
        }
        let mut u = upgrade("UpgradeStandby/db-2");
        u.hold = true;
        let d = next(&view(&m, "db-0", &policy), &u, false);
        assert_eq!(recorded_step(&d), "AwaitingCommit");
        let mut held = d.before.flatten().unwrap();
        let d = next(&view(&m, "db-0", &policy), &held, false);
        assert!(d.before.is_none() && matches!(d.act, Act::Wait(_)), "{d:?}");
        held.hold = false; // Commit
        let d = next(&view(&m, "db-0", &policy), &held, false);
        assert_eq!(recorded_step(&d), "Switchover");
    }

    #[test]
    fn rollback_from_awaiting_commit_returns_the_standbys_only() {
        let policy = UpgradePolicy::default();
        let mut m = members();
        for x in &mut m[1..] {
            upgrade_member(x);
        }
        let mut u = upgrade("AwaitingCommit");
        u.hold = true;
        u.rollback = true;
        assert!(revertible(&view(&m, "db-0", &policy), &u));
        let d = next(&view(&m, "db-0", &policy), &u, true);
        assert_eq!(recorded_step(&d), "UpgradeStandby/db-1");
        let d = next(
            &view(&m, "db-0", &policy),
            &d.before.flatten().unwrap(),
            true,
        );
        assert_eq!(
            d.act,
            Act::SetVersion {
                member: "db-1".into(),
                version: SRC.into()
            }
        );
    }

    #[test]
    fn cancel_goes_back_between_steps_while_the_primary_runs_the_source() {
        let policy = UpgradePolicy::default();
        let mut m = members();
        upgrade_member(&mut m[1]);
        let mut u = upgrade("UpgradeStandby/db-1");
        u.cancel = true;
        // db-1 is done: at this boundary the cancel turns into a rollback of db-1.
        let d = next(&view(&m, "db-0", &policy), &u, false);
        let rec = d.before.flatten().unwrap();
        assert!(rec.rollback, "{rec:?}");
        assert_eq!(rec.step, "UpgradeStandby/db-1");
        // Once the primary runs the target, a cancel can only finish.
        for x in &mut m {
            upgrade_member(x);
        }
        let mut after = upgrade("UpgradeStandby/db-2");
        after.cancel = true;
        m[2].version = Some(SRC.into());
        let v = view(&m, "db-1", &policy);
        assert!(!revertible(&v, &after));
    }

    #[test]
    fn in_place_restarts_every_member_then_repoints_the_standbys() {
        let policy = UpgradePolicy::default();
        let mut m = members();
        let mut u = upgrade("");
        u.type_ = Some(UpgradeType::InPlace);
        let d = next(&view(&m, "db-0", &policy), &u, false);
        assert_eq!(recorded_step(&d), "RestartAll");
        u.step = "RestartAll".into();
        let mut changed = vec![];
        loop {
            let d = next(&view(&m, "db-0", &policy), &u, false);
            match d.act {
                Act::SetVersion { member, .. } => {
                    let i = m.iter().position(|x| x.name == member).unwrap();
                    m[i].version = Some(DST.into());
                    changed.push(member);
                }
                _ => break,
            }
        }
        assert_eq!(
            changed,
            ["db-0", "db-1", "db-2"],
            "all members, no waiting between"
        );
        for x in &mut m {
            upgrade_member(x);
        }
        // db-2 came back as a lone primary: repoint it.
        let p = m[2].probe.as_mut().unwrap();
        p.role = Role::Primary;
        p.following = None;
        let d = next(&view(&m, "db-0", &policy), &u, false);
        assert_eq!(
            d.act,
            Act::Repoint {
                member: "db-2".into()
            }
        );
        let p = m[2].probe.as_mut().unwrap();
        p.role = Role::Standby;
        p.following = Some(ip(2));
        let d = next(&view(&m, "db-0", &policy), &u, false);
        assert_eq!(d.before, Some(None), "{d:?}");
        assert_eq!(d.event.map(|e| e.0), Some("UpgradeCompleted"));
    }

    #[test]
    fn a_closed_window_holds_forward_steps_but_not_a_switchover_in_progress() {
        let policy = UpgradePolicy::default();
        let mut m = members();
        upgrade_member(&mut m[1]);
        let closed = View {
            may_start_step: false,
            ..view(&m, "db-0", &policy)
        };
        let d = next(&closed, &upgrade("UpgradeStandby/db-1"), false);
        assert!(d.before.is_none() && matches!(d.act, Act::Wait(_)), "{d:?}");
        // A rollback is not held back by the window.
        let mut back = upgrade("UpgradeStandby/db-1");
        back.rollback = true;
        let d = next(&closed, &back, true);
        assert!(matches!(d.act, Act::SetVersion { .. }), "{d:?}");
        // The end of a switchover always finishes.
        let mut u = upgrade("Switchover");
        u.switchover = Some("Unfencing/db-0".into());
        let d = next(&closed, &u, false);
        assert_eq!(
            d.act,
            Act::Unfence {
                member: "db-0".into()
            }
        );
        assert!(d.after.is_some());
    }

    #[test]
    fn a_request_checks_the_members_before_its_first_step() {
        let policy = UpgradePolicy::default();
        let mut m = members();
        m[2].ready = false;
        let mut u = upgrade("");
        u.request = Some("ns/r".into());
        let d = next(&view(&m, "db-0", &policy), &u, false);
        assert!(d.before.is_none() && matches!(d.act, Act::Wait(_)), "{d:?}");
        let late = View {
            step_elapsed: Duration::from_secs(601),
            ..view(&m, "db-0", &policy)
        };
        let d = next(&late, &u, false);
        let failure = d.before.flatten().and_then(|u| u.failure).unwrap();
        assert!(failure.contains("db-2 is not Ready"), "{failure}");
        assert!(failure.contains("nothing was changed"), "{failure}");
    }
}
