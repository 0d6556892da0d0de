//! Dense attention of the image models on the GPU, per batch entry and chunk of queries:
//! cuBLAS writes the scaled scores `q k^T / sqrt(d)` of every head in f32, the
//! `attention_softmax` kernel turns them into probabilities in the tensor dtype (causal mask
//! there), and a second cuBLAS GEMM multiplies them with v straight into the
//! `[b, nq, heads * d]` output. Heads are the batch of the strided GEMMs: a head of
//! `[n, heads, d]` is a matrix with leading dimension `heads * d` starting `d` elements after
//! the previous head. Queries are chunked so the scores stay within [`SCORES_BUDGET`].
//!
//! Where the tiled tensor-core kernel applies (16-bit, sm_80+, its head dims; see
//! [`super::image_flash`]) it runs instead and no score matrix is written;
//! `KILN_IMAGE_FLASH=0` keeps everything on this path.

use super::backend::CudaBackend;
use super::gemm_batched::{Operand, OperandMut, StridedGemm};
use super::image_flash::ImageAttentionPath;
use super::image_geometry::{entries_per_chunk, AttentionDims};
use super::launch::{self, as_i32};
use super::tensor::CudaTensor;
use crate::backend::DType;
use anyhow::{ensure, Context, Result};
use cudarc::driver::PushKernelArg;

/// f32 scores per chunk (256 MiB): a 64x64-latent self-attention (4096 queries and keys, 8
/// heads) goes in 512-query chunks; the VAE's 1-head attention at 128x128 latents in
/// 4096-query chunks.
pub const SCORES_BUDGET: usize = 1 << 26;

/// One chunk: queries `q0 .. q0 + queries` of batch entry `batch`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionStep {
    pub batch: usize,
    pub q0: usize,
    pub queries: usize,
    /// `scores[h, i, j] = scale * q[b, q0 + i, h] . k[b, j, h]`: A = k, B = q, C = scores.
    pub scores: StridedGemm,
    pub k_offset: usize,
    pub q_offset: usize,
    /// `out[b, q0 + i, h] = sum_j probs[h, i, j] v[b, j, h]`: A = v, B = probs, C = out.
    pub output: StridedGemm,
    pub v_offset: usize,
    pub out_offset: usize,
}

/// The chunks of attention `d`, each with at most `budget` scores where possible.
pub fn attention_steps(d: &AttentionDims, budget: usize) -> Vec<AttentionStep> {
    let (heads, dim, nk, width) = (d.heads, d.head_dim, d.nk, d.width());
    let chunk = entries_per_chunk(d.nq, heads * nk, budget);
    let scale = 1.0 / (dim as f32).sqrt();
    let mut steps = Vec::new();
    for batch in 0..d.batch {
        for q0 in (0..d.nq).step_by(chunk) {
            let queries = chunk.min(d.nq - q0);
            // Row-major scores[i, j] of one head is column-major [nk, queries].
            let scores = StridedGemm {
                transa: true,
                transb: false,
                m: nk,
                n: queries,
                k: dim,
                lda: width,
                ldb: width,
                ldc: nk,
                stride_a: dim,
                stride_b: dim,
                stride_c: queries * nk,
                batch: heads,
                alpha: scale,
            };
            // Row-major out[i, e] of one head is column-major [dim, queries], ld = width.
            let output = StridedGemm {
                transa: false,
                transb: false,
                m: dim,
                n: queries,
                k: nk,
                lda: width,
                ldb: nk,
                ldc: width,
                stride_a: dim,
                stride_b: queries * nk,
                stride_c: dim,
                batch: heads,
                alpha: 1.0,
            };
            steps.push(AttentionStep {
                batch,
                q0,
                queries,
                scores,
                k_offset: batch * nk * width,
                q_offset: (batch * d.nq + q0) * width,
                output,
                v_offset: batch * nk * width,
                out_offset: (batch * d.nq + q0) * width,
            });
        }
    }
    steps
}

impl CudaBackend {
    /// As [`crate::backend::image_ops::ImageOps::dense_attention`], on the tiled kernel
    /// where it applies; `allow_flash` false keeps it on the dense path (the selftest runs
    /// both).
    pub fn image_attention_gpu(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        heads: usize,
        causal: bool,
        allow_flash: bool,
    ) -> Result<CudaTensor> {
        let d = AttentionDims::new(q.shape(), k.shape(), v.shape(), heads, causal)?;
        k.expect_dtype(q.dtype(), "attention k")?;
        v.expect_dtype(q.dtype(), "attention v")?;
        let mut out = self.output(q.dtype(), q.shape())?;
        if d.batch * d.nq * d.width() == 0 {
            return Ok(out);
        }
        ensure!(d.nk > 0, "attention over no keys");
        self.bind()?; // cuBLAS uses the thread's current context
        if self.image_attention_path([q, k, v], heads, causal, allow_flash)?
            == ImageAttentionPath::Flash
        {
            self.flash_attention_gpu(q, k, v, &d, causal, &mut out)?;
            return Ok(out);
        }
        let steps = attention_steps(&d, SCORES_BUDGET);
        let rows = steps.iter().map(|s| s.queries).max().unwrap_or(1) * heads;
        let mut scores = self.output(DType::F32, &[rows * d.nk])?;
        let mut probs = self.output(q.dtype(), &[rows * d.nk])?;
        let blas = self.device().blas();
        for step in &steps {
            let at = |tensor, offset| Operand { tensor, offset };
            blas.gemm_strided(
                &step.scores,
                at(k, step.k_offset),
                at(q, step.q_offset),
                OperandMut {
                    tensor: &mut scores,
                    offset: 0,
                },
            )?;
            self.attention_softmax(&scores, step, d.nk, causal, &mut probs)?;
            blas.gemm_strided(
                &step.output,
                at(v, step.v_offset),
                at(&probs, 0),
                OperandMut {
                    tensor: &mut out,
                    offset: step.out_offset,
                },
            )?;
        }
        Ok(out)
    }

