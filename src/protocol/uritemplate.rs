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
mod tests;
