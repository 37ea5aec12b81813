//! A multi-channel poll page (`GET /poll?channel=a&channel=b…`, `docs/API.md#stream-poll`): where
//! each channel's rows start, and how the page D1 returns is cut, given each channel's mirrored
//! window. Rows come round-robin (the first after each channel's position in the set's order,
//! then the second, …), so any prefix of them holds, for every channel, a run of consecutive ids
//! from its position: the page can be cut anywhere and its `next` never skips an event.

use super::poll::StoredEvent;
use super::{plan_replay, Replay, Window};
use crate::protocol::stream::{ChannelSet, StreamCursor, StreamSince};
use crate::protocol::ChannelName;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManyRequest {
    pub set: ChannelSet,
    /// Each channel's cursor, in the set's order (`None`: from now on).
    cursors: Vec<Option<u64>>,
    pub limit: u32,
    /// The page's budget in serialised envelopes (`MAX_PAGE_BYTES`).
    pub max_bytes: usize,
}

/// One row of the page, as D1 returns it: the channel's place in the set, and its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManyRow {
    pub lane: usize,
    pub event: StoredEvent,
}

/// A channel whose events after its cursor are no longer retained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelGap {
    pub channel: ChannelName,
    pub requested: u64,
    pub earliest: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManyPage {
    /// The envelopes (JSON text), in the page's order.
    pub envelopes: Vec<String>,
    pub next: StreamCursor,
    pub more: bool,
    pub gaps: Vec<ChannelGap>,
}

impl ManyRequest {
    /// `since`: `None` for every channel from now on.
    pub fn new(
        set: ChannelSet,
        since: Option<&StreamSince>,
        limit: u32,
        max_bytes: usize,
    ) -> ManyRequest {
        ManyRequest {
            cursors: StreamSince::starts(since, &set),
            set,
            limit,
            max_bytes,
        }
    }

    /// Each channel's cursor, in the set's order (`None`: from now on).
    pub fn cursors(&self) -> &[Option<u64>] {
        &self.cursors
    }

    /// The request as text (every channel and its cursor in the set's order, and the limit):
    /// what its answers are cached under, with their windows (`page_cache`). Channel names
    /// hold neither `=` nor `,`, so two requests have the same key only if they are the same.
    pub fn key(&self) -> String {
        let mut key = String::new();
        for (channel, cursor) in self.set.channels().iter().zip(self.cursors()) {
            key.push_str(channel.as_str());
            key.push('=');
            match cursor {
                Some(c) => key.push_str(&c.to_string()),
                None => key.push('-'),
            }
            key.push(',');
        }
        key.push_str(&format!("|{}|", self.limit));
        key
    }

    /// The answer depends only on the request and the channels' windows (in the set's order):
    /// the tag is a digest of both. `max_bytes` is a setting, not part of it. A digest can
    /// collide, so a cached answer is found by `key` and the tag together, never the tag alone.
    pub fn etag(&self, windows: &[Window]) -> String {
        let mut digest = Fnv::default();
        digest.write(self.key().as_bytes());
        for w in windows {
            digest.write(format!("{}.{},", w.head, w.earliest).as_bytes());
        }
        format!("\"m{:016x}\"", digest.0)
    }
}

/// Builds the page from `rows` (round-robin, as the mirror query orders them: for each channel
/// the ids after its position, consecutive; at least what fits in `limit` and `max_bytes`) and
/// each channel's mirrored window, in the set's order.
pub fn cut_many(req: &ManyRequest, windows: &[Window], rows: Vec<ManyRow>) -> ManyPage {
    let channels = req.set.channels();
    let mut next = StreamCursor::default();
    let mut gaps = Vec::new();
    let mut after_of = Vec::with_capacity(channels.len());
    for ((channel, cursor), window) in channels.iter().zip(req.cursors()).zip(windows) {
        let after = match plan_replay(*cursor, *window, true) {
            Replay::Live => window.head,
            Replay::After(n) => n,
            Replay::Gap {
                requested,
                earliest,
            } => {
                gaps.push(ChannelGap {
                    channel: channel.clone(),
                    requested,
                    earliest,
                });
                earliest.saturating_sub(1).max(requested)
            }
        };
        next.set(channel, after);
        after_of.push(after);
    }
    let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
    let (mut envelopes, mut bytes) = (Vec::new(), 0usize);
    for row in rows.into_iter().take(limit) {
        let (Some(channel), Some(after)) = (channels.get(row.lane), after_of.get_mut(row.lane))
        else {
            continue;
        };
        let e = row.event;
        // Only the next id of its channel keeps the page a run per channel.
        if e.id != *after + 1 {
            continue;
        }
        let envelope = e.envelope(channel);
        // One more event and its comma; the first always goes in.
        bytes = bytes.saturating_add(envelope.len() + 1);
        if bytes > req.max_bytes && !envelopes.is_empty() {
            break;
        }
        *after = e.id;
        next.set(channel, e.id);
        envelopes.push(envelope);
    }
    let behind = after_of
        .iter()
        .zip(windows)
        .any(|(after, window)| *after < window.head);
    ManyPage {
        more: behind && !envelopes.is_empty(),
        envelopes,
        next,
        gaps,
    }
}

