//! Facts about this machine that the launcher and the rank process both need: the
//! GPUs and CPUs it has ([`devices`]) and its names, addresses and ports ([`net`]).

pub mod devices;
pub mod net;
