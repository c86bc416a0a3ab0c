//! Faults and the checks that must hold through them, for the crash-anywhere suite:
//!
//! - [`Safety`]: watches an instance every 50 ms — how many members accept writes at once (never
//!   more than one) and how many are not Ready at once (at most one);
//! - [`kill_member`]: SIGKILL to a member's server process (the node restarts it);
//! - [`Cut`]: a network cut between the operator and one member, nobody else;
//! - [`ApiProxy`]: a TCP proxy between an operator and the API server that can cut every
//!   connection at once (its watches drop mid-stream);
//! - [`Scenario`]: an upgrade under a label-following, a pinned and a trailing client, with a
//!   fault injected by the caller, ending with every check on the real servers.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::crd::InstancePhase;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::env::{Env, assert_nothing_lost};
use crate::harness::{Operator, eventually};
use crate::workload::{self, Report, Route};

/// A network cut between the processes of one group and one address: every packet they send
/// to it is dropped (iptables, by the socket owner's group), so their connections hang and time
/// out, while every other process (the node's probes, the clients) still reaches it. Run the
/// operator in that group ([`Env::operator_in_group`]) and the member looks cut off from Baton
/// alone. Lifted when dropped.
pub struct Cut {
    rule: Vec<String>,
}

impl Cut {
    pub fn new(gid: u32, to: IpAddr) -> Option<Cut> {
        let rule: Vec<String> = [
            "OUTPUT",
            "-d",
            &format!("{to}/32"),
            "-m",
            "owner",
            "--gid-owner",
            &gid.to_string(),
            "-j",
            "DROP",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        iptables("-I", &rule).then_some(Cut { rule })
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        iptables("-D", &self.rule);
    }
}

/// Every process's TCP connections to `to:port` are refused (a reset, as from a server that is
/// down or restarting), while the server itself keeps running. Lifted when dropped.
pub struct Refuse {
    rule: Vec<String>,
}

impl Refuse {
    pub fn new(to: IpAddr, port: u16) -> Option<Refuse> {
        let rule: Vec<String> = [
            "OUTPUT",
            "-d",
            &format!("{to}/32"),
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        iptables("-I", &rule).then_some(Refuse { rule })
    }
}

impl Drop for Refuse {
    fn drop(&mut self) {
        iptables("-D", &self.rule);
    }
}

fn iptables(op: &str, rule: &[String]) -> bool {
    std::process::Command::new("iptables")
        .arg("-w")
        .arg(op)
        .args(rule)
        .status()
        .is_ok_and(|s| s.success())
}

/// The worst moments a [`Safety`] watch saw.
#[derive(Debug, Clone, Default)]
pub struct Worst {
    /// The most members accepting writes at one moment, and which.
    pub writable: Vec<String>,
    /// The most members not Ready at one moment, and which.
    pub not_ready: Vec<String>,
}

/// Watches an instance's members until stopped.
pub struct Safety {
    stop: CancellationToken,
    worst: Arc<Mutex<Worst>>,
}

impl Safety {
    pub fn watch(env: &Env, name: &str, ds: baton::crd::Datastore, auth: workload::Auth) -> Safety {
        let stop = CancellationToken::new();
        let worst = Arc::new(Mutex::new(Worst::default()));
        let (pods, sel, s, w) = (
            env.pods.clone(),
            format!("baton.dev/instance={name}"),
            stop.clone(),
            worst.clone(),
        );
        let engine = baton::engine::for_datastore(ds).expect("engine");
        tokio::spawn(async move {
            while !s.is_cancelled() {
                if let Ok(list) = pods.list(&ListParams::default().labels(&sel)).await {
                    let mut writable = vec![];
                    let mut not_ready = vec![];
                    for p in &list.items {
                        let name = p.metadata.name.clone().unwrap_or_default();
                        if !ready(p) {
                            not_ready.push(name.clone());
                        }
                        let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
                            continue;
                        };
                        let Ok(ip) = ip.parse() else {
                            continue;
                        };
                        let t = auth.target(ip, engine.port());
                        if engine.probe(&t).await.is_ok_and(|pr| pr.writable()) {
                            writable.push(name);
                        }
                    }
                    let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
                    if writable.len() > w.writable.len() {
                        w.writable = writable;
                    }
                    if not_ready.len() > w.not_ready.len() {
                        w.not_ready = not_ready;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Safety { stop, worst }
    }

    pub fn finish(self) -> Worst {
        self.stop.cancel();
        self.worst.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Kills a member's container process with SIGKILL (the node restarts the container).
pub async fn kill_member(env: &Env, pod: &str) -> bool {
    match member_pid(env, pod).await {
        Some(pid) => signal(&[pid], "KILL"),
        None => false,
    }
}

/// Stops a member's container cleanly with SIGTERM, as its node does (the node starts it
/// again).
pub async fn stop_member(env: &Env, pod: &str) -> bool {
    match member_pid(env, pod).await {
        Some(pid) => signal(&[pid], "TERM"),
        None => false,
    }
}

/// Stops every process of a member's container: a hung server, its port open and nothing
/// answered. The whole tree, since a boot script may run the server as its child; each parent
/// is stopped before its children are listed, so it forks none meanwhile (a child that exited by
/// then is simply gone). The processes continue when the returned guard is dropped, so a
/// failing test leaves none stopped.
pub async fn hang_member(env: &Env, pod: &str) -> Option<Hung> {
    let pid = member_pid(env, pod).await?;
    if !signal(&[pid], "STOP") {
        return None;
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let children = std::process::Command::new("pgrep")
            .args(["-P", &tree[i].to_string()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for child in children
            .lines()
            .filter_map(|l| l.trim().parse::<u32>().ok())
        {
            signal(&[child], "STOP");
            tree.push(child);
        }
        i += 1;
    }
    Some(Hung { pids: tree })
}

/// The stopped processes of [`hang_member`]; dropping it continues them.
pub struct Hung {
    pids: Vec<u32>,
}

impl Drop for Hung {
    fn drop(&mut self) {
        for pid in &self.pids {
            signal(&[*pid], "CONT");
        }
    }
}

fn signal(pids: &[u32], sig: &str) -> bool {
    let mut args = vec![format!("-{sig}")];
    args.extend(pids.iter().map(u32::to_string));
    std::process::Command::new("kill")
        .args(&args)
        .status()
        .is_ok_and(|s| s.success())
}

/// The pid of a member's container process, as its node reports it.
async fn member_pid(env: &Env, pod: &str) -> Option<u32> {
    env.pods
        .get(pod)
        .await
        .ok()?
        .status?
        .container_statuses?
        .first()?
        .container_id
        .clone()?
        .strip_prefix("baton://")?
        .parse()
        .ok()
}

/// A TCP proxy in front of the API server that can drop every connection at once.
pub struct ApiProxy {
    pub port: u16,
    cut: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl ApiProxy {
    /// Proxies 127.0.0.1:<port> to `upstream` (host:port).
    pub async fn start(upstream: String) -> ApiProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (c, s) = (cut.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut down, _)) = accepted else {
                    continue;
                };
                let token = c.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let up = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut upc) = TcpStream::connect(&up).await else {
                        return;
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut down, &mut upc) => {}
                    }
                });
            }
        });
        ApiProxy { port, cut, stop }
    }

