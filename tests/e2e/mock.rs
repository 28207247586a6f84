//! A model-API mock on 127.0.0.1 (a free port): Anthropic Messages,
//! OpenAI Responses and Gemini `streamGenerateContent`, all streaming SSE,
//! as the real CLIs call them (see shared/agent-clis.md).
//!
//! Plain std networking: one thread accepts, one thread per connection
//! speaks HTTP/1.1 with keep-alive (bodies by `Content-Length` or chunked;
//! replies with `Content-Length`). Every request is recorded (time, method,
//! path, headers, body) so tests can assert on what the CLIs sent.
//!
//! What the "model" answers is decided per request by a handler, so the
//! same script serves several agents at once: [`Mock::write_then_text`]
//! asks for a file-writing tool call until it sees a tool result, then
//! finishes with text; [`Mock::script`] plays a queue of replies;
//! [`Mock::start`] takes any closure. A [`Reply`] is abstract and rendered
//! in the shape of the API the request came to: a file write is a
//! `tool_use` block `Write {file_path, content}` for Claude, an
//! `exec_command` function call (the only file-writing tool codex 0.169
//! offers a custom provider: its `tools` are exec_command, write_stdin,
//! view_image, ... — no apply_patch) for Codex, and a `write_file`
//! functionCall for Gemini. File paths are made absolute with the
//! workspace taskq names in the prompt ("Your working directory is X.").

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

/// Tokens the mock reports for every model response.
pub const INPUT_TOKENS: u64 = 100;
/// Output tokens the mock reports for every model response.
pub const OUTPUT_TOKENS: u64 = 20;

/// Which API a request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/messages` (Claude Code).
    Anthropic,
    /// `POST /v1/responses` (Codex).
    OpenAi,
    /// `POST /v1beta/models/<model>:streamGenerateContent` (Gemini CLI).
    Gemini,
    /// Anything else (`HEAD /`, ...).
    Other,
}

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Request {
    /// When its headers had been read.
    pub at: SystemTime,
    /// `POST`, `HEAD`, ...
    pub method: String,
    /// Path with the query (`/v1/messages?beta=true`).
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (UTF-8, lossy).
    pub body: String,
}

impl Request {
    /// The API this request is for.
    pub fn api(&self) -> Api {
        let path = self.path.split('?').next().unwrap_or("");
        if self.method != "POST" {
            Api::Other
        } else if path == "/v1/messages" {
            Api::Anthropic
        } else if path == "/v1/responses" {
            Api::OpenAi
        } else if path.starts_with("/v1beta/models/") && path.contains(":streamGenerateContent") {
            Api::Gemini
        } else {
            Api::Other
        }
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The model asked for (body `model`, or the Gemini path).
    pub fn model(&self) -> String {
        if let Some(m) = self.json().get("model").and_then(Value::as_str) {
            return m.to_string();
        }
        let path = self.path.split('?').next().unwrap_or("");
        path.strip_prefix("/v1beta/models/")
            .and_then(|r| r.split(':').next())
            .unwrap_or("mock-model")
            .to_string()
    }

    /// How many tool results the conversation so far carries.
    pub fn tool_results(&self) -> usize {
        let v = self.json();
        match self.api() {
            Api::Anthropic => v["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["content"].as_array())
                .flatten()
                .filter(|c| c["type"] == "tool_result")
                .count(),
            Api::OpenAi => v["input"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| i["type"] == "function_call_output")
                .count(),
            Api::Gemini => v["contents"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["parts"].as_array())
                .flatten()
                .filter(|p| p.get("functionResponse").is_some())
                .count(),
            Api::Other => 0,
        }
    }

    /// The agent's workspace, as taskq's prompt names it ("Your working
    /// directory is X.").
    pub fn workspace(&self) -> Option<String> {
        const MARK: &str = "Your working directory is ";
        let i = self.body.find(MARK)? + MARK.len();
        let rest = &self.body[i..];
        let end = rest.find(['\\', '"']).unwrap_or(rest.len());
        Some(rest[..end].trim_end_matches('.').to_string())
    }

    /// Claude Code's session header.
    pub fn claude_session(&self) -> Option<&str> {
        self.header("x-claude-code-session-id")
    }
}

/// What the model answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A final text answer.
    Text(String),
    /// A tool call that writes `content` to `name` in the workspace.
    WriteFile {
        /// File name, relative to the workspace.
        name: String,
        /// Its content.
        content: String,
    },
    /// An HTTP error with the API's error body.
    Error(u16, String),
    /// Never answer (until the client goes away or the mock is dropped).
    Hang,
    /// The reply after a pause.
    Delayed(Duration, Box<Reply>),
}

impl Reply {
    /// A text answer.
    pub fn text(t: &str) -> Reply {
        Reply::Text(t.to_string())
    }

