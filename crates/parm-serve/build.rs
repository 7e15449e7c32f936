//! The Open Inference Protocol's gRPC messages and tonic stubs are generated from
//! `proto/grpc_predict_v2.proto` once and kept in `src/oip/generated/inference.rs`, so that
//! builds do not compile a protobuf compiler (protox, prost-build and tonic-build took about
//! 200 s of CI's build). `scripts/regenerate-proto.sh` regenerates them through this script,
//! with the `regenerate-proto` feature; `.ci/run` checks that the .proto file is the one they
//! were generated from.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "regenerate-proto")]
    {
        const PROTO: &str = "proto/grpc_predict_v2.proto";
        println!("cargo:rerun-if-changed={PROTO}");
        println!("cargo:rerun-if-changed=src/oip/generated/inference.rs");
        // protox: a pure-Rust protobuf compiler (no `protoc` needed).
        let fds = protox::compile([PROTO], ["proto"])?;
        tonic_prost_build::configure().build_client(true).build_server(true).out_dir("src/oip/generated").compile_fds(fds)?;
    }
    Ok(())
}
