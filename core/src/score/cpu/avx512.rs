//! The implicit-layout walk on AVX-512: sixteen rows per instruction.
//!
//! Gathers are slow on most AVX-512 parts, so nothing here gathers per
//! level. Instead each level's split features and thresholds (at most 128
//! nodes for trees of depth ≤ 8) live in a few vector registers and every
//! lane picks its node with an in-register permute; the lane's feature value
//! is picked from the block's transposed columns with compare-and-blend.
//! Decisions (`x <= threshold` left, else right, NaN right) and the f32 sum
//! in tree order are those of the scalar walk, so results are bit-identical.

use crate::forest::ImplicitForest;
use std::arch::x86_64::*;

/// Deepest tree this walk takes (levels 0..8 hold at most 128 nodes).
pub(super) const MAX_DEPTH: u32 = 8;
/// Widest row this walk takes; wider rows cost more blends than they save.
pub(super) const MAX_DIMS: usize = 16;
/// Rows wider than this pick each lane's value with one gather instead of
/// a compare-and-blend per feature.
const GATHER_ABOVE: usize = 4;
/// Lanes per vector.
const W: usize = 16;
/// Start of each level's nodes in a tree's table; levels 0–4 get one full
/// vector each so a single permute serves them.
const LEVEL_OFFSET: [usize; MAX_DEPTH as usize] = [0, 16, 32, 48, 64, 80, 112, 176];
/// Table entries per tree.
const TABLE_LEN: usize = 304;

/// Whether this CPU runs the AVX-512 walk.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// Per-level split tables of every tree, padded for whole-vector loads.
#[derive(Clone, Debug)]
pub(super) struct Tables {
    features: Vec<i32>,
    /// `features` with −1 for the splits above a leaf's copies, which
    /// attribution does not credit.
    credited: Vec<i32>,
    thresholds: Vec<f32>,
    leaves: Vec<f32>,
    /// Per tree: (table offset, leaf offset, depth).
    trees: Vec<(usize, usize, u32)>,
    dims: usize,
}

impl Tables {
    /// Builds the tables from a forest of complete trees (depth ≤
    /// [`MAX_DEPTH`]).
    pub(super) fn new(dims: usize, forest: &ImplicitForest) -> Self {
        let mut t = Self {
            features: Vec::new(),
            credited: Vec::new(),
            thresholds: Vec::new(),
            leaves: Vec::new(),
            trees: Vec::new(),
            dims,
        };
        for (tree, (splits, leaves, depth)) in forest.trees.iter().zip(forest.iter()) {
            debug_assert!(depth <= MAX_DEPTH);
            let real = &forest.real[tree.splits as usize..];
            let base = t.features.len();
            t.features.resize(base + TABLE_LEN, 0);
            t.credited.resize(base + TABLE_LEN, -1);
            t.thresholds.resize(base + TABLE_LEN, 0.0);
            for (level, &offset) in LEVEL_OFFSET.iter().enumerate().take(depth as usize) {
                let first = (1 << level) - 1;
                for j in 0..1 << level {
                    let split = splits[first + j];
                    t.features[base + offset + j] = split.feature as i32;
                    if real[first + j] {
                        t.credited[base + offset + j] = split.feature as i32;
                    }
                    t.thresholds[base + offset + j] = split.threshold;
                }
            }
            t.trees.push((base, t.leaves.len(), depth));
            t.leaves.extend_from_slice(leaves);
        }
        t
    }

