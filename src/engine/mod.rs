//! Datastore engines: everything Baton knows about one datastore, behind one boundary the
//! planner never looks past.
//!
//! An engine is a trait object ([`Engine`]), one module per datastore, chosen by
//! [`for_datastore`]. It answers, over the network as a client: what a member is (role, the
//! version the server reports, replication position, whether writes are fenced), and it fences,
//! unfences, promotes and repoints members. Without I/O it says what a position is
//! ([`Position`]), where the position at which writes stopped is read ([`Engine::fence_position`]),
//! which switchover protocol the datastore has, which strategy a version step needs, and what a
//! member's container looks like. Adding a datastore is one module implementing [`Engine`], one
//! line in [`for_datastore`], and its image lines for the local node.
//!
//! Every member boots fenced and, where the engine can, already following the primary named in
//! the instance's topology ConfigMap ([`topology_env`]): a restart — by an upgrade, a crash,
//! the node — never yields a second writable member. Only the operator lifts a fence, and only
//! on the member it has confirmed as the one primary.

pub mod mysql;
pub mod position;
pub mod postgres;
pub mod redis;
pub mod redis_cluster;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    ConfigMapKeySelector, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction,
    ObjectFieldSelector, Pod, Probe as K8sProbe, SecretKeySelector, VolumeMount,
};

pub use position::{Lag, ParsePositionError, Position};

use crate::crd::Datastore;
use crate::version::Version;

/// A member's role as the server itself reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Standby,
}

/// Where a member listens: a host name or an IPv4 or IPv6 address, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn new(host: impl Into<String>, port: u16) -> Endpoint {
        Endpoint {
            host: host.into(),
            port,
        }
    }

    /// Whether `host` (as a server reports the primary it follows) names this endpoint's host.
    /// Addresses compare as addresses (`::1` == `0:0:0:0:0:0:0:1`), names case-insensitively.
    pub fn is_host(&self, host: &str) -> bool {
        match (self.host.parse::<IpAddr>(), host.parse::<IpAddr>()) {
            (Ok(a), Ok(b)) => a == b,
            _ => self.host.eq_ignore_ascii_case(host),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => write!(f, "[{v6}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// A login read from a Secret at connect time. Never printed: `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The passwords of an instance's accounts, by Secret key ([`USERNAME`], [`PASSWORD`],
/// [`ADMIN_PASSWORD`], [`REPLICATION_PASSWORD`]). Never printed: `Debug` names the keys only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Accounts(pub BTreeMap<String, String>);

impl Accounts {
    /// The value of `key`, or "" when the Secret lacks it (the engine's keys are checked
    /// before any act uses them).
    pub fn get(&self, key: &str) -> &str {
        self.0.get(key).map(String::as_str).unwrap_or_default()
    }

    /// Baton's own login among them.
    pub fn admin(&self, engine: &dyn Engine) -> Credentials {
        Credentials {
            username: Some(engine.admin_user().to_string()),
            password: self.get(ADMIN_PASSWORD).to_string(),
        }
    }
}

impl fmt::Debug for Accounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// A member as an engine reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub endpoint: Endpoint,
    pub credentials: Option<Credentials>,
    /// A second login tried when the first is refused: while a changed Secret is being applied,
    /// a member answers either to the passwords it ran with or to the new ones.
    pub fallback: Option<Credentials>,
    /// The instance's CA (PEM) when its members serve TLS: the engine then connects over TLS
    /// only, verifying the server's chain against it.
    pub ca: Option<Vec<u8>>,
    /// The certificate the member is to serve (the TLS Secret's `tls.crt`, PEM): a probe says
    /// whether the server still serves another one.
    pub cert: Option<Vec<u8>>,
}

impl Target {
    pub fn new(endpoint: Endpoint) -> Target {
        Target {
            endpoint,
            credentials: None,
            fallback: None,
            ca: None,
            cert: None,
        }
    }

    /// Connects with `connect`, with the fallback login when the first one fails.
    pub async fn login<C, F, Fut>(&self, connect: F) -> Result<C, EngineError>
    where
        F: Fn(Target) -> Fut,
        Fut: std::future::Future<Output = Result<C, EngineError>>,
    {
        match (connect(self.clone()).await, &self.fallback) {
            (Ok(c), _) => Ok(c),
            (Err(e @ EngineError::Timeout { .. }), _) | (Err(e), None) => Err(e),
            (Err(e), Some(other)) if Some(other) == self.credentials.as_ref() => Err(e),
            (Err(_), Some(other)) => {
                connect(Target {
                    credentials: Some(other.clone()),
                    fallback: None,
                    ..self.clone()
                })
                .await
            }
        }
    }
}

/// What one probe of a member found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub role: Role,
    /// The server's own version string.
    pub version: String,
    /// A primary's write position; a standby's applied (replayed) position.
    pub position: Position,
    /// A standby's received but not necessarily applied position, where the datastore tells
    /// the two apart (PostgreSQL); None elsewhere.
    pub received: Option<Position>,
    /// For a standby: the host of the primary it follows.
    pub following: Option<String>,
    /// For a standby: its link to the primary is up and it is streaming (not in a full sync).
    pub streaming: bool,
    /// Writes are fenced: no client can write to this member.
    pub fenced: bool,
    /// The server serves a certificate other than the TLS Secret's (it has not loaded a
    /// changed Secret yet).
    pub stale_certificate: bool,
}

impl Probe {
    /// Accepts client writes right now.
    pub fn writable(&self) -> bool {
        self.role == Role::Primary && !self.fenced
    }
}

/// How a version step is performed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// One member at a time with a switchover: replication works across the two versions.
    Rolling,
    /// Every member stopped and converted (a PostgreSQL major version): an outage.
    Offline,
}

