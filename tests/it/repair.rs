//! After a revocation, against Garage through the gRPC server: the leaked link
//! is quarantined, ReissueLinks gives each caller working replacements of its
//! innocent links (the remaining lifetime, the same bound headers, one
//! replacement per link however often it is called), and WatchRevocations
//! tells the affected callers only, resumably, whoever drives the revocation.

use crate::helpers::*;
use presignd::proto::{
    GetRevocationRequest, IssueLinkResponse, LookupLinkRequest, Method, PlanRevocationRequest,
    ReissueLinksRequest, ReissueLinksResponse, RevocationEvent, RevokeKeyRequest, RotationMode,
    SkipReason, WatchRevocationsRequest, WatchRevocationsResponse,
    link_service_client::LinkServiceClient, plan_revocation_request::Target,
};
use presignd::revocation::{RotateRequest, Rotation};
use reqwest::StatusCode;
use sqlx::PgPool;
use std::time::Duration;
use tonic::Code;
use tonic::codec::Streaming;

fn revoke(key_id: &str, quarantine: &[&str]) -> RevokeKeyRequest {
    RevokeKeyRequest {
        key_id: key_id.into(),
        reason: "incident: one link leaked".into(),
        dry_run: false,
        detach: false,
        quarantine_link_ids: quarantine.iter().map(|s| s.to_string()).collect(),
    }
}

fn reissue_req(revocation_id: &str, caller: &str) -> ReissueLinksRequest {
    ReissueLinksRequest {
        revocation_id: revocation_id.into(),
        caller: caller.into(),
        ..Default::default()
    }
}

fn links_as_b(app: &TestApp) -> Links {
    LinkServiceClient::with_interceptor(app.channel.clone(), with_token_b as Auth)
}

fn id(l: &IssueLinkResponse) -> String {
    l.link.as_ref().unwrap().id.clone()
}

/// The replacement of `original` in a ReissueLinks answer, as an
/// IssueLinkResponse (what `try_link` sends).
fn replacement(r: &ReissueLinksResponse, original: &str) -> IssueLinkResponse {
    let l = r
        .links
        .iter()
        .find(|l| l.replaces_link_id == original)
        .unwrap_or_else(|| panic!("no replacement of {original} in {r:?}"));
    IssueLinkResponse {
        link: l.link.clone(),
        url: l.url.clone(),
        headers: l.headers.clone(),
    }
}

fn x_amz_expires(url: &str) -> i64 {
    let q = url::Url::parse(url).unwrap();
    q.query_pairs()
        .find(|(k, _)| k == "X-Amz-Expires")
        .unwrap()
        .1
        .parse()
        .unwrap()
}

