/* mla_decode_pair.cuh - the pieces of the warp-pair decode that variant 1 (mla_decode_pair.cu) and
 * variant 3 (mla_decode_fp8.cu) share: the balanced schedule (G), the ring loads, the per-warp
 * running state, the pair's exchange and the softmax in registers (E), the streams' merge and the
 * write of a segment's record (F), and the combine. mla_decode_pair.cu's header comment derives them.
 * Each .cu that includes this file gets its own copy (static functions, static kernels).
 *
 * A warp's roles, as the callers pass them: warp = threadIdx.x / 32; pair (0..3), half (0, 1) and
 * partner (the other warp of the pair); grp = pair % NG (its head group), stream = pair / NG.
 * Shared memory regions the callers lay out: the rings (the streams' merge reuses them for O), the
 * exchange buffers xb [parity 2][warp 8][NT * 4][lane] (the merge reuses them for m, l), 11 ints. */
#ifndef MLA_DECODE_PAIR_CUH
#define MLA_DECODE_PAIR_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "mla_decode.h"
#include "mla_decode_ptx.cuh"

#define DC MLA_DEC_DC
#define DR MLA_DEC_DR
#define WIDTH (DC + DR)           /* 576 */
#define PAGE MLA_PAGE             /* 64 rows */
#define THREADS 256
#define ROW_PAD (WIDTH + 8)       /* BF16 per shared row: 1168 bytes = 73 x 16, ldmatrix conflict-free */
#define FP8_ROW 656               /* 512 codes, 4 FP32 scales, 64 BF16 */
#define HALF_F (WIDTH / 2)        /* 288 features per S-step warp */
#define HALF_C (DC / 2)           /* 256 columns per O-step warp */
#define MIN_PAGES 2               /* the fewest pages a CTA is given */
#define SMEM_MAX 232448           /* 227 KB: sm_90's opt-in shared memory per block */
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

/* ---- (G) the schedule -------------------------------------------------------------------------- */

typedef struct { int per, s0, s1, b, pre, fp; } PairWork;

/* Every thread of the CTA: its pages [s0, s1) of the batch's list, the sequence b holding page s0,
 * pre = pages before b, fp = b's first segment number. s0 >= s1: nothing to do. sh: 11 ints. */
static __device__ PairWork pair_schedule(const int *lens, int B, int cta, int n_cta, int *sh) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int per_thread = (B + THREADS - 1) / THREADS, lo = threadIdx.x * per_thread;
    const int hi = min(B, lo + per_thread);
    int mine = 0;
    for (int b = lo; b < hi; b++) mine += (lens[b] + PAGE - 1) / PAGE;
    int incl = mine; /* inclusive scan over the warp, then over the 8 warp totals */
    for (int o = 1; o < 32; o *= 2) {
        int v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
    }
    if (lane == 31) sh[warp] = incl;
    if (threadIdx.x == 0) sh[10] = 0;
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < THREADS / 32; w++) {
        before += w < warp ? sh[w] : 0;
        total += sh[w];
    }
    PairWork wk;
    wk.per = max(MIN_PAGES, (total + n_cta - 1) / n_cta);
    wk.s0 = cta * wk.per;
    wk.s1 = min(total, wk.s0 + wk.per);
    int pre = before + incl - mine, z = 0;
    for (int b = lo; b < hi; b++) {
        int np = (lens[b] + PAGE - 1) / PAGE;
        if (pre <= wk.s0 && wk.s0 < pre + np) { sh[8] = b; sh[9] = pre; }
        z += b >= 1 && pre <= wk.s0 && pre % wk.per == 0;
        pre += np;
    }
    if (z) atomicAdd(&sh[10], z);
    __syncthreads();
    wk.b = sh[8];
    wk.pre = sh[9];
    wk.fp = wk.pre / wk.per + wk.b - sh[10];
    return wk;
}


/* ---- tiles ---------------------------------------------------------------------------------------- */

/* Rows tok .. tok + RS - 1 of one sequence (inside one page) into a ring slot of rows slot_row bytes
 * apart, by the stream's ST threads (st_tid: this thread's index among them), 16 bytes a cp.async;
 * rows >= len are zeros. */
template <int RS, int ST, int ROW_BYTES, int SLOT_ROW>
static __device__ __forceinline__ void pair_load_rows(uint8_t *dst, const uint8_t *pool, const int32_t *table, int tok,
                                                      int len, int st_tid) {
    constexpr int chunks = ROW_BYTES / 16;
    const uint8_t *src = pool + ((size_t)table[tok / PAGE] * PAGE + tok % PAGE) * ROW_BYTES;
    for (int i = st_tid; i < RS * chunks; i += ST) {
        int r = i / chunks, ch = i % chunks;
        bool ok = tok + r < len;
        cp_async16(dst + r * SLOT_ROW + ch * 16, ok ? src + (size_t)r * ROW_BYTES + ch * 16 : pool, ok ? 16 : 0);
    }
}

