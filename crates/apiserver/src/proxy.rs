//! The `proxy` subresources: `pods/NAME[:PORT]/proxy/...`, `services/NAME[:PORT]/proxy/...`
//! and `nodes/NAME/proxy/...`, as `kubectl proxy` and `kubectl get --raw` use them. A pod or
//! Service request goes to the pod's address over plain HTTP (the API server reaches pod
//! addresses as the nodes route them); a node's goes to its agent. Picking the target is pure
//! (`pod_target`, `service_target`) and tested on its own.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::body::Body;
use crate::errors::{ApiError, ApiResult};
use crate::request::Target;
use crate::server::{ApiServer, Reply};

/// How long connecting to a pod may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `[scheme:]name[:port]`, as the proxy path names its target.
#[derive(Debug, PartialEq, Eq)]
pub struct Named<'a> {
    pub scheme: Option<&'a str>,
    pub name: &'a str,
    pub port: Option<&'a str>,
}

pub fn parse_name(s: &str) -> Named<'_> {
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [scheme @ ("http" | "https"), name, port] => Named {
            scheme: Some(scheme),
            name,
            port: Some(*port).filter(|p| !p.is_empty()),
        },
        [name, port] => Named {
            scheme: None,
            name,
            port: Some(*port).filter(|p| !p.is_empty()),
        },
        _ => Named {
            scheme: None,
            name: s,
            port: None,
        },
    }
}

fn unavailable(msg: String) -> ApiError {
    ApiError::service_unavailable(msg)
}

/// Where a pod request goes: the pod's address and the port (a number, or the name of a
/// container port; 80 when none is given).
pub fn pod_target(pod: &Value, port: Option<&str>) -> ApiResult<(String, u16)> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let ip = pod["status"]["podIP"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| unavailable(format!("pod {name} has no IP address yet")))?;
    let port = match port {
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => container_port(pod, p).ok_or_else(|| {
                ApiError::bad_request(format!("pod {name} has no container port named {p:?}"))
            })?,
        },
    };
    Ok((ip.to_string(), port))
}

fn container_port(pod: &Value, name: &str) -> Option<u16> {
    pod["spec"]["containers"]
        .as_array()?
        .iter()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
}

/// Where a Service request goes: a ready endpoint of the Service port named (by name or
/// number; the only port when none is named), from the Service's Endpoints.
pub fn service_target(
    svc: &Value,
    endpoints: Option<&Value>,
    port: Option<&str>,
    pick: usize,
) -> ApiResult<(String, u16)> {
    let name = svc["metadata"]["name"].as_str().unwrap_or("");
    if svc["spec"]["type"].as_str() == Some("ExternalName") {
        return Err(ApiError::bad_request(format!(
            "the service {name} is of type ExternalName: there is no endpoint to proxy to"
        )));
    }
    let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    let chosen = match port {
        Some(p) => ports.iter().find(|sp| {
            sp["name"].as_str() == Some(p)
                || p.parse::<i64>()
                    .ok()
                    .is_some_and(|n| sp["port"].as_i64() == Some(n))
        }),
        None if ports.len() == 1 => ports.first(),
        None => ports
            .iter()
            .find(|sp| sp["name"].as_str().is_none_or(str::is_empty)),
    }
    .ok_or_else(|| {
        unavailable(format!(
            "no service port {:?} found for service \"{name}\"",
            port.unwrap_or("")
        ))
    })?;
    let port_name = chosen["name"].as_str().unwrap_or("");
    let mut found: Vec<(String, u16)> = Vec::new();
    for subset in endpoints
        .and_then(|e| e["subsets"].as_array())
        .into_iter()
        .flatten()
    {
        let Some(p) = subset["ports"].as_array().and_then(|ps| {
            ps.iter()
                .find(|p| p["name"].as_str().unwrap_or("") == port_name)
                .and_then(|p| p["port"].as_u64())
                .and_then(|p| u16::try_from(p).ok())
        }) else {
            continue;
        };
        for a in subset["addresses"].as_array().into_iter().flatten() {
            if let Some(ip) = a["ip"].as_str() {
                found.push((ip.to_string(), p));
            }
        }
    }
    if found.is_empty() {
        return Err(unavailable(format!(
            "no endpoints available for service \"{name}\""
        )));
    }
    Ok(found.swap_remove(pick % found.len()))
}

