//! The failure report. It keeps torchrun's ChildFailedError layout (tools grep it:
//! `Root Cause (first observed failure):`, `exitcode  :`, `error_file:`), and improves
//! it: the root cause comes first and is the failure rrun observed first (on the
//! monotonic clock: torch's whole-second timestamps tie within a second), the other
//! failures follow in the order observed, ranks that rrun itself terminated are
//! marked as such, and the last lines of the root cause's captured stderr are shown
//! (or how to capture them). The `time` fields keep torch's format. It also reads
//! worker error files and copies the root cause's to the parent's
//! TORCHELASTIC_ERROR_FILE (§3.7).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::config::signal_name;
use super::logs;
use super::spawn::Worker;
use super::tlog::{self, src};

const TRACEBACK_HINT: &str =
    "To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html";

/// One failed worker, as reported.
#[derive(Debug, Clone)]
pub struct Failure {
    pub local_rank: usize,
    pub global_rank: usize,
    pub pid: u32,
    pub exitcode: i32,
    /// Unix seconds: the error file's timestamp, else when rrun noticed (shown as `time`).
    pub time: i64,
    /// When rrun noticed the exit, on the monotonic clock: failures are ordered by it.
    pub observed: Instant,
    pub error_file: Option<String>,
    pub error_json: Option<Value>,
    pub traceback: String,
    pub terminated_by_agent: bool,
    pub stderr_file: Option<std::path::PathBuf>,
}

fn read_error_file(path: &str) -> Option<Value> {
    if path.is_empty() {
        return None;
    }
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Builds the failures of a group, in local-rank order.
pub fn collect(workers: &[Worker]) -> Vec<Failure> {
    workers
        .iter()
        .filter(|w| w.exit.is_some_and(|c| c != 0))
        .map(|w| {
            let code = w.exit.unwrap();
            let json = read_error_file(&w.error_file);
            let noticed = w
                .exited_at
                .unwrap_or_else(SystemTime::now)
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let (traceback, time) = match json.as_ref().and_then(|j| j.get("message")) {
                Some(Value::Object(m)) => {
                    let extra = m.get("extraInfo");
                    let stack = extra
                        .and_then(|e| e.get("py_callstack"))
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let ts = extra
                        .and_then(|e| e.get("timestamp"))
                        .and_then(|t| t.as_str().and_then(|s| s.parse().ok()).or(t.as_i64()));
                    (stack.replace('\n', "\n  "), ts.unwrap_or(noticed))
                }
                Some(Value::String(s)) => {
                    let ts = json
                        .as_ref()
                        .and_then(|j| j.get("timestamp"))
                        .and_then(Value::as_i64);
                    (s.clone(), ts.unwrap_or(noticed))
                }
                _ if code < 0 => (
                    format!(
                        "Signal {} ({}) received by PID {}",
                        -code,
                        signal_name(-code),
                        w.pid
                    ),
                    noticed,
                ),
                _ => (TRACEBACK_HINT.to_string(), noticed),
            };
            Failure {
                local_rank: w.local_rank,
                global_rank: w.global_rank,
                pid: w.pid,
                exitcode: code,
                time,
                observed: w.observed_at.unwrap_or_else(Instant::now),
                error_file: json.as_ref().map(|_| w.error_file.clone()),
                error_json: json,
                traceback,
                terminated_by_agent: w.terminated_by_agent(),
                stderr_file: w.stderr_file.clone(),
            }
        })
        .collect()
}

/// Indices of `failures` in the order rrun observed them (ties: lower local rank).
fn observed_order(failures: &[Failure]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..failures.len()).collect();
    order.sort_by_key(|&i| (failures[i].observed, i));
    order
}

/// The root cause: the first observed failure rrun did not cause itself. Falls back
/// to the first observed failure of all.
pub fn root_cause(failures: &[Failure]) -> usize {
    let order = observed_order(failures);
    order
        .iter()
        .copied()
        .find(|&i| !failures[i].terminated_by_agent)
        .or_else(|| order.first().copied())
        .unwrap_or(0)
}

fn entry(idx: usize, f: &Failure, host: &str, tail_lines: usize, is_root: bool) -> Vec<String> {
    let mut l = vec![
        format!("[{idx}]:"),
        format!("  time      : {}", tlog::summary_time(f.time)),
        format!("  host      : {host}"),
        format!(
            "  rank      : {} (local_rank: {})",
            f.global_rank, f.local_rank
        ),
        format!("  exitcode  : {} (pid: {})", f.exitcode, f.pid),
        format!(
            "  error_file: {}",
            f.error_file.as_deref().unwrap_or("<N/A>")
        ),
        format!("  traceback : {}", f.traceback),
    ];
    if f.terminated_by_agent {
        l.push(
            "  note      : terminated by rrun while shutting the group down (not a cause)".into(),
        );
    }
    if is_root {
        match &f.stderr_file {
            Some(p) => {
                let tail = logs::tail(p, tail_lines);
                if tail.is_empty() {
                    l.push(format!("  stderr    : (empty) {}", p.display()));
                } else {
                    l.push(format!("  stderr    : last {} lines of {}", tail.len(), p.display()));
                    l.extend(tail.into_iter().map(|t| format!("    | {t}")));
                }
            }
            None => l.push("  stderr    : not captured; rerun with --tee 2 (or --redirects 2) to see its last lines here".into()),
        }
    }
    l
}

