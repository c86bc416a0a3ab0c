//! Redis Cluster as its nodes see it, parsed from `CLUSTER NODES`, and the checks Baton makes
//! on it (see "Redis Cluster" in `docs/design.md`): how the 16384 slots are split over the
//! shards at formation, the health gate between upgrade steps, and the confirmation of a
//! graceful `CLUSTER FAILOVER`.
//!
//! Nothing here trusts one node or one reply: gossip converges over seconds, and right after a
//! failover's OK another node can still list the old master as a master (without its slots).
//! So the gate and the confirmation take every node's own view and require all of them to
//! agree.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::redis::{connect, run};
use super::{Credentials, Endpoint, EngineError, Target};

/// The number of hash slots in every Redis Cluster.
pub const SLOTS: u16 = 16384;

/// A node's client port: the Redis engine's.
pub const PORT: u16 = super::redis::PORT;

/// A node's cluster bus port: its client port + 10000.
pub const BUS_PORT: u16 = PORT + 10000;

/// The node's container in a shard's pod: the Redis engine's.
pub const CONTAINER: &str = super::redis::CONTAINER;

/// The `ip:port` a node announces for the pod address `ip`.
pub fn address(ip: &str) -> String {
    format!("{ip}:{PORT}")
}

/// A node to talk to as `login`, at the `ip:port` of a `CLUSTER NODES` line (the client port
/// when it names none).
pub fn target(addr: &str, login: &Credentials) -> Target {
    let (host, port) = match addr.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().unwrap_or(PORT)),
        None => (addr, PORT),
    };
    Target {
        credentials: Some(login.clone()),
        ..Target::new(Endpoint::new(host, port))
    }
}

/// An inclusive range of slots.
pub type SlotRange = (u16, u16);

/// One line of `CLUSTER NODES`: a node as the reporting node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    /// `ip:port` of the client port (the `@cport` and `,hostname` parts dropped).
    pub addr: String,
    pub myself: bool,
    pub master: bool,
    /// The replica's master, `None` for a master.
    pub master_id: Option<String>,
    /// Flags that mean the reporter cannot count on this node: `fail`, `fail?`, `handshake`,
    /// `noaddr`.
    pub trouble: Vec<String>,
    pub config_epoch: u64,
    pub connected: bool,
    pub slots: Vec<SlotRange>,
    /// Open slots, listed only on the reporter's own line: `(slot, other node id)`.
    pub migrating: Vec<(u16, String)>,
    pub importing: Vec<(u16, String)>,
}

/// What one node reports with `CLUSTER NODES` (and `cluster_state` from `CLUSTER INFO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub nodes: Vec<Node>,
    /// Whether the node serves queries (`cluster_state:ok`); `None` when not asked.
    pub state_ok: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable CLUSTER NODES line {line:?}: {why}")]
pub struct ParseError {
    pub line: String,
    pub why: &'static str,
}

fn slot(s: &str) -> Option<u16> {
    s.parse().ok().filter(|n| *n < SLOTS)
}

impl Node {
    fn parse(line: &str) -> Result<Node, ParseError> {
        let err = |why| ParseError {
            line: line.to_string(),
            why,
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            return Err(err("fewer than 8 fields"));
        }
        let addr = f[1]
            .split(['@', ','])
            .next()
            .unwrap_or_default()
            .to_string();
        let flags: Vec<&str> = f[2].split(',').collect();
        let (mut slots, mut migrating, mut importing) = (vec![], vec![], vec![]);
        for s in &f[8..] {
            if let Some(open) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                let (to, list) = match (open.split_once("->-"), open.split_once("-<-")) {
                    (Some((n, id)), _) => ((n, id), &mut migrating),
                    (_, Some((n, id))) => ((n, id), &mut importing),
                    _ => return Err(err("an open slot neither migrating nor importing")),
                };
                list.push((
                    slot(to.0).ok_or_else(|| err("a bad slot"))?,
                    to.1.to_string(),
                ));
                continue;
            }
            let (a, b) = s.split_once('-').unwrap_or((s, s));
            match (slot(a), slot(b)) {
                (Some(a), Some(b)) if a <= b => slots.push((a, b)),
                _ => return Err(err("a bad slot range")),
            }
        }
        Ok(Node {
            id: f[0].to_string(),
            addr,
            myself: flags.contains(&"myself"),
            master: flags.contains(&"master"),
            master_id: (f[3] != "-").then(|| f[3].to_string()),
            trouble: flags
                .iter()
                .filter(|fl| matches!(**fl, "fail" | "fail?" | "handshake" | "noaddr"))
                .map(|fl| fl.to_string())
                .collect(),
            config_epoch: f[6].parse().map_err(|_| err("a bad config epoch"))?,
            connected: f[7] == "connected",
            slots,
            migrating,
            importing,
        })
    }
}

