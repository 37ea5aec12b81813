//! Flow control for WebSocket subscribers. The runtime does not say how much waits for a socket
//! (workerd's WebSocket has no `bufferedAmount`), so the client says how far it got: it sends
//! `{"op":"cursor","id":N}` as it reads, and the channel's object counts the bytes of event frames
//! it sent after the last reported id. A socket with more than its window unconfirmed, and no
//! report for `STALL_MS` while it had something to confirm, is closed with 4001 and resumes from
//! its cursor.
//!
//! Byte counts are positions in the channel's stream of event frames: `bytes_at(n)` is the size
//! of every event frame through id `n`. The log stores each event's starting position, so a
//! report of any id is one lookup, and a socket's unconfirmed bytes are one subtraction.

use serde::{Deserialize, Serialize};

/// How long a socket over its window may go without reporting before it is dropped: a socket
/// that is still reading (a large replay, a burst) reports within this time.
pub const STALL_MS: i64 = 1000;

/// How far a socket has confirmed, kept in its attachment so it survives hibernation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    /// The last id the client reported, or where its delivery started.
    pub cursor: u64,
    /// The stream position at `cursor`.
    pub bytes: u64,
    /// When `cursor` last moved, unix milliseconds.
    pub at_ms: i64,
}

/// What a report does to a socket's credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The cursor moved forward: look up its position and store the new credit.
    Advance(u64),
    /// Nothing new (the same or an older id): nothing changes, not even the time, so a client
    /// cannot stay connected by repeating an old cursor without reading.
    Stale,
    /// The id was never sent: a client error.
    Ahead { sent: u64 },
}

impl Credit {
    pub fn new(cursor: u64, bytes: u64, now_ms: i64) -> Credit {
        Credit {
            cursor,
            bytes,
            at_ms: now_ms,
        }
    }

    /// Bytes of event frames sent after the confirmed cursor, when the stream is at `end`.
    pub fn unconfirmed(&self, end: u64) -> u64 {
        end.saturating_sub(self.bytes)
    }

    /// True when the socket should be dropped before more is sent to it: more than `window`
    /// unconfirmed, and no report for `STALL_MS` while it had something to confirm. That silence
    /// starts at the later of its last report and `sent_ms(cursor)`, when the first event after
    /// its cursor was sent (asked only when over the window): a socket that had confirmed
    /// everything and then sat idle owes nothing for the idle time, so a burst after a pause
    /// gives it `STALL_MS` to read, as any other burst does.
    pub fn too_slow(
        &self,
        end: u64,
        window: u64,
        now_ms: i64,
        sent_ms: impl FnOnce(u64) -> Option<i64>,
    ) -> bool {
        if self.unconfirmed(end) <= window {
            return false;
        }
        let owed_since = sent_ms(self.cursor).map_or(self.at_ms, |sent| sent.max(self.at_ms));
        now_ms.saturating_sub(owed_since) >= STALL_MS
    }

    /// Where a paced replay stops: events whose frames start before this position are sent,
    /// so a socket is never more than its window (plus the frame that crosses it) ahead of
    /// its reports.
    pub fn replay_limit(&self, window: u64) -> u64 {
        self.bytes.saturating_add(window)
    }

    /// True when a socket held at its window by a paced replay has not reported for
    /// `STALL_MS`: it is closed with 4001 and resumes from its cursor, so a client that does not
    /// report is not left waiting for a replay that never comes.
    pub fn stalled(&self, now_ms: i64) -> bool {
        now_ms.saturating_sub(self.at_ms) >= STALL_MS
    }

    /// When `stalled` becomes true if nothing is reported before.
    pub fn stalls_at(&self) -> i64 {
        self.at_ms.saturating_add(STALL_MS)
    }

    /// What reporting `id` does; `sent` is the last id the socket has been sent (the head for
    /// a live socket, less while a paced replay is under way).
    pub fn report(&self, id: u64, sent: u64) -> Report {
        if id > sent {
            Report::Ahead { sent }
        } else if id > self.cursor {
            Report::Advance(id)
        } else {
            Report::Stale
        }
    }
}

/// What a publish must know before it can skip reading the sockets' attachments, kept in
/// memory: a lower bound on every socket's confirmed position (no socket can be over its window
/// while the stream is within a window of it), and whether a paced replay may be holding a
/// socket (it must then be left out of the fan-out). `Floor::default()` (a fresh instance)
/// knows nothing: the next publish reads every socket once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Floor {
    lowest: Option<u64>,
    held: bool,
}

