//! Response bodies: a whole buffer, a list of shared chunks (lists served straight from cached
//! object bytes, without copying), or a stream fed by a task (watch, logs), which may be held to
//! a byte budget (watch).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// The body of every response the API server produces.
pub struct Body {
    kind: Kind,
}

enum Kind {
    Chunks {
        chunks: VecDeque<Bytes>,
        len: u64,
    },
    Stream(mpsc::Receiver<Bytes>),
    /// A stream whose pieces hold part of a byte budget until they are handed to the
    /// connection.
    Budgeted(mpsc::Receiver<(Bytes, OwnedSemaphorePermit)>),
}

/// The sending end of a byte-budgeted stream (`Body::budgeted`).
#[derive(Clone)]
pub struct BudgetSender {
    tx: mpsc::Sender<(Bytes, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
    max: usize,
}

impl BudgetSender {
    /// Queue a piece once the budget has room for it; `Err` if the body is gone.
    pub async fn send(&self, b: Bytes) -> Result<(), Bytes> {
        let want = b.len().clamp(1, self.max) as u32;
        let Ok(permit) = self.budget.clone().acquire_many_owned(want).await else {
            return Err(b);
        };
        self.tx.send((b, permit)).await.map_err(|e| e.0.0)
    }

    /// Resolves when the client went away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

impl Body {
    pub fn empty() -> Body {
        Body::chunks(Vec::new())
    }

    pub fn from_bytes(b: impl Into<Bytes>) -> Body {
        Body::chunks(vec![b.into()])
    }

    /// A body made of chunks whose total length is known up front.
    pub fn chunks(chunks: Vec<Bytes>) -> Body {
        let len = chunks.iter().map(|c| c.len() as u64).sum();
        Body {
            kind: Kind::Chunks {
                chunks: chunks.into_iter().filter(|c| !c.is_empty()).collect(),
                len,
            },
        }
    }

    /// A streaming body and the sender that feeds it. The body ends when the sender drops;
    /// `Sender::closed` tells the feeding task that the client went away.
    pub fn channel(capacity: usize) -> (mpsc::Sender<Bytes>, Body) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            tx,
            Body {
                kind: Kind::Stream(rx),
            },
        )
    }

    /// A streaming body whose queued pieces may hold at most `max_bytes` between them: a
    /// client that stops reading stops its sender, not the server's memory.
    pub fn budgeted(max_bytes: usize) -> (BudgetSender, Body) {
        let (tx, rx) = mpsc::channel(1024);
        let budget = Arc::new(Semaphore::new(max_bytes));
        (
            BudgetSender {
                tx,
                budget,
                max: max_bytes,
            },
            Body {
                kind: Kind::Budgeted(rx),
            },
        )
    }

    /// A streaming body fed by someone else's channel; it ends when the sender drops.
    pub fn from_receiver(rx: mpsc::Receiver<Bytes>) -> Body {
        Body {
            kind: Kind::Stream(rx),
        }
    }

