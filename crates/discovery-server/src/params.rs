//! Parameter binding as the Go original does it (spec §2.1): form body then
//! query for url-encoded POSTs, query only for GETs, repeated keys for lists,
//! the first value for scalars.

use axum::body::Body;
use bytes::Bytes;
use http::{Method, Request, header};

use crate::reply::{BAD_REQUEST, Reply};

/// The bound key/value pairs of one request, in binding order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Params {
    pairs: Vec<(String, String)>,
}

fn parse_urlencoded(bytes: &[u8], out: &mut Vec<(String, String)>) {
    out.extend(form_urlencoded::parse(bytes).map(|(k, v)| (k.into_owned(), v.into_owned())));
}

impl Params {
    /// Binds a request's parameters, reading at most `max_body` bytes.
    pub(crate) async fn bind(req: Request<Body>, max_body: usize) -> Result<Params, Reply> {
        let (parts, body) = req.into_parts();
        let mut pairs = Vec::new();
        let query = parts.uri.query().unwrap_or("").as_bytes().to_vec();
        if parts.method != Method::POST {
            parse_urlencoded(&query, &mut pairs);
            return Ok(Params { pairs });
        }
        let ctype = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mime = ctype
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "application/x-www-form-urlencoded" => {
                let body = read_body(body, max_body).await?;
                parse_urlencoded(&body, &mut pairs);
                parse_urlencoded(&query, &mut pairs);
            }
            "multipart/form-data" => {
                parse_urlencoded(&query, &mut pairs);
                let body = read_body(body, max_body).await?;
                multipart(&ctype, body, &mut pairs).await?;
            }
            "application/json" | "application/xml" | "text/xml" => {
                return Err(Reply::message(BAD_REQUEST, "unsupported content type"));
            }
            _ => parse_urlencoded(&query, &mut pairs),
        }
        Ok(Params { pairs })
    }

    /// Parameters of an url-encoded form (a write inside a batch).
    pub(crate) fn from_query(q: &str) -> Params {
        let mut pairs = Vec::new();
        parse_urlencoded(q.as_bytes(), &mut pairs);
        Params { pairs }
    }

    /// The first value (possibly empty); `""` when absent.
    pub(crate) fn str(&self, name: &str) -> &str {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
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
        self.pairs
            .iter()
            .filter(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
            .collect()
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

async fn read_body(body: Body, max: usize) -> Result<Bytes, Reply> {
    axum::body::to_bytes(body, max).await.map_err(|_| {
        Reply::message(
            BAD_REQUEST,
            format!("request body exceeds limits.max_body_bytes ({max})"),
        )
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
