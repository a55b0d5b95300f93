//! Device buffers that are reused across batches and grow geometrically, so
//! steady-state scoring allocates nothing on the device.

/// Smallest allocation; wgpu refuses zero-sized bindings.
const MIN_BYTES: u64 = 256;

/// A buffer of at least `capacity` bytes, reallocated (doubling) only when a
/// request outgrows it. `generation` changes on every reallocation so owners
/// know when bind groups that name the buffer must be rebuilt.
pub(crate) struct GrowableBuffer {
    label: &'static str,
    usage: wgpu::BufferUsages,
    buffer: wgpu::Buffer,
    generation: u64,
}

impl GrowableBuffer {
    /// A buffer of `initial` bytes (at least [`MIN_BYTES`]).
    pub(crate) fn new(
        device: &wgpu::Device,
        label: &'static str,
        usage: wgpu::BufferUsages,
        initial: u64,
    ) -> Self {
        Self {
            label,
            usage,
            buffer: allocate(device, label, usage, initial.max(MIN_BYTES)),
            generation: 0,
        }
    }

    /// The current buffer.
    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Bumped on every reallocation.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Makes the buffer hold at least `bytes`, doubling but never past `limit`
    /// (the device's binding or buffer limit). Contents are not preserved;
    /// returns true when the buffer was replaced.
    pub(crate) fn ensure(&mut self, device: &wgpu::Device, bytes: u64, limit: u64) -> bool {
        if bytes <= self.buffer.size() {
            return false;
        }
        let size = grown_size(self.buffer.size(), bytes, limit);
        self.buffer = allocate(device, self.label, self.usage, size);
        self.generation += 1;
        true
    }
}

/// Next capacity for a buffer of `current` bytes that must hold `needed`:
/// at least double, at most `limit` (but never less than `needed`), rounded
/// up to 4 bytes as mapping and copies require.
pub(crate) fn grown_size(current: u64, needed: u64, limit: u64) -> u64 {
    let doubled = current.saturating_mul(2).min(limit);
    needed.max(doubled).max(MIN_BYTES).next_multiple_of(4)
}

/// A fresh buffer; wgpu zero-initialises it.
pub(crate) fn allocate(
    device: &wgpu::Device,
    label: &'static str,
    usage: wgpu::BufferUsages,
    size: u64,
) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage,
        mapped_at_creation: false,
    })
}

#[cfg(test)]
mod tests {
    use super::grown_size;

    #[test]
    fn grows_geometrically_within_the_limit() {
        assert_eq!(grown_size(1024, 1025, u64::MAX), 2048);
        assert_eq!(grown_size(1024, 5000, u64::MAX), 5000);
        assert_eq!(grown_size(1024, 1500, 1600), 1600);
        assert_eq!(grown_size(0, 1, 10), 256);
        assert_eq!(grown_size(256, 301, 301), 304);
    }
}
