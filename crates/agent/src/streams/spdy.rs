//! The server side of SPDY/3.1 as kubectl uses it for exec, attach and port-forward: the client
//! opens streams (SYN_STREAM with a `streamtype` header), the server accepts each (SYN_REPLY)
//! and both sides send DATA until FIN. Header blocks are zlib-compressed with the SPDY/3
//! dictionary, one compression context per direction for the whole connection. Flow control
//! is not enforced by kubectl's side, so WINDOW_UPDATE frames are read and ignored.

use std::collections::BTreeMap;
use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

/// The SPDY/3 header compression dictionary (1423 bytes, adler32 0xe3c6a7c2).
const DICTIONARY: &[u8] = include_bytes!("spdy3.dict");

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;
const FLAG_FIN: u8 = 0x01;
/// Larger frames are refused: nothing kubectl sends comes near it.
const MAX_FRAME: usize = 1 << 20;
/// Data is sent in pieces of at most this size.
const CHUNK: usize = 32 * 1024;
pub const RST_CANCEL: u32 = 5;

/// Header names (lowercase) to their values.
pub type Headers = BTreeMap<String, Vec<String>>;

/// What the client did.
#[derive(Debug)]
pub enum Event {
    Open { id: u32, headers: Headers },
    Data { id: u32, data: Bytes, fin: bool },
    Reset { id: u32 },
}

enum Out {
    Reply(u32),
    Data(u32, Bytes, bool),
    Reset(u32, u32),
    Ping(u32),
    GoAway,
}

/// Sends frames to the client; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::Sender<Out>,
}

impl Sender {
    /// Accept a stream the client opened.
    pub async fn reply(&self, id: u32) -> io::Result<()> {
        self.send(Out::Reply(id)).await
    }

    /// Send bytes on a stream; `fin` closes our side of it.
    pub async fn data(&self, id: u32, mut data: Bytes, fin: bool) -> io::Result<()> {
        while data.len() > CHUNK {
            let head = data.split_to(CHUNK);
            self.send(Out::Data(id, head, false)).await?;
        }
        self.send(Out::Data(id, data, fin)).await
    }

    pub async fn reset(&self, id: u32, status: u32) -> io::Result<()> {
        self.send(Out::Reset(id, status)).await
    }

    pub async fn go_away(&self) -> io::Result<()> {
        self.send(Out::GoAway).await
    }

    /// Wait until everything queued so far is on the wire.
    pub async fn flush(&self) {
        // The writer handles frames in order; a permit for the whole capacity means it drained.
        let _ = self.tx.reserve_many(self.tx.max_capacity()).await;
    }

    async fn send(&self, o: Out) -> io::Result<()> {
        self.tx
            .send(o)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the SPDY connection is closed"))
    }
}

