//! A Kerberos test bed: a real MIT KDC (Debian's `krb5-kdc`) for a realm of its own on a free
//! loopback port, its principals and keytabs made with `kdb5_util` and `kadmin.local`, and a
//! ZooKeeper server that authenticates SASL GSSAPI clients with its own keytab (a JAAS
//! `Server` section using `Krb5LoginModule`).
//!
//! Everything lives in temp dirs; the KDC and the JVM are stopped by their PID when dropped
//! (and die with the test binary through `PR_SET_PDEATHSIG`). Every client, Java included, is
//! pointed at the bed's own `krb5.conf` (`KRB5_CONFIG`, `-Djava.security.krb5.conf`): the
//! machine's `/etc/krb5.conf` names another realm.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::spawner::{self, SpawnSpec};
use super::{free_ports, ZkOptions, ZkServer, READY_TIMEOUT};

/// The realm of every bed (each has its own KDC and database).
pub const REALM: &str = "ZKLOCK.TEST";
/// The principal the ZooKeeper server runs as: MIT clients ask for `zookeeper@127.0.0.1`,
/// which Kerberos canonicalises to `zookeeper/localhost` (127.0.0.1 reverses to localhost).
pub const SERVER_PRINCIPAL: &str = "zookeeper/localhost";

/// A KDC program: in `/usr/sbin` (Debian's krb5-kdc and krb5-admin-server), which a user's
/// `PATH` may lack; else from `PATH`.
fn sbin(name: &str) -> PathBuf {
    let path = Path::new("/usr/sbin").join(name);
    if path.exists() {
        path
    } else {
        PathBuf::from(name)
    }
}

/// A KDC serving [`REALM`] on a free loopback port (UDP and TCP).
pub struct Kdc {
    dir: TempDir,
    port: u16,
    child: Mutex<Option<Child>>,
}

