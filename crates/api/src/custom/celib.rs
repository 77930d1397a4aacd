//! Kubernetes' CEL library on top of the `cel` crate's standard one: the string extensions
//! (`lowerAscii`, `split`, `substring`, ...), lists (`isSorted`, `sum`, `indexOf`, ...),
//! regular expressions (`find`, `findAll`), URLs, quantities, IP addresses and CIDRs, and
//! sets, as rules, policies and match conditions use them.
//!
//! The functions live in one root context built once; each evaluation binds its variables
//! in a child of it, so nothing is rebuilt per rule.

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use cel::extractors::{Arguments, This};
use cel::objects::{Opaque, Value};
use cel::{Context, ExecutionError, FunctionContext};

use crate::cidr::Cidr;
use crate::quantity::Quantity;

type Result<T> = std::result::Result<T, ExecutionError>;

/// Every function name the library adds (rules naming anything else are refused when written,
/// unless the standard library has it).
pub const FUNCTIONS: &[&str] = &[
    "charAt",
    "indexOf",
    "lastIndexOf",
    "lowerAscii",
    "upperAscii",
    "replace",
    "split",
    "substring",
    "trim",
    "join",
    "reverse",
    "isSorted",
    "sum",
    "min",
    "max",
    "find",
    "findAll",
    "url",
    "isURL",
    "getScheme",
    "getHost",
    "getHostname",
    "getPort",
    "getEscapedPath",
    "getQuery",
    "quantity",
    "isQuantity",
    "sign",
    "isInteger",
    "asInteger",
    "asApproximateFloat",
    "add",
    "sub",
    "isLessThan",
    "isGreaterThan",
    "compareTo",
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
    "masked",
    "prefixLength",
    "sets.contains",
    "sets.equivalent",
    "sets.intersects",
];

/// The root context: the standard library and Kubernetes' functions.
pub fn root() -> &'static Context<'static> {
    static ROOT: LazyLock<Context<'static>> = LazyLock::new(|| {
        let mut ctx = Context::default();
        ctx.add_function("charAt", char_at);
        ctx.add_function("indexOf", index_of);
        ctx.add_function("lastIndexOf", last_index_of);
        ctx.add_function("lowerAscii", |This(s): This<Arc<String>>| {
            s.to_ascii_lowercase()
        });
        ctx.add_function("upperAscii", |This(s): This<Arc<String>>| {
            s.to_ascii_uppercase()
        });
        ctx.add_function("replace", replace);
        ctx.add_function("split", split);
        ctx.add_function("substring", substring);
        ctx.add_function("trim", |This(s): This<Arc<String>>| s.trim().to_string());
        ctx.add_function("join", join);
        ctx.add_function("reverse", |This(s): This<Arc<String>>| {
            s.chars().rev().collect::<String>()
        });
        ctx.add_function("isSorted", is_sorted);
        ctx.add_function("sum", sum);
        ctx.add_function("min", min);
        ctx.add_function("max", max);
        ctx.add_function("find", find);
        ctx.add_function("findAll", find_all);
        ctx.add_function("url", url);
        ctx.add_function("isURL", |This(s): This<Arc<String>>| parse_url(&s).is_ok());
        ctx.add_function("getScheme", get_scheme);
        ctx.add_function("getHost", get_host);
        ctx.add_function("getHostname", get_hostname);
        ctx.add_function("getPort", get_port);
        ctx.add_function("getEscapedPath", get_escaped_path);
        ctx.add_function("getQuery", get_query);
        ctx.add_function("quantity", quantity);
        ctx.add_function("isQuantity", |This(s): This<Arc<String>>| {
            Quantity::parse(&s).is_ok()
        });
        ctx.add_function("sign", sign);
        ctx.add_function("isInteger", is_integer);
        ctx.add_function("asInteger", as_integer);
        ctx.add_function("asApproximateFloat", as_approximate_float);
        ctx.add_function("add", add);
        ctx.add_function("sub", sub);
        ctx.add_function("isLessThan", is_less_than);
        ctx.add_function("isGreaterThan", is_greater_than);
        ctx.add_function("compareTo", compare_to);
        ctx.add_function("ip", ip);
        ctx.add_function("isIP", |This(s): This<Arc<String>>| parse_ip(&s).is_ok());
        ctx.add_function("family", family);
        ctx.add_function("isUnspecified", is_unspecified);
        ctx.add_function("isLoopback", is_loopback);
        ctx.add_function("isLinkLocalMulticast", is_link_local_multicast);
        ctx.add_function("isLinkLocalUnicast", is_link_local_unicast);
        ctx.add_function("isGlobalUnicast", is_global_unicast);
        ctx.add_function("cidr", cidr);
        ctx.add_function("isCIDR", |This(s): This<Arc<String>>| {
            s.parse::<Cidr>().is_ok()
        });
        ctx.add_function("containsIP", contains_ip);
        ctx.add_function("containsCIDR", contains_cidr);
        ctx.add_function("masked", masked);
        ctx.add_function("prefixLength", prefix_length);
        ctx.add_function("sets.contains", |a: Value, b: Value| {
            sets(&a, &b, |a, b| b.iter().all(|x| a.contains(x)))
        });
        ctx.add_function("sets.equivalent", |a: Value, b: Value| {
            sets(&a, &b, |a, b| {
                b.iter().all(|x| a.contains(x)) && a.iter().all(|x| b.contains(x))
            })
        });
        ctx.add_function("sets.intersects", |a: Value, b: Value| {
            sets(&a, &b, |a, b| b.iter().any(|x| a.contains(x)))
        });
        ctx
    });
    &ROOT
}

