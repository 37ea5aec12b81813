//! Past the open-file limit, for the idle scenario (issue 18): what `scripts/serve.mjs`'s
//! ready line says of its connection front (`Front`), and, with the front's stream cap held,
//! more streams and then a flood of connections past what the front has files for
//! (`past_limit`): how many were refused, whether `/healthz` answered after, and whether
//! workerd restarted. Its figures are the idle scenario's.

use std::time::{Duration, Instant};

use futures::future::join_all;
use futures::stream::{self, StreamExt};
use tokio::net::TcpStream;

use super::{Plan, Setup};
use crate::client;
use crate::procfs;
use crate::runtime::Runtime;
use crate::stats::{Figures, Target, Unit};
use crate::streams::{Kind, Sub};

const SCENARIO: &str = "idle";
/// Streams tried past the cap, and how many at once.
const PAST_STREAMS: usize = 200;
const CONCURRENCY: usize = 100;
/// Raw connections held open at once (more than the front has files left for), each connect
/// and each step bounded in time.
const PAST_FLOOD: usize = 3000;
const PAST_CONNECT: Duration = Duration::from_secs(1);
const PAST_STEP: Duration = Duration::from_secs(30);
/// fds we keep free of our own, as the idle scenario does.
const OWN_FD_RESERVE: u64 = 300;
/// New connections tried for /healthz once the flood is gone, and the pause between them.
const PAST_HEALTHZ_TRIES: u32 = 20;
const PAST_HEALTHZ_PAUSE: Duration = Duration::from_millis(250);
/// The most `past_limit` takes, for the idle scenario's readers to wait for.
pub(super) const PAST_BUDGET: Duration = Duration::from_secs(90);

/// What `scripts/serve.mjs`'s ready line says about its connection front, if it has one.
pub(super) struct Front {
    pub(super) streams: u64,
    pub(super) reserve: u64,
    workerd_pid: u32,
}

impl Front {
    pub(super) fn from_log(log: &str) -> Option<Front> {
        let line = log
            .lines()
            .rev()
            .find(|l| l.starts_with("edgehub: ready on"))?;
        let number_after = |what: &str| -> Option<u64> {
            let rest = line.get(line.find(what)? + what.len()..)?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        Some(Front {
            streams: number_after("front: at most ")?,
            reserve: number_after(" streams + ")?,
            workerd_pid: u32::try_from(number_after("workerd pid ")?).ok()?,
        })
    }
}

/// How the connections past the front's caps fared.
#[derive(Debug, Default)]
pub(super) struct PastLimit {
    streams_tried: usize,
    /// Streams answered 503, and streams taken (none should be).
    streams_503: usize,
    streams_taken: usize,
    flood_tried: usize,
    flood_503: usize,
    /// Closed or reset unanswered: the front out of files (libuv accepts and closes them).
    flood_closed: usize,
    /// Held unanswered in a reserve slot, waiting for a request that never comes.
    flood_waiting: usize,
    /// Anything else: none should be.
    flood_other: usize,
    /// Connects that failed or timed out.
    failed: usize,
    /// /healthz on new connections while the flood was held.
    healthz_during: Vec<u16>,
    healthz_after: bool,
    restarts: usize,
    workerd_alive: bool,
    took: Duration,
}

impl PastLimit {
    fn tried(&self) -> usize {
        self.streams_tried + self.flood_tried
    }

    fn refused(&self) -> usize {
        self.streams_503 + self.flood_503 + self.flood_closed + self.failed
    }

