//! A WebSocket client for the hub's `/ws/{channel}`: the opening handshake by hand over plain
//! TCP to 127.0.0.1 (so a refused upgrade comes back whole, for tests to assert on 401 and 403),
//! then tokio-tungstenite for the frames, with every read bounded by a deadline. Like any
//! well-behaved client it confirms what it has read with `{"op":"cursor","id":N}` every quarter
//! of the window its `ready` frame announced (tests can turn that off to play a client that never
//! confirms).

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::api::{Api, Resp};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// The most an answer's head may take before the handshake gives up on it.
const MAX_HEAD: usize = 64 * 1024;

/// One frame from the server, as the tests see it.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A text frame that is JSON (every hub frame but `pong`).
    Json(Value),
    /// A text frame that is not JSON (`pong`).
    Text(String),
    Binary(Vec<u8>),
    /// The server closed the socket: its close code and reason, if it sent a close frame.
    Closed(Option<(u16, String)>),
}

pub struct WsClient {
    socket: Socket,
    closed: bool,
    /// The window from `ready`; reports go out every quarter of it.
    window: u64,
    /// Bytes of event frames read since the last report, and the last event id read.
    unreported: u64,
    last_id: u64,
    /// Whether to send `cursor` reports.
    reporting: bool,
    /// Reports sent so far.
    pub reports: u64,
    /// Multi-channel mode (`/ws?channel=…`): each channel's last event id read, and whether it
    /// moved since the last report; reports then name their channel. `None`: one channel.
    channels: Option<Vec<(String, u64, bool)>>,
    /// Text frames come back as `Frame::Text`, neither parsed nor counted (no cursor reports):
    /// for crowds of clients whose frames nobody reads, to spare the test's own CPU.
    raw: bool,
}

/// The window assumed until a `ready` frame says otherwise (the hub's smallest).
const DEFAULT_WINDOW: u64 = 64 * 1024;

/// `/ws/{channel}` with an optional `since`.
pub fn ws_path(channel: &str, since: Option<u64>) -> String {
    match since {
        Some(s) => format!("/ws/{channel}?since={s}"),
        None => format!("/ws/{channel}"),
    }
}

impl WsClient {
    /// Opens `path_and_query` on the hub, with a bearer token if given. A refused upgrade comes
    /// back as `Err`: the whole HTTP answer, read from the same connection.
    pub async fn open(api: &Api, path: &str, bearer: Option<&str>) -> Result<WsClient, Resp> {
        let opening = handshake(api, path, bearer);
        let (stream, rest) = tokio::time::timeout(CONNECT_TIMEOUT, opening)
            .await
            .map_err(|_| refused(format!("no answer to the upgrade of {path}")))??;
        let socket = MaybeTlsStream::Plain(stream);
        let socket = WebSocketStream::from_partially_read(socket, rest, Role::Client, None).await;
        Ok(WsClient {
            socket,
            closed: false,
            window: DEFAULT_WINDOW,
            unreported: 0,
            last_id: 0,
            reporting: true,
            reports: 0,
            channels: None,
            raw: false,
        })
    }

    /// Opens `/ws/{channel}[?since=]` and reads its `ready` frame; panics on a refusal. Returns
    /// the client and the `head` the ready frame announced.
    pub async fn subscribe(
        api: &Api,
        channel: &str,
        since: Option<u64>,
        token: Option<&str>,
    ) -> (WsClient, u64) {
        let path = ws_path(channel, since);
        let mut ws = match WsClient::open(api, &path, token).await {
            Ok(ws) => ws,
            Err(r) => panic!("upgrade {path}: {} {}", r.status, r.text()),
        };
        let ready = ws.next_json(Duration::from_secs(30)).await;
        assert_eq!(ready["op"], "ready", "first frame on {path}: {ready}");
        let head = ready["head"].as_u64().unwrap_or(u64::MAX);
        (ws, head)
    }

