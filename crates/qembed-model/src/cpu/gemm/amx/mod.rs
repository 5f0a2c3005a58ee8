//! bf16 linear layers on Intel AMX tiles (Sapphire Rapids and later), with no library.
//!
//! With bf16 weights the GEMMs are most of a CPU forward pass. candle's CPU matmul
//! converts bf16 to f32 (~150 GFLOP/s) and MKL's bf16 GEMM reached ~690 GFLOP per
//! CPU-second on our 2-vCPU benchmark machine, where PyTorch's oneDNN reaches ~1,300:
//! both of those still pack the weights on every call. One `TDPBF16PS` multiplies a
//! 16x32 bf16 tile by a 32x16 one into 16x16 f32 accumulators; what limits it is
//! feeding the tiles from cache. So the weights are packed once, at load, into the
//! layout a tile load reads in one pass (and replace the dense copy: no extra memory),
//! the activations are rounded to bf16 into a buffer of whole tiles, and every buffer a
//! tile touches is 64-byte aligned: a misaligned tile load splits each 64-byte row
//! across two cache lines, which halved the throughput in our measurements.
//!
//! The micro-kernel keeps a 32x32 output block in four accumulator tiles (two A tiles
//! by two B tiles: four loads per four products, the fewest the eight tile registers
//! allow) over the whole K, then stores it once. A task takes a strip of output
//! columns sized so its packed weights stay in L2 and walks down the rows.
//!
//! The instructions sit behind a trait (`isa`): the kernel is written once over it and
//! runs on the real instructions, or in tests on a scalar model of them (`model`), so
//! packing, tiling, tails and attention are tested on CPUs without AMX too; where the CPU
//! has AMX the tests run both and compare them. The model is built for tests only (and
//! with `--features software-models`, as kernels of their own for the model-level
//! tests): serving never sees it.
//!
//! The int8 kernel on the same tiles (`TDPBSSD`, AMX-INT8) is [`int8`]'s.
//!
//! Set `QEMBED_AMX=0` (or `false`, `off`) to turn both off, e.g. to compare against MKL
//! or candle.

use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::{swiglu_halves, Gemm, PreparedWeight, Prologue};
use crate::cpu::attention::{causal_exp, AttentionProducts, QkvRows};
use crate::cpu::par::SyncPtr;

mod attention;
mod int8;
mod isa;
#[cfg(any(test, feature = "software-models"))]
mod model;
mod pack;
mod round;
mod tiles;

use super::bf16::{bf16_bits, round_input_row, round_row};
use attention::group_attention;
pub(super) use int8::AMX_INT8;
#[cfg(feature = "software-models")]
pub(super) use int8::AMX_INT8_MODEL;
use isa::{Hw, TileConfig, TileIsa};
use pack::PackedWeight;
use round::round_rows;
use tiles::Tiles;

/// A 64-byte, 64-byte-aligned run of 32 bf16 values (their bits): a tile row.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u16; 32]);

/// Output columns a tile block covers (two 16-column B tiles).
const BLOCK_COLS: usize = 32;
/// Rows a tile block covers (two 16-row A tiles).
const BLOCK_ROWS: usize = 32;
/// K elements one `TDPBF16PS` consumes.
const K_STEP: usize = 32;
/// Packed weight bytes a task keeps hot (in L2) while it walks down the rows.
const TASK_WEIGHT_BYTES: usize = 512 << 10;
/// Row strips (of 32 rows) per task: enough work to amortise the tile configuration.
const TASK_STRIPS: usize = 8;

/// Whether linear layers with bf16 weights run on AMX: the CPU has AMX-BF16, Linux
/// granted this process the tile state, and `QEMBED_AMX` is not `0`/`false`/`off`.
pub fn available() -> bool {
    static AMX: OnceLock<bool> = OnceLock::new();
    *AMX.get_or_init(|| {
        let off = std::env::var("QEMBED_AMX").is_ok_and(|v| {
            matches!(
                v.to_ascii_lowercase().as_str(),
                "0" | "false" | "off" | "no"
            )
        });
        !off && detect()
    })
}

