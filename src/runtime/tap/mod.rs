//! One upstream per isolate (`docs/architecture.md#tap`): the plain SSE subscribers of a channel
//! in one Worker isolate share one hibernatable WebSocket to its object (the *tap*), and the
//! isolate fans each chunk out to their streams. `channel::tap` decides who gets what; this file
//! holds the sockets, the clock and the runtime's rules about requests:
//!
//! - A socket is usable only by the request that opened it. The tap's upstream is opened by one
//!   member's request (its *owner*), and only that request sends on it. The others are fed by
//!   `sse::Feed`, which wakes nothing of theirs that does I/O.
//! - A promise's continuation runs in the request that made the promise. A *bell* is such a
//!   promise: ringing it from any request runs its reaction in the request that made it. The
//!   owner's bell reports the member count on the upstream; each member's bell makes it take
//!   the tap over when the owner leaves (it opens a new upstream from the tap's position, so
//!   nothing published meanwhile is lost and nothing is given twice).
//! - Every member keeps its own heartbeat timer (`sse::pace`), so the runtime never takes a
//!   stream fed from another request for hung; and its own backlog, so a slow member is let go
//!   alone.

use super::access::Access;
use super::client::Hub;
use super::sse::{self, now_ms, BridgeLimits, Chunk, Feed, Owned};
use crate::channel::fanout::Transport;
use crate::channel::tap::{entry, Entry, Frame, Share, TapView};
use crate::error::Error;
use crate::protocol::bridge::Upstream;
use crate::protocol::ChannelName;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use worker::wasm_bindgen_futures::spawn_local;
use worker::{Delay, Env, Response, WebSocket};

/// How long a tap may stay without an upstream (its new owner's request never opened one, say
/// because that client left at the same moment) before any member's pacer takes it over.
const RESCUE_MS: i64 = 5_000;

/// How many members one frame is given to before the owner lets the runtime run what waits
/// (the streams' writes, the next publish on its way): a frame for a thousand members is four
/// turns of the event loop, not one long one that everything else queues behind. Measured
/// with 1,000 members at 20 events/s: a publish is answered in ~40 ms instead of ~450 ms.
const SLICE: usize = 250;

mod socket;

use super::bell::Bell;
use socket::{reopen, run, Role};

thread_local! {
    static TAPS: RefCell<HashMap<ChannelName, Rc<Tap>>> = RefCell::new(HashMap::new());
    static NEXT_ID: Cell<u64> = const { Cell::new(1) };
}

/// `GET /sse/{c}` for a subscriber with no filter and no presence: attaches to the isolate's
/// tap when it has nothing to replay, else opens its own socket, which joins the tap (or
/// becomes it) once caught up.
pub async fn subscribe(
    env: &Env,
    channel: &ChannelName,
    since: Option<u64>,
    access: Access,
    limits: BridgeLimits,
) -> Result<Response, Error> {
    let tap = find(channel);
    let view = tap.as_ref().map_or(TapView::None, |t| t.view());
    if let (Entry::Attach { through }, Some(tap)) = (entry(view, since), tap) {
        let (member, response) = Member::open(env, channel, &limits, access.expires)?;
        member.through.set(through);
        tap.attach(&member);
        return Ok(response);
    }
    // The object closes a socket at its token's expiry; this one may come to carry other
    // clients, so its stream ends at its own client's expiry instead (`sse::open`).
    let shared = Access {
        expires: None,
        ..access
    };
    let upstream = Hub::get(env, channel)?
        .subscribe(Transport::Sse, since, shared, None, None)
        .await?;
    if upstream.status_code() != 101 {
        return Ok(upstream);
    }
    let socket = sse::accept(upstream)?;
    let (member, response) = Member::open(env, channel, &limits, access.expires)?;
    member.socket.replace(Some(socket.clone()));
    spawn_local(run(socket, member, Role::Lone { start: None }));
    Ok(response)
}

