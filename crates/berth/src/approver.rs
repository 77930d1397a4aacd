//! Approves nodes' client certificate requests as Kubernetes' csrapproving controller does: a
//! request for `kubernetes.io/kube-apiserver-client-kubelet` whose subject is a node's is
//! approved when its requester may create `certificatesigningrequests/nodeclient` (a joining
//! node, through its bootstrap token's group) or, for a node renewing its own certificate,
//! `certificatesigningrequests/selfnodeclient`. A node's request for its endpoint's serving
//! certificate (`kubernetes.io/kubelet-serving`) is approved when the node asks for itself and
//! only for its own name and the addresses its Node lists (kubelet-csr-approver's rule).
//! Anything else waits for a person with `kubectl certificate approve`.

use api::k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use api::k8s_openapi::api::core::v1::{Node, NodeAddress};
use client::Client;
use serde_json::json;
use tracing::{info, warn};

use crate::signer::{KUBELET_CLIENT, KUBELET_SERVING, node_client_subject, node_serving_subject};

/// Whether a request still waits for a decision.
fn pending(csr: &CertificateSigningRequest) -> bool {
    let status = csr.status.as_ref();
    let decided = status.and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
        c.iter()
            .any(|c| c.type_ == "Approved" || c.type_ == "Denied")
    });
    let issued = status
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty());
    !decided && !issued
}

/// What to ask about a request: the subresources that would allow approving it.
fn recognized(csr: &CertificateSigningRequest) -> Vec<(&'static str, &'static str)> {
    let spec = &csr.spec;
    if spec.signer_name != KUBELET_CLIENT || !pending(csr) {
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
        "user": spec.username, "uid": spec.uid, "groups": spec.groups, "extra": spec.extra,
        "resourceAttributes": {"group": "certificates.k8s.io",
                               "resource": "certificatesigningrequests",
                               "subresource": subresource, "verb": "create", "version": "*"},
    });
    match client.access_allowed(review).await {
        Ok(allowed) => allowed,
        Err(e) => {
            warn!(error = %e, "could not review a certificate request's requester");
            false
        }
    }
}

/// Whether a node's request for its endpoint's serving certificate asks only for what is its
/// own: made by that node, for its name and the addresses its Node object lists.
fn serving_is_own(csr: &CertificateSigningRequest, node: Option<&Node>) -> bool {
    let Some((user, dns, ips)) = node_serving_subject(csr) else {
        return false;
    };
    let spec = &csr.spec;
    let in_nodes = spec.groups.iter().flatten().any(|g| g == api::rbac::NODES);
    let Some(name) = user.strip_prefix(api::rbac::NODE_USER_PREFIX) else {
        return false;
    };
    let Some(node) = node.filter(|n| n.metadata.name.as_deref() == Some(name)) else {
        return false;
    };
    if spec.username.as_deref() != Some(user.as_str()) || !in_nodes {
        return false;
    }
    let addresses: Vec<&NodeAddress> = node
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .collect();
    let ip_ok = ips.iter().all(|ip| {
        addresses.iter().any(|a| {
            matches!(a.type_.as_str(), "InternalIP" | "ExternalIP")
                && a.address.parse::<std::net::IpAddr>().ok() == Some(*ip)
        })
    });
    let dns_ok = dns.iter().all(|d| {
        d == name
            || addresses.iter().any(|a| {
                matches!(a.type_.as_str(), "Hostname" | "InternalDNS" | "ExternalDNS")
                    && a.address == *d
            })
    });
    ip_ok && dns_ok
}

async fn approve_serving(client: &Client, csr: &CertificateSigningRequest) {
    let name = csr.metadata.name.clone().unwrap_or_default();
    let node_name = node_serving_subject(csr).and_then(|(user, _, _)| {
        user.strip_prefix(api::rbac::NODE_USER_PREFIX)
            .map(str::to_string)
    });
    let Some(node_name) = node_name else {
        return;
    };
    let node = match client.get::<Node>(None, &node_name).await {
        Ok(n) => n,
        Err(e) => {
            warn!(csr = %name, error = %e, "could not read the node of a serving certificate request");
            return;
        }
    };
    if !serving_is_own(csr, node.as_ref()) {
        return;
    }
    let approved = json!({"type": "Approved", "status": "True", "reason": "AutoApproved",
        "message": "Auto approving kubelet serving certificate: it names the node's own addresses."});
    match crate::signer::answer(client, csr, "approval", |s| {
        crate::signer::add_condition(s, approved)
    })
    .await
    {
        Ok(()) => {
            info!(csr = %name, node = %node_name, "approved a node's serving certificate request")
        }
        Err(e) => {
            warn!(csr = %name, error = %e, "could not approve a node's serving certificate request")
        }
    }
}

async fn approve(client: &Client, csr: &CertificateSigningRequest) {
    if csr.spec.signer_name == KUBELET_SERVING {
        if pending(csr) {
            approve_serving(client, csr).await;
        }
        return;
    }
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
