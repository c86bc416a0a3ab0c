//! The switchover stages of the guarded protocol (see the planner's module docs): fence, catch
//! up, promote, repoint, unfence, and the undo that makes the old primary lead again.

use super::*;

pub(super) fn stage(u: &UpgradeInFlight, sw: SwitchoverState) -> UpgradeInFlight {
    UpgradeInFlight {
        switchover: Some(sw),
        ..u.clone()
    }
}

/// The same switchover, moved to `to`.
pub(super) fn at_stage(
    u: &UpgradeInFlight,
    sw: &SwitchoverState,
    to: SwitchoverStage,
) -> UpgradeInFlight {
    stage(
        u,
        SwitchoverState {
            stage: to,
            ..sw.clone()
        },
    )
}

/// The switchover of a `Switchover` or `SwitchBack` step.
pub(super) fn switchover(v: &View, u: &UpgradeInFlight) -> Plan {
    let fence_timeout = Duration::from_secs(v.policy.fence_timeout_seconds.max(1) as u64);
    let Some(sw) = u.switchover.clone() else {
        return start_switchover(v, u);
    };
    // The fence deadline: before the candidate is unfenced, nobody took a write, so the
    // switchover can always be undone.
    let late = v.fence_elapsed > fence_timeout && sw.undoing.is_none();
    match sw.stage {
        SwitchoverStage::Fencing | SwitchoverStage::CatchingUp if late => undo(
            v,
            u,
            &sw,
            format!(
                "no upgraded standby reached the fenced primary {}'s position within fenceTimeoutSeconds ({}s)",
                sw.from,
                fence_timeout.as_secs()
            ),
        ),
        SwitchoverStage::Fencing => fencing(v, u, &sw),
        SwitchoverStage::CatchingUp => catching_up(v, u, &sw, v.fence_goal),
        // Past the deadline, a candidate seen leading with every fenced write goes on: the
        // stages left are quick, and an undo would fail the step it has all but done.
        SwitchoverStage::Promoting if late && !promoted_with_all(v, &sw) => undo(
            v,
            u,
            &sw,
            format!(
                "the candidate was not promoted within fenceTimeoutSeconds ({}s)",
                fence_timeout.as_secs()
            ),
        ),
        SwitchoverStage::Promoting => promoting(v, u, &sw),
        SwitchoverStage::Repointing => repointing(v, u, &sw),
        SwitchoverStage::Unfencing => unfencing(v, u, &sw),
    }
}

/// The candidate leads (still fenced) and holds the fenced position.
fn promoted_with_all(v: &View, sw: &SwitchoverState) -> bool {
    let Some(c) = sw.candidate.as_deref().and_then(|n| v.member(n)) else {
        return false;
    };
    sw.undoing.is_none()
        && c.is_primary()
        && c.probe.is_some()
        && v.fence_goal
            .is_some_and(|goal| c.position().is_some_and(|p| p.reached(goal)))
}

/// The standbys that may take the role: on the target version, Ready, streaming from the
/// primary, not quarantined (for a switch back, only the original primary; for a planned
/// switchover to a named member, only that member).
pub(super) fn candidates<'a>(
    v: &'a View,
    u: &UpgradeInFlight,
    from: &'a Member,
) -> Vec<&'a Member> {
    let wanted = if u.step.kind == StepKind::SwitchBack {
        u.original_primary.clone()
    } else {
        u.switchover_to.clone()
    };
    v.members
        .iter()
        .filter(|m| m.name != from.name && m.ready && runs(m, &u.target_version))
        .filter(|m| !v.is_quarantined(&m.name))
        .filter(|m| wanted.as_ref().is_none_or(|w| &m.name == w))
        .filter(|m| v.lag_behind(m, from).is_some())
        .collect()
}