/// A bridge on its own socket that never shares it (`sse::bridge`).
pub async fn alone(socket: WebSocket, feed: Feed, owned: Owned) {
    let member = Rc::new(Member {
        id: 0,
        channel: None,
        feed,
        through: Cell::new(0),
        env: None,
        socket: owned,
        bell: RefCell::new(None),
    });
    run(socket, member, Role::Alone).await;
}

fn find(channel: &ChannelName) -> Option<Rc<Tap>> {
    TAPS.with(|taps| taps.borrow().get(channel).cloned())
}

/// One client of a channel in this isolate.
struct Member {
    id: u64,
    channel: Option<ChannelName>,
    feed: Feed,
    /// The last id it was given.
    through: Cell<u64>,
    env: Option<Env>,
    /// The socket its own request holds: its own, or the tap's upstream when it is the owner.
    socket: Owned,
    /// Rung to make it take the tap over; made in its own request.
    bell: RefCell<Option<Rc<Bell>>>,
}

impl Member {
    /// Opens the client's stream; when it goes, the member leaves its channel's tap.
    fn open(
        env: &Env,
        channel: &ChannelName,
        limits: &BridgeLimits,
        token_exp: Option<i64>,
    ) -> Result<(Rc<Member>, Response), Error> {
        let id = NEXT_ID.with(|n| n.replace(n.get().wrapping_add(1)));
        let socket: Owned = Rc::new(RefCell::new(None));
        let leaving = channel.clone();
        let on_drop = Box::new(move || {
            if let Some(tap) = find(&leaving) {
                tap.leave(id);
            }
        });
        let (feed, response) = sse::open(limits, token_exp, socket.clone(), Some(on_drop))?;
        let ticking = channel.clone();
        feed.on_tick(Box::new(move || {
            if let Some(tap) = find(&ticking) {
                tap.rescue(id);
            }
        }));
        let member = Rc::new(Member {
            id,
            channel: Some(channel.clone()),
            feed,
            through: Cell::new(0),
            env: Some(env.clone()),
            socket,
            bell: RefCell::new(None),
        });
        Ok((member, response))
    }
}

/// The shared upstream of one channel in this isolate, and its members.
struct Tap {
    channel: ChannelName,
    state: RefCell<TapState>,
}

struct TapState {
    source: Source,
    /// Changes with every upstream: a socket loop of an older one stops feeding.
    generation: u64,
    /// The last id the tap brought.
    position: u64,
    members: Vec<Rc<Member>>,
    /// The owner's bell: reports the member count on the upstream.
    count: Option<Rc<Bell>>,
    /// The upstream, for the owner's request only (it reports the count on it even after
    /// its own client was let go as too slow).
    socket: Option<WebSocket>,
    /// The owner's stream, to tell whether its request is still running.
    owner: Option<Feed>,
    /// When members were last checked for stopped pacers (at most once a second).
    reaped_ms: i64,
}

impl TapState {
    /// Without an upstream: the owner's request is gone.
    fn orphan(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.source = Source::Orphaned;
        self.count = None;
        self.socket = None;
        self.owner = None;
    }
}

/// Where the tap's upstream stands.
enum Source {
    Live { owner: u64 },
    Opening { by: u64, since_ms: i64 },
    Orphaned,
}

impl Tap {
    fn view(&self) -> TapView {
        let state = self.state.borrow();
        match state.source {
            Source::Live { .. } => TapView::Live(state.position),
            _ => TapView::Busy,
        }
    }

    fn current(&self, generation: u64) -> bool {
        self.state.borrow().generation == generation
    }

    /// A new member, fed from now on after its `through`; it gets a bell of its own request.
    fn attach(self: &Rc<Tap>, member: &Rc<Member>) {
        let tap = Rc::downgrade(self);
        let who = Rc::downgrade(member);
        let bell = Bell::new(move || {
            if let (Some(tap), Some(member)) = (tap.upgrade(), who.upgrade()) {
                tap.take_over(&member);
            }
        });
        member.bell.replace(Some(bell));
        self.state.borrow_mut().members.push(member.clone());
        self.count_changed();
    }

