/* mla_decode_fp8.cu - variant 3 of the batched paged MLA decode (mla_decode.h), FP8 caches: the
 * codes go into the tensor cores as their exact values, the scales are applied outside the products.
 *
 * The C twin (mla_paged.c, mla_kv.c) reads a token t's c_kv value c as code[t][c] * s[t][b(c)], the
 * FP32 product, with s[t][b] the scale of the 128-feature block b = c / 128 (4 blocks). Variant 1
 * (mla_decode_pair.cu, H) widens every raw tile into BF16 rows bf16(code * s) in shared memory first:
 * ~3 instructions a code (half of them conversions), a second shared tile, one more barrier, and at
 * 16 and 32 heads the widening is not overlapped. Here the scale leaves the code:
 *   (1) S[h][t] = sum_b s[t][b] (Q_b[h] . code_b[t]) + q_pe[h] . k_pe[t]
 *       Each warp of a pair takes two whole blocks (half 0: blocks 0, 1 and rope features 0-31;
 *       half 1: blocks 2, 3 and rope 32-63: 288 features each, as variant 1): a block's 8 k-steps
 *       accumulate into their own fragment S_b, then S += s[t][b] S_b, one FMA an element (an
 *       accumulator element is one (head, token)); the rope k-steps accumulate into S unscaled.
 *   (2) O[h][c] = sum_t (p[h][t] s[t][b(c)]) code[t][c]
 *       The O step's A operand for the columns of block b is bf16(p s[t][b]): two versions a
 *       k-step for a warp (its two blocks). Variant 1 rounds p to BF16; this is one rounding of
 *       the same kind, and bf16 has FP32's range, so p s neither underflows nor overflows.
 *   The B operands of both products are the codes' exact values, converted in registers from the
 *   raw cp.async tile (no widened tile, no barrier for it; the rings can be deeper instead).
 *
 * I. e4m3 -> bf16, exact, without the conversion pipe. A code s eeee mmm (bias 7) placed as the bf16
 *    bits s 0000eeee mmm0000 (sign to bit 15, the 7 magnitude bits to bits 10..4) is the code's value
 *    times 2^-120: for eeee > 0 both are 2^(e - 7) 1.mmm and 2^(e - 127) 1.mmm; for eeee = 0 (E4M3
 *    subnormals, m 2^-9) the bf16 is a subnormal m 2^-129. One bf16x2 multiply by 2^120 (bits 0x7b80)
 *    is exact (the product has at most 4 significant bits and is in bf16's normal range; the PTX
 *    ISA's mul.bf16x2 has no .ftz: subnormal inputs are kept). Two codes at once: prmt picks the
 *    two bytes into the two halves and replicates each one's sign bit into the byte above it
 *    ([S1 b1 S0 b0], S = 0xff or 0), then (v << 4) & 0x87f087f0 keeps the sign (a bit of S, now
 *    bit 15) and the magnitude (bits 10..4). 4 instructions (prmt, shift, and, mul) for 2 codes.
 *    NaN codes (0x7f, 0xff): the C twin (fp8_e4m3_decode) reads NaN; this route reads +-480 (the
 *    bits of 2^8 1.875). mla_kv.c's encoder saturates at 448 (0x7e) and never writes them; a NaN
 *    latent is encoded as a NaN code with a finite scale, and only there do the two differ.
 * J. Fragments from the raw rows (656 bytes: codes [0, 512), scales [512, 528), rope [528, 656);
 *    row stride 656 = 164 words = 4 mod 32 banks), g = lane / 4, c = lane % 4:
 *    S step, B = codes [k = feature, n = token]: lane (g, c) loads the 32-bit word of token g,
 *      bytes 16 j + 4c .. +3 of a 16-feature chunk j: bank 4g + c + const, conflict-free. Its bytes
 *      0, 1 are b0 (k = 2c, 2c + 1) and bytes 2, 3 are b1 (k = 2c + 8, 2c + 9): the k order inside
 *      the chunk is permuted, and Q is stored in shared memory permuted alike (fp8_load_q:
 *      feature 16 j + 4c + e at position 16 j + 2c + (e % 2) + 8 (e / 2)), so the sum is the same.
 *      Rope (BF16) through ldmatrix on the raw rows as variant 1 (16-byte rows 656 apart: distinct
 *      bank groups).
 *    O step, B = codes [k = token, n = column]: lane (g, c) loads the words of tokens 2c, 2c + 1,
 *      2c + 8, 2c + 9 at columns 32 q + 4g .. +3 (bank 8c + 4r + g + const: conflict-free); byte i of
 *      those words feeds n-tile 4q + i, whose n-lane g is column 32 q + 4 g + i. The accumulator
 *      o[4q + i][e] (e = 0, 1: D columns 2c + e) is then column 32 q + 8 c + 4 e + i: a lane holds 8
 *      consecutive columns of each head, written as two float4 (pair_finish's PERM order).
 *    Scales: s[t][2 half], s[t][2 half + 1] as one 8-byte load for the lane's 2 NT tokens
 *      (8 nt + 2c + {0, 1}, the same tokens in the S accumulator and in the O step's A operand).
 * Per 32-row tile a warp: 64 + 64 32-bit code loads (S, O), 18 ldmatrix of Q and 4 of rope, 256 + 256
 * codes converted a lane (1024 instructions), 136 mma (S 64 + 8, O 64).
 * The rest (E, F, G: pairs, streams, the schedule, the merge, the combine) is variant 1's, shared
 * through mla_decode_pair.cuh, except that tiles are 32 rows at 16 heads too (4 streams x 2 slots;
 * 2 x 3 at 32 heads). 64-head CTAs (more than 32 heads) run variant 1's FP8 path: there every head
 * group converts the codes again, and variant 3 measured 0.90x of variant 1 at 128 heads (section 7).
 * Differences from the C twin: q and p s rounded to BF16; the codes and scales are exact (variant 1
 * also rounds code * s to BF16); the NaN codes above; the orders of the sums (tensor-core trees,
 * per-block partial scores, feature halves, streams, segments); exp2f.
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "mla_decode_pair.cuh"

/* The shape of a CTA of NG head groups: shared memory [Q | rings | exchange | ints]. */
template <int NG> struct F8 {
    /* 32-row tiles at every head count (variant 1 has 16 at 16 heads): half the per-tile work a row
     * (Q's ldmatrix, exchange, barriers) and 4 independent S accumulator chains (section 7) */
    static constexpr int H = 16 * NG, NS = 4 / NG, RS = 32, NT = RS / 8, ST = 64 * NG;
    static constexpr int RING = NG == 1 ? 2 : 3; /* cp.async slots a stream (what shared memory holds) */
    static constexpr size_t slot = (size_t)RS * FP8_ROW;
    static constexpr size_t off_ring = (size_t)H * ROW_PAD * 2;
    static constexpr size_t off_x = off_ring + NS * RING * slot; /* [parity 2][warp 8][NT 4][lane] */
    static constexpr size_t off_sched = off_x + (size_t)2 * 8 * NT * 4 * 32 * 4;
    static constexpr size_t total = off_sched + 16 * 4;
    static_assert(total <= SMEM_MAX, "shared memory");
    static_assert((size_t)(NS - 1) * 2 * NG * (HALF_C / 8 * 4) * 32 * 4 <= off_x - off_ring, "merge space");
    static_assert((size_t)(NS - 1) * 2 * NG * 4 * 32 * 4 <= off_sched - off_x, "merge space");
};

