//! The one client-facing error type and its mapping to HTTP status and gRPC code (Triton's):
//! invalid argument -> 400 / INVALID_ARGUMENT, unknown model -> 404 / NOT_FOUND, no prediction
//! -> 503 / UNAVAILABLE, deadline expired -> 504 / DEADLINE_EXCEEDED, internal -> 500 /
//! INTERNAL, shed by admission -> 503 / UNAVAILABLE with Retry-After.

use crate::coded::FrontendError;
use crate::server::metrics::FailReason;

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    Unavailable,
    DeadlineExceeded,
    Internal,
    /// Shed by admission control (see [`crate::server::admission`]): 503 / UNAVAILABLE with a
    /// retry-after hint.
    Overloaded,
}

/// A client-facing error: kind and message.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    /// An invalid-argument error.
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// HTTP status code (Triton's mapping).
    pub fn http_status(&self) -> u16 {
        match self.kind {
            ErrorKind::InvalidArgument => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Unavailable | ErrorKind::Overloaded => 503,
            ErrorKind::DeadlineExceeded => 504,
            ErrorKind::Internal => 500,
        }
    }

    /// The gRPC status.
    pub fn grpc_status(&self) -> tonic::Status {
        let code = match self.kind {
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::Unavailable | ErrorKind::Overloaded => tonic::Code::Unavailable,
            ErrorKind::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            ErrorKind::Internal => tonic::Code::Internal,
        };
        let mut status = tonic::Status::new(code, self.message.clone());
        if self.kind == ErrorKind::Overloaded {
            let secs = crate::server::admission::retry_after_secs(crate::server::admission::DEFAULT_RETRY_AFTER);
            let md = status.metadata_mut();
            md.insert("retry-after", secs.into());
            md.insert("grpc-retry-pushback-ms", (secs * 1000).into());
        }
        status
    }

    pub(crate) fn fail_reason(&self) -> FailReason {
        match self.kind {
            ErrorKind::InvalidArgument | ErrorKind::NotFound => FailReason::Rejected,
            ErrorKind::DeadlineExceeded => FailReason::Canceled,
            ErrorKind::Unavailable | ErrorKind::Internal => FailReason::Backend,
            ErrorKind::Overloaded => FailReason::Rejected,
        }
    }
}

impl From<FrontendError> for ApiError {
    /// 400 for input that does not fit the model; 503 naming the failed instance and why
    /// for every prediction that could not be made.
    fn from(e: FrontendError) -> Self {
        let kind = match e {
            FrontendError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            FrontendError::Instance(_) | FrontendError::NotReconstructed(_) | FrontendError::Closed => ErrorKind::Unavailable,
        };
        Self::new(kind, e.to_string())
    }
}
