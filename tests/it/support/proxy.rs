//! A fault-injecting TCP proxy on loopback, to put faults between zklock and a ZooKeeper server
//! (or between the members of an ensemble, see [`ProxiedEnsemble`]) at any moment a test
//! chooses; and raw ZooKeeper protocol helpers: the session id and password of the client
//! behind a proxy, and [`expire_session`], which expires a session from outside the way the
//! Java tests do with a second handle.
//!
//! Plain std threads: one accepting thread per proxy, and per connection one reader and one
//! writer per direction (the readers never stop reading, so latency does not add up and a
//! partition holds what was sent until it heals).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{ZkEnsemble, ZkOptions, READY_TIMEOUT};

/// ZooKeeper opcodes the tests look for.
pub mod op {
    pub const CREATE: i32 = 1;
    pub const DELETE: i32 = 2;
    pub const SET_DATA: i32 = 5;
    pub const CHECK: i32 = 13;
    pub const GET_CHILDREN: i32 = 8;
    pub const GET_CHILDREN2: i32 = 12;
    pub const MULTI: i32 = 14;
    pub const CREATE2: i32 = 15;
    pub const CREATE_CONTAINER: i32 = 19;
    pub const CREATE_TTL: i32 = 21;
    pub const CLOSE_SESSION: i32 = -11;
}

/// Larger frames mean the stream is not ZooKeeper's client protocol (a four-letter word, say).
const MAX_FRAME: i32 = 16 << 20;
/// How long the proxy tries to reach its target for one connection.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the proxy does with the traffic. Switch with [`Proxy::set_mode`] at any moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// A silent partition: nothing is forwarded in either direction and no socket is closed
    /// (no FIN, no RST). What was sent meanwhile is delivered when the partition heals, as TCP
    /// retransmission would. New connections are accepted but held: the target hears of them
    /// only after the heal, and not at all if the client gave up meanwhile.
    Drop,
    /// Every open connection is reset (RST, through `SO_LINGER` 0) when this mode is set, and
    /// every new one at once.
    Reset,
    /// New connections are reset at once; open ones are forwarded.
    Refuse,
    /// Forward everything, each chunk this long after it was read.
    Latency(Duration),
}

/// A ZooKeeper session, as its ConnectResponse gave it to the client behind a proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub id: i64,
    pub password: Vec<u8>,
    pub timeout_ms: i32,
}

/// One request the client sent through the proxy and the server answered.
#[derive(Clone, Debug)]
pub struct Reply {
    pub op: i32,
    /// The reply header's error code (0: ok).
    pub err: i32,
    /// When the proxy read the request from the client (about when the client sent it).
    pub sent: Instant,
    /// When the reply was forwarded to the client.
    pub replied: Instant,
}

struct State {
    mode: Mode,
    closed: bool,
    conns: Vec<Weak<Conn>>,
    sessions: Vec<Session>,
    replies: Vec<Reply>,
    /// Requests read from clients (held or not): (opcode, when).
    requests: Vec<(i32, Instant)>,
    /// Reset the connection instead of forwarding the successful reply to the next create
    /// whose path contains this.
    trigger: Option<String>,
    fired: usize,
    accepted: usize,
}

struct Shared {
    name: String,
    target: SocketAddr,
    /// Parse the ZooKeeper client protocol (frames, sessions, replies, the create trigger).
    zk: bool,
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mode(&self) -> Mode {
        self.state().mode
    }

