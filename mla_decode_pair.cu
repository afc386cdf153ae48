/* mla_decode_pair.cu - variant 1 of the batched paged MLA decode (mla_decode.h): warp pairs that keep
 * the softmax in registers, token streams, and a balanced schedule of the whole batch.
 *
 * The C twin is mla_paged.c's mla_paged_decode_latent: for each sequence b and head h
 *   (1) score_s = (q_lat . c_s + q_pe . k_pe_s) * scale        over the sequence's rows s
 *   (2) p = softmax(score), lse = log sum_s exp score_s
 *   (3) o_lat = sum_s p_s c_s
 * mla_decode.cu (variant 0) explains the common steps: heads share each tile (A), online softmax
 * (B), split-KV merged by log-sum-exp (C), paging (D). This file changes how a CTA is organised and
 * how the batch is cut:
 *
 * E. Warp pairs. A CTA holds H = 16 NG heads (NG = 1, 2, 4: 16, 32, 64 heads) in 8 warps = 4 pairs.
 *    Pair (grp, stream) owns heads [16 grp, +16) of the CTA's block; its two warps (half 0, 1) split
 *    (1) by features and (3) by columns:
 *      S step   warp `half`: S_half [16, RS] = Q [16, 288 half .. +288) . C_tile [RS, same]^T
 *               (18 k-steps, mma m16n8k16; Q from shared memory, both operands through ldmatrix);
 *      exchange each warp stores its S_half in its own fragment order, one barrier of the pair,
 *               each adds its partner's: S = S_0 + S_1 in both warps, bit for bit (a + b = b + a);
 *      softmax  in registers: a head is an MMA row, held by the 4 lanes of a quad, so the row max
 *               is two shuffles; m per head, l kept per lane (quad-summed once at the end: alpha is
 *               the same for the whole row, so partial sums rescale alike);
 *      O step   O_half [16, 256 columns half .. +256) = alpha O + P . C_tile [RS, those columns]:
 *               P never leaves registers (two S accumulator tiles are one A fragment,
 *               mla_decode_ptx.cuh); C's columns through ldmatrix.trans. O: 128 FP32 per lane.
 *    No CTA-wide barrier between the three steps: only the pair's, and one per tile for the ring.
 * F. Token streams. With fewer than 4 head groups (16 or 32 heads) the spare pairs walk other rows:
 *    NS = 4 / NG streams, stream j takes tiles j, j + NS, ... (RS rows each: 16 for 16 heads, 32
 *    otherwise) of every chunk, with its own ring of cp.async slots and its own barrier. At the end of
 *    a chunk the streams' (O, m, l) are merged in the CTA as (C) merges chunks, in stream order,
 *    through the rings' shared memory: one partial record per chunk whatever the streams.
 * G. The balanced schedule (FlashMLA's get_mla_metadata idea). The batch's pages, sequence after
 *    sequence, form one list of P = sum_b ceil(len_b / 64) pages; CTA c of n_cta (about one per SM)
 *    takes pages [c per, (c + 1) per), per = max(2, ceil(P / n_cta)), cutting sequences where the
 *    boundaries fall: every CTA reads the same number of pages whatever the lengths, and the grid
 *    is one wave. A CTA's run inside sequence b is a segment; segments are numbered in (b, c) order,
 *    so sequence b's first segment number is fp_b = floor(pre_b / per) + b - z_b (pre_b: pages before
 *    b; z_b: how many of pre_1 .. pre_b are multiples of per, where a CTA boundary meets a sequence
 *    boundary), and it has count_b = floor((pre_{b+1} - 1) / per) - floor(pre_b / per) + 1 segments.
 *    Every CTA derives its start from lens (a block scan) without a separate launch; the CTA that
 *    starts sequence b writes (fp_b, count_b) for the combine. A sequence of one segment is written
 *    straight to o_lat / lse; the combine skips it.
 * H. FP8 rows are widened once per tile into BF16 shared rows (variant 0's rule: bf16(code * scale)).
 *    64 heads: two widened tiles, tile k + 1 widened while tile k is multiplied, so the widening is
 *    off the critical path; 16 and 32 heads (no room for two per stream): one, with the other
 *    streams' multiplies overlapping a stream's widening.
 * Differences from the C twin: those of variant 0 (q, p and FP8 values rounded to BF16, summation
 * orders, exp2f), and the order of the partial sums (two feature halves, streams, segments).
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include "mla_decode_pair.cuh"

/* The shape of a CTA of NG head groups; shared memory [Q | rings | widened tiles | exchange | ints].
 * WG (variant 2, 64 heads only): BF16 tiles and Q in the core-matrix layout (tile_off), S by wgmma. */
