//! Delegation: `POST /tokens` mints a token whose rights are no wider than the caller's own, in
//! channels and in time, and whose identity is the caller's: a token keeps its caller's `sub`
//! (and `info`), and only a caller whose `sub` is `*` (a backend's) may name another, so a
//! backend can mint one token per user and no user can claim another's identity. This is how a
//! backend hands a browser a short-lived subscribe token. See `docs/API.md#minting`.

use super::{sign, Claims, Grant, Info, Pattern, Rights, MAX_TOKEN_BYTES};
use crate::error::{Error, TokenFault};
use crate::protocol::json;
use serde::Deserialize;
use serde_json::value::RawValue;

/// The `sub` of a token that may mint tokens for any subject.
pub const ANY_SUB: &str = "*";

/// The body of `POST /tokens`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Lifetime in seconds.
    /// JSON has one number type: `300` and `300.0` are the same whole number of seconds.
    pub ttl: serde_json::Number,
    /// Subject of the new token; the caller's own when absent.
    #[serde(default, deserialize_with = "crate::protocol::publish::present")]
    pub sub: Option<String>,
    /// The new token's presence info (`Info`); the caller's own when absent and the subject is
    /// the caller's. An explicit `null` is refused, as for the other optional members.
    #[serde(default, deserialize_with = "present_raw")]
    pub info: Option<Box<RawValue>>,
}

/// An optional JSON member that must not be `null` when present.
fn present_raw<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    use serde::de::Error as _;
    let raw = Box::<RawValue>::deserialize(d)?;
    match raw.get().trim() {
        "null" => Err(D::Error::custom(
            "info may not be null: leave it out for none",
        )),
        _ => Ok(Some(raw)),
    }
}

/// The longest `sub` a minted token may carry, in characters.
pub const MAX_SUB_LEN: usize = 256;

/// Levels of objects and arrays a token request may hold: its `info`, one level down.
pub const REQUEST_MAX_DEPTH: usize = super::info::MAX_INFO_DEPTH + 1;

impl TokenRequest {
    /// Parses a `POST /tokens` body, after checking that it is readable JSON of bounded depth.
    pub fn parse(body: &[u8]) -> Result<TokenRequest, Error> {
        let text = std::str::from_utf8(body)
            .map_err(|_| Error::InvalidJson("the body is not UTF-8".into()))?;
        json::check(text, REQUEST_MAX_DEPTH).map_err(|fault| {
            fault.into_error(|| {
                format!("a token request nests at most {REQUEST_MAX_DEPTH} levels deep")
            })
        })?;
        serde_json::from_str(text).map_err(|e| {
            Error::bad_request(format!(
                "a token request is {{\"publish\"?, \"subscribe\"?, \"ttl\", \"sub\"?, \"info\"?}}: {e}"
            ))
        })
    }
}

/// The claims of the token to mint, or why not: 400 for a malformed request, 403 when a
/// requested pattern is not covered by the caller's patterns for the same action.
pub fn delegate(
    caller: &Grant,
    req: &TokenRequest,
    now: i64,
    max_ttl: i64,
) -> Result<Claims, Error> {
    if req.publish.is_empty() && req.subscribe.is_empty() {
        return Err(Error::bad_request(
            "ask for at least one publish or subscribe pattern",
        ));
    }
    let Some(ttl) = whole(&req.ttl).filter(|t| (1..=max_ttl).contains(t)) else {
        return Err(Error::bad_request(format!(
            "ttl is a whole number of seconds from 1 to {max_ttl}"
        )));
    };
    // A subject ends up in logs and in other systems' records: no line breaks or other
    // control characters that could forge entries there.
    if req.sub.as_ref().is_some_and(|s| {
        s.is_empty() || s.chars().count() > MAX_SUB_LEN || s.chars().any(char::is_control)
    }) {
        return Err(Error::bad_request(format!(
            "sub is 1 to {MAX_SUB_LEN} characters, without control characters"
        )));
    }
    let info = req
        .info
        .as_ref()
        .map(|raw| Info::parse(raw.get()))
        .transpose()?;
    // A caller let in within the clock skew after its expiry could only mint a token that
    // expires before it is issued.
    if caller.exp <= now {
        return Err(Error::Unauthorized(TokenFault::Expired));
    }
    let publish = narrower(&req.publish, &caller.publish, "publish")?;
    let subscribe = narrower(&req.subscribe, &caller.subscribe, "subscribe")?;
    let (sub, info) = identity(caller, req.sub.as_deref(), info)?;
    Ok(Claims {
        // Never outlives the token that asked for it.
        exp: Some(now.saturating_add(ttl).min(caller.exp)),
        iat: Some(now),
        nbf: None,
        sub,
        edgehub: Rights {
            publish,
            subscribe,
            info,
        },
    })
}

