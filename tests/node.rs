//! The local node agent against the real control plane, with real database servers: pods run
//! as local processes, get their own loopback address, keep their claim's data, restart on
//! image change and on crash, and report probes in their conditions.

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use baton_testkit::*;

const TIMEOUT: Duration = Duration::from_secs(90);

fn pod(name: &str, spec: Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("pod")
}

async fn create_claim(client: &Client, ns: &str, name: &str) {
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .expect("pvc");
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pvc)
        .await
        .expect("create claim");
}

fn redis_spec(image: &str, claim: Option<&str>, extra_args: &[&str]) -> Value {
    let mut spec = json!({
        "terminationGracePeriodSeconds": 10,
        "containers": [{
            "name": "redis",
            "image": image,
            "args": extra_args,
            "ports": [{"name": "redis", "containerPort": 6379}],
            "readinessProbe": {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 1},
        }]
    });
    if let Some(c) = claim {
        spec["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
        spec["volumes"] = json!([{"name": "data", "persistentVolumeClaim": {"claimName": c}}]);
    }
    spec
}

/// Waits until `check` holds for the pod, returning it; panics with the pod's status if not.
async fn wait_pod(api: &Api<Pod>, name: &str, what: &str, check: impl Fn(&Pod) -> bool) -> Pod {
    let found = eventually(TIMEOUT, || async {
        let p = api.get(name).await.ok()?;
        check(&p).then_some(p)
    })
    .await;
    match found {
        Some(p) => p,
        None => panic!(
            "pod {name} never {what}: {:#?}",
            api.get(name).await.ok().and_then(|p| p.status)
        ),
    }
}

fn ready(p: &Pod) -> bool {
    condition(p, "Ready")
}

fn condition(p: &Pod, t: &str) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == t && c.status == "True"))
}

fn ip(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod IP")
}

fn container_opt(p: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .and_then(|c| c.into_iter().next())
}

fn container(p: &Pod) -> k8s_openapi::api::core::v1::ContainerStatus {
    container_opt(p).expect("container status")
}

/// The container's restart count, 0 before the node reports one.
fn restarts(p: &Pod) -> i32 {
    container_opt(p).map_or(0, |c| c.restart_count)
}

async fn redis(ip: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://{ip}:6379/")).expect("redis url");
    tokio::time::timeout(
        Duration::from_secs(10),
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect("redis connect timeout")
    .expect("redis connect")
}

/// The version the server itself reports.
async fn server_version(ip: &str) -> String {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut redis(ip).await)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_string())
        .expect("redis_version in INFO")
}

async fn set(ip: &str, k: &str, v: &str) {
    let _: () = redis::cmd("SET")
        .arg(k)
        .arg(v)
        .query_async(&mut redis(ip).await)
        .await
        .expect("SET");
}

async fn get(ip: &str, k: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(k)
        .query_async(&mut redis(ip).await)
        .await
        .expect("GET")
}

async fn delete_and_wait(api: &Api<Pod>, name: &str) {
    api.delete(name, &DeleteParams::default())
        .await
        .expect("delete pod");
    let gone = eventually(TIMEOUT, || async {
        matches!(api.get(name).await, Err(kube::Error::Api(s)) if s.code == 404).then_some(())
    })
    .await;
    assert!(gone.is_some(), "pod {name} was never finished by the node");
}

