//! The io_uring transport (`-o uring`): layerfs mounts the connection itself (root, or
//! root of a user namespace) or takes the one `fusermount3` mounted (an ordinary user);
//! only root can turn `enable_uring` on, but the kernel checks no capability for the
//! ring. It answers INIT asking for `FUSE_OVER_IO_URING` and serves requests from
//! per-CPU ring queues — a request is answered by a thread on the caller's own CPU, with
//! no wake-up of another CPU on either side (on a 2-vCPU guest a first lookup costs
//! 5.8 µs instead of 19–24 µs over `/dev/fuse`, see experiments/fuse-uring).
//!
//! The kernel's rules (fs/fuse/dev_uring.c): one queue per possible CPU, and no request
//! is sent until every queue has an entry; registration only after the INIT answer;
//! FORGET and INTERRUPT still come through `read(2)` on `/dev/fuse`, so one reader thread
//! stays. If the kernel did not offer the ring, every request comes that way, and the
//! reader threads serve them all.

use std::ffi::OsStr;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, mpsc};

use super::dispatch::{Answer, Dispatcher};
use super::idle::{self, Scheduling};
use super::notify::{FuseNotifier, Notify};
use super::request::{FuseOptions, MountPlan, MountRequest};
use super::wire::{self, Args, InHeader};
use crate::error::{Error, Result};
use crate::overlay::fs::OverlayFs;
use crate::sys::fuse_dev::{self, FuseRing, SwitchHold, UringSwitch};
use crate::sys::{self, sched};

/// Largest WRITE the kernel sends (and READ it asks for): as the fuser session.
const MAX_WRITE: u32 = 1 << 20;
/// `/dev/fuse` read buffer: a WRITE's data plus its headers.
const DEV_BUF: usize = MAX_WRITE as usize + 4096;
/// Ring threads per online CPU: a slow request (an fsync, a big copy-up) holds one
/// entry; the other takes the next request from that CPU.
const THREADS_PER_CPU: usize = 2;

/// Notifications written to `/dev/fuse` (they do not go through the ring).
#[derive(Clone)]
pub struct DevNotifier(Arc<OwnedFd>);

impl DevNotifier {
    fn send(&self, code: i32, body: &[&[u8]]) -> io::Result<()> {
        let len: usize = wire::OUT_HEADER_LEN + body.iter().map(|b| b.len()).sum::<usize>();
        let mut h = Vec::with_capacity(wire::OUT_HEADER_LEN);
        h.extend_from_slice(&(len as u32).to_ne_bytes());
        h.extend_from_slice(&code.to_ne_bytes());
        h.extend_from_slice(&0u64.to_ne_bytes());
        let mut iov = vec![IoSlice::new(&h)];
        iov.extend(body.iter().map(|b| IoSlice::new(b)));
        rustix::io::writev(self.0.as_fd(), &iov)?;
        Ok(())
    }
}

impl Notify for DevNotifier {
    fn inval_inode(&self, ino: u64, offset: i64, len: i64) -> io::Result<()> {
        let mut b = Vec::with_capacity(24);
        b.extend_from_slice(&ino.to_ne_bytes());
        b.extend_from_slice(&offset.to_ne_bytes());
        b.extend_from_slice(&len.to_ne_bytes());
        self.send(wire::NOTIFY_INVAL_INODE, &[&b])
    }

