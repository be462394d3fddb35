//! Health follows readiness; reflection works without proto files.

use crate::helpers::*;
use presignd::config::Config;
use presignd::proto::Method;
use sqlx::PgPool;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

#[sqlx::test]
async fn reflection_lists_the_api_and_health_services(pool: PgPool) {
    let app = spawn_app(&pool).await;
    let mut client = ServerReflectionClient::new(app.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["presignd.v1.LinkService", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[sqlx::test]
async fn a_ready_server_reports_serving_with_a_key_provisioned(pool: PgPool) {
    let app = spawn_app(&pool).await;
    assert_eq!(app.health().await, ServingStatus::Serving as i32);
    let active: i64 =
        sqlx::query_scalar("SELECT count(*) FROM signing_keys WHERE state = 'active'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(active, 1, "one active key for the default signer");
}

/// SERVING comes with `--db-min-connections` open: a burst of calls on a
/// server that just started finds its connections ready. Opened one per call
/// instead, on a loaded host, they took longer than the acquire timeout and
/// the calls failed UNAVAILABLE (`retries::concurrent_retries_...` did).
#[sqlx::test]
async fn a_server_turns_serving_with_its_minimum_of_connections_open(pool: PgPool) {
    // The default minimum: the maximum (a pool of fixed size).
    let config = test_config(&["--db-min-connections", "--db-max-connections=5"]);
    let app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(ServingStatus::Serving).await;
    let open = sessions_named(&pool, presignd::registry::SESSIONS).await;
    assert_eq!(open, 5, "sessions of presignd's pool once SERVING");
}

/// The warm-up holds each connection it opens until the last is open, so it
/// runs before any key is loaded: meanwhile IssueLink is refused at once as
/// starting. Run after the keys (as it was), a call in that window was
/// admitted, and when the warm-up held every connection it found none for
/// its commit and failed "pool timed out" after --db-acquire-timeout-secs
/// (the first IssueLinks of a bench started on a loaded host did). Here the
/// database admits 8 sessions more than it has, fewer than
/// --db-min-connections, so the warm-up holds what it opened and waits for
/// the rest.
#[sqlx::test]
async fn while_the_registry_warms_issue_link_is_refused_at_once_as_starting(pool: PgPool) {
    let limit = SessionLimit::of_8_more(&pool).await;
    let mut app = spawn_app_with(limit.config(), (*pool.connect_options()).clone()).await;
    // The warm-up holds what the database admits: more than the one
    // connection each other step of the start uses at a time (and the
    // key-change listener's).
    let held = wait_for_count(
        &pool,
        &format!(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = '{}'",
            presignd::registry::SESSIONS
        ),
        5,
    )
    .await;
    assert!(
        held >= 5,
        "the server's warm-up never held 5 sessions: {held}"
    );
    let status = refused_while_not_serving(&mut app).await;
    assert!(status.message().contains("starting"), "{status:?}");
    // Once the database admits them, the warm-up opens the rest and the
    // server turns SERVING.
    limit.lift(&pool).await;
    app.wait_for(ServingStatus::Serving).await;
    app.issue(link_request(&test_bucket(), "k", Method::Get, 60))
        .await
        .unwrap();
}

/// A database that never admits --db-min-connections sessions: the warm-up
/// gives up (after 10 s) and the server serves with what is open. It never
/// turned ready before: the warm-up handed its connections back by dropping
/// them, the next step's acquisition found none idle yet, tried to open one,
/// was refused "too many connections" until its timeout, and every start
/// attempt failed so.
#[sqlx::test]
async fn a_database_admitting_fewer_sessions_than_the_minimum_is_served_with_what_it_admits(
    pool: PgPool,
) {
    let limit = SessionLimit::of_8_more(&pool).await;
    // The server takes every session the database admits: this test's own.
    let mut ours = pool.acquire().await.unwrap();
    let mut app = spawn_app_with(limit.config(), (*pool.connect_options()).clone()).await;
    app.wait_for(ServingStatus::Serving).await;
    for n in 0..20 {
        app.issue(link_request(
            &test_bucket(),
            &format!("k{n}"),
            Method::Get,
            60,
        ))
        .await
        .unwrap();
    }
    let links: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
        .fetch_one(&mut *ours)
        .await
        .unwrap();
    assert_eq!(links, 20);
}

/// The warm-up's error names the database's refusal ("too many
/// connections"), which sqlx retries until the acquire times out and then
/// reports only as a timeout; and it hands back every connection it opened.
#[sqlx::test]
async fn a_warm_up_the_database_refuses_says_so_and_leaves_its_connections_idle(pool: PgPool) {
    SessionLimit::of_8_more(&pool).await;
    let server = presignd::registry::lazy_pool(
        (*pool.connect_options()).clone(),
        12,
        12,
        std::time::Duration::from_millis(300),
    );
    let err = presignd::registry::warm(&server, 12, std::time::Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("too many connections"), "{err}");
    assert!(server.size() >= 5, "{} open", server.size());
    assert_eq!(server.num_idle(), server.size() as usize);
}

/// A start that fails after one signer's key was loaded (another signer's
/// key could not be made) is retried while IssueLink admits the first
/// signer's requests. The retries do not warm the registry again: a warm-up
/// holds every session the database admits, for up to 10 s where it admits
/// fewer than --db-min-connections, and the admitted requests' commits
/// waited for one and failed (UNAVAILABLE after --db-acquire-timeout-secs).
#[sqlx::test]
async fn a_start_retried_once_a_key_is_loaded_leaves_issue_link_its_connections(pool: PgPool) {
    // The registry refuses the key of `other`, every attempt; a sequence
    // (not rolled back with the refused insert) counts the attempts.
    sqlx::raw_sql(
        "CREATE SEQUENCE other_key_attempts;
         CREATE FUNCTION refuse_other_key() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM nextval('other_key_attempts');
             RAISE EXCEPTION 'test: no key for signer other';
         END $$;
         CREATE TRIGGER refuse_other_key BEFORE INSERT ON signing_keys
             FOR EACH ROW WHEN (NEW.signer = 'other') EXECUTE FUNCTION refuse_other_key();",
    )
    .execute(&pool)
    .await
    .unwrap();
    async fn attempts(conn: &mut sqlx::PgConnection) -> i64 {
        sqlx::query_scalar(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM other_key_attempts",
        )
        .fetch_one(conn)
        .await
        .unwrap()
    }
    let limit = SessionLimit::of_8_more(&pool).await;
    // The server takes every session the database admits, and keeps trying
    // for more: this test's own is held, not left idle in the test pool
    // (which closes it after 1 s idle, and then could not open one again).
    let mut ours = pool.acquire().await.unwrap();
    let config = limit.config_with(&["--signers=default,other"]);
    let mut app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    // The first attempt warms (10 s: the database refuses the 12), loads
    // default's key, and fails on other's.
    while attempts(&mut ours).await < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "no start attempt reached other's key"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // From here default's links are admitted; each must be committed while
    // the start is retried (three retries at least: the first comes 200 ms
    // after the failure). They come 1.5 s apart, longer than the recorder
    // keeps an idle connection (1 s): each commit takes one from the pool.
    let mut issued: i64 = 0;
    while attempts(&mut ours).await < 4 || issued < 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "the start was not retried"
        );
        app.issue(link_request(
            &test_bucket(),
            &format!("k{issued}"),
            Method::Get,
            60,
        ))
        .await
        .unwrap_or_else(|e| panic!("link {issued} refused while the start was retried: {e:?}"));
        issued += 1;
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    }
    assert_ne!(
        app.health().await,
        ServingStatus::Serving as i32,
        "other has no key"
    );
    let links: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
        .fetch_one(&mut *ours)
        .await
        .unwrap();
    assert_eq!(links, issued);
}

/// The test database admitting 8 sessions more than it has when made, fewer
/// than the server's `config()` asks for (--db-min-connections=12).
struct SessionLimit {
    db: String,
}

impl SessionLimit {
    async fn of_8_more(pool: &PgPool) -> Self {
        let (db, others): (String, i64) = sqlx::query_as(
            "SELECT current_database()::text,
                    (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database())",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        let limit = Self { db };
        limit.set(pool, others + 8).await;
        limit
    }

    fn config(&self) -> Config {
        self.config_with(&[])
    }

    fn config_with(&self, extra: &[&str]) -> Config {
        let mut flags = vec![
            "--db-max-connections=12",
            "--db-min-connections=12",
            "--db-acquire-timeout-secs=1",
        ];
        flags.extend_from_slice(extra);
        test_config(&flags)
    }

    async fn lift(&self, pool: &PgPool) {
        self.set(pool, -1).await;
    }

    async fn set(&self, pool: &PgPool, limit: i64) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE \"{}\" CONNECTION LIMIT {limit}",
            self.db
        )))
        .execute(pool)
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_server_whose_registry_is_unreachable_is_not_serving_and_issues_nothing() {
    // A port nothing listens on: the registry is unreachable from the start.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let db = format!("postgres://nobody:nothing@127.0.0.1:{port}/nothing")
        .parse()
        .unwrap();
    let mut app = spawn_app_with(test_config(&[]), db).await;

    refused_while_not_serving(&mut app).await;
}

/// The server reports NOT_SERVING and refuses an IssueLink UNAVAILABLE (the
/// answer is returned).
async fn refused_while_not_serving(app: &mut TestApp) -> tonic::Status {
    assert_eq!(app.health().await, ServingStatus::NotServing as i32);
    let status = app
        .issue(link_request(&test_bucket(), "k", Method::Get, 60))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    status
}

#[sqlx::test]
async fn reflection_v1alpha_answers_too_for_older_tools(pool: PgPool) {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let app = spawn_app(&pool).await;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let response = ServerReflectionClient::new(app.channel.clone())
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "presignd.v1.KeyService"),
        "{list:?}"
    );
}
