//! How a register-tiled GEMM kernel (AVX2, AVX-512) splits `m x n x k` into rayon
//! tasks and orders its tiles so that the weights stream from memory once and stay in
//! L2 while the rows pass them.
//!
//! The kernels pack their weights in panels of `nr` output columns and their
//! activations in panels of `mr` rows, both as runs of K "steps" (one value, or one
//! pair of bf16 values). A tile is one (row panel, column panel) over `kc` steps. A task
//! owns a block of column panels (its weights, per K pass, within
//! [`TASK_WEIGHT_BYTES`]) and a block of row panels.

use rayon::prelude::*;

use super::Prologue;
use crate::cpu::par::SyncPtr;

/// Weight bytes (per K pass) a task keeps in L2 while it walks down its rows.
const TASK_WEIGHT_BYTES: usize = 256 << 10;
/// Row panels per task, for large batches: enough work per task to amortise it.
const TASK_ROW_PANELS: usize = 16;
/// Packed input bytes (all of K) a task may keep in L2 and still walk each weight
/// panel down its whole K in one go.
const TASK_ROW_BYTES: usize = 256 << 10;

/// Where a register-tiled kernel's product goes ([`Blocking::for_each_tile_to`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Output {
    /// An `m x n` output of its own.
    Plain,
    /// The SwiGLU of a gate_up product, `m x n / 2`.
    SwiGlu,
    /// Added in place to an `m x n` residual.
    Add,
}

/// A kernel's tile and panel sizes.
pub(super) struct Blocking {
    /// Rows of a tile (and of an activation panel).
    pub(super) mr: usize,
    /// Output columns of a tile (and of a weight panel).
    pub(super) nr: usize,
    /// K steps per pass over a tile: its slice of both panels stays in L1.
    pub(super) kc: usize,
    /// Bytes of one K step of one weight panel.
    pub(super) weight_step_bytes: usize,
    /// Bytes of one K step of one activation panel.
    pub(super) row_step_bytes: usize,
}

impl Blocking {
    /// Calls `tile(p, r, k0)` once for every column panel `p` of `n` columns, row panel
    /// `r` of `m` rows and K pass `k0` (a multiple of `kc` below `k` steps), in
    /// parallel; each (p, r) sees its passes in order (k0 = 0 first), on one task.
    pub(super) fn for_each_tile(
        &self,
        (m, n, k): (usize, usize, usize),
        tile: impl Fn(usize, usize, usize) + Sync,
    ) {
        if m == 0 || n == 0 || k == 0 {
            return;
        }
        let (tasks, cols_per_task) = self.tasks((m, n), 1);
        let col_panels = n.div_ceil(self.nr);
        tasks.into_par_iter().for_each(|(p0, r0)| {
            let panels = p0..(p0 + cols_per_task).min(col_panels);
            self.task(panels, self.task_rows(m, r0), k, &tile);
        });
    }

