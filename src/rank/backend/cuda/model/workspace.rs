//! The step workspace: one device buffer per activation and sampling scratch, named by
//! [`Ws`], grown (never shrunk) to the largest step seen or reserved. Its epoch moves
//! whenever a buffer that CUDA graphs capture is reallocated, which retires the graphs.

use super::super::{DevBuf, Gpu, Result};

/// A workspace buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ws {
    /// The step's packed metadata.
    Meta,
    /// Split-KV decode attention's partial results.
    Part,
    /// The residual stream, and its second home while fused GEMVs move it.
    X,
    X2,
    /// A row-parallel product's output (the delta added to the residual stream).
    Y,
    /// A normed input of a product.
    A,
    Qkv,
    Attn,
    Gu,
    Act,
    /// Gathered logits rows, normed.
    Sel,
    Seln,
    /// This rank's logits slice, and every TP rank's gathered.
    Lg,
    LgAll,
    /// Sampling: draw parameters, penalty history, per-draw vocab scratch, results.
    Draws,
    Pens,
    Work,
    Out,
}

impl Ws {
    pub(super) const ALL: [Ws; 18] = [
        Ws::Meta,
        Ws::Part,
        Ws::X,
        Ws::X2,
        Ws::Y,
        Ws::A,
        Ws::Qkv,
        Ws::Attn,
        Ws::Gu,
        Ws::Act,
        Ws::Sel,
        Ws::Seln,
        Ws::Lg,
        Ws::LgAll,
        Ws::Draws,
        Ws::Pens,
        Ws::Work,
        Ws::Out,
    ];

    /// Whether CUDA graphs capture the buffer's address (sampling runs outside them).
    fn in_graphs(self) -> bool {
        !matches!(self, Ws::Draws | Ws::Pens | Ws::Work | Ws::Out)
    }

    /// Whether only the last pipeline stage (logits and sampling) uses the buffer.
    pub(super) fn last_stage_only(self) -> bool {
        matches!(
            self,
            Ws::Sel | Ws::Seln | Ws::Lg | Ws::LgAll | Ws::Draws | Ws::Pens | Ws::Work | Ws::Out
        )
    }
}

/// The buffers, by [`Ws`].
#[derive(Default)]
pub(super) struct Workspace {
    bufs: Vec<Option<DevBuf>>,
    /// Bumped whenever a buffer captured in CUDA graphs is reallocated.
    pub(super) epoch: u64,
}

impl Workspace {
    /// The device address of `w` (reserved before any step uses it).
    pub(super) fn ptr(&self, w: Ws) -> u64 {
        self.bufs
            .get(w as usize)
            .and_then(|b| b.as_ref())
            .unwrap_or_else(|| panic!("workspace buffer {w:?} used before it was reserved"))
            .ptr
    }

    /// `w`, reallocated when it is smaller than `bytes`; returns its address.
    pub(super) fn grow(&mut self, gpu: &Gpu, w: Ws, bytes: usize) -> Result<u64> {
        let bytes = bytes.max(16);
        if self.bufs.len() < Ws::ALL.len() {
            self.bufs.resize_with(Ws::ALL.len(), || None);
        }
        let slot = &mut self.bufs[w as usize];
        if let Some(b) = slot
            && b.bytes >= bytes
        {
            return Ok(b.ptr);
        }
        if w.in_graphs() {
            self.epoch += 1;
        }
        *slot = None;
        let b = gpu.alloc(bytes)?;
        let p = b.ptr;
        *slot = Some(b);
        Ok(p)
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.bufs.iter().flatten().map(|b| b.bytes).sum()
    }
}
