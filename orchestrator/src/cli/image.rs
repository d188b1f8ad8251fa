//! `netreset image …`: import, list, verify, remove and garbage-collect disk images in
//! the chunk store under `data_dir`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Subcommand;
use images::{ChunkStore, Images};
use indicatif::{ProgressBar, ProgressStyle};

use crate::Config;

use images::DEFAULT_CHUNK_SIZE;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import a disk image: raw (a file or a block device) or qcow2 (converted with
    /// qemu-img).
    Import {
        /// The disk image.
        file: PathBuf,
        /// Name of the image in the catalog.
        #[arg(long)]
        name: String,
        /// Chunk size in bytes: a power of two from 65536 to 16777216.
        #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
        chunk_size: u64,
        /// Keep every byte, the free space of NTFS and FAT included (by default free
        /// space is not stored, and a restore empties it).
        #[arg(long)]
        whole_disk: bool,
    },
    /// Stage an image: its index plus the files injected at restore time. Prints the
    /// staged id, which restore clients fetch.
    Stage {
        name: String,
        /// kms: point Windows and Office at [kms] host and install the agent; plain:
        /// a reset to the image, nothing injected.
        #[arg(long, default_value = "plain")]
        profile: images::Profile,
    },
    /// List the images.
    Ls,
    /// One image: its size, what of it is data, its partitions, and whether its
    /// Windows is generalized (State.ini), which the KMS profile needs.
    Show {
        name: String,
        /// The facts as JSON.
        #[arg(long)]
        json: bool,
    },
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
    // What adds to data_dir shares it with a running server; what deletes needs it
    // alone, and is refused (never waits) while anyone else holds it.
    use crate::lock::{Access, DataLock};
    let writes = match &command {
        ImageCommand::Import { .. } => Some(("netreset image import", Access::Shared)),
        ImageCommand::Stage { .. } => Some(("netreset image stage", Access::Shared)),
        ImageCommand::Rm { .. } => Some(("netreset image rm", Access::Exclusive)),
        ImageCommand::Gc => Some(("netreset image gc", Access::Exclusive)),
        ImageCommand::Ls | ImageCommand::Show { .. } | ImageCommand::Verify { .. } => None,
    };
    let _lock = writes
        .map(|(what, access)| DataLock::acquire(dir, what, access))
        .transpose()?;
    let store = ChunkStore::open(dir)?;
    let images = Images::open(dir)?;
    match command {
        ImageCommand::Import {
            file,
            name,
            chunk_size,
            whole_disk,
        } => {
            let scope = if whole_disk {
                images::Scope::Everything
            } else {
                images::Scope::Used
            };
            import(&store, &images, &file, &name, chunk_size, scope)
        }
        ImageCommand::Stage { name, profile } => {
            let settings = crate::staging::StageSettings::from_config(&config);
            let (id, staged) = settings.stage(&images, &store, &name, profile)?;
            eprintln!(
                "staged {name} ({profile}): {} files injected; restore clients fetch /images/{id}/index",
                staged.files.len()
            );
            println!("{id}");
            Ok(())
        }
        ImageCommand::Ls => {
            for name in images.names()? {
                let index = images.get(&name)?;
                let layout = &index.layout;
                let stored = index.ids.iter().collect::<HashSet<_>>().len();
                println!(
                    "{name}\t{} bytes\t{} used, {} free, {} zero; {} KiB chunks ({} distinct stored)",
                    layout.total_size,
                    human(layout.bytes_of(images::RunKind::Data)),
                    human(layout.bytes_of(images::RunKind::Free)),
                    human(layout.bytes_of(images::RunKind::Zero)),
                    layout.chunk_size >> 10,
                    stored,
                );
            }
            Ok(())
        }
        ImageCommand::Show { name, json } => {
            let seen = images::inspect::inspect(&store, &images.get(&name)?, &name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&seen)?);
            } else {
                show(&name, &seen);
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

/// Bytes for people: KiB, MiB, GiB or TiB with one decimal.
fn human(bytes: u64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

fn show(name: &str, seen: &images::inspect::Inspection) {
    println!("image      {name}");
    println!(
        "size       {} bytes ({}): {} used, {} free space (not stored; a restore empties it) ({} KiB chunks)",
        seen.size,
        human(seen.size),
        human(seen.used),
        human(seen.free),
        seen.chunk_size >> 10
    );
    for p in &seen.partitions {
        println!(
            "partition  {}: {} at {} bytes, {}{}",
            p.number,
            p.fs,
            p.start,
            human(p.len),
            if p.esp { " (EFI system partition)" } else { "" }
        );
    }
    if seen.partitions.is_empty() {
        println!("partition  none (no partition table)");
    }
    if let Some(v) = &seen.version {
        println!("version    {}", v.describe());
    }
    match &seen.windows {
        Some(w) => println!(
            "windows    partition {}: ImageState={} ({})",
            w.partition,
            w.image_state,
            if w.generalized {
                "generalized: fit for the kms profile"
            } else {
                "not generalized"
            }
        ),
        None => println!(r"windows    no Windows\Setup\State\State.ini found"),
    }
    if let Some(why) = seen.kms_refusal(name) {
        println!("kms        refused: {why}");
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
    scope: images::Scope,
) -> anyhow::Result<()> {
    images::check_name(name)?;
    if images.names()?.iter().any(|n| n == name) {
        bail!("an image named {name:?} exists already (netreset image rm {name})");
    }
    images::check_chunk_size(chunk_size)?;
    let started = Instant::now();
    // A qcow2 image is converted to a sparse raw file beside the store first: qemu-img
    // knows every qcow2 feature (compression, backing files, snapshots), and the holes
    // cost no space.
    let converted = if is_qcow2(file)? {
        Some(qcow2_to_raw(file, &images.scratch_dir())?)
    } else {
        None
    };
    let raw = converted.as_ref().map_or(file, |t| t.path());
    let len = disk_len(raw)?;
    let progress = bar(len, "import");
    let imported =
        images::import_with(store, raw, chunk_size, scope, |n| progress.set_position(n))?;
    progress.finish_and_clear();
    drop(converted);
    for note in &imported.notes {
        eprintln!("note: {note}");
    }
    images.add(name, &imported.index)?;
    println!(
        "imported {name}: {} bytes ({} read; the rest holes or free space) in {:.1} s, {} chunks \
         ({} stored, {} new; {} zero, {} free)",
        imported.index.layout.total_size,
        imported.bytes_read,
        started.elapsed().as_secs_f64(),
        imported.index.layout.count(),
        imported.index.ids.len(),
        imported.new_chunks,
        imported.zero_chunks,
        imported.free_chunks
    );
    // Said at once, not at the second campaign cycle by duplicate CMIDs.
    let seen = images::inspect::inspect(store, &imported.index, name)?;
    if let Some(why) = seen.kms_refusal(name) {
        eprintln!("warning: {why}");
    }
    Ok(())
}

fn disk_len(path: &Path) -> anyhow::Result<u64> {
    use std::io::{Seek, SeekFrom};
    // metadata().len() is 0 for a block device; seeking to the end works for both.
    let mut f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    Ok(f.seek(SeekFrom::End(0))?)
}

/// qcow2 files start with "QFI\xfb".
fn is_qcow2(path: &Path) -> anyhow::Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let n = f.read(&mut magic)?;
    Ok(n == 4 && magic == *b"QFI\xfb")
}

fn qcow2_to_raw(file: &Path, scratch: &Path) -> anyhow::Result<tempfile::NamedTempFile> {
    let out = tempfile::Builder::new()
        .prefix(".import-")
        .suffix(".raw")
        .tempfile_in(scratch)
        .with_context(|| format!("making a scratch file in {}", scratch.display()))?;
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(format!(
        "converting {} from qcow2 with qemu-img",
        file.display()
    ));
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-f", "qcow2", "-O", "raw"])
        .arg(file)
        .arg(out.path())
        .status();
    spinner.finish_and_clear();
    match status {
        Ok(s) if s.success() => Ok(out),
        Ok(s) => bail!("qemu-img convert {} failed ({s})", file.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} is a qcow2 image, which needs qemu-img to import (Debian: apt-get install qemu-utils)",
            file.display()
        ),
        Err(e) => bail!("running qemu-img: {e}"),
    }
}

fn verify(store: &ChunkStore, images: &Images, name: &str) -> anyhow::Result<()> {
    let index = images.get(name)?;
    let layout = &index.layout;
    let progress = bar(layout.total_size, "verify");
    let mut bad = Vec::new();
    let mut done = 0u64;
    for e in layout.extents() {
        if e.kind == images::RunKind::Data {
            for k in 0..e.chunks {
                let (i, len) = (e.first + k, layout.chunk_len(e.first + k));
                if let Err(err) = store.get(&index.ids[(e.data_first + k) as usize], len) {
                    bad.push(format!("chunk {i}: {err}"));
                }
                done += len as u64;
                progress.set_position(done);
            }
        } else {
            done += layout.bytes(e.first, e.chunks);
        }
    }
    progress.finish_and_clear();
    if !bad.is_empty() {
        bail!(
            "image {name} has {} bad chunks:\n  {}",
            bad.len(),
            bad.join("\n  ")
        );
    }
    println!("{name}: all {} stored chunks verified", index.ids.len());
    Ok(())
}
