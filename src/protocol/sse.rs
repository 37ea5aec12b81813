//! Server-Sent Events framing, per the WHATWG `text/event-stream` format. Every field value we
//! write is a single line by construction (ids are integers, types follow their grammar, data is
//! compact JSON, which cannot hold a raw newline), so no input can inject a field or an event.
//! See `docs/API.md#sse`.

use super::names::EventType;

pub const CONTENT_TYPE: &str = "text/event-stream";
pub const CACHE_CONTROL: &str = "no-cache, no-transform";
/// The name of the in-band gap event.
pub const GAP_EVENT: &str = "gap";
/// How long `EventSource` waits before reconnecting, sent in the first bytes.
pub const RETRY_MS: u32 = 2000;

/// The first bytes of every stream: the reconnect delay and a comment, sent at once so proxies
/// and clients see the stream open before the first event.
pub fn preamble() -> String {
    format!("retry: {RETRY_MS}\n: edgehub stream open\n\n")
}

/// A comment line: ignored by clients, keeps intermediaries from timing the stream out.
pub fn heartbeat() -> &'static str {
    ": heartbeat\n\n"
}

/// One event: `id`, `event` (left out for the default type), `data` as one line of JSON.
pub fn event(id: u64, event_type: &EventType, data: &str) -> String {
    encode(Some(id), event_type.as_str(), event_type.is_default(), data)
}

/// The gap notice: events after `requested` are gone; delivery resumes at `earliest`.
pub fn gap(requested: u64, earliest: u64) -> String {
    let data = format!("{{\"requested\":{requested},\"earliest\":{earliest}}}");
    encode(None, GAP_EVENT, false, &data)
}

fn encode(id: Option<u64>, event_type: &str, default_type: bool, data: &str) -> String {
    let mut out = String::with_capacity(data.len() + event_type.len() + 32);
    if let Some(id) = id {
        out.push_str(&format!("id: {id}\n"));
    }
    if !default_type {
        out.push_str(&format!("event: {}\n", single_line(event_type)));
    }
    // One `data:` line per line (CRLF, CR and LF all end a line in this format), so even a
    // multi-line value stays one event and cannot start a field of its own.
    for line in data.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

/// The id an event block starts with (`id: N` as `event` writes it), if it has one.
fn block_id(block: &str) -> Option<u64> {
    let (digits, _) = block.strip_prefix("id: ")?.split_once('\n')?;
    digits.parse().ok()
}

/// The blocks of a chunk of our own SSE text (events as `event` writes them, one after
/// another), each with its byte offset. Every block ends with a blank line, and none holds
/// one inside: field values are single lines.
fn blocks(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split_inclusive("\n\n").scan(0, |offset, block| {
        let at = *offset;
        *offset += block.len();
        Some((at, block))
    })
}

/// The ids of the first and last events of a chunk, if it holds any.
pub fn chunk_ids(text: &str) -> Option<(u64, u64)> {
    let mut ids = blocks(text).filter_map(|(_, b)| block_id(b));
    let first = ids.next()?;
    Some((first, ids.last().unwrap_or(first)))
}

/// What of a chunk is after the event with id `through`: the chunk from its first event with
/// a greater id (blocks without an id before it go too), or nothing.
pub fn after(text: &str, through: u64) -> &str {
    blocks(text)
        .find(|(_, b)| block_id(b).is_some_and(|id| id > through))
        .and_then(|(at, _)| text.get(at..))
        .unwrap_or("")
}

/// Reads a gap notice as `gap` writes it: `(requested, earliest)`.
pub fn parse_gap(text: &str) -> Option<(u64, u64)> {
    let json = text
        .strip_prefix("event: gap\ndata: {\"requested\":")?
        .strip_suffix("}\n\n")?;
    let (requested, earliest) = json.split_once(",\"earliest\":")?;
    Some((requested.parse().ok()?, earliest.parse().ok()?))
}

/// Belt and braces for field values other than data: a stray CR or LF would end the field.
fn single_line(s: &str) -> String {
    s.replace(['\r', '\n'], "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chunks_are_read_back_by_their_event_ids() {
        let typed = EventType::parse("order.created").unwrap();
        let chunk = [
            event(7, &EventType::default(), "{}"),
            event(8, &typed, "1"),
            event(10, &EventType::default(), "[2]"),
        ]
        .concat();
        assert_eq!(chunk_ids(&chunk), Some((7, 10)));
        assert_eq!(after(&chunk, 6), chunk);
        assert_eq!(after(&chunk, 7), &chunk[chunk.find("id: 8").unwrap()..]);
        assert_eq!(after(&chunk, 9), "id: 10\ndata: [2]\n\n");
        assert_eq!(after(&chunk, 10), "");
        assert_eq!(chunk_ids(&gap(3, 10)), None);
        assert_eq!(chunk_ids(heartbeat()), None);
        assert_eq!(after(&gap(3, 10), 0), "");
        let with_gap = gap(3, 10) + &event(10, &EventType::default(), "1");
        assert_eq!(chunk_ids(&with_gap), Some((10, 10)));
        assert_eq!(after(&with_gap, 3), "id: 10\ndata: 1\n\n");
    }

    #[test]
    fn gap_notices_are_read_back() {
        assert_eq!(parse_gap(&gap(3, 10)), Some((3, 10)));
        assert_eq!(
            parse_gap(&gap(0, 9_007_199_254_740_991)),
            Some((0, 9_007_199_254_740_991))
        );
        assert_eq!(parse_gap(&event(1, &EventType::default(), "{}")), None);
        assert_eq!(
            parse_gap("event: gap\ndata: {\"requested\":x,\"earliest\":1}\n\n"),
            None
        );
    }

    #[test]
    fn exact_bytes() {
        let message = EventType::default();
        assert_eq!(
            event(7, &message, r#"{"a":1}"#),
            "id: 7\ndata: {\"a\":1}\n\n"
        );
        let typed = EventType::parse("order.created").unwrap();
        assert_eq!(
            event(8, &typed, "1"),
            "id: 8\nevent: order.created\ndata: 1\n\n"
        );
        assert_eq!(
            gap(3, 10),
            "event: gap\ndata: {\"requested\":3,\"earliest\":10}\n\n"
        );
        assert_eq!(preamble(), "retry: 2000\n: edgehub stream open\n\n");
        assert_eq!(heartbeat(), ": heartbeat\n\n");
    }

    #[test]
    fn a_newline_in_data_cannot_start_a_field() {
        let framed = event(1, &EventType::default(), "x\nid: 999\r\nevent: evil");
        assert_eq!(
            framed,
            "id: 1\ndata: x\ndata: id: 999\ndata: event: evil\n\n"
        );
    }

    proptest! {
        #[test]
        fn every_line_is_a_known_field_and_one_event_results(data in "[a-z:\\r\\n ]{0,64}", id in 0u64..1_000_000) {
            let framed = event(id, &EventType::default(), &data);
            prop_assert!(framed.ends_with("\n\n"));
            let body = &framed[..framed.len() - 2];
            prop_assert!(!body.contains('\r'));
            prop_assert!(!body.contains("\n\n"), "only one blank line, at the end");
            for line in body.split('\n') {
                prop_assert!(line.starts_with("id: ") || line.starts_with("data: "), "{line:?}");
                prop_assert!(!line.contains('\r'));
            }
        }
    }
}
