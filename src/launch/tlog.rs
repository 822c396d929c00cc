//! Log lines in torch's format, `W1126 19:30:24.068000 779 torch/distributed/run.py:851] msg`
//! (docs/spec/torchrun.md §2.3), so that wrapper scripts that grep torchrun's
//! stderr keep working. Level I lines appear only with `LOGLEVEL=INFO` or `DEBUG`.

/// Source locations torch 2.11 prints for the default-level lines.
pub mod src {
    pub const RUN: &str = "torch/distributed/run.py:851";
    pub const CLOSING: &str = "torch/distributed/elastic/multiprocessing/api.py:1012";
    pub const FAILED: &str = "torch/distributed/elastic/multiprocessing/api.py:986";
    pub const FORCE_KILL: &str = "torch/distributed/elastic/multiprocessing/api.py:1031";
    pub const DEATH_SIGNAL: &str = "torch/distributed/elastic/agent/server/api.py:739";
    pub const ERROR_FILE: &str =
        "torch/distributed/elastic/multiprocessing/errors/error_handler.py:145";
    pub const AGENT: &str = "torch/distributed/elastic/agent/server/api.py:725";
}

fn info_enabled() -> bool {
    matches!(
        std::env::var("LOGLEVEL")
            .unwrap_or_default()
            .to_uppercase()
            .as_str(),
        "INFO" | "DEBUG"
    )
}

/// The prefix for level `lvl` ('W', 'E', 'I') at `loc`, with the local time.
pub fn prefix(lvl: char, loc: &str) -> String {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both structs are valid for writing; localtime_r is thread-safe.
    unsafe {
        libc::gettimeofday(&mut tv, std::ptr::null_mut());
        libc::localtime_r(&tv.tv_sec, &mut tm);
    }
    format!(
        "{lvl}{:02}{:02} {:02}:{:02}:{:02}.{:06} {} {loc}] ",
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        (tv.tv_usec / 1000) * 1000,
        std::process::id()
    )
}

/// Writes `msg` to stderr, every physical line with the prefix, all in one write.
/// Level 'I' is dropped unless LOGLEVEL asks for it.
pub fn log(lvl: char, loc: &str, msg: &str) {
    if lvl == 'I' && !info_enabled() {
        return;
    }
    let p = prefix(lvl, loc);
    let mut out = String::new();
    for line in msg.split('\n') {
        out.push_str(&p);
        out.push_str(line);
        out.push('\n');
    }
    crate::console::stderr_bytes(out.as_bytes());
}

/// Local time of a unix timestamp as `YYYY-MM-DD_HH:MM:SS` (the summary's `time`).
pub fn summary_time(unix_secs: i64) -> String {
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let t: libc::time_t = unix_secs as libc::time_t;
    // SAFETY: valid pointers; localtime_r is thread-safe.
    unsafe { libc::localtime_r(&t, &mut tm) };
    format!(
        "{:04}-{:02}-{:02}_{:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_shape() {
        let p = super::prefix('W', super::src::RUN);
        // W1126 19:30:24.068000 779 torch/distributed/run.py:851]
        assert_eq!(&p[..1], "W");
        assert_eq!(p.as_bytes()[5], b' ');
        assert!(p.ends_with(" torch/distributed/run.py:851] "));
        let frac = &p[p.find('.').unwrap() + 1..][..6];
        assert!(
            frac.ends_with("000") && frac.bytes().all(|b| b.is_ascii_digit()),
            "{p}"
        );
        assert_eq!(super::summary_time(0).len(), 19);
    }
}
