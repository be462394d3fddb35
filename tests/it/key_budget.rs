//! The blast-radius budget (`--key-budgets`, src/revocation/budget.rs): a
//! signer's key is rotated GRACEFUL before it holds more outstanding links
//! than the budget, or once it has signed for the budget's age; the older keys
//! keep serving their links (Garage answers 200); ListSigningKeys and the
//! metric show each key's share; AWS refuses a budget it cannot keep.

use crate::helpers::*;
use crate::metrics::scrape;
use chrono::Utc;
use presignd::app::App;
use presignd::domain::Spent;
use presignd::proto::{self, plan_revocation_request::Target};
use presignd::revocation::BUDGET_REQUESTER;
use reqwest::StatusCode;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;

async fn spawn_budgeted(
    pool: &PgPool,
    signer: &str,
    budget: &str,
) -> (TestApp, presignd::keys::KeyBudgets) {
    let config = test_config(&[
        &format!("--signers={signer}"),
        &format!("--key-budgets={signer}:{budget}"),
    ]);
    let app = App::build_with_db(config, (*pool.connect_options()).clone())
        .await
        .expect("app builds");
    let budgets = app.key_budgets();
    let app = spawn_built(app).await;
    app.wait_for(ServingStatus::Serving).await;
    (app, budgets)
}

/// Waits until no revocation of `signer` is running: the budget rotations
/// this test's issuance set going (10 s at most).
async fn rotations_settled(pool: &PgPool, signer: &str) {
    let running =
        format!("SELECT count(*) FROM revocations WHERE signer = '{signer}' AND state = 'running'");
    for _ in 0..200 {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(running.clone()))
            .fetch_one(pool)
            .await
            .unwrap();
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("a budget rotation of {signer} did not finish within 10 s");
}

