//! One paging scheme for every listing (ListLinks, ListRevocations,
//! ListAuditEvents, ReissueLinks): keyset pages newest first on `(time, id)`, the page-size
//! rule, and the page tokens that carry a position from one page to the next.
//!
//! A token is opaque to clients, tamper-evident, and opens only for the listing
//! and the filter it was issued for. Layout, base64url without padding (99
//! characters):
//! `version 2 (1) | listing (1) | time, µs since the epoch, i64 BE (8) | id (16) |
//!  filter digest (16) | HMAC-SHA256 of all the preceding bytes (32)`.
//! The filter digest is the first 16 bytes of SHA-256 over the filter's JSON
//! (for ListLinks after access scoping); the HMAC key is derived from the master
//! key with a fixed label. A token is a position, so it never expires; it stops
//! opening if the master key changes.
//!
//! Depends only on `seal` and `domain`: the services and the registry use it.

use crate::domain::FieldError;
use crate::seal::MasterKey;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::Zeroizing;

/// A page of `page_size` 0 holds this many rows.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Larger requests are served this many rows (AIP-158: coerce, do not fail).
pub const MAX_PAGE_SIZE: u32 = 1000;

const FIELD: &str = "page_token";
const VERSION: u8 = 2;
const BODY_LEN: usize = 1 + 1 + 8 + 16 + 16;
const TOKEN_LEN: usize = BODY_LEN + 32;

/// The rows a page holds for a requested `page_size`: 0 means the default,
/// and anything over the maximum is served the maximum (AIP-158).
pub fn page_size(requested: u32) -> u32 {
    match requested {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// Which listing a token belongs to: a token opens only for its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Links = 1,
    Revocations = 2,
    AuditEvents = 3,
    Reissue = 4,
}

impl Listing {
    fn rpc(self) -> &'static str {
        match self {
            Self::Links => "ListLinks",
            Self::Revocations => "ListRevocations",
            Self::AuditEvents => "ListAuditEvents",
            Self::Reissue => "ReissueLinks",
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        [
            Self::Links,
            Self::Revocations,
            Self::AuditEvents,
            Self::Reissue,
        ]
        .into_iter()
        .find(|l| *l as u8 == b)
    }
}

/// Where a page ends: its last row's position in `(time DESC, id DESC)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

/// One page asked for: where it starts and how many rows it holds.
#[derive(Debug)]
pub struct PageRequest {
    listing: Listing,
    digest: [u8; 16],
    /// Strictly after this position; `None` for the first page.
    pub after: Option<Cursor>,
    pub size: u32,
}

impl PageRequest {
    /// How many rows to fetch: one more than the page tells whether another
    /// page follows, so the last page never comes with a token to an empty one.
    pub fn fetch_limit(&self) -> i64 {
        i64::from(self.size) + 1
    }
}

#[derive(Clone)]
pub struct PageTokens {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for PageTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokens(<redacted>)")
    }
}

fn filter_digest(filter: &impl Serialize) -> [u8; 16] {
    let json = serde_json::to_vec(filter).expect("a filter serializes");
    Sha256::digest(json)[..16]
        .try_into()
        .expect("16 of 32 bytes")
}

impl PageTokens {
    pub fn new(master_key: &MasterKey) -> Self {
        Self {
            key: master_key.derive("presignd/v1/page-token"),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&*self.key).expect("HMAC accepts any key length")
    }

    /// Reads a request's `page_size` and `page_token` for `listing` with
    /// `filter`. A token this server did not issue for this same listing and
    /// filter is an INVALID_ARGUMENT naming `page_token`.
    pub fn request(
        &self,
        listing: Listing,
        filter: &impl Serialize,
        requested_size: u32,
        page_token: &str,
    ) -> Result<PageRequest, FieldError> {
        let digest = filter_digest(filter);
        let after = match page_token {
            "" => None,
            token => Some(self.open(listing, &digest, token)?),
        };
        Ok(PageRequest {
            listing,
            digest,
            after,
            size: page_size(requested_size),
        })
    }

    /// Cuts `rows` (fetched with `page.fetch_limit()`) to the page, and returns
    /// the token of the next page if there is one.
    pub fn next_page<T>(
        &self,
        page: &PageRequest,
        rows: &mut Vec<T>,
        cursor: impl Fn(&T) -> Cursor,
    ) -> Option<String> {
        if rows.len() <= page.size as usize {
            return None;
        }
        rows.truncate(page.size as usize);
        let last = rows.last().expect("a full page has a last row");
        Some(self.issue(page.listing, &page.digest, cursor(last)))
    }

