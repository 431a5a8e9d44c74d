//! Hostile clients against a real tonic server behind the interop shim,
//! and against the same server without it: the shim must answer what h2
//! alone answers (docs/grpc-interop.md lists each case), except that it
//! serves `:authority: demo.service?subset=50`.

mod rawh2;

use rawh2::*;

/// Runs `attack` against a Greeter behind the shim and one without it,
/// and returns both answers (shim first).
async fn both<F, Fut>(attack: F) -> (Outcome, Outcome)
where
    F: Fn(Conn) -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    let shim = attack(Conn::open(greeter(true).await).await).await;
    let plain = attack(Conn::open(greeter(false).await).await).await;
    (shim, plain)
}

/// A well-formed follow-up call on `stream`: the connection still serves.
async fn still_serves(conn: &mut Conn, stream: u32) {
    conn.good_call(stream, b"demo.service").await;
    let o = conn.outcome(stream).await;
    assert_eq!(
        o.summary(),
        ":status 200 grpc-status 0 \"Hello go\"",
        "{o:?}"
    );
}

#[tokio::test]
async fn an_authority_with_a_query_is_served_only_behind_the_shim() {
    let (shim, plain) = both(|mut c| async move {
        c.good_call(1, b"demo.service?subset=50").await;
        c.outcome(1).await
    })
    .await;
    // Trailers-only answers carry grpc-status in the response headers of
    // the final frame; the message arrives in DATA before them.
    assert_eq!(shim.message.as_deref(), Some("Hello go"), "{shim:?}");
    assert_eq!(shim.grpc_status.as_deref(), Some("0"));
    assert_eq!(plain.reset, Some(PROTOCOL_ERROR), "{plain:?}");
}

#[tokio::test]
async fn hpack_amplification_is_closed_with_enhance_your_calm() {
    let (shim, plain) = both(|mut c| async move {
        // A 4 KB dynamic table entry on a request h2 serves.
        let mut fill = request_block(&mut c.encoder, b"demo.service");
        literal(&mut fill, 0x40, b"x-fill", &[b'a'; 4000]);
        c.call(1, &fill).await;
        let first = c.outcome(1).await;
        assert_eq!(first.message.as_deref(), Some("Hello go"), "{first:?}");
        // 64 bytes that decode to 64 copies of it: 258 KB.
        c.send(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0xbe; 64]))
            .await;
        c.outcome(3).await
    })
    .await;
    assert_eq!(
        shim.summary(),
        "GOAWAY 0xb \"header_list_way_too_large\"",
        "{shim:?}"
    );
    assert_eq!(shim.summary(), plain.summary());
}

#[tokio::test]
async fn a_continuation_flood_is_closed_within_64_frames() {
    let (shim, plain) = both(|mut c| async move {
        let block = request_block(&mut c.encoder, b"demo.service");
        let mut out = frame(HEADERS, 0, 1, &block);
        // 63 more frames, then nothing: the server must close on its own.
        for _ in 0..63 {
            out.extend(frame(CONTINUATION, 0, 1, &[]));
        }
        c.send(&out).await;
        c.outcome(1).await
    })
    .await;
    assert_eq!(
        shim.summary(),
        "GOAWAY 0xb \"too_many_continuations\"",
        "{shim:?}"
    );
    assert_eq!(shim.summary(), plain.summary());
}

#[tokio::test]
async fn a_frame_above_max_frame_size_is_a_frame_size_error() {
    let (shim, plain) = both(|mut c| async move {
        let mut block = request_block(&mut c.encoder, b"demo.service");
        literal(&mut block, 0x00, b"x-pad", &[b'a'; 16_384]);
        c.send(&frame(HEADERS, END_HEADERS, 1, &block)).await;
        c.outcome(1).await
    })
    .await;
    assert_eq!(shim.summary(), "GOAWAY 0x6 \"\"", "{shim:?}");
    assert_eq!(shim.summary(), plain.summary());
    assert_eq!(FRAME_SIZE_ERROR, 0x6);
}

