//! End-to-end scenarios every engine gets, written once over a [`Flavor`]: the Redis and the
//! PostgreSQL suites call the same code, so a promise checked for one datastore is checked the
//! same way for the next.

use std::time::Duration;

use serde_json::json;

use baton::crd::InstancePhase;

use crate::env::*;
use crate::harness::*;

/// `secondSwitch`: after the old primary is upgraded the role goes back to it, through a
/// second switchover, with nothing lost under a label-following writer.
pub async fn second_switch_returns_the_role(f: Flavor, prefix: &str) {
    let mut spec = f.spec();
    spec["upgradePolicy"] = json!({"secondSwitch": true});
    let (env, op) = Env::with_active(prefix, "db", 3, spec).await;
    let (stop, writes) = env.writer("db");
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.patch_spec("db", f.at(f.target)).await;
    let inst = env
        .wait_for("db", InstancePhase::Active, f.target, &op)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let report = writes.await.expect("writer");
    assert_eq!(inst.status.and_then(|s| s.primary).as_deref(), Some("db-0"));
    let pods = env.member_pods("db").await;
    assert_eq!(
        pods["db-0"]
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("baton.dev/role"))
            .map(String::as_str),
        Some("primary")
    );
    env.assert_all_run("db", f.target).await;
    let switches = env
        .events("db")
        .await
        .iter()
        .filter(|(r, _)| r == "SwitchoverCompleted")
        .count();
    assert_eq!(switches, 2, "a switchover away and one back");
    assert_nothing_lost(&env, "db", &[&report]).await;
    delete_namespace(&env.client, &env.ns).await;
}

/// A standby whose new image cannot start: phase Error naming it and the node's reason, the
/// primary and the next standby untouched, a Degraded condition and an Event; setting the spec
/// back returns every member to the source version, with nothing lost under a writer.
pub async fn broken_standby_halts_and_reverting_recovers(f: Flavor, prefix: &str) {
    let env = Env::new(prefix).await;
    env.add_broken_version(f).await;
    let op = env.operator(prefix, "");
    let mut spec = f.spec();
    spec["upgradePolicy"] = json!({"stepTimeoutSeconds": 10});
    env.create("db", 3, spec).await;
    env.wait_for("db", InstancePhase::Active, f.source, &op)
        .await;
    let (stop, writes) = env.writer("db");
    env.patch_spec("db", f.at(f.broken)).await;

    let failed = eventually(LONG, || async {
        let i = env.instances.get("db").await.ok()?;
        (i.status.as_ref()?.phase == Some(InstancePhase::Error)).then_some(i)
    })
    .await
    .unwrap_or_else(|| panic!("the upgrade never failed:\n{}", tail(&op.logs(), 30)));
    let status = failed.status.expect("status");
    let failure = status
        .upgrade
        .as_ref()
        .and_then(|u| u.failure.clone())
        .expect("failure");
    assert!(
        failure.contains("db-1") && failure.contains("ErrImagePull"),
        "{failure}"
    );
    assert!(failure.contains("primary db-0 is untouched"), "{failure}");
    assert_degraded(&status, "UpgradeFailed", "db-1");
    env.wait_event("db", "UpgradeFailed", "db-1").await;
    let source_image = format!("{}:{}", f.image, f.source);
    let pods = env.member_pods("db").await;
    assert_eq!(
        image(&pods["db-0"]),
        source_image,
        "the primary was touched"
    );
    assert_eq!(
        image(&pods["db-2"]),
        source_image,
        "the next standby was touched"
    );
    assert_eq!(status.primary.as_deref(), Some("db-0"));

    // Setting the spec back returns the broken member to the source version.
    env.patch_spec("db", f.at(f.source)).await;
    env.wait_for("db", InstancePhase::Active, f.source, &op)
        .await;
    stop.cancel();
    let report = writes.await.expect("writer");
    let pods = env.member_pods("db").await;
    assert!(pods.values().all(|p| image(p) == source_image));
    env.assert_all_run("db", f.source).await;
    assert_nothing_lost(&env, "db", &[&report]).await;
    delete_namespace(&env.client, &env.ns).await;
}

/// Waits until `member` of instance `db` is quarantined as a second writer, with the Degraded
/// condition and the Event naming it.
pub async fn wait_quarantined(env: &Env, op: &Operator, member: &str) {
    let quarantined = eventually(Duration::from_secs(60), || async {
        let s = env.instances.get("db").await.ok()?.status?;
        s.quarantine.iter().any(|q| q.member == member).then_some(s)
    })
    .await
    .unwrap_or_else(|| panic!("{member} was never quarantined:\n{}", tail(&op.logs(), 30)));
    assert_degraded(&quarantined, "SecondPrimary", member);
    env.wait_event("db", "SecondPrimary", member).await;
}

