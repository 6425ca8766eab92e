//! A blocking ZooKeeper client for tests that drive processes, and the async helpers under it.

use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError, Stat};

use super::PATIENCE;

/// Session timeout requested by [`Zk`] clients.
pub const CLIENT_SESSION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A blocking ZooKeeper client for tests that drive processes.
pub struct Zk {
    rt: tokio::runtime::Runtime,
    pub client: Client,
}

impl Zk {
    pub fn connect(connect: &str) -> Zk {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let client = rt.block_on(zk_client(connect));
        Zk { rt, client }
    }

    /// A client that authenticates with `connector` (digest auth, SASL) before its session.
    pub fn connect_with(connect: &str, connector: zookeeper_client::Connector) -> Zk {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let client = rt
            .block_on(connector.with_session_timeout(CLIENT_SESSION_TIMEOUT).connect(connect))
            .unwrap_or_else(|e| panic!("cannot connect to ZooKeeper at {connect}: {e}"));
        Zk { rt, client }
    }

    /// Deletes `path`, returning the server's answer.
    pub fn try_delete(&self, path: &str) -> Result<(), zookeeper_client::Error> {
        self.rt.block_on(self.client.delete(path, None))
    }

    /// The ACL of `path` as `scheme:id=perms` strings (perms as ZooKeeper's bits).
    pub fn acl(&self, path: &str) -> Vec<String> {
        let (acls, _) = self.rt.block_on(self.client.get_acl(path)).unwrap_or_else(|e| panic!("get_acl({path}): {e}"));
        acls.iter().map(|a| format!("{}:{}={}", a.auth_id().scheme(), a.auth_id().id(), a.permission())).collect()
    }

    pub fn children(&self, path: &str) -> Vec<String> {
        self.rt.block_on(children(&self.client, path))
    }

    pub fn data(&self, path: &str) -> Option<(Vec<u8>, Stat)> {
        match self.rt.block_on(self.client.get_data(path)) {
            Ok(r) => Some(r),
            Err(zookeeper_client::Error::NoNode) => None,
            Err(e) => panic!("get_data({path}): {e}"),
        }
    }

    pub fn delete(&self, path: &str) {
        self.rt.block_on(self.client.delete(path, None)).unwrap_or_else(|e| panic!("delete({path}): {e}"));
    }

    pub fn mkdir(&self, path: &str) {
        self.rt.block_on(mkdir_p(&self.client, path));
    }

    /// Creates an ephemeral sequential node `prefix<seq>` owned by this client's session.
    pub fn create_ephemeral_seq(&self, prefix: &str, data: &[u8]) -> String {
        let opts = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
        let (_, seq) = self.rt.block_on(self.client.create(prefix, data, &opts)).unwrap();
        format!("{prefix}{seq}")
    }

    pub fn create_persistent(&self, path: &str, data: &[u8]) {
        let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
        self.rt.block_on(self.client.create(path, data, &opts)).unwrap();
    }

    /// Creates `n` persistent, empty children `<parent>/<prefix><i>`, pipelined.
    pub fn create_many(&self, parent: &str, prefix: &str, n: usize) {
        let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
        let paths: Vec<String> = (0..n).map(|i| format!("{parent}/{prefix}{i:05}")).collect();
        for batch in paths.chunks(1000) {
            let creates: Vec<_> = batch.iter().map(|p| self.client.create(p, b"", &opts)).collect();
            for (r, p) in self.rt.block_on(futures::future::join_all(creates)).into_iter().zip(batch) {
                r.unwrap_or_else(|e| panic!("create {p}: {e}"));
            }
        }
    }

    /// Waits until `path` has exactly `n` children; returns them.
    pub fn wait_children(&self, path: &str, n: usize) -> Vec<String> {
        let mut last = Vec::new();
        super::wait_until(PATIENCE, &format!("{path} to have {n} children"), || {
            last = self.children(path);
            last.len() == n
        });
        last
    }
}

/// Connects a ZooKeeper client (session timeout ~10 s, capped by the server's
/// `maxSessionTimeout`). Needs a tokio runtime; panics if no session can be established.
pub async fn zk_client(connect: &str) -> Client {
    zk_client_with_timeout(connect, CLIENT_SESSION_TIMEOUT).await
}

/// [`zk_client`] with an explicit session timeout.
pub async fn zk_client_with_timeout(connect: &str, session_timeout: std::time::Duration) -> Client {
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
