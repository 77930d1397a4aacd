//! The streaming protocols of `exec`, `attach` and `port-forward`: choosing one from the
//! upgrade request (SPDY/3.1 with `X-Stream-Protocol-Version`, or WebSocket with a
//! `Sec-WebSocket-Protocol`), and adapting each to plain channels so that the exec and
//! port-forward logic does not care which one the client speaks.

pub mod spdy;
pub mod ws;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::debug;

use crate::server::NodeBody;

pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// How long a client has to open the streams it asked for.
const STREAM_WAIT: Duration = Duration::from_secs(30);

/// The protocol a client and the agent agreed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// SPDY/3.1 with this stream protocol (`v4.channel.k8s.io`, `portforward.k8s.io`).
    Spdy(String),
    /// WebSocket with this subprotocol.
    WebSocket(String),
}

fn values<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// Pick the protocol: the first of ours (in our order of preference) that the client offers.
pub fn negotiate(h: &HeaderMap, spdy: &[&str], websocket: &[&str]) -> Result<Protocol, String> {
    let upgrade = h
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if upgrade == "websocket" {
        let offered = values(h, "sec-websocket-protocol");
        return websocket
            .iter()
            .find(|p| offered.contains(p))
            .map(|p| Protocol::WebSocket(p.to_string()))
            .ok_or_else(|| format!("none of the offered WebSocket subprotocols {offered:?} is supported (supported: {websocket:?})"));
    }
    if upgrade.starts_with("spdy/3.1") {
        let offered = values(h, "x-stream-protocol-version");
        return spdy
            .iter()
            .find(|p| offered.contains(p))
            .map(|p| Protocol::Spdy(p.to_string()))
            .ok_or_else(|| format!("none of the offered stream protocols {offered:?} is supported (supported: {spdy:?})"));
    }
    Err("this request needs a connection upgrade to SPDY/3.1 or WebSocket".into())
}

/// The 101 answer for `p`.
pub fn switching(p: &Protocol, h: &HeaderMap) -> Response<NodeBody> {
    let mut b = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade");
    match p {
        Protocol::Spdy(v) => {
            b = b
                .header(header::UPGRADE, "SPDY/3.1")
                .header("X-Stream-Protocol-Version", v.as_str());
        }
        Protocol::WebSocket(sub) => {
            let key = h
                .get("sec-websocket-key")
                .map(|k| k.as_bytes())
                .unwrap_or_default();
            b = b
                .header(header::UPGRADE, "websocket")
                .header(
                    "Sec-WebSocket-Accept",
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key),
                )
                .header("Sec-WebSocket-Protocol", sub.as_str());
        }
    }
    b.body(NodeBody::Full(Bytes::new()))
        .expect("a valid 101 response")
}

/// Take the connection once the 101 has gone out.
pub fn on_upgrade<F, Fut>(req: &mut Request<Bytes>, then: F)
where
    F: FnOnce(Upgraded) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let pending = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match pending.await {
            Ok(up) => then(TokioIo::new(up)).await,
            Err(e) => debug!(error = %e, "the connection was not upgraded"),
        }
    });
}

/// What the client of an exec or attach sends.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    Stdin(Bytes),
    StdinEnd,
    Resize {
        width: u16,
        height: u16,
    },
    /// The client's connection has closed (after `StdinEnd`, if stdin was open).
    Hangup,
}

/// What the agent sends back. `Status` is last: it ends the session.
#[derive(Debug)]
pub enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
    Status(Value),
}

/// Which streams an exec or attach has.
#[derive(Clone, Copy, Debug, Default)]
pub struct Want {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The protocol-independent face of an exec or attach session.
pub struct Channels {
    pub input: mpsc::Receiver<Input>,
    pub output: mpsc::Sender<Output>,
}

/// `{"Width":120,"Height":40}`, possibly several per message, one per line.
fn resizes(data: &[u8]) -> Vec<Input> {
    let mut out = Vec::new();
    for v in serde_json::Deserializer::from_slice(data)
        .into_iter::<Value>()
        .flatten()
    {
        let w = v["Width"].as_u64().unwrap_or(0) as u16;
        let h = v["Height"].as_u64().unwrap_or(0) as u16;
        if w > 0 && h > 0 {
            out.push(Input::Resize {
                width: w,
                height: h,
            });
        }
    }
    out
}

/// A finished exec's result, as the error channel carries it.
pub fn exit_status(code: i32) -> Value {
    if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })
    }
}

/// A failure before or during the exec, as the error channel carries it.
pub fn failure(message: &str) -> Value {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500})
}

/// Run an exec/attach session over an upgraded connection in protocol `p`.
pub async fn exec_channels(p: Protocol, io: Upgraded, want: Want) -> Option<Channels> {
    match p {
        Protocol::Spdy(_) => spdy_channels(io, want).await,
        Protocol::WebSocket(sub) => Some(ws::exec_channels(io, &sub).await),
    }
}

