//! Why a connection failed, when zookeeper-client only says "connection loss": one TCP
//! connection and one TLS handshake (rustls, the library zookeeper-client uses) to each server
//! of the connect string. Run only after a failed attempt, off the async runtime.
//!
//! A plain-text client reaching a TLS port sees the connection closed; a TLS handshake to the
//! same port gets a certificate back. A TLS client reaching a plain port sees the handshake
//! closed unanswered. A refused certificate, on either side, shows in the handshake's error
//! or in the alert the server sends. These cannot be mended by retrying: `Refused`.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, ClientConnection, RootCertStore};

use super::Tls;

/// The longest a probe may take, all servers together.
pub const PATIENCE: Duration = Duration::from_secs(2);
/// After a completed handshake, how long to wait for an alert refusing our certificate
/// (TLS 1.3 sends it after the client has finished its part).
const ALERT_WAIT: Duration = Duration::from_millis(300);

/// One server of a connect string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// What the probe found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A refusal that retrying cannot mend.
    Refused(String),
    /// Something worth adding to a "cannot connect" message.
    Note(String),
    /// Nothing found.
    Unknown,
}

/// The servers of a connect string, as zookeeper-client reads it: `host[:port]` (2181 by
/// default), each optionally prefixed `tcp://` or `tcp+tls://`, the last one optionally
/// followed by `/chroot`. `secure` is the protocol of servers without a prefix.
pub fn endpoints(connect: &str, secure: bool) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for piece in connect.split(',') {
        let (rest, tls) = if let Some(r) = piece.strip_prefix("tcp+tls://") {
            (r, true)
        } else if let Some(r) = piece.strip_prefix("tcp://") {
            (r, false)
        } else {
            (piece, secure)
        };
        let hostport = rest.split('/').next().unwrap_or("");
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            match v6.split_once(']') {
                Some((h, p)) => (h, p.strip_prefix(':').and_then(|p| p.parse().ok()).unwrap_or(2181)),
                None => continue,
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => match p.parse() {
                    Ok(port) => (h, port),
                    Err(_) => continue,
                },
                None => (hostport, 2181),
            }
        };
        if !host.is_empty() {
            out.push(Endpoint { host: host.to_owned(), port, tls });
        }
    }
    out
}

/// Probes each server in turn within `limit` in all; the first refusal wins.
pub fn diagnose(endpoints: &[Endpoint], tls: Option<&Tls>, limit: Duration) -> Verdict {
    let deadline = Instant::now() + limit;
    let mut notes = Vec::new();
    for ep in endpoints {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match probe(ep, tls, left) {
            Verdict::Refused(why) => return Verdict::Refused(why),
            Verdict::Note(n) => notes.push(n),
            Verdict::Unknown => {}
        }
    }
    if notes.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Note(notes.join("; "))
    }
}

/// How a TLS handshake ended.
enum Handshake {
    Done,
    Tls(rustls::Error),
    /// Closed (or reset) by the server before the handshake completed.
    Closed,
    /// No answer in time.
    Silent,
    Io(std::io::Error),
}

fn config(tls: Option<&Tls>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    let Some(tls) = tls else {
        // No trusted roots at all: any certificate the server shows is refused, which is
        // all the probe of a plain-text server needs to know.
        return Ok(ClientConfig::builder().with_root_certificates(roots).with_no_client_auth());
    };
    let certs = CertificateDer::pem_file_iter(&tls.ca).map_err(|e| format!("--tls-ca {}: {e}", tls.ca.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("--tls-ca {}: {e}", tls.ca.display()))?;
        roots.add(cert).map_err(|e| format!("--tls-ca {}: {e}", tls.ca.display()))?;
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    match &tls.identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("--tls-cert/--tls-key: the key does not fit the certificate: {e}"))
        }
    }
}

fn rustls_error(e: &std::io::Error) -> Option<rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).cloned()
}

