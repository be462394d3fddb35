//! Health follows readiness: NOT_SERVING until migrations ran, keys a crash
//! left unrecorded were deleted (if the backend answers), interrupted
//! revocations finished and every signer has an active key loaded (retrying
//! with backoff while Postgres or the backend is down); then SERVING, and
//! NOT_SERVING again whenever the registry stops answering. Once ready, the
//! same task also follows other replicas' key changes and runs the upkeep.

use super::maintenance;
use crate::api::{KeyApi, LinkApi};
use crate::domain::SignerName;
use crate::health::Readiness;
use crate::keys::KeyManager;
use crate::policy::PolicyHandle;
use crate::proto::key_service_server::KeyServiceServer;
use crate::proto::link_service_server::LinkServiceServer;
use crate::registry;
use crate::revocation::Revocations;
use sqlx::PgPool;
use std::time::Duration;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// What the readiness task works with.
pub(super) struct ReadinessTask {
    pub pool: PgPool,
    pub keys: KeyManager,
    pub revocations: Revocations,
    pub signers: Vec<SignerName>,
    pub migrate: bool,
    pub health_interval: Duration,
    pub maintenance_interval: Duration,
    pub retention: crate::lifecycle::Retention,
    pub budgets: crate::keys::KeyBudgets,
    pub health: HealthReporter,
    /// Why the server is not ready, for health answers (`crate::health`).
    pub readiness: Readiness,
    /// The policy in force: the buckets the preflight prepares follow it.
    pub policy: PolicyHandle,
    /// `--buckets`.
    pub buckets: Vec<String>,
    /// Registry connections opened before SERVING (`--db-min-connections`).
    pub warm_connections: u32,
}

/// How long opening `--db-min-connections` may hold SERVING back. Past it the
/// server serves with what is open (the rest open on demand): fewer
/// connections are slower to start with, not a reason to refuse work.
const WARM_WITHIN: Duration = Duration::from_secs(10);

/// Sets the overall status and each of our services'.
pub(super) async fn set_status(health: &HealthReporter, status: ServingStatus) {
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

impl ReadinessTask {
    /// Prepares until it succeeds, turns SERVING, then follows liveness, key
    /// changes and the upkeep for as long as the server runs.
    pub(super) async fn run(self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.prepare().await {
                Ok(()) => break,
                Err(e) => {
                    self.readiness.not_ready(format!("{e:#}"));
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
        self.readiness.ready();
        set_status(&self.health, ServingStatus::Serving).await;
        let names = self.signers.iter().map(|s| s.to_string()).collect();
        tokio::join!(
            self.follow_liveness(),
            self.keep_buckets_ready(),
            self.keys.clone().follow_key_changes(names),
            maintenance::run(maintenance::Upkeep {
                pool: self.pool.clone(),
                keys: self.keys.clone(),
                revocations: self.revocations.clone(),
                signers: self.signers.clone(),
                readiness: self.readiness.clone(),
                interval: self.maintenance_interval,
                retention: self.retention,
            }),
            maintenance::keep_budgets(
                self.revocations.clone(),
                self.budgets.clone(),
                self.maintenance_interval
            ),
        );
    }

    async fn prepare(&self) -> anyhow::Result<()> {
        if self.migrate {
            registry::migrate(&self.pool).await?;
        }
        // Partitions for today and the days ahead, before the first insert.
        // Not a reason to stay unready: the migrations made two weeks of them,
        // links_default takes any link without one, and a role that does not
        // own the tables may not create them (the owner runs `presignd migrate`).
        if let Err(e) = crate::lifecycle::prepare(&self.pool, chrono::Utc::now()).await {
            tracing::warn!(error = %e, "creating the partitions ahead of need");
        }
        // Keys a crash (or an error) left created and unrecorded are deleted
        // first; a backend down leaves their intents to the maintenance loop.
        self.keys.reconcile_intents().await?;
        // A revocation interrupted by a crash is finished before anything is
        // signed; one that cannot finish (its backend is down) harms only its
        // signer: the others become ready, and the maintenance loop retries it.
        let stuck = self.revocations.resume_all().await?;
        maintenance::report_stuck(&self.readiness, &self.signers, &stuck);
        // Before any key is loaded: IssueLink is refused until then (no
        // active key, UNAVAILABLE at once), and the warm-up holds every
        // connection it opens until the last is open. After, a burst arriving
        // while it held them (seconds on a loaded host) found none for its
        // commits and failed after --db-acquire-timeout-secs. So only while
        // no key is loaded: a start retried after a signer's key was (another
        // signer's failed) has IssueLink admitted, and a warm-up then would
        // hold the connections its commits wait for (up to 10 s where the
        // database admits fewer than --db-min-connections).
        if !self.keys.signs_anything() {
            self.warm_registry().await;
        }
        self.keys.load_active_keys().await?;
        for signer in &self.signers {
            self.keys.ensure_active_key(signer.as_str()).await?;
        }
        // Every (signer, bucket) pair, before the first link. A pair that
        // fails is refused by IssueLink and named in health answers; it does
        // not hold readiness (the other buckets work).
        self.keys.preflight_all().await;
        Ok(())
    }

    /// Opens `--db-min-connections` before SERVING: the first burst of calls
    /// would otherwise each wait for a connection to open.
    async fn warm_registry(&self) {
        let wanted = self.warm_connections;
        let started = std::time::Instant::now();
        let warmed = registry::warm(&self.pool, wanted, WARM_WITHIN).await;
        let took_ms = started.elapsed().as_millis() as u64;
        match warmed {
            Ok(()) => tracing::info!(
                connections = self.pool.size(),
                took_ms,
                "registry connections open"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                open = self.pool.size(),
                wanted,
                took_ms,
                "could not open every registry connection of --db-min-connections before serving; the rest open on demand. \
                 If the database refused them (too many connections), it admits fewer sessions than --db-min-connections: \
                 lower it and --db-max-connections, or raise the database's max_connections or the role's or database's CONNECTION LIMIT"
            ),
        }
    }

    /// The preflight follows the policy: when a reload swaps one in (new
    /// buckets), and every maintenance interval for the pairs not ready.
    async fn keep_buckets_ready(&self) {
        loop {
            tokio::select! {
                _ = self.policy.swapped() => {}
                _ = tokio::time::sleep(self.maintenance_interval) => {}
            }
            self.keys
                .set_buckets(self.policy.current().buckets_by_signer(&self.buckets));
            self.keys.preflight_all().await;
        }
    }

    async fn follow_liveness(&self) {
        let interval = self.health_interval;
        let mut serving = true;
        loop {
            tokio::time::sleep(interval).await;
            let ok = tokio::time::timeout(interval, registry::ping(&self.pool))
                .await
                .is_ok_and(|r| r.is_ok());
            if ok != serving {
                serving = ok;
                if ok {
                    tracing::info!("registry reachable again: SERVING");
                    self.readiness.ready();
                    set_status(&self.health, ServingStatus::Serving).await;
                } else {
                    tracing::warn!("registry unreachable: NOT_SERVING");
                    self.readiness.not_ready(format!(
                        "registry unreachable: no answer to a ping within {} ms",
                        interval.as_millis()
                    ));
                    set_status(&self.health, ServingStatus::NotServing).await;
                }
            }
        }
    }
}
