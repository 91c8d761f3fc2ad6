//! Pre-tokenizers: the regex splits that cut text into words before byte-level BPE.
//!
//! The models' patterns end in `\s+(?!\S)|\s+`, a lookahead the `regex` crate does not
//! have. The split here runs the pattern with that tail replaced by `\s+` and restores
//! the lookahead's effect by hand: a whitespace run of two or more characters followed
//! by a non-space gives back its last character, which then starts the next word (so
//! `"a   b"` splits as `a`, `"  "`, `" b"`, as GPT-2's regex does). Everything else is
//! the `regex` crate's leftmost-first alternation, which reports the same match as a
//! backtracking engine (Oniguruma, PCRE) for patterns without lookaround.

use regex::Regex;

use super::TokenizerError;

/// GPT-2's split (also Llama-2 BPE models, StarCoder, SmolLM after the digit split).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";
/// Llama-3's split: numbers in runs of up to three digits, case-insensitive contractions.
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+";
/// Qwen2's split: Llama-3's with every digit on its own.
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+";

/// The full patterns as Hugging Face tokenizer.json files spell them (with the
/// lookahead), to recognise a `Split` pre-tokenizer.
pub(crate) const LLAMA3_HF: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's pattern as its tokenizer.json spells it.
pub(crate) const QWEN2_HF: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Which split a model's tokenizer applies before BPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizerKind {
    /// GPT-2's regex (GGUF `tokenizer.ggml.pre` = `default`, `gpt2`, `gpt-2`).
    Gpt2,
    /// Every digit on its own, then GPT-2's regex on what is between (SmolLM, StarCoder:
    /// `smollm`, `starcoder`, `refact`).
    DigitsThenGpt2,
    /// Llama-3's regex (`llama3`, `llama-bpe`, `llama-v3`).
    Llama3,
    /// Qwen2's regex (`qwen2`).
    Qwen2,
}

impl PreTokenizerKind {
    /// The kind a GGUF `tokenizer.ggml.pre` value names (llama.cpp's names).
    pub fn from_gguf_name(name: &str) -> Result<Self, TokenizerError> {
        Ok(match name {
            "default" | "gpt2" | "gpt-2" => Self::Gpt2,
            "smollm" | "starcoder" | "refact" => Self::DigitsThenGpt2,
            "llama3" | "llama-bpe" | "llama-v3" => Self::Llama3,
            "qwen2" => Self::Qwen2,
            other => {
                return Err(TokenizerError::Unsupported(format!(
                    "pre-tokenizer {other:?} (supported: default, gpt2, smollm, starcoder, \
                     refact, llama3, llama-bpe, qwen2)"
                )))
            }
        })
    }

    /// Llama-3 tokenizers take a word that is a whole vocabulary entry as is, without
    /// merging (tokenizer.json `ignore_merges`).
    pub fn ignores_merges(self) -> bool {
        self == Self::Llama3
    }
}

/// A compiled pre-tokenizer.
#[derive(Debug, Clone)]
pub struct PreTokenizer {
    kind: PreTokenizerKind,
    regex: Regex,
}

impl PreTokenizer {
    /// Compiles the split of `kind`.
    pub fn new(kind: PreTokenizerKind) -> Result<Self, TokenizerError> {
        let pattern = match kind {
            PreTokenizerKind::Gpt2 | PreTokenizerKind::DigitsThenGpt2 => GPT2,
            PreTokenizerKind::Llama3 => LLAMA3,
            PreTokenizerKind::Qwen2 => QWEN2,
        };
        let regex =
            Regex::new(pattern).map_err(|e| TokenizerError::Unsupported(format!("regex: {e}")))?;
        Ok(Self { kind, regex })
    }

    /// Which split this is.
    pub fn kind(&self) -> PreTokenizerKind {
        self.kind
    }

    /// The words of `text`, in order; their concatenation is `text`.
    pub fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut words = Vec::new();
        if self.kind == PreTokenizerKind::DigitsThenGpt2 {
            let mut start = 0;
            for (i, c) in text.char_indices() {
                if c.is_numeric() {
                    self.split_regex(&text[start..i], &mut words);
                    words.push(&text[i..i + c.len_utf8()]);
                    start = i + c.len_utf8();
                }
            }
            self.split_regex(&text[start..], &mut words);
        } else {
            self.split_regex(text, &mut words);
        }
        words
    }

    fn split_regex<'t>(&self, text: &'t str, words: &mut Vec<&'t str>) {
        let mut pos = 0;
        while pos < text.len() {
            let Some(m) = self.regex.find_at(text, pos) else {
                // Every character is matched by some alternative; keep the rest whole
                // rather than lose it should a pattern ever miss one.
                words.push(&text[pos..]);
                return;
            };
            if m.start() > pos {
                words.push(&text[pos..m.start()]);
            }
            let mut end = m.end();
            let word = m.as_str();
            // The `\s+(?!\S)` rule: a run of 2+ spaces before a non-space keeps its last.
            // (In Llama-3/Qwen2 a run ending in a newline is `\s*[\r\n]+`'s, an earlier
            // alternative without the lookahead.)
            let newline_branch = matches!(
                self.kind,
                PreTokenizerKind::Llama3 | PreTokenizerKind::Qwen2
            ) && word.ends_with(['\r', '\n']);
            if !newline_branch && word.chars().all(char::is_whitespace) {
                let followed_by_text = text[end..]
                    .chars()
                    .next()
                    .is_some_and(|c| !c.is_whitespace());
                let mut chars = word.char_indices();
                let second = chars.nth(1);
                if followed_by_text && second.is_some() {
                    if let Some((last, _)) = word.char_indices().next_back() {
                        end = m.start() + last;
                    }
                }
            }
            words.push(&text[m.start()..end]);
            pos = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(kind: PreTokenizerKind, text: &str) -> Vec<String> {
        let p = PreTokenizer::new(kind).expect("compiles");
        p.split(text).into_iter().map(str::to_owned).collect()
    }

    #[test]
    fn whitespace_runs_give_their_last_space_to_the_next_word() {
        assert_eq!(
            split(PreTokenizerKind::Gpt2, "a   b  "),
            ["a", "  ", " b", "  "]
        );
        assert_eq!(split(PreTokenizerKind::Gpt2, "a b"), ["a", " b"]);
        assert_eq!(split(PreTokenizerKind::Gpt2, "\n\nx"), ["\n", "\n", "x"]);
    }

    #[test]
    fn digits_are_split_one_by_one_before_gpt2() {
        assert_eq!(
            split(PreTokenizerKind::DigitsThenGpt2, "ab 123x"),
            ["ab", " ", "1", "2", "3", "x"]
        );
    }

    #[test]
    fn llama3_groups_three_digits_and_folds_contractions() {
        assert_eq!(
            split(PreTokenizerKind::Llama3, "12345 I'LL"),
            ["123", "45", " I", "'LL"]
        );
    }
}
