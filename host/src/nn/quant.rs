use mlx_rs::{error::Exception, Array, Dtype};
use serde::{Deserialize, Serialize};

/// How a matrix is packed, as MLX 0.32 names its quantization modes: `affine` (a float scale and bias per
/// group), or a microscaling float format with one 8-bit power-of-two (`mxfp4`, `mxfp8`: E8M0) or E4M3
/// (`nvfp4`) scale per group and no bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantMode {
    #[default]
    Affine,
    Mxfp4,
    Nvfp4,
    Mxfp8,
}

impl QuantMode {
    pub const ALL: [QuantMode; 4] = [QuantMode::Affine, QuantMode::Mxfp4, QuantMode::Nvfp4, QuantMode::Mxfp8];

    pub fn name(self) -> &'static str {
        match self {
            QuantMode::Affine => "affine",
            QuantMode::Mxfp4 => "mxfp4",
            QuantMode::Nvfp4 => "nvfp4",
            QuantMode::Mxfp8 => "mxfp8",
        }
    }

    /// `what` names the setting for the message.
    pub fn parse(name: &str, what: &str) -> Result<QuantMode, String> {
        Self::ALL.into_iter().find(|m| m.name() == name).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|m| m.name()).collect();
            format!("{what}: unknown quantization mode `{name}` (one of {})", known.join(", "))
        })
    }

    /// (bits, group size) of a microscaling format, which allows exactly one of each; None for affine.
    pub fn fixed(self) -> Option<(i32, i32)> {
        match self {
            QuantMode::Affine => None,
            QuantMode::Mxfp4 => Some((4, 32)),
            QuantMode::Nvfp4 => Some((4, 16)),
            QuantMode::Mxfp8 => Some((8, 32)),
        }
    }

    /// The (bits, group size) used when a command names only the mode (mlx-lm's defaults).
    pub fn defaults(self) -> (i32, i32) {
        self.fixed().unwrap_or((4, 64))
    }

    /// The mode a saved matrix was packed with, from its shapes and scale dtype (mlx-lm's
    /// `infer_quant_config`): only affine keeps its scales in a float dtype.
    pub fn infer(bits: i32, group_size: i32, scales_dtype: Dtype) -> Option<QuantMode> {
        if scales_dtype != Dtype::Uint8 {
            return Some(QuantMode::Affine);
        }
        Self::ALL.into_iter().find(|m| m.fixed() == Some((bits, group_size)))
    }
}

/// Quantization as MLX and mlx-lm use it: `bits` per weight packed into uint32 and, per `group_size`
/// consecutive weights of a row, a scale (and, in the affine mode, a bias).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quant {
    pub bits: i32,
    pub group_size: i32,
    #[serde(default)]
    pub mode: QuantMode,
}

impl Quant {
    /// Affine bit widths MLX packs.
    pub const BITS: [i32; 6] = [2, 3, 4, 5, 6, 8];
    pub const GROUP_SIZES: [i32; 3] = [32, 64, 128];

    pub fn affine(bits: i32, group_size: i32) -> Quant {
        Quant { bits, group_size, mode: QuantMode::Affine }
    }

    /// Rejects what MLX cannot pack; `what` names the setting for the message.
    pub fn checked(bits: i32, group_size: i32, mode: QuantMode, what: &str) -> Result<Quant, String> {
        if let Some((b, g)) = mode.fixed() {
            if (bits, group_size) != (b, g) {
                return Err(format!(
                    "{what}: {} packs {b} bits in groups of {g}, not {bits} bits in groups of {group_size}",
                    mode.name()
                ));
            }
            return Ok(Quant { bits, group_size, mode });
        }
        if !Self::BITS.contains(&bits) {
            return Err(format!("{what}: {bits}-bit affine quantization is not supported (2, 3, 4, 5, 6 or 8)"));
        }
        if !Self::GROUP_SIZES.contains(&group_size) {
            return Err(format!("{what}: group size {group_size} is not supported (32, 64 or 128)"));
        }
        Ok(Quant { bits, group_size, mode })
    }

