//! The call's response body, which reports how the call ended to the
//! picker, and the gRPC header codecs (`grpc-timeout`, `cpu_usage`).

use super::*;

/// Reports a picked call's end to the picker exactly once.
pub(super) struct DoneGuard {
    pub(super) picker: Arc<dyn Picker>,
    pub(super) backend: Arc<Backend>,
    pub(super) start: Instant,
    pub(super) deadline: Instant,
    pub(super) finished: bool,
}

impl DoneGuard {
    pub(super) fn finish(&mut self, code: Code, transport_failure: bool, cpu_usage: Option<u64>) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.backend
            .endpoint
            .counters
            .inflight
            .fetch_sub(1, Ordering::Relaxed);
        self.picker.done(
            &self.backend.endpoint,
            &DoneInfo {
                start: self.start,
                end: Instant::now(),
                code,
                transport_failure,
                cpu_usage,
            },
        );
    }
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        // Dropped before the body ended: cancelled by the caller, or its
        // deadline passed.
        let code = if Instant::now() >= self.deadline {
            Code::DeadlineExceeded
        } else {
            Code::Cancelled
        };
        self.finish(code, false, None);
    }
}

/// The response body of a balanced call: the endpoint's body, which reports
/// the call's end (status and `cpu_usage` trailers) to the picker and fails
/// with `DeadlineExceeded` if the deadline passes while it streams.
pub struct ResponseBody {
    pub(super) inner: Body,
    pub(super) guard: Option<DoneGuard>,
    pub(super) header_code: Option<Code>,
    pub(super) header_cpu: Option<u64>,
    pub(super) deadline: Option<Pin<Box<Sleep>>>,
    pub(super) expired: bool,
}

impl ResponseBody {
    pub(super) fn finish(&mut self, code: Code, transport_failure: bool, cpu: Option<u64>) {
        if let Some(mut guard) = self.guard.take() {
            if transport_failure {
                guard.backend.transport_failed();
            }
            guard.finish(code, transport_failure, cpu);
        }
        self.deadline = None;
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("finished", &self.guard.is_none())
            .finish_non_exhaustive()
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get(GRPC_STATUS)
                        .map_or(Code::Unknown, |v| Code::from_bytes(v.as_bytes()));
                    let cpu = parse_cpu(trailers).or(this.header_cpu);
                    this.finish(code, false, cpu);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(status))) => {
                // A stream broken below gRPC (reset, connection lost) is a
                // transport failure; a deadline or cancellation is not.
                let transport = !matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled);
                this.finish(status.code(), transport, None);
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(None) => {
                let code = this.header_code.unwrap_or(Code::Unknown);
                let cpu = this.header_cpu;
                this.finish(code, false, cpu);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(sleep) = this.deadline.as_mut() {
                    if sleep.as_mut().poll(cx).is_ready() {
                        this.expired = true;
                        this.finish(Code::DeadlineExceeded, false, None);
                        return Poll::Ready(Some(Err(Status::deadline_exceeded(
                            "deadline exceeded while reading the response",
                        ))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub(super) fn parse_cpu(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CPU_USAGE)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|c| *c > 0)
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H M S m u n).
pub(super) fn parse_grpc_timeout(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?;
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    let (n, unit) = s.split_at(s.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

pub(super) fn encode_grpc_timeout(d: Duration) -> HeaderValue {
    // The most precise unit whose value fits in 8 digits.
    const MAX: u128 = 99_999_999;
    let (n, unit) = if d.as_micros() <= MAX {
        (d.as_micros(), 'u')
    } else if d.as_millis() <= MAX {
        (d.as_millis(), 'm')
    } else {
        (u128::from(d.as_secs()).min(MAX), 'S')
    };
    HeaderValue::from_str(&format!("{n}{unit}"))
        .unwrap_or_else(|_| HeaderValue::from_static("99999999S"))
}

pub(super) fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        cur = err.source();
    }
    false
}

pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = cause.source();
    }
    s
}
