//! YAML frontmatter: find it, read only it, parse it once, edit it surgically.
//!
//! A task file is `---\n<yaml>\n---\n<body>`. Three jobs live here:
//!
//! * [`split`] finds the header in a byte buffer (BOM and CRLF tolerated) and
//!   [`read_header`] reads a file only as far as the closing `---`, so a scan
//!   of 100,000 tasks never reads their bodies.
//! * [`parse`] turns the header into top-level `key → value` fields. Task
//!   headers are simple (`key: scalar`, `key: [a, b]`, `- item` lists,
//!   comments), so a line parser handles them directly; anything it does not
//!   fully understand (nested maps, block scalars, anchors, odd quoting) is
//!   handed to `serde_yaml`, which also produces the `line:column` of real
//!   YAML errors. BENCHMARKS.md has the measurement behind this split.
//! * [`edit`] changes, adds or removes top-level keys by rewriting only their
//!   lines: comments, key order, quoting, blank lines and the body stay byte
//!   for byte, so `git diff` shows exactly the transition.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read};

/// The UTF-8 byte order mark, tolerated at the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The largest header we read; a file whose `---` block goes on longer is
/// reported as unterminated rather than read to the end.
pub const MAX_HEADER: usize = 256 * 1024;

/// Where the frontmatter sits in a file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The file does not start with a `---` line: all of it is body.
    None {
        /// Where the body starts (after a BOM, if any).
        body: usize,
    },
    /// A `---` line with no closing `---` line.
    Unterminated,
    /// A complete header.
    Header {
        /// Byte offset of the first header line (after `---\n`).
        start: usize,
        /// Byte offset just past the last header line (the start of the
        /// closing `---` line).
        end: usize,
        /// Byte offset of the body (after the closing delimiter line).
        body: usize,
    },
}

impl Layout {
    /// 1-based file line number of the first header line (always 2).
    pub const FIRST_LINE: usize = 2;
}

/// Locates the frontmatter in `bytes`.
///
/// `complete` says whether `bytes` is the whole file; when it is not, a
/// missing closing delimiter means "read more" and is reported as
/// `Ok(None)`.
pub fn split(bytes: &[u8], complete: bool) -> Option<Layout> {
    let offset = if bytes.starts_with(BOM) { BOM.len() } else { 0 };
    let rest = &bytes[offset..];
    let Some(first_end) = memchr(b'\n', rest) else {
        // One line, no newline: a header needs at least two lines.
        if !complete && is_delimiter(rest) {
            return None;
        }
        return Some(Layout::None { body: offset });
    };
    if !is_delimiter(&rest[..first_end]) {
        return Some(Layout::None { body: offset });
    }
    let start = offset + first_end + 1;
    let mut pos = start;
    while pos < bytes.len() {
        let line_end = memchr(b'\n', &bytes[pos..]).map(|i| pos + i);
        let line = &bytes[pos..line_end.unwrap_or(bytes.len())];
        if is_delimiter(line) {
            match line_end {
                Some(e) => {
                    return Some(Layout::Header {
                        start,
                        end: pos,
                        body: e + 1,
                    })
                }
                // A closing `---` at EOF without a newline still closes.
                None if complete => {
                    return Some(Layout::Header {
                        start,
                        end: pos,
                        body: bytes.len(),
                    })
                }
                None => return None,
            }
        }
        match line_end {
            Some(e) => pos = e + 1,
            None => break,
        }
    }
    if complete {
        Some(Layout::Unterminated)
    } else {
        None
    }
}

/// `---` with optional trailing spaces or `\r`.
fn is_delimiter(line: &[u8]) -> bool {
    line.starts_with(b"---")
        && line[3..]
            .iter()
            .all(|b| *b == b' ' || *b == b'\t' || *b == b'\r')
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|b| *b == needle)
}

/// Reads `file` into `buf` only as far as needed to see its whole header.
///
/// Returns the layout; `buf` holds at least the header bytes. Reading stops
/// at [`MAX_HEADER`] bytes (reported as [`Layout::Unterminated`]).
pub fn read_header(file: &mut File, buf: &mut Vec<u8>) -> io::Result<Layout> {
    buf.clear();
    let mut chunk = 4096;
    loop {
        let old = buf.len();
        buf.resize(old + chunk, 0);
        // One read per chunk: a small file's header is usually complete
        // after the first, and then no second read is spent finding EOF.
        let n = read_once(file, &mut buf[old..])?;
        buf.truncate(old + n);
        let eof = n == 0;
        if let Some(layout) = split(buf, eof) {
            return Ok(layout);
        }
        if buf.len() >= MAX_HEADER {
            return Ok(Layout::Unterminated);
        }
        chunk = (chunk * 2).min(64 * 1024);
    }
}

fn read_once(file: &mut File, dst: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(dst) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// A top-level value, as far as taskq cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    /// `key:`, `key: ~`, `key: null`.
    Null,
    /// A string (quoted or plain), number or boolean, as text.
    Scalar(Cow<'a, str>),
    /// A list of scalars (flow `[a, b]` or block `- a`).
    Seq(Vec<Cow<'a, str>>),
    /// Anything else (a map, a list of maps, a tagged value).
    Complex,
}

impl Value<'_> {
    /// A short name of the kind, for "wrong type" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Scalar(_) => "a single value",
            Value::Seq(_) => "a list",
            Value::Complex => "a map or nested structure",
        }
    }
}

