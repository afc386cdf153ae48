/* kernels.cu - CUDA twins of rmsnorm, rope_rotate, mla_attend_absorbed, moe_gate and the FP8 codecs
 * and GEMM (host-pointer launchers, each checked against its C function); the rest of the forward
 * pass (matmul, the query/latent projections, naive attention, experts, embedding, lm_head, MTP) is
 * mirrored in model.cu, which also launches the kernels below. Not yet mirrored: fp8.c's block
 * quantization of weights (fp8_quant_block), the --fp8-gemm path in the forward, sampling (top-p).
 *
 * Each `name_cuda` here computes what `name` computes in ops.c, rope.c, mla.c, moe.c or fp8.c, with
 * the same arguments (kernels.h has the declarations and the two exceptions). The kernels are
 * written to be read next to their C twin: the same steps in the same order, one GPU idea each.
 * Teaching first, correctness second, speed third: a FlashMLA or DeepGEMM is many times faster;
 * notes/cuda.md says what they do that these do not, and has the measured errors and timings.
 *
 * Launchers take HOST pointers: copy in, launch, copy out (synchronous). CUDA errors are fatal.
 *
 * Where the GPU adds numbers in another order than the C code, the result can differ in the last
 * bits; tests/test_kernels.cu checks each twin with max|gpu - cpu| / max|cpu| against:
 *   rmsnorm               1e-5   the sum of squares is a tree over the block, not a loop
 *   rope_rotate           1e-5   CUDA's cosf/sinf are within 2 ulp (glibc's within 1)
 *   mla_attend_absorbed   1e-4   dot products are warp trees, not dot_f32's 8 lanes; softmax sum
 *   moe_gate              1e-5   weights (expf, the softmax sum); the chosen indices exactly equal
 *   fp8_* (all of them)   exact  one division and a correctly rounded cast; exact inner sums
 * nvcc also contracts a * b + c into one fused multiply-add (one rounding instead of two) where the
 * host compiler does not; where bits must match, __fmul_rn / __fadd_rn forbid it.
 */
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels.cuh"

/* The plumbing (cudaCheck, device_copy, host_copy, warp and block reductions) is kernels.cuh's. */

/* ---- rmsnorm (ops.c) --------------------------------------------------------------------------- */

/* One block per row t: the threads share the sum of squares, then each scales its own elements.
 * Rows of d floats at out_stride / x_stride (d, d in the twin; the device forward also norms the
 * latent inside a cache row and writes the MTP's halves of [enorm(e) ; hnorm(h)]). */
__global__ void rmsnorm_kernel(float *out, const float *x, const float *w, int d, int out_stride,
                               int x_stride, float eps) {
    __shared__ float red[32];
    rmsnorm_row(out + (size_t)blockIdx.x * out_stride, x + (size_t)blockIdx.x * x_stride, w, d, eps, red);
}

void rmsnorm_cuda(float *out, const float *x, const float *w, int n, int d, float eps) {
    if (n <= 0 || d <= 0) return;
    size_t bytes = sizeof(float) * (size_t)n * d;
    float *d_x = (float *)device_copy(x, bytes), *d_out = (float *)device_copy(NULL, bytes);
    float *d_w = (float *)device_copy(w, sizeof(float) * d);
    rmsnorm_kernel<<<n, THREADS>>>(d_out, d_x, d_w, d, d, d, eps);
    host_copy(out, d_out, bytes);
    cudaFree(d_x); cudaFree(d_out); cudaFree(d_w);
}

/* ---- rope_rotate (rope.c) ---------------------------------------------------------------------- */

/* One thread per (vector i, pair j): rotate the pair (kernels.cuh's rope_pair). Pairs never
 * overlap, so the rotation in place needs no synchronization. blockIdx.y = token t: the vectors
 * at x + t * token_stride rotate at position pos + t (the twin: one token; the device forward: a
 * whole chunk in one launch, as model.c's loop over t). */
__global__ void rope_rotate_kernel(float *x, int n, int stride, int token_stride, int d_R, int pos,
                                   const int *pos_dev, const float *inv_freq, float attn_factor, int interleaved) {
    int half = d_R / 2, k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n * half) return;
    int i = k / half, j = k % half;
    x += (size_t)blockIdx.y * token_stride;
    pos += blockIdx.y + (pos_dev ? *pos_dev : 0); /* the device forward's position lives on the device */
    rope_pair(x + (size_t)i * stride, j, d_R, pos, inv_freq, attn_factor, interleaved);
}

