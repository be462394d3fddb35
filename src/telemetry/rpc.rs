//! One log line and two metrics per RPC, from a tower layer in front of every
//! service: the method, the caller, the gRPC code, the latency, and the link id
//! where there is one. Requests refused before their handler (authentication)
//! are counted too: their code is in the response headers (trailers-only).
//!
//! The caller and the link id are known deep inside (the authenticator, the
//! handler): the layer puts an `RpcNote` in the request's extensions for them to
//! fill. Never a URL, a signature or a token: a note holds a caller name and a
//! link id only.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::Code;
use tonic::codegen::http;

pub const GRPC_REQUESTS: &str = "presignd_grpc_requests_total";
pub const GRPC_SECONDS: &str = "presignd_grpc_request_duration_seconds";
/// The method label of a path that names no RPC of ours (bounded labels).
const UNKNOWN: &str = "unknown";

/// What the request's handlers learn about it, for its log line.
#[derive(Clone, Default, Debug)]
pub struct RpcNote(Arc<Mutex<Note>>);

#[derive(Default, Debug)]
struct Note {
    caller: Option<String>,
    link_id: Option<String>,
}

impl RpcNote {
    pub fn caller(&self, name: &str) {
        self.0.lock().expect("rpc note").caller = Some(name.to_owned());
    }

    pub fn link(&self, id: impl std::fmt::Display) {
        self.0.lock().expect("rpc note").link_id = Some(id.to_string());
    }
}

/// Notes `f` on the request's note, if the RPC layer gave it one.
pub fn note<T>(req: &tonic::Request<T>, f: impl FnOnce(&RpcNote)) {
    if let Some(n) = req.extensions().get::<RpcNote>() {
        f(n);
    }
}

/// The layer; `methods` are the RPCs that get a label of their own
/// (`package.Service/Method`), every other path is `unknown`.
#[derive(Clone)]
pub struct RpcLayer {
    methods: Arc<Methods>,
}

/// Each method's label and metric handles, made once: the metrics macros
/// build a key (its labels copied into Strings) and look it up in the
/// recorder at every call, about 3% of the server's CPU under IssueLink
/// with `metrics::record_issued`'s (perf, docs/BENCHMARKS.md).
struct Methods {
    known: HashMap<String, Arc<MethodMetrics>>,
    unknown: Arc<MethodMetrics>,
}

struct MethodMetrics {
    name: Arc<str>,
    seconds: OnceLock<metrics::Histogram>,
    /// By gRPC code (0..=16), made at the first call ending with it: a
    /// method's series exist only for the codes it answered.
    requests: [OnceLock<metrics::Counter>; 17],
}

impl MethodMetrics {
    fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: Arc::from(name),
            seconds: OnceLock::new(),
            requests: std::array::from_fn(|_| OnceLock::new()),
        })
    }

    fn record(&self, code: Code, elapsed: std::time::Duration) {
        let name = code_name(code);
        self.requests[(code as usize).min(16)]
            .get_or_init(|| {
                metrics::counter!(GRPC_REQUESTS, "method" => self.name.to_string(), "code" => name)
            })
            .increment(1);
        self.seconds
            .get_or_init(|| metrics::histogram!(GRPC_SECONDS, "method" => self.name.to_string()))
            .record(elapsed.as_secs_f64());
    }
}

impl RpcLayer {
    /// The process's metrics recorder must be installed first
    /// (`crate::metrics::handle`, which the app calls before serving): a
    /// handle made before it records nowhere, and these are kept.
    pub fn new(methods: impl IntoIterator<Item = String>) -> Self {
        let known = methods
            .into_iter()
            .map(|m| {
                let metrics = MethodMetrics::new(&m);
                (m, metrics)
            })
            .collect();
        Self {
            methods: Arc::new(Methods {
                known,
                unknown: MethodMetrics::new(UNKNOWN),
            }),
        }
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            methods: self.methods.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    methods: Arc<Methods>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().trim_start_matches('/');
        let method = self
            .methods
            .known
            .get(path)
            .unwrap_or(&self.methods.unknown)
            .clone();
        let note = RpcNote::default();
        req.extensions_mut().insert(note.clone());
        let deadline = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout)
            // Ours ends a little before tonic's own timer (armed a moment
            // earlier, outside this layer), which would answer CANCELLED and
            // leave the call unlogged.
            .map(|d| d.saturating_sub(DEADLINE_MARGIN));
        let start = Instant::now();
        let response = self.inner.call(req);
        Box::pin(async move {
            let result = match deadline {
                None => response.await,
                Some(d) => match tokio::time::timeout(d, response).await {
                    Ok(r) => r,
                    Err(_) => Ok(tonic::Status::deadline_exceeded(
                        "the client's deadline (grpc-timeout) passed before the call finished; \
                         nothing it had not committed was kept",
                    )
                    .into_http()),
                },
            };
            let code = match &result {
                Ok(r) => code_of(r.headers()),
                Err(_) => Code::Unknown,
            };
            finished(&method, code, start.elapsed(), &note);
            result
        })
    }
}

/// A response's gRPC code: in its headers when it is trailers-only (errors,
/// refusals), otherwise OK (a unary response's trailers say OK unless the
/// body fails afterwards, which the log would not see).
fn code_of(headers: &http::HeaderMap) -> Code {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from)
}

fn finished(method: &MethodMetrics, code: Code, elapsed: std::time::Duration, note: &RpcNote) {
    let name = code_name(code);
    method.record(code, elapsed);
    let note = note.0.lock().expect("rpc note");
    tracing::info!(
        target: "presignd::rpc",
        rpc = &*method.name,
        caller = note.caller.as_deref(),
        code = name,
        latency_ms = (elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        link_id = note.link_id.as_deref(),
        "rpc"
    );
}

/// How much earlier than the client's deadline the call is ended here.
const DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_millis(5);

/// A `grpc-timeout` header value (`TimeoutValue TimeoutUnit`: at most 8 digits
/// and one of H M S m u n), per the gRPC over HTTP/2 protocol.
fn grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The canonical name of a code (`INVALID_ARGUMENT`), as gRPC documents it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailers_only_response_carries_its_code_and_others_are_ok() {
        let mut h = http::HeaderMap::new();
        assert_eq!(code_of(&h), Code::Ok);
        h.insert("grpc-status", "16".parse().unwrap());
        assert_eq!(code_of(&h), Code::Unauthenticated);
        assert_eq!(code_name(code_of(&h)), "UNAUTHENTICATED");
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit_and_garbage_is_none() {
        use std::time::Duration;
        assert_eq!(grpc_timeout("300m"), Some(Duration::from_millis(300)));
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(grpc_timeout("m"), None);
        assert_eq!(grpc_timeout("123456789S"), None, "at most 8 digits");
        assert_eq!(grpc_timeout("10x"), None);
    }

    #[test]
    fn the_note_keeps_the_caller_and_the_link() {
        let n = RpcNote::default();
        n.caller("billing");
        n.link("0190-abc");
        let inner = n.0.lock().unwrap();
        assert_eq!(inner.caller.as_deref(), Some("billing"));
        assert_eq!(inner.link_id.as_deref(), Some("0190-abc"));
    }
}
