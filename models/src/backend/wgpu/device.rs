//! Adapter choice and device setup.
//!
//! Adapters are enumerated on the backends `WGPU_BACKEND` allows (wgpu's own syntax:
//! `vulkan`, `metal`, `dx12`, comma-separated; default all of them), narrowed to those
//! whose name contains `WGPU_ADAPTER_NAME` (case-insensitive) when it is set, and ranked
//! discrete GPU > integrated > virtual > other > software. [`WgpuOptions::hardware_only`]
//! drops software rasterisers (Mesa lavapipe/llvmpipe, SwiftShader, WARP): they run
//! the kernels on the CPU more slowly than the CPU backend does, so `auto` must never
//! take one.

use std::sync::{Arc, Mutex};

/// How to choose and set up the adapter.
#[derive(Debug, Clone)]
pub struct WgpuOptions {
    /// Only adapters whose name contains this (case-insensitive).
    pub adapter_name: Option<String>,
    /// Backends to enumerate (`None`: all compiled in).
    pub backends: Option<wgpu::Backends>,
    /// Refuse software adapters (CPU rasterisers).
    pub hardware_only: bool,
    /// Store weights as f16 when the adapter has `SHADER_F16` (accumulation stays f32).
    pub f16_weights: bool,
}

impl Default for WgpuOptions {
    /// Any adapter, f16 weights where supported; no environment.
    fn default() -> Self {
        Self {
            adapter_name: None,
            backends: None,
            hardware_only: false,
            f16_weights: true,
        }
    }
}

impl WgpuOptions {
    /// The defaults, with `WGPU_ADAPTER_NAME` and `WGPU_BACKEND` applied when set.
    pub fn from_env() -> Self {
        Self {
            adapter_name: std::env::var("WGPU_ADAPTER_NAME")
                .ok()
                .filter(|s| !s.is_empty()),
            backends: wgpu::Backends::from_env(),
            ..Self::default()
        }
    }
}

/// Errors setting up the wgpu backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WgpuInitError {
    /// No adapter passed the filters.
    #[error(
        "no suitable GPU adapter{wanted}; adapters found: {found}. Install a Vulkan \
         driver (Linux: mesa-vulkan-drivers for a software one), set WGPU_ADAPTER_NAME \
         to one of the names found, or use the CPU backend"
    )]
    NoAdapter {
        /// What was asked for, as a phrase (empty when nothing special).
        wanted: String,
        /// The adapters seen, with their type.
        found: String,
    },
    /// The adapter refused to open a device.
    #[error("adapter {adapter:?} could not open a device: {detail}")]
    Device {
        /// The adapter's name.
        adapter: String,
        /// wgpu's message.
        detail: String,
    },
}

/// Whether an adapter is a software rasteriser. lavapipe reports `DeviceType::Cpu`;
/// the names catch drivers that report `Other` for the same thing.
pub(crate) fn is_software(info: &wgpu::AdapterInfo) -> bool {
    let name = info.name.to_ascii_lowercase();
    info.device_type == wgpu::DeviceType::Cpu
        || ["llvmpipe", "lavapipe", "swiftshader", "basic render driver"]
            .iter()
            .any(|s| name.contains(s))
}

fn rank(info: &wgpu::AdapterInfo) -> u8 {
    if is_software(info) {
        return 0;
    }
    match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 1,
        wgpu::DeviceType::Cpu => 0,
    }
}

/// The device and what the kernels need to know about it.
pub(crate) struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: wgpu::AdapterInfo,
    pub(crate) limits: wgpu::Limits,
    pub(crate) f16: bool,
    /// The first uncaptured device error (validation, out of memory), reported by the
    /// next op that reaches the queue instead of wgpu's default panic.
    pub(crate) error: Arc<Mutex<Option<String>>>,
}

/// Picks an adapter by `options` and opens a device on it.
pub(crate) fn open(options: &WgpuOptions) -> Result<Gpu, WgpuInitError> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    if let Some(b) = options.backends {
        desc.backends = b;
    }
    let backends = desc.backends;
    let instance = wgpu::Instance::new(desc);
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    let found = if adapters.is_empty() {
        "none".to_string()
    } else {
        adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{:?} ({:?}, {:?})", i.name, i.device_type, i.backend)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let wanted_name = options.adapter_name.as_ref().map(|s| s.to_lowercase());
    let best = adapters
        .into_iter()
        .filter(|a| {
            let info = a.get_info();
            let named = wanted_name
                .as_ref()
                .is_none_or(|w| info.name.to_lowercase().contains(w));
            named && !(options.hardware_only && is_software(&info))
        })
        // max_by_key keeps the last of equals; reverse so the enumeration order wins ties.
        .rev()
        .max_by_key(|a| rank(&a.get_info()));
    let Some(adapter) = best else {
        let mut wanted = String::new();
        if let Some(n) = &options.adapter_name {
            wanted.push_str(&format!(" named like {n:?}"));
        }
        if options.hardware_only {
            wanted.push_str(" (hardware only)");
        }
        return Err(WgpuInitError::NoAdapter { wanted, found });
    };
    let info = adapter.get_info();
    let f16 = options.f16_weights && adapter.features().contains(wgpu::Features::SHADER_F16);
    // Ask for everything the adapter offers: big activations need its real buffer limits,
    // not WebGPU's portable defaults.
    let limits = adapter.limits();
    let request = wgpu::DeviceDescriptor {
        label: Some("splitstream"),
        required_features: if f16 {
            wgpu::Features::SHADER_F16
        } else {
            wgpu::Features::empty()
        },
        required_limits: limits.clone(),
        memory_hints: wgpu::MemoryHints::Performance,
        ..Default::default()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&request)).map_err(|e| {
        WgpuInitError::Device {
            adapter: info.name.clone(),
            detail: e.to_string(),
        }
    })?;
    let error = Arc::new(Mutex::new(None::<String>));
    let slot = Arc::clone(&error);
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        if let Ok(mut s) = slot.lock() {
            s.get_or_insert_with(|| e.to_string());
        }
    }));
    Ok(Gpu {
        device,
        queue,
        info,
        limits,
        f16,
        error,
    })
}
