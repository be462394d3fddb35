//! Presigning: a `SigningKey` turns a validated link request into a URL with
//! our own SigV4 query signer (`sigv4`: local computation, the day's signing
//! key cached; byte-identical to aws-sdk-s3's presigner, which the tests keep
//! as the reference), and browser upload forms (`form`: a SigV4 POST
//! policy signed with the same cached day key). A pure adapter: which key signs, and when, is the key
//! lifecycle's (`crate::keys`). `multipart`: the multipart calls presignd
//! makes itself (Create, Complete, Abort), signed the same way and sent with
//! reqwest. `signed`: what they all return (a `Presigned` request, a
//! `SignError`).

mod form;
mod multipart;
mod presign;
mod signed;
mod sigv4;

pub use form::{SIGNATURE_FIELD, SignedForm};
pub use multipart::{CompletedPart, Store, StoreError, xml_field};
pub use presign::{S3Target, SESSION_KEY_REFUSED, SigningKey, is_session_key_id, signature_of};
pub use signed::{Presigned, SignError};
pub use sigv4::Multipart;
