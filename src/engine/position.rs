//! Replication positions, one form per datastore, behind the only two questions the planner
//! asks: has this member reached that position, and how far behind it is.
//!
//! No datastore orders its positions by a single integer that survives everything: a Redis
//! offset means something only within one replication history, a PostgreSQL LSN is a WAL
//! location, a MariaDB position is one sequence number per replication domain, and a MySQL
//! position is a set of transaction intervals per source server. Each engine builds and
//! parses its own form; everything else compares them through [`Position::reached`] and
//! [`Position::behind`], and stores them as the engine's text (`Display` / the engine's parser).

use std::collections::BTreeMap;
use std::fmt;

/// A replication position as one datastore defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// Redis: the replication history (`master_replid`) and the byte offset in it. A promoted
    /// primary keeps its former history as `previous` (`master_replid2`, valid up to
    /// `second_repl_offset - 1`), so a promoted standby can show it has everything the old
    /// primary wrote.
    Redis {
        replid: String,
        offset: u64,
        previous: Option<(String, u64)>,
    },
    /// PostgreSQL: a WAL location (LSN), in bytes.
    Lsn(u64),
    /// MariaDB: per replication domain, the last applied sequence number (the server id of a
    /// GTID does not order anything and is kept only to print the position back).
    MariaDb(BTreeMap<u32, (u32, u64)>),
    /// MySQL: a GTID set — per source UUID, the executed transaction intervals (inclusive).
    GtidSet(BTreeMap<String, Vec<(u64, u64)>>),
}

/// How far a member is behind another, in the unit its datastore counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lag {
    /// Bytes of the replication stream (Redis, PostgreSQL).
    Bytes(u64),
    /// Transactions (MariaDB, MySQL).
    Transactions(u64),
}

impl Lag {
    /// No lag at all.
    pub fn is_zero(self) -> bool {
        matches!(self, Lag::Bytes(0) | Lag::Transactions(0))
    }
}

impl fmt::Display for Lag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lag::Bytes(n) => write!(f, "{n} bytes"),
            Lag::Transactions(n) => write!(f, "{n} transactions"),
        }
    }
}

/// Why a position could not be read back from its text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a {kind} position")]
pub struct ParsePositionError {
    kind: &'static str,
    text: String,
}

impl Position {
    /// Whether `self` includes everything up to `goal` (false when the two are not comparable,
    /// for example Redis positions of unrelated histories).
    pub fn reached(&self, goal: &Position) -> bool {
        match (self, goal) {
            (
                Position::Redis {
                    replid,
                    offset,
                    previous,
                },
                Position::Redis {
                    replid: g_id,
                    offset: g_off,
                    ..
                },
            ) => {
                (replid == g_id && offset >= g_off)
                    || previous
                        .as_ref()
                        .is_some_and(|(id, second)| id == g_id && *g_off < *second)
            }
            (Position::Lsn(a), Position::Lsn(b)) => a >= b,
            (Position::MariaDb(a), Position::MariaDb(b)) => b
                .iter()
                .all(|(d, (_, seq))| a.get(d).is_some_and(|(_, s)| s >= seq)),
            (Position::GtidSet(a), Position::GtidSet(b)) => b.iter().all(|(uuid, want)| {
                let have = a.get(uuid).map(Vec::as_slice).unwrap_or_default();
                missing(have, want) == 0
            }),
            _ => false,
        }
    }

    /// How far `self` is behind `ahead`, or None when the two are not comparable.
    pub fn behind(&self, ahead: &Position) -> Option<Lag> {
        match (self, ahead) {
            (
                Position::Redis { replid, offset, .. },
                Position::Redis {
                    replid: a_id,
                    offset: a_off,
                    previous,
                },
            ) => {
                if replid == a_id {
                    Some(Lag::Bytes(a_off.saturating_sub(*offset)))
                } else if previous.as_ref().is_some_and(|(id, _)| id == replid) {
                    // `ahead` was promoted after `self` last synced from the same history.
                    Some(Lag::Bytes(a_off.saturating_sub(*offset)))
                } else {
                    None
                }
            }
            (Position::Lsn(a), Position::Lsn(b)) => Some(Lag::Bytes(b.saturating_sub(*a))),
            (Position::MariaDb(a), Position::MariaDb(b)) => Some(Lag::Transactions(
                b.iter()
                    .map(|(d, (_, seq))| seq.saturating_sub(a.get(d).map_or(0, |(_, s)| *s)))
                    .sum(),
            )),
            (Position::GtidSet(a), Position::GtidSet(b)) => Some(Lag::Transactions(
                b.iter()
                    .map(|(uuid, want)| {
                        missing(a.get(uuid).map(Vec::as_slice).unwrap_or_default(), want)
                    })
                    .sum(),
            )),
            _ => None,
        }
    }

