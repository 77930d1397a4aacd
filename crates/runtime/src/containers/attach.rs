//! Attaching to a container's own stdio (`kubectl attach`, `kubectl run -i`): its shim listens
//! on `attach.sock` in the bundle and speaks a small framed protocol to any number of clients.
//!
//! Every frame is a kind byte, a big-endian `u32` length and that many bytes. A client sends
//! `OpenStdin` once if it will write to the container's stdin, then `Stdin` data, `CloseStdin`
//! at the end of its input, and `Resize` (width, height as big-endian `u16`s) for a terminal.
//! The shim sends `Stdout` and `Stderr` (everything is `Stdout` with a terminal) of what the
//! container writes from then on, and closes the connection once the container has ended and
//! its output is drained.
//!
//! A container with `stdinOnce` has its stdin closed, for good, when the first client that
//! opened stdin closes it or goes away; otherwise stdin stays open across attach sessions.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The socket's name in the bundle.
pub const SOCKET: &str = "attach.sock";

/// The largest frame either side accepts.
const MAX_FRAME: usize = 1 << 20;

/// A client's output backlog beyond which the shim drops it rather than stall the container.
const MAX_BACKLOG: usize = 4 << 20;

/// Container stdin bytes held while the container does not read, before the shim stops
/// reading from clients.
const MAX_STDIN_PENDING: usize = 256 << 10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Stdin(Vec<u8>),
    CloseStdin,
    Resize { width: u16, height: u16 },
    OpenStdin,
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, body): (u8, &[u8]) = match self {
            Frame::Stdin(b) => (0, b),
            Frame::CloseStdin => (1, &[]),
            Frame::Resize { .. } => (2, &[]),
            Frame::OpenStdin => (3, &[]),
            Frame::Stdout(b) => (16, b),
            Frame::Stderr(b) => (17, b),
        };
        let size;
        let body = if let Frame::Resize { width, height } = self {
            size = [width.to_be_bytes(), height.to_be_bytes()].concat();
            &size[..]
        } else {
            body
        };
        let mut out = Vec::with_capacity(5 + body.len());
        out.push(kind);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }
}

/// Frames out of a byte stream that arrives in arbitrary pieces.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived.
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("an attach frame of {len} bytes is too large"),
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let kind = self.buf[0];
        let body: Vec<u8> = self.buf.drain(..5 + len).skip(5).collect();
        let frame = match kind {
            0 => Frame::Stdin(body),
            1 => Frame::CloseStdin,
            2 if body.len() == 4 => Frame::Resize {
                width: u16::from_be_bytes([body[0], body[1]]),
                height: u16::from_be_bytes([body[2], body[3]]),
            },
            3 => Frame::OpenStdin,
            16 => Frame::Stdout(body),
            17 => Frame::Stderr(body),
            k => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown attach frame kind {k}"),
                ));
            }
        };
        Ok(Some(frame))
    }
}

/// The client's side of an attachment: what it sends.
pub struct AttachInput {
    w: Pin<Box<dyn AsyncWrite + Send>>,
}

impl AttachInput {
    pub fn new(w: Pin<Box<dyn AsyncWrite + Send>>) -> AttachInput {
        AttachInput { w }
    }

    pub async fn send(&mut self, f: &Frame) -> io::Result<()> {
        self.w.write_all(&f.encode()).await
    }
}

/// The client's side of an attachment: what the container writes.
pub struct AttachOutput {
    r: Pin<Box<dyn AsyncRead + Send>>,
    decoder: Decoder,
}

impl AttachOutput {
    pub fn new(r: Pin<Box<dyn AsyncRead + Send>>) -> AttachOutput {
        AttachOutput {
            r,
            decoder: Decoder::default(),
        }
    }

    /// The next `Stdout` or `Stderr` frame; `None` once the container has ended.
    pub async fn next(&mut self) -> io::Result<Option<Frame>> {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            if let Some(f) = self.decoder.next_frame()? {
                return Ok(Some(f));
            }
            let n = self.r.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.decoder.push(&buf[..n]);
        }
    }
}

/// An attachment to a running container's stdio.
pub struct Attachment {
    pub input: AttachInput,
    pub output: AttachOutput,
}

/// Connect to the shim of the container whose bundle is `bundle`. Bundle paths can be longer
/// than a socket address allows, so the connection goes through an open handle on the bundle.
pub async fn connect(bundle: &Path) -> io::Result<Attachment> {
    let dir = std::fs::File::open(bundle)?;
    let path = format!("/proc/self/fd/{}/{SOCKET}", dir.as_raw_fd());
    let s = tokio::net::UnixStream::connect(&path).await?;
    drop(dir);
    let (r, w) = s.into_split();
    Ok(Attachment {
        input: AttachInput::new(Box::pin(w)),
        output: AttachOutput::new(Box::pin(r)),
    })
}

