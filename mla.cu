/* mla.cu - mla.c on the GPU: the query and latent projections (the latent written straight into
 * its cache rows), and the naive attention form with cuBLAS; the absorbed form is kernels.cu's. */
#include "device.cuh"

/* q [T, n_h (nope + d_R)] from d->h; with in_norm, d->h = rmsnorm(d->x; in_norm) first, fused into
 * the first GEMV (the layer's attention norm; the twin passes NULL: its d->h comes normed). */
void mla_query_cuda(Dev *d, const DevLayer &L, const MlaDims *m, int T, const float *in_norm, float eps) {
    float *out = m->q_lora_rank ? d->q_scratch : d->q;
    const DevTensor &W = m->q_lora_rank ? L.q_a : L.q;
    if (in_norm) matmul_normed_cuda(d, out, d->h, d->x, in_norm, eps, W, T, 0);
    else matmul_cuda(d, out, d->h, W, T, 0);
    if (m->q_lora_rank == 0) return;
    rmsnorm_cuda_dev(d->q_scratch, d->q_scratch, L.q_a_norm, T, m->q_lora_rank, m->q_lora_rank, m->q_lora_rank, m->eps);
    matmul_cuda(d, d->q, d->q_scratch, L.q_b, T, 0);
}

/* latent rows [T, d_c + d_R] (the staging rows d->lat), the latent part normed; rope and
 * store_rows_kernel then put them into the cache at rows pos.. */
void mla_latent_cuda(Dev *d, float *rows, const DevLayer &L, const MlaDims *m, int T) {
    int width = mla_cache_width(m);
    matmul_cuda(d, rows, d->h, L.kv_a, T, 0);
    rmsnorm_cuda_dev(rows, rows, L.kv_a_norm, T, m->kv_lora_rank, width, width, m->eps);
}

/* dst[(pos + t) * width + c] = src[t * width + c] for the T = gridDim.x rows, pos = *pos_dev: the new
 * cache rows (and the MTP's hidden states) stored at a position that lives on the device. */
__global__ void store_rows_kernel(float *dst, const float *src, int width, const int *pos_dev) {
    float *row = dst + (size_t)(*pos_dev + blockIdx.x) * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) row[c] = src[(size_t)blockIdx.x * width + c];
}

/* The naive form (mla.c's mla_attend_naive), per head with cuBLAS: kv [L, nope+v] = C . W_h^T,
 * scores = q_nope . K^T + q_pe . K_pe^T, causal softmax, out_h = P . V. */
__global__ void causal_softmax_kernel(float *scores, int L, int pos0, float scale) {
    __shared__ float red[32];
    float *row = scores + (size_t)blockIdx.x * L;
    int visible = pos0 + blockIdx.x + 1;
    float mx = -INFINITY;
    for (int s = threadIdx.x; s < visible; s += blockDim.x) mx = fmaxf(mx, row[s] * scale);
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int s = threadIdx.x; s < L; s += blockDim.x) {
        float p = s < visible ? expf(row[s] * scale - mx) : 0.0f;
        row[s] = p;
        sum += p;
    }
    sum = block_sum(sum, red);
    for (int s = threadIdx.x; s < L; s += blockDim.x) row[s] /= sum;
}

