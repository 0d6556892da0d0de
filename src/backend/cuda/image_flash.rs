//! Image attention on the tiled tensor-core kernel (kernels/attention_prefill.cu) instead
//! of the dense path of [`super::image_attention`], which writes a `[heads, nq, nk]` f32
//! score matrix per chunk of queries (8 x 4096 x 4096 at 64x64 latents) and reads it
//! twice more. The kernel keeps scores in registers, 64 queries x 32 keys at a time.
//!
//! A batch entry's `k, v [nk, heads * d]` is exactly the kernel's paged cache
//! `[blocks, block_size, kv heads, d]` with one block of `nk` tokens: block table `[e]`,
//! context `nk`, queries `e * nq ..`, heads = kv heads. Without the causal mask every query
//! sees every key; with it (CLIP, nq = nk) query i sees keys `..= i`, the LLM rule for a
//! prompt that starts at position 0. Which path runs is pure logic, tested on the CPU.

use super::attention_kernels::{compiled_arch, AttentionCall, AttentionInts};
use super::backend::CudaBackend;
use super::device::CudaDevice;
use super::image_geometry::AttentionDims;
use super::launch::as_i32;
use super::ops_attention::AttentionMetadata;
use super::tensor::CudaTensor;
use crate::backend::{DType, KeyWindow};
use anyhow::{Context, Result};
use cudarc::driver::CudaSlice;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Head dims kernels/attention_prefill.cu is instantiated for: the LLMs' and Stable
/// Diffusion 1.5's 40 and 160 (2.x and XL use 64). The VAE's 512 stays dense.
pub const FLASH_HEAD_DIMS: [usize; 8] = [40, 64, 80, 96, 128, 160, 192, 256];

/// Which kernels run an image attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageAttentionPath {
    /// attention_prefill.cu, scores never leave the registers.
    Flash,
    /// cuBLAS scores + attention_softmax.cu + cuBLAS (image_attention.rs).
    Dense,
}

/// What decides the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageAttentionProblem {
    pub dims: AttentionDims,
    pub causal: bool,
    /// bf16 or f16: the tensor-core kernel has no f32 instantiation.
    pub sixteen_bit: bool,
    /// Compute capability the kernels were compiled for (mma.sync m16n8k16 needs 80).
    pub arch: u32,
    /// q, k, v and the output start on 16-byte boundaries (K/V rows are staged with
    /// 16-byte loads; a row of `heads * d` 16-bit values with d a multiple of 8 keeps
    /// every row aligned after the first).
    pub aligned: bool,
    /// `KILN_IMAGE_FLASH=0` forces the dense path (A/B timing).
    pub flash_enabled: bool,
}

/// The path for `p`: the tiled kernel wherever it applies, else the dense one.
pub fn choose_image_path(p: &ImageAttentionProblem) -> ImageAttentionPath {
    let d = &p.dims;
    // The kernel indexes rows and keys with 32-bit ints.
    let fits = |n: usize| i32::try_from(n).is_ok();
    let usable = p.flash_enabled
        && p.sixteen_bit
        && p.arch >= 80
        && p.aligned
        && FLASH_HEAD_DIMS.contains(&d.head_dim)
        && d.nk > 0
        && (!p.causal || d.nq == d.nk)
        && fits(d.batch * d.nq + d.batch)
        && fits(d.nk)
        && fits(d.width());
    if usable {
        ImageAttentionPath::Flash
    } else {
        ImageAttentionPath::Dense
    }
}

/// The `KILN_IMAGE_FLASH` switch: anything but "0" (or unset) allows the tiled kernel.
pub fn flash_switch(value: Option<&str>) -> bool {
    value != Some("0")
}

/// `(block tables, query starts, context lengths)` of the kernel for `batch` entries of
/// `nq` queries over `nk` keys: entry e is sequence e, its K/V block e, its queries rows
/// `e * nq ..`, its context all `nk` keys.
pub fn flash_layout_values(
    batch: usize,
    nq: usize,
    nk: usize,
) -> Result<(Vec<i32>, Vec<i32>, Vec<i32>)> {
    let tables = (0..batch)
        .map(|e| as_i32(e, "batch"))
        .collect::<Result<Vec<_>>>()?;
    let starts = (0..=batch)
        .map(|e| as_i32(e * nq, "query rows"))
        .collect::<Result<Vec<_>>>()?;
    let lens = vec![as_i32(nk, "keys")?; batch];
    Ok((tables, starts, lens))
}

