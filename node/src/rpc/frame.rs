//! The internal RPC wire format.
//!
//! Every frame is `length (u32 BE, of what follows) ++ protocol version (u8) ++ request id
//! (u64 BE) ++ body`, the body being a [`FrameBody`] in postcard (compact varint) form.
//! A connection starts with a mutual challenge-response on the cluster secret (HMAC-SHA256
//! over both nonces and both member ids), so a process without the secret can neither
//! call a member nor impersonate one; only then are requests accepted. Request ids let
//! many requests share one connection, answered in any order.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::messages::{Request, Response};
use crate::ring::MemberId;

/// Bumped whenever a message's encoding changes (postcard has no field tags, so members of
/// different versions cannot decode each other). 2: a member's gossiped state gained
/// `acked_epoch`.
pub const PROTOCOL_VERSION: u8 = 2;
/// Frames above this size are refused (values are limited far below it).
pub const MAX_FRAME_BYTES: usize = 64 << 20;
/// Frames read before the other side has proven the cluster secret (Hello, Challenge,
/// Proof, Welcome, Refused) are refused above this size: they hold two ids, a nonce and a
/// proof, and a connection that has proven nothing must not make a member reserve
/// [`MAX_FRAME_BYTES`] (24 such connections once took a member from 20 MB to 1.3 GB).
pub const MAX_HANDSHAKE_FRAME_BYTES: usize = 4 << 10;
const HEADER_BYTES: usize = 1 + 8;

pub type Nonce = [u8; 32];
pub type Proof = [u8; 32];

#[derive(Debug, Error)]
pub enum CodecError {
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("frame too short")]
    TooShort,
    #[error("peer speaks protocol version {0}, this member speaks {PROTOCOL_VERSION}")]
    Version(u8),
    #[error("undecodable frame: {0}")]
    Decode(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FrameBody {
    Hello {
        member: MemberId,
        nonce: Nonce,
    },
    Challenge {
        member: MemberId,
        nonce: Nonce,
        proof: Proof,
    },
    Proof {
        proof: Proof,
    },
    Welcome,
    Refused {
        reason: String,
    },
    Request(Request),
    Response(Response),
}

impl FrameBody {
    /// A short name for logs and refusals: a frame's contents come from the peer and may
    /// be large, so they are not printed.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameBody::Hello { .. } => "hello",
            FrameBody::Challenge { .. } => "challenge",
            FrameBody::Proof { .. } => "proof",
            FrameBody::Welcome => "welcome",
            FrameBody::Refused { .. } => "refused",
            FrameBody::Request(r) => r.kind(),
            FrameBody::Response(_) => "response",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub id: u64,
    pub body: FrameBody,
}

pub fn encode(frame: &Frame) -> Result<Vec<u8>, CodecError> {
    // Sized first: a frame is one allocation with its values copied once, and one too
    // large is refused before any of it is written.
    let body_len = postcard::experimental::serialized_size(&frame.body)
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    let len = HEADER_BYTES + body_len;
    if len > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge(len));
    }
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    buf.push(PROTOCOL_VERSION);
    buf.extend_from_slice(&frame.id.to_be_bytes());
    postcard::to_extend(&frame.body, buf).map_err(|e| CodecError::Decode(e.to_string()))
}

/// Decodes one frame's bytes (everything after the length prefix).
pub fn decode(bytes: &[u8]) -> Result<Frame, CodecError> {
    if bytes.len() < HEADER_BYTES {
        return Err(CodecError::TooShort);
    }
    let version = bytes[0];
    if version != PROTOCOL_VERSION {
        return Err(CodecError::Version(version));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[1..9]);
    let (body, rest): (FrameBody, &[u8]) =
        postcard::take_from_bytes(&bytes[9..]).map_err(|e| CodecError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::Decode("trailing bytes".into()));
    }
    Ok(Frame {
        id: u64::from_be_bytes(id),
        body,
    })
}

/// Reads one frame of an authenticated connection (up to [`MAX_FRAME_BYTES`]).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, CodecError> {
    read_frame_limited(r, MAX_FRAME_BYTES).await
}

