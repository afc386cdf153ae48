"""tests/hf_bench.py - HF transformers' speed on the same GPU and weights, beside bench_device's.

    python3 tests/hf_bench.py DIR [DECODE_TOKENS [PREFILL_TOKENS]]      (defaults 256 and 512)

Loads DIR (config.json + safetensors; deepseek_v2 or deepseek_v3) with AutoModelForCausalLM in
bfloat16 on the GPU (eager attention, its own KV cache: DynamicCache), then times as bench_device
does: prefill of PREFILL_TOKENS random ids (median of 3 after a warm-up), and decode of
DECODE_TOKENS greedy steps after a 16-token prompt, one forward per token through the cache
(median of 3). torch.cuda.synchronize() brackets every timing.
"""
import json
import os
import statistics
import sys
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM

# config.json as cJSON writes it (run init, run quantize) spells 0.0 as 0; transformers 5's strict
# config dataclasses refuse an int where a float is declared, so these are cast back.
FLOAT_KEYS = ["attention_dropout", "routed_scaling_factor", "rms_norm_eps", "initializer_range", "rope_theta",
              "aux_loss_alpha"]


def checkpoint_dir(d):
    """d itself, or a temporary copy of its config.json with the float fields as floats (weights linked)."""
    c = json.load(open(os.path.join(d, "config.json")))
    fixed = False
    for k in FLOAT_KEYS:
        if isinstance(c.get(k), int) and not isinstance(c.get(k), bool):
            c[k] = float(c[k]); fixed = True
    for sec in ("rope_scaling", "rope_parameters"):
        for k, v in list((c.get(sec) or {}).items()):
            if isinstance(v, int) and k != "original_max_position_embeddings" and not isinstance(v, bool):
                c[sec][k] = float(v); fixed = True
    if not fixed:
        return d
    t = tempfile.mkdtemp(prefix="hf_bench.")
    for f in os.listdir(d):
        if f != "config.json":
            os.symlink(os.path.abspath(os.path.join(d, f)), os.path.join(t, f))
    json.dump(c, open(os.path.join(t, "config.json"), "w"), indent=1)
    return t


def main():
    d = sys.argv[1]
    n_dec = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    n_pre = int(sys.argv[3]) if len(sys.argv) > 3 else 512
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir(d), dtype=torch.bfloat16).cuda().eval()
    load_s = time.time() - t0
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1, V, (1, max(n_pre, 17)), generator=g).cuda()

    @torch.no_grad()
    def prefill():
        torch.cuda.synchronize()
        a = time.perf_counter()
        model(ids[:, :n_pre], use_cache=True, logits_to_keep=1)
        torch.cuda.synchronize()
        return n_pre / (time.perf_counter() - a)

    @torch.no_grad()
    def decode():
        out = model(ids[:, :16], use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1:].argmax(-1)
        past = out.past_key_values
        torch.cuda.synchronize()
        a = time.perf_counter()
        for _ in range(n_dec):
            out = model(nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        return n_dec / (time.perf_counter() - a)

    prefill()
    pre = [prefill() for _ in range(3)]
    decode()
    dec = [decode() for _ in range(3)]
    print(f"HF transformers {__import__('transformers').__version__} {type(model).__name__} bf16 ({d}, loaded in "
          f"{load_s:.0f} s): prefill {n_pre} tokens {statistics.median(pre):.0f} tok/s, decode {n_dec} tokens "
          f"(batch 1, DynamicCache) {statistics.median(dec):.0f} tok/s "
          f"(medians of {', '.join(f'{x:.0f}' for x in pre)} / {', '.join(f'{x:.0f}' for x in dec)})", flush=True)


if __name__ == "__main__":
    main()
