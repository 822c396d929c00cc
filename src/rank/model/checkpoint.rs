//! A safetensors checkpoint: single file or sharded with `model.safetensors.index.json`.
//!
//! Opening reads only the headers, so shapes and dtypes are checked against
//! config.json before any weight byte is touched. Loading memory-maps the files and
//! converts just the requested rows or columns of a tensor to f32, so each rank
//! reads only its own slice (bf16, f16 and f32 are supported).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use serde_json::Value;

use super::config::{ModelConfig, ValidationError};
use super::quant::ScaleStrategy;
use super::recipe::{self, Cut, Piece, Stored, Want};

/// One tensor's header entry.
#[derive(Debug, Clone)]
pub struct TensorMeta {
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range within the file (absolute).
    pub start: usize,
    pub end: usize,
    pub file: usize,
}

/// The checkpoint's files and tensor headers.
pub struct Checkpoint {
    files: Vec<PathBuf>,
    tensors: HashMap<String, TensorMeta>,
}

fn invalid(msg: impl Into<String>) -> ValidationError {
    ValidationError(msg.into())
}

fn read_header(path: &Path) -> Result<(usize, Value), ValidationError> {
    let mut f =
        File::open(path).map_err(|e| invalid(format!("cannot open {}: {e}", path.display())))?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| {
        invalid(format!(
            "{} is not a safetensors file (shorter than 8 bytes)",
            path.display()
        ))
    })?;
    let n = u64::from_le_bytes(n) as usize;
    if n > 100 << 20 {
        return Err(invalid(format!(
            "{} is not a safetensors file (header length {n})",
            path.display()
        )));
    }
    let mut h = vec![0u8; n];
    f.read_exact(&mut h)
        .map_err(|_| invalid(format!("{} is truncated inside its header", path.display())))?;
    let v = serde_json::from_slice(&h).map_err(|e| {
        invalid(format!(
            "{} has an invalid safetensors header: {e}",
            path.display()
        ))
    })?;
    Ok((8 + n, v))
}