fn text(s: impl Into<String>) -> Value {
    Value::String(Arc::new(s.into()))
}

fn min(ftx: &FunctionContext, This(l): This<Value>) -> Result<Value> {
    extreme(ftx, l, std::cmp::Ordering::Less)
}

fn max(ftx: &FunctionContext, This(l): This<Value>) -> Result<Value> {
    extreme(ftx, l, std::cmp::Ordering::Greater)
}

fn url(ftx: &FunctionContext, This(s): This<Arc<String>>) -> Result<Value> {
    parse_url(&s)
        .map(|u| Value::Opaque(Arc::new(u)))
        .map_err(|e| ftx.error(e))
}

fn get_scheme(ftx: &FunctionContext, This(u): This<Value>) -> Result<Value> {
    Ok(text(url_of(ftx, &u)?.scheme.clone()))
}

fn get_host(ftx: &FunctionContext, This(u): This<Value>) -> Result<Value> {
    Ok(text(url_of(ftx, &u)?.host.clone()))
}

fn get_hostname(ftx: &FunctionContext, This(u): This<Value>) -> Result<Value> {
    Ok(text(url_of(ftx, &u)?.hostname()))
}

fn get_port(ftx: &FunctionContext, This(u): This<Value>) -> Result<Value> {
    Ok(text(url_of(ftx, &u)?.port()))
}

fn get_escaped_path(ftx: &FunctionContext, This(u): This<Value>) -> Result<Value> {
    Ok(text(url_of(ftx, &u)?.path.clone()))
}

fn get_query(ftx: &FunctionContext, This(u): This<Value>) -> Result<Value> {
    Ok(url_of(ftx, &u)?.query())
}

fn quantity(ftx: &FunctionContext, This(s): This<Arc<String>>) -> Result<Value> {
    Quantity::parse(&s)
        .map(|q| Value::Opaque(Arc::new(Q(q))))
        .map_err(|e| ftx.error(e.to_string()))
}

fn sign(ftx: &FunctionContext, This(q): This<Value>) -> Result<i64> {
    Ok(match quantity_of(ftx, &q)?.nanos() {
        0 => 0,
        n if n < 0 => -1,
        _ => 1,
    })
}

fn is_integer(ftx: &FunctionContext, This(q): This<Value>) -> Result<bool> {
    let n = quantity_of(ftx, &q)?.nanos();
    Ok(n % 1_000_000_000 == 0 && i64::try_from(n / 1_000_000_000).is_ok())
}

fn as_integer(ftx: &FunctionContext, This(q): This<Value>) -> Result<i64> {
    let n = quantity_of(ftx, &q)?.nanos();
    if n % 1_000_000_000 != 0 {
        return Err(ftx.error("cannot convert value to integer"));
    }
    i64::try_from(n / 1_000_000_000).map_err(|_| ftx.error("cannot convert value to integer"))
}

fn as_approximate_float(ftx: &FunctionContext, This(q): This<Value>) -> Result<f64> {
    Ok(quantity_of(ftx, &q)?.nanos() as f64 / 1e9)
}

