//! Selftest of the diffusion models' ops ([`ImageOps`]) on the GPU against the CPU backend
//! (the reference the diffusion pipelines are verified with): the same inputs, rounded to
//! the dtype, go to both; the CPU computes in f32. Odd shapes on purpose: 22x30-pixel
//! latents (11x15), channel counts that are not multiples of 32, groups of 1 and 32,
//! stride-2 and 1x1 convolutions, causal and cross attention with nq != nk.

use super::compare::Check;
use super::suite::Suite;
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{CudaBackend, CudaTensor, DType};
use crate::backend::image_ops::{Activation, ImageOps};
use crate::backend::Backend;
use anyhow::Result;
use candle_core::{Device, Tensor};

/// One input on both backends.
pub struct Pair {
    pub gpu: CudaTensor,
    pub cpu: Tensor,
    pub dims: Vec<usize>,
}

/// The backends of a run and the dtype under test.
pub struct ImageSuite<'s, 'd> {
    pub s: &'s mut Suite<'d>,
    pub gpu: &'d CudaBackend,
    pub cpu: CpuBackend,
    pub dtype: DType,
}

impl ImageSuite<'_, '_> {
    /// Random values in `[-scale, scale)`, rounded to the dtype, on both backends.
    pub fn input(&mut self, dims: &[usize], scale: f32) -> Result<Pair> {
        let values = self.s.random(dims.iter().product(), scale, self.dtype);
        Ok(Pair {
            gpu: self.gpu.tensor_from_f32(values.clone(), dims, self.dtype)?,
            cpu: Tensor::from_vec(values, dims, &Device::Cpu)?,
            dims: dims.to_vec(),
        })
    }

    /// Records one row comparing the GPU output with the CPU's; returns the row.
    pub fn compare(
        &mut self,
        op: &str,
        shape: String,
        check: Check,
        gpu: &CudaTensor,
        cpu: &Tensor,
    ) -> Result<usize> {
        anyhow::ensure!(
            gpu.shape() == cpu.dims(),
            "{op}: GPU shape {:?}, CPU shape {:?}",
            gpu.shape(),
            cpu.dims()
        );
        let got = self.gpu.to_host_f32(gpu)?;
        let want: Vec<f32> = cpu.flatten_all()?.to_vec1()?;
        Ok(self.s.check(op, shape, self.dtype, check, &got, &want))
    }

    /// Times `op` on the GPU into row `row` (one output per call, from the pool). `op` may
    /// not borrow the suite, so cases copy `t.gpu` into a local `be` for it.
    pub fn time(&mut self, row: usize, mut op: impl FnMut() -> Result<CudaTensor>) -> Result<()> {
        self.s.time(row, || op().map(drop))?;
        Ok(())
    }
}

/// One case: a family of ops for the suite's dtype.
type Case = fn(&mut ImageSuite<'_, '_>) -> Result<()>;

/// Runs every image case for `dtype`; an error in one is recorded and the rest still run.
pub fn run<'d>(s: &mut Suite<'d>, gpu: &'d CudaBackend, dtype: DType) {
    let cases: [(&str, Case); 11] = [
        ("group_norm", group_norm),
        ("layer_norm", layer_norm),
        ("head_layer_norm", head_layer_norm),
        ("activations", activations),
        ("lincomb", lincomb),
        ("biases", biases),
        ("upsample_nearest", upsample),
        ("concat/narrow", concat_narrow),
        ("tokens", tokens),
        ("gemm ops", super::image_gemm_cases::run),
        ("implicit conv", super::image_conv_cases::run),
    ];
    let mut suite = ImageSuite {
        s,
        gpu,
        cpu: CpuBackend::new(),
        dtype,
    };
    for (name, case) in cases {
        if let Err(err) = case(&mut suite) {
            suite.s.error(&format!("image {name}"), dtype, &err);
        }
    }
}