/// One top-level field of a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    /// The key.
    pub key: &'a str,
    /// Its value.
    pub value: Value<'a>,
    /// 0-based index of the key's line within the header.
    pub line: usize,
}

/// A YAML error at a 1-based header line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// 0-based header line (add [`Layout::FIRST_LINE`] for the file line).
    pub line: usize,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What serde_yaml (or the line parser) said.
    pub message: String,
}

/// Parses a header into its top-level fields, in file order.
pub fn parse(header: &str) -> Result<Vec<Field<'_>>, YamlError> {
    if let Some(fields) = parse_fast(header) {
        return Ok(fields);
    }
    parse_yaml(header)
}

/// The line parser. `None` means "not sure, ask serde_yaml".
pub fn parse_fast(header: &str) -> Option<Vec<Field<'_>>> {
    let mut fields: Vec<Field<'_>> = Vec::with_capacity(10);
    let mut lines = header.split('\n').enumerate().peekable();
    while let Some((index, raw)) = lines.next() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim_start_matches(' ');
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.len() != trimmed.len() {
            // Indented content outside a list we are reading: nested map or
            // continuation line.
            return None;
        }
        let (key, rest) = split_key(line)?;
        if fields.iter().any(|f| f.key == key) {
            return None; // serde_yaml reports the duplicate key
        }
        let rest = rest.trim_start_matches(' ');
        let value = if rest.is_empty() || rest.starts_with('#') {
            // Null, or a block list on the following lines.
            let mut items = Vec::new();
            while let Some((_, next)) = lines.peek() {
                let next = next.strip_suffix('\r').unwrap_or(next);
                let t = next.trim_start_matches(' ');
                if t.is_empty() || t.starts_with('#') {
                    if items.is_empty() {
                        break;
                    }
                    lines.next();
                    continue;
                }
                let Some(item) = t.strip_prefix('-') else {
                    if t.len() != next.len() {
                        return None; // indented non-list: nested map
                    }
                    break;
                };
                if !(item.is_empty() || item.starts_with(' ')) {
                    return None;
                }
                let item = item.trim_start_matches(' ');
                items.push(match parse_scalar(item)? {
                    Value::Scalar(s) => s,
                    Value::Null => Cow::Borrowed(""),
                    _ => return None,
                });
                lines.next();
            }
            if items.is_empty() {
                Value::Null
            } else {
                Value::Seq(items)
            }
        } else if let Some(inner) = rest.strip_prefix('[') {
            parse_flow_seq(inner)?
        } else {
            parse_scalar(rest)?
        };
        fields.push(Field {
            key,
            value,
            line: index,
        });
    }
    Some(fields)
}

/// `key: rest` with a simple key; `None` for anything else.
fn split_key(line: &str) -> Option<(&str, &str)> {
    let colon = line.find(':')?;
    let key = &line[..colon];
    let mut chars = key.chars();
    let first = chars.next()?;
    if !(first.is_ascii_alphabetic() || first == '_')
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return None;
    }
    let rest = &line[colon + 1..];
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    Some((key, rest))
}

/// One scalar (with an optional trailing comment) that fills the rest of a
/// line.
fn parse_scalar(text: &str) -> Option<Value<'_>> {
    let (value, rest) = scalar_prefix(text, false)?;
    let rest = rest.trim_start_matches(' ');
    if !(rest.is_empty() || rest.starts_with('#')) {
        return None;
    }
    Some(value)
}

/// Reads one scalar from the front of `text`; returns it and what follows.
/// In a flow sequence, `,` and `]` end a plain scalar.
fn scalar_prefix(text: &str, in_flow: bool) -> Option<(Value<'_>, &str)> {
    let first = text.chars().next()?;
    match first {
        '"' => {
            let mut out = String::new();
            let mut chars = text[1..].char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => return Some((Value::Scalar(Cow::Owned(out)), &text[i + 2..])),
                    '\\' => match chars.next()?.1 {
                        '"' => out.push('"'),
                        '\\' => out.push('\\'),
                        '/' => out.push('/'),
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        '0' => out.push('\0'),
                        _ => return None,
                    },
                    _ => out.push(c),
                }
            }
            None
        }
        '\'' => {
            let mut out = String::new();
            let body = &text[1..];
            let mut i = 0;
            let bytes = body.as_bytes();
            while i < bytes.len() {
                if bytes[i] == b'\'' {
                    if bytes.get(i + 1) == Some(&b'\'') {
                        out.push('\'');
                        i += 2;
                        continue;
                    }
                    return Some((Value::Scalar(Cow::Owned(out)), &body[i + 1..]));
                }
                let c = body[i..].chars().next()?;
                out.push(c);
                i += c.len_utf8();
            }
            None
        }
        '{' | '[' | '&' | '*' | '!' | '|' | '>' | '%' | '@' | '`' | '?' | '\t' => None,
        '-' if text[1..].starts_with(' ') || text.len() == 1 => None,
        _ => {
            // Plain scalar: ends at ` #`, and in flow context at `,` or `]`.
            let bytes = text.as_bytes();
            let mut end = bytes.len();
            for (i, b) in bytes.iter().enumerate() {
                match b {
                    b'#' if i > 0 && bytes[i - 1] == b' ' => {
                        end = i;
                        break;
                    }
                    b',' | b']' if in_flow => {
                        end = i;
                        break;
                    }
                    b'[' | b'{' | b'}' if in_flow => return None,
                    b':' if bytes.get(i + 1).is_none_or(|n| *n == b' ') => return None,
                    b'\t' => return None,
                    _ => {}
                }
            }
            let value = text[..end].trim_end_matches(' ');
            let rest = &text[value.len()..];
            let value = if matches!(value, "" | "~" | "null" | "Null" | "NULL") {
                Value::Null
            } else {
                Value::Scalar(Cow::Borrowed(value))
            };
            Some((value, rest))
        }
    }
}