void mla_attend_naive_cuda(Dev *d, const float *cache, const DevLayer &L, const MlaDims *m, int T, int pos) {
    int d_c = m->kv_lora_rank, qk = m->nope + m->rope, width = mla_cache_width(m), Lk = pos + T;
    int q_stride = m->n_heads * qk, out_stride = m->n_heads * m->v, nv = m->nope + m->v;
    const float one = 1.0f, zero = 0.0f;
    float *kv = d->widen; /* [L, nope+v] */
    for (int hh = 0; hh < m->n_heads; hh++) {
        const float *w_h = L.kv_b_f32 + (size_t)hh * nv * d_c;
        /* column-major: kv^T [nv, L] = W_h [nv, d_c] . C^T */
        blas_check(d, cublasSgemm(d->blas, CUBLAS_OP_T, CUBLAS_OP_N, nv, Lk, d_c, &one, w_h, d_c, cache, width, &zero, kv, nv));
        const float *q_nope = d->q + (size_t)hh * qk, *q_pe = q_nope + m->nope;
        /* scores^T [L, T] = K_nope [L, nope] . q_nope^T, then += K_pe . q_pe^T */
        blas_check(d, cublasSgemm(d->blas, CUBLAS_OP_T, CUBLAS_OP_N, Lk, T, m->nope, &one, kv, nv, q_nope, q_stride, &zero,
                                  d->scores, Lk));
        blas_check(d, cublasSgemm(d->blas, CUBLAS_OP_T, CUBLAS_OP_N, Lk, T, m->rope, &one, cache + d_c, width, q_pe, q_stride,
                                  &one, d->scores, Lk));
        causal_softmax_kernel<<<T, THREADS>>>(d->scores, Lk, pos, m->softmax_scale);
        /* out_h^T [v, T] = V^T [v, L] . P^T [L, T] */
        blas_check(d, cublasSgemm(d->blas, CUBLAS_OP_N, CUBLAS_OP_N, m->v, T, Lk, &one, kv + m->nope, nv, d->scores, Lk, &zero,
                                  d->attn + (size_t)hh * m->v, out_stride));
    }
}

/* The latent rows' last steps, fused (mla.c's mla_latent norm, rope_rotate on the rope key, the
 * store into the cache; the same bits as rmsnorm_kernel, rope_rotate_kernel and store_rows_kernel
 * one after another): block t norms the d_c latent values of lat[t] (kernels.cuh's rmsnorm_row),
 * rotates its d_R rope values at position pos + t (rope_pair) and writes the row to cache row
 * pos + t, pos = *rope.pos_dev. lat [T, d_c + d_R] is left as it was. */
__global__ void mla_latent_store_kernel(float *cache, const float *lat, const float *norm_w, int d_c, int d_R, float eps,
                                        DevRope rope) {
    __shared__ float red[32];
    int t = blockIdx.x, width = d_c + d_R, pos = *rope.pos_dev + t;
    const float *src = lat + (size_t)t * width;
    float *row = cache + (size_t)pos * width;
    rmsnorm_row(row, src, norm_w, d_c, eps, red);
    for (int i = threadIdx.x; i < d_R; i += blockDim.x) row[d_c + i] = src[d_c + i];
    __syncthreads(); /* the block's writes to the row are visible to the block after the barrier */
    for (int j = threadIdx.x; j < d_R / 2; j += blockDim.x)
        rope_pair(row + d_c, j, d_R, pos, rope.inv_freq, rope.attn_factor, rope.interleaved);
}

/* kv_a's GEMV into the staging rows d->lat, then the fused norm, rope and store: cache rows pos ..
 * pos + T - 1 of one layer. */
void mla_latent_store_cuda(Dev *d, float *cache, const DevLayer &L, const MlaDims *m, int T, const DevRope &rope) {
    matmul_cuda(d, d->lat, d->h, L.kv_a, T, 0);
    mla_latent_store_kernel<<<T, THREADS>>>(cache, d->lat, L.kv_a_norm, m->kv_lora_rank, m->rope, m->eps, rope);
}

