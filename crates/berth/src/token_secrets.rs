//! Long-lived service account token Secrets, as Kubernetes' tokens controller fills them: a
//! Secret of type `kubernetes.io/service-account-token` naming an account in its
//! `kubernetes.io/service-account.name` annotation gets a token for that account (a JWT
//! without expiry, the issuer `kubernetes/serviceaccount`), the cluster CA and its namespace,
//! and the account's uid in `kubernetes.io/service-account.uid`. The token is good while the
//! Secret holds it and the account stands; a Secret naming an account that does not exist is
//! deleted, as Kubernetes does. (Kubernetes no longer makes these Secrets by itself; people
//! create them for credentials that do not expire.)

use std::sync::Arc;

use api::k8s_openapi::ByteString;
use api::k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use apiserver::auth::ServiceAccountTokens;
use apiserver::auth::tokens::LegacyToken;
use client::{Client, ListParams, Watcher, watcher};
use tracing::{info, warn};

use api::kinds::{
    SERVICE_ACCOUNT_NAME_ANNOTATION as NAME_ANNOTATION, SERVICE_ACCOUNT_TOKEN_TYPE as TYPE,
    SERVICE_ACCOUNT_UID_ANNOTATION as UID_ANNOTATION,
};

/// What to do with one Secret.
#[derive(Debug, PartialEq)]
pub enum Plan {
    Nothing,
    /// Its account is not there.
    Delete,
    /// Write these into it.
    Fill(Box<Secret>),
}

/// Decide for `secret`, given its account as found (`None`: it does not exist).
pub fn plan(
    secret: &Secret,
    account: Option<&ServiceAccount>,
    tokens: &ServiceAccountTokens,
    ca_pem: &str,
) -> Plan {
    if secret.type_.as_deref() != Some(TYPE) || secret.metadata.deletion_timestamp.is_some() {
        return Plan::Nothing;
    }
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let Some(name) = annotations.get(NAME_ANNOTATION).filter(|n| !n.is_empty()) else {
        return Plan::Nothing;
    };
    let Some(account) = account else {
        return Plan::Delete;
    };
    let uid = account.metadata.uid.clone().unwrap_or_default();
    // A uid the Secret names must be the account's: a Secret for an earlier account of the
    // same name is not passed to the new one.
    if annotations
        .get(UID_ANNOTATION)
        .is_some_and(|u| !u.is_empty() && *u != uid)
    {
        return Plan::Delete;
    }
    let mut data = secret.data.clone().unwrap_or_default();
    let has = |data: &std::collections::BTreeMap<String, ByteString>, k: &str| {
        data.get(k).is_some_and(|v| !v.0.is_empty())
    };
    if has(&data, "token")
        && has(&data, "ca.crt")
        && has(&data, "namespace")
        && annotations.contains_key(UID_ANNOTATION)
    {
        return Plan::Nothing;
    }
    let namespace = secret.metadata.namespace.clone().unwrap_or_default();
    let mut filled = secret.clone();
    if !has(&data, "token") {
        let token = match tokens.issue_legacy(&LegacyToken {
            namespace: &namespace,
            service_account: name,
            service_account_uid: &uid,
            secret: secret.metadata.name.as_deref().unwrap_or(""),
        }) {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "could not sign a service account token");
                return Plan::Nothing;
            }
        };
        data.insert("token".into(), ByteString(token.into_bytes()));
    }
    data.insert("ca.crt".into(), ByteString(ca_pem.as_bytes().to_vec()));
    data.insert(
        "namespace".into(),
        ByteString(namespace.clone().into_bytes()),
    );
    filled.data = Some(data);
    let mut annotations = annotations;
    annotations.insert(UID_ANNOTATION.into(), uid);
    filled.metadata.annotations = Some(annotations);
    Plan::Fill(Box::new(filled))
}

/// Fill token Secrets as they come, for as long as the task runs.
pub async fn run(client: Client, tokens: Arc<ServiceAccountTokens>, ca_pem: String) {
    let mut secrets: Watcher<Secret> = Watcher::new(
        client.clone(),
        None,
        ListParams {
            field_selector: Some(format!("type={TYPE}")),
            ..Default::default()
        },
    );
    loop {
        let batch = match secrets.next().await {
            watcher::Event::Restarted(all) => all,
            watcher::Event::Applied(s) => vec![s],
            watcher::Event::Deleted(_) => continue,
        };
        for secret in batch {
            if let Err(e) = sync(&client, &tokens, &ca_pem, &secret).await {
                let name = secret.metadata.name.clone().unwrap_or_default();
                warn!(secret = %name, error = %e, "could not fill a service account token Secret");
            }
        }
    }
}

