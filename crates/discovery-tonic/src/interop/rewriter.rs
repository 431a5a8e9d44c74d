//! The sans-IO core of [`LenientAuthority`](super::LenientAuthority): the
//! client-to-server byte stream in, the bytes h2 should see out.
//!
//! Every limit h2 applies to a header block is applied here first, the same
//! way and at the same frame, because the rewriter decodes blocks before h2
//! does: an attacker meets this code before h2's. When a block breaks one
//! of h2's rules, the rewriter does not answer the client itself (it cannot
//! write into h2's half of the connection); it hands h2 a short frame
//! sequence that breaks the same rule, and h2 answers as it would have
//! answered the original. Mirrored from h2 0.4 (`codec/framed_read.rs`,
//! `frame/headers.rs`, `hpack/decoder.rs`, `hpack/header.rs`).

use std::{fmt, ops::ControlFlow};

use bytes::{Buf, BytesMut};

use super::{
    hpack::{Decoder, FieldRef, encode_int, encode_literal},
    lenient_authority,
};

/// The 24 bytes every HTTP/2 client sends first, before its SETTINGS.
pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The HPACK table size h2 advertises (the protocol default: neither hyper
/// nor tonic changes it), which bounds the caller's table.
const HEADER_TABLE_SIZE: usize = 4096;
/// The most a socket read adds to the unprocessed input.
pub(super) const READ_CHUNK: usize = 8192;
/// The smallest and largest `SETTINGS_MAX_FRAME_SIZE` (RFC 9113 6.5.2).
const MIN_FRAME_SIZE: usize = 16_384;
const MAX_FRAME_SIZE: usize = (1 << 24) - 1;
/// h2 closes the connection when a decoded list passes this many times
/// its `max_header_list_size` (`MAX_HEADER_LIST_ABUSE_MULTIPLIER`).
const ABUSE_MULTIPLIER: usize = 4;

/// The limits of the HTTP/2 server behind the shim, which the shim applies
/// before h2 does. They must equal the server's settings: the defaults are
/// hyper's and tonic's (16 KiB header lists, 16 KiB frames).
///
/// ```
/// use discovery_tonic::interop::Limits;
///
/// // For a server built with
/// // `Server::builder().http2_max_header_list_size(64 * 1024).max_frame_size(32 * 1024)`:
/// let limits = Limits::default()
///     .max_header_list_size(64 * 1024)
///     .max_frame_size(32 * 1024);
/// assert_eq!(limits.max_continuation_frames(), 5);
/// assert_eq!(Limits::default().held_bound(), 225_379);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    max_header_list_size: usize,
    max_frame_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_list_size: 16 * 1024,
            max_frame_size: MIN_FRAME_SIZE,
        }
    }
}

impl Limits {
    /// The server's `SETTINGS_MAX_HEADER_LIST_SIZE` (tonic's
    /// `http2_max_header_list_size`; 16 KiB by default).
    pub fn max_header_list_size(mut self, max: u32) -> Self {
        self.max_header_list_size = max as usize;
        self
    }

    /// The server's `SETTINGS_MAX_FRAME_SIZE` (tonic's `max_frame_size`;
    /// 16 KiB by default), clamped to what HTTP/2 allows as h2 does.
    pub fn max_frame_size(mut self, max: u32) -> Self {
        self.max_frame_size = (max as usize).clamp(MIN_FRAME_SIZE, MAX_FRAME_SIZE);
        self
    }

    /// How many CONTINUATION frames without END_HEADERS h2 accepts in one
    /// block: enough for a full header list in frames of the maximum size,
    /// plus a quarter, and at least 5 (`calc_max_continuation_frames`).
    pub fn max_continuation_frames(&self) -> usize {
        let min_frames = (self.max_header_list_size / self.max_frame_size).max(1);
        min_frames.saturating_add(min_frames >> 2).max(5)
    }

