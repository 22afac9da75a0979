//! Go's `url.ParseRequestURI` (pure, no I/O), which Kubernetes' `url()`, `isURL()` and
//! `format.uri()` call: an absolute URI or an absolute path (`*` too), no fragment split off,
//! the host and any `%` escape checked, with Go's error texts (`parse "…": invalid port ":x"
//! after host`, `invalid URL escape "%zz"`, …).

/// What `url.ParseRequestURI` makes of a string.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Parts {
    /// Lower case.
    pub scheme: String,
    /// Its text, port and IPv6 brackets included.
    pub host: String,
    pub path: String,
    /// The raw query, after the first `?`.
    pub query: String,
}

/// `url.ParseRequestURI(s)`, or its error text.
pub fn parse_request_uri(s: &str) -> Result<Parts, String> {
    parse(s, true).map_err(|e| format!("parse {}: {e}", super::status::go_quote(s)))
}

/// What Kubernetes' `url()` reads a string as: checked by `url.ParseRequestURI`, then parsed
/// again by `url.Parse` (a `#fragment` split off, `//host` read as a host, the host decoded).
pub fn parse_url(s: &str) -> Result<Parts, String> {
    parse_request_uri(s)?;
    let without_fragment = s.split_once('#').map_or(s, |(u, _)| u);
    let mut p = parse(without_fragment, false).map_err(|e| format!("parse {}: {e}", super::status::go_quote(s)))?;
    p.host = decode(&p.host, false);
    Ok(p)
}

/// `%XX` decoded (and `+` as a space in a query).
fn decode(s: &str, plus: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(hex.unwrap_or(b'%'));
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `c` stays as it is in an escaped path (`shouldEscape(c, encodePath)` is false).
fn path_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&c)
}

/// `URL.EscapedPath()` of a path as given: as it is when it is validly encoded, else its
/// decoded form escaped.
pub fn escaped_path(raw: &str) -> String {
    let valid = raw
        .bytes()
        .all(|c| c == b'%' || path_char(c) || b"!'()*[]".contains(&c));
    if valid && unescape(raw, Mode::Path).is_ok() {
        return raw.to_string();
    }
    let mut out = String::new();
    for &c in decode(raw, false).as_bytes() {
        if path_char(c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// `url.ParseQuery(raw)`: its pairs, decoded; a pair with `;` or a bad escape is left out.
pub fn query_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty() && !p.contains(';'))
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let bad = |t: &str| unescape(t, Mode::Path).is_err();
            (!bad(k) && !bad(v)).then(|| (decode(k, true), decode(v, true)))
        })
        .collect()
}

fn parse(raw: &str, via_request: bool) -> Result<Parts, String> {
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("net/url: invalid control character in URL".to_string());
    }
    if raw.is_empty() && via_request {
        return Err("empty url".to_string());
    }
    let mut url = Parts::default();
    if raw == "*" {
        url.path = "*".to_string();
        return Ok(url);
    }
    let (scheme, rest) = scheme(raw)?;
    url.scheme = scheme.to_ascii_lowercase();
    let mut rest = rest;
    if rest.ends_with('?') && rest.matches('?').count() == 1 {
        rest = &rest[..rest.len() - 1];
    } else if let Some((r, q)) = rest.split_once('?') {
        rest = r;
        url.query = q.to_string();
    }
    if !rest.starts_with('/') {
        if !url.scheme.is_empty() || !via_request {
            // An opaque URI (`mailto:x@y`): no host, no path.
            return Ok(url);
        }
        return Err("invalid URI for request".to_string());
    }
    if (!url.scheme.is_empty() || (!via_request && !rest.starts_with("///"))) && rest.starts_with("//") {
        let after = &rest[2..];
        let (authority, path) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, ""),
        };
        url.host = authority_host(authority)?;
        rest = path;
    }
    unescape(rest, Mode::Path)?;
    url.path = rest.to_string();
    Ok(url)
}

fn scheme(raw: &str) -> Result<(&str, &str), String> {
    for (i, c) in raw.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' if i == 0 => return Ok(("", raw)),
            b'0'..=b'9' | b'+' | b'-' | b'.' => {}
            b':' if i == 0 => return Err("missing protocol scheme".to_string()),
            b':' => return Ok((&raw[..i], &raw[i + 1..])),
            _ => return Ok(("", raw)),
        }
    }
    Ok(("", raw))
}

fn authority_host(authority: &str) -> Result<String, String> {
    let (userinfo, host) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let host = parse_host(host)?;
    if let Some(u) = userinfo {
        let valid = u
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-._:~!$&'()*+,;=%@".contains(&c) || c >= 0x80);
        if !valid {
            return Err("net/url: invalid userinfo".to_string());
        }
        unescape(u, Mode::UserPassword)?;
    }
    Ok(host)
}

