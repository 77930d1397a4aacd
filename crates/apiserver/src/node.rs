//! Pod subresources that a node's agent serves: `log`, `exec`, `attach` and `portforward`.
//! The API server checks the pod and the container, then hands the request (upgrade and all)
//! to the agent of the pod's node through a [`NodeConnector`].
//!
//! The agent sees `/{verb}/{namespace}/{pod}/{uid}[/{container}]?{query}`: the UID pins the
//! pod instance the API server checked, so a pod re-created under the same name is not
//! confused with the old one.

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde_json::Value;

use crate::body::Body;
use crate::errors::{ApiError, ApiResult};
use crate::request::{Params, Target};
use crate::server::{ApiServer, Reply};

/// Reaches the agent of a node.
#[async_trait]
pub trait NodeConnector: Send + Sync {
    /// Serve `req` on `node`; `None` if no agent for that node can be reached.
    async fn call(&self, node: &str, req: Request<Bytes>) -> Option<Response<Body>>;
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
            .call(node, Request::from_parts(parts, body))
            .await
            .ok_or_else(|| {
                ApiError::service_unavailable(format!(
                    "the agent of node {node:?} cannot be reached"
                ))
            })?;
        Ok(Reply::from_response(resp))
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
