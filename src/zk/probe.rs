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
