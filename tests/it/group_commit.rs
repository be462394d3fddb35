//! The group commit's one statement (`registry::links::record`, the
//! `links_record` function of migration 0017), against PostgreSQL: it waits
//! for a key's state change and sees it, claims each request id once, writes
//! only active keys' rows, and keeps one replacement per link.
//! And the recorder's gate through the server: a commit that waits does not
//! hold the next one back for long.

use crate::fixture::seed_fixture;
use crate::helpers::{
    Auth, buckets, link_request, new_link as link, policy_config, spawn_app_with, wait_for_count,
    with_token_b,
};
use presignd::proto::{Method, link_service_client::LinkServiceClient};
use presignd::registry::{
    ErrorKind, keys,
    links::{self, LinkRequest, NewLink},
};
use sqlx::PgPool;
use uuid::Uuid;

fn with_request(mut l: NewLink, id: &str, digest: u8) -> NewLink {
    l.request = Some(LinkRequest {
        id: id.into(),
        sha256: [digest; 32],
    });
    l
}

/// Counts the advisory locks of the issuance class that wait ungranted: the
/// batches queued behind one a test holds (for `wait_for_count`).
fn issuance_lock_waiters() -> String {
    format!(
        "SELECT count(*) FROM pg_locks
         WHERE locktype = 'advisory' AND NOT granted AND classid = {}",
        links::ISSUANCE_LOCK_CLASS
    )
}

async fn recorded(pool: &PgPool, ids: &[Uuid]) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT id FROM links WHERE id = ANY ($1) ORDER BY id")
        .bind(ids)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// A batch whose key is being deactivated waits on the key's issuance lock
/// (the class `keys::lock_issuance_exclusive` takes: the function's constant
/// is the registry's), and then reads the state committed meanwhile: nothing
/// is written. Fails if the function locks another class or reads the key's
/// state in a snapshot taken before its lock was granted.
#[sqlx::test]
async fn a_batch_waits_for_a_state_change_and_sees_it(pool: PgPool) {
    seed_fixture(&pool).await;
    let mut change = pool.begin().await.unwrap();
    keys::lock_issuance_exclusive(&mut change, "GKALPHA1")
        .await
        .unwrap();

    let row = link("GKALPHA1", "alpha", "svc-a");
    let id = row.id;
    let batch = {
        let pool = pool.clone();
        tokio::spawn(async move { links::record(&pool, &["GKALPHA1"], &[&row]).await })
    };
    // The batch is queued behind our lock (polled, so no timing is assumed).
    let waiting = wait_for_count(&pool, &issuance_lock_waiters(), 1).await;
    assert!(
        !batch.is_finished(),
        "the batch went ahead of the key's state change"
    );
    assert_eq!(waiting, 1_i64, "the batch waits on the issuance lock");

    sqlx::query("UPDATE signing_keys SET state = 'inactive' WHERE key_id = 'GKALPHA1'")
        .execute(&mut *change)
        .await
        .unwrap();
    change.commit().await.unwrap();

    let written = batch.await.unwrap().unwrap();
    assert!(written.active_keys.is_empty(), "{:?}", written.active_keys);
    assert!(recorded(&pool, &[id]).await.is_empty());
}