    /// Adds each row's path length in every tree, in tree order, to `sums`.
    /// `rows` holds `sums.len()` rows, at most `BLOCK` of them.
    pub(super) fn accumulate<const BLOCK: usize>(&self, rows: &[f32], sums: &mut [f32]) {
        assert!(available(), "AVX-512 walk on a CPU without AVX-512");
        assert!(sums.len() <= BLOCK && rows.len() == sums.len() * self.dims);
        // SAFETY: AVX-512F is present (checked above); the shapes are checked.
        unsafe { self.accumulate_avx512::<BLOCK>(rows, sums) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn accumulate_avx512<const BLOCK: usize>(&self, rows: &[f32], sums: &mut [f32]) {
        let dims = self.dims;
        let n = sums.len();
        let mut columns = [[0f32; BLOCK]; MAX_DIMS];
        self.transpose::<BLOCK>(rows, &mut columns);
        let mut acc = [0f32; BLOCK];
        // One copy of the walk per row width, so the per-feature blends
        // unroll and the row's columns stay in registers.
        macro_rules! by_dims {
            ($($d:literal)*) => {
                match dims {
                    $($d if $d > GATHER_ABOVE => {
                        self.walk::<BLOCK, $d, 8>(&columns, n.div_ceil(W), &mut acc)
                    })*
                    $($d => self.walk::<BLOCK, $d, 2>(&columns, n.div_ceil(W), &mut acc),)*
                    _ => unreachable!("rows wider than MAX_DIMS take the portable walk"),
                }
            };
        }
        by_dims!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
        for (s, &a) in sums.iter_mut().zip(&acc) {
            *s += a;
        }
    }

    /// Writes a block of rows column-major into zeroed `columns`; padding
    /// lanes walk zeros and are never read back.
    #[inline]
    fn transpose<const BLOCK: usize>(&self, rows: &[f32], columns: &mut [[f32; BLOCK]; MAX_DIMS]) {
        for (r, row) in rows.chunks_exact(self.dims).enumerate() {
            for (d, &x) in row.iter().enumerate() {
                columns[d][r] = x;
            }
        }
    }

    /// Each row's attribution credit per feature (see
    /// [`crate::forest::PackedForest::credit_rows`], which this equals bit
    /// for bit), written to `credit` in the rows' layout. `rows` holds at
    /// most `BLOCK` rows.
    pub(super) fn credit<const BLOCK: usize>(&self, rows: &[f32], credit: &mut [f32]) {
        assert!(available(), "AVX-512 walk on a CPU without AVX-512");
        assert!(rows.len() <= BLOCK * self.dims && rows.len() == credit.len());
        // SAFETY: AVX-512F is present (checked above); the shapes are checked.
        unsafe { self.credit_avx512::<BLOCK>(rows, credit) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn credit_avx512<const BLOCK: usize>(&self, rows: &[f32], credit: &mut [f32]) {
        let dims = self.dims;
        let n = rows.len() / dims.max(1);
        let mut columns = [[0f32; BLOCK]; MAX_DIMS];
        self.transpose::<BLOCK>(rows, &mut columns);
        let mut out = [[0f32; BLOCK]; MAX_DIMS];
        macro_rules! by_dims {
            ($($d:literal)*) => {
                match dims {
                    $($d => self.credit_walk::<BLOCK, $d>(&columns, n.div_ceil(W), &mut out),)*
                    _ => unreachable!("rows wider than MAX_DIMS take the portable walk"),
                }
            };
        }
        by_dims!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
        for (r, row) in credit.chunks_exact_mut(dims).enumerate() {
            for (d, c) in row.iter_mut().enumerate() {
                *c = out[d][r];
            }
        }
    }

    /// Walks `groups` groups of 16 rows of `D` features through every tree,
    /// counting per lane the path's splits on each feature in 4-bit fields
    /// (features 0–7 in one vector, 8–15 in another; a path has at most
    /// eight splits), then adding count × 1/h per feature to `out`.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    unsafe fn credit_walk<const BLOCK: usize, const D: usize>(
        &self,
        columns: &[[f32; BLOCK]; MAX_DIMS],
        groups: usize,
        out: &mut [[f32; BLOCK]; MAX_DIMS],
    ) {
        let one = _mm512_set1_epi32(1);
        let nibble = _mm512_set1_epi32(15);
        for g in 0..groups {
            let mut xs = [_mm512_setzero_ps(); D];
            let mut d = 0;
            while d < D {
                xs[d] = _mm512_loadu_ps(columns[d].as_ptr().add(g * W));
                d += 1;
            }
            let mut credit = [_mm512_setzero_ps(); D];
            for &(table, leaf_base, depth) in &self.trees {
                let features = self.features.as_ptr().add(table);
                let credited = self.credited.as_ptr().add(table);
                let thresholds = self.thresholds.as_ptr().add(table);
                let mut pos = _mm512_setzero_si512();
                let (mut low, mut high) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                for level in 0..depth as usize {
                    let offset = LEVEL_OFFSET[level];
                    // A shift of 32 or more (−1's included, as unsigned)
                    // leaves nothing, so each split lands in one field.
                    let shift = _mm512_slli_epi32::<2>(pick(credited.add(offset), level, pos));
                    low = _mm512_add_epi32(low, _mm512_sllv_epi32(one, shift));
                    if D > 8 {
                        let above = _mm512_sub_epi32(shift, _mm512_set1_epi32(32));
                        high = _mm512_add_epi32(high, _mm512_sllv_epi32(one, above));
                    }
                    pos = descend::<BLOCK, D>(
                        features.add(offset),
                        thresholds.add(offset),
                        level,
                        pos,
                        columns,
                        &xs,
                        g,
                    );
                }
                let leaf = _mm512_i32gather_ps::<4>(pos, self.leaves.as_ptr().add(leaf_base));
                let weight = _mm512_div_ps(
                    _mm512_set1_ps(1.0),
                    _mm512_max_ps(leaf, _mm512_set1_ps(1.0)),
                );
                let mut d = 0;
                while d < D {
                    let fields = if d < 8 { low } else { high };
                    let count = _mm512_and_si512(
                        _mm512_srlv_epi32(fields, _mm512_set1_epi32(4 * (d as i32 % 8))),
                        nibble,
                    );
                    // Multiply, then add: a fused multiply-add would round
                    // once where the scalar twin rounds twice.
                    let product = _mm512_mul_ps(_mm512_cvtepi32_ps(count), weight);
                    credit[d] = _mm512_add_ps(credit[d], product);
                    d += 1;
                }
            }
            let mut d = 0;
            while d < D {
                _mm512_storeu_ps(out[d].as_mut_ptr().add(g * W), credit[d]);
                d += 1;
            }
        }
    }

    /// Walks `groups` groups of 16 rows of `D` features through every tree,
    /// `PAIR` groups side by side, adding the leaves' path lengths to `acc`.
    /// Blending keeps `PAIR × D` columns in registers, so it pairs two
    /// groups; gathering keeps none and walks eight, which hides the
    /// gathers' latency better than four did (about 10% faster at 5 to 16
    /// features).
    // Index loops, not iterator adapters: the adapters were not inlined
    // into this target-feature function and cost a call per step.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    unsafe fn walk<const BLOCK: usize, const D: usize, const PAIR: usize>(
        &self,
        columns: &[[f32; BLOCK]; MAX_DIMS],
        groups: usize,
        acc: &mut [f32; BLOCK],
    ) {
        debug_assert!((BLOCK / W).is_multiple_of(PAIR));
        for &(table, leaf_base, depth) in &self.trees {
            let features = self.features.as_ptr().add(table);
            let thresholds = self.thresholds.as_ptr().add(table);
            let leaves = self.leaves.as_ptr().add(leaf_base);
            // Groups walk side by side so one's permutes and compares fill
            // another's latency. A short last step walks padding groups,
            // which lie inside the block (BLOCK / W is a multiple of PAIR).
            for g0 in (0..groups).step_by(PAIR) {
                let mut xs = [[_mm512_setzero_ps(); D]; PAIR];
                for p in 0..PAIR {
                    let mut d = 0;
                    while d < D {
                        xs[p][d] = _mm512_loadu_ps(columns[d].as_ptr().add((g0 + p) * W));
                        d += 1;
                    }
                }
                let mut pos = [_mm512_setzero_si512(); PAIR];
                let mut level = 0;
                while level < depth as usize {
                    let offset = LEVEL_OFFSET[level];
                    for p in 0..PAIR {
                        pos[p] = descend::<BLOCK, D>(
                            features.add(offset),
                            thresholds.add(offset),
                            level,
                            pos[p],
                            columns,
                            &xs[p],
                            g0 + p,
                        );
                    }
                    level += 1;
                }
                for p in 0..PAIR {
                    let leaf = _mm512_i32gather_ps::<4>(pos[p], leaves);
                    let a = acc.as_mut_ptr().add((g0 + p) * W);
                    _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), leaf));
                }
            }
        }
    }
}

