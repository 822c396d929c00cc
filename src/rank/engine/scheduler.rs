//! Rank 0's continuous-batching scheduler. Each step it gives every active sequence
//! its next chunk (the last sampled token, or up to the token budget of its prompt:
//! chunked prefill), admits waiting sequences first-come first-served within
//! `--max-num-seqs` and `--max-num-batched-tokens`, and, when KV blocks run out,
//! preempts the newest sequence by recompute: its blocks are freed and it waits again
//! with its generated tokens kept, so it is delayed but never lost or duplicated.
//! After a step it appends the sampled tokens, detects stops, and streams text out.

use std::collections::VecDeque;
use std::sync::Arc;

use rayon::prelude::*;

use tokio::sync::mpsc::UnboundedSender;

use super::plan::PlanSeq;
use crate::rank::kv::{BlockAllocator, BlockTable};
use crate::rank::sampling::{Sampled, SamplingParams};
use crate::rank::tokenizer::{Detokenizer, TextCodec};

/// A generation request as the engine sees it (already tokenized and validated).
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// Shared with the request's other samples (`n`).
    pub prompt: Arc<[u32]>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    pub seed: u64,
    /// Shared by every sequence of the request.
    pub stop: Arc<[String]>,
    pub stop_token_ids: Arc<[u32]>,
    pub ignore_eos: bool,
    /// Report each generated token's log-probability with this many alternatives.
    pub logprobs: Option<u32>,
}

/// Why a sequence ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// EOS (`stop_reason` None), a stop token id, or a stop string.
    Stop(Option<StopReason>),
    Length,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Token(u32),
    Text(String),
}

/// What a request's listener receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text (may be empty while a stop string might still match), the token, and
    /// its log-probability and top alternatives when requested.
    Token {
        text: String,
        token: u32,
        logprob: Option<f32>,
        top: Vec<(u32, f32)>,
    },
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
}

struct Seq {
    id: u64,
    req: GenRequest,
    out: Vec<u32>,
    /// The output's text so far (complete characters) and how many of its bytes
    /// have been sent.
    text: String,
    sent: usize,
    detok: Detokenizer,
    /// Positions whose K/V are in the cache.
    computed: usize,
    table: BlockTable,
    /// Chain hashes of the full blocks registered for prefix caching.
    hashes: Vec<u64>,
    events: UnboundedSender<Event>,
}

impl Seq {
    fn total(&self) -> usize {
        self.req.prompt.len() + self.out.len()
    }
    fn token(&self, i: usize) -> u32 {
        if i < self.req.prompt.len() {
            self.req.prompt[i]
        } else {
            self.out[i - self.req.prompt.len()]
        }
    }
}

/// Limits of the scheduler.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_num_seqs: usize,
    pub max_batched_tokens: usize,
    pub max_model_len: usize,
}

/// Counters for /metrics.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub preemptions: u64,
    pub finished: u64,
    pub aborted: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
}

pub struct Scheduler {
    waiting: VecDeque<Seq>,
    active: Vec<Seq>,
    pub alloc: BlockAllocator,
    limits: Limits,
    eos: Vec<u32>,
    next_id: u64,
    pub counters: Counters,
}

impl Scheduler {
    pub fn new(alloc: BlockAllocator, limits: Limits, eos: Vec<u32>) -> Scheduler {
        Scheduler {
            waiting: VecDeque::new(),
            active: Vec::new(),
            alloc,
            limits,
            eos,
            next_id: 0,
            counters: Counters::default(),
        }
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.active.is_empty()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.active.len()
    }

