//! Host side of `shaders/iforest.wgsl` and `shaders/iforest_tiled.wgsl`: the
//! GPU isolation-forest scorer.
//!
//! Two walks share one bind group layout and differ only in what the two
//! forest buffers hold:
//! - **tiled** (depth ≤ [`TILED_MAX_DEPTH`], ≤ [`TILED_MAX_DIMS`] features,
//!   which covers ψ ≤ 512): trees in the implicit layout, grouped into stages
//!   that a workgroup copies into workgroup memory, rows tiled there too. On
//!   an H200 this walks 16-feature rows several times faster than the linked
//!   walk (README has the figures).
//! - **linked**: the packed 16-byte nodes with child indices, for anything
//!   deeper or wider.

use super::buffers::GrowableBuffer;
use super::{dispatch_grid, GpuContext, WORKGROUP_SIZE};
use crate::forest::{ImplicitForest, PackedForest};
use crate::score::{check_shape, RowScore, ScoreError, Scorer};
use bytemuck::{Pod, Zeroable};
use rayon::prelude::*;
use std::mem::size_of;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wgpu::util::DeviceExt;

/// Rows per dispatch chunk unless the device's binding limit forces fewer:
/// large enough to keep a GPU busy, small enough that a 1M-row batch is
/// several chunks and upload overlaps compute.
pub const DEFAULT_CHUNK_ROWS: usize = 1 << 18;

/// Rows per workgroup of the tiled kernel (`TILE_ROWS` in its WGSL).
pub const TILE_ROWS: u32 = 128;
/// Floats per row in the tiled kernel's row tile: odd, so rows reading the
/// same feature fall in different memory banks.
pub const TILE_STRIDE: u32 = 17;
/// Workgroup-memory words for one stage of trees (`STAGE_WORDS` in the WGSL).
pub const STAGE_WORDS: u32 = 1792;
/// Deepest forest the tiled kernel takes: one depth-9 tree is 1534 words.
pub const TILED_MAX_DEPTH: u32 = 9;
/// Widest row the tiled kernel takes (`TILE_STRIDE - 1`).
pub const TILED_MAX_DIMS: usize = 16;

/// Bytes copied by one thread when a chunk's rows are written to the
/// upload staging memory in parallel.
const COPY_PART: usize = 4 << 20;

/// Uniform block of the kernels (`Params` in both WGSL files).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct KernelParams {
    rows: u32,
    dims: u32,
    trees: u32,
    max_depth: u32,
    normaliser: f32,
    /// Stages of the tiled walk (unused by the linked walk).
    stages: u32,
    _pad: [u32; 2],
}

/// Which kernel a scorer runs, and what its two forest buffers hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// `iforest_tiled.wgsl`: stage words and their directory.
    Tiled {
        /// Stages the trees were grouped into.
        stages: u32,
    },
    /// `iforest.wgsl`: packed nodes and root indices.
    Linked,
}

/// The tiled kernel's two buffers: stage words and the directory (see the
/// WGSL), and the stage count. Consecutive trees share a stage while their
/// words fit in [`STAGE_WORDS`]; every tree must fit on its own.
pub(crate) fn tiled_layout(forest: &ImplicitForest) -> (Vec<u32>, Vec<u32>, u32) {
    let mut words = Vec::new();
    let mut stages: Vec<[u32; 4]> = Vec::new();
    let mut entries = Vec::with_capacity(4 * forest.trees.len());
    let mut open = [0u32; 4];
    for (t, (splits, leaves, depth)) in forest.iter().enumerate() {
        let size = (2 * splits.len() + leaves.len()) as u32;
        debug_assert!(size <= STAGE_WORDS, "tree of depth {depth} exceeds a stage");
        if open[1] + size > STAGE_WORDS {
            stages.push(open);
            open = [words.len() as u32, 0, t as u32, 0];
        }
        let at = open[1];
        let n = splits.len() as u32;
        entries.extend_from_slice(&[depth, at, at + n, at + 2 * n]);
        words.extend(splits.iter().map(|s| s.feature));
        words.extend(splits.iter().map(|s| s.threshold.to_bits()));
        words.extend(leaves.iter().map(|l| l.to_bits()));
        open[1] += size;
        open[3] += 1;
    }
    if open[3] > 0 {
        stages.push(open);
    }
    let count = stages.len() as u32;
    let mut directory: Vec<u32> = stages.concat();
    directory.extend_from_slice(&entries);
    (words, directory, count)
}

