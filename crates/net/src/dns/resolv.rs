//! `resolv.conf`: reading the node's, and writing each pod's per its `dnsPolicy` and
//! `dnsConfig`, as the kubelet does. Pure.

use std::net::IpAddr;

use api::k8s_openapi::api::core::v1::PodDNSConfig;

/// Most nameservers a resolver reads (glibc's MAXNS).
const MAX_NAMESERVERS: usize = 3;
/// Most search domains, and their total length, Kubernetes allows.
const MAX_SEARCHES: usize = 32;
const MAX_SEARCH_CHARS: usize = 2048;

/// The parts of a `resolv.conf` that matter here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    /// `ndots:5`, `timeout:2`, `rotate`...
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Read a `resolv.conf`; unknown lines are ignored, the last `search` wins (as in glibc).
    pub fn parse(text: &str) -> ResolvConf {
        let mut out = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(ns) = words.next() {
                        out.nameservers.push(ns.to_string());
                    }
                }
                Some("search" | "domain") => {
                    out.searches = words.map(|w| w.trim_end_matches('.').to_string()).collect();
                }
                Some("options") => out.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        out
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        if !self.searches.is_empty() {
            s.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for ns in &self.nameservers {
            s.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.options.is_empty() {
            s.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        s
    }

    /// The `ndots` option's value (the resolver's default is 1).
    pub fn ndots(&self) -> usize {
        self.options
            .iter()
            .rev()
            .find_map(|o| o.strip_prefix("ndots:")?.parse().ok())
            .unwrap_or(1)
    }
}

/// What decides a pod's `resolv.conf`.
pub struct PodDns<'a> {
    /// `spec.dnsPolicy` (unset is `ClusterFirst`).
    pub policy: Option<&'a str>,
    pub host_network: bool,
    pub config: Option<&'a PodDNSConfig>,
    pub namespace: &'a str,
    /// The cluster DNS address; `None` when the node serves no cluster DNS.
    pub cluster_dns: Option<IpAddr>,
    /// The cluster domain (`cluster.local`).
    pub domain: &'a str,
    /// The node's own `resolv.conf`.
    pub host: &'a ResolvConf,
}

/// How a pod resolves, once its policy is read.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Cluster,
    Host,
    None,
}

impl PodDns<'_> {
    fn kind(&self) -> Kind {
        let kind = match self.policy.unwrap_or("ClusterFirst") {
            "None" => Kind::None,
            "Default" => Kind::Host,
            "ClusterFirstWithHostNet" => Kind::Cluster,
            // ClusterFirst: a host-network pod resolves as its node does.
            _ if self.host_network => Kind::Host,
            _ => Kind::Cluster,
        };
        // Without a cluster DNS, ClusterFirst can only fall back to the node's resolvers.
        if kind == Kind::Cluster && self.cluster_dns.is_none() {
            return Kind::Host;
        }
        kind
    }

    /// The pod's `resolv.conf`.
    pub fn conf(&self) -> ResolvConf {
        let mut out = match self.kind() {
            Kind::None => ResolvConf::default(),
            Kind::Host => self.host.clone(),
            Kind::Cluster => {
                let domain = self.domain.trim_end_matches('.');
                let mut searches = vec![
                    format!("{}.svc.{domain}", self.namespace),
                    format!("svc.{domain}"),
                    domain.to_string(),
                ];
                searches.extend(self.host.searches.iter().cloned());
                ResolvConf {
                    nameservers: self.cluster_dns.iter().map(|ip| ip.to_string()).collect(),
                    searches,
                    options: vec!["ndots:5".into()],
                }
            }
        };
        if let Some(c) = self.config {
            out.nameservers
                .extend(c.nameservers.iter().flatten().cloned());
            out.searches.extend(c.searches.iter().flatten().cloned());
            for o in c.options.iter().flatten() {
                let Some(name) = o.name.as_deref() else {
                    continue;
                };
                out.options.retain(|x| x.split(':').next() != Some(name));
                out.options.push(match &o.value {
                    Some(v) => format!("{name}:{v}"),
                    None => name.to_string(),
                });
            }
        }
        dedupe(&mut out.nameservers);
        out.nameservers.truncate(MAX_NAMESERVERS);
        for s in &mut out.searches {
            *s = s.trim_end_matches('.').to_string();
        }
        dedupe(&mut out.searches);
        out.searches.truncate(MAX_SEARCHES);
        while out.searches.iter().map(|s| s.len() + 1).sum::<usize>() > MAX_SEARCH_CHARS {
            out.searches.pop();
        }
        out
    }

    /// The search list a pod's resolver walks, when the cluster DNS may walk it for the pod:
    /// only for pods it is the first nameserver of.
    pub fn searches_for_cluster_dns(&self) -> Option<Vec<String>> {
        let conf = self.conf();
        let dns = self.cluster_dns?.to_string();
        (conf.nameservers.first() == Some(&dns) && !conf.searches.is_empty())
            .then_some(conf.searches)
    }
}