fn add(ftx: &FunctionContext, This(q): This<Value>, other: Value) -> Result<Value> {
    quantity_arith(ftx, &q, &other, 1)
}

fn sub(ftx: &FunctionContext, This(q): This<Value>, other: Value) -> Result<Value> {
    quantity_arith(ftx, &q, &other, -1)
}

fn is_less_than(ftx: &FunctionContext, This(q): This<Value>, other: Value) -> Result<bool> {
    Ok(compare(ftx, &q, &other)? < 0)
}

fn is_greater_than(ftx: &FunctionContext, This(q): This<Value>, other: Value) -> Result<bool> {
    Ok(compare(ftx, &q, &other)? > 0)
}

fn compare_to(ftx: &FunctionContext, This(q): This<Value>, other: Value) -> Result<i64> {
    compare(ftx, &q, &other)
}

fn ip(ftx: &FunctionContext, This(v): This<Value>) -> Result<Value> {
    match &v {
        Value::String(s) => parse_ip(s)
            .map(|ip| Value::Opaque(Arc::new(Ip(ip))))
            .map_err(|e| ftx.error(e)),
        other => Ok(Value::Opaque(Arc::new(Ip(cidr_of(ftx, other)?.ip)))),
    }
}

fn family(ftx: &FunctionContext, This(v): This<Value>) -> Result<i64> {
    Ok(if ip_of(ftx, &v)?.is_ipv4() { 4 } else { 6 })
}

fn is_unspecified(ftx: &FunctionContext, This(v): This<Value>) -> Result<bool> {
    Ok(ip_of(ftx, &v)?.is_unspecified())
}

fn is_loopback(ftx: &FunctionContext, This(v): This<Value>) -> Result<bool> {
    Ok(ip_of(ftx, &v)?.is_loopback())
}

fn is_link_local_multicast(ftx: &FunctionContext, This(v): This<Value>) -> Result<bool> {
    Ok(match ip_of(ftx, &v)? {
        IpAddr::V4(a) => a.octets()[..3] == [224, 0, 0],
        IpAddr::V6(a) => a.segments()[0] & 0xff0f == 0xff02,
    })
}

fn is_link_local_unicast(ftx: &FunctionContext, This(v): This<Value>) -> Result<bool> {
    Ok(match ip_of(ftx, &v)? {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80,
    })
}

fn is_global_unicast(ftx: &FunctionContext, This(v): This<Value>) -> Result<bool> {
    Ok(match ip_of(ftx, &v)? {
        IpAddr::V4(a) => {
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_broadcast())
        }
        IpAddr::V6(a) => {
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.segments()[0] & 0xffc0 == 0xfe80)
        }
    })
}

fn cidr(ftx: &FunctionContext, This(s): This<Arc<String>>) -> Result<Value> {
    let ip = s.split('/').next().and_then(|ip| ip.parse::<IpAddr>().ok());
    s.parse::<Cidr>()
        .ok()
        .zip(ip)
        .map(|(cidr, ip)| Value::Opaque(Arc::new(C { cidr, ip })))
        .ok_or_else(|| {
            ftx.error(format!(
                "network address parse error during conversion from string: invalid CIDR address: {s}"
            ))
        })
}

fn contains_ip(ftx: &FunctionContext, This(c): This<Value>, ip: Value) -> Result<bool> {
    let c = cidr_of(ftx, &c)?;
    let ip = match &ip {
        Value::String(s) => parse_ip(s).map_err(|e| ftx.error(e))?,
        other => ip_of(ftx, other)?,
    };
    Ok(c.cidr.contains(ip))
}

fn contains_cidr(ftx: &FunctionContext, This(c): This<Value>, other: Value) -> Result<bool> {
    let c = cidr_of(ftx, &c)?;
    let other = match &other {
        Value::String(s) => s.parse::<Cidr>().map_err(|e| ftx.error(e.to_string()))?,
        v => cidr_of(ftx, v)?.cidr,
    };
    Ok(other.prefix() >= c.cidr.prefix() && c.cidr.contains(other.network()))
}

fn masked(ftx: &FunctionContext, This(c): This<Value>) -> Result<Value> {
    let c = cidr_of(ftx, &c)?;
    Ok(Value::Opaque(Arc::new(C {
        cidr: c.cidr,
        ip: c.cidr.network(),
    })))
}

