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

/* latent rows [T, d_c + d_R] written straight into the cache at rows pos.., the latent part normed. */
void mla_latent_cuda(Dev *d, float *rows, const DevLayer &L, const MlaDims *m, int T) {
    int width = mla_cache_width(m);
    matmul_cuda(d, rows, d->h, L.kv_a, T, 0);
    rmsnorm_cuda_dev(rows, rows, L.kv_a_norm, T, m->kv_lora_rank, width, width, m->eps);
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
