//! Prometheus metrics, served as text on their own HTTP listener (`/metrics`).
//!
//! The `metrics` facade has one global recorder per process, installed once
//! (`handle()`); every `App` in the process serves that same recorder (tests run
//! many servers in one process, so each metric test uses a signer of its own and
//! asserts exact values on its labels).
//! Labels take only bounded values: method, signer, key id, mode, outcome,
//! operation. Never an object key, a URL or a caller name.

use crate::domain::KeyState;
use crate::registry::keys::KeySummaryRow;
use crate::telemetry::rpc::{GRPC_REQUESTS, GRPC_SECONDS};
use metrics::{
    Counter, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex, OnceLock, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;

mod process;

pub const LINKS_ISSUED: &str = "presignd_links_issued_total";
pub const ISSUE_LINK_SECONDS: &str = "presignd_issue_link_duration_seconds";
pub const LINK_COMMIT_SECONDS: &str = "presignd_link_commit_duration_seconds";
pub const LINK_COMMIT_LINKS: &str = "presignd_link_commit_links";
pub const OUTSTANDING_LINKS: &str = "presignd_outstanding_links";
pub const REVOCATIONS: &str = "presignd_revocations_total";
pub const REGISTRY_ERRORS: &str = "presignd_registry_errors_total";
pub const DENIALS: &str = "presignd_denials_total";
pub const BUILD_INFO: &str = "presignd_build_info";
pub const READY: &str = "presignd_ready";
pub const REVOCATIONS_RUNNING: &str = "presignd_revocations_running";
pub const OLDEST_REVOCATION_AGE: &str = "presignd_revocation_oldest_running_age_seconds";
pub const SIGNERS_WITHOUT_ACTIVE_KEY: &str = "presignd_signers_without_active_key";
pub const KEY_BUDGET_LINKS: &str = "presignd_key_budget_links_ratio";
pub const KEY_BUDGET_AGE: &str = "presignd_key_budget_age_ratio";
pub const REVOCATION_WATCHERS: &str = "presignd_revocation_watchers";

/// Why a request was refused, the `cause` label of `presignd_denials_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    /// No credentials, unknown token, refused certificate (UNAUTHENTICATED).
    Authentication,
    /// Outside the caller's policy, or a non-admin on KeyService (PERMISSION_DENIED).
    Policy,
    /// Over the caller's rate (RESOURCE_EXHAUSTED).
    RateLimit,
}

impl Denial {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authentication => "authentication",
            Self::Policy => "policy",
            Self::RateLimit => "rate_limit",
        }
    }
}
pub const STUCK_REVOCATIONS: &str = "presignd_revocations_stuck";
pub const BUCKET_READY: &str = "presignd_bucket_ready";
pub const REGISTRY_CONNECTIONS: &str = "presignd_registry_connections";
pub const REGISTRY_CONNECTIONS_MAX: &str = "presignd_registry_connections_max";

/// IssueLink's latency buckets, in seconds, around the 3 ms p99 target.
const ISSUE_LINK_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Links a group commit holds (`--record-batch-max` bounds them).
const LINK_COMMIT_SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(install)
}

