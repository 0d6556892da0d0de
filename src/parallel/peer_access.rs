//! Which GPUs of a tensor-parallel group can read each other's memory, and which
//! all-reduce that allows: NCCL when it is installed and every rank has its own GPU; kiln's
//! device all-reduce when every rank reaches every other rank's buffers (same GPU, or
//! peer-to-peer access between the GPUs); otherwise the sums go through host memory.

use anyhow::{Context, Result};
use cudarc::driver::{sys, CudaContext};
use std::sync::Arc;

/// `can[i][j]`: GPU `gpus[i]` can read GPU `gpus[j]`'s memory directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerMatrix {
    pub gpus: Vec<usize>,
    pub can: Vec<Vec<bool>>,
}

impl PeerMatrix {
    /// Asks the driver about every ordered pair of distinct GPUs of `gpus`.
    pub fn probe(gpus: &[usize]) -> Result<PeerMatrix> {
        let contexts = contexts(gpus)?;
        let mut can = vec![vec![true; gpus.len()]; gpus.len()];
        for (i, a) in contexts.iter().enumerate() {
            for (j, b) in contexts.iter().enumerate() {
                if i == j {
                    continue;
                }
                let mut flag = 0;
                // SAFETY: both devices come from live contexts; `flag` outlives the call.
                let status =
                    unsafe { sys::cuDeviceCanAccessPeer(&mut flag, a.cu_device(), b.cu_device()) };
                status.result().with_context(|| {
                    format!("asking whether GPU {} can access GPU {}", gpus[i], gpus[j])
                })?;
                can[i][j] = flag != 0;
            }
        }
        Ok(PeerMatrix {
            gpus: gpus.to_vec(),
            can,
        })
    }

    /// True when every GPU can read every other one.
    pub fn complete(&self) -> bool {
        self.can.iter().all(|row| row.iter().all(|&c| c))
    }

    /// The matrix as a small table for the log: `Y` where the row's GPU reads the column's.
    pub fn render(&self) -> String {
        let mut out = String::from("P2P  ");
        for g in &self.gpus {
            out.push_str(&format!("{g:>4}"));
        }
        for (i, row) in self.can.iter().enumerate() {
            out.push_str(&format!("\n{:>4} ", self.gpus[i]));
            for (j, &c) in row.iter().enumerate() {
                out.push_str(if i == j {
                    "   -"
                } else if c {
                    "   Y"
                } else {
                    "   N"
                });
            }
        }
        out
    }
}

/// The all-reduce a group of ranks on `rank_gpus` (a GPU ordinal per rank) can use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllReducePath {
    /// NCCL, with the reason it applies.
    Nccl(String),
    /// kiln's device all-reduce, with the reason it applies.
    Device(String),
    /// Sums through host memory, with the reason the device path does not apply.
    Host(String),
}

/// Picks the all-reduce for `rank_gpus` given the peer matrix of its distinct GPUs and
/// NCCL's availability (`Ok(version)` or why it did not open). NCCL when every rank has a
/// GPU of its own (NCCL refuses two ranks on one device); else kiln's device kernel when
/// every GPU reaches every other (or all ranks share one); else host memory.
pub fn choose_path(
    rank_gpus: &[usize],
    matrix: &PeerMatrix,
    nccl: &std::result::Result<String, String>,
) -> AllReducePath {
    if matrix.gpus.len() <= 1 {
        return AllReducePath::Device(format!(
            "all {} ranks share GPU {}",
            rank_gpus.len(),
            rank_gpus.first().copied().unwrap_or_default()
        ));
    }
    let own_gpus = matrix.gpus.len() == rank_gpus.len();
    let no_nccl = match (own_gpus, nccl) {
        (true, Ok(version)) => {
            return AllReducePath::Nccl(format!(
                "{} ranks on {} distinct GPUs, NCCL {version}",
                rank_gpus.len(),
                matrix.gpus.len()
            ))
        }
        (true, Err(why)) => why.clone(),
        (false, _) => "ranks share GPUs, which NCCL refuses".to_string(),
    };
    for (i, row) in matrix.can.iter().enumerate() {
        if let Some(j) = row.iter().position(|&c| !c) {
            return AllReducePath::Host(format!(
                "{no_nccl}; GPU {} cannot access GPU {} peer-to-peer",
                matrix.gpus[i], matrix.gpus[j]
            ));
        }
    }
    AllReducePath::Device(format!(
        "{no_nccl}; peer-to-peer access between all {} GPUs",
        matrix.gpus.len()
    ))
}

