//! The API server restarted in the middle of an upgrade (etcd kept): every watch and request
//! of the operator, the node and the clients fails for a while. Run alone (`make test` runs it
//! after the other suites), since every test shares the one control plane.

use std::time::Duration;

use serde_json::json;

use baton_testkit::env::*;
use baton_testkit::faults::Scenario;
use baton_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_api_server_restart_mid_upgrade_loses_nothing() {
    let env = Env::new("apiserver").await;
    let sc = Scenario::prepare(&env, "db", SOURCE, json!({})).await;
    let op = env.operator("apiserver", "");
    sc.set_version(TARGET).await;
    // Restart it once the first standby is being upgraded.
    let busy = eventually(LONG, || async {
        let u = env.instances.get("db").await.ok()?.status?.upgrade?;
        (u.step.kind == baton::crd::StepKind::UpgradeStandby).then_some(())
    })
    .await;
    assert!(
        busy.is_some(),
        "the upgrade never started:\n{}",
        tail(&op.logs(), 20)
    );
    let script = repo().join("tests/env/restart-apiserver.sh");
    let restarted = tokio::process::Command::new("bash")
        .arg(script)
        .status()
        .await
        .expect("run restart-apiserver.sh");
    assert!(restarted.success(), "the API server did not come back");
    let out = sc.finish(&op, TARGET).await;
    assert!(out.result.is_ok(), "{:?}", out.result);
    let acked: usize = out.reports.iter().map(|r| r.acked.len()).sum();
    println!(
        "API server restarted mid-upgrade: Active on the target, {acked} writes acknowledged, 0 lost"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    delete_namespace(&env.client, &env.ns).await;
}
