//! Kubernetes' IP and CIDR CEL libraries (pure, no I/O), as kube-apiserver v1.36 declares them
//! (`k8s.io/apiserver/pkg/cel/library/ip.go`, `cidr.go`): `ip()`, `isIP()`, `ip.isCanonical()`,
//! `family()`, `isUnspecified()`, `isLoopback()`, `isLinkLocalMulticast()`,
//! `isLinkLocalUnicast()`, `isGlobalUnicast()`, `cidr()`, `isCIDR()`, `containsIP()`,
//! `containsCIDR()`, `ip()` of a CIDR, `prefixLength()`, `masked()`, and `string()` of both.
//! Addresses are parsed as Go's `netip` parses them, without zones or IPv4-mapped IPv6
//! addresses (which Kubernetes refuses).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use cel::extractors::This;
use cel::objects::{Opaque, Value};
use cel::{Context, ExecutionError, FunctionContext, ResolveResult};
use ipnet::IpNet;

/// An IP address (`net.IP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ip(pub IpAddr);

impl Opaque for Ip {
    fn runtime_type_name(&self) -> &str {
        "net.IP"
    }
}

/// A CIDR as written (`net.CIDR`): its address keeps the host bits until `masked()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(pub IpNet);

impl Opaque for Cidr {
    fn runtime_type_name(&self) -> &str {
        "net.CIDR"
    }
}

/// The functions this module adds to a context.
pub const FUNCTIONS: &[&str] = &[
    "ip",
    "isIP",
    "family",
    "isUnspecified",
    "isLoopback",
    "isLinkLocalMulticast",
    "isLinkLocalUnicast",
    "isGlobalUnicast",
    "cidr",
    "isCIDR",
    "containsIP",
    "containsCIDR",
    "prefixLength",
    "masked",
];

pub fn register(ctx: &mut Context) {
    let _ = ctx.add_function("ip", ip);
    let _ = ctx.add_function("isIP", is_ip);
    let _ = ctx.add_function("family", family);
    let _ = ctx.add_function("isUnspecified", is_unspecified);
    let _ = ctx.add_function("isLoopback", is_loopback);
    let _ = ctx.add_function("isLinkLocalMulticast", is_link_local_multicast);
    let _ = ctx.add_function("isLinkLocalUnicast", is_link_local_unicast);
    let _ = ctx.add_function("isGlobalUnicast", is_global_unicast);
    let _ = ctx.add_function("cidr", cidr);
    let _ = ctx.add_function("isCIDR", is_cidr);
    let _ = ctx.add_function("containsIP", contains_ip);
    let _ = ctx.add_function("containsCIDR", contains_cidr);
    let _ = ctx.add_function("prefixLength", prefix_length);
    let _ = ctx.add_function("masked", masked);
}

/// Go's `netip.ParseAddr`, with its error messages for IPv4 addresses (an IPv6 address that does
/// not parse gets a message of Go's form, not necessarily its wording); zones are accepted, as
/// Go accepts them, and returned.
fn go_parse_addr(s: &str) -> Result<(IpAddr, bool), String> {
    let q = |v: &str| serde_json::to_string(v).unwrap_or_default();
    let error = |msg: &str, at: Option<&str>| match at {
        Some(at) => format!("ParseAddr({}): {msg} (at {})", q(s), q(at)),
        None => format!("ParseAddr({}): {msg}", q(s)),
    };
    match s.find(['.', ':', '%']).map(|i| s.as_bytes()[i]) {
        Some(b'.') => {
            let (mut val, mut digits, mut fields) = (0u32, 0, 0);
            for (i, c) in s.char_indices() {
                if c.is_ascii_digit() {
                    if digits == 1 && val == 0 {
                        return Err(error("IPv4 field has octet with leading zero", None));
                    }
                    val = val * 10 + c.to_digit(10).unwrap_or(0);
                    digits += 1;
                    if val > 255 {
                        return Err(error("IPv4 field has value >255", None));
                    }
                } else if c == '.' {
                    if i == 0 || i == s.len() - 1 || s.as_bytes()[i - 1] == b'.' {
                        return Err(error("IPv4 field must have at least one digit", Some(&s[i..])));
                    }
                    if fields == 3 {
                        return Err(error("IPv4 address too long", None));
                    }
                    fields += 1;
                    val = 0;
                    digits = 0;
                } else {
                    return Err(error("unexpected character", Some(&s[i..])));
                }
            }
            if fields < 3 {
                return Err(error("IPv4 address too short", None));
            }
            s.parse()
                .map(|a| (a, false))
                .map_err(|_| error("unable to parse IP", None))
        }
        Some(b':') => {
            let (addr, zone) = match s.split_once('%') {
                Some((_, "")) => return Err(error("zone must be a non-empty string", None)),
                Some((a, _)) => (a, true),
                None => (s, false),
            };
            addr.parse::<std::net::Ipv6Addr>()
                .map(|a| (IpAddr::V6(a), zone))
                .map_err(|_| error("unable to parse IP", None))
        }
        Some(_) => Err(error("missing IPv6 address", None)),
        None => Err(error("unable to parse IP", None)),
    }
}

