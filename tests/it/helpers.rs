//! spawn_app(): a real presignd on port 0, with a typed client, against a fresh
//! database and the dev Garage.

use clap::Parser;
use presignd::app::App;
use presignd::config::Config;
use presignd::proto::{self, link_service_client::LinkServiceClient};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub const TOKEN: &str = "it-token-for-tests-only";
pub const CALLER: &str = "it-caller";

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

pub fn test_bucket() -> String {
    env("PRESIGND_TEST_BUCKETS")
        .split(',')
        .next()
        .unwrap()
        .to_owned()
}

/// A config for a test server: every setting given explicitly so the
/// developer's environment does not leak in.
pub fn test_config(extra: &[&str]) -> Config {
    let token_hash = presignd::auth::hash_token(TOKEN);
    let master = presignd::seal::MasterKey::generate();
    let mut args: Vec<String> = vec![
        "presignd".into(),
        "--listen=127.0.0.1:0".into(),
        "--metrics-listen=127.0.0.1:0".into(),
        format!("--callers={CALLER}:{token_hash}"),
        format!("--admins={CALLER}"),
        format!("--master-key={}", &*master.to_hex()),
        "--backend=garage".into(),
        format!("--garage-admin-url={}", env("GARAGE_ADMIN_URL")),
        format!("--garage-admin-token={}", env("GARAGE_ADMIN_TOKEN")),
        format!("--s3-endpoint={}", env("GARAGE_S3_URL")),
        format!("--s3-region={}", env("GARAGE_REGION")),
        format!("--buckets={}", env("PRESIGND_TEST_BUCKETS")),
        "--db-acquire-timeout-secs=1".into(),
        "--health-interval-secs=1".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Wrapper::try_parse_from(args)
        .expect("test config parses")
        .config
}

pub type Links = LinkServiceClient<
    InterceptedService<
        Channel,
        fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
    >,
>;

pub struct TestApp {
    pub port: u16,
    pub metrics_port: u16,
    pub channel: Channel,
    pub links: Links,
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

fn with_token(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
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
    let app = App::build_with_db(config, db).await.expect("app builds");
    let port = app.port();
    let metrics_port = app.metrics_port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    // The listener is bound already: connecting cannot race the server's start.
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the test server");
    let links = LinkServiceClient::with_interceptor(channel.clone(), with_token as fn(_) -> _);
    TestApp {
        port,
        metrics_port,
        channel,
        links,
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
