//! Removes certificate requests that are done with, as Kubernetes' csrcleaner does: an
//! approved, denied or failed request an hour after it was made, one still pending after a
//! day, and one whose issued certificate has expired. Nodes ask for a new certificate every
//! renewal, so without this the requests would pile up.

use std::time::Duration;

use api::k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use client::Client;
use tracing::{debug, info};

const DECIDED_FOR: i64 = 3600;
const PENDING_FOR: i64 = 24 * 3600;
/// How often the requests are looked over.
const EVERY: Duration = Duration::from_secs(300);

/// Whether `csr` is done with at `now` (Unix seconds), and why.
pub fn stale(csr: &CertificateSigningRequest, now: i64) -> Option<&'static str> {
    let created = csr
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())?;
    let status = csr.status.as_ref();
    if let Some(cert) = status.and_then(|s| s.certificate.as_ref())
        && certificate_end(&cert.0).is_some_and(|end| end <= now)
    {
        return Some("its certificate has expired");
    }
    let decided = status.and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
        c.iter().any(|c| {
            matches!(c.type_.as_str(), "Approved" | "Denied" | "Failed") && c.status == "True"
        })
    });
    if decided && now - created > DECIDED_FOR {
        return Some("it was decided over an hour ago");
    }
    if !decided && now - created > PENDING_FOR {
        return Some("it has been pending for a day");
    }
    None
}

/// The end (Unix seconds) of the first certificate in `pem`.
fn certificate_end(pem: &[u8]) -> Option<i64> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = block.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Look the requests over every few minutes, for as long as the task runs.
pub async fn run(client: Client) {
    loop {
        tokio::time::sleep(EVERY).await;
        let all = match client
            .list::<CertificateSigningRequest>(None, &Default::default())
            .await
        {
            Ok((all, _)) => all,
            Err(e) => {
                debug!(error = %e, "listing certificate requests to clean");
                continue;
            }
        };
        let now = jiff::Timestamp::now().as_second();
        for csr in all {
            let Some(why) = stale(&csr, now) else {
                continue;
            };
            let name = csr.metadata.name.clone().unwrap_or_default();
            match client
                .delete::<CertificateSigningRequest>(None, &name)
                .await
            {
                Ok(()) => info!(csr = %name, reason = why, "removed a certificate request"),
                Err(e) if e.is_not_found() => {}
                Err(e) => debug!(csr = %name, error = %e, "removing a certificate request"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn csr(created: &str, conditions: serde_json::Value) -> CertificateSigningRequest {
        serde_json::from_value(json!({
            "metadata": {"name": "r", "creationTimestamp": created},
            "spec": {"request": "", "signerName": "s"},
            "status": {"conditions": conditions}}))
        .unwrap()
    }

    #[test]
    fn requests_go_an_hour_after_a_decision_or_a_day_after_they_were_made() {
        let t0: i64 = "2026-01-01T00:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second();
        let approved = csr(
            "2026-01-01T00:00:00Z",
            json!([{"type": "Approved", "status": "True"}]),
        );
        assert_eq!(stale(&approved, t0 + 1800), None);
        assert!(stale(&approved, t0 + 3601).is_some());
        let pending = csr("2026-01-01T00:00:00Z", json!([]));
        assert_eq!(stale(&pending, t0 + 3601), None);
        assert!(stale(&pending, t0 + 24 * 3600 + 1).is_some());
    }
}