    /// The most bytes a [`Rewriter`] holds at once, its output not yet read
    /// included: unprocessed input (one frame and one read), the undecoded
    /// rest of a header block, the fields kept for re-encoding, the
    /// caller's dynamic table and one block of output.
    pub fn held_bound(&self) -> usize {
        let list = self.max_header_list_size;
        let cap = self.max_continuation_frames();
        let frame = FRAME_HEADER_LEN + self.max_frame_size;
        let input = frame + READ_CHUNK;
        // The HEADERS frame and every CONTINUATION, the last one included
        // while it is decoded; h2 keeps as much of a block undecoded.
        let remainder = (cap + 2) * self.max_frame_size;
        // Past the list limit nothing more is kept.
        let kept = list;
        // Pass-through bytes of the input, then one block: re-encoded
        // (smaller than the list it encodes), or the frames that make h2
        // refuse one (at most a 4 KB table entry, a list's worth of bytes
        // and a frame header per CONTINUATION).
        let headers = (cap + 3 + list / self.max_frame_size) * FRAME_HEADER_LEN;
        let output = input + 2 * list + 2 * HEADER_TABLE_SIZE + headers;
        input + remainder + kept + HEADER_TABLE_SIZE + output
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Matching the client preface.
    Preface,
    /// Between or inside frames.
    Frames,
    /// Not HTTP/2 with prior knowledge: everything passes through.
    Raw,
    /// h2 was handed a connection error and closes the connection; later
    /// input is dropped.
    Failed,
}

/// One kept header field.
struct Kept {
    name: Box<[u8]>,
    value: Box<[u8]>,
    never_indexed: bool,
}

/// A header block being decoded across HEADERS and CONTINUATION frames,
/// with the state h2 keeps for it (`frame::headers::HeaderBlock`).
struct Block {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    /// Bytes of a representation that the frames so far cut short.
    remainder: BytesMut,
    /// The fields h2 would keep: all of them until the list reaches
    /// `max_header_list_size`, none after.
    kept: Vec<Kept>,
    /// The list size of `kept`, as h2 counts it.
    kept_size: usize,
    /// `kept` has a regular (not pseudo) field.
    kept_regular: bool,
    /// Pseudo-headers kept, one bit each.
    pseudo: u8,
    /// The list reached `max_header_list_size`: h2 answers 431.
    over_size: bool,
    /// CONTINUATION frames without END_HEADERS so far.
    continuations: usize,
}

impl Block {
    fn held(&self) -> usize {
        self.remainder.len()
            + self
                .kept
                .iter()
                .map(|k| k.name.len() + k.value.len())
                .sum::<usize>()
    }
}

/// How h2 would refuse what the client sent; the rewriter makes h2 say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// GOAWAY `PROTOCOL_ERROR`: an HPACK error, a field h2 cannot
    /// represent, or frames out of order in a block.
    Protocol,
    /// GOAWAY `ENHANCE_YOUR_CALM` "too_many_continuations".
    Flood,
    /// GOAWAY `ENHANCE_YOUR_CALM` "header_list_way_too_large".
    WayTooLarge,
    /// GOAWAY `COMPRESSION_ERROR`: an over-size block keeps a growing
    /// undecoded rest.
    Compression,
}

/// What `frame` did.
enum Step {
    /// More input is needed.
    NeedInput,
    /// A frame or part of one was handled.
    Handled,
    /// A header block (or h2's refusal of one) was written out.
    Block,
}

/// The client-to-server half of a connection, rewritten for h2: request
/// header blocks are decoded, their `:authority` made acceptable by
/// [`lenient_authority`], and re-encoded; other frames pass through.
///
/// Feed it with [`push`](Self::push) and read with [`pull`](Self::pull);
/// it holds at most [`Limits::held_bound`] bytes, pulled output included,
/// as long as the caller pushes only when `pull` asks for input.
pub struct Rewriter {
    limits: Limits,
    state: State,
    input: BytesMut,
    /// Payload bytes of a pass-through frame still to copy.
    passthrough: usize,
    block: Option<Block>,
    decoder: Decoder,
}

/// Sizes only: header values stay out of logs.
impl fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rewriter")
            .field("limits", &self.limits)
            .field("state", &self.state)
            .field("input_len", &self.input.len())
            .field("passthrough", &self.passthrough)
            .field("block_held", &self.block.as_ref().map(Block::held))
            .field("decoder", &self.decoder)
            .finish()
    }
}

impl Rewriter {
    /// A rewriter for a new connection to a server with these limits.
    pub fn new(limits: Limits) -> Self {
        Rewriter {
            limits,
            state: State::Preface,
            input: BytesMut::new(),
            passthrough: 0,
            block: None,
            decoder: Decoder::new(HEADER_TABLE_SIZE),
        }
    }

    /// Adds bytes read from the client. Call it only after
    /// [`pull`](Self::pull) returned `false`, with at most
    /// [`READ_CHUNK`](Self::READ_CHUNK) bytes, to stay within
    /// [`Limits::held_bound`].
    pub fn push(&mut self, bytes: &[u8]) {
        if self.state != State::Failed {
            self.input.extend_from_slice(bytes);
        }
    }

    /// The most bytes one [`push`](Self::push) should add.
    pub const READ_CHUNK: usize = READ_CHUNK;

