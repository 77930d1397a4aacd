//! A remote node's own credential, got as the kubelet's TLS bootstrap gets it: with a
//! bootstrap token (`berth token create`) the agent makes a key, asks for a client
//! certificate as `system:node:<name>` in `system:nodes` through a CertificateSigningRequest
//! (approved by rule, signed by the cluster CA), keeps certificate and key in one private file
//! of its data dir, and from then on is that node. It asks for the next certificate, with the
//! current one, at 70-90% of its life and switches to it without a restart. The token is
//! needed only until the first certificate arrives.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use bytes::Bytes;
use client::{Client, ClientError, Credential, HttpsTransport, ResponseBody, Transport};
use http::Request;
use rcgen::{CertificateParams, DnType, KeyPair};
use serde_json::{Value, json};
use tracing::{error, info, warn};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::signer::{KUBELET_CLIENT, KUBELET_SERVING};

/// Where the node keeps its certificate and key (PEM, one file, as the kubelet's
/// `kubelet-client-current.pem`).
pub fn credential_path(data_dir: &Path) -> PathBuf {
    data_dir.join("credentials").join("node-client.pem")
}

/// Which certificate a node asks for: its client certificate, or the serving certificate of
/// its HTTPS endpoint for these addresses and names (`kubernetes.io/kubelet-serving`).
#[derive(Clone, Debug)]
pub enum Want {
    Client,
    Serving { ips: Vec<IpAddr>, dns: Vec<String> },
}

impl Want {
    fn signer(&self) -> &'static str {
        match self {
            Want::Client => KUBELET_CLIENT,
            Want::Serving { .. } => KUBELET_SERVING,
        }
    }

    fn usages(&self) -> &'static [&'static str] {
        match self {
            Want::Client => &["digital signature", "client auth"],
            Want::Serving { .. } => &["digital signature", "server auth"],
        }
    }

    /// The file it is kept in under the data dir.
    pub fn path(&self, data_dir: &Path) -> PathBuf {
        match self {
            Want::Client => credential_path(data_dir),
            Want::Serving { .. } => data_dir.join("credentials").join("node-serving.pem"),
        }
    }

    /// Whether a certificate covers what is wanted (a serving one: every address and name).
    fn covered_by(&self, pem: &str) -> bool {
        let Want::Serving { ips, dns } = self else {
            return true;
        };
        let Some(block) = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
            .filter_map(Result::ok)
            .find(|b| b.label == "CERTIFICATE")
        else {
            return false;
        };
        let Ok((_, cert)) = X509Certificate::from_der(&block.contents) else {
            return false;
        };
        let Ok(Some(san)) = cert.subject_alternative_name() else {
            return false;
        };
        use x509_parser::extensions::GeneralName;
        let (mut have_ips, mut have_dns) = (Vec::new(), Vec::new());
        for n in &san.value.general_names {
            match n {
                GeneralName::IPAddress(b) => match b.len() {
                    4 => have_ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                    16 => have_ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                    _ => {}
                },
                GeneralName::DNSName(d) => have_dns.push(d.to_string()),
                _ => {}
            }
        }
        ips.iter().all(|ip| have_ips.contains(ip)) && dns.iter().all(|d| have_dns.contains(d))
    }
}

/// A node certificate with its key, as held in the credential file.
#[derive(Clone, Debug)]
pub struct Held {
    pub pem: String,
    /// The certificate's last valid moment.
    pub not_after: SystemTime,
    /// When this node got it (the certificate's own start is set back for lagging clocks, so
    /// a short-lived one would look mostly spent from it).
    pub since: SystemTime,
}

impl Held {
    /// Read a certificate and key PEM for node `node`: refused unless the certificate names
    /// that node and has not expired at `now`.
    pub fn parse(pem: &str, node: &str, since: SystemTime, now: SystemTime) -> Result<Held> {
        let block = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
            .filter_map(Result::ok)
            .find(|b| b.label == "CERTIFICATE")
            .context("the node credential holds no certificate")?;
        if !pem.contains("PRIVATE KEY-----") {
            bail!("the node credential holds no key");
        }
        let (_, cert) = X509Certificate::from_der(&block.contents)
            .map_err(|e| anyhow::anyhow!("parsing the node certificate: {e}"))?;
        let want = format!("{}{node}", api::rbac::NODE_USER_PREFIX);
        let cn: Vec<&str> = cert
            .subject()
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .collect();
        if cn != [want.as_str()] {
            bail!("the node certificate is for {cn:?}, not {want:?} (another node's data dir?)");
        }
        let groups: Vec<&str> = cert
            .subject()
            .iter_organization()
            .filter_map(|a| a.as_str().ok())
            .collect();
        if groups != [api::rbac::NODES] {
            bail!("the node certificate's groups are {groups:?}, not system:nodes");
        }
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
        if not_after <= now {
            bail!("the node certificate expired");
        }
        Ok(Held {
            pem: pem.to_string(),
            not_after,
            since: since.min(now),
        })
    }

