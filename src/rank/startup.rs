//! rrank's start-up, in DESIGN.md's order: env contract, flags, validation of
//! placement and checkpoint (headers only — no weight is read before everything
//! checks out), then the store and the communicator, then this rank's weights.

use std::path::PathBuf;

use super::RankError;
use super::cli::EngineArgs;
use super::dist::tcp::TcpComm;
use super::dist::{Comm, Placement, RankEnv, Solo};
use super::model::checkpoint::Checkpoint;
use super::model::config::ModelConfig;
use super::model::llama::RankModel;
use super::tokenizer::TextCodec;
use crate::store::{Client, StoreServer};

/// Everything validated and connected; weights not yet loaded.
pub struct Startup {
    pub env: RankEnv,
    pub place: Placement,
    pub cfg: ModelConfig,
    pub codec: Option<TextCodec>,
    pub comm: Box<dyn Comm>,
    /// The store this rank hosts when no launcher does (rank 0 only).
    pub _server: Option<StoreServer>,
}

fn model_dir(engine: &EngineArgs) -> Result<PathBuf, RankError> {
    engine
        .model
        .clone()
        .ok_or_else(|| RankError::Invalid("--model DIR is required".into()))
}

/// Validates everything that can be validated without weights, then connects.
pub fn prepare(engine: &EngineArgs, need_tokenizer: bool) -> Result<Startup, RankError> {
    let env = RankEnv::from_env().map_err(RankError::Invalid)?;
    let dir = model_dir(engine)?;
    let cfg = ModelConfig::load(&dir)?;
    let (tp, pp) = (engine.tensor_parallel_size, engine.pipeline_parallel_size);
    cfg.validate_placement(tp, pp, env.world_size)?;
    if engine.block_size == 0 {
        return Err(RankError::Invalid("--block-size must be at least 1".into()));
    }
    let ckpt = Checkpoint::open(&dir)?;
    ckpt.validate(&cfg)?;
    let codec = if need_tokenizer || dir.join("tokenizer.json").exists() {
        Some(TextCodec::load(&dir)?)
    } else {
        None
    };
    if let Some(c) = &codec
        && c.vocab_size() > cfg.vocab_size
    {
        return Err(RankError::Invalid(format!(
            "the tokenizer has {} tokens but the embedding has only {} rows (vocab_size in config.json); the tokenizer belongs to another model",
            c.vocab_size(),
            cfg.vocab_size
        )));
    }
    let place = Placement {
        tp,
        pp,
        rank: env.rank,
    };
    let mut server = None;
    let comm: Box<dyn Comm> = if env.world_size == 1 {
        Box::new(Solo)
    } else {
        if !env.agent_store && env.rank == 0 {
            server = Some(StoreServer::start(env.master_port).map_err(|e| {
                RankError::Runtime(format!(
                    "cannot host the store on port {}: {e}",
                    env.master_port
                ))
            })?);
        }
        let mut store = Client::connect(
            &env.master_addr,
            env.master_port,
            std::time::Duration::from_secs(300),
            &mut |t| {
                eprintln!(
                    "rrank: rank {} waiting for the store at {}:{}, {} s",
                    env.rank,
                    env.master_addr,
                    env.master_port,
                    t.as_secs()
                );
            },
        )
        .map_err(|e| RankError::Runtime(e.to_string()))?;
        Box::new(TcpComm::connect(&env, &mut store).map_err(RankError::Runtime)?)
    };
    Ok(Startup {
        env,
        place,
        cfg,
        codec,
        comm,
        _server: server,
    })
}

/// The effective --max-model-len.
pub fn max_model_len(engine: &EngineArgs, cfg: &ModelConfig) -> usize {
    engine
        .max_model_len
        .unwrap_or(cfg.max_position_embeddings.min(4096))
}

/// Loads this rank's slices (the checkpoint was validated by [`prepare`]).
pub fn load_model(
    engine: &EngineArgs,
    cfg: &ModelConfig,
    place: Placement,
    local_world: usize,
) -> Result<RankModel, RankError> {
    let dir = model_dir(engine)?;
    let ckpt = Checkpoint::open(&dir)?;
    let weights = ckpt.map()?;
    let threads = engine
        .threads
        .unwrap_or_else(|| (crate::launch::devices::cpu_count() / local_world.max(1)).max(1));
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    Ok(RankModel::load(cfg.clone(), &weights, place, threads))
}
