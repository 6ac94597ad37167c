//! Built-in losses. Definitions: ../shared/design/loss-math.md.

mod dpo;
mod grpo;
mod kto;
mod orpo;
mod scores;
mod sft;
mod simpo;

#[cfg(test)]
mod tests;

pub use dpo::{Dpo, DpoType};
pub use grpo::{Grpo, GrpoConfig, GrpoType, ImportanceLevel};
pub use kto::Kto;
pub use orpo::Orpo;
pub use sft::Sft;
pub use simpo::Simpo;

/// Σ x·mask over all elements, as a scalar.
pub(crate) fn masked_sum(x: &sdk::mlx_rs::Array, mask: &sdk::mlx_rs::Array) -> Result<sdk::mlx_rs::Array, sdk::mlx_rs::error::Exception> {
    x.multiply(mask)?.sum(None)
}
