//! The forward of one step on the GPU, as launches only (no host copies or waits, so
//! a CUDA graph can capture it): embedding or the previous stage's hidden states,
//! each layer's norm → q|k|v product → RoPE and K/V write → attention → o product →
//! all-reduce → norm → gate|up product → act·up → down product → all-reduce, then the
//! next stage's send or the gathered logits. One-token steps build the norm and
//! act·up inputs inside the next GEMV ([`Gpu::gemv_fused`](super::super::Gpu::gemv_fused)).

use super::super::{Args, DType, DevBuf, Fused, Result, profile};
use super::CudaModel;
use super::meta::MetaPtrs;
use super::workspace::Ws;
use crate::rank::model::recipe::Role;

impl CudaModel {
    pub(super) fn tp_all_reduce(&self, buf: u64, count: usize) -> Result<()> {
        if let Some(ar) = &self.comms.custom
            && ar.fits(buf, count, self.dt)
        {
            return self.gpu.timed(
                || ar.run(&self.gpu, buf, count, self.dt),
                |_| format!("p2p all_reduce {}", profile::count_label(count)),
            );
        }
        match &self.comms.tp {
            Some(c) => self.gpu.timed(
                || c.all_reduce_sum(buf, count, self.dt),
                |_| format!("nccl all_reduce {}", profile::count_label(count)),
            ),
            None => Ok(()),
        }
    }

    pub(super) fn launch_rows(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        args: Args,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let block = cols.next_multiple_of(32).clamp(32, 1024) as u32;
        self.gpu.launch(
            &format!("{name}_{}", self.dt.suffix()),
            (rows as u32, 1, 1),
            block,
            args,
        )
    }

