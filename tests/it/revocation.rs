//! Revocation end to end against Garage: the plan counts exactly, REVOKE and
//! EMERGENCY kill every outstanding link (Garage answers 403) and report exactly
//! how many, GRACEFUL keeps links working and deactivates the old key after the
//! last one expires, and an interrupted procedure completes after a restart.

use crate::helpers::*;
use presignd::backend::KeyBackend;
use presignd::domain::{RevocationState as State, RotationMode as Mode};
use presignd::proto::{
    self, IssueLinkResponse, Method, PlanRevocationRequest, RevocationState, RotationMode,
    link_service_client::LinkServiceClient, plan_revocation_request::Target,
};
use presignd::revocation::{self, Advance, RotateRequest, Rotation, Step};
use reqwest::StatusCode;
use sqlx::PgPool;
use std::collections::HashMap;
use tonic::Code;

fn count_of(counts: &[proto::Count], name: &str) -> u64 {
    counts
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.count)
        .unwrap_or(0)
}

#[sqlx::test]
async fn revoke_kills_every_outstanding_link_and_reports_exactly_them(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bs = buckets();
    let mut issued = Vec::new();
    let (obj0, put0) = put_sample(&mut app, &bs[0]).await;
    let (obj1, put1) = put_sample(&mut app, &bs[1]).await;
    issued.extend([put0, put1]);
    let mut as_b = LinkServiceClient::with_interceptor(app.channel.clone(), with_token_b as Auth);
    for i in 0..12 {
        let (bucket, obj) = if i % 3 == 0 {
            (&bs[1], &obj1)
        } else {
            (&bs[0], &obj0)
        };
        let req = if i % 2 == 0 {
            link_request(bucket, obj, Method::Get, 600)
        } else {
            link_request(bucket, &unique_key("revoke-put"), Method::Put, 600)
        };
        let resp = if i % 4 == 0 {
            as_b.issue_link(req).await.unwrap().into_inner()
        } else {
            app.issue(req).await.unwrap()
        };
        issued.push(resp);
    }
    for link in &issued {
        let s = try_link(&app.http, link).await;
        assert_eq!(s, StatusCode::OK, "every link works before the revocation");
    }
    let n = issued.len() as u64;

    let plan = app
        .keys
        .plan_revocation(PlanRevocationRequest {
            target: Some(Target::Signer("default".into())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.outstanding_links, n);
    let by = |f: &dyn Fn(&IssueLinkResponse) -> String, name: &str| {
        issued.iter().filter(|l| f(l) == name).count() as u64
    };
    let bucket_of = |l: &IssueLinkResponse| l.link.as_ref().unwrap().bucket.clone();
    let caller_of = |l: &IssueLinkResponse| l.link.as_ref().unwrap().caller.clone();
    let method_of = |l: &IssueLinkResponse| {
        Method::try_from(l.link.as_ref().unwrap().method)
            .unwrap()
            .as_str_name()
            .trim_start_matches("METHOD_")
            .to_owned()
    };
    assert_eq!(count_of(&plan.top_buckets, &bs[0]), by(&bucket_of, &bs[0]));
    assert_eq!(count_of(&plan.top_buckets, &bs[1]), by(&bucket_of, &bs[1]));
    assert_eq!(count_of(&plan.top_callers, CALLER), by(&caller_of, CALLER));
    assert_eq!(
        count_of(&plan.top_callers, CALLER_B),
        by(&caller_of, CALLER_B)
    );
    assert_eq!(count_of(&plan.per_method, "GET"), by(&method_of, "GET"));
    assert_eq!(count_of(&plan.per_method, "PUT"), by(&method_of, "PUT"));
    assert_eq!(plan.sample_link_ids.len(), 5);
    let old_key = plan.key_id.clone();

    let report = app
        .rotate(rotate_req("default", RotationMode::Revoke, &old_key))
        .await;
    assert_eq!(
        report.state,
        RevocationState::Succeeded as i32,
        "{report:?}"
    );
    assert_eq!(report.links_revoked, n);
    assert_eq!(report.blast_radius.as_ref().unwrap().outstanding_links, n);
    assert_eq!(report.old_key_id, old_key);
    assert_ne!(report.new_key_id, old_key);
    assert_eq!(report.requested_by, CALLER);
    let names: Vec<&str> = report.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "create_key",
            "verify_key",
            "activate_key",
            "deactivate_old_key"
        ]
    );

    for link in &issued {
        assert_eq!(
            try_link(&app.http, link).await,
            StatusCode::FORBIDDEN,
            "a revoked link is dead"
        );
    }
    assert_eq!(revoked_by(&pool, &report.id).await as u64, n);

    let after = app
        .issue(link_request(&bs[0], &obj0, Method::Get, 60))
        .await
        .unwrap();
    assert_eq!(after.link.as_ref().unwrap().key_id, report.new_key_id);
    assert_eq!(
        try_link(&app.http, &after).await,
        StatusCode::OK,
        "links issued after the rotation work"
    );
}

