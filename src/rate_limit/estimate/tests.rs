use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::reference::{scan as reference_scan, text_units_of as reference_text_units};
use super::scan::{scan, text_units_in, text_units_of, Scan, UNITS_PER_TOKEN};
use super::*;

fn input(body: &str) -> u64 {
    JsonEstimator::new()
        .estimate_bytes(Some(body.as_bytes()))
        .input_tokens
}

fn output(body: &str) -> u64 {
    JsonEstimator::new()
        .estimate_bytes(Some(body.as_bytes()))
        .output_tokens
}

fn text_tokens(text: &str) -> u64 {
    text_units_of(text.as_bytes()).div_ceil(UNITS_PER_TOKEN)
}

#[test]
fn a_split_estimate_is_charged_where_it_belongs() {
    assert_eq!(Costs::from(TokenEstimate::new(10, 20)), Costs::new(10, 20));
    assert_eq!(Costs::from(TokenEstimate::total(30)), Costs::new(30, 0));
    assert_eq!(TokenEstimate::new(10, 20).total_tokens(), 30);
    assert_eq!(TokenEstimate::new(u64::MAX, 1).total_tokens(), u64::MAX);
}

#[test]
fn max_tokens_is_read_at_the_top_level_only() {
    // A tool's JSON schema with a `max_tokens` property, before the body's own.
    let body = r#"{"tools":[{"name":"summarize","input_schema":{"type":"object",
        "properties":{"max_tokens":{"type":"integer","default":50}}},"max_tokens":9}],
        "max_tokens":200,"messages":[]}"#;
    assert_eq!(output(body), 200);
    // Only nested: the default.
    assert_eq!(
        output(r#"{"metadata":{"max_tokens":7},"messages":[]}"#),
        1024
    );
    assert_eq!(
        output(r#"{"messages":[{"role":"user","max_tokens":7}]}"#),
        1024
    );
    // In text, even with escaped quotes around it.
    assert_eq!(
        output(r#"{"messages":[{"role":"user","content":"\"max_tokens\": 5"}]}"#),
        1024
    );
    assert_eq!(
        output(r#"{"messages":[{"content":"say \"max_tokens\":5, \\"}],"max_tokens":8}"#),
        8
    );
    // Gemini's, inside the top-level generationConfig only.
    assert_eq!(
        output(r#"{"contents":[],"generationConfig":{"temperature":0,"maxOutputTokens":64}}"#),
        64
    );
    assert_eq!(
        output(r#"{"generation_config":{"max_output_tokens":7}}"#),
        7
    );
    assert_eq!(
        output(r#"{"generationConfig":{"thinkingConfig":{"maxOutputTokens":9}}}"#),
        1024
    );
    assert_eq!(output(r#"{"safetySettings":{"maxOutputTokens":9}}"#), 1024);
    assert_eq!(
        output(r#"{"generationConfig":{},"maxOutputTokens":9}"#),
        1024
    );
    // The responses API's name.
    assert_eq!(output(r#"{"input":"hi","max_output_tokens":33}"#), 33);
}

#[test]
fn the_names_keep_their_order_of_preference() {
    // the first name that is present with a number wins, in this order
    assert_eq!(output(r#"{"max_tokens":3,"max_completion_tokens":9}"#), 9);
    assert_eq!(output(r#"{"max_output_tokens":4,"max_tokens":3}"#), 3);
    // only a name's first occurrence counts
    assert_eq!(output(r#"{"max_tokens":"x","max_tokens":5}"#), 1024);
    assert_eq!(output(r#"{"max_tokens":"x","max_output_tokens":5}"#), 5);
    // near misses are not the names
    assert_eq!(
        output(r#"{"xmax_tokens":5,"max_tokens_x":6,"tokens":7}"#),
        1024
    );
    assert_eq!(output(r#"{"max_tokens" : 12 }"#), 12);
    // not an unsigned integer
    for value in ["18446744073709551616", "12.5", "1e3", "-5", "null", "\"7\""] {
        assert_eq!(
            output(&format!(r#"{{"max_tokens":{value}}}"#)),
            1024,
            "{value}"
        );
    }
    assert_eq!(output("tokens\""), 1024);
    assert_eq!(
        JsonEstimator::new().estimate_bytes(None),
        Costs::new(0, 1024)
    );
}

/// A base64 image of about 48 KB.
fn base64_image() -> String {
    "iVBORw0KGgoAAAANSUhEUgAA".repeat(2_000)
}

#[test]
fn an_image_costs_its_price_not_its_base64() {
    // Each shape with a payload; each must count one attachment, and its
    // payload nothing (the same units as with an empty payload).
    let shapes: [fn(&str) -> String; 7] = [
        // OpenAI chat completions, a data URL
        |b64| {
            format!(
                r#"{{"messages":[{{"role":"user","content":[{{"type":"text","text":"Describe it."}},
            {{"type":"image_url","image_url":{{"url":"data:image/png;base64,{b64}","detail":"high"}}}}]}}]}}"#
            )
        },
        // OpenAI responses
        |b64| {
            format!(
                r#"{{"input":[{{"role":"user","content":[{{"type":"input_text","text":"Describe it."}},
            {{"type":"input_image","image_url":"data:image/jpeg;base64,{b64}"}}]}}]}}"#
            )
        },
        // OpenAI chat completions, a PDF
        |b64| {
            format!(
                r#"{{"messages":[{{"role":"user","content":[{{"type":"file","file":{{"filename":"a.pdf",
            "file_data":"data:application/pdf;base64,{b64}"}}}}]}}]}}"#
            )
        },
        // Anthropic
        |b64| {
            format!(
                r#"{{"messages":[{{"role":"user","content":[{{"type":"image","source":{{"type":"base64",
            "media_type":"image/png","data":"{b64}"}}}},{{"type":"text","text":"Describe it."}}]}}]}}"#
            )
        },
        // Gemini, REST (camelCase) and proto (snake_case) names
        |b64| {
            format!(
                r#"{{"contents":[{{"parts":[{{"text":"Describe it."}},{{"inlineData":{{"mimeType":"image/png","data":"{b64}"}}}}]}}]}}"#
            )
        },
        |b64| {
            format!(
                r#"{{"contents":[{{"parts":[{{"inline_data":{{"mime_type":"image/png","data":"{b64}"}}}},{{"text":"Describe it."}}]}}]}}"#
            )
        },
        // an unknown shape: a long base64 string anywhere is not text
        |b64| {
            format!(
                r#"{{"messages":[{{"role":"user","content":"Describe it."}}],"metadata":{{"blob":"{b64}"}}}}"#
            )
        },
    ];
    let b64 = base64_image();
    for shape in shapes {
        let (with, without) = (shape(&b64), shape(""));
        let scanned = scan(with.as_bytes());
        assert_eq!(scanned.attachments, 1, "{without}");
        assert_eq!(scanned.units, scan(without.as_bytes()).units, "{without}");
        let tokens = input(&with);
        assert!(
            tokens > DEFAULT_IMAGE_TOKENS && tokens < DEFAULT_IMAGE_TOKENS + 60,
            "{tokens}: {without}"
        );
    }
    // An image by URL has no payload: the part alone counts.
    let url = r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://example.com/a.png"}}]}]}"#;
    assert_eq!(scan(url.as_bytes()).attachments, 1);
    let anthropic_url = r#"{"messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"https://example.com/a.png"}}]}]}"#;
    assert_eq!(scan(anthropic_url.as_bytes()).attachments, 1);
    // Two images, two prices; the price is the estimator's.
    let two = format!(
        r#"{{"messages":[{{"role":"user","content":[{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{b64}"}}}},
            {{"type":"image_url","image_url":{{"url":"https://example.com/b.png"}}}}]}}]}}"#
    );
    assert_eq!(scan(two.as_bytes()).attachments, 2);
    let cheap = JsonEstimator::new().image_tokens(85);
    let tokens = cheap.estimate_bytes(Some(two.as_bytes())).input_tokens;
    assert!((170..230).contains(&tokens), "{tokens}");
    // A type named `image` in a tool's schema is not a part... unless it
    // is a value of a `type` key, which is what a part says.
    let schema =
        r#"{"tools":[{"name":"draw","input_schema":{"properties":{"image":{"type":"string"}}}}]}"#;
    assert_eq!(scan(schema.as_bytes()).attachments, 0);
}