/// Whether the tiled kernel can take `forest`.
fn tiled_fits(forest: &PackedForest) -> bool {
    forest.max_depth <= TILED_MAX_DEPTH && forest.dims <= TILED_MAX_DIMS
}

/// Wall-clock split of one batch, from [`GpuScorer::score_timed`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GpuTimings {
    /// Rows scored.
    pub rows: usize,
    /// Host → device copies of the rows, waited for.
    pub upload: Duration,
    /// The dispatches alone, on rows already resident, waited for.
    pub kernel: Duration,
    /// Device → host copy of the scores and the mapped read.
    pub readback: Duration,
    /// The ordinary pipelined [`Scorer::score`] path end to end (less than
    /// the sum of the phases when upload overlaps compute).
    pub total: Duration,
}

/// One of the two ping-pong buffer sets: while one chunk computes and reads
/// back from a set, the next chunk is written into the other.
struct ChunkBuffers {
    rows: GrowableBuffer,
    out: GrowableBuffer,
    staging: GrowableBuffer,
    params: wgpu::Buffer,
    /// Bind group and the (rows, out) generations it was built for.
    bind_group: Option<(wgpu::BindGroup, (u64, u64))>,
}

impl ChunkBuffers {
    fn new(device: &wgpu::Device) -> Self {
        use wgpu::BufferUsages as U;
        Self {
            rows: GrowableBuffer::new(device, "iforest rows", U::STORAGE | U::COPY_DST, 0),
            out: GrowableBuffer::new(device, "iforest out", U::STORAGE | U::COPY_SRC, 0),
            staging: GrowableBuffer::new(device, "iforest staging", U::MAP_READ | U::COPY_DST, 0),
            params: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("iforest params"),
                size: size_of::<KernelParams>() as u64,
                usage: U::UNIFORM | U::COPY_DST,
                mapped_at_creation: false,
            }),
            bind_group: None,
        }
    }
}

/// Scores on a wgpu device; the twin of [`crate::score::cpu::CpuScorer`].
///
/// The forest is uploaded once, in the layout of the fastest [`Walk`] that
/// takes it. Row, output and staging buffers are reused
/// across batches and grow geometrically; a batch is split into chunks that
/// respect the device's binding and dispatch limits.
pub struct GpuScorer {
    ctx: Arc<GpuContext>,
    dims: usize,
    trees: u32,
    max_depth: u32,
    normaliser: f32,
    walk: Walk,
    /// Packed nodes (linked) or stage words (tiled): binding 0.
    forest: wgpu::Buffer,
    /// Root indices (linked) or the stage directory (tiled): binding 1.
    index: wgpu::Buffer,
    chunk_rows: usize,
    sets: [ChunkBuffers; 2],
}

impl GpuScorer {
    /// Uploads the forest to the context's device.
    pub fn new(ctx: Arc<GpuContext>, forest: &PackedForest) -> Result<Self, ScoreError> {
        Self::with_chunk_rows(ctx, forest, DEFAULT_CHUNK_ROWS)
    }

    /// Like [`Self::new`] but always on the linked walk, to compare the two.
    pub fn linked(ctx: Arc<GpuContext>, forest: &PackedForest) -> Result<Self, ScoreError> {
        Self::build(ctx, forest, DEFAULT_CHUNK_ROWS, false)
    }

    /// Like [`Self::new`] with at most `chunk_rows` rows per dispatch (the
    /// device's limits may lower it further). Small values let tests cover
    /// multi-chunk batches quickly.
    pub fn with_chunk_rows(
        ctx: Arc<GpuContext>,
        forest: &PackedForest,
        chunk_rows: usize,
    ) -> Result<Self, ScoreError> {
        Self::build(ctx, forest, chunk_rows, true)
    }

