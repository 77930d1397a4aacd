//! `berth image ...`: the node's image store from the command line.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use runtime::images::{Digest, ImageStore, Progress, ProgressEvent, PullOptions, Puller, import};

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Pull an image from a registry.
    Pull {
        reference: String,
        /// Registries (host:port) to reach over plain HTTP (localhost always is).
        #[arg(long)]
        insecure_registry: Vec<String>,
        /// Username for the registry (the password is read from BERTH_REGISTRY_PASSWORD).
        #[arg(long)]
        username: Option<String>,
    },
    /// Import an OCI image layout or `docker save` archive (plain, gzip or zstd). Imported
    /// images are pinned: garbage collection under disk pressure keeps them.
    Import { file: PathBuf },
    /// Give an image another name (any registry, repository and tag), as `docker tag` does:
    /// pods can then name it so. A name moves off the image that had it.
    Tag { source: String, target: String },
    /// Pin images, so that garbage collection under disk pressure keeps them.
    Pin { references: Vec<String> },
    /// Unpin images: when unused, garbage collection may remove them.
    Unpin { references: Vec<String> },
    /// List stored images.
    #[command(alias = "list")]
    Ls,
    /// Remove an image name, or by ID the whole image, and free unused space.
    Rm { references: Vec<String> },
}

#[derive(clap::Args)]
pub struct ImageArgs {
    /// The cluster's data directory (its images are in `<data-dir>/images`).
    #[arg(long, env = "BERTH_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: ImageCommand,
}

pub fn store_in(data_dir: &std::path::Path) -> Result<ImageStore> {
    let root = data_dir.join("images");
    ImageStore::open(&root)
        .with_context(|| format!("opening the image store in {}", root.display()))
}

