//! parm-serve's integration tests, one module per mechanism (named by role: coded_*, instance_*,
//! server_*, upstream_*), in one test binary: 16 binaries took 4 of the 18 minutes of the release
//! test build on 2 cores, each linking and instantiating the same tokio/tonic/axum code. Run one
//! module with `cargo test -p parm-serve --test integration server_tls::`.

mod support;

mod coded_blocks;
mod coded_checks;
mod coded_codes;
mod coded_inprocess;
mod coded_straggler;
mod fuzz_regressions;
mod instance_batching;
mod instance_local;
mod instance_worker;
mod server_api;
mod server_bad_input;
mod server_connections;
mod server_overload;
mod server_repository;
mod server_security;
mod server_tls;
mod upstream_discovery;
mod upstream_dispatch;
