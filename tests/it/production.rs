//! Running presignd as a platform team does: the real binary with secrets from
//! files and JSON logs (one line per RPC), liveness and readiness probes, live
//! reload of callers and certificates, client deadlines, connection age, and
//! per-RPC metrics.

use crate::helpers::*;
use crate::pki::{Ca, temp_dir};
use presignd::proto::{self, Method, link_service_client::LinkServiceClient};
use sqlx::PgPool;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

async fn channel(port: u16) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Polls `f` every 100 ms until it is true (10 s at most): for changes a
/// background poll picks up.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within 10 s: {what}");
}

fn with_bearer<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn issue_as(
    port: u16,
    token: &str,
    req: proto::IssueLinkRequest,
) -> Result<proto::IssueLinkResponse, tonic::Status> {
    LinkServiceClient::new(channel(port).await)
        .issue_link(with_bearer(token, req))
        .await
        .map(|r| r.into_inner())
}

/// The served binary, configured the way the deploy files do it: secrets from
/// files, settings from the environment, logs to stderr (a pipe: JSON).
#[sqlx::test]
async fn the_binary_with_secrets_from_files_logs_only_json_one_line_per_rpc(pool: PgPool) {
    let dir = temp_dir();
    let callers = format!(
        "# the callers file\n{CALLER}:{}\n",
        presignd::auth::hash_token(TOKEN)
    );
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_presignd"))
        .arg("serve")
        .env_clear()
        .env("DATABASE_URL_FILE", write(&dir, "db", &database_url(&pool)))
        .env(
            "PRESIGND_MASTER_KEY_FILE",
            write(&dir, "master", &format!("{}\n", master_key_hex())),
        )
        .env(
            "PRESIGND_GARAGE_ADMIN_TOKEN_FILE",
            write(&dir, "garage", &format!("{}\n", env("GARAGE_ADMIN_TOKEN"))),
        )
        .env("PRESIGND_CALLERS_FILE", write(&dir, "callers", &callers))
        .env("PRESIGND_ADMINS", CALLER)
        .env("PRESIGND_LISTEN", "127.0.0.1:0")
        .env("PRESIGND_METRICS_LISTEN", "127.0.0.1:0")
        .env("PRESIGND_GARAGE_ADMIN_URL", env("GARAGE_ADMIN_URL"))
        .env("PRESIGND_S3_ENDPOINT", env("GARAGE_S3_URL"))
        .env("PRESIGND_S3_REGION", env("GARAGE_REGION"))
        .env("PRESIGND_BUCKETS", env("PRESIGND_TEST_BUCKETS"))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("presignd starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    // The bound ports are in the "serving" line: JSON from the first line on.
    let (port, metrics_port) = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("presignd logs within 30 s")
            .unwrap()
            .expect("presignd keeps running");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        log.push(line);
        if v["message"] == "presignd serving" {
            break (
                v["port"].as_u64().unwrap() as u16,
                v["metrics_port"].as_u64().unwrap() as u16,
            );
        }
    };
    let rest = tokio::spawn(async move {
        let mut more = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            more.push(line);
        }
        more
    });
    let http = reqwest::Client::new();
    let probe = |path: &'static str| {
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{metrics_port}{path}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(probe("/livez").await, 200, "alive from the start");
    eventually("ready", async || probe("/readyz").await == 200).await;

    let bucket = test_bucket();
    let issued = issue_as(
        port,
        TOKEN,
        link_request(&bucket, "json-log", Method::Get, 60),
    )
    .await
    .expect("a caller from the callers file issues a link");
    let link_id = issued.link.unwrap().id;
    let bad = issue_as(
        port,
        TOKEN,
        link_request(&bucket, "json-log", Method::Get, 0),
    )
    .await
    .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let refused = issue_as(
        port,
        "not-a-token",
        link_request(&bucket, "k", Method::Get, 60),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let kill = tokio::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("presignd stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    log.extend(rest.await.unwrap());

    let mut rpcs = Vec::new();
    for line in &log {
        assert!(
            !line.contains('\u{1b}'),
            "no ANSI escape off a terminal: {line}"
        );
        assert!(
            !line.contains("X-Amz-Signature") && !line.contains(&issued.url),
            "no URL in the log: {line}"
        );
        assert!(!line.contains(TOKEN), "no token in the log: {line}");
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["target"] == "presignd::rpc" {
            rpcs.push(v);
        }
    }
    let issue = "presignd.v1.LinkService/IssueLink";
    let find = |code: &str| {
        rpcs.iter()
            .find(|v| v["rpc"] == issue && v["code"] == code)
            .unwrap_or_else(|| panic!("no {code} IssueLink line among {rpcs:#?}"))
    };
    let ok = find("OK");
    assert_eq!(ok["caller"], CALLER);
    assert_eq!(ok["link_id"], link_id.as_str());
    assert!(ok["latency_ms"].as_f64().unwrap() > 0.0, "{ok}");
    assert_eq!(find("INVALID_ARGUMENT")["caller"], CALLER);
    let unauthenticated = find("UNAUTHENTICATED");
    assert!(unauthenticated.get("caller").is_none(), "{unauthenticated}");
    assert_eq!(
        rpcs.iter().filter(|v| v["rpc"] == issue).count(),
        3,
        "one line per IssueLink call"
    );
}

#[tokio::test]
async fn help_shows_no_secret_value_and_names_the_file_forms() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_presignd"))
        .args(["serve", "--help"])
        .env("DATABASE_URL", "postgres://u:hunter2@db/presignd")
        .env("PRESIGND_MASTER_KEY", "0".repeat(64))
        .env("PRESIGND_GARAGE_ADMIN_TOKEN", "garage-secret-token")
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    for secret in ["hunter2", &"0".repeat(64), "garage-secret-token"] {
        assert!(!help.contains(secret), "--help shows a secret: {secret}");
    }
    for file_form in [
        "DATABASE_URL_FILE",
        "PRESIGND_MASTER_KEY_FILE",
        "PRESIGND_GARAGE_ADMIN_TOKEN_FILE",
        "PRESIGND_CALLERS_FILE",
    ] {
        assert!(help.contains(file_form), "{file_form} is documented");
    }
}

