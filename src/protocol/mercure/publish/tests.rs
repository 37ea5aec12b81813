//! One test per publish rule of the Mercure specs (0.x and the 1.0 draft), named after it.

use super::*;
use proptest::prelude::*;

fn hub() -> Url {
    Url::parse("https://hub.example/.well-known/mercure").unwrap()
}

fn parse(body: &str) -> Result<Update, Error> {
    parse_publish(body.as_bytes(), &hub())
}

fn update(body: &str) -> Update {
    parse(body).unwrap()
}

fn status(body: &str) -> u16 {
    parse(body).unwrap_err().status()
}

#[test]
fn the_spec_example() {
    assert_eq!(
        update("topic=https://example.com/foo&data=the%20content"),
        Update {
            topics: vec!["https://example.com/foo".into()],
            data: "the content".into(),
            id: None,
            private: false,
            event_type: None,
            retry: None,
        }
    );
}

#[test]
fn topic_is_required() {
    for body in ["", "data=x", "topics=a", "Topic=a", "id=1&private=on"] {
        assert_eq!(status(body), 400, "{body:?}");
    }
}

#[test]
fn first_topic_is_canonical_and_order_and_repeats_are_kept() {
    let u = update("topic=b&data=x&topic=a&topic=b");
    assert_eq!(u.topics, ["b", "a", "b"]);
}

#[test]
fn more_than_max_topics_is_413() {
    let body = |n: usize| vec!["topic=t"; n].join("&");
    assert_eq!(update(&body(MAX_TOPICS)).topics.len(), MAX_TOPICS);
    assert_eq!(status(&body(MAX_TOPICS + 1)), 413);
}

#[test]
fn topic_over_max_topic_bytes_is_413() {
    let at = "a".repeat(MAX_TOPIC_BYTES);
    assert_eq!(update(&format!("topic={at}")).topics, vec![at.clone()]);
    assert_eq!(status(&format!("topic=b&topic={at}a")), 413);
}

#[test]
fn topic_is_not_empty_and_has_no_control_or_format_characters() {
    for bad in [
        "",
        "a%0Ab",
        "%0D",
        "%00",
        "%7F",
        "%C2%85",
        "a%E2%80%8B",
        "%E2%80%AE",
        "%F3%A0%80%81",
    ] {
        assert_eq!(status(&format!("topic=ok&topic={bad}")), 400, "{bad:?}");
    }
}

#[test]
fn topic_must_be_utf8() {
    assert_eq!(status("topic=%FF"), 400);
}

#[test]
fn topic_may_not_be_the_wildcard() {
    assert_eq!(status("topic=*"), 400);
    assert_eq!(status("topic=a&topic=%2A"), 400);
    assert_eq!(update("topic=**").topics, ["**"]);
}

#[test]
fn topic_may_not_address_the_reserved_hub_namespace() {
    for topic in [
        "/.well-known/mercure",
        "/.well-known/mercure/",
        "/.well-known/mercure/subscriptions/exact/a/b",
        "https://hub.example/.well-known/mercure/subscriptions",
        "https://other.example/.well-known/mercure/x",
        "http://hub.example:8080/.well-known/mercure",
        "mailto:/.well-known/mercure",
        "//evil.example/.well-known/mercure/x",
        "/.well-known/%6Dercure/x",
        "/.well-known/%6dercure",
        "/%2Ewell-known/mercure",
        "/.well-known/mercure/../mercure/x",
        "/x/../.well-known/mercure",
        "/.well-known/x/%2e%2e/mercure",
        "/.well-known/x/%2E./mercure",
        "https://hub.example\\.well-known\\mercure",
        "mercure/subscriptions",
        "mercure",
        "?x",
        "#x",
    ] {
        let body = format!("topic=ok&topic={}", percent_encode(topic));
        assert_eq!(status(&body), 400, "{topic}");
    }
}

