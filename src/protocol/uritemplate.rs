//! RFC 6570 URI Templates (levels 1 to 4) used as matchers, as Mercure 0.x uses them for topic
//! selectors: a string matches when some expansion of the template could give it. Each template
//! is checked against the RFC grammar once and compiled to one anchored `regex::Regex`, which
//! accepts exactly the possible expansions and runs in time linear in its input. Expanding a
//! template with values is not needed here, so it is not implemented.

use super::topics::MAX_TOPIC_BYTES;
use crate::error::Error;
use regex::{Regex, RegexBuilder};

/// The most memory one compiled template may take (the regex crate's program size limit). A
/// plain template takes 1 to 10 KiB. A prefix modifier is matched exactly, as a counted
/// repetition, and costs about 1.7 KiB per character: the prefixes of one template may add up
/// to about 150 characters (`{var:9999}` is refused).
pub const MAX_PROGRAM_BYTES: usize = 256 * 1024;
/// The most variables in one expression. Matching needs one regex nesting level per variable
/// that differs from the one before it (see `push_expression`), and the regex crate allows 250.
pub const MAX_EXPRESSION_VARIABLES: usize = 64;
/// The most memory the lazy DFA of one template may cache; past it, matching stays linear.
const MAX_DFA_BYTES: usize = 256 * 1024;

/// Unreserved characters (RFC 3986 2.3), as the inside of a regex class.
const UNRESERVED: &str = r"A-Za-z0-9\-._\~";
/// Unreserved and reserved characters (RFC 3986 2.2), for `+` and `#` expansions.
const UNRESERVED_RESERVED: &str = r"A-Za-z0-9\-._\~:/?#\[\]@!$\&'()*+,;=";
/// One percent-encoded octet, in either case (RFC 3986 2.1).
const PCT: &str = "%[0-9A-Fa-f]{2}";
/// One Unicode character of a value after percent-encoding: a UTF-8 sequence of 1 to 4 octets
/// (a lead octet, then its continuation octets, the shared tails factored out).
const PCT_CHAR: &str = "%(?:[0-7][0-9A-Fa-f]|(?:[C-Dc-d][0-9A-Fa-f]|(?:[Ee][0-9A-Fa-f]\
|[Ff][0-7]%[89ABab][0-9A-Fa-f])%[89ABab][0-9A-Fa-f])%[89ABab][0-9A-Fa-f])";

/// A valid RFC 6570 template and its matcher.
#[derive(Debug, Clone)]
pub struct UriTemplate {
    source: String,
    regex: Regex,
}

impl UriTemplate {
    /// Validates `source` against the full RFC 6570 grammar and compiles it. A malformed template
    /// is a 400; a valid one past a limit (`MAX_TOPIC_BYTES` long, `MAX_EXPRESSION_VARIABLES`
    /// in one expression, `MAX_PROGRAM_BYTES` compiled) is a 413 (`Error::TooLarge`), so
    /// callers can tell "not a template" from "a template we refuse to run".
    pub fn parse(source: &str) -> Result<UriTemplate, Error> {
        if source.len() > MAX_TOPIC_BYTES {
            return Err(Error::TooLarge(format!(
                "a URI template is at most {MAX_TOPIC_BYTES} bytes (got {})",
                source.len()
            )));
        }
        let pattern = to_regex(source)?;
        let regex = RegexBuilder::new(&pattern)
            .size_limit(MAX_PROGRAM_BYTES)
            .dfa_size_limit(MAX_DFA_BYTES)
            .build()
            .map_err(|_| {
                Error::TooLarge(format!(
                    "this URI template is too complex to match (over {MAX_PROGRAM_BYTES} bytes \
                     compiled): use fewer or shorter prefix modifiers"
                ))
            })?;
        Ok(UriTemplate {
            source: source.to_string(),
            regex,
        })
    }

