//! The reconciler of the kinds whose behaviour later work fills in (DatabaseInstance, Cluster,
//! UpgradeRequest): it observes and changes nothing, so an early operator never half-acts.

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use tracing::debug;

use super::Context;
use crate::error::Error;

pub async fn reconcile<K: kube::Resource>(
    obj: Arc<K>,
    _ctx: Arc<Context>,
) -> Result<Action, Error> {
    debug!(generation = ?obj.meta().generation, name = %obj.name_any(), "observed");
    Ok(Action::await_change())
}