pub(super) fn start_switchover(v: &View, u: &UpgradeInFlight) -> Plan {
    let timeout = Duration::from_secs(v.policy.step_timeout_seconds.max(1) as u64);
    let Some(from) = v.primary_member() else {
        return Plan::wait(u, "the primary has no pod");
    };
    // Fence only when an upgraded standby is ready to take over.
    if !candidates(v, u, from).into_iter().any(|m| v.caught_up(m)) {
        if v.step_elapsed > timeout {
            let who = match &u.switchover_to {
                Some(m) => format!("{m} (switchoverTo) did not catch up"),
                None => format!("no standby on {} caught up", u.target_version),
            };
            let auto = v.policy.primary_update_method == PrimaryUpdateMethod::Auto
                && u.kind() != UpgradeType::Switchover;
            if auto && v.policy.allow_offline {
                // The user accepted a write outage: the primary restarts in place instead.
                return Plan::record(
                    UpgradeInFlight {
                        step: UpgradeStep::on(StepKind::RestartPrimary, &from.name),
                        step_started: Some(now(v)),
                        restarted_in_place: Some(format!(
                            "{who} with the primary {} within {}s; Auto restarts it in place (allowOffline accepts the write outage)",
                            from.name,
                            timeout.as_secs()
                        )),
                        ..u.clone()
                    },
                    Act::None,
                );
            }
            if auto {
                return Plan::wait(
                    u,
                    format!(
                        "{who} within {}s; Auto keeps waiting: a restart in place needs upgradePolicy.allowOffline",
                        timeout.as_secs()
                    ),
                );
            }
            return fail(
                u,
                format!(
                    "{who} with the primary {} within {}s; nothing was fenced",
                    from.name,
                    timeout.as_secs()
                ),
                Act::None,
            );
        }
        return Plan::wait(u, "waiting for an upgraded standby to be caught up");
    };
    Plan::record(
        stage(
            u,
            SwitchoverState {
                stage: SwitchoverStage::Fencing,
                from: from.name.clone(),
                candidate: None,
                fence_position: None,
                fenced_at: Some(now_micro(v)),
                undoing: None,
                writable_at: None,
            },
        ),
        Act::Fence {
            member: from.name.clone(),
        },
    )
}

pub(super) fn fencing(v: &View, u: &UpgradeInFlight, sw: &SwitchoverState) -> Plan {
    let Some(from) = v.member(&sw.from) else {
        return Plan::wait(u, format!("the primary {} has no pod", sw.from));
    };
    let Some(fenced_at) = from.fence_position.clone() else {
        return Plan::keep(
            u,
            Act::Fence {
                member: from.name.clone(),
            },
        );
    };
    // Chosen only now, after the fence: the standby furthest along.
    let best = candidates(v, u, from).into_iter().min_by(|a, b| {
        let lag = |m: &Member| {
            m.position()
                .and_then(|p| p.behind(&fenced_at))
                .map_or(u64::MAX, |l| match l {
                    crate::engine::Lag::Bytes(n) | crate::engine::Lag::Transactions(n) => n,
                })
        };
        lag(a).cmp(&lag(b)).then_with(|| a.name.cmp(&b.name))
    });
    match best {
        Some(c) => {
            let sw = SwitchoverState {
                stage: SwitchoverStage::CatchingUp,
                candidate: Some(c.name.clone()),
                fence_position: Some(fenced_at.to_string()),
                ..sw.clone()
            };
            // Recorded as caught up to, and promoted in the same pass when it already is.
            catching_up(v, &stage(u, sw.clone()), &sw, Some(&fenced_at))
        }
        None => Plan::wait(
            u,
            "fenced; waiting for an upgraded standby that follows the primary",
        ),
    }
}

