//! `berth store ...`: snapshots of a running cluster's state and restoring one into a new
//! data directory; and the scheduled snapshots a server takes (`--snapshot-interval`).
//!
//! A snapshot is a tar archive: `store.snap` (every object as of one revision, self-checking,
//! see `store::snapshot`) and the cluster's identity (its CA, the admin's credentials and the
//! service account signing key), so a restored cluster is the same cluster to its clients. It
//! holds Secrets and keys: it is written readable by its owner only.

use std::fs;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use store::RedbStore;
use store::snapshot::Snapshot;

use crate::pki::{create_private, ensure_dir, write_private, write_private_with};

/// The files besides the store that a snapshot carries, relative to the data directory.
pub const IDENTITY_FILES: [&str; 7] = [
    "tls/ca.crt",
    "tls/ca.key",
    "credentials/admin.crt",
    "credentials/admin.key",
    "credentials/admin.token",
    "credentials/service-account.key",
    crate::encryption::KEY_FILE,
];

/// How far a restored store's revision jumps past the snapshot's, so that every client's
/// resourceVersion from the old cluster is in its compacted past (and relists).
const DEFAULT_BUMP: u64 = 1_000_000;

#[derive(clap::Subcommand)]
pub enum StoreCommand {
    /// Take a snapshot of a running server's state (consistent at one revision; writes go on)
    /// into FILE.
    Snapshot {
        file: PathBuf,
        /// The API server (default: the one in the data directory's kubeconfig).
        #[arg(long)]
        server: Option<String>,
    },
    /// Seal Secrets with a new key: the running server rewrites every Secret with it and
    /// drops the old keys.
    RotateKey {
        /// The API server (default: the one in the data directory's kubeconfig).
        #[arg(long)]
        server: Option<String>,
    },
    /// Read every record of the (stopped) server's store and report what is damaged; exits
    /// non-zero if anything is.
    Check,
    /// Keep what is intact of a damaged store (stopped) and list what was lost; the damaged
    /// file is kept beside it.
    Recover,
    /// Restore a snapshot into a new data directory; start `berth server` (or `up`) on it.
    Restore {
        file: PathBuf,
        /// How far the restored revision jumps past the snapshot's, so that clients of the old
        /// cluster relist instead of missing changes.
        #[arg(long, default_value_t = DEFAULT_BUMP)]
        bump_revision: u64,
    },
}

#[derive(clap::Args)]
pub struct StoreArgs {
    /// The cluster's data directory.
    #[arg(long, env = "BERTH_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: StoreCommand,
}

pub async fn run(args: StoreArgs) -> Result<()> {
    let data_dir = args
        .data_dir
        .unwrap_or_else(crate::cluster::default_data_dir);
    match args.command {
        StoreCommand::Snapshot { file, server } => {
            let (revision, objects, bytes) = fetch(&data_dir, server.as_deref(), &file).await?;
            println!(
                "snapshot of {objects} objects at revision {revision} written to {} ({bytes} bytes)",
                file.display(),
            );
            Ok(())
        }
        StoreCommand::RotateKey { server } => {
            let report = rotate_key(&data_dir, server.as_deref()).await?;
            println!(
                "Secrets are sealed with {}; {} rewritten; keys removed: {}",
                report["key"].as_str().unwrap_or("?"),
                report["rewritten"],
                report["removedKeys"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "none".into()),
            );
            Ok(())
        }
        StoreCommand::Check => {
            let path = data_dir.join("db").join("state.redb");
            let found = inspect(&path)?;
            report(&path, &found);
            if !found.is_clean() {
                bail!("the store is damaged; `berth store recover` keeps what is intact");
            }
            Ok(())
        }
        StoreCommand::Recover => recover(&data_dir),
        StoreCommand::Restore {
            file,
            bump_revision,
        } => {
            let archive =
                fs::File::open(&file).with_context(|| format!("reading {}", file.display()))?;
            let (snapshot, revision) = restore(archive, &data_dir, bump_revision)?;
            println!(
                "restored {} objects (snapshot revision {}) into {}; its revision is now {revision}. Start it with: berth server --data-dir {}",
                snapshot.kvs.len(),
                snapshot.revision,
                data_dir.display(),
                data_dir.display()
            );
            Ok(())
        }
    }
}

/// The API server's address, as the data directory's kubeconfig gives it.
pub fn server_of(data_dir: &Path) -> Result<String> {
    let path = crate::pki::kubeconfig_path(data_dir);
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (is a server running on this data directory? or give --server)",
            path.display()
        )
    })?;
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("server:")
                .map(|s| s.trim().to_string())
        })
        .with_context(|| format!("no server address in {}", path.display()))
}

