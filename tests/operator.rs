//! The operator process against the real API server: health, readiness and metrics endpoints,
//! and leader election on a Lease so that two replicas never both act.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

use baton_testkit::*;

async fn holder(api: &Api<Lease>) -> Option<String> {
    api.get("baton-leader")
        .await
        .ok()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

#[tokio::test]
async fn two_replicas_elect_one_leader_and_hand_over_on_sigterm() {
    let client = admin().await;
    install_crds(&client).await;
    let ns = namespace(&client, "leader").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kubeconfig_path();
    let args = [
        format!("--lease-namespace={ns}"),
        format!("--namespace={ns}"),
        "--lease-duration-seconds=6".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let mut a = Operator::start(&kubeconfig, dir.path(), "replica-a", &args);
    let mut b = Operator::start(&kubeconfig, dir.path(), "replica-b", &args);
    for op in [&a, &b] {
        assert!(
            op.wait_ready(Duration::from_secs(60)).await,
            "not ready:\n{}",
            op.logs()
        );
        let (code, body) = op.get("/healthz").await.expect("healthz answers");
        assert_eq!((code, body.trim()), (200, "ok"));
    }

    let leases = Api::<Lease>::namespaced(client.clone(), &ns);
    let first = eventually(Duration::from_secs(30), || holder(&leases))
        .await
        .expect("someone takes the lease");
    // Exactly one replica runs its controllers, and it is the lease holder.
    let leading = eventually(Duration::from_secs(15), || async {
        let (la, lb) = (a.is_leader().await, b.is_leader().await);
        (la != lb).then_some(if la { "replica-a" } else { "replica-b" })
    })
    .await
    .expect("exactly one replica leads");
    assert_eq!(leading, first);
    // And it stays that way for a few renewals.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            a.is_leader().await != b.is_leader().await,
            "both or neither replica leads"
        );
    }
    let (code, body) = if leading == "replica-a" { &a } else { &b }
        .get("/metrics")
        .await
        .expect("metrics");
    assert_eq!(code, 200);
    for metric in [
        "baton_leader 1",
        "baton_reconciles_total{controller=\"datastoreversion\"}",
    ] {
        assert!(body.contains(metric), "{metric} not in /metrics:\n{body}");
    }
    let (code, body) = if leading == "replica-a" { &b } else { &a }
        .get("/readyz")
        .await
        .expect("readyz");
    assert_eq!(code, 200);
    assert!(body.contains("standing by"), "{body}");

    // SIGTERM to the leader: it releases the lease and the standby takes over.
    let (leader, standby, standby_name) = if leading == "replica-a" {
        (&mut a, &b, "replica-b")
    } else {
        (&mut b, &a, "replica-a")
    };
    let status = leader
        .terminate(Duration::from_secs(30))
        .await
        .expect("leader exits on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", leader.logs());
    let took_over = eventually(Duration::from_secs(30), || async {
        (standby.is_leader().await && holder(&leases).await.as_deref() == Some(standby_name))
            .then_some(())
    })
    .await;
    assert!(
        took_over.is_some(),
        "standby never took over:\n{}",
        standby.logs()
    );
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn logs_are_structured_json_when_asked() {
    let client = admin().await;
    install_crds(&client).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut op = Operator::start(
        &kubeconfig_path(),
        dir.path(),
        "json-logs",
        &["--no-leader-election", "--namespace=json-logs-only"],
    );
    assert!(
        op.wait_ready(Duration::from_secs(60)).await,
        "{}",
        op.logs()
    );
    if op.terminate(Duration::from_secs(30)).await.is_none() {
        panic!("no exit within 30 s of SIGTERM:\n{}", op.logs());
    }
    let logs = op.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
    }
    assert!(logs.contains("SIGTERM: shutting down"), "{logs}");
}
