//! The subscriber's rules: tables of each decision, then a model of one subscriber driven through
//! random sequences of publishes, reports and silences, as the runtime drives it.

use super::*;
use crate::channel::flow::STALL_MS;
use crate::channel::plan_replay;
use proptest::prelude::*;

const W: Window = Window {
    head: 10,
    earliest: 1,
};

#[test]
fn where_delivery_starts_and_who_gets_a_credit() {
    let ws = Attachment::new(Transport::Ws, false, None);
    let sse = Attachment::new(Transport::Sse, false, None);
    assert_eq!(ws.start(Replay::Live, W), (10, true));
    assert_eq!(
        sse.start(Replay::Live, W),
        (10, false),
        "a live bridge guards its client"
    );
    assert_eq!(sse.start(Replay::After(4), W), (4, true));
    let gap = Replay::Gap {
        requested: 1,
        earliest: 6,
    };
    assert_eq!(ws.start(gap, W), (5, true));
}

#[test]
fn steps_are_a_window_for_clients_and_a_quarter_for_bridges() {
    let mut ws = Attachment::new(Transport::Ws, false, None);
    assert_eq!(ws.step_limit(4000), None, "no credit, no pacing");
    let floor = ws.credited(3, 1000, 0, Floor::seen(5000, false));
    assert_eq!(floor, Floor::seen(1000, false));
    assert_eq!(ws.step_limit(4000), Some(5000));
    let mut sse = Attachment::new(Transport::Sse, false, None);
    sse.credited(3, 1000, 0, Floor::default());
    assert_eq!(sse.step_limit(4000), Some(2000));
    assert_eq!(sse.notice_after_step(Some(7)), Some(7));
    assert_eq!(sse.notice_after_step(None), None);
    assert_eq!(
        ws.notice_after_step(Some(7)),
        None,
        "clients report on their own"
    );
}

#[test]
fn reports() {
    let mut ws = Attachment::new(Transport::Ws, false, None);
    ws.credited(5, 500, 0, Floor::default());
    assert_eq!(ws.report(7, 10, 1), Reported::Moved { id: 7 });
    assert_eq!(ws.report(5, 10, 1), Reported::Nothing, "a repeat");
    assert_eq!(ws.report(11, 10, 1), Reported::Ahead { sent: 10 });
    ws.settle(Some(8));
    assert_eq!(
        ws.report(9, 10, 1),
        Reported::Ahead { sent: 8 },
        "held at 8"
    );
    // A socket accepted before credits existed: its first report gives it one.
    let old = Attachment::new(Transport::Ws, false, None);
    assert_eq!(old.report(0, 10, 1), Reported::Moved { id: 0 });
    // A live bridge's reports change nothing; a held one's move its replay.
    let mut sse = Attachment::new(Transport::Sse, false, None);
    assert_eq!(sse.report(3, 10, 1), Reported::Nothing);
    sse.credited(0, 0, 0, Floor::default());
    sse.settle(Some(4));
    assert_eq!(sse.report(4, 10, 1), Reported::Moved { id: 4 });
    sse.settle(None);
    assert_eq!(sse.credit, None, "a live bridge keeps no credit");
}

#[test]
fn confirming_moves_the_credit_and_a_first_credit_lowers_the_floor() {
    let mut ws = Attachment::new(Transport::Ws, false, None);
    let floor = ws.confirmed(4, 400, 9, Floor::seen(1000, false));
    assert_eq!(floor, Floor::seen(400, false));
    assert_eq!(ws.credit, Some(Credit::new(4, 400, 9)));
    let again = ws.confirmed(6, 600, 10, floor);
    assert_eq!(again, floor, "only the first credit joins the floor");
}

#[test]
fn verdicts() {
    let never = |_| None;
    let plain = Attachment::new(Transport::Ws, false, None);
    assert_eq!(
        plain.verdict(1 << 40, 10, 1 << 40, never),
        Verdict::Deliver,
        "no credit"
    );
    let mut ws = Attachment::new(Transport::Ws, false, None);
    ws.credited(5, 1000, 0, Floor::default());
    assert_eq!(
        ws.verdict(1400, 400, 5000, never),
        Verdict::Deliver,
        "within its window"
    );
    assert_eq!(
        ws.verdict(1401, 400, STALL_MS - 1, never),
        Verdict::Deliver,
        "over, not silent"
    );
    assert_eq!(ws.verdict(1401, 400, STALL_MS, never), Verdict::TooSlow);
    ws.settle(Some(6));
    assert_eq!(
        ws.verdict(1100, 400, 0, never),
        Verdict::Skip,
        "held by its replay"
    );
    let mut sse = Attachment::new(Transport::Sse, false, None);
    sse.credited(5, 1000, 0, Floor::default());
    sse.settle(Some(6));
    assert_eq!(
        sse.verdict(1 << 40, 10, 1 << 40, never),
        Verdict::Skip,
        "bridges are never too slow here"
    );
}

