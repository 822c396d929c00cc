//! rrank's command line: vLLM's engine flag names (`--tensor-parallel-size/-tp`,
//! `--pipeline-parallel-size/-pp`, `--max-model-len`, `--block-size`, `--seed`, …) and
//! the offline `generate` subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The rank process of a tensor/pipeline-parallel Llama-family server. Start one per
/// device under rrun (or torchrun): `rrun --nproc-per-node 2 rrank generate --model M -pp 2 --prompt "…"`.
#[derive(Debug, Parser)]
#[command(
    name = "rrank",
    version,
    max_term_width = 100,
    after_help = "Environment variables: `rrank --help` or `rrank knobs` lists them.",
    after_long_help = crate::rank::knobs::text(false)
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Flags of the HTTP server (the default mode).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to bind (all interfaces: 0.0.0.0).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port of the HTTP API (0 picks a free one).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Model name in the API (default: the --model directory's name).
    #[arg(long = "served-model-name")]
    pub served_model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on every route but /health, /version and
    /// /metrics.
    #[arg(long = "api-key", env = "RRANK_API_KEY")]
    pub api_key: Option<String>,
    /// Seconds a client may take to send a request body; a slower one gets 408 and
    /// its connection is closed.
    #[arg(long = "body-timeout", default_value_t = 30.0)]
    pub body_timeout: f64,
    /// Most sequences queued or running at once (each prompt × n counts); a request
    /// that would go past it gets 429.
    #[arg(long = "max-queued-seqs", default_value_t = 8192)]
    pub max_queued_seqs: usize,
    /// Most sequences in one step.
    #[arg(long = "max-num-seqs", default_value_t = 256)]
    pub max_num_seqs: usize,
    /// Token budget of one step (prefill chunk size).
    #[arg(long = "max-num-batched-tokens", default_value_t = 2048)]
    pub max_num_batched_tokens: usize,
    /// Reuse the KV blocks of common prompt prefixes across requests (on by default).
    #[arg(
        long = "enable-prefix-caching",
        overrides_with = "no_enable_prefix_caching"
    )]
    pub enable_prefix_caching: bool,
    /// Turn prefix caching off.
    #[arg(long = "no-enable-prefix-caching")]
    pub no_enable_prefix_caching: bool,
    /// KV-cache capacity in tokens (must hold one --max-model-len sequence).
    /// Default: 16384 on CPU; on GPU whatever --gpu-memory-utilization leaves.
    #[arg(long = "kv-cache-tokens")]
    pub kv_cache_tokens: Option<usize>,
    /// Share of each GPU's memory rrank may use (weights, workspace and KV cache).
    #[arg(long = "gpu-memory-utilization", default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate text for one prompt offline (no HTTP), on any TP × PP placement.
    Generate(GenerateArgs),
    /// Compile every GPU kernel with NVRTC for the given architectures and report
    /// (needs only NVRTC and the CUDA headers, no GPU; CI runs it).
    #[command(hide = true)]
    Kernels(KernelsArgs),
    /// List the environment variables rrank reads (accepted values, default, meaning,
    /// and the value set now), then check them.
    Knobs(KnobsArgs),
}

/// `rrank knobs`.
#[derive(Debug, Clone, Args)]
pub struct KnobsArgs {
    /// Print docs/knobs.md (the list as a Markdown page) instead.
    #[arg(long)]
    pub markdown: bool,
}

/// Flags shared by every mode.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Hugging Face model directory: config.json, *.safetensors, tokenizer.json.
    #[arg(long, global = true)]
    pub model: Option<PathBuf>,
    /// Ranks per layer (tensor parallelism); `-tp` works too.
    #[arg(long = "tensor-parallel-size", global = true, default_value_t = 1)]
    pub tensor_parallel_size: usize,
    /// Pipeline stages (contiguous layer ranges); `-pp` works too.
    #[arg(long = "pipeline-parallel-size", global = true, default_value_t = 1)]
    pub pipeline_parallel_size: usize,
    /// Longest prompt + output in tokens (default: the model's max_position_embeddings, at most 4096 on CPU).
    #[arg(long = "max-model-len", global = true)]
    pub max_model_len: Option<usize>,
    /// Tokens per KV-cache block.
    #[arg(long = "block-size", global = true, default_value_t = 16)]
    pub block_size: usize,
    /// Compute device: auto (cuda when a GPU is visible, else cpu), cuda, or cpu
    /// (the f32 reference backend).
    #[arg(long, global = true, default_value = "auto", value_parser = ["auto", "cuda", "cpu"])]
    pub device: String,
    /// Weight and activation type on GPU: auto (bfloat16 for bf16 checkpoints,
    /// float16 for f16 and f32 ones, as vLLM), bfloat16, float16 or float32. The CPU
    /// backend computes in float32.
    #[arg(long, global = true, default_value = "auto", value_parser = ["auto", "bfloat16", "float16", "float32", "half", "float"])]
    pub dtype: String,
    /// Quantization (vLLM's flag): the method of a quantized checkpoint, checked against
    /// its quantization_config (compressed-tensors, fp8); or fp8 on an unquantized one,
    /// whose Linear layers are then quantized to FP8 per channel at load. Default: what
    /// config.json says.
    #[arg(long, global = true)]
    pub quantization: Option<String>,
    /// Worker threads per rank for matrix products (default: CPUs / local ranks).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// On GPU, launch every kernel of every step one by one instead of replaying a
    /// CUDA graph per decode batch size (slower; for debugging and comparisons).
    #[arg(long = "enforce-eager", global = true)]
    pub enforce_eager: bool,
}

/// `rrank kernels`.
#[derive(Debug, Clone, Args)]
pub struct KernelsArgs {
    /// Target architectures, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "sm_80,sm_90")]
    pub arch: Vec<String>,
    /// Report each kernel's registers, shared memory and spills (ptxas -v) instead.
    #[arg(long)]
    pub resources: bool,
}

/// `rrank generate`.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// The prompt (chat template applied unless --raw).
    #[arg(long, conflicts_with = "prompt_ids")]
    pub prompt: Option<String>,
    /// The prompt as comma-separated token ids (no tokenizer involved).
    #[arg(long = "prompt-ids", value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
    /// Tokenize the prompt as is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Tokens to generate.
    #[arg(long = "max-tokens", default_value_t = 64)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long = "top-p", default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long = "top-k", default_value_t = 0)]
    pub top_k: i64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep generating after an end-of-sequence token.
    #[arg(long = "ignore-eos")]
    pub ignore_eos: bool,
    /// Write prompt ids, prompt logits (every position) and generated ids as JSON to this file.
    #[arg(long)]
    pub dump: Option<PathBuf>,
}

/// vLLM spells two flags with a two-letter single dash (`-tp 2`, `-pp=2`); clap takes
/// one-letter shorts only, so they are rewritten to their long names first.
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .map(|a| {
            for (short, long) in [
                ("-tp", "--tensor-parallel-size"),
                ("-pp", "--pipeline-parallel-size"),
            ] {
                if a == short {
                    return long.to_string();
                }
                if let Some(v) = a.strip_prefix(&format!("{short}=")) {
                    return format!("{long}={v}");
                }
            }
            a
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_letter_shorts() {
        let a = normalize_args(
            ["rrank", "generate", "-tp", "2", "-pp=3", "--model", "m"].map(String::from),
        );
        let c = Cli::try_parse_from(a).unwrap();
        assert_eq!(
            (
                c.engine.tensor_parallel_size,
                c.engine.pipeline_parallel_size
            ),
            (2, 3)
        );
        assert!(matches!(c.command, Some(Command::Generate(_))));
    }
}
