//! The JSON estimator's scan as it was before it was made fast (issue
//! #12): kept as it was (only its `Scan` type is now the real scan's), as
//! the reference the tests compare the fast scan with. Every input must
//! give the same `Scan`.
use memchr::{memchr, memchr2};

use super::scan::Scan;

const LIGHT: u64 = 3;
const DENSE: u64 = 12;
const NON_ASCII: u64 = 8;

/// A string at least this long whose ends are all base64 is a payload, not
/// text (text has a space or a non-base64 byte long before that).
const PAYLOAD_MIN_LEN: usize = 256;

/// The output-maximum names read at the top level, in order of preference:
/// OpenAI's current name, OpenAI's older and Anthropic's, and the
/// responses API's (also Gemini's, inside `generationConfig`).
const MAX_NAMES: [&[u8]; 3] = [
    b"max_completion_tokens",
    b"max_tokens",
    b"max_output_tokens",
];

/// One pass over `body`.
pub(super) fn scan(body: &[u8]) -> Scan {
    let mut text_units = 0u64;
    // bytes of value strings: text, and base64 payloads (which cost nothing)
    let mut value_bytes = 0usize;
    let mut attachments = 0u64;
    // the first occurrence of each of MAX_NAMES: its value, if a number
    let mut max: [Option<Option<u64>>; 3] = [None; 3];
    // nesting of objects and arrays around the current byte
    let mut depth = 0usize;
    // the depth of the object that is an image (or file) part, 0 if none,
    // and whether its payload was seen (so that it is not counted twice)
    let mut part_depth = 0usize;
    let mut part_paid = false;
    // the last key was `type` and its value comes next (a string value
    // may name an image part)
    let mut after_type = false;
    // the last top-level key was Gemini's `generationConfig`
    let mut in_generation_config = false;
    let mut cut_in_payload = false;

    let mut pos = 0;
    while let Some(at) = memchr(b'"', &body[pos..]) {
        let open = pos + at;
        for &b in &body[pos..open] {
            match b {
                b'{' | b'[' => {
                    depth += 1;
                    after_type = false;
                }
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    after_type = false;
                    if depth < part_depth {
                        part_depth = 0;
                    }
                }
                _ => {}
            }
        }
        let end = string_end(body, open + 1);
        let string = &body[open + 1..end];
        pos = (end + 1).min(body.len());
        let rest = &body[pos..];

        if followed_by_colon(rest) {
            after_type = string == b"type";
            if depth == 1 {
                in_generation_config = matches!(string, b"generationConfig" | b"generation_config");
                if let Some(slot) = MAX_NAMES.iter().position(|name| *name == string) {
                    max[slot].get_or_insert_with(|| value_u64(rest));
                }
            } else if depth == 2
                && in_generation_config
                && matches!(string, b"maxOutputTokens" | b"max_output_tokens")
            {
                max[2].get_or_insert_with(|| value_u64(rest));
            }
            if part_depth == 0
                && matches!(
                    string,
                    b"inline_data" | b"inlineData" | b"file_data" | b"fileData"
                )
            {
                attachments += 1;
                (part_depth, part_paid) = (depth, false);
            }
            continue;
        }

        if after_type && part_depth == 0 && is_attachment_type(string) {
            attachments += 1;
            (part_depth, part_paid) = (depth, false);
        }
        after_type = false;
        value_bytes += string.len();
        if is_payload(string) {
            if part_depth != 0 && !part_paid {
                part_paid = true;
            } else {
                attachments += 1;
            }
            cut_in_payload = end == body.len();
        } else {
            text_units += text_units_of(string);
        }
    }
    let around = (body.len() - value_bytes) as u64;
    Scan {
        units: text_units.saturating_add(around * LIGHT),
        attachments,
        max_tokens: max.iter().find_map(|found| found.flatten()),
        cut_in_payload,
    }
}

/// Content-part types that are an image, a file or audio: OpenAI chat
/// (`image_url`, `file`, `input_audio`), OpenAI responses (`input_image`,
/// `input_file`), Anthropic (`image`, `document`).
fn is_attachment_type(value: &[u8]) -> bool {
    matches!(
        value,
        b"image_url"
            | b"image"
            | b"input_image"
            | b"document"
            | b"file"
            | b"input_file"
            | b"input_audio"
    )
}

/// The index of the quote that closes the string whose content starts at
/// `at`, or the body's length if it never closes.
fn string_end(body: &[u8], mut at: usize) -> usize {
    while let Some(found) = body.get(at..).and_then(|rest| memchr2(b'"', b'\\', rest)) {
        let i = at + found;
        if body[i] == b'"' {
            return i;
        }
        at = i + 2; // an escape: skip the escaped byte
    }
    body.len()
}

/// Whether the next byte that is not whitespace is a colon (the string
/// before was a key).
fn followed_by_colon(rest: &[u8]) -> bool {
    rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b':')
}

/// Whether a string value is a base64 payload: a `data:` URL with
/// `;base64,`, or a long string that starts and ends in the base64
/// alphabet (standard or URL-safe, `\/` escapes included).
fn is_payload(s: &[u8]) -> bool {
    fn base64(b: &u8) -> bool {
        b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_' | b'\\')
    }
    if let Some(url) = s.strip_prefix(b"data:") {
        return memchr::memmem::find(&url[..url.len().min(128)], b";base64,").is_some();
    }
    s.len() >= PAYLOAD_MIN_LEN && s[..64].iter().all(base64) && s[s.len() - 16..].iter().all(base64)
}

/// The cost of a text string's bytes, in units.
pub(super) fn text_units_of(s: &[u8]) -> u64 {
    // Counts the non-ASCII bytes and the light ones (an ASCII letter or a
    // space) of a block; the rest is dense. Fixed 64-byte blocks with
    // byte-wide counters, which the compiler vectorises.
    fn count(block: &[u8]) -> (u64, u64) {
        let (mut non_ascii, mut light) = (0u8, 0u8);
        for &b in block {
            non_ascii += b >> 7;
            light += u8::from(((b | 0x20).wrapping_sub(b'a') < 26) | (b == b' '));
        }
        (u64::from(non_ascii), u64::from(light))
    }
    let mut blocks = s.chunks_exact(64);
    let (mut non_ascii, mut light) = (0u64, 0u64);
    for block in &mut blocks {
        let block: &[u8; 64] = block.try_into().expect("chunks_exact(64) yields 64 bytes");
        let (n, l) = count(block);
        non_ascii += n;
        light += l;
    }
    let (n, l) = count(blocks.remainder());
    non_ascii += n;
    light += l;
    let dense = s.len() as u64 - non_ascii - light;
    light * LIGHT + dense * DENSE + non_ascii * NON_ASCII
}

/// The unsigned integer after optional spaces, a colon and optional
/// spaces, if any (not the integer part of a fraction).
fn value_u64(rest: &[u8]) -> Option<u64> {
    let rest = trim(rest);
    let rest = trim(rest.strip_prefix(b":")?);
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || matches!(rest.get(digits), Some(b'.' | b'e' | b'E')) {
        return None; // not an unsigned integer
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

fn trim(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}
