//! fuse-uring-probe: a minimal in-memory FUSE server with two transports (classic
//! /dev/fuse read/write, and FUSE over io_uring), plus the benchmark that compares them.
//!
//!   fuse-uring-probe serve --mnt DIR --transport classic|uring [--threads N] [...]
//!   fuse-uring-probe bench [--n 20000] [--rounds 5] [--configs ...] [--workloads ...]
//!
//! Needs root. See README.md.

mod bench;
mod classic;
mod fs;
mod mount;
mod proto;
mod uring;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use uring::TaskRun;

/// max_write, max_pages * 4096 and the ring's payload buffer size.
pub const MAX_WRITE: usize = 128 * 1024;

#[derive(Clone, Debug)]
pub struct ServeOpts {
    pub mnt: PathBuf,
    pub uring: bool,
    pub threads: usize,
    pub clone: bool,
    pub depth: usize,
    pub pin: bool,
    pub taskrun: TaskRun,
    pub populate: usize,
    pub stat_dir: Option<PathBuf>,
}

impl ServeOpts {
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "serve".into(),
            "--mnt".into(),
            self.mnt.display().to_string(),
            "--transport".into(),
            if self.uring { "uring" } else { "classic" }.into(),
            "--threads".into(),
            self.threads.to_string(),
            "--depth".into(),
            self.depth.to_string(),
            "--taskrun".into(),
            format!("{:?}", self.taskrun).to_lowercase(),
            "--populate".into(),
            self.populate.to_string(),
        ];
        if let Some(d) = &self.stat_dir {
            a.push("--stat-dir".into());
            a.push(d.display().to_string());
        }
        if !self.clone {
            a.push("--no-clone".into());
        }
        a.push(if self.pin { "--pin" } else { "--no-pin" }.into());
        a
    }
}

pub fn parse_taskrun(s: &str) -> Result<TaskRun, String> {
    match s {
        "plain" => Ok(TaskRun::Plain),
        "coop" => Ok(TaskRun::Coop),
        "defer" => Ok(TaskRun::Defer),
        _ => Err(format!("--taskrun: expected plain, coop or defer, got {s}")),
    }
}

fn parse_serve(args: &[String]) -> Result<ServeOpts, String> {
    let mut o = ServeOpts {
        mnt: PathBuf::new(),
        uring: false,
        threads: 1,
        clone: true,
        depth: 8,
        pin: false,
        taskrun: TaskRun::Defer,
        populate: 0,
        stat_dir: None,
    };
    let mut pin = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--mnt" => o.mnt = val()?.into(),
            "--transport" => {
                o.uring = match val()?.as_str() {
                    "uring" => true,
                    "classic" => false,
                    v => return Err(format!("--transport: expected classic or uring, got {v}")),
                }
            }
            "--threads" => o.threads = val()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--depth" => o.depth = val()?.parse().map_err(|e| format!("--depth: {e}"))?,
            "--stat-dir" => o.stat_dir = Some(val()?.into()),
            "--populate" => o.populate = val()?.parse().map_err(|e| format!("--populate: {e}"))?,
            "--taskrun" => o.taskrun = parse_taskrun(&val()?)?,
            "--no-clone" => o.clone = false,
            "--pin" => pin = Some(true),
            "--no-pin" => pin = Some(false),
            _ => return Err(format!("unknown option {a}")),
        }
    }
    // Ring threads run on their queue's CPU by default (as libfuse does); /dev/fuse
    // readers float (as fuser's do).
    o.pin = pin.unwrap_or(o.uring);
    if o.mnt.as_os_str().is_empty() {
        return Err("serve needs --mnt DIR".into());
    }
    if o.threads == 0 || o.depth == 0 {
        return Err("--threads and --depth must be at least 1".into());
    }
    Ok(o)
}

/// The kernel's number of FUSE ring queues: one per possible CPU.
pub fn possible_cpus() -> usize {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    s.trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap_or(0) - a.parse::<usize>().unwrap_or(0) + 1,
            None => 1,
        })
        .sum::<usize>()
        .max(1)
}