    /// Makes `member`'s socket, caught up at `position`, the upstream of a new tap.
    fn promote(member: &Rc<Member>, channel: &ChannelName, position: u64) -> Rc<Tap> {
        let tap = Rc::new(Tap {
            channel: channel.clone(),
            state: RefCell::new(TapState {
                source: Source::Live { owner: member.id },
                generation: 1,
                position,
                members: Vec::new(),
                count: None,
                socket: member.socket.borrow().clone(),
                owner: Some(member.feed.clone()),
                reaped_ms: 0,
            }),
        });
        member.through.set(position);
        TAPS.with(|taps| taps.borrow_mut().insert(channel.clone(), tap.clone()));
        tap.attach(member);
        tap.ring_count_from_owner();
        tap
    }

    /// Arms the owner's count bell (in the owner's request, which is running now).
    fn ring_count_from_owner(self: &Rc<Tap>) {
        let tap = Rc::downgrade(self);
        let bell = Bell::repeating(move || {
            if let Some(tap) = tap.upgrade() {
                tap.report_count();
            }
        });
        self.state.borrow_mut().count = Some(bell);
        self.report_count();
    }

    /// Tells the object how many clients the upstream carries (in the owner's request).
    fn report_count(&self) {
        let state = self.state.borrow();
        let Source::Live { .. } = state.source else {
            return;
        };
        let n = state.members.len() as u64;
        if let Some(socket) = state.socket.as_ref() {
            let _ = socket.send_with_str(Upstream::Members(n).encode());
        }
    }

    fn count_changed(&self) {
        let bell = self.state.borrow().count.clone();
        if let Some(bell) = bell {
            bell.ring();
        }
    }

    /// Gives each member what it has not had of one upstream frame, `SLICE` members at a time
    /// with a turn of the event loop between. The tap's position moves once every member was
    /// visited: one attached meanwhile (after the old position) is visited too, and an upstream
    /// opened meanwhile (from the old position) brings the frame again, which `through` makes
    /// a no-op for those that had it.
    async fn distribute(&self, text: &str, mut now: i64) {
        let frame = Frame::read(text);
        let chunk = Chunk::new(text);
        let mut visited: HashSet<u64> = HashSet::new();
        // Rounds: the members of the moment, in slices; then those attached meanwhile. Each
        // round reads the list once, so a frame costs linear time in the members.
        loop {
            let round: Vec<Rc<Member>> = self
                .state
                .borrow()
                .members
                .iter()
                .filter(|m| !visited.contains(&m.id))
                .cloned()
                .collect();
            if round.is_empty() {
                break;
            }
            let slices = round.len().div_ceil(SLICE);
            for (k, slice) in round.chunks(SLICE).enumerate() {
                let mut gone = Vec::new();
                for member in slice {
                    visited.insert(member.id);
                    let through = member.through.get();
                    let given = match frame.share(text, through) {
                        Share::Whole => Some(chunk.clone()),
                        Share::Part(part) => Some(Chunk::new(part)),
                        Share::Gap(notice) => Some(Chunk::new(&notice)),
                        Share::Nothing => None,
                    };
                    if let Some(last) = frame.last() {
                        member.through.set(through.max(last));
                    }
                    if given.is_some_and(|given| !member.feed.offer(&given, now)) {
                        gone.push(member.clone());
                    }
                }
                // Those let go here (too slow, or gone) are fed no more; each leaves as it ends.
                if !gone.is_empty() {
                    self.state
                        .borrow_mut()
                        .members
                        .retain(|m| !gone.iter().any(|g| g.id == m.id));
                    for member in &gone {
                        member.feed.end();
                    }
                    self.count_changed();
                }
                if k + 1 < slices {
                    Delay::from(Duration::ZERO).await;
                    now = now_ms();
                }
            }
            if slices <= 1 {
                break;
            }
        }
        if let Some(last) = frame.last() {
            let mut state = self.state.borrow_mut();
            state.position = state.position.max(last);
        }
    }

