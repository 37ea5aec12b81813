//! The rules of a shared upstream (`runtime::tap`), pure: the plain SSE subscribers of one
//! channel in one Worker isolate share one socket to the channel's object, and each gets the
//! shared stream from where it stands, exactly once.
//!
//! - A subscriber with nothing to replay (no cursor, or the tap's own position) *attaches*: it
//!   gets every chunk after the tap's position.
//! - Any other opens its own socket (replay, paced by its own client, as a lone bridge) and,
//!   once that socket has caught up with the head it was told at the start, *joins* the tap if
//!   the tap is no further than it (chunks through its own position are skipped), or *promotes*
//!   its socket to be the tap's upstream when there is none.
//! - Every member has a `through`: the last id it was given. A chunk is given whole, cut after
//!   `through`, or not at all; a gap notice is given as this member's own gap, or not at all.

use crate::protocol::many::UpFrame;
use crate::protocol::sse;
use crate::protocol::ws::gap_frame;

/// What a new subscriber does, given the tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Attach now: every chunk after `through` is its.
    Attach { through: u64 },
    /// Open its own socket from its cursor.
    Replay,
}

/// Where the tap stands: live at an id, or between upstreams (opening or handing over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapView {
    None,
    Live(u64),
    Busy,
}

/// A new subscriber's way in. `since` is its cursor (`None`: from now on).
pub fn entry(tap: TapView, since: Option<u64>) -> Entry {
    match (tap, since) {
        (TapView::Live(at), None) => Entry::Attach { through: at },
        (TapView::Live(at), Some(s)) if s == at => Entry::Attach { through: at },
        _ => Entry::Replay,
    }
}

/// What a subscriber on its own socket does after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Catchup {
    /// Not caught up yet, or the tap is ahead or busy: go on alone.
    Stay,
    /// Leave its socket and take the tap's chunks after `through`.
    Join { through: u64 },
    /// There is no tap: its socket becomes the tap's upstream, at `position`.
    Promote { position: u64 },
}

/// `position`: the last id its socket brought (or where it started); `head`: the head when the
/// socket was accepted. Caught up once `position` reaches `head`.
pub fn catch_up(tap: TapView, position: u64, head: u64) -> Catchup {
    if position < head {
        return Catchup::Stay;
    }
    match tap {
        TapView::None => Catchup::Promote { position },
        TapView::Live(at) if at <= position => Catchup::Join { through: position },
        _ => Catchup::Stay,
    }
}

/// What of an upstream frame one member gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Share<'a> {
    Whole,
    Part(&'a str),
    /// Its own gap notice (the tap's would name where the tap stood, not where it stands).
    Gap(String),
    Nothing,
}

/// A frame read once for all members: its event ids, or the gap it announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    Events {
        first: u64,
        last: u64,
    },
    Gap {
        earliest: u64,
    },
    /// Anything else (a comment): passed to everyone.
    Other,
}

impl Frame {
    pub fn read(text: &str) -> Frame {
        if let Some((first, last)) = sse::chunk_ids(text) {
            return Frame::Events { first, last };
        }
        match sse::parse_gap(text) {
            Some((_, earliest)) => Frame::Gap { earliest },
            None => Frame::Other,
        }
    }

    /// The last id this frame brings the tap to, if it moves it.
    pub fn last(&self) -> Option<u64> {
        match *self {
            Frame::Events { last, .. } => Some(last),
            Frame::Gap { earliest } => earliest.checked_sub(1),
            Frame::Other => None,
        }
    }

    /// What a member that has everything through `through` gets of `text` (this frame).
    pub fn share<'a>(&self, text: &'a str, through: u64) -> Share<'a> {
        match *self {
            Frame::Events { first, .. } if first > through => Share::Whole,
            Frame::Events { last, .. } if last <= through => Share::Nothing,
            Frame::Events { .. } => Share::Part(sse::after(text, through)),
            Frame::Gap { earliest } if earliest > through.saturating_add(1) => {
                Share::Gap(sse::gap(through, earliest))
            }
            Frame::Gap { .. } => Share::Nothing,
            Frame::Other => Share::Whole,
        }
    }
}

