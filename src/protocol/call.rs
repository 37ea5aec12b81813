//! The Worker → channel object contract: every request the Worker makes on a channel's Durable
//! Object, as one typed enum with one encoder (`Call::encode`, used by `runtime/client.rs`) and
//! one decoder (`Call::decode`, used by the object's `fetch`). The Worker has validated and
//! authorised everything a call carries; the object trusts it, but still decodes strictly, so a
//! mismatch between two deployments fails loudly instead of being misread.

use crate::auth::Publisher;
use crate::channel::fanout::Transport;
use crate::error::Error;
use crate::protocol::filter::FilterSpec;
use crate::protocol::names::ChannelName;
use crate::protocol::presence::Entrant;
use crate::protocol::query::{parse_cursor, percent_decode, percent_encode, query_param};
use crate::protocol::topics::Topics;
use crate::protocol::update::UpdateMeta;
use serde::{Deserialize, Serialize};

/// The channel's name travels with every call: the object learns it on first use.
pub const CHANNEL_HEADER: &str = "x-edgehub-channel";
/// A subscribe whose token also allows publishing here.
pub const PUBLISH_HEADER: &str = "x-edgehub-publish";
/// A subscribe's token expiry, unix seconds.
pub const EXPIRES_HEADER: &str = "x-edgehub-expires";
/// A publish's validated `Idempotency-Key`.
pub const KEY_HEADER: &str = "x-edgehub-idempotency-key";
/// Whose idempotency keys a publish (or a socket's publishes) uses: `Publisher::hex`.
pub const PUBLISHER_HEADER: &str = "x-edgehub-publisher";
/// A subscribe that enters presence: its `Entrant` as percent-encoded JSON (header values are
/// bytes, a `sub` is any text).
pub const MEMBER_HEADER: &str = "x-edgehub-member";
/// A Mercure subscribe's last event id (percent-encoded: any text): the object resumes after
/// the update with that id.
pub const RESUME_HEADER: &str = "x-edgehub-resume";
/// The object's answer to `RESUME_HEADER`: the id of the update its replay starts after, or
/// `earliest` (Mercure's `Last-Event-ID` response header).
pub const RESUMED_HEADER: &str = "x-edgehub-resumed";
/// A subscribe of an isolate's shared upstream (`runtime::tap`, `runtime::stream::shared`):
/// its socket may report how many clients it carries.
pub const SHARED_HEADER: &str = "x-edgehub-shared";

const PATH_PUBLISH: &str = "/publish";
const PATH_PURGE: &str = "/purge";
const PATH_INFO: &str = "/info";
const PATH_SUBSCRIBE: &str = "/subscribe";
const PATH_PRESENCE: &str = "/presence";

/// One event of a batch as the Worker sends it: `data` is a string of compact JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchItem {
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Topics>,
    /// A Mercure update's own fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateMeta>,
}

/// What the Worker asks of a channel's object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Store a validated batch (`POST /channels/{c}/events`).
    Publish {
        items: Vec<BatchItem>,
        key: Option<String>,
        publisher: Option<Publisher>,
    },
    /// Drop the retained history (`DELETE /channels/{c}/events`).
    Purge,
    /// `GET /channels/{c}`.
    Info,
    /// Open a subscriber socket (a WebSocket client, or the Worker's SSE bridge).
    Subscribe {
        transport: Transport,
        cursor: Option<u64>,
        /// The token may also publish here.
        publish: bool,
        /// When the token stops being accepted, unix seconds.
        expires: Option<i64>,
        publisher: Option<Publisher>,
        /// Enters the channel's presence as this member.
        member: Option<Entrant>,
        /// Only events with topics this filter lets through (validated by the Worker).
        filter: Option<FilterSpec>,
        /// A Mercure last event id to resume after (then `cursor` is `None`).
        resume: Option<String>,
        /// The Worker's shared upstream: it reports how many clients it carries
        /// (`members N`), which the channel counts instead of one.
        shared: bool,
    },
    /// `GET /channels/{c}/presence`.
    Presence,
}

/// A call as an HTTP request: method, path with query, headers, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub post: bool,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<String>,
}