/// An address as Kubernetes' `ip()` parses it: Go's `netip.ParseAddr`, without zones or
/// IPv4-mapped IPv6 addresses.
fn parse_addr(s: &str) -> Result<IpAddr, String> {
    let (addr, zone) =
        go_parse_addr(s).map_err(|e| format!("IP Address {s:?} parse error during conversion from string: {e}"))?;
    if zone {
        return Err(format!("IP address {s:?} with zone value is not allowed"));
    }
    if let IpAddr::V6(v6) = addr {
        if v6.to_ipv4_mapped().is_some() {
            return Err(format!("IPv4-mapped IPv6 address {s:?} is not allowed"));
        }
    }
    Ok(addr)
}

/// A CIDR as Kubernetes' `cidr()` parses it: Go's `netip.ParsePrefix`, without IPv4-mapped
/// IPv6 addresses.
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let q = serde_json::to_string(s).unwrap_or_default();
    let parse_error =
        |why: &str| format!("network address parse error during conversion from string: netip.ParsePrefix({q}): {why}");
    let Some((addr, bits)) = s.rsplit_once('/') else {
        return Err(parse_error("no '/'"));
    };
    let (ip, zone) = go_parse_addr(addr).map_err(|e| parse_error(&e))?;
    if zone {
        return Err(parse_error("IPv6 zones cannot be present in a prefix"));
    }
    let bad_bits = || {
        parse_error(&format!(
            "bad bits after slash: {}",
            serde_json::to_string(bits).unwrap_or_default()
        ))
    };
    if bits.len() > 1 && !bits.starts_with(|c: char| ('1'..='9').contains(&c)) {
        return Err(bad_bits());
    }
    let bits: i64 = bits.parse().map_err(|_| bad_bits())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if !(0..=max).contains(&bits) {
        return Err(parse_error("prefix length out of range"));
    }
    if let IpAddr::V6(v6) = ip {
        if v6.to_ipv4_mapped().is_some() {
            return Err(format!("IPv4-mapped IPv6 address {s:?} is not allowed"));
        }
    }
    IpNet::new(ip, bits as u8).map_err(|_| parse_error("prefix length out of range"))
}

fn ip_of(v: &Value) -> Option<IpAddr> {
    match v {
        Value::Opaque(o) => o.downcast_ref::<Ip>().map(|i| i.0),
        _ => None,
    }
}

fn cidr_of(v: &Value) -> Option<IpNet> {
    match v {
        Value::Opaque(o) => o.downcast_ref::<Cidr>().map(|c| c.0),
        _ => None,
    }
}

fn no_overload(ftx: &FunctionContext) -> ExecutionError {
    ExecutionError::no_such_overload(ftx.name, vec![])
}

/// `ip(string)`, or `ip()` of a CIDR: its address as written.
fn ip(ftx: &FunctionContext, This(this): This<Value>) -> ResolveResult {
    if let Some(net) = cidr_of(&this) {
        return Ok(Value::Opaque(Arc::new(Ip(net.addr()))));
    }
    match &this {
        Value::String(s) if ftx.this.is_none() => parse_addr(s)
            .map(|a| Value::Opaque(Arc::new(Ip(a))))
            .map_err(|e| ftx.error(e)),
        _ => Err(no_overload(ftx)),
    }
}

