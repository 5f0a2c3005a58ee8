//! Activations rounded to bf16 into whole, zero-padded tile strips.

use super::*;

/// `m` rows of bf16 activations, `kp` values each (zero-padded from `k`), in whole
/// 32-row strips (the rows past `m` are zero): `row(r, dst)` writes row `r < m`, all of
/// `dst` (`kp` values). In parallel.
///
/// # Safety
/// `row` must write every element of the `dst` it is given.
pub(super) unsafe fn round_rows(
    m: usize,
    kp: usize,
    row: impl Fn(usize, &mut [MaybeUninit<u16>]) + Sync,
) -> Vec<Line> {
    let rows = m.next_multiple_of(BLOCK_ROWS);
    let lines_per_row = kp / 32;
    let mut a: Vec<Line> = Vec::with_capacity(rows * lines_per_row);
    let spare = &mut a.spare_capacity_mut()[..rows * lines_per_row];
    spare
        .par_chunks_mut(lines_per_row * 16)
        .enumerate()
        .for_each(|(chunk, dst)| {
            // SAFETY: an uninitialised Line is 32 uninitialised u16s (repr(C), no padding).
            let dst: &mut [MaybeUninit<u16>] =
                unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast(), dst.len() * 32) };
            for (i, dst) in dst.chunks_exact_mut(kp).enumerate() {
                let r = chunk * 16 + i;
                if r < m {
                    row(r, dst);
                } else {
                    round_row(dst, &[], 1.0);
                }
            }
        });
    // SAFETY: every line of the first rows * lines_per_row was written above (`row`
    // writes all of its row, the caller's contract; round_row pads).
    unsafe { a.set_len(rows * lines_per_row) };
    a
}
