//! `presignd reseal`: every sealed secret re-encrypted under a new master key in
//! one transaction; the server restarted with the new key signs links Garage
//! accepts; the old key no longer opens anything; a secret that does not open
//! aborts the whole reseal.

use crate::helpers::*;
use presignd::proto::{Method, RotateKeyRequest, RotationMode};
use presignd::seal::MasterKey;
use presignd::secret::SecretString;
use reqwest::StatusCode;
use sqlx::PgPool;

async fn sealed(pool: &PgPool) -> Vec<(String, Vec<u8>)> {
    sqlx::query_as("SELECT key_id, sealed_secret FROM signing_keys ORDER BY key_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn reseal_cli(pool: &PgPool, new: &MasterKey) -> std::process::Output {
    let dir = crate::pki::temp_dir();
    let file = dir.join("new.key");
    std::fs::write(&file, format!("{}\n", &*new.to_hex())).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_presignd"))
        .arg("reseal")
        .arg(format!("--database-url={}", database_url(pool)))
        .arg(format!("--master-key={}", master_key_hex()))
        .arg(format!("--new-master-key-file={}", file.display()))
        .output()
        .await
        .unwrap()
}

#[sqlx::test]
async fn resealed_secrets_open_only_under_the_new_master_key_and_still_sign(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let key = unique_key("reseal");
    let put = app
        .issue(link_request(&bucket, &key, Method::Put, 600))
        .await
        .unwrap();
    assert_eq!(
        send(
            &app.http,
            reqwest::Method::PUT,
            &put,
            Some(b"kept".to_vec())
        )
        .await
        .status(),
        StatusCode::OK
    );
    app.keys
        .rotate_key(RotateKeyRequest {
            signer: "default".into(),
            mode: RotationMode::Graceful as i32,
            reason: "two keys to reseal".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    drop(app); // every replica stops before a reseal
    let before = sealed(&pool).await;
    assert_eq!(before.len(), 2);

    let old = MasterKey::parse(master_key_hex()).unwrap();
    let new = MasterKey::generate();
    let out = reseal_cli(&pool, &new).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("resealed 2 secret(s)"));

    let after = sealed(&pool).await;
    for ((id, was), (same_id, now)) in before.iter().zip(&after) {
        assert_eq!(id, same_id);
        assert_ne!(was, now);
        assert!(
            old.open(id, now).is_err(),
            "the old master key no longer opens {id}"
        );
        assert_eq!(*new.open(id, now).unwrap(), *old.open(id, was).unwrap());
        assert!(
            new.open("another-key-id", now).is_err(),
            "still bound to its key id"
        );
    }

    let mut config = test_config(&[]);
    config.master_key = Some(SecretString::new(new.to_hex().to_string()));
    let mut app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let get = app
        .issue(link_request(&bucket, &key, Method::Get, 60))
        .await
        .unwrap();
    assert_eq!(try_link(&app.http, &get).await, StatusCode::OK);
    let r = send(&app.http, reqwest::Method::GET, &get, None).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"kept");
}

#[sqlx::test]
async fn a_secret_that_does_not_open_aborts_the_whole_reseal(pool: PgPool) {
    let app = spawn_app(&pool).await;
    drop(app);
    let stranger = MasterKey::generate().seal("GKforeign", b"sealed elsewhere");
    sqlx::query(
        "INSERT INTO signing_keys (key_id, signer, state, sealed_secret) VALUES ('GKforeign', 'default', 'deleted', $1)",
    )
    .bind(&stranger)
    .execute(&pool)
    .await
    .unwrap();
    let before = sealed(&pool).await;
    let out = reseal_cli(&pool, &MasterKey::generate()).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("GKforeign") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(sealed(&pool).await, before, "nothing was resealed");
}