    /// Appends to `out` what h2 may see next: at most one header block,
    /// and pass-through bytes. `false` when nothing could be added without
    /// more input.
    pub fn pull(&mut self, out: &mut BytesMut) -> bool {
        let before = out.len();
        loop {
            match self.state {
                State::Failed => {
                    self.input.clear();
                    return out.len() > before;
                }
                State::Raw => {
                    out.extend_from_slice(&self.input.split());
                    return out.len() > before;
                }
                State::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.state = State::Raw;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return out.len() > before;
                    }
                    out.extend_from_slice(&self.input.split_to(n));
                    self.state = State::Frames;
                }
                State::Frames => {
                    if self.passthrough > 0 {
                        if self.input.is_empty() {
                            return out.len() > before;
                        }
                        let n = self.passthrough.min(self.input.len());
                        out.extend_from_slice(&self.input.split_to(n));
                        self.passthrough -= n;
                        continue;
                    }
                    match self.frame(out) {
                        Step::NeedInput => return out.len() > before,
                        Step::Handled => {}
                        // One block per pull: h2 consumes it before the
                        // next is decoded.
                        Step::Block => return true,
                    }
                }
            }
        }
    }

    /// How many bytes the caller may read from the client straight into
    /// h2's buffer, bypassing [`push`](Self::push): the rest of a
    /// pass-through frame (a DATA payload) when no input is pending.
    pub fn direct_read_limit(&self) -> usize {
        match self.state {
            State::Frames if self.input.is_empty() => self.passthrough,
            State::Raw if self.input.is_empty() => usize::MAX,
            _ => 0,
        }
    }

    /// Records `n` bytes read directly (at most
    /// [`direct_read_limit`](Self::direct_read_limit)).
    pub fn read_directly(&mut self, n: usize) {
        if self.state == State::Frames {
            self.passthrough -= n.min(self.passthrough);
        }
    }

    /// Bytes held now: unprocessed input, the block being decoded and the
    /// caller's dynamic table.
    pub fn held(&self) -> usize {
        self.input.len() + self.block.as_ref().map_or(0, Block::held) + self.decoder.table_bytes()
    }

    /// h2 was handed a connection error; later input is dropped.
    pub fn failed(&self) -> bool {
        self.state == State::Failed
    }

    /// Handles the frame at the start of the input.
    fn frame(&mut self, out: &mut BytesMut) -> Step {
        let b = &self.input;
        if b.len() < 3 {
            return Step::NeedInput;
        }
        let len = usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
        if len > self.limits.max_frame_size {
            // h2's codec refuses a frame from its 3 length bytes alone,
            // before the rest of its header arrives: GOAWAY
            // FRAME_SIZE_ERROR, whatever the frame.
            let n = b.len().min(FRAME_HEADER_LEN);
            out.extend_from_slice(&b[..n]);
            self.state = State::Failed;
            return Step::Block;
        }
        if b.len() < FRAME_HEADER_LEN {
            return Step::NeedInput;
        }
        let (kind, flags) = (b[3], b[4]);
        // The reserved bit is ignored, as h2 does.
        let stream_id = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff;
        if let Some(block) = &self.block {
            if kind != CONTINUATION || stream_id != block.stream_id {
                // "expected CONTINUATION" or a stream id that does not
                // match: PROTOCOL_ERROR.
                let id = block.stream_id;
                return self.refuse(out, id, Refusal::Protocol);
            }
        } else if kind != HEADERS {
            // Everything else, CONTINUATION outside a block included (h2
            // refuses that itself), passes through.
            out.extend_from_slice(&self.input.split_to(FRAME_HEADER_LEN));
            self.passthrough = len;
            return Step::Handled;
        }
        if self.input.len() < FRAME_HEADER_LEN + len {
            return Step::NeedInput;
        }
        let frame = self.input.split_to(FRAME_HEADER_LEN + len);
        let end_headers = flags & END_HEADERS != 0;
        if kind == HEADERS {
            let split = split_headers_payload(&frame[FRAME_HEADER_LEN..], flags);
            let Some((priority, fragment)) = split.filter(|_| stream_id != 0) else {
                // Stream 0, bad padding or a short priority field: h2
                // refuses the frame before decoding it (GOAWAY
                // PROTOCOL_ERROR). Handing it over as sent gets exactly
                // that answer.
                out.extend_from_slice(&frame);
                self.state = State::Failed;
                return Step::Block;
            };
            if priority.is_some_and(|p| {
                u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff == stream_id
            }) {
                // A stream depending on itself: h2 resets that stream
                // without decoding the block, and refuses any
                // CONTINUATION after it. As sent, it gets the same.
                out.extend_from_slice(&frame);
                return Step::Block;
            }
            self.block = Some(Block {
                stream_id,
                end_stream: flags & END_STREAM != 0,
                priority,
                remainder: BytesMut::from(fragment),
                kept: Vec::new(),
                kept_size: 0,
                kept_regular: false,
                pseudo: 0,
                over_size: false,
                continuations: 0,
            });
        } else {
            let block = self.block.as_mut().expect("checked above");
            if !end_headers {
                block.continuations += 1;
                if block.continuations > self.limits.max_continuation_frames() {
                    return self.refuse(out, stream_id, Refusal::Flood);
                }
            }
            if block.over_size
                && !block.remainder.is_empty()
                && block.remainder.len() + frame.len() > self.limits.max_header_list_size
            {
                return self.refuse(out, stream_id, Refusal::Compression);
            }
            block
                .remainder
                .extend_from_slice(&frame[FRAME_HEADER_LEN..]);
        }
        self.decode(out, end_headers)
    }

    /// Decodes what the block's frames so far allow, as h2's
    /// `HeaderBlock::load` does on each frame, and writes the block out at
    /// END_HEADERS.
    fn decode(&mut self, out: &mut BytesMut, end_headers: bool) -> Step {
        let mut block = self.block.take().expect("a block is being decoded");
        let max = self.limits.max_header_list_size;
        let abuse = max.saturating_mul(ABUSE_MULTIPLIER);
        // h2 starts each frame's count from the fields it kept.
        let mut size = block.kept_size;
        let mut regular = block.kept_regular;
        let mut malformed = false;
        let mut refused = false;
        let mut way_too_large = false;
        let remainder = std::mem::take(&mut block.remainder);
        let result = self.decoder.decode_partial(&remainder, |f| {
            match classify(&f) {
                Class::Refused => {
                    refused = true;
                    return ControlFlow::Break(());
                }
                // h2 neither counts nor keeps these.
                Class::Malformed => malformed = true,
                Class::Pseudo(bit) if regular || block.pseudo & bit != 0 => malformed = true,
                class => {
                    if let Class::Regular = class {
                        regular = true;
                    }
                    size += f.list_size();
                    if size > abuse {
                        way_too_large = true;
                        return ControlFlow::Break(());
                    }
                    if size >= max {
                        block.over_size = true;
                    }
                    if !block.over_size {
                        match class {
                            Class::Pseudo(bit) => block.pseudo |= bit,
                            _ => block.kept_regular = true,
                        }
                        block.kept_size += f.list_size();
                        block.kept.push(Kept {
                            name: f.name.into(),
                            value: f.value.into(),
                            never_indexed: f.never_indexed,
                        });
                    }
                }
            }
            ControlFlow::Continue(())
        });
        block.remainder = remainder;
        if block.over_size {
            // Only their count matters now (it goes on from there).
            block.kept = Vec::new();
        }
        let id = block.stream_id;
        let progress = match result {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "undecodable header block; h2 refuses the connection");
                return self.refuse(out, id, Refusal::Protocol);
            }
        };
        // h2's order: HPACK errors, the abuse limit, a representation cut
        // short, then malformed fields.
        if refused {
            return self.refuse(out, id, Refusal::Protocol);
        }
        if way_too_large {
            return self.refuse(out, id, Refusal::WayTooLarge);
        }
        let truncated = progress.consumed < block.remainder.len();
        if truncated && end_headers {
            return self.refuse(out, id, Refusal::Protocol);
        }
        // A frame that ends inside a representation is not checked for
        // malformed fields: h2 returns "need more" before it looks.
        if malformed && !truncated {
            // A stream error: h2 resets the stream and forgets the block,
            // so a CONTINUATION after this frame is a connection error,
            // which passing it through gets from h2.
            write_block(
                out,
                &block,
                &[malformed_marker()],
                self.limits.max_frame_size,
            );
            return Step::Block;
        }
        block.remainder.advance(progress.consumed);
        if !end_headers {
            self.block = Some(block);
            return Step::Handled;
        }
        if block.over_size {
            // h2 answers 431 without looking at the fields: a list of the
            // same size gets that answer without the shim keeping it.
            write_block(out, &block, &[filler(max)], self.limits.max_frame_size);
            return Step::Block;
        }
        let mut encoded = Vec::with_capacity(block.kept_size);
        for k in &block.kept {
            let trimmed = (&*k.name == b":authority")
                .then(|| lenient_authority(&k.value))
                .flatten();
            if trimmed.is_some() {
                tracing::trace!(
                    authority_len = k.value.len(),
                    "accepting non-URI :authority"
                );
            }
            let value = trimmed.as_deref().unwrap_or(&k.value);
            encode_literal(&mut encoded, &k.name, value, k.never_indexed);
        }
        emit_block(out, &block, &encoded, self.limits.max_frame_size);
        Step::Block
    }

    /// Hands h2 a short frame sequence it refuses the way it would have
    /// refused the client's, then drops all later input.
    fn refuse(&mut self, out: &mut BytesMut, stream_id: u32, refusal: Refusal) -> Step {
        let max = self.limits.max_header_list_size;
        let id = stream_id.to_be_bytes();
        match refusal {
            Refusal::Protocol => {
                // Index 0 is never valid.
                write_frame_header(out, 1, HEADERS, END_HEADERS, id);
                out.extend_from_slice(&[0x80]);
            }
            Refusal::Flood => {
                write_frame_header(out, 0, HEADERS, 0, id);
                for _ in 0..=self.limits.max_continuation_frames() {
                    write_frame_header(out, 0, CONTINUATION, 0, id);
                }
            }
            Refusal::WayTooLarge => {
                // An entry in h2's dynamic table (otherwise unused: the
                // shim writes literals only), referenced until the list
                // passes the abuse limit within one frame.
                let mut block = table_entry();
                let refs = max.saturating_mul(ABUSE_MULTIPLIER) / TABLE_ENTRY_SIZE + 1;
                block.resize(block.len() + refs, 0x80 | 62);
                emit_frames(
                    out,
                    id,
                    HEADERS,
                    END_HEADERS,
                    &[],
                    &block,
                    self.limits.max_frame_size,
                );
            }
            Refusal::Compression => {
                // An over-size list, then a literal whose name is cut
                // short, then CONTINUATION frames until h2's undecoded
                // rest plus the next frame passes the list limit.
                let mut block = table_entry();
                let refs = max.div_ceil(TABLE_ENTRY_SIZE).saturating_sub(1);
                block.resize(block.len() + refs, 0x80 | 62);
                let cut = block.len();
                block.push(0x00);
                encode_int(&mut block, 1 << 20, 7, 0);
                let mut pending = block.len() - cut;
                emit_frames(out, id, HEADERS, 0, &[], &block, self.limits.max_frame_size);
                loop {
                    let n = (max + 1)
                        .saturating_sub(pending + FRAME_HEADER_LEN)
                        .clamp(1, self.limits.max_frame_size);
                    write_frame_header(out, n, CONTINUATION, 0, id);
                    out.resize(out.len() + n, 0);
                    if pending + FRAME_HEADER_LEN + n > max {
                        break;
                    }
                    pending += n;
                }
            }
        }
        tracing::debug!(?refusal, "header block refused; h2 closes the connection");
        self.block = None;
        self.state = State::Failed;
        self.input.clear();
        Step::Block
    }
}

