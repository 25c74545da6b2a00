//! Kubernetes object metadata and the Knative label and annotation keys revgate reads or writes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plan::ObjectKey;

/// API group and version of every Knative Serving object.
pub const SERVING_API_VERSION: &str = "serving.knative.dev/v1";
/// Namespace whose ConfigMaps configure revgate (as they configure Knative).
pub const SYSTEM_NAMESPACE: &str = "knative-serving";
/// Namespace of objects whose manifest names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Label on a Revision (and on a Service's Configuration and Route): the owning Service.
pub const SERVICE_LABEL: &str = "serving.knative.dev/service";
/// Label on a Revision: the Configuration that created it.
pub const CONFIGURATION_LABEL: &str = "serving.knative.dev/configuration";
/// Label on a Revision: the Configuration generation it was created for.
pub const CONFIGURATION_GENERATION_LABEL: &str = "serving.knative.dev/configurationGeneration";
/// Label on a Service or Route: `cluster-local` keeps it off the public domain.
pub const VISIBILITY_LABEL: &str = "networking.knative.dev/visibility";
/// Older spelling of [`VISIBILITY_LABEL`], still honoured.
pub const LEGACY_VISIBILITY_LABEL: &str = "serving.knative.dev/visibility";
/// The value of [`VISIBILITY_LABEL`] that makes a route cluster-local.
pub const VISIBILITY_CLUSTER_LOCAL: &str = "cluster-local";
/// Annotation on a revision template: fixed backend addresses, `host:port,host:port`.
pub const ENDPOINTS_ANNOTATION: &str = "revgate.dev/endpoints";
/// Written by `kubectl apply`; not copied to children.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The metadata revgate keeps for top-level objects. Server-managed fields a
/// manifest may carry (`uid`, `resourceVersion`, `managedFields`…) are accepted
/// and dropped, as an API server would.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Bumped by revgate whenever the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// RFC 3339, set when revgate first stores the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
}

impl ObjectMeta {
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(self.namespace.clone(), self.name.clone())
    }

    pub fn generation(&self) -> i64 {
        self.generation.unwrap_or(0)
    }

    /// The controlling owner of the given kind, if any.
    pub fn owner(&self, kind: &str) -> Option<&str> {
        self.owner_references.iter().find(|o| o.kind == kind && o.controller == Some(true)).map(|o| o.name.as_str())
    }
}

/// Points a child at its parent, as Knative's reconcilers do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

impl OwnerReference {
    pub fn controller(kind: &str, name: &str) -> Self {
        Self {
            api_version: SERVING_API_VERSION.to_string(),
            kind: kind.to_string(),
            name: name.to_string(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }
}

/// Metadata of a revision template. The CRD keeps unknown fields here, and so does revgate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMeta {
    /// The name the revision will get; revgate numbers revisions when it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// A Knative condition. `status` is `"True"`, `"False"` or `"Unknown"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The three values of a condition's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl Condition {
    pub fn new(type_: &str, status: ConditionStatus, reason: Option<&str>, message: Option<String>) -> Self {
        Self {
            type_: type_.to_string(),
            status: status.as_str().to_string(),
            reason: reason.map(str::to_string),
            message,
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == "True"
    }

    pub fn status(&self) -> ConditionStatus {
        match self.status.as_str() {
            "True" => ConditionStatus::True,
            "False" => ConditionStatus::False,
            _ => ConditionStatus::Unknown,
        }
    }
}

/// Finds a condition by type.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Formats seconds since the Unix epoch as RFC 3339 UTC (`2024-05-01T12:00:00Z`).
pub fn rfc3339(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let rem = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Proleptic Gregorian date of a day count since 1970-01-01, by eras of 400 years
/// (146 097 days), which repeat exactly.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_700_000_000, "2023-11-14T22:13:20Z"),
            (1_709_251_199, "2024-02-29T23:59:59Z"),
        ] {
            assert_eq!(rfc3339(secs), want, "{secs}");
        }
    }
}
