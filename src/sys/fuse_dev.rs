//! The raw FUSE device for layerfs's own protocol layer (`-o uring`): `/dev/fuse`,
//! mount(2) of a FUSE connection, passthrough backing-file registration, and FUSE over
//! io_uring (fs/fuse/dev_uring.c) — one ring per serving thread, each entry a header and
//! a payload buffer the kernel fills with a request and takes the answer from.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// `FUSE_DEV_IOC_BACKING_OPEN`: `_IOW(229, 1, struct fuse_backing_map)`.
const IOC_BACKING_OPEN: libc::c_ulong = 0x4010_e501;
/// `FUSE_DEV_IOC_BACKING_CLOSE`: `_IOW(229, 2, uint32_t)`.
const IOC_BACKING_CLOSE: libc::c_ulong = 0x4004_e502;

const URING_CMD_REGISTER: u32 = 1;
const URING_CMD_COMMIT_AND_FETCH: u32 = 2;
/// `struct fuse_uring_req_header`: in/out header, op header, `fuse_uring_ent_in_out`.
const HEADER_LEN: usize = 288;
const IN_OUT_LEN: usize = 128;
const OP_IN_LEN: usize = 128;

/// Open `/dev/fuse` for a new connection.
pub fn open_fuse_dev() -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    Ok(f.into())
}

/// mount(2) a FUSE connection (root only): type `fuse.SUBTYPE`, `data` the kernel's
/// options after `fd=`.
pub fn mount_fuse(
    dev: BorrowedFd<'_>,
    mountpoint: &Path,
    source: &str,
    subtype: &str,
    flags: rustix::mount::MountFlags,
    options: &str,
) -> io::Result<()> {
    let data = std::ffi::CString::new(format!("fd={},{options}", dev.as_raw_fd()))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    rustix::mount::mount(
        source,
        mountpoint,
        format!("fuse.{subtype}").as_str(),
        flags,
        Some(data.as_c_str()),
    )
    .map_err(io::Error::from)
}

/// Register `file` as a passthrough backing file; the id goes into an OPEN answer.
pub fn backing_open(dev: BorrowedFd<'_>, file: BorrowedFd<'_>) -> io::Result<u32> {
    // struct fuse_backing_map { int32 fd; uint32 flags; uint64 padding; }
    let mut map = [0u8; 16];
    map[..4].copy_from_slice(&file.as_raw_fd().to_ne_bytes());
    // SAFETY: the ioctl reads 16 bytes from a live buffer of that size.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), IOC_BACKING_OPEN, map.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as u32)
}

/// Drop a backing-file registration.
pub fn backing_close(dev: BorrowedFd<'_>, id: u32) -> io::Result<()> {
    // SAFETY: the ioctl reads one u32 from a live value.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), IOC_BACKING_CLOSE, &id as *const u32) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn cpu_list(path: &str) -> Vec<usize> {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let mut r = part.splitn(2, '-');
        let a: usize = r.next().and_then(|x| x.parse().ok()).unwrap_or(0);
        let b: usize = r.next().and_then(|x| x.parse().ok()).unwrap_or(a);
        out.extend(a..=b);
    }
    out
}

/// The CPUs the kernel may ever run on: one ring queue each.
pub fn possible_cpus() -> Vec<usize> {
    let v = cpu_list("/sys/devices/system/cpu/possible");
    if v.is_empty() { vec![0] } else { v }
}

/// The CPUs online now.
pub fn online_cpus() -> Vec<usize> {
    let v = cpu_list("/sys/devices/system/cpu/online");
    if v.is_empty() { vec![0] } else { v }
}

/// Whether this process can make the rings the transport needs (io_uring may be
/// switched off, `kernel.io_uring_disabled`, or refused by a seccomp filter). Asked before
/// INIT: a connection granted the ring sends nothing until every queue has an entry.
pub fn io_uring_usable() -> bool {
    let mut b = IoUring::<squeue::Entry128, cqueue::Entry>::builder();
    b.setup_single_issuer().setup_defer_taskrun();
    b.build(1).is_ok()
}

/// The fuse module's `enable_uring` parameter: `None` where this kernel has no FUSE over
/// io_uring.
pub fn enable_uring() -> Option<bool> {
    std::fs::read_to_string(ENABLE_URING)
        .ok()
        .map(|v| v.trim() == "Y")
}

/// A queue no kernel has: `refuse_ring` registers an entry for it to be refused.
const REFUSED_QUEUE: u16 = u16::MAX;

/// Turn the ring off for a connection that is not to have an entry on every queue: a
/// registration the kernel refuses withdraws the grant, and requests that waited for the
/// ring go through `/dev/fuse`. Only while some queue has no entry: once every queue has
/// had one, the kernel sends requests to the ring for good.
pub fn refuse_ring(dev: BorrowedFd<'_>) {
    let _ = FuseRing::register(dev, &[REFUSED_QUEUE], 8192);
}

