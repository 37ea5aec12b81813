//! One upstream per isolate for plain SSE bridges (`docs/architecture.md#tap`): the SSE
//! subscribers of a channel with no filter and no presence in one Worker isolate ride one
//! `Trunk` (`runtime::trunk`, which holds the rules about requests and the hand-over), and the
//! isolate fans each chunk out to their streams. `channel::tap` decides who gets what.
//!
//! - The members are fed by `sse::Feed`, which wakes nothing of theirs that does I/O.
//! - Every member keeps its own heartbeat timer (`sse::pace`), so the runtime never takes a
//!   stream fed from another request for hung; and its own backlog, so a slow member is let go
//!   alone.

use super::access::Access;
use super::bell::Bell;
use super::client::Hub;
use super::sse::{self, now_ms, BridgeLimits, Chunk, Feed, Owned};
use super::trunk::{Rider, Trunk, Trunks};
use crate::channel::fanout::Transport;
use crate::channel::tap::{entry, Entry, Frame, Share};
use crate::error::Error;
use crate::protocol::ChannelName;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::thread::LocalKey;
use std::time::Duration;

use worker::js_sys::Promise;
use worker::wasm_bindgen_futures::spawn_local;
use worker::{Delay, Env, Response, WebSocket};

/// How many members one frame is given to before the owner lets the runtime run what waits
/// (the streams' writes, the next publish on its way): a frame for a thousand members is four
/// turns of the event loop, not one long one that everything else queues behind. Measured
/// with 1,000 members at 20 events/s: a publish is answered in ~40 ms instead of ~450 ms.
const SLICE: usize = 250;

mod socket;

use socket::{run, Role};

/// The shared upstream of one channel's plain SSE bridges in this isolate.
type Tap = Trunk<Member>;

thread_local! {
    static TAPS: Trunks<Member> = RefCell::new(HashMap::new());
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
    let tap = Tap::find(channel);
    if let (Entry::Attach { through }, Some(tap)) = (entry(Tap::view_of(channel), since), tap) {
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
        bell: None,
    });
    run(socket, member, Role::Alone).await;
}

/// One client of a channel in this isolate.
pub(super) struct Member {
    id: u64,
    channel: Option<ChannelName>,
    feed: Feed,
    /// The last id it was given.
    through: Cell<u64>,
    env: Option<Env>,
    /// The socket its own request holds: its own, or the tap's upstream when it is the owner.
    socket: Owned,
    /// Rung to make it take the tap over; made in its own request.
    bell: Option<Rc<Bell>>,
}

impl Member {
    /// Opens the client's stream, in its request; when it goes, the member leaves its
    /// channel's tap.
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
            if let Some(tap) = Tap::find(&leaving) {
                tap.leave(id);
            }
        });
        let (feed, response) = sse::open(limits, token_exp, socket.clone(), Some(on_drop))?;
        let ticking = channel.clone();
        feed.on_tick(Box::new(move || {
            if let Some(tap) = Tap::find(&ticking) {
                tap.rescue(id);
            }
        }));
        let member = Rc::new_cyclic(|me: &std::rc::Weak<Member>| {
            let me = me.clone();
            let waking = channel.clone();
            let bell = Bell::repeating(move || {
                if let (Some(tap), Some(member)) = (Tap::find(&waking), me.upgrade()) {
                    tap.take_over(&member);
                }
            });
            Member {
                id,
                channel: Some(channel.clone()),
                feed,
                through: Cell::new(0),
                env: Some(env.clone()),
                socket,
                bell: Some(bell),
            }
        });
        Ok((member, response))
    }
}

impl Rider for Member {
    const KIND: &'static str = "tap";

    fn trunks() -> &'static LocalKey<Trunks<Member>> {
        &TAPS
    }

    fn id(&self) -> u64 {
        self.id
    }

    fn alive(&self, now: i64) -> bool {
        self.feed.alive(now)
    }

    fn wake(&self) {
        match &self.bell {
            Some(bell) => bell.ring(),
            None => self.feed.end(),
        }
    }

    fn end(&self) {
        self.feed.end();
    }

    fn start(&self, channel: &ChannelName, position: u64) -> Result<Promise, Error> {
        let env = self
            .env
            .as_ref()
            .ok_or_else(|| Error::Internal("a tap member without its bindings".into()))?;
        Hub::get(env, channel)?.start_shared(Transport::Sse, position)
    }

    async fn carry(tap: Rc<Tap>, member: Rc<Member>, generation: u64, socket: WebSocket) {
        member.socket.replace(Some(socket.clone()));
        run(socket, member, Role::Owner { tap, generation }).await;
    }
}

impl Trunk<Member> {
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
                .riders()
                .into_iter()
                .filter(|m| !visited.contains(&m.id))
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
                self.let_go(&gone);
                for member in &gone {
                    member.feed.end();
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
            self.reached(last);
        }
    }
}
