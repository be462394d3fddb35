//! A validated request for one link: what the policy judges and the signer signs.

use super::{Bucket, ContentDisposition, ContentType, Method, ObjectKey, Ttl};

/// Everything a link binds.
#[derive(Debug, Clone)]
pub struct LinkSpec {
    pub method: Method,
    pub bucket: Bucket,
    pub object_key: ObjectKey,
    pub ttl: Ttl,
    pub content_type: Option<ContentType>,
    pub content_disposition: Option<ContentDisposition>,
}