/// How h2 treats a decoded field (`hpack::Header::new` and
/// `HeaderBlock::load`).
#[derive(Clone, Copy)]
enum Class {
    /// A connection error: h2 cannot represent it.
    Refused,
    /// A stream error: a connection-specific field, or `te` other than
    /// `trailers`.
    Malformed,
    /// A known pseudo-header, one bit each.
    Pseudo(u8),
    Regular,
}

fn classify(f: &FieldRef<'_>) -> Class {
    let (name, value) = (f.name, f.value);
    if let Some(pseudo) = name.strip_prefix(b":") {
        let utf8 = std::str::from_utf8(value).is_ok();
        let (bit, ok) = match pseudo {
            b"authority" => (1, utf8),
            b"method" => (2, http::Method::from_bytes(value).is_ok()),
            b"scheme" => (4, utf8),
            b"path" => (8, utf8),
            b"protocol" => (16, utf8),
            b"status" => (32, http::StatusCode::from_bytes(value).is_ok()),
            _ => (0, false),
        };
        return if ok {
            Class::Pseudo(bit)
        } else {
            Class::Refused
        };
    }
    // Empty names included: h2 cannot decode those either.
    if http::HeaderName::from_lowercase(name).is_err()
        || http::HeaderValue::from_bytes(value).is_err()
    {
        return Class::Refused;
    }
    match name {
        b"connection" | b"transfer-encoding" | b"upgrade" | b"keep-alive" | b"proxy-connection" => {
            Class::Malformed
        }
        b"te" if value != b"trailers" => Class::Malformed,
        _ => Class::Regular,
    }
}

