use serde_json::json;

use super::*;
use crate::crd::{DatabaseInstance, StepKind, SwitchoverStage, SwitchoverState};
use crate::engine::{Endpoint, Position, Probe};

const SRC: &str = "6.2.14";
const DST: &str = "7.0.15";

fn catalog() -> Vec<DatastoreVersion> {
    let entry = |v: &str, edge: bool| -> DatastoreVersion {
        let mut spec = json!({"datastore": "redis", "version": v, "image": format!("redis:{v}"), "active": true});
        if edge {
            spec["upgradeFrom"] =
                json!([{"datastore": "redis", "minVersion": "6.0", "maxVersion": "6"}]);
        }
        serde_json::from_value(json!({
            "apiVersion": "baton.dev/v1alpha1", "kind": "DatastoreVersion",
            "metadata": {"name": format!("redis-{v}")}, "spec": spec,
        }))
        .unwrap()
    };
    vec![entry(SRC, false), entry(DST, true), entry("5.0.14", false)]
}

fn host(i: usize) -> String {
    format!("127.2.0.{}", i + 2)
}

/// db-0 leading unfenced on `SRC`, db-1 and db-2 streaming from it.
fn members() -> Vec<Member> {
    (0..3)
        .map(|i| Member {
            name: format!("db-{i}"),
            exists: true,
            version: Some(SRC.into()),
            ready: true,
            endpoint: Some(Endpoint::new(host(i), 6379)),
            probe: Some(Probe {
                role: if i == 0 { Role::Primary } else { Role::Standby },
                version: SRC.into(),
                position: Position::parse_redis("aaa:100").unwrap(),
                received: None,
                following: (i != 0).then(|| host(0)),
                streaming: i != 0,
                fenced: i != 0,
                stale_certificate: false,
            }),
            image_current: true,
            claim_uid: Some(format!("claim-{i}")),
            ..Default::default()
        })
        .collect()
}

/// An Active instance on `SRC` whose spec asks for `spec_version`.
fn obs(spec_version: &str, status: serde_json::Value) -> Observation {
    let inst: DatabaseInstance = serde_json::from_value(json!({
        "apiVersion": "baton.dev/v1alpha1", "kind": "DatabaseInstance",
        "metadata": {"name": "db", "namespace": "ns", "generation": 2},
        "spec": {"datastore": {"type": "redis", "version": spec_version}, "replicas": 3},
        "status": status,
    }))
    .unwrap();
    Observation {
        catalog: catalog(),
        strategy_to_spec: Some(Strategy::Rolling),
        members: members(),
        published: Some("db-0".into()),
        ..Observation::of(inst, jiff::Timestamp::UNIX_EPOCH)
    }
}

fn active() -> serde_json::Value {
    json!({"phase": "Active", "version": SRC, "primary": "db-0"})
}

fn condition<'a>(
    d: &'a Decision,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    d.status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition: {:#?}", d.status.conditions))
}

#[test]
fn a_converged_instance_on_its_spec_version_is_active_and_idle() {
    let d = decide(&obs(SRC, active()));
    assert_eq!(d.act, Act::None);
    assert_eq!(d.wake, Wake::Idle);
    assert_eq!(d.status.phase, Some(InstancePhase::Active));
    assert_eq!(condition(&d, "VersionApplied").reason, "Applied");
    assert_eq!(condition(&d, "Ready").status, "True");
    assert_eq!(d.status.members.len(), 3);
    assert_eq!(d.status.members[1].lag_bytes, Some(0));
    assert!(
        !d.status.members[1].fenced,
        "a standby's fence is not the instance's story"
    );
}

#[test]
fn a_newer_spec_version_starts_an_upgrade_recorded_before_anything_is_touched() {
    let d = decide(&obs(DST, active()));
    assert_eq!(d.act, Act::None, "the intent is written first");
    let u = d.status.upgrade.expect("upgrade recorded");
    assert_eq!(
        (u.source_version.as_str(), u.target_version.as_str()),
        (SRC, DST)
    );
    assert_eq!(u.step.kind, StepKind::PreCheck);
    assert_eq!(d.status.phase, Some(InstancePhase::Upgrading));
}

#[test]
fn each_refusal_names_its_reason_and_touches_nothing() {
    for (spec, reason, says) in [
        (
            "7.4.1",
            "VersionNotInCatalog",
            "not in the DatastoreVersion catalog",
        ),
        (
            "5.0.14",
            "DowngradeRefused",
            "downgrades are never performed",
        ),
    ] {
        let d = decide(&obs(spec, active()));
        assert_eq!(d.act, Act::None, "{spec}");
        assert!(d.status.upgrade.is_none());
        let c = condition(&d, "VersionApplied");
        assert_eq!(c.reason, reason);
        assert!(c.message.contains(says), "{}", c.message);
    }
    let mut o = obs(DST, active());
    o.catalog[1].spec.upgrade_from.clear();
    let d = decide(&o);
    assert_eq!(condition(&d, "VersionApplied").reason, "PathNotAllowed");
    let mut o = obs(DST, active());
    o.strategy_to_spec = Some(Strategy::Offline);
    let d = decide(&o);
    let c = condition(&d, "VersionApplied");
    assert_eq!(c.reason, "PathNeedsOffline");
    assert!(
        c.message.contains("offline upgrade") && c.message.contains("allowOffline"),
        "{}",
        c.message
    );
    assert!(d.status.upgrade.is_none());
    // Accepted by the instance's policy: the upgrade starts.
    o.inst.spec.upgrade_policy.allow_offline = true;
    let d = decide(&o);
    assert!(d.status.upgrade.is_some(), "{:?}", d.status);
}

#[test]
fn a_lagging_standby_holds_the_start_and_says_why() {
    let mut o = obs(DST, active());
    o.members[2].probe.as_mut().unwrap().position = Position::parse_redis("aaa:60").unwrap();
    let d = decide(&o);
    assert!(d.status.upgrade.is_none());
    assert_eq!(d.act, Act::None);
    // Not caught up: the instance is not Ready, so the upgrade is not even considered.
    assert_eq!(condition(&d, "Ready").status, "False");
    assert_eq!(d.wake, Wake::Poll);
}

