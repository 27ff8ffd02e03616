//! See the crate docs for where this stage sits in the data flow.
pub mod cpu;
pub mod cuda;
