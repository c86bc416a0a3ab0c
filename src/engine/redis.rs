//! The Redis engine: primary/replica replication driven with `REPLICAOF`, probed with
//! `INFO replication`, fenced by making the primary refuse writes.
//!
//! The fence is `min-replicas-to-write` set impossibly high: the primary answers every write
//! with `NOREPLICAS` at once (clients see an error and retry elsewhere, nothing blocks), and
//! unlike `CLIENT PAUSE` it has no timeout, so an operator that stops mid-switchover never leaves
//! two primaries accepting writes; the next pass finds the fence still in place and finishes.

use std::net::Ipv4Addr;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use serde_json::json;

use super::{EngineError, Probe, Role};

/// Port every Redis member listens on (each pod has its own address).
pub const PORT: u16 = 6379;
/// The fence: more replicas than any instance has.
const FENCE_REPLICAS: i64 = 1_000_000;
const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, Default)]
pub struct Redis;

async fn connect(addr: Ipv4Addr) -> Result<MultiplexedConnection, EngineError> {
    let client = redis::Client::open(format!("redis://{addr}:{PORT}/"))
        .map_err(|source| EngineError::Unreachable { addr, source })?;
    match tokio::time::timeout(TIMEOUT, client.get_multiplexed_async_connection()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(source)) => Err(EngineError::Unreachable { addr, source }),
        Err(_) => Err(EngineError::Timeout { addr }),
    }
}

async fn query<T: redis::FromRedisValue>(
    addr: Ipv4Addr,
    command: &'static str,
    cmd: &redis::Cmd,
) -> Result<T, EngineError> {
    let mut c = connect(addr).await?;
    match tokio::time::timeout(TIMEOUT, cmd.query_async::<T>(&mut c)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(EngineError::Command {
            addr,
            command,
            source,
        }),
        Err(_) => Err(EngineError::Timeout { addr }),
    }
}

/// Reads `key:value` lines of an INFO section.
pub fn info_field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
}

/// Parses `INFO server` + `INFO replication` + the fence setting into a probe.
pub fn parse_probe(addr: Ipv4Addr, info: &str, fence_setting: i64) -> Result<Probe, EngineError> {
    let bad = |what| EngineError::Unreadable { addr, what };
    let version = info_field(info, "redis_version")
        .ok_or(bad("redis_version"))?
        .to_string();
    let role = match info_field(info, "role") {
        Some("master") => Role::Primary,
        Some("slave") => Role::Standby,
        _ => return Err(bad("role")),
    };
    let (offset, following, link_up) = match role {
        Role::Primary => (
            info_field(info, "master_repl_offset")
                .and_then(|v| v.parse().ok())
                .ok_or(bad("master_repl_offset"))?,
            None,
            false,
        ),
        Role::Standby => (
            info_field(info, "slave_repl_offset")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            info_field(info, "master_host").and_then(|h| h.parse().ok()),
            info_field(info, "master_link_status") == Some("up")
                && info_field(info, "master_sync_in_progress") != Some("1"),
        ),
    };
    Ok(Probe {
        role,
        version,
        offset,
        following,
        link_up,
        fenced: fence_setting >= FENCE_REPLICAS,
    })
}

impl Redis {
    pub async fn probe(&self, addr: Ipv4Addr) -> Result<Probe, EngineError> {
        // One section per call: Redis 6.2 does not take several.
        let server: String = query(addr, "INFO", redis::cmd("INFO").arg("server")).await?;
        let replication: String =
            query(addr, "INFO", redis::cmd("INFO").arg("replication")).await?;
        let info = format!("{server}\r\n{replication}");
        let fence: Vec<String> = query(
            addr,
            "CONFIG GET",
            redis::cmd("CONFIG").arg("GET").arg("min-replicas-to-write"),
        )
        .await?;
        let setting = fence.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        parse_probe(addr, &info, setting)
    }

    pub async fn replicate_from(
        &self,
        addr: Ipv4Addr,
        primary: Ipv4Addr,
    ) -> Result<(), EngineError> {
        query::<String>(
            addr,
            "REPLICAOF",
            redis::cmd("REPLICAOF").arg(primary.to_string()).arg(PORT),
        )
        .await?;
        Ok(())
    }

    pub async fn promote(&self, addr: Ipv4Addr) -> Result<(), EngineError> {
        query::<String>(
            addr,
            "REPLICAOF",
            redis::cmd("REPLICAOF").arg("NO").arg("ONE"),
        )
        .await?;
        Ok(())
    }

    pub async fn set_fence(&self, addr: Ipv4Addr, on: bool) -> Result<(), EngineError> {
        let value = if on { FENCE_REPLICAS } else { 0 };
        query::<String>(
            addr,
            "CONFIG SET",
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("min-replicas-to-write")
                .arg(value),
        )
        .await?;
        Ok(())
    }

    /// The container every member runs: AOF persistence (so a member restarted on an older
    /// version starts empty and resyncs instead of failing on a newer snapshot format), and the
    /// pod's own address announced to the primary.
    pub fn container(&self) -> serde_json::Value {
        json!({
            "name": "redis",
            "args": ["--port", PORT.to_string(), "--dir", "/data", "--appendonly", "yes",
                     "--appendfsync", "everysec", "--replica-announce-ip", "$(POD_IP)"],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "ports": [{"name": "redis", "containerPort": PORT}],
            "readinessProbe": {
                "exec": {"command": ["sh", "-c", "redis-cli ping | grep -q PONG"]},
                "periodSeconds": 1, "timeoutSeconds": 3, "failureThreshold": 3,
            },
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 2);

    #[test]
    fn parses_a_primary() {
        let info = "# Server\r\nredis_version:6.2.14\r\n# Replication\r\nrole:master\r\nconnected_slaves:1\r\nmaster_repl_offset:4242\r\n";
        let p = parse_probe(ADDR, info, 0).unwrap();
        assert_eq!(
            (p.role, p.version.as_str(), p.offset, p.fenced),
            (Role::Primary, "6.2.14", 4242, false)
        );
    }

    #[test]
    fn parses_a_standby_and_its_link() {
        let info = "redis_version:7.0.15\r\nrole:slave\r\nmaster_host:127.1.0.3\r\nmaster_port:6379\r\nmaster_link_status:up\r\nmaster_sync_in_progress:0\r\nslave_repl_offset:99\r\n";
        let p = parse_probe(ADDR, info, FENCE_REPLICAS).unwrap();
        assert_eq!(p.role, Role::Standby);
        assert_eq!(p.following, Some(Ipv4Addr::new(127, 1, 0, 3)));
        assert!(p.link_up && p.fenced);
        assert_eq!(p.offset, 99);
        let syncing = info.replace("master_sync_in_progress:0", "master_sync_in_progress:1");
        assert!(!parse_probe(ADDR, &syncing, 0).unwrap().link_up);
    }

    #[test]
    fn refuses_unreadable_info() {
        assert!(parse_probe(ADDR, "role:master\r\n", 0).is_err());
        assert!(parse_probe(ADDR, "redis_version:7\r\nrole:sentinel\r\n", 0).is_err());
    }
}
