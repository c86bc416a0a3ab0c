//! The operator's errors: variants named after what failed, with a fixed `category()` used as
//! the metric label (never the message, which would explode label cardinality).

/// What went wrong in a reconcile or at start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} failed")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },

    #[error("{kind} has no {field}")]
    MissingField {
        kind: &'static str,
        field: &'static str,
    },

    #[error(
        "Baton's CustomResourceDefinitions are not served by the API server: missing {missing} in baton.dev/v1alpha1; install them with `baton crds | kubectl apply --server-side -f -` or the Helm chart"
    )]
    CrdsMissing { missing: String },

    #[error("leader election failed")]
    LeaderElection(#[source] kube_lease_manager::LeaseManagerError),

    #[error("lost the leader lease; exiting so that only one replica acts")]
    LeadershipLost,
}

impl Error {
    /// A fixed PascalCase name for metrics labels and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "KubeApi",
            Error::MissingField { .. } => "MissingField",
            Error::CrdsMissing { .. } => "CrdsMissing",
            Error::LeaderElection(_) => "LeaderElection",
            Error::LeadershipLost => "LeadershipLost",
        }
    }

    /// Wraps a kube error with the action that failed.
    pub fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { action, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
