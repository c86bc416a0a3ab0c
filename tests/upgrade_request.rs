//! UpgradeRequest end to end: the real control plane, the local node and real Redis 6.2.14 and
//! 7.0.15. The requests are the files of examples/, applied with kubectl; each test runs its own
//! operator limited to its own namespace.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use baton::crd::{DatastoreVersion, InstancePhase, RequestPhase, UpgradeRequest, UpgradeResult};
use baton_testkit::env::*;
use baton_testkit::scenarios;
use baton_testkit::*;

/// Creates instances labelled tier=cache (the batch example's selector) and waits until Active.
async fn caches(env: &Env, op: &Operator, names: &[&str], replicas: i32) {
    for n in names {
        env.create(n, replicas, json!({})).await;
        env.label(n, "tier", "cache").await;
    }
    for n in names {
        env.wait_for(n, InstancePhase::Active, SOURCE, op).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_instance_request_succeeds_and_a_second_request_for_it_fails() {
    let env = Env::new("ur-single").await;
    let op = env.operator("ur-single", "");
    env.apply_example("redis-ha.yaml");
    env.wait_for("sessions", InstancePhase::Active, SOURCE, &op)
        .await;
    let (stop, writes) = env.writer("sessions");
    env.apply_example("upgrade-request.yaml");

    // While it runs, a second request for the same instance fails that target.
    let owned = eventually(LONG, || async {
        let s = env.instances.get("sessions").await.ok()?.status?;
        s.upgrade?.request
    })
    .await
    .expect("the request claims the instance");
    assert_eq!(owned, format!("{}/sessions-to-7", env.ns));
    let second: UpgradeRequest = serde_json::from_value(json!({
        "apiVersion": "baton.dev/v1alpha1", "kind": "UpgradeRequest",
        "metadata": {"name": "second"},
        "spec": {"targets": {"instances": ["sessions"]}, "targetVersion": TARGET},
    }))
    .expect("request");
    requests(&env)
        .create(&PostParams::default(), &second)
        .await
        .expect("create second");
    let refused = wait_request(&env, "second", RequestPhase::Failed, &op).await;
    let s = refused.status.clone().expect("status");
    assert_eq!((s.succeeded, s.failed), (0, 1));
    assert_eq!(s.failed_targets, ["sessions"]);
    assert!(
        s.error_messages[0].contains("another UpgradeRequest")
            && s.error_messages[0].contains("sessions-to-7"),
        "{:?}",
        s.error_messages
    );

    let done = wait_request(&env, "sessions-to-7", RequestPhase::Succeeded, &op).await;
    let inst = env
        .wait_for("sessions", InstancePhase::Active, TARGET, &op)
        .await;
    stop.cancel();
    let report = writes.await.expect("writer");
    let s = done.status.clone().expect("status");
    assert_eq!((s.succeeded, s.failed), (1, 0));
    assert_eq!(s.progress.as_deref(), Some("1/1"));
    let j = job(&done, "sessions");
    assert_eq!(j.phase, RequestPhase::Succeeded);
    assert_eq!(
        (j.source_version.as_deref(), j.target_version.as_deref()),
        (Some(SOURCE), Some(TARGET))
    );
    assert!(j.start_time.is_some() && j.finish_time.is_some(), "{j:?}");
    env.assert_all_run("sessions", TARGET).await;
    assert_nothing_lost(&env, "sessions", &[&report]).await;

    // GitOps: the spec the user owns is never rewritten; the drift is explained.
    assert_eq!(inst.spec.datastore.version, SOURCE);
    let st = inst.status.expect("status");
    assert_eq!(
        st.last_upgrade.as_ref().map(|l| l.result),
        Some(UpgradeResult::Succeeded)
    );
    // The job says what the switchover cost, as the instance measured it.
    let window = st.last_switchover.as_ref().map(|l| l.window_ms);
    assert!(window.is_some_and(|w| w > 0), "{:?}", st.last_switchover);
    assert_eq!(j.switchover_ms, window, "{j:?}");
    let applied = eventually(Duration::from_secs(30), || async {
        env.instances
            .get("sessions")
            .await
            .ok()?
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "VersionApplied" && c.reason == "DowngradeRefused")
    })
    .await
    .expect("VersionApplied explains the spec drift");
    assert!(
        applied.message.contains("sessions-to-7")
            && applied
                .message
                .contains("set spec.datastore.version to 7.0.15"),
        "{}",
        applied.message
    );

    // Finished: the finalizer is gone, and kubectl shows the outcome at a glance.
    let released = eventually(Duration::from_secs(30), || async {
        let r = requests(&env).get("sessions-to-7").await.ok()?;
        r.metadata
            .finalizers
            .unwrap_or_default()
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(
        released.is_some(),
        "the finalizer stays after the request finished"
    );
    let (ok, out, err) = run_tool("kubectl", &["get", "ur", "-n", &env.ns], None);
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("sessions-to-7"))
        .expect("row");
    assert!(row.contains("Succeeded") && row.contains("1/1"), "{out}");
    println!("{out}");
    delete_namespace(&env.client, &env.ns).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_with_one_instance_not_active_partially_succeeds() {
    let env = Env::new("ur-batch").await;
    let op = env.operator("ur-batch", "");
    caches(&env, &op, &["a", "b", "c"], 1).await;
    env.patch_spec("c", json!({"paused": true})).await;
    let paused = eventually(Duration::from_secs(60), || async {
        (env.instances.get("c").await.ok()?.status?.phase == Some(InstancePhase::Paused))
            .then_some(())
    })
    .await;
    assert!(paused.is_some(), "c never reported Paused");
    env.apply_example("upgrade-batch.yaml");
    let r = wait_request(
        &env,
        "caches-to-default",
        RequestPhase::PartiallySucceeded,
        &op,
    )
    .await;
    let s = r.status.clone().expect("status");
    assert_eq!((s.succeeded, s.failed), (2, 1));
    assert_eq!(s.failed_targets, ["c"]);
    assert!(
        s.error_messages[0].starts_with("c: ") && s.error_messages[0].contains("paused"),
        "{:?}",
        s.error_messages
    );
    // The default version of the catalog was the target.
    assert_eq!(job(&r, "a").target_version.as_deref(), Some(TARGET));
    for n in ["a", "b"] {
        env.wait_for(n, InstancePhase::Active, TARGET, &op).await;
        assert_eq!(env.server_versions(n).await[&format!("{n}-0")], TARGET);
    }
    // The refused target was not touched.
    assert_eq!(env.server_versions("c").await["c-0"], SOURCE);
    assert_eq!(env.restarts("c").await["c-0"], 0);
    delete_namespace(&env.client, &env.ns).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_holds_before_the_primary_and_commit_finishes() {
    let env = Env::new("ur-commit").await;
    let op = env.operator("ur-commit", "");
    env.apply_example("redis-ha.yaml");
    env.wait_for("sessions", InstancePhase::Active, SOURCE, &op)
        .await;
    env.apply_example("upgrade-with-commit.yaml");
    wait_request(&env, "sessions-canary", RequestPhase::AwaitingCommit, &op).await;
    // It holds: the standbys run the new version, the old primary is still primary on the old.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = wait_request(&env, "sessions-canary", RequestPhase::AwaitingCommit, &op).await;
    assert!(
        job(&r, "sessions")
            .message
            .as_deref()
            .is_some_and(|m| m.contains("set action Commit")),
        "{:?}",
        job(&r, "sessions")
    );
    let versions = env.server_versions("sessions").await;
    assert_eq!(versions["sessions-0"], SOURCE, "{versions:?}");
    assert_eq!(versions["sessions-1"], TARGET, "{versions:?}");
    assert_eq!(versions["sessions-2"], TARGET, "{versions:?}");
    let st = env
        .instances
        .get("sessions")
        .await
        .expect("get")
        .status
        .expect("status");
    assert_eq!(st.primary.as_deref(), Some("sessions-0"));

    set_action(&env, "sessions-canary", "Commit").await;
    wait_request(&env, "sessions-canary", RequestPhase::Succeeded, &op).await;
    let inst = env
        .wait_for("sessions", InstancePhase::Active, TARGET, &op)
        .await;
    env.assert_all_run("sessions", TARGET).await;
    // secondSwitch in the request: the primary ends where it started.
    assert_eq!(
        inst.status.and_then(|s| s.primary).as_deref(),
        Some("sessions-0")
    );
    delete_namespace(&env.client, &env.ns).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_then_rollback_returns_every_member_and_loses_nothing() {
    let env = Env::new("ur-rollback").await;
    let op = env.operator("ur-rollback", "");
    env.apply_example("redis-ha.yaml");
    env.wait_for("sessions", InstancePhase::Active, SOURCE, &op)
        .await;
    let (stop, writes) = env.writer("sessions");
    env.apply_example("upgrade-with-commit.yaml");
    wait_request(&env, "sessions-canary", RequestPhase::AwaitingCommit, &op).await;
    set_action(&env, "sessions-canary", "Rollback").await;
    let r = wait_request(&env, "sessions-canary", RequestPhase::RolledBack, &op).await;
    let inst = env
        .wait_for("sessions", InstancePhase::Active, SOURCE, &op)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let report = writes.await.expect("writer");
    assert_eq!(job(&r, "sessions").phase, RequestPhase::RolledBack);
    env.assert_all_run("sessions", SOURCE).await;
    let pods = env.member_pods("sessions").await;
    assert!(pods.values().all(|p| image(p) == "redis:6.2.14"));
    let st = inst.status.expect("status");
    assert_eq!(
        st.primary.as_deref(),
        Some("sessions-0"),
        "the primary never moved"
    );
    assert_eq!(
        st.last_upgrade.map(|l| l.result),
        Some(UpgradeResult::RolledBack)
    );
    assert_nothing_lost(&env, "sessions", &[&report]).await;
    delete_namespace(&env.client, &env.ns).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_waits_for_the_maintenance_window_then_runs() {
    let env = Env::new("ur-window").await;
    // The operator's clock: the system time plus the seconds in this file.
    let clock = env.dir.join("clock-offset");
    let now = jiff::Timestamp::now();
    // redis-ha.yaml's window: Sunday 02:00 UTC for 180 minutes. Put the clock an hour before.
    let sunday = {
        let z = now.to_zoned(jiff::tz::TimeZone::UTC);
        let days = (7 - z.weekday().to_monday_zero_offset() as i64 + 6) % 7;
        let d = z
            .date()
            .checked_add(jiff::Span::new().days(days))
            .expect("date");
        d.at(2, 0, 0, 0)
            .to_zoned(jiff::tz::TimeZone::UTC)
            .expect("zoned")
            .timestamp()
    };
    let sunday = if sunday <= now {
        sunday
            .checked_add(jiff::SignedDuration::from_hours(7 * 24))
            .expect("next week")
    } else {
        sunday
    };
    let set_clock = |t: jiff::Timestamp| {
        let offset = t.as_second() - jiff::Timestamp::now().as_second();
        std::fs::write(&clock, offset.to_string()).expect("write clock");
    };
    set_clock(sunday - jiff::SignedDuration::from_hours(1));
    let op = env.operator_with(
        "ur-window",
        &[("BATON_CLOCK_OFFSET_FILE", clock.to_str().expect("path"))],
    );
    env.apply_example("redis-ha.yaml");
    env.wait_for("sessions", InstancePhase::Active, SOURCE, &op)
        .await;
    let before = env.restarts("sessions").await;
    env.apply_example("upgrade-in-window.yaml");
    let r = wait_request(&env, "sessions-in-window", RequestPhase::Scheduled, &op).await;
    let s = r.status.clone().expect("status");
    assert_eq!(s.scheduled_start.map(|t| t.0), Some(sunday));
    assert!(
        job(&r, "sessions")
            .message
            .as_deref()
            .is_some_and(|m| m.contains("maintenance window")),
        "{:?}",
        job(&r, "sessions")
    );
    // Nothing is touched while the window is closed.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let r = wait_request(&env, "sessions-in-window", RequestPhase::Scheduled, &op).await;
    assert_eq!(job(&r, "sessions").phase, RequestPhase::Scheduled);
    let inst = env.instances.get("sessions").await.expect("get");
    assert!(inst.status.and_then(|s| s.upgrade).is_none());
    assert_eq!(env.restarts("sessions").await, before);
    assert!(
        env.member_pods("sessions")
            .await
            .values()
            .all(|p| image(p) == "redis:6.2.14")
    );

    // The clock enters the window: the upgrade runs.
    set_clock(sunday + jiff::SignedDuration::from_mins(30));
    wait_request(&env, "sessions-in-window", RequestPhase::Succeeded, &op).await;
    env.wait_for("sessions", InstancePhase::Active, TARGET, &op)
        .await;
    env.assert_all_run("sessions", TARGET).await;
    delete_namespace(&env.client, &env.ns).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_paths_fail_their_target_and_touch_nothing() {
    let env = Env::new("ur-refused").await;
    let op = env.operator("ur-refused", "");
    env.create(
        "cache",
        1,
        json!({"datastore": {"type": "redis", "version": TARGET}}),
    )
    .await;
    env.wait_for("cache", InstancePhase::Active, TARGET, &op)
        .await;
    env.apply_example("upgrade-refused.yaml");
    for (name, says) in [
        (
            "cache-downgrade",
            "6.2.14 is older than the running 7.0.15; downgrades are never performed",
        ),
        (
            "cache-unknown-version",
            "redis 9.9.9 is not in the DatastoreVersion catalog",
        ),
        (
            "cache-no-edge",
            "no catalog path leads from redis 7.0.15 to 8.0.0",
        ),
    ] {
        let r = wait_request(&env, name, RequestPhase::Failed, &op).await;
        let s = r.status.expect("status");
        assert_eq!(s.failed_targets, ["cache"], "{name}");
        assert!(
            s.error_messages[0].contains(says),
            "{name}: {:?}",
            s.error_messages
        );
    }

    // A change of datastore: refused without a catalog edge; with one, the path is allowed and
    // the job stops only at the engine, which cannot change datastores.
    let dsv = Api::<DatastoreVersion>::all(env.client.clone());
    let entry = |edges: serde_json::Value| -> DatastoreVersion {
        serde_json::from_value(json!({
            "apiVersion": "baton.dev/v1alpha1", "kind": "DatastoreVersion",
            "metadata": {"name": "test-mariadb-11.4"},
            "spec": {"datastore": "mariadb", "version": "11.4", "image": "mariadb:11.4",
                     "upgradeFrom": edges},
        }))
        .expect("dsv")
    };
    let apply = |d: DatastoreVersion| {
        let dsv = dsv.clone();
        async move {
            dsv.patch(
                "test-mariadb-11.4",
                &PatchParams::apply("baton-tests").force(),
                &Patch::Apply(&d),
            )
            .await
            .expect("apply catalog entry")
        }
    };
    let cross = |name: &str| -> UpgradeRequest {
        serde_json::from_value(json!({
            "apiVersion": "baton.dev/v1alpha1", "kind": "UpgradeRequest",
            "metadata": {"name": name},
            "spec": {"targets": {"instances": ["cache"]}, "targetVersion": "11.4",
                     "datastore": "mariadb"},
        }))
        .expect("request")
    };
    apply(entry(json!([]))).await;
    requests(&env)
        .create(&PostParams::default(), &cross("to-mariadb"))
        .await
        .expect("create");
    let r = wait_request(&env, "to-mariadb", RequestPhase::Failed, &op).await;
    let msg = &r.status.expect("status").error_messages[0];
    assert!(
        msg.contains("no catalog edge leads from redis 7.0.15 to mariadb 11.4"),
        "{msg}"
    );
    apply(entry(
        json!([{"datastore": "redis", "minVersion": "7.0", "maxVersion": "7"}]),
    ))
    .await;
    requests(&env)
        .create(&PostParams::default(), &cross("to-mariadb-with-edge"))
        .await
        .expect("create");
    let r = wait_request(&env, "to-mariadb-with-edge", RequestPhase::Failed, &op).await;
    let msg = &r.status.expect("status").error_messages[0];
    assert!(
        msg.contains("the catalog edge allows redis 7.0.15 → mariadb 11.4")
            && !msg.contains("no catalog edge"),
        "{msg}"
    );
    let _ = dsv
        .delete("test-mariadb-11.4", &DeleteParams::default())
        .await;

    // Nothing was touched.
    assert_eq!(env.restarts("cache").await["cache-0"], 0);
    assert_eq!(
        image(&env.member_pods("cache").await["cache-0"]),
        "redis:7.0.15"
    );
    let st = env.status("cache").await;
    assert!(st.upgrade.is_none() && st.last_upgrade.is_none(), "{st:#?}");
    delete_namespace(&env.client, &env.ns).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_mid_batch_leaves_every_instance_active() {
    let env = Env::new("ur-cancel").await;
    let op = env.operator("ur-cancel", "");
    caches(&env, &op, &["a", "b", "c"], 2).await;
    env.apply_example("upgrade-batch.yaml");
    // Cancel while a target is in the middle of its upgrade.
    let mid = eventually(LONG, || async {
        let r = requests(&env).get("caches-to-default").await.ok()?;
        r.status?
            .jobs
            .iter()
            .any(|j| {
                // The first standby (`<name>-1`): before the switchover, so no target can
                // have finished and freed a slot for c yet.
                j.phase == RequestPhase::Running
                    && j.step
                        .as_deref()
                        .is_some_and(|s| s.starts_with("UpgradeStandby") && s.ends_with("-1"))
            })
            .then_some(())
    })
    .await;
    assert!(
        mid.is_some(),
        "no target reached a standby step:\n{}",
        tail(&op.logs(), 30)
    );
    set_action(&env, "caches-to-default", "Cancel").await;
    let r = wait_request(&env, "caches-to-default", RequestPhase::Cancelled, &op).await;
    let s = r.status.clone().expect("status");
    let phases: BTreeSet<String> = s.jobs.iter().map(|j| format!("{:?}", j.phase)).collect();
    assert!(
        phases.iter().all(|p| p == "Cancelled" || p == "Succeeded"),
        "{:#?}",
        s.jobs
    );
    assert!(s.jobs.iter().any(|j| j.phase == RequestPhase::Cancelled));
    assert_eq!(
        job(&r, "c").message.as_deref(),
        Some("not started: the request was cancelled"),
        "maxConcurrent 2: c had not started"
    );
    for n in ["a", "b", "c"] {
        // Healthy: Active, nothing in flight, every member on the version status reports.
        let found = eventually(LONG, || async {
            let st = env.instances.get(n).await.ok()?.status?;
            (st.phase == Some(InstancePhase::Active) && st.upgrade.is_none()).then_some(st.version?)
        })
        .await
        .unwrap_or_else(|| panic!("{n} is not Active after the cancel"));
        let versions = env.server_versions(n).await;
        assert!(
            versions.values().all(|v| *v == found),
            "{n}: {versions:?} vs {found}"
        );
    }
    assert_eq!(
        env.restarts("c").await.values().sum::<i32>(),
        0,
        "c was touched"
    );
    delete_namespace(&env.client, &env.ns).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_running_request_stops_it_with_the_instance_healthy() {
    let env = Env::new("ur-delete").await;
    let op = env.operator("ur-delete", "");
    env.apply_example("redis-ha.yaml");
    env.wait_for("sessions", InstancePhase::Active, SOURCE, &op)
        .await;
    env.apply_example("upgrade-request.yaml");
    let started = eventually(LONG, || async {
        let u = env.instances.get("sessions").await.ok()?.status?.upgrade?;
        (u.step.kind == baton::crd::StepKind::UpgradeStandby).then_some(())
    })
    .await;
    assert!(started.is_some(), "the upgrade never started");
    requests(&env)
        .delete("sessions-to-7", &DeleteParams::default())
        .await
        .expect("delete");
    // The finalizer keeps it until the target is healthy again, then it is gone.
    let gone = eventually(LONG, || async {
        requests(&env)
            .get_opt("sessions-to-7")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the request was never released:\n{}",
        tail(&op.logs(), 30)
    );
    let st = env
        .instances
        .get("sessions")
        .await
        .expect("get")
        .status
        .expect("status");
    assert_eq!(st.phase, Some(InstancePhase::Active));
    assert!(st.upgrade.is_none());
    assert_eq!(
        st.last_upgrade.map(|l| l.result),
        Some(UpgradeResult::Cancelled)
    );
    env.assert_all_run("sessions", SOURCE).await;
    delete_namespace(&env.client, &env.ns).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_concurrent_two_never_runs_three_at_once() {
    let env = Env::new("ur-concurrent").await;
    let op = env.operator("ur-concurrent", "");
    let names = ["a", "b", "c", "d"];
    caches(&env, &op, &names, 1).await;
    // Count, every 100 ms, the instances whose upgrade a request owns.
    let stop = CancellationToken::new();
    let worst = Arc::new(AtomicUsize::new(0));
    let monitor = {
        let (instances, stop, worst) = (env.instances.clone(), stop.clone(), worst.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Ok(list) = instances.list(&Default::default()).await {
                    let busy = list
                        .items
                        .iter()
                        .filter(|i| {
                            i.status
                                .as_ref()
                                .and_then(|s| s.upgrade.as_ref())
                                .is_some_and(|u| u.request.is_some())
                        })
                        .count();
                    worst.fetch_max(busy, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    env.apply_example("upgrade-batch.yaml");
    let r = wait_request(&env, "caches-to-default", RequestPhase::Succeeded, &op).await;
    stop.cancel();
    monitor.await.expect("monitor");
    assert_eq!(r.status.expect("status").succeeded, 4);
    let worst = worst.load(Ordering::SeqCst);
    assert!(worst <= 2, "{worst} targets upgraded at once");
    assert_eq!(worst, 2, "maxConcurrent 2 was never used");
    for n in names {
        assert_eq!(env.server_versions(n).await[&format!("{n}-0")], TARGET);
    }
    delete_namespace(&env.client, &env.ns).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_place_restarts_every_member_together_and_says_it_is_an_outage() {
    scenarios::in_place_restarts_every_member_together(
        REDIS,
        "ur-inplace",
        Some("upgrade-in-place.yaml"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hotfix_changes_only_the_build_and_rolls_through_a_switchover() {
    let env = Env::new("ur-hotfix").await;
    let op = env.operator("ur-hotfix", "");
    env.create(
        "sessions",
        2,
        json!({"datastore": {"type": "redis", "version": TARGET}}),
    )
    .await;
    env.wait_for("sessions", InstancePhase::Active, TARGET, &op)
        .await;
    env.apply_example("upgrade-hotfix.yaml");
    wait_request(&env, "sessions-hotfix", RequestPhase::Succeeded, &op).await;
    let inst = env
        .wait_for("sessions", InstancePhase::Active, "7.0.15-hotfix1", &op)
        .await;
    let pods = env.member_pods("sessions").await;
    assert!(
        pods.values().all(|p| image(p) == "redis:7.0.15-hotfix1"),
        "{:?}",
        pods.values().map(image).collect::<Vec<_>>()
    );
    assert_eq!(
        inst.status.and_then(|s| s.primary).as_deref(),
        Some("sessions-1"),
        "the primary role moved by a switchover"
    );
    delete_namespace(&env.client, &env.ns).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_6_2_to_8_2_runs_the_catalog_path_hop_by_hop_under_writes() {
    let (env, op) = Env::with_active("ur-path", "sessions", 3, json!({})).await;
    let (stop, writer) = env.writer("sessions");
    let pinned_ip = env.primary_ip("sessions").await;
    let (stop_pinned, pinned) =
        env.writer_with("sessions", "p", workload::Route::Pinned(pinned_ip));
    // Every hop the instance's status and the request's job show, as they go.
    let seen = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let watching = CancellationToken::new();
    let watcher = tokio::spawn({
        let (instances, requests, seen, watching) = (
            env.instances.clone(),
            requests(&env),
            seen.clone(),
            watching.clone(),
        );
        async move {
            while !watching.is_cancelled() {
                let hop = instances
                    .get("sessions")
                    .await
                    .ok()
                    .and_then(|i| i.status?.upgrade)
                    .and_then(|u| {
                        u.hop()
                            .map(|(i, n)| format!("{i}/{n} {}", u.target_version))
                    });
                let step = requests
                    .get_opt("sessions-to-8")
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| r.status?.jobs.first()?.step.clone());
                {
                    let mut s = seen.lock().expect("lock");
                    s.extend(hop.map(|h| format!("status {h}")));
                    s.extend(
                        step.filter(|s| s.starts_with("hop"))
                            .map(|s| format!("job {}", s.split(':').next().unwrap_or_default())),
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let request = "apiVersion: baton.dev/v1alpha1\nkind: UpgradeRequest\nmetadata:\n  name: sessions-to-8\nspec:\n  targets:\n    instances: [sessions]\n  targetVersion: \"8.2.3\"\n";
    let (ok, _, err) = run_tool(
        "kubectl",
        &["apply", "-n", &env.ns, "-f", "-"],
        Some(request),
    );
    assert!(ok, "{err}");
    let r = wait_request(&env, "sessions-to-8", RequestPhase::Succeeded, &op).await;
    let j = job(&r, "sessions");
    assert_eq!(
        (j.source_version.as_deref(), j.target_version.as_deref()),
        (Some(SOURCE), Some("8.2.3"))
    );
    env.wait_for("sessions", InstancePhase::Active, "8.2.3", &op)
        .await;
    env.assert_all_run("sessions", "8.2.3").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    watching.cancel();
    watcher.await.expect("watcher");
    stop.cancel();
    stop_pinned.cancel();
    let (report, pinned) = (writer.await.expect("writer"), pinned.await.expect("pinned"));
    println!("6.2.14 → 8.2.3 in three hops: {report}\n{pinned}");
    let seen = seen.lock().expect("lock").clone();
    println!("hops seen: {seen:?}");
    for hop in ["1/3 7.0.15", "2/3 7.2.4", "3/3 8.2.3"] {
        assert!(
            seen.contains(&format!("status {hop}")),
            "hop {hop} never in status: {seen:?}"
        );
    }
    for hop in ["hop 1/3 6.2.14 → 7.0.15", "hop 3/3 7.2.4 → 8.2.3"] {
        assert!(
            seen.contains(&format!("job {hop}")),
            "{hop} never in the job: {seen:?}"
        );
    }
    let last = env.status("sessions").await.last_upgrade.expect("outcome");
    assert_eq!(
        (last.source_version.as_str(), last.target_version.as_str()),
        (SOURCE, "8.2.3")
    );
    assert_nothing_lost(&env, "sessions", &[&report, &pinned]).await;
    delete_namespace(&env.client, &env.ns).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_over_four_targets_gives_each_verdict_and_changes_nothing() {
    let env = Env::new("ur-dry").await;
    let op = env.operator("ur-dry", "");
    for (name, spec) in [
        ("sessions", json!({})),
        ("orders", postgres(PG_SOURCE)),
        ("shop", MARIADB.spec()),
        ("legacy", postgres("15.19")),
    ] {
        env.create(name, 1, spec).await;
    }
    for (name, version) in [
        ("sessions", SOURCE),
        ("orders", PG_SOURCE),
        ("shop", MARIADB_SOURCE),
        ("legacy", "15.19"),
    ] {
        env.wait_for(name, InstancePhase::Active, version, &op)
            .await;
    }
    let before: Vec<_> = restart_counts(&env, &["sessions", "orders", "shop", "legacy"]).await;
    env.apply_example("upgrade-dry-run.yaml");
    let r = wait_request(&env, "fleet-dry-run", RequestPhase::PartiallySucceeded, &op).await;
    let st = r.status.clone().expect("status");
    assert_eq!((st.succeeded, st.failed), (3, 1), "{st:#?}");
    assert_eq!(st.failed_targets, ["legacy"]);
    assert!(
        st.error_messages[0].contains("needs an offline upgrade"),
        "{:?}",
        st.error_messages
    );
    for (target, to) in [
        ("sessions", TARGET),
        ("orders", PG_TARGET),
        ("shop", MARIADB_TARGET),
    ] {
        let j = job(&r, target);
        let plan = j
            .plan
            .clone()
            .unwrap_or_else(|| panic!("no plan for {target}: {j:?}"));
        assert!(plan.would_start, "{target}: {plan:?}");
        assert_eq!(
            plan.path.last().map(String::as_str),
            Some(to),
            "{target}: {plan:?}"
        );
        assert!(
            !plan.strategy.is_empty() && !plan.steps.is_empty(),
            "{plan:?}"
        );
        assert!(plan.checks.iter().all(|c| c.passed), "{plan:?}");
    }
    let legacy = job(&r, "legacy").plan.clone().expect("legacy's plan");
    assert!(
        !legacy.would_start && legacy.strategy.starts_with("offline"),
        "{legacy:?}"
    );
    // Nothing changed: no target claimed, no member restarted, no finalizer held.
    for name in ["sessions", "orders", "shop", "legacy"] {
        assert!(
            env.status(name).await.upgrade.is_none(),
            "{name} was claimed"
        );
    }
    let after = restart_counts(&env, &["sessions", "orders", "shop", "legacy"]).await;
    assert_eq!(before, after, "a dry run restarted a member");
    assert!(
        r.metadata.finalizers.unwrap_or_default().is_empty(),
        "a dry run holds no finalizer"
    );
    delete_namespace(&env.client, &env.ns).await;
}

/// Every member's restart count, per instance.
async fn restart_counts(env: &Env, names: &[&str]) -> Vec<std::collections::BTreeMap<String, i32>> {
    let mut out = vec![];
    for n in names {
        out.push(env.restarts(n).await);
    }
    out
}
