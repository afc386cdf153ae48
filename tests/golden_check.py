#!/usr/bin/env python3
"""golden_check.py - an independent reader of a `run golden` file (notes/golden.md).

    python3 tests/golden_check.py G.safetensors                  # float64 on the CPU
    python3 tests/golden_check.py G.safetensors --device cuda    # float32 on a GPU (TF32 off)

Loads the file with safetensors, recomputes these functions from their stored inputs in PyTorch,
written from the math and not from the C code -- absorbed MLA attention (mla_absorbed, and
mla_decode / mla_naive when present, which compute the same thing), the MoE gate, FP8 dequantization
(weight blocks and activation tiles), the latent cache's storage formats (mla_kv_rows) and batched
decode over a paged cache in each format (mla_paged_decode) -- and compares with the stored outputs
within the tolerance the file states for each function: max|got - want| / max|want| <=
tolerance.<function>. Selected expert indices, FP8 dequantization and every stored byte of the
cache formats must match exactly. Prints one line per output; exits 1 if
any is outside its tolerance, 2 if the file has none of these functions. Needs torch, safetensors.
"""
import argparse
import json
import sys

import torch
from safetensors import safe_open


def rel_err(got, want):
    got, want = got.double().cpu(), want.double().cpu()
    diff = (got - want).abs().max().item()
    ref = want.abs().max().item()
    return diff / ref if ref > 0 else diff


class Report:
    def __init__(self, meta):
        self.meta, self.failed, self.lines = meta, 0, 0

    def line(self, ok, what, detail):
        self.failed += not ok
        self.lines += 1
        print(f"{'OK    ' if ok else 'NOT OK'} {what}: {detail}")

    def close(self, fn, arg, got, want):
        tol = float(self.meta[f"tolerance.{fn}"])
        err = rel_err(got, want)
        self.line(err <= tol, f"{fn}.{arg}", f"rel err {err:.3g} (tol {tol:g})")

    def exact(self, fn, arg, got, want):
        same = torch.equal(got.cpu(), want.cpu())
        bad = (got.cpu() != want.cpu()).sum().item()
        self.line(same, f"{fn}.{arg}", "identical" if same else f"{bad} of {want.numel()} entries differ")


def mla_attention(t, cfg, fn, dt, dev):
    """out[b,t,h] = W_UV[h] . sum_l softmax_l(scale * (q_nope W_UK[h] . c_l + q_pe . k_pe_l)) c_l,
    key l visible to query t iff l <= pos0 + t. The cache rows are [c_kv (d_c) | k_pe (d_R)]."""
    get = lambda a: t[f"{fn}.{a}"].to(dev, dt)
    q_nope, q_pe, cache, kv_b = get("q_nope"), get("q_pe"), get("kv_cache"), get("kv_b_proj")
    scale = t[f"{fn}.softmax_scale"].item()
    pos0 = int(t[f"{fn}.pos0"].item())
    B, T, H, nope = q_nope.shape
    L = cache.shape[1]
    dc, v = cfg["kv_lora_rank"], cfg["v_head_dim"]
    w = kv_b.view(H, nope + v, dc)                       # per head: W_UK [nope, d_c], then W_UV [v, d_c]
    w_uk, w_uv = w[:, :nope], w[:, nope:]
    c_kv, k_pe = cache[..., :dc], cache[..., dc:]
    q_lat = torch.einsum("bthn,hnc->bthc", q_nope, w_uk)  # W_UK absorbed into the query
    scores = torch.einsum("bthc,blc->bhtl", q_lat, c_kv) + torch.einsum("bthr,blr->bhtl", q_pe, k_pe)
    visible = torch.arange(L, device=dev)[None, :] <= pos0 + torch.arange(T, device=dev)[:, None]
    p = torch.softmax((scores * scale).masked_fill(~visible, float("-inf")), dim=-1)
    o_lat = torch.einsum("bhtl,blc->bthc", p, c_kv)
    return torch.einsum("bthc,hvc->bthv", o_lat, w_uv)


