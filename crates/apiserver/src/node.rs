//! Pod subresources that a node's agent serves: `log`, `exec`, `attach` and `portforward`.
//! The API server checks the pod and the container, then hands the request (upgrade and all)
//! to the agent of the pod's node through a [`NodeConnector`].
//!
//! The agent sees `/{verb}/{namespace}/{pod}/{uid}[/{container}]?{query}`: the UID pins the
//! pod instance the API server checked, so a pod re-created under the same name is not
//! confused with the old one.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde_json::Value;

use crate::body::Body;
use crate::errors::{ApiError, ApiResult};
use crate::request::{Params, Target};
use crate::server::{ApiServer, Reply};

/// A node as the API server knows it: its name, and where its agent's HTTPS endpoint listens
/// (the Node's first InternalIP, else ExternalIP, at `daemonEndpoints.kubeletEndpoint.Port`),
/// if the Node says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTarget {
    pub name: String,
    pub endpoint: Option<SocketAddr>,
}

impl NodeTarget {
    /// Read from a Node object.
    pub fn of(name: &str, node: Option<&Value>) -> NodeTarget {
        let endpoint = node.and_then(|n| {
            let addresses = n["status"]["addresses"].as_array()?;
            let ip = ["InternalIP", "ExternalIP"].iter().find_map(|kind| {
                addresses
                    .iter()
                    .filter(|a| a["type"] == *kind)
                    .find_map(|a| a["address"].as_str()?.parse::<IpAddr>().ok())
            })?;
            let port = n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
                .unwrap_or(DEFAULT_AGENT_PORT);
            Some(SocketAddr::new(ip, port))
        });
        NodeTarget {
            name: name.to_string(),
            endpoint,
        }
    }
}

/// The port of a node's agent endpoint, the kubelet's.
pub const DEFAULT_AGENT_PORT: u16 = 10250;

/// Reaches the agent of a node.
#[async_trait]
pub trait NodeConnector: Send + Sync {
    /// Serve `req` on `node`; `Err` says why its agent cannot be reached.
    async fn call(&self, node: &NodeTarget, req: Request<Bytes>) -> Result<Response<Body>, String>;
}

/// How long reaching an agent's endpoint (TCP and TLS) may take.
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Reaches agents over HTTPS: an agent's certificate must chain to the cluster CA and name the
/// address dialled, and the server presents its own client certificate (as
/// `kube-apiserver-kubelet-client`, which the agent authorizes with a SubjectAccessReview).
/// Upgraded requests (exec, attach, port-forward) are relayed byte for byte once the agent has
/// switched protocols.
pub struct AgentClient {
    tls: Arc<rustls::ClientConfig>,
}

impl AgentClient {
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<AgentClient, String> {
        let me = crate::webhooks::ClientCert {
            what: "the agent client",
            cert_pem,
            key_pem,
        };
        let tls = crate::webhooks::tls_config(Some(ca_pem.as_bytes()), Some(me))?;
        Ok(AgentClient { tls })
    }
}

#[async_trait]
impl NodeConnector for AgentClient {
    async fn call(
        &self,
        node: &NodeTarget,
        mut req: Request<Bytes>,
    ) -> Result<Response<Body>, String> {
        let addr = node.endpoint.ok_or("the node has published no address")?;
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("dial tcp {addr}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(
                    rustls_pki_types::ServerName::IpAddress(addr.ip().into()),
                    tcp,
                )
                .await
                .map_err(|e| format!("tls with {addr}: {e}"))
        };
        let tls = tokio::time::timeout(AGENT_CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| format!("dial tcp {addr}: i/o timeout"))??;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let caller = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
        let (mut parts, body) = req.into_parts();
        parts.headers.remove(http::header::AUTHORIZATION);
        if let Ok(v) = http::HeaderValue::from_str(&addr.to_string()) {
            parts.headers.insert(http::header::HOST, v);
        }
        let out = Request::from_parts(parts, http_body_util::Full::new(body));
        let mut resp = sender.send_request(out).await.map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(crate::proxy::streamed(resp, sender));
        }
        let caller = caller.ok_or("the agent switched protocols on a request that cannot")?;
        let agent = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(a), Ok(c)) = tokio::join!(agent, caller) {
                let mut a = hyper_util::rt::TokioIo::new(a);
                let mut c = hyper_util::rt::TokioIo::new(c);
                let _ = tokio::io::copy_bidirectional(&mut a, &mut c).await;
            }
        });
        let (parts, _) = resp.into_parts();
        Ok(Response::from_parts(parts, Body::empty()))
    }
}

fn containers_of(pod: &Value, key: &str) -> Vec<String> {
    pod["spec"][key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// The container a request is about: the one named, or the only one.
fn pick_container(pod: &Value, name: &str, asked: Option<&str>) -> ApiResult<String> {
    let mains = containers_of(pod, "containers");
    let inits = containers_of(pod, "initContainers");
    let ephemeral = containers_of(pod, "ephemeralContainers");
    match asked.filter(|c| !c.is_empty()) {
        Some(c) if mains.iter().chain(&inits).chain(&ephemeral).any(|x| x == c) => {
            Ok(c.to_string())
        }
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if mains.len() == 1 => Ok(mains[0].clone()),
        None => {
            let mut msg = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                mains.join(" ")
            );
            if !inits.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    inits.join(" ")
                ));
            }
            Err(ApiError::bad_request(msg))
        }
    }
}