pub async fn run(args: ImageArgs) -> Result<()> {
    let data_dir = args
        .data_dir
        .unwrap_or_else(crate::cluster::default_data_dir);
    let store = Arc::new(store_in(&data_dir)?);
    if let Some(note) = crate::instances::elsewhere(&data_dir) {
        eprintln!("{note}");
    }
    match args.command {
        ImageCommand::Pull {
            reference,
            insecure_registry,
            username,
        } => {
            let auth = match username {
                Some(u) => Some(runtime::images::Credentials {
                    username: u,
                    password: std::env::var("BERTH_REGISTRY_PASSWORD")
                        .context("set BERTH_REGISTRY_PASSWORD for --username")?,
                }),
                None => None,
            };
            let bars = Bars::new();
            let image = Puller::new(store.clone())
                .pull(
                    &reference,
                    &PullOptions {
                        insecure: insecure_registry.clone(),
                        auth,
                        registries: runtime::images::Registries::load(
                            &data_dir.join("registries.yaml"),
                        )?,
                    },
                    &bars,
                )
                .await?;
            bars.finish();
            println!("{} {}", runtime::images::normalize(&reference)?, image.id);
            // The other nodes of a `berth up --nodes` cluster get it too.
            for (node, dir) in crate::fleet::node_dirs(&data_dir) {
                let other = Arc::new(store_in(&dir)?);
                Puller::new(other)
                    .pull(
                        &reference,
                        &PullOptions {
                            insecure: insecure_registry.clone(),
                            auth: None,
                            registries: runtime::images::Registries::load(
                                &data_dir.join("registries.yaml"),
                            )?,
                        },
                        &runtime::images::Quiet,
                    )
                    .await
                    .with_context(|| format!("pulling {reference} on node {node}"))?;
                println!("pulled on node {node}");
            }
        }
        ImageCommand::Import { file } => {
            let f = File::open(&file).with_context(|| format!("opening {}", file.display()))?;
            let total = f.metadata().map(|m| m.len()).unwrap_or(0);
            let bar = ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message("importing");
            let reader = Counting {
                inner: f,
                bar: bar.clone(),
            };
            let store2 = store.clone();
            let images = tokio::task::spawn_blocking(move || {
                import(&store2, reader, &runtime::images::Quiet)
            })
            .await??;
            bar.finish_and_clear();
            if images.is_empty() {
                bail!("{} holds no images", file.display());
            }
            // The other nodes of a `berth up --nodes` cluster get them too, as `kind load`
            // loads every node.
            for (node, dir) in crate::fleet::node_dirs(&data_dir) {
                let other = store_in(&dir)?;
                let f = File::open(&file).with_context(|| format!("opening {}", file.display()))?;
                tokio::task::spawn_blocking(move || import(&other, f, &runtime::images::Quiet))
                    .await?
                    .with_context(|| format!("importing into node {node}"))?;
                println!("imported into node {node}");
            }
            for i in images {
                if i.names.is_empty() {
                    println!("imported {} (no name; refer to it by ID)", i.id);
                }
                for n in &i.names {
                    println!("imported {n} {}", i.id);
                }
            }
        }
        ImageCommand::Tag { source, target } => {
            let image = store.tag(&source, &target)?;
            println!(
                "tagged {} {}",
                runtime::images::normalize(&target)?,
                image.id
            );
        }
        ImageCommand::Ls => {
            let mut images = store.list()?;
            images.sort_by(|a, b| a.names.cmp(&b.names));
            println!("{:<50} {:<14} {:>10}  PINNED", "IMAGE", "ID", "SIZE");
            for i in images {
                let size = human_bytes(i.size);
                let pinned = if i.pinned { "true" } else { "false" };
                if i.names.is_empty() {
                    println!(
                        "{:<50} {:<14} {:>10}  {pinned}",
                        "<none>",
                        i.id.short(),
                        size
                    );
                }
                for n in &i.names {
                    println!("{:<50} {:<14} {:>10}  {pinned}", n, i.id.short(), size);
                }
            }
        }
        ImageCommand::Pin { references } | ImageCommand::Unpin { references }
            if references.is_empty() =>
        {
            bail!("name the images (by reference or ID)");
        }
        ImageCommand::Pin { references } => {
            for r in references {
                let i = store.set_pinned(&r, true)?;
                println!("pinned {r} {}", i.id);
            }
        }
        ImageCommand::Unpin { references } => {
            for r in references {
                let i = store.set_pinned(&r, false)?;
                println!("unpinned {r} {}", i.id);
            }
        }
        ImageCommand::Rm { references } => {
            if references.is_empty() {
                bail!("name at least one image to remove");
            }
            for r in &references {
                let removed = store.remove(r)?;
                if removed.is_empty() {
                    println!("untagged {r}");
                }
                for i in removed {
                    println!("deleted {}", i.id);
                }
            }
            let freed = store.collect_garbage()?;
            if freed > 0 {
                println!("freed {}", human_bytes(freed));
            }
        }
    }
    Ok(())
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: &[&str] = &["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

struct Counting<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// One progress bar per blob, as `docker pull` shows them.
pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
}

impl Bars {
    pub fn new() -> Bars {
        Bars {
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn bar(&self, d: &Digest, total: Option<u64>) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        bars.entry(d.clone())
            .or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(total.unwrap_or(0)));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix} {msg:>12} [{bar:25}] {bytes}/{total_bytes}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(d.short().to_string());
                bar
            })
            .clone()
    }

    pub fn finish(&self) {
        for b in self.bars.lock().unwrap_or_else(|p| p.into_inner()).values() {
            b.finish();
        }
    }
}

impl Progress for Bars {
    fn event(&self, e: ProgressEvent) {
        match e {
            ProgressEvent::Blob { digest, total } => {
                self.bar(&digest, total).set_message("downloading")
            }
            ProgressEvent::Advance { digest, bytes } => self.bar(&digest, None).inc(bytes),
            ProgressEvent::Exists { digest } => {
                self.bar(&digest, Some(0)).finish_with_message("exists")
            }
            ProgressEvent::Unpacking { digest } => self.bar(&digest, None).set_message("unpacking"),
        }
    }
}
