//! Links whose answers the dashboards tests know (tests/fixtures/dashboards.sql:
//! eleven links over five keys in every state), and ways to read them back.

use crate::helpers::*;
use presignd::proto::{self, LinkFilter};
use sqlx::PgPool;

/// A server whose registry holds the fixture links. The fixture goes in once the
/// server is ready: its keys' secrets are fake, and a server loads active keys
/// only at startup.
pub async fn spawn_app_with_fixture(pool: &PgPool) -> TestApp {
    let app = spawn_app(pool).await;
    seed_fixture(pool).await;
    app
}

pub async fn seed_fixture(pool: &PgPool) {
    sqlx::raw_sql(include_str!("../fixtures/dashboards.sql"))
        .execute(pool)
        .await
        .expect("the dashboards fixture loads");
}

/// The id of fixture link `n`.
pub fn id(n: u8) -> String {
    format!("00000000-0000-7000-8000-0000000000{n:02}")
}

pub fn ids(ns: &[u8]) -> Vec<String> {
    ns.iter().map(|&n| id(n)).collect()
}

/// The fixture link's expires_at, as the registry holds it.
pub async fn expires_at(pool: &PgPool, n: u8) -> prost_types::Timestamp {
    let t: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT expires_at FROM links WHERE id = $1::uuid")
            .bind(id(n))
            .fetch_one(pool)
            .await
            .unwrap();
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub async fn list_page(
    app: &mut TestApp,
    filter: LinkFilter,
    page_size: u32,
    page_token: &str,
) -> Result<proto::ListLinksResponse, tonic::Status> {
    app.links
        .list_links(proto::ListLinksRequest {
            filter: Some(filter),
            page_size,
            page_token: page_token.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Every link matching `filter`, walking pages of 3.
pub async fn list_all(app: &mut TestApp, filter: LinkFilter) -> Vec<proto::Link> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = list_page(app, filter.clone(), 3, &token).await.unwrap();
        assert!(page.links.len() <= 3);
        out.extend(page.links);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

pub async fn list_ids(app: &mut TestApp, filter: LinkFilter) -> Vec<String> {
    list_all(app, filter)
        .await
        .into_iter()
        .map(|l| l.id)
        .collect()
}
pub async fn state_of(app: &mut TestApp, id: &str) -> i32 {
    app.links
        .get_link(proto::GetLinkRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .state
}