/// Kubernetes' checks of `PodLogOptions`.
fn check_log_options(params: &Params) -> ApiResult<()> {
    let positive = |key: &str, min: i64| -> ApiResult<()> {
        if let Some(n) = params.number::<i64>(key)?
            && n < min
        {
            return Err(ApiError::bad_request(format!(
                "{key}: Invalid value: {n}: must be greater than {}",
                if min == 0 {
                    "or equal to 0".to_string()
                } else {
                    "0".to_string()
                }
            )));
        }
        Ok(())
    };
    positive("tailLines", 0)?;
    positive("limitBytes", 1)?;
    positive("sinceSeconds", 1)?;
    if params.get("sinceSeconds").is_some() && params.get("sinceTime").is_some() {
        return Err(ApiError::bad_request(
            "at most one of sinceTime or sinceSeconds may be specified",
        ));
    }
    if let Some(t) = params.get("sinceTime")
        && t.parse::<jiff::Timestamp>().is_err()
    {
        return Err(ApiError::bad_request(format!(
            "sinceTime: invalid time {t:?}"
        )));
    }
    Ok(())
}

impl ApiServer {
    /// Hand a pod's `log`, `exec`, `attach` or `portforward` request to its node's agent.
    pub(crate) async fn node_call(
        &self,
        t: &Target,
        name: &str,
        sub: &str,
        req: Request<Bytes>,
        params: &Params,
    ) -> ApiResult<Reply> {
        let allowed = match sub {
            "log" => req.method() == http::Method::GET,
            _ => matches!(*req.method(), http::Method::GET | http::Method::POST),
        };
        if !allowed {
            return Err(ApiError::method_not_allowed());
        }
        let pod = self.fresh(t, name).await?.value();
        let ns = t.namespace.as_deref().unwrap_or("default");
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
        let (verb, container) = match sub {
            "log" => {
                check_log_options(params)?;
                (
                    "log",
                    Some(pick_container(&pod, name, params.get("container"))?),
                )
            }
            "exec" => {
                if params.get("command").is_none_or(str::is_empty) {
                    return Err(ApiError::bad_request("you must specify at least 1 command"));
                }
                (
                    "exec",
                    Some(pick_container(&pod, name, params.get("container"))?),
                )
            }
            "attach" => (
                "attach",
                Some(pick_container(&pod, name, params.get("container"))?),
            ),
            _ => ("portforward", None),
        };
        let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
        if node.is_empty() {
            if verb == "log" {
                // Nothing has run yet, so there is nothing to show.
                return Ok(Reply::bytes(StatusCode::OK, "text/plain", Bytes::new()));
            }
            return Err(ApiError::bad_request(format!(
                "pod {name} does not have a host assigned"
            )));
        }
        if sub != "log" {
            let phase = pod["status"]["phase"].as_str().unwrap_or("");
            if phase == "Succeeded" || phase == "Failed" {
                return Err(ApiError::bad_request(format!(
                    "cannot {sub} into a container in a completed pod; current phase is {phase}"
                )));
            }
        }
        let connector = self.node_connector.get().ok_or_else(|| {
            ApiError::service_unavailable("no node agents are connected to this server")
        })?;
        let mut path = format!("/{verb}/{ns}/{name}/{uid}");
        if let Some(c) = container {
            path.push('/');
            path.push_str(&c);
        }
        let (mut parts, body) = req.into_parts();
        let query = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        parts.uri = format!("{path}{query}")
            .parse()
            .map_err(|e| ApiError::bad_request(format!("bad request path: {e}")))?;
        let resp = connector
            .call(&self.node_target(node), Request::from_parts(parts, body))
            .await
            .map_err(|e| {
                ApiError::service_unavailable(format!(
                    "the agent of node {node:?} cannot be reached: {e}"
                ))
            })?;
        Ok(Reply::from_response(resp))
    }

    /// Where node `name`'s agent is, from the watch cache.
    pub(crate) fn node_target(&self, name: &str) -> NodeTarget {
        let nodes = api::resources::find("", "v1", "nodes").expect("nodes are served");
        let node = self.cache.resource(nodes).get(name).map(|e| e.value());
        NodeTarget::of(name, node.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn container_is_named_or_the_only_one() {
        let one = json!({"spec": {"containers": [{"name": "web"}]}});
        assert_eq!(pick_container(&one, "p", None).unwrap(), "web");
        assert_eq!(pick_container(&one, "p", Some("web")).unwrap(), "web");
        let e = pick_container(&one, "p", Some("db")).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "container db is not valid for pod p")
        );
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        let e = pick_container(&two, "p", None).unwrap_err();
        assert_eq!(
            e.message,
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
        assert_eq!(pick_container(&two, "p", Some("i")).unwrap(), "i");
    }

    #[test]
    fn log_options_are_checked() {
        assert!(check_log_options(&Params::parse(Some("tailLines=0&limitBytes=1"))).is_ok());
        assert!(check_log_options(&Params::parse(Some("tailLines=-1"))).is_err());
        assert!(check_log_options(&Params::parse(Some("limitBytes=0"))).is_err());
        assert!(
            check_log_options(&Params::parse(Some(
                "sinceSeconds=5&sinceTime=2024-01-01T00:00:00Z"
            )))
            .is_err()
        );
        assert!(check_log_options(&Params::parse(Some("sinceTime=yesterday"))).is_err());
    }
}
