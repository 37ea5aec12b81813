//! Poll answers this isolate made recently, by request and mirror window: a poll whose
//! channels' windows the isolate read less than `POLL_CACHE_MS` ago (`WindowCache`) gets the
//! page made for the same request and the same windows again, without D1. That is sound for the
//! reason a 304 is: a poll's answer depends only on the request and the windows (its ETag says
//! exactly that), and a purge or a pruning moves `earliest`, so it changes the key. Pollers that
//! share a cursor then share one D1 read per window, and a "nothing new" answer costs none.
//!
//! The same cache holds still pages (`poll::StillPage`) by request alone, for any later window.
//!
//! Bounded: at most `MAX_ENTRIES` pages and `MAX_BYTES` of bodies; the least recently used go
//! first. A page larger than a quarter of `MAX_BYTES` is not kept.

use super::poll::StillPage;
use std::collections::VecDeque;
use std::rc::Rc;

const MAX_ENTRIES: usize = 512;
const MAX_BYTES: usize = 8 * 1024 * 1024;

/// What a cached page weighs against `PageCache::MAX_BYTES`.
pub trait Weigh {
    fn bytes(&self) -> usize;
}

impl Weigh for Rc<str> {
    fn bytes(&self) -> usize {
        self.len()
    }
}

impl Weigh for Rc<StillPage> {
    fn bytes(&self) -> usize {
        self.before_head.len()
    }
}

#[derive(Debug)]
pub struct PageCache<V = Rc<str>> {
    /// Least recently used first: (key, page).
    entries: VecDeque<(String, V)>,
    bytes: usize,
}

impl<V> Default for PageCache<V> {
    fn default() -> Self {
        PageCache {
            entries: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl PageCache {
    pub const MAX_ENTRIES: usize = MAX_ENTRIES;
    pub const MAX_BYTES: usize = MAX_BYTES;

    /// The key of a page: the route's channels (a v1 tag does not name its channel) and the
    /// answer's ETag, which covers the request and every window.
    pub fn key(channels: &str, etag: &str) -> String {
        format!("{channels} {etag}")
    }
}

impl<V: Weigh + Clone> PageCache<V> {
    /// The page kept under `key`, now the most recently used.
    pub fn get(&mut self, key: &str) -> Option<V> {
        let at = self.entries.iter().position(|(k, _)| k == key)?;
        let entry = self.entries.remove(at)?;
        let body = entry.1.clone();
        self.entries.push_back(entry);
        Some(body)
    }

    /// Drops the page kept under `key`, if any.
    pub fn remove(&mut self, key: &str) {
        if let Some(at) = self.entries.iter().position(|(k, _)| k == key) {
            if let Some((_, old)) = self.entries.remove(at) {
                self.bytes -= old.bytes();
            }
        }
    }

    /// Keeps `body` under `key`, dropping the least recently used pages to stay in bounds.
    pub fn put(&mut self, key: String, body: V) {
        let size = body.bytes();
        if size > MAX_BYTES / 4 {
            return;
        }
        if let Some(at) = self.entries.iter().position(|(k, _)| *k == key) {
            if let Some((_, old)) = self.entries.remove(at) {
                self.bytes -= old.bytes();
            }
        }
        while self.entries.len() >= MAX_ENTRIES || self.bytes + size > MAX_BYTES {
            match self.entries.pop_front() {
                Some((_, old)) => self.bytes -= old.bytes(),
                None => break,
            }
        }
        self.bytes += size;
        self.entries.push_back((key, body));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(n: usize) -> Rc<str> {
        Rc::from("x".repeat(n))
    }

    #[test]
    fn a_page_is_found_under_its_channels_and_tag_only() {
        let mut c = PageCache::default();
        c.put(PageCache::key("a", "\"5.1.-.100\""), Rc::from("{\"a\":1}"));
        assert_eq!(
            c.get(&PageCache::key("a", "\"5.1.-.100\"")).as_deref(),
            Some("{\"a\":1}")
        );
        // Another channel with the same tag, or the same channel with another window: a miss.
        assert!(c.get(&PageCache::key("b", "\"5.1.-.100\"")).is_none());
        assert!(c.get(&PageCache::key("a", "\"6.1.-.100\"")).is_none());
    }

    #[test]
    fn bytes_and_entries_stay_in_bounds_and_the_least_recently_used_go_first() {
        let mut c = PageCache::default();
        let quarter = PageCache::MAX_BYTES / 4;
        for k in 0..4 {
            c.put(format!("k{k}"), body(quarter));
        }
        assert_eq!((c.len(), c.bytes()), (4, PageCache::MAX_BYTES));
        // k0 used last: k1 is the oldest now, and goes when k4 comes.
        assert!(c.get("k0").is_some());
        c.put("k4".into(), body(quarter));
        assert!(c.get("k1").is_none());
        for k in ["k0", "k2", "k3", "k4"] {
            assert!(c.get(k).is_some(), "{k}");
        }
        assert!(c.bytes() <= PageCache::MAX_BYTES);
        // Too large to keep: not kept, nothing dropped for it.
        c.put("big".into(), body(quarter + 1));
        assert!(c.get("big").is_none());
        assert_eq!(c.len(), 4);
        // Many small pages: at most MAX_ENTRIES.
        let mut c = PageCache::default();
        for k in 0..PageCache::MAX_ENTRIES + 10 {
            c.put(format!("s{k}"), body(10));
        }
        assert_eq!(c.len(), PageCache::MAX_ENTRIES);
        assert!(c.get("s0").is_none());
        assert!(c.get(&format!("s{}", PageCache::MAX_ENTRIES + 9)).is_some());
    }

    #[test]
    fn removing_a_page_gives_back_its_bytes() {
        let mut c = PageCache::default();
        c.put("a".into(), body(100));
        c.put("b".into(), body(30));
        c.remove("a");
        c.remove("nothing");
        assert_eq!((c.len(), c.bytes()), (1, 30));
        assert!(c.get("a").is_none());
    }

    #[test]
    fn still_pages_weigh_their_text() {
        let page = Rc::new(StillPage {
            cursor: 3,
            next: 5,
            before_head: "x".repeat(70),
        });
        let mut c: PageCache<Rc<StillPage>> = PageCache::default();
        c.put("s".into(), page.clone());
        assert_eq!((c.len(), c.bytes()), (1, 70));
        assert_eq!(c.get("s"), Some(page));
    }

    #[test]
    fn putting_a_key_again_replaces_its_body_and_its_bytes() {
        let mut c = PageCache::default();
        c.put("k".into(), body(100));
        c.put("k".into(), body(40));
        assert_eq!((c.len(), c.bytes()), (1, 40));
        assert_eq!(c.get("k").map(|b| b.len()), Some(40));
    }
}