fn prefix_length(ftx: &FunctionContext, This(c): This<Value>) -> Result<i64> {
    Ok(cidr_of(ftx, &c)?.cidr.prefix() as i64)
}

fn chars(s: &str) -> Vec<char> {
    s.chars().collect()
}

fn int_arg(ftx: &FunctionContext, args: &[Value], i: usize) -> Result<Option<i64>> {
    match args.get(i) {
        None => Ok(None),
        Some(Value::Int(n)) => Ok(Some(*n)),
        Some(other) => Err(ftx.error(format!("expected an int, got {:?}", other.type_of()))),
    }
}

fn str_arg(ftx: &FunctionContext, args: &[Value], i: usize) -> Result<Arc<String>> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(ftx.error(format!("expected a string, got {:?}", other.type_of()))),
        None => Err(ftx.error("missing argument")),
    }
}

fn char_at(ftx: &FunctionContext, This(s): This<Arc<String>>, i: i64) -> Result<Value> {
    let cs = chars(&s);
    match usize::try_from(i) {
        Ok(i) if i < cs.len() => Ok(text(cs[i].to_string())),
        Ok(i) if i == cs.len() => Ok(text("")),
        _ => Err(ftx.error(format!("index out of range: {i}"))),
    }
}

/// Where `needle` starts in `hay` (in characters) at or after `from`.
fn find_from(hay: &[char], needle: &[char], from: usize) -> Option<usize> {
    (from..=hay.len().saturating_sub(needle.len()))
        .find(|&i| i + needle.len() <= hay.len() && hay[i..i + needle.len()] == *needle)
}

fn index_of(
    ftx: &FunctionContext,
    This(this): This<Value>,
    Arguments(args): Arguments,
) -> Result<Value> {
    match &this {
        Value::String(s) => {
            let hay = chars(s);
            let needle = chars(&str_arg(ftx, &args, 0)?);
            let from = int_arg(ftx, &args, 1)?.unwrap_or(0);
            let from = usize::try_from(from)
                .ok()
                .filter(|f| *f <= hay.len())
                .ok_or_else(|| ftx.error(format!("index out of range: {from}")))?;
            Ok(Value::Int(
                find_from(&hay, &needle, from).map_or(-1, |i| i as i64),
            ))
        }
        Value::List(items) => {
            let x = args.first().cloned().unwrap_or(Value::Null);
            Ok(Value::Int(
                items.iter().position(|i| *i == x).map_or(-1, |i| i as i64),
            ))
        }
        other => Err(ftx.error(format!("indexOf is not defined on {:?}", other.type_of()))),
    }
}

fn last_index_of(
    ftx: &FunctionContext,
    This(this): This<Value>,
    Arguments(args): Arguments,
) -> Result<Value> {
    match &this {
        Value::String(s) => {
            let hay = chars(s);
            let needle = chars(&str_arg(ftx, &args, 0)?);
            let last = hay.len().saturating_sub(needle.len());
            let upto = match int_arg(ftx, &args, 1)? {
                None => last,
                Some(n) => usize::try_from(n)
                    .ok()
                    .filter(|n| *n <= hay.len())
                    .ok_or_else(|| ftx.error(format!("index out of range: {n}")))?
                    .min(last),
            };
            let found = (0..=upto)
                .rev()
                .find(|&i| i + needle.len() <= hay.len() && hay[i..i + needle.len()] == *needle);
            Ok(Value::Int(found.map_or(-1, |i| i as i64)))
        }
        Value::List(items) => {
            let x = args.first().cloned().unwrap_or(Value::Null);
            Ok(Value::Int(
                items.iter().rposition(|i| *i == x).map_or(-1, |i| i as i64),
            ))
        }
        other => Err(ftx.error(format!(
            "lastIndexOf is not defined on {:?}",
            other.type_of()
        ))),
    }
}

fn replace(
    ftx: &FunctionContext,
    This(s): This<Arc<String>>,
    Arguments(args): Arguments,
) -> Result<Value> {
    let old = str_arg(ftx, &args, 0)?;
    let new = str_arg(ftx, &args, 1)?;
    Ok(text(match int_arg(ftx, &args, 2)? {
        Some(n) if n >= 0 => s.replacen(old.as_str(), &new, n as usize),
        _ => s.replace(old.as_str(), &new),
    }))
}