/// Reads one frame, refusing it from its length prefix alone when it declares more than
/// `max_bytes`: nothing is allocated for a frame that is refused.
pub async fn read_frame_limited<R: AsyncRead + Unpin>(
    r: &mut R,
    max_bytes: usize,
) -> Result<Frame, CodecError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(CodecError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max_bytes.min(MAX_FRAME_BYTES) {
        return Err(CodecError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    decode(&buf)
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), CodecError> {
    let buf = encode(frame)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

fn keyed_mac(
    secret: &[u8],
    role: &str,
    client: (&MemberId, &Nonce),
    server: (&MemberId, &Nonce),
) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(b"dynamo-rpc-v1/");
    mac.update(role.as_bytes());
    for part in [
        client.0.as_str().as_bytes(),
        client.1,
        server.0.as_str().as_bytes(),
        server.1,
    ] {
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part);
    }
    Some(mac)
}

/// The proof that the party speaking for `role` knows the secret, bound to both nonces and
/// both identities so it cannot be replayed on another connection.
pub fn proof(
    secret: &[u8],
    role: &str,
    client: (&MemberId, &Nonce),
    server: (&MemberId, &Nonce),
) -> Proof {
    keyed_mac(secret, role, client, server).map_or([0; 32], |m| m.finalize().into_bytes().into())
}

/// Constant-time check of a received proof.
pub fn verify(
    secret: &[u8],
    role: &str,
    client: (&MemberId, &Nonce),
    server: (&MemberId, &Nonce),
    got: &Proof,
) -> bool {
    keyed_mac(secret, role, client, server).is_some_and(|m| m.verify_slice(got).is_ok())
}

/// Whether the proof was made with any of the accepted secrets (during a token rotation a
/// member accepts the old and the new one).
pub fn verify_any(
    secrets: &[Vec<u8>],
    role: &str,
    client: (&MemberId, &Nonce),
    server: (&MemberId, &Nonce),
    got: &Proof,
) -> bool {
    secrets.iter().any(|s| verify(s, role, client, server, got))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let f = Frame {
            id: 42,
            body: FrameBody::Request(Request::Ping),
        };
        let bytes = encode(&f).unwrap();
        assert_eq!(decode(&bytes[4..]).unwrap(), f);
    }

    #[test]
    fn rejects_other_versions_and_garbage() {
        let f = Frame {
            id: 1,
            body: FrameBody::Welcome,
        };
        let mut bytes = encode(&f).unwrap();
        let other = PROTOCOL_VERSION + 1;
        bytes[4] = other;
        assert!(matches!(decode(&bytes[4..]), Err(CodecError::Version(v)) if v == other));
        assert!(matches!(decode(&[1, 0]), Err(CodecError::TooShort)));
        assert!(matches!(
            decode(&[PROTOCOL_VERSION, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]),
            Err(CodecError::Decode(_))
        ));
    }

    #[tokio::test]
    async fn read_refuses_oversized_length() {
        let mut input: &[u8] = &(u32::MAX).to_be_bytes();
        assert!(matches!(
            read_frame(&mut input).await,
            Err(CodecError::TooLarge(_))
        ));
    }

    #[tokio::test]
    async fn handshake_limit_refuses_a_large_declared_frame_before_reading_it() {
        // A hello-sized frame passes the handshake limit.
        let hello = encode(&Frame {
            id: 0,
            body: FrameBody::Hello {
                member: MemberId::new("m".repeat(63)),
                nonce: [7; 32],
            },
        })
        .unwrap();
        assert!(hello.len() < MAX_HANDSHAKE_FRAME_BYTES);
        let mut input: &[u8] = &hello;
        assert!(
            read_frame_limited(&mut input, MAX_HANDSHAKE_FRAME_BYTES)
                .await
                .is_ok()
        );

        // One byte over the limit is refused from the prefix: the body is never read (it
        // is not even there), so nothing of its size was allocated or awaited.
        let over = (MAX_HANDSHAKE_FRAME_BYTES as u32 + 1).to_be_bytes();
        let mut input: &[u8] = &over;
        assert!(matches!(
            read_frame_limited(&mut input, MAX_HANDSHAKE_FRAME_BYTES).await,
            Err(CodecError::TooLarge(n)) if n == MAX_HANDSHAKE_FRAME_BYTES + 1
        ));
        // The same declared size is accepted once authenticated (and then waits for the
        // body, which here is missing).
        let mut input: &[u8] = &over;
        assert!(matches!(
            read_frame(&mut input).await,
            Err(CodecError::Io(_))
        ));
        // A limit above the global one does not raise it.
        let mut input: &[u8] = &((MAX_FRAME_BYTES as u32) + 1).to_be_bytes();
        assert!(matches!(
            read_frame_limited(&mut input, usize::MAX).await,
            Err(CodecError::TooLarge(_))
        ));
    }

    #[test]
    fn proofs_bind_secret_role_and_nonces() {
        let (a, b) = (MemberId::new("a"), MemberId::new("b"));
        let (na, nb) = ([1u8; 32], [2u8; 32]);
        let p = proof(b"secret", "client", (&a, &na), (&b, &nb));
        assert!(verify(b"secret", "client", (&a, &na), (&b, &nb), &p));
        assert!(!verify(b"other", "client", (&a, &na), (&b, &nb), &p));
        assert!(!verify(b"secret", "server", (&a, &na), (&b, &nb), &p));
        assert!(!verify(b"secret", "client", (&a, &nb), (&b, &na), &p));
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }
    }
}