async fn sync(
    client: &Client,
    tokens: &ServiceAccountTokens,
    ca_pem: &str,
    secret: &Secret,
) -> Result<(), client::ClientError> {
    let ns = secret.metadata.namespace.as_deref().unwrap_or("");
    let name = secret.metadata.name.as_deref().unwrap_or("");
    let account_name = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NAME_ANNOTATION))
        .cloned()
        .unwrap_or_default();
    if secret.type_.as_deref() != Some(TYPE) || account_name.is_empty() {
        return Ok(());
    }
    let account = client
        .get::<ServiceAccount>(Some(ns), &account_name)
        .await?;
    match plan(secret, account.as_ref(), tokens, ca_pem) {
        Plan::Nothing => Ok(()),
        Plan::Delete => {
            info!(secret = %format!("{ns}/{name}"), account = %account_name, "deleting a token Secret whose service account is gone");
            match client.delete::<Secret>(Some(ns), name).await {
                Err(e) if !e.is_not_found() => Err(e),
                _ => Ok(()),
            }
        }
        Plan::Fill(filled) => {
            // An update with the Secret's resourceVersion: a change meanwhile comes back
            // through the watch.
            match client.replace(Some(ns), name, filled.as_ref()).await {
                Ok(_) => {
                    info!(secret = %format!("{ns}/{name}"), account = %account_name, "filled a service account token Secret");
                    Ok(())
                }
                Err(e) if e.is_conflict() || e.is_not_found() => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn tokens() -> ServiceAccountTokens {
        ServiceAccountTokens::with_new_key("https://kubernetes.default.svc.cluster.local").unwrap()
    }

    fn secret(annotations: serde_json::Value) -> Secret {
        serde_json::from_value(json!({
            "metadata": {"name": "ci-token", "namespace": "team", "annotations": annotations},
            "type": TYPE}))
        .unwrap()
    }

    fn account(uid: &str) -> ServiceAccount {
        serde_json::from_value(json!({"metadata": {"name": "ci", "namespace": "team", "uid": uid}}))
            .unwrap()
    }

    #[test]
    fn a_token_secret_is_filled_for_its_account() {
        let t = tokens();
        let s = secret(json!({NAME_ANNOTATION: "ci"}));
        let Plan::Fill(filled) = plan(&s, Some(&account("u1")), &t, "CA") else {
            panic!("not filled");
        };
        let data = filled.data.clone().unwrap();
        assert_eq!(data["ca.crt"].0, b"CA");
        assert_eq!(data["namespace"].0, b"team");
        let token = String::from_utf8(data["token"].0.clone()).unwrap();
        let claims = t.verify(&token, 0).unwrap();
        assert_eq!(claims.user.name, "system:serviceaccount:team:ci");
        assert_eq!(claims.service_account.uid, "u1");
        assert_eq!(claims.secret.as_ref().unwrap().name, "ci-token");
        assert_eq!(
            filled.metadata.annotations.as_ref().unwrap()[UID_ANNOTATION],
            "u1"
        );
        // Once filled, left alone.
        assert_eq!(plan(&filled, Some(&account("u1")), &t, "CA"), Plan::Nothing);
    }

    #[test]
    fn a_secret_for_a_missing_or_recreated_account_goes() {
        let t = tokens();
        let s = secret(json!({NAME_ANNOTATION: "ci"}));
        assert_eq!(plan(&s, None, &t, "CA"), Plan::Delete);
        let old = secret(json!({NAME_ANNOTATION: "ci", UID_ANNOTATION: "u0"}));
        assert_eq!(plan(&old, Some(&account("u1")), &t, "CA"), Plan::Delete);
        // Other Secrets, and token Secrets naming no account, are not this controller's.
        let mut opaque = secret(json!({NAME_ANNOTATION: "ci"}));
        opaque.type_ = Some("Opaque".into());
        assert_eq!(plan(&opaque, None, &t, "CA"), Plan::Nothing);
        assert_eq!(plan(&secret(json!({})), None, &t, "CA"), Plan::Nothing);
    }
}
