//! `baton-node`: the local node agent. It plays the kubelet for one Node on a machine with no
//! container runtime: registers the Node and keeps it Ready, binds unscheduled pods to it, and
//! runs each pod's containers as real local processes (see `worker`).
//!
//! Not part of the operator's image: it exists so Baton can be tested and tried end to end
//! without a cluster.

mod envvars;
mod images;
mod probes;
mod runtime;
mod volumes;
mod worker;

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use images::ImageMap;
use worker::Stop;

#[derive(Parser)]
#[command(
    name = "baton-node",
    version,
    about = "Plays the kubelet for one local Node: pods run as local processes"
)]
struct Args {
    /// The Node's name.
    #[arg(long, env = "BATON_NODE_NAME", default_value = "baton-local")]
    node_name: String,
    /// The image mapping file.
    #[arg(long, env = "BATON_NODE_IMAGES")]
    images: PathBuf,
    /// Where claims' data, pods' files and container logs live.
    #[arg(long, env = "BATON_NODE_STATE")]
    state_dir: PathBuf,
    /// The LD_PRELOAD shim that gives each pod its own loopback address (libbaton-podnet.so).
    #[arg(long, env = "BATON_NODE_PODNET")]
    podnet: Option<PathBuf>,
    /// The first pod address; pods get consecutive addresses in 127.0.0.0/8 from here.
    #[arg(long, env = "BATON_FIRST_POD_IP", default_value = "127.1.0.2")]
    first_pod_ip: Ipv4Addr,
    /// The first restart back-off; it doubles per crash up to 5 minutes (the kubelet uses 10 s).
    #[arg(long, default_value = "1", value_name = "SECONDS")]
    backoff_seconds: u64,
    /// Bind pods that no scheduler has placed to this node.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    bind_pods: bool,
}

/// What every pod worker shares.
pub struct NodeCtx {
    pub client: Client,
    pub node_name: String,
    pub images: ImageMap,
    pub state: PathBuf,
    pub podnet: Option<PathBuf>,
    pub backoff_base: Duration,
    pub ips: IpPool,
    /// `BATON_NODE=<marker>` in every container's environment identifies this agent's
    /// processes (the state directory: unique per local environment).
    pub marker: String,
    /// The `kubernetes` Service, as the kubelet passes it to every container, and where its
    /// ClusterIP leads (no kube-proxy here: the podnet shim sends connections to the API
    /// server's address).
    pub api_service: Option<ApiService>,
}

/// The `default/kubernetes` Service's ClusterIP and port, and the API server behind it.
#[derive(Debug, Clone)]
pub struct ApiService {
    pub cluster_ip: String,
    pub port: u16,
    pub backend: String,
}

impl ApiService {
    /// Reads the Service; None when it has no ClusterIP or the API server is not on IPv4.
    async fn discover(client: &Client, api_url: &str) -> Option<ApiService> {
        use k8s_openapi::api::core::v1::Service;
        let svc = Api::<Service>::namespaced(client.clone(), "default")
            .get_opt("kubernetes")
            .await
            .ok()??;
        let spec = svc.spec?;
        let port = spec.ports?.into_iter().next()?.port;
        let authority = api_url.strip_prefix("https://")?.split('/').next()?;
        let backend: std::net::SocketAddrV4 = authority.parse().ok()?;
        Some(ApiService {
            cluster_ip: spec.cluster_ip?,
            port: u16::try_from(port).ok()?,
            backend: backend.to_string(),
        })
    }
}

/// Pod addresses: consecutive loopback addresses, each held by one pod at a time. Freed
/// addresses are reused only after the pool wraps, so a dying pod's address is not reused at once.
pub struct IpPool {
    first: u32,
    inner: Mutex<(BTreeSet<u32>, u32)>,
}

impl IpPool {
    fn new(first: Ipv4Addr) -> IpPool {
        IpPool {
            first: first.into(),
            inner: Mutex::new((BTreeSet::new(), 0)),
        }
    }