/// Whether int8 linear layers can run on AMX-INT8 tiles: [`available`] and the CPU has
/// AMX-INT8.
pub fn int8_available() -> bool {
    static INT8: OnceLock<bool> = OnceLock::new();
    *INT8.get_or_init(|| {
        // CPUID leaf 7: EDX bit 25 is AMX-INT8.
        #[allow(unused_unsafe)]
        // SAFETY: CPUID leaf 7 exists on every x86-64 CPU that runs this code.
        let edx = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx;
        available() && edx & (1 << 25) != 0
    })
}

fn detect() -> bool {
    const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID leaf 7 exists on every x86-64 CPU that runs this code (std's
    // feature detection reads it too).
    let edx = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx;
    if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
        return false;
    }
    // Linux (5.16+) hands out the 8 KiB tile register state on request, per process.
    // SAFETY: arch_prctl with these codes reads/writes only the u64 we pass.
    unsafe {
        if libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) != 0
        {
            return false;
        }
        let mut granted: u64 = 0;
        let rc = libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_GET_XCOMP_PERM,
            &mut granted as *mut u64,
        );
        rc == 0 && granted & (1 << XFEATURE_XTILEDATA) != 0
    }
}

/// `a @ w.T` for `m` rows of activations already rounded by [`round_rows`] (width
/// `w.kp`): f32 `m x n`, products of bf16 values accumulated in f32, on the tile
/// instructions `U` ([`Hw`] but in tests).
fn matmul<U: TileIsa>(a: &[Line], m: usize, w: &PackedWeight) -> candle_core::Result<Vec<f32>> {
    let mut out: Vec<f32> = Vec::with_capacity(m * w.n);
    let dst = SyncPtr(out.spare_capacity_mut().as_mut_ptr().cast());
    // SAFETY: `out` has room for the m x n output, ours alone.
    unsafe { matmul_to::<U>(a, m, w, (dst, false))? };
    // SAFETY: the tasks cover every (strip, panel), so all m x n values were written.
    unsafe { out.set_len(m * w.n) };
    Ok(out)
}

/// [`matmul`] into `dst` (`m x n`), or with `add` added to what it holds.
///
/// # Safety
/// `dst` must be valid for writes of `m x n` f32 (reads too, initialised, with `add`)
/// that nobody else accesses meanwhile. On `Ok` all of them were written.
unsafe fn matmul_to<U: TileIsa>(
    a: &[Line],
    m: usize,
    w: &PackedWeight,
    (dst, add): (SyncPtr, bool),
) -> candle_core::Result<()> {
    let (n, kp) = (w.n, w.kp);
    if a.len() < m.next_multiple_of(BLOCK_ROWS) * kp / 32 {
        candle_core::bail!("amx: activations shorter than {m} rows of {kp}");
    }
    if let Some(why) = U::unavailable() {
        candle_core::bail!("{why}");
    }
    let a: &[u16] = lines(a);
    for_each_task((m, n), kp * 64, |rows, panels| {
        let mut tiles = Tiles::<U>::configure();
        let (r0, rows) = (rows.start, rows.len());
        // SAFETY: `a` has whole 32-row strips of kp values from row r0 on; the task's
        // rows r0..r0 + rows and its panels' columns are its own part of the m x n
        // output (row stride n).
        unsafe {
            tiles.product(
                &a[r0 * kp..],
                kp,
                rows,
                w,
                panels,
                kp / K_STEP,
                (dst.at(r0 * n), n, n),
                add,
            )
        };
    });
    Ok(())
}

/// Calls `task(rows, panels)` in parallel for each task of an `m x n` product whose
/// weight panels (32 columns) are `panel_bytes` each: a task owns up to 8 panels within
/// [`TASK_WEIGHT_BYTES`] (they stay in L2) and up to [`TASK_STRIPS`] 32-row strips,
/// `rows` its output rows and `panels` its panel indices. The tasks cover the product
/// once. `panel_bytes` is not zero.
fn for_each_task(
    (m, n): (usize, usize),
    panel_bytes: usize,
    task: impl Fn(std::ops::Range<usize>, std::ops::Range<usize>) + Sync,
) {
    let panels = n.div_ceil(BLOCK_COLS);
    let panels_per_task = (TASK_WEIGHT_BYTES / panel_bytes).clamp(1, 8);
    let strips = m.div_ceil(BLOCK_ROWS);
    let tasks: Vec<(usize, usize)> = (0..panels)
        .step_by(panels_per_task)
        .flat_map(|p0| (0..strips).step_by(TASK_STRIPS).map(move |s0| (p0, s0)))
        .collect();
    tasks.into_par_iter().for_each(|(p0, s0)| {
        let r0 = s0 * BLOCK_ROWS;
        let rows = r0..(r0 + TASK_STRIPS * BLOCK_ROWS).min(m);
        task(rows, p0..(p0 + panels_per_task).min(panels));
    });
}

