//! `X-Hook-Signature`: the lowercase hex HMAC-SHA512 of the raw body, keyed with the shared
//! secret. Checked on the bytes as received, before any parsing, in constant time.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha512;

type HmacSha512 = Hmac<Sha512>;

/// A body whose signature verified (or whose check is switched off). Only [`Verifier::verify`]
/// makes one, so the handler cannot parse an unverified body by mistake.
#[derive(Debug)]
pub struct VerifiedBody(Bytes);

impl VerifiedBody {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The body itself, to be held until NetBox's main confirms it.
    pub fn bytes(&self) -> Bytes {
        self.0.clone()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("X-Hook-Signature header is missing")]
    Missing,
    #[error("X-Hook-Signature is not a hex HMAC-SHA512")]
    NotHex,
    #[error("X-Hook-Signature does not match any configured secret")]
    Mismatch,
}

/// Holds the accepted secrets; several at once so that a secret can be rotated without downtime.
pub struct Verifier {
    secrets: Vec<SecretString>,
    required: bool,
}

impl Verifier {
    pub fn new(secrets: Vec<SecretString>, required: bool) -> Self {
        Verifier { secrets, required }
    }

    pub fn verify(
        &self,
        header: Option<&[u8]>,
        body: Bytes,
    ) -> Result<VerifiedBody, SignatureError> {
        if !self.required {
            return Ok(VerifiedBody(body));
        }
        let header = header.ok_or(SignatureError::Missing)?;
        let signature = hex::decode(header.trim_ascii()).map_err(|_| SignatureError::NotHex)?;
        if signature.len() != 64 {
            return Err(SignatureError::NotHex);
        }
        let matches = |secret: &SecretString| {
            mac(secret.expose_secret()).is_some_and(|mut mac| {
                mac.update(&body);
                mac.verify_slice(&signature).is_ok()
            })
        };
        match self.secrets.iter().any(matches) {
            true => Ok(VerifiedBody(body)),
            false => Err(SignatureError::Mismatch),
        }
    }
}

fn mac(secret: &str) -> Option<HmacSha512> {
    HmacSha512::new_from_slice(secret.as_bytes()).ok()
}

/// The signature NetBox would send for `body`: for tests, benchmarks and local experiments,
/// never called on a request path.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = mac(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn verifier(secrets: &[&str]) -> Verifier {
        Verifier::new(
            secrets
                .iter()
                .map(|s| SecretString::from(s.to_string()))
                .collect(),
            true,
        )
    }

    #[test]
    fn any_configured_secret_verifies_for_rotation() {
        let body = Bytes::from_static(b"{\"event\":\"created\"}");
        let v = verifier(&["old", "new"]);
        let signature = sign("new", &body);
        assert!(v.verify(Some(signature.as_bytes()), body.clone()).is_ok());
        let upper = signature.to_uppercase();
        assert!(v.verify(Some(upper.as_bytes()), body.clone()).is_ok());
        let other = sign("other", &body);
        assert_eq!(
            v.verify(Some(other.as_bytes()), body.clone()).unwrap_err(),
            SignatureError::Mismatch
        );
        assert_eq!(
            v.verify(None, body.clone()).unwrap_err(),
            SignatureError::Missing
        );
        assert_eq!(
            v.verify(Some(b"zz"), body.clone()).unwrap_err(),
            SignatureError::NotHex
        );
        assert_eq!(
            v.verify(Some(b"abcd"), body).unwrap_err(),
            SignatureError::NotHex
        );
    }

    #[test]
    fn the_check_can_be_switched_off_for_experiments() {
        let v = Verifier::new(Vec::new(), false);
        assert!(v.verify(None, Bytes::from_static(b"{}")).is_ok());
    }

    proptest! {
        #[test]
        fn a_signed_body_verifies_and_any_flipped_byte_fails(
            body in proptest::collection::vec(any::<u8>(), 1..512),
            index in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let v = verifier(&["fixture-secret"]);
            let signature = sign("fixture-secret", &body);
            prop_assert!(v.verify(Some(signature.as_bytes()), Bytes::from(body.clone())).is_ok());
            let mut tampered = body.clone();
            tampered[index.index(body.len())] ^= flip;
            let result = v.verify(Some(signature.as_bytes()), Bytes::from(tampered));
            prop_assert_eq!(result.unwrap_err(), SignatureError::Mismatch);
        }
    }
}