    /// Takes `wanted` if it is free (a pod that already had an address keeps it), else the next.
    pub fn allocate(&self, wanted: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (used, next) = &mut *g;
        if let Some(w) = wanted.map(u32::from)
            && w >= self.first
            && !used.contains(&w)
        {
            used.insert(w);
            return Some(w.into());
        }
        let span = u32::from(Ipv4Addr::new(127, 255, 255, 254)) - self.first;
        for _ in 0..span {
            let candidate = self.first + *next % span;
            *next = (*next + 1) % span;
            if used.insert(candidate) {
                return Some(candidate.into());
            }
        }
        None
    }

    pub fn release(&self, ip: Ipv4Addr) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0.remove(&u32::from(ip));
    }
}

struct Handle {
    pod: watch::Sender<Arc<Pod>>,
    stop: watch::Sender<Stop>,
    task: tokio::task::JoinHandle<()>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton-node: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton-node: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let images = ImageMap::load(&args.images, &|k| std::env::var(k).ok())?;
    std::fs::create_dir_all(&args.state_dir)?;
    let state = std::fs::canonicalize(&args.state_dir)?;
    let marker = state.to_string_lossy().into_owned();
    kill_leftovers(&marker);
    let config = kube::Config::infer().await?;
    let api_url = config.cluster_url.to_string();
    let client = Client::try_from(config)?;
    let api_service = ApiService::discover(&client, &api_url).await;
    match &api_service {
        Some(a) => {
            info!(service = %format!("{}:{}", a.cluster_ip, a.port), backend = %a.backend, "the kubernetes Service leads to the API server")
        }
        None => warn!("no default/kubernetes Service: containers get no KUBERNETES_SERVICE_HOST"),
    }
    let ctx = Arc::new(NodeCtx {
        client: client.clone(),
        node_name: args.node_name.clone(),
        images,
        state,
        podnet: args.podnet.clone(),
        backoff_base: Duration::from_secs(args.backoff_seconds.max(1)),
        ips: IpPool::new(args.first_pod_ip),
        marker: marker.clone(),
        api_service,
    });
    register_node(&client, &args.node_name, true).await?;
    info!(node = %args.node_name, "node registered");

