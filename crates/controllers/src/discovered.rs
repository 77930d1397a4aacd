//! Kinds the API server serves beyond the built-in ones (custom resources), found through
//! discovery as Kubernetes' controllers find them: the namespace controller empties them from a
//! namespace being deleted, and the garbage collector follows them.

use client::{Client, ClientError};
use http::Method;

/// One custom resource as discovery lists it, in its group's preferred version.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Discovered {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
}

impl Discovered {
    /// The path of its collection, in `namespace` or cluster-wide.
    pub fn path(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!(
                "/apis/{}/{}/namespaces/{ns}/{}",
                self.group, self.version, self.plural
            ),
            _ => format!("/apis/{}/{}/{}", self.group, self.version, self.plural),
        }
    }

    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }
}

/// The served resources that are not built in, with the verbs `need`s.
pub async fn custom_resources(
    client: &Client,
    need: &[&str],
) -> Result<Vec<Discovered>, ClientError> {
    let builtin: Vec<&str> = api::resources::groups()
        .into_iter()
        .map(|(g, _)| g)
        .collect();
    let groups = client.request_json(Method::GET, "/apis", None).await?;
    let mut out = Vec::new();
    for g in groups["groups"].as_array().into_iter().flatten() {
        let name = g["name"].as_str().unwrap_or("");
        if builtin.contains(&name) {
            continue;
        }
        let Some(gv) = g["preferredVersion"]["groupVersion"].as_str() else {
            continue;
        };
        let version = g["preferredVersion"]["version"].as_str().unwrap_or("");
        let list = match client
            .request_json(Method::GET, &format!("/apis/{gv}"), None)
            .await
        {
            Ok(l) => l,
            // The group went away between the two requests.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        for r in list["resources"].as_array().into_iter().flatten() {
            let plural = r["name"].as_str().unwrap_or("");
            if plural.contains('/') {
                continue;
            }
            let verbs: Vec<&str> = r["verbs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .collect();
            if !need.iter().all(|n| verbs.contains(n)) {
                continue;
            }
            out.push(Discovered {
                group: name.to_string(),
                version: version.to_string(),
                plural: plural.to_string(),
                kind: r["kind"].as_str().unwrap_or("").to_string(),
                namespaced: r["namespaced"].as_bool().unwrap_or(false),
            });
        }
    }
    Ok(out)
}

/// The path of the `scale` subresource of object `name` of `kind` in `api_version`, if that
/// kind has one (discovery lists `<plural>/scale`): how the autoscaler and the disruption
/// controller reach kinds they do not know, custom ones above all.
pub async fn scale_path(
    client: &Client,
    api_version: &str,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<String>, ClientError> {
    let base = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    let list = match client.request_json(Method::GET, &base, None).await {
        Ok(l) => l,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    let resources = list["resources"].as_array().cloned().unwrap_or_default();
    let Some(main) = resources
        .iter()
        .find(|r| r["kind"] == kind && r["name"].as_str().is_some_and(|n| !n.contains('/')))
    else {
        return Ok(None);
    };
    let plural = main["name"].as_str().unwrap_or("");
    let scalable = resources
        .iter()
        .any(|r| r["name"].as_str() == Some(&format!("{plural}/scale")));
    if !scalable {
        return Ok(None);
    }
    Ok(Some(if main["namespaced"].as_bool().unwrap_or(false) {
        format!("{base}/namespaces/{namespace}/{plural}/{name}/scale")
    } else {
        format!("{base}/{plural}/{name}/scale")
    }))
}