impl Kdc {
    /// Creates the realm's database and starts `krb5kdc -n`; returns once it accepts TCP
    /// connections.
    pub fn start() -> Kdc {
        let dir = TempDir::with_prefix("zklock-it-kdc-").unwrap();
        let port = free_ports(1)[0];
        let d = dir.path();
        std::fs::write(
            d.join("krb5.conf"),
            format!(
                "[libdefaults]\n    default_realm = {REALM}\n    dns_lookup_kdc = false\n    dns_lookup_realm = false\n\
                 [realms]\n    {REALM} = {{\n        kdc = 127.0.0.1:{port}\n    }}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("kdc.conf"),
            format!(
                "[kdcdefaults]\n    kdc_ports = {port}\n    kdc_tcp_ports = {port}\n\
                 [realms]\n    {REALM} = {{\n        database_name = {db}\n        key_stash_file = {stash}\n        \
                 acl_file = {acl}\n        max_life = 1h\n    }}\n[logging]\n    kdc = FILE:{log}\n",
                db = d.join("principal").display(),
                stash = d.join("stash").display(),
                acl = d.join("kadm5.acl").display(),
                log = d.join("kdc.log").display(),
            ),
        )
        .unwrap();
        let kdc = Kdc { dir, port, child: Mutex::new(None) };
        let out = kdc.tool("kdb5_util").args(["create", "-s", "-P", "zklock-master", "-r", REALM]).output();
        let out = out.unwrap_or_else(|e| panic!("cannot run kdb5_util (install krb5-kdc): {e}"));
        assert!(out.status.success(), "kdb5_util create: {}", String::from_utf8_lossy(&out.stderr));
        kdc.spawn();
        kdc
    }

    /// A command for one of the Kerberos tools, pointed at this realm.
    fn tool(&self, program: &str) -> Command {
        let mut c = Command::new(sbin(program));
        c.env("KRB5_CONFIG", self.krb5_conf()).env("KRB5_KDC_PROFILE", self.dir.path().join("kdc.conf"));
        c
    }

    fn spawn(&self) {
        // The spawner gives the child the test binary's environment, which knows no realm: the
        // KDC finds its profile through environment variables, so it is started through `env`.
        let child = spawner::spawn(SpawnSpec {
            program: "env".into(),
            args: vec![
                format!("KRB5_CONFIG={}", self.krb5_conf().display()).into(),
                format!("KRB5_KDC_PROFILE={}", self.dir.path().join("kdc.conf").display()).into(),
                sbin("krb5kdc").into(),
                "-n".into(),
            ],
            cwd: self.dir.path().to_path_buf(),
            log: self.dir.path().join("krb5kdc.out"),
        })
        .unwrap_or_else(|e| panic!("cannot start krb5kdc (install krb5-kdc): {e}"));
        let mut slot = self.child.lock().unwrap();
        *slot = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            if let Some(status) = slot.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("krb5kdc exited ({status}): {}", self.log());
            }
            assert!(Instant::now() < deadline, "krb5kdc not listening on {addr}: {}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("krb5kdc.out"), read("kdc.log"))
    }

    /// The realm's `krb5.conf`, for `KRB5_CONFIG`.
    pub fn krb5_conf(&self) -> PathBuf {
        self.dir.path().join("krb5.conf")
    }

    /// A file in the bed's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `kadmin.local -q QUERY` and returns its output; panics if it reports an error
    /// (it exits 0 even when its command failed).
    pub fn kadmin(&self, query: &str) -> String {
        let out = self
            .tool("kadmin.local")
            .args(["-r", REALM, "-q", query])
            .output()
            .unwrap_or_else(|e| panic!("cannot run kadmin.local (install krb5-admin-server): {e}"));
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let failed = text.lines().any(|l| {
            let l = l.to_lowercase();
            (l.contains("error") || l.contains("while ") || l.contains("not found"))
                && !l.contains("no policy specified")
        });
        assert!(out.status.success() && !failed, "kadmin.local -q {query:?}: {text}");
        text
    }

    /// Makes a principal with a random key; `options` such as `-maxlife "4 seconds"`.
    pub fn add_principal(&self, name: &str, options: &str) {
        self.kadmin(&format!("addprinc -randkey {options} {name}"));
    }

    /// Writes the principal's keys to a new keytab `name` in the bed's directory (a new key
    /// version: older keytabs of the principal stop working).
    pub fn keytab(&self, principal: &str, name: &str) -> PathBuf {
        let path = self.path(name);
        self.kadmin(&format!("ktadd -k {} {principal}", path.display()));
        path
    }

    /// `kinit` for `principal` from its keytab into `ccache`, with a ticket lifetime.
    pub fn kinit(&self, keytab: &Path, principal: &str, ccache: &Path, lifetime: &str) {
        let out = self
            .tool("kinit")
            .env("KRB5CCNAME", format!("FILE:{}", ccache.display()))
            .args(["-l", lifetime, "-k", "-t"])
            .arg(keytab)
            .arg(principal)
            .output()
            .unwrap_or_else(|e| panic!("cannot run kinit (install krb5-user): {e}"));
        assert!(out.status.success(), "kinit {principal}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Whether `ccache` holds a ticket-granting ticket that has not expired (`klist -s`).
    pub fn has_valid_ticket(&self, ccache: &Path) -> bool {
        let out = self.tool("klist").env("KRB5CCNAME", format!("FILE:{}", ccache.display())).arg("-s").output();
        out.is_ok_and(|o| o.status.success())
    }

    /// Waits until the tickets in `ccache` have expired for the Kerberos library too: `klist`
    /// calls a ticket expired from its end time on, the library only after it (times in whole
    /// seconds), so this waits for the next second of the clock as well.
    pub fn wait_expired(&self, ccache: &Path) {
        super::wait_until(READY_TIMEOUT, "the ticket to expire", || !self.has_valid_ticket(ccache));
        let second = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let expired_at = second(SystemTime::now());
        super::wait_until(READY_TIMEOUT, "the next second", || second(SystemTime::now()) > expired_at);
    }

    /// Stops the KDC (SIGKILL by PID), e.g. to test a KDC that does not answer.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

impl Drop for Kdc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sets the KDC time offset of a FILE ticket cache (its header's tag 1): MIT's library adds it
/// to the system clock, so the client's requests look `seconds` off the KDC's clock, as from a
/// host whose clock is wrong.
pub fn skew_ticket_cache(ccache: &Path, seconds: i32) {
    let mut bytes = std::fs::read(ccache).unwrap();
    // Version 0x0504, header length, then tag 1 (length 8): seconds and microseconds.
    assert_eq!(&bytes[..2], &[5, 4], "not a version 4 FILE ccache");
    assert_eq!(&bytes[4..8], &[0, 1, 0, 8], "no KDC time offset tag in the ccache header");
    bytes[8..12].copy_from_slice(&seconds.to_be_bytes());
    std::fs::write(ccache, bytes).unwrap();
}

/// Server-side settings of a [`KerberizedZk`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerSettings {
    /// `kerberos.removeRealmFromPrincipal=true`: ACL ids are `sasl:alice`.
    pub strip_realm: bool,
}

/// A KDC, a ZooKeeper server authenticating SASL GSSAPI clients as [`SERVER_PRINCIPAL`], and
/// two users, `alice` and `bob`, each with a keytab (`alice.keytab`, `bob.keytab`).
pub struct KerberizedZk {
    pub server: ZkServer,
    pub kdc: Kdc,
    pub alice_keytab: PathBuf,
    pub bob_keytab: PathBuf,
}

impl KerberizedZk {
    pub fn start(settings: ServerSettings) -> KerberizedZk {
        KerberizedZk::start_with(settings, ZkOptions::default())
    }

    pub fn start_with(settings: ServerSettings, mut opts: ZkOptions) -> KerberizedZk {
        let kdc = Kdc::start();
        for p in ["alice", "bob", SERVER_PRINCIPAL] {
            kdc.add_principal(p, "");
        }
        let server_keytab = kdc.keytab(SERVER_PRINCIPAL, "zk.keytab");
        let (alice_keytab, bob_keytab) = (kdc.keytab("alice", "alice.keytab"), kdc.keytab("bob", "bob.keytab"));
        let jaas = kdc.path("jaas.conf");
        std::fs::write(
            &jaas,
            format!(
                "Server {{\n    com.sun.security.auth.module.Krb5LoginModule required\n    useKeyTab=true\n    \
                 keyTab=\"{}\"\n    storeKey=true\n    useTicketCache=false\n    doNotPrompt=true\n    \
                 principal=\"{SERVER_PRINCIPAL}@{REALM}\";\n}};\n",
                server_keytab.display()
            ),
        )
        .unwrap();
        opts.extra_config.push("authProvider.1=org.apache.zookeeper.server.auth.SASLAuthenticationProvider".into());
        if settings.strip_realm {
            opts.extra_config.push("kerberos.removeRealmFromPrincipal=true".into());
        }
        opts.jvm_args.extend([
            format!("-Djava.security.auth.login.config={}", jaas.display()),
            format!("-Djava.security.krb5.conf={}", kdc.krb5_conf().display()),
        ]);
        let server = ZkServer::start_with(opts);
        KerberizedZk { server, kdc, alice_keytab, bob_keytab }
    }

    /// Points a zklock (or any MIT Kerberos client) at this realm with the ticket cache
    /// `ccache`, and no client keytab unless the caller sets one.
    pub fn env(&self, cmd: &mut Command, ccache: &Path) {
        cmd.env("KRB5_CONFIG", self.kdc.krb5_conf())
            .env("KRB5CCNAME", format!("FILE:{}", ccache.display()))
            .env_remove("KRB5_CLIENT_KTNAME")
            .env_remove("ZKLOCK_KERBEROS_SERVICE");
    }
}