    /// When to ask for the next certificate: at a random point between 70% and 90% of the
    /// time from `since` to the end, as the kubelet does, so that nodes do not all ask at once.
    pub fn renew_at(&self, fraction: f64) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.since)
            .unwrap_or_default();
        self.since + life.mul_f64(fraction.clamp(0.7, 0.9))
    }

    fn transport(&self, server: &str, ca_pem: &[u8]) -> Result<HttpsTransport> {
        HttpsTransport::with_credential(
            server,
            ca_pem,
            Credential::Certificate {
                chain_pem: self.pem.as_bytes(),
                key_pem: self.pem.as_bytes(),
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("using the node certificate")
    }
}

/// The credential file's certificate and a transport made with it, if it is there and good
/// (names this node, current, and its key is the certificate's).
fn load(path: &Path, node: &str, server: &str, ca_pem: &[u8]) -> Option<(Held, HttpsTransport)> {
    let pem = std::fs::read_to_string(path).ok()?;
    let since = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| SystemTime::now());
    let loaded = Held::parse(&pem, node, since, SystemTime::now())
        .and_then(|h| h.transport(server, ca_pem).map(|t| (h, t)));
    match loaded {
        Ok(l) => Some(l),
        Err(e) => {
            warn!(path = %path.display(), error = %format!("{e:#}"), "not using the node credential on disk");
            None
        }
    }
}

/// How long a certificate request may wait for its certificate.
const REQUEST_WAIT: Duration = Duration::from_secs(15 * 60);

/// The transport of a node: its current certificate, swapped for the next one when renewed.
pub struct NodeTransport {
    current: RwLock<Arc<HttpsTransport>>,
}

impl NodeTransport {
    fn set(&self, t: HttpsTransport) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(t);
    }
}

#[async_trait]
impl Transport for NodeTransport {
    async fn send(&self, req: Request<Bytes>) -> Result<http::Response<ResponseBody>, ClientError> {
        let t = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        t.send(req).await
    }
}

/// What a node needs to reach its servers as itself.
pub struct Join<'a> {
    pub server: &'a str,
    pub ca_pem: &'a [u8],
    pub node: &'a str,
    pub data_dir: &'a Path,
}

impl Join<'_> {
    /// The node's credential: the one on disk if it is good, else a new one asked for with
    /// `token` (a bootstrap token). Returns the client and a task that keeps the certificate
    /// renewed.
    pub async fn credential(
        &self,
        token: Option<&str>,
    ) -> Result<(Client, impl std::future::Future<Output = ()> + use<>)> {
        let path = credential_path(self.data_dir);
        let (held, current) = match load(&path, self.node, self.server, self.ca_pem) {
            Some(l) => {
                info!(node = self.node, path = %path.display(), "using this node's certificate");
                l
            }
            None => {
                let Some(token) = token else {
                    bail!(
                        "this node has no certificate yet: give it a bootstrap token (`berth token create` on a server) with --token-file FILE or BERTH_TOKEN"
                    );
                };
                let bootstrap = Client::new(Arc::new(
                    HttpsTransport::new(self.server, self.ca_pem, Some(token))
                        .map_err(|e| anyhow::anyhow!("{e}"))
                        .with_context(|| format!("connecting to {}", self.server))?,
                ));
                println!(
                    "berth agent: asking {} for node {}'s certificate",
                    self.server, self.node
                );
                let held = request(&bootstrap, self.node, &Want::Client).await?;
                // Only a certificate that works with its key is kept.
                let transport = held.transport(self.server, self.ca_pem)?;
                keep(&path, &held)?;
                info!(node = self.node, "this node has its own certificate");
                (held, transport)
            }
        };
        let transport = Arc::new(NodeTransport {
            current: RwLock::new(Arc::new(current)),
        });
        let client = Client::new(transport.clone());
        let (server, ca_pem) = (self.server.to_string(), self.ca_pem.to_vec());
        let renewal = renew_forever(RenewalTask {
            client: client.clone(),
            held,
            node: self.node.to_string(),
            want: Want::Client,
            path,
            install: Box::new(move |h: &Held| {
                transport.set(h.transport(&server, &ca_pem)?);
                Ok(())
            }),
        });
        Ok((client, renewal))
    }
}

