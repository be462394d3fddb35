//! Who may ask for what. A policy file (TOML) gives each caller its rules:
//! buckets, object key prefixes, methods (POST: upload forms), maximum TTL,
//! maximum upload size (forms), role, rate limit, and the
//! signer that signs its links (its revocation domain). Anything outside the
//! rules is refused with PERMISSION_DENIED naming the rule.
//!
//! Without a policy file every authenticated caller may do anything, on the
//! first signer, and `--admins` names the admins (presignd's behaviour before
//! policies); callers are then token holders only, since a client certificate
//! names a caller only through a policy entry's `cert_names`. The policy in force is swapped atomically on reload (SIGHUP); a
//! policy that does not validate is refused and the previous one stays.

mod file;
mod rules;

pub use rules::{Denied, Grant, RateSpec, Role, Rules, key_has_dot_segment};

use crate::domain::{CallerName, SignerName};
use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

/// What a policy is checked against: the server's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--signers`: every signer a policy may name (each has an active key).
    pub signers: Vec<SignerName>,
    /// `--admins`.
    pub admins: Vec<CallerName>,
    /// `--issue-rate-per-sec` / `--issue-burst`: the limit of callers whose
    /// rules set none.
    pub default_rate: Option<RateSpec>,
}

#[derive(Debug)]
pub struct Policy {
    /// None: no policy file.
    callers: Option<BTreeMap<CallerName, Rules>>,
    settings: Settings,
}

impl Policy {
    /// Every authenticated caller may do anything, signed by the first signer.
    pub fn permissive(settings: Settings) -> anyhow::Result<Self> {
        if settings.signers.is_empty() {
            bail!("no signers configured");
        }
        Ok(Self {
            callers: None,
            settings,
        })
    }

    /// Parses and validates a policy file's text.
    pub fn parse(text: &str, settings: Settings) -> anyhow::Result<Self> {
        let callers = file::parse(text, &settings)?;
        Ok(Self {
            callers: Some(callers),
            settings,
        })
    }

    pub fn from_file(path: &std::path::Path, settings: Settings) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading policy file {}", path.display()))?;
        Self::parse(&text, settings).with_context(|| format!("policy file {}", path.display()))
    }

    pub fn has_file(&self) -> bool {
        self.callers.is_some()
    }

    pub fn caller_count(&self) -> usize {
        self.callers.as_ref().map_or(0, |c| c.len())
    }

    fn default_signer(&self) -> &SignerName {
        &self.settings.signers[0]
    }

    pub fn rules(&self, caller: &CallerName) -> Option<&Rules> {
        self.callers.as_ref().and_then(|c| c.get(caller))
    }

    pub fn is_admin(&self, caller: &CallerName) -> bool {
        match &self.callers {
            Some(_) => self.rules(caller).is_some_and(|r| r.role == Role::Admin),
            None => self.settings.admins.contains(caller),
        }
    }

    /// The caller a client certificate names: the one whose policy entry lists
    /// one of the certificate's names (URI SAN, DNS SAN, CN) in `cert_names`.
    /// Never implicitly: a certificate whose CN happens to equal a caller's
    /// (or an admin's) name names nobody unless that caller lists it, and
    /// without a policy file no certificate names anyone (`--client-ca`
    /// requires `--policy-file`).
    pub fn caller_for_cert(&self, names: &[String]) -> Result<CallerName, String> {
        let Some(callers) = &self.callers else {
            return Err("certificates name callers only through a policy file's cert_names".into());
        };
        let found: Vec<&CallerName> = callers
            .iter()
            .filter(|(_, rules)| names.iter().any(|n| rules.cert_names.contains(n)))
            .map(|(name, _)| name)
            .collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(format!(
                "no caller in the policy lists any of the certificate's names in cert_names ({})",
                names.join(", ")
            )),
            many => Err(format!(
                "the certificate names several callers ({}): refused as ambiguous",
                many.iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// May `caller` have a link for this request, and which signer signs it?
    pub fn authorize_issue(
        &self,
        caller: &CallerName,
        spec: &crate::domain::LinkSpec,
    ) -> Result<Grant, Denied> {
        self.judge(caller, |rules| rules.authorize(caller, spec))
    }

    /// May `caller` have this upload form, and which signer signs it?
    pub fn authorize_form(
        &self,
        caller: &CallerName,
        spec: &crate::domain::FormSpec,
    ) -> Result<Grant, Denied> {
        self.judge(caller, |rules| rules.authorize_form(caller, spec))
    }

    /// Without a policy file the default signer signs everything; with one,
    /// `caller`'s entry judges (`judge`), and a caller without one is refused.
    fn judge(
        &self,
        caller: &CallerName,
        judge: impl FnOnce(&Rules) -> Result<Grant, Denied>,
    ) -> Result<Grant, Denied> {
        match &self.callers {
            None => Ok(Grant {
                signer: self.default_signer().clone(),
            }),
            Some(callers) => judge(callers.get(caller).ok_or_else(|| {
                Denied::new(
                    "entry",
                    format!("caller {caller} has no entry in the policy"),
                )
            })?),
        }
    }

    /// The buckets each signer signs for: `configured` (`--buckets`) for every
    /// signer, plus the buckets each policy entry names for its signer (an
    /// entry allowing any bucket, `*`, adds none: `--buckets` are its
    /// buckets). What the preflight prepares, and all IssueLink signs for.
    pub fn buckets_by_signer(&self, configured: &[String]) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = self
            .settings
            .signers
            .iter()
            .map(|s| (s.to_string(), configured.iter().cloned().collect()))
            .collect();
        for rules in self.callers.iter().flat_map(|c| c.values()) {
            if let Some(buckets) = &rules.buckets {
                out.entry(rules.signer.to_string())
                    .or_default()
                    .extend(buckets.iter().map(|b| b.to_string()));
            }
        }
        out
    }

    /// The IssueLink rate limit of `caller` (None: unlimited).
    pub fn rate_for(&self, caller: &CallerName) -> Option<RateSpec> {
        self.rules(caller)
            .and_then(|r| r.rate)
            .or(self.settings.default_rate)
    }
}

/// The policy in force, shared by every request and swapped whole on reload.
#[derive(Clone)]
pub struct PolicyHandle {
    current: Arc<ArcSwap<Policy>>,
    source: Option<PathBuf>,
    settings: Settings,
    /// Told of every policy swapped in (the preflight follows it).
    swapped: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for PolicyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyHandle")
            .field("source", &self.source)
            .finish()
    }
}