impl Call {
    pub fn encode(&self, channel: &ChannelName) -> Result<Encoded, Error> {
        let mut headers = vec![(CHANNEL_HEADER, channel.as_str().to_string())];
        let encoded = |post: bool, path: String, headers, body| Encoded {
            post,
            path,
            headers,
            body,
        };
        Ok(match self {
            Call::Publish {
                items,
                key,
                publisher,
            } => {
                headers.extend(key.clone().map(|k| (KEY_HEADER, k)));
                headers.extend(publisher.map(|p| (PUBLISHER_HEADER, p.hex())));
                let body = serde_json::to_string(items)
                    .map_err(|e| Error::Internal(format!("encoding a batch: {e}")))?;
                encoded(true, PATH_PUBLISH.into(), headers, Some(body))
            }
            Call::Purge => encoded(true, PATH_PURGE.into(), headers, None),
            Call::Info => encoded(false, PATH_INFO.into(), headers, None),
            Call::Presence => encoded(false, PATH_PRESENCE.into(), headers, None),
            Call::Subscribe {
                transport,
                cursor,
                publish,
                expires,
                publisher,
                member,
                filter,
                resume,
                shared,
            } => {
                if *shared {
                    headers.push((SHARED_HEADER, "1".into()));
                }
                if let Some(resume) = resume {
                    headers.push((RESUME_HEADER, percent_encode(resume)));
                }
                if let Some(member) = member {
                    let json = serde_json::to_string(member)
                        .map_err(|e| Error::Internal(format!("encoding a member: {e}")))?;
                    headers.push((MEMBER_HEADER, percent_encode(&json)));
                }
                headers.push((PUBLISH_HEADER, if *publish { "1" } else { "0" }.into()));
                headers.extend(expires.map(|e| (EXPIRES_HEADER, e.to_string())));
                if *publish {
                    headers.extend(publisher.map(|p| (PUBLISHER_HEADER, p.hex())));
                }
                let since = cursor.map_or_else(String::new, |c| format!("&since={c}"));
                let filter = filter
                    .as_ref()
                    .map_or_else(String::new, FilterSpec::to_query);
                let path = format!(
                    "{PATH_SUBSCRIBE}?transport={}{since}{filter}",
                    transport.tag()
                );
                encoded(false, path, headers, None)
            }
        })
    }

    /// Reads a call back: `header` looks a request header up, `body` is the request's body
    /// (read only for a `POST`). Returns the channel it is for, and the call.
    pub fn decode(
        post: bool,
        path: &str,
        query: &str,
        header: impl Fn(&str) -> Option<String>,
        body: Option<&str>,
    ) -> Result<(ChannelName, Call), Error> {
        let channel = header(CHANNEL_HEADER)
            .ok_or_else(|| Error::bad_request("internal request without a channel"))?;
        let channel = ChannelName::parse(&channel)?;
        let publisher = header(PUBLISHER_HEADER).and_then(|h| Publisher::parse(&h));
        let call = match (post, path) {
            (true, PATH_PUBLISH) => {
                let items = serde_json::from_str(body.unwrap_or_default())
                    .map_err(|e| Error::Internal(format!("reading a batch: {e}")))?;
                Call::Publish {
                    items,
                    key: header(KEY_HEADER),
                    publisher,
                }
            }
            (true, PATH_PURGE) => Call::Purge,
            (false, PATH_INFO) => Call::Info,
            (false, PATH_PRESENCE) => Call::Presence,
            (false, PATH_SUBSCRIBE) => {
                let transport = query_param(query, "transport")
                    .and_then(Result::ok)
                    .and_then(|t| Transport::parse(&t))
                    .ok_or_else(|| Error::bad_request("internal subscribe without a transport"))?;
                let cursor = query_param(query, "since")
                    .transpose()?
                    .map(|s| parse_cursor(&s))
                    .transpose()?;
                let publish = header(PUBLISH_HEADER).is_some_and(|v| v == "1");
                Call::Subscribe {
                    transport,
                    cursor,
                    publish,
                    expires: header(EXPIRES_HEADER).and_then(|v| v.parse().ok()),
                    publisher: publisher.filter(|_| publish),
                    member: header(MEMBER_HEADER).map(|h| member(&h)).transpose()?,
                    filter: FilterSpec::from_call(query)?,
                    resume: header(RESUME_HEADER)
                        .map(|h| {
                            percent_decode(&h).ok_or_else(|| {
                                Error::bad_request("internal subscribe with a bad resume")
                            })
                        })
                        .transpose()?,
                    shared: header(SHARED_HEADER).is_some_and(|v| v == "1"),
                }
            }
            _ => return Err(Error::NotFound),
        };
        Ok((channel, call))
    }
}