/// The serving certificate of the node's endpoint: the one on disk if it is this node's,
/// current and covers `ips` and `dns`, else a new one asked for as the node (approved by rule
/// when its addresses are the Node's). Returns it, and a task that keeps it renewed.
pub async fn serving(
    client: &Client,
    node: &str,
    data_dir: &Path,
    ips: Vec<IpAddr>,
    dns: Vec<String>,
) -> Result<(
    Arc<agent::endpoint::ServingCert>,
    impl std::future::Future<Output = ()> + use<>,
)> {
    let want = Want::Serving { ips, dns };
    let path = want.path(data_dir);
    let on_disk = std::fs::read_to_string(&path).ok().and_then(|pem| {
        let since = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
        let held = Held::parse(&pem, node, since, SystemTime::now()).ok()?;
        want.covered_by(&pem).then_some(held)
    });
    let held = match on_disk {
        Some(h) => h,
        None => {
            let h = request(client, node, &want).await?;
            agent::endpoint::ServingCert::from_pem(&h.pem).map_err(anyhow::Error::msg)?;
            keep(&path, &h)?;
            info!(node, "this node has a serving certificate for its endpoint");
            h
        }
    };
    let cert =
        Arc::new(agent::endpoint::ServingCert::from_pem(&held.pem).map_err(anyhow::Error::msg)?);
    let installed = cert.clone();
    let renewal = renew_forever(RenewalTask {
        client: client.clone(),
        held,
        node: node.to_string(),
        want,
        path,
        install: Box::new(move |h: &Held| installed.replace(&h.pem).map_err(anyhow::Error::msg)),
    });
    Ok((cert, renewal))
}

/// Write a certificate and its key to the node's private file.
fn keep(path: &Path, held: &Held) -> Result<()> {
    if let Some(dir) = path.parent() {
        crate::pki::ensure_dir(dir)?;
    }
    crate::pki::write_private(path, held.pem.as_bytes())
}

struct RenewalTask {
    client: Client,
    held: Held,
    node: String,
    want: Want,
    path: PathBuf,
    /// Puts a new certificate to use; only one that could be used is kept.
    install: Install,
}

/// What puts a renewed certificate to use.
type Install = Box<dyn Fn(&Held) -> Result<()> + Send + Sync>;

async fn renew_forever(mut t: RenewalTask) {
    let mut failures = 0u32;
    loop {
        if failures == 0 {
            let at = t.held.renew_at(0.7 + 0.2 * fastrand::f64());
            let wait = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await;
        }
        let renewed = match request(&t.client, &t.node, &t.want).await {
            Ok(h) => (t.install)(&h).and_then(|()| keep(&t.path, &h)).map(|()| h),
            Err(e) => Err(e),
        };
        match renewed {
            Ok(h) => {
                info!(node = %t.node, signer = t.want.signer(), "this node renewed its certificate");
                t.held = h;
                failures = 0;
            }
            Err(e) => {
                // Keep the current certificate while it is good and ask again later, less
                // often each time; once it has expired nothing can be asked with it: leave, as
                // the kubelet does, so that a restart bootstraps again.
                if SystemTime::now() >= t.held.not_after {
                    error!(node = %t.node, error = %format!("{e:#}"), "this node's certificate expired before a new one came; exiting to join again with a bootstrap token");
                    std::process::exit(1);
                }
                failures += 1;
                let again = Duration::from_secs(5 << failures.min(6)).min(Duration::from_secs(300));
                warn!(error = %format!("{e:#}"), retry_in = ?again, "renewing this node's certificate failed");
                tokio::time::sleep(again).await;
            }
        }
    }
}

