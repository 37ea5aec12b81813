//! The lanes of a many-channel connection (`runtime::stream`): how each subscribes (its own
//! socket, or a seat on its channel's shared upstream: `shared`), is attached to the
//! connection, and is read; and lanes subscribed while the connection goes on.

use super::shared::{self, Caught};
use super::{Client, Conn, Link};
use crate::auth::Action;
use crate::channel::fanout::Transport;
use crate::channel::merge::{Face, LaneId};
use crate::error::Error;
use crate::protocol::filter::FilterSpec;
use crate::protocol::many::UpFrame;
use crate::protocol::presence::Entrant;
use crate::protocol::ws::{ready_frame, CloseCode, PONG};
use crate::protocol::ChannelName;
use crate::runtime::access::{Access, Permits};
use crate::runtime::client::Hub;
use crate::runtime::http::internal;
use crate::runtime::sse::now_ms;
use futures::StreamExt;
use std::rc::Rc;
use worker::{Env, Response, WebSocket, WebsocketEvent};

/// How a lane subscribes.
pub(super) enum How {
    /// As a possible share of its channel's upstream (`shared`): no presence, no filter, no
    /// publishing right; its connection ends at the token's expiry, not its socket.
    Shared,
    Own {
        access: Access,
        member: Option<Entrant>,
        filter: Option<FilterSpec>,
    },
}

impl How {
    pub(super) fn of(face: Face, access: Access, permits: &Permits) -> How {
        let publishes = face == Face::Ws && access.publish;
        if permits.member.is_none() && permits.filter.is_none() && !publishes {
            return How::Shared;
        }
        How::Own {
            access,
            member: permits.member.clone(),
            filter: permits.filter.clone(),
        }
    }
}

/// A lane subscribed.
pub(super) struct Opened {
    lane: LaneId,
    channel: ChannelName,
    since: Option<u64>,
    pub(super) got: Got,
}

pub(super) enum Got {
    /// Its own socket; true when it may come to share its channel's upstream.
    Socket(WebSocket, bool),
    /// A seat on the channel's upstream, to be taken when the lane is attached.
    Seat,
}

/// Subscribes one lane: `Ok(Ok(opened))`, or `Ok(Err(answer))` when the object answered
/// without a socket (its problem document).
pub(super) async fn subscribe(
    env: &Env,
    lane: LaneId,
    channel: ChannelName,
    since: Option<u64>,
    how: How,
) -> Result<Result<Opened, Response>, Error> {
    let opened = |got| Opened {
        lane,
        channel: channel.clone(),
        since,
        got,
    };
    let shares = matches!(how, How::Shared);
    if shares && shared::seat_now(&channel, since).is_some() {
        return Ok(Ok(opened(Got::Seat)));
    }
    let hub = Hub::get(env, &channel)?;
    let answer = match how {
        How::Shared => hub.subscribe_shared(Transport::Ws, since).await?,
        How::Own {
            access,
            member,
            filter,
        } => {
            hub.subscribe(Transport::Ws, since, access, member, filter)
                .await?
        }
    };
    if answer.status_code() != 101 {
        return Ok(Err(answer));
    }
    let socket = answer
        .websocket()
        .ok_or_else(|| Error::Unavailable("the channel object did not open a socket".into()))?;
    Ok(Ok(opened(Got::Socket(socket, shares))))
}

/// Closes a lane that was never attached: accepted first, so the close reaches its object.
pub(super) fn drop_lane(socket: &WebSocket, reason: &str) {
    let _ = socket.accept();
    let _ = socket.close(Some(1000), Some(reason));
}

/// Accepts the lanes' sockets and starts reading each, and seats the others, all in one
/// synchronous step, so no frame can come before its reader listens.
pub(super) fn attach_all(conn: &Rc<Conn>, lanes: Vec<Opened>) -> Result<(), Error> {
    for opened in lanes {
        attach(conn, opened)?;
    }
    Ok(())
}

fn attach(conn: &Rc<Conn>, opened: Opened) -> Result<(), Error> {
    let Opened {
        lane,
        channel,
        since,
        got,
    } = opened;
    match got {
        Got::Socket(socket, shares) => {
            socket
                .accept()
                .map_err(internal("accepting a channel socket"))?;
            conn.lanes
                .borrow_mut()
                .push((lane, Link::Own(socket.clone())));
            let sharing = shares.then_some(Sharing {
                channel,
                since,
                start: None,
            });
            worker::wasm_bindgen_futures::spawn_local(read_lane(
                conn.clone(),
                lane,
                socket,
                sharing,
            ));
        }
        Got::Seat => match shared::sit(conn, lane, &channel, since) {
            Some(seat) => {
                // Its object's `ready`, as the upstream's position stands for it.
                let ready = ready_frame(
                    seat.through(),
                    conn.config.slow_consumer_bytes as u64,
                    conn.config.heartbeat_seconds,
                );
                conn.lanes.borrow_mut().push((lane, Link::Seat(seat)));
                let steps = conn.merge.borrow_mut().upstream(lane, &ready, now_ms());
                conn.run(steps);
            }
            // The upstream moved on meanwhile: the lane opens its own socket.
            None => worker::wasm_bindgen_futures::spawn_local(open_later(
                conn.clone(),
                lane,
                channel,
                since,
            )),
        },
    }
    Ok(())
}

