//! The `losa` subcommands and what they share: devices, dtypes, attention and decoding flags.

pub mod bench;
pub mod bench_matmul;
pub mod eval;
pub mod generate;
#[cfg(feature = "host-profile")]
pub mod host_profile;
pub mod train;

use clap::{Args, ValueEnum};
use losa::{
    losa_attention::{
        ActiveRows, AttentionMode, LosaBackend, LosaConfig, PageSelectionConfig, QuestConfig,
    },
    losa_sampler::SamplerConfig,
};

/// A one-line error for the user.
pub type CliResult<T> = Result<T, String>;

/// The model `losa generate` and `losa eval` run when `--model` is not given: shipped with the
/// repository.
pub const DEFAULT_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/shipped/retrieval");

/// The checkpoint folder (`--model`, else the shipped model), its tokenizer and its weights.
pub fn open_model<B: LosaBackend>(
    model: Option<&std::path::Path>,
    device: &B::Device,
    dtype: Dtype,
) -> CliResult<(
    std::path::PathBuf,
    losa::losa_models::Tokenizer,
    losa::losa_models::DlmModel<B>,
)> {
    let dir = model.unwrap_or(std::path::Path::new(DEFAULT_MODEL));
    if !dir.is_dir() {
        return Err(format!("model folder {} does not exist", dir.display()));
    }
    let tokenizer = losa::losa_models::Tokenizer::from_dir(dir).map_err(|e| e.to_string())?;
    let weights =
        losa::losa_models::load::<B>(dir, device, dtype.float()).map_err(|e| e.to_string())?;
    Ok((dir.to_path_buf(), tokenizer, weights))
}

/// Where tensors live.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Device {
    /// burn's NdArray backend.
    Cpu,
    /// wgpu (Vulkan / Metal / DX12) with the CubeCL kernels.
    Wgpu,
    /// CUDA with the CubeCL kernels.
    Cuda,
    /// CUDA with the CubeCL kernels but without burn-fusion: every tensor op is its own
    /// kernel, with fewer host-side steps per op (for comparing where decode time goes).
    CudaUnfused,
}

/// Weight and activation dtype.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    /// Refuses a dtype the device's backend cannot compute in (burn would panic).
    pub fn check_on(self, device: Device) -> CliResult<()> {
        match (device, self) {
            (Device::Cpu, Dtype::F16 | Dtype::Bf16) => Err(format!(
                "the cpu device (burn's NdArray) computes in f32 only, not {}: use --dtype f32",
                self.name()
            )),
            (Device::Wgpu, Dtype::Bf16) => {
                Err("wgpu has no bf16: use --dtype f32 or f16".to_string())
            }
            _ => Ok(()),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }

    pub fn float(self) -> burn::tensor::FloatDType {
        match self {
            Dtype::F32 => burn::tensor::FloatDType::F32,
            Dtype::F16 => burn::tensor::FloatDType::F16,
            Dtype::Bf16 => burn::tensor::FloatDType::BF16,
        }
    }
}

/// Prefix attention of the denoising steps.
#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
pub enum Attention {
    Dense,
    Quest,
    Losa,
}

impl Attention {
    /// The mode's name in result files.
    pub fn name(self) -> &'static str {
        match self {
            Attention::Dense => "dense",
            Attention::Quest => "quest",
            Attention::Losa => "losa",
        }
    }
}

/// Attention flags shared by `generate` and `eval`.
#[derive(Args, Debug, Clone)]
pub struct AttentionArgs {
    /// Prefix attention of the denoising steps.
    #[arg(long, value_enum, default_value = "losa")]
    pub attention: Attention,
    /// Per-query token budget (Quest, LoSA).
    #[arg(long, default_value_t = 256)]
    pub budget: usize,
    /// Page size in tokens (Quest, LoSA).
    #[arg(long, default_value_t = 16)]
    pub page_size: usize,
    /// Active rows per step (LoSA); default 5 per 16 block tokens.
    #[arg(long)]
    pub active: Option<usize>,
    /// Leading layers kept dense (Quest, LoSA).
    #[arg(long, default_value_t = 2)]
    pub dense_layers: usize,
}

/// The attention mode of `kind` with these page settings, checked against the block size.
pub fn attention_mode(
    kind: Attention,
    budget: usize,
    page_size: usize,
    active: Option<usize>,
    dense_layers: usize,
    block: usize,
) -> CliResult<AttentionMode> {
    let pages = PageSelectionConfig::new()
        .with_page_size(page_size)
        .with_budget(budget);
    pages.validate().map_err(|e| e.to_string())?;
    let mode = match kind {
        Attention::Dense => AttentionMode::Dense,
        Attention::Quest => {
            AttentionMode::Quest(QuestConfig::new(pages).with_dense_layers(dense_layers))
        }
        Attention::Losa => {
            let k = active.unwrap_or_else(|| LosaConfig::default_active_for_block(block));
            AttentionMode::Losa(
                LosaConfig::new(pages)
                    .with_active(ActiveRows::TopK(k))
                    .with_dense_layers(dense_layers),
            )
        }
    };
    mode.validate(block).map_err(|e| e.to_string())?;
    Ok(mode)
}