/// The list size of [`table_entry`]'s field: within h2's 4096-byte table.
const TABLE_ENTRY_SIZE: usize = 1 + 4000 + 32;

/// A literal with incremental indexing, `x: xxx…`, of
/// [`TABLE_ENTRY_SIZE`].
fn table_entry() -> Vec<u8> {
    let mut block = vec![0x40];
    encode_int(&mut block, 1, 7, 0);
    block.push(b'x');
    encode_int(&mut block, 4000, 7, 0);
    block.resize(block.len() + 4000, b'x');
    block
}

/// A field h2 resets the stream for.
fn malformed_marker() -> Kept {
    Kept {
        name: (*b"connection").into(),
        value: (*b"close").into(),
        never_indexed: false,
    }
}

/// A field whose list size is `max` (or just above, for tiny limits).
fn filler(max: usize) -> Kept {
    let name = b"x-header-list-too-large";
    Kept {
        name: (*name).into(),
        value: vec![b'x'; max.saturating_sub(name.len() + 32)].into(),
        never_indexed: false,
    }
}

fn write_block(out: &mut BytesMut, block: &Block, fields: &[Kept], max_frame: usize) {
    let mut encoded = Vec::new();
    for k in fields {
        encode_literal(&mut encoded, &k.name, &k.value, k.never_indexed);
    }
    emit_block(out, block, &encoded, max_frame);
}

