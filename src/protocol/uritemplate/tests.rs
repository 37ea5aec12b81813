use super::*;
use proptest::prelude::*;

fn t(source: &str) -> UriTemplate {
    UriTemplate::parse(source).unwrap()
}

/// RFC 6570 section 3.2, every example: template and its expansion with the section's
/// variables (count, dom, dub, hello, half, var, who, base, path, list, keys, v, x, y,
/// empty, empty_keys, undef).
const RFC_3_2: &[(&str, &str)] = &[
    // 3.2.1 Variable Expansion
    ("{count}", "one,two,three"),
    ("{count*}", "one,two,three"),
    ("{/count}", "/one,two,three"),
    ("{/count*}", "/one/two/three"),
    ("{;count}", ";count=one,two,three"),
    ("{;count*}", ";count=one;count=two;count=three"),
    ("{?count}", "?count=one,two,three"),
    ("{?count*}", "?count=one&count=two&count=three"),
    ("{&count*}", "&count=one&count=two&count=three"),
    // 3.2.2 Simple String Expansion
    ("{var}", "value"),
    ("{hello}", "Hello%20World%21"),
    ("{half}", "50%25"),
    ("O{empty}X", "OX"),
    ("O{undef}X", "OX"),
    ("{x,y}", "1024,768"),
    ("{x,hello,y}", "1024,Hello%20World%21,768"),
    ("?{x,empty}", "?1024,"),
    ("?{x,undef}", "?1024"),
    ("?{undef,y}", "?768"),
    ("{var:3}", "val"),
    ("{var:30}", "value"),
    ("{list}", "red,green,blue"),
    ("{list*}", "red,green,blue"),
    ("{keys}", "semi,%3B,dot,.,comma,%2C"),
    ("{keys*}", "semi=%3B,dot=.,comma=%2C"),
    // 3.2.3 Reserved Expansion
    ("{+var}", "value"),
    ("{+hello}", "Hello%20World!"),
    ("{+half}", "50%25"),
    ("{base}index", "http%3A%2F%2Fexample.com%2Fhome%2Findex"),
    ("{+base}index", "http://example.com/home/index"),
    ("O{+empty}X", "OX"),
    ("O{+undef}X", "OX"),
    ("{+path}/here", "/foo/bar/here"),
    ("here?ref={+path}", "here?ref=/foo/bar"),
    ("up{+path}{var}/here", "up/foo/barvalue/here"),
    ("{+x,hello,y}", "1024,Hello%20World!,768"),
    ("{+path,x}/here", "/foo/bar,1024/here"),
    ("{+path:6}/here", "/foo/b/here"),
    ("{+list}", "red,green,blue"),
    ("{+list*}", "red,green,blue"),
    ("{+keys}", "semi,;,dot,.,comma,,"),
    ("{+keys*}", "semi=;,dot=.,comma=,"),
    // 3.2.4 Fragment Expansion
    ("{#var}", "#value"),
    ("{#hello}", "#Hello%20World!"),
    ("{#half}", "#50%25"),
    ("foo{#empty}", "foo#"),
    ("foo{#undef}", "foo"),
    ("{#x,hello,y}", "#1024,Hello%20World!,768"),
    ("{#path,x}/here", "#/foo/bar,1024/here"),
    ("{#path:6}/here", "#/foo/b/here"),
    ("{#list}", "#red,green,blue"),
    ("{#list*}", "#red,green,blue"),
    ("{#keys}", "#semi,;,dot,.,comma,,"),
    ("{#keys*}", "#semi=;,dot=.,comma=,"),
    // 3.2.5 Label Expansion with Dot-Prefix
    ("{.who}", ".fred"),
    ("{.who,who}", ".fred.fred"),
    ("{.half,who}", ".50%25.fred"),
    ("www{.dom*}", "www.example.com"),
    ("X{.var}", "X.value"),
    ("X{.empty}", "X."),
    ("X{.undef}", "X"),
    ("X{.var:3}", "X.val"),
    ("X{.list}", "X.red,green,blue"),
    ("X{.list*}", "X.red.green.blue"),
    ("X{.keys}", "X.semi,%3B,dot,.,comma,%2C"),
    ("X{.keys*}", "X.semi=%3B.dot=..comma=%2C"),
    ("X{.empty_keys}", "X"),
    ("X{.empty_keys*}", "X"),
    // 3.2.6 Path Segment Expansion
    ("{/who}", "/fred"),
    ("{/who,who}", "/fred/fred"),
    ("{/half,who}", "/50%25/fred"),
    ("{/who,dub}", "/fred/me%2Ftoo"),
    ("{/var}", "/value"),
    ("{/var,empty}", "/value/"),
    ("{/var,undef}", "/value"),
    ("{/var,x}/here", "/value/1024/here"),
    ("{/var:1,var}", "/v/value"),
    ("{/list}", "/red,green,blue"),
    ("{/list*}", "/red/green/blue"),
    ("{/list*,path:4}", "/red/green/blue/%2Ffoo"),
    ("{/keys}", "/semi,%3B,dot,.,comma,%2C"),
    ("{/keys*}", "/semi=%3B/dot=./comma=%2C"),
    // 3.2.7 Path-Style Parameter Expansion
    ("{;who}", ";who=fred"),
    ("{;half}", ";half=50%25"),
    ("{;empty}", ";empty"),
    ("{;v,empty,who}", ";v=6;empty;who=fred"),
    ("{;v,bar,who}", ";v=6;who=fred"),
    ("{;x,y}", ";x=1024;y=768"),
    ("{;x,y,empty}", ";x=1024;y=768;empty"),
    ("{;x,y,undef}", ";x=1024;y=768"),
    ("{;hello:5}", ";hello=Hello"),
    ("{;list}", ";list=red,green,blue"),
    ("{;list*}", ";list=red;list=green;list=blue"),
    ("{;keys}", ";keys=semi,%3B,dot,.,comma,%2C"),
    ("{;keys*}", ";semi=%3B;dot=.;comma=%2C"),
    // 3.2.8 Form-Style Query Expansion
    ("{?who}", "?who=fred"),
    ("{?half}", "?half=50%25"),
    ("{?x,y}", "?x=1024&y=768"),
    ("{?x,y,empty}", "?x=1024&y=768&empty="),
    ("{?x,y,undef}", "?x=1024&y=768"),
    ("{?var:3}", "?var=val"),
    ("{?list}", "?list=red,green,blue"),
    ("{?list*}", "?list=red&list=green&list=blue"),
    ("{?keys}", "?keys=semi,%3B,dot,.,comma,%2C"),
    ("{?keys*}", "?semi=%3B&dot=.&comma=%2C"),
    // 3.2.9 Form-Style Query Continuation
    ("{&who}", "&who=fred"),
    ("{&half}", "&half=50%25"),
    ("?fixed=yes{&x}", "?fixed=yes&x=1024"),
    ("{&x,y,empty}", "&x=1024&y=768&empty="),
    ("{&var:3}", "&var=val"),
    ("{&list}", "&list=red,green,blue"),
    ("{&list*}", "&list=red&list=green&list=blue"),
    ("{&keys}", "&keys=semi,%3B,dot,.,comma,%2C"),
    ("{&keys*}", "&semi=%3B&dot=.&comma=%2C"),
];

