//! A small file's data handed to the kernel's page cache with the answer to its open.
//!
//! Without passthrough (every mount of an ordinary user; `passthrough=off`) the first
//! read of a file is a READ round trip, and its answer marks the file's atime stale in
//! the kernel (`fuse_invalidate_atime`), so the `fstat` that `tar c` makes after reading
//! each file is a GETATTR round trip as well. Pages stored in the kernel's cache
//! (`FUSE_NOTIFY_STORE`) before the OPEN is answered make both unnecessary: the read
//! finds them and invalidates nothing. An open and a release stay per file.
//!
//! Offered only for a file opened to read whose data is in a lower layer (it cannot
//! change, and its opens keep the kernel's cache), of at most `LIMIT` bytes (what the
//! kernel's first read-ahead asks for anyway), once per kernel inode (`Node::pages`),
//! and only while no other open of it exists: the kernel locks a page while a READ
//! fills it and the store waits for that lock, so a READ in flight waiting for a request
//! thread could wait behind a store that waits for it. An open that comes while the data
//! is offered waits for the offer first (microseconds).

use std::os::fd::AsFd;
use std::sync::atomic::{Ordering, fence};

use super::fs::OverlayFs;
use super::inode_table::Node;
use super::layers::UPPER;
use crate::sys;

/// Files up to this size are offered whole.
pub const LIMIT: usize = 128 * 1024;

/// `Node::pages`: not offered yet…
const NOT_YET: u8 = 0;
/// …being offered…
const OFFERING: u8 = 1;
/// …offered, or never to be (too big, empty, written).
const SETTLED: u8 = 2;

