use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::Hmac;
use sha2::Sha256;

const KEY: &[u8] = b"!ChangeThisMercureHubJWTSecretKey!";
const AUD: &str = "https://localhost/.well-known/mercure";
const ISS: &str = "https://localhost";
const NOW: i64 = 1_700_000_000;
const FAR: i64 = 4_102_444_800;
const V1_HEADER: &str = r#"{"alg":"HS256","typ":"at+jwt"}"#;

/// Mercure's conformance-suite tokens, verbatim.
const SUITE_0X: &str = "eyJhbGciOiJIUzI1NiJ9.eyJtZXJjdXJlIjp7InB1Ymxpc2giOlsiKiJdLCJzdWJzY3JpYmUiOlsiKiJdfX0.bVXdlWXwfw9ySx7-iV5OpUSHo34RkjUdVzDLBcc6l_g";
const SUITE_1X: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJhdWQiOiJodHRwczovL2xvY2FsaG9zdC8ud2VsbC1rbm93bi9tZXJjdXJlIiwiaXNzIjoiaHR0cHM6Ly9sb2NhbGhvc3QiLCJhdXRob3JpemF0aW9uX2RldGFpbHMiOlt7InR5cGUiOiJodHRwczovL21lcmN1cmUucm9ja3MvYXV0aG9yaXphdGlvbi1kZXRhaWwiLCJhY3Rpb25zIjpbInB1Ymxpc2giXSwidG9waWNzIjpbeyJtYXRjaCI6IioifV19LHsidHlwZSI6Imh0dHBzOi8vbWVyY3VyZS5yb2Nrcy9hdXRob3JpemF0aW9uLWRldGFpbCIsImFjdGlvbnMiOlsic3Vic2NyaWJlIl0sInRvcGljcyI6W3sibWF0Y2giOiIqIn1dfV0sImV4cCI6NDEwMjQ0NDgwMH0.z_S8IP5WZsCK8h3pcq0PB5zvJE0OdTrGA70khAYJQy4";

fn keys() -> MercureKeys {
    MercureKeys {
        publisher: KEY.to_vec(),
        subscriber: KEY.to_vec(),
        audience: AUD.into(),
        issuer: ISS.into(),
    }
}