impl ManyPage {
    /// `{"events":[envelopes],"next":"a=1,b=2","more","gaps"?:[{"channel","requested","earliest"}]}`.
    pub fn encode(&self) -> String {
        let gaps = match self.gaps.is_empty() {
            true => String::new(),
            false => {
                let each: Vec<String> = self
                    .gaps
                    .iter()
                    .map(|g| {
                        format!(
                            "{{\"channel\":{},\"requested\":{},\"earliest\":{}}}",
                            quote(g.channel.as_str()),
                            g.requested,
                            g.earliest
                        )
                    })
                    .collect();
                format!(",\"gaps\":[{}]", each.join(","))
            }
        };
        format!(
            "{{\"events\":[{}],\"next\":{},\"more\":{}{gaps}}}",
            self.envelopes.join(","),
            quote(&self.next.encode()),
            self.more
        )
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// FNV-1a, 64 bits: a stable digest for tags (not a defence against anyone; a tag only saves a
/// body, and auth is checked before it).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(names: &[&str]) -> ChannelSet {
        let query: Vec<String> = names.iter().map(|n| format!("channel={n}")).collect();
        ChannelSet::parse(&query.join("&"), 100).unwrap()
    }

    fn request(names: &[&str], since: Option<&str>, limit: u32) -> ManyRequest {
        let set = set(names);
        let since = since.map(|s| StreamSince::parse(s, &set).unwrap());
        ManyRequest::new(set, since.as_ref(), limit, 1 << 20)
    }

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

    fn w(head: u64, earliest: u64) -> Window {
        Window { head, earliest }
    }

