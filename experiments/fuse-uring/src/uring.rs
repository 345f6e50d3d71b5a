//! FUSE over io_uring (fs/fuse/dev_uring.c, Linux 6.14+).
//!
//! The kernel keeps one queue per possible CPU and sends each request to the queue of the
//! CPU the calling task runs on; the ring is "ready" (and the mount stops blocking new
//! requests) only once every queue has at least one registered entry. An entry is a
//! pair of buffers (a 288-byte header and a payload of at least max_write bytes)
//! registered with an IORING_OP_URING_CMD on the /dev/fuse fd (SQE128, command
//! FUSE_IO_URING_CMD_REGISTER, `sqe->addr` = the two iovecs, `sqe->len` = 2). Its
//! completion means a request sits in the buffers; the answer goes back in the same
//! buffers with FUSE_IO_URING_CMD_COMMIT_AND_FETCH, which also re-arms the entry.
//! FORGET and INTERRUPT still arrive through read(2) on /dev/fuse.

use crate::fs::{Fs, Outcome};
use crate::proto::{self, *};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TaskRun {
    /// No task-run flags: completions are signalled to the thread as soon as they happen.
    Plain,
    /// IORING_SETUP_COOP_TASKRUN | TASKRUN_FLAG.
    Coop,
    /// IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN (what libfuse uses).
    Defer,
}

struct Ent {
    qid: u16,
    header: Box<UringReqHeader>,
    payload: Vec<u8>,
    iov: Box<[libc::iovec; 2]>,
}

impl Ent {
    fn new(qid: u16, payload_len: usize) -> Ent {
        let mut header = Box::new(UringReqHeader {
            in_out: [0; URING_IN_OUT_HEADER_SZ],
            op_in: [0; URING_OP_IN_OUT_SZ],
            ring_ent_in_out: UringEntInOut::default(),
        });
        let mut payload = vec![0u8; payload_len];
        let iov = Box::new([
            libc::iovec {
                iov_base: &mut *header as *mut UringReqHeader as *mut _,
                iov_len: 288,
            },
            libc::iovec {
                iov_base: payload.as_mut_ptr() as *mut _,
                iov_len: payload_len,
            },
        ]);
        Ent {
            qid,
            header,
            payload,
            iov,
        }
    }

    fn sqe(&self, fd: RawFd, cmd_op: u32, commit_id: u64, idx: usize) -> squeue::Entry128 {
        let req = UringCmdReq {
            commit_id,
            qid: self.qid,
            ..Default::default()
        };
        let mut cmd = [0u8; 80];
        cmd[..24].copy_from_slice(proto::bytes(&req));
        let e = opcode::UringCmd80::new(types::Fd(fd), cmd_op)
            .cmd(cmd)
            .addr(Some(self.iov.as_ptr() as u64))
            .build()
            .user_data(idx as u64);
        // The crate has no setter for sqe->len, which the kernel requires to be 2 (the
        // number of iovecs). Entry128 is repr(C): a 64-byte io_uring_sqe (len at offset
        // 24) followed by the 64 extra command bytes.
        // SAFETY: Entry128 is a repr(C) 128-byte plain struct; every byte pattern we write
        // (a u32 in the sqe's len field) is valid.
        let mut raw: [u8; 128] = unsafe { std::mem::transmute(e) };
        raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
        // SAFETY: as above.
        unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
    }
}

pub fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("pin to cpu {cpu}: {}", io::Error::last_os_error());
        }
    }
}

/// One thread, one ring, serving the given queues (depth entries each) until the
/// connection ends. `pin`: run on this CPU (the queue's own CPU when one queue per thread).
pub fn serve(
    fs: &Fs,
    fd: RawFd,
    qids: &[u16],
    depth: usize,
    pin: Option<usize>,
    taskrun: TaskRun,
) -> io::Result<()> {
    if let Some(cpu) = pin {
        pin_to(cpu);
    }
    let n = qids.len() * depth;
    let mut b = IoUring::<squeue::Entry128, cqueue::Entry>::builder();
    match taskrun {
        TaskRun::Plain => {}
        TaskRun::Coop => {
            b.setup_coop_taskrun().setup_taskrun_flag();
        }
        TaskRun::Defer => {
            b.setup_single_issuer().setup_defer_taskrun();
        }
    }
    let mut ring = b.build((n as u32).next_power_of_two())?;
    let ents: Vec<Ent> = qids
        .iter()
        .flat_map(|&q| (0..depth).map(move |_| q))
        .map(|q| Ent::new(q, crate::MAX_WRITE))
        .collect();
    for (i, e) in ents.iter().enumerate() {
        let sqe = e.sqe(fd, URING_CMD_REGISTER, 0, i);
        // SAFETY: the entry's buffers and iovecs live in `ents` until this function
        // returns, after every entry has completed for good.
        unsafe { ring.submission().push(&sqe) }.expect("ring sized for all entries");
    }
    let mut ents = ents;
    let mut live = n;
    let mut out = Vec::with_capacity(crate::MAX_WRITE);
    let mut done = Vec::with_capacity(n);
    let mut first_error = None;
    while live > 0 {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        done.clear();
        done.extend(
            ring.completion()
                .map(|c| (c.user_data() as usize, c.result())),
        );
        for &(i, res) in &done {
            if res < 0 {
                live -= 1;
                let e = io::Error::from_raw_os_error(-res);
                if !matches!(-res, libc::ENOTCONN | libc::ECANCELED | libc::ECONNABORTED) {
                    eprintln!("ring entry {i} (queue {}): {e}", ents[i].qid);
                    first_error.get_or_insert(e);
                }
                continue;
            }
            fs.via_ring.fetch_add(1, Ordering::Relaxed);
            let ent = &mut ents[i];
            let h: InHeader = proto::read(&ent.header.in_out);
            let io = ent.header.ring_ent_in_out;
            let k = proto::op_header_size(h.opcode).min(URING_OP_IN_OUT_SZ);
            let psz = (io.payload_sz as usize).min(ent.payload.len());
            let err = match fs.handle(&h, &ent.header.op_in[..k], &ent.payload[..psz], &mut out) {
                Outcome::Reply(e) => e,
                // Never sent over the ring by the kernel; answer so the entry re-arms.
                Outcome::None => -libc::ENOSYS,
            };
            let body = if err == 0 { &out[..] } else { &[][..] };
            let oh = OutHeader {
                len: (16 + body.len()) as u32,
                error: err,
                unique: h.unique,
            };
            ent.header.in_out[..16].copy_from_slice(proto::bytes(&oh));
            ent.payload[..body.len()].copy_from_slice(body);
            ent.header.ring_ent_in_out.payload_sz = body.len() as u32;
            let sqe = ent.sqe(fd, URING_CMD_COMMIT_AND_FETCH, io.commit_id, i);
            // SAFETY: as for REGISTER above.
            unsafe { ring.submission().push(&sqe) }.expect("one slot per entry");
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
