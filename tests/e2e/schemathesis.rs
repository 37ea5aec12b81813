//! The hub against its own OpenAPI document: schemathesis (PyPI, pinned) generates requests
//! for every non-streaming operation of `docs/openapi.yaml` and checks each answer against the
//! document. Zero 5xx, zero answers the document does not allow. The venv lives under `target/`
//! and is reused while it holds the pinned version.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::api::{admin, Api};
use crate::harness::root;
use crate::{case, Case};

pub fn cases() -> Vec<Case> {
    vec![case!(
        schemathesis_finds_no_answer_that_breaks_the_openapi_document
    )]
}

/// `pip index versions schemathesis` at the time of writing.
const VERSION: &str = "4.32.5";
/// Per operation and phase; a few thousand requests in all, about a minute on this machine.
const MAX_EXAMPLES: &str = "200";
/// Fixed, so a failure can be replayed; `EDGEHUB_ST_SEED` picks another.
const SEED: &str = "20261125";
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
const RUN_TIMEOUT: Duration = Duration::from_secs(480);
/// What every answer is held to. `unsupported_method`: another method on a documented path is
/// 405 (docs/API.md#routing). `negative_data_rejection` and `positive_data_acceptance`: what
/// the document forbids is refused, and what it allows is accepted.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,unsupported_method,\
negative_data_rejection,positive_data_acceptance";
/// A refusal may be any documented 4xx, 413 included (the default list lacks it). An accepted
/// request may still meet what no schema can say: a limit on serialised size (413), an
/// `Idempotency-Key` that schemathesis reuses with another body (422), a token's rights (403).
/// A multi-channel poll's `since` may only name channels of its `channel` set (400 otherwise,
/// docs/API.md#stream-cursor): a rule across two parameters, which no schema can state. A
/// minted token's `info` is any object within 1 KiB as compact JSON and 8 levels (400
/// otherwise, docs/API.md#minting): a limit on serialised size, which no schema can state
/// either (a schema narrow enough to always fit would refuse objects the hub rightly takes).
/// A poll's `topic_pattern` must be a URL pattern (400 otherwise, docs/API.md#topics): a
/// grammar no JSON Schema pattern states. A request whose URL is too long for the runtime is
/// refused by it with 431 before the hub sees it (documented on the polls, whose topic filters
/// make long URLs).
const CONFIG: &str = r#"
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "413", "415", "422", "431"]

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "304", "401", "403", "404", "413", "422"]

[[operations]]
include-path = "/poll"
checks.positive_data_acceptance.expected-statuses = ["2xx", "304", "400", "401", "403", "404", "413", "422"]

[[operations]]
include-path = "/poll/{channel}"
checks.positive_data_acceptance.expected-statuses = ["2xx", "304", "400", "401", "403", "404", "413", "422"]

[[operations]]
include-path = "/tokens"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "413", "422"]
"#;

async fn run(cmd: &mut tokio::process::Command, limit: Duration) -> Result<(bool, String), String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| format!("spawning {cmd:?}: {e}"))?;
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Ok((out.status.success(), text))
        }
        Ok(Err(e)) => Err(format!("{cmd:?}: {e}")),
        Err(_) => Err(format!("{cmd:?} took over {limit:?}")),
    }
}

/// `target/schemathesis-venv/bin/st` at the pinned version, made or upgraded when it is not.
async fn schemathesis() -> Result<PathBuf, String> {
    let venv = root().join("target/schemathesis-venv");
    let st = venv.join("bin/st");
    let version = |st: &Path| {
        let st = st.to_path_buf();
        async move {
            let mut cmd = tokio::process::Command::new(&st);
            run(cmd.arg("--version"), Duration::from_secs(60)).await
        }
    };
    if let Ok((true, v)) = version(&st).await {
        if v.contains(VERSION) {
            return Ok(st);
        }
    }
    if !venv.join("bin/pip").exists() {
        let mut cmd = tokio::process::Command::new("python3");
        let (ok, out) = run(cmd.args(["-m", "venv"]).arg(&venv), INSTALL_TIMEOUT).await?;
        if !ok {
            return Err(format!("python3 -m venv failed:\n{out}"));
        }
    }
    let mut cmd = tokio::process::Command::new(venv.join("bin/pip"));
    cmd.args(["install", "-q", "--disable-pip-version-check"])
        .arg(format!("schemathesis=={VERSION}"));
    let (ok, out) = run(&mut cmd, INSTALL_TIMEOUT).await?;
    if !ok {
        return Err(format!(
            "pip install schemathesis=={VERSION} failed:\n{out}"
        ));
    }
    match version(&st).await {
        Ok((true, v)) if v.contains(VERSION) => Ok(st),
        other => Err(format!("st --version after install: {other:?}")),
    }
}

/// The report from its summary on (or its tail), for the log and for failure messages.
fn summary(out: &str) -> &str {
    let from = out
        .find("=== FAILURES")
        .or_else(|| out.find("=== SUMMARY"))
        .unwrap_or(out.len().saturating_sub(4000));
    let from = (0..=from)
        .rev()
        .find(|i| out.is_char_boundary(*i))
        .unwrap_or(0);
    &out[from..]
}

async fn schemathesis_finds_no_answer_that_breaks_the_openapi_document(api: Api) {
    let st = schemathesis().await.unwrap_or_else(|e| panic!("{e}"));
    // Its working files (.hypothesis, .schemathesis) stay under target/ too.
    let work = root().join("target/schemathesis-work");
    std::fs::create_dir_all(&work).unwrap();
    let config = work.join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let seed = std::env::var("EDGEHUB_ST_SEED").unwrap_or_else(|_| SEED.to_string());
    let mut cmd = tokio::process::Command::new(&st);
    cmd.current_dir(&work)
        .env("NO_COLOR", "1")
        .arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .arg("run")
        .arg(root().join("docs/openapi.yaml"))
        .args(["--url", &api.base])
        .args(["--header", &format!("Authorization: Bearer {}", admin())])
        // The streams never end by themselves; their door is tested in live_auth.rs. The Mercure
        // face takes Mercure's tokens, not this one: tests/e2e/mercure.rs holds it to its spec.
        .args([
            "--exclude-path-regex",
            r"^/((sse|ws)(/|$)|\.well-known/mercure$)",
        ])
        .args(["--checks", CHECKS])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", &seed])
        .args(["--workers", "1", "--request-timeout", "30"])
        .args(["--output-truncate", "true"])
        // Every distinct failure, not only the first of each operation.
        .arg("--continue-on-failure");
    let started = Instant::now();
    let (ok, out) = run(&mut cmd, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let tested = out
        .lines()
        .skip_while(|l| !l.starts_with("Test cases:"))
        .nth(1)
        .unwrap_or("(no count)")
        .trim()
        .to_string();
    let last = out
        .lines()
        .rev()
        .find(|l| l.contains("====="))
        .unwrap_or("");
    eprintln!(
        "schemathesis {VERSION} (seed {seed}) in {:.0?}: {tested}; {}",
        started.elapsed(),
        last.trim_matches(|c| c == '=' || c == ' ')
    );
    assert!(
        ok && out.contains("No issues found"),
        "schemathesis {VERSION} found answers that break docs/openapi.yaml \
         (replay with EDGEHUB_ST_SEED={seed}):\n{}",
        summary(&out)
    );
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().split('/').next())
            .map(str::to_string)
    };
    let (selected, tested_ops) = (field("Selected:"), field("Tested:"));
    assert!(
        selected.is_some() && selected == tested_ops,
        "operations selected {selected:?}, tested {tested_ops:?}:\n{}",
        summary(&out)
    );
}