#[test]
fn a_request_upgrade_waits_out_its_precheck_then_fails_with_nothing_changed() {
    let mut status = active();
    status["upgrade"] = json!({
        "sourceVersion": SRC, "targetVersion": DST, "request": "ns/r", "job": "j1",
        "step": {"kind": "PreCheck"}, "stepStarted": "1970-01-01T00:00:00Z", "originalPrimary": "db-0",
    });
    let mut o = obs(SRC, status.clone());
    o.members[2].ready = false;
    let d = decide(&o);
    assert!(
        d.status
            .message
            .clone()
            .unwrap()
            .contains("db-2 is not Ready"),
        "{:?}",
        d.status.message
    );
    assert!(d.status.upgrade.as_ref().unwrap().failure.is_none());
    o.now = jiff::Timestamp::from_second(601).unwrap();
    let d = decide(&o);
    let failure = d.status.upgrade.clone().unwrap().failure.expect("failed");
    assert!(failure.contains("nothing was changed"), "{failure}");
    assert_eq!(d.status.phase, Some(InstancePhase::Error));
    assert_eq!(condition(&d, "Degraded").reason, "UpgradeFailed");
}

#[test]
fn a_failed_request_upgrade_rolls_back_on_its_own_while_the_primary_runs_the_source() {
    let mut status = active();
    status["upgrade"] = json!({
        "sourceVersion": SRC, "targetVersion": DST, "request": "ns/r", "job": "j1",
        "step": {"kind": "UpgradeStandby", "member": "db-1"}, "originalPrimary": "db-0",
        "failure": "member db-1 did not start",
    });
    let d = decide(&obs(SRC, status));
    let u = d.status.upgrade.unwrap();
    assert!(u.rollback && u.failure.is_none());
    assert_eq!(u.aborted.as_deref(), Some("member db-1 did not start"));
    assert_eq!(u.step.kind, StepKind::PreCheck);
}

#[test]
fn a_failed_spec_upgrade_stays_in_error_until_the_spec_goes_back() {
    let mut status = active();
    status["upgrade"] = json!({
        "sourceVersion": SRC, "targetVersion": DST,
        "step": {"kind": "UpgradeStandby", "member": "db-1"}, "originalPrimary": "db-0",
        "failure": "member db-1 did not start",
    });
    let d = decide(&obs(DST, status.clone()));
    assert_eq!(d.status.phase, Some(InstancePhase::Error));
    assert_eq!(d.act, Act::None);
    assert!(
        condition(&d, "Progressing")
            .message
            .contains("set spec.datastore.version back to 6.2.14")
    );
    let d = decide(&obs(SRC, status));
    let u = d.status.upgrade.unwrap();
    assert!(u.failure.is_none(), "reverting");
    assert_eq!(d.status.phase, Some(InstancePhase::Upgrading));
}

#[test]
fn converging_publishes_then_unfences_the_primary_then_repoints_strays() {
    // A new instance: every member booted fenced, alone.
    let mut o = obs(SRC, json!({"phase": "Building", "primary": "db-0"}));
    for m in &mut o.members {
        let p = m.probe.as_mut().unwrap();
        p.role = Role::Primary;
        p.fenced = true;
        p.following = None;
        p.streaming = false;
    }
    o.published = None;
    assert_eq!(
        decide(&o).act,
        Act::Publish {
            primary: "db-0".into()
        }
    );
    o.published = Some("db-0".into());
    assert_eq!(
        decide(&o).act,
        Act::Unfence {
            member: "db-0".into()
        }
    );
    o.members[0].probe.as_mut().unwrap().fenced = false;
    // Both strays in one act: one status write, not one per member.
    assert_eq!(
        decide(&o).act,
        Act::Repoint {
            members: vec!["db-1".into(), "db-2".into()],
            primary: "db-0".into()
        }
    );
    let d = decide(&o);
    assert_eq!(d.status.phase, Some(InstancePhase::Building));
}

#[test]
fn a_replicated_primary_gets_its_replicas_before_it_is_unfenced() {
    // db-1 promoted in place of db-0 and still fenced; db-2 still follows db-0.
    let mut o = obs(SRC, json!({"phase": "Active", "primary": "db-1"}));
    o.inst.spec.durability = crate::crd::Durability::Replicated;
    o.published = Some("db-1".into());
    o.members[0].probe = None;
    let p = o.members[1].probe.as_mut().unwrap();
    p.role = Role::Primary;
    p.following = None;
    p.streaming = false;
    let repoint = Act::Repoint {
        members: vec!["db-2".into()],
        primary: "db-1".into(),
    };
    let d = decide(&o);
    assert_eq!(
        d.act, repoint,
        "a commit there needs a replica to acknowledge it"
    );
    assert_eq!(d.wake, Wake::Fenced, "writes wait on the replica attaching");
    o.members[2].probe.as_mut().unwrap().following = Some(host(1));
    assert_eq!(
        decide(&o).act,
        Act::Unfence {
            member: "db-1".into()
        }
    );
    // Asynchronous durability opens the primary first: nothing waits on a replica there.
    o.members[2].probe.as_mut().unwrap().following = Some(host(0));
    o.inst.spec.durability = crate::crd::Durability::Local;
    assert_eq!(
        decide(&o).act,
        Act::Unfence {
            member: "db-1".into()
        }
    );
}

#[test]
fn a_second_writer_is_fenced_and_quarantined_and_never_repointed() {
    let mut o = obs(SRC, active());
    let p = o.members[2].probe.as_mut().unwrap();
    p.role = Role::Primary;
    p.fenced = false;
    p.following = None;
    let d = decide(&o);
    assert_eq!(
        d.act,
        Act::Fence {
            member: "db-2".into()
        }
    );
    let q = &d.status.quarantine[0];
    assert_eq!(
        (q.member.as_str(), q.claim_uid.as_deref()),
        ("db-2", Some("claim-2"))
    );
    assert_eq!(condition(&d, "Degraded").reason, "SecondPrimary");
    // Fenced now, but still quarantined: never repointed, and no upgrade starts.
    o.inst.status = Some(d.status.clone());
    o.inst.spec.datastore.version = DST.into();
    o.members[2].probe.as_mut().unwrap().fenced = true;
    o.published = None;
    let d = decide(&o);
    assert_eq!(
        d.act,
        Act::Publish {
            primary: "db-0".into()
        },
        "the topology lists it"
    );
    o.published = Some("db-0".into());
    let d = decide(&o);
    assert_eq!(d.act, Act::None, "not repointed: {d:?}");
    assert!(d.status.upgrade.is_none());
    assert!(
        condition(&d, "VersionApplied")
            .message
            .contains("db-2 is quarantined")
    );
    // The claim was replaced (a person discarded its data): released.
    o.inst.status = Some(d.status.clone());
    o.members[2].claim_uid = Some("claim-2b".into());
    let d = decide(&o);
    assert!(d.status.quarantine.is_empty());
    assert_eq!(
        d.act,
        Act::Repoint {
            members: vec!["db-2".into()],
            primary: "db-0".into()
        }
    );
}

