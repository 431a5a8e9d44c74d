//! The interop shim's fuzzer: random client byte streams, made of valid
//! requests, pass-through frames, hostile frames and random mutations, fed
//! to [`Rewriter`] in random reads the way `LenientAuthority` feeds it.
//!
//! Invariants, for every case:
//! * the rewriter never panics;
//! * it never holds more than [`Limits::held_bound`] bytes (its output not
//!   yet read included);
//! * up to the first hostile frame, h2 sees what it would see without the
//!   shim: the same pass-through frames byte for byte, and for each header
//!   block the same header list, `:authority` trimmed, or the answer h2
//!   gives to that list (431 for a list over the limit, a stream reset for
//!   a malformed one).
//!
//! The oracle is `loona-hpack`, another HPACK implementation: it decodes
//! the client's blocks (what h2 would see without the shim) and the
//! rewritten ones (what h2 sees behind it), and checks the generator.

#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;

use bytes::BytesMut;
use discovery_tonic::interop::{Limits, Rewriter, hpack::huffman_encode};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The server limits a case runs with (header list, frame size): tonic's
/// defaults most often, raised ones otherwise (h2's CONTINUATION limit is
/// 5 for the first two, 10 for the last).
const SERVERS: [(usize, usize); 3] = [
    (16 * 1024, 16_384),
    (64 * 1024, 32_768),
    (128 * 1024, 16_384),
];

/// The limits of one case.
#[derive(Clone, Copy)]
struct Server {
    list: usize,
    frame: usize,
    /// Authorities the shim trims are generated too.
    trim: bool,
}

impl Server {
    fn pick(rng: &mut Rng) -> Self {
        let (list, frame) = if rng.chance(4) {
            SERVERS[1 + rng.below(2)]
        } else {
            SERVERS[0]
        };
        Server {
            list,
            frame,
            trim: true,
        }
    }

    fn limits(&self) -> Limits {
        Limits::default()
            .max_header_list_size(self.list as u32)
            .max_frame_size(self.frame as u32)
    }
}

/// SplitMix64: small, seedable, and the same on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    /// Up to `max - 1` random bytes.
    pub fn some_bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        self.bytes(n)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The seed of case `index` of a run seeded with `seed`.
pub fn case_seed(seed: u64, index: u64) -> u64 {
    Rng::new(seed ^ index.wrapping_mul(0xd134_2543_de82_ef95)).next()
}

/// What one case covered.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub cases: u64,
    /// Header blocks whose list h2 receives unchanged but the authority.
    pub blocks_equal: u64,
    /// Blocks over the list limit or malformed, answered as h2 would.
    pub blocks_refused: u64,
    /// Authorities trimmed.
    pub trimmed: u64,
    pub hostile: u64,
    pub mutated: u64,
    pub max_held: usize,
    /// The most held, as a share of the case's bound.
    pub max_share: f64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.cases += o.cases;
        self.blocks_equal += o.blocks_equal;
        self.blocks_refused += o.blocks_refused;
        self.trimmed += o.trimmed;
        self.hostile += o.hostile;
        self.mutated += o.mutated;
        self.max_held = self.max_held.max(o.max_held);
        self.max_share = self.max_share.max(o.max_share);
    }
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// What h2 should get for one item of the client's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// A frame passed through byte for byte.
    Frame(Vec<u8>),
    /// A header block: stream, END_STREAM, priority, and its list.
    Block(u32, bool, Option<[u8; 5]>, Fields),
    /// A block h2 answers 431: a list of at least the limit.
    OverSize(u32),
    /// A block h2 resets the stream for: a connection-specific field.
    Malformed(u32),
}

/// The client's HPACK encoder state, as the generator models it.
struct Table {
    entries: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max: usize,
}

impl Table {
    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + 32;
        while self.size + size > self.max {
            match self.entries.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => break,
            }
        }
        if size <= self.max {
            self.entries.push_front((name.to_vec(), value.to_vec()));
            self.size += size;
        }
    }

    fn resize(&mut self, max: usize) {
        self.max = max;
        while self.size > self.max {
            let (n, v) = self
                .entries
                .pop_back()
                .expect("a table over its size has entries");
            self.size -= n.len() + v.len() + 32;
        }
    }

    /// 1-based HPACK index of an exact entry, after the static table.
    fn find(&self, name: &[u8], value: &[u8]) -> Option<usize> {
        if let Some(i) = STATIC.iter().position(|&(n, v)| n == name && v == value) {
            return Some(i + 1);
        }
        self.entries
            .iter()
            .position(|(n, v)| n == name && v == value)
            .map(|i| i + 62)
    }

    fn find_name(&self, name: &[u8]) -> Option<usize> {
        if let Some(i) = STATIC.iter().position(|&(n, _)| n == name) {
            return Some(i + 1);
        }
        self.entries
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| i + 62)
    }
}