/// The admin's client for the server of `data_dir` (or `server`).
pub fn admin_client(data_dir: &Path, server: Option<&str>) -> Result<(client::Client, String)> {
    let server = match server {
        Some(s) => s.to_string(),
        None => server_of(data_dir)?,
    };
    let ca = fs::read(data_dir.join("tls/ca.crt")).context("reading the cluster CA")?;
    let token = fs::read_to_string(data_dir.join("credentials/admin.token"))
        .context("reading the admin token")?;
    let transport = client::HttpsTransport::new(&server, &ca, Some(token.trim()))
        .context("connecting to the API server")?;
    Ok((client::Client::new(std::sync::Arc::new(transport)), server))
}

async fn rotate_key(data_dir: &Path, server: Option<&str>) -> Result<serde_json::Value> {
    let (c, server) = admin_client(data_dir, server)?;
    c.request_json(Method::POST, "/berth/v1/encryption/rotate", None)
        .await
        .with_context(|| format!("rotating the encryption key of {server}"))
}

/// Take a snapshot from the server into `file`, written as it arrives and checked whole before
/// it is put in place; returns its revision, its number of objects and its size.
async fn fetch(data_dir: &Path, server: Option<&str>, file: &Path) -> Result<(u64, u64, u64)> {
    let (c, server) = admin_client(data_dir, server)?;
    let req = http::Request::builder()
        .method(Method::GET)
        .uri("/berth/v1/snapshot")
        .body(Bytes::new())?;
    let taking = || format!("taking a snapshot from {server}");
    let resp = c.send(req).await.with_context(taking)?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let bytes = body
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .with_context(taking)?
            .to_bytes();
        return Err(client::api_error(status, &bytes)).with_context(taking);
    }
    let tmp = file.with_extension("partial");
    let received = async {
        let mut f = create_private(&tmp)?;
        let mut size = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| anyhow::anyhow!(e)).with_context(taking)?;
            if let Ok(data) = frame.into_data() {
                f.write_all(&data)?;
                size += data.len() as u64;
            }
        }
        f.sync_all()?;
        let (revision, objects) = check_archive(fs::File::open(&tmp)?)?;
        fs::rename(&tmp, file).with_context(|| format!("writing {}", file.display()))?;
        Ok((revision, objects, size))
    }
    .await;
    if received.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    received
}

/// Walk a snapshot archive: `store.snap` goes to `snap` as it is read, every other file is
/// returned, each checked to stay inside the directory it goes to.
fn walk(
    archive: impl Read,
    mut snap: impl FnMut(&mut dyn Read) -> Result<()>,
) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut found = false;
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries().context("reading the snapshot archive")? {
        let mut entry = entry.context("reading the snapshot archive")?;
        let name = entry
            .path()
            .context("reading the snapshot archive")?
            .into_owned();
        if name
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            bail!(
                "the snapshot names a file outside its directory: {}",
                name.display()
            );
        }
        if name == Path::new("store.snap") {
            snap(&mut entry).context("reading store.snap")?;
            found = true;
            continue;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        out.push((name, bytes));
    }
    if !found {
        bail!("the archive holds no store.snap: not a berth snapshot");
    }
    Ok(out)
}

/// A file of a snapshot archive: its name and contents.
type Entry = (PathBuf, Vec<u8>);

/// Check a snapshot archive whole; returns its revision and number of objects.
fn check_archive(archive: impl Read) -> Result<(u64, u64)> {
    let (mut revision, mut objects) = (0, 0);
    walk(archive, |r| {
        revision = store::snapshot::read(r, |_| objects += 1)?;
        Ok(())
    })?;
    Ok((revision, objects))
}

/// A snapshot archive's store, checked, and its other files.
fn unpack(archive: impl Read) -> Result<(Snapshot, Vec<Entry>)> {
    let mut snapshot = None;
    let files = walk(archive, |r| {
        snapshot = Some(Snapshot::decode_from(r)?);
        Ok(())
    })?;
    Ok((snapshot.expect("walk found store.snap"), files))
}

/// Unpack a snapshot archive into `data_dir`, which must hold no store yet.
pub fn restore(archive: impl Read, data_dir: &Path, bump: u64) -> Result<(Snapshot, u64)> {
    let (snapshot, files) = unpack(archive)?;
    let db = data_dir.join("db").join("state.redb");
    if db.exists() {
        bail!(
            "{} holds a store already: restore into a new data directory",
            data_dir.display()
        );
    }
    fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    ensure_dir(&data_dir.join("db"))?;
    for (name, bytes) in files {
        let path = data_dir.join(&name);
        if let Some(parent) = path.parent() {
            ensure_dir(parent)?;
        }
        write_private(&path, &bytes)?;
    }
    let revision = RedbStore::restore(&db, &snapshot, bump)
        .with_context(|| format!("writing the store {}", db.display()))?;
    Ok((snapshot, revision))
}