/// The inside of `[a, "b", c]` (after the `[`), then an optional comment.
fn parse_flow_seq(mut text: &str) -> Option<Value<'_>> {
    let mut items = Vec::new();
    loop {
        text = text.trim_start_matches(' ');
        if let Some(rest) = text.strip_prefix(']') {
            let rest = rest.trim_start_matches(' ');
            if !(rest.is_empty() || rest.starts_with('#')) {
                return None;
            }
            return Some(Value::Seq(items));
        }
        let (value, rest) = scalar_prefix(text, true)?;
        match value {
            Value::Scalar(s) if !s.is_empty() => items.push(s),
            _ => return None,
        }
        let rest = rest.trim_start_matches(' ');
        text = match rest.strip_prefix(',') {
            Some(r) => r,
            None if rest.starts_with(']') => rest,
            None => return None,
        };
    }
}

/// The deepest nesting of YAML collections taskq reads (a task header, the
/// config, a role template). Real files nest three or four levels; the YAML
/// parser underneath serde_yaml takes super-linear time in the depth (an
/// 80,000-deep `x: [[[…` header line took 21 s), so deeper text is refused
/// before it is parsed.
pub const MAX_NESTING: usize = 64;

/// Refuses YAML `text` whose collections nest deeper than [`MAX_NESTING`],
/// in one linear pass, at the line (0-based) and column where the limit is
/// passed: `nesting deeper than 64 levels`.
///
/// A lexer, not a parser, and a conservative one: it counts block levels
/// by indentation (and each `- ` or `? ` entry opened on one line) plus the
/// flow brackets `[` `{` still open, skipping quoted scalars, block scalars
/// (`|`, `>`), plain scalars and comments. What it cannot make sense of it
/// leaves to the parser, which reports it.
pub fn check_nesting(text: &str) -> Result<(), YamlError> {
    let too_deep = |line: usize, column: usize| YamlError {
        line,
        column: Some(column + 1),
        message: format!("nesting deeper than {MAX_NESTING} levels"),
    };
    // Columns of the block collections open above this line.
    let mut indents: Vec<usize> = Vec::new();
    // Flow brackets open (they may span lines).
    let mut flow = 0usize;
    // Inside a quoted scalar that goes on past its line.
    let mut quote: Option<u8> = None;
    // Inside a block scalar: the indentation of the line that opened it.
    let mut block_scalar: Option<usize> = None;
    for (n, line) in text.split('\n').enumerate() {
        let line = line.as_bytes();
        let indent = line.iter().take_while(|&&b| b == b' ').count();
        let mut i = 0;
        let mut continued = false;
        if let Some(q) = quote {
            match skip_quoted(line, 0, q) {
                Some(end) => {
                    quote = None;
                    i = end;
                    continued = true;
                }
                None => continue,
            }
        } else if let Some(parent) = block_scalar {
            if indent > parent || line[indent..].iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            block_scalar = None;
        }
        if !continued && flow == 0 {
            let rest = &line[indent..];
            if rest.iter().all(u8::is_ascii_whitespace) || rest[0] == b'#' {
                continue;
            }
            if indent == 0 && (rest.starts_with(b"---") || rest.starts_with(b"...")) {
                indents.clear();
                continue;
            }
            // The block levels this line's node sits in: every level at or
            // right of its column is closed; `- - x` opens one per entry.
            let mut col = indent;
            loop {
                while indents.last().is_some_and(|&top| top >= col) {
                    indents.pop();
                }
                indents.push(col);
                if indents.len() > MAX_NESTING {
                    return Err(too_deep(n, col));
                }
                let entry = matches!(line[col], b'-' | b'?')
                    && line.get(col + 1).is_none_or(|b| matches!(b, b' ' | b'\r'));
                if !entry {
                    break;
                }
                col += 1;
                while line.get(col) == Some(&b' ') {
                    col += 1;
                }
                if col >= line.len() || line[col] == b'\r' {
                    break;
                }
            }
            i = col;
        }
        // At the start of a node (a quote or bracket here opens one).
        let mut at_start = !continued;
        // Inside a plain scalar of block context (brackets are text there).
        let mut plain = false;
        while i < line.len() {
            let b = line[i];
            match b {
                b' ' | b'\t' | b'\r' => {}
                b'#' if i == 0 || matches!(line[i - 1], b' ' | b'\t') => break,
                b'"' | b'\'' if at_start => match skip_quoted(line, i + 1, b) {
                    Some(end) => {
                        i = end;
                        at_start = false;
                        continue;
                    }
                    None => {
                        quote = Some(b);
                        break;
                    }
                },
                b'[' | b'{' if flow > 0 || (at_start && !plain) => {
                    flow += 1;
                    if indents.len() + flow > MAX_NESTING {
                        return Err(too_deep(n, i));
                    }
                    at_start = true;
                }
                b']' | b'}' if flow > 0 => {
                    flow -= 1;
                    at_start = false;
                }
                b',' if flow > 0 => at_start = true,
                b':' if line
                    .get(i + 1)
                    .is_none_or(|c| matches!(c, b' ' | b'\r' | b'\t' | b',' | b']' | b'}')) =>
                {
                    at_start = true;
                    plain = false;
                }
                b'|' | b'>' if at_start && flow == 0 => {
                    block_scalar = Some(indent);
                    break;
                }
                b'&' | b'!' | b'*' if at_start => {
                    // An anchor or a tag comes before its node; an alias is
                    // one.
                    while i < line.len()
                        && !matches!(
                            line[i],
                            b' ' | b'\t' | b'\r' | b',' | b'[' | b']' | b'{' | b'}'
                        )
                    {
                        i += 1;
                    }
                    at_start = b != b'*';
                    continue;
                }
                _ => {
                    if at_start {
                        at_start = false;
                        plain = flow == 0;
                    }
                }
            }
            i += 1;
        }
    }
    Ok(())
}

