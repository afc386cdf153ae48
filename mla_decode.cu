/* mla_decode.cu - MLA decode at the bandwidth limit: batched, paged, BF16 or FP8 latent cache.
 *
 * The C twin is mla_paged.c's mla_paged_decode_latent. For each sequence b and head h it computes
 *   (1) score_s = (q_lat . c_s + q_pe . k_pe_s) * scale        over the sequence's cached rows s
 *   (2) p = softmax(score)                                      (and lse = log sum_s exp score_s)
 *   (3) o_lat = sum_s p_s c_s
 * one (b, h) at a time, reading every row once per head. Here the same three steps are reorganised
 * around one fact: all heads of a sequence read the SAME rows [c_s | k_pe_s] (576 values). So:
 *
 * A. Tiles shared by heads. A CTA loads a tile of 32 rows into shared memory once and uses it for
 *    16 or 32 heads at a time: (1) for those heads and those rows is one small matrix product,
 *        S [heads, 32] = Q [heads, 576] . C_tile^T [576, 32]           (q_abs rows = [q_lat | q_pe])
 *    and (3) is another,  O [heads, 512] += P [heads, 32] . C_tile[:, :512],
 *    both on tensor cores (mma.sync m16n8k16, BF16 operands, FP32 accumulation). The cache tile is
 *    BF16 in shared memory in either format: FP8 rows are widened in the loader to
 *    bf16(code * scale_g), the C twin's FP32 product rounded once more, to BF16.
 * B. Online softmax. (2) needs the maximum over all rows before any exp; the CTA instead keeps,
 *    per head, the running max m, the running sum l = sum exp(score - m), and an unnormalised O.
 *    When a tile raises the max to m', l and O are multiplied by alpha = exp(m - m') before the
 *    tile's terms are added (FlashAttention). At the end o_lat = O / l and lse = m + log l: the C
 *    twin's softmax, reassociated. Scores are kept in base 2 (score * log2 e, exp2f).
 * C. Split-KV. Decode of 64 sequences x 16 heads is 64 head blocks: half of the 132 SMs would sit
 *    idle, and one CTA walking 4096 rows cannot keep enough loads in flight. Each sequence's tiles
 *    are cut into n_split chunks, one CTA each; a chunk's result is (o_j, lse_j) as above, over
 *    its rows only. The combine kernel merges them exactly as (B) merges tiles:
 *        lse = M + log sum_j exp(lse_j - M),   o = sum_j exp(lse_j - lse) o_j,   M = max_j lse_j.
 * D. Paging. Token s of sequence b lives in page block_tables[b][s / 64], row s % 64; a tile is
 *    half a page, so its 32 rows are contiguous in the pool and load as 16-byte cp.async copies.
 *    Rows past the sequence's end are zero-filled (cp.async with source size 0: a NaN of a stale
 *    row would survive p = 0) and their scores masked to -inf.
 *
 * Inside a CTA (256 threads = 8 warps, H = 16 or 32 heads, a tile of 32 rows):
 *   S step   warp w: features [144 (w % 4), +144) (9 k-steps of 16) for rows [16 (w / 4), +16).
 *            Its Q fragments (H x 144) stay in registers for the whole chunk; C_tile is read from
 *            shared memory with 32-bit loads (rows padded to 584 values: conflict-free). The four
 *            feature slices' partial S go to shared memory and are summed in the softmax step
 *            (a fixed order: slice 0, 1, 2, 3).
 *   softmax  warp w takes H / 8 heads, lane = row of the tile: max and sum are warp shuffles.
 *            P is rounded to BF16 for the second product; l sums the FP32 p.
 *   O step   warp w: latent columns [64 w, +64) for all H heads, O in registers (FP32);
 *            C_tile's columns come through ldmatrix.trans (rows = k = tokens).
 *   Two tile buffers (BF16) or two raw staging buffers and one widened tile (FP8): the next tile's
 *   copy is in flight while this one is multiplied.
 * Differences from the C twin, hence the tolerances of tests/test_mla_decode.cu: q rounded to
 * BF16 (the test feeds BF16-exact q), p rounded to BF16 in (3), FP8 values rounded to BF16,
 * other summation orders (tensor-core trees, tiles, splits), exp2f.
 *
 * FlashMLA (deepseek-ai/FlashMLA) organises the same computation with wgmma, 64 heads per CTA,
 * warp specialisation and a scheduler that balances ragged lengths; this kernel keeps mma.sync
 * and a uniform split to stay readable (notes/mla_decode.md compares them). It is variant 0;
 * mla_decode_pair.cu is variant 1 (64 heads a CTA, the softmax in registers, a balanced
 * schedule), mla_decode_fp8.cu variant 3 (FP8 codes into the tensor cores, the scales outside);
 * mla_decode_plan picks one (MLA_DECODE_VARIANT).
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "mla_decode.h"
#include "mla_decode_ptx.cuh"

#define DC MLA_DEC_DC
#define DR MLA_DEC_DR
#define WIDTH (DC + DR)        /* 576 */
#define TILE MLA_DEC_TILE      /* 32 rows */
#define THREADS 256
#define ROW_PAD (WIDTH + 8)    /* BF16 values per shared row: 1168 bytes, 16-aligned, no conflicts */
#define FP8_ROW 656            /* FlashMLA's row: 512 codes, 4 FP32 scales, 64 BF16 */
#define RED_PAD (TILE + 8)     /* floats per row of the partial scores */
#define P_PAD (TILE + 8)       /* BF16 per row of P */
#define SLICE 144              /* features per S-step warp: 576 / 4 */
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