#[test]
fn every_rfc_6570_section_3_2_expansion_matches_its_template() {
    for (template, expansion) in RFC_3_2 {
        assert!(t(template).matches(expansion), "{template} ~ {expansion}");
    }
}

#[test]
fn rfc_examples_reject_near_misses() {
    let misses = [
        ("{var}", "val/ue"),
        ("{var:3}", "valu"),
        ("{var:3}", "%41%42%43%44"),
        ("{+path:6}/here", "/foo/ba/here"),
        ("{hello}", "Hello World!"),
        ("{hello}", "Hello%2"),
        ("{/who,who}", "/fred/fred/fred"),
        ("{;empty}", ";empty=="),
        ("{?x,y}", "?y=768&x=1024"),
        ("{?x,y}", "&x=1024"),
        ("{?x,y}", "?x=1024&"),
        ("{x,y}", "a/b"),
        ("{.who}", "fred"),
        ("X{.var}", "Xvalue"),
        ("{?keys*}", "?semi&dot=."),
        ("{;keys*}", ";semi=;dot"),
        ("?fixed=yes{&x}", "?fixed=no&x=1"),
        ("{keys*}", "semi=a=b"),
    ];
    for (template, s) in misses {
        assert!(!t(template).matches(s), "{template} !~ {s}");
    }
}

