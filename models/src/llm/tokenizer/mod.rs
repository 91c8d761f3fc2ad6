//! Byte-level BPE tokenizers (GPT-2 style: SmolLM2, Llama-3, Qwen2), our own
//! implementation, built from a GGUF file's `tokenizer.ggml.*` metadata or from a
//! Hugging Face `tokenizer.json`.
//!
//! Encoding: added/special tokens (`<|im_start|>`, ...) are cut out of the text first
//! (longest match at the leftmost position, as Hugging Face does); each piece between
//! them is split into words by the model's pre-tokenizer ([`PreTokenizerKind`]); each
//! word's UTF-8 bytes become characters through GPT-2's byte map and are merged by
//! rank. Decoding reverses the byte map (and takes `<0xHH>` byte tokens as the byte);
//! [`StreamDecoder`] prints tokens as they come without cutting a multi-byte character.
//!
//! Supported is what these models use; anything else (a normalizer, a SentencePiece
//! model, an unknown split pattern) is refused with [`TokenizerError::Unsupported`]
//! rather than tokenized differently.

mod bpe;
mod pretok;

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

pub use pretok::{PreTokenizer, PreTokenizerKind};

/// Most tokens or merges a tokenizer may declare (the largest vocabularies are ~256 k).
pub const MAX_TOKENS: usize = 1 << 22;
/// Largest tokenizer.json read.
pub const MAX_TOKENIZER_JSON_BYTES: u64 = 256 << 20;
/// Longest token text accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 1 << 16;

/// Errors building a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The tokenizer file could not be read.
    #[error("cannot read tokenizer file {path}")]
    Io {
        /// The path given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The data is malformed (bad JSON, a merge of unknown tokens, an id out of range).
    #[error("invalid tokenizer: {0}")]
    Invalid(String),
    /// A tokenizer feature this implementation does not have.
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
}

fn invalid(what: impl Into<String>) -> TokenizerError {
    TokenizerError::Invalid(what.into())
}

/// A token's type as GGUF (`tokenizer.ggml.token_type`) and llama.cpp number them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// An ordinary vocabulary entry.
    Normal,
    /// The unknown token.
    Unknown,
    /// A control token (`<|im_start|>`, `<|endoftext|>`): matched in text before BPE.
    Control,
    /// A user-defined added token: matched in text before BPE.
    UserDefined,
    /// A reserved, unused entry.
    Unused,
    /// A byte token `<0xHH>`.
    Byte,
}