/// With `member` quarantined: an upgrade to the flavor's target waits for a person; deleting
/// the member's claim and pod is that decision, after which Baton rebuilds the member as a
/// standby and the upgrade runs to the end.
pub async fn upgrade_waits_until_the_quarantine_is_released(
    env: &Env,
    op: &Operator,
    f: Flavor,
    member: &str,
) {
    env.patch_spec("db", f.at(f.target)).await;
    let waits = eventually(Duration::from_secs(30), || async {
        let s = env.instances.get("db").await.ok()?.status?;
        s.conditions.into_iter().find(|c| {
            c.type_ == "VersionApplied" && c.message.contains(&format!("{member} is quarantined"))
        })
    })
    .await;
    assert!(waits.is_some(), "the upgrade did not wait");
    assert!(env.status("db").await.upgrade.is_none());

    let claim = format!("data-{member}");
    for args in [
        vec!["delete", "pvc", &claim, "-n", &env.ns, "--wait=false"],
        vec!["delete", "pod", member, "-n", &env.ns],
    ] {
        let (ok, _, err) = run_tool("kubectl", &args, None);
        assert!(ok, "{err}");
    }
    env.wait_for("db", InstancePhase::Active, f.target, op)
        .await;
    let s = env.status("db").await;
    assert!(s.quarantine.is_empty(), "{:?}", s.quarantine);
    env.assert_all_run("db", f.target).await;
}

/// `Degraded=True` for `reason`, naming `member`.
fn assert_degraded(status: &baton::crd::DatabaseInstanceStatus, reason: &str, member: &str) {
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", reason)
    );
    assert!(degraded.message.contains(member), "{}", degraded.message);
}

/// An `InPlace` request: every member of a 2-member instance `cache` restarted together on the
/// target (one step, no switchover, the request's job says it is an outage), the primary stays,
/// nothing acknowledged lost. `example` is the request file of examples/ to apply (named
/// `cache-in-place`); without one the same request is created for the flavor's target.
pub async fn in_place_restarts_every_member_together(
    f: Flavor,
    prefix: &str,
    example: Option<&str>,
) {
    let (env, op) = Env::with_active(prefix, "cache", 2, f.spec()).await;
    let before = env.restarts("cache").await;
    let (stop, writes) = env.writer("cache");
    tokio::time::sleep(Duration::from_millis(500)).await;
    match example {
        Some(file) => env.apply_example(file),
        None => {
            let req: baton::crd::UpgradeRequest = serde_json::from_value(json!({
                "apiVersion": "baton.dev/v1alpha1", "kind": "UpgradeRequest",
                "metadata": {"name": "cache-in-place"},
                "spec": {"targets": {"instances": ["cache"]}, "targetVersion": f.target, "type": "InPlace"},
            }))
            .expect("request");
            requests(&env)
                .create(&Default::default(), &req)
                .await
                .expect("create request");
        }
    }
    let r = wait_request(
        &env,
        "cache-in-place",
        baton::crd::RequestPhase::Succeeded,
        &op,
    )
    .await;
    env.wait_for("cache", InstancePhase::Active, f.target, &op)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let report = writes.await.expect("writer");
    let events = env.events("cache").await;
    let restarting: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, (r, _))| r == "MemberRestarting")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(restarting.len(), 2, "{events:#?}");
    // Together: both restarts belong to one step (a rolling upgrade completes a step between,
    // told by a StepCompleted Event or by the next restart's "… finished").
    assert!(
        events[restarting[0]..restarting[1]]
            .iter()
            .all(|(r, _)| r != "StepCompleted")
            && !events[restarting[1]].1.contains("finished"),
        "{events:#?}"
    );
    let after = env.restarts("cache").await;
    assert!(
        after.iter().all(|(m, c)| *c == before[m] + 1),
        "every member restarted once: {before:?} → {after:?}"
    );
    let started = env
        .events(&r.metadata.name.clone().expect("name"))
        .await
        .into_iter()
        .find(|(reason, _)| reason == "TargetStarted")
        .expect("TargetStarted event");
    assert!(started.1.contains("unavailable"), "{started:?}");
    assert_eq!(
        env.status("cache").await.primary.as_deref(),
        Some("cache-0")
    );
    env.assert_all_run("cache", f.target).await;
    assert_nothing_lost(&env, "cache", &[&report]).await;
    delete_namespace(&env.client, &env.ns).await;
}

