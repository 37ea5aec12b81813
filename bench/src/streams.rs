//! The two live subscribers: `SseSub` (`GET /sse/{c}` read chunk by chunk, split into events
//! at blank lines: the hub's own framing, LF line ends) and `WsSub` (`GET /ws/{c}` with
//! tokio-tungstenite over plain TCP, small buffers so ten thousand of them stay light). Both
//! also hold many channels on one connection (`GET /sse?channel=a&channel=b…`, `GET /ws?…`,
//! docs/API.md#streams): there an SSE `id:` is the whole stream cursor (`a=1,b=2`), `data:` is
//! the whole envelope, and the first block is an `id:`-only one; a WebSocket confirms each
//! channel it read. Both yield `Event`s; every read is bounded by the caller's deadline. A
//! `WsSub` may also be a presence member (`open_member`, its own token): it reads `presence`
//! frames, pings, and closes.

use std::collections::VecDeque;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::client;

const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-socket buffers of the bench's WebSockets: the hub's frames are small.
const WS_BUFFER: usize = 4096;

/// One delivered event, as much of it as the scenarios look at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// The event's id in its channel.
    pub id: Option<u64>,
    /// A gap notice rather than an event.
    pub gap: bool,
    /// `data.t`: when the bench published it, in `client::micros()`.
    pub sent_us: Option<u64>,
    /// The channel the event (or gap) names, when the transport says: a WebSocket envelope, a
    /// multi-channel SSE envelope or gap. `None` for a v1 SSE event.
    pub channel: Option<String>,
    /// Multi-channel SSE: the `id:` line, the stream cursor after this event.
    pub cursor: Option<String>,
}

/// What a read gave.
#[derive(Debug)]
pub enum Next {
    Event(Event),
    /// The deadline passed first.
    Timeout,
    /// The stream ended or failed.
    Closed(String),
}

/// `channel=a&channel=b…` for a multi-channel route. The bench's channel names (`[a-z0-9-]`)
/// need no percent-encoding.
pub fn channel_query(channels: &[String]) -> String {
    let pairs: Vec<String> = channels.iter().map(|c| format!("channel={c}")).collect();
    pairs.join("&")
}

/// An open `text/event-stream` answer.
pub struct SseSub {
    resp: reqwest::Response,
    pending: Vec<u8>,
    queue: VecDeque<Event>,
    /// The last `id:` line read (what `EventSource` would resend as `Last-Event-ID`).
    last_id: Option<String>,
}

impl SseSub {
    /// Opens `/sse/{channel}` (from `since` when given) with the bench's token.
    pub async fn open(base: &str, channel: &str, since: Option<u64>) -> Result<SseSub, String> {
        let url = match since {
            Some(s) => format!("{base}/sse/{channel}?since={s}"),
            None => format!("{base}/sse/{channel}"),
        };
        SseSub::open_url(url).await
    }

    /// Opens `/sse?channel=…` over `channels` (from `since`, `0` or a stream cursor, when
    /// given) and reads up to its opening `id:`-only block, sent once every channel's
    /// subscription is live: the stream cursor it started from.
    pub async fn open_many(
        base: &str,
        channels: &[String],
        since: Option<&str>,
    ) -> Result<SseSub, String> {
        let mut url = format!("{base}/sse?{}", channel_query(channels));
        if let Some(s) = since {
            url.push_str(&format!("&since={}", client::encode(s)));
        }
        let mut sub = SseSub::open_url(url).await?;
        let deadline = Instant::now() + OPEN_TIMEOUT;
        while sub.last_id.is_none() {
            match tokio::time::timeout_at(deadline, sub.resp.chunk()).await {
                Err(_) => {
                    return Err(format!(
                        "/sse over {} channels: no opening id: block within {OPEN_TIMEOUT:?}",
                        channels.len()
                    ))
                }
                Ok(Ok(Some(bytes))) => sub.feed(&bytes),
                Ok(Ok(None)) => {
                    return Err(
                        "/sse over many channels: the stream ended before its opening id: block"
                            .into(),
                    )
                }
                Ok(Err(e)) => return Err(format!("/sse over many channels: {e}")),
            }
        }
        Ok(sub)
    }

