//! `kiln serve` on the tiny SD fixture, over real HTTP: PNGs of the requested size, seeds
//! that reproduce, OpenAI errors for bad parameters, 429 on a full queue, cancellation of a
//! client that hangs up, shutdown, metrics, and what each kind of server says about the
//! other kind's endpoints.

mod server_support;

use base64::Engine as _;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use server_support::{metric, Server};
use std::time::{Duration, Instant};

const MODEL: &str = "tiny-sd";
const KEY: &str = "sk-images";

fn fixture() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/diffusion/tiny-sd"
    )
    .to_string()
}

fn start(extra: &[&str]) -> Server {
    let model = fixture();
    let mut flags = vec!["--model", model.as_str(), "--api-key", KEY];
    flags.extend_from_slice(extra);
    Server::start(&flags)
}

fn client() -> Client {
    Client::builder().pool_max_idle_per_host(0).build().unwrap()
}

async fn generate(client: &Client, server: &Server, body: Value) -> (StatusCode, Value) {
    let response = client
        .post(server.url("/v1/images/generations"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn metrics(client: &Client, server: &Server) -> String {
    let response = client.get(server.url("/metrics")).send().await.unwrap();
    response.text().await.unwrap()
}

/// Polls /metrics until `done` holds (a hang guard, not a timing assertion).
async fn wait_for_metrics(
    client: &Client,
    server: &Server,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = metrics(client, server).await;
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "waiting for {what}:\n{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The PNGs of a response: (width, height, bytes) each, checking the PNG header.
fn pngs(body: &Value) -> Vec<(u32, u32, Vec<u8>)> {
    body["data"]
        .as_array()
        .expect("data is a list")
        .iter()
        .map(|item| {
            let b64 = item["b64_json"].as_str().expect("b64_json");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("valid base64");
            let reader = png::Decoder::new(std::io::Cursor::new(&bytes))
                .read_info()
                .expect("a valid PNG");
            let info = reader.info();
            assert_eq!(info.color_type, png::ColorType::Rgb);
            assert_eq!(info.bit_depth, png::BitDepth::Eight);
            (info.width, info.height, bytes)
        })
        .collect()
}

fn assert_error(body: &Value, kind: &str, param: Option<&str>) {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(error["type"], kind, "{body}");
    assert_eq!(error["param"].as_str(), param, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pngs_of_the_requested_size_and_seeds_that_reproduce() {
    let server = start(&[]);
    let client = client();
    let models: Value = client
        .get(server.url("/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], MODEL, "{models}");
    let spec: Value = client
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["paths"]["/v1/images/generations"]["post"].is_object());
    for schema in ["ImageGenerationRequest", "ImagesResponse"] {
        assert!(
            spec["components"]["schemas"][schema].is_object(),
            "{schema}"
        );
    }

    let body = json!({
        "model": MODEL, "prompt": "a red cat", "n": 3, "size": "32x16",
        "num_inference_steps": 2, "seed": 42, "response_format": "b64_json",
    });
    let (status, first) = generate(&client, &server, body.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert!(first["created"].as_u64().is_some());
    let images = pngs(&first);
    assert_eq!(images.len(), 3);
    assert!(images.iter().all(|(w, h, _)| (*w, *h) == (32, 16)));
    assert_ne!(
        images[0].2, images[1].2,
        "each image starts from its own noise"
    );

    let (_, again) = generate(&client, &server, body.clone()).await;
    assert_eq!(pngs(&again), images, "the same seed gives the same bytes");
    let mut other = body.clone();
    other["seed"] = json!(43);
    let (_, other) = generate(&client, &server, other).await;
    assert_ne!(pngs(&other)[0].2, images[0].2);

    // No model, size or count: the served pipeline, its trained size, one image.
    let (status, plain) = generate(
        &client,
        &server,
        json!({"prompt": "a cat", "num_inference_steps": 1, "guidance_scale": 1.0}),
    )
    .await;
    assert_eq!(status, 200, "{plain}");
    let plain = pngs(&plain);
    assert_eq!((plain.len(), plain[0].0, plain[0].1), (1, 32, 32));

    // Auth as on every /v1 endpoint.
    let unauthorized = client
        .post(server.url("/v1/images/generations"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);

    let text = metrics(&client, &server).await;
    assert_eq!(
        metric(&text, "kiln:image_requests_total{outcome=\"success\"}"),
        4.0
    );
    assert_eq!(metric(&text, "kiln:images_generated_total"), 10.0);
    assert_eq!(metric(&text, "kiln:image_generation_seconds_count"), 4.0);
    assert_eq!(metric(&text, "kiln:image_requests_waiting"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_openai_errors_naming_the_param() {
    let server = start(&[]);
    let client = client();
    let base = json!({"model": MODEL, "prompt": "a cat", "num_inference_steps": 1});
    let cases: &[(Value, Option<&str>)] = &[
        // Sides must be multiples of the VAE's factor (2 for the tiny fixture, 8 for real
        // models).
        (json!({"size": "31x32"}), Some("size")),
        (json!({"size": "4096x4096"}), Some("size")),
        (json!({"size": "0x32"}), Some("size")),
        (json!({"size": "large"}), Some("size")),
        (json!({"n": 0}), Some("n")),
        (json!({"n": 11}), Some("n")),
        (json!({"n": "two"}), Some("n")),
        (
            json!({"num_inference_steps": 0}),
            Some("num_inference_steps"),
        ),
        (
            json!({"num_inference_steps": 100000}),
            Some("num_inference_steps"),
        ),
        (json!({"guidance_scale": -1.0}), Some("guidance_scale")),
        (json!({"guidance_scale": 1000.0}), Some("guidance_scale")),
        (json!({"response_format": "url"}), Some("response_format")),
        (json!({"response_format": "png"}), Some("response_format")),
        (json!({"output_format": "jpeg"}), Some("output_format")),
        (json!({"height": 64}), Some("height")),
    ];
    for (change, param) in cases {
        let mut body = base.clone();
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, error) = generate(&client, &server, body).await;
        assert_eq!(status, 400, "{change}: {error}");
        assert_error(&error, "invalid_request_error", *param);
    }
    // Any multiple of the VAE's factor runs, even when the UNet's downsample meets an odd
    // latent side (30x22 pixels: 15x11 latents, downsampled to 8x6).
    let mut odd = base.clone();
    odd["size"] = json!("30x22");
    let (status, body) = generate(&client, &server, odd).await;
    assert_eq!(status, 200, "{body}");
    let images = pngs(&body);
    assert_eq!((images.len(), images[0].0, images[0].1), (1, 30, 22));
    let (status, error) = generate(&client, &server, json!({"model": "nope", "prompt": "x"})).await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["error"]["code"], "model_not_found");
    let (_, url) = generate(
        &client,
        &server,
        json!({"prompt": "x", "response_format": "url"}),
    )
    .await;
    assert!(
        url["error"]["message"]
            .as_str()
            .unwrap()
            .contains("b64_json"),
        "{url}"
    );
    let text = metrics(&client, &server).await;
    let invalid = metric(&text, "kiln:image_requests_total{outcome=\"invalid\"}");
    // Bodies that fail to parse (wrong types, unknown fields) never reach the handler.
    assert!(invalid >= 12.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_server_says_what_it_serves() {
    let server = start(&[]);
    let client = client();
    let health = client.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        ("/v1/completions", json!({"model": MODEL, "prompt": "hi"})),
    ] {
        let response = client
            .post(server.url(path))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
        let error: Value = response.json().await.unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("image") && message.contains(MODEL),
            "{message}"
        );
    }
    drop(server);

    // The built-in demo LLM: the image endpoint says it serves text.
    let text_server = Server::start(&[]);
    let response = client
        .post(text_server.url("/v1/images/generations"))
        .json(&json!({"prompt": "a cat"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("text model"), "{message}");
}

/// A request that denoises for a long time unless cancelled.
fn long_body(seed: u64) -> Value {
    json!({"model": MODEL, "prompt": "a cat", "size": "64x64", "n": 4,
           "num_inference_steps": 500, "seed": seed})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_clients_that_hang_up_are_cancelled() {
    let server = start(&["--max-queued-requests", "1"]);
    let client = client();
    let send = |body: Value| {
        let request = client
            .post(server.url("/v1/images/generations"))
            .bearer_auth(KEY)
            .json(&body)
            .send();
        tokio::spawn(request)
    };
    let running = send(long_body(1));
    wait_for_metrics(&client, &server, "the first request to run", |m| {
        metric(m, "kiln:image_requests_running") == 1.0
    })
    .await;
    let queued = send(long_body(2));
    wait_for_metrics(&client, &server, "the second request to queue", |m| {
        metric(m, "kiln:image_requests_waiting") == 1.0
    })
    .await;

    let response = client
        .post(server.url("/v1/images/generations"))
        .bearer_auth(KEY)
        .json(&long_body(3))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let error: Value = response.json().await.unwrap();
    assert_error(&error, "rate_limit_error", None);

    // Both clients hang up: the queued request never runs, the running one stops at its
    // next step, long before its 500.
    running.abort();
    queued.abort();
    let idle = wait_for_metrics(&client, &server, "both requests to be cancelled", |m| {
        metric(m, "kiln:image_requests_total{outcome=\"cancelled\"}") == 2.0
            && metric(m, "kiln:image_requests_running") == 0.0
    })
    .await;
    assert_eq!(metric(&idle, "kiln:image_requests_waiting"), 0.0);
    assert_eq!(metric(&idle, "kiln:image_batches_total"), 1.0);
    assert!(metric(&idle, "kiln:image_denoising_steps_total") < 500.0);
    assert_eq!(
        metric(&idle, "kiln:image_requests_total{outcome=\"rejected\"}"),
        1.0
    );
    // The engine is free again.
    let (status, body) = generate(
        &client,
        &server,
        json!({"prompt": "a cat", "num_inference_steps": 1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_request_finish_and_refuses_new_ones() {
    let server = start(&["--shutdown-timeout", "300"]);
    let client = client();
    let body = json!({"model": MODEL, "prompt": "a cat", "size": "32x32",
                      "num_inference_steps": 40, "seed": 1});
    let in_flight = {
        let request = client
            .post(server.url("/v1/images/generations"))
            .bearer_auth(KEY)
            .json(&body)
            .send();
        tokio::spawn(request)
    };
    wait_for_metrics(&client, &server, "the request to run", |m| {
        metric(m, "kiln:image_requests_running") == 1.0
    })
    .await;
    server.signal("TERM");
    let mut refused = false;
    for _ in 0..200 {
        let attempt = client
            .post(server.url("/v1/images/generations"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await;
        match attempt {
            Err(_) => refused = true,
            Ok(r) if r.status() == 503 => refused = true,
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
        if refused {
            break;
        }
    }
    assert!(refused, "new requests were still accepted after SIGTERM");
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(response.status(), 200);
    let images = pngs(&response.json().await.unwrap());
    assert_eq!((images[0].0, images[0].1), (32, 32));
    let status = server.wait();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_shutdown_timeout_requests_are_cut_off_and_the_server_exits() {
    let server = start(&["--shutdown-timeout", "1"]);
    let client = client();
    let in_flight = {
        let request = client
            .post(server.url("/v1/images/generations"))
            .bearer_auth(KEY)
            .json(&long_body(1))
            .send();
        tokio::spawn(request)
    };
    wait_for_metrics(&client, &server, "the request to run", |m| {
        metric(m, "kiln:image_requests_running") == 1.0
    })
    .await;
    server.signal("TERM");
    let status = server.wait();
    assert_eq!(status.code(), Some(0), "{status}");
    let cut_off = in_flight.await.unwrap();
    assert!(cut_off.is_err(), "{cut_off:?}");
}
