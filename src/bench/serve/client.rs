//! One streaming request, timed as vLLM's `bench serve` times it: TTFT at the first chunk
//! with content, one inter-token latency per later content chunk, end-to-end latency at the
//! last content chunk. Failures are returned as outcomes, never as errors, so that every
//! request is counted.

use super::dataset::BenchRequest;
use super::sse::SseParser;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

/// Which OpenAI API the requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `POST /v1/completions` with a `prompt`.
    Completions,
    /// `POST /v1/chat/completions` with one user message.
    Chat,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/completions",
            Endpoint::Chat => "/chat/completions",
        }
    }
}

/// Where and how requests are sent.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub model: String,
    pub endpoint: Endpoint,
    pub api_key: Option<String>,
    pub ignore_eos: bool,
}

impl Target {
    /// `base_url` may or may not end in `/v1`.
    pub fn new(
        base_url: &str,
        model: String,
        endpoint: Endpoint,
        api_key: Option<String>,
        ignore_eos: bool,
    ) -> Self {
        let base = base_url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        Target {
            url: format!("{base}/v1{}", endpoint.path()),
            model,
            endpoint,
            api_key,
            ignore_eos,
        }
    }

    fn body(&self, request: &BenchRequest) -> Value {
        let mut body = match self.endpoint {
            Endpoint::Completions => json!({
                "model": self.model,
                "prompt": request.prompt,
                "max_tokens": request.output_len,
            }),
            Endpoint::Chat => json!({
                "model": self.model,
                "messages": [{"role": "user", "content": request.prompt}],
                "max_completion_tokens": request.output_len,
            }),
        };
        body["temperature"] = json!(0.0);
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        // A vLLM extension; strict OpenAI servers reject unknown fields, so only when asked.
        if self.ignore_eos {
            body["ignore_eos"] = json!(true);
        }
        body
    }
}

/// How the output token count was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenSource {
    /// The server's `usage` in the stream.
    Usage,
    /// Counted as one token per content chunk (no usage reported).
    Chunks,
}

/// What happened to one request. Times are seconds.
#[derive(Debug, Clone, Serialize)]
pub struct RequestOutcome {
    pub index: usize,
    pub success: bool,
    pub error: Option<String>,
    /// When it was sent, from the start of the run.
    pub start_s: f64,
    /// Time to first content chunk (0 when none arrived).
    pub ttft_s: f64,
    /// End-to-end latency: from sending to the last content chunk.
    pub e2el_s: f64,
    /// Gaps between consecutive content chunks.
    pub itl_s: Vec<f64>,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub output_tokens_source: TokenSource,
    pub content_chunks: usize,
}

impl RequestOutcome {
    fn new(index: usize, start_s: f64, prompt_tokens: usize) -> Self {
        RequestOutcome {
            index,
            success: false,
            error: None,
            start_s,
            ttft_s: 0.0,
            e2el_s: 0.0,
            itl_s: Vec::new(),
            prompt_tokens,
            output_tokens: 0,
            output_tokens_source: TokenSource::Chunks,
            content_chunks: 0,
        }
    }

    /// A request that never completed (the run was stopped first).
    pub fn unfinished(index: usize, why: &str) -> Self {
        RequestOutcome::new(index, 0.0, 0).failed(why.to_string())
    }

    fn failed(mut self, error: String) -> Self {
        self.success = false;
        self.error = Some(error);
        self
    }
}

/// Sends `request` and times its stream.
pub async fn send(
    client: &reqwest::Client,
    target: &Target,
    request: &BenchRequest,
    index: usize,
    run_start: Instant,
) -> RequestOutcome {
    let sent = Instant::now();
    let outcome = RequestOutcome::new(index, (sent - run_start).as_secs_f64(), request.prompt_len);
    let mut builder = client.post(&target.url).json(&target.body(request));
    if let Some(key) = &target.api_key {
        builder = builder.bearer_auth(key);
    }
    let response = match builder.send().await {
        Ok(r) => r,
        Err(e) => {
            return outcome.failed(format!("request to {} failed: {}", target.url, chain(&e)))
        }
    };
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return outcome.failed(format!("HTTP {status}: {}", shorten(body.trim(), 300)));
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_string();
    read_stream(response, sent, outcome, &content_type).await
}

/// Accumulates one request's stream.
struct StreamTimes {
    outcome: RequestOutcome,
    sent: Instant,
    last_content: Instant,
    usage_output: Option<usize>,
}

