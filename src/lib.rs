//! Shared fixtures for isoflow's end-to-end tests and benchmarks.
