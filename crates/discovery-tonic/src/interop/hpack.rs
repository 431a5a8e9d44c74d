//! The HPACK pieces the authority shim needs (RFC 7541): a decoder that
//! keeps the peer's dynamic table, and the primitive encoders (integers,
//! plain or Huffman strings, literal fields). Public so that tests and tools
//! can write header blocks the way other HTTP/2 stacks do.
//!
//! ```
//! use discovery_tonic::interop::hpack::{Decoder, encode_literal};
//!
//! let mut block = Vec::new();
//! encode_literal(&mut block, b":authority", b"demo.service?subset=50", false);
//! let fields = Decoder::new(4096).decode(&block).unwrap();
//! assert_eq!(fields[0].value, b"demo.service?subset=50");
//! ```

use std::{borrow::Cow, collections::VecDeque, fmt, ops::ControlFlow, sync::OnceLock};

use super::huffman_table::{ENCODE_CODE_LENGTHS, ENCODE_CODES};

/// What HPACK adds to an entry's name and value lengths when it counts the
/// dynamic table's size.
const ENTRY_OVERHEAD: usize = 32;

/// Why a header block cannot be decoded. Every variant is a
/// `COMPRESSION_ERROR` for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The block ends inside a representation.
    #[error("header block truncated")]
    Truncated,
    /// An integer does not fit the decoder's bounds.
    #[error("integer overflow")]
    IntegerOverflow,
    /// Index 0, or past the static and dynamic tables.
    #[error("invalid table index {0}")]
    InvalidIndex(usize),
    /// A Huffman string with EOS, or with padding that is not a short run of
    /// 1 bits.
    #[error("invalid Huffman string")]
    InvalidHuffman,
    /// A dynamic table size update above the agreed maximum, or after a field.
    #[error("invalid dynamic table size update to {0}")]
    InvalidSizeUpdate(usize),
    /// The decoded fields exceed the decoder's bound on a header list.
    #[error("decoded header list larger than {0} bytes")]
    ListTooLarge(usize),
}

/// One decoded header field.
#[derive(Clone, PartialEq, Eq)]
pub struct Field {
    /// Lower-case name, pseudo-headers with their `:`.
    pub name: Vec<u8>,
    /// Raw value.
    pub value: Vec<u8>,
    /// Sent as "never indexed": intermediaries must keep it literal.
    pub never_indexed: bool,
}

/// Names only: values may be credentials (`authorization`, cookies).
impl fmt::Debug for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Field")
            .field("name", &String::from_utf8_lossy(&self.name))
            .field("value_len", &self.value.len())
            .field("never_indexed", &self.never_indexed)
            .finish()
    }
}

/// One decoded header field, borrowed from the decoder's tables or from the
/// block being decoded; handed to [`Decoder::decode_partial`]'s callback.
#[derive(Clone, Copy)]
pub struct FieldRef<'a> {
    /// Lower-case name, pseudo-headers with their `:`.
    pub name: &'a [u8],
    /// Raw value.
    pub value: &'a [u8],
    /// Sent as "never indexed".
    pub never_indexed: bool,
}

impl FieldRef<'_> {
    /// The size HTTP/2 counts for a header list entry (RFC 9113 6.5.2):
    /// name and value lengths plus 32.
    pub fn list_size(&self) -> usize {
        self.name.len() + self.value.len() + ENTRY_OVERHEAD
    }
}

impl fmt::Debug for FieldRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FieldRef")
            .field("name", &String::from_utf8_lossy(self.name))
            .field("value_len", &self.value.len())
            .field("never_indexed", &self.never_indexed)
            .finish()
    }
}

/// How far [`Decoder::decode_partial`] got through its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of complete representations consumed; the rest (if any) is the
    /// start of a representation cut short, to be retried with more input.
    pub consumed: usize,
    /// The callback asked to stop.
    pub stopped: bool,
}

/// A dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// A literal's name and value, borrowed where they need no decoding.
type Literal<'r> = (Cow<'r, [u8]>, Cow<'r, [u8]>);

