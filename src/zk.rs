//! The one place that talks to ZooKeeper about connections: the options built once from the
//! command line ([`ConnectOptions`]), connecting within a time limit, closing, and retrying a
//! request across a lost connection. `run` and `status` both use it; the lock recipe takes the
//! ACL it must put on the nodes it creates from here.

use std::future::Future;
use std::time::Duration;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use tracing::{debug, warn};
use zookeeper_client::{Acl, Acls, CheckWriteError, Client, Permission, SaslOptions, SessionState, TlsOptions};

use crate::clock::Clock;

mod probe;

/// What the command line asks of the connection, as plain values.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The connect string: `host:port[,host:port...][/chroot]`.
    pub connect: String,
    pub session_timeout: Duration,
    pub connect_timeout: Duration,
    pub auth_file: Option<PathBuf>,
    /// `None`: the default (creator+read with credentials, else open).
    pub acl: Option<AclPolicy>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `SERVICE[/HOST]`: the Kerberos server principal (default `zookeeper`, each server's host).
    pub kerberos_service: Option<String>,
}

/// The ACL of every node zklock creates: lock nodes and the parents it creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclPolicy {
    /// world:anyone:cdrwa.
    Open,
    /// auth::cdrwa: our identity alone.
    Creator,
    /// auth::cdrwa and world:anyone:r.
    CreatorRead,
}

impl AclPolicy {
    /// The name given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            AclPolicy::Open => "open",
            AclPolicy::Creator => "creator",
            AclPolicy::CreatorRead => "creator+read",
        }
    }
}

/// The environment variable that may hold the credentials themselves (for CI secrets).
pub const AUTH_ENV: &str = "ZKLOCK_AUTH";

/// `creator+read`: everything for our identity, read for anyone.
static CREATOR_READ: [Acl; 2] =
    [Acl::new_const(Permission::ALL, "auth", ""), Acl::new_const(Permission::READ, "world", "anyone")];

/// The parents zklock creates above a lock directory (`/locks` in `/locks/report`) under
/// `creator`: ours, and anyone may create their own lock directories in them.
static PARENTS_CREATOR: [Acl; 2] =
    [Acl::new_const(Permission::ALL, "auth", ""), Acl::new_const(Permission::CREATE, "world", "anyone")];

/// The same under `creator+read`: anyone may also read them.
static PARENTS_CREATOR_READ: [Acl; 3] = [
    Acl::new_const(Permission::ALL, "auth", ""),
    Acl::new_const(Permission::READ, "world", "anyone"),
    Acl::new_const(Permission::CREATE, "world", "anyone"),
];

/// How long closing the session may take before zklock exits anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Who zklock is to the server. The password never appears in `Debug` or in messages.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// ZooKeeper's `digest` scheme (`addauth digest user:password`): any password is accepted
    /// at connect time, and a wrong one shows only as NoAuth on nodes of the right identity.
    Digest { user: String, password: String },
    /// SASL DIGEST-MD5, checked by the server against its JAAS users at connect time.
    SaslDigest { user: String, password: String },
    /// SASL GSSAPI: MIT Kerberos' default credentials (the ticket cache, or the client keytab
    /// that `KRB5_CLIENT_KTNAME` names), checked by the server at connect time.
    Kerberos(Kerberos),
}

/// The environment variable naming the client keytab (MIT Kerberos' own).
pub const KEYTAB_ENV: &str = "KRB5_CLIENT_KTNAME";

/// The Kerberos side of the credentials: where the tickets come from, and which server
/// principal to ask a ticket for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kerberos {
    /// The client keytab file (`KRB5_CLIENT_KTNAME`), checked before connecting.
    pub keytab: Option<PathBuf>,
    /// The principals of the keytab's keys, in order: MIT's library gets tickets for the first
    /// one (unless the ticket cache names another).
    pub keytab_principals: Vec<String>,
    /// The server principal's service part (`zookeeper`, as the Java client's
    /// `zookeeper.sasl.client.username`).
    pub service: String,
    /// Its host part; `None`: the host of each server in the connect string.
    pub host: Option<String>,
}

impl Kerberos {
    /// The server principal asked for when connecting to `host`, as Kerberos writes it before
    /// canonicalising the host name: `zookeeper/127.0.0.1`.
    fn target(&self, host: &str) -> String {
        format!("{}/{}", self.service, self.host.as_deref().unwrap_or(host))
    }

    /// The server principal for messages where the server is not known: `zookeeper/<host>`.
    fn service_principal(&self) -> String {
        format!("{}/{}", self.service, self.host.as_deref().unwrap_or("<host>"))
    }

    /// Where the tickets come from, for messages.
    fn source(&self) -> String {
        match &self.keytab {
            Some(k) => format!("the keytab {} ({KEYTAB_ENV})", k.display()),
            None => match std::env::var("KRB5CCNAME").ok().filter(|v| !v.is_empty()) {
                Some(cc) => format!("the ticket cache {cc} (KRB5CCNAME)"),
                None => "the default ticket cache".into(),
            },
        }
    }

