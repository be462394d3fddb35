//! The dashboards' read side of the registry: one link by id, filtered listings
//! paged by keyset, summaries per key / signer / bucket / caller, and "which link
//! is this URL?" with the blast radius of revoking its key.
//!
//! Access: admins read every link. Other callers read only their own links (the
//! `caller` filter is forced to their name, and a link of someone else is
//! NOT_FOUND), and do not see blast radii, which describe other callers' links.
//! `scope` and `may_read` are the one place that policy lives.
//!
//! Isolation: every read (these, and KeyService's listings) first takes a token
//! from the caller's read quota (`ReadLimits`, separate from IssueLink's), and
//! runs on the read pool: its own few connections, each statement under a
//! timeout. A flood of full-scan summaries waits for those connections, or is
//! refused, but never takes one IssueLink needs.

mod verify;

pub use verify::{StoreAnswer, Subject, Verdict, Verification, judge};

use crate::auth::Caller;
use crate::domain::{FieldError, PresignedUrl};
use crate::paging::{Cursor, Listing, PageTokens};
use crate::ratelimit::{RateLimited, ReadLimits};
use crate::registry::audit::AuditRow;
use crate::registry::keys::KeySummaryRow;
use crate::registry::link_queries::{self, LinkFilter};
use crate::registry::link_summary::{self, GroupBy, SummaryRow};
use crate::registry::links::{self, BlastRadius, LinkRow};
use crate::registry::revocations::RevocationRow;
use crate::registry::signers::SignerRow;
use crate::{metrics, registry};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error(transparent)]
    InvalidArgument(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error(transparent)]
    Registry(registry::Error),
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
    #[error("the query ran past the read statement timeout; narrow the filter")]
    TimedOut,
    /// VerifyLink could not sign its probe.
    #[error("{0}")]
    Probe(String),
}

impl From<registry::Error> for DashboardError {
    fn from(e: registry::Error) -> Self {
        metrics::record_registry_error("dashboard");
        if e.is_statement_timeout() {
            Self::TimedOut
        } else {
            Self::Registry(e)
        }
    }
}

/// A page of links and, if more match, the token of the next page.
#[derive(Debug)]
pub struct Page {
    pub links: Vec<LinkRow>,
    pub next_page_token: Option<String>,
}

/// The link a URL belongs to; the blast radius of its key for admins.
#[derive(Debug)]
pub struct Lookup {
    pub link: LinkRow,
    pub blast_radius: Option<BlastRadius>,
}

/// Narrows `filter` to what `caller` may read.
pub fn scope(caller: &Caller, mut filter: LinkFilter) -> Result<LinkFilter, DashboardError> {
    if caller.admin {
        return Ok(filter);
    }
    let own = caller.name.as_str();
    match filter.caller.as_deref() {
        None => filter.caller = Some(own.to_owned()),
        Some(c) if c == own => {}
        Some(_) => {
            return Err(DashboardError::PermissionDenied(
                "filter.caller: only admins may read other callers' links".into(),
            ));
        }
    }
    Ok(filter)
}

/// Whether `caller` may see `link`.
pub fn may_read(caller: &Caller, link: &LinkRow) -> bool {
    caller.admin || link.caller == caller.name.as_str()
}

#[derive(Clone)]
pub struct Dashboard {
    /// The read pool (`registry::read_pool`), not IssueLink's: on the primary.
    pub pool: PgPool,
    /// Where GetLink, ListLinks and SummarizeLinks read: a read pool on the
    /// replica (`--read-database-url`), else `pool` itself. A replica shows
    /// what it has replayed: a link just issued may be NOT_FOUND there for
    /// the replication lag. LookupLink (the incident path, next to a
    /// revocation), VerifyLink (by id as by URL), KeyService's listings and
    /// everything that decides read the primary.
    pub replica: PgPool,
    pub tokens: PageTokens,
    pub reads: ReadLimits,
}

impl Dashboard {
    /// Takes one token of `caller`'s read quota: every read RPC calls this
    /// first, so even a refused request costs one.
    pub fn admit(&self, caller: &Caller) -> Result<(), DashboardError> {
        Ok(self.reads.check(&caller.name)?)
    }

    /// GetLink: on the replica.
    pub async fn get(&self, caller: &Caller, id: Uuid) -> Result<LinkRow, DashboardError> {
        self.get_from(&self.replica, caller, id).await
    }

    /// The link `id` as `pool` has it, if `caller` may see it.
    async fn get_from(
        &self,
        pool: &PgPool,
        caller: &Caller,
        id: Uuid,
    ) -> Result<LinkRow, DashboardError> {
        links::get(pool, id)
            .await?
            .filter(|link| may_read(caller, link))
            .ok_or_else(|| DashboardError::NotFound(format!("no link {id}")))
    }