/// Renders the report; `title` is e.g. `worker.py FAILED`. Entries keep torch's
/// `[idx]` (position in local-rank order); other failures are listed as observed.
pub fn render(
    title: &str,
    failures: &[Failure],
    root: usize,
    host: &str,
    tail_lines: usize,
) -> String {
    let root_lines = entry(root, &failures[root], host, tail_lines, true);
    let others: Vec<Vec<String>> = observed_order(failures)
        .into_iter()
        .filter(|&i| i != root)
        .map(|i| entry(i, &failures[i], host, tail_lines, false))
        .collect();
    let longest = root_lines
        .iter()
        .chain(others.iter().flatten())
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(0);
    let w = longest.max(title.len()).min(60);
    let (eq, dash) = ("=".repeat(w), "-".repeat(w));
    let mut out = vec![
        String::new(),
        eq.clone(),
        title.to_string(),
        dash.clone(),
        "Root Cause (first observed failure):".into(),
    ];
    out.extend(root_lines);
    out.push(dash);
    out.push("Other Failures:".into());
    if others.is_empty() {
        out.push("  <NO_OTHER_FAILURES>".into());
    }
    for o in others {
        out.extend(o);
    }
    out.push(eq);
    out.join("\n")
}

/// Copies the root cause's error file to the parent's TORCHELASTIC_ERROR_FILE,
/// adding `message.errorCode`, as torchrun does.
pub fn propagate_error_file(root: &Failure) {
    let (Some(path), Some(json)) = (&root.error_file, &root.error_json) else {
        return;
    };
    match std::env::var("TORCHELASTIC_ERROR_FILE") {
        Ok(parent) if !parent.is_empty() => {
            let mut j = json.clone();
            if let Some(Value::Object(m)) = j.get_mut("message") {
                m.insert("errorCode".into(), Value::from(root.exitcode));
            }
            if let Err(e) = std::fs::write(&parent, serde_json::to_string(&j).unwrap_or_default()) {
                crate::eline!("rrun: cannot write TORCHELASTIC_ERROR_FILE {parent}: {e}");
            }
        }
        _ => tlog::log(
            'E',
            src::ERROR_FILE,
            &format!("no error file defined for parent, to copy child error file ({path})"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::LazyLock;
    use std::time::Duration;

    static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

    /// A failure of local rank `lr` noticed `ms` milliseconds after a common start,
    /// stamped with unix second `time`.
    fn f(lr: usize, code: i32, time: i64, ms: u64, term: bool) -> Failure {
        Failure {
            local_rank: lr,
            global_rank: lr,
            pid: 100 + lr as u32,
            exitcode: code,
            time,
            observed: *BASE + Duration::from_millis(ms),
            error_file: None,
            error_json: None,
            traceback: TRACEBACK_HINT.into(),
            terminated_by_agent: term,
            stderr_file: None,
        }
    }

    fn sections(text: &str) -> (&str, &str) {
        let root_at = text.find("Root Cause (first observed failure):").unwrap();
        let other_at = text.find("Other Failures:").unwrap();
        assert!(root_at < other_at);
        (&text[root_at..other_at], &text[other_at..])
    }

    #[test]
    fn root_cause_is_never_a_rank_rrun_killed() {
        // The killed rank was noticed first, in the same second.
        let fs = vec![f(0, -15, 10, 0, true), f(1, 3, 10, 5, false)];
        assert_eq!(root_cause(&fs), 1);
        let text = render("w.py FAILED", &fs, 1, "localhost", 20);
        let (root, others) = sections(&text);
        assert!(root.contains("exitcode  : 3 (pid: 101)"));
        assert!(others.contains("terminated by rrun"));
        assert!(text.lines().nth(1).unwrap().chars().all(|c| c == '='));
        assert_eq!(text.lines().nth(1).unwrap().len(), 60);
    }

    #[test]
    fn root_cause_is_the_first_observed_within_one_second() {
        // Rank 1 died of SIGKILL; rank 0 exited 1 200 ms later, in the same second.
        let fs = vec![f(0, 1, 10, 200, false), f(1, -9, 10, 0, false)];
        let root = root_cause(&fs);
        assert_eq!(root, 1);
        let text = render("w.py FAILED", &fs, root, "h", 20);
        let (root, others) = sections(&text);
        assert!(root.contains("rank      : 1 (local_rank: 1)"), "{text}");
        assert!(root.contains("exitcode  : -9 (pid: 101)"), "{text}");
        assert!(others.contains("[0]:") && others.contains("exitcode  : 1 (pid: 100)"));
    }

    #[test]
    fn other_failures_follow_in_observed_order() {
        let fs = vec![
            f(0, 1, 10, 300, false),
            f(1, 2, 10, 0, false),
            f(2, 3, 10, 100, false),
        ];
        assert_eq!(root_cause(&fs), 1);
        let text = render("w.py FAILED", &fs, 1, "h", 20);
        let (_, others) = sections(&text);
        assert!(
            others.find("[2]:").unwrap() < others.find("[0]:").unwrap(),
            "{text}"
        );
        // Only agent-terminated ranks: the first observed of them.
        let all_term = vec![f(0, -15, 10, 50, true), f(1, -15, 10, 10, true)];
        assert_eq!(root_cause(&all_term), 1);
    }

    #[test]
    fn single_failure_says_no_other_failures() {
        let fs = vec![f(0, 3, 1, 0, false)];
        let text = render("w.py FAILED", &fs, 0, "h", 20);
        assert!(text.contains("  <NO_OTHER_FAILURES>"));
        assert!(text.contains("not captured; rerun with --tee 2"));
    }
}