    /// A file-writing tool call.
    pub fn write(name: &str, content: &str) -> Reply {
        Reply::WriteFile {
            name: name.to_string(),
            content: content.to_string(),
        }
    }

    /// This reply after `d`.
    pub fn after(self, d: Duration) -> Reply {
        Reply::Delayed(d, Box::new(self))
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

struct Shared {
    requests: Mutex<Vec<Request>>,
    handler: Box<Handler>,
    stopped: AtomicBool,
    ids: AtomicU64,
}

/// The running mock; stops on drop.
pub struct Mock {
    /// Its port on 127.0.0.1.
    pub port: u16,
    shared: Arc<Shared>,
}

impl Mock {
    /// Starts a mock whose model answers come from `handler`.
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            handler: Box::new(handler),
            stopped: AtomicBool::new(false),
            ids: AtomicU64::new(1),
        });
        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("mock-accept-{port}"))
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.stopped.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let s = Arc::clone(&s);
                    let _ = std::thread::Builder::new()
                        .name(format!("mock-conn-{port}"))
                        .spawn(move || serve(conn, &s));
                }
            })
            .expect("spawn the accept thread");
        Mock { port, shared }
    }

    /// The model plays `replies` in order, one per model request; past
    /// the end it answers HTTP 500 "script exhausted".
    pub fn script(replies: Vec<Reply>) -> Mock {
        let queue = Mutex::new(VecDeque::from(replies));
        Mock::start(move |_| {
            queue
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| Reply::Error(500, "mock: script exhausted".into()))
        })
    }

    /// Asks to write `name` until the conversation carries a tool result,
    /// then answers `text`. Stateless, so it serves any number of agents.
    pub fn write_then_text(name: &str, content: &str, text: &str) -> Mock {
        Mock::write_then_text_paced(name, content, text, Duration::ZERO)
    }

    /// The same, each answer after `pause` (so agents overlap, or live
    /// long enough for taskq's 500 ms memory samples).
    pub fn write_then_text_paced(name: &str, content: &str, text: &str, pause: Duration) -> Mock {
        let (name, content, text) = (name.to_string(), content.to_string(), text.to_string());
        Mock::start(move |r| {
            let reply = if r.tool_results() == 0 {
                Reply::write(&name, &content)
            } else {
                Reply::text(&text)
            };
            if pause.is_zero() {
                reply
            } else {
                reply.after(pause)
            }
        })
    }

    /// Always the same reply.
    pub fn always(reply: Reply) -> Mock {
        Mock::start(move |_| reply.clone())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The requests to a model API.
    pub fn model_requests(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.api() != Api::Other)
            .collect()
    }

    /// The requests to a model API that agent `agent` made (by the
    /// workspace its prompt names: `.../agents/workspaces/<agent>`).
    pub fn model_requests_of(&self, agent: &str) -> Vec<Request> {
        let tail = format!("/{agent}");
        self.model_requests()
            .into_iter()
            .filter(|r| r.workspace().is_some_and(|w| w.ends_with(&tail)))
            .collect()
    }

    /// Waits until some request satisfies `cond` (up to `timeout`).
    pub fn wait_for(&self, timeout: Duration, cond: impl Fn(&Request) -> bool) -> Option<Request> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(r) = self.requests().into_iter().find(|r| cond(r)) {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A port on 127.0.0.1 nobody listens on (bound, then released).
pub fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// One connection: requests until the client closes it.
fn serve(conn: TcpStream, s: &Shared) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(300)));
    let _ = conn.set_nodelay(true);
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut out = write_half;
    let mut reader = BufReader::new(conn);
    loop {
        let Some(req) = read_request(&mut reader) else {
            return;
        };
        if s.stopped.load(Ordering::Acquire) {
            return;
        }
        let close = req
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        s.requests.lock().unwrap().push(req.clone());
        let api = req.api();
        let response = if api == Api::Other {
            let status = if req.method == "HEAD" || req.path == "/" {
                200
            } else {
                404
            };
            Some(http(status, "text/plain", b"", close))
        } else {
            let reply = (s.handler)(&req);
            render(s, &req, reply, close)
        };
        let Some(bytes) = response else {
            // Hang: drop the connection without an answer.
            let _ = out.shutdown(Shutdown::Both);
            return;
        };
        if out.write_all(&bytes).and_then(|()| out.flush()).is_err() || close {
            return;
        }
    }
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let at = SystemTime::now();
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            if n == 0 {
                // Trailers until the empty line.
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t).ok()? == 0 || t.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; n];
            r.read_exact(&mut chunk).ok()?;
            body.extend_from_slice(&chunk);
            let mut crlf = String::new();
            r.read_line(&mut crlf).ok()?;
        }
    } else if let Some(n) = get("content-length").and_then(|n| n.parse::<usize>().ok()) {
        body = vec![0; n];
        r.read_exact(&mut body).ok()?;
    }
    Some(Request {
        at,
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn http(status: u16, content_type: &str, body: &[u8], close: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: {}\r\n\r\n",
        body.len(),
        if close { "close" } else { "keep-alive" }
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The reply as bytes on the wire; `None` to hang.
fn render(s: &Shared, req: &Request, reply: Reply, close: bool) -> Option<Vec<u8>> {
    match reply {
        Reply::Delayed(d, inner) => {
            let until = Instant::now() + d;
            while Instant::now() < until {
                if s.stopped.load(Ordering::Acquire) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
            }
            render(s, req, *inner, close)
        }
        Reply::Hang => {
            let until = Instant::now() + Duration::from_secs(120);
            while Instant::now() < until && !s.stopped.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(20));
            }
            None
        }
        Reply::Error(status, message) => {
            let body = match req.api() {
                Api::Anthropic => json!({"type": "error", "error": {
                    "type": if status < 500 { "invalid_request_error" } else { "api_error" },
                    "message": message}}),
                Api::OpenAi => json!({"error": {"message": message,
                    "type": if status < 500 { "invalid_request_error" } else { "server_error" },
                    "param": null, "code": null}}),
                _ => json!({"error": {"code": status, "message": message,
                    "status": if status < 500 { "INVALID_ARGUMENT" } else { "INTERNAL" }}}),
            };
            Some(http(
                status,
                "application/json",
                body.to_string().as_bytes(),
                close,
            ))
        }
        Reply::Text(_) | Reply::WriteFile { .. } => {
            let n = s.ids.fetch_add(1, Ordering::Relaxed);
            let body = match req.api() {
                Api::Anthropic => anthropic(req, &reply, n),
                Api::OpenAi => openai(req, &reply, n),
                _ => gemini(req, &reply),
            };
            Some(http(200, "text/event-stream", body.as_bytes(), close))
        }
    }
}

/// The absolute path of `name` in the request's workspace.
fn target(req: &Request, name: &str) -> String {
    match req.workspace() {
        Some(ws) if !name.starts_with('/') => format!("{ws}/{name}"),
        _ => name.to_string(),
    }
}

/// Splits `s` in two (on a char boundary) so a text streams in two deltas.
fn halves(s: &str) -> (&str, &str) {
    let mut mid = s.len() / 2;
    while !s.is_char_boundary(mid) {
        mid += 1;
    }
    s.split_at(mid)
}

fn sse(out: &mut String, event: &str, data: &Value) {
    out.push_str(&format!("event: {event}\ndata: {data}\n\n"));
}

fn anthropic(req: &Request, reply: &Reply, n: u64) -> String {
    let mut out = String::new();
    sse(
        &mut out,
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": format!("msg_mock_{n}"), "type": "message", "role": "assistant",
            "model": req.model(), "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1}}}),
    );
    let text_block = |out: &mut String, index: u32, text: &str| {
        sse(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "text", "text": ""}}),
        );
        let (a, b) = halves(text);
        for part in [a, b] {
            sse(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": part}}),
            );
        }
        sse(
            out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        );
    };
    let stop_reason = match reply {
        Reply::Text(t) => {
            text_block(&mut out, 0, t);
            "end_turn"
        }
        Reply::WriteFile { name, content } => {
            text_block(&mut out, 0, &format!("I will write {name}."));
            sse(
                &mut out,
                "content_block_start",
                &json!({"type": "content_block_start", "index": 1, "content_block": {
                    "type": "tool_use", "id": format!("toolu_mock_{n}"), "name": "Write",
                    "input": {}}}),
            );
            let input = json!({"file_path": target(req, name), "content": content}).to_string();
            let (a, b) = halves(&input);
            for part in [a, b] {
                sse(
                    &mut out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": 1,
                        "delta": {"type": "input_json_delta", "partial_json": part}}),
                );
            }
            sse(
                &mut out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": 1}),
            );
            "tool_use"
        }
        _ => unreachable!(),
    };
    sse(
        &mut out,
        "message_delta",
        &json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": {"output_tokens": OUTPUT_TOKENS}}),
    );
    sse(&mut out, "message_stop", &json!({"type": "message_stop"}));
    out
}

