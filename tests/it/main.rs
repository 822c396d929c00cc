//! Integration tests, one binary with a module per area (see docs/ARCHITECTURE.md).
//!
//! Tests marked `#[ignore]` need PyTorch: `scripts/test.sh` runs them with
//! `--include-ignored` and `RRUN_TEST_PYTHON` pointing at the test venv.

mod cli;
mod kernels;
mod knobs;
mod lines;
mod store_robustness;
mod store_torch;
mod util;