#[tokio::test]
async fn a_list_over_16_kib_gets_431_and_the_connection_serves_on() {
    let (shim, plain) = both(|mut c| async move {
        // 20 KB of fields in two frames: over 16 KiB, under 64 KiB.
        let mut block = request_block(&mut c.encoder, b"demo.service?subset=50");
        literal(&mut block, 0x00, b"x-a", &[b'a'; 10_000]);
        literal(&mut block, 0x00, b"x-b", &[b'b'; 10_000]);
        let (a, b) = block.split_at(12_000);
        let mut out = frame(HEADERS, 0, 1, a);
        out.extend(frame(CONTINUATION, END_HEADERS | END_STREAM, 1, b));
        c.send(&out).await;
        let o = c.outcome(1).await;
        // The table entries of the refused block stay usable.
        still_serves(&mut c, 3).await;
        o
    })
    .await;
    assert_eq!(shim.summary(), ":status 431", "{shim:?}");
    assert_eq!(shim.summary(), plain.summary());
}

#[tokio::test]
async fn a_raised_list_limit_is_applied_by_the_shim_too() {
    for shim in [true, false] {
        let mut c = Conn::open(greeter_with(shim, Some(64 * 1024)).await).await;
        let mut block = request_block(&mut c.encoder, b"demo.service");
        literal(&mut block, 0x00, b"x-a", &[b'a'; 10_000]);
        literal(&mut block, 0x00, b"x-b", &[b'b'; 10_000]);
        let (a, b) = block.split_at(12_000);
        let mut out = frame(HEADERS, 0, 1, a);
        out.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        out.extend(frame(DATA, END_STREAM, 1, &hello_request("go")));
        c.send(&out).await;
        let o = c.outcome(1).await;
        assert_eq!(o.message.as_deref(), Some("Hello go"), "shim {shim}: {o:?}");
    }
}

#[tokio::test]
async fn an_undecodable_block_is_a_protocol_error() {
    for block in [
        &[0x80][..],                            // index 0
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],  // integer overflow
        &[0x82, 0x00, 0x81, 0x18, 0x01, b'a'],  // Huffman padding of 0s
        &[0x82, 0x3f, 0xe1, 0x1f],              // table size update above 4096
        &[0x82, 0x20],                          // size update after a field
        &[0x82, 0x41, 0x05, b'a'],              // cut short
        &[0x82, 0x00, 0x01, b':', 0x01, b'x'],  // unknown pseudo-header
        &[0x82, 0x00, 0x01, b'X', 0x01, b'x'],  // upper-case name
        &[0x82, 0x00, 0x01, b'x', 0x01, b'\n'], // newline in a value
    ] {
        let (shim, plain) = both(|mut c| async move {
            c.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
                .await;
            c.outcome(1).await
        })
        .await;
        assert_eq!(
            shim.goaway.as_ref().map(|g| g.0),
            Some(PROTOCOL_ERROR),
            "{block:x?}: {shim:?}"
        );
        assert_eq!(shim.summary(), plain.summary(), "{block:x?}");
    }
}

#[tokio::test]
async fn frames_out_of_order_in_a_block_are_a_protocol_error() {
    type Attack = fn(&[u8]) -> Vec<u8>;
    let attacks: [(&str, Attack); 3] = [
        ("DATA inside a block", |b| {
            let mut out = frame(HEADERS, 0, 1, b);
            out.extend(frame(DATA, 0, 1, b"x"));
            out
        }),
        ("CONTINUATION of another stream", |b| {
            let mut out = frame(HEADERS, 0, 1, b);
            out.extend(frame(CONTINUATION, END_HEADERS, 3, &[]));
            out
        }),
        ("CONTINUATION without a block", |_| {
            frame(CONTINUATION, END_HEADERS, 1, &[0x82])
        }),
    ];
    for (name, attack) in attacks {
        let (shim, plain) = both(|mut c| async move {
            let block = request_block(&mut c.encoder, b"demo.service");
            c.send(&attack(&block)).await;
            c.outcome(1).await
        })
        .await;
        assert_eq!(
            shim.goaway.as_ref().map(|g| g.0),
            Some(PROTOCOL_ERROR),
            "{name}: {shim:?}"
        );
        assert_eq!(shim.summary(), plain.summary(), "{name}");
    }
}

