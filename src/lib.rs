//! presignd: issues S3 presigned URLs ("links"), records every one before it leaves
//! the service, and revokes them in bulk by rotating the key that signed them.
//! See docs/ARCHITECTURE.md for the map of modules.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod backend;
pub mod config;
pub mod dashboard;
pub mod domain;
pub mod health;
pub mod issuance;
pub mod keys;
pub mod lifecycle;
pub mod metrics;
pub mod paging;
pub mod policy;
pub mod proto;
pub mod ratelimit;
pub mod registry;
pub mod reseal;
pub mod revocation;
pub mod seal;
pub mod secret;
pub mod signing;
pub mod telemetry;
pub mod tls;
