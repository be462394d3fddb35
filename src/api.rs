//! gRPC handlers. They only translate: proto → domain types (validation errors
//! become INVALID_ARGUMENT naming the field), call a domain module, and map the
//! result or error back. No SQL, signing or policy here.

mod convert;
mod error;
mod link_service;

pub use error::ApiError;
pub use link_service::LinkApi;
