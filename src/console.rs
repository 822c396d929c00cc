//! Console output of rrun and rrank. Ranks and their launcher usually share one
//! terminal or pipe, so every line either program writes goes out in ONE write(2),
//! under the stream lock, and is never cut by another process's line. `eprintln!` with
//! arguments cannot promise that: on the unbuffered stderr it issues a write per
//! formatted piece. Use [`eline!`](crate::eline) instead of `eprintln!`.
//!
//! A block of lines (the failure summary) is one write too, up to `PIPE_BUF` bytes:
//! the most a pipe takes atomically. A longer block is written as a few writes of
//! whole lines, each at most `PIPE_BUF`, so that no line of it can be split either.
//! Counts in those lines are written with [`thousands`] separators.

use std::io::{self, Write};

/// The largest write a pipe takes atomically on Linux (POSIX `PIPE_BUF`).
pub const PIPE_BUF: usize = 4096;

/// `text` and a newline, as the one buffer to write.
pub fn line_bytes(text: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(text.len() + 1);
    buf.extend_from_slice(text.as_bytes());
    buf.push(b'\n');
    buf
}

/// Writes `bytes` to `w`: in a single `write_all` when it fits in `PIPE_BUF`, else in
/// runs of whole lines of at most `PIPE_BUF` bytes each (a single longer line still
/// goes in one call).
pub fn write_whole_lines<W: Write + ?Sized>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    let mut rest = bytes;
    while rest.len() > PIPE_BUF {
        let cut = match rest[..PIPE_BUF].iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1),
        };
        w.write_all(&rest[..cut])?;
        rest = &rest[cut..];
    }
    if !rest.is_empty() {
        w.write_all(rest)?;
    }
    Ok(())
}

/// Writes `text` and a newline to `w` (one `write_all` call up to `PIPE_BUF` bytes).
pub fn write_line<W: Write + ?Sized>(w: &mut W, text: &str) -> io::Result<()> {
    write_whole_lines(w, &line_bytes(text))
}

/// Writes `bytes` to stderr under the stderr lock, as [`write_whole_lines`] does. A
/// closed stderr is ignored: a lost diagnostic must not stop the launch.
pub fn stderr_bytes(bytes: &[u8]) {
    let _ = write_whole_lines(&mut io::stderr().lock(), bytes);
}

/// Writes `bytes` to stdout under the stdout lock, as [`write_whole_lines`] does, and
/// flushes (stdout is line-buffered: a buffer ending in a newline goes out in one
/// write(2), and the flush covers one that does not).
pub fn stdout_bytes(bytes: &[u8]) {
    let mut out = io::stdout().lock();
    let _ = write_whole_lines(&mut out, bytes);
    let _ = out.flush();
}

/// Writes `text` and a newline to stderr in one write.
pub fn stderr_line(text: &str) {
    stderr_bytes(&line_bytes(text));
}

/// `eprintln!` whose line is written in one write(2): the arguments are formatted
/// into a `String` first, then [`stderr_line`] writes it.
#[macro_export]
macro_rules! eline {
    ($($arg:tt)*) => {
        $crate::console::stderr_line(&::std::format!($($arg)*))
    };
}

/// `n` with thousands separators (475,000), as rrank's lines write token counts.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_separators() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1056), "1,056");
        assert_eq!(super::thousands(24541936), "24,541,936");
    }

    use super::*;

    /// Records every `write` call separately.
    #[derive(Default)]
    struct Calls(Vec<Vec<u8>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_formatted_line_is_one_write() {
        let (pid, rank) = (4242, 3);
        let mut w = Calls::default();
        write_line(
            &mut w,
            &format!("rrun: worker pid {pid} (local rank {rank}) did not exit"),
        )
        .unwrap();
        assert_eq!(w.0.len(), 1, "{:?}", w.0);
        assert_eq!(
            w.0[0],
            b"rrun: worker pid 4242 (local rank 3) did not exit\n"
        );
    }

    #[test]
    fn a_block_of_lines_is_one_write() {
        let block = format!(
            "rrun: ChildFailedError: {}",
            "\n====\nw.py FAILED\n----\n===="
        );
        let mut w = Calls::default();
        write_line(&mut w, &block).unwrap();
        assert_eq!(w.0.len(), 1);
        assert_eq!(w.0[0], line_bytes(&block));
    }

    #[test]
    fn a_long_block_is_cut_only_between_lines() {
        let block: String = (0..200)
            .map(|i| format!("    | stderr line {i} {}\n", "y".repeat(i % 90)))
            .collect();
        assert!(block.len() > 3 * PIPE_BUF);
        let mut w = Calls::default();
        write_whole_lines(&mut w, block.as_bytes()).unwrap();
        assert!(w.0.len() > 1 && w.0.len() < 10, "{}", w.0.len());
        for call in &w.0 {
            assert!(call.len() <= PIPE_BUF && call.ends_with(b"\n"));
        }
        assert_eq!(w.0.concat(), block.as_bytes());
        // A single line longer than PIPE_BUF is still one write.
        let long = "z".repeat(3 * PIPE_BUF);
        let mut w = Calls::default();
        write_line(&mut w, &long).unwrap();
        assert_eq!(w.0.len(), 1);
    }

    #[test]
    fn eprintln_style_formatting_would_take_several_writes() {
        // What the helper avoids: `writeln!` with arguments writes each piece.
        let mut w = Calls::default();
        let (pid, rank) = std::hint::black_box((4242, 3));
        writeln!(w, "rrun: worker pid {pid} (local rank {rank})").unwrap();
        assert!(w.0.len() > 1, "{:?}", w.0);
    }
}