    /// [`for_each_tile`](Self::for_each_tile) for a gate_up product (`n` = 2 k columns,
    /// the gate's then the up's, `k` a multiple of `nr`) that writes only its SwiGLU,
    /// `m x k`, to `out`: a task takes gate panels with their up twins, its tiles write
    /// (and their later passes read) a scratch of its own, `[rows][gate | up]` at the
    /// row stride `tile` is given with its destination, and once its last pass is done
    /// the task writes the SwiGLU of its rows and gate columns. The `2 k`-wide product
    /// stays in the task's cache instead of going to memory and back.
    ///
    /// # Safety
    /// `out` must be valid for writes of `m x n / 2` f32 that nobody else accesses
    /// meanwhile; `tile(p, r, k0, (dst, ld))` must write (or on later passes update)
    /// exactly tile (p, r)'s rows below `m` and `nr` columns at `dst`, row stride `ld`.
    pub(super) unsafe fn for_each_tile_swiglu(
        &self,
        (m, n, k): (usize, usize, usize),
        out: SyncPtr,
        tile: impl Fn(usize, usize, usize, (*mut f32, usize)) + Sync,
    ) {
        let half = n / 2;
        if m == 0 || half == 0 || k == 0 {
            return;
        }
        let twin = half / self.nr;
        let (tasks, gates_per_task) = self.tasks((m, half), 2);
        tasks
            .into_par_iter()
            .for_each_init(Vec::new, |scratch: &mut Vec<f32>, (p0, r0)| {
                let gates = p0..(p0 + gates_per_task).min(twin);
                let rows = self.task_rows(m, r0);
                let (first_row, cols) = (r0 * self.mr, gates.len() * self.nr);
                let task_rows = (rows.len() * self.mr).min(m - first_row);
                let ld = 2 * cols;
                scratch.resize(task_rows * ld, 0.0);
                let base = SyncPtr(scratch.as_mut_ptr());
                let panels = gates.clone().chain(gates.clone().map(|g| g + twin));
                self.task(panels, rows, k, &|p, r, k0| {
                    // The gate panels fill the left half of the scratch, their twins
                    // the right half.
                    let column = if p < twin {
                        p - p0
                    } else {
                        p - twin - p0 + gates.len()
                    };
                    let at = (r * self.mr - first_row) * ld + column * self.nr;
                    tile(p, r, k0, (base.at(at), ld));
                });
                for (i, row) in scratch.chunks_exact(ld).enumerate() {
                    let (gate, up) = row.split_at(cols);
                    // SAFETY: row first_row + i < m and the task's gate columns are
                    // this task's alone in the m x half output (the caller's contract).
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            out.at((first_row + i) * half + p0 * self.nr),
                            cols,
                        )
                    };
                    super::prologue::swiglu_row(dst, gate, up);
                }
            });
    }

    /// The product through `tile(p, r, k0, (dst, ld))` (which must write, or on later
    /// passes update, exactly tile (p, r)'s rows below `m` and its columns at `dst`,
    /// row stride `ld`) to `out` as `output` says: the `m x n` product itself, its
    /// SwiGLU ([`for_each_tile_swiglu`](Self::for_each_tile_swiglu)), or added to
    /// `out` ([`for_each_tile_add`](Self::for_each_tile_add)).
    ///
    /// # Safety
    /// `out` must be valid for reads and writes of `m x n` f32 (`m x n / 2` for
    /// [`Output::SwiGlu`]; initialised for [`Output::Add`]) that nobody else accesses
    /// meanwhile.
    pub(super) unsafe fn for_each_tile_to(
        &self,
        output: Output,
        (m, n, k): (usize, usize, usize),
        out: SyncPtr,
        tile: impl Fn(usize, usize, usize, (*mut f32, usize)) + Sync,
    ) {
        let (mr, nr) = (self.mr, self.nr);
        match output {
            Output::Plain => self.for_each_tile((m, n, k), |p, r, k0| {
                tile(p, r, k0, (out.at(r * mr * n + p * nr), n))
            }),
            // SAFETY: the caller's contract, passed on.
            Output::SwiGlu => unsafe { self.for_each_tile_swiglu((m, n, k), out, tile) },
            // SAFETY: the caller's contract, passed on.
            Output::Add => unsafe { self.for_each_tile_add((m, n, k), out, tile) },
        }
    }

    /// [`for_each_tile`](Self::for_each_tile) adding the product to `out` (`m x n`, the
    /// residual stream) in place: a task's tiles write (and their later passes read) a
    /// scratch of its own, `[rows][cols]`, and once its last pass is done the task adds
    /// it to its rows and columns of `out`.
    ///
    /// # Safety
    /// `out` must be valid for reads and writes of `m x n` initialised f32 that nobody
    /// else accesses meanwhile; `tile` as for
    /// [`for_each_tile_swiglu`](Self::for_each_tile_swiglu).
    pub(super) unsafe fn for_each_tile_add(
        &self,
        (m, n, k): (usize, usize, usize),
        out: SyncPtr,
        tile: impl Fn(usize, usize, usize, (*mut f32, usize)) + Sync,
    ) {
        if m == 0 || n == 0 || k == 0 {
            return;
        }
        let (tasks, cols_per_task) = self.tasks((m, n), 1);
        let col_panels = n.div_ceil(self.nr);
        tasks
            .into_par_iter()
            .for_each_init(Vec::new, |scratch: &mut Vec<f32>, (p0, r0)| {
                let panels = p0..(p0 + cols_per_task).min(col_panels);
                let rows = self.task_rows(m, r0);
                let (first_row, c0) = (r0 * self.mr, p0 * self.nr);
                let cols = (panels.end * self.nr).min(n) - c0;
                let task_rows = (rows.len() * self.mr).min(m - first_row);
                scratch.resize(task_rows * cols, 0.0);
                let base = SyncPtr(scratch.as_mut_ptr());
                self.task(panels, rows, k, &|p, r, k0| {
                    let at = (r * self.mr - first_row) * cols + (p - p0) * self.nr;
                    tile(p, r, k0, (base.at(at), cols));
                });
                for (i, row) in scratch.chunks_exact(cols).enumerate() {
                    // SAFETY: row first_row + i < m and columns c0..c0 + cols < n are
                    // this task's alone in `out` (the caller's contract).
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(out.at((first_row + i) * n + c0), cols)
                    };
                    crate::cpu::ops::add_assign(dst, row);
                }
            });
    }

    /// The tasks of an `m x n` product, `(first column panel, first row panel)` each,
    /// and how many column panels a task owns; `weights_per_panel` physical panels of
    /// weights are read per column panel.
    fn tasks(
        &self,
        (m, n): (usize, usize),
        weights_per_panel: usize,
    ) -> (Vec<(usize, usize)>, usize) {
        let (row_panels, col_panels) = (m.div_ceil(self.mr), n.div_ceil(self.nr));
        let threads = rayon::current_num_threads().max(1);
        // Columns per task: weights within TASK_WEIGHT_BYTES per K pass, and at least
        // ~4 tasks per thread where the rows alone do not make them.
        let panel_bytes = self.kc * self.weight_step_bytes * weights_per_panel;
        let fit = (TASK_WEIGHT_BYTES / panel_bytes.max(1)).max(1);
        let row_tasks = row_panels.div_ceil(TASK_ROW_PANELS);
        let wanted = (threads * 4).div_ceil(row_tasks);
        let cols_per_task = col_panels.div_ceil(wanted).clamp(1, fit);
        let tasks = (0..col_panels)
            .step_by(cols_per_task)
            .flat_map(|p0| {
                (0..row_panels)
                    .step_by(TASK_ROW_PANELS)
                    .map(move |r0| (p0, r0))
            })
            .collect();
        (tasks, cols_per_task)
    }

    /// The row panels of the task that starts at row panel `r0`.
    fn task_rows(&self, m: usize, r0: usize) -> std::ops::Range<usize> {
        r0..(r0 + TASK_ROW_PANELS).min(m.div_ceil(self.mr))
    }

    /// One task's tiles, `tile(p, r, k0)` for its column panels `panels` and row
    /// panels `rows`, each (p, r)'s passes in order.
    fn task(
        &self,
        panels: impl Iterator<Item = usize> + Clone,
        rows: std::ops::Range<usize>,
        k: usize,
        tile: &(impl Fn(usize, usize, usize) + ?Sized),
    ) {
        // A weight panel's K slice stays in L1 while the task's row panels stream past
        // it. When all of the task's rows fit in L2, each weight panel is walked down
        // its whole K before the next: the task's weights are then one sequential
        // stream from memory, read once (small batches). Otherwise K is the outer
        // loop, so that the rows' K slice stays in L2.
        if rows.len() * k * self.row_step_bytes <= TASK_ROW_BYTES {
            for p in panels {
                for k0 in (0..k).step_by(self.kc) {
                    for r in rows.clone() {
                        tile(p, r, k0);
                    }
                }
            }
        } else {
            for k0 in (0..k).step_by(self.kc) {
                for p in panels.clone() {
                    for r in rows.clone() {
                        tile(p, r, k0);
                    }
                }
            }
        }
    }
}

