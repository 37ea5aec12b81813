use super::*;

fn topics(list: &[&str]) -> Topics {
    Topics::parse(list.iter().map(|s| s.to_string()).collect()).unwrap()
}

fn native(exact: &[&str], patterns: &[&str]) -> FilterSpec {
    FilterSpec {
        topic: exact.iter().map(|s| s.to_string()).collect(),
        topic_pattern: patterns.iter().map(|s| s.to_string()).collect(),
        ..FilterSpec::default()
    }
}

fn filter(exact: &[&str], patterns: &[&str]) -> Filter {
    Filter::parse(&native(exact, patterns)).unwrap().unwrap()
}

fn passes(f: &Filter, list: &[&str]) -> bool {
    let t = topics(list);
    f.matches(&EventTopics::new(Some(&t)))
}

fn passes_private(f: &Filter, list: &[&str]) -> bool {
    let t = topics(list);
    f.matches(&EventTopics::new(Some(&t)).private(true))
}

#[test]
fn exact_matchers_compare_bytes() {
    let f = filter(&["https://example.com/books/1", "plain"], &[]);
    assert!(passes(&f, &["https://example.com/books/1"]));
    assert!(passes(&f, &["other", "plain"]), "any topic of the event");
    assert!(!passes(&f, &["https://example.com/books/1/"]));
    assert!(
        !passes(&f, &["https://EXAMPLE.com/books/1"]),
        "no normalising"
    );
    assert!(!passes(&f, &["Plain"]));
    assert!(!f.matches(&EventTopics::new(None)), "no topics, no match");
    assert_eq!(f.exact_only().map(<[String]>::len), Some(2));
}

#[test]
fn patterns_follow_url_pattern() {
    let f = filter(&[], &["https://example.com/books/:id"]);
    assert!(passes(&f, &["https://example.com/books/1"]));
    assert!(
        passes(&f, &["https://example.com/books/abc?x=1#h"]),
        "search and hash"
    );
    assert!(!passes(&f, &["https://example.com/books/1/2"]));
    assert!(!passes(&f, &["https://example.com/books/"]));
    assert!(!passes(&f, &["http://example.com/books/1"]));
    assert!(
        !passes(&f, &["books/1"]),
        "not a URL: no pattern matches it"
    );
    let any = filter(&[], &["*://*/orders/*"]);
    assert!(passes(&any, &["https://a.example/orders/7/lines"]));
    assert!(!passes(&any, &["https://a.example/order/7"]));
    let union = filter(&["x"], &["https://e.com/:a"]);
    assert!(passes(&union, &["x"]) && passes(&union, &["https://e.com/q"]));
    assert!(!passes(&union, &["y", "https://e.com/q/r"]));
    assert_eq!(union.exact_only(), None);
}

#[test]
fn bad_filters_are_400_and_equal_ones_share_a_key() {
    assert!(Filter::parse(&FilterSpec::default()).unwrap().is_none());
    for pattern in ["/relative/:id", "https://e.com/(a", "https://e.com/:"] {
        let err = Filter::parse(&native(&[], &[pattern])).err();
        assert_eq!(err.map(|e| e.status()), Some(400), "{pattern}");
    }
    let long = "x".repeat(1025);
    assert!(Filter::parse(&native(&[], &[long.as_str()])).is_err());
    let many: Vec<String> = (0..=MAX_MATCHERS).map(|i| i.to_string()).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert!(Filter::parse(&native(&many, &[])).is_err());
    assert!(Filter::parse(&native(&["a\r"], &[])).is_err());
    let a = filter(&["b", "a", "b"], &["https://e.com/:x"]);
    let b = filter(&["a", "b"], &["https://e.com/:x", "https://e.com/:x"]);
    assert_eq!((a.spec(), a.key()), (b.spec(), b.key()));
    assert_eq!(a.key().len(), 24);
    assert_ne!(a.key(), filter(&["a"], &[]).key());
    let mercure = FilterSpec {
        mercure: true,
        ..native(&["a"], &[])
    };
    let m = Filter::parse(&mercure).unwrap().unwrap();
    assert_ne!(
        m.key(),
        filter(&["a"], &[]).key(),
        "the framing is part of the key"
    );
    assert!(m.mercure());
}