/// A frame of a many-channel lanes' shared upstream (v1 WebSocket frames, one event each:
/// `runtime::stream::shared`), read once for all its members. Its `ready` and anything else
/// (a `pong`) are the upstream's own, passed to no member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneFrame {
    Event { id: u64 },
    Gap { earliest: u64 },
    Own,
}

impl LaneFrame {
    pub fn read(text: &str) -> LaneFrame {
        match UpFrame::read(text) {
            UpFrame::Event { id, .. } => LaneFrame::Event { id },
            UpFrame::Gap { earliest, .. } => LaneFrame::Gap { earliest },
            _ => LaneFrame::Own,
        }
    }

    /// The last id this frame brings the upstream to, if it moves it.
    pub fn last(&self) -> Option<u64> {
        match *self {
            LaneFrame::Event { id } => Some(id),
            LaneFrame::Gap { earliest } => earliest.checked_sub(1),
            LaneFrame::Own => None,
        }
    }

    /// What a member that has everything through `through` gets of this frame: the frame, its
    /// own gap, or nothing.
    pub fn share(&self, through: u64) -> Share<'static> {
        match *self {
            LaneFrame::Event { id } if id > through => Share::Whole,
            LaneFrame::Gap { earliest } if earliest > through.saturating_add(1) => {
                Share::Gap(gap_frame(through, earliest))
            }
            _ => Share::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::sse::{event, gap};
    use crate::protocol::EventType;

    fn chunk(ids: std::ops::RangeInclusive<u64>) -> String {
        ids.map(|id| event(id, &EventType::default(), "{}"))
            .collect()
    }

    #[test]
    fn only_a_subscriber_level_with_a_live_tap_attaches() {
        assert_eq!(entry(TapView::Live(7), None), Entry::Attach { through: 7 });
        assert_eq!(
            entry(TapView::Live(7), Some(7)),
            Entry::Attach { through: 7 }
        );
        for since in [Some(0), Some(6), Some(8)] {
            assert_eq!(entry(TapView::Live(7), since), Entry::Replay, "{since:?}");
        }
        for tap in [TapView::None, TapView::Busy] {
            assert_eq!(entry(tap, None), Entry::Replay);
            assert_eq!(entry(tap, Some(3)), Entry::Replay);
        }
    }

    #[test]
    fn a_lone_socket_joins_or_promotes_only_once_caught_up() {
        assert_eq!(catch_up(TapView::None, 4, 5), Catchup::Stay);
        assert_eq!(catch_up(TapView::Live(3), 4, 5), Catchup::Stay);
        assert_eq!(
            catch_up(TapView::None, 5, 5),
            Catchup::Promote { position: 5 }
        );
        assert_eq!(
            catch_up(TapView::Live(5), 5, 5),
            Catchup::Join { through: 5 }
        );
        // The tap has not seen what this socket has: chunks through 9 are skipped.
        assert_eq!(
            catch_up(TapView::Live(7), 9, 5),
            Catchup::Join { through: 9 }
        );
        // The tap is ahead: this socket brings those events first.
        assert_eq!(catch_up(TapView::Live(10), 9, 5), Catchup::Stay);
        assert_eq!(catch_up(TapView::Busy, 9, 5), Catchup::Stay);
    }

    #[test]
    fn each_member_gets_what_is_after_its_own_position_once() {
        let text = chunk(4..=6);
        let frame = Frame::read(&text);
        assert_eq!(frame, Frame::Events { first: 4, last: 6 });
        assert_eq!(frame.last(), Some(6));
        assert_eq!(frame.share(&text, 3), Share::Whole);
        assert_eq!(frame.share(&text, 0), Share::Whole);
        assert_eq!(
            frame.share(&text, 4),
            Share::Part(&text[text.find("id: 5").unwrap()..])
        );
        assert_eq!(frame.share(&text, 5), Share::Part("id: 6\ndata: {}\n\n"));
        assert_eq!(frame.share(&text, 6), Share::Nothing);
        assert_eq!(frame.share(&text, 99), Share::Nothing);
    }

    #[test]
    fn every_member_of_any_position_gets_each_event_exactly_once() {
        // Chunks of the tap's stream 1..=30 in uneven pieces; members attached anywhere.
        let pieces = [1..=1, 2..=5, 6..=6, 7..=12, 13..=20, 21..=30];
        for start in 0..=30u64 {
            let mut through = start;
            let mut got = Vec::new();
            for ids in pieces.clone() {
                let text = chunk(ids);
                let frame = Frame::read(&text);
                let given = match frame.share(&text, through) {
                    Share::Whole => text.clone(),
                    Share::Part(part) => part.to_string(),
                    Share::Gap(_) | Share::Nothing => String::new(),
                };
                if let Some((_, last)) = sse::chunk_ids(&given) {
                    through = last;
                }
                got.extend(
                    given
                        .lines()
                        .filter_map(|l| l.strip_prefix("id: "))
                        .map(|d| d.parse::<u64>().unwrap()),
                );
            }
            assert_eq!(got, (start + 1..=30).collect::<Vec<_>>(), "from {start}");
        }
    }

    #[test]
    fn a_gap_is_told_to_each_member_from_its_own_position() {
        let text = gap(3, 10);
        let frame = Frame::read(&text);
        assert_eq!(frame, Frame::Gap { earliest: 10 });
        assert_eq!(frame.last(), Some(9));
        assert_eq!(frame.share(&text, 3), Share::Gap(gap(3, 10)));
        assert_eq!(frame.share(&text, 6), Share::Gap(gap(6, 10)));
        assert_eq!(frame.share(&text, 9), Share::Nothing);
        assert_eq!(frame.share(&text, 12), Share::Nothing);
        let comment = ": heartbeat\n\n";
        assert_eq!(Frame::read(comment), Frame::Other);
        assert_eq!(Frame::read(comment).share(comment, 5), Share::Whole);
        assert_eq!(Frame::read(comment).last(), None);
    }

    #[test]
    fn a_lane_member_gets_each_event_after_its_place_once_and_its_own_gap() {
        use crate::protocol::ws::{event_frame, ready_frame};
        let events: Vec<String> = (1..=30u64)
            .map(|id| {
                event_frame(&format!(
                    "{{\"id\":{id},\"channel\":\"c\",\"type\":\"message\",\"data\":1}}"
                ))
            })
            .collect();
        for start in 0..=30u64 {
            let mut through = start;
            let mut got = Vec::new();
            for text in &events {
                let frame = LaneFrame::read(text);
                if frame.share(through) == Share::Whole {
                    got.push(frame.last().unwrap());
                }
                through = through.max(frame.last().unwrap());
            }
            assert_eq!(got, (start + 1..=30).collect::<Vec<_>>(), "from {start}");
        }
        let gap = gap_frame(3, 10);
        let frame = LaneFrame::read(&gap);
        assert_eq!(frame, LaneFrame::Gap { earliest: 10 });
        assert_eq!(frame.last(), Some(9));
        assert_eq!(frame.share(3), Share::Gap(gap_frame(3, 10)));
        assert_eq!(frame.share(6), Share::Gap(gap_frame(6, 10)));
        assert_eq!(frame.share(9), Share::Nothing);
        let ready = ready_frame(4, 1000, 30);
        assert_eq!(LaneFrame::read(&ready), LaneFrame::Own);
        assert_eq!(LaneFrame::read(&ready).share(0), Share::Nothing);
        assert_eq!(LaneFrame::read("pong"), LaneFrame::Own);
    }
}
