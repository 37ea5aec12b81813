//! Scenario 6: presence, a join storm (docs/API.md#presence). On one fresh channel, the
//! observers (plain WebSockets that time each delivery) and a publisher that publishes one small
//! event every `presence_publish_every` throughout: first a baseline with no crowd; then the
//! control, the same storm without presence (`presence_members` plain WebSockets, opened
//! `CONNECT_CONCURRENCY` at a time, then all closed); then the storm itself, as many presence
//! members (`?presence=1`, each its own `sub` and `info`) opened the same way, until each knows
//! all of them (sync complete); then all close at once (the leave storm) until the listing
//! counts none. Publish → deliver at the observers in each phase, also as a share of the
//! baseline and of the control of the same run; the members' presence frames; the CPU.

mod figures;
mod member;
mod traffic;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use self::member::{identity, Crowd, Roll, Seen, Shared};
use super::{fanout, Plan, Setup};
use crate::client;
use crate::stats::Figures;
use crate::streams::WsSub;

const SCENARIO: &str = "presence";
/// The observers: ten give ten samples per event, so that a storm of a few seconds at 5 events
/// a second has a p99 worth the name.
const OBSERVERS: usize = 10;
const CONNECT_CONCURRENCY: usize = 100;
/// The most a storm may take, from the first connect to every member knowing everyone.
const STORM_WAIT: Duration = Duration::from_secs(180);
/// The most a leave storm may take, until the channel counts none of the crowd.
const LEAVE_WAIT: Duration = Duration::from_secs(60);
/// How often the channel is asked whether the crowd has gone.
const ASK_EVERY: Duration = Duration::from_millis(100);
/// The most the crowd's tasks may take to end once told to close.
const CLOSING_WAIT: Duration = Duration::from_secs(20);
/// Between the control and the storm: until an observer has an event sent this long after the
/// control left (so no backlog of the control's is measured in the storm), at most `SETTLE_WAIT`.
const SETTLE: Duration = Duration::from_secs(1);
const SETTLE_WAIT: Duration = Duration::from_secs(60);

