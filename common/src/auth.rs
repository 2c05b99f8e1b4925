//! Mutual proof of a shared secret for the intercept ↔ copier handshake, without the secret on
//! the wire: each side sends an HMAC-SHA256 over both nonces, labelled with its role so that
//! neither proof can be replayed as the other. Verification compares in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::proto::{NONCE_LEN, PROOF_LEN};

pub type Nonce = [u8; NONCE_LEN];
pub type Proof = [u8; PROOF_LEN];

const INTERCEPT: &[u8] = b"xdpcopy intercept v2";
const COPIER: &[u8] = b"xdpcopy copier v2";

fn mac(secret: &[u8], role: &[u8], first: &Nonce, second: &Nonce) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(role);
    mac.update(first);
    mac.update(second);
    mac
}

/// The intercept's proof, in WELCOME: over the copier's nonce, then its own.
pub fn intercept_proof(secret: &[u8], copier_nonce: &Nonce, intercept_nonce: &Nonce) -> Proof {
    mac(secret, INTERCEPT, copier_nonce, intercept_nonce).finalize().into_bytes().into()
}

/// The copier's proof, in AUTH: over the intercept's nonce, then its own.
pub fn copier_proof(secret: &[u8], intercept_nonce: &Nonce, copier_nonce: &Nonce) -> Proof {
    mac(secret, COPIER, intercept_nonce, copier_nonce).finalize().into_bytes().into()
}

pub fn intercept_proof_holds(secret: &[u8], copier_nonce: &Nonce, intercept_nonce: &Nonce, proof: &Proof) -> bool {
    mac(secret, INTERCEPT, copier_nonce, intercept_nonce).verify_slice(proof).is_ok()
}

pub fn copier_proof_holds(secret: &[u8], intercept_nonce: &Nonce, copier_nonce: &Nonce, proof: &Proof) -> bool {
    mac(secret, COPIER, intercept_nonce, copier_nonce).verify_slice(proof).is_ok()
}

/// A fresh nonce from the kernel's random source.
pub fn nonce() -> Nonce {
    let mut n = [0; NONCE_LEN];
    getrandom::fill(&mut n).expect("the kernel's random source");
    n
}

/// A copier process's random identity (see [`crate::proto`]).
pub fn instance() -> u64 {
    let mut b = [0; 8];
    getrandom::fill(&mut b).expect("the kernel's random source");
    u64::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_side_proves_the_secret_and_a_proof_fits_only_its_role_and_nonces() {
        let (c, i) = ([1; NONCE_LEN], [2; NONCE_LEN]);
        let p = intercept_proof(b"secret", &c, &i);
        assert!(intercept_proof_holds(b"secret", &c, &i, &p));
        assert!(!intercept_proof_holds(b"other", &c, &i, &p), "another secret");
        assert!(!intercept_proof_holds(b"secret", &i, &c, &p), "nonces swapped");
        let q = copier_proof(b"secret", &i, &c);
        assert!(copier_proof_holds(b"secret", &i, &c, &q));
        assert!(!copier_proof_holds(b"secret", &c, &i, &p), "the intercept's proof is not the copier's");
        assert_ne!(nonce(), nonce());
    }
}
