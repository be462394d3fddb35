//! What operators import: the alert rules (deploy/prometheus/alerts.yml) pass
//! `promtool check rules` and their unit tests, and every metric the alerts and
//! the Grafana dashboard (deploy/grafana/presignd.json) name is one a running
//! presignd exports. promtool comes from the Debian package `prometheus`, which
//! deploy/dev/stack.sh installs.

use crate::helpers::*;
use crate::metrics::scrape;
use presignd::proto::{Method, RotationMode};
use serde_norway::Value;
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn promtool(args: &[&str]) {
    let dir = repo().join("deploy/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("promtool runs (Debian package `prometheus`: deploy/dev/stack.sh installs it)");
    assert!(
        out.status.success(),
        "promtool {args:?} in {}:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts.test.yml"]);
}

/// Every expression of the alert rules.
fn alert_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let doc: Value = serde_norway::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    for group in doc["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            exprs.push(rule["expr"].as_str().unwrap().to_owned());
        }
    }
    exprs
}

/// Every query of the dashboard: panels' targets and template variables.
fn dashboard_exprs() -> Vec<String> {
    let path = repo().join("deploy/grafana/presignd.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in doc["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for var in doc["templating"]["list"].as_array().unwrap() {
        // Grafana's label_values(selector, label): the selector is PromQL.
        if let Some(q) = var["query"]["query"].as_str() {
            let selector = q
                .strip_prefix("label_values(")
                .and_then(|rest| rest.rsplit_once(','))
                .map_or(q, |(selector, _)| selector);
            exprs.push(selector.to_owned());
        }
    }
    exprs
}

/// The metric names a PromQL expression selects: identifiers that are not a
/// function or aggregation (followed by `(`), a keyword, a label (inside `{}`
/// or a grouping clause), a duration, a string or a Grafana variable.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Aggregations may be followed by their grouping clause rather than `(`.
    const KEYWORDS: &[&str] = &[
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let (mut i, mut skip_list) = (0, false);
    while i < chars.len() {
        let c = chars[i];
        let closing = match c {
            '"' => Some('"'),
            '{' => Some('}'),
            '[' => Some(']'),
            _ => None,
        };
        if let Some(end) = closing {
            i += 1 + chars[i + 1..]
                .iter()
                .position(|&x| x == end)
                .expect("closed");
            i += 1;
            continue;
        }
        if c == '$' || c.is_ascii_digit() || c == '.' {
            // A variable, a number or a duration.
            while i < chars.len() && (chars[i].is_alphanumeric() || "$_.".contains(chars[i])) {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if GROUPING.contains(&word.as_str()) {
                skip_list = true;
            } else if next == Some(&'(') || KEYWORDS.contains(&word.as_str()) {
            } else {
                names.insert(word);
            }
            continue;
        }
        if c == '(' && skip_list {
            // A grouping clause's label list.
            i += 1 + chars[i + 1..]
                .iter()
                .position(|&x| x == ')')
                .expect("closed");
            skip_list = false;
        }
        i += 1;
    }
    names
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (method, le) (rate(a_bucket{job=~"$job",x="y z"}[$__rate_interval])))
           / ignoring (code) group_left b > 0.05 and on() max without (x) (c) offset 5m"#,
    );
    assert_eq!(names, ["a_bucket", "b", "c"].map(String::from).into());
}

/// The names of the samples in a Prometheus text exposition.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

#[sqlx::test]
async fn every_metric_the_dashboard_and_the_alerts_name_is_exported(pool: PgPool) {
    // A budget far from reached, so that its gauges are exported too.
    let config = test_config(&["--key-budgets=default:links=1000000:age=30d"]);
    let mut app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    // One link, one refusal, one revocation: every labelled series exists.
    let bucket = app.bucket.clone();
    app.issue(link_request(&bucket, &unique_key("dash"), Method::Get, 60))
        .await
        .unwrap();
    let mut anonymous =
        presignd::proto::link_service_client::LinkServiceClient::new(app.channel.clone());
    anonymous
        .issue_link(link_request(&bucket, "k", Method::Get, 60))
        .await
        .unwrap_err();
    app.rotate(rotate_req("default", RotationMode::Graceful, ""))
        .await;
    presignd::metrics::refresh_outstanding(&pool, &mut BTreeSet::new())
        .await
        .unwrap();
    presignd::metrics::refresh_state(&pool).await.unwrap();
    let exported = exported(&scrape(&app).await);

    for (file, exprs) in [
        ("deploy/prometheus/alerts.yml", alert_exprs()),
        ("deploy/grafana/presignd.json", dashboard_exprs()),
    ] {
        assert!(!exprs.is_empty(), "{file} has queries");
        for expr in exprs {
            let names = metric_names(&expr);
            assert!(!names.is_empty(), "{file}: no metric in {expr}");
            for name in names {
                assert!(
                    exported.contains(&name),
                    "{file} names {name}, which presignd does not export (exported: {exported:?})"
                );
            }
        }
    }
}

#[test]
fn the_dashboard_covers_what_operators_asked_for() {
    let all = dashboard_exprs().join("\n");
    for needed in [
        "presignd_links_issued_total",
        "presignd_grpc_requests_total",
        "histogram_quantile(0.5,",
        "histogram_quantile(0.99,",
        "presignd_outstanding_links",
        "presignd_revocations_total",
        "presignd_key_budget_links_ratio",
        "presignd_bucket_ready",
        "presignd_revocation_watchers",
        "presignd_registry_connections",
    ] {
        assert!(all.contains(needed), "the dashboard shows {needed}");
    }
}
