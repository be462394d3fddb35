//! LookupLink: from a URL back to its link and the blast radius of its key; and
//! the blast radius itself, against links whose answers are known.

use crate::fixture::seed_fixture;
use crate::helpers::*;
use presignd::proto::{self, Method, link_service_client::LinkServiceClient};
use presignd::registry::links::blast_radius;
use sqlx::PgPool;
use tonic::Code;

async fn lookup(app: &mut TestApp, url: &str) -> Result<proto::LookupLinkResponse, tonic::Status> {
    app.links
        .lookup_link(proto::LookupLinkRequest { url: url.into() })
        .await
        .map(|r| r.into_inner())
}

fn count(name: &str, count: u64) -> proto::Count {
    proto::Count {
        name: name.into(),
        count,
    }
}

#[sqlx::test]
async fn an_issued_url_leads_to_its_link_and_the_blast_radius_of_its_key(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let (a, b) = {
        let buckets = env("PRESIGND_TEST_BUCKETS");
        let mut it = buckets.split(',');
        (it.next().unwrap().to_owned(), it.next().unwrap().to_owned())
    };
    let first = app
        .issue(link_request(&a, &unique_key("lookup"), Method::Get, 600))
        .await
        .unwrap();
    let shortest = app
        .issue(link_request(&a, &unique_key("lookup"), Method::Get, 60))
        .await
        .unwrap();
    let last = app
        .issue(link_request(&b, &unique_key("lookup"), Method::Put, 900))
        .await
        .unwrap();

    let found = lookup(&mut app, &first.url).await.unwrap();
    let link = found.link.unwrap();
    assert_eq!(link, first.link.clone().unwrap());
    let radius = found.blast_radius.expect("admins see the blast radius");
    assert_eq!(radius.key_id, link.key_id);
    assert_eq!(radius.signer, "default");
    assert_eq!(radius.outstanding_links, 3);
    assert_eq!(radius.top_buckets, vec![count(&a, 2), count(&b, 1)]);
    assert_eq!(radius.top_callers, vec![count(CALLER, 3)]);
    assert_eq!(radius.per_method, vec![count("GET", 2), count("PUT", 1)]);
    assert_eq!(radius.sample_link_ids.len(), 3);
    assert_eq!(radius.sample_link_ids[0], last.link.clone().unwrap().id);
    assert_eq!(radius.latest_expiry, last.link.unwrap().expires_at);
    assert_eq!(radius.earliest_expiry, shortest.link.unwrap().expires_at);
}

#[sqlx::test]
async fn a_url_with_one_signature_character_changed_is_not_found(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let issued = app
        .issue(link_request(
            &app.bucket.clone(),
            &unique_key("alter"),
            Method::Get,
            60,
        ))
        .await
        .unwrap();
    let altered = with_signature_altered(&issued.url);
    assert_ne!(altered, issued.url);
    let status = lookup(&mut app, &altered).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        lookup(&mut app, &issued.url).await.is_ok(),
        "the original is found"
    );
}

#[sqlx::test]
async fn a_real_signature_on_another_object_or_access_key_is_not_found(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let key = unique_key("moved");
    let issued = app
        .issue(link_request(&app.bucket.clone(), &key, Method::Get, 60))
        .await
        .unwrap();
    let key_id = issued.link.unwrap().key_id;
    // The key has only unreserved characters and '/': it appears as is.
    for (what, url) in [
        ("another key", issued.url.replace(&key, "it/elsewhere")),
        (
            "another bucket",
            issued
                .url
                .replace(&format!("/{}/", app.bucket), "/presignd-dev/"),
        ),
        ("another access key", issued.url.replace(&key_id, "GKother")),
    ] {
        assert_ne!(url, issued.url, "{what}");
        let status = lookup(&mut app, &url).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{what}: {status:?}");
    }
}

