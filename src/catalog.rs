//! The version catalog's rules, as pure functions over DatastoreVersion specs: whether an entry
//! is usable next to the others, and whether an upgrade path from a running version to a
//! catalog entry is allowed.

use std::collections::BTreeMap;

use crate::crd::{Datastore, DatastoreVersion, DatastoreVersionSpec};
use crate::version::Version;

/// Why a catalog entry cannot be used. The `reason` is a fixed PascalCase word (condition
/// reason, event reason); the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

/// Checks one entry (`name`) against the whole catalog (`name → spec`, including itself).
/// The schema already guarantees well-formed fields; this checks what needs the other entries.
pub fn validate_entry(
    name: &str,
    entry: &DatastoreVersionSpec,
    catalog: &BTreeMap<String, DatastoreVersionSpec>,
) -> Result<(), Invalid> {
    let own: Version = entry.version.parse().map_err(|e| Invalid {
        reason: "InvalidVersion",
        message: format!("{e}"),
    })?;

    let same_version: Vec<&str> = catalog
        .iter()
        .filter(|(n, s)| n.as_str() != name && s.datastore == entry.datastore)
        .filter(|(_, s)| s.version.parse::<Version>().is_ok_and(|v| v == own))
        .map(|(n, _)| n.as_str())
        .collect();
    if !same_version.is_empty() {
        return Err(Invalid {
            reason: "DuplicateVersion",
            message: format!(
                "{} {} is also defined by {}; keep one entry per datastore version",
                entry.datastore,
                entry.version,
                same_version.join(", ")
            ),
        });
    }

    if entry.default {
        let other_defaults: Vec<&str> = catalog
            .iter()
            .filter(|(n, s)| n.as_str() != name && s.datastore == entry.datastore && s.default)
            .map(|(n, _)| n.as_str())
            .collect();
        if !other_defaults.is_empty() {
            return Err(Invalid {
                reason: "ConflictingDefault",
                message: format!(
                    "{} has more than one default version (also {}); set default on one only",
                    entry.datastore,
                    other_defaults.join(", ")
                ),
            });
        }
    }

    for (i, edge) in entry.upgrade_from.iter().enumerate() {
        validate_edge(i, edge, entry, &own)?;
    }
    Ok(())
}

/// Checks `upgradeFrom[i]` of `entry` (at version `own`): bounds that parse and are ordered,
/// and, from the same datastore, wholly below `own`.
fn validate_edge(
    i: usize,
    edge: &crate::crd::UpgradeEdge,
    entry: &DatastoreVersionSpec,
    own: &Version,
) -> Result<(), Invalid> {
    let parse = |b: &Option<String>| b.as_deref().map(str::parse::<Version>).transpose();
    let (min, max) = match (parse(&edge.min_version), parse(&edge.max_version)) {
        (Ok(min), Ok(max)) => (min, max),
        (Err(e), _) | (_, Err(e)) => {
            return Err(Invalid {
                reason: "InvalidEdge",
                message: format!("upgradeFrom[{i}]: {e}"),
            });
        }
    };
    if let (Some(lo), Some(hi)) = (&min, &max)
        && lo > hi
        && !hi.contains(lo)
    {
        return Err(Invalid {
            reason: "InvalidEdge",
            message: format!("upgradeFrom[{i}]: minVersion {lo} is above maxVersion {hi}"),
        });
    }
    // An edge from the same datastore must lie wholly below this version: a path may never
    // be a downgrade.
    if edge.datastore == entry.datastore
        && max.as_ref().is_none_or(|hi| hi >= own || hi.contains(own))
    {
        return Err(Invalid {
            reason: "InvalidEdge",
            message: format!(
                "upgradeFrom[{i}]: an edge from {} must end below {} (set a maxVersion lower than this version)",
                edge.datastore, entry.version
            ),
        });
    }
    Ok(())
}

