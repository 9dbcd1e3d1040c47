//! Connections that have not logged in yet: counted in total and per IP address, so a
//! flood of connections that never log in cannot take the server's memory or file
//! descriptors from the clients that do.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The count of connections not logged in yet.
#[derive(Debug, Default)]
pub(crate) struct PreAuth {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place among those not logged in; given back when dropped (the
/// login completed or failed, or the connection went away).
#[derive(Debug)]
pub(crate) struct Ticket {
    owner: Arc<PreAuth>,
    ip: Option<IpAddr>,
}

impl PreAuth {
    /// A place for a new connection from `ip` (`None`: not counted per address), or the
    /// reason it gets none (for metrics).
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Ticket, &'static str> {
        if self.total.fetch_add(1, Ordering::Relaxed) >= max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err("too_many_unauthenticated");
        }
        if let Some(ip) = ip {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let count = per_ip.entry(ip).or_default();
            if *count >= max_per_ip {
                drop(per_ip);
                self.total.fetch_sub(1, Ordering::Relaxed);
                return Err("too_many_unauthenticated_per_ip");
            }
            *count += 1;
        }
        metrics::gauge!("hongyan_gateway_unauthenticated").increment(1);
        Ok(Ticket { owner: self.clone(), ip })
    }

    #[cfg(test)]
    fn counts(&self, ip: IpAddr) -> (usize, usize) {
        let per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        (self.total.load(Ordering::Relaxed), per_ip.get(&ip).copied().unwrap_or(0))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.owner.total.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("hongyan_gateway_unauthenticated").decrement(1);
        if let Some(ip) = self.ip {
            let mut per_ip = self.owner.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_in_total_and_per_address_and_gives_places_back() {
        let pre = Arc::new(PreAuth::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t1 = pre.admit(Some(a), 3, 2).unwrap();
        let t2 = pre.admit(Some(a), 3, 2).unwrap();
        assert_eq!(pre.admit(Some(a), 3, 2).unwrap_err(), "too_many_unauthenticated_per_ip");
        let t3 = pre.admit(Some(b), 3, 2).unwrap();
        assert_eq!(pre.admit(None, 3, 2).unwrap_err(), "too_many_unauthenticated");
        assert_eq!(pre.counts(a), (3, 2));
        drop(t1);
        assert_eq!(pre.counts(a), (2, 1));
        let t4 = pre.admit(Some(a), 3, 2).unwrap();
        drop((t2, t3, t4));
        assert_eq!(pre.counts(a), (0, 0));
        assert!(pre.per_ip.lock().unwrap().is_empty(), "no entry is kept for an address with nothing pending");
    }
}
