"""bench_mla_decode.py - mla_decode.cu at FlashMLA's benchmark shapes, against PyTorch, in one run.

    make mla-decode-bench        (python3 tests/bench_mla_decode.py build/mla_decode/libmla_decode.so)

First the two ceilings, measured here: copy bandwidth (a 2 GiB device-to-device copy, bytes read
plus written) and the BF16 tensor-core rate (an 8192^3 torch.matmul on random data). Then for batch
1, 64, 128 x cache length 4096, 16384 x 16, 128 heads x BF16, FP8 caches:
  - the kernel's output checked against a float64 PyTorch reference on the same widened cache
    (o_lat max|err| / max|ref|, lse max|err|);
  - time (median of CUDA-event timings, inputs rotated so repeated launches do not hit in L2),
    GB/s = cache bytes read once / time, TFLOP/s = B h L (2 * 576 + 2 * 512) / time, as fractions of
    the two ceilings;
  - PyTorch on the same problem with a contiguous BF16 cache: matmul-softmax-matmul, and
    scaled_dot_product_attention (its FP8 rows dequantize first; their time counts).
Each kernel variant of mla_decode.h gets its own line (column v; BENCH_VARIANTS=0,1,2,3 by default;
variant 2 only at more than 32 heads and variant 3 only on FP8 caches, where they differ from 1),
PyTorch is timed once per shape. BENCH_B (default 1,64,128), BENCH_L (4096,16384), BENCH_H (16,128)
and BENCH_FMT (bf16,fp8) narrow the shapes; BENCH_SDPA=0 skips SDPA (20-100 ms a call here).
The table goes to stdout and $OUT/mla_decode_bench.txt when OUT is set.
"""
import ctypes
import math
import os
import sys

import torch
import torch.nn.functional as F

DC, DR, W, PAGE = 512, 64, 576, 64
lib = ctypes.CDLL(sys.argv[1] if len(sys.argv) > 1 else "build/mla_decode/libmla_decode.so")


class Plan(ctypes.Structure):
    _fields_ = [("heads_per_cta", ctypes.c_int), ("head_blocks", ctypes.c_int), ("n_split", ctypes.c_int),
                ("chunk_tiles", ctypes.c_int), ("work_floats", ctypes.c_size_t), ("variant", ctypes.c_int),
                ("n_cta", ctypes.c_int)]


lib.mla_decode_cuda.restype = ctypes.c_int
dev = torch.device("cuda")
FMT = {"bf16": 1, "fp8": 2}
ROW = {"bf16": 1152, "fp8": 656}
VARIANTS = [int(x) for x in os.environ.get("BENCH_VARIANTS", "0,1,2,3").split(",")]