    fn build(
        ctx: Arc<GpuContext>,
        forest: &PackedForest,
        chunk_rows: usize,
        tiled: bool,
    ) -> Result<Self, ScoreError> {
        if forest.dims == 0 || forest.roots.is_empty() {
            return Err(ScoreError::Shape(
                "a forest needs at least one feature and one tree".into(),
            ));
        }
        let max_binding = ctx.max_binding();
        let (walk, forest_words, index_words) = if tiled && tiled_fits(forest) {
            let (words, directory, stages) = tiled_layout(&ImplicitForest::new(forest));
            (Walk::Tiled { stages }, words, directory)
        } else {
            let nodes = bytemuck::cast_slice::<_, u32>(&forest.nodes).to_vec();
            (Walk::Linked, nodes, forest.roots.clone())
        };
        let forest_bytes = std::mem::size_of_val(forest_words.as_slice()) as u64;
        if forest_bytes > max_binding {
            return Err(ScoreError::Device(format!(
                "forest of {} nodes needs {forest_bytes} bytes, more than the adapter's \
                 {max_binding}-byte storage binding limit; score on the CPU",
                forest.nodes.len()
            )));
        }
        // Largest chunk whose rows and outputs each fit one binding.
        let row_bytes = (forest.dims * size_of::<f32>()).max(size_of::<RowScore>()) as u64;
        let chunk_rows = chunk_rows.clamp(1, (max_binding / row_bytes).max(1) as usize);

        let device = &ctx.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let forest_buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("iforest forest"),
            contents: bytemuck::cast_slice(&forest_words),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let index = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("iforest index"),
            contents: bytemuck::cast_slice(&index_words),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let sets = [ChunkBuffers::new(device), ChunkBuffers::new(device)];
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(ScoreError::Device(format!("uploading the forest: {e}")));
        }
        ctx.check()?;
        Ok(Self {
            dims: forest.dims,
            trees: forest.roots.len() as u32,
            max_depth: forest.max_depth,
            normaliser: forest.normaliser,
            walk,
            forest: forest_buffer,
            index,
            chunk_rows,
            sets,
            ctx,
        })
    }

    /// The kernel this scorer runs.
    pub fn walk(&self) -> Walk {
        self.walk
    }

    /// Rows per dispatch chunk after the device's limits were applied.
    pub fn chunk_rows(&self) -> usize {
        self.chunk_rows
    }

    /// The context this scorer runs on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Scores like [`Scorer::score`] and reports where the time goes.
    ///
    /// `total` is the normal pipelined path. The phases are then measured by
    /// scoring the batch again one chunk at a time with a wait after each
    /// step: upload (`write_buffer` + wait), kernel (the dispatches alone on
    /// rows already uploaded, waited for: wall-clock, not timestamp queries,
    /// so it works on every adapter) and readback (copy to staging, map,
    /// copy out). Both passes write `out`; their results are identical.
    pub fn score_timed(
        &mut self,
        rows: &[f32],
        out: &mut [RowScore],
    ) -> Result<GpuTimings, ScoreError> {
        let start = Instant::now();
        self.score_batch(rows, out)?;
        let mut timings = GpuTimings {
            rows: out.len(),
            total: start.elapsed(),
            ..GpuTimings::default()
        };
        let (chunk, dims) = (self.chunk_rows, self.dims);
        for (rows, out) in rows.chunks(chunk * dims).zip(out.chunks_mut(chunk)) {
            self.ensure_capacity(out.len());
            let t = Instant::now();
            self.upload(0, rows, out.len());
            let idx = self.ctx.queue.submit([]);
            self.ctx.wait(idx)?;
            timings.upload += t.elapsed();

            let t = Instant::now();
            let mut encoder = self.encoder();
            self.encode_dispatch(0, out.len(), &mut encoder);
            let idx = self.ctx.queue.submit([encoder.finish()]);
            self.ctx.wait(idx)?;
            timings.kernel += t.elapsed();

            let t = Instant::now();
            let mut encoder = self.encoder();
            self.encode_copy(0, out.len(), &mut encoder);
            let idx = self.ctx.queue.submit([encoder.finish()]);
            self.read(0, idx, out)?;
            timings.readback += t.elapsed();
        }
        Ok(timings)
    }

    /// Pipelined scoring: chunk N+1 is written and submitted before chunk N
    /// is read back, alternating between the two buffer sets.
    fn score_batch(&mut self, rows: &[f32], out: &mut [RowScore]) -> Result<(), ScoreError> {
        check_shape(self.dims, rows, out)?;
        if out.is_empty() {
            return Ok(());
        }
        self.ctx.check()?;
        let (chunk, dims) = (self.chunk_rows, self.dims);
        self.ensure_capacity(out.len().min(chunk));
        let mut pending: Option<(usize, &mut [RowScore], wgpu::SubmissionIndex)> = None;
        for (c, (rows, out)) in rows
            .chunks(chunk * dims)
            .zip(out.chunks_mut(chunk))
            .enumerate()
        {
            let set = c % 2;
            self.upload(set, rows, out.len());
            let mut encoder = self.encoder();
            self.encode_dispatch(set, out.len(), &mut encoder);
            self.encode_copy(set, out.len(), &mut encoder);
            let idx = self.ctx.queue.submit([encoder.finish()]);
            if let Some((set, out, idx)) = pending.take() {
                self.read(set, idx, out)?;
            }
            pending = Some((set, out, idx));
        }
        if let Some((set, out, idx)) = pending {
            self.read(set, idx, out)?;
        }
        Ok(())
    }

    fn encoder(&self) -> wgpu::CommandEncoder {
        self.ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("iforest"),
            })
    }

    /// Grows both buffer sets to hold `rows` rows (one chunk at most).
    fn ensure_capacity(&mut self, rows: usize) {
        let device = &self.ctx.device;
        let limit = self.ctx.max_binding() & !3;
        let row_bytes = (rows * self.dims * size_of::<f32>()) as u64;
        let out_bytes = (rows * size_of::<RowScore>()) as u64;
        for set in &mut self.sets {
            set.rows.ensure(device, row_bytes, limit);
            set.out.ensure(device, out_bytes, limit);
            // Staging is never bound, so only the buffer-size limit applies.
            set.staging
                .ensure(device, out_bytes, self.ctx.limits.max_buffer_size & !3);
            let generations = (set.rows.generation(), set.out.generation());
            if set.bind_group.as_ref().map(|(_, g)| *g) != Some(generations) {
                let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("iforest"),
                    layout: &kernel(&self.ctx, self.walk).layout,
                    entries: &[
                        entry(0, &self.forest),
                        entry(1, &self.index),
                        entry(2, set.rows.buffer()),
                        entry(3, set.out.buffer()),
                        entry(4, &set.params),
                    ],
                });
                set.bind_group = Some((group, generations));
            }
        }
    }

    /// Queues the chunk's rows and kernel parameters into buffer set `set`.
    fn upload(&self, set: usize, rows: &[f32], count: usize) {
        let buffers = &self.sets[set];
        let params = KernelParams {
            rows: count as u32,
            dims: self.dims as u32,
            trees: self.trees,
            max_depth: self.max_depth,
            normaliser: self.normaliser,
            stages: match self.walk {
                Walk::Tiled { stages } => stages,
                Walk::Linked => 0,
            },
            _pad: [0; 2],
        };
        let queue = &self.ctx.queue;
        queue.write_buffer(&buffers.params, 0, bytemuck::bytes_of(&params));
        let bytes: &[u8] = bytemuck::cast_slice(rows);
        let Some(size) = std::num::NonZeroU64::new(bytes.len() as u64) else {
            return;
        };
        // Straight into wgpu's staging memory, on every core: one thread's
        // copy, not the bus, limits a large batch's upload.
        match queue.write_buffer_with(buffers.rows.buffer(), 0, size) {
            Some(mut view) => parallel_copy(view.slice(..), bytes),
            // wgpu has already recorded the validation error; check() reports it.
            None => {}
        }
    }

    fn encode_dispatch(&self, set: usize, count: usize, encoder: &mut wgpu::CommandEncoder) {
        let Some((group, _)) = &self.sets[set].bind_group else {
            // ensure_capacity always builds it before a dispatch.
            return;
        };
        let per_group = match self.walk {
            Walk::Tiled { .. } => TILE_ROWS,
            Walk::Linked => WORKGROUP_SIZE,
        };
        let groups = (count as u32).div_ceil(per_group);
        let (x, y) = dispatch_grid(groups, self.ctx.limits.max_compute_workgroups_per_dimension);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("iforest"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&kernel(&self.ctx, self.walk).pipeline);
        pass.set_bind_group(0, group, &[]);
        pass.dispatch_workgroups(x, y, 1);
    }

    fn encode_copy(&self, set: usize, count: usize, encoder: &mut wgpu::CommandEncoder) {
        let buffers = &self.sets[set];
        let bytes = (count * size_of::<RowScore>()) as u64;
        encoder.copy_buffer_to_buffer(buffers.out.buffer(), 0, buffers.staging.buffer(), 0, bytes);
    }

    /// Waits for submission `idx`, then copies the set's staged scores out.
    fn read(
        &self,
        set: usize,
        idx: wgpu::SubmissionIndex,
        out: &mut [RowScore],
    ) -> Result<(), ScoreError> {
        let staging = self.sets[set].staging.buffer();
        let bytes = std::mem::size_of_val(out) as u64;
        self.ctx.map_read(staging, bytes, idx)?;
        {
            let view = staging
                .get_mapped_range(..bytes)
                .map_err(|e| ScoreError::Device(format!("reading mapped scores: {e}")))?;
            // Copy as bytes: the mapping need not be aligned for RowScore.
            bytemuck::cast_slice_mut::<RowScore, u8>(out).copy_from_slice(&view);
        }
        staging.unmap();
        Ok(())
    }
}