impl Checkpoint {
    /// Finds the weight files of `dir` and reads their headers.
    pub fn open(dir: &Path) -> Result<Checkpoint, ValidationError> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            let v: Value = serde_json::from_str(
                &std::fs::read_to_string(&index)
                    .map_err(|e| invalid(format!("cannot read {}: {e}", index.display())))?,
            )
            .map_err(|e| invalid(format!("{} is not valid JSON: {e}", index.display())))?;
            let mut names: Vec<String> = v
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| invalid(format!("{} has no weight_map", index.display())))?
                .values()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| {
                    invalid(format!(
                        "cannot read model directory {}: {e}",
                        dir.display()
                    ))
                })?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            v.sort();
            v
        };
        if files.is_empty() {
            return Err(invalid(format!(
                "no *.safetensors weights in {} (rrank loads safetensors checkpoints only)",
                dir.display()
            )));
        }
        let mut tensors = HashMap::new();
        for (fi, path) in files.iter().enumerate() {
            let (base, header) = read_header(path)?;
            let obj = header
                .as_object()
                .ok_or_else(|| invalid(format!("{}: header is not an object", path.display())))?;
            for (name, t) in obj {
                if name == "__metadata__" {
                    continue;
                }
                let dtype = t
                    .get("dtype")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string();
                let shape: Vec<usize> = t
                    .get("shape")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_u64().map(|x| x as usize))
                            .collect()
                    })
                    .unwrap_or_default();
                let off = t
                    .get("data_offsets")
                    .and_then(Value::as_array)
                    .ok_or_else(|| {
                        invalid(format!(
                            "{}: tensor {name} has no data_offsets",
                            path.display()
                        ))
                    })?;
                let (s, e) = (
                    off[0].as_u64().unwrap_or(0) as usize,
                    off.get(1).and_then(Value::as_u64).unwrap_or(0) as usize,
                );
                tensors.insert(
                    name.clone(),
                    TensorMeta {
                        dtype,
                        shape,
                        start: base + s,
                        end: base + e,
                        file: fi,
                    },
                );
            }
        }
        Ok(Checkpoint { files, tensors })
    }

    /// The header entry of a tensor.
    pub fn meta(&self, name: &str) -> Option<&TensorMeta> {
        self.tensors.get(name)
    }

    /// Checks every tensor the config implies: present, the expected shape, a float dtype.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<(), ValidationError> {
        let want = recipe::checkpoint_tensors(cfg, self.tensors.contains_key("lm_head.weight"));
        let fp8 = cfg.fp8.is_some();
        for Want {
            name,
            shape,
            stored,
        } in &want
        {
            let Some(m) = self.tensors.get(name) else {
                let hint = if fp8 && name.ends_with("_scale") {
                    " (quantization_config says FP8 with saved weight scales; the weights and config.json do not match)"
                } else if self.tensors.keys().any(|k| {
                    k.ends_with(".qweight")
                        || k.ends_with(".weight_packed")
                        || k.ends_with(".scales")
                        || k.ends_with(".weight_scale")
                }) {
                    " (the checkpoint looks quantized; config.json has no quantization_config)"
                } else {
                    ""
                };
                return Err(invalid(format!(
                    "tensor {name} is missing from the checkpoint{hint}"
                )));
            };
            let float = matches!(m.dtype.as_str(), "BF16" | "F16" | "F32");
            match stored {
                Stored::Float | Stored::Scale(_) if !float => {
                    let why = if m.dtype == "F8_E4M3" && !fp8 {
                        "is this a quantized checkpoint under a base-model config.json?"
                    } else if m.dtype == "F8_E4M3" {
                        "quantization_config's ignore list leaves this layer unquantized"
                    } else {
                        "is this a quantized checkpoint under a base-model config.json?"
                    };
                    return Err(invalid(format!(
                        "tensor {name}: dtype {} is not a float type (expected BF16, F16 or F32); {why}",
                        m.dtype
                    )));
                }
                Stored::Fp8 if m.dtype != "F8_E4M3" => {
                    return Err(invalid(format!(
                        "tensor {name}: dtype {} but quantization_config says FP8 (F8_E4M3); is this a base checkpoint under a quantized config.json?",
                        m.dtype
                    )));
                }
                _ => {}
            }
            let shape_ok = &m.shape == shape
                || (*stored == Stored::Scale(ScaleStrategy::Tensor) && m.shape.is_empty());
            if !shape_ok {
                let what = match stored {
                    Stored::Scale(s) => format!(
                        " (the FP8 scales of quantization_config's {})",
                        match s {
                            ScaleStrategy::Channel => "per-channel strategy".to_string(),
                            ScaleStrategy::Tensor => "per-tensor strategy".to_string(),
                            ScaleStrategy::Block(r, c) => format!("{r}×{c} blocks"),
                        }
                    ),
                    _ => String::new(),
                };
                return Err(invalid(format!(
                    "tensor {name}: shape {:?} does not match config.json (expected {shape:?}{what}); the weights and config.json belong to different models, or the checkpoint is quantized",
                    m.shape
                )));
            }
            let es = match m.dtype.as_str() {
                "F32" => 4,
                "F8_E4M3" => 1,
                _ => 2,
            };
            let want_bytes = m.shape.iter().product::<usize>() * es;
            if m.end - m.start != want_bytes {
                return Err(invalid(format!(
                    "tensor {name}: {} data bytes for shape {shape:?} {} (expected {want_bytes})",
                    m.end - m.start,
                    m.dtype
                )));
            }
        }
        Ok(())
    }

    /// Memory-maps the files for loading; checks that every tensor lies inside its file.
    pub fn map(&self) -> Result<Weights<'_>, ValidationError> {
        let mut maps = Vec::new();
        for p in &self.files {
            let f =
                File::open(p).map_err(|e| invalid(format!("cannot open {}: {e}", p.display())))?;
            // SAFETY: the file is opened read-only; a concurrent writer is the user's error.
            let m = unsafe { Mmap::map(&f) }
                .map_err(|e| invalid(format!("cannot map {}: {e}", p.display())))?;
            maps.push(m);
        }
        // The first tensor cut off in file order, then offset order (then name), so
        // every rank and every run names the same one.
        let cut = self
            .tensors
            .iter()
            .filter(|(_, t)| t.end > maps[t.file].len())
            .min_by_key(|(name, t)| (t.file, t.start, t.end, name.as_str()));
        if let Some((name, t)) = cut {
            return Err(invalid(format!(
                "{} is truncated: tensor {name} ends at byte {} but the file has {} bytes",
                self.files[t.file].display(),
                t.end,
                maps[t.file].len()
            )));
        }
        Ok(Weights { ckpt: self, maps })
    }
}

