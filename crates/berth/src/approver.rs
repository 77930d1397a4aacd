//! Approves nodes' client certificate requests as Kubernetes' csrapproving controller does: a
//! request for `kubernetes.io/kube-apiserver-client-kubelet` whose subject is a node's is
//! approved when its requester may create `certificatesigningrequests/nodeclient` (a joining
//! node, through its bootstrap token's group) or, for a node renewing its own certificate,
//! `certificatesigningrequests/selfnodeclient`. Anything else waits for a person with
//! `kubectl certificate approve`.

use api::k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use client::Client;
use http::Method;
use serde_json::json;
use tracing::{info, warn};

use crate::signer::{KUBELET_CLIENT, node_client_subject};

/// What to ask about a request: the subresources that would allow approving it.
fn recognized(csr: &CertificateSigningRequest) -> Vec<(&'static str, &'static str)> {
    let spec = &csr.spec;
    if spec.signer_name != KUBELET_CLIENT {
        return Vec::new();
    }
    let status = csr.status.as_ref();
    let decided = status.and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
        c.iter()
            .any(|c| c.type_ == "Approved" || c.type_ == "Denied")
    });
    let issued = status
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty());
    if decided || issued {
        return Vec::new();
    }
    let Some(common_name) = node_client_subject(csr) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if spec.username.as_deref() == Some(common_name.as_str()) {
        out.push((
            "selfnodeclient",
            "Auto approving self kubelet client certificate after SubjectAccessReview.",
        ));
    }
    out.push((
        "nodeclient",
        "Auto approving kubelet client certificate after SubjectAccessReview.",
    ));
    out
}

/// Whether the request's requester may create `subresource` of certificate requests.
async fn requester_may(
    client: &Client,
    csr: &CertificateSigningRequest,
    subresource: &str,
) -> bool {
    let spec = &csr.spec;
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {
            "user": spec.username, "uid": spec.uid, "groups": spec.groups, "extra": spec.extra,
            "resourceAttributes": {"group": "certificates.k8s.io",
                                   "resource": "certificatesigningrequests",
                                   "subresource": subresource, "verb": "create", "version": "*"},
        },
    });
    match client
        .request_json(
            Method::POST,
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            Some(&review),
        )
        .await
    {
        Ok(v) => v["status"]["allowed"] == true,
        Err(e) => {
            warn!(error = %e, "could not review a certificate request's requester");
            false
        }
    }
}

async fn approve(client: &Client, csr: &CertificateSigningRequest) {
    let name = csr.metadata.name.clone().unwrap_or_default();
    for (subresource, message) in recognized(csr) {
        if !requester_may(client, csr, subresource).await {
            continue;
        }
        let approved = json!({"type": "Approved", "status": "True",
                              "reason": "AutoApproved", "message": message});
        match crate::signer::answer(client, csr, "approval", |s| {
            crate::signer::add_condition(s, approved)
        })
        .await
        {
            Ok(()) => {
                info!(csr = %name, requester = ?csr.spec.username, "approved a node's certificate request")
            }
            Err(e) => {
                warn!(csr = %name, error = %e, "could not approve a node's certificate request")
            }
        }
        return;
    }
}

/// Approve what the rules allow, for as long as the task runs.
pub async fn run(client: Client) {
    let mut requests = crate::signer::Requests::new(&client);
    loop {
        for csr in requests.next().await {
            approve(&client, &csr).await;
        }
    }
}