/// A registry outage fails readiness, never liveness: a liveness probe must
/// not restart every replica because the database blinked.
#[sqlx::test]
async fn a_registry_outage_fails_readyz_but_never_livez(pool: PgPool) {
    let options = (*pool.connect_options()).clone();
    let target = format!("{}:{}", options.get_host(), options.get_port())
        .parse()
        .unwrap();
    let proxy = Proxy::start(target).await;
    let app = spawn_app_with(test_config(&[]), options.port(proxy.addr.port())).await;
    app.wait_for(ServingStatus::Serving).await;
    let get = |path: &'static str| {
        let (http, port) = (app.http.clone(), app.metrics_port);
        async move {
            let r = http
                .get(format!("http://127.0.0.1:{port}{path}"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/readyz").await, (200, "ready\n".into()));
    assert_eq!(get("/livez").await.0, 200);

    let addr = proxy.stop().await;
    app.wait_for(ServingStatus::NotServing).await;
    let (code, body) = get("/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("registry unreachable"), "{body}");
    assert_eq!(get("/livez").await.0, 200, "liveness ignores the registry");

    let _back = Proxy::serve(TcpListener::bind(addr).await.unwrap(), target);
    app.wait_for(ServingStatus::Serving).await;
    assert_eq!(get("/readyz").await.0, 200);
}

/// Callers come and go with the callers file: polled, no restart, and a file
/// that does not parse leaves the callers in force.
#[sqlx::test]
async fn the_callers_file_is_followed_while_serving(pool: PgPool) {
    const TOKEN_C: &str = "it-token-c-for-reload";
    let dir = temp_dir();
    let file = write(&dir, "callers", "");
    let app = spawn_app_with(
        test_config(&[&format!("--callers-file={file}"), "--reload-poll-secs=1"]),
        (*pool.connect_options()).clone(),
    )
    .await;
    app.wait_for(ServingStatus::Serving).await;
    let bucket = app.bucket.clone();
    let port = app.port;
    let calls = async || match issue_as(
        port,
        TOKEN_C,
        link_request(&bucket, "reload", Method::Get, 60),
    )
    .await
    {
        Ok(_) => true,
        Err(s) if s.code() == tonic::Code::Unauthenticated => false,
        Err(s) => panic!("unexpected {s:?}"),
    };
    assert!(!calls().await, "not a caller yet");

    let line = format!("it-caller-c:{}\n", presignd::auth::hash_token(TOKEN_C));
    std::fs::write(&file, &line).unwrap();
    eventually("the new caller can call", async || calls().await).await;

    std::fs::write(&file, "this is not NAME:HASH\n").unwrap();
    // Two polls later the malformed file was read and refused...
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        calls().await,
        "a malformed file leaves the callers in force"
    );

    std::fs::write(&file, "").unwrap();
    eventually("the removed caller cannot call", async || !calls().await).await;
}

/// A renewed server certificate (files rewritten, then SIGHUP) is served to new
/// connections; a connection made before keeps working.
#[sqlx::test]
async fn a_renewed_certificate_is_served_to_new_connections_after_sighup(pool: PgPool) {
    let dir = temp_dir();
    let ca = Ca::new("reload CA");
    let flags = crate::pki::server_flags(&dir, &ca, false);
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    extra.push("--reload-poll-secs=0");
    let app = spawn_tls_app(
        test_config(&extra),
        (*pool.connect_options()).clone(),
        &ca.pem,
    )
    .await;
    let before = served_certificate(app.port, &ca.pem).await;
    assert_eq!(
        before,
        pem_der(&std::fs::read_to_string(dir.join("server.pem")).unwrap())
    );

    let renewed = ca.server();
    std::fs::write(dir.join("server.pem"), &renewed.cert).unwrap();
    std::fs::write(dir.join("server.key"), &renewed.key).unwrap();
    let hup = tokio::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .await
        .unwrap();
    assert!(hup.success());
    let want = pem_der(&renewed.cert);
    eventually("the renewed certificate is served", async || {
        served_certificate(app.port, &ca.pem).await == want
    })
    .await;
    // The channel opened before the renewal still answers.
    assert_eq!(app.health().await, ServingStatus::Serving as i32);
}

fn pem_der(pem: &str) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// The leaf certificate a fresh TLS connection to `port` is served.
async fn served_certificate(port: u16, ca_pem: &str) -> Vec<u8> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pem_der(ca_pem).into()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The client's gRPC deadline bounds the call: a listing stuck behind a lock
/// ends when the deadline passes, not when the lock goes, and the server
/// answers and counts it DEADLINE_EXCEEDED. (The tonic client also times the
/// call out itself, as CANCELLED "Timeout expired", when its own timer wins the
/// race with the server's answer: either is the deadline honoured.)
#[sqlx::test]
async fn a_client_deadline_is_honoured(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let series = r#"presignd_grpc_requests_total{method="presignd.v1.LinkService/ListLinks",code="DEADLINE_EXCEEDED"} "#;
    let exceeded = async || {
        let text = app
            .http
            .get(format!("http://127.0.0.1:{}/metrics", app.metrics_port))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };
    assert_eq!(exceeded().await, 0);
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE links IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let mut req = tonic::Request::new(proto::ListLinksRequest::default());
    req.set_timeout(Duration::from_millis(300));
    let answer = tokio::time::timeout(Duration::from_secs(8), app.links.list_links(req))
        .await
        .expect("the deadline ended the call while the lock was still held");
    let status = answer.unwrap_err();
    assert!(
        status.code() == tonic::Code::DeadlineExceeded
            || (status.code() == tonic::Code::Cancelled && status.message() == "Timeout expired"),
        "{status:?}"
    );
    eventually("the server counted DEADLINE_EXCEEDED", async || {
        exceeded().await == 1
    })
    .await;
    locker.rollback().await.unwrap();
}

/// After --max-connection-age the server asks the client to reconnect
/// (GOAWAY): the next call arrives on a new connection, and no call fails.
#[sqlx::test]
async fn connections_are_renewed_after_their_maximum_age(pool: PgPool) {
    let app = spawn_app_with(
        test_config(&["--max-connection-age-secs=1"]),
        (*pool.connect_options()).clone(),
    )
    .await;
    app.wait_for(ServingStatus::Serving).await;
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let port = app.port;
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tcp))
            }
        }))
        .await
        .unwrap();
    let check = async || {
        tonic_health::pb::health_client::HealthClient::new(channel.clone())
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .map(|r| r.into_inner().status)
    };
    assert_eq!(check().await.unwrap(), ServingStatus::Serving as i32);
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    // Real time must pass for the connection to age.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    eventually("a second connection", async || {
        check().await.expect("no call fails across the renewal");
        connections.load(Ordering::SeqCst) == 2
    })
    .await;
}

