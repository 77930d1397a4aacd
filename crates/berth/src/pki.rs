//! The cluster's credentials: a CA made on first start, a serving certificate signed by it
//! (renewed when it nears expiry or no longer covers the addresses served), and the admin's
//! bearer token and client certificate (`system:masters`, renewed like the serving one).
//! Everything lives under `<data-dir>/tls` and `<data-dir>/credentials`.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use tracing::info;

const CA_DAYS: i64 = 3650;
const SERVING_DAYS: i64 = 365;
/// A serving certificate this close to expiry is replaced at start.
const RENEW_BEFORE_DAYS: i64 = 30;

pub struct Pki {
    pub ca_pem: String,
    /// The CA's key (PEM): certificates the cluster signs (users', approved requests').
    pub ca_key_pem: String,
    pub serving_chain_pem: String,
    pub serving_key_pem: String,
    pub admin_token: String,
    /// The admin's client certificate and key.
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    /// The key service account tokens are signed with (PKCS#8 DER, P-256).
    pub service_account_key: Vec<u8>,
    /// The front proxy's CA and the client certificate and key the API server presents to
    /// aggregated API servers, which trust what it says of the caller by that CA.
    pub front_proxy_ca_pem: String,
    pub front_proxy_cert_pem: String,
    pub front_proxy_key_pem: String,
    /// The client certificate and key the API server presents to nodes' agents.
    pub agent_client_cert_pem: String,
    pub agent_client_key_pem: String,
}

/// Write a private file (mode 0600), replacing it atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    write_private_with(path, |f| Ok(f.write_all(contents)?))
}

/// `write_private`, the contents written by `fill`: a file is in place whole or not at all.
pub fn write_private_with(
    path: &Path,
    fill: impl FnOnce(&mut fs::File) -> Result<()>,
) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut f = create_private(&tmp)?;
        fill(&mut f)?;
        f.sync_all()?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Create (or empty) a file readable by its owner only.
pub fn create_private(path: &Path) -> Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// Make `dir` (and its parents) and keep it to its owner.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", dir.display()))?;
    Ok(())
}

fn ca_params() -> Result<CertificateParams> {
    ca_params_named("berth-ca")
}

fn ca_params_named(name: &str) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(CA_DAYS);
    Ok(p)
}

/// Names and addresses the serving certificate must cover.
pub struct Sans {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl Sans {
    pub fn for_server(listen: IpAddr, advertise: IpAddr, service_ip: IpAddr) -> Sans {
        let mut dns = vec![
            "localhost".to_string(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ];
        if let Some(h) = hostname() {
            dns.push(h);
        }
        let mut ips = vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
            service_ip,
            advertise,
        ];
        if !listen.is_unspecified() {
            ips.push(listen);
        }
        ips.sort();
        ips.dedup();
        Sans { dns, ips }
    }
}

pub fn hostname() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
}

/// Whether a certificate is still far from expiry.
fn fresh(cert: &x509_parser::certificate::X509Certificate<'_>) -> bool {
    let expires = cert.validity().not_after.timestamp();
    let renew_at = OffsetDateTime::now_utc() + Duration::days(RENEW_BEFORE_DAYS);
    expires >= renew_at.unix_timestamp()
}

/// Whether an existing client certificate is still good for a while.
fn client_cert_usable(pem: &str) -> bool {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .ok()
        .and_then(|(_, parsed)| parsed.parse_x509().ok().map(|c| fresh(&c)))
        .unwrap_or(false)
}

/// Whether an existing certificate still serves: not near expiry and covering every SAN.
fn serving_cert_usable(pem: &str, sans: &Sans) -> bool {
    let Ok((_, parsed)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else {
        return false;
    };
    let Ok(cert) = parsed.parse_x509() else {
        return false;
    };
    if !fresh(&cert) {
        return false;
    }
    let Ok(Some(alt)) = cert.subject_alternative_name() else {
        return false;
    };
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for name in &alt.value.general_names {
        match name {
            x509_parser::extensions::GeneralName::DNSName(d) => dns.push(d.to_string()),
            x509_parser::extensions::GeneralName::IPAddress(b) => {
                if let Ok(a) = <[u8; 4]>::try_from(*b) {
                    ips.push(IpAddr::from(a));
                } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                    ips.push(IpAddr::from(a));
                }
            }
            _ => {}
        }
    }
    sans.dns.iter().all(|d| dns.contains(d)) && sans.ips.iter().all(|i| ips.contains(i))
}

