//! Shared helpers for the `it` integration-test crate: real ZooKeeper servers
//! ([`ZkServer`], [`shared_zk`], [`ZkEnsemble`]), a ZooKeeper client and small polling
//! utilities.
//!
//! Not every test module uses every helper.
#![allow(dead_code)]

pub mod freeze;
pub mod kerberos;
pub mod proxy;
pub mod secure;
mod spawner;
mod zk;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError};

#[allow(unused_imports)] // re-exported for other test modules
pub use zk::{four_letter, four_letter_timeout, free_ports, shared_zk, ZkEnsemble, ZkOptions, ZkServer, READY_TIMEOUT};

/// Session timeout requested by [`zk_client`].
pub const CLIENT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects a ZooKeeper client (session timeout ~10 s, capped by the server's
/// `maxSessionTimeout`). Needs a tokio runtime; panics if no session can be established.
pub async fn zk_client(connect: &str) -> Client {
    zk_client_with_timeout(connect, CLIENT_SESSION_TIMEOUT).await
}

/// [`zk_client`] with an explicit session timeout.
pub async fn zk_client_with_timeout(connect: &str, session_timeout: Duration) -> Client {
    Client::connector()
        .with_session_timeout(session_timeout)
        .connect(connect)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to ZooKeeper at {connect}: {e}"))
}

/// Sorted children of `path`; empty if `path` does not exist. Panics on other errors.
pub async fn children(client: &Client, path: &str) -> Vec<String> {
    match client.list_children(path).await {
        Ok(mut names) => {
            names.sort();
            names
        }
        Err(ZkError::NoNode) => Vec::new(),
        Err(e) => panic!("list_children({path}): {e}"),
    }
}

/// Data of `path`, or `None` if it does not exist. Panics on other errors.
pub async fn get_data(client: &Client, path: &str) -> Option<Vec<u8>> {
    match client.get_data(path).await {
        Ok((data, _)) => Some(data),
        Err(ZkError::NoNode) => None,
        Err(e) => panic!("get_data({path}): {e}"),
    }
}

/// `mkdir -p` for persistent, world-writable nodes.
pub async fn mkdir_p(client: &Client, path: &str) {
    let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
    client.mkdir(path, &opts).await.unwrap_or_else(|e| panic!("mkdir -p {path}: {e}"));
}

/// A fresh lock path, `/it/<name>-<8 hex chars>`, so tests sharing [`shared_zk`] never
/// collide. Neither it nor `/it` is created.
pub fn unique_lock_path(name: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("/it/{name}-{}", &id[..8])
}

/// Polls `f` every 10 ms until it returns true; panics with `what` after `timeout`.
/// Blocks the thread: inside an async test prefer [`wait_until_async`].
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Async [`wait_until`]: polls `f().await` every 10 ms (yielding to the runtime).
pub async fn wait_until_async<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the file at `path` exists and contains `needle`; returns its whole content.
/// Panics after `timeout`, quoting what the file held.
pub fn wait_for_file_line(path: impl AsRef<Path>, needle: &str, timeout: Duration) -> String {
    let path = path.as_ref();
    let mut content = String::new();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            content = String::from_utf8_lossy(&bytes).into_owned();
            if content.contains(needle) {
                return content;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {needle:?} in {}; content:\n{content}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
