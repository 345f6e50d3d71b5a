//! Registry commands: pull, push, login, logout. Argument definitions and output only;
//! the work is in `crate::registry`.

use std::io::{BufRead, IsTerminal, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::cli::Globals;
use crate::cli::progress::LayerBars;
use crate::cli::store_cmds::human_size;
use crate::error::{Error, Result};
use crate::registry::{self, Credentials, ImageRef, PushEvent, PushObserver};
use crate::store::recompress::LayerForm;
use crate::store::{Digest, ImportObserver, LayerEvent, Store};

#[derive(Debug, Subcommand)]
pub(crate) enum RegistryCommand {
    /// Download an image from a registry: layerfs pull [REGISTRY/]NAME[:TAG|@DIGEST]
    Pull(PullArgs),
    /// Upload an image to a registry: layerfs push IMAGE [[REGISTRY/]NAME[:TAG]]
    Push(PushArgs),
    /// Check and save credentials for a registry (default: Docker Hub)
    Login(LoginArgs),
    /// Remove saved credentials for a registry (default: Docker Hub)
    Logout {
        /// host[:port]
        registry: Option<String>,
    },
}

/// How to talk to a registry.
#[derive(Debug, Clone, Args)]
pub(crate) struct NetArgs {
    /// Allow plain HTTP and unverified TLS for this registry (localhost always may)
    #[arg(long)]
    pub insecure: bool,
    /// Seconds to wait for a connection or for data before trying again
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    pub timeout: Duration,
    /// Further attempts after a lost connection or a server error, with backoff
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub retries: u32,
}

fn parse_secs(s: &str) -> Result<Duration> {
    let s = s.strip_suffix('s').unwrap_or(s);
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(Error::invalid_input(format!(
            "\"{s}\" is not a number of seconds (0 < SECS <= 86400)"
        ))),
    }
}

