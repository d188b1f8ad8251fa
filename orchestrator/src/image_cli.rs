//! `netreset image …`: import, list, verify, remove and garbage-collect disk images in
//! the chunk store under `data_dir`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Subcommand;
use images::{ChunkStore, Images};
use indicatif::{ProgressBar, ProgressStyle};

use orchestrator::Config;

/// Default chunk size. Provisional (1 MiB) until the delta benchmark of issue 3 has
/// measured 64 KiB to 4 MiB; every image records its own.
const DEFAULT_CHUNK_SIZE: u64 = 1 << 20;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import a raw disk image (a file or a block device).
    Import {
        /// The disk image.
        file: PathBuf,
        /// Name of the image in the catalog.
        #[arg(long)]
        name: String,
        /// Chunk size in bytes: a power of two from 65536 to 16777216.
        #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
        chunk_size: u64,
    },
    /// List the images.
    Ls,
    /// Re-read and re-hash every chunk of an image.
    Verify { name: String },
    /// Remove an image from the catalog (its chunks go at the next gc).
    Rm { name: String },
    /// Remove chunks that no image uses.
    Gc,
}

pub fn run(config: &Path, command: ImageCommand) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let dir = &config.data_dir;
    let store = ChunkStore::open(dir)?;
    let images = Images::open(dir)?;
    match command {
        ImageCommand::Import {
            file,
            name,
            chunk_size,
        } => import(&store, &images, &file, &name, chunk_size),
        ImageCommand::Ls => {
            for name in images.names()? {
                let index = images.get(&name)?;
                let stored = index.chunks.iter().flatten().collect::<HashSet<_>>().len();
                println!(
                    "{name}\t{} bytes\t{} chunks of {} KiB ({} distinct stored, {} zero)",
                    index.total_size,
                    index.chunks.len(),
                    index.chunk_size >> 10,
                    stored,
                    index.chunks.iter().filter(|c| c.is_none()).count(),
                );
            }
            Ok(())
        }
        ImageCommand::Verify { name } => verify(&store, &images, &name),
        ImageCommand::Rm { name } => {
            images.remove(&name)?;
            println!("removed {name}; run `netreset image gc` to free its chunks");
            Ok(())
        }
        ImageCommand::Gc => {
            let stats = store.gc(&images.referenced()?)?;
            println!(
                "removed {} chunks ({} bytes) and {} leftover temporary files",
                stats.chunks_removed, stats.bytes_freed, stats.temp_files_removed
            );
            Ok(())
        }
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

fn import(
    store: &ChunkStore,
    images: &Images,
    file: &Path,
    name: &str,
    chunk_size: u64,
) -> anyhow::Result<()> {
    images::check_name(name)?;
    if images.names()?.iter().any(|n| n == name) {
        bail!("an image named {name:?} exists already (netreset image rm {name})");
    }
    let len = std::fs::metadata(file)
        .with_context(|| format!("{}", file.display()))?
        .len();
    let progress = bar(len, "import");
    let started = Instant::now();
    let imported = images::import(store, file, chunk_size, |n| progress.set_position(n))?;
    progress.finish_and_clear();
    images.add(name, &imported.index)?;
    println!(
        "imported {name}: {} bytes in {:.1} s, {} chunks ({} new, {} zero)",
        imported.bytes_read,
        started.elapsed().as_secs_f64(),
        imported.index.chunks.len(),
        imported.new_chunks,
        imported.zero_chunks
    );
    Ok(())
}

fn verify(store: &ChunkStore, images: &Images, name: &str) -> anyhow::Result<()> {
    let index = images.get(name)?;
    let progress = bar(index.total_size, "verify");
    let mut bad = Vec::new();
    let mut done = 0u64;
    for (i, entry) in index.chunks.iter().enumerate() {
        let len = index.chunk_len(i);
        if let Some(id) = entry {
            if let Err(e) = store.get(id, len) {
                bad.push(format!("chunk {i}: {e}"));
            }
        }
        done += len as u64;
        progress.set_position(done);
    }
    progress.finish_and_clear();
    if !bad.is_empty() {
        bail!(
            "image {name} has {} bad chunks:\n  {}",
            bad.len(),
            bad.join("\n  ")
        );
    }
    println!("{name}: all {} chunks verified", index.chunks.len());
    Ok(())
}