    /// Redis: `<replid>:<offset>`.
    pub fn parse_redis(text: &str) -> Result<Position, ParsePositionError> {
        let err = || ParsePositionError {
            kind: "Redis",
            text: text.into(),
        };
        let (id, off) = text.rsplit_once(':').ok_or_else(err)?;
        if id.is_empty() {
            return Err(err());
        }
        Ok(Position::Redis {
            replid: id.into(),
            offset: off.parse().map_err(|_| err())?,
            previous: None,
        })
    }

    /// PostgreSQL: `HI/LO` in hexadecimal, as `pg_current_wal_lsn()` prints it.
    pub fn parse_lsn(text: &str) -> Result<Position, ParsePositionError> {
        let err = || ParsePositionError {
            kind: "PostgreSQL LSN",
            text: text.into(),
        };
        let (hi, lo) = text.split_once('/').ok_or_else(err)?;
        let hi = u64::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| err())?;
        if hi > u32::MAX as u64 || lo > u32::MAX as u64 {
            return Err(err());
        }
        Ok(Position::Lsn((hi << 32) | lo))
    }

    /// MariaDB: `domain-server-seq` GTIDs separated by commas (`gtid_current_pos`); empty is
    /// the empty position.
    pub fn parse_mariadb(text: &str) -> Result<Position, ParsePositionError> {
        let err = || ParsePositionError {
            kind: "MariaDB GTID",
            text: text.into(),
        };
        let mut out = BTreeMap::new();
        for gtid in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let mut parts = gtid.split('-');
            let (Some(d), Some(s), Some(n), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(err());
            };
            let domain: u32 = d.parse().map_err(|_| err())?;
            let server: u32 = s.parse().map_err(|_| err())?;
            let seq: u64 = n.parse().map_err(|_| err())?;
            if out.insert(domain, (server, seq)).is_some() {
                return Err(err());
            }
        }
        Ok(Position::MariaDb(out))
    }

    /// MySQL: `uuid:1-5:7,uuid2:1-3` (`gtid_executed`, newlines allowed); empty is the empty set.
    pub fn parse_gtid_set(text: &str) -> Result<Position, ParsePositionError> {
        let err = || ParsePositionError {
            kind: "MySQL GTID set",
            text: text.into(),
        };
        let mut out: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let mut pieces = part.split(':');
            let uuid = pieces.next().filter(|u| !u.is_empty()).ok_or_else(err)?;
            let ranges = out.entry(uuid.to_ascii_lowercase()).or_default();
            for r in pieces {
                let (a, b) = match r.split_once('-') {
                    Some((a, b)) => (a.parse().map_err(|_| err())?, b.parse().map_err(|_| err())?),
                    None => {
                        let n: u64 = r.parse().map_err(|_| err())?;
                        (n, n)
                    }
                };
                if a == 0 || b < a {
                    return Err(err());
                }
                ranges.push((a, b));
            }
            if ranges.is_empty() {
                return Err(err());
            }
            *ranges = normalise(std::mem::take(ranges));
        }
        Ok(Position::GtidSet(out))
    }
}