impl NetArgs {
    fn options(&self) -> registry::Options {
        registry::Options {
            insecure: self.insecure,
            timeout: self.timeout,
            retries: self.retries,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct PullArgs {
    /// [REGISTRY/]NAME[:TAG|@sha256:DIGEST]; Docker Hub and :latest by default
    pub reference: String,
    /// Platform to take from a multi-platform image [default: the host's]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Layers downloaded at once
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_concurrent_downloads: usize,
    /// Print only the image reference
    #[arg(short, long)]
    pub quiet: bool,
    /// zstd:chunked layers: record the image with its tree and small files only, so it
    /// can be mounted at once; larger files are fetched when first opened, and a
    /// background pull completes the image (LAYERFS_LAZY_BACKGROUND=0: none)
    #[arg(long)]
    pub lazy: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Debug, Args)]
pub(crate) struct PushArgs {
    /// The image in the store (name, id or digest)
    pub image: String,
    /// Where to push: [REGISTRY/]NAME[:TAG] [default: the image name itself]
    pub reference: Option<String>,
    /// Blobs uploaded at once
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_concurrent_uploads: usize,
    /// Blobs larger than this are uploaded in chunks of this size
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub chunk_size: u64,
    /// Write every layer again in this form (a new manifest digest): zstd:chunked keeps
    /// the diff-ids and image id and lets pullers fetch only the files they lack;
    /// estargz (stargz-snapshotter's lazy pulls) adds entries, so new diff-ids and id
    #[arg(long, value_name = "FORMAT", value_parser = ["zstd:chunked", "estargz"])]
    pub compression: Option<String>,
    /// Print only the pushed reference
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    /// host[:port] [default: Docker Hub]
    pub registry: Option<String>,
    #[arg(short, long)]
    pub username: Option<String>,
    /// The password (visible to other users of the machine: prefer --password-stdin)
    #[arg(short, long)]
    pub password: Option<String>,
    /// Read the password from standard input
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Run a registry command.
pub(crate) fn run(cmd: RegistryCommand, g: &Globals) -> Result<()> {
    match cmd {
        RegistryCommand::Pull(a) => pull(a, g),
        RegistryCommand::Push(a) => push(a, g),
        RegistryCommand::Login(a) => login(a),
        RegistryCommand::Logout { registry } => logout(registry.as_deref()),
    }
}

fn open_store(g: &Globals) -> Result<Store> {
    let mut store = Store::open(&g.store_root())?;
    store.set_lock_wait_notice(|| {
        eprintln!("layerfs: waiting for another command to release the store lock")
    });
    Ok(store)
}

fn out(s: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(s.as_bytes())
        .and_then(|_| o.flush())
        .map_err(|e| Error::io("writing the output", e))
}

// ---------------------------------------------------------------------------------------
// Progress, as docker shows it: a line per layer, bars with bytes and speed on a terminal.

struct Progress(LayerBars);

impl ImportObserver for Progress {
    /// Pull events, by blob digest.
    fn layer(&self, d: &Digest, ev: LayerEvent) {
        let id = d.short();
        match ev {
            LayerEvent::Exists => self.0.line(format!("{id}: Already exists")),
            LayerEvent::Start { size } => self.0.start(d, size, "Downloading"),
            LayerEvent::Progress { done } => self.0.progress(d, done),
            LayerEvent::Extracted { .. } => self.0.finish(d, format!("{id}: Pull complete")),
            LayerEvent::PartialPull {
                fetched,
                of,
                requests,
                from_store,
                files,
                later,
            } => {
                let later = if later > 0 {
                    format!(", {later} fetched when opened")
                } else {
                    String::new()
                };
                self.0.finish(
                    d,
                    format!(
                        "{id}: Pull complete (partial: {} of {} fetched in {requests} \
                         requests, {from_store} of {files} files from the store{later})",
                        human_size(fetched),
                        human_size(of)
                    ),
                )
            }
            LayerEvent::BlobStored => self
                .0
                .finish(d, format!("{id}: Already exists (blob downloaded)")),
        }
    }

    fn note(&self, msg: &str) {
        log::info!("{msg}");
    }
}

impl PushObserver for Progress {
    fn blob(&self, d: &Digest, ev: PushEvent) {
        let id = d.short();
        match ev {
            PushEvent::Exists => self.0.line(format!("{id}: Layer already exists")),
            PushEvent::Mounted { from } => self.0.line(format!("{id}: Mounted from {from}")),
            PushEvent::Start { size } => self.0.start(d, size, "Pushing"),
            PushEvent::Progress { done } => self.0.progress(d, done),
            PushEvent::Pushed => self.0.finish(d, format!("{id}: Pushed")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// pull, push

fn pull(a: PullArgs, g: &Globals) -> Result<()> {
    let r = ImageRef::parse(&a.reference)?;
    let store = open_store(g)?;
    let progress = Progress(LayerBars::new(a.quiet));
    let what = match (&r.tag, &r.digest) {
        (_, Some(d)) => d.to_string(),
        (Some(t), None) => t.clone(),
        (None, None) => "latest".into(),
    };
    progress
        .0
        .line(format!("{what}: Pulling from {}", r.repository));
    let opts = registry::PullOptions {
        platform: a.platform,
        parallel: a.max_concurrent_downloads.max(1),
        lazy: a.lazy,
        client: a.net.options(),
    };
    let res = registry::pull(&store, &r, &opts, &progress)?;
    if a.lazy && std::env::var_os("LAYERFS_LAZY_BACKGROUND").is_none_or(|v| v != "0") {
        complete_in_background(&store, &a.reference, opts.client.insecure);
    }
    let shown = match r.local_tag() {
        Some(t) => t,
        None => format!("{}@{}", r.familiar_name(), res.resolved_digest),
    };
    if a.quiet {
        return out(&format!("{r}\n"));
    }
    let status = if res.ingested.was_present {
        format!("Status: Image is up to date for {shown}")
    } else {
        format!("Status: Downloaded newer image for {shown}")
    };
    out(&format!("Digest: {}\n{status}\n{r}\n", res.resolved_digest))
}

/// Start `layerfs pull REF` detached, to fetch what a lazy pull left (its output goes
/// nowhere: `layerfs images` shows how far it got, and a failed one is redone by any
/// later `pull`).
fn complete_in_background(store: &Store, reference: &str, insecure: bool) {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut c = Command::new(exe);
    c.arg("pull").arg("-q").arg("--root").arg(store.root());
    if insecure {
        c.arg("--insecure");
    }
    let spawned = c
        .arg(reference)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        log::warn!("cannot start the background pull of {reference}: {e}");
    }
}

fn push(a: PushArgs, g: &Globals) -> Result<()> {
    let target = a.reference.as_deref().unwrap_or(&a.image);
    let r = ImageRef::parse(target)?;
    let store = open_store(g)?;
    let progress = Progress(LayerBars::new(a.quiet));
    progress.0.line(format!(
        "The push refers to repository [{}/{}]",
        r.registry, r.repository
    ));
    let opts = registry::PushOptions {
        parallel: a.max_concurrent_uploads.max(1),
        chunk_size: a.chunk_size.max(1),
        rewrite: a.compression.as_deref().map(LayerForm::parse).transpose()?,
        client: a.net.options(),
    };
    let res = registry::push(&store, &a.image, &r, &opts, &progress)?;
    if a.quiet {
        return out(&format!("{r}\n"));
    }
    out(&format!(
        "{}: digest: {} size: {}\n",
        r.tag.as_deref().unwrap_or("latest"),
        res.digest,
        res.size
    ))
}

// ---------------------------------------------------------------------------------------
// login, logout

fn prompt(label: &str) -> Result<String> {
    let mut err = std::io::stderr();
    let _ = write!(err, "{label}");
    let _ = err.flush();
    let mut s = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut s)
        .map_err(|e| Error::io("reading standard input", e))?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

fn login(a: LoginArgs) -> Result<()> {
    let registry = registry::registry_host(a.registry.as_deref())?;
    let interactive = std::io::stdin().is_terminal();
    if a.password.is_some() && a.password_stdin {
        return Err(Error::invalid_input(
            "--password and --password-stdin cannot be used together",
        ));
    }
    let username = match a.username {
        Some(u) => u,
        None if interactive && !a.password_stdin => prompt("Username: ")?,
        None => {
            return Err(Error::invalid_input(
                "login needs --username when standard input is not a terminal",
            ));
        }
    };
    if username.is_empty() {
        return Err(Error::invalid_input("login: the user name is empty"));
    }
    let password = if let Some(p) = a.password {
        eprintln!(
            "WARNING! Using --password via the command line is insecure. Use --password-stdin."
        );
        p
    } else if a.password_stdin {
        let mut s = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut s)
            .map_err(|e| Error::io("reading the password from standard input", e))?;
        s.trim_end_matches(['\n', '\r']).to_string()
    } else if interactive {
        let stdin = std::io::stdin();
        let was = crate::sys::set_echo(stdin.as_fd(), false).unwrap_or(true);
        let p = prompt("Password: ");
        let _ = crate::sys::set_echo(stdin.as_fd(), was);
        eprintln!();
        p?
    } else {
        return Err(Error::invalid_input(
            "login needs --password-stdin (or --password) when standard input is not a terminal",
        ));
    };
    if password.is_empty() {
        return Err(Error::invalid_input("login: the password is empty"));
    }
    let file = registry::login(
        &registry,
        Credentials { username, password },
        a.net.options(),
    )?;
    out(&format!(
        "Login Succeeded (credentials for {registry} saved in {})\n",
        file.display()
    ))
}

fn logout(registry: Option<&str>) -> Result<()> {
    let registry = registry::registry_host(registry)?;
    let files = registry::logout(&registry)?;
    if files.is_empty() {
        return out(&format!("Not logged in to {registry}\n"));
    }
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    out(&format!(
        "Removed login credentials for {registry} (from {})\n",
        names.join(", ")
    ))
}