    fn issue(&self, listing: Listing, digest: &[u8; 16], cursor: Cursor) -> String {
        let mut token = Vec::with_capacity(TOKEN_LEN);
        token.push(VERSION);
        token.push(listing as u8);
        token.extend_from_slice(&cursor.at.timestamp_micros().to_be_bytes());
        token.extend_from_slice(cursor.id.as_bytes());
        token.extend_from_slice(digest);
        let mut mac = self.mac();
        mac.update(&token);
        token.extend_from_slice(&mac.finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(token)
    }

    fn open(&self, listing: Listing, digest: &[u8; 16], token: &str) -> Result<Cursor, FieldError> {
        let forged = || {
            FieldError::new(
                FIELD,
                format!(
                    "is not a token from a previous {} response (altered or forged)",
                    listing.rpc()
                ),
            )
        };
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| forged())?;
        if bytes.first().is_some_and(|v| *v != VERSION) {
            return Err(FieldError::new(
                FIELD,
                "was issued by another version of presignd: start again without page_token",
            ));
        }
        if bytes.len() != TOKEN_LEN {
            return Err(forged());
        }
        let (body, tag) = bytes.split_at(BODY_LEN);
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(tag).map_err(|_| forged())?;
        let issued_for = Listing::from_byte(body[1]).ok_or_else(forged)?;
        if issued_for != listing {
            return Err(FieldError::new(
                FIELD,
                format!(
                    "was issued by {}, not {}: send it back to the listing that issued it",
                    issued_for.rpc(),
                    listing.rpc()
                ),
            ));
        }
        if body[26..42] != digest[..] {
            return Err(FieldError::new(
                FIELD,
                "was issued for another filter: send the same filter as the first page, or no page_token",
            ));
        }
        let micros = i64::from_be_bytes(body[2..10].try_into().expect("8 bytes"));
        Ok(Cursor {
            at: DateTime::from_timestamp_micros(micros).ok_or_else(forged)?,
            id: Uuid::from_slice(&body[10..26]).map_err(|_| forged())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> Cursor {
        Cursor {
            at: DateTime::from_timestamp(1_750_000_000, 123_000).unwrap(),
            id: Uuid::now_v7(),
        }
    }

    fn token(tokens: &PageTokens, listing: Listing, filter: &impl Serialize) -> String {
        tokens.issue(listing, &filter_digest(filter), cursor())
    }

    #[test]
    fn the_page_size_defaults_to_100_and_is_coerced_to_1000() {
        assert_eq!(page_size(0), 100);
        assert_eq!(page_size(1), 1);
        assert_eq!(page_size(1000), 1000);
        assert_eq!(page_size(1001), 1000);
        assert_eq!(page_size(u32::MAX), 1000);
    }

    #[test]
    fn a_token_opens_to_its_cursor_with_the_same_listing_and_filter() {
        let tokens = PageTokens::new(&MasterKey::generate());
        let c = cursor();
        let t = tokens.issue(Listing::Revocations, &filter_digest(&Some("a")), c);
        assert_eq!(t.len(), 99);
        let page = tokens
            .request(Listing::Revocations, &Some("a"), 7, &t)
            .unwrap();
        assert_eq!((page.after, page.size), (Some(c), 7));
    }

    #[test]
    fn a_token_with_any_character_changed_is_refused() {
        let tokens = PageTokens::new(&MasterKey::generate());
        let t = token(&tokens, Listing::Links, &());
        for i in 0..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(b).unwrap();
            let e = tokens
                .request(Listing::Links, &(), 0, &altered)
                .unwrap_err();
            assert_eq!(e.field, "page_token", "position {i}");
        }
        assert!(tokens.request(Listing::Links, &(), 0, "garbage!").is_err());
    }

    #[test]
    fn a_token_is_refused_by_another_listing_filter_or_master_key() {
        let tokens = PageTokens::new(&MasterKey::generate());
        let t = token(&tokens, Listing::AuditEvents, &Some("a"));
        let e = tokens
            .request(Listing::Revocations, &Some("a"), 0, &t)
            .unwrap_err();
        assert!(
            e.reason
                .contains("issued by ListAuditEvents, not ListRevocations"),
            "{e}"
        );
        let e = tokens
            .request(Listing::AuditEvents, &Some("b"), 0, &t)
            .unwrap_err();
        assert!(e.reason.contains("another filter"), "{e}");
        let other = PageTokens::new(&MasterKey::generate());
        let e = other
            .request(Listing::AuditEvents, &Some("a"), 0, &t)
            .unwrap_err();
        assert!(e.reason.contains("altered or forged"), "{e}");
    }

    #[test]
    fn a_version_1_token_is_refused_with_a_reason() {
        let tokens = PageTokens::new(&MasterKey::generate());
        let mut bytes = URL_SAFE_NO_PAD
            .decode(token(&tokens, Listing::Links, &()))
            .unwrap();
        bytes[0] = 1;
        let e = tokens
            .request(Listing::Links, &(), 0, &URL_SAFE_NO_PAD.encode(bytes))
            .unwrap_err();
        assert!(e.reason.contains("another version"), "{e}");
    }

    #[test]
    fn the_next_page_token_comes_only_with_a_full_page_and_more_rows() {
        let tokens = PageTokens::new(&MasterKey::generate());
        let page = tokens.request(Listing::Links, &(), 2, "").unwrap();
        assert_eq!(page.fetch_limit(), 3);
        let c = cursor();
        let mut rows = vec![cursor(), c, cursor()];
        let next = tokens.next_page(&page, &mut rows, |r| *r).unwrap();
        assert_eq!(rows.len(), 2);
        let then = tokens.request(Listing::Links, &(), 2, &next).unwrap();
        assert_eq!(then.after, Some(c));
        let mut last = vec![cursor(), cursor()];
        assert_eq!(tokens.next_page(&page, &mut last, |r| *r), None);
        assert_eq!(last.len(), 2);
    }
}
