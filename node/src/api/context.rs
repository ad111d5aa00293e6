//! The causal context as clients carry it: the `X-Dynamo-Context` header.
//!
//! A context is a version vector (what the client has seen of one key) that the cluster
//! signs before handing it out and checks when it comes back, so a client cannot make a
//! write replace versions it never read: a context from another cluster, one issued for
//! another key, or one whose counters were edited is refused (`400 bad_context`) instead
//! of being trusted. The encoding is base64url (no padding) of
//!
//! ```text
//! format (u8 = 2) ++ postcard(key hash u64, version vector) ++ HMAC-SHA256 tag (16 bytes)
//! ```
//!
//! The tag is keyed by the cluster token and covers the format byte and the body; the key
//! hash is the key's xxh3. Contexts are checked against every cluster token the member
//! accepts (`cluster_secrets`), so they keep working across restarts, rolling upgrades
//! and the middle of a token rotation; once a rotation drops the old token, contexts
//! signed with it are refused and the client reads again. Format 1 (unsigned, issued
//! before signing existed) is refused with a message that says to read again.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

use crate::clock::VersionVector;

/// Largest encoded context accepted from a client.
pub const MAX_CONTEXT_BYTES: usize = 4096;

const UNSIGNED_FORMAT: u8 = 1;
const SIGNED_FORMAT: u8 = 2;
const TAG_BYTES: usize = 16;
/// Keeps context tags apart from any other use of the cluster token as an HMAC key.
const DOMAIN: &[u8] = b"dynamo-rs context v2\0";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ContextError {
    #[error("the context is not valid base64url")]
    Base64,
    #[error("the context is longer than {MAX_CONTEXT_BYTES} bytes")]
    TooLong,
    #[error("the context is empty")]
    Empty,
    #[error("the context has unknown format version {0}")]
    Version(u8),
    #[error(
        "the context was issued by a version of dynamo-rs that did not sign contexts; read the key again and use the new context"
    )]
    Unsigned,
    #[error(
        "the context was not issued by this cluster (or was altered, or was signed with a cluster token no longer accepted); read the key again"
    )]
    NotIssuedHere,
    #[error("the context was issued for another key; send the context of a read of this key")]
    OtherKey,
    #[error("the context is malformed: {0}")]
    Malformed(&'static str),
}

/// Signs and checks contexts with the cluster's tokens.
#[derive(Clone)]
pub struct ContextCodec {
    /// One MAC per accepted token, keyed once; the first signs.
    macs: Vec<Hmac<Sha256>>,
}

impl std::fmt::Debug for ContextCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextCodec")
            .field("tokens", &self.macs.len())
            .finish()
    }
}

fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

impl ContextCodec {
    /// `secrets`: every cluster token accepted, the one to sign with first. HMAC takes
    /// keys of any length, so none is refused.
    pub fn new(secrets: &[Vec<u8>]) -> ContextCodec {
        ContextCodec {
            macs: secrets
                .iter()
                .filter_map(|s| Hmac::<Sha256>::new_from_slice(s).ok())
                .collect(),
        }
    }