    /// Drops every open connection (watches included); new ones go through again.
    pub fn cut(&self) {
        let mut token = self.cut.lock().unwrap_or_else(|p| p.into_inner());
        token.cancel();
        *token = CancellationToken::new();
    }

    /// A kubeconfig for the admin user that goes through this proxy.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let admin = std::fs::read_to_string(crate::harness::kubeconfig_path()).expect("kubeconfig");
        let text: String = admin
            .lines()
            .map(|l| match l.trim().strip_prefix("server: ") {
                Some(_) => format!("    server: https://127.0.0.1:{}", self.port),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let path = dir.join(format!("kubeconfig-proxy-{}", self.port));
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

/// How a scenario ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Active on the target, or the failure the instance reported.
    pub result: Result<(), String>,
    pub worst: Worst,
    pub reports: Vec<Report>,
}

/// An instance `name` of 3 members on `source`, brought up by a steady operator; the caller
/// then upgrades it under three clients with whatever fault it injects, and `finish` checks.
pub struct Scenario<'a> {
    pub env: &'a Env,
    pub name: String,
    writers: Vec<(CancellationToken, tokio::task::JoinHandle<Report>)>,
    safety: Option<Safety>,
    pub first_primary: IpAddr,
    pub datastore: baton::crd::Datastore,
    pub auth: workload::Auth,
    /// How long `finish` waits for the upgrade to end (`LONG` unless raised).
    pub patience: Duration,
}

impl<'a> Scenario<'a> {
    /// Creates the instance and waits until it is Active on `source` (a steady operator does
    /// it, then stops), then starts the clients and the safety watch.
    pub async fn prepare(
        env: &'a Env,
        name: &str,
        source: &str,
        extra: serde_json::Value,
    ) -> Scenario<'a> {
        let steady = env.operator(&format!("{name}-steady"), "");
        env.create(name, 3, extra).await;
        env.wait_for(name, InstancePhase::Active, source, &steady)
            .await;
        drop(steady);
        let first_primary = env.primary_ip(name).await;
        let datastore = env.datastore(name).await;
        let auth = env.auth(name).await;
        let writers = vec![
            env.writer_with(name, "label", Route::FollowLabel),
            env.writer_with(name, "pinned", Route::Pinned(first_primary)),
            env.writer_with(
                name,
                "trailing",
                Route::Trailing {
                    delay: Duration::from_secs(1),
                },
            ),
        ];
        Scenario {
            safety: Some(Safety::watch(env, name, datastore, auth.clone())),
            auth,
            env,
            name: name.into(),
            writers,
            first_primary,
            datastore,
            patience: crate::env::LONG,
        }
    }

