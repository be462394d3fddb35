//! Dashboards from a replica (`--read-database-url`): GetLink, ListLinks and
//! SummarizeLinks read there; IssueLink, LookupLink, VerifyLink,
//! PlanRevocation and KeyService's listings stay on the primary. Shown first with a "replica"
//! nobody answers at (the three fail UNAVAILABLE, the rest work), then, when
//! `deploy/dev/stack.sh replica` runs one, through a real streaming replica.

use crate::helpers::*;
use presignd::proto::{self, Method};
use sqlx::PgPool;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

fn summarize() -> proto::SummarizeLinksRequest {
    proto::SummarizeLinksRequest {
        filter: None,
        group_by: proto::GroupBy::Signer as i32,
    }
}

#[sqlx::test]
async fn the_three_dashboard_reads_go_to_the_replica_and_the_rest_to_the_primary(pool: PgPool) {
    // Port 1: nothing listens there, every connection is refused at once.
    let config = test_config(&["--read-database-url=postgres://presignd:x@127.0.0.1:1/nowhere"]);
    let mut app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(ServingStatus::Serving).await;
    let issued = app
        .issue(link_request(
            &app.bucket.clone(),
            &unique_key("replica"),
            Method::Get,
            600,
        ))
        .await
        .expect("IssueLink writes the primary");
    let id = issued.link.as_ref().unwrap().id.clone();

    let get = app
        .links
        .get_link(proto::GetLinkRequest { id: id.clone() })
        .await;
    let list = app
        .links
        .list_links(proto::ListLinksRequest::default())
        .await;
    let summary = app.links.summarize_links(summarize()).await;
    for (rpc, code) in [
        ("GetLink", get.err().map(|s| s.code())),
        ("ListLinks", list.err().map(|s| s.code())),
        ("SummarizeLinks", summary.err().map(|s| s.code())),
    ] {
        assert_eq!(code, Some(Code::Unavailable), "{rpc} reads the replica");
    }

    let found = app
        .links
        .lookup_link(proto::LookupLinkRequest {
            url: issued.url.clone(),
        })
        .await
        .expect("LookupLink reads the primary")
        .into_inner();
    assert_eq!(found.link.unwrap().id, id);
    for link in [
        proto::verify_link_request::Link::LinkId(id.clone()),
        proto::verify_link_request::Link::Url(issued.url.clone()),
    ] {
        app.links
            .verify_link(proto::VerifyLinkRequest { link: Some(link) })
            .await
            .expect("VerifyLink reads the primary, by id as by URL");
    }
    let plan = app
        .keys
        .plan_revocation(proto::PlanRevocationRequest {
            target: Some(proto::plan_revocation_request::Target::Signer(
                "default".into(),
            )),
        })
        .await
        .expect("PlanRevocation reads the primary")
        .into_inner();
    assert_eq!(plan.outstanding_links, 1);
    app.keys
        .list_signing_keys(proto::ListSigningKeysRequest::default())
        .await
        .expect("ListSigningKeys reads the primary");
    app.keys
        .list_audit_events(proto::ListAuditEventsRequest::default())
        .await
        .expect("ListAuditEvents reads the primary");
    // The replica's pool has series of its own (no connection open: every
    // attempt was refused).
    let text = crate::metrics::scrape(&app).await;
    let replica = [("pool", "replica")];
    assert_eq!(
        crate::metrics::sample(&text, "presignd_registry_connections_max", &replica),
        4.0,
        "--read-db-max-connections: {text}"
    );
    assert_eq!(
        crate::metrics::sample(&text, "presignd_registry_connections", &replica),
        0.0,
        "{text}"
    );
    assert!(
        text.contains("presignd_registry_connections{pool=\"replica\",state=\"idle\"} 0"),
        "{text}"
    );
}

/// Through the dev stack's streaming replica (`deploy/dev/stack.sh replica`,
/// started by deploy/dev/test.sh; REPLICA_DATABASE_URL): fails loudly without it.
#[sqlx::test]
async fn a_link_is_read_through_a_real_replica_once_it_replayed(pool: PgPool) {
    let replica_server = env("REPLICA_DATABASE_URL");
    let (server, _) = replica_server.rsplit_once('/').unwrap();
    // The replica replicates the whole cluster: this test's database too.
    let db = pool.connect_options().get_database().unwrap().to_owned();
    let replica_url = format!("{server}/{db}");
    let config = test_config(&[&format!("--read-database-url={replica_url}")]);
    let mut app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(ServingStatus::Serving).await;
    let issued = app
        .issue(link_request(
            &app.bucket.clone(),
            &unique_key("replica"),
            Method::Get,
            600,
        ))
        .await
        .unwrap();
    let id = issued.link.as_ref().unwrap().id.clone();

    // Wait until the replica replayed the primary's WAL past the link's commit
    // (a condition, not a guess of the lag).
    let committed: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    // Asked on the replica's dev database: this test's own database exists
    // there only once the replica replayed its creation too.
    let replica = sqlx::PgPool::connect(&replica_server)
        .await
        .expect("the replica accepts connections");
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&replica)
        .await
        .unwrap();
    assert!(in_recovery, "{server} is a standby");
    let mut replayed = false;
    for _ in 0..600 {
        replayed = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
            .bind(&committed)
            .fetch_one(&replica)
            .await
            .unwrap();
        if replayed {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(replayed, "the replica replays past {committed} within 30 s");

    let link = app
        .links
        .get_link(proto::GetLinkRequest { id: id.clone() })
        .await
        .expect("GetLink finds the link on the replica")
        .into_inner();
    assert_eq!(link.id, id);
    let listed = app
        .links
        .list_links(proto::ListLinksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.links.len(), 1);
    let summary = app
        .links
        .summarize_links(summarize())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.groups.iter().map(|g| g.active).sum::<u64>(), 1);
    // The reads came from the replica: the server's read pool holds
    // connections to this database there.
    let sessions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&db)
    .fetch_one(&replica)
    .await
    .unwrap();
    assert!(
        sessions >= 1,
        "the server's read pool is connected to the replica"
    );
}
