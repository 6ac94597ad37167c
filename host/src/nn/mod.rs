//! Layers with checkpoint-named parameters. Quantization is a property of a layer (its `scales`/`biases` are
//! present), not a second copy of the model.

mod adapted;
mod checkpoint;
mod embedding;
mod linear;
mod norm;
mod quant;
mod rope;
mod router_load;
mod softcap;
mod switch;

pub use adapted::AdaptedLayer;
pub use checkpoint::checkpointed;
pub use embedding::Embedding;
pub use linear::{Adapter, AdapterSpec, Linear};
pub use norm::RmsNorm;
pub use quant::{Quant, QuantMode};
pub use rope::{Rope, RopeScaling};
pub use router_load::RouterLoad;
pub use softcap::softcap;
pub use switch::{ExpertActivation, Routing, SwitchGlu, SwitchLinear};
