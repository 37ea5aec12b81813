//! End-to-end tests: the real runtime (`wrangler dev`, workerd) driven over real sockets.
//! One hub is started for the suite and shared by every test that does not need its own (each
//! uses its own channels, so they may run in parallel); durability tests start their own.
//! Run with `make build` done first: `cargo test --test e2e [-- <filter>] [--test-threads N]`.
//! Reports that assert nothing about time are ignored unless asked for: `-- --ignored latency`.

// A test reports failure by panicking: assertions, `expect`, `panic!` and indexing into answers
// are its vocabulary. clippy.toml's allow-*-in-tests covers `#[test]` functions only, not this
// `harness = false` target, so the crate's no-panic lints (meant for request paths) stop here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod api;
mod auth;
mod channels;
mod crash;
mod durability;
mod fd_limit;
mod harness;
mod idempotency;
mod lanes;
mod live;
mod live_auth;
mod load;
mod mercure;
mod mirror;
mod poll;
mod poll_cache;
mod presence;
mod publish;
mod retention;
mod slow;
mod sse;
mod sse_client;
mod sse_parser;
mod streams;
mod tap;
mod topics;
mod ws;
mod ws_client;

// Security and hostile input (issue 4).
mod cors;
mod docs_examples;
mod hostile;
mod hostile_input;
mod limits;
mod schemathesis;
mod security;
mod tokens;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};

use crate::api::{rt, Api};
use crate::harness::{Hub, HubOptions};

/// No single test may run longer than this, whatever it waits for.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(600);

pub type TestFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One test: its name, whether it uses the suite's shared hub, whether it only runs when asked
/// for (`-- --ignored`), and its body.
pub struct Case {
    pub name: &'static str,
    pub shared_hub: bool,
    pub ignored: bool,
    pub run: fn(Api) -> TestFuture,
}

/// A test that runs against the suite's shared hub.
#[macro_export]
macro_rules! case {
    ($f:ident) => {
        $crate::Case {
            name: stringify!($f),
            shared_hub: true,
            ignored: false,
            run: |api| Box::pin($f(api)),
        }
    };
}

/// A shared-hub test that runs only when asked for (`-- --ignored`): reports, not checks.
#[macro_export]
macro_rules! case_ignored {
    ($f:ident) => {
        $crate::Case {
            name: stringify!($f),
            shared_hub: true,
            ignored: true,
            run: |api| Box::pin($f(api)),
        }
    };
}

/// A test that needs no hub at all (the test clients' own unit tests).
#[macro_export]
macro_rules! case_no_hub {
    ($f:ident) => {
        $crate::Case {
            name: stringify!($f),
            shared_hub: false,
            ignored: false,
            run: |api| Box::pin($f(api)),
        }
    };
}

/// A test that starts (and stops) its own hub.
#[macro_export]
macro_rules! case_own_hub {
    ($f:ident) => {
        $crate::Case {
            name: stringify!($f),
            shared_hub: false,
            ignored: false,
            run: |api| Box::pin($f(api)),
        }
    };
}

fn main() {
    let args = Arguments::from_args();
    let cases: Vec<Case> = [
        publish::cases(),
        poll::cases(),
        poll_cache::cases(),
        auth::cases(),
        durability::cases(),
        sse_parser::cases(),
        sse::cases(),
        tap::cases(),
        ws::cases(),
        live::cases(),
        live_auth::cases(),
        load::cases(),
        // Durability (issue 5): idempotency, retention, mirror healing, crash, slow consumers,
        // many channels.
        idempotency::cases(),
        retention::cases(),
        mirror::cases(),
        crash::cases(),
        slow::cases(),
        channels::cases(),
        // Many channels on one connection (issue 14).
        streams::cases(),
        lanes::cases(),
        // Presence (issue 15).
        presence::cases(),
        topics::cases(),
        // The Mercure face (/.well-known/mercure).
        mercure::cases(),
        // Security and hostile input (issue 4): auth matrix, minting, CORS, limits, hostile
        // WebSocket frames, schemathesis against docs/openapi.yaml, the docs' curl examples.
        security::cases(),
        tokens::cases(),
        cors::cases(),
        limits::cases(),
        fd_limit::cases(),
        hostile::cases(),
        hostile_input::cases(),
        schemathesis::cases(),
        docs_examples::cases(),
    ]
    .into_iter()
    .flatten()
    .collect();

    let selected = |c: &Case| {
        let trial = Trial::test(c.name, || Ok(())).with_ignored_flag(c.ignored);
        !args.is_ignored(&trial) && !args.is_filtered_out(&trial)
    };
    let need_hub = !args.list && cases.iter().any(|c| c.shared_hub && selected(c));
    let started = Instant::now();
    let mut hub = None;
    if need_hub {
        match rt().block_on(Hub::start(HubOptions::shared())) {
            Ok(h) => {
                eprintln!(
                    "e2e: hub up at {} after {:.1?}",
                    h.base(),
                    started.elapsed()
                );
                hub = Some(h);
            }
            Err(why) => {
                eprintln!("e2e: the shared hub did not start: {why}");
                std::process::exit(101);
            }
        }
    }
    let base = hub
        .as_ref()
        .map(|h| h.base().to_string())
        .unwrap_or_default();

    let trials = cases
        .into_iter()
        .map(|case| {
            let api = Api::new(&base);
            Trial::test(case.name, move || run(case.run, api)).with_ignored_flag(case.ignored)
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);

    if let Some(mut h) = hub {
        if conclusion.has_failed() {
            eprintln!("e2e: shared hub log (tail):\n{}", h.log_tail());
            rt().block_on(h.stop());
        } else {
            rt().block_on(h.cleanup());
        }
    }
    if need_hub {
        eprintln!("e2e: suite wall time {:.1?}", started.elapsed());
    }
    conclusion.exit();
}

fn run(body: fn(Api) -> TestFuture, api: Api) -> Result<(), Failed> {
    match rt().block_on(async { tokio::time::timeout(TRIAL_TIMEOUT, body(api)).await }) {
        Ok(()) => Ok(()),
        Err(_) => Err(format!("timed out after {TRIAL_TIMEOUT:?}").into()),
    }
}
