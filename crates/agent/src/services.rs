//! The Services the node's containers are told about: a copy of every Service, followed by a
//! watch, from which each container gets Kubernetes' service environment variables
//! (`<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT`, and the Docker-link style `<NAME>_PORT...`).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use api::k8s_openapi::api::core::v1::Service;
use client::{Client, ListParams, Watcher, watcher};
use tokio::sync::watch;

#[derive(Default)]
pub struct Services {
    /// By `namespace/name`.
    all: RwLock<BTreeMap<String, Arc<Service>>>,
    synced: watch::Sender<bool>,
}

fn key(s: &Service) -> String {
    format!(
        "{}/{}",
        s.metadata.namespace.as_deref().unwrap_or(""),
        s.metadata.name.as_deref().unwrap_or("")
    )
}

impl Services {
    /// Follow every Service until dropped.
    pub async fn run(self: Arc<Self>, client: Client) {
        let mut w = Watcher::<Service>::new(client, None, ListParams::default());
        loop {
            let event = w.next().await;
            let mut all = self.all.write().unwrap_or_else(|p| p.into_inner());
            match event {
                watcher::Event::Restarted(list) => {
                    all.clear();
                    for s in list {
                        all.insert(key(&s), Arc::new(s));
                    }
                    drop(all);
                    self.synced.send_replace(true);
                }
                watcher::Event::Applied(s) => {
                    all.insert(key(&s), Arc::new(s));
                }
                watcher::Event::Deleted(s) => {
                    all.remove(&key(&s));
                }
            }
        }
    }

    /// Wait until the first list is in, so that no container starts without its variables.
    pub async fn synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// The service variables of a container in namespace `ns`.
    pub fn env(&self, ns: &str, links: bool) -> Vec<(String, String)> {
        let all = self.all.read().unwrap_or_else(|p| p.into_inner());
        let mut chosen: BTreeMap<String, Arc<Service>> = BTreeMap::new();
        if let Some(k) = all.get("default/kubernetes") {
            chosen.insert("kubernetes".into(), k.clone());
        }
        if links {
            let from = format!("{ns}/");
            for (k, s) in all
                .range(from.clone()..)
                .take_while(|(k, _)| k.starts_with(&from))
            {
                chosen.insert(k[from.len()..].to_string(), s.clone());
            }
        }
        let list: Vec<&Service> = chosen.values().map(|s| s.as_ref()).collect();
        service_env(&list)
    }
}

fn env_name(s: &str) -> String {
    s.to_uppercase().replace('-', "_")
}

/// Kubernetes' service environment variables for `services` (each with a cluster IP and
/// ports; headless and ExternalName Services have none).
pub fn service_env(services: &[&Service]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in services {
        let Some(spec) = s.spec.as_ref() else {
            continue;
        };
        let ip = spec.cluster_ip.as_deref().unwrap_or("");
        let ports = spec.ports.as_deref().unwrap_or_default();
        if ip.is_empty() || ip == "None" || ports.is_empty() {
            continue;
        }
        let name = env_name(s.metadata.name.as_deref().unwrap_or(""));
        // A bracketed host for IPv6 in the URL forms.
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        out.push((format!("{name}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{name}_SERVICE_PORT"), ports[0].port.to_string()));
        for p in ports {
            if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!("{name}_SERVICE_PORT_{}", env_name(n)),
                    p.port.to_string(),
                ));
            }
        }
        for (i, p) in ports.iter().enumerate() {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            let url = format!("{}://{host}:{}", proto.to_lowercase(), p.port);
            if i == 0 {
                out.push((format!("{name}_PORT"), url.clone()));
            }
            let prefix = format!("{name}_PORT_{}_{}", p.port, proto.to_uppercase());
            out.push((prefix.clone(), url));
            out.push((format!("{prefix}_PROTO"), proto.to_lowercase()));
            out.push((format!("{prefix}_PORT"), p.port.to_string()));
            out.push((format!("{prefix}_ADDR"), ip.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn variables_as_the_kubelet_writes_them() {
        let web: Service = serde_json::from_value(json!({
            "metadata": {"name": "web-front"},
            "spec": {"clusterIP": "10.43.0.7", "ports": [
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"}]}
        }))
        .unwrap();
        let headless: Service = serde_json::from_value(json!({
            "metadata": {"name": "db"},
            "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}
        }))
        .unwrap();
        let env: BTreeMap<String, String> = service_env(&[&web, &headless]).into_iter().collect();
        let want = [
            ("WEB_FRONT_SERVICE_HOST", "10.43.0.7"),
            ("WEB_FRONT_SERVICE_PORT", "80"),
            ("WEB_FRONT_SERVICE_PORT_HTTP", "80"),
            ("WEB_FRONT_SERVICE_PORT_DNS", "53"),
            ("WEB_FRONT_PORT", "tcp://10.43.0.7:80"),
            ("WEB_FRONT_PORT_80_TCP", "tcp://10.43.0.7:80"),
            ("WEB_FRONT_PORT_80_TCP_PROTO", "tcp"),
            ("WEB_FRONT_PORT_80_TCP_PORT", "80"),
            ("WEB_FRONT_PORT_80_TCP_ADDR", "10.43.0.7"),
            ("WEB_FRONT_PORT_53_UDP", "udp://10.43.0.7:53"),
            ("WEB_FRONT_PORT_53_UDP_PROTO", "udp"),
            ("WEB_FRONT_PORT_53_UDP_PORT", "53"),
            ("WEB_FRONT_PORT_53_UDP_ADDR", "10.43.0.7"),
        ];
        let want: BTreeMap<String, String> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(env, want);
    }
}
