//! Live reload of what an operator rotates without a restart: the callers
//! (`--callers-file`), the policy (`--policy-file`), the server certificate and
//! key, and the client CA. On SIGHUP everything reloadable is read again; every
//! `--reload-poll-secs` the files are hashed and what changed is reloaded (a
//! Kubernetes secret mount swaps a symlink, which a watch on the file itself
//! would miss). A new file that does not parse is refused and logged, and the
//! settings in force stay. Connections are never dropped: TLS settings apply
//! from the next handshake.

use crate::auth::Authenticator;
use crate::config::{Config, read_callers_file};
use crate::policy::PolicyHandle;
use crate::tls::LiveTls;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// What can be reloaded, as one group per setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    Callers,
    Policy,
    Tls,
}

pub struct Reloader {
    inline_callers: Vec<String>,
    callers_file: Option<PathBuf>,
    tls_files: Option<(PathBuf, PathBuf, Option<PathBuf>)>,
    auth: Authenticator,
    policy: PolicyHandle,
    tls: Option<LiveTls>,
    /// The content hash of each watched file when last loaded (None: unreadable).
    seen: BTreeMap<PathBuf, Option<[u8; 32]>>,
}

impl Reloader {
    pub fn new(
        config: &Config,
        auth: Authenticator,
        policy: PolicyHandle,
        tls: Option<LiveTls>,
    ) -> Self {
        let tls_files = match (&config.tls_cert, &config.tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone(), config.client_ca.clone())),
            _ => None,
        };
        let mut reloader = Self {
            inline_callers: config.callers.clone(),
            callers_file: config.callers_file.clone(),
            tls_files,
            auth,
            policy,
            tls,
            seen: BTreeMap::new(),
        };
        for part in reloader.parts() {
            for path in reloader.files(part) {
                reloader.seen.insert(path.clone(), fingerprint(&path));
            }
        }
        reloader
    }

    fn parts(&self) -> Vec<Part> {
        let mut parts = Vec::new();
        if self.callers_file.is_some() {
            parts.push(Part::Callers);
        }
        if self.policy.has_source() {
            parts.push(Part::Policy);
        }
        if self.tls_files.is_some() && self.tls.is_some() {
            parts.push(Part::Tls);
        }
        parts
    }

    fn files(&self, part: Part) -> Vec<PathBuf> {
        match part {
            Part::Callers => self.callers_file.iter().cloned().collect(),
            Part::Policy => self.policy.source().into_iter().collect(),
            Part::Tls => match &self.tls_files {
                Some((c, k, ca)) => [Some(c.clone()), Some(k.clone()), ca.clone()]
                    .into_iter()
                    .flatten()
                    .collect(),
                None => Vec::new(),
            },
        }
    }

    /// One pass: reloads every part whose files changed since they were last
    /// loaded, or every part when `all` (SIGHUP). Returns the parts reloaded.
    pub fn check(&mut self, all: bool) -> Vec<Part> {
        let mut reloaded = Vec::new();
        for part in self.parts() {
            let now: Vec<_> = self
                .files(part)
                .into_iter()
                .map(|p| {
                    let f = fingerprint(&p);
                    (p, f)
                })
                .collect();
            let changed = now.iter().any(|(p, f)| self.seen.get(p) != Some(f));
            if !(all || changed) {
                continue;
            }
            // Remember what was seen even when refused: a bad file is logged
            // once, not at every poll; the next change is tried again.
            for (p, f) in now {
                self.seen.insert(p, f);
            }
            match self.reload(part) {
                Ok(what) => {
                    tracing::info!(part = ?part, "{what}");
                    reloaded.push(part);
                }
                Err(e) => tracing::error!(
                    part = ?part,
                    error = format!("{e:#}"),
                    "reload refused; the settings in force stay"
                ),
            }
        }
        reloaded
    }

    fn reload(&self, part: Part) -> anyhow::Result<String> {
        match part {
            Part::Callers => {
                let mut specs = self.inline_callers.clone();
                if let Some(path) = &self.callers_file {
                    specs.extend(read_callers_file(path)?);
                }
                let n = self.auth.reload_callers(&specs)?;
                Ok(format!("callers reloaded: {n} token callers"))
            }
            Part::Policy => {
                let p = self.policy.reload()?;
                Ok(format!(
                    "policy reloaded: {} callers in the policy",
                    p.caller_count()
                ))
            }
            Part::Tls => {
                let (cert, key, ca) = self.tls_files.as_ref().expect("a TLS part has files");
                let setup = crate::tls::load(cert, key, ca.as_deref())?;
                if let Some(live) = &self.tls {
                    live.swap(setup);
                }
                Ok("TLS certificate, key and client CA reloaded: new connections use them".into())
            }
        }
    }

    /// Reloads on SIGHUP (everything) and every `poll` (what changed).
    pub async fn run(mut self, poll: Option<Duration>) {
        let mut tick = poll.map(tokio::time::interval);
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP"))
            .ok();
        loop {
            let hangup = async {
                #[cfg(unix)]
                if let Some(h) = hup.as_mut() {
                    h.recv().await;
                    return;
                }
                std::future::pending::<()>().await
            };
            let polled = async {
                match tick.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let all = tokio::select! {
                _ = hangup => true,
                _ = polled => false,
            };
            if all {
                tracing::info!("SIGHUP: reloading callers, policy and TLS settings");
            }
            self.check(all);
        }
    }
}

