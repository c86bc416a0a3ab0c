//! One pod's supervisor: prepares its volumes and address, runs its init containers one after
//! another to completion, starts each container as a local process, restarts them per
//! `restartPolicy` with back-off, replaces a container whose image changed, runs probes, writes
//! `pods/status`, and finishes the pod's deletion.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::process::Child;
use tokio::sync::watch;
use tracing::{info, warn};

use super::NodeCtx;
use super::envvars::expand;
use super::images::argv;
use super::probes::{self, ExecContext};
use super::runtime::{self, Launch, Mount};
use super::volumes::{self, Source};

/// Why a worker must stop without a graceful API deletion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Run,
    /// The pod object is gone (force-deleted): stop its containers and forget it.
    Vanished,
    /// The agent is stopping: stop every container, keep the pod's state.
    Shutdown,
}

#[derive(Clone, Debug, PartialEq)]
struct Terminated {
    exit_code: i32,
    reason: &'static str,
    /// With `terminationMessagePolicy: FallbackToLogsOnError`, the end of the log of a
    /// container that failed (the kubelet's last 80 lines, at most 2 KiB).
    message: Option<String>,
    started: Option<Time>,
    finished: Time,
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    Waiting { reason: String, message: String },
    Running,
    Terminated(Terminated),
}

#[derive(Default)]
struct ProbeState {
    successes: u32,
    failures: u32,
    next_at: Option<Instant>,
}

struct Rt {
    name: String,
    image: String,
    child: Option<Child>,
    env: BTreeMap<String, String>,
    started_at: Option<Time>,
    restart_count: i32,
    ever_started: bool,
    state: State,
    last: Option<Terminated>,
    ready: bool,
    /// The startup probe passed (or there is none): readiness and liveness run from here.
    started: bool,
    startup: ProbeState,
    readiness: ProbeState,
    liveness: ProbeState,
    crashes: u32,
    next_start: Option<Instant>,
}

