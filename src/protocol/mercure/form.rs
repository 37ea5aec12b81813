//! `application/x-www-form-urlencoded` parsing as the WHATWG URL Standard defines it (what
//! `URLSearchParams` and browsers do), which both Mercure versions require for subscribe queries
//! and publish bodies: `&` separates pairs, `+` is a space, a `%` not followed by two hex
//! digits is kept as is, and a name without `=` has an empty value. `query::percent_decode`
//! refuses a stray `%` instead, so it is not used here.

use crate::error::Error;

/// One decoded pair. The name is decoded lossily (as the standard does: an unknown name is
/// ignored anyway); the value stays bytes until a known field asks for it as UTF-8.
pub(super) struct Pair {
    pub name: String,
    value: Vec<u8>,
}

impl Pair {
    /// The value as UTF-8, which both versions require of every field they read.
    pub fn value(&self) -> Result<String, Error> {
        String::from_utf8(self.value.clone()).map_err(|_| {
            Error::bad_request(format!("the value of {:?} is not valid UTF-8", self.name))
        })
    }

    /// Whether the value is empty, without decoding it.
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }
}

/// Every pair of `input`, in order (repeats kept); empty sequences between `&`s are skipped.
pub(super) fn parse(input: &[u8]) -> Vec<Pair> {
    input
        .split(|&b| b == b'&')
        .filter(|sequence| !sequence.is_empty())
        .map(|sequence| {
            let mut halves = sequence.splitn(2, |&b| b == b'=');
            let name = decode(halves.next().unwrap_or_default());
            let value = decode(halves.next().unwrap_or_default());
            Pair {
                name: String::from_utf8_lossy(&name).into_owned(),
                value,
            }
        })
        .collect()
}

/// `+` to space, then percent-decoding that leaves a malformed escape as it is.
fn decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            if let [high, low, after @ ..] = tail {
                if let (Some(high), Some(low)) = (hex(*high), hex(*low)) {
                    out.push((high << 4) | low);
                    rest = after;
                    continue;
                }
            }
        }
        out.push(if b == b'+' { b' ' } else { b });
        rest = tail;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pairs(input: &str) -> Vec<(String, Result<String, Error>)> {
        parse(input.as_bytes())
            .into_iter()
            .map(|p| {
                let value = p.value();
                (p.name, value)
            })
            .collect()
    }

    fn ok(input: &str) -> Vec<(String, String)> {
        pairs(input)
            .into_iter()
            .map(|(n, v)| (n, v.unwrap()))
            .collect()
    }

    #[test]
    fn whatwg_urlencoded_parsing() {
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(ok("a=1&b=2&a=3"), [s("a", "1"), s("b", "2"), s("a", "3")]);
        assert_eq!(ok("a+b=c+d%2B"), [s("a b", "c d+")]);
        assert_eq!(ok("flag&x="), [s("flag", ""), s("x", "")]);
        assert_eq!(ok("&&a=1&&"), [s("a", "1")]);
        assert_eq!(ok("a=b=c"), [s("a", "b=c")]);
        assert_eq!(ok("=v"), [s("", "v")]);
        assert_eq!(ok("a=%zz%4%"), [s("a", "%zz%4%")], "a stray % is kept");
        assert_eq!(ok("a=%C3%A9%e2%82%ac"), [s("a", "é€")]);
        assert_eq!(ok("%6Datch=x"), [s("match", "x")], "names are decoded");
        assert_eq!(ok("a=x;b=y"), [s("a", "x;b=y")], "; is not a separator");
        assert!(ok("").is_empty());
    }

    #[test]
    fn values_must_be_utf8_names_are_decoded_lossily() {
        let got = pairs("a=%FF&%FF=1");
        assert_eq!(got.len(), 2);
        assert!(got[0].1.as_ref().is_err_and(|e| e.status() == 400));
        assert_eq!(got[1].0, "\u{fffd}");
        let raw = parse("a=\u{e9}".as_bytes());
        assert_eq!(raw[0].value().unwrap(), "é", "raw UTF-8 bytes pass");
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            for pair in parse(&bytes) {
                let _ = pair.value();
            }
        }
    }
}