/// The path after `/NAME/proxy` in the request (at least `/`), as it came (escapes kept),
/// with its query.
fn rest_of(req: &Request<Bytes>, name: &str) -> String {
    let path = req.uri().path();
    let segments: Vec<&str> = path.split('/').collect();
    let at = (0..segments.len().saturating_sub(1))
        .find(|&i| segments[i + 1] == "proxy" && crate::request::unescape(segments[i]) == name);
    let rest = match at {
        Some(i) => {
            let tail = segments[i + 2..].join("/");
            if tail.is_empty() && !path.ends_with("/proxy/") {
                String::new()
            } else {
                format!("/{tail}")
            }
        }
        None => String::new(),
    };
    let rest = if rest.is_empty() { "/" } else { rest.as_str() };
    match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    }
}

impl ApiServer {
    pub(crate) async fn proxy(
        &self,
        t: &Target,
        raw_name: &str,
        req: Request<Bytes>,
    ) -> ApiResult<Reply> {
        let named = parse_name(raw_name);
        if named.scheme == Some("https") {
            return Err(ApiError::bad_request(
                "proxying to https endpoints is not supported".to_string(),
            ));
        }
        let rest = rest_of(&req, raw_name);
        let target = match t.resource.kind {
            "Node" => return self.proxy_node(named.name, &rest, req).await,
            "Pod" => {
                let pod = self.fresh(t, named.name).await?.value();
                pod_target(&pod, named.port)?
            }
            _ => {
                let svc = self.fresh(t, named.name).await?.value();
                let ns = t.namespace.as_deref().unwrap_or("default");
                let endpoints = match api::resources::find("", "v1", "endpoints") {
                    Some(resource) => {
                        let et = Target {
                            resource,
                            namespace: Some(ns.to_string()),
                            name: Some(named.name.to_string()),
                            subresource: None,
                            view: None,
                        };
                        self.fresh(&et, named.name).await.ok().map(|e| e.value())
                    }
                    None => None,
                };
                service_target(&svc, endpoints.as_ref(), named.port, fastrand::usize(..))?
            }
        };
        forward(target, &rest, req).await
    }

    async fn proxy_node(&self, node: &str, rest: &str, req: Request<Bytes>) -> ApiResult<Reply> {
        let connector = self.node_connector.get().ok_or_else(|| {
            ApiError::service_unavailable("no node agents are connected to this server")
        })?;
        let (mut parts, body) = req.into_parts();
        parts.uri = rest
            .parse()
            .map_err(|e| ApiError::bad_request(format!("bad proxy path: {e}")))?;
        let resp = connector
            .call(&self.node_target(node), Request::from_parts(parts, body))
            .await
            .map_err(|e| {
                unavailable(format!("the agent of node {node:?} cannot be reached: {e}"))
            })?;
        Ok(Reply::from_response(resp))
    }
}

/// Send the request to `ip:port` over HTTP/1.1 and stream the answer back.
async fn forward((ip, port): (String, u16), rest: &str, req: Request<Bytes>) -> ApiResult<Reply> {
    let addr = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    let failed = |e: &dyn std::fmt::Display| {
        ApiError::service_unavailable(format!("error trying to reach {addr}: {e}"))
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr))
        .await
        .map_err(|_| failed(&"connection timed out"))?
        .map_err(|e| failed(&e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| failed(&e))?;
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    parts.uri = rest
        .parse()
        .map_err(|e| ApiError::bad_request(format!("bad proxy path: {e}")))?;
    // The caller's credentials are for the API server, not for the pod.
    parts.headers.remove(header::AUTHORIZATION);
    for h in [
        header::CONNECTION,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
    ] {
        parts.headers.remove(h);
    }
    if let Ok(v) = HeaderValue::from_str(&addr) {
        parts.headers.insert(header::HOST, v);
    }
    let out = Request::from_parts(parts, http_body_util::Full::new(body));
    let resp = sender.send_request(out).await.map_err(|e| failed(&e))?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ApiError::bad_request(
            "upgrades through the proxy are not supported".to_string(),
        ));
    }
    Ok(stream_back(resp, ()))
}

/// A backend's answer passed on as it arrives (watches and followed logs stream), without
/// its hop-by-hop headers. `keep` (the connection's driver) lives as long as the stream.
pub(crate) fn stream_back<K: Send + 'static>(
    resp: Response<hyper::body::Incoming>,
    keep: K,
) -> Reply {
    Reply::from_response(streamed(resp, keep))
}

