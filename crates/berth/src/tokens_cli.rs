//! `berth token create`: a bootstrap token for joining a node, kept as Kubernetes keeps them
//! (a Secret `kube-system/bootstrap-token-<id>`). A node that presents it may ask for its own
//! client certificate, which the cluster approves and signs; the token itself grants nothing
//! else and stops working when it expires or is deleted (`kubectl -n kube-system delete secret
//! bootstrap-token-<id>`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use http::Method;
use serde_json::json;

/// The group joining nodes' tokens put them in; berth's bindings let it ask for node
/// certificates.
pub const NODE_TOKEN_GROUP: &str = "system:bootstrappers:berth:default-node-token";

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Create a bootstrap token and print it.
    Create {
        /// How long it works (`24h`, `30m`); `0` for ever.
        #[arg(long, default_value = "24h", value_parser = crate::store_cli::parse_interval)]
        ttl: Duration,
        /// What it is for, kept with it.
        #[arg(long, default_value = "joins a node")]
        description: String,
        /// The API server (default: the one in the data directory's kubeconfig).
        #[arg(long)]
        server: Option<String>,
    },
}

#[derive(clap::Args)]
pub struct TokenArgs {
    /// The cluster's data directory.
    #[arg(long, env = "BERTH_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: TokenCommand,
}

/// `n` random lower-case letters and digits.
fn random_chars(n: usize) -> Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    // 252 is the largest multiple of 36 below 256: bytes above it would skew the choice.
    let mut out = String::with_capacity(n);
    while out.len() < n {
        let mut one = [0u8; 1];
        getrandom::fill(&mut one).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
        if one[0] < 252 {
            out.push(ALPHABET[usize::from(one[0] % 36)] as char);
        }
    }
    Ok(out)
}

pub async fn run(args: TokenArgs) -> Result<()> {
    let data_dir = args
        .data_dir
        .unwrap_or_else(crate::cluster::default_data_dir);
    match args.command {
        TokenCommand::Create {
            ttl,
            description,
            server,
        } => {
            let (c, server) = crate::store_cli::admin_client(&data_dir, server.as_deref())?;
            let token = create(&c, ttl, &description)
                .await
                .with_context(|| format!("creating a bootstrap token on {server}"))?;
            println!("{token}");
            Ok(())
        }
    }
}

/// Create a bootstrap token for joining nodes, good for `ttl` (zero: for ever); returns it as
/// `<id>.<secret>`.
pub async fn create(c: &client::Client, ttl: Duration, description: &str) -> Result<String> {
    let (id, secret) = (random_chars(6)?, random_chars(16)?);
    let mut data = json!({
        "token-id": id,
        "token-secret": secret,
        "usage-bootstrap-authentication": "true",
        "usage-bootstrap-signing": "true",
        "auth-extra-groups": NODE_TOKEN_GROUP,
        "description": description,
    });
    if !ttl.is_zero() {
        let until = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(ttl.as_secs() as i64);
        data["expiration"] = json!(until.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    }
    let obj = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "stringData": data,
    });
    c.request_json(
        Method::POST,
        "/api/v1/namespaces/kube-system/secrets",
        Some(&obj),
    )
    .await?;
    Ok(format!("{id}.{secret}"))
}
