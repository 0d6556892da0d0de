//! `kiln check-reference`: runs a reference fixture (`tests/fixtures/<arch>`, made with HF
//! transformers by scripts/make_fixtures.py) on a device and compares the last prompt token's
//! logits and the 32-token greedy continuations, one prompt at a time and all batched, with
//! the fixture's `reference.json` (and its embeddings with `embeddings.json`, where it has
//! one; and, in float32, PEFT's outputs for `--lora-modules` adapters of the fixture, see
//! `reference_adapters.rs`). Exit status 1 on any mismatch: this is how a GPU run is
//! proved to give the CPU reference's tokens.

use super::reference_adapters::{adapter_references, AdapterReference};
use crate::backend::cuda::{device_count, CudaBackend};
use crate::backend::{Backend, BatchLayout, DType};
use crate::engine::{EngineHandle, LlmEngine, SamplingParams};
use crate::launch::{
    build_engine, device, engine_from, engine_on_cuda, load_model, load_model_on, Device,
    EngineArgs, LoadedModel,
};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(clap::Args, Debug)]
pub struct CheckReferenceArgs {
    /// `--model` is the fixture directory (it must hold reference.json); `--dtype` float32
    /// or bfloat16 picks which reference is compared.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Print the result as JSON (with `--also`, an array of every fixture's report).
    #[arg(long)]
    pub json: bool,
    /// More fixture directories to check after `--model`, in the same process with the same
    /// flags (comma-separated): a device run then pays for starting once, not per fixture.
    /// A fixture that fails to load is reported as failed and the others still run.
    #[arg(long, value_delimiter = ',')]
    pub also: Vec<String>,
}

/// float32 logits must match transformers this closely.
const F32_LOGIT_TOLERANCE: f32 = 1e-3;
/// bf16 logits of these fixtures reach 16-32 in magnitude, where one bf16 ulp is 0.125, and
/// the rounding points differ between implementations (fused norms, GEMM epilogues): 4 ulps.
const BF16_LOGIT_TOLERANCE: f32 = 0.5;
/// A bf16 greedy step whose reference top-2 margin is below this may go either way.
const BF16_FIRM_MARGIN: f32 = 0.25;

#[derive(Deserialize)]
struct Reference {
    prompts: Vec<PromptReference>,
}

#[derive(Deserialize)]
struct PromptReference {
    prompt_ids: Vec<u32>,
    last_logits: Vec<f32>,
    greedy_ids: Vec<u32>,
    bf16_last_logits: Vec<f32>,
    bf16_greedy_ids: Vec<u32>,
    bf16_greedy_margins: Vec<f32>,
}

/// What one prompt must reproduce in the run's dtype.
struct Expected<'a> {
    prompt_ids: &'a [u32],
    logits: &'a [f32],
    /// The float32 reference logits (the same as `logits` in f32).
    f32_logits: &'a [f32],
    tokens: &'a [u32],
    /// Leading tokens that must match (all in f32; up to the first near-tie in bf16).
    firm: usize,
}

/// One line of the report.
#[derive(Serialize, Debug)]
pub struct CheckRow {
    pub check: String,
    pub prompt: usize,
    /// Max abs logit difference, or tokens matched.
    pub value: f64,
    /// Tolerance, or tokens that must match.
    pub limit: f64,
    pub ok: bool,
    pub note: String,
}

#[derive(Serialize, Debug)]
pub struct CheckReport {
    pub model: String,
    pub device: String,
    pub dtype: DType,
    pub ok: bool,
    pub rows: Vec<CheckRow>,
}

impl CheckReport {
    fn new(model: &str, device: String, dtype: DType, rows: Vec<CheckRow>) -> CheckReport {
        CheckReport {
            model: model.to_string(),
            device,
            dtype,
            ok: rows.iter().all(|r| r.ok),
            rows,
        }
    }
}

/// Runs the check; `Ok(false)` when something does not match.
pub fn run(args: CheckReferenceArgs) -> Result<bool> {
    if args.also.is_empty() {
        let report = check(&args.engine)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_table(&report);
        }
        return Ok(report.ok);
    }
    let reports = check_all(&args.engine, &args.also);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for report in &reports {
            print_table(report);
            println!();
        }
        let failed: Vec<&str> = reports
            .iter()
            .filter(|r| !r.ok)
            .map(|r| r.model.as_str())
            .collect();
        println!(
            "{} of {} fixtures pass{}",
            reports.len() - failed.len(),
            reports.len(),
            if failed.is_empty() {
                String::new()
            } else {
                format!("; failed: {}", failed.join(", "))
            }
        );
    }
    Ok(reports.iter().all(|r| r.ok))
}