async fn live_keys(app: &mut TestApp, signer: &str) -> proto::Signer {
    let signers = app
        .keys
        .list_signing_keys(proto::ListSigningKeysRequest {
            signer: signer.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .signers;
    signers.into_iter().next().expect("the signer is listed")
}

#[sqlx::test]
async fn a_links_budget_keeps_every_key_within_it_and_the_older_keys_links_working(pool: PgPool) {
    let signer = "budget-links";
    let (mut app, _) = spawn_budgeted(&pool, signer, "links=100").await;
    let bucket = app.bucket.clone();
    let (object, _) = put_sample(&mut app, &bucket).await;
    // The server makes a standby key ready at startup (its first check).
    let pending = format!(
        "SELECT count(*) FROM signing_keys WHERE signer = '{signer}' AND state = 'pending'"
    );
    assert_eq!(wait_for_count(&pool, &pending, 1).await, 1, "a standby key");
    // 250 links through the server at 25 a second: the budget check runs in
    // the server's own task, woken by the issuer every 5 links. The pace is the
    // envelope a budget of 100 holds on this Garage: a standby key takes up to
    // about a second to be created and accepted by the store (more on this
    // machine under the whole suite's load), and the budget must outlast that (docs/ARCHITECTURE.md, "Blast-radius budget").
    let started = Instant::now();
    let mut first_link_of = BTreeMap::new();
    let mut pace = tokio::time::interval(Duration::from_millis(40));
    for _ in 0..249 {
        pace.tick().await;
        let link = app
            .issue(link_request(&bucket, &object, proto::Method::Get, 3600))
            .await
            .expect("issuance never pauses for a budget rotation");
        let key_id = link.link.as_ref().unwrap().key_id.clone();
        first_link_of.entry(key_id).or_insert(link);
    }
    let per_link = started.elapsed() / 249;
    rotations_settled(&pool, signer).await;

    let took: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM finished_at - created_at)::float8 FROM revocations WHERE signer = $1",
    )
    .bind(signer)
    .fetch_all(&pool)
    .await
    .unwrap();
    eprintln!("budget rotations took {took:?} s; issuance {per_link:?} per link; ");

    let mut listed = live_keys(&mut app, signer).await;
    let budget = listed.budget.expect("the signer's budget is listed");
    // Live keys only: the standby key the next rotation adopts is pending.
    listed.keys.retain(|k| {
        k.state == proto::KeyState::Active as i32 || k.state == proto::KeyState::Retired as i32
    });
    assert_eq!(budget.max_outstanding_links, 100);
    let outstanding: Vec<u64> = listed.keys.iter().map(|k| k.outstanding_links).collect();
    assert!(
        listed.keys.len() >= 3,
        "keys and their links: {outstanding:?}"
    );
    assert!(
        outstanding.iter().all(|n| *n <= 100),
        "every key within the budget: {outstanding:?} ({per_link:?} per link)"
    );
    // 249 GET links plus the sample's PUT link.
    assert_eq!(outstanding.iter().sum::<u64>(), 250, "{outstanding:?}");
    for key in &listed.keys {
        let share = key.budget_share.as_ref().expect("a live key's share");
        assert_eq!(
            share.outstanding_share,
            key.outstanding_links as f64 / 100.0
        );
        let radius = app
            .keys
            .plan_revocation(proto::PlanRevocationRequest {
                target: Some(Target::KeyId(key.key_id.clone())),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            radius.outstanding_links <= 100,
            "{}: {}",
            key.key_id,
            radius.outstanding_links
        );
    }
    let active: Vec<_> = listed
        .keys
        .iter()
        .filter(|k| k.state == proto::KeyState::Active as i32)
        .collect();
    assert_eq!(active.len(), 1);
    // GRACEFUL: every older key still serves the links it signed.
    let retired = listed
        .keys
        .iter()
        .filter(|k| k.state == proto::KeyState::Retired as i32);
    let mut checked = 0;
    for key in retired {
        if let Some(link) = first_link_of.get(&key.key_id) {
            assert_eq!(
                try_link(&app.http, link).await,
                StatusCode::OK,
                "a link of {}",
                key.key_id
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "links of at least two retired keys tried: {checked}"
    );

    // Each rotation is recorded as the budget's, GRACEFUL, and says why.
    let revocations: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT requested_by, mode, reason FROM revocations WHERE signer = $1 ORDER BY created_at",
    )
    .bind(signer)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(revocations.len(), listed.keys.len() - 1, "{revocations:?}");
    for (by, mode, reason) in &revocations {
        assert_eq!((by.as_str(), mode.as_str()), (BUDGET_REQUESTER, "graceful"));
        assert!(reason.contains("budget of 100"), "{reason}");
    }
    // The metric names the current key only, at its share.
    let text = scrape(&app).await;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with(&format!(
                "presignd_key_budget_links_ratio{{signer=\"{signer}\""
            ))
        })
        .collect();
    let current = &active[0];
    assert_eq!(series.len(), 1, "{series:?}");
    assert!(
        series[0].contains(&format!("key_id=\"{}\"", current.key_id)),
        "{series:?}"
    );
    // `presignctl keys` prints each live key's use of the budget under it.
    let run = presignctl(&app, TOKEN, &["keys", "--signer", signer], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    for key in &listed.keys {
        let row = run
            .stdout
            .lines()
            .position(|l| l.contains(&key.key_id))
            .unwrap_or_else(|| panic!("{} listed: {}", key.key_id, run.stdout));
        let expected = format!("    budget links {}% of 100", key.outstanding_links);
        assert_eq!(
            run.stdout.lines().nth(row + 1),
            Some(expected.as_str()),
            "{}",
            run.stdout
        );
    }
    let run = presignctl(&app, TOKEN, &["--json", "keys", "--signer", signer], None).await;
    let rows: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key_id"] == current.key_id.as_str())
        .expect("the active key listed");
    assert_eq!(row["budget"]["max_outstanding_links"], 100);
    assert_eq!(
        row["budget_share"]["outstanding_share"],
        current.outstanding_links as f64 / 100.0
    );
}

#[sqlx::test]
async fn an_age_budget_rotates_a_key_once_it_has_signed_that_long(pool: PgPool) {
    let signer = "budget-age";
    let (mut app, budgets) = spawn_budgeted(&pool, signer, "age=1h").await;
    let bucket = app.bucket.clone();
    let (object, _) = put_sample(&mut app, &bucket).await;
    let old = app
        .issue(link_request(&bucket, &object, proto::Method::Get, 3600))
        .await
        .unwrap();
    let old_key = old.link.as_ref().unwrap().key_id.clone();

    // Now: the key is young, nothing happens.
    let checks = app.revocations.enforce_budgets(&budgets, Utc::now()).await;
    assert_eq!(checks.len(), 1);
    assert!(checks[0].rotated.is_none(), "{checks:?}");
    let listed = live_keys(&mut app, signer).await;
    let active = listed.keys.iter().find(|k| k.key_id == old_key).unwrap();
    let share = active.budget_share.expect("the active key's share");
    assert!(
        share.age_share < 0.1 && share.outstanding_share == 0.0,
        "{share:?}"
    );

    // The maintenance step as of two hours later: the key is past its age.
    let checks = app
        .revocations
        .enforce_budgets(&budgets, Utc::now() + chrono::Duration::hours(2))
        .await;
    let (spent, revocation) = checks[0].rotated.clone().expect("rotated");
    assert!(matches!(spent, Spent::Age { .. }), "{spent:?}");
    assert!(revocation.is_some());
    assert_eq!(checks[0].key_id, old_key);

    let listed = live_keys(&mut app, signer).await;
    let state_of = |id: &str| listed.keys.iter().find(|k| k.key_id == id).unwrap().state;
    assert_eq!(
        state_of(&old_key),
        proto::KeyState::Retired as i32,
        "GRACEFUL"
    );
    let new = app
        .issue(link_request(&bucket, &object, proto::Method::Get, 3600))
        .await
        .unwrap();
    assert_ne!(
        new.link.as_ref().unwrap().key_id,
        old_key,
        "the new key signs"
    );
    assert_eq!(
        try_link(&app.http, &old).await,
        StatusCode::OK,
        "the old key's link works"
    );
    assert_eq!(try_link(&app.http, &new).await, StatusCode::OK);
}

#[sqlx::test]
async fn a_budget_with_the_aws_backend_is_refused_at_startup_saying_why(pool: PgPool) {
    let config = test_config(&["--backend=aws", "--key-budgets=default:links=100"]);
    let e = App::build_with_db(config, (*pool.connect_options()).clone())
        .await
        .err()
        .expect("refused at startup");
    let e = format!("{e:#}");
    assert!(e.contains("two access keys per user"), "{e}");
    assert!(e.contains("signer default"), "{e}");
}
