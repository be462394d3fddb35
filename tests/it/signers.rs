//! Revocation domains: two callers on two signers. Revoking one signer's key
//! kills exactly its callers' links (Garage 403) and leaves the other's working
//! (200); the blast radius counts only the revoked signer's links.

use crate::helpers::*;
use presignd::proto::{
    self, Method, PlanRevocationRequest, RevocationState, RotateKeyRequest, RotationMode,
    link_service_client::LinkServiceClient, plan_revocation_request::Target,
};
use reqwest::StatusCode;
use sqlx::PgPool;

pub const POLICY: &str = r#"
[callers.it-caller]
role = "admin"
signer = "default"
buckets = ["*"]
methods = ["*"]

[callers.it-caller-b]
signer = "other"
buckets = ["*"]
methods = ["GET", "HEAD"]
"#;

#[sqlx::test]
async fn revoking_one_signer_leaves_the_other_callers_links_working(pool: PgPool) {
    let (config, _) = policy_config(POLICY, &["--signers=default,other"]);
    let mut app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let bucket = buckets()[0].clone();
    let (obj, _) = put_sample(&mut app, &bucket).await;

    let mut mine = Vec::new();
    for _ in 0..3 {
        mine.push(
            app.issue(link_request(&bucket, &obj, Method::Get, 600))
                .await
                .unwrap(),
        );
    }
    let mut as_b = LinkServiceClient::with_interceptor(app.channel.clone(), with_token_b as Auth);
    let mut theirs = Vec::new();
    for _ in 0..4 {
        theirs.push(
            as_b.issue_link(link_request(&bucket, &obj, Method::Get, 600))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    assert!(
        theirs
            .iter()
            .all(|l| l.link.as_ref().unwrap().signer == "other")
    );
    assert!(
        mine.iter()
            .all(|l| l.link.as_ref().unwrap().signer == "default")
    );
    for l in mine.iter().chain(&theirs) {
        assert_eq!(try_link(&app.http, l).await, StatusCode::OK);
    }

    let plan = app
        .keys
        .plan_revocation(PlanRevocationRequest {
            target: Some(Target::Signer("other".into())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.outstanding_links, 4, "only signer other's links");
    assert_eq!(
        plan.top_callers
            .iter()
            .map(|c| (c.name.as_str(), c.count))
            .collect::<Vec<_>>(),
        [(CALLER_B, 4)]
    );
    let report = app
        .rotate(RotateKeyRequest {
            signer: "other".into(),
            mode: RotationMode::Revoke as i32,
            reason: "caller b's key leaked".into(),
            expected_key_id: plan.key_id.clone(),
            dry_run: false,
            detach: false,
            quarantine_link_ids: Vec::new(),
        })
        .await;
    assert_eq!(
        report.state,
        RevocationState::Succeeded as i32,
        "{report:?}"
    );
    assert_eq!(report.links_revoked, 4);

    for l in &theirs {
        assert_eq!(
            try_link(&app.http, l).await,
            StatusCode::FORBIDDEN,
            "revoked"
        );
    }
    for l in &mine {
        assert_eq!(
            try_link(&app.http, l).await,
            StatusCode::OK,
            "other domain untouched"
        );
    }
    // Both callers keep issuing, each on its own signer.
    let after = as_b
        .issue_link(link_request(&bucket, &obj, Method::Get, 60))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.link.as_ref().unwrap().key_id, report.new_key_id);
    assert_eq!(try_link(&app.http, &after).await, StatusCode::OK);
    let keys = app
        .keys
        .list_signing_keys(proto::ListSigningKeysRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys.signers.len(), 2);
}

#[test]
fn a_policy_naming_a_signer_outside_signers_does_not_start() {
    let (config, _) = policy_config(POLICY, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt
        .block_on(presignd::app::App::build_with_db(
            config,
            "postgres://nobody@127.0.0.1/none".parse().unwrap(),
        ))
        .err()
        .expect("refused");
    let e = format!("{err:#}");
    assert!(
        e.contains("signer: other is not one of the configured signers"),
        "{e}"
    );
}
