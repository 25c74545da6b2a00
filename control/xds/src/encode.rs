//! Deterministic protobuf encoding of the resources revgate generates, so
//! that a resource's version can be a hash of its encoded bytes.
//!
//! prost encodes a protobuf map (a `HashMap`) in iteration order, which
//! differs from one value to the next: two equal clusters would encode
//! differently and look changed. The maps revgate fills are a cluster's
//! `metadata` (a `Struct` of revision facts) and its
//! `typed_extension_protocol_options`; [`cluster`] writes those with their
//! entries in key order and everything else as prost does. Fields may appear
//! in any order on the wire, and a map is a repeated entry message, so the
//! result decodes to the same message in Envoy and in prost.
//!
//! Every other resource revgate generates has no map with more than one
//! entry and is encoded as prost encodes it.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use prost::Message;
use prost::encoding::{bytes, string};

/// `Cluster.metadata`.
const CLUSTER_METADATA: u32 = 25;
/// `Cluster.typed_extension_protocol_options`.
const CLUSTER_PROTOCOL_OPTIONS: u32 = 36;
/// `Metadata.filter_metadata` and `Metadata.typed_filter_metadata`.
const METADATA_FILTER: u32 = 1;
const METADATA_TYPED_FILTER: u32 = 2;
/// `Struct.fields`.
const STRUCT_FIELDS: u32 = 1;
/// `Value.struct_value`, `Value.list_value` and `ListValue.values`.
const VALUE_STRUCT: u32 = 5;
const VALUE_LIST: u32 = 6;
const LIST_VALUES: u32 = 1;

/// A cluster's bytes, equal for equal clusters.
pub(crate) fn cluster(cluster: &Cluster) -> Vec<u8> {
    let mut rest = cluster.clone();
    let metadata = rest.metadata.take();
    let options = std::mem::take(&mut rest.typed_extension_protocol_options);
    let mut buf = rest.encode_to_vec();
    let sorted: BTreeMap<_, _> = options.iter().collect();
    for (key, any) in sorted {
        map_entry(CLUSTER_PROTOCOL_OPTIONS, key, &any.encode_to_vec(), &mut buf);
    }
    if let Some(metadata) = metadata {
        bytes::encode(CLUSTER_METADATA, &self::metadata(&metadata), &mut buf);
    }
    buf
}

fn metadata(metadata: &Metadata) -> Vec<u8> {
    let mut buf = Vec::new();
    let filter: BTreeMap<_, _> = metadata.filter_metadata.iter().collect();
    for (key, fields) in filter {
        map_entry(METADATA_FILTER, key, &structure(fields), &mut buf);
    }
    let typed: BTreeMap<_, _> = metadata.typed_filter_metadata.iter().collect();
    for (key, any) in typed {
        map_entry(METADATA_TYPED_FILTER, key, &any.encode_to_vec(), &mut buf);
    }
    buf
}

fn structure(s: &Struct) -> Vec<u8> {
    let mut buf = Vec::new();
    let fields: BTreeMap<_, _> = s.fields.iter().collect();
    for (key, value) in fields {
        map_entry(STRUCT_FIELDS, key, &self::value(value), &mut buf);
    }
    buf
}

fn value(v: &Value) -> Vec<u8> {
    match &v.kind {
        Some(value::Kind::StructValue(s)) => {
            let mut buf = Vec::new();
            bytes::encode(VALUE_STRUCT, &structure(s), &mut buf);
            buf
        }
        Some(value::Kind::ListValue(list)) => {
            let mut inner = Vec::new();
            for item in &list.values {
                bytes::encode(LIST_VALUES, &value(item), &mut inner);
            }
            let mut buf = Vec::new();
            bytes::encode(VALUE_LIST, &inner, &mut buf);
            buf
        }
        _ => v.encode_to_vec(),
    }
}

/// One map entry: a message with the key as field 1 and the encoded value
/// as field 2, as field `tag` of the enclosing message.
fn map_entry(tag: u32, key: &String, value: &Vec<u8>, buf: &mut Vec<u8>) {
    let mut entry = Vec::with_capacity(key.len() + value.len() + 8);
    string::encode(1, key, &mut entry);
    bytes::encode(2, value, &mut entry);
    bytes::encode(tag, &entry, buf);
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::google::protobuf::ListValue;

    use super::*;
    use crate::translate::tests::plan;
    use crate::translate::{XdsSettings, translate};

    fn string(s: &str) -> Value {
        Value { kind: Some(value::Kind::StringValue(s.to_owned())) }
    }

    #[test]
    fn equal_clusters_encode_equally_and_decode_to_themselves() {
        let clusters = || translate(&plan(), &Default::default(), &XdsSettings::default()).clusters;
        let first: Vec<Vec<u8>> = clusters().iter().map(cluster).collect();
        for _ in 0..20 {
            for (c, bytes) in clusters().iter().zip(&first) {
                assert_eq!(&cluster(c), bytes, "{}", c.name);
                assert_eq!(&Cluster::decode(bytes.as_slice()).expect("decodes"), c);
            }
        }
    }

    #[test]
    fn nested_structures_are_ordered_too() {
        let build = || {
            let nested = Struct {
                fields: HashMap::from([
                    ("b".to_owned(), string("2")),
                    (
                        "a".to_owned(),
                        Value { kind: Some(value::Kind::ListValue(ListValue { values: vec![string("x")] })) },
                    ),
                ]),
            };
            Cluster {
                name: "c".into(),
                metadata: Some(Metadata {
                    filter_metadata: HashMap::from([
                        ("z".to_owned(), nested.clone()),
                        (
                            "y".to_owned(),
                            Struct {
                                fields: HashMap::from([(
                                    "s".to_owned(),
                                    Value { kind: Some(value::Kind::StructValue(nested)) },
                                )]),
                            },
                        ),
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            }
        };
        let bytes = cluster(&build());
        for _ in 0..20 {
            assert_eq!(cluster(&build()), bytes);
        }
        assert_eq!(Cluster::decode(bytes.as_slice()).expect("decodes"), build());
    }
}
