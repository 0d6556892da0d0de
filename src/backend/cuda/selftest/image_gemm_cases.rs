//! Selftest of the image ops built on cuBLAS GEMMs (conv2d, dense attention, linear over
//! any rank) against the CPU backend, on the odd shapes of `image_cases.rs`.

use super::compare::Check;
use super::image_cases::ImageSuite;
use crate::backend::cuda::image_flash::ImageAttentionPath;
use crate::backend::image_ops::ImageOps;
use anyhow::Result;

pub fn run(t: &mut ImageSuite<'_, '_>) -> Result<()> {
    conv2d(t)?;
    attention(t)?;
    linear_nd(t)
}

fn conv2d(t: &mut ImageSuite<'_, '_>) -> Result<()> {
    let be = t.gpu;
    // (x, weight, stride, padding, bias): 3x3 on 11x15 latents, the stride-2 downsample,
    // a 1x1 channel change, a non-square kernel without padding, a UNet-sized layer, and
    // the SD VAE decoder's im2col shapes (vectorised rows): its conv_out at 512x512x128
    // and a mid-block conv at 64x64x512 with fewer output channels (the CPU's cost).
    for (x_dims, w_dims, stride, pad, bias) in [
        ([2, 5, 11, 15], [7, 5, 3, 3], 1, 1, true),
        ([2, 5, 11, 15], [7, 5, 3, 3], 2, 1, false),
        ([2, 40, 11, 15], [24, 40, 1, 1], 1, 0, true),
        ([1, 3, 6, 9], [4, 3, 3, 2], 1, 0, true),
        ([2, 64, 32, 32], [64, 64, 3, 3], 1, 1, true),
        ([1, 128, 512, 512], [3, 128, 3, 3], 1, 1, true),
        ([1, 512, 64, 64], [32, 512, 3, 3], 1, 1, true),
    ] {
        let x = t.input(&x_dims, 1.0)?;
        let w = t.input(&w_dims, 0.5)?;
        let b = t.input(&[w_dims[0]], 1.0)?;
        let (gb, cb) = match bias {
            true => (Some(&b.gpu), Some(&b.cpu)),
            false => (None, None),
        };
        let gpu = be.conv2d(&x.gpu, &w.gpu, gb, stride, pad)?;
        let cpu = t.cpu.conv2d(&x.cpu, &w.cpu, cb, stride, pad)?;
        let shape = format!("{x_dims:?} * {w_dims:?} s{stride} p{pad}");
        let row = t.compare("conv2d", shape, Check::Reduction, &gpu, &cpu)?;
        t.time(row, || be.conv2d(&x.gpu, &w.gpu, gb, stride, pad))?;
    }
    Ok(())
}

fn attention(t: &mut ImageSuite<'_, '_>) -> Result<()> {
    let be = t.gpu;
    // (batch, nq, nk, heads, head dim, causal): UNet self-attention over 11x15 latents,
    // cross-attention to 77 text tokens, CLIP's causal self-attention, one-head VAE-style;
    // then the same with head dims the tiled kernel takes (SD 1.5's 40 and 160, 64, 80),
    // each run on it (rows "attention(flash...)") and on the dense path.
    for (b, nq, nk, heads, dim, causal) in [
        (2, 165, 165, 4, 10, false),
        (2, 165, 77, 4, 10, false),
        (2, 77, 77, 4, 8, true),
        (1, 330, 330, 1, 24, false),
        (2, 165, 165, 8, 40, false),
        (2, 165, 77, 8, 40, false),
        (2, 165, 165, 5, 64, false),
        (2, 165, 77, 4, 80, false),
        (2, 165, 77, 5, 160, false),
        (2, 77, 77, 4, 64, true),
        // 32x32 latents: big enough for the two paths' timings to mean something.
        (2, 1024, 1024, 8, 40, false),
    ] {
        let q = t.input(&[b, nq, heads * dim], 2.0)?;
        let k = t.input(&[b, nk, heads * dim], 2.0)?;
        let v = t.input(&[b, nk, heads * dim], 1.0)?;
        let cpu = t
            .cpu
            .dense_attention(&q.cpu, &k.cpu, &v.cpu, heads, causal)?;
        let shape = format!("b{b} nq{nq} nk{nk} {heads}x{dim}");
        for allow_flash in [true, false] {
            let path =
                be.image_attention_path([&q.gpu, &k.gpu, &v.gpu], heads, causal, allow_flash)?;
            let flash = path == ImageAttentionPath::Flash;
            let run = || be.image_attention_gpu(&q.gpu, &k.gpu, &v.gpu, heads, causal, allow_flash);
            let gpu = run()?;
            let op = match (flash, causal) {
                (true, false) => "attention(flash)",
                (true, true) => "attention(flash causal)",
                (false, false) => "attention(dense)",
                (false, true) => "attention(causal)",
            };
            let row = t.compare(op, shape.clone(), Check::Reduction, &gpu, &cpu)?;
            t.time(row, run)?;
            if !flash {
                break; // the dense path ran: nothing left to compare it with
            }
        }
    }
    Ok(())
}

fn linear_nd(t: &mut ImageSuite<'_, '_>) -> Result<()> {
    let be = t.gpu;
    let x = t.input(&[2, 165, 40], 1.0)?;
    let w = t.input(&[24, 40], 0.5)?;
    let b = t.input(&[24], 1.0)?;
    let gpu = be.linear_nd(&x.gpu, &w.gpu, Some(&b.gpu))?;
    let cpu = t.cpu.linear_nd(&x.cpu, &w.cpu, Some(&b.cpu))?;
    let row = t.compare(
        "linear_nd",
        "[2, 165, 40] w[24, 40] + b".into(),
        Check::Reduction,
        &gpu,
        &cpu,
    )?;
    t.time(row, || be.linear_nd(&x.gpu, &w.gpu, Some(&b.gpu)))
}
