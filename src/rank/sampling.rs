//! Choosing the next token from logits: greedy, or temperature with top-k / top-p /
//! min-p, driven by a seeded generator so a seed reproduces the same text.

/// A small deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

/// The draw generator for `seed` at generation step `step`: a draw depends on the
/// request and how far it got, never on the batch it ran in.
pub fn step_rng(seed: u64, step: u32) -> Rng {
    Rng::new(seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// A float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How to pick tokens.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 or less: no limit.
    pub top_k: i64,
    pub min_p: f32,
    /// Subtracted once from tokens already generated.
    #[serde(default)]
    pub presence_penalty: f32,
    /// Subtracted per occurrence in the generated tokens.
    #[serde(default)]
    pub frequency_penalty: f32,
    /// Divides positive / multiplies negative logits of tokens in prompt or output (1: off).
    #[serde(default = "one")]
    pub repetition_penalty: f32,
}

fn one() -> f32 {
    1.0
}

impl SamplingParams {
    /// True when the token history matters.
    pub fn has_penalties(&self) -> bool {
        self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || self.repetition_penalty != 1.0
    }
}

/// Applies vLLM's penalties in place: repetition (prompt and output tokens) first,
/// then frequency and presence (output tokens).
pub fn apply_penalties(logits: &mut [f32], p: &SamplingParams, prompt: &[u32], output: &[u32]) {
    if p.repetition_penalty != 1.0 {
        let mut seen = vec![false; logits.len()];
        for &t in prompt.iter().chain(output) {
            if let Some(s) = seen.get_mut(t as usize) {
                *s = true;
            }
        }
        for (l, s) in logits.iter_mut().zip(seen) {
            if s {
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
        }
    }
    if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
        let mut counts = std::collections::HashMap::<u32, u32>::new();
        for &t in output {
            *counts.entry(t).or_default() += 1;
        }
        for (t, c) in counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= p.frequency_penalty * c as f32 + p.presence_penalty;
            }
        }
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
        }
    }
}

/// A drawn token, with its log-probability and the most likely alternatives when asked.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sampled {
    pub token: u32,
    /// `ln p(token)` under the model's distribution (raw logits), if requested.
    pub logprob: Option<f32>,
    /// The `k` most likely tokens and their log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// One token to draw from row `row` of a step's logits, on whichever backend holds them.
pub struct DrawReq<'a> {
    pub row: usize,
    pub params: &'a SamplingParams,
    pub rng: Rng,
    pub logprobs: Option<u32>,
    pub history: Option<&'a (Vec<u32>, Vec<u32>)>,
}

impl DrawReq<'_> {
    /// Draws from a row of logits in host memory (the CPU backend).
    pub fn on_host(&mut self, row: &[f32]) -> Sampled {
        sample_with_logprobs(row, self.params, &mut self.rng, self.logprobs, self.history)
    }
}

/// Draws a token and, with `logprobs = Some(k)`, reports log-probabilities from the raw logits.
pub fn sample_with_logprobs(
    logits: &[f32],
    p: &SamplingParams,
    rng: &mut Rng,
    logprobs: Option<u32>,
    history: Option<&(Vec<u32>, Vec<u32>)>,
) -> Sampled {
    // Penalties shape the draw; reported log-probabilities stay those of the raw logits.
    let token = match history {
        Some((prompt, output)) if p.has_penalties() => {
            let mut l = logits.to_vec();
            apply_penalties(&mut l, p, prompt, output);
            sample(&l, p, rng)
        }
        _ => sample(logits, p, rng),
    };
    let Some(k) = logprobs else {
        return Sampled {
            token,
            logprob: None,
            top: vec![],
        };
    };
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + logits
        .iter()
        .map(|v| ((v - m) as f64).exp())
        .sum::<f64>()
        .ln() as f32;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k as usize);
    if k > 0 {
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        let k = (k as usize).min(idx.len());
        idx.select_nth_unstable_by(k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
        idx.truncate(k);
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        top = idx
            .into_iter()
            .map(|i| (i as u32, logits[i] - lse))
            .collect();
    }
    Sampled {
        token,
        logprob: Some(logits[token as usize] - lse),
        top,
    }
}

/// Index of the largest value (the first one on ties, as torch.argmax).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}

/// Picks a token from one row of logits.
pub fn sample(logits: &[f32], p: &SamplingParams, rng: &mut Rng) -> u32 {
    if p.temperature <= 0.0 {
        return argmax(logits) as u32;
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if p.top_k > 0 {
        idx.truncate(p.top_k as usize);
    }
    let m = logits[idx[0]];
    let mut probs: Vec<f64> = idx
        .iter()
        .map(|&i| (((logits[i] - m) / p.temperature) as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|q| *q /= total);
    let mut keep = probs.len();
    if p.top_p < 1.0 {
        let mut acc = 0.0;
        for (n, q) in probs.iter().enumerate() {
            acc += q;
            if acc >= p.top_p as f64 {
                keep = n + 1;
                break;
            }
        }
    }
    if p.min_p > 0.0 {
        let floor = probs[0] * p.min_p as f64;
        keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
    }
    let total: f64 = probs[..keep].iter().sum();
    let mut r = rng.next_f64() * total;
    for (n, q) in probs[..keep].iter().enumerate() {
        if r < *q {
            return idx[n] as u32;
        }
        r -= q;
    }
    idx[keep - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalties_like_vllm() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..Default::default()
        };
        let mut l = vec![4.0, -1.0, 3.0, 1.0];
        apply_penalties(&mut l, &p, &[0], &[1, 1, 2]);
        assert_eq!(l, vec![2.0, -2.0 - 1.0 - 0.25, 1.5 - 0.5 - 0.25, 1.0]);
    }

    #[test]
    fn greedy_and_seeded() {
        let l = [0.1, 3.0, 2.9, -1.0];
        assert_eq!(sample(&l, &SamplingParams::default(), &mut Rng::new(0)), 1);
        let p = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        let a: Vec<u32> = {
            let mut r = Rng::new(7);
            (0..20).map(|_| sample(&l, &p, &mut r)).collect()
        };
        let b: Vec<u32> = {
            let mut r = Rng::new(7);
            (0..20).map(|_| sample(&l, &p, &mut r)).collect()
        };
        assert_eq!(a, b);
        assert!(a.contains(&2), "temperature 1 explores");
        let k1 = SamplingParams {
            temperature: 1.0,
            top_k: 1,
            ..Default::default()
        };
        assert_eq!(sample(&l, &k1, &mut Rng::new(3)), 1);
        let tp = SamplingParams {
            temperature: 1.0,
            top_p: 0.01,
            ..Default::default()
        };
        assert_eq!(sample(&l, &tp, &mut Rng::new(3)), 1);
    }
}