/// The distinct GPUs of `rank_gpus`, in first-use order.
pub fn distinct(rank_gpus: &[usize]) -> Vec<usize> {
    let mut gpus = Vec::new();
    for &g in rank_gpus {
        if !gpus.contains(&g) {
            gpus.push(g);
        }
    }
    gpus
}

fn contexts(gpus: &[usize]) -> Result<Vec<Arc<CudaContext>>> {
    gpus.iter()
        .map(|&g| CudaContext::new(g).with_context(|| format!("opening GPU {g}")))
        .collect()
}

/// Enables peer access from every GPU of `gpus` to every other; the returned contexts
/// must be kept alive while the access is used (they are the GPUs' primary contexts, which
/// the ranks' backends share).
pub fn enable_all(gpus: &[usize]) -> Result<Vec<Arc<CudaContext>>> {
    let contexts = contexts(gpus)?;
    for (i, a) in contexts.iter().enumerate() {
        a.bind_to_thread()
            .with_context(|| format!("binding GPU {}", gpus[i]))?;
        for (j, b) in contexts.iter().enumerate() {
            if i == j {
                continue;
            }
            // SAFETY: `a` is current on this thread and `b` is a live context.
            let status = unsafe { sys::cuCtxEnablePeerAccess(b.cu_ctx(), 0) };
            if status != sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED {
                status.result().with_context(|| {
                    format!(
                        "enabling peer access from GPU {} to GPU {}",
                        gpus[i], gpus[j]
                    )
                })?;
            }
        }
    }
    Ok(contexts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(gpus: &[usize], missing: Option<(usize, usize)>) -> PeerMatrix {
        let mut can = vec![vec![true; gpus.len()]; gpus.len()];
        if let Some((i, j)) = missing {
            can[i][j] = false;
        }
        PeerMatrix {
            gpus: gpus.to_vec(),
            can,
        }
    }

    fn no_nccl() -> std::result::Result<String, String> {
        Err("NCCL is not installed".into())
    }

    #[test]
    fn ranks_sharing_one_gpu_use_the_device_path_even_with_nccl() {
        for nccl in [no_nccl(), Ok("2.27.3".into())] {
            let path = choose_path(&[0, 0], &matrix(&distinct(&[0, 0]), None), &nccl);
            assert_eq!(
                path,
                AllReducePath::Device("all 2 ranks share GPU 0".into())
            );
        }
    }

    #[test]
    fn distinct_gpus_use_nccl_when_it_opened() {
        let gpus = distinct(&[0, 1, 2, 3]);
        let nccl = Ok("2.27.3".to_string());
        // Peer access does not matter to NCCL: it routes through the host itself.
        for missing in [None, Some((2, 1))] {
            assert_eq!(
                choose_path(&[0, 1, 2, 3], &matrix(&gpus, missing), &nccl),
                AllReducePath::Nccl("4 ranks on 4 distinct GPUs, NCCL 2.27.3".into())
            );
        }
    }

    #[test]
    fn without_nccl_full_peer_access_uses_the_device_path_and_one_gap_host_memory() {
        let gpus = distinct(&[0, 1, 2, 3]);
        assert_eq!(
            choose_path(&[0, 1, 2, 3], &matrix(&gpus, None), &no_nccl()),
            AllReducePath::Device(
                "NCCL is not installed; peer-to-peer access between all 4 GPUs".into()
            )
        );
        let path = choose_path(&[0, 1, 2, 3], &matrix(&gpus, Some((2, 1))), &no_nccl());
        assert_eq!(
            path,
            AllReducePath::Host(
                "NCCL is not installed; GPU 2 cannot access GPU 1 peer-to-peer".into()
            )
        );
    }

    #[test]
    fn ranks_sharing_some_gpus_skip_nccl() {
        let ranks = [0, 1, 0, 1];
        let path = choose_path(
            &ranks,
            &matrix(&distinct(&ranks), None),
            &Ok("2.27.3".into()),
        );
        assert_eq!(
            path,
            AllReducePath::Device(
                "ranks share GPUs, which NCCL refuses; peer-to-peer access between all 2 GPUs"
                    .into()
            )
        );
    }

    #[test]
    fn distinct_keeps_first_use_order_and_the_matrix_renders_as_a_table() {
        assert_eq!(distinct(&[3, 1, 3, 1]), [3, 1]);
        let text = matrix(&[0, 1], Some((0, 1))).render();
        assert_eq!(text, "P2P     0   1\n   0    -   N\n   1    Y   -");
    }
}
