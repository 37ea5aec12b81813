//! Tests of token signing and verification, patterns and grants.

use super::*;
use proptest::prelude::*;

const SECRET: &[u8] = b"test-secret";
const NOW: i64 = 1_700_000_000;
const QUERY_MAX: i64 = 300;

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with any header and payload text, correctly HS256-signed with `secret`.
fn forge(header: &str, payload: &str, secret: &[u8]) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let mut mac = HmacSha256::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

fn claims(exp: Option<i64>, iat: Option<i64>, nbf: Option<i64>) -> Claims {
    Claims {
        exp,
        iat,
        nbf,
        sub: Some("alice".into()),
        edgehub: Rights {
            publish: vec!["orders:*".into()],
            subscribe: vec!["*".into()],
            info: None,
        },
    }
}

fn ch(name: &str) -> ChannelName {
    ChannelName::parse(name).unwrap()
}

fn pat(s: &str) -> Pattern {
    Pattern::parse(s).unwrap()
}

fn fault(result: Result<Grant, Error>) -> Result<(), TokenFault> {
    match result {
        Ok(_) => Ok(()),
        Err(Error::Unauthorized(fault)) => Err(fault),
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn verify_outcomes_table() {
    use TokenFault::*;
    use TokenSource::{Header, Query};
    let good = sign(&claims(Some(NOW + 60), Some(NOW), None), SECRET);
    let payload = r#"{"exp":1700000060}"#;
    let mut tampered: Vec<String> = good.split('.').map(String::from).collect();
    tampered[1] = b64(br#"{"exp":1700000060,"edgehub":{"publish":["*"]}}"#);
    let tampered = tampered.join(".");
    let (head, sig) = good.rsplit_once('.').unwrap();
    let padded = format!("{head}.{sig}=");
    let too_long = format!("{good}{}", "A".repeat(MAX_TOKEN_BYTES));
    let bad_pattern = r#"{"exp":1700000060,"edgehub":{"subscribe":["a/b"]}}"#;
    let cases: Vec<(&str, String, TokenSource, Result<(), TokenFault>)> = vec![
        ("good", good.clone(), Header, Ok(())),
        (
            "expired",
            sign(&claims(Some(NOW - 31), None, None), SECRET),
            Header,
            Err(Expired),
        ),
        (
            "expired within skew",
            sign(&claims(Some(NOW - 30), None, None), SECRET),
            Header,
            Ok(()),
        ),
        (
            "nbf in the future",
            sign(&claims(Some(NOW + 60), None, Some(NOW + 31)), SECRET),
            Header,
            Err(NotYetValid),
        ),
        (
            "nbf within skew",
            sign(&claims(Some(NOW + 60), None, Some(NOW + 30)), SECRET),
            Header,
            Ok(()),
        ),
        (
            "alg none, no signature",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(payload.as_bytes())
            ),
            Header,
            Err(Algorithm),
        ),
        (
            "alg none, signed",
            forge(r#"{"alg":"none"}"#, payload, SECRET),
            Header,
            Err(Algorithm),
        ),
        (
            "alg HS384",
            forge(r#"{"alg":"HS384","typ":"JWT"}"#, payload, SECRET),
            Header,
            Err(Algorithm),
        ),
        (
            "alg lowercase",
            forge(r#"{"alg":"hs256"}"#, payload, SECRET),
            Header,
            Err(Algorithm),
        ),
        (
            "alg not a string",
            forge(r#"{"alg":256}"#, payload, SECRET),
            Header,
            Err(Algorithm),
        ),
        (
            "missing alg",
            forge(r#"{"typ":"JWT"}"#, payload, SECRET),
            Header,
            Err(Algorithm),
        ),
        (
            "header not JSON",
            forge("HS256", payload, SECRET),
            Header,
            Err(Malformed),
        ),
        (
            "header not an object",
            forge(r#"["HS256"]"#, payload, SECRET),
            Header,
            Err(Malformed),
        ),
        (
            "crit header",
            forge(r#"{"alg":"HS256","crit":["exp"]}"#, payload, SECRET),
            Header,
            Err(Malformed),
        ),
        (
            "alg named twice",
            forge(r#"{"alg":"none","alg":"HS256"}"#, payload, SECRET),
            Header,
            Err(Malformed),
        ),
        (
            "another member named twice",
            forge(r#"{"alg":"HS256","typ":"JWT","typ":"x"}"#, payload, SECRET),
            Header,
            Err(Malformed),
        ),
        (
            "exp named twice in the payload",
            forge(
                r#"{"alg":"HS256"}"#,
                &format!(r#"{{"exp":{},"exp":{}}}"#, NOW - 600, NOW + 60),
                SECRET,
            ),
            Header,
            Err(Malformed),
        ),
        (
            "bad signature",
            sign(&claims(Some(NOW + 60), None, None), b"another-secret"),
            Header,
            Err(Signature),
        ),
        ("tampered payload", tampered, Header, Err(Signature)),
        ("padded signature", padded, Header, Err(Malformed)),
        (
            "two parts",
            good.rsplit_once('.').unwrap().0.to_string(),
            Header,
            Err(Malformed),
        ),
        ("four parts", format!("{good}.x"), Header, Err(Malformed)),
        ("empty", String::new(), Header, Err(Malformed)),
        ("non-base64", "!!!.@@@.###".into(), Header, Err(Malformed)),
        ("too long", too_long, Header, Err(Malformed)),
        (
            "payload not JSON",
            forge(r#"{"alg":"HS256"}"#, "exp=1", SECRET),
            Header,
            Err(Malformed),
        ),
        (
            "exp not an integer",
            forge(r#"{"alg":"HS256"}"#, r#"{"exp":"soon"}"#, SECRET),
            Header,
            Err(Malformed),
        ),
        (
            "invalid pattern",
            forge(r#"{"alg":"HS256"}"#, bad_pattern, SECRET),
            Header,
            Err(Malformed),
        ),
        (
            "missing exp",
            sign(&claims(None, Some(NOW), None), SECRET),
            Header,
            Err(MissingExpiry),
        ),
        (
            "query, too long-lived",
            sign(&claims(Some(NOW + 301), Some(NOW), None), SECRET),
            Query,
            Err(QueryLifetime),
        ),
        (
            "header, long-lived",
            sign(&claims(Some(NOW + 301), Some(NOW), None), SECRET),
            Header,
            Ok(()),
        ),
        (
            "query, no iat",
            sign(&claims(Some(NOW + 60), None, None), SECRET),
            Query,
            Err(QueryLifetime),
        ),
        (
            "query, iat in the future",
            sign(&claims(Some(NOW + 3600), Some(NOW + 3400), None), SECRET),
            Query,
            Err(QueryLifetime),
        ),
        (
            "query, short-lived",
            sign(&claims(Some(NOW + 300), Some(NOW), None), SECRET),
            Query,
            Ok(()),
        ),
    ];
    for (name, token, source, expected) in cases {
        assert_eq!(
            fault(verify(&token, SECRET, NOW, source, QUERY_MAX)),
            expected,
            "{name}"
        );
    }
}

#[test]
fn an_empty_secret_never_verifies() {
    let token = sign(&claims(Some(NOW + 60), None, None), b"");
    let result = verify(&token, b"", NOW, TokenSource::Header, QUERY_MAX);
    assert!(matches!(result, Err(Error::Internal(_))));
}

#[test]
fn a_good_token_grants_its_rights() {
    let token = sign(&claims(Some(NOW + 60), Some(NOW), None), SECRET);
    let grant = verify(&token, SECRET, NOW, TokenSource::Header, QUERY_MAX).unwrap();
    assert_eq!(grant.sub.as_deref(), Some("alice"));
    assert_eq!((grant.exp, grant.iat), (NOW + 60, Some(NOW)));
    assert!(grant.allows(Action::Publish, &ch("orders:1")));
    assert!(!grant.allows(Action::Publish, &ch("chat")));
    assert!(grant.allows(Action::Subscribe, &ch("chat")));
    let nothing = Grant {
        publish: vec![],
        subscribe: vec![],
        ..grant
    };
    assert!(!nothing.allows(Action::Subscribe, &ch("chat")));
}

#[test]
fn refusals_do_not_echo_the_token() {
    let mut c = claims(Some(NOW - 3600), None, None);
    c.sub = Some("sensitive-subject".into());
    let err = verify(
        &sign(&c, SECRET),
        SECRET,
        NOW,
        TokenSource::Header,
        QUERY_MAX,
    )
    .unwrap_err();
    let problem = serde_json::to_string(&err.problem()).unwrap();
    assert!(!problem.contains("sensitive-subject"), "{problem}");
}

/// Known answer computed independently with Python's standard library:
/// `hmac.new(b"edgehub-kat-secret", b64(header) + b"." + b64(payload), hashlib.sha256)`.
#[test]
fn sign_known_answer() {
    let claims = Claims {
        exp: Some(1_700_003_600),
        iat: Some(1_700_000_000),
        nbf: None,
        sub: Some("alice".into()),
        edgehub: Rights {
            publish: vec!["orders:*".into()],
            subscribe: vec!["*".into(), "public:news".into()],
            info: None,
        },
    };
    assert_eq!(
        sign(&claims, b"edgehub-kat-secret"),
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
         eyJleHAiOjE3MDAwMDM2MDAsImlhdCI6MTcwMDAwMDAwMCwic3ViIjoiYWxpY2UiLCJlZGdlaHViIjp7InB1Ymxpc2giOlsib3JkZXJzOioiXSwic3Vic2NyaWJlIjpbIioiLCJwdWJsaWM6bmV3cyJdfX0.\
         7eU4K91r84jFT2q3vhDv-NHidGQCn0yvqK6tCexVr40"
    );
}

/// The jwt.io sample token, signed elsewhere: its signature verifies, then the missing `exp`
/// is what refuses it.
#[test]
fn verifies_a_foreign_hs256_signature() {
    let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
                 eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.\
                 SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    let verdict = |secret: &[u8]| fault(verify(token, secret, NOW, TokenSource::Header, 0));
    assert_eq!(
        verdict(b"your-256-bit-secret"),
        Err(TokenFault::MissingExpiry)
    );
    assert_eq!(verdict(b"not-the-secret"), Err(TokenFault::Signature));
}

#[test]
fn claims_serialize_without_absent_fields() {
    let json = serde_json::to_string(&claims(Some(5), None, None)).unwrap();
    assert_eq!(
        json,
        r#"{"exp":5,"sub":"alice","edgehub":{"publish":["orders:*"],"subscribe":["*"]}}"#
    );
    let parsed: Claims = serde_json::from_str(r#"{"exp":5,"aud":"x","edgehub":{}}"#).unwrap();
    assert_eq!(
        parsed,
        Claims {
            exp: Some(5),
            ..Claims::default()
        }
    );
}

#[test]
fn pattern_grammar_table() {
    let long = "a".repeat(CHANNEL_MAX_LEN);
    let long_prefix = format!("{long}*");
    let too_long_prefix = format!("{long}a*");
    for (s, ok) in [
        ("*", true),
        ("orders", true),
        ("orders:*", true),
        ("o*", true),
        (long.as_str(), true),
        (long_prefix.as_str(), true),
        (too_long_prefix.as_str(), false),
        ("", false),
        ("**", false),
        ("a**", false),
        ("*a", false),
        ("or*ders", false),
        (":*", false),
        (".*", false),
        ("a/*", false),
        ("a b*", false),
        (" orders", false),
    ] {
        assert_eq!(Pattern::parse(s).is_ok(), ok, "{s:?}");
    }
}

#[test]
fn pattern_matches_table() {
    for (pattern, channel, expected) in [
        ("*", "anything", true),
        ("orders", "orders", true),
        ("orders", "orders:1", false),
        ("orders", "order", false),
        ("orders:*", "orders:1", true),
        ("orders:*", "orders:", true),
        ("orders:*", "orders", false),
        ("orders*", "orders", true),
        ("orders*", "ordersx", true),
        ("orders:*", "chat", false),
    ] {
        assert_eq!(
            pat(pattern).matches(&ch(channel)),
            expected,
            "{pattern} ~ {channel}"
        );
    }
}

#[test]
fn pattern_covers_table() {
    let long = "a".repeat(CHANNEL_MAX_LEN);
    let long_prefix = format!("{long}*");
    for (wide, narrow, expected) in [
        ("*", "*", true),
        ("*", "orders:*", true),
        ("*", "orders", true),
        ("orders:*", "*", false),
        ("orders:*", "orders:*", true),
        ("orders:*", "orders:eu:*", true),
        ("orders:*", "orders:1", true),
        ("orders:*", "orders", false),
        ("orders:*", "orders*", false),
        ("orders*", "orders:*", true),
        ("orders", "orders", true),
        ("orders", "orders:1", false),
        ("orders", "orders*", false),
        ("orders", "*", false),
        (long.as_str(), long_prefix.as_str(), true),
        (long_prefix.as_str(), long.as_str(), true),
    ] {
        assert_eq!(
            pat(wide).covers(&pat(narrow)),
            expected,
            "{wide} covers {narrow}"
        );
    }
}

#[test]
fn pattern_serde_is_the_plain_string() {
    assert_eq!(
        serde_json::to_string(&pat("orders:*")).unwrap(),
        r#""orders:*""#
    );
    let parsed: Vec<Pattern> = serde_json::from_str(r#"["*","demo"]"#).unwrap();
    assert_eq!(parsed, vec![pat("*"), pat("demo")]);
    assert!(serde_json::from_str::<Pattern>(r#""a/b""#).is_err());
}

#[test]
fn config_pattern_lists() {
    assert_eq!(patterns(""), vec![]);
    assert_eq!(patterns(" , "), vec![]);
    assert_eq!(
        patterns("public:*, demo"),
        vec![pat("public:*"), pat("demo")]
    );
    assert_eq!(patterns("a/b,ok,*x"), vec![pat("ok")]);
}

#[test]
fn bearer_table() {
    for (header, expected) in [
        ("Bearer abc.def.ghi", Some("abc.def.ghi")),
        ("bearer abc", Some("abc")),
        ("BEARER   abc  ", Some("abc")),
        ("  Bearer\tabc", Some("abc")),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer a b", None),
        ("Basic abc", None),
        ("Bearerabc", None),
        ("", None),
    ] {
        assert_eq!(bearer(header), expected, "{header:?}");
    }
}

fn pattern_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        "[A-Za-z0-9][A-Za-z0-9._:-]{0,20}",
        "[A-Za-z0-9][A-Za-z0-9._:-]{0,20}\\*",
    ]
}

/// A small alphabet, so patterns and channels often overlap.
fn small_pattern() -> impl Strategy<Value = Pattern> {
    "\\*|[ab][ab:]{0,3}\\*?".prop_map(|s| Pattern::parse(&s).unwrap())
}

proptest! {
    #[test]
    fn verify_never_panics(
        token in "\\PC{0,300}",
        now in any::<i64>(),
        max in any::<i64>(),
        query in any::<bool>(),
    ) {
        let source = if query { TokenSource::Query } else { TokenSource::Header };
        let _ = verify(&token, SECRET, now, source, max);
    }

    #[test]
    fn verify_never_panics_on_token_shaped_input(
        token in "[A-Za-z0-9_=-]{0,60}(\\.[A-Za-z0-9_=-]{0,60}){0,4}",
    ) {
        let _ = verify(&token, SECRET, NOW, TokenSource::Query, QUERY_MAX);
    }

    #[test]
    fn verify_never_panics_on_extreme_times(
        exp in any::<i64>(),
        iat in proptest::option::of(any::<i64>()),
        nbf in proptest::option::of(any::<i64>()),
        now in any::<i64>(),
        max in any::<i64>(),
    ) {
        let token = sign(&claims(Some(exp), iat, nbf), SECRET);
        let _ = verify(&token, SECRET, now, TokenSource::Query, max);
        let _ = verify(&token, SECRET, now, TokenSource::Header, max);
    }

    #[test]
    fn sign_then_verify_round_trips(
        publish in proptest::collection::vec(pattern_strategy(), 0..5),
        subscribe in proptest::collection::vec(pattern_strategy(), 0..5),
        sub in proptest::option::of("\\PC{0,20}"),
        age in 0i64..=CLOCK_SKEW_SECONDS,
        remaining in 0i64..=(QUERY_MAX - CLOCK_SKEW_SECONDS),
    ) {
        let iat = NOW - age;
        let exp = NOW + remaining;
        let claims = Claims {
            exp: Some(exp),
            iat: Some(iat),
            nbf: None,
            sub: sub.clone(),
            edgehub: Rights { publish: publish.clone(), subscribe: subscribe.clone(), info: None },
        };
        let token = sign(&claims, SECRET);
        let grant = verify(&token, SECRET, NOW, TokenSource::Query, QUERY_MAX).unwrap();
        prop_assert_eq!(grant.sub, sub);
        prop_assert_eq!((grant.exp, grant.iat), (exp, Some(iat)));
        let texts = |ps: &[Pattern]| ps.iter().map(|p| p.as_str().to_string()).collect::<Vec<_>>();
        prop_assert_eq!(texts(&grant.publish), publish);
        prop_assert_eq!(texts(&grant.subscribe), subscribe);
    }

    #[test]
    fn pattern_parse_never_panics(s in "\\PC{0,200}") {
        if let Ok(p) = Pattern::parse(&s) {
            prop_assert_eq!(p.as_str(), s.as_str());
            prop_assert!(!p.as_str().contains(['/', ' ', '\n', '\r', '%', '?', '#']));
        }
    }

    /// `covers` never claims more than `matches` shows, on random channels.
    #[test]
    fn covers_is_sound(
        wide in small_pattern(),
        narrow in small_pattern(),
        channels in proptest::collection::vec("[ab][ab:]{0,5}", 1..20),
    ) {
        if wide.covers(&narrow) {
            for c in channels {
                let c = ChannelName::parse(&c).unwrap();
                prop_assert!(!narrow.matches(&c) || wide.matches(&c), "{} {} {}", wide, narrow, c);
            }
        }
    }

    /// When `covers` says no, a channel that proves it exists.
    #[test]
    fn covers_is_complete(wide in small_pattern(), narrow in small_pattern()) {
        prop_assert!(wide.covers(&wide));
        if !wide.covers(&narrow) {
            let base = narrow.as_str().trim_end_matches('*');
            let witness = [base.to_string(), format!("{base}a"), format!("{base}b")]
                .into_iter()
                .filter_map(|c| ChannelName::parse(&c).ok())
                .find(|c| narrow.matches(c) && !wide.matches(c));
            prop_assert!(witness.is_some(), "{} vs {}", wide, narrow);
        }
    }
}

#[test]
fn publishers_are_the_subject_or_else_the_token() {
    let a = Publisher::of(Some("backend"), "t1");
    assert_eq!(
        a,
        Publisher::of(Some("backend"), "t2"),
        "same sub, any token"
    );
    assert_ne!(a, Publisher::of(Some("other"), "t1"));
    assert_ne!(Publisher::of(None, "t1"), Publisher::of(None, "t2"));
    assert_ne!(
        Publisher::of(None, "backend"),
        Publisher::of(Some("backend"), "x")
    );
    assert_eq!(Publisher::parse(&a.hex()), Some(a));
    for bad in ["", "00", &"g".repeat(32), &"A".repeat(32), &"0".repeat(33)] {
        assert_eq!(Publisher::parse(bad), None, "{bad}");
    }
}
