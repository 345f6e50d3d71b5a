//! containerd's snapshots gRPC API over the core, on a unix socket (a containerd proxy
//! plugin). The async runtime lives here only: each call runs the synchronous core
//! under one lock on the runtime's blocking pool.

// The crate's trait fixes tonic's `Status` (176 bytes) as the error type.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use containerd_snapshots::api::types::Mount as ApiMount;
use containerd_snapshots::tonic::{self, Code, Status};
use containerd_snapshots::{Info as ApiInfo, Kind as ApiKind, Usage as ApiUsage};

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::snapshotter::mounts::Mount;
use crate::snapshotter::records::Kind;
use crate::snapshotter::snapshots::{Core, Info};

/// The gRPC status containerd maps back to its own errors (`errdefs`).
pub(crate) fn status(e: Error) -> Status {
    let code = match e.kind() {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::InUse => Code::FailedPrecondition,
        ErrorKind::InvalidInput | ErrorKind::Ambiguous => Code::InvalidArgument,
        ErrorKind::Unsupported => Code::Unimplemented,
        _ => Code::Internal,
    };
    Status::new(code, e.message().to_string())
}

fn api_info(i: Info) -> ApiInfo {
    ApiInfo {
        kind: match i.kind {
            Kind::Active => ApiKind::Active,
            Kind::View => ApiKind::View,
            Kind::Committed => ApiKind::Committed,
        },
        name: i.name,
        parent: i.parent,
        labels: i.labels,
        created_at: i.created,
        updated_at: i.updated,
    }
}

fn api_mounts(m: Vec<Mount>) -> Vec<ApiMount> {
    m.into_iter()
        .map(|m| ApiMount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

/// The service: the core behind one lock.
struct Service {
    core: Arc<Mutex<Core>>,
}

impl Service {
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> Result<T> + Send + 'static,
    ) -> std::result::Result<T, Status> {
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = core.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|e| Status::internal(format!("snapshotter call failed: {e}")))?
        .map_err(|e| {
            log::debug!("answering {e}");
            status(e)
        })
    }
}

#[tonic::async_trait]
impl containerd_snapshots::Snapshotter for Service {
    type Error = Status;

    async fn stat(&self, key: String) -> std::result::Result<ApiInfo, Status> {
        self.call(move |c| c.stat(&key)).await.map(api_info)
    }

    async fn update(
        &self,
        info: ApiInfo,
        fieldpaths: Option<Vec<String>>,
    ) -> std::result::Result<ApiInfo, Status> {
        self.call(move |c| c.update(&info.name, info.labels, &fieldpaths.unwrap_or_default()))
            .await
            .map(api_info)
    }

    async fn usage(&self, key: String) -> std::result::Result<ApiUsage, Status> {
        let u = self.call(move |c| c.usage(&key)).await?;
        Ok(ApiUsage {
            inodes: u.inodes as i64,
            size: u.size as i64,
        })
    }

    async fn mounts(&self, key: String) -> std::result::Result<Vec<ApiMount>, Status> {
        self.call(move |c| c.mounts(&key)).await.map(api_mounts)
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> std::result::Result<Vec<ApiMount>, Status> {
        self.call(move |c| c.create(&key, &parent, labels, false))
            .await
            .map(api_mounts)
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> std::result::Result<Vec<ApiMount>, Status> {
        self.call(move |c| c.create(&key, &parent, labels, true))
            .await
            .map(api_mounts)
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> std::result::Result<(), Status> {
        self.call(move |c| c.commit(&name, &key, labels)).await
    }

    async fn remove(&self, key: String) -> std::result::Result<(), Status> {
        self.call(move |c| c.remove(&key)).await
    }

    async fn clear(&self) -> std::result::Result<(), Status> {
        let n = self.call(|c| c.cleanup()).await?;
        if n > 0 {
            log::info!("cleanup removed {n} leftovers");
        }
        Ok(())
    }

    type InfoStream = tokio_stream::Iter<std::vec::IntoIter<std::result::Result<ApiInfo, Status>>>;

    async fn list(
        &self,
        _snapshotter: String,
        _filters: Vec<String>,
    ) -> std::result::Result<Self::InfoStream, Status> {
        // Every snapshot: containerd applies the filters of a walk itself.
        let all = self.call(|c| Ok(c.list())).await?;
        Ok(tokio_stream::iter(
            all.into_iter().map(|i| Ok(api_info(i))).collect::<Vec<_>>(),
        ))
    }
}

/// Bind the socket: a socket file nobody answers on is stale and replaced; one that
/// answers belongs to a running snapshotter.
fn bind(address: &Path) -> Result<tokio::net::UnixListener> {
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).ctx(format!("creating {}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(address).is_ok() {
        return Err(Error::in_use(format!(
            "{} is in use: another snapshotter answers there",
            address.display()
        )));
    }
    match std::fs::remove_file(address) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("removing {}", address.display()), e)),
    }
    tokio::net::UnixListener::bind(address).ctx(format!("listening on {}", address.display()))
}

/// Serve until SIGTERM or SIGINT. The snapshots' union mounts stay up.
pub fn serve(core: Core, address: &Path, ready: impl FnOnce()) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .ctx("starting the snapshotter's runtime")?;
    let core = Arc::new(Mutex::new(core));
    rt.block_on(async {
        let listener = bind(address)?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .ctx("handling SIGTERM")?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .ctx("handling SIGINT")?;
        let svc = containerd_snapshots::server(Arc::new(Service { core }));
        ready();
        let res = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                async move {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                },
            )
            .await;
        let _ = std::fs::remove_file(address);
        res.map_err(|e| Error::new(format!("serving on {}: {e}", address.display())))
    })
}
