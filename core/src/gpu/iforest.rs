//! Host side of `shaders/iforest.wgsl` and `shaders/iforest_implicit.wgsl`:
//! the GPU isolation-forest scorer.
//!
//! Two walks share one bind group layout and differ only in what the two
//! forest buffers hold:
//! - **implicit** (depth ≤ [`IMPLICIT_MAX_DEPTH`], ≤ [`IMPLICIT_MAX_DIMS`]
//!   features, which covers ψ ≤ 4096): complete trees with computed child
//!   indices and the row held in registers. Each tree level is contiguous,
//!   so an invocation group's loads at one level share a few cache lines.
//! - **linked**: the packed 16-byte nodes with child indices, for anything
//!   deeper or wider.

use super::buffers::GrowableBuffer;
use super::context::request_map;
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

/// Deepest forest the implicit walk takes: the implicit layout's bound.
pub use crate::forest::IMPLICIT_MAX_DEPTH;
/// Widest row the implicit walk takes: four vec4 registers.
pub const IMPLICIT_MAX_DIMS: usize = 16;

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
    _pad: [u32; 3],
}

/// Which kernel a scorer runs, and what its two forest buffers hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// `iforest_implicit.wgsl`: splits, then tree directory and leaves.
    Implicit,
    /// `iforest.wgsl`: packed nodes and root indices.
    Linked,
}

/// The implicit kernel's two buffers (see the WGSL): every split as two
/// words, feature and threshold bits; then per tree (first split, first
/// leaf, depth, 0) followed by every leaf's bits, leaf offsets counted in
/// that buffer.
pub(crate) fn implicit_buffers(forest: &ImplicitForest) -> (Vec<u32>, Vec<u32>) {
    let splits = forest
        .splits
        .iter()
        .flat_map(|s| [s.feature, s.threshold.to_bits()])
        .collect();
    let leaves_at = 4 * forest.trees.len() as u32;
    let mut index = Vec::with_capacity(leaves_at as usize + forest.leaves.len());
    for tree in &forest.trees {
        index.extend_from_slice(&[tree.splits, leaves_at + tree.leaves, tree.depth, 0]);
    }
    index.extend(forest.leaves.iter().map(|l| l.to_bits()));
    (splits, index)
}