/// Decoder state of one direction of one connection.
///
/// Its `Debug` shows sizes only: the dynamic table holds header values,
/// credentials among them.
pub struct Decoder {
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    allowed_max: usize,
    max_list: usize,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("entries", &self.table.len())
            .field("table_size", &self.size)
            .field("max_size", &self.max_size)
            .field("allowed_max", &self.allowed_max)
            .finish()
    }
}

impl Decoder {
    /// A decoder whose peer may use a dynamic table of up to `allowed_max`
    /// bytes (our `SETTINGS_HEADER_TABLE_SIZE`, 4096 unless changed).
    /// [`decode`](Self::decode) bounds header lists to 1 MiB.
    pub fn new(allowed_max: usize) -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: allowed_max,
            allowed_max,
            max_list: 1 << 20,
        }
    }

    /// Bounds the decoded size of one header list in
    /// [`decode`](Self::decode) (names, values and 32 bytes per field),
    /// against blocks that repeat a large table entry.
    pub fn with_max_list_size(mut self, max: usize) -> Self {
        self.max_list = max;
        self
    }

    /// Current dynamic table size in bytes, as HPACK counts it (32 bytes
    /// of overhead per entry).
    pub fn table_size(&self) -> usize {
        self.size
    }

    /// Bytes the dynamic table holds in memory (names and values).
    pub fn table_bytes(&self) -> usize {
        self.table.iter().map(|(n, v)| n.len() + v.len()).sum()
    }

    /// Decodes one complete header block, updating the dynamic table.
    pub fn decode(&mut self, src: &[u8]) -> Result<Vec<Field>, DecodeError> {
        let mut fields = Vec::new();
        let mut list_size = 0usize;
        let max_list = self.max_list;
        let progress = self.decode_partial(src, |f| {
            list_size += f.list_size();
            if list_size > max_list {
                return ControlFlow::Break(());
            }
            fields.push(Field {
                name: f.name.to_vec(),
                value: f.value.to_vec(),
                never_indexed: f.never_indexed,
            });
            ControlFlow::Continue(())
        })?;
        if progress.stopped {
            return Err(DecodeError::ListTooLarge(max_list));
        }
        if progress.consumed < src.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(fields)
    }

    /// Decodes the complete representations at the start of `src`, handing
    /// each field to `f` and updating the dynamic table, and stops before a
    /// representation that `src` cuts short (it leaves the table untouched,
    /// so it can be retried once more bytes arrived) or when `f` breaks.
    ///
    /// A dynamic table size update is accepted only before the first field
    /// of the call. That is h2's rule: it decodes each frame of a block as
    /// it arrives, with the bytes a previous frame left undecoded, and
    /// allows size updates at the start of each such call.
    pub fn decode_partial(
        &mut self,
        src: &[u8],
        mut f: impl FnMut(FieldRef<'_>) -> ControlFlow<()>,
    ) -> Result<Progress, DecodeError> {
        let mut rest = src;
        let mut can_resize = true;
        loop {
            let consumed = src.len() - rest.len();
            let Some(&first) = rest.first() else {
                return Ok(Progress {
                    consumed,
                    stopped: false,
                });
            };
            let mut cur = rest;
            let flow = match self.one(&mut cur, first, &mut can_resize, &mut f) {
                Ok(flow) => flow,
                Err(DecodeError::Truncated) => {
                    return Ok(Progress {
                        consumed,
                        stopped: false,
                    });
                }
                Err(e) => return Err(e),
            };
            rest = cur;
            if flow.is_break() {
                return Ok(Progress {
                    consumed: src.len() - rest.len(),
                    stopped: true,
                });
            }
        }
    }

    /// Decodes the representation at the start of `src`, advancing it.
    fn one(
        &mut self,
        src: &mut &[u8],
        first: u8,
        can_resize: &mut bool,
        f: &mut impl FnMut(FieldRef<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, DecodeError> {
        if first & 0x80 != 0 {
            let index = decode_int(src, 7)?;
            *can_resize = false;
            let (name, value) = self.get(index)?;
            return Ok(f(FieldRef {
                name,
                value,
                never_indexed: false,
            }));
        }
        if first & 0xc0 == 0x40 {
            let (name, value) = self.literal(src, 6)?;
            // Owned: the table keeps its own copy, and may evict the entry
            // the name came from.
            let (name, value) = (name.into_owned(), value.into_owned());
            *can_resize = false;
            self.insert(&name, &value);
            return Ok(f(FieldRef {
                name: &name,
                value: &value,
                never_indexed: false,
            }));
        }
        if first & 0xe0 == 0x20 {
            let new = decode_int(src, 5)?;
            if new > self.allowed_max || !*can_resize {
                return Err(DecodeError::InvalidSizeUpdate(new));
            }
            self.max_size = new;
            self.evict(0);
            return Ok(ControlFlow::Continue(()));
        }
        let never_indexed = first & 0x10 != 0;
        let (name, value) = self.literal(src, 4)?;
        *can_resize = false;
        Ok(f(FieldRef {
            name: &name,
            value: &value,
            never_indexed,
        }))
    }

    /// A literal's name and value. An indexed name is looked up before the
    /// value is read, as h2 does, so a bad index fails even when the value
    /// has not arrived yet.
    fn literal<'r, 'b: 'r>(
        &'r self,
        src: &mut &'b [u8],
        prefix: u8,
    ) -> Result<Literal<'r>, DecodeError> {
        let index = decode_int(src, prefix)?;
        let name = if index == 0 {
            decode_str(src)?
        } else {
            Cow::Borrowed(self.get(index)?.0)
        };
        Ok((name, decode_str(src)?))
    }

    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), DecodeError> {
        match index {
            0 => Err(DecodeError::InvalidIndex(0)),
            i if i <= STATIC.len() => {
                let (n, v) = STATIC[i - 1];
                Ok((n.as_bytes(), v.as_bytes()))
            }
            i => self
                .table
                .get(i - STATIC.len() - 1)
                .map(|(n, v)| (&n[..], &v[..]))
                .ok_or(DecodeError::InvalidIndex(i)),
        }
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            // HPACK: adding an entry larger than the whole table empties it
            // and stores nothing.
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front((name.into(), value.into()));
    }

    /// Evicts oldest entries until `incoming` more bytes fit.
    fn evict(&mut self, incoming: usize) {
        while self.size + incoming > self.max_size {
            let Some((n, v)) = self.table.pop_back() else {
                break;
            };
            self.size -= n.len() + v.len() + ENTRY_OVERHEAD;
        }
    }
}

