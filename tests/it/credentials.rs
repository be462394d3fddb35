//! Credentials that must never let anyone in: a caller configured with the hash
//! of the empty token, and `presignd hash-token` asked to hash nothing.

use crate::helpers::*;
use presignd::app::App;
use std::io::Write;
use std::process::{Command, Stdio};

#[tokio::test]
async fn a_caller_whose_token_hash_is_that_of_the_empty_string_stops_startup() {
    let empty = presignd::auth::hash_token("");
    let config = test_config(&[&format!(
        "--callers={CALLER}:{},lazy:{empty}",
        presignd::auth::hash_token(TOKEN)
    )]);
    let db = "postgres://nobody@127.0.0.1:1/none".parse().unwrap();
    let e = match App::build_with_db(config, db).await {
        Ok(_) => panic!("presignd started with a caller whose token is empty"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("PRESIGND_CALLERS") && e.contains("caller lazy") && e.contains("empty token"),
        "{e}"
    );
}

fn hash_token(stdin: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_presignd"))
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn hash_token_refuses_an_empty_token() {
    for input in ["", "  \n"] {
        let out = hash_token(input);
        assert!(!out.status.success(), "{input:?} was hashed");
        assert!(out.stdout.is_empty(), "{input:?}: no hash printed");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("the token is empty"), "{input:?}: {err}");
    }
    let out = hash_token("a-real-token\n");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        presignd::auth::hash_token("a-real-token")
    );
}

/// presignd signs only with long-term keys it created: a registry whose active
/// key is a temporary STS session key (ASIA…) keeps the server NOT_SERVING,
/// the readiness reason saying why; nothing is ever signed with it.
#[sqlx::test]
async fn an_active_session_key_in_the_registry_is_refused_at_startup(pool: sqlx::PgPool) {
    use presignd::domain::KeyState;
    use presignd::health::NOT_READY_METADATA;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    presignd::registry::migrate(&pool).await.unwrap();
    presignd::registry::signers::upsert(&pool, "default", "garage")
        .await
        .unwrap();
    let key_id = "ASIAIOSFODNN7EXAMPLE";
    let master = presignd::seal::MasterKey::parse(master_key_hex()).unwrap();
    let sealed = master.seal(key_id, b"not-a-real-secret");
    presignd::registry::keys::insert(&pool, key_id, "default", KeyState::Active, &sealed)
        .await
        .unwrap();
    let app = spawn_app_with(test_config(&[]), (*pool.connect_options()).clone()).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let response = HealthClient::new(app.channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health answers");
        let reason = response
            .metadata()
            .get(NOT_READY_METADATA)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert_eq!(
            response.into_inner().status,
            tonic_health::ServingStatus::NotServing as i32,
            "presignd must not serve with a session key"
        );
        if reason.contains(key_id) && reason.contains("temporary STS session key") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reason does not name the session key: {reason}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
