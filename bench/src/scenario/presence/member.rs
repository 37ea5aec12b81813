//! One connection of a storm's crowd: a WebSocket with its own `sub` and `info`. A presence
//! member keeps the member list as a client must (docs/API.md#presence-events: `sync` replaces
//! it, `join` adds, `leave` removes, `diff` does both) and says when it comes to know everyone
//! (and whether it stops knowing them); a plain one (the control) only reads. Both confirm the
//! events they read, ping as a presence client must, and close when told to.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client;
use crate::streams::WsSub;

/// How often a member pings: wrangler.toml's `HEARTBEAT_SECONDS` is 15, and a presence WebSocket
/// must ping at least every half of it (docs/API.md#presence-liveness).
pub(super) const PING_EVERY: Duration = Duration::from_secs(5);
/// The most a member waits for the server's close after its own.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Who should be on the channel: every member's `sub` and the `name` of its `info`.
pub type Roll = HashMap<String, String>;

/// Who joins in a storm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crowd {
    /// Plain subscribers (`?presence=0`): the control, the same storm without presence.
    Plain,
    /// Presence members (`?presence=1`).
    Members,
}

impl Crowd {
    pub fn presence(self) -> bool {
        self == Crowd::Members
    }
}

/// What every connection of a crowd shares.
#[derive(Clone)]
pub struct Shared {
    pub crowd: Crowd,
    pub channel: Arc<str>,
    pub roll: Arc<Roll>,
    /// How many connections know everyone right now (a plain one counts once it is open).
    pub complete: Arc<AtomicUsize>,
    pub deadline: Instant,
}

/// A member's `sub` and `info` (as JSON text): `m0017`, `{"name":"user 17"}`.
pub fn identity(i: usize) -> (String, String) {
    (format!("m{i:04}"), format!("user {i}"))
}

/// What one member saw until it was told to close.
#[derive(Debug, Default)]
pub struct Seen {
    /// When (`client::micros()`) it came to know every member, if it still did at the end.
    pub complete_at: Option<u64>,
    pub frames: u64,
    pub syncs: u64,
    pub joins: u64,
    pub leaves: u64,
    pub diffs: u64,
    /// Bytes of its presence frames.
    pub bytes: u64,
    /// Times it stopped knowing every member after it had.
    pub lost: u64,
    /// Frames that broke the rules (another channel, a stranger, a wrong `info`, a join of a
    /// member it knew, a leave of one it did not), and the first of them.
    pub odd: u64,
    pub first_odd: Option<String>,
    /// Why its socket ended before it was told to close, if it did, and when.
    pub ended: Option<String>,
    pub ended_at: Option<u64>,
    /// When it last sent `ping` (or opened).
    pub pinged_at: u64,
}

impl Seen {
    fn odd(&mut self, what: String) {
        self.odd += 1;
        self.first_odd.get_or_insert(what);
    }
}

/// Reads `ws` until `close` says so (or the deadline), keeping the member list. Then closes the
/// socket.
pub async fn follow(mut ws: WsSub, shared: Shared, mut close: watch::Receiver<bool>) -> Seen {
    let Shared {
        crowd,
        channel,
        roll,
        complete,
        deadline,
    } = shared;
    let mut seen = Seen {
        pinged_at: client::micros(),
        ..Seen::default()
    };
    let mut known: HashSet<String> = match crowd {
        Crowd::Members => HashSet::with_capacity(roll.len()),
        Crowd::Plain => roll.keys().cloned().collect(),
    };
    let mut knows_all = false;
    let mut next_ping = Instant::now() + PING_EVERY;
    while !*close.borrow() {
        if (known.len() == roll.len()) != knows_all {
            knows_all = !knows_all;
            match knows_all {
                true => {
                    complete.fetch_add(1, Ordering::SeqCst);
                    seen.complete_at = Some(client::micros());
                }
                false => {
                    complete.fetch_sub(1, Ordering::SeqCst);
                    seen.lost += 1;
                }
            }
        }
        let read = tokio::select! {
            _ = close.changed() => break,
            r = ws.next_presence(next_ping.min(deadline)) => r,
        };
        match read {
            Ok(Some((frame, bytes))) => {
                seen.frames += 1;
                seen.bytes += bytes as u64;
                apply(&frame, &channel, &roll, &mut known, &mut seen);
            }
            Ok(None) => {}
            Err(why) => {
                seen.ended = Some(why);
                seen.ended_at = Some(client::micros());
                break;
            }
        }
        let now = Instant::now();
        if now >= next_ping {
            if let Err(why) = ws.ping().await {
                seen.ended = Some(why);
                seen.ended_at = Some(client::micros());
                break;
            }
            seen.pinged_at = client::micros();
            next_ping = now + PING_EVERY;
        }
        if now >= deadline {
            seen.ended = Some("still reading at the scenario's deadline".into());
            break;
        }
    }
    if !knows_all {
        seen.complete_at = None;
    }
    ws.close(Instant::now() + CLOSE_WAIT).await;
    seen
}