#[test]
fn nothing_happens_to_a_paused_instance_or_one_without_an_engine() {
    let mut o = obs(DST, active());
    o.inst.spec.paused = true;
    o.members[1].probe.as_mut().unwrap().role = Role::Primary;
    let d = decide(&o);
    assert_eq!(
        (d.act, d.status.phase),
        (Act::None, Some(InstancePhase::Paused))
    );
    let mut o = obs(SRC, active());
    o.unsupported = Some("datastore postgresql has no engine".into());
    let d = decide(&o);
    assert_eq!(d.status.phase, Some(InstancePhase::Error));
    assert_eq!(
        condition(&d, "VersionApplied").reason,
        "DatastoreUnsupported"
    );
}

#[test]
fn missing_members_are_created_on_the_version_the_instance_runs() {
    let mut o = obs(SRC, active());
    o.members[1].exists = false;
    let d = decide(&o);
    let Act::ApplyChildren { pods } = d.act else {
        panic!("{:?}", d.act);
    };
    assert_eq!(pods.len(), 1);
    assert_eq!(
        (
            pods[0].name.as_str(),
            pods[0].version.as_str(),
            pods[0].image.as_str(),
            pods[0].primary
        ),
        ("db-1", SRC, "redis:6.2.14", false)
    );
    // Its claim is being deleted (or not created yet): the claims come first, no pod.
    let mut o = obs(SRC, active());
    o.members[1].exists = false;
    o.members[1].claim_uid = None;
    assert_eq!(decide(&o).act, Act::ApplyChildren { pods: vec![] });
    let mut o = obs(SRC, json!({}));
    o.catalog.clear();
    let d = decide(&o);
    assert_eq!(
        condition(&d, "VersionApplied").reason,
        "VersionNotInCatalog"
    );
    assert_eq!(d.status.phase, Some(InstancePhase::Error));
}

#[test]
fn a_step_in_flight_gets_its_image_from_the_catalog_and_the_planner_moves_it() {
    let mut status = active();
    status["upgrade"] = json!({
        "sourceVersion": SRC, "targetVersion": DST,
        "step": {"kind": "UpgradeStandby", "member": "db-1"}, "originalPrimary": "db-0",
    });
    let d = decide(&obs(DST, status));
    assert_eq!(
        d.act,
        Act::SetVersion {
            member: "db-1".into(),
            version: DST.into(),
            image: "redis:7.0.15".into()
        }
    );
    assert_eq!(d.wake, Wake::Now);
}

#[test]
fn the_fence_deadline_counts_from_the_recorded_fence() {
    let mut status = active();
    status["upgrade"] = json!({
        "sourceVersion": SRC, "targetVersion": DST,
        "step": {"kind": "Switchover"}, "originalPrimary": "db-0",
        "switchover": {"stage": "CatchingUp", "from": "db-0", "candidate": "db-1",
                       "fencePosition": "aaa:500", "fencedAt": "1970-01-01T00:00:00Z"},
    });
    let mut o = obs(DST, status);
    for m in &mut o.members[1..] {
        m.version = Some(DST.into());
        m.probe.as_mut().unwrap().version = DST.into();
    }
    o.members[0].probe.as_mut().unwrap().fenced = true;
    o.fence_goal = Some(Position::parse_redis("aaa:500").unwrap());
    let d = decide(&o);
    assert_eq!(
        d.status
            .upgrade
            .as_ref()
            .and_then(|u| u.switchover.as_ref())
            .map(|s| s.stage),
        Some(SwitchoverStage::CatchingUp)
    );
    o.now = jiff::Timestamp::from_second(61).unwrap();
    let d = decide(&o);
    let sw: &SwitchoverState = d
        .status
        .upgrade
        .as_ref()
        .unwrap()
        .switchover
        .as_ref()
        .unwrap();
    assert!(sw.undoing.is_some(), "{sw:?}");
    assert_eq!(d.status.primary.as_deref(), Some("db-0"));
}

#[test]
fn a_wait_under_the_fence_looks_again_at_the_databases_pace() {
    // Fenced, the candidate short of the fenced position: nothing to record, and every
    // interval until the next look is write outage.
    let fenced = json!({"stage": "CatchingUp", "from": "db-0", "candidate": "db-1",
                        "fencePosition": "aaa:5000", "fencedAt": "1970-01-01T00:00:00Z"});
    let mut o = obs(DST, upgrading(json!({"kind": "Switchover"}), Some(fenced)));
    for m in &mut o.members[1..] {
        m.version = Some(DST.into());
        m.probe.as_mut().unwrap().version = DST.into();
    }
    o.members[0].probe.as_mut().unwrap().fenced = true;
    o.fence_goal = Some(Position::parse_redis("aaa:5000").unwrap());
    o.inst.spec.datastore.version = DST.into();
    let d = decide(&o);
    assert_eq!(d.act, Act::None);
    assert_eq!(d.wake, Wake::Fenced, "{:?}", d.status.message);
    // Held for seconds, the fence waits on something slower than a poll: the usual poll.
    o.now = jiff::Timestamp::from_second(3).unwrap();
    let d = decide(&o);
    assert_eq!(d.act, Act::None);
    assert_eq!(d.wake, Wake::Poll, "{:?}", d.status.message);

    // The same kind of wait with writes flowing (a standby restarting): the usual poll.
    let mut o = obs(
        DST,
        upgrading(json!({"kind": "UpgradeStandby", "member": "db-1"}), None),
    );
    o.inst.spec.datastore.version = DST.into();
    o.members[1].version = Some(DST.into());
    o.members[1].ready = false;
    let d = decide(&o);
    assert_eq!(d.act, Act::None);
    assert_eq!(d.wake, Wake::Poll, "{:?}", d.status.message);
}

#[test]
fn a_stopped_upgrade_still_repoints_a_member_left_following_nobody() {
    let mut status = active();
    status["upgrade"] = json!({
        "sourceVersion": SRC, "targetVersion": DST,
        "step": {"kind": "Switchover"}, "originalPrimary": "db-0",
        "failure": "the switchover was undone",
    });
    let mut o = obs(DST, status);
    let p = o.members[1].probe.as_mut().unwrap();
    p.role = Role::Primary; // promoted from a partial copy, fenced, never took a write
    p.following = None;
    o.members[1].ready = false;
    let d = decide(&o);
    assert_eq!(d.status.phase, Some(InstancePhase::Error));
    assert_eq!(
        d.act,
        Act::Repoint {
            members: vec!["db-1".into()],
            primary: "db-0".into()
        }
    );
}

