//! The dashboards' read side of the registry: one link by id, filtered listings
//! paged by keyset, summaries per key / signer / bucket / caller, and "which link
//! is this URL?" with the blast radius of revoking its key.
//!
//! Access: admins read every link. Other callers read only their own links (the
//! `caller` filter is forced to their name, and a link of someone else is
//! NOT_FOUND), and do not see blast radii, which describe other callers' links.
//! `scope` and `may_read` are the one place that policy lives.

use crate::auth::Caller;
use crate::domain::{FieldError, PresignedUrl};
use crate::paging::{Cursor, Listing, PageTokens};
use crate::registry::link_queries::{self, LinkFilter};
use crate::registry::link_summary::{self, GroupBy, SummaryRow};
use crate::registry::links::{self, BlastRadius, LinkRow};
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
    #[error("registry unavailable: {0}")]
    RegistryUnavailable(#[source] sqlx::Error),
    #[error("registry error: {0}")]
    Registry(#[source] sqlx::Error),
}

impl From<sqlx::Error> for DashboardError {
    fn from(e: sqlx::Error) -> Self {
        metrics::record_registry_error("dashboard");
        if registry::is_unavailable(&e) {
            Self::RegistryUnavailable(e)
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
    pub pool: PgPool,
    pub tokens: PageTokens,
}

impl Dashboard {
    pub async fn get(&self, caller: &Caller, id: Uuid) -> Result<LinkRow, DashboardError> {
        links::get(&self.pool, id)
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
            link_queries::list_page(&self.pool, &filter, page.after, page.fetch_limit()).await?;
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
        Ok(link_summary::summarize(&self.pool, &filter, group_by).await?)
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
        let not_found =
            || DashboardError::NotFound("no link issued by presignd has this URL".into());
        let link = links::find_by_signature(&self.pool, &url.signature_sha256())
            .await?
            .filter(|l| {
                url.addresses(&l.bucket, &l.object_key)
                    && url.access_key_id() == l.key_id
                    && url.signed_at() == l.issued_at
                    && may_read(caller, l)
            })
            .ok_or_else(not_found)?;
        let blast_radius = match caller.admin {
            true => links::blast_radius(&mut *self.pool.acquire().await?, &link.key_id).await?,
            false => None,
        };
        Ok(Lookup { link, blast_radius })
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
