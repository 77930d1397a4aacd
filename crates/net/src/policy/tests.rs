use super::*;
use serde_json::{Value, json};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(ns: &str, l: &[(&str, &str)], ip: &str) -> PodInfo {
    PodInfo {
        namespace: ns.into(),
        labels: labels(l),
        ports: Vec::new(),
        ips: vec![ip.parse().unwrap()],
    }
}

fn policy(ns: &str, spec: Value) -> Policy {
    let p: NetworkPolicy =
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": ns}, "spec": spec}))
            .unwrap();
    Policy::from_object(&p)
}

/// The kernel's sets as a model: elements added and deleted as the kernel would, refusing
/// what it refuses (a range element overlapping another), and the chains' decision.
type Bounds = (Vec<u128>, Vec<u128>);

#[derive(Default)]
struct Kernel {
    ids: HashMap<IpAddr, u32>,
    /// Per set, its elements as each field's first and last value.
    sets: HashMap<&'static str, Vec<Bounds>>,
    singles: HashMap<&'static str, HashSet<IpAddr>>,
}

fn field_num(f: &crate::nftnl::Field) -> u128 {
    use crate::nftnl::Field;
    match f {
        Field::Ip(ip) => to_num(*ip),
        Field::Proto(p) => p.number() as u128,
        Field::ProtoNumber(p) => *p as u128,
        Field::Port(p) => *p as u128,
        Field::Number(n) | Field::RangedNumber(n) => *n as u128,
    }
}

fn nums(f: &Fields) -> Vec<u128> {
    f.0.iter().map(field_num).collect()
}

impl Kernel {
    fn apply(&mut self, ops: &[SetOp]) {
        for op in ops {
            let set: &'static str = match op.set.as_str() {
                "ids" => "ids",
                "in_iso" => "in_iso",
                "out_iso" => "out_iso",
                "in_pod" => "in_pod",
                "out_pod" => "out_pod",
                "in_cidr" => "in_cidr",
                "out_cidr" => "out_cidr",
                other => panic!("unknown set {other}"),
            };
            for e in &op.elements {
                let ip = |f: &Fields| match f.0[0] {
                    crate::nftnl::Field::Ip(ip) => ip,
                    _ => panic!("not an address"),
                };
                match (set, op.op) {
                    ("ids", Op::Add) => {
                        let Data::Value(v) = &e.data else { panic!() };
                        let n = field_num(&v.0[0]) as u32;
                        assert!(self.ids.insert(ip(&e.key), n).is_none(), "ids: {e} exists");
                    }
                    ("ids", Op::Delete) => {
                        assert!(self.ids.remove(&ip(&e.key)).is_some(), "ids: {e} missing");
                    }
                    ("in_iso" | "out_iso", Op::Add) => {
                        assert!(self.singles.entry(set).or_default().insert(ip(&e.key)));
                    }
                    ("in_iso" | "out_iso", Op::Delete) => {
                        assert!(self.singles.entry(set).or_default().remove(&ip(&e.key)));
                    }
                    (_, Op::Add) => {
                        let (lo, hi) = (nums(&e.key), nums(e.key_end.as_ref().unwrap()));
                        let elems = self.sets.entry(set).or_default();
                        for (a, b) in elems.iter() {
                            let inside = |p: &Vec<u128>| {
                                p.iter()
                                    .zip(a.iter().zip(b))
                                    .all(|(x, (l, h))| l <= x && x <= h)
                            };
                            assert!(
                                !inside(&lo) && !inside(&hi),
                                "{set}: {e} overlaps an element"
                            );
                        }
                        elems.push((lo, hi));
                    }
                    (_, Op::Delete) => {
                        let (lo, hi) = (nums(&e.key), nums(e.key_end.as_ref().unwrap()));
                        let elems = self.sets.entry(set).or_default();
                        let at = elems
                            .iter()
                            .position(|x| *x == (lo.clone(), hi.clone()))
                            .unwrap_or_else(|| panic!("{set}: {e} missing"));
                        elems.remove(at);
                    }
                }
            }
        }
    }

    fn has(&self, set: &str, key: &[u128]) -> bool {
        self.sets.get(set).into_iter().flatten().any(|(lo, hi)| {
            key.iter()
                .zip(lo.iter().zip(hi))
                .all(|(x, (l, h))| l <= x && x <= h)
        })
    }

    fn iso(&self, set: &str, ip: IpAddr) -> bool {
        self.singles.get(set).is_some_and(|s| s.contains(&ip))
    }

    /// The chains' verdict on a new connection.
    fn allows(&self, src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> bool {
        let (p, d) = (proto as u128, port as u128);
        if self.iso("out_iso", src) {
            let id = self.ids.get(&dst).copied().unwrap_or(0) as u128;
            if !self.has("out_pod", &[to_num(src), id, p, d])
                && !self.has("out_cidr", &[to_num(src), to_num(dst), p, d])
            {
                return false;
            }
        }
        if self.iso("in_iso", dst) {
            let id = self.ids.get(&src).copied().unwrap_or(0) as u128;
            if !self.has("in_pod", &[id, to_num(dst), p, d])
                && !self.has("in_cidr", &[to_num(src), to_num(dst), p, d])
            {
                return false;
            }
        }
        true
    }
}