/// Checks `--model` and then each of `also` with the same flags. A fixture whose check
/// cannot run (it does not load, its reference is missing) gets a failed report saying why.
pub fn check_all(args: &EngineArgs, also: &[String]) -> Vec<CheckReport> {
    let first = args.model.clone();
    std::iter::once(first)
        .chain(also.iter().cloned().map(Some))
        .map(|model| {
            let name = model.clone().unwrap_or_default();
            let mut one = args.clone();
            one.model = model;
            check(&one).unwrap_or_else(|e| {
                let row = CheckRow {
                    check: "run".into(),
                    prompt: 0,
                    value: 0.0,
                    limit: 0.0,
                    ok: false,
                    note: format!("{e:#}"),
                };
                let dtype = one.dtype.parse().unwrap_or(DType::F32);
                CheckReport::new(&name, format!("{:?}", one.device), dtype, vec![row])
            })
        })
        .collect()
}

/// Loads the fixture on the device `--device` picks and compares it with its reference.
pub fn check(args: &EngineArgs) -> Result<CheckReport> {
    let dir = args
        .model
        .as_deref()
        .context("--model must name a fixture directory")?;
    let path = std::path::Path::new(dir).join("reference.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (is --model a fixture?)", path.display()))?;
    let reference: Reference =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if args.tensor_parallel_size.is_some_and(|tp| tp > 1) {
        return compare_sharded(args, &reference, dir);
    }
    match device::resolve(args.device, device_count)? {
        Device::Cpu => compare(load_model(args)?, args, &reference, dir, engine_from),
        Device::Cuda(ordinal) => {
            let backend = CudaBackend::new(ordinal)
                .with_context(|| format!("opening CUDA device {ordinal}"))?;
            let loaded = load_model_on(args, backend, Device::Cuda(ordinal))?;
            compare(loaded, args, &reference, dir, engine_on_cuda)
        }
    }
}

fn expected(reference: &Reference, dtype: DType) -> Result<Vec<Expected<'_>>> {
    reference
        .prompts
        .iter()
        .map(|p| match dtype {
            DType::F32 => Ok(Expected {
                prompt_ids: &p.prompt_ids,
                logits: &p.last_logits,
                f32_logits: &p.last_logits,
                tokens: &p.greedy_ids,
                firm: p.greedy_ids.len(),
            }),
            DType::BF16 => Ok(Expected {
                prompt_ids: &p.prompt_ids,
                logits: &p.bf16_last_logits,
                f32_logits: &p.last_logits,
                tokens: &p.bf16_greedy_ids,
                firm: p
                    .bf16_greedy_margins
                    .iter()
                    .take_while(|&&m| m >= BF16_FIRM_MARGIN)
                    .count(),
            }),
            DType::F16 => anyhow::bail!(
                "the fixtures have no float16 reference: use --dtype float32 or bfloat16"
            ),
        })
        .collect()
}

