//! Invariant 6, no live backend key unknown to the registry, whatever crashes
//! when: a crash is injected (a failpoint of the key manager) after each step
//! of provisioning and of every rotation mode's steps; then presignd restarts
//! on the same database, becomes ready, and Garage's keys are compared with
//! the registry. Garage is shared by tests running in parallel: each test's
//! signers carry a unique marker, and Garage keys are named
//! `presignd-{signer}-{intent id}`. Garage holds more keys than one ListKeys
//! answers (10,000; tests/it/garage_backend.rs sees to it), so the test never
//! lists them: it looks up by id every key the registry has for the signer,
//! and by name every key intent a crash left.

use crate::helpers::*;
use presignd::app::App;
use presignd::domain::{RevocationState, RotationMode as Mode, SignerName};
use presignd::keys::Failpoint;
use presignd::revocation::{self, RotateRequest, Rotation, Step};
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;

/// A signer name no other test (or earlier run) uses.
fn unique_signer(what: &str) -> String {
    // The random tail of a UUIDv7 (its head is the time).
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("crash-{what}-{}", &id[20..])
}

/// A server for `signer` alone. The maintenance loop is kept out of the way
/// (the test drives every step itself); startup does what matters here.
fn config(signer: &str) -> presignd::config::Config {
    test_config(&[
        &format!("--signers={signer}"),
        "--maintenance-interval-secs=3600",
    ])
}

/// A signer under test and the names of the key intents its crashes left:
/// noted right after each crash, as the restart resolves them.
struct Watched {
    signer: String,
    intent_names: BTreeSet<String>,
}

impl Watched {
    fn new(signer: String) -> Self {
        Self {
            signer,
            intent_names: BTreeSet::new(),
        }
    }

    /// Notes the signer's unresolved intents.
    async fn note_intents(&mut self, pool: &PgPool) {
        let names: Vec<String> =
            sqlx::query_scalar("SELECT name FROM key_intents WHERE signer = $1")
                .bind(&self.signer)
                .fetch_all(pool)
                .await
                .unwrap();
        self.intent_names.extend(names);
    }

    /// Garage's live (not expired) keys of the signer: among the registry's
    /// keys of the signer (in any state) and the keys named as a noted intent.
    async fn garage_live_keys(&self, pool: &PgPool) -> BTreeSet<String> {
        let mut ids: BTreeSet<String> =
            sqlx::query_scalar("SELECT key_id FROM signing_keys WHERE signer = $1")
                .bind(&self.signer)
                .fetch_all(pool)
                .await
                .unwrap()
                .into_iter()
                .collect();
        for name in &self.intent_names {
            ids.extend(garage_key_named(name).await);
        }
        let mut live = BTreeSet::new();
        for id in ids {
            if garage_key_live(&id).await {
                live.insert(id);
            }
        }
        live
    }
}

/// The id of Garage's key named `name`, by GetKeyInfo's search over all its
/// keys (one at most: these tests retry no creation).
async fn garage_key_named(name: &str) -> Option<String> {
    let r = reqwest::Client::new()
        .get(format!("{}/v2/GetKeyInfo", env("GARAGE_ADMIN_URL")))
        .query(&[("search", name)])
        .bearer_auth(env("GARAGE_ADMIN_TOKEN"))
        .send()
        .await
        .unwrap();
    match r.status().as_u16() {
        404 => None,
        200 => {
            let key: serde_json::Value = r.json().await.unwrap();
            (key["name"] == name).then(|| key["accessKeyId"].as_str().unwrap().to_owned())
        }
        status => panic!(
            "garage GetKeyInfo search={name}: {status} {}",
            r.text().await.unwrap()
        ),
    }
}

/// Whether Garage has the key `key_id` and accepts it (not expired).
async fn garage_key_live(key_id: &str) -> bool {
    let info = garage_key_info(key_id, false).await;
    match info["expired"].as_bool() {
        Some(expired) => !expired,
        None => {
            assert_eq!(
                info["code"], "NoSuchAccessKey",
                "GetKeyInfo id={key_id}: {info}"
            );
            false
        }
    }
}