/// A register-tiled kernel's product: `prologue(x) @ w.T` for `(m, width)` rows of
/// `x`, to `dst` as the [`Output`] says.
///
/// # Safety
/// `dst` must be valid for writes of the output's `m` rows (the weight's `n` values
/// each, `n / 2` for [`Output::SwiGlu`]; reads too, initialised, for [`Output::Add`]),
/// accessed by nobody else meanwhile. An implementation must, on `Ok`, have written
/// (or added to) all of them.
pub(super) type Driver<W> = unsafe fn(
    &[f32],
    (usize, usize),
    &W,
    Prologue<'_>,
    (Output, SyncPtr),
) -> candle_core::Result<()>;

/// The plain product of `driver` on a weight of `n` output columns: f32 `m x n`.
pub(super) fn plain<W>(
    driver: Driver<W>,
    n: usize,
    x: &[f32],
    (m, width): (usize, usize),
    w: &W,
    prologue: Prologue,
) -> candle_core::Result<Vec<f32>> {
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let dst = SyncPtr(out.spare_capacity_mut().as_mut_ptr().cast());
    // SAFETY: `out` has room for the m x n output, ours alone.
    unsafe { driver(x, (m, width), w, prologue, (Output::Plain, dst))? };
    // SAFETY: on Ok the driver wrote all m x n values (its contract).
    unsafe { out.set_len(m * n) };
    Ok(out)
}

