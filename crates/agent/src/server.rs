//! The agent's side of pod `log`, `exec`, `attach` and `portforward`. The API server checks
//! the pod and container and hands over the request as
//! `/{verb}/{namespace}/{pod}/{uid}[/{container}]?{query}`, upgrade and all.

use std::sync::Arc;

use api::k8s_openapi::api::core::v1::Pod;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use runtime::containers::{ExecSpec, ShimStatus};
use serde_json::json;
use tokio::sync::mpsc;

use crate::Shared;
use crate::logs::{self, LogOptions};
use crate::portforward::{self, Target};
use crate::streams::{self, Protocol, Want};

/// A response body: whole, or streamed from a channel (followed logs).
pub enum NodeBody {
    Full(Bytes),
    Stream(mpsc::Receiver<Bytes>),
}

const EXEC_SPDY: &[&str] = &["v4.channel.k8s.io"];
const EXEC_WEBSOCKET: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
const FORWARD_SPDY: &[&str] = &["portforward.k8s.io"];
const FORWARD_WEBSOCKET: &[&str] = &[
    "SPDY/3.1+portforward.k8s.io",
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
];

fn status(code: StatusCode, reason: &str, message: &str) -> Response<NodeBody> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(NodeBody::Full(Bytes::from(
            [api::wire::to_vec(&body), b"\n".to_vec()].concat(),
        )))
        .expect("a valid response")
}

fn bad_request(message: &str) -> Response<NodeBody> {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decode a query component the way Go's `url.ParseQuery` does (`+` is a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (unescape(k), unescape(v)),
            None => (unescape(p), String::new()),
        })
        .collect()
}

fn flag(q: &[(String, String)], k: &str) -> bool {
    q.iter()
        .any(|(n, v)| n == k && matches!(v.as_str(), "true" | "1" | ""))
}

#[derive(Clone)]
pub struct NodeServer {
    shared: Arc<Shared>,
}

struct Call {
    verb: String,
    namespace: String,
    pod: String,
    uid: String,
    container: String,
}

fn call_of(path: &str) -> Option<Call> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if !(4..=5).contains(&parts.len()) {
        return None;
    }
    Some(Call {
        verb: parts[0].into(),
        namespace: parts[1].into(),
        pod: parts[2].into(),
        uid: parts[3].into(),
        container: parts.get(4).copied().unwrap_or("").into(),
    })
}

impl NodeServer {
    pub(crate) fn new(shared: Arc<Shared>) -> NodeServer {
        NodeServer { shared }
    }