pub(super) fn catching_up(
    v: &View,
    u: &UpgradeInFlight,
    sw: &SwitchoverState,
    goal: Option<&crate::engine::Position>,
) -> Plan {
    let (Some(goal), Some(c)) = (goal, sw.candidate.as_deref().and_then(|c| v.member(c))) else {
        return Plan::wait(u, "the candidate or the fence position is missing");
    };
    let from = v.member(&sw.from);
    // The fenced primary restarted (it booted fenced: still no write since the fence) and
    // began a new replication history: what it holds now is what must be reached.
    if let Some(now_at) = from.and_then(|f| f.fence_position.as_ref())
        && !now_at.reached(goal)
    {
        return Plan::record(
            stage(
                u,
                SwitchoverState {
                    fence_position: Some(now_at.to_string()),
                    ..sw.clone()
                },
            ),
            Act::None,
        );
    }
    let streaming = from.is_some_and(|f| v.lag_behind(c, f).is_some());
    if streaming && c.position().is_some_and(|p| p.reached(goal)) {
        // Recorded as the primary before it is promoted: from here it is the member Baton
        // confirms and, in the end, unfences.
        return Plan::record(
            at_stage(u, sw, SwitchoverStage::Promoting),
            Act::Promote {
                member: c.name.clone(),
                at_least: Some(goal.clone()),
            },
        )
        .with_primary(&c.name);
    }
    Plan::wait(
        u,
        format!("waiting for {} to reach the fenced position {goal}", c.name),
    )
}

pub(super) fn promoting(v: &View, u: &UpgradeInFlight, sw: &SwitchoverState) -> Plan {
    let Some(name) = sw.candidate.as_deref() else {
        return Plan::wait(u, "no candidate recorded");
    };
    let Some(c) = v.member(name) else {
        return Plan::wait(u, format!("the candidate {name} has no pod"));
    };
    // Going back to `from`, which holds every write by construction (fenced since), even if
    // a restart gave it a new history.
    let returning = sw.undoing.is_some() && name == sw.from && c.is_primary();
    let has_all = returning
        || match v.fence_goal {
            Some(goal) => c.position().is_some_and(|p| p.reached(goal)),
            None => false,
        };
    // Not promoted yet, and the fenced primary restarted (a new history, the same writes):
    // it still holds everything, so catching up starts again towards what it holds now.
    if !c.is_primary()
        && sw.undoing.is_none()
        && let Some(now_at) = v.member(&sw.from).and_then(|f| f.fence_position.as_ref())
        && v.fence_goal.is_some_and(|g| !now_at.reached(g))
    {
        let again = SwitchoverState {
            stage: SwitchoverStage::CatchingUp,
            fence_position: Some(now_at.to_string()),
            ..sw.clone()
        };
        return Plan::record(stage(u, again), Act::None).with_primary(&sw.from);
    }
    if c.is_primary() && has_all {
        // Promoted with everything: on to the label in the same pass.
        let next = at_stage(u, sw, SwitchoverStage::Repointing);
        let sw = next.switchover.clone().unwrap_or_else(|| sw.clone());
        return repointing(v, &next, &sw);
    }
    if c.is_primary() && c.probe.is_some() && sw.undoing.is_none() {
        // It leads without the fenced writes (it restarted from an older copy): it never took
        // a write (fenced), so going back to `from` loses nothing.
        return undo(
            v,
            u,
            sw,
            format!(
                "the candidate {name} became a primary without everything the fenced primary {} wrote",
                sw.from
            ),
        );
    }
    if has_all {
        return Plan::keep(
            u,
            Act::Promote {
                member: name.into(),
                at_least: v.fence_goal.cloned(),
            },
        );
    }
    Plan::wait(
        u,
        format!("waiting for {name} to hold the fenced position before it is promoted"),
    )
}

/// The promoted candidate came back as a standby (it restarted and followed the topology
/// before it named the candidate): promote it again.
pub(super) fn back_to_promoting(
    v: &View,
    u: &UpgradeInFlight,
    sw: &SwitchoverState,
) -> Option<Plan> {
    let c = v.member(sw.candidate.as_deref()?)?;
    if c.probe.is_none() || c.is_primary() {
        return None;
    }
    let back = SwitchoverState {
        stage: SwitchoverStage::Promoting,
        ..sw.clone()
    };
    Some(promoting(v, &stage(u, back.clone()), &back))
}

