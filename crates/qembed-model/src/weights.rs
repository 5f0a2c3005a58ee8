//! Finding, memory-mapping and checking the safetensors files of a checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Tensor};

use crate::{ModelError, Result};

const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

/// The tensors of one checkpoint, single-file or sharded, looked up by name with or
/// without the `model.` prefix (checkpoints saved from `Qwen3ForCausalLM` carry it,
/// those saved from `Qwen3Model`, like Qwen3-Embedding's, do not).
pub struct Weights {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    /// Tensor name as stored -> index into `files`.
    routing: HashMap<String, usize>,
    device: Device,
    dtype: DType,
}

impl Weights {
    /// Opens `model.safetensors`, or every shard named by `model.safetensors.index.json`.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let paths = weight_files(dir)?;
        let mut files = Vec::with_capacity(paths.len());
        let mut routing = HashMap::new();
        for path in paths {
            // SAFETY: memory-mapping is unsafe only if the file changes underneath us; the
            // tensors are copied out at load time and the map is dropped with `Weights`.
            let st =
                unsafe { MmapedSafetensors::new(&path) }.map_err(|e| ModelError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            for (name, _) in st.tensors() {
                routing.insert(name, files.len());
            }
            files.push((path, st));
        }
        Ok(Self {
            files,
            routing,
            device: device.clone(),
            dtype,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Loads `name` (e.g. `layers.0.self_attn.q_proj.weight`), checks its shape and
    /// converts it to the compute dtype.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get_as(name, shape, self.dtype)
    }

    /// As [`get`](Self::get), converted to `dtype` instead.
    pub fn get_as(&self, name: &str, shape: &[usize], to: DType) -> Result<Tensor> {
        let (view, _) = self.view(name, shape)?;
        let tensor = view.load(&self.device)?.to_dtype(to)?;
        release_mapped(view.data());
        Ok(tensor)
    }

    /// Whether the checkpoint holds `name` (with or without the `model.` prefix).
    pub fn contains(&self, name: &str) -> bool {
        self.stored_name(name).is_some()
    }

    /// Rows `rows` of the 2-D tensor `name` (checked against `shape`) as f32, read
    /// straight from the mapped file: two rows of a 151k-row output projection cost two
    /// rows of memory, not the whole table.
    pub fn rows_f32(&self, name: &str, shape: [usize; 2], rows: &[usize]) -> Result<Vec<Vec<f32>>> {
        let (view, dtype) = self.view(name, &shape)?;
        let width = shape[1];
        let size = match dtype {
            StoredDType::F32 => 4,
            StoredDType::F16 | StoredDType::BF16 => 2,
        };
        let data = view.data();
        rows.iter()
            .map(|&r| {
                let bytes = data
                    .get(r * width * size..(r + 1) * width * size)
                    .ok_or_else(|| {
                        ModelError::Input(format!("row {r} of `{name}` is out of range"))
                    })?;
                Ok(match dtype {
                    StoredDType::F32 => bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                    StoredDType::F16 => bytes
                        .chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect(),
                    StoredDType::BF16 => bytes
                        .chunks_exact(2)
                        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect(),
                })
            })
            .collect()
    }

    /// The name `name` is stored under: `model.{name}` or `name`.
    fn stored_name(&self, name: &str) -> Option<(String, usize)> {
        let prefixed = format!("model.{name}");
        [prefixed, name.to_string()]
            .into_iter()
            .find_map(|n| self.routing.get(&n).map(|&f| (n, f)))
    }

    /// The stored view of `name`, checked for shape and a supported dtype.
    fn view(
        &self,
        name: &str,
        shape: &[usize],
    ) -> Result<(safetensors::tensor::TensorView<'_>, StoredDType)> {
        let (stored, file) = self
            .stored_name(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                files: self.file_list(),
            })?;
        let (path, st) = &self.files[file];
        let view = st.get(&stored)?;
        if view.shape() != shape {
            return Err(ModelError::Shape {
                name: stored,
                file: path.clone(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => StoredDType::F32,
            safetensors::Dtype::F16 => StoredDType::F16,
            safetensors::Dtype::BF16 => StoredDType::BF16,
            other => {
                return Err(ModelError::StorageDType {
                    name: stored,
                    file: path.clone(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        Ok((view, dtype))
    }

    fn file_list(&self) -> String {
        let names: Vec<String> = self
            .files
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        names.join(", ")
    }
}

/// Drops this process's pages of a tensor's bytes in the mapped file once they have been
/// copied out, so that the mapping does not keep a second copy of the checkpoint
/// resident while the model loads (the kernel's page cache may still hold them; this
/// process no longer counts them).
fn release_mapped(bytes: &[u8]) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0);
        if page == 0 {
            return;
        }
        let start = (bytes.as_ptr() as usize).next_multiple_of(page);
        let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
        if end > start {
            // SAFETY: [start, end) is whole pages inside the read-only file mapping that
            // `bytes` borrows. MADV_DONTNEED on file-backed pages only unmaps them from
            // this process; the next read faults the same file bytes back in, so no
            // reference into the mapping sees a change (the file not changing is what
            // mapping it already assumes). A bad range is an error return, not UB.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = bytes;
}

/// The dtypes a checkpoint may store tensors in.
#[derive(Clone, Copy)]
enum StoredDType {
    F32,
    F16,
    BF16,
}

/// The weight files of a checkpoint directory, in a stable order.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX);
    if index.is_file() {
        return shards_from_index(&index);
    }
    let single = dir.join(SINGLE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(ModelError::NoWeights {
        dir: dir.to_path_buf(),
    })
}

fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
    let bad = |message: String| ModelError::Index {
        path: index.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(index).map_err(|source| ModelError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut shards: Vec<&str> = Vec::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("`{tensor}` maps to a non-string")))?;
        if file.contains('/') || file.contains('\\') || file.starts_with("..") {
            return Err(bad(format!("shard name `{file}` is not a plain file name")));
        }
        if !shards.contains(&file) {
            shards.push(file);
        }
    }
    if shards.is_empty() {
        return Err(bad("`weight_map` is empty".into()));
    }
    shards.sort_unstable();
    let dir = index.parent().unwrap_or(Path::new("."));
    let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
    if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
        return Err(bad(format!("shard {} does not exist", missing.display())));
    }
    Ok(paths)
}