/// One batch mixing an inactive key's row, a request id sent twice (two
/// concurrent retries), an id already naming a live link and plain rows:
/// exactly the active keys' rows are written, the first row of a (caller,
/// id) claims it, its duplicate and the taken id's row are not written.
#[sqlx::test]
async fn a_batch_writes_active_keys_rows_and_claims_each_id_once(pool: PgPool) {
    seed_fixture(&pool).await;
    let taken = with_request(link("GKALPHA1", "alpha", "svc-a"), "taken", 1);
    let first = links::record(&pool, &["GKALPHA1"], &[&taken])
        .await
        .unwrap();
    assert_eq!(first.claimed, [taken.id]);

    let plain = link("GKALPHA1", "alpha", "svc-a");
    let other_key = link("GKBETA2", "beta", "svc-b");
    let dead_key = link("GKALPHA0", "alpha", "svc-a");
    let retry_a = with_request(link("GKALPHA1", "alpha", "svc-a"), "r-1", 2);
    let retry_b = with_request(link("GKALPHA1", "alpha", "svc-a"), "r-1", 2);
    let same_id_other_caller = with_request(link("GKBETA2", "beta", "svc-b"), "r-1", 3);
    let again_taken = with_request(link("GKALPHA1", "alpha", "svc-a"), "taken", 1);
    let dead_with_id = with_request(link("GKALPHA0", "alpha", "svc-a"), "r-2", 4);
    let batch = [
        &plain,
        &retry_a,
        &other_key,
        &dead_key,
        &retry_b,
        &same_id_other_caller,
        &again_taken,
        &dead_with_id,
    ];
    let written = links::record(&pool, &["GKALPHA0", "GKALPHA1", "GKBETA2"], &batch)
        .await
        .unwrap();

    let mut active = written.active_keys.clone();
    active.sort();
    assert_eq!(active, ["GKALPHA1", "GKBETA2"]);
    let mut claimed = written.claimed.clone();
    claimed.sort();
    let mut want = vec![retry_a.id, same_id_other_caller.id];
    want.sort();
    assert_eq!(claimed, want, "the first row of each live (caller, id)");

    let all: Vec<Uuid> = batch.iter().map(|l| l.id).collect();
    let mut want = vec![plain.id, retry_a.id, other_key.id, same_id_other_caller.id];
    want.sort();
    assert_eq!(recorded(&pool, &all).await, want);

    let named: Vec<(String, String, Uuid)> = sqlx::query_as(
        "SELECT caller, request_id, link_id FROM link_requests ORDER BY caller, request_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        named,
        [
            ("svc-a".into(), "r-1".into(), retry_a.id),
            ("svc-a".into(), "taken".into(), taken.id),
            ("svc-b".into(), "r-1".into(), same_id_other_caller.id),
        ]
    );
}

/// A replacement of a link that has one already is not written, and the batch
/// holding it still commits its other rows.
#[sqlx::test]
async fn a_second_replacement_of_a_link_is_not_written(pool: PgPool) {
    seed_fixture(&pool).await;
    let original = link("GKALPHA1", "alpha", "svc-a");
    links::record(&pool, &["GKALPHA1"], &[&original])
        .await
        .unwrap();
    let replacement = |l: &NewLink| NewLink {
        replaces_link_id: Some(l.id),
        expires_at: l.expires_at,
        ..link("GKBETA2", "beta", "svc-a")
    };
    let one = replacement(&original);
    links::record(&pool, &["GKBETA2"], &[&one]).await.unwrap();
    let two = replacement(&original);
    let plain = link("GKBETA2", "beta", "svc-a");
    let written = links::record(&pool, &["GKBETA2"], &[&two, &plain])
        .await
        .unwrap();
    assert_eq!(written.active_keys, ["GKBETA2"]);
    let mut want = vec![one.id, plain.id];
    want.sort();
    assert_eq!(recorded(&pool, &[one.id, two.id, plain.id]).await, want);
}

/// What the dropped foreign keys of `links` guaranteed, the function keeps
/// (and more): a batch naming a key that does not exist, or a key that is not
/// its link's signer's, is refused whole (a bug: INTERNAL, as a foreign key
/// violation was), and nothing of it is written.
#[sqlx::test]
async fn a_batch_naming_a_missing_or_foreign_key_is_refused_whole(pool: PgPool) {
    seed_fixture(&pool).await;
    for (key, signer) in [("GKNOSUCH", "alpha"), ("GKBETA2", "alpha")] {
        let good = link("GKALPHA1", "alpha", "svc-a");
        let bad = link(key, signer, "svc-a");
        let err = links::record(&pool, &["GKALPHA1", key], &[&good, &bad])
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Bug, "{key}/{signer}: {err}");
        assert_eq!(
            tonic::Status::from(presignd::api::ApiError::from(err)).code(),
            tonic::Code::Internal
        );
        assert!(recorded(&pool, &[good.id, bad.id]).await.is_empty());
    }
}

/// A key is never deleted: links derive their state from its row (the
/// foreign key refused this while links named the key; now no key goes).
#[sqlx::test]
async fn a_key_is_never_deleted(pool: PgPool) {
    seed_fixture(&pool).await;
    let err = sqlx::query("DELETE FROM signing_keys WHERE key_id = 'GKBETA0'")
        .execute(&pool)
        .await
        .unwrap_err();
    let db = err.as_database_error().expect("refused by PostgreSQL");
    assert_eq!(db.code().as_deref(), Some("23503"), "{db}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM signing_keys")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 5);
}

