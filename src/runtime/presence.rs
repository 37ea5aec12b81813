//! A channel object's presence (`docs/API.md#presence`): the roster and outbox of
//! `channel::presence`, kept in memory and rebuilt from the presence sockets' tickets
//! (attachments) after a wake; who enters (`enter`, the `sync` it is sent), who leaves (every
//! close goes through `close` or `depart`), batches of joins and leaves sent at most once per
//! `INTERVAL_MS` by a timer that keeps the object awake only while a batch waits, and the sweep
//! that lets go of WebSockets gone silent.

use super::alarm;
use super::sse::now_ms;
use super::subscribers::{self, attachment, deliver_js, PRESENCE_TAG};
use crate::auth::Info;
use crate::channel::fanout::Transport;
use crate::channel::presence::{interval_ms, Outbox, Roster};
use crate::channel::subscriber::Ticket;
use crate::config::Config;
use crate::error::Error;
use crate::protocol::presence::{self as wire, Entrant, Listed};
use crate::protocol::ws::CloseCode;
use crate::protocol::ChannelName;
use std::cell::{Cell, RefCell, RefMut};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;
use worker::js_sys::{Date as JsDate, Function, Reflect};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::worker_sys::DurableObjectState;
use worker::{console_error, Date, Delay, WebSocket};

/// The most members `GET /channels/{c}/presence` lists.
pub const LISTING_MAX: usize = 1000;

/// What the object knows of its presence while it is awake.
#[derive(Default)]
struct Book {
    roster: Roster,
    outbox: Outbox,
    /// The channel, for the frames: learnt on `enter`, or from a socket's tag after a wake.
    channel: Option<ChannelName>,
}

/// The object's presence. Cheap to clone: the timer's task holds one.
#[derive(Clone)]
pub struct Presence {
    /// `None` until first needed after a wake; then built from the sockets' tickets.
    book: Rc<RefCell<Option<Book>>>,
    /// A batch waits for the timer.
    timer: Rc<Cell<bool>>,
    state: Rc<DurableObjectState>,
    max_members: usize,
    /// A presence WebSocket silent for longer than this is taken for gone: two heartbeats, so
    /// that pings which reach the object late on a swamped runtime are not taken for silence.
    silent_ms: i64,
}

impl Presence {
    pub fn new(state: &DurableObjectState, config: &Config) -> Presence {
        Presence {
            book: Rc::new(RefCell::new(None)),
            timer: Rc::new(Cell::new(false)),
            state: Rc::new(JsValue::from(state).unchecked_into()),
            max_members: config.presence_max_members,
            silent_ms: i64::try_from(config.heartbeat_seconds.saturating_mul(2000))
                .unwrap_or(i64::MAX),
        }
    }