/// Serve SPDY on `io`: returns the client's events (ending when the connection does) and a
/// sender for frames back.
pub fn serve<T>(io: T) -> (mpsc::Receiver<Event>, Sender)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::channel(64);
    let (ev_tx, ev_rx) = mpsc::channel(64);
    let sender = Sender { tx: out_tx };
    tokio::spawn(write_loop(w, out_rx));
    let pinger = sender.clone();
    tokio::spawn(async move {
        if let Err(e) = read_loop(r, ev_tx, pinger).await {
            debug!(error = %e, "SPDY connection ended");
        }
    });
    (ev_rx, sender)
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut r: R,
    events: mpsc::Sender<Event>,
    sender: Sender,
) -> io::Result<()> {
    let mut inflate = HeaderReader::new();
    loop {
        let mut head = [0u8; 8];
        match r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            return Err(bad("frame too large"));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).await?;
        let mut p = Bytes::from(payload);
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            let ev = Event::Data {
                id,
                data: p,
                fin: flags & FLAG_FIN != 0,
            };
            if events.send(ev).await.is_err() {
                return Ok(());
            }
            continue;
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        let kind = u16::from_be_bytes([head[2], head[3]]);
        if version != VERSION {
            return Err(bad("unsupported SPDY version"));
        }
        let need = |p: &Bytes, n: usize| {
            if p.len() < n {
                Err(bad("short control frame"))
            } else {
                Ok(())
            }
        };
        match kind {
            SYN_STREAM => {
                need(&p, 10)?;
                let id = p.get_u32() & 0x7fff_ffff;
                p.advance(6);
                let headers = inflate.read(&p)?;
                let fin = flags & FLAG_FIN != 0;
                if events.send(Event::Open { id, headers }).await.is_err() {
                    return Ok(());
                }
                if fin
                    && events
                        .send(Event::Data {
                            id,
                            data: Bytes::new(),
                            fin,
                        })
                        .await
                        .is_err()
                {
                    return Ok(());
                }
            }
            HEADERS => {
                // Read only to keep the compression context in step.
                need(&p, 4)?;
                p.advance(4);
                inflate.read(&p)?;
            }
            RST_STREAM => {
                need(&p, 8)?;
                let id = p.get_u32() & 0x7fff_ffff;
                if events.send(Event::Reset { id }).await.is_err() {
                    return Ok(());
                }
            }
            PING => {
                need(&p, 4)?;
                let _ = sender.send(Out::Ping(p.get_u32())).await;
            }
            GOAWAY => return Ok(()),
            SYN_REPLY | SETTINGS | WINDOW_UPDATE => {}
            _ => {}
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Out>) {
    let mut deflate = HeaderWriter::new();
    while let Some(o) = rx.recv().await {
        let mut frame = BytesMut::new();
        let control = |frame: &mut BytesMut, kind: u16, flags: u8, payload: &[u8]| {
            frame.put_u16(0x8000 | VERSION);
            frame.put_u16(kind);
            frame.put_u32(((flags as u32) << 24) | payload.len() as u32);
            frame.put_slice(payload);
        };
        match o {
            Out::Reply(id) => {
                let mut p = BytesMut::new();
                p.put_u32(id);
                match deflate.write(&Headers::new()) {
                    Ok(block) => p.put_slice(&block),
                    Err(e) => {
                        debug!(error = %e, "could not compress SPDY headers");
                        return;
                    }
                }
                control(&mut frame, SYN_REPLY, 0, &p);
            }
            Out::Data(id, data, fin) => {
                frame.put_u32(id & 0x7fff_ffff);
                frame.put_u32(((if fin { FLAG_FIN } else { 0 } as u32) << 24) | data.len() as u32);
                frame.put_slice(&data);
            }
            Out::Reset(id, status) => {
                let mut p = [0u8; 8];
                p[..4].copy_from_slice(&id.to_be_bytes());
                p[4..].copy_from_slice(&status.to_be_bytes());
                control(&mut frame, RST_STREAM, 0, &p);
            }
            Out::Ping(id) => control(&mut frame, PING, 0, &id.to_be_bytes()),
            Out::GoAway => control(&mut frame, GOAWAY, 0, &[0u8; 8]),
        }
        if w.write_all(&frame).await.is_err() || w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// The client's header blocks, through the connection's one inflate context.
struct HeaderReader {
    z: Decompress,
}

impl HeaderReader {
    fn new() -> HeaderReader {
        HeaderReader {
            z: Decompress::new(true),
        }
    }

    fn inflate(&mut self, block: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            let before_in = self.z.total_in();
            if out.capacity() - out.len() < 256 {
                out.reserve(4096);
            }
            let r = self
                .z
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.z.total_in() - before_in) as usize;
            input = &input[used..];
            match r {
                Ok(Status::StreamEnd) => return Ok(out),
                Ok(_) if input.is_empty() && out.capacity() > out.len() => return Ok(out),
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(DICTIONARY)
                        .map_err(|_| bad("bad header dictionary"))?;
                }
                Err(_) => return Err(bad("corrupt header block")),
            }
            if out.len() > MAX_FRAME {
                return Err(bad("header block too large"));
            }
        }
    }

    fn read(&mut self, block: &[u8]) -> io::Result<Headers> {
        let raw = self.inflate(block)?;
        parse_headers(&raw)
    }
}