    /// Reads `KRB5_CLIENT_KTNAME` and checks the keytab it names: that it exists, that we
    /// may read it, and that it holds a key.
    fn from_env(service: Option<&str>) -> Result<Kerberos> {
        let (service, host) = match service {
            None => ("zookeeper".to_owned(), None),
            Some(s) => parse_service(s)?,
        };
        let mut k = Kerberos { service, host, ..Kerberos::default() };
        let Some(name) = std::env::var_os(KEYTAB_ENV).filter(|v| !v.is_empty()) else {
            return Ok(k);
        };
        let name = name.to_string_lossy().into_owned();
        // FILE: and WRFILE: name files; other kinds (MEMORY:, ...) are the library's business.
        let path = match name.split_once(':') {
            Some(("FILE" | "WRFILE", path)) => path.to_owned(),
            Some((kind, _)) if !kind.contains('/') => return Ok(k),
            _ => name.clone(),
        };
        let path = PathBuf::from(path);
        let shown = path.display();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("{KEYTAB_ENV} names the keytab {shown}, which does not exist: make it (kadmin: ktadd -k {shown} PRINCIPAL) or fix {KEYTAB_ENV}")
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                bail!("cannot read the keytab {shown} ({KEYTAB_ENV}): permission denied; it must be readable by the user zklock runs as (and by nobody else: chmod 600)")
            }
            Err(e) => bail!("cannot read the keytab {shown} ({KEYTAB_ENV}): {e}"),
        };
        match keytab_principals(&bytes) {
            None => bail!("{shown} ({KEYTAB_ENV}) is not a Kerberos keytab"),
            Some(p) if p.is_empty() => {
                bail!("the keytab {shown} ({KEYTAB_ENV}) holds no keys: add the principal's (kadmin: ktadd -k {shown} PRINCIPAL)")
            }
            Some(p) => k.keytab_principals = p,
        }
        k.keytab = Some(path);
        Ok(k)
    }
}

/// The default principal of the ticket cache, when it is a file (`KRB5CCNAME` of the form
/// `FILE:PATH` or `PATH`, else MIT's default `/tmp/krb5cc_<uid>`) in MIT's format version 3
/// or 4; `None` otherwise.
fn ccache_principal() -> Option<String> {
    let name = std::env::var("KRB5CCNAME").ok().filter(|v| !v.is_empty());
    let path = match name.as_deref() {
        None => format!("/tmp/krb5cc_{}", nix::unistd::getuid()),
        Some(n) => match n.split_once(':') {
            Some(("FILE", p)) => p.to_owned(),
            Some(_) => return None,
            None => n.to_owned(),
        },
    };
    let bytes = std::fs::read(path).ok()?;
    let mut rest: &[u8] = match bytes.get(..2)? {
        [5, 4] => bytes.get(4 + u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]) as usize..)?,
        [5, 3] => bytes.get(2..)?,
        _ => return None,
    };
    let u32_at = |rest: &mut &[u8]| -> Option<usize> {
        let (head, tail) = rest.split_at_checked(4)?;
        *rest = tail;
        Some(u32::from_be_bytes(head.try_into().ok()?) as usize)
    };
    let _name_type = u32_at(&mut rest)?;
    let count = u32_at(&mut rest)?;
    let mut strings = Vec::new();
    for _ in 0..=count {
        let len = u32_at(&mut rest)?;
        let (head, tail) = rest.split_at_checked(len)?;
        strings.push(String::from_utf8_lossy(head).into_owned());
        rest = tail;
    }
    let realm = strings.remove(0);
    Some(format!("{}@{realm}", strings.join("/")))
}

/// `SERVICE[/HOST]` of `--kerberos-service`.
fn parse_service(text: &str) -> Result<(String, Option<String>)> {
    if text.contains('@') {
        bail!(
            "--kerberos-service {text}: give SERVICE or SERVICE/HOST, without a realm; the realm of a server comes from krb5.conf ([domain_realm], else default_realm)"
        );
    }
    let (service, host) = match text.split_once('/') {
        Some((s, h)) => (s, Some(h)),
        None => (text, None),
    };
    if service.is_empty() || host.is_some_and(str::is_empty) {
        bail!(
            "--kerberos-service '{text}': expected SERVICE or SERVICE/HOST, e.g. zookeeper or zookeeper/zk.example.com"
        );
    }
    Ok((service.to_owned(), host.map(str::to_owned)))
}