    /// A member's stream went. When it was the owner, another member takes over.
    fn leave(self: &Rc<Tap>, id: u64) {
        let mut state = self.state.borrow_mut();
        let before = state.members.len();
        state.members.retain(|m| m.id != id);
        let was_member = state.members.len() < before;
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
        let next = state.members.iter().find(|m| m.feed.alive(now)).cloned();
        drop(state);
        match (orphaned, next) {
            (true, None) => self.forget(),
            (true, Some(next)) => {
                let bell = next.bell.borrow().clone();
                match bell {
                    Some(bell) => bell.ring(),
                    None => self.end_all(),
                }
            }
            (false, _) if was_member => self.count_changed(),
            (false, _) => {}
        }
    }

    /// Opens a new upstream from the tap's position, in `member`'s request (its bell's
    /// reaction): the call starts before this returns, so the socket is that request's.
    fn take_over(self: &Rc<Tap>, member: &Rc<Member>) {
        let mut state = self.state.borrow_mut();
        let here = state.members.iter().any(|m| m.id == member.id);
        if !matches!(state.source, Source::Orphaned) || !here {
            return;
        }
        state.generation = state.generation.wrapping_add(1);
        state.source = Source::Opening {
            by: member.id,
            since_ms: now_ms(),
        };
        let (generation, position) = (state.generation, state.position);
        drop(state);
        let started = member
            .env
            .as_ref()
            .ok_or_else(|| Error::Internal("a tap member without its bindings".into()))
            .and_then(|env| Hub::get(env, &self.channel)?.start_shared(Transport::Sse, position));
        match started {
            Ok(answer) => spawn_local(reopen(self.clone(), member.clone(), generation, answer)),
            Err(e) => {
                worker::console_error!("tap {}: taking over: {e}", self.channel.as_str());
                self.end_all();
            }
        }
    }

    /// A member's pacer, in its own request. Members whose requests the runtime ended without
    /// cancelling their streams (their pacers stopped) are let go; a tap whose owner is such a
    /// one, or that was left without an upstream for `RESCUE_MS`, is taken over by this member.
    fn rescue(self: &Rc<Tap>, id: u64) {
        let now = now_ms();
        let (member, reaped) = {
            let mut state = self.state.borrow_mut();
            let before = state.members.len();
            if now.saturating_sub(state.reaped_ms) >= 1000 {
                state.reaped_ms = now;
                state.members.retain(|m| m.feed.alive(now));
            }
            let reaped = state.members.len() < before;
            let stale = match state.source {
                Source::Live { .. } => state.owner.as_ref().is_some_and(|f| !f.alive(now)),
                Source::Orphaned => true,
                Source::Opening { since_ms, .. } => now.saturating_sub(since_ms) > RESCUE_MS,
            };
            if !stale {
                drop(state);
                if reaped {
                    self.count_changed();
                }
                return;
            }
            if !matches!(state.source, Source::Orphaned) {
                state.orphan();
            }
            (state.members.iter().find(|m| m.id == id).cloned(), reaped)
        };
        match member {
            Some(member) => self.take_over(&member),
            None if reaped => self.count_changed(),
            None => {}
        }
    }

    /// Ends every member's stream (each resumes from `Last-Event-ID`) and forgets the tap.
    fn end_all(self: &Rc<Tap>) {
        let members = std::mem::take(&mut self.state.borrow_mut().members);
        self.forget();
        for member in members {
            member.feed.end();
        }
    }

    fn forget(self: &Rc<Tap>) {
        self.state.borrow_mut().orphan();
        TAPS.with(|taps| {
            let mut taps = taps.borrow_mut();
            if taps.get(&self.channel).is_some_and(|t| Rc::ptr_eq(t, self)) {
                taps.remove(&self.channel);
            }
        });
    }
}
