//! A poll with a topic filter (`?topic=…&topic_pattern=…`, one channel or many): the mirror is
//! read in two steps. First each channel's candidate rows after its position are scanned
//! without their data (id, size, topics; at most `SCAN_ROWS` per channel, exact matchers
//! already applied by D1), and `pick` chooses the matching ids a page can hold, round-robin over
//! the channels as an unfiltered multi-channel page is. Then only those rows' data is read and
//! `cut` makes the page. A channel's `next` is the last id the poll examined for it: its last
//! event in the page when the page was cut before its other matches, else the end of its scan
//! (the mirror's head when the scan reached it). So a filter that matches little still moves
//! every cursor forward, and never skips a matching event.

use super::poll::StoredEvent;
use super::{plan_replay, Replay, Window};
use crate::protocol::filter::{EventTopics, Filter};
use crate::protocol::topics::Topics;

/// The most candidate rows a filtered poll examines per channel: bounds D1's work when few
/// events match (the page then ends below the head with `more`, and the next poll goes on).
pub const SCAN_ROWS: u64 = 1000;

/// What an envelope adds to its data, about (id, channel, type, time and punctuation): the scan
/// knows sizes, not envelopes, so the first step estimates and the second cuts exactly.
const ENVELOPE_OVERHEAD: u64 = 160;

/// Where a channel's scan starts given its cursor and mirrored window (`None`: from now on,
/// so at the head), and the gap when events after the cursor are gone, `(requested,
/// earliest)`: the rules of an unfiltered poll.
pub fn position(cursor: Option<u64>, window: Window) -> (u64, Option<(u64, u64)>) {
    match plan_replay(cursor, window, true) {
        Replay::Live => (window.head, None),
        Replay::After(n) => (n, None),
        Replay::Gap {
            requested,
            earliest,
        } => (
            earliest.saturating_sub(1).max(requested),
            Some((requested, earliest)),
        ),
    }
}

/// One candidate row of a scan: an event without its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    pub id: u64,
    /// Its data's size in bytes.
    pub size: u64,
    pub topics: Option<Topics>,
}

/// One channel's scan: its position (`after`), its mirrored head, and the candidate rows after
/// the position, ascending, at most `SCAN_ROWS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneScan {
    pub after: u64,
    pub head: u64,
    pub rows: Vec<Scanned>,
}

impl LaneScan {
    /// How far the scan looked: its last row when it stopped at `SCAN_ROWS`, else the head.
    fn examined(&self) -> u64 {
        match self.rows.last() {
            Some(last) if self.rows.len() as u64 >= SCAN_ROWS => last.id,
            _ => self.head.max(self.after),
        }
    }
}

/// The first step's choice: the (lane, id) pairs to read, in the page's order, and for each lane
/// whether matches were left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picks {
    pub order: Vec<(usize, u64)>,
    left_out: Vec<bool>,
}

/// Chooses the matching rows a page of `limit` events and about `max_bytes` can hold:
/// round-robin (each lane's first match in lane order, then each one's second, …).
pub fn pick(lanes: &[LaneScan], filter: &Filter, limit: usize, max_bytes: usize) -> Picks {
    let matches: Vec<Vec<&Scanned>> = lanes
        .iter()
        .map(|lane| {
            lane.rows
                .iter()
                .filter(|r| filter.matches(&EventTopics::new(r.topics.as_ref())))
                .collect()
        })
        .collect();
    let mut taken = vec![0usize; lanes.len()];
    let mut order = Vec::new();
    let mut bytes = 0u64;
    let deepest = matches.iter().map(Vec::len).max().unwrap_or(0);
    'rounds: for round in 0..deepest {
        for (lane, rows) in matches.iter().enumerate() {
            let Some(row) = rows.get(round) else {
                continue;
            };
            let topics = row.topics.as_ref().map_or(0, |t| t.to_json().len() as u64);
            let size = row.size + topics + ENVELOPE_OVERHEAD;
            if order.len() >= limit || (bytes + size > max_bytes as u64 && !order.is_empty()) {
                break 'rounds;
            }
            bytes += size;
            order.push((lane, row.id));
            if let Some(t) = taken.get_mut(lane) {
                *t += 1;
            }
        }
    }
    let left_out = matches
        .iter()
        .zip(&taken)
        .map(|(rows, taken)| rows.len() > *taken)
        .collect();
    Picks { order, left_out }
}

