//! Batched denoising: a request's images are those it gets alone, whatever it is batched
//! with, and a request cancelled mid-batch leaves without disturbing the others.
//!
//! Alone, the batch is the plain pipeline bit for bit. In a larger batch the noise is the
//! same but the CPU GEMMs round differently with more rows, so results agree to float
//! rounding, not bit for bit.

use kiln::backend::cpu::CpuBackend;
use kiln::backend::DType;
use kiln::diffusion::batch::generate_batch;
use kiln::diffusion::config::SchedulerKind;
use kiln::diffusion::{GeneratedImages, ImageRequest, Pipeline};
use std::path::PathBuf;

fn pipeline(ancestral: bool) -> Pipeline<CpuBackend> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion/tiny-sd");
    let mut p = Pipeline::load(CpuBackend::new(), &dir, DType::F32).unwrap();
    if ancestral {
        // Fresh noise every step: each request's noise stream must stay its own.
        let mut config = p.scheduler_config().clone();
        config.kind = SchedulerKind::EulerAncestral;
        p.set_scheduler(config);
    }
    p
}

fn request(prompt: &str, seed: u64, num_images: usize) -> ImageRequest {
    ImageRequest {
        prompt: prompt.into(),
        negative_prompt: None,
        steps: 3,
        guidance_scale: 4.0,
        width: 16,
        height: 16,
        num_images,
        seed,
        initial_latents: None,
    }
}

fn alone(p: &Pipeline<CpuBackend>, req: &ImageRequest) -> GeneratedImages {
    p.generate(req, &mut |_, _| {}).unwrap()
}

fn assert_same(got: &GeneratedImages, want: &GeneratedImages) {
    assert_eq!(got.count, want.count);
    assert_eq!(got.latents, want.latents, "latents");
    assert_eq!(got.pixels, want.pixels, "pixels");
}

/// Equal up to float rounding: the latents (values of a few units) within 1e-3.
fn assert_close(got: &GeneratedImages, want: &GeneratedImages) {
    assert_eq!(got.count, want.count);
    assert_eq!(got.latents.len(), want.latents.len());
    let worst = got
        .latents
        .iter()
        .zip(&want.latents)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-3, "latents differ by {worst}");
    for i in 0..got.count {
        let (a, b) = (got.rgb8(i), want.rgb8(i));
        assert!(a.iter().zip(&b).all(|(x, y)| x.abs_diff(*y) <= 1));
    }
}

#[test]
fn a_batch_of_one_is_the_plain_pipeline() {
    for (ancestral, guidance) in [(false, 4.0), (true, 4.0), (false, 1.0)] {
        let p = pipeline(ancestral);
        let mut req = request("a red cat", 5, 2);
        req.guidance_scale = guidance;
        let got = generate_batch(&p, &[&req], &mut |_| false).unwrap();
        assert_same(got[0].as_ref().unwrap(), &alone(&p, &req));
    }
}

#[test]
fn batched_requests_get_what_they_get_alone() {
    for ancestral in [false, true] {
        let p = pipeline(ancestral);
        let a = request("a red cat", 1, 1);
        let mut b = request("a blue dog", 2, 3);
        b.negative_prompt = Some("blurry".into());
        let c = request("a red cat", 1, 1);
        let got = generate_batch(&p, &[&a, &b, &c], &mut |_| false).unwrap();
        assert_close(got[0].as_ref().unwrap(), &alone(&p, &a));
        assert_close(got[1].as_ref().unwrap(), &alone(&p, &b));
        // The same request twice in one batch: the same images.
        assert_same(got[2].as_ref().unwrap(), got[0].as_ref().unwrap());
        // Another seed, other images.
        let d = request("a red cat", 9, 1);
        let other = generate_batch(&p, &[&a, &d], &mut |_| false).unwrap();
        assert_ne!(
            other[1].as_ref().unwrap().pixels,
            got[0].as_ref().unwrap().pixels
        );
    }
}

#[test]
fn a_cancelled_request_leaves_and_the_others_are_unchanged() {
    let p = pipeline(true);
    let a = request("a red cat", 1, 2);
    let b = request("a blue dog", 2, 1);
    let mut asked = 0;
    // b is cancelled before the second step.
    let got = generate_batch(&p, &[&a, &b], &mut |m| {
        asked += 1;
        m == 1 && asked > 2
    })
    .unwrap();
    assert!(got[1].is_none());
    assert_close(got[0].as_ref().unwrap(), &alone(&p, &a));
    // Everyone cancelled: nothing comes back.
    let got = generate_batch(&p, &[&a, &b], &mut |_| true).unwrap();
    assert!(got.iter().all(Option::is_none));
}

#[test]
fn requests_with_different_settings_are_refused_as_one_batch() {
    let p = pipeline(false);
    let a = request("a", 1, 1);
    let mut b = request("b", 1, 1);
    b.steps = 4;
    let err = generate_batch(&p, &[&a, &b], &mut |_| false).unwrap_err();
    assert!(err.to_string().contains("share"), "{err}");
}
