//! Many channels on one stream (`/sse`, `/ws` and `/poll` without a channel in the path): the
//! channel set a request names (`?channel=a&channel=b…`) and the stream cursor, every channel's
//! position as `channel=id` pairs joined by `,` (`orders=12,user:42=7`; neither `=` nor `,` can
//! occur in a channel name). A stream cursor resumes every channel of the stream at once: it is
//! each multi-channel SSE event's `id:` and a multi-channel poll's `next`. The routes that use
//! these are not built yet (issue 14); this is their grammar.

use super::names::ChannelName;
use super::query::{parse_cursor, percent_decode};
use crate::error::Error;
use std::collections::{HashMap, HashSet};

/// The default `MAX_STREAM_CHANNELS`.
pub const DEFAULT_MAX_STREAM_CHANNELS: usize = 100;

/// The distinct channels of one stream, in the order the request named them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSet(Vec<ChannelName>);

impl ChannelSet {
    /// Every `channel=` of a query string: 1 to `max` distinct valid names. None, a repeated
    /// name or more than `max` is 400 (a repeat is refused rather than merged: it is a client
    /// bug, and two cursors for one channel would have no meaning).
    pub fn parse(query: &str, max: usize) -> Result<ChannelSet, Error> {
        let mut names: Vec<ChannelName> = Vec::new();
        // Seen names: a hundred channels are checked in linear time, not pairwise.
        let mut seen: HashSet<String> = HashSet::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key != "channel" {
                continue;
            }
            if names.len() == max {
                return Err(Error::bad_request(format!(
                    "a stream names at most {max} channels (MAX_STREAM_CHANNELS)"
                )));
            }
            let value = percent_decode(&value.replace('+', " "))
                .ok_or_else(|| Error::bad_request("query parameter channel is badly encoded"))?;
            let name = ChannelName::parse(&value)?;
            if !seen.insert(name.as_str().to_string()) {
                return Err(Error::bad_request(format!(
                    "channel {name} is named twice: name each channel once"
                )));
            }
            names.push(name);
        }
        if names.is_empty() {
            return Err(Error::bad_request(
                "name at least one channel: ?channel=a&channel=b",
            ));
        }
        Ok(ChannelSet(names))
    }

    pub fn channels(&self) -> &[ChannelName] {
        &self.0
    }

    pub fn contains(&self, channel: &ChannelName) -> bool {
        self.0.contains(channel)
    }
}

/// Where a stream starts, from its `since` (or an SSE `Last-Event-ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamSince {
    /// `since=0`: everything retained on every channel.
    All,
    /// A stream cursor: each named channel after its id; a channel it does not name starts
    /// from now.
    Cursor(StreamCursor),
}

impl StreamSince {
    /// `0` or a stream cursor whose channels are all in `set`; anything else is 400.
    pub fn parse(text: &str, set: &ChannelSet) -> Result<StreamSince, Error> {
        if text == "0" {
            return Ok(StreamSince::All);
        }
        let cursor = StreamCursor::parse(text)?;
        let members: HashSet<&str> = set.0.iter().map(ChannelName::as_str).collect();
        if let Some((outside, _)) = cursor.0.iter().find(|(c, _)| !members.contains(c.as_str())) {
            return Err(Error::bad_request(format!(
                "the cursor names channel {outside}, which this stream does not"
            )));
        }
        Ok(StreamSince::Cursor(cursor))
    }

    /// Where `channel` starts: after this id, or `None` for "from now on".
    pub fn start(&self, channel: &ChannelName) -> Option<u64> {
        match self {
            StreamSince::All => Some(0),
            StreamSince::Cursor(cursor) => cursor.get(channel),
        }
    }

    /// Where each channel of `set` starts, in the set's order (one pass over the cursor).
    pub fn starts(since: Option<&StreamSince>, set: &ChannelSet) -> Vec<Option<u64>> {
        let at: HashMap<&str, u64> = match since {
            Some(StreamSince::Cursor(cursor)) => {
                cursor.0.iter().map(|(c, id)| (c.as_str(), *id)).collect()
            }
            _ => HashMap::new(),
        };
        let all = matches!(since, Some(StreamSince::All));
        set.0
            .iter()
            .map(|c| match all {
                true => Some(0),
                false => at.get(c.as_str()).copied(),
            })
            .collect()
    }
}

/// Each channel's position in a stream, in the stream's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamCursor(Vec<(ChannelName, u64)>);

