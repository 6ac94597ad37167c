//! What MLX this process actually runs on: the loaded libmlx's version, the default device, the BLAS the
//! dynamic loader picked for libmlx, and a matmul throughput probe.

use std::{ffi::CStr, fs, time::Instant};

use mlx_rs::{transforms::eval, Array, Device, DeviceType, Dtype};

/// For training runs on a CUDA GPU: turns MLX's CUDA graphs off unless `MLX_USE_CUDA_GRAPHS` is set. MLX
/// 0.32.2 keeps a lifetime count of graph-cache misses and throws ("Cache thrashing is happening") once it
/// passes twice `MLX_CUDA_GRAPH_CACHE_SIZE` (400), which a training run with many batch shapes reaches:
/// measured on an H200, a Qwen3-MoE LoRA run died at step ~150 of 200. Without graphs the same run was 5%
/// faster (BENCHMARKS.md), while decoding is faster with them, so only `host run` does this. Must run before
/// the first MLX computation (MLX reads the variable once). Returns what it set, for the log.
pub fn training_cuda_graph_default() -> Option<&'static str> {
    if std::env::var_os("MLX_USE_CUDA_GRAPHS").is_some() {
        return None;
    }
    // SAFETY (of the environment write): called at the start of `host run`, before any other thread exists.
    std::env::set_var("MLX_USE_CUDA_GRAPHS", "0");
    Some("MLX_USE_CUDA_GRAPHS=0")
}

/// The version reported by the libmlx loaded into this process (not the headers we compiled against).
pub fn mlx_version() -> String {
    // SAFETY: mlx_version writes a fresh string we own and free below.
    unsafe {
        let mut s = mlx_sys::mlx_string_new();
        let status = mlx_sys::mlx_version(&mut s);
        let text = if status == 0 && !mlx_sys::mlx_string_data(s).is_null() {
            CStr::from_ptr(mlx_sys::mlx_string_data(s)).to_string_lossy().into_owned()
        } else {
            "unknown".to_owned()
        };
        mlx_sys::mlx_string_free(s);
        text
    }
}

#[derive(Debug, Clone)]
pub struct DeviceFacts {
    pub kind: DeviceType,
    /// The backend's own name for the device (the GPU model on CUDA), when it reports one.
    pub name: Option<String>,
    pub gpu_count: i32,
}

/// An mlx-c device handle owned here (mlx-rs keeps its own handle private).
struct RawDevice(mlx_sys::mlx_device);

impl RawDevice {
    fn default() -> Self {
        // SAFETY: a fresh handle, filled in by mlx_get_default_device, freed on drop.
        unsafe {
            let mut dev = mlx_sys::mlx_device_new();
            mlx_sys::mlx_get_default_device(&mut dev);
            RawDevice(dev)
        }
    }

    fn gpu() -> Self {
        // SAFETY: constructing a device value has no side effect; freed on drop.
        RawDevice(unsafe { mlx_sys::mlx_device_new_type(mlx_sys::mlx_device_type__MLX_GPU, 0) })
    }

    fn is_available(&self) -> bool {
        let mut available = false;
        // SAFETY: plain out-parameter.
        unsafe { mlx_sys::mlx_device_is_available(&mut available, self.0) == 0 && available }
    }

    fn name(&self) -> Option<String> {
        // SAFETY: the info object is created, read and freed here; its string is copied before the free.
        unsafe {
            let mut info = mlx_sys::mlx_device_info_new();
            let mut name = None;
            if mlx_sys::mlx_device_info_get(&mut info, self.0) == 0 {
                let mut value: *const std::os::raw::c_char = std::ptr::null();
                let key = c"device_name";
                if mlx_sys::mlx_device_info_get_string(&mut value, info, key.as_ptr()) == 0 && !value.is_null() {
                    name = Some(CStr::from_ptr(value).to_string_lossy().into_owned());
                }
            }
            mlx_sys::mlx_device_info_free(info);
            name
        }
    }
}

impl Drop for RawDevice {
    fn drop(&mut self) {
        // SAFETY: we own the handle.
        unsafe { mlx_sys::mlx_device_free(self.0) };
    }
}

pub fn default_device() -> DeviceFacts {
    let kind = Device::try_default().and_then(|d| d.get_type()).unwrap_or(DeviceType::Cpu);
    let gpu = RawDevice::gpu();
    let mut gpu_count = 0;
    if gpu.is_available() {
        // SAFETY: plain out-parameter.
        unsafe { mlx_sys::mlx_device_count(&mut gpu_count, mlx_sys::mlx_device_type__MLX_GPU) };
    }
    DeviceFacts { kind, name: RawDevice::default().name(), gpu_count }
}

/// The BLAS libraries mapped into this process, as the dynamic loader resolved them.
#[derive(Debug, Clone)]
pub struct BlasFacts {
    /// OpenBLAS's own configuration string when OpenBLAS is loaded (version, kernel, threads).
    pub openblas_config: Option<String>,
    /// Real paths of loaded libraries whose names say BLAS or LAPACK.
    pub libraries: Vec<String>,
}

impl BlasFacts {
    pub fn summary(&self) -> String {
        if let Some(config) = &self.openblas_config {
            return config.trim().to_owned();
        }
        if self.libraries.iter().any(|l| l.contains("libblas")) {
            return "reference netlib BLAS".to_owned();
        }
        if cfg!(target_os = "macos") {
            return "Accelerate".to_owned();
        }
        "none found".to_owned()
    }
}

pub fn loaded_blas() -> BlasFacts {
    let mut libraries: Vec<String> = fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| {
            let name = path.rsplit('/').next().unwrap_or(path);
            name.contains("blas") || name.contains("lapack")
        })
        .map(str::to_owned)
        .collect();
    libraries.dedup();
    BlasFacts { openblas_config: openblas_config(), libraries }
}

fn openblas_config() -> Option<String> {
    // The symbol is global once libmlx has pulled OpenBLAS in; absent with the reference BLAS.
    let this = libloading::os::unix::Library::this();
    // SAFETY: openblas_get_config has signature `char* (void)` and returns a static string.
    unsafe {
        let f = this.get::<unsafe extern "C" fn() -> *const std::os::raw::c_char>(b"openblas_get_config\0").ok()?;
        let p = f();
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

/// Throughput of an n×n by n×n matmul on the default device, in GFLOP/s (2n³ flops per product).
pub fn matmul_gflops(n: i32, dtype: Dtype, iterations: u32) -> Result<f64, mlx_rs::error::Exception> {
    let key = mlx_rs::random::key(0)?;
    let a = mlx_rs::random::normal::<f32>(&[n, n], None, None, &key)?.as_dtype(dtype)?;
    let b = mlx_rs::random::normal::<f32>(&[n, n], None, None, &key)?.as_dtype(dtype)?;
    eval([&a, &b])?;
    let run = |count: u32| -> Result<f64, mlx_rs::error::Exception> {
        let start = Instant::now();
        for _ in 0..count {
            let c: Array = a.matmul(&b)?;
            eval([&c])?;
        }
        Ok(start.elapsed().as_secs_f64())
    };
    run(2)?; // warm-up: allocations, kernel JIT on GPUs
    let seconds = run(iterations)?;
    Ok(2.0 * f64::from(n).powi(3) * f64::from(iterations) / seconds / 1e9)
}