fn inspect(path: &Path) -> Result<store::Inspection> {
    if !path.exists() {
        bail!("no store at {}", path.display());
    }
    RedbStore::inspect(path).map_err(|e| {
        let text = format!("{e:#}");
        if text.contains("already open") || text.contains("AlreadyOpen") {
            anyhow::anyhow!("{} is in use: stop the server first", path.display())
        } else if matches!(e, store::StoreError::Corrupt(_)) {
            anyhow::anyhow!(
                "reading {}: {text}. Nothing in it can be read: restore the latest snapshot into \
                 a new data directory (`berth store restore FILE --data-dir DIR`)",
                path.display()
            )
        } else {
            anyhow::anyhow!("reading {}: {text}", path.display())
        }
    })
}

fn report(path: &Path, found: &store::Inspection) {
    println!(
        "{}: revision {}, {} history records, {} objects intact",
        path.display(),
        found.revision,
        found.records,
        found.intact.len()
    );
    if found.is_clean() {
        println!("no damage found");
        return;
    }
    if !found.damaged_records.is_empty() {
        println!(
            "{} damaged history records, at revisions {:?}",
            found.damaged_records.len(),
            found.damaged_records
        );
    }
    for (key, revision) in &found.lost {
        let what = api::resources::describe_key(key).unwrap_or_else(|| key.clone());
        println!("lost: {what} (its record at revision {revision} is damaged)");
    }
}

/// Rebuild the store from its intact objects; the damaged file stays beside it.
fn recover(data_dir: &Path) -> Result<()> {
    let db = data_dir.join("db");
    let path = db.join("state.redb");
    let found = inspect(&path)?;
    report(&path, &found);
    if found.is_clean() {
        println!("nothing to recover");
        return Ok(());
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let fresh = db.join(format!("state.redb.recovering-{stamp}"));
    let snapshot = Snapshot {
        revision: found.revision,
        kvs: found.intact,
    };
    let revision = RedbStore::restore(&fresh, &snapshot, DEFAULT_BUMP)
        .with_context(|| format!("writing {}", fresh.display()))?;
    let kept = db.join(format!("state.redb.damaged-{stamp}"));
    fs::rename(&path, &kept).with_context(|| format!("moving {} aside", path.display()))?;
    fs::rename(&fresh, &path).with_context(|| format!("putting {} in place", path.display()))?;
    println!(
        "recovered {} objects into {} (revision {revision}); {} objects lost (listed above); the damaged file is {}",
        snapshot.kvs.len(),
        path.display(),
        found.lost.len(),
        kept.display()
    );
    Ok(())
}

/// Scheduled snapshots: every `every`, an archive in `dir`, keeping the newest `retain`.
pub async fn schedule(
    api: std::sync::Arc<apiserver::ApiServer>,
    dir: PathBuf,
    every: Duration,
    retain: usize,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = scheduled_once(&api, &dir, retain).await {
            tracing::warn!(error = format!("{e:#}"), "scheduled snapshot failed");
        }
    }
}

async fn scheduled_once(api: &apiserver::ApiServer, dir: &Path, retain: usize) -> Result<()> {
    ensure_dir(dir)?;
    let archive = api
        .snapshot()
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let path = dir.join(format!("berth-snapshot-{stamp}.tar"));
    let written = path.clone();
    tokio::task::spawn_blocking(move || {
        write_private_with(&written, |f| {
            let mut failed = None;
            archive.write(|piece| match f.write_all(&piece) {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            });
            failed.map_or(Ok(()), |e| Err(e.into()))
        })
    })
    .await??;
    tracing::info!(path = %path.display(), "scheduled snapshot written");
    let mut ours: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("berth-snapshot-") && n.ends_with(".tar"))
        })
        .collect();
    ours.sort();
    let extra = ours.len().saturating_sub(retain);
    for old in &ours[..extra] {
        let _ = fs::remove_file(old);
    }
    Ok(())
}

/// A duration flag: seconds, or a number with `s`, `m`, `h` or `d`; `0` is off.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: not a duration like 30m or 12h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_read_as_operators_write_them() {
        assert_eq!(parse_interval("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_interval("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_interval("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_interval("12h").unwrap(), Duration::from_secs(43200));
        assert!(parse_interval("12x").is_err() && parse_interval("h").is_err());
    }

    #[test]
    fn an_archive_cannot_write_outside_the_data_directory() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        let body = b"x";
        h.set_size(1);
        h.set_mode(0o600);
        // `append_data` refuses `..`, so the name goes in raw.
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        b.append(&h, &body[..]).unwrap();
        let archive = b.into_inner().unwrap();
        let err = walk(&archive[..], |_| Ok(())).unwrap_err().to_string();
        assert!(err.contains("outside"), "{err}");
    }
}
