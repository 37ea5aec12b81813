//! One channel's rules, free of Durable Objects and D1: the log window (head and earliest
//! retained id), where a reader starts (`plan_replay`), how a poll page is cut (`poll`), and how
//! far a WebSocket subscriber may fall behind (`flow`), and what waits for an SSE client in
//! the Worker's bridge (`backlog`); both use one stall rule. Many channels on one connection:
//! a multi-channel poll page (`poll_many`) and a merged connection (`merge`). Who is on a
//! channel (`presence`).

pub mod backlog;
pub mod fanout;
pub mod flow;
pub mod merge;
pub mod page_cache;
pub mod poll;
pub mod poll_filtered;
pub mod poll_many;
pub mod presence;
pub mod retention;
pub mod subscriber;
pub mod tap;

/// What a channel holds: ids `earliest..=head` are retained. `head` is the last id ever given
/// (0 before the first publish); `earliest` is `head + 1` when nothing is retained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub head: u64,
    pub earliest: u64,
}

impl Window {
    pub const EMPTY: Window = Window {
        head: 0,
        earliest: 1,
    };

    pub fn retained(&self) -> u64 {
        (self.head + 1).saturating_sub(self.earliest)
    }
}

/// Where a reader with a cursor starts. The authoritative head (the Durable Object's) treats a
/// cursor from the future as a gap; the D1 mirror cannot tell the future from lag, so polls ask
/// with `ahead_is_lag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// No cursor: live only, starting after `head`.
    Live,
    /// Deliver ids after `after` (there may be none yet).
    After(u64),
    /// Events after `requested` are gone (pruned, or the cursor is ahead of the head): say so,
    /// then deliver from `earliest`.
    Gap { requested: u64, earliest: u64 },
}

pub fn plan_replay(cursor: Option<u64>, window: Window, ahead_is_lag: bool) -> Replay {
    let Some(since) = cursor else {
        return Replay::Live;
    };
    if since > window.head {
        return if ahead_is_lag {
            Replay::After(since)
        } else {
            Replay::Gap {
                requested: since,
                earliest: window.earliest,
            }
        };
    }
    // Events since+1 .. earliest-1 existed and are no longer retained.
    if since + 1 < window.earliest {
        Replay::Gap {
            requested: since,
            earliest: window.earliest,
        }
    } else {
        Replay::After(since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_table() {
        let w = |head, earliest| Window { head, earliest };
        let gap = |requested, earliest| Replay::Gap {
            requested,
            earliest,
        };
        for (cursor, window, lag, want) in [
            (None, w(10, 1), false, Replay::Live),
            (Some(0), Window::EMPTY, false, Replay::After(0)),
            (Some(0), w(10, 1), false, Replay::After(0)),
            (Some(10), w(10, 1), false, Replay::After(10)),
            (Some(4), w(10, 5), false, Replay::After(4)),
            (Some(3), w(10, 5), false, gap(3, 5)),
            (Some(0), w(10, 5), true, gap(0, 5)),
            (Some(11), w(10, 1), false, gap(11, 1)),
            (Some(11), w(10, 1), true, Replay::After(11)),
            // Everything purged: nothing retained, the cursor at the head is up to date.
            (Some(10), w(10, 11), false, Replay::After(10)),
            (Some(9), w(10, 11), false, gap(9, 11)),
        ] {
            assert_eq!(
                plan_replay(cursor, window, lag),
                want,
                "{cursor:?} {window:?} lag={lag}"
            );
        }
    }

    #[test]
    fn retained_counts() {
        assert_eq!(Window::EMPTY.retained(), 0);
        assert_eq!(
            Window {
                head: 10,
                earliest: 1
            }
            .retained(),
            10
        );
        assert_eq!(
            Window {
                head: 10,
                earliest: 11
            }
            .retained(),
            0
        );
    }
}
