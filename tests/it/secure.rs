//! Secured ZooKeeper: digest and SASL credentials, the ACLs of the nodes zklock creates, TLS
//! and mutual TLS, each against real servers (digest needs no server configuration, so those
//! tests share the binary's server under a top-level path of their own: zklock creates the
//! missing parents with the lock's ACL).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use tempfile::TempDir;
use zookeeper_client::{Client, SaslOptions};

use crate::support::secure::{Certs, SaslServer, TlsServer};
use crate::support::*;
use crate::support::{shared_zk, ZkServer};

/// A lock path under a top-level node of its own.
fn secure_path(name: &str) -> (String, String) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let top = format!("/secure-{name}-{}", &id[..8]);
    (top.clone(), format!("{top}/lock"))
}

/// An auth file with `mode`.
fn auth_file(dir: &TempDir, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn zklock_at(connect: &str, auth: Option<&str>) -> Command {
    let mut c = zklock(connect);
    c.env_remove("ZKLOCK_AUTH").env_remove("ZKLOCK_TLS_CA").env_remove("ZKLOCK_TLS_CERT").env_remove("ZKLOCK_TLS_KEY");
    if let Some(auth) = auth {
        c.env("ZKLOCK_AUTH", auth);
    }
    c
}

/// `zklock run --server-tick <tick> OPTS LOCK -- ARGV` as `auth` (ZKLOCK_AUTH).
fn run_as(server: &ZkServer, connect: &str, auth: Option<&str>, lock: &str, opts: &[&str], argv: &[&str]) -> Command {
    let mut c = zklock_at(connect, auth);
    c.arg("run").arg("--server-tick").arg(format!("{}ms", server.tick().as_millis()));
    c.args(opts).arg(lock).arg("--").args(argv);
    c
}

fn status_as(connect: &str, auth: Option<&str>, opts: &[&str], lock: &str) -> Output {
    let mut c = zklock_at(connect, auth);
    c.arg("status").args(opts).arg(lock);
    output(c)
}

fn digest(user: &str, password: &str) -> Zk {
    let connector = Client::connector().with_auth("digest", format!("{user}:{password}").as_bytes());
    Zk::connect_with(&shared_zk().connect_string(), connector)
}

#[test]
fn credentials_must_be_private_and_well_formed_and_nothing_is_created_otherwise() {
    let zk = Zk::connect(&shared_zk().connect_string());
    let server = shared_zk();
    let connect = server.connect_string();
    let dir = TempDir::new().unwrap();
    let (top, lock) = secure_path("badauth");
    let shown = auth_file(&dir, "shown", "digest:alice:pw\n", 0o644);
    let group = auth_file(&dir, "group", "digest:alice:pw\n", 0o640);
    let no_password = auth_file(&dir, "nopw", "digest:alice\n", 0o600);
    let kerberos = auth_file(&dir, "krb", "kerberos:alice:pw\n", 0o600);
    let empty = auth_file(&dir, "empty", "# nothing here\n\n", 0o600);
    let two = auth_file(&dir, "two", "digest:a:b\ndigest:c:d\n", 0o600);
    let cases: Vec<(Vec<String>, Option<&str>, &str)> = vec![
        (vec!["--auth-file".into(), shown.display().to_string()], None, "is readable by group or others (mode 644)"),
        (vec!["--auth-file".into(), group.display().to_string()], None, "chmod 600"),
        (vec!["--auth-file".into(), no_password.display().to_string()], None, "expected SCHEME:USER:PASSWORD"),
        (vec!["--auth-file".into(), kerberos.display().to_string()], None, "write just 'kerberos'"),
        (vec!["--auth-file".into(), empty.display().to_string()], None, "holds no credentials"),
        (vec!["--auth-file".into(), two.display().to_string()], None, "holds 2 credential lines"),
        (vec!["--auth-file".into(), dir.path().join("missing").display().to_string()], None, "cannot read --auth-file"),
        (vec![], Some("digest:alice"), "ZKLOCK_AUTH: expected SCHEME:USER:PASSWORD"),
        (vec![], Some("digest::pw"), "must not be empty"),
        (vec!["--acl".into(), "creator".into()], None, "--acl creator needs an identity"),
        (vec!["--acl".into(), "creator+read".into()], None, "--acl creator+read needs an identity"),
        (vec!["--acl".into(), "world".into()], None, "invalid value 'world'"),
    ];
    for (opts, env, needle) in cases {
        let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
        let out = output(run_as(server, &connect, env, &lock, &opts, &["echo", "ran"]));
        assert_fails(&out, needle);
        assert_eq!(stdout(&out), "", "{opts:?}: the command must not run");
        let out = status_as(&connect, env, &opts, &lock);
        assert_eq!(code(&out), 125, "status {opts:?}: {}", stderr(&out));
    }
    // The password never shows, whatever fails.
    let out = output(run_as(server, &connect, None, &lock, &["--auth-file", shown.to_str().unwrap()], &["true"]));
    assert!(!stderr(&out).contains("pw"), "{}", stderr(&out));
    assert!(zk.data(&top).is_none(), "nothing may be created when the credentials are refused");
}

#[test]
fn digest_creator_read_lets_others_see_the_lock_but_neither_delete_nor_queue() {
    let server = shared_zk();
    let connect = server.connect_string();
    let dir = TempDir::new().unwrap();
    let (top, lock) = secure_path("digest");
    let alice = auth_file(&dir, "alice", "digest:alice:alice-pw\n", 0o600);
    let alice_opt = ["--auth-file", alice.to_str().unwrap(), "--label", "alice's job"];
    let gate = Gate::new(dir.path(), "a");
    let argv = gate.argv();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let child = gate.hold(run_as(server, &connect, None, &lock, &alice_opt, &argv));

    let bob = digest("bob", "bob-pw");
    let nodes = bob.children(&lock);
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let node = format!("{lock}/{}", nodes[0]);
    // The default with credentials is creator+read, on the node and the lock directory; the
    // parent created above it also lets anyone create (their own lock directories).
    for path in [&node, &lock, &top] {
        let acl = bob.acl(path);
        assert_eq!(acl.len(), if path == &top { 3 } else { 2 }, "{path}: {acl:?}");
        assert!(acl.iter().any(|a| a.starts_with("digest:alice:") && a.ends_with("=ALL")), "{path}: {acl:?}");
        assert!(acl.contains(&"world:anyone=READ".to_string()), "{path}: {acl:?}");
        assert_eq!(acl.contains(&"world:anyone=CREATE".to_string()), path == &top, "{path}: {acl:?}");
    }

    // Bob, and anyone, can see who holds it.
    for auth in [Some("digest:bob:bob-pw"), None] {
        let out = status_as(&connect, auth, &["--json"], &lock);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["locks"][0]["holder"]["label"], "alice's job", "{doc}");
    }
    // Bob can neither delete the lock node nor queue behind it; he is told why.
    assert_eq!(bob.try_delete(&node), Err(zookeeper_client::Error::NoAuth));
    let out = output(run_as(server, &connect, Some("digest:bob:bob-pw"), &lock, &["-n"], &["echo", "ran"]));
    assert_fails(
        &out,
        &format!("not authorised to create a lock node under {lock}: the ACL of {lock} is digest:alice:"),
    );
    assert!(stderr(&out).contains("world:anyone=r; zklock connected as digest:bob"), "{}", stderr(&out));
    // Alice with a wrong password is another identity to digest: refused the same way.
    let out = output(run_as(server, &connect, Some("digest:alice:wrong"), &lock, &["-n"], &["true"]));
    assert_fails(&out, "not authorised to create a lock node");
    assert_eq!(bob.children(&lock), [nodes[0].clone()], "refused contenders leave no node");

    assert_eq!(gate.release(child), 0);
    assert!(bob.children(&lock).is_empty());
    // Alice, with the right password, runs again.
    let out = output(run_as(server, &connect, Some("digest:alice:alice-pw"), &lock, &[], &["echo", "again"]));
    assert_eq!((code(&out), stdout(&out).as_str()), (0, "again\n"), "{}", stderr(&out));
}