    /// The rows the mirror query returns: round-robin over each lane's ids `from..=to`.
    fn round_robin(lanes: &[(u64, u64)]) -> Vec<ManyRow> {
        let mut rows = Vec::new();
        for n in 0.. {
            let mut any = false;
            for (lane, (from, to)) in lanes.iter().enumerate() {
                let id = from + n;
                if id <= *to {
                    rows.push(ManyRow {
                        lane,
                        event: ev(id),
                    });
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        rows
    }

    fn ids(page: &ManyPage) -> Vec<(String, u64)> {
        page.envelopes
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_str(e).unwrap();
                (
                    v["channel"].as_str().unwrap().to_string(),
                    v["id"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn round_robin_cut_at_limit_keeps_a_run_per_channel() {
        let req = request(&["a", "b"], Some("a=0,b=3"), 5);
        let page = cut_many(&req, &[w(4, 1), w(9, 1)], round_robin(&[(1, 4), (4, 9)]));
        let got = ids(&page);
        let want: Vec<(String, u64)> = [("a", 1), ("b", 4), ("a", 2), ("b", 5), ("a", 3)]
            .iter()
            .map(|(c, i)| (c.to_string(), *i))
            .collect();
        assert_eq!(got, want);
        assert_eq!(page.next.encode(), "a=3,b=5");
        assert!(page.more);
        assert!(page
            .encode()
            .starts_with("{\"events\":[{\"id\":1,\"channel\":\"a\""));
    }

    #[test]
    fn channels_without_events_keep_their_position() {
        // a from now on (its head), b at its cursor, c ahead of the mirror (lag).
        let req = request(&["a", "b", "c"], Some("b=2,c=50"), 10);
        let page = cut_many(&req, &[w(7, 1), w(2, 1), w(40, 1)], vec![]);
        assert_eq!(page.next.encode(), "a=7,b=2,c=50");
        assert!(!page.more && page.gaps.is_empty());
        assert_eq!(
            page.encode(),
            "{\"events\":[],\"next\":\"a=7,b=2,c=50\",\"more\":false}"
        );
    }

    #[test]
    fn a_gap_names_its_channel_and_moves_it_to_what_is_retained() {
        let req = request(&["a", "b"], Some("a=1,b=1"), 10);
        let page = cut_many(&req, &[w(10, 6), w(3, 1)], round_robin(&[(6, 10), (2, 3)]));
        assert_eq!(
            page.gaps,
            vec![ChannelGap {
                channel: ChannelName::parse("a").unwrap(),
                requested: 1,
                earliest: 6
            }]
        );
        assert_eq!(page.next.encode(), "a=10,b=3");
        assert!(page
            .encode()
            .ends_with(",\"gaps\":[{\"channel\":\"a\",\"requested\":1,\"earliest\":6}]}"));
        // Nothing retained at all: the gap moves the channel to its head.
        let page = cut_many(&req, &[w(10, 11), w(1, 1)], vec![]);
        assert_eq!(page.next.encode(), "a=10,b=1");
    }

    #[test]
    fn bytes_cut_the_page_but_never_to_nothing() {
        let mut req = request(&["a", "b"], Some("0"), 100);
        req.max_bytes = 10;
        let page = cut_many(&req, &[w(3, 1), w(3, 1)], round_robin(&[(1, 3), (1, 3)]));
        assert_eq!(page.envelopes.len(), 1);
        assert_eq!(page.next.encode(), "a=1,b=0");
        assert!(page.more);
    }

    #[test]
    fn tags_follow_the_request_and_every_window() {
        let req = request(&["a", "b"], Some("a=1"), 10);
        let tag = req.etag(&[w(3, 1), w(4, 1)]);
        assert_eq!(tag, req.etag(&[w(3, 1), w(4, 1)]));
        assert_ne!(tag, req.etag(&[w(3, 1), w(5, 1)]));
        assert_ne!(tag, req.etag(&[w(3, 2), w(4, 1)]));
        assert_ne!(
            tag,
            request(&["a", "b"], Some("a=2"), 10).etag(&[w(3, 1), w(4, 1)])
        );
        assert_ne!(
            tag,
            request(&["a", "b"], Some("a=1"), 11).etag(&[w(3, 1), w(4, 1)])
        );
        assert_ne!(
            tag,
            request(&["a", "b"], None, 10).etag(&[w(3, 1), w(4, 1)])
        );
        assert!(tag.starts_with("\"m") && tag.len() == 19);
    }

    proptest! {
        /// Paging a set with `next` until `more` is false delivers every retained event of every
        /// channel once, each channel in id order, whatever the limit and byte budget.
        #[test]
        fn paging_delivers_everything_once(
            heads in prop::collection::vec(0u64..30, 1..5),
            limit in 1u32..12,
            max_bytes in 40usize..400,
        ) {
            let names: Vec<String> = (0..heads.len()).map(|i| format!("c{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let windows: Vec<Window> = heads.iter().map(|h| w(*h, 1)).collect();
            let mut since = "0".to_string();
            let mut seen: Vec<Vec<u64>> = vec![Vec::new(); heads.len()];
            for _ in 0..200 {
                let mut req = request(&refs, Some(&since), limit);
                req.max_bytes = max_bytes;
                let lanes: Vec<(u64, u64)> = req
                    .cursors()
                    .iter()
                    .zip(&heads)
                    .map(|(c, h)| (c.unwrap_or(0) + 1, (*h).min(c.unwrap_or(0) + u64::from(limit))))
                    .collect();
                let page = cut_many(&req, &windows, round_robin(&lanes));
                for (channel, id) in ids(&page) {
                    let lane: usize = channel[1..].parse().unwrap();
                    seen[lane].push(id);
                }
                since = page.next.encode();
                if !page.more {
                    break;
                }
            }
            for (lane, head) in heads.iter().enumerate() {
                prop_assert_eq!(&seen[lane], &(1..=*head).collect::<Vec<_>>());
            }
        }
    }
}
