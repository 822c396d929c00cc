//! Host side of sampling on the GPU (kernels/sample.cu): packs each draw's
//! parameters, its uniform number and its distinct history tokens (for penalties),
//! launches one block per draw over the gathered logits, and reads back only the
//! token ids and log-probabilities.

use std::collections::HashMap;

use super::{Args, DType, Gpu, Result};
use crate::rank::sampling::{DrawReq, Sampled};

/// At most this many alternatives per draw (vLLM's limit is 20 as well).
pub const MAX_TOP: usize = 20;

/// Mirrors `struct Draw` in kernels/sample.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Draw {
    row: i32,
    top_k: i32,
    temperature: f32,
    top_p: f32,
    min_p: f32,
    rep: f32,
    freq: f32,
    pres: f32,
    u: f32,
    n_top: i32,
    pen_off: i32,
    pen_n: i32,
}

/// Mirrors `struct Pen`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Pen {
    token: i32,
    count: i32,
    seen: i32,
}

fn penalties(d: &DrawReq<'_>, vocab: usize, out: &mut Vec<Pen>) {
    let Some((prompt, output)) = d.history else {
        return;
    };
    if !d.params.has_penalties() {
        return;
    }
    let mut m: HashMap<u32, (i32, i32)> = HashMap::new();
    for &t in prompt {
        m.entry(t).or_default().1 = 1;
    }
    for &t in output {
        let e = m.entry(t).or_default();
        e.0 += 1;
        e.1 = 1;
    }
    let mut v: Vec<_> = m
        .into_iter()
        .filter(|(t, _)| (*t as usize) < vocab)
        .collect();
    v.sort_unstable_by_key(|(t, _)| *t);
    out.extend(v.into_iter().map(|(t, (count, seen))| Pen {
        token: t as i32,
        count,
        seen,
    }));
}

/// Device scratch for [`sample`]: `draws` (48 bytes each), `pens` (12 bytes per
/// history token), `work` (vocab f32 per draw), `out` (8 + 8·MAX_TOP bytes per draw).
pub struct Scratch {
    pub draws: u64,
    pub pens: u64,
    pub work: u64,
    pub out: u64,
}

/// Draws every request from `logits` (`[tp][rows][chunk]` of `dt`), one block each.
#[allow(clippy::too_many_arguments)]
pub fn sample(
    gpu: &Gpu,
    dt: DType,
    logits: u64,
    rows: usize,
    chunk: usize,
    vocab: usize,
    reqs: &mut [DrawReq<'_>],
    s: &Scratch,
) -> Result<Vec<Sampled>> {
    let n = reqs.len();
    if n == 0 {
        return Ok(vec![]);
    }
    let mut draws = Vec::with_capacity(n);
    let mut pens = Vec::new();
    for r in reqs.iter_mut() {
        let off = pens.len();
        penalties(r, vocab, &mut pens);
        let p = r.params;
        draws.push(Draw {
            row: r.row as i32,
            top_k: p.top_k.clamp(0, i32::MAX as i64) as i32,
            temperature: p.temperature,
            top_p: p.top_p,
            min_p: p.min_p,
            rep: p.repetition_penalty,
            freq: p.frequency_penalty,
            pres: p.presence_penalty,
            // Greedy draws take no number, as on the CPU.
            u: if p.temperature > 0.0 {
                r.rng.next_f64() as f32
            } else {
                0.0
            },
            n_top: r.logprobs.map_or(0, |k| (k as usize).min(MAX_TOP) as i32),
            pen_off: off as i32,
            pen_n: (pens.len() - off) as i32,
        });
    }
    gpu.upload(s.draws, &draws)?;
    gpu.upload(s.pens, &pens)?;
    let (tok, lp) = (s.out, s.out + (n * 4) as u64);
    let (top_id, top_lp) = (lp + (n * 4) as u64, lp + (n * 4 + n * MAX_TOP * 4) as u64);
    gpu.launch(
        &format!("sample_{}", dt.suffix()),
        (n as u32, 1, 1),
        1024,
        Args::new()
            .ptr(logits)
            .i32(rows as i32)
            .i32(chunk as i32)
            .i32(vocab as i32)
            .ptr(s.draws)
            .ptr(s.pens)
            .ptr(s.work)
            .ptr(tok)
            .ptr(lp)
            .ptr(top_id)
            .ptr(top_lp),
    )?;
    // One copy of the whole output region: tok [n], lp [n], top ids [n·MAX_TOP], top lps.
    let mut words = vec![0u32; n * (2 + 2 * MAX_TOP)];
    gpu.download(&mut words, tok)?;
    let (toks, rest) = words.split_at(n);
    let (lps, rest) = rest.split_at(n);
    let (tids, tlps) = rest.split_at(n * MAX_TOP);
    Ok(reqs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let k = r.logprobs.map_or(0, |k| (k as usize).min(MAX_TOP));
            Sampled {
                token: toks[i],
                logprob: r.logprobs.map(|_| f32::from_bits(lps[i])),
                top: (0..k)
                    .map(|j| {
                        let at = i * MAX_TOP + j;
                        (tids[at], f32::from_bits(tlps[at]))
                    })
                    .collect(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rank::sampling::{Rng, SamplingParams};

    #[test]
    fn penalty_entries_are_distinct_counted_and_in_vocab() {
        let params = SamplingParams {
            repetition_penalty: 1.2,
            frequency_penalty: 0.5,
            ..Default::default()
        };
        let hist = (vec![3, 3, 9, 500], vec![9, 9, 4]);
        let d = DrawReq {
            row: 0,
            params: &params,
            rng: Rng::new(0),
            logprobs: None,
            history: Some(&hist),
        };
        let mut out = vec![];
        penalties(&d, 100, &mut out);
        let got: Vec<(i32, i32, i32)> = out.iter().map(|p| (p.token, p.count, p.seen)).collect();
        // 500 is outside the vocabulary; 9 is in the prompt and twice in the output.
        assert_eq!(got, vec![(3, 0, 1), (4, 1, 1), (9, 2, 1)]);
        let plain = SamplingParams::default();
        let d = DrawReq {
            params: &plain,
            ..d
        };
        let mut none = vec![];
        penalties(&d, 100, &mut none);
        assert!(none.is_empty(), "no penalty, no entries");
    }

    #[test]
    fn draw_mirrors_the_kernel_struct() {
        assert_eq!(std::mem::size_of::<Draw>(), 48);
        assert_eq!(std::mem::size_of::<Pen>(), 12);
    }
}
