//! A scalar software model of the AMX instructions the kernel uses (tests, and kernels of
//! their own with `--features software-models`; never serving), so the
//! kernel's packing, tile loops, tails and attention products run on any CPU.
//!
//! Semantics follow the pseudo-code of Intel's SDM / ISA extensions reference:
//!
//! - `LDTILECFG`, palette 1: eight tiles, tile `t` `rows` (byte 48 + t, at most 16) x
//!   `colsb` bytes (u16 at 16 + 2t, at most 64); the reserved bytes and tiles 8-15 must
//!   be zero, `start_row` (byte 1) too. A tile with zero rows or bytes is unconfigured.
//! - `TILELOADD`/`TILESTORED`: row `r` of the tile is the `colsb` bytes at
//!   `base + r * stride`; a load zeroes the rest of the tile, as hardware does.
//! - `TILEZERO`: the whole tile to zero.
//! - `TDPBF16PS C, A, B`: for each row `m` of C, each pair `k < A.colsb / 4`, each column
//!   `n < C.colsb / 4`: `C[m][n] += A[m][2k] * B[k][2n]`, then `+= A[m][2k+1] *
//!   B[k][2n+1]`, bf16 widened to f32. Shapes must agree (`A.rows == C.rows`,
//!   `A.colsb == 4 * B.rows`, `B.colsb == C.colsb`) and the three tiles differ, or
//!   hardware raises #UD.
//! - `TDPBSSD C, A, B` (AMX-INT8): for each row `m`, quad `k < A.colsb / 4`, column
//!   `n < C.colsb / 4`: `C[m][n] += A[m][4k+i] * B[k][4n+i]` for `i` in 0..4, signed
//!   bytes, int32 sums that wrap; the same shape rules. Integer sums are exact, so the
//!   model and the instruction must agree bit for bit.
//!
//! Rounding and order: the SDM's pseudo-code, in its order (k outer, the even product
//! then the odd one), each addition rounded to nearest even in f32. A product of two
//! bf16 values has at most 16 significant bits, so it is exact in f32 and the only
//! rounding is in the additions; as the SDM says, denormal inputs count as zero and
//! denormal results are flushed to zero (at each row write). Real hardware may sum a
//! pair, or more, before rounding; any two orders of summing K exact products in f32
//! differ by at most `2 (K - 1) eps sum |products|`, which is how the tests compare the
//! model with the instructions, and far inside the tolerances (`1e-4 sqrt(K)` absolute
//! against an f64 reference, or relative `1e-2`) that the kernel tests allow.
//!
//! Every access is checked: a tile load or store that leaves the buffer it was given,
//! an unconfigured tile, or mismatched shapes panic (naming the instruction), so a
//! packing or tiling bug fails a test instead of reading garbage.

use super::isa::{Plain, TileConfig, TileIsa};

/// Bytes a palette-1 tile holds at most: 16 rows of 64 bytes.
const TILE_BYTES: usize = 1024;

/// Eight tile registers and their configured shapes, in plain memory.
pub(super) struct Model {
    /// `(rows, colsb)` of tmm0-7, as configured.
    shape: [(usize, usize); 8],
    /// Row `r` of tile `t` is `data[t][64 * r..][..64]`.
    data: [[u8; TILE_BYTES]; 8],
}

impl Model {
    /// The configured shape of tile `t`, or a panic naming `what` if it has none.
    fn shape(&self, t: u8, what: &str) -> (usize, usize) {
        let (rows, colsb) = self.shape[usize::from(t)];
        assert!(rows > 0 && colsb > 0, "{what}: tmm{t} is not configured");
        (rows, colsb)
    }

    /// Row `r` of tile `t`'s `colsb`-byte rows as f32 values (4 bytes each).
    fn f32_at(&self, t: u8, r: usize, i: usize) -> f32 {
        let b = &self.data[usize::from(t)][64 * r + 4 * i..][..4];
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// bf16 value `i` of row `r` of tile `t`, widened to f32; denormals count as zero.
    fn bf16_at(&self, t: u8, r: usize, i: usize) -> f32 {
        let b = &self.data[usize::from(t)][64 * r + 2 * i..][..2];
        let v = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
        if v.is_subnormal() {
            0.0
        } else {
            v
        }
    }

    /// Panics unless the `rows` rows of `colsb` bytes at `start + r * stride` lie in the
    /// first `len` bytes.
    fn check(
        what: &str,
        t: u8,
        (start, stride): (usize, usize),
        (rows, colsb): (usize, usize),
        len: usize,
    ) {
        let end = start + (rows - 1) * stride + colsb;
        assert!(
            end <= len,
            "{what} tmm{t}: {rows} rows of {colsb} bytes at byte {start}, stride {stride}, \
             end at byte {end} of a {len}-byte buffer"
        );
    }
}

impl TileIsa for Model {
    const ATTENTION: &'static str = "bf16-amx-model";

