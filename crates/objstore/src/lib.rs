//! Object storage for the control plane.
//!
//! * [`presign`]: SigV4 presigned URLs for exactly one method on exactly one key, TTL ≤ 1 hour.
//!   Only the control plane links this; the worker crate does not (checked in CI).
//! * [`embedded`]: the single-machine default: an S3 endpoint on loopback (`s3s` + `s3s-fs`)
//!   behind a guard that adds what s3s 0.14 lacks, as real S3 stores do.

pub mod embedded;
pub mod presign;

pub use presign::{Presigned, Presigner, S3Config};
