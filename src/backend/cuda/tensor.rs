//! A dense row-major device tensor of a runtime dtype. Storage is untyped bytes so one
//! type serves f32, f16 and bf16 (kernels are picked by [`DType`]).

use super::device::CudaDevice;
use super::device_pools::DeviceBytes;
use crate::backend::DType;
use anyhow::{bail, Context, Result};
use cudarc::driver::CudaSlice;

pub struct CudaTensor {
    data: Storage,
    dtype: DType,
    shape: Vec<usize>,
}

/// Weights and the KV cache own their memory for the model's life; activations borrow a
/// buffer of the backend's pool, at least as large as the payload, returned on drop.
enum Storage {
    Owned(CudaSlice<u8>),
    Pooled(DeviceBytes),
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
            data: Storage::Owned(data),
            dtype,
            shape: shape.to_vec(),
        })
    }

    /// A tensor over a pooled buffer (contents as the buffer has them).
    pub fn from_pooled(buffer: DeviceBytes, dtype: DType, shape: &[usize]) -> Result<Self> {
        let bytes = numel(shape) * dtype.size_in_bytes();
        if buffer.len() < bytes {
            bail!(
                "a {shape:?} {dtype} tensor needs {bytes} bytes, the pooled buffer has {}",
                buffer.len()
            );
        }
        Ok(Self {
            data: Storage::Pooled(buffer),
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
            data: Storage::Owned(dev.upload(bytes)?),
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

    /// Downloads and widens to f32 (synchronizes the stream). Only the payload travels: a
    /// pooled buffer may be larger.
    pub fn to_f32(&self, dev: &CudaDevice) -> Result<Vec<f32>> {
        super::host_copy::refuse_while_recording(dev.stream(), "a device-to-host copy")?;
        let payload = self.data().slice(0..self.num_bytes().max(1));
        let bytes = dev
            .stream()
            .clone_dtoh(&payload)
            .context("device-to-host copy")?;
        let mut values = self.dtype.decode(&bytes[..self.num_bytes()]);
        values.truncate(self.numel());
        Ok(values)
    }

    /// Replaces the contents with `values` rounded to the tensor's dtype, in place (no
    /// allocation: a host-staged all-reduce writes its sum back every layer).
    pub fn overwrite_from_f32(&mut self, dev: &CudaDevice, values: &[f32]) -> Result<()> {
        if values.len() != self.numel() {
            bail!("{} values for a {:?} tensor", values.len(), self.shape);
        }
        let bytes = self.dtype.encode(values);
        if bytes.is_empty() {
            return Ok(());
        }
        let target = match &mut self.data {
            Storage::Owned(slice) => slice,
            Storage::Pooled(buffer) => &mut **buffer,
        };
        super::host_copy::refuse_while_recording(dev.stream(), "a host-to-device copy")?;
        let mut payload = target.slice_mut(0..bytes.len());
        dev.stream()
            .memcpy_htod(&bytes, &mut payload)
            .context("host-to-device copy")?;
        Ok(())
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

    /// The device buffer: at least [`Self::num_bytes`] long (longer when pooled).
    pub fn data(&self) -> &CudaSlice<u8> {
        match &self.data {
            Storage::Owned(slice) => slice,
            Storage::Pooled(buffer) => buffer,
        }
    }

    pub fn data_mut(&mut self) -> &mut CudaSlice<u8> {
        match &mut self.data {
            Storage::Owned(slice) => slice,
            Storage::Pooled(buffer) => buffer,
        }
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
