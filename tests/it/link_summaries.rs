//! SummarizeLinks: every group_by, with and without filters, against the
//! fixture's links.

use crate::fixture::*;
use crate::helpers::*;
use presignd::proto::{self, GroupBy, LinkFilter, LinkState};
use sqlx::PgPool;
use tonic::Code;

/// (group, active, expired, revoked, the fixture link holding the latest expiry)
type Expected = (&'static str, u64, u64, u64, u8);

async fn assert_summary(
    app: &mut TestApp,
    pool: &PgPool,
    filter: LinkFilter,
    group_by: GroupBy,
    expected: &[Expected],
) {
    let groups = app
        .links
        .summarize_links(proto::SummarizeLinksRequest {
            filter: Some(filter),
            group_by: group_by as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .groups;
    let mut want = Vec::new();
    for &(group, active, expired, revoked, latest) in expected {
        want.push(proto::LinkSummaryGroup {
            group: group.into(),
            active,
            expired,
            revoked,
            latest_expiry: Some(expires_at(pool, latest).await),
        });
    }
    assert_eq!(groups, want, "{group_by:?}");
}

#[sqlx::test]
async fn every_group_by_counts_each_state_and_the_latest_expiry(pool: PgPool) {
    let mut app = spawn_app_with_fixture(&pool).await;
    let all = LinkFilter::default;
    #[rustfmt::skip]
    let cases: Vec<(GroupBy, LinkFilter, Vec<Expected>)> = vec![
        (GroupBy::Key, all(), vec![
            ("GKALPHA0", 0, 0, 2, 5),
            ("GKALPHA1", 3, 1, 0, 4),
            ("GKBETA0", 0, 0, 1, 10),
            ("GKBETA1", 1, 1, 0, 7),
            ("GKBETA2", 1, 0, 1, 9),
        ]),
        (GroupBy::Signer, all(), vec![
            ("alpha", 3, 1, 2, 5),
            ("beta", 2, 1, 2, 10),
        ]),
        (GroupBy::Bucket, all(), vec![
            ("archive", 1, 0, 0, 11),
            ("docs", 2, 2, 1, 10),
            ("photos", 2, 0, 3, 9),
        ]),
        (GroupBy::Caller, all(), vec![
            ("svc-a", 3, 0, 2, 5),
            ("svc-b", 1, 1, 1, 10),
            ("svc-c", 1, 1, 1, 9),
        ]),
        (GroupBy::Bucket, LinkFilter { signer: "alpha".into(), ..all() }, vec![
            ("docs", 1, 1, 0, 4),
            ("photos", 2, 0, 2, 5),
        ]),
        (GroupBy::Signer, LinkFilter { state: LinkState::Active as i32, ..all() }, vec![
            ("alpha", 3, 0, 0, 4),
            ("beta", 2, 0, 0, 7),
        ]),
        (GroupBy::Bucket, LinkFilter { state: LinkState::Expired as i32, ..all() }, vec![
            ("docs", 0, 2, 0, 3),
        ]),
        (GroupBy::Key, LinkFilter { state: LinkState::Revoked as i32, ..all() }, vec![
            ("GKALPHA0", 0, 0, 2, 5),
            ("GKBETA0", 0, 0, 1, 10),
            ("GKBETA2", 0, 0, 1, 9),
        ]),
        (GroupBy::Caller, LinkFilter { caller: "nobody".into(), ..all() }, vec![]),
    ];
    for (group_by, filter, expected) in cases {
        assert_summary(&mut app, &pool, filter, group_by, &expected).await;
    }
}

#[sqlx::test]
async fn summarize_without_a_group_by_is_invalid_argument_naming_it(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    for group_by in [GroupBy::Unspecified as i32, 42] {
        let status = app
            .links
            .summarize_links(proto::SummarizeLinksRequest {
                filter: None,
                group_by,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with("group_by:"), "{status:?}");
    }
}