    /// Opens a multi-channel `path_and_query` (`/ws?channel=a&channel=b…`): like `open`, but
    /// the client reports `{"op":"cursor","channel":C,"id":N}` for each channel that received
    /// events since its last report, as the multi-channel flow control asks.
    pub async fn open_stream(
        api: &Api,
        path: &str,
        bearer: Option<&str>,
    ) -> Result<WsClient, Resp> {
        let mut ws = WsClient::open(api, path, bearer).await?;
        ws.channels = Some(Vec::new());
        Ok(ws)
    }

    /// Multi-channel accounting: like `account`'s, per channel.
    async fn account_stream(&mut self, frame: &Value, len: usize) {
        let (Some(channel), Some(id)) = (frame["channel"].as_str(), frame["id"].as_u64()) else {
            return;
        };
        let Some(channels) = self.channels.as_mut() else {
            return;
        };
        match channels.iter_mut().find(|(c, _, _)| c == channel) {
            Some(entry) => *entry = (channel.to_string(), id, true),
            None => channels.push((channel.to_string(), id, true)),
        }
        self.unreported += len as u64;
        if !self.reporting || self.unreported < self.window / 4 {
            return;
        }
        let moved: Vec<Value> = channels
            .iter_mut()
            .filter(|(_, _, moved)| *moved)
            .map(|(c, id, moved)| {
                *moved = false;
                serde_json::json!({"op": "cursor", "channel": c, "id": id})
            })
            .collect();
        for report in moved {
            // A closed socket shows in the next read; nothing to do here.
            let _ = self.socket.send(Message::text(report.to_string())).await;
        }
        self.reports += 1;
        self.unreported = 0;
    }

    /// Turns raw mode (see `raw`) on or off.
    pub fn set_raw(&mut self, on: bool) {
        self.raw = on;
    }

    /// Stops (or resumes) sending `cursor` reports.
    pub fn set_reporting(&mut self, on: bool) {
        self.reporting = on;
    }

    /// Counts an event frame read and reports the cursor once a quarter window is unreported.
    async fn account(&mut self, frame: &Value, len: usize) {
        match frame["op"].as_str() {
            Some("ready") => self.window = frame["window"].as_u64().unwrap_or(DEFAULT_WINDOW),
            Some("event") if self.channels.is_some() => self.account_stream(frame, len).await,
            Some("event") => {
                self.last_id = frame["id"].as_u64().unwrap_or(self.last_id);
                self.unreported += len as u64;
                if self.reporting && self.unreported >= self.window / 4 {
                    let report = serde_json::json!({"op": "cursor", "id": self.last_id});
                    // A closed socket shows in the next read; nothing to do here.
                    if self
                        .socket
                        .send(Message::text(report.to_string()))
                        .await
                        .is_ok()
                    {
                        self.reports += 1;
                        self.unreported = 0;
                    }
                }
            }
            _ => {}
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        let sent = self.socket.send(Message::text(text)).await;
        assert!(sent.is_ok(), "sending {text:?}: {sent:?}");
    }

    /// Sends `text` as one text frame; false when the socket is gone (for a client that keeps
    /// going either way, as a keepalive does).
    pub async fn try_send_text(&mut self, text: &str) -> bool {
        self.socket.send(Message::text(text)).await.is_ok()
    }

    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends `bytes` as one text frame as they are, valid UTF-8 or not.
    pub async fn send_raw_text(&mut self, bytes: &[u8]) {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame as RawFrame;
        let frame = RawFrame::message(bytes.to_vec(), OpCode::Data(Data::Text), true);
        let sent = self.socket.send(Message::Frame(frame)).await;
        assert!(sent.is_ok(), "sending a raw text frame: {sent:?}");
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) {
        let sent = self.socket.send(Message::binary(bytes.to_vec())).await;
        assert!(sent.is_ok(), "sending binary: {sent:?}");
    }

    /// The next data frame or the close; `None` when `wait` passes first.
    pub async fn next(&mut self, wait: Duration) -> Option<Frame> {
        if self.closed {
            return Some(Frame::Closed(None));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let got = tokio::time::timeout_at(deadline, self.socket.next()).await;
            let msg = match got {
                Err(_) => return None,
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(_))) | Ok(None) => {
                    self.closed = true;
                    return Some(Frame::Closed(None));
                }
            };
            let frame = match msg {
                Message::Text(t) if self.raw => Frame::Text(t.to_string()),
                Message::Text(t) => match serde_json::from_str::<Value>(t.as_str()) {
                    Ok(v) => {
                        self.account(&v, t.len()).await;
                        Frame::Json(v)
                    }
                    Err(_) => Frame::Text(t.to_string()),
                },
                Message::Binary(b) => Frame::Binary(b.to_vec()),
                Message::Close(frame) => {
                    self.closed = true;
                    Frame::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                // Control frames are answered by tungstenite itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            return Some(frame);
        }
    }

    /// The next frame, which must be JSON and arrive within `wait`.
    pub async fn next_json(&mut self, wait: Duration) -> Value {
        match self.next(wait).await {
            Some(Frame::Json(v)) => v,
            other => panic!("wanted a JSON frame within {wait:?}, got {other:?}"),
        }
    }

    /// Sends the text `ping` and waits for the text `pong`.
    pub async fn ping(&mut self, wait: Duration) -> bool {
        self.send_text("ping").await;
        self.next(wait).await == Some(Frame::Text("pong".into()))
    }

    /// JSON frames until an `event` with id `last` or above arrived, the socket closed, or
    /// `wait` passed.
    pub async fn frames_through(&mut self, last: u64, wait: Duration) -> Vec<Value> {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        while let Some(frame) = self
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            let Frame::Json(v) = frame else {
                break;
            };
            let done = v["op"] == "event" && v["id"].as_u64().is_some_and(|id| id >= last);
            got.push(v);
            if done {
                break;
            }
        }
        got
    }

