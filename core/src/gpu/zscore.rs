//! Host side of `shaders/zscore.wgsl`: per-slot EWMA state kept on the device.

use super::buffers::{allocate, grown_size, GrowableBuffer};
use super::{dispatch_grid, GpuContext, WORKGROUP_SIZE};
use crate::features::zscore::{check_entries, ZEntry, ZParams, ZState};
use crate::features::ZEngine;
use crate::score::ScoreError;
use bytemuck::{Pod, Zeroable};
use std::mem::size_of;
use std::sync::Arc;

/// Uniform block of the kernel (`Batch` in the WGSL).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct BatchParams {
    segments: u32,
    _pad: [u32; 3],
}

/// Z-score state resident on the GPU; the twin of
/// [`crate::features::CpuZEngine`].
///
/// Slot state never leaves the device between batches. A batch's entries are
/// sorted stably by slot on the host, so each slot's entries form one segment
/// in arrival order, and one invocation walks one segment: slots run in
/// parallel, each slot's records strictly in order.
pub struct GpuZEngine {
    ctx: Arc<GpuContext>,
    params: GrowableBuffer,
    entries: GrowableBuffer,
    order: GrowableBuffer,
    starts: GrowableBuffer,
    out: GrowableBuffer,
    staging: GrowableBuffer,
    batch: wgpu::Buffer,
    states: wgpu::Buffer,
    /// Bumped when `states` is replaced by a larger buffer.
    states_generation: u64,
    bind_group: Option<(wgpu::BindGroup, [u64; 6])>,
    // Host scratch reused across batches.
    sorted: Vec<ZEntry>,
    order_host: Vec<u32>,
    starts_host: Vec<u32>,
}

impl GpuZEngine {
    /// Allocates (empty) state on the context's device; it grows with the
    /// number of slots in use.
    pub fn new(ctx: Arc<GpuContext>) -> Result<Self, ScoreError> {
        use wgpu::BufferUsages as U;
        let device = &ctx.device;
        let storage_in = U::STORAGE | U::COPY_DST;
        let engine = Self {
            params: GrowableBuffer::new(device, "zscore params", storage_in, 0),
            entries: GrowableBuffer::new(device, "zscore entries", storage_in, 0),
            order: GrowableBuffer::new(device, "zscore order", storage_in, 0),
            starts: GrowableBuffer::new(device, "zscore starts", storage_in, 0),
            out: GrowableBuffer::new(device, "zscore out", U::STORAGE | U::COPY_SRC, 0),
            staging: GrowableBuffer::new(device, "zscore staging", U::MAP_READ | U::COPY_DST, 0),
            batch: allocate(
                device,
                "zscore batch",
                U::UNIFORM | U::COPY_DST,
                size_of::<BatchParams>() as u64,
            ),
            states: allocate(device, "zscore states", state_usage(), 256),
            states_generation: 0,
            bind_group: None,
            sorted: Vec::new(),
            order_host: Vec::new(),
            starts_host: Vec::new(),
            ctx,
        };
        engine.ctx.check()?;
        Ok(engine)
    }

    /// Slots the state buffer holds before it must grow.
    pub fn state_capacity(&self) -> usize {
        (self.states.size() / size_of::<ZState>() as u64) as usize
    }

