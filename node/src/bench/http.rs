//! The load generator's HTTP/1.1 client: kept-alive connections, each request written and
//! its answer read by the task that sends it.
//!
//! hyper's pooled client (the CLI's `HttpClient`) hands a request to a connection task and
//! the answer back through channels: several task wake-ups per request, on a multi-thread
//! runtime often a wake-up of another thread. At a fixed rate the generator shares the
//! machine's CPUs with the servers it measures, so what it spends per request shows in
//! their latency. wrk is written this way for the same reason. Every HTTP target (dynamo-rs,
//! etcd's gateway, nginx) goes through this client, so they are measured alike.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("endpoint {0:?}: the load generator speaks plain HTTP (host:port or http://host:port)")]
    Endpoint(String),
    #[error("cannot reach {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("{endpoint}: no answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("{endpoint}: bad answer: {reason}")]
    Malformed { endpoint: String, reason: String },
}

/// An answer: status, header block and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The header lines as received, after the status line.
    head: Bytes,
    pub body: Bytes,
}

impl Answer {
    /// The first header of this name (case-insensitive), if its value is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .split(|&b| b == b'\n')
            .filter_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                let (n, v) = line.split_at(colon);
                n.eq_ignore_ascii_case(name.as_bytes())
                    .then(|| std::str::from_utf8(&v[1..]).ok())
                    .flatten()
            })
            .map(str::trim)
            .next()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Kept-alive connections to one endpoint. A request takes an idle connection (or opens
/// one) and gives it back once its answer is read whole, so the number of connections is
/// the number of requests outstanding at once, as with a pooled application client.
pub struct Http1Pool {
    /// `host:port`, for connecting and for the `Host` header.
    authority: String,
    token: Option<String>,
    timeout: Duration,
    idle: Mutex<Vec<Connection>>,
}

struct Connection {
    stream: TcpStream,
    buf: BytesMut,
}

/// How an answer's body ends (RFC 9112, section 6.3).
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

/// Why an attempt failed: `Stale` when a kept-alive connection was closed before any byte
/// of the answer came (the server dropped an idle connection), which is worth one more try
/// on a fresh connection.
enum Failure {
    Stale(String),
    Failed(HttpError),
}

const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;
const MAX_BODY: usize = 64 << 20;

impl Http1Pool {
    /// `endpoint` is `host:port` or `http://host:port`.
    pub fn new(
        endpoint: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Http1Pool, HttpError> {
        let authority = endpoint
            .strip_prefix("http://")
            .unwrap_or(endpoint)
            .trim_end_matches('/');
        if authority.is_empty() || authority.contains("://") || authority.contains('/') {
            return Err(HttpError::Endpoint(endpoint.to_string()));
        }
        Ok(Http1Pool {
            authority: authority.to_string(),
            token,
            timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends one request and reads its answer whole. A request that finds its kept-alive
    /// connection closed by the server goes once more on a new connection: the
    /// generator's requests read a key or set it to a value, so sending one twice is
    /// harmless.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, HttpError> {
        let mut head = String::with_capacity(128);
        // Writing to a String cannot fail.
        let _ = write!(
            head,
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n",
            self.authority,
            body.len()
        );
        if let Some(t) = &self.token {
            let _ = write!(head, "authorization: Bearer {t}\r\n");
        }
        for (name, value) in headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str("\r\n");
        let mut request = Vec::with_capacity(head.len() + body.len());
        request.extend_from_slice(head.as_bytes());
        request.extend_from_slice(body);
        let expect_body = method != "HEAD";
        match tokio::time::timeout(self.timeout, self.exchange(&request, expect_body)).await {
            Ok(answer) => answer,
            // The connection went with the cancelled exchange, half-read answer and all.
            Err(_) => Err(HttpError::Timeout {
                endpoint: self.authority.clone(),
                timeout: self.timeout,
            }),
        }
    }

    async fn exchange(&self, request: &[u8], expect_body: bool) -> Result<Answer, HttpError> {
        let pooled = self.idle.lock().pop();
        if let Some(connection) = pooled {
            match self.attempt(connection, request, expect_body).await {
                Ok(answer) => return Ok(answer),
                Err(Failure::Failed(e)) => return Err(e),
                Err(Failure::Stale(_)) => {}
            }
        }
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        // Requests are small and each waits for its answer: no Nagle delay.
        stream
            .set_nodelay(true)
            .map_err(|e| self.unreachable(e.to_string()))?;
        let connection = Connection {
            stream,
            buf: BytesMut::with_capacity(4096),
        };
        match self.attempt(connection, request, expect_body).await {
            Ok(answer) => Ok(answer),
            Err(Failure::Stale(reason)) => Err(self.unreachable(reason)),
            Err(Failure::Failed(e)) => Err(e),
        }
    }

    fn unreachable(&self, reason: String) -> HttpError {
        HttpError::Unreachable {
            endpoint: self.authority.clone(),
            reason,
        }
    }

    fn malformed(&self, reason: impl Into<String>) -> Failure {
        Failure::Failed(HttpError::Malformed {
            endpoint: self.authority.clone(),
            reason: reason.into(),
        })
    }

    async fn attempt(
        &self,
        mut c: Connection,
        request: &[u8],
        expect_body: bool,
    ) -> Result<Answer, Failure> {
        c.buf.clear();
        // Room for a typical answer in one read (the last answer's bytes may still be
        // shared with its caller, leaving this buffer little capacity of its own).
        c.buf.reserve(4096);
        if let Err(e) = c.stream.write_all(request).await {
            return Err(Failure::Stale(e.to_string()));
        }
        let (status, head_len, framing, keep_alive) = loop {
            match c.stream.read_buf(&mut c.buf).await {
                Ok(0) if c.buf.is_empty() => {
                    return Err(Failure::Stale("closed before answering".into()));
                }
                Ok(0) => return Err(self.malformed("connection closed in the header")),
                Ok(_) => {}
                Err(e) if c.buf.is_empty() => return Err(Failure::Stale(e.to_string())),
                Err(e) => return Err(Failure::Failed(self.unreachable(e.to_string()))),
            }
            if let Some(parsed) = self.parse_head(&c.buf, expect_body)? {
                break parsed;
            }
            if c.buf.len() > MAX_HEAD {
                return Err(self.malformed("header over 64 KiB"));
            }
        };
        let mut reusable = keep_alive;
        let (head, body) = match framing {
            Framing::Empty => {
                let all = c.buf.split_to(head_len).freeze();
                (all, Bytes::new())
            }
            Framing::Length(n) => {
                if n > MAX_BODY {
                    return Err(self.malformed(format!("content-length {n} over 64 MiB")));
                }
                let total = head_len + n;
                while c.buf.len() < total {
                    c.buf.reserve(total - c.buf.len());
                    match c.stream.read_buf(&mut c.buf).await {
                        Ok(0) => return Err(self.malformed("connection closed in the body")),
                        Ok(_) => {}
                        Err(e) => return Err(Failure::Failed(self.unreachable(e.to_string()))),
                    }
                }
                let mut all = c.buf.split_to(total).freeze();
                let body = all.split_off(head_len);
                (all, body)
            }
            Framing::Chunked => {
                let (body, end) = self.read_chunked(&mut c, head_len).await?;
                let head = c.buf.split_to(head_len).freeze();
                let _framed_body = c.buf.split_to(end - head_len);
                (head, body)
            }
            Framing::UntilClose => {
                loop {
                    if c.buf.len() > head_len + MAX_BODY {
                        return Err(self.malformed("body over 64 MiB"));
                    }
                    match c.stream.read_buf(&mut c.buf).await {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) => return Err(Failure::Failed(self.unreachable(e.to_string()))),
                    }
                }
                reusable = false;
                let mut all = c.buf.split_to(c.buf.len()).freeze();
                let body = all.split_off(head_len);
                (all, body)
            }
        };
        // Bytes past the answer mean the exchange lost step with the server.
        if reusable && c.buf.is_empty() {
            self.idle.lock().push(c);
        }
        // Without the status line: its reason phrase may hold a colon, which
        // `Answer::header` would take for a header.
        let first_line_end = head
            .iter()
            .position(|&b| b == b'\n')
            .map_or(head.len(), |i| i + 1);
        Ok(Answer {
            status,
            head: head.slice(first_line_end..),
            body,
        })
    }

    /// The status, header length, body framing and whether the connection stays open, once
    /// the whole header is in `buf`.
    fn parse_head(
        &self,
        buf: &[u8],
        expect_body: bool,
    ) -> Result<Option<(u16, usize, Framing, bool)>, Failure> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(self.malformed(e.to_string())),
        };
        let status = response.code.unwrap_or(0);
        let mut keep_alive = response.version == Some(1);
        let mut length = None;
        let mut chunked = false;
        for h in response.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| self.malformed("bad content-length"))?;
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = h
                    .value
                    .split(|&b| b == b',')
                    .next_back()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("connection") {
                let v = h.value.trim_ascii();
                if v.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if v.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
        let framing = if !expect_body || status == 204 || status == 304 || status < 200 {
            Framing::Empty
        } else if chunked {
            Framing::Chunked
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
        Ok(Some((status, head_len, framing, keep_alive)))
    }

    /// Reads a chunked body that starts at `start` in the connection's buffer: the body,
    /// and where the answer ends in the buffer.
    async fn read_chunked(
        &self,
        c: &mut Connection,
        start: usize,
    ) -> Result<(Bytes, usize), Failure> {
        let mut body = BytesMut::new();
        let mut at = start;
        loop {
            match next_chunk(&c.buf[at..]).map_err(|e| self.malformed(e))? {
                Some(Chunk::Data { data, next }) => {
                    body.extend_from_slice(&c.buf[at + data.start..at + data.end]);
                    at += next;
                    continue;
                }
                Some(Chunk::Last { len }) => return Ok((body.freeze(), at + len)),
                None => {}
            }
            if c.buf.len() > MAX_BODY {
                return Err(self.malformed("chunked body over 64 MiB"));
            }
            match c.stream.read_buf(&mut c.buf).await {
                Ok(0) => return Err(self.malformed("connection closed in a chunked body")),
                Ok(_) => {}
                Err(e) => return Err(Failure::Failed(self.unreachable(e.to_string()))),
            }
        }
    }
}

/// One step through a chunked body.
#[derive(Debug, PartialEq, Eq)]
enum Chunk {
    /// A chunk's data at `data`; the next chunk starts at `next`.
    Data {
        data: std::ops::Range<usize>,
        next: usize,
    },
    /// The last chunk, its trailers and the empty line: `len` bytes.
    Last { len: usize },
}

/// The chunk at the start of `buf`, or `None` if it is not all there yet.
fn next_chunk(buf: &[u8]) -> Result<Option<Chunk>, &'static str> {
    let (size_len, size) = match httparse::parse_chunk_size(buf) {
        Ok(httparse::Status::Complete(parsed)) => parsed,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("bad chunk size"),
    };
    if size == 0 {
        let rest = &buf[size_len..];
        if rest.starts_with(b"\r\n") {
            return Ok(Some(Chunk::Last { len: size_len + 2 }));
        }
        return Ok(rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|end| Chunk::Last {
                len: size_len + end + 4,
            }));
    }
    let end = usize::try_from(size)
        .ok()
        .and_then(|s| s.checked_add(size_len + 2))
        .ok_or("chunk size overflows")?;
    if buf.len() < end {
        return Ok(None);
    }
    if &buf[end - 2..end] != b"\r\n" {
        return Err("chunk without its CRLF");
    }
    Ok(Some(Chunk::Data {
        data: size_len..end - 2,
        next: end,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::net::TcpListener;

    use super::*;

    /// What the test server does for one request: write these pieces (with a pause between
    /// them, so the client sees partial answers), then keep the connection or close it.
    struct Script {
        pieces: Vec<&'static [u8]>,
        close: bool,
    }

    fn answer(pieces: Vec<&'static [u8]>) -> Script {
        Script {
            pieces,
            close: false,
        }
    }

    struct Server {
        endpoint: String,
        accepted: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    /// A server on loopback answering the requests it gets, in the order they come, with
    /// `scripts` in turn; a request past the last script gets no answer.
    async fn serve(scripts: Vec<Script>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let scripts = Arc::new(Mutex::new(scripts.into_iter()));
        let (acc, reqs) = (accepted.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                let (scripts, reqs) = (scripts.clone(), reqs.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // One request: its head, then content-length bytes of body.
                        let request = loop {
                            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                                let len = head
                                    .lines()
                                    .find_map(|l| l.strip_prefix("content-length: "))
                                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                                if buf.len() >= end + 4 + len {
                                    break buf.drain(..end + 4 + len).collect::<Vec<u8>>();
                                }
                            }
                            let mut chunk = [0u8; 4096];
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        reqs.lock().push(request);
                        let next = scripts.lock().next();
                        let Some(script) = next else {
                            // Never answers: hold the connection open until the test ends.
                            std::future::pending::<()>().await;
                            return;
                        };
                        for piece in script.pieces {
                            if socket.write_all(piece).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        if script.close {
                            return;
                        }
                    }
                });
            }
        });
        Server {
            endpoint,
            accepted,
            requests,
        }
    }

    fn pool(endpoint: &str) -> Http1Pool {
        Http1Pool::new(endpoint, None, Duration::from_secs(5)).unwrap()
    }

    #[tokio::test]
    async fn requests_in_turn_share_one_kept_alive_connection() {
        let server = serve(vec![
            answer(vec![
                b"HTTP/1.1 200 OK\r\nx-dynamo-context: ",
                b"abc\r\ncontent-length: 5\r\n\r\nhel",
                b"lo",
            ]),
            answer(vec![
                b"HTTP/1.1 204 No Content\r\nx-dynamo-context: def\r\n\r\n",
            ]),
            answer(vec![
                b"HTTP/1.1 404 Not: Found\r\ncontent-length: 0\r\n\r\n",
            ]),
        ])
        .await;
        let client = Http1Pool::new(
            &format!("http://{}/", server.endpoint),
            Some("t0k".into()),
            Duration::from_secs(5),
        )
        .unwrap();
        let a = client.request("GET", "/v1/kv/k1", &[], &[]).await.unwrap();
        assert_eq!((a.status, a.text()), (200, "hello".to_string()));
        assert_eq!(a.header("X-Dynamo-Context"), Some("abc"));
        let b = client
            .request("PUT", "/v1/kv/k1", &[("x-dynamo-context", "abc")], b"v")
            .await
            .unwrap();
        assert_eq!((b.status, b.body.len()), (204, 0));
        assert_eq!(b.header("x-dynamo-context"), Some("def"));
        // A colon in the reason phrase is not a header.
        let c = client.request("GET", "/v1/kv/k2", &[], &[]).await.unwrap();
        assert_eq!((c.status, c.header("HTTP/1.1 404 Not")), (404, None));
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
        let requests = server.requests.lock();
        let put = String::from_utf8_lossy(&requests[1]);
        assert!(put.starts_with("PUT /v1/kv/k1 HTTP/1.1\r\n"), "{put}");
        for line in [
            &format!("host: {}", server.endpoint),
            "content-length: 1",
            "authorization: Bearer t0k",
            "x-dynamo-context: abc",
        ] {
            assert!(
                put.contains(&format!("{line}\r\n")),
                "{line} missing in {put}"
            );
        }
        assert!(put.ends_with("\r\n\r\nv"), "{put}");
    }

    #[tokio::test]
    async fn chunked_bodies_are_read_whole_trailers_and_all() {
        let server = serve(vec![
            answer(vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
                b"lo\r\n6\r\n world\r\n0\r",
                b"\n\r\n",
            ]),
            answer(vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;ext=1\r\nok\r\n0\r\nx-sum: 1\r\n\r\n",
            ]),
        ])
        .await;
        let client = pool(&server.endpoint);
        let a = client.request("GET", "/a", &[], &[]).await.unwrap();
        assert_eq!(a.text(), "hello world");
        let b = client.request("GET", "/b", &[], &[]).await.unwrap();
        assert_eq!(b.text(), "ok");
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_dropped_is_replaced_and_the_request_sent_again() {
        let server = serve(vec![
            Script {
                pieces: vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nv1"],
                close: true,
            },
            answer(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nv2"]),
        ])
        .await;
        let client = pool(&server.endpoint);
        assert_eq!(
            client.request("GET", "/a", &[], &[]).await.unwrap().text(),
            "v1"
        );
        // Whether the close comes before the next request is written or after it (unread,
        // so the socket resets), the kept connection fails without an answer byte.
        assert_eq!(
            client.request("GET", "/b", &[], &[]).await.unwrap().text(),
            "v2"
        );
        assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connection_close_and_http_1_0_answers_are_not_reused() {
        let server = serve(vec![
            Script {
                pieces: vec![
                    b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil ",
                    b"close",
                ],
                close: true,
            },
            answer(vec![b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nold"]),
            answer(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nnew"]),
        ])
        .await;
        let client = pool(&server.endpoint);
        let a = client.request("GET", "/a", &[], &[]).await.unwrap();
        assert_eq!(a.text(), "until close");
        assert_eq!(
            client.request("GET", "/b", &[], &[]).await.unwrap().text(),
            "old"
        );
        assert_eq!(
            client.request("GET", "/c", &[], &[]).await.unwrap().text(),
            "new"
        );
        assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn bad_answers_are_errors_that_name_the_endpoint_and_the_connection_is_dropped() {
        let server = serve(vec![
            answer(vec![b"HELLO there\r\n\r\n"]),
            Script {
                pieces: vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"],
                close: true,
            },
            answer(vec![b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"]),
            answer(vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcX\r\n",
            ]),
            answer(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]),
        ])
        .await;
        let client = pool(&server.endpoint);
        for expected in [
            "bad answer",
            "connection closed in the body",
            "bad content-length",
            "chunk without its CRLF",
        ] {
            let e = client.request("GET", "/", &[], &[]).await.unwrap_err();
            assert!(matches!(e, HttpError::Malformed { .. }), "{e}");
            let message = e.to_string();
            assert!(message.contains(expected), "{message}");
            assert!(message.contains(&server.endpoint), "{message}");
        }
        // None of the broken connections was kept: the good answer came on a fifth.
        assert_eq!(
            client.request("GET", "/", &[], &[]).await.unwrap().text(),
            "ok"
        );
        assert_eq!(server.accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn no_answer_times_out_and_no_listener_is_unreachable() {
        let server = serve(Vec::new()).await;
        let client = Http1Pool::new(&server.endpoint, None, Duration::from_millis(200)).unwrap();
        let e = client.request("GET", "/", &[], &[]).await.unwrap_err();
        assert!(matches!(e, HttpError::Timeout { .. }), "{e}");
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let e = pool(&addr).request("GET", "/", &[], &[]).await.unwrap_err();
        assert!(matches!(e, HttpError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains(&addr), "{e}");
    }

    #[test]
    fn only_plain_http_endpoints_are_taken() {
        for bad in [
            "https://127.0.0.1:7700",
            "",
            "127.0.0.1:7700/v1",
            "ftp://x:1",
        ] {
            let e = Http1Pool::new(bad, None, Duration::from_secs(1)).err();
            assert!(matches!(e, Some(HttpError::Endpoint(_))), "{bad}: {e:?}");
        }
        for good in [
            "127.0.0.1:7700",
            "http://127.0.0.1:7700",
            "http://localhost:80/",
        ] {
            assert!(
                Http1Pool::new(good, None, Duration::from_secs(1)).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn chunks_are_found_whole_or_asked_for_more() {
        assert_eq!(next_chunk(b"5\r\nhel"), Ok(None));
        assert_eq!(next_chunk(b"5"), Ok(None));
        assert_eq!(
            next_chunk(b"5\r\nhello\r\n0\r\n"),
            Ok(Some(Chunk::Data {
                data: 3..8,
                next: 10
            }))
        );
        assert_eq!(
            next_chunk(b"0\r\n\r\nrest"),
            Ok(Some(Chunk::Last { len: 5 }))
        );
        assert_eq!(next_chunk(b"0\r\na: b\r\n"), Ok(None));
        assert_eq!(
            next_chunk(b"0\r\na: b\r\n\r\n"),
            Ok(Some(Chunk::Last { len: 11 }))
        );
        assert_eq!(next_chunk(b"2\r\nabc\r\n"), Err("chunk without its CRLF"));
        assert_eq!(next_chunk(b"zz\r\n"), Err("bad chunk size"));
        assert_eq!(
            next_chunk(b"ffffffffffffffff\r\n"),
            Err("chunk size overflows")
        );
    }
}
