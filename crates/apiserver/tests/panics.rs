//! A bug in a request handler costs that request a 500 Status, on the path every in-process
//! client takes (`ApiServer::handle`), and the server goes on serving.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use apiserver::{ApiServer, Config, Identity};
use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use store::{KeyValue, MemStore, Op, Revision, Store, StoreError, TxnResult, WatchStream};

/// The in-memory store, except that writing a key with `boom` in it panics.
struct Booby(MemStore);

#[async_trait]
impl Store for Booby {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.0.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.0.list(prefix).await
    }
    async fn txn(&self, ops: Vec<Op>) -> Result<TxnResult, StoreError> {
        if let Some(op) = ops.iter().find(|op| op.key().contains("boom")) {
            panic!("the store cannot write {}", op.key());
        }
        self.0.txn(ops).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.0.watch(prefix, after).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.0.revision().await
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.0.compact(revision).await
    }
    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.0.compacted_revision().await
    }
}

async fn call(api: &ApiServer, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap();
    let resp = api.handle(req, Identity::system("test")).await;
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        serde_json::from_slice(&body.collect().await).unwrap(),
    )
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_status_and_the_server_carries_on() {
    let api = ApiServer::start(Arc::new(Booby(MemStore::new())), Config::default())
        .await
        .unwrap();
    let ns = json!({"metadata": {"name": "default"}});
    call(&api, Method::POST, "/api/v1/namespaces", ns).await;
    let path = "/api/v1/namespaces/default/configmaps";

    let (code, status) = call(
        &api,
        Method::POST,
        path,
        json!({"metadata": {"name": "boom"}}),
    )
    .await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["code"], 500);
    assert_eq!(status["reason"], "InternalError");

    let (code, created) = call(
        &api,
        Method::POST,
        path,
        json!({"metadata": {"name": "fine"}}),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    let (code, list) = call(&api, Method::GET, path, Value::Null).await;
    assert_eq!(code, StatusCode::OK);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fine"]);
}
