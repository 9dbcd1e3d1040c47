//! Whether storage can still be trusted: the first failure, kept for good.
//!
//! Storage is fail-stop. The first engine failure (an I/O error, a full disk, a panic
//! inside the engine, a failed commit of the message log) is recorded here once, with
//! its reason and time; from then on the node refuses work, says so in its health
//! reports, and the binary exits after a grace period so that a supervisor restarts it
//! on a store it can trust again.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use crate::{Result, StoreError};

/// The first storage failure of this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What failed, for operators.
    pub reason: String,
    /// When, in milliseconds since the epoch.
    pub at_ms: i64,
}

/// Shared by a backend and everything that writes through it.
#[derive(Debug, Default)]
pub struct Health {
    failure: OnceLock<Failure>,
    failed: Notify,
    /// Since when the engine cannot be reached (a database that is down), if it cannot
    /// now: transient, cleared by the next operation that reaches it.
    unreachable: Mutex<Option<Failure>>,
}

impl Health {
    /// A healthy record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a failure. Only the first one is kept and logged, so a failing store
    /// produces one log line, not one per refused operation. Returns whether this call
    /// was the first.
    pub fn fail(&self, reason: impl Into<String>) -> bool {
        let at_ms = now_ms();
        let mut first = false;
        let failure = self.failure.get_or_init(|| {
            first = true;
            Failure { reason: reason.into(), at_ms }
        });
        if first {
            tracing::error!(reason = %failure.reason, "storage failed: this node refuses work from now on (fail-stop)");
            metrics::gauge!("hongyan_storage_failed").set(1.0);
            self.failed.notify_waiters();
        }
        first
    }

    /// The first failure, if any.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.get()
    }

    /// Whether storage has failed.
    pub fn has_failed(&self) -> bool {
        self.failure.get().is_some()
    }

    /// Records that the engine cannot be reached now (logged once per outage).
    pub fn set_unreachable(&self, reason: impl Into<String>) {
        let mut unreachable = self.unreachable.lock().unwrap_or_else(PoisonError::into_inner);
        if unreachable.is_none() {
            let reason = reason.into();
            tracing::error!(%reason, "storage unreachable: refusing work until it is back");
            metrics::gauge!("hongyan_storage_unreachable").set(1.0);
            *unreachable = Some(Failure { reason, at_ms: now_ms() });
        }
    }

    /// Records that the engine was reached (ends an outage).
    pub fn set_reachable(&self) {
        let mut unreachable = self.unreachable.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(outage) = unreachable.take() {
            tracing::warn!(since_ms = outage.at_ms, "storage reachable again");
            metrics::gauge!("hongyan_storage_unreachable").set(0.0);
        }
    }

    /// Since when, and why, the engine cannot be reached, if it cannot now.
    pub fn unreachable(&self) -> Option<Failure> {
        self.unreachable.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// What makes this store unfit for work now: its failure (for good), or an outage.
    pub fn problem(&self) -> Option<Failure> {
        self.failure().cloned().or_else(|| self.unreachable())
    }

    /// Resolves once storage has failed (at once if it already has).
    pub async fn wait_failed(&self) -> Failure {
        loop {
            let notified = self.failed.notified();
            if let Some(failure) = self.failure() {
                return failure.clone();
            }
            notified.await;
        }
    }

    /// Runs an engine call: a panic becomes an error, and an engine error (not a
    /// refusal of bad input) is recorded as this store's failure.
    pub(crate) fn guard<T>(&self, what: &str, call: impl FnOnce() -> Result<T>) -> Result<T> {
        let result = catch_unwind(AssertUnwindSafe(call))
            .unwrap_or_else(|panic| Err(StoreError::Engine(format!("{what} panicked: {}", panic_message(&*panic)))));
        if let Err(StoreError::Engine(reason)) = &result {
            self.fail(format!("{what}: {reason}"));
        }
        result
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_failure_only() {
        let health = Health::new();
        assert!(!health.has_failed());
        assert!(health.fail("disk full"));
        assert!(!health.fail("later"));
        assert_eq!(health.failure().map(|f| f.reason.as_str()), Some("disk full"));
    }

    #[test]
    fn guard_turns_panics_and_engine_errors_into_failures_but_not_bad_input() {
        let health = Health::new();
        let refused: Result<()> = health.guard("write", || Err(StoreError::TooLong { what: "key" }));
        assert!(matches!(refused, Err(StoreError::TooLong { .. })));
        assert!(!health.has_failed(), "bad input is the caller's problem, not the store's");
        let panicked: Result<()> = health.guard("write", || panic!("keys can be 65535 bytes in length"));
        assert!(matches!(panicked, Err(StoreError::Engine(ref m)) if m.contains("65535")));
        assert!(health.failure().is_some_and(|f| f.reason.contains("panicked")));
    }

    #[test]
    fn an_outage_is_reported_until_the_engine_is_reached_again_and_is_not_a_failure() {
        let health = Health::new();
        health.set_unreachable("connection refused");
        health.set_unreachable("still refused");
        assert_eq!(health.unreachable().map(|f| f.reason), Some("connection refused".to_owned()));
        assert_eq!(health.problem().map(|f| f.reason), Some("connection refused".to_owned()));
        assert!(!health.has_failed());
        health.set_reachable();
        assert!(health.unreachable().is_none() && health.problem().is_none());
    }

    #[tokio::test]
    async fn wait_failed_wakes_on_the_failure() {
        let health = std::sync::Arc::new(Health::new());
        let waiter = tokio::spawn({
            let health = health.clone();
            async move { health.wait_failed().await }
        });
        tokio::task::yield_now().await;
        health.fail("io error");
        let failure = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(failure.reason, "io error");
    }
}
