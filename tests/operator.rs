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

    // A catalog entry of the test's own, so the leader has something to reconcile (and count)
    // whatever else the control plane holds.
    let dsv_name = format!("leader-{ns}");
    let dsv = format!(
        "apiVersion: baton.dev/v1alpha1\nkind: DatastoreVersion\nmetadata:\n  name: {dsv_name}\nspec:\n  datastore: mysql\n  version: \"4.{}\"\n  image: mysql:4\n",
        rand::random::<u16>()
    );
    let (ok, _, err) = run_tool("kubectl", &["apply", "-f", "-"], Some(&dsv));
    assert!(ok, "{err}");

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
    // The leader reconciled the catalog entry (within a few seconds of leading).
    let leader_op = if leading == "replica-a" { &a } else { &b };
    let counted = eventually(Duration::from_secs(15), || async {
        let (code, body) = leader_op.get("/metrics").await?;
        (code == 200
            && body.contains("baton_leader 1")
            && body.contains("baton_reconciles_total{controller=\"datastoreversion\"}"))
        .then_some(())
    })
    .await;
    assert!(
        counted.is_some(),
        "no leader metric or datastoreversion reconciles in /metrics:\n{:?}",
        leader_op.get("/metrics").await
    );
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
    let _ = run_tool("kubectl", &["delete", "datastoreversion", &dsv_name], None);
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

/// SIGTERM that lands while the controllers still make their first list (a rollout that
/// replaces a pod at once, a crash-looping pod) must still end the process: kube-runtime's
/// graceful shutdown alone waited forever there.
#[tokio::test]
async fn sigterm_right_after_start_exits() {
    let client = admin().await;
    install_crds(&client).await;
    let dir = tempfile::tempdir().expect("tempdir");
    for round in 0..5 {
        let mut op = Operator::start(
            &kubeconfig_path(),
            dir.path(),
            &format!("early-stop-{round}"),
            &["--no-leader-election", "--namespace=early-stop-only"],
        );
        // Poll tighter than `wait_ready` so the signal lands inside the first list.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !matches!(op.get("/readyz").await, Some((200, _))) {
            assert!(tokio::time::Instant::now() < deadline, "{}", op.logs());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match op.terminate(Duration::from_secs(30)).await {
            Some(status) => assert!(status.success(), "{status}:\n{}", op.logs()),
            None => panic!(
                "round {round}: no exit within 30 s of SIGTERM:\n{}",
                op.logs()
            ),
        }
    }
}
