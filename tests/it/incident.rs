//! The incident path against Garage: a leaked URL of a retired key is killed
//! by RevokeKey; RevokeKey on the active key counts exactly under concurrent
//! issuance; a revocation outlives its caller; EMERGENCY hands out no dead
//! link; the sweep goes on past a failure; an outage of Garage's admin API
//! harms only the signer being revoked, and one of the S3 endpoint holds an
//! EMERGENCY's replacement until the store is back; presignctl's exit codes.

use crate::helpers::Proxy;
use crate::helpers::*;
use presignd::backend::KeyBackend;
use presignd::proto::{
    self, CancelRevocationRequest, GetRevocationRequest, LookupLinkRequest, Method,
    RevocationState, RevokeKeyRequest, RotateKeyRequest, RotationMode,
};
use reqwest::StatusCode;
use sqlx::PgPool;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

fn revoke_req(key_id: &str) -> RevokeKeyRequest {
    RevokeKeyRequest {
        key_id: key_id.into(),
        reason: "incident: leaked link".into(),
        dry_run: false,
        detach: false,
        quarantine_link_ids: Vec::new(),
    }
}

fn rotate_req(mode: RotationMode) -> RotateKeyRequest {
    RotateKeyRequest {
        signer: "default".into(),
        mode: mode as i32,
        reason: "incident test".into(),
        expected_key_id: String::new(),
        dry_run: false,
        detach: false,
        quarantine_link_ids: Vec::new(),
    }
}

/// Each link's derived state, as every read reports it.
async fn link_states(pool: &PgPool) -> HashMap<String, String> {
    sqlx::query_as::<_, (uuid::Uuid, String)>(sqlx::AssertSqlSafe(format!(
        "SELECT l.id, {} FROM links l JOIN signing_keys k USING (key_id)",
        presignd::registry::links::STATE_SQL
    )))
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, s)| (id.to_string(), s))
    .collect()
}

