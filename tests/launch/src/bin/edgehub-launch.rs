//! The launcher for callers that are not Rust (the browser tests, `tests/browser/hub.mjs`): one
//! hub, started and stopped by this crate's rules (watchdog, process group, config copy,
//! migrations, readiness, fatal log lines), so they live in one place. Driven by lines on stdin,
//! each answered by one JSON line on stdout:
//!
//! - at start: `{"base","port","dir","log"}`, or `{"error"}` and exit 1;
//! - `stop`: stops the hub, answers `{"stopped":true}`;
//! - `start`: starts a stopped hub on the same port, answers as at start;
//! - `keep`: keep the persist dir when this ends.
//!
//! End of stdin (the caller closed it, or died) stops the hub and removes its persist dir unless
//! kept. Usage: `edgehub-launch [--under DIR] [--label WORD] [--var NAME=VALUE]…`.

use edgehub_launch::{Options, Runtime, HUB};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let opts = match options(std::env::args().skip(1).collect()) {
        Ok(opts) => opts,
        Err(why) => return fail(&why),
    };
    let mut runtime = match Runtime::start(opts).await {
        Ok(runtime) => runtime,
        Err(why) => return fail(&why),
    };
    started(&runtime);
    let mut keep = false;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match line.trim() {
            "stop" => {
                runtime.stop().await;
                say(json!({"stopped": true}));
            }
            "start" => match runtime.start_again().await {
                Ok(_) => started(&runtime),
                Err(why) => say(json!({"error": why})),
            },
            "keep" => {
                keep = true;
                say(json!({"keep": true}));
            }
            other => say(json!({"error": format!("unknown command {other:?}")})),
        }
    }
    runtime.stop().await;
    if !keep {
        runtime.remove_dir();
    }
}

fn options(args: Vec<String>) -> Result<Options, String> {
    let mut opts = Options {
        worker: HUB,
        vars: Vec::new(),
        under: "launch-tmp",
        label: "hub",
        keep_failed: true,
        serve_args: Vec::new(),
        fd_limit: None,
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            // The names are leaked once per process: a handful of short strings.
            "--under" => opts.under = Box::leak(value.into_boxed_str()),
            "--label" => opts.label = Box::leak(value.into_boxed_str()),
            "--var" => {
                let (name, value) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--var {value:?}: want NAME=VALUE"))?;
                opts.vars.push((name.to_string(), value.to_string()));
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(opts)
}

fn started(runtime: &Runtime) {
    let log = runtime.dir().join("wrangler.log");
    say(json!({
        "base": runtime.base(),
        "port": runtime.port(),
        "dir": runtime.dir(),
        "log": log,
    }));
}

fn say(answer: serde_json::Value) {
    println!("{answer}");
}

fn fail(why: &str) {
    say(json!({"error": why}));
    std::process::exit(1);
}
