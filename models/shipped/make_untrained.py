"""Writes `models/shipped/sdar-tiny`: the small SDAR-format checkpoint `losa generate` runs when
no `--model` is given, so that the whole pipeline (tokenizer, chat template, loader, sampler,
LoSA attention) runs on a fresh CPU-only machine.

Its weights are RANDOM (seeded): it produces gibberish. The trained retrieval model of the
accuracy harness replaces it. Run from the repository root:

    python3 models/shipped/make_untrained.py
"""

import json
import os
import shutil
import sys

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
from make_fixtures import edit_config, randomize  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(ROOT, "..", "fixtures", "tokenizer")
OUT = os.path.join(ROOT, "sdar-tiny")


def main():
    with open(os.path.join(TOKENIZER, "expected.json")) as f:
        specials = json.load(f)["special_ids"]
    vocab = max(specials.values()) + 1
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
                      rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False)
    model = Qwen3ForCausalLM(cfg).eval()
    randomize(model)
    shutil.rmtree(OUT, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(OUT)
    edit_config(OUT, model_type="sdar", architectures=["SDARForCausalLM"], block_size=4,
                mask_token_id=specials["<|MASK|>"], eos_token_id=[specials["<|im_end|>"], specials["<|endoftext|>"]],
                torch_dtype="bfloat16")
    for name in ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"]:
        shutil.copy(os.path.join(TOKENIZER, name), os.path.join(OUT, name))
    print(sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