#[test]
fn topic_outside_the_reserved_namespace_is_allowed() {
    for topic in [
        "https://example.com/foo",
        "/.well-known/mercurex",
        "/.well-known/mercure-x",
        "/.well-known/mercure%2Fx",
        "/.WELL-KNOWN/mercure",
        "/.well-known",
        "subscriptions",
        "urn:x:/.well-known/mercure",
        "https://exa mple.com/.well-known/mercure",
        "http://[::1/.well-known/mercure",
        "will-not-match}",
    ] {
        let body = format!("topic={}", percent_encode(topic));
        assert_eq!(update(&body).topics, [topic], "{topic}");
    }
}

#[test]
fn reserved_namespace_follows_the_hub_path() {
    let other = Url::parse("https://hub.example/hub").unwrap();
    assert!(parse_publish(b"topic=/hub/x", &other).is_err());
    assert!(parse_publish(b"topic=/.well-known/mercure/x", &other).is_ok());
}

#[test]
fn data_may_be_absent_and_the_first_one_counts() {
    assert_eq!(update("topic=a").data, "");
    assert_eq!(update("topic=a&data=").data, "");
    assert_eq!(update("topic=a&data=1&data=2").data, "1");
}

#[test]
fn data_must_be_utf8() {
    assert_eq!(status("topic=a&data=%C3"), 400);
    assert_eq!(
        update("topic=a&data=%C3%A9%00%0D%0A").data,
        "é\0\r\n",
        "newlines are framed"
    );
}

#[test]
fn id_may_not_start_with_a_hash() {
    assert_eq!(status("topic=a&id=%23frag"), 400);
    assert_eq!(update("topic=a&id=a%23b").id.as_deref(), Some("a#b"));
}

#[test]
fn id_may_not_be_earliest() {
    assert_eq!(status("topic=a&id=earliest"), 400);
    assert_eq!(
        update("topic=a&id=Earliest").id.as_deref(),
        Some("Earliest")
    );
}

#[test]
fn id_has_no_control_or_format_characters() {
    for bad in ["a%0Ab", "a%0D", "%00", "%7F", "%C2%80", "%E2%81%A0"] {
        assert_eq!(status(&format!("topic=a&id={bad}")), 400, "{bad:?}");
    }
}

#[test]
fn id_over_max_id_bytes_is_413() {
    let at = "i".repeat(MAX_ID_BYTES);
    assert_eq!(update(&format!("topic=a&id={at}")).id, Some(at.clone()));
    assert_eq!(status(&format!("topic=a&id={at}i")), 413);
}

#[test]
fn empty_id_is_no_id() {
    assert_eq!(update("topic=a&id=").id, None);
    assert_eq!(update("topic=a&id").id, None);
    assert_eq!(
        update("topic=a&id=&id=x").id,
        None,
        "the first id field counts"
    );
}

#[test]
fn private_is_set_by_presence_whatever_its_value() {
    for body in [
        "topic=a&private=on",
        "topic=a&private=",
        "topic=a&private",
        "private=false&topic=a",
        "topic=a&private=%FF",
    ] {
        assert!(update(body).private, "{body}");
    }
    assert!(!update("topic=a&Private=on").private);
}

#[test]
fn type_has_no_control_or_format_characters() {
    for bad in ["a%0Ab", "%0D", "%00", "%C2%9F", "%EF%BB%BF"] {
        assert_eq!(status(&format!("topic=a&type={bad}")), 400, "{bad:?}");
    }
    assert_eq!(
        update("topic=a&type=order+created").event_type.as_deref(),
        Some("order created")
    );
}

#[test]
fn type_mercure_is_reserved() {
    assert_eq!(status("topic=a&type=mercure"), 400);
    assert_eq!(
        update("topic=a&type=Mercure").event_type.as_deref(),
        Some("Mercure")
    );
}

