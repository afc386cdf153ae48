#!/usr/bin/env python3
"""Drop the MTP layer's copies of the embedding and output head from a checkpoint, in place.

    python3 train/drop_mtp_copies.py models/kjv-v3/model.safetensors

DeepSeek's checkpoints store model.layers.{L}.embed_tokens.weight and .shared_head.head.weight,
identical to model.embed_tokens.weight and lm_head.weight. train.py writes them too (and checks they
are identical); dsv3.c's loader uses lm_head when shared_head.head is absent, so the bundled model
leaves both out to keep the repository's model files under 40 MB. Plain Python (json + bytes): the
safetensors header is rewritten with the remaining tensors' data copied unchanged, in order."""
import json
import struct
import sys

path = sys.argv[1]
with open(path, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    data = f.read()
meta = header.pop("__metadata__", None)
layers = [int(k.split(".")[2]) for k in header if k.startswith("model.layers.") and ".eh_proj." in k]
assert len(layers) == 1, "expected one MTP layer"
L = layers[0]
drop = {f"model.layers.{L}.embed_tokens.weight", f"model.layers.{L}.shared_head.head.weight"}
main = {f"model.layers.{L}.embed_tokens.weight": "model.embed_tokens.weight",
        f"model.layers.{L}.shared_head.head.weight": "lm_head.weight"}
for k in drop & header.keys():  # only identical copies may go
    a, b = header[k]["data_offsets"], header[main[k]]["data_offsets"]
    assert data[a[0]:a[1]] == data[b[0]:b[1]], f"{k} differs from {main[k]}"
out_header, chunks, off = {}, [], 0
for k, v in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
    if k in drop:
        continue
    a, b = v["data_offsets"]
    chunks.append(data[a:b])
    out_header[k] = {"dtype": v["dtype"], "shape": v["shape"], "data_offsets": [off, off + b - a]}
    off += b - a
if meta is not None:
    out_header["__metadata__"] = meta
h = json.dumps(out_header, separators=(",", ":")).encode()
h += b" " * (-len(h) % 8)
with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(chunks))
print(f"{path}: dropped {sorted(drop & header.keys())}, {len(out_header) - (meta is not None)} tensors left")
