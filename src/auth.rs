//! Who is calling. A caller presents a bearer token in the `authorization`
//! metadata; presignd holds only SHA-256 hashes of tokens and compares them in
//! constant time. The resolved `Caller` travels in the request's extensions, so
//! mTLS identities (later) plug in at the same seam.

use crate::domain::CallerName;
use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: CallerName,
    pub admin: bool,
}

#[derive(Clone)]
struct Entry {
    name: CallerName,
    token_sha256: [u8; 32],
}

/// The configured callers, by token hash.
#[derive(Clone, Default)]
pub struct Authenticator {
    entries: Arc<Vec<Entry>>,
    admins: Arc<Vec<CallerName>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field(
                "callers",
                &self
                    .entries
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

impl Authenticator {
    /// From `NAME:SHA256HEX` specs.
    pub fn from_specs(specs: &[String], admins: Vec<CallerName>) -> anyhow::Result<Self> {
        let mut entries = Vec::new();
        for spec in specs.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            let (name, hash) = spec
                .split_once(':')
                .with_context(|| format!("caller spec {spec:?}: expected NAME:SHA256HEX"))?;
            let name =
                CallerName::parse(name).with_context(|| format!("caller spec for {name:?}"))?;
            let bytes = hex::decode(hash)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .with_context(|| {
                    format!("caller {name}: token hash must be 64 hex characters (SHA-256 of the token; see `presignd hash-token`)")
                })?;
            if entries.iter().any(|e: &Entry| e.token_sha256 == bytes) {
                bail!("caller {name}: this token hash is already used by another caller");
            }
            entries.push(Entry {
                name,
                token_sha256: bytes,
            });
        }
        Ok(Self {
            entries: Arc::new(entries),
            admins: Arc::new(admins),
        })
    }

    /// The caller a bearer token belongs to. Every entry is compared, so the time
    /// taken does not tell which one matched.
    pub fn authenticate_token(&self, token: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for e in self.entries.iter() {
            if bool::from(e.token_sha256.ct_eq(&digest)) {
                found = Some(e.name.clone());
            }
        }
        found.map(|name| Caller {
            admin: self.admins.contains(&name),
            name,
        })
    }

    /// Resolves the caller from the request metadata and stores it in the
    /// request's extensions for handlers.
    #[allow(clippy::result_large_err)]
    pub fn intercept(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let header = req.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing credentials: send 'authorization: Bearer <token>'")
        })?;
        let value = header
            .to_str()
            .map_err(|_| Status::unauthenticated("authorization metadata is not ASCII"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("authorization metadata must be 'Bearer <token>'")
            })?;
        let caller = self
            .authenticate_token(token.trim())
            .ok_or_else(|| Status::unauthenticated("unknown token"))?;
        req.extensions_mut().insert(caller);
        Ok(req)
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

    fn auth() -> Authenticator {
        let specs = vec![
            format!("svc-a:{}", hash_token("token-a")),
            format!("ops:{}", hash_token("token-ops")),
        ];
        Authenticator::from_specs(&specs, vec![CallerName::parse("ops").unwrap()]).unwrap()
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
        assert!(Authenticator::from_specs(&["x:abc".into()], vec![]).is_err());
        assert!(Authenticator::from_specs(&["nocolon".into()], vec![]).is_err());
    }
}
