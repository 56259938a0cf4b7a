//! The black-box tests, one binary: each module starts the built `kmsgw` binary
//! against real backends. One binary links the dependencies once instead of once
//! per file. (`pkcs11.rs` stays apart: it sets `SOFTHSM2_CONF` for its process.)

mod algorithms;
mod aws_kms;
mod batch;
mod cache;
mod certificates;
mod cli;
mod cloud;
mod config;
mod console;
mod containment;
mod contract;
mod crash;
mod csc;
mod custody;
mod deploy;
mod distribution;
mod guests;
mod http;
mod integrity;
mod javascript;
mod openapi;
mod post_quantum;
mod reload;
mod replicas;
mod rotation;
mod scaffold;
mod security;
mod telemetry;
mod usage;
mod vault;
