//! A shared upstream (`docs/architecture.md#tap`): one hibernatable WebSocket from this isolate
//! to a channel's object that carries many *riders*, plain SSE bridges (`runtime::tap`) or
//! many-channel lanes (`runtime::stream::shared`). This file holds what both kinds share: whose
//! request owns the upstream, the count reported on it, a rider leaving, the take-over and the
//! rescue. What a frame becomes for each rider is the riders' own.
//!
//! - A socket is usable only by the request that opened it: the upstream is opened by one
//!   rider's request (its *owner*), and only that request sends on it.
//! - A bell (`runtime::bell`) rung from any request runs its reaction in the request that made
//!   it. The owner's bell reports the rider count on the upstream; each rider's own bell makes
//!   it take the trunk over when the owner leaves (a new upstream from the trunk's position, so
//!   nothing published meanwhile is lost and nothing is given twice).
//! - Every rider keeps its own pacer, which lets go of riders whose requests stopped and takes
//!   over a trunk whose owner stopped or that stayed without an upstream too long.

use super::bell::Bell;
use super::sse::{accept_started, now_ms};
use crate::channel::tap::TapView;
use crate::error::Error;
use crate::protocol::bridge::Upstream;
use crate::protocol::ChannelName;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::thread::LocalKey;
use worker::js_sys::Promise;
use worker::wasm_bindgen_futures::spawn_local;
use worker::WebSocket;

/// How long a trunk may stay without an upstream (its new owner's request never opened one,
/// say because that client left at the same moment) before any rider's pacer takes it over.
const RESCUE_MS: i64 = 5_000;

/// Take-overs that may fail in a row (the object unreachable, the rider's request gone) before
/// every rider is ended to resume on its own; until then the next rider's pacer tries again.
const TAKE_OVER_TRIES: u32 = 3;

thread_local! {
    /// Take-overs this isolate failed on purpose (`EDGEHUB_FAULT_TAKE_OVER_STARTS`).
    static FAULTED: Cell<u64> = const { Cell::new(0) };
}

/// True while the isolate has failed fewer take-overs on purpose than its development
/// settings ask (`Config::fault_take_over_starts`); counts this one.
fn fault_start() -> bool {
    let wanted = super::isolate_config().map_or(0, |c| c.fault_take_over_starts);
    FAULTED.with(|n| {
        let fail = n.get() < wanted;
        if fail {
            n.set(n.get().saturating_add(1));
        }
        fail
    })
}

/// An isolate's trunks of one kind of rider, one per channel.
pub(super) type Trunks<R> = RefCell<HashMap<ChannelName, Rc<Trunk<R>>>>;

/// One kind of client a trunk carries.
pub(super) trait Rider: Sized + 'static {
    /// Names the kind in logs.
    const KIND: &'static str;
    /// This isolate's trunks of such riders.
    fn trunks() -> &'static LocalKey<Trunks<Self>>;
    fn id(&self) -> u64;
    /// Its client is there and its request's pacer ran lately.
    fn alive(&self, now: i64) -> bool;
    /// Rings its own bell, whose reaction (in its request) calls `Trunk::take_over`.
    fn wake(&self);
    /// Ends it: its client resumes on its own from its cursor.
    fn end(&self);
    /// Starts a shared subscription from `position` in its request (the one running now).
    fn start(&self, channel: &ChannelName, position: u64) -> Result<Promise, Error>;
    /// Its request keeps `socket`, the trunk's new upstream, and reads it until it closes or
    /// the trunk moves on.
    async fn carry(trunk: Rc<Trunk<Self>>, rider: Rc<Self>, generation: u64, socket: WebSocket);
}

/// The shared upstream of one channel in this isolate, and its riders.
pub(super) struct Trunk<R> {
    pub(super) channel: ChannelName,
    state: RefCell<State<R>>,
}

struct State<R> {
    source: Source,
    /// Changes with every upstream: a reader of an older one stops.
    generation: u64,
    /// The last id the upstream brought.
    position: u64,
    riders: Vec<Rc<R>>,
    /// The owner's bell: reports the rider count on the upstream.
    count: Option<Rc<Bell>>,
    /// The upstream, for the owner's request only (it reports the count on it even after its
    /// own client was let go as too slow).
    socket: Option<WebSocket>,
    owner: Option<Rc<R>>,
    /// When riders were last checked for stopped requests (at most once a second).
    reaped_ms: i64,
    /// Take-overs failed in a row.
    failures: u32,
}

impl<R> State<R> {
    /// Without an upstream: the owner's request is gone.
    fn orphan(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.source = Source::Orphaned;
        self.count = None;
        self.socket = None;
        self.owner = None;
    }
}

