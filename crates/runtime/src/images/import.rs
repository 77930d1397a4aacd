//! Importing image archives: OCI image layouts (`oci-layout`, `index.json`, `blobs/`) and
//! `docker save` archives (`manifest.json` with the layers as tar files), either plain or
//! compressed. The archive is read once, front to back.

use std::collections::HashMap;
use std::io::{self, Read};

use oci_spec::image::{ImageIndex, MediaType};
use serde::Deserialize;
use serde_json::json;

use super::digest::Digest;
use super::store::{Image, ImageStore, StoreError, normalize};
use super::unpack::decompress;
use super::{Progress, ProgressEvent, platform_matches};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

fn malformed(what: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Malformed {
        what,
        detail: detail.to_string(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// Import every image in an archive; returns them with their names.
pub fn import(
    store: &ImageStore,
    archive: impl Read,
    progress: &dyn Progress,
) -> Result<Vec<Image>, StoreError> {
    let mut tar = tar::Archive::new(decompress(archive).map_err(|e| malformed("archive", e))?);
    let mut index_json = None;
    let mut docker_manifest = None;
    // Archive path -> digest, for docker-save layers and configs.
    let mut by_path: HashMap<String, (Digest, u64)> = HashMap::new();
    for entry in tar.entries().map_err(|e| malformed("archive", e))? {
        let mut entry = entry.map_err(|e| malformed("archive", e))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| malformed("archive", e))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        match path.as_str() {
            "index.json" => index_json = Some(read_small(&mut entry)?),
            "manifest.json" => docker_manifest = Some(read_small(&mut entry)?),
            "oci-layout" | "repositories" => {}
            p if p.starts_with("blobs/sha256/") => {
                let expected = Digest::parse(&format!("sha256:{}", &p["blobs/sha256/".len()..]))?;
                let size = entry.header().size().unwrap_or(0);
                progress.event(ProgressEvent::Blob {
                    digest: expected.clone(),
                    total: Some(size),
                });
                let got = store.write_blob(&mut entry, Some(&expected))?;
                progress.event(ProgressEvent::Advance {
                    digest: expected,
                    bytes: size,
                });
                by_path.insert(p.to_string(), got);
            }
            p if p.ends_with(".tar") || p.ends_with(".json") || p.ends_with("/layer") => {
                let size = entry.header().size().unwrap_or(0);
                let got = store.write_blob(&mut entry, None)?;
                progress.event(ProgressEvent::Blob {
                    digest: got.0.clone(),
                    total: Some(size),
                });
                progress.event(ProgressEvent::Advance {
                    digest: got.0.clone(),
                    bytes: size,
                });
                by_path.insert(p.to_string(), got);
            }
            _ => {}
        }
    }
    if let Some(m) = docker_manifest {
        return import_docker_save(store, &m, &by_path, progress);
    }
    let index = index_json.ok_or_else(|| {
        malformed(
            "archive",
            "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
        )
    })?;
    import_oci_layout(store, &index, progress)
}

fn read_small(r: &mut impl Read) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    r.take(16 * 1024 * 1024)
        .read_to_end(&mut out)
        .map_err(|e| malformed("archive", e))?;
    Ok(out)
}

fn import_oci_layout(
    store: &ImageStore,
    index: &[u8],
    progress: &dyn Progress,
) -> Result<Vec<Image>, StoreError> {
    let index: ImageIndex =
        serde_json::from_slice(index).map_err(|e| malformed("index.json", e))?;
    let mut out = Vec::new();
    for desc in index.manifests() {
        let annotations = desc.annotations().clone().unwrap_or_default();
        let name = annotations
            .get(CONTAINERD_NAME)
            .or_else(|| annotations.get(REF_NAME))
            .and_then(|n| normalize(n).ok());
        let mut manifest = Digest::parse(desc.digest().as_ref())?;
        // An index inside the layout: pick this machine's platform.
        if matches!(desc.media_type(), MediaType::ImageIndex)
            || desc.media_type().to_string().contains("manifest.list")
        {
            let nested: ImageIndex = serde_json::from_slice(&store.read_blob(&manifest)?)
                .map_err(|e| malformed("image index", e))?;
            let pick = nested
                .manifests()
                .iter()
                .find(|m| platform_matches(m.platform().as_ref()))
                .ok_or_else(|| malformed("image index", "no manifest for this platform"))?;
            manifest = Digest::parse(pick.digest().as_ref())?;
        }
        let names: Vec<String> = name.into_iter().collect();
        out.push(store.add_image(&manifest, &names, true, progress)?);
    }
    Ok(out)
}

fn import_docker_save(
    store: &ImageStore,
    manifest: &[u8],
    by_path: &HashMap<String, (Digest, u64)>,
    progress: &dyn Progress,
) -> Result<Vec<Image>, StoreError> {
    let entries: Vec<DockerSaveEntry> =
        serde_json::from_slice(manifest).map_err(|e| malformed("manifest.json", e))?;
    let mut out = Vec::new();
    for e in entries {
        let blob = |p: &str| {
            by_path
                .get(p.trim_start_matches("./"))
                .cloned()
                .ok_or_else(|| malformed("docker save archive", format!("{p} is missing")))
        };
        let (config, config_size) = blob(&e.config)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let (d, size) = blob(l)?;
            // docker save layers are plain tars: the blob digest is the diffID.
            layers.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.as_str(), "size": size}));
        }
        let m = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.as_str(), "size": config_size},
            "layers": layers,
        });
        let (digest, _) = store.write_blob(io::Cursor::new(m.to_string().into_bytes()), None)?;
        let names: Vec<String> = e
            .repo_tags
            .iter()
            .filter_map(|t| normalize(t).ok())
            .collect();
        out.push(store.add_image(&digest, &names, true, progress)?);
    }
    Ok(out)
}
