//! The environment of an end-to-end test over DatabaseInstances: a namespace of its own, the
//! example catalog, an operator limited to that namespace, and helpers to create instances,
//! write under load and check the result against the real servers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use baton::crd::{DatabaseInstance, DatastoreVersion, InstancePhase, RequestPhase, UpgradeRequest};

use crate::harness::*;
use crate::workload::{self, Route};

pub const LONG: Duration = Duration::from_secs(180);
pub const SOURCE: &str = "6.2.14";
/// The application password [`Env::rotate_passwords`] sets.
pub const ROTATED_PASSWORD: &str = "rotated-app-password";
pub const TARGET: &str = "7.0.15";
/// The PostgreSQL minor pair the tests upgrade between.
pub const PG_SOURCE: &str = "16.13";
pub const PG_TARGET: &str = "16.14";

/// The spec fields of a PostgreSQL instance on `version` (merged into `Env::create`'s spec).
pub fn postgres(version: &str) -> Value {
    json!({"datastore": {"type": "postgresql", "version": version}})
}

/// A datastore and the version pair its suites upgrade between.
#[derive(Debug, Clone, Copy)]
pub struct Flavor {
    pub datastore: workload::Datastore,
    /// The image name the catalog uses (`<image>:<version>`).
    pub image: &'static str,
    pub source: &'static str,
    pub target: &'static str,
    /// A version the tests add to the catalog with an image the node cannot run.
    pub broken: &'static str,
}

pub const REDIS: Flavor = Flavor {
    datastore: workload::Datastore::Redis,
    image: "redis",
    source: SOURCE,
    target: TARGET,
    broken: "7.0.16",
};
pub const POSTGRES: Flavor = Flavor {
    datastore: workload::Datastore::Postgresql,
    image: "postgres",
    source: PG_SOURCE,
    target: PG_TARGET,
    broken: "16.99",
};

/// The MariaDB versions the suites upgrade between (Debian's main and security releases).
/// How long the end-of-test read-back retries a member before it counts as missing writes: at
/// the crash suite's peak on two cores a running member missed every 2 s connect for over 30 s
/// (its log showed it up and streaming throughout).
pub const READ_BACK: Duration = Duration::from_secs(90);

pub const MARIADB_SOURCE: &str = "10.11.18";
pub const MARIADB_TARGET: &str = "10.11.19";
pub const MARIADB: Flavor = Flavor {
    datastore: workload::Datastore::Mariadb,
    image: "mariadb",
    source: MARIADB_SOURCE,
    target: MARIADB_TARGET,
    broken: "10.11.99",
};

impl Flavor {
    /// The spec fields of an instance of this flavor on its source version.
    pub fn spec(&self) -> Value {
        self.at(self.source)
    }

    /// The spec fields naming this flavor's datastore on `version`.
    pub fn at(&self, version: &str) -> Value {
        json!({"datastore": {"type": self.datastore, "version": version}})
    }
}

/// Applies the example catalog (Redis 6.2.14 and 7.0.15 with the 6 → 7 edge), idempotently.
pub async fn ensure_catalog(client: &Client) {
    install_crds(client).await;
    let text = std::fs::read_to_string(repo().join("examples/catalog.yaml")).expect("catalog");
    let api = Api::<DatastoreVersion>::all(client.clone());
    for doc in text.split("\n---\n") {
        let dv: DatastoreVersion = serde_yaml_ng::from_str(doc).expect("catalog entry");
        let name = dv.metadata.name.clone().expect("name");
        let applied = eventually(Duration::from_secs(30), || async {
            api.patch(
                &name,
                &PatchParams::apply("baton-tests").force(),
                &Patch::Apply(&dv),
            )
            .await
            .ok()
        })
        .await;
        assert!(applied.is_some(), "could not apply catalog entry {name}");
    }
}

pub struct Env {
    pub client: Client,
    pub ns: String,
    pub dir: std::path::PathBuf,
    pub instances: Api<DatabaseInstance>,
    pub pods: Api<Pod>,
}