#[test]
fn specs_travel_whole() {
    let spec = FilterSpec {
        topic: vec!["https://e.com/a b?c=d&e".into(), "é".into()],
        topic_pattern: vec!["https://e.com/:id".into()],
        matchers: vec![
            MatcherSpec::Any,
            MatcherSpec::UriTemplate("https://e.com/{x}".into()),
        ],
        base: Some("https://hub.example/.well-known/mercure".into()),
        private: Some(vec![MatcherSpec::Exact("p".into())]),
        mercure: true,
    };
    let query = format!("transport=sse{}", spec.to_query());
    assert_eq!(FilterSpec::from_call(&query).unwrap(), Some(spec));
    assert_eq!(FilterSpec::from_call("transport=sse").unwrap(), None);
    assert!(FilterSpec::from_call("filter=%7B").is_err());
    let native =
        FilterSpec::from_query("topic=a&topic_pattern=https%3A%2F%2Fe.com%2F%3Aid").unwrap();
    assert_eq!((native.topic.len(), native.topic_pattern.len()), (1, 1));
    assert!(FilterSpec::from_query("topic=%zz").is_err());
    assert!(FilterSpec::from_query("channel=x").unwrap().is_empty());
}

#[test]
fn a_pattern_holds_at_most_sixteen_groups() {
    let sixteen = format!(
        "https://e.com/{}",
        vec![":a"; 16].join("/").replace(":a", "*")
    );
    assert!(Filter::parse(&native(&[], &[sixteen.as_str()])).is_ok());
    let named: Vec<String> = (0..17).map(|i| format!(":p{i}")).collect();
    let seventeen = format!("https://e.com/{}", named.join("/"));
    assert!(Filter::parse(&native(&[], &[seventeen.as_str()])).is_err());
    let https_port = "https://e.com:443/:id";
    assert!(
        Filter::parse(&native(&[], &[https_port])).is_ok(),
        "a port is not a group"
    );
}

#[test]
fn a_hostile_pattern_matches_in_linear_time() {
    // A backtracking engine takes exponential time on this; the regex crate does not.
    let f = filter(&[], &["https://e.com/(a+)+b"]);
    let topic = format!("https://e.com/{}c", "a".repeat(1000));
    assert!(!passes(&f, &[topic.as_str()]));
}

#[test]
fn mercure_matchers_any_templates_and_a_base() {
    let spec = |matchers: Vec<MatcherSpec>| FilterSpec {
        matchers,
        base: Some("https://hub.example/.well-known/mercure".into()),
        mercure: true,
        ..FilterSpec::default()
    };
    let any = Filter::parse(&spec(vec![MatcherSpec::Any]))
        .unwrap()
        .unwrap();
    assert!(passes(&any, &["anything at all"]));
    assert!(!any.matches(&EventTopics::new(None)));
    let template = MatcherSpec::UriTemplate("https://example.com/books/{id}".into());
    let t = Filter::parse(&spec(vec![template])).unwrap().unwrap();
    assert!(passes(&t, &["https://example.com/books/7"]));
    assert!(!passes(&t, &["https://example.com/authors/7"]));
    let relative = MatcherSpec::UrlPattern("/books/:id".into());
    let r = Filter::parse(&spec(vec![relative])).unwrap().unwrap();
    assert!(passes(&r, &["https://hub.example/books/1"]));
    assert!(
        passes(&r, &["/books/2"]),
        "a relative topic resolves against the base"
    );
    assert!(!passes(&r, &["https://other.example/books/1"]));
}

#[test]
fn private_updates_need_a_private_selector() {
    let public_only = filter(&["a", "b"], &[]);
    assert!(passes(&public_only, &["a"]));
    assert!(
        !passes_private(&public_only, &["a"]),
        "no selectors: no private updates"
    );
    let allowed = FilterSpec {
        private: Some(vec![MatcherSpec::Exact("b".into())]),
        ..native(&["a", "b"], &[])
    };
    let allowed = Filter::parse(&allowed).unwrap().unwrap();
    assert!(passes_private(&allowed, &["b"]));
    assert!(
        passes_private(&allowed, &["a", "b"]),
        "selected by a, allowed by b"
    );
    assert!(!passes_private(&allowed, &["a"]));
    assert_eq!(
        allowed.exact_only(),
        None,
        "D1 cannot tell private updates apart"
    );
    let everything = FilterSpec {
        private: Some(vec![MatcherSpec::Any]),
        ..native(&["a"], &[])
    };
    let everything = Filter::parse(&everything).unwrap().unwrap();
    assert!(passes_private(&everything, &["a"]));
    assert!(
        !passes_private(&everything, &["z"]),
        "still only what it selected"
    );
}