    /// Probabilities of the `heads * step.queries` score rows of `step`.
    fn attention_softmax(
        &self,
        scores: &CudaTensor,
        step: &AttentionStep,
        keys: usize,
        causal: bool,
        probs: &mut CudaTensor,
    ) -> Result<()> {
        let rows = step.scores.batch * step.queries;
        ensure!(
            scores.dtype() == DType::F32
                && scores.numel() >= rows * keys
                && probs.numel() >= rows * keys,
            "attention softmax: {rows} rows of {keys} keys do not fit its buffers"
        );
        let ints = [
            as_i32(keys, "keys")?,
            as_i32(step.queries, "queries")?,
            as_i32(step.q0, "query offset")?,
            i32::from(causal),
        ];
        let f = self
            .device()
            .kernels()
            .get("attention_softmax", probs.dtype())?;
        let mut args = self.device().stream().launch_builder(f);
        args.arg(probs.data_mut()).arg(scores.data());
        for v in &ints {
            args.arg(v);
        }
        // SAFETY: matches kernels/attention_softmax.cu; buffer sizes checked above.
        unsafe { args.launch(launch::per_row(rows, launch::row_threads(keys))?) }
            .context("attention softmax launch")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::cuda::test_values::{max_abs_error, values};
    use crate::backend::image_ops::ImageOps;
    use candle_core::{Device, Tensor};

    /// The kernel's row softmax on the host, with its causal rule.
    fn softmax_rows(scores: &[f32], step: &AttentionStep, keys: usize, causal: bool) -> Vec<f32> {
        let mut probs = vec![0.0; scores.len()];
        for (r, row) in scores.chunks(keys).enumerate() {
            let query = step.q0 + r % step.queries;
            let visible = if causal { (query + 1).min(keys) } else { keys };
            let max = row[..visible]
                .iter()
                .fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let sum: f32 = row[..visible].iter().map(|s| (s - max).exp()).sum();
            for j in 0..visible {
                probs[r * keys + j] = (row[j] - max).exp() / sum;
            }
        }
        probs
    }

    /// The chunked plan on the host against the CPU backend's dense attention.
    fn check(
        b: usize,
        nq: usize,
        nk: usize,
        heads: usize,
        dim: usize,
        causal: bool,
        budget: usize,
    ) {
        let width = heads * dim;
        let (q, k, v) = (
            values(b * nq * width, 1),
            values(b * nk * width, 2),
            values(b * nk * width, 3),
        );
        let d = AttentionDims::new(
            &[b, nq, width],
            &[b, nk, width],
            &[b, nk, width],
            heads,
            causal,
        )
        .unwrap();
        let mut out = vec![f32::NAN; q.len()];
        let steps = attention_steps(&d, budget);
        for step in &steps {
            let mut scores = vec![f32::NAN; heads * step.queries * nk];
            step.scores
                .run_on_host(&k[step.k_offset..], &q[step.q_offset..], &mut scores);
            let probs = softmax_rows(&scores, step, nk, causal);
            step.output
                .run_on_host(&v[step.v_offset..], &probs, &mut out[step.out_offset..]);
        }
        let t = |x: &[f32], n: usize| Tensor::from_slice(x, (b, n, width), &Device::Cpu).unwrap();
        let want = CpuBackend::new()
            .dense_attention(&t(&q, nq), &t(&k, nk), &t(&v, nk), heads, causal)
            .unwrap();
        let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        let err = max_abs_error(&out, &want);
        assert!(
            err < 1e-5,
            "b{b} nq{nq} nk{nk} {heads}x{dim} causal {causal}: error {err} over {} steps",
            steps.len()
        );
    }

    #[test]
    fn chunked_gemms_and_softmax_match_the_cpu_attention() {
        // Cross-attention shape (nq != nk), whole queries per step.
        check(2, 7, 11, 3, 5, false, usize::MAX);
        // Chunks of 2 queries (budget: 2 rows of 3 heads x 11 keys).
        check(2, 7, 11, 3, 5, false, 2 * 3 * 11);
        // Causal CLIP-style self-attention, chunked so the mask needs the query offset.
        check(2, 9, 9, 2, 4, true, 3 * 2 * 9);
        check(1, 13, 13, 4, 8, true, usize::MAX);
    }

    #[test]
    fn steps_cover_every_query_of_every_batch_entry_once() {
        let d = AttentionDims::new(&[3, 10, 8], &[3, 5, 8], &[3, 5, 8], 2, false).unwrap();
        let steps = attention_steps(&d, 4 * 2 * 5);
        let mut seen = [0; 30];
        for s in &steps {
            for i in 0..s.queries {
                seen[s.batch * 10 + s.q0 + i] += 1;
            }
            assert!(s.queries <= 4);
        }
        assert!(seen.iter().all(|&n| n == 1));
    }
}