/* ---- the absorbed form for decode (T <= SMALL_BATCH): split over the cached rows ------------------
 * mla.c's mla_attend_absorbed, the same five steps, parallel where kernels.cu's one block per (head,
 * query) is serial (notes/cuda.md, section 4). Three launches:
 *   1. q_lat[t][h] = W_UK[h]^T q_nope[t][h]        mla_absorb_q_kernel: a block per (128 columns, head);
 *      (in the forward, the same launch rotates q_pe: rope_rotate on the query's rope part)
 *   2. per chunk k of query t's visible rows, HG heads at a time, an online softmax over tiles:
 *        m_k = max_s score_s,  l_k = sum_s exp(score_s - m_k),  o_k = sum_s exp(score_s - m_k) c_s
 *                                                  mla_split_kernel: a block per (chunk, query, HG heads)
 *   3. the chunks merged by their log-sum-exp (FlashMLA's split-KV combine), then W_UV:
 *        m = max_k m_k,  o_lat = sum_k exp(m_k - m) o_k / sum_k exp(m_k - m) l_k
 *        out[t][h] = W_UV[h] o_lat[t][h]           mla_merge_uv_kernel: a block per (head, 32 rows of
 *                                                  W_UV), each merging its head's chunks for itself
 * W_UK and W_UV are read at their stored dtype (widened exactly, as tensor_rows_f32 does, for W_UK;
 * W_UV through the GEMV's warp_dots), not the FP32 copy that kernels.cu's kernel reads. The chunks of
 * query t depend only on its visible length pos0 + t + 1, never on T, so batch invariance (ops.h)
 * holds: the T = 2 verify of --mtp gives each token the bits the T = 1 step gives it.
 * Where the order differs from C: q_lat sums j in 8 partials of consecutive j (C: j in order);
 * scores are warp trees; the softmax is online over tiles of 16 rows and merged over chunks (C: one
 * max, one sum, in order); o_lat is summed per chunk, then over chunks. Tolerance 1e-4, as the twin's.
 * Why this shape (notes/cuda.md, section 10): at batch 1 and a short cache the step is latency,
 * not bytes; every block's serial chain is kept short (HG = 4 heads, a warp's scores 8 rows). */

/* Rows per chunk for a query that sees vis rows: a multiple of MLA_TILE, at most MLA_SPLITS chunks
 * (the launcher sizes its grid with the same formula). */
static __device__ __forceinline__ int mla_chunk_rows(int vis) {
    int r = (vis + MLA_SPLITS - 1) / MLA_SPLITS;
    return (r + MLA_TILE - 1) / MLA_TILE * MLA_TILE;
}

/* Four consecutive weights W[r][c..c+3] times their block scale (exact, as w_at), one load where the
 * row allows it (c % 4 == 0, cols % 4 == 0, the four in one scale block). */
static __device__ __forceinline__ bool load4_vec_ok(const DevTensor &W, int c) {
    return W.cols % 4 == 0 && c + 3 < W.cols && (!W.scale || W.block_c % 4 == 0);
}
template <int DT>
static __device__ __forceinline__ void load4_vec(float *w, const DevTensor &W, int r, int c);
template <int DT>
static __device__ __forceinline__ void load4(float *w, const DevTensor &W, int r, int c) {
    if (!load4_vec_ok(W, c)) {
        for (int k = 0; k < 4; k++) w[k] = c + k < W.cols ? w_at_dt(W, (DType)DT, r, c + k) : 0.0f;
        return;
    }
    load4_vec<DT>(w, W, r, c);
}
/* load4 where load4_vec_ok holds: no branch, so an unrolled loop's loads are in flight together */
template <int DT>
static __device__ __forceinline__ void load4_vec(float *w, const DevTensor &W, int r, int c) {
    size_t i = (size_t)r * W.cols + c;
    if (DT == DT_F32) {
        float4 a = ((const float4 *)W.data)[i / 4];
        w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w;
    } else if (DT == DT_BF16) {
        uint2 u = ((const uint2 *)W.data)[i / 4];
        w[0] = __uint_as_float(u.x << 16); w[1] = __uint_as_float(u.x & 0xffff0000u);
        w[2] = __uint_as_float(u.y << 16); w[3] = __uint_as_float(u.y & 0xffff0000u);
    } else if (DT == DT_F16) {
        uint2 u = ((const uint2 *)W.data)[i / 4];
        float2 a = __half22float2(*(__half2 *)&u.x), b = __half22float2(*(__half2 *)&u.y);
        w[0] = a.x; w[1] = a.y; w[2] = b.x; w[3] = b.y;
    } else {
        uint32_t u = ((const uint32_t *)W.data)[i / 4];
        float s = W.scale ? scale_at(W, r, c) : 1.0f;
#pragma unroll
        for (int k = 0; k < 2; k++) {
            __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(u >> (16 * k)),
                                                       DT == DT_F8_E5M2 ? __NV_E5M2 : __NV_E4M3);
            float2 f = __half22float2(*(__half2 *)&h);
            w[2 * k] = W.scale ? f.x * s : f.x;
            w[2 * k + 1] = W.scale ? f.y * s : f.y;
        }
    }
}

