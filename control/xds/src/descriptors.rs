//! envoy-types' protobuf descriptors, decoded once.
//!
//! `build.rs` copies the descriptor set envoy-types ships into `OUT_DIR`.
//! Rendering proto3 JSON (and resolving the `Any`s inside) needs it.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

static ENCODED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// Why a message could not be looked at reflectively.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DescriptorError {
    #[error("decoding the envoy-types descriptor set embedded at build time: {0}")]
    Pool(String),
    #[error("message type {0} is not in the envoy-types descriptor set; is envoy-types older than this code?")]
    UnknownType(String),
    #[error("decoding a {type_name} against its descriptor: {message}")]
    Decode { type_name: String, message: String },
}

/// The descriptor pool of every Envoy message.
pub fn pool() -> Result<&'static DescriptorPool, DescriptorError> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(ENCODED).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| DescriptorError::Pool(e.clone()))
}

/// The descriptor of a message by full name (`envoy.config.cluster.v3.Cluster`).
pub fn message_descriptor(full_name: &str) -> Result<MessageDescriptor, DescriptorError> {
    pool()?.get_message_by_name(full_name).ok_or_else(|| DescriptorError::UnknownType(full_name.to_owned()))
}

/// Decodes `bytes` as the message `full_name` into a reflective message.
pub fn decode_dynamic(full_name: &str, bytes: &[u8]) -> Result<DynamicMessage, DescriptorError> {
    let descriptor = message_descriptor(full_name)?;
    DynamicMessage::decode(descriptor, bytes)
        .map_err(|e| DescriptorError::Decode { type_name: full_name.to_owned(), message: e.to_string() })
}
