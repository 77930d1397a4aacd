//! WebSocket sides of exec and port-forward. In the `channel.k8s.io` family each binary
//! message starts with a channel byte (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; v5 adds
//! 255 = "close channel N"). kubectl 1.31+ also tunnels SPDY through WebSocket for
//! port-forward; that is just bytes in binary messages.

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, frame::coding::CloseCode};

use super::{Channels, Input, Output, Upgraded, resizes};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
pub const CLOSE: u8 = 255;

pub async fn socket(io: Upgraded) -> WebSocketStream<Upgraded> {
    WebSocketStream::from_raw_socket(io, Role::Server, None).await
}

/// A binary message on channel `ch`.
pub fn message(ch: u8, data: &[u8]) -> Message {
    let mut b = BytesMut::with_capacity(data.len() + 1);
    b.put_u8(ch);
    b.put_slice(data);
    Message::Binary(b.freeze())
}

/// The bytes of a data message. Binary and text messages are read alike, as kube-apiserver
/// does: the Python client sends stdin (channel byte and all) in text messages.
pub fn data(m: Message) -> Option<Bytes> {
    match m {
        Message::Binary(b) => Some(b),
        Message::Text(t) => Some(AsRef::<Bytes>::as_ref(&t).clone()),
        _ => None,
    }
}

fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// Exec or attach over `v4.channel.k8s.io` / `v5.channel.k8s.io`.
pub async fn exec_channels(io: Upgraded, _subprotocol: &str) -> Channels {
    let ws = socket(io).await;
    let (mut sink, mut stream) = ws.split();
    let (in_tx, in_rx) = mpsc::channel(16);
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(16);
    tokio::spawn(async move {
        let mut reading = true;
        loop {
            tokio::select! {
                msg = stream.next(), if reading => match msg {
                    Some(Ok(m @ (Message::Binary(_) | Message::Text(_)))) => {
                        let b = data(m).unwrap_or_default();
                        let inputs = match b.first().copied().unwrap_or(u8::MAX - 1) {
                            STDIN => vec![Input::Stdin(b.slice(1..))],
                            RESIZE => resizes(&b[1..]),
                            CLOSE if b.get(1) == Some(&STDIN) => vec![Input::StdinEnd],
                            _ => Vec::new(),
                        };
                        for i in inputs {
                            let _ = in_tx.send(i).await;
                        }
                    }
                    Some(Ok(Message::Ping(p))) => {
                        let _ = sink.send(Message::Pong(p)).await;
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        reading = false;
                        let _ = in_tx.send(Input::StdinEnd).await;
                        let _ = in_tx.send(Input::Hangup).await;
                    }
                    Some(Ok(_)) => {}
                },
                out = out_rx.recv() => {
                    let msg = match out {
                        Some(Output::Stdout(b)) => message(STDOUT, &b),
                        Some(Output::Stderr(b)) => message(STDERR, &b),
                        Some(Output::Status(v)) => {
                            let _ = sink.send(message(ERROR, v.to_string().as_bytes())).await;
                            let _ = sink.send(normal_close()).await;
                            break;
                        }
                        None => {
                            let _ = sink.send(normal_close()).await;
                            break;
                        }
                    };
                    if sink.send(msg).await.is_err() {
                        break;
                    }
                }
            }
        }
        // Give the client a moment to answer the close.
        if reading {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                while let Some(Ok(m)) = stream.next().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    });
    Channels {
        input: in_rx,
        output: out_tx,
    }
}

/// Bytes carried in binary messages, as a plain byte stream (for SPDY inside WebSocket).
pub async fn tunnel(io: Upgraded) -> tokio::io::DuplexStream {
    let ws = socket(io).await;
    let (mut sink, mut stream) = ws.split();
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut r, mut w) = tokio::io::split(theirs);
    let (pong_tx, mut pong_rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            match m {
                m @ (Message::Binary(_) | Message::Text(_)) => {
                    let b = data(m).unwrap_or_default();
                    if w.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Message::Ping(p) => {
                    let _ = pong_tx.send(p).await;
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = w.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            tokio::select! {
                n = r.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sink.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                            break;
                        }
                    }
                },
                Some(p) = pong_rx.recv() => {
                    let _ = sink.send(Message::Pong(p)).await;
                }
            }
        }
        let _ = sink.send(normal_close()).await;
    });
    ours
}