#[sqlx::test]
async fn reissue_replaces_the_innocent_links_once_and_never_the_quarantined_one(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let mut b = links_as_b(&app);
    let bucket = buckets()[0].clone();
    let (obj, put) = put_sample(&mut app, &bucket).await;
    let mut get = link_request(&bucket, &obj, Method::Get, 600);
    get.labels.insert("team".into(), "billing".into());
    get.response_content_disposition = "attachment; filename=\"r.txt\"".into();
    let get = app.issue(get).await.unwrap();
    let mut typed_put = link_request(&bucket, &unique_key("typed"), Method::Put, 900);
    typed_put.content_type = "text/plain".into();
    let typed_put = app.issue(typed_put).await.unwrap();
    let leaked = app
        .issue(link_request(&bucket, &obj, Method::Get, 900))
        .await
        .unwrap();
    let theirs = b
        .issue_link(link_request(&bucket, &obj, Method::Get, 600))
        .await
        .unwrap()
        .into_inner();
    let old_key = get.link.as_ref().unwrap().key_id.clone();

    // Quarantine is checked: a link of the key, by id, a bounded count.
    for (bad, why) in [
        ("not-a-uuid".to_owned(), "is not a UUID"),
        (
            uuid::Uuid::now_v7().to_string(),
            "is not a link signed by key",
        ),
    ] {
        let e = app
            .keys
            .revoke_key(revoke(&old_key, &[&bad]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with("quarantine_link_ids"), "{e:?}");
        assert!(
            e.message().contains(&bad) && e.message().contains(why),
            "{e:?}"
        );
    }
    let many: Vec<String> = (0..101).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let many: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
    let e = app
        .keys
        .revoke_key(revoke(&old_key, &many))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut graceful = rotate_req("default", RotationMode::Graceful, "");
    graceful.quarantine_link_ids = vec![id(&leaked)];
    let e = app.keys.rotate_key(graceful).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    let report = app
        .keys
        .revoke_key(revoke(&old_key, &[&id(&leaked)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.quarantined_link_ids, [id(&leaked)]);
    assert_eq!(report.links_revoked, 5);
    let got = app
        .keys
        .get_revocation(GetRevocationRequest {
            id: report.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.quarantined_link_ids, [id(&leaked)]);
    let audited: String = sqlx::query_scalar(
        "SELECT target FROM audit_events WHERE rpc = 'presignd.v1.KeyService/RevokeKey' AND code = 'OK'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        audited.contains(&format!("quarantine={}", id(&leaked))),
        "{audited}"
    );
    for l in [&put, &get, &typed_put, &leaked, &theirs] {
        assert_eq!(try_link(&app.http, l).await, StatusCode::FORBIDDEN);
    }

    // The caller's own links: working replacements, the leaked one skipped.
    let mine = app
        .links
        .reissue_links(reissue_req(&report.id, CALLER))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.links.len(), 3, "{mine:?}");
    assert_eq!(mine.skipped.len(), 1);
    assert_eq!(mine.skipped[0].link_id, id(&leaked));
    assert_eq!(mine.skipped[0].reason, SkipReason::Quarantined as i32);
    for original in [&put, &get, &typed_put] {
        let o = original.link.as_ref().unwrap();
        let r = replacement(&mine, &o.id);
        let l = r.link.as_ref().unwrap();
        assert_ne!(l.id, o.id);
        assert_eq!(l.replaces_link_id, o.id);
        assert_eq!(l.key_id, report.new_key_id);
        assert_eq!(
            (&l.bucket, &l.object_key, l.method, &l.caller, &l.labels),
            (&o.bucket, &o.object_key, o.method, &o.caller, &o.labels)
        );
        assert_eq!(l.expires_at, o.expires_at, "the remaining lifetime");
        let lifetime = l.expires_at.unwrap().seconds - l.issued_at.unwrap().seconds;
        assert_eq!(x_amz_expires(&r.url), lifetime);
        assert!(l.issued_at.unwrap().seconds >= o.issued_at.unwrap().seconds);
        assert_eq!(r.headers, original.headers, "the same bound headers");
        assert_eq!(try_link(&app.http, &r).await, StatusCode::OK);
        // The URL is the one recorded: its signature finds its row.
        let found = app
            .links
            .lookup_link(LookupLinkRequest { url: r.url.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(found.link.unwrap().id, l.id);
    }
    let served = app
        .http
        .get(&replacement(&mine, &id(&get)).url)
        .send()
        .await
        .unwrap();
    assert_eq!(
        served.headers()["content-disposition"],
        "attachment; filename=\"r.txt\""
    );

    // Twice: the same replacements (ids and URLs), one row each.
    let again = app
        .links
        .reissue_links(reissue_req(&report.id, CALLER))
        .await
        .unwrap()
        .into_inner();
    for original in [&put, &get, &typed_put] {
        let (first, second) = (
            replacement(&mine, &id(original)),
            replacement(&again, &id(original)),
        );
        assert_eq!(id(&first), id(&second));
        assert_eq!(first.url, second.url);
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM links WHERE replaces_link_id = $1::uuid")
                .bind(id(original))
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(rows, 1);
    }

    // Another caller gets its own link back, none of these; it may not ask
    // for someone else's.
    let bs = b
        .reissue_links(reissue_req(&report.id, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bs.links.len(), 1, "{bs:?}");
    assert_eq!(bs.links[0].replaces_link_id, id(&theirs));
    assert!(bs.skipped.is_empty());
    assert_eq!(
        try_link(&app.http, &replacement(&bs, &id(&theirs))).await,
        StatusCode::OK
    );
    let e = b
        .reissue_links(reissue_req(&report.id, CALLER))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = b
        .reissue_links(reissue_req(&uuid::Uuid::now_v7().to_string(), ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Replacements are links like any other: the new key's blast radius
    // counts them (3 of the caller's, 1 of the other's).
    let plan = app
        .keys
        .plan_revocation(PlanRevocationRequest {
            target: Some(Target::KeyId(report.new_key_id.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.outstanding_links, 4);
}

#[sqlx::test]
async fn a_page_of_two_then_the_rest_covers_every_link_once(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = buckets()[0].clone();
    let (obj, put) = put_sample(&mut app, &bucket).await;
    let mut originals = vec![id(&put)];
    for _ in 0..4 {
        originals.push(id(&app
            .issue(link_request(&bucket, &obj, Method::Get, 600))
            .await
            .unwrap()));
    }
    let key = put.link.as_ref().unwrap().key_id.clone();
    let report = app
        .keys
        .revoke_key(revoke(&key, &[]))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .links
            .reissue_links(ReissueLinksRequest {
                page_size: 2,
                page_token: token,
                ..reissue_req(&report.id, "")
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.links.len() <= 2);
        seen.extend(page.links.iter().map(|l| l.replaces_link_id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    seen.sort();
    originals.sort();
    assert_eq!(seen, originals);
    let e = app
        .links
        .reissue_links(ReissueLinksRequest {
            page_token: "forged".into(),
            ..reissue_req(&report.id, "")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("page_token"), "{e:?}");
}

async fn next_event(stream: &mut Streaming<WatchRevocationsResponse>) -> RevocationEvent {
    tokio::time::timeout(Duration::from_secs(15), stream.message())
        .await
        .expect("an event within 15 s")
        .expect("the stream is healthy")
        .expect("the stream goes on")
        .event
        .expect("every message carries an event")
}

async fn watch(
    client: &mut Links,
    after: Option<u64>,
    caller: &str,
) -> Streaming<WatchRevocationsResponse> {
    client
        .watch_revocations(WatchRevocationsRequest {
            after_sequence: after,
            caller: caller.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

#[sqlx::test]
async fn watchers_hear_of_their_links_only_and_resume_without_a_gap(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let mut b = links_as_b(&app);
    let bucket = buckets()[0].clone();
    let (obj, first) = put_sample(&mut app, &bucket).await;
    let mut wa = watch(&mut app.links.clone(), None, CALLER).await;
    let mut wb = watch(&mut b, None, "").await;
    let e = b.watch_revocations(WatchRevocationsRequest {
        after_sequence: None,
        caller: CALLER.into(),
    });
    assert_eq!(e.await.unwrap_err().code(), Code::PermissionDenied);

    // 1. Only the admin caller has links of the first key.
    let key1 = first.link.as_ref().unwrap().key_id.clone();
    let r1 = app
        .keys
        .revoke_key(revoke(&key1, &[]))
        .await
        .unwrap()
        .into_inner();
    let e1 = next_event(&mut wa).await;
    assert_eq!(
        (e1.revocation_id.as_str(), e1.caller.as_str()),
        (r1.id.as_str(), CALLER)
    );
    assert_eq!(
        (e1.links, e1.quarantined, e1.key_id.as_str()),
        (1, 0, key1.as_str())
    );
    assert_eq!(e1.earliest_expiry, first.link.as_ref().unwrap().expires_at);
    drop(wa);

    // 2. While the admin caller is away, a revocation kills links of both.
    let a2 = app
        .issue(link_request(&bucket, &obj, Method::Get, 600))
        .await
        .unwrap();
    let b2 = b
        .issue_link(link_request(&bucket, &obj, Method::Get, 300))
        .await
        .unwrap()
        .into_inner();
    let key2 = a2.link.as_ref().unwrap().key_id.clone();
    let r2 = app
        .keys
        .revoke_key(revoke(&key2, &[&id(&a2)]))
        .await
        .unwrap()
        .into_inner();
    // The other caller's first event is this one: it never heard of r1.
    let eb = next_event(&mut wb).await;
    assert_eq!(
        (eb.revocation_id.as_str(), eb.caller.as_str()),
        (r2.id.as_str(), CALLER_B)
    );
    assert_eq!((eb.links, eb.quarantined), (1, 0));
    assert_eq!(eb.earliest_expiry, b2.link.as_ref().unwrap().expires_at);

    // 3. Back with its cursor, the admin caller misses nothing.
    let mut wa = watch(&mut app.links.clone(), Some(e1.sequence), CALLER).await;
    let e2 = next_event(&mut wa).await;
    assert_eq!(
        (e2.revocation_id.as_str(), e2.caller.as_str()),
        (r2.id.as_str(), CALLER)
    );
    assert_eq!((e2.links, e2.quarantined), (1, 1));
    assert!(e2.sequence > e1.sequence);

    // 4. A revocation the maintenance loop drives (resume_all) is told too.
    let a3 = app
        .issue(link_request(&bucket, &obj, Method::Get, 600))
        .await
        .unwrap();
    let started = app
        .revocations
        .start(RotateRequest {
            signer: presignd::domain::SignerName::parse("default").unwrap(),
            mode: presignd::domain::RotationMode::Revoke,
            reason: "driven by the maintenance loop".into(),
            expected_key_id: None,
            dry_run: false,
            requested_by: CALLER.into(),
            quarantine_link_ids: Vec::new(),
        })
        .await
        .unwrap();
    let Rotation::Ran(row) = started else {
        panic!("not a dry run")
    };
    assert!(app.revocations.resume_all().await.unwrap().is_empty());
    let e3 = next_event(&mut wa).await;
    assert_eq!(e3.revocation_id, row.id.to_string());
    assert_eq!(e3.key_id, a3.link.as_ref().unwrap().key_id);

    // An admin watching everyone, from the start, sees all four in order.
    let mut all = watch(&mut app.links.clone(), Some(0), "").await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let e = next_event(&mut all).await;
        seen.push((e.revocation_id, e.caller));
    }
    // The two events of r2 are one insert: their order between them is free.
    seen[1..3].sort();
    assert_eq!(
        seen,
        [
            (r1.id.clone(), CALLER.to_owned()),
            (r2.id.clone(), CALLER.to_owned()),
            (r2.id.clone(), CALLER_B.to_owned()),
            (row.id.to_string(), CALLER.to_owned()),
        ]
    );

    // Shutdown ends the streams with UNAVAILABLE (they do not hold the drain).
    drop(app);
    let ended = tokio::time::timeout(Duration::from_secs(15), wb.message())
        .await
        .expect("the stream ends within 15 s of the shutdown");
    assert_eq!(ended.unwrap_err().code(), Code::Unavailable);
}

#[sqlx::test]
async fn presignctl_revokes_with_a_quarantine_and_reissues_the_rest(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = buckets()[0].clone();
    let (obj, put) = put_sample(&mut app, &bucket).await;
    let get = app
        .issue(link_request(&bucket, &obj, Method::Get, 600))
        .await
        .unwrap();
    let key = put.link.as_ref().unwrap().key_id.clone();
    let run = presignctl(
        &app,
        TOKEN,
        &[
            "revoke",
            "--key",
            &key,
            "--reason",
            "leak",
            "--quarantine",
            &id(&put),
            "--yes",
            "--json",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        report["quarantined_link_ids"],
        serde_json::json!([id(&put)])
    );
    let revocation = report["id"].as_str().unwrap().to_owned();

    let run = presignctl(&app, TOKEN, &["reissue", &revocation], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{}", run.stdout);
    assert_eq!(lines[0]["replaces_link_id"], id(&get));
    let served = app
        .http
        .get(lines[0]["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    assert!(
        run.stderr.contains(&id(&put)) && run.stderr.contains("QUARANTINED"),
        "{}",
        run.stderr
    );
}

/// The value of the watchers gauge in a scrape.
fn watchers_gauge(text: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix("presignd_revocation_watchers "))
        .expect("the gauge is exported")
        .parse()
        .unwrap()
}

#[sqlx::test]
async fn watch_streams_are_capped_per_caller_and_per_replica(pool: PgPool) {
    use tonic_types::StatusExt;
    let config = test_config(&["--max-watchers=3", "--max-watchers-per-caller=2"]);
    let app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let mut a = app.links.clone();
    let mut b = links_as_b(&app);
    let first = watch(&mut a, None, "").await;
    let _second = watch(&mut a, None, "").await;
    // A third for the same caller: its own limit, named.
    let refused = a
        .watch_revocations(WatchRevocationsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("--max-watchers-per-caller=2"),
        "{refused:?}"
    );
    assert!(refused.get_details_retry_info().is_some(), "{refused:?}");
    // Another caller still gets one, up to the replica's limit.
    let _b1 = watch(&mut b, None, "").await;
    let refused = b
        .watch_revocations(WatchRevocationsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("--max-watchers=3"),
        "{refused:?}"
    );
    assert_eq!(watchers_gauge(&crate::metrics::scrape(&app).await), 3.0);
    // A stream its client drops gives its place back.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let again = loop {
        match a
            .watch_revocations(WatchRevocationsRequest::default())
            .await
        {
            Ok(s) => break s.into_inner(),
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the dropped stream's place never came back"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(watchers_gauge(&crate::metrics::scrape(&app).await), 3.0);
    drop(again);
}

#[sqlx::test]
async fn retention_prunes_old_events_and_a_cursor_before_them_is_refused(pool: PgPool) {
    use presignd::lifecycle::{self, Retention};
    use tonic_types::StatusExt;
    let mut app = spawn_app(&pool).await;
    let revocation = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO revocations (id, signer, mode, requested_by, reason, state, next_step, blast_radius)
         VALUES ($1, 'default', 'revoke', 'test', 'test', 'succeeded', 'done', '{}')",
    )
    .bind(revocation)
    .execute(&pool)
    .await
    .unwrap();
    // Two events from before the retention (30 days + the 7 a link may live), one recent.
    let seqs: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO revocation_events (revocation_id, caller, signer, key_id, links, quarantined,
                                        earliest_expiry, at)
         SELECT $1, c, 'default', 'GKOLD', 3, 0, now() - d * interval '1 day' + interval '1 hour',
                now() - d * interval '1 day'
         FROM (VALUES ('svc-1', 40), ('svc-2', 38), ('svc-3', 1)) v (c, d)
         ORDER BY d DESC
         RETURNING seq",
    )
    .bind(revocation)
    .fetch_all(&pool)
    .await
    .unwrap();
    let (old, older_kept, recent) = (seqs[0], seqs[1], seqs[2]);

    // Retention 0 keeps everything.
    let report = lifecycle::step(&pool, chrono::Utc::now(), Retention::new(0, 400).unwrap())
        .await
        .unwrap();
    assert_eq!(report.revocation_events_pruned, 0);
    let report = lifecycle::step(&pool, chrono::Utc::now(), Retention::new(30, 400).unwrap())
        .await
        .unwrap();
    assert_eq!(report.revocation_events_pruned, 2);
    let left: Vec<i64> = sqlx::query_scalar("SELECT seq FROM revocation_events ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, vec![recent]);

    // A cursor before the pruned ones: refused, naming the cursor and where to resume.
    let e = app
        .links
        .watch_revocations(WatchRevocationsRequest {
            after_sequence: Some(old as u64 - 1),
            caller: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains(&format!("after_sequence {}", old - 1))
            && e.message()
                .contains(&format!("after_sequence={older_kept}")),
        "{e:?}"
    );
    let info = e.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "EVENTS_PRUNED");
    assert_eq!(
        info.metadata["pruned_through_sequence"],
        older_kept.to_string()
    );
    assert_eq!(info.metadata["field"], "after_sequence");
    // From where retention stopped, the stream goes on with the first kept.
    let mut stream = watch(&mut app.links, Some(older_kept as u64), "").await;
    let first = next_event(&mut stream).await;
    assert_eq!(
        (first.sequence, first.caller.as_str()),
        (recent as u64, "svc-3")
    );
}