/* (I) two E4M3 codes -> their exact values as a bf16x2: the bytes that `sel` picks from a, b (prmt's
 * byte numbers: 0-3 of a, 4-7 of b) go to the low and high halves; sel = lo | (8 | lo) << 4 |
 * hi << 8 | (8 | hi) << 12, the 8 asking for the byte's sign replicated. */
template <uint32_t SEL> static __device__ __forceinline__ uint32_t e4m3x2_bf16x2(uint32_t a, uint32_t b) {
    uint32_t v, r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(v) : "r"(a), "r"(b), "n"(SEL));
    v = (v << 4) & 0x87f087f0u;
    asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(v), "r"(0x7b807b80u)); /* x 2^120 */
    return r;
}

/* Q rows [H, 576] of sequence b into shared memory as BF16, rows ROW_PAD apart, the code features'
 * k order permuted inside each 16 (J), zeros past n_h. */
template <int H>
static __device__ __forceinline__ void fp8_load_q(__nv_bfloat16 *q_s, const float *q_abs, int b, int h0, int n_h) {
    for (int i = threadIdx.x; i < H * (WIDTH / 4); i += THREADS) {
        int r = i / (WIDTH / 4), col = (i % (WIDTH / 4)) * 4, h = h0 + r;
        float4 v = h < n_h ? *(const float4 *)(q_abs + ((size_t)b * n_h + h) * WIDTH + col) : make_float4(0, 0, 0, 0);
        /* features col .. col + 3 = 16 j + 4c .. + 3 go to 16 j + 2c + {0, 1} and 16 j + 2c + {8, 9} */
        int lo = col < DC ? (col & ~15) + (col & 15) / 2 : col, hi = col < DC ? lo + 8 : col + 2;
        *(uint32_t *)(q_s + (size_t)r * ROW_PAD + lo) = pack_bf16(v.x, v.y);
        *(uint32_t *)(q_s + (size_t)r * ROW_PAD + hi) = pack_bf16(v.z, v.w);
    }
}