/// Whether the implicit kernel can take `forest`.
fn implicit_fits(forest: &PackedForest) -> bool {
    forest.max_depth <= IMPLICIT_MAX_DEPTH && forest.dims <= IMPLICIT_MAX_DIMS
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

/// Where a set's upload buffer is in its map–fill–unmap–copy cycle.
enum Mapping {
    /// Not mapped and no map requested (new or just grown).
    Unmapped,
    /// Mapping requested after submission `.0`, which reads the buffer.
    Pending(wgpu::SubmissionIndex, super::context::MapReceiver),
}

/// One of the two ping-pong buffer sets: while one chunk computes and reads
/// back from a set, the next chunk is written into the other.
struct ChunkBuffers {
    /// Host-visible copy source for the rows, kept mapped between uses so
    /// an upload is one parallel copy into memory that is already resident.
    upload: GrowableBuffer,
    upload_state: Mapping,
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
            upload: GrowableBuffer::new(device, "iforest upload", U::MAP_WRITE | U::COPY_SRC, 0),
            upload_state: Mapping::Unmapped,
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
    /// Packed nodes (linked) or splits (implicit): binding 0.
    forest: wgpu::Buffer,
    /// Root indices (linked) or tree directory and leaves (implicit): binding 1.
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
        implicit: bool,
    ) -> Result<Self, ScoreError> {
        if forest.dims == 0 || forest.roots.is_empty() {
            return Err(ScoreError::Shape(
                "a forest needs at least one feature and one tree".into(),
            ));
        }
        let max_binding = ctx.max_binding();
        let (walk, forest_words, index_words) = if implicit && implicit_fits(forest) {
            let (splits, index) = implicit_buffers(&ImplicitForest::new(forest));
            (Walk::Implicit, splits, index)
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
    /// step: upload (fill the mapped upload buffer, copy it to the device,
    /// wait), kernel (the dispatches alone on rows already uploaded, waited
    /// for: wall-clock, not timestamp queries, so it works on every adapter)
    /// and readback (copy to staging, map, copy out). Both passes write
    /// `out`; their results are identical.
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
            self.upload(0, rows, out.len())?;
            let mut encoder = self.encoder();
            self.encode_upload(0, rows, &mut encoder);
            let idx = self.ctx.queue.submit([encoder.finish()]);
            self.remap_upload(0, idx.clone(), rows);
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
            self.upload(set, rows, out.len())?;
            let mut encoder = self.encoder();
            self.encode_upload(set, rows, &mut encoder);
            self.encode_dispatch(set, out.len(), &mut encoder);
            self.encode_copy(set, out.len(), &mut encoder);
            let idx = self.ctx.queue.submit([encoder.finish()]);
            self.remap_upload(set, idx.clone(), rows);
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
            // Never bound either, so only the buffer-size limit applies.
            if set
                .upload
                .ensure(device, row_bytes, self.ctx.limits.max_buffer_size & !3)
            {
                set.upload_state = Mapping::Unmapped;
            }
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

    /// Writes the chunk's rows into set `set`'s upload buffer (waiting
    /// until the GPU has finished with its last contents) and queues the
    /// kernel parameters.
    fn upload(&mut self, set: usize, rows: &[f32], count: usize) -> Result<(), ScoreError> {
        let params = KernelParams {
            rows: count as u32,
            dims: self.dims as u32,
            trees: self.trees,
            max_depth: self.max_depth,
            normaliser: self.normaliser,
            _pad: [0; 3],
        };
        let buffers = &mut self.sets[set];
        self.ctx
            .queue
            .write_buffer(&buffers.params, 0, bytemuck::bytes_of(&params));
        let bytes: &[u8] = bytemuck::cast_slice(rows);
        if bytes.is_empty() {
            return Ok(());
        }
        let upload = buffers.upload.buffer();
        match std::mem::replace(&mut buffers.upload_state, Mapping::Unmapped) {
            Mapping::Pending(submission, mapped) => self.ctx.await_map(mapped, Some(submission))?,
            Mapping::Unmapped => {
                let mapped = request_map(upload, wgpu::MapMode::Write, upload.size());
                self.ctx.await_map(mapped, None)?;
            }
        }
        {
            let mut view = upload
                .get_mapped_range_mut(..bytes.len() as u64)
                .map_err(|e| ScoreError::Device(format!("writing rows for upload: {e}")))?;
            // On every core: one thread's copy, not the bus, limits the
            // upload of a large batch.
            parallel_copy(view.slice(..), bytes);
        }
        upload.unmap();
        Ok(())
    }

    /// Copies the uploaded rows into the set's bound row buffer.
    fn encode_upload(&self, set: usize, rows: &[f32], encoder: &mut wgpu::CommandEncoder) {
        let buffers = &self.sets[set];
        let bytes = std::mem::size_of_val(rows) as u64;
        if bytes > 0 {
            encoder.copy_buffer_to_buffer(
                buffers.upload.buffer(),
                0,
                buffers.rows.buffer(),
                0,
                bytes,
            );
        }
    }

    /// Asks for set `set`'s upload buffer to be mapped again once
    /// `submission`, which reads it, is done.
    fn remap_upload(&mut self, set: usize, submission: wgpu::SubmissionIndex, rows: &[f32]) {
        if rows.is_empty() {
            return;
        }
        let buffers = &mut self.sets[set];
        let upload = buffers.upload.buffer();
        let mapped = request_map(upload, wgpu::MapMode::Write, upload.size());
        buffers.upload_state = Mapping::Pending(submission, mapped);
    }

    fn encode_dispatch(&self, set: usize, count: usize, encoder: &mut wgpu::CommandEncoder) {
        let Some((group, _)) = &self.sets[set].bind_group else {
            // ensure_capacity always builds it before a dispatch.
            return;
        };
        let groups = (count as u32).div_ceil(WORKGROUP_SIZE);
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
        Walk::Implicit => &ctx.iforest_implicit,
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
            Walk::Implicit => "implicit",
            Walk::Linked => "linked",
        };
        format!("gpu: {} ({walk} walk)", self.ctx.adapter_info().name)
    }

    fn dims(&self) -> usize {
        self.dims
    }

    fn score(&mut self, rows: &[f32], out: &mut [RowScore]) -> Result<(), ScoreError> {
        let ctx = self.ctx.clone();
        ctx.scoped(|| self.score_batch(rows, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::random_model;

    /// The implicit buffers hold every tree of the layout, in tree order.
    #[test]
    fn implicit_buffers_hold_every_tree_in_order() {
        for sample_size in [2, 16, 256, 4096] {
            let model = random_model(5, 23, sample_size, 9);
            let packed = PackedForest::from_model(&model).unwrap();
            let implicit = ImplicitForest::new(&packed);
            let (splits, index) = implicit_buffers(&implicit);
            assert_eq!(splits.len(), 2 * implicit.splits.len());
            for (t, (want_splits, want_leaves, want_depth)) in implicit.iter().enumerate() {
                let [first, leaves, depth, _] = index[4 * t..][..4] else {
                    unreachable!()
                };
                assert_eq!(depth, want_depth, "tree {t}");
                for (i, split) in want_splits.iter().enumerate() {
                    let at = 2 * (first as usize + i);
                    let got = &splits[at..at + 2];
                    assert_eq!(got, [split.feature, split.threshold.to_bits()], "tree {t}");
                }
                for (i, leaf) in want_leaves.iter().enumerate() {
                    assert_eq!(index[leaves as usize + i], leaf.to_bits(), "tree {t}");
                }
            }
            let leaves_at = 4 * implicit.trees.len();
            assert_eq!(index.len(), leaves_at + implicit.leaves.len());
        }
    }
}