fn dedupe(v: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|x| seen.insert(x.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::k8s_openapi::api::core::v1::PodDNSConfigOption;

    fn host() -> ResolvConf {
        ResolvConf::parse(
            "# made by hand\nnameserver 192.0.2.53\nnameserver 192.0.2.54 # second\nsearch example.com corp.example.com.\noptions edns0 timeout:2\n",
        )
    }

    fn pod<'a>(policy: Option<&'a str>, host_network: bool, host: &'a ResolvConf) -> PodDns<'a> {
        PodDns {
            policy,
            host_network,
            config: None,
            namespace: "shop",
            cluster_dns: Some("10.43.0.10".parse().unwrap()),
            domain: "cluster.local",
            host,
        }
    }

    #[test]
    fn the_nodes_file_is_read_as_a_resolver_reads_it() {
        let h = host();
        assert_eq!(h.nameservers, ["192.0.2.53", "192.0.2.54"]);
        assert_eq!(h.searches, ["example.com", "corp.example.com"]);
        assert_eq!(h.options, ["edns0", "timeout:2"]);
        assert_eq!(h.ndots(), 1);
        assert_eq!(ResolvConf::parse(&h.render()), h);
    }

    #[test]
    fn cluster_first_searches_the_namespace_then_the_cluster_then_the_node() {
        let h = host();
        let c = pod(None, false, &h).conf();
        assert_eq!(
            c.render(),
            "search shop.svc.cluster.local svc.cluster.local cluster.local example.com corp.example.com\nnameserver 10.43.0.10\noptions ndots:5\n"
        );
        assert_eq!(c.ndots(), 5);
        assert_eq!(pod(Some("ClusterFirstWithHostNet"), true, &h).conf(), c);
    }

    #[test]
    fn host_network_and_default_pods_resolve_as_the_node() {
        let h = host();
        assert_eq!(pod(None, true, &h).conf(), h);
        assert_eq!(pod(Some("Default"), false, &h).conf(), h);
        // Without a cluster DNS, ClusterFirst falls back to the node's resolvers.
        let mut p = pod(None, false, &h);
        p.cluster_dns = None;
        assert_eq!(p.conf(), h);
        assert_eq!(p.searches_for_cluster_dns(), None);
    }

    #[test]
    fn dns_config_is_merged_and_none_takes_only_it() {
        let h = host();
        let cfg = PodDNSConfig {
            nameservers: Some(vec!["192.0.2.99".into(), "10.43.0.10".into()]),
            searches: Some(vec!["extra.example".into(), "svc.cluster.local".into()]),
            options: Some(vec![
                PodDNSConfigOption {
                    name: Some("ndots".into()),
                    value: Some("2".into()),
                },
                PodDNSConfigOption {
                    name: Some("edns0".into()),
                    value: None,
                },
            ]),
        };
        let mut p = pod(None, false, &h);
        p.config = Some(&cfg);
        let c = p.conf();
        assert_eq!(c.nameservers, ["10.43.0.10", "192.0.2.99"]);
        assert_eq!(
            c.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "example.com",
                "corp.example.com",
                "extra.example"
            ]
        );
        assert_eq!(c.options, ["ndots:2", "edns0"]);
        assert_eq!(c.ndots(), 2);
        let mut p = pod(Some("None"), false, &h);
        p.config = Some(&cfg);
        let c = p.conf();
        assert_eq!(c.nameservers, ["192.0.2.99", "10.43.0.10"]);
        assert_eq!(c.searches, ["extra.example", "svc.cluster.local"]);
        // The cluster DNS is not their first nameserver: it must not walk their search list.
        assert_eq!(p.searches_for_cluster_dns(), None);
    }

    #[test]
    fn limits_are_kept() {
        let h = ResolvConf {
            nameservers: (1..=5).map(|i| format!("192.0.2.{i}")).collect(),
            searches: (0..40).map(|i| format!("d{i}.example")).collect(),
            options: vec![],
        };
        let c = pod(Some("Default"), false, &h).conf();
        assert_eq!(c.nameservers.len(), 3);
        assert_eq!(c.searches.len(), 32);
    }
}