void rope_rotate_cuda(float *x, int n, int stride, int d_R, int pos, const float *inv_freq,
                      float attn_factor, int interleaved) {
    if (n <= 0 || d_R < 2) return;
    size_t span = sizeof(float) * ((size_t)(n - 1) * stride + d_R); /* first to last touched float */
    float *d_x = (float *)device_copy(x, span);
    float *d_f = (float *)device_copy(inv_freq, sizeof(float) * (d_R / 2));
    int work = n * (d_R / 2);
    rope_rotate_kernel<<<(work + THREADS - 1) / THREADS, THREADS>>>(d_x, n, stride, 0, d_R, pos, NULL, d_f,
                                                                    attn_factor, interleaved);
    host_copy(x, d_x, span);
    cudaFree(d_x); cudaFree(d_f);
}

/* ---- mla_attend_absorbed (mla.c) --------------------------------------------------------------- */

/* One block per (head h, query t), the steps of mla.c's attend_absorbed_small:
 *   1. q_lat = W_UK^T q_nope        thread c owns q_lat[c], sums over j in order (as the C loop)
 *   2. p[s] = (q_lat . c_s + q_pe . k_pe_s) * scale, s <= pos0 + t     one warp per cached row
 *   3. p = softmax(p)               block max, block sum
 *   4. o_lat = sum_s p[s] c_s       thread c owns o_lat[c], sums over s in order (as the C loop)
 *   5. out_h = W_UV o_lat           one warp per output
 * Steps 1 and 4 read W_UK and the cache row by row with consecutive threads on consecutive floats
 * (coalesced). The scores live in global memory (scratch [T, n_h, L]), so any L fits; every block
 * reads the whole cache once, from L2 after the first block: FlashMLA instead splits the cache
 * over blocks and uses tensor cores (notes/cuda.md). Shared memory: q_lat, o_lat [d_c], red [32]. */
__global__ void mla_attend_absorbed_kernel(float *out, const float *q, const float *cache,
                                           const float *kv_b, float *scratch, int T, int pos0,
                                           int n_h, int d_c, int d_R, int nope, int v_dim,
                                           float scale) {
    extern __shared__ float smem[];
    float *q_lat = smem, *o_lat = smem + d_c, *red = smem + 2 * d_c;
    int h = blockIdx.x, t = blockIdx.y, L = pos0 + T, width = d_c + d_R, qk = nope + d_R;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    const float *q_nope = q + (size_t)t * n_h * qk + (size_t)h * qk, *q_pe = q_nope + nope;
    const float *w_uk = kv_b + (size_t)h * (nope + v_dim) * d_c, *w_uv = w_uk + (size_t)nope * d_c;
    float *p = scratch + ((size_t)t * n_h + h) * L;
    int visible = pos0 + t + 1; /* causal: rows 0 .. pos0 + t */

    for (int c = threadIdx.x; c < d_c; c += blockDim.x) { /* 1 */
        float acc = 0.0f;
        for (int j = 0; j < nope; j++) acc += q_nope[j] * w_uk[(size_t)j * d_c + c];
        q_lat[c] = acc;
    }
    __syncthreads();
    for (int s = warp; s < visible; s += n_warps) { /* 2: C uses dot_f32; here a warp tree */
        const float *row = cache + (size_t)s * width;
        float a = 0.0f, b = 0.0f;
        for (int c = lane; c < d_c; c += 32) a += q_lat[c] * row[c];
        for (int c = lane; c < d_R; c += 32) b += q_pe[c] * row[d_c + c];
        a = warp_sum(a);
        b = warp_sum(b);
        if (lane == 0) p[s] = (a + b) * scale;
    }
    __syncthreads(); /* makes this block's global writes to p visible to all its threads */
    float mx = -INFINITY; /* 3: as ops.c's softmax, the sum as a tree */
    for (int s = threadIdx.x; s < visible; s += blockDim.x) mx = fmaxf(mx, p[s]);
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int s = threadIdx.x; s < visible; s += blockDim.x) {
        p[s] = expf(p[s] - mx);
        sum += p[s];
    }
    sum = block_sum(sum, red);
    for (int s = threadIdx.x; s < visible; s += blockDim.x) p[s] /= sum;
    __syncthreads();
    for (int c = threadIdx.x; c < d_c; c += blockDim.x) { /* 4 */
        float acc = 0.0f;
        for (int s = 0; s < visible; s++) acc += p[s] * cache[(size_t)s * width + c];
        o_lat[c] = acc;
    }
    __syncthreads();
    float *o = out + (size_t)t * n_h * v_dim + (size_t)h * v_dim;
    for (int i = warp; i < v_dim; i += n_warps) { /* 5 */
        float acc = 0.0f;
        for (int c = lane; c < d_c; c += 32) acc += w_uv[(size_t)i * d_c + c] * o_lat[c];
        acc = warp_sum(acc);
        if (lane == 0) o[i] = acc;
    }
}