/// The principals of a keytab file (MIT's format, versions 1 and 2), in order; `None` if the
/// bytes are no keytab.
fn keytab_principals(bytes: &[u8]) -> Option<Vec<String>> {
    let (version, mut rest) = match bytes {
        [5, v @ (1 | 2), rest @ ..] => (*v, rest),
        _ => return None,
    };
    let take = |rest: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        let (head, tail) = (rest.get(..n)?.to_vec(), rest.get(n..)?);
        *rest = tail;
        Some(head)
    };
    let mut out = Vec::new();
    while rest.len() >= 4 {
        let size = i32::from_be_bytes(take(&mut rest, 4)?.try_into().ok()?);
        let mut entry: &[u8] = &take(&mut rest, size.unsigned_abs() as usize)?;
        if size <= 0 {
            continue; // a hole left by a removed entry
        }
        let u16_at = |e: &mut &[u8]| -> Option<usize> {
            let b = take(e, 2)?;
            Some(u16::from_be_bytes([b[0], b[1]]) as usize)
        };
        let mut count = u16_at(&mut entry)?;
        if version == 1 {
            count = count.checked_sub(1)?;
        }
        let len = u16_at(&mut entry)?;
        let realm = String::from_utf8_lossy(&take(&mut entry, len)?).into_owned();
        let mut parts = Vec::new();
        for _ in 0..count {
            let len = u16_at(&mut entry)?;
            parts.push(String::from_utf8_lossy(&take(&mut entry, len)?).into_owned());
        }
        let name = format!("{}@{realm}", parts.join("/"));
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Some(out)
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Credentials {
    /// Parses `digest:USER:PASSWORD`, `sasl-digest:USER:PASSWORD` (the password may contain
    /// colons) or `kerberos`. `source` names where the text came from, for messages.
    pub fn parse(text: &str, source: &str) -> Result<Credentials> {
        let lines: Vec<&str> = text
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .collect();
        let line = match lines.as_slice() {
            [line] => *line,
            [] => bail!(
                "{source} holds no credentials (expected digest:USER:PASSWORD, sasl-digest:USER:PASSWORD or kerberos)"
            ),
            _ => bail!("{source} holds {} credential lines; give exactly one", lines.len()),
        };
        if line.trim() == "kerberos" {
            return Ok(Credentials::Kerberos(Kerberos::default()));
        }
        if line.starts_with("kerberos:") {
            bail!(
                "{source}: write just 'kerberos': the identity is the ticket cache's (kinit) or that of the keytab {KEYTAB_ENV} names, never a password"
            );
        }
        let mut parts = line.splitn(3, ':');
        let (scheme, user, password) = (parts.next().unwrap_or(""), parts.next(), parts.next());
        let (Some(user), Some(password)) = (user, password) else {
            bail!("{source}: expected SCHEME:USER:PASSWORD (digest:USER:PASSWORD or sasl-digest:USER:PASSWORD)")
        };
        if user.is_empty() || password.is_empty() {
            bail!("{source}: the user and the password must not be empty");
        }
        let (user, password) = (user.to_owned(), password.to_owned());
        match scheme {
            "digest" => Ok(Credentials::Digest { user, password }),
            "sasl-digest" | "sasl" => Ok(Credentials::SaslDigest { user, password }),
            other => {
                bail!("{source}: unknown scheme '{}' (expected digest, sasl-digest or kerberos)", other.escape_debug())
            }
        }
    }

    /// Reads the credentials from a file that only its owner may read.
    pub fn from_file(path: &Path) -> Result<Credentials> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read --auth-file {shown}"))?;
        if !meta.is_file() {
            bail!("--auth-file {shown} is not a regular file");
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o044 != 0 {
            bail!("--auth-file {shown} is readable by group or others (mode {mode:03o}); run: chmod 600 {shown}");
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read --auth-file {shown}"))?;
        Credentials::parse(&text, &format!("--auth-file {shown}"))
    }

    /// The identity the server will know us by, e.g. `digest:alice`.
    pub fn describe(&self) -> String {
        match self {
            Credentials::Digest { user, .. } => format!("digest:{user}"),
            Credentials::SaslDigest { user, .. } => format!("sasl:{user}"),
            Credentials::Kerberos(k) => match k.keytab_principals.first() {
                Some(p) => format!("sasl:{p} (Kerberos, {})", k.source()),
                None => format!("Kerberos ({})", k.source()),
            },
        }
    }
}

/// The TLS side of the options: the files, and the client options built from them.
#[derive(Clone)]
pub struct Tls {
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
    options: TlsOptions,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("ca", &self.ca).field("identity", &self.identity).finish()
    }
}

fn read_pem(flag: &str, path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {flag} {}", path.display()))
}

impl Tls {
    fn from_settings(args: &Settings) -> Result<Option<Tls>> {
        let Some(ca) = &args.tls_ca else {
            if args.tls_cert.is_some() {
                bail!("--tls-cert needs --tls-ca: the CA that signed the servers' certificates");
            }
            return Ok(None);
        };
        let pem = read_pem("--tls-ca", ca)?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            bail!("--tls-ca {} holds no PEM certificate", ca.display());
        }
        let mut options = TlsOptions::default()
            .with_pem_ca(&pem)
            .map_err(|e| anyhow!("--tls-ca {}: not a usable PEM certificate: {e}", ca.display()))?;
        let identity = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                let (cert_pem, key_pem) = (read_pem("--tls-cert", cert)?, read_pem("--tls-key", key)?);
                options = options.with_pem_identity(&cert_pem, &key_pem).map_err(|e| {
                    anyhow!(
                        "--tls-cert {} / --tls-key {}: not a usable certificate and key: {e}",
                        cert.display(),
                        key.display()
                    )
                })?;
                Some((cert.clone(), key.clone()))
            }
            _ => None,
        };
        Ok(Some(Tls { ca: ca.clone(), identity, options }))
    }
}

