//! spawn_app(): a real presignd on port 0, with a typed client, against a fresh
//! database and the dev Garage.

use clap::Parser;
use presignd::app::App;
use presignd::config::Config;
use presignd::keys::KeyManager;
use presignd::policy::PolicyHandle;
use presignd::proto::{
    self, IssueLinkResponse, Method, key_service_client::KeyServiceClient,
    link_service_client::LinkServiceClient,
};
use presignd::revocation::Revocations;
use reqwest::StatusCode;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The admin caller every test client uses by default.
pub const TOKEN: &str = "it-token-for-tests-only";
pub const CALLER: &str = "it-caller";
/// A plain (non-admin) caller.
pub const TOKEN_B: &str = "it-token-b-for-tests-only";
pub const CALLER_B: &str = "it-caller-b";

/// One master key per test process, so a test can restart a server on the same
/// database and still open the sealed secrets.
pub fn master_key_hex() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| presignd::seal::MasterKey::generate().to_hex().to_string())
}

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    config: Config,
}

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `deploy/dev/stack.sh` and `source deploy/dev/.state/env` (or use deploy/dev/test.sh)")
    })
}

/// The dev Garage's admin API, as presignd's backend adapter (a test plays a
/// crash after a backend call by making it itself).
pub fn garage_backend() -> presignd::backend::garage::GarageBackend {
    presignd::backend::garage::GarageBackend::new(
        &env("GARAGE_ADMIN_URL"),
        presignd::secret::SecretString::new(env("GARAGE_ADMIN_TOKEN")),
    )
}

