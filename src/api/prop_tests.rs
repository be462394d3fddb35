//! Property: whatever an IssueLink request holds, the validation the handler
//! runs (`request::link_request`) and then the policy check never panic, and
//! every refusal names the field or the rule. What the policy grants lies
//! inside the caller's rules.

use super::request;
use crate::domain::CallerName;
use crate::policy::{Policy, Settings, key_has_dot_segment};
use proptest::prelude::*;

const FIELDS: [&str; 8] = [
    "bucket:",
    "object_key:",
    "method:",
    "ttl:",
    "labels:",
    "content_type:",
    "response_content_disposition:",
    "request_id:",
];

fn policy() -> &'static Policy {
    static POLICY: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
    POLICY.get_or_init(parse_policy)
}

fn parse_policy() -> Policy {
    let settings = Settings {
        signers: vec![
            crate::domain::SignerName::parse("default").unwrap(),
            crate::domain::SignerName::parse("team-a").unwrap(),
        ],
        admins: vec![],
        default_rate: None,
    };
    Policy::parse(
        r#"
        [callers.svc]
        signer = "team-a"
        buckets = ["uploads", "reports"]
        prefixes = ["team-a/", "shared/x"]
        methods = ["GET", "HEAD"]
        max_ttl_secs = 3600
        "#,
        settings,
    )
    .unwrap()
}

/// The request generator, shared with the integration test that sends its
/// requests through a real server (tests/it/prop_issue.rs).
mod strategy {
    use crate::proto;
    include!("request_strategy.rs");
}
use strategy::request;

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn validation_then_policy_never_panics_and_names_what_refused(req in request()) {
        let policy = policy();
        let caller = CallerName::parse("svc").unwrap();
        match request::link_request(&req) {
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(FIELDS.iter().any(|f| msg.starts_with(f)), "{msg}");
            }
            Ok((spec, _, _)) => match policy.authorize_issue(&caller, &spec) {
                Err(denied) => {
                    let msg = denied.to_string();
                    prop_assert!(msg.starts_with("policy: caller svc may not"), "{msg}");
                }
                Ok(grant) => {
                    prop_assert_eq!(grant.signer.as_str(), "team-a");
                    prop_assert!(["uploads", "reports"].contains(&spec.bucket.as_str()));
                    let key = spec.object_key.as_str();
                    prop_assert!(key.starts_with("team-a/") || key.starts_with("shared/x"), "{key}");
                    prop_assert!(!key_has_dot_segment(key), "{key}");
                    prop_assert!(spec.ttl.as_secs() <= 3600);
                    prop_assert!(matches!(spec.method, crate::domain::Method::Get | crate::domain::Method::Head));
                }
            },
        }
    }

    #[test]
    fn a_caller_without_a_policy_entry_is_always_denied(req in request()) {
        if let Ok((spec, _, _)) = request::link_request(&req) {
            let e = policy().authorize_issue(&CallerName::parse("stranger").unwrap(), &spec).unwrap_err();
            prop_assert!(e.to_string().starts_with("policy: caller stranger has no entry"));
        }
    }
}

#[test]
fn the_generator_reaches_every_outcome() {
    // Not vacuous: a fair share of generated requests pass validation and the
    // policy, and a fair share is refused by each.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let caller = CallerName::parse("svc").unwrap();
    let (mut invalid, mut denied, mut granted) = (0, 0, 0);
    let mut fields = std::collections::BTreeMap::new();
    for _ in 0..2000 {
        let req = request().new_tree(&mut runner).unwrap().current();
        match request::link_request(&req) {
            Err(e) => {
                invalid += 1;
                *fields.entry(e.field).or_insert(0) += 1;
            }
            Ok((spec, _, _)) => match policy().authorize_issue(&caller, &spec) {
                Err(_) => denied += 1,
                Ok(_) => granted += 1,
            },
        }
    }
    assert!(
        invalid > 200 && denied > 200 && granted > 50,
        "{invalid} invalid ({fields:?}), {denied} denied, {granted} granted"
    );
}
