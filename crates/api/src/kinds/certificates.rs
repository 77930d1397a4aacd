//! certificates.k8s.io/v1 CertificateSigningRequest with Kubernetes' checks: a PEM certificate
//! request whose signature holds, a fully qualified signer name, known key usages, a lifetime of
//! at least ten minutes, and conditions that are never taken back (an Approved, Denied or
//! Failed condition stays; Approved and Denied exclude each other). Who may approve, and what
//! each subresource may change, is the API server's to enforce.

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};

use super::Kind;
use crate::errors::{FieldErrors, Path};
use crate::names;

/// The key usages Kubernetes knows.
pub const USAGES: [&str; 23] = [
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// Condition types that, once there, stay.
const LASTING: [&str; 3] = ["Approved", "Denied", "Failed"];

/// Bytes as Go prints them in a field error (`%#v`).
struct GoBytes<'a>(&'a [u8]);

impl std::fmt::Debug for GoBytes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[]byte{")?;
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{b:#x}")?;
        }
        f.write_str("}")
    }
}

/// The DER of the one PEM block of `pem` of type `label`.
fn pem_block(pem: &[u8], label: &str) -> Result<Vec<u8>, String> {
    let wrong = || format!("PEM block type must be {label}");
    let text = std::str::from_utf8(pem).map_err(|_| wrong())?;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin).ok_or_else(wrong)? + begin.len();
    let stop = text[start..].find(&end).ok_or_else(wrong)? + start;
    let body: String = text[start..stop].split_whitespace().collect();
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| wrong())
}

/// The DER of a certificate request in PEM, checked: it parses and its signature holds.
pub fn parse_request(pem: &[u8]) -> Result<Vec<u8>, String> {
    use x509_parser::prelude::FromDer;
    let der = pem_block(pem, "CERTIFICATE REQUEST")?;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| format!("asn1: structure error: {e}"))?;
    csr.verify_signature()
        .map_err(|_| "x509: ECDSA verification failure".to_string())?;
    Ok(der)
}

/// `example.com/signer-name`: one slash, a domain of at least two DNS labels, a path of
/// subdomains.
fn check_signer_name(name: &str, path: &Path, errs: &mut FieldErrors) {
    if name.is_empty() {
        errs.required(path, "");
        return;
    }
    let Some((domain, rest)) = name.split_once('/').filter(|(_, r)| !r.contains('/')) else {
        errs.invalid(
            path,
            name,
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        );
        return;
    };
    if domain.len() > 253 {
        errs.too_long(path, 253);
    }
    for label in domain.split('.') {
        for e in names::dns1123_label(label) {
            errs.invalid(path, name, format!("validating label {label:?}: {e}"));
        }
    }
    if domain.split('.').count() < 2 {
        errs.invalid(
            path,
            name,
            "should be a domain with at least two segments separated by dots",
        );
    }
    for part in rest.split('.') {
        for e in names::dns1123_subdomain(part) {
            errs.invalid(path, name, format!("validating component {part:?}: {e}"));
        }
    }
    if name == "kubernetes.io/legacy-unknown" {
        errs.invalid(
            path,
            name,
            "the legacy signerName is not allowed via this API version",
        );
    }
}

fn check_conditions(
    conditions: &[CertificateSigningRequestCondition],
    old: &[CertificateSigningRequestCondition],
    errs: &mut FieldErrors,
) {
    let path = Path::root("status").child("conditions");
    let mut seen: Vec<&str> = Vec::new();
    for (i, c) in conditions.iter().enumerate() {
        let p = path.index(i);
        if c.type_.is_empty() {
            errs.required(&p.child("type"), "");
        }
        if c.status.is_empty() {
            errs.required(&p.child("status"), "");
        } else if LASTING.contains(&c.type_.as_str()) && c.status != "True" {
            errs.not_supported(&p.child("status"), &c.status, &["True"]);
        } else if !matches!(c.status.as_str(), "True" | "False" | "Unknown") {
            errs.not_supported(&p.child("status"), &c.status, &["False", "True", "Unknown"]);
        }
        if seen.contains(&c.type_.as_str()) {
            errs.duplicate(&p.child("type"), &c.type_);
        }
        seen.push(&c.type_);
        if c.type_ == "Denied" && seen.contains(&"Approved")
            || c.type_ == "Approved" && seen.contains(&"Denied")
        {
            errs.invalid(
                &p.child("type"),
                &c.type_,
                "Approved and Denied conditions are mutually exclusive",
            );
        }
    }
    for t in LASTING {
        if old.iter().any(|c| c.type_ == t) && !conditions.iter().any(|c| c.type_ == t) {
            errs.forbidden(
                &path,
                format!("updates may not remove a condition of type {t:?}"),
            );
        }
    }
}