fn split(
    ftx: &FunctionContext,
    This(s): This<Arc<String>>,
    Arguments(args): Arguments,
) -> Result<Value> {
    let sep = str_arg(ftx, &args, 0)?;
    let parts: Vec<Value> = match int_arg(ftx, &args, 1)? {
        Some(0) => Vec::new(),
        Some(n) if n > 0 => s
            .splitn(n as usize, sep.as_str())
            .map(|p| Value::String(Arc::new(p.to_string())))
            .collect(),
        _ if sep.is_empty() => s
            .chars()
            .map(|c| Value::String(Arc::new(c.to_string())))
            .collect(),
        _ => s
            .split(sep.as_str())
            .map(|p| Value::String(Arc::new(p.to_string())))
            .collect(),
    };
    Ok(Value::List(Arc::new(parts)))
}

fn substring(
    ftx: &FunctionContext,
    This(s): This<Arc<String>>,
    Arguments(args): Arguments,
) -> Result<Value> {
    let cs = chars(&s);
    let start = int_arg(ftx, &args, 0)?.unwrap_or(0);
    let end = int_arg(ftx, &args, 1)?.unwrap_or(cs.len() as i64);
    if start < 0 || start as usize > cs.len() {
        return Err(ftx.error(format!("index out of range: {start}")));
    }
    if end < 0 || end as usize > cs.len() {
        return Err(ftx.error(format!("index out of range: {end}")));
    }
    if start > end {
        return Err(ftx.error(format!(
            "invalid substring range. start: {start}, end: {end}"
        )));
    }
    Ok(text(
        cs[start as usize..end as usize].iter().collect::<String>(),
    ))
}

fn join(
    ftx: &FunctionContext,
    This(l): This<Arc<Vec<Value>>>,
    Arguments(args): Arguments,
) -> Result<Value> {
    let sep = match args.first() {
        Some(_) => str_arg(ftx, &args, 0)?.to_string(),
        None => String::new(),
    };
    let parts: Result<Vec<String>> = l
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.to_string()),
            other => Err(ftx.error(format!("join needs strings, got {:?}", other.type_of()))),
        })
        .collect();
    Ok(text(parts?.join(&sep)))
}

fn is_sorted(ftx: &FunctionContext, This(l): This<Arc<Vec<Value>>>) -> Result<bool> {
    for w in l.windows(2) {
        match w[0].partial_cmp(&w[1]) {
            Some(std::cmp::Ordering::Greater) => return Ok(false),
            Some(_) => {}
            None => return Err(ftx.error("list elements are not comparable")),
        }
    }
    Ok(true)
}

fn sum(ftx: &FunctionContext, This(l): This<Arc<Vec<Value>>>) -> Result<Value> {
    match l.first() {
        None | Some(Value::Int(_)) => l
            .iter()
            .try_fold(0i64, |acc, v| match v {
                Value::Int(n) => acc
                    .checked_add(*n)
                    .ok_or_else(|| ftx.error("integer overflow")),
                _ => Err(ftx.error("sum needs elements of one type")),
            })
            .map(Value::Int),
        Some(Value::UInt(_)) => l
            .iter()
            .try_fold(0u64, |acc, v| match v {
                Value::UInt(n) => acc
                    .checked_add(*n)
                    .ok_or_else(|| ftx.error("integer overflow")),
                _ => Err(ftx.error("sum needs elements of one type")),
            })
            .map(Value::UInt),
        Some(Value::Float(_)) => l
            .iter()
            .try_fold(0f64, |acc, v| match v {
                Value::Float(n) => Ok(acc + n),
                _ => Err(ftx.error("sum needs elements of one type")),
            })
            .map(Value::Float),
        Some(other) => Err(ftx.error(format!(
            "sum is not defined on lists of {:?}",
            other.type_of()
        ))),
    }
}

fn extreme(ftx: &FunctionContext, l: Value, want: std::cmp::Ordering) -> Result<Value> {
    let Value::List(items) = l else {
        return Err(ftx.error("min and max are defined on lists"));
    };
    let mut best = items
        .first()
        .cloned()
        .ok_or_else(|| ftx.error("min and max of an empty list are undefined"))?;
    for v in items.iter().skip(1) {
        match v.partial_cmp(&best) {
            Some(o) if o == want => best = v.clone(),
            Some(_) => {}
            None => return Err(ftx.error("list elements are not comparable")),
        }
    }
    Ok(best)
}