#[sqlx::test]
async fn revoke_key_kills_a_leaked_link_of_the_retired_key_and_spares_the_new_keys(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = buckets()[0].clone();
    let (obj, put) = put_sample(&mut app, &bucket).await;
    let leaked = app
        .issue(link_request(&bucket, &obj, Method::Get, 600))
        .await
        .unwrap();
    let graceful = app.rotate(rotate_req(RotationMode::Graceful)).await;
    let mut fresh = Vec::new();
    for _ in 0..3 {
        fresh.push(
            app.issue(link_request(&bucket, &obj, Method::Get, 600))
                .await
                .unwrap(),
        );
    }
    assert_eq!(try_link(&app.http, &leaked).await, StatusCode::OK);

    // The incident: LookupLink names the key, RevokeKey kills it.
    let found = app
        .links
        .lookup_link(LookupLinkRequest {
            url: leaked.url.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let key_id = found.link.unwrap().key_id;
    assert_eq!(key_id, graceful.old_key_id);
    let plan = app
        .keys
        .revoke_key(RevokeKeyRequest {
            dry_run: true,
            ..revoke_req(&key_id)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.blast_radius.as_ref().unwrap().outstanding_links, 2);
    assert_eq!(
        try_link(&app.http, &leaked).await,
        StatusCode::OK,
        "a dry run touches nothing"
    );

    let report = app
        .keys
        .revoke_key(revoke_req(&key_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        report.state,
        RevocationState::Succeeded as i32,
        "{report:?}"
    );
    let steps: Vec<&str> = report.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        steps,
        ["deactivate_old_key"],
        "a retired key dies in one step"
    );
    assert_eq!(report.new_key_id, "");
    assert_eq!(try_link(&app.http, &leaked).await, StatusCode::FORBIDDEN);
    assert_eq!(try_link(&app.http, &put).await, StatusCode::FORBIDDEN);
    for l in &fresh {
        assert_eq!(
            try_link(&app.http, l).await,
            StatusCode::OK,
            "the new key's links live on"
        );
    }
    assert_eq!(report.links_revoked, 2);
    assert_eq!(
        revoked_by(&pool, &report.id).await,
        2,
        "the report equals the links killed"
    );
    assert_eq!(key_state(&pool, &key_id).await, "inactive");

    // Again: the key is dead; an unknown key is NOT_FOUND.
    let again = app.keys.revoke_key(revoke_req(&key_id)).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(again.message().contains("is inactive"), "{again:?}");
    let unknown = app
        .keys
        .revoke_key(revoke_req("GK000000000000000000000000"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let empty = app.keys.revoke_key(revoke_req("")).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE rpc = 'presignd.v1.KeyService/RevokeKey'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(audited, 5);
}

#[sqlx::test]
async fn revoke_key_on_the_active_key_under_concurrent_issuance_is_exact(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = buckets()[0].clone();
    let (obj, _) = put_sample(&mut app, &bucket).await;
    let active = app.km.active_key("default").unwrap().key_id.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (mut client, stop, bucket, obj) =
            (app.links.clone(), stop.clone(), bucket.clone(), obj.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = client
                    .issue_link(link_request(&bucket, &obj, Method::Get, 600))
                    .await;
                out.push(
                    r.expect("issuance never pauses while RevokeKey rotates first")
                        .into_inner(),
                );
            }
            out
        });
    }
    wait_for_count(&pool, "SELECT count(*) FROM links", 30).await;
    let report = app
        .keys
        .revoke_key(revoke_req(&active))
        .await
        .unwrap()
        .into_inner();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
        .fetch_one(&pool)
        .await
        .unwrap();
    wait_for_count(&pool, "SELECT count(*) FROM links", n + 30).await;
    stop.store(true, Ordering::Relaxed);
    let mut issued = Vec::new();
    while let Some(r) = tasks.join_next().await {
        issued.extend(r.unwrap());
    }
    assert_eq!(report.state, RevocationState::Succeeded as i32);
    assert_eq!(report.old_key_id, active);
    let states = link_states(&pool).await;
    let (mut revoked, mut live) = (0, 0);
    for link in &issued {
        let l = link.link.as_ref().unwrap();
        let status = try_link(&app.http, link).await;
        match states[&l.id].as_str() {
            "revoked" => {
                revoked += 1;
                assert_eq!(status, StatusCode::FORBIDDEN, "a REVOKED link is refused");
            }
            "active" => {
                live += 1;
                assert_eq!(status, StatusCode::OK, "an ACTIVE link is served");
                assert_eq!(l.key_id, report.new_key_id);
            }
            other => panic!("unexpected state {other}"),
        }
    }
    assert!(revoked > 0 && live > 0, "{revoked} revoked, {live} active");
    // Every link of the old key (the sample's PUT too) is revoked, and counted.
    assert_eq!(report.links_revoked, revoked + 1);
    assert_eq!(revoked_by(&pool, &report.id).await, revoked as i64 + 1);
}

#[sqlx::test]
async fn a_client_that_drops_the_rotate_call_mid_step_does_not_cut_the_revocation(pool: PgPool) {
    let app = spawn_app(&pool).await;
    let old = app.km.active_key("default").unwrap().key_id.clone();
    let mut keys = app.keys.clone();
    let call = tokio::spawn(async move { keys.rotate_key(rotate_req(RotationMode::Revoke)).await });
    // The client goes away as soon as the revocation is recorded: its first
    // step (creating the key, probing it) is under way.
    let recorded = wait_for_count(&pool, "SELECT count(*) FROM revocations", 1).await;
    assert_eq!(recorded, 1);
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    let mut state = String::new();
    for _ in 0..200 {
        state = sqlx::query_scalar("SELECT state FROM revocations")
            .fetch_one(&pool)
            .await
            .unwrap();
        if state != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Well before the maintenance loop (default interval) would resume it.
    assert_eq!(state, "succeeded");
    let steps: i64 =
        sqlx::query_scalar("SELECT jsonb_array_length(steps)::bigint FROM revocations")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(steps, 4);
    assert_eq!(key_state(&pool, &old).await, "inactive");
}

/// Issuance from the old key stops before the backend deactivates it: while a
/// batch of links signed by the key is still being recorded (its issuance
/// lock held), Garage still serves the key; and under concurrent issuance no
/// link comes back that Garage refuses while the registry calls it ACTIVE.
#[sqlx::test]
async fn emergency_hands_out_no_dead_link(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = buckets()[0].clone();
    let (obj, _) = put_sample(&mut app, &bucket).await;
    let before = app
        .issue(link_request(&bucket, &obj, Method::Get, 600))
        .await
        .unwrap();
    let old = app.km.active_key("default").unwrap().key_id.clone();

    // An in-flight batch of the old key: the emergency must wait for it
    // before the backend call.
    let mut batch = pool.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT pg_advisory_xact_lock_shared({}, hashtext($1))",
        presignd::registry::links::ISSUANCE_LOCK_CLASS
    )))
    .bind(&old)
    .execute(&mut *batch)
    .await
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (mut client, stop, bucket, obj) =
            (app.links.clone(), stop.clone(), bucket.clone(), obj.clone());
        tasks.spawn(async move {
            let (mut links, mut paused) = (Vec::new(), 0);
            while !stop.load(Ordering::Relaxed) {
                match client
                    .issue_link(link_request(&bucket, &obj, Method::Get, 600))
                    .await
                {
                    Ok(r) => links.push(r.into_inner()),
                    Err(s) if s.code() == Code::Unavailable => {
                        paused += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(s) => panic!("IssueLink: {s:?}"),
                }
            }
            (links, paused)
        });
    }
    let mut keys = app.keys.clone();
    let rotation =
        tokio::spawn(async move { keys.rotate_key(rotate_req(RotationMode::Emergency)).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        try_link(&app.http, &before).await,
        StatusCode::OK,
        "the backend is not called while links of the key may still be recorded"
    );
    batch.rollback().await.unwrap();
    let report = rotation.await.unwrap().unwrap().into_inner();
    assert_eq!(
        report.state,
        RevocationState::Succeeded as i32,
        "{report:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut issued, mut paused) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        let (l, p) = r.unwrap();
        issued.extend(l);
        paused += p;
    }
    assert_eq!(try_link(&app.http, &before).await, StatusCode::FORBIDDEN);
    let states = link_states(&pool).await;
    let mut new_links = 0;
    for link in &issued {
        let l = link.link.as_ref().unwrap();
        let status = try_link(&app.http, link).await;
        let state = &states[&l.id];
        if status == StatusCode::FORBIDDEN {
            assert_eq!(state, "revoked", "a link Garage refuses is never ACTIVE");
            assert_eq!(l.key_id, old);
        } else {
            assert_eq!(status, StatusCode::OK);
            assert_eq!(state, "active");
            assert_eq!(l.key_id, report.new_key_id);
            new_links += 1;
        }
    }
    assert!(
        new_links > 0,
        "issuance resumed with the replacement ({paused} paused answers)"
    );
    assert_eq!(
        report.links_revoked as i64,
        revoked_by(&pool, &report.id).await
    );
}

#[sqlx::test]
async fn the_sweep_goes_on_past_a_key_it_cannot_deactivate_and_retries_it(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let first = app
        .rotate(rotate_req(RotationMode::Graceful))
        .await
        .old_key_id;
    let second = app
        .rotate(rotate_req(RotationMode::Graceful))
        .await
        .old_key_id;
    // The first retired key vanished from Garage behind presignd's back:
    // deactivating it is refused.
    garage_backend()
        .delete_key("default", &first)
        .await
        .unwrap();

    let swept = app.km.sweep_retired_keys().await.unwrap();
    assert_eq!(swept.deactivated, vec![second.clone()]);
    assert_eq!(swept.failed.len(), 1);
    assert_eq!(swept.failed[0].0, first);
    assert_eq!(key_state(&pool, &second).await, "inactive");
    assert_eq!(
        key_state(&pool, &first).await,
        "retired",
        "still live as far as presignd knows"
    );

    let again = app.km.sweep_retired_keys().await.unwrap();
    assert!(again.deactivated.is_empty());
    assert_eq!(again.failed.len(), 1, "the failed key is tried again");
    assert_eq!(again.failed[0].0, first);
}

/// The revocation `id` once it is no longer running, polled for up to 30 s.
async fn finished(app: &mut TestApp, id: &str) -> Option<proto::Revocation> {
    for _ in 0..150 {
        let r = app
            .keys
            .get_revocation(GetRevocationRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner();
        if r.state != RevocationState::Running as i32 {
            return Some(r);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

pub(crate) fn s3_target() -> SocketAddr {
    let url = env("GARAGE_S3_URL");
    let host_port = url.trim_start_matches("http://").trim_end_matches('/');
    host_port.parse().expect("GARAGE_S3_URL is http://IP:PORT")
}

/// The S3 endpoint goes away during an EMERGENCY, once the old key is dead
/// and its replacement created: proving the replacement waits for the store
/// (the revocation RUNNING at verify_key, the replacement kept, pending),
/// where it used to fail the revocation, deleting the replacement and
/// leaving the signer no key at all. Once the store is back the maintenance
/// loop finishes it, and the new key signs a link Garage serves.
#[sqlx::test]
async fn an_s3_outage_while_proving_an_emergency_replacement_waits_for_the_store(pool: PgPool) {
    let proxy = Proxy::start(s3_target()).await;
    let s3_url = format!("--s3-endpoint=http://{}", proxy.addr);
    let extra = [
        s3_url.as_str(),
        "--key-verify-attempts=2",
        "--maintenance-interval-secs=1",
    ];
    let mut app = spawn_app_with(test_config(&extra), (*pool.connect_options()).clone()).await;
    app.wait_for(ServingStatus::Serving).await;
    let old = app.km.active_key("default").unwrap().key_id.clone();

    let addr = proxy.stop().await;
    let report = app
        .keys
        .rotate_key(rotate_req(RotationMode::Emergency))
        .await
        .expect("a step to retry is no error of the call")
        .into_inner();
    assert_eq!(report.state, RevocationState::Running as i32, "{report:?}");
    assert!(
        report.error.contains("verify_key") && report.error.contains("unreachable or busy"),
        "{}",
        report.error
    );
    assert!(
        garage_key_expired(&old).await,
        "EMERGENCY killed the old key first"
    );
    let new: String = sqlx::query_scalar("SELECT new_key_id FROM revocations WHERE id = $1::uuid")
        .bind(&report.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        key_state(&pool, &new).await,
        "pending",
        "the replacement is kept, not deleted"
    );
    assert!(
        !garage_key_expired(&new).await,
        "the replacement stays live at Garage"
    );

    // The store is back: the maintenance loop proves the key and finishes.
    let _proxy = Proxy::serve(TcpListener::bind(addr).await.unwrap(), s3_target());
    let done = finished(&mut app, &report.id)
        .await
        .expect("the revocation finishes once the store is back");
    assert_eq!(done.state, RevocationState::Succeeded as i32, "{done:?}");
    assert_eq!(app.km.active_key("default").unwrap().key_id, new);
    let bucket = app.bucket.clone();
    let (_, link) = put_sample(&mut app, &bucket).await;
    assert_eq!(link.link.unwrap().key_id, new);
}

fn admin_target() -> SocketAddr {
    let url = env("GARAGE_ADMIN_URL");
    let host_port = url.trim_start_matches("http://").trim_end_matches('/');
    host_port
        .parse()
        .expect("GARAGE_ADMIN_URL is http://IP:PORT")
}

/// Garage's admin API goes away during a REVOKE and presignd restarts: the
/// other signer serves at once; the stuck revocation is visible (health
/// detail, ListRevocations, the metric) and finishes once the API is back.
/// A second one, stuck the same way, is cancelled.
#[sqlx::test]
async fn an_admin_api_outage_during_a_revoke_harms_only_its_signer(pool: PgPool) {
    let proxy = Proxy::start(admin_target()).await;
    let admin_url = format!("--garage-admin-url=http://{}", proxy.addr);
    let extra = [
        "--signers=default,other",
        admin_url.as_str(),
        "--maintenance-interval-secs=1",
    ];
    let (config, _) = policy_config(crate::signers::POLICY, &extra);
    let app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(ServingStatus::Serving).await;
    let old = app.km.active_key("default").unwrap().key_id.clone();
    drop(app);

    let addr = proxy.stop().await;
    let (config, _) = policy_config(crate::signers::POLICY, &extra);
    let mut app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(ServingStatus::Serving).await;
    let report = app
        .keys
        .rotate_key(rotate_req(RotationMode::Revoke))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.state, RevocationState::Running as i32, "{report:?}");
    assert!(report.error.contains("create_key"), "{report:?}");
    drop(app);

    // The restart: ready although the revocation cannot finish.
    let (config, _) = policy_config(crate::signers::POLICY, &extra);
    let mut app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(ServingStatus::Serving).await;
    let bucket = buckets()[0].clone();
    let mut as_b = proto::link_service_client::LinkServiceClient::with_interceptor(
        app.channel.clone(),
        with_token_b as Auth,
    );
    let theirs = as_b
        .issue_link(link_request(&bucket, "it/other", Method::Get, 60))
        .await
        .expect("the other signer issues")
        .into_inner();
    assert_eq!(theirs.link.unwrap().signer, "other");
    let health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    let degraded = health
        .metadata()
        .get(presignd::health::DEGRADED_METADATA)
        .expect("health names the stuck revocation")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        degraded.contains(&report.id) && degraded.contains("signer default"),
        "{degraded}"
    );
    let metrics = app
        .http
        .get(format!("http://127.0.0.1:{}/metrics", app.metrics_port))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("presignd_revocations_stuck{signer=\"default\"} 1"),
        "{metrics}"
    );
    let listed = app
        .keys
        .list_revocations(proto::ListRevocationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .revocations;
    assert_eq!(listed[0].id, report.id);
    assert_eq!(listed[0].state, RevocationState::Running as i32);
    assert!(!listed[0].error.is_empty());

    // The API is back: the maintenance loop finishes it.
    let proxy = Proxy::serve(TcpListener::bind(addr).await.unwrap(), admin_target());
    let done = finished(&mut app, &report.id)
        .await
        .expect("the revocation finished once the admin API was back");
    assert_eq!(done.state, RevocationState::Succeeded as i32, "{done:?}");
    assert_eq!(key_state(&pool, &old).await, "inactive");

    // Down again, another REVOKE is stuck; an admin cancels it.
    let addr = proxy.stop().await;
    let stuck = app
        .keys
        .rotate_key(rotate_req(RotationMode::Revoke))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stuck.state, RevocationState::Running as i32);
    let bad = app
        .keys
        .cancel_revocation(CancelRevocationRequest {
            id: stuck.id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let cancelled = app
        .keys
        .cancel_revocation(CancelRevocationRequest {
            id: stuck.id.clone(),
            reason: "admin API down for hours; will rotate later".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let r = cancelled.revocation.unwrap();
    assert_eq!(r.state, RevocationState::Cancelled as i32);
    assert!(r.error.contains("cancelled by it-caller"), "{r:?}");
    let live: Vec<&str> = cancelled
        .live_keys
        .iter()
        .map(|k| k.key_id.as_str())
        .collect();
    assert_eq!(
        live,
        [done.new_key_id.as_str()],
        "the active key is what is live"
    );
    let again = app
        .keys
        .cancel_revocation(CancelRevocationRequest {
            id: stuck.id.clone(),
            reason: "twice".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE rpc = 'presignd.v1.KeyService/CancelRevocation' AND code = 'OK'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);
    let _back = Proxy::serve(TcpListener::bind(addr).await.unwrap(), admin_target());
}
