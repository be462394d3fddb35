//! The policy file's format and its validation. Unknown keys are errors (a
//! misspelt `prefixs` must not silently allow every key), and every error names
//! the caller and the setting.

use super::Settings;
use super::rules::{RateSpec, Role, Rules, key_has_dot_segment};
use crate::domain::{Bucket, CallerName, MAX_FORM_BYTES, Method, SignerName, Ttl};
use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    callers: BTreeMap<String, CallerEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallerEntry {
    #[serde(default)]
    role: Option<String>,
    signer: Option<String>,
    buckets: Vec<String>,
    prefixes: Option<Vec<String>>,
    methods: Vec<String>,
    max_ttl_secs: Option<u64>,
    max_upload_bytes: Option<u64>,
    issue_rate_per_sec: Option<u32>,
    issue_burst: Option<u32>,
    #[serde(default)]
    cert_names: Vec<String>,
}

pub fn parse(text: &str, settings: &Settings) -> anyhow::Result<BTreeMap<CallerName, Rules>> {
    let file: PolicyFile = toml::from_str(text).context("not a valid policy (TOML)")?;
    let mut callers = BTreeMap::new();
    for (name, entry) in file.callers {
        let caller = CallerName::parse(&name).with_context(|| format!("[callers.{name}]"))?;
        let rules = rules(&caller, entry, settings).with_context(|| format!("[callers.{name}]"))?;
        callers.insert(caller, rules);
    }
    let mut seen: BTreeMap<&str, &CallerName> = BTreeMap::new();
    for (caller, rules) in &callers {
        for n in &rules.cert_names {
            if let Some(other) = seen.insert(n, caller) {
                bail!("cert_names: {n:?} is listed by both {other} and {caller}");
            }
        }
    }
    for admin in &settings.admins {
        if callers.get(admin).is_none_or(|r| r.role != Role::Admin) {
            bail!(
                "PRESIGND_ADMINS names {admin}, whose role in the policy is not admin: give roles in the policy file only"
            );
        }
    }
    Ok(callers)
}

