//! `berth user add`: a user of the cluster, as a kubeconfig with a client certificate the
//! cluster CA signed (the user is the certificate's common name, the group its organization).
//! What the user may do is up to RBAC: a new user can do nothing until bound to a role, unless
//! given a namespace of its own (`--namespace`, `--namespace-quota`): the user is its admin,
//! within a ResourceQuota, as on a shared machine where each user gets a share.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use http::Method;
use serde_json::{Value, json};

use crate::pki;

#[derive(clap::Subcommand)]
pub enum UserCommand {
    /// Write a kubeconfig for a new user NAME (a client certificate signed by the cluster CA).
    Add {
        name: String,
        /// A group the user is in (RBAC bindings may name it).
        #[arg(long)]
        group: Option<String>,
        /// Where to write the kubeconfig (default: <data-dir>/users/NAME.kubeconfig).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The API server address written into it (default: the admin kubeconfig's).
        #[arg(long)]
        server: Option<String>,
        /// Give the user a namespace of its own, named after it, where it is admin (the
        /// kubeconfig works there by default). Needs the running server.
        #[arg(long)]
        namespace: bool,
        /// The user's share in its own namespace (implies --namespace), as ResourceQuota hard
        /// limits: `cpu=4,memory=8Gi,pods=20`. Pods there that name no requests get small
        /// defaults.
        #[arg(long, value_parser = parse_quota)]
        namespace_quota: Option<Quota>,
    },
}

/// A quota's hard limits: resource names and amounts.
#[derive(Clone, Debug, Default)]
pub struct Quota(Vec<(String, String)>);

/// `cpu=4,memory=8Gi`: the quota's resource names and amounts, checked as quantities.
fn parse_quota(s: &str) -> Result<Quota, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| format!("{p:?}: expected RESOURCE=AMOUNT"))?;
            let (k, v) = (k.trim(), v.trim());
            api::quantity::Quantity::parse(v)
                .map_err(|e| format!("{k}: {v:?} is not a quantity: {e}"))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect::<Result<_, String>>()
        .map(Quota)
}

#[derive(clap::Args)]
pub struct UserArgs {
    /// The cluster's data directory (where its CA is).
    #[arg(long, env = "BERTH_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: UserCommand,
}

/// Names Kubernetes would refuse to see as a plain user: the `system:` prefix is the cluster's.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().any(|c| c.is_control() || c == '/') {
        bail!("a user name must be printable and may not contain '/'");
    }
    if name.starts_with("system:") {
        bail!("names beginning with \"system:\" belong to the cluster's own identities");
    }
    Ok(())
}

pub async fn run(args: UserArgs) -> Result<()> {
    let data_dir = args
        .data_dir
        .unwrap_or_else(crate::cluster::default_data_dir);
    match args.command {
        UserCommand::Add {
            name,
            group,
            out,
            server,
            namespace,
            namespace_quota,
        } => {
            check_name(&name)?;
            let own = namespace || namespace_quota.is_some();
            if own && !api::names::dns1123_label(&name).is_empty() {
                bail!(
                    "{name:?} cannot name a namespace (lower case letters, digits and '-', at most 63): choose a user name that can, or make the namespace yourself"
                );
            }
            let tls = data_dir.join("tls");
            let ca = fs::read_to_string(tls.join("ca.crt")).with_context(|| {
                format!(
                    "reading the cluster CA in {} (is this the cluster's data directory?)",
                    tls.display()
                )
            })?;
            let ca_key = fs::read_to_string(tls.join("ca.key"))
                .context("reading the cluster CA key (run as the user that runs berth)")?;
            let server = match server {
                Some(s) => s,
                None => crate::store_cli::server_of(&data_dir)?,
            };
            if own {
                let quota = namespace_quota.unwrap_or_default();
                give_namespace(&data_dir, &server, &name, &quota.0)
                    .await
                    .with_context(|| format!("giving {name:?} its namespace"))?;
            }
            let (cert, key) = pki::issue_client_cert(&ca, &ca_key, &name, group.as_deref())?;
            let out =
                out.unwrap_or_else(|| data_dir.join("users").join(format!("{name}.kubeconfig")));
            if let Some(dir) = out.parent() {
                pki::ensure_dir(dir)?;
            }
            let ns = own.then_some(name.as_str());
            let text = pki::kubeconfig(&server, &ca, &name, &cert, &key, None, ns);
            pki::write_private(&out, text.as_bytes())?;
            if own {
                println!(
                    "user {name:?} written to {}; it is admin of namespace {name:?} (its default) and may do nothing elsewhere until a RoleBinding or ClusterRoleBinding names it",
                    out.display()
                );
            } else {
                println!(
                    "user {name:?} written to {}; it may do nothing until a RoleBinding or ClusterRoleBinding names it, e.g.\n  kubectl create rolebinding {name}-edit --clusterrole=edit --user={name} -n NAMESPACE",
                    out.display()
                );
            }
            Ok(())
        }
    }
}