/* One tile of one pair: raw FP8 rows tok .. tok + RS - 1 (a ring slot) into acc; q: the CTA's Q rows
 * (permuted, fp8_load_q); xb: this parity's exchange buffer. */
template <int NG>
static __device__ __forceinline__ void fp8_tile(PairAcc &acc, const uint8_t *raw, const __nv_bfloat16 *q, float *xb,
                                                int tok, int len, float scale_log2) {
    constexpr int RS = F8<NG>::RS, NT = F8<NG>::NT;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const int pair = warp / 2, half = warp % 2, grp = pair % NG;

    /* scales of blocks 2 half, 2 half + 1 for tokens 8 nt + 2c + e */
    float2 sc[NT][2];
    #pragma unroll
    for (int nt = 0; nt < NT; nt++)
        #pragma unroll
        for (int e = 0; e < 2; e++) sc[nt][e] = *(const float2 *)(raw + (8 * nt + 2 * c + e) * FP8_ROW + DC + 8 * half);

    /* (1) S step. A = Q (matrices: heads 0-7 / 8-15 x k 0-7 / 8-15), B = codes (J). */
    float s[NT][4];
    #pragma unroll
    for (int nt = 0; nt < NT; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
    const __nv_bfloat16 *qa = q + (size_t)(grp * 16 + lane % 8 + ((lane / 8) % 2) * 8) * ROW_PAD + (lane / 16) * 8;
    const uint8_t *kc = raw + g * FP8_ROW + 256 * half + 4 * c;
    #pragma unroll
    for (int blk = 0; blk < 2; blk++) {
        float sb[NT][4];
        #pragma unroll
        for (int nt = 0; nt < NT; nt++) sb[nt][0] = sb[nt][1] = sb[nt][2] = sb[nt][3] = 0.0f;
        #pragma unroll
        for (int ks = 0; ks < 8; ks++) {
            uint32_t a[4];
            ldmatrix_x4(a, qa + 256 * half + 128 * blk + 16 * ks);
            #pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const uint32_t w = *(const uint32_t *)(kc + nt * 8 * FP8_ROW + 128 * blk + 16 * ks);
                mma_bf16(sb[nt], a, e4m3x2_bf16x2<0x9180>(w, w), e4m3x2_bf16x2<0xB3A2>(w, w));
            }
        }
        #pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            const float s0 = blk ? sc[nt][0].y : sc[nt][0].x, s1 = blk ? sc[nt][1].y : sc[nt][1].x;
            s[nt][0] = fmaf(s0, sb[nt][0], s[nt][0]);
            s[nt][1] = fmaf(s1, sb[nt][1], s[nt][1]);
            s[nt][2] = fmaf(s0, sb[nt][2], s[nt][2]);
            s[nt][3] = fmaf(s1, sb[nt][3], s[nt][3]);
        }
    }
    /* rope: BF16 rows through ldmatrix (matrices: tokens 0-7 k 0-7, 0-7 k 8-15, 8-15 k 0-7, 8-15 k 8-15) */
    const uint8_t *kr = raw + (lane % 8 + (lane / 16) * 8) * FP8_ROW + DC + 16 + 2 * (32 * half + ((lane / 8) % 2) * 8);
    #pragma unroll
    for (int ks = 0; ks < 2; ks++) {
        uint32_t a[4];
        ldmatrix_x4(a, qa + DC + 32 * half + 16 * ks);
        #pragma unroll
        for (int np = 0; np < NT / 2; np++) {
            uint32_t bf[4];
            ldmatrix_x4(bf, kr + np * 16 * FP8_ROW + 32 * ks);
            mma_bf16(s[2 * np], a, bf[0], bf[1]);
            mma_bf16(s[2 * np + 1], a, bf[2], bf[3]);
        }
    }

    pair_softmax<NT>(acc, s, xb, warp, warp ^ 1, pair, tok, len, scale_log2);

    /* (2) O step: for k-step j (tokens 16 j ..), A = bf16(p s[t][b]) for the warp's blocks b = 2 half + v */
    #pragma unroll
    for (int j = 0; j < RS / 16; j++) {
        uint32_t pa[2][4];
        #pragma unroll
        for (int v = 0; v < 2; v++) {
            const float t0 = v ? sc[2 * j][0].y : sc[2 * j][0].x, t1 = v ? sc[2 * j][1].y : sc[2 * j][1].x;
            const float t8 = v ? sc[2 * j + 1][0].y : sc[2 * j + 1][0].x, t9 = v ? sc[2 * j + 1][1].y : sc[2 * j + 1][1].x;
            pa[v][0] = pack_bf16(s[2 * j][0] * t0, s[2 * j][1] * t1);
            pa[v][1] = pack_bf16(s[2 * j][2] * t0, s[2 * j][3] * t1);
            pa[v][2] = pack_bf16(s[2 * j + 1][0] * t8, s[2 * j + 1][1] * t9);
            pa[v][3] = pack_bf16(s[2 * j + 1][2] * t8, s[2 * j + 1][3] * t9);
        }
        const uint8_t *vr = raw + (16 * j + 2 * c) * FP8_ROW + 256 * half + 4 * g;
        #pragma unroll
        for (int q4 = 0; q4 < HALF_C / 32; q4++) {
            const uint32_t w0 = *(const uint32_t *)(vr + 32 * q4), w1 = *(const uint32_t *)(vr + FP8_ROW + 32 * q4);
            const uint32_t w2 = *(const uint32_t *)(vr + 8 * FP8_ROW + 32 * q4), w3 = *(const uint32_t *)(vr + 9 * FP8_ROW + 32 * q4);
            const uint32_t *p = pa[q4 / 4];
            mma_bf16(acc.o[4 * q4 + 0], p, e4m3x2_bf16x2<0xC480>(w0, w1), e4m3x2_bf16x2<0xC480>(w2, w3));
            mma_bf16(acc.o[4 * q4 + 1], p, e4m3x2_bf16x2<0xD591>(w0, w1), e4m3x2_bf16x2<0xD591>(w2, w3));
            mma_bf16(acc.o[4 * q4 + 2], p, e4m3x2_bf16x2<0xE6A2>(w0, w1), e4m3x2_bf16x2<0xE6A2>(w2, w3));
            mma_bf16(acc.o[4 * q4 + 3], p, e4m3x2_bf16x2<0xF7B3>(w0, w1), e4m3x2_bf16x2<0xF7B3>(w2, w3));
        }
    }
}