#[test]
fn digest_open_acl_lets_anyone_delete_and_creator_hides_the_lock() {
    let server = shared_zk();
    let connect = server.connect_string();
    let dir = TempDir::new().unwrap();
    let bob = digest("bob", "bob-pw");

    // --acl open: anyone may delete the lock node, and the holder then stops its command.
    let (_, lock) = secure_path("open");
    let gate = Gate::new(dir.path(), "o");
    let argv = gate.argv();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut child = gate.hold(run_as(server, &connect, Some("digest:alice:pw"), &lock, &["--acl", "open"], &argv));
    let node = format!("{lock}/{}", bob.children(&lock)[0]);
    assert_eq!(bob.acl(&node), ["world:anyone=ALL"]);
    assert_eq!(bob.try_delete(&node), Ok(()));
    assert_eq!(wait_status(&mut child).code(), Some(124), "deleted from outside: the lock is lost");

    // --acl creator: others cannot even read; status says so and names the node.
    let (_, lock) = secure_path("creator");
    let gate = Gate::new(dir.path(), "c");
    let argv = gate.argv();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let child = gate.hold(run_as(server, &connect, Some("digest:alice:pw"), &lock, &["--acl", "creator"], &argv));
    let out = status_as(&connect, Some("digest:bob:bob-pw"), &[], &lock);
    assert_fails(&out, &format!("not authorised to list {lock}: the ACL of {lock} is not readable by us either"));
    let out = status_as(&connect, Some("digest:alice:pw"), &[], &lock);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(gate.release(child), 0);
}

