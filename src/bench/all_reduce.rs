//! `kiln bench all-reduce`: latency of the tensor-parallel all-reduce for message sizes
//! from kilobytes to tens of megabytes, on the ranks and path a TP run would use (GPU ranks:
//! kiln's device kernel or host staging; CPU ranks: host staging).

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::CudaBackend;
use crate::backend::{Backend, DType};
use crate::launch::{self, Device, EngineArgs};
use crate::parallel::host_group::HostStaged;
use crate::parallel::Communicator;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct AllReduceArgs {
    /// `--device`, `--gpu`, `--tensor-parallel-size` (default 2 here) and `--all-reduce`
    /// place the ranks as a TP run would.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Message sizes in bytes (suffixes K and M, powers of 2).
    #[arg(long, default_value = "4K,64K,1M,8M,64M", value_delimiter = ',')]
    pub sizes: Vec<String>,
    /// Timed all-reduces per size (after 3 untimed ones).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Element type of the messages.
    #[arg(long, default_value = "bfloat16")]
    pub element: String,
    #[arg(long)]
    pub result_json: Option<PathBuf>,
}

#[derive(Serialize, Debug, Clone)]
pub struct AllReduceResult {
    pub bytes: usize,
    pub median_us: f64,
    pub min_us: f64,
    /// Algorithm bandwidth: message bytes / median time.
    pub algbw_gbs: f64,
}

/// Parses `4K`, `1M`, `512`.
pub fn parse_size(text: &str) -> Result<usize> {
    let t = text.trim();
    let (digits, unit) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1usize << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: usize = digits
        .parse()
        .with_context(|| format!("message size '{text}' (e.g. 4K, 1M)"))?;
    Ok(n * unit)
}

pub fn run(mut args: AllReduceArgs) -> Result<()> {
    if args.engine.tensor_parallel_size.is_none() {
        args.engine.tensor_parallel_size = Some(2);
    }
    let dtype: DType = args.element.parse().map_err(anyhow::Error::msg)?;
    let sizes = args
        .sizes
        .iter()
        .map(|s| parse_size(s))
        .collect::<Result<Vec<_>>>()?;
    let ranks = launch::place_ranks(&args.engine)?;
    let (path, results) = match ranks[0] {
        Device::Cpu => {
            let comms = HostStaged::group(ranks.len())
                .into_iter()
                .map(|c| Box::new(c) as Box<dyn Communicator<CpuBackend>>)
                .collect();
            let open = Arc::new(|_| Ok(CpuBackend::new()));
            ("host".to_string(), measure(open, comms, &sizes, dtype, args.iters)?)
        }
        Device::Cuda(_) => {
            let ordinals = launch::cuda_ordinals(&ranks);
            let (comms, path) = launch::gpu_communicators(&ordinals, args.engine.all_reduce)?;
            let open = Arc::new(move |rank: usize| CudaBackend::new(ordinals[rank]));
            (path, measure(open, comms, &sizes, dtype, args.iters)?)
        }
    };
    println!(
        "all-reduce over {} ranks on {ranks:?} ({path}), {dtype}",
        ranks.len()
    );
    println!("{:>12} {:>12} {:>12} {:>10}", "bytes", "median us", "min us", "GB/s");
    for r in &results {
        println!(
            "{:>12} {:>12.1} {:>12.1} {:>10.2}",
            r.bytes, r.median_us, r.min_us, r.algbw_gbs
        );
    }
    if let Some(path_json) = &args.result_json {
        super::write_json(
            path_json,
            &serde_json::json!({
                "ranks": ranks.len(),
                "devices": format!("{ranks:?}"),
                "path": path,
                "dtype": dtype,
                "results": results,
            }),
        )?;
    }
    Ok(())
}

/// Times the all-reduce of every size on one thread per rank; rank 0's clock is reported
/// (every all-reduce ends with all ranks having the sum, so ranks finish together).
fn measure<B: Backend + 'static>(
    open: Arc<dyn Fn(usize) -> Result<B> + Send + Sync>,
    comms: Vec<Box<dyn Communicator<B>>>,
    sizes: &[usize],
    dtype: DType,
    iters: usize,
) -> Result<Vec<AllReduceResult>> {
    let per_rank: Vec<Result<Vec<Vec<f64>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(rank, comm)| {
                let open = open.clone();
                s.spawn(move || -> Result<Vec<Vec<f64>>> {
                    let be = open(rank)?;
                    let mut times = Vec::new();
                    for &bytes in sizes {
                        let n = (bytes / dtype.size_in_bytes()).max(1);
                        // Zeros stay zeros however often they are summed.
                        let host =
                            candle_core::Tensor::zeros(n, dtype.to_candle(), &candle_core::Device::Cpu)?;
                        let mut x = be.upload(host)?;
                        let mut samples = Vec::with_capacity(iters);
                        for i in 0..iters + 3 {
                            let start = Instant::now();
                            x = comm.all_reduce_sum(&be, x)?;
                            if i >= 3 {
                                samples.push(start.elapsed().as_secs_f64() * 1e6);
                            }
                        }
                        times.push(samples);
                    }
                    Ok(times)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a rank panicked"))))
            .collect()
    });
    let mut ranks = per_rank.into_iter();
    let rank0 = ranks.next().context("no ranks")??;
    for r in ranks {
        r?;
    }
    Ok(sizes
        .iter()
        .zip(rank0)
        .map(|(&bytes, mut samples)| {
            samples.sort_by(f64::total_cmp);
            let median = samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN);
            AllReduceResult {
                bytes,
                median_us: median,
                min_us: samples.first().copied().unwrap_or(f64::NAN),
                algbw_gbs: bytes as f64 / (median * 1e-6) / 1e9,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("4X").is_err());
    }

    #[test]
    fn cpu_ranks_measure_every_size() {
        let comms = HostStaged::group(3)
            .into_iter()
            .map(|c| Box::new(c) as Box<dyn Communicator<CpuBackend>>)
            .collect();
        let open = Arc::new(|_| Ok(CpuBackend::new()));
        let r = measure(open, comms, &[4096, 100_000], DType::BF16, 2).unwrap();
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|x| x.median_us > 0.0 && x.algbw_gbs > 0.0));
    }
}