/// Load the cluster's credentials from `data_dir`, creating what is missing.
pub fn load_or_create(data_dir: &Path, sans: &Sans) -> Result<Pki> {
    let tls = data_dir.join("tls");
    let creds = data_dir.join("credentials");
    ensure_dir(&tls)?;
    ensure_dir(&creds)?;
    let (ca_crt, ca_key) = (tls.join("ca.crt"), tls.join("ca.key"));
    if !ca_crt.exists() || !ca_key.exists() {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        write_private(&ca_key, key.serialize_pem().as_bytes())?;
        write_private(&ca_crt, cert.pem().as_bytes())?;
        info!("created the cluster CA");
    }
    let ca_pem = fs::read_to_string(&ca_crt).context("reading the cluster CA")?;
    let ca_key_pem = fs::read_to_string(&ca_key).context("reading the cluster CA key")?;
    let (srv_crt, srv_key) = (tls.join("server.crt"), tls.join("server.key"));
    let usable = srv_key.exists()
        && fs::read_to_string(&srv_crt).is_ok_and(|pem| serving_cert_usable(&pem, sans));
    if !usable {
        let ca_key = KeyPair::from_pem(&ca_key_pem).context("parsing the CA key")?;
        let issuer =
            Issuer::from_ca_cert_pem(&ca_pem, ca_key).context("parsing the CA certificate")?;
        let mut p = CertificateParams::new(sans.dns.clone())?;
        for ip in &sans.ips {
            p.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "berth-apiserver");
        p.distinguished_name = dn;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::hours(1);
        p.not_after = now + Duration::days(SERVING_DAYS);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &issuer)?;
        write_private(&srv_key, key.serialize_pem().as_bytes())?;
        write_private(&srv_crt, cert.pem().as_bytes())?;
        info!("issued a new serving certificate");
    }
    let (admin_crt, admin_key) = (creds.join("admin.crt"), creds.join("admin.key"));
    let usable = admin_key.exists()
        && fs::read_to_string(&admin_crt).is_ok_and(|pem| client_cert_usable(&pem));
    if !usable {
        let (cert, key) = issue_client_cert(&ca_pem, &ca_key_pem, "admin", Some("system:masters"))?;
        write_private(&admin_key, key.as_bytes())?;
        write_private(&admin_crt, cert.as_bytes())?;
        info!("issued the admin's client certificate");
    }
    let (agent_crt, agent_key) = (
        tls.join("apiserver-kubelet-client.crt"),
        tls.join("apiserver-kubelet-client.key"),
    );
    let usable = agent_key.exists()
        && fs::read_to_string(&agent_crt).is_ok_and(|pem| client_cert_usable(&pem));
    if !usable {
        let (cert, key) =
            issue_client_cert(&ca_pem, &ca_key_pem, "kube-apiserver-kubelet-client", None)?;
        write_private(&agent_key, key.as_bytes())?;
        write_private(&agent_crt, cert.as_bytes())?;
        info!("issued the API server's client certificate for nodes' agents");
    }
    let token_path = creds.join("admin.token");
    if !token_path.exists() {
        write_private(&token_path, random_token()?.as_bytes())?;
    }
    let admin_token = fs::read_to_string(&token_path)
        .context("reading the admin token")?
        .trim()
        .to_string();
    if admin_token.len() < 32 {
        bail!("{} holds a token that is too short", token_path.display());
    }
    let (fp_ca_crt, fp_ca_key) = (
        tls.join("front-proxy-ca.crt"),
        tls.join("front-proxy-ca.key"),
    );
    if !fp_ca_crt.exists() || !fp_ca_key.exists() {
        let key = KeyPair::generate()?;
        let cert = ca_params_named("berth-front-proxy-ca")?.self_signed(&key)?;
        write_private(&fp_ca_key, key.serialize_pem().as_bytes())?;
        write_private(&fp_ca_crt, cert.pem().as_bytes())?;
        info!("created the front proxy CA");
    }
    let front_proxy_ca_pem =
        fs::read_to_string(&fp_ca_crt).context("reading the front proxy CA")?;
    let (fp_crt, fp_key) = (
        tls.join("front-proxy-client.crt"),
        tls.join("front-proxy-client.key"),
    );
    let usable =
        fp_key.exists() && fs::read_to_string(&fp_crt).is_ok_and(|pem| client_cert_usable(&pem));
    if !usable {
        let fp_ca_key_pem =
            fs::read_to_string(&fp_ca_key).context("reading the front proxy CA key")?;
        let (cert, key) = issue_client_cert(
            &front_proxy_ca_pem,
            &fp_ca_key_pem,
            "front-proxy-client",
            None,
        )?;
        write_private(&fp_key, key.as_bytes())?;
        write_private(&fp_crt, cert.as_bytes())?;
        info!("issued the front proxy's client certificate");
    }
    let sa_key = creds.join("service-account.key");
    if !sa_key.exists() {
        write_private(&sa_key, KeyPair::generate()?.serialize_pem().as_bytes())?;
        info!("created the service account signing key");
    }
    let service_account_key = KeyPair::from_pem(
        &fs::read_to_string(&sa_key).context("reading the service account signing key")?,
    )
    .context("parsing the service account signing key")?
    .serialize_der();
    Ok(Pki {
        ca_key_pem,
        service_account_key,
        serving_chain_pem: format!("{}{}", fs::read_to_string(&srv_crt)?, ca_pem),
        serving_key_pem: fs::read_to_string(&srv_key)?,
        ca_pem,
        admin_token,
        admin_cert_pem: fs::read_to_string(&admin_crt)?,
        admin_key_pem: fs::read_to_string(&admin_key)?,
        front_proxy_ca_pem,
        front_proxy_cert_pem: fs::read_to_string(&fp_crt)?,
        front_proxy_key_pem: fs::read_to_string(&fp_key)?,
        agent_client_cert_pem: fs::read_to_string(&agent_crt)?,
        agent_client_key_pem: fs::read_to_string(&agent_key)?,
    })
}