#[test]
fn sasl_users_authenticate_and_a_wrong_password_is_refused_at_connect() {
    let sasl = SaslServer::start();
    let server = &sasl.server;
    let connect = server.connect_string();
    let dir = TempDir::new().unwrap();
    let lock = "/locks/sasl";
    let alice = auth_file(&dir, "alice", "sasl-digest:alice:alice-secret\n", 0o600);
    let alice_opt = ["--auth-file", alice.to_str().unwrap()];

    let out = output(run_as(server, &connect, None, lock, &alice_opt, &["echo", "authenticated"]));
    assert_eq!((code(&out), stdout(&out).as_str()), (0, "authenticated\n"), "{}", stderr(&out));

    let out = output(run_as(server, &connect, Some("sasl-digest:alice:wrong"), lock, &[], &["echo", "ran"]));
    assert_fails(&out, &format!("authentication failed: ZooKeeper at {connect} refused sasl:alice"));
    assert_eq!(stdout(&out), "");
    let out = output(run_as(server, &connect, Some("sasl-digest:mallory:x"), lock, &[], &["true"]));
    assert_fails(&out, "refused sasl:mallory");

    let gate = Gate::new(dir.path(), "s");
    let argv = gate.argv();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let child = gate.hold(run_as(server, &connect, None, lock, &alice_opt, &argv));
    let bob = Zk::connect_with(&connect, Client::connector().with_sasl(SaslOptions::digest_md5("bob", "bob-secret")));
    let nodes = bob.children(lock);
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let node = format!("{lock}/{}", nodes[0]);
    assert!(bob.acl(&node).contains(&"sasl:alice=ALL".to_string()), "{:?}", bob.acl(&node));
    let out = status_as(&connect, Some("sasl-digest:bob:bob-secret"), &["--json"], lock);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(bob.try_delete(&node), Err(zookeeper_client::Error::NoAuth));
    assert_eq!(gate.release(child), 0);
    assert!(bob.children(lock).is_empty());
}