impl TokenType {
    /// From GGUF's number (1 normal ... 6 byte); `None` for others.
    pub fn from_gguf(value: i32) -> Option<Self> {
        Some(match value {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }
}

/// A tokenizer as plain data: what a GGUF reader passes from `tokenizer.ggml.*`.
#[derive(Debug, Clone)]
pub struct GgufTokenizerData {
    /// `tokenizer.ggml.model`: only `gpt2` (byte-level BPE) is supported.
    pub model: String,
    /// `tokenizer.ggml.pre` (`smollm`, `llama-bpe`, `qwen2`, ...); `None` = `default`.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, by id (empty: all normal).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: `"left right"` strings, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (absent: false).
    pub add_bos: bool,
}

/// The parts every constructor reduces to.
#[derive(Debug, Clone)]
pub struct TokenizerParts {
    /// Token texts by id, in the byte-mapped form (`Ġthe`), added tokens as their text.
    pub tokens: Vec<String>,
    /// Merges, highest priority first.
    pub merges: Vec<(String, String)>,
    /// Ids of the added tokens cut out of the text before BPE.
    pub added: Vec<u32>,
    /// The split before BPE.
    pub pre: PreTokenizerKind,
    /// Take a word found whole in the vocabulary without merging (Llama-3).
    pub ignore_merges: bool,
    /// Beginning-of-sequence id.
    pub bos: Option<u32>,
    /// End-of-sequence id.
    pub eos: Option<u32>,
    /// Id used for a character the vocabulary lacks (else it is dropped, as Hugging
    /// Face's BPE does without an unknown token).
    pub unk: Option<u32>,
    /// [`Tokenizer::encode_with`] prepends `bos` when asked to add special tokens.
    pub add_bos: bool,
}

/// A byte-level BPE tokenizer.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    tokens: Vec<String>,
    vocab: HashMap<String, u32>,
    merges: bpe::Merges,
    pre: PreTokenizer,
    ignore_merges: bool,
    /// Added tokens by their first byte, longest first.
    added_by_first: HashMap<u8, Vec<(String, u32)>>,
    is_added: Vec<bool>,
    /// Id of the token of each single byte, if the vocabulary has it.
    byte_id: [Option<u32>; 256],
    byte_char: [char; 256],
    char_byte: HashMap<char, u8>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
}

impl Tokenizer {
    /// Builds the tokenizer from its parts.
    pub fn from_parts(parts: TokenizerParts) -> Result<Self, TokenizerError> {
        let n = parts.tokens.len();
        if n == 0 || n > MAX_TOKENS || parts.merges.len() > MAX_TOKENS {
            return Err(invalid(format!(
                "{n} tokens and {} merges (1 to {MAX_TOKENS} allowed)",
                parts.merges.len()
            )));
        }
        let check = |what: &str, id: Option<u32>| match id {
            Some(i) if i as usize >= n => {
                Err(invalid(format!("{what} id {i} is outside the {n} tokens")))
            }
            _ => Ok(()),
        };
        check("bos", parts.bos)?;
        check("eos", parts.eos)?;
        check("unk", parts.unk)?;
        let mut vocab = HashMap::with_capacity(n);
        for (id, t) in parts.tokens.iter().enumerate() {
            if t.len() > MAX_TOKEN_BYTES {
                return Err(invalid(format!("token {id} is {} bytes long", t.len())));
            }
            vocab.entry(t.clone()).or_insert(id as u32);
        }
        let mut is_added = vec![false; n];
        let mut added_by_first: HashMap<u8, Vec<(String, u32)>> = HashMap::new();
        for &id in &parts.added {
            let text = parts
                .tokens
                .get(id as usize)
                .ok_or_else(|| invalid(format!("added token id {id} is outside the {n} tokens")))?;
            is_added[id as usize] = true;
            if let Some(&first) = text.as_bytes().first() {
                added_by_first
                    .entry(first)
                    .or_default()
                    .push((text.clone(), id));
            }
        }
        for list in added_by_first.values_mut() {
            list.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        }
        let byte_char = bpe::byte_to_char();
        let mut char_byte = HashMap::with_capacity(256);
        let mut byte_id = [None; 256];
        for (b, &c) in byte_char.iter().enumerate() {
            char_byte.insert(c, b as u8);
            byte_id[b] = vocab.get(c.encode_utf8(&mut [0; 4]) as &str).copied();
        }
        let mut merges = bpe::Merges::with_capacity(parts.merges.len());
        for (rank, (left, right)) in parts.merges.iter().enumerate() {
            let id = |t: &str| {
                vocab.get(t).copied().ok_or_else(|| {
                    invalid(format!(
                        "merge {rank} ({left:?} {right:?}) uses {t:?}, not in the vocabulary"
                    ))
                })
            };
            let merged = format!("{left}{right}");
            merges.insert(id(left)?, id(right)?, rank as u32, id(&merged)?);
        }
        Ok(Self {
            tokens: parts.tokens,
            vocab,
            merges,
            pre: PreTokenizer::new(parts.pre)?,
            ignore_merges: parts.ignore_merges,
            added_by_first,
            is_added,
            byte_id,
            byte_char,
            char_byte,
            bos: parts.bos,
            eos: parts.eos,
            unk: parts.unk,
            add_bos: parts.add_bos,
        })
    }

    /// From a GGUF file's tokenizer metadata. Control and user-defined tokens are the
    /// ones matched in text before BPE.
    pub fn from_gguf(data: &GgufTokenizerData) -> Result<Self, TokenizerError> {
        if data.model != "gpt2" {
            return Err(TokenizerError::Unsupported(format!(
                "tokenizer.ggml.model {:?}: only byte-level BPE (gpt2) is implemented",
                data.model
            )));
        }
        let pre = PreTokenizerKind::from_gguf_name(data.pre.as_deref().unwrap_or("default"))?;
        if !data.token_types.is_empty() && data.token_types.len() != data.tokens.len() {
            return Err(invalid(format!(
                "{} token types for {} tokens",
                data.token_types.len(),
                data.tokens.len()
            )));
        }
        let mut added = Vec::new();
        for (id, &t) in data.token_types.iter().enumerate() {
            if matches!(
                TokenType::from_gguf(t),
                Some(TokenType::Control | TokenType::UserDefined)
            ) {
                added.push(id as u32);
            }
        }
        let merges = data
            .merges
            .iter()
            .map(|m| split_merge(m))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_parts(TokenizerParts {
            tokens: data.tokens.clone(),
            merges,
            added,
            pre,
            ignore_merges: pre.ignores_merges(),
            bos: data.bos,
            eos: data.eos,
            unk: data.unk,
            add_bos: data.add_bos,
        })
    }