/* ---- shared memory ---------------------------------------------------------------------------- */

/* Bytes of each region for MT m-tiles of 16 heads; FP8 adds two raw stages and keeps one tile. */
template <int MT, bool FP8> struct Smem {
    static constexpr int H = 16 * MT;
    static constexpr int n_tiles = FP8 ? 1 : 2;
    static constexpr size_t tile = (size_t)TILE * ROW_PAD * 2;
    static constexpr size_t raw = FP8 ? (size_t)TILE * FP8_ROW : 0;
    static constexpr size_t red = (size_t)4 * H * RED_PAD * 4;
    static constexpr size_t p = (size_t)H * P_PAD * 2;
    static constexpr size_t total = n_tiles * tile + 2 * raw + red + p + 3 * H * 4;
};

/* ---- the tile loader -------------------------------------------------------------------------- */

/* Rows tok0 .. tok0 + 31 of one sequence (a half page) into dst: BF16 rows of 1152 bytes into
 * padded tile rows, or raw FP8 rows of 656 bytes into the staging buffer. Rows >= len: zeros. */
template <bool FP8>
static __device__ void load_tile(uint8_t *dst, const uint8_t *pool, const int32_t *table, int tok0, int len) {
    const int row_bytes = FP8 ? FP8_ROW : WIDTH * 2, chunks = row_bytes / 16;
    const int dst_row = FP8 ? FP8_ROW : ROW_PAD * 2;
    const uint8_t *page = pool + ((size_t)table[tok0 / 64] * 64 + tok0 % 64) * row_bytes;
    for (int i = threadIdx.x; i < TILE * chunks; i += THREADS) {
        int r = i / chunks, ch = i % chunks;
        int ok = tok0 + r < len;
        cp_async16(dst + (size_t)r * dst_row + ch * 16, ok ? page + (size_t)r * row_bytes + ch * 16 : pool, ok ? 16 : 0);
    }
}

/* Raw FP8 rows -> BF16 tile rows: c = bf16(e4m3(code) * scale_g) (the C twin's FP32 product, then
 * BF16), k_pe copied. A thread widens 8 codes at a time (8 bytes in, 16 out). */