    /// True when some expansion of the template gives exactly `s`. An undefined variable
    /// expands to nothing and an empty one to its empty form (RFC 6570 3.2.1), so
    /// `https://example.com/books/{id}` matches `https://example.com/books/` (id = "") but not
    /// `https://example.com/books/1/2` (a simple value cannot hold an unencoded `/`).
    pub fn matches(&self, s: &str) -> bool {
        self.regex.is_match(s)
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

fn malformed(why: &str) -> Error {
    Error::bad_request(format!("malformed URI template (RFC 6570): {why}"))
}

/// The anchored regex of every possible expansion of `template`.
fn to_regex(template: &str) -> Result<String, Error> {
    let mut out = String::from(r"\A");
    let mut rest = template;
    while let Some((literal, after)) = rest.split_once('{') {
        push_literals(literal, &mut out)?;
        let (expression, tail) = after
            .split_once('}')
            .ok_or_else(|| malformed("a '{' is never closed"))?;
        push_expression(expression, &mut out)?;
        rest = tail;
    }
    push_literals(rest, &mut out)?;
    out.push_str(r"\z");
    Ok(out)
}

/// Literal text (RFC 6570 2.1). Characters allowed in a URI are copied by expansion, so they
/// match themselves; other allowed characters (`ucschar`, `iprivate`) are percent-encoded by
/// expansion (3.1), and match either as written (an IRI) or encoded.
fn push_literals(literal: &str, out: &mut String) -> Result<(), Error> {
    let mut chars = literal.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            let triplet = pct_triplet(&mut chars)
                .ok_or_else(|| malformed("a '%' must start a %XX escape"))?;
            out.push_str(&triplet);
        } else if is_uri_literal(c) {
            out.push_str(&regex::escape(c.encode_utf8(&mut [0; 4])));
        } else if is_iri_literal(c) {
            let mut bytes = [0; 4];
            out.push_str("(?:");
            out.push(c);
            out.push('|');
            for b in c.encode_utf8(&mut bytes).bytes() {
                out.push('%');
                out.push_str(&any_case_hex(b));
            }
            out.push(')');
        } else {
            return Err(malformed(&format!(
                "{c:?} may not appear in a template literal"
            )));
        }
    }
    Ok(())
}

/// The two hex digits after a `%`, with the `%`: `None` unless both are hex digits.
fn pct_triplet(chars: &mut std::str::Chars<'_>) -> Option<String> {
    let high = chars.next().filter(char::is_ascii_hexdigit)?;
    let low = chars.next().filter(char::is_ascii_hexdigit)?;
    Some(format!("%{high}{low}"))
}

/// A regex for one octet as `%XX`, upper- or lowercase hex.
fn any_case_hex(b: u8) -> String {
    format!("{b:02X}")
        .chars()
        .map(|d| match d {
            'A'..='F' => format!("[{d}{}]", d.to_ascii_lowercase()),
            _ => d.to_string(),
        })
        .collect()
}

/// ASCII literals of the RFC 6570 grammar: every unreserved or reserved URI character.
fn is_uri_literal(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$&()*+,-./:;=?@[]_~".contains(c)
}

/// Non-ASCII literals of the RFC 6570 grammar: `ucschar` and `iprivate` (RFC 3987).
fn is_iri_literal(c: char) -> bool {
    let cp = u32::from(c);
    let low = cp & 0xFFFF;
    match cp {
        0xA0..=0xD7FF | 0xE000..=0xFDCF | 0xFDF0..=0xFFEF => true,
        0xE0000..=0xE0FFF => false,
        0x10000..=0x10FFFF => low <= 0xFFFD,
        _ => false,
    }
}

/// An expression operator and its expansion rules (RFC 6570 appendix A).
struct Operator {
    first: &'static str,
    sep: &'static str,
    named: bool,
    /// `+` and `#`: reserved characters are copied, not encoded.
    reserved: bool,
}

fn operator(expression: &str) -> Result<(Operator, &str), Error> {
    let op = |first, sep, named, reserved| Operator {
        first,
        sep,
        named,
        reserved,
    };
    let mut chars = expression.chars();
    let rules = match chars.next() {
        Some('+') => op("", ",", false, true),
        Some('#') => op("#", ",", false, true),
        Some('.') => op(".", ".", false, false),
        Some('/') => op("/", "/", false, false),
        Some(';') => op(";", ";", true, false),
        Some('?') => op("?", "&", true, false),
        Some('&') => op("&", "&", true, false),
        Some(c @ ('=' | ',' | '!' | '@' | '|')) => {
            return Err(malformed(&format!("operator {c:?} is reserved")))
        }
        _ => return Ok((op("", ",", false, false), expression)),
    };
    Ok((rules, chars.as_str()))
}

/// A variable's modifier (RFC 6570 2.4).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Modifier {
    Plain,
    /// `:N`, 1 to 9999 characters.
    Prefix(u16),
    /// `*`.
    Explode,
}

fn varspec(spec: &str) -> Result<(&str, Modifier), Error> {
    let (name, modifier) = if let Some(name) = spec.strip_suffix('*') {
        (name, Modifier::Explode)
    } else if let Some((name, length)) = spec.split_once(':') {
        (name, Modifier::Prefix(prefix_length(length)?))
    } else {
        (spec, Modifier::Plain)
    };
    if !is_varname(name) {
        return Err(malformed(&format!("{spec:?} is not a variable name")));
    }
    Ok((name, modifier))
}

/// `max-length`: a positive integer below 10000, without leading zeros.
fn prefix_length(digits: &str) -> Result<u16, Error> {
    let valid = (1..=4).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    valid
        .then(|| digits.parse().ok())
        .flatten()
        .ok_or_else(|| malformed("a prefix length is 1 to 9999"))
}

