//! How database failures become [`StorageError`]s: the one place that
//! reads SQLSTATE codes.

use super::super::StorageError;

/// Maps a client error met while doing `action`.
///
/// A full disk is [`StorageError::Full`]; data the server reports corrupt
/// is [`StorageError::Corrupt`]; everything else — the server unreachable
/// or shutting down, a statement timeout, a failover to a read-only
/// standby, too many connections — is [`StorageError::Unavailable`], which
/// clients may retry.
pub fn storage_error(action: &str, error: &tokio_postgres::Error) -> StorageError {
    let Some(db) = error.as_db_error() else {
        // The cause (a TLS verification failure, a refused connection) is
        // in the source chain, not in the client error's own text.
        let mut message = format!("{action}: {error}");
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        return StorageError::Unavailable(message);
    };
    let code = db.code().code();
    let message = format!("{action}: {} (SQLSTATE {code})", db.message());
    match code {
        // disk_full
        "53100" => StorageError::Full(message),
        // data_corrupted, index_corrupted
        "XX001" | "XX002" => StorageError::Corrupt(message),
        _ => StorageError::Unavailable(message),
    }
}

/// Whether `error` concerns the connection rather than a statement: the
/// connection is then unusable and its transaction's fate unknown.
pub fn is_connection_error(error: &tokio_postgres::Error) -> bool {
    match error.as_db_error() {
        None => true,
        // admin_shutdown, crash_shutdown, cannot_connect_now, and the
        // connection_exception class: the server ends the session.
        Some(db) => {
            let code = db.code().code();
            matches!(code, "57P01" | "57P02" | "57P03") || code.starts_with("08")
        }
    }
}

/// Whether `error` only reports that an earlier statement of the same
/// transaction failed (`in_failed_sql_transaction`).
pub fn is_aborted_transaction(error: &tokio_postgres::Error) -> bool {
    error
        .as_db_error()
        .is_some_and(|db| db.code().code() == "25P02")
}

/// The same failure for another waiter (errors are not `Clone`).
pub fn copy_error(error: &StorageError) -> StorageError {
    match error {
        StorageError::Full(message) => StorageError::Full(message.clone()),
        StorageError::Corrupt(message) => StorageError::Corrupt(message.clone()),
        StorageError::OutOfOrder { id, start, tail } => StorageError::OutOfOrder {
            id: *id,
            start: *start,
            tail: *tail,
        },
        StorageError::UnknownStream(id) => StorageError::UnknownStream(*id),
        other => StorageError::Unavailable(other.to_string()),
    }
}

/// A database that did not answer `what` in time.
pub fn timed_out(what: &str) -> StorageError {
    StorageError::Unavailable(format!("the database did not answer {what} in time"))
}
