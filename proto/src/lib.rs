//! The Portcullis API contract, package `portcullis.v1`.
//!
//! Generated from `proto/portcullis/v1/*.proto`; see those files for the
//! documentation of every message and field.

#![allow(
    clippy::large_enum_variant,
    clippy::doc_lazy_continuation,
    clippy::doc_overindented_list_items
)]

pub mod codec;

pub mod v1 {
    tonic::include_proto!("portcullis.v1");
}

/// The encoded `FileDescriptorSet` of the API, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("portcullis_descriptor");