/// Sorted, merged intervals.
fn normalise(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// How many transactions of `want` are not in `have` (both normalised).
fn missing(have: &[(u64, u64)], want: &[(u64, u64)]) -> u64 {
    want.iter()
        .map(|&(a, b)| {
            let covered: u64 = have
                .iter()
                .map(|&(x, y)| {
                    let (lo, hi) = (a.max(x), b.min(y));
                    if lo <= hi { hi - lo + 1 } else { 0 }
                })
                .sum();
            (b - a + 1) - covered
        })
        .sum()
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Redis { replid, offset, .. } => write!(f, "{replid}:{offset}"),
            Position::Lsn(l) => write!(f, "{:X}/{:X}", l >> 32, l & 0xFFFF_FFFF),
            Position::MariaDb(m) => {
                let parts: Vec<String> =
                    m.iter().map(|(d, (s, n))| format!("{d}-{s}-{n}")).collect();
                f.write_str(&parts.join(","))
            }
            Position::GtidSet(m) => {
                let parts: Vec<String> = m
                    .iter()
                    .map(|(uuid, ranges)| {
                        let r: Vec<String> = ranges
                            .iter()
                            .map(|(a, b)| {
                                if a == b {
                                    a.to_string()
                                } else {
                                    format!("{a}-{b}")
                                }
                            })
                            .collect();
                        format!("{uuid}:{}", r.join(":"))
                    })
                    .collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis(id: &str, off: u64) -> Position {
        Position::Redis {
            replid: id.into(),
            offset: off,
            previous: None,
        }
    }

    #[test]
    fn redis_offsets_compare_only_within_one_history() {
        let fence = redis("aaa", 500);
        assert!(redis("aaa", 500).reached(&fence));
        assert!(!redis("aaa", 499).reached(&fence));
        assert!(!redis("bbb", 900).reached(&fence), "another history");
        assert_eq!(redis("aaa", 450).behind(&fence), Some(Lag::Bytes(50)));
        assert_eq!(redis("bbb", 450).behind(&fence), None);
    }

    #[test]
    fn a_promoted_redis_primary_carries_the_old_history() {
        let fence = redis("aaa", 500);
        let promoted = Position::Redis {
            replid: "ccc".into(),
            offset: 520,
            previous: Some(("aaa".into(), 501)),
        };
        assert!(promoted.reached(&fence));
        let early = Position::Redis {
            replid: "ccc".into(),
            offset: 520,
            previous: Some(("aaa".into(), 400)),
        };
        assert!(
            !early.reached(&fence),
            "promoted before it had the fenced writes"
        );
        // A standby of the old history is measured against the promoted primary.
        assert_eq!(redis("aaa", 480).behind(&promoted), Some(Lag::Bytes(40)));
    }

    #[test]
    fn positions_round_trip_through_their_text() {
        for (p, text) in [
            (Position::parse_redis("8a1f:4242"), "8a1f:4242"),
            (Position::parse_lsn("0/3000060"), "0/3000060"),
            (Position::parse_lsn("1A/FF"), "1A/FF"),
            (Position::parse_mariadb("0-1-42,1-2-7"), "0-1-42,1-2-7"),
            (Position::parse_mariadb(""), ""),
            (
                Position::parse_gtid_set("3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5:6-9:11"),
                "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-9:11",
            ),
        ] {
            assert_eq!(p.expect(text).to_string(), text);
        }
        assert_eq!(Position::parse_lsn("1/0").unwrap(), Position::Lsn(1 << 32));
        for bad in ["", "x", ":4", "a:b"] {
            assert!(Position::parse_redis(bad).is_err(), "{bad}");
        }
        for bad in ["", "3000060", "0/G", "100000000/0"] {
            assert!(Position::parse_lsn(bad).is_err(), "{bad}");
        }
        for bad in ["0-1", "0-1-x", "0-1-2-3", "0-1-2,0-2-3"] {
            assert!(Position::parse_mariadb(bad).is_err(), "{bad}");
        }
        for bad in ["uuid", "uuid:0", "uuid:5-3", ":1-3"] {
            assert!(Position::parse_gtid_set(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lsns_compare_by_location() {
        let a = Position::parse_lsn("0/3000060").unwrap();
        let b = Position::parse_lsn("0/3000000").unwrap();
        assert!(a.reached(&b) && !b.reached(&a));
        assert_eq!(b.behind(&a), Some(Lag::Bytes(0x60)));
        assert_eq!(a.behind(&b), Some(Lag::Bytes(0)));
    }

    #[test]
    fn mariadb_positions_compare_per_domain() {
        let goal = Position::parse_mariadb("0-1-42,1-2-7").unwrap();
        assert!(
            Position::parse_mariadb("0-3-42,1-2-9")
                .unwrap()
                .reached(&goal)
        );
        let behind = Position::parse_mariadb("0-1-40").unwrap();
        assert!(!behind.reached(&goal), "domain 1 missing, domain 0 behind");
        assert_eq!(behind.behind(&goal), Some(Lag::Transactions(2 + 7)));
    }

    #[test]
    fn gtid_sets_compare_by_inclusion() {
        let goal = Position::parse_gtid_set("u1:1-10,u2:1-3").unwrap();
        let have = Position::parse_gtid_set("u1:1-8,u2:1-3").unwrap();
        assert!(!have.reached(&goal));
        assert_eq!(have.behind(&goal), Some(Lag::Transactions(2)));
        let gap = Position::parse_gtid_set("u1:1-4:6-10,u2:1-3").unwrap();
        assert_eq!(gap.behind(&goal), Some(Lag::Transactions(1)), "a hole");
        let all = Position::parse_gtid_set("u1:1-12,u2:1-3,u3:1").unwrap();
        assert!(all.reached(&goal));
        assert_eq!(all.behind(&goal), Some(Lag::Transactions(0)));
    }

    #[test]
    fn different_datastores_never_compare() {
        let lsn = Position::Lsn(10);
        assert!(!lsn.reached(&redis("a", 1)));
        assert_eq!(lsn.behind(&Position::parse_mariadb("0-1-1").unwrap()), None);
    }
}
