//! GitOps health without custom code: the verdicts of kstatus itself (sigs.k8s.io/cli-utils,
//! what Flux's health checks use) and of Argo CD's Lua health check (gitops/argocd/argocd-cm.yaml,
//! run by gopher-lua as Argo CD runs it), computed by tests/health's checker over the objects as
//! the API server returns them: an instance Active, Upgrading, drifted by a request and in Error;
//! a request in each phase; catalog entries valid and invalid; Clusters formed and refused.

use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use baton::crd::{Datastore, DatastoreVersion, DatastoreVersionSpec, InstancePhase, RequestPhase};
use baton_testkit::env::*;
use baton_testkit::*;

/// (kstatus, Argo CD) health of one object, read with kubectl as a GitOps tool reads it.
fn health(ns: Option<&str>, resource: &str, name: &str) -> (String, String, String) {
    let mut args = vec!["get", resource, name, "-o", "json"];
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    let (ok, obj, err) = run_tool("kubectl", &args, None);
    assert!(ok, "kubectl get {resource} {name}: {err}");
    let list = format!("[{obj}]");
    let cm = repo().join("gitops/argocd/argocd-cm.yaml");
    let (ok, out, err) = run_tool("baton-health", &[cm.to_str().expect("path")], Some(&list));
    assert!(ok, "baton-health: {err}");
    let v: Value = serde_json::from_str(out.trim()).expect("verdict");
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    (
        s("kstatus"),
        s("argo"),
        format!("{} / {}", s("kstatusMessage"), s("argoMessage")),
    )
}

/// Waits until the object's verdict is (kstatus, argo); panics with the last one.
async fn expect(ns: Option<&str>, resource: &str, name: &str, kstatus: &str, argo: &str) {
    let mut last = (String::new(), String::new(), String::new());
    let got = eventually(Duration::from_secs(60), || {
        last = health(ns, resource, name);
        let hit = last.0 == kstatus && last.1 == argo;
        async move { hit.then_some(()) }
    })
    .await;
    assert!(
        got.is_some(),
        "{resource}/{name}: expected kstatus {kstatus} and Argo CD {argo}, got {last:?}"
    );
    println!(
        "{resource}/{name}: kstatus {kstatus}, Argo CD {argo} ({})",
        last.2
    );
}