#[sqlx::test]
async fn anything_but_a_presigned_url_is_invalid_argument_naming_url(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let issued = app
        .issue(link_request(
            &app.bucket.clone(),
            &unique_key("garbage"),
            Method::Get,
            60,
        ))
        .await
        .unwrap();
    let path_and_query = &issued.url[issued.url.find("/presignd").unwrap()..];
    let unsigned = issued.url.split_once('?').unwrap().0.to_owned();
    for bad in [
        "",
        "garbage",
        "💥",
        path_and_query,
        unsigned.as_str(),
        "http://127.0.0.1:3900/b/k?X-Amz-Signature=abc",
    ] {
        let status = lookup(&mut app, bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
        assert!(status.message().starts_with("url:"), "{status:?}");
        assert!(
            !status.message().contains("X-Amz-Signature="),
            "the URL is not echoed"
        );
    }
}

#[sqlx::test]
async fn identical_urls_signed_in_the_same_second_lead_to_the_earliest_link(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    // Two issues within one second sign the same URL; retry across a second
    // boundary, with a new key each time: a straddling attempt's second link
    // would otherwise be the earliest twin of the next attempt's.
    for _ in 0..5 {
        let req = link_request(&app.bucket.clone(), &unique_key("twin"), Method::Get, 60);
        let first = app.issue(req.clone()).await.unwrap();
        let second = app.issue(req.clone()).await.unwrap();
        if first.url != second.url {
            continue;
        }
        let found = lookup(&mut app, &second.url).await.unwrap();
        assert_eq!(found.link.unwrap().id, first.link.unwrap().id);
        return;
    }
    panic!("never issued two links within the same second");
}

#[sqlx::test]
async fn a_caller_who_is_not_admin_finds_only_its_own_links_and_no_blast_radius(pool: PgPool) {
    let token = "svc-a-token-for-tests";
    // `--callers=` replaces the helpers' list: keep the admin caller in it.
    let callers = format!(
        "--callers={CALLER}:{},svc-a:{}",
        presignd::auth::hash_token(TOKEN),
        presignd::auth::hash_token(token)
    );
    let mut app = spawn_app_with(test_config(&[&callers]), (*pool.connect_options()).clone()).await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    seed_fixture(&pool).await;
    let bearer = format!("Bearer {token}");
    let mut svc_a = LinkServiceClient::with_interceptor(
        app.channel.clone(),
        move |mut r: tonic::Request<()>| {
            r.metadata_mut()
                .insert("authorization", bearer.parse().unwrap());
            Ok(r)
        },
    );

    let own = svc_a
        .issue_link(link_request(
            &app.bucket,
            &unique_key("own"),
            Method::Get,
            60,
        ))
        .await
        .unwrap()
        .into_inner();
    let found = svc_a
        .lookup_link(proto::LookupLinkRequest {
            url: own.url.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.link.unwrap().id, own.link.clone().unwrap().id);
    assert!(
        found.blast_radius.is_none(),
        "it names other callers' links"
    );

    let admins = app
        .issue(link_request(&app.bucket.clone(), "k", Method::Get, 60))
        .await
        .unwrap();
    let status = svc_a
        .lookup_link(proto::LookupLinkRequest { url: admins.url })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = svc_a
        .get_link(proto::GetLinkRequest {
            id: admins.link.unwrap().id,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // Listing and summaries are narrowed to svc-a's links (fixture 1, 2, 5, 6, 11
    // and the one just issued).
    let listed = svc_a
        .list_links(proto::ListLinksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .links;
    assert_eq!(listed.len(), 6);
    assert!(listed.iter().all(|l| l.caller == "svc-a"));
    let groups = svc_a
        .summarize_links(proto::SummarizeLinksRequest {
            filter: None,
            group_by: proto::GroupBy::Caller as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .groups;
    assert_eq!(groups.len(), 1);
    assert_eq!((groups[0].active, groups[0].revoked), (4, 2));
    let status = svc_a
        .list_links(proto::ListLinksRequest {
            filter: Some(proto::LinkFilter {
                caller: "svc-b".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[sqlx::test]
async fn the_blast_radius_counts_only_the_outstanding_links_of_the_key(pool: PgPool) {
    seed_fixture(&pool).await;
    // Fixture links 1, 2, 4 are outstanding for GKALPHA1 (3 has expired).
    let r = blast_radius(&mut pool.acquire().await.unwrap(), "GKALPHA1")
        .await
        .unwrap()
        .unwrap();
    let ids = |ns: &[u8]| -> Vec<uuid::Uuid> {
        ns.iter()
            .map(|n| {
                format!("00000000-0000-7000-8000-0000000000{n:02}")
                    .parse()
                    .unwrap()
            })
            .collect()
    };
    let named = |v: &[(&str, i64)]| -> Vec<(String, i64)> {
        v.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    };
    assert_eq!(
        (r.signer.as_str(), r.key_state.as_str()),
        ("alpha", "active")
    );
    assert_eq!(r.outstanding_links, 3);
    assert_eq!(r.top_buckets, named(&[("photos", 2), ("docs", 1)]));
    assert_eq!(r.top_callers, named(&[("svc-a", 2), ("svc-b", 1)]));
    assert_eq!(r.per_method, named(&[("GET", 1), ("HEAD", 1), ("PUT", 1)]));
    assert_eq!(r.sample_link_ids, ids(&[4, 2, 1]), "expiring last first");
    let expiry = |n: u8| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
                "SELECT expires_at FROM links WHERE id = $1",
            )
            .bind(ids(&[n])[0])
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(r.earliest_expiry, Some(expiry(1).await));
    assert_eq!(r.latest_expiry, Some(expiry(4).await));

    // A link marked by a revocation is not outstanding (fixture 9); an inactive
    // key has nothing left to break, and its state says why.
    assert_eq!(
        blast_radius(&mut pool.acquire().await.unwrap(), "GKBETA2")
            .await
            .unwrap()
            .unwrap()
            .outstanding_links,
        1
    );
    let inactive = blast_radius(&mut pool.acquire().await.unwrap(), "GKALPHA0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (inactive.outstanding_links, inactive.key_state.as_str()),
        (0, "inactive")
    );
    assert!(
        blast_radius(&mut pool.acquire().await.unwrap(), "GKNOSUCHKEY")
            .await
            .unwrap()
            .is_none()
    );

    // A key with no outstanding link at all.
    sqlx::query(
        "UPDATE links SET expires_at = issued_at + interval '1 second' WHERE key_id = 'GKBETA1'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let none = blast_radius(&mut pool.acquire().await.unwrap(), "GKBETA1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(none.outstanding_links, 0);
    assert!(none.top_buckets.is_empty() && none.sample_link_ids.is_empty());
    assert_eq!(none.latest_expiry, None);

    // Top 5 only, most links first: seven buckets with 7, 6, ... 1 links.
    sqlx::query(
        "INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key,
                            issued_at, expires_at, signature_sha256)
         SELECT gen_random_uuid(), 'GKBETA1', 'beta', 'svc-c', 'GET', 'bucket-' || b, 'k',
                now(), now() + interval '1 hour', sha256(gen_random_uuid()::text::bytea)
         FROM generate_series(1, 7) AS b, generate_series(1, b) AS i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let top = blast_radius(&mut pool.acquire().await.unwrap(), "GKBETA1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(top.outstanding_links, 28);
    assert_eq!(
        top.top_buckets,
        named(&[
            ("bucket-7", 7),
            ("bucket-6", 6),
            ("bucket-5", 5),
            ("bucket-4", 4),
            ("bucket-3", 3)
        ])
    );
    assert_eq!(top.sample_link_ids.len(), 5);
}