fn compare<B: Backend + 'static>(
    loaded: LoadedModel<B>,
    args: &EngineArgs,
    reference: &Reference,
    dir: &str,
    into_engine: impl FnOnce(LoadedModel<B>, &EngineArgs) -> Result<LlmEngine>,
) -> Result<CheckReport>
where
    B::Tensor: 'static,
{
    let dtype = loaded.model.dtype;
    let device = loaded.backend.name();
    let expected = expected(reference, dtype)?;
    let tolerance = match dtype {
        DType::F32 => F32_LOGIT_TOLERANCE,
        _ => BF16_LOGIT_TOLERANCE,
    };
    let mut rows = Vec::new();
    for (i, e) in expected.iter().enumerate() {
        let logits = last_logits(&loaded, e.prompt_ids)
            .with_context(|| format!("prompt {i}: prefill on {device}"))?;
        let diff = max_abs_diff(&logits, e.logits)?;
        // Where kiln rounds at other points than transformers (Gemma stores its norms'
        // `1 + w` in the dtype), the two bf16 results stray from the f32 logits in their own
        // directions; then kiln's must be about as close to them as transformers' are.
        let ours_error = max_abs_diff(&logits, e.f32_logits)?;
        let their_error = max_abs_diff(e.logits, e.f32_logits)?;
        let as_close = ours_error <= tolerance.max(1.5 * their_error);
        let ok = diff <= tolerance || (dtype != DType::F32 && as_close);
        rows.push(CheckRow {
            check: "last_logits".into(),
            prompt: i,
            value: diff as f64,
            limit: tolerance as f64,
            ok,
            note: if diff <= tolerance || dtype == DType::F32 {
                format!("{} prompt tokens", e.prompt_ids.len())
            } else {
                format!(
                    "{} prompt tokens; from f32: {ours_error:.3}, transformers' bf16 \
                     {their_error:.3}",
                    e.prompt_ids.len()
                )
            },
        });
    }
    let adapters = checked_adapters(args, dir, dtype)?;
    for a in &adapters {
        for (i, p) in a.prompts.iter().enumerate() {
            let logits = last_logits_with_adapter(&loaded, &p.prompt_ids, Some(a.index))
                .with_context(|| format!("adapter {} prompt {i}: prefill on {device}", a.name))?;
            let diff = max_abs_diff(&logits, &p.last_logits)?;
            rows.push(CheckRow {
                check: format!("lora:{}:last_logits", a.name),
                prompt: i,
                value: diff as f64,
                limit: F32_LOGIT_TOLERANCE as f64,
                ok: diff <= F32_LOGIT_TOLERANCE,
                note: "against PEFT".into(),
            });
        }
    }
    let handle = EngineHandle::spawn(into_engine(loaded, args)?, 0);
    let outcome = engine_rows(&handle, &expected, dir, dtype).and_then(|mut rows| {
        rows.extend(adapter_greedy_rows(&handle, &adapters)?);
        Ok(rows)
    });
    handle.shutdown();
    rows.extend(outcome?);
    Ok(CheckReport::new(dir, device, dtype, rows))
}

/// The adapters with PEFT references for this fixture; their references are float32, so
/// other dtypes check none.
fn checked_adapters(args: &EngineArgs, dir: &str, dtype: DType) -> Result<Vec<AdapterReference>> {
    if dtype != DType::F32 {
        return Ok(Vec::new());
    }
    adapter_references(args, dir)
}

