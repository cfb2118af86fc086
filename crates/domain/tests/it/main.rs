//! FFmpeg is the oracle: the installed ffmpeg's own `-v debug` trace and the files it opens
//! (under strace) must agree with the tree the validator built.

mod arity;
mod corpus;
mod filters;
mod fuzz;
mod oracle;