    fn unavailable() -> Option<&'static str> {
        None
    }

    fn unavailable_int8() -> Option<&'static str> {
        None
    }

    fn configure(cfg: &TileConfig) -> Self {
        let c = &cfg.0;
        assert_eq!(
            c[0], 1,
            "ldtilecfg: palette {} (the model knows palette 1)",
            c[0]
        );
        assert_eq!(c[1], 0, "ldtilecfg: start_row must be 0");
        assert!(
            c[2..16]
                .iter()
                .chain(&c[32..48])
                .chain(&c[56..64])
                .all(|&b| b == 0),
            "ldtilecfg: reserved bytes (or tiles 8-15) set"
        );
        let mut shape = [(0, 0); 8];
        for (t, s) in shape.iter_mut().enumerate() {
            let colsb = usize::from(u16::from_le_bytes([c[16 + 2 * t], c[17 + 2 * t]]));
            let rows = usize::from(c[48 + t]);
            assert!(
                rows <= 16 && colsb <= 64,
                "ldtilecfg: tmm{t} of {rows} rows x {colsb} bytes exceeds palette 1"
            );
            assert_eq!(rows == 0, colsb == 0, "ldtilecfg: tmm{t} half configured");
            *s = (rows, colsb);
        }
        Model {
            shape,
            data: [[0; TILE_BYTES]; 8],
        }
    }

    fn zero<const T: u8>(&mut self) {
        self.shape(T, "tilezero");
        self.data[usize::from(T)] = [0; TILE_BYTES];
    }

    unsafe fn load<const T: u8, E: Plain>(&mut self, src: &[E], at: usize, stride: usize) {
        let (rows, colsb) = self.shape(T, "tileloadd");
        let src = bytes(src);
        let start = size_of::<E>() * at;
        Self::check("tileloadd", T, (start, stride), (rows, colsb), src.len());
        let tile = &mut self.data[usize::from(T)];
        *tile = [0; TILE_BYTES];
        for r in 0..rows {
            tile[64 * r..][..colsb].copy_from_slice(&src[start + r * stride..][..colsb]);
        }
    }

    unsafe fn store<const T: u8, E: Plain>(&mut self, dst: &mut [E], at: usize, stride: usize) {
        let (rows, colsb) = self.shape(T, "tilestored");
        let dst = bytes_mut(dst);
        let start = size_of::<E>() * at;
        Self::check("tilestored", T, (start, stride), (rows, colsb), dst.len());
        for r in 0..rows {
            dst[start + r * stride..][..colsb]
                .copy_from_slice(&self.data[usize::from(T)][64 * r..][..colsb]);
        }
    }

    fn dot<const C: u8, const A: u8, const B: u8>(&mut self) {
        let (c_rows, c_colsb) = self.shape(C, "tdpbf16ps");
        let (a_rows, a_colsb) = self.shape(A, "tdpbf16ps");
        let (b_rows, b_colsb) = self.shape(B, "tdpbf16ps");
        assert!(
            C != A && C != B && A != B,
            "tdpbf16ps tmm{C}, tmm{A}, tmm{B}: the tiles must differ"
        );
        assert!(
            a_rows == c_rows
                && a_colsb == 4 * b_rows
                && b_colsb == c_colsb
                && c_colsb.is_multiple_of(4),
            "tdpbf16ps tmm{C}, tmm{A}, tmm{B}: shapes {c_rows}x{c_colsb}, {a_rows}x{a_colsb}, \
             {b_rows}x{b_colsb} bytes do not agree"
        );
        let (pairs, cols) = (a_colsb / 4, c_colsb / 4);
        let mut b = [[[0f32; 2]; 16]; 16];
        for (k, row) in b.iter_mut().enumerate().take(pairs) {
            for (n, pair) in row.iter_mut().enumerate().take(cols) {
                *pair = [self.bf16_at(B, k, 2 * n), self.bf16_at(B, k, 2 * n + 1)];
            }
        }
        for m in 0..c_rows {
            let mut acc = [0f32; 16];
            for (n, v) in acc.iter_mut().enumerate().take(cols) {
                let v0 = self.f32_at(C, m, n);
                *v = if v0.is_subnormal() { 0.0 } else { v0 };
            }
            for (k, b) in b.iter().enumerate().take(pairs) {
                let (a0, a1) = (self.bf16_at(A, m, 2 * k), self.bf16_at(A, m, 2 * k + 1));
                for (v, &[b0, b1]) in acc.iter_mut().zip(b).take(cols) {
                    *v += a0 * b0;
                    *v += a1 * b1;
                }
            }
            let row = &mut self.data[usize::from(C)][64 * m..][..64];
            row.fill(0);
            for (dst, v) in row.chunks_exact_mut(4).zip(&acc).take(cols) {
                let v = if v.is_subnormal() { 0.0 } else { *v };
                dst.copy_from_slice(&v.to_le_bytes());
            }
        }
    }

    fn dot_i8<const C: u8, const A: u8, const B: u8>(&mut self) {
        let (c_rows, c_colsb) = self.shape(C, "tdpbssd");
        let (a_rows, a_colsb) = self.shape(A, "tdpbssd");
        let (b_rows, b_colsb) = self.shape(B, "tdpbssd");
        assert!(
            C != A && C != B && A != B,
            "tdpbssd tmm{C}, tmm{A}, tmm{B}: the tiles must differ"
        );
        assert!(
            a_rows == c_rows
                && a_colsb == 4 * b_rows
                && b_colsb == c_colsb
                && c_colsb.is_multiple_of(4),
            "tdpbssd tmm{C}, tmm{A}, tmm{B}: shapes {c_rows}x{c_colsb}, {a_rows}x{a_colsb}, \
             {b_rows}x{b_colsb} bytes do not agree"
        );
        let (quads, cols) = (a_colsb / 4, c_colsb / 4);
        let byte =
            |t: u8, r: usize, i: usize| i32::from(self.data[usize::from(t)][64 * r + i] as i8);
        let mut rows = [[0i32; 16]; 16];
        for (m, acc) in rows.iter_mut().enumerate().take(c_rows) {
            for (n, v) in acc.iter_mut().enumerate().take(cols) {
                let c = &self.data[usize::from(C)][64 * m + 4 * n..][..4];
                *v = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                for k in 0..quads {
                    for i in 0..4 {
                        let p = byte(A, m, 4 * k + i) * byte(B, k, 4 * n + i);
                        *v = v.wrapping_add(p);
                    }
                }
            }
        }
        for (m, acc) in rows.iter().enumerate().take(c_rows) {
            let row = &mut self.data[usize::from(C)][64 * m..][..64];
            row.fill(0);
            for (dst, v) in row.chunks_exact_mut(4).zip(acc).take(cols) {
                dst.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// A slice of plain elements as its bytes.
fn bytes<E: Plain>(s: &[E]) -> &[u8] {
    // SAFETY: `Plain` types have no padding, so every byte of the slice is initialised.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), size_of_val(s)) }
}

/// A mutable slice of plain elements as its bytes.
fn bytes_mut<E: Plain>(s: &mut [E]) -> &mut [u8] {
    // SAFETY: `Plain` types have no padding and take every bit pattern, so any bytes
    // written leave valid elements.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), size_of_val(s)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with tile t `rows[t]` x `colsb[t]` bytes.
    fn config(shapes: &[(u8, u16)]) -> TileConfig {
        let mut cfg = TileConfig::uniform(0, 0);
        for (t, &(rows, colsb)) in shapes.iter().enumerate() {
            cfg.0[16 + 2 * t..18 + 2 * t].copy_from_slice(&colsb.to_le_bytes());
            cfg.0[48 + t] = rows;
        }
        cfg
    }

    fn bf16(v: f32) -> u16 {
        half::bf16::from_f32(v).to_bits()
    }

    /// The pair order and the sums of TDPBF16PS on a small hand-checked case, shaped by
    /// the config (C 2x3 f32, A 2 rows x 2 pairs, B 2 pairs x 3 columns), accumulating
    /// over two instructions.
    #[test]
    fn tdpbf16ps_multiplies_pairs_as_the_sdm_says() {
        let mut t = Model::configure(&config(&[(2, 12), (2, 8), (2, 12)]));
        // A[m][i]: row m, bf16 element i (i = 2k + e).
        let a: [[f32; 4]; 2] = [[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.25, 8.0]];
        // B[k][j]: pair row k, bf16 element j (j = 2n + e).
        let b: [[f32; 6]; 2] = [
            [1.0, 10.0, 2.0, 20.0, 3.0, 30.0],
            [0.5, -1.0, 4.0, 0.0, -2.0, 1.0],
        ];
        let a_bits: Vec<u16> = a.iter().flatten().map(|&v| bf16(v)).collect();
        let b_bits: Vec<u16> = b.iter().flatten().map(|&v| bf16(v)).collect();
        let mut c = [f32::NAN; 6];
        // SAFETY: the model checks every access (the test is that it does not panic).
        unsafe {
            t.load::<1, u16>(&a_bits, 0, 8);
            t.load::<2, u16>(&b_bits, 0, 12);
        }
        t.zero::<0>();
        t.dot::<0, 1, 2>();
        t.dot::<0, 1, 2>();
        // SAFETY: as above.
        unsafe { t.store::<0, f32>(&mut c, 0, 12) };
        for m in 0..2 {
            for n in 0..3 {
                let want: f32 = (0..2)
                    .map(|k| a[m][2 * k] * b[k][2 * n] + a[m][2 * k + 1] * b[k][2 * n + 1])
                    .sum();
                assert_eq!(c[m * 3 + n], 2.0 * want, "C[{m}][{n}]");
            }
        }
        // Row 0, column 0 by hand: 1*1 + 2*10 + 3*0.5 + 4*(-1), twice.
        assert_eq!(c[0], 2.0 * 18.5);
    }

    #[test]
    fn denormal_products_are_flushed_and_bytes_keep_their_order() {
        let mut t = Model::configure(&config(&[(1, 4), (1, 4), (1, 4), (1, 8)]));
        let tiny = [bf16(1e-20), 0];
        let mut c = [f32::NAN];
        // SAFETY: the model checks every access.
        unsafe {
            t.load::<1, u16>(&tiny, 0, 4);
            t.load::<2, u16>(&tiny, 0, 4);
        }
        t.zero::<0>();
        t.dot::<0, 1, 2>();
        // SAFETY: as above.
        unsafe { t.store::<0, f32>(&mut c, 0, 4) };
        assert_eq!(c[0].to_bits(), 0, "1e-40 flushed to +0");
        let mut wide = [f32::NAN; 2];
        // SAFETY: as above.
        unsafe {
            t.load::<3, u16>(&[bf16(1.0); 4], 0, 8);
            t.store::<3, f32>(&mut wide, 0, 8);
        }
        // Two bf16 1.0s, little-endian, read back as one f32's bits.
        assert_eq!(wide.map(f32::to_bits), [u32::from(bf16(1.0)) * 0x1_0001; 2]);
    }

    #[test]
    #[should_panic(expected = "tileloadd tmm4: 16 rows of 64 bytes at byte 0, stride 128")]
    fn a_load_past_its_buffer_panics() {
        let mut t = Model::configure(&TileConfig::uniform(16, 64));
        // 16 rows at a 128-byte stride need 15 * 128 + 64 bytes; give one u16 less.
        let src = vec![0u16; (15 * 128 + 64) / 2 - 1];
        // SAFETY: the model checks the access: this is the panic under test.
        unsafe { t.load::<4, u16>(&src, 0, 128) };
    }

    #[test]
    #[should_panic(expected = "tilestored tmm0")]
    fn a_store_past_its_buffer_panics() {
        let mut t = Model::configure(&TileConfig::uniform(16, 64));
        let mut dst = vec![0f32; 16 * 16];
        // SAFETY: the model checks the access: this is the panic under test.
        unsafe { t.store::<0, f32>(&mut dst, 1, 64) };
    }

    #[test]
    #[should_panic(expected = "do not agree")]
    fn mismatched_shapes_panic() {
        let mut t = Model::configure(&config(&[(16, 64), (16, 64), (8, 64)]));
        t.dot::<0, 1, 2>();
    }

    #[test]
    #[should_panic(expected = "tmm5 is not configured")]
    fn an_unconfigured_tile_panics() {
        let mut t = Model::configure(&config(&[(16, 64); 5]));
        t.zero::<5>();
    }
}
