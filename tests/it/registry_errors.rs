//! The registry's one error path against a real Postgres: states read and
//! written as their enums, and a named constraint that refuses a change comes
//! back as a conflict, which the edge answers FAILED_PRECONDITION.

use presignd::api::ApiError;
use presignd::domain::{KeyState, LinkState, RevocationState, RotationMode};
use presignd::registry::links::BlastRadius;
use presignd::registry::revocations::{self, NewRevocation};
use presignd::registry::{self, Constraint, ErrorKind, keys, signers};
use sqlx::PgPool;
use tonic::Code;

/// Binds `value`, reads it back as text and as the enum.
async fn round_trip<T>(pool: &PgPool, value: T, name: &str)
where
    T: for<'q> sqlx::Encode<'q, sqlx::Postgres>
        + for<'r> sqlx::Decode<'r, sqlx::Postgres>
        + sqlx::Type<sqlx::Postgres>
        + PartialEq
        + std::fmt::Debug
        + Copy
        + Send
        + Unpin,
{
    let (text, back): (String, T) = sqlx::query_as("SELECT $1::text, $1::text")
        .bind(value)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(text, name, "{value:?} is stored as its name");
    assert_eq!(back, value, "{name} reads back as {value:?}");
}

#[sqlx::test]
async fn every_state_is_stored_as_its_name_and_read_back(pool: PgPool) {
    for s in KeyState::ALL {
        round_trip(&pool, *s, s.as_str()).await;
    }
    for s in RevocationState::ALL {
        round_trip(&pool, *s, s.as_str()).await;
    }
    for m in RotationMode::ALL {
        round_trip(&pool, *m, m.as_str()).await;
    }
    for s in [LinkState::Active, LinkState::Expired, LinkState::Revoked] {
        round_trip(&pool, s, s.as_str()).await;
    }
}

#[sqlx::test]
async fn a_state_the_code_does_not_know_is_an_error_not_a_default(pool: PgPool) {
    let read = sqlx::query_scalar::<_, KeyState>("SELECT 'zombie'::text")
        .fetch_one(&pool)
        .await;
    assert!(read.is_err(), "{read:?}");
}

fn revocation<'a>(id: uuid::Uuid, radius: &'a BlastRadius) -> NewRevocation<'a> {
    NewRevocation {
        id,
        signer: "team-a",
        mode: RotationMode::Graceful,
        requested_by: "it",
        reason: "test",
        old_key_id: None,
        first_step: "create_key",
        blast_radius: radius,
        quarantined_link_ids: &[],
    }
}

#[sqlx::test]
async fn a_second_running_revocation_is_a_conflict_answered_failed_precondition(pool: PgPool) {
    signers::upsert(&pool, "team-a", "garage").await.unwrap();
    let radius = BlastRadius::default();
    revocations::insert(&pool, &revocation(uuid::Uuid::now_v7(), &radius))
        .await
        .unwrap();
    let err = revocations::insert(&pool, &revocation(uuid::Uuid::now_v7(), &radius))
        .await
        .unwrap_err();
    assert_eq!(err.statement, "revocations::insert");
    assert_eq!(
        err.kind,
        ErrorKind::Conflict(Constraint::OneRunningRevocationPerSigner)
    );
    let status = tonic::Status::from(ApiError::from(err));
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("already running"), "{status:?}");
}

#[sqlx::test]
async fn a_second_active_key_is_a_conflict_answered_failed_precondition(pool: PgPool) {
    signers::upsert(&pool, "team-a", "garage").await.unwrap();
    keys::insert(&pool, "KEY1", "team-a", KeyState::Active, b"sealed")
        .await
        .unwrap();
    let err = keys::insert(&pool, "KEY2", "team-a", KeyState::Active, b"sealed")
        .await
        .unwrap_err();
    assert_eq!(err.statement, "keys::insert");
    assert_eq!(
        err.kind,
        ErrorKind::Conflict(Constraint::OneActiveKeyPerSigner)
    );
    let status = tonic::Status::from(ApiError::from(err));
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // A pending key beside the active one is what a rotation makes: no conflict.
    keys::insert(&pool, "KEY3", "team-a", KeyState::Pending, b"sealed")
        .await
        .unwrap();
}

#[sqlx::test]
async fn an_unreachable_registry_is_unavailable_and_a_bad_statement_a_bug(pool: PgPool) {
    // Nothing listens on port 1.
    let nowhere = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(1))
        .connect_lazy("postgres://nobody@127.0.0.1:1/nothing")
        .unwrap();
    let err = registry::ping(&nowhere).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert_eq!(
        tonic::Status::from(ApiError::from(err)).code(),
        Code::Unavailable
    );
    // A foreign key refused (no such signer) is no constraint a caller can
    // run into: a bug, INTERNAL.
    let err = keys::insert(&pool, "KEY1", "nobody", KeyState::Active, b"sealed")
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Bug);
    assert_eq!(
        tonic::Status::from(ApiError::from(err)).code(),
        Code::Internal
    );
}
