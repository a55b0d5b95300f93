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
//! - [`decision`], [`output`]: alert rule and the `score,alert` CSV.
//! - [`commands`]: the work behind each CLI command; [`bench`] measures.
//! - [`pipeline`]: the streaming service — Kafka batches in, alerts/DLQ out,
//!   offsets committed only after the broker acknowledged the output
//!   ([`kafka`], [`alerts`], [`dlq`], [`metrics`], [`config`]).
//! - [`gen`]: labelled synthetic scenarios; [`demo`]: everything in one process.

pub mod alerts;
pub mod bench;
pub mod commands;
pub mod config;
pub mod decision;
pub mod demo;
pub mod dlq;
pub mod features;
pub mod forest;
pub mod gen;
pub mod gpu;
pub mod input;
pub mod kafka;
pub mod metrics;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod score;
pub mod service;