impl AttentionArgs {
    pub fn mode(&self, block: usize) -> CliResult<AttentionMode> {
        attention_mode(
            self.attention,
            self.budget,
            self.page_size,
            self.active,
            self.dense_layers,
            block,
        )
    }
}

/// Decoding flags shared by `generate` and `eval`.
#[derive(Args, Debug, Clone)]
pub struct DecodeArgs {
    /// Block size (default: the model's).
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Denoising steps per block.
    #[arg(long, default_value_t = 4)]
    pub steps: usize,
    /// Confidence threshold of the dynamic policy.
    #[arg(long, default_value_t = 0.9)]
    pub threshold: f32,
    /// Remasking policy: low_confidence_dynamic, low_confidence_static, sequential, entropy_bounded.
    #[arg(long, default_value = "low_confidence_dynamic")]
    pub policy: String,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Top-k filter (0: off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Top-p filter (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl DecodeArgs {
    /// The sampler settings of these flags.
    pub fn sampler(&self, max_new_tokens: usize) -> CliResult<SamplerConfig> {
        Ok(SamplerConfig {
            block_size: self.block_size,
            steps: self.steps,
            policy: self
                .policy
                .parse()
                .map_err(|e: losa::losa_sampler::SamplerError| e.to_string())?,
            threshold: self.threshold,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            max_new_tokens,
            ..SamplerConfig::default()
        })
    }
}

/// The CUDA backend without burn-fusion.
#[cfg(feature = "cuda")]
type CudaUnfused = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// Work that runs on any backend with the LoSA op.
pub trait Job {
    fn run<B: LosaBackend>(self, device: &B::Device) -> CliResult<()>;
}

fn missing(device: Device) -> String {
    let feature = match device {
        Device::Cpu => "ndarray",
        Device::Wgpu => "wgpu",
        Device::Cuda | Device::CudaUnfused => "cuda",
    };
    format!("this build has no {device:?} device: rebuild with --features {feature}")
}

/// Runs `job` on the backend of `device`, after refusing a `dtype` that backend cannot compute in.
pub fn on_device(device: Device, dtype: Dtype, job: impl Job) -> CliResult<()> {
    dtype.check_on(device)?;
    match device {
        Device::Cpu => job.run::<burn::backend::NdArray<f32>>(&Default::default()),
        #[cfg(feature = "wgpu")]
        Device::Wgpu => job.run::<burn::backend::Wgpu<f32, i32>>(&Default::default()),
        #[cfg(feature = "cuda")]
        Device::Cuda => job.run::<burn::backend::Cuda<f32, i32>>(&Default::default()),
        #[cfg(feature = "cuda")]
        Device::CudaUnfused => job.run::<CudaUnfused>(&Default::default()),
        #[allow(unreachable_patterns)]
        other => Err(missing(other)),
    }
}

/// Work that trains: runs on the autodiff backend of a device.
pub trait TrainJob {
    fn run<B>(self, device: &B::Device) -> CliResult<()>
    where
        B: burn::tensor::backend::AutodiffBackend + LosaBackend,
        B::InnerBackend: LosaBackend;
}

/// Runs `job` on the autodiff backend of `device`.
pub fn on_autodiff_device(device: Device, job: impl TrainJob) -> CliResult<()> {
    use burn::backend::Autodiff;
    match device {
        Device::Cpu => job.run::<Autodiff<burn::backend::NdArray<f32>>>(&Default::default()),
        #[cfg(feature = "wgpu")]
        Device::Wgpu => job.run::<Autodiff<burn::backend::Wgpu<f32, i32>>>(&Default::default()),
        #[cfg(feature = "cuda")]
        Device::Cuda => job.run::<Autodiff<burn::backend::Cuda<f32, i32>>>(&Default::default()),
        #[cfg(feature = "cuda")]
        Device::CudaUnfused => job.run::<Autodiff<CudaUnfused>>(&Default::default()),
        #[allow(unreachable_patterns)]
        other => Err(missing(other)),
    }
}

/// Writes `value` as pretty JSON to `path` (creating its folder) through a `.partial` file and a
/// rename, so that a reader never sees half a result file.
pub fn write_json(path: &std::path::Path, value: &serde_json::Value) -> CliResult<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let partial = path.with_extension("json.partial");
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())? + "\n";
    std::fs::write(&partial, text)
        .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
    std::fs::rename(&partial, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
