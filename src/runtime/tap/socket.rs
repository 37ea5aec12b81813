//! The socket loops of `runtime::tap`: a bridge's own socket (alone, or until it joins or
//! becomes the tap) and the tap's upstream, which feeds every member.

use super::{Member, Tap};
use crate::channel::tap::Frame;
use crate::channel::tap::{catch_up, Catchup};
use crate::protocol::bridge::{Downstream, Upstream};
use crate::protocol::ws::CloseCode;
use crate::runtime::sse::{now_ms, Chunk};
use futures::{FutureExt, StreamExt};
use std::collections::VecDeque;
use std::rc::Rc;
use worker::{WebSocket, WebsocketEvent};

/// What a socket's loop does with its frames.
pub(super) enum Role {
    /// Feeds its own client, never shares.
    Alone,
    /// Feeds its own client until caught up (`start`: where it stands and the head it was
    /// told), then joins the tap or becomes it.
    Lone { start: Option<(u64, u64)> },
    /// The tap's upstream: feeds every member.
    Owner { tap: Rc<Tap>, generation: u64 },
}

/// Reads the object's frames until the socket closes, the member leaves it (joined the tap),
/// or the tap moves on (its owner left).
pub(super) async fn run(socket: WebSocket, member: Rc<Member>, mut role: Role) {
    let Ok(mut events) = socket.events() else {
        member.feed.end();
        return;
    };
    // Events taken early (while merging frames) and not merged: handled next, in order.
    let mut stash = VecDeque::new();
    loop {
        let event = match stash.pop_front() {
            Some(event) => event,
            None => match events.next().await {
                Some(event) => event,
                None => break,
            },
        };
        let text = match event {
            Ok(WebsocketEvent::Message(message)) => message.text(),
            Ok(WebsocketEvent::Close(_)) | Err(_) => break,
        };
        let Some(text) = text else { continue };
        let now = now_ms();
        if let Role::Owner { tap, generation } = &role {
            if !tap.current(*generation) {
                return;
            }
            match Downstream::decode(&text) {
                // The members' own backlogs pace them; the upstream never waits.
                Downstream::Held(sent) => {
                    let _ = socket.send_with_str(Upstream::Cursor(sent).encode());
                }
                Downstream::Start { .. } => {}
                // Frames of events that came while the last one was given out go out as
                // one: under load, a member gets one write for several events.
                Downstream::Sse(text) if matches!(Frame::read(text), Frame::Events { .. }) => {
                    let mut merged: Option<String> = None;
                    while let Some(Some(next)) = events.next().now_or_never() {
                        let more = match &next {
                            Ok(WebsocketEvent::Message(m)) => m.text(),
                            _ => None,
                        };
                        let events_frame =
                            more.as_deref().and_then(|t| match Downstream::decode(t) {
                                Downstream::Sse(s)
                                    if matches!(Frame::read(s), Frame::Events { .. }) =>
                                {
                                    Some(s.to_string())
                                }
                                _ => None,
                            });
                        match events_frame {
                            Some(s) => merged.get_or_insert_with(|| text.to_string()).push_str(&s),
                            None => {
                                stash.push_back(next);
                                break;
                            }
                        }
                    }
                    tap.distribute(merged.as_deref().unwrap_or(text), now).await
                }
                Downstream::Sse(text) => tap.distribute(text, now).await,
            }
            continue;
        }
        match Downstream::decode(&text) {
            Downstream::Held(sent) => {
                member.feed.held(sent);
            }
            // A cursor ahead of the head: the object tells this socket of the gap once events
            // reach it, which the tap would not; it stays alone.
            Downstream::Start { after, head } if after > head => role = Role::Alone,
            Downstream::Start { after, head } => {
                if let Role::Lone { start } = &mut role {
                    *start = Some((after, head));
                }
            }
            Downstream::Sse(text) => {
                if !member.feed.offer(&Chunk::new(text), now) {
                    member.socket.replace(None);
                    let code = CloseCode::TooSlow;
                    let _ = socket.close(Some(code.code()), Some(code.reason()));
                    member.feed.end();
                    return;
                }
                if let (Role::Lone { start: Some(start) }, Some((_, last))) =
                    (&mut role, crate::protocol::sse::chunk_ids(text))
                {
                    start.0 = start.0.max(last);
                }
            }
        }
        let Role::Lone {
            start: Some((position, head)),
        } = role
        else {
            continue;
        };
        let Some(channel) = member.channel.clone() else {
            continue;
        };
        let tap = Tap::find(&channel);
        match (catch_up(Tap::view_of(&channel), position, head), tap) {
            (Catchup::Join { through }, Some(tap)) => {
                member.through.set(through);
                tap.attach(&member);
                member.socket.replace(None);
                let _ = socket.close(Some(1000), Some("joined the isolate's tap"));
                return;
            }
            (Catchup::Promote { position }, _) => {
                member.through.set(position);
                let (tap, generation) = Tap::promote(&member, &channel, position, &socket);
                role = Role::Owner { tap, generation };
            }
            _ => {}
        }
    }
    match role {
        // The object closed the upstream (a restart, a purge): every member resumes.
        Role::Owner { tap, generation } => tap.closed(generation),
        Role::Alone | Role::Lone { .. } => member.feed.end(),
    }
}
