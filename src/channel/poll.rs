//! Cutting a poll page from the D1 mirror: which rows to ask for, and the answer's `events`,
//! `next`, `more` and gap fields, plus its `ETag`. A page is cut at `limit` events and at about
//! `max_bytes` serialised, whichever comes first, but always holds at least one event, so no
//! answer grows with what a client asks for. See `docs/API.md#polling`.

use super::{plan_replay, Replay, Window};
use crate::protocol::envelope::encode_envelope;
use crate::protocol::filter::EventTopics;
use crate::protocol::topics::Topics;
use crate::protocol::update::UpdateMeta;
use crate::protocol::ChannelName;
use std::collections::HashMap;

/// One mirrored event as D1 returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: u64,
    pub event_type: String,
    pub data: String,
    pub time_ms: i64,
    pub topics: Option<Topics>,
    /// A Mercure update's own fields (`None` for every other event).
    pub update: Option<UpdateMeta>,
}

impl StoredEvent {
    /// Its topics as filters read them (a private Mercure update says so).
    pub fn filtered_as(&self) -> EventTopics<'_> {
        EventTopics::new(self.topics.as_ref()).private(self.is_private())
    }

    /// True for a private Mercure update.
    pub fn is_private(&self) -> bool {
        self.update.as_ref().is_some_and(|u| u.private)
    }

    /// Its envelope's JSON text on `channel`.
    pub fn envelope(&self, channel: &ChannelName) -> String {
        encode_envelope(
            self.id,
            channel,
            &self.event_type,
            self.topics.as_ref(),
            &self.data,
            self.time_ms,
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRequest {
    pub cursor: Option<u64>,
    pub limit: u32,
    /// The page's budget in serialised envelopes (`MAX_PAGE_BYTES`, a setting: not part of
    /// the `ETag`, since it only changes with a deployment).
    pub max_bytes: usize,
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
    /// The ids of the page's events, and their envelopes (JSON text), in id order.
    pub ids: Vec<u64>,
    pub envelopes: Vec<String>,
    pub next: u64,
    pub more: bool,
    pub gap: Option<u64>,
    pub head: u64,
}

/// Builds the page from `rows` (ids after the cursor, ascending: at least what fits in `limit`
/// events and `max_bytes`, which the mirror query bounds by data size). `more` is true while
/// the page stops below the mirror's head: ids are contiguous up to it.
pub fn cut_page(
    req: &PollRequest,
    window: Window,
    rows: Vec<StoredEvent>,
    channel: &ChannelName,
) -> PollPage {
    let (after, gap) = match plan_replay(req.cursor, window, true) {
        Replay::Live => {
            return PollPage {
                ids: Vec::new(),
                envelopes: Vec::new(),
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
    let (mut ids, mut envelopes, mut bytes) = (Vec::new(), Vec::new(), 0usize);
    for e in rows.into_iter().take(limit) {
        let envelope = e.envelope(channel);
        // One more event and its comma; the first always goes in.
        bytes = bytes.saturating_add(envelope.len() + 1);
        if bytes > req.max_bytes && !ids.is_empty() {
            break;
        }
        ids.push(e.id);
        envelopes.push(envelope);
    }
    let next = ids
        .last()
        .copied()
        .unwrap_or(after)
        .max(req.cursor.unwrap_or(0));
    PollPage {
        more: next < window.head && !ids.is_empty(),
        ids,
        envelopes,
        next,
        gap,
        head: window.head,
    }
}

impl PollPage {
    /// `{"channel","events":[envelopes],"next","more","head","gap"?,"earliest"?}`.
    pub fn encode(&self, channel: &ChannelName) -> String {
        let gap = self.gap.map_or_else(String::new, |earliest| {
            format!(",\"gap\":true,\"earliest\":{earliest}")
        });
        format!("{}{}{gap}}}", self.before_head(channel), self.head)
    }

    /// The answer up to its head's value: `{"channel",…,"more":…,"head":`.
    fn before_head(&self, channel: &ChannelName) -> String {
        let name = serde_json::to_string(channel.as_str()).unwrap_or_default();
        format!(
            "{{\"channel\":{name},\"events\":[{}],\"next\":{},\"more\":{},\"head\":",
            self.envelopes.join(","),
            self.next,
            self.more,
        )
    }

    /// This page as a still page, when it is one: it ends below the head and has no gap, so
    /// nothing but a pruning or a purge reaching its events can change it (`StillPage`).
    pub fn still(&self, cursor: Option<u64>, channel: &ChannelName) -> Option<StillPage> {
        let cursor = cursor?;
        (self.more && self.gap.is_none() && self.next < self.head).then(|| StillPage {
            cursor,
            next: self.next,
            before_head: self.before_head(channel),
        })
    }
}

/// A page that ends below the channel's head, with no gap. Ids are never reused and an event
/// never changes, and the mirror only ever drops a prefix of a channel's ids (pruning moves
/// `earliest` up; a purge moves it past the head): so while `earliest` has not passed the
/// page's cursor, the same request gets the same events, `next` and `more` for any later
/// window, and only `head` differs. A purge or a pruning that reaches the page moves
/// `earliest` past its cursor, and the page is no longer the answer (`answer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StillPage {
    pub cursor: u64,
    pub next: u64,
    /// The encoded answer up to its head's value (`PollPage::before_head`).
    pub before_head: String,
}

impl StillPage {
    /// The answer to the page's request for `window`: the page with `window`'s head, or `None`
    /// when it is not that answer any more (events after the cursor pruned or purged), or
    /// `window` is older than the page.
    pub fn answer(&self, window: Window) -> Option<String> {
        let kept = plan_replay(Some(self.cursor), window, true) == Replay::After(self.cursor);
        (kept && self.next < window.head).then(|| format!("{}{}}}", self.before_head, window.head))
    }
}

/// Mirror windows read recently, per channel, so that a poll whose answer this isolate knows
/// for that window (a 304 for a matching tag, or a page it made: `page_cache`) needs no D1. A
/// window is used for `ttl_ms` after it was read: an answer may then be that much late (more
/// lag, never a hole: every answer is one the mirror gave at some moment). A publish through
/// this isolate makes every window below the head it must have reached stale, so a window read
/// while the mirror still lags behind that publish is not kept as fresh: the publisher's own
/// isolate shows its event as soon as the mirror does. At most `capacity` channels are held; a
/// full cache starts over.
#[derive(Debug, Clone, Default)]
pub struct WindowCache {
    entries: HashMap<String, (Window, i64)>,
    /// The head a window must reach to be fresh again, after a publish through this isolate.
    behind: HashMap<String, u64>,
}

impl WindowCache {
    pub const CAPACITY: usize = 4096;

    /// The window of `channel` if it was read less than `ttl_ms` before `now_ms`, and shows
    /// every publish made through this isolate.
    pub fn fresh(&self, channel: &str, now_ms: i64, ttl_ms: i64) -> Option<Window> {
        let (window, at) = self.entries.get(channel)?;
        let caught_up = self.behind.get(channel).is_none_or(|h| window.head >= *h);
        (caught_up && now_ms.saturating_sub(*at) < ttl_ms && now_ms >= *at).then_some(*window)
    }

    /// The window of `channel` read last, however long ago: a hint, never an answer.
    pub fn last(&self, channel: &str) -> Option<Window> {
        self.entries.get(channel).map(|(window, _)| *window)
    }

    /// Drops `channel`'s window: its next poll reads D1.
    pub fn forget(&mut self, channel: &str) {
        self.entries.remove(channel);
    }

    /// A publish through this isolate: the mirror's head will pass the one read last (or 0),
    /// and no window is fresh until one shows it.
    pub fn published(&mut self, channel: &str) {
        let head = self.entries.remove(channel).map_or(0, |(w, _)| w.head);
        if self.behind.len() >= Self::CAPACITY && !self.behind.contains_key(channel) {
            self.behind.clear();
        }
        let floor = self.behind.entry(channel.to_string()).or_insert(0);
        *floor = (*floor).max(head.saturating_add(1));
    }

    pub fn put(&mut self, channel: &str, window: Window, now_ms: i64) {
        if self.entries.len() >= Self::CAPACITY && !self.entries.contains_key(channel) {
            self.entries.clear();
        }
        if self.behind.get(channel).is_some_and(|h| window.head >= *h) {
            self.behind.remove(channel);
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
            topics: None,
            update: None,
        }
    }

    fn rows(ids: std::ops::RangeInclusive<u64>) -> Vec<StoredEvent> {
        ids.map(ev).collect()
    }

    fn req(cursor: Option<u64>, limit: u32) -> PollRequest {
        PollRequest {
            cursor,
            limit,
            max_bytes: 1 << 20,
        }
    }

    fn channel() -> ChannelName {
        ChannelName::parse("c").unwrap()
    }

    const W10: Window = Window {
        head: 10,
        earliest: 1,
    };

    #[test]
    fn a_still_page_answers_later_windows_as_a_fresh_cut_would() {
        let w = |head, earliest| Window { head, earliest };
        // Cursor 3, limit 4, head 10: events 4..=7, more.
        let page = cut_page(&req(Some(3), 4), W10, rows(4..=8), &channel());
        let still = page.still(Some(3), &channel()).unwrap();
        assert_eq!(
            still.answer(W10).as_deref(),
            Some(page.encode(&channel()).as_str())
        );
        // Later heads, and pruning that has not reached event 4: the same events, next and
        // more, with the new head, byte for byte what D1 would give.
        for later in [w(11, 1), w(500, 1), w(500, 4)] {
            let fresh = cut_page(&req(Some(3), 4), later, rows(4..=8), &channel());
            assert_eq!(
                still.answer(later),
                Some(fresh.encode(&channel())),
                "{later:?}"
            );
        }
        // Pruned past the cursor, purged (earliest past the head), or a window older than the
        // page: not the answer.
        for gone in [w(500, 5), w(10, 11), w(7, 1), w(0, 1)] {
            assert_eq!(still.answer(gone), None, "{gone:?}");
        }
    }

    #[test]
    fn only_pages_below_the_head_without_a_gap_are_still() {
        let c = channel();
        // Up to the head: the next publish changes it.
        assert!(cut_page(&req(Some(5), 5), W10, rows(6..=10), &c)
            .still(Some(5), &c)
            .is_none());
        // A gap: a pruning changes `earliest` in it.
        let pruned = Window {
            head: 10,
            earliest: 5,
        };
        let gap = cut_page(&req(Some(2), 3), pruned, rows(5..=8), &c);
        assert!(gap.more && gap.still(Some(2), &c).is_none());
        // No cursor: from now on, never still.
        assert!(cut_page(&req(None, 5), W10, vec![], &c)
            .still(None, &c)
            .is_none());
        assert!(cut_page(&req(Some(0), 5), W10, rows(1..=6), &c)
            .still(Some(0), &c)
            .is_some());
    }

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
            let page = cut_page(&r, w, got_rows, &channel());
            assert_eq!(
                (page.next, page.more, page.gap, page.ids),
                (next, more, gap, ids),
                "{r:?} {w:?}"
            );
        }
    }

    #[test]
    fn encoded_page() {
        let c = channel();
        let page = cut_page(&req(Some(0), 1), W10, rows(1..=2), &c);
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
            &c,
        );
        let v: serde_json::Value = serde_json::from_str(&gap.encode(&c)).unwrap();
        assert_eq!(
            (v["gap"].clone(), v["earliest"].clone()),
            (true.into(), 9.into())
        );
    }

    fn sized(id: u64, bytes: usize) -> StoredEvent {
        StoredEvent {
            data: format!("\"{}\"", "x".repeat(bytes)),
            ..ev(id)
        }
    }

    #[test]
    fn pages_are_cut_by_bytes_and_hold_at_least_one_event() {
        let c = channel();
        let one = sized(1, 1000).envelope(&c).len() + 1;
        let budget = |n: usize| PollRequest {
            cursor: Some(0),
            limit: 100,
            max_bytes: n,
        };
        let ten: Vec<StoredEvent> = (1..=10).map(|id| sized(id, 1000)).collect();
        // Room for exactly three.
        let page = cut_page(&budget(3 * one), W10, ten.clone(), &c);
        assert_eq!(
            (page.ids.clone(), page.next, page.more),
            (vec![1, 2, 3], 3, true)
        );
        assert!(page.encode(&c).len() <= 3 * one + 100);
        // One byte short of three: two.
        let page = cut_page(&budget(3 * one - 1), W10, ten.clone(), &c);
        assert_eq!(page.ids, vec![1, 2]);
        // Smaller than one event: that one event anyway, and the cursor moves.
        let page = cut_page(&budget(10), W10, ten.clone(), &c);
        assert_eq!((page.ids, page.next, page.more), (vec![1], 1, true));
        // Everything fits: the last page.
        let page = cut_page(&budget(1 << 20), W10, ten, &c);
        assert_eq!((page.ids.len(), page.next, page.more), (10, 10, false));
    }

    #[test]
    fn data_at_the_deepest_allowed_level_reads_back_with_serde_json_defaults() {
        let cap = crate::config::MAX_DATA_DEPTH_CAP;
        let data = format!("{}1{}", "[".repeat(cap), "]".repeat(cap));
        let c = channel();
        let mut e = ev(1);
        e.data = data;
        let body = cut_page(&req(Some(0), 10), W10, vec![e], &c).encode(&c);
        let page: Result<serde_json::Value, _> = serde_json::from_str(&body);
        assert!(page.is_ok(), "{:?}", page.err());
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
        cache.forget("c");
        assert_eq!(cache.fresh("c", 1000, 250), None, "forgotten");
        for n in 0..WindowCache::CAPACITY {
            cache.put(&format!("x{n}"), w, 1000);
        }
        assert!(cache.entries.len() <= WindowCache::CAPACITY);
    }

    #[test]
    fn a_window_behind_a_publish_through_this_isolate_is_never_fresh() {
        let w = |head| Window { head, earliest: 1 };
        let mut cache = WindowCache::default();
        cache.put("c", w(5), 1000);
        assert_eq!(cache.fresh("c", 1100, 250), Some(w(5)));
        cache.published("c");
        assert_eq!(cache.fresh("c", 1100, 250), None, "forgotten");
        // The mirror still lags: the window read now is kept as a hint, not as fresh.
        cache.put("c", w(5), 1200);
        assert_eq!(cache.fresh("c", 1210, 250), None);
        assert_eq!(cache.last("c"), Some(w(5)));
        // Once a window shows the publish, windows are fresh again, for their ttl only.
        cache.put("c", w(6), 1300);
        assert_eq!(cache.fresh("c", 1310, 250), Some(w(6)));
        assert_eq!(cache.fresh("c", 1550, 250), None);
        cache.put("c", w(6), 1600);
        assert_eq!(cache.fresh("c", 1610, 250), Some(w(6)));
        // A publish with nothing read before: any head of 1 or more shows it.
        cache.published("d");
        cache.put("d", w(0), 1000);
        assert_eq!(cache.fresh("d", 1001, 250), None);
        cache.put("d", w(1), 1002);
        assert_eq!(cache.fresh("d", 1003, 250), Some(w(1)));
    }
}
