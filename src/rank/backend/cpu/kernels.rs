//! The CPU backend's kernels: f32 math that matches transformers' float32 forward
//! (RMSNorm, rotate-half RoPE incl. linear and Llama 3 scaling, act(gate)·up for SiLU
//! and the GELUs, softmax attention over the paged KV cache) and a streaming matrix
//! kernel, multi-threaded with rayon.
//!
//! Activations are row-major `[tokens, features]` slices. Weights are row-major
//! `[out, in]` [`Mat`]s, as in the checkpoint: bf16 checkpoints stay bf16 in memory
//! (widening bf16 to f32 is exact, so the math is the same f32 math) and decode
//! reads half the bytes; other dtypes are converted to f32 at load.

use rayon::prelude::*;

use crate::rank::model::config::Activation;
use crate::rank::model::quant::e4m3_table;

/// A weight matrix `[rows, cols]`, row-major.
pub enum Mat {
    F32(Vec<f32>),
    /// Raw bf16 bits.
    Bf16(Vec<u16>),
    /// FP8 e4m3 bytes and `scale_cols` scales per row, each for `block` consecutive
    /// columns: element `(r, c)` is `e4m3(bits[r·cols + c]) · scale[r·scale_cols + c / block]`
    /// (one scale per row: `scale_cols` 1 and `block` = cols).
    Fp8 {
        bits: Vec<u8>,
        scale: Vec<f32>,
        scale_cols: usize,
        block: usize,
    },
}

impl Mat {
    pub fn len(&self) -> usize {
        match self {
            Mat::F32(v) => v.len(),
            Mat::Bf16(v) => v.len(),
            Mat::Fp8 { bits, .. } => bits.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Mat::F32(v) => v.len() * 4,
            Mat::Bf16(v) => v.len() * 2,
            Mat::Fp8 { bits, scale, .. } => bits.len() + scale.len() * 4,
        }
    }

    /// Rows of an FP8 matrix (one scale row each).
    fn fp8_rows(&self) -> Option<usize> {
        match self {
            Mat::Fp8 {
                scale, scale_cols, ..
            } => Some(scale.len() / (*scale_cols).max(1)),
            _ => None,
        }
    }

    /// Row `r` (`cols` wide) of an FP8 matrix, dequantized.
    fn fp8_row_values(&self, r: usize, cols: usize) -> impl Iterator<Item = f32> + '_ {
        let Mat::Fp8 {
            bits,
            scale,
            scale_cols,
            block,
        } = self
        else {
            unreachable!("called on FP8 matrices only")
        };
        let s = &scale[r * scale_cols..(r + 1) * scale_cols];
        fp8_row(&bits[r * cols..(r + 1) * cols], s, *block)
    }

    /// The whole matrix as f32.
    pub fn to_f32(&self) -> std::borrow::Cow<'_, [f32]> {
        match self {
            Mat::F32(v) => std::borrow::Cow::Borrowed(v),
            Mat::Bf16(v) => std::borrow::Cow::Owned(v.iter().map(|b| bf16(*b)).collect()),
            Mat::Fp8 { bits, .. } => {
                let rows = self.fp8_rows().unwrap_or(0);
                let cols = bits.len() / rows.max(1);
                let mut out = Vec::with_capacity(bits.len());
                for r in 0..rows {
                    out.extend(self.fp8_row_values(r, cols));
                }
                std::borrow::Cow::Owned(out)
            }
        }
    }
}

#[inline(always)]
fn bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Token rows per pass over the weights.
const SKINNY: usize = 32;

/// A dot product in a fixed order: 32 independent partial sums (enough to keep the
/// FMA units busy), then the tail. The order never depends on other rows of a batch.
#[inline(always)]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 32];
    let (ca, cb) = (a.chunks_exact(32), b.chunks_exact(32));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..32 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// An FP8 row dequantized: `e4m3(b) · scale` (the scale of each `block` columns), the
/// f32 product the tool's dequantized model holds.
#[inline(always)]
fn fp8_row<'a>(bits: &'a [u8], scale: &'a [f32], block: usize) -> impl Iterator<Item = f32> + 'a {
    let table = e4m3_table();
    bits.chunks(block.max(1))
        .zip(scale)
        .flat_map(move |(c, s)| c.iter().map(move |b| table[*b as usize] * s))
}