    /// Grows the state buffer to hold `slots`, carrying the old state over on
    /// the device (new slots start zeroed, like the CPU twin's).
    fn ensure_states(&mut self, slots: usize) -> Result<(), ScoreError> {
        let needed = (slots * size_of::<ZState>()) as u64;
        if needed <= self.states.size() {
            return Ok(());
        }
        let limit = self.ctx.max_binding() & !15;
        if needed > limit {
            return Err(ScoreError::Device(format!(
                "{slots} z-score slots need {needed} bytes of state, more than the adapter's \
                 {limit}-byte storage binding limit; lower the slot capacity"
            )));
        }
        let size = grown_size(self.states.size(), needed, limit).next_multiple_of(16);
        let grown = allocate(&self.ctx.device, "zscore states", state_usage(), size);
        let mut encoder = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("zscore grow"),
            });
        encoder.copy_buffer_to_buffer(&self.states, 0, &grown, 0, self.states.size());
        // Queue order puts the copy before the next batch's dispatch.
        self.ctx.queue.submit([encoder.finish()]);
        self.states = grown;
        self.states_generation += 1;
        Ok(())
    }

    /// Sorts `entries` stably by slot into `sorted`/`order_host` and records
    /// where each slot's segment starts.
    fn segment(&mut self, entries: &[ZEntry]) {
        let n = entries.len();
        let slots = entries
            .iter()
            .map(|e| e.slot as usize + 1)
            .max()
            .unwrap_or(0);
        self.order_host.clear();
        self.starts_host.clear();
        if slots > 8 * n {
            // Few records over a large table: a comparison sort is cheaper
            // than a count per slot.
            self.order_host.extend(0..n as u32);
            self.order_host.sort_by_key(|&i| entries[i as usize].slot);
            self.sorted.clear();
            self.sorted
                .extend(self.order_host.iter().map(|&i| entries[i as usize]));
            self.starts_host.push(0);
            for i in 1..n {
                if self.sorted[i].slot != self.sorted[i - 1].slot {
                    self.starts_host.push(i as u32);
                }
            }
        } else {
            // Counting sort: linear and stable, where sorting tens of
            // millions of indices by comparison takes seconds.
            let mut next = vec![0u32; slots];
            for e in entries {
                next[e.slot as usize] += 1;
            }
            let mut at = 0u32;
            for count in &mut next {
                if *count > 0 {
                    self.starts_host.push(at);
                }
                (at, *count) = (at + *count, at);
            }
            self.order_host.resize(n, 0);
            self.sorted.resize(n, ZEntry::default());
            for (i, e) in entries.iter().enumerate() {
                let p = &mut next[e.slot as usize];
                self.order_host[*p as usize] = i as u32;
                self.sorted[*p as usize] = *e;
                *p += 1;
            }
        }
        self.starts_host.push(n as u32);
    }

    /// Runs one sub-batch small enough for every binding.
    fn run_part(
        &mut self,
        params: &[ZParams],
        entries: &[ZEntry],
        out: &mut [f32],
    ) -> Result<(), ScoreError> {
        self.segment(entries);
        let device = &self.ctx.device;
        let limit = self.ctx.max_binding() & !3;
        let entry_bytes = std::mem::size_of_val(entries) as u64;
        let out_bytes = std::mem::size_of_val(out) as u64;
        self.params
            .ensure(device, std::mem::size_of_val(params) as u64, limit);
        self.entries.ensure(device, entry_bytes, limit);
        self.order.ensure(device, out_bytes, limit);
        self.starts.ensure(
            device,
            (self.starts_host.len() * size_of::<u32>()) as u64,
            limit,
        );
        self.out.ensure(device, out_bytes, limit);
        self.staging
            .ensure(device, out_bytes, self.ctx.limits.max_buffer_size & !3);

        let generations = [
            self.params.generation(),
            self.entries.generation(),
            self.order.generation(),
            self.starts.generation(),
            self.out.generation(),
            self.states_generation,
        ];
        if self.bind_group.as_ref().map(|(_, g)| *g) != Some(generations) {
            let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("zscore"),
                layout: &self.ctx.zscore.layout,
                entries: &[
                    entry(0, self.params.buffer()),
                    entry(1, self.entries.buffer()),
                    entry(2, self.order.buffer()),
                    entry(3, self.starts.buffer()),
                    entry(4, &self.states),
                    entry(5, self.out.buffer()),
                    entry(6, &self.batch),
                ],
            });
            self.bind_group = Some((group, generations));
        }
        let Some((group, _)) = &self.bind_group else {
            return Err(ScoreError::Device("z-score bind group missing".into()));
        };

        let segments = (self.starts_host.len() - 1) as u32;
        let queue = &self.ctx.queue;
        queue.write_buffer(self.params.buffer(), 0, bytemuck::cast_slice(params));
        queue.write_buffer(self.entries.buffer(), 0, bytemuck::cast_slice(&self.sorted));
        queue.write_buffer(
            self.order.buffer(),
            0,
            bytemuck::cast_slice(&self.order_host),
        );
        queue.write_buffer(
            self.starts.buffer(),
            0,
            bytemuck::cast_slice(&self.starts_host),
        );
        let batch = BatchParams {
            segments,
            _pad: [0; 3],
        };
        queue.write_buffer(&self.batch, 0, bytemuck::bytes_of(&batch));

        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("zscore"),
        });
        {
            let groups = segments.div_ceil(WORKGROUP_SIZE);
            let (x, y) =
                dispatch_grid(groups, self.ctx.limits.max_compute_workgroups_per_dimension);
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("zscore"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&self.ctx.zscore.pipeline);
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(x, y, 1);
        }
        encoder.copy_buffer_to_buffer(self.out.buffer(), 0, self.staging.buffer(), 0, out_bytes);
        let idx = queue.submit([encoder.finish()]);

        let staging = self.staging.buffer();
        self.ctx.map_read(staging, out_bytes, idx)?;
        {
            let view = staging
                .get_mapped_range(..out_bytes)
                .map_err(|e| ScoreError::Device(format!("reading mapped z-scores: {e}")))?;
            bytemuck::cast_slice_mut::<f32, u8>(out).copy_from_slice(&view);
        }
        staging.unmap();
        Ok(())
    }
}