fn rules(caller: &CallerName, e: CallerEntry, settings: &Settings) -> anyhow::Result<Rules> {
    let role = match e.role.as_deref() {
        None | Some("caller") => Role::Caller,
        Some("admin") => Role::Admin,
        Some(other) => bail!("role: {other:?} is not one of \"caller\", \"admin\""),
    };
    let signer = match e.signer {
        None => settings.signers[0].clone(),
        Some(s) => {
            let s = SignerName::parse(&s).context("signer")?;
            if !settings.signers.contains(&s) {
                bail!(
                    "signer: {s} is not one of the configured signers (--signers: {})",
                    settings
                        .signers
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            s
        }
    };
    let buckets = if e.buckets == ["*"] {
        None
    } else if e.buckets.is_empty() {
        bail!("buckets: must list at least one bucket (or \"*\" for any)");
    } else {
        Some(
            e.buckets
                .iter()
                .map(|b| Bucket::parse(b).with_context(|| format!("buckets: {b:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?,
        )
    };
    let prefixes = match e.prefixes {
        None => None,
        Some(p) if p.is_empty() => {
            bail!("prefixes: must not be empty (leave it out to allow every object key)")
        }
        Some(p) => {
            for prefix in &p {
                validate_prefix(caller, prefix)?;
            }
            Some(p)
        }
    };
    let methods = if e.methods == ["*"] {
        Method::ALL.to_vec()
    } else if e.methods.is_empty() {
        bail!("methods: must list at least one of GET, PUT, HEAD, DELETE, POST (or \"*\")");
    } else {
        e.methods
            .iter()
            .map(|m| Method::parse(m).context("methods"))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let max_ttl = match e.max_ttl_secs {
        None => Ttl::from_secs(7 * 24 * 3600)?,
        Some(s) => Ttl::from_secs(s).context("max_ttl_secs")?,
    };
    let max_upload_bytes = match e.max_upload_bytes {
        Some(0) => bail!("max_upload_bytes: must be at least 1 (leave it out for S3's limit)"),
        Some(n) if n > MAX_FORM_BYTES => {
            bail!("max_upload_bytes: {n} is over S3's limit of one upload ({MAX_FORM_BYTES})")
        }
        n => n,
    };
    let rate = match (e.issue_rate_per_sec, e.issue_burst) {
        (None, Some(_)) => bail!("issue_burst: set issue_rate_per_sec too"),
        (None, None) => None,
        (Some(0), _) => {
            bail!("issue_rate_per_sec: must be at least 1 (leave it out for the default)")
        }
        (Some(r), b) => RateSpec::new(r, b.unwrap_or(0)),
    };
    Ok(Rules {
        role,
        signer,
        buckets,
        prefixes,
        methods,
        max_ttl,
        max_upload_bytes,
        rate,
        cert_names: e.cert_names,
    })
}

fn validate_prefix(caller: &CallerName, prefix: &str) -> anyhow::Result<()> {
    if prefix.is_empty() {
        bail!("prefixes: an empty prefix allows every key; leave `prefixes` out instead");
    }
    if prefix.chars().any(char::is_control) {
        bail!("prefixes: {prefix:?} contains a control character");
    }
    if key_has_dot_segment(prefix) {
        bail!("prefixes: {prefix:?} has a '.' or '..' segment");
    }
    if !prefix.ends_with('/') {
        tracing::warn!(
            %caller, prefix,
            "a policy prefix does not end with '/': it also allows keys that merely start with the same characters"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            signers: vec![
                SignerName::parse("default").unwrap(),
                SignerName::parse("billing").unwrap(),
            ],
            admins: vec![],
            default_rate: None,
        }
    }

    const GOOD: &str = r#"
        [callers.billing-api]
        signer = "billing"
        buckets = ["uploads"]
        prefixes = ["invoices/"]
        methods = ["GET", "PUT", "POST"]
        max_ttl_secs = 3600
        max_upload_bytes = 10485760
        issue_rate_per_sec = 10

        [callers.ops]
        role = "admin"
        buckets = ["*"]
        methods = ["*"]
    "#;

    #[test]
    fn a_complete_policy_parses_with_defaults_filled_in() {
        let p = parse(GOOD, &settings()).unwrap();
        let b = &p[&CallerName::parse("billing-api").unwrap()];
        assert_eq!(b.signer.as_str(), "billing");
        assert_eq!(b.rate.unwrap().burst.get(), 10);
        assert!(b.methods.contains(&Method::Post));
        assert_eq!(b.max_upload_bytes, Some(10 << 20));
        let ops = &p[&CallerName::parse("ops").unwrap()];
        assert_eq!((ops.role, ops.signer.as_str()), (Role::Admin, "default"));
        assert!(ops.buckets.is_none() && ops.prefixes.is_none());
        assert_eq!(ops.max_ttl.as_secs(), 7 * 86400);
        assert_eq!(
            (ops.methods.len(), ops.max_upload_bytes),
            (5, None),
            "\"*\" includes POST"
        );
    }

    fn error_of(text: &str) -> String {
        format!("{:#}", parse(text, &settings()).unwrap_err())
    }

    #[test]
    fn a_misspelt_setting_is_refused_not_ignored() {
        let e = error_of(
            "[callers.a]\nbuckets = [\"uploads\"]\nmethods = [\"GET\"]\nprefixs = [\"x/\"]\n",
        );
        assert!(e.contains("prefixs"), "{e}");
    }

    #[test]
    fn an_unknown_signer_is_refused_naming_the_configured_ones() {
        let e = error_of(
            "[callers.a]\nsigner = \"other\"\nbuckets = [\"uploads\"]\nmethods = [\"GET\"]\n",
        );
        assert!(
            e.contains("[callers.a]") && e.contains("default, billing"),
            "{e}"
        );
    }

    #[test]
    fn bad_buckets_methods_prefixes_and_ttls_are_refused() {
        for (bad, needle) in [
            ("buckets = [\"Up\"]\nmethods = [\"GET\"]", "buckets"),
            ("buckets = []\nmethods = [\"GET\"]", "buckets"),
            ("buckets = [\"uploads\"]\nmethods = [\"PATCH\"]", "methods"),
            (
                "buckets = [\"uploads\"]\nmethods = [\"GET\"]\nprefixes = []",
                "prefixes",
            ),
            (
                "buckets = [\"uploads\"]\nmethods = [\"GET\"]\nprefixes = [\"a/../\"]",
                "prefixes",
            ),
            (
                "buckets = [\"uploads\"]\nmethods = [\"GET\"]\nmax_ttl_secs = 0",
                "max_ttl_secs",
            ),
            (
                "buckets = [\"uploads\"]\nmethods = [\"POST\"]\nmax_upload_bytes = 0",
                "max_upload_bytes",
            ),
            (
                "buckets = [\"uploads\"]\nmethods = [\"POST\"]\nmax_upload_bytes = 5368709121",
                "max_upload_bytes",
            ),
            (
                "buckets = [\"uploads\"]\nmethods = [\"GET\"]\nrole = \"root\"",
                "role",
            ),
            (
                "buckets = [\"uploads\"]\nmethods = [\"GET\"]\nissue_burst = 3",
                "issue_burst",
            ),
        ] {
            let e = error_of(&format!("[callers.a]\n{bad}\n"));
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn admins_given_by_flag_must_be_admins_in_the_policy() {
        let mut s = settings();
        s.admins = vec![CallerName::parse("billing-api").unwrap()];
        let e = format!("{:#}", parse(GOOD, &s).unwrap_err());
        assert!(e.contains("PRESIGND_ADMINS"), "{e}");
        s.admins = vec![CallerName::parse("ops").unwrap()];
        assert!(parse(GOOD, &s).is_ok());
    }
}
