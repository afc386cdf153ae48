#!/usr/bin/env python3
"""train.py - train the tiny DeepSeek-V3 that ships with dsv3.c, and write its verification fixtures.

    bash train/extract_corpus.sh                     # once, on a machine with Debian's bible-kjv
    python3 train/train.py --corpus .carry/kjv.txt --out OUT/model [--steps N] [--max-minutes M]

Needs torch (2.11), transformers (5.17), tokenizers, safetensors; a CUDA GPU for the real run
(--device cpu works, slowly). No internet. Everything is seeded; GPU kernels are not bit-exact.

What it does, in order (each step prints what it did):
 1. Corpus: the King James Bible, one verse per line (train/extract_corpus.sh). Split by contiguous
    chunks: the verses are cut into 100 equal runs of lines, in order; runs 19, 39, 59, 79, 99 are
    the HELD-OUT text (5%), runs 24 and 74 the VALIDATION text (2%, used only to pick the best
    checkpoint), the other 93 runs the TRAINING text. Each split is its verses joined with "\n"
    (a "\n" after every verse).
 2. Tokenizer: byte-level BPE trained with HF `tokenizers` on the training text, vocab 4096, with
    DeepSeek-V3's pre-tokenizer (three Split regexes, "Isolated", then ByteLevel without its regex;
    the regexes are taken from tests/fixtures/make_tokenizer_fixtures.py) and DeepSeek's special
    tokens <｜begin▁of▁sentence｜> (id 0), <｜end▁of▁sentence｜> (1), <｜▁pad▁｜> (2), <｜User｜> (3),
    <｜Assistant｜> (4). tokenizer_config.json: bos/eos/pad and a chat template in DeepSeek-V3's format.
 3. Model: HF transformers' DeepseekV3ForCausalLM (MLA with q and kv compression, decoupled RoPE with
    YaRN, DeepSeekMoE with a shared expert and sigmoid routing with correction bias, group-limited
    top-k, first layer dense) plus one MTP module (the DeepSeek-V3 report, section 2.2):
        h'_i   = eh_proj([enorm(embed(t_{i+1})) ; hnorm(h_i)])      (embedding first, as vLLM/SGLang
                                                                     load DeepSeek's weights)
        h'     = DeepseekV3DecoderLayer(layer_idx = num_hidden_layers)(h')   causal, positions i
        logits = lm_head(shared_head.norm(h'))                      predicts t_{i+2}
    h_i is the main model's final hidden state AFTER the final norm (model.model.norm), i.e. what
    the main model hands its lm_head (--mtp-hidden postnorm, the default). Sources: transformers
    5.17's own MTP drafting (generation/candidate_generator.py, MTPCandidateGenerator) takes
    hidden_states[-1], which utils/output_capturing.py ties to last_hidden_state, the normed output
    (checked on the GPU machine); vLLM's and SGLang's DeepSeek MTP receive the target model's
    output, which their DeepseekV2Model returns after self.norm: that is how DeepSeek's released MTP
    weights are served; dsv3.c's model.c (mtp_forward) follows them. The report (Fig. 3,
    eq. 21) only says "the representation given by the main model" and is ambiguous about the final
    norm (DeepSeek-V3 issue #839 asks; unanswered). --mtp-hidden prenorm trains with the last decoder
    layer's output before the norm instead. The choice is recorded in train_log.json and in the
    fixture's metadata.
    Loss: CE(main, t_{i+1}) + lambda * CE(MTP, t_{i+2}); lambda = 0.3 for the first 70% of training,
    then 0.1 (the report: 0.3 for the first 10T of 14.8T tokens, then 0.1). The MTP module shares the
    embedding and the output head with the main model (gradients flow into both, and into h_i).
    Auxiliary-loss-free balancing: after every optimizer step, for every MoE layer (the MTP layer's
    included), bias_e -= gamma if expert e got more than the mean number of tokens in that step,
    += gamma if fewer (gamma = 0.001, the report); the bias only affects which experts are chosen.
 4. Training: AdamW (0.9, 0.95), weight decay 0.1 on matrices, bf16 autocast with FP32 master
    weights, lr 2e-3, warmup then cosine to 10%; batches of 32 random 512-token windows [BOS] + 511
    training tokens starting at a verse. Stops at --steps or --max-minutes, whichever first; the
    schedule follows max(step/steps, elapsed/max_minutes). The corpus is only ~0.93M training tokens
    (1500 steps = ~26 epochs), so training-only dropout 0.3 is applied to the embedding output and to
    every attention and FFN/MoE output before its residual add (forward hooks; nothing of it is in
    the model), and the validation loss is measured every --eval-every steps: the state with the
    lowest validation loss is the one saved. (Trials on an H200: without dropout the validation
    loss bottoms at 3.59 after ~7 epochs; with dropout 0.3 and 1500 steps it reaches 3.38.)
 5. Export (OUT): config.json + generation_config.json (save_pretrained), model.safetensors (BF16;
    e_score_correction_bias F32 as in DeepSeek's own checkpoints; experts in DeepSeek's per-expert
    layout model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight; the MTP module at layer index
    num_hidden_layers with DeepSeek's names incl. copies of embed_tokens and shared_head.head),
    tokenizer.json, tokenizer_config.json. The file is reloaded with from_pretrained and must give
    the same logits as the trained model rounded to BF16.
 6. Fixtures, all computed from the files just written, in FP32 (TF32 off, eager attention):
    heldout_ppl.json        perplexity on the held-out text (definition inside the file)
    mtp_fixture.safetensors one 64-token held-out sequence: ids, the main model's hidden states
                            (before and after the final norm), main logits, MTP logits (and the
                            MTP's intermediate tensors)
    samples.json            greedy continuations of 3 prompts (ids and text)
    train_log.json          config, parameter counts, loss curve, MTP loss, expert loads, timings
If anything after the main model is saved fails, the error is printed and logged, and the main
model stays saved.
"""
import argparse
import copy
import hashlib
import json
import math
import os
import random
import re
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
SPECIAL_TOKENS = [BOS, EOS, PAD, USER, ASSISTANT]  # ids 0..4

# DeepSeek-V3's pre_tokenizer Split regexes (deepseek-ai/DeepSeek-V3 tokenizer.json; llama.cpp's
# DEEPSEEK3_LLM has the same three). Python escapes: "\r\n" are the characters themselves. The copy in
# tests/fixtures/make_tokenizer_fixtures.py is preferred when it can be imported (one source of truth).
DS_SPLITS_COPY = [
    "\\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
]

# DeepSeek-V3's chat template (tokenizer_config.json of deepseek-ai/DeepSeek-V3), without the tool-call
# branches: system prompts concatenated after BOS, then <｜User｜>text, <｜Assistant｜>text<｜end▁of▁sentence｜>.
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='', is_first_sp=true) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{%- if ns.is_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}"
    "{% set ns.is_first_sp = false %}"
    "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}"
    "{%- endif %}{%- endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)

# The model. Every DeepSeek-V3 mechanism is on: q and kv compression well below d, decoupled RoPE with
# YaRN (trained at 512, factor 4 -> 2048 positions), 16 routed experts in 4 groups, top-2 groups,
# top-4 experts, one shared expert, sigmoid gate with correction bias, first layer dense, one MTP module.
MODEL_SHAPE = dict(
    hidden_size=256, intermediate_size=640, moe_intermediate_size=160,
    num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8,
    q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
    n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2,
    routed_scaling_factor=2.5, norm_topk_prob=True, first_k_dense_replace=1,
    rms_norm_eps=1e-6, max_position_embeddings=2048, rope_interleave=True,
    tie_word_embeddings=False, attention_bias=False, attention_dropout=0.0, initializer_range=0.02,
    hidden_act="silu",
)
ROPE = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 512,
        "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}