impl Env {
    pub async fn new(prefix: &str) -> Env {
        let client = admin().await;
        ensure_catalog(&client).await;
        let ns = namespace(&client, prefix).await;
        Env {
            instances: Api::namespaced(client.clone(), &ns),
            pods: Api::namespaced(client.clone(), &ns),
            // Operator logs stay in target/test-logs/<namespace> for a failed run to be read.
            dir: {
                let d = repo().join("target/test-logs").join(&ns);
                std::fs::create_dir_all(&d).expect("log dir");
                d
            },
            client,
            ns,
        }
    }

    /// A fresh namespace with an operator of its own (identity `prefix`), and instance `name`
    /// of `replicas` members (`extra` spec fields) Active on [`SOURCE`] (or on the datastore
    /// and version `extra` names).
    pub async fn with_active(
        prefix: &str,
        name: &str,
        replicas: i32,
        extra: Value,
    ) -> (Env, Operator) {
        let env = Env::new(prefix).await;
        let op = env.operator(prefix, "");
        // The version `extra` names (a PostgreSQL instance), else Redis's source version.
        let version = extra["datastore"]["version"]
            .as_str()
            .unwrap_or(SOURCE)
            .to_string();
        env.create(name, replicas, extra).await;
        env.wait_for(name, InstancePhase::Active, &version, &op)
            .await;
        (env, op)
    }

    /// Adds `f.broken` to the catalog with an image the node cannot run (with an edge from the
    /// source's major, in case the broken version is a major step).
    pub async fn add_broken_version(&self, f: Flavor) {
        let name = format!("{}-{}-broken", f.datastore, f.broken);
        let major = f.source.split('.').next().unwrap_or_default();
        let broken: DatastoreVersion = serde_json::from_value(json!({
            "apiVersion": "baton.dev/v1alpha1", "kind": "DatastoreVersion",
            "metadata": {"name": name},
            "spec": {"datastore": f.datastore, "version": f.broken,
                     "image": format!("{}:{}-not-mapped", f.image, f.broken),
                     "upgradeFrom": [{"datastore": f.datastore, "minVersion": format!("{major}.0"), "maxVersion": major}]}
        }))
        .expect("dsv");
        Api::<DatastoreVersion>::all(self.client.clone())
            .patch(
                &name,
                &PatchParams::apply("baton-tests").force(),
                &Patch::Apply(&broken),
            )
            .await
            .expect("apply broken version");
    }

    /// Adds the Redis catalog entry `7.0.15-hotfix1` (the 7.0.15 build under a patch-release
    /// name: an upgrade target for 7.0.15, which TLS needs). Shared by every test: applied.
    pub async fn add_redis_hotfix(&self) {
        let hotfix: DatastoreVersion = serde_json::from_value(json!({
            "apiVersion": "baton.dev/v1alpha1", "kind": "DatastoreVersion",
            "metadata": {"name": "redis-7.0.15-hotfix1"},
            "spec": {"datastore": "redis", "version": "7.0.15-hotfix1", "image": "redis:7.0.15-hotfix1"},
        }))
        .expect("catalog entry");
        Api::<DatastoreVersion>::all(self.client.clone())
            .patch(
                "redis-7.0.15-hotfix1",
                &PatchParams::apply("baton-tests").force(),
                &Patch::Apply(&hotfix),
            )
            .await
            .expect("apply the hotfix catalog entry");
    }

    /// An operator limited to this namespace; `crash_at` names a failpoint where it is
    /// killed with SIGKILL (empty: none).
    pub fn operator(&self, id: &str, crash_at: &str) -> Operator {
        self.operator_with(id, &[("BATON_CRASH_AT", crash_at)])
    }

    /// An operator limited to this namespace, with extra environment (failpoints, clock).
    pub fn operator_with(&self, id: &str, env: &[(&str, &str)]) -> Operator {
        self.operator_at(id, &kubeconfig_path(), env)
    }

    /// An operator limited to this namespace, run in group `gid` (see [`crate::faults::Cut`]).
    pub fn operator_in_group(&self, id: &str, gid: u32) -> Operator {
        let ns_arg = format!("--namespace={}", self.ns);
        Operator::start_in_group(
            &kubeconfig_path(),
            &self.dir,
            id,
            &["--no-leader-election", &ns_arg],
            gid,
        )
    }

