//! Dummy weights generated on the GPU (kernels/dummy.cu): the host's `DummyWeights` values,
//! bit for bit, without generating or copying them on the host.

use super::device::CudaDevice;
use super::launch;
use super::tensor::CudaTensor;
use crate::model::weights::GeneratedPart;
use anyhow::{bail, Context, Result};
use cudarc::driver::PushKernelArg;

impl CudaDevice {
    /// Fills `out` with `parts` one after another (stacked along the first dimension).
    pub fn dummy_fill(&self, parts: &[GeneratedPart], out: &mut CudaTensor) -> Result<()> {
        let total: usize = parts.iter().map(|p| p.runs.len()).sum();
        if total != out.numel() {
            bail!(
                "dummy weights: parts hold {total} elements, the tensor {:?} {}",
                out.shape(),
                out.numel()
            );
        }
        let f = self.kernels().get("dummy_fill", out.dtype())?;
        let mut offset = 0i64;
        for part in parts {
            let n = part.runs.len() as i64;
            if n == 0 {
                continue;
            }
            let (run, stride, first) = (
                part.runs.run.max(1) as i64,
                part.runs.stride as i64,
                part.runs.first as i64,
            );
            let mut args = self.stream().launch_builder(f);
            args.arg(out.data_mut())
                .arg(&offset)
                .arg(&n)
                .arg(&part.stream)
                .arg(&run)
                .arg(&stride)
                .arg(&first);
            // SAFETY: matches kernels/dummy.cu; offset + n <= numel checked above.
            unsafe { args.launch(launch::elementwise(n as usize)) }.context("dummy_fill launch")?;
            offset += n;
        }
        Ok(())
    }
}