void mla_attend_absorbed_cuda_dev(float *d_out, const float *d_q, const float *d_cache,
                                  const float *d_kv_b, float *d_scratch, int T, int pos0,
                                  const MlaDims *m) {
    dim3 grid(m->n_heads, T);
    size_t smem = sizeof(float) * (2 * (size_t)m->kv_lora_rank + 32);
    mla_attend_absorbed_kernel<<<grid, THREADS, smem>>>(d_out, d_q, d_cache, d_kv_b, d_scratch, T,
                                                        pos0, m->n_heads, m->kv_lora_rank, m->rope,
                                                        m->nope, m->v, m->softmax_scale);
}

void mla_attend_absorbed_cuda(float *out, const float *q, const float *cache, int T, int pos0,
                              const MlaWeights *w, const MlaDims *m) {
    if (T <= 0) return;
    int n_h = m->n_heads, d_c = m->kv_lora_rank, L = pos0 + T;
    size_t n_q = (size_t)T * n_h * (m->nope + m->rope), n_cache = (size_t)L * mla_cache_width(m);
    size_t n_out = (size_t)T * n_h * m->v, n_w = (size_t)n_h * (m->nope + m->v) * d_c;
    float *w_f32 = (float *)malloc(sizeof(float) * n_w); /* kv_b in FP32, whatever its dtype */
    if (!w_f32) { fprintf(stderr, "mla_attend_absorbed_cuda: out of host memory\n"); exit(EXIT_FAILURE); }
    tensor_rows_f32(w_f32, &w->kv_b, 0, n_h * (m->nope + m->v));
    float *d_q = (float *)device_copy(q, sizeof(float) * n_q);
    float *d_cache = (float *)device_copy(cache, sizeof(float) * n_cache);
    float *d_w = (float *)device_copy(w_f32, sizeof(float) * n_w);
    float *d_out = (float *)device_copy(NULL, sizeof(float) * n_out);
    float *d_scratch = (float *)device_copy(NULL, sizeof(float) * (size_t)T * n_h * L);
    mla_attend_absorbed_cuda_dev(d_out, d_q, d_cache, d_w, d_scratch, T, pos0, m);
    host_copy(out, d_out, sizeof(float) * n_out);
    cudaFree(d_q); cudaFree(d_cache); cudaFree(d_w); cudaFree(d_out); cudaFree(d_scratch);
    free(w_f32);
}

/* ---- moe_gate (moe.c) -------------------------------------------------------------------------- */

/* moe.c's top_k_indices, unchanged, for one thread: indices of the k largest of v [n], descending,
 * ties to the lower index (the first untaken index wins unless a later one is strictly larger). */
static __device__ void top_k_seq(int *out, const float *v, int n, int k) {
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < n; i++) {
            int taken = 0;
            for (int p = 0; p < j; p++) taken |= out[p] == i;
            if (!taken && (best < 0 || v[i] > v[best])) best = i;
        }
        out[j] = best;
    }
}

/* Does (va, ia) come before (vb, ib)? Larger value first, then lower index; index -1 = nothing. */
static __device__ bool ranks_before(float va, int ia, float vb, int ib) {
    if (ia < 0) return false;
    if (ib < 0) return true;
    return va > vb || (va == vb && ia < ib);
}