/// Upgrade → AwaitingCommit → Rollback through the flavor's examples (an instance `instance`
/// of three members on the source, and a canary request `request` to the target): the
/// standbys go to the target and come back, the primary never moves, nothing committed is
/// lost.
pub async fn upgrade_then_rollback_returns_every_member(
    f: Flavor,
    prefix: &str,
    (example, instance): (&str, &str),
    (canary, request): (&str, &str),
) {
    let env = Env::new(prefix).await;
    let op = env.operator(prefix, "");
    env.apply_example(example);
    env.wait_for(instance, InstancePhase::Active, f.source, &op)
        .await;
    let (stop, writes) = env.writer(instance);
    env.apply_example(canary);
    let r = wait_request(&env, request, baton::crd::RequestPhase::AwaitingCommit, &op).await;
    assert_eq!(
        job(&r, instance).phase,
        baton::crd::RequestPhase::AwaitingCommit
    );
    let versions = env.server_versions(instance).await;
    let first = format!("{instance}-0");
    for (pod, v) in &versions {
        let want = if *pod == first { f.source } else { f.target };
        assert_eq!(
            v, want,
            "the primary waits on the source, the standbys on the target: {versions:?}"
        );
    }
    set_action(&env, request, "Rollback").await;
    wait_request(&env, request, baton::crd::RequestPhase::RolledBack, &op).await;
    let inst = env
        .wait_for(instance, InstancePhase::Active, f.source, &op)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let report = writes.await.expect("writer");
    env.assert_all_run(instance, f.source).await;
    let st = inst.status.expect("status");
    assert_eq!(
        st.primary.as_deref(),
        Some(first.as_str()),
        "the primary never moved"
    );
    assert_eq!(
        st.last_upgrade.map(|l| l.result),
        Some(baton::crd::UpgradeResult::RolledBack)
    );
    assert_nothing_lost(&env, instance, &[&report]).await;
    delete_namespace(&env.client, &env.ns).await;
}

/// One request over two Redis instances and two of the flavor's (a label selector, no target
/// version: each goes to its datastore's catalog default) → Succeeded 4/0.
pub async fn a_batch_beside_redis_succeeds_four_of_four(f: Flavor, prefix: &str) {
    let env = Env::new(prefix).await;
    let op = env.operator(prefix, "");
    let all = [("r1", REDIS), ("r2", REDIS), ("m1", f), ("m2", f)];
    for (n, fl) in all {
        env.create(n, 2, fl.spec()).await;
        env.label(n, "fleet", "mixed").await;
    }
    for (n, fl) in all {
        env.wait_for(n, InstancePhase::Active, fl.source, &op).await;
    }
    let req: baton::crd::UpgradeRequest = serde_json::from_value(json!({
        "apiVersion": "baton.dev/v1alpha1", "kind": "UpgradeRequest",
        "metadata": {"name": "fleet"},
        "spec": {"targets": {"selector": {"matchLabels": {"fleet": "mixed"}}}, "maxConcurrent": 2},
    }))
    .expect("request");
    requests(&env)
        .create(&Default::default(), &req)
        .await
        .expect("create request");
    let r = wait_request(&env, "fleet", baton::crd::RequestPhase::Succeeded, &op).await;
    let s = r.status.expect("status");
    assert_eq!((s.succeeded, s.failed), (4, 0), "{:#?}", s.jobs);
    for (n, fl) in all {
        env.assert_all_run(n, fl.target).await;
    }
    delete_namespace(&env.client, &env.ns).await;
}
/// The instance `db`'s `PrimaryAvailable` condition, once its reason is `reason`.
async fn primary_available(
    env: &Env,
    reason: &str,
    op: &impl Logs,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    eventually(Duration::from_secs(90), || async {
        let st = env.instances.get("db").await.ok()?.status?;
        st.conditions
            .into_iter()
            .find(|c| c.type_ == "PrimaryAvailable" && c.reason == reason)
    })
    .await
    .unwrap_or_else(|| panic!("no PrimaryAvailable {reason}:\n{}", tail(&op.logs(), 20)))
}

