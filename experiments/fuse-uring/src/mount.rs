//! Opening /dev/fuse, mount(2) and unmount helpers, and the safety net for a mount whose
//! daemon no longer answers.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("path without NUL")
}

pub fn open_dev() -> io::Result<OwnedFd> {
    // SAFETY: a constant NUL-terminated path; the fd is owned by the result.
    let fd = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Another /dev/fuse fd bound to the same connection (FUSE_DEV_IOC_CLONE), so each thread
/// has its own processing queue, as fuser's `clone_fd` does.
pub fn clone_dev(session: RawFd) -> io::Result<OwnedFd> {
    let fd = open_dev()?;
    let mut src = session as u32;
    // SAFETY: the ioctl reads one u32 from a valid pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), crate::proto::DEV_IOC_CLONE, &mut src) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

pub fn mount_fuse(dev: RawFd, mnt: &Path) -> io::Result<()> {
    let opts = CString::new(format!(
        "fd={dev},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other"
    ))
    .unwrap();
    let target = cstr(mnt);
    // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
    let r = unsafe {
        libc::mount(
            c"fuse-uring-probe".as_ptr(),
            target.as_ptr(),
            c"fuse.probe".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr() as *const libc::c_void,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn mount_other(src: &str, mnt: &Path, fstype: &str, opts: &str) -> io::Result<()> {
    let (s, t, f, o) = (
        CString::new(src).unwrap(),
        cstr(mnt),
        CString::new(fstype).unwrap(),
        CString::new(opts).unwrap(),
    );
    // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            0,
            o.as_ptr() as *const libc::c_void,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn umount(mnt: &Path, flags: i32) -> io::Result<()> {
    let t = cstr(mnt);
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::umount2(t.as_ptr(), flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The FUSE connection number of the mount at `mnt` (the minor of its device), read from
/// /proc/self/mountinfo so that it works when the mount no longer answers.
pub fn connection_of(mnt: &Path) -> Option<u32> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mnt.to_str()?;
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        if f.len() > 4 && f[4] == want && l.contains(" - fuse") {
            f[2].split(':').nth(1)?.parse().ok()
        } else {
            None
        }
    })
}

/// Last resort for a hung mount: abort its connection and detach it.
pub fn abort_and_detach(mnt: &Path) {
    if let Some(n) = connection_of(mnt) {
        let _ = std::fs::write(format!("/sys/fs/fuse/connections/{n}/abort"), "1");
        eprintln!("aborted FUSE connection {n} of {}", mnt.display());
    }
    let _ = umount(mnt, libc::MNT_DETACH);
}
