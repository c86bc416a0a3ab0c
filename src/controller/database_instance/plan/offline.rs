//! An offline hop's steps: its pre-check pod, then the primary converted first.

use super::*;

/// An offline hop: the primary first (converted while stopped; it boots read-only), held in
/// AwaitingCommit if asked, then writes let in, the kept old data finalized, and the standbys
/// cloned again one at a time. Going back, only the primary ever moved: it boots on the kept
/// old data again.
pub(super) fn offline_step(
    v: &View,
    u: &UpgradeInFlight,
    off: &OfflineUpgrade,
    reverting: bool,
) -> Option<UpgradeStep> {
    let target = goal(u, reverting);
    let primary = v.primary_member()?;
    if reverting {
        return (!on(primary, target))
            .then(|| UpgradeStep::on(StepKind::RestartPrimary, v.primary));
    }
    if !on(primary, target) {
        return Some(UpgradeStep::on(StepKind::RestartPrimary, v.primary));
    }
    if off.writable_at.is_none() {
        if u.hold {
            return Some(UpgradeStep::of(StepKind::AwaitingCommit));
        }
        // The same step lets writes in once the converted primary is the only candidate.
        return Some(UpgradeStep::on(StepKind::RestartPrimary, v.primary));
    }
    if !off.finalized {
        return Some(UpgradeStep::of(StepKind::Finalize));
    }
    v.members
        .iter()
        .find(|m| m.name != v.primary && !on(m, target) && !v.is_quarantined(&m.name))
        .map(|m| UpgradeStep::on(StepKind::UpgradeStandby, &m.name))
}

/// The offline hop's own pre-check (`pg_upgrade --check` against the live primary, in a pod on
/// its volume). Its failure ends the upgrade before anything was stopped.
pub(super) fn offline_check(v: &View, u: &UpgradeInFlight, timeout: Duration) -> Plan {
    let key = check_key(u);
    match v.offline_check.map(|c| (c.key == key, &c.outcome)) {
        Some((true, CheckOutcome::Passed)) => {
            let mut u = u.clone();
            if let Some(o) = u.offline.as_mut() {
                o.checked = true;
            }
            advance(v, &u, false, true)
        }
        Some((true, CheckOutcome::Failed(why))) => fail(
            u,
            format!("the offline upgrade's pre-check failed: {why}; nothing was stopped"),
            Act::None,
        ),
        _ if v.step_elapsed > timeout => fail(
            u,
            format!(
                "the offline upgrade's pre-check did not finish within {}s; nothing was stopped",
                timeout.as_secs()
            ),
            Act::None,
        ),
        Some((true, _)) | Some((false, CheckOutcome::Deleting)) => Plan::wait(
            u,
            format!(
                "pre-check: the {} → {} conversion is checked against the live primary",
                u.source_version, u.target_version
            ),
        ),
        Some((false, _)) | None => Plan::keep(
            u,
            Act::CheckOffline {
                member: v.primary.into(),
                key,
                from_image: String::new(),
                to_image: String::new(),
            },
        ),
    }
}
