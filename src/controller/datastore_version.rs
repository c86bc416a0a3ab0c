//! The DatastoreVersion controller: observe the whole catalog → check this entry against it
//! (pure, in `catalog`) → write the `Valid` condition → emit an Event when the entry becomes
//! unusable. An entry's validity depends on its siblings, so a change to any entry re-checks
//! every entry of the same datastore.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::info;

use super::{Context, requeue};
use crate::catalog;
use crate::crd::{DatastoreVersion, DatastoreVersionSpec, DatastoreVersionStatus};
use crate::error::{Error, Result};
use crate::status::{self, Desired};

/// The condition type this controller owns.
pub const VALID: &str = "Valid";

/// Builds the controller; every entry of a datastore is re-checked when any entry of it changes.
pub fn controller(client: Client) -> Controller<DatastoreVersion> {
    let api = Api::<DatastoreVersion>::all(client);
    let controller = Controller::new(api.clone(), Default::default());
    let store = controller.store();
    controller.watches(api, Default::default(), move |changed: DatastoreVersion| {
        store
            .state()
            .into_iter()
            .filter(|dv| dv.spec.datastore == changed.spec.datastore)
            .map(|dv| ObjectRef::from_obj(dv.as_ref()))
            .collect::<Vec<_>>()
    })
}

pub async fn reconcile(dv: Arc<DatastoreVersion>, ctx: Arc<Context>) -> Result<Action> {
    let name = dv.name_any();
    let api = Api::<DatastoreVersion>::all(ctx.client.clone());
    // Read the catalog fresh: the decision must not rest on a cache that lags a sibling's change.
    let catalog: BTreeMap<String, DatastoreVersionSpec> = api
        .list(&Default::default())
        .await
        .map_err(Error::kube("listing the DatastoreVersion catalog"))?
        .into_iter()
        .map(|d| (d.name_any(), d.spec))
        .collect();

    let verdict = catalog::validate_entry(&name, &dv.spec, &catalog);
    let desired = match &verdict {
        Ok(()) => Desired {
            type_: VALID,
            status: true,
            reason: "Valid",
            message: format!("{} {} can be used", dv.spec.datastore, dv.spec.version),
        },
        Err(invalid) => Desired {
            type_: VALID,
            status: false,
            reason: invalid.reason,
            message: invalid.message.clone(),
        },
    };

    let current = dv.status.clone().unwrap_or_default();
    let was =
        status::find(&current.conditions, VALID).map(|c| (c.status.clone(), c.reason.clone()));
    let next = next_status(&dv, &current, &desired, ctx.now());
    if next == current {
        return Ok(requeue::idle());
    }
    // Unguarded: the verdict is recomputed from the whole catalog on every pass, so the last
    // writer is right.
    super::apply_status(&api, &dv, &next, false, "writing DatastoreVersion status").await?;
    let flipped = was.as_ref().map(|(s, r)| (s.as_str(), r.as_str()))
        != Some((
            if desired.status { "True" } else { "False" },
            desired.reason,
        ));
    if flipped {
        info!(
            valid = desired.status,
            reason = desired.reason,
            "catalog entry checked"
        );
        if !desired.status {
            let event = Event {
                type_: EventType::Warning,
                reason: desired.reason.into(),
                note: Some(desired.message.clone()),
                action: "ValidateCatalogEntry".into(),
                secondary: None,
            };
            ctx.recorder
                .publish(&event, &dv.object_ref(&()))
                .await
                .map_err(Error::kube("publishing a catalog Event"))?;
        }
    }
    Ok(requeue::idle())
}

/// The entry's status for the verdict `desired`: `Valid`, and `Ready` saying the same with
/// kstatus's pair beside it, for GitOps tools.
fn next_status(
    dv: &DatastoreVersion,
    current: &DatastoreVersionStatus,
    desired: &Desired,
    now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> DatastoreVersionStatus {
    let generation = dv.metadata.generation;
    let conditions = status::merge(
        &current.conditions,
        desired.clone(),
        generation,
        now.clone(),
    );
    let ready = Desired {
        type_: "Ready",
        ..desired.clone()
    };
    let conditions = status::merge(&conditions, ready, generation, now.clone());
    let health = crate::health::catalog_entry(desired.status, desired.reason, &desired.message);
    DatastoreVersionStatus {
        observed_generation: generation,
        conditions: crate::health::apply(&conditions, &health, generation, now),
    }
}
