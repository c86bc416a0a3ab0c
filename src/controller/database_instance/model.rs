//! The pure model the instance controller decides from: what was observed of each member, the
//! snapshot of a whole pass, and the one act a pass may perform. No client, no clock.

use jiff::Timestamp;

use crate::crd::{DatabaseInstance, DatastoreVersion, UpgradePolicy};
use crate::engine::{Endpoint, Lag, Position, Probe, Role, Strategy};

/// What was observed of one member.
#[derive(Debug, Clone, Default)]
pub struct Member {
    pub name: String,
    /// The pod exists.
    pub exists: bool,
    /// The pod's UID, when it exists (a failover waits for the down primary's pod to go).
    pub pod_uid: Option<String>,
    /// The catalog version of the member's pod (its `baton.dev/version` annotation).
    pub version: Option<String>,
    pub ready: bool,
    /// Where the member's server listens, once its pod has an address.
    pub endpoint: Option<Endpoint>,
    pub probe: Option<Probe>,
    /// Why the probe failed, when it did.
    pub probe_error: Option<String>,
    /// Why the member's container is not running, as the node reports it.
    pub waiting: Option<String>,
    /// The node reports the pod's current image running (an image change has taken effect).
    pub image_current: bool,
    /// The position at which writes stopped, if the member is fenced (read by the engine).
    pub fence_position: Option<Position>,
    /// The UID of the member's claim, if it exists.
    pub claim_uid: Option<String>,
    /// The node the member's pod runs on.
    pub node: Option<String>,
    /// The pod's role label (`primary` or `standby`), as read.
    pub role_label: Option<String>,
}

impl Member {
    pub fn is_primary(&self) -> bool {
        self.probe.as_ref().is_some_and(|p| p.role == Role::Primary)
    }

    pub fn writable(&self) -> bool {
        self.probe.as_ref().is_some_and(Probe::writable)
    }

    pub fn fenced(&self) -> bool {
        self.probe.as_ref().is_some_and(|p| p.fenced)
    }

    pub fn position(&self) -> Option<&Position> {
        self.probe.as_ref().map(|p| &p.position)
    }
}

/// The member runs `version` for real: its pod's image change has taken effect and the server
/// itself reports that release. Without this, the old process — still answering while it is
/// being stopped — would pass for the new one.
pub fn runs(m: &Member, version: &str) -> bool {
    let release = |v: &str| v.split('-').next().unwrap_or(v).to_string();
    m.version.as_deref() == Some(version)
        && m.image_current
        && m.probe.as_ref().is_some_and(|p| {
            match (
                release(&p.version).parse::<crate::version::Version>(),
                release(version).parse::<crate::version::Version>(),
            ) {
                (Ok(a), Ok(b)) => a.cmp_release(&b).is_eq(),
                _ => false,
            }
        })
}

/// The snapshot the upgrade planner decides from.
#[derive(Debug, Clone)]
pub struct View<'a> {
    /// Sorted by ordinal.
    pub members: &'a [Member],
    /// The recorded primary.
    pub primary: &'a str,
    pub policy: &'a UpgradePolicy,
    /// How long the recorded step has been running.
    pub step_elapsed: std::time::Duration,
    /// How long writes have been fenced by the switchover in flight.
    pub fence_elapsed: std::time::Duration,
    /// A new forward step may start now (false while a required maintenance window is closed).
    pub may_start_step: bool,
    /// The recorded fence position of the switchover in flight, read back by the engine.
    pub fence_goal: Option<&'a Position>,
    /// The member that the primary label and the topology ConfigMap name, when they agree.
    pub published: Option<&'a str>,
    /// Members Baton must not repoint.
    pub quarantined: &'a [String],
    pub now: Timestamp,
    /// The offline hop's check pod, when one exists.
    pub offline_check: Option<&'a OfflineCheck>,
    /// Whether an offline hop's kept data is still on the primary (read in `Finalize` only).
    pub offline_leftovers: Option<bool>,
    /// `durability: Replicated`: a commit on the primary waits for a replica's
    /// acknowledgement.
    pub replicated: bool,
}

