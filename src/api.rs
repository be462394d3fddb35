//! gRPC handlers. They only translate: proto → domain types (validation errors
//! become INVALID_ARGUMENT naming the field), call a domain module, and map the
//! result or error back. No SQL, signing or policy here.

mod audit_events;
mod error;
mod key_service;
mod link_service;
#[cfg(test)]
mod prop_tests;
mod request;
mod response;

pub use error::ApiError;
pub use key_service::KeyApi;
pub use link_service::LinkApi;
