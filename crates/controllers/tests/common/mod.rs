//! What the in-process tests share: the transport every in-process client uses, with an
//! identity per client.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use apiserver::{ApiServer, Identity};
use async_trait::async_trait;
use bytes::Bytes;
use client::{Client, ClientError, ResponseBody, Transport};
use http_body_util::BodyExt;

pub struct InProcess {
    pub api: Arc<ApiServer>,
    pub who: String,
}

#[async_trait]
impl Transport for InProcess {
    async fn send(
        &self,
        req: http::Request<Bytes>,
    ) -> Result<http::Response<ResponseBody>, ClientError> {
        let resp = self
            .api
            .handle(req, Identity::system(self.who.clone()))
            .await;
        Ok(resp.map(|b| b.map_err(|never| match never {}).boxed_unsync()))
    }
}

/// A client of `api` acting as `who`.
pub fn client(api: &Arc<ApiServer>, who: &str) -> Client {
    Client::new(Arc::new(InProcess {
        api: api.clone(),
        who: who.to_string(),
    }))
}

/// A namespace with its `default` service account, as the namespace controller leaves it (pods
/// are admitted only with an account to run as).
pub async fn namespace(c: &Client, name: &str) {
    use api::k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    c.create(None, &ns).await.unwrap();
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}})).unwrap();
    c.create(Some(name), &sa).await.unwrap();
}
