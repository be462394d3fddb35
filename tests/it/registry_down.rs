//! Postgres going away under a running server: IssueLink fails with UNAVAILABLE
//! (no URL leaves), health turns NOT_SERVING, and both recover when it is back.
//! The outage is real: the server reaches Postgres through a TCP proxy that the
//! test closes, connections and all.

use crate::helpers::*;
use presignd::proto::Method;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tonic_health::pb::health_check_response::ServingStatus;

/// A proxy to the test's database, its target, and the options that connect
/// through it.
async fn through_proxy(pool: &PgPool) -> (Proxy, SocketAddr, PgConnectOptions) {
    let options = (*pool.connect_options()).clone();
    let target: SocketAddr = format!("{}:{}", options.get_host(), options.get_port())
        .parse()
        .unwrap();
    let proxy = Proxy::start(target).await;
    let via_proxy = options.port(proxy.addr.port());
    (proxy, target, via_proxy)
}

/// The app on `db`, serving, with one link issued while Postgres answers.
async fn serving_with_a_link(config: presignd::config::Config, db: PgConnectOptions) -> TestApp {
    let mut app = spawn_app_with(config, db).await;
    app.wait_for(ServingStatus::Serving).await;
    let bucket = app.bucket.clone();
    app.issue(link_request(&bucket, "k", Method::Get, 60))
        .await
        .expect("works while Postgres answers");
    app
}

#[sqlx::test]
async fn issue_link_is_unavailable_and_health_not_serving_while_postgres_is_unreachable(
    pool: PgPool,
) {
    let (proxy, target, via_proxy) = through_proxy(&pool).await;
    let mut app = spawn_app_with(test_config(&[]), via_proxy).await;
    app.wait_for(ServingStatus::Serving).await;
    let bucket = app.bucket.clone();
    app.issue(link_request(&bucket, "k", Method::Get, 60))
        .await
        .expect("works while Postgres is reachable");

    let addr = proxy.stop().await;
    let status = app
        .issue(link_request(&bucket, "k", Method::Get, 60))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("no link was issued"),
        "{status:?}"
    );
    app.wait_for(ServingStatus::NotServing).await;

    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        count, 1,
        "only the link issued before the outage is recorded"
    );

    // Postgres is back (same address): the service recovers by itself.
    let _proxy = Proxy::serve(TcpListener::bind(addr).await.unwrap(), target);
    app.wait_for(ServingStatus::Serving).await;
    app.issue(link_request(&bucket, "k", Method::Get, 60))
        .await
        .expect("works again");
}

/// Postgres stops answering without closing anything (a network black hole,
/// a frozen primary): IssueLink answers UNAVAILABLE once the recorder's
/// timeout passes, instead of waiting as long as TCP does, no URL leaves,
/// and issuance resumes when the network is back. One recorder worker, and
/// the second link asked for right after the first: its batch is committed
/// on the connection the worker holds, which the freeze cut off.
#[sqlx::test]
async fn issue_link_is_unavailable_when_postgres_stops_answering_and_recovers(pool: PgPool) {
    let (proxy, _, via_proxy) = through_proxy(&pool).await;
    let config = test_config(&["--record-workers=1", "--record-timeout-secs=1"]);
    let mut app = serving_with_a_link(config, via_proxy).await;
    let bucket = app.bucket.clone();

    proxy.freeze();
    let status = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        app.issue(link_request(&bucket, "k", Method::Get, 60)),
    )
    .await
    .expect("IssueLink answers although Postgres does not")
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("no link was issued"),
        "{status:?}"
    );

    proxy.thaw();
    app.wait_for(ServingStatus::Serving).await;
    app.issue(link_request(&bucket, "k", Method::Get, 60))
        .await
        .expect("works again");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        count, 2,
        "the link asked for while frozen was never recorded"
    );
}

/// A failover that strands the old primary's connections: their peer is
/// gone, nothing answers and no reset ever comes, while the address (a
/// proxy, a virtual IP) reaches the new primary. A dashboard read caught
/// mid-statement by it is given up by its caller; the connection it held
/// must not keep its place in the pool (sqlx pings a connection handed back,
/// with no bound): the next reads open a connection to the new primary and
/// answer. One connection in the read pool, so a place kept is every place;
/// a read statement's timeout of 2 s, so the connection handed back is
/// given 4 s (that and an acquire timeout) to answer.
#[sqlx::test]
async fn a_read_caught_by_a_failover_does_not_keep_its_connection(pool: PgPool) {
    let (proxy, _, via_proxy) = through_proxy(&pool).await;
    let config = test_config(&[
        "--read-db-max-connections=1",
        "--read-statement-timeout-secs=2",
    ]);
    let mut app = serving_with_a_link(config, via_proxy).await;
    let list = |seconds| {
        let mut request = tonic::Request::new(presignd::proto::ListLinksRequest {
            filter: Some(Default::default()),
            page_size: 10,
            page_token: String::new(),
        });
        request.set_timeout(std::time::Duration::from_secs(seconds));
        request
    };
    let page = app
        .links
        .list_links(list(10))
        .await
        .expect("lists")
        .into_inner();
    assert_eq!(page.links.len(), 1);

    // The read's statement waits on a lock, so it is in flight when the
    // failover comes.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE links IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let mut links = app.links.clone();
    let caught = tokio::spawn(async move { links.list_links(list(3)).await });
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = '{}'
           AND wait_event_type = 'Lock'",
        presignd::registry::READ_SESSIONS
    );
    assert_eq!(
        wait_for_count(&pool, &waiting, 1).await,
        1,
        "the read never reached its statement"
    );
    proxy.strand();
    holder.rollback().await.unwrap();
    let status = caught.await.unwrap().unwrap_err();
    assert!(
        matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{status:?}"
    );

    // Reads answer again, from a new connection, once the 4 s have passed,
    // not when TCP gives up on the stranded one.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        match app.links.list_links(list(10)).await {
            Ok(page) => {
                assert_eq!(page.into_inner().links.len(), 1);
                return;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                last = Some(status);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("reads did not recover from the failover: last {last:?}");
}
