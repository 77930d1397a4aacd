//! The in-process transport: components in this process call the API server's handler
//! directly, with their own identity, and pass the same validation as any remote client.

use std::sync::Arc;

use api::rbac::UserInfo;
use apiserver::{ApiServer, Identity};
use async_trait::async_trait;
use bytes::Bytes;
use client::{ClientError, ResponseBody, Transport};
use http::Request;
use http_body_util::BodyExt;

pub struct InProcess {
    api: Arc<ApiServer>,
    who: Identity,
}

impl InProcess {
    /// A component trusted as `system:masters` (the bootstrap and the API server's own
    /// reconcilers, as kube-apiserver's loopback client is).
    pub fn client(api: Arc<ApiServer>, who: &str) -> client::Client {
        client::Client::new(Arc::new(InProcess {
            api,
            who: Identity::system(who),
        }))
    }

    /// A component acting as `user`, judged by RBAC like any client (the scheduler, as
    /// `system:kube-scheduler` with Kubernetes' roles for it); its writes are recorded as
    /// `component`.
    pub fn client_as(api: Arc<ApiServer>, component: &str, user: UserInfo) -> client::Client {
        client::Client::new(Arc::new(InProcess {
            api,
            who: Identity::component(component, user),
        }))
    }
}

#[async_trait]
impl Transport for InProcess {
    async fn send(&self, req: Request<Bytes>) -> Result<http::Response<ResponseBody>, ClientError> {
        let resp = self.api.handle(req, self.who.clone()).await;
        Ok(resp.map(|b| b.map_err(|never| match never {}).boxed_unsync()))
    }
}