/* The same choice as top_k_seq's inner loop, made by the whole block: each thread scans its
 * strided experts, a warp butterfly merges lanes, one pass over the warps' winners merges warps.
 * The order is total (value, then index), so every thread ends with the same, C's, answer. */
static __device__ int block_argmax(const float *v, const int *taken, int n, float *red_v, int *red_i) {
    float bv = -INFINITY;
    int bi = -1;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        if (!taken[i] && ranks_before(v[i], i, bv, bi)) { bv = v[i]; bi = i; }
    for (int off = 16; off > 0; off /= 2) {
        float ov = __shfl_xor_sync(FULL_MASK, bv, off);
        int oi = __shfl_xor_sync(FULL_MASK, bi, off);
        if (ranks_before(ov, oi, bv, bi)) { bv = ov; bi = oi; }
    }
    __syncthreads();
    if (threadIdx.x % 32 == 0) { red_v[threadIdx.x / 32] = bv; red_i[threadIdx.x / 32] = bi; }
    __syncthreads();
    for (int w = 0; w < (int)blockDim.x / 32; w++)
        if (ranks_before(red_v[w], red_i[w], bv, bi)) { bv = red_v[w]; bi = red_i[w]; }
    return bi;
}

/* One block per token: scores, biased choice, group limit, top-k, weights; moe.c's steps. */
__global__ void moe_gate_kernel(int *idx_all, float *weights_all, const float *logits_all,
                                const float *bias, MoeGate g) {
    __shared__ float scores[MOE_MAX_EXPERTS], choice[MOE_MAX_EXPERTS], red_v[32];
    __shared__ int taken[MOE_MAX_EXPERTS], red_i[32], chosen[MOE_MAX_TOPK];
    int n = g.n_experts, tid = threadIdx.x;
    const float *logits = logits_all + (size_t)blockIdx.x * n;
    int *idx = idx_all + (size_t)blockIdx.x * g.top_k;
    float *weights = weights_all + (size_t)blockIdx.x * g.top_k;

    if (g.scoring == SCORE_SOFTMAX) { /* ops.c's softmax; the sum is a tree here */
        float mx = -INFINITY, sum = 0.0f;
        for (int i = tid; i < n; i += blockDim.x) mx = fmaxf(mx, logits[i]);
        mx = block_max(mx, red_v);
        for (int i = tid; i < n; i += blockDim.x) {
            scores[i] = logits[i] == -INFINITY ? 0.0f : expf(logits[i] - mx);
            sum += scores[i];
        }
        sum = block_sum(sum, red_v);
        for (int i = tid; i < n; i += blockDim.x) scores[i] /= sum;
    } else {
        for (int i = tid; i < n; i += blockDim.x) scores[i] = 1.0f / (1.0f + expf(-logits[i]));
    }
    for (int i = tid; i < n; i += blockDim.x) {
        choice[i] = scores[i] + (bias && g.method == TOPK_NOAUX_TC ? bias[i] : 0.0f);
        taken[i] = 0;
    }
    __syncthreads();

    if (g.n_group > 1 && g.method != TOPK_GREEDY) {
        /* Group scores (thread gi, group gi), then thread 0 keeps the topk_group best groups and
         * marks the other groups' experts taken: excluded, as -inf is in moe.c. */
        __shared__ float group_score[MOE_MAX_EXPERTS];
        __shared__ int keep[MOE_MAX_TOPK];
        int per = n / g.n_group;
        for (int gi = tid; gi < g.n_group; gi += blockDim.x) {
            const float *c = (g.method == TOPK_NOAUX_TC ? choice : scores) + gi * per;
            int best2[2];
            if (g.method == TOPK_NOAUX_TC) {
                top_k_seq(best2, c, per, per < 2 ? per : 2);
                group_score[gi] = c[best2[0]] + (per < 2 ? 0.0f : c[best2[1]]);
            } else {
                top_k_seq(best2, c, per, 1);
                group_score[gi] = c[best2[0]];
            }
        }
        __syncthreads();
        if (tid == 0) {
            top_k_seq(keep, group_score, g.n_group, g.topk_group);
            for (int gi = 0; gi < g.n_group; gi++) {
                int kept = 0;
                for (int j = 0; j < g.topk_group; j++) kept |= keep[j] == gi;
                if (!kept)
                    for (int i = gi * per; i < (gi + 1) * per; i++) choice[i] = -INFINITY;
            }
        }
        __syncthreads();
    }
    /* top_k experts by choice, one block-wide argmax each. An expert of an excluded group has
     * choice -inf and can only be picked when fewer than top_k others remain, as in moe.c. */
    for (int j = 0; j < g.top_k; j++) {
        int best = block_argmax(choice, taken, n, red_v, red_i);
        if (tid == 0) { chosen[j] = best; taken[best] = 1; }
        __syncthreads();
    }
    if (tid == 0) { /* the weights: unbiased scores, summed in j order as moe.c does */
        float sum = 0.0f;
        for (int j = 0; j < g.top_k; j++) {
            idx[j] = chosen[j];
            weights[j] = scores[chosen[j]];
            sum += weights[j];
        }
        for (int j = 0; j < g.top_k; j++) {
            if (g.norm_topk_prob) weights[j] /= sum + 1e-20f;
            weights[j] *= g.routed_scaling_factor;
        }
    }
}