fn parse_headers(raw: &[u8]) -> io::Result<Headers> {
    let mut b = raw;
    let take = |b: &mut &[u8]| -> io::Result<Vec<u8>> {
        if b.len() < 4 {
            return Err(bad("short header block"));
        }
        let n = b.get_u32() as usize;
        if b.len() < n {
            return Err(bad("short header block"));
        }
        let v = b[..n].to_vec();
        b.advance(n);
        Ok(v)
    };
    if b.len() < 4 {
        return Err(bad("short header block"));
    }
    let count = b.get_u32();
    let mut h = Headers::new();
    for _ in 0..count {
        let name = String::from_utf8_lossy(&take(&mut b)?).to_lowercase();
        let value = take(&mut b)?;
        let values = value
            .split(|c| *c == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned());
        h.entry(name).or_default().extend(values);
    }
    Ok(h)
}

/// Our header blocks, through the connection's one deflate context.
struct HeaderWriter {
    z: Compress,
}

impl HeaderWriter {
    fn new() -> HeaderWriter {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(DICTIONARY)
            .expect("a preset dictionary on a fresh stream");
        HeaderWriter { z }
    }

    fn write(&mut self, h: &Headers) -> io::Result<Vec<u8>> {
        let mut raw = Vec::new();
        raw.put_u32(h.len() as u32);
        for (k, vs) in h {
            raw.put_u32(k.len() as u32);
            raw.put_slice(k.as_bytes());
            let v = vs.join("\0");
            raw.put_u32(v.len() as u32);
            raw.put_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            out.reserve(256);
            let before = self.z.total_in();
            self.z
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|_| bad("header compression failed"))?;
            input = &input[(self.z.total_in() - before) as usize..];
            // A sync flush is complete when the output buffer was not filled up.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The first value of a header.
pub fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.first()).map(String::as_str)
}

/// A minimal SPDY client for tests.
#[cfg(test)]
pub mod testing {
    use super::*;

    pub struct Client<T> {
        r: tokio::io::ReadHalf<T>,
        w: tokio::io::WriteHalf<T>,
        z: HeaderWriter,
        inflate: HeaderReader,
    }

    impl<T: AsyncRead + AsyncWrite> Client<T> {
        pub fn new(io: T) -> Client<T> {
            let (r, w) = tokio::io::split(io);
            Client {
                r,
                w,
                z: HeaderWriter::new(),
                inflate: HeaderReader::new(),
            }
        }

        pub async fn open(&mut self, id: u32, headers: &[(&str, String)]) {
            let h: Headers = headers
                .iter()
                .map(|(k, v)| (k.to_string(), vec![v.clone()]))
                .collect();
            let block = self.z.write(&h).unwrap();
            let mut f = BytesMut::new();
            f.put_u16(0x8003);
            f.put_u16(SYN_STREAM);
            f.put_u32(10 + block.len() as u32);
            f.put_u32(id);
            f.put_u32(0);
            f.put_u16(0);
            f.put_slice(&block);
            self.w.write_all(&f).await.unwrap();
        }

        pub async fn data(&mut self, id: u32, data: &[u8], fin: bool) {
            let mut f = BytesMut::new();
            f.put_u32(id);
            f.put_u32(((fin as u32) << 24) | data.len() as u32);
            f.put_slice(data);
            self.w.write_all(&f).await.unwrap();
        }

