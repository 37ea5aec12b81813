//! What every common JSON reader can read back: a check of JSON text the hub is asked to store
//! or act on, in one pass, without recursion and without allocating. It refuses what serde_json
//! would let through but other readers choke on: nesting deeper than a limit (Python, serde_json
//! and many JS and Go decoders stop near 128 levels), strings that are not Unicode (a lone UTF-16
//! surrogate in a `\u` escape), and numbers no IEEE-754 double holds (JavaScript reads them as
//! `Infinity`, serde_json refuses them). Syntax is left to serde_json, which parses after this.
//! See `docs/API.md#readable-json`.

use crate::error::Error;

/// Why JSON text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// Objects and arrays nested more than `limit` levels deep.
    TooDeep { limit: usize },
    /// A `\u` escape at byte `at` is half of a surrogate pair whose other half is missing.
    LoneSurrogate { at: usize },
    /// The number at byte `at` is outside the range of a double.
    NotFinite { at: usize },
}

impl Unreadable {
    /// The client-facing error; `deep` says which nesting limit was passed and what it is.
    pub fn into_error(self, deep: impl FnOnce() -> String) -> Error {
        match self {
            Unreadable::TooDeep { .. } => Error::TooDeep(deep()),
            Unreadable::LoneSurrogate { at } => Error::InvalidJson(format!(
                "byte {at}: a \\u escape is half of a UTF-16 surrogate pair without its other \
                 half; strings must be Unicode text"
            )),
            Unreadable::NotFinite { at } => Error::InvalidJson(format!(
                "byte {at}: a number outside the range of a 64-bit float; numbers must be finite"
            )),
        }
    }
}

/// Checks `text`: at most `max_depth` levels of objects and arrays (a scalar is level 0, `[]`
/// level 1, `[[]]` level 2), every `\u` escape whole Unicode, every number finite as a double.
/// Stops at the first fault, so a hostile text costs at most one pass.
pub fn check(text: &str, max_depth: usize) -> Result<(), Unreadable> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i = match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(Unreadable::TooDeep { limit: max_depth });
                }
                i + 1
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i + 1
            }
            b'"' => string_end(bytes, i + 1)?,
            b'-' | b'0'..=b'9' => number_end(text, i)?,
            _ => i + 1,
        };
    }
    Ok(())
}

/// The index after the string whose body starts at `i`, checking its `\u` escapes.
fn string_end(bytes: &[u8], mut i: usize) -> Result<usize, Unreadable> {
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => return Ok(i + 1),
            b'\\' if bytes.get(i + 1) == Some(&b'u') => i = escape_end(bytes, i)?,
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    Ok(i)
}

/// `\uXXXX` at `i`: a high surrogate must be followed at once by a `\u` low surrogate, and a low
/// surrogate must not stand alone. Malformed hex is left for serde_json to refuse.
fn escape_end(bytes: &[u8], i: usize) -> Result<usize, Unreadable> {
    let lone = Unreadable::LoneSurrogate { at: i };
    match unit(bytes, i) {
        Some(0xD800..=0xDBFF) => match (bytes.get(i + 6..i + 8), unit(bytes, i + 6)) {
            (Some(b"\\u"), Some(0xDC00..=0xDFFF)) => Ok(i + 12),
            _ => Err(lone),
        },
        Some(0xDC00..=0xDFFF) => Err(lone),
        _ => Ok(i + 2),
    }
}

/// The UTF-16 code unit of the `\uXXXX` escape at `i`, if it is one.
fn unit(bytes: &[u8], i: usize) -> Option<u16> {
    if bytes.get(i..i + 2)? != b"\\u" {
        return None;
    }
    let hex = std::str::from_utf8(bytes.get(i + 2..i + 6)?).ok()?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(hex, 16).ok()
}

