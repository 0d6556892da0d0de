//! The image engine behind its handle: checks, queue limit, batching, cancellation,
//! seeds, shutdown, on the tiny SD fixture.

use kiln::backend::cpu::CpuBackend;
use kiln::backend::DType;
use kiln::diffusion::handle::{
    ImageEngineArgs, ImageHandle, ImageModelInfo, ImageParams, ImageStats, RequestError,
};
use kiln::diffusion::Pipeline;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn engine(max_queued: usize) -> ImageHandle {
    engine_with_replicas(max_queued, 1)
}

/// The tiny SD pipeline, loaded `replicas` times (as on that many GPUs).
fn engine_with_replicas(max_queued: usize, replicas: usize) -> ImageHandle {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion/tiny-sd");
    let pipelines: Vec<_> = (0..replicas)
        .map(|_| Pipeline::load(CpuBackend::new(), &dir, DType::F32).unwrap())
        .collect();
    let info = ImageModelInfo::of(&pipelines[0], "StableDiffusionPipeline".into());
    let args = ImageEngineArgs {
        max_queued,
        max_batch_images: 16,
        seed: 0,
    };
    ImageHandle::spawn(pipelines, info, args).unwrap()
}

/// A change to a request, and the parameter its error must name.
type ParamCase = (fn(&mut ImageParams), &'static str);

fn params(seed: Option<u64>, steps: usize) -> ImageParams {
    ImageParams {
        prompt: "a red cat".into(),
        width: Some(16),
        height: Some(16),
        num_images: 1,
        steps: Some(steps),
        guidance_scale: Some(3.0),
        seed,
        ..Default::default()
    }
}

/// Waits (a hang guard, not a timing assertion) until `done` holds.
fn wait_until(stats: &ImageStats, what: &str, done: impl Fn(&ImageStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(stats) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn images_come_back_and_seeds_reproduce() {
    let e = engine(0);
    let mut p = params(Some(3), 2);
    p.num_images = 2;
    let a = e.submit(&p).unwrap().wait_blocking().unwrap();
    let b = e.submit(&p).unwrap().wait_blocking().unwrap();
    assert_eq!((a.width, a.height, a.images.len()), (16, 16, 2));
    assert_eq!(a.images[0].len(), 16 * 16 * 3);
    assert_eq!(a.images, b.images);
    assert_ne!(a.images[0], a.images[1]);
    // Without a seed each request gets its own, reported back.
    let c = e.submit(&params(None, 2)).unwrap().wait_blocking().unwrap();
    let d = e.submit(&params(None, 2)).unwrap().wait_blocking().unwrap();
    assert_ne!(c.seed, d.seed);
    assert_ne!(c.images, d.images);
    let again = e
        .submit(&params(Some(c.seed), 2))
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert_eq!(again.images, c.images);
}

#[test]
fn bad_requests_name_the_parameter() {
    let e = engine(0);
    let cases: [ParamCase; 7] = [
        (|p| p.width = Some(19), "size"),
        (|p| p.height = Some(4096), "size"),
        (|p| p.num_images = 0, "n"),
        (|p| p.num_images = 11, "n"),
        (|p| p.steps = Some(0), "num_inference_steps"),
        (|p| p.guidance_scale = Some(f32::INFINITY), "guidance_scale"),
        (|p| p.guidance_scale = Some(-1.0), "guidance_scale"),
    ];
    for (change, want) in cases {
        let mut p = params(Some(1), 2);
        change(&mut p);
        match e.submit(&p) {
            Err(RequestError::Invalid { param, .. }) => assert_eq!(param, want),
            Err(other) => panic!("{want}: {other}"),
            Ok(_) => panic!("{want}: accepted"),
        }
    }
}

#[test]
fn requests_queued_behind_a_batch_run_together_and_cancelled_ones_leave() {
    let e = engine(2);
    let stats = e.stats().clone();
    let long = e.submit(&params(Some(1), 500)).unwrap();
    wait_until(&stats, "the long request to start", |s| {
        s.running.load(Ordering::Relaxed) == 1
    });
    let a = e.submit(&params(Some(2), 2)).unwrap();
    let b = e.submit(&params(Some(3), 2)).unwrap();
    // Two wait: the queue is full.
    assert!(matches!(
        e.submit(&params(Some(4), 2)),
        Err(RequestError::QueueFull(2))
    ));
    // A queued request whose client leaves stops counting at once, and never runs.
    let c = {
        drop(b);
        assert_eq!(stats.waiting.load(Ordering::Relaxed), 1);
        e.submit(&params(Some(5), 2)).unwrap()
    };
    // The running request is cancelled by dropping its ticket: it stops long before 500.
    drop(long);
    let (a, c) = (a.wait_blocking(), c.wait_blocking());
    assert!(a.is_ok() && c.is_ok());
    assert_eq!(stats.cancelled.load(Ordering::Relaxed), 2);
    assert_eq!(stats.batches.load(Ordering::Relaxed), 2, "long, then a+c");
    assert_eq!(stats.batched_requests.load(Ordering::Relaxed), 3);
    assert!(stats.steps.load(Ordering::Relaxed) < 400);
    assert_eq!(stats.waiting.load(Ordering::Relaxed), 0);
    assert_eq!(stats.running.load(Ordering::Relaxed), 0);
}

#[test]
fn shutdown_finishes_queued_requests_then_refuses() {
    let e = engine(0);
    let tickets: Vec<_> = (0..3)
        .map(|i| e.submit(&params(Some(i), 2)).unwrap())
        .collect();
    e.shutdown();
    for t in tickets {
        assert!(t.wait_blocking().is_ok());
    }
    assert!(matches!(
        e.submit(&params(Some(1), 2)),
        Err(RequestError::EngineDown(_))
    ));
}

#[test]
fn replicas_run_requests_in_parallel_and_agree() {
    let e = engine_with_replicas(0, 2);
    assert_eq!(e.replicas(), 2);
    let stats = e.stats().clone();
    // A long request keeps one replica busy...
    let long = e.submit(&params(Some(1), 500)).unwrap();
    wait_until(&stats, "the long request to start", |s| {
        s.running.load(Ordering::Relaxed) == 1
    });
    // ...and a short one (another batch key: other steps) runs on the other meanwhile.
    e.submit(&params(Some(2), 2))
        .unwrap()
        .wait_blocking()
        .unwrap();
    // (Images are counted before a request is answered.)
    assert_eq!(
        stats.images.load(Ordering::Relaxed),
        1,
        "the short request finished while the long one still ran"
    );
    drop(long);
    wait_until(&stats, "the long request to stop", |s| {
        s.running.load(Ordering::Relaxed) == 0
    });
    // Replicas hold the same weights: the same request gives the same bytes on each. The
    // queue hands the next request to whichever replica is free; keep asking until both
    // have answered (each is free again once its answer is out).
    let mut by_replica: [Option<Vec<Vec<u8>>>; 2] = [None, None];
    for _ in 0..200 {
        let out = e
            .submit(&params(Some(7), 2))
            .unwrap()
            .wait_blocking()
            .unwrap();
        by_replica[out.replica] = Some(out.images);
        if by_replica.iter().all(Option::is_some) {
            break;
        }
    }
    let [Some(a), Some(b)] = by_replica else {
        panic!("one replica answered all 200 requests");
    };
    assert_eq!(a, b);
    e.shutdown();
}
