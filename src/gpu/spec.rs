//! GPU requests: what a user asks for with `--gpu` / `KILN_GPU`.
//!
//! Grammar, case-insensitive:
//!
//! ```text
//! request     = alternative { "," alternative }  |  JSON array of alternative strings
//! alternative = TYPE [ "!" ] [ ":" COUNT ]  |  "any" [ ":" COUNT ]
//! TYPE        = T4 | L4 | A10 | A100 | A100-40GB | A100-80GB | L40S | H100 | H200 | B200
//! ```
//!
//! Alternatives are tried in order; the first one the machine satisfies wins. COUNT is
//! 1..=8 (A10: 1..=4) and defaults to 1. `A100` without a size means either A100.
//!
//! Without `!` a request also accepts an upgrade, a GPU at least as capable in memory and
//! compute, along these chains (see [`upgrade`]):
//!
//! ```text
//! A100-40GB -> A100-80GB -> H100 -> H200 -> B200
//! T4 -> L4 -> L40S
//! A10 -> L40S
//! ```
//!
//! So `H100` is satisfied by H100, H200 or B200; `A100-40GB` by any A100, H100, H200 or
//! B200; `A100-80GB` not by an A100-40GB. With `!` only the named type counts (`A100!`:
//! either A100 size, nothing newer). The closest type is preferred: `H100:8` on a machine
//! with 8 H100 and 8 H200 uses the H100s.

use super::classify::GpuType;
use std::fmt;
use std::str::FromStr;

/// What one alternative names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestedGpu {
    /// Any whole GPU; all chosen GPUs still share one type.
    Any,
    /// An A100 of either memory size.
    A100,
    /// One type (never [`GpuType::Other`]).
    Type(GpuType),
}

/// One alternative of a request, e.g. `H100!:8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuAlternative {
    pub gpu: RequestedGpu,
    /// `!`: no upgrades.
    pub exact: bool,
    pub count: usize,
}

/// An ordered list of alternatives; the first one satisfied wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuSpec {
    pub alternatives: Vec<GpuAlternative>,
}

const GRAMMAR: &str = "TYPE[!][:COUNT], a comma-separated list of those, \
                       a JSON array of those, or any[:COUNT]";
const TYPES: &str = "T4, L4, A10, A100, A100-40GB, A100-80GB, L40S, H100, H200, B200, any";

/// Why a GPU request string is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuSpecError {
    #[error("empty GPU request; expected {GRAMMAR} (e.g. `H100:8` or `H100:8,A100-80GB:8`)")]
    Empty,
    #[error("unknown GPU type `{0}`; allowed types: {TYPES}")]
    UnknownType(String),
    #[error("bad GPU count `{count}` in `{alternative}`; expected a whole number from 1 to {max}")]
    BadCount {
        alternative: String,
        count: String,
        max: usize,
    },
    #[error("{alternative} asks for {count} GPUs; {gpu} allows 1 to {max}")]
    CountOverLimit {
        alternative: String,
        count: usize,
        gpu: String,
        max: usize,
    },
    #[error("`{0}`: `any` accepts every type, so it takes no `!`; use `any` or `any:COUNT`")]
    ExactAny(String),
    #[error("GPU request `{text}` is not a JSON array of strings ({reason}); expected {GRAMMAR}")]
    BadJson { text: String, reason: String },
}

/// The next more capable type a request without `!` accepts, if any.
pub fn upgrade(t: GpuType) -> Option<GpuType> {
    match t {
        GpuType::A100_40GB => Some(GpuType::A100_80GB),
        GpuType::A100_80GB => Some(GpuType::H100),
        GpuType::H100 => Some(GpuType::H200),
        GpuType::H200 => Some(GpuType::B200),
        GpuType::T4 => Some(GpuType::L4),
        GpuType::L4 | GpuType::A10 => Some(GpuType::L40S),
        GpuType::L40S | GpuType::B200 | GpuType::Other => None,
    }
}