fn regex(ftx: &FunctionContext, re: &str) -> Result<regex::Regex> {
    regex::Regex::new(re).map_err(|e| ftx.error(format!("invalid regex: {e}")))
}

fn find(ftx: &FunctionContext, This(s): This<Arc<String>>, re: Arc<String>) -> Result<Value> {
    Ok(text(
        regex(ftx, &re)?
            .find(&s)
            .map_or(String::new(), |m| m.as_str().to_string()),
    ))
}

fn find_all(
    ftx: &FunctionContext,
    This(s): This<Arc<String>>,
    Arguments(args): Arguments,
) -> Result<Value> {
    let re = regex(ftx, &str_arg(ftx, &args, 0)?)?;
    let limit = match int_arg(ftx, &args, 1)? {
        Some(n) if n >= 0 => n as usize,
        _ => usize::MAX,
    };
    Ok(Value::List(Arc::new(
        re.find_iter(&s)
            .take(limit)
            .map(|m| Value::String(Arc::new(m.as_str().to_string())))
            .collect(),
    )))
}

/// A URL as Kubernetes' `url()` reads it: an absolute URI or an absolute path.
#[derive(Debug, PartialEq, Eq)]
struct Url {
    scheme: String,
    host: String,
    path: String,
    raw_query: String,
}

impl Opaque for Url {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.URL"
    }
}

impl Url {
    fn hostname(&self) -> String {
        let h = &self.host;
        match h.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(""),
            None => h.split(':').next().unwrap_or(""),
        }
        .to_string()
    }

    fn port(&self) -> String {
        let h = &self.host;
        let after = match h.strip_prefix('[') {
            Some(rest) => rest.split_once(']').map_or("", |(_, p)| p),
            None => h.find(':').map_or("", |i| &h[i..]),
        };
        after.strip_prefix(':').unwrap_or("").to_string()
    }

    fn query(&self) -> Value {
        let mut m: std::collections::HashMap<String, Vec<Value>> = Default::default();
        for pair in self.raw_query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            m.entry(k.to_string())
                .or_default()
                .push(Value::String(Arc::new(v.to_string())));
        }
        let m: std::collections::HashMap<String, Value> = m
            .into_iter()
            .map(|(k, v)| (k, Value::List(Arc::new(v))))
            .collect();
        Value::from(m)
    }
}

fn parse_url(s: &str) -> std::result::Result<Url, String> {
    let bad = || format!("URL parse error during conversion from string: parse {s:?}: invalid URL");
    if s.starts_with('/') {
        let (path, query) = s.split_once('?').unwrap_or((s, ""));
        return Ok(Url {
            scheme: String::new(),
            host: String::new(),
            path: path.to_string(),
            raw_query: query.to_string(),
        });
    }
    let (scheme, rest) = s.split_once("://").ok_or_else(bad)?;
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok || s.contains(char::is_whitespace) {
        return Err(bad());
    }
    let rest = rest.split('#').next().unwrap_or("");
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority.rsplit('@').next().unwrap_or("").to_string();
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    Ok(Url {
        scheme: scheme.to_string(),
        host,
        path: path.to_string(),
        raw_query: query.to_string(),
    })
}

fn url_of<'a>(ftx: &FunctionContext, v: &'a Value) -> Result<&'a Url> {
    match v {
        Value::Opaque(o) => o.downcast_ref::<Url>(),
        _ => None,
    }
    .ok_or_else(|| ftx.error("expected a URL (from url())"))
}

#[derive(Debug, PartialEq, Eq)]
struct Q(Quantity);

impl Opaque for Q {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.Quantity"
    }
}

fn quantity_of(ftx: &FunctionContext, v: &Value) -> Result<Quantity> {
    match v {
        Value::Opaque(o) => o.downcast_ref::<Q>().map(|q| q.0),
        _ => None,
    }
    .ok_or_else(|| ftx.error("expected a quantity (from quantity())"))
}