/// Row `o` of a weight matrix as f32: borrowed, or widened from bf16 or dequantized
/// from FP8 into `wide`.
#[inline(always)]
fn weight_row<'a>(w: &'a Mat, o: usize, in_f: usize, wide: &'a mut Vec<f32>) -> &'a [f32] {
    match w {
        Mat::F32(v) => &v[o * in_f..(o + 1) * in_f],
        Mat::Bf16(v) => {
            wide.clear();
            wide.extend(v[o * in_f..(o + 1) * in_f].iter().map(|b| bf16(*b)));
            wide
        }
        Mat::Fp8 { .. } => {
            wide.clear();
            wide.extend(w.fp8_row_values(o, in_f));
            wide
        }
    }
}

/// `out[j·t + tt] = x[tt] · w[o0 + j]` for a block of output rows; each weight row is
/// read (and widened from bf16) once for all t rows of x.
#[inline(always)]
fn skinny_rows(x: &[f32], t: usize, w: &Mat, in_f: usize, o0: usize, out: &mut [f32]) {
    let mut wide = Vec::new();
    for j in 0..out.len() / t {
        let o = o0 + j;
        let row = weight_row(w, o, in_f, &mut wide);
        for tt in 0..t {
            out[j * t + tt] = dot_f32(&x[tt * in_f..(tt + 1) * in_f], row);
        }
    }
}

/// AVX2 dot products of R rows of x against one weight row: 16 lanes (two 8-wide
/// accumulators per row), lanes summed in order, then the tail. A row's result is the
/// same whatever R is, so batching never changes a sequence's numbers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2<const R: usize>(x: [&[f32]; R], w: &[f32]) -> [f32; R] {
    use std::arch::x86_64::*;
    let n = w.len() / 16 * 16;
    let mut a0 = [_mm256_setzero_ps(); R];
    let mut a1 = [_mm256_setzero_ps(); R];
    let mut k = 0;
    while k < n {
        // SAFETY: k + 16 <= n <= len of w and of every x row (all have the same length).
        unsafe {
            let w0 = _mm256_loadu_ps(w.as_ptr().add(k));
            let w1 = _mm256_loadu_ps(w.as_ptr().add(k + 8));
            for r in 0..R {
                a0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x[r].as_ptr().add(k)), w0, a0[r]);
                a1[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x[r].as_ptr().add(k + 8)), w1, a1[r]);
            }
        }
        k += 16;
    }
    let mut out = [0f32; R];
    for r in 0..R {
        let mut lanes = [0f32; 16];
        // SAFETY: lanes holds 16 floats.
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr(), a0[r]);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), a1[r]);
        }
        let mut s = 0f32;
        for v in lanes {
            s += v;
        }
        for kk in n..w.len() {
            s += x[r][kk] * w[kk];
        }
        out[r] = s;
    }
    out
}

/// [`skinny_rows`] with explicit AVX2: four rows of x per pass over a weight row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn skinny_rows_avx2(x: &[f32], t: usize, w: &Mat, in_f: usize, o0: usize, out: &mut [f32]) {
    let mut wide = Vec::new();
    let xr = |tt: usize| &x[tt * in_f..(tt + 1) * in_f];
    for j in 0..out.len() / t {
        let o = o0 + j;
        let row = weight_row(w, o, in_f, &mut wide);
        let mut tt = 0;
        while tt + 4 <= t {
            // SAFETY: called only where AVX2 and FMA are available (this fn's contract).
            let r =
                unsafe { dot_rows_avx2::<4>([xr(tt), xr(tt + 1), xr(tt + 2), xr(tt + 3)], row) };
            out[j * t + tt..j * t + tt + 4].copy_from_slice(&r);
            tt += 4;
        }
        while tt < t {
            // SAFETY: as above.
            out[j * t + tt] = unsafe { dot_rows_avx2::<1>([xr(tt)], row) }[0];
            tt += 1;
        }
    }
}

