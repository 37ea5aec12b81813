//! The curl examples of docs/API.md#examples, run as written with bash against the shared hub:
//! every command followed by a `# {…}`, `# HTTP/1.1 NNN …` or `# NNN` comment must print what
//! that comment shows (status, headers named, JSON keys and their plain values; never times
//! or object diagnostics). `make -s token ARGS=…` is the crate's own `edgehub-token` with the
//! hub's secret; the example channels get names of their own.

use std::fmt::Write as _;
use std::process::Stdio;
use std::time::Duration;

use crate::api::{channel, Api};
use crate::harness::{root, SECRET};
use crate::{case, Case};

pub fn cases() -> Vec<Case> {
    vec![case!(api_md_curl_examples_print_what_their_comments_say)]
}

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
/// Stands in for `make -s token ARGS='…'`: the same binary `make token` runs.
const PRELUDE: &str = r#"set -u
make() {
  if [ "${1-}" != -s ] || [ "${2-}" != token ]; then echo "make $* is not an example" >&2; return 2; fi
  local args="${3#ARGS=}"
  eval "\"\$EDGEHUB_TOKEN_BIN\" $args"
}
"#;

/// What a comment after a command says it prints.
#[derive(Debug)]
enum Expect {
    Json(String),
    Http(String),
    Status(String),
}

#[derive(Debug)]
struct Unit {
    command: String,
    expect: Option<Expect>,
}

/// The ```sh blocks between `<a id="examples">` and the next anchor.
fn example_blocks(doc: &str) -> Vec<String> {
    let section = doc.split(r#"<a id="examples"></a>"#).nth(1).unwrap_or("");
    let section = section.split("<a id=").next().unwrap_or("");
    section
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("\n```").next())
        .map(str::to_string)
        .collect()
}

/// Commands (continuation lines joined) and the expectation comment that follows each.
fn units(block: &str) -> Vec<Unit> {
    let mut out: Vec<Unit> = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        let trimmed = line.trim();
        if !pending.is_empty() {
            pending.push('\n');
            pending.push_str(line);
            if !trimmed.ends_with('\\') {
                out.push(Unit {
                    command: std::mem::take(&mut pending),
                    expect: None,
                });
            }
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            let c = comment.trim();
            let expect = if c.starts_with('{') {
                Some(Expect::Json(c.to_string()))
            } else if c.starts_with("HTTP/") {
                Some(Expect::Http(c.to_string()))
            } else if c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()) {
                Some(Expect::Status(c.to_string()))
            } else {
                None
            };
            if let (Some(e), Some(last)) = (expect, out.last_mut()) {
                if last.expect.is_none() {
                    last.expect = Some(e);
                }
            }
        } else if !trimmed.is_empty() {
            pending.push_str(line);
            if !trimmed.ends_with('\\') {
                out.push(Unit {
                    command: std::mem::take(&mut pending),
                    expect: None,
                });
            }
        }
    }
    out
}

/// `"key":value` pairs of an expectation with a plain value (number, boolean, string without
/// `…`), and every key it names. Times, tokens and object diagnostics are left out.
fn pairs_and_keys(expected: &str) -> (Vec<String>, Vec<String>) {
    const SKIP: &[&str] = &[
        "time",
        "instance",
        "requests",
        "expires_at",
        "token",
        "detail",
    ];
    let (mut pairs, mut keys) = (Vec::new(), Vec::new());
    let mut rest = expected;
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else { break };
        let word = &after[..end];
        let tail = &after[end + 1..];
        let Some(value) = tail.strip_prefix(':') else {
            rest = tail;
            continue;
        };
        keys.push(word.to_string());
        let len = match value.strip_prefix('"') {
            Some(s) => s.find('"').map_or(value.len(), |i| i + 2),
            None => value.find([',', '}', ']']).unwrap_or(value.len()),
        };
        let v = &value[..len];
        let plain = !v.contains('…') && !v.starts_with('{') && !v.starts_with('[') && !v.is_empty();
        if plain && !SKIP.contains(&word) {
            pairs.push(format!("\"{word}\":{v}"));
        }
        rest = if value.starts_with('"') {
            &value[len..]
        } else {
            value
        };
    }
    (pairs, keys)
}

