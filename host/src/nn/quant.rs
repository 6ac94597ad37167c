use mlx_rs::{error::Exception, ops, Array, Dtype};
use serde::{Deserialize, Serialize};

/// Affine quantization as MLX and mlx-lm use it: `bits` per weight packed into uint32, one scale and one
/// bias per `group_size` consecutive weights of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quant {
    pub bits: i32,
    pub group_size: i32,
}

impl Quant {
    pub const BITS: [i32; 2] = [4, 8];
    pub const GROUP_SIZES: [i32; 3] = [32, 64, 128];

    /// Rejects what MLX cannot pack; `what` names the setting for the message.
    pub fn checked(bits: i32, group_size: i32, what: &str) -> Result<Quant, String> {
        if !Self::BITS.contains(&bits) {
            return Err(format!("{what}: {bits}-bit quantization is not supported (4 or 8)"));
        }
        if !Self::GROUP_SIZES.contains(&group_size) {
            return Err(format!("{what}: group size {group_size} is not supported (32, 64 or 128)"));
        }
        Ok(Quant { bits, group_size })
    }

    /// Columns of the packed uint32 weight for `in_dims` inputs.
    pub fn packed_dims(&self, in_dims: i32) -> i32 {
        in_dims * self.bits / 32
    }

    /// Whether a matrix with `in_dims` columns can be quantized with this group size (mlx-lm skips others).
    pub fn fits(&self, in_dims: i32) -> bool {
        in_dims % self.group_size == 0
    }

    /// (packed weight, scales, biases) of a float matrix.
    pub fn quantize(&self, weight: &Array) -> Result<(Array, Array, Array), Exception> {
        ops::quantize(weight, self.group_size, self.bits)
    }

    pub fn dequantize(&self, weight: &Array, scales: &Array, biases: &Array, dtype: Dtype) -> Result<Array, Exception> {
        ops::dequantize(weight, scales, biases, self.group_size, self.bits)?.as_dtype(dtype)
    }
}

/// Placeholder parameters of a `rows × cols` matrix: float, or packed weight + scales + biases.
pub(super) type Matrix = (Array, Option<Array>, Option<Array>);

pub(super) fn placeholder_matrix(rows: i32, cols: i32, quant: Option<Quant>, dtype: Dtype) -> Result<Matrix, Exception> {
    placeholder_rows(&[rows], cols, quant, dtype)
}

/// [`placeholder_matrix`] for rows indexed by `outer` (e.g. [experts, out]), `cols` wide.
pub(super) fn placeholder_rows(outer: &[i32], cols: i32, quant: Option<Quant>, dtype: Dtype) -> Result<Matrix, Exception> {
    // Lazy zeros: never computed, since a checkpoint replaces them before any evaluation.
    let zeros = |last: i32, dtype: Dtype| {
        let shape: Vec<i32> = outer.iter().copied().chain(std::iter::once(last)).collect();
        Array::zeros::<f32>(&shape).and_then(|a| a.as_dtype(dtype))
    };
    Ok(match quant {
        Some(q) => {
            let groups = cols / q.group_size;
            (zeros(q.packed_dims(cols), Dtype::Uint32)?, Some(zeros(groups, dtype)?), Some(zeros(groups, dtype)?))
        }
        None => (zeros(cols, dtype)?, None, None),
    })
}

/// The float values of a weight that may be quantized, in `dtype`.
pub(super) fn dense(weight: &Array, scales: Option<&Array>, biases: Option<&Array>, quant: Option<Quant>, dtype: Dtype) -> Result<Array, Exception> {
    match (quant, scales, biases) {
        (Some(q), Some(s), Some(b)) => q.dequantize(weight, s, b, dtype),
        _ => weight.as_dtype(dtype),
    }
}

/// Makes a quantized weight float (`dtype`) in place; a float one is left as is.
pub(super) fn dequantize_in_place(
    quant: &mut Option<Quant>,
    weight: &mut Array,
    scales: &mut Option<Array>,
    biases: &mut Option<Array>,
    dtype: Dtype,
) -> Result<(), Exception> {
    if quant.is_some() {
        *weight = dense(weight, scales.as_ref(), biases.as_ref(), *quant, dtype)?;
        *scales = None;
        *biases = None;
        *quant = None;
    }
    Ok(())
}

/// x Wᵀ for a float or quantized matrix. A single float32 row on the CPU (a decode step) takes mlx-ext's
/// matrix-vector kernels; everything else is MLX's matmul or quantized_matmul.
pub(super) fn matmul_t(x: &Array, weight: &Array, scales: Option<&Array>, biases: Option<&Array>, quant: Option<Quant>) -> Result<Array, Exception> {
    match (quant, scales, biases) {
        (Some(q), Some(s), Some(b)) => mlx_ext::quantized_matmul_t(x, weight, s, b, q.group_size, q.bits),
        _ => mlx_ext::matmul_t(x, weight),
    }
}

/// Quantizes a float matrix in place, keeping scales and biases in the weight's dtype.
pub(super) fn quantize_in_place(
    quant: Quant,
    weight: &mut Array,
    scales: &mut Option<Array>,
    biases: &mut Option<Array>,
) -> Result<(), Exception> {
    let dtype = weight.dtype();
    let (w, s, b) = quant.quantize(weight)?;
    *weight = w;
    *scales = Some(s.as_dtype(dtype)?);
    *biases = Some(b.as_dtype(dtype)?);
    Ok(())
}
