//! A real registry for the tests: Debian's `docker-registry` (the reference distribution
//! registry) on 127.0.0.1 with a temporary storage dir, optionally behind htpasswd basic
//! auth, killed on drop; and raw uploads to it, for content layerfs would not push.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released: good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `docker-registry serve`, killed on drop.
pub struct Registry {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    htpasswd: Option<PathBuf>,
}

impl Registry {
    /// Start one with storage under `dir`; with `user`, basic auth (htpasswd, bcrypt).
    pub fn start(dir: &Path, user: Option<(&str, &str)>) -> Registry {
        fs::create_dir_all(dir).unwrap();
        let htpasswd = user.map(|(u, p)| {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .expect("htpasswd (apache2-utils) is needed: run scripts/deps");
            assert!(out.status.success(), "htpasswd failed");
            let f = dir.join("htpasswd");
            fs::write(&f, out.stdout).unwrap();
            f
        });
        let mut r = Registry {
            port: free_port(),
            dir: dir.to_path_buf(),
            child: None,
            htpasswd,
        };
        r.restart();
        r
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Start (again) on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        let auth = match &self.htpasswd {
            Some(f) => format!(
                "auth:\n  htpasswd:\n    realm: layerfs-test\n    path: {}\n",
                f.display()
            ),
            None => String::new(),
        };
        let cfg = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{}\n{auth}",
            self.dir.join("data").display(),
            self.port
        );
        let cfg_path = self.dir.join("config.yml");
        fs::write(&cfg_path, cfg).unwrap();
        let log = fs::File::create(self.dir.join("registry.log")).unwrap();
        let mut cmd = Command::new("docker-registry");
        // It takes REGISTRY_* variables as configuration (REGISTRY_AUTH_FILE would be
        // read as an auth provider): give it none.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .arg("serve")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry is needed: run scripts/deps");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(mut s) = TcpStream::connect(self.addr()) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the registry did not start: {}",
                fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The value of header `name` in an HTTP head.
pub(crate) fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// One raw HTTP/1.1 request to 127.0.0.1; returns the status and the head.
fn raw_http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Upload a blob to a registry directly (for content layerfs would not push).
pub fn put_blob(addr: &str, repo: &str, data: &[u8]) {
    let (status, head) = raw_http(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        b"",
    );
    assert_eq!(status, 202, "{head}");
    let loc = header(&head, "location").unwrap().to_string();
    let path = loc
        .strip_prefix(&format!("http://{addr}"))
        .unwrap_or(&loc)
        .to_string();
    let digest = format!(
        "sha256%3A{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data))
    );
    let sep = if path.contains('?') { '&' } else { '?' };
    let (status, head) = raw_http(
        addr,
        "PUT",
        &format!("{path}{sep}digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        data,
    );
    assert_eq!(status, 201, "{head}");
}

/// Put an OCI manifest under a tag (or digest) directly.
pub fn put_manifest(addr: &str, repo: &str, tag: &str, manifest: &[u8]) {
    put_typed(
        addr,
        repo,
        tag,
        "application/vnd.oci.image.manifest.v1+json",
        manifest,
    );
}

/// Put an OCI image index under a tag directly.
pub fn put_index(addr: &str, repo: &str, tag: &str, index: &[u8]) {
    put_typed(
        addr,
        repo,
        tag,
        "application/vnd.oci.image.index.v1+json",
        index,
    );
}

fn put_typed(addr: &str, repo: &str, tag: &str, media_type: &str, body: &[u8]) {
    let (status, head) = raw_http(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Content-Type", media_type)],
        body,
    );
    assert_eq!(status, 201, "{head}");
}
