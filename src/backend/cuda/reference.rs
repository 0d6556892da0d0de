//! Plain-Rust f32 reference implementations of every kernel, with the exact layouts of
//! the GPU ops. Simple loops on purpose: they are the ground truth of `kiln selftest`.

use crate::backend::KeyWindow;
use rayon::prelude::*;

/// `out[i, :] = table[ids[i], :]`; out-of-range ids give zeros.
pub fn embedding(table: &[f32], ids: &[u32], hidden: usize) -> Vec<f32> {
    let vocab = table.len() / hidden;
    let mut out = vec![0.0; ids.len() * hidden];
    for (row, &id) in ids.iter().enumerate() {
        if (id as usize) < vocab {
            let src = &table[id as usize * hidden..(id as usize + 1) * hidden];
            out[row * hidden..(row + 1) * hidden].copy_from_slice(src);
        }
    }
    out
}

/// `y = x * rsqrt(mean(x^2) + eps) * w` per row of width `w.len()`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut y = vec![0.0; x.len()];
    for (x_row, y_row) in x.chunks(d).zip(y.chunks_mut(d)) {
        let mean_sq = x_row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (mean_sq + eps).sqrt();
        for ((y, &x), &w) in y_row.iter_mut().zip(x_row).zip(w) {
            *y = x * inv * w;
        }
    }
    y
}

/// `residual += x` rounded by `round` (the model dtype), then `x = rms_norm(residual)`.
/// Returns `(x, residual)`.
pub fn fused_add_rms_norm(
    x: &[f32],
    residual: &[f32],
    w: &[f32],
    eps: f32,
    round: impl Fn(f32) -> f32,
) -> (Vec<f32>, Vec<f32>) {
    let summed: Vec<f32> = x.iter().zip(residual).map(|(a, b)| round(a + b)).collect();
    (rms_norm(&summed, w, eps), summed)
}

/// Rotary embedding in place on `x[n, heads, hd]` (call once for q and once for k).
pub fn rope(
    x: &mut [f32],
    positions: &[i32],
    inv_freq: &[f32],
    heads: usize,
    hd: usize,
    neox: bool,
    scale: f32,
) {
    // The first 2 * inv_freq.len() values of each head rotate (partial rotary: fewer than hd).
    // cos and sin carry the attention factor `scale`, as in kernels/rope.cu.
    let half = inv_freq.len().min(hd / 2);
    for (token, &pos) in positions.iter().enumerate() {
        for head in 0..heads {
            let base = (token * heads + head) * hd;
            for (i, &freq) in inv_freq.iter().enumerate().take(half) {
                let angle = pos as f32 * freq;
                let (s, c) = angle.sin_cos();
                let (s, c) = (s * scale, c * scale);
                let (ia, ib) = if neox {
                    (i, i + half)
                } else {
                    (2 * i, 2 * i + 1)
                };
                let (a, b) = (x[base + ia], x[base + ib]);
                x[base + ia] = a * c - b * s;
                x[base + ib] = b * c + a * s;
            }
        }
    }
}

/// `out[n, I] = silu(g) * u` with `gate_up[n, 2I] = [g | u]`.
pub fn silu_mul(gate_up: &[f32], inter: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks(2 * inter) {
        for j in 0..inter {
            let g = row[j];
            out.push(g / (1.0 + (-g).exp()) * row[inter + j]);
        }
    }
    out
}

/// gpt-oss's `out[n, I] = (clamp(u, -l, l) + 1) * g' sigmoid(alpha g')`, `g' = min(g, l)`,
/// with `gate_up[n, 2I] = [g | u]`.
pub fn clamped_swiglu(gate_up: &[f32], inter: usize, (limit, alpha): (f32, f32)) -> Vec<f32> {
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks(2 * inter) {
        for j in 0..inter {
            let g = row[j].min(limit);
            let u = row[inter + j].clamp(-limit, limit);
            out.push((u + 1.0) * g / (1.0 + (-alpha * g).exp()));
        }
    }
    out
}

/// `out[n, I] = gelu_tanh(g) * u` with `gate_up[n, 2I] = [g | u]` (PyTorch's tanh GELU).
pub fn gelu_tanh_mul(gate_up: &[f32], inter: usize) -> Vec<f32> {
    let gelu = |g: f64| {
        0.5 * g * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g)).tanh())
    };
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks(2 * inter) {
        for j in 0..inter {
            out.push((gelu(row[j] as f64) * row[inter + j] as f64) as f32);
        }
    }
    out
}

pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// `x[n, d] + bias[d]`.
/// Per row and head, `shared`'s row then the head's part of `own` (`[n, heads * o]`).
pub fn join_heads(shared: &[f32], own: &[f32], n: usize, heads: usize) -> Vec<f32> {
    let (s, o) = (shared.len() / n, own.len() / (n * heads));
    let mut out = Vec::with_capacity(n * heads * (s + o));
    for r in 0..n {
        for h in 0..heads {
            out.extend_from_slice(&shared[r * s..(r + 1) * s]);
            out.extend_from_slice(&own[(r * heads + h) * o..(r * heads + h + 1) * o]);
        }
    }
    out
}

pub fn add_bias(x: &[f32], bias: &[f32]) -> Vec<f32> {
    x.chunks(bias.len())
        .flat_map(|row| row.iter().zip(bias).map(|(x, b)| x + b))
        .collect()
}

/// Copies `k, v [n, width]` into caches `[slots, width]` at `slots[i]` (negative: skip).
pub fn kv_write(
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    k: &[f32],
    v: &[f32],
    slots: &[i32],
    width: usize,
) {
    for (token, &slot) in slots.iter().enumerate() {
        if slot < 0 || (slot as usize + 1) * width > k_cache.len() {
            continue;
        }
        let (dst, src) = (slot as usize * width, token * width);
        k_cache[dst..dst + width].copy_from_slice(&k[src..src + width]);
        v_cache[dst..dst + width].copy_from_slice(&v[src..src + width]);
    }
}

/// Shapes of a paged attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape<'a> {
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub max_blocks_per_seq: usize,
    /// Which earlier positions a query sees, as the CPU backend's `paged_attention` has it.
    pub window: KeyWindow,
    /// Gemma 2's soft-cap of the scaled scores.
    pub softcap: Option<f32>,
    /// gpt-oss's per-head sink logits (`[q_heads]`), as the CPU backend applies them.
    pub sinks: Option<&'a [f32]>,
    /// ALiBi slopes (`[q_heads]`): head h's score for the key at position p from the query
    /// at position i gains `alibi[h] * (p - i)`, after the scale and the cap.
    pub alibi: Option<&'a [f32]>,
}

/// Paged causal attention with the layout of kernels/attention.cu (same arguments as the
/// kernel, hence the long list).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    block_tables: &[i32],
    query_start: &[i32],
    context_lens: &[i32],
    shape: AttentionShape<'_>,
    scale: f32,
) -> Vec<f32> {
    let AttentionShape {
        q_heads: hq,
        kv_heads: hk,
        head_dim: hd,
        block_size,
        max_blocks_per_seq,
        window,
        softcap,
        sinks,
        alibi,
    } = shape;
    let num_tokens = q.len() / (hq * hd);
    let mut out = vec![0.0f32; q.len()];
    out.par_chunks_mut(hq * hd)
        .enumerate()
        .for_each(|(token, out_row)| {
            let seq = (0..context_lens.len())
                .rev()
                .find(|&s| query_start[s] as usize <= token)
                .unwrap_or(0);
            let q_len = (query_start[seq + 1] - query_start[seq]) as i64;
            let last = context_lens[seq] as i64 - q_len + (token as i64 - query_start[seq] as i64);
            // A padding row (no position) attends to nothing.
            let first = window.first_key(last.max(0) as usize) as i64;
            let table = &block_tables[seq * max_blocks_per_seq..(seq + 1) * max_blocks_per_seq];
            for head in 0..hq {
                let kv_head = head / (hq / hk);
                let q_vec = &q[(token * hq + head) * hd..(token * hq + head + 1) * hd];
                let positions: Vec<i64> = (first..=last.max(-1)).filter(|&p| p >= 0).collect();
                let offsets: Vec<usize> = positions
                    .iter()
                    .map(|&p| {
                        let p = p as usize;
                        let block = table[p / block_size] as usize;
                        ((block * block_size + p % block_size) * hk + kv_head) * hd
                    })
                    .collect();
                let slope = alibi.map_or(0.0, |a| a[head]);
                let scores: Vec<f32> = offsets
                    .iter()
                    .zip(&positions)
                    .map(|(&o, &p)| {
                        let dot = q_vec
                            .iter()
                            .zip(&k_cache[o..o + hd])
                            .map(|(a, b)| a * b)
                            .sum::<f32>();
                        let capped = crate::backend::cpu::attention::softcap(dot * scale, softcap);
                        // ALiBi: the further back the key, the lower its score.
                        capped + slope * (p - last) as f32
                    })
                    .collect();
                // A sink is one more logit in the softmax, whose value is dropped.
                let probs = match sinks {
                    Some(s) => {
                        let mut with_sink = scores.clone();
                        with_sink.push(s[head]);
                        let mut p = softmax(&with_sink);
                        p.pop();
                        p
                    }
                    None => softmax(&scores),
                };
                let dst = &mut out_row[head * hd..(head + 1) * hd];
                for (&o, &p) in offsets.iter().zip(&probs) {
                    for (d, v) in dst.iter_mut().zip(&v_cache[o..o + hd]) {
                        *d += p * v;
                    }
                }
            }
        });
    debug_assert_eq!(out.len(), num_tokens * hq * hd);
    out
}