fn is_ip(ftx: &FunctionContext, This(this): This<Value>) -> ResolveResult {
    match &this {
        Value::String(s) => Ok(Value::Bool(parse_addr(s).is_ok())),
        _ => Err(no_overload(ftx)),
    }
}

/// `ip.isCanonical(string)`: whether the address is written as Go writes it.
pub fn is_canonical(s: &str) -> Result<bool, String> {
    let addr = parse_addr(s)?;
    Ok(addr.to_string() == s)
}

fn with_ip(ftx: &FunctionContext, this: &Value, f: impl Fn(IpAddr) -> Value) -> ResolveResult {
    ip_of(this).map(f).ok_or_else(|| no_overload(ftx))
}

fn family(ftx: &FunctionContext, This(this): This<Value>) -> ResolveResult {
    with_ip(ftx, &this, |a| Value::Int(if a.is_ipv4() { 4 } else { 6 }))
}

fn is_unspecified(ftx: &FunctionContext, This(this): This<Value>) -> ResolveResult {
    with_ip(ftx, &this, |a| Value::Bool(a.is_unspecified()))
}

fn is_loopback(ftx: &FunctionContext, This(this): This<Value>) -> ResolveResult {
    with_ip(ftx, &this, |a| Value::Bool(a.is_loopback()))
}

fn link_local_multicast(a: IpAddr) -> bool {
    match a {
        // 224.0.0.0/24
        IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
        // ff02::/16 (any multicast of link-local scope), as Go's `IsLinkLocalMulticast`.
        IpAddr::V6(v6) => v6.segments()[0] & 0xff0f == 0xff02,
    }
}

