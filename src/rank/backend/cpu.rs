//! The CPU reference backend: f32 kernels that match transformers' float32 math
//! (RMSNorm, rotate-half RoPE incl. Llama 3 scaling, SiLU·mul, softmax attention over
//! the paged KV cache) and GEMMs through the `gemm` crate, multi-threaded with rayon.
//!
//! Activations are row-major `[tokens, features]` slices. Weights are row-major
//! `[out, in]`, as in the checkpoint.

use gemm::Parallelism;

use crate::rank::model::config::{ModelConfig, RopeScaling};

/// `y[t, o] = Σ_i x[t, i] · w[o, i] (+ bias[o])`, with `x: [t, in]`, `w: [out, in]`.
pub fn linear(
    x: &[f32],
    t: usize,
    w: &[f32],
    out_f: usize,
    bias: Option<&[f32]>,
    threads: usize,
) -> Vec<f32> {
    let in_f = w.len() / out_f;
    debug_assert_eq!(x.len(), t * in_f);
    let mut y = vec![0f32; t * out_f];
    let work = t * in_f * out_f;
    let par = if threads > 1 && work >= 1 << 16 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: pointers and strides describe the three buffers exactly:
    // dst [t, out] row-major, lhs [t, in] row-major, rhs = wᵀ [in, out] read from w [out, in].
    unsafe {
        gemm::gemm(
            t,
            out_f,
            in_f,
            y.as_mut_ptr(),
            1,
            out_f as isize,
            false,
            x.as_ptr(),
            1,
            in_f as isize,
            w.as_ptr(),
            in_f as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(out_f) {
            for (v, bb) in row.iter_mut().zip(b) {
                *v += *bb;
            }
        }
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

/// RoPE inverse frequencies (with Llama 3 scaling when configured), as transformers computes them.
pub fn inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    let d = cfg.head_dim;
    let base: Vec<f32> = (0..d / 2)
        .map(|i| 1.0 / (cfg.rope_theta as f32).powf((2 * i) as f32 / d as f32))
        .collect();
    match cfg.rope_scaling {
        RopeScaling::None => base,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        } => {
            let (factor, low, high, old) = (
                factor as f32,
                low_freq_factor as f32,
                high_freq_factor as f32,
                old as f32,
            );
            let low_wavelen = old / low;
            let high_wavelen = old / high;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    let smooth = (old / wavelen - low) / (high - low);
                    let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                    if medium {
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    }
                })
                .collect()
        }
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
        let y = linear(&x, t, &w, o, Some(&b), 1);
        for tt in 0..t {
            for oo in 0..o {
                let want: f32 = (0..i).map(|k| x[tt * i + k] * w[oo * i + k]).sum::<f32>() + b[oo];
                assert!((y[tt * o + oo] - want).abs() < 1e-5);
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