#[test]
fn only_positions_and_lag_count_as_volatile() {
    let o = obs(SRC, active());
    let a = decide(&o).status;
    let mut b = a.clone();
    b.members[1].lag_bytes = Some(42);
    b.members[1].position = Some("aaa:58".into());
    assert!(differs_only_in_volatile(&a, &b));
    b.members[1].ready = false;
    assert!(
        !differs_only_in_volatile(&a, &b),
        "readiness is not volatile"
    );
    assert!(
        !differs_only_in_volatile(&a, &a),
        "no change is no volatile change"
    );
    // While an upgrade is in flight, a restarting member's details wait for the refresh too;
    // the record of the step never does.
    let mut u = a.clone();
    u.upgrade = Some(UpgradeInFlight::new(
        SRC,
        DST,
        "db-0",
        Time(jiff::Timestamp::UNIX_EPOCH),
    ));
    let mut restarting = u.clone();
    restarting.members[1].ready = false;
    restarting.members[1].error = Some("cannot reach db-1".into());
    restarting.members[1].version = Some(DST.into());
    assert!(differs_only_in_volatile(&u, &restarting));
    let mut next = restarting.clone();
    next.upgrade.as_mut().unwrap().step = UpgradeStep::on(StepKind::UpgradeStandby, "db-2");
    assert!(
        !differs_only_in_volatile(&u, &next),
        "a new step is written at once"
    );
    let mut said = restarting.clone();
    said.message = Some("waiting for db-1".into());
    assert!(
        !differs_only_in_volatile(&u, &said),
        "the message is written at once"
    );
    let mut gone = restarting.clone();
    gone.members.pop();
    assert!(
        !differs_only_in_volatile(&u, &gone),
        "a member gone is written at once"
    );
}

#[test]
fn a_named_secret_without_a_key_starts_nothing_and_says_which_key() {
    let mut o = obs(SRC, json!({}));
    o.credentials_problem = Some("the Secret mine has no key \"admin-password\"".into());
    let d = decide(&o);
    assert_eq!(d.act, Act::None, "nothing is started");
    assert_eq!(d.status.phase, Some(InstancePhase::Error));
    let c = condition(&d, "CredentialsReady");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "CredentialsInvalid")
    );
    assert!(c.message.contains("admin-password"), "{}", c.message);
}

fn changed_accounts() -> crate::engine::Accounts {
    crate::engine::Accounts(
        [
            ("username", "app"),
            ("password", "new"),
            ("admin-password", "new2"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    )
}

#[test]
fn a_changed_secret_is_set_on_every_member_of_a_settled_instance_before_any_upgrade() {
    let mut o = obs(DST, active());
    o.credentials_changed = Some(changed_accounts());
    let d = decide(&o);
    assert_eq!(
        d.act,
        Act::SetPasswords {
            members: vec!["db-0".into(), "db-1".into(), "db-2".into()]
        }
    );
    assert!(d.status.upgrade.is_none(), "the upgrade starts after");
    let c = condition(&d, "CredentialsReady");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Changing"));
}

#[test]
fn a_changed_secret_waits_for_the_upgrade_in_flight_and_for_every_member() {
    let mut o = obs(SRC, active());
    o.credentials_changed = Some(changed_accounts());
    o.members[2].probe = None;
    o.members[2].ready = false;
    assert_eq!(decide(&o).act, Act::None, "a member is not Ready");
    let mut o = obs(DST, active());
    o.credentials_changed = Some(changed_accounts());
    let started = decide(&obs(DST, active())).status;
    o.inst.status = Some(started);
    assert!(
        !matches!(decide(&o).act, Act::SetPasswords { .. }),
        "no passwords change under an upgrade"
    );
}

#[test]
fn an_unusable_change_keeps_the_members_as_they_run_and_says_why() {
    let mut o = obs(SRC, active());
    o.credentials_change_refused = Some("the Secret renames the application account".into());
    let d = decide(&o);
    assert_eq!(d.act, Act::None);
    assert_eq!(d.status.phase, Some(InstancePhase::Active), "nothing stops");
    let c = condition(&d, "CredentialsReady");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "ChangeRefused")
    );
}

#[test]
fn a_member_serving_an_old_certificate_is_reloaded_and_the_condition_says_so() {
    let mut o = obs(SRC, active());
    o.ca = Some(b"ca".to_vec());
    o.members[1].probe.as_mut().unwrap().stale_certificate = true;
    let d = decide(&o);
    assert_eq!(
        d.act,
        Act::ReloadTls {
            members: vec!["db-1".into()]
        }
    );
    let c = condition(&d, "TLSReady");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "Reloading")
    );
    assert!(c.message.contains("db-1"), "{}", c.message);
}

#[test]
fn a_build_without_tls_is_a_condition_not_a_plain_text_member() {
    let mut o = obs(SRC, json!({}));
    o.ca = Some(b"ca".to_vec());
    o.members[0].waiting = Some(
        "CrashLoopBackOff: back-off 2s (baton: this redis-server build has no TLS; remove spec.tls)"
            .into(),
    );
    let d = decide(&o);
    let c = condition(&d, "TLSReady");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "TLSUnavailable")
    );
    assert!(c.message.contains("db-0"), "{}", c.message);
}

/// `o`'s instance made a shard of Cluster `events`.
fn shard_of_cluster(mut o: Observation) -> Observation {
    o.inst.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "baton.dev/v1alpha1".into(),
            kind: "Cluster".into(),
            name: "events".into(),
            uid: "u".into(),
            controller: Some(true),
            ..Default::default()
        },
    ]);
    o
}