#[test]
fn held_sockets_stall_a_window_of_silence_later() {
    let mut ws = Attachment::new(Transport::Ws, false, None);
    assert_eq!(ws.stall(0), None);
    ws.credited(5, 1000, 100, Floor::default());
    assert_eq!(ws.stall(1 << 30), None, "not held");
    ws.settle(Some(7));
    assert_eq!(ws.stall(100), Some(Ok(100 + STALL_MS)));
    assert_eq!(ws.stall(100 + STALL_MS), Some(Err(())));
}

#[test]
fn a_scan_finds_the_lowest_kept_position_and_any_hold() {
    let mut scan = FloorScan::new(5000);
    scan.kept(&Attachment::new(Transport::Ws, false, None));
    assert_eq!(scan.floor(), Floor::seen(5000, false));
    let mut a = Attachment::new(Transport::Ws, false, None);
    a.credited(1, 700, 0, Floor::default());
    scan.kept(&a);
    a.settle(Some(2));
    a.credit = Some(Credit::new(2, 900, 0));
    scan.kept(&a);
    assert_eq!(scan.floor(), Floor::seen(700, true));
    assert_eq!(held_at(4, 10), Some(4));
    assert_eq!(held_at(10, 10), None);
}

/// One subscriber and its channel, driven the way `runtime/` drives them.
struct Model {
    window: u64,
    /// Frame sizes and publish times of ids 1..=head.
    sizes: Vec<u64>,
    times: Vec<i64>,
    now: i64,
    attachment: Attachment,
    floor: Floor,
    received: Vec<u64>,
    /// The last id the client reported.
    reported: u64,
    closed: Option<&'static str>,
    /// Unconfirmed bytes when it was closed as too slow.
    over_by: u64,
}

impl Model {
    fn head(&self) -> u64 {
        self.sizes.len() as u64
    }

    /// `bytes_at(after)`: where the first event after `after` starts (the end if none).
    fn position(&self, after: u64) -> u64 {
        self.sizes.iter().take(after as usize).sum()
    }

    fn end(&self) -> u64 {
        self.sizes.iter().sum()
    }

    fn new(transport: Transport, cursor: Option<u64>, retained: usize, window: u64) -> Model {
        let mut m = Model {
            window,
            sizes: vec![1000; retained],
            times: vec![0; retained],
            now: 0,
            attachment: Attachment::new(transport, false, None),
            floor: Floor::default(),
            received: Vec::new(),
            reported: 0,
            closed: None,
            over_by: 0,
        };
        let window_now = Window {
            head: m.head(),
            earliest: 1,
        };
        let plan = plan_replay(cursor, window_now, false);
        let (after, credited) = m.attachment.start(plan, window_now);
        if credited {
            let bytes = m.position(after);
            m.floor = m.attachment.credited(after, bytes, m.now, m.floor);
        }
        m.reported = after;
        m.replay_step(match plan {
            Replay::Live => None,
            _ => Some(after),
        });
        m
    }

    /// One step of a replay from `after` (none for a live start), then where it left the socket.
    fn replay_step(&mut self, after: Option<u64>) {
        let Some(after) = after else {
            self.attachment.settle(None);
            return;
        };
        let limit = self.attachment.step_limit(self.window);
        let mut last = after;
        for id in after + 1..=self.head() {
            if limit.is_some_and(|l| self.position(id - 1) >= l) {
                break;
            }
            self.received.push(id);
            last = id;
        }
        let held = held_at(last, self.head());
        self.attachment.settle(held);
    }