/// The static table entries the generator uses by index.
const STATIC: [(&[u8], &[u8]); 31] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
];

fn int(out: &mut Vec<u8>, mut value: usize, prefix: u8, flags: u8) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn string(rng: &mut Rng, out: &mut Vec<u8>, s: &[u8]) {
    // Long Huffman strings are rarer: loona-hpack decodes Huffman a bit at
    // a time through hash maps, and would make most of the run's time.
    if rng.chance(if s.len() > 64 { 16 } else { 2 }) {
        let coded = huffman_encode(s);
        int(out, coded.len(), 7, 0x80);
        out.extend_from_slice(&coded);
    } else {
        int(out, s.len(), 7, 0);
        out.extend_from_slice(s);
    }
}

/// Encodes `fields` the many ways HPACK allows, keeping `table` in step.
fn encode(rng: &mut Rng, table: &mut Table, fields: &Fields) -> Vec<u8> {
    let mut out = Vec::new();
    if rng.chance(8) {
        let max = [0, 100, 1000, 4096][rng.below(4)];
        int(&mut out, max, 5, 0x20);
        table.resize(max);
        if max < 4096 && rng.chance(2) {
            int(&mut out, 4096, 5, 0x20);
            table.resize(4096);
        }
    }
    for (name, value) in fields {
        if let Some(i) = table.find(name, value).filter(|_| rng.chance(2)) {
            int(&mut out, i, 7, 0x80);
            continue;
        }
        let (prefix, flags) = match rng.below(3) {
            0 => (6, 0x40),
            1 => (4, 0x00),
            _ => (4, 0x10),
        };
        match table.find_name(name).filter(|_| rng.chance(2)) {
            Some(i) => int(&mut out, i, prefix, flags),
            None => {
                int(&mut out, 0, prefix, flags);
                string(rng, &mut out, name);
            }
        }
        string(rng, &mut out, value);
        if flags == 0x40 {
            table.insert(name, value);
        }
    }
    out
}

/// The first three reach h2 as sent (the third is refused by h2 with or
/// without the shim); the shim trims the others.
const AUTHORITIES: [&[u8]; 6] = [
    b"demo.service",
    b"svc.local:9000",
    b"?subset=50",
    b"demo.service?subset=50",
    b"host:80/x",
    b"svc#frag",
];

const NAMES: [&[u8]; 8] = [
    b"user-agent",
    b"grpc-timeout",
    b"authorization",
    b"content-type",
    b"x-trace",
    b"x-b3-spanid",
    b"accept-encoding",
    b"te",
];

fn value(rng: &mut Rng, max: usize) -> Vec<u8> {
    let len = rng.below(max + 1);
    (0..len).map(|_| b' ' + rng.below(95) as u8).collect()
}