/// A primary that hangs outside an upgrade: `PrimaryAvailable=False` (`PrimaryDown`) and a
/// Warning say what its node and its server report, nothing is promoted, and once it answers
/// again it leads as before, `PrimaryAvailable=True` with an Event, and takes writes.
pub async fn hung_primary_is_reported_down_and_not_replaced(f: Flavor, prefix: &str) {
    let (env, op) = Env::with_active(prefix, "db", 3, f.spec()).await;
    assert_eq!(primary_available(&env, "Leading", &op).await.status, "True");
    let hung = crate::faults::hang_member(&env, "db-0")
        .await
        .expect("db-0's processes stopped");
    let down = primary_available(&env, "PrimaryDown", &op).await;
    println!("hung {:?} primary: {}", f.datastore, down.message);
    env.wait_event("db", "PrimaryDown", "db-0").await;
    assert_eq!(down.status, "False");
    assert!(
        down.message.contains("db-0") && down.message.contains("not Ready"),
        "{}",
        down.message
    );
    let st = env.status("db").await;
    assert_eq!(st.primary.as_deref(), Some("db-0"), "nothing promoted");
    // GitOps tools see why (kstatus InProgress, Argo Progressing), at the same write.
    let reconciling = st.conditions.iter().find(|c| c.type_ == "Reconciling");
    assert!(
        reconciling.is_some_and(|c| c.status == "True" && c.reason == "PrimaryDown"),
        "{reconciling:?}"
    );
    assert_eq!(st.message.as_deref(), Some(down.message.as_str()));
    assert!(
        st.members
            .iter()
            .filter(|m| m.pod != "db-0")
            .all(|m| m.role == Some(baton::crd::MemberRole::Standby)),
        "a standby changed role: {:?}",
        st.members
    );

    drop(hung);
    assert_eq!(primary_available(&env, "Leading", &op).await.status, "True");
    env.wait_event("db", "PrimaryAvailable", "db-0 leads").await;
    env.wait_for("db", InstancePhase::Active, f.source, &op)
        .await;
    assert_eq!(env.status("db").await.primary.as_deref(), Some("db-0"));
    // Long enough for the loss check's 50 writes on a loaded machine (a first PostgreSQL write
    // also creates the table).
    let (stop, writes) = env.writer("db");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let report = writes.await.expect("writer");
    assert!(
        !report.acked.is_empty(),
        "no write taken after the primary came back"
    );
    assert_nothing_lost(&env, "db", &[&report]).await;
    delete_namespace(&env.client, &env.ns).await;
}

/// A rolling upgrade with `durability: Replicated`: every commit waits for a standby, a
/// standby restarts while the other acknowledges, and the switchover's own statements (which
/// Baton makes member-local or commits locally) never wait for one. A label-following, a pinned
/// and a trailing client lose nothing, and the new primary counts both standbys as synchronous
/// afterwards.
pub async fn replicated_instance_rolls_losing_nothing(f: Flavor, prefix: &str) {
    let env = Env::new(prefix).await;
    let mut spec = f.spec();
    spec["durability"] = json!("Replicated");
    let sc = crate::faults::Scenario::prepare(&env, "db", f.source, spec).await;
    let first = sc.first_primary;
    env.assert_synchronous("db", first, 2).await;
    let op = env.operator(prefix, "");
    tokio::time::sleep(Duration::from_millis(500)).await;
    sc.set_version(f.target).await;
    let out = sc.finish(&op, f.target).await;
    assert_eq!(out.result, Ok(()));
    env.assert_all_run("db", f.target).await;
    let now = env.primary_ip("db").await;
    assert_ne!(now, first, "the primary role moved");
    env.assert_synchronous("db", now, 2).await;
    for r in &out.reports {
        println!("{:?} (durability Replicated) {r}", f.datastore);
    }
    delete_namespace(&env.client, &env.ns).await;
}

/// A primary cut off from Baton alone (`spec.failover` on): a network cut drops the operator's
/// packets to it while its node's probes and the clients still reach it. `PrimaryAvailable`
/// says `PrimaryUnreachable` (its node reports it Ready), and for four times `afterSeconds`
/// nothing is deposed or promoted while a label-following writer keeps writing on it. Once the
/// cut is lifted it is reported leading again; nothing acknowledged is lost.
pub async fn cut_off_primary_is_not_failed_over(f: Flavor, prefix: &str) {
    // The group the operator runs in, which the cut drops the packets of.
    const GID: u32 = 47_701;
    let mut spec = f.spec();
    spec["failover"] = json!({"enabled": true, "afterSeconds": 5});
    let (env, op) = Env::with_active(prefix, "db", 3, spec).await;
    drop(op);
    let op = env.operator_in_group(&format!("{prefix}-cut"), GID);
    assert_eq!(primary_available(&env, "Leading", &op).await.status, "True");
    let old_ip = env.primary_ip("db").await;
    let (stop, writes) = env.writer("db");
    let cut = crate::faults::Cut::new(GID, old_ip).expect("iptables cut installed");
    let cut_at = std::time::Instant::now();
    let unreachable = primary_available(&env, "PrimaryUnreachable", &op).await;
    let seen_after = cut_at.elapsed();
    assert!(
        unreachable.message.contains("db-0") && unreachable.message.contains("Ready"),
        "{}",
        unreachable.message
    );
    // Well past the grace: still the same primary, nothing deposed, no failover started.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let st = env.status("db").await;
    assert!(
        st.failover.is_none() && st.last_failover.is_none(),
        "{st:?}"
    );
    assert_eq!(st.primary.as_deref(), Some("db-0"));
    let cond = baton::status::find(&st.conditions, "PrimaryAvailable").expect("condition");
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "PrimaryUnreachable"),
        "still cut off: {cond:?}"
    );
    let events = env.events("db").await;
    assert!(
        events
            .iter()
            .all(|(r, _)| r != "FailingOver" && r != "FailedOver"),
        "{events:?}"
    );
    drop(cut);
    assert_eq!(primary_available(&env, "Leading", &op).await.status, "True");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let report = writes.await.expect("writer");
    assert!(
        report.acked.iter().all(|a| a.by == old_ip),
        "a write went elsewhere than the cut-off primary: {report:?}"
    );
    assert_nothing_lost(&env, "db", &[&report]).await;
    let restarts = env.restarts("db").await;
    assert_eq!(
        restarts.get("db-0"),
        Some(&0),
        "db-0 restarted: {restarts:?}"
    );
    println!(
        "{:?} primary cut off from Baton alone: PrimaryUnreachable {:.1}s after the cut, not failed over in 20 s (afterSeconds 5); {} writes acknowledged by it meanwhile, none lost",
        f.datastore,
        seen_after.as_secs_f64(),
        report.acked.len()
    );
    delete_namespace(&env.client, &env.ns).await;
}