/// Each lane's value at a level of `NODES` nodes, whose split features
/// start at `features`: the nodes' columns are loaded whole (every lane of
/// a group reads the same few) and each lane keeps its own node's by the
/// bits of `pos`, which costs less than a gather while the level is narrow.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn select<const BLOCK: usize, const NODES: usize>(
    features: *const i32,
    columns: &[[f32; BLOCK]; MAX_DIMS],
    at: usize,
    pos: __m512i,
) -> __m512 {
    let mut v = [_mm512_setzero_ps(); NODES];
    let mut j = 0;
    while j < NODES {
        let column = &columns[*features.add(j) as usize];
        v[j] = _mm512_loadu_ps(column.as_ptr().add(at));
        j += 1;
    }
    // Nodes 2k and 2k+1 differ in the last decision (bit 0 of `pos`); once
    // paired, the survivors are indexed by `pos >> 1`, and so on.
    let mut width = NODES;
    let mut bit = 0;
    while width > 1 {
        let right = _mm512_test_epi32_mask(pos, _mm512_set1_epi32(1 << bit));
        let mut k = 0;
        while k < width / 2 {
            v[k] = _mm512_mask_blend_ps(right, v[2 * k], v[2 * k + 1]);
            k += 1;
        }
        width /= 2;
        bit += 1;
    }
    v[0]
}

