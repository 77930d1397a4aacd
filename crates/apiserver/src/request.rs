//! Reading a request: which route a path names, its query parameters, and which representation
//! the client accepts.

use api::versions::{self, View};
use api::{Registry, Resource};

use crate::errors::ApiError;

/// What a request path names.
#[derive(Debug, PartialEq)]
pub enum Route {
    Version,
    Health(String),
    /// `/metrics`: the server's own metrics, in Prometheus' text format.
    Metrics,
    /// `/berth/v1/snapshot`: a consistent copy of the store and the cluster's identity.
    Snapshot,
    /// `/berth/v1/encryption/rotate`: a new key seals Secrets, which are rewritten with it.
    RotateEncryptionKey,
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/{group}`
    Group(String),
    /// `/api/v1`, `/apis/{group}/{version}`
    ResourceList(String, String),
    OpenApiV2,
    OpenApiV3Index,
    /// `/openapi/v3/api/v1`, `/openapi/v3/apis/{group}/{version}`
    OpenApiV3(String),
    Resource(Target),
}

/// A resource, collection or object (and maybe subresource) path.
#[derive(Debug)]
pub struct Target {
    pub resource: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// Set when the path names an older version than the one stored: requests and replies
    /// are converted through it.
    pub view: Option<&'static View>,
}

impl PartialEq for Target {
    fn eq(&self, other: &Target) -> bool {
        std::ptr::eq(self.resource, other.resource)
            && self.namespace == other.namespace
            && self.name == other.name
            && self.subresource == other.subresource
            && self.view.map(View::group_version) == other.view.map(View::group_version)
    }
}

/// A path segment with its `%XX` escapes decoded (clients escape `:` in `name:port`, for
/// instance); a segment that does not decode to UTF-8 is kept as it came.
pub fn unescape(segment: &str) -> std::borrow::Cow<'_, str> {
    if !segment.contains('%') {
        return segment.into();
    }
    let b = segment.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    match String::from_utf8(out) {
        Ok(s) => s.into(),
        Err(_) => segment.into(),
    }
}

/// What `path` asks for; resources are looked up in `registry`.
pub fn route(path: &str, registry: &Registry) -> Result<Route, ApiError> {
    let trimmed = path.trim_end_matches('/');
    let decoded: Vec<std::borrow::Cow<'_, str>> =
        trimmed.split('/').skip(1).map(unescape).collect();
    let parts: Vec<&str> = decoded.iter().map(|c| c.as_ref()).collect();
    let route = match parts.as_slice() {
        ["version"] => Route::Version,
        ["metrics"] => Route::Metrics,
        ["berth", "v1", "snapshot"] => Route::Snapshot,
        ["berth", "v1", "encryption", "rotate"] => Route::RotateEncryptionKey,
        [h @ ("healthz" | "livez" | "readyz"), rest @ ..] => {
            let mut name = (*h).to_string();
            for r in rest {
                name.push('/');
                name.push_str(r);
            }
            Route::Health(name)
        }
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::Groups,
        ["apis", group] => Route::Group((*group).to_string()),
        ["api", version] => Route::ResourceList(String::new(), (*version).to_string()),
        ["apis", group, version] => {
            Route::ResourceList((*group).to_string(), (*version).to_string())
        }
        ["openapi", "v2"] | ["swagger-2.0.0.pb-v1"] => Route::OpenApiV2,
        ["openapi", "v3"] => Route::OpenApiV3Index,
        ["openapi", "v3", rest @ ..] if !rest.is_empty() => Route::OpenApiV3(rest.join("/")),
        ["api", version, rest @ ..] => Route::Resource(target(registry, "", version, rest)?),
        ["apis", group, version, rest @ ..] => {
            Route::Resource(target(registry, group, version, rest)?)
        }
        _ => return Err(ApiError::no_route()),
    };
    Ok(route)
}

/// The resource served at `group/version` under `plural`, and the view converting it if
/// that is not its stored version.
fn served(
    registry: &Registry,
    group: &str,
    version: &str,
    plural: &str,
) -> Option<(&'static Resource, Option<&'static View>)> {
    if let Some(r) = registry.find(group, version, plural) {
        return Some((r, None));
    }
    versions::find(group, version, plural).map(|v| (v.storage(), Some(v)))
}

fn target(
    registry: &Registry,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Target, ApiError> {
    let find =
        |plural: &str| served(registry, group, version, plural).ok_or_else(ApiError::no_route);
    let s = |x: &&str| Some((*x).to_string());
    // `namespaces/{ns}/{plural}...` names namespaced content unless the third segment is a
    // subresource of the namespace itself.
    if let ["namespaces", ns, plural, tail @ ..] = rest
        && let Some((r, view)) =
            served(registry, group, version, plural).filter(|(r, _)| r.namespaced)
    {
        return match tail {
            [] => Ok(Target {
                resource: r,
                namespace: s(ns),
                name: None,
                subresource: None,
                view,
            }),
            [name] => Ok(Target {
                resource: r,
                namespace: s(ns),
                name: s(name),
                subresource: None,
                view,
            }),
            [name, sub] | [name, sub @ "proxy", ..] => Ok(Target {
                resource: r,
                namespace: s(ns),
                name: s(name),
                subresource: s(sub),
                view,
            }),
            _ => Err(ApiError::no_route()),
        };
    }
    match rest {
        [plural] => {
            let (resource, view) = find(plural)?;
            Ok(Target {
                resource,
                namespace: None,
                name: None,
                subresource: None,
                view,
            })
        }
        [plural, name] => {
            let (r, view) = find(plural)?;
            if r.namespaced {
                return Err(ApiError::no_route());
            }
            Ok(Target {
                resource: r,
                namespace: None,
                name: s(name),
                subresource: None,
                view,
            })
        }
        [plural, name, sub] | [plural, name, sub @ "proxy", ..] => {
            let (r, view) = find(plural)?;
            if r.namespaced {
                return Err(ApiError::no_route());
            }
            Ok(Target {
                resource: r,
                namespace: None,
                name: s(name),
                subresource: s(sub),
                view,
            })
        }
        _ => Err(ApiError::no_route()),
    }
}

/// Query parameters, decoded. Unknown and empty parameters are ignored, as kubectl and
/// kube-rs rely on.
#[derive(Debug, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    pub fn parse(query: Option<&str>) -> Params {
        let mut pairs = Vec::new();
        for part in query.unwrap_or("").split('&') {
            if part.is_empty() {
                continue;
            }
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            pairs.push((decode(k), decode(v)));
        }
        Params { pairs }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated parameter (`?exclude=a&exclude=b`).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// `?watch=true`, `?watch=1` and a bare `?watch` are all true.
    pub fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true" | "1" | ""))
    }

    pub fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid value for {name}: {v:?}"))),
        }
    }
}

/// Percent-decoding as Go's query parser does it, `+` meaning space.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The representation a client asked for in `Accept`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Json,
    /// A `meta.k8s.io` Table, in this version.
    Table(&'static str),
    /// Only the metadata, as `meta.k8s.io` `PartialObjectMetadata` (client-go's metadata
    /// informers, kube-rs' `metadata` calls); `list` when the `...List` form was asked for.
    Metadata {
        version: &'static str,
        list: bool,
    },
}

/// Whether and which aggregated discovery a client accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscoveryFormat {
    Legacy,
    Aggregated(&'static str),
}

fn media_params(accept: &str) -> impl Iterator<Item = Vec<(&str, &str)>> {
    accept.split(',').map(|media| {
        media
            .split(';')
            .skip(1)
            .filter_map(|p| p.trim().split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect()
    })
}

pub fn output(accept: Option<&str>) -> Output {
    for params in media_params(accept.unwrap_or("")) {
        let get = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        if get("g") != Some("meta.k8s.io") {
            continue;
        }
        let version = match get("v") {
            Some("v1") => "v1",
            Some("v1beta1") => "v1beta1",
            _ => continue,
        };
        match get("as") {
            Some("Table") => return Output::Table(version),
            Some("PartialObjectMetadata") => {
                return Output::Metadata {
                    version,
                    list: false,
                };
            }
            Some("PartialObjectMetadataList") => {
                return Output::Metadata {
                    version,
                    list: true,
                };
            }
            _ => {}
        }
    }
    Output::Json
}

pub fn discovery_format(accept: Option<&str>) -> DiscoveryFormat {
    let mut best = DiscoveryFormat::Legacy;
    for params in media_params(accept.unwrap_or("")) {
        let get = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        if get("as") == Some("APIGroupDiscoveryList") && get("g") == Some("apidiscovery.k8s.io") {
            match get("v") {
                Some("v2") => return DiscoveryFormat::Aggregated("v2"),
                Some("v2beta1") => best = DiscoveryFormat::Aggregated("v2beta1"),
                _ => {}
            }
        }
    }
    best
}

/// The strings of a JSON list (none for anything else).
pub(crate) fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("/version/", &Registry::default()).unwrap(),
            Route::Version
        );
        assert_eq!(route("/apis", &Registry::default()).unwrap(), Route::Groups);
        assert_eq!(
            route("/apis/apps/v1", &Registry::default()).unwrap(),
            Route::ResourceList("apps".into(), "v1".into())
        );
        let Route::Resource(t) = route(
            "/api/v1/namespaces/default/pods/web/status",
            &Registry::default(),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (
                t.resource.plural,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.subresource.as_deref()
            ),
            ("pods", Some("default"), Some("web"), Some("status"))
        );
        let Route::Resource(t) = route("/api/v1/namespaces/default", &Registry::default()).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (t.resource.plural, t.name.as_deref()),
            ("namespaces", Some("default"))
        );
        let Route::Resource(t) =
            route("/api/v1/namespaces/gone/finalize", &Registry::default()).unwrap()
        else {
            panic!()
        };
        assert_eq!(t.subresource.as_deref(), Some("finalize"));
        let Route::Resource(t) = route("/apis/apps/v1/deployments", &Registry::default()).unwrap()
        else {
            panic!()
        };
        assert_eq!((t.resource.plural, t.namespace), ("deployments", None));
        assert!(
            route("/api/v1/pods/x", &Registry::default()).is_err(),
            "namespaced objects need a namespace"
        );
        assert!(route("/apis/apps/v1/widgets", &Registry::default()).is_err());
        assert!(route("/nope", &Registry::default()).is_err());
    }

    #[test]
    fn params_are_forgiving() {
        let p = Params::parse(Some(
            "&limit=500&labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch",
        ));
        assert_eq!(p.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(p.flag("watch"));
        assert_eq!(p.number::<i64>("limit").unwrap(), Some(500));
        assert!(p.number::<i64>("limit").is_ok());
        assert!(
            Params::parse(Some("limit=x"))
                .number::<i64>("limit")
                .is_err()
        );
        assert_eq!(decode("100%"), "100%");
    }

    #[test]
    fn accept_negotiation() {
        let table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(output(Some(table)), Output::Table("v1"));
        assert_eq!(output(Some("application/json")), Output::Json);
        assert_eq!(
            output(Some(
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
            )),
            Output::Metadata {
                version: "v1",
                list: true
            }
        );
        assert_eq!(
            output(Some(
                "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
            )),
            Output::Metadata {
                version: "v1",
                list: false
            }
        );
        let v2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(
            discovery_format(Some(v2)),
            DiscoveryFormat::Aggregated("v2")
        );
        let beta = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(
            discovery_format(Some(beta)),
            DiscoveryFormat::Aggregated("v2beta1")
        );
        assert_eq!(discovery_format(None), DiscoveryFormat::Legacy);
    }

    #[test]
    fn escaped_segments_are_decoded() {
        assert_eq!(unescape("web%3Ahttp"), "web:http");
        assert_eq!(unescape("plain"), "plain");
        assert_eq!(unescape("bad%zz%"), "bad%zz%");
        let Ok(Route::Resource(t)) = route(
            "/api/v1/namespaces/n/services/web%3A80/proxy/x",
            &Registry::default(),
        ) else {
            panic!("a proxy path routes");
        };
        assert_eq!(t.name.as_deref(), Some("web:80"));
        assert_eq!(t.subresource.as_deref(), Some("proxy"));
    }
}
