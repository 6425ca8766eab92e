//! Secured ZooKeeper servers for the tests: certificates made with `openssl` and a trust
//! store with `keytool` (Java 17), a TLS server (`secureClientPort`, Netty), and a SASL server
//! (DIGEST-MD5 users in a JAAS file). Each server keeps a plain client port too, for the
//! readiness probe and for the tests' own checks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tempfile::TempDir;

use super::{free_ports, ZkOptions, ZkServer};

/// Password of every key and trust store.
const STORE_PASSWORD: &str = "changeit";

/// A test PKI: a CA, a server certificate for 127.0.0.1/localhost signed by it, a client
/// certificate signed by it, and a "rogue" client certificate signed by another CA.
pub struct Certs {
    dir: TempDir,
}

fn run(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (install openssl and a JDK): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    fn make() -> Certs {
        let dir = TempDir::with_prefix("zklock-it-certs-").unwrap();
        let d = dir.path();
        let ca = |name: &str, cn: &str| {
            let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
            let args = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3", "-subj", cn, "-keyout", &key];
            run(d, "openssl", &[&args[..], &["-out", &pem]].concat());
        };
        ca("ca", "/CN=zklock test CA");
        ca("other-ca", "/CN=another CA");
        let leaf = |name: &str, ca: &str, usage: &str| {
            let ext = format!(
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
                 keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"
            );
            std::fs::write(d.join(format!("{name}.ext")), ext).unwrap();
            let (key, csr, pem, ext) =
                (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
            let subj = format!("/CN={name}");
            run(d, "openssl", &["req", "-newkey", "rsa:2048", "-nodes", "-subj", &subj, "-keyout", &key, "-out", &csr]);
            let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
            run(
                d,
                "openssl",
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &ca_pem,
                    "-CAkey",
                    &ca_key,
                    "-CAcreateserial",
                    "-days",
                    "3",
                    "-out",
                    &pem,
                    "-extfile",
                    &ext,
                ],
            );
        };
        leaf("server", "ca", "serverAuth");
        leaf("client", "ca", "clientAuth");
        leaf("rogue", "other-ca", "clientAuth");
        let pass = format!("pass:{STORE_PASSWORD}");
        run(
            d,
            "openssl",
            &[
                "pkcs12",
                "-export",
                "-in",
                "server.pem",
                "-inkey",
                "server.key",
                "-certfile",
                "ca.pem",
                "-name",
                "server",
                "-out",
                "server.p12",
                "-passout",
                &pass,
            ],
        );
        run(
            d,
            "keytool",
            &[
                "-importcert",
                "-noprompt",
                "-alias",
                "ca",
                "-file",
                "ca.pem",
                "-keystore",
                "trust.p12",
                "-storetype",
                "PKCS12",
                "-storepass",
                STORE_PASSWORD,
            ],
        );
        Certs { dir }
    }

    /// One set per test binary.
    pub fn shared() -> &'static Certs {
        static CERTS: OnceLock<Certs> = OnceLock::new();
        CERTS.get_or_init(Certs::make)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `--tls-ca <ca.pem>`, as strings for a command line.
    pub fn ca_args(&self) -> Vec<String> {
        vec!["--tls-ca".into(), self.path("ca.pem").display().to_string()]
    }

    /// `--tls-ca`, `--tls-cert` and `--tls-key` for the client signed by our CA (`client`)
    /// or by another one (`rogue`).
    pub fn mtls_args(&self, who: &str) -> Vec<String> {
        let mut args = self.ca_args();
        args.extend([
            "--tls-cert".into(),
            self.path(&format!("{who}.pem")).display().to_string(),
            "--tls-key".into(),
            self.path(&format!("{who}.key")).display().to_string(),
        ]);
        args
    }
}

/// A standalone server with a plain client port and a TLS one. `client_auth` is ZooKeeper's
/// `ssl.clientAuth`: `none`, `want` or `need`.
pub struct TlsServer {
    pub server: ZkServer,
    pub secure_port: u16,
}

impl TlsServer {
    pub fn start(client_auth: &str) -> TlsServer {
        TlsServer::start_with(client_auth, ZkOptions::default())
    }

    pub fn start_with(client_auth: &str, mut opts: ZkOptions) -> TlsServer {
        let certs = Certs::shared();
        let secure_port = free_ports(1)[0];
        opts.extra_config.extend([
            format!("secureClientPort={secure_port}"),
            "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory".into(),
            format!("ssl.keyStore.location={}", certs.path("server.p12").display()),
            format!("ssl.keyStore.password={STORE_PASSWORD}"),
            format!("ssl.trustStore.location={}", certs.path("trust.p12").display()),
            format!("ssl.trustStore.password={STORE_PASSWORD}"),
            format!("ssl.clientAuth={client_auth}"),
        ]);
        TlsServer { server: ZkServer::start_with(opts), secure_port }
    }

    /// `127.0.0.1:<secure port>`.
    pub fn secure_connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.secure_port)
    }
}

/// A standalone server that authenticates SASL DIGEST-MD5 users `alice` (password
/// `alice-secret`) and `bob` (`bob-secret`).
pub struct SaslServer {
    pub server: ZkServer,
    _jaas: TempDir,
}

impl SaslServer {
    pub fn start() -> SaslServer {
        let jaas = TempDir::with_prefix("zklock-it-jaas-").unwrap();
        let file = jaas.path().join("jaas.conf");
        std::fs::write(
            &file,
            "Server {\n    org.apache.zookeeper.server.auth.DigestLoginModule required\n    \
             user_alice=\"alice-secret\"\n    user_bob=\"bob-secret\";\n};\n",
        )
        .unwrap();
        let opts = ZkOptions {
            extra_config: vec!["authProvider.1=org.apache.zookeeper.server.auth.SASLAuthenticationProvider".into()],
            jvm_args: vec![format!("-Djava.security.auth.login.config={}", file.display())],
            ..ZkOptions::default()
        };
        SaslServer { server: ZkServer::start_with(opts), _jaas: jaas }
    }
}