/// The index after the number token at `i`; refused when it overflows a double. Underflow reads
/// as zero, which every reader agrees on, so it is kept.
fn number_end(text: &str, i: usize) -> Result<usize, Unreadable> {
    let rest = text.get(i..).unwrap_or("");
    let len = rest
        .bytes()
        .take_while(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
        .count();
    let token = rest.get(..len).unwrap_or("");
    match token.parse::<f64>() {
        Ok(v) if !v.is_finite() => Err(Unreadable::NotFinite { at: i }),
        _ => Ok(i + len.max(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The deepest nesting of objects and arrays in `text` (strings do not count).
    fn depth(text: &str) -> usize {
        let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0usize);
        let bytes = text.as_bytes();
        while let Some(&b) = bytes.get(i) {
            i = match b {
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                    i + 1
                }
                b']' | b'}' => {
                    depth = depth.saturating_sub(1);
                    i + 1
                }
                b'"' => skip_string(bytes, i + 1),
                _ => i + 1,
            };
        }
        deepest
    }

    /// The index after a string without checking it (for `depth`).
    fn skip_string(bytes: &[u8], mut i: usize) -> usize {
        while let Some(&b) = bytes.get(i) {
            match b {
                b'"' => return i + 1,
                b'\\' => i += 2,
                _ => i += 1,
            }
        }
        i
    }

    fn nested(levels: usize, open: &str, close: &str) -> String {
        format!("{}1{}", open.repeat(levels), close.repeat(levels))
    }

    #[test]
    fn depth_at_and_over_the_limit() {
        for limit in [0, 1, 2, 32] {
            assert_eq!(check(&nested(limit, "[", "]"), limit), Ok(()));
            assert_eq!(
                check(&nested(limit + 1, "[", "]"), limit),
                Err(Unreadable::TooDeep { limit })
            );
        }
        assert_eq!(check("1", 0), Ok(()));
        assert_eq!(check("[]", 0), Err(Unreadable::TooDeep { limit: 0 }));
    }

    #[test]
    fn objects_and_arrays_count_alike_and_siblings_do_not_add() {
        let mixed = r#"{"a":[{"b":[1]}]}"#;
        assert_eq!(depth(mixed), 4);
        assert_eq!(check(mixed, 4), Ok(()));
        assert!(check(mixed, 3).is_err());
        let wide = r#"[[1],[2],{"x":[3]},[]]"#;
        assert_eq!(depth(wide), 3);
        assert_eq!(check(wide, 3), Ok(()));
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let text = r#"{"k":"[[[[{{{{\"]]]]","l":["\\"]}"#;
        assert_eq!(depth(text), 2);
        assert_eq!(check(text, 2), Ok(()));
        assert_eq!(check(r#""[[[[[[""#, 0), Ok(()));
    }

    #[test]
    fn lone_surrogates_are_refused_pairs_are_kept() {
        assert_eq!(check(r#""\ud83d\ude00""#, 0), Ok(()), "a pair (😀)");
        assert_eq!(check(r#""\uD83D\uDE00""#, 0), Ok(()));
        assert_eq!(check(r#""\u00e9 \u20AC""#, 0), Ok(()));
        for (text, at) in [
            (r#""\ud800""#, 1),
            (r#""x\udc00""#, 2),
            (r#""\ud800\u0041""#, 1),
            (r#""\ud800 \udc00""#, 1),
            (r#""\ud800\n""#, 1),
            (r#"["ok","\ud800"]"#, 7),
            (r#"{"\udfff":1}"#, 2),
        ] {
            assert_eq!(
                check(text, 5),
                Err(Unreadable::LoneSurrogate { at }),
                "{text}"
            );
        }
        // An escaped backslash followed by `ud800` is text, not an escape.
        assert_eq!(check(r#""\\ud800""#, 0), Ok(()));
    }

    #[test]
    fn numbers_must_be_finite_doubles() {
        for ok in [
            "0",
            "-0",
            "1e308",
            "-1.7976931348623157e308",
            "1e-400",
            "12345678901234567890123",
            "[1,2.5,-3e-2]",
        ] {
            assert_eq!(check(ok, 1), Ok(()), "{ok}");
        }
        for (text, at) in [
            ("1e400", 0),
            ("-1e309", 0),
            ("[1, 2e999]", 4),
            (r#"{"n":1.8e308}"#, 5),
        ] {
            assert_eq!(check(text, 1), Err(Unreadable::NotFinite { at }), "{text}");
        }
        let huge = format!("1{}", "0".repeat(400));
        assert_eq!(check(&huge, 0), Err(Unreadable::NotFinite { at: 0 }));
        assert_eq!(check("\"1e400\"", 0), Ok(()), "inside a string it is text");
    }

    #[test]
    fn malformed_text_never_panics_and_is_left_to_the_parser() {
        for text in [
            "\"\\u12",
            "\"\\",
            "[[[",
            "]]]}",
            "\"unterminated",
            "-",
            "1e",
            "\"\\ud800\\u",
        ] {
            let _ = check(text, 2);
            let _ = depth(text);
        }
    }

    /// The nesting depth as a parser sees it.
    fn reference_depth(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Array(items) => {
                1 + items.iter().map(reference_depth).max().unwrap_or(0)
            }
            serde_json::Value::Object(m) => 1 + m.values().map(reference_depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            "[\\PC\"\\[\\]{}\\\\]{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(12, 64, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[\\PC\\[{]{0,4}", inner, 0..3)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn agrees_with_a_parser(v in any_json(), pretty in any::<bool>()) {
            let text = if pretty {
                serde_json::to_string_pretty(&v).unwrap_or_default()
            } else {
                v.to_string()
            };
            let want = reference_depth(&v);
            prop_assert_eq!(depth(&text), want);
            prop_assert_eq!(check(&text, want), Ok(()));
            if want > 0 {
                prop_assert_eq!(check(&text, want - 1), Err(Unreadable::TooDeep { limit: want - 1 }));
            }
        }

        #[test]
        fn never_panics(s in "\\PC{0,64}", limit in 0usize..4) {
            let _ = check(&s, limit);
            let _ = depth(&s);
        }
    }
}
