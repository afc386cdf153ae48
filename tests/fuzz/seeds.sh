#!/usr/bin/env bash
# seeds.sh OUT RUN - seed corpora for the libFuzzer targets, built from the fixtures at fuzz time
# (nothing large is committed): OUT/<target>/ gets a few small files per target. RUN is the ./run
# binary (for the golden files). Run from the repository root.
set -euo pipefail
out=$1 run=$2
mkdir -p "$out"/{safetensors,index,config,tokenizer_json,encode,chat_template,golden}
F=tests/fixtures
# config.json: every fixture's and the bundled models'
i=0; for c in $F/*/config.json $F/configs/*/config.json models/*/config.json; do cp "$c" "$out/config/c$((i++)).json"; done
# tokenizer_config.json: the fixture's, the models', and one per chat template DeepSeek ships
i=0; for c in $F/tokenizer/tokenizer_config.json models/kjv-v3/tokenizer_config.json; do cp "$c" "$out/chat_template/t$((i++)).json"; done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
d = json.load(open("tests/fixtures/chat/cases.json"))
seen, texts = set(), set()
for c in d["cases"]:
    if c["template"] not in seen:
        seen.add(c["template"])
        json.dump({"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": {"content": "<｜end▁of▁sentence｜>"},
                   "chat_template": c["template"]}, open(f"{out}/chat_template/family{len(seen)}.json", "w"))
    texts.add(c["text"])
t = json.load(open("tests/fixtures/tokenizer/cases.json"))
cases = t["cases"] if isinstance(t, dict) else t
for c in cases[:60]:
    s = c.get("text") if isinstance(c, dict) else None
    if isinstance(s, str): texts.add(s)
for i, s in enumerate(sorted(texts)[:80]):
    open(f"{out}/encode/e{i}", "wb").write(s.encode("utf-8", "surrogatepass")[:4096])
open(f"{out}/encode/bytes", "wb").write(bytes(range(256)))
PY
# tokenizer.json: the fixture's (GPT-2 style too) and the bundled model's
cp $F/tokenizer/tokenizer.json "$out/tokenizer_json/fixture.json"
cp models/kjv-v3/tokenizer.json "$out/tokenizer_json/kjv.json"
[ -f $F/tokenizer/gpt2_style/tokenizer.json ] && cp $F/tokenizer/gpt2_style/tokenizer.json "$out/tokenizer_json/gpt2.json"
# golden files (also safetensors seeds): a few functions at small shapes, one per config family
g="--shape tokens=2 --shape batch=1 --shape gemm_m=2 --shape gemm_n=16 --shape gemm_k=128"
"$run" golden --config $F/v2_lite/config.json --out "$out/golden/a.safetensors" $g \
  --functions rmsnorm,rope_table,rope,mla_decode,moe_gate,fp8_quant_block,fp8_dequant_act,fp8_gemm 2>/dev/null
"$run" golden --config $F/v3_yarn/config.json --out "$out/golden/b.safetensors" $g \
  --functions rope_table,mla_absorbed,ffn_swiglu,fp8_quant_act 2>/dev/null
"$run" golden --config $F/configs/tiny_vocab/config.json --out "$out/golden/c.safetensors" $g --shape hidden=16 \
  --shape layers=1 --shape vocab=32 --shape experts=4 --shape n_group=1 --shape topk_group=1 --shape top_k=2 \
  --shape inter=16 --shape moe_inter=8 --shape heads=2 --functions moe,decoder_layer,model 2>/dev/null
cp "$out"/golden/*.safetensors "$out/safetensors/"
cp $F/v3_sharded/expected.safetensors "$out/safetensors/expected.safetensors"
# a sharded checkpoint of three small shards: the index, then each shard after a "#SHARD#" line
python3 - "$out" <<'PY'
import json, struct, sys
out = sys.argv[1]
def st(tensors):  # name -> (dtype, shape, bytes)
    hdr, data, off = {}, b"", 0
    for n, (dt, sh, b) in tensors.items():
        hdr[n] = {"dtype": dt, "shape": sh, "data_offsets": [off, off + len(b)]}; data += b; off += len(b)
    h = json.dumps(hdr).encode(); h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data
shards = [
    {"model.embed_tokens.weight": ("F32", [2, 3], struct.pack("<6f", *range(6))), "model.norm.weight": ("BF16", [4], b"\x80\x3f" * 4)},
    {"model.layers.0.mlp.gate.weight": ("F8_E4M3", [2, 4], bytes(range(8))), "model.layers.0.mlp.gate.weight_scale_inv": ("F32", [1, 1], struct.pack("<f", 1.5))},
    {"lm_head.weight": ("F16", [3, 2], b"\x00\x3c" * 6)},
]
wm = {n: f"model-{k+1:05d}-of-00003.safetensors" for k, s in enumerate(shards) for n in s}
parts = [json.dumps({"metadata": {"total_size": 100}, "weight_map": wm}).encode()] + [st(s) for s in shards]
open(f"{out}/index/three", "wb").write(b"\n#SHARD#\n".join(parts))
open(f"{out}/index/one", "wb").write(b"\n#SHARD#\n".join(parts[:2]).replace(b"00002-of", b"00001-of").replace(b"00003-of", b"00001-of"))
for k, s in enumerate(shards): open(f"{out}/safetensors/shard{k}.safetensors", "wb").write(st(s))
PY
for d in "$out"/*/; do printf '%s %s files, ' "$(basename "$d")" "$(ls "$d" | wc -l)"; done; echo
