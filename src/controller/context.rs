//! The state every reconcile shares, built once at start-up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store, store::Writer};

use crate::crd::DatastoreVersion;

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
    /// The DatastoreVersion catalog as the watch last delivered it (the catalog controller
    /// still decides catalog validity from a fresh list).
    pub catalog: Store<DatastoreVersion>,
    /// Fed by `controller::run_all`, which drives the catalog's watch.
    catalog_writer: Mutex<Option<Writer<DatastoreVersion>>>,
    /// How often a settled instance is looked at again (`--health-interval-seconds`).
    pub health_interval: std::time::Duration,
    /// Objects of one kind reconciled at once (`--concurrency`).
    pub concurrency: u16,
    /// The last failed act of each object (`namespace/name`), until an act succeeds: the next
    /// pass reports it in status, and an Event is published only when it changes.
    act_errors: Mutex<HashMap<String, String>>,
    /// When this process last wrote each object's status (`namespace/name`).
    written: Mutex<HashMap<String, std::time::Instant>>,
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
        let (catalog, writer) = reflector::store();
        Context {
            catalog,
            catalog_writer: Mutex::new(Some(writer)),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            backoffs: Backoffs::default(),
            namespace,
            clock: Clock::from_env(),
            act_errors: Mutex::default(),
            written: Mutex::default(),
            health_interval: std::time::Duration::from_secs(30),
            concurrency: 16,
        }
    }

    /// The writer of the catalog store, once (for the task that drives its watch).
    pub fn take_catalog_writer(&self) -> Option<Writer<DatastoreVersion>> {
        self.catalog_writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// The catalog, in a fixed order.
    pub fn catalog(&self) -> Vec<DatastoreVersion> {
        let mut all: Vec<DatastoreVersion> =
            self.catalog.state().iter().map(|d| (**d).clone()).collect();
        all.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        all
    }

    /// Records a status write of `key`.
    pub fn mark_written(&self, key: &str) {
        let mut map = self.written.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(key.to_string(), std::time::Instant::now());
    }

    /// Whether this process wrote `key`'s status within `window`.
    pub fn written_within(&self, key: &str, window: std::time::Duration) -> bool {
        let map = self.written.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).is_some_and(|t| t.elapsed() < window)
    }

    /// The last failed act of `key`, if the last act failed.
    pub fn act_error(&self, key: &str) -> Option<String> {
        let map = self.act_errors.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).cloned()
    }

    /// Records the outcome of an act of `key`; true when the error is new (worth an Event).
    pub fn set_act_error(&self, key: &str, error: Option<String>) -> bool {
        let mut map = self.act_errors.lock().unwrap_or_else(|p| p.into_inner());
        match error {
            None => {
                map.remove(key);
                false
            }
            Some(e) => map.insert(key.to_string(), e.clone()).as_ref() != Some(&e),
        }
    }

    /// The current time, for status timestamps.
    pub fn now(&self) -> Time {
        Time(self.clock.now())
    }
}
