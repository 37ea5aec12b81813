//! Scenario 3: idle connections. For WebSockets, then for SSE streams, each kind on a hub of
//! its own, freshly started (so one kind's memory, freed late, cannot hide in the other's
//! baseline): open a few warm-up connections, read the baseline, open as many more as wanted
//! (fewer when the fd limit cannot hold them), let them sit, and read the growth of the hub's
//! runtime memory (PSS of its workerd and node processes) per connection; check that the
//! channel's object hibernates (its `instance` changes across the idle time) while they stay
//! connected, and that every one of them gets a publish after it. Behind `scripts/serve.mjs`'s
//! front, whose stream cap the open-file limit sets, a pass that reaches the cap also goes past
//! it (`past_limit`) before that publish: more streams, then a flood of connections. With
//! `--nchan`, then the same for SSE streams on nchan (the PSS per stream of an nginx started for
//! the pass; nothing there hibernates). Last, the floor: the same SSE streams held open by the no-op Worker
//! (`bench/noop/`, a bare `ReadableStream` with a heartbeat timer), on a fresh runtime of its
//! own: what one idle stream costs this runtime before any of the hub's code.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use tokio::task::JoinHandle;

use super::limit::{past_limit, Front, PAST_BUDGET};
use super::{Plan, Setup};
use crate::client;
use crate::nchan::{self, Endpoint, Nchan};
use crate::procfs::{self, Memory, ROLES};
use crate::runtime::{self, Runtime};
use crate::stats::{ratio, Figures, Target, Unit};
use crate::streams::{Kind, Next, Sub};

const SCENARIO: &str = "idle";
const CONNECT_CONCURRENCY: usize = 100;
const CONNECT_BUDGET: Duration = Duration::from_secs(240);
/// Connections opened between two checks of the fd budget.
const CONNECT_STEP: usize = 500;
const COUNTS_WAIT: Duration = Duration::from_secs(60);
/// Connections opened before the baseline: the channel's object, its first subscribers and
/// the code paths they take are not what one more connection costs.
const WARM_UP: usize = 20;
/// Time for the runtime to settle before memory is read.
const SETTLE: Duration = Duration::from_secs(3);
/// The most the publish after the idle time may take to reach everyone.
const DELIVERY_WAIT: Duration = Duration::from_secs(60);
/// A second, longer idle time if the object had not been evicted after the first.
const SECOND_IDLE: Duration = Duration::from_secs(20);
/// fds each process keeps free beyond what the connections are expected to take.
const FD_RESERVE: u64 = 300;

pub async fn run(plan: &Plan, setup: &Setup) -> Result<Figures, String> {
    let mut f = Figures::default();
    for kind in [Kind::Ws, Kind::Sse] {
        let mut hub = runtime::start_hub(setup.keep).await?;
        let result = one_kind(plan, &setup.with_hub(&hub), &hub, kind, &mut f).await;
        hub.stop().await;
        if !setup.keep {
            hub.remove_dir();
        }
        result?;
    }
    match noop_sse(plan, setup, &mut f).await {
        Ok(per_stream) => {
            let hub = last_value(&f, "idle.sse.kib_per_connection");
            f.add(
                SCENARIO,
                "idle.sse.kib_per_connection.vs_noop",
                "SSE: memory per idle stream, edgehub ÷ the no-op Worker's bare stream",
                Unit::Ratio,
                None,
                ratio(hub, per_stream),
            );
        }
        Err(why) => f.note(format!("idle, no-op floor: the pass failed: {why}")),
    }
    if setup.nchan.is_some() {
        let began = Instant::now();
        let pass = fresh_nchan_sse(plan, setup, &mut f).await;
        eprintln!("    (nchan pass: {:.1?})", began.elapsed());
        match pass {
            Ok(per_stream) => {
                let hub = last_value(&f, "idle.sse.kib_per_connection");
                f.add(
                    SCENARIO,
                    "idle.sse.kib_per_connection.vs_nchan",
                    "SSE: memory per idle stream, edgehub ÷ nchan",
                    Unit::Ratio,
                    None,
                    ratio(hub, per_stream),
                );
            }
            Err(why) => f.note(format!("idle, nchan: the pass failed: {why}")),
        }
    }
    Ok(f)
}