static __device__ void widen_fp8(__nv_bfloat16 *tile, const uint8_t *raw) {
    for (int u = threadIdx.x; u < TILE * (DC / 8); u += THREADS) {
        int r = u / (DC / 8), j = u % (DC / 8);
        const uint8_t *row = raw + (size_t)r * FP8_ROW;
        float scale = *(const float *)(row + DC + 4 * (j / 16)); /* group of 128 = 16 units */
        uint2 codes = *(const uint2 *)(row + 8 * j);
        const __nv_fp8x2_storage_t *c2 = (const __nv_fp8x2_storage_t *)&codes;
        uint32_t out[4];
        for (int k = 0; k < 4; k++) {
            float2 f = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(c2[k], __NV_E4M3)));
            out[k] = pack_bf16(__fmul_rn(f.x, scale), __fmul_rn(f.y, scale));
        }
        *(uint4 *)(tile + (size_t)r * ROW_PAD + 8 * j) = make_uint4(out[0], out[1], out[2], out[3]);
    }
    for (int u = threadIdx.x; u < TILE * (DR / 8); u += THREADS) { /* k_pe: 8 x 16 bytes a row */
        int r = u / (DR / 8), j = u % (DR / 8);
        *(uint4 *)(tile + (size_t)r * ROW_PAD + DC + 8 * j) =
            *(const uint4 *)(raw + (size_t)r * FP8_ROW + DC + 16 + 16 * j);
    }
}

/* ---- the decode kernel ------------------------------------------------------------------------ */

/* grid (head blocks, n_split, B). o_dst [B, n_split, n_h, 512] and lse_dst [B, n_split, n_h]
 * (n_split = 1: the final o_lat and lse). */
