//! Invariant 8: landed migrations never change (a manifest of their SHA-256,
//! migrations/SHA256SUMS, in `sha256sum` format), and a registry holding data
//! from the first migration on upgrades to the last with every row, derived
//! state, lookup and summary intact.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use presignd::auth::Caller;
use presignd::dashboard::Dashboard;
use presignd::domain::{CallerName, LinkState, PresignedUrl};
use presignd::paging::PageTokens;
use presignd::registry::link_queries::{self, LinkFilter};
use presignd::registry::link_summary::{self, GroupBy};
use presignd::registry::partitions::{self, Table};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::collections::BTreeMap;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");

#[test]
fn every_migration_matches_the_manifest_of_landed_migrations() {
    let manifest = std::fs::read_to_string(format!("{DIR}/SHA256SUMS"))
        .expect("migrations/SHA256SUMS exists (`cd migrations && sha256sum *.sql > SHA256SUMS`)");
    let mut listed: BTreeMap<String, String> = manifest
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (hash, name) = l
                .split_once("  ")
                .unwrap_or_else(|| panic!("SHA256SUMS: {l:?} is not `<sha256 hex>  <file>`"));
            (name.to_owned(), hash.to_owned())
        })
        .collect();
    let mut files: Vec<String> = std::fs::read_dir(DIR)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    files.sort();
    let mut problems = Vec::new();
    for name in &files {
        let digest = hex::encode(Sha256::digest(
            std::fs::read(format!("{DIR}/{name}")).unwrap(),
        ));
        match listed.remove(name) {
            None => problems.push(format!(
                "{name} is not in migrations/SHA256SUMS. A new migration lands with its hash: \
                 `cd migrations && sha256sum {name} >> SHA256SUMS` (and never changes after)."
            )),
            Some(hash) if hash != digest => problems.push(format!(
                "{name} changed since it landed (SHA256SUMS: {hash}, now: {digest}). Landed \
                 migrations never change: restore it (`git checkout main -- migrations/{name}`) \
                 and put the change in a new migration."
            )),
            Some(_) => {}
        }
    }
    for name in listed.keys() {
        problems.push(format!(
            "{name} is in migrations/SHA256SUMS but missing. A landed migration is never \
             removed (registries already ran it): restore it."
        ));
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));

    // sqlx embeds exactly these files (it skips SHA256SUMS: no `<n>_` name).
    let embedded: Vec<i64> = presignd::registry::MIGRATOR
        .iter()
        .map(|m| m.version)
        .collect();
    let on_disk: Vec<i64> = files
        .iter()
        .map(|n| n.split('_').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(embedded, on_disk);
}

/// Runs the migrations up to `version` (inclusive).
async fn migrate_to(pool: &PgPool, version: i64) {
    presignd::registry::MIGRATOR
        .run_to(version, pool)
        .await
        .unwrap_or_else(|e| panic!("migrating to {version}: {e}"));
}

/// Every row of `table`, as JSON text of the columns it had when first
/// written, in primary key order.
async fn rows(pool: &PgPool, query: &'static str) -> Vec<String> {
    sqlx::query_scalar(query).fetch_all(pool).await.unwrap()
}

const SIGNERS: &str = "SELECT row_to_json(t)::text FROM (SELECT name, backend, paused, created_at FROM signers ORDER BY name) t";
const KEYS: &str = "SELECT row_to_json(t)::text FROM (SELECT key_id, signer, state, sealed_secret, created_at, activated_at, retired_at, deactivated_at, deleted_at, revocation_id FROM signing_keys ORDER BY key_id) t";
const LINKS: &str = "SELECT row_to_json(t)::text FROM (SELECT id, key_id, signer, caller, method, bucket, object_key, labels, issued_at, expires_at, signature_sha256, revocation_id FROM links ORDER BY id) t";
const REVOCATIONS: &str = "SELECT row_to_json(t)::text FROM (SELECT id, signer, mode, requested_by, reason, old_key_id, new_key_id, state, next_step, blast_radius, links_revoked, steps, error, created_at, finished_at FROM revocations ORDER BY id) t";
const AUDIT: &str = "SELECT row_to_json(t)::text FROM (SELECT id, at, caller, peer, rpc, target, code, message FROM audit_events ORDER BY id) t";

