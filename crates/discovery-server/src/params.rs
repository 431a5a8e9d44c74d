//! Parameter binding as the Go original does it (docs/protocol.md#parameters): form body then
//! query for url-encoded POSTs, query only for GETs, repeated keys for lists,
//! the first value for scalars.

use std::ops::Range;

use axum::body::Body;
use bytes::Bytes;
use http::{Method, Request, header};

use crate::reply::{BAD_REQUEST, Reply};

/// Where a decoded key or value lives: most are plain slices of the
/// request's text, so binding allocates only for escaped text.
#[derive(Debug, Clone)]
enum Piece {
    At(Range<usize>),
    Owned(String),
}

/// The bound key/value pairs of one request, in binding order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Params {
    /// The form body (when it is UTF-8) followed by the query: validated
    /// once here, so that reading a parameter is a slice, not a check.
    text: String,
    pairs: Vec<(Piece, Piece)>,
    /// The request carried a valid peer signature (see
    /// [`crate::auth::sign`]).
    pub(crate) signed: bool,
    /// The request came over a connection with a client certificate
    /// verified against `[tls] ca` (see [`crate::tls::VerifiedClient`]).
    pub(crate) certified: bool,
}

/// The (key, value) ranges of an url-encoded text, empty pairs skipped,
/// a pair without `=` an empty value: the url-decoder's splitting.
fn split_pairs(bytes: &[u8]) -> impl Iterator<Item = (Range<usize>, Range<usize>)> + '_ {
    let mut at = 0;
    bytes.split(|b| *b == b'&').filter_map(move |pair| {
        let here = at;
        at += pair.len() + 1;
        let end = here + pair.len();
        match pair.iter().position(|b| *b == b'=') {
            _ if pair.is_empty() => None,
            Some(eq) => Some((here..here + eq, here + eq + 1..end)),
            None => Some((here..end, end..end)),
        }
    })
}

/// Appends the pairs of the url-encoded `text[from..]`, as ranges of
/// `text` where no decoding was needed.
fn parse_at(text: &str, from: usize, out: &mut Vec<(Piece, Piece)>) {
    let rest = &text.as_bytes()[from..];
    out.reserve(rest.iter().filter(|b| **b == b'&').count() + 1);
    let at = |r: Range<usize>| from + r.start..from + r.end;
    out.extend(split_pairs(rest).map(|(k, v)| (piece(text, at(k)), piece(text, at(v)))));
}

/// A key or value: a range of `text` when nothing in it is escaped.
fn piece(text: &str, r: Range<usize>) -> Piece {
    let raw = &text.as_bytes()[r.clone()];
    if raw.iter().any(|b| *b == b'%' || *b == b'+') {
        Piece::Owned(decode(raw))
    } else {
        Piece::At(r)
    }
}