fn skinny(x: &[f32], t: usize, w: &Mat, out_f: usize) -> Vec<f32> {
    let in_f = w.len() / out_f;
    // Output-major scratch [out, t], so each task owns a contiguous block.
    let mut scratch = vec![0f32; out_f * t];
    const ROWS: usize = 64;
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
    scratch
        .par_chunks_mut(ROWS * t)
        .enumerate()
        .for_each(|(ci, block)| {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU supports AVX2 and FMA (checked above).
                unsafe { skinny_rows_avx2(x, t, w, in_f, ci * ROWS, block) };
                return;
            }
            skinny_rows(x, t, w, in_f, ci * ROWS, block);
        });
    let mut y = vec![0f32; t * out_f];
    for o in 0..out_f {
        for tt in 0..t {
            y[tt * out_f + o] = scratch[o * t + tt];
        }
    }
    y
}

/// `y[t, o] = Σ_i x[t, i] · w[o, i] (+ bias[o])`, with `x: [t, in]`, `w: [out, in]`.
pub fn linear(
    x: &[f32],
    t: usize,
    w: &Mat,
    out_f: usize,
    bias: Option<&[f32]>,
    threads: usize,
) -> Vec<f32> {
    // Every output element is one dot product in a fixed order, whatever the number
    // of rows: results never depend on what else is in the batch. Rows go through in
    // blocks of SKINNY, each block streaming the weights once.
    let _ = threads;
    let in_f = w.len() / out_f;
    let mut y = Vec::with_capacity(t * out_f);
    for xs in x.chunks(SKINNY * in_f) {
        y.extend(skinny(xs, xs.len() / in_f, w, out_f));
    }
    if let Some(b) = bias {
        add_bias(&mut y, b);
    }
    y
}

/// In place: `x = x / sqrt(mean(x²) + eps) · w`, per row.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(w.len()) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for (v, ww) in row.iter_mut().zip(w) {
            *v = ww * (*v * r);
        }
    }
}

/// Adds `bias` to every row of `y` (rows of `bias.len()` values).
pub fn add_bias(y: &mut [f32], bias: &[f32]) {
    for row in y.chunks_exact_mut(bias.len()) {
        add_in_place(row, bias);
    }
}

/// `a += b`.
pub fn add_in_place(a: &mut [f32], b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += *y;
    }
}

/// `silu(gate) · up`, elementwise, into `gate`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// `√(2/π)`, torch's kBeta of the tanh GELU.
const GELU_BETA: f32 = 0.797_884_6;

/// torch's erf GELU, `x/2 · (1 + erf(x/√2))`.
#[inline]
pub fn gelu(x: f32) -> f32 {
    x * 0.5 * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// torch's tanh GELU, `x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³)))`.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (GELU_BETA * (x + 0.044715 * x * x * x)).tanh())
}

/// `act(gate) · up`, elementwise, into `gate`.
pub fn act_mul(act: Activation, gate: &mut [f32], up: &[f32]) {
    match act {
        Activation::Silu => silu_mul(gate, up),
        Activation::Gelu => gate.iter_mut().zip(up).for_each(|(g, u)| *g = gelu(*g) * u),
        Activation::GeluTanh => gate
            .iter_mut()
            .zip(up)
            .for_each(|(g, u)| *g = gelu_tanh(*g) * u),
    }
}

/// Rotate-half RoPE in place on `x: [t, heads, head_dim]` at `positions`.
pub fn rope(x: &mut [f32], heads: usize, head_dim: usize, positions: &[usize], inv_freq: &[f32]) {
    let half = head_dim / 2;
    for (ti, &pos) in positions.iter().enumerate() {
        let (cos, sin): (Vec<f32>, Vec<f32>) = inv_freq
            .iter()
            .map(|f| {
                let a = pos as f32 * f;
                (a.cos(), a.sin())
            })
            .unzip();
        for h in 0..heads {
            let v = &mut x[(ti * heads + h) * head_dim..][..head_dim];
            for i in 0..half {
                let (a, b) = (v[i], v[i + half]);
                v[i] = a * cos[i] - b * sin[i];
                v[i + half] = b * cos[i] + a * sin[i];
            }
        }
    }
}