/// CPU seconds by role (`fanout::cpu_now`) before and after a storm.
struct StormCpu {
    before: Vec<(&'static str, f64)>,
    after: Vec<(&'static str, f64)>,
}

/// What one crowd's storm gave; times in `client::micros()`.
struct Storm {
    /// The first connect.
    start: u64,
    /// Every socket open (`ready`).
    open: u64,
    /// Members: the last came to know everyone, or when the bench gave up waiting. Plain: `open`.
    end: u64,
    /// Connections that came to know everyone and still did at the close.
    knew_all: usize,
    /// From `start` to when the bench saw the storm over.
    cpu: StormCpu,
    cpu_us: u64,
    /// The close of every socket.
    leave: u64,
    /// When the channel first counted none of the crowd (members: the listing; plain: its
    /// WebSocket count, less the observers), or the last count seen after `LEAVE_WAIT`.
    empty: Result<u64, Option<u64>>,
    seen: Vec<Seen>,
    failed: Vec<String>,
}

impl Storm {
    /// When the leave storm was over, or when the bench stopped waiting for it.
    fn left(&self) -> u64 {
        match self.empty {
            Ok(at) => at,
            Err(_) => self.leave + LEAVE_WAIT.as_micros() as u64,
        }
    }
}

/// Stops the publisher and the observers however `run` returns (on the way out of a failed run
/// they would otherwise go on into the next).
struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<AbortHandle>,
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Shared by both storms of a run.
struct Stage<'a> {
    plan: &'a Plan,
    setup: &'a Setup,
    channel: Arc<str>,
    roll: Arc<Roll>,
    tokens: Vec<String>,
    deadline: Instant,
}

pub async fn run(plan: &Plan, setup: &Setup) -> Result<Figures, String> {
    let c = client::channel("presence");
    let mut tokens = Vec::with_capacity(plan.presence_members);
    for i in 0..plan.presence_members {
        let (sub, name) = identity(i);
        tokens.push(client::member_token(
            &sub,
            &json!({ "name": name }).to_string(),
        )?);
    }
    let stage = Stage {
        plan,
        setup,
        channel: Arc::from(c.as_str()),
        roll: Arc::new((0..plan.presence_members).map(identity).collect()),
        tokens,
        deadline: Instant::now()
            + plan.presence_baseline
            + SETTLE_WAIT
            + 2 * (STORM_WAIT + LEAVE_WAIT + CLOSING_WAIT),
    };
    let (last_id, read_up_to) = (
        Arc::new(AtomicU64::new(u64::MAX)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut guard = Traffic {
        stop: Arc::new(AtomicBool::new(false)),
        tasks: Vec::new(),
    };
    let mut readers = Vec::with_capacity(OBSERVERS);
    for _ in 0..OBSERVERS {
        let plain = WsSub::open(setup.hub_port, &c, None).await?;
        let reader = tokio::spawn(traffic::read_plain(
            plain,
            last_id.clone(),
            read_up_to.clone(),
            stage.deadline,
        ));
        guard.tasks.push(reader.abort_handle());
        readers.push(reader);
    }
    let publisher = tokio::spawn(traffic::publish_paced(
        setup.hub.clone(),
        c.clone(),
        plan.presence_publish_every,
        guard.stop.clone(),
    ));
    guard.tasks.push(publisher.abort_handle());

    let baseline = client::micros();
    tokio::time::sleep(plan.presence_baseline).await;
    let control = storm(&stage, Crowd::Plain).await;
    let settled = settle(&read_up_to).await;
    let members = storm(&stage, Crowd::Members).await;

    guard.stop.store(true, Ordering::SeqCst);
    let sent = publisher
        .await
        .map_err(|e| format!("the publisher failed: {e}"))?;
    let head = client::info(&setup.hub, &c).await?["head"]
        .as_u64()
        .unwrap_or(0);
    last_id.store(head, Ordering::SeqCst);
    let (mut delivered, mut reader_end) = (Vec::with_capacity(OBSERVERS), None);
    for r in readers {
        let (got, ended) = r.await.map_err(|e| format!("an observer failed: {e}"))?;
        delivered.push(got);
        reader_end = reader_end.or(ended);
    }
    let run = figures::Run {
        plan,
        baseline,
        control,
        settled,
        members,
        sent,
        delivered,
        head,
        reader_end,
    };
    Ok(figures::of(&run))
}

/// One crowd joins as fast as it may, then (once every member knows everyone, or at once for
/// the control) leaves all at once.
async fn storm(stage: &Stage<'_>, crowd: Crowd) -> Storm {
    let n = stage.plan.presence_members;
    let shared = Shared {
        crowd,
        channel: stage.channel.clone(),
        roll: stage.roll.clone(),
        complete: Arc::new(AtomicUsize::new(0)),
        deadline: stage.deadline,
    };
    let (close, closing) = watch::channel(false);
    let cpu_before = fanout::cpu_now(stage.setup);
    let start = client::micros();
    let started = Instant::now();
    let port = stage.setup.hub_port;
    let opened: Vec<Result<JoinHandle<Seen>, String>> = stream::iter(stage.tokens.iter())
        .map(|token| {
            let (shared, closing) = (shared.clone(), closing.clone());
            async move {
                if started.elapsed() > STORM_WAIT {
                    return Err("not tried: the storm was over its time".to_string());
                }
                let ws = WsSub::open_member(port, &shared.channel, token, crowd.presence()).await?;
                Ok(tokio::spawn(member::follow(ws, shared, closing)))
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let open = client::micros();
    let (mut tasks, mut failed) = (Vec::new(), Vec::new());
    for o in opened {
        match o {
            Ok(task) => tasks.push(task),
            Err(why) => failed.push(why),
        }
    }
    while crowd.presence()
        && shared.complete.load(Ordering::SeqCst) < n
        && started.elapsed() < STORM_WAIT
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let over = client::micros();
    let cpu_after = fanout::cpu_now(stage.setup);

    let leave = client::micros();
    let _ = close.send(true);
    let empty = await_empty(stage, crowd).await;
    let until = Instant::now() + CLOSING_WAIT;
    let mut seen = Vec::with_capacity(tasks.len());
    for mut task in tasks {
        match tokio::time::timeout_at(until, &mut task).await {
            Ok(Ok(s)) => seen.push(s),
            Ok(Err(e)) => failed.push(format!("a connection's task failed: {e}")),
            Err(_) => {
                task.abort();
                failed.push("a connection's task did not end after its close".into());
            }
        }
    }
    let complete: Vec<u64> = seen.iter().filter_map(|s| s.complete_at).collect();
    let end = match crowd {
        Crowd::Plain => open,
        Crowd::Members if complete.len() == n => complete.iter().copied().max().unwrap_or(over),
        Crowd::Members => over,
    };
    Storm {
        start,
        open,
        end,
        knew_all: complete.len(),
        cpu: StormCpu {
            before: cpu_before,
            after: cpu_after,
        },
        cpu_us: over.saturating_sub(start),
        leave,
        empty,
        seen,
        failed,
    }
}

/// Asks the channel until it counts none of the crowd: when it first did (`client::micros()`),
/// or the last count after `LEAVE_WAIT`.
async fn await_empty(stage: &Stage<'_>, crowd: Crowd) -> Result<u64, Option<u64>> {
    let (base, c) = (&stage.setup.hub, &*stage.channel);
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < LEAVE_WAIT {
        let count = match crowd {
            // The observers stay.
            Crowd::Plain => client::counts(base, c)
                .await
                .map(|(_, ws)| ws.saturating_sub(OBSERVERS as u64)),
            Crowd::Members => client::presence_count(base, c).await,
        };
        if let Ok(count) = count {
            if count == 0 {
                return Ok(client::micros());
            }
            last = Some(count);
        }
        tokio::time::sleep(ASK_EVERY).await;
    }
    Err(last)
}

/// Waits until an observer has read an event sent `SETTLE` from now (bounded by
/// `SETTLE_WAIT`); when it had, or `None`.
async fn settle(read_up_to: &AtomicU64) -> Option<u64> {
    let want = client::micros() + SETTLE.as_micros() as u64;
    let started = Instant::now();
    while started.elapsed() < SETTLE_WAIT {
        if read_up_to.load(Ordering::SeqCst) >= want {
            return Some(client::micros());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