def moe_gate(t, cfg, dt, dev):
    """DeepSeek's gate: scores = sigmoid (V3) or softmax (V2) of the logits; selection on scores + bias
    (noaux_tc only) within the topk_group best groups (a group scores the sum of its top 2 with
    noaux_tc, its max with group_limited_greedy), excluded experts -inf; weights = the unbiased
    scores of the chosen, renormalized if norm_topk_prob, times routed_scaling_factor."""
    logits = t["moe_gate.logits"].to(dev, dt)
    bias = t["moe_gate.bias"].to(dev, dt)
    E, K = logits.shape[-1], cfg["num_experts_per_tok"]
    x = logits.reshape(-1, E)
    scores = x.sigmoid() if cfg["scoring_func"] == "sigmoid" else x.softmax(-1)
    method, n_group = cfg["topk_method"], cfg["n_group"]
    choice = scores + bias if method == "noaux_tc" else scores.clone()
    if n_group > 1 and method != "greedy":
        per = E // n_group
        grouped = choice.view(-1, n_group, per)
        if method == "noaux_tc":
            group_score = grouped.topk(min(2, per), dim=-1).values.sum(-1)
        else:
            group_score = grouped.max(-1).values
        keep = group_score.topk(cfg["topk_group"], dim=-1).indices
        kept = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep, True)
        choice = choice.masked_fill(~kept.repeat_interleave(per, dim=1), float("-inf"))
    idx = choice.topk(K, dim=-1, sorted=True).indices
    w = scores.gather(1, idx)
    if cfg["norm_topk_prob"]:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    w = w * cfg["routed_scaling_factor"]
    out_shape = tuple(logits.shape[:-1]) + (K,)
    return scores.view(logits.shape), idx.view(out_shape), w.view(out_shape)


def fp8_dequant(t, fn, scale_name, block_r, block_c, dev):
    """x[r, c] = e4m3(q[r, c]) * scale[r // block_r, c // block_c]: one exact product, then FP32."""
    q = t[f"{fn}.q"].to(dev)                                # torch.float8_e4m3fn
    s = t[f"{fn}.{scale_name}"].to(dev, torch.float64)
    R, C = q.shape
    s_full = s.repeat_interleave(block_r, 0)[:R].repeat_interleave(block_c, 1)[:, :C]
    return (q.float().double() * s_full).float()