#[tokio::test]
async fn headers_h2_refuses_before_decoding_are_a_protocol_error() {
    type Attack = fn(&[u8]) -> Vec<u8>;
    let attacks: [(&str, Attack); 3] = [
        ("stream 0", |b| frame(HEADERS, END_HEADERS, 0, b)),
        ("padding longer than the payload", |b| {
            let mut p = vec![255];
            p.extend_from_slice(b);
            frame(HEADERS, END_HEADERS | 0x8, 1, &p)
        }),
        ("a short priority field", |_| {
            frame(HEADERS, END_HEADERS | 0x20, 1, &[0, 0, 0])
        }),
    ];
    for (name, attack) in attacks {
        let (shim, plain) = both(|mut c| async move {
            let block = request_block(&mut c.encoder, b"demo.service");
            c.send(&attack(&block)).await;
            c.outcome(1).await
        })
        .await;
        assert_eq!(
            shim.goaway.as_ref().map(|g| g.0),
            Some(PROTOCOL_ERROR),
            "{name}: {shim:?}"
        );
        assert_eq!(shim.summary(), plain.summary(), "{name}");
    }
}

#[tokio::test]
async fn malformed_fields_reset_the_stream_only() {
    for (name, value) in [(&b"te"[..], &b"gzip"[..]), (b"connection", b"keep-alive")] {
        let (shim, plain) = both(|mut c| async move {
            let mut block = request_block(&mut c.encoder, b"demo.service?subset=50");
            literal(&mut block, 0x00, name, value);
            c.call(1, &block).await;
            let o = c.outcome(1).await;
            still_serves(&mut c, 3).await;
            o
        })
        .await;
        assert_eq!(
            shim.summary(),
            format!("RST_STREAM {PROTOCOL_ERROR:#x}"),
            "{shim:?}"
        );
        assert_eq!(shim.summary(), plain.summary());
    }
}

#[tokio::test]
async fn a_growing_rest_of_an_over_size_block_is_a_compression_error() {
    let (shim, plain) = both(|mut c| async move {
        // 16.3 KB of list in the HEADERS frame, then a name that never
        // ends, spread over CONTINUATION frames.
        let mut block = vec![0x83, 0x86];
        literal(&mut block, 0x00, b"x-a", &[b'a'; 16_300]);
        block.push(0x00);
        int(&mut block, 1 << 20, 7, 0);
        let mut out = frame(HEADERS, 0, 1, &block);
        out.extend(frame(CONTINUATION, 0, 1, &[b'n'; 16_384]));
        c.send(&out).await;
        c.outcome(1).await
    })
    .await;
    assert_eq!(
        shim.goaway.as_ref().map(|g| g.0),
        Some(COMPRESSION_ERROR),
        "{shim:?}"
    );
    assert_eq!(shim.summary(), plain.summary());
}

#[tokio::test]
async fn a_stream_that_depends_on_itself_is_reset() {
    let (shim, plain) = both(|mut c| async move {
        let block = request_block(&mut c.encoder, b"demo.service");
        let mut payload = vec![0, 0, 0, 1, 15];
        payload.extend(&block);
        c.send(&frame(
            HEADERS,
            END_HEADERS | END_STREAM | 0x20,
            1,
            &payload,
        ))
        .await;
        let o = c.outcome(1).await;
        // h2 did not decode that block: the next one is encoded as if it
        // had not been sent.
        c.encoder = loona_hpack::Encoder::new();
        still_serves(&mut c, 3).await;
        o
    })
    .await;
    assert_eq!(
        shim.summary(),
        format!("RST_STREAM {PROTOCOL_ERROR:#x}"),
        "{shim:?}"
    );
    assert_eq!(shim.summary(), plain.summary());
}
