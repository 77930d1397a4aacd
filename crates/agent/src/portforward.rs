//! `kubectl port-forward`: TCP connections to a port inside the pod's network namespace,
//! carried as SPDY stream pairs (kubectl; the same inside WebSocket for 1.31+) or as
//! WebSocket channels (client libraries: data on channel 2i, errors on 2i+1 for the i-th port).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

use crate::streams::{Upgraded, spdy, ws};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the pod's ports are: its network namespace (`None`: the host's, for hostNetwork).
#[derive(Clone, Debug)]
pub struct Target {
    pub netns: Option<PathBuf>,
}

impl Target {
    async fn connect(&self, port: u16) -> std::io::Result<tokio::net::TcpStream> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        runtime::containers::sandbox::connect(self.netns.as_deref(), addr, CONNECT_TIMEOUT).await
    }
}

/// Port-forward over SPDY (`portforward.k8s.io`), on any byte stream.
pub async fn serve_spdy<T>(io: T, target: Target)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut events, sender) = spdy::serve(io);
    // Per request ID: its error and data streams.
    let mut pairs: HashMap<String, (Option<u32>, Option<u32>)> = HashMap::new();
    // Data stream -> the task writing to its TCP connection.
    let mut writers: HashMap<u32, mpsc::Sender<Option<Bytes>>> = HashMap::new();
    while let Some(ev) = events.recv().await {
        match ev {
            spdy::Event::Open { id, headers } => {
                if sender.reply(id).await.is_err() {
                    break;
                }
                let kind = spdy::header(&headers, "streamtype").unwrap_or("");
                let request = spdy::header(&headers, "requestid")
                    .unwrap_or("")
                    .to_string();
                let port = spdy::header(&headers, "port").and_then(|p| p.parse::<u16>().ok());
                let entry = pairs.entry(request.clone()).or_default();
                match kind {
                    "error" => entry.0 = Some(id),
                    "data" => entry.1 = Some(id),
                    _ => continue,
                }
                if kind != "data" {
                    continue;
                }
                let error_id = entry.0;
                let (tx, rx) = mpsc::channel(16);
                writers.insert(id, tx);
                let sender = sender.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Some(port) = port else {
                        report(
                            &sender,
                            error_id,
                            "invalid port in the port-forward request",
                        )
                        .await;
                        return;
                    };
                    match target.connect(port).await {
                        Ok(conn) => forward_spdy(conn, id, error_id, rx, sender).await,
                        Err(e) => {
                            let msg = format!(
                                "error forwarding port {port} to pod: failed to connect to localhost:{port} inside the pod: {e}"
                            );
                            report(&sender, error_id, &msg).await;
                            let _ = sender.data(id, Bytes::new(), true).await;
                        }
                    }
                });
            }
            spdy::Event::Data { id, data, fin } => {
                if let Some(w) = writers.get(&id) {
                    if !data.is_empty() {
                        let _ = w.send(Some(data)).await;
                    }
                    if fin {
                        let _ = w.send(None).await;
                    }
                }
            }
            spdy::Event::Reset { id } => {
                writers.remove(&id);
            }
        }
    }
    debug!("port-forward session ended");
}

/// Say `msg` on the error stream, if any, and close it (an empty `msg`: just close it).
async fn report(sender: &spdy::Sender, error_id: Option<u32>, msg: &str) {
    if let Some(e) = error_id {
        let _ = sender.data(e, Bytes::from(msg.to_string()), true).await;
    }
}

