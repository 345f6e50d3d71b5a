//! An ordinary user's mount over FUSE's io_uring transport. Only root can turn the
//! `enable_uring` module parameter on, but where root has left it on the kernel asks no
//! capability for the ring: the user's daemon takes the connection `fusermount3` mounted
//! and serves it from per-CPU ring threads, in normal scheduling: unlike root's they
//! never wait in `SCHED_IDLE`, which an ordinary user's thread could not leave again (and
//! where other work on the CPU would starve it).
//! With the switch off, the same mount is served over `/dev/fuse`. (scripts/test runs
//! the whole rootless suite a second time with the switch on.)

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use support::procs::{online_cpus, pid_alive, thread_policies};
use support::skip_unless_root;

use crate::{NOBODY, User};

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Root's turn at the switch: the lock layerfs mounts take turns with, exclusively as
/// root's mounts take it while they have the switch on (an ordinary user's mount takes it
/// shared from before its mount until its INIT is answered).
fn root_turn() -> fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .open("/run/layerfs-enable-uring.lock")
        .unwrap();
    rustix::fs::flock(lock.as_fd(), rustix::fs::FlockOperation::LockExclusive).unwrap();
    lock
}

/// `enable_uring` set to a value (within a turn, as root's mounts set it) for as long as
/// this lives. A root mount that starts meanwhile finds it on and leaves it so; the
/// tests of this binary that set it take turns for the whole of their setting.
struct Switch {
    old: String,
    _one: std::sync::MutexGuard<'static, ()>,
}

static SWITCHED: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Switch {
    fn set(value: &str) -> Switch {
        let one = SWITCHED.lock().unwrap_or_else(|e| e.into_inner());
        let _turn = root_turn();
        let old = fs::read_to_string(ENABLE_URING)
            .expect("this kernel has FUSE over io_uring (fuse module parameter enable_uring)")
            .trim()
            .to_string();
        fs::write(ENABLE_URING, value).unwrap();
        Switch { old, _one: one }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        let _turn = root_turn();
        let _ = fs::write(ENABLE_URING, &self.old);
    }
}

/// The pid of the user's daemon serving `mnt`.
fn user_daemon(user: &User, mnt: &Path) -> u32 {
    user.daemons(mnt)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no daemon of the user serves {}", mnt.display()))
}

fn ring_threads(pid: u32) -> Vec<(String, u32)> {
    thread_policies(pid)
        .into_iter()
        .filter(|(n, _)| n.starts_with("fuse-ring-"))
        .collect()
}

/// The daemon must go once its mount is unmounted.
fn wait_gone(pid: u32) {
    support::procs::wait_gone(pid);
    assert!(!pid_alive(pid), "daemon {pid} still runs after its unmount");
}

fn mount(user: &User, h: &Path, mnt: &Path) -> u32 {
    let opts = format!("lowerdir={0}/l,upperdir={0}/u,workdir={0}/w", h.display());
    user.ok(&["overlay", "-o", &opts, mnt.to_str().unwrap()]);
    user_daemon(user, mnt)
}

#[test]
fn a_users_mount_takes_the_ring_root_left_on() {
    if skip_unless_root() {
        return;
    }
    let Some(user) = User::new() else { return };
    let h = user.home();
    user.sh_ok(&format!(
        "cd '{}' && mkdir -p l/d u w m && echo lower > l/f && echo g > l/d/g && \
         for i in $(seq 1 300); do echo $i > l/d/n$i; done",
        h.display()
    ));
    let mnt: PathBuf = h.join("m");
    let lower_f = fs::read(h.join("l/f")).unwrap();

    let pid = {
        let _on = Switch::set("Y");
        mount(&user, &h, &mnt)
    };
    let ring = ring_threads(pid);
    assert_eq!(
        ring.len(),
        2 * online_cpus().len(),
        "ring threads: {ring:?}"
    );
    // Every thread, the /dev/fuse reader beside the ring included (it serves every
    // request where the ring is refused after INIT): a thread of an ordinary user's
    // could not leave SCHED_IDLE again, and starves there beside CPU-bound work.
    let all = thread_policies(pid);
    assert!(
        all.iter()
            .all(|(_, policy)| *policy == libc::SCHED_OTHER as u32),
        "an ordinary user's threads stay in normal scheduling: {all:?}"
    );
    // Lookups, reads, a copy-up, a create, a rename, a removal, a listing; 300 names
    // looked up and forgotten again (FORGETs stay on /dev/fuse beside the ring).
    let shown = user.sh_ok(&format!(
        "cd '{}' && cat f && echo upper >> f && echo new > d/new && mv d/new d/moved && \
         rm d/g && cat d/n*  > /dev/null && ls d | wc -l && cat f d/moved && \
         rm d/n* && ls d && stat -c '%u %a' f",
        mnt.display()
    ));
    assert_eq!(
        shown,
        format!("lower\n301\nlower\nupper\nnew\nmoved\n{NOBODY} 644\n")
    );
    assert_eq!(ring_threads(pid).len(), 2 * online_cpus().len());
    assert_eq!(fs::read(h.join("l/f")).unwrap(), lower_f, "the lower file");
    assert_eq!(fs::read(h.join("u/f")).unwrap(), b"lower\nupper\n");
    assert_eq!(fs::metadata(h.join("u/d/moved")).unwrap().uid(), NOBODY);
    user.sh_ok(&format!("fusermount3 -u '{}'", mnt.display()));
    wait_gone(pid);

    // The switch off: the same mount over /dev/fuse.
    let pid = {
        let _off = Switch::set("N");
        mount(&user, &h, &mnt)
    };
    assert_eq!(ring_threads(pid), vec![], "a ring without enable_uring");
    let shown = user.sh_ok(&format!("cd '{}' && cat f && ls d", mnt.display()));
    assert_eq!(shown, "lower\nupper\nmoved\n");
    user.sh_ok(&format!("fusermount3 -u '{}'", mnt.display()));
    wait_gone(pid);
}

