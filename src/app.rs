//! Wiring: build every part from the config, bind the listener (so tests know the
//! port before serving), then serve LinkService, KeyService, health and
//! reflection until a shutdown signal. The registry pool is handed to each part
//! that reads or writes it. Health follows readiness (`readiness`); the upkeep
//! runs beside it (`maintenance`).
//!
//! Security wiring: TLS (and mTLS) when configured, the policy (reloaded on
//! SIGHUP without dropping connections), per-caller rate limits, the audit trail.

use crate::api::{KeyApi, LinkApi};
use crate::audit::Auditor;
use crate::auth::Authenticator;
use crate::backend::aws::{self, AwsBackend, AwsSettings};
use crate::backend::{KeyBackend, garage::GarageBackend};
use crate::config::Config;
use crate::dashboard::Dashboard;
use crate::domain::SignerName;
use crate::health::Readiness;
use crate::issuance::{Issuer, Recorder};
use crate::keys::{KeyBudgets, KeyManager, Probe, Regions};
use crate::paging::PageTokens;
use crate::policy::PolicyHandle;
use crate::policy::RateSpec;
use crate::proto::key_service_server::KeyServiceServer;
use crate::proto::link_service_server::LinkServiceServer;
use crate::ratelimit::{RateLimits, ReadLimits};
use crate::revocation::Revocations;
use crate::seal::MasterKey;
use crate::signing::S3Target;
use crate::telemetry::rpc::RpcLayer;
use crate::tls::LiveTls;
use crate::{metrics, registry};
use anyhow::{Context, bail};
use readiness::{ReadinessTask, set_status};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;

mod connections;
mod maintenance;
mod readiness;
pub mod reload;
mod signals;