pub(super) fn repointing(v: &View, u: &UpgradeInFlight, sw: &SwitchoverState) -> Plan {
    let Some(name) = sw.candidate.as_deref() else {
        return Plan::wait(u, "no candidate recorded");
    };
    if let Some(p) = back_to_promoting(v, u, sw) {
        return p;
    }
    if !v.member(name).is_some_and(Member::is_primary) {
        return Plan::wait(u, format!("waiting for {name} to lead"));
    }
    if let Err(why) = v.only_writer_could_be(name) {
        return Plan::wait(u, format!("not moving the primary label to {name}: {why}"));
    }
    if v.published != Some(name) {
        return Plan::keep(
            u,
            Act::Publish {
                primary: name.into(),
            },
        );
    }
    // Under `durability: Replicated`, the standbys follow it before it is unfenced.
    if let Some(first) = v.member(name).and_then(|c| v.repoint_before_unfence(c)) {
        return Plan::keep(u, first);
    }
    // The others are repointed once writes are back (they are fenced or standbys meanwhile):
    // the write outage lasts fence, promote, publish, unfence.
    Plan::record(
        at_stage(u, sw, SwitchoverStage::Unfencing),
        Act::Unfence {
            member: name.into(),
        },
    )
}

pub(super) fn unfencing(v: &View, u: &UpgradeInFlight, sw: &SwitchoverState) -> Plan {
    let Some(name) = sw.candidate.as_deref() else {
        return Plan::wait(u, "no candidate recorded");
    };
    if let Some(p) = back_to_promoting(v, u, sw) {
        return p;
    }
    let Some(c) = v.member(name).filter(|c| c.is_primary()) else {
        return Plan::wait(u, format!("waiting for {name} to lead"));
    };
    if c.fenced() {
        // Here too: the stage may have been reached without them (a standby restarted since).
        if let Some(first) = v.repoint_before_unfence(c) {
            return Plan::keep(u, first);
        }
        if let Err(why) = v.only_writer_could_be(name) {
            return Plan::wait(u, format!("not unfencing {name}: {why}"));
        }
        return Plan::keep(
            u,
            Act::Unfence {
                member: name.into(),
            },
        );
    }
    if let Some(why) = &sw.undoing {
        // `from` leads again, unfenced: the step failed, with nothing lost.
        return fail(
            u,
            format!("{why}; the switchover was undone: {name} is the primary again, unchanged"),
            Act::None,
        );
    }
    let behind = v.to_repoint(c);
    if !behind.is_empty() {
        // Writable from this pass on: the window ends here, not after the repoints. Recorded
        // with the act's own guarded write, so it costs no extra one; every member that
        // follows someone else is repointed by the one act.
        let sw = SwitchoverState {
            writable_at: sw.writable_at.clone().or_else(|| Some(now_micro(v))),
            ..sw.clone()
        };
        return Plan::record(
            stage(u, sw),
            Act::Repoint {
                members: behind,
                primary: name.into(),
            },
        );
    }
    // Finishing a switchover is not a new step: never held back by the window.
    advance(
        v,
        &UpgradeInFlight {
            switchover: None,
            ..u.clone()
        },
        false,
        false,
    )
}

/// Makes `from` the primary again through the same stages (it never stopped holding every
/// write: nobody took one since the fence), then fails the step with `why`.
pub(super) fn undo(v: &View, u: &UpgradeInFlight, sw: &SwitchoverState, why: String) -> Plan {
    let back = SwitchoverState {
        stage: SwitchoverStage::Promoting,
        candidate: Some(sw.from.clone()),
        undoing: Some(why),
        ..sw.clone()
    };
    let from = v.member(&sw.from);
    let act = match from {
        Some(f) if !f.is_primary() => Act::Promote {
            member: sw.from.clone(),
            at_least: v.fence_goal.cloned(),
        },
        _ => Act::None,
    };
    Plan::record(stage(u, back), act).with_primary(&sw.from)
}