fn group_norm(t: &mut ImageSuite<'_, '_>) -> Result<()> {
    let be = t.gpu;
    // (x dims, groups, silu): 5 channels a group, one group, one channel a group, a
    // UNet-like 32 groups of 3 channels at 22x30, and the SD VAE decoder's largest and
    // deepest norms (512x512x128: 32 statistics blocks per group; 64x64x512).
    for (dims, groups, silu) in [
        ([2, 40, 11, 15], 8, true),
        ([2, 40, 11, 15], 1, false),
        ([1, 12, 7, 9], 12, true),
        ([2, 96, 22, 30], 32, true),
        ([1, 128, 512, 512], 32, true),
        ([1, 512, 64, 64], 32, false),
    ] {
        let x = t.input(&dims, 3.0)?;
        let w = t.input(&[dims[1]], 1.5)?;
        let b = t.input(&[dims[1]], 1.0)?;
        let gpu = t
            .gpu
            .group_norm(&x.gpu, groups, &w.gpu, &b.gpu, 1e-5, silu)?;
        let cpu = t
            .cpu
            .group_norm(&x.cpu, groups, &w.cpu, &b.cpu, 1e-5, silu)?;
        let op = if silu {
            "group_norm+silu"
        } else {
            "group_norm"
        };
        let row = t.compare(
            op,
            format!("{dims:?} / {groups}"),
            Check::Reduction,
            &gpu,
            &cpu,
        )?;
        t.time(row, || {
            be.group_norm(&x.gpu, groups, &w.gpu, &b.gpu, 1e-5, silu)
        })?;
    }
    Ok(())
}

fn layer_norm(t: &mut ImageSuite<'_, '_>) -> Result<()> {
    let be = t.gpu;
    for dims in [[2, 165, 40], [2, 77, 36]] {
        let x = t.input(&dims, 2.0)?;
        let w = t.input(&[dims[2]], 1.5)?;
        let b = t.input(&[dims[2]], 1.0)?;
        let gpu = t.gpu.layer_norm(&x.gpu, &w.gpu, &b.gpu, 1e-5)?;
        let cpu = t.cpu.layer_norm(&x.cpu, &w.cpu, &b.cpu, 1e-5)?;
        let row = t.compare(
            "layer_norm",
            format!("{dims:?}"),
            Check::Reduction,
            &gpu,
            &cpu,
        )?;
        t.time(row, || be.layer_norm(&x.gpu, &w.gpu, &b.gpu, 1e-5))?;
    }
    Ok(())
}

/// Command R+'s q / k norms (12 q heads of 128 on 5 tokens) and StableLM 2 12B's (8 kv
/// heads of 160): a LayerNorm per head, each head scaled by its own weight row.
fn head_layer_norm(t: &mut ImageSuite<'_, '_>) -> Result<()> {
    let be = t.gpu;
    for (tokens, heads, hd) in [(5, 12, 128), (3, 8, 160)] {
        let x = t.input(&[tokens, heads * hd], 2.0)?;
        let w = t.input(&[heads * hd], 1.5)?;
        let gpu = t.gpu.head_layer_norm(&x.gpu, &w.gpu, hd, 1e-5)?;
        let cpu = t.cpu.head_layer_norm(&x.cpu, &w.cpu, hd, 1e-5)?;
        let row = t.compare(
            "head_layer_norm",
            format!("[{tokens}, {heads} x {hd}]"),
            Check::Reduction,
            &gpu,
            &cpu,
        )?;
        t.time(row, || be.head_layer_norm(&x.gpu, &w.gpu, hd, 1e-5))?;
    }
    Ok(())
}

