//! Access-control events.

use ::metrics::counter;

use crate::metrics::name;

/// A request was refused by access control; `reason` is one of the fixed
/// reasons of `auth::Rejection::reason` and `auth::Denial::reason`.
pub(crate) struct AuthDenied {
    pub reason: &'static str,
    /// `401` or `403`.
    pub status: u16,
}

impl AuthDenied {
    pub(crate) fn emit(self) {
        counter!(name::AUTH_DENIED_TOTAL, "reason" => self.reason).increment(1);
        tracing::debug!(reason = self.reason, status = self.status, "access refused");
    }
}
