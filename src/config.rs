//! Configuration: one clap struct, read from flags, then environment variables,
//! then an optional TOML file (`--config`), then defaults, in that order of
//! precedence. The TOML file uses the flags' names with '_' for '-'.

use crate::domain::{CallerName, SignerName};
use crate::secret::SecretString;
use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// TOML file with any of these settings (flags and environment win over it).
    #[arg(long, env = "PRESIGND_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address the gRPC server listens on (port 0: any free port).
    #[arg(long, env = "PRESIGND_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Address of the Prometheus metrics listener, serving GET /metrics (port 0:
    /// any free port).
    #[arg(
        long,
        env = "PRESIGND_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_listen: SocketAddr,

    /// Seconds between recomputations of the outstanding-links gauge, from the
    /// link roll-up (tens of milliseconds on 60M links; see docs/BENCHMARKS.md).
    #[arg(long, env = "PRESIGND_METRICS_REFRESH_SECS", default_value_t = 60)]
    pub metrics_refresh_secs: u64,

    /// PostgreSQL URL of the registry. TLS: `?sslmode=verify-full&sslrootcert=/ca.pem`
    /// (also `require`, `disable`).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretString>,

    /// File holding the registry's URL (instead of --database-url).
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,

    /// Log format: auto (text on a terminal, JSON otherwise), json or text.
    #[arg(long, env = "PRESIGND_LOG_FORMAT", value_enum, default_value = "auto")]
    pub log_format: crate::telemetry::LogFormat,

    /// Log filter, e.g. `info` or `presignd=debug,sqlx=warn` (default: RUST_LOG,
    /// else info).
    #[arg(long, env = "PRESIGND_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// PostgreSQL URL of a streaming replica of the registry: GetLink, ListLinks
    /// and SummarizeLinks read there (the read pool connects to it), seeing
    /// what the replica has replayed. Everything that decides or writes
    /// (IssueLink, LookupLink, PlanRevocation, RotateKey, KeyService's
    /// listings) stays on the primary. Unset: every read goes to the primary.
    #[arg(long, env = "PRESIGND_READ_DATABASE_URL", hide_env_values = true)]
    pub read_database_url: Option<SecretString>,

    /// File holding the replica's URL (instead of --read-database-url).
    #[arg(long, env = "PRESIGND_READ_DATABASE_URL_FILE")]
    pub read_database_url_file: Option<PathBuf>,

    /// Days a link is kept after it expired: a day's partition of links is
    /// dropped once every link in it expired more than this long ago (0: keep
    /// every link).
    #[arg(long, env = "PRESIGND_RETENTION_DAYS", default_value_t = 30)]
    pub retention_days: u32,

    /// Days audit events are kept: a month of the audit trail is dropped (and
    /// the drop audited) once it ended more than this long ago. At least 90.
    #[arg(long, env = "PRESIGND_AUDIT_RETENTION_DAYS", default_value_t = 400)]
    pub audit_retention_days: u32,

    /// UTC hours in which retention may drop partitions, START-END: 2-5 is
    /// 02:00 to 05:00, 22-4 runs past midnight, 0-24 is any hour. A day's drop
    /// releases its files at once and can raise IssueLink's p99 for seconds
    /// (docs/DEPLOY.md, "The registry's disks"): pick your quietest hours.
    #[arg(long, env = "PRESIGND_RETENTION_HOURS", default_value = "0-24")]
    pub retention_hours: String,

    /// Largest number of registry connections.
    #[arg(long, env = "PRESIGND_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// Registry connections opened before the server reports SERVING and kept
    /// open (a broken one is replaced): a burst on a server that just started
    /// finds them ready instead of waiting for connections to open, which on
    /// a loaded host can take longer than --db-acquire-timeout-secs. Default:
    /// --db-max-connections (a pool of fixed size); lower it where
    /// PostgreSQL's max_connections is scarce.
    #[arg(long, env = "PRESIGND_DB_MIN_CONNECTIONS")]
    pub db_min_connections: Option<u32>,

    /// Registry connections of the read RPCs (GetLink, ListLinks, SummarizeLinks,
    /// LookupLink, KeyService's listings): a pool of their own, so they never
    /// take IssueLink's.
    #[arg(long, env = "PRESIGND_READ_DB_MAX_CONNECTIONS", default_value_t = 4)]
    pub read_db_max_connections: u32,

    /// Seconds a read RPC's statement may run before Postgres cancels it
    /// (RESOURCE_EXHAUSTED).
    #[arg(
        long,
        env = "PRESIGND_READ_STATEMENT_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub read_statement_timeout_secs: u64,

    /// Read RPCs per second per caller (0: no limit), a quota separate from
    /// IssueLink's.
    #[arg(long, env = "PRESIGND_READ_RATE_PER_SEC", default_value_t = 20)]
    pub read_rate_per_sec: u32,

    /// Burst of read RPCs per caller (0: the rate).
    #[arg(long, env = "PRESIGND_READ_BURST", default_value_t = 40)]
    pub read_burst: u32,

    /// Seconds to wait for a registry connection before failing with UNAVAILABLE.
    #[arg(long, env = "PRESIGND_DB_ACQUIRE_TIMEOUT_SECS", default_value_t = 2)]
    pub db_acquire_timeout_secs: u64,

    /// Seconds between registry liveness checks (health turns NOT_SERVING on failure).
    #[arg(long, env = "PRESIGND_HEALTH_INTERVAL_SECS", default_value_t = 2)]
    pub health_interval_secs: u64,

    /// Run pending migrations when serving starts.
    #[arg(long, env = "PRESIGND_MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,

    /// Master key sealing stored secrets: 32 bytes as 64 hex chars or base64.
    #[arg(long, env = "PRESIGND_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<SecretString>,

    /// File holding the master key (instead of --master-key).
    #[arg(long, env = "PRESIGND_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,

    /// Callers allowed in, as NAME:SHA256HEX(token), comma separated. Only token
    /// hashes are configured; `presignd hash-token` computes one.
    #[arg(long, env = "PRESIGND_CALLERS", value_delimiter = ',')]
    pub callers: Vec<String>,

    /// File of callers, one NAME:SHA256HEX(token) per line (# comments allowed),
    /// added to --callers; re-read on SIGHUP and when it changes.
    #[arg(long, env = "PRESIGND_CALLERS_FILE")]
    pub callers_file: Option<PathBuf>,

    /// Seconds between checks of the reloadable files (callers, policy, TLS
    /// certificate and key, client CA) for changes; 0: only on SIGHUP.
    #[arg(long, env = "PRESIGND_RELOAD_POLL_SECS", default_value_t = 10)]
    pub reload_poll_secs: u64,

    /// Seconds after which a client connection is asked to reconnect (HTTP/2
    /// GOAWAY), so load spreads over replicas added later; 0: never.
    #[arg(long, env = "PRESIGND_MAX_CONNECTION_AGE_SECS", default_value_t = 0)]
    pub max_connection_age_secs: u64,

    /// Callers with the admin role (may use KeyService).
    #[arg(long, env = "PRESIGND_ADMINS", value_delimiter = ',')]
    pub admins: Vec<String>,

    /// Server certificate chain (PEM): serve gRPC over TLS (with --tls-key).
    #[arg(long, env = "PRESIGND_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// Server private key (PEM) for --tls-cert.
    #[arg(long, env = "PRESIGND_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// CA bundle (PEM): client certificates it issued identify callers (mTLS;
    /// needs --tls-cert and --policy-file). A certificate names the caller whose
    /// policy entry lists one of its names (URI SAN, DNS SAN or CN) in cert_names.
    #[arg(long, env = "PRESIGND_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,

    /// Policy file (TOML): per caller, the buckets, key prefixes, methods, max TTL,
    /// role, rate limit and signer it may use. Reloaded on SIGHUP. Without one,
    /// every caller may do anything on the first signer.
    #[arg(long, env = "PRESIGND_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,

    /// IssueLink requests per second per caller (0: no limit), for callers whose
    /// policy sets none.
    #[arg(long, env = "PRESIGND_ISSUE_RATE_PER_SEC", default_value_t = 0)]
    pub issue_rate_per_sec: u32,

    /// Burst of IssueLink requests per caller (0: the rate).
    #[arg(long, env = "PRESIGND_ISSUE_BURST", default_value_t = 0)]
    pub issue_burst: u32,

    /// Denied requests recorded in the audit trail per second at most (0: every
    /// one), not counting repeats (see --audit-denial-window-secs); the rest are
    /// counted in the log.
    #[arg(long, env = "PRESIGND_AUDIT_DENIALS_PER_SEC", default_value_t = 100)]
    pub audit_denials_per_sec: u32,

    /// Seconds during which repeats of a denial (same peer address, caller, RPC,
    /// code and message) are counted rather than recorded one by one: the first
    /// is a row at once, the repeats one row with their count when the window
    /// closes.
    #[arg(long, env = "PRESIGND_AUDIT_DENIAL_WINDOW_SECS", default_value_t = 60)]
    pub audit_denial_window_secs: u64,

    /// WatchRevocations streams open at once on this replica, at most (each holds
    /// a task and up to a page of events); one more answers RESOURCE_EXHAUSTED.
    #[arg(long, env = "PRESIGND_MAX_WATCHERS", default_value_t = 1000)]
    pub max_watchers: usize,

    /// WatchRevocations streams open at once per caller on this replica, at
    /// most: a caller that leaks streams exhausts its own share, not everyone's.
    #[arg(long, env = "PRESIGND_MAX_WATCHERS_PER_CALLER", default_value_t = 100)]
    pub max_watchers_per_caller: usize,

    /// Signers (revocation domains), comma separated. The first signs links by default.
    #[arg(
        long,
        env = "PRESIGND_SIGNERS",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub signers: Vec<String>,

    /// Blast-radius budgets, comma separated, each SIGNER:links=N:age=D (either
    /// limit or both; D in s, m, h or d, e.g. 24h): a signer's active key is
    /// rotated GRACEFUL once it holds 3/4 of N outstanding links (the rest is
    /// headroom for the links issued during the rotation) or has signed for D,
    /// so revoking any one key kills at most about N links. With --backend=aws
    /// only age budgets of at least 7d (IAM allows two keys per user).
    #[arg(long, env = "PRESIGND_KEY_BUDGETS", value_delimiter = ',')]
    pub key_budgets: Vec<String>,

    /// Where keys are managed: garage (admin API v2) or aws (IAM).
    #[arg(long, env = "PRESIGND_BACKEND", default_value = "garage")]
    pub backend: String,

    /// Buckets every signer signs for, comma separated (with the buckets the
    /// policy's entries name for their signer). Each signer's key is granted
    /// on each (garage backend) and proven with a probe before a link for it
    /// is issued (the preflight); the first also proves a new key usable.
    #[arg(long, env = "PRESIGND_BUCKETS", value_delimiter = ',')]
    pub buckets: Vec<String>,

    /// Regions of buckets, as BUCKET=REGION, comma separated: their links are
    /// signed for that region, never detected. Other buckets: detected on the
    /// aws backend (HeadBucket's x-amz-bucket-region), else --s3-region.
    #[arg(long, env = "PRESIGND_BUCKET_REGIONS", value_delimiter = ',')]
    pub bucket_regions: Vec<String>,

    /// S3 endpoint the links point at.
    #[arg(
        long,
        env = "PRESIGND_S3_ENDPOINT",
        default_value = "http://127.0.0.1:3900"
    )]
    pub s3_endpoint: String,

    /// S3 region the links are signed for (unless --bucket-regions or, on the
    /// aws backend, the bucket's detected region says otherwise).
    #[arg(long, env = "PRESIGND_S3_REGION", default_value = "garage")]
    pub s3_region: String,

    /// Path-style URLs (endpoint/bucket/key) instead of virtual-hosted style.
    #[arg(long, env = "PRESIGND_S3_PATH_STYLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub s3_path_style: bool,

    /// Garage admin API v2 base URL.
    #[arg(
        long,
        env = "PRESIGND_GARAGE_ADMIN_URL",
        default_value = "http://127.0.0.1:3903"
    )]
    pub garage_admin_url: String,

    /// Garage admin API bearer token.
    #[arg(long, env = "PRESIGND_GARAGE_ADMIN_TOKEN", hide_env_values = true)]
    pub garage_admin_token: Option<SecretString>,

    /// File holding the Garage admin API token (instead of --garage-admin-token).
    #[arg(long, env = "PRESIGND_GARAGE_ADMIN_TOKEN_FILE")]
    pub garage_admin_token_file: Option<PathBuf>,

    /// Writers committing link rows in batches (group commit). One commits
    /// while another fills the next batch, which goes when that commit ends;
    /// it goes alongside only once that commit has lasted 2 ms (a key's
    /// state change, a stalled registry), so a third writer matters only when
    /// two commits wait at once. Postgres's cost per batch is mostly fixed
    /// (about 0.2 ms of CPU here), so fuller batches cost it less per link
    /// (docs/BENCHMARKS.md).
    #[arg(long, env = "PRESIGND_RECORD_WORKERS", default_value_t = 2)]
    pub record_workers: usize,

    /// Most link rows one commit holds.
    #[arg(long, env = "PRESIGND_RECORD_BATCH_MAX", default_value_t = 256)]
    pub record_batch_max: usize,

    /// Seconds a batch of link rows may wait for its commit's answer (a
    /// commit takes milliseconds; a key's state change can hold it a few
    /// seconds). Past it the batch's requests get UNAVAILABLE, no URL leaves,
    /// and its connection is closed: a registry that stops answering without
    /// closing the connection (a network black hole, a frozen primary) does
    /// not hold issuance until TCP gives up.
    #[arg(long, env = "PRESIGND_RECORD_TIMEOUT_SECS", default_value_t = 10)]
    pub record_timeout_secs: u64,

    /// Seconds between background upkeep runs: deleting keys a crash left
    /// created and unrecorded (key intents), retrying unfinished revocations,
    /// deactivating retired keys whose last link expired, and folding the link
    /// roll-up that SummarizeLinks reads.
    #[arg(long, env = "PRESIGND_MAINTENANCE_INTERVAL_SECS", default_value_t = 15)]
    pub maintenance_interval_secs: u64,

    /// AWS region for IAM (aws backend).
    #[arg(long, env = "PRESIGND_AWS_REGION", default_value = "us-east-1")]
    pub aws_region: String,

    /// IAM endpoint override (aws backend), e.g. a moto server in tests.
    #[arg(long, env = "PRESIGND_AWS_IAM_ENDPOINT")]
    pub aws_iam_endpoint: Option<String>,

    /// A signer's IAM user is this prefix followed by the signer's name.
    #[arg(
        long,
        env = "PRESIGND_AWS_IAM_USER_PREFIX",
        default_value = "presignd-"
    )]
    pub aws_iam_user_prefix: String,

    /// How many times a new key is tried against the backend before it is used.
    #[arg(long, env = "PRESIGND_KEY_VERIFY_ATTEMPTS", default_value_t = 20)]
    pub key_verify_attempts: u32,
}