impl Floor {
    /// What a pass over every socket found.
    pub fn seen(lowest: u64, held: bool) -> Floor {
        Floor {
            lowest: Some(lowest),
            held,
        }
    }

    /// True when the attachments must be read: some socket may be over `window` once the
    /// stream reaches `end`, or may be held by a paced replay.
    pub fn must_check(self, end: u64, window: u64) -> bool {
        self.held
            || self
                .lowest
                .is_none_or(|floor| end.saturating_sub(floor) > window)
    }

    /// A socket's credit starts at `bytes`: the bound must not be above it.
    pub fn joined(self, bytes: u64) -> Floor {
        Floor {
            lowest: self.lowest.map(|f| f.min(bytes)),
            ..self
        }
    }

    /// A paced replay left a socket held.
    pub fn holding(self) -> Floor {
        Floor { held: true, ..self }
    }
}

/// Each event frame's starting position, given the stream's position before them.
pub fn starts(before: u64, sizes: impl IntoIterator<Item = usize>) -> (Vec<u64>, u64) {
    let mut at = before;
    let starts = sizes
        .into_iter()
        .map(|size| {
            let start = at;
            at = at.saturating_add(size as u64);
            start
        })
        .collect();
    (starts, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_only_when_over_the_window_and_silent() {
        let c = Credit::new(10, 1000, 0);
        let sent_at_once = |_| Some(0);
        assert_eq!(c.unconfirmed(1500), 500);
        assert!(
            !c.too_slow(1500, 400, 999, sent_at_once),
            "over, but reported just now"
        );
        assert!(c.too_slow(1500, 400, 1000, sent_at_once));
        assert!(
            !c.too_slow(1400, 400, 60_000, |_| panic!("not asked under the window")),
            "at the window is not over it"
        );
        assert_eq!(c.unconfirmed(900), 0, "a position before the credit");
    }

    #[test]
    fn silence_counts_from_when_there_was_something_to_confirm() {
        // Confirmed everything at 0, idle until 60 s, then a burst over the window.
        let c = Credit::new(10, 1000, 0);
        let burst_at = |cursor| {
            assert_eq!(cursor, 10, "asks about the first event after the cursor");
            Some(60_000)
        };
        assert!(
            !c.too_slow(1500, 400, 60_000, burst_at),
            "the burst just came"
        );
        assert!(!c.too_slow(1500, 400, 60_999, burst_at));
        assert!(
            c.too_slow(1500, 400, 61_000, burst_at),
            "a second without a report"
        );
        // An event sent before the last report does not move the clock back.
        let reported = Credit::new(10, 1000, 5_000);
        assert!(!reported.too_slow(1500, 400, 5_999, |_| Some(0)));
        // Not known (the log was purged, or the lookup failed): the last report counts.
        assert!(c.too_slow(1500, 400, 1000, |_| None));
    }

    #[test]
    fn reports_move_forward_only() {
        let c = Credit::new(10, 1000, 0);
        assert_eq!(c.report(11, 20), Report::Advance(11));
        assert_eq!(c.report(20, 20), Report::Advance(20));
        assert_eq!(c.report(10, 20), Report::Stale);
        assert_eq!(c.report(3, 20), Report::Stale);
        assert_eq!(c.report(21, 20), Report::Ahead { sent: 20 });
    }

    #[test]
    fn a_paced_replay_stops_at_the_window_and_stalls_a_second_later() {
        let c = Credit::new(10, 1000, 5_000);
        assert_eq!(c.replay_limit(400), 1400);
        assert!(!c.stalled(5_999));
        assert!(c.stalled(6_000));
        assert_eq!(c.stalls_at(), 6_000);
    }

    #[test]
    fn the_floor_spares_reads_until_someone_can_be_over() {
        assert!(Floor::default().must_check(0, 100));
        let f = Floor::seen(1000, false);
        assert!(!f.must_check(1100, 100));
        assert!(f.must_check(1101, 100));
        assert_eq!(f.joined(500), Floor::seen(500, false));
        assert_eq!(f.joined(2000), f);
        assert_eq!(Floor::default().joined(5), Floor::default());
    }

    #[test]
    fn a_held_socket_is_checked_at_every_publish() {
        let f = Floor::seen(1000, false).holding();
        assert!(f.must_check(1000, 100), "within the window, but held");
        assert_eq!(f.joined(500), Floor::seen(500, true));
        assert!(!Floor::seen(1000, false).must_check(1000, 100));
    }

    #[test]
    fn starts_are_running_sums() {
        assert_eq!(starts(100, [10, 5, 1]), (vec![100, 110, 115], 116));
        assert_eq!(starts(7, []), (vec![], 7));
    }
}