impl StreamTimes {
    /// Takes one `data:` payload; an error string ends the request as failed.
    fn on_payload(&mut self, payload: &str) -> Result<(), String> {
        if payload.trim() == "[DONE]" {
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(payload).map_err(|e| {
            format!(
                "the stream carried invalid JSON ({e}): {}",
                shorten(payload, 200)
            )
        })?;
        if let Some(error) = chunk.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string);
            return Err(format!(
                "the server reported an error mid-stream: {}",
                message.unwrap_or_else(|| error.to_string())
            ));
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage_output = usage
                .get("completion_tokens")
                .and_then(Value::as_u64)
                .map(|n| n as usize);
            if let Some(p) = usage.get("prompt_tokens").and_then(Value::as_u64) {
                self.outcome.prompt_tokens = p as usize;
            }
        }
        if has_content(&chunk) {
            let now = Instant::now();
            if self.outcome.content_chunks == 0 {
                self.outcome.ttft_s = (now - self.sent).as_secs_f64();
            } else {
                self.outcome
                    .itl_s
                    .push((now - self.last_content).as_secs_f64());
            }
            self.outcome.content_chunks += 1;
            self.last_content = now;
        }
        Ok(())
    }
}

async fn read_stream(
    response: reqwest::Response,
    sent: Instant,
    outcome: RequestOutcome,
    content_type: &str,
) -> RequestOutcome {
    let mut times = StreamTimes {
        outcome,
        sent,
        last_content: sent,
        usage_output: None,
    };
    let mut parser = SseParser::default();
    let mut body = response.bytes_stream();
    while let Some(piece) = body.next().await {
        let bytes = match piece {
            Ok(b) => b,
            Err(e) => {
                let chunks = times.outcome.content_chunks;
                return times.outcome.failed(format!(
                    "the stream broke off after {chunks} content chunks: {}",
                    chain(&e)
                ));
            }
        };
        for payload in parser.push(&bytes) {
            if let Err(e) = times.on_payload(&payload) {
                return times.outcome.failed(e);
            }
        }
    }
    let unparsed_text = parser.has_pending_text();
    if let Some(payload) = parser.finish() {
        if let Err(e) = times.on_payload(&payload) {
            return times.outcome.failed(e);
        }
    }
    let mut outcome = times.outcome;
    if outcome.content_chunks == 0 {
        let why = if unparsed_text {
            format!(
                "the server did not stream (content-type {content_type}, no server-sent `data:` events); \
                 bench serve needs `stream: true` support"
            )
        } else {
            "the stream ended without any content".to_string()
        };
        return outcome.failed(why);
    }
    outcome.e2el_s = (times.last_content - sent).as_secs_f64();
    (outcome.output_tokens, outcome.output_tokens_source) = match times.usage_output {
        Some(n) => (n, TokenSource::Usage),
        None => (outcome.content_chunks, TokenSource::Chunks),
    };
    outcome.success = true;
    outcome
}

/// A chunk carries content when its first choice has non-empty text (completions) or delta
/// content (chat). Role-only and finish-only chunks are not tokens.
fn has_content(chunk: &Value) -> bool {
    let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) else {
        return false;
    };
    let non_empty = |v: Option<&Value>| v.and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    let delta = choice.get("delta");
    non_empty(choice.get("text"))
        || non_empty(delta.and_then(|d| d.get("content")))
        || non_empty(delta.and_then(|d| d.get("reasoning_content")))
}

/// An error with its causes, so "error sending request" says why (connection refused...).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_built_with_or_without_v1() {
        let t = |base| Target::new(base, "m".into(), Endpoint::Chat, None, false).url;
        assert_eq!(t("http://h:1"), "http://h:1/v1/chat/completions");
        assert_eq!(t("http://h:1/v1/"), "http://h:1/v1/chat/completions");
    }

    #[test]
    fn body_asks_for_a_stream_with_usage_and_passes_ignore_eos_only_when_set() {
        let request = BenchRequest {
            prompt: "a b".into(),
            prompt_len: 2,
            output_len: 5,
        };
        let plain =
            Target::new("http://h", "m".into(), Endpoint::Completions, None, false).body(&request);
        assert_eq!(plain["stream"], true);
        assert_eq!(plain["stream_options"]["include_usage"], true);
        assert_eq!(plain["max_tokens"], 5);
        assert!(plain.get("ignore_eos").is_none());
        let chat = Target::new("http://h", "m".into(), Endpoint::Chat, None, true).body(&request);
        assert_eq!(chat["messages"][0]["content"], "a b");
        assert_eq!(chat["max_completion_tokens"], 5);
        assert_eq!(chat["ignore_eos"], true);
    }

    #[test]
    fn content_detection_skips_role_and_finish_chunks() {
        assert!(has_content(&json!({"choices": [{"text": "x"}]})));
        assert!(has_content(
            &json!({"choices": [{"delta": {"content": "x"}}]})
        ));
        assert!(!has_content(
            &json!({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
        ));
        assert!(!has_content(
            &json!({"choices": [], "usage": {"completion_tokens": 3}})
        ));
    }
}
