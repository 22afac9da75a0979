//! Regular expressions in CEL rules (pure, no I/O): patterns read as RE2 reads them, compiled
//! once per thread, and `matches()` as the simulator evaluates it.

use cel::common::value::{CowVal, Val};
use cel::objects::Value;
use cel::ExecutionError;

fn boolean<'b, 'v>(b: bool) -> Result<CowVal<'b, 'v>, ExecutionError> {
    Ok(CowVal::Owned(Box::<dyn Val>::try_from(Value::Bool(b))?))
}

/// `matches()`, evaluated by the simulator rather than the `cel` crate (which compiles the
/// pattern at every call, and reads `\d`, `\w`, `\s` as Unicode classes where RE2 reads ASCII).
pub const MATCHES_FN: &str = "@kube_sim_matches";

/// A pattern in RE2's syntax as the `regex` crate must be given it, or RE2's refusal: RE2's
/// `\d`, `\w`, `\s` and their negations are ASCII classes and its `\b`, `\B` ASCII word
/// boundaries (the `regex` crate's are Unicode); `\Q…\E` quotes, `\123` is octal, an escaped
/// punctuation mark is itself (the `regex` crate reads `\<`, `\>` as boundaries), `{,n}` is
/// literal text, and a `[`, `&&`, `--` or `~~` inside a class is literal (the `regex` crate
/// nests classes and operates on them). RE2 refuses a repeat count over 1000, a repetition of
/// a repetition (`a**`) and flags other than `i`, `m`, `s`, `U`.
pub fn re2(pattern: &str) -> Result<String, String> {
    let mut out = String::with_capacity(pattern.len() + 16);
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    // Inside a class: whether the class has had a member yet (a leading `]` is literal).
    let mut class: Option<bool> = None;
    // Whether the last thing written outside a class was a repetition (`*`, `+`, `?`, `{n}`),
    // and whether a `?` may still make it lazy.
    let mut repeated = false;
    let mut lazy_ok = false;
    let literal = |c: char, out: &mut String| {
        if c.is_ascii_punctuation()
            && !matches!(
                c,
                '<' | '>' | '_' | '"' | '\'' | '`' | '@' | '%' | ',' | ';' | ':' | '!' | '=' | '/'
            )
        {
            out.push('\\');
        }
        out.push(c);
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if class.is_none() {
            let is_repeat = matches!(c, '*' | '+' | '?') || (c == '{' && repeat_count(&chars[i..]).is_some());
            if is_repeat {
                if c == '?' && lazy_ok {
                    out.push('?');
                    lazy_ok = false;
                    i += 1;
                    continue;
                }
                if repeated {
                    return Err(format!(
                        "invalid nested repetition operator: `{}`",
                        chars[i.saturating_sub(1)..=i].iter().collect::<String>()
                    ));
                }
                if c == '{' {
                    let (len, n, m) = repeat_count(&chars[i..]).unwrap_or((1, 0, None));
                    if n > 1000 || m.is_some_and(|m| m > 1000) {
                        return Err(format!(
                            "invalid repeat count: `{}`",
                            chars[i..i + len].iter().collect::<String>()
                        ));
                    }
                    out.extend(&chars[i..i + len]);
                    i += len;
                } else {
                    out.push(c);
                    i += 1;
                }
                repeated = true;
                lazy_ok = true;
                continue;
            }
            repeated = false;
            lazy_ok = false;
        }
        match (c, class) {
            ('\\', _) => {
                let Some(e) = next else {
                    return Err("trailing backslash at end of expression: ``".to_string());
                };
                i += 2;
                let inside = class.is_some();
                if let Some(seen) = class.as_mut() {
                    *seen = true;
                }
                match e {
                    'Q' => {
                        // Quoted to `\E` or the end.
                        while i < chars.len() {
                            if chars[i] == '\\' && chars.get(i + 1) == Some(&'E') {
                                i += 2;
                                break;
                            }
                            literal(chars[i], &mut out);
                            i += 1;
                        }
                    }
                    '0'..='7' => {
                        let mut v = e.to_digit(8).unwrap_or(0);
                        let mut k = 0;
                        while k < 2 && i < chars.len() && chars[i].is_digit(8) {
                            v = v * 8 + chars[i].to_digit(8).unwrap_or(0);
                            i += 1;
                            k += 1;
                        }
                        if e != '0' && k == 0 {
                            // `\1`..`\7` alone is a backreference, which RE2 refuses.
                            return Err(format!("invalid escape sequence: `\\{e}`"));
                        }
                        out.push_str(&format!("\\x{{{v:x}}}"));
                    }
                    'd' | 'w' | 's' if inside => out.push_str(match e {
                        'd' => "0-9",
                        'w' => "0-9A-Za-z_",
                        _ => "\\t\\n\\x0C\\r ",
                    }),
                    'd' => out.push_str("[0-9]"),
                    'D' if !inside => out.push_str("[^0-9]"),
                    'w' => out.push_str("[0-9A-Za-z_]"),
                    'W' if !inside => out.push_str("[^0-9A-Za-z_]"),
                    's' => out.push_str("[\\t\\n\\x0C\\r ]"),
                    'S' if !inside => out.push_str("[^\\t\\n\\x0C\\r ]"),
                    'b' | 'B' if !inside => {
                        out.push_str("(?-u:\\");
                        out.push(e);
                        out.push(')');
                    }
                    e if e.is_ascii_punctuation() => literal(e, &mut out),
                    e => {
                        out.push('\\');
                        out.push(e);
                    }
                }
                continue;
            }
            ('[', None) => {
                out.push('[');
                if next == Some('^') {
                    out.push('^');
                    i += 1;
                }
                class = Some(false);
            }
            (']', Some(true)) => {
                out.push(']');
                class = None;
            }
            ('[', Some(_)) if next == Some(':') => {
                // A POSIX class, `[:alpha:]`: the same in both.
                while i < chars.len() {
                    out.push(chars[i]);
                    i += 1;
                    if chars[i - 1] == ']' {
                        break;
                    }
                }
                class = Some(true);
                continue;
            }
            ('-', Some(_)) if next == Some('-') => {
                out.push_str("-\\-");
                i += 1;
                class = Some(true);
            }
            ('[' | '&' | '~' | ']', Some(_)) => {
                out.push('\\');
                out.push(c);
                class = Some(true);
            }
            (c, Some(_)) => {
                out.push(c);
                class = Some(true);
            }
            ('(', None) if next == Some('?') => {
                // Flags, `(?i)` or `(?i:…)`: RE2 knows `i`, `m`, `s`, `U`; `(?P<name>` too.
                let flags: String = chars[i + 2..].iter().take_while(|c| !matches!(c, ')' | ':')).collect();
                let named = flags.starts_with("P<") || flags.starts_with('<');
                if !named && !flags.chars().all(|f| matches!(f, 'i' | 'm' | 's' | 'U' | '-')) {
                    return Err(format!("invalid or unsupported Perl syntax: `(?{flags}`"));
                }
                out.push('(');
            }
            ('{', None) => out.push_str("\\{"),
            (c, None) => out.push(c),
        }
        i += 1;
    }
    Ok(out)
}