impl StreamCursor {
    /// `channel=id` pairs joined by `,`: each name valid and named once, each id a cursor.
    pub fn parse(text: &str) -> Result<StreamCursor, Error> {
        let bad = || {
            Error::bad_request(
                "a stream cursor is channel=id pairs joined by commas, e.g. orders=12,user:42=7",
            )
        };
        let mut pairs: Vec<(ChannelName, u64)> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for pair in text.split(',') {
            let (name, id) = pair.split_once('=').ok_or_else(bad)?;
            let name = ChannelName::parse(name).map_err(|_| bad())?;
            let id = parse_cursor(id).map_err(|_| bad())?;
            if !seen.insert(name.as_str().to_string()) {
                return Err(Error::bad_request(format!(
                    "the cursor names channel {name} twice"
                )));
            }
            pairs.push((name, id));
        }
        Ok(StreamCursor(pairs))
    }

    /// The position of `channel`, if the cursor names it.
    pub fn get(&self, channel: &ChannelName) -> Option<u64> {
        self.0.iter().find(|(c, _)| c == channel).map(|(_, id)| *id)
    }

    /// Sets `channel`'s position (adding it at the end if it is new).
    pub fn set(&mut self, channel: &ChannelName, id: u64) {
        match self.0.iter_mut().find(|(c, _)| c == channel) {
            Some(pair) => pair.1 = id,
            None => self.0.push((channel.clone(), id)),
        }
    }

    /// `a=1,b=2`: the text `parse` reads back.
    pub fn encode(&self) -> String {
        self.0
            .iter()
            .map(|(c, id)| format!("{c}={id}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(query: &str) -> ChannelSet {
        ChannelSet::parse(query, 3).unwrap()
    }

    fn name(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    #[test]
    fn channel_sets() {
        let s = set("channel=orders&since=0&channel=user%3A42");
        assert_eq!(s.channels(), &[name("orders"), name("user:42")]);
        for (query, what) in [
            ("", "none"),
            ("since=0", "none"),
            ("channel=a&channel=a", "repeated"),
            ("channel=a&channel=b&channel=c&channel=d", "too many"),
            ("channel=bad%20name", "invalid"),
            ("channel=", "empty"),
            ("channel=%zz", "badly encoded"),
        ] {
            let got = ChannelSet::parse(query, 3).map_err(|e| e.status());
            assert_eq!(got.err(), Some(400), "{what}: {query}");
        }
        assert_eq!(set("channel=a&channel=b&channel=c").channels().len(), 3);
    }

    #[test]
    fn since_is_zero_or_a_cursor_over_the_set() {
        let s = set("channel=orders&channel=user:42");
        assert_eq!(StreamSince::parse("0", &s), Ok(StreamSince::All));
        let since = StreamSince::parse("user:42=7,orders=12", &s).unwrap();
        assert_eq!(since.start(&name("orders")), Some(12));
        assert_eq!(since.start(&name("user:42")), Some(7));
        let partial = StreamSince::parse("orders=3", &s).unwrap();
        assert_eq!(partial.start(&name("user:42")), None, "from now on");
        assert_eq!(StreamSince::All.start(&name("x")), Some(0));
        assert_eq!(StreamSince::starts(Some(&partial), &s), vec![Some(3), None]);
        assert_eq!(
            StreamSince::starts(Some(&StreamSince::All), &s),
            vec![Some(0), Some(0)]
        );
        assert_eq!(StreamSince::starts(None, &s), vec![None, None]);
        for bad in [
            "",
            "5",
            "orders",
            "orders=",
            "orders=-1",
            "orders=1,",
            "orders=1,orders=2",
            "other=1",
            "orders=1;user:42=2",
            "orders=9007199254740992",
        ] {
            assert!(StreamSince::parse(bad, &s).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cursors_keep_the_stream_order_and_move() {
        let mut c = StreamCursor::default();
        c.set(&name("b"), 4);
        c.set(&name("a"), 0);
        c.set(&name("b"), 9);
        assert_eq!(c.encode(), "b=9,a=0");
        assert_eq!(StreamCursor::parse(&c.encode()), Ok(c));
    }

    proptest! {
        #[test]
        fn cursors_round_trip(pairs in prop::collection::btree_map("[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", 0u64..=(1 << 53) - 1, 1..8)) {
            let mut c = StreamCursor::default();
            for (n, id) in &pairs {
                c.set(&name(n), *id);
            }
            prop_assert_eq!(StreamCursor::parse(&c.encode()), Ok(c));
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,40}") {
            let _ = StreamCursor::parse(&s);
            let _ = ChannelSet::parse(&s, 5);
        }
    }
}
