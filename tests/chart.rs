//! The Helm chart against the real API server: lint, `helm template | kubectl apply
//! --dry-run=server`, `helm install`, and the operator running with exactly the chart's RBAC
//! (a token minted for the chart's ServiceAccount).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde::Deserialize;
use serde_json::json;

use baton::crd::{Datastore, DatastoreVersion, DatastoreVersionSpec};
use baton_testkit::*;

const CHART: &str = "charts/baton";

fn chart() -> String {
    repo().join(CHART).display().to_string()
}

#[test]
fn helm_lint_is_clean() {
    for extra in [
        vec![],
        vec![
            "--set",
            "catalog.enabled=true",
            "--set",
            "metrics.serviceMonitor.enabled=true",
        ],
        vec![
            "--set",
            "leaderElection.enabled=false",
            "--set",
            "metrics.service.enabled=false",
        ],
    ] {
        let mut args = vec!["lint", "--strict", "--kube-version", "1.36.0"];
        let c = chart();
        args.push(&c);
        args.extend(extra.iter().copied());
        let (ok, out, err) = run_tool("helm", &args, None);
        assert!(ok, "helm lint {extra:?} failed:\n{out}\n{err}");
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

#[tokio::test]
async fn helm_template_passes_server_side_dry_run() {
    let client = admin().await;
    install_crds(&client).await;
    let ns = namespace(&client, "template").await;
    let (ok, rendered, err) = run_tool(
        "helm",
        &[
            "template",
            "baton",
            &chart(),
            "--namespace",
            &ns,
            "--include-crds",
            "--set",
            "catalog.enabled=true",
        ],
        None,
    );
    assert!(ok, "helm template: {err}");
    for kind in [
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "Service",
        "DatastoreVersion",
        "CustomResourceDefinition",
    ] {
        assert!(
            rendered.contains(&format!("kind: {kind}\n")),
            "rendered chart has no {kind}"
        );
    }
    let (ok, out, err) = run_tool(
        "kubectl",
        // Server-side apply: create-or-update is one request, so a catalog entry another test
        // creates meanwhile cannot turn the dry run into an AlreadyExists race.
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--dry-run=server",
            "-n",
            &ns,
            "-f",
            "-",
        ],
        Some(&rendered),
    );
    assert!(ok, "server-side dry run refused the chart:\n{err}");
    assert!(
        out.contains("deployment.apps/baton serverside-applied (server dry run)"),
        "{out}"
    );
    delete_namespace(&client, &ns).await;
}

fn catalog_entry(name: &str, ds: Datastore, version: &str, default: bool) -> DatastoreVersion {
    DatastoreVersion::new(
        name,
        DatastoreVersionSpec {
            datastore: ds,
            version: version.into(),
            image: format!("{ds}:{version}"),
            active: true,
            default,
            upgrade_from: vec![],
        },
    )
}

async fn valid_condition(
    api: &Api<DatastoreVersion>,
    name: &str,
) -> Option<(String, String, String)> {
    let dv = api.get(name).await.ok()?;
    let st = dv.status?;
    (st.observed_generation == dv.metadata.generation).then_some(())?;
    let c = st.conditions.into_iter().find(|c| c.type_ == "Valid")?;
    Some((c.status, c.reason, c.message))
}

#[tokio::test]
async fn operator_runs_with_exactly_the_charts_rbac() {
    let client = admin().await;
    install_crds(&client).await;
    let ns = namespace(&client, "install").await;
    let dir = tempfile::tempdir().expect("tempdir");

    // The chart's own pod would run a second, cluster-wide operator beside this test's process
    // (tests/chart_pod.rs runs that pod): no replicas here, and its namespace only.
    let watch = format!("watchNamespace={ns}");
    let (ok, out, err) = run_tool(
        "helm",
        &[
            "install",
            "baton",
            &chart(),
            "--namespace",
            &ns,
            "--set",
            "replicaCount=0",
            "--set",
            &watch,
        ],
        None,
    );
    assert!(ok, "helm install failed:\n{out}\n{err}");
    let (ok, out, _) = run_tool("helm", &["status", "baton", "--namespace", &ns], None);
    assert!(ok && out.contains("STATUS: deployed"), "{out}");

    // A token for the chart's ServiceAccount, from the TokenRequest API.
    let (ok, token, err) = run_tool(
        "kubectl",
        &["create", "token", "baton", "-n", &ns, "--duration=1h"],
        None,
    );
    assert!(ok, "kubectl create token: {err}");
    let kubeconfig = kubeconfig_with_token(token.trim(), &ns, dir.path());
    let sa = client_from(&kubeconfig).await;

    let mut op = Operator::start(
        &kubeconfig,
        dir.path(),
        "chart-sa",
        &[
            &format!("--lease-namespace={ns}"),
            &format!("--namespace={ns}"),
        ],
    );
    assert!(
        op.wait_ready(Duration::from_secs(60)).await,
        "operator never became ready:\n{}",
        op.logs()
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            op.is_leader().await.then_some(())
        })
        .await
        .is_some(),
        "operator never led:\n{}",
        op.logs()
    );
    let lease = Api::<Lease>::namespaced(client.clone(), &ns)
        .get("baton-leader")
        .await
        .expect("lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("chart-sa")
    );

    // The catalog controller writes status with the chart's RBAC: a valid entry, and a duplicate
    // that is reported with a reason and a Warning Event.
    let dvs = Api::<DatastoreVersion>::all(client.clone());
    let version = format!("8.{}.{}", rand::random::<u16>(), rand::random::<u16>());
    let (a, b) = (format!("{ns}-a"), format!("{ns}-b"));
    dvs.create(
        &PostParams::default(),
        &catalog_entry(&a, Datastore::Mysql, &version, false),
    )
    .await
    .expect("create a");
    let valid = eventually(Duration::from_secs(30), || valid_condition(&dvs, &a)).await;
    assert_eq!(
        valid.as_ref().map(|v| v.0.as_str()),
        Some("True"),
        "{valid:?}\n{}",
        op.logs()
    );
    dvs.create(
        &PostParams::default(),
        &catalog_entry(&b, Datastore::Mysql, &version, false),
    )
    .await
    .expect("create b");
    let dup = eventually(Duration::from_secs(30), || async {
        valid_condition(&dvs, &b).await.filter(|v| v.0 == "False")
    })
    .await
    .unwrap_or_else(|| panic!("duplicate never reported:\n{}", op.logs()));
    assert_eq!(dup.1, "DuplicateVersion");
    assert!(dup.2.contains(&a), "{}", dup.2);
    // The first entry is re-checked when its sibling appears.
    let a_now = eventually(Duration::from_secs(30), || async {
        valid_condition(&dvs, &a).await.filter(|v| v.0 == "False")
    })
    .await;
    assert!(a_now.is_some_and(|v| v.2.contains(&b)));
    let events = Api::<Event>::namespaced(client.clone(), "default");
    let found = eventually(Duration::from_secs(30), || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(b.as_str())
                    && e.reason.as_deref() == Some("DuplicateVersion")
                    && e.type_.as_deref() == Some("Warning")
            })
    })
    .await;
    assert!(found.is_some(), "no DuplicateVersion event for {b}");
    // Removing the duplicate makes the first entry valid again.
    dvs.delete(&b, &DeleteParams::default())
        .await
        .expect("delete b");
    let healed = eventually(Duration::from_secs(30), || async {
        valid_condition(&dvs, &a).await.filter(|v| v.0 == "True")
    })
    .await;
    assert!(
        healed.is_some(),
        "entry {a} stayed invalid after its duplicate was deleted"
    );

    // The instance controller works with the chart's RBAC too: a single Redis comes up Active.
    let catalog: Vec<DatastoreVersion> = serde_yaml_ng::Deserializer::from_str(
        &std::fs::read_to_string(repo().join("examples/catalog.yaml")).expect("catalog"),
    )
    .map(|d| serde::Deserialize::deserialize(d).expect("entry"))
    .collect();
    for dv in &catalog {
        let name = dv.metadata.name.clone().expect("name");
        let _ = dvs
            .patch(
                &name,
                &PatchParams::apply("baton-tests").force(),
                &Patch::Apply(dv),
            )
            .await;
    }
    let (ok, _, err) = run_tool(
        "kubectl",
        &[
            "apply",
            "-n",
            &ns,
            "-f",
            &repo()
                .join("examples/redis-single.yaml")
                .display()
                .to_string(),
        ],
        None,
    );
    assert!(ok, "{err}");
    let instances = Api::<baton::crd::DatabaseInstance>::namespaced(client.clone(), &ns);
    let active = eventually(Duration::from_secs(120), || async {
        let st = instances.get("cache").await.ok()?.status?;
        (st.phase == Some(baton::crd::InstancePhase::Active)).then_some(())
    })
    .await;
    assert!(
        active.is_some(),
        "the instance never became Active under the chart's RBAC:\n{}",
        op.logs()
    );
    // A single PostgreSQL too: its generated credentials Secret is created and checked with
    // the chart's Secrets grant (get, create; list stays refused, below).
    let pg = "apiVersion: baton.dev/v1alpha1\nkind: DatabaseInstance\nmetadata:\n  name: pg\nspec:\n  datastore: {type: postgresql, version: \"16.13\"}\n  replicas: 1\n";
    let (ok, _, err) = run_tool("kubectl", &["apply", "-n", &ns, "-f", "-"], Some(pg));
    assert!(ok, "{err}");
    let active = eventually(Duration::from_secs(120), || async {
        let st = instances.get("pg").await.ok()?.status?;
        (st.phase == Some(baton::crd::InstancePhase::Active)).then_some(())
    })
    .await;
    assert!(
        active.is_some(),
        "the PostgreSQL instance never became Active under the chart's RBAC:\n{}",
        op.logs()
    );
    assert!(
        Api::<Secret>::namespaced(client.clone(), &ns)
            .get_opt("pg-credentials")
            .await
            .expect("read Secret")
            .is_some(),
        "no generated credentials Secret"
    );
    let copy = Api::<Secret>::namespaced(client.clone(), &ns)
        .get_opt("pg-credentials-applied")
        .await
        .expect("read Secret");
    let original = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("pg-credentials")
        .await
        .expect("read Secret");
    assert_eq!(
        copy.and_then(|c| c.data),
        original.data,
        "the applied copy holds the generated values"
    );
    // And the request controller: finalizer, claim through the instance's status, summary.
    let request = "apiVersion: baton.dev/v1alpha1\nkind: UpgradeRequest\nmetadata:\n  name: cache-to-7\nspec:\n  targets:\n    instances: [cache]\n  targetVersion: \"7.0.15\"\n";
    let (ok, _, err) = run_tool("kubectl", &["apply", "-n", &ns, "-f", "-"], Some(request));
    assert!(ok, "{err}");
    let requests = Api::<baton::crd::UpgradeRequest>::namespaced(client.clone(), &ns);
    let succeeded = eventually(Duration::from_secs(120), || async {
        let st = requests.get("cache-to-7").await.ok()?.status?;
        (st.phase == Some(baton::crd::RequestPhase::Succeeded) && st.succeeded == 1).then_some(())
    })
    .await;
    assert!(
        succeeded.is_some(),
        "the request never succeeded under the chart's RBAC:\n{}",
        op.logs()
    );

    // And the Cluster controller: its shard, Secret and NetworkPolicy, the formation and its
    // status, on the smallest real Redis Cluster (one shard of one node).
    let cluster = "apiVersion: baton.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: tiny\nspec:\n  datastore: {type: redis, version: \"7.0.15\"}\n  shards: 1\n  replicasPerShard: 1\n";
    let (ok, _, err) = run_tool("kubectl", &["apply", "-n", &ns, "-f", "-"], Some(cluster));
    assert!(ok, "{err}");
    let clusters = Api::<baton::crd::Cluster>::namespaced(client.clone(), &ns);
    let ready = eventually(Duration::from_secs(120), || async {
        let st = clusters.get("tiny").await.ok()?.status?;
        let ready = st
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        (ready && st.shards.len() == 1 && st.shards[0].slots == ["0-16383"]).then_some(())
    })
    .await;
    assert!(
        ready.is_some(),
        "the Cluster never became Ready under the chart's RBAC: {:#?}\n{}",
        clusters.get("tiny").await.ok().and_then(|c| c.status),
        op.logs()
    );

    // Verbs the chart does not grant are refused for the operator's identity.
    let sa_dvs = Api::<DatastoreVersion>::all(sa.clone());
    let forbidden =
        |r: Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);
    assert!(forbidden(
        sa_dvs
            .delete(&a, &DeleteParams::default())
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        sa_dvs
            .patch(
                &a,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"active": false}}))
            )
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<Secret>::namespaced(sa.clone(), &ns)
            .list(&ListParams::default())
            .await
            .map(|_| ())
    ));
    // Secrets: read by name, created and patched (the applied copy), never replaced, deleted
    // or listed; NetworkPolicies applied, never deleted.
    assert!(forbidden(
        Api::<Secret>::namespaced(sa.clone(), &ns)
            .delete("anything", &DeleteParams::default())
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<Secret>::namespaced(sa.clone(), &ns)
            .replace("anything", &Default::default(), &Secret::default())
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(sa.clone(), &ns)
            .delete("anything", &DeleteParams::default())
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<Lease>::namespaced(sa.clone(), "default")
            .get("baton-leader")
            .await
            .map(|_| ())
    ));

    // SIGTERM: a clean exit that releases the lease.
    let status = op
        .terminate(Duration::from_secs(30))
        .await
        .expect("operator did not exit on SIGTERM");
    assert!(status.success(), "exit status {status:?}:\n{}", op.logs());
    let lease = Api::<Lease>::namespaced(client.clone(), &ns)
        .get("baton-leader")
        .await
        .expect("lease");
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert_ne!(holder, "chart-sa", "lease still held after shutdown");

    dvs.delete(&a, &DeleteParams::default())
        .await
        .expect("delete a");
    let (ok, _, err) = run_tool("helm", &["uninstall", "baton", "--namespace", &ns], None);
    assert!(ok, "{err}");
    // CRDs are kept on uninstall.
    let crds = Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(client.clone());
    for crd in baton::crd::all() {
        let name = crd.metadata.name.expect("name");
        let live = crds
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("CRD {name} gone after uninstall: {e}"));
        assert!(
            live.metadata.deletion_timestamp.is_none(),
            "CRD {name} is being deleted"
        );
    }
    delete_namespace(&client, &ns).await;
}