    fn tag(mac: &Hmac<Sha256>, signed: &[u8]) -> [u8; TAG_BYTES] {
        let mut mac = mac.clone();
        mac.update(DOMAIN);
        mac.update(signed);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&full[..TAG_BYTES]);
        tag
    }

    /// The header value for `context`, a context of `key`.
    pub fn encode(&self, key: &[u8], context: &VersionVector) -> String {
        let mut buf = vec![SIGNED_FORMAT];
        // Encoding into a Vec cannot fail for these types.
        if let Ok(body) = postcard::to_stdvec(&(key_hash(key), context)) {
            buf.extend_from_slice(&body);
        }
        if let Some(mac) = self.macs.first() {
            let tag = Self::tag(mac, &buf);
            buf.extend_from_slice(&tag);
        }
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
    }

    /// A genuinely signed context whose body is `body` as given (for the fuzz targets, which
    /// must reach the decoding behind the signature check).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn sign_body_for_fuzzing(&self, body: &[u8]) -> String {
        let mut buf = vec![SIGNED_FORMAT];
        buf.extend_from_slice(body);
        if let Some(mac) = self.macs.first() {
            let tag = Self::tag(mac, &buf);
            buf.extend_from_slice(&tag);
        }
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
    }

    /// Checks and decodes a context a client sent with a write of `key`.
    pub fn decode(&self, key: &[u8], header: &str) -> Result<VersionVector, ContextError> {
        if header.len() > MAX_CONTEXT_BYTES {
            return Err(ContextError::TooLong);
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header.trim().as_bytes())
            .map_err(|_| ContextError::Base64)?;
        let (&format, _) = raw.split_first().ok_or(ContextError::Empty)?;
        match format {
            SIGNED_FORMAT => {}
            UNSIGNED_FORMAT => return Err(ContextError::Unsigned),
            other => return Err(ContextError::Version(other)),
        }
        if raw.len() < 1 + TAG_BYTES {
            return Err(ContextError::Malformed("shorter than its signature"));
        }
        let (signed, tag) = raw.split_at(raw.len() - TAG_BYTES);
        // Every accepted token is tried in full, so the time taken does not tell which
        // byte of a forged tag was wrong.
        let genuine = self.macs.iter().fold(false, |found, mac| {
            let expected = Self::tag(mac, signed);
            let same = expected
                .iter()
                .zip(tag)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0;
            found | same
        });
        if !genuine {
            return Err(ContextError::NotIssuedHere);
        }
        let ((hash, context), rest): ((u64, VersionVector), &[u8]) =
            postcard::take_from_bytes(&signed[1..])
                .map_err(|_| ContextError::Malformed("bad encoding"))?;
        if !rest.is_empty() {
            return Err(ContextError::Malformed("trailing bytes"));
        }
        if hash != key_hash(key) {
            return Err(ContextError::OtherKey);
        }
        Ok(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ActorId, Dot};

    fn vv(entries: &[(u64, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for &(a, c) in entries {
            v.add(Dot {
                actor: ActorId(a),
                counter: c,
            });
        }
        v
    }

    fn codec(token: &str) -> ContextCodec {
        ContextCodec::new(&[token.as_bytes().to_vec()])
    }

    #[test]
    fn round_trip() {
        let c = codec("cluster-a-token-0123456789");
        let v = vv(&[(7, 3), (9, 1)]);
        assert_eq!(c.decode(b"k", &c.encode(b"k", &v)), Ok(v));
        let empty = VersionVector::new();
        assert_eq!(c.decode(b"k", &c.encode(b"k", &empty)), Ok(empty));
    }

    #[test]
    fn a_context_from_another_cluster_is_refused() {
        let a = codec("cluster-a-token-0123456789");
        let b = codec("cluster-b-token-0123456789");
        let header = a.encode(b"k", &vv(&[(1, 2)]));
        assert_eq!(b.decode(b"k", &header), Err(ContextError::NotIssuedHere));
    }

    #[test]
    fn a_forged_counter_is_refused() {
        let c = codec("cluster-a-token-0123456789");
        let header = c.encode(b"k", &vv(&[(1, 2)]));
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&header)
            .unwrap();
        // Body: format, key hash (8 bytes varint-encoded), then the entries; rewrite the
        // counter by re-encoding the body with a larger one and keeping the old tag.
        let tag = raw.split_off(raw.len() - TAG_BYTES);
        let mut forged = vec![SIGNED_FORMAT];
        forged.extend(postcard::to_stdvec(&(key_hash(b"k"), vv(&[(1, 1_000_000)]))).unwrap());
        forged.extend(tag);
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged);
        assert_eq!(c.decode(b"k", &forged), Err(ContextError::NotIssuedHere));
        // Flipping any single byte of a genuine context is caught as well.
        let genuine = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&header)
            .unwrap();
        for i in 1..genuine.len() {
            let mut bad = genuine.clone();
            bad[i] ^= 0x01;
            let bad = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bad);
            assert!(
                c.decode(b"k", &bad).is_err(),
                "byte {i} flipped was accepted"
            );
        }
    }

    #[test]
    fn a_context_of_another_key_is_refused() {
        let c = codec("cluster-a-token-0123456789");
        let header = c.encode(b"key-one", &vv(&[(1, 2)]));
        assert_eq!(c.decode(b"key-two", &header), Err(ContextError::OtherKey));
    }

    #[test]
    fn contexts_survive_a_token_rotation_while_the_old_token_is_accepted() {
        let old = codec("old-cluster-token-0123456789");
        let header = old.encode(b"k", &vv(&[(4, 4)]));
        let rotating = ContextCodec::new(&[
            b"new-cluster-token-0123456789".to_vec(),
            b"old-cluster-token-0123456789".to_vec(),
        ]);
        assert_eq!(rotating.decode(b"k", &header), Ok(vv(&[(4, 4)])));
        let after = codec("new-cluster-token-0123456789");
        assert_eq!(
            after.decode(b"k", &header),
            Err(ContextError::NotIssuedHere)
        );
    }

    #[test]
    fn malformed_contexts_are_refused_with_their_reason() {
        let c = codec("cluster-a-token-0123456789");
        let b64 = |raw: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(c.decode(b"k", "!!!"), Err(ContextError::Base64));
        assert_eq!(c.decode(b"k", ""), Err(ContextError::Empty));
        assert_eq!(c.decode(b"k", &b64(&[9, 0])), Err(ContextError::Version(9)));
        // A context of the unsigned format 1 that earlier versions issued.
        assert_eq!(
            c.decode(b"k", &b64(&[1, 1, 7, 3])),
            Err(ContextError::Unsigned)
        );
        assert_eq!(
            c.decode(b"k", &"A".repeat(MAX_CONTEXT_BYTES + 1)),
            Err(ContextError::TooLong)
        );
        assert!(matches!(
            c.decode(b"k", &b64(&[2, 0, 0])),
            Err(ContextError::Malformed(_))
        ));
        // A genuinely signed body that is not a valid version vector (unsorted actors).
        let mut signed = vec![SIGNED_FORMAT];
        signed.extend(postcard::to_stdvec(&(key_hash(b"k"), vec![(9u64, 1u64), (7, 1)])).unwrap());
        let tag = ContextCodec::tag(&c.macs[0], &signed);
        signed.extend(tag);
        assert_eq!(
            c.decode(b"k", &b64(&signed)),
            Err(ContextError::Malformed("bad encoding"))
        );
    }

    proptest::proptest! {
        #[test]
        fn the_decoder_never_panics(s in ".{0,200}") {
            let _ = codec("cluster-a-token-0123456789").decode(b"k", &s);
        }
    }
}
