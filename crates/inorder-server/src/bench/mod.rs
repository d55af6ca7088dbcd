//! `inorder bench …`: benchmarks that print each figure next to a baseline measured in the same
//! run.
//!
//! | module | measures |
//! |---|---|
//! | [`http`] | the server against a bare axum route, in one process |
//! | [`peers`] | `inorder serve` against Redis Streams (`appendfsync always`), each a child process |
//! | [`client`] | (not a figure) the client of `bench http`, capped at one thread |
//! | [`resp`] | the minimal Redis protocol client the peer comparison drives Redis with |

mod client;
pub(crate) mod http;
pub(crate) mod peers;
mod report;
mod resp;