def kv_row_bytes(x, fmt, dc):
    """rows x [N, d_c + d_R] FP32 as run --kv stores them (mla_kv.h): f32 the floats; bf16 rounded to
    nearest even; fp8 FlashMLA's layout [E4M3 codes of c_kv / scale_g | FP32 scale_g per 128 values
    of c_kv (amax / 448, 1 when that is 0), the last group shorter | BF16 k_pe]. Returns [N, bytes] U8."""
    x = x.float().cpu().contiguous()
    if fmt == "f32":
        return x.view(torch.uint8)
    if fmt == "bf16":
        return x.to(torch.bfloat16).view(torch.uint8)
    c, rope = x[:, :dc], x[:, dc:].contiguous()
    groups = -(-dc // 128)
    amax = torch.stack([c[:, g * 128:(g + 1) * 128].abs().amax(1) for g in range(groups)], 1)
    scale = amax / 448.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    per_value = scale.repeat_interleave(128, 1)[:, :dc]
    codes = (c / per_value).to(torch.float8_e4m3fn).view(torch.uint8)
    return torch.cat([codes, scale.contiguous().view(torch.uint8), rope.to(torch.bfloat16).view(torch.uint8)], 1)


def kv_widen(b, fmt, dc, W):
    """bytes [N, row] U8 back to FP32 [N, W]; an FP8 value is the FP32 product code * scale."""
    b = b.cpu().contiguous()
    if fmt == "f32":
        return b.view(torch.float32)
    if fmt == "bf16":
        return b.view(torch.bfloat16).float()
    groups = -(-dc // 128)
    codes, scale = b[:, :dc], b[:, dc:dc + 4 * groups].contiguous().view(torch.float32)
    rope = b[:, dc + 4 * groups:].contiguous().view(torch.bfloat16).float()
    c = codes.contiguous().view(torch.float8_e4m3fn).float() * scale.repeat_interleave(128, 1)[:, :dc]
    return torch.cat([c, rope], 1)


def kv_formats(t, cfg, r):
    """mla_kv_rows: each format's bytes and the widened rows, exactly."""
    lat = t["mla_kv_rows.latent"]
    B, L, W = lat.shape
    dc = cfg["kv_lora_rank"]
    for fmt in ("f32", "bf16", "fp8"):
        want = t[f"mla_kv_rows.{fmt}"]
        got = kv_row_bytes(lat.reshape(-1, W), fmt, dc)
        r.exact("mla_kv_rows", fmt, got.reshape(want.shape), want)
        r.exact("mla_kv_rows", f"{fmt}_widened", kv_widen(got, fmt, dc, W).reshape(B, L, W),
                t[f"mla_kv_rows.{fmt}_widened"])


def paged_decode(t, cfg, r, dt, dev):
    """mla_paged_decode: token s of sequence b is row s % 64 of page block_tables[b][s // 64]; per head
    score_s = scale * (q_lat . c_s + q_pe . k_pe_s) over the widened rows, o_lat = softmax . c, lse."""
    get = lambda a: t[f"mla_paged_decode.{a}"]
    q, lat, lens, tables = get("q_abs"), get("latent"), get("lens"), get("block_tables")
    scale = get("softmax_scale").item()
    B, H, W = q.shape
    dc = cfg["kv_lora_rank"]
    for fmt in ("f32", "bf16", "fp8"):
        pool, o_lat, lse = get(f"pool_{fmt}"), [], []
        rows_ok = True
        for b in range(B):
            n = int(lens[b])
            s = torch.arange(n)
            stored = pool[tables[b][s // 64].long(), s % 64]                 # [n, row bytes]
            rows_ok &= torch.equal(stored, kv_row_bytes(lat[b, :n], fmt, dc))
            c = kv_widen(stored, fmt, dc, W).to(dev, dt)                    # [n, W]
            scores = scale * (q[b].to(dev, dt) @ c.T)                        # [H, n]
            o_lat.append(torch.softmax(scores, -1) @ c[:, :dc])
            lse.append(torch.logsumexp(scores, -1))
        r.line(rows_ok, f"mla_paged_decode.pool_{fmt}", "rows where the block tables put them" if rows_ok else "rows differ")
        r.close("mla_paged_decode", f"o_lat_{fmt}", torch.stack(o_lat), get(f"o_lat_{fmt}"))
        r.close("mla_paged_decode", f"lse_{fmt}", torch.stack(lse), get(f"lse_{fmt}"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file")
    ap.add_argument("--device", default="cpu", help="cpu (float64, default) or cuda (float32, TF32 off)")
    a = ap.parse_args()
    dev = torch.device(a.device)
    dt = torch.float64 if dev.type == "cpu" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with safe_open(a.file, framework="pt") as f:
        meta = f.metadata() or {}
        t = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != "dsv3.c golden":
        print(f"{a.file}: not a golden file (metadata format is {meta.get('format')!r})")
        return 2
    cfg = json.loads(meta["config"])
    block = int(meta.get("fp8_block", "128"))
    r = Report(meta)
    print(f"{a.file}: golden version {meta['version']}, seed {meta['seed']}, shapes {meta['shapes']}, "
          f"torch {torch.__version__} on {a.device} in {str(dt).replace('torch.', '')}")

    for fn in ("mla_absorbed", "mla_decode", "mla_naive"):
        if f"{fn}.out" in t:
            r.close(fn, "out", mla_attention(t, cfg, fn, dt, dev), t[f"{fn}.out"])
    if "moe_gate.logits" in t:
        scores, idx, w = moe_gate(t, cfg, dt, dev)
        r.close("moe_gate", "scores", scores, t["moe_gate.scores"])
        r.exact("moe_gate", "topk_idx", idx.to(torch.int32), t["moe_gate.topk_idx"])
        r.close("moe_gate", "topk_weight", w, t["moe_gate.topk_weight"])
    if "fp8_dequant_block.q" in t:
        r.exact("fp8_dequant_block", "w", fp8_dequant(t, "fp8_dequant_block", "scale_inv", block, block, dev),
                t["fp8_dequant_block.w"])
    if "fp8_dequant_act.q" in t:
        r.exact("fp8_dequant_act", "x", fp8_dequant(t, "fp8_dequant_act", "scale", 1, block, dev),
                t["fp8_dequant_act.x"])
    if "mla_kv_rows.latent" in t:
        kv_formats(t, cfg, r)
    if "mla_paged_decode.q_abs" in t:
        paged_decode(t, cfg, r, dt, dev)
    if r.lines == 0:
        print("none of mla_absorbed, mla_decode, mla_naive, moe_gate, fp8_dequant_block, fp8_dequant_act, mla_kv_rows, "
              "mla_paged_decode is in the file")
        return 2
    print(f"{r.lines - r.failed} of {r.lines} outputs within tolerance")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
