//! The harness of the end-to-end suites: the local control plane started by `make test` (never
//! a mock), clients for its users, CRD installation, per-test namespaces, and the operator
//! binary run as a process.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The kubeconfig of the running local control plane.
pub fn kubeconfig_path() -> PathBuf {
    match std::env::var_os("BATON_KUBECONFIG") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "BATON_KUBECONFIG is not set: run the tests with `make test`, which starts the local control plane"
        ),
    }
}

/// The API server's `host:port`, from the kubeconfig.
pub fn apiserver_address() -> String {
    let text = std::fs::read_to_string(kubeconfig_path()).expect("kubeconfig");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .expect("server line")
        .to_string()
}

/// Where the Go-built tools (kubectl, helm) live.
pub fn tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("BATON_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/baton/bin")
        });
    let p = dir.join(name);
    assert!(p.exists(), "{} not found: run `make test`", p.display());
    p
}

/// The repository (workspace) root.
pub fn repo() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        p.canonicalize().unwrap_or(p)
    })
}

/// The `baton` binary: `BATON_BIN` (which `make test` sets), else the workspace's debug build.
pub fn operator_bin() -> PathBuf {
    std::env::var_os("BATON_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/debug/baton"))
}

/// The `baton-node` binary: `BATON_NODE_BIN`, else the workspace's debug build.
pub fn node_bin() -> PathBuf {
    std::env::var_os("BATON_NODE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/debug/baton-node"))
}

/// A client for one of the kubeconfig's contexts (`admin` or `developer`).
pub async fn client_as(context: &str) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig_path()).expect("read kubeconfig");
    let opts = KubeConfigOptions {
        context: Some(context.into()),
        ..Default::default()
    };
    let cfg = Config::from_custom_kubeconfig(kc, &opts)
        .await
        .expect("kubeconfig config");
    Client::try_from(cfg).expect("client")
}

pub async fn admin() -> Client {
    client_as("admin").await
}

/// Writes a kubeconfig that authenticates with `token` (a ServiceAccount's, say).
pub fn kubeconfig_with_token(token: &str, namespace: &str, dir: &Path) -> PathBuf {
    let admin = std::fs::read_to_string(kubeconfig_path()).expect("kubeconfig");
    let server = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("server line");
    let ca = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority: "))
        .expect("ca line");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u, namespace: {namespace}}}\ncurrent-context: x\n"
    );
    let path = dir.join("kubeconfig");
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

pub async fn client_from(path: &Path) -> Client {
    let kc = Kubeconfig::read_from(path).expect("read kubeconfig");
    let cfg = Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
}

/// Installs (server-side apply) every Baton CRD and waits until each is Established and served.
pub async fn install_crds(client: &Client) {
    if let Err(e) = crate::workload::install_crds(client).await {
        panic!("{e}");
    }
}

/// Creates a fresh namespace for one test; names stay unique across runs. Returns once its
/// `default` ServiceAccount exists: the ServiceAccount admission plugin refuses pods until the
/// controller manager has made it.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{:08x}", rand::random::<u32>());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"baton.dev/test": prefix}}
    }))
    .expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), &name);
    let made = eventually(Duration::from_secs(30), || async {
        sas.get_opt("default").await.ok().flatten()
    })
    .await;
    assert!(
        made.is_some(),
        "namespace {name} never got its default ServiceAccount"
    );
    name
}

/// Deletes a test namespace (the namespace controller removes what is in it).
pub async fn delete_namespace(client: &Client, name: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// Polls `f` every 200 ms until it returns `Some`, or gives up after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs a tool to completion with the admin kubeconfig; returns (success, stdout, stderr).
pub fn run_tool(name: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut cmd = std::process::Command::new(tool(name));
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A free loopback port for an operator's HTTP endpoints.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Something whose log explains a failed wait: an operator process, or the chart's operator pod.
pub trait Logs {
    fn logs(&self) -> String;
}

impl Logs for Operator {
    fn logs(&self) -> String {
        Operator::logs(self)
    }
}

/// The log of a pod's container on the local node (what `kubectl logs` would show; the node
/// keeps it under its state directory, `$BATON_RUN/node/logs`).
pub fn pod_log(namespace: &str, pod: &str, container: &str) -> String {
    let run = std::env::var_os("BATON_RUN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/baton/run")
        });
    let prefix = format!("{namespace}_{pod}_");
    let Ok(dirs) = std::fs::read_dir(run.join("node/logs")) else {
        return String::new();
    };
    let mut found: Vec<PathBuf> = dirs
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with(&prefix))
        .map(|d| d.path().join(format!("{container}.log")))
        .collect();
    found.sort();
    found
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A running `baton run` process, killed on drop.
pub struct Operator {
    pub child: tokio::process::Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Operator {
    /// Starts `baton run` with `kubeconfig` and extra args; logs go to a file in `dir`.
    pub fn start(kubeconfig: &Path, dir: &Path, identity: &str, extra: &[&str]) -> Operator {
        Self::start_with_env(kubeconfig, dir, identity, extra, &[])
    }

    /// Like [`Operator::start`], with extra environment (failpoints).
    pub fn start_with_env(
        kubeconfig: &Path,
        dir: &Path,
        identity: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Operator {
        Self::spawn(kubeconfig, dir, identity, extra, env, None)
    }

    /// An operator run in group `gid` (still as root), so a [`crate::faults::Cut`] can drop
    /// its packets alone.
    pub fn start_in_group(
        kubeconfig: &Path,
        dir: &Path,
        identity: &str,
        extra: &[&str],
        gid: u32,
    ) -> Operator {
        Self::spawn(kubeconfig, dir, identity, extra, &[], Some(gid))
    }

    fn spawn(
        kubeconfig: &Path,
        dir: &Path,
        identity: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        gid: Option<u32>,
    ) -> Operator {
        let port = free_port();
        let log = dir.join(format!("operator-{identity}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = tokio::process::Command::new(operator_bin());
        if let Some(gid) = gid {
            cmd.gid(gid);
        }
        let child = cmd
            .arg("run")
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg(format!("--identity={identity}"))
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("BATON_LOG_FORMAT", "json")
            // A second writer made behind Baton's back is seen within seconds in tests.
            .env("BATON_HEALTH_INTERVAL_SECONDS", "3")
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn baton run");
        Operator { child, port, log }
    }

    /// GETs one of the operator's endpoints: (status code, body), or None if it does not answer.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path).await
    }

    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        eventually(timeout, || async {
            matches!(self.get("/readyz").await, Some((200, _))).then_some(())
        })
        .await
        .is_some()
    }

    /// Whether `baton_leader` reads 1.
    pub async fn is_leader(&self) -> bool {
        match self.get("/metrics").await {
            Some((200, body)) => body.lines().any(|l| l.trim() == "baton_leader 1"),
            _ => false,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id()?;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()?
            .ok()
    }
}

/// A minimal HTTP/1.0 GET over loopback (the operator's endpoints are plain HTTP).
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .ok()?
    .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Some((code, body))
}
