//! The operator as its users run it: `helm install` makes the chart's Deployment, the controller
//! manager's Deployment and ReplicaSet controllers make its pod, and the local node runs that pod
//! from the chart's image (`ghcr.io/baton-dev/baton`, mapped to the operator built from this
//! checkout) with the ServiceAccount token the ServiceAccount admission plugin projected into it,
//! `KUBERNETES_SERVICE_HOST`, the chart's non-root user and read-only root, and its probes. Then
//! the pod upgrades a database under exactly the chart's RBAC, `helm upgrade` rolls it while an
//! upgrade is in flight, a killed leader hands over, and `helm uninstall` leaves CRDs and
//! databases.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams};

use baton::crd::{InstancePhase, RequestPhase};
use baton_testkit::env::*;
use baton_testkit::*;

/// The chart's operator pods of one release, as the API server has them.
struct Release {
    name: String,
    ns: String,
    pods: Api<Pod>,
}

impl Logs for Release {
    fn logs(&self) -> String {
        // Every pod of the release that the node has run: the current ones and those replaced.
        let run = std::env::var_os("BATON_RUN").map(std::path::PathBuf::from);
        let mut names = BTreeSet::new();
        if let Some(dir) = run.map(|r| r.join("node/logs"))
            && let Ok(entries) = std::fs::read_dir(dir)
        {
            for e in entries.flatten() {
                let f = e.file_name().to_string_lossy().into_owned();
                if let Some(rest) = f.strip_prefix(&format!("{}_", self.ns))
                    && let Some((pod, _uid)) = rest.rsplit_once('_')
                    && pod.starts_with(&self.name)
                {
                    names.insert(pod.to_string());
                }
            }
        }
        names
            .iter()
            .map(|p| format!("--- {p}\n{}", tail(&pod_log(&self.ns, p, "baton"), 40)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Release {
    fn helm(&self, verb: &str, extra: &[&str]) {
        let chart = repo().join("charts/baton").display().to_string();
        let mut args = vec![verb, self.name.as_str(), "--namespace", self.ns.as_str()];
        if verb != "uninstall" {
            args.push(&chart);
        }
        args.extend_from_slice(extra);
        let (ok, out, err) = run_tool("helm", &args, None);
        assert!(
            ok,
            "helm {verb} failed:\n{out}\n{err}\n{}\npods: {:#?}",
            self.logs(),
            std::process::Command::new(tool("kubectl"))
                .env("KUBECONFIG", kubeconfig_path())
                .args(["get", "pods,rs,deploy", "-n", &self.ns, "-o", "wide"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        );
    }

    /// The release's operator pods that are not being deleted.
    async fn live_pods(&self) -> Vec<Pod> {
        let sel = format!("app.kubernetes.io/instance={}", self.name);
        let mut pods: Vec<Pod> = self
            .pods
            .list(&ListParams::default().labels(&sel))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        pods.sort_by_key(|p| p.metadata.name.clone());
        pods
    }

    async fn ready_pods(&self) -> Vec<Pod> {
        self.live_pods()
            .await
            .into_iter()
            .filter(pod_ready)
            .collect()
    }

    async fn holder(&self, client: &kube::Client) -> Option<String> {
        Api::<Lease>::namespaced(client.clone(), &self.ns)
            .get_opt(&format!("{}-leader", self.name))
            .await
            .ok()??
            .spec?
            .holder_identity
    }
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn name_of(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

/// The PID of the pod's container process, from the node's `baton://<pid>` container ID.
fn container_pid(p: &Pod) -> u32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.container_id.as_deref())
        .and_then(|id| id.strip_prefix("baton://"))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no container process for {}", name_of(p)))
}

/// What the container sees at `path`, in its own mount namespace (not through /proc/PID/root:
/// the absolute symlink /var/run → /run would resolve in the reader's namespace).
fn read_in_container(pid: u32, path: &str) -> String {
    let out = std::process::Command::new("nsenter")
        .args(["--target", &pid.to_string(), "--mount", "--", "cat", path])
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "reading {path} in the container of {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The claims of a JWT (no signature check: the API server checked it when it accepted it).
fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JWT claims")
}

/// The container runs as the chart asks and as a kubelet would run it.
fn assert_runs_like_a_kubelet_pod(p: &Pod, ns: &str, sa: &str) {
    let pid = container_pid(p);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid");
    assert_eq!(
        uid.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["65532"; 4],
        "the chart's non-root user: {uid}"
    );
    let gid = status.lines().find(|l| l.starts_with("Gid:")).expect("Gid");
    assert!(gid.contains("65532"), "{gid}");
    let nnp = status
        .lines()
        .find(|l| l.starts_with("NoNewPrivs:"))
        .expect("NoNewPrivs");
    assert!(nnp.ends_with('1'), "allowPrivilegeEscalation false: {nnp}");
    let bnd = status
        .lines()
        .find(|l| l.starts_with("CapBnd:"))
        .expect("CapBnd");
    assert!(
        bnd.ends_with("0000000000000000"),
        "capabilities dropped: {bnd}"
    );
    // readOnlyRootFilesystem: the root mount of its namespace is read-only.
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let root = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .expect("a root mount");
    let opts = root.split_whitespace().nth(5).unwrap_or_default();
    assert!(
        opts.split(',').any(|o| o == "ro"),
        "root is not read-only: {root}"
    );
    // The projected ServiceAccount volume, as the kubelet mounts it.
    let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    assert_eq!(read_in_container(pid, &format!("{dir}/namespace")), ns);
    assert!(read_in_container(pid, &format!("{dir}/ca.crt")).contains("BEGIN CERTIFICATE"));
    let claims = jwt_claims(read_in_container(pid, &format!("{dir}/token")).trim());
    assert_eq!(
        claims["kubernetes.io"]["serviceaccount"]["name"], sa,
        "{claims}"
    );
    assert_eq!(
        claims["kubernetes.io"]["pod"]["name"],
        name_of(p),
        "the token is bound to its pod: {claims}"
    );
    // The API server's Service, as the kubelet passes it.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ
            .split('\0')
            .any(|v| v == "KUBERNETES_SERVICE_HOST=10.0.0.1")
            && environ
                .split('\0')
                .any(|v| v == "KUBERNETES_SERVICE_PORT=443"),
        "no kubernetes Service environment"
    );
    // The chart's probes ran: the startup probe passed (started) and readiness made it Ready.
    let cs = &p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .expect("statuses")[0];
    assert_eq!(cs.started, Some(true), "{cs:?}");
    assert!(cs.ready, "{cs:?}");
}

#[tokio::test]
async fn the_chart_installed_operator_upgrades_hands_over_and_uninstalls_cleanly() {
    let env = Env::new("chartpod").await;
    let release = Release {
        name: format!("baton-{}", env.ns.rsplit('-').next().unwrap_or("x")),
        ns: env.ns.clone(),
        pods: env.pods.clone(),
    };
    let watch = format!("watchNamespace={}", env.ns);
    release.helm("install", &["--set", &watch, "--wait", "--timeout", "3m"]);

    // One pod, Ready, leading, running as the chart and a kubelet would run it.
    let pods = release.ready_pods().await;
    assert_eq!(pods.len(), 1, "{}", release.logs());
    let first = name_of(&pods[0]);
    assert_runs_like_a_kubelet_pod(&pods[0], &env.ns, &release.name);
    let led = eventually(Duration::from_secs(60), || async {
        (release.holder(&env.client).await.as_deref() == Some(first.as_str())).then_some(())
    })
    .await;
    assert!(
        led.is_some(),
        "{first} never took the lease:\n{}",
        release.logs()
    );

    // It runs a database, and starts an upgrade that holds before the primary.
    env.create("db", 3, serde_json::json!({})).await;
    env.wait_for("db", InstancePhase::Active, SOURCE, &release)
        .await;
    let (stop, writer) = env.writer("db");
    let request = format!(
        "apiVersion: baton.dev/v1alpha1\nkind: UpgradeRequest\nmetadata:\n  name: db-to-7\nspec:\n  targets:\n    instances: [db]\n  targetVersion: \"{TARGET}\"\n  action: Upgrade\n"
    );
    let (ok, _, err) = run_tool(
        "kubectl",
        &["apply", "-n", &env.ns, "-f", "-"],
        Some(&request),
    );
    assert!(ok, "{err}");
    wait_request(&env, "db-to-7", RequestPhase::AwaitingCommit, &release).await;

    // `helm upgrade` rolls the operator mid-upgrade: a new ReplicaSet, a new pod, the lease
    // handed over; the new leader commits the held upgrade.
    release.helm(
        "upgrade",
        &[
            "--reuse-values",
            "--set",
            "podAnnotations.rollout=2",
            "--wait",
            "--timeout",
            "3m",
        ],
    );
    let sel = format!("app.kubernetes.io/instance={}", release.name);
    let sets = Api::<ReplicaSet>::namespaced(env.client.clone(), &env.ns)
        .list(&ListParams::default().labels(&sel))
        .await
        .expect("replicasets");
    assert_eq!(sets.items.len(), 2, "helm upgrade made no new ReplicaSet");
    let second = eventually(Duration::from_secs(60), || async {
        let pods = release.live_pods().await;
        let names: Vec<String> = pods.iter().map(name_of).collect();
        (names.len() == 1 && names[0] != first && pod_ready(&pods[0])).then(|| names[0].clone())
    })
    .await
    .unwrap_or_else(|| panic!("the rollout never replaced {first}:\n{}", release.logs()));
    let handed = eventually(Duration::from_secs(60), || async {
        (release.holder(&env.client).await.as_deref() == Some(second.as_str())).then_some(())
    })
    .await;
    assert!(
        handed.is_some(),
        "the lease never moved to {second}:\n{}",
        release.logs()
    );
    set_action(&env, "db-to-7", "Commit").await;
    wait_request(&env, "db-to-7", RequestPhase::Succeeded, &release).await;
    env.wait_for("db", InstancePhase::Active, TARGET, &release)
        .await;
    stop.cancel();
    let report = writer.await.expect("writer");
    println!("writes through the rollout: {report}");
    assert_nothing_lost(&env, "db", &[&report]).await;
    // The first pod stopped cleanly: it released the lease on SIGTERM.
    assert!(
        pod_log(&env.ns, &first, "baton").contains("stopped"),
        "{first} did not stop cleanly:\n{}",
        tail(&pod_log(&env.ns, &first, "baton"), 20)
    );

    // Two replicas: one leads; the leader killed (its process and its pod, as when its node
    // dies), the other takes over within the lease time.
    release.helm(
        "upgrade",
        &[
            "--reuse-values",
            "--set",
            "replicaCount=2",
            "--wait",
            "--timeout",
            "3m",
        ],
    );
    let two = eventually(Duration::from_secs(60), || async {
        let pods = release.ready_pods().await;
        (pods.len() == 2).then_some(pods)
    })
    .await
    .unwrap_or_else(|| panic!("two replicas never Ready:\n{}", release.logs()));
    let leader = release.holder(&env.client).await.expect("a leader");
    let dead = two
        .iter()
        .find(|p| name_of(p) == leader)
        .unwrap_or_else(|| panic!("the leader {leader} is not one of the two pods"));
    let killed_at = Instant::now();
    std::process::Command::new("kill")
        .args(["-KILL", &container_pid(dead).to_string()])
        .status()
        .expect("kill");
    let _ = release
        .pods
        .delete(&leader, &DeleteParams::default().grace_period(0))
        .await;
    // The other replica, or the pod the ReplicaSet made in the dead one's place: whichever
    // standby sees the lease expire first.
    let lease_seconds = 15;
    let successor = eventually(Duration::from_secs(lease_seconds + 30), || async {
        release.holder(&env.client).await.filter(|h| *h != leader)
    })
    .await;
    let handover = killed_at.elapsed();
    let successor =
        successor.unwrap_or_else(|| panic!("nobody took over from {leader}:\n{}", release.logs()));
    println!(
        "leader killed: {successor} took over in {:.1} s (lease {lease_seconds} s)",
        handover.as_secs_f64()
    );
    assert!(
        release
            .live_pods()
            .await
            .iter()
            .any(|p| name_of(p) == successor),
        "the lease went to {successor}, which is not a live pod of the release"
    );
    // Within the lease time plus one renewal attempt (a generous bound for a loaded machine).
    assert!(
        handover <= Duration::from_secs(lease_seconds + 10),
        "handover took {handover:?}"
    );

    // Uninstall: the operator goes; CRDs, the instance and its members stay.
    release.helm("uninstall", &["--wait", "--timeout", "2m"]);
    let gone = eventually(Duration::from_secs(60), || async {
        release.live_pods().await.is_empty().then_some(())
    })
    .await;
    assert!(gone.is_some(), "operator pods left after uninstall");
    assert!(
        Api::<Deployment>::namespaced(env.client.clone(), &env.ns)
            .get_opt(&release.name)
            .await
            .expect("get")
            .is_none()
    );
    let crds = Api::<CustomResourceDefinition>::all(env.client.clone());
    for crd in baton::crd::all() {
        let name = crd.metadata.name.expect("name");
        assert!(
            crds.get_opt(&name).await.expect("get").is_some(),
            "CRD {name} removed"
        );
    }
    let inst = env.instances.get("db").await.expect("the instance stays");
    assert_eq!(
        inst.status.and_then(|s| s.phase),
        Some(InstancePhase::Active)
    );
    let members = env.member_pods("db").await;
    assert_eq!(members.len(), 3, "members deleted with the operator");
    let versions = env.server_versions("db").await;
    assert_eq!(
        versions.len(),
        3,
        "every member's server still answers: {versions:?}"
    );
    delete_namespace(&env.client, &env.ns).await;
}