#[test]
fn tls_run_and_status_verify_the_server_and_mismatches_are_named_at_once() {
    let certs = Certs::shared();
    let tls = TlsServer::start("want");
    let server = &tls.server;
    let secure = tls.secure_connect_string();
    let zk = Zk::connect(&server.connect_string());
    let dir = TempDir::new().unwrap();
    let lock = "/locks/tls";
    let ca = certs.ca_args();
    let ca: Vec<&str> = ca.iter().map(String::as_str).collect();

    let out = output(run_as(server, &secure, None, lock, &ca, &["echo", "over tls"]));
    assert_eq!((code(&out), stdout(&out).as_str()), (0, "over tls\n"), "{}", stderr(&out));
    // The connect-string form: tcp+tls:// for this server, --tls-ca still names the CA.
    let mixed = format!("tcp+tls://{secure}");
    let out = output(run_as(server, &mixed, None, lock, &ca, &["echo", "tcp+tls"]));
    assert_eq!((code(&out), stdout(&out).as_str()), (0, "tcp+tls\n"), "{}", stderr(&out));
    // The CA also from the environment.
    let mut cmd = run_as(server, &secure, None, lock, &[], &["echo", "env"]);
    cmd.env("ZKLOCK_TLS_CA", certs.path("ca.pem"));
    let out = output(cmd);
    assert_eq!((code(&out), stdout(&out).as_str()), (0, "env\n"), "{}", stderr(&out));

    let gate = Gate::new(dir.path(), "t");
    let argv = gate.argv();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let child = gate.hold(run_as(server, &secure, None, lock, &ca, &argv));
    let out = status_as(&secure, None, &ca, lock);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("{lock}: held by ")), "{}", stdout(&out));
    assert_eq!(gate.release(child), 0);

    // Refusals: each one line, exit 125, long before a connect timeout of an hour.
    let long = ["--connect-timeout", "1h"];
    let other_ca = certs.path("other-ca.pem");
    let wrong_ca = [&long[..], &["--tls-ca", other_ca.to_str().unwrap()]].concat();
    let out = output(run_as(server, &secure, None, lock, &wrong_ca, &["echo", "ran"]));
    assert_fails(&out, &format!("zklock refused the certificate of {secure}: it is not signed by the CA in --tls-ca"));
    let out = output(run_as(server, &secure, None, lock, &long, &["echo", "ran"]));
    assert_fails(&out, &format!("{secure} is a TLS port and zklock spoke plain text to it"));
    let plain_with_tls = [&long[..], &ca[..]].concat();
    let out = output(run_as(server, &server.connect_string(), None, lock, &plain_with_tls, &["echo", "ran"]));
    assert_fails(&out, "does not speak TLS: it closed the connection on the TLS handshake");
    let out = status_as(&secure, None, &long, lock);
    assert_fails(&out, "is a TLS port");
    let out = output(run_as(server, &format!("tcp+tls://{secure}"), None, lock, &[], &["true"]));
    assert_fails(&out, "asks for TLS (tcp+tls://): give --tls-ca");
    assert!(zk.children(lock).is_empty(), "{:?}", zk.children(lock));
}