/// Whose token it is: the caller's own `sub` (and, unless `info` is given, its own info), or,
/// for a caller whose `sub` is `*`, whichever `sub` it names. Naming another is 403.
fn identity(
    caller: &Grant,
    wanted: Option<&str>,
    info: Option<Info>,
) -> Result<(Option<String>, Option<Info>), Error> {
    let own = caller.sub.as_deref();
    match wanted {
        None => Ok((
            own.map(str::to_string),
            info.or_else(|| caller.info.clone()),
        )),
        Some(sub) if Some(sub) == own => {
            Ok((Some(sub.to_string()), info.or_else(|| caller.info.clone())))
        }
        Some(sub) if own == Some(ANY_SUB) => Ok((Some(sub.to_string()), info)),
        Some(_) => Err(Error::Forbidden(format!(
            "your token may mint tokens only for its own sub; a token whose sub is \"{ANY_SUB}\" \
             may name any"
        ))),
    }
}

/// Signs `claims`, refusing a token longer than the hub accepts (`MAX_TOKEN_BYTES`): one that
/// could never be used is an error now, not a 401 later.
pub fn mint(claims: &Claims, secret: &[u8]) -> Result<String, Error> {
    let token = sign(claims, secret);
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Error::bad_request(format!(
            "the token would be {} bytes, over the {MAX_TOKEN_BYTES} the hub accepts: ask for \
             fewer or shorter patterns",
            token.len()
        )));
    }
    Ok(token)
}

/// A number that is a whole `i64`, written as `5` or `5.0`.
fn whole(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    })
}

