//! Presigning: a `SigningKey` turns a validated link request into a URL, with
//! aws-sdk-s3's own presigner (local computation, no network). The `Keyring`
//! holds each signer's active key, ready to sign.

mod keyring;
mod presign;
mod verify;

pub use keyring::Keyring;
pub use presign::{LinkSpec, Presigned, S3Target, SignError, SigningKey, signature_of};
pub use verify::{NotUsable, verify_usable};