/// A request's header list; `big` pushes it past the list limit.
fn request(rng: &mut Rng, server: Server, big: bool, malformed: bool) -> Fields {
    let mut f: Fields = vec![
        (b":method".to_vec(), b"POST".to_vec()),
        (
            b":scheme".to_vec(),
            [&b"http"[..], b"https"][rng.below(2)].to_vec(),
        ),
        (b":path".to_vec(), b"/helloworld.Greeter/SayHello".to_vec()),
        (
            b":authority".to_vec(),
            AUTHORITIES[rng.below(if server.trim { AUTHORITIES.len() } else { 3 })].to_vec(),
        ),
    ];
    for _ in 0..rng.below(8) {
        let name = NAMES[rng.below(NAMES.len())];
        let v = if name == b"te" {
            b"trailers".to_vec()
        } else {
            let max = if rng.chance(20) { 3000 } else { 40 };
            value(rng, max)
        };
        f.push((name.to_vec(), v));
    }
    if big {
        while f.iter().map(|(n, v)| n.len() + v.len() + 32).sum::<usize>() < server.list {
            f.push((b"x-big".to_vec(), value(rng, 6000)));
        }
    }
    if malformed {
        let bad: (&[u8], &[u8]) = [
            (&b"connection"[..], &b"keep-alive"[..]),
            (b"te", b"gzip"),
            (b"upgrade", b"h2c"),
        ][rng.below(3)];
        let at = 4 + rng.below(f.len() - 3);
        f.insert(at, (bad.0.to_vec(), bad.1.to_vec()));
    }
    f
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Writes `block` as HEADERS (maybe padded, maybe with priority) and up to
/// three CONTINUATION frames; returns the priority fields.
fn block_frames(
    rng: &mut Rng,
    server: Server,
    out: &mut Vec<u8>,
    stream: u32,
    end_stream: bool,
    block: &[u8],
    one_frame: bool,
) -> Option<[u8; 5]> {
    let mut flags = if end_stream { END_STREAM } else { 0 };
    let mut prefix = Vec::new();
    let mut pad = 0;
    if rng.chance(4) {
        flags |= PADDED;
        pad = rng.below(20);
        prefix.push(pad as u8);
    }
    let mut priority = None;
    if rng.chance(4) {
        // Depends on stream 0, never on itself.
        let p = [rng.below(2) as u8 * 0x80, 0, 0, 0, rng.next() as u8];
        flags |= PRIORITY;
        prefix.extend_from_slice(&p);
        priority = Some(p);
    }
    // Cut points, each frame within the frame size.
    let room = server.frame - prefix.len() - pad;
    let mut cuts = vec![0];
    let pieces = if one_frame { 1 } else { 1 + rng.below(4) };
    for _ in 1..pieces {
        cuts.push(rng.below(block.len() + 1));
    }
    cuts.push(block.len());
    cuts.sort_unstable();
    let mut first = true;
    let mut i = 0;
    while i + 1 < cuts.len() {
        let (a, mut b) = (cuts[i], cuts[i + 1]);
        let limit = if first { room } else { server.frame };
        if b - a > limit {
            b = a + limit;
            cuts.insert(i + 1, b);
        }
        let last = b == block.len();
        if first {
            let mut payload = prefix.clone();
            payload.extend_from_slice(&block[a..b]);
            payload.resize(payload.len() + pad, 0);
            let f = flags | if last { END_HEADERS } else { 0 };
            frame(out, HEADERS, f, stream, &payload);
            first = false;
        } else {
            let f = if last { END_HEADERS } else { 0 };
            frame(out, CONTINUATION, f, stream, &block[a..b]);
        }
        if last {
            // Later cut points at the end would be stray CONTINUATIONs.
            break;
        }
        i += 1;
    }
    priority
}

/// A frame h2 receives unchanged.
fn passthrough(rng: &mut Rng, stream: u32) -> Vec<u8> {
    let mut out = Vec::new();
    match rng.below(6) {
        0 => {
            let flags = rng.below(2) as u8;
            frame(&mut out, DATA, flags, stream, &rng.some_bytes(300))
        }
        1 => frame(&mut out, 0x6, 0, 0, &rng.bytes(8)),
        2 => frame(&mut out, 0x4, 0, 0, &[0, 4, 0, 1, 0, 0]),
        3 => frame(&mut out, 0x8, 0, stream, &1000u32.to_be_bytes()),
        4 => frame(&mut out, 0x3, 0, stream, &8u32.to_be_bytes()),
        _ => {
            let flags = rng.next() as u8;
            frame(&mut out, 0xfa, flags, stream, &rng.some_bytes(40))
        }
    }
    out
}

/// Frames h2 refuses, or random bytes: the end of what the case checks.
fn hostile(rng: &mut Rng, server: Server, table: &Table, stream: u32) -> Vec<u8> {
    let mut out = Vec::new();
    match rng.below(8) {
        0 => {
            let n = rng.below(200);
            let flags = rng.next() as u8;
            frame(&mut out, HEADERS, flags, stream, &rng.bytes(n));
        }
        1 => {
            frame(&mut out, HEADERS, 0, stream, &[0x82]);
            for _ in 0..rng.below(40) {
                frame(&mut out, CONTINUATION, 0, stream, &rng.some_bytes(4));
            }
        }
        2 => frame(
            &mut out,
            HEADERS,
            END_HEADERS,
            stream,
            &vec![0x82; server.frame + 1],
        ),
        3 => {
            frame(&mut out, HEADERS, 0, stream, &[0x82]);
            frame(&mut out, DATA, 0, stream, b"x");
        }
        4 if !table.entries.is_empty() => {
            let refs = vec![0xbe; 1 + rng.below(2000)];
            frame(&mut out, HEADERS, END_HEADERS, stream, &refs);
        }
        5 => {
            // A literal longer than what follows, at END_HEADERS or not.
            let mut b = vec![0x00, 0x01, b'x'];
            int(&mut b, 100 + rng.below(60_000), 7, 0);
            b.extend(rng.some_bytes(100));
            frame(
                &mut out,
                HEADERS,
                (rng.below(2) as u8) * END_HEADERS,
                stream,
                &b,
            );
        }
        _ => out.extend(rng.some_bytes(500)),
    }
    out
}

/// One case's client stream and what h2 should see for its checked part.
struct Script {
    input: Vec<u8>,
    expect: Vec<Expect>,
    /// The case ends with hostile or mutated bytes: later output unchecked.
    hostile_tail: bool,
    mutated: bool,
}

fn script(rng: &mut Rng, server: Server) -> Script {
    let mut input = PREFACE.to_vec();
    frame(&mut input, 0x4, 0, 0, &[]);
    let mut expect = Vec::new();
    let mut table = Table {
        entries: VecDeque::new(),
        size: 0,
        max: 4096,
    };
    let mut stream = 1u32;
    for _ in 0..1 + rng.below(6) {
        if rng.chance(3) {
            // On a stream already opened where there is one: an idle
            // stream's DATA or WINDOW_UPDATE makes h2 close the
            // connection, and the rest of the case would test nothing.
            let f = passthrough(rng, stream.saturating_sub(2).max(1));
            input.extend_from_slice(&f);
            expect.push(Expect::Frame(f));
            continue;
        }
        let big = rng.chance(12);
        let malformed = !big && rng.chance(12);
        let fields = request(rng, server, big, malformed);
        let block = encode(rng, &mut table, &fields);
        let end_stream = rng.chance(2);
        // h2 forgets a malformed field when its frame ends inside a later
        // representation; in one frame, it resets the stream.
        let priority = block_frames(
            rng, server, &mut input, stream, end_stream, &block, malformed,
        );
        expect.push(if malformed {
            Expect::Malformed(stream)
        } else if h2_size(&fields) >= server.list {
            Expect::OverSize(stream)
        } else {
            Expect::Block(stream, end_stream, priority, fields)
        });
        stream += 2;
    }
    let hostile_tail = rng.chance(2);
    if hostile_tail {
        let h = hostile(rng, server, &table, stream);
        input.extend(h);
    }
    let mutated = rng.chance(4);
    if mutated {
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(input.len());
            input[at] = rng.next() as u8;
        }
    }
    Script {
        input,
        expect,
        hostile_tail,
        mutated,
    }
}