/// Applies one presence frame to the list `known` (only members of `roll` enter it).
fn apply(frame: &Value, channel: &str, roll: &Roll, known: &mut HashSet<String>, seen: &mut Seen) {
    if frame["channel"] != channel {
        seen.odd(format!("a frame for another channel: {frame}"));
        return;
    }
    match frame["action"].as_str() {
        Some("sync") => {
            seen.syncs += 1;
            known.clear();
            for member in frame["members"].as_array().map_or(&[][..], Vec::as_slice) {
                if let Some(sub) = check(member, roll, seen) {
                    if !known.insert(sub.to_string()) {
                        seen.odd(format!("{sub} twice in a sync"));
                    }
                }
            }
        }
        Some("join") => {
            seen.joins += 1;
            if let Some(sub) = check(&frame["member"], roll, seen) {
                if !known.insert(sub.to_string()) {
                    seen.odd(format!("a join of {sub}, already known"));
                }
            }
        }
        Some("leave") => {
            seen.leaves += 1;
            forget(&frame["member"], known, seen);
        }
        Some("diff") => {
            seen.diffs += 1;
            for member in frame["leaves"].as_array().map_or(&[][..], Vec::as_slice) {
                forget(member, known, seen);
            }
            for member in frame["joins"].as_array().map_or(&[][..], Vec::as_slice) {
                if let Some(sub) = check(member, roll, seen) {
                    if !known.insert(sub.to_string()) {
                        seen.odd(format!("a join of {sub} in a diff, already known"));
                    }
                }
            }
        }
        _ => seen.odd(format!("an unknown presence frame: {frame}")),
    }
}

/// Removes a member that left from the list.
fn forget(member: &Value, known: &mut HashSet<String>, seen: &mut Seen) {
    let sub = member["sub"].as_str().unwrap_or_default();
    if !known.remove(sub) {
        seen.odd(format!("a leave of {sub:?}, not known"));
    }
}

/// The member's `sub` if it is on the roll with the `info` it was given.
fn check<'a>(member: &'a Value, roll: &Roll, seen: &mut Seen) -> Option<&'a str> {
    let sub = member["sub"].as_str().unwrap_or_default();
    match roll.get(sub) {
        Some(name) if member["info"]["name"] == name.as_str() => Some(sub),
        Some(_) => {
            seen.odd(format!("{sub} with info {}", member["info"]));
            None
        }
        None => {
            seen.odd(format!("a stranger: {member}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roll(n: usize) -> Roll {
        (0..n).map(identity).collect()
    }

    fn member(i: usize) -> Value {
        let (sub, name) = identity(i);
        json!({"sub": sub, "info": {"name": name}})
    }

    #[test]
    fn sync_replaces_join_adds_leave_removes_diff_does_both() {
        let (roll, mut known, mut seen) = (roll(3), HashSet::new(), Seen::default());
        let mut take = |frame: Value, channel: &str| {
            apply(&frame, channel, &roll, &mut known, &mut seen);
            let mut now: Vec<String> = known.iter().cloned().collect();
            now.sort();
            now
        };
        let one = |action: &str, i: usize| {
            json!({"op": "presence", "action": action, "channel": "c",
                "member": member(i)})
        };
        let sync = json!({"op": "presence", "action": "sync", "channel": "c",
            "members": [member(0), member(2)]});
        let diff = json!({"op": "presence", "action": "diff", "channel": "c",
            "joins": [member(0)], "leaves": [member(1), member(2)]});
        let stranger = json!({"op": "presence", "action": "join", "channel": "c",
            "member": {"sub": "m0002", "info": null}});
        assert_eq!(take(one("join", 1), "c"), ["m0001"]);
        assert_eq!(
            take(sync, "c"),
            ["m0000", "m0002"],
            "the sync replaced the list"
        );
        assert_eq!(take(one("join", 1), "c"), ["m0000", "m0001", "m0002"]);
        assert_eq!(take(one("leave", 0), "c"), ["m0001", "m0002"]);
        assert_eq!(take(diff, "c"), ["m0000"]);
        assert_eq!(take(one("leave", 1), "c"), ["m0000"], "not known");
        assert_eq!(take(one("join", 0), "c"), ["m0000"], "already known");
        assert_eq!(take(one("join", 1), "other"), ["m0000"], "another channel");
        assert_eq!(take(stranger, "c"), ["m0000"], "not the info it was given");
        assert_eq!(
            (seen.syncs, seen.joins, seen.leaves, seen.diffs, seen.odd),
            (1, 4, 2, 1, 4)
        );
        assert_eq!(
            seen.first_odd.as_deref(),
            Some("a leave of \"m0001\", not known")
        );
    }

    #[test]
    fn identities() {
        assert_eq!(identity(17), ("m0017".into(), "user 17".into()));
    }
}