const REVOCATION: &str = "0198c0de-0000-7000-8000-000000000001";

/// The URL LookupLink is asked about: link 12's, signed at `at`.
fn url_of_link_12(at: DateTime<Utc>) -> String {
    format!(
        "http://127.0.0.1:3900/photos/users/1/lookup.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256\
         &X-Amz-Credential=GKALPHA1%2F{}%2Fgarage%2Fs3%2Faws4_request&X-Amz-Date={}\
         &X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature={}",
        at.format("%Y%m%d"),
        at.format("%Y%m%dT%H%M%SZ"),
        "ab".repeat(32)
    )
}

#[sqlx::test(migrations = false)]
async fn a_registry_with_data_from_the_first_migration_upgrades_to_the_last_intact(pool: PgPool) {
    // 0001: signers, keys in every state it knew, links in every state.
    migrate_to(&pool, 1).await;
    sqlx::raw_sql(
        "INSERT INTO signers (name, backend) VALUES ('alpha', 'garage'), ('beta', 'garage');
         INSERT INTO signing_keys (key_id, signer, state, sealed_secret, activated_at) VALUES
             ('GKALPHA1', 'alpha', 'active', '\\x01', now()),
             ('GKALPHA0', 'alpha', 'inactive', '\\x02', now()),
             ('GKBETA1', 'beta', 'retired', '\\x03', now()),
             ('GKBETA2', 'beta', 'active', '\\x04', now()),
             ('GKBETA0', 'beta', 'deleted', '\\x05', now());
         INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key, labels,
                            issued_at, expires_at, signature_sha256)
         SELECT ('00000000-0000-7000-8000-0000000000' || lpad(n::text, 2, '0'))::uuid,
                key_id, signer, caller, method, bucket, object_key, '{\"team\": \"a\"}',
                date_trunc('second', now()) - n * interval '10 minutes',
                date_trunc('second', now()) + expires_in,
                sha256(n::text::bytea)
         FROM (VALUES
             (1, 'GKALPHA1', 'alpha', 'svc-a', 'GET', 'photos', 'users/1/a.jpg', interval '1 hour'),
             (2, 'GKALPHA1', 'alpha', 'svc-a', 'PUT', 'photos', 'users/1/b.jpg', interval '2 hours'),
             (3, 'GKALPHA1', 'alpha', 'svc-b', 'GET', 'docs', 'users/2/c.pdf', interval '-5 minutes'),
             (5, 'GKALPHA0', 'alpha', 'svc-a', 'GET', 'photos', 'users/1/d.jpg', interval '4 hours'),
             (7, 'GKBETA1', 'beta', 'svc-c', 'DELETE', 'docs', 'reportXaXx.pdf', interval '5 hours'),
             (8, 'GKBETA1', 'beta', 'svc-c', 'GET', 'docs', 'users/3/f.txt', interval '-70 minutes'),
             (10, 'GKBETA0', 'beta', 'svc-b', 'PUT', 'docs', 'users/2/h.pdf', interval '7 hours'),
             (11, 'GKBETA2', 'beta', 'svc-a', 'GET', 'archive', 'users/1/i.zip', interval '30 minutes')
         ) AS t (n, key_id, signer, caller, method, bucket, object_key, expires_in);",
    )
    .execute(&pool)
    .await
    .expect("0001's data");
    let signed_at = Utc::now().trunc_subsecs(0) - Duration::minutes(3);
    let url = PresignedUrl::parse(&url_of_link_12(signed_at)).unwrap();
    sqlx::query(
        "INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key,
                            issued_at, expires_at, signature_sha256)
         VALUES ('00000000-0000-7000-8000-000000000012', 'GKALPHA1', 'alpha', 'svc-a', 'GET',
                 'photos', 'users/1/lookup.jpg', $1, $1 + interval '1 hour', $2)",
    )
    .bind(signed_at)
    .bind(url.signature_sha256().to_vec())
    .execute(&pool)
    .await
    .expect("the looked-up link");

    // 0002: a revocation that deactivated a key and marked a link, a pending key.
    migrate_to(&pool, 2).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO revocations (id, signer, mode, requested_by, reason, old_key_id,
                                  new_key_id, state, next_step, blast_radius, links_revoked,
                                  steps, finished_at)
         VALUES ('{REVOCATION}', 'beta', 'revoke', 'ops', 'upgrade test', 'GKBETA1', 'GKBETA2',
                 'succeeded', 'done', '{{\"count\": 2}}', 2,
                 '[{{\"name\": \"create_key\"}}]', now());
         INSERT INTO signing_keys (key_id, signer, state, sealed_secret)
             VALUES ('GKBETA3', 'beta', 'pending', '\\x06');
         UPDATE signing_keys SET revocation_id = '{REVOCATION}' WHERE key_id = 'GKALPHA0';
         INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key,
                            issued_at, expires_at, signature_sha256, revocation_id)
         VALUES ('00000000-0000-7000-8000-000000000009', 'GKBETA2', 'beta', 'svc-c', 'GET',
                 'photos', 'users/3/g.txt', date_trunc('second', now()) - interval '90 minutes',
                 date_trunc('second', now()) + interval '6 hours', sha256('9'::bytea),
                 '{REVOCATION}');"
    )))
    .execute(&pool)
    .await
    .expect("0002's data");

    // 0003 (indexes, the 7-day CHECK the rows above respect), then 0004: audit.
    migrate_to(&pool, 4).await;
    sqlx::raw_sql(
        "INSERT INTO audit_events (id, at, caller, peer, rpc, target, code, message) VALUES
             ('0198c0de-0000-7000-8000-0000000000a1', now(), 'ops', '10.0.0.1:5000',
              'presignd.v1.KeyService/RotateKey', 'signer=beta', 'OK', ''),
             ('0198c0de-0000-7000-8000-0000000000a2', now(), NULL, NULL,
              'presignd.v1.LinkService/IssueLink', '', 'UNAUTHENTICATED', 'unknown token');",
    )
    .execute(&pool)
    .await
    .expect("0004's data");

    // 0008 (0009 adds an empty table), before the partitioned layout (0010, 0011): an
    // aggregated denial (0007), a link expiring in six days, a folded roll-up.
    migrate_to(&pool, 8).await;
    sqlx::raw_sql(
        "INSERT INTO audit_events (id, at, caller, peer, rpc, target, code, message, count)
         VALUES ('0198c0de-0000-7000-8000-0000000000a3', now(), 'svc-x', '10.0.0.2:6000',
                 'presignd.v1.LinkService/IssueLink', '', 'PERMISSION_DENIED', 'bucket', 3);
         INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key,
                            issued_at, expires_at, signature_sha256)
         VALUES ('00000000-0000-7000-8000-000000000013', 'GKBETA2', 'beta', 'svc-a', 'PUT',
                 'archive', 'users/1/j.zip', date_trunc('second', now()) - interval '1 day',
                 date_trunc('second', now()) + interval '6 days', sha256('13'::bytea));",
    )
    .execute(&pool)
    .await
    .expect("0008's data");
    // The deltas moved into the roll-up's cells, as a fold of then did (today's
    // fold needs today's columns; the settled cells are left unmerged).
    sqlx::raw_sql(
        "WITH moved AS (DELETE FROM link_rollup_delta RETURNING *)
         INSERT INTO link_rollup AS t
         SELECT key_id, signer, bucket, caller, expires_hour, marked, sum(links), max(latest)
         FROM moved GROUP BY 1, 2, 3, 4, 5, 6
         ON CONFLICT (key_id, signer, bucket, caller, expires_hour, marked)
         DO UPDATE SET links = t.links + EXCLUDED.links,
                       latest = greatest(t.latest, EXCLUDED.latest)",
    )
    .execute(&pool)
    .await
    .expect("the fold ran");

    let before = [
        rows(&pool, SIGNERS).await,
        rows(&pool, KEYS).await,
        rows(&pool, LINKS).await,
        rows(&pool, REVOCATIONS).await,
        rows(&pool, AUDIT).await,
    ];
    assert_eq!(
        before.iter().map(Vec::len).collect::<Vec<_>>(),
        [2, 6, 11, 1, 3]
    );

    presignd::registry::migrate(&pool)
        .await
        .expect("to the last migration");
    let id = |n: u8| format!("00000000-0000-7000-8000-0000000000{n:02}");

    let after = [
        rows(&pool, SIGNERS).await,
        rows(&pool, KEYS).await,
        rows(&pool, LINKS).await,
        rows(&pool, REVOCATIONS).await,
        rows(&pool, AUDIT).await,
    ];
    assert_eq!(before, after, "every row is intact");
    // 0021: links_by_issued is ascending (listings scan it backwards), on the
    // parent and on every partition that holds the upgraded links.
    let definitions: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.indrelid::regclass::text, pg_get_indexdef(i.indexrelid)
         FROM pg_index i
         WHERE i.indexrelid = 'links_by_issued'::regclass
            OR i.indexrelid IN (SELECT inhrelid FROM pg_inherits
                                WHERE inhparent = 'links_by_issued'::regclass)
         ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let partitions = partitions::list(&mut pool.acquire().await.unwrap(), Table::Links)
        .await
        .unwrap();
    assert!(partitions.len() > 1, "the links span several partitions");
    assert_eq!(definitions.len(), partitions.len() + 1, "{definitions:?}");
    for (table, definition) in &definitions {
        assert!(
            definition.ends_with("USING btree (issued_at, id, expires_at)"),
            "{table}: {definition}"
        );
    }
    // The indexes every insert into links maintains, and the two partial ones:
    // 0022 dropped links_by_expiry, 0023 links_by_signer_issued (a signer's
    // page walks its keys' index); on every partition too.
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexrelid::regclass::text FROM pg_index
         WHERE indrelid = 'links'::regclass ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        [
            "links_by_bucket_issued",
            "links_by_caller_issued",
            "links_by_issued",
            "links_by_key_expiry",
            "links_by_key_issued",
            "links_by_object_key",
            "links_marked_by_revocation",
            "links_one_replacement",
            "links_pkey",
        ]
    );
    let per_partition: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM pg_inherits p JOIN pg_index i ON i.indrelid = p.inhrelid
         WHERE p.inhparent = 'links'::regclass GROUP BY p.inhrelid",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(per_partition, vec![indexes.len() as i64; partitions.len()]);
    // 0012: links recorded before it kept no bound headers (ReissueLinks
    // skips them); revocations before it quarantined nothing.
    let (recorded, quarantined): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM links WHERE headers_recorded),
                (SELECT count(*) FROM revocations WHERE quarantined_link_ids <> '{}')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((recorded, quarantined), (0, 0));
    let counts: Vec<i64> = sqlx::query_scalar("SELECT count FROM audit_events ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        counts,
        [1, 1, 3],
        "older audit rows stand for one request each"
    );

    // The partitioned layout: every row kept in place, in the partition that
    // was the table (no rewrite), each link found by id; the days ahead ready.
    for (parent, legacy, n) in [
        ("links", "links_before_", 11),
        ("audit_events", "audit_events_before_", 3),
    ] {
        let kind: String =
            sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE relname = $1")
                .bind(parent)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(kind, "p", "{parent} is partitioned");
        let placed: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT tableoid::regclass::text, count(*) FROM {parent} GROUP BY 1"
        )))
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(placed.len(), 1, "{placed:?}");
        assert!(placed[0].0.starts_with(legacy), "{placed:?}");
        assert_eq!(placed[0].1, n);
    }
    for n in [1, 2, 3, 5, 7, 8, 9, 10, 11, 12, 13] {
        let link = presignd::registry::links::get(&pool, id(n).parse().unwrap())
            .await
            .unwrap();
        assert!(link.is_some(), "link {n} by id");
    }
    let refused = sqlx::query("DELETE FROM audit_events")
        .execute(&pool)
        .await
        .expect_err("the upgraded trail is append-only");
    assert!(refused.to_string().contains("append-only"), "{refused}");
    let created = presignd::lifecycle::prepare(&pool, Utc::now())
        .await
        .unwrap();
    assert!(
        created.created.is_empty(),
        "the migration made the days ahead: {created:?}"
    );

    // Derived state: each link's, as listings filter and report it.
    for (state, expected) in [
        (LinkState::Active, vec![12, 1, 2, 7, 11, 13]),
        (LinkState::Expired, vec![3, 8]),
        (LinkState::Revoked, vec![5, 9, 10]),
    ] {
        let filter = LinkFilter {
            state: Some(state),
            ..Default::default()
        };
        let listed = link_queries::list_page(&pool, &filter, None, 100)
            .await
            .unwrap();
        let listed: Vec<String> = listed.iter().map(|l| l.id.to_string()).collect();
        let expected: Vec<String> = expected.into_iter().map(id).collect();
        assert_eq!(listed, expected, "{state:?} links, newest first");
    }

    // LookupLink by signature, through the dashboard as an admin.
    let dashboard = Dashboard {
        pool: pool.clone(),
        replica: pool.clone(),
        tokens: PageTokens::new(&presignd::seal::MasterKey::generate()),
        reads: presignd::ratelimit::ReadLimits::new(None),
    };
    let admin = Caller {
        name: CallerName::parse("ops").unwrap(),
        admin: true,
    };
    let found = dashboard
        .lookup(&admin, &url)
        .await
        .expect("LookupLink finds link 12");
    assert_eq!(found.link.id.to_string(), id(12));
    assert_eq!(found.link.issued_at, signed_at);

    // Summaries: the roll-up (0005) counts the links that predate it, as a
    // pass over the links does, for every group, state and filter.
    crate::link_rollup::assert_rollup_equals_scan(&pool, "after the upgrade").await;
    for group_by in [
        GroupBy::Key,
        GroupBy::Signer,
        GroupBy::Bucket,
        GroupBy::Caller,
    ] {
        let filter = LinkFilter::default();
        let rollup = link_summary::summarize(&pool, &filter, group_by)
            .await
            .unwrap();
        let scan = link_summary::summarize_scan(&pool, &filter, group_by)
            .await
            .unwrap();
        assert_eq!(rollup, scan, "{group_by:?}");
        let totals = rollup.iter().fold((0, 0, 0), |t, r| {
            (t.0 + r.active, t.1 + r.expired, t.2 + r.revoked)
        });
        assert_eq!(totals, (6, 2, 3), "{group_by:?}");
    }

    // 0013: request ids start empty, and a retry's look-up works on the
    // upgraded registry.
    let named: i64 = sqlx::query_scalar("SELECT count(*) FROM link_requests")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(named, 0);
    let none = presignd::registry::link_requests::find(&pool, "svc-a", "r-1")
        .await
        .unwrap();
    assert!(none.is_none());
    let link = presignd::registry::links::NewLink {
        object_key: "users/1/retried.jpg".into(),
        request: Some(presignd::registry::links::LinkRequest {
            id: "r-1".into(),
            sha256: [9; 32],
        }),
        ..crate::helpers::new_link("GKALPHA1", "alpha", "svc-a")
    };
    let written = presignd::registry::links::record(&pool, &["GKALPHA1"], &[&link])
        .await
        .unwrap();
    assert_eq!(written.active_keys, ["GKALPHA1"]);
    assert_eq!(written.claimed, [link.id]);
    let found = presignd::registry::link_requests::find(&pool, "svc-a", "r-1")
        .await
        .unwrap()
        .expect("the id names its link");
    assert_eq!(found.link.id, link.id);
    assert_eq!(found.request_sha256, [9; 32]);
}