#[test]
fn a_simple_variable_is_one_segment_and_may_be_empty() {
    let books = t("https://example.com/books/{id}");
    assert!(books.matches("https://example.com/books/1"));
    assert!(books.matches("https://example.com/books/caf%C3%A9"));
    assert!(books.matches("https://example.com/books/"), "id = \"\"");
    assert!(!books.matches("https://example.com/books/1/2"));
    assert!(!books.matches("https://example.com/books"));
    assert!(
        !books.matches("https://example.com/books/café"),
        "values are encoded"
    );
    assert!(!books.matches("https://example.com/books/1?x"));
    assert!(!books.matches("xhttps://example.com/books/1"), "anchored");
    assert!(
        !books.matches("https://example.com/books/1\n"),
        "anchored at the end"
    );
    assert!(t("https://example.com/{+rest}").matches("https://example.com/a/b?c#d"));
}

#[test]
fn mercure_conformance_suite_selectors() {
    let random = "3f9a1b2c3d4e5f60718293a4b5c6d7e8f9012345";
    let matching = t("https://example.net/foo/{random}");
    assert!(matching.matches(&format!("https://example.net/foo/{random}")));
    assert!(!matching.matches("https://example.net/foo/will-not-match}"));
    assert!(!t("https://example.net/bar/{var}").matches("https://example.net/foo/will-not-match}"));
}

#[test]
fn iri_literals_match_as_written_or_encoded() {
    let cafe = t("https://example.com/café/{id}");
    assert!(cafe.matches("https://example.com/café/1"));
    assert!(cafe.matches("https://example.com/caf%C3%A9/1"));
    assert!(cafe.matches("https://example.com/caf%c3%a9/1"));
    assert!(!cafe.matches("https://example.com/cafe/1"));
    let escaped = t("a%20b");
    assert!(escaped.matches("a%20b") && !escaped.matches("a b"));
    let plain = t("https://example.com/a.b+c(d)*$");
    assert!(plain.matches("https://example.com/a.b+c(d)*$"));
    assert!(
        !plain.matches("https://example.com/aXb+c(d)*$"),
        "literals are not regex"
    );
}

#[test]
fn malformed_templates_are_400() {
    let bad = [
        "{",
        "}",
        "a}b",
        "{a",
        "{}",
        "{,}",
        "{a,}",
        "{,a}",
        "{a b}",
        "{ a}",
        "{a }",
        "{/id*",
        "/id*}",
        "{/?id}",
        "{var:prefix}",
        "{hello:2*}",
        "{??hello}",
        "{!hello}",
        "{=path}",
        "{$var}",
        "{|var*}",
        "{*keys?}",
        "{?empty=default,var}",
        "{a:0}",
        "{a:01}",
        "{a:10000}",
        "{a:}",
        "{a*:3}",
        "{a**}",
        "{.a.}",
        "{a..b}",
        "{.}",
        "{a%2}",
        "{a%zz}",
        "{{a}}",
        "a{b{c}d}",
        "with space",
        "quote\"",
        "back\\slash",
        "a<b>",
        "caret^",
        "grave`",
        "pipe|",
        "tick'",
        "%",
        "%4",
        "%zz",
        "tab\t",
        "nul\0",
        "\u{85}",
        "\u{fdd0}",
        "\u{fffe}",
        "\u{e0001}",
        "{/people/{~thing}}",
        "/sparql{?query,default-graph-uri}",
        "/resolution{?x, y}",
    ];
    for source in bad {
        let err = UriTemplate::parse(source).unwrap_err();
        assert_eq!(err.status(), 400, "{source:?}");
    }
    for good in [
        "",
        "plain",
        "{a.b}",
        "{a_1%20b}",
        "{var:100}",
        "{?a,b*,c:3}",
        "{/list*,path:4}",
        "\u{e000}{x}",
        "\u{10fffd}",
        "%7Bnot%7D",
    ] {
        assert!(UriTemplate::parse(good).is_ok(), "{good:?}");
    }
}