fn handshake(sock: &mut TcpStream, config: ClientConfig, host: &str) -> Handshake {
    let Ok(name) = ServerName::try_from(host.to_owned()) else {
        return Handshake::Io(std::io::Error::new(ErrorKind::InvalidInput, format!("'{host}' is not a host name")));
    };
    let mut conn = match ClientConnection::new(Arc::new(config), name) {
        Ok(c) => c,
        Err(e) => return Handshake::Tls(e),
    };
    let classify = |e: std::io::Error| match rustls_error(&e) {
        Some(tls) => Handshake::Tls(tls),
        None => match e.kind() {
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe => Handshake::Closed,
            ErrorKind::WouldBlock | ErrorKind::TimedOut => Handshake::Silent,
            _ => Handshake::Io(e),
        },
    };
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(sock) {
            return classify(e);
        }
    }
    // Our certificate may be refused only now (TLS 1.3): wait a little for an alert.
    let _ = sock.set_read_timeout(Some(ALERT_WAIT));
    let _ = conn.complete_io(sock);
    let mut buf = [0u8; 64];
    match conn.read_tls(sock) {
        Ok(0) => {}
        Ok(_) => {
            if let Err(e) = conn.process_new_packets() {
                return Handshake::Tls(e);
            }
            let _ = conn.reader().read(&mut buf);
        }
        Err(_) => {}
    }
    conn.send_close_notify();
    let _ = conn.write_tls(sock);
    let _ = sock.flush();
    Handshake::Done
}

fn refused_alert(ep: &Endpoint, alert: AlertDescription, tls: Option<&Tls>) -> String {
    use AlertDescription::*;
    let hint = match alert {
        BadCertificate
        | UnsupportedCertificate
        | CertificateRevoked
        | CertificateExpired
        | CertificateUnknown
        | UnknownCA
        | AccessDenied
        | DecryptError
        | CertificateRequired => match tls.and_then(|t| t.identity.as_ref()) {
            Some((cert, _)) => format!("the server did not accept our client certificate {}", cert.display()),
            None => "the server requires a client certificate (give --tls-cert and --tls-key)".into(),
        },
        HandshakeFailure | ProtocolVersion | InsufficientSecurity => {
            "no TLS version or cipher suite in common with the server".into()
        }
        other => format!("the server sent the alert {other:?}"),
    };
    format!("{ep} refused the TLS handshake: {hint}")
}

fn probe(ep: &Endpoint, tls: Option<&Tls>, limit: Duration) -> Verdict {
    let addr = match (ep.host.as_str(), ep.port).to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => a,
        Ok(None) | Err(_) => return Verdict::Note(format!("{ep}: cannot resolve {}", ep.host)),
    };
    let mut sock = match TcpStream::connect_timeout(&addr, limit) {
        Ok(s) => s,
        Err(e) => return Verdict::Note(format!("{ep}: {e}")),
    };
    let _ = sock.set_read_timeout(Some(limit));
    let _ = sock.set_write_timeout(Some(limit));
    let config = match config(if ep.tls { tls } else { None }) {
        Ok(c) => c,
        Err(why) => return Verdict::Refused(why),
    };
    let outcome = handshake(&mut sock, config, &ep.host);
    if ep.tls {
        match outcome {
            Handshake::Done => Verdict::Unknown,
            Handshake::Tls(rustls::Error::InvalidCertificate(e)) => {
                let ca = tls.map(|t| t.ca.display().to_string()).unwrap_or_default();
                let why = match e {
                    CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                        format!("it is not signed by the CA in --tls-ca {ca}")
                    }
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                        format!("it is not valid for the name '{}'", ep.host)
                    }
                    CertificateError::Expired | CertificateError::ExpiredContext { .. } => "it has expired".into(),
                    CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                        "it is not valid yet (check the clocks)".into()
                    }
                    CertificateError::Revoked => "it is revoked".into(),
                    other => format!("{other:?}"),
                };
                Verdict::Refused(format!("zklock refused the certificate of {ep}: {why}"))
            }
            Handshake::Tls(rustls::Error::AlertReceived(alert)) => Verdict::Refused(refused_alert(ep, alert, tls)),
            Handshake::Tls(rustls::Error::InvalidMessage(_)) | Handshake::Closed => Verdict::Refused(format!(
                "{ep} does not speak TLS: it closed the connection on the TLS handshake, so it is probably a \
                     plain client port (write tcp://{ep} for a plain server, or use the server's secureClientPort)"
            )),
            Handshake::Tls(e) => Verdict::Refused(format!("TLS handshake with {ep} failed: {e}")),
            Handshake::Silent => {
                Verdict::Note(format!("{ep} accepted the connection but did not answer the TLS handshake"))
            }
            Handshake::Io(e) => Verdict::Note(format!("{ep}: {e}")),
        }
    } else {
        match outcome {
            Handshake::Done
            | Handshake::Tls(rustls::Error::InvalidCertificate(_) | rustls::Error::AlertReceived(_)) => {
                Verdict::Refused(format!(
                    "{ep} is a TLS port and zklock spoke plain text to it: give --tls-ca (the CA that signed its \
                     certificate), or write tcp+tls://{ep}"
                ))
            }
            Handshake::Closed => Verdict::Note(format!(
                "{ep} accepted the connection and closed it during the handshake (not a ZooKeeper client port, or a \
                 server that is not serving yet)"
            )),
            Handshake::Silent => Verdict::Note(format!("{ep} accepted the connection but never answered")),
            Handshake::Tls(_) => Verdict::Note(format!("{ep} answered, but not as a ZooKeeper server does")),
            Handshake::Io(e) => Verdict::Note(format!("{ep}: {e}")),
        }
    }
}

