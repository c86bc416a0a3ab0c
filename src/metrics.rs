//! Prometheus metrics with bounded labels: the controller's kind and the error category, never
//! object names or error text.

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub controller: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub controller: &'static str,
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EngineLabels {
    /// `redis`, `postgresql`, …
    pub datastore: &'static str,
    /// `probe`, `fence`, `unfence`, `promote`, `repoint`, `publish`, …
    pub operation: &'static str,
    /// A fixed error class (`Unreachable`, `Timeout`, `Refused`, `KubeApi`, …).
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MilestoneLabels {
    /// A fixed event reason (UpgradeStarted, SwitchoverCompleted, UpgradeFailed, …).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatastoreLabels {
    /// `redis`, `postgresql`, `mariadb`
    pub datastore: &'static str,
}

/// Every metric the operator exports.
pub struct Metrics {
    pub registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    durations: Family<ResultLabels, Histogram>,
    in_flight: Family<ControllerLabels, Gauge<i64, AtomicI64>>,
    watched: Family<ControllerLabels, Gauge<i64, AtomicI64>>,
    pub leader: Gauge<i64, AtomicI64>,
    milestones: Family<MilestoneLabels, Counter>,
    engine_errors: Family<EngineLabels, Counter>,
    switchovers: Family<DatastoreLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("baton");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let durations = Family::<ResultLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        let in_flight = Family::<ControllerLabels, Gauge<i64, AtomicI64>>::default();
        let watched = Family::<ControllerLabels, Gauge<i64, AtomicI64>>::default();
        let leader = Gauge::<i64, AtomicI64>::default();
        let milestones = Family::<MilestoneLabels, Counter>::default();
        let engine_errors = Family::<EngineLabels, Counter>::default();
        // 10 ms to about 41 s: a Redis handover to a slow PostgreSQL one.
        let switchovers = Family::<DatastoreLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 13))
        });
        registry.register(
            "switchover_window_seconds",
            "How long each switchover refused writes (fence to the new primary writable), by datastore",
            switchovers.clone(),
        );
        registry.register(
            "engine_errors",
            "Failed probes of members and failed acts on them, by datastore, operation and error class",
            engine_errors.clone(),
        );
        registry.register(
            "upgrade_milestones",
            "Upgrade milestones reached (started, steps, switchovers, completed, failed, reverted)",
            milestones.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles run, by controller",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by controller and error category",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles took, by controller and result (ok, error)",
            durations.clone(),
        );
        registry.register(
            "reconciles_in_flight",
            "Reconciles running now, by controller; at --concurrency, objects wait in the queue",
            in_flight.clone(),
        );
        registry.register(
            "watched_objects",
            "Objects of its kind each controller holds in its watch cache",
            watched.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease and runs the controllers",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            failures,
            durations,
            in_flight,
            watched,
            leader,
            milestones,
            engine_errors,
            switchovers,
        }
    }
}

impl Metrics {
    /// Records a reconcile starting, with how many objects its controller watches.
    pub fn reconcile_started(&self, controller: &'static str, watched: usize) {
        let labels = ControllerLabels { controller };
        self.in_flight.get_or_create(&labels).inc();
        self.watched
            .get_or_create(&labels)
            .set(i64::try_from(watched).unwrap_or(i64::MAX));
    }

    /// Records one finished reconcile.
    pub fn reconciled(&self, controller: &'static str, took: Duration, ok: bool) {
        let labels = ControllerLabels { controller };
        self.in_flight.get_or_create(&labels).dec();
        self.reconciles.get_or_create(&labels).inc();
        let result = if ok { "ok" } else { "error" };
        self.durations
            .get_or_create(&ResultLabels { controller, result })
            .observe(took.as_secs_f64());
    }

    /// Records one failed reconcile.
    pub fn failed(&self, controller: &'static str, category: &'static str) {
        self.failures
            .get_or_create(&FailureLabels {
                controller,
                category,
            })
            .inc();
    }

    /// Records an upgrade milestone (`reason` is one of a fixed set of event reasons).
    pub fn milestone(&self, reason: &'static str) {
        self.milestones
            .get_or_create(&MilestoneLabels { reason })
            .inc();
    }

    /// Records a failed probe or act.
    pub fn engine_error(
        &self,
        datastore: &'static str,
        operation: &'static str,
        category: &'static str,
    ) {
        self.engine_errors
            .get_or_create(&EngineLabels {
                datastore,
                operation,
                category,
            })
            .inc();
    }

    /// Records the write-unavailable window of one switchover.
    pub fn switchover(&self, datastore: &'static str, window: Duration) {
        self.switchovers
            .get_or_create(&DatastoreLabels { datastore })
            .observe(window.as_secs_f64());
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