/// The index just past the closing `q` of a quoted scalar whose text starts
/// at `from`, or `None` when it goes on past this line. `''` is a quote in
/// single quotes; `\` escapes the next character in double quotes.
fn skip_quoted(line: &[u8], from: usize, q: u8) -> Option<usize> {
    let mut i = from;
    while i < line.len() {
        match line[i] {
            b'\\' if q == b'"' => i += 2,
            c if c == q => {
                if q == b'\'' && line.get(i + 1) == Some(&b'\'') {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// The full YAML parser, for headers the line parser does not take.
fn parse_yaml(header: &str) -> Result<Vec<Field<'_>>, YamlError> {
    use serde_yaml::Value as Y;
    check_nesting(header)?;
    let doc: Y = serde_yaml::from_str(header).map_err(|e| yaml_error(header, &e))?;
    let map = match doc {
        Y::Mapping(m) => m,
        Y::Null => return Ok(Vec::new()),
        other => {
            return Err(YamlError {
                line: 0,
                column: None,
                message: format!(
                    "frontmatter must be a map of `key: value` lines, found {}",
                    yaml_kind(&other)
                ),
            })
        }
    };
    let key_lines = top_level_key_lines(header);
    let mut fields = Vec::with_capacity(map.len());
    for (k, v) in map {
        let Y::String(k) = k else {
            return Err(YamlError {
                line: 0,
                column: None,
                message: "frontmatter keys must be plain words".into(),
            });
        };
        // Borrow the key from the header text so fields stay zero-copy.
        let Some(&(line, key)) = key_lines.iter().find(|(_, key)| *key == k) else {
            continue; // a key spelled in a way we cannot edit: keep, ignore
        };
        let value = match v {
            Y::Null => Value::Null,
            Y::Bool(b) => Value::Scalar(Cow::Owned(b.to_string())),
            Y::Number(n) => Value::Scalar(Cow::Owned(n.to_string())),
            Y::String(s) => Value::Scalar(Cow::Owned(s)),
            Y::Sequence(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut simple = true;
                for item in items {
                    match item {
                        Y::String(s) => out.push(Cow::Owned(s)),
                        Y::Number(n) => out.push(Cow::Owned(n.to_string())),
                        Y::Bool(b) => out.push(Cow::Owned(b.to_string())),
                        _ => simple = false,
                    }
                }
                if simple {
                    Value::Seq(out)
                } else {
                    Value::Complex
                }
            }
            Y::Mapping(_) | Y::Tagged(_) => Value::Complex,
        };
        fields.push(Field { key, value, line });
    }
    fields.sort_by_key(|f| f.line);
    Ok(fields)
}

fn yaml_kind(v: &serde_yaml::Value) -> &'static str {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => "nothing",
        Y::Bool(_) | Y::Number(_) | Y::String(_) => "a single value",
        Y::Sequence(_) => "a list",
        Y::Mapping(_) => "a map",
        Y::Tagged(_) => "a tagged value",
    }
}

/// A serde_yaml error located where a person should look: where an
/// unclosed bracket or quote *opens* (serde_yaml's "while parsing X at line
/// L" context) rather than where the parser gave up, and at the second
/// occurrence of a duplicate key rather than at the start of the map.
fn yaml_error(header: &str, e: &serde_yaml::Error) -> YamlError {
    let text = e.to_string();
    let (main, context) = match text
        .split_once(", while parsing ")
        .or_else(|| text.split_once(", while scanning "))
    {
        Some((m, c)) => (m, Some(c)),
        None => (text.as_str(), None),
    };
    let main_msg = main.split(" at line ").next().unwrap_or(main).to_string();
    let loc = e.location();
    let mut err = YamlError {
        line: loc.as_ref().map_or(0, |l| l.line().saturating_sub(1)),
        column: loc.map(|l| l.column()),
        message: main_msg.clone(),
    };
    if let Some(context) = context {
        // "a flow sequence at line 4 column 7"
        if let Some((what, at)) = context.split_once(" at line ") {
            let mut nums = at.split(" column ").map(|n| n.trim().parse::<usize>().ok());
            if let (Some(Some(line)), Some(col)) = (nums.next(), nums.next()) {
                err.line = line.saturating_sub(1);
                err.column = col;
                err.message = format!("{main_msg} (in {what} that starts here)");
            }
        }
    }
    if let Some(key) = main_msg
        .strip_prefix("duplicate entry with key \"")
        .and_then(|k| k.strip_suffix('"'))
    {
        if let Some(&(line, _)) = top_level_key_lines(header)
            .iter()
            .filter(|(_, k)| *k == key)
            .nth(1)
        {
            err.line = line;
            err.column = Some(1);
            err.message = format!("duplicate key `{key}`");
        }
    }
    err
}

/// `(line index, key)` of every top-level `key:` line of a header.
fn top_level_key_lines(header: &str) -> Vec<(usize, &str)> {
    header
        .split('\n')
        .enumerate()
        .filter_map(|(i, raw)| {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            let (key, _) = split_key_loose(line)?;
            Some((i, key))
        })
        .collect()
}

/// Like [`split_key`], but also accepts `key:value`-less forms such as
/// `key:` followed by a block on the next lines; used to locate keys.
fn split_key_loose(line: &str) -> Option<(&str, &str)> {
    let first = line.chars().next()?;
    if first == ' ' || first == '#' || first == '-' || first == '\t' {
        return None;
    }
    split_key(line)
}

/// A top-level scalar field of a file's header, read from its bytes (for
/// fields taskq only looks up now and then: `command`, `repo`, `base`, an
/// approval file's `task` and `reason`).
pub fn scalar_field(bytes: &[u8], key: &str) -> Option<String> {
    let Some(Layout::Header { start, end, .. }) = split(bytes, true) else {
        return None;
    };
    let header = std::str::from_utf8(&bytes[start..end]).ok()?;
    parse(header)
        .ok()?
        .into_iter()
        .find(|f| f.key == key)
        .and_then(|f| match f.value {
            Value::Scalar(s) => Some(s.into_owned()),
            _ => None,
        })
}

/// The 1-based line of the top-level `key:` in YAML `text` (a config file
/// or a header), for messages about a value serde accepted but taskq does
/// not.
pub fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map(|n| n + 1)
}

/// The 1-based file line where `key`'s value names `item` (the item's own
/// line in a block list), else the key's line; `None` when the header has no
/// such key. For messages about one value of a field (`dependencies`).
pub fn value_line(bytes: &[u8], key: &str, item: &str) -> Option<usize> {
    let Some(Layout::Header { start, end, .. }) = split(bytes, true) else {
        return None;
    };
    let header = std::str::from_utf8(&bytes[start..end]).ok()?;
    let fields = parse(header).ok()?;
    let k = fields.iter().position(|f| f.key == key)?;
    let first = fields[k].line;
    let last = fields.get(k + 1).map_or(usize::MAX, |f| f.line);
    let at = header
        .split('\n')
        .enumerate()
        .skip(first)
        .take_while(|(n, _)| *n < last)
        .find(|(_, line)| names(line, item))
        .map_or(first, |(n, _)| n);
    Some(at + Layout::FIRST_LINE)
}

/// True when `line` holds `word` with no id character on either side.
fn names(line: &str, word: &str) -> bool {
    let id_char =
        |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    line.match_indices(word).any(|(k, _)| {
        !id_char(line[..k].chars().next_back()) && !id_char(line[k + word.len()..].chars().next())
    })
}

/// Formats a string as a YAML scalar: plain when that reads back as the same
/// string, double-quoted otherwise.
pub fn yaml_str(s: &str) -> String {
    if is_plain_safe(s) {
        s.to_string()
    } else {
        quote(s)
    }
}

/// Formats a list of strings as a flow sequence `[a, b]`.
pub fn yaml_list<S: AsRef<str>>(items: &[S]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let item = item.as_ref();
        if is_plain_safe(item) && !item.contains([',', '[', ']', '{', '}']) {
            out.push_str(item);
        } else {
            out.push_str(&quote(item));
        }
    }
    out.push(']');
    out
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if s != s.trim() || s.contains(": ") || s.contains(" #") || s.ends_with(':') {
        return false;
    }
    if s.chars().any(|c| c.is_control()) {
        return false;
    }
    if "-?:,[]{}#&*!|>'\"%@`~".contains(first)
        && !(first == '-'
            && s.len() > 1
            && !s[1..].starts_with(' ')
            && s.as_bytes()[1].is_ascii_alphabetic())
    {
        return false;
    }
    // Words YAML would read as something other than a string.
    let lower = s.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "null"
            | "true"
            | "false"
            | "yes"
            | "no"
            | "on"
            | "off"
            | "y"
            | "n"
            | ".nan"
            | ".inf"
            | "-.inf"
    ) {
        return false;
    }
    if s.parse::<f64>().is_ok() || s.starts_with("0x") || s.starts_with("0o") {
        return false;
    }
    true
}