/// Feeds `input` as `LenientAuthority` does, in random reads, and returns
/// the bytes h2 reads; checks the holding bound throughout.
fn drive(
    rng: &mut Rng,
    limits: Limits,
    input: &[u8],
    stats: &mut Stats,
) -> Result<Vec<u8>, String> {
    let bound = limits.held_bound();
    let mut r = Rewriter::new(limits);
    let mut ready = BytesMut::new();
    let mut h2 = Vec::new();
    let mut rest = input;
    loop {
        if !ready.is_empty() {
            let n = 1 + rng.below(ready.len().min(20_000));
            h2.extend_from_slice(&ready.split_to(n));
            continue;
        }
        if r.pull(&mut ready) {
            let held = r.held() + ready.len();
            stats.max_held = stats.max_held.max(held);
            if held > bound {
                return Err(format!("holds {held} bytes, bound {bound}"));
            }
            continue;
        }
        if rest.is_empty() {
            return Ok(h2);
        }
        let direct = r.direct_read_limit();
        let n = 1 + rng.below(Rewriter::READ_CHUNK.min(rest.len()));
        if direct > 0 && rng.chance(2) {
            let n = n.min(direct);
            h2.extend_from_slice(&rest[..n]);
            r.read_directly(n);
            rest = &rest[n..];
            continue;
        }
        r.push(&rest[..n]);
        rest = &rest[n..];
        let held = r.held();
        stats.max_held = stats.max_held.max(held);
        if held > bound {
            return Err(format!("holds {held} bytes after a read, bound {bound}"));
        }
    }
}

