//! Adding LoRA updates inside a forward pass: each adapter in use computes its update on
//! its own requests' token rows (gathered), and the updates land on those rows of the base
//! output. A step whose rows all use one adapter adds its update directly.

use super::lora::{LoraAdapter, Site};
use crate::backend::{Backend, BatchLayout, DType, RowContribution};
use anyhow::Result;

/// Which token rows of a step each adapter in use owns (requests without one: none).
pub struct AdapterRows {
    groups: Vec<(usize, Vec<usize>)>,
    num_tokens: usize,
}

impl AdapterRows {
    /// From `batch.adapters` (per sequence: 0 for the base model, `k + 1` for adapter `k`).
    pub fn of(batch: &BatchLayout) -> Self {
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (s, &slot) in batch.adapters.iter().enumerate() {
            let Some(adapter) = (slot as usize).checked_sub(1) else {
                continue;
            };
            let rows = batch.query_start[s]..batch.query_start[s + 1];
            match groups.iter_mut().find(|(a, _)| *a == adapter) {
                Some((_, r)) => r.extend(rows),
                None => groups.push((adapter, rows.collect())),
            }
        }
        AdapterRows {
            groups,
            num_tokens: batch.num_tokens(),
        }
    }

    /// Whether no row of the step uses an adapter.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The adapters in use.
    pub fn adapters(&self) -> impl Iterator<Item = usize> + '_ {
        self.groups.iter().map(|(a, _)| *a)
    }
}

/// `y` (the base linear's output for input `x`, `[tokens, out]`) plus each adapter's
/// update of layer `layer`'s `site` on its rows.
#[allow(clippy::too_many_arguments)]
pub fn add_updates<B: Backend>(
    be: &B,
    adapters: &[Option<LoraAdapter<B::Tensor>>],
    y: B::Tensor,
    x: &B::Tensor,
    (layer, site): (usize, Site),
    rows: &AdapterRows,
    dtype: DType,
) -> Result<B::Tensor> {
    let mut updates = Vec::new();
    for (adapter, tokens) in &rows.groups {
        let loaded = adapters[*adapter].as_ref();
        let Some(pair) = loaded.and_then(|a| a.layers[layer].site(site)) else {
            continue;
        };
        let whole = tokens.len() == rows.num_tokens;
        let gathered = if whole {
            None
        } else {
            Some(be.select_rows(x, tokens)?)
        };
        let low = be.linear(gathered.as_ref().unwrap_or(x), &pair.a, None)?;
        updates.push((be.linear(&low, &pair.b, None)?, tokens));
    }
    match updates.as_slice() {
        [] => Ok(y),
        [(update, tokens)] if tokens.len() == rows.num_tokens => be.add_tensors(&y, update),
        _ => {
            let width = *be.tensor_dims(&y)?.last().unwrap_or(&0);
            let ones = vec![1f32; rows.num_tokens];
            let parts: Vec<_> = updates
                .iter()
                .map(|(update, tokens)| RowContribution {
                    tensor: update,
                    rows: tokens,
                    weights: &ones[..tokens.len()],
                })
                .collect();
            let sum = be.weighted_row_sum(rows.num_tokens, width, (dtype, dtype), &parts)?;
            be.add_tensors(&y, &sum)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_group_by_adapter_across_sequences() {
        let batch = BatchLayout {
            query_start: vec![0, 3, 4, 6, 7],
            positions: vec![0; 7],
            adapters: vec![2, 0, 2, 1],
            ..Default::default()
        };
        let rows = AdapterRows::of(&batch);
        assert_eq!(rows.groups, vec![(1, vec![0, 1, 2, 4, 5]), (0, vec![6])]);
        assert!(AdapterRows::of(&BatchLayout::default()).is_empty());
    }
}