    pub async fn set_version(&self, version: &str) {
        self.env
            .patch_spec(
                &self.name,
                json!({"datastore": {"type": self.datastore, "version": version}}),
            )
            .await;
    }

    /// Waits (with `op` running) until the instance is Active on `target` or reports a failed
    /// upgrade, stops the clients, and checks: nothing acknowledged lost on any member, never
    /// two writable members, at most one member not Ready at a time, exactly one labelled
    /// primary that accepts writes.
    pub async fn finish(mut self, op: &Operator, target: &str) -> Outcome {
        let env = self.env;
        let name = self.name.clone();
        let result = eventually(self.patience, || async {
            let s = env.instances.get(&name).await.ok()?.status?;
            if s.phase == Some(InstancePhase::Active)
                && s.version.as_deref() == Some(target)
                && s.upgrade.is_none()
            {
                return Some(Ok(()));
            }
            match (s.phase, s.upgrade.and_then(|u| u.failure)) {
                (Some(InstancePhase::Error), Some(f)) => Some(Err(f)),
                _ => None,
            }
        })
        .await;
        let Some(result) = result else {
            let status = env.instances.get(&name).await.ok().and_then(|i| i.status);
            panic!(
                "{name} never finished: {status:#?}\n{}",
                crate::env::tail(&op.logs(), 30)
            )
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut reports = vec![];
        for (stop, task) in self.writers.drain(..) {
            stop.cancel();
            reports.push(task.await.expect("writer"));
        }
        let worst = self.safety.take().map(Safety::finish).unwrap_or_default();
        assert!(
            worst.writable.len() <= 1,
            "{name}: members accepting writes at once: {:?}",
            worst.writable
        );
        assert!(
            worst.not_ready.len() <= 1,
            "{name}: members not Ready at once: {:?}",
            worst.not_ready
        );
        // Each try re-reads the label and probes every member; the last one seen is what a
        // failure reports (a probe error, two writable members, or a writable one unlabelled).
        // As long as the read-back: at the crash suite's peak a member that serves (its log
        // shows sessions ending) missed every 3 s connect for over 30 s.
        let engine = baton::engine::for_datastore(self.datastore).expect("engine");
        let seen = std::sync::Mutex::new(String::new());
        let writable = eventually(crate::env::READ_BACK, || async {
            let primary = workload::primary_address(&env.client, &env.ns, &name).await;
            let members = workload::member_addresses(&env.client, &env.ns, &name).await;
            let mut w = BTreeMap::new();
            let mut saw = format!("labelled primary {primary:?};");
            for (pod, ip) in members {
                let t = self.auth.target(ip, engine.port());
                match engine.probe(&t).await {
                    Ok(p) => {
                        saw += &format!(
                            " {pod} ({ip}) {:?}{};",
                            p.role,
                            if p.fenced { " fenced" } else { "" }
                        );
                        if p.writable() {
                            w.insert(pod, ip);
                        }
                    }
                    Err(e) => saw += &format!(" {pod} ({ip}) probe failed: {e};"),
                }
            }
            *seen.lock().expect("seen") = saw;
            (w.len() == 1 && primary.is_some_and(|p| w.values().all(|ip| *ip == p))).then_some(w)
        })
        .await;
        assert!(
            writable.is_some(),
            "{name}: the labelled primary is not the one writable member; last seen: {}\n{}",
            seen.lock().expect("seen"),
            crate::env::tail(&op.logs(), 30)
        );
        assert_nothing_lost(env, &name, &reports.iter().collect::<Vec<_>>()).await;
        // And no password of the instance surfaced in its status, Events or this operator's log.
        let inst = env.instances.get(&name).await.expect("instance");
        crate::env::assert_secrets_kept(env, op, &name, &inst).await;
        Outcome {
            result,
            worst,
            reports,
        }
    }
}
