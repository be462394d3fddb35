//! The registry's one error type. It names the statement that failed and says
//! what the failure means for the caller: the registry is *unavailable* (retry
//! later), a named constraint refused the change (a *conflict* with the
//! registry's state), or anything else (a *bug*). Every statement of the
//! registry returns it; the edge (`api::error`) maps it to gRPC once.

use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
#[error("registry statement {statement}: {source}")]
pub struct Error {
    /// `module::function` of the statement, e.g. `revocations::insert`.
    pub statement: &'static str,
    pub kind: ErrorKind,
    // Shared: a failed batch of link rows answers every request in it.
    #[source]
    source: Arc<sqlx::Error>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Postgres cannot be reached or answer now (connection, pool timeout, I/O,
    /// shutdown), or it aborted the transaction to break a deadlock or a
    /// serialization conflict: running it again may succeed.
    Unavailable,
    /// A named constraint refused the change: the registry's state forbids it.
    Conflict(Constraint),
    /// Anything else: a statement that should not fail.
    Bug,
}

/// The constraints a caller can run into, by the name migrations gave them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Constraint {
    /// `revocations_one_running_per_signer` (0002).
    OneRunningRevocationPerSigner,
    /// `signing_keys_one_active_per_signer` (0001).
    OneActiveKeyPerSigner,
}

impl Constraint {
    pub fn name(self) -> &'static str {
        match self {
            Self::OneRunningRevocationPerSigner => "revocations_one_running_per_signer",
            Self::OneActiveKeyPerSigner => "signing_keys_one_active_per_signer",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [
            Self::OneRunningRevocationPerSigner,
            Self::OneActiveKeyPerSigner,
        ]
        .into_iter()
        .find(|c| c.name() == name)
    }

    /// What the caller is told.
    pub fn message(self) -> &'static str {
        match self {
            Self::OneRunningRevocationPerSigner => {
                "a revocation is already running for this signer; follow it with GetRevocation (or ListRevocations) and retry once it finished"
            }
            Self::OneActiveKeyPerSigner => {
                "this signer got an active key meanwhile (another rotation or replica); re-plan and retry"
            }
        }
    }
}

impl Error {
    pub fn new(statement: &'static str, source: sqlx::Error) -> Self {
        Self {
            statement,
            kind: classify(&source),
            source: Arc::new(source),
        }
    }

    pub fn is_unavailable(&self) -> bool {
        self.kind == ErrorKind::Unavailable
    }

    /// The statement was cancelled by `statement_timeout` (query_canceled):
    /// the read pool's bound on a query, not an outage.
    pub fn is_statement_timeout(&self) -> bool {
        sqlstate(&self.source).is_some_and(|c| c == "57014")
    }

    /// Postgres aborted the transaction to break a lock conflict with another
    /// (deadlock_detected, serialization_failure): nothing was written.
    pub fn is_lock_conflict(&self) -> bool {
        sqlstate(&self.source).is_some_and(|c| matches!(c.as_str(), "40P01" | "40001"))
    }
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

fn classify(e: &sqlx::Error) -> ErrorKind {
    use sqlx::Error::*;
    match e {
        Io(_) | Tls(_) | PoolTimedOut | PoolClosed | WorkerCrashed | Protocol(_) => {
            ErrorKind::Unavailable
        }
        Database(db) => {
            if let Some(c) = db.constraint().and_then(Constraint::from_name) {
                return ErrorKind::Conflict(c);
            }
            match db.code().as_deref() {
                // admin_shutdown, crash_shutdown, cannot_connect_now,
                // too_many_connections; deadlock_detected, serialization_failure
                Some("57P01" | "57P02" | "57P03" | "53300" | "40P01" | "40001") => {
                    ErrorKind::Unavailable
                }
                _ => ErrorKind::Bug,
            }
        }
        _ => ErrorKind::Bug,
    }
}

/// Names the statement of a failed query: `.await.during("keys::get")`.
pub trait During<T> {
    fn during(self, statement: &'static str) -> Result<T, Error>;
}

impl<T> During<T> for Result<T, sqlx::Error> {
    fn during(self, statement: &'static str) -> Result<T, Error> {
        self.map_err(|e| Error::new(statement, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_timeout_is_unavailable_and_a_decode_error_a_bug() {
        assert_eq!(
            Error::new("x", sqlx::Error::PoolTimedOut).kind,
            ErrorKind::Unavailable
        );
        assert_eq!(
            Error::new("x", sqlx::Error::RowNotFound).kind,
            ErrorKind::Bug
        );
    }

    #[test]
    fn constraint_names_round_trip() {
        for c in [
            Constraint::OneRunningRevocationPerSigner,
            Constraint::OneActiveKeyPerSigner,
        ] {
            assert_eq!(Constraint::from_name(c.name()), Some(c));
        }
    }
}