/// The catalog entry of `ds` `version`, compared as versions (`7.0` finds an entry written
/// `7.0.0`; a build suffix must match).
pub fn find<'a>(
    catalog: &'a [DatastoreVersion],
    ds: Datastore,
    version: &str,
) -> Option<&'a DatastoreVersion> {
    let want: Version = version.parse().ok()?;
    catalog.iter().find(|d| {
        d.spec.datastore == ds && d.spec.version.parse::<Version>().ok() == Some(want.clone())
    })
}

/// The kind of step an allowed upgrade path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Same version and release, another build.
    Hotfix,
    /// Same datastore and major, newer version.
    Minor,
    /// Same datastore, newer major, along an edge.
    Major,
    /// Another datastore, along an edge.
    CrossDatastore,
}

/// Why an upgrade path is refused, in words a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("target version {datastore} {version} is inactive in the catalog")]
    Inactive {
        datastore: Datastore,
        version: String,
    },
    #[error("{from} is already the running version; nothing to upgrade")]
    SameVersion { from: String },
    #[error("{to} is older than the running {from}; downgrades are never performed")]
    Downgrade { from: String, to: String },
    #[error(
        "no catalog edge leads from {from_datastore} {from} to {to_datastore} {to}; add an upgradeFrom entry to that DatastoreVersion to allow it"
    )]
    NoEdge {
        from_datastore: Datastore,
        from: String,
        to_datastore: Datastore,
        to: String,
    },
    #[error(
        "no catalog path leads from {datastore} {from} to {to}: from {from} the catalog reaches {reachable}, and {to} lists none of them in its upgradeFrom edges; add an upgradeFrom entry to {to}'s DatastoreVersion (or to one on the way) to allow it"
    )]
    NoPath {
        datastore: Datastore,
        from: String,
        to: String,
        /// The versions reachable from `from` (below `to`), in words.
        reachable: String,
    },
    #[error("{0}")]
    BadVersion(#[from] crate::version::ParseVersionError),
}

/// One hop of an upgrade path: the version it lands on and what kind of step it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub version: String,
    pub kind: PathKind,
}

/// The shortest allowed path from `from` to catalog entry `to` (same datastore): each hop an
/// active entry that `check_path` allows from the previous one — minor steps free within a major,
/// majors only along `upgradeFrom` edges, never down, never past `to`. One hop when the step is
/// allowed directly. A change of datastore is a single edge, never a path. Ties go to the lower
/// versions (entries are tried in version order), so the path is deterministic.
pub fn resolve_path(
    catalog: &[DatastoreVersion],
    from_datastore: Datastore,
    from: &str,
    to: &DatastoreVersionSpec,
) -> Result<Vec<Hop>, PathError> {
    let direct = check_path(from_datastore, from, to);
    match &direct {
        Ok(kind) => {
            return Ok(vec![Hop {
                version: to.version.clone(),
                kind: *kind,
            }]);
        }
        Err(PathError::NoEdge { .. }) if from_datastore == to.datastore => {}
        Err(_) => return direct.map(|_| vec![]),
    }
    let goal: Version = to.version.parse()?;
    let src: Version = from.parse()?;
    // The hops that may lie on the way: active entries of the datastore between the two.
    let mut way: Vec<(Version, &DatastoreVersionSpec)> = catalog
        .iter()
        .map(|d| &d.spec)
        .filter(|s| s.datastore == to.datastore && s.active)
        .filter_map(|s| Some((s.version.parse::<Version>().ok()?, s)))
        .filter(|(v, _)| *v > src && *v < goal)
        .collect();
    way.sort_by(|a, b| a.0.cmp(&b.0));
    // Breadth first from `from`: the first time `to` is reached is a shortest path.
    let mut parent: BTreeMap<String, (String, PathKind)> = BTreeMap::new();
    let mut frontier = vec![from.to_string()];
    let mut seen = vec![from.to_string()];
    while !frontier.is_empty() {
        let mut next = vec![];
        for at in &frontier {
            if let Ok(kind) = check_path(to.datastore, at, to) {
                let mut hops = vec![Hop {
                    version: to.version.clone(),
                    kind,
                }];
                let mut cur = at.clone();
                while let Some((prev, kind)) = parent.get(&cur) {
                    hops.push(Hop {
                        version: cur.clone(),
                        kind: *kind,
                    });
                    cur = prev.clone();
                }
                hops.reverse();
                return Ok(hops);
            }
            for (_, spec) in &way {
                if seen.contains(&spec.version) {
                    continue;
                }
                if let Ok(kind) = check_path(to.datastore, at, spec) {
                    seen.push(spec.version.clone());
                    parent.insert(spec.version.clone(), (at.clone(), kind));
                    next.push(spec.version.clone());
                }
            }
        }
        frontier = next;
    }
    let reachable: Vec<&str> = seen.iter().skip(1).map(String::as_str).collect();
    Err(PathError::NoPath {
        datastore: to.datastore,
        from: from.to_string(),
        to: to.version.clone(),
        reachable: if reachable.is_empty() {
            "no other version".into()
        } else {
            reachable.join(", ")
        },
    })
}