#[test]
fn long_text_is_not_taken_for_base64() {
    let prose = "The package arrived two days late. ".repeat(20);
    let cjk = "包裹晚到了两天".repeat(40);
    let url = format!("https://example.com/{}", "segment/".repeat(40));
    for text in [&prose, &cjk, &url] {
        let body = json!({"messages":[{"role":"user","content": text}]}).to_string();
        let scanned = scan(body.as_bytes());
        assert_eq!(scanned.attachments, 0, "{text}");
        assert!(input(&body) >= text_tokens(text), "{text}");
    }
    // Short base64-looking strings are text too.
    assert_eq!(scan(br#"{"id":"chatcmpl-AbC123xyz"}"#).attachments, 0);
}

#[test]
fn text_counts_by_its_characters() {
    // letters and spaces 4 to a token, digits and punctuation 1 each,
    // each byte of a non-ASCII character 2/3
    assert_eq!(text_tokens("abcd efg"), 2);
    assert_eq!(text_tokens("12,5"), 4);
    assert_eq!(text_tokens("包裹"), 4);
    assert_eq!(text_tokens("é"), 2);
    assert_eq!(text_tokens(""), 0);
    // the JSON around the text: 4 bytes to a token
    let body = r#"{"messages":[{"role":"user","content":"abcd"}]}"#;
    assert_eq!(input(body), (body.len() as u64).div_ceil(4));
}

/// Texts and their token counts in OpenAI's `cl100k_base` and `o200k_base`
/// (tiktoken-rs 0.12.1) and in the tokenizer Anthropic published for
/// Claude 2 (`@anthropic-ai/tokenizer` 0.0.4, the only one it made public).
/// The first two are checked live by the `tiktoken` feature's test below.
pub(super) const MEASURED: &[(&str, u64, u64, u64)] = &[
    ("The package arrived two days late and the box was crushed, but the headphones inside work well and the sound is clear. I would buy from this shop again, although I hope the delivery gets faster next time.", 42, 42, 42),
    ("Label the sentiment: positive, negative or neutral. Answer with one word.", 15, 15, 15),
    ("fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v.iter().sum::<u32>());\n}", 42, 42, 50),
    ("Order 48213, 2024-11-03T14:22:09Z, total 1,299.95 EUR, SKU 7731-AB-0042, qty 17, ref 0x3fa9c1.", 53, 53, 50),
    ("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", 43, 43, 44),
    ("Das Paket kam zwei Tage zu spät an und der Karton war zerdrückt, aber die Kopfhörer funktionieren gut und der Klang ist klar. Ich würde hier wieder bestellen.", 42, 36, 49),
    ("Le colis est arrivé avec deux jours de retard et la boîte était écrasée, mais les écouteurs fonctionnent bien et le son est clair. Je commanderais à nouveau chez ce vendeur.", 49, 39, 52),
    ("Посылка пришла на два дня позже, и коробка была помята, но наушники работают хорошо, и звук чистый. Я бы снова заказал в этом магазине.", 68, 38, 75),
    ("Το δέμα έφτασε δύο μέρες αργότερα και το κουτί ήταν τσακισμένο, αλλά τα ακουστικά λειτουργούν καλά και ο ήχος είναι καθαρός.", 105, 44, 135),
    ("وصل الطرد متأخرا يومين وكان الصندوق محطما، لكن السماعات تعمل جيدا والصوت واضح. سأشتري من هذا المتجر مرة أخرى.", 82, 36, 97),
    ("החבילה הגיעה באיחור של יומיים והקופסה הייתה מעוכה, אבל האוזניות עובדות טוב והצליל ברור. הייתי קונה שוב בחנות הזאת.", 107, 41, 97),
    ("पैकेज दो दिन देर से आया और डिब्बा कुचला हुआ था, लेकिन हेडफ़ोन अच्छी तरह काम करते हैं और आवाज़ साफ़ है। मैं इस दुकान से फिर से खरीदूंगा।", 141, 47, 149),
    ("พัสดุมาถึงช้าไปสองวันและกล่องถูกบีบจนยุบ แต่หูฟังข้างในใช้งานได้ดีและเสียงชัดเจน ฉันจะซื้อจากร้านนี้อีก", 100, 48, 181),
    ("包裹晚到了两天，盒子也被压坏了，但里面的耳机工作正常，音质清晰。我下次还会在这家店购买，希望送货能更快一些。", 67, 45, 62),
    ("包裹晚到了兩天，盒子也被壓壞了，但裡面的耳機運作正常，音質清晰。我下次還會在這家店購買。", 63, 43, 59),
    ("荷物は二日遅れで届き、箱はつぶれていましたが、中のヘッドホンは問題なく動作し、音もクリアです。またこのお店で買いたいと思います。", 65, 48, 67),
    ("택배가 이틀 늦게 도착했고 상자는 찌그러져 있었지만, 안에 있는 헤드폰은 잘 작동하고 소리도 깨끗합니다. 이 가게에서 다시 구매할 것입니다.", 77, 48, 83),
    ("Great headphones 🎧🔥👍 but the box 📦 was crushed 😞 — still 4/5 ⭐⭐⭐⭐", 35, 24, 37),
    ("鱻龘靐齉爩麤灪𠔻𪚥𠀋𡈽𣛙", 36, 34, 30),
    ("Customer 王小明 wrote: 'The 耳机 are great but 配送 was slow.' Tag: 物流/delay, priority P2.", 35, 30, 34),
    ("def load(path: str) -> dict[str, int]:\n    \"\"\"Read counts from a CSV file.\"\"\"\n    out = {}\n    with open(path, encoding=\"utf-8\") as f:\n        for line in f:\n            k, _, v = line.strip().partition(\",\")\n            if v.isdigit():\n                out[k] = out.get(k, 0) + int(v)\n    return out\n", 81, 83, 89),
    ("{\"id\": 1842, \"name\": \"Widget Pro\", \"tags\": [\"blue\", \"large\"], \"price\": 19.99, \"stock\": {\"warehouse_a\": 120, \"warehouse_b\": 0}}", 48, 48, 46),
    ("## Setup\n\n1. Install the CLI: `pip install acme-cli==2.3.1`\n2. Run `acme init --region eu-west-1` and follow the prompts.\n3. See [the docs](https://docs.example.com/setup#step-3) for **advanced** options.\n", 65, 65, 73),
    ("2024-11-03 14:22:09,381 ERROR [worker-7] c.a.p.OrderService - Failed to process order 48213: java.net.SocketTimeoutException: Read timed out (after 30000 ms)", 50, 50, 53),
    ("https://shop.example.com/products/48213?utm_source=newsletter&utm_medium=email&utm_campaign=spring_sale_2024&ref=a9f3c1", 34, 34, 45),
    ("When the committee met on Thursday, it agreed that the proposal needed more work before it could go to a vote. Several members said the budget figures were unclear, and others asked for a plan that explained how the new service would be staffed during the first year. The chair promised to circulate a revised draft within two weeks.", 66, 64, 66),
    ("impl<B: BodyBytes> Estimator<Request<B>> for JsonEstimator {\n    fn estimate(&self, request: &Request<B>) -> Costs {\n        self.estimate_bytes(request.body().body_bytes())\n    }\n}", 46, 44, 54),
    ("date,store,sku,qty,price\n2024-01-02,17,7731,3,12.50\n2024-01-02,17,7732,1,4.99\n2024-01-03,22,7731,8,12.50\n", 64, 64, 64),
];

/// Characters that `cl100k_base` splits into bytes, a token each, where
/// the rule counts 2/3 (documented on `JsonEstimator`).
const RARE: &str = "鱻龘靐齉爩麤灪𠔻𪚥𠀋𡈽𣛙";

/// What OpenAI adds to a chat of one message: 3 for the message, 1 for
/// its role, 3 to prime the reply.
const ONE_MESSAGE_FRAMING: u64 = 7;

#[test]
fn the_rule_is_never_under_the_real_tokenizers() {
    for &(text, cl100k, o200k, claude2) in MEASURED {
        // The text alone: never under OpenAI's encodings, but for characters
        // split into bytes.
        let counted = text_tokens(text);
        if text != RARE {
            assert!(
                counted >= cl100k.max(o200k),
                "{counted} < {cl100k}, {o200k}: {text}"
            );
        }
        // and never wildly over the older of them
        assert!(
            counted * 2 <= cl100k * 5,
            "{counted} > 2.5 x {cl100k}: {text}"
        );
        // A chat body holding it: never under any of the three with
        // OpenAI's framing.
        let most = cl100k.max(o200k).max(claude2) + ONE_MESSAGE_FRAMING;
        let body = input(&chat(text));
        assert!(body >= most, "{body} < {most}: {text}");
    }
}

/// A chat completions body with one user message.
fn chat(text: &str) -> String {
    json!({"model":"gpt-4o-mini","messages":[{"role":"user","content": text}]}).to_string()
}

proptest! {
    #[test]
    fn never_panics_on_any_bytes(body in proptest::collection::vec(any::<u8>(), 0..600), limit in 0usize..700) {
        let estimator = JsonEstimator::new().scan_limit(limit);
        let costs = estimator.estimate_bytes(Some(&body));
        // every byte costs at most one token, and an attachment needs a string
        prop_assert!(costs.input_tokens <= body.len() as u64 + (body.len() as u64 / 2) * DEFAULT_IMAGE_TOKENS);
    }

    /// The bytes/4 floor: ASCII text in a chat body is never counted under
    /// a quarter of a token per byte.
    #[test]
    fn ascii_text_is_never_under_bytes_over_four(text in "[ -~\n\t]{0,2000}") {
        let tokens = input(&chat(&text));
        prop_assert!(tokens >= (text.len() as u64).div_ceil(4), "{} for {:?}", tokens, text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn the_pass_agrees_with_a_parsed_reference(value in json_value()) {
        let body = value.to_string();
        prop_assert_eq!(scan(body.as_bytes()), reference(&value, body.len()), "{}", body);
        // and whitespace between tokens changes nothing but the JSON's size
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        let (a, b) = (scan(body.as_bytes()), scan(pretty.as_bytes()));
        prop_assert_eq!((a.attachments, a.max_tokens), (b.attachments, b.max_tokens));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4_000))]

    /// The fast scan gives what the scan before it gave, on any body and
    /// on any prefix of it (what a scan limit leaves).
    #[test]
    fn the_scan_agrees_with_the_one_before(body in json_ish_body(), cut in any::<prop::sample::Index>()) {
        prop_assert_eq!(scan(&body), reference_scan(&body), "{:?}", String::from_utf8_lossy(&body));
        let prefix = &body[..cut.index(body.len() + 1)];
        prop_assert_eq!(scan(prefix), reference_scan(prefix), "{:?}", String::from_utf8_lossy(prefix));
    }

    /// Text is counted as before, alone and where it sits in a body (the
    /// count may load bytes around the string and mask them).
    #[test]
    fn text_counts_as_before(body in json_ish_body(), a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>()) {
        prop_assert_eq!(text_units_of(&body), reference_text_units(&body));
        let (a, b) = (a.index(body.len() + 1), b.index(body.len() + 1));
        let (start, end) = (a.min(b), a.max(b));
        prop_assert_eq!(text_units_in(&body, start, end), reference_text_units(&body[start..end]));
    }

    #[test]
    fn text_of_any_bytes_counts_as_before(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        prop_assert_eq!(text_units_of(&bytes), reference_text_units(&bytes));
    }
}

/// Pieces the scan reacts to, for bodies that are JSON, nearly JSON or
/// garbage.
#[rustfmt::skip]
const FRAGMENTS: &[&str] = &[
    "{", "}", "[", "]", "\"", "\\", "\\\"", "\\\\", ":", ",", " ", "\n", "\t", "\r", "\u{c}", "\u{0}", "\u{7f}",
    "type", "image", "image_url", "input_image", "document", "file", "text", "content", "messages",
    "max_tokens", "max_completion_tokens", "max_output_tokens", "generationConfig",
    "generation_config", "maxOutputTokens", "inline_data", "fileData",
    "\"type\":\"image\"", "\"max_tokens\": 12", "\"max_tokens\":1.5", "\"max_tokens\":1e3",
    "\"max_tokens\":99999999999999999999999", "\"generationConfig\":{\"maxOutputTokens\":7}",
    "0", "12", "-3", "1.5", "true", "null", "data:image/png;base64,", "data:text/plain,",
    "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=", "iVBORw0KGgo", "\\/", "Hello world. ", "The quick brown fox ",
    "fn main() { x += 1; }", "é", "包裹", "😀", "Привет",
];

/// Bodies shaped like requests, nearly JSON or garbage: the fragments the
/// scan reacts to (quotes, escapes, brackets, the names it reads, numbers,
/// unicode, `data:` URLs), long runs of one (base64 payloads, long text),
/// random bytes and random text among them; and serialised JSON cut
/// anywhere.
fn json_ish_body() -> impl Strategy<Value = Vec<u8>> {
    let fragment = prop_oneof![
        12 => proptest::sample::select(FRAGMENTS).prop_map(|f| f.as_bytes().to_vec()),
        2 => (proptest::sample::select(FRAGMENTS), 1usize..150).prop_map(|(f, n)| f.repeat(n).into_bytes()),
        2 => any::<u8>().prop_map(|b| vec![b]),
        1 => "\\PC{0,40}".prop_map(String::into_bytes),
    ];
    let pieces = proptest::collection::vec(fragment, 0..60).prop_map(|pieces| pieces.concat());
    let cut_json = (json_value(), any::<prop::sample::Index>()).prop_map(|(value, cut)| {
        let body = value.to_string().into_bytes();
        body[..cut.index(body.len() + 1)].to_vec()
    });
    prop_oneof![3 => pieces, 1 => cut_json]
}

/// Random JSON shaped like request bodies: the keys and values the scan
/// looks for, text with escapes and non-ASCII, base64, nesting.
fn json_value() -> impl Strategy<Value = Value> {
    let key = proptest::sample::select(vec![
        "type",
        "type",
        "type",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "generationConfig",
        "generation_config",
        "maxOutputTokens",
        "inline_data",
        "inlineData",
        "file_data",
        "data",
        "text",
        "content",
        "messages",
        "url",
        "say \"max_tokens\"",
        "a\\b",
        "包",
    ]);
    let string = prop_oneof![
        3 => proptest::sample::select(vec![
            "image", "image_url", "input_image", "document", "file", "text", "base64", "",
            "max_tokens", "\"max_tokens\":5", "data:image/png;base64,AAAA", "data:text/plain,hi",
        ])
        .prop_map(String::from),
        2 => "[a-z \"\\\\/\n\u{e9}\u{5305}]{0,40}",
        1 => (256usize..400).prop_map(|n| "QUJD".repeat(n / 4)),
    ];
    let leaf = prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        2 => (0u64..100).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => (-1e6f64..1e6).prop_map(Value::from),
        8 => string.prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            1 => proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            3 => proptest::collection::vec((key.clone(), inner), 0..6).prop_map(|entries| {
                Value::Object(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<Map<_, _>>())
            }),
        ]
    })
}

