//! The coordinator gRPC protocol. Generated types live here and nowhere else.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("mpegflow.coordinator.v1");
}

mod media;

pub use v1::coordinator_client::CoordinatorClient;
pub use v1::coordinator_server::{Coordinator, CoordinatorServer};
pub use v1::*;

/// gRPC metadata key carrying the worker token.
pub const AUTHORIZATION: &str = "authorization";
