//! The cluster's certificate signer: approved CertificateSigningRequests for Kubernetes'
//! built-in signers (`kubernetes.io/kube-apiserver-client`, `...-client-kubelet`,
//! `kubernetes.io/kubelet-serving`) get a certificate from the cluster CA, after the checks
//! Kubernetes' signer makes; a request that fails them gets a `Failed` condition saying why.
//! Approval is the gate: the signer does not ask who requested.

use std::sync::Arc;

use anyhow::{Context, Result};
use api::k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use client::{Client, ListParams, Watcher, watcher};
use rcgen::{
    CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};
use tracing::{info, warn};
use x509_parser::prelude::FromDer;

pub const CLIENT: &str = "kubernetes.io/kube-apiserver-client";
pub const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";

/// A request that asks for a lifetime (less than `--cluster-signing-duration`) is given at
/// least ten minutes.
const MIN_TTL: Duration = Duration::minutes(10);
/// Certificates start a little in the past, for clocks that lag.
const BACKDATE: Duration = Duration::minutes(5);
/// Under this lifetime a certificate's end is not moved back with its start (five minutes
/// would be a real part of it), as Kubernetes' signer does.
const SHORT: Duration = Duration::hours(8);

pub struct Signer {
    ca_pem: String,
    ca_key_pem: String,
    /// The lifetime of a certificate whose request names none, and the most any gets.
    ttl: Duration,
}

/// What the signer does with one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not ours, not approved, failed already, or issued already.
    Skip,
    Issued(String),
    /// It breaks the signer's rules: the message for its `Failed` condition.
    Refused(String),
}

/// The subject of a request, as the checks need it.
struct Subject {
    common_name: String,
    /// How many common names it has (a certificate is issued only for exactly one).
    common_names: usize,
    organizations: Vec<String>,
    dns: Vec<String>,
    ips: Vec<std::net::IpAddr>,
    emails: usize,
    uris: usize,
}

fn subject_of(der: &[u8]) -> Result<Subject, String> {
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
        .map_err(|e| format!("unable to parse csr: {e}"))?;
    let info = &csr.certification_request_info;
    let text = |a: &x509_parser::x509::AttributeTypeAndValue| a.as_str().unwrap_or("").to_string();
    let mut s = Subject {
        common_name: info
            .subject
            .iter_common_name()
            .next()
            .map(text)
            .unwrap_or_default(),
        common_names: info.subject.iter_common_name().count(),
        organizations: info.subject.iter_organization().map(text).collect(),
        dns: Vec::new(),
        ips: Vec::new(),
        emails: 0,
        uris: 0,
    };
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = ext {
            for n in &san.general_names {
                match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => s.dns.push(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(b) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                            s.ips.push(v4.into());
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                            s.ips.push(v6.into());
                        }
                    }
                    x509_parser::extensions::GeneralName::RFC822Name(_) => s.emails += 1,
                    x509_parser::extensions::GeneralName::URI(_) => s.uris += 1,
                    _ => {}
                }
            }
        }
    }
    Ok(s)
}

fn usages_are(usages: &[String], allowed: &[&[&str]]) -> bool {
    let mut have: Vec<&str> = usages.iter().map(String::as_str).collect();
    have.sort_unstable();
    have.dedup();
    allowed.iter().any(|set| {
        let mut want = set.to_vec();
        want.sort_unstable();
        want == have
    })
}

