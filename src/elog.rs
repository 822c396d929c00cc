//! Log lines on stderr, each written with one `write(2)`: `eprintln!` with format
//! arguments may write a line in pieces, and processes sharing one stderr (ranks
//! under a launcher) then interleave mid-line.

use std::io::Write;

/// Formats `args` plus a newline and writes it to stderr in one call.
pub fn write_line(args: std::fmt::Arguments) {
    let _ = write_line_to(&mut std::io::stderr().lock(), args);
}

/// [`write_line`] on any writer: one `write_all` of the whole line.
pub fn write_line_to(w: &mut impl Write, args: std::fmt::Arguments) -> std::io::Result<()> {
    let mut line = std::fmt::format(args);
    line.push('\n');
    w.write_all(line.as_bytes())
}

/// `eprintln!` whose line reaches stderr in one write.
#[macro_export]
macro_rules! elog {
    ($($arg:tt)*) => {
        $crate::elog::write_line(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the calls that reach it.
    struct Calls(Vec<Vec<u8>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_with_arguments_is_one_write() {
        let mut w = Calls(vec![]);
        let rank = 3;
        write_line_to(
            &mut w,
            format_args!("rrank: error (rank {rank}): {}", "boom"),
        )
        .unwrap();
        assert_eq!(w.0, vec![b"rrank: error (rank 3): boom\n".to_vec()]);
    }
}