template <int NG, bool FP8, bool WG = false> struct Pair {
    static_assert(!WG || NG == 4, "variant 2 is the 64-head CTA");
    static constexpr int H = 16 * NG, NS = 4 / NG, RS = NG == 1 ? 16 : 32, NT = RS / 8, ST = 64 * NG;
    static constexpr int RING = FP8 ? 2 : (NG == 4 ? 3 : 2); /* cp.async slots per stream */
    static constexpr int WIDE = FP8 ? (NG == 4 ? 2 : 1) : 0; /* widened BF16 tiles per stream */
    static constexpr int row_bytes = FP8 ? FP8_ROW : WIDTH * 2;
    static constexpr int bf16_row = WG ? WIDTH * 2 : ROW_PAD * 2; /* bytes a BF16 row takes in shared memory */
    static constexpr int slot_row = FP8 ? FP8_ROW : bf16_row;
    static constexpr size_t slot = (size_t)RS * slot_row, wide = (size_t)RS * bf16_row;
    static constexpr size_t off_ring = (size_t)H * bf16_row;
    static constexpr size_t off_wide = off_ring + NS * RING * slot;
    static constexpr size_t off_x = off_wide + NS * WIDE * wide;       /* [parity 2][warp 8][NT 4][lane] */
    static constexpr size_t off_sched = off_x + (size_t)2 * 8 * NT * 4 * 32 * 4;
    static constexpr size_t total = off_sched + 16 * 4;
    static_assert(total <= SMEM_MAX, "shared memory");
    /* the streams' merge (F) reuses the rings and widened tiles for O, the exchange buffers for m, l */
    static_assert((size_t)(NS - 1) * 2 * NG * (HALF_C / 8 * 4) * 32 * 4 <= off_x - off_ring, "merge space");
    static_assert((size_t)(NS - 1) * 2 * NG * 4 * 32 * 4 <= off_sched - off_x, "merge space");
};

/* Byte offset of element (row r, feature k) of a BF16 tile or of Q in shared memory: rows padded to
 * ROW_PAD (variant 1), or 8 x 8 core matrices of 128 bytes, the 72 of a row-block adjacent
 * (LBO 128), row-blocks CM_SBO apart (variant 2: wgmma's no-swizzle K-major layout, and still one
 * ldmatrix matrix per core matrix, conflict-free). */
#define CM_SBO (WIDTH / 8 * 128)  /* 9216 */
template <bool WG> static __device__ __forceinline__ uint32_t tile_off(int r, int k) {
    return WG ? (uint32_t)((r / 8) * CM_SBO + (k / 8) * 128 + (r % 8) * 16 + (k % 8) * 2) : (uint32_t)((r * ROW_PAD + k) * 2);
}

/* ---- tiles --------------------------------------------------------------------------------------- */

/* Rows tok .. tok + RS - 1 of one sequence (inside one page) into a ring slot, by the stream's ST
 * threads; rows >= len are zeros. */
template <int NG, bool FP8, bool WG = false>
static __device__ __forceinline__ void pair_load(uint8_t *dst, const uint8_t *pool, const int32_t *table, int tok,
                                                 int len, int st_tid) {
    using K = Pair<NG, FP8, WG>;
    if constexpr (WG && !FP8) { /* core-matrix layout: 8 neighbouring threads fill one 128-byte core matrix */
        constexpr int chunks = K::row_bytes / 16;
        const uint8_t *src = pool + ((size_t)table[tok / PAGE] * PAGE + tok % PAGE) * K::row_bytes;
        for (int i = st_tid; i < K::RS * chunks; i += K::ST) {
            int r = (i / (8 * chunks)) * 8 + i % 8, ch = (i / 8) % chunks;
            bool ok = tok + r < len;
            cp_async16(dst + tile_off<true>(r, ch * 8), ok ? src + (size_t)r * K::row_bytes + ch * 16 : pool, ok ? 16 : 0);
        }
    } else {
        pair_load_rows<K::RS, K::ST, K::row_bytes, K::slot_row>(dst, pool, table, tok, len, st_tid);
    }
}