    /// [`Quant::checked`] with the mode's own bits and group size where they are not given.
    pub fn with_defaults(mode: QuantMode, bits: Option<i32>, group_size: Option<i32>, what: &str) -> Result<Quant, String> {
        let (b, g) = mode.defaults();
        Self::checked(bits.unwrap_or(b), group_size.unwrap_or(g), mode, what)
    }

    /// Columns of the packed uint32 weight for `in_dims` inputs.
    pub fn packed_dims(&self, in_dims: i32) -> i32 {
        in_dims * self.bits / 32
    }

    /// Whether a matrix with `in_dims` columns can be quantized with this group size (mlx-lm skips others).
    pub fn fits(&self, in_dims: i32) -> bool {
        in_dims % self.group_size == 0
    }

    /// Whether the packed form has biases (affine only).
    pub fn has_biases(&self) -> bool {
        self.mode == QuantMode::Affine
    }

    /// (packed weight, scales, biases) of a float matrix; no biases outside the affine mode.
    pub fn quantize(&self, weight: &Array) -> Result<(Array, Array, Option<Array>), Exception> {
        let p = mlx_ext::quantize(weight, self.group_size, self.bits, self.mode.name())?;
        Ok((p.weight, p.scales, p.biases))
    }

    pub fn dequantize(&self, weight: &Array, scales: &Array, biases: Option<&Array>, dtype: Dtype) -> Result<Array, Exception> {
        mlx_ext::dequantize(weight, scales, biases, self.group_size, self.bits, self.mode.name())?.as_dtype(dtype)
    }

    /// x Wᵀ for x of any float dtype (the result has x's dtype).
    fn matmul_t(&self, x: &Array, weight: &Array, scales: &Array, biases: Option<&Array>) -> Result<Array, Exception> {
        match (self.mode, biases) {
            // mlx-ext's CPU kernels for one float32 row take over inside; MLX's own otherwise.
            (QuantMode::Affine, Some(b)) => mlx_ext::quantized_matmul_t(x, weight, scales, b, self.group_size, self.bits),
            _ => mlx_ext::quantized_matmul(x, weight, scales, biases, true, self.group_size, self.bits, self.mode.name()),
        }
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
            // Microscaling scales are 8-bit codes, not floats.
            let scale_dtype = if q.has_biases() { dtype } else { Dtype::Uint8 };
            let biases = q.has_biases().then(|| zeros(groups, dtype)).transpose()?;
            (zeros(q.packed_dims(cols), Dtype::Uint32)?, Some(zeros(groups, scale_dtype)?), biases)
        }
        None => (zeros(cols, dtype)?, None, None),
    })
}

/// The float values of a weight that may be quantized, in `dtype`.
pub(super) fn dense(weight: &Array, scales: Option<&Array>, biases: Option<&Array>, quant: Option<Quant>, dtype: Dtype) -> Result<Array, Exception> {
    match (quant, scales) {
        (Some(q), Some(s)) => q.dequantize(weight, s, biases, dtype),
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
    match (quant, scales) {
        (Some(q), Some(s)) => q.matmul_t(x, weight, s, biases),
        _ => mlx_ext::matmul_t(x, weight),
    }
}

/// Quantizes a float matrix in place, keeping affine scales and biases in the weight's dtype (microscaling
/// scales stay 8-bit codes).
pub(super) fn quantize_in_place(
    quant: Quant,
    weight: &mut Array,
    scales: &mut Option<Array>,
    biases: &mut Option<Array>,
) -> Result<(), Exception> {
    let dtype = weight.dtype();
    let (w, s, b) = quant.quantize(weight)?;
    *weight = w;
    *scales = Some(if quant.has_biases() { s.as_dtype(dtype)? } else { s });
    *biases = b.map(|b| b.as_dtype(dtype)).transpose()?;
    Ok(())
}