/// A change to one top-level key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Set the key to this already-formatted YAML value (see [`yaml_str`]).
    Set(String, String),
    /// Remove the key (no-op when absent).
    Remove(String),
}

impl Change {
    /// `Set` with a string value, formatted as a YAML scalar.
    pub fn set(key: &str, value: &str) -> Self {
        Change::Set(key.to_string(), yaml_str(value))
    }

    /// `Set` with a preformatted YAML value (a number, a list).
    pub fn set_raw(key: &str, value: impl Into<String>) -> Self {
        Change::Set(key.to_string(), value.into())
    }

    /// `Remove`.
    pub fn remove(key: &str) -> Self {
        Change::Remove(key.to_string())
    }

    fn key(&self) -> &str {
        match self {
            Change::Set(k, _) | Change::Remove(k) => k,
        }
    }
}

/// Why [`edit`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditError {
    /// The file starts a header but never closes it.
    Unterminated,
    /// The header is not valid UTF-8.
    NotUtf8,
}

/// Applies `changes` to the file `content`, touching only the lines of the
/// keys that change. A file without a header gets one, before the body
/// (after a BOM), the body kept byte for byte. New keys go at the end of the
/// header; a key that changes keeps its line, its trailing comment and its
/// position.
pub fn edit(content: &[u8], changes: &[Change]) -> Result<Vec<u8>, EditError> {
    let layout = split(content, true).expect("complete input always splits");
    let (start, end, body) = match layout {
        Layout::Unterminated => return Err(EditError::Unterminated),
        Layout::None { body } => {
            let eol: &[u8] = if content[body..].windows(2).any(|w| w == b"\r\n") {
                b"\r\n"
            } else {
                b"\n"
            };
            let mut out = Vec::with_capacity(content.len() + 128);
            out.extend_from_slice(&content[..body]);
            out.extend_from_slice(b"---");
            out.extend_from_slice(eol);
            for change in changes {
                if let Change::Set(k, v) = change {
                    out.extend_from_slice(format!("{k}: {v}").as_bytes());
                    out.extend_from_slice(eol);
                }
            }
            out.extend_from_slice(b"---");
            out.extend_from_slice(eol);
            out.extend_from_slice(&content[body..]);
            return Ok(out);
        }
        Layout::Header { start, end, body } => (start, end, body),
    };
    let header = std::str::from_utf8(&content[start..end]).map_err(|_| EditError::NotUtf8)?;
    let crlf = content[end..body].ends_with(b"\r\n")
        || (start >= 2 && &content[start - 2..start] == b"\r\n");
    let eol = if crlf { "\r\n" } else { "\n" };

    // Lines with their terminators, so untouched lines are copied exactly.
    let mut lines: Vec<Cow<'_, str>> = header.split_inclusive('\n').map(Cow::Borrowed).collect();
    let mut removed = vec![false; lines.len()];
    let mut appended: Vec<String> = Vec::new();
    for change in changes {
        let key = change.key();
        let found = lines.iter().enumerate().find_map(|(i, l)| {
            if removed[i] {
                return None;
            }
            let l = l.trim_end_matches(['\n', '\r']);
            split_key_loose(l).filter(|(k, _)| *k == key).map(|_| i)
        });
        match (change, found) {
            (Change::Set(k, v), Some(i)) => {
                let extent = field_extent(&lines, i);
                let line = lines[i].clone();
                let terminator = &line[line.trim_end_matches(['\n', '\r']).len()..];
                let body_of_line = line.trim_end_matches(['\n', '\r']);
                let comment = if extent == 1 {
                    trailing_comment(body_of_line)
                } else {
                    ""
                };
                let terminator = if terminator.is_empty() {
                    eol
                } else {
                    terminator
                };
                lines[i] = Cow::Owned(format!("{k}: {v}{comment}{terminator}"));
                removed[i + 1..i + extent].fill(true);
            }
            (Change::Set(k, v), None) => {
                // An earlier append of the same key is replaced.
                appended.retain(|a| !a.starts_with(&format!("{k}: ")));
                appended.push(format!("{k}: {v}"));
            }
            (Change::Remove(_), Some(i)) => {
                let extent = field_extent(&lines, i);
                removed[i..i + extent].fill(true);
            }
            (Change::Remove(k), None) => appended.retain(|a| !a.starts_with(&format!("{k}: "))),
        }
    }
    let mut out = Vec::with_capacity(content.len() + 64);
    out.extend_from_slice(&content[..start]);
    for (i, line) in lines.iter().enumerate() {
        if !removed[i] {
            out.extend_from_slice(line.as_bytes());
        }
    }
    // The last header line may lack a terminator only if the header is empty.
    if !out.ends_with(b"\n") && out.len() > start {
        out.extend_from_slice(eol.as_bytes());
    }
    for line in &appended {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(eol.as_bytes());
    }
    out.extend_from_slice(&content[end..]);
    Ok(out)
}