    pub(super) fn report(&self, kind: Kind, f: &mut Figures) {
        let (k, l) = (kind.name(), kind.label());
        let id = |q: &str| format!("idle.{k}.past_limit.{q}");
        f.add(
            SCENARIO,
            &id("tried"),
            &format!("{l}: past the open-file limit: connections tried past the caps"),
            Unit::Count,
            None,
            self.tried() as f64,
        );
        f.add(
            SCENARIO,
            &id("refused"),
            &format!("{l}: … refused (503, or closed unanswered)"),
            Unit::Count,
            None,
            self.refused() as f64,
        );
        f.add(
            SCENARIO,
            &id("healthz_after"),
            &format!("{l}: … /healthz answered on a new connection after"),
            Unit::YesNo,
            Some(Target::AtLeast(1.0)),
            if self.healthz_after { 1.0 } else { 0.0 },
        );
        f.add(
            SCENARIO,
            &id("restarts"),
            &format!("{l}: … workerd restarts"),
            Unit::Count,
            Some(Target::AtMost(0.0)),
            self.restarts as f64 + if self.workerd_alive { 0.0 } else { 1.0 },
        );
        f.note(format!(
            "idle {l}, past the open-file limit ({:.1} s): with the front's cap held, \
             {} {l} tried: {} answered 503, {} taken; then {} connections held open at once: {} \
             answered 503, {} closed unanswered (the front out of files), {} held unanswered in \
             the reserve, {} answered otherwise; {} connects failed; /healthz on new connections meanwhile: {:?}; after \
             they closed: {}; workerd restarted {} times, still the same process: {}; the \
             publish after it is the \"got a publish\" row",
            self.took.as_secs_f64(),
            self.streams_tried,
            self.streams_503,
            self.streams_taken,
            self.flood_tried,
            self.flood_503,
            self.flood_closed,
            self.flood_waiting,
            self.flood_other,
            self.failed,
            self.healthz_during,
            if self.healthz_after { "200" } else { "not answered" },
            self.restarts,
            if self.workerd_alive { "yes" } else { "no" },
        ));
    }
}

/// Past the open-file limit, with the front's stream cap held: `PAST_STREAMS` more streams of
/// `kind`, then `PAST_FLOOD` raw connections held open at once (as many as our own fds allow),
/// /healthz on new connections meanwhile and once they are gone, and whether workerd restarted.
pub(super) async fn past_limit(
    plan: &Plan,
    setup: &Setup,
    kind: Kind,
    c: &str,
    front: &Front,
    hub: &Runtime,
) -> PastLimit {
    let began = Instant::now();
    let mut past = PastLimit::default();
    let (base, port) = (setup.hub.as_str(), setup.hub_port);
    let opened: Vec<Result<Sub, String>> = stream::iter(0..PAST_STREAMS)
        .map(|_| async move {
            match tokio::time::timeout(PAST_STEP, Sub::open(kind, base, port, c, None)).await {
                Ok(r) => r,
                Err(_) => Err("no answer".into()),
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    past.streams_tried = opened.len();
    for r in &opened {
        match r {
            Ok(_) => past.streams_taken += 1,
            Err(e) if e.contains("503") => past.streams_503 += 1,
            Err(_) => past.failed += 1,
        }
    }
    drop(opened);

    let room = plan
        .fd_limit
        .saturating_sub(procfs::own_fd_count() + OWN_FD_RESERVE) as usize;
    let flood = open_flood(port, PAST_FLOOD.min(room)).await;
    past.flood_tried = flood.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for read in join_all(flood.iter().map(first_bytes)).await {
        match read {
            None => past.failed += 1,
            Some(None) => past.flood_waiting += 1,
            Some(Some(b)) if b.is_empty() => past.flood_closed += 1,
            Some(Some(b)) if b.starts_with(b"HTTP/1.1 503 ") => past.flood_503 += 1,
            Some(Some(_)) => past.flood_other += 1,
        }
    }
    for _ in 0..5 {
        past.healthz_during.push(healthz(base).await);
    }
    drop(flood);
    for _ in 0..PAST_HEALTHZ_TRIES {
        if healthz(base).await == 200 {
            past.healthz_after = true;
            break;
        }
        tokio::time::sleep(PAST_HEALTHZ_PAUSE).await;
    }
    let log = hub.log_tail(usize::MAX);
    past.restarts = log.matches("workerd restarted").count();
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", front.workerd_pid));
    past.workerd_alive = comm.is_ok_and(|c| c.trim() == "workerd");
    past.took = began.elapsed();
    past
}

/// `n` raw connections to the hub's port, opened one after the other and held (None: failed).
async fn open_flood(port: u16, n: usize) -> Vec<Option<TcpStream>> {
    let began = Instant::now();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if began.elapsed() > PAST_STEP {
            break;
        }
        let s = tokio::time::timeout(PAST_CONNECT, TcpStream::connect(("127.0.0.1", port))).await;
        out.push(s.ok().and_then(Result::ok));
    }
    out
}

/// What a connection that asked nothing got: None if it never connected, Some(None) if nothing
/// came yet, Some(bytes) otherwise (empty: closed or reset unanswered).
async fn first_bytes(s: &Option<TcpStream>) -> Option<Option<Vec<u8>>> {
    let s = s.as_ref()?;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(300), async {
        s.readable().await?;
        s.try_read(&mut buf)
    })
    .await;
    Some(match read {
        Err(_) => None,
        Ok(Ok(n)) => Some(buf.get(..n).unwrap_or_default().to_vec()),
        Ok(Err(_)) => Some(Vec::new()),
    })
}

/// GET /healthz on a new connection: its status, or 0 with no answer.
async fn healthz(base: &str) -> u16 {
    let req = client::streams()
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(5));
    req.send().await.map_or(0, |r| r.status().as_u16())
}