async fn one_kind(
    plan: &Plan,
    setup: &Setup,
    hub: &Runtime,
    kind: Kind,
    f: &mut Figures,
) -> Result<(), String> {
    let c = client::channel(&format!("idle-{}", kind.name()));
    // Behind the front, no more than its cap: the connections past it are `past_limit`'s.
    let front = Front::from_log(&hub.log_tail(usize::MAX));
    let wanted = match &front {
        Some(front) => plan
            .idle_connections
            .min((front.streams as usize).saturating_sub(WARM_UP)),
        None => plan.idle_connections,
    };
    let procs = procfs::group(setup.hub_pgid, setup.hub_port);
    let fds_cold: Vec<u64> = procs.iter().map(|p| procfs::fd_count(p.pid)).collect();
    let server = (setup.hub.as_str(), setup.hub_port);
    let warm = connect(WARM_UP, kind, server, &c).await;
    tokio::time::sleep(SETTLE).await;
    let fds_warm: Vec<u64> = procs.iter().map(|p| procfs::fd_count(p.pid)).collect();
    let before = memory(setup);

    let connecting = Instant::now();
    let budget = FdBudget::new(plan, procs, &fds_cold, &fds_warm, warm.len());
    let (mut subs, fd_note) = connect_within(wanted, server, kind, &c, budget).await;
    let connect_time = connecting.elapsed();
    let connected = subs.len() as u64;
    if connected == 0 {
        return Err(format!("no {} could connect", kind.label()));
    }
    let held = connected + warm.len() as u64;
    subs.extend(warm);
    let want = match kind {
        Kind::Sse => (held, 0),
        Kind::Ws => (0, held),
    };
    // Readers from the start, as a real client reads (SSE heartbeats included).
    let deadline = Instant::now()
        + 2 * plan.idle_wait
        + SECOND_IDLE
        + DELIVERY_WAIT
        + COUNTS_WAIT
        + PAST_BUDGET;
    let readers: Vec<JoinHandle<bool>> = subs
        .into_iter()
        .map(|sub| tokio::spawn(await_first_event(sub, deadline)))
        .collect();
    let counts = client::await_counts(&setup.hub, &c, want, COUNTS_WAIT).await;
    tokio::time::sleep(SETTLE).await;
    let awake = memory(setup);

    // The object's instance, then nothing reaches the object for the idle time.
    let first = instance(setup, &c).await?;
    tokio::time::sleep(plan.idle_wait).await;
    let mut idle = memory(setup);
    let mut idle_for = plan.idle_wait;
    let mut now = instance(setup, &c).await?;
    if now == first {
        tokio::time::sleep(SECOND_IDLE).await;
        idle = memory(setup);
        idle_for = SECOND_IDLE;
        now = instance(setup, &c).await?;
    }
    let hibernated = now != first;
    let still = client::counts(&setup.hub, &c).await?;

    // Past the limit, with every stream the front takes held; the publish below then says
    // whether they were all still served.
    let past = match &front {
        Some(front) if held >= front.streams => {
            Some(past_limit(plan, setup, kind, &c, front, hub).await)
        }
        _ => None,
    };

    client::publish(&setup.hub, &c, br#"{"data":{"after":"idle"}}"#.to_vec()).await?;
    let until = tokio::time::Instant::now() + DELIVERY_WAIT;
    let mut got = 0u64;
    for mut r in readers {
        match tokio::time::timeout_at(until, &mut r).await {
            Ok(Ok(true)) => got += 1,
            Ok(_) => {}
            Err(_) => r.abort(),
        }
    }

    let per = |m: &Memory, b: &Memory, role: Option<&str>| {
        let (now, then) = match role {
            Some(r) => (m.role(r), b.role(r)),
            None => (m.total_kib, b.total_kib),
        };
        (now as f64 - then as f64) / connected as f64
    };
    let (k, l) = (kind.name(), kind.label());
    let id = |q: &str| format!("idle.{k}.{q}");
    let target = (kind == Kind::Ws).then_some(Target::AtMost(10.0));
    f.add(
        SCENARIO,
        &id("connections"),
        &format!("{l}: connections measured (after the warm-up)"),
        Unit::Count,
        None,
        connected as f64,
    );
    f.add(
        SCENARIO,
        &id("kib_per_connection"),
        &format!("{l}: runtime memory per idle connection"),
        Unit::Kib,
        target,
        per(&idle, &before, None),
    );
    f.add(
        SCENARIO,
        &id("worker_kib"),
        &format!("{l}: … of which workerd (worker)"),
        Unit::Kib,
        None,
        per(&idle, &before, Some(ROLES[0])),
    );
    f.add(
        SCENARIO,
        &id("proxy_kib"),
        &format!("{l}: … of which workerd (proxy)"),
        Unit::Kib,
        None,
        per(&idle, &before, Some(ROLES[1])),
    );
    f.add(
        SCENARIO,
        &id("node_kib"),
        &format!("{l}: … of which node (serve.mjs's front, or wrangler)"),
        Unit::Kib,
        None,
        per(&idle, &before, Some(ROLES[2])),
    );
    f.add(
        SCENARIO,
        &id("awake_kib"),
        &format!("{l}: runtime memory per connection, just connected"),
        Unit::Kib,
        None,
        per(&awake, &before, None),
    );
    f.add(
        SCENARIO,
        &id("hibernated"),
        &format!("{l}: channel object hibernated while idle"),
        Unit::YesNo,
        Some(Target::AtLeast(1.0)),
        if hibernated { 1.0 } else { 0.0 },
    );
    f.add(
        SCENARIO,
        &id("delivered"),
        &format!("{l}: got a publish after the idle time"),
        Unit::Percent,
        Some(Target::AtLeast(100.0)),
        100.0 * got as f64 / held as f64,
    );
    f.add(
        SCENARIO,
        &id("connects_per_s"),
        &format!("{l}: connections opened per second"),
        Unit::PerSec,
        None,
        connected as f64 / connect_time.as_secs_f64().max(1e-3),
    );

    f.note(format!(
        "idle {l}: on a fresh hub; {WARM_UP} warm-up connections, then {connected} of {wanted} \
         wanted (fd limit {}; {}{fd_note}); the channel counted {counts:?} (sse, ws) when \
         connected and {still:?} after {} s idle; memory per connection = (PSS after the idle \
         time − PSS after the warm-up) / connections",
        plan.fd_limit,
        front.as_ref().map_or_else(
            || "no front".to_string(),
            |fr| format!(
                "the front's cap {} streams + {} others; ",
                fr.streams, fr.reserve
            )
        ),
        idle_for.as_secs(),
    ));
    match (past, &front) {
        (Some(past), _) => past.report(kind, f),
        (None, Some(front)) => f.note(format!(
            "idle {l}, past the open-file limit: not measured, {held} streams held under the \
             front's cap of {} (`--idle-connections` ≥ the cap measures it)",
            front.streams
        )),
        (None, None) => f.note(format!(
            "idle {l}, past the open-file limit: not measured, no front (EDGEHUB_RUNTIME or \
             EDGEHUB_SERVE_ARGS)"
        )),
    }
    Ok(())
}

/// fds per connection of each of the hub's processes, and how many more connections each can
/// take under its fd limit. wrangler dev's proxy workerd holds two sockets per connection and
/// two pipes more per WebSocket; the worker workerd and the bench hold one socket each.
struct FdBudget {
    procs: Vec<procfs::Proc>,
    limits: Vec<u64>,
    /// Open fds after the warm-up, the base the estimates are taken from.
    base: Vec<u64>,
    per: Vec<f64>,
    own_limit: u64,
}

impl FdBudget {
    /// First estimates from the warm-up connections (high: they include the channel's setup).
    fn new(
        plan: &Plan,
        procs: Vec<procfs::Proc>,
        cold: &[u64],
        warm: &[u64],
        warmed: usize,
    ) -> FdBudget {
        let warmed = warmed.max(1) as f64;
        let per = cold
            .iter()
            .zip(warm)
            .map(|(c, w)| w.saturating_sub(*c) as f64 / warmed)
            .collect();
        let limits = procs
            .iter()
            .map(|p| procfs::fd_limit(p.pid).unwrap_or(plan.fd_limit))
            .collect();
        FdBudget {
            procs,
            limits,
            base: warm.to_vec(),
            per,
            own_limit: plan.fd_limit,
        }
    }

    /// Re-estimates from the fds open now with `held` connections past the warm-up, and
    /// returns how many more fit in every process, each keeping `FD_RESERVE` free.
    fn room(&mut self, held: usize) -> u64 {
        let mut room = self
            .own_limit
            .saturating_sub(procfs::own_fd_count() + FD_RESERVE);
        for (i, p) in self.procs.iter().enumerate() {
            let (Some(per), Some(base), Some(limit)) =
                (self.per.get_mut(i), self.base.get(i), self.limits.get(i))
            else {
                continue;
            };
            let open = procfs::fd_count(p.pid);
            if held > 0 {
                *per = open.saturating_sub(*base) as f64 / held as f64;
            }
            if p.role.is_none() || *per < 0.05 {
                continue;
            }
            let free = limit.saturating_sub(open + FD_RESERVE) as f64;
            room = room.min((free / *per) as u64);
        }
        room
    }

    /// fds per connection by role (a role's processes summed).
    fn describe(&self) -> String {
        let mut by_role: Vec<(&str, f64)> = Vec::new();
        for (p, per) in self.procs.iter().zip(&self.per) {
            let Some(role) = p.role else { continue };
            match by_role.iter_mut().find(|(r, _)| *r == role) {
                Some((_, sum)) => *sum += per,
                None => by_role.push((role, *per)),
            }
        }
        let said: Vec<String> = by_role
            .iter()
            .map(|(r, per)| format!("{r} {per:.2}"))
            .collect();
        format!("fds per connection: {}", said.join(", "))
    }
}

/// Opens up to `wanted` connections in steps, re-checking the fd budget before each step, so no
/// process runs out of fds; says how it went.
async fn connect_within(
    wanted: usize,
    server: (&str, u16),
    kind: Kind,
    c: &str,
    mut budget: FdBudget,
) -> (Vec<Sub>, String) {
    let started = Instant::now();
    let mut subs = Vec::new();
    let mut stopped = "";
    while subs.len() < wanted {
        if started.elapsed() > CONNECT_BUDGET {
            stopped = "; stopped by the time limit";
            break;
        }
        let room = budget.room(subs.len());
        let step = (wanted - subs.len()).min(CONNECT_STEP).min(room as usize);
        if step == 0 {
            stopped = "; stopped by the fd limit";
            break;
        }
        let opened = connect(step, kind, server, c).await;
        if opened.is_empty() {
            stopped = "; stopped: no connection opened";
            break;
        }
        subs.extend(opened);
    }
    budget.room(subs.len());
    (subs, format!("{}{stopped}", budget.describe()))
}

/// `nchan_sse` on an nginx of its own, started for the pass and stopped after it, as each of
/// the hub's passes gets a fresh runtime: an nginx that held streams before keeps their memory
/// for the next ones, and its growth per stream read 0 KiB in a second and third run.
async fn fresh_nchan_sse(plan: &Plan, setup: &Setup, f: &mut Figures) -> Result<f64, String> {
    let mut fresh = Nchan::start(plan.fd_limit).await?;
    let pass = nchan_sse(plan, &fresh.endpoint(), f).await;
    fresh.stop().await;
    if !setup.keep {
        fresh.remove_dir();
    }
    pass
}

/// nchan's idle SSE streams, as `one_kind` does the hub's: warm-up, baseline, connections in
/// steps within the fd budget (ours and nginx's), readers, `idle_wait`, one publish that all
/// must get. Memory is the growth of the PSS of nginx's processes (master and worker) per
/// stream. Returns that figure.
async fn nchan_sse(plan: &Plan, n: &Endpoint, f: &mut Figures) -> Result<f64, String> {
    let c = client::channel("idle-nchan");
    let server = (n.base.as_str(), n.port);
    let procs: Vec<procfs::Proc> = procfs::group_pids(n.pgid)
        .into_iter()
        .map(|pid| procfs::Proc {
            pid,
            role: Some("nginx"),
        })
        .collect();
    let fds_cold: Vec<u64> = procs.iter().map(|p| procfs::fd_count(p.pid)).collect();
    let warm = connect(WARM_UP, Kind::Sse, server, &c).await;
    tokio::time::sleep(SETTLE).await;
    let fds_warm: Vec<u64> = procs.iter().map(|p| procfs::fd_count(p.pid)).collect();
    let before = procfs::group_pss_kib(n.pgid);

    let connecting = Instant::now();
    let budget = FdBudget::new(plan, procs, &fds_cold, &fds_warm, warm.len());
    let (mut subs, fd_note) =
        connect_within(plan.idle_connections, server, Kind::Sse, &c, budget).await;
    let connect_time = connecting.elapsed();
    let connected = subs.len() as u64;
    if connected == 0 {
        return Err("no SSE stream could connect to nchan".into());
    }
    let held = connected + warm.len() as u64;
    subs.extend(warm);
    let deadline = Instant::now() + plan.idle_wait + DELIVERY_WAIT + COUNTS_WAIT;
    let readers: Vec<JoinHandle<bool>> = subs
        .into_iter()
        .map(|sub| tokio::spawn(await_first_event(sub, deadline)))
        .collect();
    let counted = nchan::await_subscribers(&n.base, &c, held, COUNTS_WAIT).await;
    tokio::time::sleep(SETTLE).await;
    let awake = procfs::group_pss_kib(n.pgid);
    tokio::time::sleep(plan.idle_wait).await;
    let idle = procfs::group_pss_kib(n.pgid);

    nchan::publish(&n.base, &c, br#"{"after":"idle"}"#.to_vec()).await?;
    let until = tokio::time::Instant::now() + DELIVERY_WAIT;
    let mut got = 0u64;
    for mut r in readers {
        match tokio::time::timeout_at(until, &mut r).await {
            Ok(Ok(true)) => got += 1,
            Ok(_) => {}
            Err(_) => r.abort(),
        }
    }

    let per = |now: u64| (now as f64 - before as f64) / connected as f64;
    let per_stream = per(idle);
    let id = |q: &str| format!("idle.nchan.sse.{q}");
    for (q, label, unit, value) in [
        (
            "connections",
            "connections measured (after the warm-up)",
            Unit::Count,
            connected as f64,
        ),
        (
            "kib_per_connection",
            "nginx memory per idle stream",
            Unit::Kib,
            per_stream,
        ),
        (
            "awake_kib",
            "nginx memory per stream, just connected",
            Unit::Kib,
            per(awake),
        ),
        (
            "delivered",
            "got a publish after the idle time",
            Unit::Percent,
            100.0 * got as f64 / held as f64,
        ),
        (
            "connects_per_s",
            "connections opened per second",
            Unit::PerSec,
            connected as f64 / connect_time.as_secs_f64().max(1e-3),
        ),
    ] {
        f.add(
            SCENARIO,
            &id(q),
            &format!("nchan SSE: {label}"),
            unit,
            None,
            value,
        );
    }
    f.note(format!(
        "idle, nchan: SSE streams on nchan (`GET /sse/{{c}}`, docs/benchmarks.md#nchan) after \
         the hub's passes, on an nginx started for the pass; {WARM_UP} warm-up streams, then {connected} of {} wanted (fd limit \
         {}; {fd_note}); nchan counted {counted} subscribers once connected; memory per stream \
         = (PSS of nginx's master and worker after {} s idle − PSS after the warm-up) / \
         streams; \"edgehub ÷ nchan\" is the hub's SSE figure over nchan's, per run",
        plan.idle_connections,
        plan.fd_limit,
        plan.idle_wait.as_secs(),
    ));
    Ok(per_stream)
}

/// The last value of figure `id` so far (NaN if none).
fn last_value(f: &Figures, id: &str) -> f64 {
    f.list
        .iter()
        .find(|fig| fig.id == id)
        .and_then(|fig| fig.values.last().copied())
        .unwrap_or(f64::NAN)
}

/// The floor: idle SSE streams on the no-op Worker, on a fresh runtime started for it, as
/// `one_kind` holds the hub's (warm-up, baseline, connections within the fd budget and the
/// front's cap, readers, the idle time). Returns the runtime's memory per stream.
async fn noop_sse(plan: &Plan, setup: &Setup, f: &mut Figures) -> Result<f64, String> {
    let mut noop = runtime::start_noop(setup.keep).await?;
    let pass = noop_pass(plan, &noop, f).await;
    noop.stop().await;
    if !setup.keep {
        noop.remove_dir();
    }
    pass
}

async fn noop_pass(plan: &Plan, noop: &Runtime, f: &mut Figures) -> Result<f64, String> {
    let (port, pgid) = (noop.port(), noop.pgid().unwrap_or(0));
    let server = (noop.base(), port);
    let c = "floor";
    let front = Front::from_log(&noop.log_tail(usize::MAX));
    let wanted = match &front {
        Some(front) => plan
            .idle_connections
            .min((front.streams as usize).saturating_sub(WARM_UP)),
        None => plan.idle_connections,
    };
    let procs = procfs::group(pgid, port);
    let fds_cold: Vec<u64> = procs.iter().map(|p| procfs::fd_count(p.pid)).collect();
    let warm = connect(WARM_UP, Kind::Sse, server, c).await;
    tokio::time::sleep(SETTLE).await;
    let fds_warm: Vec<u64> = procs.iter().map(|p| procfs::fd_count(p.pid)).collect();
    let before = procfs::memory(pgid, port);
    let budget = FdBudget::new(plan, procs, &fds_cold, &fds_warm, warm.len());
    let (mut subs, fd_note) = connect_within(wanted, server, Kind::Sse, c, budget).await;
    let connected = subs.len() as u64;
    if connected == 0 {
        return Err("no stream could connect to the no-op Worker".into());
    }
    subs.extend(warm);
    // Readers, as a real client reads (heartbeats); no event ever comes.
    let deadline = Instant::now() + plan.idle_wait + 4 * SETTLE;
    let readers: Vec<JoinHandle<bool>> = subs
        .into_iter()
        .map(|sub| tokio::spawn(await_first_event(sub, deadline)))
        .collect();
    tokio::time::sleep(SETTLE).await;
    let awake = procfs::memory(pgid, port);
    tokio::time::sleep(plan.idle_wait).await;
    let idle = procfs::memory(pgid, port);
    for r in readers {
        r.abort();
    }
    let per = |now: &Memory| (now.total_kib as f64 - before.total_kib as f64) / connected as f64;
    let per_stream = per(&idle);
    for (q, label, unit, value) in [
        (
            "connections",
            "streams measured (after the warm-up)",
            Unit::Count,
            connected as f64,
        ),
        (
            "kib_per_connection",
            "runtime memory per idle bare stream",
            Unit::Kib,
            per_stream,
        ),
        (
            "awake_kib",
            "runtime memory per bare stream, just connected",
            Unit::Kib,
            per(&awake),
        ),
    ] {
        f.add(
            SCENARIO,
            &format!("idle.noop.sse.{q}"),
            &format!("no-op Worker SSE: {label}"),
            unit,
            None,
            value,
        );
    }
    f.note(format!(
        "idle, no-op floor: `GET /sse/{{c}}` on the no-op Worker (bench/noop/: a bare \
         ReadableStream, a heartbeat every 5 s), on a fresh runtime behind the same front; \
         {WARM_UP} warm-up streams, then {connected} of {wanted} wanted ({fd_note}); memory per \
         stream = (PSS of its workerd and node after {} s idle − PSS after the warm-up) / \
         streams; \"edgehub ÷ the no-op Worker\" is the hub's SSE figure over this one, per run",
        plan.idle_wait.as_secs(),
    ));
    Ok(per_stream)
}

fn memory(setup: &Setup) -> Memory {
    procfs::memory(setup.hub_pgid, setup.hub_port)
}

async fn instance(setup: &Setup, c: &str) -> Result<String, String> {
    let v = client::info(&setup.hub, c).await?;
    Ok(v["object"]["instance"].to_string())
}

/// Opens `n` connections of `kind` to `server` (base URL, port); those that fail are left out.
async fn connect(n: usize, kind: Kind, server: (&str, u16), c: &str) -> Vec<Sub> {
    let started = Instant::now();
    let (base, port) = server;
    stream::iter(0..n)
        .map(|_| async move {
            if started.elapsed() > CONNECT_BUDGET {
                return None;
            }
            Sub::open(kind, base, port, c, Some(0)).await.ok()
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .filter_map(|s| async move { s })
        .collect()
        .await
}

/// True once the subscriber got an event (the connection is dropped on return).
async fn await_first_event(mut sub: Sub, deadline: Instant) -> bool {
    loop {
        match sub.next_event(deadline.into()).await {
            Next::Event(e) if !e.gap => return true,
            Next::Event(_) => continue,
            Next::Timeout | Next::Closed(_) => return false,
        }
    }
}
