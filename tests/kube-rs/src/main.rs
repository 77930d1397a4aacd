//! The `CustomResource` derive example as a kube-rs user writes it: install the definition
//! (server-side apply), wait for it to be established, then create, watch, patch, scale and
//! delete objects of its kind. Exits non-zero, saying why, on the first thing that is not as
//! a Kubernetes API server answers it. Reads KUBECONFIG.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "kube-rs.example.com",
    version = "v1",
    kind = "Foo",
    namespaced
)]
#[kube(status = "FooStatus", shortname = "fo")]
#[kube(scale(
    spec_replicas_path = ".spec.replicas",
    status_replicas_path = ".status.replicas"
))]
pub struct FooSpec {
    #[schemars(length(min = 3))]
    name: String,
    info: Option<String>,
    replicas: i32,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
pub struct FooStatus {
    is_bad: bool,
    replicas: i32,
}

const CRD: &str = "foos.kube-rs.example.com";

#[tokio::main]
async fn main() -> Result<()> {
    let client = Client::try_default().await.context("connecting")?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let apply = PatchParams::apply("kube-rs-check").force();
    crds.patch(CRD, &apply, &Patch::Apply(Foo::crd()))
        .await
        .context("applying the definition")?;
    let established = await_condition(crds.clone(), CRD, conditions::is_crd_established());
    tokio::time::timeout(Duration::from_secs(10), established)
        .await
        .context("the definition was not established within 10 s")??;

    let foos: Api<Foo> = Api::namespaced(client.clone(), "default");
    // A watch from now, to see what follows.
    let mut events = watcher(foos.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();

    let foo = Foo::new(
        "baz",
        FooSpec {
            name: "baz".into(),
            info: None,
            replicas: 1,
        },
    );
    let created = foos
        .patch("baz", &apply, &Patch::Apply(&foo))
        .await
        .context("creating an object by server-side apply")?;
    ensure!(created.spec.replicas == 1, "created: {created:?}");
    ensure!(
        created
            .managed_fields()
            .iter()
            .any(|m| m.manager.as_deref() == Some("kube-rs-check")),
        "no managed fields for the applier: {:?}",
        created.managed_fields()
    );
    match foos
        .create(
            &PostParams::default(),
            &Foo::new(
                "qux",
                FooSpec {
                    name: "qu".into(),
                    info: None,
                    replicas: 1,
                },
            ),
        )
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 422 => ensure!(
            e.message
                .contains("spec.name in body should be at least 3 chars long"),
            "unexpected 422 message: {}",
            e.message
        ),
        other => bail!("a too short name was not refused with 422: {other:?}"),
    }
    match foos.create(&PostParams::default(), &foo).await {
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        other => bail!("a second create of baz was not refused with 409: {other:?}"),
    }

    let patched = foos
        .patch(
            "baz",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"info": "patched"}})),
        )
        .await
        .context("merge patch")?;
    ensure!(
        patched.spec.info.as_deref() == Some("patched"),
        "patched: {patched:?}"
    );
    // The watch saw the create and the patch.
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(f) = events.try_next().await? {
            if f.name_any() == "baz" && f.spec.info.as_deref() == Some("patched") {
                return Ok::<_, anyhow::Error>(());
            }
        }
        bail!("the watch ended")
    })
    .await
    .context("the watch did not show the patch within 10 s")?;
    seen?;

    let status = foos
        .patch_status(
            "baz",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"is_bad": false, "replicas": 1}})),
        )
        .await
        .context("status patch")?;
    ensure!(
        status.status.as_ref().map(|s| s.replicas) == Some(1),
        "status: {status:?}"
    );
    let scale = foos.get_scale("baz").await.context("get scale")?;
    ensure!(
        scale.spec.and_then(|s| s.replicas) == Some(1),
        "scale before"
    );
    foos.patch_scale(
        "baz",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .context("scale patch")?;
    ensure!(
        foos.get("baz").await?.spec.replicas == 3,
        "scale did not reach spec.replicas"
    );
    // Replacing the object leaves its status alone.
    let mut whole = foos.get("baz").await?;
    whole.status = None;
    let replaced = foos
        .replace("baz", &PostParams::default(), &whole)
        .await
        .context("replace")?;
    ensure!(
        replaced.status.is_some(),
        "a replace through the main resource dropped the status"
    );

    foos.delete("baz", &DeleteParams::default())
        .await
        .context("delete")?;
    crds.delete(CRD, &DeleteParams::default())
        .await
        .context("deleting the definition")?;
    println!("kube-rs-check: ok");
    Ok(())
}