/// The metadata of one image attention shape on the device.
pub struct FlashLayout {
    tables: CudaSlice<i32>,
    starts: CudaSlice<i32>,
    lens: CudaSlice<i32>,
}

/// Shapes seen so far, uploaded once each: a 50-step SD 1.5 image runs its 16 attention
/// layers 50 times over a handful of shapes, and three host-to-device copies per call
/// would stall the host between launches.
#[derive(Default)]
pub struct FlashLayouts(Mutex<HashMap<(usize, usize, usize), Arc<FlashLayout>>>);

/// More shapes than any pipeline has (a bound against unbounded growth: cleared past it).
const MAX_FLASH_LAYOUTS: usize = 64;

impl FlashLayouts {
    fn get(&self, dev: &CudaDevice, d: &AttentionDims) -> Result<Arc<FlashLayout>> {
        let key = (d.batch, d.nq, d.nk);
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(layout) = map.get(&key) {
            return Ok(layout.clone());
        }
        let (tables, starts, lens) = flash_layout_values(d.batch, d.nq, d.nk)?;
        let upload = |values: &[i32]| {
            dev.upload(values)
                .context("uploading image attention metadata")
        };
        let layout = Arc::new(FlashLayout {
            tables: upload(&tables)?,
            starts: upload(&starts)?,
            lens: upload(&lens)?,
        });
        if map.len() >= MAX_FLASH_LAYOUTS {
            map.clear();
        }
        map.insert(key, layout.clone());
        Ok(layout)
    }
}

impl CudaBackend {
    /// The path [`Self::image_attention_gpu`] takes for these tensors (`allow_flash`
    /// false: always dense).
    pub fn image_attention_path(
        &self,
        [q, k, v]: [&CudaTensor; 3],
        heads: usize,
        causal: bool,
        allow_flash: bool,
    ) -> Result<ImageAttentionPath> {
        let dims = AttentionDims::new(q.shape(), k.shape(), v.shape(), heads, causal)?;
        let dev = self.device();
        let env = std::env::var("KILN_IMAGE_FLASH").ok();
        Ok(choose_image_path(&ImageAttentionProblem {
            dims,
            causal,
            sixteen_bit: q.dtype() != DType::F32,
            arch: compiled_arch(dev.kernels().target()),
            // The output comes from the pool: whole allocations are aligned.
            aligned: [q, k, v].iter().all(|t| dev.is_16_byte_aligned(t)),
            flash_enabled: allow_flash && flash_switch(env.as_deref()),
        }))
    }