// ---- the shim's side: synchronous, driven by the shim's poll loop ----

/// Where attached clients' stdin goes: the write end of the container's stdin pipe, or a
/// duplicate of its terminal's master.
pub struct StdinSink {
    fd: OwnedFd,
    pending: VecDeque<u8>,
    /// Close once `pending` is delivered.
    closing: bool,
}

struct Client {
    sock: UnixStream,
    decoder: Decoder,
    backlog: VecDeque<u8>,
    /// Sent `OpenStdin`.
    stdin: bool,
    /// Has not ended its side of the connection.
    reading: bool,
}

/// The shim's attach endpoint and its clients.
pub struct Hub {
    listener: Option<UnixListener>,
    clients: Vec<Client>,
    stdin: Option<StdinSink>,
    stdin_once: bool,
    /// The terminal's master, for resizes.
    tty: Option<OwnedFd>,
}

/// What one poll entry of the hub stands for.
#[derive(Clone, Copy, Debug)]
pub enum Slot {
    Listener,
    Client(usize),
    Stdin,
}

fn nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

impl Hub {
    /// Listen on `socket` (a short path: the shim runs in the bundle). `stdin` is where
    /// clients' input goes (none if the container's stdin is not open); `tty` the terminal's
    /// master, if the container has one.
    pub fn new(
        socket: &Path,
        stdin: Option<OwnedFd>,
        stdin_once: bool,
        tty: Option<OwnedFd>,
    ) -> io::Result<Hub> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        listener.set_nonblocking(true)?;
        let stdin = match stdin {
            Some(fd) => {
                nonblocking(fd.as_fd())?;
                Some(StdinSink {
                    fd,
                    pending: VecDeque::new(),
                    closing: false,
                })
            }
            None => None,
        };
        Ok(Hub {
            listener: Some(listener),
            clients: Vec::new(),
            stdin,
            stdin_once,
            tty,
        })
    }

    /// The descriptors to poll and what each wants: (slot, fd, want to read, want to write).
    pub fn interests(&self) -> Vec<(Slot, BorrowedFd<'_>, bool, bool)> {
        let mut v = Vec::new();
        if let Some(l) = &self.listener {
            v.push((Slot::Listener, l.as_fd(), true, false));
        }
        let stdin_full = self
            .stdin
            .as_ref()
            .is_some_and(|s| s.pending.len() >= MAX_STDIN_PENDING);
        for (i, c) in self.clients.iter().enumerate() {
            v.push((
                Slot::Client(i),
                c.sock.as_fd(),
                c.reading && !stdin_full,
                !c.backlog.is_empty(),
            ));
        }
        if let Some(s) = &self.stdin
            && !s.pending.is_empty()
        {
            v.push((Slot::Stdin, s.fd.as_fd(), false, true));
        }
        v
    }

    /// Act on the slots poll found ready (with whether it saw the peer hang up); errors only
    /// drop clients. Call before anything else changes the clients (`broadcast`).
    pub fn ready(&mut self, slots: &[(Slot, bool)]) {
        let mut gone = Vec::new();
        for (s, hangup) in slots {
            match *s {
                Slot::Listener => self.accept(),
                Slot::Client(i) => {
                    let mut alive = self.serve(i);
                    // A client that hung up may have left input behind: take all of it.
                    let mut rounds = 0;
                    while *hangup && alive && self.clients[i].reading && rounds < 64 {
                        alive = self.serve(i);
                        rounds += 1;
                    }
                    if !alive || *hangup {
                        gone.push(i);
                    }
                }
                Slot::Stdin => self.flush_stdin(),
            }
        }
        gone.sort_unstable();
        for i in gone.into_iter().rev() {
            let c = self.clients.remove(i);
            if c.stdin {
                self.stdin_done();
            }
        }
    }

    fn accept(&mut self) {
        let Some(l) = &self.listener else { return };
        while let Ok((sock, _)) = l.accept() {
            if sock.set_nonblocking(true).is_ok() {
                self.clients.push(Client {
                    sock,
                    decoder: Decoder::default(),
                    backlog: VecDeque::new(),
                    stdin: false,
                    reading: true,
                });
            }
        }
    }

    /// Read and write what client `i` has ready; false once it is gone. A client that ends
    /// its side is done with its input but still gets the output.
    fn serve(&mut self, i: usize) -> bool {
        if !write_backlog(&mut self.clients[i]) {
            return false;
        }
        if !self.clients[i].reading {
            return true;
        }
        let mut buf = [0u8; 32 * 1024];
        let n = match self.clients[i].sock.read(&mut buf) {
            Ok(0) => {
                let c = &mut self.clients[i];
                c.reading = false;
                if std::mem::take(&mut c.stdin) {
                    self.stdin_done();
                }
                return true;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return true,
            Err(_) => return false,
        };
        self.clients[i].decoder.push(&buf[..n]);
        loop {
            let frame = match self.clients[i].decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return true,
                Err(_) => return false,
            };
            match frame {
                Frame::OpenStdin => self.clients[i].stdin = true,
                Frame::Stdin(b) => {
                    if let Some(s) = &mut self.stdin
                        && !s.closing
                    {
                        s.pending.extend(b);
                    }
                    self.flush_stdin();
                }
                Frame::CloseStdin => {
                    if self.clients[i].stdin {
                        self.clients[i].stdin = false;
                        self.stdin_done();
                    }
                }
                Frame::Resize { width, height } => {
                    if let Some(t) = &self.tty {
                        let ws = libc::winsize {
                            ws_row: height,
                            ws_col: width,
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which outlives
                        // the call.
                        unsafe { libc::ioctl(t.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                    }
                }
                Frame::Stdout(_) | Frame::Stderr(_) => {}
            }
        }
    }

    /// A client that had stdin is done with it: with `stdinOnce`, the container's stdin closes
    /// once what was written has been delivered, and no client can write to it again.
    fn stdin_done(&mut self) {
        if !self.stdin_once {
            return;
        }
        if let Some(s) = &mut self.stdin {
            s.closing = true;
        }
        self.flush_stdin();
    }

    fn flush_stdin(&mut self) {
        let Some(s) = &mut self.stdin else { return };
        if s.closing && s.pending.is_empty() {
            self.stdin = None;
            return;
        }
        while !s.pending.is_empty() {
            let (a, _) = s.pending.as_slices();
            match nix::unistd::write(&s.fd, a) {
                Ok(n) => {
                    s.pending.drain(..n);
                }
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => return,
                Err(_) => {
                    // The container closed its stdin.
                    self.stdin = None;
                    return;
                }
            }
        }
        if s.closing {
            self.stdin = None;
        }
    }

    /// Send container output to every client.
    pub fn broadcast(&mut self, f: &Frame) {
        if self.clients.is_empty() {
            return;
        }
        let bytes = f.encode();
        let mut gone = Vec::new();
        for (i, c) in self.clients.iter_mut().enumerate() {
            c.backlog.extend(&bytes);
            if c.backlog.len() > MAX_BACKLOG || !write_backlog(c) {
                gone.push(i);
            }
        }
        for i in gone.into_iter().rev() {
            let c = self.clients.remove(i);
            if c.stdin {
                self.stdin_done();
            }
        }
    }

    /// The container has ended: stop listening, give clients a moment to take the rest of the
    /// output, then hang up on them.
    pub fn close(&mut self, socket: &Path) {
        self.listener = None;
        let _ = std::fs::remove_file(socket);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        for c in &mut self.clients {
            let _ = c.sock.set_nonblocking(false);
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let _ = c.sock.set_write_timeout(Some(left));
            let (a, b) = c.backlog.as_slices();
            let _ = c.sock.write_all(a).and_then(|_| c.sock.write_all(b));
        }
        self.clients.clear();
    }
}

/// Write what the client can take now; false if it is gone.
fn write_backlog(c: &mut Client) -> bool {
    while !c.backlog.is_empty() {
        let (a, _) = c.backlog.as_slices();
        match c.sock.write(a) {
            Ok(0) => return false,
            Ok(n) => {
                c.backlog.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn frames_round_trip_in_any_pieces() {
        let frames = vec![
            Frame::OpenStdin,
            Frame::Stdin(b"hello\n".to_vec()),
            Frame::Resize {
                width: 120,
                height: 40,
            },
            Frame::CloseStdin,
            Frame::Stdout(vec![]),
            Frame::Stderr(vec![7; 70_000]),
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        for piece in [1, 3, 4096, bytes.len()] {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for chunk in bytes.chunks(piece) {
                d.push(chunk);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "pieces of {piece}");
        }
    }

    #[test]
    fn oversized_and_unknown_frames_are_refused() {
        let mut d = Decoder::default();
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(d.next_frame().is_err());
        let mut d = Decoder::default();
        d.push(&[9, 0, 0, 0, 0]);
        assert!(d.next_frame().is_err());
    }
}