impl RequestedGpu {
    /// The most GPUs of this kind one request may ask for.
    pub fn max_count(self) -> usize {
        match self {
            RequestedGpu::Type(GpuType::A10) => 4,
            _ => 8,
        }
    }
}

impl GpuAlternative {
    /// The types that satisfy this alternative, closest first. Empty for `any`, which
    /// accepts every type.
    pub fn accepted_types(&self) -> Vec<GpuType> {
        let named = match self.gpu {
            RequestedGpu::Any => return Vec::new(),
            RequestedGpu::A100 => vec![GpuType::A100_40GB, GpuType::A100_80GB],
            RequestedGpu::Type(t) => vec![t],
        };
        if self.exact {
            return named;
        }
        let mut accepted = named.clone();
        let mut next = named.last().copied().and_then(upgrade);
        while let Some(t) = next {
            accepted.push(t);
            next = upgrade(t);
        }
        accepted
    }
}

impl FromStr for GpuAlternative {
    type Err = GpuSpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (head, count_text) = match text.split_once(':') {
            Some((head, count)) => (head.trim(), Some(count.trim())),
            None => (text, None),
        };
        let (name, exact) = match head.strip_suffix('!') {
            Some(name) => (name.trim(), true),
            None => (head, false),
        };
        let gpu = parse_requested_gpu(name)?;
        if exact && gpu == RequestedGpu::Any {
            return Err(GpuSpecError::ExactAny(text.to_string()));
        }
        let max = gpu.max_count();
        let count = match count_text {
            None => 1,
            Some(c) => parse_count(text, c, gpu, max)?,
        };
        Ok(GpuAlternative { gpu, exact, count })
    }
}

fn parse_requested_gpu(name: &str) -> Result<RequestedGpu, GpuSpecError> {
    if name.eq_ignore_ascii_case("any") {
        return Ok(RequestedGpu::Any);
    }
    if name.eq_ignore_ascii_case("A100") {
        return Ok(RequestedGpu::A100);
    }
    match name.parse::<GpuType>() {
        Ok(GpuType::Other) | Err(_) => Err(GpuSpecError::UnknownType(name.to_string())),
        Ok(t) => Ok(RequestedGpu::Type(t)),
    }
}

fn parse_count(
    alternative: &str,
    text: &str,
    gpu: RequestedGpu,
    max: usize,
) -> Result<usize, GpuSpecError> {
    let bad = || GpuSpecError::BadCount {
        alternative: alternative.to_string(),
        count: text.to_string(),
        max,
    };
    let count: usize = text.parse().map_err(|_| bad())?;
    if count == 0 {
        return Err(bad());
    }
    if count > max {
        return Err(GpuSpecError::CountOverLimit {
            alternative: alternative.to_string(),
            count,
            gpu: gpu.to_string(),
            max,
        });
    }
    Ok(count)
}

impl FromStr for GpuSpec {
    type Err = GpuSpecError;

    /// Parses `H100:8,A100-80GB:8` or `["H100:8","A100-80GB:8"]`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let items: Vec<String> = if text.starts_with('[') {
            serde_json::from_str(text).map_err(|e| GpuSpecError::BadJson {
                text: text.to_string(),
                reason: e.to_string(),
            })?
        } else {
            text.split(',').map(str::to_string).collect()
        };
        if items.iter().all(|item| item.trim().is_empty()) {
            return Err(GpuSpecError::Empty);
        }
        let alternatives = items
            .iter()
            .map(|item| match item.trim() {
                "" => Err(GpuSpecError::Empty),
                item => item.parse(),
            })
            .collect::<Result<_, _>>()?;
        Ok(GpuSpec { alternatives })
    }
}

impl fmt::Display for RequestedGpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestedGpu::Any => f.write_str("any"),
            RequestedGpu::A100 => f.write_str("A100"),
            RequestedGpu::Type(t) => write!(f, "{t}"),
        }
    }
}

