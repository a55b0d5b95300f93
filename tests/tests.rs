//! The end-to-end tests, in one binary: each module is one area, run
//! against the built `isoflow` and `isoflow-train` binaries, real brokers
//! (tansu; Apache Kafka with `ISOFLOW_BROKER=kafka`) and the real Vulkan
//! path. One binary links the service once, not once per area.
//!
//! `cargo test --test integration -- grpc::` runs one area.

mod accuracy;
mod cli;
mod detection;
mod gpu_cli;
mod gpu_parity;
mod grpc;
mod layout;
mod state;
mod streaming;
mod util;
mod zscore_nab;