    /// Waits while partitioned. False if the connection was aborted or the proxy closed.
    fn wait_passable(&self, conn: &Conn) -> bool {
        let mut st = self.state();
        loop {
            if st.closed || conn.aborted() {
                return false;
            }
            if st.mode != Mode::Drop {
                return true;
            }
            st = self.changed.wait_timeout(st, Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

/// Sets `SO_LINGER` to {on, 0 s}: closing the socket then sends RST instead of FIN.
fn set_linger_zero(stream: &TcpStream) {
    #[repr(C)]
    struct Linger {
        l_onoff: i32,
        l_linger: i32,
    }
    extern "C" {
        fn setsockopt(fd: i32, level: i32, name: i32, value: *const Linger, len: u32) -> i32;
    }
    const SOL_SOCKET: i32 = 1;
    const SO_LINGER: i32 = 13;
    let linger = Linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket fd and a pointer to a properly sized `struct linger`.
    unsafe {
        setsockopt(stream.as_raw_fd(), SOL_SOCKET, SO_LINGER, &linger, std::mem::size_of::<Linger>() as u32);
    }
}

/// Resets `stream` as soon as its last handle is closed, and wakes whoever reads it.
fn reset_on_close(stream: &TcpStream) {
    set_linger_zero(stream);
    let _ = stream.shutdown(Shutdown::Read);
}

/// One proxied connection.
struct Conn {
    shared: Arc<Shared>,
    client: TcpStream,
    server: Mutex<Option<TcpStream>>,
    aborted: AtomicBool,
    client_eof: AtomicBool,
    /// Requests forwarded to the server and not answered yet: xid -> (opcode, sent).
    pending: Mutex<HashMap<i32, (i32, Instant)>>,
    /// xid of the create whose reply the trigger swallows.
    armed: Mutex<Option<i32>>,
}

impl Conn {
    fn aborted(&self) -> bool {
        self.aborted.load(Ordering::SeqCst)
    }

    /// Resets both sides. The sockets close (with RST) when the last thread lets go of them.
    fn abort(&self) {
        if self.aborted.swap(true, Ordering::SeqCst) {
            return;
        }
        reset_on_close(&self.client);
        if let Some(server) = self.server.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            reset_on_close(server);
        }
        self.shared.changed.notify_all();
    }

    /// Looks at a whole frame about to be written; false: swallow it and reset the connection.
    fn inspect(&self, dir: Dir, index: usize, frame: &[u8], read: Instant) -> bool {
        let int = |at: usize| frame.get(at..at + 4).map(|b| i32::from_be_bytes(b.try_into().unwrap()));
        match (dir, index) {
            (Dir::ToServer, 0) => {} // ConnectRequest
            (Dir::ToServer, _) => {
                let (Some(xid), Some(op)) = (int(4), int(8)) else { return true };
                if xid < 0 {
                    return true; // ping, auth, set-watches
                }
                self.pending.lock().unwrap().insert(xid, (op, read));
                if [op::CREATE, op::CREATE2, op::CREATE_CONTAINER, op::CREATE_TTL].contains(&op) {
                    let path = int(12)
                        .and_then(|len| frame.get(16..16 + usize::try_from(len).ok()?))
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .unwrap_or_default();
                    let hit = self.shared.state().trigger.as_deref().is_some_and(|t| path.contains(t));
                    if hit {
                        *self.armed.lock().unwrap() = Some(xid);
                    }
                }
            }
            (Dir::ToClient, 0) => {
                if let Some(session) = parse_connect_response(&frame[4..]) {
                    if session.id != 0 && session.timeout_ms > 0 {
                        self.shared.state().sessions.push(session);
                    }
                }
            }
            (Dir::ToClient, _) => {
                let (Some(xid), Some(err)) = (int(4), int(16)) else { return true };
                let was_armed = {
                    let mut armed = self.armed.lock().unwrap();
                    let hit = *armed == Some(xid);
                    if hit {
                        *armed = None;
                    }
                    hit
                };
                // A failed create (say NoNode before the parent exists) keeps the trigger set.
                if was_armed && err == 0 {
                    let mut st = self.shared.state();
                    st.trigger = None;
                    st.fired += 1;
                    return false;
                }
                if let Some((op, sent)) = self.pending.lock().unwrap().remove(&xid) {
                    self.shared.state().replies.push(Reply { op, err, sent, replied: Instant::now() });
                }
            }
        }
        true
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    ToServer,
    ToClient,
}

enum Item {
    Data { bytes: Vec<u8>, read: Instant, due: Instant, frame: bool },
    Eof,
}

/// Splits a byte stream into ZooKeeper frames (or passes chunks through when not framing).
struct Framer {
    framing: bool,
    buf: Vec<u8>,
}

impl Framer {
    fn push(&mut self, data: &[u8]) -> Vec<(Vec<u8>, bool)> {
        if !self.framing {
            return vec![(data.to_vec(), false)];
        }
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        while self.buf.len() >= 4 {
            let len = i32::from_be_bytes(self.buf[..4].try_into().unwrap());
            if !(0..=MAX_FRAME).contains(&len) {
                self.framing = false;
                out.push((std::mem::take(&mut self.buf), false));
                break;
            }
            let total = 4 + len as usize;
            if self.buf.len() < total {
                break;
            }
            out.push((self.buf.drain(..total).collect(), true));
        }
        out
    }
}

/// Reads `src` until EOF or error, queueing what it read for the writer.
fn reader(conn: Arc<Conn>, mut src: TcpStream, tx: Sender<Item>, dir: Dir) {
    let mut framer = Framer { framing: conn.shared.zk, buf: Vec::new() };
    let mut buf = vec![0u8; 64 * 1024];
    let mut frames = 0usize;
    loop {
        match src.read(&mut buf) {
            Ok(0) => {
                if dir == Dir::ToServer {
                    conn.client_eof.store(true, Ordering::SeqCst);
                }
                let _ = tx.send(Item::Eof);
                return;
            }
            Ok(n) => {
                let read = Instant::now();
                let due = match conn.shared.mode() {
                    Mode::Latency(d) => read + d,
                    _ => read,
                };
                for (bytes, frame) in framer.push(&buf[..n]) {
                    if frame && dir == Dir::ToServer {
                        // Every frame but the ConnectRequest starts with xid and opcode.
                        if frames > 0 && bytes.len() >= 12 {
                            let op = i32::from_be_bytes(bytes[8..12].try_into().unwrap());
                            let mut st = conn.shared.state();
                            st.requests.push((op, read));
                            // A multi's operations count as requests of their own (zklock
                            // releases with a multi that deletes its node).
                            if op == op::MULTI {
                                st.requests.extend(multi_ops(&bytes[12..]).into_iter().map(|o| (o, read)));
                            }
                        }
                        frames += 1;
                    }
                    if tx.send(Item::Data { bytes, read, due, frame }).is_err() {
                        return;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                // A reset from one side is passed on as a reset to the other.
                conn.abort();
                return;
            }
        }
        if conn.aborted() {
            return;
        }
    }
}

/// Writes what the reader queued, holding it while partitioned and delaying it under latency.
fn writer(conn: Arc<Conn>, mut dst: TcpStream, rx: Receiver<Item>, dir: Dir) {
    let mut frames = 0usize;
    while let Ok(item) = rx.recv() {
        if !conn.shared.wait_passable(&conn) {
            return;
        }
        match item {
            Item::Eof => {
                if !conn.aborted() {
                    let _ = dst.shutdown(Shutdown::Write);
                }
                return;
            }
            Item::Data { bytes, read, due, frame } => {
                let now = Instant::now();
                if due > now {
                    thread::sleep(due - now);
                    if !conn.shared.wait_passable(&conn) {
                        return;
                    }
                }
                if frame {
                    let forward = conn.inspect(dir, frames, &bytes, read);
                    frames += 1;
                    if !forward {
                        conn.abort();
                        return;
                    }
                }
                if dst.write_all(&bytes).is_err() {
                    conn.abort();
                    return;
                }
            }
        }
    }
}

/// Serves one accepted connection.
fn serve(shared: Arc<Shared>, client: TcpStream) {
    let _ = client.set_nodelay(true);
    if matches!(shared.mode(), Mode::Reset | Mode::Refuse) || shared.state().closed {
        set_linger_zero(&client);
        return;
    }
    let Ok(client_reader) = client.try_clone() else { return };
    let Ok(client_writer) = client.try_clone() else { return };
    let conn = Arc::new(Conn {
        shared: shared.clone(),
        client,
        server: Mutex::new(None),
        aborted: AtomicBool::new(false),
        client_eof: AtomicBool::new(false),
        pending: Mutex::new(HashMap::new()),
        armed: Mutex::new(None),
    });
    {
        let mut st = shared.state();
        st.conns.retain(|c| c.strong_count() > 0);
        st.conns.push(Arc::downgrade(&conn));
    }
    let (to_server, from_client) = mpsc::channel();
    {
        let conn = conn.clone();
        thread::spawn(move || reader(conn, client_reader, to_server, Dir::ToServer));
    }
    // A connection made during a partition is held until it heals.
    let held = shared.mode() == Mode::Drop;
    if !shared.wait_passable(&conn)
        || (held && conn.client_eof.load(Ordering::SeqCst))
        || matches!(shared.mode(), Mode::Reset | Mode::Refuse)
    {
        conn.abort();
        return;
    }
    let server = match TcpStream::connect_timeout(&shared.target, UPSTREAM_CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(_) => {
            conn.abort(); // the client sees a reset, as if refused
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let (Ok(server_reader), Ok(server_handle)) = (server.try_clone(), server.try_clone()) else {
        conn.abort();
        return;
    };
    *conn.server.lock().unwrap() = Some(server_handle);
    if conn.aborted() {
        // Aborted while connecting: the server handle was not there to reset.
        reset_on_close(&server);
        return;
    }
    let (to_client, from_server) = mpsc::channel();
    {
        let conn = conn.clone();
        thread::spawn(move || reader(conn, server_reader, to_client, Dir::ToClient));
    }
    {
        let conn = conn.clone();
        thread::spawn(move || writer(conn, client_writer, from_server, Dir::ToClient));
    }
    writer(conn, server, from_client, Dir::ToServer);
}

/// A TCP proxy on 127.0.0.1 in front of one target. Dropping it resets every connection.
pub struct Proxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A byte-stream proxy (for quorum and election links).
    pub fn start(name: &str, target: SocketAddr) -> Proxy {
        Proxy::start_inner(name, target, false)
    }

    /// A proxy for ZooKeeper clients: also captures sessions ([`Self::sessions`]) and replies
    /// ([`Self::replies`]), and can lose a create's reply ([`Self::reset_after_create_reply`]).
    pub fn start_zk(name: &str, target: SocketAddr) -> Proxy {
        Proxy::start_inner(name, target, true)
    }

    /// [`Self::start_zk`] in front of `127.0.0.1:port`.
    pub fn to_port(name: &str, port: u16) -> Proxy {
        Proxy::start_zk(name, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }

    fn start_inner(name: &str, target: SocketAddr, zk: bool) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a proxy port");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            target,
            zk,
            state: Mutex::new(State {
                mode: Mode::Pass,
                closed: false,
                conns: Vec::new(),
                sessions: Vec::new(),
                replies: Vec::new(),
                requests: Vec::new(),
                trigger: None,
                fired: 0,
                accepted: 0,
            }),
            changed: Condvar::new(),
        });
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("proxy-{name}"))
                .spawn(move || {
                    for stream in listener.incoming() {
                        if shared.state().closed {
                            return;
                        }
                        let Ok(stream) = stream else { continue };
                        shared.state().accepted += 1;
                        let shared = shared.clone();
                        thread::spawn(move || serve(shared, stream));
                    }
                })
                .expect("start the proxy thread")
        };
        Proxy { shared, addr, acceptor: Some(acceptor) }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `"127.0.0.1:PORT"` of the proxy.
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }

    /// Switches the mode; [`Mode::Reset`] resets every open connection now.
    pub fn set_mode(&self, mode: Mode) {
        let conns: Vec<Arc<Conn>> = {
            let mut st = self.shared.state();
            st.mode = mode;
            st.conns.iter().filter_map(Weak::upgrade).collect()
        };
        if mode == Mode::Reset {
            for c in conns {
                c.abort();
            }
        }
        self.shared.changed.notify_all();
    }

    /// Sessions the server granted through this proxy, oldest first.
    pub fn sessions(&self) -> Vec<Session> {
        self.shared.state().sessions.clone()
    }

    /// Waits (up to `patience`) for the first session through this proxy.
    pub fn wait_session(&self, patience: Duration) -> Session {
        let mut found = None;
        super::wait_until(patience, &format!("a session through proxy {}", self.name()), || {
            found = self.sessions().into_iter().next();
            found.is_some()
        });
        found.unwrap()
    }

    /// Every answered request so far.
    pub fn replies(&self) -> Vec<Reply> {
        self.shared.state().replies.clone()
    }

    /// Waits (up to `patience`) for an answered request that satisfies `pred`.
    pub fn wait_reply(&self, patience: Duration, what: &str, pred: impl Fn(&Reply) -> bool) -> Reply {
        let mut found = None;
        super::wait_until(patience, what, || {
            found = self.shared.state().replies.iter().find(|r| pred(r)).cloned();
            found.is_some()
        });
        found.unwrap()
    }

    /// Every request read from clients so far (held or not): opcode, and when it was read.
    pub fn requests(&self) -> Vec<(i32, Instant)> {
        self.shared.state().requests.clone()
    }

    /// Waits (up to `patience`) until the client sent a request with opcode `op` at or after
    /// `after`; it counts when the proxy reads it, even if a partition holds it.
    pub fn wait_request(&self, patience: Duration, op: i32, after: Instant) {
        super::wait_until(patience, &format!("a request with opcode {op} through proxy {}", self.name()), || {
            self.shared.state().requests.iter().any(|&(o, t)| o == op && t >= after)
        });
    }

    /// One shot: the next create whose path contains `path_part` and succeeds reaches the
    /// server, but its reply does not reach the client: the connection is reset instead.
    pub fn reset_after_create_reply(&self, path_part: &str) {
        self.shared.state().trigger = Some(path_part.to_owned());
    }

    /// How many replies the create trigger swallowed.
    pub fn fired(&self) -> usize {
        self.shared.state().fired
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let conns: Vec<Arc<Conn>> = {
            let mut st = self.shared.state();
            st.closed = true;
            st.conns.iter().filter_map(Weak::upgrade).collect()
        };
        for c in conns {
            c.abort();
        }
        self.shared.changed.notify_all();
        // Wake the acceptor so that it sees `closed`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// The opcodes of the operations in a multi request's body (check, setData, delete, create),
/// as far as they can be read.
fn multi_ops(body: &[u8]) -> Vec<i32> {
    let int = |at: usize| body.get(at..at + 4).map(|b| i32::from_be_bytes(b.try_into().unwrap()));
    // A buffer or string: its length, then its bytes (-1: none).
    let skip_buffer = |at: usize| int(at).map(|len| at + 4 + usize::try_from(len).unwrap_or(0));
    let mut ops = Vec::new();
    let mut at = 0;
    // MultiHeader: type, done (one byte), err; done ends the list.
    while let (Some(kind), Some(&done)) = (int(at), body.get(at + 4)) {
        if done != 0 {
            break;
        }
        at += 9;
        let next = match kind {
            op::DELETE | op::CHECK => skip_buffer(at).map(|a| a + 4),
            op::SET_DATA => skip_buffer(at).and_then(skip_buffer).map(|a| a + 4),
            _ => None,
        };
        ops.push(kind);
        match next {
            Some(a) => at = a,
            None => break,
        }
    }
    ops
}

fn parse_connect_response(body: &[u8]) -> Option<Session> {
    let int = |at: usize| body.get(at..at + 4).map(|b| i32::from_be_bytes(b.try_into().unwrap()));
    let timeout_ms = int(4)?;
    let id = i64::from_be_bytes(body.get(8..16)?.try_into().unwrap());
    let len = usize::try_from(int(16)?).ok()?;
    let password = body.get(20..20 + len)?.to_vec();
    Some(Session { id, password, timeout_ms })
}

fn write_frame(stream: &mut TcpStream, body: &[u8]) -> io::Result<()> {
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    stream.write_all(&frame)
}

fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = i32::from_be_bytes(len);
    if !(0..=MAX_FRAME).contains(&len) {
        return Err(io::Error::other(format!("bad frame length {len}")));
    }
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body)?;
    Ok(body)
}

/// Expires `session` on the server at `server` from outside: attaches to it with a raw
/// ConnectRequest carrying its id and password, then sends closeSession. Its ephemeral nodes
/// are gone when this returns `Ok`. The client that owned the session is disconnected by the
/// server and learns of the expiry when it reconnects.
pub fn expire_session(server: SocketAddr, session: &Session) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut req = Vec::new();
    req.extend_from_slice(&0i32.to_be_bytes()); // protocolVersion
    req.extend_from_slice(&0i64.to_be_bytes()); // lastZxidSeen
    req.extend_from_slice(&session.timeout_ms.max(1).to_be_bytes());
    req.extend_from_slice(&session.id.to_be_bytes());
    req.extend_from_slice(&(session.password.len() as i32).to_be_bytes());
    req.extend_from_slice(&session.password);
    req.push(0); // readOnly = false
    write_frame(&mut s, &req)?;
    let resp = parse_connect_response(&read_frame(&mut s)?).ok_or_else(|| io::Error::other("short ConnectResponse"))?;
    if resp.id != session.id || resp.timeout_ms <= 0 {
        return Err(io::Error::other(format!("session {:#x} is no longer valid", session.id)));
    }
    let mut close = Vec::new();
    close.extend_from_slice(&1i32.to_be_bytes()); // xid
    close.extend_from_slice(&op::CLOSE_SESSION.to_be_bytes());
    write_frame(&mut s, &close)?;
    // Skip notifications and pings until the reply to our closeSession.
    loop {
        let reply = read_frame(&mut s)?;
        if reply.len() < 16 {
            return Err(io::Error::other("short reply"));
        }
        let xid = i32::from_be_bytes(reply[0..4].try_into().unwrap());
        let err = i32::from_be_bytes(reply[12..16].try_into().unwrap());
        if xid == 1 {
            return if err == 0 {
                Ok(())
            } else {
                Err(io::Error::other(format!("closeSession failed with error {err}")))
            };
        }
    }
}

/// A [`ZkEnsemble`] whose members reach each other only through proxies, so that links between
/// two members can be cut while every client link stays intact.
///
/// `ZkEnsemble` gives every member the same `server.N` lines; this starts one, stops it,
/// rewrites each member's `zoo.cfg` so that member `i` reaches member `j` (quorum and election
/// ports) through the proxies `link(i, j)`, and starts the members again on their data.
///
/// Caveat: when a member with a lower id opens an election connection, the other side drops
/// it and connects back to the address the lower member announced, which is its real election
/// port. Such election traffic bypasses the proxies; the follower-to-leader quorum link (the
/// one that carries requests, pings and session touches) never does.
pub struct ProxiedEnsemble {
    ensemble: ZkEnsemble,
    /// `links[i][j]`: [quorum, election] proxies through which member `i` reaches member `j`.
    links: Vec<Vec<Option<[Proxy; 2]>>>,
}

impl ProxiedEnsemble {
    pub fn start(n: usize, opts: ZkOptions) -> ProxiedEnsemble {
        let mut ensemble = ZkEnsemble::start_with(n, opts);
        let cfg = std::fs::read_to_string(ensemble.server(0).dir().join("zoo.cfg")).expect("read zoo.cfg");
        let mut ports = vec![(0u16, 0u16); n];
        for line in cfg.lines() {
            let Some((key, value)) = line.split_once('=') else { continue };
            let Some(id) = key.strip_prefix("server.").and_then(|i| i.parse::<usize>().ok()) else { continue };
            let parts: Vec<&str> = value.split(':').collect();
            ports[id - 1] = (parts[1].parse().unwrap(), parts[2].parse().unwrap());
        }
        let to = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let links: Vec<Vec<Option<[Proxy; 2]>>> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        (i != j).then(|| {
                            [
                                Proxy::start(&format!("quorum-{i}-{j}"), to(ports[j].0)),
                                Proxy::start(&format!("election-{i}-{j}"), to(ports[j].1)),
                            ]
                        })
                    })
                    .collect()
            })
            .collect();
        for i in 0..n {
            ensemble.server_mut(i).stop();
        }
        for (i, row) in links.iter().enumerate() {
            let path = ensemble.server(i).dir().join("zoo.cfg");
            let cfg = std::fs::read_to_string(&path).expect("read zoo.cfg");
            let rewritten: Vec<String> = cfg
                .lines()
                .map(|line| {
                    for (j, link) in row.iter().enumerate() {
                        if let Some([quorum, election]) = link {
                            if line.starts_with(&format!("server.{}=", j + 1)) {
                                return format!("server.{}=127.0.0.1:{}:{}", j + 1, quorum.port(), election.port());
                            }
                        }
                    }
                    line.to_owned()
                })
                .collect();
            std::fs::write(&path, rewritten.join("\n") + "\n").expect("write zoo.cfg");
        }
        for i in 0..n {
            ensemble.server_mut(i).restart_nowait();
        }
        for i in 0..n {
            ensemble.server(i).wait_ready(READY_TIMEOUT);
        }
        ensemble.wait_for_leader(READY_TIMEOUT);
        ProxiedEnsemble { ensemble, links }
    }

    /// The [quorum, election] proxies through which member `from` reaches member `to`.
    pub fn link(&self, from: usize, to: usize) -> &[Proxy; 2] {
        self.links[from][to].as_ref().expect("no link from a member to itself")
    }

    /// Sets the mode of every link between `a` and `b`, both ways.
    pub fn set_links(&self, a: usize, b: usize, mode: Mode) {
        for p in self.link(a, b).iter().chain(self.link(b, a)) {
            p.set_mode(mode);
        }
    }

    /// Silently partitions members `a` and `b` from each other (both ways).
    pub fn cut(&self, a: usize, b: usize) {
        self.set_links(a, b, Mode::Drop);
    }

    /// Every link back to [`Mode::Pass`].
    pub fn heal_all(&self) {
        for p in self.links.iter().flatten().flatten().flatten() {
            p.set_mode(Mode::Pass);
        }
    }
}

impl std::ops::Deref for ProxiedEnsemble {
    type Target = ZkEnsemble;
    fn deref(&self) -> &ZkEnsemble {
        &self.ensemble
    }
}

impl std::ops::DerefMut for ProxiedEnsemble {
    fn deref_mut(&mut self) -> &mut ZkEnsemble {
        &mut self.ensemble
    }
}
