use anyhow::Context;
use clap::Args;
use host::runtime;
use mlx_rs::{DeviceType, Dtype};

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Matrix sizes n for the n×n·n×n matmul probe (default: 1024 on the CPU, 4096 on a GPU).
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<i32>,
    /// Dtypes for the probe: f32, bf16, f16 (default: f32 on the CPU, f32 and bf16 on a GPU).
    #[arg(long, value_delimiter = ',', value_parser = parse_dtype)]
    dtypes: Vec<Dtype>,
    /// Timed products per size and dtype.
    #[arg(long, default_value_t = 10)]
    iterations: u32,
    /// Skip the probe.
    #[arg(long)]
    no_probe: bool,
}

fn parse_dtype(text: &str) -> Result<Dtype, String> {
    match text {
        "f32" | "float32" => Ok(Dtype::Float32),
        "bf16" | "bfloat16" => Ok(Dtype::Bfloat16),
        "f16" | "float16" => Ok(Dtype::Float16),
        other => Err(format!("unknown dtype `{other}`: expected f32, bf16 or f16")),
    }
}

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let device = runtime::default_device();
    let on_gpu = matches!(device.kind, DeviceType::Gpu);
    println!("host        {}", env!("CARGO_PKG_VERSION"));
    println!("MLX         {} (built against {})", runtime::mlx_version(), mlx_sys::MLX_VERSION);
    println!("MLX build   {}", mlx_sys::BUILD);
    let kind = if on_gpu { "gpu" } else { "cpu" };
    match &device.name {
        Some(name) => println!("device      {kind} ({name})"),
        None => println!("device      {kind}"),
    }
    println!("GPUs        {}", device.gpu_count);
    let blas = runtime::loaded_blas();
    println!("BLAS        {}", blas.summary());
    for lib in &blas.libraries {
        println!("            {lib}");
    }
    if args.no_probe {
        return Ok(());
    }
    let sizes = if args.sizes.is_empty() { vec![if on_gpu { 4096 } else { 1024 }] } else { args.sizes };
    let dtypes = if args.dtypes.is_empty() {
        if on_gpu { vec![Dtype::Float32, Dtype::Bfloat16] } else { vec![Dtype::Float32] }
    } else {
        args.dtypes
    };
    for &n in &sizes {
        for &dtype in &dtypes {
            let gflops = runtime::matmul_gflops(n, dtype, args.iterations)
                .with_context(|| format!("matmul probe {n}x{n} {dtype:?}"))?;
            if gflops >= 1000.0 {
                println!("matmul      {n}³ {dtype:?}: {:.1} TFLOP/s", gflops / 1000.0);
            } else {
                println!("matmul      {n}³ {dtype:?}: {gflops:.1} GFLOP/s");
            }
        }
    }
    Ok(())
}