/// What an engine call failed on. Messages never carry credentials.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach {endpoint}")]
    Unreachable {
        endpoint: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{endpoint} answered {command} with an error")]
    Command {
        endpoint: String,
        command: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{endpoint} did not answer {command} in time")]
    Timeout {
        endpoint: String,
        command: &'static str,
    },
    #[error("{endpoint} reported an unreadable {what}")]
    Unreadable {
        endpoint: String,
        what: &'static str,
    },
    /// The engine's own check before an act that could let writes in, or throw data away.
    #[error("{endpoint}: refused to {act}: {why}")]
    Refused {
        endpoint: String,
        act: &'static str,
        why: String,
    },
    #[error("datastore {datastore} has no {what}")]
    Unsupported {
        datastore: Datastore,
        what: &'static str,
    },
}

/// Runs one call to a member within `limit`: the call's own error is `Command` failing (or the
/// member `Unreachable` while `command` is `"connect"`), running out of time a `Timeout`.
pub(crate) async fn within<T, E>(
    endpoint: &Endpoint,
    command: &'static str,
    limit: std::time::Duration,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, EngineError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let endpoint = endpoint.to_string();
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if command == "connect" => Err(EngineError::Unreachable {
            endpoint,
            source: Box::new(e),
        }),
        Ok(Err(e)) => Err(EngineError::Command {
            endpoint,
            command,
            source: Box::new(e),
        }),
        Err(_) => Err(EngineError::Timeout { endpoint, command }),
    }
}

impl EngineError {
    /// A fixed name for metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            EngineError::Unreachable { .. } => "Unreachable",
            EngineError::Command { .. } => "Command",
            EngineError::Timeout { .. } => "Timeout",
            EngineError::Unreadable { .. } => "Unreadable",
            EngineError::Refused { .. } => "Refused",
            EngineError::Unsupported { .. } => "Unsupported",
        }
    }
}

/// Secret key: the application account's name.
pub const USERNAME: &str = "username";
/// Secret key: the application account's password.
pub const PASSWORD: &str = "password";
/// Secret key: the password of the account Baton connects as.
pub const ADMIN_PASSWORD: &str = "admin-password";
/// Secret key: the replication account's password.
pub const REPLICATION_PASSWORD: &str = "replication-password";
/// The keys of an engine whose standbys replicate with a login of their own.
pub const KEYS_WITH_REPLICATION: &[&str] =
    &[USERNAME, PASSWORD, ADMIN_PASSWORD, REPLICATION_PASSWORD];