/// The turn of layerfs mounts at the `enable_uring` switch: root's mounts hold it
/// exclusively while their INIT has the switch on; an ordinary user's mount holds it
/// shared from before its mount until its INIT is answered (`SwitchHold`).
const SWITCH_LOCK: &str = "/run/layerfs-enable-uring.lock";

/// How long a mount waits for its turn at the switch before it goes on without it (a
/// turn lasts milliseconds; only a process that keeps the lock would make it wait).
const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The `enable_uring` module parameter turned on for as long as this lives (a mount's
/// INIT), and put back as it was.
pub struct UringSwitch {
    old: String,
    _turn: Option<std::fs::File>,
}

impl UringSwitch {
    pub fn on() -> io::Result<UringSwitch> {
        // Root's to write; others read it to take the shared turn.
        let turn = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(SWITCH_LOCK)
            .ok()
            .filter(|f| {
                // A lock file made before users took turns was 0600.
                let _ = rustix::fs::fchmod(f, rustix::fs::Mode::from_raw_mode(0o644));
                take_turn(f, false)
            });
        let old = std::fs::read_to_string(ENABLE_URING)?.trim().to_string();
        if old != "Y" {
            std::fs::write(ENABLE_URING, "Y")?;
        }
        Ok(UringSwitch { old, _turn: turn })
    }
}

impl Drop for UringSwitch {
    fn drop(&mut self) {
        if self.old != "Y"
            && let Err(e) = std::fs::write(ENABLE_URING, &self.old)
        {
            log::warn!("cannot put {ENABLE_URING} back to {}: {e}", self.old);
        }
    }
}

/// A shared turn at the switch, for a mount that cannot set `enable_uring` (an ordinary
/// user's, where root left it on): while it lives no layerfs mount of root's switches the
/// parameter. The kernel grants the ring in INIT's answer only if the parameter is on at
/// that moment; a connection it was not granted to still takes ring entries while the
/// parameter is on, and once every queue has one its requests go to the ring — where
/// each answer is refused while the parameter is off, and the caller waits for ever. So
/// the parameter is read, the mount made and INIT answered within one turn.
#[derive(Default)]
pub struct SwitchHold {
    _turn: Option<std::fs::File>,
}

impl SwitchHold {
    /// The shared turn; none where no mount of root's has made the lock file (none of
    /// them switches the parameter then) or where it is out of reach.
    pub fn take() -> SwitchHold {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(SWITCH_LOCK)
            .ok();
        SwitchHold {
            _turn: f.filter(|f| take_turn(f, true)),
        }
    }
}

/// Wait for a turn at the switch (shared or exclusive); `false`, said once, if another
/// process kept it for `TURN_WAIT`.
fn take_turn(lock: &std::fs::File, shared: bool) -> bool {
    match super::flock_within(lock.as_fd(), shared, TURN_WAIT) {
        Ok(true) => true,
        Ok(false) => {
            log::warn!(
                "{SWITCH_LOCK} held for over {} s: going on without a turn at enable_uring",
                TURN_WAIT.as_secs()
            );
            false
        }
        Err(e) => {
            log::warn!("{SWITCH_LOCK}: cannot lock ({e}): going on without a turn at enable_uring");
            false
        }
    }
}

/// `struct fuse_uring_req_header`, 64-byte aligned as the kernel's cache lines like.
#[repr(C, align(64))]
struct Header([u8; HEADER_LEN]);

struct Entry {
    qid: u16,
    header: Box<Header>,
    payload: super::ZeroedBuf,
    iov: Box<[libc::iovec; 2]>,
}

/// A request as it sits in a ring entry.
pub struct RingRequest<'a> {
    /// `struct fuse_in_header`.
    pub header: &'a [u8],
    /// The opcode's fixed argument.
    pub op: &'a [u8],
    /// Names and data after it.
    pub payload: &'a [u8],
}

/// One thread's io_uring with its entries on the connection's queues.
pub struct FuseRing<'d> {
    dev: BorrowedFd<'d>,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    entries: Vec<Entry>,
    ready: VecDeque<usize>,
    live: usize,
}