impl Rt {
    fn new(c: &Container, previous: Option<&Value>) -> Rt {
        Rt {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            child: None,
            env: BTreeMap::new(),
            started_at: None,
            restart_count: previous
                .and_then(|p| p["restartCount"].as_i64())
                .unwrap_or(0) as i32,
            ever_started: previous
                .is_some_and(|p| p["state"]["running"].is_object() || p["lastState"].is_object()),
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            last: None,
            ready: false,
            started: false,
            startup: ProbeState::default(),
            readiness: ProbeState::default(),
            liveness: ProbeState::default(),
            crashes: 0,
            next_start: None,
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }
}

/// How often a running pod's Secret and ConfigMap files are brought up to date (the kubelet
/// takes up to its sync period plus its cache's TTL; a few seconds keeps the tests short).
const REFRESH: Duration = Duration::from_secs(3);

/// Where a container's output goes (what `kubectl logs` would show).
fn log_path(state: &std::path::Path, pod: &Pod, container: &str) -> PathBuf {
    state
        .join("logs")
        .join(format!(
            "{}_{}_{}",
            pod.namespace().unwrap_or_default(),
            pod.name_any(),
            pod.metadata.uid.as_deref().unwrap_or_default()
        ))
        .join(format!("{container}.log"))
}

/// The last 80 lines of a log, at most 2 KiB of them, as the kubelet's fallback message.
fn log_tail(path: &std::path::Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(2048)..]).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(80)..].join("\n");
    (!tail.is_empty()).then_some(tail)
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// Supervises one pod until it is deleted, vanishes, or the agent stops.
pub async fn run(
    ctx: Arc<NodeCtx>,
    mut pod_rx: watch::Receiver<Arc<Pod>>,
    mut stop_rx: watch::Receiver<Stop>,
) {
    let first = pod_rx.borrow().clone();
    let (ns, name) = (first.namespace().unwrap_or_default(), first.name_any());
    let uid = first.metadata.uid.clone().unwrap_or_default();
    let api = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    let previous_statuses: BTreeMap<String, Value> = first
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| Some((s.name.clone(), serde_json::to_value(s).ok()?)))
        .collect();
    let ip = ctx.ips.allocate(
        first
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|i| i.parse().ok()),
    );
    let Some(ip) = ip else {
        warn!(pod = %format!("{ns}/{name}"), "no free pod address");
        return;
    };
    let start_time = first
        .status
        .as_ref()
        .and_then(|s| s.start_time.clone())
        .unwrap_or_else(now);
    let mut rts: Vec<Rt> = containers(&first)
        .iter()
        .map(|c| Rt::new(c, previous_statuses.get(&c.name)))
        .collect();
    // Init containers run again when the agent restarts (the kubelet reruns them with a new
    // sandbox; they must be idempotent either way).
    let mut init_rts: Vec<Rt> = init_containers(&first)
        .iter()
        .map(|c| Rt::new(c, None))
        .collect();
    let mut volumes: Option<BTreeMap<String, PathBuf>> = None;
    let mut written: Option<Value> = None;
    let mut transitions: BTreeMap<&'static str, (bool, Time)> = BTreeMap::new();
    info!(pod = %format!("{ns}/{name}"), %ip, "pod assigned");
    let mut last_refresh = Instant::now();

    loop {
        let pod = pod_rx.borrow().clone();
        let stop = *stop_rx.borrow();
        if pod.metadata.deletion_timestamp.is_some() || stop != Stop::Run {
            let grace = grace_period(&pod, stop);
            for rt in rts.iter_mut().chain(init_rts.iter_mut()) {
                if let Some(mut child) = rt.child.take() {
                    runtime::stop(&mut child, grace).await;
                }
            }
            if stop == Stop::Shutdown {
                return;
            }
            if stop == Stop::Run {
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                if let Err(e) = api.delete(&name, &dp).await
                    && !matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 409)
                {
                    warn!(error = %e, "finishing the pod deletion failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            let _ = std::fs::remove_dir_all(volumes::pod_dir(&ctx.state, &pod));
            ctx.ips.release(ip);
            info!(pod = %format!("{ns}/{name}"), "pod finished");
            return;
        }

        if volumes.is_none() {
            match volumes::prepare(&ctx.client, &ctx.state, &pod).await {
                Ok(v) => volumes = Some(v),
                Err(e) => {
                    for rt in rts.iter_mut() {
                        rt.state = State::Waiting {
                            reason: "ContainerCreating".into(),
                            message: e.to_string(),
                        };
                    }
                }
            }
        }
        if volumes.is_some() && last_refresh.elapsed() >= REFRESH {
            last_refresh = Instant::now();
            if let Err(e) = volumes::refresh(&ctx.client, &ctx.state, &pod).await {
                warn!(pod = %format!("{ns}/{name}"), error = %e, "refreshing Secret and ConfigMap files failed");
            }
        }
        if let Some(vols) = &volumes {
            match init_step(&init_rts) {
                InitStep::Run(i) => {
                    let c = &init_containers(&pod)[i];
                    supervise(&ctx, &pod, c, &mut init_rts[i], vols, ip, true).await;
                }
                InitStep::Done => {
                    for c in containers(&pod) {
                        let Some(rt) = rts.iter_mut().find(|r| r.name == c.name) else {
                            continue;
                        };
                        supervise(&ctx, &pod, c, rt, vols, ip, false).await;
                    }
                }
                InitStep::Failed => {}
            }
        }

        let status = build_status(&pod, &init_rts, &rts, ip, &start_time, &mut transitions);
        if written.as_ref() != Some(&status) {
            match api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({ "status": status })),
                )
                .await
            {
                Ok(_) => written = Some(status),
                Err(e) => {
                    warn!(pod = %format!("{ns}/{name}"), error = %e, "writing pod status failed")
                }
            }
        }

        tokio::select! {
            r = pod_rx.changed() => if r.is_err() { return },
            r = stop_rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Where the init containers stand: the one to run now, all done, or one failed for good.
enum InitStep {
    Run(usize),
    Done,
    Failed,
}

fn init_step(init: &[Rt]) -> InitStep {
    for (i, rt) in init.iter().enumerate() {
        match &rt.state {
            State::Terminated(t) if t.exit_code == 0 => continue,
            State::Terminated(_) if rt.next_start.is_none() => return InitStep::Failed,
            _ => return InitStep::Run(i),
        }
    }
    InitStep::Done
}

fn init_containers(pod: &Pod) -> &[Container] {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default()
}

fn containers(pod: &Pod) -> &[Container] {
    pod.spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
}

fn grace_period(pod: &Pod, stop: Stop) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(0) as u64;
    match stop {
        // The agent's own stop must end promptly; the data is safe in each volume.
        Stop::Shutdown | Stop::Vanished => Duration::from_secs(secs.min(10)),
        Stop::Run => Duration::from_secs(secs),
    }
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

/// One step for one container: notice an exit, replace on image change or failed liveness,
/// start when due, run probes. An init container (`init`) runs to completion: it is restarted
/// only after a failure, and never under `restartPolicy: Never`.
async fn supervise(
    ctx: &NodeCtx,
    pod: &Pod,
    c: &Container,
    rt: &mut Rt,
    vols: &BTreeMap<String, PathBuf>,
    ip: Ipv4Addr,
    init: bool,
) {
    let spec_image = c.image.clone().unwrap_or_default();
    let grace = grace_period(pod, Stop::Run);

    // A process that exited by itself.
    let pid = rt.child.as_ref().and_then(|c| c.id());
    if let Some(child) = rt.child.as_mut()
        && let Ok(Some(status)) = child.try_wait()
    {
        // As in a pod's PID namespace, whatever the container's first process leaves behind
        // dies with it (a server it started must not hold the data directory and the port).
        if let Some(pid) = pid {
            runtime::signal(pid, "KILL", true);
        }
        let code = status.code().unwrap_or(137);
        let message = (code != 0
            && c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError"))
        .then(|| log_tail(&log_path(&ctx.state, pod, &c.name)))
        .flatten();
        let t = Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" },
            message,
            started: rt.started_at.clone(),
            finished: now(),
        };
        warn!(pod = %pod.name_any(), container = %rt.name, exit_code = code, "container exited");
        rt.child = None;
        rt.ready = false;
        rt.last = Some(t.clone());
        rt.state = State::Terminated(t);
        let restart = match restart_policy(pod) {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => !init || code != 0,
        };
        if restart {
            let delay = ctx.backoff_base * 2u32.saturating_pow(rt.crashes.min(8));
            let delay = delay.min(Duration::from_secs(300));
            rt.crashes += 1;
            rt.next_start = Some(Instant::now() + delay);
            rt.state = State::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: format!("back-off {}s restarting failed container", delay.as_secs()),
            };
        } else {
            rt.next_start = None;
        }
    }

    // Replace a running container whose image changed, or whose liveness (or startup) probe
    // failed.
    let liveness_failed = c
        .liveness_probe
        .as_ref()
        .is_some_and(|p| rt.liveness.failures >= probes::timing(p).failure_threshold)
        || c.startup_probe
            .as_ref()
            .is_some_and(|p| rt.startup.failures >= probes::timing(p).failure_threshold);
    if rt.child.is_some() && (rt.image != spec_image || liveness_failed) {
        let why = if liveness_failed {
            "liveness probe failed"
        } else {
            "image changed"
        };
        info!(pod = %pod.name_any(), container = %rt.name, from = %rt.image, to = %spec_image, why, "restarting container");
        if let Some(mut child) = rt.child.take() {
            let code = runtime::stop(&mut child, grace).await.unwrap_or(137);
            rt.last = Some(Terminated {
                message: None,
                exit_code: code,
                reason: if liveness_failed {
                    "Error"
                } else {
                    "Completed"
                },
                started: rt.started_at.clone(),
                finished: now(),
            });
        }
        rt.ready = false;
        if liveness_failed {
            // A failing liveness probe backs off like a crash; a new image starts at once.
            let delay = (ctx.backoff_base * 2u32.saturating_pow(rt.crashes.min(8)))
                .min(Duration::from_secs(300));
            rt.crashes += 1;
            rt.next_start = Some(Instant::now() + delay);
            rt.state = State::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: format!(
                    "back-off {}s restarting container that failed its liveness probe",
                    delay.as_secs()
                ),
            };
        } else {
            rt.next_start = Some(Instant::now());
            rt.crashes = 0;
        }
    }

    // Start when due: first start, back-off elapsed, or a replacement.
    let due = rt.child.is_none()
        && match (&rt.state, rt.next_start) {
            (_, Some(at)) => Instant::now() >= at,
            (State::Waiting { .. }, None) => true,
            _ => false,
        };
    if due {
        match launch(ctx, pod, c, vols, ip).await {
            Ok((launch, image)) => match runtime::start(&launch) {
                Ok(child) => {
                    if rt.ever_started {
                        rt.restart_count += 1;
                    }
                    rt.ever_started = true;
                    rt.child = Some(child);
                    rt.image = image;
                    rt.env = launch.env;
                    rt.started_at = Some(now());
                    rt.state = State::Running;
                    rt.next_start = None;
                    rt.started = c.startup_probe.is_none();
                    rt.ready = rt.started && c.readiness_probe.is_none();
                    rt.startup = ProbeState {
                        next_at: first_probe_at(&c.startup_probe),
                        ..Default::default()
                    };
                    rt.readiness = ProbeState {
                        next_at: first_probe_at(&c.readiness_probe),
                        ..Default::default()
                    };
                    rt.liveness = ProbeState {
                        next_at: first_probe_at(&c.liveness_probe),
                        ..Default::default()
                    };
                    info!(pod = %pod.name_any(), container = %rt.name, image = %rt.image, pid = ?rt.pid(), restarts = rt.restart_count, "container started");
                }
                Err(e) => {
                    rt.state = State::Waiting {
                        reason: "RunContainerError".into(),
                        message: e.to_string(),
                    };
                    rt.next_start = Some(Instant::now() + Duration::from_secs(2));
                }
            },
            Err((reason, message)) => {
                rt.state = State::Waiting {
                    reason: reason.into(),
                    message,
                };
                rt.next_start = Some(Instant::now() + Duration::from_secs(2));
            }
        }
    }

    // Probes of a running container: the startup probe first, then readiness and liveness
    // (which the kubelet holds back until the startup probe has passed).
    let Some(pid) = rt.pid() else { return };
    if rt.child.is_none() {
        return;
    }
    if !rt.started {
        if let Some(p) = &c.startup_probe
            && rt.startup.next_at.is_some_and(|t| Instant::now() >= t)
        {
            let t = probes::timing(p);
            let ok = probes::run(p, c, ip, ExecContext { pid, env: &rt.env }).await;
            step_probe(&mut rt.startup, ok, t);
            if ok {
                rt.started = true;
                rt.ready = c.readiness_probe.is_none();
                rt.readiness.next_at = first_probe_at(&c.readiness_probe);
                rt.liveness.next_at = first_probe_at(&c.liveness_probe);
            }
        }
        return;
    }
    if let Some(p) = &c.readiness_probe
        && rt.readiness.next_at.is_some_and(|t| Instant::now() >= t)
    {
        let t = probes::timing(p);
        let ok = probes::run(p, c, ip, ExecContext { pid, env: &rt.env }).await;
        step_probe(&mut rt.readiness, ok, t);
        if rt.readiness.successes >= t.success_threshold {
            rt.ready = true;
        }
        if rt.readiness.failures >= t.failure_threshold {
            rt.ready = false;
        }
    }
    if let Some(p) = &c.liveness_probe
        && rt.liveness.next_at.is_some_and(|t| Instant::now() >= t)
    {
        let t = probes::timing(p);
        let ok = probes::run(p, c, ip, ExecContext { pid, env: &rt.env }).await;
        step_probe(&mut rt.liveness, ok, t);
    }
}