/// Where the trunk's upstream stands.
enum Source {
    Live { owner: u64 },
    Opening { by: u64, since_ms: i64 },
    Orphaned,
}

impl<R: Rider> Trunk<R> {
    pub(super) fn find(channel: &ChannelName) -> Option<Rc<Trunk<R>>> {
        R::trunks().with(|trunks| trunks.borrow().get(channel).cloned())
    }

    /// What a new rider of `channel` finds.
    pub(super) fn view_of(channel: &ChannelName) -> TapView {
        Self::find(channel).map_or(TapView::None, |t| t.view())
    }

    pub(super) fn view(&self) -> TapView {
        let state = self.state.borrow();
        match state.source {
            Source::Live { .. } => TapView::Live(state.position),
            _ => TapView::Busy,
        }
    }

    pub(super) fn current(&self, generation: u64) -> bool {
        self.state.borrow().generation == generation
    }

    /// Makes `owner`'s socket, caught up at `position`, the upstream of a new trunk with
    /// `owner` its first rider; in the owner's request. The trunk, and its generation.
    pub(super) fn promote(
        owner: &Rc<R>,
        channel: &ChannelName,
        position: u64,
        socket: &WebSocket,
    ) -> (Rc<Trunk<R>>, u64) {
        let generation = 1;
        let trunk = Rc::new(Trunk {
            channel: channel.clone(),
            state: RefCell::new(State {
                source: Source::Live { owner: owner.id() },
                generation,
                position,
                riders: vec![owner.clone()],
                count: None,
                socket: Some(socket.clone()),
                owner: Some(owner.clone()),
                reaped_ms: 0,
                failures: 0,
            }),
        });
        R::trunks().with(|trunks| trunks.borrow_mut().insert(channel.clone(), trunk.clone()));
        trunk.arm_count();
        (trunk, generation)
    }

    /// A new rider, given what the upstream brings from now on.
    pub(super) fn attach(&self, rider: &Rc<R>) {
        self.state.borrow_mut().riders.push(rider.clone());
        self.count_changed();
    }

    /// The riders of the moment.
    pub(super) fn riders(&self) -> Vec<Rc<R>> {
        self.state.borrow().riders.clone()
    }

    /// Riders let go (too slow, or over) are carried no more; each is ended by the caller.
    pub(super) fn let_go(&self, gone: &[Rc<R>]) {
        if gone.is_empty() {
            return;
        }
        let ids: Vec<u64> = gone.iter().map(|r| r.id()).collect();
        self.state
            .borrow_mut()
            .riders
            .retain(|r| !ids.contains(&r.id()));
        self.count_changed();
    }

    /// The upstream brought everything through `last`.
    pub(super) fn reached(&self, last: u64) {
        let mut state = self.state.borrow_mut();
        state.position = state.position.max(last);
    }

    /// Arms the owner's count bell (in the owner's request, which is running now).
    fn arm_count(self: &Rc<Self>) {
        let trunk = Rc::downgrade(self);
        let bell = Bell::repeating(move || {
            if let Some(trunk) = trunk.upgrade() {
                trunk.report_count();
            }
        });
        self.state.borrow_mut().count = Some(bell);
        self.report_count();
    }

    /// Tells the object how many clients the upstream carries (in the owner's request).
    fn report_count(&self) {
        let state = self.state.borrow();
        if let (Source::Live { .. }, Some(socket)) = (&state.source, state.socket.as_ref()) {
            let n = state.riders.len() as u64;
            let _ = socket.send_with_str(Upstream::Members(n).encode());
        }
    }

    fn count_changed(&self) {
        let bell = self.state.borrow().count.clone();
        if let Some(bell) = bell {
            bell.ring();
        }
    }

    /// A rider went. When it owned the upstream, the next live rider takes over.
    pub(super) fn leave(self: &Rc<Self>, id: u64) {
        let mut state = self.state.borrow_mut();
        let before = state.riders.len();
        state.riders.retain(|r| r.id() != id);
        let was_riding = state.riders.len() < before;
        let owned = match state.source {
            Source::Live { owner } => owner == id,
            Source::Opening { by, .. } => by == id,
            Source::Orphaned => false,
        };
        if owned {
            state.orphan();
        }
        let orphaned = matches!(state.source, Source::Orphaned);
        let now = now_ms();
        let next = state.riders.iter().find(|r| r.alive(now)).cloned();
        drop(state);
        match (orphaned, next) {
            (true, None) => self.end_all(),
            (true, Some(next)) => next.wake(),
            (false, _) if was_riding => self.count_changed(),
            (false, _) => {}
        }
    }

