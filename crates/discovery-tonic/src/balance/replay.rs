//! Sending a request again after the server refused it: which failures
//! mean the server never processed the request, and a request body that
//! can be replayed from its start without buffering it up front.

use super::*;

/// Request body bytes kept for a replay. A body read further than this
/// before its request was refused cannot be sent again (its start is gone);
/// a refused request whose body was never read is always replayable.
pub(super) const REPLAY_LIMIT: usize = 64 * 1024;

/// Whether an attempt's error proves that the server never processed the
/// request, so that sending it elsewhere cannot run it twice, whatever the
/// method (RFC 9113, sections 8.7 and 6.8):
///
/// * `RST_STREAM(REFUSED_STREAM)` from the peer: refused before any
///   processing.
/// * A GOAWAY from the peer, as h2 reports it: only to streams above the
///   GOAWAY's last stream id, and to requests started after it arrived.
///   Streams the server did accept end otherwise (their response, or a
///   broken pipe when the connection closes).
/// * hyper's canceled requests: never handed to the connection, which had
///   closed or was not ready.
/// * A failed connect (tonic's `ConnectError`): the channel was
///   reconnecting, and nothing was written.
pub(super) fn never_processed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            let refused = h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM);
            return h2.is_remote() && (refused || h2.is_go_away());
        }
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
            || err.is::<tonic::ConnectError>()
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A request body recorded as it is read, so that a refused request can be
/// sent again from its start: the recorded frames first, then the rest of
/// the original body. Attempts are sequential; a superseded attempt's body
/// fails instead of reading on.
#[derive(Clone)]
pub(super) struct Replay {
    state: Arc<Mutex<ReplayState>>,
}

struct ReplayState {
    /// What is left of the original body.
    rest: Option<Body>,
    /// Frames read from it so far.
    seen: Vec<Recorded>,
    seen_bytes: usize,
    /// More than [`REPLAY_LIMIT`] read, or the body failed: no replay.
    spoilt: bool,
    /// The attempt whose body may read.
    attempt: u64,
}

enum Recorded {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Replay {
    pub(super) fn new(body: Body) -> Self {
        Replay {
            state: Arc::new(Mutex::new(ReplayState {
                rest: Some(body),
                seen: Vec::new(),
                seen_bytes: 0,
                spoilt: false,
                attempt: 0,
            })),
        }
    }

    /// The first attempt's body.
    pub(super) fn first(&self) -> Body {
        Body::new(ReplayBody {
            state: self.state.clone(),
            attempt: 0,
            pos: 0,
        })
    }

    /// A body for the next attempt, from the start; `None` when the start
    /// is no longer known.
    pub(super) fn again(&self) -> Option<Body> {
        let attempt = {
            let mut st = self.state.lock();
            if st.spoilt {
                return None;
            }
            st.attempt += 1;
            st.attempt
        };
        // Unlocked: `Body::new` asks the body whether it is empty.
        Some(Body::new(ReplayBody {
            state: self.state.clone(),
            attempt,
            pos: 0,
        }))
    }
}

struct ReplayBody {
    state: Arc<Mutex<ReplayState>>,
    attempt: u64,
    /// Recorded frames this attempt has sent.
    pos: usize,
}

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let mut st = this.state.lock();
        if st.attempt != this.attempt {
            // The refused stream's body may still be polled while the next
            // attempt reads: it must not take the next attempt's frames.
            return Poll::Ready(Some(Err(Status::cancelled(
                "request sent again on another endpoint",
            ))));
        }
        if let Some(frame) = st.seen.get(this.pos) {
            this.pos += 1;
            return Poll::Ready(Some(Ok(match frame {
                Recorded::Data(d) => Frame::data(d.clone()),
                Recorded::Trailers(t) => Frame::trailers(t.clone()),
            })));
        }
        let Some(rest) = st.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(rest).poll_frame(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                st.rest = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                st.rest = None;
                st.spoilt = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if !st.spoilt {
                    let (recorded, len) = match frame.data_ref() {
                        Some(d) => (Recorded::Data(d.clone()), d.len()),
                        None => match frame.trailers_ref() {
                            Some(t) => (Recorded::Trailers(t.clone()), 0),
                            None => return Poll::Ready(Some(Ok(frame))),
                        },
                    };
                    st.seen_bytes += len;
                    if st.seen_bytes > REPLAY_LIMIT {
                        st.spoilt = true;
                        st.seen = Vec::new();
                    } else {
                        st.seen.push(recorded);
                        this.pos += 1;
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let st = self.state.lock();
        st.attempt == self.attempt
            && self.pos >= st.seen.len()
            && st.rest.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let st = self.state.lock();
        if st.attempt != self.attempt {
            return SizeHint::default();
        }
        let replayed: u64 = st.seen[self.pos.min(st.seen.len())..]
            .iter()
            .map(|f| match f {
                Recorded::Data(d) => d.len() as u64,
                Recorded::Trailers(_) => 0,
            })
            .sum();
        let rest = st
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint);
        let mut hint = SizeHint::new();
        hint.set_lower(replayed + rest.lower());
        if let Some(upper) = rest.upper() {
            hint.set_upper(replayed + upper);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(body: Body) -> Result<Bytes, Status> {
        Ok(body.collect().await?.to_bytes())
    }

    fn chunks(parts: &[&'static [u8]]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, Status>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        Body::new(http_body_util::StreamBody::new(tokio_stream::iter(frames)))
    }

    #[tokio::test]
    async fn an_unread_body_is_replayed_whole() {
        let replay = Replay::new(chunks(&[b"ab", b"cd"]));
        drop(replay.first()); // refused before hyper read it
        let again = replay.again().unwrap();
        assert_eq!(read_all(again).await.unwrap(), "abcd");
    }

    #[tokio::test]
    async fn a_partly_read_body_is_replayed_from_its_start() {
        let replay = Replay::new(chunks(&[b"ab", b"cd", b"ef"]));
        let mut first = replay.first();
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        let again = replay.again().unwrap();
        // The superseded attempt reads no more.
        assert!(first.frame().await.unwrap().is_err());
        assert_eq!(read_all(again).await.unwrap(), "abcdef");
        // And once more, fully recorded now.
        assert_eq!(read_all(replay.again().unwrap()).await.unwrap(), "abcdef");
    }

    #[tokio::test]
    async fn a_body_read_past_the_limit_is_not_replayed() {
        static BIG: [u8; REPLAY_LIMIT + 1] = [7; REPLAY_LIMIT + 1];
        let replay = Replay::new(chunks(&[&BIG, b"x"]));
        let mut first = replay.first();
        first.frame().await.unwrap().unwrap();
        assert!(replay.again().is_none());
        // The limit only stops the recording: the first attempt reads on.
        let replay = Replay::new(chunks(&[&BIG, b"x"]));
        assert_eq!(
            read_all(replay.first()).await.unwrap().len(),
            REPLAY_LIMIT + 2
        );
    }

    #[test]
    fn refusals_are_told_from_other_failures() {
        let refused: h2::Error = h2::Reason::REFUSED_STREAM.into();
        // A reason alone (not a peer's RST_STREAM or GOAWAY) proves nothing.
        assert!(!never_processed(&refused));
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!never_processed(&io));
        let connect = tonic::ConnectError(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(never_processed(&connect));
    }
}
