//! One GPU as the backend sees it: its context and stream, the JIT-compiled kernels and a
//! cuBLAS handle. Construction never panics: a machine without a driver or a device gets a
//! [`CudaUnavailable`] error.

use super::gemm::Blas;
use super::gemm_lt_plan::lt_switch_on;
use super::jit::KernelRegistry;
use super::nvrtc::Nvrtc;
use anyhow::{Context, Result};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr};
use std::sync::Arc;

/// Why the CUDA backend cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum CudaUnavailable {
    #[error("no CUDA device: the CUDA driver (libcuda.so) is not installed")]
    NoDriver,
    #[error("no CUDA device: {0}")]
    NoDevice(String),
}

/// Number of CUDA devices, or why there are none.
pub fn device_count() -> Result<usize, CudaUnavailable> {
    // SAFETY: only tries to open the shared library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaUnavailable::NoDriver);
    }
    // cudarc panics when a driver symbol is missing (a driver older than the bindings).
    let count = std::panic::catch_unwind(CudaContext::device_count)
        .map_err(|_| CudaUnavailable::NoDevice("libcuda lacks an expected symbol".into()))?
        .map_err(|e| CudaUnavailable::NoDevice(format!("the driver reports {e:?}")))?;
    if count <= 0 {
        return Err(CudaUnavailable::NoDevice(
            "the driver reports 0 devices".into(),
        ));
    }
    Ok(count as usize)
}

/// A ready-to-use GPU: kernels loaded, cuBLAS created, one stream for all work.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: KernelRegistry,
    blas: Blas,
    nvrtc: Nvrtc,
    /// Let attention run the split-K decode kernel (off with `KILN_SPLIT_K_DECODE=0`): on
    /// an H200 it took a 4000-token batch-1 decode step from 36.5 to 5.7 ms.
    split_k_decode: bool,
    /// Give a mixed batch's leading decode rows to the split-K decode kernel and only its
    /// prefill chunks to the tensor-core kernel (off with `KILN_SPLIT_MIXED_ATTENTION=0`,
    /// for A/B runs); see [`super::attention_plan::mixed_decode_part`].
    split_mixed_attention: bool,
    /// Run the linear layers the GEMV does not take through cuBLASLt, bias fused (default;
    /// `KILN_CUBLASLT=0` keeps cublasGemmEx; see gemm_lt.rs). Off, with a warning, when
    /// libcublasLt cannot be loaded.
    cublaslt: bool,
}

impl CudaDevice {
    /// Opens device `ordinal`, compiles (or loads cached) kernels and creates cuBLAS.
    pub fn new(ordinal: usize) -> Result<Self> {
        let count = device_count()?;
        if ordinal >= count {
            anyhow::bail!("CUDA device {ordinal} requested but only {count} present");
        }
        let ctx = CudaContext::new(ordinal)
            .with_context(|| format!("creating a context on GPU {ordinal}"))?;
        // All work goes through one stream per device, so cudarc's cross-stream event
        // tracking is pure overhead, and it breaks CUDA graph capture.
        // SAFETY: this device never uses a second stream on the same buffers.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().context("creating a CUDA stream")?;
        let nvrtc = Nvrtc::load()?;
        let kernels = KernelRegistry::load(&ctx, &nvrtc)?;
        let blas = Blas::new(stream.clone())?;
        let cublaslt = lt_switch_on(std::env::var("KILN_CUBLASLT").ok().as_deref())
            && match blas.lt() {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!("{e:#}; linear layers use cublasGemmEx");
                    false
                }
            };
        Ok(Self {
            ctx,
            stream,
            kernels,
            blas,
            nvrtc,
            split_k_decode: std::env::var("KILN_SPLIT_K_DECODE").map_or(true, |v| v != "0"),
            split_mixed_attention: std::env::var("KILN_SPLIT_MIXED_ATTENTION")
                .map_or(true, |v| v != "0"),
            cublaslt,
        })
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Whether attention may pick the split-K decode kernel (see attention_plan.rs).
    pub fn split_k_decode(&self) -> bool {
        self.split_k_decode
    }

    /// Whether a mixed batch's decode rows may run apart from its prefill chunks.
    pub fn split_mixed_attention(&self) -> bool {
        self.split_mixed_attention
    }

    /// Whether non-GEMV linear layers go through cuBLASLt (`KILN_CUBLASLT=0` turns it off).
    pub fn cublaslt(&self) -> bool {
        self.cublaslt
    }

    pub fn kernels(&self) -> &KernelRegistry {
        &self.kernels
    }

    pub fn blas(&self) -> &Blas {
        &self.blas
    }

    pub fn nvrtc(&self) -> &Nvrtc {
        &self.nvrtc
    }

    /// GPU name as the driver reports it.
    pub fn name(&self) -> String {
        self.ctx
            .name()
            .unwrap_or_else(|e| format!("unknown ({e:?})"))
    }

    /// Copies host values (ids, positions, block tables, ...) to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, values: &[T]) -> Result<CudaSlice<T>> {
        super::host_copy::refuse_while_recording(&self.stream, "a host-to-device copy")?;
        self.stream
            .clone_htod(values)
            .context("host-to-device copy")
    }

    /// Copies a device buffer back to the host (synchronizes the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(
        &self,
        buffer: &CudaSlice<T>,
    ) -> Result<Vec<T>> {
        super::host_copy::refuse_while_recording(&self.stream, "a device-to-host copy")?;
        self.stream
            .clone_dtoh(buffer)
            .context("device-to-host copy")
    }

    /// Waits for all queued work; surfaces asynchronous kernel faults.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .context("synchronizing the CUDA stream")
    }
}