/// 0019 records, for every key that no longer signs, the range of issued_at
/// its links were signed in (signing_keys.signed_from, signed_until) from the
/// links a registry already holds: exactly their oldest and newest, an empty
/// range for a stopped key with no link, nothing for a key that may still
/// sign. ListLinks by such a key's id then reads only that range, and still
/// lists every one of its links.
#[sqlx::test(migrations = false)]
async fn an_upgrade_records_each_stopped_keys_window_from_its_links(pool: PgPool) {
    migrate_to(&pool, 18).await;
    sqlx::raw_sql(
        "INSERT INTO signers (name, backend) VALUES ('alpha', 'garage'), ('beta', 'garage');
         INSERT INTO signing_keys (key_id, signer, state, sealed_secret, activated_at) VALUES
             ('GKactive', 'alpha', 'active', '\\x01', now()),
             ('GKretired', 'alpha', 'retired', '\\x02', now()),
             ('GKinactive', 'beta', 'inactive', '\\x03', now()),
             ('GKdeleted', 'beta', 'deleted', '\\x04', now()),
             ('GKunused', 'beta', 'deleted', '\\x05', NULL),
             ('GKpending', 'beta', 'pending', '\\x06', NULL);
         INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key,
                            issued_at, expires_at, signature_sha256)
         SELECT gen_random_uuid(), k, CASE WHEN k IN ('GKactive', 'GKretired') THEN 'alpha' ELSE 'beta' END,
                'svc', 'GET', 'b', 'o/' || i, date_trunc('second', now()) - i * interval '97 minutes',
                date_trunc('second', now()) - i * interval '97 minutes' + interval '1 day',
                sha256(i::text::bytea)
         FROM generate_series(0, 79) i,
              LATERAL (SELECT (ARRAY['GKactive', 'GKretired', 'GKinactive', 'GKdeleted'])[1 + i % 4] AS k) k;",
    )
    .execute(&pool)
    .await
    .unwrap();
    presignd::registry::migrate(&pool).await.unwrap();

    type Window = (String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    let recorded: Vec<Window> = sqlx::query_as(
        "SELECT key_id, signed_from, signed_until FROM signing_keys
         WHERE key_id IN ('GKretired', 'GKinactive', 'GKdeleted') ORDER BY key_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let actual: Vec<Window> = sqlx::query_as(
        "SELECT key_id, min(issued_at), max(issued_at) FROM links
         WHERE key_id IN ('GKretired', 'GKinactive', 'GKdeleted') GROUP BY key_id ORDER BY key_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(recorded, actual);
    assert_eq!(recorded.len(), 3);
    let others: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT key_id, signed_until IS NULL,
                coalesce(signed_from = 'infinity' AND signed_until = '-infinity', false)
         FROM signing_keys WHERE key_id IN ('GKactive', 'GKunused', 'GKpending') ORDER BY key_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        others,
        [
            ("GKactive".to_owned(), true, false),
            ("GKpending".to_owned(), true, false),
            ("GKunused".to_owned(), false, true),
        ]
    );

    for key in [
        "GKretired",
        "GKinactive",
        "GKdeleted",
        "GKactive",
        "GKunused",
    ] {
        let expected: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM links WHERE key_id = $1 ORDER BY issued_at DESC, id DESC",
        )
        .bind(key)
        .fetch_all(&pool)
        .await
        .unwrap();
        let filter = LinkFilter {
            key_id: Some(key.into()),
            ..LinkFilter::default()
        };
        let listed: Vec<uuid::Uuid> = link_queries::list_page(&pool, &filter, None, 100)
            .await
            .unwrap()
            .iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(listed, expected, "{key}");
    }
}