/// The scan's answer computed on the parsed tree, in the order the
/// serialised body holds it.
fn reference(value: &Value, body_len: usize) -> Scan {
    #[derive(Default)]
    struct Walk {
        text_units: u64,
        value_bytes: usize,
        attachments: u64,
        part_depth: usize,
        part_paid: bool,
        max: [Option<Option<u64>>; 3],
    }
    fn escaped(s: &str) -> String {
        let quoted = serde_json::to_string(s).unwrap();
        quoted[1..quoted.len() - 1].to_owned()
    }
    fn is_payload(s: &str) -> bool {
        if let Some(url) = s.strip_prefix("data:") {
            return url.as_bytes()[..url.len().min(128)]
                .windows(8)
                .any(|w| w == b";base64,");
        }
        let base64 = |b: u8| b.is_ascii_alphanumeric() || b"+/=-_\\".contains(&b);
        s.len() >= 256 && s.bytes().take(64).all(base64) && s.bytes().skip(s.len() - 16).all(base64)
    }
    fn open_part(w: &mut Walk, depth: usize) {
        if w.part_depth == 0 {
            w.attachments += 1;
            w.part_depth = depth;
            w.part_paid = false;
        }
    }
    fn string(w: &mut Walk, s: &str, after_type: bool, depth: usize) {
        let s = escaped(s);
        if after_type
            && matches!(
                s.as_str(),
                "image_url"
                    | "image"
                    | "input_image"
                    | "document"
                    | "file"
                    | "input_file"
                    | "input_audio"
            )
        {
            open_part(w, depth);
        }
        w.value_bytes += s.len();
        if is_payload(&s) {
            if w.part_depth != 0 && !w.part_paid {
                w.part_paid = true;
            } else {
                w.attachments += 1;
            }
        } else {
            w.text_units += text_units_of(s.as_bytes());
        }
    }
    // `depth` is the nesting inside `value` (1 inside the top-level object)
    fn walk(w: &mut Walk, value: &Value, depth: usize, path: &[&str]) {
        match value {
            Value::String(s) => string(w, s, path.last() == Some(&"type"), depth),
            Value::Array(items) => {
                for item in items {
                    walk(w, item, depth + 1, &[]);
                }
            }
            Value::Object(map) => {
                let inside = depth + 1;
                for (key, item) in map {
                    let key_bytes = escaped(key);
                    let u = |v: &Value| v.as_u64();
                    if inside == 1 {
                        if let Some(slot) =
                            ["max_completion_tokens", "max_tokens", "max_output_tokens"]
                                .iter()
                                .position(|n| *n == key_bytes)
                        {
                            w.max[slot].get_or_insert(u(item));
                        }
                    }
                    if inside == 2
                        && matches!(path, ["generationConfig" | "generation_config"])
                        && matches!(key_bytes.as_str(), "maxOutputTokens" | "max_output_tokens")
                    {
                        w.max[2].get_or_insert(u(item));
                    }
                    if matches!(
                        key_bytes.as_str(),
                        "inline_data" | "inlineData" | "file_data" | "fileData"
                    ) {
                        open_part(w, inside);
                    }
                    let path: &[&str] = if inside == 1 { &[key.as_str()] } else { &[] };
                    let path = if key_bytes == "type" {
                        &["type"][..]
                    } else {
                        path
                    };
                    walk(w, item, inside, path);
                }
            }
            _ => {}
        }
        // leaving an array or object closes a part opened inside it
        if matches!(value, Value::Array(_) | Value::Object(_)) && depth < w.part_depth {
            w.part_depth = 0;
        }
    }
    let mut w = Walk::default();
    walk(&mut w, value, 0, &[]);
    Scan {
        units: w.text_units + (body_len - w.value_bytes) as u64 * 3,
        attachments: w.attachments,
        max_tokens: w.max.iter().find_map(|found| found.flatten()),
        cut_in_payload: false,
    }
}

