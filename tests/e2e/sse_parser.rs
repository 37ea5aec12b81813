//! The WHATWG `text/event-stream` interpretation, as a browser's `EventSource` runs it: BOM,
//! CR/LF/CRLF line ends, `field: value` with one optional space, comments, `data` joined with
//! LF, `id` (without NUL) as the last event id, `retry` digits only, dispatch on a blank line.
//! Its own tests run as trials that need no hub.

use crate::api::Api;
use crate::{case_no_hub, Case};
/// One dispatched event, as `MessageEvent` would carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The event type: the last `event:` field, or `message`.
    pub kind: String,
    pub data: String,
    /// The stream's last event id when this event was dispatched (it persists across events).
    pub last_event_id: String,
}

impl SseEvent {
    /// The last event id as a number (our hub's ids are integers).
    pub fn id(&self) -> Option<u64> {
        self.last_event_id.parse().ok()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or(serde_json::Value::Null)
    }
}

/// What the parser reports: dispatched events, and comments (which a browser ignores; the tests
/// look at them to see heartbeats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Event(SseEvent),
    Comment(String),
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The WHATWG event-stream interpretation, fed bytes in chunks of any size.
#[derive(Debug, Default)]
pub struct Parser {
    pending: Vec<u8>,
    bom_checked: bool,
    /// The last chunk ended in CR: an LF at the start of the next one belongs to it.
    skip_lf: bool,
    data: String,
    event_type: String,
    id_buffer: String,
    /// The event source's last event id (what a reconnect sends as `Last-Event-ID`).
    pub last_event_id: String,
    /// The reconnection time set by the last valid `retry:` field, in milliseconds.
    pub retry: Option<u64>,
    /// The `id:` value of the block being read, if it has one (the last such line).
    block_id: Option<String>,
    /// The `id:` of every block that set the last event id without dispatching an event (a
    /// block with an `id:` line and no data, as a multi-channel stream opens with), in order.
    pub id_only_blocks: Vec<String>,
}

impl Parser {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Item> {
        let mut out = Vec::new();
        let mut bytes = bytes;
        if self.skip_lf && !bytes.is_empty() {
            self.skip_lf = false;
            if bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
        }
        self.pending.extend_from_slice(bytes);
        if !self.bom_checked {
            // One leading U+FEFF is stripped by the UTF-8 decode step; wait until we can tell.
            if self.pending.len() < BOM.len() && BOM.starts_with(&self.pending) {
                return out;
            }
            self.bom_checked = true;
            if self.pending.starts_with(BOM) {
                self.pending.drain(..BOM.len());
            }
        }
        let mut start = 0;
        let mut i = 0;
        while i < self.pending.len() {
            let b = self.pending[i];
            if b != b'\r' && b != b'\n' {
                i += 1;
                continue;
            }
            let line = String::from_utf8_lossy(&self.pending[start..i]).into_owned();
            let mut end = i + 1;
            if b == b'\r' {
                match self.pending.get(i + 1) {
                    Some(b'\n') => end += 1,
                    None => self.skip_lf = true,
                    Some(_) => {}
                }
            }
            self.line(&line, &mut out);
            start = end;
            i = end;
        }
        self.pending.drain(..start);
        out
    }

    /// The end of the stream: an event without its blank line is discarded, as the spec says.
    pub fn finish(&mut self) {
        self.pending.clear();
        self.data.clear();
        self.event_type.clear();
        self.block_id = None;
    }