/// The priority fields and header block fragment of a HEADERS payload,
/// padding removed; `None` when h2 would refuse the frame for its padding
/// or priority fields.
fn split_headers_payload(payload: &[u8], flags: u8) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        let (&n, rest) = p.split_first()?;
        pad = usize::from(n);
        p = rest;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        if p.len() < 5 {
            return None;
        }
        priority = Some([p[0], p[1], p[2], p[3], p[4]]);
        p = &p[5..];
    }
    if pad > p.len() {
        return None;
    }
    Some((priority, &p[..p.len() - pad]))
}

fn write_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream_id: [u8; 4]) {
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream_id);
}

/// Writes `encoded` as the block's HEADERS frame (keeping END_STREAM and
/// priority) and as few CONTINUATION frames as `max_frame` allows, so h2's
/// CONTINUATION limit never counts more frames than the list needs.
fn emit_block(out: &mut BytesMut, block: &Block, encoded: &[u8], max_frame: usize) {
    let mut flags = END_HEADERS;
    if block.end_stream {
        flags |= END_STREAM;
    }
    let mut prefix: &[u8] = &[];
    if let Some(p) = &block.priority {
        flags |= PRIORITY;
        prefix = p;
    }
    emit_frames(
        out,
        block.stream_id.to_be_bytes(),
        HEADERS,
        flags,
        prefix,
        encoded,
        max_frame,
    );
}

