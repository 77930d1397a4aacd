//! The DNS server's IO: UDP (one socket per core, `SO_REUSEPORT`) and TCP listeners, and the
//! upstream queries for names outside the cluster. Deciding answers is `answer::resolve`'s;
//! this only moves bytes and waits.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::{debug, warn};

use super::answer::{self, Answer, Missing, Parsed, Request};
use super::cache::Cache;
use super::index::Index;

/// How long one upstream server gets to answer before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an idle TCP client is kept.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Most TCP clients served at once.
const MAX_TCP_CLIENTS: usize = 256;
/// Most upstream answers kept.
const CACHE_ENTRIES: usize = 10_000;

/// Counters, for metrics and the benchmark.
#[derive(Default, Debug)]
pub struct Stats {
    pub queries: AtomicU64,
    pub upstream_queries: AtomicU64,
    pub walks: AtomicU64,
    pub malformed: AtomicU64,
}

/// A node's cluster DNS: the records, the pods whose search paths it walks, the upstream
/// resolvers and their cache.
pub struct DnsServer {
    index: RwLock<Index>,
    /// Pod address -> its resolver's search list (only pods whose first nameserver this is).
    clients: RwLock<HashMap<IpAddr, Arc<[Name]>>>,
    upstreams: Vec<SocketAddr>,
    cache: Mutex<Cache>,
    pub stats: Stats,
    started: Instant,
    /// Seconds after `started` (plus 60) of the last upstream warning.
    warned_at: AtomicU64,
}

impl DnsServer {
    pub fn new(index: Index, upstreams: Vec<SocketAddr>) -> Arc<DnsServer> {
        Arc::new(DnsServer {
            index: RwLock::new(index),
            clients: RwLock::default(),
            upstreams,
            cache: Mutex::new(Cache::new(CACHE_ENTRIES)),
            stats: Stats::default(),
            started: Instant::now(),
            warned_at: AtomicU64::new(0),
        })
    }

    /// Change the records.
    pub fn update(&self, f: impl FnOnce(&mut Index)) {
        f(&mut self.index.write().unwrap_or_else(|p| p.into_inner()));
    }

    /// Say which search list the pod at `ip` walks (`None`: forget it).
    pub fn set_client(&self, ip: IpAddr, searches: Option<&[String]>) {
        let mut clients = self.clients.write().unwrap_or_else(|p| p.into_inner());
        let names: Option<Arc<[Name]>> = searches.and_then(|s| {
            s.iter()
                .map(|d| {
                    let mut n = Name::from_ascii(d).ok()?.to_lowercase();
                    n.set_fqdn(true);
                    Some(n)
                })
                .collect::<Option<Vec<Name>>>()
                .map(Arc::from)
        });
        match names {
            Some(n) => {
                clients.insert(ip, n);
            }
            None => {
                clients.remove(&ip);
            }
        }
    }