/// Why `output` does not match `expect`, if it does not.
fn mismatch(expect: &Expect, output: &str) -> Option<String> {
    let out = output.trim();
    match expect {
        Expect::Status(code) => (out != code).then(|| format!("want {code}")),
        Expect::Json(exp) => {
            if serde_json::from_str::<serde_json::Value>(out).is_err() {
                return Some("not JSON".into());
            }
            let (pairs, keys) = pairs_and_keys(exp);
            // A number must not run on: `"id":1` is not `"id":12`.
            let found = |needle: &str| {
                out.match_indices(needle).any(|(i, _)| {
                    needle.ends_with(':')
                        || !out[i + needle.len()..].starts_with(|c: char| c.is_ascii_digit())
                })
            };
            let missing: Vec<String> = keys
                .iter()
                .map(|k| format!("\"{k}\":"))
                .chain(pairs)
                .filter(|n| !found(n))
                .collect();
            (!missing.is_empty()).then(|| format!("missing {missing:?}"))
        }
        Expect::Http(exp) => {
            let want_status = exp.split_whitespace().nth(1).unwrap_or("");
            let got_status = out.lines().next().and_then(|l| l.split_whitespace().nth(1));
            if got_status != Some(want_status) {
                return Some(format!("want status {want_status}"));
            }
            let headers: Vec<String> = out
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_ascii_lowercase())
                .collect();
            let missing: Vec<&str> = exp
                .split('…')
                .skip(1)
                .map(str::trim)
                .filter(|h| h.contains(':'))
                .filter(|h| {
                    !headers
                        .iter()
                        .any(|l| l.starts_with(&h.to_ascii_lowercase()))
                })
                .collect();
            (!missing.is_empty()).then(|| format!("missing headers {missing:?}"))
        }
    }
}

async fn api_md_curl_examples_print_what_their_comments_say(api: Api) {
    let doc = std::fs::read_to_string(root().join("docs/API.md")).unwrap();
    let c = channel("docs");
    let text = example_blocks(&doc)
        .join("\n")
        .replace("http://127.0.0.1:8787", &api.base)
        .replace("public:news", &format!("public:{c}"))
        .replace("orders", &c);
    let units = units(&text);
    let checked = units.iter().filter(|u| u.expect.is_some()).count();
    assert!(
        checked >= 10,
        "only {checked} checked examples in docs/API.md#examples:\n{text}"
    );

    let dir = root().join("target/e2e-tmp").join(format!("docs-{c}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut script = PRELUDE.to_string();
    for (i, u) in units.iter().enumerate() {
        // A breath between commands: the mirror a poll reads lags a publish by milliseconds.
        let _ = write!(
            script,
            "sleep 0.3\n{{\n{}\n}} >\"$OUT/{i}.out\" 2>\"$OUT/{i}.err\"\necho $? >\"$OUT/{i}.rc\"\n",
            u.command
        );
    }
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-c")
        .arg(&script)
        .current_dir(&dir)
        .env("OUT", &dir)
        .env("AUTH_SECRET", String::from_utf8_lossy(SECRET).as_ref())
        .env("EDGEHUB_TOKEN_BIN", env!("CARGO_BIN_EXE_edgehub-token"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let status = tokio::time::timeout(SCRIPT_TIMEOUT, cmd.status()).await;
    assert!(
        matches!(status, Ok(Ok(_))),
        "the examples did not finish: {status:?}"
    );

    let mut report = String::new();
    let mut failed = 0;
    for (i, u) in units.iter().enumerate() {
        let read =
            |ext: &str| std::fs::read_to_string(dir.join(format!("{i}.{ext}"))).unwrap_or_default();
        let (out, err, rc) = (read("out"), read("err"), read("rc"));
        let fault = if rc.trim() != "0" {
            Some(format!("exit {} {err}", rc.trim()))
        } else {
            u.expect.as_ref().and_then(|e| mismatch(e, &out))
        };
        let mark = if fault.is_some() { "FAIL" } else { "ok  " };
        failed += usize::from(fault.is_some());
        let first = u.command.lines().next().unwrap_or("");
        let _ = writeln!(report, "{mark} {first}");
        if let Some(f) = fault {
            let _ = writeln!(
                report,
                "     {f}\n     expected: {:?}\n     got: {}",
                u.expect,
                out.trim()
            );
        }
    }
    assert_eq!(failed, 0, "docs/API.md#examples:\n{report}");
    let _ = std::fs::remove_dir_all(&dir);
}