/// `+` as space, `%XX` as its byte (a malformed escape stays as it is),
/// then UTF-8 with invalid bytes replaced: the url-decoder's rules, in
/// one allocation.
fn decode(raw: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                raw.get(i + 1).and_then(|b| hex(*b)),
                raw.get(i + 2).and_then(|b| hex(*b)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Appends the pairs of bytes that are not UTF-8, every one decoded
/// (invalid bytes replaced).
fn parse_owned(bytes: &[u8], out: &mut Vec<(Piece, Piece)>) {
    out.extend(split_pairs(bytes).map(|(k, v)| {
        (
            Piece::Owned(decode(&bytes[k])),
            Piece::Owned(decode(&bytes[v])),
        )
    }));
}

impl Params {
    /// Parameters of the url-encoded `query`, after those already bound.
    fn with_query(mut self, query: &str) -> Self {
        let from = self.text.len();
        self.text.push_str(query);
        parse_at(&self.text, from, &mut self.pairs);
        self
    }

    /// Binds a request's parameters, reading at most `max_body` bytes.
    pub(crate) async fn bind(req: Request<Body>, max_body: usize) -> Result<Params, Reply> {
        let (parts, body) = req.into_parts();
        let query = parts.uri.query().unwrap_or("");
        if parts.method != Method::POST {
            return Ok(Params::default().with_query(query));
        }
        let ctype = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = ctype.split(';').next().unwrap_or("").trim();
        if mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            let body = read_body(body, max_body).await?;
            let mut p = Params::default();
            match std::str::from_utf8(&body) {
                Ok(text) => {
                    p.text.reserve(text.len() + query.len());
                    p.text.push_str(text);
                    parse_at(&p.text, 0, &mut p.pairs);
                }
                Err(_) => parse_owned(&body, &mut p.pairs),
            }
            Ok(p.with_query(query))
        } else if mime.eq_ignore_ascii_case("multipart/form-data") {
            let mut p = Params::default().with_query(query);
            let ctype = ctype.to_string();
            let body = read_body(body, max_body).await?;
            let mut parts = Vec::new();
            multipart(&ctype, body, &mut parts).await?;
            p.pairs.extend(
                parts
                    .into_iter()
                    .map(|(k, v)| (Piece::Owned(k), Piece::Owned(v))),
            );
            Ok(p)
        } else if ["application/json", "application/xml", "text/xml"]
            .iter()
            .any(|m| mime.eq_ignore_ascii_case(m))
        {
            Err(Reply::message(BAD_REQUEST, "unsupported content type"))
        } else {
            Ok(Params::default().with_query(query))
        }
    }

    /// Parameters of an url-encoded form (a write inside a batch).
    pub(crate) fn from_query(q: &str) -> Params {
        Params::default().with_query(q)
    }

    fn text<'a>(&'a self, piece: &'a Piece) -> &'a str {
        match piece {
            // Ranges were cut from `text` by the parser, on char boundaries.
            Piece::At(r) => self.text.get(r.clone()).unwrap_or(""),
            Piece::Owned(s) => s,
        }
    }

    /// Values of `name`, in order.
    fn values<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.pairs
            .iter()
            .filter(move |(k, _)| self.text(k) == name)
            .map(|(_, v)| self.text(v))
    }

    /// The first value (possibly empty); `""` when absent.
    pub(crate) fn str(&self, name: &str) -> &str {
        self.values(name).next().unwrap_or("")
    }

    /// A required string: present and non-empty.
    pub(crate) fn required(&self, name: &str) -> Result<&str, Reply> {
        match self.str(name) {
            "" => Err(Reply::bad_param(name, "required")),
            v => Ok(v),
        }
    }

    /// Every non-empty value, in order; never split on commas.
    pub(crate) fn list(&self, name: &str) -> Vec<&str> {
        self.values(name).filter(|v| !v.is_empty()).collect()
    }

    /// An unsigned 32-bit integer without sign; `0` when absent or empty.
    pub(crate) fn u32(&self, name: &str) -> Result<u32, Reply> {
        parse_u32(self.str(name)).map_err(|r| Reply::bad_param(name, r))
    }

    /// A signed 64-bit integer; `0` when absent or empty.
    pub(crate) fn i64(&self, name: &str) -> Result<i64, Reply> {
        parse_i64(self.str(name)).map_err(|r| Reply::bad_param(name, r))
    }

    /// Every non-empty value as a signed integer.
    pub(crate) fn i64_list(&self, name: &str) -> Result<Vec<i64>, Reply> {
        self.list(name)
            .into_iter()
            .map(|v| parse_i64(v).map_err(|r| Reply::bad_param(name, r)))
            .collect()
    }

    /// Go's `strconv.ParseBool`; anything else is `false`.
    pub(crate) fn bool(&self, name: &str) -> bool {
        matches!(self.str(name), "1" | "t" | "T" | "TRUE" | "true" | "True")
    }
}

fn parse_u32(v: &str) -> Result<u32, String> {
    if v.is_empty() {
        return Ok(0);
    }
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{v:?} is not an unsigned integer"));
    }
    v.parse::<u32>().map_err(|_| format!("{v} is out of range"))
}