#[test]
fn a_cluster_shard_never_repoints_promotes_or_upgrades_a_member_itself() {
    // Before formation every node of a Redis Cluster is a master of its own.
    let mut o = shard_of_cluster(obs(DST, active()));
    for m in &mut o.members {
        let p = m.probe.as_mut().unwrap();
        (p.role, p.following, p.streaming, p.fenced) = (Role::Primary, None, false, true);
    }
    let d = decide(&o);
    assert_eq!(d.act, Act::None, "{:#?}", d.status);
    assert!(d.status.upgrade.is_none(), "the Cluster drives upgrades");
    assert_eq!(d.status.phase, Some(InstancePhase::Active));
    assert_eq!(d.status.primary.as_deref(), Some("db-0"));
    // After a CLUSTER FAILOVER the one master is reported as the shard's primary.
    let mut o = shard_of_cluster(obs(SRC, active()));
    for (i, m) in o.members.iter_mut().enumerate() {
        m.probe.as_mut().unwrap().role = if i == 2 { Role::Primary } else { Role::Standby };
    }
    let d = decide(&o);
    assert_eq!(d.act, Act::None);
    assert_eq!(d.status.primary.as_deref(), Some("db-2"));
    // Its members still start when missing.
    let mut o = shard_of_cluster(obs(SRC, active()));
    o.members[1].exists = false;
    assert!(matches!(decide(&o).act, Act::ApplyChildren { .. }));
}

#[test]
fn a_cluster_shard_sets_a_changed_password_on_its_members_unless_its_cluster_upgrades() {
    let mut o = shard_of_cluster(obs(SRC, active()));
    o.credentials_changed = Some(changed_accounts());
    let d = decide(&o);
    assert_eq!(
        d.act,
        Act::SetPasswords {
            members: vec!["db-0".into(), "db-1".into(), "db-2".into()]
        }
    );
    // The Cluster restarts members during its upgrade; they boot with the applied copy.
    o.cluster_upgrading = true;
    let d = decide(&o);
    assert_eq!(d.act, Act::None);
    let c = condition(&d, "CredentialsReady");
    assert_eq!(c.reason, "Changing");
    assert!(
        c.message.contains("Cluster events's upgrade"),
        "{}",
        c.message
    );
    // Only once every member is up, as every act of a shard.
    o.cluster_upgrading = false;
    o.members[2].ready = false;
    assert_eq!(decide(&o).act, Act::None);
}

#[test]
fn a_cluster_shard_reloads_a_renewed_certificate_online() {
    let mut o = shard_of_cluster(obs(SRC, active()));
    o.members[1].probe.as_mut().unwrap().stale_certificate = true;
    let d = decide(&o);
    assert_eq!(
        d.act,
        Act::ReloadTls {
            members: vec!["db-1".into()]
        }
    );
    assert_eq!(condition(&d, "TLSReady").reason, "Reloading");
}

#[test]
fn a_settled_instance_refreshes_positions_rarely_unless_a_standby_crosses_the_bound() {
    let o = obs(SRC, active());
    let policy = crate::crd::UpgradePolicy::default();
    let a = decide(&o).status;
    assert!(a.upgrade.is_none());
    let mut moved = a.clone();
    moved.members[0].position = Some("aaa:99".into());
    assert_eq!(
        volatile_refresh(&a, &moved, &policy),
        Duration::from_secs(300),
        "an idle primary's position alone waits for the slow refresh"
    );
    let mut late = moved.clone();
    late.members[1].lag_bytes = Some(42);
    assert_eq!(
        volatile_refresh(&a, &late, &policy),
        Duration::from_secs(10),
        "a standby falling behind the bound is written soon"
    );
    assert_eq!(
        volatile_refresh(&late, &moved, &policy),
        Duration::from_secs(10),
        "and so is one catching up"
    );
    let lenient = crate::crd::UpgradePolicy {
        max_lag_bytes: 100,
        ..Default::default()
    };
    assert_eq!(
        volatile_refresh(&a, &late, &lenient),
        Duration::from_secs(300),
        "within a looser bound it is not news"
    );
}

#[test]
fn the_pass_after_an_upgrade_ends_has_nothing_left_to_write() {
    let mut status = json!({"phase": "Upgrading", "version": SRC, "primary": "db-1"});
    status["upgrade"] = json!({
        "sourceVersion": SRC, "targetVersion": DST,
        "step": {"kind": "UpgradeStandby", "member": "db-0"}, "originalPrimary": "db-0",
    });
    // Every member on the target, db-1 leading unfenced, the others streaming from it.
    let on_target = |o: &mut Observation| {
        for (i, m) in o.members.iter_mut().enumerate() {
            m.version = Some(DST.into());
            let p = m.probe.as_mut().unwrap();
            p.version = DST.into();
            p.role = if i == 1 { Role::Primary } else { Role::Standby };
            p.following = (i != 1).then(|| host(1));
            p.streaming = i != 1;
            p.fenced = i != 1;
        }
        o.published = Some("db-1".into());
    };
    let mut o = obs(DST, status);
    on_target(&mut o);
    let d = decide(&o);
    assert!(d.status.upgrade.is_none(), "{:?}", d.status);
    assert_eq!(condition(&d, "Ready").message, "3 members on 7.0.15");
    assert_eq!(condition(&d, "VersionApplied").message, "running 7.0.15");
    let mut next = obs(DST, serde_json::to_value(&d.status).unwrap());
    on_target(&mut next);
    let again = decide(&next);
    assert_eq!(
        crate::status::changed_paths(&d.status, &again.status, 10),
        Vec::<String>::new()
    );
    assert_eq!(again.act, Act::None);
}