template <int MT, bool FP8>
__global__ void __launch_bounds__(THREADS, MT == 1 ? 2 : 1)
mla_decode_kernel(float *o_dst, float *lse_dst, const float *q_abs, const uint8_t *pool,
                  const int32_t *block_tables, int max_pages, const int *lens, int n_h, float scale_log2,
                  int chunk_tiles) {
    using S = Smem<MT, FP8>;
    constexpr int H = S::H;
    extern __shared__ __align__(16) uint8_t smem[];
    __nv_bfloat16 *tiles = (__nv_bfloat16 *)smem;
    uint8_t *raw = smem + S::n_tiles * S::tile;
    float *red = (float *)(raw + 2 * S::raw);           /* [4 slices][H][RED_PAD] */
    __nv_bfloat16 *P = (__nv_bfloat16 *)(red + 4 * H * RED_PAD); /* [H][P_PAD] */
    float *m_s = (float *)(P + H * P_PAD), *l_s = m_s + H, *a_s = l_s + H;

    const int hb = blockIdx.x, split = blockIdx.y, b = blockIdx.z, n_split = gridDim.y;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const int h0 = hb * H, len = lens[b], n_tiles = (len + TILE - 1) / TILE;
    const int t_begin = split * chunk_tiles, t_end = min(n_tiles, t_begin + chunk_tiles);
    const int32_t *table = block_tables + (size_t)b * max_pages;
    float *o_out = o_dst + ((size_t)b * n_split + split) * n_h * DC;
    float *lse_out = lse_dst ? lse_dst + ((size_t)b * n_split + split) * n_h : NULL; /* NULL: unwanted */

    if (t_begin >= t_end) { /* an empty chunk (a short sequence): weight 0 in the combine */
        for (int i = threadIdx.x; i < H * DC; i += THREADS)
            if (h0 + i / DC < n_h) o_out[(size_t)(h0 + i / DC) * DC + i % DC] = 0.0f;
        if (lse_out && threadIdx.x < H && h0 + threadIdx.x < n_h) lse_out[h0 + threadIdx.x] = -INFINITY;
        return;
    }

    /* Start the first two tiles' copies, then fetch Q while they fly. */
    uint8_t *stage0 = FP8 ? raw : (uint8_t *)tiles, *stage1 = FP8 ? raw + S::raw : (uint8_t *)tiles + S::tile;
    load_tile<FP8>(stage0, pool, table, t_begin * TILE, len);
    cp_async_commit();
    if (t_begin + 1 < t_end) load_tile<FP8>(stage1, pool, table, (t_begin + 1) * TILE, len);
    cp_async_commit();

    /* Q fragments of this warp's feature slice, BF16, for all H heads (zero rows past n_h). */
    const int slice = warp % 4, tok_half = warp / 4;
    uint32_t qf[MT][9][4];
    #pragma unroll
    for (int mt = 0; mt < MT; mt++)
        #pragma unroll
        for (int ks = 0; ks < 9; ks++)
            #pragma unroll
            for (int i = 0; i < 4; i++) {
                int row = h0 + mt * 16 + g + (i % 2) * 8, col = slice * SLICE + ks * 16 + 2 * c + (i / 2) * 8;
                const float *q = q_abs + ((size_t)b * n_h + row) * WIDTH + col;
                qf[mt][ks][i] = row < n_h ? pack_bf16(q[0], q[1]) : 0u;
            }
    if (threadIdx.x < H) { m_s[threadIdx.x] = -INFINITY; l_s[threadIdx.x] = 0.0f; }

    float o[MT][8][4];
    zero_frags(o);

    for (int t = t_begin; t < t_end; t++) {
        const int i_t = t - t_begin;
        uint8_t *stage = (i_t % 2) ? stage1 : stage0;
        cp_async_wait<1>(); /* all but the newest group: tile t has landed */
        __syncthreads();
        const __nv_bfloat16 *tile = FP8 ? tiles : (const __nv_bfloat16 *)stage;
        if (FP8) {
            widen_fp8(tiles, stage);
            __syncthreads();
            if (t + 2 < t_end) load_tile<FP8>(stage, pool, table, (t + 2) * TILE, len);
            cp_async_commit();
        }

        /* S step: partial S [H, 16 rows of the tile] over this warp's 144 features. */
        float s[MT][2][4];
        zero_frags(s);
        #pragma unroll
        for (int nt = 0; nt < 2; nt++) {
            const __nv_bfloat16 *krow = tile + (size_t)(tok_half * 16 + nt * 8 + g) * ROW_PAD + slice * SLICE + 2 * c;
#pragma unroll
            for (int ks = 0; ks < 9; ks++) {
                uint32_t b0 = *(const uint32_t *)(krow + ks * 16), b1 = *(const uint32_t *)(krow + ks * 16 + 8);
                #pragma unroll
                for (int mt = 0; mt < MT; mt++) mma_bf16(s[mt][nt], qf[mt][ks], b0, b1);
            }
        }
        #pragma unroll
        for (int mt = 0; mt < MT; mt++)
            #pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                float *r = red + ((size_t)slice * H + mt * 16 + g) * RED_PAD + tok_half * 16 + nt * 8 + 2 * c;
                *(float2 *)r = make_float2(s[mt][nt][0], s[mt][nt][1]);
                *(float2 *)(r + 8 * RED_PAD) = make_float2(s[mt][nt][2], s[mt][nt][3]);
            }
        __syncthreads();

        /* softmax step: warp w takes heads [w H/8, +H/8); lane = row of the tile. */
        #pragma unroll
        for (int k = 0; k < H / 8; k++) {
            int h = warp * (H / 8) + k;
            float v = 0.0f;
            #pragma unroll
            for (int sl = 0; sl < 4; sl++) v += red[((size_t)sl * H + h) * RED_PAD + lane];
            v = t * TILE + lane < len ? v * scale_log2 : -INFINITY;
            float m_old = m_s[h], m_new = fmaxf(m_old, warp_max(v));
            float p = exp2f(v - m_new), alpha = exp2f(m_old - m_new);
            float sum = warp_sum(p);
            P[h * P_PAD + lane] = __float2bfloat16_rn(p);
            if (lane == 0) { m_s[h] = m_new; l_s[h] = l_s[h] * alpha + sum; a_s[h] = alpha; }
        }
        __syncthreads();

        /* O step: O [H, this warp's 64 columns] = alpha O + P [H, 32] . C_tile [32, 64 columns]. */
        #pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            float a_lo = a_s[mt * 16 + g], a_hi = a_s[mt * 16 + g + 8];
            #pragma unroll
            for (int nt = 0; nt < 8; nt++) {
                o[mt][nt][0] *= a_lo; o[mt][nt][1] *= a_lo;
                o[mt][nt][2] *= a_hi; o[mt][nt][3] *= a_hi;
            }
        }
#pragma unroll
        for (int ks = 0; ks < 2; ks++) {
            uint32_t pa[MT][4];
            #pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                const __nv_bfloat16 *pr = P + (size_t)(mt * 16 + g) * P_PAD + ks * 16 + 2 * c;
                pa[mt][0] = *(const uint32_t *)pr;
                pa[mt][1] = *(const uint32_t *)(pr + 8 * P_PAD);
                pa[mt][2] = *(const uint32_t *)(pr + 8);
                pa[mt][3] = *(const uint32_t *)(pr + 8 * P_PAD + 8);
            }
