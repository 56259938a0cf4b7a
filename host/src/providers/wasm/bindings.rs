//! Host bindings generated from the WIT packages guests are built against: the
//! current `kmsgw:adapter@0.4.0` (`wit/`, re-exported here) and the frozen
//! 0.3.0, 0.2.0 and 0.1.0 (`wit/frozen/`). `versions` converts their calls and
//! answers.

pub use self::v0_4::*;

/// The bindings of the `provider` world of the WIT package at `$path`, with the
/// host's own WASI bindings for the interfaces the world imports.
macro_rules! adapter_bindings {
    ($path:tt) => {
        wasmtime::component::bindgen!({
            path: $path,
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
    };
}

/// `kmsgw:adapter@0.4.0`.
pub mod v0_4 {
    adapter_bindings!("../wit");
}

/// `kmsgw:adapter@0.3.0`, frozen: nine algorithms, no digest signing.
pub mod v0_3 {
    adapter_bindings!("../wit/frozen/0.3.0");
}

/// `kmsgw:adapter@0.2.0`, frozen: the six classic algorithms.
pub mod v0_2 {
    adapter_bindings!("../wit/frozen/0.2.0");
}

/// `kmsgw:adapter@0.1.0`, frozen: ES256 only.
pub mod v0_1 {
    adapter_bindings!("../wit/frozen/0.1.0");
}