/// Initialised lines as writable-only bf16 slots for [`round_row`] (sound: only valid
/// `u16`s are ever written through them).
fn slots(lines: &mut [Line]) -> &mut [MaybeUninit<u16>] {
    // SAFETY: Line is repr(C) [u16; 32] with no padding, and MaybeUninit<u16> has
    // u16's layout.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len() * 32) }
}

fn lines(lines: &[Line]) -> &[u16] {
    // SAFETY: Line is repr(C) [u16; 32] with no padding.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast(), lines.len() * 32) }
}

/// The AMX kernel of the CPU family, on the tile instructions `U` under the name
/// `name`: bf16 weights only.
pub(super) struct Amx<U> {
    name: &'static str,
    isa: PhantomData<fn() -> U>,
}

pub(super) static AMX: &dyn Gemm = &Amx::<Hw> {
    name: NAME,
    isa: PhantomData,
};

/// The kernel on the software model of the tiles, a kernel of its own for the
/// model-level tests on CPUs without AMX (`--features software-models`).
#[cfg(feature = "software-models")]
pub(super) static AMX_MODEL: &dyn Gemm = &Amx::<model::Model> {
    name: "amx-model",
    isa: PhantomData,
};

const NAME: &str = "amx";

impl<U: TileIsa + 'static> Gemm for Amx<U> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn unavailable(&self) -> Option<String> {
        U::unavailable().map(|_| {
            "needs AMX-BF16 and the tile state from Linux (5.16+), and QEMBED_AMX not off".into()
        })
    }

    fn supports(&self, dtype: DType) -> bool {
        dtype == DType::BF16
    }

    fn prepare(&self, weight: Tensor) -> crate::Result<PreparedWeight> {
        let (n, k) = weight.dims2()?;
        let values = weight.flatten_all()?.to_vec1::<half::bf16>()?;
        Ok(PreparedWeight::new(
            self.name,
            PackedWeight::pack(&values, n, k)?,
        ))
    }

    fn linear(
        &self,
        x: &Tensor,
        weight: &PreparedWeight,
        input: Prologue,
    ) -> crate::Result<Tensor> {
        let w = weight.form::<PackedWeight>(self.name)?;
        super::op::linear(("amx-linear", product::<U>), x, (w, w.n), input)
    }

    fn linear_swiglu(
        &self,
        x: &Tensor,
        weight: &PreparedWeight,
        input: Prologue,
    ) -> Option<crate::Result<Tensor>> {
        let product: crate::cpu::gemm::op::Product<PackedWeight> = product_swiglu::<U>;
        let op = (self.name, "amx-linear-swiglu", product);
        crate::cpu::gemm::op::swiglu(op, x, weight, input, |w| {
            swiglu_halves(w.n, BLOCK_COLS).then_some(w.n / 2)
        })
    }

    fn linear_add(
        &self,
        out: &Tensor,
        x: &Tensor,
        weight: &PreparedWeight,
        input: Prologue,
    ) -> Option<crate::Result<()>> {
        let product: crate::cpu::gemm::op::ProductAdd<PackedWeight> = product_add::<U>;
        crate::cpu::gemm::op::add(
            (self.name, "amx-linear-add", product),
            out,
            x,
            weight,
            input,
        )
    }

    /// Scores and weighted values as bf16 products on tiles: the model's linear layers
    /// are bf16 anyway.
    fn attention(&self) -> AttentionProducts {
        AttentionProducts::PerGroup(U::ATTENTION, group_attention::<U>)
    }
}