    pub(super) fn elementwise(&self, name: &str, n: usize, args: Args) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.gpu
            .launch_1d(&format!("{name}_{}", self.dt.suffix()), n, args)
    }

    /// `buf[r, c] += bias[c]` over `rows` rows of `cols`, when there is a bias.
    pub(super) fn add_bias(
        &self,
        buf: u64,
        bias: Option<&DevBuf>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let Some(b) = bias else {
            return Ok(());
        };
        let n = rows * cols;
        self.elementwise(
            "add_bias",
            n,
            Args::new()
                .ptr(buf)
                .ptr(b.ptr)
                .i32(cols as i32)
                .i64(n as i64),
        )
    }

    /// `out = rms_norm(x [+= y]) · w` over `rows` rows (`y = 0`: no residual add).
    pub(super) fn rms_norm(&self, x: u64, y: u64, w: &DevBuf, out: u64, rows: usize) -> Result<()> {
        let h = self.cfg.hidden_size;
        self.launch_rows(
            "rms_norm",
            rows,
            h,
            Args::new()
                .ptr(x)
                .ptr(y)
                .ptr(w.ptr)
                .ptr(out)
                .i32(h as i32)
                .f32(self.cfg.rms_norm_eps as f32),
        )
    }

    /// `out = rms_norm(x [+= delta]) · norm · wᵀ` for `t` token rows (`w` is `[n, hidden]`;
    /// `delta = 0`: no residual add). With `fuse` (one row) the GEMV builds its input
    /// itself and writes `x + delta` to `spare` instead of into `x`; returns whether the
    /// residual stream moved there.
    pub(super) fn normed_product(
        &self,
        fuse: bool,
        t: usize,
        (x, delta, spare): (u64, u64, u64),
        norm: &DevBuf,
        (n, w): (usize, &DevBuf),
        out: u64,
    ) -> Result<bool> {
        let h = self.cfg.hidden_size;
        if fuse {
            let eps = self.cfg.rms_norm_eps as f32;
            let input = (x, delta, spare, norm.ptr);
            self.gpu
                .gemv_fused(Fused::Norm, self.dt, n, h, input, w.ptr, out, eps)?;
            return Ok(delta != 0);
        }
        let a = self.ws.ptr(Ws::A);
        self.rms_norm(x, delta, norm, a, t)?;
        self.gpu.gemm(self.dt, t, n, h, a, w.ptr, out)?;
        Ok(false)
    }

    /// A row-parallel product: `y = all_reduce(input[t, k] · wᵀ) + bias` (bias once).
    pub(super) fn row_parallel(
        &self,
        t: usize,
        k: usize,
        input: u64,
        w: &DevBuf,
        bias: Option<&DevBuf>,
        y: u64,
    ) -> Result<()> {
        let h = self.cfg.hidden_size;
        self.gpu.gemm(self.dt, t, h, k, input, w.ptr, y)?;
        self.row_parallel_tail(t, bias, y)
    }

    /// The rest of a row-parallel product once this rank's part is in `y`.
    pub(super) fn row_parallel_tail(&self, t: usize, bias: Option<&DevBuf>, y: u64) -> Result<()> {
        let h = self.cfg.hidden_size;
        self.tp_all_reduce(y, t * h)?;
        self.add_bias(y, bias, t, h)
    }

    /// Where the step's gathered logits `[tp][rows][chunk]` are.
    pub(super) fn logits_ptr(&self) -> u64 {
        if self.comms.tp.is_some() {
            self.ws.ptr(Ws::LgAll)
        } else {
            self.ws.ptr(Ws::Lg)
        }
    }

    /// Launches the forward of `t` tokens with `r` logits rows (metadata already on
    /// the GPU at `at`): embedding or the previous stage's hidden states, this
    /// stage's layers, then the next stage's send or the gathered logits. Launches
    /// only — no host copies or waits, so a CUDA graph can capture it.
    pub(super) fn forward(&self, t: usize, r: usize, at: &MetaPtrs) -> Result<()> {
        let cfg = &self.cfg;
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let nq = self.shard.heads * hd;
        let qkvw = self.shard.qkv_width(hd);
        let p = |w: Ws| self.ws.ptr(w);
        let (x, y) = (p(Ws::X), p(Ws::Y));
        // With fused GEMVs the residual stream moves between x and x2 at every norm
        // that adds a delta: `x` is where it is now, `spare` the other buffer.
        let fuse = t == 1 && self.fuse;
        let eps = cfg.rms_norm_eps as f32;
        let (mut x, mut spare) = (x, p(Ws::X2));
        let (qkv, attn, gu, act) = (p(Ws::Qkv), p(Ws::Attn), p(Ws::Gu), p(Ws::Act));
        if let Some(e) = &self.w.embed {
            self.launch_rows(
                "embed",
                t,
                h,
                Args::new()
                    .ptr(at.tok)
                    .ptr(e.ptr)
                    .ptr(x)
                    .i32(h as i32)
                    .i32(self.shard.vocab.0 as i32)
                    .i32(self.shard.vocab.1 as i32),
            )?;
            self.tp_all_reduce(x, t * h)?;
        } else {
            let world = self
                .comms
                .world
                .as_ref()
                .expect("stages > 1 have a world comm");
            self.gpu.timed(
                || world.recv(x, t * h, self.dt, self.place.prev_stage()),
                |_| "nccl recv".into(),
            )?;
        }
        let hidden_act = cfg.hidden_act;
        let mut pending = false;
        for (li, l) in self.w.layers.iter().enumerate() {
            // This layer's sliding window (0: none), by its global index.
            let window = cfg.window(self.shard.layers.0 + li).map_or(0, |w| w as i32);
            let (kc, vc) = (&self.kv[li].0, &self.kv[li].1);
            let delta = if pending { y } else { 0 };
            let stream = (x, delta, spare);
            if self.normed_product(
                fuse,
                t,
                stream,
                l.get(Role::InNorm),
                (qkvw, l.get(Role::Qkv)),
                qkv,
            )? {
                std::mem::swap(&mut x, &mut spare);
            }
            self.add_bias(qkv, l.opt(Role::QkvBias), t, qkvw)?;
            self.launch_rows(
                "rope_kv",
                t,
                (self.shard.heads + self.shard.kv_heads) * hd / 2,
                Args::new()
                    .ptr(qkv)
                    .ptr(kc.ptr)
                    .ptr(vc.ptr)
                    .ptr(at.pos)
                    .ptr(at.slot)
                    .ptr(self.inv_freq.ptr)
                    .i32(self.shard.heads as i32)
                    .i32(self.shard.kv_heads as i32)
                    .i32(hd as i32)
                    .i32(qkvw as i32),
            )?;
            self.attention((kc, vc), at, window)?;
            self.row_parallel(t, nq, attn, l.get(Role::O), l.opt(Role::OBias), y)?;
            let (i1, i2) = (self.shard.inter, 2 * self.shard.inter);
            if self.normed_product(
                fuse,
                t,
                (x, y, spare),
                l.get(Role::PostNorm),
                (i2, l.get(Role::GateUp)),
                gu,
            )? {
                std::mem::swap(&mut x, &mut spare);
            }
            self.add_bias(gu, l.opt(Role::GateUpBias), t, i2)?;
            if fuse {
                let input = (gu, 0, 0, 0);
                self.gpu.gemv_fused(
                    Fused::Mlp(hidden_act),
                    self.dt,
                    h,
                    i1,
                    input,
                    l.get(Role::Down).ptr,
                    y,
                    eps,
                )?;
                self.row_parallel_tail(t, l.opt(Role::DownBias), y)?;
            } else {
                let n = t * i1;
                self.elementwise(
                    hidden_act.mul_kernel(),
                    n,
                    Args::new().ptr(gu).ptr(act).i32(i1 as i32).i64(n as i64),
                )?;
                self.row_parallel(t, i1, act, l.get(Role::Down), l.opt(Role::DownBias), y)?;
            }
            pending = true;
        }
        if pending {
            self.elementwise("add", t * h, Args::new().ptr(x).ptr(y).i64((t * h) as i64))?;
        }
        if !self.place.last_stage() {
            let world = self
                .comms
                .world
                .as_ref()
                .expect("stages > 1 have a world comm");
            return self.gpu.timed(
                || world.send(x, t * h, self.dt, self.place.next_stage()),
                |_| "nccl send".into(),
            );
        }
        let (sel, seln, lg) = (p(Ws::Sel), p(Ws::Seln), p(Ws::Lg));
        self.launch_rows(
            "gather_rows",
            r,
            h,
            Args::new().ptr(x).ptr(at.rows).ptr(sel).i32(h as i32),
        )?;
        self.rms_norm(
            sel,
            0,
            self.w.final_norm.as_ref().expect("last stage"),
            seln,
            r,
        )?;
        let head = self.w.lm_head.as_ref().expect("last stage").ptr;
        self.gpu
            .gemm(self.dt, r, self.shard.chunk, h, seln, head, lg)?;
        if let Some(c) = &self.comms.tp {
            self.gpu.timed(
                || c.all_gather(lg, p(Ws::LgAll), r * self.shard.chunk, self.dt),
                |_| "nccl all_gather".into(),
            )?;
        }
        Ok(())
    }

    /// The gathered logits `[tp][rows][chunk]` as `[rows, vocab]` f32 on the host.
    pub(super) fn logits_to_host(&self, logits: u64, r: usize) -> Result<Vec<f32>> {
        let (tp, chunk, vocab) = (self.place.tp, self.shard.chunk, self.cfg.vocab_size);
        let n = tp * r * chunk;
        let raw: Vec<f32> = match self.dt {
            DType::F32 => {
                let mut v = vec![0f32; n];
                self.gpu.download(&mut v, logits)?;
                v
            }
            DType::Bf16 => {
                let mut v = vec![half::bf16::ZERO; n];
                self.gpu.download(&mut v, logits)?;
                v.iter().map(|x| x.to_f32()).collect()
            }
            DType::F16 => {
                let mut v = vec![half::f16::ZERO; n];
                self.gpu.download(&mut v, logits)?;
                v.iter().map(|x| x.to_f32()).collect()
            }
        };
        let mut out = vec![0f32; r * vocab];
        for row in 0..r {
            for id in 0..vocab {
                out[row * vocab + id] = raw[((id / chunk) * r + row) * chunk + id % chunk];
            }
        }
        Ok(out)
    }
}
