//! Kerberos (SASL GSSAPI) against a real MIT KDC and a Kerberized ZooKeeper server
//! (`support::kerberos`): the ticket cache and the keytab, the ACL identity with and without
//! the server stripping the realm, each failure's message, a ticket that expires while the
//! command runs, and a silent partition.
//!
//! Every zklock gets the bed's `krb5.conf` (`KRB5_CONFIG`) and a ticket cache of its own
//! (`KRB5CCNAME`, a file in the test's temp dir).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

use crate::support::kerberos::{skew_ticket_cache, KerberizedZk, ServerSettings, REALM, SERVER_PRINCIPAL};
use crate::support::proxy::{Mode, Proxy};

use crate::support::*;

/// How a zklock gets its Kerberos tickets.
enum Creds<'a> {
    /// The ticket cache alone.
    Cache(&'a Path),
    /// The keytab (`KRB5_CLIENT_KTNAME`), and the ticket cache MIT's library keeps its tickets in.
    Keytab(&'a Path, &'a Path),
}

/// zklock with `ZKLOCK_AUTH=kerberos`, pointed at the bed's realm.
fn zklock_as(bed: &KerberizedZk, connect: &str, creds: &Creds) -> Command {
    let mut c = zklock(connect);
    c.env("ZKLOCK_AUTH", "kerberos").env_remove("ZKLOCK_TLS_CA");
    match creds {
        Creds::Cache(cc) => bed.env(&mut c, cc),
        Creds::Keytab(keytab, cc) => {
            bed.env(&mut c, cc);
            c.env("KRB5_CLIENT_KTNAME", keytab);
        }
    }
    c
}

fn run_as(bed: &KerberizedZk, creds: &Creds, lock: &str, opts: &[&str], argv: &[&str]) -> Command {
    run_at(bed, &bed.server.connect_string(), creds, lock, opts, argv)
}

fn run_at(bed: &KerberizedZk, connect: &str, creds: &Creds, lock: &str, opts: &[&str], argv: &[&str]) -> Command {
    let mut c = zklock_as(bed, connect, creds);
    c.arg("run").arg("--server-tick").arg(format!("{}ms", bed.server.tick().as_millis()));
    c.args(opts).arg(lock).arg("--").args(argv);
    c
}

fn status_as(bed: &KerberizedZk, creds: Option<&Creds>, lock: &str) -> Output {
    let mut c = match creds {
        Some(creds) => zklock_as(bed, &bed.server.connect_string(), creds),
        None => {
            let mut c = zklock(&bed.server.connect_string());
            c.env_remove("ZKLOCK_AUTH");
            c
        }
    };
    c.arg("status").arg("--json").arg(lock);
    output(c)
}