fn install() -> PrometheusHandle {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(ISSUE_LINK_SECONDS.into()), ISSUE_LINK_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(GRPC_SECONDS.into()), ISSUE_LINK_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(LINK_COMMIT_SECONDS.into()),
                ISSUE_LINK_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(LINK_COMMIT_LINKS.into()), LINK_COMMIT_SIZES)
        })
        .expect("the bucket list is not empty");
    let handle = match builder.install_recorder() {
        Ok(handle) => handle,
        Err(e) => {
            // Someone else installed a recorder first: our metrics go to it, and
            // /metrics serves an empty registry rather than failing startup.
            tracing::warn!(error = %e, "a metrics recorder is already installed");
            PrometheusBuilder::new().build_recorder().handle()
        }
    };
    describe_counter!(
        LINKS_ISSUED,
        "Links issued (committed to the registry), by method and signer"
    );
    describe_histogram!(
        ISSUE_LINK_SECONDS,
        Unit::Seconds,
        "IssueLink latency from validated request to committed link, by outcome"
    );
    describe_histogram!(
        LINK_COMMIT_SECONDS,
        Unit::Seconds,
        "The group commit's statement (links_record): from sending a batch to its commit, one observation a batch"
    );
    describe_histogram!(
        LINK_COMMIT_LINKS,
        Unit::Count,
        "Links a group commit carried (the rows waiting when a recorder worker took them)"
    );
    describe_gauge!(
        REVOCATION_WATCHERS,
        "WatchRevocations streams open on this replica (refused over --max-watchers)"
    );
    gauge!(REVOCATION_WATCHERS).set(0.0);
    describe_gauge!(
        OUTSTANDING_LINKS,
        "Links not expired nor revoked, per signer and key (active and retired keys), refreshed periodically"
    );
    describe_counter!(
        GRPC_REQUESTS,
        "gRPC requests by method and code, including those refused before the handler"
    );
    describe_histogram!(
        GRPC_SECONDS,
        Unit::Seconds,
        "gRPC request latency until the response headers, by method"
    );
    describe_counter!(REVOCATIONS, "Key revocations, by mode, outcome and signer");
    describe_gauge!(
        STUCK_REVOCATIONS,
        "1 while the signer's revocation cannot finish (retried with backoff), else 0"
    );
    describe_counter!(
        REGISTRY_ERRORS,
        "Registry (PostgreSQL) errors, by operation"
    );
    describe_counter!(
        DENIALS,
        "Requests refused, by cause: authentication, policy, rate_limit"
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the labels say which build runs (version, git revision)"
    );
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "revision" => env!("PRESIGND_REVISION"))
        .set(1.0);
    describe_gauge!(
        READY,
        "1 when the server is ready (health SERVING, /readyz 200), else 0"
    );
    describe_gauge!(
        REVOCATIONS_RUNNING,
        "Revocations not finished (running or waiting for a retry), refreshed periodically"
    );
    describe_gauge!(
        OLDEST_REVOCATION_AGE,
        Unit::Seconds,
        "Age of the oldest revocation still running (0 when none), refreshed periodically"
    );
    describe_gauge!(
        BUCKET_READY,
        "1 when the signer's active key may sign for the bucket (the preflight proved it), 0 when IssueLink refuses the bucket; set at each scrape"
    );
    describe_gauge!(
        REGISTRY_CONNECTIONS,
        "Registry connections open, by pool (primary: IssueLink, keys, revocations; read: the read RPCs; replica: --read-database-url) and state (in_use, idle); set at each scrape"
    );
    describe_gauge!(
        REGISTRY_CONNECTIONS_MAX,
        "The most connections each registry pool opens (--db-max-connections, --read-db-max-connections)"
    );
    describe_gauge!(
        SIGNERS_WITHOUT_ACTIVE_KEY,
        "Signers that have no active signing key (their IssueLink answers UNAVAILABLE), refreshed periodically"
    );
    process::describe();
    // Series that exist from the start at 0, so that rate() and the alerts see
    // the first increase (and a dashboard's query names a series that exists).
    for cause in [Denial::Authentication, Denial::Policy, Denial::RateLimit] {
        counter!(DENIALS, "cause" => cause.as_str()).absolute(0);
    }
    for operation in REGISTRY_OPERATIONS {
        counter!(REGISTRY_ERRORS, "operation" => *operation).absolute(0);
    }
    // Histograms accumulate between scrapes; drain them even if nobody scrapes.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        })
        .expect("spawning the metrics upkeep thread");
    handle
}