impl PolicyHandle {
    /// From `--policy-file` if given, else permissive.
    pub fn load(source: Option<PathBuf>, settings: Settings) -> anyhow::Result<Self> {
        let policy = match &source {
            Some(path) => Policy::from_file(path, settings.clone())?,
            None => Policy::permissive(settings.clone())?,
        };
        Ok(Self {
            current: Arc::new(ArcSwap::from_pointee(policy)),
            source,
            settings,
            swapped: Arc::default(),
        })
    }

    /// The policy file, if one is configured (reloadable).
    pub fn source(&self) -> Option<PathBuf> {
        self.source.clone()
    }

    pub fn has_source(&self) -> bool {
        self.source.is_some()
    }

    pub fn current(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    /// Re-reads the policy file. On any error the policy in force stays.
    pub fn reload(&self) -> anyhow::Result<Arc<Policy>> {
        let Some(path) = &self.source else {
            bail!("no policy file is configured (--policy-file): nothing to reload");
        };
        let policy = Arc::new(Policy::from_file(path, self.settings.clone())?);
        self.current.store(policy.clone());
        self.swapped.notify_one();
        Ok(policy)
    }

    /// Resolves once a policy was swapped in since the last call (one
    /// follower: the preflight task).
    pub async fn swapped(&self) {
        self.swapped.notified().await
    }
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

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_signer_signs_for_the_configured_buckets_and_those_its_entries_name() {
        let p = Policy::parse(
            "[callers.a]\nsigner = \"billing\"\nbuckets = [\"invoices\"]\nmethods = [\"GET\"]\n\
             [callers.b]\nbuckets = [\"*\"]\nmethods = [\"GET\"]\n",
            settings(),
        )
        .unwrap();
        let by = p.buckets_by_signer(&["uploads".into()]);
        assert_eq!(by["default"], set(&["uploads"]), "`*` adds nothing");
        assert_eq!(by["billing"], set(&["invoices", "uploads"]));
        let permissive = Policy::permissive(settings()).unwrap();
        assert_eq!(
            permissive.buckets_by_signer(&["uploads".into()])["default"],
            set(&["uploads"])
        );
    }
}