#[test]
fn the_scan_is_bounded() {
    let estimator = JsonEstimator::new().scan_limit(8);
    let body = r#"{"aaaaaaaaaa":1,"max_tokens":5}"#;
    let costs = estimator.estimate_bytes(Some(body.as_bytes()));
    assert_eq!(costs.output_tokens, 1024);
    // the unscanned rest counts 4 bytes to a token
    assert!(costs.input_tokens >= (body.len() as u64 - 8).div_ceil(4));

    // A body cut inside its image: the rest is the image, already paid.
    let image = "QUJD".repeat(600_000); // 2.4 MB
    let body = format!(
        r#"{{"max_tokens":10,"messages":[{{"role":"user","content":[{{"type":"image","source":{{"type":"base64","data":"{image}"}}}}]}}]}}"#
    );
    let costs = JsonEstimator::new().estimate_bytes(Some(body.as_bytes()));
    assert!(
        (DEFAULT_IMAGE_TOKENS..DEFAULT_IMAGE_TOKENS + 40).contains(&costs.input_tokens),
        "{costs:?}"
    );
    assert_eq!(costs.output_tokens, 10);
    // A body cut inside text: the rest counts.
    let text = "The package arrived two days late. ".repeat(60_000); // 2.1 MB
    let body = chat(&text);
    let costs = JsonEstimator::new().estimate_bytes(Some(body.as_bytes()));
    assert!(costs.input_tokens >= body.len() as u64 / 4, "{costs:?}");
}