    /// Opens a new upstream from the trunk's position, in `rider`'s request (its bell's
    /// reaction, or its pacer): the call starts before this returns, so the socket is that
    /// request's.
    pub(super) fn take_over(self: &Rc<Self>, rider: &Rc<R>) {
        let mut state = self.state.borrow_mut();
        let here = state.riders.iter().any(|r| r.id() == rider.id());
        if !matches!(state.source, Source::Orphaned) || !here {
            return;
        }
        state.generation = state.generation.wrapping_add(1);
        state.source = Source::Opening {
            by: rider.id(),
            since_ms: now_ms(),
        };
        let (generation, position) = (state.generation, state.position);
        drop(state);
        let started = match fault_start() {
            true => Err(Error::Unavailable(
                "failed on purpose (EDGEHUB_FAULT_TAKE_OVER_STARTS)".into(),
            )),
            false => rider.start(&self.channel, position),
        };
        match started {
            Ok(answer) => spawn_local(reopen(self.clone(), rider.clone(), generation, answer)),
            Err(e) => {
                worker::console_error!("{} {}: taking over: {e}", R::KIND, self.channel.as_str());
                let failures = {
                    let mut state = self.state.borrow_mut();
                    state.orphan();
                    state.failures = state.failures.saturating_add(1);
                    state.failures
                };
                if failures >= TAKE_OVER_TRIES {
                    self.end_all();
                }
            }
        }
    }

    /// A tick of rider `id`'s pacer, in its request. Riders whose requests stopped are let go;
    /// a trunk whose owner is such a one, or that stayed without an upstream for `RESCUE_MS`,
    /// is taken over by this rider.
    pub(super) fn rescue(self: &Rc<Self>, id: u64) {
        let now = now_ms();
        let (take, reaped) = {
            let mut state = self.state.borrow_mut();
            let before = state.riders.len();
            if now.saturating_sub(state.reaped_ms) >= 1000 {
                state.reaped_ms = now;
                state.riders.retain(|r| r.alive(now));
            }
            let reaped = state.riders.len() < before;
            let stale = match state.source {
                Source::Live { .. } => state.owner.as_ref().is_some_and(|o| !o.alive(now)),
                Source::Orphaned => true,
                Source::Opening { since_ms, .. } => now.saturating_sub(since_ms) > RESCUE_MS,
            };
            if stale && !matches!(state.source, Source::Orphaned) {
                state.orphan();
            }
            let rider = state.riders.iter().find(|r| r.id() == id).cloned();
            (rider.filter(|_| stale), reaped)
        };
        match take {
            Some(rider) => self.take_over(&rider),
            None if reaped => self.count_changed(),
            None => {}
        }
    }

    /// Ends every rider (each resumes on its own from its cursor) and forgets the trunk.
    pub(super) fn end_all(self: &Rc<Self>) {
        let riders = {
            let mut state = self.state.borrow_mut();
            state.orphan();
            std::mem::take(&mut state.riders)
        };
        R::trunks().with(|trunks| {
            let mut trunks = trunks.borrow_mut();
            if trunks
                .get(&self.channel)
                .is_some_and(|t| Rc::ptr_eq(t, self))
            {
                trunks.remove(&self.channel);
            }
        });
        for rider in riders {
            rider.end();
        }
    }

    /// The trunk's upstream closed or failed while `generation` was current: every rider
    /// resumes on its own (a restart of the object, a purge).
    pub(super) fn closed(self: &Rc<Self>, generation: u64) {
        if self.current(generation) {
            self.end_all();
        }
    }
}

/// The rest of a take-over, in the rider's request: the object's answer becomes the upstream.
async fn reopen<R: Rider>(trunk: Rc<Trunk<R>>, rider: Rc<R>, generation: u64, answer: Promise) {
    let socket = match accept_started(answer, "shared upstream").await {
        Ok(socket) if trunk.current(generation) => socket,
        Ok(socket) => {
            let _ = socket.close(Some(1000), Some("upstream moved on"));
            return;
        }
        Err(e) => {
            worker::console_error!("{} {}: reopening: {e}", R::KIND, trunk.channel.as_str());
            trunk.closed(generation);
            return;
        }
    };
    {
        let mut state = trunk.state.borrow_mut();
        state.source = Source::Live { owner: rider.id() };
        state.socket = Some(socket.clone());
        state.owner = Some(rider.clone());
        state.failures = 0;
    }
    trunk.arm_count();
    R::carry(trunk, rider, generation, socket).await;
}