/// Automatic failover (`spec.failover`): the primary hangs for good (its processes stopped:
/// port open, nothing answered, its node reports it not Ready) under a label-following and a
/// pinned writer. Past `afterSeconds` Baton deletes its pod, promotes the standby holding the
/// most, and the label-following writer writes again on it. The old member comes back from a
/// new pod and is measured: holding nothing more than the new primary got, it rejoins as a
/// standby and no acknowledged write is missing; holding more (replication is asynchronous: the
/// hung primary's last writes), it is quarantined, and every write missing on the new primary
/// was acknowledged by the old one and is on it. The operator is killed
/// right after it deleted the old primary's pod; the next one finishes the failover.
pub async fn hung_primary_is_failed_over_and_rejoins(f: Flavor, prefix: &str) {
    failed_over(f, prefix, true, false).await;
}

/// The same failover with `spec.durability: Replicated` (a commit returns once a standby has
/// it): every acknowledged write, the hung primary's last ones included, is on the promoted
/// standby. The old member may still hold commits no client saw acknowledged (made locally,
/// then waiting for a standby when it hung); it is measured and kept or rejoins as before.
pub async fn hung_replicated_primary_is_failed_over_losing_nothing(f: Flavor, prefix: &str) {
    failed_over(f, prefix, true, true).await;
}

/// The same failover with no client writing when the primary hangs: the old member holds
/// nothing the promoted standby lacks, so it is released and rejoins as a standby on its own
/// (PostgreSQL, MariaDB); a restarted Redis starts a new replication history that Baton cannot
/// compare, so it is kept.
pub async fn idle_primary_is_failed_over_and_rejoins(f: Flavor, prefix: &str) {
    failed_over(f, prefix, false, false).await;
}