/// A response whose body is passed on as it arrives, without hop-by-hop headers; `keep`
/// lives as long as the stream.
pub(crate) fn streamed<K: Send + 'static>(
    resp: Response<hyper::body::Incoming>,
    keep: K,
) -> Response<Body> {
    let (parts, mut incoming) = resp.into_parts();
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let _keep = keep;
        while let Some(Ok(frame)) = incoming.frame().await {
            if let Ok(data) = frame.into_data()
                && tx.send(data).await.is_err()
            {
                break;
            }
        }
    });
    let mut resp = Response::from_parts(parts, Body::from_receiver(rx));
    resp.headers_mut().remove(header::CONNECTION);
    resp.headers_mut().remove(header::TRANSFER_ENCODING);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_carry_a_scheme_and_port() {
        assert_eq!(
            parse_name("web"),
            Named {
                scheme: None,
                name: "web",
                port: None
            }
        );
        assert_eq!(parse_name("web:80").port, Some("80"));
        assert_eq!(parse_name("web:http").port, Some("http"));
        let n = parse_name("https:web:443");
        assert_eq!(
            (n.scheme, n.name, n.port),
            (Some("https"), "web", Some("443"))
        );
        assert_eq!(parse_name("web:").port, None);
    }

    #[test]
    fn pods_are_reached_at_their_address_and_named_port() {
        let pod = json!({"metadata": {"name": "p"}, "status": {"podIP": "10.42.0.5"},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]}});
        assert_eq!(pod_target(&pod, None).unwrap(), ("10.42.0.5".into(), 80));
        assert_eq!(pod_target(&pod, Some("9000")).unwrap().1, 9000);
        assert_eq!(pod_target(&pod, Some("http")).unwrap().1, 8080);
        assert_eq!(pod_target(&pod, Some("nope")).unwrap_err().code, 400);
        let pending = json!({"metadata": {"name": "p"}, "status": {}});
        assert_eq!(pod_target(&pending, None).unwrap_err().code, 503);
    }

    #[test]
    fn services_go_to_a_ready_endpoint_of_the_port_asked() {
        let svc = json!({"metadata": {"name": "web"}, "spec": {"ports": [
            {"name": "http", "port": 80}, {"name": "metrics", "port": 9090}]}});
        let ep = json!({"subsets": [{"addresses": [{"ip": "10.42.0.5"}, {"ip": "10.42.0.6"}],
            "ports": [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9100}]}]});
        assert_eq!(
            service_target(&svc, Some(&ep), Some("80"), 0).unwrap(),
            ("10.42.0.5".into(), 8080)
        );
        assert_eq!(
            service_target(&svc, Some(&ep), Some("http"), 1).unwrap(),
            ("10.42.0.6".into(), 8080)
        );
        assert_eq!(
            service_target(&svc, Some(&ep), Some("metrics"), 0)
                .unwrap()
                .1,
            9100
        );
        // Two ports, none named: which one is meant cannot be told.
        assert_eq!(
            service_target(&svc, Some(&ep), None, 0).unwrap_err().code,
            503
        );
        let e = service_target(&svc, None, Some("http"), 0).unwrap_err();
        assert_eq!(e.message, "no endpoints available for service \"web\"");
        let one = json!({"metadata": {"name": "one"}, "spec": {"ports": [{"port": 80}]}});
        let ep1 =
            json!({"subsets": [{"addresses": [{"ip": "10.42.0.7"}], "ports": [{"port": 8080}]}]});
        assert_eq!(
            service_target(&one, Some(&ep1), None, 0).unwrap(),
            ("10.42.0.7".into(), 8080)
        );
        let ext = json!({"metadata": {"name": "x"}, "spec": {"type": "ExternalName"}});
        assert_eq!(service_target(&ext, None, None, 0).unwrap_err().code, 400);
    }

    #[test]
    fn the_rest_of_the_path_goes_to_the_target_as_it_came() {
        let req = |uri: &str| Request::builder().uri(uri).body(Bytes::new()).unwrap();
        let r = req("/api/v1/namespaces/n/services/web%3Ahttp/proxy/a/b%20c?x=1");
        assert_eq!(rest_of(&r, "web:http"), "/a/b%20c?x=1");
        assert_eq!(
            rest_of(&req("/api/v1/namespaces/n/pods/proxy/proxy"), "proxy"),
            "/"
        );
        assert_eq!(
            rest_of(&req("/api/v1/namespaces/n/pods/proxy/proxy/"), "proxy"),
            "/"
        );
        assert_eq!(
            rest_of(&req("/api/v1/nodes/n1/proxy/stats/summary"), "n1"),
            "/stats/summary"
        );
    }
}