/// Whether an instance running `from_datastore` `from` may be upgraded to catalog entry `to`.
pub fn check_path(
    from_datastore: Datastore,
    from: &str,
    to: &DatastoreVersionSpec,
) -> Result<PathKind, PathError> {
    if !to.active {
        return Err(PathError::Inactive {
            datastore: to.datastore,
            version: to.version.clone(),
        });
    }
    let src: Version = from.parse()?;
    let dst: Version = to.version.parse()?;
    let via_edge = || {
        to.upgrade_from.iter().any(|e| {
            let bound = |b: &Option<String>| b.as_deref().and_then(|s| s.parse::<Version>().ok());
            e.datastore == from_datastore
                && Version::in_range(
                    &src,
                    bound(&e.min_version).as_ref(),
                    bound(&e.max_version).as_ref(),
                )
        })
    };
    let no_edge = || PathError::NoEdge {
        from_datastore,
        from: from.to_string(),
        to_datastore: to.datastore,
        to: to.version.clone(),
    };

    if from_datastore != to.datastore {
        return if via_edge() {
            Ok(PathKind::CrossDatastore)
        } else {
            Err(no_edge())
        };
    }
    match dst.cmp(&src) {
        std::cmp::Ordering::Equal => Err(PathError::SameVersion {
            from: from.to_string(),
        }),
        std::cmp::Ordering::Less => Err(PathError::Downgrade {
            from: from.to_string(),
            to: to.version.clone(),
        }),
        std::cmp::Ordering::Greater if dst.cmp_release(&src).is_eq() => Ok(PathKind::Hotfix),
        std::cmp::Ordering::Greater if dst.major() == src.major() => Ok(PathKind::Minor),
        std::cmp::Ordering::Greater if via_edge() => Ok(PathKind::Major),
        std::cmp::Ordering::Greater => Err(no_edge()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::UpgradeEdge;

    fn spec(ds: Datastore, v: &str) -> DatastoreVersionSpec {
        DatastoreVersionSpec {
            datastore: ds,
            version: v.into(),
            image: format!("{ds}:{v}"),
            active: true,
            default: false,
            upgrade_from: vec![],
        }
    }

    fn edge(ds: Datastore, min: Option<&str>, max: Option<&str>) -> UpgradeEdge {
        UpgradeEdge {
            datastore: ds,
            min_version: min.map(Into::into),
            max_version: max.map(Into::into),
        }
    }

    fn catalog(entries: &[(&str, DatastoreVersionSpec)]) -> BTreeMap<String, DatastoreVersionSpec> {
        entries
            .iter()
            .map(|(n, s)| (n.to_string(), s.clone()))
            .collect()
    }

    #[test]
    fn distinct_entries_are_valid() {
        let c = catalog(&[
            ("redis-6", spec(Datastore::Redis, "6.2.14")),
            ("redis-7", spec(Datastore::Redis, "7.0.15")),
            ("pg-15", spec(Datastore::Postgresql, "7.0.15")),
        ]);
        for (n, s) in &c {
            assert_eq!(validate_entry(n, s, &c), Ok(()), "{n}");
        }
    }

    #[test]
    fn duplicate_versions_name_the_other_entry() {
        let c = catalog(&[
            ("a", spec(Datastore::Redis, "7.0.15")),
            ("b", spec(Datastore::Redis, "7.0.15")),
        ]);
        let err = validate_entry("a", &c["a"], &c).unwrap_err();
        assert_eq!(err.reason, "DuplicateVersion");
        assert!(err.message.contains("also defined by b"), "{}", err.message);
    }

    #[test]
    fn two_defaults_for_one_datastore_conflict() {
        let mut a = spec(Datastore::Redis, "6.2.14");
        a.default = true;
        let mut b = spec(Datastore::Redis, "7.0.15");
        b.default = true;
        let mut p = spec(Datastore::Postgresql, "15");
        p.default = true;
        let c = catalog(&[("a", a), ("b", b), ("p", p)]);
        assert_eq!(
            validate_entry("b", &c["b"], &c).unwrap_err().reason,
            "ConflictingDefault"
        );
        assert_eq!(validate_entry("p", &c["p"], &c), Ok(()));
    }

    #[test]
    fn edges_must_be_ordered_and_never_lead_down() {
        let mut s = spec(Datastore::Redis, "7.0.15");
        s.upgrade_from = vec![edge(Datastore::Redis, Some("6.2"), Some("6.0"))];
        let c = catalog(&[("s", s.clone())]);
        let err = validate_entry("s", &c["s"], &c).unwrap_err();
        assert!(err.message.contains("above maxVersion"), "{}", err.message);

        s.upgrade_from = vec![edge(Datastore::Redis, Some("6.0"), None)];
        let c = catalog(&[("s", s.clone())]);
        assert_eq!(
            validate_entry("s", &c["s"], &c).unwrap_err().reason,
            "InvalidEdge"
        );

        s.upgrade_from = vec![edge(Datastore::Redis, Some("6.0"), Some("6"))];
        let c = catalog(&[("s", s)]);
        assert_eq!(validate_entry("s", &c["s"], &c), Ok(()));
    }

    #[test]
    fn minor_upgrades_need_no_edge_and_downgrades_are_refused() {
        let to = spec(Datastore::Redis, "7.0.15");
        assert_eq!(
            check_path(Datastore::Redis, "7.0.11", &to),
            Ok(PathKind::Minor)
        );
        assert!(matches!(
            check_path(Datastore::Redis, "7.2.4", &to),
            Err(PathError::Downgrade { .. })
        ));
        assert!(matches!(
            check_path(Datastore::Redis, "7.0.15", &to),
            Err(PathError::SameVersion { .. })
        ));
        let hf = spec(Datastore::Redis, "7.0.15-hf1");
        assert_eq!(
            check_path(Datastore::Redis, "7.0.15", &hf),
            Ok(PathKind::Hotfix)
        );
    }

    #[test]
    fn major_and_cross_datastore_steps_need_an_edge() {
        let mut to = spec(Datastore::Redis, "7.0.15");
        let err = check_path(Datastore::Redis, "6.2.14", &to).unwrap_err();
        assert!(err.to_string().contains("no catalog edge"), "{err}");
        to.upgrade_from = vec![edge(Datastore::Redis, Some("6.0"), Some("6"))];
        assert_eq!(
            check_path(Datastore::Redis, "6.2.14", &to),
            Ok(PathKind::Major)
        );
        assert!(check_path(Datastore::Redis, "5.0.14", &to).is_err());

        let mut maria = spec(Datastore::Mariadb, "10.4");
        assert!(check_path(Datastore::Mysql, "5.6.51", &maria).is_err());
        maria.upgrade_from = vec![edge(Datastore::Mysql, Some("5.6"), Some("5.7"))];
        assert_eq!(
            check_path(Datastore::Mysql, "5.6.51", &maria),
            Ok(PathKind::CrossDatastore)
        );
    }

    #[test]
    fn inactive_targets_are_refused_with_a_message() {
        let mut to = spec(Datastore::Redis, "7.0.15");
        to.active = false;
        let err = check_path(Datastore::Redis, "7.0.11", &to).unwrap_err();
        assert_eq!(
            err.to_string(),
            "target version redis 7.0.15 is inactive in the catalog"
        );
    }

    fn entry(v: &str, edges: Vec<UpgradeEdge>) -> DatastoreVersion {
        DatastoreVersion::new(
            &format!("redis-{v}"),
            DatastoreVersionSpec {
                upgrade_from: edges,
                ..spec(Datastore::Redis, v)
            },
        )
    }

    /// Redis as the catalog lists it: 7.0 from 6, 8.2 from 7.2 to 7.4.
    fn redis_catalog() -> Vec<DatastoreVersion> {
        let r = Datastore::Redis;
        vec![
            entry("6.2.14", vec![]),
            entry("7.0.15", vec![edge(r, Some("6.0"), Some("6"))]),
            entry("7.2.4", vec![]),
            entry("7.4.1", vec![]),
            entry("8.2.3", vec![edge(r, Some("7.2"), Some("7.4"))]),
        ]
    }

    fn path(c: &[DatastoreVersion], from: &str, to: &str) -> Result<Vec<String>, PathError> {
        let target = find(c, Datastore::Redis, to).expect("target").spec.clone();
        resolve_path(c, Datastore::Redis, from, &target)
            .map(|h| h.into_iter().map(|h| h.version).collect())
    }

    #[test]
    fn the_shortest_path_takes_minor_steps_freely_and_majors_only_along_edges() {
        let c = redis_catalog();
        assert_eq!(path(&c, "6.2.14", "7.0.15").unwrap(), ["7.0.15"]);
        assert_eq!(
            path(&c, "6.2.14", "8.2.3").unwrap(),
            ["7.0.15", "7.2.4", "8.2.3"],
            "the first 7.x that 8.2.3's edge accepts, reached by a free minor step"
        );
        assert_eq!(path(&c, "7.0.15", "8.2.3").unwrap(), ["7.2.4", "8.2.3"]);
        assert_eq!(path(&c, "7.4.1", "8.2.3").unwrap(), ["8.2.3"]);
        let hops = resolve_path(
            &c,
            Datastore::Redis,
            "6.2.14",
            &find(&c, Datastore::Redis, "8.2.3").unwrap().spec,
        )
        .unwrap();
        let kinds: Vec<PathKind> = hops.iter().map(|h| h.kind).collect();
        assert_eq!(kinds, [PathKind::Major, PathKind::Minor, PathKind::Major]);
    }

    #[test]
    fn inactive_hops_are_skipped_and_a_missing_edge_is_named() {
        let mut c = redis_catalog();
        c[2].spec.active = false; // 7.2.4
        assert_eq!(
            path(&c, "6.2.14", "8.2.3").unwrap(),
            ["7.0.15", "7.4.1", "8.2.3"]
        );
        c[3].spec.active = false; // 7.4.1 too: nothing 8.2.3 accepts is reachable
        let err = path(&c, "6.2.14", "8.2.3").unwrap_err().to_string();
        assert!(
            err.contains("from 6.2.14 the catalog reaches 7.0.15")
                && err.contains("add an upgradeFrom entry"),
            "{err}"
        );
        // Downgrades and inactive targets are refused as before, not searched.
        assert!(matches!(
            path(&redis_catalog(), "8.2.3", "7.0.15"),
            Err(PathError::Downgrade { .. })
        ));
    }
}