async fn spdy_channels(io: Upgraded, want: Want) -> Option<Channels> {
    let (mut events, sender) = spdy::serve(io);
    let mut ids: std::collections::HashMap<String, u32> = Default::default();
    let mut needed = vec!["error"];
    if want.stdin {
        needed.push("stdin");
    }
    if want.stdout {
        needed.push("stdout");
    }
    if want.stderr && !want.tty {
        needed.push("stderr");
    }
    if want.tty {
        needed.push("resize");
    }
    let deadline = tokio::time::Instant::now() + STREAM_WAIT;
    let mut early = Vec::new();
    while !needed.iter().all(|n| ids.contains_key(*n)) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(spdy::Event::Open { id, headers })) => {
                let kind = spdy::header(&headers, "streamtype")
                    .unwrap_or("")
                    .to_string();
                sender.reply(id).await.ok()?;
                ids.insert(kind, id);
            }
            Ok(Some(other)) => early.push(other),
            Ok(None) => return None,
            Err(_) => {
                debug!(?needed, opened = ?ids.keys().collect::<Vec<_>>(), "the client did not open every stream");
                break;
            }
        }
    }
    let (in_tx, in_rx) = mpsc::channel(16);
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(16);
    let id = |k: &str| ids.get(k).copied();
    let (stdin, stdout, stderr, error, resize) = (
        id("stdin"),
        id("stdout"),
        id("stderr"),
        id("error"),
        id("resize"),
    );
    tokio::spawn(async move {
        let mut stdin_open = stdin.is_some();
        let to_input = |ev: spdy::Event| -> Vec<Input> {
            match ev {
                spdy::Event::Data { id, data, fin } if Some(id) == stdin => {
                    let mut v = Vec::new();
                    if !data.is_empty() {
                        v.push(Input::Stdin(data));
                    }
                    if fin {
                        v.push(Input::StdinEnd);
                    }
                    v
                }
                spdy::Event::Data { id, data, .. } if Some(id) == resize => resizes(&data),
                spdy::Event::Reset { id } if Some(id) == stdin => vec![Input::StdinEnd],
                _ => Vec::new(),
            }
        };
        for ev in early {
            for i in to_input(ev) {
                let _ = in_tx.send(i).await;
            }
        }
        let mut events_open = true;
        loop {
            tokio::select! {
                ev = events.recv(), if events_open => match ev {
                    Some(ev) => {
                        for i in to_input(ev) {
                            if i == Input::StdinEnd {
                                stdin_open = false;
                            }
                            let _ = in_tx.send(i).await;
                        }
                    }
                    None => {
                        events_open = false;
                        if stdin_open {
                            let _ = in_tx.send(Input::StdinEnd).await;
                        }
                        let _ = in_tx.send(Input::Hangup).await;
                    }
                },
                out = out_rx.recv() => match out {
                    Some(Output::Stdout(b)) => if let Some(id) = stdout { let _ = sender.data(id, b, false).await; },
                    Some(Output::Stderr(b)) => if let Some(id) = stderr { let _ = sender.data(id, b, false).await; },
                    Some(Output::Status(v)) => {
                        for id in [stdout, stderr, stdin].into_iter().flatten() {
                            let _ = sender.data(id, Bytes::new(), true).await;
                        }
                        if let Some(id) = error {
                            let _ = sender.data(id, Bytes::from(v.to_string()), true).await;
                        }
                        break;
                    }
                    None => break,
                },
            }
        }
        // Let the client read everything and hang up first.
        if events_open {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while events.recv().await.is_some() {}
            })
            .await;
        }
        let _ = sender.go_away().await;
        sender.flush().await;
    });
    Some(Channels {
        input: in_rx,
        output: out_tx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn negotiation_prefers_our_order() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        for v in [
            "v5.channel.k8s.io",
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
        ] {
            h.append("X-Stream-Protocol-Version", HeaderValue::from_static(v));
        }
        assert_eq!(
            negotiate(&h, &["v4.channel.k8s.io"], &[]),
            Ok(Protocol::Spdy("v4.channel.k8s.io".into()))
        );
        assert!(negotiate(&h, &["portforward.k8s.io"], &[]).is_err());

        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("v4.channel.k8s.io, v5.channel.k8s.io"),
        );
        assert_eq!(
            negotiate(&h, &[], &["v5.channel.k8s.io", "v4.channel.k8s.io"]),
            Ok(Protocol::WebSocket("v5.channel.k8s.io".into()))
        );
        assert!(negotiate(&HeaderMap::new(), &["x"], &["y"]).is_err());
    }

    #[test]
    fn resize_messages() {
        assert_eq!(
            resizes(b"{\"Width\":120,\"Height\":40}\n{\"Width\":80,\"Height\":24}\n"),
            vec![
                Input::Resize {
                    width: 120,
                    height: 40
                },
                Input::Resize {
                    width: 80,
                    height: 24
                }
            ]
        );
        assert!(resizes(b"garbage").is_empty());
    }

    #[test]
    fn exit_statuses_look_like_the_kubelets() {
        assert_eq!(exit_status(0)["status"], "Success");
        let s = exit_status(3);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
    }
}
