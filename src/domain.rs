//! Validated domain types. Everything from the outside world is parsed into one of
//! these at the edge; past the edge, a `Bucket` is a valid bucket name.

mod bucket;
mod headers;
mod key_budget;
mod labels;
mod link_spec;
mod link_state;
mod method;
mod name;
mod object_key;
mod part_plan;
mod presigned_url;
mod request_id;
mod states;
mod ttl;
mod upload_form;

pub use bucket::Bucket;
pub use headers::{ContentDisposition, ContentType};
pub use key_budget::{KeyBudget, Spent};
pub use labels::Labels;
pub use link_spec::LinkSpec;
pub use link_state::LinkState;
pub use method::Method;
pub use name::{CallerName, SignerName};
pub use object_key::ObjectKey;
pub use part_plan::PartPlan;
pub use presigned_url::{PresignedUrl, is_access_key_id};
pub use request_id::{MAX_REQUEST_ID_CHARS, RequestId};
pub use states::{KeyState, RevocationState, RotationMode};
pub use ttl::{MAX_TTL, Ttl};
pub use upload_form::{
    FormSpec, KeyCondition, MAX_FORM_BYTES, SizeRange, TypeCondition, parse_type_prefix,
};

/// Why one field of a request was refused. The message starts with the field's
/// name so a human can fix the right thing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}