GAMMA = 0.001          # bias update speed (the report)
MTP_SWITCH = 0.7       # lambda 0.3 before this fraction of training, 0.1 after
PROMPTS = ["In the beginning God", "And Jesus answered and said unto them,", "The LORD is my shepherd;"]


def say(*a):
    print("[train]", *a, flush=True)


# ------------------------------------------------------------------------------- pure-Python parts
def load_ds_splits():
    """DeepSeek-V3's Split regexes: from tests/fixtures/make_tokenizer_fixtures.py if importable."""
    try:
        sys.path.insert(0, str(REPO / "tests" / "fixtures"))
        import make_tokenizer_fixtures as mtf  # noqa: E402
        splits = list(mtf.DS_SPLITS)
        if splits != DS_SPLITS_COPY:
            say("WARNING: tests/fixtures/make_tokenizer_fixtures.py has different Split regexes; using its copy")
        return splits, "tests/fixtures/make_tokenizer_fixtures.py"
    except Exception as ex:  # noqa: BLE001
        say(f"make_tokenizer_fixtures not importable ({type(ex).__name__}); using train.py's copy of the regexes")
        return list(DS_SPLITS_COPY), "train/train.py"
    finally:
        if sys.path and sys.path[0] == str(REPO / "tests" / "fixtures"):
            sys.path.pop(0)


def split_corpus(lines, n_chunks=100):
    """Contiguous-chunk split: line i is in chunk i*n_chunks//n. Held-out: chunks with c % 20 == 19
    (5 of 100); validation: c % 50 == 24 (2 of 100); training: the rest. Returns three lists of lines
    (order kept) and the chunk numbers of each."""
    n = len(lines)
    parts = {"train": [], "val": [], "heldout": []}
    chunks = {"train": set(), "val": set(), "heldout": set()}
    for i, line in enumerate(lines):
        c = i * n_chunks // n
        k = "heldout" if c % 20 == 19 else "val" if c % 50 == 24 else "train"
        parts[k].append(line)
        chunks[k].add(c)
    return parts, {k: sorted(v) for k, v in chunks.items()}


def join_lines(lines):
    return "".join(l + "\n" for l in lines)


def param_counts(c, vocab):
    """Parameter counts from the config: total main model, activated per token (without the input
    embedding, a lookup; with lm_head), the MTP module's own weights (embedding and head shared), and
    what the file holds (main + MTP + the MTP's stored copies of embedding and head)."""
    d, L = c["hidden_size"], c["num_hidden_layers"]
    H, nope, rope, v = c["num_attention_heads"], c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    qr, kvr = c["q_lora_rank"], c["kv_lora_rank"]
    attn = d * qr + qr + qr * H * (nope + rope) + d * (kvr + rope) + kvr + kvr * H * (nope + v) + H * v * d
    ffn = lambda inter: 3 * d * inter  # noqa: E731
    E, k, S = c["n_routed_experts"], c["num_experts_per_tok"], c["n_shared_experts"]
    mi = c["moe_intermediate_size"]
    moe_total = E * ffn(mi) + ffn(S * mi) + E * d          # experts, shared, gate (bias is a buffer)
    moe_active = k * ffn(mi) + ffn(S * mi) + E * d
    norms = 2 * d
    dense_layer = attn + ffn(c["intermediate_size"]) + norms
    moe_layer_total, moe_layer_active = attn + moe_total + norms, attn + moe_active + norms
    nd = c["first_k_dense_replace"]
    emb = vocab * d
    total = 2 * emb + d + nd * dense_layer + (L - nd) * moe_layer_total
    active = emb + d + nd * dense_layer + (L - nd) * moe_layer_active
    mtp = 2 * d + 2 * d * d + d + moe_layer_total           # enorm, hnorm, eh_proj, shared_head.norm, block
    mtp_active = 2 * d + 2 * d * d + d + moe_layer_active + emb
    return {"total_main": total, "activated_main": active, "embedding": emb, "lm_head": emb,
            "attention_per_layer": attn, "moe_layer_total": moe_layer_total, "moe_layer_activated": moe_layer_active,
            "dense_layer": dense_layer, "mtp_own": mtp, "mtp_activated_incl_head": mtp_active,
            "file_params": total + mtp + 2 * emb}


def schedule(step, steps, elapsed, budget_s, lr, warmup):
    """(progress p in [0, 1], learning rate, MTP lambda)."""
    p = min(1.0, max(step / max(1, steps), elapsed / max(1e-9, budget_s)))
    lr_now = lr * min(1.0, (step + 1) / max(1, warmup)) * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * p)))
    lam = 0.3 if p < MTP_SWITCH else 0.1
    return p, lr_now, lam


def deepseek_layout(sd, moe_inter, hidden):
    """State dict in DeepSeek's checkpoint layout: transformers 5 fuses experts into
    experts.gate_up_proj [E, 2I, d] (gate rows first) and experts.down_proj [E, d, I]; split them into
    experts.E.gate_proj.weight [I, d], up_proj [I, d], down_proj [d, I]. (As tests/fixtures/make_fixtures.py.)"""
    out = {}
    for k, v in sd.items():
        if k.endswith("inv_freq"):
            continue
        m = re.match(r"(.*\.mlp\.experts)\.gate_up_proj$", k)
        if m and v.ndim == 3:
            E, two_i, d = v.shape
            assert two_i == 2 * moe_inter and d == hidden, (k, tuple(v.shape))
            for e in range(E):
                out[f"{m[1]}.{e}.gate_proj.weight"] = v[e, :moe_inter].contiguous()
                out[f"{m[1]}.{e}.up_proj.weight"] = v[e, moe_inter:].contiguous()
            continue
        m = re.match(r"(.*\.mlp\.experts)\.down_proj$", k)
        if m and v.ndim == 3:
            E, d, i = v.shape
            assert d == hidden and i == moe_inter, (k, tuple(v.shape))
            for e in range(E):
                out[f"{m[1]}.{e}.down_proj.weight"] = v[e].contiguous()
            continue
        out[k] = v.contiguous()
    return out


def mtp_export_name(name, L):
    """Our MTP module's parameter name -> DeepSeek's checkpoint name at layer index L."""
    p = f"model.layers.{L}."
    if name.startswith("block."):
        return p + name[len("block."):]
    if name == "shared_head_norm.weight":
        return p + "shared_head.norm.weight"
    return p + name  # enorm.weight, hnorm.weight, eh_proj.weight


def mtp_import_state(tensors, L, moe_inter):
    """Inverse of the export: DeepSeek-named tensors at layer L -> our MTP module's state dict (experts
    fused back into gate_up_proj / down_proj). Also returns the stored embedding and head copies."""
    p = f"model.layers.{L}."
    sd, extra, experts = {}, {}, {}
    for k, v in tensors.items():
        if not k.startswith(p):
            continue
        name = k[len(p):]
        if name in ("embed_tokens.weight", "shared_head.head.weight"):
            extra[name] = v
        elif name == "shared_head.norm.weight":
            sd["shared_head_norm.weight"] = v
        elif name in ("enorm.weight", "hnorm.weight", "eh_proj.weight"):
            sd[name] = v
        else:
            m = re.match(r"mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$", name)
            if m:
                experts.setdefault(int(m[1]), {})[m[2]] = v
            else:
                sd["block." + name] = v
    if experts:
        E = max(experts) + 1
        assert sorted(experts) == list(range(E)), "missing experts in the MTP layer"
        gu = [_cat0(experts[e]["gate_proj"], experts[e]["up_proj"]) for e in range(E)]
        sd["block.mlp.experts.gate_up_proj"] = _stack(gu)
        sd["block.mlp.experts.down_proj"] = _stack([experts[e]["down_proj"] for e in range(E)])
    return sd, extra