impl View<'_> {
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    pub fn primary_member(&self) -> Option<&Member> {
        self.member(self.primary)
    }

    pub fn is_quarantined(&self, name: &str) -> bool {
        self.quarantined.iter().any(|q| q == name)
    }

    /// How far `m` is behind `leader`, if it streams from it.
    pub fn lag_behind(&self, m: &Member, leader: &Member) -> Option<Lag> {
        let (lp, mp) = (leader.probe.as_ref()?, m.probe.as_ref()?);
        let follows = mp.role == Role::Standby
            && mp.streaming
            && leader
                .endpoint
                .as_ref()
                .zip(mp.following.as_deref())
                .is_some_and(|(e, host)| e.is_host(host));
        if !follows {
            return None;
        }
        mp.position.behind(&lp.position)
    }

    /// How far `m` is behind the recorded primary, if it streams from it.
    pub fn lag(&self, m: &Member) -> Option<Lag> {
        self.lag_behind(m, self.primary_member()?)
    }

    /// Within the policy's bound for the datastore's unit.
    pub fn within_bound(&self, lag: Lag) -> bool {
        match lag {
            Lag::Bytes(n) => n <= self.policy.max_lag_bytes.max(0) as u64,
            Lag::Transactions(n) => n <= self.policy.max_lag_transactions.max(0) as u64,
        }
    }

    /// Ready, streaming from the primary, and within the lag bound.
    pub fn caught_up(&self, m: &Member) -> bool {
        m.ready && self.lag(m).is_some_and(|l| self.within_bound(l))
    }

    /// Every member other than `name` is Ready: a restart may start (one member down at a time).
    pub fn others_ready(&self, name: &str) -> Result<(), String> {
        match self.members.iter().find(|m| m.name != name && !m.ready) {
            Some(m) => Err(format!("{} is not Ready", m.name)),
            None => Ok(()),
        }
    }

    /// A member that must be pointed at `leader`: reachable, not `leader`, not quarantined,
    /// and a (fenced) primary of its own or following someone else.
    pub fn needs_repoint(&self, m: &Member, leader: &Member) -> bool {
        // A server that answers can be repointed, Ready or not (readiness trails a restart).
        if m.name == leader.name || self.is_quarantined(&m.name) {
            return false;
        }
        let (Some(p), Some(le)) = (m.probe.as_ref(), leader.endpoint.as_ref()) else {
            return false;
        };
        p.role == Role::Primary || !p.following.as_deref().is_some_and(|h| le.is_host(h))
    }

    /// Every member that must be pointed at `leader` ([`View::needs_repoint`]), by ordinal:
    /// one act repoints them all.
    pub fn to_repoint(&self, leader: &Member) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| self.needs_repoint(m, leader))
            .map(|m| m.name.clone())
            .collect()
    }

    /// The repoint due before `leader` takes writes, if any. Under `durability: Replicated` a commit
    /// waits for a replica's acknowledgement, so a primary opened with no replica attached
    /// holds every write; and a held statement that keeps a lock the unfence needs (an account
    /// change holds MariaDB's account tables) holds the unfence, and with it a repoint that
    /// would come after it, for good. The standbys go first; fenced old primaries only when no
    /// standby follows `leader` or can be pointed at it (their repoint is a restart on some
    /// engines: write outage for nothing while a standby can acknowledge).
    pub fn repoint_before_unfence(&self, leader: &Member) -> Option<Act> {
        if !self.replicated {
            return None;
        }
        let all = self.to_repoint(leader);
        let is_standby = |m: &Member| m.probe.as_ref().is_some_and(|p| p.role == Role::Standby);
        let standbys: Vec<String> = all
            .iter()
            .filter(|n| self.member(n).is_some_and(is_standby))
            .cloned()
            .collect();
        let attached = self.members.iter().any(|m| {
            m.name != leader.name
                && is_standby(m)
                && !all.contains(&m.name)
                && !self.is_quarantined(&m.name)
        });
        let members = if standbys.is_empty() && !attached {
            all
        } else {
            standbys
        };
        (!members.is_empty()).then(|| Act::Repoint {
            members,
            primary: leader.name.clone(),
        })
    }

    /// Every reachable member other than `leader` refuses writes (the check before any act
    /// that lets writes in). Members that cannot be reached boot fenced, so they cannot take a
    /// write either.
    pub fn only_writer_could_be(&self, leader: &str) -> Result<(), String> {
        match self
            .members
            .iter()
            .find(|m| m.name != leader && m.writable())
        {
            Some(m) => Err(format!("{} accepts writes too", m.name)),
            None => Ok(()),
        }
    }
}

