//! The one pass over a JSON body behind [`JsonEstimator`](super::JsonEstimator):
//! a lexer that knows only strings, keys and nesting, so that it can tell
//! text from base64, a top-level `max_tokens` from a schema's, and an
//! image part from its bytes, without parsing or allocating.
//!
//! Where the time goes on a chat body is the strings: finding where each
//! one ends, and counting the character classes of the text ones.
//!
//! - A string's end is looked for in its first 16 bytes as two 8-byte
//!   words (a SWAR test for a quote or a backslash), where most keys and
//!   short values end; a longer string is left to `memchr2`.
//! - A text string's light and non-ASCII bytes are counted in 224-byte
//!   runs by one plain loop with byte-wide sums, which the compiler
//!   vectorises, and its last bytes in one 32-byte load masked to the
//!   string; a string under 16 bytes is counted in its two words.
//! - Only the bytes between strings (`":"`, `","`, brackets, numbers) are
//!   walked one by one, and what the scan finds rarely (attachments, the
//!   output maximum) is kept out of the loop.
//!
//! A single pass that reads quotes, backslashes and classes from the same
//! 64-byte blocks as bitmasks would do better, but safe portable Rust has
//! no way to ask for a SIMD compare as a bitmask (`std::simd` is not
//! stable, and LLVM turns a loop of compares into one only to test or
//! count them).
//!
//! The answers are the same, on every input, as the scan's before it
//! (`reference.rs`, which a property test compares with this one).

use memchr::memchr2;

/// The unit of [`Scan::units`]: a twelfth of a token, so that 1/4, 2/3 and
/// 1 token per byte are whole numbers.
pub(super) const UNITS_PER_TOKEN: u64 = 12;
/// An ASCII letter or space in text, and any byte of the JSON around it:
/// 4 to a token.
const LIGHT: u64 = 3;
/// An ASCII digit, punctuation or control byte in text: a token each.
const DENSE: u64 = 12;
/// A byte of a non-ASCII character: 2/3 of a token (2 for a CJK character).
const NON_ASCII: u64 = 8;

/// A string at least this long whose ends are all base64 is a payload, not
/// text (text has a space or a non-base64 byte long before that).
const PAYLOAD_MIN_LEN: usize = 256;

/// What one pass found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Scan {
    /// Input cost of the text and the JSON around it, in
    /// [`UNITS_PER_TOKEN`]ths of a token (base64 payloads excluded).
    pub(super) units: u64,
    /// Image, file or audio parts (each counted at the estimator's price).
    pub(super) attachments: u64,
    /// The output maximum the body names, if any.
    pub(super) max_tokens: Option<u64>,
    /// Whether the body ended inside a base64 payload (a scan cut short by
    /// its limit: the rest of the body is more of the payload).
    pub(super) cut_in_payload: bool,
}

/// What a key means to the scan.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    /// `type`: a string value next may name an image part.
    Type,
    /// Gemini's `generationConfig` (or `generation_config`).
    GenerationConfig,
    /// An output-maximum name read at the top level, by its rank of
    /// preference: OpenAI's current name, OpenAI's older and Anthropic's,
    /// the responses API's (`max_output_tokens`, also Gemini's inside
    /// `generationConfig`).
    Max(usize),
    /// Gemini's `maxOutputTokens`, read inside `generationConfig`.
    MaxOutputTokens,
    /// Gemini's inline or file data: an attachment part.
    Part,
    /// Any other name.
    Other,
}

impl Key {
    fn of(name: &[u8]) -> Key {
        match name {
            b"type" => Key::Type,
            b"generationConfig" | b"generation_config" => Key::GenerationConfig,
            b"max_completion_tokens" => Key::Max(0),
            b"max_tokens" => Key::Max(1),
            b"max_output_tokens" => Key::Max(2),
            b"maxOutputTokens" => Key::MaxOutputTokens,
            b"inline_data" | b"inlineData" | b"file_data" | b"fileData" => Key::Part,
            _ => Key::Other,
        }
    }
}

/// What the scan finds rarely, kept out of its hot loop (so that the
/// loop's state fits in registers).
#[derive(Default)]
struct Rare {
    /// Image, file or audio parts so far.
    attachments: u64,
    /// The first occurrence of each output-maximum name: its value, if a
    /// number.
    max: [Option<Option<u64>>; 3],
    /// Whether the payload of the current image (or file) part was seen
    /// (so that it is not counted twice).
    part_paid: bool,
    /// The last top-level key was Gemini's `generationConfig`.
    in_generation_config: bool,
    /// The last payload ran to the end of the body.
    cut_in_payload: bool,
}