#pragma unroll
            for (int np = 0; np < 4; np++) { /* two n-tiles of 8 columns per ldmatrix.x4 */
                int tok = ks * 16 + (lane % 8) + ((lane / 8) % 2) * 8, col = warp * 64 + np * 16 + (lane / 16) * 8;
                uint32_t bf[4];
                ldmatrix_x4_trans(bf, tile + (size_t)tok * ROW_PAD + col);
                #pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma_bf16(o[mt][2 * np], pa[mt], bf[0], bf[1]);
                    mma_bf16(o[mt][2 * np + 1], pa[mt], bf[2], bf[3]);
                }
            }
        }
        __syncthreads(); /* the tile, P and the partial scores are free again */
        if (!FP8) {
            if (t + 2 < t_end) load_tile<FP8>(stage, pool, table, (t + 2) * TILE, len);
            cp_async_commit();
        }
    }
    cp_async_wait<0>();

    /* o = O / l, lse = (m + log2 l) ln 2 (natural log of the unscaled-base scores). */
    #pragma unroll
    for (int mt = 0; mt < MT; mt++)
        #pragma unroll
        for (int half = 0; half < 2; half++) {
            int hl = mt * 16 + g + half * 8, h = h0 + hl;
            if (h >= n_h) continue;
            float inv = 1.0f / l_s[hl];
            #pragma unroll
            for (int nt = 0; nt < 8; nt++) {
                float *dst = o_out + (size_t)h * DC + warp * 64 + nt * 8 + 2 * c;
                *(float2 *)dst = make_float2(o[mt][nt][2 * half] * inv, o[mt][nt][2 * half + 1] * inv);
            }
        }
    if (lse_dst && threadIdx.x < H && h0 + threadIdx.x < n_h)
        lse_out[h0 + threadIdx.x] = (m_s[threadIdx.x] + log2f(l_s[threadIdx.x])) * LN2;
}

/* ---- the combine kernel ----------------------------------------------------------------------- */

/* grid (n_h, B), 128 threads of 4 columns: merge the chunks' (o_j, lse_j) of (b, h) by (C). */
__global__ void mla_decode_combine(float *o_lat, float *lse, const float *o_part, const float *lse_part,
                                   int n_h, int n_split) {
    int h = blockIdx.x, b = blockIdx.y;
    const float *lp = lse_part + (size_t)b * n_split * n_h + h;
    float M = -INFINITY;
    for (int j = 0; j < n_split; j++) M = fmaxf(M, lp[(size_t)j * n_h]);
    float sum = 0.0f;
    float4 acc = make_float4(0, 0, 0, 0);
    for (int j = 0; j < n_split; j++) {
        float l = lp[(size_t)j * n_h];
        if (l == -INFINITY) continue;
        float w = expf(l - M);
        sum += w;
        float4 v = *(const float4 *)(o_part + (((size_t)b * n_split + j) * n_h + h) * DC + 4 * threadIdx.x);
        acc.x += w * v.x; acc.y += w * v.y; acc.z += w * v.z; acc.w += w * v.w;
    }
    float inv = 1.0f / sum;
    *(float4 *)(o_lat + ((size_t)b * n_h + h) * DC + 4 * threadIdx.x) =
        make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv);
    if (lse && threadIdx.x == 0) lse[(size_t)b * n_h + h] = M + logf(sum);
}

/* ---- launchers -------------------------------------------------------------------------------- */

static int device_sms(void) {
    static int sms = 0;
    if (!sms) {
        int dev;
        cudaCheck(cudaGetDevice(&dev));
        cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    }
    return sms;
}

/* Variant 0's chunks per sequence: enough CTAs for every SM to hold as many as fit (2 of 16 heads,
 * 1 of 32), and no chunk under 2 tiles (64 rows), where the fixed cost of a CTA and its merge would
 * show. */
