//! Failures sorted by what is known about them: unreachable (nothing applied, retry
//! later), a commit whose outcome is unknown, or anything else (fail-stop).

use deadpool_postgres::PoolError;

/// A failure, by what is known about it.
#[derive(Debug)]
pub(crate) enum Fault {
    /// The database could not be reached; nothing was applied.
    Unreachable(String),
    /// A row that had to be new exists (a unique violation); nothing was applied.
    Conflict(String),
    /// Anything else, including a commit whose outcome is unknown.
    Failed(String),
}

/// SQLSTATE of a unique violation.
pub(crate) const UNIQUE_VIOLATION: &str = "23505";

/// SQLSTATE classes and codes that mean "not reachable now": connection exceptions,
/// the server shutting down or starting, too many connections, and a cancelled
/// statement (the statement timeout).
pub(crate) fn transient(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300" | "57014")
}

/// Sorts an error that came before any commit was sent.
pub(crate) fn fault(e: &tokio_postgres::Error) -> Fault {
    let text = describe(e);
    if let Some(db) = e.as_db_error() {
        return match db.code().code() {
            // Another writer's row, or a concurrent transaction the database refused
            // (serialization failure, deadlock): nothing applied, the database is fine.
            UNIQUE_VIOLATION | "40001" | "40P01" => Fault::Conflict(text),
            code if transient(code) => Fault::Unreachable(text),
            _ => Fault::Failed(text),
        };
    }
    let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io { Fault::Unreachable(text) } else { Fault::Failed(text) }
}

/// Sorts an error of the `COMMIT` itself: only the server's own answer says the
/// transaction did not commit; a connection lost meanwhile leaves it unknown.
pub(crate) fn commit_fault(e: &tokio_postgres::Error) -> Fault {
    match e.as_db_error() {
        Some(_) => fault(e),
        None => Fault::Failed(format!("commit outcome unknown: {}", describe(e))),
    }
}

pub(crate) fn pool_fault(e: PoolError) -> Fault {
    match e {
        // A connection that cannot be opened is an unreachable database, whatever the
        // reason (refused, timed out, login failed while it restarts).
        PoolError::Backend(e) => Fault::Unreachable(describe(&e)),
        other => Fault::Unreachable(format!("no connection: {other}")),
    }
}

pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => std::error::Error::source(e).map_or_else(|| e.to_string(), |s| format!("{e}: {s}")),
    }
}