#[test]
fn a_primary_that_does_not_lead_is_reported_with_what_its_node_says() {
    let primary = |o: &Observation| {
        let d = decide(o);
        assert_eq!(d.act, Act::None, "nothing is promoted: {d:?}");
        assert_ne!(d.status.primary.as_deref(), Some("db-1"));
        let c = condition(&d, "PrimaryAvailable").clone();
        assert_eq!(
            d.status.message.as_deref(),
            (c.status == "False").then_some(c.message.as_str()),
            "the instance's message is the primary's state while it is down"
        );
        (c.status, c.reason, c.message)
    };
    let mut o = obs(SRC, active());
    let (s, reason, _) = primary(&o);
    assert_eq!((s.as_str(), reason.as_str()), ("True", "Leading"));

    // The server is gone and the node says why: down.
    o.members[0].probe = None;
    o.members[0].ready = false;
    o.members[0].probe_error = Some("connection refused".into());
    o.members[0].waiting = Some("CrashLoopBackOff: exited with 1".into());
    let (s, reason, msg) = primary(&o);
    assert_eq!((s.as_str(), reason.as_str()), ("False", "PrimaryDown"));
    assert!(
        msg.contains("CrashLoopBackOff") && msg.contains("db-0"),
        "{msg}"
    );

    // Not Ready and silent, with no reason from the node: down too, with the probe's error.
    o.members[0].waiting = None;
    let (_, reason, msg) = primary(&o);
    assert_eq!(reason, "PrimaryDown");
    assert!(
        msg.contains("connection refused") && msg.contains("not Ready"),
        "{msg}"
    );

    // Its node reports it Ready, yet Baton gets no answer: maybe cut off, not said down.
    o.members[0].ready = true;
    let (_, reason, msg) = primary(&o);
    assert_eq!(reason, "PrimaryUnreachable");
    assert!(msg.contains("cut off"), "{msg}");

    // It answers, but as a standby.
    o.members[0] = members()[0].clone();
    o.members[0].probe.as_mut().unwrap().role = Role::Standby;
    let (_, reason, _) = primary(&o);
    assert_eq!(reason, "PrimaryNotLeading");

    // No pod at all: Baton creates it (that is the pass's act), and says the primary is missing.
    let mut o = obs(SRC, active());
    o.members[0] = Member {
        name: "db-0".into(),
        ..Default::default()
    };
    let d = decide(&o);
    assert!(matches!(d.act, Act::ApplyChildren { .. }), "{:?}", d.act);
    assert_eq!(condition(&d, "PrimaryAvailable").reason, "PrimaryMissing");
    // A new instance has no pods yet by design: nothing to say (nor a Warning to publish).
    let mut o = obs(SRC, json!({}));
    for m in &mut o.members {
        *m = Member {
            name: m.name.clone(),
            ..Default::default()
        };
    }
    let d = decide(&o);
    assert!(matches!(d.act, Act::ApplyChildren { .. }), "{:?}", d.act);
    assert!(
        d.status
            .conditions
            .iter()
            .all(|c| c.type_ != "PrimaryAvailable"),
        "{:?}",
        d.status.conditions
    );
}

/// db-0 down for `down_for` seconds (its node reports it crash-looping), failover on.
fn primary_down(down_for: i64, status: serde_json::Value) -> Observation {
    let mut status = status;
    status["conditions"] = json!([{
        "type": "PrimaryAvailable", "status": "False", "reason": "PrimaryDown",
        "message": "", "lastTransitionTime": "1970-01-01T00:00:00Z",
    }]);
    status["members"] = json!([{"pod": "db-0", "ready": true, "position": "aaa:100"}]);
    let mut o = obs(SRC, status);
    o.inst.spec.failover.enabled = true;
    o.now = jiff::Timestamp::from_second(down_for).unwrap();
    for (i, m) in o.members.iter_mut().enumerate() {
        m.pod_uid = Some(format!("uid-{i}"));
    }
    let p = &mut o.members[0];
    (p.probe, p.ready) = (None, false);
    p.probe_error = Some("connection refused".into());
    p.waiting = Some("CrashLoopBackOff: exited with 1".into());
    o
}

fn at(m: &mut Member, pos: &str) {
    m.probe.as_mut().unwrap().position = Position::parse_redis(pos).unwrap();
}

#[test]
fn a_primary_down_past_the_grace_is_deposed_then_the_standby_holding_most_is_promoted() {
    // Within the grace: nothing but the countdown.
    let d = decide(&primary_down(10, active()));
    assert_eq!(d.act, Act::None);
    assert!(d.status.failover.is_none());
    let msg = d.status.message.clone().unwrap_or_default();
    assert!(
        msg.contains("failing over at 1970-01-01T00:00:30Z"),
        "{msg}"
    );

    // Past it: recorded, and the down pod (that very pod) deleted first; nothing promoted yet.
    let d = decide(&primary_down(31, active()));
    let depose = Act::Depose {
        member: "db-0".into(),
        uid: "uid-0".into(),
    };
    assert_eq!(d.act, depose);
    let f = d.status.failover.clone().expect("recorded before the act");
    assert_eq!((f.from.as_str(), f.to.as_deref()), ("db-0", None));
    assert_eq!(f.from_pod_uid.as_deref(), Some("uid-0"));
    assert_eq!(f.last_seen_position.as_deref(), Some("aaa:100"));
    assert_eq!(d.status.primary.as_deref(), Some("db-0"));
    assert_eq!(condition(&d, "PrimaryAvailable").reason, "FailingOver");
    // Held: its new pod follows nobody until what it holds is measured.
    assert_eq!(d.status.quarantine.len(), 1);
    assert!(d.status.quarantine[0].held && d.status.quarantine[0].member == "db-0");

    // The operator died after recording: the next pass deletes the same pod again.
    let recorded = serde_json::to_value(&d.status).unwrap();
    let o = primary_down(32, recorded.clone());
    assert_eq!(decide(&o).act, depose);

    // The pod is gone: created again, not labelled primary (nothing to write to yet).
    let mut o = primary_down(33, recorded.clone());
    o.members[0] = Member {
        name: "db-0".into(),
        claim_uid: Some("claim-0".into()),
        ..Default::default()
    };
    match decide(&o).act {
        Act::ApplyChildren { pods } => {
            assert!(
                pods.iter().any(|p| p.name == "db-0" && !p.primary),
                "{pods:?}"
            )
        }
        a => panic!("{a:?}"),
    }

    // The pod is gone and one was created in its place (booting): the standby holding the
    // most is chosen now, recorded as the primary, and promoted.
    let mut o = primary_down(33, recorded.clone());
    o.members[0].pod_uid = Some("uid-0b".into());
    at(&mut o.members[1], "aaa:90");
    at(&mut o.members[2], "aaa:100");
    let d = decide(&o);
    let promote = Act::Promote {
        member: "db-2".into(),
        at_least: None,
    };
    assert_eq!(d.act, promote);
    assert_eq!(d.status.primary.as_deref(), Some("db-2"));
    let f = d.status.failover.clone().unwrap();
    assert_eq!(f.to.as_deref(), Some("db-2"));
    assert_eq!(f.to_position.as_deref(), Some("aaa:100"));

    // Died again before the promotion took: promoted again (idempotent).
    let recorded = serde_json::to_value(&d.status).unwrap();
    let mut o = primary_down(34, recorded.clone());
    o.members[0].pod_uid = Some("uid-0b".into());
    assert_eq!(decide(&o).act, promote);

    // It leads (fenced): done, and what it lacked of what status last saw is reported.
    let p = o.members[2].probe.as_mut().unwrap();
    (p.role, p.fenced, p.following, p.streaming) = (Role::Primary, true, None, false);
    p.position = Position::parse_redis("bbb:120").unwrap();
    let d = decide(&o);
    assert!(d.status.failover.is_none());
    let last = d.status.last_failover.clone().expect("reported");
    assert_eq!((last.from.as_str(), last.to.as_str()), ("db-0", "db-2"));
    assert_eq!(last.last_seen_position.as_deref(), Some("aaa:100"));
    // What it had got from db-0 when chosen: what the old primary is compared with later.
    assert_eq!(last.position.as_deref(), Some("aaa:100"));
    assert_eq!(last.unreplicated, None);
    // The next pass converges on it: published first.
    let o2 = Observation {
        inst: {
            let mut i = o.inst.clone();
            i.status = Some(d.status.clone());
            i
        },
        ..o.clone()
    };
    assert_eq!(
        decide(&o2).act,
        Act::Publish {
            primary: "db-2".into()
        }
    );
}

