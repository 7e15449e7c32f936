//! Compiles the Open Inference Protocol (KServe v2) gRPC definition with `protox`, a pure-Rust
//! protobuf compiler (no `protoc` needed), then generates prost messages and tonic
//! client + server stubs from the resulting `FileDescriptorSet`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/grpc_predict_v2.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let fds = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