fn parse_i64(v: &str) -> Result<i64, String> {
    if v.is_empty() {
        return Ok(0);
    }
    let digits = v.strip_prefix(['+', '-']).unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{v:?} is not an integer"));
    }
    v.parse::<i64>().map_err(|_| format!("{v} is out of range"))
}

/// Reads a whole body of at most `max` bytes; a late body (see
/// `conn::TimedBody`) and an oversized one are told apart.
pub(crate) async fn read_body(body: Body, max: usize) -> Result<Bytes, Reply> {
    axum::body::to_bytes(body, max).await.map_err(|e| {
        if let Some(late) = crate::conn::body_timeout(&e) {
            Reply::message(BAD_REQUEST, late)
        } else {
            Reply::message(
                BAD_REQUEST,
                format!("request body exceeds limits.max_body_bytes ({max})"),
            )
        }
    })
}

async fn multipart(ctype: &str, body: Bytes, out: &mut Vec<(String, String)>) -> Result<(), Reply> {
    let bad =
        |e: multer::Error| Reply::message(BAD_REQUEST, format!("invalid multipart body: {e}"));
    let boundary = multer::parse_boundary(ctype).map_err(bad)?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut mp = multer::Multipart::new(stream, boundary);
    while let Some(field) = mp.next_field().await.map_err(bad)? {
        // Only text parts bind; file parts are skipped.
        if field.file_name().is_some() {
            continue;
        }
        let Some(name) = field.name().map(str::to_string) else {
            continue;
        };
        let text = field.text().await.map_err(bad)?;
        out.push((name, text));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_drop_empties_and_never_split() {
        let p = Params::from_query("appid=a,b&addrs=&addrs=x://h:1&appid=c");
        assert_eq!(p.list("appid"), ["a,b", "c"]);
        assert_eq!(p.list("addrs"), ["x://h:1"]);
        assert_eq!(p.str("appid"), "a,b");
    }

    #[test]
    fn binding_decodes_as_the_url_decoder_does() {
        for q in [
            "a=1&b=2",
            "a=1&&b=&=3&c&d=x=y",
            "k%20ey=v+al%26ue&plain=p&e=%zz&u=%C3%A9&x=%FF",
            "&",
            "",
            "only",
            "a=b+c=d",
            "%=%2&%4=%41%4g%%25",
            "m=%7B%22weight%22%3A%2210%22%7D&h=%E4%B8%AD",
        ] {
            let p = Params::from_query(q);
            let ours: Vec<(&str, &str)> = p
                .pairs
                .iter()
                .map(|(k, v)| (p.text(k), p.text(v)))
                .collect();
            let theirs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let theirs: Vec<(&str, &str)> = theirs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(ours, theirs, "{q:?}");
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_decode_as_the_url_decoder_does() {
        let raw: &[u8] = b"a=\xff\xfe&k\xc3=v%C3%A9+x&&%zz=%4";
        let mut pairs = Vec::new();
        parse_owned(raw, &mut pairs);
        let p = Params {
            pairs,
            ..Params::default()
        };
        let ours: Vec<(&str, &str)> = p
            .pairs
            .iter()
            .map(|(k, v)| (p.text(k), p.text(v)))
            .collect();
        let theirs: Vec<(String, String)> = form_urlencoded::parse(raw)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let theirs: Vec<(&str, &str)> = theirs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn integers() {
        assert_eq!(parse_u32("1"), Ok(1));
        assert!(parse_u32("+1").is_err());
        assert!(parse_u32("-1").is_err());
        assert!(parse_u32("4294967296").is_err());
        assert_eq!(parse_i64("-5"), Ok(-5));
        assert_eq!(parse_i64("+5"), Ok(5));
        assert!(parse_i64("abc").is_err());
        assert!(parse_i64("-").is_err());
        assert_eq!(parse_i64(""), Ok(0));
    }

    #[test]
    fn booleans_follow_parse_bool() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert!(Params::from_query(&format!("b={t}")).bool("b"));
        }
        for f in ["0", "false", "yes", ""] {
            assert!(!Params::from_query(&format!("b={f}")).bool("b"));
        }
    }
}
