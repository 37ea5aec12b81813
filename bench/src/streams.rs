//! The two live subscribers: `SseSub` (`GET /sse/{c}` read chunk by chunk, split into events
//! at blank lines: the hub's own framing, LF line ends) and `WsSub` (`GET /ws/{c}` with
//! tokio-tungstenite over plain TCP, small buffers so ten thousand of them stay light). Both
//! yield `Event`s; every read is bounded by the caller's deadline.

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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: Option<u64>,
    /// A gap notice rather than an event.
    pub gap: bool,
    /// `data.t`: when the bench published it, in `client::micros()`.
    pub sent_us: Option<u64>,
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

/// An open `text/event-stream` answer.
pub struct SseSub {
    resp: reqwest::Response,
    pending: Vec<u8>,
    queue: VecDeque<Event>,
}

impl SseSub {
    /// Opens `/sse/{channel}` (from `since` when given) with the bench's token.
    pub async fn open(base: &str, channel: &str, since: Option<u64>) -> Result<SseSub, String> {
        let url = match since {
            Some(s) => format!("{base}/sse/{channel}?since={s}"),
            None => format!("{base}/sse/{channel}"),
        };
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
            if let Some(event) = parse_block(&String::from_utf8_lossy(&block)) {
                self.queue.push_back(event);
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One SSE block (`id:`, `event:`, `data:` lines) to an event; `None` for comments only.
fn parse_block(block: &str) -> Option<Event> {
    let (mut id, mut kind, mut data) = (None, "message", None);
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("event: ") {
            kind = v.trim();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = Some(v);
        }
    }
    let data: Value = serde_json::from_str(data?).unwrap_or(Value::Null);
    Some(Event {
        id,
        gap: kind == "gap",
        sent_us: data["t"].as_u64(),
    })
}

/// An open WebSocket, past its `ready` frame. It confirms what it read, as clients must, with
/// `{"op":"cursor","id":N}` every quarter of the window `ready` announced.
pub struct WsSub {
    socket: WebSocketStream<TcpStream>,
    window: u64,
    /// Bytes of event frames read since the last report.
    unreported: u64,
}

impl WsSub {
    /// Opens `/ws/{channel}` (from `since` when given) with the bench's token and reads its
    /// `ready` frame.
    pub async fn open(port: u16, channel: &str, since: Option<u64>) -> Result<WsSub, String> {
        let url = match since {
            Some(s) => format!("ws://127.0.0.1:{port}/ws/{channel}?since={s}"),
            None => format!("ws://127.0.0.1:{port}/ws/{channel}"),
        };
        let opening = async {
            let stream = TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| format!("connecting for {url}: {e}"))?;
            let _ = stream.set_nodelay(true);
            let mut req = url
                .as_str()
                .into_client_request()
                .map_err(|e| format!("{url}: {e}"))?;
            let auth = HeaderValue::from_str(client::bearer()).map_err(|e| e.to_string())?;
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
            match v["op"].as_str() {
                Some("event") => {
                    if self.unreported >= self.window / 4 {
                        let report = format!(r#"{{"op":"cursor","id":{}}}"#, v["id"]);
                        if let Err(e) = self.socket.send(Message::text(report)).await {
                            return Next::Closed(format!("reporting the cursor: {e}"));
                        }
                        self.unreported = 0;
                    }
                    return Next::Event(Event {
                        id: v["id"].as_u64(),
                        gap: false,
                        sent_us: v["data"]["t"].as_u64(),
                    });
                }
                Some("gap") => {
                    return Next::Event(Event {
                        id: None,
                        gap: true,
                        sent_us: None,
                    })
                }
                _ => continue,
            }
        }
    }

    /// The next JSON text frame; `Ok(None)` on timeout.
    async fn next_frame(&mut self, deadline: Instant) -> Result<Option<Value>, String> {
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
                        return Ok(Some(v));
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

    #[test]
    fn sse_blocks_become_events_and_comments_are_skipped() {
        let mut s = Vec::new();
        let feed = |pending: &mut Vec<u8>, bytes: &[u8], out: &mut Vec<Event>| {
            pending.extend_from_slice(bytes);
            while let Some(end) = find(pending, b"\n\n") {
                let block: Vec<u8> = pending.drain(..end + 2).collect();
                out.extend(parse_block(&String::from_utf8_lossy(&block)));
            }
        };
        let mut pending = Vec::new();
        feed(
            &mut pending,
            b"retry: 2000\n: edgehub stream open\n\nid: 7\nda",
            &mut s,
        );
        feed(
            &mut pending,
            b"ta: {\"t\":12}\n\n: heartbeat\n\nevent: gap\ndata: {}\n\n",
            &mut s,
        );
        assert_eq!(
            s,
            vec![
                Event {
                    id: Some(7),
                    gap: false,
                    sent_us: Some(12)
                },
                Event {
                    id: None,
                    gap: true,
                    sent_us: None
                },
            ]
        );
    }
}