    /// `out = softmax(q k^T / sqrt(d)) v` on attention_prefill.cu, for a problem that
    /// [`choose_image_path`] sent there.
    pub(super) fn flash_attention_gpu(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        d: &AttentionDims,
        causal: bool,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let layout = self.flash_layouts.get(self.device(), d)?;
        let meta = AttentionMetadata {
            block_tables: &layout.tables,
            max_blocks_per_seq: 1,
            query_start: &layout.starts,
            context_lens: &layout.lens,
            num_seqs: d.batch,
            window: KeyWindow::Full,
            softcap: None,
            sinks: None,
            alibi: None,
            decode_prefix: 0,
        };
        let heads = as_i32(d.heads, "heads")?;
        let call = AttentionCall {
            q,
            k_cache: k,
            v_cache: v,
            meta: &meta,
            scale: 1.0 / (d.head_dim as f32).sqrt(),
            softcap: 0.0,
            ints: AttentionInts {
                num_seqs: as_i32(d.batch, "batch")?,
                max_blocks_per_seq: 1,
                block_size: as_i32(d.nk, "keys")?,
                hq: heads,
                hk: heads,
                hd: as_i32(d.head_dim, "head dim")?,
                q_stride: as_i32(d.width(), "width")?,
                window: 0,
            },
            tokens: d.batch * d.nq,
            first_seq: 0,
        };
        self.device().attention_prefill_masked(&call, causal, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SD 1.5 at 64x64 latents in f16 on an H100 (sm_90), batch 2 (classifier-free).
    fn sd15(nq: usize, nk: usize, heads: usize, head_dim: usize) -> ImageAttentionProblem {
        ImageAttentionProblem {
            dims: AttentionDims {
                batch: 2,
                nq,
                nk,
                heads,
                head_dim,
            },
            causal: false,
            sixteen_bit: true,
            arch: 90,
            aligned: true,
            flash_enabled: true,
        }
    }

    #[test]
    fn unet_self_and_cross_attention_take_the_tiled_kernel() {
        for head_dim in [40, 64, 80, 160] {
            for nk in [4096, 77] {
                let p = sd15(4096, nk, 320 / 40, head_dim);
                assert_eq!(choose_image_path(&p), ImageAttentionPath::Flash, "{p:?}");
            }
        }
        // CLIP's causal self-attention over 77 tokens, head dim 64.
        let clip = ImageAttentionProblem {
            causal: true,
            ..sd15(77, 77, 12, 64)
        };
        assert_eq!(choose_image_path(&clip), ImageAttentionPath::Flash);
    }

    #[test]
    fn every_batch_entry_is_one_sequence_over_all_keys() {
        let (tables, starts, lens) = flash_layout_values(2, 4096, 77).unwrap();
        assert_eq!(tables, vec![0, 1]);
        assert_eq!(starts, vec![0, 4096, 8192]);
        assert_eq!(lens, vec![77, 77]);
        assert!(flash_layout_values(2, 1 << 31, 77).is_err());
    }

    #[test]
    fn everything_the_kernel_cannot_run_stays_dense() {
        let dense = |p: ImageAttentionProblem| {
            assert_eq!(choose_image_path(&p), ImageAttentionPath::Dense, "{p:?}");
        };
        // The VAE's one-head attention (head dim 512) and head dims off the list.
        dense(sd15(4096, 4096, 1, 512));
        for head_dim in [8, 10, 24, 48, 72] {
            dense(sd15(300, 300, 4, head_dim));
        }
        let base = sd15(4096, 77, 8, 40);
        dense(ImageAttentionProblem {
            sixteen_bit: false,
            ..base
        });
        dense(ImageAttentionProblem { arch: 75, ..base });
        dense(ImageAttentionProblem {
            aligned: false,
            ..base
        });
        dense(ImageAttentionProblem {
            flash_enabled: false,
            ..base
        });
        // Causal with nq != nk has no kernel rule (AttentionDims refuses it anyway).
        dense(ImageAttentionProblem {
            causal: true,
            ..base
        });
        // No keys: the dense path reports the error.
        let mut empty = base;
        empty.dims.nk = 0;
        dense(empty);
        // Rows past the kernel's 32-bit indices.
        let mut huge = base;
        huge.dims.nq = 1 << 31;
        dense(huge);
    }

    #[test]
    fn every_head_dim_routed_here_has_a_kernel() {
        use crate::backend::cuda::attention_plan::{kernel_op, TILED_HEAD_DIMS};
        use crate::backend::cuda::kernel_sources::KERNEL_FILES;
        let file = KERNEL_FILES
            .iter()
            .find(|f| f.file == "attention_prefill.cu")
            .unwrap();
        for hd in FLASH_HEAD_DIMS {
            assert!(
                file.ops.contains(&kernel_op("prefill", hd).as_str()),
                "{hd}"
            );
        }
        // The LLM path's head dims are a subset (the decode kernel lacks 40 and 160).
        assert!(TILED_HEAD_DIMS
            .iter()
            .all(|hd| FLASH_HEAD_DIMS.contains(hd)));
    }

    #[test]
    fn the_env_switch_turns_the_kernel_off_only_with_zero() {
        assert!(flash_switch(None));
        assert!(flash_switch(Some("1")));
        assert!(!flash_switch(Some("0")));
    }
}