/// Failover during an upgrade (`spec.failover` on): the primary hangs for good while the
/// upgrade restarts its first standby. The upgrade pauses, the standby holding the most is
/// promoted, the old primary comes back from a new pod, is measured holding nothing more and
/// rejoins as a standby, and the upgrade resumes from its step on the new primary and ends with
/// every member on the target. The writer stops just before the hang, so the old member holds
/// nothing more and rejoins (writes in flight at a hang are the failover scenarios' part); a
/// label-following and a pinned writer then write through the rest of the upgrade. Nothing
/// acknowledged by either is lost.
pub async fn primary_dying_mid_upgrade_is_failed_over_and_the_upgrade_resumes(
    f: Flavor,
    prefix: &str,
) {
    let mut spec = f.spec();
    spec["failover"] = json!({"enabled": true, "afterSeconds": 5});
    let (env, op) = Env::with_active(prefix, "db", 3, spec).await;
    drop(op);
    // Sleeps right after db-1's new image is set: the primary hangs with that step in flight,
    // whatever the test's polling costs.
    let op = env.operator_with(
        &format!("{prefix}-held"),
        &[("BATON_HOLD_AT", "api:pod-image@1#1:4000")],
    );
    let (stop, before) = env.writer("db");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    env.patch_spec("db", f.at(f.target)).await;
    let stepping = eventually(Duration::from_secs(60), || async {
        let u = env.instances.get("db").await.ok()?.status?.upgrade?;
        (u.step.kind == baton::crd::StepKind::UpgradeStandby
            && u.step.member.as_deref() == Some("db-1"))
        .then_some(())
    })
    .await;
    assert!(stepping.is_some(), "the upgrade never restarted db-1");
    stop.cancel();
    let before = before.await.expect("writer");
    // Replication is asynchronous: the standbys get the last acknowledged writes first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hung = crate::faults::hang_member(&env, "db-0")
        .await
        .expect("db-0's processes stopped");
    let hung_at = std::time::Instant::now();
    let paused = eventually(Duration::from_secs(60), || async {
        let st = env.instances.get("db").await.ok()?.status?;
        let msg = st.message.unwrap_or_default();
        (st.upgrade.is_some() && msg.starts_with("upgrade paused")).then_some(msg)
    })
    .await
    .unwrap_or_else(|| panic!("the upgrade never paused:\n{}", tail(&op.logs(), 30)));
    let last = failed_over_from_db0(&env, &op).await;
    let promoted_after = hung_at.elapsed();
    let promoted_on = env
        .status("db")
        .await
        .members
        .iter()
        .find(|m| m.pod == last.to)
        .and_then(|m| m.version.clone())
        .unwrap_or_default();
    let new_ip = labelled(&env, &last.to).await;
    // Key spaces of their own: the first writer's keys are taken.
    let clients = [
        env.writer_with("db", "a", crate::workload::Route::FollowLabel),
        env.writer_with("db", "p", crate::workload::Route::Pinned(new_ip)),
    ];
    let inst = env
        .wait_for("db", InstancePhase::Active, f.target, &op)
        .await;
    let resumed_after = hung_at.elapsed();
    drop(hung);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut reports = vec![before];
    for (stop, task) in clients {
        stop.cancel();
        reports.push(task.await.expect("writer"));
    }
    assert!(
        reports[1].acked.len() > 10,
        "the label-following writer barely wrote after the failover: {:?}",
        reports[1]
    );
    let st = inst.status.expect("status");
    let measured = st
        .last_failover
        .as_ref()
        .and_then(|l| l.unreplicated.clone())
        .unwrap_or_default();
    assert!(
        measured.starts_with("0 "),
        "db-0 should hold nothing more (the writer stopped before the hang): {measured}"
    );
    assert!(st.quarantine.is_empty(), "{:?}", st.quarantine);
    assert_eq!(
        st.last_upgrade.as_ref().map(|l| l.result),
        Some(baton::crd::UpgradeResult::Succeeded),
        "{:?}",
        st.last_upgrade
    );
    env.assert_all_run("db", f.target).await;
    let refs: Vec<&crate::workload::Report> = reports.iter().collect();
    assert_nothing_lost(&env, "db", &refs).await;
    println!(
        "{:?} failover mid-upgrade: {} (on {promoted_on}) promoted {:.1}s after the hang (afterSeconds 5; paused: {paused}); the upgrade ended {:.1}s after the hang; writes acknowledged {} before, {} + {} pinned after, none lost",
        f.datastore,
        last.to,
        promoted_after.as_secs_f64(),
        resumed_after.as_secs_f64(),
        reports[0].acked.len(),
        reports[1].acked.len(),
        reports[2].acked.len(),
    );
    delete_namespace(&env.client, &env.ns).await;
}

/// The address of `member` once the primary label names it: it moves when the promoted
/// standby is published, which `lastFailover` and the old member's measurement may precede.
async fn labelled(env: &Env, member: &str) -> std::net::IpAddr {
    eventually(Duration::from_secs(60), || async {
        let ip = crate::workload::primary_address(&env.client, &env.ns, "db").await?;
        let members = crate::workload::member_addresses(&env.client, &env.ns, "db").await;
        (members.get(member) == Some(&ip)).then_some(ip)
    })
    .await
    .unwrap_or_else(|| panic!("the primary label never moved to {member}"))
}

/// Waits for the failover away from the hung `db-0`: its Warning, then the outcome in
/// `status.lastFailover`, naming another member.
async fn failed_over_from_db0(env: &Env, op: &impl Logs) -> baton::crd::LastFailover {
    env.wait_event_within("db", "FailingOver", "db-0", Duration::from_secs(90))
        .await;
    let last = eventually(Duration::from_secs(120), || async {
        env.instances.get("db").await.ok()?.status?.last_failover
    })
    .await
    .unwrap_or_else(|| panic!("no failover:\n{}", tail(&op.logs(), 30)));
    assert_eq!(last.from, "db-0");
    assert_ne!(last.to, "db-0");
    last
}