void moe_gate_cuda(int *idx, float *weights, const float *logits, const float *bias,
                   const MoeGate *g, int T) {
    if (T <= 0) return;
    if (g->n_experts > MOE_MAX_EXPERTS || g->top_k > MOE_MAX_TOPK || g->topk_group > MOE_MAX_TOPK ||
        g->top_k > g->n_experts) {
        fprintf(stderr, "moe_gate_cuda: n_experts %d, top_k %d, topk_group %d: beyond moe.h's limits\n",
                g->n_experts, g->top_k, g->topk_group);
        exit(EXIT_FAILURE);
    }
    size_t n_sel = (size_t)T * g->top_k;
    float *d_logits = (float *)device_copy(logits, sizeof(float) * (size_t)T * g->n_experts);
    float *d_bias = bias ? (float *)device_copy(bias, sizeof(float) * g->n_experts) : NULL;
    int *d_idx = (int *)device_copy(NULL, sizeof(int) * n_sel);
    float *d_w = (float *)device_copy(NULL, sizeof(float) * n_sel);
    moe_gate_kernel<<<T, THREADS>>>(d_idx, d_w, d_logits, d_bias, *g);
    host_copy(idx, d_idx, sizeof(int) * n_sel);
    host_copy(weights, d_w, sizeof(float) * n_sel);
    cudaFree(d_logits); cudaFree(d_bias); cudaFree(d_idx); cudaFree(d_w);
}

/* ---- FP8 codecs and block (de)quantization (fp8.c) --------------------------------------------- */

/* E4M3 code -> float, by the hardware (cvt to half, exact; then half -> float, exact). */
static __device__ float e4m3_decode(uint8_t code) {
    __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)code, __NV_E4M3);
    return __half2float(__half(h));
}

/* float -> E4M3 code: round to nearest even, saturate to +-448 (cvt.rn.satfinite.e4m3x2.f32 on
 * sm_89 and newer), which is fp8_e4m3_encode(x, FP8_SATURATE) bit for bit except for NaN: the
 * hardware returns the canonical 0x7F for every NaN, fp8.c keeps the sign (0xFF for -NaN). */
static __device__ uint8_t e4m3_encode(float x) {
    if (isnan(x)) return signbit(x) ? 0xFF : 0x7F;
    return (uint8_t)__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
}

__global__ void fp8_e4m3_encode_kernel(uint8_t *q, const float *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) q[i] = e4m3_encode(x[i]);
}

void fp8_e4m3_encode_cuda(uint8_t *q, const float *x, int n) {
    if (n <= 0) return;
    float *d_x = (float *)device_copy(x, sizeof(float) * (size_t)n);
    uint8_t *d_q = (uint8_t *)device_copy(NULL, (size_t)n);
    fp8_e4m3_encode_kernel<<<(n + THREADS - 1) / THREADS, THREADS>>>(d_q, d_x, (size_t)n);
    host_copy(q, d_q, (size_t)n);
    cudaFree(d_x); cudaFree(d_q);
}

