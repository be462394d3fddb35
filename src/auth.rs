//! Who is calling. A caller presents a client certificate (mTLS, see `tls`) or a
//! bearer token in the `authorization` metadata; presignd holds only SHA-256
//! hashes of tokens and compares them in constant time. Either way the resolved
//! `Caller` travels in the request's extensions, with its role from the policy.
//! Refused requests are recorded in the audit trail, caller unknown.

use crate::audit::{AuditEvent, Auditor, rpc_of};
use crate::domain::CallerName;
use crate::policy::PolicyHandle;
use crate::telemetry::rpc;
use crate::tls::LiveTls;
use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: CallerName,
    pub admin: bool,
}

impl Caller {
    /// Whether this caller may see what `other` did (its links): admins see
    /// everyone's, a plain caller only its own.
    pub fn may_see_caller(&self, other: &str) -> bool {
        self.admin || self.name.as_str() == other
    }
}

#[derive(Clone)]
struct Entry {
    name: CallerName,
    token_sha256: [u8; 32],
}

/// The configured callers: by token hash, or by client certificate.
#[derive(Clone)]
pub struct Authenticator {
    /// Swapped whole when the callers are reloaded (`reload_callers`).
    entries: Arc<ArcSwap<Vec<Entry>>>,
    policy: PolicyHandle,
    certs: Option<LiveTls>,
    audit: Option<Auditor>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field(
                "callers",
                &self
                    .entries
                    .load()
                    .iter()
                    .map(|e| e.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Token callers from `NAME:SHA256HEX` specs.
fn parse_entries(specs: &[String]) -> anyhow::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for spec in specs.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let (name, hash) = spec
            .split_once(':')
            .with_context(|| format!("caller spec {spec:?}: expected NAME:SHA256HEX"))?;
        let name = CallerName::parse(name).with_context(|| format!("caller spec for {name:?}"))?;
        let bytes = hex::decode(hash)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .with_context(|| {
                format!("caller {name}: token hash must be 64 hex characters (SHA-256 of the token; see `presignd hash-token`)")
            })?;
        if bytes == EMPTY_SHA256 {
            bail!(
                "caller {name}: the token hash is the SHA-256 of an empty token, which anyone can send; hash a real token"
            );
        }
        if entries.iter().any(|e: &Entry| e.token_sha256 == bytes) {
            bail!("caller {name}: this token hash is already used by another caller");
        }
        entries.push(Entry {
            name,
            token_sha256: bytes,
        });
    }
    Ok(entries)
}

/// SHA-256 of "": the hash a caller would get from hashing nothing (an empty
/// variable, a newline trimmed away). It would let in any request whose
/// `authorization` is `Bearer ` with nothing after it.
const EMPTY_SHA256: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

impl Authenticator {
    /// From `NAME:SHA256HEX` specs; roles come from `policy`.
    pub fn from_specs(specs: &[String], policy: PolicyHandle) -> anyhow::Result<Self> {
        Ok(Self {
            entries: Arc::new(ArcSwap::from_pointee(parse_entries(specs)?)),
            policy,
            certs: None,
            audit: None,
        })
    }

    /// Replaces the token callers with `specs`, or leaves them as they are if
    /// one is malformed (the error names it).
    pub fn reload_callers(&self, specs: &[String]) -> anyhow::Result<usize> {
        let entries = parse_entries(specs)?;
        let n = entries.len();
        self.entries.store(Arc::new(entries));
        Ok(n)
    }

    /// Accepts client certificates verified by the client CA in force (mTLS).
    pub fn with_client_certs(mut self, tls: Option<LiveTls>) -> Self {
        self.certs = tls;
        self
    }

    /// Records refused requests in the audit trail.
    pub fn with_audit(mut self, audit: Auditor) -> Self {
        self.audit = Some(audit);
        self
    }

    /// The caller a bearer token belongs to. Every entry is compared, so the time
    /// taken does not tell which one matched.
    pub fn authenticate_token(&self, token: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for e in self.entries.load().iter() {
            if bool::from(e.token_sha256.ct_eq(&digest)) {
                found = Some(e.name.clone());
            }
        }
        found.map(|name| Caller {
            admin: self.policy.current().is_admin(&name),
            name,
        })
    }

    /// Resolves the caller (client certificate, else bearer token) and stores
    /// it in the request's extensions for handlers. A refusal is audited.
    #[allow(clippy::result_large_err)]
    pub fn intercept(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        match self.authenticate(&req) {
            Ok(caller) => {
                rpc::note(&req, |n| n.caller(caller.name.as_str()));
                req.extensions_mut().insert(caller);
                Ok(req)
            }
            Err(status) => {
                crate::metrics::record_denial(crate::metrics::Denial::Authentication);
                if let Some(audit) = &self.audit {
                    audit.record_denial(AuditEvent {
                        caller: None,
                        peer: req.remote_addr().map(|a| a.to_string()),
                        rpc: rpc_of(&req),
                        target: String::new(),
                        code: status.code(),
                        message: status.message().to_owned(),
                    });
                }
                Err(status)
            }
        }
    }