/// `input(x) @ w.T` for `(m, width)` rows of `x`: the prologue (`input`) is applied to
/// the rows while they are rounded to bf16, which saves writing and re-reading an f32
/// activation, then the tiles multiply them.
fn product<U: TileIsa>(
    x: &[f32],
    (m, width): (usize, usize),
    weight: &PackedWeight,
    input: Prologue,
) -> candle_core::Result<Vec<f32>> {
    let a = AmxLinear { weight, input }.round(x, m, width)?;
    matmul::<U>(&a, m, weight)
}

/// `out += input(x) @ w.T` in place, `out` `m x n`.
fn product_add<U: TileIsa>(
    x: &[f32],
    (m, width): (usize, usize),
    weight: &PackedWeight,
    input: Prologue,
    out: &mut [f32],
) -> candle_core::Result<()> {
    if out.len() != m * weight.n {
        candle_core::bail!(
            "{NAME}: an output of {} values for {m} x {}",
            out.len(),
            weight.n
        );
    }
    let a = AmxLinear { weight, input }.round(x, m, width)?;
    // SAFETY: `out` is the m x n output, initialised and borrowed mutably.
    unsafe { matmul_to::<U>(&a, m, weight, (SyncPtr(out.as_mut_ptr()), true)) }
}

/// `swiglu(input(x) @ w.T)` for a gate_up weight whose halves are whole panels:
/// f32 `m x n / 2` ([`Tiles::product_swiglu`]).
fn product_swiglu<U: TileIsa>(
    x: &[f32],
    (m, width): (usize, usize),
    w: &PackedWeight,
    input: Prologue,
) -> candle_core::Result<Vec<f32>> {
    if !super::swiglu_halves(w.n, BLOCK_COLS) {
        candle_core::bail!(
            "amx: {} rows do not split into two halves of whole panels",
            w.n
        );
    }
    let a = AmxLinear { weight: w, input }.round(x, m, width)?;
    if let Some(why) = U::unavailable() {
        candle_core::bail!("{why}");
    }
    let (k, kp) = (w.n / 2, w.kp);
    let a: &[u16] = lines(&a);
    let mut out: Vec<f32> = Vec::with_capacity(m * k);
    let dst = SyncPtr(out.spare_capacity_mut().as_mut_ptr().cast());
    // A task's panels are gate panels, each read with its up twin.
    for_each_task((m, k), 2 * kp * 64, |rows, panels| {
        let mut tiles = Tiles::<U>::configure();
        let (r0, rows) = (rows.start, rows.len());
        // SAFETY: `a` has whole 32-row strips of kp values from row r0 on; the task's
        // rows and its gate panels' columns are its own part of the m x k output.
        unsafe { tiles.product_swiglu(&a[r0 * kp..], rows, w, panels, (dst.at(r0 * k), k)) };
    });
    // SAFETY: the tasks cover every (strip, gate panel), so all m x k values were
    // written.
    unsafe { out.set_len(m * k) };
    Ok(out)
}

/// A layer's weight and prologue, for rounding its input rows.
struct AmxLinear<'a> {
    weight: &'a PackedWeight,
    input: Prologue<'a>,
}