#[test]
fn templates_past_the_limits_are_413() {
    let long = format!("https://example.com/{}", "a".repeat(MAX_TOPIC_BYTES));
    assert_eq!(UriTemplate::parse(&long).unwrap_err().status(), 413);
    let at_limit = "a".repeat(MAX_TOPIC_BYTES);
    assert!(UriTemplate::parse(&at_limit).unwrap().matches(&at_limit));
    for heavy in ["{a:9999}", "{a:100}{b:100}", "{+a:200}"] {
        assert_eq!(
            UriTemplate::parse(heavy).unwrap_err().status(),
            413,
            "{heavy}"
        );
    }
    let wide = format!("{{?{}}}", vec!["x"; MAX_EXPRESSION_VARIABLES + 1].join(","));
    assert_eq!(UriTemplate::parse(&wide).unwrap_err().status(), 413);
    let malformed = format!("{{{}}}", ",".repeat(MAX_EXPRESSION_VARIABLES + 1));
    assert_eq!(UriTemplate::parse(&malformed).unwrap_err().status(), 400);
}

#[test]
fn the_most_variables_in_one_expression_compile_and_keep_their_order() {
    let names: Vec<String> = (0..MAX_EXPRESSION_VARIABLES)
        .map(|i| format!("v{i}"))
        .collect();
    let query = t(&format!("{{?{}}}", names.join(",")));
    assert!(query.matches("?v0=a&v63=b") && query.matches("?v5=") && query.matches(""));
    assert!(!query.matches("?v63=b&v0=a") && !query.matches("?v64=a"));
    let specs: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if i % 2 == 0 {
                n.clone()
            } else {
                format!("{n}*")
            }
        })
        .collect();
    let mixed = t(&format!("{{{}}}", specs.join(",")));
    assert!(mixed.matches("a,d=e,f") && !mixed.matches("a/b"));
    let same = t(&format!(
        "{{/{}}}",
        vec!["x"; MAX_EXPRESSION_VARIABLES].join(",")
    ));
    assert!(same.matches("/a/b/c") && same.matches(&"/a".repeat(64)));
    assert!(!same.matches(&"/a".repeat(65)));
}

proptest! {
    #[test]
    fn parse_and_match_never_panic(source in "\\PC{0,64}", s in "\\PC{0,256}") {
        if let Ok(tpl) = UriTemplate::parse(&source) {
            let _ = tpl.matches(&s);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn matching_long_hostile_input_is_fast(
        filler in "[a-z%,=&;/.{}0-9]{1,16}",
        repeat in 1000usize..20000,
    ) {
        let templates = [
            "{+a}{+b}{+c}{+d}{#e}",
            "{?a*,b*,c*}{&d*}",
            "{/a*,b*,c*}{.d*}",
            "{a:100}{b}{c}",
            "https://example.com/{x}/{y}{?z*}",
        ];
        let input = filler.repeat(repeat);
        for source in templates {
            let tpl = UriTemplate::parse(source).unwrap();
            let start = std::time::Instant::now();
            let _ = tpl.matches(&input);
            prop_assert!(start.elapsed() < std::time::Duration::from_secs(2), "{source}");
        }
    }
}