/// `varname`: `varchar *( ["."] varchar )`, a varchar being ALPHA, DIGIT, `_` or `%XX`.
fn is_varname(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            let mut any = false;
            while let Some(c) = chars.next() {
                let ok = c.is_ascii_alphanumeric()
                    || c == '_'
                    || (c == '%' && pct_triplet(&mut chars).is_some());
                if !ok {
                    return false;
                }
                any = true;
            }
            any
        })
}

/// One `{...}` expression. The expansion is empty when no variable is defined; otherwise the
/// defined variables' expansions, in order, the first after `first` and the others after `sep`.
fn push_expression(expression: &str, out: &mut String) -> Result<(), Error> {
    let (op, list) = operator(expression)?;
    let specs = list
        .split(',')
        .map(varspec)
        .collect::<Result<Vec<_>, _>>()?;
    if specs.len() > MAX_EXPRESSION_VARIABLES {
        return Err(Error::TooLarge(format!(
            "a URI template expression holds at most {MAX_EXPRESSION_VARIABLES} variables"
        )));
    }
    let mut runs: Vec<(String, usize)> = Vec::new();
    for (name, modifier) in specs {
        let item = variable(&op, name, modifier);
        match runs.last_mut() {
            Some((last, count)) if *last == item => *count += 1,
            _ => runs.push((item, 1)),
        }
    }
    let first = regex::escape(op.first);
    let sep = regex::escape(op.sep);
    if op.first == op.sep {
        // Each variable, defined or not, independently.
        for (item, count) in &runs {
            out.push_str(&format!("(?:{sep}{item}){}", repeat(0, *count)));
        }
        return Ok(());
    }
    // Runs of equal items give "one to `count` of them, joined by sep". `seq` matches `first`
    // and a non-empty choice of the runs so far: it grows by one level per run, not by the
    // square of their number.
    let mut seq = String::new();
    for (item, count) in &runs {
        let group = match count {
            1 => item.clone(),
            _ => format!("{item}(?:{sep}{item}){}", repeat(0, count - 1)),
        };
        seq = if seq.is_empty() {
            format!("{first}{group}")
        } else {
            format!("(?:{seq}(?:{sep}{group})?|{first}{group})")
        };
    }
    out.push_str(&format!("(?:{seq})?"));
    Ok(())
}

/// A counted repetition, `?` when it is at most one.
fn repeat(min: usize, max: usize) -> String {
    match (min, max) {
        (0, 1) => "?".to_string(),
        _ => format!("{{{min},{max}}}"),
    }
}

/// The regex of one defined variable's expansion, whatever its value (string, list or
/// associative array) that the modifier allows.
fn variable(op: &Operator, name: &str, modifier: Modifier) -> String {
    let class = if op.reserved {
        UNRESERVED_RESERVED
    } else {
        UNRESERVED
    };
    let value = format!("(?:[{class}]|{PCT})*");
    let name = regex::escape(name);
    match (modifier, op.named) {
        (Modifier::Prefix(n), named) => {
            let unit = if op.reserved {
                format!("(?:[{class}]|{PCT_CHAR}|{PCT})")
            } else {
                format!("(?:[{class}]|{PCT_CHAR})")
            };
            match (named, op.first) {
                (false, _) => format!("{unit}{}", repeat(0, n.into())),
                (true, ";") => format!("{name}(?:={unit}{})?", repeat(1, n.into())),
                (true, _) => format!("{name}={unit}{}", repeat(0, n.into())),
            }
        }
        // A string, a list joined by ",", or pairs joined by "," as "k,v".
        (Modifier::Plain, false) => format!("(?:[{class},]|{PCT})*"),
        (Modifier::Plain, true) => {
            let values = format!("(?:[{class},]|{PCT})*");
            if op.first == ";" {
                format!("{name}(?:={values})?")
            } else {
                format!("{name}={values}")
            }
        }
        // A string, list members joined by sep, or pairs "k=v" joined by sep.
        (Modifier::Explode, false) => {
            let sep = regex::escape(op.sep);
            format!("(?:{value}(?:{sep}{value})*|{value}={value}(?:{sep}{value}={value})*)")
        }
        // Each member as "name=value", or each pair as "key=value"; an empty value is "name"
        // after ";" and "name=" after "?" and "&".
        (Modifier::Explode, true) => {
            let sep = regex::escape(op.sep);
            let pair = if op.first == ";" {
                format!("{value}(?:=(?:[{class}]|{PCT})+)?")
            } else {
                format!("{value}={value}")
            };
            format!("{pair}(?:{sep}{pair})*")
        }
    }
}

#[cfg(test)]
mod tests {
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
        assert!(
            !t("https://example.net/bar/{var}").matches("https://example.net/foo/will-not-match}")
        );
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
}