/// Decodes an HPACK integer with a `prefix`-bit prefix: values below
/// `2^prefix - 1` fit the prefix; larger ones continue in 7-bit groups,
/// low bits first, each byte's top bit saying another follows.
fn decode_int(src: &mut &[u8], prefix: u8) -> Result<usize, DecodeError> {
    let mask = (1u16 << prefix) as u8 - 1;
    let (&first, rest) = src.split_first().ok_or(DecodeError::Truncated)?;
    *src = rest;
    let mut value = usize::from(first & mask);
    if value < usize::from(mask) {
        return Ok(value);
    }
    let mut shift = 0u32;
    loop {
        let (&b, rest) = src.split_first().ok_or(DecodeError::Truncated)?;
        *src = rest;
        // Four continuation bytes reach 2^28, far past any sane length.
        if shift > 21 {
            return Err(DecodeError::IntegerOverflow);
        }
        value += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
}

fn decode_str<'b>(src: &mut &'b [u8]) -> Result<Cow<'b, [u8]>, DecodeError> {
    let huffman = src.first().ok_or(DecodeError::Truncated)? & 0x80 != 0;
    let len = decode_int(src, 7)?;
    if len > src.len() {
        return Err(DecodeError::Truncated);
    }
    let (raw, rest) = src.split_at(len);
    *src = rest;
    if huffman {
        huffman_decode(raw).map(Cow::Owned)
    } else {
        Ok(Cow::Borrowed(raw))
    }
}

