//! isoflow: streaming anomaly detection with isolation forests and per-key
//! z-scores, on the GPU (wgpu) or, with identical numbers, on the CPU.
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
//! - [`gpu`]: the wgpu context, kernels and buffers — the only module that
//!   knows about the GPU.
//! - [`engine`]: which of the two scores and keeps z-state, chosen above
//!   both (no module imports one that imports it back: `tests/layout.rs`).
//! - [`detector`]: the one scoring sequence (features, forest, smoothing,
//!   threshold, rules); [`learn`] keeps a forest learning from the stream,
//!   growing trees with [`grow`]; [`preset`] picks features and settings
//!   for a kind of stream.
//! - [`decision`], [`scores_csv`]: alert rule and the `score,alert` CSV.
//! - [`commands`]: the work behind each CLI command; [`bench`](mod@bench) measures
//!   scoring, [`pipeline_bench`] the streaming service against a broker.
//! - [`pipeline`]: the streaming service — Kafka batches in, alerts/DLQ out,
//!   offsets committed only after the broker acknowledged the output
//!   ([`kafka`], [`alerts`], [`dlq`], [`metrics`], [`config`]); it scores
//!   through the [`detector`], as `isoflow score` and the gRPC API do.
//! - [`api`]: the gRPC API (tonic; handlers stay thin) over the [`registry`]:
//!   versioned models whose source of truth is a compacted Kafka topic
//!   replayed by every replica; [`pb`] holds all generated code.
//! - [`synthetic`]: labelled synthetic scenarios; [`demo`]: everything in one process.

pub mod alerts;
pub mod api;
pub mod bench;
pub mod commands;
pub mod config;
pub mod decision;
pub mod demo;
pub mod detector;
pub mod dlq;
pub mod engine;
pub mod features;
pub mod forest;
pub mod gpu;
pub mod grow;
pub mod input;
pub mod kafka;
pub mod learn;
pub mod metrics;
pub mod model;
pub mod scores_csv;
pub mod synthetic;

/// Generated protobuf types and gRPC stubs of `proto/isoflow/v1/`: the
/// model file format and the API, in one module.
pub mod pb {
    #![allow(
        missing_docs,
        clippy::large_enum_variant,
        clippy::doc_lazy_continuation
    )]
    tonic::include_proto!("isoflow.v1");

    /// Encoded descriptors of every message and service, served by gRPC
    /// reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("isoflow_descriptor");
}

pub mod pipeline;
pub mod pipeline_bench;
pub mod preset;
pub mod registry;
pub mod score;
pub mod service;
