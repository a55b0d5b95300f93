//! Adapter discovery and the long-lived device, queue and pipelines.

use super::{IFOREST_IMPLICIT_WGSL, IFOREST_WGSL, ZSCORE_WGSL};
use crate::score::ScoreError;
use std::fmt;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// What `isoflow info` prints about one adapter: enough to see why scoring
/// would (not) use it and how large a batch one dispatch can take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSummary {
    /// Adapter name, e.g. "NVIDIA GeForce RTX 4090" or "llvmpipe (LLVM 15...)".
    pub name: String,
    /// Graphics API behind it ("Vulkan", "Metal", "Dx12", "Gl").
    pub backend: String,
    /// Discrete, integrated, virtual, CPU (software) or other.
    pub device_type: String,
    /// Driver name and version.
    pub driver: String,
    /// Largest storage binding in bytes: bounds rows per dispatch chunk.
    pub max_storage_buffer_binding_size: u64,
    /// Largest workgroup count in one dispatch dimension.
    pub max_compute_workgroups_per_dimension: u32,
    /// Largest buffer in bytes.
    pub max_buffer_size: u64,
}

impl AdapterSummary {
    fn new(info: &wgpu::AdapterInfo, limits: &wgpu::Limits) -> Self {
        let driver = match (info.driver.is_empty(), info.driver_info.is_empty()) {
            (false, false) => format!("{} ({})", info.driver, info.driver_info),
            (false, true) => info.driver.clone(),
            (true, _) => info.driver_info.clone(),
        };
        Self {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            max_buffer_size: limits.max_buffer_size,
        }
    }
}

impl fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} [{} {}]", self.name, self.backend, self.device_type)?;
        writeln!(f, "  driver:                        {}", self.driver)?;
        writeln!(
            f,
            "  max storage binding:           {} MiB",
            self.max_storage_buffer_binding_size >> 20
        )?;
        writeln!(
            f,
            "  max buffer:                    {} MiB",
            self.max_buffer_size >> 20
        )?;
        write!(
            f,
            "  max workgroups per dimension:  {}",
            self.max_compute_workgroups_per_dimension
        )
    }
}

fn instance() -> wgpu::Instance {
    // Vulkan, Metal and DX12 only by default: GL compute is a poor fit and its
    // EGL probing prints noise on headless hosts. WGPU_BACKEND overrides.
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = wgpu::Backends::PRIMARY.with_env();
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu can see on this machine, for `isoflow info`.
pub fn list_adapters() -> Vec<AdapterSummary> {
    let adapters =
        pollster::block_on(instance().enumerate_adapters(wgpu::Backends::PRIMARY.with_env()));
    adapters
        .iter()
        .map(|a| AdapterSummary::new(&a.get_info(), &a.limits()))
        .collect()
}

/// The `NoAdapter` error: what was seen and how to get a driver.
fn no_adapter(seen: &[AdapterSummary], why: &str) -> ScoreError {
    let seen = if seen.is_empty() {
        "none".to_owned()
    } else {
        seen.iter()
            .map(|a| format!("{} [{} {}]", a.name, a.backend, a.device_type))
            .collect::<Vec<_>>()
            .join(", ")
    };
    ScoreError::NoAdapter(format!(
        "no usable GPU adapter ({why}; adapters seen: {seen}). Install a Vulkan driver, \
         e.g. `apt-get install mesa-vulkan-drivers libvulkan1` for software Vulkan, \
         or score with --backend cpu"
    ))
}

/// A compiled kernel and the bind group layout its host code fills.
pub(crate) struct Kernel {
    pub(crate) layout: wgpu::BindGroupLayout,
    pub(crate) pipeline: wgpu::ComputePipeline,
}

/// Long-lived wgpu device, queue and compiled pipelines.
///
/// Built once and shared (`Arc`) by every scorer and z-engine, of the
/// pipelines and of API requests alike. Each scoring call runs in error
/// scopes of its own (`Self::scoped`; wgpu keeps them per thread), so a
/// call's validation or out-of-memory error is that call's alone. A lost
/// device fails every call from then on.
pub struct GpuContext {
    info: wgpu::AdapterInfo,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) limits: wgpu::Limits,
    pub(crate) iforest: Kernel,
    pub(crate) iforest_implicit: Kernel,
    pub(crate) zscore: Kernel,
    /// First error outside any scope, taken by [`Self::check`].
    fault: Arc<Mutex<Option<String>>>,
    /// Why the device was lost, once it was: never taken.
    lost: Arc<Mutex<Option<String>>>,
}

