//! The `{code,message,ttl,data}` envelope, always HTTP 200, byte for byte as
//! the Go original writes it.

use std::{borrow::Cow, fmt::Write as _};

use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, StatusCode, header};

use naming::code::Code;

// The wire codes, as the handlers name them (see `naming::code::Code`).
pub(crate) const OK: i64 = Code::Ok.as_i64();
pub(crate) const NOT_MODIFIED: i64 = Code::NotModified.as_i64();
pub(crate) const BAD_REQUEST: i64 = Code::BadRequest.as_i64();
pub(crate) const NOT_FOUND: i64 = Code::NotFound.as_i64();
pub(crate) const CONFLICT: i64 = Code::Conflict.as_i64();
pub(crate) const SERVER_ERROR: i64 = Code::ServerError.as_i64();
pub(crate) const UNAUTHORIZED: i64 = Code::Unauthorized.as_i64();

/// One answer of the discovery API.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    code: i64,
    message: Cow<'static, str>,
    /// Raw JSON of `data`; `None` omits the key.
    data: Option<Bytes>,
}

const NULL: Bytes = Bytes::from_static(b"null");

impl Reply {
    /// `{"code":0,"message":"0","ttl":1}`.
    pub(crate) fn ok() -> Self {
        Self::code(OK)
    }

    /// A code whose message is the code itself.
    pub(crate) fn code(code: i64) -> Self {
        Reply {
            code,
            message: Cow::Owned(code.to_string()),
            data: None,
        }
    }

    /// A code with a short explanatory message.
    pub(crate) fn message(code: i64, message: impl Into<Cow<'static, str>>) -> Self {
        Reply {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// `-400` naming the parameter.
    pub(crate) fn bad_param(name: &str, reason: impl std::fmt::Display) -> Self {
        Self::message(BAD_REQUEST, format!("invalid parameter '{name}': {reason}"))
    }

    /// The answer's code.
    pub(crate) fn code_of(&self) -> i64 {
        self.code
    }

    /// The answer's raw `data`, if any.
    pub(crate) fn data_of(&self) -> Option<&Bytes> {
        self.data.as_ref()
    }

    /// Attaches raw JSON `data`.
    pub(crate) fn data(mut self, json: Bytes) -> Self {
        self.data = Some(json);
        self
    }

    /// Attaches `"data":null`.
    pub(crate) fn null(self) -> Self {
        self.data(NULL)
    }

    /// Attaches a serializable `data`.
    pub(crate) fn json<T: serde::Serialize>(self, value: &T) -> Self {
        // Sized for an instance, the common case, so that it is written
        // without regrowing.
        let mut json = Vec::with_capacity(512);
        serde_json::to_writer(&mut json, value).expect("serializing to memory");
        self.data(Bytes::from(json))
    }
}

fn json_response(code: i64, body: Bytes) -> Response {
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert("kratos-status-code", HeaderValue::from(code));
    res
}

fn push_str(buf: &mut BytesMut, s: &str) {
    // serde_json escapes exactly as encoding/json does for the characters
    // that can appear here; `<`, `>` and `&` are left alone, which Go escapes
    // but every JSON parser reads the same.
    let quoted = serde_json::to_string(s).expect("string serializes");
    buf.put_slice(quoted.as_bytes());
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut buf = BytesMut::with_capacity(48 + self.data.as_ref().map_or(0, Bytes::len));
        let mut head = String::with_capacity(24);
        let _ = write!(head, "{{\"code\":{},\"message\":", self.code);
        buf.put_slice(head.as_bytes());
        push_str(&mut buf, &self.message);
        buf.put_slice(b",\"ttl\":1");
        if let Some(data) = &self.data {
            buf.put_slice(b",\"data\":");
            buf.put_slice(data);
        }
        buf.put_u8(b'}');
        json_response(self.code, buf.freeze())
    }
}

/// `poll` of an unknown appid: `{"code":-404,"message":"<appid> not found"}`.
pub(crate) fn poll_miss(appid: &str) -> Response {
    let mut buf = BytesMut::new();
    buf.put_slice(b"{\"code\":-404,\"message\":");
    push_str(&mut buf, &format!("{appid} not found"));
    buf.put_u8(b'}');
    json_response(NOT_FOUND, buf.freeze())
}

/// The `polls` answer with data: keys sorted as Go renders a map, no `ttl`:
/// `{"code":0,"data":{…},"error":{"-404":[…]|null},"message":"0"}`.
pub(crate) fn polls_map<'a>(
    data: impl IntoIterator<Item = (&'a str, &'a Bytes)>,
    missing: &[&str],
) -> Response {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_slice(b"{\"code\":0,\"data\":{");
    for (i, (appid, json)) in data.into_iter().enumerate() {
        if i > 0 {
            buf.put_u8(b',');
        }
        push_str(&mut buf, appid);
        buf.put_u8(b':');
        buf.put_slice(json);
    }
    buf.put_slice(b"},\"error\":{\"-404\":");
    if missing.is_empty() {
        buf.put_slice(b"null");
    } else {
        let list = serde_json::to_vec(missing).expect("strings serialize");
        buf.put_slice(&list);
    }
    buf.put_slice(b"},\"message\":\"0\"}");
    json_response(OK, buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(r: Response) -> (String, String) {
        let code = r.headers()["kratos-status-code"]
            .to_str()
            .unwrap()
            .to_string();
        let b = r.into_body().collect().await.unwrap().to_bytes();
        (String::from_utf8(b.to_vec()).unwrap(), code)
    }

    #[tokio::test]
    async fn shapes() {
        assert_eq!(
            body(Reply::ok().into_response()).await,
            (r#"{"code":0,"message":"0","ttl":1}"#.into(), "0".into())
        );
        assert_eq!(
            body(Reply::code(NOT_FOUND).null().into_response()).await.0,
            r#"{"code":-404,"message":"-404","ttl":1,"data":null}"#
        );
        assert_eq!(
            body(poll_miss("a\"b")).await.0,
            r#"{"code":-404,"message":"a\"b not found"}"#
        );
        let x = Bytes::from_static(b"{}");
        assert_eq!(
            body(polls_map([("a", &x)], &["z", "y"])).await.0,
            r#"{"code":0,"data":{"a":{}},"error":{"-404":["z","y"]},"message":"0"}"#
        );
        assert_eq!(
            body(polls_map([], &[])).await.0,
            r#"{"code":0,"data":{},"error":{"-404":null},"message":"0"}"#
        );
    }
}
