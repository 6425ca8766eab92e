//! The floor for zklock's uncontended cycle: exactly zklock's requests (open a session, create
//! the lock node with the listing pipelined behind it, delete it with the close queued behind
//! the delete) in one process, with the same ZooKeeper crate and the same single-threaded tokio
//! runtime, and nothing else: no command, no guard, no deadline thread, no logging, no signal
//! handlers, no parents to create after the first run. `bench/run` builds it
//! (`cargo build --release --example floor`) and measures it beside zklock in figure 1.
//!
//!     floor HOST:PORT LOCK

use zookeeper_client::{Acls, Client, CreateMode};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(connect), Some(lock)) = (args.next(), args.next()) else {
        eprintln!("usage: floor HOST:PORT LOCK");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let code = rt.block_on(async {
        let client = match Client::connector()
            .with_session_timeout(std::time::Duration::from_secs(10))
            .connect(&connect)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("floor: cannot connect: {e}");
                return 1;
            }
        };
        let prefix = format!("{lock}/_c_{}-lock-", uuid::Uuid::new_v4().hyphenated());
        let opts = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
        let creating = client.create(&prefix, b"", &opts);
        let listing = client.list_children(&lock);
        let node = match creating.await {
            Ok((_, seq)) => format!("{prefix}{seq}"),
            Err(zookeeper_client::Error::NoNode) => {
                // The first run on a fresh server: zklock creates the parents, and so does this.
                let parents = CreateMode::Container.with_acls(Acls::anyone_all());
                let _ = client.mkdir(&lock, &parents).await;
                match client.create(&prefix, b"", &opts).await {
                    Ok((_, seq)) => format!("{prefix}{seq}"),
                    Err(e) => {
                        eprintln!("floor: cannot create: {e}");
                        return 1;
                    }
                }
            }
            Err(e) => {
                eprintln!("floor: cannot create: {e}");
                return 1;
            }
        };
        let _ = listing.await;
        let deleting = client.delete(&node, None);
        let mut watcher = client.state_watcher();
        drop(client);
        let deleted = deleting.await;
        while !watcher.changed().await.is_terminated() {}
        i32::from(deleted.is_err())
    });
    std::process::exit(code);
}
