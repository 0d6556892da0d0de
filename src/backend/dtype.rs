//! Element types of weights and activations, shared by every backend. On the GPU, 16-bit
//! types are stored as raw bits and kernels convert to f32 to compute.

use half::{bf16, f16};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    pub fn to_candle(self) -> candle_core::DType {
        match self {
            DType::F32 => candle_core::DType::F32,
            DType::F16 => candle_core::DType::F16,
            DType::BF16 => candle_core::DType::BF16,
        }
    }

    /// The dtype of a candle tensor, where kiln computes in it.
    pub fn from_candle(dtype: candle_core::DType) -> anyhow::Result<DType> {
        match dtype {
            candle_core::DType::F32 => Ok(DType::F32),
            candle_core::DType::F16 => Ok(DType::F16),
            candle_core::DType::BF16 => Ok(DType::BF16),
            other => anyhow::bail!("no kiln dtype for {other:?}"),
        }
    }

    /// Parses HF's `torch_dtype` strings ("bfloat16", "float16", "float32").
    pub fn from_hf(name: &str) -> Option<DType> {
        match name {
            "float32" | "float" => Some(DType::F32),
            "float16" | "half" => Some(DType::F16),
            "bfloat16" => Some(DType::BF16),
            _ => None,
        }
    }
}

impl DType {
    /// Suffix of a kernel instantiation (`rms_norm_bf16`), and the short name in reports.
    pub fn kernel_suffix(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// Rounds an f32 to this dtype and back (what storing it in this dtype does to it).
    pub fn round(self, x: f32) -> f32 {
        match self {
            DType::F32 => x,
            DType::F16 => f16::from_f32(x).to_f32(),
            DType::BF16 => bf16::from_f32(x).to_f32(),
        }
    }

    /// Encodes f32 values as this dtype's little-endian bytes (round to nearest even).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * self.size_in_bytes());
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

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        })
    }
}

impl FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(DType::F32),
            "f16" | "fp16" => Ok(DType::F16),
            "bf16" => Ok(DType::BF16),
            other => DType::from_hf(other).ok_or_else(|| {
                format!("unknown dtype '{s}': expected float32, float16 or bfloat16")
            }),
        }
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
            assert_eq!(bytes.len(), values.len() * dtype.size_in_bytes());
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

    #[test]
    fn names_parse_back() {
        for dtype in DType::ALL {
            assert_eq!(dtype.to_string().parse::<DType>(), Ok(dtype));
            assert_eq!(dtype.kernel_suffix().parse::<DType>(), Ok(dtype));
        }
    }
}