    async fn open_url(url: String) -> Result<SseSub, String> {
        let req = client::streams()
            .get(&url)
            .header("authorization", client::bearer())
            .header("accept", "text/event-stream");
        let resp = match tokio::time::timeout(OPEN_TIMEOUT, req.send()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(format!("GET {url}: {e}")),
            Err(_) => return Err(format!("GET {url}: no answer within {OPEN_TIMEOUT:?}")),
        };
        if resp.status().as_u16() != 200 {
            return Err(format!("GET {url}: {}", resp.status()));
        }
        Ok(SseSub {
            resp,
            pending: Vec::new(),
            queue: VecDeque::new(),
            last_id: None,
        })
    }

    /// The next event (comments, heartbeats and the preamble skipped).
    pub async fn next_event(&mut self, deadline: Instant) -> Next {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Next::Event(e);
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Err(_) => return Next::Timeout,
                Ok(Ok(Some(bytes))) => self.feed(&bytes),
                Ok(Ok(None)) => return Next::Closed("the stream ended".into()),
                Ok(Err(e)) => return Next::Closed(format!("reading the stream: {e}")),
            }
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = find(&self.pending, b"\n\n") {
            let block: Vec<u8> = self.pending.drain(..end + 2).collect();
            let block = parse_block(&String::from_utf8_lossy(&block));
            if let Some(id) = block.id {
                self.last_id = Some(id);
            }
            if let Some(event) = block.event {
                self.queue.push_back(event);
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What one SSE block holds: its `id:` line (an id-only block has nothing else) and its event.
#[derive(Debug, Default, PartialEq, Eq)]
struct Block {
    id: Option<String>,
    event: Option<Event>,
}

/// One SSE block (`id:`, `event:`, `data:` lines) to its id and event; no event for comments
/// only or an `id:`-only block. A v1 block's `id:` is a number and its `data:` the event's
/// data; a multi-channel one's `id:` is the stream cursor and its `data:` the whole envelope
/// (a multi-channel gap has no `id:` and names its channel in `data:`).
fn parse_block(block: &str) -> Block {
    let (mut id, mut kind, mut data) = (None, "message", None);
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("event: ") {
            kind = v.trim();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = Some(v);
        }
    }
    let Some(data) = data else {
        return Block { id, event: None };
    };
    let data: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let gap = kind == "gap";
    let number = id.as_deref().and_then(|v| v.parse::<u64>().ok());
    let event = match (number, data["channel"].as_str()) {
        // v1: the id line is the event's id, `data` is the event's data.
        (Some(n), _) => Event {
            id: Some(n),
            gap,
            sent_us: data["t"].as_u64(),
            ..Event::default()
        },
        // Many channels: a gap naming its channel, or the whole envelope.
        (None, Some(channel)) => Event {
            id: if gap { None } else { data["id"].as_u64() },
            gap,
            sent_us: data["data"]["t"].as_u64(),
            channel: Some(channel.to_string()),
            cursor: id.clone(),
        },
        // A v1 gap (no id), or what the bench cannot read.
        (None, None) => Event {
            gap,
            sent_us: data["t"].as_u64(),
            ..Event::default()
        },
    };
    Block {
        id,
        event: Some(event),
    }
}

/// The id a stream cursor (`a=1,b=2`) holds for `channel`.
pub fn cursor_id(cursor: &str, channel: &str) -> Option<u64> {
    cursor.split(',').find_map(|pair| {
        let (c, id) = pair.split_once('=')?;
        (c == channel).then(|| id.parse().ok()).flatten()
    })
}

/// An open WebSocket, past its `ready` frame. It confirms what it read, as clients must, every
/// quarter of the window `ready` announced: `{"op":"cursor","id":N}` on `/ws/{c}`, and on a
/// multi-channel `/ws?channel=…` one `{"op":"cursor","channel":C,"id":N}` for each channel
/// that received events since its last report (docs/API.md#stream-ws-flow).
pub struct WsSub {
    socket: WebSocketStream<TcpStream>,
    window: u64,
    /// Bytes of event frames read since the last report.
    unreported: u64,
    /// A multi-channel connection.
    many: bool,
    /// Many channels: each channel's last id read since its last report.
    to_report: Vec<(String, u64)>,
}

impl WsSub {
    /// Opens `/ws/{channel}` (from `since` when given) with the bench's token and reads its
    /// `ready` frame.
    pub async fn open(port: u16, channel: &str, since: Option<u64>) -> Result<WsSub, String> {
        let url = match since {
            Some(s) => format!("ws://127.0.0.1:{port}/ws/{channel}?since={s}"),
            None => format!("ws://127.0.0.1:{port}/ws/{channel}"),
        };
        WsSub::open_url(port, url, false, client::bearer()).await
    }

    /// Opens `/ws/{channel}?presence=1` (`presence`) or `?presence=0` with `token` (a member's:
    /// its `sub` and `info` are who enters, docs/API.md#presence) and reads its `ready` frame;
    /// a member's `sync` follows.
    pub async fn open_member(
        port: u16,
        channel: &str,
        token: &str,
        presence: bool,
    ) -> Result<WsSub, String> {
        let flag = u8::from(presence);
        let url = format!("ws://127.0.0.1:{port}/ws/{channel}?presence={flag}");
        WsSub::open_url(port, url, false, &format!("Bearer {token}")).await
    }

    /// Opens `/ws?channel=…` over `channels` (from `since`, `0` or a stream cursor, when given)
    /// and reads its `ready` frame, sent once every channel's subscription is live.
    pub async fn open_many(
        port: u16,
        channels: &[String],
        since: Option<&str>,
    ) -> Result<WsSub, String> {
        let mut url = format!("ws://127.0.0.1:{port}/ws?{}", channel_query(channels));
        if let Some(s) = since {
            url.push_str(&format!("&since={}", client::encode(s)));
        }
        WsSub::open_url(port, url, true, client::bearer()).await
    }

    async fn open_url(port: u16, url: String, many: bool, bearer: &str) -> Result<WsSub, String> {
        let opening = async {
            let stream = TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| format!("connecting for {url}: {e}"))?;
            let _ = stream.set_nodelay(true);
            let mut req = url
                .as_str()
                .into_client_request()
                .map_err(|e| format!("{url}: {e}"))?;
            let auth = HeaderValue::from_str(bearer).map_err(|e| e.to_string())?;
            req.headers_mut().insert("authorization", auth);
            let config = WebSocketConfig::default()
                .read_buffer_size(WS_BUFFER)
                .write_buffer_size(0);
            let (socket, _) =
                tokio_tungstenite::client_async_with_config(req, stream, Some(config))
                    .await
                    .map_err(|e| format!("upgrade of {url}: {e}"))?;
            Ok::<_, String>(socket)
        };
        let socket = match tokio::time::timeout(OPEN_TIMEOUT, opening).await {
            Ok(r) => r?,
            Err(_) => return Err(format!("{url}: no upgrade within {OPEN_TIMEOUT:?}")),
        };
        let mut ws = WsSub {
            socket,
            window: 64 * 1024,
            unreported: 0,
            many,
            to_report: Vec::new(),
        };
        match ws.next_frame(Instant::now() + OPEN_TIMEOUT).await {
            Ok(Some(v)) if v["op"] == "ready" => {
                ws.window = v["window"].as_u64().unwrap_or(ws.window);
                Ok(ws)
            }
            Ok(Some(v)) => Err(format!("{url}: first frame {v}")),
            Ok(None) => Err(format!("{url}: no ready frame within {OPEN_TIMEOUT:?}")),
            Err(why) => Err(format!("{url}: {why}")),
        }
    }

    /// The next `event` (or `gap`) frame; `ready`, `ack` and control frames are skipped.
    pub async fn next_event(&mut self, deadline: Instant) -> Next {
        loop {
            let v = match self.next_frame(deadline).await {
                Ok(Some(v)) => v,
                Ok(None) => return Next::Timeout,
                Err(why) => return Next::Closed(why),
            };
            let channel = v["channel"].as_str().map(str::to_string);
            match v["op"].as_str() {
                Some("event") => {
                    let id = v["id"].as_u64();
                    if let Err(why) = self.confirm(channel.as_deref(), id).await {
                        return Next::Closed(why);
                    }
                    return Next::Event(Event {
                        id,
                        gap: false,
                        sent_us: v["data"]["t"].as_u64(),
                        channel,
                        cursor: None,
                    });
                }
                Some("gap") => {
                    return Next::Event(Event {
                        gap: true,
                        channel,
                        ..Event::default()
                    })
                }
                _ => continue,
            }
        }
    }

    /// The next `presence` frame (docs/API.md#presence-events) and its size in bytes; events
    /// in between are confirmed as `next_event` confirms them, other frames skipped. `Ok(None)`
    /// when the deadline passes first.
    pub async fn next_presence(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<(Value, usize)>, String> {
        loop {
            let Some((v, bytes)) = self.next_sized(deadline).await? else {
                return Ok(None);
            };
            match v["op"].as_str() {
                Some("presence") => return Ok(Some((v, bytes))),
                Some("event") => {
                    self.confirm(v["channel"].as_str(), v["id"].as_u64())
                        .await?
                }
                _ => continue,
            }
        }
    }

    /// Sends the text `ping`, as a presence member must (docs/API.md#presence-liveness); the
    /// runtime answers `pong`, which `next_frame` skips.
    pub async fn ping(&mut self) -> Result<(), String> {
        self.socket
            .send(Message::text("ping"))
            .await
            .map_err(|e| format!("sending ping: {e}"))
    }

    /// Closes the socket (1000) and reads until the server's close, bounded by `deadline`.
    pub async fn close(mut self, deadline: Instant) {
        if self.socket.close(None).await.is_err() {
            return;
        }
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.socket.next()).await {}
    }

    /// Notes an event read (its frame already counted in `unreported`) and, once a quarter of
    /// the window is unreported, confirms it: one cursor, or one per channel read since the
    /// last report.
    async fn confirm(&mut self, channel: Option<&str>, id: Option<u64>) -> Result<(), String> {
        if let (true, Some(c), Some(id)) = (self.many, channel, id) {
            match self.to_report.iter_mut().find(|(seen, _)| seen == c) {
                Some(entry) => entry.1 = id,
                None => self.to_report.push((c.to_string(), id)),
            }
        }
        if self.unreported < self.window / 4 {
            return Ok(());
        }
        let reports: Vec<String> = match self.many {
            false => id
                .map(|id| format!(r#"{{"op":"cursor","id":{id}}}"#))
                .into_iter()
                .collect(),
            true => std::mem::take(&mut self.to_report)
                .into_iter()
                .map(|(c, id)| {
                    serde_json::json!({"op": "cursor", "channel": c, "id": id}).to_string()
                })
                .collect(),
        };
        for report in reports {
            self.socket
                .send(Message::text(report))
                .await
                .map_err(|e| format!("reporting the cursor: {e}"))?;
        }
        self.unreported = 0;
        Ok(())
    }

    /// The next JSON text frame; `Ok(None)` on timeout.
    async fn next_frame(&mut self, deadline: Instant) -> Result<Option<Value>, String> {
        Ok(self.next_sized(deadline).await?.map(|(v, _)| v))
    }

    /// The next JSON text frame and its length in bytes; `Ok(None)` on timeout.
    async fn next_sized(&mut self, deadline: Instant) -> Result<Option<(Value, usize)>, String> {
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => return Err("the socket ended".into()),
                Ok(Some(Err(e))) => return Err(format!("reading the socket: {e}")),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    if let Ok(v) = serde_json::from_str::<Value>(t.as_str()) {
                        if v["op"] == "event" {
                            self.unreported += t.len() as u64;
                        }
                        return Ok(Some((v, t.len())));
                    }
                }
                Message::Close(f) => return Err(format!("closed by the server: {f:?}")),
                _ => continue,
            }
        }
    }
}

