//! Host bindings generated from `wit/` (world `kmsgw:adapter/provider`).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "kmsgw:adapter/provider",
    imports: { default: async },
    exports: { default: async },
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:random": wasmtime_wasi::p2::bindings::random,
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
    },
});
