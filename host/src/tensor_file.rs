//! Every safetensors file `host` writes (adapters, checkpoints, fused, quantized and converted models,
//! fixtures) goes through here, so that identical tensors give identical bytes. MLX's own writer lays the
//! tensors out in the iteration order of a hash map filled in our (hash-map) order, so two identical runs
//! wrote different files; the `safetensors` crate orders them canonically (by dtype, then name, as
//! Hugging Face's writer does) whatever order they come in.

use std::{collections::HashMap, path::Path};

use mlx_rs::Array;
use safetensors::tensor::TensorView;

#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct TensorFileError {
    pub path: std::path::PathBuf,
    pub message: String,
}

/// Writes `tensors` to `path` with `{"format": format}` as the file's metadata when given (one entry:
/// the crate stores metadata in a hash map, so more than one would come out in varying order).
pub fn write<'a>(path: &Path, tensors: impl IntoIterator<Item = (&'a str, &'a Array)>, format: Option<&str>) -> Result<(), TensorFileError> {
    let err = |message: String| TensorFileError { path: path.to_owned(), message };
    // Row-major copies of views (a transposed or sliced array's buffer is not in logical order).
    let owned: Vec<(&str, Array)> = tensors
        .into_iter()
        .map(|(name, a)| a.contiguous().map(|c| (name, c)).map_err(|e| err(format!("tensor `{name}`: {e}"))))
        .collect::<Result<_, _>>()?;
    mlx_rs::transforms::eval(owned.iter().map(|(_, a)| a)).map_err(|e| err(e.to_string()))?;
    let views: Vec<(&str, TensorView<'_>)> = owned
        .iter()
        .map(|(name, a)| TensorView::try_from(a).map(|v| (*name, v)).map_err(|e| err(format!("tensor `{name}` ({:?}): {e}", a.dtype()))))
        .collect::<Result<_, _>>()?;
    let metadata = format.map(|f| HashMap::from([("format".to_owned(), f.to_owned())]));
    safetensors::serialize_to_file(views, metadata, path).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_tensors_in_any_order_give_the_same_bytes_and_load_back() {
        let dir = std::env::temp_dir().join(format!("host-tensor-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
        let b = Array::from_slice(&[7u32, 8], &[2]);
        let c = Array::from_slice(&[0.5f32, -1.0], &[1, 2]);
        let at = a.t();
        let names: Vec<(&str, &Array)> = vec![("b", &b), ("a", &a), ("c", &c), ("transposed", &at)];
        let (one, two) = (dir.join("one.safetensors"), dir.join("two.safetensors"));
        write(&one, names.iter().copied(), Some("mlx")).unwrap();
        write(&two, names.iter().rev().copied(), Some("mlx")).unwrap();
        assert_eq!(std::fs::read(&one).unwrap(), std::fs::read(&two).unwrap());
        let (back, metadata) = Array::load_safetensors_with_metadata(&one).unwrap();
        assert_eq!(metadata.get("format").map(String::as_str), Some("mlx"));
        assert_eq!(back["a"].as_slice::<f32>(), a.as_slice::<f32>());
        assert_eq!(back["b"].as_slice::<u32>(), &[7, 8]);
        // The transposed view is stored in its logical (row-major) order.
        assert_eq!(back["transposed"].shape(), &[3, 2]);
        assert_eq!(back["transposed"].as_slice::<f32>(), &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
