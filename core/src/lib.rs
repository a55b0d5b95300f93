//! isoflow's detector, with no Kafka and no gRPC: what the streaming service,
//! the gRPC `Score` call, `isoflow score` and the offline trainer share.
//!
//! Map of the crate:
//! - [`model`]: the protobuf model file and its validation; nothing reaches a
//!   scorer unvalidated.
//! - [`forest`]: path-length maths and the packed 16-byte node layout that the
//!   CPU loop and the WGSL kernel both walk.
//! - [`input`]: CSV / JSON lines to columns, reading only what the spec names.
//! - [`features`]: the one feature pipeline shared by trainer and scorer;
//!   keyed z-scores run on a CPU twin or the GPU kernel.
//! - [`score`]: the [`score::Scorer`] trait; `cpu` is the reference twin.
//! - `gpu` (feature `gpu`): the wgpu context, kernels and buffers — the only
//!   module that knows about the GPU.
//! - [`engine`]: which of the two scores and keeps z-state, chosen above
//!   both (no module imports one that imports it back: `tests/layout.rs`).
//! - [`detector`]: the one scoring sequence (features, forest, smoothing,
//!   threshold, rules); [`learn`] keeps a forest learning from the stream,
//!   growing trees with [`grow`]; [`preset`] picks features and settings
//!   for a kind of stream.
//! - [`decision`], [`scores_csv`]: alert rule and the `score,alert` CSV;
//!   [`random`]: seeded models and rows for benches and tests.

pub mod decision;
pub mod detector;
pub mod engine;
pub mod features;
pub mod forest;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod grow;
pub mod input;
pub mod learn;
pub mod model;
pub mod preset;
pub mod random;
pub mod score;
pub mod scores_csv;

/// Generated protobuf types of `proto/isoflow/v1/model.proto`: the model
/// file format. The service crate adds the API's messages beside them.
pub mod pb {
    #![allow(missing_docs, clippy::doc_lazy_continuation)]
    include!(concat!(env!("OUT_DIR"), "/isoflow.v1.rs"));
}