/// One level of group `g`'s walk: each lane reads its node's split (the
/// level's entries start at `features` / `thresholds`) and steps to the
/// left child when its value is ≤ the threshold, else (greater, or NaN) to
/// the right one.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn descend<const BLOCK: usize, const D: usize>(
    features: *const i32,
    thresholds: *const f32,
    level: usize,
    pos: __m512i,
    columns: &[[f32; BLOCK]; MAX_DIMS],
    xs: &[__m512; D],
    g: usize,
) -> __m512i {
    let f = pick(features, level, pos);
    let t = _mm512_castsi512_ps(pick(thresholds.cast(), level, pos));
    let x = value::<BLOCK, D>(features, level, f, pos, columns, xs, g);
    let right = _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(x, t);
    let pos = _mm512_add_epi32(pos, pos);
    _mm512_mask_add_epi32(pos, right, pos, _mm512_set1_epi32(1))
}

/// Each lane's value of its split's feature `f` at level `level` of group
/// `g`, whose level's split features start at `split`. `xs` holds the
/// group's columns when `D` is small enough to pick among them by blends.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn value<const BLOCK: usize, const D: usize>(
    split: *const i32,
    level: usize,
    f: __m512i,
    pos: __m512i,
    columns: &[[f32; BLOCK]; MAX_DIMS],
    xs: &[__m512; D],
    g: usize,
) -> __m512 {
    if D > GATHER_ABOVE {
        // The first two levels hold one and two splits: loading their
        // columns whole beats a gather (fraud model, 7 features: 164 -> 144
        // ns per row); from four splits on, the gather wins.
        match level {
            0 => select::<BLOCK, 1>(split, columns, g * W, pos),
            1 => select::<BLOCK, 2>(split, columns, g * W, pos),
            _ => {
                let lanes = _mm512_add_epi32(
                    _mm512_set1_epi32((g * W) as i32),
                    _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                );
                let at = _mm512_add_epi32(
                    _mm512_mullo_epi32(f, _mm512_set1_epi32(BLOCK as i32)),
                    lanes,
                );
                _mm512_i32gather_ps::<4>(at, columns.as_ptr().cast::<f32>())
            }
        }
    } else {
        let mut x = xs[0];
        let mut d = 1;
        while d < D {
            let is_d = _mm512_cmpeq_epi32_mask(f, _mm512_set1_epi32(d as i32));
            x = _mm512_mask_blend_ps(is_d, x, xs[d]);
            d += 1;
        }
        x
    }
}

/// Each lane's entry for node `pos` of level `level` in a per-level table
/// (split features, their bits of thresholds, or credited features) whose
/// level starts at `table`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn pick(table: *const i32, level: usize, pos: __m512i) -> __m512i {
    let v = |k: usize| _mm512_loadu_si512(table.add(k * W).cast());
    // Two vectors (32 entries) per permute; bits 5 and 6 of `pos` then
    // choose among the pairs.
    let pair = |k: usize| _mm512_permutex2var_epi32(v(k), pos, v(k + 1));
    let choose = |bit: i32, lo: __m512i, hi: __m512i| {
        let m = _mm512_test_epi32_mask(pos, _mm512_set1_epi32(bit));
        _mm512_mask_blend_epi32(m, lo, hi)
    };
    match level {
        0..=4 => _mm512_permutexvar_epi32(pos, v(0)),
        5 => pair(0),
        6 => choose(32, pair(0), pair(2)),
        _ => choose(
            64,
            choose(32, pair(0), pair(2)),
            choose(32, pair(4), pair(6)),
        ),
    }
}
