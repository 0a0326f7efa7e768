//! What can go wrong talking to NATS. Every variant keeps the error it came from
//! ([`std::error::Error::source`]), and [`BusError::kind`] says what a caller can branch on.

use sluice_core::CodecError;

/// The error a NATS client call failed with.
pub type Source = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(
        "cannot connect to NATS at {url}: {source} (is nats-server running, and does it take these credentials? `sluice up` starts one)"
    )]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("failed to set up {what}: {source}")]
    Setup {
        what: String,
        source: Source,
        /// JetStream did not answer or had no leader yet (a cluster electing one): the
        /// same setup is likely to work a moment later.
        transient: bool,
    },
    #[error("failed to publish to {subject}: {source}")]
    Publish {
        subject: String,
        source: Source,
        transient: bool,
    },
    /// A conditional publish found another message last on its subject.
    #[error("{subject} has a newer message than expected")]
    NotLast { subject: String },
    #[error("failed to read from {what}: {source}")]
    Read { what: String, source: Source },
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// What kind of failure a [`BusError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusErrorKind {
    /// The server could not be reached at all.
    Connect,
    /// A stream, consumer or subscription could not be set up.
    Setup,
    /// A publish was not acknowledged, or was refused.
    Publish,
    /// A conditional publish lost: another message is last on the subject.
    NotLast,
    /// A read, fetch or acknowledgement failed.
    Read,
    /// A message could not be encoded or decoded.
    Codec,
}

impl BusError {
    pub fn kind(&self) -> BusErrorKind {
        match self {
            Self::Connect { .. } => BusErrorKind::Connect,
            Self::Setup { .. } => BusErrorKind::Setup,
            Self::Publish { .. } => BusErrorKind::Publish,
            Self::NotLast { .. } => BusErrorKind::NotLast,
            Self::Read { .. } => BusErrorKind::Read,
            Self::Codec(_) => BusErrorKind::Codec,
        }
    }

    /// Worth retrying: the server did not answer in time or the connection dropped.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Publish { transient, .. } | Self::Setup { transient, .. } => *transient,
            Self::Read { .. } | Self::Connect { .. } => true,
            Self::NotLast { .. } | Self::Codec(_) => false,
        }
    }

    pub fn read(what: impl Into<String>, source: impl Into<Source>) -> Self {
        Self::Read {
            what: what.into(),
            source: source.into(),
        }
    }

    pub fn setup(what: impl Into<String>, source: impl Into<Source>) -> Self {
        Self::Setup {
            what: what.into(),
            source: source.into(),
            transient: false,
        }
    }

    /// A setup step JetStream did not answer, or answered that it is not available yet.
    pub fn setup_unavailable(what: impl Into<String>, source: impl Into<Source>) -> Self {
        Self::Setup {
            what: what.into(),
            source: source.into(),
            transient: true,
        }
    }
}