/// The compiled kernel of a walk.
fn kernel(ctx: &GpuContext, walk: Walk) -> &super::context::Kernel {
    match walk {
        Walk::Tiled { .. } => &ctx.iforest_tiled,
        Walk::Linked => &ctx.iforest,
    }
}

/// One copy thread's part of the staging view.
struct Part<'a>(wgpu::WriteOnly<'a, [u8]>);

// SAFETY: a `WriteOnly<[u8]>` is exclusive, write-only access to plain bytes,
// like `&mut [u8]`, which is `Send`; wgpu-types only spells out `Send` for
// sized targets.
unsafe impl Send for Part<'_> {}

impl Part<'_> {
    fn fill(mut self, src: &[u8]) {
        self.0.copy_from_slice(src);
    }
}

/// Copies `src` into `dst` in parts of [`COPY_PART`] bytes on the rayon pool.
fn parallel_copy(mut dst: wgpu::WriteOnly<'_, [u8]>, mut src: &[u8]) {
    let mut parts = Vec::with_capacity(src.len() / COPY_PART + 1);
    while src.len() > COPY_PART {
        let (head, tail) = dst.split_at(COPY_PART);
        let (from, rest) = src.split_at(COPY_PART);
        parts.push((Part(head), from));
        (dst, src) = (tail, rest);
    }
    parts.push((Part(dst), src));
    parts
        .into_par_iter()
        .for_each(|(part, from)| part.fill(from));
}

