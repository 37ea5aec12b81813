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

/// Belt and braces for field values other than data: a stray CR or LF would end the field.
fn single_line(s: &str) -> String {
    s.replace(['\r', '\n'], "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