/* ---- the kernel: variant 1's loop over segments and its BF16 ring, with fp8_tile ------------------ */

/* grid (head blocks, n_cta); o_part, lse_part, meta as mla_decode_pair_kernel's. */
template <int NG>
__global__ void __launch_bounds__(THREADS, 1)
mla_decode_fp8_kernel(float *o_lat, float *lse, float *o_part, float *lse_part, int *meta, const float *q_abs,
                      const uint8_t *pool, const int32_t *block_tables, int max_pages, const int *lens, int B, int n_h,
                      float scale_log2) {
    using K = F8<NG>;
    extern __shared__ __align__(16) uint8_t smem[];
    __nv_bfloat16 *q_s = (__nv_bfloat16 *)smem;
    const int warp = threadIdx.x / 32, pair = warp / 2, half = warp % 2, grp = pair % NG, stream = pair / NG;
    const int st_tid = threadIdx.x - stream * K::ST, h0 = blockIdx.x * K::H, cta = blockIdx.y;
    uint8_t *ring = smem + K::off_ring + (size_t)stream * K::RING * K::slot;
    float *xb = (float *)(smem + K::off_x);

    const PairWork wk = pair_schedule(lens, B, cta, gridDim.y, (int *)(smem + K::off_sched));
    if (wk.s0 >= wk.s1) return;
    int b = wk.b, pre = wk.pre, fp = wk.fp;
    for (int pg = wk.s0; pg < wk.s1; b++) {
        const PairSeg sg = pair_segment<K::RS, K::NS>(wk, b, pre, fp, pg, cta, stream, lens, block_tables, max_pages, meta);
        const int span = K::NS * K::RS;

        __syncthreads(); /* the previous segment's readers of Q and of the rings are done */
        #pragma unroll
        for (int k = 0; k < K::RING - 1; k++) {
            if (k < sg.n_k)
                pair_load_rows<K::RS, K::ST, FP8_ROW, FP8_ROW>(ring + k * K::slot, pool, sg.table, sg.first + k * span,
                                                             sg.len, st_tid);
            cp_async_commit();
        }
        fp8_load_q<K::H>(q_s, q_abs, b, h0, n_h);
        __syncthreads();

        PairAcc acc;
        pair_acc_init(acc);
        for (int k = 0; k < sg.n_k; k++) {
            cp_async_wait<K::RING - 2>(); /* tile k has landed */
            named_barrier(1 + stream, K::ST); /* ... for every thread of the stream; slot (k - 1) % RING is free */
            if (k + K::RING - 1 < sg.n_k)
                pair_load_rows<K::RS, K::ST, FP8_ROW, FP8_ROW>(ring + ((k + K::RING - 1) % K::RING) * K::slot, pool,
                                                             sg.table, sg.first + (k + K::RING - 1) * span, sg.len, st_tid);
            cp_async_commit();
            fp8_tile<NG>(acc, ring + (k % K::RING) * K::slot, q_s, xb + (k % 2) * 8 * K::NT * 4 * 32, sg.first + k * span,
                         sg.len, scale_log2);
        }
        cp_async_wait<0>();
        pair_finish<NG, K::NS, true>(acc, (float *)(smem + K::off_ring), (float *)(smem + K::off_x), warp, stream, grp,
                                     half, h0, n_h, b, sg.part, sg.count, o_lat, lse, o_part, lse_part);
        pg = sg.pg1;
        pre = sg.pre_next;
        fp += sg.count;
    }
}

