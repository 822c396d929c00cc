//! Building a rank's model on its GPU: the NCCL groups first (a peer that fails to
//! load must not leave the others waiting in ncclCommInitRank after minutes of
//! loading), then every weight of the recipe. Each weight's pieces stream from the
//! memory map through the pinned [`Stager`] in the checkpoint's dtype, are converted
//! to the model's dtype on the GPU, and are stacked into one buffer.

use super::super::allreduce::CustomAllReduce;
use super::super::nccl::Nccl;
use super::super::upload::Stager;
use super::super::{Args, DType, DevBuf, Gpu, GpuError, Result};
use super::attention::DecodeAttention;
use super::graphs::Graphs;
use super::workspace::Workspace;
use super::{Comms, CudaModel};
use crate::rank::backend::Options;
use crate::rank::dist::Placement;
use crate::rank::knobs;
use crate::rank::model::checkpoint::Weights;
use crate::rank::model::config::ModelConfig;
use crate::rank::model::recipe::{self, Tensor};
use crate::rank::model::rope::inv_freq;
use crate::rank::model::shard::Shard;
use crate::store::Client;

/// Puts recipe tensors on the GPU.
struct Loader<'g> {
    gpu: &'g Gpu,
    dt: DType,
    stager: Stager,
    /// Where stored bytes of another dtype land before conversion.
    staging: Option<DevBuf>,
    /// Bytes of weights allocated.
    bytes: usize,
}

impl Loader<'_> {
    /// One weight: its pieces stacked in order, zeros after them.
    fn tensor(&mut self, w: &Weights<'_>, t: &Tensor) -> Result<DevBuf> {
        let es = self.dt.size();
        let buf = self.gpu.alloc(t.elems() * es)?;
        self.bytes += buf.bytes;
        let mut at = 0;
        for p in &t.pieces {
            let (dtype, bytes) = w.read(p);
            let sd = DType::parse(dtype)
                .ok_or_else(|| GpuError::Setup(format!("unsupported tensor dtype {dtype}")))?;
            self.put(sd, &bytes, buf.at(at, es))?;
            at += bytes.len() / sd.size();
        }
        Ok(buf)
    }

    /// Copies stored bytes of dtype `sd` to `dst`, converting on the GPU.
    fn put(&mut self, sd: DType, bytes: &[u8], dst: u64) -> Result<()> {
        if sd == self.dt {
            return self.stager.upload(self.gpu, dst, bytes);
        }
        if self.staging.as_ref().is_none_or(|s| s.bytes < bytes.len()) {
            self.staging = None;
            self.staging = Some(self.gpu.alloc(bytes.len())?);
        }
        let st = self.staging.as_ref().expect("just made").ptr;
        self.stager.upload(self.gpu, st, bytes)?;
        let n = bytes.len() / sd.size();
        self.gpu.launch_1d(
            &format!("convert_{}_{}", sd.suffix(), self.dt.suffix()),
            n,
            Args::new().ptr(st).ptr(dst).i64(n as i64),
        )
    }
}

impl CudaModel {
    /// Loads this rank's slices onto `gpu` in `dt` and joins the NCCL groups.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        gpu: Gpu,
        cfg: ModelConfig,
        w: &Weights<'_>,
        place: Placement,
        dt: DType,
        opts: &Options,
        store: Option<&mut Client>,
        attempt: u32,
    ) -> Result<CudaModel> {
        let (tp, tr) = (place.tp, place.tp_rank());
        let shard = Shard::new(&cfg, place);
        let mut comms = Comms {
            tp: None,
            custom: None,
            world: None,
        };
        if let Some(store) = store {
            if place.pp > 1 {
                comms.world = Some(Nccl::join(
                    &gpu,
                    store,
                    attempt,
                    "world",
                    place.rank,
                    tp * place.pp,
                )?);
            }
            if tp > 1 {
                let name = format!("tp{}", place.pp_rank());
                comms.tp = Some(Nccl::join(&gpu, store, attempt, &name, tr, tp)?);
                comms.custom = CustomAllReduce::setup(&gpu, store, attempt, &name, tr, tp)?;
            }
        }
        let plan = recipe::for_rank(&cfg, &shard, place, w.has("lm_head.weight"));
        let mut loader = Loader {
            gpu: &gpu,
            dt,
            stager: Stager::new(&gpu)?,
            staging: None,
            bytes: 0,
        };
        let weights = plan.load(|t| loader.tensor(w, t))?;
        let weight_bytes = loader.bytes;
        let inv = inv_freq(&cfg);
        let inv_buf = gpu.alloc(inv.len() * 4)?;
        gpu.upload(inv_buf.ptr, &inv)?;
        gpu.sync()?;
        drop(loader);
        let attention = DecodeAttention::choose(
            cfg.head_dim,
            (cfg.num_heads / cfg.num_kv_heads).min(shard.heads),
            knobs::get().attention == knobs::Attention::PerHead,
        );
        let fuse = gpu.gemv_fusable(dt, cfg.hidden_size) && gpu.gemv_fusable(dt, shard.inter);
        let mut m = CudaModel {
            shard,
            weight_bytes,
            block_size: opts.block_size,
            kv_blocks: 0,
            w: weights,
            inv_freq: inv_buf,
            kv: vec![],
            ws: Workspace::default(),
            // Kernel timing (RRANK_PROFILE=1) times eager launches only.
            graphs: Graphs::new(!opts.enforce_eager && gpu.profile.is_none()),
            attention,
            part_max: 0,
            times: ([0.0; 3], 0),
            prefill_tc: dt != DType::F32
                && matches!(cfg.head_dim, 64 | 128)
                && knobs::get().prefill_attention != knobs::PrefillAttention::CudaCores,
            fuse,
            comms,
            dt,
            place,
            gpu,
            cfg,
        };
        m.part_max = m.part_bytes();
        Ok(m)
    }
}