/* ---- (E) the running state, the exchange and the softmax ------------------------------------------ */

/* The running state of a warp: O [16 heads, its 256 columns], m and l of heads g and g + 8. */
struct PairAcc {
    float o[HALF_C / 8][4];
    float m0, m1, l0, l1;
};

static __device__ __forceinline__ void pair_acc_init(PairAcc &acc) {
    #pragma unroll
    for (int nt = 0; nt < HALF_C / 8; nt++) acc.o[nt][0] = acc.o[nt][1] = acc.o[nt][2] = acc.o[nt][3] = 0.0f;
    acc.m0 = acc.m1 = -INFINITY;
    acc.l0 = acc.l1 = 0.0f;
}

/* s [NT n-tiles of 8 tokens][4]: this warp's partial S of tile rows tok .. (mma D layout: s[nt][0..1]
 * head g, tokens tok + 8 nt + 2c + {0, 1}; s[nt][2..3] head g + 8). On return s = the pair's whole
 * S, masked past len, turned into p = exp2(S scale_log2 - m) with m the heads' new maxima; acc's m, l
 * updated and its O rescaled by alpha = exp2(m_old - m_new). xb: this parity's exchange buffer. */
template <int NT>
static __device__ __forceinline__ void pair_softmax(PairAcc &acc, float (&s)[NT][4], float *xb, int warp, int partner,
                                                    int pair, int tok, int len, float scale_log2) {
    const int lane = threadIdx.x % 32, c = lane % 4;
    /* exchange: S = S_half0 + S_half1 in both warps */
    float *mine = xb + (size_t)warp * NT * 4 * 32, *other = xb + (size_t)partner * NT * 4 * 32;
    #pragma unroll
    for (int nt = 0; nt < NT; nt++)
        #pragma unroll
        for (int i = 0; i < 4; i++) mine[(nt * 4 + i) * 32 + lane] = s[nt][i];
    named_barrier(8 + pair, 64);
    #pragma unroll
    for (int nt = 0; nt < NT; nt++)
        #pragma unroll
        for (int i = 0; i < 4; i++) s[nt][i] += other[(nt * 4 + i) * 32 + lane];

    /* softmax: s[nt][0..1] are head g, tokens tok + 8 nt + 2c + {0, 1}; s[nt][2..3] head g + 8 */
    float mx0 = -INFINITY, mx1 = -INFINITY;
    #pragma unroll
    for (int nt = 0; nt < NT; nt++)
        #pragma unroll
        for (int e = 0; e < 2; e++) {
            bool ok = tok + nt * 8 + 2 * c + e < len;
            s[nt][e] = ok ? s[nt][e] * scale_log2 : -INFINITY;
            s[nt][2 + e] = ok ? s[nt][2 + e] * scale_log2 : -INFINITY;
            mx0 = fmaxf(mx0, s[nt][e]);
            mx1 = fmaxf(mx1, s[nt][2 + e]);
        }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float mn0 = fmaxf(acc.m0, mx0), mn1 = fmaxf(acc.m1, mx1); /* finite: row tok is < len */
    const float al0 = exp2f(acc.m0 - mn0), al1 = exp2f(acc.m1 - mn1);
    acc.m0 = mn0;
    acc.m1 = mn1;
    float sum0 = 0.0f, sum1 = 0.0f;
    #pragma unroll
    for (int nt = 0; nt < NT; nt++)
        #pragma unroll
        for (int e = 0; e < 2; e++) {
            s[nt][e] = exp2f(s[nt][e] - mn0);
            s[nt][2 + e] = exp2f(s[nt][2 + e] - mn1);
            sum0 += s[nt][e];
            sum1 += s[nt][2 + e];
        }
    acc.l0 = acc.l0 * al0 + sum0;
    acc.l1 = acc.l1 * al1 + sum1;
    if (__any_sync(0xffffffffu, al0 != 1.0f || al1 != 1.0f)) /* once the maxima settle, skip (x 1 is exact) */
        #pragma unroll
        for (int nt = 0; nt < HALF_C / 8; nt++) {
            acc.o[nt][0] *= al0; acc.o[nt][1] *= al0;
            acc.o[nt][2] *= al1; acc.o[nt][3] *= al1;
        }
}

/* ---- a segment: a CTA's run of pages inside one sequence ---------------------------------------- */

/* Segment of CTA `cta` starting at page pg of sequence b (pre: pages before b, fp: b's first segment
 * number): its tokens [tok0, tok1), its record number part and the sequence's count of segments;
 * a stream's first row first = tok0 + stream RS and its n_k tiles (RS rows, NS RS apart). The CTA
 * that starts b (pg == pre) writes meta [b] = (fp, count) for the combine. */