    /// Answer without waiting, or say which upstream answer is missing.
    fn try_answer(
        &self,
        req: &Request,
        src: IpAddr,
        extra: &HashMap<(Name, RecordType), Answer>,
    ) -> Result<Answer, Missing> {
        let searches = self
            .clients
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&src)
            .cloned();
        let now = Instant::now();
        let upstream = |n: &Name, t: RecordType| -> Option<Answer> {
            if let Some(a) = extra.get(&(n.to_lowercase(), t)) {
                return Some(a.clone());
            }
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(n, t, now)
        };
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        answer::resolve(&index, req, searches.as_deref(), &upstream)
    }

    /// The response to one query from `src`, waiting for upstream if it must.
    pub async fn answer(&self, req: &Request, src: IpAddr, limit: usize) -> Vec<u8> {
        let mut fetched: HashMap<(Name, RecordType), Answer> = HashMap::new();
        loop {
            match self.try_answer(req, src, &fetched) {
                Ok(a) => return answer::respond(req, a, limit),
                Err(Missing(name, qtype)) => {
                    let a = self.ask_upstream(&name, qtype).await;
                    fetched.insert((name.to_lowercase(), qtype), a);
                }
            }
        }
    }

    /// Serve on `addr` (TCP, and UDP on `udp_sockets` sockets the kernel spreads clients
    /// over: one per core the server may use) until an error stops a listener.
    pub async fn serve(self: Arc<Self>, addr: SocketAddr, udp_sockets: usize) -> io::Result<()> {
        let tcp = TcpListener::bind(addr).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..udp_sockets.max(1) {
            let socket = Arc::new(udp_socket(addr)?);
            tasks.spawn(self.clone().serve_udp(socket));
        }
        tasks.spawn(self.clone().serve_tcp(tcp));
        match tasks.join_next().await {
            Some(Ok(r)) => r,
            Some(Err(e)) => Err(io::Error::other(e)),
            None => Ok(()),
        }
    }

    async fn serve_udp(self: Arc<Self>, socket: Arc<UdpSocket>) -> io::Result<()> {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer) = socket.recv_from(&mut buf).await?;
            self.stats.queries.fetch_add(1, Ordering::Relaxed);
            let req = match answer::parse(&buf[..n]) {
                Parsed::Query(r) => r,
                Parsed::Refuse(bytes) => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    let _ = socket.send_to(&bytes, peer).await;
                    continue;
                }
                Parsed::Drop => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            let limit = req.udp_limit();
            // Cluster names (and cached ones) are answered in place; a wait for upstream
            // goes to its own task so it holds nobody else up.
            match self.try_answer(&req, peer.ip(), &HashMap::new()) {
                Ok(a) => {
                    let bytes = answer::respond(&req, a, limit);
                    if let Err(e) = socket.send_to(&bytes, peer).await {
                        debug!(%peer, error = %e, "could not send a DNS answer");
                    }
                }
                Err(_) => {
                    let (me, socket) = (self.clone(), socket.clone());
                    tokio::spawn(async move {
                        let bytes = me.answer(&req, peer.ip(), limit).await;
                        let _ = socket.send_to(&bytes, peer).await;
                    });
                }
            }
        }
    }

    async fn serve_tcp(self: Arc<Self>, listener: TcpListener) -> io::Result<()> {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CLIENTS));
        loop {
            let (stream, peer) = listener.accept().await?;
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue; // too many: dropping the connection is the answer
            };
            let me = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = me.tcp_client(stream, peer.ip()).await {
                    debug!(%peer, error = %e, "DNS TCP client gone");
                }
            });
        }
    }

    async fn tcp_client(&self, mut stream: TcpStream, src: IpAddr) -> io::Result<()> {
        loop {
            let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
                Ok(Ok(len)) => len as usize,
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(()),
            };
            let mut buf = vec![0u8; len];
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "slow client"))??;
            self.stats.queries.fetch_add(1, Ordering::Relaxed);
            let bytes = match answer::parse(&buf) {
                Parsed::Query(req) => self.answer(&req, src, u16::MAX as usize).await,
                Parsed::Refuse(bytes) => bytes,
                Parsed::Drop => return Ok(()),
            };
            let mut out = Vec::with_capacity(bytes.len() + 2);
            out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            out.extend_from_slice(&bytes);
            stream.write_all(&out).await?;
        }
    }

    /// Ask the upstream resolvers, in order, and keep what they say.
    async fn ask_upstream(&self, name: &Name, qtype: RecordType) -> Answer {
        self.stats.upstream_queries.fetch_add(1, Ordering::Relaxed);
        for server in &self.upstreams {
            match query_upstream(*server, name, qtype).await {
                Ok(m) => {
                    let a = Answer {
                        code: m.metadata.response_code,
                        authoritative: false,
                        answers: m.answers,
                        authorities: m.authorities,
                        additionals: Vec::new(),
                    };
                    if a.code == ResponseCode::ServFail || a.code == ResponseCode::Refused {
                        continue;
                    }
                    self.cache.lock().unwrap_or_else(|p| p.into_inner()).put(
                        name,
                        qtype,
                        &a,
                        Instant::now(),
                    );
                    return a;
                }
                Err(e) => self.upstream_failed(*server, name, &e),
            }
        }
        Answer {
            code: ResponseCode::ServFail,
            ..Default::default()
        }
    }
}

impl DnsServer {
    /// Say that upstream failed, at most once a minute (an offline node would otherwise
    /// log every lookup of an outside name).
    fn upstream_failed(&self, server: SocketAddr, name: &Name, e: &io::Error) {
        let now = self.started.elapsed().as_secs() + 60;
        let last = self.warned_at.load(Ordering::Relaxed);
        if now >= last + 60
            && self
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(%server, %name, error = %e, "upstream DNS server did not answer (said once a minute)");
        } else {
            debug!(%server, %name, error = %e, "upstream DNS server did not answer");
        }
    }
}

fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, sockopt};
    let family = if addr.is_ipv6() {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let fd = socket::socket(
        family,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    match addr {
        SocketAddr::V4(a) => socket::bind(raw, &socket::SockaddrIn::from(a))?,
        SocketAddr::V6(a) => socket::bind(raw, &socket::SockaddrIn6::from(a))?,
    }
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

/// One question to one upstream server: UDP, then TCP if the answer was truncated.
async fn query_upstream(server: SocketAddr, name: &Name, qtype: RecordType) -> io::Result<Message> {
    let id = fastrand::u16(..);
    let mut q = Message::query();
    q.metadata.id = id;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(name.clone(), qtype));
    let mut e = Edns::new();
    e.set_max_payload(answer::MAX_UDP as u16);
    q.set_edns(e);
    let bytes = q.to_vec().map_err(io::Error::other)?;
    let local: SocketAddr = if server.is_ipv6() {
        "[::]:0".parse().expect("a literal address")
    } else {
        "0.0.0.0:0".parse().expect("a literal address")
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(&bytes).await?;
    let mut buf = vec![0u8; 4096];
    let m = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        loop {
            let n = socket.recv(&mut buf).await?;
            // Anything but the answer to this question is ignored (spoofing, stale replies).
            if let Ok(m) = Message::from_vec(&buf[..n])
                && m.metadata.id == id
                && m.queries.first().map(Query::name) == Some(name)
            {
                return Ok::<Message, io::Error>(m);
            }
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))??;
    if !m.metadata.truncation {
        return Ok(m);
    }
    tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        let mut s = TcpStream::connect(server).await?;
        let mut out = Vec::with_capacity(bytes.len() + 2);
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(&bytes);
        s.write_all(&out).await?;
        let len = s.read_u16().await? as usize;
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await?;
        Message::from_vec(&buf).map_err(io::Error::other)
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer over TCP"))?
}