/// The plans PostgreSQL makes on one connection, as `debug_print_plan`
/// reports them to the client (a LOG notice "plan:" each, which sqlx traces).
#[derive(Clone, Default)]
struct Plans(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Plans {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Plans {
    fn made(&self) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches("plan:")
            .count()
    }
}

/// Migration 0024: `links_record` plans its statements once per connection,
/// not at every batch. Without it the first five batches plan every
/// statement and each batch after them still plans one (the plan cache keeps
/// a plan made for that batch's arrays: ~6% of PostgreSQL's CPU under
/// IssueLink). Here a batch of a size not seen before plans nothing. Fails
/// (`[.., 1, 1, 1, 1]`) if the function's statements go back to custom plans.
#[sqlx::test]
async fn a_batch_plans_nothing_once_its_statements_are_planned(pool: PgPool) {
    seed_fixture(&pool).await;
    let plans = Plans::default();
    let writer = plans.clone();
    let _traced = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "sqlx::postgres::notice=trace",
            ))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql("SET client_min_messages = log; SET debug_print_plan = on")
        .execute(&mut *conn)
        .await
        .unwrap();
    let (mut per_batch, mut ids) = (Vec::new(), Vec::new());
    for size in 1..=10 {
        let rows: Vec<NewLink> = (0..size)
            .map(|_| link("GKALPHA1", "alpha", "svc-a"))
            .collect();
        let before = plans.made();
        let written = links::record(&mut *conn, &["GKALPHA1"], &rows.iter().collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(written.active_keys, ["GKALPHA1"]);
        per_batch.push(plans.made() - before);
        ids.extend(rows.iter().map(|r| r.id));
    }
    assert!(per_batch[0] > 0, "the first batch plans: {per_batch:?}");
    assert_eq!(
        per_batch[6..],
        [0; 4],
        "plans made per batch: {per_batch:?}"
    );
    assert_eq!(
        recorded(&pool, &ids).await.len(),
        55,
        "every row of the ten batches is written"
    );
}

/// One commit is in flight at a time unless it is slow (the recorder's gate,
/// `OVERLAP_AFTER`): a commit waiting on a key's state change (its issuance
/// lock held exclusive, as a rotation holds it) holds the next batch back
/// only that long. Another signer's link commits and answers meanwhile, and
/// the waiting one once the lock goes. Fails if the recorder commits one
/// batch at a time whatever the first one waits for.
#[sqlx::test]
async fn a_commit_waiting_on_a_key_does_not_hold_back_another_signers_link(pool: PgPool) {
    let (config, _) = policy_config(crate::signers::POLICY, &["--signers=default,other"]);
    let app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let bucket = buckets()[0].clone();
    let key = app.km.active_key("default").unwrap().key_id.clone();

    let mut change = pool.begin().await.unwrap();
    keys::lock_issuance_exclusive(&mut change, &key)
        .await
        .unwrap();
    let held = {
        let (mut client, bucket) = (app.links.clone(), bucket.clone());
        tokio::spawn(async move {
            client
                .issue_link(link_request(&bucket, "gate/held.bin", Method::Get, 600))
                .await
        })
    };
    // Its commit waits on our lock.
    let waiting = wait_for_count(&pool, &issuance_lock_waiters(), 1).await;
    assert_eq!(
        waiting, 1,
        "the first link's commit waits on the key's lock"
    );

    // Well within the recorder's timeout (10 s), which would end the held
    // commit (unavailable) and free the gate anyway.
    let mut as_b = LinkServiceClient::with_interceptor(app.channel.clone(), with_token_b as Auth);
    let theirs = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        as_b.issue_link(link_request(&bucket, "gate/other.bin", Method::Get, 600)),
    )
    .await
    .expect("another signer's link waited for the commit held by a key's state change")
    .unwrap()
    .into_inner()
    .link
    .unwrap();
    assert_eq!(theirs.signer, "other");
    let theirs_id: Uuid = theirs.id.parse().unwrap();
    assert_eq!(
        recorded(&pool, &[theirs_id]).await,
        [theirs_id],
        "committed"
    );
    assert!(
        !held.is_finished(),
        "the first link still waits for the lock"
    );

    change.rollback().await.unwrap();
    let mine = held.await.unwrap().unwrap().into_inner().link.unwrap();
    assert_eq!(mine.signer, "default");
    let mine_id: Uuid = mine.id.parse().unwrap();
    assert_eq!(recorded(&pool, &[mine_id]).await, [mine_id]);
}