impl Rare {
    /// A key the scan reads (not [`Key::Other`]) at `depth`; `rest` is the
    /// body after it.
    #[inline(never)]
    fn key(&mut self, key: Key, depth: usize, rest: &[u8], part_depth: &mut usize) {
        if depth == 1 {
            self.in_generation_config = key == Key::GenerationConfig;
            if let Key::Max(slot) = key {
                self.max[slot].get_or_insert_with(|| value_u64(rest));
            }
        } else if depth == 2
            && self.in_generation_config
            && matches!(key, Key::Max(2) | Key::MaxOutputTokens)
        {
            self.max[2].get_or_insert_with(|| value_u64(rest));
        }
        if *part_depth == 0 && key == Key::Part {
            self.open_part(depth, part_depth);
        }
    }

    /// An image or file part opens in the object at `depth`.
    fn open_part(&mut self, depth: usize, part_depth: &mut usize) {
        self.attachments += 1;
        (*part_depth, self.part_paid) = (depth, false);
    }

    /// A base64 payload; `cut` if the body ended inside it.
    #[inline(never)]
    fn payload(&mut self, part_depth: usize, cut: bool) {
        if part_depth != 0 && !self.part_paid {
            self.part_paid = true;
        } else {
            self.attachments += 1;
        }
        self.cut_in_payload = cut;
    }
}