/// `presignd_links_issued_total`'s handles by signer and method, made once
/// (the macro builds and looks up its key at every call; signers come from
/// the configuration, methods are five).
type IssuedCounters = HashMap<String, HashMap<String, Counter>>;
static ISSUED: LazyLock<RwLock<IssuedCounters>> = LazyLock::new(Default::default);

pub fn record_issued(method: &str, signer: &str) {
    let made = ISSUED
        .read()
        .expect("issued counters")
        .get(signer)
        .and_then(|m| m.get(method))
        .cloned();
    let counter = made.unwrap_or_else(|| {
        handle();
        let made =
            counter!(LINKS_ISSUED, "method" => method.to_owned(), "signer" => signer.to_owned());
        ISSUED
            .write()
            .expect("issued counters")
            .entry(signer.to_owned())
            .or_default()
            .insert(method.to_owned(), made.clone());
        made
    });
    counter.increment(1);
}

/// `outcome`: "ok" or "error".
pub fn record_issue_latency(elapsed: Duration, outcome: &'static str) {
    static OK: OnceLock<Histogram> = OnceLock::new();
    static ERROR: OnceLock<Histogram> = OnceLock::new();
    let made = match outcome {
        "ok" => &OK,
        "error" => &ERROR,
        other => {
            handle();
            histogram!(ISSUE_LINK_SECONDS, "outcome" => other).record(elapsed.as_secs_f64());
            return;
        }
    };
    kept(
        made,
        || histogram!(ISSUE_LINK_SECONDS, "outcome" => outcome),
    )
    .record(elapsed.as_secs_f64());
}

/// One group commit of `links` rows (`issuance::Recorder`): how long its
/// statement took, committed or not, and how many links it carried.
pub fn record_link_commit(elapsed: Duration, links: usize) {
    static SECONDS: OnceLock<Histogram> = OnceLock::new();
    static LINKS: OnceLock<Histogram> = OnceLock::new();
    kept(&SECONDS, || histogram!(LINK_COMMIT_SECONDS)).record(elapsed.as_secs_f64());
    kept(&LINKS, || histogram!(LINK_COMMIT_LINKS)).record(links as f64);
}

/// The handle in `slot`, made (by `make`, once the recorder is installed)
/// at its first use: the macros build and look up their key at every call.
fn kept(
    slot: &'static OnceLock<Histogram>,
    make: impl FnOnce() -> Histogram,
) -> &'static Histogram {
    slot.get_or_init(|| {
        handle();
        make()
    })
}

/// The `operation` label values of `presignd_registry_errors_total`.
const REGISTRY_OPERATIONS: &[&str] = &[
    "issue_link",
    "dashboard",
    "outstanding_links",
    "state_gauges",
];

/// `operation`: one of `REGISTRY_OPERATIONS`, what failed.
pub fn record_registry_error(operation: &'static str) {
    debug_assert!(REGISTRY_OPERATIONS.contains(&operation), "{operation}");
    handle();
    counter!(REGISTRY_ERRORS, "operation" => operation).increment(1);
}

/// One refused request.
pub fn record_denial(cause: Denial) {
    handle();
    counter!(DENIALS, "cause" => cause.as_str()).increment(1);
}

/// Follows readiness (`health::Readiness`).
/// The WatchRevocations streams open now.
pub fn set_revocation_watchers(open: usize) {
    gauge!(REVOCATION_WATCHERS).set(open as f64);
}