fn run(engine: &mut Engine, kernel: &mut Kernel) -> usize {
    let ops = engine.take_ops();
    kernel.apply(&ops);
    ops.iter().map(|o| o.elements.len()).sum()
}

const TCP: u8 = 6;
const UDP: u8 = 17;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn ranges_less_their_exceptions() {
    let c: Cidr = "10.0.0.0/8".parse().unwrap();
    let ex: Vec<Cidr> = vec![
        "10.1.0.0/16".parse().unwrap(),
        "10.0.0.0/24".parse().unwrap(),
    ];
    let r = subtract(&c, &ex);
    let show: Vec<String> = r
        .iter()
        .map(|r| format!("{}-{}", to_ip(false, r.lo), to_ip(false, r.hi)))
        .collect();
    assert_eq!(
        show,
        vec!["10.0.1.0-10.0.255.255", "10.2.0.0-10.255.255.255"]
    );
    // Excepting everything leaves nothing; the top of the space is handled.
    let all: Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(subtract(&all, std::slice::from_ref(&all)).is_empty());
    let top = subtract(&all, &["0.0.0.0/1".parse().unwrap()]);
    assert_eq!(top.len(), 1);
    assert_eq!(to_ip(false, top[0].hi), ip("255.255.255.255"));
}

#[test]
fn overlapping_ranges_become_disjoint() {
    let b = |proto: u8, lo: u16, hi: u16| PortBox {
        proto: (proto, proto),
        port: (lo, hi),
    };
    assert_eq!(
        normalize(&[
            b(TCP, 80, 90),
            b(TCP, 85, 100),
            b(TCP, 101, 101),
            b(UDP, 53, 53)
        ]),
        vec![b(TCP, 80, 101), b(UDP, 53, 53)]
    );
    assert_eq!(normalize(&[b(TCP, 80, 80), EVERY_PORT]), vec![EVERY_PORT]);
    let r = |lo: &str, hi: &str| AddrRange {
        v6: false,
        lo: to_num(ip(lo)),
        hi: to_num(ip(hi)),
    };
    let out = normalize_ranges(&[
        (r("10.0.0.0", "10.255.255.255"), b(TCP, 80, 80)),
        (r("10.1.0.0", "10.1.255.255"), b(TCP, 443, 443)),
    ]);
    let show: Vec<String> = out
        .iter()
        .map(|(a, b)| format!("{}-{} {}", to_ip(false, a.lo), to_ip(false, a.hi), b.port.0))
        .collect();
    assert_eq!(
        show,
        vec![
            "10.0.0.0-10.0.255.255 80",
            "10.1.0.0-10.1.255.255 80",
            "10.1.0.0-10.1.255.255 443",
            "10.2.0.0-10.255.255.255 80"
        ]
    );
}