fn member(header: &str) -> Result<Entrant, Error> {
    percent_decode(header)
        .and_then(|json| serde_json::from_str(&json).ok())
        .ok_or_else(|| Error::bad_request("internal subscribe with a bad member"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(call: Call) {
        let channel = ChannelName::parse("orders:eu").unwrap();
        let e = call.encode(&channel).unwrap();
        let (path, query) = e.path.split_once('?').unwrap_or((&e.path, ""));
        let header = |name: &str| {
            e.headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        };
        let back = Call::decode(e.post, path, query, header, e.body.as_deref()).unwrap();
        assert_eq!(back, (channel, call));
    }

    #[test]
    fn every_call_round_trips() {
        let publisher = Some(Publisher::of(Some("backend"), "t"));
        round_trip(Call::Purge);
        round_trip(Call::Info);
        round_trip(Call::Presence);
        for key in [None, Some("order-7".to_string())] {
            round_trip(Call::Publish {
                items: vec![
                    BatchItem {
                        event_type: "message".into(),
                        data: r#"{"a":[1,"\n"]}"#.into(),
                        topics: None,
                        update: None,
                    },
                    BatchItem {
                        event_type: "x.y".into(),
                        data: "null".into(),
                        topics: Topics::parse(vec!["https://a/b".into(), "c".into()]).ok(),
                        update: Some(UpdateMeta {
                            id: "urn:uuid:x".into(),
                            event_type: Some("t y".into()),
                            retry: Some(5),
                            private: true,
                        }),
                    },
                ],
                key,
                publisher,
            });
        }
        for transport in [Transport::Ws, Transport::Sse] {
            for cursor in [None, Some(0), Some(42)] {
                round_trip(Call::Subscribe {
                    transport,
                    cursor,
                    publish: true,
                    expires: Some(1_800_000_000),
                    publisher,
                    member: Some(Entrant {
                        sub: "Zoë \"z\" %2F".into(),
                        info: crate::auth::Info::parse(r#"{"name": "Zoë", "n": [1]}"#).ok(),
                    }),
                    filter: Some(FilterSpec {
                        topic: vec!["https://e.com/a b&c=d".into(), "é".into()],
                        topic_pattern: vec!["https://e.com/:id".into()],
                        ..FilterSpec::default()
                    }),
                    resume: Some("urn:uuid:é 1".into()),
                    shared: false,
                });
                round_trip(Call::Subscribe {
                    transport,
                    cursor,
                    publish: false,
                    expires: None,
                    publisher: None,
                    member: None,
                    filter: None,
                    resume: None,
                    shared: true,
                });
            }
        }
    }

    #[test]
    fn a_socket_without_the_publish_right_carries_no_publisher() {
        let channel = ChannelName::parse("c").unwrap();
        let call = Call::Subscribe {
            transport: Transport::Ws,
            cursor: None,
            publish: false,
            expires: None,
            publisher: Some(Publisher::of(None, "t")),
            member: None,
            filter: None,
            resume: None,
            shared: false,
        };
        let e = call.encode(&channel).unwrap();
        assert!(e.headers.iter().all(|(k, _)| *k != PUBLISHER_HEADER));
    }

    #[test]
    fn malformed_calls_are_refused() {
        let none = |_: &str| None;
        assert!(
            Call::decode(false, "/info", "", none, None).is_err(),
            "no channel"
        );
        let named = |name: &str| (name == CHANNEL_HEADER).then(|| "c".to_string());
        assert_eq!(
            Call::decode(false, "/nope", "", named, None).err(),
            Some(Error::NotFound)
        );
        assert_eq!(
            Call::decode(true, "/info", "", named, None).err(),
            Some(Error::NotFound),
            "the wrong method"
        );
        assert!(Call::decode(false, "/subscribe", "", named, None).is_err());
        assert!(Call::decode(false, "/subscribe", "transport=ws&since=x", named, None).is_err());
        assert!(Call::decode(true, "/publish", "", named, Some("{")).is_err());
    }
}