/* 1. q_lat [T, n_h, d_c] from q [T, n_h, nope + d_R]. Lane l owns columns c0 + 4l .. c0 + 4l + 3;
 * warp w sums its slice of consecutive j, [w J, (w + 1) J), J = ceil(nope / 8); the 8 warps'
 * partials are added in warp order. With rope.inv_freq, the blocks of column slab 0 also rotate
 * head h's q_pe at position pos0 + t (rope_pair: rope_rotate_kernel's bits). */
template <int DT>
__global__ void mla_absorb_q_kernel(float *q_lat, float *q, DevTensor kv_b, int T, int n_h, int d_c, int nope,
                                    int d_R, int v_dim, DevRope rope) {
    __shared__ float part[THREADS / 32][SMALL_BATCH][128];
    __shared__ float qn[SMALL_BATCH][MLA_MAX_NOPE];
    int h = blockIdx.y, lane = threadIdx.x % 32, warp = threadIdx.x / 32, c0 = blockIdx.x * 128, qk = nope + d_R;
    int c = c0 + 4 * lane, J = (nope + THREADS / 32 - 1) / (THREADS / 32), j0 = warp * J, j1 = min(j0 + J, nope);
    for (int i = threadIdx.x; i < T * nope; i += blockDim.x) qn[i / nope][i % nope] = q[((size_t)(i / nope) * n_h + h) * qk + i % nope];
    __syncthreads();
    float acc[SMALL_BATCH][4];
#pragma unroll
    for (int t = 0; t < SMALL_BATCH; t++) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.0f;
    auto rows = [&](auto vec) { /* W_UK[h] row j: kv_b's rows interleave nope and v per head */
#pragma unroll 16 /* V3's J = 16: the slice's loads in flight together (the branch-free load4_vec) */
        for (int j = j0; j < j1; j++) {
            float w[4];
            if (decltype(vec)::value) load4_vec<DT>(w, kv_b, h * (nope + v_dim) + j, c);
            else load4<DT>(w, kv_b, h * (nope + v_dim) + j, c);
#pragma unroll
            for (int t = 0; t < SMALL_BATCH; t++) {
                if (t >= T) break;
                float a = qn[t][j];
                acc[t][0] += a * w[0]; acc[t][1] += a * w[1]; acc[t][2] += a * w[2]; acc[t][3] += a * w[3];
            }
        }
    };
    if (c < d_c && load4_vec_ok(kv_b, c)) rows(DtypeConst<1>());
    else if (c < d_c) rows(DtypeConst<0>());
#pragma unroll
    for (int t = 0; t < SMALL_BATCH; t++)
#pragma unroll
        for (int k = 0; k < 4; k++) part[warp][t][4 * lane + k] = acc[t][k];
    __syncthreads();
    for (int i = threadIdx.x; i < T * 128; i += blockDim.x) {
        int t = i / 128, cc = i % 128;
        if (c0 + cc >= d_c) continue;
        float s = 0.0f;
        for (int w = 0; w < THREADS / 32; w++) s += part[w][t][cc];
        q_lat[((size_t)t * n_h + h) * d_c + c0 + cc] = s;
    }
    if (rope.inv_freq && blockIdx.x == 0)
        for (int i = threadIdx.x; i < T * (d_R / 2); i += blockDim.x) {
            int t = i / (d_R / 2), j = i % (d_R / 2);
            rope_pair(q + ((size_t)t * n_h + h) * qk + nope, j, d_R, *rope.pos_dev + t, rope.inv_freq, rope.attn_factor,
                      rope.interleaved);
        }
}

