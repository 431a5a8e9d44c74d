//! Decoding speed of the interop shim's HPACK decoder against
//! `loona-hpack`'s, on the header blocks a grpc-go client sends: a first
//! request (Huffman values, incremental indexing) and the requests after
//! it (fields from the dynamic table). Run in release:
//!
//! ```text
//! cargo run --release -p discovery-tonic --example hpack_compare
//! ```

use std::{hint::black_box, ops::ControlFlow, time::Instant};

use discovery_tonic::interop::hpack::{Decoder, encode_int, encode_str, huffman_encode};

/// A literal with incremental indexing and an indexed name, Huffman-coded
/// when shorter, as Go's encoder writes it.
fn indexed_name(b: &mut Vec<u8>, index: usize, value: &[u8]) {
    encode_int(b, index, 6, 0x40);
    encode_str(b, value, huffman_encode(value).len() < value.len());
}

fn new_name(b: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    b.push(0x40);
    encode_str(b, name, true);
    encode_str(b, value, huffman_encode(value).len() < value.len());
}

/// grpc-go 1.29's first request on a connection.
fn first() -> Vec<u8> {
    let mut b = vec![0x83, 0x86];
    indexed_name(&mut b, 4, b"/helloworld.Greeter/SayHello");
    indexed_name(&mut b, 1, b"demo.service?subset=50");
    indexed_name(&mut b, 31, b"application/grpc");
    indexed_name(&mut b, 58, b"grpc-go/1.29.1");
    new_name(&mut b, b"te", b"trailers");
    new_name(&mut b, b"grpc-timeout", b"999870u");
    b
}

/// A later request: all but the timeout from the dynamic table.
fn later() -> Vec<u8> {
    let mut b = vec![0x83, 0x86];
    for index in [67usize, 66, 65, 64, 63] {
        encode_int(&mut b, index, 7, 0x80);
    }
    encode_int(&mut b, 62, 6, 0x40);
    encode_str(&mut b, b"999512u", true);
    b
}

/// Nanoseconds per call of `f`: the best of 7 rounds, since other work on
/// a shared machine only ever adds time.
fn time(mut f: impl FnMut() -> usize) -> f64 {
    const CALLS: u32 = 2_000;
    for _ in 0..200 {
        black_box(f());
    }
    (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..CALLS {
                black_box(f());
            }
            t.elapsed().as_nanos() as f64 / f64::from(CALLS)
        })
        .fold(f64::INFINITY, f64::min)
}

const LATER: usize = 9;

fn main() {
    let (first, later) = (first(), later());
    let ours = time(|| {
        let mut d = Decoder::new(4096);
        let mut n = 0;
        for block in std::iter::once(&first).chain(std::iter::repeat_n(&later, LATER)) {
            d.decode_partial(block, |f| {
                n += f.value.len();
                ControlFlow::Continue(())
            })
            .unwrap();
        }
        n
    });
    let loona = time(|| {
        let mut d = loona_hpack::Decoder::new();
        let mut n = 0;
        for block in std::iter::once(&first).chain(std::iter::repeat_n(&later, LATER)) {
            d.decode_with_cb(block, |_, v| n += v.len()).unwrap();
        }
        n
    });
    println!(
        "a connection's 10 grpc-go header blocks ({} + {LATER} × {} bytes): \
         interop::hpack {:.2} µs, loona-hpack {:.2} µs ({:.1}×)",
        first.len(),
        later.len(),
        ours / 1000.0,
        loona / 1000.0,
        loona / ours
    );
    let huff: Vec<u8> = {
        let mut b = Vec::new();
        new_name(&mut b, b"x-trace", &[b'a'; 1000]);
        b
    };
    let ours = time(|| Decoder::new(4096).decode(&huff).unwrap().len());
    let loona = time(|| loona_hpack::Decoder::new().decode(&huff).unwrap().len());
    println!(
        "one 1000-byte Huffman value: interop::hpack {:.2} µs, loona-hpack {:.2} µs ({:.1}×)",
        ours / 1000.0,
        loona / 1000.0,
        loona / ours
    );
}