struct PairSeg {
    int len, pre_next, pg1, count, part, tok0, tok1, first, n_k;
    const int32_t *table;
};
template <int RS, int NS>
static __device__ __forceinline__ PairSeg pair_segment(const PairWork &wk, int b, int pre, int fp, int pg, int cta, int stream,
                                                       const int *lens, const int32_t *block_tables, int max_pages, int *meta) {
    PairSeg sg;
    sg.len = lens[b];
    sg.pre_next = pre + (sg.len + PAGE - 1) / PAGE;
    sg.pg1 = min(wk.s1, sg.pre_next);
    const int f_b = pre / wk.per;
    sg.count = (sg.pre_next - 1) / wk.per - f_b + 1;
    sg.part = fp + cta - f_b;
    if (pg == pre && blockIdx.x == 0 && threadIdx.x == 0) { meta[2 * b] = fp; meta[2 * b + 1] = sg.count; }
    sg.tok0 = (pg - pre) * PAGE;
    sg.tok1 = min(sg.len, (sg.pg1 - pre) * PAGE);
    sg.table = block_tables + (size_t)b * max_pages;
    sg.first = sg.tok0 + stream * RS;
    sg.n_k = sg.first < sg.tok1 ? (sg.tok1 - sg.first + NS * RS - 1) / (NS * RS) : 0;
    return sg;
}

/* ---- (F) the end of a segment ---------------------------------------------------------------------- */

/* After the last tile of a segment: l summed over the quad, the NS streams' (O, m, l) merged into
 * stream 0 through shared memory (mo: the rings' space, mml: the exchange buffers'; every thread of
 * the CTA calls this), then stream 0 writes o = O / l and lse = (m + log2 l) ln 2 for heads
 * h0 + 16 grp + {g, g + 8}: to o_lat / lse when the segment is the whole sequence (count 1), else
 * to record `part` of o_part / lse_part. PERM: the O accumulator's columns in variant 3's order
 * (mla_decode_fp8.cu: n-tile 4 q + i, element e holds column 32 q + 8 c + 4 e + i), else the mma
 * D order (n-tile nt, element e holds column 8 nt + 2 c + e). */
