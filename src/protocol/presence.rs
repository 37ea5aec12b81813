//! Presence on the wire (DESIGN.md "Presence", issue 15): the `?presence=` flag, the `sync`,
//! `join` and `leave` objects, framed for SSE (`event: presence` with no `id:`, so the cursor
//! does not move) and for WebSocket (`op` `presence`), and the `GET /channels/{c}/presence`
//! listing. A batch of several changes for one subscriber goes out as one `diff`. Also who may
//! enter (`Entrant`).

use super::envelope::format_time;
use super::names::ChannelName;
use crate::auth::delegate::ANY_SUB;
use crate::auth::Info;
use crate::error::Error;
use serde::{Deserialize, Serialize};

/// The longest `sub` that may enter presence, in characters (as `POST /tokens` allows): it
/// travels in every event of its member and in its sockets' attachments.
pub const MAX_SUB_CHARS: usize = 256;

pub const PRESENCE_EVENT: &str = "presence";
pub const OP_PRESENCE: &str = "presence";

/// `?presence=`: `1` enters the channel's presence, `0` (or no flag) does not; anything else is
/// 400, so a typo cannot silently leave a client out.
pub fn parse_flag(value: Option<&str>) -> Result<bool, Error> {
    match value {
        None | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(_) => Err(Error::bad_request(
            "presence is 1 (enter the channel's presence) or 0",
        )),
    }
}

/// A connection entering presence: its token's `sub` and `info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entrant {
    pub sub: String,
    pub info: Option<Info>,
}

impl Entrant {
    /// The member a token makes: 400 without a `sub` (anonymous, or a token without one), with
    /// the delegating backend's `*`, or with one over `MAX_SUB_CHARS`.
    pub fn new(sub: Option<&str>, info: Option<&Info>) -> Result<Entrant, Error> {
        let refused = |why: &str| Err(Error::bad_request(format!("presence=1 {why}")));
        match sub {
            None => refused("needs a token with a sub: the member is the token's sub"),
            Some(ANY_SUB) => refused("needs a user's sub, not the delegating \"*\""),
            Some(sub) if sub.is_empty() || sub.chars().count() > MAX_SUB_CHARS => {
                refused(&format!("needs a sub of 1 to {MAX_SUB_CHARS} characters"))
            }
            Some(sub) => Ok(Entrant {
                sub: sub.to_string(),
                info: info.cloned(),
            }),
        }
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

fn info_json(info: Option<&Info>) -> &str {
    info.map_or("null", Info::as_json)
}

/// `{"sub","info"}`.
fn member(sub: &str, info: Option<&Info>) -> String {
    format!("{{\"sub\":{},\"info\":{}}}", quote(sub), info_json(info))
}

/// `{"action":"sync","channel","members":[{"sub","info"}…]}`: every member, the receiver
/// included, sent right after a presence subscriber joins (before any other event of the
/// channel) and after a coalesced storm.
pub fn sync<'a>(
    channel: &ChannelName,
    members: impl Iterator<Item = (&'a str, Option<&'a Info>)>,
) -> String {
    let members: Vec<String> = members.map(|(sub, info)| member(sub, info)).collect();
    format!(
        "{{\"action\":\"sync\",\"channel\":{},\"members\":[{}]}}",
        quote(channel.as_str()),
        members.join(",")
    )
}

/// `{"action":"join"|"leave","channel","member":{"sub","info"}}`.
pub fn change(channel: &ChannelName, joined: bool, sub: &str, info: Option<&Info>) -> String {
    let action = if joined { "join" } else { "leave" };
    format!(
        "{{\"action\":\"{action}\",\"channel\":{},\"member\":{}}}",
        quote(channel.as_str()),
        member(sub, info)
    )
}

/// The SSE form: no `id:` line, so `Last-Event-ID` (the cursor) does not move.
/// What a batch tells one subscriber, as one object: `join` or `leave` for a single change,
/// else `{"action":"diff","channel","joins":[members],"leaves":[members]}` (apply the leaves,
/// then the joins); `None` for nothing.
pub fn changes(
    channel: &ChannelName,
    joins: &[(String, Option<Info>)],
    leaves: &[(String, Option<Info>)],
) -> Option<String> {
    match (joins, leaves) {
        ([], []) => None,
        ([(sub, info)], []) => Some(change(channel, true, sub, info.as_ref())),
        ([], [(sub, info)]) => Some(change(channel, false, sub, info.as_ref())),
        _ => {
            let list = |members: &[(String, Option<Info>)]| -> String {
                let members: Vec<String> = members
                    .iter()
                    .map(|(sub, info)| member(sub, info.as_ref()))
                    .collect();
                members.join(",")
            };
            Some(format!(
                "{{\"action\":\"diff\",\"channel\":{},\"joins\":[{}],\"leaves\":[{}]}}",
                quote(channel.as_str()),
                list(joins),
                list(leaves)
            ))
        }
    }
}

pub fn sse(object: &str) -> String {
    format!("event: {PRESENCE_EVENT}\ndata: {object}\n\n")
}

/// The WebSocket form: the object with `"op":"presence"` first.
pub fn ws(object: &str) -> String {
    match object.strip_prefix('{') {
        Some(rest) => format!("{{\"op\":\"{OP_PRESENCE}\",{rest}"),
        None => format!("{{\"op\":\"{OP_PRESENCE}\"}}"),
    }
}

/// One entry of the `GET /channels/{c}/presence` listing.
pub struct Listed<'a> {
    pub sub: &'a str,
    pub info: Option<&'a Info>,
    pub connections: u32,
    pub since_ms: i64,
}

