//! Which revision a request is for, from what Envoy knows about the upstream
//! cluster the route picked.
//!
//! Two naming schemes are understood, plus cluster metadata:
//!
//! | source | form | example |
//! |---|---|---|
//! | revgate's own xDS | `rev\|<namespace>\|<revision>` | `rev\|default\|hello-00001` |
//! | Istio | `outbound\|<port>\|<subset>\|<revision>.<namespace>.svc.<domain>` | `outbound\|80\|\|hello-00001.default.svc.cluster.local` |
//! | cluster metadata | `filter_metadata.revgate.{namespace,revision,container_concurrency}` | set by revgate's xDS on every revision cluster |
//!
//! Metadata, when it names both a namespace and a revision, wins over the
//! name (it is explicit, the name is a convention). Everything read from the
//! host is untrusted bytes: parsing never panics and rejects anything that is
//! not a Kubernetes name.

use std::fmt;

/// Prefix of revgate's revision clusters.
const REVGATE_PREFIX: &str = "rev";
/// Prefix of Istio's outbound clusters.
const ISTIO_OUTBOUND_PREFIX: &str = "outbound";
const SEPARATOR: char = '|';
/// Longest Kubernetes object name (DNS-1123 subdomain).
const MAX_NAME_LEN: usize = 253;

/// Key under `filter_metadata` holding revgate's facts about a cluster.
pub const METADATA_FILTER: &str = "revgate";
/// Metadata key naming the revision's namespace.
pub const METADATA_NAMESPACE: &str = "namespace";
/// Metadata key naming the revision.
pub const METADATA_REVISION: &str = "revision";
/// Metadata key holding the revision's containerConcurrency.
pub const METADATA_CONTAINER_CONCURRENCY: &str = "container_concurrency";

/// A revision, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevisionKey {
    pub namespace: String,
    pub revision: String,
}

impl RevisionKey {
    pub fn new(namespace: impl Into<String>, revision: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), revision: revision.into() }
    }
}

impl fmt::Display for RevisionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.revision)
    }
}

/// What the filter knows about the revision behind a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub key: RevisionKey,
    /// The Envoy cluster the route picked (empty when unknown): a probe
    /// (`release_gate: probe`) goes through exactly this cluster.
    pub cluster: String,
    /// containerConcurrency from the cluster metadata, when present. The
    /// readiness update's value, when non-zero, takes precedence.
    pub metadata_container_concurrency: Option<u32>,
}

/// revgate's facts from `filter_metadata.revgate`, each already parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMetadata {
    pub namespace: Option<String>,
    pub revision: Option<String>,
    pub container_concurrency: Option<u32>,
}

impl ClusterMetadata {
    /// Parses the raw property values Envoy returned for the three keys.
    pub fn from_raw(namespace: Option<&[u8]>, revision: Option<&[u8]>, container_concurrency: Option<&[u8]>) -> Self {
        Self {
            namespace: namespace.and_then(parse_metadata_name),
            revision: revision.and_then(parse_metadata_name),
            container_concurrency: container_concurrency.and_then(parse_metadata_u32),
        }
    }
}

/// The revision a request is for, or `None` when the cluster is not a
/// revision's (such requests pass untouched).
pub fn resolve(cluster_name: Option<&str>, metadata: &ClusterMetadata) -> Option<Target> {
    let from_metadata = match (&metadata.namespace, &metadata.revision) {
        (Some(namespace), Some(revision)) => Some(RevisionKey::new(namespace, revision)),
        _ => None,
    };
    let key = from_metadata.or_else(|| cluster_name.and_then(parse_cluster_name))?;
    Some(Target {
        key,
        cluster: cluster_name.unwrap_or_default().to_owned(),
        metadata_container_concurrency: metadata.container_concurrency,
    })
}

/// The `:authority` of a probe through `cluster` to `key`: the Service host
/// of an Istio cluster name (`<revision>.<namespace>.svc.<domain>`), else
/// `<revision>.<namespace>`.
pub fn probe_authority(cluster: &str, key: &RevisionKey) -> String {
    let mut parts = cluster.split(SEPARATOR);
    match (parts.next(), parts.nth(2)) {
        (Some(ISTIO_OUTBOUND_PREFIX), Some(host)) if parse_service_host(host).as_ref() == Some(key) => host.to_owned(),
        _ => format!("{}.{}", key.revision, key.namespace),
    }
}