/// Kubernetes' checks for each built-in signer, and berth's own: one common name and at most
/// one organization (the certificate is issued for exactly the subject checked), never
/// `system:masters` from the client signer.
fn check(signer: &str, s: &Subject, usages: &[String]) -> Result<(), String> {
    if s.common_names > 1 {
        return Err("the subject names more than one common name".into());
    }
    if s.organizations.len() > 1 {
        return Err("the subject names more than one organization".into());
    }
    if signer == CLIENT && s.organizations.iter().any(|o| o == api::rbac::MASTERS) {
        return Err(
            "use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"
                .into(),
        );
    }
    let node = || -> Result<(), String> {
        if s.organizations != ["system:nodes"] {
            return Err("subject organization is not system:nodes".into());
        }
        if s.emails > 0 {
            return Err("Email subjectAltNames are not allowed".into());
        }
        if s.uris > 0 {
            return Err("URI subjectAltNames are not allowed".into());
        }
        if !s.common_name.starts_with("system:node:") {
            return Err("subject common name does not begin with system:node:".into());
        }
        Ok(())
    };
    match signer {
        KUBELET_CLIENT => {
            // Kubernetes checks the organization first, the names after.
            if s.organizations != ["system:nodes"] {
                return Err("subject organization is not system:nodes".into());
            }
            if !s.dns.is_empty() {
                return Err("DNS subjectAltNames are not allowed".into());
            }
            if !s.ips.is_empty() {
                return Err("IP subjectAltNames are not allowed".into());
            }
            node()?;
            if !usages_are(
                usages,
                &[
                    &["digital signature", "key encipherment", "client auth"],
                    &["digital signature", "client auth"],
                ],
            ) {
                return Err(
                    "usages did not match [client auth digital signature key encipherment]".into(),
                );
            }
            Ok(())
        }
        KUBELET_SERVING => {
            if s.dns.is_empty() && s.ips.is_empty() {
                return Err("DNS or IP subjectAltName is required".into());
            }
            node()?;
            if !usages_are(
                usages,
                &[
                    &["digital signature", "key encipherment", "server auth"],
                    &["digital signature", "server auth"],
                ],
            ) {
                return Err(
                    "usages did not match [digital signature key encipherment server auth]".into(),
                );
            }
            Ok(())
        }
        _ => {
            let allowed = ["digital signature", "key encipherment", "client auth"];
            if let Some(u) = usages.iter().find(|u| !allowed.contains(&u.as_str())) {
                return Err(format!("invalid usage for client certificate: {u}"));
            }
            if !usages.iter().any(|u| u == "client auth") {
                return Err("missing required usage for client certificate: client auth".into());
            }
            Ok(())
        }
    }
}

/// The node a request for a node's client certificate names (`system:node:<name>`), if it
/// is one that the kubelet client signer would sign.
pub(crate) fn node_client_subject(csr: &CertificateSigningRequest) -> Option<String> {
    let der = api::kinds::certificates::parse_request(&csr.spec.request.0).ok()?;
    let subject = subject_of(&der).ok()?;
    let usages = csr.spec.usages.clone().unwrap_or_default();
    check(KUBELET_CLIENT, &subject, &usages).ok()?;
    Some(subject.common_name)
}

/// A node's request for its endpoint's serving certificate that the kubelet serving signer
/// would sign: the node's user name, and the names and addresses it asks for.
pub(crate) fn node_serving_subject(
    csr: &CertificateSigningRequest,
) -> Option<(String, Vec<String>, Vec<std::net::IpAddr>)> {
    let der = api::kinds::certificates::parse_request(&csr.spec.request.0).ok()?;
    let subject = subject_of(&der).ok()?;
    let usages = csr.spec.usages.clone().unwrap_or_default();
    check(KUBELET_SERVING, &subject, &usages).ok()?;
    Some((subject.common_name, subject.dns, subject.ips))
}

impl Signer {
    pub fn new(ca_pem: String, ca_key_pem: String, ttl: std::time::Duration) -> Signer {
        Signer {
            ca_pem,
            ca_key_pem,
            ttl: Duration::try_from(ttl).unwrap_or(Duration::days(365)),
        }
    }

