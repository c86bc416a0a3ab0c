//! Datastore engines: how Baton talks to a database as a network client — probe a member
//! (role, replication position, version, health), make it replicate from another, fence and
//! unfence writes, promote — and how a member's container is declared. Redis first; PostgreSQL,
//! MySQL and MariaDB plug in behind the same enum.

pub mod redis;

use std::net::Ipv4Addr;

use crate::crd::Datastore;

/// A member's role as the server itself reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Standby,
}

/// What one probe of a member found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub role: Role,
    /// The server's own version string.
    pub version: String,
    /// A primary's write position, or a standby's applied position, in replication-stream bytes.
    pub offset: i64,
    /// For a standby: the primary it follows and whether its link is up (not syncing).
    pub following: Option<Ipv4Addr>,
    pub link_up: bool,
    /// Whether writes are fenced on this member.
    pub fenced: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach {addr}: {source}")]
    Unreachable {
        addr: Ipv4Addr,
        #[source]
        source: ::redis::RedisError,
    },
    #[error("{addr} answered {command} with an error: {source}")]
    Command {
        addr: Ipv4Addr,
        command: &'static str,
        #[source]
        source: ::redis::RedisError,
    },
    #[error("{addr} timed out")]
    Timeout { addr: Ipv4Addr },
    #[error("{addr} reported an unreadable {what}")]
    Unreadable { addr: Ipv4Addr, what: &'static str },
    #[error("datastore {0} has no engine yet")]
    Unsupported(Datastore),
}

/// The engine of a datastore.
#[derive(Debug, Clone, Copy)]
pub enum Engine {
    Redis(redis::Redis),
}

impl Engine {
    pub fn for_datastore(ds: Datastore) -> Result<Engine, EngineError> {
        match ds {
            Datastore::Redis => Ok(Engine::Redis(redis::Redis)),
            other => Err(EngineError::Unsupported(other)),
        }
    }

    pub async fn probe(&self, addr: Ipv4Addr) -> Result<Probe, EngineError> {
        match self {
            Engine::Redis(e) => e.probe(addr).await,
        }
    }

    pub async fn replicate_from(
        &self,
        addr: Ipv4Addr,
        primary: Ipv4Addr,
    ) -> Result<(), EngineError> {
        match self {
            Engine::Redis(e) => e.replicate_from(addr, primary).await,
        }
    }

    pub async fn promote(&self, addr: Ipv4Addr) -> Result<(), EngineError> {
        match self {
            Engine::Redis(e) => e.promote(addr).await,
        }
    }

    pub async fn fence(&self, addr: Ipv4Addr) -> Result<(), EngineError> {
        match self {
            Engine::Redis(e) => e.set_fence(addr, true).await,
        }
    }

    pub async fn unfence(&self, addr: Ipv4Addr) -> Result<(), EngineError> {
        match self {
            Engine::Redis(e) => e.set_fence(addr, false).await,
        }
    }

    /// The container of a member: name, port, args, readiness probe, data mount path.
    pub fn container(&self) -> serde_json::Value {
        match self {
            Engine::Redis(e) => e.container(),
        }
    }
}