/// The DatastoreVersions in a multi-document YAML text, as (name, spec) pairs.
fn catalog_of(yaml: &str) -> Vec<(String, serde_json::Value)> {
    let mut out: Vec<(String, serde_json::Value)> = serde_yaml_ng::Deserializer::from_str(yaml)
        .filter_map(|d| serde_json::Value::deserialize(d).ok())
        .filter(|v| v["kind"] == "DatastoreVersion")
        .map(|v| {
            let dv: DatastoreVersion = serde_json::from_value(v).expect("a DatastoreVersion");
            let name = dv.metadata.name.clone().expect("name");
            (name, serde_json::to_value(&dv.spec).expect("spec"))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn the_charts_catalog_is_the_example_catalog() {
    let (ok, rendered, err) = run_tool(
        "helm",
        &[
            "template",
            "baton",
            &chart(),
            "--set",
            "catalog.enabled=true",
        ],
        None,
    );
    assert!(ok, "{err}");
    let example =
        std::fs::read_to_string(repo().join("examples/catalog.yaml")).expect("example catalog");
    let (chart, example) = (catalog_of(&rendered), catalog_of(&example));
    assert_eq!(chart.len(), 12, "{chart:?}");
    assert_eq!(
        chart, example,
        "the chart's catalog and examples/catalog.yaml must list the same entries"
    );
    assert!(
        rendered.contains("helm.sh/resource-policy: keep"),
        "catalog entries must survive helm uninstall"
    );
}

#[tokio::test]
async fn the_chart_adopts_an_applied_example_catalog_and_keeps_it_on_uninstall() {
    let client = admin().await;
    baton_testkit::env::ensure_catalog(&client).await;
    let ns = namespace(&client, "catalog").await;
    let release = format!("baton-{}", ns.rsplit('-').next().unwrap_or("x"));
    // No operator pod: this release only carries the catalog (and its RBAC).
    let args = [
        "install",
        release.as_str(),
        &chart(),
        "--namespace",
        &ns,
        "--set",
        "catalog.enabled=true",
        "--set",
        "replicaCount=0",
    ];
    let (ok, _, err) = run_tool("helm", &args, None);
    assert!(
        !ok,
        "installing over the applied example catalog must need --take-ownership"
    );
    assert!(err.contains("DatastoreVersion"), "{err}");
    let mut adopt = args.to_vec();
    adopt.push("--take-ownership");
    let (ok, out, err) = run_tool("helm", &adopt, None);
    assert!(ok, "helm install --take-ownership:\n{out}\n{err}");
    let dvs = Api::<DatastoreVersion>::all(client.clone());
    let entry = dvs.get("redis-7.0.15").await.expect("entry");
    assert_eq!(
        entry
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("meta.helm.sh/release-name")),
        Some(&release),
        "the release did not adopt the entry"
    );
    let (ok, _, err) = run_tool("helm", &["uninstall", &release, "--namespace", &ns], None);
    assert!(ok, "{err}");
    for (name, _) in
        catalog_of(&std::fs::read_to_string(repo().join("examples/catalog.yaml")).expect("catalog"))
    {
        let kept = dvs.get_opt(&name).await.expect("get");
        assert!(
            kept.is_some_and(|d| d.metadata.deletion_timestamp.is_none()),
            "{name} was removed with the release"
        );
    }
    delete_namespace(&client, &ns).await;
}
