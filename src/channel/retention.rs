//! Retention: at most `RETAIN_EVENTS` events and `RETAIN_SECONDS` of age per channel. Pure
//! arithmetic here; the channel object runs the deletes (on publish and by alarm) and the mirror
//! prunes D1 in step. Ids are never reused: pruning moves `earliest`, never `head`.

/// The retention policy in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub max_events: u64,
    pub max_age_ms: i64,
}

/// What to delete now: every id up to `through_id`, and every event stored at or before
/// `before_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prune {
    pub through_id: u64,
    pub before_ms: i64,
}

impl Policy {
    pub fn new(max_events: u64, max_age_s: u64) -> Policy {
        let max_age_ms = i64::try_from(max_age_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        Policy {
            max_events: max_events.max(1),
            max_age_ms,
        }
    }

    /// The deletes that bring a log with last id `head` within the policy at `now_ms`.
    pub fn prune(&self, head: u64, now_ms: i64) -> Prune {
        Prune {
            through_id: head.saturating_sub(self.max_events),
            before_ms: now_ms.saturating_sub(self.max_age_ms),
        }
    }

    /// When the oldest retained event (stored at `oldest_ms`) falls out by age: the time for the
    /// next alarm. `None` when nothing is retained, so no alarm is kept for an empty log.
    pub fn next_expiry(&self, oldest_ms: Option<i64>) -> Option<i64> {
        oldest_ms.map(|t| t.saturating_add(self.max_age_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_table() {
        let p = Policy::new(3, 10);
        assert_eq!(
            p.prune(2, 50_000),
            Prune {
                through_id: 0,
                before_ms: 40_000
            }
        );
        assert_eq!(
            p.prune(10, 50_000),
            Prune {
                through_id: 7,
                before_ms: 40_000
            }
        );
        assert_eq!(
            p.prune(0, 5_000),
            Prune {
                through_id: 0,
                before_ms: -5_000
            }
        );
    }

    #[test]
    fn alarms_only_while_something_is_retained() {
        let p = Policy::new(1000, 60);
        assert_eq!(p.next_expiry(None), None);
        assert_eq!(p.next_expiry(Some(1_000)), Some(61_000));
    }

    #[test]
    fn zero_and_huge_settings_stay_sane() {
        let p = Policy::new(0, u64::MAX);
        assert_eq!(p.max_events, 1);
        assert_eq!(p.max_age_ms, i64::MAX);
        assert_eq!(p.prune(5, 0).before_ms, i64::MIN + 1);
    }
}
