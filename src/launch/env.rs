//! The per-worker environment of docs/spec/torchrun.md §2.1: the 18 keys every
//! worker gets, plus OMP_NUM_THREADS and CUDA_VISIBLE_DEVICES where the rules say.
//!
//! Workers inherit rrun's whole environment; this module only computes what is
//! added or overridden on top of it (never a cleared or rebuilt environment).

use super::config::Config;

/// Where this agent's workers sit in the job, from rank assignment (§4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankInfo {
    pub group_rank: usize,
    pub group_world_size: usize,
    pub base_global_rank: usize,
    pub global_world_size: usize,
    pub base_role_rank: usize,
    pub role_world_size: usize,
}

/// What the workers are told about the store.
#[derive(Debug, Clone)]
pub struct MasterInfo {
    pub addr: String,
    pub port: u16,
    pub use_agent_store: bool,
}

/// A worker environment that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error(
        "--virtual-local-rank: local rank {local_rank} has no GPU in CUDA_VISIBLE_DEVICES={list:?} ({entries} entries); lower --nproc-per-node or list more GPUs"
    )]
    NoGpu {
        local_rank: usize,
        list: String,
        entries: usize,
    },
}

/// True when rrun must set OMP_NUM_THREADS=1 (unset and more than one worker).
pub fn omp_defaulted(nproc: usize) -> bool {
    nproc > 1 && std::env::var_os("OMP_NUM_THREADS").is_none()
}

/// The variables to set for local rank `lr` (the rest of the environment is inherited).
pub fn worker_env(
    cfg: &Config,
    ranks: &RankInfo,
    master: &MasterInfo,
    lr: usize,
    restart_count: u32,
    error_file: &str,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut env: Vec<(String, String)> = Vec::with_capacity(21);
    let mut put = |k: &str, v: String| env.push((k.to_string(), v));
    put(
        "LOCAL_RANK",
        if cfg.virtual_local_rank { 0 } else { lr }.to_string(),
    );
    put("RANK", (ranks.base_global_rank + lr).to_string());
    put("GROUP_RANK", ranks.group_rank.to_string());
    put("ROLE_RANK", (ranks.base_role_rank + lr).to_string());
    put("ROLE_NAME", cfg.role.clone());
    put("LOCAL_WORLD_SIZE", cfg.nproc.to_string());
    put("WORLD_SIZE", ranks.global_world_size.to_string());
    put("GROUP_WORLD_SIZE", ranks.group_world_size.to_string());
    put("ROLE_WORLD_SIZE", ranks.role_world_size.to_string());
    put("MASTER_ADDR", master.addr.clone());
    put("MASTER_PORT", master.port.to_string());
    put("TORCHELASTIC_RESTART_COUNT", restart_count.to_string());
    put("TORCHELASTIC_MAX_RESTARTS", cfg.max_restarts.to_string());
    put("TORCHELASTIC_RUN_ID", cfg.run_id.clone());
    put(
        "TORCHELASTIC_USE_AGENT_STORE",
        if master.use_agent_store {
            "True"
        } else {
            "False"
        }
        .to_string(),
    );
    put(
        "TORCH_NCCL_ASYNC_ERROR_HANDLING",
        std::env::var("TORCH_NCCL_ASYNC_ERROR_HANDLING").unwrap_or_else(|_| "1".into()),
    );
    put("TORCHELASTIC_ERROR_FILE", error_file.to_string());
    put("TORCHELASTIC_SIGNALS_TO_HANDLE", cfg.signals_string.clone());
    if omp_defaulted(cfg.nproc) {
        put("OMP_NUM_THREADS", "1".into());
    }
    if cfg.virtual_local_rank {
        let dev = match std::env::var("CUDA_VISIBLE_DEVICES") {
            Ok(list) => {
                let items: Vec<&str> = list.split(',').collect();
                items
                    .get(lr)
                    .map(|s| s.trim().to_string())
                    .ok_or_else(|| EnvError::NoGpu {
                        local_rank: lr,
                        list: list.clone(),
                        entries: items.len(),
                    })?
            }
            Err(_) => lr.to_string(),
        };
        put("CUDA_VISIBLE_DEVICES", dev);
    }
    Ok(env)
}