/// Deletes `path` as the owner of the tickets in `ccache`, from a child process (the Kerberos
/// library reads its configuration and ticket cache from the environment, which a test must
/// not change under the other threads): this test binary, running [`delete_helper`].
fn delete_as(bed: &KerberizedZk, ccache: &Path, path: &str) -> String {
    let mut c = Command::new(std::env::current_exe().unwrap());
    bed.env(&mut c, ccache);
    c.args(["--exact", "kerberos::delete_helper", "--nocapture", "--test-threads=1"])
        .env("ZKLOCK_IT_KRB_DELETE", format!("{}\n{path}", bed.server.connect_string()));
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split_once("delete: ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("the delete helper said nothing: {text}{}", String::from_utf8_lossy(&out.stderr)))
        .to_owned()
}

/// Not a test of its own: [`delete_as`] runs it in a child process with `ZKLOCK_IT_KRB_DELETE`
/// set to the connect string and the path; it prints the server's answer to a delete made over
/// SASL GSSAPI with the child's tickets. Without that variable it does nothing.
#[test]
fn delete_helper() {
    let Ok(what) = std::env::var("ZKLOCK_IT_KRB_DELETE") else { return };
    let (connect, path) = what.split_once('\n').unwrap();
    let connector = zookeeper_client::Client::connector().with_sasl(zookeeper_client::SaslOptions::gssapi());
    let zk = Zk::connect_with(connect, connector);
    match zk.try_delete(path) {
        Ok(()) => println!("delete: ok"),
        Err(e) => println!("delete: {e:?}"),
    }
}

fn gate_argv(gate: &Gate) -> Vec<String> {
    gate.argv()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A keytab file holding the format's header and no keys.
fn empty_keytab(dir: &Path) -> PathBuf {
    let path = dir.join("empty.keytab");
    std::fs::write(&path, [5u8, 2]).unwrap();
    path
}

#[test]
fn ticket_cache_and_keytab_authenticate_and_creator_acls_keep_another_principal_out() {
    let bed = KerberizedZk::start(ServerSettings::default());
    let dir = TempDir::new().unwrap();
    let (alice_cc, bob_cc, keytab_cc) =
        (dir.path().join("alice.cc"), dir.path().join("bob.cc"), dir.path().join("kt.cc"));
    bed.kdc.kinit(&bed.alice_keytab, "alice", &alice_cc, "10m");
    bed.kdc.kinit(&bed.bob_keytab, "bob", &bob_cc, "10m");
    let (alice, bob) = (Creds::Cache(&alice_cc), Creds::Cache(&bob_cc));
    let lock = "/locks/krb";

    // The ticket cache after kinit; a keytab, with no ticket beforehand (cron).
    let out = output(run_as(&bed, &alice, lock, &[], &["echo", "from the ticket cache"]));
    assert_eq!((code(&out), stdout(&out).as_str()), (0, "from the ticket cache\n"), "{}", stderr(&out));
    assert!(!keytab_cc.exists());
    let out =
        output(run_as(&bed, &Creds::Keytab(&bed.alice_keytab, &keytab_cc), lock, &[], &["echo", "from the keytab"]));
    assert_eq!((code(&out), stdout(&out).as_str()), (0, "from the keytab\n"), "{}", stderr(&out));
    assert!(bed.kdc.has_valid_ticket(&keytab_cc), "the keytab's tickets are kept in the ticket cache");

    // creator+read (the default with credentials): the Kerberos identity, full principal.
    let zk = Zk::connect(&bed.server.connect_string());
    let gate = Gate::new(dir.path(), "a");
    let child = gate.hold(run_as(&bed, &alice, lock, &[], &strs(&gate_argv(&gate))));
    let nodes = zk.children(lock);
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let node = format!("{lock}/{}", nodes[0]);
    for path in [&node, &lock.to_string()] {
        let acl = zk.acl(path);
        assert!(acl.contains(&format!("sasl:alice@{REALM}=ALL")), "{path}: {acl:?}");
        assert!(acl.contains(&"world:anyone=READ".to_string()), "{path}: {acl:?}");
    }
    // Bob can neither delete the node nor join the lock; he is told why, by name.
    assert_eq!(delete_as(&bed, &bob_cc, &node), "NoAuth");
    let out = output(run_as(&bed, &bob, lock, &["-n"], &["echo", "ran"]));
    assert_fails(&out, &format!("not authorised to create a lock node under {lock}: the ACL of {lock} is sasl:alice@{REALM}=cdrwa, world:anyone=r"));
    assert!(stderr(&out).contains(&format!("zklock connected as sasl:bob@{REALM} (Kerberos")), "{}", stderr(&out));
    // Anyone may see who holds it: Bob, and an anonymous client.
    for creds in [Some(&bob), None] {
        let out = status_as(&bed, creds, lock);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(doc["locks"][0]["holder"].is_object(), "{doc}");
    }
    assert_eq!(gate.release(child), 0);
    assert!(zk.children(lock).is_empty());

    // creator: Bob may not even see it; Alice may.
    let lock = "/locks/krb-private";
    let gate = Gate::new(dir.path(), "c");
    let child = gate.hold(run_as(&bed, &alice, lock, &["--acl", "creator"], &strs(&gate_argv(&gate))));
    // Only Alice may list the lock directory: she names the node.
    let out = status_as(&bed, Some(&alice), lock);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let node = format!("{lock}/{}", doc["locks"][0]["holder"]["node"].as_str().unwrap_or_else(|| panic!("{doc}")));
    assert_eq!(delete_as(&bed, &bob_cc, &node), "NoAuth");
    assert_fails(&status_as(&bed, Some(&bob), lock), &format!("not authorised to list {lock}"));
    assert_eq!(gate.release(child), 0);
}

#[test]
fn where_the_server_strips_the_realm_the_acl_names_the_short_name() {
    let bed = KerberizedZk::start(ServerSettings { strip_realm: true });
    let dir = TempDir::new().unwrap();
    let (alice_cc, bob_cc) = (dir.path().join("alice.cc"), dir.path().join("bob.cc"));
    bed.kdc.kinit(&bed.bob_keytab, "bob", &bob_cc, "10m");
    // Alice from her keytab, Bob from his ticket cache.
    let (alice, bob) = (Creds::Keytab(&bed.alice_keytab, &alice_cc), Creds::Cache(&bob_cc));
    let zk = Zk::connect(&bed.server.connect_string());
    for (lock, policy) in [("/locks/short", "creator+read"), ("/locks/short-private", "creator")] {
        let gate = Gate::new(dir.path(), policy);
        let child = gate.hold(run_as(&bed, &alice, lock, &["--acl", policy], &strs(&gate_argv(&gate))));
        let out = output(run_as(&bed, &bob, lock, &["-n"], &["echo", "ran"]));
        assert_fails(&out, &format!("not authorised to create a lock node under {lock}"));
        assert!(stderr(&out).contains("zklock connected as sasl:bob (Kerberos"), "{}", stderr(&out));
        let out = status_as(&bed, None, lock);
        if policy == "creator+read" {
            assert_eq!(code(&out), 0, "{}", stderr(&out));
            let node = format!("{lock}/{}", zk.children(lock)[0]);
            assert_eq!(zk.acl(&node), ["sasl:alice=ALL", "world:anyone=READ"]);
            assert_eq!(delete_as(&bed, &bob_cc, &node), "NoAuth");
        } else {
            assert_fails(&out, &format!("not authorised to list {lock}"));
        }
        assert_eq!(gate.release(child), 0, "{policy}");
    }
}

#[test]
fn each_kerberos_failure_is_one_line_naming_what_to_do() {
    let bed = KerberizedZk::start(ServerSettings::default());
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let lock = "/locks/krb-fail";
    let zk = Zk::connect(&bed.server.connect_string());
    // A ticket that expires soon; the other cases run meanwhile.
    let expired_cc = d.join("expired.cc");
    bed.kdc.kinit(&bed.alice_keytab, "alice", &expired_cc, "2s");
    // A keytab holding an old key of carol's: the KDC has a newer one.
    bed.kdc.add_principal("carol", "");
    let old_carol = bed.kdc.keytab("carol", "carol-old.keytab");
    bed.kdc.keytab("carol", "carol.keytab");
    let unreadable = d.join("unreadable.keytab");
    std::fs::copy(&bed.alice_keytab, &unreadable).unwrap();
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o000)).unwrap();
    let valid_cc = d.join("valid.cc");
    bed.kdc.kinit(&bed.alice_keytab, "alice", &valid_cc, "10m");
    let skewed_cc = d.join("skewed.cc");
    // Fifteen minutes off: beyond the KDC's five, within the ticket's hour.
    bed.kdc.kinit(&bed.alice_keytab, "alice", &skewed_cc, "1h");
    skew_ticket_cache(&skewed_cc, 900);
    let (missing, empty) = (d.join("missing.keytab"), empty_keytab(d));
    let nothing = d.join("nothing.cc");
    let run = |creds: &Creds, opts: &[&str]| output(run_as(&bed, creds, lock, opts, &["echo", "ran"]));

    let shown = |p: &Path| p.display().to_string();
    let cases: Vec<(Output, String)> = vec![
        (run(&Creds::Cache(&nothing), &[]), format!("no Kerberos ticket in the ticket cache FILE:{} (KRB5CCNAME): run kinit", shown(&nothing))),
        (run(&Creds::Keytab(&missing, &nothing), &[]), format!("KRB5_CLIENT_KTNAME names the keytab {}, which does not exist", shown(&missing))),
        (run(&Creds::Keytab(&empty, &nothing), &[]), format!("the keytab {} (KRB5_CLIENT_KTNAME) holds no keys", shown(&empty))),
        (
            run(&Creds::Keytab(&old_carol, &nothing), &[]),
            format!("the KDC refused the keytab's key for carol@{REALM} (an old key, or a principal the KDC does not know) or no KDC answered; `kinit -k -t {} carol@{REALM}` says which", shown(&old_carol)),
        ),
        (
            run(&Creds::Cache(&valid_cc), &["--kerberos-service", "zk"]),
            "the KDC knows no server principal for service 'zk' on host '127.0.0.1' (the KDC's words at the end name the principal it looked up, with the host as Kerberos canonicalised it): give the servers' principal with --kerberos-service SERVICE/HOST".into(),
        ),
        (run(&Creds::Cache(&valid_cc), &["--kerberos-service", "zk"]), format!("Server zk/localhost@{REALM} not found in Kerberos database")),
        (run(&Creds::Cache(&skewed_cc), &[]), "the KDC refused our clock: it differs from the KDC's by more than the allowed skew (5 minutes by default): synchronise this host's clock (NTP) (".into()),
        (run(&Creds::Cache(&valid_cc), &["--kerberos-service", "zookeeper@OTHER.REALM"]), "give SERVICE or SERVICE/HOST, without a realm".into()),
    ];
    for (out, needle) in &cases {
        assert_fails(out, needle);
        assert_eq!(stdout(out), "", "the command must not run");
    }
    let mut plain = zklock(&bed.server.connect_string());
    plain.env("ZKLOCK_AUTH", "sasl-digest:alice:pw").args(["run", "--kerberos-service", "zk", lock, "--", "true"]);
    assert_fails(&output(plain), "--kerberos-service needs Kerberos credentials");
    let mut with_password = zklock(&bed.server.connect_string());
    with_password.env("ZKLOCK_AUTH", "kerberos:alice:secret").args(["run", lock, "--", "true"]);
    let out = output(with_password);
    assert_fails(&out, "ZKLOCK_AUTH: write just 'kerberos'");
    assert!(!stderr(&out).contains("secret"), "{}", stderr(&out));

    // A keytab zklock may not read: as root, zklock runs as nobody.
    let mut c = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_zklock")]);
        c.env("ZKLOCK_ZK", bed.server.connect_string()).env("ZKLOCK_AUTH", "kerberos");
        bed.env(&mut c, &nothing);
        c.env("KRB5_CLIENT_KTNAME", &unreadable);
        c
    } else {
        zklock_as(&bed, &bed.server.connect_string(), &Creds::Keytab(&unreadable, &nothing))
    };
    c.args(["run", lock, "--", "echo", "ran"]).stdin(std::process::Stdio::null());
    assert_fails(
        &output(c),
        &format!("cannot read the keytab {} (KRB5_CLIENT_KTNAME): permission denied", shown(&unreadable)),
    );

    // The expired ticket; then the same with a keytab that lacks its principal.
    bed.kdc.wait_expired(&expired_cc);
    assert_fails(
        &run(&Creds::Cache(&expired_cc), &[]),
        &format!("the Kerberos ticket of alice@{REALM} in the ticket cache FILE:{} (KRB5CCNAME) has expired: run kinit again", shown(&expired_cc)),
    );
    assert_fails(
        &run(&Creds::Keytab(&bed.bob_keytab, &expired_cc), &[]),
        &format!("the Kerberos ticket of alice@{REALM} in the ticket cache FILE:{} has expired, and the keytab {} (KRB5_CLIENT_KTNAME) lacks that principal (it holds bob@{REALM})", shown(&expired_cc), shown(&bed.bob_keytab)),
    );

    // A server whose keytab lacks its principal's current key refuses the ticket the KDC
    // issued for it.
    bed.kdc.kadmin(&format!("cpw -randkey {SERVER_PRINCIPAL}"));
    let out = run(&Creds::Cache(&valid_cc), &[]);
    assert_fails(
        &out,
        &format!("authentication failed: ZooKeeper at {} refused our Kerberos ticket", bed.server.connect_string()),
    );
    assert!(stderr(&out).contains("the server's keytab lacks that principal's current key"), "{}", stderr(&out));

    // A KDC that does not answer (a ticket-granting ticket in the cache, no service ticket yet).
    let fresh_cc = d.join("fresh.cc");
    bed.kdc.kinit(&bed.alice_keytab, "alice", &fresh_cc, "10m");
    bed.kdc.stop();
    let out = run(&Creds::Cache(&fresh_cc), &["--connect-timeout", "1h"]);
    assert_fails(
        &out,
        &format!(
            "no KDC of the realm answered: check that the KDC runs and the kdc lines of {}",
            shown(&bed.kdc.krb5_conf())
        ),
    );
    assert!(stderr(&out).contains(&format!("Cannot contact any KDC for realm '{REALM}'")), "{}", stderr(&out));
    assert!(zk.data(lock).is_none(), "nothing may be created when Kerberos refuses");
}

