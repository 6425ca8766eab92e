//! Smoke tests of the test harness itself (`support`): real ZooKeeper servers start,
//! serve, freeze, restart, form a quorum, and never outlive their owner.

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use zookeeper_client::{Acls, CreateMode};

use crate::support::client::{children, get_data, mkdir_p, zk_client};
use crate::support::{four_letter, shared_zk, unique_lock_path, wait_for_file_line, wait_until, ZkEnsemble, ZkServer};

fn persistent() -> zookeeper_client::CreateOptions<'static> {
    CreateMode::Persistent.with_acls(Acls::anyone_all())
}

/// True once `pid` no longer exists (or is a zombie nobody reaped yet).
fn process_gone(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
        return true;
    }
    // State is the field after the parenthesised command name.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

#[test]
fn shared_server_answers_srvr_standalone() {
    let zk = shared_zk();
    let srvr = four_letter(zk.port(), "srvr");
    assert!(srvr.contains("Mode: standalone"), "srvr answered: {srvr:?}");
    assert_eq!(zk.connect_string(), format!("127.0.0.1:{}", zk.port()));
    assert_eq!(zk.tick(), Duration::from_millis(500));
    assert!(zk.is_running());
    // Same instance every time.
    assert_eq!(shared_zk().pid(), zk.pid());
}