/// One side effect. Each is idempotent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act {
    /// Nothing to do until something changes.
    None,
    /// Server-side apply the claims, Services, PDB and topology ConfigMap, and create the
    /// missing member pods.
    ApplyChildren { pods: Vec<NewPod> },
    /// Run `member` on `image` (catalog `version`): an in-place image change.
    SetVersion {
        member: String,
        version: String,
        image: String,
    },
    /// Make each of `members` follow `primary` (one by one; each is idempotent, so a crash
    /// part-way leaves the rest to the next pass).
    Repoint {
        members: Vec<String>,
        primary: String,
    },
    /// Stop client writes on `member`.
    Fence { member: String },
    /// Let writes in on `member`, confirmed as the one primary.
    Unfence { member: String },
    /// Make `member` a (still fenced) primary — only if it holds `at_least` right then (the
    /// fenced primary's position, decided in this pass or an earlier one).
    Promote {
        member: String,
        at_least: Option<Position>,
    },
    /// Point the primary label and the topology ConfigMap at `primary`.
    Publish { primary: String },
    /// Delete `member`'s pod `uid` (a down primary being failed over): its node stops the
    /// server, and the pod created in its place boots fenced.
    Depose { member: String, uid: String },
    /// Make each of `members` load the TLS files its pod has mounted (a changed TLS Secret).
    ReloadTls { members: Vec<String> },
    /// Give every one of `members` the credentials Secret's passwords, then record them as
    /// applied.
    SetPasswords { members: Vec<String> },
    /// Start the offline hop's check pod on `member`'s volume (`key` names the attempt; a pod
    /// of another attempt is deleted first).
    CheckOffline {
        member: String,
        key: String,
        from_image: String,
        to_image: String,
    },
    /// What follows an offline hop on the new primary `member`, and the kept data removed.
    FinishOffline { member: String },
}

impl Act {
    /// The member this act touches, for logs and traces.
    pub fn member(&self) -> Option<&str> {
        match self {
            Act::None | Act::ApplyChildren { .. } => None,
            Act::SetVersion { member, .. }
            | Act::Fence { member }
            | Act::Unfence { member }
            | Act::Promote { member, .. }
            | Act::CheckOffline { member, .. }
            | Act::FinishOffline { member }
            | Act::Depose { member, .. } => Some(member),
            Act::Publish { primary } => Some(primary),
            Act::Repoint { members, .. } => members.first().map(String::as_str),
            Act::SetPasswords { .. } | Act::ReloadTls { .. } => None,
        }
    }

    /// A fixed name, for traces and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Act::None => "none",
            Act::ApplyChildren { .. } => "apply-children",
            Act::SetVersion { .. } => "set-version",
            Act::Repoint { .. } => "repoint",
            Act::Fence { .. } => "fence",
            Act::Unfence { .. } => "unfence",
            Act::Promote { .. } => "promote",
            Act::Publish { .. } => "publish",
            Act::Depose { .. } => "depose",
            Act::SetPasswords { .. } => "set-passwords",
            Act::ReloadTls { .. } => "reload-tls",
            Act::CheckOffline { .. } => "check-offline",
            Act::FinishOffline { .. } => "finish-offline",
        }
    }
}

/// The check pod of an offline hop, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineCheck {
    /// Which attempt it checks (its annotation).
    pub key: String,
    pub outcome: CheckOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    Running,
    /// Being deleted (another attempt's).
    Deleting,
    Passed,
    /// What the check reported.
    Failed(String),
}

/// A member pod to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPod {
    pub name: String,
    pub version: String,
    pub image: String,
    pub primary: bool,
}

/// When to look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The long resync: nothing is pending.
    Idle,
    /// Soon: waiting on something that has no watch event (a server catching up).
    Poll,
    /// Sooner: writes are held off while Baton waits on a server (a switchover's candidate
    /// streaming and reaching the fenced position, a replica attaching before a Replicated
    /// primary is unfenced), so the wait is the clients' outage.
    Fenced,
    /// Soon: a restarted member is Ready and the step waits only for it to catch up, which
    /// it does within moments (its replication reconnecting); the upgrade waits meanwhile.
    CatchingUp,
    /// At once: the next step is ready to be decided.
    Now,
}

