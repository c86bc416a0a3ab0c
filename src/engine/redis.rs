//! The Redis engine: primary/replica replication driven with `REPLICAOF`, probed with
//! `INFO replication`, fenced by making a primary refuse writes.
//!
//! The fence is `min-replicas-to-write` set impossibly high: a primary answers every write with
//! `NOREPLICAS` at once (clients see an error and retry elsewhere, nothing blocks), and unlike
//! `CLIENT PAUSE` it has no timeout, so an operator that stops mid-switchover never leaves two
//! primaries accepting writes. Every member *boots* with that setting in its arguments, and the
//! setting survives `REPLICAOF NO ONE`, so a restarted member, or a freshly promoted one, takes
//! no write until the operator has confirmed it is the one primary and unfences it.
//!
//! A position is the replication ID with the offset in it (`master_replid:offset`); a promoted
//! primary also reports its former history (`master_replid2` up to `second_repl_offset - 1`),
//! which is how a promotion is shown to have kept everything the fenced primary wrote.

use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Container, EnvVar};
use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use super::{
    ADMIN_PASSWORD, ADMIN_USER, Accounts, Endpoint, Engine, EngineError, MemberTemplate, PASSWORD,
    ParsePositionError, Position, Probe, REPLICATION_PASSWORD, Role, Target, USERNAME,
};
use crate::crd::Datastore;

/// Port every Redis member listens on (each pod has its own address).
pub const PORT: u16 = 6379;

/// The member's container in its pod.
pub const CONTAINER: &str = "redis";
/// The fence: more replicas than any instance has.
const FENCE_REPLICAS: i64 = 1_000_000;
const TIMEOUT: Duration = Duration::from_secs(3);
/// The account replicas authenticate to their primary as (`masteruser`).
const REPLICATION_USER: &str = "replicator";

/// Boots `redis-server` through the image's entrypoint, following the recorded primary unless
/// this member is it or is quarantined. The fence is in the arguments (`$@`), so it applies
/// either way. Closed by default: the `default` user is off; the ACL file (written at every
/// start from the Secret Baton keeps of what the members run with) has Baton's `baton` — the
/// commands Baton sends and nothing else: no key, no channel, no data command — the
/// `replicator` the replicas authenticate as (`masteruser`/`masterauth`), and the application
/// account, which can do anything but `@admin` commands (it cannot lift the fence
/// or repoint a member). In cluster mode (`BATON_CLUSTER` set) `baton` may also send the
/// `CLUSTER` subcommands that form the cluster and fail a shard over, the application account
/// the ones a cluster client reads the slot map with (Redis 6.2 files every `CLUSTER`
/// subcommand under `@admin`), and the member never gets
/// `--replicaof`. The passwords reach the server through files the script writes, not
/// through its arguments. The readiness command logs in as `ready`, which has no password and
/// may only `PING`: a password Baton changed online must not fail the check of a container
/// whose environment still holds the one it started with.
const BOOT: &str = r#"umask 077
CLUSTER_ACL='+cluster|nodes +cluster|info +cluster|myid +cluster|meet +cluster|addslots +cluster|replicate +cluster|failover'
APP_CLUSTER_ACL='+cluster|slots +cluster|shards +cluster|nodes +cluster|info +cluster|myid +cluster|keyslot'
{
  echo "user default off"
  echo "user ready on nopass -@all +ping"
  echo "user baton on >$BATON_ADMIN_PASSWORD resetkeys resetchannels -@all +ping +info +config|get +config|set +replicaof +acl|setuser${BATON_CLUSTER:+ $CLUSTER_ACL}"
  echo "user replicator on >$BATON_REPLICATION_PASSWORD +psync +sync +replconf +ping"
  echo "user $BATON_APP_USER on >$BATON_APP_PASSWORD ~* &* +@all -@admin${BATON_CLUSTER:+ $APP_CLUSTER_ACL}"
} > /data/users.acl
printf 'aclfile /data/users.acl\nmasteruser replicator\nmasterauth %s\n' "$BATON_REPLICATION_PASSWORD" > /data/auth.conf
set -- "$@" --include /data/auth.conf
# TLS when the pod mounts a certificate: TLS only (no plain-text port), replication over it
# verifying the chain. A build without TLS refuses the directive; say so rather than serve
# plain text.
if [ -f /etc/baton/tls/tls.crt ]; then
  if redis-server --port 0 --tls-port 1 --tls-cert-file /nonexistent 2>&1 | grep -q 'Bad directive'; then
    echo "baton: this redis-server build has no TLS; remove spec.tls or use an image built with TLS" >&2
    exit 1
  fi
  # A cluster node's bus to the others too (`BATON_CLUSTER`).
  set -- "$@" --port 0 --tls-port 6379 --tls-replication yes --tls-auth-clients no ${BATON_CLUSTER:+--tls-cluster yes} \
    --tls-cert-file /etc/baton/tls/tls.crt --tls-key-file /etc/baton/tls/tls.key \
    --tls-ca-cert-file /etc/baton/tls/ca.crt
