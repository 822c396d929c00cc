//! Every line rrun and rrank write to stderr is one `write(2)`: processes sharing a
//! terminal or pipe interleave the pieces of a line written in several calls
//! (`eprintln!` with format arguments writes piece by piece on unbuffered stderr).
//! Lines go through `rrun::eline!`, which formats first and writes once.

use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_stderr_line_is_written_in_pieces() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    sources(&root, &mut files);
    let mut found = vec![];
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("eprintln!(") || code.contains("eprint!(") {
                found.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "use rrun::eline! (one write per line) instead of:\n{}",
        found.join("\n")
    );
}

#[test]
fn eline_writes_a_line_with_arguments_once() {
    struct Calls(usize, Vec<u8>);
    impl std::io::Write for Calls {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += 1;
            self.1.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = Calls(0, vec![]);
    let (rank, e) = (1, "the peer closed the connection");
    rrun::console::write_line(&mut w, &format!("rrank: error (rank {rank}): {e}")).unwrap();
    assert_eq!(w.0, 1);
    assert_eq!(
        w.1,
        b"rrank: error (rank 1): the peer closed the connection\n"
    );
}