static void plan_tiles(MlaDecodePlan *p, int B, int n_h, int max_len) {
    p->heads_per_cta = n_h <= 16 ? 16 : 32;
    p->head_blocks = (n_h + p->heads_per_cta - 1) / p->heads_per_cta;
    int per_sm = p->heads_per_cta == 16 ? 2 : 1, ctas = B * p->head_blocks;
    int max_tiles = (max_len + TILE - 1) / TILE, want = (per_sm * device_sms() + ctas - 1) / ctas;
    int cap = (max_tiles + 1) / 2;
    int n_split = want < cap ? want : cap;
    if (n_split < 1) n_split = 1;
    p->chunk_tiles = (max_tiles + n_split - 1) / n_split;
    p->n_split = (max_tiles + p->chunk_tiles - 1) / p->chunk_tiles;
    p->work_floats = p->n_split > 1 ? (size_t)B * p->n_split * n_h * (DC + 1) : 0;
    p->n_cta = 0;
}

void mla_decode_plan_variant(MlaDecodePlan *p, int B, int n_h, int max_len, int variant) {
    const int pair = variant >= 1 && variant <= 3; /* variants 1, 2, 3 share variant 1's plan */
    if (pair) mla_decode_pair_plan(p, B, n_h, max_len, device_sms());
    else plan_tiles(p, B, n_h, max_len);
    p->variant = pair ? variant : 0;
}

/* MLA_DECODE_VARIANT, or MLA_DEC_DEFAULT_VARIANT when unset or out of range. */
static int env_variant(void) {
    const char *v = getenv("MLA_DECODE_VARIANT");
    int variant = v ? atoi(v) : MLA_DEC_DEFAULT_VARIANT;
    return variant >= 0 && variant < MLA_DEC_VARIANTS ? variant : MLA_DEC_DEFAULT_VARIANT;
}

void mla_decode_plan(MlaDecodePlan *p, int B, int n_h, int max_len) {
    mla_decode_plan_variant(p, B, n_h, max_len, env_variant());
}

