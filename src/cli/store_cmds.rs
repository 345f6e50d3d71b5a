//! Store commands: import, images, tag, inspect, rmi, system df/prune/check.
//! Argument definitions and output only; the work is in `crate::store`.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use crate::cli::Globals;
use crate::cli::progress::LayerBars;
use crate::container::image_mounts;
use crate::error::{Error, Result};
use crate::snapshotter::snapshots::SnapshotUse;
use crate::store::gc::RmiEvent;
use crate::store::{
    ContainerUse, Digest, ImageRecord, ImportObserver, ImportOptions, LayerEvent, Store,
};

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Import an image from a file or directory: OCI layout, oci-archive, docker-archive, or a layer tar (.tar, .tar.gz, .tar.zst)
    Import(ImportArgs),
    /// List images
    Images(ImagesArgs),
    /// Give an image another name: layerfs tag SOURCE NAME[:TAG]
    Tag { source: String, target: String },
    /// Show an image's ids, digests, layers and config as JSON
    Inspect {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove images (or just a tag, when the image has others)
    Rmi {
        /// Remove even when a container uses the image (its layers stay for the container) or it is mounted (it is unmounted first)
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Store-wide commands: df, prune, check
    System {
        #[command(subcommand)]
        cmd: SystemCommand,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The image: a directory or an archive file
    pub path: PathBuf,
    /// Name the imported image NAME[:TAG]
    #[arg(short, long, value_name = "NAME[:TAG]")]
    pub tag: Option<String>,
    /// Platform to pick from a multi-platform image [default: the host's]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Print only the image ids
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ImagesArgs {
    /// Show manifest digests
    #[arg(long)]
    pub digests: bool,
    /// Output format
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Print only image ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Show full ids
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SystemCommand {
    /// Show how much space images, layers and containers use (-v: per image and per layer)
    Df {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Remove untagged images, unused layers and blobs, and leftovers of interrupted commands
    Prune {
        /// Remove every image no container uses, not just untagged ones
        #[arg(short, long)]
        all: bool,
    },
    /// Convert layers stored whole (before the file store) to stubs and file objects,
    /// one layer at a time, each swapped in atomically; layers a live mount uses are
    /// left for a later run
    Migrate,
    /// Verify every layer, blob and file object against its digest
    Check {
        /// Remove what is damaged (the images that need it must be imported again)
        #[arg(long)]
        repair: bool,
    },
}

/// Run a store command.
pub(crate) fn run(cmd: StoreCommand, g: &Globals) -> Result<()> {
    let mut store = Store::open(&g.store_root())?;
    store.set_lock_wait_notice(|| {
        eprintln!("layerfs: waiting for another command to release the store lock")
    });
    match cmd {
        StoreCommand::Import(a) => import(&store, a),
        StoreCommand::Images(a) => images(&store, a),
        StoreCommand::Tag { source, target } => {
            store.tag(&source, &target)?;
            Ok(())
        }
        StoreCommand::Inspect { images } => inspect(&store, &images),
        StoreCommand::Rmi { force, images } => rmi(&store, &images, force),
        StoreCommand::System { cmd } => match cmd {
            SystemCommand::Df { format } => df(&store, g.verbose > 0, format),
            SystemCommand::Prune { all } => prune(&store, all),
            SystemCommand::Check { repair } => check(&store, repair),
            SystemCommand::Migrate => migrate(&store),
        },
    }
}

// ---------------------------------------------------------------------------------------
// Containers as the store sees them.

/// What containers and containerd snapshots use, from their records. An unreadable
/// container dir is logged and skipped (it must not block rmi/df/prune); when the
/// snapshot records cannot be read, a use that keeps every layer stands in for them
/// (nothing a snapshot may need is removed on a guess).
fn users_or_all(store: &Store) -> Vec<ContainerUse> {
    let mut out = only_containers(store);
    match crate::snapshotter::Core::uses(store) {
        Ok(uses) => out.extend(snapshots_as_users(&uses)),
        Err(e) => {
            log::warn!("{e}: keeping every layer");
            out.push(ContainerUse {
                name: "containerd snapshots".into(),
                layers: store.layer_ids().unwrap_or_default(),
                ..Default::default()
            });
        }
    }
    out
}

fn only_containers(store: &Store) -> Vec<ContainerUse> {
    crate::container::Containers::new(store)
        .uses()
        .unwrap_or_else(|e| {
            log::warn!("listing containers: {e}");
            Vec::new()
        })
}

/// The layers containerd snapshots stand on, as uses the store understands.
fn snapshots_as_users(uses: &[SnapshotUse]) -> impl Iterator<Item = ContainerUse> + '_ {
    uses.iter()
        .filter(|s| !s.layers.is_empty())
        .map(|s| ContainerUse {
            name: format!("snapshot {}", s.key),
            image: None,
            layers: s.layers.clone(),
            size: 0,
        })
}

/// The snapshots row of `system df`: every snapshot, the active ones (active and
/// views), and the disk blocks of their own trees (a tree shared by two records once):
/// the numbers containerd's `Usage` gives, summed. A snapshot standing on a store layer
/// counts that layer's tree, which the Layers row counts too.
fn snapshot_totals(uses: &[SnapshotUse]) -> crate::store::Totals {
    let mut dirs = std::collections::BTreeSet::new();
    let mut t = crate::store::Totals {
        total: uses.len(),
        ..Default::default()
    };
    for s in uses {
        if s.kind != crate::snapshotter::Kind::Committed {
            t.active += 1;
        }
        if dirs.insert(&s.tree) {
            t.size += crate::snapshotter::snapshots::tree_usage(&s.tree).size;
        }
    }
    t
}

// ---------------------------------------------------------------------------------------
// Formatting.

/// Sizes as docker prints them: decimal units, three significant digits ("12.3MB").
pub(crate) fn human_size(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        return format!("{n}B");
    }
    let s = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{}", UNITS[i])
}

/// "3 days ago" for an RFC 3339 time, or the import time when the config has none.
fn created_ago(r: &ImageRecord) -> String {
    let secs = r
        .created
        .as_deref()
        .and_then(|c| c.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second())
        .unwrap_or(r.imported as i64);
    ago(crate::store::now_secs() as i64 - secs)
}

pub(crate) fn ago(d: i64) -> String {
    if d < 0 {
        return "in the future".into();
    }
    let d = d as u64;
    let (n, unit) = match d {
        0..=59 => return "Less than a minute ago".into(),
        60..=3599 => (d / 60, "minute"),
        3600..=86_399 => (d / 3600, "hour"),
        86_400..=1_209_599 => (d / 86_400, "day"),
        1_209_600..=5_183_999 => (d / 604_800, "week"),
        5_184_000..=63_071_999 => (d / 2_592_000, "month"),
        _ => (d / 31_536_000, "year"),
    };
    if n == 1 {
        let a = if unit == "hour" { "An" } else { "A" };
        format!("{a} {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}

/// Print rows as aligned columns (3 spaces between, as docker does).
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let mut widths = Vec::new();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            line.push_str(c);
            if i + 1 < r.len() {
                let pad = widths[i] - c.chars().count() + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub(crate) fn print(s: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(s.as_bytes())
        .and_then(|_| o.flush())
        .map_err(|e| Error::io("writing the output", e))
}

fn split_tag(t: &str) -> (String, String) {
    let (n, tag) = crate::store::images::split_tag(t);
    (n.to_string(), tag.to_string())
}

// ---------------------------------------------------------------------------------------
// import

/// Import progress: bars on a terminal, one plain line per layer otherwise.
struct Progress(LayerBars);

/// Layers smaller than this get no bar.
const BAR_MIN: u64 = 4 << 20;

impl ImportObserver for Progress {
    fn layer(&self, d: &Digest, ev: LayerEvent) {
        let id = format!("sha256:{}", d.short());
        match ev {
            LayerEvent::Exists => self.0.line(format!("{id}: already exists")),
            LayerEvent::BlobStored => self
                .0
                .finish(d, format!("{id}: already exists (blob stored)")),
            LayerEvent::Start { size } if size >= BAR_MIN => self.0.start(d, size, "Extracting"),
            LayerEvent::Start { .. } => {}
            LayerEvent::Progress { done } => self.0.progress(d, done),
            // Only pulls read part of a blob.
            LayerEvent::PartialPull { .. } => {}
            LayerEvent::Extracted { size, entries } => self.0.finish(
                d,
                format!("{id}: extracted {} ({entries} entries)", human_size(size)),
            ),
        }
    }

    fn note(&self, msg: &str) {
        log::info!("{msg}");
    }
}

fn import(store: &Store, a: ImportArgs) -> Result<()> {
    let progress = Progress(LayerBars::new(a.quiet));
    let opts = ImportOptions {
        tag: a.tag,
        platform: a.platform,
    };
    let res = store.import(&a.path, &opts, &progress)?;
    let mut out = String::new();
    for r in &res.images {
        if a.quiet {
            out.push_str(&format!("{}\n", r.id));
            continue;
        }
        if r.tags.is_empty() {
            out.push_str(&format!("Loaded image ID: {}\n", r.id));
        }
        for t in &r.tags {
            out.push_str(&format!("Loaded image: {t}\n"));
        }
    }
    print(&out)
}

// ---------------------------------------------------------------------------------------
// images, inspect

fn images(store: &Store, a: ImagesArgs) -> Result<()> {
    let catalog = store.images()?;
    let recs = catalog.sorted();
    if a.quiet {
        let mut out = String::new();
        for r in recs {
            out.push_str(&if a.no_trunc {
                r.id.to_string()
            } else {
                r.id.short()
            });
            out.push('\n');
        }
        return print(&out);
    }
    // Where images are mounted (`layerfs image mount`): a live mount, and dead ones.
    let mounts = image_mounts::mounted(store)?;
    let mounted_at = |r: &ImageRecord| -> (Option<PathBuf>, Vec<PathBuf>) {
        let ms = mounts.get(&r.id).map(Vec::as_slice).unwrap_or_default();
        (
            ms.iter().find(|m| m.live).map(|m| m.path.clone()),
            ms.iter()
                .filter(|m| !m.live)
                .map(|m| m.path.clone())
                .collect(),
        )
    };
    let any_mounted = recs.iter().any(|r| mounted_at(r).0.is_some());
    // One row per tag; an untagged image shows as <none>.
    let mut rows_data = Vec::new();
    for r in &recs {
        if r.tags.is_empty() {
            rows_data.push((*r, "<none>".to_string(), "<none>".to_string()));
        }
        for t in &r.tags {
            let (n, tag) = split_tag(t);
            rows_data.push((*r, n, tag));
        }
    }
    match a.format {
        Format::Json => {
            let v: Vec<_> = rows_data
                .iter()
                .map(|(r, n, t)| {
                    let (live, dead) = mounted_at(r);
                    let mut o = json!({
                        "Repository": n,
                        "Tag": t,
                        "ID": r.id.to_string(),
                        "Digest": r.manifest_digest.to_string(),
                        "Created": r.created,
                        "CreatedSince": created_ago(r),
                        "Size": r.size,
                        "Platform": r.platform,
                        "Layers": r.layers.len(),
                        "Mounted": live.is_some(),
                        "MountedAt": live,
                    });
                    if let Some(m) = store.lazy_missing(r) {
                        o["LazyBytesMissing"] = json!(m);
                    }
                    if !dead.is_empty() {
                        o["DeadMounts"] = json!(dead);
                    }
                    o
                })
                .collect();
            print(&format!(
                "{}\n",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            ))
        }
        Format::Table => {
            let mut header = vec!["REPOSITORY".to_string(), "TAG".into()];
            if a.digests {
                header.push("DIGEST".into());
            }
            header.extend(["IMAGE ID".into(), "CREATED".into(), "SIZE".into()]);
            // Only while an image is mounted, so the usual table keeps its columns.
            if any_mounted {
                header.push("MOUNTED AT".into());
            }
            let mut rows = vec![header];
            for (r, n, t) in rows_data {
                let mut row = vec![n, t];
                if a.digests {
                    row.push(r.manifest_digest.to_string());
                }
                row.push(if a.no_trunc {
                    r.id.to_string()
                } else {
                    r.id.short()
                });
                row.push(created_ago(r));
                row.push(match store.lazy_missing(r) {
                    // Pulled lazily: how much is still to come.
                    Some(m) if m > 0 => {
                        format!("{} ({} to fetch)", human_size(r.size), human_size(m))
                    }
                    _ => human_size(r.size),
                });
                if any_mounted {
                    row.push(match mounted_at(r).0 {
                        Some(p) => p.display().to_string(),
                        None => "-".into(),
                    });
                }
                rows.push(row);
            }
            print(&table(&rows))
        }
    }
}

fn inspect(store: &Store, names: &[String]) -> Result<()> {
    let mut out = Vec::new();
    for n in names {
        let r = store.image(n)?;
        let config: serde_json::Value = serde_json::from_slice(&store.read_blob(&r.config_digest)?)
            .map_err(|e| Error::corrupt(format!("config {}: {e}", r.config_digest)))?;
        let manifest: serde_json::Value =
            serde_json::from_slice(&store.read_blob(&r.manifest_digest)?)
                .map_err(|e| Error::corrupt(format!("manifest {}: {e}", r.manifest_digest)))?;
        let layers: Vec<_> = r
            .layers
            .iter()
            .map(|l| {
                json!({
                    "DiffID": l.diff_id.to_string(),
                    "Digest": l.blob.to_string(),
                    "MediaType": l.media_type,
                    "CompressedSize": l.blob_size,
                    "Size": l.size,
                    "Path": store.layer_dir(&l.diff_id),
                })
            })
            .collect();
        let repo_digests: Vec<String> = {
            let mut repos: Vec<&str> = r.repositories().collect();
            repos.dedup();
            repos
                .iter()
                .map(|n| format!("{n}@{}", r.manifest_digest))
                .collect()
        };
        out.push(json!({
            "Id": r.id.to_string(),
            "RepoTags": r.tags,
            "RepoDigests": repo_digests,
            "ManifestDigest": r.manifest_digest.to_string(),
            "ManifestMediaType": r.manifest_media_type,
            "ConfigDigest": r.config_digest.to_string(),
            "Created": r.created,
            "Imported": r.imported,
            "Size": r.size,
            "DataDir": store.objects_dir(),
            "Platform": r.platform,
            "Layers": layers,
            "Config": config,
            "Manifest": manifest,
        }));
    }
    print(&format!(
        "{}\n",
        serde_json::to_string_pretty(&out).unwrap_or_default()
    ))
}

// ---------------------------------------------------------------------------------------
// rmi, system

fn rmi(store: &Store, names: &[String], force: bool) -> Result<()> {
    // Asked under the store lock: a container created meanwhile keeps its image, and an
    // image mounted meanwhile is seen.
    let events = store.remove_images_with(names, force, &|| users_or_all(store), &|doomed| {
        image_mounts::release(store, doomed, force)
    })?;
    let mut out = String::new();
    for e in events {
        match e {
            RmiEvent::Untagged(t) => out.push_str(&format!("Untagged: {t}\n")),
            RmiEvent::Deleted(d) => out.push_str(&format!("Deleted: {d}\n")),
            RmiEvent::DeletedLayer(d) => out.push_str(&format!("Deleted layer: {d}\n")),
        }
    }
    print(&out)
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0%".into();
    }
    format!("{}%", (part as f64 * 100.0 / whole as f64).round() as u64)
}

fn df(store: &Store, verbose: bool, format: Format) -> Result<()> {
    let containers = only_containers(store);
    let snapshots = crate::snapshotter::Core::uses(store)?;
    let mut users = containers.clone();
    users.extend(snapshots_as_users(&snapshots));
    // A mounted image (`layerfs image mount`) is in use, as an image with containers is.
    users.extend(
        image_mounts::held(store)
            .unwrap_or_default()
            .into_iter()
            .map(|id| ContainerUse {
                name: format!("image mount {}", id.short()),
                image: Some(id),
                ..Default::default()
            }),
    );
    let mut rep = store.df(&users)?;
    // The per-image and total container counts are of containers only.
    for i in &mut rep.images {
        i.containers = containers
            .iter()
            .filter(|c| c.image == Some(i.record.id))
            .count();
    }
    rep.container_totals = crate::store::Totals {
        total: containers.len(),
        active: containers.len(),
        size: containers.iter().map(|c| c.size).sum(),
        reclaimable: 0,
    };
    let snaps = snapshot_totals(&snapshots);
    if let Format::Json = format {
        let tot = |t: &crate::store::df::Totals| json!({"Total": t.total, "Active": t.active, "Size": t.size, "Reclaimable": t.reclaimable});
        let v = json!({
            "Images": tot(&rep.image_totals),
            "Layers": tot(&rep.layer_totals),
            "Blobs": tot(&rep.blob_totals),
            "FileObjects": tot(&rep.object_totals),
            "FileSharingSaves": rep.files_saved,
            "Containers": tot(&rep.container_totals),
            "Snapshots": tot(&snaps),
            "SumOfImageSizes": rep.sum_of_image_sizes,
            "SharedSize": rep.shared_size,
            "DiskUsage": rep.disk_usage,
            "PerImage": rep.images.iter().map(|i| json!({
                "ID": i.record.id.to_string(),
                "RepoTags": i.record.tags,
                "Size": i.size,
                "SharedSize": i.shared,
                "UniqueSize": i.unique,
                "SharedFilesSize": i.files_shared,
                "Containers": i.containers,
            })).collect::<Vec<_>>(),
        });
        return print(&format!(
            "{}\n",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        ));
    }
    let mut out = String::new();
    if verbose {
        out.push_str("Images space usage:\n\n");
        let mut rows = vec![
            [
                "REPOSITORY",
                "TAG",
                "IMAGE ID",
                "CREATED",
                "SIZE",
                "SHARED SIZE",
                "UNIQUE SIZE",
                "SHARED FILES",
                "CONTAINERS",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for i in &rep.images {
            let names: Vec<(String, String)> = if i.record.tags.is_empty() {
                vec![("<none>".into(), "<none>".into())]
            } else {
                i.record.tags.iter().map(|t| split_tag(t)).collect()
            };
            for (n, t) in names {
                rows.push(vec![
                    n,
                    t,
                    i.record.id.short(),
                    created_ago(&i.record),
                    human_size(i.size),
                    human_size(i.shared),
                    human_size(i.unique),
                    human_size(i.files_shared),
                    i.containers.to_string(),
                ]);
            }
        }
        out.push_str(&table(&rows));
        out.push_str("\nLayers space usage:\n\n");
        let mut rows = vec![
            ["LAYER", "SIZE", "IMAGES", "IN USE"]
                .map(String::from)
                .to_vec(),
        ];
        for l in &rep.layers {
            rows.push(vec![
                format!("sha256:{}", l.diff_id.short()),
                human_size(l.size),
                l.images.to_string(),
                if l.in_use { "yes" } else { "no" }.into(),
            ]);
        }
        out.push_str(&table(&rows));
        out.push('\n');
    }
    let mut rows = vec![
        ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
            .map(String::from)
            .to_vec(),
    ];
    let mut kinds = vec![
        ("Images", &rep.image_totals),
        ("Layers", &rep.layer_totals),
        ("Blobs", &rep.blob_totals),
        ("File objects", &rep.object_totals),
        ("Containers", &rep.container_totals),
    ];
    if snaps.total > 0 {
        kinds.push(("Snapshots", &snaps));
    }
    for (name, t) in kinds {
        rows.push(vec![
            name.into(),
            t.total.to_string(),
            t.active.to_string(),
            human_size(t.size),
            format!(
                "{} ({})",
                human_size(t.reclaimable),
                pct(t.reclaimable, t.size)
            ),
        ]);
    }
    out.push_str(&table(&rows));
    out.push_str(&format!(
        "\nSum of image sizes: {}   Shared between images: {} by layer, {} more by file   Store on disk: {} ({})\n",
        human_size(rep.sum_of_image_sizes),
        human_size(rep.shared_size),
        human_size(rep.files_saved),
        human_size(rep.disk_usage),
        store.root().display()
    ));
    print(&out)
}

fn migrate(store: &Store) -> Result<()> {
    let r = store.migrate(&|d| eprintln!("converting layer {d}"))?;
    let mut out = String::new();
    for d in &r.converted {
        out.push_str(&format!("Converted layer: {d}\n"));
    }
    out.push_str(&format!(
        "{} layer(s) converted ({} files, {} now in the file store, {} of it new), {} already in the file store's form\n",
        r.converted.len(),
        r.files,
        human_size(r.bytes),
        human_size(r.new_object_bytes),
        r.already
    ));
    print(&out)?;
    if r.busy.is_empty() {
        return Ok(());
    }
    Err(Error::in_use(format!(
        "{} layer(s) left as they are because a live mount uses them ({}): unmount and run `layerfs system migrate` again",
        r.busy.len(),
        r.busy
            .iter()
            .map(|d| format!("sha256:{}", d.short()))
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

fn prune(store: &Store, all: bool) -> Result<()> {
    // Mounted images (`layerfs image mount`), live or dead, are kept.
    let r = store.prune_with(all, &|| users_or_all(store), &|| image_mounts::held(store))?;
    let mut out = String::new();
    for d in &r.images {
        out.push_str(&format!("Deleted image: {d}\n"));
    }
    for d in &r.layers {
        out.push_str(&format!("Deleted layer: {d}\n"));
    }
    for d in &r.blobs {
        out.push_str(&format!("Deleted blob: {d}\n"));
    }
    if r.objects > 0 {
        out.push_str(&format!(
            "Deleted {} file object(s) no layer names\n",
            r.objects
        ));
    }
    if r.leftovers > 0 {
        out.push_str(&format!(
            "Removed {} leftover(s) of interrupted commands\n",
            r.leftovers
        ));
    }
    out.push_str(&format!(
        "Total reclaimed space: {}\n",
        human_size(r.reclaimed)
    ));
    print(&out)
}

fn check(store: &Store, repair: bool) -> Result<()> {
    let r = store.check(repair)?;
    let mut out = String::new();
    for (d, why) in &r.damaged_layers {
        out.push_str(&format!("layer {d}: damaged\n"));
        for w in why {
            out.push_str(&format!("  {w}\n"));
        }
        if r.repaired {
            out.push_str(&format!("layer {d}: removed\n"));
        }
    }
    for d in &r.damaged_blobs {
        out.push_str(&format!(
            "blob {d}: damaged (content does not match the digest)\n"
        ));
        if r.repaired {
            out.push_str(&format!("blob {d}: removed\n"));
        }
    }
    for d in &r.damaged_objects {
        out.push_str(&format!(
            "file object {d}: damaged (content does not match its name)\n"
        ));
        if r.repaired {
            out.push_str(&format!("file object {d}: removed\n"));
        }
    }
    for (id, why) in &r.broken_images {
        out.push_str(&format!(
            "image {} needs to be imported again: {}\n",
            id.short(),
            why.join("; ")
        ));
    }
    out.push_str(&format!(
        "checked {} layers, {} blobs and {} file objects: {}\n",
        r.layers_checked,
        r.blobs_checked,
        r.objects_checked,
        if r.is_clean() {
            "all intact"
        } else {
            "problems found"
        }
    ));
    print(&out)?;
    if r.is_clean() || (r.repaired && r.broken_images.is_empty()) {
        Ok(())
    } else if r.repaired {
        Err(Error::corrupt(format!(
            "damaged data removed; {} image(s) must be imported again",
            r.broken_images.len()
        )))
    } else {
        Err(Error::corrupt(format!(
            "{} damaged layer(s), {} damaged blob(s), {} damaged file object(s); run `layerfs system check --repair` to remove them",
            r.damaged_layers.len(),
            r.damaged_blobs.len(),
            r.damaged_objects.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(12_345_678), "12.3MB");
        assert_eq!(human_size(7_050_000), "7.05MB");
        assert_eq!(human_size(123_456_789), "123MB");
    }

    #[test]
    fn ages() {
        assert_eq!(ago(5), "Less than a minute ago");
        assert_eq!(ago(3600), "An hour ago");
        assert_eq!(ago(3 * 86_400), "3 days ago");
    }

    #[test]
    fn aligned_table() {
        let t = table(&[
            vec!["A".into(), "BB".into()],
            vec!["CCC".into(), "D".into()],
        ]);
        assert_eq!(t, "A     BB\nCCC   D\n");
    }
}