fn valid_optional_port(port: &str) -> bool {
    port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|c| c.is_ascii_digit()))
}

fn parse_host(host: &str) -> Result<String, String> {
    if host.starts_with('[') {
        let Some(i) = host.rfind(']') else {
            return Err("missing ']' in host".to_string());
        };
        let port = &host[i + 1..];
        if !valid_optional_port(port) {
            return Err(format!("invalid port {} after host", super::status::go_quote(port)));
        }
        match host[..i].find("%25") {
            Some(zone) => {
                unescape(&host[..zone], Mode::Host)?;
                unescape(&host[zone..i], Mode::Zone)?;
                unescape(&host[i..], Mode::Host)?;
            }
            None => {
                unescape(host, Mode::Host)?;
            }
        }
        return Ok(host.to_string());
    }
    if let Some(i) = host.rfind(':') {
        let port = &host[i..];
        if !valid_optional_port(port) {
            return Err(format!("invalid port {} after host", super::status::go_quote(port)));
        }
    }
    unescape(host, Mode::Host)?;
    Ok(host.to_string())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Path,
    Host,
    Zone,
    UserPassword,
}

/// Whether `c` must be escaped in a host (`shouldEscape` for hosts and zones).
fn escaped_in_host(c: u8) -> bool {
    !(c.is_ascii_alphanumeric() || b"-_.~!$&'()*+,;=:[]<>\"".contains(&c))
}

/// Go's `unescape`, for its errors only.
fn unescape(s: &str, mode: Mode) -> Result<(), String> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !hex(i + 1) || !hex(i + 2) {
                    let end = (i + 3).min(b.len());
                    return Err(format!("invalid URL escape {}", super::status::go_quote(&s[i..end])));
                }
                let high = (b[i + 1] as char).to_digit(16).unwrap_or(0);
                if mode == Mode::Host && high < 8 && &s[i..i + 3] != "%25" {
                    return Err(format!("invalid URL escape {}", super::status::go_quote(&s[i..i + 3])));
                }
                i += 3;
            }
            c if matches!(mode, Mode::Host | Mode::Zone) && c < 0x80 && escaped_in_host(c) => {
                return Err(format!(
                    "invalid character {} in host name",
                    super::status::go_quote(&s[i..i + 1])
                ));
            }
            _ => i += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_uris_parse_as_go_parses_them() {
        let ok = |s: &str| parse_request_uri(s).unwrap();
        let u = ok("https://user@Example.com:8443/a/b?x=1&x=2");
        assert_eq!(
            (u.scheme.as_str(), u.host.as_str(), u.path.as_str(), u.query.as_str()),
            ("https", "Example.com:8443", "/a/b", "x=1&x=2")
        );
        for s in [
            "*",
            "/a b",
            "http://x/a b",
            "mailto:x@y",
            "http://[::1]:80/x",
            "/just/a/path",
        ] {
            assert!(parse_request_uri(s).is_ok(), "{s}");
        }
        let err = |s: &str| parse_request_uri(s).unwrap_err();
        assert_eq!(err("relative"), r#"parse "relative": invalid URI for request"#);
        assert_eq!(err(""), r#"parse "": empty url"#);
        assert_eq!(err(":foo"), r#"parse ":foo": missing protocol scheme"#);
        assert_eq!(
            err("http://x:abc/"),
            r#"parse "http://x:abc/": invalid port ":abc" after host"#
        );
        assert_eq!(err("http://a%zz/"), r#"parse "http://a%zz/": invalid URL escape "%zz""#);
        assert_eq!(err("/a%zz"), r#"parse "/a%zz": invalid URL escape "%zz""#);
        assert_eq!(err("http://[::1"), r#"parse "http://[::1": missing ']' in host"#);
        assert_eq!(
            err("http://a b/"),
            r#"parse "http://a b/": invalid character " " in host name"#
        );
        assert_eq!(
            err("/\u{1}"),
            r#"parse "/\x01": net/url: invalid control character in URL"#
        );
    }

    #[test]
    fn url_parts_are_read_as_kubernetes_url_reads_them() {
        let u = parse_url("http://a%C3%A4b/a b?a=b%20c+d&x=1;y=2#frag").unwrap();
        assert_eq!(u.host, "aäb");
        assert_eq!(u.path, "/a b");
        assert_eq!(escaped_path(&u.path), "/a%20b");
        assert_eq!(escaped_path("/%C3%A4!"), "/%C3%A4!");
        assert_eq!(query_pairs(&u.query), [("a".to_string(), "b c d".to_string())]);
        assert_eq!(parse_url("http://x/a#b").unwrap().path, "/a");
        assert_eq!(parse_url("//x/p").unwrap().host, "x");
    }
}