    /// From a Hugging Face `tokenizer.json` file.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let io = |source| TokenizerError::Io {
            path: path.display().to_string(),
            source,
        };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > MAX_TOKENIZER_JSON_BYTES {
            return Err(invalid(format!(
                "{} is {size} bytes, more than the {MAX_TOKENIZER_JSON_BYTES} allowed",
                path.display()
            )));
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Self::from_tokenizer_json(&bytes)
    }

    /// From the bytes of a Hugging Face `tokenizer.json` (model `BPE`, no normalizer,
    /// a byte-level pre-tokenizer this module knows). Bos/eos are not in that file
    /// (they are in tokenizer_config.json): set them with [`Tokenizer::with_bos_eos`].
    pub fn from_tokenizer_json(bytes: &[u8]) -> Result<Self, TokenizerError> {
        let json: Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("tokenizer.json: {e}")))?;
        let model = &json["model"];
        if model["type"].as_str() != Some("BPE") {
            return Err(TokenizerError::Unsupported(format!(
                "model type {} (only BPE)",
                model["type"]
            )));
        }
        if !json["normalizer"].is_null() {
            return Err(TokenizerError::Unsupported(format!(
                "normalizer {}",
                json["normalizer"]["type"]
            )));
        }
        let pre = hf_pre_tokenizer(&json["pre_tokenizer"])?;
        let vocab = model["vocab"]
            .as_object()
            .ok_or_else(|| invalid("model.vocab is not an object"))?;
        let added_json = json["added_tokens"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut tokens: Vec<Option<String>> = Vec::new();
        let mut put = |id: u64, text: &str| -> Result<(), TokenizerError> {
            let id = usize::try_from(id)
                .ok()
                .filter(|&i| i < MAX_TOKENS)
                .ok_or_else(|| invalid(format!("token id {id} is too large")))?;
            if tokens.len() <= id {
                tokens.resize(id + 1, None);
            }
            tokens[id] = Some(text.to_owned());
            Ok(())
        };
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| invalid(format!("vocab id of {text:?}")))?;
            put(id, text)?;
        }
        let mut added = Vec::new();
        for a in added_json {
            let (Some(id), Some(text)) = (a["id"].as_u64(), a["content"].as_str()) else {
                return Err(invalid(format!("added token {a}")));
            };
            put(id, text)?;
            added.push(id as u32);
        }
        let tokens: Vec<String> = tokens.into_iter().map(Option::unwrap_or_default).collect();
        let merges = model["merges"]
            .as_array()
            .ok_or_else(|| invalid("model.merges is not an array"))?
            .iter()
            .map(|m| match m {
                Value::String(s) => split_merge(s),
                Value::Array(pair) => match (pair.first(), pair.get(1), pair.len()) {
                    (Some(Value::String(a)), Some(Value::String(b)), 2) => {
                        Ok((a.clone(), b.clone()))
                    }
                    _ => Err(invalid(format!("merge {m}"))),
                },
                _ => Err(invalid(format!("merge {m}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A post-processor that puts a special token before the sequence adds a bos.
        let mut bos = None;
        let post = &json["post_processor"];
        if post["type"].as_str() == Some("TemplateProcessing") {
            if let Some(Value::String(first)) = post["single"][0]["SpecialToken"].get("id") {
                let id = tokens.iter().position(|t| t == first);
                bos = id.map(|i| i as u32);
            }
        }
        let unk = model["unk_token"]
            .as_str()
            .and_then(|u| tokens.iter().position(|t| t == u))
            .map(|i| i as u32);
        Self::from_parts(TokenizerParts {
            tokens,
            merges,
            added,
            pre,
            ignore_merges: model["ignore_merges"].as_bool().unwrap_or(false),
            bos,
            eos: None,
            unk,
            add_bos: bos.is_some(),
        })
    }

    /// The same tokenizer with these beginning/end-of-sequence ids.
    pub fn with_bos_eos(
        mut self,
        bos: Option<u32>,
        eos: Option<u32>,
    ) -> Result<Self, TokenizerError> {
        for id in [bos, eos].into_iter().flatten() {
            if id as usize >= self.tokens.len() {
                return Err(invalid(format!(
                    "id {id} is outside the {} tokens",
                    self.tokens.len()
                )));
            }
        }
        self.bos = bos;
        self.eos = eos;
        Ok(self)
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Number of merges.
    pub fn merge_count(&self) -> usize {
        self.merges.len()
    }

    /// Beginning-of-sequence id.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence id.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The pre-tokenizer in use.
    pub fn pre_tokenizer(&self) -> PreTokenizerKind {
        self.pre.kind()
    }

    /// The id of a token's exact text (`"<|im_end|>"`, `"Ġthe"`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.get(text).copied()
    }

    /// A token's text as stored (byte-mapped), or `None` outside the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Whether `id` is an added/special token (decoded as its text).
    pub fn is_added(&self, id: u32) -> bool {
        self.is_added.get(id as usize).copied().unwrap_or(false)
    }

    /// Token ids of `text`, special tokens in it recognised, no bos added (Hugging
    /// Face's `encode(text, add_special_tokens=False)`).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_with(text, false, true)
    }

    /// Token ids of `text`: `add_special` prepends bos where the model asks for it;
    /// `parse_special` cuts added tokens out of the text (else their text is BPE'd
    /// like any other, as for untrusted user input).
    pub fn encode_with(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            ids.extend(self.bos);
        }
        let mut start = 0;
        let mut pos = 0;
        let bytes = text.as_bytes();
        while parse_special && pos < bytes.len() {
            if let Some(list) = self.added_by_first.get(&bytes[pos]) {
                if let Some((t, id)) = list
                    .iter()
                    .find(|(t, _)| text[pos..].starts_with(t.as_str()))
                {
                    self.encode_plain(&text[start..pos], &mut ids);
                    ids.push(*id);
                    pos += t.len();
                    start = pos;
                    continue;
                }
            }
            pos += 1;
            while pos < bytes.len() && !text.is_char_boundary(pos) {
                pos += 1;
            }
        }
        self.encode_plain(&text[start..], &mut ids);
        ids
    }

    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) {
        let mut symbols = Vec::new();
        let mut mapped = String::new();
        for word in self.pre.split(text) {
            if self.ignore_merges {
                mapped.clear();
                mapped.extend(word.bytes().map(|b| self.byte_char[b as usize]));
                if let Some(&id) = self.vocab.get(&mapped) {
                    ids.push(id);
                    continue;
                }
            }
            symbols.clear();
            for b in word.bytes() {
                match self.byte_id[b as usize] {
                    Some(id) => symbols.push(id),
                    None => symbols.extend(self.unk),
                }
            }
            self.merges.apply(&mut symbols);
            ids.extend_from_slice(&symbols);
        }
    }

    /// The bytes of one token: added tokens as their text, others through the byte
    /// map (`<0xHH>` byte tokens as their byte); ids outside the vocabulary give none.
    pub fn token_bytes(&self, id: u32, out: &mut Vec<u8>) {
        let Some(text) = self.tokens.get(id as usize) else {
            return;
        };
        if self.is_added[id as usize] {
            out.extend_from_slice(text.as_bytes());
            return;
        }
        if let Some(b) = byte_token(text) {
            out.push(b);
            return;
        }
        for c in text.chars() {
            match self.char_byte.get(&c) {
                Some(&b) => out.push(b),
                None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
    }

    /// The text of `ids` (invalid UTF-8 as U+FFFD); `skip_special` leaves out added
    /// tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if !(skip_special && self.is_added(id)) {
                self.token_bytes(id, &mut bytes);
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// `<0xHH>` (SentencePiece-style byte fallback tokens) as its byte.
fn byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

fn split_merge(m: &str) -> Result<(String, String), TokenizerError> {
    // Token texts are byte-mapped and hold no plain space, so the first space divides.
    let (a, b) = m
        .split_once(' ')
        .ok_or_else(|| invalid(format!("merge {m:?} is not two tokens")))?;
    Ok((a.to_owned(), b.to_owned()))
}

/// The pre-tokenizer kind of a tokenizer.json `pre_tokenizer`.
fn hf_pre_tokenizer(p: &Value) -> Result<PreTokenizerKind, TokenizerError> {
    let unsupported = || TokenizerError::Unsupported(format!("pre_tokenizer {p}"));
    let byte_level = |v: &Value, regex: bool| {
        v["type"].as_str() == Some("ByteLevel")
            && !v["add_prefix_space"].as_bool().unwrap_or(false)
            && v["use_regex"].as_bool().unwrap_or(true) == regex
    };
    if byte_level(p, true) {
        return Ok(PreTokenizerKind::Gpt2);
    }
    if p["type"].as_str() != Some("Sequence") {
        return Err(unsupported());
    }
    let list = p["pretokenizers"].as_array().ok_or_else(unsupported)?;
    match list.as_slice() {
        [digits, bl]
            if digits["type"].as_str() == Some("Digits")
                && digits["individual_digits"].as_bool() == Some(true)
                && byte_level(bl, true) =>
        {
            Ok(PreTokenizerKind::DigitsThenGpt2)
        }
        [split, bl] if split["type"].as_str() == Some("Split") && byte_level(bl, false) => {
            let pattern = split["pattern"]["Regex"].as_str().ok_or_else(unsupported)?;
            let isolated = split["behavior"].as_str() == Some("Isolated");
            match pattern {
                pretok::LLAMA3_HF if isolated => Ok(PreTokenizerKind::Llama3),
                pretok::QWEN2_HF if isolated => Ok(PreTokenizerKind::Qwen2),
                _ => Err(unsupported()),
            }
        }
        _ => Err(unsupported()),
    }
}

/// Decodes tokens one at a time for printing as they come: bytes of a multi-byte
/// character split across tokens are held until the character is whole.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// The text that `id` completes (maybe empty); invalid bytes become U+FFFD, an
    /// unfinished character at the end waits for the next token.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        tokenizer.token_bytes(id, &mut self.pending);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{fffd}');
                            rest = &bad[n..];
                        }
                        None => {
                            rest = bad;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let len = self.pending.len();
        self.pending.drain(..len - keep);
        out
    }

    /// What is still pending, flushed (an unfinished character as U+FFFD).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level vocabulary: the 256 byte characters, then merges' results.
    fn tiny() -> Tokenizer {
        let map = bpe::byte_to_char();
        let mut tokens: Vec<String> = map.iter().map(|c| c.to_string()).collect();
        for t in ["Ġt", "he", "Ġthe", "<|im_start|>", "<|im_end|>"] {
            tokens.push(t.to_owned());
        }
        let merges = ["Ġ t", "h e", "Ġt he"]
            .iter()
            .map(|m| split_merge(m))
            .collect::<Result<_, _>>();
        Tokenizer::from_parts(TokenizerParts {
            tokens,
            merges: merges.expect("merges parse"),
            added: vec![259, 260],
            pre: PreTokenizerKind::Gpt2,
            ignore_merges: false,
            bos: Some(259),
            eos: Some(260),
            unk: None,
            add_bos: false,
        })
        .expect("builds")
    }

    #[test]
    fn merges_and_special_tokens_encode_and_decode_back() {
        let t = tiny();
        let ids = t.encode("<|im_start|>a the<|im_end|>");
        assert_eq!(ids, vec![259, b'a' as u32, 258, 260]);
        assert_eq!(t.decode(&ids, false), "<|im_start|>a the<|im_end|>");
        assert_eq!(t.decode(&ids, true), "a the");
        // Without special parsing, the marker is ordinary text.
        let plain = t.encode_with("<|im_end|>", false, false);
        assert!(plain.len() > 1 && !plain.contains(&260));
    }

    #[test]
    fn the_stream_decoder_holds_a_split_character_until_it_is_whole() {
        let t = tiny();
        let ids = t.encode("é😀x");
        // Byte tokens only here: é is 2, 😀 4 bytes.
        assert_eq!(ids.len(), 7);
        let mut d = StreamDecoder::new();
        let out: Vec<String> = ids.iter().map(|&id| d.push(&t, id)).collect();
        assert_eq!(out, ["", "é", "", "", "", "😀", "x"]);
        assert_eq!(d.finish(), "");
        // A lone continuation byte is invalid at once; an unfinished lead waits.
        assert_eq!(d.push(&t, 0x80), "\u{fffd}");
        assert_eq!(d.push(&t, 0xe6), "");
        assert_eq!(d.finish(), "\u{fffd}");
    }

    #[test]
    fn gguf_data_with_an_unknown_model_or_bad_merge_is_refused() {
        let data = GgufTokenizerData {
            model: "llama".into(),
            pre: None,
            tokens: vec!["a".into()],
            token_types: vec![1],
            merges: vec![],
            bos: None,
            eos: None,
            unk: None,
            add_bos: false,
        };
        assert!(matches!(
            Tokenizer::from_gguf(&data),
            Err(TokenizerError::Unsupported(_))
        ));
        let bad = GgufTokenizerData {
            model: "gpt2".into(),
            merges: vec!["a b".into()],
            ..data
        };
        assert!(matches!(
            Tokenizer::from_gguf(&bad),
            Err(TokenizerError::Invalid(_))
        ));
    }
}