#[tokio::test]
async fn redis_pod_with_a_claim_runs_answers_and_keeps_its_data_across_recreation() {
    let client = admin().await;
    let ns = namespace(&client, "node-claim").await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    create_claim(&client, &ns, "data").await;
    pods.create(
        &PostParams::default(),
        &pod("r", redis_spec("redis:7.0.15", Some("data"), &[])),
    )
    .await
    .expect("create");
    let p = wait_pod(&pods, "r", "became Ready", ready).await;
    assert_eq!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running")
    );
    assert_eq!(
        p.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("baton-local")
    );
    assert!(ip(&p).starts_with("127."), "{}", ip(&p));
    let c = container(&p);
    assert_eq!(
        (c.image.as_str(), c.ready, c.restart_count),
        ("redis:7.0.15", true, 0)
    );
    assert!(c.state.and_then(|s| s.running).is_some());
    assert_eq!(server_version(&ip(&p)).await, "7.0.15");
    let claim = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
    let bound = eventually(TIMEOUT, || async {
        (claim.get("data").await.ok()?.status?.phase.as_deref() == Some("Bound")).then_some(())
    })
    .await;
    assert!(bound.is_some(), "the claim never became Bound");

    set(&ip(&p), "greeting", "hello from the first pod").await;
    delete_and_wait(&pods, "r").await;
    pods.create(
        &PostParams::default(),
        &pod("r", redis_spec("redis:7.0.15", Some("data"), &[])),
    )
    .await
    .expect("re-create");
    let p2 = wait_pod(&pods, "r", "became Ready again", ready).await;
    assert_ne!(p.metadata.uid, p2.metadata.uid);
    assert_eq!(
        get(&ip(&p2), "greeting").await.as_deref(),
        Some("hello from the first pod")
    );

    // Once the claim is deleted (after its last pod), its volume and data are reclaimed.
    let pv_name = claim
        .get("data")
        .await
        .expect("claim")
        .spec
        .and_then(|s| s.volume_name)
        .expect("bound volume");
    let pv_api = Api::<PersistentVolume>::all(client.clone());
    let dir = pv_api
        .get(&pv_name)
        .await
        .expect("volume")
        .spec
        .and_then(|s| s.host_path)
        .map(|h| std::path::PathBuf::from(h.path))
        .expect("hostPath");
    assert!(dir.is_dir(), "{} holds no data", dir.display());
    delete_and_wait(&pods, "r").await;
    claim
        .delete("data", &Default::default())
        .await
        .expect("delete claim");
    let reclaimed = eventually(TIMEOUT, || async {
        let gone = matches!(pv_api.get_opt(&pv_name).await, Ok(None));
        (gone && !dir.exists()).then_some(())
    })
    .await;
    assert!(
        reclaimed.is_some(),
        "the deleted claim's volume {pv_name} or directory {} is still there",
        dir.display()
    );
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn changing_the_image_restarts_the_container_on_that_version_with_its_data() {
    let client = admin().await;
    let ns = namespace(&client, "node-image").await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    create_claim(&client, &ns, "data").await;
    pods.create(
        &PostParams::default(),
        &pod("r", redis_spec("redis:6.2.14", Some("data"), &[])),
    )
    .await
    .expect("create");
    let p = wait_pod(&pods, "r", "became Ready", ready).await;
    assert_eq!(server_version(&ip(&p)).await, "6.2.14");
    set(&ip(&p), "kept", "across the image change").await;

    let patch = json!({"spec": {"containers": [{"name": "redis", "image": "redis:7.0.15"}]}});
    pods.patch("r", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .expect("patch image");
    let p = wait_pod(&pods, "r", "ran the new image", |p| {
        ready(p)
            && container_opt(p).is_some_and(|c| c.image == "redis:7.0.15" && c.restart_count == 1)
    })
    .await;
    assert_eq!(server_version(&ip(&p)).await, "7.0.15");
    assert_eq!(
        get(&ip(&p), "kept").await.as_deref(),
        Some("across the image change")
    );
    let last = container(&p)
        .last_state
        .and_then(|s| s.terminated)
        .expect("last state");
    assert_eq!(
        last.exit_code, 0,
        "the old container should have stopped gracefully"
    );

    // The other direction restarts too (with no 7.0 snapshot, which 6.2 cannot read).
    pods.create(
        &PostParams::default(),
        &pod("plain", redis_spec("redis:7.0.15", None, &["--save", ""])),
    )
    .await
    .expect("create");
    wait_pod(&pods, "plain", "became Ready", ready).await;
    let patch = json!({"spec": {"containers": [{"name": "redis", "image": "redis:6.2.14"}]}});
    pods.patch("plain", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .expect("patch image");
    let p = wait_pod(&pods, "plain", "ran 6.2.14", |p| {
        ready(p) && container_opt(p).is_some_and(|c| c.image == "redis:6.2.14")
    })
    .await;
    assert_eq!(server_version(&ip(&p)).await, "6.2.14");
    assert_eq!(container(&p).restart_count, 1);
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn a_killed_process_shows_as_a_restart() {
    let client = admin().await;
    let ns = namespace(&client, "node-kill").await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    pods.create(
        &PostParams::default(),
        &pod("r", redis_spec("redis:7.0.15", None, &[])),
    )
    .await
    .expect("create");
    let p = wait_pod(&pods, "r", "became Ready", ready).await;
    let pid = container(&p)
        .container_id
        .and_then(|id| id.strip_prefix("baton://").map(str::to_string))
        .expect("pid");
    let status = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let p = wait_pod(&pods, "r", "restarted", |p| restarts(p) == 1 && ready(p)).await;
    let last = container(&p)
        .last_state
        .and_then(|s| s.terminated)
        .expect("last state");
    assert_eq!(last.exit_code, 137, "SIGKILL shows as 128+9");
    assert_eq!(server_version(&ip(&p)).await, "7.0.15");
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn readiness_and_liveness_probes_drive_the_pod() {
    let client = admin().await;
    let ns = namespace(&client, "node-probe").await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    // Ready only while the key `ready` holds "yes": an exec probe inside the pod.
    let mut spec = redis_spec("redis:7.0.15", None, &[]);
    spec["containers"][0]["readinessProbe"] = json!({
        "exec": {"command": ["sh", "-c", "test \"$(redis-cli get ready)\" = yes"]},
        "periodSeconds": 1, "failureThreshold": 1
    });
    pods.create(&PostParams::default(), &pod("r", spec))
        .await
        .expect("create");
    let p = wait_pod(&pods, "r", "got an address", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") && !ready(p)
    })
    .await;
    let addr = ip(&p);
    set(&addr, "ready", "yes").await;
    wait_pod(&pods, "r", "became Ready", ready).await;
    let _: () = redis::cmd("DEL")
        .arg("ready")
        .query_async(&mut redis(&addr).await)
        .await
        .expect("DEL");
    let p = wait_pod(&pods, "r", "turned Ready false", |p| {
        !ready(p) && !condition(p, "ContainersReady")
    })
    .await;
    assert!(!container(&p).ready);
    assert_eq!(container(&p).restart_count, 0, "readiness never restarts");

    // A liveness probe that fails (nothing listens on 6390) restarts the container.
    let mut spec = redis_spec("redis:7.0.15", None, &[]);
    spec["containers"][0]["livenessProbe"] =
        json!({"tcpSocket": {"port": 6390}, "periodSeconds": 1, "failureThreshold": 2});
    pods.create(&PostParams::default(), &pod("dead", spec))
        .await
        .expect("create");
    wait_pod(&pods, "dead", "was restarted by its liveness probe", |p| {
        restarts(p) >= 1
    })
    .await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn two_redis_pods_listen_on_6379_side_by_side() {
    let client = admin().await;
    let ns = namespace(&client, "node-port").await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    for n in ["a", "b"] {
        pods.create(
            &PostParams::default(),
            &pod(n, redis_spec("redis:7.0.15", None, &["--port", "6379"])),
        )
        .await
        .expect("create");
    }
    let a = wait_pod(&pods, "a", "became Ready", ready).await;
    let b = wait_pod(&pods, "b", "became Ready", ready).await;
    assert_ne!(ip(&a), ip(&b));
    set(&ip(&a), "who", "a").await;
    set(&ip(&b), "who", "b").await;
    assert_eq!(get(&ip(&a), "who").await.as_deref(), Some("a"));
    assert_eq!(get(&ip(&b), "who").await.as_deref(), Some("b"));
    // Each server listens on its own pod address, not on a shared one.
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut redis(&ip(&a)).await)
        .await
        .expect("CLIENT LIST");
    assert!(
        clients.contains(&format!("laddr={}:6379", ip(&a))),
        "{clients}"
    );
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn env_config_maps_and_secrets_reach_the_container() {
    let client = admin().await;
    let ns = namespace(&client, "node-env").await;
    let (ok, _, err) = run_tool(
        "kubectl",
        &[
            "create",
            "configmap",
            "cfg",
            "-n",
            &ns,
            "--from-literal=greeting=hi there",
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, _, err) = run_tool(
        "kubectl",
        &[
            "create",
            "secret",
            "generic",
            "pw",
            "-n",
            &ns,
            "--from-literal=password=s3cret",
        ],
        None,
    );
    assert!(ok, "{err}");
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let script = "redis-server --save '' --protected-mode no & \
        until redis-cli ping >/dev/null 2>&1; do sleep 0.1; done; \
        redis-cli set greeting \"$(cat /etc/cfg/greeting)\"; redis-cli set identity \"$IDENTITY\"; \
        redis-cli set password \"$PASSWORD\"; redis-cli set ready yes; wait";
    let spec = json!({
        "containers": [{
            "name": "redis", "image": "redis:7.0.15",
            "command": ["sh", "-c", script],
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "IDENTITY", "value": "$(POD_NAME)@$(POD_IP) $$(NOT_EXPANDED)"},
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "pw", "key": "password"}}},
            ],
            "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg", "readOnly": true}],
            "readinessProbe": {"exec": {"command": ["sh", "-c", "test \"$(redis-cli get ready)\" = yes"]}, "periodSeconds": 1},
        }],
        "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}],
    });
    pods.create(&PostParams::default(), &pod("env", spec))
        .await
        .expect("create");
    let p = wait_pod(&pods, "env", "became Ready", ready).await;
    let addr = ip(&p);
    assert_eq!(get(&addr, "greeting").await.as_deref(), Some("hi there"));
    assert_eq!(
        get(&addr, "identity").await,
        Some(format!("env@{addr} $(NOT_EXPANDED)"))
    );
    assert_eq!(get(&addr, "password").await.as_deref(), Some("s3cret"));
    delete_namespace(&client, &ns).await;
}