fn quantity_arith(ftx: &FunctionContext, q: &Value, other: &Value, sign: i64) -> Result<Value> {
    let a = quantity_of(ftx, q)?;
    let b = match other {
        Value::Int(n) => Quantity::from_units(*n),
        v => quantity_of(ftx, v)?,
    };
    let b = if sign < 0 {
        Quantity::from_units(0).saturating_sub(b)
    } else {
        b
    };
    a.checked_add(b)
        .map(|q| Value::Opaque(Arc::new(Q(q))))
        .ok_or_else(|| ftx.error("quantity overflow"))
}

fn compare(ftx: &FunctionContext, q: &Value, other: &Value) -> Result<i64> {
    let a = quantity_of(ftx, q)?;
    let b = quantity_of(ftx, other)?;
    Ok(match a.nanos().cmp(&b.nanos()) {
        std::cmp::Ordering::Less => -1,
        std::cmp::Ordering::Equal => 0,
        std::cmp::Ordering::Greater => 1,
    })
}

#[derive(Debug, PartialEq, Eq)]
struct Ip(IpAddr);

impl Opaque for Ip {
    fn runtime_type_name(&self) -> &str {
        "net.IP"
    }
}

/// An IP address as Kubernetes' `ip()` takes it: no zone, no IPv4-mapped IPv6 form.
fn parse_ip(s: &str) -> std::result::Result<IpAddr, String> {
    let ip: IpAddr = s
        .parse()
        .map_err(|_| format!("IP Address {s:?} parse error during conversion from string"))?;
    if let IpAddr::V6(v6) = ip
        && v6.to_ipv4_mapped().is_some()
    {
        return Err(format!("IPv4-mapped IPv6 address {s:?} is not allowed"));
    }
    Ok(ip)
}

fn ip_of(ftx: &FunctionContext, v: &Value) -> Result<IpAddr> {
    match v {
        Value::Opaque(o) => o.downcast_ref::<Ip>().map(|i| i.0),
        _ => None,
    }
    .ok_or_else(|| ftx.error("expected an IP address (from ip())"))
}

/// A CIDR as written: its network, and the address it was written with.
#[derive(Debug, PartialEq, Eq)]
struct C {
    cidr: Cidr,
    ip: IpAddr,
}

impl Opaque for C {
    fn runtime_type_name(&self) -> &str {
        "net.CIDR"
    }
}

fn cidr_of<'a>(ftx: &FunctionContext, v: &'a Value) -> Result<&'a C> {
    match v {
        Value::Opaque(o) => o.downcast_ref::<C>(),
        _ => None,
    }
    .ok_or_else(|| ftx.error("expected a CIDR (from cidr())"))
}