/* 2. Chunk k of query t (rows [k R, min((k+1) R, vis)), R = mla_chunk_rows(vis)), heads h0 .. h0+HG:
 * part_o [T, MLA_SPLITS, n_h, d_c], part_ml [T, MLA_SPLITS, n_h, 2] = (m_k, l_k). Each warp keeps
 * one head's [q_lat ; q_pe] in registers (lane l: columns l, l + 32, ...). Per tile of MLA_TILE rows:
 * the rows go to shared memory; the 8 / HG warps of head hh score MLA_TILE * HG / 8 rows each (a
 * butterfly per row); warp hh (< HG) updates its head's running max and sum, lane r for row r;
 * then thread i owns latent columns i, i + 256, ... for the HG heads: o = alpha o + sum_r p_r c_r. */
template <int HG>
__global__ void mla_split_kernel(float *part_o, float *part_ml, const float *q_lat, const float *q, const float *cache,
                                 const int *pos_dev, int n_h, int d_c, int d_R, int nope, float scale) {
    const int WPH = (THREADS / 32) / HG, RPW = MLA_TILE / WPH; /* warps per head, rows per warp */
    extern __shared__ float rows[]; /* [MLA_TILE][width] */
    __shared__ float sc[HG][MLA_TILE], alpha[HG], run_m[HG], run_l[HG];
    int k = blockIdx.x, t = blockIdx.y, h0 = blockIdx.z * HG, width = d_c + d_R, qk = nope + d_R;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, hh = warp % HG, rw0 = (warp / HG) * RPW;
    int vis = *pos_dev + t + 1, R = mla_chunk_rows(vis), s0 = k * R, s1 = min(s0 + R, vis);
    int nh = min(HG, n_h - h0);
    if (s0 >= s1) return; /* past the query's rows: the merge reads only its n_k = ceil(vis / R) chunks */
    float qr[MLA_QREG];
    {
        const float *ql = q_lat + ((size_t)t * n_h + h0 + hh) * d_c, *qp = q + ((size_t)t * n_h + h0 + hh) * qk + nope;
#pragma unroll
        for (int i = 0; i < MLA_QREG; i++) {
            int c = lane + 32 * i;
            qr[i] = hh >= nh || c >= width ? 0.0f : c < d_c ? ql[c] : qp[c - d_c];
        }
    }
    if (threadIdx.x < HG) { run_m[threadIdx.x] = -INFINITY; run_l[threadIdx.x] = 0.0f; }
    float o[HG][MLA_COLS];
#pragma unroll
    for (int g = 0; g < HG; g++)
#pragma unroll
        for (int j = 0; j < MLA_COLS; j++) o[g][j] = 0.0f;
    for (int r0 = s0; r0 < s1; r0 += MLA_TILE) {
        int nr = min(MLA_TILE, s1 - r0);
        __syncthreads(); /* the previous tile's rows and p are used up */
        const float *src = cache + (size_t)r0 * width; /* the tile's rows are contiguous */
        if (width % 4 == 0) {
            const float4 *s4 = (const float4 *)src;
            float4 *d4 = (float4 *)rows;
#pragma unroll 4
            for (int i = threadIdx.x; i < nr * width / 4; i += blockDim.x) d4[i] = s4[i];
        } else {
            for (int i = threadIdx.x; i < nr * width; i += blockDim.x) rows[i] = src[i];
        }
        __syncthreads();
        if (hh < nh) {
            float acc[RPW];
#pragma unroll
            for (int r = 0; r < RPW; r++) acc[r] = 0.0f;
#pragma unroll
            for (int i = 0; i < MLA_QREG; i++) {
                int c = lane + 32 * i;
                if (c < width)
#pragma unroll
                    for (int r = 0; r < RPW; r++) acc[r] += qr[i] * rows[(rw0 + r) * width + c];
            }
#pragma unroll
            for (int r = 0; r < RPW; r++) {
                float a = warp_sum(acc[r]);
                if (lane == 0) sc[hh][rw0 + r] = rw0 + r < nr ? a * scale : -INFINITY;
            }
        }
        __syncthreads();
        if (warp < nh) { /* warp g: head g's online softmax over the tile, lane r for row r */
            int g = warp;
            float sv = lane < MLA_TILE ? sc[g][lane] : -INFINITY, m_old = run_m[g];
            float mt = fmaxf(m_old, warp_max(sv));
            float p = lane < nr ? expf(sv - mt) : 0.0f;
            float l = warp_sum(p);
            __syncwarp(); /* every lane has read run_m[g] and its sc[g][lane] before they are written */
            if (lane < MLA_TILE) sc[g][lane] = p;
            if (lane == 0) {
                float a = expf(m_old - mt); /* exp(-inf) = 0 on the first tile */
                run_l[g] = a * run_l[g] + l;
                run_m[g] = mt;
                alpha[g] = a;
            }
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < MLA_COLS; j++) {
            int c = threadIdx.x + j * THREADS;
            if (c >= d_c) break;
            float rv[MLA_TILE]; /* column c of the tile's rows; p is 0 past nr */
#pragma unroll
            for (int r = 0; r < MLA_TILE; r++) rv[r] = r < nr ? rows[r * width + c] : 0.0f;
#pragma unroll
            for (int g = 0; g < HG; g++) {
                if (g >= nh) break;
                float acc = 0.0f;
#pragma unroll
                for (int r = 0; r < MLA_TILE; r++) acc += sc[g][r] * rv[r];
                o[g][j] = alpha[g] * o[g][j] + acc;
            }
        }
    }
    __syncthreads();
    size_t base = ((size_t)t * MLA_SPLITS + k) * n_h + h0;
    if (threadIdx.x < nh) {
        part_ml[2 * (base + threadIdx.x)] = run_m[threadIdx.x];
        part_ml[2 * (base + threadIdx.x) + 1] = run_l[threadIdx.x];
    }
#pragma unroll
    for (int j = 0; j < MLA_COLS; j++) {
        int c = threadIdx.x + j * THREADS;
        if (c >= d_c) break;
#pragma unroll
        for (int g = 0; g < HG; g++)
            if (g < nh) part_o[(base + g) * d_c + c] = o[g][j];
    }
}

