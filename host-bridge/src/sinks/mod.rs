//! Sinks: where attributed data goes. Sinks only read what the pipeline publishes; they never
//! trigger sampling.

pub mod prometheus;