fn entry(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: buffer.as_entire_binding(),
    }
}

impl Scorer for GpuScorer {
    fn describe(&self) -> String {
        let walk = match self.walk {
            Walk::Tiled { .. } => "tiled",
            Walk::Linked => "linked",
        };
        format!("gpu: {} ({walk} walk)", self.ctx.adapter_info().name)
    }

    fn dims(&self) -> usize {
        self.dims
    }

    fn score(&mut self, rows: &[f32], out: &mut [RowScore]) -> Result<(), ScoreError> {
        self.score_batch(rows, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::random_model;

    /// The tiled buffers hold every tree of the implicit layout, in tree
    /// order, in stages that fit workgroup memory.
    #[test]
    fn tiled_layout_holds_every_tree_in_order() {
        for sample_size in [2, 16, 256, 512] {
            let model = random_model(5, 23, sample_size, 9);
            let packed = PackedForest::from_model(&model).unwrap();
            let implicit = ImplicitForest::new(&packed);
            let (words, directory, stages) = tiled_layout(&implicit);
            let stages = stages as usize;
            assert_eq!(directory.len(), 4 * (stages + implicit.trees.len()));
            let mut next_tree = 0;
            let mut next_word = 0;
            for s in 0..stages {
                let [start, len, first, count] = directory[4 * s..][..4] else {
                    unreachable!()
                };
                assert_eq!((start, first), (next_word, next_tree), "stage {s}");
                assert!(len <= STAGE_WORDS && count > 0, "stage {s}: {len} words");
                let stage = &words[start as usize..][..len as usize];
                for t in first..first + count {
                    let e = 4 * (stages + t as usize);
                    let [depth, features, thresholds, leaves] = directory[e..][..4] else {
                        unreachable!()
                    };
                    let (splits, want_leaves, want_depth) =
                        implicit.iter().nth(t as usize).unwrap();
                    assert_eq!(depth, want_depth);
                    for (i, split) in splits.iter().enumerate() {
                        assert_eq!(stage[features as usize + i], split.feature);
                        assert_eq!(stage[thresholds as usize + i], split.threshold.to_bits());
                    }
                    for (i, leaf) in want_leaves.iter().enumerate() {
                        assert_eq!(stage[leaves as usize + i], leaf.to_bits());
                    }
                }
                next_tree = first + count;
                next_word = start + len;
            }
            assert_eq!(next_tree as usize, implicit.trees.len());
            assert_eq!(next_word as usize, words.len());
        }
    }
}
