//! Wiring: build every part from the config, bind the listener (so tests know the
//! port before serving), then serve LinkService, health and reflection until a
//! shutdown signal.
//!
//! Health follows readiness: NOT_SERVING until migrations ran and every signer has
//! an active key loaded; NOT_SERVING again whenever the registry stops answering,
//! and on shutdown.
//!
//! Security wiring: TLS (and mTLS) when configured, the policy (reloaded on
//! SIGHUP without dropping connections), per-caller rate limits, the audit trail.

use crate::api::{KeyApi, LinkApi};
use crate::audit::Auditor;
use crate::auth::Authenticator;
use crate::backend::aws::{AwsBackend, AwsSettings};
use crate::backend::{KeyBackend, garage::GarageBackend};
use crate::config::Config;
use crate::dashboard::Dashboard;
use crate::domain::SignerName;
use crate::health::Readiness;
use crate::issuance::{Issuer, Recorder};
use crate::keys::KeyManager;
use crate::paging::PageTokens;
use crate::policy::PolicyHandle;
use crate::proto::key_service_server::KeyServiceServer;
use crate::proto::link_service_server::LinkServiceServer;
use crate::ratelimit::RateLimits;
use crate::revocation;
use crate::signing::{Keyring, S3Target};
use crate::{metrics, registry};
use anyhow::{Context, bail};
use sqlx::postgres::PgConnectOptions;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub struct App {
    config: Config,
    listener: TcpListener,
    port: u16,
    metrics_listener: TcpListener,
    metrics_port: u16,
    auth: Authenticator,
    keys: KeyManager,
    signers: Vec<SignerName>,
    policy: PolicyHandle,
    audit: Auditor,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let options: PgConnectOptions = config
            .database_url()?
            .parse()
            .context("DATABASE_URL is not a valid PostgreSQL URL")?;
        Self::build_with_db(config, options).await
    }

    /// As `build`, with the registry's connect options given (tests pass a fresh
    /// database's).
    pub async fn build_with_db(config: Config, db: PgConnectOptions) -> anyhow::Result<Self> {
        let master_key = config.master_key()?;
        let policy = PolicyHandle::load(config.policy_file.clone(), config.policy_settings()?)?;
        let tls = config.tls()?;
        let client_certs = tls.as_ref().and_then(|t| t.client_certs.clone());
        if config.callers.is_empty() && client_certs.is_none() {
            bail!(
                "no callers configured: set PRESIGND_CALLERS to NAME:SHA256(token) entries (see `presignd hash-token`), or PRESIGND_CLIENT_CA for client certificates"
            );
        }
        let signers = config.signer_names()?;
        let backend = backend(&config).await?;
        let pool = registry::lazy_pool(db, config.db_max_connections, config.db_acquire_timeout());
        let audit = Auditor::new(pool.clone(), config.audit_denials_per_sec);
        let auth = Authenticator::from_specs(&config.callers, policy.clone())
            .context("PRESIGND_CALLERS")?
            .with_client_certs(client_certs)
            .with_audit(audit.clone());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        let keys = KeyManager {
            pool,
            keyring: Keyring::default(),
            backend,
            master_key,
            target: S3Target {
                endpoint: config.s3_endpoint.clone(),
                region: config.s3_region.clone(),
                path_style: config.s3_path_style,
            },
            http,
            probe_bucket: config.buckets.first().cloned(),
            verify_attempts: config.key_verify_attempts,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let port = listener.local_addr()?.port();
        let metrics_listener = TcpListener::bind(config.metrics_listen)
            .await
            .with_context(|| format!("binding the metrics listener {}", config.metrics_listen))?;
        let metrics_port = metrics_listener.local_addr()?.port();
        Ok(Self {
            config,
            listener,
            port,
            metrics_listener,
            metrics_port,
            auth,
            keys,
            signers,
            policy,
            audit,
            tls: tls.map(|t| t.acceptor),
        })
    }

    /// The policy in force (tests reload it as SIGHUP does).
    pub fn policy(&self) -> PolicyHandle {
        self.policy.clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The key manager this app signs and rotates with (tests drive revocations
    /// step by step through it).
    pub fn key_manager(&self) -> KeyManager {
        self.keys.clone()
    }

    /// The bound port of the Prometheus listener (`/metrics`).
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let readiness = Readiness::default();
        readiness.not_ready("starting: migrating the registry and loading signing keys");
        let (health, health_service) = crate::health::service(readiness.clone());
        set_status(&health, ServingStatus::NotServing).await;
        let ready_task = tokio::spawn(become_ready(
            self.keys.clone(),
            self.signers.clone(),
            self.config.migrate_on_start,
            self.config.health_interval(),
            self.config.maintenance_interval(),
            health.clone(),
            readiness.clone(),
        ));

        // Both reflection versions: grpcurl and other tools still ask v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context("building the reflection service")?;
        let reflection = reflection()
            .build_v1()
            .context("building the reflection service")?;
        let issuer = Issuer {
            keys: self.keys.clone(),
            recorder: Recorder::start(
                self.keys.pool.clone(),
                self.config.record_workers,
                self.config.record_batch_max,
            ),
            policy: self.policy.clone(),
            limits: RateLimits::default(),
            audit: self.audit.clone(),
        };
        let dashboard = Dashboard {
            pool: self.keys.pool.clone(),
            tokens: PageTokens::new(&self.keys.master_key),
        };
        let auth = self.auth.clone();
        let links = InterceptedService::new(
            LinkServiceServer::new(LinkApi { issuer, dashboard }),
            move |req| auth.intercept(req),
        );
        let auth = self.auth.clone();
        let keys = InterceptedService::new(
            KeyServiceServer::new(KeyApi {
                keys: self.keys.clone(),
                audit: self.audit.clone(),
                tokens: PageTokens::new(&self.keys.master_key),
            }),
            move |req| auth.intercept(req),
        );

        let reloader = self
            .config
            .policy_file
            .is_some()
            .then(|| tokio::spawn(reload_on_hangup(self.policy.clone())));

        let metrics_server = tokio::spawn(metrics::serve(self.metrics_listener));
        let outstanding = tokio::spawn(metrics::keep_outstanding_fresh(
            self.keys.pool.clone(),
            self.config.metrics_refresh(),
        ));

        tracing::info!(
            port = self.port,
            metrics_port = self.metrics_port,
            tls = self.tls.is_some(),
            "presignd serving"
        );
        let stopping = (health.clone(), readiness.clone());
        let router = tonic::transport::Server::builder()
            .layer(tower::util::MapRequestLayer::new(
                crate::audit::tag_rpc::<tonic::body::Body>,
            ))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(links)
            .add_service(keys);
        let shutdown = async move {
            shutdown.await;
            tracing::info!("shutting down: draining in-flight requests");
            stopping.1.not_ready("shutting down");
            set_status(&stopping.0, ServingStatus::NotServing).await;
        };
        let result = match self.tls {
            Some(acceptor) => {
                router
                    .serve_with_incoming_shutdown(
                        crate::tls::incoming(self.listener, acceptor),
                        shutdown,
                    )
                    .await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(
                        // TCP_NODELAY: a response is several HTTP/2 frames, and
                        // Nagle's algorithm would hold the last one for the
                        // client's delayed ACK (40 ms).
                        tonic::transport::server::TcpIncoming::from(self.listener)
                            .with_nodelay(Some(true)),
                        shutdown,
                    )
                    .await
            }
        };
        if let Some(r) = reloader {
            r.abort();
        }
        ready_task.abort();
        metrics_server.abort();
        outstanding.abort();
        self.keys.pool.close().await;
        result.context("gRPC server failed")
    }
}

async fn backend(config: &Config) -> anyhow::Result<Arc<dyn KeyBackend>> {
    match config.backend.as_str() {
        "garage" => {
            let token = config
                .garage_admin_token
                .clone()
                .context("the garage backend needs PRESIGND_GARAGE_ADMIN_TOKEN")?;
            Ok(Arc::new(GarageBackend::new(
                &config.garage_admin_url,
                token,
                config.buckets.clone(),
            )))
        }
        "aws" => Ok(Arc::new(
            AwsBackend::new(AwsSettings {
                region: config.aws_region.clone(),
                iam_endpoint: config.aws_iam_endpoint.clone(),
                user_prefix: config.aws_iam_user_prefix.clone(),
            })
            .await,
        )),
        other => bail!("unknown backend {other:?}: expected garage or aws"),
    }
}

async fn set_status(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health
        .set_service_status(
            <LinkServiceServer<LinkApi> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    health
        .set_service_status(
            <KeyServiceServer<KeyApi> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

/// Runs migrations and provisions keys until both succeed (retrying while the
/// registry or the backend is down); then, once the registry has its schema,
/// follows the registry's liveness, other replicas' key changes, and the
/// background upkeep.
async fn become_ready(
    keys: KeyManager,
    signers: Vec<SignerName>,
    migrate: bool,
    interval: Duration,
    maintenance: Duration,
    health: HealthReporter,
    readiness: Readiness,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match prepare(&keys, &signers, migrate).await {
            Ok(()) => break,
            Err(e) => {
                readiness.not_ready(format!("{e:#}"));
                tracing::warn!(
                    error = format!("{e:#}"),
                    retry_in_ms = backoff.as_millis() as u64,
                    "not ready yet"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    tracing::info!("ready: registry migrated, signing keys loaded");
    readiness.ready();
    set_status(&health, ServingStatus::Serving).await;
    let names = signers.iter().map(|s| s.to_string()).collect();
    tokio::join!(
        follow_liveness(&keys, interval, &health, &readiness),
        keys.clone().follow_key_changes(names),
        maintain(keys.clone(), maintenance),
    );
}

async fn follow_liveness(
    keys: &KeyManager,
    interval: Duration,
    health: &HealthReporter,
    readiness: &Readiness,
) {
    let mut serving = true;
    loop {
        tokio::time::sleep(interval).await;
        let ok = tokio::time::timeout(interval, registry::ping(&keys.pool))
            .await
            .is_ok_and(|r| r.is_ok());
        if ok != serving {
            serving = ok;
            if ok {
                tracing::info!("registry reachable again: SERVING");
                readiness.ready();
                set_status(health, ServingStatus::Serving).await;
            } else {
                tracing::warn!("registry unreachable: NOT_SERVING");
                readiness.not_ready(format!(
                    "registry unreachable: no answer to a ping within {} ms",
                    interval.as_millis()
                ));
                set_status(health, ServingStatus::NotServing).await;
            }
        }
    }
}

async fn prepare(keys: &KeyManager, signers: &[SignerName], migrate: bool) -> anyhow::Result<()> {
    if migrate {
        registry::migrate(&keys.pool).await?;
    }
    // A revocation interrupted by a crash finishes before anything is signed.
    let unfinished = revocation::resume_all(keys).await?;
    if unfinished > 0 {
        anyhow::bail!("{unfinished} revocation(s) could not be finished yet");
    }
    keys.load_active_keys().await?;
    for signer in signers {
        keys.ensure_active_key(signer.as_str()).await?;
    }
    Ok(())
}

/// Background upkeep: retries revocations left running by a retryable error, and
/// deactivates retired keys whose last link expired (GRACEFUL rotations).
async fn maintain(keys: KeyManager, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = revocation::resume_all(&keys).await {
            tracing::warn!(error = %e, "resuming revocations");
        }
        if let Err(e) = revocation::sweep_retired_keys(&keys).await {
            tracing::warn!(error = %e, "deactivating expired retired keys");
        }
        if let Err(e) = registry::link_summary::fold(&keys.pool).await {
            tracing::warn!(error = %e, "folding the link roll-up");
        }
    }
}

/// Reloads the policy on every SIGHUP; connections and the old policy stay up
/// (a malformed file is refused and logged).
async fn reload_on_hangup(policy: PolicyHandle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: the policy will not be reloaded");
                return;
            }
        };
        while hup.recv().await.is_some() {
            policy.reload_and_log();
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
