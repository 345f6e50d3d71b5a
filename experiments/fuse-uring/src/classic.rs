//! The classic transport: read(2) a request from /dev/fuse, writev(2) the answer.

use crate::fs::{Fs, Outcome};
use crate::proto::{self, InHeader, OutHeader, INIT};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

pub fn reply(fd: RawFd, unique: u64, err: i32, body: &[u8]) {
    let body = if err == 0 { body } else { &[][..] };
    let h = OutHeader {
        len: (16 + body.len()) as u32,
        error: err,
        unique,
    };
    let iov = [
        libc::iovec {
            iov_base: &h as *const _ as *mut _,
            iov_len: 16,
        },
        libc::iovec {
            iov_base: body.as_ptr() as *mut _,
            iov_len: body.len(),
        },
    ];
    // SAFETY: both iovecs point to live buffers of the given lengths.
    let r = unsafe { libc::writev(fd, iov.as_ptr(), 2) };
    if r < 0 {
        let e = io::Error::last_os_error();
        // ENOENT: the request was interrupted meanwhile; ENODEV: unmounted.
        if !matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENODEV)) {
            eprintln!("writev to /dev/fuse: {e}");
        }
    }
}

/// Read one request; None once the connection is gone.
pub fn read_request(fd: RawFd, buf: &mut [u8]) -> Option<usize> {
    loop {
        // SAFETY: buf is a valid writable buffer of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut _, buf.len()) };
        if n >= 0 {
            return Some(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ENOENT) => continue,
            Some(libc::ENODEV) => return None,
            _ => {
                eprintln!("read /dev/fuse: {e}");
                return None;
            }
        }
    }
}

/// Serve requests from `fd` until the mount goes away. INIT, should it arrive here, is
/// answered without io_uring.
pub fn serve(fs: &Fs, fd: RawFd) {
    let mut buf = vec![0u8; crate::MAX_WRITE + 4096];
    let mut out = Vec::with_capacity(crate::MAX_WRITE + 4096);
    while let Some(n) = read_request(fd, &mut buf) {
        if n < 40 {
            eprintln!("short read from /dev/fuse: {n} bytes");
            return;
        }
        fs.via_dev.fetch_add(1, Ordering::Relaxed);
        let h: InHeader = proto::read(&buf);
        let body = &buf[40..n];
        if h.opcode == INIT {
            out.clear();
            let (err, _) = fs.init(body, &mut out, false);
            reply(fd, h.unique, err, &out);
            continue;
        }
        let k = proto::op_header_size(h.opcode).min(body.len());
        if let Outcome::Reply(err) = fs.handle(&h, &body[..k], &body[k..], &mut out) {
            reply(fd, h.unique, err, &out);
        }
    }
}