/// A repetition `{n}`, `{n,}` or `{n,m}` at the start of `chars`: its length and counts (RE2
/// reads anything else, `{,n}` included, as literal text).
fn repeat_count(chars: &[char]) -> Option<(usize, u64, Option<u64>)> {
    let end = chars.iter().position(|c| *c == '}')?;
    let inner: String = chars[1..end].iter().collect();
    let (n, m) = match inner.split_once(',') {
        Some((n, "")) => (n.parse().ok()?, None),
        Some((n, m)) => (n.parse().ok()?, Some(m.parse().ok()?)),
        None => {
            let n = inner.parse().ok()?;
            (n, Some(n))
        }
    };
    if inner.starts_with(|c: char| !c.is_ascii_digit()) {
        return None;
    }
    Some((end + 1, n, m))
}

/// A pattern compiled, from a per-thread cache (a pattern is compiled once however many values
/// it is matched against, as cel-go compiles a constant pattern once).
pub fn regex(pattern: &str) -> Result<std::rc::Rc<regex::Regex>, String> {
    thread_local! {
        static CACHE: std::cell::RefCell<std::collections::HashMap<String, Result<std::rc::Rc<regex::Regex>, String>>> =
            std::cell::RefCell::new(std::collections::HashMap::new());
    }
    CACHE.with(|c| {
        if let Some(r) = c.borrow().get(pattern) {
            return r.clone();
        }
        let compiled = re2(pattern)
            .map_err(|e| format!("error parsing regexp: {e}"))
            .and_then(|p| {
                regex::RegexBuilder::new(&p)
                    .size_limit(64 << 20)
                    .build()
                    .map(std::rc::Rc::new)
                    .map_err(|e| format!("error parsing regexp: {e}"))
            });
        let mut cache = c.borrow_mut();
        if cache.len() >= 256 {
            cache.clear();
        }
        cache.insert(pattern.to_string(), compiled.clone());
        compiled
    })
}

/// [`MATCHES_FN`]: `matches(string, pattern)`.
pub fn matches<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let text = |i: usize| {
        args.get(i)
            .and_then(|v| v.downcast_ref::<cel::common::types::CelString>())
            .map(|s| s.inner().to_string())
            .ok_or_else(|| ExecutionError::no_such_overload("matches", vec![]))
    };
    let (s, pattern) = (text(0)?, text(1)?);
    let re = regex(&pattern).map_err(|e| ExecutionError::function_error("matches", e))?;
    boolean(re.is_match(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_read_as_re2_reads_them() {
        let m = |p: &str, s: &str| regex(p).unwrap().is_match(s);
        // RE2's classes are ASCII.
        assert!(!m(r"^\w+$", "café") && m(r"^\w+$", "cafe_1"));
        assert!(!m(r"^\d*$", "x٣") && !m(r"^\d+$", "٣") && m(r"^\d+$", "42"));
        assert!(m(r"^[\w-]+$", "a-b_c") && !m(r"^[\w-]+$", "é"));
        assert!(m(r"^\s$", "\t") && !m(r"^\s$", "\u{a0}"));
        assert!(m(r"\bcat\b", "a cat.") && !m(r"\bcat\b", "écats"));
        // A `[` or `&&` inside a class is literal.
        assert!(m(r"^[a[]+$", "a[a") && m(r"^[a&&b]+$", "&"));
        assert!(m(r"^[]a]+$", "]a") && m(r"^[[:alpha:]]+$", "abc"));
        // Long repetitions of a class compile, as in RE2.
        assert!(m(r"^\w{300}$", &"a".repeat(300)));
        // Quoting, octal, escaped punctuation, `{,n}` and `--` as RE2 reads them.
        assert!(m(r"^\Qa+b\E$", "a+b") && m(r"^\141$", "a") && m(r"a\<b", "a<b"));
        assert!(m(r"^a{,2}$", "a{,2}") && m(r"^[+--]$", "-") && m(r"a\b{start}", "a{start}"));
        assert!(m(r"^a+?b??$", "aab"));
        // What RE2 refuses.
        for bad in [r"a{1001}", r"a**", r"a++", r"a{2}{3}", r"(?x)a", r"\1"] {
            assert!(regex(bad).is_err(), "{bad}");
        }
    }
}