impl View {
    pub fn parse(text: &str) -> Result<View, ParseError> {
        let nodes = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(Node::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(View {
            nodes,
            state_ok: None,
        })
    }

    /// The reporting node's own line.
    pub fn myself(&self) -> Option<&Node> {
        self.nodes.iter().find(|n| n.myself)
    }

    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    fn reporter(&self) -> String {
        self.myself().map_or("a node".into(), |n| n.addr.clone())
    }

    /// Each master that serves slots, with its slot ranges, sorted.
    pub fn owners(&self) -> BTreeMap<String, Vec<SlotRange>> {
        self.nodes
            .iter()
            .filter(|n| n.master && !n.slots.is_empty())
            .map(|n| {
                let mut r = n.slots.clone();
                r.sort();
                (n.id.clone(), r)
            })
            .collect()
    }

    /// How many slots no master in this view serves.
    pub fn uncovered(&self) -> u32 {
        let mut covered = vec![false; SLOTS as usize];
        for n in self.nodes.iter().filter(|n| n.master) {
            for &(a, b) in &n.slots {
                covered[a as usize..=b as usize].fill(true);
            }
        }
        covered.iter().filter(|c| !**c).count() as u32
    }
}

/// `shards` contiguous ranges covering every slot, sizes differing by at most one (the first
/// shards take the remainder).
pub fn split_slots(shards: u16) -> Vec<SlotRange> {
    let shards = shards.clamp(1, SLOTS);
    let (each, extra) = (SLOTS / shards, SLOTS % shards);
    let mut start = 0u16;
    (0..shards)
        .map(|i| {
            let len = each + u16::from(i < extra);
            let r = (start, start + len - 1);
            start += len;
            r
        })
        .collect()
}

/// Why the cluster is not fit for the next upgrade step, worded for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unhealthy {
    NoViews,
    Unreadable {
        reporter: String,
    },
    Trouble {
        reporter: String,
        node: String,
        flags: Vec<String>,
    },
    Uncovered {
        reporter: String,
        slots: u32,
    },
    StateFail {
        reporter: String,
    },
    OpenSlot {
        reporter: String,
        slot: u16,
        migrating: bool,
    },
    Disagree {
        a: String,
        b: String,
    },
}

impl fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unhealthy::NoViews => write!(f, "no node answered CLUSTER NODES"),
            Unhealthy::Unreadable { reporter } => {
                write!(f, "{reporter} does not list itself in CLUSTER NODES")
            }
            Unhealthy::Trouble {
                reporter,
                node,
                flags,
            } => write!(f, "{reporter} sees {node} as {}", flags.join(",")),
            Unhealthy::Uncovered { reporter, slots } => {
                write!(f, "{reporter} sees {slots} slots served by no master")
            }
            Unhealthy::StateFail { reporter } => {
                write!(f, "{reporter} reports cluster_state:fail")
            }
            Unhealthy::OpenSlot {
                reporter,
                slot,
                migrating,
            } => write!(
                f,
                "slot {slot} is {} on {reporter}",
                if *migrating { "migrating" } else { "importing" }
            ),
            Unhealthy::Disagree { a, b } => {
                write!(f, "{a} and {b} disagree on which master serves which slots")
            }
        }
    }
}

/// The gate between upgrade steps, over every node's own view: each lists itself, sees no
/// node failing, handshaking or without an address, sees every slot served, reports
/// `cluster_state:ok` (when asked), has no slot open (migrating or importing), and all agree
/// on which master serves which slots.
pub fn health(views: &[View]) -> Result<(), Unhealthy> {
    health_excusing(views, &BTreeSet::new()).map(|_| ())
}