/// Memory-mapped weights; slices are converted to f32 on request.
pub struct Weights<'a> {
    ckpt: &'a Checkpoint,
    maps: Vec<Mmap>,
}

pub fn to_f32(dtype: &str, bytes: &[u8], out: &mut Vec<f32>) {
    match dtype {
        "F32" => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap())),
        ),
        "BF16" => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)),
        ),
        "F16" => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        ),
        _ => unreachable!("dtype checked by validate"),
    }
}

impl Weights<'_> {
    fn raw(&self, name: &str) -> (&TensorMeta, &[u8], usize) {
        let m = self
            .ckpt
            .meta(name)
            .unwrap_or_else(|| panic!("tensor {name} checked by validate"));
        let es = match m.dtype.as_str() {
            "F32" => 4,
            "F8_E4M3" => 1,
            _ => 2,
        };
        (m, &self.maps[m.file][m.start..m.end], es)
    }

    /// Whether the checkpoint has this tensor.
    pub fn has(&self, name: &str) -> bool {
        self.ckpt.meta(name).is_some()
    }

    /// Rows `[r0, r1)` of a 2-D tensor (or elements of a 1-D one), row-major f32.
    pub fn rows(&self, name: &str, r0: usize, r1: usize) -> Vec<f32> {
        let (m, b, es) = self.raw(name);
        let row: usize = m.shape[1..].iter().product();
        let mut out = Vec::with_capacity((r1 - r0) * row);
        to_f32(&m.dtype, &b[r0 * row * es..r1 * row * es], &mut out);
        out
    }

    /// Columns `[c0, c1)` of a 2-D tensor, row-major f32 of shape `[rows, c1 - c0]`.
    pub fn cols(&self, name: &str, c0: usize, c1: usize) -> Vec<f32> {
        let (m, b, es) = self.raw(name);
        let (rows, cols) = (m.shape[0], m.shape[1]);
        let mut out = Vec::with_capacity(rows * (c1 - c0));
        for r in 0..rows {
            let base = (r * cols) * es;
            to_f32(&m.dtype, &b[base + c0 * es..base + c1 * es], &mut out);
        }
        out
    }

    /// Rows `[r0, r1)` (elements of a 1-D tensor) as stored: (safetensors dtype, bytes).
    pub fn rows_raw(&self, name: &str, r0: usize, r1: usize) -> (&str, &[u8]) {
        let (m, b, es) = self.raw(name);
        let row: usize = m.shape[1..].iter().product();
        (&m.dtype, &b[r0 * row * es..r1 * row * es])
    }

    /// Columns `[c0, c1)` of a 2-D tensor as stored, row-major `[rows, c1 - c0]`: the
    /// mapped bytes themselves when that is every column, else gathered by all threads
    /// (a tensor-parallel slice of o_proj or down_proj is a strided copy of ~1/tp of it).
    pub fn cols_raw(&self, name: &str, c0: usize, c1: usize) -> (&str, Cow<'_, [u8]>) {
        let (m, b, es) = self.raw(name);
        let (rows, cols) = (m.shape[0], m.shape[1]);
        if c0 == 0 && c1 == cols {
            return (&m.dtype, Cow::Borrowed(&b[..rows * cols * es]));
        }
        let width = (c1 - c0) * es;
        let mut out = vec![0u8; rows * width];
        out.par_chunks_mut(width.max(1))
            .enumerate()
            .for_each(|(r, dst)| {
                let base = r * cols * es;
                dst.copy_from_slice(&b[base + c0 * es..base + c1 * es]);
            });
        (&m.dtype, Cow::Owned(out))
    }

    /// The bytes of one recipe piece as stored: (safetensors dtype, row-major bytes).
    pub fn read(&self, p: &Piece) -> (&str, Cow<'_, [u8]>) {
        match p.cut {
            Cut::All => {
                let (m, b, _) = self.raw(&p.name);
                (&m.dtype, Cow::Borrowed(b))
            }
            Cut::Rows(a, b) => {
                let (d, bytes) = self.rows_raw(&p.name, a, b);
                (d, Cow::Borrowed(bytes))
            }
            Cut::Cols(a, b) => self.cols_raw(&p.name, a, b),
        }
    }

    /// Rows of the tensor (the first dimension; 1 for scalars).
    pub fn num_rows(&self, name: &str) -> usize {
        self.raw(name).0.shape.first().copied().unwrap_or(1)
    }

    /// The whole tensor as f32.
    pub fn all(&self, name: &str) -> Vec<f32> {
        let (m, b, _) = self.raw(name);
        let mut out = Vec::with_capacity(m.shape.iter().product());
        to_f32(&m.dtype, b, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_checkpoint_names_its_first_cut_tensor() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qwen2");
        let dir = tempfile::tempdir().unwrap();
        let mut first = None;
        for e in std::fs::read_dir(&src).unwrap() {
            let p = e.unwrap().path();
            let mut b = std::fs::read(&p).unwrap();
            if p.extension().is_some_and(|x| x == "safetensors") {
                let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
                b.truncate(8 + n + 16);
            }
            std::fs::write(dir.path().join(p.file_name().unwrap()), b).unwrap();
        }
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        for (name, t) in &ckpt.tensors {
            if t.file == 0 && first.as_ref().is_none_or(|(_, s)| t.start < *s) {
                first = Some((name.clone(), t.start));
            }
        }
        let want = format!(
            "{} is truncated: tensor {} ends at byte",
            ckpt.files[0].display(),
            first.unwrap().0
        );
        // HashMap iteration order differs between instances; the line must not.
        for _ in 0..8 {
            let e = Checkpoint::open(dir.path()).unwrap().map().err().unwrap();
            assert!(e.to_string().starts_with(&want), "{e}");
        }
    }

    #[test]
    fn column_slices_as_stored_match_a_plain_gather() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/llama");
        let ckpt = Checkpoint::open(&dir).unwrap();
        let w = ckpt.map().unwrap();
        let name = "model.layers.0.mlp.down_proj.weight";
        let (rows, cols) = {
            let m = ckpt.meta(name).unwrap();
            (m.shape[0], m.shape[1])
        };
        let (dtype, whole) = w.rows_raw(name, 0, rows);
        let es = if dtype == "F32" { 4 } else { 2 };
        for (c0, c1) in [(0, cols), (0, cols / 2), (cols / 2, cols), (3, 5)] {
            let (d, got) = w.cols_raw(name, c0, c1);
            assert_eq!(d, dtype);
            let want: Vec<u8> = (0..rows)
                .flat_map(|r| whole[(r * cols + c0) * es..(r * cols + c1) * es].to_vec())
                .collect();
            assert_eq!(&got[..], &want[..], "columns {c0}..{c1}");
            assert_eq!(matches!(got, Cow::Borrowed(_)), (c0, c1) == (0, cols));
        }
    }
}