fi
follow=yes
case " $BATON_QUARANTINED " in *" $POD_NAME "*) follow=no ;; esac
# A cluster node finds its master in its own nodes.conf; Redis refuses replicaof in cluster mode.
[ -n "$BATON_CLUSTER" ] && follow=no
if [ "$follow" = yes ] && [ -n "$BATON_PRIMARY_HOST" ] && [ -n "$BATON_PRIMARY_POD" ] && [ "$BATON_PRIMARY_POD" != "$POD_NAME" ]; then
  set -- "$@" --replicaof "$BATON_PRIMARY_HOST" 6379
fi
exec docker-entrypoint.sh redis-server "$@""#;

#[derive(Debug, Clone, Copy, Default)]
pub struct Redis;

pub(crate) async fn connect(t: &Target) -> Result<MultiplexedConnection, EngineError> {
    Ok(connect_seeing(t).await?.0)
}

/// Connects, with whether the server serves a certificate other than `t.cert`.
async fn connect_seeing(t: &Target) -> Result<(MultiplexedConnection, bool), EngineError> {
    t.login(|t| async move { connect_once(&t).await }).await
}

async fn connect_once(t: &Target) -> Result<(MultiplexedConnection, bool), EngineError> {
    let endpoint = t.endpoint.to_string();
    let ep = endpoint.clone();
    let unreachable = move |e: redis::RedisError| EngineError::Unreachable {
        endpoint: ep.clone(),
        source: Box::new(e),
    };
    let unreachable = &unreachable;
    let mut settings = RedisConnectionInfo::default();
    if let Some(c) = &t.credentials {
        if let Some(u) = &c.username {
            settings = settings.set_username(u);
        }
        settings = settings.set_password(&c.password);
    }
    let connecting = async move {
        match &t.ca {
            // TLS only, the chain verified against the instance's CA (see crate::tls).
            Some(ca) => {
                let (stream, served) = crate::tls::connect(&t.endpoint.host, t.endpoint.port, ca)
                    .await
                    .map_err(|e| unreachable(e.into()))?;
                let (c, driver) = MultiplexedConnection::new_with_config(
                    &settings,
                    stream,
                    redis::AsyncConnectionConfig::default(),
                )
                .await
                .map_err(unreachable)?;
                tokio::spawn(driver);
                let want = t.cert.as_deref().and_then(crate::tls::leaf);
                Ok((c, want.is_some() && served != want))
            }
            None => {
                let info = ConnectionAddr::Tcp(t.endpoint.host.clone(), t.endpoint.port)
                    .into_connection_info()
                    .map_err(unreachable)?
                    .set_redis_settings(settings.clone());
                let client = redis::Client::open(info).map_err(unreachable)?;
                let c = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(unreachable)?;
                Ok((c, false))
            }
        }
    };
    match tokio::time::timeout(TIMEOUT, connecting).await {
        Ok(r) => r,
        Err(_) => Err(EngineError::Timeout {
            endpoint,
            command: "connect",
        }),
    }
}

pub(crate) async fn run<T: redis::FromRedisValue>(
    c: &mut MultiplexedConnection,
    t: &Target,
    command: &'static str,
    cmd: &redis::Cmd,
) -> Result<T, EngineError> {
    super::within(&t.endpoint, command, TIMEOUT, cmd.query_async::<T>(c)).await
}