/// Any header and claims text, HS256-signed with `key`.
fn forge(header: &str, claims: &str, key: &[u8]) -> String {
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s.as_bytes());
    let input = format!("{}.{}", b64(header), b64(claims));
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn legacy(claims: &str) -> String {
    forge(r#"{"alg":"HS256"}"#, claims, KEY)
}

/// A 1.0 token for this hub carrying `details` (JSON text of the array).
fn access(details: &str) -> String {
    let claims =
        format!(r#"{{"aud":"{AUD}","iss":"{ISS}","exp":{FAR},"authorization_details":{details}}}"#);
    forge(V1_HEADER, &claims, KEY)
}

fn detail(actions: &str, topics: &str) -> String {
    format!(r#"{{"type":"{DETAIL_TYPE}","actions":{actions},"topics":{topics}}}"#)
}

fn check(token: &str) -> Result<MercureGrant, MercureAuthError> {
    verify(token, KEY, &keys(), NOW)
}

/// A stand-in for the compiled matchers: exact bytes, and one trailing `:id` / `{id}`
/// segment for patterns and templates.
fn toy(spec: &MatcherSpec, topic: &str) -> bool {
    let segment = |prefix: &str| {
        topic
            .strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
    };
    match spec {
        MatcherSpec::Any => true,
        MatcherSpec::Exact(s) => s == topic,
        MatcherSpec::UrlPattern(p) => p.strip_suffix(":id").is_some_and(segment),
        MatcherSpec::UriTemplate(t) => t.strip_suffix("{id}").is_some_and(segment),
    }
}

fn topics(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn suite_0x_token_without_exp_is_accepted() {
    let grant = check(SUITE_0X).unwrap();
    assert!(!grant.v1);
    assert_eq!(grant.exp, None);
    assert!(grant.may_publish(&topics(&["anything", "https://x/y"]), toy));
    assert_eq!(grant.subscribe_selectors(), vec![MatcherSpec::Any]);
}

#[test]
fn legacy_exp_is_enforced_when_present() {
    let past = legacy(&format!(r#"{{"exp":{}}}"#, NOW - CLOCK_SKEW_SECONDS - 1));
    assert_eq!(check(&past), Err(MercureAuthError::InvalidToken));
    let within_skew = legacy(&format!(r#"{{"exp":{}}}"#, NOW - CLOCK_SKEW_SECONDS));
    assert!(check(&within_skew).is_ok());
    let future = check(&legacy(r#"{"exp":4102444800}"#)).unwrap();
    assert_eq!(future.exp, Some(FAR));
    let fraction = check(&legacy(r#"{"exp":4102444800.999999}"#)).unwrap();
    assert_eq!(fraction.exp, Some(FAR), "NumericDate may have a fraction");
    let early = legacy(&format!(r#"{{"nbf":{}}}"#, NOW + CLOCK_SKEW_SECONDS + 1));
    assert_eq!(check(&early), Err(MercureAuthError::InvalidToken));
}

#[test]
fn wrong_key_tampering_and_empty_key_are_refused() {
    assert_eq!(
        verify(SUITE_0X, b"another key", &keys(), NOW),
        Err(MercureAuthError::InvalidToken)
    );
    assert_eq!(
        verify(SUITE_0X, b"", &keys(), NOW),
        Err(MercureAuthError::InvalidToken)
    );
    let empty_key = forge(r#"{"alg":"HS256"}"#, "{}", b"");
    assert!(
        verify(&empty_key, b"", &keys(), NOW).is_err(),
        "anyone can sign with no key"
    );
    let (head, rest) = SUITE_0X.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let other = URL_SAFE_NO_PAD.encode(br#"{"mercure":{"publish":["x"]}}"#);
    assert!(check(&format!("{head}.{other}.{sig}")).is_err());
    for bad in ["", "a.b", "a.b.c.d", &format!("{SUITE_0X}x")] {
        assert_eq!(check(bad), Err(MercureAuthError::InvalidToken), "{bad}");
    }
    let huge = legacy(&format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_TOKEN_BYTES)));
    assert_eq!(check(&huge), Err(MercureAuthError::InvalidToken));
}

#[test]
fn only_hs256_is_accepted() {
    let claims = r#"{"mercure":{"publish":["*"]}}"#;
    for header in [
        r#"{"alg":"none"}"#,
        r#"{"alg":"None","typ":"at+jwt"}"#,
        r#"{"alg":"HS512"}"#,
        r#"{"alg":"RS256"}"#,
        r#"{"typ":"JWT"}"#,
        r#"{"alg":"HS256","crit":["exp"]}"#,
        r#"{"alg":"HS256","typ":"at+jwt","typ":"JWT"}"#,
        r#"{"alg":"HS256","typ":1}"#,
        r#"["HS256"]"#,
    ] {
        let token = forge(header, claims, KEY);
        assert_eq!(
            check(&token),
            Err(MercureAuthError::InvalidToken),
            "{header}"
        );
    }
    let unsigned = format!("{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#));
    let unsigned = format!("{unsigned}{}.", URL_SAFE_NO_PAD.encode(claims));
    assert_eq!(check(&unsigned), Err(MercureAuthError::InvalidToken));
}

#[test]
fn suite_1x_token_is_accepted() {
    let grant = check(SUITE_1X).unwrap();
    assert!(grant.v1);
    assert_eq!(grant.exp, Some(FAR));
    assert!(grant.may_publish(&topics(&["a", "https://example.net/foo/1"]), toy));
    assert_eq!(grant.subscribe_selectors(), vec![MatcherSpec::Any]);
}

#[test]
fn one_detail_with_both_actions_and_no_sub_client_id_iat_or_jti_is_accepted() {
    let token = access(&format!(
        "[{}]",
        detail(r#"["publish","subscribe"]"#, r#"[{"match":"*"}]"#)
    ));
    let grant = check(&token).unwrap();
    assert!(grant.v1 && grant.may_publish(&topics(&["t"]), toy));
    assert!(grant.may_receive(&topics(&["t"]), toy));
}

#[test]
fn access_tokens_need_exp_our_audience_and_our_issuer() {
    let details = format!("[{}]", detail(r#"["publish"]"#, r#"[{"match":"*"}]"#));
    let with = |claims: String| forge(V1_HEADER, &claims, KEY);
    let ok = |aud: &str, iss: &str, times: &str| {
        let claims =
            format!(r#"{{"aud":{aud},"iss":{iss},{times}"authorization_details":{details}}}"#);
        check(&with(claims))
    };
    let aud = format!("\"{AUD}\"");
    let iss = format!("\"{ISS}\"");
    let exp = format!(r#""exp":{FAR},"#);
    assert!(ok(&aud, &iss, &exp).is_ok());
    let micro = format!(r#""exp":{FAR}.25,"nbf":{}.5,"#, NOW - 60);
    assert_eq!(ok(&aud, &iss, &micro).unwrap().exp, Some(FAR));
    assert!(
        ok(&format!(r#"["https://other/",{aud}]"#), &iss, &exp).is_ok(),
        "aud array"
    );
    let bad = [
        ok(&aud, &iss, ""),
        ok(&aud, &iss, &format!(r#""exp":{},"#, NOW - 100)),
        ok(&aud, &iss, &format!(r#""exp":{FAR},"nbf":{},"#, NOW + 100)),
        ok(r#""https://localhost/""#, &iss, &exp),
        ok(r#"["https://other/"]"#, &iss, &exp),
        ok("null", &iss, &exp),
        ok(&aud, r#""https://localhost/""#, &exp),
        ok(&aud, "null", &exp),
        ok(&aud, r#"["https://localhost"]"#, &exp),
    ];
    for (i, result) in bad.into_iter().enumerate() {
        assert_eq!(result, Err(MercureAuthError::InvalidToken), "case {i}");
    }
    let mut unconfigured = keys();
    unconfigured.issuer.clear();
    let token = with(format!(
        r#"{{"aud":{aud},"iss":"",{exp}"authorization_details":[]}}"#
    ));
    assert!(verify(&token, KEY, &unconfigured, NOW).is_err());
}

#[test]
fn typ_names_the_profile() {
    let claims = format!(
        r#"{{"aud":"{AUD}","iss":"{ISS}","exp":{FAR},"authorization_details":[{}]}}"#,
        detail(r#"["publish"]"#, r#"[{"match":"*"}]"#)
    );
    for typ in [
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
        "Application/At+JWT",
    ] {
        let header = format!(r#"{{"alg":"HS256","typ":"{typ}"}}"#);
        assert!(check(&forge(&header, &claims, KEY)).unwrap().v1, "{typ}");
    }
    // Without at+jwt, the same claims are a 0.x token: authorization_details means nothing.
    for header in [r#"{"alg":"HS256"}"#, r#"{"alg":"HS256","typ":"JWT"}"#] {
        let grant = check(&forge(header, &claims, KEY)).unwrap();
        assert!(!grant.v1);
        assert!(!grant.may_publish(&topics(&["t"]), toy));
        assert!(grant.subscribe_selectors().is_empty());
    }
}

#[test]
fn unknown_match_type_rejects_the_token() {
    for topics in [
        r#"[{"match":"a","match_type":"regex"}]"#,
        r#"[{"match":"*","match_type":"regex"}]"#,
        r#"[{"match":"a","match_type":"Exact"}]"#,
        r#"[{"match":"a"},{"match":"b","match_type":"uritemplate"}]"#,
    ] {
        let token = access(&format!("[{}]", detail(r#"["subscribe"]"#, topics)));
        assert_eq!(
            check(&token),
            Err(MercureAuthError::InvalidToken),
            "{topics}"
        );
    }
}

#[test]
fn matchers_are_exact_by_default_and_url_patterns_must_compile() {
    let topics_json = r#"[{"match":"a"},{"match":"b","match_type":"exact"},
        {"match":"https://e.com/:id","match_type":"urlpattern"},
        {"match":"/.well-known/mercure/subscriptions/exact/:t/:s","match_type":"urlpattern"},
        {"match":"*","match_type":"urlpattern"},{"match":"a"}]"#;
    let token = access(&format!("[{}]", detail(r#"["subscribe"]"#, topics_json)));
    let grant = check(&token).unwrap();
    assert_eq!(grant.subscribe_selectors(), vec![MatcherSpec::Any]);
    let token = access(&format!(
        "[{}]",
        detail(
            r#"["subscribe"]"#,
            &topics_json.replace(r#"{"match":"*","match_type":"urlpattern"},"#, "")
        )
    ));
    assert_eq!(
        check(&token).unwrap().subscribe_selectors(),
        vec![
            MatcherSpec::Exact("a".into()),
            MatcherSpec::Exact("b".into()),
            MatcherSpec::UrlPattern("https://e.com/:id".into()),
            MatcherSpec::UrlPattern("/.well-known/mercure/subscriptions/exact/:t/:s".into()),
        ]
    );
    for bad in [r#""https://e.com/(a""#, r#""https://e.com/:""#] {
        let t = format!(r#"[{{"match":{bad},"match_type":"urlpattern"}}]"#);
        let token = access(&format!("[{}]", detail(r#"["subscribe"]"#, &t)));
        assert_eq!(check(&token), Err(MercureAuthError::InvalidToken), "{bad}");
    }
}

#[test]
fn unknown_actions_are_ignored() {
    let token = access(&format!(
        "[{}]",
        detail(r#"["read","publish","future2"]"#, r#"[{"match":"x"}]"#)
    ));
    let grant = check(&token).unwrap();
    assert!(grant.may_publish(&topics(&["x"]), toy));
    assert!(grant.subscribe_selectors().is_empty());
    let only_unknown = access(&format!(
        "[{}]",
        detail(r#"["read"]"#, r#"[{"match":"*"}]"#)
    ));
    let grant = check(&only_unknown).unwrap();
    assert!(!grant.may_publish(&topics(&["x"]), toy) && !grant.may_receive(&topics(&["x"]), toy));
}

#[test]
fn a_malformed_mercure_detail_rejects_the_whole_token() {
    let good = detail(r#"["publish"]"#, r#"[{"match":"*"}]"#);
    let bad_details = [
        detail(r#"["publish",1]"#, r#"[{"match":"x"}]"#),
        detail("[]", r#"[{"match":"x"}]"#),
        detail(r#"["publish"]"#, "[]"),
        detail(r#""publish""#, r#"[{"match":"x"}]"#),
        detail(r#"["publish"]"#, r#"["x"]"#),
        detail(r#"["publish"]"#, r#"[["x"]]"#),
        detail(r#"["publish"]"#, r#"[{"match_type":"exact"}]"#),
        detail(r#"["publish"]"#, r#"[{"match":""}]"#),
        detail(r#"["publish"]"#, r#"[{"match":"a\u0000"}]"#),
        detail(r#"["publish"]"#, r#"[null]"#),
        format!(r#"{{"type":"{DETAIL_TYPE}","topics":[{{"match":"x"}}]}}"#),
        format!(
            r#"{{"type":"{DETAIL_TYPE}","actions":["subscribe"],"topics":[{{"match":"x"}}],"payload":[1]}}"#
        ),
        format!(
            r#"{{"type":"{DETAIL_TYPE}","actions":["subscribe"],"actions":["publish"],"topics":[{{"match":"x"}}]}}"#
        ),
        format!(r#"["{DETAIL_TYPE}",["publish"],[{{"match":"x"}}]]"#),
        r#"{"type":7}"#.to_string(),
        r#"["payment_initiation"]"#.to_string(),
        detail(r#"["publish"]"#, r#"[["x",null]]"#),
        "null".to_string(),
    ];
    for bad in bad_details {
        let token = access(&format!("[{good},{bad}]"));
        assert_eq!(check(&token), Err(MercureAuthError::InvalidToken), "{bad}");
    }
    let not_an_array = access(&good);
    assert_eq!(check(&not_an_array), Err(MercureAuthError::InvalidToken));
}

#[test]
fn other_detail_types_are_ignored_whatever_their_shape() {
    let others =
        r#"{"type":"payment_initiation","topics":"not mercure's","actions":[1]},{"locations":[]}"#;
    let token = access(&format!(
        "[{others},{}]",
        detail(r#"["publish"]"#, r#"[{"match":"x"}]"#)
    ));
    assert!(check(&token).unwrap().may_publish(&topics(&["x"]), toy));
    let grant = check(&access(&format!("[{others}]"))).unwrap();
    assert!(!grant.may_publish(&topics(&["x"]), toy));
}

#[test]
fn selectors_are_capped_in_number_and_length() {
    let entries = |n: usize| {
        let list: Vec<String> = (0..n).map(|i| format!(r#"{{"match":"{i}"}}"#)).collect();
        format!("[{}]", list.join(","))
    };
    let split = format!(
        "[{},{}]",
        detail(r#"["publish"]"#, &entries(50)),
        detail(r#"["subscribe"]"#, &entries(MAX_SELECTORS - 50))
    );
    assert!(check(&access(&split)).is_ok());
    let over = format!(
        "[{},{}]",
        detail(r#"["publish"]"#, &entries(50)),
        detail(r#"["subscribe"]"#, &entries(MAX_SELECTORS - 49))
    );
    assert_eq!(check(&access(&over)), Err(MercureAuthError::InvalidToken));
    let long = |n: usize| {
        let t = format!(r#"[{{"match":"{}"}}]"#, "x".repeat(n));
        access(&format!("[{}]", detail(r#"["publish"]"#, &t)))
    };
    assert!(check(&long(MAX_SELECTOR_BYTES)).is_ok());
    assert_eq!(
        check(&long(MAX_SELECTOR_BYTES + 1)),
        Err(MercureAuthError::InvalidToken)
    );
    let many: Vec<String> = (0..=MAX_SELECTORS).map(|i| format!("\"{i}\"")).collect();
    let legacy_over = legacy(&format!(
        r#"{{"mercure":{{"subscribe":[{}]}}}}"#,
        many.join(",")
    ));
    assert_eq!(check(&legacy_over), Err(MercureAuthError::InvalidToken));
}

#[test]
fn legacy_claims_selectors_and_payload() {
    let token = legacy(
        r#"{"mercure":{"publish":["a"]},
           "https://mercure.rocks/":{"publish":["https://e.com/{id}"],"subscribe":["b","*"],
           "payload":{ "user" : "x y", "n": [1, 2.50] }}}"#,
    );
    let grant = check(&token).unwrap();
    assert!(
        !grant.may_publish(&topics(&["a"]), toy),
        "the namespaced claim wins"
    );
    assert!(
        grant.may_publish(&topics(&["https://e.com/{id}"]), toy),
        "exact first"
    );
    assert!(
        grant.may_publish(&topics(&["https://e.com/7"]), toy),
        "then the template"
    );
    assert!(!grant.may_publish(&topics(&["https://e.com/7/8"]), toy));
    assert_eq!(grant.subscribe_selectors(), vec![MatcherSpec::Any]);
    assert_eq!(
        grant.payload_for("anything", toy).as_deref(),
        Some(r#"{"user":"x y","n":[1,2.50]}"#)
    );
    let no_publish = check(&legacy(r#"{"mercure":{"subscribe":["b"]}}"#)).unwrap();
    assert!(!no_publish.may_publish(&topics(&["b"]), toy));
    assert_eq!(
        no_publish.subscribe_selectors(),
        vec![MatcherSpec::Exact("b".into())]
    );
    assert_eq!(no_publish.payload_for("b", toy), None);
    let scalar_payload = check(&legacy(r#"{"mercure":{"payload":"plain"}}"#)).unwrap();
    assert_eq!(
        scalar_payload.payload_for("b", toy).as_deref(),
        Some(r#""plain""#)
    );
    for bad in [
        r#"{"mercure":[["*"],["*"],null]}"#,
        r#"{"mercure":{"publish":"*"}}"#,
        r#"{"mercure":{"publish":[1]}}"#,
        r#"{"mercure":{"subscribe":["a\nb"]}}"#,
        r#"{"mercure":{"publish":["*"]},"mercure":{"publish":["*"]}}"#,
        r#"{"exp":"soon"}"#,
        r#"[{"mercure":{}}]"#,
    ] {
        assert_eq!(
            check(&legacy(bad)),
            Err(MercureAuthError::InvalidToken),
            "{bad}"
        );
    }
}

#[test]
fn may_publish_needs_every_topic() {
    let token = legacy(r#"{"mercure":{"publish":["a","https://e.com/{id}"]}}"#);
    let grant = check(&token).unwrap();
    assert!(grant.may_publish(&topics(&["a"]), toy));
    assert!(grant.may_publish(&topics(&["a", "https://e.com/1"]), toy));
    assert!(!grant.may_publish(&topics(&["a", "b"]), toy));
    assert!(!grant.may_publish(&[], toy), "no topic, nothing to allow");
    let nothing = check(&legacy(r#"{"mercure":{"publish":[]}}"#)).unwrap();
    assert!(!nothing.may_publish(&topics(&["a"]), |_, _| true));
}

#[test]
fn may_receive_needs_one_topic() {
    let token = access(&format!(
        "[{}]",
        detail(r#"["subscribe"]"#, r#"[{"match":"u/42"}]"#)
    ));
    let grant = check(&token).unwrap();
    assert!(grant.may_receive(&topics(&["books/1", "u/42"]), toy));
    assert!(!grant.may_receive(&topics(&["books/1"]), toy));
    assert!(!grant.may_publish(&topics(&["u/42"]), toy));
}

#[test]
fn payload_comes_from_the_first_matching_subscribe_detail() {
    let details = format!(
        r#"[{},{{"type":"{DETAIL_TYPE}","actions":["subscribe"],"topics":[{{"match":"https://e.com/foo"}}],"payload":{{"custom1":1}}}},
          {{"type":"{DETAIL_TYPE}","actions":["subscribe"],"topics":[{{"match":"https://e.com/bar/:id","match_type":"urlpattern"}}],"payload":{{"custom2":2}}}},
          {},
          {{"type":"{DETAIL_TYPE}","actions":["subscribe"],"topics":[{{"match":"*"}}],"payload":{{"custom3":3}}}}]"#,
        detail(r#"["publish"]"#, r#"[{"match":"*"}]"#),
        detail(r#"["subscribe"]"#, r#"[{"match":"https://e.com/plain"}]"#),
    );
    let grant = check(&access(&details)).unwrap();
    let payload = |m: &str| grant.payload_for(m, toy);
    assert_eq!(
        payload("https://e.com/foo").as_deref(),
        Some(r#"{"custom1":1}"#)
    );
    assert_eq!(
        payload("https://e.com/bar/:id").as_deref(),
        Some(r#"{"custom2":2}"#)
    );
    assert_eq!(
        payload("https://e.com/bar/9").as_deref(),
        Some(r#"{"custom2":2}"#)
    );
    assert_eq!(
        payload("https://e.com/plain"),
        None,
        "first match has no payload"
    );
    assert_eq!(
        payload("other").as_deref(),
        Some(r#"{"custom3":3}"#),
        "* is the default"
    );
    let no_default = access(&format!(
        "[{}]",
        detail(r#"["subscribe"]"#, r#"[{"match":"a"}]"#)
    ));
    assert_eq!(check(&no_default).unwrap().payload_for("b", toy), None);
}

#[test]
fn the_header_wins_then_0x_query_then_cookie() {
    let cookies = "a=1; mercureAuthorization=\"from-cookie\"; __Secure-mercure_access_token=secure; mercure_access_token=plain";
    let found = |auth, cookie, query, v1| find_token(auth, cookie, query, v1).unwrap();
    let tok = |s: &str, from| Some((s.to_string(), from));
    assert_eq!(
        found(Some("bearer  hdr "), Some(cookies), Some("q"), false),
        tok("hdr", TokenFrom::Header)
    );
    assert_eq!(
        found(Some("BEARER hdr"), Some("garbage;;="), Some("q"), true),
        tok("hdr", TokenFrom::Header)
    );
    assert_eq!(
        found(None, Some(cookies), Some("q"), false),
        tok("q", TokenFrom::Query)
    );
    assert_eq!(
        found(None, Some(cookies), Some(""), false),
        tok("from-cookie", TokenFrom::Cookie)
    );
    assert_eq!(
        found(None, Some(cookies), Some("q"), true),
        tok("secure", TokenFrom::Cookie)
    );
    assert_eq!(
        found(None, Some("mercure_access_token=plain; x=y"), None, true),
        tok("plain", TokenFrom::Cookie)
    );
    assert_eq!(
        found(None, Some("mercureAuthorization=t"), Some("q"), true),
        None
    );
    assert_eq!(
        found(
            None,
            Some("xmercureAuthorization=t; mercureAuthorization="),
            None,
            false
        ),
        None
    );
    assert_eq!(found(None, None, None, false), None);
}

#[test]
fn a_malformed_authorization_header_is_invalid_request() {
    for header in [
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer a b",
        "Bearera",
    ] {
        for v1 in [false, true] {
            let result = find_token(Some(header), Some("mercureAuthorization=t"), Some("q"), v1);
            assert_eq!(result, Err(MercureAuthError::InvalidRequest), "{header:?}");
        }
    }
}

#[test]
fn errors_carry_rfc_6750_challenges() {
    use MercureAuthError::*;
    let statuses: Vec<u16> = [Missing, InvalidRequest, InvalidToken, InsufficientScope]
        .iter()
        .map(MercureAuthError::status)
        .collect();
    assert_eq!(statuses, [401, 400, 401, 403]);
    const META: &str = "https://h/.well-known/oauth-protected-resource/.well-known/mercure";
    let meta = Some(META);
    let challenge = |e: MercureAuthError, v1, m| e.www_authenticate(v1, m).unwrap();
    assert_eq!(challenge(Missing, false, None), "Bearer");
    assert_eq!(
        challenge(Missing, false, meta),
        "Bearer",
        "0.x has no metadata"
    );
    assert_eq!(
        challenge(Missing, true, meta),
        format!("Bearer resource_metadata=\"{}\"", META)
    );
    assert_eq!(
        challenge(InvalidToken, false, None),
        r#"Bearer error="invalid_token""#
    );
    assert_eq!(
        challenge(InvalidToken, true, meta),
        format!(
            r#"Bearer error="invalid_token", resource_metadata="{}""#,
            META
        )
    );
    assert_eq!(
        challenge(InsufficientScope, true, None),
        r#"Bearer error="insufficient_scope""#
    );
    assert_eq!(
        challenge(InvalidRequest, false, None),
        r#"Bearer error="invalid_request""#
    );
    assert_eq!(
        challenge(Missing, true, Some("a\"b\\c\r\nd")),
        r#"Bearer resource_metadata="a\"b\\cd""#
    );
}

#[test]
fn keys_debug_hides_the_secrets() {
    let shown = format!("{:?}", keys());
    assert!(!shown.contains("ChangeThis") && shown.contains(AUD));
}