    /// Pass each message of this body through `f`: a whole body is one message, a stream's
    /// chunks are one each (a watch event). A stream stays a stream.
    pub fn map_messages(self, mut f: impl FnMut(Bytes) -> Bytes + Send + 'static) -> Body {
        match self.kind {
            Kind::Chunks { chunks, .. } => {
                let mut whole = bytes::BytesMut::new();
                for c in chunks {
                    whole.extend_from_slice(&c);
                }
                Body::from_bytes(f(whole.freeze()))
            }
            // Each forwarder also ends when the client goes, which lets the producer see its
            // channel closed (a watch is then let go at once, not at its timeout).
            Kind::Stream(mut rx) => {
                let (tx, body) = Body::channel(rx.max_capacity());
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            c = rx.recv() => match c {
                                Some(c) => {
                                    if tx.send(f(c)).await.is_err() {
                                        return;
                                    }
                                }
                                None => return,
                            },
                            _ = tx.closed() => return,
                        }
                    }
                });
                body
            }
            Kind::Budgeted(mut rx) => {
                // The permit travels with its piece, so the budget still holds.
                let (tx, out) = mpsc::channel(rx.max_capacity());
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            c = rx.recv() => match c {
                                Some((c, permit)) => {
                                    if tx.send((f(c), permit)).await.is_err() {
                                        return;
                                    }
                                }
                                None => return,
                            },
                            _ = tx.closed() => return,
                        }
                    }
                });
                Body {
                    kind: Kind::Budgeted(out),
                }
            }
        }
    }

    /// Like [`Body::map_messages`], with a step that may wait (a conversion webhook). A
    /// stream's messages keep their order.
    pub async fn then_messages<F, Fut>(self, mut f: F) -> Body
    where
        F: FnMut(Bytes) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Bytes> + Send,
    {
        match self.kind {
            Kind::Chunks { chunks, .. } => {
                let mut whole = bytes::BytesMut::new();
                for c in chunks {
                    whole.extend_from_slice(&c);
                }
                Body::from_bytes(f(whole.freeze()).await)
            }
            Kind::Stream(mut rx) => {
                let (tx, body) = Body::channel(rx.max_capacity());
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            c = rx.recv() => match c {
                                Some(c) => {
                                    if tx.send(f(c).await).await.is_err() {
                                        return;
                                    }
                                }
                                None => return,
                            },
                            _ = tx.closed() => return,
                        }
                    }
                });
                body
            }
            Kind::Budgeted(mut rx) => {
                let (tx, out) = mpsc::channel(rx.max_capacity());
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            c = rx.recv() => match c {
                                Some((c, permit)) => {
                                    if tx.send((f(c).await, permit)).await.is_err() {
                                        return;
                                    }
                                }
                                None => return,
                            },
                            _ = tx.closed() => return,
                        }
                    }
                });
                Body {
                    kind: Kind::Budgeted(out),
                }
            }
        }
    }

    /// The whole body, if it is not a stream (a copy; for the audit log).
    pub fn whole(&self) -> Option<Bytes> {
        match &self.kind {
            Kind::Chunks { chunks, .. } => {
                let mut out = bytes::BytesMut::new();
                for c in chunks {
                    out.extend_from_slice(c);
                }
                Some(out.freeze())
            }
            _ => None,
        }
    }

    /// Read the whole body (for the in-process client and tests).
    pub async fn collect(self) -> Bytes {
        match self.kind {
            Kind::Chunks { chunks, .. } => {
                let mut out = bytes::BytesMut::new();
                for c in chunks {
                    out.extend_from_slice(&c);
                }
                out.freeze()
            }
            Kind::Stream(mut rx) => {
                let mut out = bytes::BytesMut::new();
                while let Some(c) = rx.recv().await {
                    out.extend_from_slice(&c);
                }
                out.freeze()
            }
            Kind::Budgeted(mut rx) => {
                let mut out = bytes::BytesMut::new();
                while let Some((c, _permit)) = rx.recv().await {
                    out.extend_from_slice(&c);
                }
                out.freeze()
            }
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.kind {
            Kind::Chunks { chunks, len } => match chunks.pop_front() {
                Some(c) => {
                    *len -= c.len() as u64;
                    Poll::Ready(Some(Ok(Frame::data(c))))
                }
                None => Poll::Ready(None),
            },
            Kind::Stream(rx) => rx.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c)))),
            // The connection takes the piece now; its share of the budget is free again.
            Kind::Budgeted(rx) => rx
                .poll_recv(cx)
                .map(|c| c.map(|(c, _permit)| Ok(Frame::data(c)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(&self.kind, Kind::Chunks { chunks, .. } if chunks.is_empty())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Chunks { len, .. } => SizeHint::with_exact(*len),
            Kind::Stream(_) | Kind::Budgeted(_) => SizeHint::default(),
        }
    }
}