/// Kerberos: what MIT's GSSAPI library (`libgssapi_krb5`, which zookeeper-client's SASL
/// GSSAPI uses) says about getting a ticket for a server. zookeeper-client only logs that error
/// and reports the server as unreachable; this asks the library again, the same way (the
/// default credentials, the Kerberos mechanism, a host-based service name), for the message.
pub mod kerberos {
    use std::ffi::c_void;
    use std::ptr::{null, null_mut};

    #[repr(C)]
    struct Buffer {
        length: usize,
        value: *mut c_void,
    }

    #[repr(C)]
    struct Oid {
        length: u32,
        elements: *const c_void,
    }

    #[repr(C)]
    struct OidSet {
        count: usize,
        elements: *const Oid,
    }

    type Name = *mut c_void;
    type Cred = *mut c_void;
    type Ctx = *mut c_void;

    #[link(name = "gssapi_krb5")]
    extern "C" {
        static GSS_C_NT_HOSTBASED_SERVICE: *const Oid;
        fn gss_import_name(minor: *mut u32, name: *const Buffer, kind: *const Oid, out: *mut Name) -> u32;
        fn gss_release_name(minor: *mut u32, name: *mut Name) -> u32;
        fn gss_acquire_cred(
            minor: *mut u32,
            name: Name,
            time: u32,
            mechs: *const OidSet,
            usage: i32,
            out: *mut Cred,
            actual: *mut *mut c_void,
            time_rec: *mut u32,
        ) -> u32;
        fn gss_inquire_cred(
            minor: *mut u32,
            cred: Cred,
            name: *mut Name,
            lifetime: *mut u32,
            usage: *mut i32,
            mechs: *mut *mut c_void,
        ) -> u32;
        fn gss_display_name(minor: *mut u32, name: Name, out: *mut Buffer, kind: *mut *const Oid) -> u32;
        fn gss_release_cred(minor: *mut u32, cred: *mut Cred) -> u32;
        #[allow(clippy::too_many_arguments)]
        fn gss_init_sec_context(
            minor: *mut u32,
            cred: Cred,
            ctx: *mut Ctx,
            target: Name,
            mech: *const Oid,
            flags: u32,
            time: u32,
            bindings: *const c_void,
            input: *const Buffer,
            actual_mech: *mut *const Oid,
            output: *mut Buffer,
            ret_flags: *mut u32,
            time_rec: *mut u32,
        ) -> u32;
        fn gss_delete_sec_context(minor: *mut u32, ctx: *mut Ctx, output: *mut Buffer) -> u32;
        fn gss_release_buffer(minor: *mut u32, buffer: *mut Buffer) -> u32;
        fn gss_display_status(
            minor: *mut u32,
            status: u32,
            kind: i32,
            mech: *const Oid,
            context: *mut u32,
            out: *mut Buffer,
        ) -> u32;
    }

