//! Cutting a poll page from the D1 mirror: which rows to ask for, and the answer's `events`,
//! `next`, `more` and gap fields, plus its `ETag`. See `docs/API.md#polling`.

use super::{plan_replay, Replay, Window};
use crate::protocol::envelope::encode_envelope;
use crate::protocol::ChannelName;
use std::collections::HashMap;

/// One mirrored event as D1 returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: u64,
    pub event_type: String,
    pub data: String,
    pub time_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRequest {
    pub cursor: Option<u64>,
    pub limit: u32,
}

impl PollRequest {
    /// The answer depends only on the request and the mirror's window, so that is the tag.
    pub fn etag(&self, window: Window) -> String {
        let since = self
            .cursor
            .map_or_else(|| "-".to_string(), |c| c.to_string());
        format!(
            "\"{}.{}.{}.{}\"",
            window.head, window.earliest, since, self.limit
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollPage {
    pub events: Vec<StoredEvent>,
    pub next: u64,
    pub more: bool,
    pub gap: Option<u64>,
    pub head: u64,
}

/// Builds the page from `rows` (ids after the cursor, ascending, at most `limit + 1`).
pub fn cut_page(req: &PollRequest, window: Window, mut rows: Vec<StoredEvent>) -> PollPage {
    let (after, gap) = match plan_replay(req.cursor, window, true) {
        Replay::Live => {
            return PollPage {
                events: Vec::new(),
                next: window.head,
                more: false,
                gap: None,
                head: window.head,
            }
        }
        Replay::After(n) => (n, None),
        Replay::Gap { earliest, .. } => (earliest.saturating_sub(1), Some(earliest)),
    };
    let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = rows
        .last()
        .map_or(after, |e| e.id)
        .max(req.cursor.unwrap_or(0));
    PollPage {
        events: rows,
        next,
        more,
        gap,
        head: window.head,
    }
}

impl PollPage {
    /// `{"channel","events":[envelopes],"next","more","head","gap"?,"earliest"?}`.
    pub fn encode(&self, channel: &ChannelName) -> String {
        let events: Vec<String> = self
            .events
            .iter()
            .map(|e| encode_envelope(e.id, channel, &e.event_type, &e.data, e.time_ms))
            .collect();
        let gap = self.gap.map_or_else(String::new, |earliest| {
            format!(",\"gap\":true,\"earliest\":{earliest}")
        });
        let name = serde_json::to_string(channel.as_str()).unwrap_or_default();
        format!(
            "{{\"channel\":{name},\"events\":[{}],\"next\":{},\"more\":{},\"head\":{}{gap}}}",
            events.join(","),
            self.next,
            self.more,
            self.head
        )
    }
}

/// Mirror windows read recently, per channel, so that a conditional poll whose answer has not
/// changed can be a 304 without asking D1. A window is used for `ttl_ms` after it was read:
/// a 304 may then be that much late (more lag, never a hole: a changed answer always comes from
/// D1). At most `capacity` channels are held; a full cache starts over.
#[derive(Debug, Clone, Default)]
pub struct WindowCache {
    entries: HashMap<String, (Window, i64)>,
}

impl WindowCache {
    pub const CAPACITY: usize = 4096;

    /// The window of `channel` if it was read less than `ttl_ms` before `now_ms`.
    pub fn fresh(&self, channel: &str, now_ms: i64, ttl_ms: i64) -> Option<Window> {
        let (window, at) = self.entries.get(channel)?;
        (now_ms.saturating_sub(*at) < ttl_ms && now_ms >= *at).then_some(*window)
    }

    pub fn put(&mut self, channel: &str, window: Window, now_ms: i64) {
        if self.entries.len() >= Self::CAPACITY && !self.entries.contains_key(channel) {
            self.entries.clear();
        }
        self.entries.insert(channel.to_string(), (window, now_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: u64) -> StoredEvent {
        StoredEvent {
            id,
            event_type: "message".into(),
            data: id.to_string(),
            time_ms: 0,
        }
    }

    fn rows(ids: std::ops::RangeInclusive<u64>) -> Vec<StoredEvent> {
        ids.map(ev).collect()
    }

    fn req(cursor: Option<u64>, limit: u32) -> PollRequest {
        PollRequest { cursor, limit }
    }

    const W10: Window = Window {
        head: 10,
        earliest: 1,
    };

    #[test]
    fn pages_table() {
        // (request, window, rows D1 gave, want next, more, gap, ids)
        type Case = (
            PollRequest,
            Window,
            Vec<StoredEvent>,
            u64,
            bool,
            Option<u64>,
            Vec<u64>,
        );
        let cases: Vec<Case> = vec![
            (req(None, 5), W10, vec![], 10, false, None, vec![]),
            (
                req(Some(0), 5),
                W10,
                rows(1..=6),
                5,
                true,
                None,
                vec![1, 2, 3, 4, 5],
            ),
            (
                req(Some(5), 5),
                W10,
                rows(6..=10),
                10,
                false,
                None,
                vec![6, 7, 8, 9, 10],
            ),
            (req(Some(10), 5), W10, vec![], 10, false, None, vec![]),
            // Ahead of the mirror: lag, not a gap; next stays at the cursor.
            (req(Some(15), 5), W10, vec![], 15, false, None, vec![]),
            // Pruned below 5: gap, then what is retained.
            (
                req(Some(2), 3),
                Window {
                    head: 10,
                    earliest: 5,
                },
                rows(5..=8),
                7,
                true,
                Some(5),
                vec![5, 6, 7],
            ),
            // Everything purged: the gap with nothing to deliver moves the cursor to the head.
            (
                req(Some(2), 3),
                Window {
                    head: 10,
                    earliest: 11,
                },
                vec![],
                10,
                false,
                Some(11),
                vec![],
            ),
            (
                req(Some(0), 3),
                Window::EMPTY,
                vec![],
                0,
                false,
                None,
                vec![],
            ),
        ];
        for (r, w, got_rows, next, more, gap, ids) in cases {
            let page = cut_page(&r, w, got_rows);
            let got_ids: Vec<u64> = page.events.iter().map(|e| e.id).collect();
            assert_eq!(
                (page.next, page.more, page.gap, got_ids),
                (next, more, gap, ids),
                "{r:?} {w:?}"
            );
        }
    }

    #[test]
    fn encoded_page() {
        let c = ChannelName::parse("c").unwrap();
        let page = cut_page(&req(Some(0), 1), W10, rows(1..=2));
        let v: serde_json::Value = serde_json::from_str(&page.encode(&c)).unwrap();
        assert_eq!(v["next"], 1);
        assert_eq!(v["more"], true);
        assert_eq!(v["head"], 10);
        assert_eq!(v["events"][0]["id"], 1);
        assert!(v.get("gap").is_none());
        let gap = cut_page(
            &req(Some(0), 5),
            Window {
                head: 10,
                earliest: 9,
            },
            rows(9..=10),
        );
        let v: serde_json::Value = serde_json::from_str(&gap.encode(&c)).unwrap();
        assert_eq!(
            (v["gap"].clone(), v["earliest"].clone()),
            (true.into(), 9.into())
        );
    }

    #[test]
    fn etag_changes_with_window_and_request() {
        let a = req(Some(3), 10).etag(W10);
        assert_eq!(a, req(Some(3), 10).etag(W10));
        assert_ne!(
            a,
            req(Some(3), 10).etag(Window {
                head: 11,
                earliest: 1
            })
        );
        assert_ne!(
            a,
            req(Some(3), 10).etag(Window {
                head: 10,
                earliest: 2
            })
        );
        assert_ne!(a, req(Some(4), 10).etag(W10));
        assert_ne!(req(None, 10).etag(W10), req(Some(10), 10).etag(W10));
    }

    #[test]
    fn window_cache_holds_for_its_ttl_only() {
        let w = Window {
            head: 7,
            earliest: 1,
        };
        let mut cache = WindowCache::default();
        assert_eq!(cache.fresh("c", 0, 250), None);
        cache.put("c", w, 1000);
        assert_eq!(cache.fresh("c", 1000, 250), Some(w));
        assert_eq!(cache.fresh("c", 1249, 250), Some(w));
        assert_eq!(cache.fresh("c", 1250, 250), None, "expired");
        assert_eq!(cache.fresh("c", 999, 250), None, "a clock that went back");
        assert_eq!(cache.fresh("c", 1000, 0), None, "ttl 0 turns it off");
        assert_eq!(cache.fresh("d", 1000, 250), None);
        for n in 0..WindowCache::CAPACITY {
            cache.put(&format!("x{n}"), w, 1000);
        }
        assert!(cache.entries.len() <= WindowCache::CAPACITY);
    }
}
