//! Reading safetensors checkpoints (single file or sharded with `model.safetensors.index.json`)
//! into host tensors, bf16 / f16 / f32 converted to f32.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::error::{LoadError, Result};

/// A tensor read from a checkpoint: shape and values (row-major, f32).
#[derive(Debug, Clone)]
pub struct HostTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values.
    pub values: Vec<f32>,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The safetensors files of a checkpoint folder.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let json: Value =
            serde_json::from_slice(&read(&index)?).map_err(|e| LoadError::BadJson {
                path: index.clone(),
                message: e.to_string(),
            })?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| LoadError::BadJson {
                path: index.clone(),
                message: "missing object `weight_map`".into(),
            })?;
        let mut shards = BTreeSet::new();
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| LoadError::BadJson {
                path: index.clone(),
                message: format!("weight_map[{tensor:?}] is not a file name"),
            })?;
            if shard.contains('/') || shard.contains("..") {
                return Err(LoadError::BadJson {
                    path: index.clone(),
                    message: format!("shard name {shard:?} leaves the folder"),
                });
            }
            shards.insert(shard.to_string());
        }
        shards
            .into_iter()
            .map(|shard| {
                let path = dir.join(&shard);
                if path.exists() {
                    Ok(path)
                } else {
                    Err(LoadError::MissingShard {
                        shard,
                        index: index.clone(),
                    })
                }
            })
            .collect()
    } else if dir.join("model.safetensors").exists() {
        Ok(vec![dir.join("model.safetensors")])
    } else {
        Err(LoadError::NoWeights(dir.to_path_buf()))
    }
}

/// Every tensor of the given files, by name.
pub fn read_tensors(files: &[PathBuf]) -> Result<BTreeMap<String, HostTensor>> {
    let mut out = BTreeMap::new();
    for path in files {
        let bytes = read(path)?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| LoadError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        for (name, view) in st.tensors() {
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                other => {
                    return Err(LoadError::UnsupportedDtype {
                        tensor: name,
                        dtype: format!("{other:?}"),
                    });
                }
            };
            out.insert(
                name,
                HostTensor {
                    shape: view.shape().to_vec(),
                    values,
                },
            );
        }
    }
    Ok(out)
}