    /// 1.2.840.113554.1.2.2, the Kerberos 5 mechanism.
    const KRB5_MECH: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02];
    const GSS_C_INITIATE: i32 = 1;
    const GSS_C_GSS_CODE: i32 = 1;
    const GSS_C_MECH_CODE: i32 = 2;
    const GSS_C_MUTUAL_FLAG: u32 = 2;
    /// The routine-error and calling-error bits of a major status.
    const GSS_ERROR_MASK: u32 = 0xffff_0000;

    /// A refusal by the GSSAPI library: its status codes and its own words for them.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Failure {
        /// The step that failed: `acquire` (our credentials) or `init` (the server's ticket).
        pub step: &'static str,
        pub major: u32,
        /// The Kerberos error code (krb5's com_err table, e.g. -1765328377), or an errno.
        pub minor: i32,
        pub text: String,
        /// Our principal, when the library found credentials (an expired ticket's, say).
        pub principal: Option<String>,
    }

    /// What the credentials are: the client principal and how many seconds they stay valid.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Principal {
        pub name: String,
        pub lifetime: u32,
    }

    fn status_text(status: u32, kind: i32, mech: *const Oid) -> Vec<String> {
        let mut out = Vec::new();
        let mut context = 0u32;
        loop {
            let (mut minor, mut buf) = (0u32, Buffer { length: 0, value: null_mut() });
            // SAFETY: plain out-parameters; the buffer is released below.
            let major = unsafe { gss_display_status(&mut minor, status, kind, mech, &mut context, &mut buf) };
            if major & GSS_ERROR_MASK != 0 {
                break;
            }
            if !buf.value.is_null() {
                // SAFETY: the library returned `length` bytes at `value`.
                let bytes = unsafe { std::slice::from_raw_parts(buf.value as *const u8, buf.length) };
                let text = String::from_utf8_lossy(bytes).trim().to_owned();
                if !text.is_empty() {
                    out.push(text);
                }
                // SAFETY: a buffer the library allocated.
                unsafe { gss_release_buffer(&mut minor, &mut buf) };
            }
            if context == 0 {
                break;
            }
        }
        out
    }

    fn failure(step: &'static str, major: u32, minor: u32, mech: *const Oid) -> Failure {
        let mut words = status_text(major, GSS_C_GSS_CODE, null());
        if minor != 0 {
            words.extend(status_text(minor, GSS_C_MECH_CODE, mech));
        }
        Failure { step, major, minor: minor as i32, text: words.join(": "), principal: None }
    }

    /// Acquires our default Kerberos credentials (the ticket cache, or the client keytab named
    /// by `KRB5_CLIENT_KTNAME`) and asks for a ticket for `service@host`, as zookeeper-client's
    /// SASL GSSAPI does. Talks to the KDC; call off the async runtime.
    pub fn check(service: &str, host: &str) -> Result<Principal, Failure> {
        let mech = Oid { length: KRB5_MECH.len() as u32, elements: KRB5_MECH.as_ptr().cast() };
        let mechs = OidSet { count: 1, elements: &mech };
        let target_text = format!("{service}@{host}");
        let target_buf = Buffer { length: target_text.len(), value: target_text.as_ptr() as *mut c_void };
        let mut minor = 0u32;
        let mut target: Name = null_mut();
        // SAFETY: the buffer outlives the call; the name is released below.
        let major = unsafe { gss_import_name(&mut minor, &target_buf, GSS_C_NT_HOSTBASED_SERVICE, &mut target) };
        if major & GSS_ERROR_MASK != 0 {
            return Err(failure("import", major, minor, &mech));
        }
        let mut cred: Cred = null_mut();
        // SAFETY: out-parameters only; the credential is released below.
        let major = unsafe {
            gss_acquire_cred(&mut minor, null_mut(), 0, &mechs, GSS_C_INITIATE, &mut cred, null_mut(), null_mut())
        };
        let result = if major & GSS_ERROR_MASK != 0 {
            Err(failure("acquire", major, minor, &mech))
        } else {
            let principal = inquire(cred);
            let mut ctx: Ctx = null_mut();
            let mut token = Buffer { length: 0, value: null_mut() };
            // SAFETY: a live credential and name; the context and token are released below.
            let major = unsafe {
                gss_init_sec_context(
                    &mut minor,
                    cred,
                    &mut ctx,
                    target,
                    &mech,
                    GSS_C_MUTUAL_FLAG,
                    0,
                    null(),
                    null(),
                    null_mut(),
                    &mut token,
                    null_mut(),
                    null_mut(),
                )
            };
            let mut ignored = 0u32;
            // SAFETY: releasing what the call above may have allocated.
            unsafe {
                if !token.value.is_null() {
                    gss_release_buffer(&mut ignored, &mut token);
                }
                if !ctx.is_null() {
                    gss_delete_sec_context(&mut ignored, &mut ctx, null_mut());
                }
            }
            if major & GSS_ERROR_MASK != 0 {
                let principal = Some(principal.name).filter(|n| !n.is_empty());
                Err(Failure { principal, ..failure("init", major, minor, &mech) })
            } else {
                Ok(principal)
            }
        };
        let mut ignored = 0u32;
        // SAFETY: releasing the handles made above.
        unsafe {
            if !cred.is_null() {
                gss_release_cred(&mut ignored, &mut cred);
            }
            gss_release_name(&mut ignored, &mut target);
        }
        result
    }

    fn inquire(cred: Cred) -> Principal {
        let (mut minor, mut name, mut lifetime): (u32, Name, u32) = (0, null_mut(), 0);
        // SAFETY: out-parameters of a live credential; the name is released below.
        let major = unsafe { gss_inquire_cred(&mut minor, cred, &mut name, &mut lifetime, null_mut(), null_mut()) };
        if major & GSS_ERROR_MASK != 0 || name.is_null() {
            return Principal { name: String::new(), lifetime };
        }
        let mut buf = Buffer { length: 0, value: null_mut() };
        // SAFETY: a live name; the buffer is released below.
        let major = unsafe { gss_display_name(&mut minor, name, &mut buf, null_mut()) };
        let mut text = String::new();
        if major & GSS_ERROR_MASK == 0 && !buf.value.is_null() {
            // SAFETY: the library returned `length` bytes at `value`.
            let bytes = unsafe { std::slice::from_raw_parts(buf.value as *const u8, buf.length) };
            text = String::from_utf8_lossy(bytes).into_owned();
            // SAFETY: a buffer the library allocated.
            unsafe { gss_release_buffer(&mut minor, &mut buf) };
        }
        // SAFETY: the name made by gss_inquire_cred.
        unsafe { gss_release_name(&mut minor, &mut name) };
        Principal { name: text, lifetime }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(host: &str, port: u16, tls: bool) -> Endpoint {
        Endpoint { host: host.into(), port, tls }
    }

    #[test]
    fn connect_strings() {
        assert_eq!(endpoints("127.0.0.1:2181", false), [ep("127.0.0.1", 2181, false)]);
        assert_eq!(
            endpoints("a:1,tcp+tls://b:2,tcp://c/chroot/x", false),
            [ep("a", 1, false), ep("b", 2, true), ep("c", 2181, false)]
        );
        assert_eq!(endpoints("a:1,b:2/app", true), [ep("a", 1, true), ep("b", 2, true)]);
        assert_eq!(endpoints("[::1]:2182", false), [ep("::1", 2182, false)]);
        assert_eq!(endpoints("a:notaport", false), []);
        assert_eq!(ep("::1", 1, false).to_string(), "[::1]:1");
    }
}