/// `{"channel","count","members":[{"sub","info","connections","since"}]}`: `count` is every
/// member, `members` the first ones by `sub` (the caller bounds them).
pub fn listing<'a>(
    channel: &ChannelName,
    count: usize,
    members: impl Iterator<Item = Listed<'a>>,
) -> String {
    let members: Vec<String> = members
        .map(|m| {
            let since = format_time(m.since_ms).unwrap_or_default();
            format!(
                "{{\"sub\":{},\"info\":{},\"connections\":{},\"since\":{}}}",
                quote(m.sub),
                info_json(m.info),
                m.connections,
                quote(&since)
            )
        })
        .collect();
    format!(
        "{{\"channel\":{},\"count\":{count},\"members\":[{}]}}",
        quote(channel.as_str()),
        members.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c() -> ChannelName {
        ChannelName::parse("room:1").unwrap()
    }

    #[test]
    fn who_may_enter() {
        let ada = Info::parse(r#"{"name":"Ada"}"#).unwrap();
        assert_eq!(
            Entrant::new(Some("ada"), Some(&ada)),
            Ok(Entrant {
                sub: "ada".into(),
                info: Some(ada.clone())
            })
        );
        let long = "ā".repeat(MAX_SUB_CHARS);
        assert!(Entrant::new(Some(&long), None).is_ok());
        for bad in [None, Some("*"), Some(""), Some(&format!("{long}x")[..])] {
            let refused = Entrant::new(bad, None).unwrap_err();
            assert_eq!(refused.status(), 400, "{bad:?}");
        }
    }

    #[test]
    fn the_flag() {
        assert_eq!(parse_flag(None), Ok(false));
        assert_eq!(parse_flag(Some("0")), Ok(false));
        assert_eq!(parse_flag(Some("1")), Ok(true));
        for bad in ["", "true", "yes", "2", " 1"] {
            assert!(parse_flag(Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exact_objects_and_frames() {
        let ada = Info::parse(r#"{"name":"Ada"}"#).unwrap();
        let joined = change(&c(), true, "ada", Some(&ada));
        assert_eq!(
            joined,
            r#"{"action":"join","channel":"room:1","member":{"sub":"ada","info":{"name":"Ada"}}}"#
        );
        assert_eq!(
            change(&c(), false, "bo\"x", None),
            r#"{"action":"leave","channel":"room:1","member":{"sub":"bo\"x","info":null}}"#
        );
        assert_eq!(
            sync(&c(), [("ada", Some(&ada)), ("bo", None)].into_iter()),
            r#"{"action":"sync","channel":"room:1","members":[{"sub":"ada","info":{"name":"Ada"}},{"sub":"bo","info":null}]}"#
        );
        assert_eq!(sse(&joined), format!("event: presence\ndata: {joined}\n\n"));
        assert!(!sse(&joined).contains("id:"), "the cursor does not move");
        assert!(ws(&joined).starts_with(r#"{"op":"presence","action":"join","#));
        let listed = listing(
            &c(),
            3,
            [Listed {
                sub: "ada",
                info: Some(&ada),
                connections: 2,
                since_ms: 0,
            }]
            .into_iter(),
        );
        assert_eq!(
            listed,
            r#"{"channel":"room:1","count":3,"members":[{"sub":"ada","info":{"name":"Ada"},"connections":2,"since":"1970-01-01T00:00:00.000Z"}]}"#
        );
    }

    #[test]
    fn a_batch_is_one_object() {
        let ada = Info::parse(r#"{"name":"Ada"}"#).ok();
        let one = [("ada".to_string(), ada.clone())];
        assert_eq!(changes(&c(), &[], &[]), None);
        assert_eq!(
            changes(&c(), &one, &[]),
            Some(change(&c(), true, "ada", ada.as_ref()))
        );
        assert_eq!(
            changes(&c(), &[], &one),
            Some(change(&c(), false, "ada", ada.as_ref()))
        );
        let two = [("bo".to_string(), None), ("cy".to_string(), None)];
        assert_eq!(
            changes(&c(), &two, &one).as_deref(),
            Some(
                r#"{"action":"diff","channel":"room:1","joins":[{"sub":"bo","info":null},{"sub":"cy","info":null}],"leaves":[{"sub":"ada","info":{"name":"Ada"}}]}"#
            )
        );
        assert_eq!(
            changes(&c(), &two, &[]).as_deref(),
            Some(
                r#"{"action":"diff","channel":"room:1","joins":[{"sub":"bo","info":null},{"sub":"cy","info":null}],"leaves":[]}"#
            )
        );
    }

    #[test]
    fn a_sub_with_line_breaks_cannot_break_the_sse_frame() {
        let framed = sse(&change(&c(), true, "a\nid: 9\n\ndata: x", None));
        assert_eq!(framed.matches('\n').count(), 3, "{framed:?}");
    }
}