/// A lane on its own socket that may come to share: where it stands.
struct Sharing {
    channel: ChannelName,
    since: Option<u64>,
    /// Once `ready` came: the last id its socket brought (or where it started), and the head
    /// when it was accepted.
    start: Option<(u64, u64)>,
}

impl Sharing {
    /// Follows one frame of the socket; false when it must stay alone (a cursor ahead of the
    /// head: its object tells it of the gap once events reach it, which an upstream would not).
    fn read(&mut self, text: &str) -> bool {
        match (UpFrame::read(text), &mut self.start) {
            (UpFrame::Ready { head, .. }, _) => {
                if self.since.is_some_and(|s| s > head) {
                    return false;
                }
                self.start = Some((self.since.unwrap_or(head), head));
            }
            (UpFrame::Event { id, .. }, Some(start)) => start.0 = start.0.max(id),
            (UpFrame::Gap { earliest, .. }, Some(start)) => {
                start.0 = start.0.max(earliest.saturating_sub(1));
            }
            _ => {}
        }
        true
    }
}

/// Feeds one lane's frames to the merge until the socket closes; a lane that may share takes
/// a seat on its channel's upstream once caught up, or makes its socket that upstream.
async fn read_lane(conn: Rc<Conn>, lane: LaneId, socket: WebSocket, mut sharing: Option<Sharing>) {
    let mut code = CloseCode::Reconnect.code();
    if let Ok(mut events) = socket.events() {
        while let Some(event) = events.next().await {
            match event {
                Ok(WebsocketEvent::Message(message)) => {
                    let Some(text) = message.text() else { continue };
                    if text == PONG {
                        // The object's answer to a presence connection's `ping`.
                        continue;
                    }
                    let steps = conn.merge.borrow_mut().upstream(lane, &text, now_ms());
                    conn.run(steps);
                    let Some(share) = sharing.as_mut() else {
                        continue;
                    };
                    if !share.read(&text) {
                        sharing = None;
                        continue;
                    }
                    let Some((position, head)) = share.start else {
                        continue;
                    };
                    match shared::caught_up(&conn, lane, &share.channel, &socket, position, head) {
                        Caught::Stay => {}
                        Caught::Joined => return,
                        Caught::Carrying(tap, generation) => {
                            let window = conn.config.slow_consumer_bytes;
                            shared::carry(tap, generation, &socket, events, window).await;
                            return;
                        }
                    }
                }
                Ok(WebsocketEvent::Close(close)) => {
                    code = close.code();
                    break;
                }
                Err(_) => break,
            }
        }
    }
    let steps = conn.merge.borrow_mut().upstream_closed(lane, code);
    conn.run(steps);
}

/// A lane subscribed by a `subscribe` frame: opened while the connection goes on.
pub(super) async fn open_later(
    conn: Rc<Conn>,
    lane: LaneId,
    channel: ChannelName,
    since: Option<u64>,
) {
    let opened = match conn
        .permits
        .check(&conn.config, Action::Subscribe, &channel)
    {
        Ok(access) => {
            let face = match conn.client {
                Client::Sse(..) => Face::Sse,
                Client::Ws(_) => Face::Ws,
            };
            let how = How::of(face, access, &conn.permits);
            subscribe(&conn.env, lane, channel, since, how).await
        }
        Err(e) => Err(e),
    };
    let failed = match opened {
        Ok(Ok(opened)) => {
            if conn.merge.borrow().ended() {
                if let Got::Socket(socket, _) = &opened.got {
                    drop_lane(socket, "connection ended");
                }
                return;
            }
            match attach(&conn, opened) {
                Ok(()) => return,
                Err(e) => e,
            }
        }
        Ok(Err(answer)) => refusal(answer).await,
        Err(e) => e,
    };
    let steps = conn.merge.borrow_mut().open_failed(lane, failed, now_ms());
    conn.run(steps);
}

/// The error a channel object's answer without a socket stands for: its own refusal (a full
/// presence), else the object failed.
async fn refusal(mut answer: Response) -> Error {
    let status = answer.status_code();
    let detail = answer
        .json::<serde_json::Value>()
        .await
        .ok()
        .and_then(|p| p.get("detail")?.as_str().map(str::to_string))
        .unwrap_or_default();
    match status {
        409 => Error::PresenceFull(detail),
        _ => Error::Unavailable(format!(
            "the channel object answered {status} instead of a socket"
        )),
    }
}