    pub fn handle(&self, csr: &CertificateSigningRequest) -> Outcome {
        let spec = &csr.spec;
        if !matches!(
            spec.signer_name.as_str(),
            CLIENT | KUBELET_CLIENT | KUBELET_SERVING
        ) {
            return Outcome::Skip;
        }
        let status = csr.status.as_ref();
        let has = |t: &str| {
            status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == t && c.status == "True"))
        };
        let issued = status
            .and_then(|s| s.certificate.as_ref())
            .is_some_and(|c| !c.0.is_empty());
        if !has("Approved") || has("Failed") || issued {
            return Outcome::Skip;
        }
        let der = match api::kinds::certificates::parse_request(&spec.request.0) {
            Ok(d) => d,
            Err(e) => return Outcome::Refused(e),
        };
        let usages = spec.usages.clone().unwrap_or_default();
        let subject = match subject_of(&der) {
            Ok(s) => s,
            Err(e) => return Outcome::Refused(e),
        };
        if let Err(why) = check(&spec.signer_name, &subject, &usages) {
            return Outcome::Refused(why);
        }
        match self.sign(&der, &subject, &usages, spec.expiration_seconds) {
            Ok(pem) => Outcome::Issued(pem),
            Err(e) => Outcome::Refused(format!("{e:#}")),
        }
    }

    fn sign(
        &self,
        der: &[u8],
        subject: &Subject,
        usages: &[String],
        seconds: Option<i32>,
    ) -> Result<String> {
        let request = CertificateSigningRequestParams::from_der(&der.to_vec().into())
            .context("reading the request")?;
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).context("parsing the CA key")?;
        let issuer =
            Issuer::from_ca_cert_pem(&self.ca_pem, ca_key).context("parsing the CA certificate")?;
        let mut p = request.params;
        // The subject is the one checked, written anew.
        let mut dn = rcgen::DistinguishedName::new();
        if let Some(o) = subject.organizations.first() {
            dn.push(rcgen::DnType::OrganizationName, o.as_str());
        }
        if !subject.common_name.is_empty() {
            dn.push(rcgen::DnType::CommonName, subject.common_name.as_str());
        }
        p.distinguished_name = dn;
        // What the certificate may do is what the request's usages say, nothing it asked for
        // in its own extensions.
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = Vec::new();
        p.extended_key_usages = Vec::new();
        for u in usages {
            match u.as_str() {
                "signing" | "digital signature" => {
                    p.key_usages.push(KeyUsagePurpose::DigitalSignature)
                }
                "content commitment" => p.key_usages.push(KeyUsagePurpose::ContentCommitment),
                "key encipherment" => p.key_usages.push(KeyUsagePurpose::KeyEncipherment),
                "key agreement" => p.key_usages.push(KeyUsagePurpose::KeyAgreement),
                "data encipherment" => p.key_usages.push(KeyUsagePurpose::DataEncipherment),
                "client auth" => p
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ClientAuth),
                "server auth" => p
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ServerAuth),
                _ => {}
            }
        }
        let mut serial = [0u8; 16];
        getrandom::fill(&mut serial).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        serial[0] &= 0x7f;
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        // As Kubernetes' signer: the signing duration unless the request asks for less,
        // and never under ten minutes for a request that asks.
        let ttl = match seconds {
            None => self.ttl,
            Some(s) => Duration::seconds(i64::from(s)).max(MIN_TTL).min(self.ttl),
        };
        let now = OffsetDateTime::now_utc();
        p.not_before = now - BACKDATE;
        p.not_after = if ttl < SHORT {
            now + ttl
        } else {
            now + ttl - BACKDATE
        };
        let csr = CertificateSigningRequestParams {
            params: p,
            public_key: request.public_key,
        };
        Ok(csr.signed_by(&issuer).context("signing")?.pem())
    }
}

/// The cluster's certificate requests as they come and change.
pub(crate) struct Requests(Watcher<CertificateSigningRequest>);

impl Requests {
    pub(crate) fn new(client: &Client) -> Requests {
        Requests(Watcher::new(client.clone(), None, ListParams::default()))
    }

    /// The next requests to look at: all of them after a (re)list, else the one that changed.
    pub(crate) async fn next(&mut self) -> Vec<CertificateSigningRequest> {
        loop {
            match self.0.next().await {
                watcher::Event::Restarted(all) => return all,
                watcher::Event::Applied(csr) => return vec![csr],
                watcher::Event::Deleted(_) => {}
            }
        }
    }
}

/// Write `csr` back through its `subresource` (`status` or `approval`) with `change` made to
/// its status, as an update carrying its resourceVersion (as Kubernetes' signer and approver
/// update): the answer lands only on the version that was judged. A conflict means it changed
/// meanwhile; the watch brings the new version.
pub(crate) async fn answer(
    client: &Client,
    csr: &CertificateSigningRequest,
    subresource: &str,
    change: impl FnOnce(&mut Value),
) -> Result<(), client::ClientError> {
    let mut obj = serde_json::to_value(csr).map_err(client::ClientError::Decode)?;
    change(&mut obj["status"]);
    let path = format!(
        "/apis/certificates.k8s.io/v1/certificatesigningrequests/{}/{subresource}",
        client::encode(csr.metadata.name.as_deref().unwrap_or(""))
    );
    client
        .request_json(http::Method::PUT, &path, Some(&obj))
        .await
        .map(drop)
}

