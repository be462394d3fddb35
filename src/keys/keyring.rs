//! Each signer's active key, shared by every request. Reads are a read-lock and an
//! Arc clone; a rotation swaps the entry.

use crate::signing::SigningKey;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

#[derive(Debug, Default, Clone)]
pub struct Keyring {
    active: Arc<RwLock<HashMap<String, Arc<SigningKey>>>>,
}

impl Keyring {
    pub fn active(&self, signer: &str) -> Option<Arc<SigningKey>> {
        self.active
            .read()
            .expect("keyring lock")
            .get(signer)
            .cloned()
    }

    /// The ids of every signer's active key.
    pub fn active_key_ids(&self) -> Vec<String> {
        let map = self.active.read().expect("keyring lock");
        map.values().map(|k| k.key_id.clone()).collect()
    }

    /// No signer has an active key: IssueLink refuses every request.
    pub fn is_empty(&self) -> bool {
        self.active.read().expect("keyring lock").is_empty()
    }

    pub fn install(&self, key: SigningKey) {
        let mut map = self.active.write().expect("keyring lock");
        map.insert(key.signer.clone(), Arc::new(key));
    }

    /// The signer has no active key (an emergency rotation is replacing it):
    /// its issuance pauses.
    pub fn remove_signer(&self, signer: &str) {
        self.active.write().expect("keyring lock").remove(signer);
    }
}