pub fn set_ready(ready: bool) {
    handle();
    gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

/// One ended revocation of `signer`'s key. `mode`: "graceful", "revoke" or
/// "emergency"; `outcome`: "succeeded", "failed" or "cancelled". Counted where
/// it ends (`revocation::procedure`, `revocation::cancel`), once, whoever drives
/// it (the RPC's task, startup, the maintenance loop).
pub fn record_revocation(mode: &'static str, outcome: &'static str, signer: &str) {
    handle();
    counter!(REVOCATIONS, "mode" => mode, "outcome" => outcome, "signer" => signer.to_owned())
        .increment(1);
}

/// Which signers have a revocation that could not finish (1) and which not (0).
pub fn set_stuck_revocations(signers: &[String], stuck: &BTreeSet<String>) {
    handle();
    for s in signers.iter().chain(stuck.iter()) {
        let v = if stuck.contains(s) { 1.0 } else { 0.0 };
        gauge!(STUCK_REVOCATIONS, "signer" => s.clone()).set(v);
    }
}

/// The preflight's (signer, bucket) pairs: 1 ready, 0 refused. Both labels
/// come from the configuration (`--signers`, `--buckets`, the policy).
pub fn set_bucket_readiness(pairs: &[(String, String, Result<(), String>)]) {
    handle();
    for (signer, bucket, outcome) in pairs {
        let v = if outcome.is_ok() { 1.0 } else { 0.0 };
        gauge!(BUCKET_READY, "signer" => signer.clone(), "bucket" => bucket.clone()).set(v);
    }
}

/// Each registry pool's connections, open and in use or idle, and its
/// maximum: `in_use` at the maximum with none idle is a pool that makes
/// calls wait (UNAVAILABLE "pool timed out" past the acquire timeout).
/// Set at each scrape. `pools`: (name, pool), names from the code.
pub fn set_registry_connections(pools: &[(&'static str, PgPool)]) {
    handle();
    for (name, pool) in pools {
        let (open, idle) = (pool.size(), pool.num_idle() as u32);
        gauge!(REGISTRY_CONNECTIONS, "pool" => *name, "state" => "idle").set(idle as f64);
        gauge!(REGISTRY_CONNECTIONS, "pool" => *name, "state" => "in_use")
            .set(open.saturating_sub(idle) as f64);
        gauge!(REGISTRY_CONNECTIONS_MAX, "pool" => *name)
            .set(pool.options().get_max_connections() as f64);
    }
}

/// Each budgeted signer's active key and its share of each limit (1.0: the
/// limit), as the last budget check saw them.
static KEY_BUDGETS: Mutex<BTreeMap<String, BudgetShare>> = Mutex::new(BTreeMap::new());

struct BudgetShare {
    key_id: String,
    links: Option<f64>,
    age: Option<f64>,
}

/// Records `signer`'s active key's share of its budget (`revocation::budget`).
/// One entry per signer, replaced when its key changes: the exported series
/// name the current keys only, so rotating every few minutes does not grow the
/// label set (the recorder cannot forget a series; this is rendered at scrape).
pub fn set_key_budget(signer: &str, key_id: &str, links: Option<f64>, age: Option<f64>) {
    let share = BudgetShare {
        key_id: key_id.to_owned(),
        links,
        age,
    };
    KEY_BUDGETS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(signer.to_owned(), share);
}

/// The budget gauges in Prometheus' text format. Signer names and key ids are
/// of [a-z0-9_-] and [A-Za-z0-9] (validated, backend ids): nothing to escape.
fn render_key_budgets() -> String {
    use std::fmt::Write;
    let budgets = KEY_BUDGETS.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = String::new();
    for (name, help, value) in [
        (
            KEY_BUDGET_LINKS,
            "Outstanding links of the signer's active key over its budget's max (1: the limit; rotated at 0.75), per the last budget check",
            (|b: &BudgetShare| b.links) as fn(&BudgetShare) -> Option<f64>,
        ),
        (
            KEY_BUDGET_AGE,
            "Time the signer's active key has signed over its budget's max age (1: the limit), per the last budget check",
            |b: &BudgetShare| b.age,
        ),
    ] {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n");
        for (signer, b) in budgets.iter() {
            if let Some(v) = value(b) {
                let _ = writeln!(
                    out,
                    "{name}{{signer=\"{signer}\",key_id=\"{}\"}} {v}",
                    b.key_id
                );
            }
        }
    }
    out
}

/// Serves, until the task is dropped:
/// * `GET /metrics`: Prometheus text;
/// * `GET /livez`: 200 while the process and its runtime answer (liveness: a
///   registry outage never fails it, so it never restarts every replica at once);
/// * `GET /readyz`: 200 when ready (migrated, keys loaded, registry reachable),
///   else 503 with the reason `readiness` gives (Err); when ready, what is
///   degraded follows `ready` in the body. `before_scrape` sets the gauges
///   read from memory.
pub async fn serve(
    listener: TcpListener,
    readiness: impl Fn() -> Result<Option<String>, String> + Clone + Send + Sync + 'static,
    before_scrape: impl Fn() + Clone + Send + Sync + 'static,
) -> std::io::Result<()> {
    use axum::http::StatusCode;
    let metrics = handle();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || async move {
                process::refresh();
                before_scrape();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render() + &render_key_budgets(),
                )
            }),
        )
        .route("/livez", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || async move {
                match readiness() {
                    Ok(None) => (StatusCode::OK, "ready\n".to_owned()),
                    Ok(Some(degraded)) => {
                        (StatusCode::OK, format!("ready\ndegraded: {degraded}\n"))
                    }
                    Err(reason) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {reason}\n"),
                    ),
                }
            }),
        );
    axum::serve(listener, app).await
}

