//! `kubectl baton`, run as kubectl runs a plugin (the `kubectl-baton` binary found on PATH),
//! against the real control plane and real Redis servers: every command, its JSON, its exit
//! codes, a dry run that changes nothing, and a planned switchover under writes with nothing
//! lost.

use std::path::PathBuf;

use kube::api::{Api, ListParams};
use serde_json::Value;

use baton::crd::{DatabaseInstance, InstancePhase, RequestPhase, UpgradeRequest};
use baton_testkit::env::*;
use baton_testkit::*;

/// The directory holding the `kubectl-baton` binary built with the tests.
fn plugin_dir() -> PathBuf {
    let bin = repo().join("target/debug/kubectl-baton");
    assert!(bin.exists(), "{} not built", bin.display());
    repo().join("target/debug")
}

/// `kubectl baton ARGS -n NS` → (exit code, stdout, stderr).
fn baton(ns: &str, args: &[&str]) -> (i32, String, String) {
    let path = format!(
        "{}:{}",
        plugin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new(tool("kubectl"))
        .arg("baton")
        .args(args)
        .args(["-n", ns])
        .env("KUBECONFIG", kubeconfig_path())
        .env("PATH", path)
        .output()
        .expect("run kubectl baton");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(ns: &str, args: &[&str]) -> String {
    let (code, out, err) = baton(ns, args);
    assert_eq!(
        code, 0,
        "kubectl baton {args:?} exited {code}:\n{out}\n{err}"
    );
    out
}

fn json(ns: &str, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let out = ok(ns, &a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{out}"))
}

async fn requests(env: &Env) -> Vec<UpgradeRequest> {
    Api::<UpgradeRequest>::namespaced(env.client.clone(), &env.ns)
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
}

#[tokio::test]
async fn every_kubectl_baton_command_against_a_real_instance() {
    let (env, op) = Env::with_active("cli", "sessions", 3, serde_json::json!({})).await;
    let ns = env.ns.clone();

    // versions: the catalog, and what 6.2.14 may become.
    let table = ok(&ns, &["versions", "redis"]);
    assert!(
        table.contains("6.2.14") && table.contains("7.0.15"),
        "{table}"
    );
    let reach = json(&ns, &["versions", "redis", "--from", SOURCE]);
    let to7 = reach
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["version"] == TARGET)
        .expect("7.0.15 listed");
    assert_eq!(to7["reachable"], true, "{to7}");
    assert_eq!(to7["path"], "Major");
    let (code, _, err) = baton(&ns, &["versions", "redis", "--from", "5.0.0"]);
    assert_eq!(code, 3, "an unknown --from is not found: {err}");

    // status: members with role, the version each server reports, lag.
    let st = json(&ns, &["status", "sessions"]);
    assert_eq!(st["kind"], "DatabaseInstance");
    assert_eq!(st["phase"], "Active");
    let members = st["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{st}");
    assert_eq!(
        members.iter().filter(|m| m["role"] == "Primary").count(),
        1,
        "{st}"
    );
    assert!(members.iter().all(|m| m["version"] == SOURCE), "{st}");
    assert!(
        members
            .iter()
            .filter(|m| m["role"] == "Standby")
            .all(|m| m["lag"].as_str().is_some_and(|l| l.ends_with("bytes"))),
        "{st}"
    );
    let table = ok(&ns, &["status", "sessions"]);
    assert!(
        table.contains("MEMBER") && table.contains("sessions-2"),
        "{table}"
    );
    let overview = ok(&ns, &["status"]);
    assert!(
        overview.contains("DatabaseInstance") && overview.contains("sessions"),
        "{overview}"
    );
    let (code, _, err) = baton(&ns, &["status", "nope"]);
    assert_eq!(code, 3, "{err}");

    // A dry run: the plan and the checks, and nothing created or changed.
    let before = env.instances.get("sessions").await.expect("sessions");
    let plan = json(&ns, &["upgrade", "sessions", "--to", TARGET, "--dry-run"]);
    assert_eq!(plan["wouldStart"], true, "{plan}");
    assert_eq!(
        plan["outage"].as_str().map(|o| o.starts_with("none")),
        Some(true)
    );
    assert_eq!(plan["steps"].as_array().map(Vec::len), Some(4), "{plan}");
    assert!(
        plan["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .any(|c| c["name"] == "admission" && c["passed"] == true),
        "{plan}"
    );
    let (code, out, _) = baton(&ns, &["upgrade", "sessions", "--to", "9.9.9", "--dry-run"]);
    assert_eq!(code, 1, "a refused dry run exits 1:\n{out}");
    assert!(out.contains("not in the DatastoreVersion catalog"), "{out}");
    assert!(
        requests(&env).await.is_empty(),
        "a dry run created a request"
    );
    let after = env.instances.get("sessions").await.expect("sessions");
    assert_eq!(after.spec, before.spec);
    assert!(
        after.status.and_then(|s| s.upgrade).is_none(),
        "a dry run started an upgrade"
    );

    // upgrade --hold --wait ends at AwaitingCommit; status shows the step and the request.
    let out = ok(
        &ns,
        &["upgrade", "sessions", "--to", TARGET, "--hold", "--wait"],
    );
    assert!(out.contains("AwaitingCommit"), "{out}");
    let st = json(&ns, &["status", "sessions"]);
    assert_eq!(st["upgrade"]["step"], "AwaitingCommit", "{st}");
    assert_eq!(
        st["upgrade"]["request"],
        format!("{ns}/sessions-to-7-0-15"),
        "{st}"
    );
    // An action the request cannot take is refused by the API server, with its reason.
    let (code, _, err) = baton(&ns, &["upgrade", "sessions", "--to", TARGET]);
    assert_eq!(
        code, 1,
        "a second request of the same name is refused: {err}"
    );
    ok(&ns, &["commit", "sessions-to-7-0-15", "--wait"]);
    env.wait_for("sessions", InstancePhase::Active, TARGET, &op)
        .await;
    let (code, _, err) = baton(&ns, &["rollback", "sessions-to-7-0-15"]);
    assert_eq!(
        code, 1,
        "Commit → Rollback is not a move the API server admits"
    );
    assert!(err.contains("action may only move"), "{err}");
    let (code, _, _) = baton(&ns, &["cancel", "no-such-request"]);
    assert_eq!(code, 3);

    // A planned switchover to a named member, under a label-following writer and a client
    // pinned to the old primary's address: nothing acknowledged is lost.
    let old = env.status("sessions").await.primary.expect("primary");
    let to = if old == "sessions-2" {
        "sessions-1"
    } else {
        "sessions-2"
    };
    let (stop, writer) = env.writer("sessions");
    let pinned_ip = env.primary_ip("sessions").await;
    let (stop_pinned, pinned) =
        env.writer_with("sessions", "p", workload::Route::Pinned(pinned_ip));
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let dry = json(&ns, &["switchover", "sessions", "--to", to, "--dry-run"]);
    assert_eq!(dry["wouldStart"], true, "{dry}");
    ok(&ns, &["switchover", "sessions", "--to", to, "--wait"]);
    let moved = env.status("sessions").await.primary;
    assert_eq!(
        moved.as_deref(),
        Some(to),
        "the primary did not move to {to}"
    );
    // The declarative way, as Git would apply it: the example's request moves the role on to
    // the best caught-up standby.
    env.apply_example("upgrade-switchover.yaml");
    let done = wait_request(&env, "sessions-switchover", RequestPhase::Succeeded, &op).await;
    println!("{:?}", job(&done, "sessions").message);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    stop.cancel();
    stop_pinned.cancel();
    let (report, pinned) = (writer.await.expect("writer"), pinned.await.expect("pinned"));
    println!("through the switchover: {report}\n{pinned}");
    let inst: DatabaseInstance = env.instances.get("sessions").await.expect("sessions");
    let st = inst.status.expect("status");
    let now = st.primary.clone().expect("primary");
    assert_ne!(now, to, "the declarative switchover did not move the role");
    assert_eq!(st.version.as_deref(), Some(TARGET));
    let last = st.last_upgrade.expect("outcome");
    assert_eq!(
        last.message.as_deref(),
        Some(format!("the primary moved from {to} to {now}").as_str())
    );
    assert_nothing_lost(&env, "sessions", &[&report, &pinned]).await;
    env.wait_event("sessions", "SwitchoverCompleted", to).await;
    // A planned switchover is measured like an upgrade's: status, the job, `status`'s sheet.
    let sw = st.last_switchover.clone().expect("status.lastSwitchover");
    assert_eq!((sw.from.as_str(), sw.to.as_str()), (to, now.as_str()));
    assert_eq!(last.switchover_ms, Some(sw.window_ms));
    assert_eq!(job(&done, "sessions").switchover_ms, Some(sw.window_ms));
    let sheet = ok(&ns, &["status", "sessions"]);
    assert!(
        sheet.contains(&format!("writes refused for {} ms", sw.window_ms)),
        "{sheet}"
    );

    // A switchover to the primary itself is refused before anything is touched.
    let (code, out, _) = baton(&ns, &["switchover", "sessions", "--to", &now, "--dry-run"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("already its primary"), "{out}");

    // Completion scripts, and the usage exit code.
    let script = ok(&ns, &["completion", "bash"]);
    assert!(script.contains("kubectl-baton"), "{}", tail(&script, 5));
    let (code, _, _) = baton(&ns, &["upgrade"]);
    assert_eq!(code, 2, "a usage error exits 2");
    delete_namespace(&env.client, &ns).await;
}

#[test]
fn the_krew_manifest_validates_and_installs_the_plugin_with_krew() {
    let out = std::process::Command::new("bash")
        .arg(repo().join("tests/env/krew.sh"))
        .arg(plugin_dir().join("kubectl-baton"))
        .output()
        .expect("run krew.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "make krew failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("(validated)"), "{stdout}");
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("kubectl-baton ")),
        "kubectl did not find the krew-installed plugin:\n{stdout}"
    );
}