#[test]
fn deny_then_allow_from_a_label_and_replicas_cost_one_element() {
    let mut e = Engine::new();
    let mut k = Kernel::default();
    e.set_namespace(
        "default",
        Some(labels(&[("kubernetes.io/metadata.name", "default")])),
    );
    e.attach("web", pod("default", &[("app", "web")], "10.42.0.2"));
    e.observe_pod(
        "client",
        Some(pod("default", &[("role", "client")], "10.42.0.3")),
    );
    e.observe_pod(
        "other",
        Some(pod("default", &[("role", "other")], "10.42.0.4")),
    );
    run(&mut e, &mut k);
    let (web, client, other) = (ip("10.42.0.2"), ip("10.42.0.3"), ip("10.42.0.4"));
    assert!(k.allows(client, web, TCP, 80), "no policy: open");

    e.set_policy(
        "default",
        "deny",
        Some(policy(
            "default",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        )),
    );
    run(&mut e, &mut k);
    assert!(!k.allows(client, web, TCP, 80), "deny all ingress");
    // Web's open connections are worth checking now; a new pod's would not be.
    assert_eq!(e.take_narrowed(), BTreeSet::from([web]));
    assert!(k.allows(web, client, TCP, 80), "egress stays open");

    e.set_policy(
        "default",
        "allow",
        Some(policy(
            "default",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                                "ports": [{"protocol": "TCP", "port": 80}]}]}),
        )),
    );
    run(&mut e, &mut k);
    assert!(k.allows(client, web, TCP, 80));
    assert!(!k.allows(client, web, TCP, 81), "other ports stay shut");
    assert!(!k.allows(client, web, UDP, 80), "other protocols stay shut");
    assert!(!k.allows(other, web, TCP, 80), "other pods stay shut out");

    // A second client: one `ids` element, nothing else.
    e.observe_pod(
        "client-2",
        Some(pod("default", &[("role", "client")], "10.42.0.9")),
    );
    assert_eq!(run(&mut e, &mut k), 1);
    assert!(e.take_narrowed().is_empty(), "a replica narrows nothing");
    assert!(k.allows(ip("10.42.0.9"), web, TCP, 80));
    // Its status changing (same labels) writes nothing.
    e.observe_pod(
        "client-2",
        Some(pod("default", &[("role", "client")], "10.42.0.9")),
    );
    assert_eq!(run(&mut e, &mut k), 0);

    // Relabelled away: shut out again.
    e.observe_pod(
        "client",
        Some(pod("default", &[("role", "x")], "10.42.0.3")),
    );
    run(&mut e, &mut k);
    assert!(!k.allows(client, web, TCP, 80));

    // Policies deleted: open again, and the node's sets are empty.
    e.set_policy("default", "allow", None);
    e.set_policy("default", "deny", None);
    run(&mut e, &mut k);
    assert!(k.allows(other, web, TCP, 80));
    assert!(k.sets.values().all(Vec::is_empty));
    assert!(k.singles.values().all(HashSet::is_empty));
}

