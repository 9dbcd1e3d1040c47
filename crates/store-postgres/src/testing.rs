//! For tests on a real PostgreSQL: the database scripts/test.sh creates for a run
//! (`POSTGRES_TEST_URL`), and schemas no other test uses.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::PostgresConfig;

/// The test database's URL.
///
/// # Panics
/// When `POSTGRES_TEST_URL` is not set: the test cannot run without a database.
pub fn url() -> String {
    std::env::var("POSTGRES_TEST_URL").unwrap_or_else(|_| {
        panic!("POSTGRES_TEST_URL is not set: run ./scripts/test.sh (it starts PostgreSQL and creates a test database)")
    })
}

/// A schema name no other test uses: this process, a counter, and the time.
pub fn fresh_schema() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("t_{}_{}_{nanos}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A configuration for a fresh schema of the test database.
pub fn config() -> PostgresConfig {
    PostgresConfig {
        url: url(),
        schema: fresh_schema(),
        pool_size: 4,
        statement_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
    }
}