    let shutdown = tokio_util::sync::CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            if let (Ok(mut t), Ok(mut i)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
            }
            shutdown.cancel();
        });
    }
    let heartbeat = {
        let (client, name, shutdown) = (client.clone(), args.node_name.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
                if let Err(e) = register_node(&client, &name, true).await {
                    warn!(error = %e, "node heartbeat failed");
                }
            }
        })
    };
    {
        let (client, state, shutdown) = (client.clone(), ctx.state.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
                match volumes::reclaim(&client, &state).await {
                    Ok(gone) => {
                        for uid in gone {
                            info!(claim_uid = %uid, "reclaimed a deleted claim's volume");
                        }
                    }
                    Err(e) => warn!(error = %e, "reclaiming deleted claims' volumes failed"),
                }
            }
        });
    }
    if args.bind_pods {
        tokio::spawn(bind_unscheduled(
            client.clone(),
            args.node_name.clone(),
            shutdown.clone(),
        ));
    }

    let pods: Api<Pod> = Api::all(client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", args.node_name));
    let mut events = watcher::watcher(pods, cfg).boxed();
    let mut workers: HashMap<String, Handle> = HashMap::new();
    let mut seen_in_resync: Option<BTreeSet<String>> = None;
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = events.try_next() => ev,
        };
        match ev {
            Ok(Some(Event::Apply(pod))) | Ok(Some(Event::InitApply(pod))) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(seen) = seen_in_resync.as_mut() {
                    seen.insert(uid.clone());
                }
                let pod = Arc::new(pod);
                match workers.get(&uid) {
                    Some(h) if !h.task.is_finished() => {
                        let _ = h.pod.send(pod);
                    }
                    _ => {
                        let (pod_tx, pod_rx) = watch::channel(pod);
                        let (stop_tx, stop_rx) = watch::channel(Stop::Run);
                        let task = tokio::spawn(worker::run(ctx.clone(), pod_rx, stop_rx));
                        workers.insert(
                            uid,
                            Handle {
                                pod: pod_tx,
                                stop: stop_tx,
                                task,
                            },
                        );
                    }
                }
            }
            Ok(Some(Event::Delete(pod))) => {
                if let Some(h) = workers.remove(pod.metadata.uid.as_deref().unwrap_or_default()) {
                    let _ = h.stop.send(Stop::Vanished);
                    tokio::spawn(h.task);
                }
            }
            Ok(Some(Event::Init)) => seen_in_resync = Some(BTreeSet::new()),
            Ok(Some(Event::InitDone)) => {
                // Pods that disappeared while the watch was re-listing.
                if let Some(seen) = seen_in_resync.take() {
                    let gone: Vec<String> = workers
                        .keys()
                        .filter(|k| !seen.contains(*k))
                        .cloned()
                        .collect();
                    for uid in gone {
                        if let Some(h) = workers.remove(&uid) {
                            let _ = h.stop.send(Stop::Vanished);
                            tokio::spawn(h.task);
                        }
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                warn!(error = %e, "pod watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        workers.retain(|_, h| !h.task.is_finished());
    }

    info!(pods = workers.len(), "stopping every container");
    for h in workers.values() {
        let _ = h.stop.send(Stop::Shutdown);
    }
    for (_, h) in workers.drain() {
        let _ = h.task.await;
    }
    heartbeat.abort();
    if let Err(e) = register_node(&client, &args.node_name, false).await {
        warn!(error = %e, "marking the node NotReady failed");
    }
    kill_leftovers(&marker);
    info!("stopped");
    Ok(())
}

/// Creates the Node if needed and writes its status (Ready or not, with a fresh heartbeat).
async fn register_node(client: &Client, name: &str, ready: bool) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(name).await?.is_none() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "baton.dev/local-node": "true"}},
            "spec": {}
        }))?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let now = jiff::Timestamp::now().to_string();
    let cond = |t: &str, status: bool, reason: &str, message: &str| {
        json!({"type": t, "status": if status {"True"} else {"False"}, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let resources =
        json!({"cpu": "2", "memory": "24Gi", "pods": "110", "ephemeral-storage": "50Gi"});
    let status = json!({"status": {
        "conditions": [
            if ready { cond("Ready", true, "KubeletReady", "baton-node is posting ready status") }
            else { cond("Ready", false, "KubeletNotReady", "baton-node stopped") },
            cond("MemoryPressure", false, "KubeletHasSufficientMemory", ""),
            cond("DiskPressure", false, "KubeletHasNoDiskPressure", ""),
            cond("PIDPressure", false, "KubeletHasSufficientPID", ""),
        ],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        "capacity": resources, "allocatable": resources,
        "nodeInfo": {"kubeletVersion": concat!("baton-node/", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            "containerRuntimeVersion": "baton-local://processes", "kernelVersion": "", "osImage": "",
            "machineID": "", "systemUUID": "", "bootID": ""},
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// Binds every pod that is not yet placed and asks for the default scheduler to this node (the
/// node is the only one, so the scheduler's choice would be the same).
async fn bind_unscheduled(
    client: Client,
    node: String,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let cfg = watcher::Config::default().fields("spec.nodeName=");
    let mut events = watcher::watcher(pods, cfg).boxed();
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.try_next() => ev,
        };
        let pod = match ev {
            Ok(Some(Event::Apply(p))) | Ok(Some(Event::InitApply(p))) => p,
            Ok(Some(_)) => continue,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "unscheduled-pod watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let scheduler = pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or("default-scheduler");
        if scheduler != "default-scheduler" || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": pod.name_any(), "namespace": ns, "uid": pod.metadata.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        match api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &pod.name_any(),
                &PostParams::default(),
                &binding,
            )
            .await
        {
            Ok(_) => info!(pod = %format!("{ns}/{}", pod.name_any()), "bound to this node"),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
            Err(e) => warn!(error = %e, "binding failed"),
        }
    }
}

/// Kills processes a previous, crashed agent of this node left behind (they carry
/// `BATON_NODE=<marker>` in their environment).
fn kill_leftovers(marker: &str) {
    let marker = format!("BATON_NODE={marker}\0");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(env) = std::fs::read(e.path().join("environ"))
            && env.windows(marker.len()).any(|w| w == marker.as_bytes())
        {
            warn!(pid, "killing a container process left by an earlier agent");
            runtime::signal(pid, "KILL", false);
        }
    }
}
