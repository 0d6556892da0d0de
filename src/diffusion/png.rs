//! 8-bit RGB images to PNG bytes (for files and for `b64_json` responses).

use anyhow::{Context, Result};

/// Encodes `rgb` (`[height, width, 3]`, row-major) as a PNG.
pub fn encode_rgb8(width: usize, height: usize, rgb: &[u8]) -> Result<Vec<u8>> {
    anyhow::ensure!(
        rgb.len() == width * height * 3,
        "{} bytes are not a {width}x{height} RGB image",
        rgb.len()
    );
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(
        &mut out,
        u32::try_from(width).context("image too wide")?,
        u32::try_from(height).context("image too tall")?,
    );
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().context("writing the PNG header")?;
    writer
        .write_image_data(rgb)
        .context("writing the PNG data")?;
    writer.finish().context("finishing the PNG")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips() {
        let rgb: Vec<u8> = (0..2 * 3 * 3).map(|i| (i * 13) as u8).collect();
        let bytes = encode_rgb8(3, 2, &rgb).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (3, 2));
        assert_eq!(&buf[..info.buffer_size()], rgb.as_slice());
        assert!(encode_rgb8(3, 3, &rgb).is_err());
    }
}