def timeit(fn, reps=20, warm=3):
    for _ in range(warm):
        fn()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for a, b in ev:
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    t = sorted(a.elapsed_time(b) for a, b in ev)
    return t[len(t) // 2] * 1e-3


def ceilings():
    x = torch.empty(2 << 30, dtype=torch.uint8, device=dev).random_()
    y = torch.empty_like(x)
    t = timeit(lambda: y.copy_(x))
    bw = 2 * x.numel() / t
    del x, y
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    t = timeit(lambda: a @ b, reps=10)
    return bw, 2 * 8192 ** 3 / t


def encode(lat, fmt):
    """lat [n, 576] float32 -> rows [n, row bytes] uint8 in the format, and the widened float32 rows."""
    if fmt == "bf16":
        v = lat.to(torch.bfloat16)
        return v.view(torch.uint8).reshape(lat.shape[0], -1), v.float()
    c = lat[:, :DC].reshape(-1, 4, 128)
    scale = c.abs().amax(-1) / 448.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = (c / scale[..., None]).to(torch.float8_e4m3fn)
    rope = lat[:, DC:].to(torch.bfloat16)
    rows = torch.cat([codes.view(torch.uint8).reshape(-1, DC), scale.contiguous().view(torch.uint8).reshape(-1, 16),
                      rope.view(torch.uint8).reshape(-1, 128)], 1)
    widened = torch.cat([(codes.float() * scale[..., None]).reshape(-1, DC), rope.float()], 1)
    return rows.contiguous(), widened


def run_shape(B, L, h, fmt, bw, peak, out):
    scale = 192 ** -0.5
    pages_per_seq = L // PAGE
    n_pages = B * pages_per_seq
    cache_bytes = B * L * ROW[fmt]
    copies = max(1, min(8, math.ceil(256e6 / cache_bytes)))  # rotated pools: > L2 between reuses
    pools, wides = [], []
    for _ in range(copies):
        lat = torch.randn(n_pages * PAGE, W, device=dev)
        rows, wide = encode(lat, fmt)
        pools.append(rows.reshape(n_pages, PAGE, -1))
        wides.append(wide)
        del lat
    perm = torch.randperm(n_pages, device=dev, dtype=torch.int32)
    table = perm.reshape(B, pages_per_seq).contiguous()
    lens = torch.full((B,), L, dtype=torch.int32, device=dev)
    q = torch.randn(B, h, W, device=dev).to(torch.bfloat16).float()
    o = torch.empty(B, h, DC, device=dev)
    lse = torch.empty(B, h, device=dev)
    P = ctypes.c_void_p
    results = []  # (variant, plan, time, err_o, err_l)
    o_first = None
    for variant in VARIANTS:
        if variant == 2 and h <= 32:  # variant 2 differs from 1 only above 32 heads
            continue
        if variant == 3 and fmt == "bf16":  # variant 3 differs from 1 only on FP8 caches
            continue
        plan = Plan()
        lib.mla_decode_plan_variant(ctypes.byref(plan), B, h, L, variant)
        work = torch.empty(max(1, plan.work_floats), device=dev)

        def launch(pool):
            r = lib.mla_decode_cuda(P(o.data_ptr()), P(lse.data_ptr()), P(q.data_ptr()), P(pool.data_ptr()),
                                    FMT[fmt], P(table.data_ptr()), pages_per_seq, P(lens.data_ptr()), B, h,
                                    ctypes.c_float(scale), ctypes.byref(plan), P(work.data_ptr()), None)
            assert r == 0

        def kernel(i=[0]):
            launch(pools[i[0] % copies])
            i[0] += 1

        # correctness on copy 0 against float64
        o.fill_(float("nan"))
        lse.fill_(float("nan"))
        launch(pools[0])
        torch.cuda.synchronize()
        err_o = err_l = 0.0
        for b0 in range(0, min(B, 8), 8):  # the first 8 sequences: float64 is slow
            kv = wides[0].reshape(n_pages, PAGE, W)[table[b0:b0 + 8].long()].reshape(-1, L, W).double()
            s = torch.einsum("bhw,blw->bhl", q[b0:b0 + 8].double(), kv) * scale
            l_ref = torch.logsumexp(s, -1)
            o_ref = torch.einsum("bhl,blc->bhc", torch.softmax(s, -1), kv[..., :DC])
            err_o = max(err_o, ((o[b0:b0 + 8].double() - o_ref).abs().max() / o_ref.abs().max()).item())
            err_l = max(err_l, (lse[b0:b0 + 8].double() - l_ref).abs().max().item())
            del kv, s
        # the whole batch against the first variant's output (NaN or a wrong sequence past the first 8 shows)
        if o_first is not None:
            diff = ((o - o_first).abs().max() / o_first.abs().max()).item()
            err_o = max(err_o, diff) if diff == diff else float("nan")
        else:
            o_first = o.clone()
        results.append((variant, plan, timeit(kernel), err_o, err_l))
        del work

    # PyTorch on a contiguous cache (no paging: in its favour)
    kvs = [wd.reshape(n_pages, PAGE, W)[table.long()].reshape(B, L, W).to(torch.bfloat16) for wd in wides[:2]]
    raws = [p[table.long()].reshape(B, L, -1) for p in pools[:2]] if fmt == "fp8" else None
    qb = q.to(torch.bfloat16)

    def widen(i):
        if fmt == "bf16":
            return kvs[i % len(kvs)]
        r = raws[i % len(raws)]
        codes = r[..., :DC].contiguous().view(torch.float8_e4m3fn).float().reshape(B, L, 4, 128)
        sc = r[..., DC:DC + 16].contiguous().view(torch.float32).reshape(B, L, 4, 1)
        rope = r[..., DC + 16:].contiguous().view(torch.bfloat16)
        return torch.cat([(codes * sc).reshape(B, L, DC).to(torch.bfloat16), rope], -1)

    def torch_mm(i=[0]):
        kv = widen(i[0] % 2)
        i[0] += 1
        s = torch.matmul(qb, kv.transpose(1, 2)).float() * scale
        p = torch.softmax(s, -1).to(torch.bfloat16)
        return torch.matmul(p, kv[..., :DC])

    def torch_sdpa(i=[0]):
        kv = widen(i[0] % 2)
        i[0] += 1
        k = kv[:, None]                       # [B, 1, L, 576]
        v = kv[:, None, :, :DC]               # [B, 1, L, 512]
        return F.scaled_dot_product_attention(qb[:, :, None], k, v, scale=scale, enable_gqa=True)

    try:
        t_mm = timeit(torch_mm, reps=10)
    except torch.OutOfMemoryError:
        t_mm = float("nan")
    try:
        t_sd = timeit(torch_sdpa, reps=10) if os.environ.get("BENCH_SDPA", "1") != "0" else float("nan")
    except Exception as e:  # a backend that refuses 576 / 512 head sizes
        print("sdpa failed:", type(e).__name__, str(e)[:80])
        t_sd = float("nan")
    flops = B * h * L * (2 * W + 2 * DC)
    for variant, plan, t_k, err_o, err_l in results:
        gbs = cache_bytes / t_k
        cut = plan.n_split if variant == 0 else plan.n_cta
        line = (f"{B:5d} {L:6d} {h:4d} {fmt:>5} {variant:2d} {cut:3d} | {t_k * 1e6:8.1f} us {gbs / 1e9:7.0f} GB/s "
                f"{gbs / bw:5.1%} {flops / t_k / 1e12:6.1f} TF {flops / t_k / peak:5.1%} | torch mm {t_mm * 1e6:8.1f} us "
                f"sdpa {t_sd * 1e6:8.1f} us  x{min(t_mm, t_sd) / t_k:5.1f} | err o {err_o:.1e} lse {err_l:.1e}")
        if variant != results[0][0]:
            line += f" | x{results[0][2] / t_k:4.2f} vs v{results[0][0]}"
        print(line, flush=True)
        out.append(line)
    del pools, wides, kvs, raws, o_first
    torch.cuda.empty_cache()


def main():
    torch.manual_seed(0)
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    bw, peak = ceilings()
    out = [f"copy bandwidth {bw / 1e12:.2f} TB/s, bf16 matmul {peak / 1e12:.0f} TFLOP/s (measured in this run)",
           "    B      L    h   fmt  v cut |  kernel      GB/s  %copy  TFLOP/s %peak | PyTorch (contiguous bf16)"
           "                  speedup | vs float64"]
    print("\n".join(out), flush=True)
    env = lambda k, d: os.environ.get(k, d).split(",")
    for B in [int(x) for x in env("BENCH_B", "1,64,128")]:
        for L in [int(x) for x in env("BENCH_L", "4096,16384")]:
            for h in [int(x) for x in env("BENCH_H", "16,128")]:
                for fmt in env("BENCH_FMT", "bf16,fp8"):
                    run_shape(B, L, h, fmt, bw, peak, out)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "mla_decode_bench.txt"), "w") as f:
            f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