impl OverlayFs {
    /// Before answering the open `fh` with `flags` (not passed through): hand the file's
    /// data to the kernel's page cache where that is safe and pays (see the module).
    pub fn offer_pages(&self, fh: u64, flags: i32) {
        // O_DIRECT reads skip the page cache; writers change the file.
        if flags & (libc::O_DIRECT | libc::O_TRUNC) != 0 {
            return;
        }
        let Some(kernel) = self.kernel_cache() else {
            return;
        };
        let Some(h) = self.files.get(fh) else {
            return;
        };
        let node = &h.node;
        if h.writable || h.layer() == UPPER {
            return;
        }
        if node
            .pages
            .compare_exchange(NOT_YET, OFFERING, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        // Against `wait_for_offer`: one of the two sees the other.
        fence(Ordering::SeqCst);
        if node.open_files.load(Ordering::SeqCst) != 1 {
            node.pages.store(NOT_YET, Ordering::SeqCst);
            return;
        }
        let settled = match sys::stat_fd(h.file().as_fd()) {
            Ok(st) if st.st_size > 0 && st.st_size as usize <= LIMIT => {
                let size = st.st_size as usize;
                self.read_with(fh, 0, size, |r| match r {
                    Ok(data) if data.len() == size => {
                        kernel.store_pages(node.ino, data);
                        true
                    }
                    // Shorter than its size (or unreadable): leave it to READs.
                    _ => false,
                })
            }
            Ok(_) => true,
            Err(_) => false,
        };
        node.pages
            .store(if settled { SETTLED } else { NOT_YET }, Ordering::SeqCst);
    }

    /// Called by an open of `node`, already counted in `open_files`: wait while another
    /// open is offering its data (it saw itself the only open).
    pub(crate) fn wait_for_offer(node: &Node) {
        fence(Ordering::SeqCst);
        while node.pages.load(Ordering::SeqCst) == OFFERING {
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::overlay::kernel_cache::KernelCache;
    use crate::overlay::types::Ctx;

    /// One store: the inode and the bytes.
    type Store = (u64, Vec<u8>);

    /// The kernel's cache as the core sees it: every store, kept.
    #[derive(Default, Clone)]
    struct Stores(Arc<Mutex<Vec<Store>>>);

    impl KernelCache for Stores {
        fn attr_changed(&self, _: u64) {}
        fn name_moved(&self, _: u64, _: &OsStr) {}
        fn listing_changed(&self, _: u64) {}
        fn store_pages(&self, ino: u64, data: &[u8]) {
            self.0.lock().unwrap().push((ino, data.to_vec()));
        }
    }

    fn me() -> Ctx {
        Ctx {
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            pid: 0,
        }
    }

    #[test]
    fn a_small_lower_file_goes_to_the_kernel_once_and_only_while_alone() {
        let t = tempfile::tempdir().unwrap();
        let (lower, upper, work) = (t.path().join("l"), t.path().join("u"), t.path().join("w"));
        for d in [&lower, &upper, &work] {
            std::fs::create_dir_all(d).unwrap();
        }
        let small: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(lower.join("small"), &small).unwrap();
        std::fs::write(lower.join("big"), vec![7u8; LIMIT + 1]).unwrap();
        std::fs::write(lower.join("empty"), b"").unwrap();
        std::fs::write(lower.join("pair"), b"two opens").unwrap();
        std::fs::write(lower.join("edited"), b"before").unwrap();
        let fs = OverlayFs::new(crate::overlay::Options::new(
            vec![lower],
            Some(upper),
            Some(work),
        ))
        .unwrap();
        let stores = Stores::default();
        fs.set_kernel_cache(Box::new(stores.clone()));
        let taken = || std::mem::take(&mut *stores.0.lock().unwrap());
        let ino = |n: &str| {
            fs.lookup(crate::overlay::fs::ROOT_INO, OsStr::new(n))
                .unwrap()
                .attr
                .ino
        };
        let open = |i: u64, flags: i32| fs.open(me(), i, flags).unwrap().fh;

        // The whole file, as the lower layer has it, with the first read-only open.
        let s = ino("small");
        let fh = open(s, libc::O_RDONLY);
        fs.offer_pages(fh, libc::O_RDONLY);
        assert_eq!(taken(), vec![(s, small.clone())]);
        fs.release(fh);
        // Not again: the kernel keeps it across opens.
        let fh = open(s, libc::O_RDONLY);
        fs.offer_pages(fh, libc::O_RDONLY);
        assert!(taken().is_empty());
        fs.release(fh);

        // Too big, or nothing in it: left to READs.
        for n in ["big", "empty"] {
            let fh = open(ino(n), libc::O_RDONLY);
            fs.offer_pages(fh, libc::O_RDONLY);
            assert!(taken().is_empty(), "{n}");
            fs.release(fh);
        }

        // Opened twice at once: a READ of the other open could be in flight.
        let p = ino("pair");
        let first = open(p, libc::O_RDONLY);
        let second = open(p, libc::O_RDONLY);
        fs.offer_pages(second, libc::O_RDONLY);
        assert!(taken().is_empty());
        fs.release(first);
        fs.offer_pages(second, libc::O_RDONLY);
        assert_eq!(taken(), vec![(p, b"two opens".to_vec())]);
        fs.release(second);

        // Opened to write (copied up), and read afterwards from the upper layer: the
        // kernel's cache follows the writes, nothing is offered.
        let e = ino("edited");
        let w = open(e, libc::O_WRONLY);
        fs.offer_pages(w, libc::O_WRONLY);
        fs.release(w);
        let r = open(e, libc::O_RDONLY);
        fs.offer_pages(r, libc::O_RDONLY);
        assert!(taken().is_empty());
        fs.release(r);
    }

    #[test]
    fn an_open_waits_while_another_offers() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"x").unwrap();
        let fs = OverlayFs::new(crate::overlay::Options::new(
            vec![t.path().to_path_buf()],
            None,
            None,
        ))
        .unwrap();
        let i = fs
            .lookup(crate::overlay::fs::ROOT_INO, OsStr::new("f"))
            .unwrap()
            .attr
            .ino;
        let node = fs.node(i).unwrap();
        node.pages.store(OFFERING, Ordering::SeqCst);
        let opened = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let fh = fs.open(me(), i, libc::O_RDONLY).unwrap().fh;
                opened.store(true, Ordering::SeqCst);
                fs.release(fh);
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(
                !opened.load(Ordering::SeqCst),
                "the open went on during an offer"
            );
            node.pages.store(SETTLED, Ordering::SeqCst);
        });
        assert!(opened.load(Ordering::SeqCst));
    }
}