/// Reads `key:value` lines of an INFO section.
pub fn info_field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
}

/// The history a server reports, as a position: `master_replid` with `offset_key`'s value, and
/// the former history if it has one.
fn position(info: &str, offset_key: &'static str) -> Option<Position> {
    let replid = info_field(info, "master_replid")?.to_string();
    let offset: u64 = info_field(info, offset_key)?.parse().ok()?;
    let previous = match (
        info_field(info, "master_replid2"),
        info_field(info, "second_repl_offset").and_then(|v| v.parse::<i64>().ok()),
    ) {
        (Some(id), Some(second)) if second > 0 && id.bytes().any(|b| b != b'0') => {
            Some((id.to_string(), second as u64))
        }
        _ => None,
    };
    Some(Position::Redis {
        replid,
        offset,
        previous,
    })
}

/// Parses `INFO server` + `INFO replication` + the fence setting into a probe.
pub fn parse_probe(
    endpoint: &Endpoint,
    info: &str,
    fence_setting: i64,
) -> Result<Probe, EngineError> {
    let bad = |what| EngineError::Unreadable {
        endpoint: endpoint.to_string(),
        what,
    };
    let version = info_field(info, "redis_version")
        .ok_or(bad("redis_version"))?
        .to_string();
    let role = match info_field(info, "role") {
        Some("master") => Role::Primary,
        Some("slave") => Role::Standby,
        _ => return Err(bad("role")),
    };
    let (position, following, streaming) = match role {
        Role::Primary => (
            position(info, "master_repl_offset").ok_or(bad("master_repl_offset"))?,
            None,
            false,
        ),
        Role::Standby => (
            // Before its first sync a replica has no offset of its primary's history yet.
            position(info, "slave_repl_offset")
                .or_else(|| position(info, "master_repl_offset"))
                .ok_or(bad("slave_repl_offset"))?,
            info_field(info, "master_host").map(str::to_string),
            info_field(info, "master_link_status") == Some("up")
                && info_field(info, "master_sync_in_progress") != Some("1"),
        ),
    };
    Ok(Probe {
        role,
        version,
        position,
        received: None,
        following,
        streaming,
        fenced: fence_setting >= FENCE_REPLICAS,
        stale_certificate: false,
    })
}

impl Redis {
    async fn set_fence(
        &self,
        c: &mut MultiplexedConnection,
        t: &Target,
        on: bool,
    ) -> Result<(), EngineError> {
        let value = if on { FENCE_REPLICAS } else { 0 };
        run::<String>(
            c,
            t,
            "CONFIG SET",
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("min-replicas-to-write")
                .arg(value),
        )
        .await?;
        crate::failpoint::passed(if on { "db:fence" } else { "db:unfence" }).await;
        Ok(())
    }

    async fn probe_on(
        &self,
        c: &mut MultiplexedConnection,
        t: &Target,
    ) -> Result<Probe, EngineError> {
        // One section per INFO: Redis 6.2 does not take several. Pipelined on one connection.
        let mut pipe = redis::pipe();
        pipe.cmd("INFO")
            .arg("server")
            .cmd("INFO")
            .arg("replication")
            .cmd("CONFIG")
            .arg("GET")
            .arg("min-replicas-to-write");
        let answer = tokio::time::timeout(
            TIMEOUT,
            pipe.query_async::<(String, String, Vec<String>)>(c),
        );
        let (server, replication, fence) = match answer.await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                return Err(EngineError::Command {
                    endpoint: t.endpoint.to_string(),
                    command: "INFO",
                    source: Box::new(e),
                });
            }
            Err(_) => {
                return Err(EngineError::Timeout {
                    endpoint: t.endpoint.to_string(),
                    command: "INFO",
                });
            }
        };
        // An unreadable fence is an error, never "unfenced": that would look like a second
        // writer, or hide one.
        let setting = fence
            .get(1)
            .and_then(|v| v.parse().ok())
            .ok_or(EngineError::Unreadable {
                endpoint: t.endpoint.to_string(),
                what: "min-replicas-to-write",
            })?;
        parse_probe(&t.endpoint, &format!("{server}\r\n{replication}"), setting)
    }
}