    fn inval_entry(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        let mut b = Vec::with_capacity(16);
        b.extend_from_slice(&parent.to_ne_bytes());
        b.extend_from_slice(&(name.len() as u32).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        self.send(wire::NOTIFY_INVAL_ENTRY, &[&b, name.as_bytes(), b"\0"])
    }

    fn store(&self, ino: u64, data: &[u8]) -> io::Result<()> {
        let mut b = Vec::with_capacity(24);
        b.extend_from_slice(&ino.to_ne_bytes());
        b.extend_from_slice(&0u64.to_ne_bytes());
        b.extend_from_slice(&(data.len() as u32).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        self.send(wire::NOTIFY_STORE, &[&b, data])
    }
}

/// How a ring session gets its connection.
pub enum Connection {
    /// Root: open `/dev/fuse` and mount it here, with `enable_uring` on until INIT is
    /// answered.
    Own(UringSwitch),
    /// Mounted already (`enable_uring` left on by root): by `fusermount3` for an ordinary
    /// user, or by root of a user namespace (`own_mount`); `unmounter`: the process
    /// outside our user namespace that unmounts it.
    Mounted {
        dev: OwnedFd,
        unmounter: Option<u32>,
        /// A shared turn at the switch, taken before `enable_uring` was read and the
        /// connection mounted; it goes once INIT is answered.
        turn: SwitchHold,
    },
}

impl Connection {
    /// The process outside our user namespace that unmounts, if any.
    pub fn unmounter(&self) -> Option<u32> {
        match self {
            Connection::Mounted { unmounter, .. } => *unmounter,
            Connection::Own(_) => None,
        }
    }
}

/// Whether a process that cannot set `enable_uring` finds it on (root set it) and
/// io_uring usable: then an ordinary user's mount can have the ring too.
pub fn left_on() -> bool {
    fuse_dev::enable_uring() == Some(true) && fuse_dev::io_uring_usable()
}

/// The `enable_uring` switch turned on for a mount's start, if this kernel has FUSE over
/// io_uring, io_uring works for this process, and the switch can be set (`/sys` may be
/// read-only in a container); `None`: serve `/dev/fuse`.
pub fn switch_on() -> Option<UringSwitch> {
    if fuse_dev::enable_uring().is_none() || !fuse_dev::io_uring_usable() {
        return None;
    }
    match UringSwitch::on() {
        Ok(s) => Some(s),
        Err(e) => {
            log::info!("FUSE over io_uring cannot be switched on ({e}): serving /dev/fuse");
            None
        }
    }
}

fn mount_flags(a: &MountRequest, writable: bool) -> rustix::mount::MountFlags {
    use rustix::mount::MountFlags as F;
    let mut f = F::empty();
    if !writable {
        f |= F::RDONLY;
    }
    if a.nodev {
        f |= F::NODEV;
    }
    if a.nosuid {
        f |= F::NOSUID;
    }
    if a.noexec {
        f |= F::NOEXEC;
    }
    f
}

/// The INIT answer: the flags the fuser session asks for, and the ring when offered.
/// Returns (answer, ring granted, passthrough granted).
fn init_answer(arg: &[u8], opts: &FuseOptions) -> Option<(Vec<u8>, bool, bool)> {
    let mut a = Args::new(arg);
    let (_major, _minor, readahead, flags) = (a.u32()?, a.u32()?, a.u32()?, a.u32()?);
    let flags2 = a.u32().unwrap_or(0);
    let mut offered = flags as u64;
    if offered & wire::INIT_EXT != 0 {
        offered |= (flags2 as u64) << 32;
    }
    let mut want = wire::ASYNC_READ
        | wire::BIG_WRITES
        | wire::MAX_PAGES
        | wire::INIT_EXT
        | wire::PARALLEL_DIROPS
        | wire::CACHE_SYMLINKS
        | wire::EXPORT_SUPPORT
        | wire::ASYNC_DIO
        | wire::ATOMIC_O_TRUNC
        | wire::OVER_IO_URING;
    if opts.passthrough != super::request::PassthroughMode::Off {
        want |= wire::PASSTHROUGH;
    } else if opts.writeback {
        want |= wire::WRITEBACK_CACHE;
    }
    if opts.readdirplus {
        want |= wire::DO_READDIRPLUS | wire::READDIRPLUS_AUTO;
    }
    want &= offered | wire::INIT_EXT;
    let passthrough = want & wire::PASSTHROUGH != 0;
    let mut out = Vec::with_capacity(64);
    wire::init_out(
        &mut out,
        want,
        readahead.min(MAX_WRITE),
        MAX_WRITE,
        u32::from(passthrough),
    );
    Some((out, want & wire::OVER_IO_URING != 0, passthrough))
}

fn reply(dev: &OwnedFd, unique: u64, error: i32, body: &[u8]) -> io::Result<()> {
    let mut h = [0u8; wire::OUT_HEADER_LEN];
    h[0..4].copy_from_slice(&((wire::OUT_HEADER_LEN + body.len()) as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&error.to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    rustix::io::writev(dev.as_fd(), &[IoSlice::new(&h), IoSlice::new(body)])?;
    Ok(())
}

/// Read one request from `/dev/fuse`; `None` once the connection is gone.
fn read_request(dev: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match rustix::io::read(dev.as_fd(), &mut *buf) {
            Ok(n) => return Ok(Some(n)),
            // ENOENT: the request was interrupted before we read it.
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN | rustix::io::Errno::NOENT) => {}
            Err(rustix::io::Errno::NODEV) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Split a `/dev/fuse` request into header, fixed argument and payload.
fn split(req: &[u8]) -> Option<(InHeader, &[u8], &[u8])> {
    let h = InHeader::parse(req)?;
    let end = (h.len as usize).min(req.len());
    let body = req.get(wire::IN_HEADER_LEN..end)?;
    let k = wire::op_arg_len(h.opcode).min(body.len());
    Some((h, &body[..k], &body[k..]))
}

/// How long the reader of a ring connection lets FORGETs gather after serving some.
const FORGET_GATHER: std::time::Duration = std::time::Duration::from_millis(1);

/// Serve requests read from `/dev/fuse` until the connection ends. `beside_ring`: the
/// ring serves the requests, this thread only what the kernel keeps on `/dev/fuse`
/// (FORGET, INTERRUPT). A FORGET needs no answer and nobody waits for it, but each one
/// queued wakes a waiting reader: `rm -rf` of 4,000 names woke it 4,400 times (35 ms of
/// CPU taken from the remover and the ring threads). So this reader waits in
/// `SCHED_IDLE`, and after serving FORGETs sleeps a millisecond: the next read gets
/// everything queued meanwhile as one BATCH_FORGET, and a sleeping reader costs the
/// kernel no wake-up.
fn serve_dev(d: &Dispatcher, dev: &OwnedFd, beside_ring: bool) -> io::Result<()> {
    // Starved FORGETs cost nobody anything; a thread that could not come back never goes.
    let mut waits_idle = beside_ring && idle::reversible() && idle::set(true);
    let mut buf = sys::ZeroedBuf::new(DEV_BUF)?;
    let mut out = Vec::new();
    while let Some(n) = read_request(dev, &mut buf)? {
        let Some((h, arg, payload)) = split(&buf[..n]) else {
            continue;
        };
        let forget = matches!(h.opcode, wire::FORGET | wire::BATCH_FORGET);
        if beside_ring && forget {
            d.handle(&h, arg, payload, &mut out);
            std::thread::sleep(FORGET_GATHER);
            continue;
        }
        if waits_idle {
            // Anything else here (an INTERRUPT; every request if the kernel turned the
            // ring off after all) has a caller waiting: from now on in normal scheduling.
            idle::set(false);
            waits_idle = false;
        }
        // An `Answer::Open` keeps its backing file registered until this reply is out.
        let answer = d.handle(&h, arg, payload, &mut out);
        let r = match &answer {
            Answer::None => Ok(()),
            Answer::Ok | Answer::Open(_) => reply(dev, h.unique, 0, &out),
            Answer::Err(e) => reply(dev, h.unique, -e, &[]),
        };
        drop(answer);
        if let Err(e) = r {
            // ENOENT: the caller was interrupted and no longer waits.
            if e.raw_os_error() != Some(libc::ENOENT) {
                log::debug!("answer to request {}: {e}", h.unique);
            }
        }
    }
    Ok(())
}

/// Requests that may take long — copy data (a copy-up, a write, an fsync), read it, or
/// build a listing (thousands of names): served in `SCHED_OTHER` by a thread that waits
/// in `SCHED_IDLE`, so that other work on the CPU cannot starve them. The rest —
/// lookups, attributes, read-only opens, releases — are answered within microseconds
/// and stay in `SCHED_IDLE` (see `idle`).
fn may_take_long(opcode: u32, arg: &[u8]) -> bool {
    match opcode {
        wire::OPEN => {
            let flags = Args::new(arg).u32().unwrap_or(0) as i32;
            flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
        }
        wire::SETATTR
        | wire::SETXATTR
        | wire::REMOVEXATTR
        | wire::LINK
        | wire::RENAME
        | wire::RENAME2
        | wire::READ
        | wire::READDIR
        | wire::READDIRPLUS
        | wire::WRITE
        | wire::FSYNC
        | wire::FSYNCDIR
        | wire::CREATE
        | wire::FALLOCATE
        | wire::COPY_FILE_RANGE => true,
        _ => false,
    }
}

/// Serve the ring entries of `queues` from the calling thread until the connection ends.
/// A `gate` says when to register them (`false`: not at all); `registered` hears once
/// they are registered (or why not).
fn serve_ring(
    d: &Dispatcher,
    dev: &OwnedFd,
    queues: &[u16],
    gate: Option<mpsc::Receiver<bool>>,
    registered: mpsc::Sender<io::Result<()>>,
) -> io::Result<()> {
    if let Some(gate) = gate
        && gate.recv() != Ok(true)
    {
        // The session falls back to /dev/fuse before this queue was to be registered.
        return Ok(());
    }
    let payload = (MAX_WRITE as usize).max(8192);
    // Before the session hears of the registration: it is usable from then on.
    let mut scheduling = Scheduling::for_this_thread();
    let mut ring = match FuseRing::register(dev.as_fd(), queues, payload) {
        Ok(r) => {
            log::debug!("ring entries of queues {queues:?} registered");
            let _ = registered.send(Ok(()));
            r
        }
        Err(e) => {
            log::debug!("ring entries of queues {queues:?} refused: {e}");
            // The session falls back to /dev/fuse; nothing for this thread to do.
            let _ = registered.send(Err(e));
            return Ok(());
        }
    };
    let mut out = Vec::new();
    while let Some(i) = ring.next_request()? {
        let req = ring.request(i);
        let Some(h) = InHeader::parse(req.header) else {
            ring.commit(i, 0, -libc::EIO, &[])?;
            continue;
        };
        let k = wire::op_arg_len(h.opcode).min(req.op.len());
        scheduling.request();
        if h.opcode == wire::RELEASE && scheduling.idle() {
            // Nobody waits for a RELEASE (the kernel sends it in the background after a
            // close), but the request that follows it usually has a caller waiting: an
            // OPEN of the next file, served by the CPU's other ring thread. Let that one
            // go first (measured in `tar c`: OPEN answered in 7 µs instead of 8–9). Only
            // in SCHED_IDLE, where nothing else wants the CPU (or the thread soon leaves
            // it): a yield lets every other runnable task go first, and beside CPU-bound
            // work each one cost the RELEASE about a slice (27 ms in SCHED_IDLE).
            std::thread::yield_now();
        }
        let heavy = may_take_long(h.opcode, &req.op[..k]);
        if heavy {
            scheduling.long_request();
        }
        let answer = d.handle(&h, &req.op[..k], req.payload, &mut out);
        if heavy {
            scheduling.long_request_done();
        }
        let (err, body) = match &answer {
            Answer::Ok | Answer::Open(_) => (0, &out[..]),
            Answer::Err(e) => (-e, &[][..]),
            // Only FORGET and INTERRUPT have no answer, and they never come this way.
            Answer::None => (-libc::ENOSYS, &[][..]),
        };
        ring.commit(i, h.unique, err, body)?;
        if let Answer::Open(backing) = answer {
            // The commit goes to the kernel with the next submission. The handle's entry
            // in the passthrough table holds the backing file until its RELEASE, which
            // cannot come before the kernel has read this answer; only where this is the
            // last hold must the commit go out before the backing file does.
            if Arc::strong_count(&backing) == 1 {
                ring.submit()?;
            }
            drop(backing);
        }
    }
    Ok(())
}

/// A connection mounted, with INIT answered.
struct Started {
    dev: Arc<OwnedFd>,
    d: Arc<Dispatcher>,
    /// Whether the kernel granted the ring.
    ring: bool,
    /// The process outside our user namespace that unmounts (see `Connection`).
    unmounter: Option<u32>,
}

/// Mount (or take the mounted connection) and answer INIT. A switch of our own
/// (`enable_uring` on) goes once INIT is answered.
fn start(
    plan: &MountPlan,
    a: &MountRequest,
    fs: &Arc<OverlayFs>,
    kernel_checks: bool,
    conn: Connection,
) -> Result<Started> {
    let failed = |what: &str, e: io::Error| {
        Error::new(format!(
            "cannot mount {} over io_uring: {what}: {}",
            plan.mountpoint.display(),
            crate::error::describe(&e)
        ))
    };
    let (dev, switch, turn, unmounter) = match conn {
        Connection::Own(switch) => {
            let dev = own_mount(plan, a, fs.is_writable(), kernel_checks)
                .map_err(|(w, e)| failed(w, e))?;
            (dev, Some(switch), None, None)
        }
        Connection::Mounted {
            dev,
            unmounter,
            turn,
        } => (dev, None, Some(turn), unmounter),
    };
    let dev = Arc::new(dev);
    // Mounted: a failure from here on must not leave the mount behind.
    let init = || -> Result<(Arc<Dispatcher>, bool)> {
        let d = Arc::new(Dispatcher::new(fs.clone(), a.fuse_options(), dev.clone()));
        let mut buf = sys::ZeroedBuf::new(DEV_BUF).map_err(|e| failed("reading INIT", e))?;
        let n = read_request(&dev, &mut buf)
            .map_err(|e| failed("reading INIT", e))?
            .ok_or_else(|| Error::new("cannot mount over io_uring: the kernel sent no INIT"))?;
        let Some((h, arg, _)) = split(&buf[..n]).filter(|(h, _, _)| h.opcode == wire::INIT) else {
            return Err(Error::new(
                "cannot mount over io_uring: the kernel sent no INIT",
            ));
        };
        let Some((answer, ring, passthrough)) = init_answer(arg, d.options()) else {
            let _ = reply(&dev, h.unique, -libc::EINVAL, &[]);
            return Err(Error::new("cannot mount over io_uring: a malformed INIT"));
        };
        if passthrough {
            d.enable_passthrough();
        }
        reply(&dev, h.unique, 0, &answer).map_err(|e| failed("answering INIT", e))?;
        // The kernel granted the ring if the parameter was on as it took the answer. It
        // was when read before the mount (another's) or set (ours), and within the turn
        // only someone other than layerfs can have switched it since: if it is off now,
        // that happened, perhaps before the answer.
        let granted = fuse_dev::enable_uring() == Some(true);
        if ring && !granted {
            // Withdrawn, in case it was granted after all: requests go to /dev/fuse.
            fuse_dev::refuse_ring(dev.as_fd());
        }
        let ring = ring && granted;
        drop(switch);
        drop(turn);
        let n = FuseNotifier::new(DevNotifier(dev.clone()))
            .map_err(|e| Error::new(format!("cannot start the notification thread: {e}")))?;
        fs.set_kernel_cache(Box::new(n));
        log::info!(
            "serving {} over {}{}",
            plan.mountpoint.display(),
            if ring { "io_uring" } else { "/dev/fuse" },
            if passthrough {
                ", FUSE passthrough enabled"
            } else {
                ""
            }
        );
        Ok((d, ring))
    };
    match init() {
        Ok((d, ring)) => Ok(Started {
            dev,
            d,
            ring,
            unmounter,
        }),
        Err(e) => {
            unmount(&plan.mountpoint, unmounter);
            Err(e)
        }
    }
}

/// Open `/dev/fuse` and mount it at the plan's mount point (root, or root of a user
/// namespace that owns its mount namespace).
pub fn own_mount(
    plan: &MountPlan,
    a: &MountRequest,
    writable: bool,
    kernel_checks: bool,
) -> std::result::Result<OwnedFd, (&'static str, io::Error)> {
    let dev = fuse_dev::open_fuse_dev().map_err(|e| ("/dev/fuse", e))?;
    let mut options = vec![
        "rootmode=40000".to_string(),
        format!("user_id={}", crate::sys::real_uid()),
        format!("group_id={}", rustix::process::getgid().as_raw()),
        "allow_other".to_string(),
    ];
    if kernel_checks {
        options.push("default_permissions".into());
    }
    let source = a.fsname.clone().unwrap_or_else(|| "layerfs".into());
    fuse_dev::mount_fuse(
        dev.as_fd(),
        &plan.mountpoint,
        &source,
        "layerfs",
        mount_flags(a, writable),
        &options.join(","),
    )
    .map_err(|e| ("mount", e))?;
    Ok(dev)
}

/// Unmount after a failure: here, or by the process outside our user namespace.
fn unmount(mnt: &Path, unmounter: Option<u32>) {
    let r = match unmounter {
        Some(pid) => crate::sys::terminate_parent(pid).map_err(|e| e.to_string()),
        None => crate::sys::umount_detach(mnt).map_err(|e| e.to_string()),
    };
    if let Err(e) = r {
        log::warn!("cannot unmount {}: {e}", mnt.display());
    }
}

/// Mount `plan` over a connection of our own or take one mounted already, answer INIT,
/// and serve it (over the ring when the kernel grants it). Returns once the filesystem is
/// unmounted.
pub fn serve(
    plan: &MountPlan,
    a: &MountRequest,
    fs: Arc<OverlayFs>,
    kernel_checks: bool,
    conn: Connection,
    ready: impl FnOnce(std::result::Result<(), &Error>),
) -> Result<()> {
    let Started {
        dev,
        d,
        ring,
        unmounter,
    } = match start(plan, a, &fs, kernel_checks, conn) {
        Ok(s) => s,
        Err(e) => return super::session::refuse(ready, e),
    };
    let online = fuse_dev::online_cpus();
    let mut threads = Vec::new();
    let (registered, registrations) = mpsc::channel();
    let spawn = |name: String, f: Box<dyn FnOnce() -> io::Result<()> + Send>| {
        std::thread::Builder::new().name(name).spawn(f)
    };
    // /dev/fuse readers: FORGET and INTERRUPT with the ring, everything without it (as
    // many as `threads=` asks, as for a mount served by fuser).
    let dev_threads = a.threads.unwrap_or_else(|| online.len().clamp(2, 16));
    let readers = if ring { 1 } else { dev_threads };
    for i in 0..readers {
        let (d, dev) = (d.clone(), dev.clone());
        threads.push(spawn(
            format!("fuse-dev-{i}"),
            Box::new(move || serve_dev(&d, &dev, ring)),
        ));
    }
    // The kernel sends requests to the ring once every queue has had an entry, for good;
    // a refused registration withdraws the grant, and from then on the kernel refuses
    // each answer while `enable_uring` is off (the caller then waits for ever). So the
    // ring is made whole only when the rest is in place: every thread registers at once
    // except those of the last CPU's queue, which go one after another once all the
    // others have.
    let mut gates = Vec::new();
    let mut spawned_first = 0;
    if ring {
        let offline: Vec<u16> = fuse_dev::possible_cpus()
            .into_iter()
            .filter(|c| !online.contains(c))
            .map(|c| c as u16)
            .collect();
        for (n, &cpu) in online.iter().enumerate() {
            let last = n + 1 == online.len();
            for t in 0..THREADS_PER_CPU {
                let mut queues = vec![cpu as u16];
                // The queues of CPUs that are offline now still need an entry each.
                if n == 0 && t == 0 {
                    queues.extend(&offline);
                }
                let gate = last.then(|| {
                    let (go, gate) = mpsc::channel();
                    gates.push(go);
                    gate
                });
                let (d, dev, registered) = (d.clone(), dev.clone(), registered.clone());
                let t = spawn(
                    format!("fuse-ring-{cpu}-{t}"),
                    Box::new(move || {
                        if let Err(e) = sched::pin_thread_to(cpu) {
                            log::debug!("pinning to CPU {cpu}: {e}");
                        }
                        serve_ring(&d, &dev, &queues, gate, registered)
                    }),
                );
                if !last && t.is_ok() {
                    spawned_first += 1;
                }
                threads.push(t);
            }
        }
    }
    drop(registered);
    if threads.iter().any(|t| t.is_err()) {
        // A queue or the reader has no thread: end the connection rather than hang.
        unmount(&plan.mountpoint, unmounter);
    }
    let wait = |n: usize| -> Option<io::Error> {
        let mut refused = None;
        for _ in 0..n {
            match registrations.recv_timeout(std::time::Duration::from_secs(10)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    refused.get_or_insert(e);
                }
                Err(_) => {
                    refused.get_or_insert(io::Error::other(
                        "a ring thread did not register its entries",
                    ));
                    break;
                }
            }
        }
        refused
    };
    let mut refused = if ring { wait(spawned_first) } else { None };
    let mut whole = false;
    for go in gates {
        if refused.is_some() || go.send(true).is_err() {
            // The last queue stays empty: the kernel never sends a request to the ring.
            continue;
        }
        match wait(1) {
            None => whole = true,
            // The ring is whole already: its requests are answered by the threads that
            // registered (the kernel refuses a registration only for want of memory
            // once the grant was checked).
            Some(e) if whole => log::warn!(
                "{}: a ring thread's registration was refused ({e}); the others serve its queue",
                plan.mountpoint.display()
            ),
            Some(e) => refused = Some(e),
        }
    }
    if let Some(e) = refused {
        match e.raw_os_error() {
            // Root's layerfs mounts turn `enable_uring` on for their INIT only: it was off
            // when this connection's INIT was answered (outside a turn at the switch).
            Some(libc::EOPNOTSUPP) => log::info!(
                "{}: FUSE over io_uring was switched off while the mount started: requests come through /dev/fuse",
                plan.mountpoint.display()
            ),
            Some(libc::ENOTCONN | libc::ECONNABORTED | libc::ENODEV) => {}
            _ => log::warn!(
                "{}: io_uring registration refused ({e}): requests come through /dev/fuse",
                plan.mountpoint.display()
            ),
        }
        // Some queue has no entry. A refused registration withdrew the grant; one that
        // never came is made to: requests that wait for the ring go through /dev/fuse,
        // served as on a mount without the ring.
        fuse_dev::refuse_ring(dev.as_fd());
        for i in readers..readers + dev_threads {
            let (d, dev) = (d.clone(), dev.clone());
            threads.push(spawn(
                format!("fuse-dev-{i}"),
                Box::new(move || serve_dev(&d, &dev, false)),
            ));
        }
    }
    ready(Ok(()));
    super::session::started();
    let mut first_error = None;
    for t in threads {
        match t {
            Ok(h) => match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    log::warn!("FUSE thread: {e}");
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(io::Error::other("a FUSE thread panicked"));
                }
            },
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    fs.finish();
    match first_error {
        Some(e) => Err(Error::new(format!("session ended with error: {e}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init_arg(flags: u64) -> Vec<u8> {
        let mut a = Vec::new();
        for v in [7u32, 42, 128 << 10, flags as u32, (flags >> 32) as u32] {
            a.extend_from_slice(&v.to_ne_bytes());
        }
        a.resize(64, 0);
        a
    }

    #[test]
    fn init_asks_for_the_ring_and_passthrough_only_when_offered() {
        let opts = FuseOptions {
            passthrough: super::super::request::PassthroughMode::All,
            ..FuseOptions::default()
        };
        let all = wire::INIT_EXT | wire::OVER_IO_URING | wire::PASSTHROUGH | wire::ASYNC_READ;
        let (out, ring, pt) = init_answer(&init_arg(all), &opts).unwrap();
        assert_eq!(out.len(), 64);
        assert!(ring && pt);
        let flags2 = u32::from_ne_bytes(out[32..36].try_into().unwrap()) as u64;
        assert_ne!(flags2 << 32 & wire::OVER_IO_URING, 0);
        let (_, ring, pt) =
            init_answer(&init_arg(wire::INIT_EXT | wire::ASYNC_READ), &opts).unwrap();
        assert!(!ring && !pt, "nothing the kernel did not offer");
        assert!(init_answer(&[0; 8], &opts).is_none(), "a short INIT");
    }

    #[test]
    fn only_requests_that_may_take_long_leave_the_idle_policy() {
        let open = |flags: i32| may_take_long(wire::OPEN, &(flags as u32).to_ne_bytes());
        assert!(!open(libc::O_RDONLY));
        assert!(open(libc::O_WRONLY));
        assert!(open(libc::O_RDONLY | libc::O_TRUNC));
        assert!(!may_take_long(wire::LOOKUP, &[]));
        assert!(!may_take_long(wire::GETATTR, &[0; 16]));
        assert!(may_take_long(wire::READDIRPLUS, &[0; 40]));
        assert!(may_take_long(wire::WRITE, &[0; 40]));
    }

    #[test]
    fn a_dev_fuse_request_splits_at_its_fixed_argument() {
        let mut r = Vec::new();
        for v in [40u32 + 8 + 2, wire::MKDIR] {
            r.extend_from_slice(&v.to_ne_bytes());
        }
        r.resize(40, 0);
        r.extend_from_slice(&0o755u32.to_ne_bytes());
        r.extend_from_slice(&0u32.to_ne_bytes());
        r.extend_from_slice(b"d\0");
        r.push(0xff); // past the header's length: not part of the request
        let (h, arg, payload) = split(&r[..r.len()]).unwrap();
        assert_eq!(h.opcode, wire::MKDIR);
        assert_eq!(arg.len(), 8);
        assert_eq!(payload, b"d\0");
        assert!(split(&r[..20]).is_none());
    }
}
