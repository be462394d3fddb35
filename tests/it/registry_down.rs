//! Postgres going away under a running server: IssueLink fails with UNAVAILABLE
//! (no URL leaves), health turns NOT_SERVING, and both recover when it is back.
//! The outage is real: the server reaches Postgres through a TCP proxy that the
//! test closes, connections and all.

use crate::helpers::*;
use presignd::proto::Method;
use sqlx::PgPool;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tonic_health::pb::health_check_response::ServingStatus;

pub struct Proxy {
    pub addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, target)
    }

    pub fn serve(listener: TcpListener, target: SocketAddr) -> Self {
        let addr = listener.local_addr().unwrap();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                conns.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
            // Dropping `conns` (when this task is aborted) closes every connection.
        });
        Self { addr, tasks }
    }

    /// Closes the listener and every proxied connection.
    pub async fn stop(mut self) -> SocketAddr {
        self.tasks.shutdown().await;
        self.addr
    }
}

#[sqlx::test]
async fn issue_link_is_unavailable_and_health_not_serving_while_postgres_is_unreachable(
    pool: PgPool,
) {
    let options = (*pool.connect_options()).clone();
    let target: SocketAddr = format!("{}:{}", options.get_host(), options.get_port())
        .parse()
        .unwrap();
    let proxy = Proxy::start(target).await;
    let via_proxy = options.port(proxy.addr.port());
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