#[async_trait]
impl Engine for Redis {
    fn datastore(&self) -> Datastore {
        Datastore::Redis
    }

    fn port(&self) -> u16 {
        PORT
    }

    fn container_name(&self) -> &'static str {
        CONTAINER
    }

    /// AOF persistence (so a member restarted on an older version starts empty and resyncs
    /// instead of failing on a newer snapshot format), written before each reply (`always`:
    /// under `everysec` a write acknowledged while a background fsync is slow stays in memory,
    /// and a killed primary comes back without it; its replicas then resync from it and drop it
    /// too), the pod's own address announced to the primary, and the fence from the first
    /// instant.
    fn container(&self, m: &MemberTemplate<'_>) -> Container {
        let args = [
            "--port",
            "6379",
            "--dir",
            "/data",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--replica-announce-ip",
            "$(POD_IP)",
            "--min-replicas-to-write",
            "1000000",
        ];
        let mut c = super::member_container(
            m,
            self.container_name(),
            BOOT,
            self.credential_keys(),
            ("redis", PORT),
            "tls=; [ -f /etc/baton/tls/ca.crt ] && tls='--tls --cacert /etc/baton/tls/ca.crt'; \
             REDISCLI_AUTH=- redis-cli $tls --no-auth-warning --user ready ping | grep -q PONG"
                .into(),
            "/data",
        );
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if m.cluster {
            // nodes.conf on the claim: a restarted node keeps its id and epochs, and a master
            // failed over while it was down rejoins as a replica on its own. The fence above
            // still holds it until the Cluster has seen every node agree it leads its shard.
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "/data/nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                    "--cluster-announce-ip",
                    "$(POD_IP)",
                ]
                .map(String::from),
            );
            c.env.get_or_insert_default().push(EnvVar {
                name: "BATON_CLUSTER".into(),
                value: Some("yes".into()),
                ..Default::default()
            });
        }
        c.args = Some(args);
        c
    }

    fn parse_position(&self, text: &str) -> Result<Position, ParsePositionError> {
        Position::parse_redis(text)
    }

    async fn probe(&self, t: &Target) -> Result<Probe, EngineError> {
        let (mut c, stale_certificate) = connect_seeing(t).await?;
        let p = self.probe_on(&mut c, t).await?;
        Ok(Probe {
            stale_certificate,
            ..p
        })
    }

    /// Setting the TLS files (to the same paths) makes Redis load them again: new connections
    /// get the new certificate, open ones keep theirs.
    async fn reload_tls(&self, t: &Target) -> Result<(), EngineError> {
        let mut c = connect(t).await?;
        let file = |f: &str| format!("{}/{f}", super::TLS_DIR);
        run::<String>(
            &mut c,
            t,
            "CONFIG SET tls-*",
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("tls-cert-file")
                .arg(file("tls.crt"))
                .arg("tls-key-file")
                .arg(file("tls.key"))
                .arg("tls-ca-cert-file")
                .arg(file("ca.crt")),
        )
        .await?;
        crate::failpoint::passed("db:reload-tls").await;
        Ok(())
    }

    async fn fence(&self, t: &Target) -> Result<(), EngineError> {
        let mut c = connect(t).await?;
        self.set_fence(&mut c, t, true).await
    }

    async fn unfence(&self, t: &Target) -> Result<(), EngineError> {
        let mut c = connect(t).await?;
        let p = self.probe_on(&mut c, t).await?;
        if p.role != Role::Primary {
            return Err(EngineError::Refused {
                endpoint: t.endpoint.to_string(),
                act: "unfence",
                why: "the server is not a primary".into(),
            });
        }
        self.set_fence(&mut c, t, false).await
    }

    async fn promote(&self, t: &Target, at_least: Option<&Position>) -> Result<(), EngineError> {
        let mut c = connect(t).await?;
        if let Some(goal) = at_least {
            let p = self.probe_on(&mut c, t).await?;
            let syncing = p.role == Role::Standby && !p.streaming;
            if syncing || !p.position.reached(goal) {
                return Err(EngineError::Refused {
                    endpoint: t.endpoint.to_string(),
                    act: "promote",
                    why: format!(
                        "it is at {} and does not hold {goal}{}",
                        p.position,
                        if syncing { " (it is resyncing)" } else { "" }
                    ),
                });
            }
        }
        // Fenced first: a member that was running before boot fences existed must not take a
        // write the moment it leads.
        self.set_fence(&mut c, t, true).await?;
        run::<String>(
            &mut c,
            t,
            "REPLICAOF",
            redis::cmd("REPLICAOF").arg("NO").arg("ONE"),
        )
        .await?;
        crate::failpoint::passed("db:promote").await;
        Ok(())
    }

    /// Per member (ACLs are not replicated): each account's password replaced, and the
    /// password this member replicates with. Links already up stay up (authentication happens
    /// at connect); a link that reconnects uses the new pair on both sides.
    async fn set_passwords(&self, t: &Target, to: &Accounts) -> Result<(), EngineError> {
        let mut c = connect(t).await?;
        let accounts = [
            (ADMIN_USER, to.get(ADMIN_PASSWORD)),
            (REPLICATION_USER, to.get(REPLICATION_PASSWORD)),
            (to.get(USERNAME), to.get(PASSWORD)),
        ];
        for (user, password) in accounts {
            run::<String>(
                &mut c,
                t,
                "ACL SETUSER",
                redis::cmd("ACL")
                    .arg("SETUSER")
                    .arg(user)
                    .arg("resetpass")
                    .arg(format!(">{password}")),
            )
            .await?;
        }
        run::<String>(
            &mut c,
            t,
            "CONFIG SET masterauth",
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("masterauth")
                .arg(to.get(REPLICATION_PASSWORD)),
        )
        .await?;
        crate::failpoint::passed("db:set-passwords").await;
        Ok(())
    }

    async fn repoint(&self, t: &Target, primary: &Endpoint) -> Result<(), EngineError> {
        let mut c = connect(t).await?;
        let p = self.probe_on(&mut c, t).await?;
        if p.writable() {
            return Err(EngineError::Refused {
                endpoint: t.endpoint.to_string(),
                act: "repoint",
                why: "it is a primary that accepts writes; a resync would throw them away".into(),
            });
        }
        run::<String>(
            &mut c,
            t,
            "REPLICAOF",
            redis::cmd("REPLICAOF").arg(&primary.host).arg(primary.port),
        )
        .await?;
        crate::failpoint::passed("db:repoint").await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Endpoint {
        Endpoint::new("127.1.0.2", PORT)
    }

    #[test]
    fn parses_a_primary() {
        let info = "# Server\r\nredis_version:6.2.14\r\n# Replication\r\nrole:master\r\nconnected_slaves:1\r\nmaster_replid:aaa\r\nmaster_replid2:0000000000000000000000000000000000000000\r\nmaster_repl_offset:4242\r\nsecond_repl_offset:-1\r\n";
        let p = parse_probe(&ep(), info, 0).unwrap();
        assert_eq!(
            (p.role, p.version.as_str(), p.fenced),
            (Role::Primary, "6.2.14", false)
        );
        assert_eq!(p.position, Position::parse_redis("aaa:4242").unwrap());
        assert!(p.writable());
    }

    #[test]
    fn parses_a_promoted_primary_with_its_former_history() {
        let info = "redis_version:7.0.15\r\nrole:master\r\nmaster_replid:bbb\r\nmaster_replid2:aaa\r\nmaster_repl_offset:600\r\nsecond_repl_offset:501\r\n";
        let p = parse_probe(&ep(), info, FENCE_REPLICAS).unwrap();
        assert!(p.fenced && !p.writable(), "promoted, still fenced");
        assert!(
            p.position
                .reached(&Position::parse_redis("aaa:500").unwrap())
        );
        assert!(
            !p.position
                .reached(&Position::parse_redis("aaa:501").unwrap())
        );
    }

    #[test]
    fn parses_a_standby_and_its_link() {
        let info = "redis_version:7.0.15\r\nrole:slave\r\nmaster_host:127.1.0.3\r\nmaster_port:6379\r\nmaster_link_status:up\r\nmaster_sync_in_progress:0\r\nslave_repl_offset:99\r\nmaster_replid:aaa\r\nmaster_repl_offset:99\r\n";
        let p = parse_probe(&ep(), info, FENCE_REPLICAS).unwrap();
        assert_eq!(p.role, Role::Standby);
        assert_eq!(p.following.as_deref(), Some("127.1.0.3"));
        assert!(p.streaming && p.fenced && !p.writable());
        assert_eq!(p.position, Position::parse_redis("aaa:99").unwrap());
        let syncing = info.replace("master_sync_in_progress:0", "master_sync_in_progress:1");
        assert!(!parse_probe(&ep(), &syncing, 0).unwrap().streaming);
    }

    #[test]
    fn refuses_unreadable_info() {
        assert!(parse_probe(&ep(), "role:master\r\n", 0).is_err());
        assert!(parse_probe(&ep(), "redis_version:7\r\nrole:sentinel\r\n", 0).is_err());
        assert!(
            parse_probe(&ep(), "redis_version:7\r\nrole:master\r\n", 0).is_err(),
            "no position"
        );
    }

    #[test]
    fn a_cluster_member_boots_in_cluster_mode_fenced_and_following_nobody_by_itself() {
        let c = Redis.container(&MemberTemplate {
            topology: "c-shard-0-topology",
            credentials: "c-shard-0-credentials",
            tls: None,
            cluster: true,
            replicated: false,
        });
        let args = c.args.clone().unwrap().join(" ");
        for want in [
            "--cluster-enabled yes",
            "--cluster-config-file /data/nodes.conf",
            "--cluster-announce-ip $(POD_IP)",
            "--min-replicas-to-write 1000000",
        ] {
            assert!(args.contains(want), "{args}");
        }
        let env = c.env.unwrap();
        assert!(env.iter().any(|e| e.name == "BATON_CLUSTER"));
        let script = c.command.unwrap().join(" ");
        assert!(
            script.contains(r#"[ -n "$BATON_CLUSTER" ] && follow=no"#),
            "{script}"
        );
        assert!(script.contains("+cluster|failover"), "{script}");
        // Outside a cluster: no cluster mode, and no BATON_CLUSTER (which grants `baton` the
        // CLUSTER subcommands and stops the member following the recorded primary).
        let plain = Redis.container(&MemberTemplate {
            cluster: false,
            ..MemberTemplate {
                topology: "t",
                credentials: "c",
                tls: None,
                cluster: true,
                replicated: false,
            }
        });
        assert!(!plain.args.unwrap().join(" ").contains("cluster-enabled"));
        assert!(!plain.env.unwrap().iter().any(|e| e.name == "BATON_CLUSTER"));
    }

    #[test]
    fn every_member_boots_fenced_and_following_the_recorded_primary() {
        let c = Redis.container(&MemberTemplate {
            topology: "db-topology",
            credentials: "db-credentials",
            tls: None,
            cluster: false,
            replicated: false,
        });
        let args = c.args.clone().unwrap();
        let fence = args
            .iter()
            .position(|a| a == "--min-replicas-to-write")
            .unwrap();
        assert_eq!(args[fence + 1], FENCE_REPLICAS.to_string());
        let command = c.command.unwrap().join(" ");
        assert!(
            command.contains("--replicaof \"$BATON_PRIMARY_HOST\""),
            "{command}"
        );
        let env: Vec<String> = c.env.unwrap().into_iter().map(|e| e.name).collect();
        for name in [
            "POD_NAME",
            "POD_IP",
            "BATON_PRIMARY_POD",
            "BATON_PRIMARY_HOST",
            "BATON_QUARANTINED",
            "BATON_ADMIN_PASSWORD",
            "BATON_REPLICATION_PASSWORD",
            "BATON_APP_USER",
            "BATON_APP_PASSWORD",
        ] {
            assert!(env.iter().any(|e| e == name), "{name} in {env:?}");
        }
        assert!(command.contains("user default off"), "closed by default");
        assert!(command.contains("--include /data/auth.conf"));
    }
}