fn link_local_unicast(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.octets()[..2] == [169, 254],
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// Go's `IsGlobalUnicast`: neither unspecified, loopback, multicast, link-local nor the IPv4
/// broadcast address (private addresses are global unicast).
fn global_unicast(a: IpAddr) -> bool {
    let special = match a {
        IpAddr::V4(v4) => v4 == Ipv4Addr::BROADCAST || v4.is_multicast(),
        IpAddr::V6(v6) => v6.is_multicast() || v6 == Ipv6Addr::UNSPECIFIED,
    };
    !(special || a.is_unspecified() || a.is_loopback() || link_local_unicast(a))
}

fn is_link_local_multicast(ftx: &FunctionContext, This(this): This<Value>) -> ResolveResult {
    with_ip(ftx, &this, |a| Value::Bool(link_local_multicast(a)))
}

fn is_link_local_unicast(ftx: &FunctionContext, This(this): This<Value>) -> ResolveResult {
    with_ip(ftx, &this, |a| Value::Bool(link_local_unicast(a)))
}

fn is_global_unicast(ftx: &FunctionContext, This(this): This<Value>) -> ResolveResult {
    with_ip(ftx, &this, |a| Value::Bool(global_unicast(a)))
}

fn cidr(ftx: &FunctionContext, This(this): This<Value>) -> ResolveResult {
    match &this {
        // Kubernetes prefixes the parse error once more here.
        Value::String(s) => parse_cidr(s).map(|n| Value::Opaque(Arc::new(Cidr(n)))).map_err(|e| {
            ftx.error(format!(
                "network address parse error during conversion from string: {e}"
            ))
        }),
        _ => Err(no_overload(ftx)),
    }
}

fn is_cidr(ftx: &FunctionContext, This(this): This<Value>) -> ResolveResult {
    match &this {
        Value::String(s) => Ok(Value::Bool(parse_cidr(s).is_ok())),
        _ => Err(no_overload(ftx)),
    }
}

/// Go's `netip.Prefix.Contains`: the host bits of the prefix are ignored, and an address of the
/// other family is never contained.
fn contains(net: IpNet, addr: IpAddr) -> bool {
    net.trunc().contains(&addr)
}

fn contains_ip(ftx: &FunctionContext, This(this): This<Value>, other: Value) -> ResolveResult {
    let net = cidr_of(&this).ok_or_else(|| no_overload(ftx))?;
    let addr = match &other {
        Value::String(s) => parse_addr(s).map_err(|e| ftx.error(e))?,
        v => ip_of(v).ok_or_else(|| no_overload(ftx))?,
    };
    Ok(Value::Bool(contains(net, addr)))
}

fn contains_cidr(ftx: &FunctionContext, This(this): This<Value>, other: Value) -> ResolveResult {
    let net = cidr_of(&this).ok_or_else(|| no_overload(ftx))?;
    let inner = match &other {
        Value::String(s) => parse_cidr(s).map_err(|e| ftx.error(e))?,
        v => cidr_of(v).ok_or_else(|| no_overload(ftx))?,
    };
    Ok(Value::Bool(
        contains(net, inner.addr()) && net.prefix_len() <= inner.prefix_len(),
    ))
}

fn prefix_length(ftx: &FunctionContext, This(this): This<Value>) -> ResolveResult {
    let net = cidr_of(&this).ok_or_else(|| no_overload(ftx))?;
    Ok(Value::Int(i64::from(net.prefix_len())))
}

fn masked(ftx: &FunctionContext, This(this): This<Value>) -> ResolveResult {
    let net = cidr_of(&this).ok_or_else(|| no_overload(ftx))?;
    Ok(Value::Opaque(Arc::new(Cidr(net.trunc()))))
}

/// `string()` of an IP or a CIDR, as Go writes them; `None` for other values.
pub fn to_string(v: &Value) -> Option<String> {
    if let Some(a) = ip_of(v) {
        return Some(a.to_string());
    }
    cidr_of(v).map(|n| format!("{}/{}", n.addr(), n.prefix_len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_as_kubernetes_parses_them() {
        assert!(parse_addr("192.168.0.1").is_ok());
        assert!(parse_addr("2001:db8::1").is_ok());
        assert!(parse_addr("::ffff:1.2.3.4").unwrap_err().contains("IPv4-mapped"));
        assert!(parse_addr("fe80::1%eth0").is_err());
        assert!(parse_addr("1.2.3").is_err());
        assert_eq!(
            parse_addr("gw.example.com").unwrap_err(),
            "IP Address \"gw.example.com\" parse error during conversion from string: ParseAddr(\"gw.example.com\"): unexpected character (at \"gw.example.com\")"
        );
        assert!(parse_addr("1.256.0.0")
            .unwrap_err()
            .ends_with("IPv4 field has value >255"));
        assert!(parse_addr("fe80::1%eth0")
            .unwrap_err()
            .contains("with zone value is not allowed"));
        assert!(parse_addr("01.2.3.4").is_err());
        assert_eq!(is_canonical("2001:DB8::1"), Ok(false));
        assert_eq!(is_canonical("2001:db8::1"), Ok(true));
    }

    #[test]
    fn cidrs_keep_their_host_bits_until_masked() {
        let n = parse_cidr("10.1.2.3/8").unwrap();
        assert_eq!(n.addr().to_string(), "10.1.2.3");
        assert!(contains(n, "10.200.0.1".parse().unwrap()));
        assert!(!contains(n, "11.0.0.1".parse().unwrap()));
        assert!(!contains(n, "::1".parse().unwrap()));
        assert!(parse_cidr("10.0.0.0").is_err());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("10.0.0.0/08").is_err());
    }

    #[test]
    fn address_classes_follow_go() {
        let g = |s: &str| global_unicast(s.parse().unwrap());
        assert!(g("10.0.0.1") && g("8.8.8.8") && g("2001:db8::1"));
        assert!(!g("127.0.0.1") && !g("169.254.1.1") && !g("255.255.255.255") && !g("ff02::1") && !g("::"));
        assert!(link_local_multicast("224.0.0.5".parse().unwrap()));
        assert!(link_local_multicast("ff02::2".parse().unwrap()));
        assert!(link_local_unicast("fe80::1".parse().unwrap()));
    }
}
