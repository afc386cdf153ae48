/* mla.cu - mla.c on the GPU: the query and latent projections (the latent written straight into
 * its cache rows), and the naive attention form with cuBLAS; the absorbed form is kernels.cu's. */
#include "device.cuh"

void mla_query_cuda(Dev *d, const DevLayer &L, const MlaDims *m, int T) {
    if (m->q_lora_rank == 0) {
        matmul_cuda(d, d->q, d->h, L.q, T, 0);
        return;
    }
    matmul_cuda(d, d->q_scratch, d->h, L.q_a, T, 0);
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

/* ---- the absorbed form for decode (T <= SMALL_BATCH): split over the cached rows ------------------
 * mla.c's mla_attend_absorbed, the same five steps, parallel where kernels.cu's one block per (head,
 * query) is serial (notes/cuda.md, section 4: 16 blocks on 132 SMs, each reading W_UK, W_UV and the
 * cache alone). Four launches, each with enough blocks to fill the GPU:
 *   1. q_lat[t][h] = W_UK[h]^T q_nope[t][h]        mla_absorb_q_kernel: a block per (64 columns, head)
 *   2. per chunk k of query t's visible rows, 16 heads at a time, an online softmax over tiles:
 *        m_k = max_s score_s,  l_k = sum_s exp(score_s - m_k),  o_k = sum_s exp(score_s - m_k) c_s
 *                                                  mla_split_kernel: a block per (chunk, query, 16 heads)
 *   3. the chunks merged by their log-sum-exp (FlashMLA's split-KV combine):
 *        m = max_k m_k,  o_lat = sum_k exp(m_k - m) o_k / sum_k exp(m_k - m) l_k
 *                                                  mla_merge_kernel: a block per (head, query)
 *   4. out[t][h] = W_UV[h] o_lat[t][h]             mla_uv_kernel: a warp per output (the GEMV's dots)
 * W_UK and W_UV are read at their stored dtype (widened exactly, as tensor_rows_f32 does), not the
 * FP32 copy that kernels.cu's kernel reads. The chunks of query t depend only on its visible length
 * pos0 + t + 1, never on T, so batch invariance (ops.h) holds: the T = 2 verify of --mtp gives each
 * token the bits the T = 1 step gives it.
 * Where the order differs from C: q_lat sums j in 8 strided partials (C: j in order); scores are
 * warp trees; the softmax is online over tiles of 16 rows and merged over chunks (C: one max, one
 * sum, in order); o_lat is summed per chunk, then over chunks. Tolerance 1e-4, as the twin's. */

/* Rows per chunk for a query that sees vis rows: a multiple of MLA_TILE, at most MLA_SPLITS chunks
 * (the launcher sizes its grid with the same formula). */
static __device__ __forceinline__ int mla_chunk_rows(int vis) {
    int r = (vis + MLA_SPLITS - 1) / MLA_SPLITS;
    return (r + MLA_TILE - 1) / MLA_TILE * MLA_TILE;
}

/* 1. q_lat [T, n_h, d_c] from q [T, n_h, nope + d_R]. Lane l owns columns c0 + l and c0 + 32 + l;
 * warp w sums j = w, w + 8, ...; the 8 warps' partials are added in warp order. */
template <int DT>
__global__ void mla_absorb_q_kernel(float *q_lat, const float *q, DevTensor kv_b, int T, int n_h, int d_c, int nope,
                                    int d_R, int v_dim) {
    __shared__ float part[THREADS / 32][SMALL_BATCH][64];
    int h = blockIdx.y, lane = threadIdx.x % 32, warp = threadIdx.x / 32, c0 = blockIdx.x * 64, qk = nope + d_R;
    int ca = c0 + lane, cb = c0 + 32 + lane;
    float acc[SMALL_BATCH][2];
#pragma unroll
    for (int t = 0; t < SMALL_BATCH; t++) acc[t][0] = acc[t][1] = 0.0f;
#pragma unroll 4
    for (int j = warp; j < nope; j += THREADS / 32) {
        int row = h * (nope + v_dim) + j; /* W_UK[h] row j: kv_b's rows interleave nope and v per head */
        float wa = ca < d_c ? w_at_dt(kv_b, (DType)DT, row, ca) : 0.0f, wb = cb < d_c ? w_at_dt(kv_b, (DType)DT, row, cb) : 0.0f;
#pragma unroll
        for (int t = 0; t < SMALL_BATCH; t++) {
            if (t >= T) break;
            float qn = q[((size_t)t * n_h + h) * qk + j];
            acc[t][0] += qn * wa;
            acc[t][1] += qn * wb;
        }
    }
#pragma unroll
    for (int t = 0; t < SMALL_BATCH; t++) {
        part[warp][t][lane] = acc[t][0];
        part[warp][t][32 + lane] = acc[t][1];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < T * 64; i += blockDim.x) {
        int t = i / 64, c = i % 64;
        if (c0 + c >= d_c) continue;
        float s = 0.0f;
        for (int w = 0; w < THREADS / 32; w++) s += part[w][t][c];
        q_lat[((size_t)t * n_h + h) * d_c + c0 + c] = s;
    }
}

/* 2. Chunk k of query t (rows [k R, min((k+1) R, vis)), R = mla_chunk_rows(vis)), heads g*16 ..:
 * part_o [T, MLA_SPLITS, n_h, d_c], part_ml [T, MLA_SPLITS, n_h, 2] = (m_k, l_k). Per tile of 16
 * rows: the rows go to shared memory; warp w scores heads 2w, 2w+1 (lanes over the 576 columns, a
 * butterfly per row); thread hh < 16 updates its head's running max and sum and the rescale alpha;
 * then thread i owns latent columns i, i + 256, ... for all 16 heads: o = alpha o + sum_r p_r c_r. */
__global__ void mla_split_kernel(float *part_o, float *part_ml, const float *q_lat, const float *q, const float *cache,
                                 const int *pos_dev, int n_h, int d_c, int d_R, int nope, float scale) {
    extern __shared__ float smem[]; /* rows [MLA_TILE][width], then qs [MLA_HEADS][width] */
    __shared__ float sc[MLA_HEADS][MLA_TILE], alpha[MLA_HEADS], run_m[MLA_HEADS], run_l[MLA_HEADS];
    int k = blockIdx.x, t = blockIdx.y, h0 = blockIdx.z * MLA_HEADS, width = d_c + d_R, qk = nope + d_R;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int vis = *pos_dev + t + 1, R = mla_chunk_rows(vis), s0 = k * R, s1 = min(s0 + R, vis);
    int nh = min(MLA_HEADS, n_h - h0);
    if (s0 >= s1) return; /* past the query's rows: the merge reads only its n_k = ceil(vis / R) chunks */
    float *rows = smem, *qs = smem + MLA_TILE * width;
    /* [q_lat ; q_pe] of the block's heads, once: every tile's scores read them */
#pragma unroll 4
    for (int i = threadIdx.x; i < nh * width; i += blockDim.x) {
        int hh = i / width, c = i % width;
        qs[i] = c < d_c ? q_lat[((size_t)t * n_h + h0 + hh) * d_c + c] : q[((size_t)t * n_h + h0 + hh) * qk + nope + c - d_c];
    }
    if (threadIdx.x < MLA_HEADS) { run_m[threadIdx.x] = -INFINITY; run_l[threadIdx.x] = 0.0f; }
    float o[MLA_HEADS][MLA_COLS];
#pragma unroll
    for (int hh = 0; hh < MLA_HEADS; hh++)
#pragma unroll
        for (int j = 0; j < MLA_COLS; j++) o[hh][j] = 0.0f;
    for (int r0 = s0; r0 < s1; r0 += MLA_TILE) {
        int nr = min(MLA_TILE, s1 - r0);
        __syncthreads(); /* the previous tile's rows and p are used up */
        const float *src = cache + (size_t)r0 * width; /* the tile's rows are contiguous */
#pragma unroll 8
        for (int i = threadIdx.x; i < nr * width; i += blockDim.x) rows[i] = src[i];
        __syncthreads();
        for (int hh = warp; hh < nh; hh += THREADS / 32) {
            const float *qh = qs + hh * width;
            float acc[MLA_TILE];
#pragma unroll
            for (int r = 0; r < MLA_TILE; r++) acc[r] = 0.0f;
            for (int c = lane; c < width; c += 32) {
                float qv = qh[c];
#pragma unroll
                for (int r = 0; r < MLA_TILE; r++)
                    if (r < nr) acc[r] += qv * rows[r * width + c];
            }
#pragma unroll
            for (int r = 0; r < MLA_TILE; r++) {
                float a = warp_sum(acc[r]);
                if (lane == 0) sc[hh][r] = r < nr ? a * scale : -INFINITY;
            }
        }
        __syncthreads();
        if (threadIdx.x < nh) {
            int hh = threadIdx.x;
            float mt = run_m[hh];
            for (int r = 0; r < nr; r++) mt = fmaxf(mt, sc[hh][r]);
            float a = expf(run_m[hh] - mt), l = 0.0f; /* exp(-inf) = 0 on the first tile */
            for (int r = 0; r < MLA_TILE; r++) {
                float p = r < nr ? expf(sc[hh][r] - mt) : 0.0f;
                sc[hh][r] = p;
                l += p;
            }
            run_l[hh] = a * run_l[hh] + l;
            run_m[hh] = mt;
            alpha[hh] = a;
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
            for (int hh = 0; hh < MLA_HEADS; hh++) {
                if (hh >= nh) break;
                float acc = 0.0f;
#pragma unroll
                for (int r = 0; r < MLA_TILE; r++) acc += sc[hh][r] * rv[r];
                o[hh][j] = alpha[hh] * o[hh][j] + acc;
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
        for (int hh = 0; hh < MLA_HEADS; hh++)
            if (hh < nh) part_o[(base + hh) * d_c + c] = o[hh][j];
    }
}

/* 3. o_lat [T, n_h, d_c] from the chunks of (head h, query t), in chunk order. */
__global__ void mla_merge_kernel(float *o_lat, const float *part_o, const float *part_ml, const int *pos_dev, int n_h,
                                 int d_c) {
    __shared__ float wk[MLA_SPLITS], inv_l;
    int h = blockIdx.x, t = blockIdx.y, vis = *pos_dev + t + 1, R = mla_chunk_rows(vis), n_k = (vis + R - 1) / R;
    const float *ml = part_ml + 2 * ((size_t)t * MLA_SPLITS * n_h + h);
    __shared__ float mk[MLA_SPLITS];
    if (threadIdx.x < n_k) mk[threadIdx.x] = ml[2 * (size_t)threadIdx.x * n_h]; /* the chunks' maxima, loaded at once */
    __syncthreads();
    if (threadIdx.x == 0) {
        float m = -INFINITY, l = 0.0f;
        for (int k = 0; k < n_k; k++) m = fmaxf(m, mk[k]);
        for (int k = 0; k < n_k; k++) {
            wk[k] = expf(mk[k] - m);
            l += wk[k] * ml[2 * (size_t)k * n_h + 1];
        }
        inv_l = 1.0f / l;
    }
    __syncthreads();
    for (int c = threadIdx.x; c < d_c; c += blockDim.x) {
        float acc = 0.0f;
#pragma unroll 8
        for (int k = 0; k < n_k; k++) acc += wk[k] * part_o[(((size_t)t * MLA_SPLITS + k) * n_h + h) * d_c + c];
        o_lat[((size_t)t * n_h + h) * d_c + c] = acc * inv_l;
    }
}

/* 4. attn [T, n_h * v] = W_UV[h] o_lat[t][h]: a warp per (head, output row), as the GEMV. */
template <int DT>
__global__ void mla_uv_kernel(float *attn, const float *o_lat, DevTensor kv_b, int T, int n_h, int d_c, int nope,
                              int v_dim) {
    int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= n_h * v_dim) return;
    int h = r / v_dim, i = r % v_dim;
    float acc[SMALL_BATCH];
    warp_dots<DT>(acc, kv_b, h * (nope + v_dim) + nope + i, o_lat + (size_t)h * d_c, T, n_h * d_c);
    if (threadIdx.x % 32 == 0)
        for (int t = 0; t < T; t++) attn[(size_t)t * n_h * v_dim + r] = acc[t];
}

static size_t mla_split_smem(const MlaDims *m) { return sizeof(float) * (MLA_TILE + MLA_HEADS) * mla_cache_width(m); }

/* The position pos0 is read on the device (d->step_in[0]), and every grid is fixed by T and the
 * shapes alone, so one decode step can be recorded as a CUDA graph and replayed at any position:
 * step 2's grid has MLA_SPLITS chunks, of which those past the query's rows return at once. */
template <int DT>
static void mla_decode_launch(Dev *d, const float *cache, const DevLayer &L, const MlaDims *m, int T) {
    int n_h = m->n_heads, d_c = m->kv_lora_rank, width = mla_cache_width(m);
    mla_absorb_q_kernel<DT><<<dim3((d_c + 63) / 64, n_h), THREADS>>>(d->q_lat, d->q, L.kv_b, T, n_h, d_c, m->nope, m->rope,
                                                                   m->v);
    dim3 grid(MLA_SPLITS, T, (n_h + MLA_HEADS - 1) / MLA_HEADS);
    mla_split_kernel<<<grid, THREADS, mla_split_smem(m)>>>(d->part_o, d->part_ml, d->q_lat, d->q, cache,
                                                                          d->step_in, n_h, d_c, m->rope, m->nope,
                                                                          m->softmax_scale);
    mla_merge_kernel<<<dim3(n_h, T), THREADS>>>(d->o_lat, d->part_o, d->part_ml, d->step_in, n_h, d_c);
    mla_uv_kernel<DT><<<(unsigned)((n_h * m->v + THREADS / 32 - 1) / (THREADS / 32)), THREADS>>>(d->attn, d->o_lat, L.kv_b, T,
                                                                                                n_h, d_c, m->nope, m->v);
}

void mla_attend_absorbed_decode_cuda(Dev *d, const float *cache, const DevLayer &L, const MlaDims *m, int T) {
    switch (L.kv_b.dtype) {
    case DT_F32: mla_decode_launch<DT_F32>(d, cache, L, m, T); break;
    case DT_BF16: mla_decode_launch<DT_BF16>(d, cache, L, m, T); break;
    case DT_F16: mla_decode_launch<DT_F16>(d, cache, L, m, T); break;
    case DT_F8_E4M3: mla_decode_launch<DT_F8_E4M3>(d, cache, L, m, T); break;
    default: mla_decode_launch<DT_F8_E5M2>(d, cache, L, m, T); break;
    }
}

/* Can the split kernel take these shapes? (step 2 keeps d_c / THREADS columns per thread in registers,
 * and stages MLA_TILE cache rows and MLA_HEADS queries in shared memory) If so, ask for that shared
 * memory: 1, else 0. */
int mla_decode_prepare(const MlaDims *m) {
    if (m->kv_lora_rank > MLA_COLS * THREADS || mla_split_smem(m) > 200 * 1024) return 0;
    /* above 48 KB of dynamic shared memory a kernel must ask for it (V3's 576-float rows: 73.7 KB) */
    return cudaFuncSetAttribute(mla_split_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)mla_split_smem(m)) ==
           cudaSuccess;
}
