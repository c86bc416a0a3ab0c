//! The CRDs against the real kube-apiserver: they install, the examples are accepted, invalid
//! resources are rejected at admission with a message that names the field, and the printer
//! columns, short names, category and `kubectl explain` text are served.

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use baton_testkit::*;

fn api_for(client: &Client, kind: &str, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("baton.dev", "v1alpha1", kind);
    let plural = format!("{}s", kind.to_lowercase());
    let ar = ApiResource::from_gvk_with_plural(&gvk, &plural);
    if kind == "DatastoreVersion" {
        Api::all_with(client.clone(), &ar)
    } else {
        Api::namespaced_with(client.clone(), ns, &ar)
    }
}

fn object(kind: &str, name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "baton.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("object")
}

/// Creates the object and returns the API server's refusal message, failing if it was accepted.
async fn refused(client: &Client, ns: &str, kind: &str, name: &str, spec: Value) -> String {
    let api = api_for(client, kind, ns);
    match api
        .create(&PostParams::default(), &object(kind, name, spec))
        .await
    {
        Ok(_) => panic!("{kind}/{name} was accepted but should have been refused"),
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{kind}/{name}: {}", s.message);
            s.message
        }
        Err(e) => panic!("{kind}/{name}: unexpected error {e}"),
    }
}

async fn update_refused(client: &Client, ns: &str, kind: &str, name: &str, patch: Value) -> String {
    let api = api_for(client, kind, ns);
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => panic!("{kind}/{name} update {patch} was accepted but should have been refused"),
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{kind}/{name}: {}", s.message);
            s.message
        }
        Err(e) => panic!("{kind}/{name}: unexpected error {e}"),
    }
}

fn assert_names(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} should contain {n:?}");
    }
}

fn redis(version: &str) -> Value {
    json!({"type": "redis", "version": version})
}