fn h2_size(fields: &Fields) -> usize {
    fields.iter().map(|(n, v)| n.len() + v.len() + 32).sum()
}

/// What h2 sees behind the shim: frames, header blocks decoded by
/// `loona-hpack`.
fn parse_output(out: &[u8], server: Server, want: usize) -> Result<Vec<Expect>, String> {
    let Some(mut b) = out.strip_prefix(PREFACE) else {
        return Err("output does not start with the preface".into());
    };
    let mut decoder = loona_hpack::Decoder::new();
    let mut events = Vec::new();
    // Stream, END_STREAM, priority and fragment of the block being read.
    type Pending = (u32, bool, Option<[u8; 5]>, Vec<u8>);
    let mut block: Option<Pending> = None;
    // The client's SETTINGS first.
    while events.len() < want + 1 && b.len() >= 9 {
        let len = usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
        if b.len() < 9 + len {
            break;
        }
        let (kind, flags) = (b[3], b[4]);
        let id = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
        let payload = &b[9..9 + len];
        if len > server.frame {
            return Err(format!("a frame of {len} bytes reaches h2"));
        }
        match (kind, block.as_mut()) {
            (HEADERS, None) => {
                if flags & PADDED != 0 {
                    return Err("a rewritten block is padded".into());
                }
                let (priority, frag) = if flags & PRIORITY != 0 {
                    (Some(payload[..5].try_into().unwrap()), &payload[5..])
                } else {
                    (None, payload)
                };
                block = Some((id, flags & END_STREAM != 0, priority, frag.to_vec()));
            }
            (CONTINUATION, Some(bl)) => bl.3.extend_from_slice(payload),
            (_, None) => events.push(Expect::Frame(b[..9 + len].to_vec())),
            (_, Some(_)) => return Err("a frame inside a rewritten block".into()),
        }
        let ends = matches!(kind, HEADERS | CONTINUATION) && flags & END_HEADERS != 0;
        if let Some((id, end_stream, priority, frag)) = block.take_if(|_| ends) {
            let fields = decoder
                .decode(&frag)
                .map_err(|e| format!("h2 cannot decode a rewritten block: {e}"))?;
            let size = h2_size(&fields);
            events.push(if fields.iter().any(|(n, _)| n == b"connection") {
                Expect::Malformed(id)
            } else if size >= server.list {
                if size > 4 * server.list {
                    return Err(format!("a refused block of {size} bytes"));
                }
                Expect::OverSize(id)
            } else {
                Expect::Block(id, end_stream, priority, fields)
            });
        }
        b = &b[9 + len..];
    }
    Ok(events)
}

/// The oracle's reading of a client block: `loona-hpack`'s list, with the
/// authority as h2 gets it behind the shim.
fn expected_list(fields: &Fields) -> Fields {
    fields
        .iter()
        .map(|(n, v)| {
            let v = if n == b":authority" {
                trimmed(v).unwrap_or_else(|| v.clone())
            } else {
                v.clone()
            };
            (n.clone(), v)
        })
        .collect()
}

/// The authority cut at `?`, `#` or `/` when only the cut one is valid.
fn trimmed(v: &[u8]) -> Option<Vec<u8>> {
    if http::uri::Authority::try_from(v).is_ok() {
        return None;
    }
    let cut = v.iter().position(|b| b"?#/".contains(b))?;
    (cut > 0 && http::uri::Authority::try_from(&v[..cut]).is_ok()).then(|| v[..cut].to_vec())
}

/// The client byte stream of case `seed` for a server with tonic's default
/// limits, with authorities h2 accepts as they are: the same stream should
/// get the same answers from h2 with and without the shim.
pub fn client_stream(seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let (list, frame) = SERVERS[0];
    let server = Server {
        list,
        frame,
        trim: false,
    };
    script(&mut rng, server).input
}