template <int NG, int NS, bool PERM>
static __device__ __forceinline__ void pair_finish(PairAcc &acc, float *mo, float *mml, int warp, int stream, int grp,
                                                   int half, int h0, int n_h, int b, int part, int count, float *o_lat,
                                                   float *lse, float *o_part, float *lse_part) {
    const int lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    /* l over the quad; then o = O / l, lse = (m + log2 l) ln 2 (l > 0: stream 0 has rows) */
    acc.l0 += __shfl_xor_sync(0xffffffffu, acc.l0, 1);
    acc.l0 += __shfl_xor_sync(0xffffffffu, acc.l0, 2);
    acc.l1 += __shfl_xor_sync(0xffffffffu, acc.l1, 1);
    acc.l1 += __shfl_xor_sync(0xffffffffu, acc.l1, 2);
    if constexpr (NS > 1) { /* (F) the streams' (O, m, l) merged in the CTA: one record a segment */
        constexpr int W = 2 * NG, F = HALF_C / 8 * 4; /* warps a stream, O floats a lane */
        const int wi = warp % W;
        __syncthreads(); /* every stream is done with its ring and the exchange buffers */
        if (stream > 0) { /* [stream - 1][warp of the stream][F or 4][lane]: conflict-free */
            float *d = mo + (size_t)((stream - 1) * W + wi) * F * 32 + lane;
            #pragma unroll
            for (int nt = 0; nt < HALF_C / 8; nt++)
                #pragma unroll
                for (int i = 0; i < 4; i++) d[(nt * 4 + i) * 32] = acc.o[nt][i];
            float *d2 = mml + (size_t)((stream - 1) * W + wi) * 4 * 32 + lane;
            d2[0] = acc.m0; d2[32] = acc.m1; d2[64] = acc.l0; d2[96] = acc.l1;
        }
        __syncthreads();
        if (stream == 0) { /* stream 0 has the segment's first tile: its m is finite */
            float M0 = acc.m0, M1 = acc.m1;
            for (int j = 1; j < NS; j++) {
                M0 = fmaxf(M0, mml[(size_t)((j - 1) * W + wi) * 128 + lane]);
                M1 = fmaxf(M1, mml[(size_t)((j - 1) * W + wi) * 128 + 32 + lane]);
            }
            const float w0 = exp2f(acc.m0 - M0), w1 = exp2f(acc.m1 - M1);
            acc.l0 *= w0;
            acc.l1 *= w1;
            #pragma unroll
            for (int nt = 0; nt < HALF_C / 8; nt++) {
                acc.o[nt][0] *= w0; acc.o[nt][1] *= w0;
                acc.o[nt][2] *= w1; acc.o[nt][3] *= w1;
            }
            for (int j = 1; j < NS; j++) { /* in stream order: deterministic */
                const float *ml = mml + (size_t)((j - 1) * W + wi) * 128 + lane;
                const float v0 = exp2f(ml[0] - M0), v1 = exp2f(ml[32] - M1); /* 0 for a stream without rows */
                acc.l0 += v0 * ml[64];
                acc.l1 += v1 * ml[96];
                const float *src = mo + (size_t)((j - 1) * W + wi) * F * 32 + lane;
                #pragma unroll
                for (int nt = 0; nt < HALF_C / 8; nt++) {
                    acc.o[nt][0] += v0 * src[(nt * 4 + 0) * 32];
                    acc.o[nt][1] += v0 * src[(nt * 4 + 1) * 32];
                    acc.o[nt][2] += v1 * src[(nt * 4 + 2) * 32];
                    acc.o[nt][3] += v1 * src[(nt * 4 + 3) * 32];
                }
            }
            acc.m0 = M0;
            acc.m1 = M1;
        }
    }
    const bool direct = count == 1; /* the whole sequence in this segment: no combine */
    #pragma unroll
    for (int r = 0; r < 2; r++) {
        const int h = h0 + grp * 16 + g + 8 * r;
        if (stream != 0 || h >= n_h) continue;
        const float l = r ? acc.l1 : acc.l0, m = r ? acc.m1 : acc.m0, inv = 1.0f / l;
        float *dst = (direct ? o_lat + ((size_t)b * n_h + h) * DC : o_part + ((size_t)part * n_h + h) * DC) + half * HALF_C + (PERM ? 0 : 2 * c);
        if constexpr (PERM) {
            #pragma unroll
            for (int q = 0; q < HALF_C / 32; q++) {
                const float(*o4)[4] = acc.o + 4 * q;
                *(float4 *)(dst + 32 * q + 8 * c) = make_float4(o4[0][2 * r] * inv, o4[1][2 * r] * inv, o4[2][2 * r] * inv, o4[3][2 * r] * inv);
                *(float4 *)(dst + 32 * q + 8 * c + 4) = make_float4(o4[0][2 * r + 1] * inv, o4[1][2 * r + 1] * inv,
                                                                    o4[2][2 * r + 1] * inv, o4[3][2 * r + 1] * inv);
            }
        } else {
            #pragma unroll
            for (int nt = 0; nt < HALF_C / 8; nt++)
                *(float2 *)(dst + nt * 8) = make_float2(acc.o[nt][2 * r] * inv, acc.o[nt][2 * r + 1] * inv);
        }
        if (half == 0 && c == 0) {
            const float v = (m + log2f(l)) * LN2;
            if (!direct) lse_part[(size_t)part * n_h + h] = v;
            else if (lse) lse[(size_t)b * n_h + h] = v;
        }
    }
}

/* ---- (C) the combine --------------------------------------------------------------------------- */

/* grid (n_h, B), 128 threads of 4 columns: merge sequence b's count_b records (C). The loops are
 * unrolled so that several records' loads are in flight (a record is an L2 round trip). */
static __global__ void mla_decode_pair_combine(float *o_lat, float *lse, const float *o_part, const float *lse_part,
                                        const int *meta, int n_h) {
    const int h = blockIdx.x, b = blockIdx.y, p0 = meta[2 * b], n = meta[2 * b + 1];
    if (n == 1) return; /* written by the kernel */
    float M = -INFINITY;
    #pragma unroll 8
    for (int j = 0; j < n; j++) M = fmaxf(M, lse_part[(size_t)(p0 + j) * n_h + h]);
    float sum = 0.0f;
    float4 acc = make_float4(0, 0, 0, 0);
    #pragma unroll 8
    for (int j = 0; j < n; j++) {
        const float w = expf(lse_part[(size_t)(p0 + j) * n_h + h] - M);
        const float4 v = *(const float4 *)(o_part + ((size_t)(p0 + j) * n_h + h) * DC + 4 * threadIdx.x);
        sum += w;
        acc.x += w * v.x; acc.y += w * v.y; acc.z += w * v.z; acc.w += w * v.w;
    }
    float inv = 1.0f / sum;
    *(float4 *)(o_lat + ((size_t)b * n_h + h) * DC + 4 * threadIdx.x) =
        make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv);
    if (lse && threadIdx.x == 0) lse[(size_t)b * n_h + h] = M + logf(sum);
}

#endif