/// The account Baton connects as, on every engine.
pub const ADMIN_USER: &str = "baton";
/// The application account's name in a Secret Baton generates.
pub const DEFAULT_APP_USER: &str = "app";

/// The environment every member's container reads its credentials from (Secret key
/// references, never values): `BATON_APP_USER`, `BATON_APP_PASSWORD`,
/// `BATON_ADMIN_PASSWORD`, and `BATON_REPLICATION_PASSWORD` where the engine has that key.
pub fn credentials_env(secret: &str, keys: &[&str]) -> Vec<EnvVar> {
    keys.iter()
        .map(|k| {
            let name = match *k {
                USERNAME => "BATON_APP_USER".to_string(),
                PASSWORD => "BATON_APP_PASSWORD".to_string(),
                other => format!("BATON_{}", other.replace('-', "_").to_ascii_uppercase()),
            };
            EnvVar {
                name,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.into(),
                        key: k.to_string(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect()
}

/// A member's database container as every engine builds it: `sh -c <boot>` with the topology
/// and credentials environment, one named port, a shell readiness command checked every
/// second, the claim at `data`, and the TLS Secret at [`TLS_DIR`] when the instance has one.
/// The engine adds what is its own (arguments, extra environment).
#[allow(clippy::too_many_arguments)]
pub fn member_container(
    m: &MemberTemplate<'_>,
    name: &str,
    boot: &str,
    credential_keys: &[&str],
    port: (&str, u16),
    ready: String,
    data: &str,
) -> Container {
    let mut env = topology_env(m.topology);
    env.extend(credentials_env(m.credentials, credential_keys));
    let mut mounts = vec![VolumeMount {
        name: "data".into(),
        mount_path: data.into(),
        ..Default::default()
    }];
    if m.tls.is_some() {
        mounts.push(VolumeMount {
            name: TLS_VOLUME.into(),
            mount_path: TLS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    Container {
        name: name.into(),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            boot.into(),
            format!("{name}-member"),
        ]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(port.0.into()),
            container_port: port.1 as i32,
            ..Default::default()
        }]),
        // A boot script that gives up says why on its last line ("baton: …").
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        readiness_probe: Some(K8sProbe {
            exec: Some(ExecAction {
                command: Some(vec!["sh".into(), "-c".into(), ready]),
            }),
            period_seconds: Some(1),
            timeout_seconds: Some(3),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

/// What an engine needs to build a member's container.
#[derive(Debug, Clone, Copy)]
pub struct MemberTemplate<'a> {
    /// The instance's topology ConfigMap (see [`topology_env`]).
    pub topology: &'a str,
    /// The instance's Secret holding the keys of [`Engine::credential_keys`].
    pub credentials: &'a str,
    /// The instance's TLS Secret (`tls.crt`, `tls.key`, `ca.crt`), when it serves TLS; the
    /// pod mounts it at [`TLS_DIR`].
    pub tls: Option<&'a str>,
    /// The member is a node of a sharded cluster (Redis Cluster): it boots in cluster mode and
    /// never follows a primary by itself; the Cluster forms and repoints it.
    pub cluster: bool,
    /// Writes are acknowledged only once a standby has them too (`spec.durability:
    /// Replicated`); an engine without synchronous replication never gets it (admission
    /// refuses it).
    pub replicated: bool,
}

/// Where a member's TLS Secret is mounted.
pub const TLS_DIR: &str = "/etc/baton/tls";
/// What a member's boot script prints when the server build it found has no TLS.
pub const NO_TLS: &str = "has no TLS";
/// The name of the pod volume holding the TLS Secret.
pub const TLS_VOLUME: &str = "tls";
/// The keys a TLS Secret must hold (what cert-manager writes).
pub const TLS_KEYS: [&str; 3] = ["tls.crt", "tls.key", "ca.crt"];

/// The ConfigMap key naming the primary's pod.
pub const TOPOLOGY_PRIMARY_POD: &str = "primaryPod";
/// The ConfigMap key with the primary's host (its address).
pub const TOPOLOGY_PRIMARY_HOST: &str = "primaryHost";
/// The ConfigMap key listing quarantined members (space-separated pod names): they boot
/// following nobody, so a restart never resyncs their writes away.
pub const TOPOLOGY_QUARANTINED: &str = "quarantined";

/// The environment every member gets: its own pod name and address, and the primary recorded
/// in the topology ConfigMap (`BATON_PRIMARY_POD`, `BATON_PRIMARY_HOST`, and the quarantined
/// members `BATON_QUARANTINED`, all optional), read at every container start, so a member
/// restarted for any reason boots following the primary Baton last recorded.
pub fn topology_env(configmap: &str) -> Vec<EnvVar> {
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let key = |name: &str, key: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: configmap.into(),
                key: key.into(),
                optional: Some(true),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    vec![
        field("POD_NAME", "metadata.name"),
        field("POD_IP", "status.podIP"),
        key("BATON_PRIMARY_POD", TOPOLOGY_PRIMARY_POD),
        key("BATON_PRIMARY_HOST", TOPOLOGY_PRIMARY_HOST),
        key("BATON_QUARANTINED", TOPOLOGY_QUARANTINED),
    ]
}

/// A datastore engine. The I/O methods talk to one member as a network client; the others
/// are pure.
#[async_trait]
pub trait Engine: Send + Sync + fmt::Debug {
    fn datastore(&self) -> Datastore;

    /// The port members listen on (clients, peers and probes).
    fn port(&self) -> u16;

    /// The name of the member's database container (what an image change patches).
    fn container_name(&self) -> &'static str;

    /// A member's database container, without image and resources (the caller sets them). It
    /// boots fenced, following the topology ConfigMap's primary where the engine can.
    fn container(&self, m: &MemberTemplate<'_>) -> Container;

    /// The account Baton connects as (its password is the Secret's [`ADMIN_PASSWORD`]).
    fn admin_user(&self) -> &'static str {
        ADMIN_USER
    }

    /// The keys of the instance's credentials Secret that the members and Baton read: the
    /// application account, Baton's own, and the replication account (every engine so far
    /// replicates with a login). Baton generates them (random, once; `username` is
    /// [`DEFAULT_APP_USER`]) when the instance names no Secret of its own.
    fn credential_keys(&self) -> &'static [&'static str] {
        KEYS_WITH_REPLICATION
    }
    /// Reads back a position this engine printed (`Display` of its [`Position`]).
    fn parse_position(&self, text: &str) -> Result<Position, ParsePositionError>;

    /// The position at which writes stopped on a fenced member, from what was observed of it:
    /// by default the fenced server's own position. An engine whose fence stops the server
    /// reads it elsewhere (the pod's termination message).
    fn fence_position(&self, probe: Option<&Probe>, _pod: Option<&Pod>) -> Option<Position> {
        probe
            .filter(|p| p.fenced && p.role == Role::Primary)
            .map(|p| p.position.clone())
    }

    /// How the step `from` → `to` is performed.
    fn strategy(&self, _from: &Version, _to: &Version) -> Strategy {
        Strategy::Rolling
    }

    /// What the member is now.
    async fn probe(&self, t: &Target) -> Result<Probe, EngineError>;

    /// Stops every client write, in a way no client can bypass. Idempotent.
    async fn fence(&self, t: &Target) -> Result<(), EngineError>;

    /// Lets writes in again. Refuses unless the server reports itself primary.
    async fn unfence(&self, t: &Target) -> Result<(), EngineError>;

    /// Makes a standby a primary, still fenced. Idempotent. With `at_least`, refuses unless
    /// the member holds that position right now (the decision to promote may be older than a
    /// restart of the member).
    async fn promote(&self, t: &Target, at_least: Option<&Position>) -> Result<(), EngineError>;

    /// Makes the member follow `primary`. Refuses a member that accepts writes (its writes
    /// would be thrown away by the resync).
    async fn repoint(&self, t: &Target, primary: &Endpoint) -> Result<(), EngineError>;

    /// Makes the server serve the TLS files its pod has mounted now (a changed TLS Secret),
    /// online where the engine can reload them.
    async fn reload_tls(&self, _t: &Target) -> Result<(), EngineError> {
        Err(EngineError::Unsupported {
            datastore: self.datastore(),
            what: "TLS",
        })
    }

    /// Makes the member's accounts answer to `to` (a changed credentials Secret), online:
    /// Baton's, the application account's and the replication account's passwords, and the
    /// password the member itself replicates with. Idempotent; called on every member.
    async fn set_passwords(&self, t: &Target, to: &Accounts) -> Result<(), EngineError>;

    /// The containers of the one-off pod that checks an offline hop against the live primary
    /// before anything is stopped (it mounts the primary's claim as `data`): the first runs in
    /// `from_image`, the second in `to_image`; the pod succeeds when the hop may go ahead. A
    /// dry run's leaves nothing on the volume. None: the engine has no offline method.
    fn offline_check(
        &self,
        _from_image: &str,
        _to_image: &str,
        _dry_run: bool,
    ) -> Option<(Container, Container)> {
        None
    }

    /// Whether what an offline hop kept for a rollback is still on the primary `t`.
    async fn offline_leftovers(&self, _t: &Target) -> Result<bool, EngineError> {
        Ok(false)
    }

    /// What must follow an offline hop on the new primary `t` (statistics, extension
    /// updates), then what was kept for a rollback removed. Idempotent.
    async fn finish_offline(&self, _t: &Target) -> Result<(), EngineError> {
        Ok(())
    }
}

/// How `ds` steps from `from` to `to`, when an engine serves it and both versions parse.
pub fn strategy(ds: Datastore, from: &str, to: &str) -> Option<Strategy> {
    let engine = for_datastore(ds).ok()?;
    Some(engine.strategy(&from.parse().ok()?, &to.parse().ok()?))
}

/// The engine of a datastore.
pub fn for_datastore(ds: Datastore) -> Result<&'static dyn Engine, EngineError> {
    static REDIS: redis::Redis = redis::Redis;
    static POSTGRES: postgres::Postgres = postgres::Postgres;
    match ds {
        Datastore::Redis => Ok(&REDIS),
        Datastore::Postgresql => Ok(&POSTGRES),
        Datastore::Mariadb => Ok(&mysql::MARIADB),
        // The MySQL dialect is written and unit-tested, but no MySQL server installs where
        // Baton is tested, so no member of one has ever booted: not offered.
        other => Err(EngineError::Unsupported {
            datastore: other,
            what: "engine in this version of Baton",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_print_and_compare_ipv4_ipv6_and_names() {
        assert_eq!(
            Endpoint::new("127.2.0.3", 6379).to_string(),
            "127.2.0.3:6379"
        );
        assert_eq!(Endpoint::new("fd00::3", 6379).to_string(), "[fd00::3]:6379");
        assert_eq!(
            Endpoint::new("db-0.db-headless", 5432).to_string(),
            "db-0.db-headless:5432"
        );
        assert!(Endpoint::new("fd00::3", 1).is_host("fd00:0:0:0:0:0:0:3"));
        assert!(Endpoint::new("DB-0.svc", 1).is_host("db-0.svc"));
        assert!(!Endpoint::new("127.2.0.3", 1).is_host("127.2.0.4"));
    }

    #[test]
    fn credentials_never_print_their_password() {
        let c = Credentials {
            username: Some("baton".into()),
            password: "s3cr3t-value".into(),
        };
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn redis_postgresql_and_mariadb_have_engines_and_mysql_says_it_has_none_yet() {
        for ds in [Datastore::Redis, Datastore::Postgresql, Datastore::Mariadb] {
            assert_eq!(for_datastore(ds).unwrap().datastore(), ds);
        }
        let e = for_datastore(Datastore::Mysql).unwrap_err();
        assert!(e.to_string().contains("mysql"), "{e}");
    }
}
