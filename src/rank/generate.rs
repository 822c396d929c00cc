//! `rrank generate`: validate, connect the ranks, load this rank's shard, and run
//! prefill + decode for one prompt in lockstep on every rank. The sampling rank (TP
//! rank 0 of the last stage) broadcasts each token; rank 0 prints the text.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde_json::json;

use super::backend::{SeqChunk, StepSizes};
use super::cli::{EngineArgs, GenerateArgs};
use super::error::RankError;
use super::kv::{BlockAllocator, BlockTable};
use super::sampling::{DrawReq, SamplingParams, argmax, step_rng};
use super::startup::{self, Sizing, Startup};

fn io_err(e: std::io::Error) -> RankError {
    RankError::Runtime(format!("communication failed: {e}"))
}

/// Runs `rrank generate`.
pub fn run(engine: &EngineArgs, args: &GenerateArgs) -> Result<(), RankError> {
    let mut s: Startup = startup::prepare(engine, args.prompt.is_some())?;
    let (env, place, cfg) = (s.env.clone(), s.place, s.cfg.clone());
    let codec = s.codec.take();
    // Prompt ids: given, or tokenized (chat template unless --raw).
    let prompt: Vec<u32> = match (&args.prompt_ids, &args.prompt) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) => {
            let codec = codec.as_ref().expect("loaded for a text prompt");
            if !args.raw && codec.has_chat_template() {
                let rendered =
                    codec.apply_chat_template(&json!([{"role": "user", "content": text}]), true)?;
                codec.encode(&rendered, false)?
            } else {
                codec.encode(text, true)?
            }
        }
        (None, None) => {
            return Err(RankError::Invalid(
                "give --prompt TEXT or --prompt-ids 1,2,3".into(),
            ));
        }
    };
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= cfg.vocab_size) {
        return Err(RankError::Invalid(format!(
            "prompt token id {bad} is outside the vocabulary (size {})",
            cfg.vocab_size
        )));
    }
    let max_len = s.max_model_len(engine);
    if prompt.len() + args.max_tokens > max_len {
        return Err(RankError::Invalid(format!(
            "prompt ({} tokens) + --max-tokens ({}) = {} exceeds --max-model-len ({max_len})",
            prompt.len(),
            args.max_tokens,
            prompt.len() + args.max_tokens
        )));
    }

    let t_load = Instant::now();
    let bs = engine.block_size;
    let blocks = (prompt.len() + args.max_tokens).div_ceil(bs) + 1;
    let rows = if args.dump.is_some() { prompt.len() } else { 1 };
    let sizing = Sizing {
        step: StepSizes {
            tokens: prompt.len(),
            rows,
            seqs: 1,
            blocks,
        },
        kv_tokens: Some(blocks * bs),
        util: 1.0,
        max_model_len: prompt.len() + args.max_tokens,
        warm_up: None,
        print_memory: env.rank == 0 || args.dump.is_some(),
    };
    let ready = s.bring_up(engine, &sizing)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let (mut comm, mut backend) = (ready.comm, ready.backend);
    let mut alloc = BlockAllocator::new(blocks, bs);
    let mut table = BlockTable::default();
    alloc.reserve(&mut table, prompt.len() + args.max_tokens);

    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        ..Default::default()
    };
    let world: Vec<usize> = (0..env.world_size).collect();
    let sampler_rank = place.sampler();
    let mut out: Vec<u32> = Vec::new();
    let mut prompt_logits: Option<Vec<f32>> = None;
    let mut decode_logits: Option<Vec<f32>> = None;
    let mut printed = String::new();
    let t0 = Instant::now();
    let mut t_first = 0.0;
    let mut pos = 0;
    let mut step_tokens = prompt.clone();
    while out.len() < args.max_tokens {
        let all_logits = pos == 0 && args.dump.is_some();
        // The first decode step's logits too (a one-token step: the decode kernels).
        let first_decode = out.len() == 1 && args.dump.is_some();
        let chunk = SeqChunk {
            tokens: &step_tokens,
            start: pos,
            table: &table,
            all_logits,
        };
        let mut draws = [DrawReq {
            row: if all_logits { step_tokens.len() - 1 } else { 0 },
            params: &params,
            rng: step_rng(args.seed, out.len() as u32),
            logprobs: None,
            history: None,
        }];
        let step = backend
            .step(
                comm.as_mut(),
                &[chunk],
                &mut draws,
                all_logits || first_decode,
            )
            .map_err(|e| RankError::Runtime(e.to_string()))?;
        pos += step_tokens.len();
        let mut tok_bytes = Vec::new();
        if let Some(step) = step {
            tok_bytes = step.sampled[0].token.to_le_bytes().to_vec();
            if all_logits {
                prompt_logits = step.logits;
            } else if first_decode {
                decode_logits = step.logits;
            }
        }
        let b = comm
            .broadcast(&world, sampler_rank, tok_bytes)
            .map_err(io_err)?;
        let tok =
            u32::from_le_bytes(b.get(..4).and_then(|b| b.try_into().ok()).ok_or_else(|| {
                RankError::Runtime(format!("bad token message ({} bytes)", b.len()))
            })?);
        if out.is_empty() {
            t_first = t0.elapsed().as_secs_f64();
        }
        out.push(tok);
        if env.rank == 0
            && let Some(c) = &codec
        {
            let text = c.decode(&out);
            if text.len() > printed.len() && text.starts_with(&printed) {
                print!("{}", &text[printed.len()..]);
                let _ = std::io::stdout().flush();
                printed = text;
            }
        }
        if !args.ignore_eos && cfg.eos_token_ids.contains(&tok) {
            break;
        }
        step_tokens = vec![tok];
    }
    let total = t0.elapsed().as_secs_f64();
    if env.rank == 0 {
        if codec.is_some() {
            println!();
        } else {
            println!(
                "{}",
                out.iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        let decode_tps = if out.len() > 1 {
            (out.len() - 1) as f64 / (total - t_first).max(1e-9)
        } else {
            0.0
        };
        crate::eline!(
            "rrank: {} prompt + {} generated tokens; load {load_s:.2} s, first token {:.3} s, decode {decode_tps:.1} tok/s, total {:.1} tok/s incl. prefill",
            prompt.len(),
            out.len(),
            t_first,
            out.len() as f64 / total.max(1e-9)
        );
    }
    if env.rank == sampler_rank
        && let Some(path) = &args.dump
    {
        write_dump(
            path,
            &prompt,
            prompt_logits.as_deref().unwrap_or(&[]),
            decode_logits.as_deref(),
            cfg.vocab_size,
            &out,
        )?;
    }
    alloc.release(&mut table);
    Ok(())
}

fn write_dump(
    path: &Path,
    prompt: &[u32],
    logits: &[f32],
    decode_logits: Option<&[f32]>,
    vocab: usize,
    out: &[u32],
) -> Result<(), RankError> {
    let rows: Vec<&[f32]> = logits.chunks(vocab).collect();
    let argmax: Vec<usize> = rows.iter().map(|r| argmax(r)).collect();
    // Full logits only where they stay small (tiny test models); the argmax always.
    let mut j = if logits.len() <= 4 << 20 {
        json!({"prompt_ids": prompt, "prompt_logits": rows, "prompt_argmax": argmax, "tokens": out})
    } else {
        json!({"prompt_ids": prompt, "prompt_argmax": argmax, "last_logits": rows.last(), "tokens": out})
    };
    if let Some(d) = decode_logits {
        j["decode_logits"] = json!(d);
    }
    std::fs::write(path, j.to_string())
        .map_err(|e| RankError::Runtime(format!("cannot write {}: {e}", path.display())))
}