def _cat0(a, b):
    import torch
    return torch.cat([a, b], 0)


def _stack(xs):
    import torch
    return torch.stack(xs, 0)


# ------------------------------------------------------------------------------------- tokenizer
def train_tokenizer(train_text, vocab_size, splits):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    steps = [pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in splits]
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    chunks, cur, size = [], [], 0
    for line in train_text.splitlines(keepends=True):
        cur.append(line)
        size += len(line)
        if size > 4000:
            chunks.append("".join(cur))
            cur, size = [], 0
    if cur:
        chunks.append("".join(cur))
    tok.train_from_iterator(chunks, trainer=trainer)
    return tok


def write_tokenizer(tok, out):
    from tokenizers import Tokenizer
    path = out / "tokenizer.json"
    tok.save(str(path))
    tok = Tokenizer.from_file(str(path))  # use exactly what the C code will load
    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(len(SPECIAL_TOKENS))), f"special token ids {ids}"
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": True, "add_eos_token": False,
              "clean_up_tokenization_spaces": False, "legacy": True, "model_max_length": 2048,
              "chat_template": CHAT_TEMPLATE}
    for key, content in (("bos_token", BOS), ("eos_token", EOS), ("pad_token", PAD)):
        config[key] = {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
                       "rstrip": False, "single_word": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    return tok


def encode_with_line_starts(tok, text):
    """Token ids of text (one encode call, no special tokens) and the indices of tokens that begin a line."""
    enc = tok.encode(text, add_special_tokens=False)
    ids = enc.ids
    line_starts = {0}
    pos = text.find("\n")
    while pos != -1:
        line_starts.add(pos + 1)
        pos = text.find("\n", pos + 1)
    starts = [i for i, (a, _) in enumerate(enc.offsets) if a in line_starts]
    return ids, starts


# ------------------------------------------------------------------------------ torch-side parts
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True, help="plain text, one verse per line (train/extract_corpus.sh)")
    ap.add_argument("--out", required=True, help="output directory (created)")
    ap.add_argument("--steps", type=int, default=1500, help="optimizer steps at most")
    ap.add_argument("--max-minutes", type=float, default=4.0, help="wall-clock limit of the training loop")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=512, help="training sequence length (tokens incl. BOS)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.3,
                    help="training-only dropout on the embedding output and on every attention and FFN/MoE output "
                         "before the residual add (forward hooks; the model itself has none)")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--mtp-hidden", choices=["postnorm", "prenorm"], default="postnorm",
                    help="h_i fed to the MTP module: after (default, as vLLM/SGLang and dsv3.c's model.c) "
                         "or before the main model's final norm")
    ap.add_argument("--experts-impl", choices=["auto", "eager", "grouped_mm"], default="auto",
                    help="transformers' experts backend for training (auto: probe both, take the faster that works)")
    ap.add_argument("--heldout-windows", type=int, default=0, help="0: every full window of the held-out text")
    ap.add_argument("--gen-tokens", type=int, default=48)
    args = ap.parse_args()

    t_start = time.time()
    import torch
    import torch.nn.functional as F
    import transformers
    import tokenizers
    import safetensors
    from safetensors.torch import load_file, save_file
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3DecoderLayer, DeepseekV3RMSNorm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_cuda = device.type == "cuda"
    say(f"torch {torch.__version__}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, "
        f"safetensors {safetensors.__version__}; device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if on_cuda else ""))
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    log = {"args": vars(args), "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                            "tokenizers": tokenizers.__version__}, "errors": [], "notes": []}

    def set_tf32(on):
        # the legacy switches only (never read back: torch 2.9+ refuses a mix of legacy and new API reads)
        try:
            torch.backends.cuda.matmul.allow_tf32 = on
            torch.backends.cudnn.allow_tf32 = on
        except Exception as ex:  # noqa: BLE001
            say("could not set TF32:", repr(ex)[:200])

    def set_experts(m, impl):
        """transformers' experts backend (config._experts_implementation) of model m and its MTP layer."""
        try:
            if hasattr(m, "set_experts_implementation"):
                m.set_experts_implementation(impl)
        except Exception as ex:  # noqa: BLE001
            say(f"set_experts_implementation({impl}) failed: {ex!r:.150}")
        if getattr(m.config, "_experts_implementation", None) != impl:
            try:
                m.config._experts_implementation = impl
            except Exception as ex:  # noqa: BLE001
                say(f"could not set config._experts_implementation = {impl}: {ex!r:.150}")
        return getattr(m.config, "_experts_implementation", None)

    def write_log():
        log["wall_s_total"] = round(time.time() - t_start, 1)
        (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")

    # ---------------------------------------------------------------- 1. corpus and split
    text = Path(args.corpus).read_text(encoding="utf-8")
    lines = [l.rstrip() for l in text.splitlines()]
    lines = [l for l in lines if l]
    parts, chunk_ids = split_corpus(lines)
    texts = {k: join_lines(v) for k, v in parts.items()}
    log["data"] = {"corpus": str(args.corpus), "corpus_sha256": hashlib.sha256(text.encode()).hexdigest(),
                   "lines": len(lines),
                   "split": "100 contiguous runs of verses; held-out runs c%20==19, validation runs c%50==24, "
                            "training the rest; each split = its verses joined, '\\n' after each",
                   "chunks": chunk_ids,
                   **{f"{k}_lines": len(v) for k, v in parts.items()},
                   **{f"{k}_chars": len(v) for k, v in texts.items()}}
    say(f"corpus {args.corpus}: {len(lines)} lines; train/val/held-out lines "
        f"{len(parts['train'])}/{len(parts['val'])}/{len(parts['heldout'])}")

    # ---------------------------------------------------------------- 2. tokenizer
    t0 = time.time()
    splits, splits_src = load_ds_splits()
    tok = train_tokenizer(texts["train"], args.vocab, splits)
    tok = write_tokenizer(tok, out)
    vocab = tok.get_vocab_size()
    enc = {k: encode_with_line_starts(tok, v) for k, v in texts.items()}
    ntok = {k: len(v[0]) for k, v in enc.items()}
    log["tokenizer"] = {"vocab_size": vocab, "pre_tokenizer_regexes_from": splits_src, "tokens": ntok,
                        "chars_per_token_train": round(len(texts["train"]) / max(1, ntok["train"]), 3),
                        "special": {t: i for i, t in enumerate(SPECIAL_TOKENS)}}
    say(f"tokenizer: vocab {vocab}, trained in {time.time() - t0:.1f}s; tokens train/val/held-out "
        f"{ntok['train']}/{ntok['val']}/{ntok['heldout']} ({log['tokenizer']['chars_per_token_train']} chars/token)")
    say("  'In the beginning God created' ->", tok.encode("In the beginning God created", add_special_tokens=False).tokens)
    bos_id = tok.token_to_id(BOS)

    train_ids = torch.tensor(enc["train"][0], dtype=torch.long)
    T = args.seq
    starts = torch.tensor([s for s in enc["train"][1] if s + T - 1 <= len(train_ids)], dtype=torch.long)
    if len(starts) < 100:
        say("WARNING: few verse starts found; sampling windows at any token")
        starts = torch.arange(0, len(train_ids) - T + 1)
    train_ids, starts = train_ids.to(device), starts.to(device)
    arangeT = torch.arange(T - 1, device=device)

    def windows(ids, n=0):
        """Non-overlapping windows [BOS] + ids[k*(T-1):(k+1)*(T-1)], every full one (or the first n)."""
        k = len(ids) // (T - 1)
        if n:
            k = min(k, n)
        w = torch.tensor(ids[:k * (T - 1)], dtype=torch.long).view(k, T - 1)
        return torch.cat([torch.full((k, 1), bos_id, dtype=torch.long), w], 1)

    val_windows = windows(enc["val"][0]).to(device)
    g = torch.Generator(device=device)
    g.manual_seed(args.seed)

    def sample_batch(B):
        s = starts[torch.randint(0, len(starts), (B,), device=device, generator=g)]
        body = train_ids[s[:, None] + arangeT[None, :]]
        return torch.cat([torch.full((B, 1), bos_id, dtype=torch.long, device=device), body], 1)

    # ---------------------------------------------------------------- 3. model
    shape = dict(MODEL_SHAPE)
    cfg = DeepseekV3Config(vocab_size=vocab, bos_token_id=bos_id, eos_token_id=tok.token_to_id(EOS),
                           pad_token_id=tok.token_to_id(PAD), rope_parameters=dict(ROPE),
                           num_nextn_predict_layers=1, **shape)
    if getattr(cfg, "num_nextn_predict_layers", None) != 1:
        cfg.num_nextn_predict_layers = 1
    L = cfg.num_hidden_layers
    torch.manual_seed(args.seed)
    model = DeepseekV3ForCausalLM(cfg)
    if model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr():
        say("lm_head was tied to the embedding; untying")
        model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())

    class MTP(torch.nn.Module):
        """One MTP module (DeepSeek-V3 report, sec. 2.2); embedding and output head are the main model's."""

        def __init__(self, config):
            super().__init__()
            d = config.hidden_size
            self.enorm = DeepseekV3RMSNorm(d, eps=config.rms_norm_eps)
            self.hnorm = DeepseekV3RMSNorm(d, eps=config.rms_norm_eps)
            self.eh_proj = torch.nn.Linear(2 * d, d, bias=False)
            self.block = DeepseekV3DecoderLayer(config, layer_idx=config.num_hidden_layers)
            self.shared_head_norm = DeepseekV3RMSNorm(d, eps=config.rms_norm_eps)

        def forward(self, emb_next, h, layer_kwargs):
            """emb_next [B,T,d]: embed(t_{i+1}); h [B,T,d]: main hidden at i; layer_kwargs: what the main
            model passed its decoder layers (mask, position embeddings, position ids). Returns the block
            input x = eh_proj(...) and output y (before shared_head.norm)."""
            x = self.eh_proj(torch.cat([self.enorm(emb_next), self.hnorm(h)], dim=-1))
            kw = dict(layer_kwargs)
            kw["past_key_values"] = None
            kw["use_cache"] = False
            y = self.block(x, **kw)
            if isinstance(y, tuple):
                y = y[0]
            return x, y

    def init_like_hf(module, std):
        with torch.no_grad():
            for name, p in module.named_parameters():
                if p.ndim >= 2:
                    p.normal_(0.0, std)
                else:
                    p.fill_(1.0)  # RMSNorm weights
            for name, b in module.named_buffers():
                if name.endswith("e_score_correction_bias"):
                    b.zero_()

    mtp = MTP(model.config)
    init_like_hf(mtp, cfg.initializer_range)
    model.to(device)
    mtp.to(device)
    for attr, val in (("set_attn_implementation", "sdpa"),):
        try:
            getattr(model, attr)(val)
        except Exception as ex:  # noqa: BLE001
            say(f"{attr}({val}) failed ({ex!r:.120}); attention implementation stays {model.config._attn_implementation}")

    counts = param_counts({**shape, **{"num_hidden_layers": L}}, vocab)
    actual_main = sum(p.numel() for p in model.parameters())
    actual_mtp = sum(p.numel() for p in mtp.parameters())
    counts["actual_main"], counts["actual_mtp_own"] = actual_main, actual_mtp
    if actual_main != counts["total_main"] or actual_mtp != counts["mtp_own"]:
        say(f"WARNING: parameter formula {counts['total_main']}/{counts['mtp_own']} != actual {actual_main}/{actual_mtp}")
    log["params"] = counts
    log["model_config"] = json.loads(cfg.to_json_string())
    say(f"model: {actual_main / 1e6:.2f}M params main ({counts['activated_main'] / 1e6:.2f}M activated per token "
        f"without the embedding), MTP module {actual_mtp / 1e6:.2f}M own; file holds {counts['file_params'] / 1e6:.2f}M "
        f"(~{counts['file_params'] * 2 / 1e6:.1f} MB BF16)")
    say(f"  d={cfg.hidden_size} layers={L} (first {cfg.first_k_dense_replace} dense) heads={cfg.num_attention_heads} "
        f"q_lora={cfg.q_lora_rank} kv_lora={cfg.kv_lora_rank} nope/rope/v={cfg.qk_nope_head_dim}/{cfg.qk_rope_head_dim}/"
        f"{cfg.v_head_dim} experts={cfg.n_routed_experts} top{cfg.num_experts_per_tok} groups {cfg.n_group}/top{cfg.topk_group} "
        f"shared={cfg.n_shared_experts} moe_inter={cfg.moe_intermediate_size} rope={cfg.rope_parameters}")

    # hooks: what the main model passes its decoder layers, and h_i before the final norm
    cap = {}

    def grab_layer_kwargs(mod, a, kw):
        cap["kw"] = dict(kw)

    def grab_prenorm(mod, a):
        cap["h"] = a[0]

    model.model.layers[0].register_forward_pre_hook(grab_layer_kwargs, with_kwargs=True)
    model.model.norm.register_forward_pre_hook(grab_prenorm)

    # residual dropout (training only): embedding output, and each attention / FFN output before its residual add
    def drop_hook(mod, inp, outp):
        if not mod.training or args.dropout <= 0:
            return None
        if isinstance(outp, tuple):
            return (F.dropout(outp[0], args.dropout, True),) + tuple(outp[1:])
        return F.dropout(outp, args.dropout, True)

    dropped = [model.model.embed_tokens]
    for layer in list(model.model.layers) + [mtp.block]:
        dropped += [layer.self_attn, layer.mlp]
    for mod in dropped:
        mod.register_forward_hook(drop_hook)

    # expert loads: a forward hook on every router (main MoE layers and the MTP layer)
    gates = [(f"layer{l}", model.model.layers[l].mlp.gate) for l in range(L) if hasattr(model.model.layers[l].mlp, "gate")]
    gates.append((f"mtp{L}", mtp.block.mlp.gate))
    E = cfg.n_routed_experts
    meter = {"on": False, "step": {n: torch.zeros(E, device=device) for n, _ in gates},
             "window": {n: torch.zeros(E, device=device) for n, _ in gates}}

    def gate_hook(name):
        def hook(mod, inp, outp):
            if not meter["on"]:
                return
            outs = outp if isinstance(outp, (tuple, list)) else [outp]
            idx = [t for t in outs if torch.is_tensor(t) and not t.is_floating_point()]
            if not idx:
                raise RuntimeError(f"router {name} returned no index tensor: {[type(t) for t in outs]}")
            c = torch.bincount(idx[0].reshape(-1), minlength=E).float()
            meter["step"][name] += c
            meter["window"][name] += c
        return hook

    for name, gm in gates:
        gm.register_forward_hook(gate_hook(name))

    def forward(x, mtp_hidden=args.mtp_hidden):
        """Main logits, MTP logits (position i uses t_{i+1}; the last position gets a dummy token and is
        never scored: causal attention keeps it from touching earlier positions), pre-norm hidden."""
        cap.clear()
        o = model.model(input_ids=x, use_cache=False)
        logits = model.lm_head(o.last_hidden_state)
        h = cap["h"] if mtp_hidden == "prenorm" else o.last_hidden_state
        nxt = torch.cat([x[:, 1:], x[:, -1:]], 1)
        mx, my = mtp(model.model.embed_tokens(nxt), h, cap["kw"])
        mlogits = model.lm_head(mtp.shared_head_norm(my))
        return logits, mlogits, cap["h"], o.last_hidden_state, mx, my

    def losses(x, logits, mlogits):
        V = logits.shape[-1]
        lm = F.cross_entropy(logits[:, :-1].float().reshape(-1, V), x[:, 1:].reshape(-1))
        lt = F.cross_entropy(mlogits[:, :-2].float().reshape(-1, V), x[:, 2:].reshape(-1))
        return lm, lt

    def amp():  # a fresh autocast context each time (BF16 on CUDA, off on CPU)
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=on_cuda)

    # sanity: the pre-hook saw the input of the final norm (eval mode: no dropout in the checks and probes)
    model.eval()
    mtp.eval()
    with torch.no_grad(), amp():
        xs = sample_batch(2)
        _ = forward(xs)
        chk = (model.model.norm(cap["h"]) - model.model(input_ids=xs, use_cache=False).last_hidden_state).abs().max()
    say(f"hooks ok: |norm(captured h) - last_hidden_state| = {float(chk):.3g}; layer kwargs {sorted(cap['kw'])}")

    # experts backend
    def try_impl(impl):
        set_experts(model, impl)
        x = sample_batch(args.batch)
        torch.manual_seed(0)
        tt = []
        for it in range(3):
            if on_cuda:
                torch.cuda.synchronize()
            a = time.time()
            with amp():
                lg, ml, *_ = forward(x)
                lm, lt = losses(x, lg, ml)
            (lm + 0.3 * lt).backward()
            if on_cuda:
                torch.cuda.synchronize()
            tt.append(time.time() - a)
        model.zero_grad(set_to_none=True)
        mtp.zero_grad(set_to_none=True)
        if not torch.isfinite(lm) or not torch.isfinite(lt):
            raise RuntimeError(f"non-finite loss {float(lm.detach())} {float(lt.detach())}")
        return min(tt[1:]), float(lm.detach())

    impl_report = {}
    candidates = ["eager", "grouped_mm"] if args.experts_impl == "auto" else [args.experts_impl]
    for impl in candidates:
        try:
            impl_report[impl] = try_impl(impl)
            say(f"experts backend {impl}: {impl_report[impl][0] * 1000:.0f} ms per fwd+bwd of {args.batch}x{T}, "
                f"loss {impl_report[impl][1]:.4f}")
        except Exception as ex:  # noqa: BLE001
            say(f"experts backend {impl} failed: {ex!r:.300}")
            log["notes"].append(f"experts backend {impl} failed: {ex!r:.300}")
    ok = {k: v for k, v in impl_report.items()
          if "eager" not in impl_report or abs(v[1] - impl_report["eager"][1]) < 0.05}
    chosen = min(ok, key=lambda k: ok[k][0]) if ok else "eager"
    set_experts(model, chosen)
    log["experts_implementation"] = {"chosen": chosen, "probe_s_and_loss": impl_report}
    say(f"training with experts backend {chosen} (main config: {getattr(model.config, '_experts_implementation', None)}, "
        f"MTP layer: {getattr(mtp.block.mlp.experts.config, '_experts_implementation', None)})")

    # ---------------------------------------------------------------- 4. training
    decay, no_decay = [], []
    for p in list(model.parameters()) + list(mtp.parameters()):
        (decay if p.ndim >= 2 else no_decay).append(p)
    opt_kw = dict(lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, fused=on_cuda, **opt_kw)
    except Exception:  # noqa: BLE001
        opt = torch.optim.AdamW(groups, **opt_kw)
    set_tf32(True)

    def evaluate(wins, bs=16):
        model.eval()
        mtp.eval()
        tot_m = tot_t = n_m = n_t = 0.0
        with torch.no_grad(), amp():
            for i in range(0, len(wins), bs):
                x = wins[i:i + bs]
                lg, ml, *_ = forward(x)
                lm, lt = losses(x, lg, ml)
                tot_m += float(lm) * x.shape[0] * (T - 1)
                n_m += x.shape[0] * (T - 1)
                tot_t += float(lt) * x.shape[0] * (T - 2)
                n_t += x.shape[0] * (T - 2)
        model.train()
        mtp.train()
        return tot_m / n_m, tot_t / n_t

    def snapshot():
        return ({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
                {k: v.detach().to("cpu", copy=True) for k, v in mtp.state_dict().items()})

    budget_s = args.max_minutes * 60.0
    log["curve"], log["eval"] = [], []
    best = {"val": float("inf"), "step": 0, "state": None}
    last_val = (-1, float("inf"))
    model.train()
    mtp.train()
    t_train = time.time()
    step, tokens_seen = 0, 0
    run_m = run_t = 0.0
    run_n = 0
    say(f"training: up to {args.steps} steps or {args.max_minutes} min; batch {args.batch}x{T} "
        f"= {args.batch * T} tokens/step; {len(val_windows)} validation windows")
    try:
        while step < args.steps:
            elapsed = time.time() - t_train
            if elapsed >= budget_s:
                say(f"wall-clock limit reached at step {step}")
                break
            p, lr_now, lam = schedule(step, args.steps, elapsed, budget_s, args.lr, args.warmup)
            for gr in opt.param_groups:
                gr["lr"] = lr_now
            x = sample_batch(args.batch)
            for n in meter["step"]:
                meter["step"][n].zero_()
            meter["on"] = True
            with amp():
                lg, ml, *_ = forward(x)
                lm, lt = losses(x, lg, ml)
                loss = lm + lam * lt
            meter["on"] = False
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(mtp.parameters()), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():  # auxiliary-loss-free balancing, every MoE layer incl. the MTP layer's
                for name, gm in gates:
                    c = meter["step"][name]
                    gm.e_score_correction_bias.add_(GAMMA * torch.sign(c.mean() - c))
            step += 1
            tokens_seen += x.numel()
            run_m = run_m + lm.detach()  # stays on the GPU: no sync per step
            run_t = run_t + lt.detach()
            run_n += 1
            if step % args.log_every == 0 or step == 1:
                wall = time.time() - t_train
                loads = {}
                for name, _ in gates:
                    w = meter["window"][name]
                    mean = float(w.mean())
                    loads[name] = {"max_over_mean": round(float(w.max()) / max(mean, 1e-9), 3),
                                   "min_over_mean": round(float(w.min()) / max(mean, 1e-9), 3),
                                   "bias_min": round(float(dict(gates)[name].e_score_correction_bias.min()), 4),
                                   "bias_max": round(float(dict(gates)[name].e_score_correction_bias.max()), 4)}
                    w.zero_()
                entry = {"step": step, "tokens": tokens_seen, "wall_s": round(wall, 1), "lr": lr_now, "lambda": lam,
                         "loss_main": round(float(run_m) / max(run_n, 1), 4),
                         "loss_mtp": round(float(run_t) / max(run_n, 1), 4),
                         "grad_norm": round(float(gn), 3), "loads": loads}
                log["curve"].append(entry)
                run_m = run_t = 0.0
                run_n = 0
                worst = max(v["max_over_mean"] for v in loads.values())
                say(f"step {step:5d} | loss {entry['loss_main']:.4f} mtp {entry['loss_mtp']:.4f} | lr {lr_now:.2e} "
                    f"lambda {lam} | {tokens_seen / 1e6:.1f}M tok | {wall:.0f}s ({wall / step * 1000:.0f} ms/step) | "
                    f"max/mean load {worst:.2f} (" + " ".join(f"{k}:{v['max_over_mean']:.2f}" for k, v in loads.items()) + ")")
            if step % args.eval_every == 0:
                vm, vt = evaluate(val_windows)
                last_val = (step, vm)
                log["eval"].append({"step": step, "tokens": tokens_seen, "val_main": round(vm, 4), "val_mtp": round(vt, 4),
                                    "wall_s": round(time.time() - t_train, 1)})
                mark = ""
                if vm < best["val"]:
                    best.update(val=vm, step=step, state=snapshot())
                    mark = " (best)"
                say(f"  eval step {step}: val loss {vm:.4f} (ppl {math.exp(vm):.2f}), val MTP loss {vt:.4f}{mark}")
                write_log()
    except KeyboardInterrupt:
        say("interrupted; saving what there is")
    train_s = time.time() - t_train
    if last_val[0] == step:
        vm = last_val[1]
    else:
        vm, vt = evaluate(val_windows)
        log["eval"].append({"step": step, "tokens": tokens_seen, "val_main": round(vm, 4), "val_mtp": round(vt, 4),
                            "wall_s": round(train_s, 1)})
    if vm < best["val"] or best["state"] is None:
        best.update(val=vm, step=step, state=None)
    else:
        model.load_state_dict(best["state"][0])
        mtp.load_state_dict(best["state"][1])
    log["training"] = {"steps": step, "tokens_seen": tokens_seen, "train_s": round(train_s, 1),
                       "ms_per_step": round(train_s / max(step, 1) * 1000, 1),
                       "epochs": round(tokens_seen / max(1, ntok["train"]), 2),
                       "best_step": best["step"], "best_val_loss": round(best["val"], 4),
                       "mtp_hidden": args.mtp_hidden, "gamma": GAMMA,
                       "mtp_lambda": f"0.3 for progress < {MTP_SWITCH}, then 0.1"}
    say(f"trained {step} steps, {tokens_seen / 1e6:.1f}M tokens ({log['training']['epochs']} epochs) in {train_s:.0f}s; "
        f"keeping step {best['step']} (val loss {best['val']:.4f})")
    write_log()

    # ---------------------------------------------------------------- 5. export
    model.eval()
    mtp.eval()
    set_experts(model, "eager")
    with torch.no_grad():  # round to what the file will hold (BF16; the correction bias stays F32)
        for mod in (model, mtp):
            for name, p in mod.named_parameters():
                p.copy_(p.to(torch.bfloat16).float())
    try:  # config.json (+ generation_config.json) as save_pretrained writes them for a BF16 model
        bf16_model = copy.deepcopy(model).to(torch.bfloat16)
        bf16_model.config.num_nextn_predict_layers = 1
        bf16_model.save_pretrained(str(out))
        del bf16_model
    except Exception:  # noqa: BLE001
        tb = traceback.format_exc()
        say("save_pretrained FAILED; writing config.json with config.save_pretrained\n" + tb)
        log["errors"].append("save_pretrained: " + tb[-600:])
        model.config.save_pretrained(str(out))
    cfg_json = json.loads((out / "config.json").read_text())
    if cfg_json.get("num_nextn_predict_layers") != 1:
        cfg_json["num_nextn_predict_layers"] = 1
        (out / "config.json").write_text(json.dumps(cfg_json, indent=2) + "\n")
    hf_files = sorted(os.listdir(out))
    say(f"save_pretrained wrote {hf_files}")

    def to_file_dtype(k, v):
        v = v.detach().to("cpu")
        return v.float().contiguous() if k.endswith("e_score_correction_bias") else v.to(torch.bfloat16).contiguous()

    main_sd = deepseek_layout({k: v for k, v in model.state_dict().items()}, cfg.moe_intermediate_size, cfg.hidden_size)
    tensors = {k: to_file_dtype(k, v) for k, v in main_sd.items()}
    n_main = len(tensors)
    mtp_ok = False
    try:
        msd = {mtp_export_name(k, L): v for k, v in mtp.state_dict().items()}
        msd = deepseek_layout(msd, cfg.moe_intermediate_size, cfg.hidden_size)
        msd[f"model.layers.{L}.embed_tokens.weight"] = model.model.embed_tokens.weight
        msd[f"model.layers.{L}.shared_head.head.weight"] = model.lm_head.weight
        for k, v in msd.items():
            assert k not in tensors, k
            tensors[k] = to_file_dtype(k, v)
        mtp_ok = True
    except Exception:  # noqa: BLE001
        tb = traceback.format_exc()
        say("MTP export FAILED; saving the main model alone\n" + tb)
        log["errors"].append("mtp export: " + tb[-600:])
        tensors = {k: v for k, v in tensors.items() if not k.startswith(f"model.layers.{L}.")}
    for f in os.listdir(out):  # replace whatever weights save_pretrained wrote
        if f.endswith(".safetensors") or f == "model.safetensors.index.json":
            os.remove(out / f)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    size = (out / "model.safetensors").stat().st_size
    log["export"] = {"tensors": len(tensors), "main_tensors": n_main, "mtp_tensors": len(tensors) - n_main,
                     "bytes": size, "mtp_included": mtp_ok,
                     "dtypes": sorted({str(v.dtype) for v in tensors.values()})}
    say(f"wrote model.safetensors: {len(tensors)} tensors ({len(tensors) - n_main} of the MTP layer {L}), "
        f"{size / 1e6:.1f} MB; files {sorted(os.listdir(out))}")
    write_log()

    # ---------------------------------------------------------------- 6. reload and fixtures (FP32, no TF32)
    set_tf32(False)
    try:
        a = torch.randn(256, 256, device=device, dtype=torch.float64)
        b = torch.randn(256, 256, device=device, dtype=torch.float64)
        err = float(((a.float() @ b.float()).double() - a @ b).abs().max() / (a @ b).abs().max())
        say(f"FP32 matmul relative error vs FP64: {err:.2e} ({'TF32 OFF' if err < 1e-5 else 'TF32 looks ON'})")
        log["fp32_matmul_rel_err"] = err
    except Exception as ex:  # noqa: BLE001
        say("matmul precision check failed:", repr(ex)[:200])

    fix = {}
    try:
        try:
            ref = DeepseekV3ForCausalLM.from_pretrained(str(out), dtype=torch.float32, attn_implementation="eager")
        except TypeError:
            ref = DeepseekV3ForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32, attn_implementation="eager")
        ref = ref.to(device).float().eval()
        set_experts(ref, "eager")
        model.float()
        try:
            model.set_attn_implementation("eager")
        except Exception:  # noqa: BLE001
            model.config._attn_implementation = "eager"
        held = enc["heldout"][0]
        x0 = windows(held, 1).to(device)
        with torch.no_grad():
            a = model(input_ids=x0, use_cache=False).logits.float()
            b = ref(input_ids=x0, use_cache=False).logits.float()
        diff = float((a - b).abs().max())
        log["reload_max_logit_diff"] = diff
        say(f"reloaded model.safetensors with from_pretrained: max |logit diff| vs the trained model {diff:.3g}")
        if diff > 1e-3:
            raise RuntimeError(f"the saved weights do not reload to the trained model (diff {diff})")
    except Exception:  # noqa: BLE001
        tb = traceback.format_exc()
        say("RELOAD CHECK FAILED\n" + tb)
        log["errors"].append("reload: " + tb[-800:])
        write_log()
        ref = None

    if ref is not None:
        # MTP module rebuilt from the file (names and layout checked by load_state_dict(strict=True))
        rmtp = None
        try:
            if not mtp_ok:
                raise RuntimeError("no MTP layer in the file")
            filet = load_file(str(out / "model.safetensors"))
            msd, extra = mtp_import_state(filet, L, cfg.moe_intermediate_size)
            rmtp = MTP(ref.config).to(device).float().eval()
            rmtp.load_state_dict({k: v.float() for k, v in msd.items()}, strict=True)
            assert torch.equal(extra["embed_tokens.weight"], filet["model.embed_tokens.weight"])
            assert torch.equal(extra["shared_head.head.weight"], filet["lm_head.weight"])
            say("MTP layer reloaded from the file (strict), embedding and head copies identical")
        except Exception:  # noqa: BLE001
            tb = traceback.format_exc()
            say("MTP reload FAILED\n" + tb)
            log["errors"].append("mtp reload: " + tb[-800:])
            rmtp = None

        rcap = {}
        ref.model.layers[0].register_forward_pre_hook(lambda m, a, kw: rcap.__setitem__("kw", dict(kw)), with_kwargs=True)
        ref.model.norm.register_forward_pre_hook(lambda m, a: rcap.__setitem__("h", a[0]))

        def ref_forward(x):
            """FP32: main logits, pre-norm h, post-norm h, and (if the MTP layer loaded) MTP input/output/logits."""
            rcap.clear()
            o = ref.model(input_ids=x, use_cache=False)
            lg = ref.lm_head(o.last_hidden_state)
            res = {"logits": lg, "h": rcap["h"], "hn": o.last_hidden_state}
            if rmtp is not None:
                hsrc = rcap["h"] if args.mtp_hidden == "prenorm" else o.last_hidden_state
                nxt = torch.cat([x[:, 1:], x[:, -1:]], 1)
                mx, my = rmtp(ref.model.embed_tokens(nxt), hsrc, rcap["kw"])
                res.update(mx=mx, my=my, mlogits=ref.lm_head(rmtp.shared_head_norm(my)), kw=rcap["kw"])
            return res

        # heldout_ppl.json
        try:
            wins = windows(held, args.heldout_windows).to(device)
            nll_w, nll_mtp_w, acc_mtp, accept = [], [], [], []
            with torch.no_grad():
                for i in range(0, len(wins), 8):
                    x = wins[i:i + 8]
                    r = ref_forward(x)
                    lp = F.log_softmax(r["logits"].double(), -1)
                    nll = -lp[:, :-1].gather(-1, x[:, 1:, None])[..., 0]          # [b, T-1]
                    nll_w += nll.mean(1).tolist()
                    if "mlogits" in r:
                        mlp_ = F.log_softmax(r["mlogits"].double(), -1)
                        mn = -mlp_[:, :-2].gather(-1, x[:, 2:, None])[..., 0]        # [b, T-2]
                        nll_mtp_w += mn.mean(1).tolist()
                        mtop = r["mlogits"][:, :-2].argmax(-1)                      # drafts for i+2
                        acc_mtp.append((mtop == x[:, 2:]).double().mean().item())
                        accept.append((mtop == r["logits"][:, 1:-1].argmax(-1)).double().mean().item())
            mean_nll = sum(nll_w) / len(nll_w)
            ppl = {"definition": "ids = tokenizer.encode(held-out text, no special tokens); window k = [BOS] + "
                                 f"ids[k*{T - 1}:(k+1)*{T - 1}] ({T} tokens), k = 0..n_windows-1 (every full window); "
                                 "one forward per window from position 0 (no cache carried between windows); NLL "
                                 f"of tokens 1..{T - 1} of each window given the ones before ({T - 1} per window); "
                                 "mean_nll = mean over all n_windows*(T-1) predictions (natural log); ppl = exp(mean_nll). "
                                 "Computed by HF transformers from model.safetensors in FP32 (TF32 off, eager attention); "
                                 "log-softmax in FP64.",
                   "held_out": "verses of runs 19, 39, 59, 79, 99 of 100 contiguous runs (see train_log.json data)",
                   "heldout_text_sha256": hashlib.sha256(texts["heldout"].encode()).hexdigest(),
                   "heldout_tokens": len(held), "window": T, "predicted_per_window": T - 1,
                   "n_windows": len(nll_w), "bos_id": bos_id, "mean_nll": mean_nll, "ppl": math.exp(mean_nll),
                   "per_window_mean_nll": nll_w,
                   "first2_mean_nll": sum(nll_w[:2]) / len(nll_w[:2]), "first2_ppl": math.exp(sum(nll_w[:2]) / len(nll_w[:2])),
                   "first2_window_ids": wins[:2].tolist()}
            if nll_mtp_w:
                m = sum(nll_mtp_w) / len(nll_mtp_w)
                ppl["mtp"] = {"definition": f"same windows; MTP at position i (i = 0..{T - 3}) predicts token i+2 from "
                                            f"h_i ({args.mtp_hidden}) and embed(token i+1)",
                              "mean_nll": m, "ppl": math.exp(m),
                              "top1_accuracy": sum(acc_mtp) / len(acc_mtp),
                              "greedy_acceptance": sum(accept) / len(accept),
                              "greedy_acceptance_definition": "fraction of positions where argmax MTP(i) equals the "
                                                              "main model's argmax at position i+1 (true prefix)"}
            (out / "heldout_ppl.json").write_text(json.dumps(ppl) + "\n")
            fix["heldout_ppl"] = {k: ppl[k] for k in ("n_windows", "mean_nll", "ppl", "first2_ppl")}
            if "mtp" in ppl:
                fix["heldout_ppl"]["mtp"] = {k: ppl["mtp"][k] for k in ("mean_nll", "ppl", "top1_accuracy", "greedy_acceptance")}
            say(f"held-out: {len(nll_w)} windows x {T - 1} predictions: mean NLL {mean_nll:.4f}, ppl {math.exp(mean_nll):.3f}"
                f" (first 2 windows: ppl {ppl['first2_ppl']:.3f})"
                + (f"; MTP ppl {ppl['mtp']['ppl']:.3f}, top-1 {ppl['mtp']['top1_accuracy']:.3f}, "
                   f"greedy acceptance {ppl['mtp']['greedy_acceptance']:.3f}" if "mtp" in ppl else ""))
        except Exception:  # noqa: BLE001
            tb = traceback.format_exc()
            say("heldout_ppl FAILED\n" + tb)
            log["errors"].append("heldout_ppl: " + tb[-800:])

        # mtp_fixture.safetensors
        try:
            n = 64
            x = torch.tensor([[bos_id] + held[:n - 1]], dtype=torch.long, device=device)
            with torch.no_grad():
                r = ref_forward(x)
            t = {"input_ids": x[0].cpu().to(torch.int64),
                 "main.hidden_prenorm": r["h"][0].float().cpu().contiguous(),
                 "main.hidden_postnorm": r["hn"][0].float().cpu().contiguous(),
                 "main.logits": r["logits"][0].float().cpu().contiguous()}
            meta = {"about": "made by train/train.py from model.safetensors (HF transformers, FP32, TF32 off, eager)",
                    "T": str(n), "mtp_hidden": args.mtp_hidden,
                    "mtp_rule": "row i (i = 0..T-2): x_i = eh_proj(cat[enorm(embed(input_ids[i+1])), hnorm(h_i)]) with "
                                f"h_i = main.hidden_{args.mtp_hidden} row i; y = decoder layer {L} over rows 0..T-2 "
                                "(causal, position ids 0..T-2, the main model's RoPE/YaRN); logits = "
                                f"shared_head.head(shared_head.norm(y)); predicts input_ids[i+2] (beyond the prompt for i = T-2)",
                    "transformers": transformers.__version__, "torch": torch.__version__}
            if rmtp is not None:
                t["mtp.eh_proj_out"] = r["mx"][0, :n - 1].float().cpu().contiguous()
                t["mtp.block_out"] = r["my"][0, :n - 1].float().cpu().contiguous()
                t["mtp.logits"] = r["mlogits"][0, :n - 1].float().cpu().contiguous()
                # the same MTP rows without the padded last position: must agree (causality)
                with torch.no_grad():
                    rcap.clear()
                    ref.model(input_ids=x[:, :n - 1], use_cache=False)
                    h2 = rcap["h"] if args.mtp_hidden == "prenorm" else ref.model.norm(rcap["h"])
                    _, my2 = rmtp(ref.model.embed_tokens(x[:, 1:]), h2, rcap["kw"])
                    ml2 = ref.lm_head(rmtp.shared_head_norm(my2))[0]
                d_pad = float((ml2 - r["mlogits"][0, :n - 1]).abs().max())
                meta["unpadded_max_diff"] = f"{d_pad:.3g}"
                say(f"MTP fixture: padded vs exact-length MTP logits max diff {d_pad:.3g}")
                # an independent check: transformers' own MtpModel loading the same file
                try:
                    from transformers.modeling_layers import MtpModel
                    ref._keys_to_ignore_on_load_unexpected = [rf"model\.layers\.{L}\..*"]
                    hm = MtpModel.from_pretrained(ref).to(device).float().eval()
                    with torch.no_grad():
                        kw = dict(r["kw"])
                        hsrc = r["h"] if args.mtp_hidden == "prenorm" else r["hn"]
                        nxt = torch.cat([x[:, 1:], x[:, -1:]], 1)
                        hy = hm.layers[0](ref.model.embed_tokens(nxt), hsrc,
                                          position_embeddings=kw["position_embeddings"],
                                          attention_mask=kw.get("attention_mask"), position_ids=kw.get("position_ids"),
                                          past_key_values=None)
                        hl = hm._project_to_logits(hy)[0, :n - 1]
                    d_hf = float((hl - r["mlogits"][0, :n - 1]).abs().max())
                    meta["hf_mtpmodel_max_diff"] = f"{d_hf:.3g}"
                    say(f"transformers MtpModel on the same file: max |MTP logit diff| {d_hf:.3g}")
                except Exception as ex:  # noqa: BLE001
                    meta["hf_mtpmodel_max_diff"] = f"not run: {type(ex).__name__}: {str(ex)[:150]}"
                    say(f"transformers MtpModel check not run: {ex!r:.300}")
            save_file(t, str(out / "mtp_fixture.safetensors"), metadata=meta)
            fix["mtp_fixture"] = {k: list(v.shape) for k, v in t.items()}
            fix["mtp_fixture_meta"] = meta
            say(f"wrote mtp_fixture.safetensors: {fix['mtp_fixture']}")
        except Exception:  # noqa: BLE001
            tb = traceback.format_exc()
            say("mtp_fixture FAILED\n" + tb)
            log["errors"].append("mtp_fixture: " + tb[-800:])

        # samples.json: greedy continuations (no KV cache: the whole prefix each step)
        try:
            samples = []
            for prompt in PROMPTS:
                ids = [bos_id] + tok.encode(prompt, add_special_tokens=False).ids
                seq, margins = list(ids), []
                with torch.no_grad():
                    for _ in range(args.gen_tokens):
                        lg = ref(input_ids=torch.tensor([seq], device=device), use_cache=False).logits[0, -1].float()
                        top = torch.topk(lg, 2).values
                        margins.append(float(top[0] - top[1]))
                        seq.append(int(lg.argmax()))
                cont = seq[len(ids):]
                samples.append({"prompt": prompt, "prompt_ids": ids, "greedy_ids": cont,
                                "text": tok.decode(cont, skip_special_tokens=False), "min_margin": min(margins)})
                say(f"  {prompt!r} -> {samples[-1]['text']!r}")
            (out / "samples.json").write_text(json.dumps({"about": "greedy argmax, FP32, from model.safetensors; "
                                                          "prompt_ids include BOS", "samples": samples},
                                                         indent=1, ensure_ascii=False) + "\n")
            fix["samples"] = [{"prompt": s["prompt"], "text": s["text"]} for s in samples]
        except Exception:  # noqa: BLE001
            tb = traceback.format_exc()
            say("samples FAILED\n" + tb)
            log["errors"].append("samples: " + tb[-800:])
    log["fixtures"] = fix
    write_log()

    # ---------------------------------------------------------------- summary
    total = sum((out / f).stat().st_size for f in os.listdir(out))
    say("=" * 78)
    say(f"SUMMARY  out={out}  ({total / 1e6:.1f} MB in {len(os.listdir(out))} files: {sorted(os.listdir(out))})")
    say(f"  params: main {counts['actual_main'] / 1e6:.2f}M (activated {counts['activated_main'] / 1e6:.2f}M), "
        f"MTP {counts['actual_mtp_own'] / 1e6:.2f}M, file {counts['file_params'] / 1e6:.2f}M")
    tr = log["training"]
    say(f"  trained {tr['steps']} steps / {tr['tokens_seen'] / 1e6:.1f}M tokens ({tr['epochs']} epochs) in "
        f"{tr['train_s']:.0f}s ({tr['ms_per_step']} ms/step, experts backend {chosen}); best step {tr['best_step']} "
        f"val loss {tr['best_val_loss']}")
    if "heldout_ppl" in fix:
        say(f"  held-out ppl {fix['heldout_ppl']['ppl']:.3f} over {fix['heldout_ppl']['n_windows']} windows"
            + (f"; MTP acceptance {fix['heldout_ppl']['mtp']['greedy_acceptance']:.3f}" if "mtp" in fix["heldout_ppl"] else ""))
    if "reload_max_logit_diff" in log:
        say(f"  reload check: max |logit diff| {log['reload_max_logit_diff']:.3g}")
    say(f"  errors: {len(log['errors'])}" + ("" if not log["errors"] else " -> see train_log.json 'errors'"))
    say(f"  total wall time {time.time() - t_start:.0f}s")
    write_log()
    return 0 if not log["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