fn fingerprint(path: &std::path::Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::hash_token;
    use crate::domain::{CallerName, SignerName};

    fn reloader(callers_file: PathBuf) -> Reloader {
        let policy = PolicyHandle::load(
            None,
            crate::policy::Settings {
                signers: vec![SignerName::parse("default").unwrap()],
                admins: vec![CallerName::parse("ops").unwrap()],
                default_rate: None,
            },
        )
        .unwrap();
        let auth = Authenticator::from_specs(&[], policy.clone()).unwrap();
        let mut r = Reloader {
            inline_callers: Vec::new(),
            callers_file: Some(callers_file.clone()),
            tls_files: None,
            auth,
            policy,
            tls: None,
            seen: BTreeMap::new(),
        };
        r.seen
            .insert(callers_file.clone(), fingerprint(&callers_file));
        r.reload(Part::Callers).unwrap();
        r
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("presignd-reload-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_changed_file_is_reloaded_once_and_an_unchanged_one_not_at_all() {
        let d = dir();
        let file = d.join("callers");
        std::fs::write(&file, "").unwrap();
        let mut r = reloader(file.clone());
        assert!(r.check(false).is_empty(), "nothing changed");
        std::fs::write(&file, format!("ops:{}\n", hash_token("t1"))).unwrap();
        assert_eq!(r.check(false), [Part::Callers]);
        assert!(r.auth.authenticate_token("t1").is_some());
        assert!(r.check(false).is_empty(), "reloaded once");
        assert_eq!(r.check(true), [Part::Callers], "SIGHUP reloads all");
    }

    #[test]
    fn a_malformed_file_is_refused_and_the_callers_in_force_stay() {
        let d = dir();
        let file = d.join("callers");
        std::fs::write(&file, format!("ops:{}\n", hash_token("t1"))).unwrap();
        let mut r = reloader(file.clone());
        std::fs::write(&file, "ops:not-a-hash\n").unwrap();
        assert!(r.check(false).is_empty(), "refused");
        assert!(
            r.auth.authenticate_token("t1").is_some(),
            "old callers stay"
        );
    }

    /// How a Kubernetes secret mount updates: `..data` is a symlink swapped to
    /// a new directory; the file itself is a symlink through it.
    #[cfg(unix)]
    #[test]
    fn a_swapped_symlink_counts_as_a_change() {
        let d = dir();
        let (v1, v2) = (d.join("v1"), d.join("v2"));
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v1.join("callers"), format!("ops:{}\n", hash_token("t1"))).unwrap();
        std::fs::write(v2.join("callers"), format!("ops:{}\n", hash_token("t2"))).unwrap();
        std::os::unix::fs::symlink(&v1, d.join("..data")).unwrap();
        std::os::unix::fs::symlink(d.join("..data/callers"), d.join("callers")).unwrap();
        let mut r = reloader(d.join("callers"));
        assert!(r.auth.authenticate_token("t1").is_some());
        // The atomic swap: a new link renamed over the old one.
        std::os::unix::fs::symlink(&v2, d.join("..data.tmp")).unwrap();
        std::fs::rename(d.join("..data.tmp"), d.join("..data")).unwrap();
        assert_eq!(r.check(false), [Part::Callers]);
        assert!(r.auth.authenticate_token("t2").is_some());
        assert!(r.auth.authenticate_token("t1").is_none());
    }
}