    /// Closes with 1000 and waits (bounded) for the server's close.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.closed && Instant::now() < deadline {
            let _ = self.next(Duration::from_millis(500)).await;
        }
    }
}

/// The ids of `event` frames, in the order received.
pub fn frame_ids(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["op"] == "event")
        .filter_map(|f| f["id"].as_u64())
        .collect()
}

/// The opening handshake (RFC 6455 section 4.1) by hand, so that a refusal can be read whole:
/// a 101 with the right `Sec-WebSocket-Accept` gives the stream and any bytes already read
/// past the head; anything else comes back as the `Resp` it was.
async fn handshake(
    api: &Api,
    path: &str,
    bearer: Option<&str>,
) -> Result<(TcpStream, Vec<u8>), Resp> {
    let host = api.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(host)
        .await
        .map_err(|e| refused(format!("connecting to {host}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let key = generate_key();
    let auth = bearer.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{auth}\r\n"
    );
    let io = |e: std::io::Error| refused(format!("upgrade of {path}: {e}"));
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut buf = Vec::new();
    let head_len = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD || read_some(&mut stream, &mut buf).await.map_err(io)? == 0 {
            return Err(refused(format!("no complete answer head to {path}")));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = reqwest::header::HeaderMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        if let (Ok(n), Ok(v)) = (
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()),
            reqwest::header::HeaderValue::from_str(value.trim()),
        ) {
            headers.append(n, v);
        }
    }
    let rest = buf.split_off(head_len);
    if status == 101 {
        let accept = headers
            .get("sec-websocket-accept")
            .and_then(|v| v.to_str().ok());
        if accept != Some(derive_accept_key(key.as_bytes()).as_str()) {
            return Err(refused(format!(
                "101 with a wrong Sec-WebSocket-Accept: {head}"
            )));
        }
        return Ok((stream, rest));
    }
    let mut body = rest;
    let length = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    // Without a length the body ends with the connection; both reads are bounded by the caller.
    while length.is_none_or(|n: usize| body.len() < n) {
        if read_some(&mut stream, &mut body).await.map_err(io)? == 0 {
            break;
        }
    }
    Err(Resp {
        status,
        headers,
        body,
    })
}

async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn refused(why: String) -> Resp {
    Resp {
        status: 0,
        headers: reqwest::header::HeaderMap::new(),
        body: why.into_bytes(),
    }
}