/// The SwiGLU of `driver`'s product for a gate_up weight of `n` output columns whose
/// halves are whole panels of `nr` columns: f32 `m x n / 2`.
pub(super) fn swiglu<W>(
    driver: Driver<W>,
    (n, nr): (usize, usize),
    x: &[f32],
    (m, width): (usize, usize),
    w: &W,
    prologue: Prologue,
) -> candle_core::Result<Vec<f32>> {
    if !super::swiglu_halves(n, nr) {
        candle_core::bail!("{n} rows do not split into two halves of whole panels of {nr}");
    }
    let half = n / 2;
    let mut out: Vec<f32> = Vec::with_capacity(m * half);
    let dst = SyncPtr(out.spare_capacity_mut().as_mut_ptr().cast());
    // SAFETY: `out` has room for the m x n / 2 output, ours alone.
    unsafe { driver(x, (m, width), w, prologue, (Output::SwiGlu, dst))? };
    // SAFETY: on Ok the driver wrote all m x n / 2 values (its contract).
    unsafe { out.set_len(m * half) };
    Ok(out)
}

/// `driver`'s product (`n` output columns) added in place to `out` (`m x n`).
pub(super) fn add<W>(
    driver: Driver<W>,
    n: usize,
    x: &[f32],
    (m, width): (usize, usize),
    w: &W,
    prologue: Prologue,
    out: &mut [f32],
) -> candle_core::Result<()> {
    if out.len() != m * n {
        candle_core::bail!("an output of {} values for {m} x {n}", out.len());
    }
    let dst = SyncPtr(out.as_mut_ptr());
    // SAFETY: `out` is the m x n output, initialised and borrowed mutably.
    unsafe { driver(x, (m, width), w, prologue, (Output::Add, dst)) }
}

/// Zeros for an output when the product has no K (SwiGLU(0) is 0 too; adding zeros
/// changes nothing, so an [`Output::Add`] is left as it is).
///
/// # Safety
/// As [`Driver`]'s `dst`, for an `m x n` product.
pub(super) unsafe fn zero_output((output, dst): (Output, SyncPtr), (m, n): (usize, usize)) {
    let len = match output {
        Output::Add => return,
        Output::SwiGlu => m * (n / 2),
        Output::Plain => m * n,
    };
    // SAFETY: `dst` is valid for `len` writes (the contract).
    unsafe { std::ptr::write_bytes(dst.0, 0, len) };
}

/// A register-tile micro-kernel compiled once per tile height `R` (1 to 12 rows), so
/// that a batch of a few tokens does not pay for a full tile; `A` is its operands.
pub(super) trait TileHeights<A> {
    /// One tile of `R` rows.
    ///
    /// # Safety
    /// The kernel's own contract for `args`.
    unsafe fn tile<const R: usize>(args: A);
}

/// `K`'s tile for `rows` rows (1 to 12; more is 12).
///
/// # Safety
/// As [`TileHeights::tile`].
pub(super) unsafe fn tile_rows<A, K: TileHeights<A>>(args: A, rows: usize) {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match rows {
            1 => K::tile::<1>(args),
            2 => K::tile::<2>(args),
            3 => K::tile::<3>(args),
            4 => K::tile::<4>(args),
            5 => K::tile::<5>(args),
            6 => K::tile::<6>(args),
            7 => K::tile::<7>(args),
            8 => K::tile::<8>(args),
            9 => K::tile::<9>(args),
            10 => K::tile::<10>(args),
            11 => K::tile::<11>(args),
            _ => K::tile::<12>(args),
        }
    }
}
