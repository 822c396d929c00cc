//! Opt-in kernel timing (`RRANK_PROFILE=1`): a pair of CUDA events around every kernel
//! launch, GEMM and collective of an eager step, summed per label and printed as a
//! table when the GPU closes. For places where ncu is not available or too slow for a
//! serving run. CUDA graphs are off while it is on (events cannot time graph nodes), and
//! an event pair also counts any wait for the host between the two records, so small
//! kernels read a little long when the GPU outruns the host.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaEvent, CudaStream, sys};

/// Per-label call counts and milliseconds, and the event pairs not yet read.
pub struct Profile {
    ctx: Arc<CudaContext>,
    pending: RefCell<Vec<(String, CudaEvent, CudaEvent)>>,
    free: RefCell<Vec<CudaEvent>>,
    totals: RefCell<HashMap<String, (u64, f64)>>,
}

impl Profile {
    /// A profile when `RRANK_PROFILE=1`.
    pub fn from_knobs(ctx: &Arc<CudaContext>) -> Option<Profile> {
        crate::rank::knobs::get().profile.then(|| Profile {
            ctx: ctx.clone(),
            pending: RefCell::default(),
            free: RefCell::default(),
            totals: RefCell::default(),
        })
    }

    fn event(&self) -> Option<CudaEvent> {
        if let Some(e) = self.free.borrow_mut().pop() {
            return Some(e);
        }
        self.ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .ok()
    }

    /// Runs `f` (which enqueues work on `stream`) between two recorded events, and
    /// files the time under `label` of its result.
    pub fn time<R>(
        &self,
        stream: &CudaStream,
        f: impl FnOnce() -> R,
        label: impl FnOnce(&R) -> String,
    ) -> R {
        let (Some(a), Some(b)) = (self.event(), self.event()) else {
            return f();
        };
        let _ = a.record(stream);
        let r = f();
        let _ = b.record(stream);
        self.pending.borrow_mut().push((label(&r), a, b));
        r
    }

    /// Reads the finished pairs into the totals (after a stream synchronize).
    pub fn collect(&self) {
        let mut totals = self.totals.borrow_mut();
        let mut free = self.free.borrow_mut();
        for (label, a, b) in self.pending.borrow_mut().drain(..) {
            if let Ok(ms) = a.elapsed_ms(&b) {
                let t = totals.entry(label).or_default();
                t.0 += 1;
                t.1 += ms as f64;
            }
            free.extend([a, b]);
        }
    }

    /// Forgets everything timed so far (the start-up warm-up).
    pub fn reset(&self) {
        self.collect();
        self.totals.borrow_mut().clear();
    }

    /// The table: label, calls, total ms, mean µs, share of the timed total.
    pub fn report(&self) -> String {
        self.collect();
        let totals = self.totals.borrow();
        report(&totals)
    }
}

fn report(totals: &HashMap<String, (u64, f64)>) -> String {
    let mut rows: Vec<_> = totals.iter().collect();
    rows.sort_by(|a, b| b.1.1.total_cmp(&a.1.1).then(a.0.cmp(b.0)));
    let all: f64 = rows.iter().map(|r| r.1.1).sum();
    let mut out = format!(
        "{:<48} {:>9} {:>11} {:>9} {:>6}\n",
        "kernel", "calls", "total ms", "mean µs", "share"
    );
    for (label, (n, ms)) in rows {
        out += &format!(
            "{label:<48} {n:>9} {ms:>11.2} {:>9.1} {:>5.1}%\n",
            1e3 * ms / *n as f64,
            100.0 * ms / all.max(1e-9)
        );
    }
    out + &format!("{:<48} {:>9} {all:>11.2}\n", "all timed", "")
}

/// Elements of a collective, rounded up to a power of two.
pub fn count_label(n: usize) -> String {
    format!("≤{}", n.next_power_of_two())
}

/// A GEMM's label: its path, output width × depth, and rows (exact up to 8, else
/// rounded up to a power of two) so decode and prefill shapes stay apart.
pub fn gemm_label(path: &str, m: usize, n: usize, k: usize) -> String {
    let rows = if m <= 8 { m } else { m.next_power_of_two() };
    format!("gemm {path} n={n} k={k} m≤{rows}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_sorts_by_time_and_shares_add_up() {
        let t = HashMap::from([
            ("rms_norm_bf16".to_string(), (64, 1.0)),
            ("gemm lt n=4096 k=4096 m≤1".to_string(), (32, 3.0)),
        ]);
        let r = report(&t);
        let lines: Vec<&str> = r.lines().collect();
        assert!(lines[1].starts_with("gemm lt"), "{r}");
        assert!(
            lines[1].contains("75.0%") && lines[1].contains("93.8"),
            "{r}"
        );
        assert!(
            lines[2].contains("25.0%") && lines[2].contains("15.6"),
            "{r}"
        );
        assert!(lines[3].contains("4.00"), "{r}");
    }

    #[test]
    fn gemm_labels_keep_decode_and_prefill_rows_apart() {
        assert_eq!(gemm_label("lt", 3, 6144, 4096), "gemm lt n=6144 k=4096 m≤3");
        assert_eq!(
            gemm_label("blas", 300, 6144, 4096),
            "gemm blas n=6144 k=4096 m≤512"
        );
    }
}
