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

/// What a copier answers an intercept's WELCOME with (its AUTH proof), or why it must not
/// go on: the intercept proves the secret first, and a copier with a secret trusts no
/// intercept without one. Without a secret the answer is zeros (the intercept may refuse it).
pub fn copier_answer(
    secret: Option<&[u8]>,
    authenticates: bool,
    ours: &Nonce,
    theirs: &Nonce,
    proof: &Proof,
) -> Result<Proof, &'static str> {
    match (secret, authenticates) {
        (Some(s), true) if intercept_proof_holds(s, ours, theirs, proof) => Ok(copier_proof(s, theirs, ours)),
        (Some(_), true) => Err("the intercept does not know our secret"),
        (Some(_), false) => {
            Err("the intercept runs without a secret; this copier has one (--secret-file on both, or on neither)")
        }
        (None, _) => Ok([0; PROOF_LEN]),
    }
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

    #[test]
    fn a_copier_answers_only_an_intercept_that_proved_the_secret() {
        let (ours, theirs) = ([1; NONCE_LEN], [2; NONCE_LEN]);
        let proof = intercept_proof(b"k", &ours, &theirs);
        assert_eq!(copier_answer(Some(b"k"), true, &ours, &theirs, &proof), Ok(copier_proof(b"k", &theirs, &ours)));
        assert!(copier_answer(Some(b"other"), true, &ours, &theirs, &proof).is_err());
        assert!(copier_answer(Some(b"k"), false, &ours, &theirs, &[0; PROOF_LEN]).is_err(), "no secret there");
        assert_eq!(copier_answer(None, true, &ours, &theirs, &proof), Ok([0; PROOF_LEN]));
    }
}