#[test]
fn namespaces_ip_blocks_named_ports_and_egress() {
    let mut e = Engine::new();
    let mut k = Kernel::default();
    e.set_namespace("prod", Some(labels(&[("team", "a")])));
    e.set_namespace("dev", Some(labels(&[("team", "b")])));
    let mut db = pod("prod", &[("app", "db")], "10.42.0.2");
    db.ports.push(NamedPort {
        name: "sql".into(),
        protocol: Protocol::Tcp,
        port: 5432,
    });
    e.attach("db", db);
    e.observe_pod("dev-pod", Some(pod("dev", &[], "10.42.1.2")));
    e.set_policy(
        "prod",
        "from-team-a",
        Some(policy(
            "prod",
            json!({"podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}],
                 "ports": [{"port": "sql"}]},
                {"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}]}
            ]}),
        )),
    );
    run(&mut e, &mut k);
    let db = ip("10.42.0.2");
    assert!(!k.allows(ip("10.42.1.2"), db, TCP, 5432), "dev is team b");
    assert!(
        k.allows(ip("192.168.5.5"), db, UDP, 9),
        "the block, every port"
    );
    assert!(!k.allows(ip("192.168.1.5"), db, TCP, 5432), "the exception");
    // dev joins team a: its pods may use the named port, only that one.
    e.set_namespace("dev", Some(labels(&[("team", "a")])));
    run(&mut e, &mut k);
    assert!(k.allows(ip("10.42.1.2"), db, TCP, 5432));
    assert!(!k.allows(ip("10.42.1.2"), db, TCP, 5433));

    // Egress: deny all but DNS (port 53 anywhere) and the db by its named port.
    e.attach("app", pod("prod", &[("app", "api")], "10.42.0.7"));
    e.set_policy(
        "prod",
        "egress",
        Some(policy(
            "prod",
            json!({"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Egress"],
                   "egress": [{"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
                              {"ports": [{"port": "sql"}]}]}),
        )),
    );
    run(&mut e, &mut k);
    let api = ip("10.42.0.7");
    assert!(k.allows(api, ip("8.8.8.8"), UDP, 53));
    assert!(!k.allows(api, ip("8.8.8.8"), TCP, 443));
    assert!(
        k.allows(api, db, TCP, 5432),
        "the db has a port named sql, and admits team a"
    );
    assert!(!k.allows(api, db, TCP, 5433));
    assert!(
        !k.allows(api, ip("10.42.1.2"), TCP, 5432),
        "not a pod with that name"
    );
    // prod leaves team a: the db no longer admits the api.
    e.set_namespace("prod", Some(labels(&[("team", "c")])));
    run(&mut e, &mut k);
    assert!(!k.allows(api, db, TCP, 5432));
}

/// Random clusters and policies: the kernel's verdicts (through the engine's changes,
/// applied one at a time) equal the NetworkPolicy rules read straight from the objects.
#[test]
fn verdicts_match_the_rules_on_random_clusters() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let nss = ["a", "b", "c"];
    let values = ["x", "y"];
    // How often each verdict came up, so the comparison is known to cover both.
    let (mut allowed, mut denied) = (0usize, 0usize);
    for round in 0..60 {
        let mut e = Engine::new();
        let mut k = Kernel::default();
        let mut ns_labels: BTreeMap<String, Labels> = BTreeMap::new();
        let mut pods: BTreeMap<String, (PodInfo, bool)> = BTreeMap::new();
        let mut policies: BTreeMap<(String, String), Value> = BTreeMap::new();
        for step in 0..30 {
            match rnd(4) {
                0 => {
                    let ns = nss[rnd(3)];
                    let l = labels(&[("tier", values[rnd(2)])]);
                    ns_labels.insert(ns.into(), l.clone());
                    e.set_namespace(ns, Some(l));
                }
                1 => {
                    let uid = format!("p{}", rnd(8));
                    let local = uid.as_str() < "p4";
                    let mut p = pod(
                        nss[rnd(3)],
                        &[("app", values[rnd(2)])],
                        &format!("10.42.0.{}", 10 + uid[1..].parse::<u8>().unwrap()),
                    );
                    if rnd(2) == 0 {
                        p.ports.push(NamedPort {
                            name: "http".into(),
                            protocol: Protocol::Tcp,
                            port: 80 + rnd(2) as u16,
                        });
                    }
                    if rnd(5) == 0 {
                        pods.remove(&uid);
                        if local {
                            e.detach(&uid);
                        } else {
                            e.observe_pod(&uid, None);
                        }
                    } else {
                        pods.insert(uid.clone(), (p.clone(), local));
                        if local {
                            e.attach(&uid, p);
                        } else {
                            e.observe_pod(&uid, Some(p));
                        }
                    }
                }
                _ => {
                    let ns = nss[rnd(3)];
                    let name = format!("n{}", rnd(3));
                    if rnd(4) == 0 {
                        policies.remove(&(ns.into(), name.clone()));
                        e.set_policy(ns, &name, None);
                    } else {
                        let spec = random_spec(&mut rnd);
                        policies.insert((ns.into(), name.clone()), spec.clone());
                        e.set_policy(ns, &name, Some(policy(ns, spec)));
                    }
                }
            }
            run(&mut e, &mut k);
            let mut addrs: Vec<(Option<&PodInfo>, IpAddr)> =
                pods.values().map(|(p, _)| (Some(p), p.ips[0])).collect();
            addrs.push((None, ip("192.168.1.1")));
            addrs.push((None, ip("10.1.2.3")));
            for (sp, s) in &addrs {
                for (dp, d) in &addrs {
                    if s == d {
                        continue;
                    }
                    for (proto, port) in [(TCP, 80), (TCP, 81), (UDP, 53), (1, 0)] {
                        let src = sp.map(|p| (p, pods.values().any(|(q, l)| q == p && *l)));
                        let dst = dp.map(|p| (p, pods.values().any(|(q, l)| q == p && *l)));
                        let want = reference(&ns_labels, &policies, src, *s, dst, *d, proto, port);
                        if want {
                            allowed += 1;
                        } else {
                            denied += 1;
                        }
                        assert_eq!(
                            e.allows(*s, *d, proto, port),
                            want,
                            "the engine's own reading, round {round} step {step}: {s} -> {d}"
                        );
                        assert_eq!(
                            k.allows(*s, *d, proto, port),
                            want,
                            "round {round} step {step}: {s} -> {d} {proto}/{port}\npods {pods:#?}\npolicies {policies:#?}"
                        );
                    }
                }
            }
        }
    }
    assert!(
        allowed > 1000 && denied > 1000,
        "{allowed} allowed, {denied} denied"
    );
}