impl<'d> FuseRing<'d> {
    /// A ring with one entry per element of `queues` (a queue id may repeat), each
    /// with a payload buffer of `payload_len` bytes, registered with the kernel.
    pub fn register(
        dev: BorrowedFd<'d>,
        queues: &[u16],
        payload_len: usize,
    ) -> io::Result<FuseRing<'d>> {
        let mut b = IoUring::<squeue::Entry128, cqueue::Entry>::builder();
        b.setup_single_issuer().setup_defer_taskrun();
        let ring = b.build((queues.len().max(1) as u32).next_power_of_two())?;
        let entries = queues
            .iter()
            .map(|&qid| {
                let mut header = Box::new(Header([0; HEADER_LEN]));
                let mut payload = super::ZeroedBuf::new(payload_len)?;
                let iov = Box::new([
                    libc::iovec {
                        iov_base: header.0.as_mut_ptr().cast(),
                        iov_len: HEADER_LEN,
                    },
                    libc::iovec {
                        iov_base: payload.as_mut_ptr().cast(),
                        iov_len: payload_len,
                    },
                ]);
                Ok(Entry {
                    qid,
                    header,
                    payload,
                    iov,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let mut r = FuseRing {
            dev,
            ring,
            entries,
            ready: VecDeque::new(),
            live: queues.len(),
        };
        for i in 0..r.entries.len() {
            r.push(i, URING_CMD_REGISTER, 0)?;
        }
        r.ring.submit()?;
        // A refused registration completes at once; a request may already have come.
        match r.collect() {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(r),
        }
    }

    /// Move the entries that completed with a request to `ready`; an entry that
    /// completed with an error is done for good. Returns the first such errno.
    fn collect(&mut self) -> Option<i32> {
        let mut failed = None;
        for c in self.ring.completion() {
            let (i, res) = (c.user_data() as usize, c.result());
            if res >= 0 {
                self.ready.push_back(i);
                continue;
            }
            self.live -= 1;
            // EOPNOTSUPP: the ring refused at registration (the caller says why); the
            // queue `refuse_ring` names does not exist (its EINVAL is what it is for).
            if self.entries[i].qid != REFUSED_QUEUE
                && !matches!(
                    -res,
                    libc::ENOTCONN
                        | libc::ECANCELED
                        | libc::ECONNABORTED
                        | libc::ENODEV
                        | libc::EOPNOTSUPP
                )
            {
                log::warn!(
                    "io_uring entry {i} (queue {}): {}",
                    self.entries[i].qid,
                    io::Error::from_raw_os_error(-res)
                );
            }
            failed.get_or_insert(-res);
        }
        failed
    }

    fn push(&mut self, i: usize, cmd_op: u32, commit_id: u64) -> io::Result<()> {
        let e = &self.entries[i];
        // struct fuse_uring_cmd_req { u64 flags; u64 commit_id; u16 qid; u8 pad[6]; }
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&e.qid.to_ne_bytes());
        let sqe = opcode::UringCmd80::new(types::Fd(self.dev.as_raw_fd()), cmd_op)
            .cmd(cmd)
            .addr(Some(e.iov.as_ptr() as u64))
            .build()
            .user_data(i as u64);
        // The kernel wants sqe->len = 2 (the iovecs), which the crate has no setter
        // for: byte 24 of the repr(C) 128-byte entry.
        // SAFETY: Entry128 is a plain repr(C) 128-byte struct; any bytes are valid.
        let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
        // SAFETY: as above.
        let sqe: squeue::Entry128 = unsafe { std::mem::transmute(raw) };
        // SAFETY: the iovecs and buffers live in `self.entries`, which outlives the
        // ring's use of them (fields drop in order: the ring before the entries).
        if unsafe { self.ring.submission().push(&sqe) }.is_err() {
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&sqe) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        Ok(())
    }

    /// The next entry that holds a request; `None` once the connection is gone.
    pub fn next_request(&mut self) -> io::Result<Option<usize>> {
        loop {
            if let Some(i) = self.ready.pop_front() {
                return Ok(Some(i));
            }
            if self.live == 0 {
                return Ok(None);
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            self.collect();
        }
    }

    /// Hand the answers committed so far to the kernel now.
    pub fn submit(&mut self) -> io::Result<()> {
        self.ring.submit().map(|_| ())
    }

    /// The request in entry `i`.
    pub fn request(&self, i: usize) -> RingRequest<'_> {
        let e = &self.entries[i];
        let h = &e.header.0;
        let psz = u32::from_ne_bytes([h[272], h[273], h[274], h[275]]) as usize;
        RingRequest {
            header: &h[..IN_OUT_LEN],
            op: &h[IN_OUT_LEN..IN_OUT_LEN + OP_IN_LEN],
            payload: &e.payload[..psz.min(e.payload.len())],
        }
    }

    /// The largest answer an entry holds.
    pub fn payload_len(&self) -> usize {
        self.entries.first().map_or(0, |e| e.payload.len())
    }

    /// Answer the request in entry `i` and hand the entry back for the next one.
    pub fn commit(&mut self, i: usize, unique: u64, error: i32, body: &[u8]) -> io::Result<()> {
        let e = &mut self.entries[i];
        let h = &mut e.header.0;
        let commit_id = u64::from_ne_bytes(h[264..272].try_into().unwrap_or([0; 8]));
        let (error, body) = if body.len() > e.payload.len() {
            (-libc::EIO, &[][..])
        } else {
            (error, body)
        };
        // struct fuse_out_header { u32 len; i32 error; u64 unique; }
        h[0..4].copy_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        h[4..8].copy_from_slice(&error.to_ne_bytes());
        h[8..16].copy_from_slice(&unique.to_ne_bytes());
        h[272..276].copy_from_slice(&(body.len() as u32).to_ne_bytes());
        e.payload[..body.len()].copy_from_slice(body);
        self.push(i, URING_CMD_COMMIT_AND_FETCH, commit_id)
    }
}