/// Index of the largest value per row (lowest index on ties, NaN ignored).
pub fn argmax(logits: &[f32], vocab: usize) -> Vec<u32> {
    logits
        .chunks(vocab)
        .map(|row| {
            let mut best = (f32::NEG_INFINITY, 0usize);
            for (j, &v) in row.iter().enumerate() {
                if v > best.0 {
                    best = (v, j);
                }
            }
            best.1 as u32
        })
        .collect()
}

/// Softmax of one row. The sum is accumulated in f64: a sequential f32 sum over a
/// 128k vocabulary is less accurate than the kernel's tree reduction.
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = row.iter().map(|v| ((v - max) as f64).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

/// Log-softmax of one row (f64 sum, as in [`softmax`]).
pub fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = row
        .iter()
        .map(|v| ((v - max) as f64).exp())
        .sum::<f64>()
        .ln();
    row.iter()
        .map(|v| ((v - max) as f64 - log_sum) as f32)
        .collect()
}

/// `y[m, n] = x[m, k] * w[n, k]^T`.
pub fn linear(x: &[f32], w: &[f32], k: usize) -> Vec<f32> {
    x.par_chunks(k)
        .flat_map_iter(|x_row| {
            w.chunks(k)
                .map(move |w_row| x_row.iter().zip(w_row).map(|(a, b)| a * b).sum::<f32>())
        })
        .collect()
}

/// Where a step's tokens sit in a paged cache: per sequence its block table row
/// (`max_blocks` entries of `tables`), its first token (`query_start`) and its context after
/// the step (`context_lens`); per token its slot (`slots`, -1 for padding).
pub struct PagedTokens<'a> {
    pub tables: &'a [i32],
    pub max_blocks: usize,
    pub block_size: usize,
    pub query_start: &'a [i32],
    pub context_lens: &'a [i32],
    pub slots: &'a [i32],
}