async fn failed_over(f: Flavor, prefix: &str, writing: bool, replicated: bool) {
    let mut spec = f.spec();
    spec["failover"] = json!({"enabled": true, "afterSeconds": 5});
    if replicated {
        spec["durability"] = json!("Replicated");
    }
    let (env, op) = Env::with_active(prefix, "db", 3, spec).await;
    let old_ip = env.primary_ip("db").await;
    if replicated {
        // In effect, not only asked for (an asynchronous run can also happen to lose nothing).
        env.assert_synchronous("db", old_ip, 2).await;
    }
    let (op, hung, hung_at, mut clients) = if writing {
        // The operator that starts the failover dies right after deleting the old primary's
        // pod (its effect happened, its result never seen); another one finishes it.
        drop(op);
        let mut crashing = env.operator(&format!("{prefix}-crashing"), "api:depose@0");
        let clients = vec![
            env.writer("db"),
            env.writer_with("db", "p", crate::workload::Route::Pinned(old_ip)),
        ];
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let hung = crate::faults::hang_member(&env, "db-0")
            .await
            .expect("db-0's processes stopped");
        let hung_at = std::time::Instant::now();
        let exit = tokio::time::timeout(Duration::from_secs(120), crashing.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the operator never deposed db-0:\n{}",
                    tail(&crashing.logs(), 30)
                )
            })
            .expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&exit),
            Some(9),
            "the operator died otherwise: {exit:?}"
        );
        let st = env.status("db").await;
        let rec = st
            .failover
            .clone()
            .expect("the failover recorded before the pod was deleted");
        assert_eq!((rec.from.as_str(), rec.to.as_deref()), ("db-0", None));
        assert_eq!(
            st.primary.as_deref(),
            Some("db-0"),
            "nothing promoted before the pod went"
        );
        drop(crashing);
        let op = env.operator(&format!("{prefix}-resumed"), "");
        (op, hung, hung_at, clients)
    } else {
        let hung = crate::faults::hang_member(&env, "db-0")
            .await
            .expect("db-0's processes stopped");
        (op, hung, std::time::Instant::now(), vec![])
    };
    let last = failed_over_from_db0(&env, &op).await;
    let promoted_after = hung_at.elapsed();
    env.wait_event("db", "FailedOver", &last.to).await;
    // The old member comes back from the pod created in place of the deleted one and is
    // measured against what the promoted standby got: holding nothing more, it rejoins as a
    // standby (every member Ready and caught up); holding more, it is quarantined with it.
    let settled = eventually(Duration::from_secs(120), || async {
        let st = env.instances.get("db").await.ok()?.status?;
        let ready =
            baton::status::find(&st.conditions, "Ready").is_some_and(|c| c.status == "True");
        let old = st.members.iter().find(|m| m.pod == "db-0")?;
        let measured = st.last_failover.as_ref()?.unreplicated.clone()?;
        let rejoined = measured.starts_with("0 ")
            && ready
            && old.role == Some(baton::crd::MemberRole::Standby);
        let kept = st.quarantine.iter().any(|q| q.member == "db-0" && !q.held);
        (rejoined || kept).then_some((st, measured, kept))
    })
    .await;
    let (st, unreplicated, kept) = settled.unwrap_or_else(|| {
        panic!(
            "db-0 was neither measured and rejoined nor kept:\n{}",
            tail(&op.logs(), 40)
        )
    });
    drop(hung);
    assert_eq!(st.phase, Some(InstancePhase::Active));
    assert_eq!(st.primary.as_deref(), Some(last.to.as_str()));
    let new_ip = labelled(&env, &last.to).await;
    if !writing {
        // Idle through the failover: nothing can be missing; a writer after it must reach
        // every member that follows, the rejoined one included.
        assert!(
            kept == (f.datastore == baton::crd::Datastore::Redis),
            "db-0 {} (unreplicated {unreplicated})",
            if kept { "was kept" } else { "rejoined" }
        );
        clients.push(env.writer("db"));
        clients.push(env.writer_with("db", "p", crate::workload::Route::Pinned(new_ip)));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut reports = vec![];
    for (stop, task) in clients {
        stop.cancel();
        reports.push(task.await.expect("writer"));
    }
    let (report, pinned) = (&reports[0], &reports[1]);
    assert!(
        report.acked.iter().any(|a| a.by == new_ip),
        "the label-following writer never wrote on the new primary: {report:?}"
    );
    let ds = env.datastore("db").await;
    let members = crate::workload::member_addresses(&env.client, &env.ns, "db").await;
    let old_now = members["db-0"];
    let mut lost = 0;
    for r in [report, pinned] {
        let missing = eventually(Duration::from_secs(30), || async {
            crate::workload::missing(ds, new_ip, r).await.ok()
        })
        .await
        .expect("read back from the new primary");
        assert!(
            missing.iter().all(|a| a.by == old_ip),
            "writer {}: lost writes another member than the old primary acknowledged: {}",
            r.writer,
            crate::workload::describe_loss(&missing, &members)
        );
        lost += missing.len();
        if kept {
            // Not lost: every one is on the quarantined old primary, for a person to read.
            let on_old = eventually(Duration::from_secs(30), || async {
                let m = crate::workload::missing(ds, old_now, r).await.ok()?;
                Some(missing.iter().filter(|a| m.contains(a)).count())
            })
            .await
            .expect("read back from the quarantined member");
            assert_eq!(
                on_old, 0,
                "writer {}: writes on neither the new primary nor the kept old one",
                r.writer
            );
        }
        // Every member that follows holds what the new primary holds.
        for (pod, ip) in members
            .iter()
            .filter(|(p, _)| !kept || p.as_str() != "db-0")
        {
            let held = eventually(Duration::from_secs(30), || async {
                let m = crate::workload::missing(ds, *ip, r).await.ok()?;
                m.iter().all(|a| missing.contains(a)).then_some(())
            })
            .await;
            assert!(held.is_some(), "{pod} lacks writes the new primary holds");
        }
    }
    if replicated {
        assert_eq!(
            lost, 0,
            "durability Replicated: writes acknowledged by the hung primary are not on the promoted standby (unreplicated: {unreplicated})"
        );
    }
    if !kept {
        assert_eq!(
            lost, 0,
            "db-0 rejoined holding nothing more, yet writes it acknowledged are gone"
        );
    } else {
        assert!(!unreplicated.starts_with("0 "), "{unreplicated}");
    }
    println!(
        "{:?}{} failover: {} promoted {:.1}s after the hang (afterSeconds 5); writes acknowledged {} + {} pinned, {lost} not on the new primary (all acknowledged by the hung primary); db-0 {} (unreplicated: {unreplicated})",
        f.datastore,
        if replicated {
            " (durability Replicated)"
        } else {
            ""
        },
        last.to,
        promoted_after.as_secs_f64(),
        report.acked.len(),
        pinned.acked.len(),
        if kept {
            "quarantined with them"
        } else {
            "rejoined as a standby"
        },
    );
    delete_namespace(&env.client, &env.ns).await;
}

