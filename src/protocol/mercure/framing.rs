//! One Mercure update as a Server-Sent Events event, in the reference hub's field order
//! (`event`, `retry`, `id`, then `data`). Data is split into one `data:` field per line, which
//! 1.0 makes a security rule: a raw newline in data could otherwise start a forged field.

/// `event: T` (only with a type), `retry: N` (only with a retry), `id: ID`, one `data: LINE`
/// per line of `data` (split on CRLF, CR or LF, so an empty data is one empty `data:` field),
/// and the blank line that ends the event. A receiver joins the lines with LF.
pub fn sse_event(id: &str, event_type: Option<&str>, retry: Option<u64>, data: &str) -> String {
    let mut out = String::with_capacity(data.len() + id.len() + 32);
    if let Some(event_type) = event_type {
        field(&mut out, "event", &single_line(event_type));
    }
    if let Some(retry) = retry {
        field(&mut out, "retry", &retry.to_string());
    }
    // A NUL makes a browser ignore the id field, so it is dropped with CR and LF.
    field(&mut out, "id", &single_line(id).replace('\0', ""));
    for line in data.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
        field(&mut out, "data", line);
    }
    out.push('\n');
    out
}

/// `name: value` and LF. The one space after the colon is the one a receiver strips, so a
/// value's own leading spaces survive.
fn field(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str(": ");
    out.push_str(value);
    out.push('\n');
}

/// Belt and braces: ids and types are validated at publish (no controls), but a CR or LF here
/// would end the field and start one chosen by the publisher.
fn single_line(s: &str) -> String {
    s.replace(['\r', '\n'], "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_in_the_reference_order() {
        assert_eq!(
            sse_event("urn:uuid:1", Some("update"), Some(3000), "x"),
            "event: update\nretry: 3000\nid: urn:uuid:1\ndata: x\n\n"
        );
        assert_eq!(sse_event("1", None, None, "x"), "id: 1\ndata: x\n\n");
        assert_eq!(
            sse_event("1", None, Some(0), "x"),
            "retry: 0\nid: 1\ndata: x\n\n"
        );
    }

    #[test]
    fn data_is_one_field_per_line_split_on_crlf_cr_and_lf() {
        assert_eq!(
            sse_event("1", None, None, "a\r\nb\rc\nd"),
            "id: 1\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(
            sse_event("1", None, None, "a\n"),
            "id: 1\ndata: a\ndata: \n\n"
        );
        assert_eq!(
            sse_event("1", None, None, "\r\n\r\n"),
            "id: 1\ndata: \ndata: \ndata: \n\n"
        );
    }

    #[test]
    fn empty_data_is_one_empty_data_field() {
        assert_eq!(sse_event("1", None, None, ""), "id: 1\ndata: \n\n");
    }

    #[test]
    fn conformance_suite_data_survives_framing() {
        // `"data for\n\n        " + name`: an empty line, then 8 leading spaces.
        let data = "data for\n\n        raw string";
        let id = r#"id-["3f9a"]"#;
        assert_eq!(
            sse_event(id, None, None, data),
            "id: id-[\"3f9a\"]\ndata: data for\ndata: \ndata:         raw string\n\n"
        );
        assert_eq!(reassemble(&sse_event(id, None, None, data)), data);
    }

    #[test]
    fn data_cannot_inject_fields_or_events() {
        let data = "x\nevent: forged\nid: 666\n\ndata: y";
        let text = sse_event("1", None, None, data);
        assert_eq!(text.matches("\n\n").count(), 1, "one event: {text:?}");
        for line in text.lines().filter(|l| !l.is_empty()) {
            assert!(
                line.starts_with("id: ") || line.starts_with("data: "),
                "{line:?}"
            );
        }
        let id = sse_event("1\nevent: forged\r\0", Some("t\r\ndata: z"), None, "x");
        assert_eq!(id, "event: tdata: z\nid: 1event: forged\ndata: x\n\n");
    }

    /// What an `EventSource` hands to `onmessage`: the data lines joined by LF, one leading
    /// space stripped.
    fn reassemble(event: &str) -> String {
        let lines: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|v| v.strip_prefix(' ').unwrap_or(v))
            .collect();
        lines.join("\n")
    }
}