/// When a probe first runs: its initial delay from now.
fn first_probe_at(p: &Option<k8s_openapi::api::core::v1::Probe>) -> Option<Instant> {
    p.as_ref()
        .map(|p| Instant::now() + probes::timing(p).initial_delay)
}

fn step_probe(s: &mut ProbeState, ok: bool, t: probes::Timing) {
    if ok {
        s.successes += 1;
        s.failures = 0;
    } else {
        s.failures += 1;
        s.successes = 0;
    }
    s.next_at = Some(Instant::now() + t.period);
}

/// Resolves everything a container start needs; an error is (waiting reason, message).
async fn launch(
    ctx: &NodeCtx,
    pod: &Pod,
    c: &Container,
    vols: &BTreeMap<String, PathBuf>,
    ip: Ipv4Addr,
) -> Result<(Launch, String), (&'static str, String)> {
    let image = c.image.clone().unwrap_or_default();
    let spec = ctx.images.resolve(&image).ok_or_else(|| {
        (
            "ErrImagePull",
            format!("image {image:?} is not in the local node's image mapping"),
        )
    })?;
    let ns = pod.namespace().unwrap_or_default();

    // Environment: image defaults, then envFrom, then env in order ($(VAR) sees earlier ones).
    let mut env: BTreeMap<String, String> = spec.env.clone();
    let config_error = |e: volumes::VolumeError| ("CreateContainerConfigError", e.to_string());
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    for from in c.env_from.as_deref().unwrap_or_default() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let sources = [
            from.config_map_ref
                .as_ref()
                .map(|r| (Source::ConfigMap, &r.name, r.optional)),
            from.secret_ref
                .as_ref()
                .map(|r| (Source::Secret, &r.name, r.optional)),
        ];
        for (source, name, optional) in sources.into_iter().flatten() {
            let data = volumes::required(&ctx.client, &ns, source, name, optional)
                .await
                .map_err(config_error)?;
            env.extend(
                data.into_iter()
                    .map(|(k, v)| (format!("{prefix}{k}"), text(v))),
            );
        }
    }
    for e in c.env.as_deref().unwrap_or_default() {
        let value = if let Some(v) = &e.value {
            Some(expand(v, &env))
        } else if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                Some(match f.field_path.as_str() {
                    "metadata.name" => pod.name_any(),
                    "metadata.namespace" => ns.clone(),
                    "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
                    "status.podIP" => ip.to_string(),
                    "status.hostIP" => "127.0.0.1".into(),
                    "spec.nodeName" => ctx.node_name.clone(),
                    "spec.serviceAccountName" => pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.service_account_name.clone())
                        .unwrap_or_default(),
                    other => {
                        if let Some(key) = other
                            .strip_prefix("metadata.labels['")
                            .and_then(|k| k.strip_suffix("']"))
                        {
                            pod.labels().get(key).cloned().unwrap_or_default()
                        } else {
                            return Err((
                                "CreateContainerConfigError",
                                format!("fieldRef {other:?} is not supported by the local node"),
                            ));
                        }
                    }
                })
            } else if let Some((source, name, key, optional)) = from
                .config_map_key_ref
                .as_ref()
                .map(|r| (Source::ConfigMap, &r.name, &r.key, r.optional))
                .or_else(|| {
                    from.secret_key_ref
                        .as_ref()
                        .map(|r| (Source::Secret, &r.name, &r.key, r.optional))
                })
            {
                let data = volumes::required(&ctx.client, &ns, source, name, optional)
                    .await
                    .map_err(config_error)?;
                match data.get(key) {
                    Some(v) => Some(text(v.clone())),
                    None if optional == Some(true) => None,
                    None => {
                        return Err((
                            "CreateContainerConfigError",
                            format!("{source:?} {name:?} has no key {key:?}"),
                        ));
                    }
                }
            } else {
                None
            }
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            env.insert(e.name.clone(), v);
        }
    }
    let command: Vec<String> = c
        .command
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|s| expand(s, &env))
        .collect();
    let args: Vec<String> = c
        .args
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|s| expand(s, &env))
        .collect();
    env.entry("PATH".into())
        .or_insert_with(|| runtime::container_path(&spec.path));
    env.entry("HOSTNAME".into())
        .or_insert_with(|| pod.name_any());
    let sec =
        security(pod, c, spec.user.as_deref()).map_err(|e| ("CreateContainerConfigError", e))?;
    // A non-root image user gets its own home at launch (see runtime::mount_script).
    if sec.user.is_none() {
        env.entry("HOME".into()).or_insert_with(|| "/root".into());
    }
    env.insert("BATON_POD_IP".into(), ip.to_string());
    env.insert("BATON_NODE".into(), ctx.marker.clone());
    if let Some(lib) = &ctx.podnet {
        env.insert("LD_PRELOAD".into(), lib.to_string_lossy().into_owned());
    }
    // The kubelet's service environment for the API server (enableServiceLinks' other
    // variables are not set here).
    if let Some(a) = &ctx.api_service {
        let (ip, port) = (&a.cluster_ip, a.port);
        for (k, v) in [
            ("KUBERNETES_SERVICE_HOST", ip.clone()),
            ("KUBERNETES_SERVICE_PORT", port.to_string()),
            ("KUBERNETES_SERVICE_PORT_HTTPS", port.to_string()),
            ("KUBERNETES_PORT", format!("tcp://{ip}:{port}")),
            ("KUBERNETES_PORT_443_TCP", format!("tcp://{ip}:{port}")),
            ("KUBERNETES_PORT_443_TCP_PROTO", "tcp".into()),
            ("KUBERNETES_PORT_443_TCP_PORT", port.to_string()),
            ("KUBERNETES_PORT_443_TCP_ADDR", ip.clone()),
        ] {
            env.entry(k.into()).or_insert(v);
        }
        // Read by the podnet shim: a connection to the ClusterIP reaches the API server.
        env.insert(
            "BATON_SERVICES".into(),
            format!("{ip}:{port}={}", a.backend),
        );
    }
    // Mounts: the container's volumeMounts, then the image's VOLUMEs not covered by one.
    let mut mounts = Vec::new();
    for m in c.volume_mounts.as_deref().unwrap_or_default() {
        let Some(src) = vols.get(&m.name) else {
            return Err((
                "CreateContainerConfigError",
                format!("volumeMount {:?} names no volume", m.name),
            ));
        };
        let mut source = src.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            source = src.join(sub);
            if !runtime::is_within(src, &source) {
                return Err((
                    "CreateContainerConfigError",
                    format!("subPath {sub:?} leaves its volume"),
                ));
            }
            if !source.exists() {
                std::fs::create_dir_all(&source)
                    .map_err(|e| ("CreateContainerConfigError", e.to_string()))?;
            }
        }
        mounts.push(Mount {
            source,
            target: m.mount_path.clone(),
            read_only: m.read_only == Some(true),
        });
    }
    for (target, source) in &spec.mounts {
        if mounts.iter().any(|m| &m.target == target) {
            continue;
        }
        mounts.push(Mount {
            source: PathBuf::from(source),
            target: target.clone(),
            read_only: true,
        });
    }
    let pod_dir = volumes::pod_dir(&ctx.state, pod);
    for v in &spec.volumes {
        if mounts.iter().any(|m| &m.target == v) {
            continue;
        }
        let dir = pod_dir
            .join("anonymous")
            .join(&c.name)
            .join(v.trim_start_matches('/').replace('/', "_"));
        std::fs::create_dir_all(&dir).map_err(|e| ("CreateContainerConfigError", e.to_string()))?;
        mounts.push(Mount {
            source: dir,
            target: v.clone(),
            read_only: false,
        });
    }

    if let Some(u) = &sec.user {
        for m in mounts.iter().filter(|m| !m.read_only && m.source.is_dir()) {
            let _ = std::process::Command::new("chown")
                .arg(format!("{u}:{}", sec.group.as_deref().unwrap_or("")))
                .arg(&m.source)
                .status();
        }
    }
    let log = log_path(&ctx.state, pod, &c.name);
    let launch = Launch {
        argv: argv(spec, &command, &args),
        env,
        mounts,
        working_dir: c.working_dir.clone().or_else(|| spec.working_dir.clone()),
        user: sec.user,
        group: sec.group,
        groups: sec.groups,
        read_only_root: sec.read_only_root,
        no_new_privs: sec.no_new_privs,
        drop_all_caps: sec.drop_all_caps,
        log,
    };
    if launch.argv.is_empty() {
        return Err((
            "CreateContainerConfigError",
            "no command: the container and its image mapping name none".into(),
        ));
    }
    Ok((launch, image))
}