/// Parses either cluster naming scheme (see the module docs).
pub fn parse_cluster_name(name: &str) -> Option<RevisionKey> {
    let mut parts = name.split(SEPARATOR);
    match parts.next()? {
        REVGATE_PREFIX => {
            let (namespace, revision) = (parts.next()?, parts.next()?);
            if parts.next().is_some() || !is_k8s_name(namespace) || !is_k8s_name(revision) {
                return None;
            }
            Some(RevisionKey::new(namespace, revision))
        }
        ISTIO_OUTBOUND_PREFIX => {
            let (port, _subset, host) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            parse_service_host(host)
        }
        _ => None,
    }
}

/// `<revision>.<namespace>.svc.<cluster domain>` → the revision's key.
fn parse_service_host(host: &str) -> Option<RevisionKey> {
    let mut labels = host.split('.');
    let (revision, namespace, svc) = (labels.next()?, labels.next()?, labels.next()?);
    let domain_labels = labels.filter(|label| !label.is_empty()).count();
    if svc != "svc" || domain_labels == 0 || !is_dns_label(revision) || !is_dns_label(namespace) {
        return None;
    }
    Some(RevisionKey::new(namespace, revision))
}

/// A metadata string value: UTF-8 holding a Kubernetes name.
pub fn parse_metadata_name(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    is_k8s_name(text).then(|| text.to_owned())
}

/// A metadata number. Envoy returns a `Struct` number value as the 8 bytes
/// of a little-endian `f64`; a decimal string is accepted too, so the
/// value may also be written as a string.
pub fn parse_metadata_u32(raw: &[u8]) -> Option<u32> {
    if let Ok(text) = std::str::from_utf8(raw) {
        let text = text.trim();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return float_to_u32(text.parse::<f64>().ok()?);
        }
    }
    let bytes: [u8; 8] = raw.try_into().ok()?;
    float_to_u32(f64::from_le_bytes(bytes))
}

fn float_to_u32(value: f64) -> Option<u32> {
    let in_range = value.is_finite() && value >= 0.0 && value <= f64::from(u32::MAX);
    // Checked above: finite, non-negative, within u32, so the cast is exact
    // for the integral values a containerConcurrency holds.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    (in_range && value.fract() == 0.0).then_some(value as u32)
}

/// A Kubernetes object name (DNS-1123 subdomain): lowercase alphanumerics,
/// `-` and `.`, starting and ending alphanumeric, at most 253 bytes.
fn is_k8s_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    bytes.len() <= MAX_NAME_LEN
        && edge_ok(bytes.first())
        && edge_ok(bytes.last())
        && bytes.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// A DNS-1123 label: a name without dots, at most 63 bytes.