template <int MT, bool FP8>
static void launch(float *o, float *lse, const float *q, const void *pool, const int32_t *tables, int max_pages,
                   const int *lens, int B, int n_h, float scale_log2, const MlaDecodePlan *p, cudaStream_t st) {
    size_t smem = Smem<MT, FP8>::total;
    static bool attr = false;
    if (!attr) {
        cudaCheck(cudaFuncSetAttribute(mla_decode_kernel<MT, FP8>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        attr = true;
    }
    dim3 grid(p->head_blocks, p->n_split, B);
    mla_decode_kernel<MT, FP8><<<grid, THREADS, smem, st>>>(o, lse, q, (const uint8_t *)pool, tables, max_pages, lens,
                                                            n_h, scale_log2, p->chunk_tiles);
}

int mla_decode_cuda(float *o_lat, float *lse, const float *q_abs, const void *pool, MlaKvFormat f,
                    const int32_t *block_tables, int max_pages, const int *lens, int B, int n_h,
                    float scale, const MlaDecodePlan *plan, float *work, void *stream) {
    if ((f != MLA_KV_BF16 && f != MLA_KV_FP8) || B <= 0 || n_h <= 0) return -1;
    if (plan->variant == 3 && f == MLA_KV_FP8) {
        mla_decode_fp8_run(o_lat, lse, q_abs, pool, block_tables, max_pages, lens, B, n_h, scale, plan, work, stream);
        return 0;
    }
    if (plan->variant >= 1 && plan->variant <= 3) { /* variant 3 on BF16: variant 1 */
        mla_decode_pair_run(o_lat, lse, q_abs, pool, f == MLA_KV_FP8, block_tables, max_pages, lens, B, n_h, scale,
                            plan, work, stream);
        return 0;
    }
    cudaStream_t st = (cudaStream_t)stream;
    int split = plan->n_split > 1;
    float *o_dst = split ? work : o_lat;
    float *lse_dst = split ? work + (size_t)B * plan->n_split * n_h * DC : lse;
    float sl = scale * LOG2E;
    bool fp8 = f == MLA_KV_FP8;
    if (plan->heads_per_cta == 16)
        fp8 ? launch<1, true>(o_dst, lse_dst, q_abs, pool, block_tables, max_pages, lens, B, n_h, sl, plan, st)
            : launch<1, false>(o_dst, lse_dst, q_abs, pool, block_tables, max_pages, lens, B, n_h, sl, plan, st);
    else
        fp8 ? launch<2, true>(o_dst, lse_dst, q_abs, pool, block_tables, max_pages, lens, B, n_h, sl, plan, st)
            : launch<2, false>(o_dst, lse_dst, q_abs, pool, block_tables, max_pages, lens, B, n_h, sl, plan, st);
    cudaCheck(cudaGetLastError());
    if (split) {
        mla_decode_combine<<<dim3(n_h, B), DC / 4, 0, st>>>(o_lat, lse, o_dst, lse_dst, n_h, plan->n_split);
        cudaCheck(cudaGetLastError());
    }
    return 0;
}

void mla_paged_decode_latent_cuda(float *o_lat, float *lse, const float *q_abs, const MlaPagedCache *c,
                                  const int32_t *block_tables, int max_pages, const int *lens, int B,
                                  int n_h, float scale) {
    mla_paged_decode_latent_cuda_variant(o_lat, lse, q_abs, c, block_tables, max_pages, lens, B, n_h, scale,
                                         env_variant());
}

void mla_paged_decode_latent_cuda_variant(float *o_lat, float *lse, const float *q_abs, const MlaPagedCache *c,
                                          const int32_t *block_tables, int max_pages, const int *lens, int B,
                                          int n_h, float scale, int variant) {
    if (c->d_c != DC || c->d_R != DR) {
        fprintf(stderr, "mla_paged_decode_latent_cuda: the kernel is built for d_c %d, d_R %d (got %d, %d)\n", DC, DR,
                c->d_c, c->d_R);
        exit(EXIT_FAILURE);
    }
    int max_len = 0;
    for (int i = 0; i < B; i++) max_len = lens[i] > max_len ? lens[i] : max_len;
    MlaDecodePlan plan;
    mla_decode_plan_variant(&plan, B, n_h, max_len, variant);
    size_t pool_bytes = (size_t)c->n_pages * MLA_PAGE * c->row_bytes, n_o = (size_t)B * n_h * DC;
    void *d_pool;
    float *d_q, *d_o, *d_lse, *d_work = NULL;
    int32_t *d_tab;
    int *d_lens;
    cudaCheck(cudaMalloc(&d_pool, pool_bytes));
    cudaCheck(cudaMalloc((void **)&d_q, sizeof(float) * (size_t)B * n_h * WIDTH));
    cudaCheck(cudaMalloc((void **)&d_o, sizeof(float) * n_o));
    cudaCheck(cudaMalloc((void **)&d_lse, sizeof(float) * (size_t)B * n_h));
    cudaCheck(cudaMalloc((void **)&d_tab, sizeof(int32_t) * (size_t)B * max_pages));
    cudaCheck(cudaMalloc((void **)&d_lens, sizeof(int) * B));
    if (plan.work_floats) cudaCheck(cudaMalloc((void **)&d_work, sizeof(float) * plan.work_floats));
    cudaCheck(cudaMemcpy(d_pool, c->data, pool_bytes, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(d_q, q_abs, sizeof(float) * (size_t)B * n_h * WIDTH, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(d_tab, block_tables, sizeof(int32_t) * (size_t)B * max_pages, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(d_lens, lens, sizeof(int) * B, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemset(d_o, 0xff, sizeof(float) * n_o)); /* NaN: every output must be written */
    cudaCheck(cudaMemset(d_lse, 0xff, sizeof(float) * (size_t)B * n_h));
    if (mla_decode_cuda(d_o, d_lse, d_q, d_pool, c->format, d_tab, max_pages, d_lens, B, n_h, scale, &plan, d_work,
                        NULL)) {
        fprintf(stderr, "mla_paged_decode_latent_cuda: format %d is not on the GPU (bf16, fp8 are)\n", (int)c->format);
        exit(EXIT_FAILURE);
    }
    cudaCheck(cudaDeviceSynchronize());
    cudaCheck(cudaMemcpy(o_lat, d_o, sizeof(float) * n_o, cudaMemcpyDeviceToHost));
    if (lse) cudaCheck(cudaMemcpy(lse, d_lse, sizeof(float) * (size_t)B * n_h, cudaMemcpyDeviceToHost));
    cudaFree(d_pool); cudaFree(d_q); cudaFree(d_o); cudaFree(d_lse); cudaFree(d_tab); cudaFree(d_lens);
    cudaFree(d_work);
}
