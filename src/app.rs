//! Wiring: build every part from the config, bind the listener (so tests know the
//! port before serving), then serve LinkService, health and reflection until a
//! shutdown signal.
//!
//! Health follows readiness: NOT_SERVING until migrations ran and every signer has
//! an active key loaded; NOT_SERVING again whenever the registry stops answering,
//! and on shutdown.

use crate::api::LinkApi;
use crate::auth::Authenticator;
use crate::backend::{KeyBackend, garage::GarageBackend};
use crate::config::Config;
use crate::dashboard::{Dashboard, PageTokens};
use crate::domain::SignerName;
use crate::issuance::Issuer;
use crate::keys::KeyManager;
use crate::proto::link_service_server::LinkServiceServer;
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
        let auth = Authenticator::from_specs(&config.callers, config.admin_names()?)
            .context("PRESIGND_CALLERS")?;
        if config.callers.is_empty() {
            bail!(
                "no callers configured: set PRESIGND_CALLERS to NAME:SHA256(token) entries (see `presignd hash-token`)"
            );
        }
        let signers = config.signer_names()?;
        let backend = backend(&config)?;
        let pool = registry::lazy_pool(db, config.db_max_connections, config.db_acquire_timeout());
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
        })
    }

    pub fn port(&self) -> u16 {
        self.port
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
        let (health, health_service) = tonic_health::server::health_reporter();
        set_status(&health, ServingStatus::NotServing).await;
        let readiness = tokio::spawn(become_ready(
            self.keys.clone(),
            self.signers.clone(),
            self.config.migrate_on_start,
            self.config.health_interval(),
            health.clone(),
        ));

        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the reflection service")?;
        let issuer = Issuer {
            pool: self.keys.pool.clone(),
            keyring: self.keys.keyring.clone(),
            default_signer: self.signers[0].to_string(),
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
        let metrics_server = tokio::spawn(metrics::serve(self.metrics_listener));
        let outstanding = tokio::spawn(metrics::keep_outstanding_fresh(
            self.keys.pool.clone(),
            self.config.metrics_refresh(),
        ));

        tracing::info!(
            port = self.port,
            metrics_port = self.metrics_port,
            "presignd serving"
        );
        let stopping = health.clone();
        let result = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(links)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(self.listener),
                async move {
                    shutdown.await;
                    tracing::info!("shutting down: draining in-flight requests");
                    set_status(&stopping, ServingStatus::NotServing).await;
                },
            )
            .await;
        readiness.abort();
        metrics_server.abort();
        outstanding.abort();
        self.keys.pool.close().await;
        result.context("gRPC server failed")
    }
}

fn backend(config: &Config) -> anyhow::Result<Arc<dyn KeyBackend>> {
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
        other => bail!("unknown backend {other:?}: expected garage"),
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
}

/// Runs migrations and provisions keys until both succeed (retrying while the
/// registry or the backend is down), then follows the registry's liveness.
async fn become_ready(
    keys: KeyManager,
    signers: Vec<SignerName>,
    migrate: bool,
    interval: Duration,
    health: HealthReporter,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match prepare(&keys, &signers, migrate).await {
            Ok(()) => break,
            Err(e) => {
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
    set_status(&health, ServingStatus::Serving).await;
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
                set_status(&health, ServingStatus::Serving).await;
            } else {
                tracing::warn!("registry unreachable: NOT_SERVING");
                set_status(&health, ServingStatus::NotServing).await;
            }
        }
    }
}

async fn prepare(keys: &KeyManager, signers: &[SignerName], migrate: bool) -> anyhow::Result<()> {
    if migrate {
        registry::migrate(&keys.pool).await?;
    }
    keys.load_active_keys().await?;
    for signer in signers {
        keys.ensure_active_key(signer.as_str()).await?;
    }
    Ok(())
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