    /// Queues a request; events go to `events`.
    pub fn add(&mut self, req: GenRequest, events: UnboundedSender<Event>) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.counters.prompt_tokens += req.prompt.len() as u64;
        self.waiting.push_back(Seq {
            id,
            req,
            out: vec![],
            text: String::new(),
            sent: 0,
            detok: Detokenizer::default(),
            computed: 0,
            table: BlockTable::default(),
            hashes: vec![],
            events,
        });
        id
    }

    /// Ends every sequence (shutdown): listeners see their channel close without `Done`.
    pub fn abort_all(&mut self) {
        for mut s in self.active.drain(..) {
            self.alloc.release(&mut s.table);
        }
        self.counters.aborted += self.waiting.len() as u64;
        self.waiting.clear();
    }

    /// Drops sequences whose listener went away (client disconnected), freeing their blocks.
    pub fn reap_aborted(&mut self) {
        let alloc = &mut self.alloc;
        let mut n = 0;
        self.active.retain_mut(|s| {
            let gone = s.events.is_closed();
            if gone {
                alloc.release(&mut s.table);
                n += 1;
            }
            !gone
        });
        self.waiting.retain(|s| {
            let gone = s.events.is_closed();
            n += gone as u64;
            !gone
        });
        self.counters.aborted += n;
    }

    fn preempt_last(&mut self) -> bool {
        match self.active.pop() {
            Some(mut s) => {
                self.alloc.release(&mut s.table);
                s.computed = 0;
                s.hashes.clear();
                self.counters.preemptions += 1;
                self.waiting.push_front(s);
                true
            }
            None => false,
        }
    }

    /// Decides the next step.
    pub fn schedule(&mut self) -> Vec<PlanSeq> {
        let mut budget = self.limits.max_batched_tokens;
        let mut plan = Vec::new();
        let mut i = 0;
        // Active sequences first, oldest first; preempt from the back when blocks run out.
        while i < self.active.len() && budget > 0 {
            let (total, computed) = (self.active[i].total(), self.active[i].computed);
            let chunk = (total - computed).min(budget);
            let ok = loop {
                let s = &mut self.active[i];
                if self.alloc.reserve(&mut s.table, computed + chunk) {
                    break true;
                }
                if self.active.len() - 1 == i {
                    break false; // nothing newer to preempt
                }
                self.preempt_last();
            };
            if !ok {
                // Even alone it does not fit now: wait (it keeps its blocks? no: recompute later).
                self.preempt_last();
                break;
            }
            plan.push(self.plan_seq(i, chunk));
            budget -= chunk;
            i += 1;
        }
        // Admit waiting sequences.
        while budget > 0 && self.active.len() < self.limits.max_num_seqs {
            let Some(mut s) = self.waiting.pop_front() else {
                break;
            };
            if s.computed == 0 && s.table.0.is_empty() {
                let all: Vec<u32> = (0..s.total()).map(|p| s.token(p)).collect();
                let (hit, hashes) = self.alloc.match_prefix(&all, &mut s.table);
                s.computed = hit;
                s.hashes = hashes;
            }
            let chunk = (s.total() - s.computed).min(budget);
            if !self.alloc.reserve(&mut s.table, s.computed + chunk) {
                self.alloc.release(&mut s.table);
                s.computed = 0;
                s.hashes.clear();
                self.waiting.push_front(s);
                break;
            }
            self.active.push(s);
            let idx = self.active.len() - 1;
            plan.push(self.plan_seq(idx, chunk));
            budget -= chunk;
        }
        plan
    }

    fn plan_seq(&mut self, i: usize, chunk: usize) -> PlanSeq {
        let s = &mut self.active[i];
        let tokens: Vec<u32> = (s.computed..s.computed + chunk)
            .map(|p| s.token(p))
            .collect();
        let p = PlanSeq {
            id: s.id,
            tokens,
            start: s.computed,
            blocks: s.table.0.clone(),
            sample: s.computed + chunk == s.total(),
            params: s.req.params.clone(),
            seed: s.req.seed,
            step: s.out.len() as u32,
            logprobs: s.req.logprobs,
            history: s
                .req
                .params
                .has_penalties()
                .then(|| (s.req.prompt.to_vec(), s.out.clone())),
        };
        s.computed += chunk;
        p
    }

    /// Applies a step's sampled tokens (one per `sample` entry of `plan`, in order).
    pub fn update(&mut self, plan: &[PlanSeq], drawn: &[Sampled], codec: &TextCodec) {
        // The step's K/V are in the cache now: register newly full blocks.
        for p in plan {
            if let Some(s) = self.active.iter_mut().find(|s| s.id == p.id)
                && self.alloc.has_uncommitted(s.computed, s.hashes.len())
            {
                let all: Vec<u32> = (0..s.computed).map(|i| s.token(i)).collect();
                self.alloc.commit(&all, s.computed, &s.table, &mut s.hashes);
            }
        }
        // Phase 1: append each drawn token and see whether it ends its sequence.
        struct Drawn<'a> {
            idx: usize,
            d: &'a Sampled,
            finish: Option<Finish>,
            out_of_room: bool,
        }
        let mut now: Vec<Drawn> = vec![];
        for (p, d) in plan.iter().filter(|p| p.sample).zip(drawn) {
            let Some(idx) = self.active.iter().position(|s| s.id == p.id) else {
                continue;
            };
            self.counters.generation_tokens += 1;
            let s = &mut self.active[idx];
            s.out.push(d.token);
            let finish = if !s.req.ignore_eos && self.eos.contains(&d.token) {
                Some(Finish::Stop(None))
            } else if s.req.stop_token_ids.contains(&d.token) {
                Some(Finish::Stop(Some(StopReason::Token(d.token))))
            } else {
                None
            };
            let out_of_room =
                s.out.len() >= s.req.max_tokens || s.total() >= self.limits.max_model_len;
            now.push(Drawn {
                idx,
                d,
                finish,
                out_of_room,
            });
        }
        // Phase 2, in parallel across sequences: the new text. A stop token's own text
        // is never shown; at the end the held tail (an incomplete character) goes out.
        let mut mode = vec![0u8; self.active.len()];
        for n in &now {
            mode[n.idx] = match (&n.finish, n.out_of_room) {
                (Some(_), _) => 3,
                (None, true) => 2,
                (None, false) => 1,
            };
        }
        let mut pieces: Vec<String> = self
            .active
            .par_iter_mut()
            .zip(mode.par_iter())
            .map(|(s, m)| match m {
                1 => s.detok.next(codec, &s.out),
                2 => s.detok.finish(codec, &s.out),
                3 => s.detok.finish(codec, &s.out[..s.out.len() - 1]),
                _ => String::new(),
            })
            .collect();
        // Phase 3: stop strings, the text to send, events; finished sequences leave last.
        let mut done = vec![];
        for n in now {
            let s = &mut self.active[n.idx];
            let mut finish = n.finish;
            s.text.push_str(&std::mem::take(&mut pieces[n.idx]));
            // Sending holds back the longest stop string's length − 1 bytes, so no
            // match can start before the text sent so far.
            let hold = s
                .req
                .stop
                .iter()
                .map(|st| st.len().saturating_sub(1))
                .max()
                .unwrap_or(0);
            if finish.is_none() && !s.req.stop.is_empty() {
                let mut from = s.sent.min(s.text.len());
                while !s.text.is_char_boundary(from) {
                    from -= 1;
                }
                let text = &s.text;
                if let Some((at, stop)) = s
                    .req
                    .stop
                    .iter()
                    .filter_map(|st| text[from..].find(st.as_str()).map(|a| (from + a, st)))
                    .min_by_key(|(a, _)| *a)
                {
                    let stop = stop.clone();
                    s.text.truncate(at);
                    finish = Some(Finish::Stop(Some(StopReason::Text(stop))));
                }
            }
            if finish.is_none() && n.out_of_room {
                finish = Some(Finish::Length);
            }
            let mut upto = s.text.len();
            if finish.is_none() {
                upto = upto.saturating_sub(hold).max(s.sent.min(upto));
                while !s.text.is_char_boundary(upto) {
                    upto -= 1;
                }
            }
            let delta = s.text.get(s.sent..upto).unwrap_or("").to_string();
            s.sent = s.sent.max(upto);
            let _ = s.events.send(Event::Token {
                text: delta,
                token: n.d.token,
                logprob: n.d.logprob,
                top: n.d.top.clone(),
            });
            if let Some(f) = finish {
                done.push((n.idx, f));
            }
        }
        done.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (idx, f) in done {
            let mut s = self.active.remove(idx);
            self.alloc.release(&mut s.table);
            self.counters.finished += 1;
            let _ = s.events.send(Event::Done {
                finish: f,
                prompt_tokens: s.req.prompt.len(),
                completion_tokens: s.out.len(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    //! The scheduler with a fake model and no backend: the next token is a fixed
    //! function of every token before it, so a sequence's output does not depend on
    //! batching, chunking, preemption or the prefix cache, and any token lost,
    //! duplicated or fed at the wrong position changes it.

    use std::collections::HashMap;
    use std::path::Path;

    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    use super::*;

    fn codec() -> TextCodec {
        TextCodec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/llama")).unwrap()
    }

    fn next_token(context: &[u32]) -> u32 {
        let h = context
            .iter()
            .fold(17u64, |h, &t| h.wrapping_mul(31).wrapping_add(t as u64));
        4 + (h % 200) as u32
    }

    fn request(prompt: Vec<u32>, max_tokens: usize) -> GenRequest {
        GenRequest {
            prompt: prompt.into(),
            params: SamplingParams::default(),
            max_tokens,
            seed: 0,
            stop: Arc::from(vec![]),
            stop_token_ids: Arc::from(vec![]),
            ignore_eos: true,
            logprobs: None,
        }
    }

    fn scheduler(blocks: usize, max_num_seqs: usize, max_batched_tokens: usize) -> Scheduler {
        Scheduler::new(
            BlockAllocator::with_prefix_caching(blocks, 4, true),
            Limits {
                max_num_seqs,
                max_batched_tokens,
                max_model_len: 64,
            },
            vec![],
        )
    }

    /// The fake model's KV cache: the token at each slot of each block, written
    /// and read through the plans' block tables as the real cache is. Each step is
    /// checked against the limits; the steps' token counts are kept.
    struct Fake {
        kv: HashMap<usize, [Option<u32>; 4]>,
        steps: Vec<usize>,
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                kv: HashMap::new(),
                steps: vec![],
            }
        }

        fn step(&mut self, s: &mut Scheduler, codec: &TextCodec) -> bool {
            s.reap_aborted();
            let plan = s.schedule();
            if plan.is_empty() {
                return false;
            }
            let tokens: usize = plan.iter().map(|p| p.tokens.len()).sum();
            assert!(
                tokens <= s.limits.max_batched_tokens,
                "{tokens} tokens in one step"
            );
            assert!(plan.len() <= s.limits.max_num_seqs);
            self.steps.push(tokens);
            let mut drawn = vec![];
            for p in &plan {
                let end = p.start + p.tokens.len();
                assert!(p.blocks.len() * 4 >= end, "blocks for every position");
                for (k, &t) in p.tokens.iter().enumerate() {
                    let pos = p.start + k;
                    self.kv.entry(p.blocks[pos / 4]).or_default()[pos % 4] = Some(t);
                }
                let context: Vec<u32> = (0..end)
                    .map(|pos| {
                        self.kv
                            .get(&p.blocks[pos / 4])
                            .and_then(|b| b[pos % 4])
                            .unwrap_or_else(|| panic!("position {pos} of {} never written", p.id))
                    })
                    .collect();
                if p.sample {
                    drawn.push(Sampled {
                        token: next_token(&context),
                        logprob: None,
                        top: vec![],
                    });
                }
            }
            s.update(&plan, &drawn, codec);
            true
        }

        fn run(&mut self, s: &mut Scheduler, codec: &TextCodec) {
            for _ in 0..10_000 {
                if !self.step(s, codec) && s.is_idle() {
                    return;
                }
            }
            panic!("the scheduler did not finish");
        }
    }

    /// Tokens and the end of one request's event stream; exactly one `Done`, last.
    fn drain(rx: &mut UnboundedReceiver<Event>) -> (Vec<u32>, String, Finish) {
        let (mut toks, mut text, mut end) = (vec![], String::new(), None);
        while let Ok(ev) = rx.try_recv() {
            assert!(end.is_none(), "an event after Done");
            match ev {
                Event::Token { text: t, token, .. } => {
                    toks.push(token);
                    text += &t;
                }
                Event::Done { finish, .. } => end = Some(finish),
            }
        }
        (toks, text, end.expect("a Done event"))
    }

    fn alone(prompt: &[u32], max_tokens: usize) -> Vec<u32> {
        let mut ctx = prompt.to_vec();
        for _ in 0..max_tokens {
            let t = next_token(&ctx);
            ctx.push(t);
        }
        ctx[prompt.len()..].to_vec()
    }

    #[test]
    fn chunked_prefill_keeps_the_token_budget_and_samples_once_at_the_end() {
        let c = codec();
        let mut s = scheduler(64, 8, 8);
        let (tx, mut rx) = unbounded_channel();
        let prompt: Vec<u32> = (4..24).collect();
        s.add(request(prompt.clone(), 3), tx);
        let mut f = Fake::new();
        f.run(&mut s, &c);
        // 20 prompt tokens in chunks of 8, 8, 4 (the last samples), then 2 decode steps.
        assert_eq!(f.steps, vec![8, 8, 4, 1, 1]);
        let (toks, _, finish) = drain(&mut rx);
        assert_eq!((toks, finish), (alone(&prompt, 3), Finish::Length));
        assert_eq!(s.alloc.free_blocks(), s.alloc.total());
    }

    #[test]
    fn preempted_sequences_resume_with_nothing_lost_or_duplicated() {
        let c = codec();
        // 12 blocks of 4 tokens = 48 cache tokens; 6 requests need about 6 × 22 = 132.
        let mut s = scheduler(12, 6, 16);
        let prompts: Vec<Vec<u32>> = (0..6)
            .map(|i| (0..6 + i).map(|j| 4 + (7 * i + j) as u32 % 190).collect())
            .collect();
        let mut rxs = vec![];
        for p in &prompts {
            let (tx, rx) = unbounded_channel();
            s.add(request(p.clone(), 14), tx);
            rxs.push(rx);
        }
        Fake::new().run(&mut s, &c);
        assert!(
            s.counters.preemptions > 0,
            "the pool is too small for all at once"
        );
        for (p, rx) in prompts.iter().zip(&mut rxs) {
            let (toks, _, finish) = drain(rx);
            assert_eq!(toks, alone(p, 14));
            assert_eq!(finish, Finish::Length);
        }
        assert_eq!(s.counters.finished, 6);
        assert_eq!(s.alloc.free_blocks(), s.alloc.total());
    }

    #[test]
    fn the_prefix_cache_serves_full_blocks_and_changes_nothing() {
        let c = codec();
        let mut s = scheduler(32, 4, 64);
        let prompt: Vec<u32> = (10..30).collect(); // 5 full blocks of 4
        let mut outs = vec![];
        let mut f = Fake::new();
        for _ in 0..2 {
            let (tx, mut rx) = unbounded_channel();
            s.add(request(prompt.clone(), 4), tx);
            f.run(&mut s, &c);
            outs.push(drain(&mut rx).0);
        }
        assert_eq!(outs[0], outs[1]);
        assert_eq!(outs[0], alone(&prompt, 4));
        // The second request found the first one's committed blocks (all but the block
        // holding the last prompt position, which must be recomputed to sample).
        assert!(s.alloc.hits >= 16, "hits {}", s.alloc.hits);
        // Cached blocks can be evicted: a request needing the whole pool still runs.
        let (tx, mut rx) = unbounded_channel();
        let long: Vec<u32> = (100..160).collect();
        s.add(request(long.clone(), 4), tx);
        f.run(&mut s, &c);
        assert_eq!(drain(&mut rx).0, alone(&long, 4));
    }

    #[test]
    fn an_aborted_request_frees_its_blocks_and_ends_without_done() {
        let c = codec();
        let mut s = scheduler(32, 4, 64);
        let (tx, rx) = unbounded_channel();
        s.add(request((4..20).collect(), 30), tx);
        let (tx2, mut rx2) = unbounded_channel();
        s.add(request((40..50).collect(), 5), tx2);
        let mut f = Fake::new();
        f.step(&mut s, &c);
        assert!(s.alloc.free_blocks() < s.alloc.total());
        drop(rx);
        f.run(&mut s, &c);
        assert_eq!(s.counters.aborted, 1);
        assert_eq!(drain(&mut rx2).0, alone(&(40..50).collect::<Vec<_>>(), 5));
        assert_eq!(s.alloc.free_blocks(), s.alloc.total());
        // A waiting request aborted before it ran.
        let (tx, rx) = unbounded_channel();
        s.add(request((4..8).collect(), 3), tx);
        drop(rx);
        f.run(&mut s, &c);
        assert_eq!(s.counters.aborted, 2);
        assert!(s.is_idle());
    }

    #[test]
    fn a_stop_string_across_token_boundaries_is_found_and_never_sent() {
        let c = codec();
        let words = c.encode(" alpha beta gamma delta", false).unwrap();
        // The fake model is replaced by a script: the request's output is `words`.
        let mut s = scheduler(32, 4, 64);
        let (tx, mut rx) = unbounded_channel();
        let mut req = request(vec![5, 6], 20);
        req.stop = Arc::from(vec!["ta gam".to_string()]);
        s.add(req, tx);
        let mut i = 0;
        loop {
            let plan = s.schedule();
            if plan.is_empty() {
                break;
            }
            let drawn: Vec<Sampled> = plan
                .iter()
                .filter(|p| p.sample)
                .map(|_| {
                    i += 1;
                    Sampled {
                        token: words[(i - 1).min(words.len() - 1)],
                        logprob: None,
                        top: vec![],
                    }
                })
                .collect();
            s.update(&plan, &drawn, &c);
        }
        let (_, text, finish) = drain(&mut rx);
        assert_eq!(text, " alpha be");
        assert_eq!(
            finish,
            Finish::Stop(Some(StopReason::Text("ta gam".into())))
        );
        assert_eq!(s.alloc.free_blocks(), s.alloc.total());
    }
}