/// Appends `value` as an integer with an `prefix`-bit prefix, the first byte
/// OR-ed with `flags` (the prefix-and-continuation form `decode_int` reads).
pub fn encode_int(out: &mut Vec<u8>, mut value: usize, prefix: u8, flags: u8) {
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

/// Appends a string literal, Huffman-coded when `huffman`.
pub fn encode_str(out: &mut Vec<u8>, s: &[u8], huffman: bool) {
    if huffman {
        let coded = huffman_encode(s);
        encode_int(out, coded.len(), 7, 0x80);
        out.extend_from_slice(&coded);
    } else {
        encode_int(out, s.len(), 7, 0);
        out.extend_from_slice(s);
    }
}

/// Appends a field as a literal with a literal name, not added to any
/// table: "never indexed" when `never_indexed`, else "without indexing".
/// Such a block leaves the receiver's dynamic table untouched.
pub fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8], never_indexed: bool) {
    out.push(if never_indexed { 0x10 } else { 0x00 });
    encode_str(out, name, false);
    encode_str(out, value, false);
}

/// Huffman-codes `s`, padding the last byte with 1 bits.
pub fn huffman_encode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut acc: u64 = 0;
    let mut bits = 0u32;
    for &b in s {
        let len = u32::from(ENCODE_CODE_LENGTHS[usize::from(b)]);
        acc = (acc << len) | u64::from(ENCODE_CODES[usize::from(b)]);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
    }
    out
}

/// Canonical decoding tables: for each code length, the first code and the
/// position of its first symbol in `symbols` (sorted by length, then code).
struct Canonical {
    first_code: [u32; 31],
    count: [u32; 31],
    offset: [usize; 31],
    symbols: Vec<u8>,
}

fn canonical() -> &'static Canonical {
    static TABLE: OnceLock<Canonical> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut order: Vec<u8> = (0..=255).collect();
        order.sort_by_key(|&s| {
            (
                ENCODE_CODE_LENGTHS[usize::from(s)],
                ENCODE_CODES[usize::from(s)],
            )
        });
        let mut t = Canonical {
            first_code: [0; 31],
            count: [0; 31],
            offset: [0; 31],
            symbols: order,
        };
        for (pos, &s) in t.symbols.iter().enumerate() {
            let len = usize::from(ENCODE_CODE_LENGTHS[usize::from(s)]);
            if t.count[len] == 0 {
                t.first_code[len] = ENCODE_CODES[usize::from(s)];
                t.offset[len] = pos;
            }
            t.count[len] += 1;
        }
        t
    })
}

/// Decodes an HPACK Huffman string: EOS inside the string, or
/// padding longer than 7 bits or not all 1s, is an error.
pub fn huffman_decode(src: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let t = canonical();
    let mut out = Vec::with_capacity(src.len() * 8 / 5);
    let mut code: u32 = 0;
    let mut len = 0usize;
    for &byte in src {
        for i in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> i) & 1);
            len += 1;
            // The code is canonical: codes of one length are consecutive.
            if t.count[len] > 0 && code >= t.first_code[len] {
                let k = code - t.first_code[len];
                if k < t.count[len] {
                    out.push(t.symbols[t.offset[len] + k as usize]);
                    code = 0;
                    len = 0;
                    continue;
                }
            }
            if len >= 30 {
                // Only EOS is 30 bits of 1s; it must not appear.
                return Err(DecodeError::InvalidHuffman);
            }
        }
    }
    if len > 7 || code != (1 << len) - 1 {
        return Err(DecodeError::InvalidHuffman);
    }
    Ok(out)
}