fn sets(a: &Value, b: &Value, f: impl Fn(&[Value], &[Value]) -> bool) -> Result<bool> {
    match (a, b) {
        (Value::List(a), Value::List(b)) => Ok(f(a, b)),
        _ => Err(ExecutionError::function_error("sets", "sets are lists")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::cel::evaluate;
    use serde_json::json;

    fn eval(e: &str) -> serde_json::Value {
        evaluate(e, &[]).unwrap_or_else(|err| panic!("{e}: {err}"))
    }

    #[test]
    fn the_string_extensions() {
        let cases = [
            ("'HeLLo'.lowerAscii()", json!("hello")),
            ("'HeLLo'.upperAscii()", json!("HELLO")),
            ("'a,b,c'.split(',')", json!(["a", "b", "c"])),
            ("'a,b,c'.split(',', 2)", json!(["a", "b,c"])),
            ("['a', 'b'].join('-')", json!("a-b")),
            ("['a', 'b'].join()", json!("ab")),
            ("'héllo'.indexOf('l')", json!(2)),
            ("'hello'.indexOf('l', 3)", json!(3)),
            ("'hello'.indexOf('z')", json!(-1)),
            ("'hello'.lastIndexOf('l')", json!(3)),
            ("'  x '.trim()", json!("x")),
            ("'aaa'.replace('a', 'b')", json!("bbb")),
            ("'aaa'.replace('a', 'b', 1)", json!("baa")),
            ("'hello'.substring(1, 3)", json!("el")),
            ("'hello'.substring(2)", json!("llo")),
            ("'hello'.charAt(1)", json!("e")),
            ("'hello'.charAt(5)", json!("")),
            ("'abc'.reverse()", json!("cba")),
        ];
        for (e, want) in cases {
            assert_eq!(eval(e), want, "{e}");
        }
        assert!(super::super::cel::evaluate("'hello'.substring(3, 1)", &[]).is_err());
    }

    #[test]
    fn lists_regexes_and_sets() {
        let cases = [
            ("[1, 2, 3].isSorted()", json!(true)),
            ("['b', 'a'].isSorted()", json!(false)),
            ("[1, 2, 3].sum()", json!(6)),
            ("[1.5, 2.5].sum()", json!(4.0)),
            ("[3, 1, 2].min()", json!(1)),
            ("[3, 1, 2].max()", json!(3)),
            ("[1, 2, 3].indexOf(2)", json!(1)),
            ("[1, 2, 1].lastIndexOf(1)", json!(2)),
            ("'abc 123 def 456'.find('[0-9]+')", json!("123")),
            ("'abc 123 def 456'.findAll('[0-9]+')", json!(["123", "456"])),
            ("'abc'.find('[0-9]+')", json!("")),
            ("sets.contains([1, 2, 3], [1, 3])", json!(true)),
            ("sets.equivalent([1, 2], [2, 1, 1])", json!(true)),
            ("sets.intersects([1, 2], [3])", json!(false)),
        ];
        for (e, want) in cases {
            assert_eq!(eval(e), want, "{e}");
        }
    }

    #[test]
    fn rules_calling_functions_no_library_has_are_refused() {
        let rule = |text: &str| {
            let r: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule =
                serde_json::from_value(json!({"rule": text})).expect("rule");
            super::super::cel::Rule::compile(&r)
                .map(drop)
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            rule("self.name.bogus()"),
            Err("ERROR: <input>: undeclared reference to 'bogus' (in container '')".into())
        );
        assert!(
            rule("self.name.lowerAscii() == self.name && self.tags.all(t, t.size() < 5)").is_ok()
        );
        assert!(rule("quantity(self.size).isLessThan(quantity('1Gi'))").is_ok());
    }

    #[test]
    fn urls_quantities_and_addresses() {
        let cases = [
            ("isURL('https://example.com:8080/path?a=1')", json!(true)),
            ("isURL('not a url')", json!(false)),
            (
                "url('https://example.com:8080/p').getScheme()",
                json!("https"),
            ),
            (
                "url('https://example.com:8080/p').getHost()",
                json!("example.com:8080"),
            ),
            (
                "url('https://example.com:8080/p').getHostname()",
                json!("example.com"),
            ),
            ("url('https://example.com:8080/p').getPort()", json!("8080")),
            ("url('https://[::1]:80/p').getHostname()", json!("::1")),
            (
                "url('https://example.com/a/b?x=1&x=2').getEscapedPath()",
                json!("/a/b"),
            ),
            (
                "url('https://example.com/?x=1&x=2').getQuery()",
                json!({"x": ["1", "2"]}),
            ),
            ("isQuantity('1Gi')", json!(true)),
            ("isQuantity('1Gx')", json!(false)),
            ("quantity('1Gi').isGreaterThan(quantity('1G'))", json!(true)),
            ("quantity('500m').isLessThan(quantity('1'))", json!(true)),
            ("quantity('1k').compareTo(quantity('1000'))", json!(0)),
            ("quantity('2').add(3).asInteger()", json!(5)),
            ("quantity('2').sub(quantity('3')).sign()", json!(-1)),
            ("quantity('1.5').isInteger()", json!(false)),
            ("isIP('10.0.0.1')", json!(true)),
            ("isIP('10.0.0.256')", json!(false)),
            ("ip('fd00::1').family()", json!(6)),
            ("ip('127.0.0.1').isLoopback()", json!(true)),
            ("ip('8.8.8.8').isGlobalUnicast()", json!(true)),
            ("isCIDR('10.0.0.0/8')", json!(true)),
            ("cidr('10.0.0.0/8').containsIP('10.1.2.3')", json!(true)),
            (
                "cidr('10.0.0.0/8').containsIP(ip('11.0.0.1'))",
                json!(false),
            ),
            (
                "cidr('10.0.0.0/8').containsCIDR('10.1.0.0/16')",
                json!(true),
            ),
            ("cidr('10.0.0.0/16').prefixLength()", json!(16)),
        ];
        for (e, want) in cases {
            assert_eq!(eval(e), want, "{e}");
        }
    }
}