/// Sets the outstanding-links gauge from the registry once. Keys that left the
/// active/retired states since the last time (`reported`) drop to 0.
pub async fn refresh_outstanding(
    pool: &PgPool,
    reported: &mut BTreeSet<(String, String)>,
) -> Result<(), crate::registry::Error> {
    handle();
    // The same counts as ListSigningKeys, for the keys whose links still work,
    // from the roll-up: a pass over their links would cost IssueLink's
    // throughput a dip at every refresh on a big registry.
    let rows = crate::registry::keys::list_with_outstanding(pool, None).await?;
    let mut now = BTreeSet::new();
    let live = |k: &KeySummaryRow| matches!(k.state, KeyState::Active | KeyState::Retired);
    for row in rows.into_iter().filter(live) {
        gauge!(OUTSTANDING_LINKS, "signer" => row.signer.clone(), "key_id" => row.key_id.clone())
            .set(row.outstanding_links as f64);
        now.insert((row.signer, row.key_id));
    }
    for (signer, key_id) in reported.difference(&now) {
        gauge!(OUTSTANDING_LINKS, "signer" => signer.clone(), "key_id" => key_id.clone()).set(0.0);
    }
    *reported = now;
    Ok(())
}

/// Sets the state gauges an on-call engineer alerts on, from the registry once:
/// revocations running and the age of the oldest, signers without an active key.
pub async fn refresh_state(pool: &PgPool) -> Result<(), crate::registry::Error> {
    handle();
    let running = crate::registry::revocations::running_summary(pool).await?;
    gauge!(REVOCATIONS_RUNNING).set(running.count as f64);
    gauge!(OLDEST_REVOCATION_AGE).set(running.oldest_age_secs);
    let without = crate::registry::signers::count_without_active_key(pool).await?;
    gauge!(SIGNERS_WITHOUT_ACTIVE_KEY).set(without as f64);
    Ok(())
}

/// `refresh_outstanding` and `refresh_state` every `interval`, forever (errors
/// are counted and logged).
pub async fn keep_registry_gauges_fresh(pool: PgPool, interval: Duration) {
    let mut reported = BTreeSet::new();
    loop {
        // Sleep first: at startup the registry may not be migrated yet.
        tokio::time::sleep(interval).await;
        if let Err(e) = refresh_outstanding(&pool, &mut reported).await {
            record_registry_error("outstanding_links");
            tracing::debug!(error = %e, "could not refresh the outstanding-links gauge");
        }
        if let Err(e) = refresh_state(&pool).await {
            record_registry_error("state_gauges");
            tracing::debug!(error = %e, "could not refresh the state gauges");
        }
    }
}
