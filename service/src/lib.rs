//! isoflow: streaming anomaly detection with isolation forests and per-key
//! z-scores, on the GPU (wgpu) or, with identical numbers, on the CPU.
//!
//! The detector itself — model format, features, scorers, backend
//! selection, online learning, presets — is the `isoflow-core` crate, which
//! imports neither Kafka nor gRPC; its modules are re-exported here under
//! their own names ([`model`], [`features`], [`detector`], ...). This crate
//! is the service around it:
//! - [`commands`]: the work behind each CLI command; [`bench`](mod@bench) measures
//!   scoring, [`pipeline_bench`] the streaming service against a broker,
//!   [`state_bench`] the memory of per-key state at scale.
//! - [`pipeline`]: the streaming service — Kafka batches in, alerts/DLQ out,
//!   offsets committed only after the broker acknowledged the output
//!   ([`kafka`], [`alerts`], [`dlq`], [`metrics`], [`config`]); it scores
//!   through the [`detector`], as `isoflow score` and the gRPC API do.
//! - [`api`]: the gRPC API (tonic; handlers stay thin) over the [`registry`]:
//!   versioned models whose source of truth is a compacted Kafka topic
//!   replayed by every replica; [`pb`] holds all generated code.
//! - [`synthetic`]: labelled synthetic scenarios; [`demo`]: everything in one process.

pub use isoflow_core::{
    decision, detector, engine, features, forest, gpu, grow, input, learn, model, preset, random,
    score, scores_csv,
};

pub mod alerts;
pub mod api;
pub mod bench;
pub mod commands;
pub mod config;
pub mod demo;
pub mod dlq;
pub mod kafka;
pub mod metrics;
pub mod synthetic;

/// Generated protobuf types and gRPC stubs of `proto/isoflow/v1/`: the
/// model file format (from [`isoflow_core::pb`]) and the API, in one module.
pub mod pb {
    #![allow(
        missing_docs,
        clippy::large_enum_variant,
        clippy::doc_lazy_continuation
    )]
    pub use isoflow_core::pb::*;
    tonic::include_proto!("isoflow.v1");

    /// Encoded descriptors of every message and service, served by gRPC
    /// reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("isoflow_descriptor");
}

pub mod pipeline;
pub mod pipeline_bench;
pub mod registry;
pub mod service;
pub mod state_bench;