#[tokio::test]
async fn every_crd_installs_with_names_columns_and_category() {
    let client = admin().await;
    install_crds(&client).await;
    let v = client.apiserver_version().await.expect("version");
    println!("testing against kube-apiserver {}", v.git_version);
    assert!(v.git_version.starts_with("v1.36."), "{}", v.git_version);

    let (ok, out, err) = run_tool(
        "kubectl",
        &["api-resources", "--api-group=baton.dev", "--no-headers"],
        None,
    );
    assert!(ok, "{err}");
    for (name, short, namespaced) in [
        ("datastoreversions", "dsv", "false"),
        ("databaseinstances", "dbi", "true"),
        ("clusters", "dbc", "true"),
        ("upgraderequests", "ur", "true"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not served: {out}"));
        assert!(line.contains(short), "{line}");
        assert!(line.split_whitespace().any(|w| w == namespaced), "{line}");
    }

    // The `baton` category lists every kind; printer columns are the documented ones.
    let ns = namespace(&client, "columns").await;
    // A catalog entry of this test's own (the examples test applies examples/catalog.yaml).
    let dsv_name = format!("columns-{ns}");
    let dsv = format!(
        "apiVersion: baton.dev/v1alpha1\nkind: DatastoreVersion\nmetadata:\n  name: {dsv_name}\nspec:\n  datastore: mysql\n  version: \"5.{}\"\n  image: mysql:5\n",
        rand::random::<u16>()
    );
    let (ok, _, err) = run_tool("kubectl", &["apply", "-f", "-"], Some(&dsv));
    assert!(ok, "{err}");
    for file in [
        "redis-ha.yaml",
        "upgrade-request.yaml",
        "redis-cluster.yaml",
    ] {
        let path = repo().join("examples").join(file);
        let (ok, _, err) = run_tool(
            "kubectl",
            &["apply", "-n", &ns, "-f", path.to_str().expect("path")],
            None,
        );
        assert!(ok, "{file}: {err}");
    }
    let header = |kind: &str| {
        let (ok, out, err) = run_tool("kubectl", &["get", kind, "-n", &ns], None);
        assert!(ok, "{err}");
        out.lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        header("dbi"),
        [
            "NAME",
            "DATASTORE",
            "VERSION",
            "STATUS",
            "PRIMARY",
            "REPLICAS",
            "AGE"
        ]
    );
    assert_eq!(
        header("ur"),
        [
            "NAME",
            "TYPE",
            "ACTION",
            "TARGET",
            "PHASE",
            "PROGRESS",
            "SUCCEEDED",
            "FAILED",
            "AGE"
        ]
    );
    assert_eq!(
        header("dbc"),
        ["NAME", "DATASTORE", "VERSION", "TASK", "SHARDS", "AGE"]
    );
    assert_eq!(
        header("dsv"),
        [
            "NAME",
            "DATASTORE",
            "VERSION",
            "IMAGE",
            "ACTIVE",
            "DEFAULT",
            "VALID",
            "AGE"
        ]
    );
    let (ok, out, err) = run_tool("kubectl", &["get", "baton", "-n", &ns, "-o", "name"], None);
    assert!(ok, "{err}");
    for expected in [
        "databaseinstance.baton.dev/sessions".to_string(),
        "upgraderequest.baton.dev/sessions-to-7".to_string(),
        "cluster.baton.dev/events".to_string(),
        format!("datastoreversion.baton.dev/{dsv_name}"),
    ] {
        assert!(
            out.lines().any(|l| l == expected.as_str()),
            "{expected} not in `kubectl get baton`: {out}"
        );
    }
    run_tool("kubectl", &["delete", "dsv", &dsv_name], None);
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn every_example_is_accepted() {
    let client = admin().await;
    install_crds(&client).await;
    let ns = namespace(&client, "examples").await;
    let mut files: Vec<_> = std::fs::read_dir(repo().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "expected the examples, found {files:?}");
    for f in &files {
        let (ok, out, err) = run_tool(
            "kubectl",
            &["apply", "-n", &ns, "-f", f.to_str().expect("path")],
            None,
        );
        assert!(ok, "{} was refused: {err}", f.display());
        assert!(
            out.contains("created") || out.contains("configured") || out.contains("unchanged"),
            "{out}"
        );
    }
    // Defaults are applied by the API server from the schema.
    let (ok, out, err) = run_tool(
        "kubectl",
        &[
            "get",
            "dbi",
            "cache",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.upgradePolicy.primaryUpdateMethod} {.spec.upgradePolicy.stepTimeoutSeconds} {.spec.paused}",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(out, "Switchover 600 false");
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn kubectl_explain_reads_well() {
    let client = admin().await;
    install_crds(&client).await;
    for (path, words) in [
        (
            "databaseinstance.spec.upgradePolicy.maxLagBytes",
            "pre-checks",
        ),
        (
            "databaseinstance.spec.upgradePolicy.fenceTimeoutSeconds",
            "unfenced",
        ),
        (
            "databaseinstance.status.upgrade.switchover.candidate",
            "after the fence",
        ),
        ("databaseinstance.spec.datastore.version", "rolling upgrade"),
        ("upgraderequest.spec.action", "AwaitingCommit"),
        ("upgraderequest.status.failedTargets", "failed"),
        ("datastoreversion.spec.upgradeFrom", "major upgrade"),
        ("cluster.spec.replicasPerShard", "standbys"),
    ] {
        let (ok, out, err) = run_tool("kubectl", &["explain", path], None);
        assert!(ok, "{path}: {err}");
        assert!(
            out.contains(words),
            "`kubectl explain {path}` lacks {words:?}:\n{out}"
        );
    }
}

#[tokio::test]
async fn invalid_resources_are_rejected_with_a_message_naming_the_field() {
    let client = admin().await;
    install_crds(&client).await;
    let ns = namespace(&client, "invalid").await;
    let dsv =
        |ds: &str, v: &str, image: Value| json!({"datastore": ds, "version": v, "image": image});

    // Schema: enums, required fields, patterns, ranges.
    let m = refused(
        &client,
        &ns,
        "DatastoreVersion",
        "bad-enum",
        dsv("mongodb", "7.0", json!("mongo:7")),
    )
    .await;
    assert_names(&m, &["spec.datastore", "Unsupported value", "\"redis\""]);
    let m = refused(
        &client,
        &ns,
        "DatastoreVersion",
        "no-image",
        json!({"datastore": "redis", "version": "7.0.15"}),
    )
    .await;
    assert_names(&m, &["spec.image", "Required value"]);
    let m = refused(
        &client,
        &ns,
        "DatastoreVersion",
        "bad-version",
        dsv("redis", "seven", json!("redis:7")),
    )
    .await;
    assert_names(&m, &["spec.version", "should match"]);
    let m = refused(
        &client,
        &ns,
        "DatabaseInstance",
        "zero",
        json!({"datastore": redis("7.0.15"), "replicas": 0}),
    )
    .await;
    assert_names(&m, &["spec.replicas", "greater than or equal to 1"]);
    let m = refused(
        &client,
        &ns,
        "DatabaseInstance",
        "hasty",
        json!({"datastore": redis("7.0.15"), "replicas": 3, "failover": {"enabled": true, "afterSeconds": 1}}),
    )
    .await;
    assert_names(
        &m,
        &["spec.failover.afterSeconds", "greater than or equal to 5"],
    );
    // Synchronous durability needs a standby to acknowledge, and an engine that has it.
    let m = refused(
        &client,
        &ns,
        "DatabaseInstance",
        "lonely",
        json!({"datastore": {"type": "postgresql", "version": "16.13"}, "durability": "Replicated"}),
    )
    .await;
    assert_names(&m, &["spec.durability", "set replicas to 2 or more"]);
    let m = refused(
        &client,
        &ns,
        "DatabaseInstance",
        "waitless",
        json!({"datastore": redis("7.0.15"), "replicas": 3, "durability": "Replicated"}),
    )
    .await;
    assert_names(&m, &["spec.durability", "WAIT 1"]);
    let m = refused(
        &client,
        &ns,
        "DatabaseInstance",
        "mysql-sync",
        json!({"datastore": {"type": "mysql", "version": "8.4.3"}, "replicas": 3, "durability": "Replicated"}),
    )
    .await;
    assert_names(&m, &["spec.durability", "MySQL members are not built"]);
    let m = refused(
        &client,
        &ns,
        "DatabaseInstance",
        "badver",
        json!({"datastore": redis("7.0.x")}),
    )
    .await;
    assert_names(&m, &["spec.datastore.version", "should match"]);
    let m = refused(
        &client,
        &ns,
        "DatabaseInstance",
        "method",
        json!({"datastore": redis("7.0.15"), "upgradePolicy": {"primaryUpdateMethod": "Failover"}}),
    )
    .await;
    assert_names(
        &m,
        &[
            "spec.upgradePolicy.primaryUpdateMethod",
            "Unsupported value",
        ],
    );
    let m = refused(&client, &ns, "DatabaseInstance", "window", json!({"datastore": redis("7.0.15"), "maintenanceWindow": {"dayOfWeek": "Sunday", "startTime": "25:00"}})).await;
    assert_names(&m, &["spec.maintenanceWindow.startTime", "should match"]);
    let m = refused(
        &client,
        &ns,
        "Cluster",
        "noshards",
        json!({"datastore": redis("7.0.15"), "shards": 0}),
    )
    .await;
    assert_names(&m, &["spec.shards", "greater than or equal to 1"]);
    let m = refused(
        &client,
        &ns,
        "UpgradeRequest",
        "badtype",
        json!({"targets": {"instances": ["a"]}, "type": "BlueGreen"}),
    )
    .await;
    assert_names(&m, &["spec.type", "Unsupported value"]);
    let m = refused(
        &client,
        &ns,
        "UpgradeRequest",
        "conc",
        json!({"targets": {"instances": ["a"]}, "maxConcurrent": 0}),
    )
    .await;
    assert_names(&m, &["spec.maxConcurrent", "greater than or equal to 1"]);
    let m = refused(
        &client,
        &ns,
        "UpgradeRequest",
        "tv",
        json!({"targets": {"instances": ["a"]}, "targetVersion": "latest"}),
    )
    .await;
    assert_names(&m, &["spec.targetVersion", "should match"]);

    // CEL rules the API server decides alone.
    let m = refused(&client, &ns, "DatastoreVersion", "inactive-default", json!({"datastore": "redis", "version": "1.0", "image": "redis:1", "active": false, "default": true})).await;
    assert_names(
        &m,
        &["spec.default", "inactive version cannot be the default"],
    );
    let m = refused(
        &client,
        &ns,
        "UpgradeRequest",
        "notargets",
        json!({"targets": {}}),
    )
    .await;
    assert_names(&m, &["spec.targets", "at least one target is required"]);
    let m = refused(
        &client,
        &ns,
        "UpgradeRequest",
        "starts-commit",
        json!({"targets": {"instances": ["a"]}, "action": "Commit"}),
    )
    .await;
    assert_names(&m, &["spec.action", "cannot start with Commit or Rollback"]);
    let m = refused(
        &client,
        &ns,
        "UpgradeRequest",
        "inplace-upgrade",
        json!({"targets": {"instances": ["a"]}, "type": "InPlace", "action": "Upgrade"}),
    )
    .await;
    assert_names(
        &m,
        &["spec.action", "type InPlace restarts every member together"],
    );
    // A planned switchover: no version, no commit stage, one instance to name a member of.
    for (name, spec, field, words) in [
        (
            "sw-version",
            json!({"targets": {"instances": ["a"]}, "type": "Switchover", "targetVersion": "7.0.15"}),
            "spec.type",
            "type Switchover keeps every target's version",
        ),
        (
            "sw-hold",
            json!({"targets": {"instances": ["a"]}, "type": "Switchover", "action": "Upgrade"}),
            "spec.action",
            "type Switchover hands the primary role over in one step",
        ),
        (
            "sw-cluster",
            json!({"targets": {"clusters": ["c"]}, "type": "Switchover"}),
            "spec.targets",
            "type Switchover moves the primary of DatabaseInstances",
        ),
        (
            "sw-two",
            json!({"targets": {"instances": ["a", "b"]}, "type": "Switchover", "switchoverTo": "a-1"}),
            "spec.switchoverTo",
            "switchoverTo names a member of one instance",
        ),
        (
            "sw-rolling",
            json!({"targets": {"instances": ["a"]}, "switchoverTo": "a-1"}),
            "spec.switchoverTo",
            "with type Switchover",
        ),
    ] {
        let m = refused(&client, &ns, "UpgradeRequest", name, spec).await;
        assert_names(&m, &[field, words]);
    }

    // Transition rules: immutable targets and targetVersion, allowed action moves.
    let api = api_for(&client, "UpgradeRequest", &ns);
    for (name, action) in [
        ("auto", "UpgradeAutoCommit"),
        ("staged", "Upgrade"),
        ("staged2", "Upgrade"),
    ] {
        api.create(
            &PostParams::default(),
            &object("UpgradeRequest", name, json!({"targets": {"instances": ["a"]}, "targetVersion": "7.0.15", "action": action})),
        )
        .await
        .unwrap_or_else(|e| panic!("valid request {name} refused: {e}"));
    }
    let m = update_refused(
        &client,
        &ns,
        "UpgradeRequest",
        "auto",
        json!({"spec": {"targets": {"instances": ["b"]}}}),
    )
    .await;
    assert_names(&m, &["spec.targets", "targets are immutable"]);
    let m = update_refused(
        &client,
        &ns,
        "UpgradeRequest",
        "auto",
        json!({"spec": {"targetVersion": "7.2.4"}}),
    )
    .await;
    assert_names(&m, &["spec.targetVersion", "targetVersion is immutable"]);
    let m = update_refused(
        &client,
        &ns,
        "UpgradeRequest",
        "auto",
        json!({"spec": {"targetVersion": null}}),
    )
    .await;
    assert_names(&m, &["spec.targetVersion", "targetVersion is immutable"]);
    let m = update_refused(
        &client,
        &ns,
        "UpgradeRequest",
        "auto",
        json!({"spec": {"action": "Commit"}}),
    )
    .await;
    assert_names(
        &m,
        &[
            "spec.action",
            "may only move from Upgrade to Commit or Rollback, or to Cancel",
        ],
    );
    let m = update_refused(
        &client,
        &ns,
        "UpgradeRequest",
        "auto",
        json!({"spec": {"type": "InPlace"}}),
    )
    .await;
    assert_names(&m, &["spec.type", "type is immutable"]);

    // The allowed moves are accepted: Upgrade → Commit, Upgrade → Rollback, anything → Cancel;
    // nothing leaves Cancel.
    let ok = |name: &'static str, action: &'static str| {
        let api = api.clone();
        async move {
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"action": action}})),
            )
            .await
            .unwrap_or_else(|e| panic!("{name} → {action} refused: {e}"));
        }
    };
    ok("staged", "Commit").await;
    ok("staged2", "Rollback").await;
    ok("auto", "Cancel").await;
    let m = update_refused(
        &client,
        &ns,
        "UpgradeRequest",
        "auto",
        json!({"spec": {"action": "Upgrade"}}),
    )
    .await;
    assert_names(&m, &["spec.action", "may only move"]);

    // A datastore type never changes in place.
    let inst = api_for(&client, "DatabaseInstance", &ns);
    inst.create(
        &PostParams::default(),
        &object(
            "DatabaseInstance",
            "typed",
            json!({"datastore": redis("7.0.15")}),
        ),
    )
    .await
    .expect("valid instance");
    let m = update_refused(
        &client,
        &ns,
        "DatabaseInstance",
        "typed",
        json!({"spec": {"datastore": {"type": "postgresql"}}}),
    )
    .await;
    assert_names(&m, &["spec.datastore.type", "datastore type is immutable"]);

    // A cluster's shard count is fixed (resharding is not supported).
    api_for(&client, "Cluster", &ns)
        .create(
            &PostParams::default(),
            &object(
                "Cluster",
                "sharded",
                json!({"datastore": redis("7.0.15"), "shards": 3}),
            ),
        )
        .await
        .expect("valid cluster");
    let m = update_refused(
        &client,
        &ns,
        "Cluster",
        "sharded",
        json!({"spec": {"shards": 4}}),
    )
    .await;
    assert_names(&m, &["spec.shards", "resharding is not supported"]);

    // kubectl shows the same messages to a person applying a bad file.
    let bad = "apiVersion: baton.dev/v1alpha1\nkind: DatabaseInstance\nmetadata:\n  name: k\nspec:\n  datastore: {type: redis, version: \"7.0.15\"}\n  replicas: 0\n";
    let (ok, _, err) = run_tool("kubectl", &["apply", "-n", &ns, "-f", "-"], Some(bad));
    assert!(!ok);
    assert!(err.contains("spec.replicas"), "{err}");

    delete_namespace(&client, &ns).await;
}