impl GpuContext {
    /// Opens the best adapter (high-performance preferred; a software adapter
    /// such as lavapipe is accepted) and compiles the kernels.
    ///
    /// Without any adapter this is [`ScoreError::NoAdapter`], naming the
    /// adapters seen and how to install a driver.
    pub fn new() -> Result<Arc<Self>, ScoreError> {
        let instance = instance();
        let requested =
            pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            }));
        let adapter = match requested {
            Ok(adapter) => adapter,
            Err(e) => {
                // request_adapter can be pickier than enumeration (e.g. about
                // CPU adapters); take any adapter that exists before giving up.
                let adapters = pollster::block_on(
                    instance.enumerate_adapters(wgpu::Backends::PRIMARY.with_env()),
                );
                match adapters.into_iter().next() {
                    Some(adapter) => adapter,
                    None => return Err(no_adapter(&list_adapters(), &e.to_string())),
                }
            }
        };
        Self::from_adapter(&adapter)
    }

    /// Opens a device on `adapter` (for tests and embedders that choose their
    /// own) with the adapter's full limits, and compiles the kernels.
    pub fn from_adapter(adapter: &wgpu::Adapter) -> Result<Arc<Self>, ScoreError> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("isoflow"),
            required_features: wgpu::Features::empty(),
            // The adapter's own limits: bigger bindings mean fewer chunks.
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| {
            no_adapter(
                &[AdapterSummary::new(&info, &limits)],
                &format!("cannot open a device on {}: {e}", info.name),
            )
        })?;

        let fault: Arc<Mutex<Option<String>>> = Arc::default();
        // The default handler panics; record the first error instead so the
        // failing batch returns ScoreError::Device and the caller can fall back.
        let sink = fault.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            record(&sink, e.to_string());
        }));
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let sink = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            record(&sink, format!("device lost ({reason:?}): {message}"));
        });

        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let iforest = Kernel::new(&device, "iforest", IFOREST_WGSL, &iforest_bindings());
        let iforest_implicit = Kernel::new(
            &device,
            "iforest implicit",
            IFOREST_IMPLICIT_WGSL,
            &iforest_bindings(),
        );
        let zscore = Kernel::new(&device, "zscore", ZSCORE_WGSL, &zscore_bindings());
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(ScoreError::Device(format!(
                "compiling the kernels on {}: {e}",
                info.name
            )));
        }
        tracing::info!(
            adapter = %info.name,
            backend = ?info.backend,
            device_type = ?info.device_type,
            max_storage_binding = limits.max_storage_buffer_binding_size,
            "opened GPU device"
        );
        Ok(Arc::new(Self {
            info,
            device,
            queue,
            limits,
            iforest,
            iforest_implicit,
            zscore,
            fault,
            lost,
        }))
    }

    /// The adapter this context runs on.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The adapter's summary (name, backend, limits).
    pub fn summary(&self) -> AdapterSummary {
        AdapterSummary::new(&self.info, &self.limits)
    }

    /// Largest storage binding, capped so row indices stay within u32.
    pub(crate) fn max_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
            .min(u32::MAX as u64)
    }

    /// Runs `work` (GPU calls on this thread) in error scopes of its own:
    /// a validation, out-of-memory or internal error it causes fails it,
    /// and no other call.
    pub(crate) fn scoped<T>(
        &self,
        work: impl FnOnce() -> Result<T, ScoreError>,
    ) -> Result<T, ScoreError> {
        let scopes = [
            wgpu::ErrorFilter::Validation,
            wgpu::ErrorFilter::OutOfMemory,
            wgpu::ErrorFilter::Internal,
        ]
        .map(|filter| self.device.push_error_scope(filter));
        let result = work();
        // Innermost first.
        let mut first = None;
        for scope in scopes.into_iter().rev() {
            if let Some(e) = pollster::block_on(scope.pop()) {
                first.get_or_insert(e.to_string());
            }
        }
        match (result, first) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(message)) => Err(ScoreError::Device(message)),
            (Ok(value), None) => Ok(value),
        }
    }

    /// Fails once the device is lost, or with the first error reported
    /// outside any scope since the last check.
    pub(crate) fn check(&self) -> Result<(), ScoreError> {
        if let Some(lost) = self.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(ScoreError::Device(lost));
        }
        match self.fault.lock().map(|mut f| f.take()) {
            Ok(None) => Ok(()),
            Ok(Some(message)) => Err(ScoreError::Device(message)),
            Err(_) => Err(ScoreError::Device("device error handler panicked".into())),
        }
    }

    /// Blocks until `submission` has finished, then reports device errors.
    pub(crate) fn wait(&self, submission: wgpu::SubmissionIndex) -> Result<(), ScoreError> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(submission),
                timeout: None,
            })
            .map_err(|e| ScoreError::Device(format!("waiting for the GPU: {e}")))?;
        self.check()
    }

    /// Maps the first `bytes` of `staging` for reading, waiting for
    /// `submission` (which wrote it); the caller reads then unmaps.
    pub(crate) fn map_read(
        &self,
        staging: &wgpu::Buffer,
        bytes: u64,
        submission: wgpu::SubmissionIndex,
    ) -> Result<(), ScoreError> {
        let mapped = request_map(staging, wgpu::MapMode::Read, bytes);
        self.await_map(mapped, Some(submission))
    }

    /// Waits for a mapping from [`request_map`]: first for `submission` (the
    /// last work that uses the buffer) where known, so later submissions
    /// keep running, then for the callback itself.
    pub(crate) fn await_map(
        &self,
        mapped: MapReceiver,
        submission: Option<wgpu::SubmissionIndex>,
    ) -> Result<(), ScoreError> {
        if let Some(submission) = submission {
            self.wait(submission)?;
        }
        let result = match mapped.try_recv() {
            Ok(result) => result,
            // The submission is done but the callback not yet run: drain it.
            Err(_) => {
                self.device
                    .poll(wgpu::PollType::wait_indefinitely())
                    .map_err(|e| ScoreError::Device(format!("waiting for the GPU: {e}")))?;
                mapped
                    .recv()
                    .map_err(|_| ScoreError::Device("buffer mapping was abandoned".into()))?
            }
        };
        result.map_err(|e| ScoreError::Device(format!("mapping a transfer buffer: {e}")))?;
        self.check()
    }
}