    fn publish(&mut self, size: u64) {
        self.sizes.push(size);
        self.times.push(self.now);
        let id = self.head();
        let end = self.end();
        if !self.floor.must_check(end, self.window) {
            self.received.push(id);
            return;
        }
        let times = self.times.clone();
        let sent_ms = |cursor: u64| times.get(cursor as usize).copied();
        let unconfirmed = self.attachment.credit.map_or(0, |c| c.unconfirmed(end));
        let mut scan = FloorScan::new(end);
        match self.attachment.verdict(end, self.window, self.now, sent_ms) {
            Verdict::TooSlow => {
                self.closed = Some("too slow");
                self.over_by = unconfirmed;
            }
            Verdict::Skip => scan.kept(&self.attachment),
            Verdict::Deliver => {
                scan.kept(&self.attachment);
                self.received.push(id);
            }
        }
        self.floor = scan.floor();
    }

    /// The client reports the last id it received.
    fn report(&mut self) {
        let id = self.received.last().copied().unwrap_or(self.reported);
        match self.attachment.report(id, self.head(), self.now) {
            Reported::Nothing => {}
            Reported::Ahead { .. } => panic!("the client reported {id}, which it was sent"),
            Reported::Moved { id } => {
                let bytes = self.position(id);
                self.floor = self.attachment.confirmed(id, bytes, self.now, self.floor);
                self.reported = id;
                if let Some(sent) = self.attachment.sent {
                    self.replay_step(Some(sent));
                    if self.attachment.sent.is_some() {
                        self.floor = self.floor.holding();
                    }
                }
            }
        }
    }

    /// Time passes; the object's alarm closes a held socket that stalled.
    fn wait(&mut self, ms: i64) {
        self.now += ms;
        if let Some(Err(())) = self.attachment.stall(self.now) {
            self.closed = Some("stalled");
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Publish(u64),
    Report,
    Wait(i64),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            3 => (1u64..3000).prop_map(Op::Publish),
            2 => Just(Op::Report),
            2 => (0i64..1500).prop_map(Op::Wait),
        ],
        0..80,
    )
}

proptest! {
    /// Whatever happens, a subscriber gets each id once, in order, from where it started; while
    /// it is live it has every id through the head; and it is dropped only when it was over its
    /// window (and silent), or held and silent.
    #[test]
    fn delivery_is_exactly_once_in_order_and_drops_are_earned(
        ops in ops(),
        ws in any::<bool>(),
        retained in 0usize..40,
        from in prop::option::of(0u64..45),
        window in 2000u64..12_000,
    ) {
        let transport = if ws { Transport::Ws } else { Transport::Sse };
        let mut m = Model::new(transport, from.map(|f| f.min(retained as u64)), retained, window);
        let start = m.received.first().map_or(m.head(), |first| first - 1);
        for op in ops {
            if m.closed.is_some() {
                break;
            }
            match op {
                Op::Publish(size) => m.publish(size),
                Op::Report => m.report(),
                Op::Wait(ms) => m.wait(ms),
            }
            let want: Vec<u64> = (start + 1..=start + m.received.len() as u64).collect();
            prop_assert_eq!(&m.received, &want, "contiguous, once, in order");
            if m.closed.is_none() {
                match m.attachment.sent {
                    None => prop_assert_eq!(m.received.last().copied().unwrap_or(start), m.head()),
                    Some(sent) => prop_assert_eq!(m.received.last().copied().unwrap_or(start), sent),
                }
            }
            if m.closed == Some("too slow") {
                prop_assert!(ws && m.over_by > m.window);
            }
        }
    }

    /// A client that reports everything it gets right away is never dropped, however the
    /// publishes and silences come, and always ends up live.
    #[test]
    fn a_client_that_keeps_reporting_is_never_dropped(
        ops in ops(),
        retained in 0usize..40,
        window in 2000u64..12_000,
    ) {
        let mut m = Model::new(Transport::Ws, Some(0), retained, window);
        for _ in 0..200 {
            if m.attachment.sent.is_none() { break; }
            m.report();
        }
        for op in ops {
            match op {
                Op::Publish(size) => m.publish(size),
                Op::Report | Op::Wait(_) => {}
            }
            if let Op::Wait(ms) = op { m.wait(ms.min(STALL_MS - 1)); }
            m.report();
            prop_assert_eq!(m.closed, None);
        }
        prop_assert_eq!(m.attachment.sent, None);
        prop_assert_eq!(m.received.last().copied().unwrap_or(0), m.head());
    }
}