/* Raw FP8 rows -> BF16 rows (H): bf16(e4m3(code) * scale_group), k_pe copied; 8 codes a step. */
template <int NG, bool WG = false>
static __device__ __forceinline__ void pair_widen(__nv_bfloat16 *tile, const uint8_t *raw, int st_tid) {
    using K = Pair<NG, true, WG>;
    static_assert(K::RS * (DC / 8) % K::ST == 0 && K::RS * (DR / 8) % K::ST == 0, "whole steps");
    #pragma unroll /* constant offsets, the loads of all steps issued together */
    for (int u = st_tid; u < K::RS * (DC / 8); u += K::ST) {
        /* WG: 8 neighbouring threads take 8 rows of one chunk (one core matrix, conflict-free stores) */
        int r = WG ? (u / (8 * (DC / 8))) * 8 + u % 8 : u / (DC / 8), j = WG ? (u / 8) % (DC / 8) : u % (DC / 8);
        const uint8_t *row = raw + (size_t)r * FP8_ROW;
        float scale = *(const float *)(row + DC + 4 * (j / 16));
        uint2 codes = *(const uint2 *)(row + 8 * j);
        const __nv_fp8x2_storage_t *c2 = (const __nv_fp8x2_storage_t *)&codes;
        uint32_t out[4];
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            float2 f = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(c2[k], __NV_E4M3)));
            out[k] = pack_bf16(__fmul_rn(f.x, scale), __fmul_rn(f.y, scale));
        }
        *(uint4 *)((uint8_t *)tile + tile_off<WG>(r, 8 * j)) = make_uint4(out[0], out[1], out[2], out[3]);
    }
    #pragma unroll
    for (int u = st_tid; u < K::RS * (DR / 8); u += K::ST) {
        int r = u / (DR / 8), j = u % (DR / 8);
        *(uint4 *)((uint8_t *)tile + tile_off<WG>(r, DC + 8 * j)) = *(const uint4 *)(raw + (size_t)r * FP8_ROW + DC + 16 + 16 * j);
    }
    if (WG) fence_proxy_async(); /* wgmma reads these rows */
}

/* ---- (E) one tile of one pair ------------------------------------------------------------------ */

/* Tile rows tok .. tok + RS - 1 (BF16 rows in shared memory) into acc; q: the CTA's Q rows;
 * xb: this parity's exchange buffer [8 warps][NT * 4][32]. */