/// Everything needed to open a session, decided once from the command line.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The connect string: `host:port[,host:port...][/chroot]`.
    pub connect: String,
    pub session_timeout: Duration,
    pub connect_timeout: Duration,
    pub credentials: Option<Credentials>,
    pub tls: Option<Tls>,
    /// The ACL policy in force (the default resolved).
    pub policy: AclPolicy,
    /// The ACL of the lock nodes and lock directories zklock creates.
    pub acl: Acls<'static>,
    /// The ACL of the parents it creates above a lock directory: `acl`, and anyone may create
    /// (their own lock directories; deleting ours or joining it needs DELETE or CREATE on it).
    pub parents_acl: Acls<'static>,
}

impl ConnectOptions {
    /// Builds the options from the command line and `ZKLOCK_AUTH`.
    pub fn from_settings(args: &Settings) -> Result<ConnectOptions> {
        let env = std::env::var(AUTH_ENV).ok().filter(|v| !v.is_empty());
        let mut credentials = match (&args.auth_file, env) {
            (Some(path), _) => Some(Credentials::from_file(path)?),
            (None, Some(text)) => Some(Credentials::parse(&text, AUTH_ENV)?),
            (None, None) => None,
        };
        match &mut credentials {
            Some(Credentials::Kerberos(k)) => *k = Kerberos::from_env(args.kerberos_service.as_deref())?,
            _ if args.kerberos_service.is_some() => {
                bail!("--kerberos-service needs Kerberos credentials: the line 'kerberos' in --auth-file or {AUTH_ENV}")
            }
            _ => {}
        }
        let tls = Tls::from_settings(args)?;
        if tls.is_none() && args.connect.contains("tcp+tls://") {
            bail!("the connect string '{}' asks for TLS (tcp+tls://): give --tls-ca, the CA that signed the servers' certificates", args.connect);
        }
        let has_identity = credentials.is_some() || tls.as_ref().is_some_and(|t| t.identity.is_some());
        // With credentials, the safe default: nobody else may delete our lock node, and
        // everyone may still see who holds the lock.
        let policy = args.acl.unwrap_or(if credentials.is_some() { AclPolicy::CreatorRead } else { AclPolicy::Open });
        if policy != AclPolicy::Open && !has_identity {
            bail!(
                "--acl {} needs an identity: credentials (--auth-file or {AUTH_ENV}) or a TLS client certificate (--tls-cert)",
                policy.name()
            );
        }
        let (acl, parents_acl) = match policy {
            AclPolicy::Open => (Acls::anyone_all(), Acls::anyone_all()),
            AclPolicy::Creator => (Acls::creator_all(), Acls::new(&PARENTS_CREATOR)),
            AclPolicy::CreatorRead => (Acls::new(&CREATOR_READ), Acls::new(&PARENTS_CREATOR_READ)),
        };
        Ok(ConnectOptions {
            connect: args.connect.clone(),
            session_timeout: args.session_timeout,
            connect_timeout: args.connect_timeout,
            credentials,
            tls,
            policy,
            acl,
            parents_acl,
        })
    }

    /// Who we are, for messages: `digest:alice`, `a TLS client certificate`, or `anonymous`.
    pub fn identity(&self) -> String {
        match (&self.credentials, self.tls.as_ref().and_then(|t| t.identity.as_ref())) {
            (Some(c), _) => c.describe(),
            (None, Some((cert, _))) => format!("the TLS client certificate {}", cert.display()),
            (None, None) => "anonymous (no credentials)".into(),
        }
    }

    fn connector(&self) -> zookeeper_client::Connector {
        let mut connector = Client::connector().with_session_timeout(self.session_timeout).with_fail_eagerly();
        match &self.credentials {
            Some(Credentials::Digest { user, password }) => {
                connector = connector.with_auth("digest", format!("{user}:{password}").as_bytes());
            }
            Some(Credentials::SaslDigest { user, password }) => {
                connector = connector.with_sasl(SaslOptions::digest_md5(user.clone(), password.clone()));
            }
            Some(Credentials::Kerberos(k)) => {
                let mut options = SaslOptions::gssapi().with_username(k.service.clone());
                if let Some(host) = &k.host {
                    options = options.with_hostname(host.clone());
                }
                connector = connector.with_sasl(options);
            }
            None => {}
        }
        if let Some(tls) = &self.tls {
            connector = connector.with_tls(tls.options.clone());
        }
        connector
    }