/// Resources whose requests (`cpu`, `requests.memory`) or limits a quota caps: pods that name
/// none get these defaults, so that plain pods fit in the quota.
const DEFAULT_REQUESTS: [(&str, &str); 2] = [("cpu", "100m"), ("memory", "128Mi")];
const DEFAULT_LIMITS: [(&str, &str); 2] = [("cpu", "500m"), ("memory", "512Mi")];

/// The user's namespace, its admin binding, and its quota with defaults for pods, written by
/// server-side apply (so running it again updates them).
async fn give_namespace(
    data_dir: &Path,
    server: &str,
    user: &str,
    quota: &[(String, String)],
) -> Result<()> {
    let (c, _) = crate::store_cli::admin_client(data_dir, Some(server))?;
    let owner = json!({"berth.dev/owner": user});
    let mut objects = vec![
        (
            "/api/v1/namespaces".to_string(),
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": user, "annotations": owner}}),
        ),
        (
            format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{user}/rolebindings"),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "owner", "annotations": owner},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                               "name": "admin"},
                   "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                 "name": user}]}),
        ),
    ];
    if !quota.is_empty() {
        let hard: serde_json::Map<String, Value> =
            quota.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        objects.push((
            format!("/api/v1/namespaces/{user}/resourcequotas"),
            json!({"apiVersion": "v1", "kind": "ResourceQuota",
                   "metadata": {"name": "user-quota", "annotations": owner},
                   "spec": {"hard": hard}}),
        ));
        let caps = |prefix: &str, plain: bool, defaults: [(&str, &str); 2]| {
            defaults
                .iter()
                .filter(|(r, _)| {
                    quota
                        .iter()
                        .any(|(k, _)| *k == format!("{prefix}.{r}") || (plain && k == r))
                })
                .map(|(r, v)| (r.to_string(), json!(v)))
                .collect::<serde_json::Map<String, Value>>()
        };
        let mut limit = json!({"type": "Container"});
        let requests = caps("requests", true, DEFAULT_REQUESTS);
        let limits = caps("limits", false, DEFAULT_LIMITS);
        if !requests.is_empty() {
            limit["defaultRequest"] = Value::Object(requests);
        }
        if !limits.is_empty() {
            limit["default"] = Value::Object(limits);
        }
        if limit.as_object().is_some_and(|o| o.len() > 1) {
            objects.push((
                format!("/api/v1/namespaces/{user}/limitranges"),
                json!({"apiVersion": "v1", "kind": "LimitRange",
                       "metadata": {"name": "user-defaults", "annotations": owner},
                       "spec": {"limits": [limit]}}),
            ));
        }
    }
    for (collection, obj) in objects {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let path = format!("{collection}/{name}?fieldManager=berth-user&force=true");
        c.request(
            Method::PATCH,
            &path,
            "application/apply-patch+yaml",
            obj.to_string().into(),
        )
        .await
        .with_context(|| format!("applying {} {name}", obj["kind"].as_str().unwrap_or("")))?;
    }
    Ok(())
}