    pub async fn handle(&self, mut req: Request<Bytes>) -> Response<NodeBody> {
        if req.uri().path() == "/stats/summary" {
            return match self.shared.stats.summary(&self.shared) {
                Some(s) => Response::builder()
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(NodeBody::Full(Bytes::from(
                        serde_json::to_vec(&s).unwrap_or_default(),
                    )))
                    .unwrap_or_else(|_| {
                        status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "")
                    }),
                None => status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "no usage measured yet",
                ),
            };
        }
        let Some(call) = call_of(req.uri().path()) else {
            return status(StatusCode::NOT_FOUND, "NotFound", "no such node endpoint");
        };
        let query = query_pairs(req.uri().query());
        let pod = match self
            .shared
            .client
            .get::<Pod>(Some(&call.namespace), &call.pod)
            .await
        {
            Ok(Some(p)) if p.metadata.uid.as_deref() == Some(call.uid.as_str()) => p,
            Ok(_) => {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("pods \"{}\" not found", call.pod),
                );
            }
            Err(e) => {
                return status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    &e.to_string(),
                );
            }
        };
        match call.verb.as_str() {
            "log" => self.logs(&call, &pod, &query).await,
            "exec" | "attach" => self.exec(&call, &pod, &mut req, &query),
            "portforward" => self.port_forward(&call, &pod, &mut req, &query),
            _ => status(StatusCode::NOT_FOUND, "NotFound", "no such node endpoint"),
        }
    }

    /// The ID of the container's latest attempt, if it ever ran.
    fn latest(&self, uid: &str, name: &str) -> Option<(String, i32)> {
        let prefix = format!("{uid}_{name}_");
        self.shared
            .runtime
            .list()
            .into_iter()
            .filter_map(|id| {
                let n: i32 = id.strip_prefix(&prefix)?.parse().ok()?;
                Some((id, n))
            })
            .max_by_key(|(_, n)| *n)
    }

    async fn logs(&self, c: &Call, pod: &Pod, query: &[(String, String)]) -> Response<NodeBody> {
        let opts = LogOptions::from_query(query);
        let dir = self
            .shared
            .log_dir(&c.namespace, &c.pod, &c.uid)
            .join(&c.container);
        let attempts = logs::attempts(&dir);
        let attempt = if opts.previous {
            match attempts.get(1) {
                Some(a) => *a,
                None => {
                    return bad_request(&format!(
                        "previous terminated container \"{}\" in pod \"{}\" not found",
                        c.container, c.pod
                    ));
                }
            }
        } else {
            match attempts.first() {
                Some(a) => *a,
                None => {
                    let reason = waiting_reason(pod, &c.container)
                        .unwrap_or_else(|| "ContainerCreating".into());
                    return bad_request(&format!(
                        "container \"{}\" in pod \"{}\" is waiting to start: {reason}",
                        c.container, c.pod
                    ));
                }
            }
        };
        let files = logs::attempt_files(&dir, attempt);
        let id = format!("{}_{}_{attempt}", c.uid, c.container);
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(logs::stream(self.shared.clone(), id, files, opts, tx));
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "text/plain")
            .body(NodeBody::Stream(rx))
            .expect("a valid response")
    }

    fn exec(
        &self,
        c: &Call,
        pod: &Pod,
        req: &mut Request<Bytes>,
        query: &[(String, String)],
    ) -> Response<NodeBody> {
        let attach = c.verb == "attach";
        let mut want = Want {
            stdin: flag(query, "stdin"),
            stdout: flag(query, "stdout"),
            stderr: flag(query, "stderr"),
            tty: flag(query, "tty"),
        };
        if attach {
            // Whether a container has a terminal was settled when it started; an attach takes
            // it as it is (as the kubelet does).
            let has_tty = pod
                .spec
                .iter()
                .flat_map(|s| {
                    let ephemeral = s
                        .ephemeral_containers
                        .iter()
                        .flatten()
                        .map(|e| (e.name.as_str(), e.tty));
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                        .map(|k| (k.name.as_str(), k.tty))
                        .chain(ephemeral)
                })
                .find(|(name, _)| *name == c.container)
                .and_then(|(_, tty)| tty)
                == Some(true);
            want.tty &= has_tty;
        }
        let argv: Vec<String> = query
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect();
        if !attach && argv.is_empty() {
            return bad_request("you must specify at least 1 command");
        }
        if !want.stdin && !want.stdout && !want.stderr {
            return bad_request("you must specify at least 1 of stdin, stdout, stderr");
        }
        let id = match self.latest(&c.uid, &c.container) {
            Some((id, _))
                if matches!(
                    self.shared.runtime.status(&id),
                    Some(ShimStatus::Running { .. })
                ) =>
            {
                id
            }
            _ => {
                return bad_request(&format!(
                    "container {} is not running in pod {}",
                    c.container, c.pod
                ));
            }
        };
        let proto = match streams::negotiate(req.headers(), EXEC_SPDY, EXEC_WEBSOCKET) {
            Ok(p) => p,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
        };
        let response = streams::switching(&proto, req.headers());
        let shared = self.shared.clone();
        let log = attach.then(|| {
            let n = id.rsplit('_').next().unwrap_or("0");
            self.shared
                .log_dir(&c.namespace, &c.pod, &c.uid)
                .join(&c.container)
                .join(format!("{n}.log"))
        });
        streams::on_upgrade(req, move |io| async move {
            let Some(ch) = streams::exec_channels(proto, io, want).await else {
                return;
            };
            match log {
                Some(log) => crate::exec::attach(shared, id, log, want, ch).await,
                None => {
                    let spec = ExecSpec {
                        argv,
                        tty: want.tty,
                        stdin: want.stdin,
                    };
                    crate::exec::exec(shared, id, spec, ch).await
                }
            }
        });
        response
    }

    fn port_forward(
        &self,
        c: &Call,
        pod: &Pod,
        req: &mut Request<Bytes>,
        query: &[(String, String)],
    ) -> Response<NodeBody> {
        let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
        let netns = if host_network {
            None
        } else {
            match self.shared.runtime.sandbox(&c.uid).and_then(|s| s.net) {
                Some(n) => Some(n),
                None => {
                    return bad_request(&format!(
                        "pod {} has no running sandbox to forward into",
                        c.pod
                    ));
                }
            }
        };
        let target = Target { netns };
        let proto = match streams::negotiate(req.headers(), FORWARD_SPDY, FORWARD_WEBSOCKET) {
            Ok(p) => p,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
        };
        let ports = match &proto {
            Protocol::WebSocket(sub) if sub.ends_with("channel.k8s.io") => {
                match portforward::ports(query) {
                    Ok(p) if !p.is_empty() => p,
                    Ok(_) => return bad_request("query parameter \"port\" is required"),
                    Err(e) => return bad_request(&e),
                }
            }
            _ => Vec::new(),
        };
        let response = streams::switching(&proto, req.headers());
        streams::on_upgrade(req, move |io| async move {
            match proto {
                Protocol::Spdy(_) => portforward::serve_spdy(io, target).await,
                Protocol::WebSocket(sub) if sub.starts_with("SPDY") => {
                    portforward::serve_spdy(streams::ws::tunnel(io).await, target).await
                }
                Protocol::WebSocket(_) => portforward::serve_websocket(io, target, ports).await,
            }
        });
        response
    }
}

fn waiting_reason(pod: &Pod, container: &str) -> Option<String> {
    let s = pod.status.as_ref()?;
    s.container_statuses
        .iter()
        .flatten()
        .chain(s.init_container_statuses.iter().flatten())
        .chain(s.ephemeral_container_statuses.iter().flatten())
        .find(|c| c.name == container)
        .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_like_go() {
        let q = query_pairs(Some(
            "command=sh&command=-c&command=echo+hi%20there%3B&tty=true&x=%zz",
        ));
        assert_eq!(
            q,
            vec![
                ("command".to_string(), "sh".to_string()),
                ("command".to_string(), "-c".to_string()),
                ("command".to_string(), "echo hi there;".to_string()),
                ("tty".to_string(), "true".to_string()),
                ("x".to_string(), "%zz".to_string()),
            ]
        );
        assert!(flag(&q, "tty"));
        assert!(!flag(&q, "stdin"));
    }

    #[test]
    fn paths_name_the_pod_instance() {
        let c = call_of("/exec/default/web/1234/app").unwrap();
        assert_eq!(
            (
                c.verb.as_str(),
                c.namespace.as_str(),
                c.pod.as_str(),
                c.uid.as_str(),
                c.container.as_str()
            ),
            ("exec", "default", "web", "1234", "app")
        );
        assert_eq!(
            call_of("/portforward/default/web/1234").unwrap().container,
            ""
        );
        assert!(call_of("/exec/default").is_none());
    }
}