/// The gate while an upgrade restarts some members (`excused`, by `ip:port`: at most one per
/// shard, none serving slots): every other node must pass [`health`] as it stands, except
/// that seeing an excused node failing is expected. Returns the excused nodes that are not
/// back yet: one some node sees in trouble, or whose own view does not pass (a restarted node
/// reports `cluster_state:fail` until it has caught up with the others).
pub fn health_excusing(
    views: &[View],
    excused: &BTreeSet<String>,
) -> Result<BTreeSet<String>, Unhealthy> {
    let is_excused = |v: &View| v.myself().is_some_and(|me| excused.contains(&me.addr));
    let (others, restarted): (Vec<&View>, Vec<&View>) = views.iter().partition(|v| !is_excused(v));
    let Some(&first) = others.first() else {
        if views.is_empty() {
            return Err(Unhealthy::NoViews);
        }
        // Only restarting nodes answered (a cluster of one node): judged as any node is.
        return health_excusing(views, &BTreeSet::new());
    };
    let mut troubled = BTreeSet::new();
    for v in others {
        check_view(v, first, excused, &mut troubled)?;
    }
    for v in restarted {
        let me = v.myself().map(|n| n.addr.clone()).unwrap_or_default();
        if check_view(v, first, &BTreeSet::new(), &mut troubled).is_err() {
            troubled.insert(me);
        }
    }
    Ok(troubled)
}

/// One node's view against the gate; trouble it sees on an `excused` node is noted in
/// `troubled` instead of failing it.
fn check_view(
    v: &View,
    first: &View,
    excused: &BTreeSet<String>,
    troubled: &mut BTreeSet<String>,
) -> Result<(), Unhealthy> {
    let me = v.myself().ok_or_else(|| Unhealthy::Unreadable {
        reporter: v.reporter(),
    })?;
    for n in v.nodes.iter().filter(|n| !n.trouble.is_empty()) {
        if !excused.contains(&n.addr) {
            return Err(Unhealthy::Trouble {
                reporter: me.addr.clone(),
                node: n.addr.clone(),
                flags: n.trouble.clone(),
            });
        }
        troubled.insert(n.addr.clone());
    }
    let uncovered = v.uncovered();
    if uncovered > 0 {
        return Err(Unhealthy::Uncovered {
            reporter: me.addr.clone(),
            slots: uncovered,
        });
    }
    if v.state_ok == Some(false) {
        return Err(Unhealthy::StateFail {
            reporter: me.addr.clone(),
        });
    }
    let open = me.migrating.first().map(|(s, _)| (*s, true));
    if let Some((slot, migrating)) = open.or(me.importing.first().map(|(s, _)| (*s, false))) {
        return Err(Unhealthy::OpenSlot {
            reporter: me.addr.clone(),
            slot,
            migrating,
        });
    }
    if v.owners() != first.owners() {
        return Err(Unhealthy::Disagree {
            a: first.reporter(),
            b: me.addr.clone(),
        });
    }
    Ok(())
}

/// Whether a graceful failover of `old` to `new` took effect everywhere: in every node's view
/// `new` is a master serving exactly `slots` with a config epoch above `old_epoch` (the old
/// master's, recorded before the failover), and `old` is a replica of `new`. `Err` says what
/// is still missing, for status while waiting.
pub fn failover_done(
    views: &[View],
    new: &str,
    old: &str,
    slots: &[SlotRange],
    old_epoch: u64,
) -> Result<(), String> {
    if views.is_empty() {
        return Err("no node answered CLUSTER NODES".into());
    }
    let mut want = slots.to_vec();
    want.sort();
    for v in views {
        let who = v.reporter();
        let n = v
            .node(new)
            .ok_or_else(|| format!("{who} does not know {new}"))?;
        let mut have = n.slots.clone();
        have.sort();
        if !n.master || have != want {
            return Err(format!(
                "{who} does not see {} serving the shard's slots yet",
                n.addr
            ));
        }
        if n.config_epoch <= old_epoch {
            return Err(format!(
                "{who} sees {} at config epoch {}, not above the old master's {old_epoch}",
                n.addr, n.config_epoch
            ));
        }
        let o = v
            .node(old)
            .ok_or_else(|| format!("{who} does not know {old}"))?;
        if o.master || o.master_id.as_deref() != Some(new) {
            return Err(format!(
                "{who} does not see {} replicating {} yet",
                o.addr, n.addr
            ));
        }
    }
    Ok(())
}

