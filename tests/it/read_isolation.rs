//! The read RPCs cannot starve IssueLink: they spend a quota of their own per
//! caller and run on a pool of their own, so one caller flooding full-scan
//! summaries gets RESOURCE_EXHAUSTED while another keeps issuing links, every
//! one OK.

use crate::helpers::*;
use presignd::proto::{self, Method, link_service_client::LinkServiceClient};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tonic::Code;

#[sqlx::test]
async fn issue_link_keeps_working_while_another_caller_floods_summaries(pool: PgPool) {
    // IssueLink's pool is small (6 connections, one of which LISTENs for key
    // changes); the acquire timeout leaves room for a machine busy with other
    // tests. The read quota keeps the flood small (10 summaries a second do
    // not fill 6 connections: with the summaries moved onto IssueLink's pool
    // by hand, IssueLink still answered), so which pool ran them is checked
    // by their sessions' names.
    let config = test_config(&[
        "--db-max-connections=6",
        "--db-acquire-timeout-secs=3",
        "--read-db-max-connections=1",
        "--read-rate-per-sec=10",
        "--read-burst=10",
    ]);
    let mut app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    // Caller B's links: an object key prefix makes each summary a pass over them.
    sqlx::query(
        "INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key,
                            issued_at, expires_at, signature_sha256)
         SELECT gen_random_uuid(), k.key_id, k.signer, $1, 'GET', 'flood', 'flood/' || i,
                now() - interval '1 hour', now() + interval '1 hour', sha256(i::text::bytea)
         FROM generate_series(1, 100000) i,
              (SELECT key_id, signer FROM signing_keys WHERE state = 'active' LIMIT 1) k",
    )
    .bind(CALLER_B)
    .execute(&pool)
    .await
    .unwrap();

    let summarize = proto::SummarizeLinksRequest {
        filter: Some(proto::LinkFilter {
            object_key_prefix: "flood/".into(),
            ..Default::default()
        }),
        group_by: proto::GroupBy::Bucket as i32,
    };
    // The read pool's connection is made before the flood: on the test's
    // one-thread runtime, 32 spinning flooders can starve its (TLS) handshake
    // past the 1 s acquire timeout. This test is about the quota and the pools.
    LinkServiceClient::with_interceptor(app.channel.clone(), with_token_b as Auth)
        .summarize_links(summarize.clone())
        .await
        .expect("a summary before the flood");

    // The flooding caller is another process in production. Its 32 clients
    // run on a thread and runtime of their own here: on the test's one-thread
    // runtime, which also runs the server, their spinning starved the polls
    // of the server's own registry connections past the acquire timeout on a
    // busy machine (CI), which is the test runtime's limit, not the server's.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (port, stop, summarize) = (app.port, stop.clone(), summarize.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the flood's runtime");
            runtime.block_on(flood_summaries(port, 32, stop, summarize))
        })
    };
    let bucket = app.bucket.clone();
    let mut failures = Vec::new();
    // Which of the server's pools ran the summaries, by their sessions' names
    // (application_name; the test's own sessions have none).
    let mut summary_sessions = BTreeMap::<String, i64>::new();
    let mut read_sessions_at_most = 0;
    for i in 0..60 {
        let key = format!("during-flood/{i}");
        if let Err(st) = app
            .issue(link_request(&bucket, &key, Method::Get, 60))
            .await
        {
            failures.push(format!("{i}: {:?} {}", st.code(), st.message()));
        }
        // The summary's statement, matched without this query's own text
        // matching it (chr(34) is '"').
        let ran_summary: Vec<(String, i64)> = sqlx::query_as(
            "SELECT application_name, count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND query LIKE '%AS ' || chr(34) || 'group' || chr(34) || '%'
             GROUP BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        for (name, n) in ran_summary {
            *summary_sessions.entry(name).or_default() += n;
        }
        let read_sessions = sessions_named(&pool, presignd::registry::READ_SESSIONS).await;
        read_sessions_at_most = read_sessions_at_most.max(read_sessions);
    }
    stop.store(true, Ordering::Relaxed);
    // Joined off the runtime: the flood's last requests need the server,
    // which runs on this one.
    let codes = tokio::task::spawn_blocking(move || flood.join().expect("the flood's thread"))
        .await
        .unwrap();
    assert!(
        failures.is_empty(),
        "IssueLink failed during the flood: {failures:?}"
    );
    assert_eq!(
        summary_sessions.keys().collect::<Vec<_>>(),
        [presignd::registry::READ_SESSIONS],
        "the summaries ran on the read RPCs' pool only (sessions seen: {summary_sessions:?})"
    );
    assert!(
        read_sessions_at_most <= 1,
        "the read pool stayed within --read-db-max-connections=1: {read_sessions_at_most} sessions"
    );
    assert!(
        codes.get("Ok").is_some_and(|n| *n > 0),
        "some summaries were served: {codes:?}"
    );
    assert!(
        codes.get("ResourceExhausted").is_some_and(|n| *n > 0),
        "the flood hit the read quota: {codes:?}"
    );
    assert!(
        !codes.contains_key("Internal"),
        "a refused read is not INTERNAL: {codes:?}"
    );
}

/// `flooders` clients of caller B, each summarizing in a loop until `stop`:
/// how many answers of each code they got, together.
async fn flood_summaries(
    port: u16,
    flooders: usize,
    stop: Arc<AtomicBool>,
    summarize: proto::SummarizeLinksRequest,
) -> BTreeMap<String, u32> {
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .expect("the flood connects to the test server");
    let tasks: Vec<_> = (0..flooders)
        .map(|_| {
            let (channel, stop, summarize) = (channel.clone(), stop.clone(), summarize.clone());
            tokio::spawn(async move {
                let mut b = LinkServiceClient::with_interceptor(channel, with_token_b as Auth);
                let mut codes = BTreeMap::<String, u32>::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = b.summarize_links(summarize.clone()).await;
                    let code = r.map_or_else(|s| s.code(), |_| Code::Ok);
                    *codes.entry(format!("{code:?}")).or_default() += 1;
                }
                codes
            })
        })
        .collect();
    let mut codes = BTreeMap::<String, u32>::new();
    for t in tasks {
        for (code, n) in t.await.unwrap() {
            *codes.entry(code).or_default() += n;
        }
    }
    codes
}