/* ---- launchers (the plan is variant 1's: mla_decode_pair_plan) ----------------------------------- */

template <int NG>
static void fp8_launch(float *o, float *lse, float *work, const float *q, const void *pool, const int32_t *tables,
                       int max_pages, const int *lens, int B, int n_h, float scale_log2, const MlaDecodePlan *p,
                       cudaStream_t st) {
    using K = F8<NG>;
    static bool attr = false;
    if (!attr) {
        cudaCheck(cudaFuncSetAttribute(mla_decode_fp8_kernel<NG>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)K::total));
        attr = true;
    }
    size_t n_part = (size_t)p->n_cta + B;
    float *o_part = work, *lse_part = work + n_part * n_h * DC;
    int *meta = (int *)(lse_part + n_part * n_h);
    mla_decode_fp8_kernel<NG><<<dim3(p->head_blocks, p->n_cta), THREADS, K::total, st>>>(
        o, lse, o_part, lse_part, meta, q, (const uint8_t *)pool, tables, max_pages, lens, B, n_h, scale_log2);
    cudaCheck(cudaGetLastError());
    mla_decode_pair_combine<<<dim3(n_h, B), DC / 4, 0, st>>>(o, lse, o_part, lse_part, meta, n_h);
    cudaCheck(cudaGetLastError());
}

void mla_decode_fp8_run(float *o_lat, float *lse, const float *q_abs, const void *pool, const int32_t *block_tables,
                        int max_pages, const int *lens, int B, int n_h, float scale, const MlaDecodePlan *plan,
                        float *work, void *stream) {
    cudaStream_t st = (cudaStream_t)stream;
    float sl = scale * LOG2E;
    switch (plan->heads_per_cta) {
    case 16: fp8_launch<1>(o_lat, lse, work, q_abs, pool, block_tables, max_pages, lens, B, n_h, sl, plan, st); break;
    case 32: fp8_launch<2>(o_lat, lse, work, q_abs, pool, block_tables, max_pages, lens, B, n_h, sl, plan, st); break;
    default: /* 64 heads: variant 1's widened tiles (measured faster there) */
        mla_decode_pair_run(o_lat, lse, q_abs, pool, 1, block_tables, max_pages, lens, B, n_h, scale, plan, work, stream);
        break;
    }
}