#[sqlx::test]
async fn links_issued_during_a_revoke_are_either_revoked_and_dead_or_active_and_served(
    pool: PgPool,
) {
    let mut app = spawn_app(&pool).await;
    let bucket = buckets()[0].clone();
    let (obj, _) = put_sample(&mut app, &bucket).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (mut client, stop, bucket, obj) =
            (app.links.clone(), stop.clone(), bucket.clone(), obj.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client
                    .issue_link(link_request(&bucket, &obj, Method::Get, 600))
                    .await;
                out.push(r.expect("issuance never pauses during REVOKE").into_inner());
            }
            out
        });
    }
    // Let issuance run, rotate in the middle of it, let it run on.
    assert!(wait_for_count(&pool, "SELECT count(*) FROM links", 30).await >= 30);
    let report = app
        .rotate(rotate_req("default", RotationMode::Revoke, ""))
        .await;
    let after_rotation: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
        .fetch_one(&pool)
        .await
        .unwrap();
    let more = wait_for_count(&pool, "SELECT count(*) FROM links", after_rotation + 30).await;
    assert!(
        more >= after_rotation + 30,
        "issuance went on after the rotation"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut issued = Vec::new();
    while let Some(r) = tasks.join_next().await {
        issued.extend(r.unwrap());
    }
    assert_eq!(report.state, RevocationState::Succeeded as i32);

    let states: HashMap<String, (String, Option<uuid::Uuid>)> =
        sqlx::query_as::<_, (uuid::Uuid, String, Option<uuid::Uuid>)>(sqlx::AssertSqlSafe(
            format!(
                "SELECT l.id, {} AS state, {} FROM links l JOIN signing_keys k USING (key_id)",
                presignd::registry::links::STATE_SQL,
                presignd::registry::links::REVOCATION_SQL
            ),
        ))
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, s, r)| (id.to_string(), (s, r)))
        .collect();
    let (mut revoked, mut active) = (0, 0);
    for link in &issued {
        let l = link.link.as_ref().unwrap();
        let (state, _) = &states[&l.id];
        let status = try_link(&app.http, link).await;
        match state.as_str() {
            "revoked" => {
                revoked += 1;
                assert_eq!(status, StatusCode::FORBIDDEN, "a REVOKED link must be dead");
                assert_eq!(l.key_id, report.old_key_id);
            }
            "active" => {
                active += 1;
                assert_eq!(status, StatusCode::OK, "an ACTIVE link must work");
                assert_eq!(l.key_id, report.new_key_id);
            }
            other => panic!("unexpected state {other}"),
        }
    }
    assert!(
        revoked > 0 && active > 0,
        "the rotation happened mid-stream ({revoked} revoked, {active} active)"
    );
    let marked = states
        .values()
        .filter(|(_, r)| r.map(|r| r.to_string()) == Some(report.id.clone()))
        .count();
    assert_eq!(
        report.links_revoked as usize, marked,
        "the report counts exactly the rows it revoked"
    );
    // Every link of the old key (the sample's PUT link included) is revoked.
    assert_eq!(marked, revoked + 1);
}

