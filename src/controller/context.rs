//! The state every reconcile shares, built once at start-up.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use super::requeue::Backoffs;
use crate::metrics::Metrics;
use crate::window::Clock;

/// The field manager of every status Baton writes (server-side apply).
pub const FIELD_MANAGER: &str = "baton";

/// Shared by every reconcile of every controller.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub backoffs: Backoffs,
    /// When set, namespaced kinds are watched in this namespace only.
    pub namespace: Option<String>,
    /// The time maintenance windows, step timeouts and status timestamps are read from.
    pub clock: Clock,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        identity: &str,
        namespace: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: "baton".into(),
            instance: Some(identity.to_string()),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            backoffs: Backoffs::default(),
            namespace,
            clock: Clock::from_env(),
        }
    }

    /// The current time, for status timestamps.
    pub fn now(&self) -> Time {
        Time(self.clock.now())
    }
}
