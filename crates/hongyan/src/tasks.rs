//! The node's periodic work, each on its own task until shutdown: refreshing the
//! datasource's system accounts, retention, and expiring temporary channels.

use std::sync::Arc;
use std::time::Duration;

use hongyan_core::Core;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Config;

/// Loads the datasource's system accounts now and again every `every`.
pub(crate) fn spawn_system_account_refresh(core: &Arc<Core>, every: Duration, shutdown: &CancellationToken) {
    spawn_periodic(core, every, shutdown, "system account refresh", |core| {
        if let Err(e) = core.refresh_system_accounts() {
            warn!(error = %e, "system accounts from the datasource not refreshed");
        }
    });
}

/// Runs the retention sweep at start-up and then every interval, if any is configured.
pub(crate) fn spawn_retention(core: &Arc<Core>, config: &Config, shutdown: &CancellationToken) {
    let rules = config.storage.retention();
    if rules.is_empty() {
        return;
    }
    let every = Duration::from_secs(config.storage.retention_sweep_interval_secs);
    spawn_periodic(core, every, shutdown, "retention sweep", move |core| match core.sweep_retention(&rules) {
        Ok(pruned) if pruned.messages > 0 => {
            info!(messages = pruned.messages, channels = pruned.channels, "retention sweep removed old messages");
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "retention sweep failed; retrying at the next interval"),
    });
}

/// Removes expired temporary channels (sends to a list of uids) at start-up and then
/// every retention sweep interval.
pub(crate) fn spawn_temp_channel_expiry(core: &Arc<Core>, config: &Config, shutdown: &CancellationToken) {
    let every = Duration::from_secs(config.storage.retention_sweep_interval_secs);
    let ttl = Duration::from_secs(config.delivery.temp_channel_ttl_secs);
    spawn_periodic(core, every, shutdown, "temporary channel expiry", move |core| {
        match core.expire_temp_channels(ttl) {
            Ok(0) => {}
            Ok(removed) => info!(removed, "temporary channels expired"),
            Err(e) => warn!(error = %e, "temporary channel expiry failed; retrying at the next interval"),
        }
    });
}

/// Runs `job` on the blocking pool now and then every `every`, until shutdown or until
/// the core is gone; a run that is late is not made up.
fn spawn_periodic(
    core: &Arc<Core>,
    every: Duration,
    shutdown: &CancellationToken,
    what: &'static str,
    job: impl Fn(&Core) + Send + Sync + 'static,
) {
    let (core, stop, job) = (Arc::downgrade(core), shutdown.clone(), Arc::new(job));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let Some(core) = core.upgrade() else { break };
            let job = job.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || job(&core)).await {
                warn!(error = %e, "{what} task failed");
            }
        }
    });
}
