//! The tile state and the 2x2-tile micro-kernel.

use super::*;

/// The tile configuration (palette 1): eight 16-row x 64-byte tiles. tmm0-3 hold the
/// 32x32 f32 output block, tmm4/5 the two A tiles, tmm6/7 the two B tiles.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

/// Tile state loaded on this thread for the guard's lifetime; released on drop so that
/// context switches stop saving 8 KiB of tile registers. The tile registers carry data
/// from one `asm!` block to the next (zero, multiply-accumulate, store): Rust cannot
/// name them as operands or clobbers, and that is sound because the compiler never
/// allocates tile registers itself and nothing between the blocks calls out. Neither
/// `Send` nor `Sync`: tile registers belong to the thread that configured them.
pub(super) struct Tiles(PhantomData<*const ()>);

impl Tiles {
    pub(super) fn configure() -> Self {
        debug_assert!(available(), "AMX tiles used without AMX");
        let mut cfg = [0u8; 64];
        cfg[0] = 1;
        for t in 0..8 {
            cfg[16 + 2 * t] = 64; // bytes per row
            cfg[48 + t] = 16; // rows
        }
        let cfg = TileConfig(cfg);
        // SAFETY: `available()` confirmed AMX and the OS grant; the config is valid.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly)) };
        Tiles(PhantomData)
    }

    /// `out` (32x32 f32, row stride 32) = the 32 rows of A at `a` (row stride `lda`
    /// elements) times the weight panel at `b`, over `ksteps` * 32 of K.
    ///
    /// # Safety
    /// `a` must cover 32 rows of `ksteps * 32` values at stride `lda`, `b` a panel of
    /// `ksteps * 32` lines, both 64-byte aligned.
    #[inline(always)]
    unsafe fn block(
        &self,
        a: *const u16,
        lda: usize,
        b: *const u16,
        ksteps: usize,
        out: &mut Block,
    ) {
        // For this and the blocks below: the caller's contract puts 32 rows of A at
        // `a` (the second 16 at `a1`) and `ksteps * 32` panel lines at `b`, all 64-byte
        // aligned; the tiles were configured by `configure` on this thread (`self`);
        // the stores write the 32x32 f32 `out`, which `&mut` makes ours.
        // SAFETY: row 16 of the 32 that `a` covers.
        let a1 = unsafe { a.add(16 * lda) };
        // SAFETY: see above.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            )
        };
        for s in 0..ksteps {
            // A rows at stride lda * 2 bytes; a B tile is 16 128-byte panel rows, the
            // left (columns 0-15) or right (16-31) half of each.
            // SAFETY: see above; step `s` stays inside the `ksteps * 32` of K covered.
            unsafe {
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm6, [{b} + {sb}*1]",
                    "tileloadd tmm7, [{b} + {sb}*1 + 64]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a.add(s * K_STEP),
                    a1 = in(reg) a1.add(s * K_STEP),
                    b = in(reg) b.add(s * K_STEP * 32),
                    sa = in(reg) lda * 2,
                    sb = in(reg) 128usize,
                    options(nostack, readonly),
                )
            };
        }
        let c = out.0.as_mut_ptr().cast::<f32>();
        // SAFETY: see above: four 16x16 f32 tiles fill the 32x32 block at `c`.
        unsafe {
            asm!(
                "tilestored [{c} + {s}*1], tmm0",
                "tilestored [{c} + {s}*1 + 64], tmm1",
                "tilestored [{c2} + {s}*1], tmm2",
                "tilestored [{c2} + {s}*1 + 64], tmm3",
                c = in(reg) c,
                c2 = in(reg) c.add(16 * BLOCK_COLS),
                s = in(reg) BLOCK_COLS * 4,
                options(nostack),
            )
        };
    }
}

impl Tiles {
    /// `out[r][c]` for rows `r < rows` and the columns of `panels` below `width`: the bf16
    /// rows of `a` (row stride `lda`) times the panels of `w`, over `ksteps` * 32 of K.
    /// Strip by strip, panel by panel, through a 32x32 block.
    ///
    /// # Safety
    /// `a` must hold whole 32-row strips covering `rows` (`lda` a multiple of 32, at
    /// least `ksteps * 32`) and `ksteps * 32 <= w.kp`; `out` must be valid for writes at
    /// `r * ldo + c` for those rows and columns, and no one else may access them.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn product(
        &self,
        a: &[u16],
        lda: usize,
        rows: usize,
        w: &PackedWeight,
        panels: std::ops::Range<usize>,
        ksteps: usize,
        (out, ldo, width): (*mut f32, usize, usize),
    ) {
        let mut block = Block([[0.0; BLOCK_COLS]; BLOCK_ROWS]);
        for r0 in (0..rows).step_by(BLOCK_ROWS) {
            let strip_rows = BLOCK_ROWS.min(rows - r0);
            for p in panels.clone() {
                let c0 = p * BLOCK_COLS;
                let cols = BLOCK_COLS.min(width.min(w.n).saturating_sub(c0));
                // SAFETY: strip r0 is 32 whole rows of `a` (the caller's contract), panel
                // p one of `w`'s, both 64-byte aligned (Line); ksteps * 32 <= w.kp.
                unsafe { self.block(a[r0 * lda..].as_ptr(), lda, w.panel(p), ksteps, &mut block) };
                for (r, src) in block.0[..strip_rows].iter().enumerate() {
                    // SAFETY: row r0 + r < rows and columns c0..c0 + cols of `out` are
                    // ours to write (the caller's contract).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            src.as_ptr(),
                            out.add((r0 + r) * ldo + c0),
                            cols,
                        )
                    };
                }
            }
        }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: releases the tile state this guard configured.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// A 32x32 f32 output block, 64-byte aligned for the tile stores.
#[repr(C, align(64))]
struct Block([[f32; BLOCK_COLS]; BLOCK_ROWS]);
