//! Sealing of secrets at rest: AES-256-GCM under a master key, with a random 96-bit
//! nonce per seal and the owner's id (the access key id) as associated data, so a
//! sealed secret copied onto another key's row does not open.

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Nonce};
use base64::Engine;
use zeroize::Zeroizing;

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "master key is malformed: expected 32 bytes as 64 hex characters or base64 (generate one with `openssl rand -hex 32`)"
    )]
    MalformedKey,
    #[error("sealed secret could not be opened: wrong master key, or the data was altered")]
    Open,
}

/// The key that seals every secret presignd stores. Never printed.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// Accepts 64 hex characters or standard base64 of 32 bytes; surrounding
    /// whitespace (a trailing newline in a file) is ignored.
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let text = text.trim();
        let bytes = Zeroizing::new(if text.len() == 64 {
            hex::decode(text).map_err(|_| SealError::MalformedKey)?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| SealError::MalformedKey)?
        });
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SealError::MalformedKey)?;
        Ok(Self(Zeroizing::new(key)))
    }

    pub fn generate() -> Self {
        let key = Aes256Gcm::generate_key(&mut OsRng);
        Self(Zeroizing::new(key.into()))
    }

    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(*self.0))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&*self.0).into())
    }

    /// nonce || ciphertext || tag
    pub fn seal(&self, owner: &str, plaintext: &[u8]) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = self
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: owner.as_bytes(),
                },
            )
            .expect("AES-GCM encryption cannot fail for inputs under 64 GiB");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// A subkey for another purpose (HMAC-SHA256 of the master key over a fixed
    /// label), so one secret in the config serves several jobs without any of
    /// them learning the master key.
    pub fn derive(&self, label: &str) -> Zeroizing<[u8; 32]> {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&*self.0)
            .expect("HMAC accepts any key length");
        mac.update(label.as_bytes());
        Zeroizing::new(mac.finalize().into_bytes().into())
    }

    pub fn open(&self, owner: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(SealError::Open);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: owner.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_with_the_same_key_and_owner() {
        let k = MasterKey::generate();
        let sealed = k.seal("GK123", b"the secret");
        assert_eq!(&**k.open("GK123", &sealed).unwrap(), b"the secret");
    }

    #[test]
    fn the_ciphertext_does_not_contain_the_plaintext() {
        let k = MasterKey::generate();
        let sealed = k.seal("GK123", b"the secret");
        assert!(!sealed.windows(10).any(|w| w == b"the secret"));
    }

    #[test]
    fn a_sealed_secret_moved_to_another_owner_does_not_open() {
        let k = MasterKey::generate();
        let sealed = k.seal("GK123", b"the secret");
        assert!(k.open("GK999", &sealed).is_err());
    }

    #[test]
    fn another_master_key_or_a_flipped_bit_does_not_open() {
        let k = MasterKey::generate();
        let mut sealed = k.seal("o", b"s");
        assert!(MasterKey::generate().open("o", &sealed).is_err());
        sealed[NONCE_LEN] ^= 1;
        assert!(k.open("o", &sealed).is_err());
    }

    #[test]
    fn a_master_key_parses_from_hex_or_base64_and_rejects_other_lengths() {
        let k = MasterKey::generate();
        let hex = k.to_hex();
        assert!(MasterKey::parse(&format!("{}\n", &*hex)).is_ok());
        let b64 = base64::engine::general_purpose::STANDARD.encode(hex::decode(&*hex).unwrap());
        assert!(MasterKey::parse(&b64).is_ok());
        assert!(matches!(
            MasterKey::parse("abcd"),
            Err(SealError::MalformedKey)
        ));
        assert!(matches!(MasterKey::parse(""), Err(SealError::MalformedKey)));
    }

    #[test]
    fn derived_keys_differ_by_label_and_from_the_master_key() {
        let k = MasterKey::generate();
        assert_eq!(*k.derive("a"), *k.derive("a"));
        assert_ne!(*k.derive("a"), *k.derive("b"));
        assert_ne!(hex::encode(*k.derive("a")), *k.to_hex());
    }

    #[test]
    fn debug_output_never_shows_the_master_key() {
        let k = MasterKey::generate();
        assert!(!format!("{k:?}").contains(&*k.to_hex()));
    }
}