/// Receives the outcome of a buffer mapping.
pub(crate) type MapReceiver = mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>;

/// Asks for the first `bytes` of `buffer` to be mapped once the GPU is done
/// with it; [`GpuContext::await_map`] waits for it.
pub(crate) fn request_map(buffer: &wgpu::Buffer, mode: wgpu::MapMode, bytes: u64) -> MapReceiver {
    let (done, mapped) = mpsc::channel();
    buffer.map_async(mode, ..bytes, move |result| {
        // The receiver may be gone if the buffer was replaced; nothing waits then.
        let _ = done.send(result);
    });
    mapped
}

fn record(sink: &Mutex<Option<String>>, message: String) {
    if let Ok(mut fault) = sink.lock() {
        fault.get_or_insert(message);
    }
}

impl Kernel {
    fn new(
        device: &wgpu::Device,
        label: &'static str,
        source: &'static str,
        entries: &[wgpu::BindGroupLayoutEntry],
    ) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(label),
            entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        Self { layout, pipeline }
    }
}

fn storage(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

fn uniform(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

/// Both forest kernels: the forest's two buffers, rows (read); out
/// (read_write); params (uniform).
fn iforest_bindings() -> [wgpu::BindGroupLayoutEntry; 5] {
    [
        storage(0, true),
        storage(1, true),
        storage(2, true),
        storage(3, false),
        uniform(4),
    ]
}

/// params, entries, order, starts (read); states, out (read_write); batch (uniform).
fn zscore_bindings() -> [wgpu::BindGroupLayoutEntry; 7] {
    [
        storage(0, true),
        storage(1, true),
        storage(2, true),
        storage(3, true),
        storage(4, false),
        storage(5, false),
        uniform(6),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two callers share one device: an error one of them causes fails that
    /// one, never the other, whichever checks first.
    #[test]
    fn a_callers_error_is_its_own() {
        let ctx = GpuContext::new().expect("GPU tests need an adapter (lavapipe in CI)");
        let bad = ctx.clone();
        let failing = std::thread::spawn(move || {
            bad.scoped(|| {
                // MAP_READ may only go with COPY_DST: a validation error.
                let _buffer = bad.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("invalid"),
                    size: 16,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                });
                Ok(())
            })
        })
        .join()
        .unwrap();
        assert!(
            matches!(&failing, Err(ScoreError::Device(_))),
            "{failing:?}"
        );
        // The other caller, checking after: clean.
        ctx.scoped(|| ctx.check()).expect("no error of its own");
    }
}
