//! Generated gRPC types for `presignd.v1`, and the descriptor set reflection serves.
#![allow(clippy::all, clippy::pedantic)]

tonic::include_proto!("presignd.v1");

pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("presignd_descriptor");
