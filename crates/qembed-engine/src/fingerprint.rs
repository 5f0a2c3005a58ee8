//! A short identity of the model being served, so that two instances (blue and green)
//! can tell whether their vectors live in the same space without comparing weights.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use qembed_model::Quantize;

use crate::{EngineError, Result, Task};

/// Above this many bytes of weights, hash a sample instead of everything: a fine-tune or
/// a different model changes every chunk, and start-up must not spend a minute hashing
/// 16 GB.
const FULL_HASH_LIMIT: u64 = 2 << 30;
const SAMPLE_CHUNK: u64 = 1 << 20;
const SAMPLE_STRIDE: u64 = 64 << 20;

/// `sha256:<first 16 hex digits>` over config.json, tokenizer.json and the weight files
/// (names, sizes and contents; sampled every 64 MiB past 2 GiB in all). A checkpoint
/// served as a reranker gets its own fingerprint (the task is hashed too), so that it
/// is never mistaken for the same checkpoint serving embeddings, and so does one served
/// with quantized weights (`quantize` is hashed too: its vectors are not the
/// unquantized ones); an unquantized embedding fingerprint is what it always was.
pub fn fingerprint(dir: &Path, task: Task, quantize: Quantize) -> Result<String> {
    let mut h = Sha256::new();
    if task != Task::Embed {
        h.update(format!("task={task}").as_bytes());
    }
    if quantize != Quantize::None {
        h.update(format!("quantize={quantize}").as_bytes());
    }
    for name in ["config.json", "tokenizer.json"] {
        let bytes = std::fs::read(dir.join(name)).map_err(|e| io_err(&dir.join(name), e))?;
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    let files = qembed_model::weight_files(dir)?;
    let mut sizes = Vec::with_capacity(files.len());
    for f in &files {
        sizes.push(std::fs::metadata(f).map_err(|e| io_err(f, e))?.len());
    }
    let sampled = sizes.iter().sum::<u64>() > FULL_HASH_LIMIT;
    for (path, size) in files.iter().zip(sizes) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        h.update(name.unwrap_or_default().as_bytes());
        h.update(size.to_le_bytes());
        let mut file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
        if sampled {
            let mut buf = vec![0u8; SAMPLE_CHUNK as usize];
            let mut offset = 0;
            while offset < size {
                use std::io::Seek;
                file.seek(std::io::SeekFrom::Start(offset))
                    .map_err(|e| io_err(path, e))?;
                let n = read_up_to(&mut file, &mut buf).map_err(|e| io_err(path, e))?;
                h.update(&buf[..n]);
                offset += SAMPLE_STRIDE;
            }
        } else {
            std::io::copy(&mut file, &mut h).map_err(|e| io_err(path, e))?;
        }
    }
    let digest = h.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("sha256:{hex}"))
}

fn read_up_to(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn io_err(path: &Path, source: std::io::Error) -> EngineError {
    EngineError::Model(qembed_model::ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}