#[test]
fn no_failover_when_off_cut_off_or_without_a_standby_and_applied_before_promoted() {
    // Off: the condition says nothing is promoted.
    let mut o = primary_down(300, active());
    o.inst.spec.failover.enabled = false;
    let d = decide(&o);
    assert_eq!(d.act, Act::None);
    assert!(d.status.failover.is_none());
    assert!(
        condition(&d, "PrimaryAvailable")
            .message
            .contains("spec.failover is off")
    );

    // Its node reports it Ready though Baton gets no answer: maybe cut off, never failed over.
    let mut o = primary_down(300, active());
    o.members[0].ready = true;
    o.members[0].waiting = None;
    let d = decide(&o);
    assert_eq!(
        condition(&d, "PrimaryAvailable").reason,
        "PrimaryUnreachable"
    );
    assert_eq!(d.act, Act::None);
    assert!(d.status.failover.is_none());

    // No standby answers: it waits and says so.
    let mut o = primary_down(300, active());
    for m in &mut o.members[1..] {
        m.probe = None;
    }
    waits_saying(&o, "no standby answers");

    // A standby that received more than it applied applies it before it is promoted.
    let d = decide(&primary_down(31, active()));
    let mut o = primary_down(33, serde_json::to_value(&d.status).unwrap());
    o.members[0].pod_uid = Some("uid-0b".into());
    for m in &mut o.members[1..] {
        let p = m.probe.as_mut().unwrap();
        p.received = Some(Position::parse_redis("aaa:150").unwrap());
    }
    waits_saying(&o, "applies what it received");
}

#[test]
fn the_failover_clock_starts_when_the_node_agrees_the_primary_is_down() {
    // Not answering Baton for 300 s while its node said Ready, then its node says not Ready:
    // down now, so the failover waits its full `afterSeconds` (30) from here.
    let mut o = primary_down(300, active());
    if let Some(c) = o
        .inst
        .status
        .as_mut()
        .and_then(|s| s.conditions.first_mut())
    {
        c.reason = "PrimaryUnreachable".into();
    }
    let d = decide(&o);
    assert_eq!(d.act, Act::None, "failed over on Baton's silence alone");
    let c = condition(&d, "PrimaryAvailable");
    assert_eq!(
        (c.reason.as_str(), c.last_transition_time.0),
        ("PrimaryDown", o.now)
    );
    // 31 s later it is due.
    let mut later = primary_down(331, serde_json::to_value(&d.status).unwrap());
    later.inst.status.as_mut().unwrap().conditions = d.status.conditions.clone();
    assert!(matches!(decide(&later).act, Act::Depose { .. }));
}

/// What the pass measured the last failover's old primary to hold beyond the new one.
fn unreplicated(d: &Decision) -> Option<String> {
    d.status.last_failover.as_ref()?.unreplicated.clone()
}

/// The pass does nothing and its message says `why`.
fn waits_saying(o: &Observation, why: &str) {
    let d = decide(o);
    assert_eq!(d.act, Act::None);
    let msg = d.status.message.unwrap_or_default();
    assert!(msg.contains(why), "{msg}");
}

#[test]
fn the_old_primary_rejoins_only_when_it_holds_nothing_the_new_one_lacks() {
    // db-2 leads after a failover from db-0, which got everything up to aaa:100 from it.
    let status = json!({
        "phase": "Active", "version": SRC, "primary": "db-2",
        "lastFailover": {"from": "db-0", "to": "db-2", "downSince": "1970-01-01T00:00:00Z",
            "promotedAt": "1970-01-01T00:00:30.000000Z", "position": "aaa:100"},
        "quarantine": [{"member": "db-0", "reason": "deposed", "held": true}],
    });
    let back = |pos: &str| {
        let mut o = obs(SRC, status.clone());
        o.published = Some("db-2".into());
        let p = o.members[2].probe.as_mut().unwrap();
        (p.role, p.fenced, p.following, p.streaming) = (Role::Primary, false, None, false);
        p.position = Position::parse_redis("bbb:500").unwrap();
        for i in [0, 1] {
            let p = o.members[i].probe.as_mut().unwrap();
            (p.role, p.following, p.streaming) = (Role::Standby, Some(host(2)), true);
        }
        // db-0, back from its new pod, booted fenced on its own data: a fenced primary.
        let p = o.members[0].probe.as_mut().unwrap();
        (p.role, p.fenced, p.following, p.streaming) = (Role::Primary, true, None, false);
        p.position = Position::parse_redis(pos).unwrap();
        o.members[1].probe.as_mut().unwrap().position = Position::parse_redis("bbb:500").unwrap();
        decide(&o)
    };
    // Held and not yet back: nothing is said of it, nothing repoints it.
    let mut o = obs(SRC, status.clone());
    o.published = Some("db-2".into());
    o.members[0].probe = None;
    let d = decide(&o);
    assert!(d.status.quarantine[0].held);
    assert!(
        d.status
            .conditions
            .iter()
            .all(|c| c.type_ != "Degraded" || c.status == "False"),
        "{:?}",
        d.status.conditions
    );

    // Nothing beyond what db-2 got: measured as 0, released, and repointed.
    let d = back("aaa:100");
    assert_eq!(unreplicated(&d).as_deref(), Some("0 bytes"));
    assert_eq!(
        d.act,
        Act::Repoint {
            members: vec!["db-0".into()],
            primary: "db-2".into()
        }
    );
    assert!(d.status.quarantine.is_empty());

    // 30 bytes db-2 never got: kept on db-0, fenced and quarantined, never repointed.
    let d = back("aaa:130");
    assert_eq!(unreplicated(&d).as_deref(), Some("30 bytes"));
    assert_eq!(
        d.act,
        Act::Fence {
            member: "db-0".into()
        }
    );
    assert_eq!(d.status.quarantine.len(), 1);
    assert!(!d.status.quarantine[0].held);
    assert!(
        d.status.quarantine[0]
            .reason
            .contains("holds 30 bytes that db-2 never got")
    );
    assert_eq!(condition(&d, "Degraded").reason, "SecondPrimary");

    // A history that cannot be compared: unknown, and kept too.
    let d = back("ccc:5");
    assert_eq!(unreplicated(&d).as_deref(), Some("unknown"));
    assert_eq!(d.status.quarantine.len(), 1);

    // Discarded by a person before it came back (its claim replaced): rebuilt from db-2, it
    // holds what db-2 wrote since, which is no reason to quarantine it; nothing is measured.
    let mut status = status.clone();
    status["quarantine"][0]["claimUid"] = json!("claim-0");
    let mut o = obs(SRC, status);
    o.published = Some("db-2".into());
    o.members[0].claim_uid = Some("claim-0b".into());
    for (i, pos) in [(0, "bbb:400"), (1, "bbb:500"), (2, "bbb:500")] {
        let p = o.members[i].probe.as_mut().unwrap();
        p.position = Position::parse_redis(pos).unwrap();
        if i == 2 {
            (p.role, p.fenced, p.following, p.streaming) = (Role::Primary, false, None, false);
        } else {
            (p.role, p.fenced, p.following, p.streaming) =
                (Role::Standby, true, Some(host(2)), true);
        }
    }
    let d = decide(&o);
    assert!(d.status.quarantine.is_empty(), "{:?}", d.status.quarantine);
    assert_eq!(unreplicated(&d), None);
    assert!(!matches!(d.act, Act::Fence { .. }), "{:?}", d.act);
}