/* 3. attn [T, n_h * v]: block (h, g) first merges head h's chunks for every query t into o_lat
 * [T][d_c] in shared memory (warp t: the chunks' weights exp(m_k - m) and 1 / sum_k exp(m_k - m) l_k;
 * then o_lat[t][c] = (sum_k w_k o_k[c], in chunk order) / l), then its 8 warps take rows
 * g * MLA_UV_ROWS .. of W_UV[h], MLA_UV_ROWS / 8 each, as the GEMV does (warp_dots). The merge is
 * done again by each of a head's v / MLA_UV_ROWS blocks: L2 reads of the partials, not a launch. */
template <int DT>
__global__ void mla_merge_uv_kernel(float *attn, const float *part_o, const float *part_ml, const int *pos_dev,
                                    DevTensor kv_b, int T, int n_h, int d_c, int nope, int v_dim) {
    extern __shared__ float o_lat[]; /* [T][d_c] */
    __shared__ float wk[SMALL_BATCH][MLA_SPLITS], inv_l[SMALL_BATCH];
    __shared__ int n_ks[SMALL_BATCH];
    int h = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (warp < T) {
        int t = warp, vis = *pos_dev + t + 1, R = mla_chunk_rows(vis), n_k = (vis + R - 1) / R;
        const float *ml = part_ml + 2 * ((size_t)t * MLA_SPLITS * n_h + h);
        float m0 = lane < n_k ? ml[2 * (size_t)lane * n_h] : -INFINITY;
        float m1 = lane + 32 < n_k ? ml[2 * (size_t)(lane + 32) * n_h] : -INFINITY;
        float m = warp_max(fmaxf(m0, m1));
        float w0 = lane < n_k ? expf(m0 - m) : 0.0f, w1 = lane + 32 < n_k ? expf(m1 - m) : 0.0f;
        float l = warp_sum((lane < n_k ? w0 * ml[2 * (size_t)lane * n_h + 1] : 0.0f) +
                           (lane + 32 < n_k ? w1 * ml[2 * (size_t)(lane + 32) * n_h + 1] : 0.0f));
        wk[t][lane] = w0;
        wk[t][lane + 32] = w1;
        if (lane == 0) { inv_l[t] = 1.0f / l; n_ks[t] = n_k; }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < T * d_c; i += blockDim.x) {
        int t = i / d_c, c = i % d_c, n_k = n_ks[t];
        const float *po = part_o + ((size_t)t * MLA_SPLITS * n_h + h) * d_c + c;
        float acc = 0.0f;
#pragma unroll 8
        for (int k = 0; k < n_k; k++) acc += wk[t][k] * po[(size_t)k * n_h * d_c];
        o_lat[i] = acc * inv_l[t];
    }
    __syncthreads();
    const int per_warp = MLA_UV_ROWS / (THREADS / 32);
    int i0 = blockIdx.y * MLA_UV_ROWS + warp * per_warp;
    if (i0 >= v_dim) return;
    auto dots = [&](auto nr, auto tn, int k0) { /* rows i0 + k0 .. of W_UV[h], their loads in flight together */
        const int NR = decltype(nr)::value, TN = decltype(tn)::value;
        const DevTensor *Ws[NR];
        int rs[NR];
#pragma unroll
        for (int k = 0; k < NR; k++) { Ws[k] = &kv_b; rs[k] = h * (nope + v_dim) + nope + min(i0 + k0 + k, v_dim - 1); }
        float acc[NR][TN];
        warp_dots_rows<DT, NR, TN>(acc, Ws, rs, o_lat, T, d_c);
        if (lane == 0)
#pragma unroll
            for (int k = 0; k < NR; k++)
#pragma unroll
                for (int t = 0; t < TN; t++)
                    if (i0 + k0 + k < v_dim && t < T) attn[(size_t)t * n_h * v_dim + (size_t)h * v_dim + i0 + k0 + k] = acc[k][t];
    };
    static_assert(per_warp == 4, "the rows a warp below");
    if (T == 1) dots(DtypeConst<4>(), DtypeConst<1>(), 0); /* the decode step: 4 rows, one token */
    else { dots(DtypeConst<2>(), DtypeConst<SMALL_BATCH>(), 0); dots(DtypeConst<2>(), DtypeConst<SMALL_BATCH>(), 2); }
}