fn is_dns_label(label: &str) -> bool {
    label.len() <= 63 && !label.contains('.') && is_k8s_name(label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(ns: &str, rev: &str) -> Option<RevisionKey> {
        Some(RevisionKey::new(ns, rev))
    }

    #[test]
    fn cluster_names() {
        let cases = [
            ("rev|default|hello-00001", key("default", "hello-00001")),
            ("rev|team.a|hello-00001", key("team.a", "hello-00001")),
            ("outbound|80||hello-00001.default.svc.cluster.local", key("default", "hello-00001")),
            ("outbound|9090|v1|hello-00002.prod.svc.corp.example", key("prod", "hello-00002")),
            // Not revisions.
            ("revgate-control", None),
            ("rev|default", None),
            ("rev|default|hello|x", None),
            ("rev||hello", None),
            ("rev|Default|hello", None),
            ("rev|default|hello-", None),
            ("inbound|80||hello.default.svc.cluster.local", None),
            ("outbound|http||hello.default.svc.cluster.local", None),
            ("outbound|80||hello.default.cluster.local", None),
            ("outbound|80||hello.default.svc", None),
            ("outbound|80||hello.default.svc.", None),
            ("outbound|80||10.0.0.1", None),
            ("outbound|80||hello.default.svc.cluster.local|x", None),
            ("", None),
        ];
        for (name, want) in cases {
            assert_eq!(parse_cluster_name(name), want, "{name}");
        }
    }

    #[test]
    fn metadata_values() {
        assert_eq!(parse_metadata_u32(&10.0f64.to_le_bytes()), Some(10));
        assert_eq!(parse_metadata_u32(&0.0f64.to_le_bytes()), Some(0));
        assert_eq!(parse_metadata_u32(b"100"), Some(100));
        assert_eq!(parse_metadata_u32(b"100.0"), Some(100));
        assert_eq!(parse_metadata_u32(&(-1.0f64).to_le_bytes()), None);
        assert_eq!(parse_metadata_u32(&1.5f64.to_le_bytes()), None);
        assert_eq!(parse_metadata_u32(&f64::NAN.to_le_bytes()), None);
        assert_eq!(parse_metadata_u32(&1e12f64.to_le_bytes()), None);
        assert_eq!(parse_metadata_u32(b"ten"), None);
        assert_eq!(parse_metadata_u32(b""), None);
        assert_eq!(parse_metadata_name(b"default"), Some("default".into()));
        assert_eq!(parse_metadata_name(b"De fault"), None);
        assert_eq!(parse_metadata_name(&[0xff, 0xfe]), None);
    }

    #[test]
    fn metadata_wins_over_the_name_and_carries_concurrency() {
        let meta = ClusterMetadata::from_raw(Some(b"prod"), Some(b"api-00003"), Some(&4.0f64.to_le_bytes()));
        let target = resolve(Some("rev|default|hello-00001"), &meta).unwrap();
        assert_eq!(target.key, RevisionKey::new("prod", "api-00003"));
        assert_eq!(target.cluster, "rev|default|hello-00001", "the probe goes through the route's cluster");
        assert_eq!(target.metadata_container_concurrency, Some(4));

        let partial = ClusterMetadata::from_raw(Some(b"prod"), None, Some(b"2"));
        let target = resolve(Some("rev|default|hello-00001"), &partial).unwrap();
        assert_eq!(target.key, RevisionKey::new("default", "hello-00001"));
        assert_eq!(target.metadata_container_concurrency, Some(2));

        assert_eq!(resolve(Some("static-backend"), &ClusterMetadata::default()), None);
        assert_eq!(resolve(None, &ClusterMetadata::default()), None);
    }

    #[test]
    fn istio_cluster_names_resolve_and_probe_their_service_host() {
        let cluster = "outbound|80||hello-00001.default.svc.cluster.local";
        let target = resolve(Some(cluster), &ClusterMetadata::default()).unwrap();
        assert_eq!(
            (target.key.clone(), target.cluster.as_str()),
            (RevisionKey::new("default", "hello-00001"), cluster)
        );
        assert_eq!(probe_authority(cluster, &target.key), "hello-00001.default.svc.cluster.local");
        assert_eq!(probe_authority("rev|default|hello-00001", &target.key), "hello-00001.default");
        // Metadata naming another revision than the host: the host is not used.
        assert_eq!(probe_authority(cluster, &RevisionKey::new("prod", "api-00003")), "api-00003.prod");
        assert_eq!(probe_authority("outbound|80|", &target.key), "hello-00001.default");
    }

    proptest! {
        #[test]
        fn cluster_names_from_arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let text = String::from_utf8_lossy(&raw);
            if let Some(key) = parse_cluster_name(&text) {
                prop_assert!(is_k8s_name(&key.namespace) && is_k8s_name(&key.revision));
            }
        }

        #[test]
        fn structured_cluster_names_never_panic(
            parts in proptest::collection::vec("[a-z0-9|.\\-]{0,20}", 0..6),
            prefix in prop_oneof![Just("rev"), Just("outbound"), Just("x")],
        ) {
            let name = format!("{prefix}|{}", parts.join("|"));
            let _ = parse_cluster_name(&name);
        }

        #[test]
        fn metadata_from_arbitrary_bytes_never_panics(
            a in proptest::collection::vec(any::<u8>(), 0..300),
            b in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let meta = ClusterMetadata::from_raw(Some(&a), Some(&a), Some(&b));
            let _ = resolve(Some(&String::from_utf8_lossy(&a)), &meta);
            let _ = parse_metadata_u32(&a);
        }
    }
}