#[tokio::test]
async fn client_creates_and_reads_node() {
    let zk = shared_zk();
    let client = zk_client(&zk.connect_string()).await;
    let dir = unique_lock_path("smoke-create");
    assert!(dir.starts_with("/it/smoke-create-"), "{dir}");
    assert_ne!(dir, unique_lock_path("smoke-create"));

    assert_eq!(children(&client, &dir).await, Vec::<String>::new());
    mkdir_p(&client, &dir).await;
    client.create(&format!("{dir}/b"), b"two", &persistent()).await.unwrap();
    client.create(&format!("{dir}/a"), b"one", &persistent()).await.unwrap();

    assert_eq!(children(&client, &dir).await, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(get_data(&client, &format!("{dir}/a")).await.as_deref(), Some(&b"one"[..]));
    assert_eq!(get_data(&client, &format!("{dir}/missing")).await, None);
}

#[tokio::test]
async fn frozen_server_stalls_requests_until_thawed() {
    let zk = ZkServer::start();
    let client = zk_client(&zk.connect_string()).await;
    client.create("/before", b"", &persistent()).await.unwrap();

    zk.freeze();
    assert!(zk.is_running(), "a frozen server still counts as running");
    let stalled = tokio::time::timeout(Duration::from_secs(1), client.get_data("/before")).await;
    assert!(stalled.is_err(), "request completed on a frozen server: {stalled:?}");

    zk.thaw();
    let done = tokio::time::timeout(Duration::from_secs(10), client.create("/after", b"x", &persistent()))
        .await
        .expect("request still stalled after thaw");
    done.expect("create after thaw");
    assert_eq!(get_data(&client, "/after").await.as_deref(), Some(&b"x"[..]));
}

#[tokio::test]
async fn stop_and_restart_keep_data() {
    let mut zk = ZkServer::start();
    let port = zk.port();
    let first_pid = zk.pid();
    {
        let client = zk_client(&zk.connect_string()).await;
        client.create("/persist", b"hello", &persistent()).await.unwrap();
    }

    zk.stop();
    assert!(!zk.is_running());
    assert!(process_gone(first_pid as i32), "pid {first_pid} survived stop()");
    assert_eq!(four_letter(port, "srvr"), "", "something still answers on the port");

    zk.restart();
    assert!(zk.is_running());
    assert_eq!(zk.port(), port);
    assert_ne!(zk.pid(), first_pid);
    let client = zk_client(&zk.connect_string()).await;
    assert_eq!(get_data(&client, "/persist").await.as_deref(), Some(&b"hello"[..]));
}

#[tokio::test]
async fn ensemble_elects_one_leader_and_accepts_writes() {
    let mut ens = ZkEnsemble::start(3);
    assert_eq!(ens.servers().len(), 3);
    let modes: Vec<String> = ens.servers().iter().map(|s| s.mode().unwrap_or_default()).collect();
    assert_eq!(modes.iter().filter(|m| *m == "leader").count(), 1, "modes: {modes:?}");
    assert_eq!(modes.iter().filter(|m| *m == "follower").count(), 2, "modes: {modes:?}");
    let leader = ens.leader_index().expect("a leader");
    assert_eq!(modes[leader], "leader");
    assert_eq!(ens.connect_string().split(',').count(), 3);

    let client = zk_client(&ens.connect_string()).await;
    client.create("/quorum", b"q", &persistent()).await.unwrap();

    // The write is visible through a follower too.
    let follower = (leader + 1) % 3;
    let other = zk_client(&ens.server(follower).connect_string()).await;
    other.sync("/quorum").await.unwrap();
    assert_eq!(get_data(&other, "/quorum").await.as_deref(), Some(&b"q"[..]));

    // A quorum survives one stopped follower; the restarted member catches up.
    let spare = (leader + 2) % 3;
    ens.server_mut(spare).stop();
    assert!(!ens.server(spare).is_running());
    // (`client` may have been connected to it: write through `other`, on a live follower.)
    other.create("/while-down", b"d", &persistent()).await.unwrap();
    ens.server_mut(spare).restart();
    assert_eq!(ens.server(spare).mode().as_deref(), Some("follower"));
    let late = zk_client(&ens.server(spare).connect_string()).await;
    late.sync("/while-down").await.unwrap();
    assert_eq!(get_data(&late, "/while-down").await.as_deref(), Some(&b"d"[..]));
}

#[test]
fn dropping_a_server_kills_its_jvm() {
    let zk = ZkServer::start();
    let pid = Pid::from_raw(zk.pid() as i32);
    assert_eq!(kill(pid, None), Ok(()));
    drop(zk);
    assert_eq!(kill(pid, None), Err(Errno::ESRCH));
}

#[test]
fn server_outlives_the_thread_that_started_it() {
    // PDEATHSIG is per forking *thread*: the JVM must not die with a test thread.
    let zk = std::thread::spawn(ZkServer::start).join().unwrap();
    std::thread::sleep(Duration::from_millis(200)); // let a (wrong) PDEATHSIG land
    assert!(zk.is_running());
    assert!(four_letter(zk.port(), "srvr").contains("Mode: standalone"));
}

const CHILD_ENV: &str = "ZKLOCK_IT_PDEATHSIG_CHILD";

#[test]
fn jvm_dies_with_a_killed_test_binary() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "harness_smoke::pdeathsig_child", "--ignored", "--nocapture"])
        .env(CHILD_ENV, &pid_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = wait_for_file_line(&pid_file, "\n", Duration::from_secs(40));
    let (jvm, server_dir) = line.trim().split_once(' ').expect("\"<pid> <dir>\"");
    let jvm: i32 = jvm.parse().unwrap();
    assert!(!process_gone(jvm), "JVM {jvm} not running");

    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    wait_until(Duration::from_secs(5), "JVM to die with its test binary", || process_gone(jvm));
    // The killed binary could not clean up its server's temp dir.
    let _ = std::fs::remove_dir_all(server_dir);
}

/// Helper for `jvm_dies_with_a_killed_test_binary`: only acts when run by it.
#[test]
#[ignore = "helper process for jvm_dies_with_a_killed_test_binary"]
fn pdeathsig_child() {
    let Some(pid_file) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let zk = ZkServer::start();
    let line = format!("{} {}\n", zk.pid(), zk.dir().display());
    std::fs::write(&pid_file, line).unwrap();
    std::thread::sleep(Duration::from_secs(60)); // the parent SIGKILLs us long before
}
