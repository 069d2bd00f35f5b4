//! Signed, expiring artifact URLs: `…/v1/artifacts/{id}?expires={unix}&signature={hex}` where the
//! signature is HMAC-SHA256 over `{id}:{expires}`. No bearer token is needed to follow one.

use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Clone)]
pub struct Signer {
    /// Never printed (see the Debug impl).
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(…)")
    }
}

impl Signer {
    pub fn new(key: &[u8]) -> Self {
        Signer { key: key.to_vec() }
    }

    /// A random key, for a single API process.
    pub fn random() -> Self {
        Signer::new(format!("{}{}", uuid::Uuid::new_v4(), uuid::Uuid::new_v4()).as_bytes())
    }

    pub fn sign(&self, artifact: uuid::Uuid, expires: i64) -> String {
        runlane_core::artifacts::hex(&self.mac(artifact, expires).finalize().into_bytes())
    }

    /// Checks the signature (in constant time) and the expiry against `now`.
    pub fn verify(&self, artifact: uuid::Uuid, expires: i64, signature: &str, now: i64) -> bool {
        let Some(bytes) = decode_hex(signature) else { return false };
        self.mac(artifact, expires).verify_slice(&bytes).is_ok() && expires > now
    }

    fn mac(&self, artifact: uuid::Uuid, expires: i64) -> Hmac<Sha256> {
        // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(format!("{artifact}:{expires}").as_bytes());
        mac
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_or_expiry_fails() {
        let s = Signer::new(b"k");
        let id = uuid::Uuid::new_v4();
        let sig = s.sign(id, 1000);
        assert!(s.verify(id, 1000, &sig, 999));
        assert!(!s.verify(id, 1000, &sig, 1000), "expired");
        assert!(!s.verify(id, 1001, &sig, 999), "expiry changed");
        assert!(!s.verify(uuid::Uuid::new_v4(), 1000, &sig, 999), "other artifact");
        assert!(!Signer::new(b"other").verify(id, 1000, &sig, 999), "other key");
        assert!(!s.verify(id, 1000, "zz", 999));
    }
}
