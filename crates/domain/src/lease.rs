//! Which leases still count while the control plane cannot hear its workers.
//!
//! A lease is held while `lease_expires_at` lies ahead, decided in the same statement as the
//! fencing check. But a lease can only be renewed through the control plane and its database:
//! while either is unreachable, every worker's heartbeats fail and their leases run out with
//! the work still going. So after an outage (and after the control plane starts, since it
//! cannot know how long it was away) every lease that was alive when the outage began counts
//! as held for one more lease period: long enough for each worker's next heartbeat to renew
//! it, while a worker that is really gone is reaped one lease period later than usual.

use std::time::{Duration, SystemTime};

/// What one control-plane process has seen of its database, and the amnesty that follows an
/// outage. Pure: callers pass the time.
#[derive(Debug, Clone)]
pub struct LeaseClock {
    lease: Duration,
    /// When the database last answered.
    last_reached: Option<SystemTime>,
    /// Set while the database is unreachable: when it was last reached before that.
    outage_since: Option<Option<SystemTime>>,
    amnesty: Option<Amnesty>,
}

/// Leases that expired after `expired_after` (any, when `None`) count as held until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Amnesty {
    expired_after: Option<SystemTime>,
    until: SystemTime,
}

impl LeaseClock {
    /// A clock for a process starting at `now`: it knows nothing of the time before, so every
    /// lease counts for one lease period.
    pub fn new(lease: Duration, now: SystemTime) -> LeaseClock {
        LeaseClock {
            lease,
            last_reached: None,
            outage_since: None,
            amnesty: Some(Amnesty {
                expired_after: None,
                until: now + lease,
            }),
        }
    }

    /// The database answered at `now`. Ends an outage, starting its amnesty.
    pub fn reached(&mut self, now: SystemTime) {
        if let Some(since) = self.outage_since.take() {
            let expired_after = match (since, self.amnesty) {
                // An outage inside an amnesty extends it; an amnesty for any lease stays so.
                (_, Some(a)) if a.until > now && a.expired_after.is_none() => None,
                (since, Some(a)) if a.until > now => since.min(a.expired_after),
                (since, _) => since,
            };
            self.amnesty = Some(Amnesty {
                expired_after,
                until: now + self.lease,
            });
        }
        self.last_reached = Some(now);
    }

    /// The database could not be reached.
    pub fn unreachable(&mut self) {
        if self.outage_since.is_none() {
            self.outage_since = Some(self.last_reached);
        }
    }

    /// Leases that expired after the returned time still count as held (`UNIX_EPOCH`: any
    /// lease); `None`: only leases that have not expired.
    pub fn held_if_expired_after(&self, now: SystemTime) -> Option<SystemTime> {
        // While unreachable nothing is decided anyway; right after, the amnesty applies.
        let amnesty = self.amnesty.filter(|a| now < a.until)?;
        Some(amnesty.expired_after.unwrap_or(SystemTime::UNIX_EPOCH))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    #[test]
    fn a_starting_control_plane_holds_every_lease_for_one_lease_period() {
        let mut c = LeaseClock::new(LEASE, at(0));
        c.reached(at(1));
        assert_eq!(
            c.held_if_expired_after(at(29)),
            Some(SystemTime::UNIX_EPOCH)
        );
        assert_eq!(c.held_if_expired_after(at(30)), None);
    }

    #[test]
    fn an_outage_holds_the_leases_alive_when_it_began_for_one_lease_after_it_ends() {
        let mut c = LeaseClock::new(LEASE, at(0));
        c.reached(at(100));
        c.reached(at(110));
        assert_eq!(c.held_if_expired_after(at(111)), None);
        // Down from just after 110 until 200: longer than a lease.
        c.unreachable();
        c.unreachable();
        // Nothing is decided from the outage until the database answers again.
        assert_eq!(c.held_if_expired_after(at(150)), None);
        c.reached(at(200));
        assert_eq!(c.held_if_expired_after(at(201)), Some(at(110)));
        assert_eq!(c.held_if_expired_after(at(229)), Some(at(110)));
        assert_eq!(c.held_if_expired_after(at(230)), None);
    }

    #[test]
    fn an_outage_during_an_amnesty_keeps_what_the_amnesty_held() {
        let mut c = LeaseClock::new(LEASE, at(0));
        c.reached(at(100));
        c.unreachable();
        c.reached(at(120)); // amnesty for leases alive at 100, until 150
        c.unreachable();
        c.reached(at(140));
        assert_eq!(c.held_if_expired_after(at(141)), Some(at(100)));
        assert_eq!(c.held_if_expired_after(at(170)), None);
        // At start-up: an outage before the first contact keeps "any lease".
        let mut c = LeaseClock::new(LEASE, at(0));
        c.unreachable();
        c.reached(at(20));
        assert_eq!(
            c.held_if_expired_after(at(49)),
            Some(SystemTime::UNIX_EPOCH)
        );
    }
}