    /// An operator limited to this namespace that reaches the API server through `kubeconfig`.
    pub fn operator_at(
        &self,
        id: &str,
        kubeconfig: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Operator {
        let ns_arg = format!("--namespace={}", self.ns);
        Operator::start_with_env(
            kubeconfig,
            &self.dir,
            id,
            &["--no-leader-election", &ns_arg],
            env,
        )
    }

    pub async fn create(&self, name: &str, replicas: i32, extra: Value) {
        let mut spec =
            json!({"datastore": {"type": "redis", "version": SOURCE}, "replicas": replicas});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        let obj: DatabaseInstance = serde_json::from_value(json!({
            "apiVersion": "baton.dev/v1alpha1", "kind": "DatabaseInstance",
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("instance");
        self.instances
            .create(&PostParams::default(), &obj)
            .await
            .expect("create instance");
    }

    /// Applies a file of examples/ in this namespace with kubectl, as a user would.
    pub fn apply_example(&self, file: &str) {
        let path = repo().join("examples").join(file);
        let (ok, _, err) = run_tool(
            "kubectl",
            &["apply", "-n", &self.ns, "-f", path.to_str().expect("path")],
            None,
        );
        assert!(ok, "kubectl apply {file}: {err}");
    }

    pub async fn label(&self, name: &str, key: &str, value: &str) {
        self.instances
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"labels": {key: value}}})),
            )
            .await
            .expect("label instance");
    }

    /// The restart count of each member's container, by pod name.
    /// Changes every password in credentials Secret `secret` as a person rotating them would
    /// (the application's becomes [`ROTATED_PASSWORD`]).
    pub async fn rotate_passwords(&self, secret: &str) {
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(self.client.clone(), &self.ns)
            .patch(
                secret,
                &PatchParams::default(),
                &Patch::Merge(json!({"stringData": {
                    "password": ROTATED_PASSWORD,
                    "admin-password": "rotated-admin-password",
                    "replication-password": "rotated-replication-password",
                }})),
            )
            .await
            .expect("change the Secret");
    }

    pub async fn restarts(&self, name: &str) -> BTreeMap<String, i32> {
        self.member_pods(name)
            .await
            .into_iter()
            .map(|(n, p)| {
                let c = p
                    .status
                    .and_then(|s| s.container_statuses)
                    .and_then(|c| c.first().map(|c| c.restart_count))
                    .unwrap_or(-1);
                (n, c)
            })
            .collect()
    }

    pub async fn patch_spec(&self, name: &str, spec: Value) {
        self.instances
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": spec})),
            )
            .await
            .expect("patch spec");
    }

    /// Waits until the instance is in `phase` on `version`; panics with its status if not.
    pub async fn wait_for(
        &self,
        name: &str,
        phase: InstancePhase,
        version: &str,
        op: &impl Logs,
    ) -> DatabaseInstance {
        let found = eventually(LONG, || async {
            let i = self.instances.get(name).await.ok()?;
            let s = i.status.as_ref()?;
            (s.phase == Some(phase) && s.version.as_deref() == Some(version) && s.upgrade.is_none())
                .then_some(i)
        })
        .await;
        match found {
            Some(i) => i,
            None => {
                let status = self.instances.get(name).await.ok().and_then(|i| i.status);
                panic!(
                    "{name} never reached {phase:?} on {version}; status: {status:#?}\noperator log tail:\n{}",
                    tail(&op.logs(), 30)
                )
            }
        }
    }

    pub async fn member_pods(&self, name: &str) -> BTreeMap<String, Pod> {
        self.pods
            .list(&ListParams::default().labels(&format!("baton.dev/instance={name}")))
            .await
            .expect("pods")
            .into_iter()
            .map(|p| (p.metadata.name.clone().unwrap_or_default(), p))
            .collect()
    }

    /// The instance's status as the API server has it now.
    pub async fn status(&self, name: &str) -> baton::crd::DatabaseInstanceStatus {
        self.instances
            .get(name)
            .await
            .expect("get instance")
            .status
            .unwrap_or_else(|| panic!("{name} has no status"))
    }

    /// The last switchover as Baton measured it, checked against a label-following client
    /// that wrote through it (its longest gap is that switchover: standby restarts do not stop
    /// its writes). Baton's window runs from the fence it recorded to the first pass that saw
    /// the new primary unfenced; the client's from its last write before the fence to its first
    /// after, plus finding the moved label (a pod list) and its 10 ms retry. Each side has a
    /// few hundred milliseconds of its own at most on a loaded 2-core machine; 2 s bounds both
    /// far below a minute-long upgrade, yet catches a window measured from the wrong moment.
    pub async fn assert_switchover_measured(
        &self,
        name: &str,
        client: &crate::workload::Report,
    ) -> baton::crd::LastSwitchover {
        let sw = self
            .status(name)
            .await
            .last_switchover
            .expect("status.lastSwitchover");
        assert!(!sw.undone && sw.window_ms > 0, "{sw:?}");
        let gap = client.longest_gap.as_millis() as i64;
        assert!(
            (gap - sw.window_ms).abs() <= 2_000,
            "status says {} ms, the client {} saw {gap} ms",
            sw.window_ms,
            client.writer
        );
        println!(
            "switchover {} → {}: {} ms in status, {gap} ms for the client {}",
            sw.from, sw.to, sw.window_ms, client.writer
        );
        sw
    }

    /// A settled instance costs the API server no writes: its operator's periodic passes, and
    /// the passes woken by a foreign annotation on the instance and on a member pod (what a
    /// GitOps tool or a person adds), change nothing. Counted in the API server's audit log,
    /// over at least `passes` completed passes of the instance controller. Prints the reads.
    pub async fn assert_settled_passes_write_nothing(
        &self,
        name: &str,
        op: &Operator,
        passes: u64,
    ) {
        let pod = format!("{name}-0");
        self.assert_settled(&self.instances, name, &pod, "databaseinstance", op, passes)
            .await;
    }

    /// The same for a Cluster: its passes and its shards' cost no writes.
    pub async fn assert_settled_cluster_writes_nothing(
        &self,
        name: &str,
        op: &Operator,
        passes: u64,
    ) {
        let clusters: Api<baton::crd::Cluster> = Api::namespaced(self.client.clone(), &self.ns);
        let pod = format!("{name}-shard-0-0");
        self.assert_settled(&clusters, name, &pod, "cluster", op, passes)
            .await;
    }

    async fn assert_settled<K>(
        &self,
        api: &Api<K>,
        name: &str,
        pod: &str,
        controller: &str,
        op: &Operator,
        passes: u64,
    ) where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        // Settled first: a standby's lag crossing its bound when the clients stopped is news
        // written within 10 s, and the pass that recorded Active is followed by one reading it.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let before = reconciles(op, controller).await;
        wait_passes(op, controller, before, 2).await;
        let mark = crate::audit::mark();
        let start = reconciles(op, controller).await;
        let poke = json!({"metadata": {"annotations": {"example.com/touched": "yes"}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&poke))
            .await
            .expect("annotate the object");
        self.pods
            .patch(pod, &PatchParams::default(), &Patch::Merge(&poke))
            .await
            .expect("annotate a member");
        let end = wait_passes(op, controller, start, passes).await;
        // The audit backend writes as each request completes; a moment lets the last line land.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let requests = mark.operator_requests(&self.ns);
        let writes: Vec<_> = requests
            .iter()
            .filter(|r| r.is_write())
            .map(|r| r.describe())
            .collect();
        assert!(
            writes.is_empty(),
            "{} {controller} passes over the settled {name} wrote: {writes:?}",
            end - start
        );
        let reads = requests.len();
        println!(
            "{} settled {controller} passes over {name}: 0 writes, {reads} namespaced reads ({:.1} a pass)",
            end - start,
            reads as f64 / (end - start) as f64
        );
    }

    /// The datastore instance `name` runs.
    pub async fn datastore(&self, name: &str) -> workload::Datastore {
        self.instances
            .get(name)
            .await
            .expect("instance")
            .spec
            .datastore
            .type_
    }

    /// The instance's logins, from its credentials Secret.
    pub async fn auth(&self, name: &str) -> workload::Auth {
        workload::wait_auth(&self.client, &self.ns, name).await
    }

    /// Waits until the primary of `name` at `ip` counts `n` standbys as synchronous
    /// (`durability: Replicated` in effect, not only asked for): PostgreSQL's quorum in
    /// `pg_stat_replication`, MariaDB's semi-synchronous clients with semi-sync on. Panics after
    /// 30 s.
    pub async fn assert_synchronous(&self, name: &str, ip: std::net::IpAddr, n: i64) {
        let auth = self.auth(name).await;
        let ds = self.datastore(name).await;
        let seen = std::sync::Mutex::new(None);
        let found = eventually(Duration::from_secs(30), || async {
            let got = match workload::connect_admin(ds, ip, &auth).await? {
                workload::Conn::Postgres(c) => {
                    let sql =
                        "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'quorum'";
                    c.query_one(sql, &[]).await.ok()?.get::<_, i64>(0)
                }
                workload::Conn::MariaDb(mut c) | workload::Conn::MariaDbReader(mut c) => {
                    use mysql_async::prelude::Queryable;
                    let sql = "SELECT MAX(IF(VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_STATUS', VARIABLE_VALUE, NULL)), \
                               MAX(IF(VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_CLIENTS', VARIABLE_VALUE, NULL)) \
                               FROM information_schema.GLOBAL_STATUS";
                    let (on, clients): (Option<String>, Option<String>) =
                        c.query_first(sql).await.ok()??;
                    let _ = c.disconnect().await;
                    match on.as_deref() {
                        Some("ON") => clients?.parse().ok()?,
                        _ => 0,
                    }
                }
                workload::Conn::Redis(_) => return None,
            };
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(got);
            (got == n).then_some(())
        })
        .await;
        assert!(
            found.is_some(),
            "{name}: the primary at {ip} counts {:?} synchronous standbys, not {n}",
            seen.lock().unwrap_or_else(|p| p.into_inner())
        );
    }

    /// The version each member's server reports, by pod name.
    pub async fn server_versions(&self, name: &str) -> BTreeMap<String, String> {
        let ds = self.datastore(name).await;
        let auth = self.auth(name).await;
        let mut out = BTreeMap::new();
        for (n, p) in self.member_pods(name).await {
            let ip = p.status.and_then(|s| s.pod_ip).expect("pod ip");
            let v = workload::server_version(ds, ip.parse().expect("pod ip"), &auth)
                .await
                .unwrap_or_else(|| panic!("{n} ({ip}) did not report its version"));
            out.insert(n, v);
        }
        out
    }

    /// Asserts that every member's server itself reports `version`.
    pub async fn assert_all_run(&self, name: &str, version: &str) {
        let versions = self.server_versions(name).await;
        assert!(
            !versions.is_empty() && versions.values().all(|v| v == version),
            "{name}: not every member runs {version}: {versions:?}"
        );
    }

    /// Events about the instance, oldest first: (reason, note).
    pub async fn events(&self, name: &str) -> Vec<(String, String)> {
        let mut evs: Vec<Event> = Api::<Event>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect();
        evs.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        evs.into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    /// Waits up to 15 s for an Event about instance `name` with `reason` whose note contains
    /// `naming` ("" for any): Events follow the status write that records what they report.
    pub async fn wait_event(&self, name: &str, reason: &str, naming: &str) {
        self.wait_event_within(name, reason, naming, Duration::from_secs(15))
            .await;
    }

    /// Like [`Env::wait_event`], for an Event that may take up to `timeout` to come.
    pub async fn wait_event_within(
        &self,
        name: &str,
        reason: &str,
        naming: &str,
        timeout: Duration,
    ) {
        let event = eventually(timeout, || async {
            self.events(name)
                .await
                .iter()
                .any(|(r, n)| r == reason && n.contains(naming))
                .then_some(())
        })
        .await;
        assert!(
            event.is_some(),
            "no {reason} Event about {name} naming {naming:?}"
        );
    }

    /// Starts a client that writes to the primary, following its label, until the returned
    /// token is cancelled.
    pub fn writer(
        &self,
        name: &str,
    ) -> (CancellationToken, tokio::task::JoinHandle<workload::Report>) {
        self.writer_with(name, "l", Route::FollowLabel)
    }

    /// Starts a client with its own key space (`writer`) that finds where to write by `route`.
    pub fn writer_with(
        &self,
        name: &str,
        writer: &str,
        route: Route,
    ) -> (CancellationToken, tokio::task::JoinHandle<workload::Report>) {
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (client, ns, name, writer, stop) = (
                self.client.clone(),
                self.ns.clone(),
                name.to_string(),
                writer.to_string(),
                stop.clone(),
            );
            async move {
                // A dropped keep-alive connection (the API server under load) is retried, as
                // any client would.
                let api = Api::<DatabaseInstance>::namespaced(client.clone(), &ns);
                let ds = crate::eventually(Duration::from_secs(30), || async {
                    api.get(&name).await.ok()
                })
                .await
                .expect("instance")
                .spec
                .datastore
                .type_;
                workload::write_until(
                    client,
                    ns,
                    name,
                    ds,
                    &writer,
                    route,
                    Duration::from_millis(250),
                    stop,
                )
                .await
            }
        });
        (stop, task)
    }

    /// Counts, every 100 ms, how many members are not Ready; returns the largest count seen.
    pub fn readiness_monitor(&self, name: &str) -> (CancellationToken, Arc<AtomicUsize>) {
        let stop = CancellationToken::new();
        let worst = Arc::new(AtomicUsize::new(0));
        let (pods, sel, s, w) = (
            self.pods.clone(),
            format!("baton.dev/instance={name}"),
            stop.clone(),
            worst.clone(),
        );
        tokio::spawn(async move {
            while !s.is_cancelled() {
                if let Ok(list) = pods.list(&ListParams::default().labels(&sel)).await {
                    let down: Vec<String> = list
                        .items
                        .iter()
                        .filter(|p| {
                            !p.status
                                .as_ref()
                                .and_then(|s| s.conditions.as_ref())
                                .is_some_and(|c| {
                                    c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                                })
                        })
                        .filter_map(|p| p.metadata.name.clone())
                        .collect();
                    if down.len() > 1 {
                        eprintln!("not Ready at once: {down:?}");
                    }
                    w.fetch_max(down.len(), Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        (stop, worst)
    }

    pub async fn primary_ip(&self, name: &str) -> std::net::IpAddr {
        workload::primary_address(&self.client, &self.ns, name)
            .await
            .expect("one labelled primary")
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn image(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// Checks that none of the instance's passwords (every value of its credentials Secret but the
/// user name) appears in its status, its Events or the operator's log.
pub async fn assert_secrets_kept(env: &Env, op: &Operator, name: &str, inst: &DatabaseInstance) {
    let secret_name = baton::controller::database_instance::children::credentials_name(inst);
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(env.client.clone(), &env.ns)
        .get(&secret_name)
        .await
        .expect("the credentials Secret");
    let passwords: Vec<(String, String)> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != baton::engine::USERNAME)
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    assert!(!passwords.is_empty(), "{secret_name} holds no password");
    let status = serde_json::to_string(&env.instances.get(name).await.expect("instance").status)
        .expect("status");
    let logs = op.logs();
    let events = env.events(name).await;
    for (key, pw) in &passwords {
        assert!(pw.len() >= 8, "{key} is too short to scan for");
        assert!(!status.contains(pw.as_str()), "{key} is in the status");
        assert!(
            !logs.contains(pw.as_str()),
            "{key} is in the operator's log"
        );
        for (reason, note) in &events {
            assert!(
                !note.contains(pw.as_str()),
                "{key} is in the Event {reason}"
            );
        }
    }
}

/// Checks that every acknowledged write of every report is on the primary and, once caught up,
/// on each member; a loss names the member that acknowledged the lost writes.
pub async fn assert_nothing_lost(env: &Env, name: &str, reports: &[&workload::Report]) {
    let total: usize = reports.iter().map(|r| r.acked.len()).sum();
    assert!(total > 50, "the writers barely wrote: {reports:?}");
    let ds = env.datastore(name).await;
    let members = workload::member_addresses(&env.client, &env.ns, name).await;
    let primary = env.primary_ip(name).await;
    for report in reports {
        assert_eq!(workload::distinct(&report.acked), report.acked.len());
        // A connection refused or timed out is retried (a loaded machine, a member that just
        // restarted); what the primary answers is final.
        let lost = eventually(Duration::from_secs(30), || async {
            workload::missing(ds, primary, report).await.ok()
        })
        .await
        .unwrap_or_else(|| panic!("could not read back from the primary {primary} for 30 s"));
        assert!(
            lost.is_empty(),
            "writer {}: {} acknowledged writes lost on the primary: {}",
            report.writer,
            lost.len(),
            workload::describe_loss(&lost, &members)
        );
    }
    for (pod, ip) in &members {
        // What the last look found, so a member that never answered is not reported as one
        // that answered without the writes.
        let last = std::sync::Mutex::new(String::new());
        let caught_up = eventually(READ_BACK, || async {
            for report in reports {
                match workload::missing(ds, *ip, report).await {
                    Ok(lost) if lost.is_empty() => {}
                    found => {
                        let what = match found {
                            Ok(lost) => format!(
                                "writer {}: {} acknowledged writes missing",
                                report.writer,
                                lost.len()
                            ),
                            Err(e) => format!("could not read it: {e}"),
                        };
                        if let Ok(mut l) = last.lock() {
                            *l = what;
                        }
                        return None;
                    }
                }
            }
            Some(())
        })
        .await;
        assert!(
            caught_up.is_some(),
            "member {pod} is missing acknowledged writes after {} s ({})",
            READ_BACK.as_secs(),
            last.lock().map(|l| l.clone()).unwrap_or_default()
        );
    }
}

/// The UpgradeRequests of the test's namespace.
pub fn requests(env: &Env) -> Api<UpgradeRequest> {
    Api::namespaced(env.client.clone(), &env.ns)
}

/// Waits until the request reaches `phase`; panics with its status and the operator's log.
pub async fn wait_request(
    env: &Env,
    name: &str,
    phase: RequestPhase,
    op: &impl Logs,
) -> UpgradeRequest {
    let api = requests(env);
    let found = eventually(LONG, || async {
        let r = api.get(name).await.ok()?;
        (r.status.as_ref()?.phase == Some(phase)).then_some(r)
    })
    .await;
    match found {
        Some(r) => r,
        None => {
            let status = api
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|r| r.status);
            panic!(
                "request {name} never reached {phase:?}; status: {status:#?}\noperator log tail:\n{}",
                tail(&op.logs(), 30)
            )
        }
    }
}

pub async fn set_action(env: &Env, name: &str, action: &str) {
    requests(env)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"action": action}})),
        )
        .await
        .expect("patch action");
}