/// The tables and columns of 0012-0016 (replacements, request ids, upload
/// forms, multipart uploads, revocation events), filled at 0016, through
/// every later migration (0017's `links_record`, the index changes): every
/// row intact, and what each row promised still holds. A request id claimed
/// before the upgrade is not claimed again, a link replaced before it is not
/// replaced twice, the open upload is found and expires, the revocation's
/// event is delivered and the next one comes after it.
#[sqlx::test(migrations = false)]
async fn rows_of_0012_to_0016_upgrade_to_the_last_intact_and_keep_their_promises(pool: PgPool) {
    use presignd::registry::links::{self, LinkRequest};
    use presignd::registry::{link_requests, revocation_events, uploads};

    migrate_to(&pool, 16).await;
    let (killed, replacement, requested, form, part) = (
        "01000000-0000-7000-8000-000000000001",
        "01000000-0000-7000-8000-000000000002",
        "01000000-0000-7000-8000-000000000003",
        "01000000-0000-7000-8000-000000000004",
        "01000000-0000-7000-8000-000000000005",
    );
    let upload = "01000000-0000-7000-8000-0000000000aa";
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        r#"INSERT INTO signers (name, backend) VALUES ('alpha', 'garage');
         INSERT INTO signing_keys (key_id, signer, state, sealed_secret) VALUES
             ('GKold', 'alpha', 'inactive', '\x01'), ('GKnew', 'alpha', 'active', '\x02');
         INSERT INTO revocations (id, signer, mode, requested_by, reason, old_key_id,
                                  new_key_id, state, next_step, blast_radius, links_revoked,
                                  steps, finished_at, quarantined_link_ids)
         VALUES ('{REVOCATION}', 'alpha', 'revoke', 'ops', 'upgrade test', 'GKold', 'GKnew',
                 'succeeded', 'done', '{{"count": 1}}', 1, '[]', now(), '{{{part}}}');
         INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key, labels,
                            issued_at, expires_at, signature_sha256, revocation_id,
                            content_type, headers_recorded, replaces_link_id,
                            object_key_is_prefix)
         SELECT l.id::uuid, l.key_id, 'alpha', 'svc-a', l.method, 'b', l.object_key,
                l.labels::jsonb, date_trunc('second', now()) - interval '1 minute',
                date_trunc('second', now()) + interval '1 hour', sha256(l.id::bytea),
                l.revocation_id::uuid, l.content_type, true, l.replaces::uuid, l.prefix
         FROM (VALUES
             ('{killed}', 'GKold', 'GET', 'a.txt', '{{}}', '{REVOCATION}', NULL, NULL, false),
             ('{replacement}', 'GKnew', 'GET', 'a.txt', '{{}}', NULL, NULL, '{killed}', false),
             ('{requested}', 'GKnew', 'PUT', 'b.txt', '{{}}', NULL, 'text/plain', NULL, false),
             ('{form}', 'GKnew', 'POST', 'uploads/', '{{}}', NULL, NULL, NULL, true),
             ('{part}', 'GKnew', 'PUT', 'big.bin', '{{"presignd.upload": "{upload}"}}', NULL,
              NULL, NULL, false)
         ) l (id, key_id, method, object_key, labels, revocation_id, content_type, replaces,
              prefix);
         INSERT INTO link_requests (caller, request_id, link_id, expires_at, request_sha256)
         SELECT 'svc-a', 'req-1', id, expires_at, sha256('req-1') FROM links
         WHERE id = '{requested}';
         INSERT INTO multipart_uploads (id, upload_id, bucket, object_key, signer, key_id,
                                        caller, part_count, part_size, total_size,
                                        created_at, expires_at)
         VALUES ('{upload}', 'store-upload-1', 'b', 'big.bin', 'alpha', 'GKnew', 'svc-a', 1,
                 5242880, 5242880, now(), now() + interval '1 hour');
         INSERT INTO revocation_events (revocation_id, caller, signer, key_id, links,
                                        quarantined, earliest_expiry)
         VALUES ('{REVOCATION}', 'svc-a', 'alpha', 'GKold', 1, 0, now() + interval '1 hour');"#
    )))
    .execute(&pool)
    .await
    .expect("0016's data");

    const TABLES: [&str; 5] = [
        "SELECT row_to_json(t)::text FROM (SELECT id, key_id, method, object_key, labels, issued_at, expires_at, signature_sha256, revocation_id, content_type, content_disposition, headers_recorded, replaces_link_id, object_key_is_prefix FROM links ORDER BY id) t",
        "SELECT row_to_json(t)::text FROM (SELECT * FROM link_requests ORDER BY caller, request_id) t",
        "SELECT row_to_json(t)::text FROM (SELECT * FROM multipart_uploads ORDER BY id) t",
        "SELECT row_to_json(t)::text FROM (SELECT * FROM revocation_events ORDER BY seq) t",
        "SELECT row_to_json(t)::text FROM (SELECT id, quarantined_link_ids FROM revocations ORDER BY id) t",
    ];
    let mut before = Vec::new();
    for table in TABLES {
        before.push(rows(&pool, table).await);
    }
    assert_eq!(
        before.iter().map(Vec::len).collect::<Vec<_>>(),
        [5, 1, 1, 1, 1]
    );
    presignd::registry::migrate(&pool)
        .await
        .expect("to the last migration");
    let mut after = Vec::new();
    for table in TABLES {
        after.push(rows(&pool, table).await);
    }
    assert_eq!(before, after, "every row is intact");

    let uuid = |s: &str| uuid::Uuid::parse_str(s).unwrap();
    // The states as listed: the dead key's link revoked, the others active.
    let listed: BTreeMap<uuid::Uuid, LinkState> =
        link_queries::list_page(&pool, &LinkFilter::default(), None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|l| (l.id, l.state))
            .collect();
    assert_eq!(
        listed,
        BTreeMap::from([
            (uuid(killed), LinkState::Revoked),
            (uuid(replacement), LinkState::Active),
            (uuid(requested), LinkState::Active),
            (uuid(form), LinkState::Active),
            (uuid(part), LinkState::Active),
        ])
    );
    // The request id claimed at 0016 names its link, and 0017's function does
    // not claim it again; a second replacement of the replaced link is not
    // written either; a plain row of the same batch is.
    let found = link_requests::find(&pool, "svc-a", "req-1")
        .await
        .unwrap()
        .expect("the claim survives the upgrade");
    assert_eq!(found.link.id, uuid(requested));
    let mut again = crate::helpers::new_link("GKnew", "alpha", "svc-a");
    again.request = Some(LinkRequest {
        id: "req-1".into(),
        sha256: Sha256::digest(b"req-1").into(),
    });
    let second = presignd::registry::links::NewLink {
        replaces_link_id: Some(uuid(killed)),
        expires_at: found.link.expires_at,
        ..crate::helpers::new_link("GKnew", "alpha", "svc-a")
    };
    let plain = crate::helpers::new_link("GKnew", "alpha", "svc-a");
    let written = links::record(&pool, &["GKnew"], &[&again, &second, &plain])
        .await
        .unwrap();
    assert_eq!(written.active_keys, ["GKnew"]);
    assert!(written.claimed.is_empty(), "{:?}", written.claimed);
    let inserted: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM links WHERE id = ANY ($1)")
        .bind([again.id, second.id, plain.id])
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(inserted, [plain.id]);
    // The open upload is found, and expires with its part URLs.
    let open = uploads::get(&pool, uuid(upload))
        .await
        .unwrap()
        .expect("the upload survives the upgrade");
    assert_eq!((open.state.as_str(), open.part_count), ("open", 1));
    let expired = uploads::expired_open(&pool, Utc::now() + Duration::hours(2), None, 10)
        .await
        .unwrap();
    assert_eq!(
        expired.iter().map(|u| u.id).collect::<Vec<_>>(),
        [uuid(upload)]
    );
    // The revocation's event is delivered, and the next one comes after it.
    let events = revocation_events::after(&pool, Some("svc-a"), 0, 10)
        .await
        .unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.revocation_id, e.links))
            .collect::<Vec<_>>(),
        [(uuid(REVOCATION), 1)]
    );
    sqlx::query(
        "INSERT INTO revocation_events (revocation_id, caller, signer, key_id, links,
                                        quarantined, earliest_expiry)
         VALUES ($1, 'svc-b', 'alpha', 'GKold', 2, 0, now())",
    )
    .bind(uuid(REVOCATION))
    .execute(&pool)
    .await
    .unwrap();
    let latest = revocation_events::latest(&pool).await.unwrap();
    assert!(latest > events[0].seq, "{latest} after {}", events[0].seq);
}