/// One shard as the operator lays it out: the `ip:port` of the member that is to serve the
/// shard's slots, and of those that are to replicate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub primary: String,
    pub replicas: Vec<String>,
}

/// The next thing to do to form the cluster, decided from what the nodes report (so an
/// operator that died half-way picks up where the cluster is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Formation {
    /// `CLUSTER MEET` sent to `on`, naming `peer`.
    Meet {
        on: String,
        peer: String,
    },
    /// `CLUSTER ADDSLOTS` on the shard's primary: the ranges of its share it does not serve.
    AddSlots {
        on: String,
        ranges: Vec<SlotRange>,
    },
    /// `CLUSTER REPLICATE` on a replica, naming its primary's node id.
    Replicate {
        on: String,
        master: String,
    },
    /// Gossip has not converged yet.
    Wait(String),
    Formed,
    /// The nodes were formed otherwise (a slot of this shard served by another, a member
    /// meant to replicate that serves slots): Baton does not undo what it did not do.
    Conflict(String),
}

/// Ranges of `want` not covered by `have`.
fn missing(want: SlotRange, have: &[SlotRange]) -> Vec<SlotRange> {
    let mut out = vec![];
    let mut start = None;
    for s in want.0..=want.1 {
        let held = have.iter().any(|&(a, b)| a <= s && s <= b);
        match (held, start) {
            (false, None) => start = Some(s),
            (true, Some(a)) => {
                out.push((a, s - 1));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(a) = start {
        out.push((a, want.1));
    }
    out
}

/// The next formation step for `shards` (slots split with [`split_slots`] in their order),
/// given each member's view keyed by the address in `shards`. Every member first meets the
/// first primary; once every view lists every node, each primary takes its share of slots and
/// each replica replicates its primary; formed means [`health`] passes with every view seeing
/// each replica under its primary.
pub fn next_formation_step(shards: &[Shard], views: &BTreeMap<String, View>) -> Formation {
    let all: Vec<&String> = shards
        .iter()
        .flat_map(|s| std::iter::once(&s.primary).chain(&s.replicas))
        .collect();
    if all.is_empty() {
        return Formation::Conflict("a cluster needs at least one shard".into());
    }
    let mut ids = BTreeMap::new();
    for a in &all {
        match views.get(*a).and_then(View::myself) {
            Some(me) => ids.insert(a.as_str(), me.id.as_str()),
            None => return Formation::Wait(format!("{a} has not answered CLUSTER NODES")),
        };
    }
    let n = Nodes { all, ids, views };
    n.meeting()
        .or_else(|| n.slots(shards))
        .or_else(|| n.replicas(shards))
        .or_else(|| n.converging(shards))
        .unwrap_or(Formation::Formed)
}

/// Every member of a forming cluster, with its node id and view (each has answered).
struct Nodes<'a> {
    all: Vec<&'a String>,
    ids: BTreeMap<&'a str, &'a str>,
    views: &'a BTreeMap<String, View>,
}

impl Nodes<'_> {
    fn id(&self, a: &str) -> String {
        self.ids[a].to_string()
    }

    fn view(&self, a: &str) -> &View {
        &self.views[a]
    }

    /// Every member meets the first, then every view lists every node without trouble flags.
    fn meeting(&self) -> Option<Formation> {
        let first = self.all[0];
        // Until the handshake completes, the peer is listed under a random id at its address.
        let knows_first = |a: &&&String| {
            let v = self.view(a);
            v.node(&self.id(first)).is_some() || v.nodes.iter().any(|n| n.addr == *first)
        };
        if let Some(a) = self.all[1..].iter().find(|a| !knows_first(a)) {
            return Some(Formation::Meet {
                on: a.to_string(),
                peer: first.to_string(),
            });
        }
        for a in &self.all {
            let v = self.view(a);
            let known = self.ids.values().filter(|i| v.node(i).is_some()).count();
            if known < self.all.len() || v.nodes.iter().any(|n| !n.trouble.is_empty()) {
                return Some(Formation::Wait(format!(
                    "{a} knows {known} of {} nodes, all without trouble flags",
                    self.all.len()
                )));
            }
        }
        None
    }

    /// Each shard's primary serves its share of the slots, and no other node serves any of it.
    fn slots(&self, shards: &[Shard]) -> Option<Formation> {
        for (shard, range) in shards.iter().zip(split_slots(shards.len() as u16)) {
            let v = self.view(&shard.primary);
            let me = v.myself().expect("answered");
            if !me.master {
                return Some(Formation::Conflict(format!(
                    "{} is to serve slots {}-{} but replicates another node",
                    shard.primary, range.0, range.1
                )));
            }
            if let Some((slot, other)) = v
                .nodes
                .iter()
                .filter(|n| !n.myself)
                .flat_map(|n| n.slots.iter().map(move |r| (r, n)))
                .find(|((a, b), _)| *a <= range.1 && range.0 <= *b)
                .map(|(r, n)| (r.0.max(range.0), &n.addr))
            {
                return Some(Formation::Conflict(format!(
                    "slot {slot}, meant for {}, is served by {other}",
                    shard.primary
                )));
            }
            let ranges = missing(range, &me.slots);
            if !ranges.is_empty() {
                return Some(Formation::AddSlots {
                    on: shard.primary.clone(),
                    ranges,
                });
            }
        }
        None
    }

    /// Each replica replicates its shard's primary (one serving slots is a conflict).
    fn replicas(&self, shards: &[Shard]) -> Option<Formation> {
        for shard in shards {
            let master = self.id(&shard.primary);
            for r in &shard.replicas {
                let me = self.view(r).myself().expect("answered");
                if me.master_id.as_deref() == Some(master.as_str()) {
                    continue;
                }
                if !me.slots.is_empty() {
                    return Some(Formation::Conflict(format!(
                        "{r} is to replicate {} but serves slots",
                        shard.primary
                    )));
                }
                return Some(Formation::Replicate {
                    on: r.clone(),
                    master,
                });
            }
        }
        None
    }

    /// Waits until the cluster is healthy and every view sees each replica under its primary.
    fn converging(&self, shards: &[Shard]) -> Option<Formation> {
        let views: Vec<View> = self.all.iter().map(|a| self.view(a).clone()).collect();
        if let Err(why) = health(&views) {
            return Some(Formation::Wait(why.to_string()));
        }
        for shard in shards {
            let master = self.id(&shard.primary);
            for r in &shard.replicas {
                let rid = self.id(r);
                if let Some(a) = self.all.iter().find(|a| {
                    self.view(a).node(&rid).and_then(|n| n.master_id.as_deref())
                        != Some(master.as_str())
                }) {
                    return Some(Formation::Wait(format!(
                        "{a} does not see {r} replicating {} yet",
                        shard.primary
                    )));
                }
            }
        }
        None
    }
}

/// What one node reports with `CLUSTER NODES` and `CLUSTER INFO`.
pub async fn view(t: &Target) -> Result<View, EngineError> {
    let mut c = connect(t).await?;
    let text: String = run(
        &mut c,
        t,
        "CLUSTER NODES",
        redis::cmd("CLUSTER").arg("NODES"),
    )
    .await?;
    let info: String = run(&mut c, t, "CLUSTER INFO", redis::cmd("CLUSTER").arg("INFO")).await?;
    let mut v = View::parse(&text).map_err(|_| EngineError::Unreadable {
        endpoint: t.endpoint.to_string(),
        what: "CLUSTER NODES",
    })?;
    v.state_ok = super::redis::info_field(&info, "cluster_state").map(|s| s == "ok");
    Ok(v)
}

/// Carries out a formation step on the member it names (`targets` by the addresses in the
/// step). `Wait`, `Formed` and `Conflict` do nothing.
pub async fn form(step: &Formation, targets: &BTreeMap<String, Target>) -> Result<(), EngineError> {
    let member = |a: &String| {
        targets.get(a).ok_or_else(|| EngineError::Refused {
            endpoint: a.clone(),
            act: "form the cluster",
            why: "it is not a member of this cluster".into(),
        })
    };
    let (on, cmd, name, point) = match step {
        Formation::Meet { on, peer } => {
            let peer = &member(peer)?.endpoint;
            let mut c = redis::cmd("CLUSTER");
            c.arg("MEET").arg(&peer.host).arg(peer.port);
            (on, c, "CLUSTER MEET", "db:cluster-meet")
        }
        Formation::AddSlots { on, ranges } => {
            // ADDSLOTSRANGE is 7.0 only; a list of slots works on every version.
            let mut c = redis::cmd("CLUSTER");
            c.arg("ADDSLOTS");
            for &(a, b) in ranges {
                c.arg((a..=b).collect::<Vec<u16>>());
            }
            (on, c, "CLUSTER ADDSLOTS", "db:cluster-addslots")
        }
        Formation::Replicate { on, master } => {
            let mut c = redis::cmd("CLUSTER");
            c.arg("REPLICATE").arg(master);
            (on, c, "CLUSTER REPLICATE", "db:cluster-replicate")
        }
        Formation::Wait(_) | Formation::Formed | Formation::Conflict(_) => return Ok(()),
    };
    let t = member(on)?;
    let mut c = connect(t).await?;
    run::<String>(&mut c, t, name, &cmd).await?;
    crate::failpoint::passed(point).await;
    Ok(())
}

/// A graceful `CLUSTER FAILOVER` on a replica: the master stops taking writes, the replica
/// catches up with it and takes its slots (never FORCE or TAKEOVER, which skip that). The OK
/// only means the handshake started: [`failover_done`] over every view confirms it.
pub async fn failover(replica: &Target) -> Result<(), EngineError> {
    let mut c = connect(replica).await?;
    run::<String>(
        &mut c,
        replica,
        "CLUSTER FAILOVER",
        redis::cmd("CLUSTER").arg("FAILOVER"),
    )
    .await?;
    crate::failpoint::passed("db:cluster-failover").await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_reached_at_its_announced_port_or_the_client_port() {
        let login = Credentials {
            username: None,
            password: "pw".into(),
        };
        let at = |a: &str| {
            let t = target(a, &login);
            (
                t.endpoint.host,
                t.endpoint.port,
                t.credentials == Some(login.clone()),
            )
        };
        assert_eq!(at("127.2.0.7:7001"), ("127.2.0.7".into(), 7001, true));
        assert_eq!(at("127.2.0.7"), ("127.2.0.7".into(), PORT, true));
        assert_eq!(address("127.2.0.7"), "127.2.0.7:6379");
        assert_eq!(BUS_PORT, 16379);
    }

    macro_rules! fixture {
        ($name:literal) => {
            View::parse(include_str!(concat!(
                "../testdata/redis-cluster/",
                $name,
                ".txt"
            )))
            .expect($name)
        };
    }

    const M7001: &str = "b440a7ede41e04438b61ccc76f223493ee5af3f9";
    const M7004: &str = "cf2c6ac1feb820257443970ca2fd669993fb39bb";

    fn failed_over() -> Vec<View> {
        vec![
            fixture!("failed-over-7001"),
            fixture!("failed-over-7002"),
            fixture!("failed-over-7003"),
            fixture!("failed-over-7004"),
            fixture!("failed-over-7005"),
            fixture!("failed-over-7006"),
        ]
    }

    #[test]
    fn slots_split_evenly_and_cover_everything() {
        assert_eq!(split_slots(3), [(0, 5461), (5462, 10922), (10923, 16383)]);
        assert_eq!(split_slots(1), [(0, 16383)]);
        for shards in [2, 5, 7, 16, 100] {
            let r = split_slots(shards);
            assert_eq!(r.len(), shards as usize);
            assert_eq!(r[0].0, 0);
            assert_eq!(r.last().map(|r| r.1), Some(SLOTS - 1));
            assert!(r.windows(2).all(|w| w[1].0 == w[0].1 + 1));
            let sizes: Vec<u16> = r.iter().map(|(a, b)| b - a + 1).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn parses_what_real_servers_print() {
        let v = fixture!("formed-7001");
        assert_eq!(v.nodes.len(), 6);
        let me = v.myself().expect("myself");
        assert_eq!(
            (me.id.as_str(), me.addr.as_str()),
            (M7001, "127.0.0.1:7001")
        );
        assert!(me.master && me.connected && me.trouble.is_empty());
        assert_eq!((me.slots.clone(), me.config_epoch), (vec![(0, 5460)], 1));
        let r = v.node(M7004).expect("7004");
        assert!(!r.master);
        assert_eq!(r.master_id.as_deref(), Some(M7001));
        assert_eq!(v.owners().len(), 3);
        assert_eq!(v.uncovered(), 0);
        // 7.0 adds `,hostname` to the address.
        let v7 = fixture!("v7-two-shards-7011");
        assert_eq!(v7.myself().map(|n| n.addr.as_str()), Some("127.0.0.1:7011"));
        assert_eq!(v7.owners().len(), 2);
        assert!(View::parse("abc 127.0.0.1:1@2 master - 0 0 x connected 0-99999").is_err());
        assert!(View::parse("abc 127.0.0.1:1@2 master -").is_err());
    }

    #[test]
    fn a_formed_cluster_passes_the_gate() {
        assert_eq!(
            health(&[fixture!("formed-7001"), fixture!("formed-7004")]),
            Ok(())
        );
        assert_eq!(health(&failed_over()), Ok(()));
        assert_eq!(health(&[]), Err(Unhealthy::NoViews));
    }

    #[test]
    fn the_gate_names_what_is_wrong() {
        let failing = health(&[fixture!("replica-down-7001")]).unwrap_err();
        assert_eq!(
            failing.to_string(),
            "127.0.0.1:7001 sees 127.0.0.1:7006 as fail"
        );
        let migrating = health(&[fixture!("migrating-7002")]).unwrap_err();
        assert_eq!(
            migrating.to_string(),
            "slot 5461 is migrating on 127.0.0.1:7002"
        );
        let importing = health(&[fixture!("importing-7003")]).unwrap_err();
        assert_eq!(
            importing.to_string(),
            "slot 5461 is importing on 127.0.0.1:7003"
        );
        // Before and after a failover: the views disagree on who serves 0-5460.
        let mixed = health(&[fixture!("formed-7001"), fixture!("failed-over-7002")]).unwrap_err();
        assert!(matches!(mixed, Unhealthy::Disagree { .. }), "{mixed}");
        // Slots served by nobody.
        let mut v = fixture!("formed-7001");
        v.nodes.iter_mut().find(|n| n.myself).expect("me").slots = vec![(0, 99)];
        assert_eq!(
            health(&[v]).unwrap_err().to_string(),
            "127.0.0.1:7001 sees 5361 slots served by no master"
        );
    }

    #[test]
    fn a_restarting_member_is_excused_from_the_gate_and_reported_until_it_is_back() {
        let excused = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        // 7001 sees 7006 failing: expected while 7006 restarts, and 7006 is not back.
        let down = [fixture!("replica-down-7001")];
        assert_eq!(
            health_excusing(&down, &excused(&["127.0.0.1:7006"])),
            Ok(excused(&["127.0.0.1:7006"]))
        );
        // Any other node in trouble still fails the gate.
        assert!(health_excusing(&down, &excused(&["127.0.0.1:7005"])).is_err());
        // Back, and every view clean: nothing troubled.
        let clean = [fixture!("formed-7001"), fixture!("formed-7004")];
        assert_eq!(
            health_excusing(&clean, &excused(&["127.0.0.1:7004"])),
            Ok(BTreeSet::new())
        );
        // A restarted node whose own view does not pass yet (it still reports the cluster
        // failing) is not back; the others' views decide the gate.
        let mut starting = fixture!("formed-7004");
        starting.state_ok = Some(false);
        let views = [fixture!("formed-7001"), starting];
        assert_eq!(
            health_excusing(&views, &excused(&["127.0.0.1:7004"])),
            Ok(excused(&["127.0.0.1:7004"]))
        );
        assert!(health(&views).is_err());
        // Only restarting nodes answer (a cluster of one node): they are judged as any node.
        let only = excused(&["127.0.0.1:7004"]);
        assert_eq!(
            health_excusing(&[fixture!("formed-7004")], &only),
            Ok(BTreeSet::new())
        );
        let mut starting = fixture!("formed-7004");
        starting.state_ok = Some(false);
        assert!(matches!(
            health_excusing(&[starting], &only),
            Err(Unhealthy::StateFail { .. })
        ));
        assert_eq!(health_excusing(&[], &only), Err(Unhealthy::NoViews));
    }

    #[test]
    fn a_failover_is_done_only_when_every_node_sees_it() {
        assert_eq!(
            failover_done(&failed_over(), M7004, M7001, &[(0, 5460)], 1),
            Ok(())
        );
        // Right after the OK, 7002 still lists 7001 as a master (without slots).
        let mut early = failed_over();
        early[1] = fixture!("failing-over-7002");
        let why = failover_done(&early, M7004, M7001, &[(0, 5460)], 1).unwrap_err();
        assert_eq!(
            why,
            "127.0.0.1:7002 does not see 127.0.0.1:7001 replicating 127.0.0.1:7004 yet"
        );
        // Before the failover.
        let before = [fixture!("formed-7001"), fixture!("formed-7004")];
        assert!(failover_done(&before, M7004, M7001, &[(0, 5460)], 1).is_err());
        // The epoch must have moved past the old master's.
        let stale = failover_done(&failed_over(), M7004, M7001, &[(0, 5460)], 6).unwrap_err();
        assert!(stale.contains("config epoch 6"), "{stale}");
        assert!(failover_done(&[], M7004, M7001, &[(0, 5460)], 1).is_err());
    }

    fn shard(primary: u16, replicas: &[u16]) -> Shard {
        Shard {
            primary: format!("127.0.0.1:{primary}"),
            replicas: replicas.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
        }
    }

    fn keyed(views: Vec<(u16, View)>) -> BTreeMap<String, View> {
        views
            .into_iter()
            .map(|(p, v)| (format!("127.0.0.1:{p}"), v))
            .collect()
    }

    #[test]
    fn missing_ranges_are_what_a_node_does_not_serve() {
        assert_eq!(missing((0, 10), &[(3, 5)]), [(0, 2), (6, 10)]);
        assert_eq!(missing((0, 10), &[(0, 10)]), []);
        assert_eq!(missing((5, 9), &[]), [(5, 9)]);
    }

    #[test]
    fn formation_starts_by_meeting_the_first_primary() {
        // Fresh nodes list only themselves, without their own address yet.
        let fresh = |port: u16| {
            let text = include_str!("../testdata/redis-cluster/fresh-7021.txt")
                .replace("e49c97ca", &format!("{port:08}"))
                .replace("7021", &port.to_string());
            (port, View::parse(&text).expect("fresh"))
        };
        let shards = [shard(7001, &[7004]), shard(7002, &[7005])];
        let views = keyed([7001, 7004, 7002, 7005].map(fresh).to_vec());
        assert_eq!(
            next_formation_step(&shards, &views),
            Formation::Meet {
                on: "127.0.0.1:7004".into(),
                peer: "127.0.0.1:7001".into()
            }
        );
        let mut partial = views.clone();
        partial.remove("127.0.0.1:7005");
        assert!(matches!(
            next_formation_step(&shards, &partial),
            Formation::Wait(w) if w.contains("7005 has not answered")
        ));
    }

    #[test]
    fn a_formed_cluster_is_formed_and_one_formed_otherwise_is_a_conflict() {
        let two = keyed(vec![
            (7011, fixture!("v7-two-shards-7011")),
            (7012, fixture!("v7-two-shards-7012")),
            (7013, fixture!("v7-two-shards-7013")),
        ]);
        let shards = [shard(7011, &[7013]), shard(7012, &[])];
        assert_eq!(next_formation_step(&shards, &two), Formation::Formed);
        // Laid out the other way round, nothing is undone.
        let swapped = [shard(7012, &[7013]), shard(7011, &[])];
        assert_eq!(
            next_formation_step(&swapped, &two),
            Formation::Conflict(
                "slot 0, meant for 127.0.0.1:7012, is served by 127.0.0.1:7011".into()
            )
        );
        // The six nodes after 7004 took 7001's slots: 7001 is no longer a master.
        let six = keyed(
            [7001, 7002, 7003, 7004, 7005, 7006]
                .into_iter()
                .zip(failed_over())
                .collect(),
        );
        let planned = [
            shard(7001, &[7004]),
            shard(7002, &[7005]),
            shard(7003, &[7006]),
        ];
        assert_eq!(
            next_formation_step(&planned, &six),
            Formation::Conflict(
                "127.0.0.1:7001 is to serve slots 0-5461 but replicates another node".into()
            )
        );
        // As they stand now, the even split still differs by one slot (5461).
        let now = [
            shard(7004, &[7001]),
            shard(7002, &[7005]),
            shard(7003, &[7006]),
        ];
        assert_eq!(
            next_formation_step(&now, &six),
            Formation::Conflict(
                "slot 5461, meant for 127.0.0.1:7004, is served by 127.0.0.1:7002".into()
            )
        );
    }
}