fn state_usage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
}

fn entry(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: buffer.as_entire_binding(),
    }
}

impl ZEngine for GpuZEngine {
    fn run(
        &mut self,
        params: &[ZParams],
        entries: &[ZEntry],
        slots: usize,
        out: &mut [f32],
    ) -> Result<(), ScoreError> {
        check_entries(params, entries, slots, out)?;
        if entries.is_empty() {
            return Ok(());
        }
        let ctx = self.ctx.clone();
        ctx.scoped(|| {
            self.ctx.check()?;
            self.ensure_states(slots)?;
            // Sub-batches run in order against the same state, so splitting
            // only bounds binding sizes; it cannot change a result.
            let per_part = (self.ctx.max_binding() / size_of::<ZEntry>() as u64).max(1) as usize;
            for (entries, out) in entries.chunks(per_part).zip(out.chunks_mut(per_part)) {
                self.run_part(params, entries, out)?;
            }
            Ok(())
        })
    }

    fn read_states(&mut self, slots: &[u32], allocated: usize) -> Result<Vec<ZState>, ScoreError> {
        let Some(&last) = slots.iter().max() else {
            return Ok(Vec::new());
        };
        let ctx = self.ctx.clone();
        ctx.scoped(|| {
            self.ensure_states(allocated.max(last as usize + 1))?;
            // The span the slots cover, read back in one copy: a checkpoint
            // asks for the keys of a few batches, which sit close together
            // in a table filled in arrival order.
            let first = *slots.iter().min().expect("not empty") as u64;
            let unit = size_of::<ZState>() as u64;
            let bytes = (u64::from(last) + 1 - first) * unit;
            let device = &self.ctx.device;
            self.staging
                .ensure(device, bytes, self.ctx.limits.max_buffer_size & !3);
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("zscore read states"),
            });
            encoder.copy_buffer_to_buffer(
                &self.states,
                first * unit,
                self.staging.buffer(),
                0,
                bytes,
            );
            let idx = self.ctx.queue.submit([encoder.finish()]);
            let staging = self.staging.buffer();
            self.ctx.map_read(staging, bytes, idx)?;
            let states = {
                let view = staging
                    .get_mapped_range(..bytes)
                    .map_err(|e| ScoreError::Device(format!("reading z-score state: {e}")))?;
                let span: &[ZState] = bytemuck::cast_slice(&view);
                slots
                    .iter()
                    .map(|&s| span[(u64::from(s) - first) as usize])
                    .collect()
            };
            staging.unmap();
            Ok(states)
        })
    }

    fn write_states(
        &mut self,
        states: &[(u32, ZState)],
        allocated: usize,
    ) -> Result<(), ScoreError> {
        if states.is_empty() {
            return Ok(());
        }
        let ctx = self.ctx.clone();
        ctx.scoped(|| {
            self.ensure_states(allocated)?;
            // Slots in runs, one write each: a restore fills a fresh
            // table from slot 0 up.
            // Reversed, so that of a slot written twice the stable sort
            // puts the later state first, which the dedup keeps.
            let mut sorted: Vec<(u32, ZState)> = states.iter().rev().copied().collect();
            sorted.sort_by_key(|&(slot, _)| slot);
            sorted.dedup_by_key(|&mut (slot, _)| slot);
            let unit = size_of::<ZState>() as u64;
            let mut run: Vec<ZState> = Vec::new();
            let mut start = 0;
            for (i, &(slot, state)) in sorted.iter().enumerate() {
                if i > 0 && slot != sorted[i - 1].0 + 1 {
                    let at = u64::from(start) * unit;
                    self.ctx
                        .queue
                        .write_buffer(&self.states, at, bytemuck::cast_slice(&run));
                    run.clear();
                }
                if run.is_empty() {
                    start = slot;
                }
                run.push(state);
            }
            let at = u64::from(start) * unit;
            self.ctx
                .queue
                .write_buffer(&self.states, at, bytemuck::cast_slice(&run));
            self.ctx.check()
        })
    }
}
