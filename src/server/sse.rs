//! Server-sent events as OpenAI streams them: `data: {json}\n\n` per chunk, then
//! `data: [DONE]\n\n`. A task produces the events into a channel that backs the response
//! body; when the client goes away the channel closes and the task stops, dropping (and so
//! cancelling) its engine requests.

use super::error::ApiError;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use serde::Serialize;
use std::convert::Infallible;
use tokio::sync::mpsc;

/// Chunks buffered between the producing task and a slow client.
const CHANNEL_CAPACITY: usize = 64;

pub struct SseSender {
    tx: mpsc::Sender<Bytes>,
}

impl SseSender {
    /// Sends one `data:` event; false once the client has gone.
    pub async fn send<T: Serialize>(&self, chunk: &T) -> bool {
        match serde_json::to_vec(chunk) {
            Ok(json) => self.send_raw(&json).await,
            Err(e) => {
                tracing::error!("serialising a stream chunk: {e}");
                false
            }
        }
    }

    /// Sends OpenAI's in-stream error event.
    pub async fn send_error(&self, error: ApiError) -> bool {
        self.send(&error.body()).await
    }

    pub async fn done(&self) -> bool {
        self.send_raw(b"[DONE]").await
    }

    async fn send_raw(&self, payload: &[u8]) -> bool {
        let mut event = Vec::with_capacity(payload.len() + 8);
        event.extend_from_slice(b"data: ");
        event.extend_from_slice(payload);
        event.extend_from_slice(b"\n\n");
        self.tx.send(Bytes::from(event)).await.is_ok()
    }

    /// Resolves when the client has disconnected.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// A streaming response and the sender that feeds it.
pub fn channel() -> (SseSender, Response) {
    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_CAPACITY);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell reverse proxies (nginx) not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    (SseSender { tx }, response)
}
