//! Container commands: create, mount, umount, ps, diff, commit, save, export, rm, shell,
//! and image mount/umount (read-only mounts of images, made as container mounts are).
//! Argument definitions and output only; the work is in `crate::container` (and
//! `crate::store` for save).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::cli::Globals;
use crate::cli::store_cmds::{Format, ago, human_size, print, table};
use crate::container::mounts::{self, MountRequest};
use crate::container::{Container, Containers, commit, diff, export, image_mounts, list, shell};
use crate::error::{Error, Result};
use crate::store::recompress::LayerForm;
use crate::store::save::SaveFormat;

#[derive(Debug, Subcommand)]
pub(crate) enum ContainerCommand {
    /// Create a container from an image (its own writable layer over the image's layers); prints its id
    Create {
        image: String,
        /// Name the container (default: a generated name)
        #[arg(long)]
        name: Option<String>,
    },
    /// Mount a container and print the mountpoint (default: inside the store)
    Mount {
        container: String,
        mountpoint: Option<PathBuf>,
        /// More mount options (ro, volatile, threads=N, passthrough=…), as for `overlay -o`
        #[arg(short = 'o', long = "option", value_name = "OPT[,OPT…]")]
        options: Vec<String>,
    },
    /// Unmount containers, named by container or by mountpoint
    Umount {
        /// Detach a busy mount (processes using it keep their files until they let go)
        #[arg(short, long)]
        force: bool,
        #[arg(required = true, value_name = "CONTAINER|MOUNTPOINT")]
        targets: Vec<String>,
    },
    /// List containers (mounted ones; -a for all)
    Ps(PsArgs),
    /// Show a container's changes against its image: A added, C changed, D deleted
    Diff { container: String },
    /// Make a new image from a container's changes: the image's layers plus one new layer
    Commit {
        container: String,
        #[arg(value_name = "NAME[:TAG]")]
        tag: Option<String>,
        /// Comment recorded in the image history
        #[arg(short, long)]
        message: Option<String>,
        /// Author recorded in the image config
        #[arg(short, long)]
        author: Option<String>,
    },
    /// Write images to an archive or OCI layout that skopeo, podman and `layerfs import` read
    Save {
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
        /// Output file (a directory for oci-dir)
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, value_enum, default_value = "oci-archive")]
        format: SaveFormatArg,
        /// Write every layer again in this form (a new manifest digest; OCI formats only):
        /// zstd:chunked keeps the diff-ids and image id, estargz adds entries (new ones)
        #[arg(long, value_name = "FORMAT", value_parser = ["zstd:chunked", "estargz"])]
        compression: Option<String>,
    },
    /// Write a container's merged root filesystem as one tar (stdout unless -o)
    Export {
        container: String,
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Remove containers and their writable layers
    Rm {
        /// Unmount mounted containers first (else they are refused)
        #[arg(short, long)]
        force: bool,
        #[arg(required = true, value_name = "CONTAINER")]
        containers: Vec<String>,
    },
    /// Run a command (default /bin/sh) as root chrooted in a container, mounting it for the time being if needed
    Shell {
        container: String,
        #[arg(last = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// Mount images read-only (no container) and unmount them: image mount, image umount
    Image {
        #[command(subcommand)]
        cmd: ImageCommand,
    },
}

impl ContainerCommand {
    /// Mounting and unmounting need `fusermount3`, which works only outside a user
    /// namespace: these run there even for a store with subordinate ids.
    pub(crate) fn stays_outside_userns(&self) -> bool {
        matches!(
            self,
            ContainerCommand::Mount { .. }
                | ContainerCommand::Umount { .. }
                | ContainerCommand::Shell { .. }
                | ContainerCommand::Image { .. }
        )
    }
}

/// Outside the user namespace a command is about to run in: `rm --force` unmounts its
/// containers here, where `fusermount3` works.
pub(crate) fn before_userns(cmd: &ContainerCommand, g: &Globals) -> Result<()> {
    if let ContainerCommand::Rm {
        force: true,
        containers,
    } = cmd
    {
        let store = g.open_store()?;
        Containers::new(&store).unmount_named(containers)?;
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
    /// Mount an image's layers read-only (no writable layer, no container) and print the mountpoint (default: inside the store)
    Mount {
        image: String,
        mountpoint: Option<PathBuf>,
    },
    /// Unmount images, named by image or by mountpoint
    Umount {
        /// Detach a busy mount (processes using it keep their files until they let go)
        #[arg(short, long)]
        force: bool,
        /// Unmount every mounted image
        #[arg(short, long)]
        all: bool,
        #[arg(required_unless_present = "all", value_name = "IMAGE|MOUNTPOINT")]
        targets: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum SaveFormatArg {
    OciArchive,
    DockerArchive,
    OciDir,
}

#[derive(Debug, Args)]
pub(crate) struct PsArgs {
    /// Show all containers (default: mounted ones)
    #[arg(short, long)]
    pub all: bool,
    /// Filter: ancestor=IMAGE, name=TEXT, id=PREFIX, mounted=true|false (repeatable)
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    pub filters: Vec<String>,
    /// Show sizes: the container's own changes and the virtual size (image + changes)
    #[arg(short, long)]
    pub size: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Print only ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Show full ids
    #[arg(long)]
    pub no_trunc: bool,
}

/// Run a container command; returns the exit code (a shell's is its command's).
pub(crate) fn run(cmd: ContainerCommand, g: &Globals) -> ExitCode {
    let res = (|| {
        let mut store = g.open_store()?;
        store.set_lock_wait_notice(|| {
            eprintln!("layerfs: waiting for another command to release the store lock")
        });
        let cs = Containers::new(&store);
        match cmd {
            ContainerCommand::Create { image, name } => {
                let c = cs.create(&image, name.as_deref())?;
                print(&format!("{}\n", c.id))?;
            }
            ContainerCommand::Mount {
                container,
                mountpoint,
                options,
            } => {
                let c = cs.resolve(&container)?;
                let m = mounts::mount(&cs, &c, &mount_request(mountpoint, options)?)?;
                print(&format!("{}\n", m.path.display()))?;
            }
            ContainerCommand::Umount { force, targets } => umount(&cs, &targets, force)?,
            ContainerCommand::Ps(args) => ps(&cs, args)?,
            ContainerCommand::Diff { container } => {
                let c = cs.resolve(&container)?;
                let mut out = String::new();
                for (p, ch) in diff::changes(&cs, &c)? {
                    out.push_str(&format!(
                        "{} /{}\n",
                        ch.letter(),
                        String::from_utf8_lossy(&p)
                    ));
                }
                print(&out)?;
            }
            ContainerCommand::Commit {
                container,
                tag,
                message,
                author,
            } => {
                let c = cs.resolve(&container)?;
                let image = commit::commit(
                    &cs,
                    &c,
                    &commit::CommitOptions {
                        tag,
                        message,
                        author,
                    },
                )?;
                print(&format!("{}\n", image.id))?;
            }
            ContainerCommand::Save {
                images,
                output,
                format,
                compression,
            } => {
                let f = match format {
                    SaveFormatArg::OciArchive => SaveFormat::OciArchive,
                    SaveFormatArg::DockerArchive => SaveFormat::DockerArchive,
                    SaveFormatArg::OciDir => SaveFormat::OciDir,
                };
                let rewrite = compression.as_deref().map(LayerForm::parse).transpose()?;
                store.save(&images, f, rewrite, &output)?;
            }
            ContainerCommand::Export { container, output } => {
                let c = cs.resolve(&container)?;
                match output {
                    Some(p) if p.as_os_str() != "-" => export::export_to_file(&cs, &c, &p)?,
                    _ => {
                        let out = std::io::stdout();
                        if out.is_terminal() {
                            return Err(Error::invalid_input(
                                "refusing to write a tar to a terminal: use -o FILE or a pipe",
                            ));
                        }
                        // The writer is flushed (errors reported) when the tar ends.
                        export::export(&cs, &c, std::io::BufWriter::new(out.lock()))?;
                    }
                }
            }
            ContainerCommand::Rm { force, containers } => {
                cs.remove(&containers, force)?;
                print(
                    &containers
                        .iter()
                        .map(|c| format!("{c}\n"))
                        .collect::<String>(),
                )?;
            }
            ContainerCommand::Shell { container, cmd } => return shell_cmd(&cs, &container, &cmd),
            ContainerCommand::Image { cmd } => match cmd {
                ImageCommand::Mount { image, mountpoint } => {
                    let m = image_mounts::mount(&store, &image, mountpoint.as_deref(), program()?)?;
                    print(&format!("{}\n", m.path.display()))?;
                }
                ImageCommand::Umount {
                    force,
                    all,
                    targets,
                } => {
                    let done = image_mounts::umount(&store, &targets, all, force)?;
                    // The targets as given; with --all, every mountpoint unmounted.
                    let mut out: String = targets.iter().map(|t| format!("{t}\n")).collect();
                    if all {
                        out = done.iter().map(|p| format!("{}\n", p.display())).collect();
                    }
                    print(&out)?;
                }
            },
        }
        Ok(ExitCode::SUCCESS)
    })();
    match res {
        Ok(code) => code,
        Err(e) => crate::cli::fail(e),
    }
}

fn program() -> Result<PathBuf> {
    std::env::current_exe().map_err(|e| Error::io("finding the layerfs binary", e))
}

fn mount_request(mountpoint: Option<PathBuf>, options: Vec<String>) -> Result<MountRequest> {
    MountRequest::new(mountpoint, options, program()?)
}

fn umount(cs: &Containers<'_>, targets: &[String], force: bool) -> Result<()> {
    mounts::umount(cs, targets, force)?;
    print(&targets.iter().map(|t| format!("{t}\n")).collect::<String>())
}

fn shell_cmd(cs: &Containers<'_>, container: &str, cmd: &[String]) -> Result<ExitCode> {
    let c = cs.resolve(container)?;
    let m = mounts::mount(cs, &c, &mount_request(None, Vec::new())?)?;
    let env = shell::environment(cs.store(), &c.image);
    let res = shell::run(&m.path, cmd, &env);
    if !m.already {
        let _lock = cs.store().lock()?;
        mounts::unmount_all(&c.id, &c.name, true)?;
    }
    match res {
        Ok(st) => {
            use std::os::unix::process::ExitStatusExt;
            let code = match (st.code(), st.signal()) {
                (Some(c), _) => c,
                (None, Some(s)) => 128 + s,
                _ => 1,
            };
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Err(e) => {
            eprintln!("layerfs: {}", e.error);
            Ok(ExitCode::from(e.code))
        }
    }
}

// ---------------------------------------------------------------------------------------
// ps

fn ps(cs: &Containers<'_>, args: PsArgs) -> Result<()> {
    let filter = list::Filter::parse(cs, args.all, &args.filters)?;
    let rows = list::list(cs, &filter, args.size)?;
    let id = |c: &Container| {
        if args.no_trunc {
            c.id.clone()
        } else {
            c.short_id().to_string()
        }
    };
    if args.quiet {
        return print(
            &rows
                .iter()
                .map(|r| format!("{}\n", id(&r.container)))
                .collect::<String>(),
        );
    }
    let now = crate::store::now_secs() as i64;
    match args.format {
        Format::Json => {
            let v: Vec<_> = rows
                .iter()
                .map(|r| {
                    let mut o = json!({
                        "ID": r.container.id,
                        "Name": r.container.name,
                        "Image": r.image,
                        "ImageID": r.container.image.to_string(),
                        "Created": r.container.created,
                        "CreatedSince": ago((now - r.container.created_secs()).max(0)),
                        "Mounted": r.mounted.is_some(),
                        "MountedAt": r.mounted,
                        "Layers": r.container.layers.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                    });
                    if !r.dead.is_empty() {
                        o["DeadMounts"] = json!(r.dead);
                    }
                    if let Some((rw, virt)) = r.sizes {
                        o["SizeRw"] = json!(rw);
                        o["SizeRootFs"] = json!(virt);
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
            let mut header: Vec<String> =
                ["CONTAINER ID", "NAME", "IMAGE", "CREATED", "MOUNTED AT"]
                    .map(String::from)
                    .to_vec();
            if args.size {
                header.push("SIZE".into());
            }
            let mut out = vec![header];
            for r in &rows {
                let mut row = vec![
                    id(&r.container),
                    r.container.name.clone(),
                    r.image.clone(),
                    ago((now - r.container.created_secs()).max(0)),
                    match &r.mounted {
                        Some(p) => p.display().to_string(),
                        None => "-".into(),
                    },
                ];
                if let Some((rw, virt)) = r.sizes {
                    row.push(format!("{} (virtual {})", human_size(rw), human_size(virt)));
                }
                out.push(row);
            }
            print(&table(&out))
        }
    }
}