fn activations(t: &mut ImageSuite<'_, '_>) -> Result<()> {
    let be = t.gpu;
    let x = t.input(&[3, 1001], 6.0)?;
    for (act, name) in [
        (Activation::Silu, "silu"),
        (Activation::Gelu, "gelu(erf)"),
        (Activation::GeluTanh, "gelu(tanh)"),
        (Activation::QuickGelu, "quick_gelu"),
        (Activation::Relu, "relu"),
        (Activation::Relu2, "relu2"),
        (
            Activation::Xielu(crate::backend::image_ops::Xielu::from_stored(
                -0.5, 0.2, 0.5, -1e-6,
            )),
            "xielu",
        ),
    ] {
        let gpu = t.gpu.activation(&x.gpu, act)?;
        let cpu = t.cpu.activation(&x.cpu, act)?;
        t.compare(name, "[3, 1001]".into(), Check::Elementwise, &gpu, &cpu)?;
    }
    let x = t.input(&[2, 165, 2 * 40], 4.0)?;
    let gpu = t.gpu.geglu(&x.gpu)?;
    let cpu = t.cpu.geglu(&x.cpu)?;
    let row = t.compare(
        "geglu",
        "[2, 165, 2 x 40]".into(),
        Check::Elementwise,
        &gpu,
        &cpu,
    )?;
    t.time(row, || be.geglu(&x.gpu))
}

fn lincomb(t: &mut ImageSuite<'_, '_>) -> Result<()> {
    let be = t.gpu;
    let dims = [2, 4, 11, 15];
    let (a, b) = (t.input(&dims, 3.0)?, t.input(&dims, 3.0)?);
    let shape = format!("{dims:?}");
    let gpu = t.gpu.lincomb(&a.gpu, 0.7, &b.gpu, -1.3)?;
    let cpu = t.cpu.lincomb(&a.cpu, 0.7, &b.cpu, -1.3)?;
    let row = t.compare("lincomb", shape.clone(), Check::Elementwise, &gpu, &cpu)?;
    t.time(row, || be.lincomb(&a.gpu, 0.7, &b.gpu, -1.3))?;
    let gpu = t.gpu.scale(&a.gpu, 0.3)?;
    let cpu = t.cpu.scale(&a.cpu, 0.3)?;
    t.compare("scale", shape.clone(), Check::Elementwise, &gpu, &cpu)?;
    let gpu = t.gpu.add(&a.gpu, &b.gpu)?;
    let cpu = t.cpu.add(&a.cpu, &b.cpu)?;
    t.compare("add(image)", shape, Check::Elementwise, &gpu, &cpu)?;
    Ok(())
}

fn biases(t: &mut ImageSuite<'_, '_>) -> Result<()> {
    let be = t.gpu;
    // Odd planes (heads and tails), and an SD UNet resnet's time embedding at 64x64.
    for (n, c, h, w) in [(2, 40, 11, 15), (2, 320, 64, 64)] {
        let x = t.input(&[n, c, h, w], 2.0)?;
        let bias = t.input(&[n, c], 2.0)?;
        let gpu = t.gpu.add_channel_bias(&x.gpu, &bias.gpu)?;
        let cpu = t.cpu.add_channel_bias(&x.cpu, &bias.cpu)?;
        let row = t.compare(
            "add_channel_bias",
            format!("[{n}, {c}, {h}, {w}] + [{n}, {c}]"),
            Check::Elementwise,
            &gpu,
            &cpu,
        )?;
        t.time(row, || be.add_channel_bias(&x.gpu, &bias.gpu))?;
    }
    let x = t.input(&[77, 36], 2.0)?;
    let r = t.input(&[36], 2.0)?;
    let gpu = t.gpu.add_row(&x.gpu, &r.gpu)?;
    let cpu = t.cpu.add_row(&x.cpu, &r.cpu)?;
    t.compare(
        "add_row",
        "[77, 36] + [36]".into(),
        Check::Elementwise,
        &gpu,
        &cpu,
    )?;
    Ok(())
}