/// Each adapter's greedy continuations through the engine, all its prompts batched.
fn adapter_greedy_rows(
    handle: &EngineHandle,
    adapters: &[AdapterReference],
) -> Result<Vec<CheckRow>> {
    let mut rows = Vec::new();
    for a in adapters {
        let expected: Vec<Expected<'_>> = a
            .prompts
            .iter()
            .map(|p| Expected {
                prompt_ids: &p.prompt_ids,
                logits: &p.last_logits,
                f32_logits: &p.last_logits,
                tokens: &p.greedy_ids,
                firm: p.greedy_ids.len(),
            })
            .collect();
        let streams = expected
            .iter()
            .map(|e| {
                let params = SamplingParams {
                    max_tokens: Some(e.tokens.len()),
                    ignore_eos: true,
                    lora_adapter: Some(a.index),
                    ..SamplingParams::greedy()
                };
                handle.submit(e.prompt_ids.to_vec(), params)
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (i, (stream, e)) in streams.into_iter().zip(&expected).enumerate() {
            let out = stream.collect_blocking().map_err(anyhow::Error::msg)?;
            let check = format!("lora:{}:greedy_batched", a.name);
            rows.push(token_row(&check, i, e, &out.token_ids));
        }
    }
    Ok(rows)
}

/// A model sharded over `--tensor-parallel-size` ranks: its greedy continuations through
/// the engine must be the reference's (the logits check needs one unsharded model).
fn compare_sharded(args: &EngineArgs, reference: &Reference, dir: &str) -> Result<CheckReport> {
    let (engine, _) = build_engine(args)?;
    let device = engine.describe();
    let dtype = match args.dtype.as_str() {
        "auto" | "float32" => DType::F32,
        other => other.parse().map_err(anyhow::Error::msg)?,
    };
    let expected = expected(reference, dtype)?;
    let adapters = checked_adapters(args, dir, dtype)?;
    let handle = EngineHandle::spawn(engine, 0);
    let outcome = engine_rows(&handle, &expected, dir, dtype).and_then(|mut rows| {
        rows.extend(adapter_greedy_rows(&handle, &adapters)?);
        Ok(rows)
    });
    handle.shutdown();
    let rows = outcome?;
    Ok(CheckReport::new(dir, device, dtype, rows))
}

/// The checks through the engine: greedy continuations, then embeddings where the fixture
/// has references for them.
fn engine_rows(
    handle: &EngineHandle,
    expected: &[Expected<'_>],
    dir: &str,
    dtype: DType,
) -> Result<Vec<CheckRow>> {
    let mut rows = greedy_rows(handle, expected)?;
    rows.extend(embedding_rows(handle, dir, dtype)?);
    Ok(rows)
}

/// Greedy continuations through the engine, one prompt at a time, then all at once.
fn greedy_rows(handle: &EngineHandle, expected: &[Expected<'_>]) -> Result<Vec<CheckRow>> {
    let params = |e: &Expected<'_>| SamplingParams {
        max_tokens: Some(e.tokens.len()),
        ignore_eos: true,
        ..SamplingParams::greedy()
    };
    let mut rows = Vec::new();
    for (i, e) in expected.iter().enumerate() {
        let out = handle
            .submit(e.prompt_ids.to_vec(), params(e))?
            .collect_blocking()
            .map_err(anyhow::Error::msg)?;
        rows.push(token_row("greedy_alone", i, e, &out.token_ids));
    }
    let streams = expected
        .iter()
        .map(|e| handle.submit(e.prompt_ids.to_vec(), params(e)))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, (stream, e)) in streams.into_iter().zip(expected).enumerate() {
        let out = stream.collect_blocking().map_err(anyhow::Error::msg)?;
        rows.push(token_row("greedy_batched", i, e, &out.token_ids));
    }
    Ok(rows)
}

/// A fixture's embedding references (`embeddings.json`: transformers' last-token hidden
/// states, L2-normalised, from float32): each prompt's vector through the engine, all at
/// once. float32 must match within 1e-4; a 16-bit run, whose rounding moves every value,
/// must point the same way (cosine similarity at least 0.99). None without the file.
fn embedding_rows(handle: &EngineHandle, dir: &str, dtype: DType) -> Result<Vec<CheckRow>> {
    #[derive(Deserialize)]
    struct Embeddings {
        prompts: Vec<EmbeddingCase>,
    }
    #[derive(Deserialize)]
    struct EmbeddingCase {
        prompt_ids: Vec<u32>,
        embedding: Vec<f32>,
    }
    let path = std::path::Path::new(dir).join("embeddings.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Vec::new());
    };
    let reference: Embeddings =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let params = SamplingParams {
        pooling: Some(crate::engine::params::Pooling {
            dimensions: None,
            normalize: true,
        }),
        ..SamplingParams::default()
    };
    let streams = reference
        .prompts
        .iter()
        .map(|c| handle.submit(c.prompt_ids.clone(), params.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut rows = Vec::new();
    for (i, (stream, case)) in streams.into_iter().zip(&reference.prompts).enumerate() {
        let out = stream.collect_blocking().map_err(anyhow::Error::msg)?;
        let got = out
            .embedding
            .context("an embedding request returned no vector")?;
        let (value, limit, ok) = if dtype == DType::F32 {
            let diff = max_abs_diff(&got, &case.embedding)? as f64;
            (diff, 1e-4, diff <= 1e-4)
        } else {
            anyhow::ensure!(got.len() == case.embedding.len(), "embedding width differs");
            let cos: f64 = got
                .iter()
                .zip(&case.embedding)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            (cos, 0.99, cos >= 0.99)
        };
        rows.push(CheckRow {
            check: "embedding".into(),
            prompt: i,
            value,
            limit,
            ok,
            note: format!("{} values", got.len()),
        });
    }
    Ok(rows)
}

fn token_row(check: &str, prompt: usize, e: &Expected<'_>, got: &[u32]) -> CheckRow {
    let matched = got.iter().zip(e.tokens).take_while(|(a, b)| a == b).count();
    let note = match got.iter().zip(e.tokens).position(|(a, b)| a != b) {
        None if got.len() == e.tokens.len() => String::new(),
        None => format!(
            "{} tokens generated, {} expected",
            got.len(),
            e.tokens.len()
        ),
        Some(step) => format!(
            "step {step}: got {}, expected {}",
            got[step], e.tokens[step]
        ),
    };
    CheckRow {
        check: check.into(),
        prompt,
        value: matched as f64,
        limit: e.firm as f64,
        ok: matched >= e.firm,
        note,
    }
}

/// Logits of the last prompt token from one prefill through a paged cache of 4-token blocks
/// laid out in reverse, so the block table is really used.
pub fn last_logits<B: Backend>(m: &LoadedModel<B>, ids: &[u32]) -> Result<Vec<f32>> {
    last_logits_with_adapter(m, ids, None)
}

/// [`last_logits`] with LoRA adapter `adapter` (an index into the model's adapters).
pub fn last_logits_with_adapter<B: Backend>(
    m: &LoadedModel<B>,
    ids: &[u32],
    adapter: Option<usize>,
) -> Result<Vec<f32>> {
    anyhow::ensure!(!ids.is_empty(), "empty prompt");
    let block_size = 4;
    let blocks = ids.len().div_ceil(block_size);
    // One sequence: one recurrent-state slot.
    let spec = m.model.kv_cache_spec(blocks, block_size, 1);
    let mut cache = m.backend.new_kv_cache(&spec)?;
    let table: Vec<u32> = (0..blocks as u32).rev().collect();
    let layout = BatchLayout {
        positions: (0..ids.len() as u32).collect(),
        slots: (0..ids.len())
            .map(|p| (table[p / block_size] as usize * block_size + p % block_size) as i64)
            .collect(),
        query_start: vec![0, ids.len()],
        context_lens: vec![ids.len()],
        block_tables: vec![table],
        block_size,
        logits_rows: vec![ids.len() - 1],
        adapters: adapter.map(|a| vec![a as u32 + 1]).unwrap_or_default(),
        state_slots: Vec::new(),
    };
    m.model.forward(
        &m.backend,
        ids,
        &layout,
        &mut cache,
        &crate::parallel::SingleRank,
    )
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> Result<f32> {
    anyhow::ensure!(
        a.len() == b.len(),
        "{} logits, the reference has {}",
        a.len(),
        b.len()
    );
    // NaN must fail the check, so it is not folded away by f32::max.
    Ok(a.iter().zip(b).fold(0.0f32, |m, (x, y)| {
        let d = (x - y).abs();
        if d.is_nan() || m.is_nan() {
            f32::NAN
        } else {
            m.max(d)
        }
    }))
}

fn print_table(report: &CheckReport) {
    println!(
        "{} on {} ({}): {}",
        report.model,
        report.device,
        report.dtype,
        if report.ok { "PASS" } else { "FAIL" }
    );
    println!(
        "{:<16} {:>6} {:>12} {:>10} {:>5}  note",
        "check", "prompt", "value", "limit", "ok"
    );
    for r in &report.rows {
        println!(
            "{:<16} {:>6} {:>12.6} {:>10} {:>5}  {}",
            r.check,
            r.prompt,
            r.value,
            r.limit as f32,
            if r.ok { "yes" } else { "NO" },
            r.note
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_logits_fail_the_comparison() {
        assert!(max_abs_diff(&[1.0, f32::NAN], &[1.0, 2.0])
            .unwrap()
            .is_nan());
        assert_eq!(max_abs_diff(&[1.0, 2.5], &[1.5, 2.0]).unwrap(), 0.5);
        assert!(max_abs_diff(&[1.0], &[1.0, 2.0]).is_err());
    }

    #[test]
    fn token_rows_count_the_matching_prefix_against_the_firm_part() {
        let e = Expected {
            prompt_ids: &[1],
            logits: &[],
            f32_logits: &[],
            tokens: &[5, 6, 7, 8],
            firm: 2,
        };
        let row = token_row("t", 0, &e, &[5, 6, 9, 9]);
        assert!(row.ok, "{row:?}");
        assert_eq!(row.value, 2.0);
        assert!(row.note.contains("step 2"), "{}", row.note);
        assert!(!token_row("t", 0, &e, &[5, 9, 7, 8]).ok);
        let strict = Expected { firm: 4, ..e };
        assert!(!token_row("t", 0, &strict, &[5, 6, 7]).ok);
        assert!(token_row("t", 0, &strict, &[5, 6, 7, 8]).ok);
    }
}
