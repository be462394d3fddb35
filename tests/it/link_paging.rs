//! ListLinks paging over the dashboards fixture: page tokens that only open for
//! the filter they were issued with (every listing's paging: tests/it/paging.rs).

use crate::fixture::*;
use presignd::proto::LinkFilter;
use sqlx::PgPool;
use tonic::Code;

#[sqlx::test]
async fn an_altered_page_token_or_one_used_with_another_filter_is_refused(pool: PgPool) {
    let mut app = spawn_app_with_fixture(&pool).await;
    let photos = LinkFilter {
        bucket: "photos".into(),
        ..Default::default()
    };
    let first = list_page(&mut app, photos.clone(), 2, "").await.unwrap();
    assert_eq!(first.links.len(), 2);
    let token = first.next_page_token;
    assert!(!token.is_empty());

    let second = list_page(&mut app, photos.clone(), 2, &token)
        .await
        .unwrap();
    assert_eq!(
        second
            .links
            .iter()
            .map(|l| l.id.clone())
            .collect::<Vec<_>>(),
        ids(&[5, 6])
    );

    let mut altered = token.clone().into_bytes();
    altered[10] = if altered[10] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    for (name, filter, token) in [
        ("altered", photos.clone(), altered.as_str()),
        ("garbage", photos.clone(), "not a token"),
        (
            "another filter",
            LinkFilter {
                bucket: "docs".into(),
                ..Default::default()
            },
            token.as_str(),
        ),
        ("no filter", LinkFilter::default(), token.as_str()),
    ] {
        let status = list_page(&mut app, filter, 2, token).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().starts_with("page_token:"),
            "{name}: {status:?}"
        );
    }
}
