//! The 2x2-tile micro-kernel and the strip/panel loop around it, written once over the
//! instruction layer ([`TileIsa`]): the real instructions in serving, the software
//! model in tests as well.

use super::*;

/// The kernel's tiles on one thread: palette 1, eight 16-row x 64-byte tiles. tmm0-3
/// hold the 32x32 f32 output block, tmm4/5 the two A tiles, tmm6/7 the two B tiles.
pub(super) struct Tiles<U: TileIsa>(pub(super) U);

impl<U: TileIsa> Tiles<U> {
    pub(super) fn configure() -> Self {
        Tiles(U::configure(&TileConfig::uniform(16, 64)))
    }

    /// `out` (32x32 f32, row stride 32) = the 32 rows of A at the start of `a` (row
    /// stride `lda` elements) times the weight panel `b`, over `ksteps` * 32 of K.
    ///
    /// # Safety
    /// `a` must cover 32 rows of `ksteps * 32` values at stride `lda`, `b` a panel of at
    /// least `ksteps * 32` lines.
    #[inline(always)]
    unsafe fn block(&mut self, a: &[u16], lda: usize, b: &[u16], ksteps: usize, out: &mut Block) {
        let t = &mut self.0;
        t.zero::<0>();
        t.zero::<1>();
        t.zero::<2>();
        t.zero::<3>();
        // A rows at stride lda * 2 bytes, the second A tile 16 rows down; a B tile is 16
        // 128-byte panel rows, the left (columns 0-15) or right (16-31) half of each.
        let a1 = 16 * lda;
        for s in 0..ksteps {
            let (ka, kb) = (s * K_STEP, s * K_STEP * 32);
            // SAFETY: the caller's contract puts 32 rows of A in `a` and `ksteps * 32`
            // panel lines in `b`; step `s` stays inside the `ksteps * 32` of K covered.
            unsafe {
                t.load::<4, u16>(a, ka, lda * 2);
                t.load::<6, u16>(b, kb, 128);
                t.load::<7, u16>(b, kb + 32, 128);
                t.dot::<0, 4, 6>();
                t.load::<5, u16>(a, a1 + ka, lda * 2);
                t.dot::<1, 4, 7>();
                t.dot::<2, 5, 6>();
                t.dot::<3, 5, 7>();
            }
        }
        let c = out.0.as_flattened_mut();
        // SAFETY: four 16x16 f32 tiles at row stride 128 bytes fill the 32x32 block `c`.
        unsafe {
            t.store::<0, f32>(c, 0, BLOCK_COLS * 4);
            t.store::<1, f32>(c, 16, BLOCK_COLS * 4);
            t.store::<2, f32>(c, 16 * BLOCK_COLS, BLOCK_COLS * 4);
            t.store::<3, f32>(c, 16 * BLOCK_COLS + 16, BLOCK_COLS * 4);
        }
    }

    /// `out[r][c]` for rows `r < rows` and the columns of `panels` below `width`: the bf16
    /// rows of `a` (row stride `lda`) times the panels of `w`, over `ksteps` * 32 of K;
    /// with `add`, added to what `out` holds (the residual) instead. Strip by strip,
    /// panel by panel, through a 32x32 block.
    ///
    /// # Safety
    /// `a` must hold whole 32-row strips covering `rows` (`lda` a multiple of 32, at
    /// least `ksteps * 32`) and `ksteps * 32 <= w.kp`; `out` must be valid for writes at
    /// `r * ldo + c` for those rows and columns (and reads, initialised, with `add`),
    /// and no one else may access them.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn product(
        &mut self,
        a: &[u16],
        lda: usize,
        rows: usize,
        w: &PackedWeight,
        panels: std::ops::Range<usize>,
        ksteps: usize,
        (out, ldo, width): (*mut f32, usize, usize),
        add: bool,
    ) {
        let mut block = Block([[0.0; BLOCK_COLS]; BLOCK_ROWS]);
        for r0 in (0..rows).step_by(BLOCK_ROWS) {
            let strip_rows = BLOCK_ROWS.min(rows - r0);
            for p in panels.clone() {
                let c0 = p * BLOCK_COLS;
                let cols = BLOCK_COLS.min(width.min(w.n).saturating_sub(c0));
                // The strip's 32 rows alone (a bounds check a block, not a tile load): a
                // tile load past them reads another strip, which the model catches.
                let strip = &a[r0 * lda..][..BLOCK_ROWS * lda];
                // SAFETY: `strip` is 32 whole rows of `a`, at least ksteps * 32 wide (the
                // caller's contract), panel p one of `w`'s, of w.kp >= ksteps * 32 lines;
                // both 64-byte aligned (Line) for full-speed loads.
                unsafe { self.block(strip, lda, w.panel(p), ksteps, &mut block) };
                let dst = out.wrapping_add(r0 * ldo + c0);
                // SAFETY: rows r0..r0 + strip_rows < rows and columns c0..c0 + cols of
                // `out` are ours to write, and with `add` to read (the caller's
                // contract).
                unsafe {
                    if add {
                        block.add_to(strip_rows, cols, dst, ldo)
                    } else {
                        block.write_to(strip_rows, cols, dst, ldo)
                    }
                };
            }
        }
    }

    /// `swiglu(a @ w.T)` for a gate_up weight `w` (`w.n = 2 k`, the gate's `k` columns
    /// then the up's, `k` a multiple of 32): `out[r][c]` for rows `r < rows` and the
    /// columns of the gate panels `panels` (each with its up twin `k / 32` panels on),
    /// over all of K. Each gate block meets its up block in L1 and only their SwiGLU is
    /// written.
    ///
    /// # Safety
    /// `a` must hold whole 32-row strips covering `rows` (`lda` = `w.kp`); `out` must be
    /// valid for writes at `r * ldo + c` for those rows and the panels' columns, and no
    /// one else may access them.
    pub(super) unsafe fn product_swiglu(
        &mut self,
        a: &[u16],
        rows: usize,
        w: &PackedWeight,
        panels: std::ops::Range<usize>,
        (out, ldo): (*mut f32, usize),
    ) {
        let lda = w.kp;
        let twin = w.n / 2 / BLOCK_COLS;
        let mut gate = Block([[0.0; BLOCK_COLS]; BLOCK_ROWS]);
        let mut up = Block([[0.0; BLOCK_COLS]; BLOCK_ROWS]);
        let mut h = Block([[0.0; BLOCK_COLS]; BLOCK_ROWS]);
        for r0 in (0..rows).step_by(BLOCK_ROWS) {
            let strip_rows = BLOCK_ROWS.min(rows - r0);
            let strip = &a[r0 * lda..][..BLOCK_ROWS * lda];
            for p in panels.clone() {
                // SAFETY: as in `product`: 32 whole rows of `a`, two of `w`'s panels
                // (p < twin, so p + twin < 2 twin = the panel count), all of K.
                unsafe {
                    self.block(strip, lda, w.panel(p), lda / K_STEP, &mut gate);
                    self.block(strip, lda, w.panel(p + twin), lda / K_STEP, &mut up);
                }
                swiglu_block(&mut h, &gate, &up);
                let c0 = p * BLOCK_COLS;
                // SAFETY: rows r0..r0 + strip_rows < rows and columns c0..c0 + 32 of
                // `out` are ours to write (the caller's contract).
                unsafe { h.write_to(strip_rows, BLOCK_COLS, out.wrapping_add(r0 * ldo + c0), ldo) };
            }
        }
    }
}