/// How many lines the field starting at `i` spans: its own line plus any
/// following indented or `- item` lines (blank lines only when more of the
/// field follows them).
fn field_extent(lines: &[Cow<'_, str>], i: usize) -> usize {
    let mut extent = 1;
    let mut j = i + 1;
    while j < lines.len() {
        let l = lines[j].trim_end_matches(['\n', '\r']);
        if l.trim().is_empty() {
            j += 1;
            continue;
        }
        if l.starts_with(' ') || l.starts_with('\t') || l.starts_with('-') {
            j += 1;
            extent = j - i;
        } else {
            break;
        }
    }
    extent
}

/// The `  # comment` part of a single-line `key: value  # comment`, with the
/// spaces before it, or `""`.
fn trailing_comment(line: &str) -> &str {
    let Some((_, rest)) = split_key(line) else {
        return "";
    };
    let trimmed = rest.trim_start_matches(' ');
    if trimmed.starts_with('#') {
        return rest; // `key:   # comment`: the value was null
    }
    let after = if let Some(inner) = trimmed.strip_prefix('[') {
        match inner.find(']') {
            Some(e) => &inner[e + 1..],
            None => return "",
        }
    } else {
        match scalar_prefix(trimmed, false) {
            Some((_, after)) => after,
            None => return "",
        }
    };
    // `after` starts with the spaces before `#`, or holds no comment.
    if after.trim_start_matches(' ').starts_with('#') {
        after
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(text: &str) -> &str {
        match split(text.as_bytes(), true).unwrap() {
            Layout::Header { start, end, .. } => &text[start..end],
            other => panic!("no header: {other:?}"),
        }
    }

    /// Real YAML, however it nests its text, passes; only collections
    /// count.
    #[test]
    fn nesting_check_passes_real_files() {
        for text in [
            "id: TASK-001\nstatus: ready\ntags: [a, b]\ndependencies:\n  - TASK-002\n  - TASK-003\n",
            "title: fix a[0][1] and {x}\ncommand: \"[[[[[[[[[[[[[[[[\"\nnote: 'it''s [[[[['\n",
            "max_concurrent: 2\nadapters:\n  claude: /usr/bin/claude\nprices:\n  m: {input: 3.0, output: 15.0}\n",
            "body: |\n  [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n  {{{{\nnext: 1\n",
            "# [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\nkey: v # [[[[\n",
            "quoted: \"line one [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n  line two ]]]]\"\nother: x\n",
            "anchored: &a [1, 2]\ntagged: !!seq [3]\nalias: *a\n",
        ] {
            check_nesting(text).unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
            // Staying under the limit, exactly.
        }
        let deep_ok = format!("x: {}{}\n", "[".repeat(63), "]".repeat(63));
        assert!(check_nesting(&deep_ok).is_ok());
    }

    #[test]
    fn nesting_past_the_limit_is_refused_where_it_passes_it() {
        let err = |text: &str| check_nesting(text).expect_err(text);
        let e = err(&format!("id: T-1\nx: {}\n", "[".repeat(64)));
        assert_eq!((e.line, e.column), (1, Some(67)));
        assert_eq!(e.message, "nesting deeper than 64 levels");
        // Flow collections spanning lines, maps, block sequences on one
        // line, indentation staircases.
        let e = err(&format!("x:\n{}", "  [\n".repeat(100)));
        assert_eq!(e.line, 63);
        err(&format!("x: {}\n", "{a: ".repeat(100)));
        err(&format!("x:\n  {}y\n", "- ".repeat(100)));
        let stairs: String = (0..100)
            .map(|k| format!("{}k{k}:\n", " ".repeat(k)))
            .collect();
        let e = err(&stairs);
        assert_eq!((e.line, e.column), (64, Some(65)));
        // Through `parse` (the serde_yaml fallback), in linear time: 250,000
        // levels under the 256 KiB header cap once took minutes.
        let header = format!("id: T-1\nx: {}\n", "[".repeat(250_000));
        let start = std::time::Instant::now();
        let e = parse(&header).unwrap_err();
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(e.message, "nesting deeper than 64 levels");
        let long = format!("x: {}\n", "[a, ".repeat(60_000));
        let start = std::time::Instant::now();
        assert!(check_nesting(&long).is_err());
        let flat = format!("x: [{}]\n", "\"a[b]\", ".repeat(60_000));
        assert!(check_nesting(&flat).is_ok());
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn value_line_finds_the_item_then_the_key() {
        let block = b"---\nid: T-1\ndependencies:\n  - T-10\n  - T-1\ntags: [T-1]\n---\nT-1\n";
        // The item's own line, a whole word (T-10 is not T-1).
        assert_eq!(value_line(block, "dependencies", "T-1"), Some(5));
        assert_eq!(value_line(block, "dependencies", "T-10"), Some(4));
        // Not named under the key (only in a later field or the body): the
        // key's line.
        assert_eq!(value_line(block, "dependencies", "T-2"), Some(3));
        let flow = b"---\nid: T-1\ndependencies: [T-2, T-3]\n---\n";
        assert_eq!(value_line(flow, "dependencies", "T-3"), Some(3));
        assert_eq!(value_line(flow, "tags", "T-3"), None);
        assert_eq!(value_line(b"no header", "dependencies", "T-3"), None);
    }

    #[test]
    fn splits_headers_bom_crlf_and_missing_ones() {
        assert_eq!(
            split(b"---\nid: A\n---\nbody", true),
            Some(Layout::Header {
                start: 4,
                end: 10,
                body: 14
            })
        );
        assert_eq!(
            header_of("\u{feff}---\r\nid: A\r\n---\r\nbody"),
            "id: A\r\n"
        );
        assert_eq!(split(b"# Title\n", true), Some(Layout::None { body: 0 }));
        assert_eq!(split(b"---\nid: A\n", true), Some(Layout::Unterminated));
        assert_eq!(split(b"---\nid: A\n", false), None);
        assert_eq!(split(b"", true), Some(Layout::None { body: 0 }));
        assert_eq!(
            split(b"---\n---", true),
            Some(Layout::Header {
                start: 4,
                end: 4,
                body: 7
            })
        );
    }

    #[test]
    fn fast_parser_reads_task_headers() {
        let h = "id: TASK-006 # the id\nstatus: ready\ntags: [build, \"back end\"]\n\
                 dependencies:\n  - TASK-003\n  - 'TASK-004'\npriority:\n# note\ncreated: 2026-02-03T12:04:30-05:00\n";
        let f = parse_fast(h).expect("fast path");
        assert_eq!(f[0].key, "id");
        assert_eq!(f[0].value, Value::Scalar("TASK-006".into()));
        assert_eq!(
            f[2].value,
            Value::Seq(vec!["build".into(), "back end".into()])
        );
        assert_eq!(
            f[3].value,
            Value::Seq(vec!["TASK-003".into(), "TASK-004".into()])
        );
        assert_eq!(f[3].line, 3);
        assert_eq!(f[4].value, Value::Null);
        assert_eq!(
            f[5].value,
            Value::Scalar("2026-02-03T12:04:30-05:00".into())
        );
    }

    #[test]
    fn unusual_yaml_falls_back_to_serde_yaml() {
        for h in [
            "meta:\n  a: 1\n",
            "title: >\n  folded\n",
            "a: &x 1\nb: *x\n",
            "id: a\nid: b\n",
            "title: a: b\n",
        ] {
            assert!(parse_fast(h).is_none(), "{h:?}");
        }
        let f = parse("meta:\n  a: 1\nid: TASK-1\n").unwrap();
        assert_eq!(f[0].value, Value::Complex);
        assert_eq!(f[1].value, Value::Scalar("TASK-1".into()));
        let e = parse("id: a\nid: b\n").unwrap_err();
        assert!(e.message.contains("duplicate"), "{e:?}");
        let e = parse("id: [a\nstatus: ready\n").unwrap_err();
        assert!(e.line <= 2, "{e:?}");
    }

    #[test]
    fn edit_changes_only_the_lines_of_changed_keys() {
        let file =
            "---\n# a comment\nid: TASK-1\nstatus: ready   # keep me\n\ntags: [a]\n---\nbody\n";
        let out = edit(
            file.as_bytes(),
            &[
                Change::set("status", "running"),
                Change::set("assigned", "BLD-001"),
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "---\n# a comment\nid: TASK-1\nstatus: running   # keep me\n\ntags: [a]\nassigned: BLD-001\n---\nbody\n"
        );
    }

    #[test]
    fn edit_replaces_block_lists_and_removes_keys() {
        let file = "---\nid: T\ndependencies:\n  - A\n  - B\nstatus: ready\nlease: x\n---\n";
        let out = edit(
            file.as_bytes(),
            &[
                Change::set_raw("dependencies", yaml_list(&["C"])),
                Change::remove("lease"),
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "---\nid: T\ndependencies: [C]\nstatus: ready\n---\n"
        );
    }

    #[test]
    fn edit_adds_a_header_and_keeps_crlf_and_bom() {
        let out = edit(
            b"\xEF\xBB\xBF# Title\r\nbody\r\n",
            &[Change::set("id", "TASK-9")],
        )
        .unwrap();
        assert_eq!(
            out,
            b"\xEF\xBB\xBF---\r\nid: TASK-9\r\n---\r\n# Title\r\nbody\r\n"
        );
        let out = edit(
            b"---\r\nid: A\r\n---\r\nx",
            &[Change::set("status", "done")],
        )
        .unwrap();
        assert_eq!(out, b"---\r\nid: A\r\nstatus: done\r\n---\r\nx");
    }

    #[test]
    fn formatted_values_read_back_unchanged() {
        for s in [
            "plain",
            "with: colon",
            "#hash",
            "yes",
            "123",
            "",
            " padded ",
            "a \"q\"",
            "x\ny",
            "- dash",
            "-flag",
            "2026-02-03T12:04:30-05:00",
        ] {
            let h = format!("k: {}\n", yaml_str(s));
            let f = parse(&h).unwrap();
            assert_eq!(f[0].value, Value::Scalar(s.into()), "{s:?} as {h:?}");
        }
        let h = format!("k: {}\n", yaml_list(&["a,b", "c"]));
        assert_eq!(
            parse(&h).unwrap()[0].value,
            Value::Seq(vec!["a,b".into(), "c".into()])
        );
    }
}
