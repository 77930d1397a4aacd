//! CertificateSigningRequests on the write path, as Kubernetes' registry treats them: the
//! requester's identity is written into a new request (and its status emptied, so nobody
//! creates an approved request); the main resource changes only metadata; `/status` is for
//! signers (a certificate, a `Failed` condition) and cannot approve or deny; `/approval`
//! changes only the conditions, and only for callers who may `approve` the request's signer.

use api::rbac::Attributes;
use serde_json::{Value, json};

use crate::auth::{Authorizer, Identity, RequestAttributes};
use crate::errors::{ApiError, ApiResult};

pub(crate) const KIND: &str = "CertificateSigningRequest";

/// The refusal of request `name`, in Kubernetes' words.
fn forbidden(name: &str, why: &str) -> ApiError {
    let mut e = ApiError::forbidden(format!(
        "certificatesigningrequests.certificates.k8s.io \"{name}\" is forbidden: {why}"
    ));
    e.details.name = Some(name.to_string());
    e.details.group = Some("certificates.k8s.io".into());
    e.details.kind = Some("certificatesigningrequests".into());
    e
}

/// Kubernetes' CertificateSubjectRestriction: the client signer never makes a
/// `system:masters` certificate.
pub(crate) fn admit_subject(obj: &Value) -> ApiResult<()> {
    if obj["spec"]["signerName"] != "kubernetes.io/kube-apiserver-client" {
        return Ok(());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let pem = obj["spec"]["request"]
        .as_str()
        .and_then(|b| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(b).ok()
        })
        .unwrap_or_default();
    let der = api::kinds::certificates::parse_request(&pem)
        .map_err(|e| forbidden(name, &format!("failed to parse CSR: {e}")))?;
    use x509_parser::prelude::FromDer;
    let masters = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map(|(_, csr)| {
            csr.certification_request_info
                .subject
                .iter_organization()
                .any(|o| o.as_str() == Ok(api::rbac::MASTERS))
        })
        .unwrap_or(false);
    if masters {
        return Err(forbidden(
            name,
            "use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed",
        ));
    }
    Ok(())
}

/// Fill a new request's requester fields from who sends it; its status starts empty.
pub(crate) fn prepare_create(obj: &mut Value, who: &Identity) {
    let u = &who.user;
    let spec = &mut obj["spec"];
    spec["username"] = json!(u.name);
    spec["groups"] = json!(u.groups);
    match u.uid.is_empty() {
        true => {
            if let Some(m) = spec.as_object_mut() {
                m.remove("uid");
            }
        }
        false => spec["uid"] = json!(u.uid),
    }
    match u.extra.is_empty() {
        true => {
            if let Some(m) = spec.as_object_mut() {
                m.remove("extra");
            }
        }
        false => spec["extra"] = json!(u.extra),
    }
    obj["status"] = json!({});
}

/// Which part of a request an update may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Main,
    Status,
    Approval,
}