        /// Read frames until `n` bytes of data arrived on stream `id`.
        pub async fn read_data(&mut self, id: u32, n: usize) -> Vec<u8> {
            let mut got = Vec::new();
            while got.len() < n {
                let mut head = [0u8; 8];
                self.r.read_exact(&mut head).await.unwrap();
                let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
                let mut p = vec![0u8; len];
                self.r.read_exact(&mut p).await.unwrap();
                if head[0] & 0x80 != 0 {
                    if u16::from_be_bytes([head[2], head[3]]) == SYN_REPLY {
                        self.inflate.read(&p[4..]).unwrap();
                    }
                    continue;
                }
                if u32::from_be_bytes([head[0], head[1], head[2], head[3]]) == id {
                    got.extend_from_slice(&p);
                }
            }
            got
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_is_the_spdy3_one() {
        assert_eq!(DICTIONARY.len(), 1423);
        // adler32, computed here to check the file.
        let (mut a, mut b) = (1u32, 0u32);
        for &x in DICTIONARY {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn header_blocks_round_trip_across_one_context() {
        let mut w = HeaderWriter::new();
        let mut r = HeaderReader::new();
        for i in 0..3 {
            let h = Headers::from([
                ("streamtype".to_string(), vec!["data".to_string()]),
                ("port".to_string(), vec![format!("80{i}")]),
                ("requestid".to_string(), vec![i.to_string()]),
            ]);
            let block = w.write(&h).unwrap();
            assert_eq!(r.read(&block).unwrap(), h);
        }
        // Multiple values travel NUL-separated.
        let h = Headers::from([("x".to_string(), vec!["a".to_string(), "b".to_string()])]);
        assert_eq!(r.read(&w.write(&h).unwrap()).unwrap(), h);
    }

    #[tokio::test]
    async fn streams_open_carry_data_and_get_replies() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (mut events, sender) = serve(server);
        let (mut cr, mut cw) = tokio::io::split(client);
        // The client opens stream 1 with a header block, sends data with FIN, and pings.
        let mut w = HeaderWriter::new();
        let block = w
            .write(&Headers::from([(
                "streamtype".to_string(),
                vec!["stdin".to_string()],
            )]))
            .unwrap();
        let mut syn = BytesMut::new();
        syn.put_u16(0x8003);
        syn.put_u16(SYN_STREAM);
        syn.put_u32(10 + block.len() as u32);
        syn.put_u32(1);
        syn.put_u32(0);
        syn.put_u16(0);
        syn.put_slice(&block);
        syn.put_u32(1);
        syn.put_u32((1 << 24) | 5);
        syn.put_slice(b"hello");
        syn.put_u16(0x8003);
        syn.put_u16(PING);
        syn.put_u32(4);
        syn.put_u32(7);
        cw.write_all(&syn).await.unwrap();
        match events.recv().await.unwrap() {
            Event::Open { id, headers } => {
                assert_eq!(id, 1);
                assert_eq!(header(&headers, "streamtype"), Some("stdin"));
            }
            e => panic!("{e:?}"),
        }
        match events.recv().await.unwrap() {
            Event::Data { id, data, fin } => {
                assert_eq!((id, &data[..], fin), (1, &b"hello"[..], true))
            }
            e => panic!("{e:?}"),
        }
        sender.reply(1).await.unwrap();
        sender
            .data(1, Bytes::from_static(b"out"), true)
            .await
            .unwrap();
        // The client sees the PING echoed, and a SYN_REPLY for stream 1 then the data.
        let mut head = [0u8; 8];
        let mut kinds = Vec::new();
        for _ in 0..3 {
            cr.read_exact(&mut head).await.unwrap();
            let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
            let mut p = vec![0u8; len];
            cr.read_exact(&mut p).await.unwrap();
            if head[0] & 0x80 != 0 {
                kinds.push(format!(
                    "control {}",
                    u16::from_be_bytes([head[2], head[3]])
                ));
            } else {
                kinds.push(format!(
                    "data {} fin={}",
                    String::from_utf8_lossy(&p),
                    head[4] & 1
                ));
            }
        }
        // The PING answer may come before or after the others; the reply precedes the data.
        let ping = kinds
            .iter()
            .position(|k| k == "control 6")
            .expect("ping answered");
        kinds.remove(ping);
        assert_eq!(kinds, ["control 2", "data out fin=1"]);
    }
}