    /// Connects within `connect_timeout`, retrying while no server answers. After a failed
    /// attempt, a probe of the servers tells a refusal that retrying cannot mend (a TLS port
    /// reached in plain text or the reverse, a certificate refused) from a server that is not
    /// up yet, so that the former fails at once with its reason.
    pub async fn connect(&self) -> Result<Client> {
        let connector = self.connector();
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let mut last = None;
        let mut note: Option<String> = None;
        loop {
            let secure = self.tls.is_some();
            let attempt = async {
                if secure {
                    connector.clone().secure_connect(&self.connect).await
                } else {
                    connector.clone().connect(&self.connect).await
                }
            };
            let failed_fast = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(zookeeper_client::Error::AuthFailed)) => match &self.credentials {
                    Some(Credentials::Kerberos(k)) => bail!(
                        "authentication failed: ZooKeeper at {} refused our Kerberos ticket ({}), which the KDC issued for its principal {}: the server's keytab lacks that principal's current key (its admins must renew the keytab and restart it), or the server runs as another principal (give it with --kerberos-service)",
                        self.connect,
                        self.identity(),
                        k.service_principal()
                    ),
                    _ => bail!(
                        "authentication failed: ZooKeeper at {} refused {} (wrong user or password, or no such user)",
                        self.connect,
                        self.identity()
                    ),
                },
                Ok(Err(e))
                    if matches!(e, zookeeper_client::Error::NoHosts | zookeeper_client::Error::Timeout)
                        || is_connection_failure(&e) =>
                {
                    debug!("connect attempt failed: {e}");
                    last = Some(e);
                    true
                }
                Ok(Err(zookeeper_client::Error::BadArguments(why))) => {
                    bail!("invalid connect string '{}': {why}", self.connect)
                }
                Ok(Err(e)) => {
                    return Err(e).with_context(|| format!("cannot connect to ZooKeeper at {}", self.connect))
                }
                Err(_) => false,
            };
            if note.is_none() && failed_fast {
                if let Some(Credentials::Kerberos(k)) = &self.credentials {
                    self.probe_kerberos(k, deadline).await?;
                }
                let limit = deadline.saturating_duration_since(tokio::time::Instant::now()).min(probe::PATIENCE);
                note = Some(self.probe(limit).await?);
            }
            if !failed_fast || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        // A server that took the whole time (accepted, then silent) is probed afterwards.
        let note = match note {
            Some(n) => n,
            None => self.probe(probe::PATIENCE / 2).await?,
        };
        let mut why = Vec::new();
        if let Some(e) = last {
            why.push(format!("last error: {e}"));
        }
        if !note.is_empty() {
            why.push(note);
        }
        Err(anyhow!(
            "cannot connect to ZooKeeper at {} within {}{}",
            self.connect,
            humantime::format_duration(self.connect_timeout),
            if why.is_empty() { String::new() } else { format!(" ({})", why.join("; ")) }
        ))
    }

    /// After a failed attempt with Kerberos credentials, asks the Kerberos library for a ticket
    /// to each server as zookeeper-client does (which logs the library's error and reports the
    /// server as unreachable): `Err` naming what to do when it refuses.
    async fn probe_kerberos(&self, k: &Kerberos, deadline: tokio::time::Instant) -> Result<()> {
        let mut hosts: Vec<String> =
            probe::endpoints(&self.connect, self.tls.is_some()).into_iter().map(|e| e.host).collect();
        hosts.dedup();
        for host in hosts {
            let (service, gss_host) = (k.service.clone(), k.host.clone().unwrap_or_else(|| host.clone()));
            let check = tokio::task::spawn_blocking(move || probe::kerberos::check(&service, &gss_host));
            match tokio::time::timeout_at(deadline, check).await {
                Ok(Ok(Err(failure))) => {
                    bail!(
                        "cannot authenticate to ZooKeeper at {} with Kerberos: {}",
                        self.connect,
                        kerberos_advice(k, &host, &failure)
                    )
                }
                Ok(Ok(Ok(principal))) => {
                    debug!("Kerberos: {} may get a ticket for {}", principal.name, k.target(&host))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Probes the servers after a failed attempt: `Err` for a refusal that retrying cannot
    /// mend, else a note for the final message (empty when nothing was found).
    async fn probe(&self, limit: Duration) -> Result<String> {
        let endpoints = probe::endpoints(&self.connect, self.tls.is_some());
        let tls = self.tls.clone();
        let verdict = tokio::task::spawn_blocking(move || probe::diagnose(&endpoints, tls.as_ref(), limit))
            .await
            .unwrap_or(probe::Verdict::Unknown);
        match verdict {
            probe::Verdict::Refused(why) => bail!("cannot connect to ZooKeeper at {}: {why}", self.connect),
            probe::Verdict::Note(what) => Ok(what),
            probe::Verdict::Unknown => Ok(String::new()),
        }
    }

    /// The error for a request the server refused with NoAuth on `path` (or on the nearest
    /// ancestor that exists, which is the node whose ACL decided): names the node, its ACL
    /// as far as we may read it, and who we are.
    pub async fn not_authorised(&self, client: &Client, path: &str, doing: &str) -> anyhow::Error {
        let mut at = path.to_owned();
        let acl = loop {
            match client.get_acl(&at).await {
                Ok((acls, _)) => break format_acl(&acls),
                Err(zookeeper_client::Error::NoNode) if at != "/" => {
                    at = match at.rfind('/') {
                        Some(0) | None => "/".into(),
                        Some(i) => at[..i].to_owned(),
                    };
                }
                Err(zookeeper_client::Error::NoAuth) => break "not readable by us either".into(),
                Err(e) => break format!("unknown: {e}"),
            }
        };
        anyhow!(
            "not authorised to {doing}: the ACL of {at} is {acl}; zklock connected as {}",
            self.session_identity(client).await
        )
    }

    /// Who the server knows this session as: with Kerberos, as the server says (`whoami`:
    /// `sasl:alice@REALM`, or `sasl:alice` where it strips the realm); else [`Self::identity`].
    pub async fn session_identity(&self, client: &Client) -> String {
        if let Some(Credentials::Kerberos(k)) = &self.credentials {
            if let Ok(users) = client.list_auth_users().await {
                if let Some(u) = users.iter().find(|u| u.scheme() == "sasl") {
                    return format!("sasl:{} (Kerberos, {})", u.user(), k.source());
                }
            }
        }
        self.identity()
    }
}

/// What to do about a refusal of the Kerberos library, from its error code (krb5's com_err
/// table), and its own words.
fn kerberos_advice(k: &Kerberos, host: &str, f: &probe::kerberos::Failure) -> String {
    // krb5's error codes (krb5.h), and GSSAPI's routine errors (gssapi.h).
    const FCC_NOFILE: i32 = -1765328189;
    const CC_NOTFOUND: i32 = -1765328243;
    const TKT_EXPIRED: i32 = -1765328352;
    const S_PRINCIPAL_UNKNOWN: i32 = -1765328377;
    const C_PRINCIPAL_UNKNOWN: i32 = -1765328378;
    const SKEW: i32 = -1765328347;
    const KDCREP_SKEW: i32 = -1765328236;
    const KDC_UNREACH: i32 = -1765328228;
    const REALM_UNKNOWN: i32 = -1765328230;
    const KT_NOTFOUND: i32 = -1765328203;
    const PREAUTH_FAILED: i32 = -1765328360;
    const BAD_INTEGRITY: i32 = -1765328353;
    const GSS_S_NO_CRED: u32 = 7 << 16;
    const GSS_S_CREDENTIALS_EXPIRED: u32 = 11 << 16;
    let source = k.source();
    let cache = || match std::env::var("KRB5CCNAME").ok().filter(|v| !v.is_empty()) {
        Some(cc) => format!("the ticket cache {cc}"),
        None => "the default ticket cache".into(),
    };
    let config = std::env::var("KRB5_CONFIG").unwrap_or_else(|_| "/etc/krb5.conf".into());
    let advice = match (f.minor, f.major & 0x00ff_0000) {
        (TKT_EXPIRED, _) | (_, GSS_S_CREDENTIALS_EXPIRED) => match (&k.keytab, &f.principal.clone().or_else(ccache_principal)) {
            (Some(keytab), Some(p)) if !k.keytab_principals.contains(p) => format!(
                "the Kerberos ticket of {p} in {} has expired, and the keytab {} ({KEYTAB_ENV}) lacks that principal (it holds {}): add its key (kadmin: ktadd -k {} {p}), or run kdestroy so that the keytab's own principal is used",
                cache(),
                keytab.display(),
                k.keytab_principals.join(", "),
                keytab.display()
            ),
            (Some(keytab), _) => format!(
                "the Kerberos ticket in {} has expired and could not be renewed from the keytab {}: {}",
                cache(),
                keytab.display(),
                keytab_hint(k)
            ),
            (None, p) => format!(
                "the Kerberos ticket{} in {source} has expired: run kinit again (for cron, name a keytab in {KEYTAB_ENV}: zklock then gets its own tickets)",
                p.as_ref().map(|p| format!(" of {p}")).unwrap_or_default()
            ),
        },
        (KT_NOTFOUND | PREAUTH_FAILED | BAD_INTEGRITY, _) if k.keytab.is_some() => keytab_hint(k),
        (FCC_NOFILE | CC_NOTFOUND, _) | (_, GSS_S_NO_CRED) if k.keytab.is_some() => {
            format!("cannot get a Kerberos ticket with {source}: {}", keytab_hint(k))
        }
        (FCC_NOFILE | CC_NOTFOUND, _) | (_, GSS_S_NO_CRED) => format!(
            "no Kerberos ticket in {source}: run kinit (for cron, name a keytab in {KEYTAB_ENV})"
        ),
        (S_PRINCIPAL_UNKNOWN, _) => format!(
            "the KDC knows no server principal for service '{}' on host '{}' (the KDC's words at the end name the principal it looked up, with the host as Kerberos canonicalised it): give the servers' principal with --kerberos-service SERVICE/HOST, e.g. zookeeper/zk1.example.com",
            k.service,
            k.host.as_deref().unwrap_or(host)
        ),
        (C_PRINCIPAL_UNKNOWN, _) => format!("the KDC does not know our principal ({source}): check the keytab or run kinit with the right principal"),
        (SKEW | KDCREP_SKEW, _) => "the KDC refused our clock: it differs from the KDC's by more than the allowed skew (5 minutes by default): synchronise this host's clock (NTP)".to_string(),
        (KDC_UNREACH, _) => format!("no KDC of the realm answered: check that the KDC runs and the kdc lines of {config}, and firewalls (port 88)"),
        (REALM_UNKNOWN, _) => format!("no KDC is known for the realm: add it to [realms] in {config}"),
        _ => format!("the Kerberos library refused to get a ticket for {} from {source}", k.target(host)),
    };
    format!("{advice} ({})", f.text)
}

/// What to check when the keytab gave no ticket: MIT's library reports only that no ticket
/// came, not the KDC's answer.
fn keytab_hint(k: &Kerberos) -> String {
    let keytab = k.keytab.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let principal = k.keytab_principals.first().cloned().unwrap_or_else(|| "PRINCIPAL".into());
    format!(
        "the KDC refused the keytab's key for {principal} (an old key, or a principal the KDC does not know) or no KDC answered; `kinit -k -t {keytab} {principal}` says which"
    )
}

/// An ACL as `scheme:id=perms`, e.g. `digest:alice:HASH=cdrwa, world:anyone=r`.
pub fn format_acl(acls: &[Acl]) -> String {
    if acls.is_empty() {
        return "empty".into();
    }
    let perms = |p: Permission| {
        [
            (Permission::CREATE, 'c'),
            (Permission::DELETE, 'd'),
            (Permission::READ, 'r'),
            (Permission::WRITE, 'w'),
            (Permission::ADMIN, 'a'),
        ]
        .iter()
        .filter(|(bit, _)| p.has(*bit))
        .map(|(_, c)| *c)
        .collect::<String>()
    };
    acls.iter()
        .map(|a| format!("{}:{}={}", a.auth_id().scheme(), a.auth_id().id(), perms(a.permission())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Closes the session and waits (up to a limit) for the server to confirm.
pub async fn close_session(client: Client) {
    let mut watcher = client.state_watcher();
    drop(client);
    if watcher.peek_state().is_terminated() {
        return;
    }
    let closed = tokio::time::timeout(CLOSE_TIMEOUT, async { while !watcher.changed().await.is_terminated() {} }).await;
    if closed.is_err() {
        warn!("the session did not confirm closing within {CLOSE_TIMEOUT:?}; the server expires it");
    }
}

/// Waits until the session is connected again after a ConnectionLoss; fails if it ended.
pub async fn wait_connected(client: &Client) -> Result<(), zookeeper_client::Error> {
    let mut watcher = client.state_watcher();
    loop {
        match watcher.peek_state() {
            SessionState::SyncConnected | SessionState::ConnectedReadOnly => return Ok(()),
            SessionState::Expired => return Err(zookeeper_client::Error::SessionExpired),
            SessionState::Closed => return Err(zookeeper_client::Error::ClientClosed),
            SessionState::AuthFailed => return Err(zookeeper_client::Error::AuthFailed),
            SessionState::Disconnected => {
                watcher.changed().await;
            }
        }
    }
}

/// Whether a request failed because its connection broke rather than because the server said
/// no: zookeeper-client fails the requests in flight with ConnectionLoss on a clean close, but
/// with a custom error on a silent partition ("no response from connection") or a reset, and
/// with Timeout when it gives up reconnecting.
pub fn is_connection_failure(e: &zookeeper_client::Error) -> bool {
    matches!(e, zookeeper_client::Error::ConnectionLoss | zookeeper_client::Error::Custom(_))
}

/// Runs `op`, and again after each connection failure once the session is connected again.
pub async fn retry<T, F, Fut>(client: &Client, mut op: F) -> Result<T, zookeeper_client::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, zookeeper_client::Error>>,
{
    loop {
        match op().await {
            Err(e) if is_connection_failure(&e) => {
                debug!("connection lost during a request; retrying once reconnected");
                wait_connected(client).await?;
                // The state flips before pending requests fail; a short pause avoids spinning
                // if a reply and a reconnect race.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => return other,
        }
    }
}

/// Proof that the ZooKeeper leader validated our session at or after an instant (on the
/// deadline clock): the send time of a request on our lock node that the leader processed
/// (our create, or a check-only multi). This is `t_ok` of the safety model.
///
/// The safety invariant lives in this type: the only constructor is [`through_leader`], which
/// stamps the time *before* the request is sent, and the only mutator is
/// [`Confirmed::advance`], which keeps the later of two proofs. A confirmation can therefore
/// never credit a later time than its request's send, and `t_ok` never moves back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Confirmed(Duration);

impl Confirmed {
    /// The instant the confirmed request was sent, on the deadline clock.
    pub fn at(self) -> Duration {
        self.0
    }

    /// Keeps the later proof; returns whether `other` moved it forward.
    pub fn advance(&mut self, other: Confirmed) -> bool {
        let moved = other.0 > self.0;
        if moved {
            self.0 = other.0;
        }
        moved
    }

    /// A confirmation at a given instant, for unit tests of the code that consumes it.
    #[cfg(test)]
    pub fn for_test(at: Duration) -> Confirmed {
        Confirmed(at)
    }
}

/// Sends a request that the leader must process (`send` must put it on the wire when called,
/// as zookeeper-client's request methods do), stamping the send time on `clock` first; its
/// reply carries the [`Confirmed`] proof when it succeeds.
pub fn through_leader<C, T, E, F>(
    clock: &C,
    send: impl FnOnce() -> F,
) -> impl Future<Output = Result<(T, Confirmed), E>>
where
    C: Clock,
    F: Future<Output = Result<T, E>>,
{
    let sent = Confirmed(clock.now());
    let reply = send();
    async move { reply.await.map(|t| (t, sent)) }
}

/// [`check`], sent again after each connection failure once the session is back.
pub async fn check_retrying<C: Clock>(
    client: &Client,
    path: &str,
    clock: &C,
) -> Result<Confirmed, zookeeper_client::Error> {
    retry(client, || async { check(client, path, clock).await.map_err(zookeeper_client::Error::from) }).await
}

/// A check-only multi on our own node through the leader: the heartbeat. It validates our
/// session and our node's existence.
pub fn check<'a, C: Clock>(
    client: &'a Client,
    path: &str,
    clock: &C,
) -> impl Future<Output = Result<Confirmed, CheckWriteError>> + Send + 'a {
    // The closure's type is part of the returned future's: it must not borrow `path`.
    let path = path.to_owned();
    let confirming = through_leader(clock, move || {
        let commit = client.new_check_writer(&path, None).map(|writer| writer.commit());
        async move {
            match commit {
                Ok(commit) => commit.await,
                Err(source) => Err(CheckWriteError::RequestFailed { source }),
            }
        }
    });
    async move { confirming.await.map(|(_, confirmed)| confirmed) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A keytab entry (version 2) for `components@realm`, with a dummy key.
    fn entry(realm: &str, components: &[&str]) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend((components.len() as u16).to_be_bytes());
        for s in std::iter::once(&realm).chain(components) {
            e.extend((s.len() as u16).to_be_bytes());
            e.extend(s.as_bytes());
        }
        e.extend(1u32.to_be_bytes()); // name type
        e.extend(0u32.to_be_bytes()); // timestamp
        e.push(2); // kvno
        e.extend(17u16.to_be_bytes()); // enctype
        e.extend(16u16.to_be_bytes());
        e.extend([0u8; 16]);
        let mut out = (e.len() as i32).to_be_bytes().to_vec();
        out.extend(e);
        out
    }

    #[test]
    fn keytab_principals_in_order_without_holes_or_repeats() {
        let mut kt = vec![5, 2];
        kt.extend(entry("R.TEST", &["alice"]));
        kt.extend((-8i32).to_be_bytes()); // a hole left by a removed entry
        kt.extend([0u8; 8]);
        kt.extend(entry("R.TEST", &["alice"]));
        kt.extend(entry("R.TEST", &["zookeeper", "zk1"]));
        assert_eq!(keytab_principals(&kt), Some(vec!["alice@R.TEST".to_string(), "zookeeper/zk1@R.TEST".to_string()]));
        assert_eq!(keytab_principals(&[5, 2]), Some(vec![]));
        assert_eq!(keytab_principals(b""), None);
        assert_eq!(keytab_principals(b"digest:alice:pw"), None);
        // Truncated: no principal invented.
        assert_eq!(keytab_principals(&kt[..10]), None);
    }

    #[test]
    fn kerberos_credentials_and_the_service_option() {
        assert_eq!(Credentials::parse("# cron\nkerberos\n", "f").unwrap(), Credentials::Kerberos(Kerberos::default()));
        let e = Credentials::parse("kerberos:alice:pw", "f").unwrap_err().to_string();
        assert!(e.contains("write just 'kerberos'") && !e.contains("pw"), "{e}");
        assert_eq!(parse_service("zookeeper").unwrap(), ("zookeeper".into(), None));
        assert_eq!(parse_service("zk/zk1.example.com").unwrap(), ("zk".into(), Some("zk1.example.com".into())));
        for bad in ["", "/h", "zk/", "zookeeper/h@R"] {
            assert!(parse_service(bad).is_err(), "{bad}");
        }
    }
}