#[test]
fn type_over_max_type_bytes_is_413() {
    let at = "t".repeat(MAX_TYPE_BYTES);
    assert_eq!(
        update(&format!("topic=a&type={at}")).event_type,
        Some(at.clone())
    );
    assert_eq!(status(&format!("topic=a&type={at}t")), 413);
}

#[test]
fn empty_type_is_no_type() {
    assert_eq!(update("topic=a&type=").event_type, None);
}

#[test]
fn retry_is_ascii_digits_only() {
    for bad in [
        "-1", "+1", "1.5", "1e3", "%201", "1%0A", "%D9%A1", "0x10", "a",
    ] {
        assert_eq!(status(&format!("topic=a&retry={bad}")), 400, "{bad:?}");
    }
    assert_eq!(update("topic=a&retry=3000").retry, Some(3000));
    assert_eq!(update("topic=a&retry=007").retry, Some(7));
    assert_eq!(update("topic=a&retry=0").retry, Some(0));
    assert_eq!(update("topic=a&retry=").retry, None);
    assert_eq!(
        update(&format!("topic=a&retry={}", u64::MAX)).retry,
        Some(u64::MAX)
    );
    assert_eq!(status("topic=a&retry=18446744073709551616"), 413);
}

#[test]
fn unknown_fields_are_ignored() {
    let u = update("topic=a&foo=%FF&Data=x&authorization=t&topics=b");
    assert_eq!((u.topics, u.data), (vec!["a".to_string()], String::new()));
}

/// The conformance suite's publish body, as `URLSearchParams` encodes it: a JSON-ish id with
/// `"`, `[`, `]`; data with an empty line and 8 leading spaces; `private=on`.
#[test]
fn conformance_suite_publish_body() {
    let topic = "3f9a1b2c3d4e5f60718293a4b5c6d7e8f9012345";
    let body = format!(
        "topic={topic}&id=id-%5B%22{topic}%22%5D&data=data+for%0A%0A++++++++private+raw+string\
         &private=on"
    );
    let u = update(&body);
    assert_eq!(u.topics, [topic]);
    assert_eq!(u.id, Some(format!("id-[\"{topic}\"]")));
    assert_eq!(u.data, "data for\n\n        private raw string");
    assert!(u.private);
    assert_eq!(
        update(&body),
        u,
        "a repeated id is accepted: ids are not checked for reuse"
    );
}

#[test]
fn generated_id_is_an_rfc_9562_v4_urn_uuid() {
    assert_eq!(
        generate_id([0; 16]),
        "urn:uuid:00000000-0000-4000-8000-000000000000"
    );
    assert_eq!(
        generate_id([0xff; 16]),
        "urn:uuid:ffffffff-ffff-4fff-bfff-ffffffffffff"
    );
    let bytes: [u8; 16] = core::array::from_fn(|i| u8::try_from(i * 17).unwrap());
    assert_eq!(
        generate_id(bytes),
        "urn:uuid:00112233-4455-4677-8899-aabbccddeeff"
    );
}

/// What `URLSearchParams` does to a value (enough for these tests).
fn percent_encode(s: &str) -> String {
    crate::protocol::query::percent_encode(s)
}

proptest! {
    #[test]
    fn generated_ids_are_valid_update_ids(bytes in any::<[u8; 16]>()) {
        let id = generate_id(bytes);
        let uuid = regex::Regex::new(
            r"\Aurn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\z",
        ).unwrap();
        prop_assert!(uuid.is_match(&id), "{}", id);
        prop_assert_eq!(parse_id(id.clone()).ok(), Some(id));
    }

    #[test]
    fn never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(u) = parse_publish(&body, &hub()) {
            prop_assert!(!u.topics.is_empty() && u.topics.len() <= MAX_TOPICS);
        }
    }

    #[test]
    fn form_shaped_bodies_never_panic(body in "(topic|data|id|type|retry|private)=[a-z%0-9/.#*]{0,12}(&(topic|id|type|retry)=[a-z%0-9/.#]{0,12}){0,6}") {
        let _ = parse(&body);
    }
}