/// LFM2's gated short convolution, as kernels/short_conv.cu computes it: each token's row
/// `round(B * x)` written into `rows` (`[slots, width]`), then `round(C * round(conv))` per
/// channel, `conv` summing `weight[c, j]` times the sequence's row at `pos - (taps - 1) + j`
/// (before 0: nothing); padding tokens give zeros. `bcx` is `[n, 3 * width]` (B, C, x).
pub fn gated_short_conv(
    bcx: &[f32],
    (weight, taps): (&[f32], usize),
    rows: &mut [f32],
    at: &PagedTokens<'_>,
    round: impl Fn(f32) -> f32,
) -> Vec<f32> {
    let width = weight.len() / taps;
    let n = at.slots.len();
    for (t, &slot) in at.slots.iter().enumerate() {
        if slot >= 0 {
            let row = &bcx[t * 3 * width..(t + 1) * 3 * width];
            for c in 0..width {
                rows[slot as usize * width + c] = round(row[c] * row[2 * width + c]);
            }
        }
    }
    let mut out = vec![0.0f32; n * width];
    for seq in 0..at.context_lens.len() {
        let (start, end) = (
            at.query_start[seq] as usize,
            at.query_start[seq + 1] as usize,
        );
        let table = &at.tables[seq * at.max_blocks..(seq + 1) * at.max_blocks];
        for t in start..end {
            if at.slots[t] < 0 {
                continue;
            }
            let pos = at.context_lens[seq] as usize - (end - start) + (t - start);
            for c in 0..width {
                let mut acc = 0.0f32;
                for j in 0..taps {
                    let Some(p) = (pos + j).checked_sub(taps - 1) else {
                        continue;
                    };
                    let slot =
                        table[p / at.block_size] as usize * at.block_size + p % at.block_size;
                    acc += weight[c * taps + j] * rows[slot * width + c];
                }
                out[t * width + c] = round(bcx[t * 3 * width + width + c] * round(acc));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    #[test]
    fn embedding_picks_rows_and_zeroes_bad_ids() {
        let table = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(
            embedding(&table, &[2, 0, 9], 2),
            vec![5.0, 6.0, 1.0, 2.0, 0.0, 0.0]
        );
    }

    #[test]
    fn rms_norm_by_hand() {
        // mean(3^2, 4^2) = 12.5; 1/sqrt(12.5) = 0.282843
        let y = rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0);
        assert!(close(&y, &[0.848_528, 2.262_742]), "{y:?}");
    }

    #[test]
    fn fused_add_rms_norm_rounds_the_residual() {
        let (x, r) = fused_add_rms_norm(&[1.0, 2.0], &[2.0, 2.0], &[1.0, 1.0], 0.0, |v| {
            v.floor() + 0.5
        });
        assert_eq!(r, vec![3.5, 4.5]);
        assert!(close(&x, &rms_norm(&[3.5, 4.5], &[1.0, 1.0], 0.0)));
    }

    #[test]
    fn rope_rotates_pairs_by_position() {
        // hd = 4, inv_freq = [1, 0]: the first pair turns by `pos` radians, the second not.
        let quarter = std::f32::consts::FRAC_PI_2;
        let mut neox = vec![1.0, 1.0, 0.0, 0.0];
        rope(&mut neox, &[0], &[quarter, 0.0], 1, 4, true, 1.0);
        assert!(
            close(&neox, &[1.0, 1.0, 0.0, 0.0]),
            "position 0 is the identity"
        );
        let mut neox = vec![1.0, 1.0, 0.0, 0.0];
        rope(&mut neox, &[1], &[quarter, 0.0], 1, 4, true, 1.0);
        // pair (x0, x2) = (1, 0) turned 90 degrees -> (0, 1); pair (x1, x3) unchanged.
        assert!(close(&neox, &[0.0, 1.0, 1.0, 0.0]), "{neox:?}");
        let mut inter = vec![1.0, 0.0, 1.0, 0.0];
        rope(&mut inter, &[1], &[quarter, 0.0], 1, 4, false, 1.0);
        assert!(close(&inter, &[0.0, 1.0, 1.0, 0.0]), "{inter:?}");
    }

    #[test]
    fn silu_mul_by_hand() {
        // silu(0) = 0; silu(1) = 0.731059
        let out = silu_mul(&[0.0, 1.0, 5.0, 2.0], 2);
        assert!(close(&out, &[0.0, 1.462_117]), "{out:?}");
    }

    #[test]
    fn add_and_bias() {
        assert_eq!(add(&[1.0, 2.0], &[3.0, 4.0]), vec![4.0, 6.0]);
        assert_eq!(
            add_bias(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0]),
            vec![11.0, 22.0, 13.0, 24.0]
        );
    }

    #[test]
    fn kv_write_places_tokens_and_skips_negative_slots() {
        let (mut kc, mut vc) = (vec![0.0; 6], vec![0.0; 6]);
        kv_write(
            &mut kc,
            &mut vc,
            &[1.0, 2.0, 3.0, 4.0],
            &[5.0, 6.0, 7.0, 8.0],
            &[2, -1],
            2,
        );
        assert_eq!(kc, vec![0.0, 0.0, 0.0, 0.0, 1.0, 2.0]);
        assert_eq!(vc, vec![0.0, 0.0, 0.0, 0.0, 5.0, 6.0]);
    }

    #[test]
    fn attention_is_causal_and_follows_the_block_table() {
        // One sequence, two new tokens, context 2, block_size 1, head_dim 1, one head.
        // Position 0 lives in block 1, position 1 in block 0.
        let shape = AttentionShape {
            q_heads: 1,
            kv_heads: 1,
            head_dim: 1,
            block_size: 1,
            max_blocks_per_seq: 2,
            window: KeyWindow::Full,
            softcap: None,
            sinks: None,
            alibi: None,
        };
        let k_cache = [0.0, 0.0];
        let v_cache = [20.0, 10.0];
        let out = attention(
            &[1.0, 1.0],
            &k_cache,
            &v_cache,
            &[1, 0],
            &[0, 2],
            &[2],
            shape,
            1.0,
        );
        // Token 0 sees only position 0 (v = 10); token 1 averages equal scores (15).
        assert!(close(&out, &[10.0, 15.0]), "{out:?}");
    }

    #[test]
    fn attention_decode_uses_the_whole_context_and_gqa_mapping() {
        // Decode token at position 1 of a 2-token context; 2 q heads share 1 kv head.
        let shape = AttentionShape {
            q_heads: 2,
            kv_heads: 1,
            head_dim: 1,
            block_size: 2,
            max_blocks_per_seq: 1,
            window: KeyWindow::Full,
            softcap: None,
            sinks: None,
            alibi: None,
        };
        let k_cache = [0.0, 1.0];
        let v_cache = [1.0, 3.0];
        let out = attention(
            &[0.0, 100.0],
            &k_cache,
            &v_cache,
            &[0],
            &[0, 1],
            &[2],
            shape,
            1.0,
        );
        // head 0: equal scores -> mean 2; head 1: score 100 on position 1 -> ~3.
        assert!(close(&out, &[2.0, 3.0]), "{out:?}");
    }

    #[test]
    fn attention_sliding_window_keeps_the_last_w_positions() {
        // Prefill of 4 tokens, window 2, equal scores: each token averages the values of
        // its own and the previous position (token 0 has only itself).
        let shape = AttentionShape {
            q_heads: 1,
            kv_heads: 1,
            head_dim: 1,
            block_size: 2,
            max_blocks_per_seq: 2,
            window: KeyWindow::Sliding(2),
            softcap: None,
            sinks: None,
            alibi: None,
        };
        let k_cache = [0.0; 4];
        let v_cache = [3.0, 4.0, 1.0, 2.0]; // block 0 holds positions 2, 3
        let out = attention(
            &[1.0; 4],
            &k_cache,
            &v_cache,
            &[1, 0],
            &[0, 4],
            &[4],
            shape,
            1.0,
        );
        assert!(close(&out, &[1.0, 1.5, 2.5, 3.5]), "{out:?}");
    }

    #[test]
    fn attention_alibi_favours_the_nearer_keys() {
        // Decode at position 1 over equal scores (k = 0), values 0 and 1: the slope ln 3
        // lowers position 0's score by ln 3, so the weights are 1/4 and 3/4.
        let slopes = [3f32.ln()];
        let shape = AttentionShape {
            q_heads: 1,
            kv_heads: 1,
            head_dim: 1,
            block_size: 2,
            max_blocks_per_seq: 1,
            window: KeyWindow::Full,
            softcap: None,
            sinks: None,
            alibi: Some(&slopes),
        };
        let out = attention(
            &[1.0],
            &[0.0, 0.0],
            &[0.0, 1.0],
            &[0],
            &[0, 1],
            &[2],
            shape,
            1.0,
        );
        assert!(close(&out, &[0.75]), "{out:?}");
    }

    #[test]
    fn argmax_prefers_lowest_index_on_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 0.0, f32::NAN, -1.0], 3), vec![1, 0]);
    }

    #[test]
    fn softmax_and_log_softmax_by_hand() {
        let p = softmax(&[0.0, 2f32.ln()]);
        assert!(close(&p, &[1.0 / 3.0, 2.0 / 3.0]), "{p:?}");
        let lp = log_softmax(&[0.0, 2f32.ln()]);
        assert!(
            close(&lp, &[(1.0f32 / 3.0).ln(), (2.0f32 / 3.0).ln()]),
            "{lp:?}"
        );
    }

    #[test]
    fn linear_uses_hf_weight_layout() {
        // x [1, 2] = [1, 2]; w [3, 2] rows (1,0), (0,1), (1,1) -> y = [1, 2, 3]
        assert_eq!(
            linear(&[1.0, 2.0], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 2),
            vec![1.0, 2.0, 3.0]
        );
    }
}