/// Copy between one TCP connection and one SPDY data stream, closing each direction when its
/// source closes (a client's FIN shuts the pod's socket for writing; the pod's end of the
/// connection ends the data stream). Once the pod side has ended, the error stream is closed
/// too, as the kubelet does: kubectl waits for it before it closes its local connection,
/// so a reply without a Content-Length would otherwise never end.
async fn forward_spdy(
    conn: tokio::net::TcpStream,
    id: u32,
    error_id: Option<u32>,
    mut from_client: mpsc::Receiver<Option<Bytes>>,
    sender: spdy::Sender,
) {
    let (mut r, mut w) = conn.into_split();
    let up = async move {
        while let Some(Some(b)) = from_client.recv().await {
            if w.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sender
                        .data(id, Bytes::copy_from_slice(&buf[..n]), false)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = sender.data(id, Bytes::new(), true).await;
        report(&sender, error_id, "").await;
    };
    tokio::join!(up, down);
}

/// Port-forward over WebSocket channels (`v4.channel.k8s.io` and later), for `ports`.
pub async fn serve_websocket(io: Upgraded, target: Target, ports: Vec<u16>) {
    let wsock = ws::socket(io).await;
    let (mut sink, mut stream) = wsock.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(32);
    // Each port's channels first announce the port (little-endian), as the protocol says.
    for (i, port) in ports.iter().enumerate() {
        for ch in [2 * i as u8, 2 * i as u8 + 1] {
            let _ = sink.send(ws::message(ch, &port.to_le_bytes())).await;
        }
    }
    let mut writers: Vec<Option<mpsc::Sender<Bytes>>> = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        writers.push(Some(tx));
        let out = out_tx.clone();
        let target = target.clone();
        tokio::spawn(async move {
            let data_ch = 2 * i as u8;
            let conn = match target.connect(port).await {
                Ok(c) => c,
                Err(e) => {
                    let msg = format!("error forwarding port {port} to pod: {e}");
                    let _ = out.send(ws::message(data_ch + 1, msg.as_bytes())).await;
                    return;
                }
            };
            let (mut r, mut w) = conn.into_split();
            let up = async move {
                while let Some(b) = rx.recv().await {
                    if w.write_all(&b).await.is_err() {
                        return;
                    }
                }
                let _ = w.shutdown().await;
            };
            let down = async {
                let mut buf = vec![0u8; 32 * 1024];
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 || out.send(ws::message(data_ch, &buf[..n])).await.is_err() {
                        break;
                    }
                }
            };
            // The forward is over once the pod has closed its end (as the kubelet's is):
            // when every port's is, the session closes, which is how a WebSocket client
            // learns of it.
            let up = tokio::spawn(up);
            down.await;
            up.abort();
        });
    }
    drop(out_tx);
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(m @ (Message::Binary(_) | Message::Text(_)))) => {
                    let b = ws::data(m).unwrap_or_default();
                    let Some(&first) = b.first() else { continue };
                    let ch = first as usize;
                    if ch.is_multiple_of(2)
                        && let Some(Some(w)) = writers.get(ch / 2)
                        && w.send(b.slice(1..)).await.is_err()
                    {
                        writers[ch / 2] = None;
                    }
                }
                Some(Ok(Message::Ping(p))) => {
                    let _ = sink.send(Message::Pong(p)).await;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            out = out_rx.recv() => match out {
                Some(m) => {
                    if sink.send(m).await.is_err() {
                        break;
                    }
                }
                None => {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
            },
        }
    }
}

/// `ports=8080,9090` (or repeated) from a query.
pub fn ports(query: &[(String, String)]) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for (k, v) in query {
        if k != "ports" && k != "port" {
            continue;
        }
        for p in v.split(',').filter(|p| !p.is_empty()) {
            match p.trim().parse::<u16>() {
                Ok(n) if n > 0 => out.push(n),
                _ => return Err(format!("invalid port {p:?}")),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_from_the_query() {
        let q = |s: &str| vec![("ports".to_string(), s.to_string())];
        assert_eq!(ports(&q("8080,9090")), Ok(vec![8080, 9090]));
        assert!(ports(&q("http")).is_err());
        assert!(ports(&q("0")).is_err());
    }

    #[tokio::test]
    async fn spdy_streams_reach_a_local_port() {
        // An echo server on the host stands in for the pod (no namespace needed here).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf.to_ascii_uppercase()).await.unwrap();
        });
        let (client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(serve_spdy(server, Target { netns: None }));
        let mut c = crate::streams::spdy::testing::Client::new(client);
        let hdr = |t: &str| {
            vec![
                ("streamtype", t.to_string()),
                ("port", port.to_string()),
                ("requestid", "0".to_string()),
            ]
        };
        c.open(1, &hdr("error")).await;
        c.open(3, &hdr("data")).await;
        c.data(3, b"hello", false).await;
        let got = c.read_data(3, 5).await;
        assert_eq!(got, b"HELLO");
    }
}