/// The most link rows one group commit may hold (`--record-batch-max`):
/// a batch is one statement's arrays, held in memory until it commits.
pub const MAX_RECORD_BATCH: usize = 10_000;

impl Config {
    /// Parses the matches of a command built with `Config::augment_args`, then
    /// fills every setting not given by flag or environment from `--config`.
    pub fn from_matches(matches: &ArgMatches) -> anyhow::Result<Self> {
        Self::merged(matches)?.checked()
    }

    /// The settings from flags and environment, then the config file's.
    fn merged(matches: &ArgMatches) -> anyhow::Result<Self> {
        let cli = Self::from_arg_matches(matches)?;
        let Some(path) = cli.config.clone() else {
            return Ok(cli);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let file: toml::Table = toml::from_str(&text)
            .with_context(|| format!("parsing config file {}", path.display()))?;
        let mut merged = serde_json::to_value(&cli)?;
        let obj = merged
            .as_object_mut()
            .expect("Config serializes to an object");
        let base = serde_json::Value::Object(obj.clone());
        for (key, value) in file {
            if !obj.contains_key(&key) {
                bail!("config file {}: unknown setting {key:?}", path.display());
            }
            let given = matches!(
                matches.value_source(&key),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            if !given {
                // Each setting on its own first, so a wrong one is named.
                let mut alone = base.clone();
                alone[&key] = serde_json::to_value(value)?;
                if let Err(e) = serde_json::from_value::<Self>(alone.clone()) {
                    bail!("config file {}: {key}: {e}", path.display());
                }
                obj.insert(key.clone(), alone[&key].take());
            }
        }
        let mut config: Self = serde_json::from_value(merged).with_context(|| {
            format!(
                "config file {}: a setting has the wrong type",
                path.display()
            )
        })?;
        config.config = Some(path);
        Ok(config)
    }

    /// Settings checked where they are read: `--buckets` trimmed (as the
    /// other lists are) and each a valid bucket name, `--record-batch-max`
    /// within 1..=`MAX_RECORD_BATCH`, the pools of at least one connection;
    /// a bad one is refused naming its flag.
    fn checked(mut self) -> anyhow::Result<Self> {
        for (size, flag) in [
            (
                self.db_max_connections,
                "--db-max-connections (PRESIGND_DB_MAX_CONNECTIONS)",
            ),
            (
                self.read_db_max_connections,
                "--read-db-max-connections (PRESIGND_READ_DB_MAX_CONNECTIONS)",
            ),
        ] {
            if size == 0 {
                bail!("{flag} is 0: a pool needs at least one connection");
            }
        }
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for b in self
            .buckets
            .iter()
            .map(|b| b.trim())
            .filter(|b| !b.is_empty())
        {
            let bucket = crate::domain::Bucket::parse(b).map_err(|e| {
                anyhow::anyhow!("--buckets (PRESIGND_BUCKETS): {b:?}: {}", e.reason)
            })?;
            buckets.push(bucket.to_string());
        }
        self.buckets = buckets;
        if !(1..=MAX_RECORD_BATCH).contains(&self.record_batch_max) {
            bail!(
                "--record-batch-max (PRESIGND_RECORD_BATCH_MAX) is {}: it must be 1 to {MAX_RECORD_BATCH}",
                self.record_batch_max
            );
        }
        Ok(self)
    }

    /// The registry's URL, from --database-url or --database-url-file.
    pub fn database_url(&self) -> anyhow::Result<SecretString> {
        secret_setting(
            &self.database_url,
            &self.database_url_file,
            "--database-url (DATABASE_URL)",
            "--database-url-file (DATABASE_URL_FILE)",
        )?
        .context("no registry configured: set DATABASE_URL or DATABASE_URL_FILE")
    }

    /// The registry's connect options: the URL parsed as libpq users know it
    /// (`sslmode`, `sslrootcert`, `sslcert`, `sslkey` in its query). A
    /// certificate or key file the URL names must be readable now: sqlx reads
    /// it at each connection, and its error then does not say which file.
    pub fn database_options(&self) -> anyhow::Result<sqlx::postgres::PgConnectOptions> {
        let url = self.database_url()?;
        let options = url
            .expose()
            .parse()
            .context("DATABASE_URL is not a valid PostgreSQL URL")?;
        let query = url::Url::parse(url.expose()).context("DATABASE_URL is not a URL")?;
        for (key, value) in query.query_pairs() {
            let names_a_file = matches!(
                &*key,
                "sslrootcert"
                    | "ssl-root-cert"
                    | "ssl-ca"
                    | "sslcert"
                    | "ssl-cert"
                    | "sslkey"
                    | "ssl-key"
            ) && !value.trim_start().starts_with("-----BEGIN");
            if names_a_file {
                std::fs::File::open(&*value)
                    .with_context(|| format!("DATABASE_URL's {key}: reading {value}"))?;
            }
        }
        Ok(options)
    }

    /// The Garage admin token, from --garage-admin-token or its _FILE form.
    pub fn garage_admin_token(&self) -> anyhow::Result<Option<SecretString>> {
        secret_setting(
            &self.garage_admin_token,
            &self.garage_admin_token_file,
            "--garage-admin-token (PRESIGND_GARAGE_ADMIN_TOKEN)",
            "--garage-admin-token-file (PRESIGND_GARAGE_ADMIN_TOKEN_FILE)",
        )
    }

    /// Every configured caller spec: --callers, then the lines of --callers-file.
    pub fn caller_specs(&self) -> anyhow::Result<Vec<String>> {
        let mut specs = self.callers.clone();
        if let Some(path) = &self.callers_file {
            specs.extend(read_callers_file(path)?);
        }
        Ok(specs)
    }

    pub fn reload_poll(&self) -> Option<Duration> {
        (self.reload_poll_secs > 0).then(|| Duration::from_secs(self.reload_poll_secs))
    }

    pub fn max_connection_age(&self) -> Option<Duration> {
        (self.max_connection_age_secs > 0)
            .then(|| Duration::from_secs(self.max_connection_age_secs))
    }

    /// The read replica's connect options, if --read-database-url is set.
    pub fn read_database(&self) -> anyhow::Result<Option<sqlx::postgres::PgConnectOptions>> {
        secret_setting(
            &self.read_database_url,
            &self.read_database_url_file,
            "--read-database-url (PRESIGND_READ_DATABASE_URL)",
            "--read-database-url-file (PRESIGND_READ_DATABASE_URL_FILE)",
        )?
        .map(|url| {
            url.expose()
                .parse()
                .context("PRESIGND_READ_DATABASE_URL is not a valid PostgreSQL URL")
        })
        .transpose()
    }

    /// The retention settings; an audit retention under 90 days, or drop
    /// hours that are not a window, are refused.
    pub fn retention(&self) -> anyhow::Result<crate::lifecycle::Retention> {
        let hours: crate::lifecycle::DropHours = self
            .retention_hours
            .parse()
            .map_err(|e| anyhow::anyhow!("--retention-hours {e}"))?;
        Ok(
            crate::lifecycle::Retention::new(self.retention_days, self.audit_retention_days)?
                .with_drop_hours(hours),
        )
    }

    /// `--db-min-connections`, `--db-max-connections` when unset; more than
    /// the pool may hold is refused.
    pub fn db_min_connections(&self) -> anyhow::Result<u32> {
        let max = self.db_max_connections;
        match self.db_min_connections {
            None => Ok(max),
            Some(min) if min <= max => Ok(min),
            Some(min) => bail!(
                "--db-min-connections (PRESIGND_DB_MIN_CONNECTIONS) is {min}, more than --db-max-connections (PRESIGND_DB_MAX_CONNECTIONS) {max}: lower it, or raise the maximum"
            ),
        }
    }

    pub fn db_acquire_timeout(&self) -> Duration {
        Duration::from_secs(self.db_acquire_timeout_secs.max(1))
    }

    pub fn maintenance_interval(&self) -> Duration {
        Duration::from_secs(self.maintenance_interval_secs.max(1))
    }

    pub fn metrics_refresh(&self) -> Duration {
        Duration::from_secs(self.metrics_refresh_secs.max(1))
    }

    pub fn record_timeout(&self) -> Duration {
        Duration::from_secs(self.record_timeout_secs.max(1))
    }

    pub fn read_statement_timeout(&self) -> Duration {
        Duration::from_secs(self.read_statement_timeout_secs.max(1))
    }

    pub fn audit_denial_window(&self) -> Duration {
        Duration::from_secs(self.audit_denial_window_secs.max(1))
    }

    pub fn health_interval(&self) -> Duration {
        Duration::from_secs(self.health_interval_secs.max(1))
    }

    /// The master key, from --master-key or --master-key-file; a clear error if
    /// neither is set or the value is malformed.
    pub fn master_key(&self) -> anyhow::Result<crate::seal::MasterKey> {
        let text = secret_setting(
            &self.master_key,
            &self.master_key_file,
            "PRESIGND_MASTER_KEY",
            "PRESIGND_MASTER_KEY_FILE",
        )?
        .context(
            "no master key: set PRESIGND_MASTER_KEY (64 hex characters, e.g. from `openssl rand -hex 32`) or PRESIGND_MASTER_KEY_FILE",
        )?;
        crate::seal::MasterKey::parse(text.expose()).context("PRESIGND_MASTER_KEY")
    }

    /// `--bucket-regions` as bucket → region.
    pub fn bucket_region_map(&self) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        let mut map = std::collections::BTreeMap::new();
        for entry in self
            .bucket_regions
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
        {
            let Some((bucket, region)) = entry
                .split_once('=')
                .map(|(b, r)| (b.trim(), r.trim()))
                .filter(|(b, r)| !b.is_empty() && !r.is_empty())
            else {
                bail!("--bucket-regions (PRESIGND_BUCKET_REGIONS): {entry:?} is not BUCKET=REGION");
            };
            if map.insert(bucket.to_owned(), region.to_owned()).is_some() {
                bail!("--bucket-regions (PRESIGND_BUCKET_REGIONS): bucket {bucket} is given twice");
            }
        }
        Ok(map)
    }

    pub fn signer_names(&self) -> anyhow::Result<Vec<SignerName>> {
        if self.signers.is_empty() {
            bail!("no signers configured: set PRESIGND_SIGNERS");
        }
        self.signers
            .iter()
            .map(|s| SignerName::parse(s.trim()).map_err(anyhow::Error::from))
            .collect()
    }

    /// The blast-radius budgets (--key-budgets), each of a configured signer,
    /// at most one per signer, and none the backend cannot honour.
    pub fn key_budgets(&self) -> anyhow::Result<crate::keys::KeyBudgets> {
        let signers = self.signer_names()?;
        let mut budgets = Vec::new();
        for spec in self.key_budgets.iter().filter(|s| !s.trim().is_empty()) {
            let (signer, budget) = crate::domain::KeyBudget::parse(spec).map_err(|e| {
                anyhow::anyhow!("--key-budgets (PRESIGND_KEY_BUDGETS): {}", e.reason)
            })?;
            if !signers.contains(&signer) {
                bail!("--key-budgets: {signer:?} is not one of --signers");
            }
            if budgets.iter().any(|(s, _)| *s == signer) {
                bail!("--key-budgets: signer {signer} has two budgets; give it one");
            }
            if self.backend == "aws" {
                refuse_on_aws(&signer, &budget)?;
            }
            budgets.push((signer, budget));
        }
        Ok(crate::keys::KeyBudgets::new(budgets))
    }

    /// What a policy is validated against.
    pub fn policy_settings(&self) -> anyhow::Result<crate::policy::Settings> {
        Ok(crate::policy::Settings {
            signers: self.signer_names()?,
            admins: self.admin_names()?,
            default_rate: crate::policy::RateSpec::new(self.issue_rate_per_sec, self.issue_burst),
        })
    }

    /// The TLS setup, if --tls-cert is given.
    pub fn tls(&self) -> anyhow::Result<Option<crate::tls::TlsSetup>> {
        match (&self.tls_cert, &self.tls_key, &self.client_ca) {
            (None, None, None) => Ok(None),
            (Some(_), Some(_), Some(_)) if self.policy_file.is_none() => bail!(
                "--client-ca needs --policy-file: a client certificate names a caller only when that caller's policy entry lists the certificate's name in cert_names"
            ),
            (Some(cert), Some(key), ca) => crate::tls::load(cert, key, ca.as_deref()).map(Some),
            (None, _, Some(_)) => bail!("--client-ca needs --tls-cert and --tls-key (mTLS is TLS)"),
            _ => bail!("set both --tls-cert and --tls-key"),
        }
    }

    pub fn admin_names(&self) -> anyhow::Result<Vec<CallerName>> {
        self.admins
            .iter()
            .map(|s| CallerName::parse(s.trim()).map_err(anyhow::Error::from))
            .collect()
    }
}

/// A secret given inline or as a file (a Kubernetes secret mount, systemd
/// LoadCredential): never both. Surrounding whitespace (a trailing newline) is
/// not part of the secret.
fn secret_setting(
    inline: &Option<SecretString>,
    file: &Option<PathBuf>,
    inline_name: &str,
    file_name: &str,
) -> anyhow::Result<Option<SecretString>> {
    match (inline, file) {
        (Some(_), Some(_)) => bail!("set {inline_name} or {file_name}, not both"),
        (Some(s), None) => Ok(Some(s.clone())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{file_name}: reading {}", path.display()))?;
            let text = text.trim();
            if text.is_empty() {
                bail!("{file_name}: {} is empty", path.display());
            }
            Ok(Some(SecretString::new(text.to_owned())))
        }
        (None, None) => Ok(None),
    }
}

/// A budget rotates the signer's key while the old one stays live for its
/// links (GRACEFUL), up to a link's longest life, 7 days: the signer then has
/// two keys, and the next rotation a third, which IAM (two access keys per
/// user) refuses. Only a rotation every 7 days or less often fits: by then the
/// retired key's links have expired and its slot is freed. The alternative,
/// a pool of IAM users per signer, is not built: several signers (one IAM
/// user each) split the blast radius the same way.
fn refuse_on_aws(signer: &SignerName, budget: &crate::domain::KeyBudget) -> anyhow::Result<()> {
    let week = crate::domain::MAX_TTL;
    if budget.max_links.is_some() || budget.max_age.is_some_and(|age| age < week) {
        bail!(
            "--key-budgets: signer {signer}'s budget cannot be kept with --backend=aws: AWS IAM allows two access keys per user, \
             and a budget rotation keeps the old key live until its links expire (up to 7 days), so a second rotation within \
             7 days would need a third key and fail. On AWS only an age budget of at least 7d (age=7d) is accepted; to keep \
             blast radii small there, split the callers over more signers (one IAM user each) in the policy"
        );
    }
    Ok(())
}

/// The caller specs of a callers file: one per line, blank lines and `#`
/// comments skipped.
pub fn read_callers_file(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--callers-file: reading {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    fn matches(args: &[&str]) -> ArgMatches {
        Cli::command().try_get_matches_from(args).unwrap()
    }

    #[test]
    fn a_file_setting_fills_what_flags_did_not_give() {
        let dir = std::env::temp_dir().join(format!("presignd-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "s3_region = \"eu-west-3\"\nlisten = \"127.0.0.1:9\"\n",
        )
        .unwrap();
        let m = matches(&[
            "t",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:7",
        ]);
        let c = Config::from_matches(&m).unwrap();
        assert_eq!(c.s3_region, "eu-west-3");
        assert_eq!(c.listen.port(), 7, "the flag wins over the file");
    }

    #[test]
    fn an_unknown_file_setting_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("presignd-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "s3_regoin = \"x\"\n").unwrap();
        let m = matches(&["t", "--config", path.to_str().unwrap()]);
        let e = Config::from_matches(&m).unwrap_err().to_string();
        assert!(e.contains("s3_regoin"), "{e}");
    }

    #[test]
    fn the_minimum_connections_default_to_the_maximum_and_never_pass_it() {
        let c = Config::from_matches(&matches(&["t", "--db-max-connections=7"])).unwrap();
        assert_eq!(c.db_min_connections().unwrap(), 7, "a pool of fixed size");
        let c = Config::from_matches(&matches(&["t", "--db-min-connections=3"])).unwrap();
        assert_eq!(c.db_min_connections().unwrap(), 3);
        let c = Config::from_matches(&matches(&[
            "t",
            "--db-min-connections=9",
            "--db-max-connections=8",
        ]))
        .unwrap();
        let e = format!("{:#}", c.db_min_connections().unwrap_err());
        assert!(
            e.contains("--db-min-connections") && e.contains("9") && e.contains("8"),
            "{e}"
        );
    }

    #[test]
    fn a_file_setting_of_the_wrong_type_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("presignd-cfg3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "s3_region = \"eu\"\ndb_max_connections = \"16\"\n").unwrap();
        let m = matches(&["t", "--config", path.to_str().unwrap()]);
        let e = format!("{:#}", Config::from_matches(&m).unwrap_err());
        assert!(e.contains("db_max_connections:"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn buckets_are_trimmed_and_a_bad_one_is_refused_naming_the_flag() {
        let c = Config::from_matches(&matches(&["t", "--buckets=uploads, reports,"])).unwrap();
        assert_eq!(c.buckets, ["uploads", "reports"]);
        let e = format!(
            "{:#}",
            Config::from_matches(&matches(&["t", "--buckets=uploads,My_Bucket"])).unwrap_err()
        );
        assert!(e.contains("--buckets") && e.contains("My_Bucket"), "{e}");
    }

    #[test]
    fn a_record_batch_of_none_or_too_many_is_refused_naming_the_flag() {
        for n in ["0", "10001"] {
            let e = format!(
                "{:#}",
                Config::from_matches(&matches(&["t", &format!("--record-batch-max={n}")]))
                    .unwrap_err()
            );
            assert!(e.contains("--record-batch-max") && e.contains(n), "{e}");
        }
        let c = Config::from_matches(&matches(&["t", "--record-batch-max=10000"])).unwrap();
        assert_eq!(c.record_batch_max, 10_000);
    }

    #[test]
    fn a_pool_of_no_connections_is_refused_naming_its_flag() {
        for flag in ["--db-max-connections", "--read-db-max-connections"] {
            let e = format!(
                "{:#}",
                Config::from_matches(&matches(&["t", &format!("{flag}=0")]))
                    .expect_err("0 is refused")
            );
            assert!(e.contains(flag) && e.contains("is 0"), "{e}");
        }
        let c = Config::from_matches(&matches(&["t"])).unwrap();
        assert_eq!((c.db_max_connections, c.read_db_max_connections), (16, 4));
    }

    #[test]
    fn a_missing_master_key_is_a_clear_error() {
        let mut c = Config::from_matches(&matches(&["t"])).unwrap();
        (c.master_key, c.master_key_file) = (None, None);
        let e = format!("{:#}", c.master_key().unwrap_err());
        assert!(e.contains("PRESIGND_MASTER_KEY"), "{e}");
    }

    #[test]
    fn a_malformed_master_key_is_a_clear_error() {
        let mut c = Config::from_matches(&matches(&["t"])).unwrap();
        (c.master_key, c.master_key_file) = (Some(SecretString::new("nothex".into())), None);
        let e = format!("{:#}", c.master_key().unwrap_err());
        assert!(e.contains("malformed"), "{e}");
    }

    #[test]
    fn a_database_url_naming_a_missing_ca_file_says_which() {
        let mut c = Config::from_matches(&matches(&["t"])).unwrap();
        (c.database_url, c.database_url_file) = (
            Some(SecretString::new(
                "postgres://u:secret@db/p?sslmode=verify-full&sslrootcert=/nowhere/ca.pem".into(),
            )),
            None,
        );
        let e = format!("{:#}", c.database_options().unwrap_err());
        assert!(
            e.contains("sslrootcert: reading /nowhere/ca.pem") && e.contains("No such file"),
            "{e}"
        );
        assert!(!e.contains("secret"), "the URL's password leaked: {e}");
        let ca = temp_file("ca.pem", "-----BEGIN CERTIFICATE-----\n");
        c.database_url = Some(SecretString::new(format!(
            "postgres://u:secret@db/p?sslmode=verify-full&sslrootcert={}",
            ca.display()
        )));
        let options = c.database_options().unwrap();
        assert!(matches!(
            options.get_ssl_mode(),
            sqlx::postgres::PgSslMode::VerifyFull
        ));
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("presignd-cfg-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_secret_is_read_from_its_file_without_the_trailing_newline() {
        let url = temp_file("db", "postgres://u:p@db/presignd\n");
        let token = temp_file("tok", "garage-token\n");
        let m = matches(&[
            "t",
            &format!("--database-url-file={}", url.display()),
            &format!("--garage-admin-token-file={}", token.display()),
        ]);
        let mut c = Config::from_matches(&m).unwrap();
        // The test runner's own DATABASE_URL is not part of this case.
        c.database_url = None;
        assert_eq!(
            c.database_url().unwrap().expose(),
            "postgres://u:p@db/presignd"
        );
        assert_eq!(
            c.garage_admin_token().unwrap().unwrap().expose(),
            "garage-token"
        );
    }

    #[test]
    fn a_secret_given_twice_or_from_an_empty_file_is_a_clear_error() {
        let url = temp_file("db2", "postgres://u:p@db/presignd");
        let m = matches(&[
            "t",
            "--database-url=postgres://x@y/z",
            &format!("--database-url-file={}", url.display()),
        ]);
        let e = format!(
            "{:#}",
            Config::from_matches(&m)
                .unwrap()
                .database_url()
                .unwrap_err()
        );
        assert!(e.contains("not both"), "{e}");
        let empty = temp_file("empty", "\n");
        let m = matches(&[
            "t",
            &format!("--garage-admin-token-file={}", empty.display()),
        ]);
        let e = format!(
            "{:#}",
            Config::from_matches(&m)
                .unwrap()
                .garage_admin_token()
                .unwrap_err()
        );
        assert!(
            e.contains("is empty") && e.contains("PRESIGND_GARAGE_ADMIN_TOKEN_FILE"),
            "{e}"
        );
    }

    #[test]
    fn a_callers_file_adds_its_lines_to_the_callers() {
        let file = temp_file("callers", "# ops team\nops:abc\n\n  billing:def  \n");
        let m = matches(&[
            "t",
            "--callers=dev:123",
            &format!("--callers-file={}", file.display()),
        ]);
        let c = Config::from_matches(&m).unwrap();
        assert_eq!(
            c.caller_specs().unwrap(),
            ["dev:123", "ops:abc", "billing:def"]
        );
    }

    #[test]
    fn client_certificates_without_a_policy_file_are_refused() {
        let m = matches(&[
            "t",
            "--tls-cert=/nonexistent/c.pem",
            "--tls-key=/nonexistent/k.pem",
            "--client-ca=/nonexistent/ca.pem",
        ]);
        let c = Config::from_matches(&m).unwrap();
        let e = format!("{:#}", c.tls().err().expect("refused"));
        assert!(e.contains("--client-ca needs --policy-file"), "{e}");
    }

    #[test]
    fn an_audit_retention_under_90_days_is_refused_with_a_message() {
        let c = Config::from_matches(&matches(&["t", "--audit-retention-days", "89"])).unwrap();
        let e = format!("{:#}", c.retention().unwrap_err());
        assert!(e.contains("--audit-retention-days is 89"), "{e}");
        assert!(e.contains("at least 90"), "{e}");
        let c = Config::from_matches(&matches(&["t"])).unwrap();
        let r = c.retention().unwrap();
        assert_eq!((r.link_days, r.audit_days), (30, 400), "the defaults");
        assert_eq!(
            r.drop_hours,
            crate::lifecycle::DropHours::ANY,
            "the defaults"
        );
    }

    #[test]
    fn drop_hours_that_are_not_a_window_are_refused_naming_the_flag() {
        for (value, says) in [
            ("25-3", "not START-END"),
            ("3-25", "not START-END"),
            ("3", "not START-END"),
            ("a-b", "not START-END"),
            ("4-4", "empty window"),
        ] {
            let c = Config::from_matches(&matches(&["t", "--retention-hours", value])).unwrap();
            let e = format!("{:#}", c.retention().unwrap_err());
            assert!(e.starts_with("--retention-hours"), "{value}: {e}");
            assert!(e.contains(says), "{value}: {e}");
        }
        let c = Config::from_matches(&matches(&["t", "--retention-hours", "22-4"])).unwrap();
        assert_eq!(c.retention().unwrap().drop_hours.to_string(), "22-4");
    }

    #[test]
    fn a_budget_on_aws_is_refused_saying_why_unless_it_rotates_weekly_at_most() {
        let c = Config::from_matches(&matches(&[
            "t",
            "--backend=aws",
            "--signers=default,ops",
            "--key-budgets=default:links=100",
        ]))
        .unwrap();
        let e = format!("{:#}", c.key_budgets().err().expect("refused"));
        assert!(e.contains("two access keys per user"), "{e}");
        assert!(e.contains("signer default"), "{e}");
        let c = Config::from_matches(&matches(&[
            "t",
            "--backend=aws",
            "--key-budgets=default:age=1d",
        ]))
        .unwrap();
        assert!(
            c.key_budgets().is_err(),
            "a daily rotation needs a third key"
        );
        let c = Config::from_matches(&matches(&[
            "t",
            "--backend=aws",
            "--key-budgets=default:age=7d",
        ]))
        .unwrap();
        assert!(c.key_budgets().unwrap().get("default").is_some());
    }

    #[test]
    fn a_budget_names_a_configured_signer_once() {
        let c = Config::from_matches(&matches(&["t", "--key-budgets=other:links=5"])).unwrap();
        let e = format!("{:#}", c.key_budgets().err().expect("refused"));
        assert!(e.contains("not one of --signers"), "{e}");
        let c = Config::from_matches(&matches(&[
            "t",
            "--key-budgets=default:links=5,default:age=1h",
        ]))
        .unwrap();
        assert!(c.key_budgets().is_err());
        let c = Config::from_matches(&matches(&["t", "--key-budgets=default:links=x"])).unwrap();
        let e = format!("{:#}", c.key_budgets().err().expect("refused"));
        assert!(
            e.contains("PRESIGND_KEY_BUDGETS") && e.contains("links=x"),
            "{e}"
        );
    }

    #[test]
    fn bucket_regions_are_bucket_equals_region_once_each() {
        let c = Config::from_matches(&matches(&[
            "t",
            "--bucket-regions=photos=eu-west-3, logs = us-east-2",
        ]))
        .unwrap();
        assert_eq!(
            c.bucket_region_map().unwrap(),
            std::collections::BTreeMap::from([
                ("logs".to_owned(), "us-east-2".to_owned()),
                ("photos".to_owned(), "eu-west-3".to_owned()),
            ])
        );
        for bad in ["photos", "photos=", "=eu-west-3", "a=x,a=y"] {
            let c =
                Config::from_matches(&matches(&["t", &format!("--bucket-regions={bad}")])).unwrap();
            let e = format!("{:#}", c.bucket_region_map().unwrap_err());
            assert!(e.contains("--bucket-regions"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