impl Kind for CertificateSigningRequest {
    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        let spec = &self.spec;
        let p = Path::root("spec");
        if let Err(e) = parse_request(&spec.request.0) {
            errs.invalid(&p.child("request"), GoBytes(&spec.request.0), e);
        }
        check_signer_name(&spec.signer_name, &p.child("signerName"), errs);
        match spec.usages.as_deref() {
            None | Some([]) => errs.required(&p.child("usages"), ""),
            Some(usages) => {
                let mut known: Vec<&str> = USAGES.to_vec();
                known.sort_unstable();
                for (i, u) in usages.iter().enumerate() {
                    if !USAGES.contains(&u.as_str()) {
                        errs.not_supported(&p.child("usages").index(i), u, &known);
                    } else if usages[..i].contains(u) {
                        errs.duplicate(&p.child("usages").index(i), u);
                    }
                }
            }
        }
        if let Some(s) = spec.expiration_seconds
            && s < 600
        {
            errs.invalid(
                &p.child("expirationSeconds"),
                s,
                "may not specify a duration less than 600 seconds (10 minutes)",
            );
        }
        let status = self.status.as_ref();
        let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]);
        let old_conditions = old
            .and_then(|o| o.status.as_ref())
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or(&[]);
        check_conditions(conditions, old_conditions, errs);
        if let Some(cert) = status.and_then(|s| s.certificate.as_ref())
            && !cert.0.is_empty()
        {
            let text = String::from_utf8_lossy(&cert.0);
            let blocks: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
                .collect();
            let path = Path::root("status").child("certificate");
            if blocks.is_empty() {
                errs.invalid(
                    &path,
                    "<certificate data>",
                    "must contain at least one CERTIFICATE PEM block",
                );
            } else if let Some(other) = blocks.iter().find(|b| **b != "CERTIFICATE") {
                errs.invalid(
                    &path,
                    "<certificate data>",
                    format!("only CERTIFICATE PEM blocks are allowed, found {other:?}"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn signer_names_are_domains_with_a_path() {
        let check = |n: &str| {
            let mut errs = FieldErrors::default();
            check_signer_name(n, &Path::root("spec").child("signerName"), &mut errs);
            if errs.is_empty() {
                String::new()
            } else {
                errs.to_string()
            }
        };
        assert_eq!(check("kubernetes.io/kube-apiserver-client"), "");
        assert_eq!(check("example.com/a.b"), "");
        assert!(check("").contains("Required value"));
        assert!(check("kubernetes.io").contains("example.com/signer-name"));
        assert!(check("a/b/c").contains("example.com/signer-name"));
        assert!(check("local/x").contains("at least two segments"));
        assert!(check("kubernetes.io/legacy-unknown").contains("legacy signerName"));
    }

    #[test]
    fn bytes_print_as_go_prints_them() {
        assert_eq!(format!("{:?}", GoBytes(b"-A")), "[]byte{0x2d, 0x41}");
    }

    #[test]
    fn a_request_must_be_a_signed_pem_request() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![]).unwrap();
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        assert!(parse_request(pem.as_bytes()).is_ok());
        assert_eq!(
            parse_request(b"hello").unwrap_err(),
            "PEM block type must be CERTIFICATE REQUEST"
        );
        // A changed byte in the body breaks the signature or the structure.
        let der = pem_block(pem.as_bytes(), "CERTIFICATE REQUEST").unwrap();
        let mut bad = der.clone();
        let n = bad.len();
        bad[n / 2] ^= 1;
        use base64::Engine;
        let text = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(&bad)
        );
        assert!(parse_request(text.as_bytes()).is_err());
    }
}