/// A client certificate (and its key, both PEM) for `user`, in `group` if given, signed by
/// the CA: the API server reads the common name as the user and the organizations as groups.
/// (rcgen writes one value per attribute type, so a certificate made here names one group.)
pub fn issue_client_cert(
    ca_pem: &str,
    ca_key_pem: &str,
    user: &str,
    group: Option<&str>,
) -> Result<(String, String)> {
    let ca_key = KeyPair::from_pem(ca_key_pem).context("parsing the CA key")?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key).context("parsing the CA certificate")?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    if let Some(g) = group {
        dn.push(DnType::OrganizationName, g);
    }
    dn.push(DnType::CommonName, user);
    p.distinguished_name = dn;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(SERVING_DAYS);
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// 32 random bytes, hex encoded.
pub fn random_token() -> Result<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

pub fn kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join("kubeconfig")
}

/// Write a kubeconfig for the admin user against `server`: a client certificate, which most
/// tools expect, and the bearer token, which others do.
pub fn write_kubeconfig(path: &Path, server: &str, pki: &Pki) -> Result<()> {
    let text = kubeconfig(
        server,
        &pki.ca_pem,
        "admin",
        &pki.admin_cert_pem,
        &pki.admin_key_pem,
        Some(&pki.admin_token),
        None,
    );
    write_private(path, text.as_bytes())
}

/// A kubeconfig for one user of the cluster at `server`, working in `namespace` if given.
pub fn kubeconfig(
    server: &str,
    ca_pem: &str,
    user: &str,
    cert_pem: &str,
    key_pem: &str,
    token: Option<&str>,
    namespace: Option<&str>,
) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let ca = b64(ca_pem);
    let cert = b64(cert_pem);
    let key = b64(key_pem);
    let token = token.map_or(String::new(), |t| format!("\n    token: {t}"));
    let namespace = namespace.map_or(String::new(), |n| format!("\n    namespace: {n}"));
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: berth
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}{token}
contexts:
- name: berth
  context:
    cluster: berth
    user: {user}{namespace}
current-context: berth
preferences: {{}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_and_renews_for_new_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let sans = Sans::for_server(
            "127.0.0.1".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
            "10.43.0.1".parse().unwrap(),
        );
        let first = load_or_create(dir.path(), &sans).unwrap();
        let again = load_or_create(dir.path(), &sans).unwrap();
        assert_eq!(first.ca_pem, again.ca_pem);
        assert_eq!(
            first.serving_chain_pem, again.serving_chain_pem,
            "a usable certificate is kept"
        );
        assert_eq!(first.admin_token, again.admin_token);
        let wider = Sans::for_server(
            "10.1.2.3".parse().unwrap(),
            "10.1.2.3".parse().unwrap(),
            "10.43.0.1".parse().unwrap(),
        );
        let renewed = load_or_create(dir.path(), &wider).unwrap();
        assert_eq!(first.ca_pem, renewed.ca_pem, "the CA stays");
        assert_ne!(
            first.serving_chain_pem, renewed.serving_chain_pem,
            "a new address needs a new certificate"
        );
        let mode = fs::metadata(dir.path().join("tls/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
