//! The fuzzer's pure logic, shared by the `fuzz` program and its host
//! unit tests: argument parsing, the PRNG, the handle pool and the
//! structure-aware call generator.

#![cfg_attr(not(test), no_std)]

pub mod args;
pub mod gen;
pub mod pool;
pub mod rng;