/// Parses `wanted` and checks each pattern is covered by one of `held`.
fn narrower(wanted: &[String], held: &[Pattern], action: &str) -> Result<Vec<String>, Error> {
    wanted
        .iter()
        .map(|w| {
            let pattern = Pattern::parse(w)?;
            if held.iter().any(|h| h.covers(&pattern)) {
                Ok(pattern.as_str().to_string())
            } else {
                Err(Error::Forbidden(format!(
                    "your token may not {action} on every channel {} matches",
                    pattern.as_str()
                )))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn grant(publish: &[&str], subscribe: &[&str], exp: i64) -> Grant {
        let p = |list: &[&str]| list.iter().map(|s| Pattern::parse(s).unwrap()).collect();
        Grant {
            sub: Some(ANY_SUB.into()),
            info: None,
            publish: p(publish),
            subscribe: p(subscribe),
            exp,
            iat: None,
        }
    }

    fn req(publish: &[&str], subscribe: &[&str], ttl: i64) -> TokenRequest {
        let v = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        TokenRequest {
            publish: v(publish),
            subscribe: v(subscribe),
            ttl: ttl.into(),
            sub: None,
            info: None,
        }
    }

    #[test]
    fn an_explicit_null_info_is_refused_like_other_members() {
        let null = TokenRequest::parse(br#"{"subscribe":["a"],"ttl":60,"info":null}"#);
        assert_eq!(null.err().map(|e| e.status()), Some(400));
        let object = TokenRequest::parse(br#"{"subscribe":["a"],"ttl":60,"info":{"n":1}}"#);
        assert!(object.is_ok_and(|r| r.info.is_some()));
        let absent = TokenRequest::parse(br#"{"subscribe":["a"],"ttl":60}"#);
        assert!(absent.is_ok_and(|r| r.info.is_none()));
    }

    #[test]
    fn table() {
        let caller = grant(&["orders:*"], &["*"], 10_000);
        for (r, status) in [
            (req(&[], &["orders:eu"], 60), None),
            (req(&["orders:eu:*"], &["public:*"], 60), None),
            (req(&["orders:*"], &[], 3600), None),
            (req(&["*"], &[], 60), Some(403)),
            (req(&["invoices"], &[], 60), Some(403)),
            (req(&[], &[], 60), Some(400)),
            (req(&[], &["x"], 0), Some(400)),
            (req(&[], &["x"], 3601), Some(400)),
            (req(&[], &["bad name"], 60), Some(400)),
        ] {
            let got = delegate(&caller, &r, 1000, 3600)
                .map_err(|e| e.status())
                .err();
            assert_eq!(got, status, "{r:?}");
        }
    }

    #[test]
    fn ttl_is_any_whole_json_number() {
        let caller = grant(&[], &["*"], 10_000);
        for (text, ok) in [
            ("60", true),
            ("60.0", true),
            ("60.5", false),
            ("-1", false),
            ("1e3", true),
            ("1e20", false),
        ] {
            let mut r = req(&[], &["a"], 1);
            r.ttl = serde_json::from_str(text).unwrap();
            assert_eq!(delegate(&caller, &r, 0, 3600).is_ok(), ok, "ttl {text}");
        }
    }

    #[test]
    fn never_outlives_the_caller_and_keeps_its_subject() {
        let caller = grant(&[], &["*"], 1030);
        let claims = delegate(&caller, &req(&[], &["a"], 300), 1000, 3600).unwrap();
        assert_eq!((claims.iat, claims.exp), (Some(1000), Some(1030)));
        assert_eq!(claims.sub.as_deref(), Some(ANY_SUB));
        let mut named = req(&[], &["a"], 10);
        named.sub = Some("browser-7".into());
        let claims = delegate(&caller, &named, 1000, 3600).unwrap();
        assert_eq!(
            (claims.exp, claims.sub.as_deref()),
            (Some(1010), Some("browser-7"))
        );
    }

    #[test]
    fn a_token_keeps_its_callers_identity_unless_the_caller_may_name_any() {
        let info = |t: &str| Some(Info::parse(t).unwrap());
        let mut user = grant(&[], &["*"], 10_000);
        user.sub = Some("user-7".into());
        user.info = info(r#"{"name":"Ada"}"#);
        let mut r = req(&[], &["a"], 10);
        let claims = delegate(&user, &r, 1000, 3600).unwrap();
        assert_eq!(
            (claims.sub.as_deref(), claims.edgehub.info),
            (Some("user-7"), user.info.clone())
        );
        r.sub = Some("user-7".into());
        assert!(
            delegate(&user, &r, 1000, 3600).is_ok(),
            "its own sub, named"
        );
        for other in ["user-8", ANY_SUB] {
            r.sub = Some(other.into());
            let refused = delegate(&user, &r, 1000, 3600).map_err(|e| e.status());
            assert_eq!(refused.err(), Some(403), "{other}");
        }
        // A token without a sub mints tokens without one, and names none.
        let mut anonymous = user.clone();
        anonymous.sub = None;
        r.sub = None;
        assert_eq!(delegate(&anonymous, &r, 1000, 3600).unwrap().sub, None);
        r.sub = Some("user-7".into());
        assert!(delegate(&anonymous, &r, 1000, 3600).is_err());
        // A backend's `*` token names any sub, with the info it gives (none by default).
        let backend = grant(&[], &["*"], 10_000);
        r.info = Some(RawValue::from_string(r#"{ "name": "Bo" }"#.into()).unwrap());
        let claims = delegate(&backend, &r, 1000, 3600).unwrap();
        assert_eq!(
            (claims.sub.as_deref(), claims.edgehub.info),
            (Some("user-7"), info(r#"{"name":"Bo"}"#))
        );
        r.info = None;
        assert_eq!(
            delegate(&backend, &r, 1000, 3600).unwrap().edgehub.info,
            None
        );
        // Info is checked: an object within its limits.
        for bad in [
            "[1]",
            "\"x\"",
            &format!(r#"{{"n":"{}"}}"#, "x".repeat(1100)),
        ] {
            r.info = Some(RawValue::from_string(bad.to_string()).unwrap());
            assert_eq!(
                delegate(&backend, &r, 1000, 3600)
                    .map_err(|e| e.status())
                    .err(),
                Some(400),
                "{bad}"
            );
        }
    }

    #[test]
    fn subjects_are_bounded_text() {
        let caller = grant(&[], &["*"], 10_000);
        for (sub, ok) in [
            ("browser-7", true),
            ("user@example.com", true),
            ("名前", true),
            ("", false),
            ("a\r\nb", false),
            ("tab\there", false),
            ("nul\0", false),
            ("c1\u{85}", false),
        ] {
            let mut r = req(&[], &["a"], 10);
            r.sub = Some(sub.into());
            assert_eq!(delegate(&caller, &r, 1000, 3600).is_ok(), ok, "{sub:?}");
        }
        let mut r = req(&[], &["a"], 10);
        r.sub = Some("x".repeat(MAX_SUB_LEN + 1));
        assert!(delegate(&caller, &r, 1000, 3600).is_err());
    }

    #[test]
    fn a_caller_past_its_expiry_mints_nothing() {
        // Still let in (within the clock skew), but anything it minted would expire before
        // it was issued.
        let caller = grant(&[], &["*"], 990);
        let got = delegate(&caller, &req(&[], &["a"], 60), 1000, 3600);
        assert_eq!(got.map_err(|e| e.code()).err(), Some("token_expired"));
        let at_edge = grant(&[], &["*"], 1000);
        assert!(delegate(&at_edge, &req(&[], &["a"], 60), 1000, 3600).is_err());
        let claims = delegate(&grant(&[], &["*"], 1001), &req(&[], &["a"], 60), 1000, 3600);
        let claims = claims.unwrap();
        assert!(claims.exp.unwrap() > claims.iat.unwrap());
    }

    #[test]
    fn minted_tokens_fit_what_the_hub_accepts() {
        let caller = grant(&[], &["*"], 10_000);
        let many: Vec<String> = (0..1000).map(|i| format!("channel-{i}")).collect();
        let mut r = req(&[], &[], 60);
        r.subscribe = many;
        let claims = delegate(&caller, &r, 1000, 3600).unwrap();
        let got = mint(&claims, b"k");
        assert_eq!(got.map_err(|e| e.status()).err(), Some(400));
        let few = delegate(&caller, &req(&[], &["a", "b"], 60), 1000, 3600).unwrap();
        let token = mint(&few, b"k").unwrap();
        assert!(
            super::super::verify(&token, b"k", 1000, super::super::TokenSource::Header, 300)
                .is_ok()
        );
    }

    #[test]
    fn requests_are_readable_json_of_bounded_depth() {
        let ok = TokenRequest::parse(br#"{"subscribe":["a"],"ttl":60}"#).unwrap();
        assert_eq!(ok.subscribe, vec!["a".to_string()]);
        let deep = format!(
            r#"{{"subscribe":["a"],"ttl":60,"x":{}1{}}}"#,
            "[".repeat(20),
            "]".repeat(20)
        );
        assert_eq!(
            TokenRequest::parse(deep.as_bytes())
                .map_err(|e| e.code())
                .err(),
            Some("too_deep")
        );
        for bad in [
            r#"{"subscribe":["a"],"ttl":60,"sub":"\ud800"}"#,
            r#"{"subscribe":["a"],"ttl":1e999}"#,
        ] {
            assert_eq!(
                TokenRequest::parse(bad.as_bytes())
                    .map_err(|e| e.code())
                    .err(),
                Some("invalid_json"),
                "{bad}"
            );
        }
        assert_eq!(
            TokenRequest::parse(b"\xff").map_err(|e| e.status()).err(),
            Some(400)
        );
        assert_eq!(
            TokenRequest::parse(br#"{"ttl":60,"x":1}"#)
                .map_err(|e| e.code())
                .err(),
            Some("bad_request")
        );
    }

    #[test]
    fn subscribe_rights_do_not_grant_publish() {
        let caller = grant(&[], &["*"], 10_000);
        assert_eq!(
            delegate(&caller, &req(&["a"], &[], 60), 0, 3600)
                .map_err(|e| e.status())
                .err(),
            Some(403)
        );
    }

    proptest! {
        /// Whatever is asked, a minted token never matches a channel its caller could not reach.
        #[test]
        fn no_escalation(held in "[a-c]{0,2}\\*?", asked in "[a-c]{0,3}\\*?", channel in "[a-c]{1,4}") {
            let Ok(held_p) = Pattern::parse(&held) else { return Ok(()) };
            let caller = Grant { sub: None, info: None, publish: vec![held_p.clone()], subscribe: vec![], exp: 100, iat: None };
            let ch = crate::protocol::ChannelName::parse(&channel).unwrap();
            if let Ok(claims) = delegate(&caller, &req(&[asked.as_str()], &[], 10), 0, 60) {
                for p in &claims.edgehub.publish {
                    let p = Pattern::parse(p).unwrap();
                    prop_assert!(!p.matches(&ch) || held_p.matches(&ch));
                }
            }
        }
    }
}
