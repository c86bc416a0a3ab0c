//! Readiness and liveness probes: exec (inside the container's mount namespace, with its
//! environment), tcpSocket and httpGet against the pod's address.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Timing of a probe, with Kubernetes' defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

pub fn timing(p: &Probe) -> Timing {
    let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
    Timing {
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
    }
}

/// Where and how an exec probe runs.
pub struct ExecContext<'a> {
    pub pid: u32,
    pub env: &'a BTreeMap<String, String>,
}

/// Runs one probe attempt; true on success.
pub async fn run(
    probe: &Probe,
    container: &Container,
    pod_ip: Ipv4Addr,
    exec: ExecContext<'_>,
) -> bool {
    let t = timing(probe);
    let attempt = async {
        if let Some(e) = &probe.exec {
            let cmd = e.command.clone().unwrap_or_default();
            if cmd.is_empty() {
                return false;
            }
            let expanded: Vec<String> = cmd
                .iter()
                .map(|c| super::envvars::expand(c, exec.env))
                .collect();
            let mut c = tokio::process::Command::new("nsenter");
            c.args(["--target", &exec.pid.to_string(), "--mount", "--"])
                .args(&expanded)
                .env_clear()
                .envs(exec.env)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            return matches!(c.status().await, Ok(s) if s.success());
        }
        if let Some(tcp) = &probe.tcp_socket {
            let Some(port) = resolve_port(&tcp.port, container) else {
                return false;
            };
            let host = tcp
                .host
                .as_deref()
                .and_then(|h| h.parse().ok())
                .unwrap_or(pod_ip);
            return tokio::net::TcpStream::connect((host, port)).await.is_ok();
        }
        if let Some(http) = &probe.http_get {
            let Some(port) = resolve_port(&http.port, container) else {
                return false;
            };
            let host = http
                .host
                .as_deref()
                .and_then(|h| h.parse().ok())
                .unwrap_or(pod_ip);
            let path = http.path.as_deref().unwrap_or("/");
            return http_ok(host, port, path).await;
        }
        false
    };
    tokio::time::timeout(t.timeout, attempt)
        .await
        .unwrap_or(false)
}

fn resolve_port(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => container
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

async fn http_ok(host: Ipv4Addr, port: u16, path: &str) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect((host, port)).await else {
        return false;
    };
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: baton-node-probe\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if s.read_exact(&mut head).await.is_err() {
        return false;
    }
    // "HTTP/1.x NNN": success is 200–399, as the kubelet judges it.
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse::<u16>().ok())
        .is_some_and(|c| (200..400).contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_kubelets() {
        let t = timing(&Probe::default());
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
    }

    #[test]
    fn named_ports_resolve_from_the_container() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "db", "ports": [{"name": "redis", "containerPort": 6379}]
        }))
        .unwrap();
        assert_eq!(
            resolve_port(&IntOrString::String("redis".into()), &c),
            Some(6379)
        );
        assert_eq!(resolve_port(&IntOrString::String("nope".into()), &c), None);
        assert_eq!(resolve_port(&IntOrString::Int(80), &c), Some(80));
    }
}