fn openai(req: &Request, reply: &Reply, n: u64) -> String {
    let mut out = String::new();
    let mut seq = 0u64;
    let mut ev = |out: &mut String, t: &str, mut d: Value| {
        d["type"] = json!(t);
        d["sequence_number"] = json!(seq);
        seq += 1;
        sse(out, t, &d);
    };
    let resp_id = format!("resp_mock_{n}");
    ev(
        &mut out,
        "response.created",
        json!({"response": {"id": resp_id, "object": "response", "status": "in_progress",
            "model": req.model(), "output": []}}),
    );
    let item = match reply {
        Reply::Text(text) => {
            let id = format!("msg_mock_{n}");
            ev(
                &mut out,
                "response.output_item.added",
                json!({"output_index": 0, "item": {"id": id, "type": "message",
                    "status": "in_progress", "role": "assistant", "content": []}}),
            );
            let (a, b) = halves(text);
            for part in [a, b] {
                ev(
                    &mut out,
                    "response.output_text.delta",
                    json!({"item_id": id, "output_index": 0, "content_index": 0, "delta": part}),
                );
            }
            json!({"id": id, "type": "message", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]})
        }
        Reply::WriteFile { name, content } => {
            let cmd = format!(
                "printf '%s\\n' '{}' > '{}'",
                content.replace('\'', "'\\''"),
                target(req, name)
            );
            let item = json!({"id": format!("fc_mock_{n}"), "type": "function_call",
                "status": "completed", "call_id": format!("call_mock_{n}"),
                "name": "exec_command", "arguments": json!({"cmd": cmd}).to_string()});
            ev(
                &mut out,
                "response.output_item.added",
                json!({"output_index": 0, "item": item}),
            );
            item
        }
        _ => unreachable!(),
    };
    ev(
        &mut out,
        "response.output_item.done",
        json!({"output_index": 0, "item": item}),
    );
    ev(
        &mut out,
        "response.completed",
        json!({"response": {"id": resp_id, "object": "response", "status": "completed",
            "model": req.model(), "output": [item],
            "usage": {"input_tokens": INPUT_TOKENS, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": OUTPUT_TOKENS, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS}}}),
    );
    out
}

fn gemini(req: &Request, reply: &Reply) -> String {
    let usage = json!({"promptTokenCount": INPUT_TOKENS, "candidatesTokenCount": OUTPUT_TOKENS,
        "totalTokenCount": INPUT_TOKENS + OUTPUT_TOKENS});
    let chunk = |parts: Value, last: bool| {
        let mut c = json!({"candidates": [{"content": {"parts": parts, "role": "model"},
            "index": 0}], "modelVersion": req.model()});
        if last {
            c["candidates"][0]["finishReason"] = json!("STOP");
            c["usageMetadata"] = usage.clone();
        }
        format!("data: {c}\r\n\r\n")
    };
    match reply {
        Reply::Text(text) => {
            let (a, b) = halves(text);
            chunk(json!([{"text": a}]), false) + &chunk(json!([{"text": b}]), true)
        }
        Reply::WriteFile { name, content } => chunk(
            json!([{"functionCall": {"name": "write_file",
                "args": {"file_path": target(req, name), "content": content}}}]),
            true,
        ),
        _ => unreachable!(),
    }
}