fn sql_pod(image: &str, port: i32, env: Value) -> Value {
    json!({
        "terminationGracePeriodSeconds": 20,
        "containers": [{
            "name": "db", "image": image, "env": env,
            "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1},
        }]
    })
}

#[tokio::test]
async fn postgresql_and_mariadb_pods_start_and_answer_a_query() {
    let client = admin().await;
    let ns = namespace(&client, "node-sql").await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    pods.create(
        &PostParams::default(),
        &pod(
            "pg",
            sql_pod(
                "postgres:15",
                5432,
                json!([{"name": "POSTGRES_PASSWORD", "value": "pgpass"}]),
            ),
        ),
    )
    .await
    .expect("create pg");
    pods.create(
        &PostParams::default(),
        &pod(
            "maria",
            sql_pod(
                "mariadb:10.11",
                3306,
                json!([{"name": "MARIADB_ROOT_PASSWORD", "value": "mpass"}]),
            ),
        ),
    )
    .await
    .expect("create mariadb");

    let pg = wait_pod(&pods, "pg", "became Ready", ready).await;
    let out = std::process::Command::new("psql")
        .args([
            "-h",
            &ip(&pg),
            "-U",
            "postgres",
            "-tAc",
            "select 40 + 2, current_setting('server_version_num')",
        ])
        .env("PGPASSWORD", "pgpass")
        .output()
        .expect("psql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.trim().starts_with("42|15"), "{stdout}");

    let maria = wait_pod(&pods, "maria", "became Ready", ready).await;
    let query = eventually(TIMEOUT, || async {
        let out = std::process::Command::new("mariadb")
            .args([
                "--no-defaults",
                "-h",
                &ip(&maria),
                "-uroot",
                "-pmpass",
                "-N",
                "-e",
                "select 40 + 2, version()",
            ])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await
    .expect("mariadb answers");
    assert!(query.starts_with("42\t10.11."), "{query}");
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn a_stopped_agent_leaves_nothing_running() {
    let client = admin().await;
    let ns = namespace(&client, "node-stop").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = format!("stop-{:06x}", rand::random::<u32>() & 0xffffff);
    let cache = std::env::var("BATON_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/baton", std::env::var("HOME").expect("HOME")));
    // Where setup.sh puts what non-root servers must read (lib.sh's BATON_SERVERS' parent).
    let shared = std::env::var("BATON_SERVERS")
        .ok()
        .and_then(|s| Some(std::path::Path::new(&s).parent()?.display().to_string()))
        .unwrap_or_else(|| "/var/cache/baton".into());
    let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
    let mut agent = tokio::process::Command::new(node_bin())
        .args([
            "--node-name",
            &node,
            "--bind-pods",
            "false",
            "--first-pod-ip",
            "127.3.0.2",
        ])
        .arg("--images")
        .arg(repo().join("tests/env/images.yaml"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--podnet")
        .arg(format!("{shared}/lib/libbaton-podnet.so"))
        .env("KUBECONFIG", kubeconfig_path())
        .env("BATON_CACHE", &cache)
        .env("BATON_IMAGES", format!("{shared}/images"))
        .env("BATON_REPO", repo())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn baton-node");
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let mut spec = redis_spec("redis:7.0.15", None, &[]);
    spec["nodeName"] = json!(node);
    pods.create(&PostParams::default(), &pod("r", spec))
        .await
        .expect("create");
    let p = wait_pod(&pods, "r", "became Ready on the second node", ready).await;
    let pid: u32 = container(&p)
        .container_id
        .and_then(|id| id.strip_prefix("baton://")?.parse().ok())
        .expect("pid");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    let status = std::process::Command::new("kill")
        .args(["-TERM", &agent.id().expect("agent pid").to_string()])
        .status();
    assert!(status.is_ok_and(|s| s.success()));
    let exited = tokio::time::timeout(Duration::from_secs(30), agent.wait())
        .await
        .expect("agent exits")
        .expect("wait");
    assert!(
        exited.success(),
        "agent exit: {exited:?}: {}",
        std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "container process {pid} outlived the agent"
    );
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone());
    let n = nodes.get(&node).await.expect("node");
    let ready = n
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready condition");
    assert_eq!(ready.status, "False");
    let _ = nodes.delete(&node, &DeleteParams::default()).await;
    let _ = pods
        .delete(
            "r",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await;
    delete_namespace(&client, &ns).await;
}