/// A switchover whose candidate was promoted just before the operator died, and which does not
/// answer the next operator, who comes after the fence deadline: the switchover is undone (db-0
/// leads again, the step fails) and the promoted candidate, fenced since its promotion, follows
/// db-0 again with every acknowledged write, its status a Ready standby.
pub async fn promoted_candidate_of_an_undone_switchover_follows_again(f: Flavor, prefix: &str) {
    use std::os::unix::process::ExitStatusExt;
    let env = Env::new(prefix).await;
    let mut spec = f.spec();
    spec["upgradePolicy"] = json!({"fenceTimeoutSeconds": 10});
    let sc = crate::faults::Scenario::prepare(&env, "db", f.source, spec).await;
    let first = sc.first_primary;
    let mut crashing = env.operator(&format!("{prefix}-crashing"), "db:promote@*#1");
    sc.set_version(f.target).await;
    let exit = tokio::time::timeout(LONG, crashing.child.wait())
        .await
        .unwrap_or_else(|_| panic!("never promoted:\n{}", tail(&crashing.logs(), 30)))
        .expect("wait");
    assert_eq!(exit.signal(), Some(9), "{}", tail(&crashing.logs(), 20));
    drop(crashing);
    let candidate = env
        .status("db")
        .await
        .upgrade
        .and_then(|u| u.switchover)
        .and_then(|sw| sw.candidate)
        .expect("the candidate on record");
    // It does not answer the next operator, which comes past the fence deadline.
    let hung = crate::faults::hang_member(&env, &candidate)
        .await
        .expect("the candidate's processes stopped");
    tokio::time::sleep(Duration::from_secs(11)).await;
    let op = env.operator(&format!("{prefix}-resumed"), "");
    let undoing = eventually(Duration::from_secs(60), || async {
        env.status("db").await.upgrade?.switchover?.undoing
    })
    .await;
    assert!(undoing.is_some(), "never undone:\n{}", tail(&op.logs(), 30));
    drop(hung);
    let out = sc.finish(&op, f.target).await;
    let failure = out
        .result
        .expect_err("the undone switchover fails the step");
    assert!(
        failure.contains("undone") && failure.contains("db-0 is the primary again"),
        "{failure}"
    );
    assert_eq!(env.primary_ip("db").await, first, "db-0 leads again");
    // And the status says so, once a pass has seen it (the step failed: no step wakes it).
    let standbys = eventually(Duration::from_secs(90), || async {
        let members = env.status("db").await.members;
        members
            .iter()
            .filter(|m| m.pod != "db-0")
            .all(|m| m.ready && m.role == Some(baton::crd::MemberRole::Standby))
            .then_some(())
    })
    .await;
    assert!(standbys.is_some(), "{:#?}", env.status("db").await.members);
    delete_namespace(&env.client, &env.ns).await;
}