/// The static table (RFC 7541, Appendix A); index 1 is the first entry.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn pairs(fields: &[Field]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|f| {
                (
                    String::from_utf8(f.name.clone()).unwrap(),
                    String::from_utf8(f.value.clone()).unwrap(),
                )
            })
            .collect()
    }

    fn owned(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// RFC 7541 C.4: three requests with Huffman, sharing the dynamic table.
    #[test]
    fn rfc7541_c4_requests_with_huffman() {
        let mut d = Decoder::new(4096);
        let r1 = d
            .decode(&hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"))
            .unwrap();
        assert_eq!(
            pairs(&r1),
            owned(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ])
        );
        assert_eq!(d.table_size(), 57);
        let r2 = d.decode(&hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
        assert_eq!(r2[3].value, b"www.example.com");
        assert_eq!(r2[4].value, b"no-cache");
        assert_eq!(d.table_size(), 110);
        let r3 = d
            .decode(&hex(
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ))
            .unwrap();
        assert_eq!(
            pairs(&r3),
            owned(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(d.table_size(), 164);
    }

    /// RFC 7541 C.6: responses with a 256-byte table, so entries are evicted.
    #[test]
    fn rfc7541_c6_responses_evict() {
        let mut d = Decoder::new(256);
        d.decode(&hex(
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        ))
        .unwrap();
        assert_eq!(d.table_size(), 222);
        let r2 = d.decode(&hex("4883 640e ffc1 c0bf")).unwrap();
        assert_eq!(r2[0].value, b"307");
        assert_eq!(r2[3].value, b"https://www.example.com");
        assert_eq!(d.table_size(), 222);
        let r3 = d
            .decode(&hex(
                "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab \
                 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f \
                 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
            ))
            .unwrap();
        assert_eq!(
            r3.last().unwrap().value,
            b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
        );
        assert_eq!(d.table_size(), 215);
    }

    #[test]
    fn huffman_round_trips_every_octet() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(huffman_decode(&huffman_encode(&all)).unwrap(), all);
        let s = b"demo.service?subset=50";
        assert_eq!(huffman_decode(&huffman_encode(s)).unwrap(), s);
    }

    #[test]
    fn huffman_rejects_bad_padding_and_eos() {
        // 'a' is 00011 (5 bits); pad 000 is not all ones.
        assert_eq!(huffman_decode(&[0x18]), Err(DecodeError::InvalidHuffman));
        // A whole byte of padding.
        assert_eq!(
            huffman_decode(&[0x1f, 0xff]),
            Err(DecodeError::InvalidHuffman)
        );
        // EOS.
        assert_eq!(
            huffman_decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::InvalidHuffman)
        );
    }

    #[test]
    fn integers_round_trip_and_overflow_is_refused() {
        for v in [0usize, 9, 10, 30, 31, 127, 1337, 1 << 20] {
            let mut out = Vec::new();
            encode_int(&mut out, v, 5, 0);
            let mut src = &out[..];
            assert_eq!(decode_int(&mut src, 5).unwrap(), v);
            assert!(src.is_empty());
        }
        let mut src: &[u8] = &[0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(decode_int(&mut src, 5), Err(DecodeError::IntegerOverflow));
    }

    #[test]
    fn bad_blocks_are_errors_not_panics() {
        let mut d = Decoder::new(4096);
        assert_eq!(d.decode(&[0x80]), Err(DecodeError::InvalidIndex(0)));
        assert_eq!(d.decode(&[0xbe]), Err(DecodeError::InvalidIndex(62)));
        assert_eq!(d.decode(&[0x41, 0x05, b'a']), Err(DecodeError::Truncated));
        // Size update above the limit, and after a field.
        assert!(matches!(
            d.decode(&[0x3f, 0xe1, 0x3f]),
            Err(DecodeError::InvalidSizeUpdate(_))
        ));
        assert!(matches!(
            d.decode(&[0x82, 0x20]),
            Err(DecodeError::InvalidSizeUpdate(0))
        ));
    }

    #[test]
    fn repeated_large_entry_hits_the_list_bound() {
        let mut d = Decoder::new(4096).with_max_list_size(10_000);
        let mut block = vec![0x40];
        encode_str(&mut block, b"x", false);
        encode_str(&mut block, &[b'a'; 3000], false);
        block.extend([0xbe; 10]);
        assert_eq!(d.decode(&block), Err(DecodeError::ListTooLarge(10_000)));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut d = Decoder::new(4096);
            let len = (seed % 64) as usize;
            let block: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = d.decode(&block);
        }
    }
}