fn conditions(v: &Value) -> Vec<Value> {
    v["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn is_decision(c: &Value) -> bool {
    matches!(c["type"].as_str(), Some("Approved" | "Denied"))
}

/// The refusal of an update to request `name`: 422, in Kubernetes' words.
fn invalid(name: &str, why: &str) -> ApiError {
    ApiError::new(
        422,
        "Invalid",
        format!("CertificateSigningRequest.certificates.k8s.io \"{name}\" is invalid: {why}"),
    )
}

/// Merge an update into `new`, keeping what `part` may not change from `old`, and fill the
/// conditions' times as the registry does.
pub(crate) fn merge_update(part: Part, new: &mut Value, old: &Value, now: &str) -> ApiResult<()> {
    let name = old["metadata"]["name"].as_str().unwrap_or("");
    match part {
        Part::Main => {
            new["spec"] = old["spec"].clone();
            new["status"] = old["status"].clone();
        }
        Part::Status => {
            new["spec"] = old["spec"].clone();
            // Approving or denying is the approval subresource's; what is decided stays.
            let asked = conditions(new);
            if asked.iter().any(is_decision) != conditions(old).iter().any(is_decision)
                || asked
                    .iter()
                    .filter(|c| is_decision(c))
                    .any(|c| !conditions(old).iter().any(|o| o["type"] == c["type"]))
            {
                let t = asked
                    .iter()
                    .find(|c| is_decision(c))
                    .and_then(|c| c["type"].as_str())
                    .unwrap_or("Approved");
                return Err(invalid(
                    name,
                    &format!(
                        "status.conditions: Forbidden: updates may not add a condition of type {t:?}"
                    ),
                ));
            }
            let old_cert = old["status"]["certificate"].as_str().unwrap_or("");
            let new_cert = new["status"]["certificate"].as_str().unwrap_or("");
            if !old_cert.is_empty() && new_cert != old_cert {
                return Err(invalid(
                    name,
                    "status.certificate: Forbidden: updates may not modify existing certificate content",
                ));
            }
        }
        Part::Approval => {
            let asked = conditions(new);
            new["spec"] = old["spec"].clone();
            new["status"] = old["status"].clone();
            new["status"]["conditions"] = Value::Array(asked);
        }
    }
    // Times the client left out: now, or the old condition's transition when nothing moved.
    let before = conditions(old);
    if let Some(list) = new["status"]["conditions"].as_array_mut() {
        for c in list {
            if c["lastUpdateTime"].is_null() {
                c["lastUpdateTime"] = json!(now);
            }
            if c["lastTransitionTime"].is_null() {
                let same = before
                    .iter()
                    .find(|o| o["type"] == c["type"] && o["status"] == c["status"]);
                c["lastTransitionTime"] = same
                    .and_then(|o| o.get("lastTransitionTime").cloned())
                    .filter(|t| !t.is_null())
                    .unwrap_or_else(|| json!(now));
            }
        }
    }
    Ok(())
}

/// Whether `who` may `verb` (`approve`, `sign`) requests for `signer`: Kubernetes'
/// CertificateApproval and CertificateSigning admission, on `signers` named by the signer or
/// by its domain with `/*`.
fn may(authorizer: &Authorizer, who: &Identity, verb: &str, signer: &str) -> bool {
    let mut names = vec![signer.to_string()];
    if let Some((domain, _)) = signer.split_once('/') {
        names.push(format!("{domain}/*"));
    }
    names.iter().any(|n| {
        let a = RequestAttributes::resource(verb, "", "certificates.k8s.io", "signers", "", n);
        let asked: Attributes<'_> = a.borrow(&who.user);
        authorizer.allowed(&asked)
    })
}

/// Refuse an approval by someone who may not approve the stored request's signer, and a
/// certificate (or changed conditions) by someone who may not sign for it.
pub(crate) fn may_change(
    authorizer: &Authorizer,
    who: &Identity,
    scope: api::patch::fields::Scope,
    new: &Value,
    old: &Value,
) -> ApiResult<()> {
    use api::patch::fields::Scope;
    let name = old["metadata"]["name"].as_str().unwrap_or("");
    let signer = old["spec"]["signerName"].as_str().unwrap_or("");
    match scope {
        Scope::Approval if !may(authorizer, who, "approve", signer) => Err(forbidden(
            name,
            &format!("user not permitted to approve requests with signerName {signer:?}"),
        )),
        Scope::Status => {
            let changed = new["status"]["certificate"] != old["status"]["certificate"]
                || new["status"]["conditions"] != old["status"]["conditions"];
            if changed && !may(authorizer, who, "sign", signer) {
                return Err(forbidden(
                    name,
                    &format!("user not permitted to sign requests with signerName {signer:?}"),
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn csr(conditions: Value, cert: Option<&str>) -> Value {
        let mut v = json!({"metadata": {"name": "c"},
                           "spec": {"signerName": "kubernetes.io/kube-apiserver-client",
                                    "username": "alice"},
                           "status": {"conditions": conditions}});
        if let Some(c) = cert {
            v["status"]["certificate"] = json!(c);
        }
        v
    }

    #[test]
    fn each_part_changes_only_what_it_owns() {
        let old = csr(json!([]), None);
        // The main resource cannot approve, nor change the spec.
        let mut new = csr(json!([{"type": "Approved", "status": "True"}]), None);
        new["spec"]["username"] = json!("mallory");
        merge_update(Part::Main, &mut new, &old, "T").unwrap();
        assert_eq!(new["spec"]["username"], "alice");
        assert_eq!(new["status"]["conditions"], json!([]));
        // Nor can /status.
        let mut new = csr(json!([{"type": "Approved", "status": "True"}]), None);
        assert!(merge_update(Part::Status, &mut new, &old, "T").is_err());
        // /approval takes the conditions, with their times filled, and nothing else.
        let mut new = csr(
            json!([{"type": "Approved", "status": "True"}]),
            Some("Zm9v"),
        );
        merge_update(Part::Approval, &mut new, &old, "T").unwrap();
        assert_eq!(new["status"]["conditions"][0]["lastUpdateTime"], "T");
        assert_eq!(new["status"]["conditions"][0]["lastTransitionTime"], "T");
        assert!(new["status"]["certificate"].is_null());
        // A signer sets the certificate once.
        let approved = csr(json!([{"type": "Approved", "status": "True"}]), None);
        let mut new = approved.clone();
        new["status"]["certificate"] = json!("Zm9v");
        merge_update(Part::Status, &mut new, &approved, "T").unwrap();
        assert_eq!(new["status"]["certificate"], "Zm9v");
        let issued = new.clone();
        let mut new = issued.clone();
        new["status"]["certificate"] = json!("YmFy");
        assert!(merge_update(Part::Status, &mut new, &issued, "T").is_err());
    }
}
