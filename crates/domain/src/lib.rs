//! Pure domain logic for MpegFlow. No I/O, no async runtime, no database, no network.
//!
//! * [`token`]: API keys and worker tokens (random 256-bit secrets, stored as SHA-256 hashes).
//! * [`command`]: FFmpeg command templates: parsing, validation, rendering, re-checking.
//! * [`job`]: the job state machine.
//! * [`backoff`]: retry delays.
//! * [`names`]: aliases, file names and object keys.
//! * [`media`]: what a media file is, as ffprobe reads it (untrusted output, checked).
//! * [`fingerprint`]: which FFmpeg a worker runs, and the command grammar it implements.
//! * [`webhook`]: signed webhooks: event types, signatures, retry schedule, circuit breaker,
//!   endpoint URL rules against SSRF, sealing of signing secrets at rest.

pub mod backoff;
pub mod command;
pub mod fingerprint;
pub mod job;
pub mod lease;
pub mod media;
pub mod names;
pub mod token;
pub mod webhook;