/// A HEADERS frame with `flags` (END_HEADERS moved to the last frame) and
/// `prefix` before the fragment, then CONTINUATION frames.
fn emit_frames(
    out: &mut BytesMut,
    id: [u8; 4],
    kind: u8,
    flags: u8,
    prefix: &[u8],
    encoded: &[u8],
    max_frame: usize,
) {
    let first = encoded.len().min(max_frame - prefix.len());
    let (head, mut rest) = encoded.split_at(first);
    let end = flags & END_HEADERS;
    let mut f = flags & !END_HEADERS;
    if rest.is_empty() {
        f |= end;
    }
    write_frame_header(out, prefix.len() + head.len(), kind, f, id);
    out.extend_from_slice(prefix);
    out.extend_from_slice(head);
    while !rest.is_empty() {
        let n = rest.len().min(max_frame);
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let flags = if rest.is_empty() { end } else { 0 };
        write_frame_header(out, n, CONTINUATION, flags, id);
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interop::hpack::{Field, encode_str};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        write_frame_header(&mut out, payload.len(), kind, flags, stream.to_be_bytes());
        out.extend_from_slice(payload);
        out.to_vec()
    }

    /// Splits `bytes` (after the preface) into frames.
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut v = Vec::new();
        let mut b = bytes;
        while b.len() >= 9 {
            let len = usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
            let id = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
            v.push((b[3], b[4], id, b[9..9 + len].to_vec()));
            b = &b[9 + len..];
        }
        assert!(b.is_empty(), "trailing partial frame");
        v
    }

    /// A grpc-go style block: incremental indexing and Huffman values.
    fn go_block(authority: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.push(0x83); // :method POST
        b.push(0x86); // :scheme http
        encode_int(&mut b, 4, 6, 0x40); // :path, indexed
        encode_str(&mut b, b"/helloworld.Greeter/SayHello", true);
        encode_int(&mut b, 1, 6, 0x40); // :authority, indexed
        encode_str(&mut b, authority, true);
        encode_int(&mut b, 31, 6, 0x40);
        encode_str(&mut b, b"application/grpc", true);
        b
    }

    /// Feeds `input` in `chunk`-sized reads the way `LenientAuthority`
    /// does (only when the rewriter asks), checking the bound throughout.
    fn run_with(limits: Limits, input: &[u8], chunk: usize) -> Vec<u8> {
        let mut r = Rewriter::new(limits);
        let mut out = BytesMut::new();
        let mut rest = input;
        loop {
            while r.pull(&mut out) {}
            assert!(r.held() + out.len() <= limits.held_bound() + input.len());
            if rest.is_empty() {
                break;
            }
            let n = chunk.clamp(1, READ_CHUNK).min(rest.len());
            r.push(&rest[..n]);
            rest = &rest[n..];
        }
        out.to_vec()
    }

    fn run(input: &[u8], chunk: usize) -> Vec<u8> {
        run_with(Limits::default(), input, chunk)
    }

    fn decode(block: &[u8]) -> Vec<Field> {
        Decoder::new(4096).decode(block).unwrap()
    }

    #[test]
    fn query_authority_is_cut_and_table_stays_in_step() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &go_block(b"demo.service?subset=50"),
        ));
        // Second request: every field from the caller's dynamic table.
        input.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            3,
            &[0x83, 0x86, 0xc0, 0xbf, 0xbe],
        ));
        input.extend(frame(0x0, END_STREAM, 1, b"payload"));
        for chunk in [1, 7, 4096] {
            let out = run(&input, chunk);
            assert_eq!(&out[..PREFACE.len()], PREFACE);
            let fs = frames(&out[PREFACE.len()..]);
            assert_eq!(fs.len(), 4);
            assert_eq!(fs[0].0, 0x4);
            let mut server = Decoder::new(4096);
            for (i, id) in [(1, 1), (2, 3)] {
                assert_eq!((fs[i].0, fs[i].2), (HEADERS, id));
                let fields = server.decode(&fs[i].3).unwrap();
                let get = |n: &[u8]| fields.iter().find(|f| f.name == n).unwrap().value.clone();
                assert_eq!(get(b":authority"), b"demo.service");
                assert_eq!(get(b":path"), b"/helloworld.Greeter/SayHello");
                assert_eq!(get(b"content-type"), b"application/grpc");
            }
            assert_eq!(fs[2].1, END_HEADERS | END_STREAM);
            assert_eq!(server.table_size(), 0, "re-encoded blocks never index");
            assert_eq!(fs[3], (0x0, END_STREAM, 1, b"payload".to_vec()));
        }
    }

    #[test]
    fn padding_priority_and_continuation_are_handled() {
        let block = go_block(b"demo.service?subset=50");
        let (a, b) = block.split_at(10);
        let mut payload = vec![3u8]; // pad length
        payload.extend([0x80, 0, 0, 0, 15]); // exclusive dep on 0, weight 16
        payload.extend(a);
        payload.extend([0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &payload));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        let fs = frames(&run(&input, 5)[PREFACE.len()..]);
        assert_eq!(fs.len(), 1);
        let (kind, flags, id, p) = &fs[0];
        assert_eq!((*kind, *flags, *id), (HEADERS, PRIORITY | END_HEADERS, 1));
        assert_eq!(&p[..5], &[0x80, 0, 0, 0, 15]);
        assert_eq!(decode(&p[5..])[3].value, b"demo.service");
    }

    #[test]
    fn blocks_up_to_the_list_limit_pass_in_frames_of_the_servers_size() {
        let limits = Limits::default()
            .max_header_list_size(64 * 1024)
            .max_frame_size(20_000);
        let mut block = go_block(b"demo.service");
        encode_literal(&mut block, b"x-big", &vec![b'v'; 40_000], false);
        let mut input = PREFACE.to_vec();
        for (i, chunk) in block.chunks(20_000).enumerate() {
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            let last = (i + 1) * 20_000 >= block.len();
            input.extend(frame(kind, if last { END_HEADERS } else { 0 }, 1, chunk));
        }
        let fs = frames(&run_with(limits, &input, 8192)[PREFACE.len()..]);
        assert_eq!(fs.len(), 3);
        assert!(fs.iter().all(|f| f.3.len() <= 20_000));
        assert_eq!(fs.last().unwrap().1, END_HEADERS);
        let all: Vec<u8> = fs.iter().flat_map(|f| f.3.clone()).collect();
        let fields = decode(&all);
        assert_eq!(fields[3].value, b"demo.service");
        assert_eq!(fields[5].value.len(), 40_000);
    }

    #[test]
    fn undecodable_blocks_and_frames_out_of_order_are_refused() {
        let refused = vec![(HEADERS, END_HEADERS, 1, vec![0x80])];
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        ));
        input.extend(frame(0x0, 0, 1, b"dropped"));
        assert_eq!(frames(&run(&input, 3)[PREFACE.len()..]), refused);

        // A DATA frame inside a header block.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0x82]));
        input.extend(frame(0x0, 0, 1, b"x"));
        assert_eq!(frames(&run(&input, 64)[PREFACE.len()..]), refused);

        // A block cut short at END_HEADERS.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &[0x82, 0x41, 0x05, b'a']));
        assert_eq!(frames(&run(&input, 64)[PREFACE.len()..]), refused);
    }

    #[test]
    fn oversized_frames_reach_h2_as_a_bare_header() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &vec![0x82; 16_385]));
        let out = run(&input, 4096);
        assert_eq!(&out[PREFACE.len()..], &input[PREFACE.len()..][..9]);
    }

    #[test]
    fn an_oversized_length_is_refused_before_the_rest_of_its_header() {
        // h2 reads the 3 length bytes and refuses: the rewriter must not
        // wait for the other 6.
        let mut input = PREFACE.to_vec();
        input.extend([0x00, 0x40, 0x01]);
        let mut r = Rewriter::new(Limits::default());
        r.push(&input);
        let mut out = BytesMut::new();
        while r.pull(&mut out) {}
        assert_eq!(&out[PREFACE.len()..], &[0x00, 0x40, 0x01]);
        assert!(r.failed());
    }

    #[test]
    fn a_continuation_flood_is_refused_at_h2s_limit() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0x82]));
        for _ in 0..5000 {
            input.extend(frame(CONTINUATION, 0, 1, &[]));
        }
        let out = run(&input, 4096);
        let fs = frames(&out[PREFACE.len()..]);
        // HEADERS, then one CONTINUATION more than h2 allows.
        assert_eq!(fs.len(), 1 + 5 + 1);
        assert!(fs[1..].iter().all(|f| f.0 == CONTINUATION && f.1 == 0));
    }

    #[test]
    fn lists_over_the_limit_become_a_filler_and_far_over_it_are_refused() {
        // 20 KB of one value: over 16 KiB, under 64 KiB.
        let mut block = go_block(b"demo.service");
        encode_literal(&mut block, b"x-big", &vec![b'v'; 10_000], false);
        encode_literal(&mut block, b"x-big2", &vec![b'v'; 10_000], false);
        let (a, b) = block.split_at(12_000);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, a));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        let fs = frames(&run(&input, 8192)[PREFACE.len()..]);
        assert_eq!(fs.len(), 1);
        let fields = decode(&fs[0].3);
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].name.len() + fields[0].value.len() + 32, 16 * 1024);

        // A 4 KB table entry referenced 64 times: 258 KB decoded from
        // 64 bytes.
        let mut input = PREFACE.to_vec();
        let mut fill = vec![0x40];
        encode_str(&mut fill, b"x-fill", false);
        encode_str(&mut fill, &[b'a'; 4000], false);
        input.extend(frame(HEADERS, END_HEADERS, 1, &fill));
        input.extend(frame(HEADERS, END_HEADERS, 3, &[0xbe; 64]));
        let out = run(&input, 8192);
        let fs = frames(&out[PREFACE.len()..]);
        assert_eq!(fs.len(), 2);
        let mut h2 = Decoder::new(4096);
        h2.decode(&fs[0].3).unwrap();
        let refusal = h2.decode(&fs[1].3).unwrap();
        let size: usize = refusal
            .iter()
            .map(|f| f.name.len() + f.value.len() + 32)
            .sum();
        assert!(size > 4 * 16 * 1024 && fs[1].3.len() < 8192, "{size}");
    }

    #[test]
    fn malformed_fields_get_a_stream_reset_marker() {
        let mut block = go_block(b"demo.service");
        encode_literal(&mut block, b"te", b"gzip", false);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let fs = frames(&run(&input, 8192)[PREFACE.len()..]);
        let fields = decode(&fs[0].3);
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].name, b"connection");
    }

    #[test]
    fn one_block_per_pull_and_reads_only_when_needed() {
        let mut input = PREFACE.to_vec();
        let mut fill = vec![0x40];
        encode_str(&mut fill, b"x-fill", false);
        encode_str(&mut fill, &[b'a'; 3000], false);
        input.extend(frame(HEADERS, END_HEADERS, 1, &fill));
        for id in 0..100u32 {
            input.extend(frame(HEADERS, END_HEADERS, 3 + 2 * id, &[0xbe; 4]));
        }
        let mut r = Rewriter::new(Limits::default());
        assert!(input.len() <= READ_CHUNK);
        r.push(&input);
        let mut out = BytesMut::new();
        assert!(r.pull(&mut out));
        let after_first = out.len();
        // The preface and the first block only: the rest waits for h2.
        assert_eq!(frames(&out[PREFACE.len()..]).len(), 1);
        assert!(r.pull(&mut out));
        assert!(out.len() - after_first < 13_000);
    }

    #[test]
    fn debug_shows_no_header_values() {
        let mut block = go_block(b"demo.service");
        encode_int(&mut block, 23, 6, 0x40); // authorization, indexed
        encode_str(&mut block, b"Bearer s3cr3t-token", false);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &block));
        let mut r = Rewriter::new(Limits::default());
        r.push(&input);
        let mut out = BytesMut::new();
        while r.pull(&mut out) {}
        let shown = format!("{r:?} {:?}", r.decoder);
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("table_size"), "{shown}");
        let fields = Decoder::new(4096).decode(&block).unwrap();
        assert!(!format!("{fields:?}").contains("s3cr3t"));
    }

    #[test]
    fn non_http2_input_passes_through() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(run(input, 2), input);
    }
}