fn random_spec(rnd: &mut impl FnMut(usize) -> usize) -> Value {
    let values = ["x", "y"];
    let sel = |rnd: &mut dyn FnMut(usize) -> usize, key: &str| -> Value {
        if rnd(3) == 0 {
            json!({})
        } else {
            json!({"matchLabels": {key: values[rnd(2)]}})
        }
    };
    let peers = |rnd: &mut dyn FnMut(usize) -> usize| -> Value {
        let mut out = Vec::new();
        for _ in 0..rnd(3) {
            out.push(match rnd(4) {
                0 => json!({"podSelector": sel(rnd, "app")}),
                1 => json!({"namespaceSelector": sel(rnd, "tier")}),
                2 => json!({"namespaceSelector": sel(rnd, "tier"), "podSelector": sel(rnd, "app")}),
                _ => json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.42.0.12/31"]}}),
            });
        }
        Value::Array(out)
    };
    let ports = |rnd: &mut dyn FnMut(usize) -> usize| -> Option<Value> {
        match rnd(4) {
            0 => None,
            1 => Some(json!([{"protocol": "TCP", "port": 80}])),
            2 => Some(json!([{"protocol": "TCP", "port": "http"}, {"protocol": "UDP"}])),
            _ => Some(json!([{"protocol": "TCP", "port": 79, "endPort": 80}])),
        }
    };
    let rules = |rnd: &mut dyn FnMut(usize) -> usize, key: &str| -> Value {
        let mut out = Vec::new();
        for _ in 0..rnd(3) {
            let mut r = serde_json::Map::new();
            if rnd(3) != 0 {
                r.insert(key.into(), peers(rnd));
            }
            if let Some(p) = ports(rnd) {
                r.insert("ports".into(), p);
            }
            out.push(Value::Object(r));
        }
        Value::Array(out)
    };
    let types = match rnd(3) {
        0 => json!(["Ingress"]),
        1 => json!(["Egress"]),
        _ => json!(["Ingress", "Egress"]),
    };
    json!({"podSelector": sel(rnd, "app"), "policyTypes": types,
           "ingress": rules(rnd, "from"), "egress": rules(rnd, "to")})
}

fn sel_matches(sel: &Value, l: &Labels) -> bool {
    sel.get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(k, v)| l.get(k).map(String::as_str) == v.as_str())
}

fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    cidr.parse::<Cidr>().unwrap().contains(ip)
}