/// The page: each included event (its lane and envelope, in the page's order), each lane's
/// `next`, and `more` (some lane stops below its head).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub events: Vec<(usize, u64, String)>,
    pub next: Vec<u64>,
    pub more: bool,
}

/// Makes the page from the picked rows' events (`rows`, any order; one a mirror no longer has
/// is left out, with everything of its lane after it), cutting exactly at `max_bytes` of
/// envelopes (the first event always goes in). `envelope` encodes an event of a lane.
pub fn cut(
    lanes: &[LaneScan],
    picks: &Picks,
    rows: Vec<(usize, StoredEvent)>,
    max_bytes: usize,
    envelope: impl Fn(usize, &StoredEvent) -> String,
) -> Cut {
    let mut by_id: std::collections::HashMap<(usize, u64), StoredEvent> = rows
        .into_iter()
        .map(|(lane, e)| ((lane, e.id), e))
        .collect();
    let mut last: Vec<Option<u64>> = vec![None; lanes.len()];
    let mut stopped = vec![false; lanes.len()];
    let mut events = Vec::new();
    let mut bytes = 0usize;
    let mut full = false;
    for &(lane, id) in &picks.order {
        let Some(flag) = stopped.get_mut(lane) else {
            continue;
        };
        if *flag || full {
            *flag = true;
            continue;
        }
        let Some(event) = by_id.remove(&(lane, id)) else {
            *flag = true;
            continue;
        };
        let text = envelope(lane, &event);
        // One more event and its comma.
        if bytes + text.len() + 1 > max_bytes && !events.is_empty() {
            full = true;
            *flag = true;
            continue;
        }
        bytes += text.len() + 1;
        if let Some(l) = last.get_mut(lane) {
            *l = Some(id);
        }
        events.push((lane, id, text));
    }
    let next: Vec<u64> = lanes
        .iter()
        .enumerate()
        .map(|(lane, scan)| {
            let cut_short = stopped.get(lane).copied().unwrap_or(false)
                || picks.left_out.get(lane).copied().unwrap_or(false);
            match cut_short {
                true => last
                    .get(lane)
                    .copied()
                    .flatten()
                    .unwrap_or(scan.after)
                    .max(scan.after),
                false => scan.examined(),
            }
        })
        .collect();
    let more = lanes
        .iter()
        .zip(&next)
        .any(|(scan, next)| *next < scan.head);
    Cut { events, next, more }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::filter::FilterSpec;

    fn filter(exact: &[&str]) -> Filter {
        let spec = FilterSpec {
            topic: exact.iter().map(|s| s.to_string()).collect(),
            topic_pattern: Vec::new(),
            ..FilterSpec::default()
        };
        Filter::parse(&spec).unwrap().unwrap()
    }

    fn row(id: u64, topic: &str) -> Scanned {
        Scanned {
            id,
            size: 10,
            topics: Topics::parse(vec![topic.to_string()]).ok(),
        }
    }

    fn event(id: u64) -> StoredEvent {
        StoredEvent {
            id,
            event_type: "message".into(),
            data: "1".into(),
            time_ms: 0,
            topics: None,
            update: None,
        }
    }

    fn page(lanes: &[LaneScan], f: &Filter, limit: usize, max_bytes: usize) -> Cut {
        let picks = pick(lanes, f, limit, max_bytes);
        let rows = picks.order.iter().map(|&(l, id)| (l, event(id))).collect();
        cut(lanes, &picks, rows, max_bytes, |l, e| {
            format!("{l}:{}", e.id)
        })
    }

    fn ids(c: &Cut) -> Vec<(usize, u64)> {
        c.events.iter().map(|(l, id, _)| (*l, *id)).collect()
    }

    #[test]
    fn a_page_holds_the_matches_and_next_is_what_was_examined() {
        let f = filter(&["a"]);
        let lane = LaneScan {
            after: 0,
            head: 9,
            rows: vec![row(2, "a"), row(3, "b"), row(5, "a"), row(7, "b")],
        };
        let c = page(std::slice::from_ref(&lane), &f, 10, 1 << 20);
        assert_eq!(ids(&c), vec![(0, 2), (0, 5)]);
        assert_eq!(
            (c.next, c.more),
            (vec![9], false),
            "examined up to the head"
        );
        let c = page(std::slice::from_ref(&lane), &f, 1, 1 << 20);
        assert_eq!(ids(&c), vec![(0, 2)]);
        assert_eq!((c.next, c.more), (vec![2], true), "cut by the limit");
        let nothing = LaneScan {
            rows: vec![row(3, "b")],
            ..lane.clone()
        };
        let c = page(&[nothing], &f, 10, 1 << 20);
        assert!(c.events.is_empty());
        assert_eq!(
            (c.next, c.more),
            (vec![9], false),
            "nothing matched: at the head"
        );
    }

    #[test]
    fn a_scan_that_stops_short_of_the_head_says_more() {
        let f = filter(&["a"]);
        let rows: Vec<Scanned> = (1..=SCAN_ROWS).map(|i| row(i, "b")).collect();
        let lane = LaneScan {
            after: 0,
            head: 5000,
            rows,
        };
        let c = page(&[lane], &f, 10, 1 << 20);
        assert!(c.events.is_empty());
        assert_eq!((c.next, c.more), (vec![SCAN_ROWS], true));
    }

    #[test]
    fn lanes_go_round_robin_and_a_cut_lane_keeps_its_place() {
        let f = filter(&["a"]);
        let x = LaneScan {
            after: 10,
            head: 20,
            rows: vec![row(11, "a"), row(12, "a"), row(13, "a")],
        };
        let y = LaneScan {
            after: 0,
            head: 4,
            rows: vec![row(2, "a"), row(4, "b")],
        };
        let c = page(&[x.clone(), y.clone()], &f, 3, 1 << 20);
        assert_eq!(ids(&c), vec![(0, 11), (1, 2), (0, 12)]);
        assert_eq!(c.next, vec![12, 4], "y is done: its head");
        assert!(c.more);
        let c = page(&[x, y], &f, 10, 1 << 20);
        assert_eq!(c.next, vec![20, 4]);
        assert!(!c.more);
    }

    #[test]
    fn bytes_cut_exactly_and_the_first_event_always_goes_in() {
        let f = filter(&["a"]);
        let lane = LaneScan {
            after: 0,
            head: 3,
            rows: vec![row(1, "a"), row(2, "a"), row(3, "a")],
        };
        let picks = pick(std::slice::from_ref(&lane), &f, 10, 1 << 20);
        let rows = picks.order.iter().map(|&(l, id)| (l, event(id))).collect();
        let c = cut(std::slice::from_ref(&lane), &picks, rows, 8, |_, e| {
            "x".repeat(3 + e.id as usize)
        });
        assert_eq!(ids(&c), vec![(0, 1)], "4+1 fits 8, 5+1 more does not");
        assert_eq!((c.next.clone(), c.more), (vec![1], true));
        let c = page(std::slice::from_ref(&lane), &f, 10, 1);
        assert_eq!(ids(&c).len(), 1, "one event however small the budget");
    }

    #[test]
    fn a_row_the_mirror_lost_meanwhile_ends_its_lane_there() {
        let f = filter(&["a"]);
        let lane = LaneScan {
            after: 0,
            head: 3,
            rows: vec![row(1, "a"), row(2, "a"), row(3, "a")],
        };
        let picks = pick(std::slice::from_ref(&lane), &f, 10, 1 << 20);
        let rows = vec![(0, event(1)), (0, event(3))];
        let c = cut(
            std::slice::from_ref(&lane),
            &picks,
            rows,
            1 << 20,
            |_, e| e.id.to_string(),
        );
        assert_eq!(ids(&c), vec![(0, 1)]);
        assert_eq!(c.next, vec![1], "resumes before the lost row");
    }
}