    /// The book, built from the open presence sockets' tickets if this instance has none.
    fn book(&self) -> RefMut<'_, Book> {
        RefMut::map(self.book.borrow_mut(), |book| {
            book.get_or_insert_with(|| self.build())
        })
    }

    fn build(&self) -> Book {
        let mut book = Book::default();
        let mut seen = 0;
        for ws in self.sockets() {
            let Some(ticket) = attachment(&ws).and_then(|a| a.member) else {
                continue;
            };
            if book.channel.is_none() {
                book.channel = subscribers::tagged(&self.state, &ws).channel;
            }
            let info = ticket.info.as_deref().and_then(|i| Info::parse(i).ok());
            book.roster
                .connect(&ticket.sub, ticket.conn, info, ticket.since);
            seen = seen.max(ticket.synced);
        }
        book.outbox.carry_on_after(seen);
        book
    }

    /// The open presence sockets.
    fn sockets(&self) -> Vec<WebSocket> {
        subscribers::open(self.state.get_websockets_with_tag(PRESENCE_TAG))
    }

    /// A connection of `entrant` enters at `now_ms`: its ticket (for its attachment) and the
    /// `sync` object it is sent before anything else. 409 when it would add a member beyond
    /// `PRESENCE_MAX_MEMBERS`. Call `entered` once its socket is accepted, or `abandon`.
    pub fn enter(
        &self,
        channel: &ChannelName,
        entrant: Entrant,
        now_ms: i64,
    ) -> Result<(Ticket, String), Error> {
        let mut book = self.book();
        book.channel = Some(channel.clone());
        if !book.roster.admits(&entrant.sub, self.max_members) {
            return Err(Error::PresenceFull(format!(
                "channel {channel} already has {} members (PRESENCE_MAX_MEMBERS)",
                self.max_members
            )));
        }
        let conn = connection_id();
        let Entrant { sub, info } = entrant;
        let change = book.roster.connect(&sub, conn, info.clone(), now_ms);
        book.outbox.record(&sub, change, info);
        let sync = sync(channel, &book.roster);
        // Every connection of a member carries the member's info (its joining connection's),
        // so a roster rebuilt from any of them shows the same.
        let info = book.roster.get(&sub).and_then(|m| m.info.clone());
        let ticket = Ticket {
            sub,
            info: info.map(|i| i.as_json().to_string()),
            conn,
            since: now_ms,
            synced: book.outbox.position(),
        };
        Ok((ticket, sync))
    }

    /// The socket of an `enter` was accepted: its join goes out.
    pub fn entered(&self) {
        self.send_due();
    }

    /// The socket of an `enter` was not accepted after all.
    pub fn abandon(&self, ticket: &Ticket) {
        self.leave(ticket, false);
    }

    /// Closes `ws` with `code` (`subscribers::close`); a presence connection leaves first, so
    /// that a close event that may follow finds nothing to do.
    pub fn close(&self, ws: &WebSocket, code: CloseCode) {
        self.depart(ws);
        subscribers::close(ws, code);
    }

    /// `ws` is gone (or about to be): a presence connection leaves, once. Its ticket is cleared
    /// from its attachment, so neither a later event nor a rebuild counts it again.
    pub fn depart(&self, ws: &WebSocket) {
        let Some(mut attached) = attachment(ws) else {
            return;
        };
        let Some(ticket) = attached.member.take() else {
            return;
        };
        let _ = ws.serialize_attachment(&attached);
        let built_now = self.book.borrow().is_none();
        self.leave(&ticket, built_now);
    }

    /// Connection `ticket` leaves. `rebuilt`: the book was just built, from sockets that may not
    /// have included this closing one, which is then counted first so that its member's leave
    /// is not lost.
    fn leave(&self, ticket: &Ticket, rebuilt: bool) {
        {
            let mut book = self.book();
            let info = ticket.info.as_deref().and_then(|i| Info::parse(i).ok());
            if rebuilt && !book.roster.counts(&ticket.sub, ticket.conn) {
                book.roster
                    .connect(&ticket.sub, ticket.conn, info.clone(), ticket.since);
            }
            // The member's info is that of the connection that made it join.
            let info = book
                .roster
                .get(&ticket.sub)
                .map_or(info, |m| m.info.clone());
            let change = book.roster.disconnect(&ticket.sub, ticket.conn);
            book.outbox.record(&ticket.sub, change, info);
        }
        self.send_due();
    }

    /// How many members there are.
    pub fn count(&self) -> usize {
        self.book().roster.len()
    }

    /// The `GET /channels/{c}/presence` answer.
    pub fn listing(&self, channel: &ChannelName) -> String {
        let book = self.book();
        let members = book.roster.list(LISTING_MAX).map(|(sub, m)| Listed {
            sub,
            info: m.info.as_ref(),
            connections: u32::try_from(m.connections()).unwrap_or(u32::MAX),
            since_ms: m.since_ms(),
        });
        wire::listing(channel, book.roster.len(), members)
    }

    /// Sends the batch if it is due, else makes sure the timer will. Batches go out at most
    /// once per interval (`channel::presence::interval_ms`): the first change after a quiet
    /// spell at once, the rest of a storm in one batch per interval.
    fn send_due(&self) {
        let now = now_ms();
        let due = {
            let book = self.book();
            book.outbox.due_at(interval_ms(book.roster.connections()))
        };
        let Some(due) = due else {
            return;
        };
        if due <= now {
            self.send(now);
            return;
        }
        if self.timer.replace(true) {
            return;
        }
        let me = self.clone();
        let wait = u64::try_from(due.saturating_sub(now)).unwrap_or(0);
        alarm::in_background(&self.state, async move {
            Delay::from(Duration::from_millis(wait)).await;
            me.timer.set(false);
            me.send_due();
        });
    }

    /// Sends the pending changes to every presence socket, one frame each: what happened after
    /// its `sync` (sockets with the same start share the frame, made once).
    fn send(&self, now: i64) {
        let (batch, channel) = {
            let mut book = self.book();
            let interval = interval_ms(book.roster.connections());
            match (book.outbox.flush(now, interval), book.channel.clone()) {
                (Some(batch), Some(channel)) => (batch, channel),
                _ => return,
            }
        };
        let mut groups: BTreeMap<(&'static str, usize), (Transport, Vec<WebSocket>)> =
            BTreeMap::new();
        for ws in self.sockets() {
            let Some(attached) = attachment(&ws) else {
                continue;
            };
            let Some(ticket) = &attached.member else {
                continue;
            };
            let key = (attached.transport.tag(), batch.start(ticket.synced));
            groups
                .entry(key)
                .or_insert_with(|| (attached.transport, Vec::new()))
                .1
                .push(ws);
        }
        for ((_, start), (transport, sockets)) in groups {
            let told = batch.told(start);
            let Some(object) = wire::changes(&channel, &told.joins, &told.leaves) else {
                continue;
            };
            let frames = [frame(transport, &object)];
            // A socket that fails to take them would miss changes: close it, as a publish's
            // fan-out does, so its client reconnects and is sent a fresh `sync`.
            let failed = deliver_js(&sockets, &frames);
            if !failed.is_empty() {
                console_error!(
                    "edgehub: presence: {} of {} sockets refused a batch; closing them",
                    failed.len(),
                    sockets.len()
                );
            }
            for failed in failed {
                if let Some(socket) = sockets.get(failed) {
                    self.close(socket, CloseCode::Reconnect);
                }
            }
        }
    }

    /// Closes presence WebSockets that have sent nothing (not even `ping`) for longer than two
    /// `HEARTBEAT_SECONDS`, and settles the roster with the open sockets (a connection whose
    /// close event never came leaves here). Returns when to sweep next: one heartbeat on,
    /// while presence WebSockets remain (a sweep per heartbeat leaves the object idle long
    /// enough between to hibernate).
    pub fn sweep(&self, now: i64) -> Option<i64> {
        let period = self.silent_ms / 2;
        let mut live = Roster::default();
        let mut watched = false;
        for ws in self.sockets() {
            let Some(attached) = attachment(&ws) else {
                continue;
            };
            let Some(ticket) = attached.member.clone() else {
                continue;
            };
            if attached.transport == Transport::Ws {
                let heard = self.last_ping(&ws).unwrap_or(0).max(ticket.since);
                if now.saturating_sub(heard) > self.silent_ms {
                    self.close(&ws, CloseCode::Silent);
                    continue;
                }
                watched = true;
            }
            let info = ticket.info.as_deref().and_then(|i| Info::parse(i).ok());
            live.connect(&ticket.sub, ticket.conn, info, ticket.since);
        }
        {
            let mut book = self.book();
            for (sub, change, info) in book.roster.changes_to(&live) {
                book.outbox.record(&sub, change, info);
            }
            book.roster = live;
        }
        self.send_due();
        watched.then(|| now.saturating_add(period))
    }

    /// When the runtime last answered a `ping` on `ws` for this object (unix milliseconds).
    fn last_ping(&self, ws: &WebSocket) -> Option<i64> {
        let state: &JsValue = self.state.as_ref();
        let method = Reflect::get(
            state,
            &JsValue::from_str("getWebSocketAutoResponseTimestamp"),
        )
        .ok()?
        .dyn_into::<Function>()
        .ok()?;
        let socket: &JsValue = ws.as_ref();
        let when = method.call1(state, socket).ok()?;
        let when = when.dyn_into::<JsDate>().ok()?;
        Some(when.get_time() as i64)
    }
}

/// The `sync` object: every member, sorted by `sub`.
fn sync(channel: &ChannelName, roster: &Roster) -> String {
    wire::sync(
        channel,
        roster
            .list(usize::MAX)
            .map(|(sub, m)| (sub, m.info.as_ref())),
    )
}

/// A presence object framed for a transport: an SSE event without `id:`, or a WebSocket frame.
pub fn frame(transport: Transport, object: &str) -> String {
    match transport {
        Transport::Sse => wire::sse(object),
        Transport::Ws => wire::ws(object),
    }
}

/// A connection's id among its member's: random, within a JavaScript number's exact range.
fn connection_id() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return Date::now().as_millis();
    }
    u64::from_le_bytes(bytes) & ((1 << 53) - 1)
}