/// A ticket that expires while the command runs: the session lives on; a reconnect (the
/// server restarts) authenticates again from a keytab, but not from a ticket cache, where it
/// is a lost lock: the command is stopped and zklock exits 124.
#[test]
fn after_the_ticket_expires_a_reconnect_works_with_a_keytab_and_loses_the_lock_with_a_ticket_cache() {
    let opts = ZkOptions { max_session_timeout_ms: Some(20_000), ..ZkOptions::default() };
    let mut bed = KerberizedZk::start_with(ServerSettings::default(), opts);
    bed.kdc.add_principal("carol", "-maxlife \"3 seconds\"");
    let carol_keytab = bed.kdc.keytab("carol", "carol.keytab");
    let dir = TempDir::new().unwrap();
    let (alice_cc, carol_cc) = (dir.path().join("alice.cc"), dir.path().join("carol.cc"));
    bed.kdc.kinit(&bed.alice_keytab, "alice", &alice_cc, "3s");
    let (cache_gate, keytab_gate) = (Gate::new(dir.path(), "cache"), Gate::new(dir.path(), "keytab"));
    let mut cache_holder = cache_gate.hold(run_as(
        &bed,
        &Creds::Cache(&alice_cc),
        "/locks/expiring-cache",
        &["-v", "--session-timeout", "10s"],
        &strs(&gate_argv(&cache_gate)),
    ));
    let mut keytab_holder = keytab_gate.hold(run_as(
        &bed,
        &Creds::Keytab(&carol_keytab, &carol_cc),
        "/locks/expiring-keytab",
        &["-v", "--session-timeout", "20s"],
        &strs(&gate_argv(&keytab_gate)),
    ));
    bed.kdc.wait_expired(&alice_cc);
    bed.kdc.wait_expired(&carol_cc);
    // The sessions outlive their tickets.
    let zk = Zk::connect(&bed.server.connect_string());
    assert_eq!(zk.children("/locks/expiring-cache").len(), 1);
    assert!(alive(cache_holder.id() as i32) && alive(keytab_holder.id() as i32));

    bed.server.restart();
    // The ticket cache cannot authenticate the reconnect: the lock is lost.
    let status = wait_status(&mut cache_holder);
    let mut err = String::new();
    std::io::Read::read_to_string(cache_holder.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(124), "{err}");
    assert!(err.contains("lost /locks/expiring-cache while the command ran"), "{err}");
    // -v shows why it could not reconnect, in the Kerberos library's words.
    assert!(err.contains("Ticket expired"), "{err}");
    // The keytab gets a new ticket and the session goes on, its command still running.
    // The keytab gets a new ticket for the reconnect, and the session goes on: its command
    // still runs after the other's was stopped, and ends when it will.
    let zk = Zk::connect(&bed.server.connect_string());
    assert_eq!(zk.children("/locks/expiring-keytab").len(), 1);
    assert!(keytab_holder.try_wait().unwrap().is_none(), "the keytab's holder must still run");
    std::fs::write(&keytab_gate.go, "").unwrap();
    let status = wait_status(&mut keytab_holder);
    let mut err = String::new();
    std::io::Read::read_to_string(keytab_holder.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("reconnected to ZooKeeper; verifying our lock node"), "{err}");
    assert!(err.contains("released /locks/expiring-keytab"), "{err}");
    assert!(zk.children("/locks/expiring-keytab").is_empty());
}