impl AmxLinear<'_> {
    /// `x` (`m` rows of `width`) as rounded activations for this layer.
    fn round(&self, x: &[f32], m: usize, width: usize) -> candle_core::Result<Vec<Line>> {
        let (k, kp) = (self.weight.k, self.weight.kp);
        self.input.check(NAME, x, (m, width), k)?;
        // SAFETY: round_input_row writes its whole `dst` (values, then zero padding).
        Ok(unsafe { round_rows(m, kp, |r, dst| round_input_row(dst, x, r, k, self.input)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gemm::test_values as values;

    /// `x @ w.T` through the op's plain input path, on the instructions `U`.
    fn plain<U: TileIsa>(x: &[f32], m: usize, w: &PackedWeight) -> candle_core::Result<Vec<f32>> {
        let op = AmxLinear {
            weight: w,
            input: Prologue::None,
        };
        let width = x.len().checked_div(m).unwrap_or(w.k);
        matmul::<U>(&op.round(x, m, width)?, m, w)
    }

    fn round(v: f32) -> f32 {
        half::bf16::from_f32(v).to_f32()
    }

    /// Whether the real instructions run here as well as the software model (which every
    /// test runs): where they do not, says so loudly on stderr, or fails when
    /// `QEMBED_REQUIRE_AMX` is set (CI sets it where /proc/cpuinfo lists amx_bf16).
    fn hardware_too() -> bool {
        crate::cpu::gemm::kernel_or_model(NAME)
    }

    /// Against an f64 product of the same bf16-rounded values, over shapes with every
    /// kind of tail: rows not a multiple of 32 (and of 16), columns not a multiple of 32,
    /// K not a multiple of 32, a single row and none. Through the model always, and
    /// where the CPU has AMX through the instructions too, which must then agree with
    /// the model to within what the order of f32 sums can change.
    #[test]
    fn matches_a_reference_product_on_ragged_shapes() {
        let hardware = hardware_too();
        for &(m, n, k) in &[
            (1, 32, 32),
            (17, 40, 50),
            (33, 64, 96),
            (64, 100, 1024),
            (100, 7, 3),
            (300, 300, 200),
        ] {
            let x = values(m * k, 1 + m as u64);
            let w = values(n * k, 2 + n as u64);
            let wb: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let packed = PackedWeight::pack(&wb, n, k).unwrap();
            let model = plain::<model::Model>(&x, m, &packed).unwrap();
            let real = hardware.then(|| plain::<Hw>(&x, m, &packed).unwrap());
            assert_eq!(model.len(), m * n);
            let mut worst = 0f64;
            for i in 0..m {
                for j in 0..n {
                    let terms =
                        (0..k).map(|t| round(x[i * k + t]) as f64 * round(w[j * k + t]) as f64);
                    let want: f64 = terms.clone().sum();
                    let magnitude: f64 = terms.map(f64::abs).sum();
                    let at = i * n + j;
                    for (what, got) in [("model", Some(&model)), ("amx", real.as_ref())] {
                        let Some(got) = got else { continue };
                        let diff = (got[at] as f64 - want).abs();
                        assert!(
                            diff < 1e-4 * (k as f64).sqrt(),
                            "{what} {m}x{n}x{k} at ({i},{j}): {} vs {want}",
                            got[at]
                        );
                    }
                    if let Some(real) = &real {
                        let diff = (real[at] as f64 - model[at] as f64).abs();
                        let bound = 2.0 * k as f64 * f32::EPSILON as f64 * magnitude + 1e-30;
                        assert!(
                            diff <= bound,
                            "{m}x{n}x{k} at ({i},{j}): amx {} vs model {} (bound {bound:e})",
                            real[at],
                            model[at]
                        );
                        worst = worst.max(diff / bound);
                    }
                }
            }
            if hardware {
                eprintln!("{m}x{n}x{k}: amx vs model, worst {worst:.3} of the order bound");
            }
        }
    }

    /// Causal GQA attention against an f64 reference that rounds where the kernel does
    /// (`crate::cpu::attention::tests::check_group_attention`): through
    /// the model, and the instructions where the CPU has them.
    #[test]
    fn group_attention_matches_a_reference() {
        use crate::cpu::attention::tests::check_group_attention;
        check_group_attention("model", group_attention::<model::Model>);
        if hardware_too() {
            check_group_attention("amx", group_attention::<Hw>);
        }
    }

    /// Queries and keys normed and rotated as the kernel takes them give the bits of a
    /// copy normed and rotated first
    /// (`crate::cpu::attention::tests::check_fused_norm`).
    #[test]
    fn group_attention_norms_as_the_copy_did() {
        use crate::cpu::attention::tests::check_fused_norm;
        check_fused_norm("model", group_attention::<model::Model>);
        if hardware_too() {
            check_fused_norm("amx", group_attention::<Hw>);
        }
    }

    /// The fused input stages give what the stage in f32 followed by the plain GEMM
    /// gives, through the model and the instructions where the CPU has them.
    #[test]
    fn fused_norm_and_swiglu_inputs_match_the_unfused_ones() {
        fused_case::<model::Model>();
        if hardware_too() {
            fused_case::<Hw>();
        }
    }

    fn fused_case<U: TileIsa>() {
        let (m, n, k) = (45, 70, 96);
        let w: Vec<half::bf16> = values(n * k, 3)
            .iter()
            .map(|&v| half::bf16::from_f32(v))
            .collect();
        let packed = PackedWeight::pack(&w, n, k).unwrap();
        let run = |x: &[f32], input: Prologue| {
            let op = AmxLinear {
                weight: &packed,
                input,
            };
            matmul::<U>(&op.round(x, m, x.len() / m).unwrap(), m, &packed).unwrap()
        };
        let close = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() <= 1e-2 * (1.0 + y.abs()))
        };
        let x = values(m * k, 4);
        let norm_w = values(k, 5);
        let normed: Vec<f32> = x
            .chunks(k)
            .flat_map(|row| {
                let ms = row.iter().map(|v| v * v).sum::<f32>() / k as f32;
                let inv = 1.0 / (ms + 1e-6).sqrt();
                row.iter()
                    .zip(&norm_w)
                    .map(move |(v, w)| v * inv * w)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(close(
            &run(&x, Prologue::RmsNorm(&norm_w, 1e-6)),
            &run(&normed, Prologue::None)
        ));
        let gate_up = values(m * 2 * k, 6);
        let act: Vec<f32> = gate_up
            .chunks(2 * k)
            .flat_map(|row| {
                let (g, u) = row.split_at(k);
                g.iter()
                    .zip(u)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(close(
            &run(&gate_up, Prologue::SwiGlu),
            &run(&act, Prologue::None)
        ));
        // Widths that do not fit the layer are errors, not panics.
        let op = AmxLinear {
            weight: &packed,
            input: Prologue::SwiGlu,
        };
        assert!(op.round(&x, m, k).is_err());
    }

    /// The SwiGLU fused into the gate_up product gives the plain product's SwiGLU, bit
    /// for bit: one to three gate panels, K with a tail, rows in part-strips and over
    /// several tasks. A gate_up whose halves are not whole panels is not fused.
    #[test]
    fn fused_swiglu_equals_the_plain_product() {
        fused_swiglu_case::<model::Model>("model");
        if hardware_too() {
            fused_swiglu_case::<Hw>("amx");
        }
        assert!(!crate::cpu::gemm::swiglu_halves(2 * 40, BLOCK_COLS));
        assert!(!crate::cpu::gemm::swiglu_halves(0, BLOCK_COLS));
    }

    /// The product added in place to a residual gives the plain product added after
    /// it, bit for bit: a partial last panel, K with a tail, rows over several tasks.
    #[test]
    fn fused_add_equals_the_plain_product() {
        fused_add_case::<model::Model>("model");
        if hardware_too() {
            fused_add_case::<Hw>("amx");
        }
    }

    fn fused_add_case<U: TileIsa>(named: &str) {
        for (n, k) in [(45, 50), (64, 130)] {
            let w: Vec<half::bf16> = values(n * k, 9)
                .iter()
                .map(|&v| half::bf16::from_f32(v))
                .collect();
            let packed = PackedWeight::pack(&w, n, k).unwrap();
            crate::cpu::gemm::check_fused_add(
                named,
                (n, k),
                &[1, 33, 300],
                &|x, mk, p, out| product_add::<U>(x, mk, &packed, p, out).unwrap(),
                &|x, mk, p| product::<U>(x, mk, &packed, p).unwrap(),
            );
        }
    }

    fn fused_swiglu_case<U: TileIsa>(named: &str) {
        for (k, hidden) in [(32, 50), (96, 130)] {
            let w: Vec<half::bf16> = values(2 * k * hidden, 7)
                .iter()
                .map(|&v| half::bf16::from_f32(v))
                .collect();
            let packed = PackedWeight::pack(&w, 2 * k, hidden).unwrap();
            crate::cpu::gemm::check_fused_swiglu(
                named,
                (k, hidden),
                &[1, 33, 300],
                &|x, mw, p| product_swiglu::<U>(x, mw, &packed, p).unwrap(),
                &|x, mw, p| product::<U>(x, mw, &packed, p).unwrap(),
            );
        }
    }

    #[test]
    fn rejects_mismatched_shapes() {
        let wb = vec![half::bf16::ZERO; 6];
        assert!(PackedWeight::pack(&wb, 4, 2).is_err());
        let packed = PackedWeight::pack(&wb, 3, 2).unwrap();
        assert!(plain::<model::Model>(&[0.0; 5], 2, &packed).is_err());
        assert!(plain::<Hw>(&[0.0; 5], 2, &packed).is_err());
    }
}
