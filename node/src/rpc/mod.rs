//! Internal RPC between members: a versioned binary framing ([`frame`]), the messages
//! ([`messages`]), a multiplexing client ([`client`]), a server ([`server`]), all over the
//! [`transport`] seam.

pub mod client;
pub mod frame;
pub mod messages;
pub mod server;
pub mod tls;
pub mod transport;

use thiserror::Error;

pub use client::RpcClient;
pub use messages::{ErrorCode, RemoteError, Request, Response};

#[derive(Debug, Error, Clone, PartialEq)]
pub enum RpcError {
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    #[error("request timed out")]
    Timeout,
    #[error("connection closed")]
    Closed,
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("protocol error: {0}")]
    Codec(String),
    #[error("peer answered with an error: {0:?}")]
    Remote(RemoteError),
    #[error("unexpected response to {0}")]
    Unexpected(&'static str),
}

impl RpcError {
    pub fn kind(&self) -> &'static str {
        match self {
            RpcError::Unreachable(_) => "unreachable",
            RpcError::Timeout => "timeout",
            RpcError::Closed => "closed",
            RpcError::Auth(_) => "auth",
            RpcError::Codec(_) => "codec",
            RpcError::Remote(_) => "remote",
            RpcError::Unexpected(_) => "unexpected",
        }
    }
}

impl From<frame::CodecError> for RpcError {
    fn from(e: frame::CodecError) -> Self {
        match e {
            frame::CodecError::Closed => RpcError::Closed,
            frame::CodecError::Io(e) => RpcError::Unreachable(e.to_string()),
            other => RpcError::Codec(other.to_string()),
        }
    }
}
