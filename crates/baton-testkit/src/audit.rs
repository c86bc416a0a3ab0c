//! The API server's audit log (written by the local control plane, metadata only, no watches):
//! what the operator asked of the API server, by verb and object, counted from the server's own
//! record rather than from what the operator says it did.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use serde::Deserialize;

use crate::harness::kubeconfig_path;

/// One request the API server completed.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub verb: String,
    #[serde(default)]
    pub user_agent: String,
    #[serde(default)]
    pub object_ref: Option<ObjectRef>,
    #[serde(default)]
    pub stage: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ObjectRef {
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub subresource: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
}

impl Request {
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    /// Made by an operator (`baton/<version> (<identity>)`), in `namespace`.
    pub fn by_operator_in(&self, namespace: &str) -> bool {
        self.user_agent.starts_with("baton/")
            && self
                .object_ref
                .as_ref()
                .is_some_and(|o| o.namespace == namespace)
    }

    /// `pods/status`: the resource and subresource, without the name.
    pub fn kind(&self) -> String {
        let o = self.object_ref.clone().unwrap_or_default();
        if o.subresource.is_empty() {
            o.resource
        } else {
            format!("{}/{}", o.resource, o.subresource)
        }
    }

    /// `patch pods/db-0/status`, for messages.
    pub fn describe(&self) -> String {
        let o = self.object_ref.clone().unwrap_or_default();
        let sub = if o.subresource.is_empty() {
            String::new()
        } else {
            format!("/{}", o.subresource)
        };
        format!("{} {}/{}{sub}", self.verb, o.resource, o.name)
    }
}

/// A position in the audit log; [`Mark::since`] reads what was logged after it.
pub struct Mark {
    path: PathBuf,
    offset: u64,
}

/// The audit log the local control plane writes beside its kubeconfig.
pub fn path() -> PathBuf {
    kubeconfig_path()
        .parent()
        .expect("the kubeconfig's directory")
        .join("logs/audit.log")
}

/// The end of the audit log now.
pub fn mark() -> Mark {
    let path = path();
    let offset = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("the API server's audit log {}: {e}", path.display()))
        .len();
    Mark { path, offset }
}

impl Mark {
    /// Every completed request logged since the mark. Panics if the log was rotated meanwhile
    /// (a count over a cut log would be too low).
    pub fn since(&self) -> Vec<Request> {
        let mut file = std::fs::File::open(&self.path).expect("open the audit log");
        let len = file.metadata().expect("audit log metadata").len();
        assert!(
            len >= self.offset,
            "the audit log was rotated since the mark; the count would be short"
        );
        file.seek(SeekFrom::Start(self.offset)).expect("seek");
        let mut text = String::new();
        file.read_to_string(&mut text).expect("read the audit log");
        // The last line may be half written; every complete one parses.
        text.lines()
            .filter_map(|l| serde_json::from_str::<Request>(l).ok())
            .filter(|r| r.stage == "ResponseComplete")
            .collect()
    }

    /// What an operator asked of the API server in `namespace` since the mark.
    pub fn operator_requests(&self, namespace: &str) -> Vec<Request> {
        let mut all = self.since();
        all.retain(|r| r.by_operator_in(namespace));
        all
    }

    /// The operator's writes in `namespace` since the mark, in the order they completed.
    pub fn operator_writes(&self, namespace: &str) -> Vec<Request> {
        let mut all = self.operator_requests(namespace);
        all.retain(Request::is_write);
        all
    }
}

/// The operator's writes in `namespace` since `mark`, counted by `verb resource[/subresource]`,
/// and their total.
pub fn operator_writes(
    mark: &Mark,
    namespace: &str,
) -> (usize, std::collections::BTreeMap<String, usize>) {
    let mut by = std::collections::BTreeMap::new();
    for r in mark.operator_writes(namespace) {
        *by.entry(format!("{} {}", r.verb, r.kind())).or_default() += 1;
    }
    (by.values().sum(), by)
}
