//! The operator refuses to start, with a message naming what is missing, when the API server
//! does not serve Baton's CRDs. It removes the CRDs, so `make test` runs it alone, before the
//! other suites (its target has `test = false` in Cargo.toml).

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

use baton_testkit::*;

async fn remove_crds(api: &Api<CustomResourceDefinition>) {
    for crd in baton::crd::all() {
        let name = crd.metadata.name.expect("name");
        let _ = api.delete(&name, &DeleteParams::default()).await;
        let gone = eventually(Duration::from_secs(60), || async {
            matches!(api.get(&name).await, Err(kube::Error::Api(s)) if s.code == 404).then_some(())
        })
        .await;
        assert!(gone.is_some(), "CRD {name} was not removed");
    }
}

/// Runs `baton run` to its exit; returns (exit code, stderr).
async fn run_operator_to_exit() -> (Option<i32>, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(operator_bin())
            .args(["run", "--listen=127.0.0.1:0", "--no-leader-election"])
            .env("KUBECONFIG", kubeconfig_path())
            .output(),
    )
    .await
    .expect("the operator should exit by itself when CRDs are missing")
    .expect("spawn baton");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn operator_exits_with_a_clear_message_when_crds_are_missing() {
    let client = admin().await;
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    remove_crds(&api).await;

    let (code, stderr) = run_operator_to_exit().await;
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("missing DatastoreVersion, DatabaseInstance, Cluster, UpgradeRequest in baton.dev/v1alpha1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("baton crds | kubectl apply"),
        "the message should say how to fix it: {stderr}"
    );

    // With only the catalog CRD installed, the message names exactly the other three.
    let dsv = baton::crd::DatastoreVersion::crd();
    api.patch(
        dsv.metadata.name.as_deref().expect("name"),
        &PatchParams::apply("baton-tests").force(),
        &Patch::Apply(&dsv),
    )
    .await
    .expect("apply DatastoreVersion CRD");
    let served = eventually(Duration::from_secs(60), || async {
        client
            .list_api_group_resources("baton.dev/v1alpha1")
            .await
            .ok()
    })
    .await;
    assert!(served.is_some(), "DatastoreVersion CRD never served");
    let (code, stderr) = run_operator_to_exit().await;
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("missing DatabaseInstance, Cluster, UpgradeRequest in"),
        "{stderr}"
    );

    // Leave the API server as the other suites expect it.
    install_crds(&client).await;
}