/// The registry's keys of `signer` that are live at the backend (pending,
/// active, retired).
async fn registry_live_keys(pool: &PgPool, signer: &str) -> BTreeSet<String> {
    sqlx::query_scalar(
        "SELECT key_id FROM signing_keys WHERE signer = $1 AND state IN ('pending', 'active', 'retired')",
    )
    .bind(signer)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

async fn unresolved_intents(pool: &PgPool, signer: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM key_intents WHERE signer = $1")
        .bind(signer)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The invariant, both ways: every live Garage key of the signer is in the
/// registry, and every key the registry calls live is live at Garage.
async fn assert_garage_matches_registry(pool: &PgPool, watched: &Watched, when: &str) {
    let signer = &watched.signer;
    let garage = watched.garage_live_keys(pool).await;
    let registry = registry_live_keys(pool, signer).await;
    assert_eq!(
        garage, registry,
        "{when}: Garage's live keys (left) differ from the registry's (right)"
    );
    assert_eq!(unresolved_intents(pool, signer).await, 0, "{when}");
    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM signing_keys WHERE signer = $1 AND state = 'active'",
    )
    .bind(signer)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(active, 1, "{when}: the signer signs again");
}

/// Starts a server with `point` armed and waits until the work reached it
/// (and its task died there).
async fn crash_at(pool: &PgPool, signer: &str, point: Failpoint) -> TestApp {
    let app = App::build_with_db(config(signer), (*pool.connect_options()).clone())
        .await
        .unwrap();
    let reached = app.key_manager().failpoints().arm(point);
    let app = spawn_built(app).await;
    tokio::time::timeout(Duration::from_secs(30), reached)
        .await
        .unwrap_or_else(|_| panic!("{point:?} was not reached"))
        .unwrap();
    app
}

async fn restart(pool: &PgPool, signer: &str) -> TestApp {
    let app = spawn_app_with(config(signer), (*pool.connect_options()).clone()).await;
    app.wait_for(ServingStatus::Serving).await;
    app
}

#[sqlx::test]
async fn a_crash_at_any_step_of_provisioning_leaves_no_key_unknown_to_the_registry(pool: PgPool) {
    let marker = unique_signer("prov");
    let points = [
        Failpoint::AfterIntent,
        Failpoint::AfterBackendCreate,
        Failpoint::AfterProbe,
        Failpoint::BeforeCommit,
    ];
    for (i, point) in points.into_iter().enumerate() {
        // A signer without a key: startup provisions one, and dies at `point`.
        let mut watched = Watched::new(format!("{marker}-{i}"));
        let signer = watched.signer.clone();
        let app = crash_at(&pool, &signer, point).await;
        watched.note_intents(&pool).await;
        let orphans = watched.garage_live_keys(&pool).await;
        let expected = usize::from(point != Failpoint::AfterIntent);
        assert_eq!(orphans.len(), expected, "{point:?}: what the crash left");
        assert!(registry_live_keys(&pool, &signer).await.is_empty());
        assert_eq!(unresolved_intents(&pool, &signer).await, 1, "{point:?}");
        drop(app); // the crash

        let app = restart(&pool, &signer).await;
        assert_garage_matches_registry(&pool, &watched, &format!("{point:?}")).await;
        assert!(
            app.km.active_key(&signer).is_some(),
            "{point:?}: the restart provisioned a key"
        );
        for orphan in &orphans {
            assert_eq!(
                garage_key_info_status(orphan).await,
                404,
                "{point:?}: the unrecorded key {orphan} is deleted at Garage"
            );
        }
    }
}

/// GetKeyInfo's HTTP status for `key_id`.
async fn garage_key_info_status(key_id: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/v2/GetKeyInfo", env("GARAGE_ADMIN_URL")))
        .query(&[("id", key_id)])
        .bearer_auth(env("GARAGE_ADMIN_TOKEN"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Where each step of a rotation can be cut.
fn crash_points(step: Step) -> &'static [Failpoint] {
    use Failpoint::*;
    match step {
        Step::CreateKey => &[AfterIntent, AfterBackendCreate, BeforeCommit],
        Step::VerifyKey => &[AfterProbe, BeforeCommit],
        Step::ActivateKey => &[BeforeCommit],
        Step::DeactivateOld => &[AfterBackendDeactivate, BeforeCommit],
        Step::Done => &[],
    }
}

/// For each step of `mode` and each point in it: a rotation runs the steps
/// before, crashes there, presignd restarts (finishing the rotation), and
/// Garage's keys match the registry's.
async fn crash_every_step_of(pool: PgPool, mode: Mode) {
    let mut watched = Watched::new(unique_signer(mode.as_str()));
    let signer = watched.signer.clone();
    let mut app = restart(&pool, &signer).await;
    assert_garage_matches_registry(&pool, &watched, "provisioned").await;
    let steps = revocation::steps(mode, true);
    for (done, step) in steps.iter().enumerate() {
        for &point in crash_points(*step) {
            let when = format!("{mode:?}, crash in {} at {point:?}", step.as_str());
            let req = RotateRequest {
                signer: SignerName::parse(&signer).unwrap(),
                mode,
                reason: "crash injection".into(),
                expected_key_id: None,
                dry_run: false,
                requested_by: CALLER.into(),
                quarantine_link_ids: Vec::new(),
            };
            let Rotation::Ran(row) = app.revocations.start(req).await.unwrap() else {
                panic!("not a dry run")
            };
            for _ in 0..done {
                app.revocations.try_advance(row.id).await.unwrap();
            }
            let reached = app.km.failpoints().arm(point);
            let revocations = app.revocations.clone();
            let id = row.id;
            let crashed = tokio::spawn(async move { revocations.try_advance(id).await })
                .await
                .expect_err("the step crashed");
            assert!(crashed.is_panic(), "{when}");
            reached.await.unwrap();
            watched.note_intents(&pool).await;
            if *step == Step::CreateKey && point != Failpoint::AfterIntent {
                let unknown: Vec<_> = watched
                    .garage_live_keys(&pool)
                    .await
                    .difference(&registry_live_keys(&pool, &signer).await)
                    .cloned()
                    .collect();
                assert_eq!(unknown.len(), 1, "{when}: the crash left a key");
            }
            drop(app); // the crash

            app = restart(&pool, &signer).await;
            let report = app.revocations.get(row.id).await.unwrap();
            assert_eq!(
                report.state,
                RevocationState::Succeeded,
                "{when}: {report:?}"
            );
            assert_eq!(report.steps.0.len(), steps.len(), "{when}: each step once");
            assert_garage_matches_registry(&pool, &watched, &when).await;
        }
    }
}

#[sqlx::test]
async fn a_crash_at_any_step_of_a_graceful_rotation_leaves_no_key_unknown_to_the_registry(
    pool: PgPool,
) {
    crash_every_step_of(pool, Mode::Graceful).await;
}

#[sqlx::test]
async fn a_crash_at_any_step_of_a_revoke_leaves_no_key_unknown_to_the_registry(pool: PgPool) {
    crash_every_step_of(pool, Mode::Revoke).await;
}

#[sqlx::test]
async fn a_crash_at_any_step_of_an_emergency_leaves_no_key_unknown_to_the_registry(pool: PgPool) {
    crash_every_step_of(pool, Mode::Emergency).await;
}

/// An error (not a crash) between the backend's CreateKey and the commit: the
/// rotation's transaction rolls back, the step stays to be retried, and the
/// maintenance step deletes the key it created.
#[sqlx::test]
async fn a_key_whose_creation_never_commits_is_deleted_by_the_maintenance_step(pool: PgPool) {
    let mut watched = Watched::new(unique_signer("err"));
    let signer = watched.signer.clone();
    let app = restart(&pool, &signer).await;
    let mut tx = pool.begin().await.unwrap();
    let created = app.km.create_replacement(&mut tx, &signer).await.unwrap();
    tx.rollback().await.unwrap(); // e.g. the step's commit failed
    watched.note_intents(&pool).await;
    assert!(watched.garage_live_keys(&pool).await.contains(&created));
    assert_eq!(unresolved_intents(&pool, &signer).await, 1);

    let reconciled = app.km.reconcile_intents().await.unwrap();
    assert!(reconciled.deleted.contains(&created), "{reconciled:?}");
    assert!(reconciled.failed.is_empty(), "{reconciled:?}");
    assert_garage_matches_registry(&pool, &watched, "after reconciliation").await;
    assert_eq!(garage_key_info_status(&created).await, 404);
}

/// A REVOKE at its last step, deactivate_old_key, with the old key retired:
/// whether the backend call was made the registry cannot know, so a cancel
/// asks Garage. Before the call, the key is live there and the cancel goes
/// through. After a crash between Garage's deactivation and its record, the
/// key is dead there: the cancel is refused (cancelled, the key would stay
/// retired and its dead links be reported active: invariant 2), and the
/// restart records the deactivation.
#[sqlx::test]
async fn a_cancel_after_the_old_key_died_at_the_backend_is_refused_and_the_revocation_finishes(
    pool: PgPool,
) {
    let watched = Watched::new(unique_signer("cancel"));
    let signer = watched.signer.clone();
    let app = restart(&pool, &signer).await;
    let revoke = || RotateRequest {
        signer: SignerName::parse(&signer).unwrap(),
        mode: Mode::Revoke,
        reason: "cancel at the last step".into(),
        expected_key_id: None,
        dry_run: false,
        requested_by: CALLER.into(),
        quarantine_link_ids: Vec::new(),
    };
    // create_key, verify_key, activate_key: then deactivate_old_key is next.
    let to_last_step = |app: &TestApp, id| {
        let revocations = app.revocations.clone();
        async move {
            for _ in 0..3 {
                revocations.try_advance(id).await.unwrap();
            }
            let row = revocations.get(id).await.unwrap();
            assert_eq!(row.next_step, Step::DeactivateOld.as_str());
            row.old_key_id.unwrap()
        }
    };

    let Rotation::Ran(row) = app.revocations.start(revoke()).await.unwrap() else {
        panic!("not a dry run")
    };
    let old = to_last_step(&app, row.id).await;
    assert_eq!(key_state(&pool, &old).await, "retired");
    let cancelled = app
        .revocations
        .cancel(row.id, "the key is not leaked after all", CALLER)
        .await
        .expect("the old key is live at Garage: cancelled");
    assert_eq!(cancelled.revocation.state, RevocationState::Cancelled);
    assert!(garage_key_live(&old).await);
    assert!(cancelled.live_keys.iter().any(|k| k.key_id == old));

    let Rotation::Ran(row) = app.revocations.start(revoke()).await.unwrap() else {
        panic!("not a dry run")
    };
    let old = to_last_step(&app, row.id).await;
    let reached = app.km.failpoints().arm(Failpoint::AfterBackendDeactivate);
    let revocations = app.revocations.clone();
    let id = row.id;
    let crashed = tokio::spawn(async move { revocations.try_advance(id).await })
        .await
        .expect_err("the step crashed");
    assert!(crashed.is_panic());
    reached.await.unwrap();
    assert!(!garage_key_live(&old).await, "Garage deactivated it");
    assert_eq!(key_state(&pool, &old).await, "retired", "not recorded");
    let Err(refused) = app.revocations.cancel(row.id, "too late", CALLER).await else {
        panic!("the key is dead at Garage: too late to cancel")
    };
    assert!(
        matches!(&refused, revocation::RevocationError::DeactivatedAlready { key_id, .. } if *key_id == old),
        "{refused}"
    );
    assert_eq!(
        app.revocations.get(row.id).await.unwrap().state,
        RevocationState::Running
    );
    drop(app); // the crash

    let app = restart(&pool, &signer).await;
    let report = app.revocations.get(row.id).await.unwrap();
    assert_eq!(report.state, RevocationState::Succeeded, "{report:?}");
    assert_eq!(key_state(&pool, &old).await, "inactive");
    assert_garage_matches_registry(&pool, &watched, "after the restart").await;
}