/// One pass over `body`; see the module docs.
pub(super) fn scan(body: &[u8]) -> Scan {
    let mut rare = Rare::default();
    let mut text_units = 0u64;
    // bytes of value strings: text, and base64 payloads (which cost nothing)
    let mut value_bytes = 0usize;
    // nesting of objects and arrays around the current byte
    let mut depth = 0usize;
    // the depth of the object that is an image (or file) part, 0 if none
    let mut part_depth = 0usize;
    // the last key was `type` and its value comes next (a string value
    // may name an image part)
    let mut after_type = false;

    let mut pos = 0;
    'strings: loop {
        // the bytes up to the next quote: brackets change the nesting
        let open = loop {
            let Some(&b) = body.get(pos) else {
                break 'strings;
            };
            match b {
                b'"' => break pos,
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
            pos += 1;
        };
        let start = open + 1;
        let end = string_end(body, start);
        let string = &body[start..end];
        pos = (end + 1).min(body.len());

        if let Some(colon) = colon_at(body, pos) {
            let key = Key::of(string);
            after_type = key == Key::Type;
            if key != Key::Other {
                rare.key(key, depth, &body[pos..], &mut part_depth);
            } else if depth == 1 {
                rare.in_generation_config = false;
            }
            // the blanks and the colon change nothing
            pos = colon + 1;
            continue;
        }

        if after_type && part_depth == 0 && is_attachment_type(string) {
            rare.open_part(depth, &mut part_depth);
        }
        after_type = false;
        value_bytes += string.len();
        if is_payload(string) {
            rare.payload(part_depth, end == body.len());
        } else {
            let counts = match short_counts(body, start, end) {
                Some(counts) => counts,
                None => class_counts(body, start, end),
            };
            text_units += units(string.len(), counts);
        }
    }
    let around = (body.len() - value_bytes) as u64;
    Scan {
        units: text_units.saturating_add(around * LIGHT),
        attachments: rare.attachments,
        max_tokens: rare.max.iter().find_map(|found| found.flatten()),
        cut_in_payload: rare.cut_in_payload,
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

/// The index of the colon at `at` after optional blanks, if the next byte
/// that is not blank is one (the string before was a key).
#[inline(always)]
fn colon_at(body: &[u8], at: usize) -> Option<usize> {
    // most JSON has no blank there
    match body.get(at) {
        Some(b':') => return Some(at),
        Some(b) if !b.is_ascii_whitespace() => return None,
        _ => {}
    }
    let rest = body.get(at..)?;
    let i = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    (rest[i] == b':').then_some(at + i)
}

/// `0x01` in every byte of a word.
const ONES: u64 = 0x0101_0101_0101_0101;
/// The high bit of every byte of a word.
const HIGHS: u64 = 0x8080_8080_8080_8080;
/// The low 7 bits of every byte of a word.
const LOWS: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// The 8 bytes at `at` as a little-endian word, if there are 8.
#[inline(always)]
fn word_at(body: &[u8], at: usize) -> Option<u64> {
    body.get(at..)?
        .first_chunk::<8>()
        .map(|w| u64::from_le_bytes(*w))
}

/// The high bit of each byte of a word that is a quote or a backslash. The
/// lowest one set is exact (a borrow only marks bytes above a true match),
/// which is all a search needs.
#[inline(always)]
fn stops_in(word: u64) -> u64 {
    fn zero_bytes(x: u64) -> u64 {
        x.wrapping_sub(ONES) & !x & HIGHS
    }
    zero_bytes(word ^ (ONES * u64::from(b'"'))) | zero_bytes(word ^ (ONES * u64::from(b'\\')))
}

/// The index of the quote that closes the string whose content starts at
/// `start`, or the body's length if it never closes.
#[inline(always)]
fn string_end(body: &[u8], start: usize) -> usize {
    // the first 16 bytes in two words: most keys and short values end there
    let mut at = start;
    for _ in 0..2 {
        let Some(word) = word_at(body, at) else {
            break;
        };
        let stops = stops_in(word);
        if stops != 0 {
            let i = at + (stops.trailing_zeros() / 8) as usize;
            if body[i] == b'"' {
                return i;
            }
            return string_end_from(body, i + 2); // an escape: skip the escaped byte
        }
        at += 8;
    }
    string_end_from(body, at)
}

/// [`string_end`] from `at` (which is not inside an escape), by `memchr2`.
#[inline(never)]
fn string_end_from(body: &[u8], mut at: usize) -> usize {
    while let Some(found) = body.get(at..).and_then(|rest| memchr2(b'"', b'\\', rest)) {
        let i = at + found;
        if body[i] == b'"' {
            return i;
        }
        at = i + 2; // an escape: skip the escaped byte
    }
    body.len()
}

/// Whether a string value is a base64 payload: a `data:` URL with
/// `;base64,`, or a long string that starts and ends in the base64
/// alphabet (standard or URL-safe, `\/` escapes included).
#[inline(always)]
fn is_payload(s: &[u8]) -> bool {
    // most strings are short text: two tests
    (s.len() >= PAYLOAD_MIN_LEN || s.starts_with(b"data:")) && is_long_payload(s)
}

#[inline(never)]
fn is_long_payload(s: &[u8]) -> bool {
    fn base64(s: &[u8]) -> bool {
        // one byte at a time: text fails at its first space
        for &b in s {
            if !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_' | b'\\'))
            {
                return false;
            }
        }
        true
    }
    if let Some(url) = s.strip_prefix(b"data:") {
        return memchr::memmem::find(&url[..url.len().min(128)], b";base64,").is_some();
    }
    s.len() >= PAYLOAD_MIN_LEN && base64(&s[..64]) && base64(&s[s.len() - 16..])
}

/// The cost of a text string's bytes, in units.
#[cfg(test)]
pub(super) fn text_units_of(s: &[u8]) -> u64 {
    let counts = short_counts(s, 0, s.len()).unwrap_or_else(|| class_counts(s, 0, s.len()));
    units(s.len(), counts)
}

/// The cost of the text `body[start..end]`, in units, counted as the scan
/// counts a text string inside a body.
#[cfg(test)]
pub(super) fn text_units_in(body: &[u8], start: usize, end: usize) -> u64 {
    let counts = short_counts(body, start, end).unwrap_or_else(|| class_counts(body, start, end));
    units(end - start, counts)
}

/// The cost of `len` bytes of text with these light and non-ASCII bytes.
fn units(len: usize, (light, non_ascii): (u64, u64)) -> u64 {
    let dense = len as u64 - non_ascii - light;
    light * LIGHT + dense * DENSE + non_ascii * NON_ASCII
}

/// Whether a byte of text is light: an ASCII letter or a space.
#[inline(always)]
fn is_light(b: u8) -> bool {
    // (b | 0x20) in 'a'..='z' is (b | 0x20) + 0x1f in 0x80..=0x99, a
    // signed compare
    (((b | 0x20).wrapping_add(0x1f) as i8) < -102) | (b == b' ')
}

/// The light and non-ASCII bytes of `body[start..end]`, if the string is
/// under 16 bytes and the body has two words from `start`: counted in the
/// words' bytes at once.
#[inline(always)]
fn short_counts(body: &[u8], start: usize, end: usize) -> Option<(u64, u64)> {
    let n = end - start;
    if n >= 16 {
        return None;
    }
    let (light, non_ascii) = word_counts(word_at(body, start)?, n.min(8));
    if n <= 8 {
        return Some((light, non_ascii));
    }
    let (more_light, more_non_ascii) = word_counts(word_at(body, start + 8)?, n - 8);
    Some((light + more_light, non_ascii + more_non_ascii))
}

/// The light and non-ASCII bytes among the low `n` (at most 8) bytes of a
/// little-endian word. Every sum stays inside its byte.
#[inline(always)]
fn word_counts(word: u64, n: usize) -> (u64, u64) {
    let keep = if n >= 8 {
        HIGHS
    } else {
        HIGHS & ((1u64 << (8 * n)) - 1)
    };
    // a letter: b ASCII and (b | 0x20) in 'a'..='z'
    let folded = (word | (ONES * 0x20)) & LOWS;
    let from_a = folded + ONES * (0x80 - 0x61);
    let past_z = folded + ONES * (0x80 - 0x7b);
    let letters = from_a & !past_z & !word;
    // a space: zero after a xor with spaces
    let spaced = word ^ (ONES * 0x20);
    let spaces = !(((spaced & LOWS) + LOWS) | spaced);
    let count = |high_bits: u64| ((high_bits & keep) >> 7).wrapping_mul(ONES) >> 56;
    (count(letters | spaces), count(word))
}

/// The light and non-ASCII bytes of `s`, at most 255 bytes long: one plain
/// loop with byte-wide sums, which the compiler vectorises.
#[inline(always)]
fn count_run(s: &[u8]) -> (u64, u64) {
    let (mut light, mut non_ascii) = (0u8, 0u8);
    for &b in s {
        light = light.wrapping_add(u8::from(is_light(b)));
        non_ascii = non_ascii.wrapping_add(b >> 7);
    }
    (u64::from(light), u64::from(non_ascii))
}

/// `LANES[32 - n..][..32]` is set in the first `n` lanes of 32.
const LANES: [u8; 64] = {
    let mut lanes = [0u8; 64];
    let mut i = 0;
    while i < 32 {
        lanes[i] = 0xff;
        i += 1;
    }
    lanes
};

/// A mask set in the first `n` (at most 32) lanes of 32.
#[inline(always)]
fn first_lanes(n: usize) -> &'static [u8; 32] {
    LANES[32 - n..].first_chunk::<32>().unwrap_or(&[0; 32])
}

/// The light and non-ASCII bytes of `body[start..end]`.
#[inline(never)]
fn class_counts(body: &[u8], start: usize, end: usize) -> (u64, u64) {
    let s = &body[start..end];
    let (mut light, mut non_ascii) = (0u64, 0u64);
    let mut add = |(l, n): (u64, u64)| {
        light += l;
        non_ascii += n;
    };
    // 224 bytes at a time (byte-wide sums hold 255), then the whole
    // 32-byte chunks left
    let whole = s.len() & !31;
    let mut runs = s[..whole].chunks_exact(224);
    for run in &mut runs {
        add(count_run(run.first_chunk::<224>().unwrap_or(&[0; 224])));
    }
    add(count_run(runs.remainder()));
    // the last 0 to 31 bytes in one 32-byte load, which may reach beyond
    // the string into the body: the lanes outside it are masked to zero,
    // which counts nothing
    let at = start + whole;
    let left = end - at;
    if left > 0 {
        match body.len().checked_sub(32) {
            Some(last) => {
                let load = at.min(last);
                let chunk = body[load..].first_chunk::<32>().unwrap_or(&[0; 32]);
                let (before, upto) = (first_lanes(at - load), first_lanes(at - load + left));
                let masked: [u8; 32] = std::array::from_fn(|j| chunk[j] & upto[j] & !before[j]);
                add(count_run(&masked));
            }
            None => add(count_run(&body[at..end])),
        }
    }
    (light, non_ascii)
}

/// The unsigned integer after optional blanks, a colon and optional
/// blanks, if any (not the integer part of a fraction).
fn value_u64(rest: &[u8]) -> Option<u64> {
    let rest = rest.trim_ascii_start();
    let rest = rest.strip_prefix(b":")?.trim_ascii_start();
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || matches!(rest.get(digits), Some(b'.' | b'e' | b'E')) {
        return None; // not an unsigned integer
    }
    rest[..digits].iter().try_fold(0u64, |n, &digit| {
        n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}