/// Either kind of subscriber, for scenarios that hold both.
pub enum Sub {
    Sse(SseSub),
    Ws(WsSub),
}

impl Sub {
    pub async fn open(
        kind: Kind,
        base: &str,
        port: u16,
        channel: &str,
        since: Option<u64>,
    ) -> Result<Sub, String> {
        match kind {
            Kind::Sse => SseSub::open(base, channel, since).await.map(Sub::Sse),
            Kind::Ws => WsSub::open(port, channel, since).await.map(Sub::Ws),
        }
    }

    /// Opens `/sse/{channel}?{query}` or `/ws/{channel}?{query}`, `query` ready to send (topic
    /// filters, docs/API.md#topics), with the bench's token; a WebSocket past its `ready`.
    pub async fn open_query(
        kind: Kind,
        base: &str,
        port: u16,
        channel: &str,
        query: &str,
    ) -> Result<Sub, String> {
        match kind {
            Kind::Sse => SseSub::open_url(format!("{base}/sse/{channel}?{query}"))
                .await
                .map(Sub::Sse),
            Kind::Ws => {
                let url = format!("ws://127.0.0.1:{port}/ws/{channel}?{query}");
                WsSub::open_url(port, url, false, client::bearer())
                    .await
                    .map(Sub::Ws)
            }
        }
    }

