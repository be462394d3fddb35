//! The gRPC health service, with the reason when it is not SERVING.
//!
//! `grpc.health.v1.Health` only says NOT_SERVING; an operator whose server never
//! becomes ready needs to know why (the registry is down, the master key does not
//! open the stored secrets, the backend refuses...). The readiness task records
//! its last error in `Readiness`, and Check answers carry it in the
//! `presignd-not-ready` response metadata while the server is not serving
//! (`presignctl wait-ready` prints it). The text is an error message already
//! logged: ids and causes, never a secret, a URL or a signature.

use crate::keys::KeyManager;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

/// The response metadata key holding why the server is not ready.
pub const NOT_READY_METADATA: &str = "presignd-not-ready";
/// Metadata values are short, printable ASCII.
const MAX_REASON_LEN: usize = 1000;

/// The response metadata key saying what is degraded while SERVING: a
/// revocation that cannot finish harms only its signer, and is named here.
pub const DEGRADED_METADATA: &str = "presignd-degraded";

/// Why the server is not ready, as last observed (None once ready), and what
/// is degraded while it serves: revocations that cannot finish, and the
/// (signer, bucket) pairs IssueLink refuses (the preflight's, read when asked).
#[derive(Clone, Default)]
pub struct Readiness {
    reason: Arc<Mutex<Option<String>>>,
    degraded: Arc<Mutex<Option<String>>>,
    keys: Option<KeyManager>,
}

impl Readiness {
    /// Not ready, and why; `presignd_ready` follows.
    pub fn not_ready(&self, reason: impl Into<String>) {
        *self.reason.lock().expect("readiness lock") = Some(reason.into());
        crate::metrics::set_ready(false);
    }

    /// Also names the buckets the key manager's preflight refuses.
    pub fn watching(mut self, keys: KeyManager) -> Self {
        self.keys = Some(keys);
        self
    }

    pub fn ready(&self) {
        *self.reason.lock().expect("readiness lock") = None;
        crate::metrics::set_ready(true);
    }

    pub fn reason(&self) -> Option<String> {
        self.reason.lock().expect("readiness lock").clone()
    }

    /// Serving, but not for everything (None: nothing degraded).
    pub fn set_degraded(&self, what: Option<String>) {
        *self.degraded.lock().expect("readiness lock") = what;
    }

    pub fn degraded(&self) -> Option<String> {
        let stuck = self.degraded.lock().expect("readiness lock").clone();
        let buckets = self.keys.as_ref().and_then(|k| k.failing_buckets());
        match (stuck, buckets) {
            (Some(s), Some(b)) => Some(format!("{s}; {b}")),
            (s, b) => s.or(b),
        }
    }
}

/// The standard health service, plus the reason when not serving.
pub struct ExplainedHealth {
    inner: HealthService,
    readiness: Readiness,
}

/// The reporter the server sets statuses with, and the service to serve.
pub fn service(readiness: Readiness) -> (HealthReporter, HealthServer<ExplainedHealth>) {
    let reporter = HealthReporter::new();
    let inner = HealthService::from_health_reporter(reporter.clone());
    (
        reporter,
        HealthServer::new(ExplainedHealth { inner, readiness }),
    )
}

#[tonic::async_trait]
impl Health for ExplainedHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let mut response = self.inner.check(request).await?;
        let (key, text) = if response.get_ref().status() == ServingStatus::Serving {
            (DEGRADED_METADATA, self.readiness.degraded())
        } else {
            (NOT_READY_METADATA, self.readiness.reason())
        };
        if let Some(text) = text
            && let Ok(value) = printable(&text).parse()
        {
            response.metadata_mut().insert(key, value);
        }
        Ok(response)
    }

    type WatchStream = <HealthService as Health>::WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.inner.watch(request).await
    }
}

/// One line of printable ASCII, capped: what a metadata value can hold.
fn printable(reason: &str) -> String {
    let mut out: String = reason
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(MAX_REASON_LEN)
        .collect();
    if reason.chars().count() > MAX_REASON_LEN {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_becomes_one_capped_line_of_ascii() {
        assert_eq!(printable("db: down\n(é)"), "db: down?(?)");
        let long = "x".repeat(MAX_REASON_LEN + 10);
        assert_eq!(printable(&long).len(), MAX_REASON_LEN + 3);
    }

    #[test]
    fn readiness_forgets_the_reason_once_ready() {
        let r = Readiness::default();
        r.not_ready("registry unreachable");
        assert_eq!(r.reason().as_deref(), Some("registry unreachable"));
        r.ready();
        assert_eq!(r.reason(), None);
    }
}
