//! Host bindings generated from the WIT packages guests are built against: the
//! current `kmsgw:adapter@0.3.0` (`wit/`, re-exported here) and the frozen 0.2.0
//! and 0.1.0 (`wit/frozen/`). `versions` converts their calls and answers.

pub use self::v0_3::*;

/// `kmsgw:adapter@0.3.0`.
pub mod v0_3 {
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
}

/// `kmsgw:adapter@0.2.0`, frozen: the six classic algorithms.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/frozen/0.2.0",
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
}

/// `kmsgw:adapter@0.1.0`, frozen: ES256 only.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/frozen/0.1.0",
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
}