/// The rules as the NetworkPolicy documentation states them, for one new connection.
#[allow(clippy::too_many_arguments)]
fn reference(
    ns_labels: &BTreeMap<String, Labels>,
    policies: &BTreeMap<(String, String), Value>,
    src: Option<(&PodInfo, bool)>,
    s: IpAddr,
    dst: Option<(&PodInfo, bool)>,
    d: IpAddr,
    proto: u8,
    port: u16,
) -> bool {
    let empty = Labels::new();
    // Whether `peer` (a pod or just an address) matches one entry of a rule's peer list.
    let peer_ok = |pns: &str, entry: &Value, peer: Option<&PodInfo>, addr: IpAddr| -> bool {
        if let Some(b) = entry.get("ipBlock") {
            let cidr = b["cidr"].as_str().unwrap();
            let except = b["except"].as_array().into_iter().flatten();
            return in_cidr(addr, cidr)
                && !except.clone().any(|x| in_cidr(addr, x.as_str().unwrap()));
        }
        let Some(p) = peer else { return false };
        let ns_ok = match entry.get("namespaceSelector") {
            None => p.namespace == pns,
            Some(sel) => sel_matches(sel, ns_labels.get(&p.namespace).unwrap_or(&empty)),
        };
        let pod_ok = entry
            .get("podSelector")
            .is_none_or(|sel| sel_matches(sel, &p.labels));
        ns_ok && pod_ok
    };
    // Whether a rule's ports admit the connection; names resolve on `target`.
    let ports_ok = |rule: &Value, target: Option<&PodInfo>| -> bool {
        let Some(ports) = rule.get("ports").and_then(Value::as_array) else {
            return true;
        };
        ports.iter().any(|p| {
            let want = match p["protocol"].as_str().unwrap_or("TCP") {
                "TCP" => TCP,
                "UDP" => UDP,
                _ => 132,
            };
            if want != proto {
                return false;
            }
            match &p.get("port") {
                None => true,
                Some(Value::Number(n)) => {
                    let lo = n.as_u64().unwrap() as u16;
                    let hi = p
                        .get("endPort")
                        .and_then(Value::as_u64)
                        .map_or(lo, |h| h as u16);
                    lo <= port && port <= hi
                }
                Some(Value::String(name)) => target.is_some_and(|t| {
                    t.ports.iter().any(|np| {
                        &np.name == name && np.protocol.number() == proto && np.port == port
                    })
                }),
                _ => false,
            }
        })
    };
    let direction = |me: &PodInfo,
                     ty: &str,
                     key: &str,
                     peer: Option<&PodInfo>,
                     addr: IpAddr,
                     target: Option<&PodInfo>|
     -> bool {
        let selecting: Vec<&Value> = policies
            .iter()
            .filter(|((ns, _), spec)| {
                *ns == me.namespace
                    && sel_matches(&spec["podSelector"], &me.labels)
                    && spec["policyTypes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|t| t == ty)
            })
            .map(|(_, s)| s)
            .collect();
        if selecting.is_empty() {
            return true;
        }
        let rules_key = if ty == "Ingress" { "ingress" } else { "egress" };
        selecting.iter().any(|spec| {
            spec[rules_key]
                .as_array()
                .into_iter()
                .flatten()
                .any(|rule| {
                    match rule.get(key).and_then(Value::as_array) {
                        None => ports_ok(rule, target),
                        Some(list) if list.is_empty() => ports_ok(rule, target),
                        Some(list) => list.iter().any(|entry| {
                            // Toward an ipBlock, egress port names mean nothing (berth's
                            // reading: the block is addresses, not pods).
                            let t = if ty == "Egress" && entry.get("ipBlock").is_some() {
                                None
                            } else {
                                target
                            };
                            peer_ok(&me.namespace, entry, peer, addr) && ports_ok(rule, t)
                        }),
                    }
                })
        })
    };
    // Egress is enforced for the node's own pods, ingress likewise.
    if let Some((p, true)) = src
        && !direction(p, "Egress", "to", dst.map(|x| x.0), d, dst.map(|x| x.0))
    {
        return false;
    }
    if let Some((p, true)) = dst
        && !direction(p, "Ingress", "from", src.map(|x| x.0), s, Some(p))
    {
        return false;
    }
    true
}