/// An upgrade to `DST` in flight at `step` (and `switchover`, when given).
fn upgrading(step: serde_json::Value, switchover: Option<serde_json::Value>) -> serde_json::Value {
    let mut s = active();
    s["phase"] = json!("Upgrading");
    s["upgrade"] = json!({
        "sourceVersion": SRC, "targetVersion": DST, "step": step, "originalPrimary": "db-0",
        "stepStarted": "1970-01-01T00:00:00Z",
    });
    if let Some(sw) = switchover {
        s["upgrade"]["switchover"] = sw;
    }
    s
}

#[test]
fn a_primary_dying_under_a_standby_step_pauses_the_upgrade_and_is_failed_over() {
    let standby_step = || upgrading(json!({"kind": "UpgradeStandby", "member": "db-1"}), None);
    let with_spec = |mut o: Observation| {
        o.inst.spec.datastore.version = DST.into();
        o
    };
    // Down within the grace: the upgrade pauses (nothing restarts) and says when it fails over.
    let d = decide(&with_spec(primary_down(10, standby_step())));
    assert_eq!(d.act, Act::None);
    let msg = d.status.message.clone().unwrap_or_default();
    assert!(msg.starts_with("upgrade paused:"), "{msg}");
    assert!(
        msg.contains("failing over at 1970-01-01T00:00:30Z"),
        "{msg}"
    );

    // Past it: deposed as outside an upgrade, the upgrade's record kept as it was.
    let d = decide(&with_spec(primary_down(31, standby_step())));
    assert_eq!(
        d.act,
        Act::Depose {
            member: "db-0".into(),
            uid: "uid-0".into()
        }
    );
    assert!(d.status.failover.is_some());
    let u = d.status.upgrade.clone().expect("the upgrade stays");
    assert_eq!(u.step.member.as_deref(), Some("db-1"));

    // A step that owns the primary keeps it: its switchover fences it, or it restarts itself.
    let fencing = upgrading(
        json!({"kind": "Switchover"}),
        Some(json!({"from": "db-0", "to": "db-1", "stage": "Fencing"})),
    );
    let restarting = upgrading(json!({"kind": "RestartPrimary", "member": "db-0"}), None);
    for s in [fencing, restarting] {
        let d = decide(&with_spec(primary_down(300, s)));
        assert!(d.status.failover.is_none(), "{:?}", d.act);
        assert!(!matches!(d.act, Act::Depose { .. }));
    }

    // Failed over to db-2, db-0 held and not back yet: the upgrade waits, converging meanwhile.
    let mut after = standby_step();
    after["primary"] = json!("db-2");
    after["lastFailover"] = json!({"from": "db-0", "to": "db-2",
        "downSince": "1970-01-01T00:00:00Z", "promotedAt": "1970-01-01T00:00:40.000000Z",
        "position": "aaa:100"});
    after["quarantine"] = json!([{"member": "db-0", "reason": "deposed", "held": true}]);
    let led_by_db2 = |now: i64| {
        let mut o = with_spec(obs(SRC, after.clone()));
        o.now = jiff::Timestamp::from_second(now).unwrap();
        let p = o.members[2].probe.as_mut().unwrap();
        (p.role, p.fenced, p.following, p.streaming) = (Role::Primary, false, None, false);
        o.members[1].probe.as_mut().unwrap().following = Some(host(2));
        o
    };
    let mut o = led_by_db2(50);
    o.members[0].probe = None;
    let d = decide(&o);
    assert_eq!(
        d.act,
        Act::Publish {
            primary: "db-2".into()
        }
    );
    assert!(
        d.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("resumes once db-0")),
        "{:?}",
        d.status.message
    );

    // Back holding nothing more: released, the step's clock restarted (not 500 s late), then
    // the step goes on against db-2.
    let mut o = led_by_db2(500);
    o.published = Some("db-2".into());
    let p = o.members[0].probe.as_mut().unwrap();
    (p.role, p.fenced, p.following, p.streaming) = (Role::Primary, true, None, false);
    let d = decide(&o);
    assert!(d.status.quarantine.is_empty());
    assert_eq!(unreplicated(&d).as_deref(), Some("0 bytes"));
    let u = d.status.upgrade.clone().unwrap();
    assert_eq!(u.step_started, Some(Time(o.now)));
    assert!(u.failure.is_none());
    assert_eq!(
        d.act,
        Act::Repoint {
            members: vec!["db-0".into()],
            primary: "db-2".into()
        }
    );
    let next = Observation {
        inst: {
            let mut i = o.inst.clone();
            i.status = Some(d.status.clone());
            i
        },
        ..o
    };
    let d = decide(&next);
    assert!(d.status.upgrade.as_ref().unwrap().failure.is_none());
    assert_eq!(
        d.act,
        Act::SetVersion {
            member: "db-1".into(),
            version: DST.into(),
            image: "redis:7.0.15".into()
        }
    );
}