/// The request's job for `target`; panics with the request's status if there is none.
pub fn job<'a>(r: &'a UpgradeRequest, target: &str) -> &'a baton::crd::TargetJob {
    r.status
        .as_ref()
        .and_then(|s| s.jobs.iter().find(|j| j.target == target))
        .unwrap_or_else(|| panic!("no job for {target}: {:#?}", r.status))
}

/// How many passes the operator's `controller` (`databaseinstance`, `cluster`, …) completed.
pub async fn reconciles(op: &Operator, controller: &str) -> u64 {
    let (_, body) = op.get("/metrics").await.expect("the operator's /metrics");
    let prefix = format!("baton_reconciles_total{{controller=\"{controller}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Waits until `more` passes past `from` completed (within a minute); returns the count.
async fn wait_passes(op: &Operator, controller: &str, from: u64, more: u64) -> u64 {
    eventually(Duration::from_secs(60), || async {
        let n = reconciles(op, controller).await;
        (n >= from + more).then_some(n)
    })
    .await
    .unwrap_or_else(|| {
        panic!("the operator did not complete {more} {controller} passes within a minute")
    })
}

/// Prints what the operator wrote for a 3-member upgrade with one switchover since `mark`.
pub fn print_upgrade_writes(env: &Env, mark: &crate::audit::Mark) {
    let (total, by) = crate::audit::operator_writes(mark, &env.ns);
    println!("API writes for the 3-member upgrade with one switchover: {total} ({by:?})");
    let order: Vec<String> = mark
        .operator_writes(&env.ns)
        .iter()
        .map(|r| r.describe())
        .collect();
    println!("  in order: {order:?}");
}