/// Ask for a certificate for `node` and wait for it (at most `REQUEST_WAIT`).
async fn request(client: &Client, node: &str, want: &Want) -> Result<Held> {
    let key = KeyPair::generate().context("making the node's key")?;
    let names = match want {
        Want::Serving { dns, .. } => dns.clone(),
        Want::Client => Vec::new(),
    };
    let mut params = CertificateParams::new(names).context("certificate request")?;
    if let Want::Serving { ips, .. } = want {
        for ip in ips {
            params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress(*ip));
        }
    }
    params
        .distinguished_name
        .push(DnType::OrganizationName, api::rbac::NODES);
    params.distinguished_name.push(
        DnType::CommonName,
        format!("{}{node}", api::rbac::NODE_USER_PREFIX),
    );
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .context("writing the certificate request")?;
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let name = format!(
        "node-csr-{}",
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    use base64::Engine;
    let object = json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(csr_pem),
            "signerName": want.signer(),
            "usages": want.usages(),
        },
    });
    let collection = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    client
        .request_json(http::Method::POST, collection, Some(&object))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("creating certificate request {name}"))?;
    // The request is approved by rule and signed within moments; a person may also have to
    // approve it (`kubectl certificate approve`), so wait as long as it takes.
    let mut delay = Duration::from_millis(100);
    let mut told = false;
    let deadline = tokio::time::Instant::now() + REQUEST_WAIT;
    let cert = loop {
        tokio::time::sleep(delay).await;
        if tokio::time::Instant::now() >= deadline {
            bail!("certificate request {name} was not answered in {REQUEST_WAIT:?}");
        }
        delay = (delay * 2).min(Duration::from_secs(2));
        let got: Value = match client
            .request_json(http::Method::GET, &format!("{collection}/{name}"), None)
            .await
        {
            Ok(v) => v,
            Err(e) if e.is_not_found() => bail!("certificate request {name} was deleted"),
            // The credential asking is no longer accepted: waiting will not help.
            Err(e) if matches!(e.code(), Some(401 | 403)) => {
                bail!("reading certificate request {name}: {e}")
            }
            Err(e) => {
                warn!(error = %e, "reading certificate request {name}; trying again");
                continue;
            }
        };
        for c in got["status"]["conditions"].as_array().into_iter().flatten() {
            let kind = c["type"].as_str().unwrap_or("");
            if matches!(kind, "Denied" | "Failed") && c["status"] == "True" {
                bail!(
                    "certificate request {name} was {}: {}",
                    kind.to_lowercase(),
                    c["message"].as_str().unwrap_or("")
                );
            }
        }
        if let Some(c) = got["status"]["certificate"]
            .as_str()
            .filter(|c| !c.is_empty())
        {
            break c.to_string();
        }
        if !told && delay >= Duration::from_secs(2) {
            told = true;
            info!(request = %name, "waiting for the node's certificate request to be approved");
        }
    };
    let cert = base64::engine::general_purpose::STANDARD
        .decode(cert)
        .context("decoding the issued certificate")?;
    let pem = format!(
        "{}{}",
        String::from_utf8(cert).context("the issued certificate is not PEM")?,
        key.serialize_pem()
    );
    Held::parse(&pem, node, SystemTime::now(), SystemTime::now()).context("the issued certificate")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cert(cn: &str, days: i64) -> String {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name
            .push(DnType::OrganizationName, api::rbac::NODES);
        p.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
        p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        format!(
            "{}{}",
            p.self_signed(&key).unwrap().pem(),
            key.serialize_pem()
        )
    }

    #[test]
    fn a_credential_must_name_this_node_and_be_current() {
        let now = SystemTime::now();
        let good = cert("system:node:n1", 30);
        let h = Held::parse(&good, "n1", now, now).unwrap();
        let left = h.not_after.duration_since(now).unwrap();
        assert!(left > Duration::from_secs(29 * 86400) && left <= Duration::from_secs(30 * 86400));
        let other = Held::parse(&good, "n2", now, now).unwrap_err();
        assert!(
            format!("{other:#}").contains("not \"system:node:n2\""),
            "{other:#}"
        );
        let expired = Held::parse(&cert("system:node:n1", -1), "n1", now, now).unwrap_err();
        assert!(format!("{expired:#}").contains("expired"));
        let no_key: String = good.split("-----BEGIN PRIVATE").next().unwrap().to_string();
        assert!(Held::parse(&no_key, "n1", now, now).is_err());
    }

    #[test]
    fn renewal_falls_between_70_and_90_percent_of_the_life_the_node_has_seen() {
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let h = Held {
            pem: String::new(),
            not_after: since + Duration::from_secs(100),
            since,
        };
        assert_eq!(h.renew_at(0.7), since + Duration::from_secs(70));
        assert_eq!(h.renew_at(0.9), since + Duration::from_secs(90));
        // Out-of-range draws are held to the window.
        assert_eq!(h.renew_at(0.0), since + Duration::from_secs(70));
        assert_eq!(h.renew_at(1.0), since + Duration::from_secs(90));
    }
}