/// One case: generates, drives, checks. `Err` describes the violation.
pub fn run_case(seed: u64) -> Result<Stats, String> {
    let mut rng = Rng::new(seed);
    let mut stats = Stats {
        cases: 1,
        ..Stats::default()
    };
    let server = Server::pick(&mut rng);
    let s = script(&mut rng, server);
    stats.hostile = u64::from(s.hostile_tail);
    stats.mutated = u64::from(s.mutated);
    let out = drive(&mut rng, server.limits(), &s.input, &mut stats)?;
    stats.max_share = stats.max_held as f64 / server.limits().held_bound() as f64;
    if s.mutated {
        // Anything may have changed meaning: no panic and the bound are
        // the invariants.
        return Ok(stats);
    }
    // The generator and the oracle agree on the client's blocks: decode
    // them with loona-hpack, as h2 without the shim would.
    let mut client = loona_hpack::Decoder::new();
    let mut b = &s.input[PREFACE.len()..];
    let mut client_lists = Vec::new();
    let mut frag = Vec::new();
    let blocks = s
        .expect
        .iter()
        .filter(|e| !matches!(e, Expect::Frame(_)))
        .count();
    loop {
        if b.len() < 9 || client_lists.len() == blocks {
            break;
        }
        let len = usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
        if b.len() < 9 + len {
            break;
        }
        let (kind, flags, p) = (b[3], b[4], &b[9..9 + len]);
        if kind == HEADERS {
            let mut p = p;
            let mut pad = 0;
            if flags & PADDED != 0 {
                pad = usize::from(p[0]);
                p = &p[1..];
            }
            if flags & PRIORITY != 0 {
                p = &p[5..];
            }
            frag = p[..p.len() - pad].to_vec();
        } else if kind == CONTINUATION {
            frag.extend_from_slice(p);
        }
        if matches!(kind, HEADERS | CONTINUATION) && flags & END_HEADERS != 0 {
            let list = client
                .decode(&frag)
                .map_err(|e| format!("loona-hpack cannot decode a generated block: {e}"))?;
            client_lists.push(list);
        }
        b = &b[9 + len..];
    }
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        for e in &s.expect {
            match e {
                Expect::Block(id, _, _, f) => eprintln!("expect block {id} {}", f.len()),
                other => eprintln!("expect {:?}", std::mem::discriminant(other)),
            }
        }
        for l in &client_lists {
            eprintln!("client list {}", l.len());
        }
    }
    let mut lists = client_lists.into_iter();
    let got = parse_output(&out, server, s.expect.len())?;
    // The client's SETTINGS.
    let got = got.get(1..).unwrap_or_default();
    if got.len() < s.expect.len() {
        return Err(format!(
            "h2 gets {} items of {} expected",
            got.len(),
            s.expect.len()
        ));
    }
    for (i, (want, got)) in s.expect.iter().zip(got).enumerate() {
        match want {
            Expect::Block(id, end, prio, fields) => {
                let client_list = lists.next().ok_or("a block missing from the input")?;
                if &client_list != fields {
                    let show = |l: &Fields| {
                        l.iter()
                            .map(|(n, v)| format!("{}={}", String::from_utf8_lossy(n), v.len()))
                            .collect::<Vec<_>>()
                            .join(" ")
                    };
                    return Err(format!(
                        "item {i}: loona-hpack decodes the generated block as [{}], generated [{}]",
                        show(&client_list),
                        show(fields)
                    ));
                }
                let expected = Expect::Block(*id, *end, *prio, expected_list(&client_list));
                if got != &expected {
                    return Err(format!("item {i}: h2 gets {got:?}, expected {expected:?}"));
                }
                stats.blocks_equal += 1;
                stats.trimmed += u64::from(expected_list(&client_list) != client_list);
            }
            Expect::OverSize(_) | Expect::Malformed(_) => {
                lists.next();
                if got != want {
                    return Err(format!("item {i}: h2 gets {got:?}, expected {want:?}"));
                }
                stats.blocks_refused += 1;
            }
            Expect::Frame(_) => {
                if got != want {
                    return Err(format!(
                        "item {i}: frame changed: {got:?}, expected {want:?}"
                    ));
                }
            }
        }
    }
    Ok(stats)
}

/// Runs cases `start..start + cases` of `seed`, stopping at the first
/// failure (a panic or a broken invariant): `Err((case index, message))`.
pub fn run(seed: u64, start: u64, cases: u64) -> Result<Stats, (u64, String)> {
    let mut total = Stats::default();
    for i in start..start + cases {
        let s = case_seed(seed, i);
        match std::panic::catch_unwind(|| run_case(s)) {
            Ok(Ok(stats)) => total.add(&stats),
            Ok(Err(msg)) => return Err((i, msg)),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                return Err((i, format!("panicked: {msg}")));
            }
        }
    }
    Ok(total)
}
