//! `berth user add`: a user of the cluster, as a kubeconfig with a client certificate the
//! cluster CA signed (the user is the certificate's common name, the group its organization).
//! What the user may do is up to RBAC: a new user can do nothing until bound to a role.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

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
    },
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

pub fn run(args: UserArgs) -> Result<()> {
    let data_dir = args
        .data_dir
        .unwrap_or_else(crate::cluster::default_data_dir);
    match args.command {
        UserCommand::Add {
            name,
            group,
            out,
            server,
        } => {
            check_name(&name)?;
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
            let (cert, key) = pki::issue_client_cert(&ca, &ca_key, &name, group.as_deref())?;
            let out =
                out.unwrap_or_else(|| data_dir.join("users").join(format!("{name}.kubeconfig")));
            if let Some(dir) = out.parent() {
                pki::ensure_dir(dir)?;
            }
            let text = pki::kubeconfig(&server, &ca, &name, &cert, &key, None);
            pki::write_private(&out, text.as_bytes())?;
            println!(
                "user {name:?} written to {}; it may do nothing until a RoleBinding or ClusterRoleBinding names it, e.g.\n  kubectl create rolebinding {name}-edit --clusterrole=edit --user={name} -n NAMESPACE",
                out.display()
            );
            Ok(())
        }
    }
}
