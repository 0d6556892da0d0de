//! Server-sent events as OpenAI streams them: `data: {json}\n\n` per chunk, then
//! `data: [DONE]\n\n`.
//!
//! The producer (a handler's loop over engine outputs) runs *inside* the response body: the
//! connection polls the body, the body polls the producer, and whatever the producer wrote
//! since the last poll goes out as one frame. Why not a spawned task feeding a channel:
//! that costs a second task wake-up per token, which on a busy server is a large share of
//! the per-token work (see docs/PERFORMANCE.md, HTTP vs in-process). It also gives
//! backpressure and cancellation for free: a slow client stops being polled, so its producer
//! stops reading engine outputs; a client that goes away drops the body, the producer with
//! it, and so its engine requests (which cancels them).

use super::error::ApiError;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use futures_util::Stream;
use serde::Serialize;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

/// Events written by the producer and not yet taken by the body.
type Outbox = Arc<Mutex<Vec<u8>>>;

/// The producer's handle: appends events to the response.
pub struct SseSender {
    outbox: Outbox,
}

impl SseSender {
    /// Appends one `data:` event.
    pub fn send<T: Serialize>(&self, chunk: &T) {
        self.append(None, chunk)
    }

    /// Appends one event with an SSE `event:` name (the Responses API's streams name them).
    pub fn send_event<T: Serialize>(&self, name: &str, event: &T) {
        self.append(Some(name), event)
    }

    fn append<T: Serialize>(&self, name: Option<&str>, payload: &T) {
        let mut out = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        let start = out.len();
        if let Some(name) = name {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(name.as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(b"data: ");
        if let Err(e) = serde_json::to_writer(&mut *out, payload) {
            // Our own types always serialise; if one ever does not, drop the partial event.
            tracing::error!("serialising a stream event: {e}");
            out.truncate(start);
            return;
        }
        out.extend_from_slice(b"\n\n");
    }

    /// Appends OpenAI's in-stream error event.
    pub fn send_error(&self, error: ApiError) {
        self.send(&error.body())
    }

    /// Appends the `[DONE]` trailer.
    pub fn done(&self) {
        let mut out = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

/// The response body: drives the producer and hands out what it wrote.
struct SseBody {
    producer: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    outbox: Outbox,
}

impl Stream for SseBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(producer) = self.producer.as_mut() {
            if producer.as_mut().poll(cx).is_ready() {
                self.producer = None;
            }
        }
        let frame =
            std::mem::take(&mut *self.outbox.lock().unwrap_or_else(PoisonError::into_inner));
        if !frame.is_empty() {
            // A producer still pending has registered its waker; one that finished is
            // noticed on the next poll, after this frame is written.
            Poll::Ready(Some(Ok(Bytes::from(frame))))
        } else if self.producer.is_none() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// A streaming response whose events `produce` writes through the sender it is given.
pub fn response<F, Fut>(produce: F) -> Response
where
    F: FnOnce(SseSender) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let outbox = Outbox::default();
    let producer = produce(SseSender {
        outbox: outbox.clone(),
    });
    let body = SseBody {
        producer: Some(Box::pin(producer)),
        outbox,
    };
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell reverse proxies (nginx) not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    async fn body_text(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn events_are_framed_in_order_and_end_with_done() {
        let response = super::response(|tx| async move {
            tx.send(&serde_json::json!({"a": 1}));
            tokio::task::yield_now().await;
            tx.send(&serde_json::json!({"b": "x"}));
            tx.done();
        });
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        assert_eq!(
            body_text(response).await,
            "data: {\"a\":1}\n\ndata: {\"b\":\"x\"}\n\ndata: [DONE]\n\n"
        );
    }

    #[tokio::test]
    async fn events_written_between_polls_leave_as_one_frame() {
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let response = super::response(|tx| async move {
            tx.send(&1);
            tx.send(&2);
            let _ = go_rx.await;
            tx.send(&3);
        });
        let mut frames = response.into_body().into_data_stream();
        assert_eq!(
            frames.next().await.unwrap().unwrap(),
            "data: 1\n\ndata: 2\n\n"
        );
        go_tx.send(()).unwrap();
        assert_eq!(frames.next().await.unwrap().unwrap(), "data: 3\n\n");
        assert!(frames.next().await.is_none());
    }

    #[tokio::test]
    async fn dropping_the_body_drops_the_producer() {
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Flag(dropped.clone());
        let response = super::response(|tx| async move {
            let _flag = flag;
            tx.send(&0);
            std::future::pending::<()>().await;
        });
        let mut frames = response.into_body().into_data_stream();
        assert_eq!(frames.next().await.unwrap().unwrap(), "data: 0\n\n");
        assert!(!dropped.load(std::sync::atomic::Ordering::SeqCst));
        drop(frames);
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    }
}