/// Add `condition` to a request's status.
pub(crate) fn add_condition(status: &mut Value, condition: Value) {
    match status["conditions"].as_array_mut() {
        Some(list) => list.push(condition),
        None => status["conditions"] = Value::Array(vec![condition]),
    }
}

/// Sign what is approved, for as long as the task runs.
pub async fn run(client: Client, signer: Arc<Signer>) {
    let mut requests = Requests::new(&client);
    loop {
        for csr in requests.next().await {
            let name = csr.metadata.name.clone().unwrap_or_default();
            let written = match signer.handle(&csr) {
                Outcome::Skip => continue,
                Outcome::Issued(pem) => {
                    use base64::Engine;
                    let cert = base64::engine::general_purpose::STANDARD.encode(pem);
                    answer(&client, &csr, "status", |s| s["certificate"] = json!(cert))
                        .await
                        .inspect(|()| {
                            info!(csr = %name, signer = %csr.spec.signer_name, "issued a certificate")
                        })
                }
                Outcome::Refused(why) => {
                    let failed = json!({"type": "Failed", "status": "True",
                        "reason": "SignerValidationFailure", "message": why});
                    answer(&client, &csr, "status", |s| add_condition(s, failed))
                        .await
                        .inspect(|()| warn!(csr = %name, reason = %why, "refused to sign"))
                }
            };
            match written {
                Ok(()) => {}
                Err(e) if e.is_conflict() => {}
                Err(e) => warn!(csr = %name, error = %e, "could not record the signer's answer"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ca() -> Signer {
        let key = KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        Signer::new(
            cert.pem(),
            key.serialize_pem(),
            std::time::Duration::from_secs(365 * 24 * 3600),
        )
    }

    fn request(
        cn: &str,
        org: &str,
        signer: &str,
        usages: &[&str],
        approved: bool,
    ) -> CertificateSigningRequest {
        let key = KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, org);
        let pem = p.serialize_request(&key).unwrap().pem().unwrap();
        use base64::Engine;
        let conditions = if approved {
            json!([{"type": "Approved", "status": "True"}])
        } else {
            json!([])
        };
        serde_json::from_value(json!({
            "metadata": {"name": "r"},
            "spec": {"request": base64::engine::general_purpose::STANDARD.encode(pem),
                     "signerName": signer, "usages": usages},
            "status": {"conditions": conditions}}))
        .unwrap()
    }

    #[test]
    fn approved_requests_are_signed_after_their_signers_checks() {
        let s = ca();
        let r = request("jane", "devs", CLIENT, &["client auth"], true);
        let Outcome::Issued(pem) = s.handle(&r) else {
            panic!("not issued");
        };
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = block.parse_x509().unwrap();
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "jane"
        );
        assert!(!cert.is_ca());
        // Not approved yet, or for a signer that is not the cluster's: nothing to do.
        assert_eq!(
            s.handle(&request("jane", "devs", CLIENT, &["client auth"], false)),
            Outcome::Skip
        );
        assert_eq!(
            s.handle(&request(
                "jane",
                "devs",
                "example.com/x",
                &["client auth"],
                true
            )),
            Outcome::Skip
        );
        // A node's client certificate must name a node.
        let r = request(
            "jane",
            "devs",
            KUBELET_CLIENT,
            &["digital signature", "client auth"],
            true,
        );
        assert_eq!(
            s.handle(&r),
            Outcome::Refused("subject organization is not system:nodes".into())
        );
        let r = request(
            "system:node:n1",
            "system:nodes",
            KUBELET_CLIENT,
            &["digital signature", "client auth"],
            true,
        );
        assert!(matches!(s.handle(&r), Outcome::Issued(_)));
        let r = request("root", "system:masters", CLIENT, &["client auth"], true);
        assert!(matches!(s.handle(&r), Outcome::Refused(why) if why.contains("system:masters")));
        let r = request("jane", "devs", CLIENT, &["server auth"], true);
        assert_eq!(
            s.handle(&r),
            Outcome::Refused("invalid usage for client certificate: server auth".into())
        );
    }
}