/* One thread per element: w = decode(q) * scale_inv of its block. One multiplication: exact. */
__global__ void fp8_dequant_block_kernel(float *w, const uint8_t *q, const float *scale_inv,
                                         int rows, int cols, int block_r, int block_c) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * cols) return;
    int r = (int)(i / cols), c = (int)(i % cols), nbc = (cols + block_c - 1) / block_c;
    w[i] = e4m3_decode(q[i]) * scale_inv[(size_t)(r / block_r) * nbc + c / block_c];
}

void fp8_dequant_block_cuda(float *w, const uint8_t *q, const float *scale_inv, int rows, int cols,
                            int block_r, int block_c) {
    if (rows <= 0 || cols <= 0) return;
    size_t n = (size_t)rows * cols;
    size_t n_s = (size_t)((rows + block_r - 1) / block_r) * ((cols + block_c - 1) / block_c);
    uint8_t *d_q = (uint8_t *)device_copy(q, n);
    float *d_s = (float *)device_copy(scale_inv, sizeof(float) * n_s);
    float *d_w = (float *)device_copy(NULL, sizeof(float) * n);
    fp8_dequant_block_kernel<<<(unsigned)((n + THREADS - 1) / THREADS), THREADS>>>(
        d_w, d_q, d_s, rows, cols, block_r, block_c);
    host_copy(w, d_w, sizeof(float) * n);
    cudaFree(d_q); cudaFree(d_s); cudaFree(d_w);
}

/* fp8.c's fp8_scale: amax / 448 in FP32 (a correctly rounded division, CUDA's default `/`). */
static __device__ float fp8_scale_dev(float amax, Fp8ScaleFmt fmt) {
    float s = amax / FP8_E4M3_MAX;
    if (!(s > 0)) return 1.0f;
    if (fmt == FP8_SCALE_UE8M0 && isfinite(s)) {
        int e;
        float f = frexpf(s, &e);
        s = ldexpf(1.0f, f == 0.5f ? e - 1 : e);
    }
    return s;
}

/* One block per (tile kb = blockIdx.x, row r = blockIdx.y): amax of the tile (a max is exact in
 * any order), the scale, then each thread quantizes its elements: the same bits as fp8.c. */
__global__ void fp8_quant_act_kernel(uint8_t *q, float *scale, const float *x, int cols, int tile,
                                     Fp8ScaleFmt fmt) {
    __shared__ float red[32];
    int r = blockIdx.y, c0 = blockIdx.x * tile, c1 = min(c0 + tile, cols);
    const float *xr = x + (size_t)r * cols;
    float amax = 0.0f;
    for (int c = c0 + threadIdx.x; c < c1; c += blockDim.x) amax = fmaxf(amax, fabsf(xr[c]));
    float s = fp8_scale_dev(block_max(amax, red), fmt);
    if (threadIdx.x == 0) scale[(size_t)r * gridDim.x + blockIdx.x] = s;
    for (int c = c0 + threadIdx.x; c < c1; c += blockDim.x) q[(size_t)r * cols + c] = e4m3_encode(xr[c] / s);
}

void fp8_quant_act_cuda(uint8_t *q, float *scale, const float *x, int rows, int cols, int tile,
                        Fp8ScaleFmt fmt) {
    if (rows <= 0 || cols <= 0) return;
    int n_tiles = (cols + tile - 1) / tile;
    size_t n = (size_t)rows * cols, n_s = (size_t)rows * n_tiles;
    float *d_x = (float *)device_copy(x, sizeof(float) * n);
    uint8_t *d_q = (uint8_t *)device_copy(NULL, n);
    float *d_s = (float *)device_copy(NULL, sizeof(float) * n_s);
    fp8_quant_act_kernel<<<dim3(n_tiles, rows), 128>>>(d_q, d_s, d_x, cols, tile, fmt);
    host_copy(q, d_q, n);
    host_copy(scale, d_s, sizeof(float) * n_s);
    cudaFree(d_x); cudaFree(d_q); cudaFree(d_s);
}

/* ---- fp8_gemm (fp8.c) -------------------------------------------------------------------------- */