/// What the pod's and the container's security contexts ask of a start, merged as the kubelet
/// merges them (the container's settings win).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Security {
    /// The user to run as (`runAsUser`, else the image's); None is root.
    user: Option<String>,
    group: Option<String>,
    groups: Vec<i64>,
    read_only_root: bool,
    no_new_privs: bool,
    drop_all_caps: bool,
}

/// The container's effective security settings, or why it must not start (the kubelet's
/// `runAsNonRoot` verification). Not enforced here, and said so in docs/local-node.md:
/// seccomp and AppArmor profiles, SELinux options, and capabilities other than dropping all.
fn security(pod: &Pod, c: &Container, image_user: Option<&str>) -> Result<Security, String> {
    let psc = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let csc = c.security_context.clone().unwrap_or_default();
    let uid = csc.run_as_user.or(psc.run_as_user);
    let user = uid
        .map(|u| u.to_string())
        .or_else(|| image_user.map(str::to_string))
        .filter(|u| u != "0" && u != "root");
    if csc.run_as_non_root.or(psc.run_as_non_root) == Some(true) {
        match (&user, uid) {
            (None, _) => {
                return Err("container has runAsNonRoot and image will run as root".into());
            }
            (Some(u), None) => {
                return Err(format!(
                    "container has runAsNonRoot and image has non-numeric user ({u}), cannot verify user is non-root"
                ));
            }
            _ => {}
        }
    }
    let mut groups: Vec<i64> = psc.fs_group.into_iter().collect();
    groups.extend(psc.supplemental_groups.unwrap_or_default());
    groups.sort_unstable();
    groups.dedup();
    Ok(Security {
        group: csc
            .run_as_group
            .or(psc.run_as_group)
            .map(|g| g.to_string())
            .filter(|_| user.is_some()),
        groups: if user.as_deref().is_some_and(|u| u.parse::<u32>().is_ok()) {
            groups
        } else {
            vec![]
        },
        user,
        read_only_root: csc.read_only_root_filesystem == Some(true),
        no_new_privs: csc.allow_privilege_escalation == Some(false),
        drop_all_caps: csc
            .capabilities
            .and_then(|caps| caps.drop)
            .is_some_and(|d| d.iter().any(|x| x == "ALL")),
    })
}

