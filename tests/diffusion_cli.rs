//! `kiln image` end to end on the tiny pipeline: a valid PNG of the requested size, the same
//! bytes for the same seed, other bytes for another seed, numbered files for several images.

use std::path::Path;
use std::process::Command;

fn fixture_dir() -> String {
    format!(
        "{}/tests/fixtures/diffusion/tiny-sd",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn kiln_image(out: &Path, seed: u64, extra: &[&str]) {
    let status = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["image", "--model", &fixture_dir(), "--prompt", "a red cat"])
        .args(["--steps", "2", "--width", "32", "--height", "16", "--seed"])
        .arg(seed.to_string())
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("RAYON_NUM_THREADS", "1")
        .status()
        .unwrap();
    assert!(status.success(), "kiln image failed: {status}");
}

/// Width, height and colour type of a PNG file, decoding all of it.
fn png_info(path: &Path) -> (u32, u32, png::ColorType) {
    let file = std::fs::File::open(path).unwrap();
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    (info.width, info.height, info.color_type)
}

#[test]
fn kiln_image_writes_reproducible_pngs_of_the_requested_size() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a.png"),
        dir.path().join("b.png"),
        dir.path().join("c.png"),
    );
    kiln_image(&a, 5, &[]);
    kiln_image(&b, 5, &[]);
    kiln_image(&c, 6, &[]);
    assert_eq!(png_info(&a), (32, 16, png::ColorType::Rgb));
    let bytes = std::fs::read(&a).unwrap();
    assert_eq!(bytes, std::fs::read(&b).unwrap());
    assert_ne!(bytes, std::fs::read(&c).unwrap());

    kiln_image(&dir.path().join("many.png"), 5, &["-n", "2"]);
    for i in 0..2 {
        let path = dir.path().join(format!("many-{i}.png"));
        assert_eq!(png_info(&path), (32, 16, png::ColorType::Rgb));
    }
}

#[test]
fn kiln_image_refuses_a_bad_size() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "image",
            "--model",
            &fixture_dir(),
            "--prompt",
            "x",
            "--width",
            "31",
        ])
        .arg("--out")
        .arg(dir.path().join("x.png"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("multiples of 2"), "{stderr}");
}
