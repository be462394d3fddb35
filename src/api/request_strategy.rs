// IssueLink request generators for property tests, `include!`d by
// src/api/prop_tests.rs and tests/it/prop_issue.rs (each brings `proto` into
// scope). Strings aim at the interesting shapes: allowed prefixes and near
// misses, dot segments and their escapes, control characters, unicode, the
// length limits.

use proptest::prelude::*;
use std::collections::HashMap;

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "team-a/[a-z]{1,6}(/(\\.\\.|\\.|%2e%2e|%2E|[a-z.]{1,4})){0,2}",
        4 => "(team-a|team-b|team-a-evil|shared|Team-A)?(/|\\\\)?(\\.\\.|\\.|%2e%2e|%2E|x|\\.x)?(/[a-z.]{0,4}){0,3}",
        1 => ".{0,40}",
        1 => "[\\x00-\\x1f]{0,3}[a-z/]{0,5}",
        1 => (1020usize..1030).prop_map(|n| format!("team-a/{}", "k".repeat(n - 7))),
    ]
}

fn bucket() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => Just("uploads".to_owned()),
        4 => Just("reports".to_owned()),
        1 => Just("other-bucket".to_owned()),
        1 => "[a-z0-9.-]{0,70}",
        1 => ".{0,10}",
    ]
}

fn ttl() -> impl Strategy<Value = Option<prost_types::Duration>> {
    let seconds = prop_oneof![
        14 => 1i64..=3600,
        1 => 3601i64..=604_800,
        1 => -10i64..=0,
        1 => 604_801i64..=i64::MAX,
    ];
    let nanos = prop_oneof![30 => Just(0i32), 1 => -5i32..5, 1 => Just(i32::MAX)];
    proptest::option::weighted(0.97, (seconds, nanos))
        .prop_map(|t| t.map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }))
}

fn labels() -> impl Strategy<Value = HashMap<String, String>> {
    prop_oneof![
        12 => Just(HashMap::new()),
        3 => proptest::collection::hash_map("[a-z0-9_.-]{1,10}", "[ -~]{0,20}", 0..4),
        1 => proptest::collection::hash_map(".{0,70}", ".{0,300}", 0..20),
    ]
}

fn optional_text() -> impl Strategy<Value = String> {
    prop_oneof![
        20 => Just(String::new()),
        1 => "[a-z]{1,8}/[a-z0-9+.-]{1,10}",
        1 => ".{0,40}",
    ]
}

prop_compose! {
    pub fn request()(
        bucket in bucket(),
        object_key in key(),
        method in prop_oneof![20 => 1i32..=4, 1 => -2i32..=0, 1 => 5i32..=i32::MAX],
        ttl in ttl(),
        labels in labels(),
        content_type in optional_text(),
        disposition in prop_oneof![20 => Just(String::new()), 1 => Just("attachment; filename=\"a.pdf\"".to_owned()), 1 => ".{0,40}"],
        request_id in prop_oneof![20 => Just(String::new()), 4 => "[A-Za-z0-9._:-]{1,128}", 1 => ".{0,140}"],
    ) -> proto::IssueLinkRequest {
        proto::IssueLinkRequest {
            bucket, object_key, method,
            ttl,
            labels,
            content_type,
            response_content_disposition: disposition,
            request_id,
        }
    }
}

