//! The SSE bridge's side of flow control: what waits in the Worker for one SSE client (frames
//! the channel's object sent, not yet taken by the client's stream), and the same stall rule as
//! a WebSocket's (`flow::STALL_MS`): a client is dropped only when more than its limit waits
//! *and* it has taken nothing for `STALL_MS` while something waited. A big replay being read is
//! not a stall, and neither is a client that was idle because there was nothing to read. The
//! clock is passed in; `runtime/sse.rs` only reads it and carries the answer out.

use super::flow::STALL_MS;

/// Bytes forwarded to one SSE client and not yet taken, with the times the rules need.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    bytes: usize,
    /// When the client's stream last took something, or when something came for it while
    /// nothing waited (unix milliseconds).
    taken_at_ms: i64,
    /// When the client was last sent anything, a frame or a heartbeat (unix milliseconds).
    sent_at_ms: i64,
    /// When its stream was last seen with nothing waiting, or last took something (unix
    /// milliseconds): heartbeats count here, as they wait like frames.
    read_at_ms: i64,
}

impl Backlog {
    /// A stream opened at `now_ms`: nothing waits, and the preamble was just sent.
    pub fn opened(now_ms: i64) -> Backlog {
        Backlog {
            bytes: 0,
            taken_at_ms: now_ms,
            sent_at_ms: now_ms,
            read_at_ms: now_ms,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The client's stream took `n` bytes.
    pub fn took(&mut self, n: usize, now_ms: i64) {
        self.bytes = self.bytes.saturating_sub(n);
        self.taken_at_ms = now_ms;
        self.sent_at_ms = now_ms;
        self.read_at_ms = now_ms;
    }

    /// `n` more bytes wait for the client; the stall clock starts if nothing waited before.
    pub fn queued(&mut self, n: usize, now_ms: i64) {
        if self.bytes == 0 {
            self.taken_at_ms = now_ms;
        }
        self.bytes = self.bytes.saturating_add(n);
    }

    /// Over `max` and nothing taken for `STALL_MS`: drop the client (it resumes from
    /// `Last-Event-ID`).
    pub fn stalled(&self, max: usize, now_ms: i64) -> bool {
        self.bytes > max && now_ms.saturating_sub(self.taken_at_ms) >= STALL_MS
    }

    /// The stream, looked at `now_ms` with `waiting` bytes not yet taken (frames and
    /// heartbeats): true once it has taken nothing for `limit_ms` while something waited. A
    /// client that reads takes its heartbeats at once; a stream nobody reads any more (the
    /// client left and the runtime stopped reading without saying so) is ended then, whatever
    /// its size, and a client that was only stalled that long resumes from `Last-Event-ID`.
    pub fn abandoned(&mut self, waiting: usize, now_ms: i64, limit_ms: i64) -> bool {
        if waiting == 0 {
            self.read_at_ms = now_ms;
        }
        now_ms.saturating_sub(self.read_at_ms) >= limit_ms
    }

    /// A heartbeat went out at `now_ms`.
    pub fn heartbeat(&mut self, now_ms: i64) {
        self.sent_at_ms = now_ms;
    }

    /// How long to wait before the next heartbeat is due, if it is not due now (`None`: send
    /// one now). The client is sent something at least every `period_ms`.
    pub fn heartbeat_in(&self, period_ms: i64, now_ms: i64) -> Option<i64> {
        let quiet = now_ms.saturating_sub(self.sent_at_ms);
        (quiet < period_ms).then(|| period_ms - quiet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_full_backlog_stalls_after_a_second_without_taking() {
        let mut b = Backlog::opened(0);
        b.queued(2000, 100);
        assert!(!b.stalled(1000, 100 + STALL_MS - 1));
        assert!(b.stalled(1000, 100 + STALL_MS));
        assert!(
            !b.stalled(2000, 100 + STALL_MS),
            "at the limit is not over it"
        );
        b.took(1500, 1200);
        assert!(!b.stalled(1000, 5000), "under the limit again");
        assert_eq!(b.bytes(), 500);
    }

    #[test]
    fn idle_time_with_nothing_to_read_is_not_a_stall() {
        let mut b = Backlog::opened(0);
        // Nothing for a minute, then a burst over the limit: the clock starts at the burst.
        b.queued(5000, 60_000);
        assert!(!b.stalled(1000, 60_000 + STALL_MS - 1));
        assert!(b.stalled(1000, 60_000 + STALL_MS));
    }

    #[test]
    fn a_replay_being_read_is_not_a_stall() {
        let mut b = Backlog::opened(0);
        for step in 0..100 {
            let now = step * 500;
            b.queued(100_000, now);
            b.took(60_000, now + 1);
            assert!(!b.stalled(1000, now + 2), "step {step}");
        }
    }

    #[test]
    fn heartbeats_fill_silences() {
        let mut b = Backlog::opened(0);
        assert_eq!(b.heartbeat_in(5000, 1000), Some(4000));
        assert_eq!(b.heartbeat_in(5000, 5000), None);
        b.heartbeat(5000);
        assert_eq!(b.heartbeat_in(5000, 5000), Some(5000));
        b.took(10, 7000);
        assert_eq!(
            b.heartbeat_in(5000, 8000),
            Some(4000),
            "a frame counts as sent"
        );
    }

    #[test]
    fn a_stream_nobody_reads_is_abandoned_after_the_limit_whatever_waits() {
        let mut b = Backlog::opened(0);
        // A reader that takes each heartbeat: nothing waits when the pacer looks.
        for tick in 1..100 {
            assert!(!b.abandoned(0, tick * 5000, 15_000), "tick {tick}");
        }
        // Last seen with nothing waiting at 495 s; then heartbeats stay untaken.
        assert!(!b.abandoned(3, 500_000, 15_000));
        assert!(!b.abandoned(6, 505_000, 15_000));
        assert!(!b.abandoned(9, 509_999, 15_000));
        assert!(b.abandoned(9, 510_000, 15_000), "untaken since 495 s");
    }

    #[test]
    fn a_slow_reader_that_takes_something_is_not_abandoned() {
        let mut b = Backlog::opened(0);
        b.queued(1_000_000, 0);
        for step in 1..100 {
            let now = step * 10_000;
            assert!(!b.abandoned(1_000_000, now, 15_000), "step {step}");
            b.took(10_000, now);
            b.queued(10_000, now);
        }
        assert!(b.abandoned(1_000_000, 990_000 + 15_000, 15_000));
    }

    #[derive(Debug, Clone)]
    enum Step {
        Queue(usize),
        Take(usize),
        Wait(i64),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            prop_oneof![
                (1usize..5000).prop_map(Step::Queue),
                (1usize..5000).prop_map(Step::Take),
                (0i64..1500).prop_map(Step::Wait),
            ],
            0..60,
        )
    }

    proptest! {
        /// Whatever happens, a client is stalled exactly when more than the limit waits and
        /// it took nothing for STALL_MS since something came to wait.
        #[test]
        fn stalled_means_over_the_limit_and_silent(steps in steps(), max in 0usize..8000) {
            let mut b = Backlog::opened(0);
            let (mut now, mut waiting, mut clock) = (0i64, 0usize, 0i64);
            for step in steps {
                match step {
                    Step::Queue(n) => {
                        if waiting == 0 { clock = now; }
                        waiting += n;
                        b.queued(n, now);
                    }
                    Step::Take(n) => {
                        waiting = waiting.saturating_sub(n);
                        clock = now;
                        b.took(n, now);
                    }
                    Step::Wait(ms) => now += ms,
                }
                prop_assert_eq!(b.bytes(), waiting);
                prop_assert_eq!(b.stalled(max, now), waiting > max && now - clock >= STALL_MS);
            }
        }
    }
}
