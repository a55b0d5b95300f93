//! Host side of `shaders/iforest.wgsl`: the GPU isolation-forest scorer.

use super::buffers::GrowableBuffer;
use super::{dispatch_grid, GpuContext, WORKGROUP_SIZE};
use crate::forest::PackedForest;
use crate::score::{check_shape, RowScore, ScoreError, Scorer};
use bytemuck::{Pod, Zeroable};
use std::mem::size_of;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wgpu::util::DeviceExt;

/// Rows per dispatch chunk unless the device's binding limit forces fewer:
/// large enough to keep a GPU busy, small enough that a 1M-row batch is
/// several chunks and upload overlaps compute.
pub const DEFAULT_CHUNK_ROWS: usize = 1 << 18;

/// Uniform block of the kernel (`Params` in the WGSL).
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
/// The forest is uploaded once. Row, output and staging buffers are reused
/// across batches and grow geometrically; a batch is split into chunks that
/// respect the device's binding and dispatch limits.
pub struct GpuScorer {
    ctx: Arc<GpuContext>,
    dims: usize,
    trees: u32,
    max_depth: u32,
    normaliser: f32,
    nodes: wgpu::Buffer,
    roots: wgpu::Buffer,
    chunk_rows: usize,
    sets: [ChunkBuffers; 2],
}

impl GpuScorer {
    /// Uploads the forest to the context's device.
    pub fn new(ctx: Arc<GpuContext>, forest: &PackedForest) -> Result<Self, ScoreError> {
        Self::with_chunk_rows(ctx, forest, DEFAULT_CHUNK_ROWS)
    }

    /// Like [`Self::new`] with at most `chunk_rows` rows per dispatch (the
    /// device's limits may lower it further). Small values let tests cover
    /// multi-chunk batches quickly.
    pub fn with_chunk_rows(
        ctx: Arc<GpuContext>,
        forest: &PackedForest,
        chunk_rows: usize,
    ) -> Result<Self, ScoreError> {
        if forest.dims == 0 || forest.roots.is_empty() {
            return Err(ScoreError::Shape(
                "a forest needs at least one feature and one tree".into(),
            ));
        }
        let max_binding = ctx.max_binding();
        let nodes_bytes = std::mem::size_of_val(forest.nodes.as_slice()) as u64;
        if nodes_bytes > max_binding {
            return Err(ScoreError::Device(format!(
                "forest of {} nodes needs {nodes_bytes} bytes, more than the adapter's \
                 {max_binding}-byte storage binding limit; score on the CPU",
                forest.nodes.len()
            )));
        }
        // Largest chunk whose rows and outputs each fit one binding.
        let row_bytes = (forest.dims * size_of::<f32>()).max(size_of::<RowScore>()) as u64;
        let chunk_rows = chunk_rows.clamp(1, (max_binding / row_bytes).max(1) as usize);

        let device = &ctx.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let nodes = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("iforest nodes"),
            contents: bytemuck::cast_slice(&forest.nodes),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let roots = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("iforest roots"),
            contents: bytemuck::cast_slice(&forest.roots),
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
            nodes,
            roots,
            chunk_rows,
            sets,
            ctx,
        })
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
                    layout: &self.ctx.iforest.layout,
                    entries: &[
                        entry(0, &self.nodes),
                        entry(1, &self.roots),
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
            _pad: [0; 3],
        };
        self.ctx
            .queue
            .write_buffer(&buffers.params, 0, bytemuck::bytes_of(&params));
        self.ctx
            .queue
            .write_buffer(buffers.rows.buffer(), 0, bytemuck::cast_slice(rows));
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
        pass.set_pipeline(&self.ctx.iforest.pipeline);
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

fn entry(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: buffer.as_entire_binding(),
    }
}

impl Scorer for GpuScorer {
    fn describe(&self) -> String {
        format!("gpu: {}", self.ctx.adapter_info().name)
    }

    fn dims(&self) -> usize {
        self.dims
    }

    fn score(&mut self, rows: &[f32], out: &mut [RowScore]) -> Result<(), ScoreError> {
        self.score_batch(rows, out)
    }
}