/// A rotation holds its signer's row lock while it waits for the issuance lock
/// of the key it retires, which link batches hold shared while they insert. If
/// an insert's foreign-key check waited on the signer's row, the two would
/// deadlock (and issuance would fail with INTERNAL mid-rotation).
#[sqlx::test]
async fn issuance_does_not_wait_on_a_rotation_holding_its_signer(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = buckets()[0].clone();
    let mut rotation = pool.begin().await.unwrap();
    presignd::registry::signers::lock(&mut *rotation, "default")
        .await
        .unwrap()
        .expect("the default signer exists");
    let issued = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        app.issue(link_request(&bucket, "held-signer", Method::Get, 60)),
    )
    .await
    .expect("IssueLink must not wait for the signer's rotation lock")
    .expect("IssueLink succeeds while a rotation holds the signer");
    rotation.rollback().await.unwrap();
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM links WHERE id = $1::uuid")
        .bind(&issued.link.unwrap().id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(recorded, 1);
}

#[sqlx::test]
async fn graceful_keeps_old_links_working_then_deactivates_the_old_key_once_they_expired(
    pool: PgPool,
) {
    let mut app = spawn_app(&pool).await;
    let bucket = buckets()[0].clone();
    let (obj, _) = put_sample(&mut app, &bucket).await;
    // The sample's PUT link lives 600 s: expire it by hand so the test is quick.
    sqlx::query("UPDATE links SET expires_at = issued_at + interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    let old = app
        .issue(link_request(&bucket, &obj, Method::Get, 600))
        .await
        .unwrap();
    let old_key = old.link.as_ref().unwrap().key_id.clone();

    let report = app
        .rotate(rotate_req("default", RotationMode::Graceful, &old_key))
        .await;
    assert_eq!(report.state, RevocationState::Succeeded as i32);
    assert_eq!(report.links_revoked, 0);
    assert_eq!(
        try_link(&app.http, &old).await,
        StatusCode::OK,
        "GRACEFUL breaks nothing"
    );
    assert_eq!(key_state(&pool, &old_key).await, "retired");
    let new = app
        .issue(link_request(&bucket, &obj, Method::Get, 60))
        .await
        .unwrap();
    assert_eq!(new.link.as_ref().unwrap().key_id, report.new_key_id);

    // The maintenance loop's step, run here: while the old key has a live link
    // it stays retired...
    assert_eq!(
        app.km.sweep_retired_keys().await.unwrap().deactivated,
        Vec::<String>::new(),
        "a retired key with a live link is left alone"
    );
    assert_eq!(try_link(&app.http, &old).await, StatusCode::OK);
    // ...and once that link expired (in the registry, which is what the sweep
    // reads: moved back by hand rather than waited for), the step deactivates it.
    sqlx::query(
        "UPDATE links SET issued_at = issued_at - interval '1 minute',
                          expires_at = now() - interval '1 second'
         WHERE key_id = $1",
    )
    .bind(&old_key)
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(
        app.km.sweep_retired_keys().await.unwrap().deactivated,
        vec![old_key.clone()],
        "exactly the retired key whose links all expired"
    );
    assert_eq!(key_state(&pool, &old_key).await, "inactive");
    assert!(
        garage_key_expired(&old_key).await,
        "Garage refuses the old key"
    );
    assert_eq!(try_link(&app.http, &new).await, StatusCode::OK);
    assert_eq!(key_state(&pool, &report.new_key_id).await, "active");
}

fn domain_req(mode: Mode) -> RotateRequest {
    RotateRequest {
        signer: presignd::domain::SignerName::parse("default").unwrap(),
        mode,
        reason: "integration test".into(),
        expected_key_id: None,
        dry_run: false,
        requested_by: CALLER.into(),
        quarantine_link_ids: Vec::new(),
    }
}

#[sqlx::test]
async fn emergency_kills_the_old_key_before_the_new_one_exists(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = buckets()[0].clone();
    let (obj, put) = put_sample(&mut app, &bucket).await;
    let get = app
        .issue(link_request(&bucket, &obj, Method::Get, 600))
        .await
        .unwrap();
    let Rotation::Ran(row) = app
        .revocations
        .start(domain_req(Mode::Emergency))
        .await
        .unwrap()
    else {
        panic!()
    };

    assert_eq!(
        app.revocations.try_advance(row.id).await.unwrap(),
        Advance::Stepped(Step::DeactivateOld)
    );
    assert_eq!(
        try_link(&app.http, &get).await,
        StatusCode::FORBIDDEN,
        "the old key is dead after one step"
    );
    assert_eq!(try_link(&app.http, &put).await, StatusCode::FORBIDDEN);
    let live_keys: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM signing_keys WHERE state IN ('pending', 'active')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(live_keys, 0, "no replacement exists yet");
    let status = app
        .issue(link_request(&bucket, &obj, Method::Get, 60))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "issuance pauses in between: {status:?}"
    );

    assert_eq!(
        app.revocations.drive(row.id).await.unwrap(),
        State::Succeeded
    );
    let report = app.revocations.get(row.id).await.unwrap();
    assert_eq!(report.links_revoked, 2);
    let after = app
        .issue(link_request(&bucket, &obj, Method::Get, 60))
        .await
        .unwrap();
    assert_eq!(
        after.link.as_ref().unwrap().key_id,
        report.new_key_id.unwrap()
    );
    assert_eq!(try_link(&app.http, &after).await, StatusCode::OK);
}

