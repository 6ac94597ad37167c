//! Built-in losses. Definitions: ../shared/design/loss-math.md.

mod sft;

pub use sft::Sft;

/// Σ x·mask over all elements, as a scalar.
pub(crate) fn masked_sum(x: &sdk::mlx_rs::Array, mask: &sdk::mlx_rs::Array) -> Result<sdk::mlx_rs::Array, sdk::mlx_rs::error::Exception> {
    x.multiply(mask)?.sum(None)
}