impl fmt::Display for GpuAlternative {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.gpu)?;
        if self.exact {
            f.write_str("!")?;
        }
        if self.count != 1 {
            write!(f, ":{}", self.count)?;
        }
        Ok(())
    }
}

impl fmt::Display for GpuSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.alternatives.iter().map(|a| a.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alt(text: &str) -> GpuAlternative {
        text.parse().unwrap()
    }

    #[test]
    fn parses_type_exact_and_count() {
        let a = alt("h100!:8");
        assert_eq!(
            a,
            GpuAlternative {
                gpu: RequestedGpu::Type(GpuType::H100),
                exact: true,
                count: 8
            }
        );
        assert_eq!(alt("A100").gpu, RequestedGpu::A100);
        assert_eq!(alt("a100-80gb").gpu, RequestedGpu::Type(GpuType::A100_80GB));
        assert_eq!(
            alt("any:4"),
            GpuAlternative {
                gpu: RequestedGpu::Any,
                exact: false,
                count: 4
            }
        );
        assert_eq!(alt(" L4 ").count, 1);
    }

    #[test]
    fn list_and_json_array_give_the_same_spec() {
        let list: GpuSpec = "H100:8, A100-80GB:8".parse().unwrap();
        let json: GpuSpec = r#"["H100:8", "A100-80GB:8"]"#.parse().unwrap();
        assert_eq!(list, json);
        assert_eq!(list.to_string(), "H100:8,A100-80GB:8");
        assert_eq!(list.to_string().parse::<GpuSpec>().unwrap(), list);
    }

    #[test]
    fn errors_say_what_is_allowed() {
        let unknown = "V100".parse::<GpuSpec>().unwrap_err().to_string();
        assert!(
            unknown.contains("V100") && unknown.contains("H100"),
            "{unknown}"
        );
        let other = "other".parse::<GpuSpec>().unwrap_err();
        assert!(matches!(other, GpuSpecError::UnknownType(_)));
        let over = "A10:8".parse::<GpuSpec>().unwrap_err().to_string();
        assert!(over.contains("1 to 4"), "{over}");
        let over8 = "H100:9".parse::<GpuSpec>().unwrap_err().to_string();
        assert!(over8.contains("1 to 8"), "{over8}");
        for bad in ["H100:0", "H100:x", "H100:", "H100:-1"] {
            let e = bad.parse::<GpuSpec>().unwrap_err();
            assert!(matches!(e, GpuSpecError::BadCount { .. }), "{bad}: {e}");
        }
        assert_eq!("".parse::<GpuSpec>(), Err(GpuSpecError::Empty));
        assert_eq!("H100,,L4".parse::<GpuSpec>(), Err(GpuSpecError::Empty));
        assert!(matches!(
            "any!".parse::<GpuSpec>(),
            Err(GpuSpecError::ExactAny(_))
        ));
        assert!(matches!(
            "[\"H100\"".parse::<GpuSpec>(),
            Err(GpuSpecError::BadJson { .. })
        ));
        assert!(matches!("[]".parse::<GpuSpec>(), Err(GpuSpecError::Empty)));
    }

    #[test]
    fn upgrades_follow_the_documented_chains() {
        use GpuType::*;
        assert_eq!(alt("H100").accepted_types(), vec![H100, H200, B200]);
        assert_eq!(alt("H100!").accepted_types(), vec![H100]);
        assert_eq!(
            alt("A100").accepted_types(),
            vec![A100_40GB, A100_80GB, H100, H200, B200]
        );
        assert_eq!(alt("A100!").accepted_types(), vec![A100_40GB, A100_80GB]);
        assert_eq!(
            alt("A100-80GB").accepted_types(),
            vec![A100_80GB, H100, H200, B200]
        );
        assert_eq!(alt("A100-40GB!").accepted_types(), vec![A100_40GB]);
        assert_eq!(alt("T4").accepted_types(), vec![T4, L4, L40S]);
        assert_eq!(alt("A10").accepted_types(), vec![A10, L40S]);
        assert_eq!(alt("B200").accepted_types(), vec![B200]);
    }
}
