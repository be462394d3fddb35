//! Presigning: a `SigningKey` turns a validated link request into a URL, with
//! aws-sdk-s3's own presigner (local computation, no network). A pure adapter:
//! which key signs, and when, is the key lifecycle's (`crate::keys`).

mod presign;

pub use presign::{Presigned, S3Target, SignError, SigningKey, signature_of};