/// A silent partition of a Kerberized holder: its command is dead before the waiter's starts,
/// and the holder exits 124, as without Kerberos (the safety deadline does not depend on the
/// authentication).
#[test]
fn a_silent_partition_over_kerberos_stops_the_holder_before_the_waiter_starts() {
    let _turn = crate::support::serial();
    let bed = KerberizedZk::start(ServerSettings::default());
    let dir = TempDir::new().unwrap();
    let cc = dir.path().join("alice.cc");
    bed.kdc.kinit(&bed.alice_keytab, "alice", &cc, "10m");
    let alice = Creds::Cache(&cc);
    let proxy = Proxy::to_port("holder", bed.server.port());
    let lock = "/locks/krb-partition";
    let pid_file = dir.path().join("holder.pid");
    let holder_argv =
        ["sh".to_string(), "-c".into(), format!("echo $$ > '{}'; while :; do sleep 0.02; done", pid_file.display())];
    let opts = ["-v", "--session-timeout", "4s"];
    let mut holder = run_at(&bed, &proxy.connect_string(), &alice, lock, &opts, &strs(&holder_argv));
    holder.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let mut holder = holder.spawn().unwrap();
    let holder_pid = read_pid(&pid_file);
    // The waiter's command says whether the holder's command was still alive when it started.
    let check = format!(
        "st=$(cut -d' ' -f3 /proc/{holder_pid}/stat 2>/dev/null); if [ -z \"$st\" ] || [ \"$st\" = Z ]; then echo after; else echo OVERLAP; fi"
    );
    let mut waiter = run_as(&bed, &alice, lock, &opts, &["sh", "-c", &check]);
    waiter.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let waiter = waiter.spawn().unwrap();
    Zk::connect(&bed.server.connect_string()).wait_children(lock, 2);

    proxy.set_mode(Mode::Drop);
    let waited = wait_output(waiter);
    proxy.set_mode(Mode::Pass);
    assert_eq!((code(&waited), stdout(&waited).as_str()), (0, "after\n"), "{}", stderr(&waited));
    let status = wait_status(&mut holder);
    let mut err = String::new();
    std::io::Read::read_to_string(holder.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(124), "{err}");
    assert!(err.contains("no heartbeat confirmed"), "{err}");
}
