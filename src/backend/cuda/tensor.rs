//! A dense row-major device tensor of a runtime dtype. Storage is untyped bytes so one
//! type serves f32, f16 and bf16 (kernels are picked by [`DType`]).

use super::device::CudaDevice;
use crate::backend::DType;
use anyhow::{bail, Context, Result};
use cudarc::driver::CudaSlice;

pub struct CudaTensor {
    data: CudaSlice<u8>,
    dtype: DType,
    shape: Vec<usize>,
}

impl CudaTensor {
    /// A zero-filled tensor.
    pub fn zeros(dev: &CudaDevice, dtype: DType, shape: &[usize]) -> Result<Self> {
        let bytes = numel(shape) * dtype.size_in_bytes();
        let data = dev
            .stream()
            .alloc_zeros::<u8>(bytes.max(1))
            .with_context(|| format!("allocating {bytes} bytes for a {shape:?} {dtype} tensor"))?;
        Ok(Self {
            data,
            dtype,
            shape: shape.to_vec(),
        })
    }

    /// Uploads little-endian bytes of `dtype` (e.g. straight from safetensors).
    pub fn from_bytes(
        dev: &CudaDevice,
        dtype: DType,
        shape: &[usize],
        bytes: &[u8],
    ) -> Result<Self> {
        let expected = numel(shape) * dtype.size_in_bytes();
        if bytes.len() != expected {
            bail!(
                "{shape:?} {dtype} needs {expected} bytes, got {}",
                bytes.len()
            );
        }
        if bytes.is_empty() {
            return Self::zeros(dev, dtype, shape);
        }
        Ok(Self {
            data: dev.upload(bytes)?,
            dtype,
            shape: shape.to_vec(),
        })
    }

    /// Uploads f32 values, rounding them to `dtype`.
    pub fn from_f32(
        dev: &CudaDevice,
        dtype: DType,
        shape: &[usize],
        values: &[f32],
    ) -> Result<Self> {
        if values.len() != numel(shape) {
            bail!(
                "{shape:?} needs {} values, got {}",
                numel(shape),
                values.len()
            );
        }
        Self::from_bytes(dev, dtype, shape, &dtype.encode(values))
    }

    /// Downloads and widens to f32 (synchronizes the stream).
    pub fn to_f32(&self, dev: &CudaDevice) -> Result<Vec<f32>> {
        let bytes = dev.download(&self.data)?;
        let mut values = self.dtype.decode(&bytes);
        values.truncate(self.numel());
        Ok(values)
    }

    /// The same data under another shape of as many elements (no copy).
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        if numel(shape) != self.numel() {
            bail!("cannot reshape {:?} to {shape:?}", self.shape);
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// Bytes of payload (what a kernel reads or writes in full).
    pub fn num_bytes(&self) -> usize {
        self.numel() * self.dtype.size_in_bytes()
    }

    pub fn data(&self) -> &CudaSlice<u8> {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut CudaSlice<u8> {
        &mut self.data
    }

    /// Fails unless the shape is exactly `expected` (for op argument checks).
    pub fn expect_shape(&self, expected: &[usize], what: &str) -> Result<()> {
        if self.shape != expected {
            bail!("{what}: expected shape {expected:?}, got {:?}", self.shape);
        }
        Ok(())
    }

    /// Fails unless the dtype is `expected`.
    pub fn expect_dtype(&self, expected: DType, what: &str) -> Result<()> {
        if self.dtype != expected {
            bail!("{what}: expected dtype {expected}, got {}", self.dtype);
        }
        Ok(())
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}