/* fp8.c's fp8_acc_round: v rounded to 1 + man_bits significant bits. */
static __device__ double acc_round(double v, int man_bits, Fp8AccRound round) {
    if (v == 0 || !isfinite(v)) return v;
    int e;
    frexp(v, &e);
    double ulp = ldexp(1.0, e - 1 - man_bits);
    double n = v / ulp, r = trunc(n);
    if (round == FP8_ACC_NEAREST) {
        double rest = fabs(n - r);
        if (rest > 0.5 || (rest == 0.5 && fmod(r, 2.0) != 0)) r += n < 0 ? -1 : 1;
    }
    return r * ulp;
}

/* One warp per output y[m][n]. For each promotion interval (n_c elements of K, within one K-block)
 * the partial sum P of qx * qw, then out += (P * sx) * sw in FP32, in K order as fp8.c does.
 *   acc.man_bits == 0 (DeepSeek's kernel math): P is exact in FP64 whatever the order (fp8.c's
 *     argument: every product is a multiple of 2^-18 below 2^18), so the 32 lanes each sum a
 *     strided share and a butterfly adds them: the C loop's P, bit for bit.
 *   acc.man_bits > 0 (the tensor-core model): P is rounded after every addition, so the order is
 *     the result; lane 0 walks k in order alone.
 * __fmul_rn / __fadd_rn keep the promotion two roundings and an add, as in the C code. */
__global__ void fp8_gemm_kernel(float *y, const uint8_t *qx, const float *sx, const uint8_t *qw,
                                const float *sw, int M, int N, int K, int block_n, int block_k,
                                Fp8Accum acc) {
    size_t o = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (o >= (size_t)M * N) return; /* the whole warp leaves together */
    int m = (int)(o / N), n = (int)(o % N);
    const uint8_t *a = qx + (size_t)m * K, *b = qw + (size_t)n * K;
    int nkb = (K + block_k - 1) / block_k;
    int n_c = acc.n_c > 0 && acc.n_c < block_k ? acc.n_c : block_k;
    float out = 0.0f;
    for (int kb = 0; kb < nkb; kb++) {
        float s_a = sx[(size_t)m * nkb + kb], s_b = sw[(size_t)(n / block_n) * nkb + kb];
        int kb_end = min((kb + 1) * block_k, K);
        for (int k0 = kb * block_k; k0 < kb_end; k0 += n_c) {
            int k1 = min(k0 + n_c, kb_end);
            double part = 0;
            if (acc.man_bits > 0) {
                if (lane == 0)
                    for (int k = k0; k < k1; k++)
                        part = acc_round(part + (double)e4m3_decode(a[k]) * e4m3_decode(b[k]),
                                         acc.man_bits, acc.round);
            } else {
                for (int k = k0 + lane; k < k1; k += 32)
                    part += (double)e4m3_decode(a[k]) * e4m3_decode(b[k]);
                part = warp_sum_f64(part);
            }
            out = __fadd_rn(out, __fmul_rn(__fmul_rn((float)part, s_a), s_b));
        }
    }
    if (lane == 0) y[o] = out;
}

void fp8_gemm_cuda(float *y, const uint8_t *qx, const float *sx, const uint8_t *qw, const float *sw,
                   int M, int N, int K, int block_n, int block_k, Fp8Accum acc) {
    if (M <= 0 || N <= 0) return;
    size_t nkb = (size_t)(K + block_k - 1) / block_k, nbn = (size_t)(N + block_n - 1) / block_n;
    uint8_t *d_qx = (uint8_t *)device_copy(qx, (size_t)M * K);
    uint8_t *d_qw = (uint8_t *)device_copy(qw, (size_t)N * K);
    float *d_sx = (float *)device_copy(sx, sizeof(float) * M * nkb);
    float *d_sw = (float *)device_copy(sw, sizeof(float) * nbn * nkb);
    float *d_y = (float *)device_copy(NULL, sizeof(float) * (size_t)M * N);
    size_t warps = (size_t)M * N, per_block = THREADS / 32;
    fp8_gemm_kernel<<<(unsigned)((warps + per_block - 1) / per_block), THREADS>>>(
        d_y, d_qx, d_sx, d_qw, d_sw, M, N, K, block_n, block_k, acc);
    host_copy(y, d_y, sizeof(float) * (size_t)M * N);
    cudaFree(d_qx); cudaFree(d_qw); cudaFree(d_sx); cudaFree(d_sw); cudaFree(d_y);
}
