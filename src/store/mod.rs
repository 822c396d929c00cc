//! PyTorch's TCPStore, spoken byte for byte: the wire [`codec`], the server's
//! [`state`] and semantics, the [`server`] rrun hosts for its workers, and the
//! blocking [`client`] used by agents and ranks.
//!
//! This module knows nothing about launching: rendezvous keys and their meaning
//! belong to `launch::rendezvous`.

pub mod client;
pub mod codec;
pub mod server;
pub mod state;

pub use client::{Client, StoreError};
pub use server::StoreServer;
