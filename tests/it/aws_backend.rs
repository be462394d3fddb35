//! The aws backend against moto's IAM: keys created, rotated, deactivated and
//! deleted on the signer's IAM user, and IAM's 2-keys-per-user limit handled.
//! moto checks no signature and no key status: these tests prove the IAM calls
//! and their semantics, never that a link works or is dead (Garage does that).

use crate::helpers::*;
use aws_sdk_iam::types::StatusType;
use presignd::proto::{Method, RevocationState, RotationMode};
use sqlx::PgPool;
use std::collections::BTreeMap;
use tonic::Code;

pub async fn iam() -> aws_sdk_iam::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(env("MOTO_URL"))
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .load()
        .await;
    aws_sdk_iam::Client::new(&config)
}

/// The IAM user's keys: id -> active?
async fn iam_keys(iam: &aws_sdk_iam::Client, user: &str) -> BTreeMap<String, bool> {
    iam.list_access_keys()
        .user_name(user)
        .send()
        .await
        .expect("moto answers ListAccessKeys")
        .access_key_metadata
        .into_iter()
        .map(|k| {
            (
                k.access_key_id.unwrap(),
                k.status == Some(StatusType::Active),
            )
        })
        .collect()
}

async fn key_states(pool: &PgPool) -> BTreeMap<String, String> {
    sqlx::query_as::<_, (String, String)>("SELECT key_id, state FROM signing_keys")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[sqlx::test]
async fn keys_live_on_the_signers_iam_user_within_the_two_key_limit(pool: PgPool) {
    let iam = iam().await;
    let signer = format!("aws-{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    let user = format!("presignd-{signer}");
    iam.create_user()
        .user_name(&user)
        .send()
        .await
        .expect("moto creates the user");

    // Links point at moto's S3, which checks no signature: it answers the
    // probes (and the preflight) for a bucket made there, nothing more.
    let bucket = crate::bucket_regions::moto_bucket("us-east-1").await;
    let config = crate::bucket_regions::aws_config(&signer, &[&bucket], &[]);
    let mut app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;

    // Provisioned on start: one active key, the same in IAM and in the registry.
    let k1 = iam_keys(&iam, &user).await;
    assert_eq!(k1.len(), 1);
    let key1 = k1.keys().next().unwrap().clone();
    assert!(k1[&key1]);
    assert_eq!(key_states(&pool).await[&key1], "active");
    let link = app
        .issue(link_request(&bucket, "k", Method::Get, 600))
        .await
        .unwrap();
    assert_eq!(link.link.unwrap().key_id, key1);

    // REVOKE: key2 created, key1 set Inactive in IAM.
    let r = app
        .rotate(rotate_req(&signer, RotationMode::Revoke, ""))
        .await;
    assert_eq!(
        (r.state, r.links_revoked),
        (RevocationState::Succeeded as i32, 1)
    );
    let key2 = r.new_key_id.clone();
    assert_eq!(
        iam_keys(&iam, &user).await,
        BTreeMap::from([(key1.clone(), false), (key2.clone(), true)])
    );

    // REVOKE again: the user is at 2 keys; key1 is spent (inactive) and is
    // deleted to make room; key2 goes Inactive.
    let r = app
        .rotate(rotate_req(&signer, RotationMode::Revoke, ""))
        .await;
    assert_eq!(r.state, RevocationState::Succeeded as i32, "{r:?}");
    let key3 = r.new_key_id.clone();
    assert_eq!(
        iam_keys(&iam, &user).await,
        BTreeMap::from([(key2.clone(), false), (key3.clone(), true)])
    );
    assert_eq!(key_states(&pool).await[&key1], "deleted");

    // GRACEFUL with an outstanding link: key3 stays Active (retired); key2 (spent)
    // is deleted for key4.
    app.issue(link_request(&bucket, "k", Method::Get, 600))
        .await
        .unwrap();
    let r = app
        .rotate(rotate_req(&signer, RotationMode::Graceful, ""))
        .await;
    assert_eq!(r.state, RevocationState::Succeeded as i32);
    let key4 = r.new_key_id.clone();
    assert_eq!(
        iam_keys(&iam, &user).await,
        BTreeMap::from([(key3.clone(), true), (key4.clone(), true)])
    );

    // Another GRACEFUL: key3 still has an outstanding link and key4 is active:
    // nothing can go without breaking links. FAILED_PRECONDITION says what to do.
    let s = app
        .keys
        .rotate_key(rotate_req(&signer, RotationMode::Graceful, ""))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(
        s.message().contains("EMERGENCY") && s.message().contains(&key3),
        "{}",
        s.message()
    );
    assert_eq!(
        iam_keys(&iam, &user).await.len(),
        2,
        "nothing was created or deleted"
    );
    let active: i64 =
        sqlx::query_scalar("SELECT count(*) FROM signing_keys WHERE state = 'active'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(active, 1, "the signer still signs with key4");

    // EMERGENCY deactivates key4 first, which frees its slot.
    let r = app
        .rotate(rotate_req(&signer, RotationMode::Emergency, ""))
        .await;
    assert_eq!(r.state, RevocationState::Succeeded as i32, "{r:?}");
    let keys = iam_keys(&iam, &user).await;
    assert_eq!(keys.len(), 2);
    assert!(keys[&key3], "the retired key keeps serving its link");
    assert!(keys[&r.new_key_id]);
    let after = app
        .issue(link_request(&bucket, "k", Method::Get, 60))
        .await
        .unwrap();
    assert_eq!(after.link.unwrap().key_id, r.new_key_id);
}

/// IAM access keys carry no name: an intent left behind is reconciled by the
/// user's keys created since the intent that the registry does not know. The
/// key whose creation never committed is deleted; the recorded one stays.
#[sqlx::test]
async fn an_iam_key_whose_creation_never_committed_is_deleted_and_the_recorded_one_kept(
    pool: PgPool,
) {
    let iam = iam().await;
    let signer = format!("aws-{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    let user = format!("presignd-{signer}");
    iam.create_user().user_name(&user).send().await.unwrap();
    let config = test_config(&[
        "--backend=aws",
        &format!("--aws-iam-endpoint={}", env("MOTO_URL")),
        &format!("--signers={signer}"),
        "--buckets",
        "--maintenance-interval-secs=3600",
    ]);
    let app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let recorded = app.km.active_key(&signer).unwrap().key_id.clone();

    let mut tx = pool.begin().await.unwrap();
    let lost = app.km.create_replacement(&mut tx, &signer).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(iam_keys(&iam, &user).await.len(), 2, "the lost key is live");

    let reconciled = app.km.reconcile_intents().await.unwrap();
    assert_eq!(reconciled.deleted, [lost], "{reconciled:?}");
    let left: Vec<String> = iam_keys(&iam, &user).await.into_keys().collect();
    assert_eq!(left, [recorded]);
    let intents: i64 = sqlx::query_scalar("SELECT count(*) FROM key_intents")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(intents, 0);
}

/// The aws backend on `endpoint` (IAM), users `presignd-{signer}`.
async fn aws_backend(
    endpoint: String,
    attempt_timeout: std::time::Duration,
) -> presignd::backend::aws::AwsBackend {
    presignd::backend::aws::AwsBackend::new(presignd::backend::aws::AwsSettings {
        region: "us-east-1".into(),
        iam_endpoint: Some(endpoint),
        user_prefix: "presignd-".into(),
        attempt_timeout,
    })
    .await
}

/// An IAM endpoint that takes the connection and never answers (a hung IAM,
/// a proxy black-holing its traffic): the call ends as unavailable, which a
/// revocation's step retries and then resumes later, instead of holding the
/// step for ever. With no timeout the SDK waits on the socket indefinitely.
#[tokio::test]
async fn an_iam_that_never_answers_is_unavailable_not_a_hang() {
    use presignd::backend::KeyBackend;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let backend = aws_backend(endpoint, std::time::Duration::from_millis(300)).await;
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        backend.deactivate_key("silent", "AKIASILENT"),
    )
    .await
    .expect("the call ends although IAM never answers");
    let e = outcome.expect_err("no answer is no success");
    assert!(
        e.is_transient() && e.to_string().contains("UpdateAccessKey: timed out"),
        "{e}"
    );
    holder.abort();
}

/// CreateAccessKey is sent once, never retried by the SDK: IAM may have
/// created the key of an attempt whose answer was lost (here, never sent),
/// and a retry would create a second key and return only that one, leaving
/// the first live and unknown to the registry once the intent is resolved
/// (invariant 6). The failed call leaves its intent for reconciliation,
/// which finds and deletes what IAM created. Idempotent calls keep the
/// SDK's retries.
#[tokio::test]
async fn an_unanswered_create_access_key_is_sent_once_not_retried() {
    use presignd::backend::KeyBackend;
    use tokio::io::AsyncReadExt;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = received.clone();
    let holder = tokio::spawn(async move {
        while let Ok((mut conn, _)) = silent.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    let backend = aws_backend(endpoint, std::time::Duration::from_millis(300)).await;
    let count = |action: &str| {
        let bytes = received.lock().unwrap();
        let needle = format!("Action={action}");
        String::from_utf8_lossy(&bytes).matches(&needle).count()
    };
    let e = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        backend.create_key("silent", "presignd-silent-1"),
    )
    .await
    .expect("the call ends although IAM never answers")
    .expect_err("no answer is no success");
    assert!(e.is_transient(), "{e}");
    // What was sent has been read by now (the readers run alongside).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(count("CreateAccessKey"), 1, "one CreateAccessKey, no retry");
    holder.abort();
}

/// `key_live` as IAM says it: a key live once created, not once
/// deactivated (Inactive), nor once deleted.
#[tokio::test]
async fn a_key_is_live_at_iam_until_deactivated() {
    use presignd::backend::KeyBackend;
    let signer = crate::bucket_regions::moto_signer().await;
    let backend = aws_backend(env("MOTO_URL"), std::time::Duration::from_secs(10)).await;
    let key = backend
        .create_key(&signer, "k")
        .await
        .unwrap()
        .access_key_id;
    assert!(backend.key_live(&signer, &key).await.unwrap());
    backend.deactivate_key(&signer, &key).await.unwrap();
    assert!(!backend.key_live(&signer, &key).await.unwrap());
    backend.delete_key(&signer, &key).await.unwrap();
    assert!(!backend.key_live(&signer, &key).await.unwrap());
}