/// The pod's status as the kubelet would write it. Timestamps come only from recorded events,
/// so an unchanged pod yields an identical status (and no write).
fn build_status(
    pod: &Pod,
    init_rts: &[Rt],
    rts: &[Rt],
    ip: Ipv4Addr,
    start_time: &Time,
    transitions: &mut BTreeMap<&'static str, (bool, Time)>,
) -> Value {
    let all_ready = !rts.is_empty() && rts.iter().all(|r| r.ready);
    let any_running = rts.iter().any(|r| r.child.is_some());
    let all_terminated = rts
        .iter()
        .all(|r| matches!(r.state, State::Terminated(_)) && r.next_start.is_none());
    let init = init_step(init_rts);
    let phase = if matches!(init, InitStep::Failed) {
        "Failed"
    } else if matches!(init, InitStep::Run(_)) {
        "Pending"
    } else if all_terminated && rts.iter().all(|r| r.ever_started) {
        if rts
            .iter()
            .all(|r| matches!(&r.state, State::Terminated(t) if t.exit_code == 0))
        {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if any_running || rts.iter().any(|r| r.ever_started) {
        "Running"
    } else {
        "Pending"
    };
    let mut condition = |type_: &'static str, status: bool| {
        let entry = transitions.entry(type_).or_insert_with(|| (status, now()));
        if entry.0 != status {
            *entry = (status, now());
        }
        json!({
            "type": type_,
            "status": if status { "True" } else { "False" },
            "lastTransitionTime": entry.1,
        })
    };
    let conditions = vec![
        condition("PodScheduled", true),
        condition("Initialized", matches!(init, InitStep::Done)),
        condition("ContainersReady", all_ready),
        condition("Ready", all_ready),
    ];
    let terminated = |t: &Terminated| json!({"terminated": {"exitCode": t.exit_code, "reason": t.reason, "message": t.message, "startedAt": t.started, "finishedAt": t.finished}});
    let status_of = |r: &Rt| {
        let state = match &r.state {
            State::Running => json!({"running": {"startedAt": r.started_at}}),
            State::Waiting { reason, message } => {
                json!({"waiting": {"reason": reason, "message": message}})
            }
            State::Terminated(t) => terminated(t),
        };
        let mut s = json!({
            "name": r.name,
            "image": r.image,
            "imageID": format!("baton-local://{}", r.image),
            "ready": r.ready,
            "started": r.child.is_some() && r.started,
            "restartCount": r.restart_count,
            "state": state,
            "lastState": r.last.as_ref().map(terminated).unwrap_or_else(|| json!({})),
        });
        if let Some(pid) = r.pid() {
            s["containerID"] = json!(format!("baton://{pid}"));
        }
        s
    };
    let statuses: Vec<Value> = containers(pod)
        .iter()
        .filter_map(|c| rts.iter().find(|r| r.name == c.name))
        .map(status_of)
        .collect();
    let init_statuses: Vec<Value> = init_rts.iter().map(status_of).collect();
    json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "startTime": start_time,
        "containerStatuses": statuses,
        "initContainerStatuses": init_statuses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_with(pod_sc: serde_json::Value, container_sc: serde_json::Value) -> (Pod, Container) {
        let c: Container =
            serde_json::from_value(json!({"name": "c", "securityContext": container_sc})).unwrap();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"securityContext": pod_sc, "containers": [c.clone()]}
        }))
        .unwrap();
        (pod, c)
    }

    #[test]
    fn the_charts_hardened_pod_runs_as_its_numeric_user_read_only_and_unprivileged() {
        let (pod, c) = pod_with(
            json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532}),
            json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                   "capabilities": {"drop": ["ALL"]}}),
        );
        let s = security(&pod, &c, None).unwrap();
        assert_eq!(s.user.as_deref(), Some("65532"));
        assert_eq!(s.group.as_deref(), Some("65532"));
        assert_eq!(s.groups, vec![65532]);
        assert!(s.read_only_root && s.no_new_privs && s.drop_all_caps);
    }

    #[test]
    fn run_as_non_root_refuses_root_and_unverifiable_users() {
        let (pod, c) = pod_with(json!({"runAsNonRoot": true}), json!({}));
        assert!(
            security(&pod, &c, None)
                .unwrap_err()
                .contains("will run as root")
        );
        assert!(
            security(&pod, &c, Some("postgres"))
                .unwrap_err()
                .contains("non-numeric user (postgres)")
        );
        // The container's own user wins over the pod's.
        let (pod, c) = pod_with(
            json!({"runAsUser": 0, "runAsNonRoot": true}),
            json!({"runAsUser": 999}),
        );
        assert_eq!(
            security(&pod, &c, None).unwrap().user.as_deref(),
            Some("999")
        );
        // No demands: the image's user, as before.
        let (pod, c) = pod_with(json!({}), json!({}));
        let s = security(&pod, &c, Some("mysql")).unwrap();
        assert_eq!(s.user.as_deref(), Some("mysql"));
        assert!(!s.read_only_root && s.groups.is_empty());
    }

    #[test]
    fn a_failed_containers_message_is_the_end_of_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        assert_eq!(log_tail(&p), None, "no log, no message");
        let mut text: String = (0..200).map(|i| format!("line {i}\n")).collect();
        text.push_str("baton: this build has no TLS\n");
        std::fs::write(&p, text).unwrap();
        let m = log_tail(&p).unwrap();
        assert!(m.ends_with("baton: this build has no TLS"), "{m}");
        assert!(m.lines().count() <= 80 && m.len() <= 2048);
        assert!(!m.contains("line 0\n"));
    }
}

