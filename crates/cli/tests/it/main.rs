//! Integration tests: real PostgreSQL, the real embedded S3 endpoint over HTTP, real gRPC, real
//! worker processes and real ffmpeg/ffprobe.

mod harness;

mod api_contract;
mod assets;
mod audit;
mod bad_input;
mod broker_attacks;
mod cancel;
mod chaos;
mod cli;
mod commands;
mod control_only;
mod coordinator_auth;
mod e2e;
mod fault_attacks;
mod faults;
mod fencing;
mod fleet;
mod hotpath_attacks;
mod identity;
mod input_corpus;
mod isolation;
mod jail;
mod log_attacks;
mod media_inputs;
mod outage;
mod output_media;
mod presign;
mod replicas;
mod results;
mod running_limits;
mod signals;
mod store_attacks;
mod store_restart;
mod tokens;
mod up;
mod webhook_api;
mod webhooks;
