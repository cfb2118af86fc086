//! Object storage for the control plane.
//!
//! * [`presign`]: SigV4 presigned URLs for exactly one method on exactly one key, TTL ≤ 1 hour.
//!   Every PUT is write-once (`If-None-Match: *`), sized and typed. Only the control plane links
//!   this; the worker crate does not (checked in CI).
//! * [`media`]: the safe content types and the attachment disposition signed into URLs.
//! * [`embedded`]: the single-machine default: an S3 endpoint on loopback (`s3s` + `s3s-fs`)
//!   behind a guard that adds what s3s 0.14 lacks, as real S3 stores do.
//! * [`probe`]: checks at start that a store refuses what the platform relies on it refusing.

pub mod embedded;
pub mod media;
pub mod presign;
pub mod probe;

pub use presign::{Presigned, Presigner, PutSpec, S3Config};