/// Garage's admin API, v2.
pub async fn garage_admin(
    endpoint: &str,
    query: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let url = format!("{}/v2/{endpoint}", env("GARAGE_ADMIN_URL"));
    let http = reqwest::Client::new();
    let req = match body {
        Some(b) => http.post(url).json(&b),
        None => http.get(url),
    };
    let r = req
        .query(query)
        .bearer_auth(env("GARAGE_ADMIN_TOKEN"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "garage {endpoint}: {}", r.status());
    r.json().await.unwrap_or_default()
}

/// Makes sure a bucket named `name` exists on the dev Garage.
pub async fn ensure_garage_bucket(name: &str) {
    let r = reqwest::Client::new()
        .post(format!("{}/v2/CreateBucket", env("GARAGE_ADMIN_URL")))
        .bearer_auth(env("GARAGE_ADMIN_TOKEN"))
        .json(&serde_json::json!({ "globalAlias": name }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert!(
        status.is_success() || text.contains("lready"),
        "garage CreateBucket {name}: {status} {text}"
    );
}

pub fn test_bucket() -> String {
    env("PRESIGND_TEST_BUCKETS")
        .split(',')
        .next()
        .unwrap()
        .to_owned()
}

/// A config for a test server: every setting given explicitly so the
/// developer's environment does not leak in. `extra` overrides defaults.
pub fn test_config(extra: &[&str]) -> Config {
    let mut args: Vec<String> = vec![
        "presignd".into(),
        "--listen=127.0.0.1:0".into(),
        format!(
            "--callers={CALLER}:{},{CALLER_B}:{}",
            presignd::auth::hash_token(TOKEN),
            presignd::auth::hash_token(TOKEN_B)
        ),
        "--metrics-listen=127.0.0.1:0".into(),
        format!("--admins={CALLER}"),
        format!("--master-key={}", master_key_hex()),
        "--backend=garage".into(),
        format!("--garage-admin-url={}", env("GARAGE_ADMIN_URL")),
        format!("--garage-admin-token={}", env("GARAGE_ADMIN_TOKEN")),
        format!("--s3-endpoint={}", env("GARAGE_S3_URL")),
        format!("--s3-region={}", env("GARAGE_REGION")),
        format!("--buckets={}", env("PRESIGND_TEST_BUCKETS")),
        "--db-acquire-timeout-secs=1".into(),
        // The recorder's two workers' connections, open before SERVING; not
        // the default (all 16): tests run side by side on one PostgreSQL,
        // some with several servers each, within its 100 connections.
        "--db-min-connections=2".into(),
        "--health-interval-secs=1".into(),
        // Tests page and summarize fast; the read quota has its own test.
        "--read-rate-per-sec=0".into(),
    ];
    // An extra `--flag=value` replaces the default of the same flag; a bare
    // `--flag` removes it.
    for e in extra {
        let flag = e.split('=').next().unwrap();
        args.retain(|a| a.split('=').next().unwrap() != flag);
        if e.contains('=') {
            args.push(e.to_string());
        }
    }
    Wrapper::try_parse_from(args)
        .expect("test config parses")
        .config
}

pub type Auth = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
pub type Links = LinkServiceClient<InterceptedService<Channel, Auth>>;
pub type Keys = KeyServiceClient<InterceptedService<Channel, Auth>>;

pub struct TestApp {
    pub port: u16,
    pub metrics_port: u16,
    pub channel: Channel,
    pub links: Links,
    /// KeyService as the admin caller.
    pub keys: Keys,
    /// The server's key manager (its keyring, its secrets).
    pub km: KeyManager,
    /// The server's revocation service, to drive revocations step by step.
    pub revocations: Revocations,
    /// The policy in force (reloadable).
    pub policy: PolicyHandle,
    pub http: reqwest::Client,
    pub bucket: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn with_token(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    Ok(r)
}

pub fn with_token_b(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN_B}").parse().unwrap(),
    );
    Ok(r)
}

/// Starts presignd against the database of `pool` and waits until it is SERVING.
pub async fn spawn_app(pool: &PgPool) -> TestApp {
    let app = spawn_app_with(test_config(&[]), (*pool.connect_options()).clone()).await;
    app.wait_for(ServingStatus::Serving).await;
    app
}

/// Starts presignd without waiting for readiness.
pub async fn spawn_app_with(config: Config, db: PgConnectOptions) -> TestApp {
    spawn_app_on(config, db, None).await
}

/// Starts a presignd serving TLS (its certificate issued by the CA `ca_pem`)
/// and waits until it is SERVING; the clients trust that CA and send tokens.
pub async fn spawn_tls_app(config: Config, db: PgConnectOptions, ca_pem: &str) -> TestApp {
    let app = spawn_app_on(config, db, Some(ca_pem)).await;
    app.wait_for(ServingStatus::Serving).await;
    app
}

/// A TLS channel to a test server, trusting `ca_pem`, with an optional client
/// certificate and key (PEM).
pub async fn tls_channel(
    port: u16,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn spawn_app_on(config: Config, db: PgConnectOptions, ca_pem: Option<&str>) -> TestApp {
    let app = App::build_with_db(config, db).await.expect("app builds");
    serve_built(app, ca_pem).await
}

/// Runs an app the test built (and prepared, e.g. armed a failpoint of its
/// key manager), without waiting for readiness.
pub async fn spawn_built(app: App) -> TestApp {
    serve_built(app, None).await
}

async fn serve_built(app: App, ca_pem: Option<&str>) -> TestApp {
    let port = app.port();
    let km = app.key_manager();
    let revocations = app.revocations();
    let policy = app.policy();
    let metrics_port = app.metrics_port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    // The listener is bound already: connecting cannot race the server's start.
    let channel = match ca_pem {
        None => Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .expect("connect to the test server"),
        Some(ca) => tls_channel(port, ca, None)
            .await
            .expect("TLS connect to the test server"),
    };
    let links = LinkServiceClient::with_interceptor(channel.clone(), with_token as Auth);
    let keys = KeyServiceClient::with_interceptor(channel.clone(), with_token as Auth);
    TestApp {
        port,
        metrics_port,
        channel,
        links,
        keys,
        km,
        revocations,
        policy,
        http: reqwest::Client::new(),
        bucket: test_bucket(),
        shutdown: Some(tx),
    }
}

impl TestApp {
    pub async fn health(&self) -> i32 {
        HealthClient::new(self.channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health check answers")
            .into_inner()
            .status
    }

    /// Follows the health Watch stream until `status` (30 s at most).
    pub async fn wait_for(&self, status: ServingStatus) {
        let mut stream = HealthClient::new(self.channel.clone())
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health watch")
            .into_inner();
        let wait = async {
            while let Some(Ok(msg)) = stream.message().await.transpose() {
                if msg.status == status as i32 {
                    return;
                }
            }
            panic!("health stream ended before {status:?}");
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("presignd did not report {status:?} within 30 s"));
    }

    /// RotateKey as the admin caller; panics on an error status.
    pub async fn rotate(&mut self, req: proto::RotateKeyRequest) -> proto::Revocation {
        self.keys
            .rotate_key(req)
            .await
            .expect("RotateKey succeeds")
            .into_inner()
    }

    pub async fn issue(
        &mut self,
        req: proto::IssueLinkRequest,
    ) -> Result<proto::IssueLinkResponse, tonic::Status> {
        self.links.issue_link(req).await.map(|r| r.into_inner())
    }
}

/// An IssueLinkRequest with sane defaults for the test bucket.
pub fn link_request(
    bucket: &str,
    key: &str,
    method: proto::Method,
    ttl_secs: i64,
) -> proto::IssueLinkRequest {
    proto::IssueLinkRequest {
        bucket: bucket.to_owned(),
        object_key: key.to_owned(),
        method: method as i32,
        ttl: Some(prost_types::Duration {
            seconds: ttl_secs,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// A unique object key per test run.
pub fn unique_key(prefix: &str) -> String {
    format!("it/{prefix}/{}", uuid::Uuid::now_v7())
}

/// Sends the request a presigned link describes, with the headers it requires.
pub async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    resp: &proto::IssueLinkResponse,
    body: Option<Vec<u8>>,
) -> reqwest::Response {
    let mut req = http.request(method, &resp.url);
    for h in &resp.headers {
        req = req.header(&h.name, &h.value);
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    req.send().await.expect("the S3 endpoint answers")
}

/// A test config with a policy file holding `policy` (and `--admins` cleared:
/// roles come from the policy).
pub fn policy_config(policy: &str, extra: &[&str]) -> (Config, std::path::PathBuf) {
    let dir = crate::pki::temp_dir();
    let path = dir.join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let flag = format!("--policy-file={}", path.display());
    let mut args: Vec<&str> = extra.to_vec();
    args.push(&flag);
    let mut config = test_config(&args);
    config.admins.clear();
    (config, path)
}

/// The URL of this test's own database (the dev stack's URL, another name).
pub fn database_url(pool: &PgPool) -> String {
    let base = env("DATABASE_URL");
    let (server, _) = base.rsplit_once('/').unwrap();
    format!(
        "{server}/{}",
        pool.connect_options()
            .get_database()
            .expect("a database name")
    )
}

/// Polls `query` (a count) until it reaches `at_least` (10 s at most): for work
/// the test itself set going (concurrent issuers, an audit row written in the
/// background), never for a server's periodic loop (call its step instead).
pub async fn wait_for_count(pool: &PgPool, query: &str, at_least: i64) -> i64 {
    let mut n = 0;
    for _ in 0..200 {
        n = sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_owned()))
            .fetch_one(pool)
            .await
            .unwrap();
        if n >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    n
}

/// Every bucket of the dev stack (`PRESIGND_TEST_BUCKETS`).
pub fn buckets() -> Vec<String> {
    env("PRESIGND_TEST_BUCKETS")
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// Puts an object in `bucket` through a PUT link and returns its key.
pub async fn put_sample(app: &mut TestApp, bucket: &str) -> (String, IssueLinkResponse) {
    let key = unique_key("sample");
    let put = app
        .issue(link_request(bucket, &key, Method::Put, 600))
        .await
        .unwrap();
    let r = send(
        &app.http,
        reqwest::Method::PUT,
        &put,
        Some(b"sample".to_vec()),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    (key, put)
}

/// What Garage answers to the link's request: 200 (served) or 403 (refused).
pub async fn try_link(http: &reqwest::Client, link: &IssueLinkResponse) -> StatusCode {
    let l = link.link.as_ref().unwrap();
    let (method, body) = match Method::try_from(l.method).unwrap() {
        Method::Put => (reqwest::Method::PUT, Some(b"again".to_vec())),
        Method::Head => (reqwest::Method::HEAD, None),
        Method::Delete => (reqwest::Method::DELETE, None),
        _ => (reqwest::Method::GET, None),
    };
    send(http, method, link, body).await.status()
}

/// Links whose derived revocation is `revocation_id`, as every read reports it.
pub async fn revoked_by(pool: &PgPool, revocation_id: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM links l JOIN signing_keys k USING (key_id) WHERE {} = $1::uuid",
        presignd::registry::links::REVOCATION_SQL
    )))
    .bind(revocation_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Garage's GetKeyInfo for `key_id` (with its secret if `show_secret`).
pub async fn garage_key_info(key_id: &str, show_secret: bool) -> serde_json::Value {
    let show = if show_secret { "true" } else { "false" };
    reqwest::Client::new()
        .get(format!("{}/v2/GetKeyInfo", env("GARAGE_ADMIN_URL")))
        .query(&[("id", key_id), ("showSecretKey", show)])
        .bearer_auth(env("GARAGE_ADMIN_TOKEN"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Whether Garage refuses the key (deactivated).
pub async fn garage_key_expired(key_id: &str) -> bool {
    garage_key_info(key_id, false).await["expired"]
        .as_bool()
        .expect("GetKeyInfo has 'expired'")
}

/// What a presignctl run printed, and its exit code.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs presignctl against `app` as the caller of `token`, with `stdin` (or
/// nothing) on its standard input.
pub async fn presignctl(app: &TestApp, token: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_presignctl"))
        .args(args)
        .env(
            "PRESIGND_ENDPOINT",
            format!("http://127.0.0.1:{}", app.port),
        )
        .env("PRESIGND_TOKEN", token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A test that gives up on it (a timeout) leaves no process behind.
        .kill_on_drop(true)
        .spawn()
        .expect("presignctl runs");
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .await
        .unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A RotateKeyRequest for `signer` (`expected`: the key it must still have, or "").
pub fn rotate_req(
    signer: &str,
    mode: proto::RotationMode,
    expected: &str,
) -> proto::RotateKeyRequest {
    proto::RotateKeyRequest {
        signer: signer.into(),
        mode: mode as i32,
        reason: "integration test: suspected leak".into(),
        expected_key_id: expected.into(),
        dry_run: false,
        detach: false,
        quarantine_link_ids: Vec::new(),
    }
}

/// `url` (a presigned URL, its signature last) with the first digit of its
/// signature changed: the same link to LookupLink and VerifyLink (by bucket,
/// key, access key and X-Amz-Date), a signature mismatch to the store.
pub fn with_signature_altered(url: &str) -> String {
    let (head, signature) = url.split_once("X-Amz-Signature=").expect("a presigned URL");
    let flipped = if signature.starts_with('0') { "1" } else { "0" };
    format!("{head}X-Amz-Signature={flipped}{}", &signature[1..])
}

/// A TCP proxy a test closes to make an outage real (connections and all),
/// or freezes: a network black hole, where nothing is closed and nothing
/// answers.
pub struct Proxy {
    pub addr: SocketAddr,
    tasks: JoinSet<()>,
    frozen: tokio::sync::watch::Sender<bool>,
    /// Bumped by `strand`: a connection accepted under an earlier value is
    /// silent for good.
    stranded: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, target)
    }

    pub fn serve(listener: TcpListener, target: SocketAddr) -> Self {
        let addr = listener.local_addr().unwrap();
        let (frozen, _) = tokio::sync::watch::channel(false);
        let (stranded, _) = tokio::sync::watch::channel(0u64);
        let watch = frozen.clone();
        let strand = stranded.clone();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut frozen = watch.subscribe();
                let mut stranded = strand.subscribe();
                let generation = *stranded.borrow_and_update();
                conns.spawn(async move {
                    if !*frozen.borrow_and_update()
                        && let Ok(mut outbound) = TcpStream::connect(target).await
                    {
                        let for_good = tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                            _ = frozen.wait_for(|f| *f) => false,
                            _ = stranded.wait_for(|g| *g != generation) => true,
                        };
                        if for_good {
                            // Held open, silent, until the proxy stops.
                            std::future::pending::<()>().await;
                        }
                    }
                    // Frozen: held open, nothing forwarded, until thawed; then closed.
                    let _ = frozen.wait_for(|f| !*f).await;
                });
            }
            // Dropping `conns` (when this task is aborted) closes every connection.
        });
        Self {
            addr,
            tasks,
            frozen,
            stranded,
        }
    }

    /// A failover behind an address that kept the old primary's connections:
    /// the connections open now forward nothing more and are never closed
    /// (their peer is gone, no reset ever comes), new ones are forwarded.
    pub fn strand(&self) {
        self.stranded.send_modify(|g| *g += 1);
    }

    /// Forwards nothing more, either way, and closes nothing: connections,
    /// open ones and new ones, stay open and silent.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// The network is back: the connections frozen are closed (as a peer
    /// that restarted would reset them), new ones are forwarded.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// Closes the listener and every proxied connection.
    pub async fn stop(mut self) -> SocketAddr {
        self.tasks.shutdown().await;
        self.addr
    }
}

/// A link row of `key_id` (of `signer`) for `caller`: a GET issued now, to the
/// second, for an hour. What registry-level tests hand `links::record`,
/// changing the fields they care about.
pub fn new_link(key_id: &str, signer: &str, caller: &str) -> presignd::registry::links::NewLink {
    use chrono::SubsecRound;
    let issued_at = chrono::Utc::now().trunc_subsecs(0);
    presignd::registry::links::NewLink {
        id: uuid::Uuid::now_v7(),
        key_id: key_id.into(),
        signer: signer.into(),
        caller: caller.into(),
        method: "GET",
        bucket: "photos".into(),
        object_key: "users/1/a.jpg".into(),
        object_key_is_prefix: false,
        labels: Default::default(),
        issued_at,
        expires_at: issued_at + chrono::Duration::hours(1),
        signature_sha256: vec![7; 32],
        content_type: None,
        content_disposition: None,
        replaces_link_id: None,
        request: None,
    }
}

/// How many sessions of this test's database are named `name`
/// (`application_name`: presignd names its pools' sessions,
/// `registry::SESSIONS` and `READ_SESSIONS`).
pub async fn sessions_named(pool: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A signing key's state in the registry.
pub async fn key_state(pool: &PgPool, key_id: &str) -> String {
    sqlx::query_scalar("SELECT state FROM signing_keys WHERE key_id = $1")
        .bind(key_id)
        .fetch_one(pool)
        .await
        .unwrap()
}