#[test]
fn mutual_tls_needs_a_client_certificate_signed_by_the_ca_and_gives_an_identity() {
    let certs = Certs::shared();
    let tls = TlsServer::start("need");
    let server = &tls.server;
    let secure = tls.secure_connect_string();
    let lock = "/locks/mtls";
    let long = ["--connect-timeout".to_string(), "1h".into()];

    let no_cert = [&long[..], &certs.ca_args()].concat();
    let no_cert: Vec<&str> = no_cert.iter().map(String::as_str).collect();
    let out = output(run_as(server, &secure, None, lock, &no_cert, &["echo", "ran"]));
    assert_fails(&out, "refused the TLS handshake: the server requires a client certificate");
    let rogue = [&long[..], &certs.mtls_args("rogue")].concat();
    let rogue: Vec<&str> = rogue.iter().map(String::as_str).collect();
    let out = output(run_as(server, &secure, None, lock, &rogue, &["echo", "ran"]));
    assert_fails(&out, "the server did not accept our client certificate");
    assert!(stderr(&out).contains("rogue.pem"), "{}", stderr(&out));

    // The certificate is an identity (x509): --acl creator works with it alone.
    let good = [&certs.mtls_args("client")[..], &["--acl".into(), "creator".into()]].concat();
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    let dir = TempDir::new().unwrap();
    let gate = Gate::new(dir.path(), "m");
    let argv = gate.argv();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let child = gate.hold(run_as(server, &secure, None, lock, &good, &argv));
    // status creates nothing: it takes no --acl.
    let out = status_as(&secure, None, &good, lock);
    assert_fails(&out, "unexpected argument '--acl'");
    let mtls = certs.mtls_args("client");
    let mtls: Vec<&str> = mtls.iter().map(String::as_str).collect();
    let out = status_as(&secure, None, &mtls, lock);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = status_as(&server.connect_string(), None, &[], lock);
    assert_fails(&out, &format!("not authorised to list {lock}"));
    assert_eq!(gate.release(child), 0);
    let out = status_as(&secure, None, &mtls, lock);
    assert_eq!(code(&out), 1, "free again, no node left: {}", stdout(&out));
    assert!(stdout(&out).contains(&format!("{lock}: free")), "{}", stdout(&out));
}

/// With `creator+read` and `creator`, the parents zklock creates above a lock directory give
/// anyone CREATE: a second identity makes its own lock directory beside ours, and still can
/// neither delete our lock node nor join our lock (both need rights on our lock directory).
#[test]
fn shared_parents_let_other_identities_make_their_own_locks_but_not_touch_ours() {
    let server = shared_zk();
    let connect = server.connect_string();
    let dir = TempDir::new().unwrap();
    let (alice, bob) = (digest("alice", "pw"), digest("bob", "bob-pw"));
    for policy in ["creator+read", "creator"] {
        let (top, _) = secure_path("parents");
        let (ours, theirs) = (format!("{top}/team/alice"), format!("{top}/team/bob"));
        let gate = Gate::new(dir.path(), policy);
        let argv = gate.argv();
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let child = gate.hold(run_as(server, &connect, Some("digest:alice:pw"), &ours, &["--acl", policy], &argv));
        for parent in [top.clone(), format!("{top}/team")] {
            let acl = alice.acl(&parent);
            assert!(acl.iter().any(|a| a.starts_with("digest:alice:") && a.ends_with("=ALL")), "{policy}: {acl:?}");
            assert!(acl.contains(&"world:anyone=CREATE".to_string()), "{policy} {parent}: {acl:?}");
        }
        let lock_acl = alice.acl(&ours);
        assert!(!lock_acl.iter().any(|a| a.contains("CREATE") && a.starts_with("world:")), "{policy}: {lock_acl:?}");

        // Bob's first run anywhere under the shared parents works.
        let out = output(run_as(
            server,
            &connect,
            Some("digest:bob:bob-pw"),
            &theirs,
            &["--acl", policy],
            &["echo", "bob ran"],
        ));
        assert_eq!((code(&out), stdout(&out).as_str()), (0, "bob ran\n"), "{policy}: {}", stderr(&out));
        // ... but he cannot join our lock, nor delete our node.
        let out = output(run_as(server, &connect, Some("digest:bob:bob-pw"), &ours, &["-n"], &["true"]));
        assert_fails(&out, &format!("not authorised to create a lock node under {ours}"));
        let node = format!("{ours}/{}", alice.children(&ours)[0]);
        assert_eq!(bob.try_delete(&node), Err(zookeeper_client::Error::NoAuth), "{policy}");
        assert_eq!(gate.release(child), 0, "{policy}: our command ran to its end");
    }
}