static size_t mla_split_smem(const MlaDims *m) { return sizeof(float) * MLA_TILE * mla_cache_width(m); }
static size_t mla_merge_smem(const MlaDims *m) { return sizeof(float) * SMALL_BATCH * m->kv_lora_rank; }
/* heads per block of the split kernel: 4 (short serial chains) up to 32 heads, else 8 (each tile is
 * read once per head group: V3's 128 heads would read it 32 times with 4) */
static int mla_split_heads(const MlaDims *m) { return m->n_heads <= 32 ? 4 : 8; }

/* The position pos0 is read on the device (d->step_in[0]), and every grid is fixed by T and the
 * shapes alone, so one decode step can be recorded as a CUDA graph and replayed at any position:
 * step 2's grid has MLA_SPLITS chunks, of which those past the query's rows return at once.
 * Step 1 (the absorb) needs only q, so the forward runs it beside the latent's store (model.cu's
 * branches); it takes d->st for that. */
template <int DT>
static void mla_absorb_launch(Dev *d, const DevLayer &L, const MlaDims *m, int T, const DevRope &rope) {
    int n_h = m->n_heads, d_c = m->kv_lora_rank;
    mla_absorb_q_kernel<DT><<<dim3((d_c + 127) / 128, n_h), THREADS, 0, d->st>>>(d->q_lat, d->q, L.kv_b, T, n_h, d_c, m->nope,
                                                                                m->rope, m->v, rope);
}