/// Numerically stable softmax in place.
pub fn softmax(x: &mut [f32]) {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0;
    for v in x.iter_mut() {
        *v = (*v - m).exp();
        s += *v;
    }
    for v in x.iter_mut() {
        *v /= s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_naive() {
        let (t, i, o) = (3, 5, 4);
        let x: Vec<f32> = (0..t * i).map(|v| v as f32 * 0.1).collect();
        let w: Vec<f32> = (0..o * i).map(|v| (v as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..o).map(|v| v as f32).collect();
        let wb: Vec<u16> = w.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
        let w16: Vec<f32> = wb.iter().map(|b| bf16(*b)).collect();
        let y = linear(&x, t, &Mat::F32(w.clone()), o, Some(&b), 1);
        let y16 = linear(&x, t, &Mat::Bf16(wb), o, Some(&b), 1);
        let x20: Vec<f32> = (0..20 * i).map(|v| (v as f32 * 0.01).cos()).collect();
        let big = linear(&x20, 20, &Mat::F32(w16.clone()), o, None, 2);
        let big16 = linear(
            &x20,
            20,
            &Mat::Bf16(w.iter().map(|v| (v.to_bits() >> 16) as u16).collect()),
            o,
            None,
            2,
        );
        for (a, b) in big.iter().zip(&big16) {
            assert!((a - b).abs() < 1e-5, "many rows, bf16 vs widened f32");
        }
        for tt in 0..t {
            for oo in 0..o {
                let want: f32 =
                    (0..i).map(|k| x[tt * i + k] * w16[oo * i + k]).sum::<f32>() + b[oo];
                assert!((y16[tt * o + oo] - want).abs() < 1e-5);
            }
        }
        for tt in 0..t {
            for oo in 0..o {
                let want: f32 = (0..i).map(|k| x[tt * i + k] * w[oo * i + k]).sum::<f32>() + b[oo];
                assert!((y[tt * o + oo] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn many_rows_and_single_rows_agree_bit_for_bit() {
        let in_f = 37; // two full 16-lane chunks and a tail
        let x: Vec<f32> = (0..7 * in_f).map(|v| (v as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..5 * in_f).map(|v| (v as f32 * 0.11).cos()).collect();
        let all = linear(&x, 7, &Mat::F32(w.clone()), 5, None, 2);
        for t in 0..7 {
            let one = linear(
                &x[t * in_f..(t + 1) * in_f],
                1,
                &Mat::F32(w.clone()),
                5,
                None,
                1,
            );
            assert_eq!(&all[t * 5..(t + 1) * 5], &one[..], "row {t}");
        }
    }

    #[test]
    fn activations_match_their_formulas() {
        // torch.nn.functional.gelu(x) and gelu(x, approximate="tanh") in float64.
        let want = [
            (-3.0, -0.004_049_694, -0.003_637_392),
            (-1.0, -0.158_655_25, -0.158_808_01),
            (0.5, 0.345_731_23, 0.345_714),
            (2.0, 1.954_499_7, 1.954_597_7),
        ];
        for (x, erf, tanh) in want {
            assert!((gelu(x) - erf).abs() < 1e-6, "gelu({x}) = {}", gelu(x));
            assert!(
                (gelu_tanh(x) - tanh).abs() < 1e-6,
                "gelu_tanh({x}) = {}",
                gelu_tanh(x)
            );
        }
        let up = [2.0f32; 3];
        for (act, f) in [
            (
                Activation::Silu,
                (|x: f32| x / (1.0 + (-x).exp())) as fn(f32) -> f32,
            ),
            (Activation::Gelu, gelu),
            (Activation::GeluTanh, gelu_tanh),
        ] {
            let mut g = [-1.0f32, 0.25, 3.0];
            act_mul(act, &mut g, &up);
            for (out, x) in g.iter().zip([-1.0f32, 0.25, 3.0]) {
                assert_eq!(*out, f(x) * 2.0, "{act:?}({x})");
            }
        }
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = vec![1.0, 2.0, 1000.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[2] > 0.99);
    }
}