/// A migration run that fails after taking sqlx's migration lock (here: a
/// landed migration's recorded checksum no longer matches) leaves no lock
/// behind. The server's readiness task retries `registry::migrate` on its
/// pool: a lock left on a pooled session made every retry wait for ever,
/// the server unready with a stale reason.
#[sqlx::test]
async fn a_failed_migration_run_leaves_no_lock_behind(pool: PgPool) {
    let recorded: Vec<u8> =
        sqlx::query_scalar("SELECT checksum FROM _sqlx_migrations WHERE version = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = 1")
        .execute(&pool)
        .await
        .unwrap();
    let held = "SELECT count(*) FROM pg_locks
                WHERE locktype = 'advisory' AND granted
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
    for attempt in 1..=3 {
        let run = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            presignd::registry::migrate(&pool),
        )
        .await
        .unwrap_or_else(|_| panic!("attempt {attempt} waited 20 s for the migration lock"));
        let error = format!("{:#}", run.expect_err("a changed migration is refused"));
        assert!(
            error.contains("migration 1 was previously applied but has been modified"),
            "attempt {attempt}: {error}"
        );
        let locks: i64 = sqlx::query_scalar(held).fetch_one(&pool).await.unwrap();
        assert_eq!(locks, 0, "attempt {attempt} left an advisory lock held");
    }
    sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = 1")
        .bind(recorded)
        .execute(&pool)
        .await
        .unwrap();
    presignd::registry::migrate(&pool)
        .await
        .expect("with the checksum restored, the run succeeds");
}