/// Requests refused before their handler are counted by method and code, and
/// a path that names no RPC of ours gets the bounded label `unknown`.
#[sqlx::test]
async fn every_rpc_is_counted_by_method_and_code_even_when_refused(pool: PgPool) {
    let app = spawn_app(&pool).await;
    let scrape = async || {
        app.http
            .get(format!("http://127.0.0.1:{}/metrics", app.metrics_port))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let count = |text: &str, labels: &str| -> u64 {
        let series = format!("presignd_grpc_requests_total{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    let unauth = r#"method="presignd.v1.LinkService/IssueLink",code="UNAUTHENTICATED""#;
    let unknown = r#"method="unknown",code="UNIMPLEMENTED""#;
    let before = scrape().await;
    for _ in 0..3 {
        let e = issue_as(
            app.port,
            "wrong",
            link_request(&app.bucket, "k", Method::Get, 60),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }
    // A path that names no RPC: UNIMPLEMENTED, counted as `unknown`.
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready().await.unwrap();
    let odd = grpc
        .unary::<proto::GetLinkRequest, proto::Link, _>(
            with_bearer(TOKEN, proto::GetLinkRequest::default()),
            "/presignd.v1.LinkService/NoSuchRpc".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(odd.code(), tonic::Code::Unimplemented);
    let after = scrape().await;
    assert_eq!(count(&after, unauth) - count(&before, unauth), 3, "{after}");
    assert_eq!(
        count(&after, unknown) - count(&before, unknown),
        1,
        "{after}"
    );
    assert!(
        after.contains("presignd_grpc_request_duration_seconds_bucket{method=\"presignd.v1.LinkService/IssueLink\""),
        "{after}"
    );
}
