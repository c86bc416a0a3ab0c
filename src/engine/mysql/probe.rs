//! What a probe reads, and how it is read into a role, a fence and a position.

use super::*;

/// What one probe returns, before it is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub version: String,
    pub read_only: bool,
    /// Executed (and logged) position.
    pub executed: String,
    /// Accounts Baton locked (rows of `baton.fenced`).
    pub fenced: i64,
    /// The source host, when replication is configured.
    pub source: Option<String>,
    pub io_running: bool,
    pub sql_running: bool,
    pub received: Option<String>,
}

/// Reads a probe: a member with a source configured is a replica; without one it is a primary,
/// fenced while read-only or while accounts Baton locked are still locked.
pub fn parse_probe(
    dialect: Dialect,
    endpoint: &Endpoint,
    o: &Observed,
) -> Result<Probe, EngineError> {
    let bad = |what| EngineError::Unreadable {
        endpoint: endpoint.to_string(),
        what,
    };
    // `10.11.18-MariaDB-0+deb12u1-log`, `8.4.3`: the version is the part before the first '-'.
    let version = o
        .version
        .split('-')
        .next()
        .filter(|v| !v.is_empty())
        .ok_or(bad("version"))?
        .to_string();
    let position = dialect
        .parse_position(&o.executed)
        .map_err(|_| bad("GTID position"))?;
    let fenced = o.read_only || o.fenced > 0;
    Ok(match o.source.as_deref().filter(|h| !h.is_empty()) {
        None => Probe {
            role: Role::Primary,
            version,
            position,
            received: None,
            following: None,
            streaming: false,
            fenced,
            stale_certificate: false,
        },
        Some(host) => Probe {
            role: Role::Standby,
            version,
            position,
            received: o
                .received
                .as_deref()
                .map(|r| dialect.parse_position(r))
                .transpose()
                .map_err(|_| bad("received GTID position"))?,
            following: Some(host.to_string()),
            streaming: o.io_running && o.sql_running,
            fenced,
            stale_certificate: false,
        },
    })
}