    pub async fn list(
        &self,
        caller: &Caller,
        filter: LinkFilter,
        requested_page_size: u32,
        page_token: &str,
    ) -> Result<Page, DashboardError> {
        let filter = scope(caller, filter)?;
        // The token binds the scoped filter: what this caller was shown.
        let page = self
            .tokens
            .request(Listing::Links, &filter, requested_page_size, page_token)?;
        let mut rows =
            link_queries::list_page(&self.replica, &filter, page.after, page.fetch_limit()).await?;
        let next_page_token = self.tokens.next_page(&page, &mut rows, |r| Cursor::from(r));
        Ok(Page {
            links: rows,
            next_page_token,
        })
    }

    pub async fn summarize(
        &self,
        caller: &Caller,
        filter: LinkFilter,
        group_by: GroupBy,
    ) -> Result<Vec<SummaryRow>, DashboardError> {
        let filter = scope(caller, filter)?;
        Ok(link_summary::summarize(&self.replica, &filter, group_by).await?)
    }

    /// ListSigningKeys: the signers and their keys with outstanding counts.
    pub async fn signing_keys(
        &self,
        signer: Option<&str>,
    ) -> Result<(Vec<SignerRow>, Vec<KeySummaryRow>), DashboardError> {
        let signers = registry::signers::list(&self.pool)
            .await?
            .into_iter()
            .filter(|s| signer.is_none_or(|n| n == s.name))
            .collect();
        let keys = registry::keys::list_with_outstanding(&self.pool, signer).await?;
        Ok((signers, keys))
    }

    /// ListRevocations: newest first, after the keyset cursor.
    pub async fn revocations(
        &self,
        signer: Option<&str>,
        after: Option<Cursor>,
        limit: i64,
    ) -> Result<Vec<RevocationRow>, DashboardError> {
        Ok(registry::revocations::list(&self.pool, signer, after, limit).await?)
    }

    /// ListAuditEvents: newest first, after the keyset cursor.
    pub async fn audit_events(
        &self,
        caller: Option<&str>,
        after: Option<Cursor>,
        limit: i64,
    ) -> Result<Vec<AuditRow>, DashboardError> {
        Ok(registry::audit::list(&self.pool, caller, after, limit).await?)
    }

    /// The link `url` was issued as. Found by the hash of its signature, then
    /// checked against what the URL says (bucket, key, access key, signing time):
    /// a URL presignd did not issue, or one whose signature was altered, matches
    /// no row and is NOT_FOUND.
    pub async fn lookup(
        &self,
        caller: &Caller,
        url: &PresignedUrl,
    ) -> Result<Lookup, DashboardError> {
        let link = self.lookup_link(caller, url).await?;
        let blast_radius = match caller.admin {
            true => {
                let mut snapshot = registry::begin_snapshot(&self.pool).await?;
                links::blast_radius(&mut snapshot, &link.key_id).await?
            }
            false => None,
        };
        Ok(Lookup { link, blast_radius })
    }

    /// The link `url` was issued as, if `caller` may read it.
    async fn lookup_link(
        &self,
        caller: &Caller,
        url: &PresignedUrl,
    ) -> Result<LinkRow, DashboardError> {
        let not_found =
            || DashboardError::NotFound("no link issued by presignd has this URL".into());
        let signature = url.signature_sha256();
        links::find_by_signature(&self.pool, url.access_key_id(), &signature, url.signed_at())
            .await?
            .filter(|l| url.addresses(&l.bucket, &l.object_key) && may_read(caller, l))
            .ok_or_else(not_found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CallerName;

    fn caller(name: &str, admin: bool) -> Caller {
        Caller {
            name: CallerName::parse(name).unwrap(),
            admin,
        }
    }

    #[test]
    fn an_admin_reads_every_callers_links() {
        let f = LinkFilter {
            caller: Some("other".into()),
            ..Default::default()
        };
        assert_eq!(scope(&caller("ops", true), f.clone()).unwrap(), f);
        assert_eq!(
            scope(&caller("ops", true), LinkFilter::default())
                .unwrap()
                .caller,
            None
        );
    }

    #[test]
    fn a_non_admin_is_narrowed_to_its_own_links() {
        let svc = caller("svc", false);
        let f = scope(&svc, LinkFilter::default()).unwrap();
        assert_eq!(f.caller.as_deref(), Some("svc"));
        let own = LinkFilter {
            caller: Some("svc".into()),
            ..Default::default()
        };
        assert_eq!(scope(&svc, own.clone()).unwrap(), own);
        let other = LinkFilter {
            caller: Some("other".into()),
            ..Default::default()
        };
        assert!(matches!(
            scope(&svc, other),
            Err(DashboardError::PermissionDenied(_))
        ));
    }
}
