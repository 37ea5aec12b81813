//! `edgehub-token`: mints a development token, signed with `AUTH_SECRET` from the environment or
//! else from `./.dev.vars`, and prints it on stdout. A native helper for local runs and tests;
//! production tokens come from your own backend. Exit code 2 on bad arguments or no secret.

use edgehub::auth::{sign, Claims, Pattern, Rights};
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage: edgehub-token [--publish PATTERN]... [--subscribe PATTERN]... \
[--ttl SECONDS] [--sub SUBJECT]

Mints an HS256 token for edgehub and prints it on stdout.
  --publish PATTERN    may publish to PATTERN (a channel, a prefix ending in `*`, or `*`); repeatable
  --subscribe PATTERN  may subscribe to PATTERN; repeatable
  --ttl SECONDS        lifetime, default 3600
  --sub SUBJECT        the `sub` claim; `*` lets the token mint tokens for any sub
                       (POST /tokens), as a backend's does
The secret is AUTH_SECRET from the environment, or else from ./.dev.vars.";

const DEFAULT_TTL_SECONDS: i64 = 3600;
const SECRET_VAR: &str = "AUTH_SECRET";
const DEV_VARS_FILE: &str = ".dev.vars";

struct Options {
    rights: Rights,
    ttl: i64,
    sub: Option<String>,
}

enum Command {
    Mint(Options),
    Help,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("edgehub-token: {message}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let options = match parse_args(std::env::args().skip(1))? {
        Command::Help => return print(USAGE),
        Command::Mint(options) => options,
    };
    let secret = secret()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the system clock is before 1970".to_string())
        .and_then(|d| {
            i64::try_from(d.as_secs()).map_err(|_| "the system clock is out of range".into())
        })?;
    let exp = now
        .checked_add(options.ttl)
        .ok_or_else(|| "--ttl is too large".to_string())?;
    let claims = Claims {
        exp: Some(exp),
        iat: Some(now),
        nbf: None,
        sub: options.sub,
        edgehub: options.rights,
    };
    if claims.edgehub.publish.is_empty() && claims.edgehub.subscribe.is_empty() {
        eprintln!("edgehub-token: warning: no --publish or --subscribe, the token grants nothing");
    }
    print(&sign(&claims, secret.as_bytes()))
}

fn print(text: &str) -> Result<(), String> {
    writeln!(std::io::stdout().lock(), "{text}").map_err(|e| format!("cannot write to stdout: {e}"))
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut options = Options {
        rights: Rights::default(),
        ttl: DEFAULT_TTL_SECONDS,
        sub: None,
    };
    let mut args = args;
    while let Some(arg) = args.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_string(), Some(value.to_string()))
            }
            _ => (arg, None),
        };
        if flag == "-h" || flag == "--help" {
            return Ok(Command::Help);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"))
        };
        match flag.as_str() {
            "--publish" => options.rights.publish.push(pattern(&value()?)?),
            "--subscribe" => options.rights.subscribe.push(pattern(&value()?)?),
            "--ttl" => options.ttl = ttl(&value()?)?,
            "--sub" => options.sub = Some(value()?),
            _ => return Err(format!("unknown argument {flag:?}\n\n{USAGE}")),
        }
    }
    Ok(Command::Mint(options))
}

fn pattern(s: &str) -> Result<String, String> {
    Pattern::parse(s)
        .map(|p| p.as_str().to_string())
        .map_err(|_| {
            format!("invalid pattern {s:?}: use a channel name, a prefix ending in `*`, or `*`")
        })
}

fn ttl(s: &str) -> Result<i64, String> {
    match s.parse::<i64>() {
        Ok(ttl) if ttl > 0 => Ok(ttl),
        _ => Err(format!(
            "--ttl must be a positive number of seconds, not {s:?}"
        )),
    }
}

/// `AUTH_SECRET` from the environment, else the `AUTH_SECRET=...` line of `./.dev.vars`.
fn secret() -> Result<String, String> {
    if let Ok(secret) = std::env::var(SECRET_VAR) {
        if !secret.is_empty() {
            return Ok(secret);
        }
    }
    let missing = || {
        format!("no secret: set {SECRET_VAR} in the environment or in ./{DEV_VARS_FILE} (see .dev.vars.example)")
    };
    let vars = std::fs::read_to_string(DEV_VARS_FILE).map_err(|_| missing())?;
    // Like a shell or dotenv, the last assignment wins.
    vars.lines()
        .rev()
        .find_map(|line| {
            line.trim()
                .strip_prefix(SECRET_VAR)?
                .trim_start()
                .strip_prefix('=')
        })
        .map(|value| unquote(value.trim()).to_string())
        .filter(|secret| !secret.is_empty())
        .ok_or_else(missing)
}

fn unquote(value: &str) -> &str {
    ['"', '\'']
        .iter()
        .find_map(|q| value.strip_prefix(*q)?.strip_suffix(*q))
        .unwrap_or(value)
}