/// A 32x32 f32 output block, 64-byte aligned for the tile stores.
#[repr(C, align(64))]
pub(super) struct Block(pub(super) [[f32; BLOCK_COLS]; BLOCK_ROWS]);

impl Block {
    /// The first `rows` rows and `cols` columns of the block to `out` (row stride `ldo`).
    ///
    /// # Safety
    /// `out` must be valid for writes at `r * ldo + c` for `r < rows`, `c < cols`, and
    /// no one else may access them meanwhile.
    #[inline(always)]
    pub(super) unsafe fn write_to(&self, rows: usize, cols: usize, out: *mut f32, ldo: usize) {
        for (r, src) in self.0[..rows].iter().enumerate() {
            let dst = out.wrapping_add(r * ldo);
            if cols == BLOCK_COLS {
                // A whole row of the block as one fixed-size move, inlined: a memcpy
                // call per 128-byte row cost 5 % of a bf16 forward pass.
                // SAFETY: row r < rows, columns 0..32: ours to write (the contract);
                // unaligned write.
                unsafe { dst.cast::<[f32; BLOCK_COLS]>().write_unaligned(*src) };
            } else {
                // SAFETY: row r < rows, columns 0..cols: ours to write (the contract).
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, cols.min(BLOCK_COLS)) };
            }
        }
    }
}

impl Block {
    /// [`write_to`](Self::write_to), but each value added to what `out` holds:
    /// `out = out + block`, the residual add's bits.
    ///
    /// # Safety
    /// `out` must be valid for reads and writes at `r * ldo + c` for `r < rows`, `c <
    /// cols` (initialised), and no one else may access them meanwhile.
    #[inline(always)]
    pub(super) unsafe fn add_to(&self, rows: usize, cols: usize, out: *mut f32, ldo: usize) {
        for (r, src) in self.0[..rows].iter().enumerate() {
            let dst = out.wrapping_add(r * ldo);
            if cols == BLOCK_COLS {
                // SAFETY: row r < rows, columns 0..32: ours (the contract); unaligned.
                unsafe {
                    let mut v = dst.cast::<[f32; BLOCK_COLS]>().read_unaligned();
                    for (v, s) in v.iter_mut().zip(src) {
                        *v += s;
                    }
                    dst.cast::<[f32; BLOCK_COLS]>().write_unaligned(v);
                }
            } else {
                for (c, s) in src.iter().enumerate().take(cols) {
                    // SAFETY: row r < rows, column c < cols: ours (the contract).
                    unsafe { *dst.add(c) += s };
                }
            }
        }
    }
}

/// `h = silu(gate) * up`, element by element, over whole blocks: one call a block (the
/// per-call dispatch of a row at a time costs as much as the row).
pub(super) fn swiglu_block(h: &mut Block, gate: &Block, up: &Block) {
    crate::cpu::gemm::prologue::swiglu_row(
        h.0.as_flattened_mut(),
        gate.0.as_flattened(),
        up.0.as_flattened(),
    );
}
