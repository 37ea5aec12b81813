//! The object's side of its subscribers' sockets: accepting one (`subscribe`) and taking a
//! socket's `cursor` report; the rules are `channel::subscriber`, the sockets `subscribers`.

use super::super::http::internal;
use super::super::log::LogState;
use super::super::subscribers::{self, Join};
use super::ChannelHub;
use crate::auth::Publisher;
use crate::channel::fanout::Transport;
use crate::channel::subscriber::{Attachment, Reported};
use crate::error::Error;
use crate::protocol::filter::Filter;
use crate::protocol::presence::Entrant;
use crate::protocol::ChannelName;
use std::rc::Rc;
use worker::{Date, Response, WebSocket};

impl ChannelHub {
    /// A WebSocket client's `cursor` report: it has every event through `id`. Moves its credit
    /// forward; an id it was never sent is an error; a repeat changes nothing. A subscriber held
    /// by a paced replay (a WebSocket client, or an SSE bridge) is sent what its credit now
    /// allows; returns when it would stall if it is still held, for the alarm.
    pub(super) fn socket_cursor(&self, ws: &WebSocket, id: u64) -> Result<Option<i64>, Error> {
        let Some(mut attachment) = subscribers::attachment(ws) else {
            return Ok(None);
        };
        let log = self.log()?;
        let state = log.state().map_err(internal("reading the state"))?;
        let head = state.as_ref().map_or(0, |s| s.head);
        let now = Date::now().as_millis() as i64;
        match attachment.report(id, head, now) {
            Reported::Nothing => return Ok(None),
            Reported::Ahead { sent } => {
                return Err(Error::bad_request(format!(
                    "cursor {id} is ahead of the last id you were sent ({sent}): report ids \
                     you have received"
                )))
            }
            Reported::Moved { id } => {
                let bytes = log.bytes_at(id).map_err(internal("reading a position"))?;
                self.floor
                    .set(attachment.confirmed(id, bytes, now, self.floor.get()));
            }
        }
        if let Some(sent) = attachment.sent {
            let channel = self.socket_channel(ws, state)?;
            let window = self.flow_window();
            let filter = self.filters.of(self.state.as_raw(), ws);
            let filter = filter.as_deref();
            subscribers::resume_replay(ws, log, &channel, sent, &mut attachment, filter, window)?;
            if attachment.sent.is_some() {
                self.floor.set(self.floor.get().holding());
            }
        }
        ws.serialize_attachment(&attachment)
            .map_err(internal("storing a cursor"))?;
        Ok(attachment.stall(now).and_then(Result::ok))
    }

    /// The channel a socket was accepted for: its tag, or else (a socket accepted before
    /// tags) the name the log stored.
    pub(super) fn socket_channel(
        &self,
        ws: &WebSocket,
        state: Option<LogState>,
    ) -> Result<ChannelName, Error> {
        subscribers::tagged(self.state.as_raw(), ws)
            .channel
            .or_else(|| state.and_then(|s| ChannelName::parse(&s.channel).ok()))
            .ok_or_else(|| Error::Internal("socket on a channel without a name".into()))
    }

    /// Accepts a subscriber socket, entering `member` into presence. Nothing is stored for it:
    /// a channel that never had an event stays without storage, and its expiry alarm waits
    /// for the first publish.
    pub(super) async fn subscribe(
        &self,
        channel: &ChannelName,
        mut attachment: Attachment,
        cursor: Option<u64>,
        publisher: Option<Publisher>,
        member: Option<Entrant>,
        filter: Option<(String, Rc<Filter>)>,
    ) -> Result<Response, Error> {
        let log = self.log()?;
        let exp = attachment.exp;
        let now_ms = Date::now().as_millis() as i64;
        let greeting = match member {
            Some(entrant) => {
                let (ticket, sync) = self.presence.enter(channel, entrant, now_ms)?;
                attachment.member = Some(ticket);
                Some(sync)
            }
            None => None,
        };
        let ticket = attachment.member.clone();
        let watched = ticket.is_some() && attachment.transport == Transport::Ws;
        let join = Join {
            channel,
            publisher,
            attachment,
            cursor,
            window: log.window().map_err(internal("reading the window"))?,
            flow_window: self.flow_window(),
            heartbeat: self.config.heartbeat_seconds,
            now_ms,
            greeting,
            filter,
        };
        let accepted = match subscribers::accept(&self.state, log, join, &self.floor) {
            Ok(accepted) => accepted,
            Err(e) => {
                if let Some(ticket) = &ticket {
                    self.presence.abandon(ticket);
                }
                return Err(e);
            }
        };
        if ticket.is_some() {
            self.presence.entered();
        }
        if watched {
            // The sweep of silent presence WebSockets.
            let at = now_ms.saturating_add(self.heartbeat_ms());
            self.alarm.at_most(&self.state.storage(), at as f64).await;
        }
        self.check_stall_at(accepted.stalls_at).await;
        let client = accepted.client;
        if let (Some(exp), true) = (exp, log.born()) {
            self.alarm
                .at_most(&self.state.storage(), exp as f64 * 1000.0)
                .await;
        }
        Response::from_websocket(client).map_err(internal("answering"))
    }
}
