//! The fuzzer's client streams (valid requests, over-size and malformed
//! ones, hostile frames, random mutations) sent to a real tonic server
//! with and without the interop shim: h2 must answer the same. Authorities
//! are ones h2 accepts as sent, the one thing the shim changes on purpose.

#[path = "../examples/interop_fuzz/fuzz.rs"]
mod fuzz;
mod rawh2;

use std::{collections::BTreeSet, net::SocketAddr};

use rawh2::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const PING: u8 = 0x6;
const MARK: [u8; 8] = *b"shimdiff";

/// What h2 answers that does not depend on the service's timing: its
/// GOAWAY, the streams it refuses itself (431, resets other than the
/// service finishing early), and whether the connection is still up once
/// everything sent has been read.
#[derive(Debug, Default, PartialEq, Eq)]
struct Answer {
    goaway: Option<(u32, String)>,
    refused: BTreeSet<(u32, String)>,
    alive: bool,
}

async fn answer(addr: SocketAddr, input: &[u8]) -> Answer {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let whole = whole_frames(input);
    let mut bytes = input.to_vec();
    if whole {
        // h2 answers a PING once it has read everything before it.
        bytes.extend(frame(PING, 0, 0, &MARK));
    }
    let (mut rd, mut wr) = tcp.split();
    let mut a = Answer::default();
    let mut reader = Reader::default();
    let first = async {
        // The server may close first.
        let _ = wr.write_all(&bytes).await;
        if !whole {
            // A PING would be read as part of a frame cut short: the end
            // of the stream is what h2 gets instead.
            let _ = wr.shutdown().await;
        }
    };
    let (_, acked) = tokio::time::timeout(BOUND, async {
        tokio::join!(first, reader.until_ack(&mut rd, &mut a))
    })
    .await
    .expect("an answer within the bound");
    if acked {
        // A second round trip: what h2 queued while handling the stream
        // (its 431s and resets) is written before it reads this PING.
        let _ = wr.write_all(&frame(PING, 0, 0, &MARK)).await;
        a.alive = tokio::time::timeout(BOUND, reader.until_ack(&mut rd, &mut a))
            .await
            .expect("an answer within the bound");
    }
    if !a.alive {
        // What h2 flushes before it closes (with a GOAWAY, or at the end
        // of the stream) depends on how its reads happened to be cut.
        a.refused.clear();
    }
    a
}

#[derive(Default)]
struct Reader {
    decoder: loona_hpack::Decoder<'static>,
    buf: Vec<u8>,
}

impl Reader {
    /// Reads until the PING ACK (`true`), a GOAWAY or the end.
    async fn until_ack(&mut self, rd: &mut (impl AsyncReadExt + Unpin), a: &mut Answer) -> bool {
        loop {
            while self.buf.len() >= 9 {
                let b = &self.buf;
                let len = usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
                if b.len() < 9 + len {
                    break;
                }
                let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                let (kind, flags) = (f[3], f[4]);
                let id = u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff;
                let payload = &f[9..];
                match kind {
                    GOAWAY => {
                        let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                        let debug = String::from_utf8_lossy(&payload[8..]).into_owned();
                        a.goaway = Some((code, debug));
                        return false;
                    }
                    PING if flags & ACK != 0 && payload == MARK => return true,
                    HEADERS => {
                        let mut status = None;
                        self.decoder
                            .decode_with_cb(payload, |n, v| {
                                if &n[..] == b":status" {
                                    status = Some(String::from_utf8_lossy(&v).into_owned());
                                }
                            })
                            .expect("the server's HPACK");
                        if let Some(s) = status.filter(|s| s != "200") {
                            a.refused.insert((id, format!(":status {s}")));
                        }
                    }
                    RST_STREAM => {
                        let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
                        // NO_ERROR, REFUSED_STREAM and CANCEL follow an
                        // answer (the service's or a 431) that came first.
                        if ![0x0, 0x7, 0x8].contains(&code) {
                            a.refused.insert((id, format!("RST_STREAM {code:#x}")));
                        }
                    }
                    _ => {}
                }
            }
            self.buf.reserve(16_384);
            match rd.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    }
}

/// The stream is the preface and frames, the last one complete.
fn whole_frames(input: &[u8]) -> bool {
    let Some(mut b) = input.strip_prefix(PREFACE) else {
        return false;
    };
    while b.len() >= 9 {
        let len = usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
        if b.len() < 9 + len {
            return false;
        }
        b = &b[9 + len..];
    }
    b.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_answers_the_fuzzers_streams_the_same_with_and_without_the_shim() {
    const SEED: u64 = 2727;
    const CASES: u64 = 1000;
    let shim = greeter(true).await;
    let plain = greeter(false).await;
    let mut differ = Vec::new();
    let mut refused = 0;
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..CASES {
        let input = fuzz::client_stream(fuzz::case_seed(SEED, i));
        let with = answer(shim, &input).await;
        let without = answer(plain, &input).await;
        refused += usize::from(with.goaway.is_some() || !with.refused.is_empty());
        let kind = match &with.goaway {
            Some((code, debug)) => format!("GOAWAY {code:#x} {debug}"),
            None if with.alive => "served on".to_string(),
            None => "closed".to_string(),
        };
        *kinds.entry(kind).or_default() += 1;
        for (_, r) in &with.refused {
            *kinds.entry(r.clone()).or_default() += 1;
        }
        if with != without {
            differ.push(format!(
                "case {i}: with the shim {with:?}, without {without:?}"
            ));
        }
    }
    eprintln!("{kinds:#?}");
    assert!(
        differ.is_empty(),
        "{} of {CASES} differ:\n{}",
        differ.len(),
        differ.join("\n")
    );
    // The streams reach what the comparison is about.
    assert!(refused > CASES as usize / 4, "{refused}");
}
