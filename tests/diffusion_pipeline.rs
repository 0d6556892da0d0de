//! The pipeline's behaviour beyond matching diffusers: seeded noise is reproducible, bad
//! requests and unsupported model directories fail with messages that name the problem.

use kiln::backend::cpu::CpuBackend;
use kiln::backend::DType;
use kiln::diffusion::{ImageRequest, Pipeline};
use std::path::{Path, PathBuf};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion/tiny-sd")
}

/// A change to a request, and what the error must say.
type RequestCase = (fn(&mut ImageRequest), &'static str);
/// A config file, a change to it, and what the load error must say.
type ConfigCase = (&'static str, fn(&mut serde_json::Value), &'static str);

fn pipeline() -> Pipeline<CpuBackend> {
    Pipeline::load(CpuBackend::new(), &fixture_dir(), DType::F32).unwrap()
}

fn request(seed: u64) -> ImageRequest {
    ImageRequest {
        prompt: "a red cat".into(),
        negative_prompt: None,
        steps: 2,
        guidance_scale: 4.0,
        width: 32,
        height: 16,
        num_images: 2,
        seed,
        initial_latents: None,
    }
}

#[test]
fn the_same_seed_gives_the_same_images_and_another_seed_others() {
    let p = pipeline();
    let a = p.generate(&request(7), &mut |_, _| {}).unwrap();
    let b = p.generate(&request(7), &mut |_, _| {}).unwrap();
    let c = p.generate(&request(8), &mut |_, _| {}).unwrap();
    assert_eq!((a.width, a.height, a.count), (32, 16, 2));
    assert_eq!(a.pixels.len(), 2 * 16 * 32 * 3);
    assert_eq!(a.rgb8(1), b.rgb8(1));
    assert_ne!(a.pixels, c.pixels);
    // The two images of one request start from different noise.
    assert_ne!(a.rgb8(0), a.rgb8(1));
}

#[test]
fn bad_requests_are_refused_with_the_reason() {
    let p = pipeline();
    let cases: [RequestCase; 5] = [
        (|r| r.width = 31, "multiples of 2"),
        (|r| r.height = 0, "multiples of 2"),
        (|r| r.num_images = 0, "number of images"),
        (|r| r.num_images = 17, "number of images"),
        (|r| r.guidance_scale = f32::NAN, "guidance_scale"),
    ];
    for (change, expect) in cases {
        let mut req = request(1);
        change(&mut req);
        let err = p.generate(&req, &mut |_, _| {}).unwrap_err();
        assert!(format!("{err:#}").contains(expect), "{err:#}");
    }
    let mut req = request(1);
    req.steps = 0;
    let err = p.generate(&req, &mut |_, _| {}).unwrap_err();
    assert!(format!("{err:#}").contains("steps"), "{err:#}");
    req.steps = 2;
    req.initial_latents = Some(vec![0.0; 3]);
    let err = p.generate(&req, &mut |_, _| {}).unwrap_err();
    assert!(format!("{err:#}").contains("initial latents"), "{err:#}");
}

/// A copy of the fixture with one JSON file edited.
fn edited_copy(dir: &Path, file: &str, edit: impl Fn(&mut serde_json::Value)) {
    for entry in walk(&fixture_dir()) {
        let rel = entry.strip_prefix(fixture_dir()).unwrap();
        let target = dir.join(rel);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &target).unwrap();
    }
    let path = dir.join(file);
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(&path, value.to_string()).unwrap();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn unsupported_models_fail_with_a_clear_message() {
    let cases: [ConfigCase; 4] = [
        (
            "model_index.json",
            |v| v["_class_name"] = "StableDiffusion3Pipeline".into(),
            "unsupported diffusers pipeline 'StableDiffusion3Pipeline'",
        ),
        (
            "unet/config.json",
            |v| v["down_block_types"][1] = "AttnDownBlock2D".into(),
            "unsupported down block 'AttnDownBlock2D'",
        ),
        (
            "scheduler/scheduler_config.json",
            |v| v["use_karras_sigmas"] = true.into(),
            "use_karras_sigmas",
        ),
        (
            "model_index.json",
            |v| v["scheduler"][1] = "UniPCMultistepScheduler".into(),
            "unsupported scheduler class 'UniPCMultistepScheduler'",
        ),
    ];
    for (file, edit, expect) in cases {
        let dir = tempfile::tempdir().unwrap();
        edited_copy(dir.path(), file, edit);
        let err = match Pipeline::load(CpuBackend::new(), dir.path(), DType::F32) {
            Ok(_) => panic!("{file}: loaded"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(expect), "{file}: {err}");
    }
}
