//! Causal attention with both products on tiles.

use super::*;

/// Causal attention of the query heads that share `kv_head`, over one sequence
/// (`start`, `len` tokens), from the fused qkv rows: the scores and the weighted
/// values are bf16 products on AMX tiles (`U`: [`Hw`] but in tests) with f32
/// accumulation, the softmax is f32 (as PyTorch's bf16 attention). Writes those heads'
/// columns of the sequence's rows of `out` (`[tokens, H * D]`).
///
/// Keys and values are packed once for the whole group of query heads (the keys
/// normed and rotated first, as each query head is); query rows are taken `block` at a
/// time, each seeing only the keys up to its own position.
pub(crate) fn group_attention<U: TileIsa>(
    rows: &QkvRows,
    (start, len, kv_head): (usize, usize, usize),
    block: usize,
    out: SyncPtr,
) {
    let (h, kv, d) = rows.dims;
    let width = rows.width;
    let seq = rows.sequence((start, len));
    let values_at = (h + kv + kv_head) * d;
    // Keys as the weights of a [len, d] layer (scores = q k^T); values transposed, as
    // those of a [d, len] one (out = p v).
    let mut heads = Vec::with_capacity(len * d);
    rows.head_rows(h + kv_head, (start, len), &mut heads);
    let kpack = PackedWeight::pack_rows(&heads, (len, d), d);
    let vpack = PackedWeight::pack_columns(&seq[values_at..], (d, len), width);
    let kp_d = d.next_multiple_of(K_STEP);
    let block = block.clamp(1, len);
    let strip_rows = block.next_multiple_of(BLOCK_ROWS);
    let mut qa = vec![Line([0; 32]); strip_rows * kp_d / 32];
    let mut pa = vec![Line([0; 32]); strip_rows * len.next_multiple_of(K_STEP) / 32];
    let mut scores = vec![0f32; block * len];
    let mut inv = vec![0f32; block];
    let scale = 1.0 / (d as f32).sqrt();
    let group = h / kv;
    let mut tiles = Tiles::<U>::configure();
    for head in kv_head * group..(kv_head + 1) * group {
        // This head's queries, normed and rotated, [len, d].
        rows.head_rows(head, (start, len), &mut heads);
        let mut r0 = 0;
        while r0 < len {
            let rows = block.min(len - r0);
            // Causal: rows r0..r0+rows see keys 0..r0+rows, nothing later.
            let keys = r0 + rows;
            for (i, dst) in slots(&mut qa).chunks_exact_mut(kp_d).take(rows).enumerate() {
                round_row(dst, &heads[(r0 + i) * d..][..d], scale);
            }
            let s = &mut scores[..rows * keys];
            // SAFETY: qa holds whole strips of kp_d-wide rows; kpack has kp_d lines a
            // panel; s is rows x keys and this task's own scratch.
            unsafe {
                tiles.product(
                    lines(&qa),
                    kp_d,
                    rows,
                    &kpack,
                    0..keys.div_ceil(BLOCK_COLS),
                    kp_d / K_STEP,
                    (s.as_mut_ptr(), keys, keys),
                    false,
                )
            };
            causal_exp(s, keys, r0, &mut inv);
            let kp_keys = keys.next_multiple_of(K_STEP);
            for (i, (dst, p)) in slots(&mut pa)
                .chunks_exact_mut(kp_keys)
                .zip(s.chunks_exact(keys))
                .enumerate()
            {
                // The visible keys, made probabilities as they are rounded; zeros after.
                round_row(dst, &p[..r0 + i + 1], inv[i]);
            }
            // SAFETY: pa holds whole strips of kp_keys-wide rows (kp_keys <= vpack's kp);
            // the destination (rows start+r0.., columns head*D..+D, row stride H*D)
            // belongs to this (sequence, head) alone.
            unsafe {
                tiles.product(
                    lines(&pa),
                    kp_keys,
                    rows,
                    &vpack,
                    0..d.div_ceil(BLOCK_COLS),
                    kp_keys / K_STEP,
                    (out.at((start + r0) * h * d + head * d), h * d, d),
                    false,
                )
            };
            r0 += rows;
        }
    }
}