fn upsample(t: &mut ImageSuite<'_, '_>) -> Result<()> {
    let be = t.gpu;
    // The UNet's odd-side case (6x8 back to its 11x15 skip), 2x, 11x15 -> 22x30, and the
    // SD VAE's first upsample (16-byte stores).
    for (dims, (h, w)) in [
        ([2, 8, 6, 8], (11, 15)),
        ([2, 8, 6, 8], (12, 16)),
        ([2, 5, 11, 15], (22, 30)),
        ([1, 3, 7, 5], (3, 4)),
        ([1, 512, 64, 64], (128, 128)),
    ] {
        let x = t.input(&dims, 4.0)?;
        let gpu = t.gpu.upsample_nearest(&x.gpu, h, w)?;
        let cpu = t.cpu.upsample_nearest(&x.cpu, h, w)?;
        let shape = format!("{dims:?} -> {h}x{w}");
        let row = t.compare("upsample_nearest", shape, Check::Exact, &gpu, &cpu)?;
        t.time(row, || be.upsample_nearest(&x.gpu, h, w))?;
    }
    Ok(())
}

fn concat_narrow(t: &mut ImageSuite<'_, '_>) -> Result<()> {
    let be = t.gpu;
    let a = t.input(&[2, 8, 11, 15], 4.0)?;
    let b = t.input(&[2, 5, 11, 15], 4.0)?;
    let c = t.input(&[1, 8, 11, 15], 4.0)?;
    let gpu = t.gpu.concat(&[&a.gpu, &b.gpu], 1)?;
    let cpu = t.cpu.concat(&[&a.cpu, &b.cpu], 1)?;
    let row = t.compare(
        "concat(axis 1)",
        "8 + 5 channels".into(),
        Check::Exact,
        &gpu,
        &cpu,
    )?;
    t.time(row, || be.concat(&[&a.gpu, &b.gpu], 1))?;
    let gpu = t.gpu.concat(&[&a.gpu, &c.gpu, &a.gpu], 0)?;
    let cpu = t.cpu.concat(&[&a.cpu, &c.cpu, &a.cpu], 0)?;
    t.compare(
        "concat(axis 0)",
        "2 + 1 + 2 images".into(),
        Check::Exact,
        &gpu,
        &cpu,
    )?;
    let gpu = t.gpu.narrow(&a.gpu, 1, 3, 4)?;
    let cpu = t.cpu.narrow(&a.cpu, 1, 3, 4)?;
    t.compare(
        "narrow",
        format!("{:?} axis 1, 3..7", a.dims),
        Check::Exact,
        &gpu,
        &cpu,
    )?;
    let gpu = t.gpu.narrow(&a.gpu, 0, 1, 1)?;
    let cpu = t.cpu.narrow(&a.cpu, 0, 1, 1)?;
    t.compare(
        "narrow",
        format!("{:?} axis 0, 1..2", a.dims),
        Check::Exact,
        &gpu,
        &cpu,
    )?;
    Ok(())
}

fn tokens(t: &mut ImageSuite<'_, '_>) -> Result<()> {
    let be = t.gpu;
    let x = t.input(&[2, 40, 11, 15], 4.0)?;
    let gpu = t.gpu.nchw_to_tokens(&x.gpu)?;
    let cpu = t.cpu.nchw_to_tokens(&x.cpu)?;
    let row = t.compare(
        "nchw_to_tokens",
        format!("{:?}", x.dims),
        Check::Exact,
        &gpu,
        &cpu,
    )?;
    t.time(row, || be.nchw_to_tokens(&x.gpu))?;
    let back_gpu = t.gpu.tokens_to_nchw(&gpu, 11, 15)?;
    let back_cpu = t.cpu.tokens_to_nchw(&cpu, 11, 15)?;
    t.compare(
        "tokens_to_nchw",
        "[2, 165, 40]".into(),
        Check::Exact,
        &back_gpu,
        &back_cpu,
    )?;
    let gpu = t.gpu.reshape(&x.gpu, &[2, 40, 165])?;
    let cpu = t.cpu.reshape(&x.cpu, &[2, 40, 165])?;
    t.compare(
        "reshape",
        "-> [2, 40, 165]".into(),
        Check::Exact,
        &gpu,
        &cpu,
    )?;
    Ok(())
}