/// Interrupts a rotation after each possible number of steps (and, for the
/// deactivation, after the backend call but before the registry knew), restarts
/// the server, and checks that the revocation completed consistently.
async fn crash_and_resume(pool: PgPool, mode: Mode) {
    let steps = revocation::steps(mode, true);
    for done in 0..=steps.len() {
        let mut app = spawn_app(&pool).await;
        let bucket = buckets()[0].clone();
        let (obj, put) = put_sample(&mut app, &bucket).await;
        let get = app
            .issue(link_request(&bucket, &obj, Method::Get, 600))
            .await
            .unwrap();
        let Rotation::Ran(row) = app.revocations.start(domain_req(mode)).await.unwrap() else {
            panic!()
        };
        for _ in 0..done {
            app.revocations.try_advance(row.id).await.unwrap();
        }
        if steps.get(done) == Some(&Step::DeactivateOld) {
            // Crash in the middle of the step: the backend already refuses the key.
            garage_backend()
                .deactivate_key("default", row.old_key_id.as_deref().unwrap())
                .await
                .unwrap();
        }
        drop(app); // the crash

        let mut app = spawn_app(&pool).await; // SERVING only once the revocation finished
        let report = app.revocations.get(row.id).await.unwrap();
        assert_eq!(
            report.state,
            State::Succeeded,
            "{mode:?} after {done} steps: {report:?}"
        );
        assert_eq!(report.steps.0.len(), steps.len(), "each step recorded once");
        let dead = mode != Mode::Graceful;
        // Nothing was issued meanwhile: the plan's count is exactly what died
        // (the sample's links plus the previous round's last link).
        let planned = report.blast_radius.0.outstanding_links;
        assert!(planned >= 2);
        assert_eq!(
            report.links_revoked,
            if dead { planned } else { 0 },
            "{mode:?} after {done} steps"
        );
        let expected = if dead {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::OK
        };
        assert_eq!(
            try_link(&app.http, &get).await,
            expected,
            "{mode:?} after {done} steps"
        );
        assert_eq!(try_link(&app.http, &put).await, expected);
        let after = app
            .issue(link_request(&bucket, &obj, Method::Get, 60))
            .await
            .unwrap();
        assert_eq!(
            after.link.as_ref().unwrap().key_id,
            report.new_key_id.clone().unwrap()
        );
        assert_eq!(try_link(&app.http, &after).await, StatusCode::OK);
        let active: i64 =
            sqlx::query_scalar("SELECT count(*) FROM signing_keys WHERE state = 'active'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(active, 1);
    }
}

#[sqlx::test]
async fn an_interrupted_revoke_completes_after_a_restart(pool: PgPool) {
    crash_and_resume(pool, Mode::Revoke).await;
}

#[sqlx::test]
async fn an_interrupted_emergency_completes_after_a_restart(pool: PgPool) {
    crash_and_resume(pool, Mode::Emergency).await;
}

#[sqlx::test]
async fn an_interrupted_graceful_rotation_completes_after_a_restart(pool: PgPool) {
    crash_and_resume(pool, Mode::Graceful).await;
}

#[sqlx::test]
async fn another_replica_signs_with_the_new_key_promptly(pool: PgPool) {
    let a = spawn_app(&pool).await;
    let mut b = spawn_app(&pool).await;
    let bucket = buckets()[0].clone();
    let before = b
        .issue(link_request(&bucket, "k", Method::Get, 60))
        .await
        .unwrap();
    let mut keys = a.keys.clone();
    let report = keys
        .rotate_key(rotate_req("default", RotationMode::Revoke, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.old_key_id, before.link.unwrap().key_id);
    // B hears of it through LISTEN/NOTIFY, before it tries to sign anything:
    // watch its keyring for a bounded time.
    let mut held = String::new();
    for _ in 0..100 {
        held =
            b.km.active_key("default")
                .map(|k| k.key_id.clone())
                .unwrap_or_default();
        if held == report.new_key_id {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        held, report.new_key_id,
        "replica B's keyring did not follow the rotation within 5 s"
    );
    let now = b
        .issue(link_request(&bucket, "k", Method::Get, 60))
        .await
        .unwrap();
    assert_eq!(now.link.unwrap().key_id, report.new_key_id);
}

#[sqlx::test]
async fn a_stale_expected_key_id_is_a_failed_precondition(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let plan = app
        .keys
        .plan_revocation(PlanRevocationRequest {
            target: Some(Target::Signer("default".into())),
        })
        .await
        .unwrap()
        .into_inner();
    let first = app
        .rotate(rotate_req("default", RotationMode::Graceful, &plan.key_id))
        .await;
    assert_eq!(first.state, RevocationState::Succeeded as i32);
    // A second responder with the same (now stale) plan:
    let status = app
        .keys
        .rotate_key(rotate_req("default", RotationMode::Revoke, &plan.key_id))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("rotated already"), "{status:?}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM revocations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 1, "the second rotation did not happen");
}

#[sqlx::test]
async fn a_dry_run_returns_the_plan_and_touches_nothing(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = buckets()[0].clone();
    let link = app
        .issue(link_request(&bucket, "k", Method::Get, 60))
        .await
        .unwrap();
    let mut req = rotate_req("default", RotationMode::Emergency, "");
    req.dry_run = true;
    let plan = app.rotate(req).await;
    assert!(plan.dry_run);
    assert_eq!(plan.state, RevocationState::Planned as i32);
    assert_eq!(plan.blast_radius.unwrap().outstanding_links, 1);
    assert_eq!(plan.steps[0].name, "deactivate_old_key");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM revocations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
    let key = link.link.unwrap().key_id;
    assert!(!garage_key_expired(&key).await, "the key still works");
}

#[sqlx::test]
async fn key_service_refuses_bad_requests_and_non_admins_precisely(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let mut req = rotate_req("default", RotationMode::Revoke, "");
    req.signer = "nobody".into();
    assert_eq!(
        app.keys.rotate_key(req).await.unwrap_err().code(),
        Code::NotFound
    );
    let mut req = rotate_req("default", RotationMode::Unspecified, "");
    req.mode = 0;
    let s = app.keys.rotate_key(req).await.unwrap_err();
    assert_eq!(
        (s.code(), s.message().starts_with("mode:")),
        (Code::InvalidArgument, true),
        "{s:?}"
    );
    let mut req = rotate_req("default", RotationMode::Revoke, "");
    req.reason = "  ".into();
    let s = app.keys.rotate_key(req).await.unwrap_err();
    assert_eq!(
        (s.code(), s.message().starts_with("reason:")),
        (Code::InvalidArgument, true),
        "{s:?}"
    );
    let s = app
        .keys
        .get_revocation(proto::GetRevocationRequest { id: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    let s = app
        .keys
        .get_revocation(proto::GetRevocationRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    let s = app
        .keys
        .plan_revocation(PlanRevocationRequest {
            target: Some(Target::KeyId("GKnope".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);

    let mut plain = presignd::proto::key_service_client::KeyServiceClient::with_interceptor(
        app.channel.clone(),
        with_token_b as Auth,
    );
    let s = plain
        .rotate_key(rotate_req("default", RotationMode::Emergency, ""))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    let s = plain
        .list_signing_keys(proto::ListSigningKeysRequest::default())
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM revocations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[sqlx::test]
async fn keys_and_revocations_are_listed_with_outstanding_counts(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = buckets()[0].clone();
    for _ in 0..3 {
        app.issue(link_request(&bucket, "k", Method::Get, 600))
            .await
            .unwrap();
    }
    let first = app
        .rotate(rotate_req("default", RotationMode::Graceful, ""))
        .await;
    app.issue(link_request(&bucket, "k", Method::Get, 600))
        .await
        .unwrap();
    let second = app
        .rotate(rotate_req("default", RotationMode::Graceful, ""))
        .await;

    let listed = app
        .keys
        .list_signing_keys(proto::ListSigningKeysRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.signers.len(), 1);
    let keys: HashMap<String, (i32, u64)> = listed.signers[0]
        .keys
        .iter()
        .map(|k| (k.key_id.clone(), (k.state, k.outstanding_links)))
        .collect();
    assert_eq!(
        keys[&first.old_key_id],
        (proto::KeyState::Retired as i32, 3)
    );
    assert_eq!(
        keys[&second.old_key_id],
        (proto::KeyState::Retired as i32, 1)
    );
    assert_eq!(
        keys[&second.new_key_id],
        (proto::KeyState::Active as i32, 0)
    );

    let page1 = app
        .keys
        .list_revocations(proto::ListRevocationsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page1.revocations[0].id, second.id, "newest first");
    let page2 = app
        .keys
        .list_revocations(proto::ListRevocationsRequest {
            page_size: 1,
            page_token: page1.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.revocations[0].id, first.id);
    assert!(page2.next_page_token.is_empty());
    let got = app
        .keys
        .get_revocation(proto::GetRevocationRequest {
            id: first.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.reason, "integration test: suspected leak");
}

/// A rotation's new key discarded between its verify and activate steps (a
/// standby key a budget's GRACEFUL rotation adopted while the standby's own
/// probe gave up: `prepare_standby` discards it): the activation finds it no
/// longer pending, and the revocation fails with nothing committed, the old
/// key still active and signing. It used to retire the old key and succeed,
/// leaving the signer no active key.
#[sqlx::test]
async fn a_replacement_discarded_before_its_activation_fails_the_rotation_and_keeps_the_old_key(
    pool: PgPool,
) {
    let mut app = spawn_app(&pool).await;
    let old = app.km.active_key("default").unwrap().key_id.clone();
    let Rotation::Ran(row) = app
        .revocations
        .start(domain_req(Mode::Graceful))
        .await
        .unwrap()
    else {
        panic!("not a dry run")
    };
    for step in [Step::CreateKey, Step::VerifyKey] {
        let advanced = app.revocations.try_advance(row.id).await.unwrap();
        assert!(matches!(advanced, Advance::Stepped(s) if s == step));
    }
    let new = app
        .revocations
        .get(row.id)
        .await
        .unwrap()
        .new_key_id
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    app.km
        .discard_pending(&mut tx, "default", &new)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let advanced = app.revocations.try_advance(row.id).await.unwrap();
    assert!(matches!(advanced, Advance::Finished(State::Failed)));
    let report = app.revocations.get(row.id).await.unwrap();
    assert!(
        report
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("no longer pending"),
        "{report:?}"
    );
    assert_eq!(key_state(&pool, &old).await, "active");
    assert_eq!(app.km.active_key("default").unwrap().key_id, old);
    let bucket = app.bucket.clone();
    let link = app
        .issue(link_request(&bucket, &unique_key("kept"), Method::Get, 60))
        .await
        .expect("the old key still signs");
    assert_eq!(link.link.unwrap().key_id, old);
}
