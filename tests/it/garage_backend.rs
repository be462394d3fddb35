//! The garage backend against the dev Garage holding more keys than one
//! ListKeys answers (its first 10,000, by id). Reconciliation asks
//! `find_created` for the keys created under a key intent's name: one it
//! misses stays live and unknown to the registry (invariant 6).
//!
//! Why padding: Garage is shared and keeps every key tests create, so a dev
//! machine holds thousands and CI's fresh one a few. The test first makes it
//! hold over 10,000 (creating only the missing ones and a margin, named
//! `presignd-test-padding-*`; they stay, so later runs create none), then
//! imports its key with an id sorting after every created one (Garage's ids
//! are `GK` and hex): past ListKeys' first page wherever the ids fall.

use crate::helpers::*;
use presignd::backend::KeyBackend;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tokio::task::JoinSet;

/// How many keys one ListKeys answers at most (Garage's default limit).
const LIST_KEYS_CAP: usize = 10_000;
/// Keys held past the cap: other tests delete some of theirs meanwhile.
const MARGIN: usize = 100;

/// The ids ListKeys answers, as one call without paging does.
async fn list_keys() -> BTreeSet<String> {
    let keys = garage_admin("ListKeys", &[], None).await;
    keys.as_array()
        .expect("ListKeys answers an array")
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Creates keys until Garage holds more than ListKeys answers, 16 at a time.
async fn pad_past_list_keys_cap() {
    let listed = list_keys().await.len();
    if listed >= LIST_KEYS_CAP {
        return;
    }
    let missing = LIST_KEYS_CAP - listed + MARGIN;
    let started = Instant::now();
    let left = Arc::new(AtomicUsize::new(missing));
    let http = reqwest::Client::new();
    let url = format!("{}/v2/CreateKey", env("GARAGE_ADMIN_URL"));
    let token = env("GARAGE_ADMIN_TOKEN");
    let mut workers = JoinSet::new();
    for _ in 0..16 {
        let (left, http, url, token) = (left.clone(), http.clone(), url.clone(), token.clone());
        workers.spawn(async move {
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let name = format!("presignd-test-padding-{}", uuid::Uuid::now_v7());
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({ "name": name }))
                    .send()
                    .await
                    .expect("Garage's admin API answers");
                assert!(r.status().is_success(), "garage CreateKey: {}", r.status());
            }
        });
    }
    while let Some(worker) = workers.join_next().await {
        worker.unwrap();
    }
    eprintln!(
        "padding: {missing} keys created in {:?} (Garage listed {listed})",
        started.elapsed()
    );
}

/// Imports a key named `name` whose id sorts after every id Garage makes.
async fn import_key_sorting_last(name: &str) -> String {
    let id = format!("GKzz{:032x}", rand::random::<u128>());
    let secret = format!("{:064x}", rand::random::<u128>());
    let body = json!({ "accessKeyId": id, "secretAccessKey": secret, "name": name });
    garage_admin("ImportKey", &[], Some(body)).await;
    id
}

#[tokio::test]
async fn find_created_finds_keys_by_name_past_the_10000_keys_list_keys_answers() {
    pad_past_list_keys_cap().await;
    let signer = format!(
        "garage-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let name = format!("presignd-{signer}-{}", uuid::Uuid::now_v7());
    let unused = format!("presignd-{signer}-{}", uuid::Uuid::now_v7());
    let past = import_key_sorting_last(&name).await;
    let listed = list_keys().await;
    assert_eq!(
        listed.len(),
        LIST_KEYS_CAP,
        "Garage holds more than ListKeys answers"
    );
    assert!(
        !listed.contains(&past),
        "the key is past ListKeys' answer (a ListKeys-based search misses it)"
    );

    let backend = garage_backend();
    let since = chrono::Utc::now() - chrono::Duration::minutes(1);
    let found = backend
        .find_created(&signer, &[name.clone(), unused.clone()], since)
        .await
        .unwrap();
    assert_eq!(
        found,
        vec![past.clone()],
        "found by its name; none for a name without a key"
    );
    let found = backend
        .find_created(&signer, &[unused], since)
        .await
        .unwrap();
    assert!(found.is_empty(), "{found:?}");

    // A retried creation: two keys under one name. Garage's search refuses
    // to pick one (400 "2 matching keys"); both are found all the same.
    let again = garage_admin("CreateKey", &[], Some(json!({ "name": name }))).await;
    let again = again["accessKeyId"].as_str().unwrap().to_owned();
    let found: BTreeSet<_> = backend
        .find_created(&signer, std::slice::from_ref(&name), since)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(found, BTreeSet::from([past.clone(), again.clone()]));

    for id in [past, again] {
        backend.delete_key(&signer, &id).await.unwrap();
    }
}