#[cfg(test)]
mod init_tests {
    use super::*;

    fn rt(state: State, next_start: bool) -> Rt {
        let mut r = Rt::new(&Container::default(), None);
        r.state = state;
        r.next_start = next_start.then(Instant::now);
        r
    }

    fn ended(code: i32) -> State {
        State::Terminated(Terminated {
            exit_code: code,
            reason: "Completed",
            message: None,
            started: None,
            finished: Time(jiff::Timestamp::UNIX_EPOCH),
        })
    }

    #[test]
    fn init_containers_run_in_order_and_one_failed_for_good_fails_the_pod() {
        assert!(matches!(init_step(&[]), InitStep::Done));
        let waiting = || State::Waiting {
            reason: "ContainerCreating".into(),
            message: String::new(),
        };
        let both = [rt(waiting(), false), rt(waiting(), false)];
        assert!(matches!(init_step(&both), InitStep::Run(0)));
        let first_done = [rt(ended(0), false), rt(State::Running, false)];
        assert!(matches!(init_step(&first_done), InitStep::Run(1)));
        // Failed, a restart pending (restartPolicy Always/OnFailure): run it again.
        let retry = [rt(ended(1), true)];
        assert!(matches!(init_step(&retry), InitStep::Run(0)));
        // Failed with no restart coming (restartPolicy Never): the pod fails.
        let failed = [rt(ended(0), false), rt(ended(2), false)];
        assert!(matches!(init_step(&failed), InitStep::Failed));
        let done = [rt(ended(0), false), rt(ended(0), false)];
        assert!(matches!(init_step(&done), InitStep::Done));
    }
}