    fn line(&mut self, line: &str, out: &mut Vec<Item>) {
        if line.is_empty() {
            return self.dispatch(out);
        }
        if let Some(comment) = line.strip_prefix(':') {
            out.push(Item::Comment(comment.to_string()));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event_type = value.to_string(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => {
                self.id_buffer = value.to_string();
                self.block_id = Some(value.to_string());
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<Item>) {
        self.last_event_id = self.id_buffer.clone();
        let block_id = self.block_id.take();
        if self.data.is_empty() {
            self.event_type.clear();
            self.id_only_blocks.extend(block_id);
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        let kind = match std::mem::take(&mut self.event_type) {
            t if t.is_empty() => "message".to_string(),
            t => t,
        };
        out.push(Item::Event(SseEvent {
            kind,
            data,
            last_event_id: self.last_event_id.clone(),
        }));
    }
}

/// True for the hub's heartbeat comment.
pub fn is_heartbeat(item: &Item) -> bool {
    matches!(item, Item::Comment(c) if c.trim() == "heartbeat")
}

pub fn cases() -> Vec<Case> {
    vec![
        case_no_hub!(sse_parser_line_ends_bom_and_chunk_boundaries),
        case_no_hub!(sse_parser_fields_comments_and_dispatch),
        case_no_hub!(sse_parser_id_and_retry_rules),
    ]
}

fn events(items: &[Item]) -> Vec<(String, String, String)> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Event(e) => Some((e.kind.clone(), e.data.clone(), e.last_event_id.clone())),
            Item::Comment(_) => None,
        })
        .collect()
}

fn ev(kind: &str, data: &str, id: &str) -> (String, String, String) {
    (kind.into(), data.into(), id.into())
}

/// Feeds `input` whole, then one byte at a time: the result may not depend on chunking.
fn parse_both_ways(input: &[u8]) -> Vec<Item> {
    let whole = Parser::default().feed(input);
    let mut p = Parser::default();
    let bytewise: Vec<Item> = input.iter().flat_map(|b| p.feed(&[*b])).collect();
    assert_eq!(
        whole,
        bytewise,
        "chunking changed the result for {:?}",
        String::from_utf8_lossy(input)
    );
    whole
}

async fn sse_parser_line_ends_bom_and_chunk_boundaries(_: Api) {
    for input in [
        "data: a\n\n",
        "data: a\r\r",
        "data: a\r\n\r\n",
        "data: a\r\n\n",
        "data: a\n\r\n",
    ] {
        assert_eq!(
            events(&parse_both_ways(input.as_bytes())),
            vec![ev("message", "a", "")],
            "{input:?}"
        );
    }
    // A CRLF split across two chunks is one line end, not an end and a blank line.
    let mut p = Parser::default();
    let mut got = p.feed(b"data: a\r");
    got.extend(p.feed(b"\ndata: b\r\n\r\n"));
    assert_eq!(events(&got), vec![ev("message", "a\nb", "")]);
    // One leading BOM is stripped; a second one is part of a field name (so ignored).
    let bom = "\u{FEFF}data: x\n\n\u{FEFF}data: y\n\n";
    assert_eq!(
        events(&parse_both_ways(bom.as_bytes())),
        vec![ev("message", "x", "")]
    );
    // Multi-byte UTF-8 survives any chunk boundary.
    assert_eq!(
        events(&parse_both_ways("data: é€😀\n\n".as_bytes())),
        vec![ev("message", "é€😀", "")]
    );
    // An event cut off by the end of the stream is discarded.
    let mut p = Parser::default();
    let got = p.feed(b"data: done\n\ndata: half");
    p.finish();
    assert_eq!(events(&got), vec![ev("message", "done", "")]);
    assert!(
        p.feed(b"\n\n").is_empty(),
        "nothing of the cut event may survive finish()"
    );
}

async fn sse_parser_fields_comments_and_dispatch(_: Api) {
    // The spec's own examples.
    let stock = parse_both_ways(b"data: YHOO\ndata: +2\ndata: 10\n\n");
    assert_eq!(events(&stock), vec![ev("message", "YHOO\n+2\n10", "")]);
    let blocks = parse_both_ways(b"data\n\ndata\ndata\n\ndata:");
    assert_eq!(
        events(&blocks),
        vec![ev("message", "", ""), ev("message", "\n", "")]
    );
    let spaces = parse_both_ways(b"data:test\n\ndata: test\n\ndata:  two\n\n");
    assert_eq!(
        events(&spaces),
        vec![
            ev("message", "test", ""),
            ev("message", "test", ""),
            ev("message", " two", "")
        ]
    );
    // Comments are not events; unknown fields are ignored; `event` applies to one event only.
    let input = b": hello\nfoo: bar\nevent: order.created\ndata: 1\n\n:\ndata: 2\n\n";
    let items = parse_both_ways(input);
    assert_eq!(
        events(&items),
        vec![ev("order.created", "1", ""), ev("message", "2", "")]
    );
    let comments: Vec<&Item> = items
        .iter()
        .filter(|i| matches!(i, Item::Comment(_)))
        .collect();
    assert_eq!(
        comments,
        vec![
            &Item::Comment(" hello".into()),
            &Item::Comment(String::new())
        ]
    );
    // A blank line without data dispatches nothing and forgets the event type.
    let items = parse_both_ways(b"event: x\n\ndata: y\n\n");
    assert_eq!(events(&items), vec![ev("message", "y", "")]);
    // The hub's own framing: preamble, typed event, message event, gap, heartbeat.
    let hub = b"retry: 2000\n: edgehub stream open\n\nid: 1\nevent: t\ndata: {\"a\":1}\n\nid: 2\ndata: 2\n\nevent: gap\ndata: {\"requested\":9,\"earliest\":1}\n\n: heartbeat\n\n";
    let mut p = Parser::default();
    let items = p.feed(hub);
    assert_eq!(p.retry, Some(2000));
    assert_eq!(
        events(&items),
        vec![
            ev("t", "{\"a\":1}", "1"),
            ev("message", "2", "2"),
            ev("gap", "{\"requested\":9,\"earliest\":1}", "2"),
        ]
    );
    assert_eq!(items.iter().filter(|i| is_heartbeat(i)).count(), 1);
}

async fn sse_parser_id_and_retry_rules(_: Api) {
    // The id persists across events until set again; an empty id clears it; NUL is ignored.
    let mut p = Parser::default();
    let items = p.feed(b"id: 5\ndata: a\n\ndata: b\n\nid: 6\0\ndata: c\n\nid\ndata: d\n\n");
    assert_eq!(
        events(&items),
        vec![
            ev("message", "a", "5"),
            ev("message", "b", "5"),
            ev("message", "c", "5"),
            ev("message", "d", "")
        ]
    );
    // An id-only block sets the last event id without dispatching anything.
    let mut p = Parser::default();
    assert!(events(&p.feed(b"id: 42\n\n")).is_empty());
    assert_eq!(p.last_event_id, "42");
    // An id line counts only once its block is dispatched.
    let mut p = Parser::default();
    p.feed(b"id: 7\n");
    assert_eq!(p.last_event_id, "");
    // retry: ASCII digits only, otherwise ignored.
    for (input, want) in [
        ("retry: 1000\n", Some(1000)),
        ("retry:250\n", Some(250)),
        ("retry: 1a\n", None),
        ("retry: -5\n", None),
        ("retry: \n", None),
        ("retry:  10\n", None),
        ("retry: 1.5\n", None),
    ] {
        let mut p = Parser::default();
        p.feed(input.as_bytes());
        assert_eq!(p.retry, want, "{input:?}");
    }
}