fn serve(o: ServeOpts) -> Result<(), String> {
    let dev = mount::open_dev().map_err(|e| format!("open /dev/fuse: {e}"))?;
    let fd = dev.as_raw_fd();
    mount::mount_fuse(fd, &o.mnt).map_err(|e| format!("mount {}: {e}", o.mnt.display()))?;
    println!("READY");
    let _ = std::io::stdout().flush();
    let mut fs = fs::Fs::new(o.populate);
    if let Some(d) = &o.stat_dir {
        fs.stat_dir =
            Some(std::fs::File::open(d).map_err(|e| format!("--stat-dir {}: {e}", d.display()))?);
    }
    let mut transport = "classic";
    std::thread::scope(|s| -> Result<(), String> {
        if o.uring {
            // INIT comes through /dev/fuse; registration needs it answered first
            // (fuse_uring_cmd returns EAGAIN while the connection is not initialized).
            let mut buf = vec![0u8; MAX_WRITE + 4096];
            let n = classic::read_request(fd, &mut buf).ok_or("connection gone before INIT")?;
            let h: proto::InHeader = proto::read(&buf[..n]);
            if h.opcode != proto::INIT {
                return Err(format!("first request was opcode {}, not INIT", h.opcode));
            }
            let mut out = Vec::new();
            let (err, uring) = fs.init(&buf[40..n], &mut out, true);
            classic::reply(fd, h.unique, err, &out);
            if err != 0 {
                return Err(format!("INIT refused: errno {}", -err));
            }
            if uring {
                transport = "uring";
                let nq = possible_cpus();
                let t = o.threads.min(nq);
                for i in 0..t {
                    let qids: Vec<u16> = (0..nq).filter(|q| q % t == i).map(|q| q as u16).collect();
                    let pin = (o.pin && t == nq).then_some(i);
                    let (fs, o) = (&fs, &o);
                    s.spawn(move || {
                        if let Err(e) = uring::serve(fs, fd, &qids, o.depth, pin, o.taskrun) {
                            eprintln!("io_uring thread {i} (queues {qids:?}): {e}");
                        }
                    });
                }
                // FORGET and INTERRUPT still come through read(2); so does everything if
                // the kernel refuses registration and falls back.
                s.spawn(|| classic::serve(&fs, fd));
                return Ok(());
            }
            eprintln!("kernel did not offer FUSE_OVER_IO_URING (enable_uring=N?): using /dev/fuse");
        }
        let ncpu = possible_cpus();
        for i in 0..o.threads {
            let fs = &fs;
            let pin = (o.pin && o.threads <= ncpu).then_some(i);
            let own = if i == 0 || !o.clone {
                None
            } else {
                Some(mount::clone_dev(fd).map_err(|e| format!("FUSE_DEV_IOC_CLONE: {e}"))?)
            };
            s.spawn(move || {
                if let Some(cpu) = pin {
                    uring::pin_to(cpu);
                }
                let f = own.as_ref().map_or(fd, |d| d.as_raw_fd());
                classic::serve(fs, f);
            });
        }
        Ok(())
    })?;
    println!(
        "STATS transport={transport} flags={:#x} via_ring={} via_dev={} {}",
        fs.init_flags.load(Ordering::Relaxed),
        fs.via_ring.load(Ordering::Relaxed),
        fs.via_dev.load(Ordering::Relaxed),
        fs.count_line()
    );
    drop(dev);
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("serve") => parse_serve(&args[1..]).and_then(serve),
        Some("bench") => bench::parse(&args[1..]).and_then(bench::run),
        _ => Err("usage: fuse-uring-probe serve --mnt DIR --transport classic|uring [--threads N] \
                  [--no-clone] [--depth N] [--taskrun plain|coop|defer] [--pin|--no-pin] [--populate N]\n       \
                  fuse-uring-probe bench [--n N] [--rounds R] [--configs LIST] [--workloads LIST] \
                  [--dir DIR] [--depth N] [--taskrun MODE] [--pin-clients]"
            .into()),
    };
    if let Err(e) = r {
        eprintln!("fuse-uring-probe: {e}");
        std::process::exit(1);
    }
}