fn request(name: &str, spec: Value) -> String {
    serde_json::to_string(&json!({
        "apiVersion": "baton.dev/v1alpha1", "kind": "UpgradeRequest",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("json")
}

#[tokio::test]
async fn kstatus_and_argo_cd_read_every_kind_as_its_phase_says() {
    let (env, op) = Env::with_active(
        "gitops",
        "db",
        2,
        json!({"upgradePolicy": {"stepTimeoutSeconds": 15}}),
    )
    .await;
    let ns = Some(env.ns.as_str());
    let apply = |name: &str, spec: Value| {
        let (ok, _, err) = run_tool(
            "kubectl",
            &["apply", "-n", &env.ns, "-f", "-"],
            Some(&request(name, spec)),
        );
        assert!(ok, "{err}");
    };

    // Active.
    expect(ns, "dbi", "db", "Current", "Healthy").await;

    // Upgrading, held in AwaitingCommit: the instance is in progress, the request has done
    // what action Upgrade asks (Argo CD: Suspended, waiting for a person).
    apply(
        "held",
        json!({"targets": {"instances": ["db"]}, "targetVersion": TARGET, "action": "Upgrade"}),
    );
    wait_request(&env, "held", RequestPhase::AwaitingCommit, &op).await;
    expect(ns, "dbi", "db", "InProgress", "Progressing").await;
    expect(ns, "ur", "held", "Current", "Suspended").await;

    // RolledBack, as asked.
    set_action(&env, "held", "Rollback").await;
    wait_request(&env, "held", RequestPhase::RolledBack, &op).await;
    expect(ns, "ur", "held", "Current", "Healthy").await;
    env.wait_for("db", InstancePhase::Active, SOURCE, &op).await;

    // Succeeded; the instance's spec is left behind by the request: drift, not a failure.
    apply(
        "up",
        json!({"targets": {"instances": ["db"]}, "targetVersion": TARGET}),
    );
    wait_request(&env, "up", RequestPhase::Succeeded, &op).await;
    expect(ns, "ur", "up", "Current", "Healthy").await;
    env.wait_for("db", InstancePhase::Active, TARGET, &op).await;
    expect(ns, "dbi", "db", "Current", "Healthy").await;

    // Failed: a target that does not exist.
    apply(
        "ghost",
        json!({"targets": {"instances": ["nobody"]}, "targetVersion": TARGET}),
    );
    wait_request(&env, "ghost", RequestPhase::Failed, &op).await;
    expect(ns, "ur", "ghost", "Failed", "Degraded").await;
    env.create("single", 1, json!({})).await;
    env.wait_for("single", InstancePhase::Active, SOURCE, &op)
        .await;

    // Cancelled before it started: scheduled for a window days away, then cancelled.
    let day = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ][((jiff::Timestamp::now().as_second() / 86400 + 3 + 3) % 7) as usize];
    env.patch_spec(
        "single",
        json!({"maintenanceWindow": {"dayOfWeek": day, "startTime": "03:00", "durationMinutes": 30}}),
    )
    .await;
    apply(
        "later",
        json!({"targets": {"instances": ["single"]}, "targetVersion": TARGET, "schedule": "MaintenanceWindow"}),
    );
    wait_request(&env, "later", RequestPhase::Scheduled, &op).await;
    expect(ns, "ur", "later", "InProgress", "Progressing").await;
    set_action(&env, "later", "Cancel").await;
    wait_request(&env, "later", RequestPhase::Cancelled, &op).await;
    expect(ns, "ur", "later", "Current", "Healthy").await;
    // PartiallySucceeded: one of two targets upgraded.
    apply(
        "half",
        json!({"targets": {"instances": ["single", "nobody"]}, "targetVersion": TARGET}),
    );
    wait_request(&env, "half", RequestPhase::PartiallySucceeded, &op).await;
    expect(ns, "ur", "half", "Failed", "Degraded").await;

    // Paused: Argo CD shows it Suspended.
    env.patch_spec("single", json!({"paused": true})).await;
    expect(ns, "dbi", "single", "Current", "Suspended").await;

    // Error: a spec-driven upgrade to a version whose image cannot start fails at the step
    // deadline and stops in phase Error.
    env.add_broken_version(REDIS).await;
    env.patch_spec(
        "db",
        json!({"datastore": {"type": "redis", "version": REDIS.broken}}),
    )
    .await;
    let error = eventually(Duration::from_secs(90), || async {
        let s = env.instances.get("db").await.ok()?.status?;
        (s.phase == Some(InstancePhase::Error)).then_some(())
    })
    .await;
    assert!(
        error.is_some(),
        "db never reached Error:\n{}",
        tail(&op.logs(), 20)
    );
    expect(ns, "dbi", "db", "Failed", "Degraded").await;

    // The catalog: a valid entry, and a duplicate that a person must remove.
    let dvs = Api::<DatastoreVersion>::all(env.client.clone());
    let version = format!("9.{}.{}", rand::random::<u16>(), rand::random::<u16>());
    let (a, b) = (format!("{}-a", env.ns), format!("{}-b", env.ns));
    for n in [&a, &b] {
        let dv = DatastoreVersion::new(
            n,
            DatastoreVersionSpec {
                datastore: Datastore::Mysql,
                version: version.clone(),
                image: format!("mysql:{version}"),
                active: true,
                default: false,
                upgrade_from: vec![],
            },
        );
        if n == &b {
            expect(None, "dsv", &a, "Current", "Healthy").await;
        }
        dvs.create(&PostParams::default(), &dv)
            .await
            .expect("create entry");
    }
    expect(None, "dsv", &b, "Failed", "Degraded").await;
    for n in [&a, &b] {
        let _ = dvs.delete(n, &DeleteParams::default()).await;
    }

    // Clusters: one formed and Ready, one of a datastore Baton does not run as a Cluster.
    let clusters = Api::<baton::crd::Cluster>::namespaced(env.client.clone(), &env.ns);
    for (name, ds) in [("tiny", "redis"), ("pg", "postgresql")] {
        let version = if ds == "redis" { TARGET } else { PG_SOURCE };
        let c: baton::crd::Cluster = serde_json::from_value(json!({
            "apiVersion": "baton.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": name},
            "spec": {"datastore": {"type": ds, "version": version}, "shards": 1, "replicasPerShard": 1}
        }))
        .expect("cluster");
        clusters
            .patch(name, &PatchParams::apply("baton-tests"), &Patch::Apply(&c))
            .await
            .expect("apply cluster");
    }
    expect(ns, "dbc", "pg", "Failed", "Degraded").await;
    let ready = eventually(Duration::from_secs(120), || async {
        let s = clusters.get("tiny").await.ok()?.status?;
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await;
    assert!(
        ready.is_some(),
        "the Cluster never formed:\n{}",
        tail(&op.logs(), 20)
    );
    expect(ns, "dbc", "tiny", "Current", "Healthy").await;
    delete_namespace(&env.client, &env.ns).await;
}