template <int NG, bool WG = false>
static __device__ __forceinline__ void pair_tile(PairAcc &acc, const __nv_bfloat16 *tile, const __nv_bfloat16 *q,
                                                 float *xb, int tok, int len, float scale_log2) {
    constexpr int NT = Pair<NG, false>::NT, RS = Pair<NG, false>::RS;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    /* variant 1: warps 2p, 2p + 1 are pair p; variant 2: warps p, p + 4 (warpgroup = half) */
    const int pair = WG ? warp % 4 : warp / 2, half = WG ? warp / 4 : warp % 2, grp = pair % NG;
    const int partner = WG ? warp ^ 4 : warp ^ 1;

    /* S step: A = Q rows (matrices: rows 0-7 / 8-15 x k 0-7 / 8-15), B = tile rows = tokens
     * (matrices: tokens 0-7 k 0-7, tokens 0-7 k 8-15, tokens 8-15 k 0-7, tokens 8-15 k 8-15). */
    float s[NT][4];
    #pragma unroll
    for (int nt = 0; nt < NT; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
    if constexpr (WG) {
        /* variant 2: warpgroup `half` computes S_half [64 heads, 32 rows] over its 288 features in 18
         * wgmma m64n32k16; warp w % 4 receives heads 16 (w % 4) .., i.e. its group's s[nt][i] */
        static_assert(NT == 4, "m64n32");
        float *d = &s[0][0];
        #pragma unroll
        for (int i = 0; i < 16; i++) reg_fence(d[i]);
        wgmma_fence();
        #pragma unroll
        for (int ks = 0; ks < HALF_F / 16; ks++) {
            const uint32_t k_off = (uint32_t)(half * (HALF_F / 8) + 2 * ks) * 128;
            wgmma_m64n32k16(d, wgmma_desc((const uint8_t *)q + k_off, 128, CM_SBO),
                            wgmma_desc((const uint8_t *)tile + k_off, 128, CM_SBO), ks > 0);
        }
        wgmma_commit();
        wgmma_wait<0>();
        #pragma unroll
        for (int i = 0; i < 16; i++) reg_fence(d[i]);
    } else {
    const __nv_bfloat16 *qa = q + (size_t)(grp * 16 + lane % 8 + ((lane / 8) % 2) * 8) * ROW_PAD + half * HALF_F + (lane / 16) * 8;
    const __nv_bfloat16 *kb = tile + (size_t)(lane % 8 + (lane / 16) * 8) * ROW_PAD + half * HALF_F + ((lane / 8) % 2) * 8;
    #pragma unroll
    for (int ks = 0; ks < HALF_F / 16; ks++) {
        uint32_t a[4];
        ldmatrix_x4(a, qa + ks * 16);
        #pragma unroll
        for (int np = 0; np < NT / 2; np++) {
            uint32_t bf[4];
            ldmatrix_x4(bf, kb + (size_t)np * 16 * ROW_PAD + ks * 16);
            mma_bf16(s[2 * np], a, bf[0], bf[1]);
            mma_bf16(s[2 * np + 1], a, bf[2], bf[3]);
        }
    }
    }

    pair_softmax<NT>(acc, s, xb, warp, partner, pair, tok, len, scale_log2);

    /* O step: P [16, 16 tokens of k-step j] from s (BF16), B = C [tokens, columns] transposed
     * (matrices: tokens 0-7 / 8-15 x columns 0-7, then x columns 8-15 -> b0, b1 of two n-tiles). */
    #pragma unroll
    for (int j = 0; j < RS / 16; j++) {
        uint32_t pa[4] = {pack_bf16(s[2 * j][0], s[2 * j][1]), pack_bf16(s[2 * j][2], s[2 * j][3]),
                          pack_bf16(s[2 * j + 1][0], s[2 * j + 1][1]), pack_bf16(s[2 * j + 1][2], s[2 * j + 1][3])};
        const __nv_bfloat16 *vb = tile + (size_t)(j * 16 + lane % 8 + ((lane / 8) % 2) * 8) * ROW_PAD + half * HALF_C + (lane / 16) * 8;
        const uint8_t *vb_cm = (const uint8_t *)tile + tile_off<true>(j * 16 + lane % 8 + ((lane / 8) % 2) * 8, half * HALF_C + (lane / 16) * 8);
        #pragma unroll
        for (int np = 0; np < HALF_C / 16; np++) {
            uint32_t bf[4];
            if (WG) ldmatrix_x4_trans(bf, vb_cm + np * 2 * 128); /* 16 columns = two core matrices */
            else ldmatrix_x4_trans(bf, vb + np * 16);
            mma_bf16(acc.o[2 * np], pa, bf[0], bf[1]);
            mma_bf16(acc.o[2 * np + 1], pa, bf[2], bf[3]);
        }
    }
}

/* ---- the kernel ------------------------------------------------------------------------------------ */

/* grid (head blocks, n_cta). o_part [n_part, n_h, 512], lse_part [n_part, n_h]: one record a
 * segment, n_part = n_cta + B (segments number at most n_cta + B - 1); meta [B, 2] = (fp_b, count_b). */
template <int NG, bool FP8, bool WG>
__global__ void __launch_bounds__(THREADS, 1)
mla_decode_pair_kernel(float *o_lat, float *lse, float *o_part, float *lse_part, int *meta, const float *q_abs,
                       const uint8_t *pool, const int32_t *block_tables, int max_pages, const int *lens, int B, int n_h,
                       float scale_log2) {
    using K = Pair<NG, FP8, WG>;
    extern __shared__ __align__(16) uint8_t smem[];
    __nv_bfloat16 *q_s = (__nv_bfloat16 *)smem;
    const int warp = threadIdx.x / 32;
    const int pair = WG ? warp % 4 : warp / 2, half = WG ? warp / 4 : warp % 2, grp = pair % NG, stream = pair / NG;
    const int st_tid = threadIdx.x - stream * K::ST, h0 = blockIdx.x * K::H, cta = blockIdx.y;
    uint8_t *ring = smem + K::off_ring + (size_t)stream * K::RING * K::slot;
    __nv_bfloat16 *wide = (__nv_bfloat16 *)(smem + K::off_wide + (size_t)stream * K::WIDE * K::wide);
    float *xb = (float *)(smem + K::off_x);

    const PairWork wk = pair_schedule(lens, B, cta, gridDim.y, (int *)(smem + K::off_sched));
    if (wk.s0 >= wk.s1) return;
    int b = wk.b, pre = wk.pre, fp = wk.fp;
    for (int pg = wk.s0; pg < wk.s1; b++) {
        const PairSeg sg = pair_segment<K::RS, K::NS>(wk, b, pre, fp, pg, cta, stream, lens, block_tables, max_pages, meta);
        const int len = sg.len, first = sg.first, n_k = sg.n_k, span = K::NS * K::RS;
        const int32_t *table = sg.table;

        __syncthreads(); /* the previous segment's readers of Q and of the rings are done */
        #pragma unroll
        for (int k = 0; k < (FP8 ? K::RING : K::RING - 1); k++) {
            if (k < n_k) pair_load<NG, FP8, WG>(ring + k * K::slot, pool, table, first + k * span, len, st_tid);
            cp_async_commit();
        }
        for (int i = threadIdx.x; i < K::H * (WIDTH / 4); i += THREADS) { /* Q rows, BF16, zeros past n_h */
            int r = i / (WIDTH / 4), col = (i % (WIDTH / 4)) * 4, h = h0 + r;
            float4 v = h < n_h ? *(const float4 *)(q_abs + ((size_t)b * n_h + h) * WIDTH + col) : make_float4(0, 0, 0, 0);
            *(uint2 *)((uint8_t *)q_s + tile_off<WG>(r, col)) = make_uint2(pack_bf16(v.x, v.y), pack_bf16(v.z, v.w));
        }
        if (WG) fence_proxy_async(); /* Q is read by wgmma */
        __syncthreads();

        PairAcc acc;
        pair_acc_init(acc);
        if constexpr (FP8 && K::WIDE == 2) { /* widen tile k + 1 while tile k is multiplied */
            cp_async_wait<K::RING - 1>();
            named_barrier(1 + stream, K::ST);
            if (n_k > 0) pair_widen<NG, WG>(wide, ring, st_tid);
            for (int k = 0; k < n_k; k++) {
                cp_async_wait<K::RING - 2>(); /* raw tiles <= k + 1 have landed */
                named_barrier(1 + stream, K::ST);
                if (k + K::RING < n_k)
                    pair_load<NG, FP8, WG>(ring + (k % K::RING) * K::slot, pool, table, first + (k + K::RING) * span, len, st_tid);
                cp_async_commit();
                if (k + 1 < n_k)
                    pair_widen<NG, WG>(wide + ((k + 1) % 2) * (K::wide / 2), ring + ((k + 1) % K::RING) * K::slot, st_tid);
                pair_tile<NG, WG>(acc, wide + (k % 2) * (K::wide / 2), q_s, xb + (k % 2) * 8 * K::NT * 4 * 32,
                              first + k * span, len, scale_log2);
            }
        } else if constexpr (FP8) { /* one widened tile per stream */
            for (int k = 0; k < n_k; k++) {
                cp_async_wait<K::RING - 1>(); /* raw tile k has landed */
                named_barrier(1 + stream, K::ST);
                pair_widen<NG, WG>(wide, ring + (k % K::RING) * K::slot, st_tid);
                named_barrier(1 + stream, K::ST);
                if (k + K::RING < n_k)
                    pair_load<NG, FP8, WG>(ring + (k % K::RING) * K::slot, pool, table, first + (k + K::RING) * span, len, st_tid);
                cp_async_commit();
                pair_tile<NG, WG>(acc, wide, q_s, xb + (k % 2) * 8 * K::NT * 4 * 32, first + k * span, len, scale_log2);
            }
        } else {
            for (int k = 0; k < n_k; k++) {
                cp_async_wait<K::RING - 2>(); /* tile k has landed */
                if (WG) fence_proxy_async();  /* cp.async's rows are read by wgmma */
                named_barrier(1 + stream, K::ST);
                if (k + K::RING - 1 < n_k)
                    pair_load<NG, FP8, WG>(ring + ((k + K::RING - 1) % K::RING) * K::slot, pool, table,
                                       first + (k + K::RING - 1) * span, len, st_tid);
                cp_async_commit();
                pair_tile<NG, WG>(acc, (const __nv_bfloat16 *)(ring + (k % K::RING) * K::slot), q_s,
                              xb + (k % 2) * 8 * K::NT * 4 * 32, first + k * span, len, scale_log2);
            }
        }
        cp_async_wait<0>();

        pair_finish<NG, K::NS, false>(acc, (float *)(smem + K::off_ring), (float *)(smem + K::off_x), warp, stream, grp,
                                      half, h0, n_h, b, sg.part, sg.count, o_lat, lse, o_part, lse_part);
        pg = sg.pg1;
        pre = sg.pre_next;
        fp += sg.count;
    }
}

/* ---- launchers ------------------------------------------------------------------------------------- */

void mla_decode_pair_plan(MlaDecodePlan *p, int B, int n_h, int max_len, int sms) {
    const int ng = n_h <= 16 ? 1 : n_h <= 32 ? 2 : 4, ns = 4 / ng;
    p->heads_per_cta = 16 * ng;
    p->head_blocks = (n_h + p->heads_per_cta - 1) / p->heads_per_cta;
    long long most = ((long long)B * ((max_len + PAGE - 1) / PAGE) + MIN_PAGES - 1) / MIN_PAGES;
    int n_cta = sms / p->head_blocks;
    n_cta = n_cta < most ? n_cta : (int)most;
    p->n_cta = n_cta < 1 ? 1 : n_cta;
    p->n_split = ns; /* token streams (merged in the CTA: one record a segment) */
    p->chunk_tiles = 0;
    size_t n_part = (size_t)p->n_cta + B;
    p->work_floats = n_part * n_h * (DC + 1) + 2 * (size_t)B;
}

template <int NG, bool FP8, bool WG>
static void pair_launch(float *o, float *lse, float *work, const float *q, const void *pool, const int32_t *tables,
                        int max_pages, const int *lens, int B, int n_h, float scale_log2, const MlaDecodePlan *p,
                        cudaStream_t st) {
    using K = Pair<NG, FP8, WG>;
    static bool attr = false;
    if (!attr) {
        cudaCheck(cudaFuncSetAttribute(mla_decode_pair_kernel<NG, FP8, WG>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       (int)K::total));
        attr = true;
    }
    size_t n_part = (size_t)p->n_cta + B;
    float *o_part = work, *lse_part = work + n_part * n_h * DC;
    int *meta = (int *)(lse_part + n_part * n_h);
    mla_decode_pair_kernel<NG, FP8, WG><<<dim3(p->head_blocks, p->n_cta), THREADS, K::total, st>>>(
        o, lse, o_part, lse_part, meta, q, (const uint8_t *)pool, tables, max_pages, lens, B, n_h, scale_log2);
    cudaCheck(cudaGetLastError());
    mla_decode_pair_combine<<<dim3(n_h, B), DC / 4, 0, st>>>(o, lse, o_part, lse_part, meta, n_h);
    cudaCheck(cudaGetLastError());
}

void mla_decode_pair_run(float *o_lat, float *lse, const float *q_abs, const void *pool, int fp8,
                         const int32_t *block_tables, int max_pages, const int *lens, int B, int n_h, float scale,
                         const MlaDecodePlan *plan, float *work, void *stream) {
    cudaStream_t st = (cudaStream_t)stream;
    float sl = scale * LOG2E;
#define PAIR_LAUNCH(NG, F8, WG) pair_launch<NG, F8, WG>(o_lat, lse, work, q_abs, pool, block_tables, max_pages, lens, B, n_h, sl, plan, st)
    switch (plan->heads_per_cta) {
    case 16: fp8 ? PAIR_LAUNCH(1, true, false) : PAIR_LAUNCH(1, false, false); break;
    case 32: fp8 ? PAIR_LAUNCH(2, true, false) : PAIR_LAUNCH(2, false, false); break;
    default: /* 64 heads: variant 2 takes S through wgmma */
        if (plan->variant == 2) fp8 ? PAIR_LAUNCH(4, true, true) : PAIR_LAUNCH(4, false, true);
        else fp8 ? PAIR_LAUNCH(4, true, false) : PAIR_LAUNCH(4, false, false);
        break;
    }
#undef PAIR_LAUNCH
}