/// Everything one pass observed, the input of `decide`.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The instance, read fresh from the API server.
    pub inst: DatabaseInstance,
    pub now: Timestamp,
    pub catalog: Vec<DatastoreVersion>,
    /// Why no engine serves the instance's datastore, if none does.
    pub unsupported: Option<String>,
    /// The engine's strategy from the running version to the spec's version, when they differ
    /// and both parse.
    pub strategy_to_spec: Option<Strategy>,
    /// One entry per expected member, by ordinal.
    pub members: Vec<Member>,
    /// Which owned objects (claims, Services, PDB, topology ConfigMap, Secrets, NetworkPolicy)
    /// are missing or have drifted; None when they were not read (an upgrade in flight).
    pub drift: Option<super::children::Drift>,
    /// The member that the primary label and the topology ConfigMap name, when they agree.
    pub published: Option<String>,
    /// The recorded fence position, read back by the engine.
    pub fence_goal: Option<Position>,
    /// Whether the instance's maintenance window is open now (true when it has none).
    pub window_open: bool,
    /// The last act of this instance failed with this, in this operator process.
    pub last_act_error: Option<String>,
    /// The login Baton uses on the members: from the applied copy of the credentials (what the
    /// members run with), read this pass (never printed: `Credentials` hides its password).
    pub admin: Option<crate::engine::Credentials>,
    /// The credentials Secret's login, when it differs from `admin` (a changed Secret being
    /// applied): tried where `admin` is refused.
    pub admin_fallback: Option<crate::engine::Credentials>,
    /// The credentials Secret's values, when they differ from the applied copy: what the
    /// members are to be changed to.
    pub credentials_changed: Option<crate::engine::Accounts>,
    /// The credentials Secret's values, when its applied copy does not exist yet.
    pub credentials_unapplied: Option<crate::engine::Accounts>,
    /// Why a changed credentials Secret is not applied (the members keep running with the
    /// applied copy).
    pub credentials_change_refused: Option<String>,
    /// Why the instance's credentials cannot be used (a Secret named in the spec that is
    /// missing or lacks a key): nothing is started or touched until it is fixed.
    pub credentials_problem: Option<String>,
    /// A Cluster's shard only, read when its credentials changed: the owning Cluster has an
    /// upgrade in flight (it restarts members, which boot with the applied copy, so the shard
    /// leaves its passwords alone until the upgrade ends).
    pub cluster_upgrading: bool,
    /// The instance's CA (PEM), when `spec.tls` names a usable Secret.
    pub ca: Option<Vec<u8>>,
    /// The certificate the members are to serve (`tls.crt`, PEM), with `ca`.
    pub cert: Option<Vec<u8>>,
    /// Why `spec.tls` cannot be honoured (the datastore has no TLS in Baton yet, or the Secret
    /// is missing or lacks a key): nothing is started or touched until it is fixed.
    pub tls_problem: Option<String>,
    /// The offline hop's check pod, when an offline hop is in flight and it exists.
    pub offline_check: Option<OfflineCheck>,
    /// In an offline hop's `Finalize` step: whether its kept data is still on the primary.
    pub offline_leftovers: Option<bool>,
}

impl Observation {
    /// `inst` as read at `now`, with nothing else observed yet: no members, catalog, credentials
    /// or TLS, and an open window.
    pub fn of(inst: DatabaseInstance, now: Timestamp) -> Observation {
        Observation {
            inst,
            now,
            catalog: vec![],
            unsupported: None,
            strategy_to_spec: None,
            members: vec![],
            drift: None,
            published: None,
            fence_goal: None,
            window_open: true,
            last_act_error: None,
            admin: None,
            admin_fallback: None,
            credentials_changed: None,
            credentials_unapplied: None,
            credentials_change_refused: None,
            credentials_problem: None,
            cluster_upgrading: false,
            ca: None,
            cert: None,
            tls_problem: None,
            offline_check: None,
            offline_leftovers: None,
        }
    }
}