/// Root's mounts turn `enable_uring` on for their INIT and put it back. A user's mount
/// that saw it on then could be granted no ring and still fill every queue with entries
/// while it was on, and from then on the kernel sends its requests to the ring and
/// refuses each answer while the switch is off: the caller waits for ever (seen once in
/// 300–400 user mounts beside a switch flipped every few milliseconds). So a user's
/// mount reads the switch, mounts and answers INIT within a shared turn that root's
/// mounts take exclusively: it waits out a root mount's moment of `on`, and then sees
/// the switch as that mount left it.
#[test]
fn a_users_mount_waits_out_a_root_mounts_turn_at_the_switch() {
    if skip_unless_root() {
        return;
    }
    let Some(user) = User::new() else { return };
    let h = user.home();
    user.sh_ok(&format!(
        "cd '{}' && mkdir -p l u w m && echo lower > l/f",
        h.display()
    ));
    let mnt: PathBuf = h.join("m");
    let mounted = || {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(mnt.to_str().unwrap()))
    };
    let _off = Switch::set("N");
    // A root mount's turn: the switch on until its INIT is answered.
    let held = root_turn();
    fs::write(ENABLE_URING, "Y").unwrap();
    let pid = std::thread::scope(|s| {
        let m = s.spawn(|| mount(&user, &h, &mnt));
        std::thread::sleep(std::time::Duration::from_millis(700));
        let early = mounted();
        fs::write(ENABLE_URING, "N").unwrap();
        drop(held);
        let pid = m.join().unwrap();
        assert!(!early, "the user's mount went ahead within root's turn");
        pid
    });
    assert_eq!(
        ring_threads(pid),
        vec![],
        "a ring on the strength of root's moment of on"
    );
    for cpu in online_cpus() {
        let shown = user.sh_ok(&format!(
            "cd '{}' && timeout 20 taskset -c {cpu} cat f",
            mnt.display()
        ));
        assert_eq!(shown, "lower\n", "read on CPU {cpu}");
    }
    user.sh_ok(&format!("fusermount3 -u '{}'", mnt.display()));
    wait_gone(pid);
}

/// With subordinate ids the daemon serves from a user namespace the connection that
/// `fusermount3` mounted outside it: that one takes the ring as well.
#[test]
fn a_subids_mount_takes_the_ring_too() {
    let Some((user, _ids)) = crate::subuid::with_range() else {
        return;
    };
    let h = user.home();
    let (mnt, opts) = user.one_file_stack();
    {
        let _on = Switch::set("Y");
        user.ok(&["overlay", "-o", &(opts + ",subids"), mnt.to_str().unwrap()]);
    }
    // The process outside (it unmounts on a signal) and the daemon inside.
    let pids = user.daemons(&mnt);
    let ring: Vec<usize> = pids.iter().map(|&p| ring_threads(p).len()).collect();
    assert!(
        ring.contains(&(2 * online_cpus().len())),
        "ring threads of {pids:?}: {ring:?}"
    );
    let shown = user.sh_ok(&format!(
        "cd '{}' && cat f && echo x > g && stat -c '%n %u %g' f g",
        mnt.display()
    ));
    assert_eq!(shown, "hi\nf 0 0\ng 0 0\n");
    assert_eq!(fs::metadata(h.join("u/g")).unwrap().uid(), NOBODY);
    user.sh_ok(&format!("fusermount3 -u '{}'", mnt.display()));
    for p in pids {
        wait_gone(p);
    }
}

/// Root of a user namespace (rootless podman runs its mount program so) mounts FUSE
/// itself there: with the switch left on, that mount takes the ring too.
#[test]
fn a_namespace_roots_mount_takes_the_ring_too() {
    if skip_unless_root() {
        return;
    }
    let Some(user) = User::new() else { return };
    let h = user.home();
    let (mnt, opts) = user.one_file_stack();
    let _on = Switch::set("Y");
    // Inside the namespace: mount, count the daemon's ring threads, use it, unmount (the
    // mount is seen only there: unmounted on the way out whatever happens).
    let shown = user.sh_ok(&format!(
        r#"cd '{h}' && unshare -Urm sh -c '
          trap "umount -l m 2>/dev/null" EXIT
          "{bin}" overlay -o {opts} {mnt} || exit 1
          for p in /proc/[0-9]*; do
            if [ "$(readlink $p/exe)" = "{bin}" ]; then
              cat $p/task/*/comm | grep -c "^fuse-ring-"
            fi
          done
          cat m/f && echo x > m/g && stat -c "%n %u" m/g && umount m'"#,
        h = h.display(),
        mnt = mnt.display(),
        bin = user.bin_path().display()
    ));
    assert_eq!(shown, format!("{}\nhi\nm/g 0\n", 2 * online_cpus().len()));
    assert_eq!(fs::metadata(h.join("u/g")).unwrap().uid(), NOBODY);
}
