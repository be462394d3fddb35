//! ListLinks page tokens: opaque to clients, tamper-evident, bound to the filter
//! they were issued for.
//!
//! Layout, base64url without padding (87 characters):
//! `version (1) | issued_at, µs since the epoch, i64 BE (8) | id (16) |
//!  filter digest (16) | HMAC-SHA256 of all the preceding bytes (32)`.
//! The filter digest is the first 16 bytes of SHA-256 over the filter's canonical
//! JSON (after access scoping); the HMAC key is derived from the master key with a
//! fixed label. A token is a position, so it never expires; it stops opening if
//! the master key changes.

use crate::domain::FieldError;
use crate::registry::link_queries::{Cursor, LinkFilter};
use crate::seal::MasterKey;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::DateTime;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::Zeroizing;

const FIELD: &str = "page_token";
const VERSION: u8 = 1;
const BODY_LEN: usize = 1 + 8 + 16 + 16;
const TOKEN_LEN: usize = BODY_LEN + 32;

#[derive(Clone)]
pub struct PageTokens {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for PageTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokens(<redacted>)")
    }
}

fn filter_digest(filter: &LinkFilter) -> [u8; 16] {
    let json = serde_json::to_vec(filter).expect("a filter serializes");
    Sha256::digest(json)[..16]
        .try_into()
        .expect("16 of 32 bytes")
}

impl PageTokens {
    pub fn new(master_key: &MasterKey) -> Self {
        Self {
            key: master_key.derive("presignd/v1/list-links-page-token"),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&*self.key).expect("HMAC accepts any key length")
    }

    pub fn issue(&self, filter: &LinkFilter, cursor: Cursor) -> String {
        let mut token = Vec::with_capacity(TOKEN_LEN);
        token.push(VERSION);
        token.extend_from_slice(&cursor.issued_at.timestamp_micros().to_be_bytes());
        token.extend_from_slice(cursor.id.as_bytes());
        token.extend_from_slice(&filter_digest(filter));
        let mut mac = self.mac();
        mac.update(&token);
        token.extend_from_slice(&mac.finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(token)
    }

    /// The cursor of a token this server issued for this same filter; anything
    /// else is an INVALID_ARGUMENT naming `page_token`.
    pub fn open(&self, token: &str, filter: &LinkFilter) -> Result<Cursor, FieldError> {
        let forged = || {
            FieldError::new(
                FIELD,
                "is not a token from a previous ListLinks response (altered or forged)",
            )
        };
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| forged())?;
        if bytes.len() != TOKEN_LEN || bytes[0] != VERSION {
            return Err(forged());
        }
        let (body, tag) = bytes.split_at(BODY_LEN);
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(tag).map_err(|_| forged())?;
        if body[25..41] != filter_digest(filter) {
            return Err(FieldError::new(
                FIELD,
                "was issued for another filter: send the same filter as the first page, or no page_token",
            ));
        }
        let micros = i64::from_be_bytes(body[1..9].try_into().expect("8 bytes"));
        Ok(Cursor {
            issued_at: DateTime::from_timestamp_micros(micros).ok_or_else(forged)?,
            id: Uuid::from_slice(&body[9..25]).map_err(|_| forged())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> Cursor {
        Cursor {
            issued_at: DateTime::from_timestamp(1_750_000_000, 123_000).unwrap(),
            id: Uuid::now_v7(),
        }
    }

    fn by_bucket(b: &str) -> LinkFilter {
        LinkFilter {
            bucket: Some(b.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_token_opens_to_its_cursor_with_the_same_filter() {
        let tokens = PageTokens::new(&MasterKey::generate());
        let c = cursor();
        let t = tokens.issue(&by_bucket("a"), c);
        assert_eq!(tokens.open(&t, &by_bucket("a")).unwrap(), c);
    }

    #[test]
    fn a_token_with_any_character_changed_is_refused() {
        let tokens = PageTokens::new(&MasterKey::generate());
        let t = tokens.issue(&LinkFilter::default(), cursor());
        for i in 0..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(b).unwrap();
            let e = tokens.open(&altered, &LinkFilter::default()).unwrap_err();
            assert_eq!(e.field, "page_token", "position {i}");
        }
        assert!(tokens.open("garbage!", &LinkFilter::default()).is_err());
    }

    #[test]
    fn a_token_is_refused_with_another_filter_or_another_master_key() {
        let tokens = PageTokens::new(&MasterKey::generate());
        let t = tokens.issue(&by_bucket("a"), cursor());
        let e = tokens.open(&t, &by_bucket("b")).unwrap_err();
        assert!(e.reason.contains("another filter"), "{e}");
        let other = PageTokens::new(&MasterKey::generate());
        assert!(other.open(&t, &by_bucket("a")).is_err());
    }
}