pub struct App {
    config: Config,
    listener: TcpListener,
    port: u16,
    metrics_listener: TcpListener,
    metrics_port: u16,
    auth: Authenticator,
    pool: PgPool,
    master_key: MasterKey,
    keys: KeyManager,
    revocations: Revocations,
    signers: Vec<SignerName>,
    policy: PolicyHandle,
    audit: Auditor,
    /// The read RPCs' own pool (`registry::read_pool`).
    read_pool: sqlx::PgPool,
    /// The replica's pool (--read-database-url), if one is configured: the
    /// dashboards read there, else from `read_pool`.
    replica: Option<sqlx::PgPool>,
    retention: crate::lifecycle::Retention,
    tls: Option<LiveTls>,
    budgets: KeyBudgets,
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let options = config.database_options()?;
        Self::build_with_db(config, options).await
    }

    /// As `build`, with the registry's connect options given (tests pass a fresh
    /// database's).
    pub async fn build_with_db(config: Config, db: PgConnectOptions) -> anyhow::Result<Self> {
        let master_key = config.master_key()?;
        let policy = PolicyHandle::load(config.policy_file.clone(), config.policy_settings()?)?;
        let tls = config.tls()?;
        let tls = tls.map(LiveTls::new);
        let callers = config.caller_specs()?;
        if callers.is_empty() && tls.as_ref().and_then(LiveTls::client_certs).is_none() {
            bail!(
                "no callers configured: set PRESIGND_CALLERS (or PRESIGND_CALLERS_FILE) to NAME:SHA256(token) entries (see `presignd hash-token`), or PRESIGND_CLIENT_CA for client certificates"
            );
        }
        let signers = config.signer_names()?;
        let budgets = config.key_budgets()?;
        let backend = backend(&config).await?;
        let read_pool = registry::read_pool(
            db.clone(),
            config.read_db_max_connections,
            config.db_acquire_timeout(),
            config.read_statement_timeout(),
        );
        // GetLink, ListLinks and SummarizeLinks read from the replica when one
        // is configured: a read pool of the same size and timeouts, there.
        let replica = config.read_database()?.map(|replica| {
            registry::read_pool(
                replica,
                config.read_db_max_connections,
                config.db_acquire_timeout(),
                config.read_statement_timeout(),
            )
        });
        let retention = config.retention()?;
        let pool = registry::lazy_pool(
            db,
            config.db_max_connections,
            config.db_min_connections()?,
            config.db_acquire_timeout(),
        );
        let audit = Auditor::new(
            pool.clone(),
            config.audit_denials_per_sec,
            config.audit_denial_window(),
        );
        let auth = Authenticator::from_specs(&callers, policy.clone())
            .context("PRESIGND_CALLERS / PRESIGND_CALLERS_FILE")?
            .with_client_certs(tls.clone())
            .with_audit(audit.clone());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        let target = S3Target {
            endpoint: config.s3_endpoint.clone(),
            region: config.s3_region.clone(),
            path_style: config.s3_path_style,
        };
        // An AWS bucket lives in one region; Garage has one for all.
        let regions = Regions::new(
            &target,
            config.bucket_region_map()?,
            config.backend == "aws",
        );
        let keys = KeyManager::new(
            pool.clone(),
            backend,
            master_key.clone(),
            target,
            regions,
            Probe {
                http,
                bucket: config.buckets.first().cloned(),
                attempts: config.key_verify_attempts,
            },
        );
        keys.set_buckets(policy.current().buckets_by_signer(&config.buckets));
        let revocations = Revocations::new(pool.clone(), keys.clone())
            .with_watch_limits(config.max_watchers, config.max_watchers_per_caller);
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
            pool,
            master_key,
            keys,
            revocations,
            signers,
            policy,
            audit,
            read_pool,
            replica,
            retention,
            tls,
            budgets,
        })
    }

    /// The policy in force (tests reload it as SIGHUP does).
    pub fn policy(&self) -> PolicyHandle {
        self.policy.clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The key manager this app signs with (tests read its keyring).
    pub fn key_manager(&self) -> KeyManager {
        self.keys.clone()
    }

    /// The revocation service (tests drive revocations step by step).
    pub fn revocations(&self) -> Revocations {
        self.revocations.clone()
    }

    /// The blast-radius budgets (tests run the budget check directly).
    pub fn key_budgets(&self) -> KeyBudgets {
        self.budgets.clone()
    }

    /// The bound port of the Prometheus listener (`/metrics`).
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(signals::shutdown_signal()).await
    }

    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let readiness = Readiness::default().watching(self.keys.clone());
        readiness.not_ready("starting: migrating the registry and loading signing keys");
        let (health, health_service) = crate::health::service(readiness.clone());
        set_status(&health, ServingStatus::NotServing).await;
        let ready_task = tokio::spawn(
            ReadinessTask {
                pool: self.pool.clone(),
                keys: self.keys.clone(),
                revocations: self.revocations.clone(),
                signers: self.signers.clone(),
                migrate: self.config.migrate_on_start,
                health_interval: self.config.health_interval(),
                maintenance_interval: self.config.maintenance_interval(),
                retention: self.retention,
                budgets: self.budgets.clone(),
                health: health.clone(),
                readiness: readiness.clone(),
                policy: self.policy.clone(),
                buckets: self.config.buckets.clone(),
                warm_connections: self.pool.options().get_min_connections(),
            }
            .run(),
        );

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
            pool: self.pool.clone(),
            keys: self.keys.clone(),
            recorder: Recorder::start(
                self.pool.clone(),
                self.config.record_workers,
                self.config.record_batch_max,
                self.config.record_timeout(),
            ),
            policy: self.policy.clone(),
            limits: RateLimits::default(),
            audit: self.audit.clone(),
            budgets: self.budgets.clone(),
        };
        let dashboard = Dashboard {
            pool: self.read_pool.clone(),
            replica: self
                .replica
                .clone()
                .unwrap_or_else(|| self.read_pool.clone()),
            tokens: PageTokens::new(&self.master_key),
            reads: ReadLimits::new(RateSpec::new(
                self.config.read_rate_per_sec,
                self.config.read_burst,
            )),
        };
        let auth = self.auth.clone();
        let links = InterceptedService::new(
            LinkServiceServer::new(LinkApi {
                issuer,
                dashboard: dashboard.clone(),
                keys: self.keys.clone(),
                revocations: self.revocations.clone(),
            }),
            move |req| auth.intercept(req),
        );
        let auth = self.auth.clone();
        let keys = InterceptedService::new(
            KeyServiceServer::new(KeyApi {
                keys: self.keys.clone(),
                pool: self.pool.clone(),
                revocations: self.revocations.clone(),
                audit: self.audit.clone(),
                dashboard,
                budgets: self.budgets.clone(),
            }),
            move |req| auth.intercept(req),
        );

        let reloader = tokio::spawn(
            reload::Reloader::new(
                &self.config,
                self.auth.clone(),
                self.policy.clone(),
                self.tls.clone(),
            )
            .run(self.config.reload_poll()),
        );

        let probe = readiness.clone();
        let scraped = self.keys.clone();
        // Each registry pool by its name in `presignd_registry_connections`.
        let pools: Vec<(&'static str, sqlx::PgPool)> = [
            ("primary", self.pool.clone()),
            ("read", self.read_pool.clone()),
        ]
        .into_iter()
        .chain(self.replica.clone().map(|r| ("replica", r)))
        .collect();

        let metrics_server = tokio::spawn(metrics::serve(
            self.metrics_listener,
            move || match probe.reason() {
                Some(reason) => Err(reason),
                None => Ok(probe.degraded()),
            },
            move || {
                metrics::set_bucket_readiness(&scraped.bucket_readiness());
                metrics::set_registry_connections(&pools);
            },
        ));
        let outstanding = tokio::spawn(metrics::keep_registry_gauges_fresh(
            self.pool.clone(),
            self.config.metrics_refresh(),
        ));

        tracing::info!(
            port = self.port,
            metrics_port = self.metrics_port,
            tls = self.tls.is_some(),
            "presignd serving"
        );
        let stopping = (health.clone(), readiness.clone(), self.revocations.clone());
        let mut server = tonic::transport::Server::builder();
        if let Some(age) = self.config.max_connection_age() {
            server = server.max_connection_age(age);
        }
        // The recorder before the RPC layer, which keeps the handles it makes.
        metrics::handle();
        let router = server
            .layer(RpcLayer::new(rpc_methods()?))
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
            // Endless streams would hold the drain: they end with UNAVAILABLE.
            stopping.2.close_watches();
            stopping.1.not_ready("shutting down");
            set_status(&stopping.0, ServingStatus::NotServing).await;
        };
        let result = match self.tls {
            Some(tls) => {
                router
                    .serve_with_incoming_shutdown(
                        crate::tls::incoming(self.listener, tls)
                            .map(|c| c.map(connections::Unvectored)),
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
                            .with_nodelay(Some(true))
                            .map(|c| c.map(connections::Unvectored)),
                        shutdown,
                    )
                    .await
            }
        };
        reloader.abort();
        ready_task.abort();
        metrics_server.abort();
        outstanding.abort();
        self.audit.close().await;
        self.read_pool.close().await;
        self.pool.close().await;
        result.context("gRPC server failed")
    }
}

