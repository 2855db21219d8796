//! Rendering run records into deterministic text for terminals and snapshots.

pub mod redact;
pub mod text;

pub use text::{render, render_matrix, render_step, summary};