template <int DT>
static void mla_latent_attend_launch(Dev *d, const float *cache, const DevLayer &L, const MlaDims *m, int T) {
    int n_h = m->n_heads, d_c = m->kv_lora_rank, HG = mla_split_heads(m);
    dim3 grid(MLA_SPLITS, T, (n_h + HG - 1) / HG);
    if (HG == 4)
        mla_split_kernel<4><<<grid, THREADS, mla_split_smem(m)>>>(d->part_o, d->part_ml, d->q_lat, d->q, cache, d->step_in,
                                                                  n_h, d_c, m->rope, m->nope, m->softmax_scale);
    else
        mla_split_kernel<8><<<grid, THREADS, mla_split_smem(m)>>>(d->part_o, d->part_ml, d->q_lat, d->q, cache, d->step_in,
                                                                  n_h, d_c, m->rope, m->nope, m->softmax_scale);
    mla_merge_uv_kernel<DT><<<dim3(n_h, (m->v + MLA_UV_ROWS - 1) / MLA_UV_ROWS), THREADS, mla_merge_smem(m)>>>(
        d->attn, d->part_o, d->part_ml, d->step_in, L.kv_b, T, n_h, d_c, m->nope, m->v);
}

/* Step 1: q_lat (and q_pe rotated when rope.inv_freq is set: the forward; NULL: the twin, whose q
 * comes roped). */
void mla_absorb_cuda(Dev *d, const DevLayer &L, const MlaDims *m, int T, const DevRope &rope) {
    with_dtype(L.kv_b.dtype, [&](auto dt) { mla_absorb_launch<decltype(dt)::value>(d, L, m, T, rope); });
}

/* Steps 2 and 3 over the cache (its rows pos0 .. pos0 + T - 1 stored), into d->attn. */
void mla_attend_latent_cuda(Dev *d, const float *cache, const DevLayer &L, const MlaDims *m, int T) {
    with_dtype(L.kv_b.dtype, [&](auto dt) { mla_latent_attend_launch<decltype(dt)::value>(d, cache, L, m, T); });
}

void mla_attend_absorbed_decode_cuda(Dev *d, const float *cache, const DevLayer &L, const MlaDims *m, int T,
                                     const DevRope &rope) {
    mla_absorb_cuda(d, L, m, T, rope);
    mla_attend_latent_cuda(d, cache, L, m, T);
}

/* Can the split kernels take these shapes? (a warp keeps a head's width = d_c + d_R query values in
 * MLA_QREG registers a lane, the absorb step q_nope [SMALL_BATCH][MLA_MAX_NOPE] in shared memory, a
 * thread d_c / THREADS columns of o, the merge keeps SMALL_BATCH rows of
 * o_lat in shared memory (at most 32 KB for d_c <= MLA_COLS * THREADS), the split kernel MLA_TILE
 * cache rows) If so, ask for the split kernel's shared memory: 1, else 0. */
int mla_decode_prepare(const MlaDims *m) {
    int width = mla_cache_width(m);
    if (m->kv_lora_rank > MLA_COLS * THREADS || width > 32 * MLA_QREG || m->nope > MLA_MAX_NOPE || mla_split_smem(m) > 200 * 1024)
        return 0;
    /* above 48 KB of dynamic shared memory a kernel must ask for it */
    return cudaFuncSetAttribute(mla_split_kernel<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)mla_split_smem(m)) ==
               cudaSuccess &&
           cudaFuncSetAttribute(mla_split_kernel<8>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)mla_split_smem(m)) ==
               cudaSuccess;
}