    #[allow(clippy::result_large_err)]
    fn authenticate(&self, req: &Request<()>) -> Result<Caller, Status> {
        let policy = self.policy.current();
        let certs = self.certs.as_ref().and_then(LiveTls::client_certs);
        let by_cert = match (certs, req.peer_certs()) {
            (Some(certs), Some(chain)) if !chain.is_empty() => {
                let refused =
                    |r: String| Status::unauthenticated(format!("client certificate: {r}"));
                let id = certs.identify(&chain).map_err(refused)?;
                Some(policy.caller_for_cert(&id.names).map_err(refused)?)
            }
            _ => None,
        };
        let by_token = match req.metadata().get("authorization") {
            Some(header) => Some(self.token_caller(header)?),
            None => None,
        };
        let name = match (by_cert, by_token) {
            (Some(c), Some(t)) if c != t => {
                return Err(Status::unauthenticated(format!(
                    "the client certificate names caller {c} but the bearer token is another caller's"
                )));
            }
            (Some(name), _) | (None, Some(name)) => name,
            (None, None) => {
                return Err(Status::unauthenticated(
                    "missing credentials: present a client certificate or send 'authorization: Bearer <token>'",
                ));
            }
        };
        Ok(Caller {
            admin: policy.is_admin(&name),
            name,
        })
    }

    #[allow(clippy::result_large_err)]
    fn token_caller(
        &self,
        header: &MetadataValue<tonic::metadata::Ascii>,
    ) -> Result<CallerName, Status> {
        let value = header
            .to_str()
            .map_err(|_| Status::unauthenticated("authorization metadata is not ASCII"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("authorization metadata must be 'Bearer <token>'")
            })?;
        self.authenticate_token(token.trim())
            .map(|c| c.name)
            .ok_or_else(|| Status::unauthenticated("unknown token"))
    }
}

/// The authenticated caller of a request, as put there by `Authenticator::intercept`.
#[allow(clippy::result_large_err)]
pub fn caller_of<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PolicyHandle {
        PolicyHandle::load(
            None,
            crate::policy::Settings {
                signers: vec![crate::domain::SignerName::parse("default").unwrap()],
                admins: vec![CallerName::parse("ops").unwrap()],
                default_rate: None,
            },
        )
        .unwrap()
    }

    fn auth() -> Authenticator {
        let specs = vec![
            format!("svc-a:{}", hash_token("token-a")),
            format!("ops:{}", hash_token("token-ops")),
        ];
        Authenticator::from_specs(&specs, policy()).unwrap()
    }

    #[test]
    fn a_known_token_resolves_to_its_caller() {
        let c = auth().authenticate_token("token-a").unwrap();
        assert_eq!(c.name.as_str(), "svc-a");
        assert!(!c.admin);
        assert!(auth().authenticate_token("token-ops").unwrap().admin);
    }

    #[test]
    fn an_unknown_token_resolves_to_nobody() {
        assert!(auth().authenticate_token("token-b").is_none());
    }

    #[test]
    fn missing_or_malformed_metadata_is_unauthenticated() {
        let a = auth();
        assert_eq!(
            a.intercept(Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut r = Request::new(());
        r.metadata_mut()
            .insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(
            a.intercept(r).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn a_bearer_token_puts_the_caller_in_the_extensions() {
        let mut r = Request::new(());
        r.metadata_mut()
            .insert("authorization", "Bearer token-a".parse().unwrap());
        let r = auth().intercept(r).unwrap();
        assert_eq!(caller_of(&r).unwrap().name.as_str(), "svc-a");
    }

    #[test]
    fn a_malformed_hash_in_the_config_is_rejected() {
        assert!(Authenticator::from_specs(&["x:abc".into()], policy()).is_err());
        assert!(Authenticator::from_specs(&["nocolon".into()], policy()).is_err());
    }

    #[test]
    fn a_caller_whose_token_hash_is_that_of_the_empty_string_is_refused() {
        assert_eq!(hex::encode(EMPTY_SHA256), hash_token(""));
        let specs = vec![
            format!("svc-a:{}", hash_token("token-a")),
            format!("lazy:{}", hash_token("")),
        ];
        let e = Authenticator::from_specs(&specs, policy())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("caller lazy") && e.contains("empty token"),
            "{e}"
        );
    }

    #[test]
    fn a_plain_caller_sees_only_its_own_links_and_an_admin_everyones() {
        let a = auth();
        let plain = a.authenticate_token("token-a").unwrap();
        assert!(plain.may_see_caller("svc-a"));
        assert!(!plain.may_see_caller("ops"));
        let admin = a.authenticate_token("token-ops").unwrap();
        assert!(admin.may_see_caller("svc-a") && admin.may_see_caller("anyone"));
    }
}