    /// Opens one connection over `channels` (`GET /sse?channel=…` or `GET /ws?channel=…`), past
    /// its start: the `id:`-only block or `ready`.
    pub async fn open_many(
        kind: Kind,
        base: &str,
        port: u16,
        channels: &[String],
        since: Option<&str>,
    ) -> Result<Sub, String> {
        match kind {
            Kind::Sse => SseSub::open_many(base, channels, since).await.map(Sub::Sse),
            Kind::Ws => WsSub::open_many(port, channels, since).await.map(Sub::Ws),
        }
    }

    pub async fn next_event(&mut self, deadline: Instant) -> Next {
        match self {
            Sub::Sse(s) => s.next_event(deadline).await,
            Sub::Ws(w) => w.next_event(deadline).await,
        }
    }
}

/// The two live transports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sse,
    Ws,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Sse => "sse",
            Kind::Ws => "ws",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Kind::Sse => "SSE",
            Kind::Ws => "WebSocket",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` as `SseSub::feed` does: the events, and the last `id:` line seen.
    fn read(chunks: &[&[u8]]) -> (Vec<Event>, Option<String>) {
        let (mut pending, mut events, mut last_id) = (Vec::new(), Vec::new(), None);
        for bytes in chunks {
            pending.extend_from_slice(bytes);
            while let Some(end) = find(&pending, b"\n\n") {
                let block: Vec<u8> = pending.drain(..end + 2).collect();
                let block = parse_block(&String::from_utf8_lossy(&block));
                last_id = block.id.or(last_id);
                events.extend(block.event);
            }
        }
        (events, last_id)
    }

    #[test]
    fn sse_blocks_become_events_and_comments_are_skipped() {
        let (events, last_id) = read(&[
            b"retry: 2000\n: edgehub stream open\n\nid: 7\nda",
            b"ta: {\"t\":12}\n\n: heartbeat\n\nevent: gap\ndata: {}\n\n",
        ]);
        assert_eq!(
            events,
            vec![
                Event {
                    id: Some(7),
                    sent_us: Some(12),
                    ..Event::default()
                },
                Event {
                    gap: true,
                    ..Event::default()
                },
            ]
        );
        assert_eq!(last_id.as_deref(), Some("7"));
    }

    #[test]
    fn multi_channel_sse_ids_are_cursors_and_data_is_the_envelope() {
        let (events, last_id) = read(&[
            b"retry: 2000\n: edgehub stream open\n\n",
            b"id: a=0,b=0\n\n",
            b"id: a=0,b=1\nevent: x.y\ndata: {\"id\":1,\"channel\":\"b\",\"type\":\"x.y\",",
            b"\"data\":{\"t\":5},\"time\":\"2026-11-25T23:04:57.209Z\"}\n\n",
            b": heartbeat\n\nevent: gap\ndata: {\"channel\":\"a\",\"requested\":3,\"earliest\":10}\n\n",
        ]);
        assert_eq!(
            events,
            vec![
                Event {
                    id: Some(1),
                    sent_us: Some(5),
                    channel: Some("b".into()),
                    cursor: Some("a=0,b=1".into()),
                    ..Event::default()
                },
                Event {
                    gap: true,
                    channel: Some("a".into()),
                    ..Event::default()
                },
            ]
        );
        assert_eq!(last_id.as_deref(), Some("a=0,b=1"));
        let (none, start) = read(&[b"retry: 2000\n: edgehub stream open\n\nid: a=3\n\n"]);
        assert_eq!((none, start.as_deref()), (vec![], Some("a=3")));
    }

    #[test]
    fn nchan_eventsource_blocks_are_read_by_their_data() {
        // nchan 1.3.6's `nchan_subscriber eventsource` (docs/benchmarks.md#nchan): `id:` is its
        // own `time:tag`, `data:` the message as published.
        let (events, last_id) = read(&[b": hi\n\nid: 1796614317:0\ndata: {\"i\":1,\"t\":5}\n\n"]);
        let want = Event {
            sent_us: Some(5),
            ..Event::default()
        };
        assert_eq!(events, vec![want]);
        assert_eq!(last_id.as_deref(), Some("1796614317:0"));
    }

    #[test]
    fn cursor_ids() {
        assert_eq!(cursor_id("a=1,b-2=22", "b-2"), Some(22));
        assert_eq!(cursor_id("a=1,b-2=22", "a"), Some(1));
        assert_eq!(cursor_id("a=1,b-2=22", "b"), None);
        assert_eq!(cursor_id("", "a"), None);
    }
}
