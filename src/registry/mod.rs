//! Registries: pull and push images over the OCI distribution API, and the credentials
//! for it. Pulled images go into the store through `Store::ingest` (the same verified,
//! staged path as `import`); the store never calls this code.

pub(crate) mod auth;
pub(crate) mod client;
pub(crate) mod lazy;
pub(crate) mod pull;
pub(crate) mod push;
pub(crate) mod reference;

use std::path::PathBuf;

use ureq::http::Method;

use crate::error::{Error, Result};
pub(crate) use auth::Credentials;
pub(crate) use client::Options;
pub(crate) use pull::{PullOptions, pull};
pub(crate) use push::{PushEvent, PushObserver, PushOptions, push};
pub(crate) use reference::ImageRef;

/// A registry named on the command line (`localhost:5000`, `https://reg.example/`,
/// nothing for Docker Hub) as `host[:port]`.
pub(crate) fn registry_host(arg: Option<&str>) -> Result<String> {
    let Some(a) = arg.map(str::trim).filter(|a| !a.is_empty()) else {
        return Ok(reference::DEFAULT_REGISTRY.to_string());
    };
    let rest = a
        .strip_prefix("https://")
        .or_else(|| a.strip_prefix("http://"))
        .unwrap_or(a);
    let host = rest.split('/').next().unwrap_or(rest);
    // Parse a reference on it to check the host the same way.
    let probe = ImageRef::parse(&format!("{host}/x"))
        .map_err(|_| Error::invalid_input(format!("invalid registry \"{a}\"")))?;
    if probe.registry != host
        && !(probe.registry == reference::DEFAULT_REGISTRY && host.contains("docker.io"))
    {
        return Err(Error::invalid_input(format!("invalid registry \"{a}\"")));
    }
    Ok(probe.registry)
}

/// Check credentials against a registry and save them; returns the file written.
pub(crate) fn login(registry: &str, creds: Credentials, opts: Options) -> Result<PathBuf> {
    let probe = ImageRef::parse(&format!("{registry}/x"))?;
    let client = client::Client::new(
        registry,
        probe.api_host(),
        "",
        Vec::new(),
        opts,
        Some(creds.clone()),
    )?;
    let mut resp = client.send(Method::GET, "/v2/", &[], &client::Body::Empty, true)?;
    if !resp.status().is_success() {
        return Err(client.status_error(&format!("login to {registry}"), &mut resp));
    }
    auth::save(registry, &creds)
}

/// Forget the credentials for a registry; returns the files changed.
pub(crate) fn logout(registry: &str) -> Result<Vec<PathBuf>> {
    auth::remove(registry)
}
