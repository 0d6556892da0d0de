//! Element types of activations and weights on the GPU. 16-bit types are stored as raw
//! bits; kernels convert to f32 to compute.

use half::{bf16, f16};

/// A floating-point element type the kernels are instantiated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Suffix of the kernel instantiation (`rms_norm_bf16`).
    pub fn kernel_suffix(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// Rounds an f32 to this dtype and back (what storing it on the GPU does to it).
    pub fn round(self, x: f32) -> f32 {
        match self {
            DType::F32 => x,
            DType::F16 => f16::from_f32(x).to_f32(),
            DType::BF16 => bf16::from_f32(x).to_f32(),
        }
    }

    /// Encodes f32 values as this dtype's little-endian bytes (round to nearest even).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * self.size());
        for &v in values {
            match self {
                DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
                DType::F16 => out.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes()),
                DType::BF16 => out.extend_from_slice(&bf16::from_f32(v).to_bits().to_le_bytes()),
            }
        }
        out
    }

    /// Decodes this dtype's little-endian bytes to f32. A trailing partial element is ignored.
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            DType::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kernel_suffix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip_rounds_to_dtype() {
        let values = [1.0f32, -2.5, 3.3, 65504.0, 1e-3];
        for dtype in DType::ALL {
            let bytes = dtype.encode(&values);
            assert_eq!(bytes.len(), values.len() * dtype.size());
            let back = dtype.decode(&bytes);
            let expected: Vec<f32> = values.iter().map(|&v| dtype.round(v)).collect();
            assert_eq!(back, expected, "{dtype}");
        }
    }

    #[test]
    fn bf16_keeps_eight_mantissa_bits() {
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties to even gives 1.0.
        assert_eq!(DType::BF16.round(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(DType::BF16.round(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(DType::F16.round(1.0 + 1.0 / 4096.0), 1.0);
    }
}