async fn backend(config: &Config) -> anyhow::Result<Arc<dyn KeyBackend>> {
    match config.backend.as_str() {
        "garage" => {
            let token = config.garage_admin_token()?.context(
                "the garage backend needs PRESIGND_GARAGE_ADMIN_TOKEN (or PRESIGND_GARAGE_ADMIN_TOKEN_FILE)",
            )?;
            Ok(Arc::new(GarageBackend::new(
                &config.garage_admin_url,
                token,
            )))
        }
        "aws" => Ok(Arc::new(
            AwsBackend::new(AwsSettings {
                region: config.aws_region.clone(),
                iam_endpoint: config.aws_iam_endpoint.clone(),
                user_prefix: config.aws_iam_user_prefix.clone(),
                attempt_timeout: aws::IAM_ATTEMPT_TIMEOUT,
            })
            .await,
        )),
        other => bail!("unknown backend {other:?}: expected garage or aws"),
    }
}

/// Every RPC this server answers, as `package.Service/Method`: the per-RPC
/// log and metrics name these, and any other path `unknown` (bounded labels).
fn rpc_methods() -> anyhow::Result<Vec<String>> {
    use prost::Message;
    let mut methods = Vec::new();
    for set in [
        crate::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ] {
        let set =
            prost_types::FileDescriptorSet::decode(set).context("decoding a descriptor set")?;
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                for method in service.method {
                    methods.push(format!(
                        "{package}.{service_name}/{}",
                        method.name.unwrap_or_default()
                    ));
                }
            }
        }
    }
    Ok(methods)
}
