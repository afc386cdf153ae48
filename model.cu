/* model.cu - the forward pass on a GPU: model.c's model_forward and mtp_forward, run on weights
 * uploaded once and a latent cache that lives on the device (device.h says how run reaches it).
 *
 * The device forward is one .cu beside each C file it mirrors (device.cuh has what they share), and
 * reads in model.c's order; each step is the device twin of a C function (name + _cuda):
 *   embed gather (tensor_rows_f32)   -> embed_rows_kernel (here)
 *   rmsnorm                           -> rmsnorm_kernel (kernels.cu, strided rows); in the decode step
 *                                        folded into the GEMV after it (ops.cu's matmul_normed_cuda)
 *   mla_query / mla_latent            -> mla_query_cuda / mla_latent_cuda (mla.cu); the forward's
 *                                        latent: mla_latent_store_cuda (kv_a's GEMV, then the norm,
 *                                        the rope key's rotation and the cache store in one kernel)
 *   rope_rotate                       -> rope_rotate_kernel (kernels.cu, all T tokens in one launch);
 *                                        in decode the query's rope rides on the absorb launch
 *   mla_attend_absorbed               -> decode (T <= SMALL_BATCH): mla_attend_absorbed_decode_cuda
 *                                        (mla.cu: absorb, split-KV chunks, merge + W_UV); prefill:
 *                                        mla_attend_absorbed_kernel (kernels.cu; kv_b widened to FP32
 *                                        once at upload, as the C code widens it per call)
 *   mla_attend_naive                  -> mla_attend_naive_cuda (mla.cu: cuBLAS, the C code's products)
 *   matmul                            -> matmul_cuda (ops.cu): n <= SMALL_BATCH a GEMV kernel of ours
 *                                        reading the stored BF16/FP8/F32 directly, FP32 accumulation
 *                                        (decode is bandwidth-bound); larger n widens the weight tile
 *                                        by tile to FP32 and calls cublasSgemm (no TF32)
 *   moe_gate                          -> moe_gate_kernel (kernels.cu)
 *   moe_forward                       -> moe_forward_cuda (moe.cu): T <= SMALL_BATCH the selected
 *                                        experts only, on the device (no host round trip); larger T
 *                                        grouped by expert over the tokens as moe.c does (the routing
 *                                        comes back to the host to size the groups)
 *   ffn_swiglu                        -> ffn_swiglu_cuda (moe.cu)
 *   final norm, lm_head, MTP module   -> model_forward_device / mtp_forward_device (here)
 *   argmax                            -> argmax_cuda_dev (ops.cu, over blocks)
 * A decode step (T = 1 to its argmax) is recorded once as a CUDA graph and replayed, in two branches
 * where its work is independent (record_step_graph, branch_fork / branch_join).
 * Activations are FP32, as in C: logits agree with the C forward to ~1e-6 relative (notes/cuda.md).
 * Where the order of a sum differs from C: GEMV dot products are 32 lane partials and a butterfly
 * (C: dot_f32's 8 lanes), FP8 ones a 16-code chunk's sum times its block scale (C's decode kernel:
 * a 128-block's); cuBLAS picks its own order; the MoE sum is in expert order as in moe.c.
 * Batch invariance (ops.h) holds here too: for T <= SMALL_BATCH a token's numbers never depend on
 * the other tokens of the call, so --mtp greedy equals plain greedy on the device bit for bit.
 * Errors (CUDA, cuBLAS, out of memory) come back as -1 with Error, never an exit.
 */
#include "device.cuh"

/* ---- the weights on the device (device.cuh has the structs) --------------------------------------- */

int cuda_err(Error *e, cudaError_t err, const char *what) {
    return error_set(e, "cuda: %s: %s", what, cudaGetErrorString(err));
}

static void *dev_alloc(Dev *d, size_t bytes, Error *e) {
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes ? bytes : 1);
    if (err != cudaSuccess) {
        error_set(e, "cuda: out of device memory for %.1f MB (%s)", bytes / 1e6, cudaGetErrorString(err));
        return NULL;
    }
    if (d->n_owned == d->cap_owned) {
        d->cap_owned = d->cap_owned ? 2 * d->cap_owned : 256;
        d->owned = (void **)realloc(d->owned, sizeof(void *) * d->cap_owned);
    }
    d->owned[d->n_owned++] = p;
    return p;
}

/* A host array on the device, once per host pointer. */
static const void *upload(Dev *d, const void *host, size_t bytes, Error *e) {
    for (int i = 0; i < d->n_up; i++)
        if (d->up_host[i] == host) return d->up_dev[i];
    void *p = dev_alloc(d, bytes, e);
    if (!p) return NULL;
    cudaError_t err = cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice);
    if (err != cudaSuccess) return cuda_err(e, err, "upload"), (const void *)NULL;
    if (d->n_up % 256 == 0) {
        d->up_host = (const void **)realloc(d->up_host, sizeof(void *) * (d->n_up + 256));
        d->up_dev = (const void **)realloc(d->up_dev, sizeof(void *) * (d->n_up + 256));
    }
    d->up_host[d->n_up] = host;
    d->up_dev[d->n_up++] = p;
    return p;
}

static int up_tensor(Dev *d, DevTensor *t, const Tensor *w, Error *e) {
    memset(t, 0, sizeof *t);
    if (!w->data) return 0;
    if (w->fp8_gemm) return error_set(e, "--device cuda: --fp8-gemm (DeepSeek's FP8 GEMM emulation) is CPU only");
    *t = DevTensor{NULL, w->dtype, w->rows, w->cols, NULL, w->block_r, w->block_c};
    if (!(t->data = upload(d, w->data, (size_t)w->rows * w->cols * dtype_size(w->dtype), e))) return -1;
    if (w->scale_inv) {
        size_t n = (size_t)((w->rows + w->block_r - 1) / w->block_r) * ((w->cols + w->block_c - 1) / w->block_c);
        if (!(t->scale = (const float *)upload(d, w->scale_inv, sizeof(float) * n, e))) return -1;
    }
    return 0;
}

static const float *up_vec(Dev *d, const float *v, int n, Error *e) {
    return v ? (const float *)upload(d, v, sizeof(float) * n, e) : NULL;
}

static int up_ffn(Dev *d, DevFfn *f, const Ffn *w, Error *e) {
    return up_tensor(d, &f->gate, &w->gate, e) || up_tensor(d, &f->up, &w->up, e) || up_tensor(d, &f->down, &w->down, e);
}

/* A MoE block: gate, router, bias, shared experts, and the routed experts' table (host and device). */
static int up_moe(Dev *d, DevLayer *L, const Moe *moe, Error *e) {
    int E = moe->gate.n_experts;
    L->gate = moe->gate;
    if (up_tensor(d, &L->router, &moe->router, e)) return -1;
    if (moe->bias && !(L->bias = up_vec(d, moe->bias, E, e))) return -1;
    if (moe->shared.gate.data && up_ffn(d, &L->shared, &moe->shared, e)) return -1;
    L->experts = (DevFfn *)calloc((size_t)E, sizeof(DevFfn));
    for (int x = 0; x < E; x++)
        if (up_ffn(d, &L->experts[x], &moe->experts[x], e)) return -1;
    DevFfn *ed = (DevFfn *)dev_alloc(d, sizeof(DevFfn) * E, e);
    if (!ed) return -1;
    cudaError_t err = cudaMemcpy(ed, L->experts, sizeof(DevFfn) * E, cudaMemcpyHostToDevice);
    if (err != cudaSuccess) return cuda_err(e, err, "expert table");
    L->experts_dev = ed;
    return 0;
}

static int up_layer(Dev *d, DevLayer *L, const Layer *h, const Config *c, Error *e) {
    memset(L, 0, sizeof *L);
    const MlaWeights *a = &h->attn;
    if (!(L->attn_norm = up_vec(d, h->attn_norm, c->hidden_size, e)) || !(L->ffn_norm = up_vec(d, h->ffn_norm, c->hidden_size, e)))
        return -1;
    if (c->q_lora_rank && !(L->q_a_norm = up_vec(d, a->q_a_norm, c->q_lora_rank, e))) return -1;
    if (!(L->kv_a_norm = up_vec(d, a->kv_a_norm, c->kv_lora_rank, e))) return -1;
    if (up_tensor(d, &L->q_a, &a->q_a, e) || up_tensor(d, &L->q_b, &a->q_b, e) || up_tensor(d, &L->q, &a->q, e) ||
        up_tensor(d, &L->kv_a, &a->kv_a, e) || up_tensor(d, &L->kv_b, &a->kv_b, e) || up_tensor(d, &L->o, &a->o, e))
        return -1;
    float *wf = (float *)dev_alloc(d, sizeof(float) * (size_t)L->kv_b.rows * L->kv_b.cols, e);
    if (!wf) return -1;
    tensor_rows_f32_kernel<<<(unsigned)(((size_t)L->kv_b.rows * L->kv_b.cols + THREADS - 1) / THREADS), THREADS>>>(
        wf, L->kv_b, 0, L->kv_b.rows);
    L->kv_b_f32 = wf;
    L->is_moe = h->is_moe;
    if (!h->is_moe) return up_ffn(d, &L->dense, &h->dense, e);
    return up_moe(d, L, &h->moe, e);
}

/* x [T, d] rows = embed[tokens[t]] (model.c's gather; out_stride d, or 2d for the MTP's input). */
__global__ void embed_rows_kernel(float *x, int out_stride, DevTensor W, const int *tokens) {
    for (int c = threadIdx.x; c < W.cols; c += blockDim.x)
        x[(size_t)blockIdx.x * out_stride + c] = w_at(W, tokens[blockIdx.x], c);
}

/* ---- one decoder layer and the whole forward (model.c) -------------------------------------------- */

/* layer_forward: d->x [T, d] in place, positions pos.. (also in d->step_in[0], where the kernels of
 * a decode step read it: a recorded step replays at any position), its latent cache given. */
static int layer_forward_cuda(Dev *d, const Model *mm, const DevLayer &L, float *cache, int T, int pos, AttnForm form,
                              Error *e) {
    const Config *c = &mm->cfg;
    const MlaDims *m = &mm->mla;
    int dim = c->hidden_size, qk = m->nope + m->rope, half = m->rope / 2;
    mla_query_cuda(d, L, m, T, L.attn_norm, c->rms_norm_eps); /* h = attn_norm(x), then q */
    DevRope rope = {d->inv_freq, mm->rope_attn_factor, c->rope.interleaved, d->step_in};
    int split = form != ATTN_NAIVE && T <= SMALL_BATCH && d->q_lat; /* the split decode rotates q_pe itself */
    if (split) { /* q_lat = W_UK^T q_nope (and q_pe's rope) needs only q: beside the latent's store */
        branch_fork(d);
        mla_absorb_cuda(d, L, m, T, rope);
        branch_unfork(d);
    }
    mla_latent_store_cuda(d, cache, L, m, T, rope); /* cache rows pos .. pos + T - 1 */
    if (!split)
        rope_rotate_kernel<<<dim3(blocks_for((size_t)m->n_heads * half), T), THREADS>>>(
            d->q + m->nope, m->n_heads, qk, m->n_heads * qk, m->rope, 0, d->step_in, d->inv_freq, mm->rope_attn_factor,
            c->rope.interleaved);
    if (form == ATTN_NAIVE) mla_attend_naive_cuda(d, cache, L, m, T, pos);
    else if (split) {
        branch_join(d);
        mla_attend_latent_cuda(d, cache, L, m, T);
    }
    else
        mla_attend_absorbed_kernel<<<dim3(m->n_heads, T), THREADS, sizeof(float) * (2 * (size_t)m->kv_lora_rank + 32)>>>(
            d->attn, d->q, cache, L.kv_b_f32, d->scores, T, pos, m->n_heads, m->kv_lora_rank, m->rope, m->nope, m->v,
            m->softmax_scale);
    matmul_cuda(d, d->x, d->attn, L.o, T, 1); /* x += o_proj(attn) */
    if (L.is_moe) return moe_forward_cuda(d, d->x, d->h, T, L, dim, L.ffn_norm, c->rms_norm_eps, e); /* h = ffn_norm(x) first */
    rmsnorm_cuda_dev(d->h, d->x, L.ffn_norm, T, dim, dim, dim, c->rms_norm_eps);
    ffn_swiglu_cuda(d, d->x, d->h, T, L.dense, 1); /* x += ffn(h) */
    return 0;
}

/* Any error of the launches so far (and cuBLAS's), as one line. */
int dev_status(Dev *d, Error *e) {
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return cuda_err(e, err, "forward");
    if (d->blas_err != CUBLAS_STATUS_SUCCESS) return error_set(e, "cublas: status %d", (int)d->blas_err);
    return 0;
}

/* d->step_in = [pos, tokens [T]] from the host (a pageable copy: it has left host_in on return). */
static int step_in_cuda(Dev *d, const int *tokens, int T, int pos, Error *e) {
    d->host_in[0] = pos;
    memcpy(d->host_in + 1, tokens, sizeof(int) * T);
    cudaError_t err = cudaMemcpy(d->step_in, d->host_in, sizeof(int) * (T + 1), cudaMemcpyHostToDevice);
    return err == cudaSuccess ? 0 : cuda_err(e, err, "tokens");
}

/* forward_chunk: the T tokens of d->step_in at pos; the normed final hidden states are left in d->h
 * (and the MTP's copy in d->hidden), or, with to_logits (T = 1), the logits of the token in
 * d->logits (the final norm fused into lm_head's GEMV). Launches only (no host copy, no
 * synchronization) when T <= SMALL_BATCH: a decode step's. */
static int forward_chunk_cuda(Dev *d, const Model *m, int T, int pos, AttnForm form, int to_logits, Error *e) {
    const Config *c = &m->cfg;
    int dim = c->hidden_size, width = mla_cache_width(&m->mla);
    embed_rows_kernel<<<T, THREADS>>>(d->x, dim, d->embed, d->step_in + 1);
    for (int l = 0; l < c->n_layers; l++)
        if (layer_forward_cuda(d, m, d->layers[l], d->cache + (size_t)l * d->ctx * width, T, pos, form, e)) return -1;
    if (to_logits) matmul_normed_cuda(d, d->logits, d->h, d->x, d->final_norm, c->rms_norm_eps, d->lm_head, T, 0);
    else rmsnorm_cuda_dev(d->h, d->x, d->final_norm, T, dim, dim, dim, c->rms_norm_eps);
    if (d->hidden) store_rows_kernel<<<T, THREADS>>>(d->hidden, d->h, dim, d->step_in);
    return 0;
}

/* One decode step (T = 1) to its logits and argmax, recorded once as a CUDA graph (stream capture of the very
 * launches below) and replayed: the ~10 launches per layer then cost one launch, and the GPU runs
 * them back to back. Valid at any position: the kernels read it from d->step_in (see
 * layer_forward_cuda), every pointer and grid is fixed for the State's life. */
void branch_fork(Dev *d) {
    if (!d->branching || d->n_ev + 2 > 2 * DEV_MAX_BRANCHES) return;
    cudaEvent_t f = d->ev[d->n_ev++];
    cudaEventRecord(f, cudaStreamPerThread);
    cudaStreamWaitEvent(d->side, f, 0);
    d->st = d->side;
}
void branch_unfork(Dev *d) {
    if (!d->st) return;
    cudaEvent_t j = d->ev[d->n_ev++];
    cudaEventRecord(j, d->side);
    d->st = 0;
    d->pending_join = j;
}
void branch_join(Dev *d) {
    if (!d->pending_join) return;
    cudaStreamWaitEvent(cudaStreamPerThread, d->pending_join, 0);
    d->pending_join = NULL;
}

/* The side stream and the events of the recorded step's branches, made once: 0, or -1 (then the step
 * is recorded as one chain). */
static int branch_prepare(Dev *d) {
    if (d->side) return 0;
    if (cudaStreamCreateWithFlags(&d->side, cudaStreamNonBlocking) != cudaSuccess) { d->side = NULL; return -1; }
    d->ev = (cudaEvent_t *)calloc(2 * DEV_MAX_BRANCHES, sizeof(cudaEvent_t));
    for (int i = 0; d->ev && i < 2 * DEV_MAX_BRANCHES; i++)
        if (cudaEventCreateWithFlags(&d->ev[i], cudaEventDisableTiming) != cudaSuccess) return -1;
    return d->ev ? 0 : -1;
}

static int record_step_graph(Dev *d, const Model *m, Error *e) {
    cudaStream_t st = cudaStreamPerThread; /* the default stream of this build (nvcc --default-stream per-thread) */
    cudaGraph_t g = NULL;
    d->branching = !d->branches_off && branch_prepare(d) == 0;
    d->n_ev = 0;
    cudaError_t err = cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal);
    if (err != cudaSuccess) { d->branching = 0; return cuda_err(e, err, "graph capture"); }
    int rc = forward_chunk_cuda(d, m, 1, 0, ATTN_ABSORBED, 1, e);
    if (!rc) argmax_cuda_dev(d->next, d->logits, m->cfg.vocab_size, d->argmax_scratch);
    branch_join(d); /* nothing left on the side (every fork is joined on its path; this is the guard) */
    d->branching = 0;
    d->st = 0;
    err = cudaStreamEndCapture(st, &g);
    if (!rc && err == cudaSuccess) err = cudaGraphInstantiate(&d->step_graph, g, 0);
    if (g) cudaGraphDestroy(g);
    if (rc) return -1;
    return err == cudaSuccess ? 0 : cuda_err(e, err, "graph capture");
}

/* The recorded step at pos for one token: its logits are in d->logits, its argmax in d->next. */
static int run_step_graph(Dev *d, const Model *m, int token, int pos, Error *e) {
    if (step_in_cuda(d, &token, 1, pos, e) || (!d->step_graph && record_step_graph(d, m, e))) return -1;
    cudaError_t err = cudaGraphLaunch(d->step_graph, cudaStreamPerThread);
    return err == cudaSuccess ? 0 : cuda_err(e, err, "decode step");
}
/* (without the split kernels, for a latent too wide for them, attention reads pos on the host: no graph) */
static int use_step_graph(const Dev *d, int T) { return T == 1 && !d->graph_off && d->q_lat; }

extern "C" int model_forward_device(const Model *m, State *s, const int *tokens, int T, int pos, float *logits,
                                    int last_only, AttnForm form, Error *e) {
    Dev *d = (Dev *)s->dev;
    int V = m->cfg.vocab_size, dim = m->cfg.hidden_size;
    if (last_only && form == ATTN_ABSORBED && use_step_graph(d, T)) { /* a sampled decode step */
        if (run_step_graph(d, m, tokens[0], pos, e)) return -1;
        cudaError_t err = cudaMemcpy(logits, d->logits, sizeof(float) * V, cudaMemcpyDeviceToHost);
        return err == cudaSuccess ? dev_status(d, e) : cuda_err(e, err, "logits");
    }
    for (int done = 0; done < T; done += d->max_T) {
        int n = T - done < d->max_T ? T - done : d->max_T, rows = last_only ? 1 : n;
        if (step_in_cuda(d, tokens + done, n, pos + done, e) || forward_chunk_cuda(d, m, n, pos + done, form, 0, e) ||
            dev_status(d, e))
            return -1;
        if (last_only && done + n < T) continue;
        matmul_cuda(d, d->logits, d->h + (size_t)(n - rows) * dim, d->lm_head, rows, 0);
        float *dst = logits + (last_only ? 0 : (size_t)done * V);
        cudaError_t err = cudaMemcpy(dst, d->logits, sizeof(float) * (size_t)rows * V, cudaMemcpyDeviceToHost);
        if (err != cudaSuccess) return cuda_err(e, err, "logits");
    }
    return dev_status(d, e);
}

extern "C" int model_forward_argmax_device(const Model *m, State *s, const int *tokens, int T, int pos, int *next,
                                           Error *e) {
    Dev *d = (Dev *)s->dev;
    int dim = m->cfg.hidden_size;
    if (use_step_graph(d, T)) {
        if (run_step_graph(d, m, tokens[0], pos, e)) return -1;
        cudaError_t err = cudaMemcpy(next, d->next, sizeof(int), cudaMemcpyDeviceToHost);
        return err == cudaSuccess ? dev_status(d, e) : cuda_err(e, err, "decode step");
    }
    for (int done = 0; done < T; done += d->max_T) {
        int n = T - done < d->max_T ? T - done : d->max_T;
        if (step_in_cuda(d, tokens + done, n, pos + done, e) || forward_chunk_cuda(d, m, n, pos + done, ATTN_ABSORBED, 0, e) ||
            dev_status(d, e))
            return -1;
        if (done + n < T) continue;
        matmul_cuda(d, d->logits, d->h + (size_t)(n - 1) * dim, d->lm_head, 1, 0);
        argmax_cuda_dev(d->next, d->logits, m->cfg.vocab_size, d->argmax_scratch);
    }
    cudaError_t err = cudaMemcpy(next, d->next, sizeof(int), cudaMemcpyDeviceToHost);
    if (err != cudaSuccess) return cuda_err(e, err, "argmax");
    return dev_status(d, e);
}

extern "C" int mtp_forward_device(const Model *m, State *s, const int *next_tokens, int T, int pos, float *logits,
                                  int last_only, Error *e) {
    Dev *d = (Dev *)s->dev;
    const Config *c = &m->cfg;
    int dim = c->hidden_size, V = c->vocab_size;
    if (!m->has_mtp) return error_set(e, "this checkpoint has no MTP module (no tensors at layer index %d)", c->n_layers);
    if (T <= 0 || T > d->max_T || pos < 0 || pos + T > d->ctx)
        return error_set(e, "MTP positions %d..%d do not fit (chunk %d, cache %d)", pos, pos + T - 1, d->max_T, d->ctx);
    for (int t = 0; t < T; t++)
        if (next_tokens[t] < 0 || next_tokens[t] >= V)
            return error_set(e, "token id %d is outside the vocabulary [0, %d)", next_tokens[t], V);
    if (step_in_cuda(d, next_tokens, T, pos, e)) return -1;
    /* [enorm(embed(t_{i+1})) ; hnorm(h_i)] */
    embed_rows_kernel<<<T, THREADS>>>(d->mtp_in, 2 * dim, d->embed, d->step_in + 1);
    rmsnorm_cuda_dev(d->mtp_in, d->mtp_in, d->enorm, T, dim, 2 * dim, 2 * dim, c->rms_norm_eps);
    rmsnorm_cuda_dev(d->mtp_in + dim, d->hidden + (size_t)pos * dim, d->hnorm, T, dim, 2 * dim, dim, c->rms_norm_eps);
    matmul_cuda(d, d->x, d->mtp_in, d->eh_proj, T, 0);
    if (layer_forward_cuda(d, m, d->mtp_layer, d->mtp_cache, T, pos, ATTN_ABSORBED, e)) return -1;
    rmsnorm_cuda_dev(d->h, d->x, d->head_norm, T, dim, dim, dim, c->rms_norm_eps);
    int rows = last_only ? 1 : T;
    matmul_cuda(d, d->logits, d->h + (size_t)(T - rows) * dim, d->mtp_head, rows, 0);
    cudaError_t err = cudaMemcpy(logits, d->logits, sizeof(float) * (size_t)rows * V, cudaMemcpyDeviceToHost);
    if (err != cudaSuccess) return cuda_err(e, err, "MTP logits");
    return dev_status(d, e);
}

/* ---- the State on the device --------------------------------------------------------------------- */

#define DEVICE_MIN_CHUNK 512
#define WIDEN_FLOATS ((size_t)1 << 25) /* the FP32 tile of a widened weight: 128 MB */

/* The split-KV decode attention's buffers (mla.cu): q_lat [SMALL_BATCH, n_h, d_c], the chunks'
 * partial o [SMALL_BATCH, MLA_SPLITS, n_h, d_c] and (m, l) [SMALL_BATCH, MLA_SPLITS, n_h, 2]
 * (the merged o_lat lives in the merge + W_UV kernel's shared memory). */
static int decode_attn_buffers(Dev *d, const MlaDims *m, Error *e) {
    size_t lat = (size_t)SMALL_BATCH * m->n_heads * m->kv_lora_rank, split = (size_t)SMALL_BATCH * MLA_SPLITS * m->n_heads;
    return !(d->q_lat = (float *)dev_alloc(d, sizeof(float) * lat, e)) ||
           !(d->part_o = (float *)dev_alloc(d, sizeof(float) * split * m->kv_lora_rank, e)) ||
           !(d->part_ml = (float *)dev_alloc(d, sizeof(float) * split * 2, e));
}

extern "C" void state_free_device(State *s) {
    Dev *d = (Dev *)s->dev;
    if (!d) return;
    for (int i = 0; i < d->n_owned; i++) cudaFree(d->owned[i]);
    if (d->blas) cublasDestroy(d->blas);
    if (d->step_graph) cudaGraphExecDestroy(d->step_graph);
    for (int i = 0; d->ev && i < 2 * DEV_MAX_BRANCHES; i++)
        if (d->ev[i]) cudaEventDestroy(d->ev[i]);
    free(d->ev);
    if (d->side) cudaStreamDestroy(d->side);
    free(d->host_in);
    for (int l = 0; d->layers && l < d->n_layers; l++) free(d->layers[l].experts);
    free(d->mtp_layer.experts);
    free(d->layers); free(d->owned); free(d->up_host); free(d->up_dev);
    free(d);
    s->dev = NULL;
}

extern "C" int state_init_device(State *s, const Model *m, int ctx, int max_T, const char *device, Error *e) {
    if (!device || !strcmp(device, "cpu")) return state_init(s, m, ctx, max_T, e);
    if (strcmp(device, "cuda")) return error_set(e, "--device %s: expected cpu or cuda", device);
    memset(s, 0, sizeof *s);
    if (ctx <= 0 || max_T <= 0) return error_set(e, "context length %d and chunk %d must be positive", ctx, max_T);
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) return error_set(e, "--device cuda: no CUDA device");
    const Config *c = &m->cfg;
    if (c->n_routed_experts > MOE_MAX_EXPERTS || c->num_experts_per_tok > MOE_MAX_TOPK)
        return error_set(e, "--device cuda: %d experts, top %d: beyond moe.h's limits", c->n_routed_experts, c->num_experts_per_tok);
    Dev *d = (Dev *)calloc(1, sizeof(Dev));
    s->dev = d;
    s->ctx = d->ctx = ctx;
    s->max_T = d->max_T = max_T > DEVICE_MIN_CHUNK ? max_T : DEVICE_MIN_CHUNK;
    d->layers = (DevLayer *)calloc((size_t)c->n_layers, sizeof(DevLayer));
    d->n_layers = c->n_layers;
    if (cublasCreate(&d->blas) != CUBLAS_STATUS_SUCCESS) { d->blas = NULL; state_free_device(s); return error_set(e, "cublas: cannot create a handle"); }
    cublasSetMathMode(d->blas, CUBLAS_DEFAULT_MATH); /* FP32 products, no TF32 */
    cublasSetStream(d->blas, cudaStreamPerThread);  /* the kernels' default stream (per-thread in this build) */
    const char *graph = getenv("DSV3_CUDA_GRAPH");
    d->graph_off = graph && !strcmp(graph, "0");
    const char *rows = getenv("DSV3_GEMV_ROWS");
    d->gemv_rows = rows && (!strcmp(rows, "1") || !strcmp(rows, "2") || !strcmp(rows, "4")) ? atoi(rows) : 0;
    const char *fuse = getenv("DSV3_FUSED_NORM"), *xs = getenv("DSV3_GEMV_XS");
    d->norm_unfused = fuse && !strcmp(fuse, "0");
    d->xs_off = xs && !strcmp(xs, "0");
    const char *xreg = getenv("DSV3_GEMV_XREG");
    d->xreg_off = xreg && !strcmp(xreg, "0");
    const char *branches = getenv("DSV3_CUDA_BRANCHES");
    d->branches_off = branches && !strcmp(branches, "0");
    int rc = up_tensor(d, &d->embed, &m->embed, e) || up_tensor(d, &d->lm_head, &m->lm_head, e) ||
             !(d->final_norm = up_vec(d, m->final_norm, c->hidden_size, e)) ||
             !(d->inv_freq = up_vec(d, m->inv_freq, c->qk_rope_head_dim / 2, e));
    for (int l = 0; !rc && l < c->n_layers; l++) rc = up_layer(d, &d->layers[l], &m->layers[l], c, e);
    if (!rc && m->has_mtp) {
        const Mtp *t = &m->mtp;
        rc = !(d->enorm = up_vec(d, t->enorm, c->hidden_size, e)) || !(d->hnorm = up_vec(d, t->hnorm, c->hidden_size, e)) ||
             !(d->head_norm = up_vec(d, t->head_norm, c->hidden_size, e)) || up_tensor(d, &d->eh_proj, &t->eh_proj, e) ||
             up_tensor(d, &d->mtp_head, &t->head, e) || up_layer(d, &d->mtp_layer, &t->layer, c, e);
    }
    size_t T = (size_t)d->max_T, dim = (size_t)c->hidden_size, width = (size_t)mla_cache_width(&m->mla);
    size_t nh = (size_t)c->n_heads, qk = (size_t)(c->qk_nope_head_dim + c->qk_rope_head_dim), V = (size_t)c->vocab_size;
    size_t inter = (size_t)c->intermediate_size, moe_w = (size_t)c->moe_intermediate_size * (c->n_shared_experts > 1 ? c->n_shared_experts : 1);
    size_t ffn = inter > moe_w ? inter : moe_w, K = (size_t)c->num_experts_per_tok, E = (size_t)c->n_routed_experts;
    size_t nv = (size_t)(c->qk_nope_head_dim + c->v_head_dim);
    d->widen_n = WIDEN_FLOATS;
    if (d->widen_n < (size_t)ctx * nv) d->widen_n = (size_t)ctx * nv; /* the naive form's kv [L, nope+v] */
    if (d->widen_n < dim * 2) d->widen_n = dim * 2;
    struct { float **p; size_t n; } bufs[] = {
        {&d->cache, (size_t)c->n_layers * ctx * width}, {&d->x, T * dim}, {&d->h, T * dim}, {&d->out, T * dim},
        {&d->q, T * nh * qk}, {&d->q_scratch, T * (c->q_lora_rank ? c->q_lora_rank : 1)}, {&d->attn, T * nh * c->v_head_dim},
        {&d->ffn_h, T * ffn}, {&d->ffn_u, T * ffn}, {&d->scores, T * nh * ctx}, {&d->logits, T * V},
        {&d->router_logits, T * (E ? E : 1)}, {&d->gate_w, T * (K ? K : 1)}, {&d->widen, d->widen_n},
        {&d->moe_h, (size_t)SMALL_BATCH * (K ? K : 1) * c->moe_intermediate_size + 1}, {&d->tw, T * (K ? K : 1)},
        {&d->moe_y, (size_t)SMALL_BATCH * (K ? K : 1) * dim},
        {&d->xb, 2 * T * (K ? K : 1) * dim}, {&d->yb, T * dim},
    };
    for (size_t i = 0; !rc && i < sizeof bufs / sizeof bufs[0]; i++) rc = !(*bufs[i].p = (float *)dev_alloc(d, sizeof(float) * bufs[i].n, e));
    if (!rc && mla_decode_prepare(&m->mla)) rc = decode_attn_buffers(d, &m->mla, e); /* else decode takes kernels.cu's kernel */
    if (!rc && m->has_mtp)
        rc = !(d->hidden = (float *)dev_alloc(d, sizeof(float) * ctx * dim, e)) ||
             !(d->mtp_cache = (float *)dev_alloc(d, sizeof(float) * ctx * width, e)) ||
             !(d->mtp_in = (float *)dev_alloc(d, sizeof(float) * T * 2 * dim, e));
    if (!rc)
        rc = !(d->step_in = (int *)dev_alloc(d, sizeof(int) * (T + 1), e)) ||
             !(d->host_in = (int *)malloc(sizeof(int) * (T + 1))) && error_set(e, "out of memory") ||
             !(d->lat = (float *)dev_alloc(d, sizeof(float) * T * width, e)) || !(d->idx = (int *)dev_alloc(d, sizeof(int) * T * (K ? K : 1), e)) ||
             !(d->tok = (int *)dev_alloc(d, sizeof(int) * T * (K ? K : 1), e)) || !(d->next = (int *)dev_alloc(d, sizeof(int), e)) ||
             !(d->argmax_scratch = dev_alloc(d, ARGMAX_SCRATCH, e)) || cudaMemset(d->argmax_scratch, 0, ARGMAX_SCRATCH) != cudaSuccess;
    if (!rc) { /* a fresh cache reads as zeros, as calloc's; rows past pos are never read anyway */
        cudaMemset(d->cache, 0, sizeof(float) * (size_t)c->n_layers * ctx * width);
        if (d->mtp_cache) cudaMemset(d->mtp_cache, 0, sizeof(float) * ctx * width);
        cudaError_t err = cudaDeviceSynchronize();
        if (err != cudaSuccess) rc = cuda_err(e, err, "upload");
    }
    if (rc) {
        state_free_device(s);
        return -1;
    }
    return 0;
}

/* ---- host-pointer twins, for the function-level checks (tests/test_forward_twins.cu) ------------- */

/* A Dev with a cuBLAS handle and the scratch that matmul_cuda / moe_forward_cuda of T tokens use;
 * every buffer poisoned with NaN (0xFF bytes), so an element read before it is written shows. */
static Dev *twin_dev(int T, int dim, int ffn, int E, int K, size_t widen, Error *e) {
    Dev *d = (Dev *)calloc(1, sizeof(Dev));
    if (cublasCreate(&d->blas) != CUBLAS_STATUS_SUCCESS) {
        free(d);
        error_set(e, "cublas: cannot create a handle");
        return NULL;
    }
    cublasSetMathMode(d->blas, CUBLAS_DEFAULT_MATH);
    d->widen_n = widen;
    d->max_T = T;
    size_t t = (size_t)T;
    struct { float **p; size_t n; } bufs[] = {
        {&d->widen, widen}, {&d->ffn_h, t * ffn}, {&d->ffn_u, t * ffn}, {&d->router_logits, t * E},
        {&d->gate_w, t * K}, {&d->moe_h, (size_t)SMALL_BATCH * K * ffn}, {&d->moe_y, (size_t)SMALL_BATCH * K * dim},
        {&d->tw, t * K}, {&d->xb, 2 * t * dim},
        {&d->yb, t * dim}, {&d->out, t * dim},
    };
    int rc = 0;
    for (size_t i = 0; !rc && i < sizeof bufs / sizeof bufs[0]; i++)
        rc = !(*bufs[i].p = (float *)dev_alloc(d, sizeof(float) * bufs[i].n, e)) ||
             cudaMemset(*bufs[i].p, 0xFF, sizeof(float) * bufs[i].n) != cudaSuccess;
    if (!rc) rc = !(d->idx = (int *)dev_alloc(d, sizeof(int) * t * K, e)) || !(d->tok = (int *)dev_alloc(d, sizeof(int) * t * K, e));
    if (rc) {
        State s = {};
        s.dev = d;
        state_free_device(&s);
        if (!e->msg[0]) error_set(e, "cuda: cannot set up the twin's buffers");
        return NULL;
    }
    return d;
}

static int twin_finish(Dev *d, float *out, const float *d_out, size_t n, Error *e) {
    int rc = dev_status(d, e);
    if (!rc) {
        cudaError_t err = cudaMemcpy(out, d_out, sizeof(float) * n, cudaMemcpyDeviceToHost);
        if (err != cudaSuccess) rc = cuda_err(e, err, "twin output");
    }
    State s = {};
    s.dev = d;
    state_free_device(&s);
    return rc;
}

extern "C" int matmul_cuda_host(float *out, const float *x, const Tensor *W, int n, Error *e) {
    e->msg[0] = 0;
    /* a widening tile of about a third of the rows, so that prefill's tile loop runs several times */
    size_t tile_rows = W->rows / 3 > 0 ? W->rows / 3 : 1;
    Dev *d = twin_dev(n, W->cols, 1, 1, 1, tile_rows * W->cols, e);
    if (!d) return -1;
    DevTensor t;
    float *dx = NULL, *dout = NULL;
    int rc = up_tensor(d, &t, W, e) || !(dx = (float *)dev_alloc(d, sizeof(float) * (size_t)n * W->cols, e)) ||
             !(dout = (float *)dev_alloc(d, sizeof(float) * (size_t)n * W->rows, e));
    if (!rc) {
        cudaMemcpy(dx, x, sizeof(float) * (size_t)n * W->cols, cudaMemcpyHostToDevice);
        cudaMemset(dout, 0xFF, sizeof(float) * (size_t)n * W->rows);
        matmul_cuda(d, dout, dx, t, n, 0);
        return twin_finish(d, out, dout, (size_t)n * W->rows, e);
    }
    State s = {};
    s.dev = d;
    state_free_device(&s);
    return -1;
}

extern "C" int moe_forward_cuda_host(float *out, const float *x, int T, const Moe *moe, Error *e) {
    e->msg[0] = 0;
    int dim = moe->router.cols, E = moe->gate.n_experts, K = moe->gate.top_k, ffn = moe->experts[0].gate.rows;
    if (moe->shared.gate.data && moe->shared.gate.rows > ffn) ffn = moe->shared.gate.rows;
    Dev *d = twin_dev(T, dim, ffn, E, K, (size_t)ffn * dim, e);
    if (!d) return -1;
    float *dx = NULL, *dres = NULL;
    /* the block adds its output to a residual: here zeros, so that the result is moe_forward's out */
    int rc = up_moe(d, &d->mtp_layer, moe, e) || !(dx = (float *)dev_alloc(d, sizeof(float) * (size_t)T * dim, e)) ||
             !(dres = (float *)dev_alloc(d, sizeof(float) * (size_t)T * dim, e));
    if (!rc) {
        cudaMemcpy(dx, x, sizeof(float) * (size_t)T * dim, cudaMemcpyHostToDevice);
        cudaMemset(dres, 0, sizeof(float) * (size_t)T * dim);
        if (moe_forward_cuda(d, dres, dx, T, d->mtp_layer, dim, NULL, 0.0f, e)) rc = -1;
    }
    if (!rc) return twin_finish(d, out, dres, (size_t)T * dim, e);
    State s = {};
    s.dev = d;
    state_free_device(&s);
    return -1;
}

/* mla_attend_absorbed for T <= SMALL_BATCH queries at pos0 (the split-KV decode path of mla.cu):
 * q [T, n_h (nope + d_R)], cache [pos0 + T, d_c + d_R], kv_b as stored; out [T, n_h v]. */
extern "C" int mla_attend_absorbed_decode_cuda_host(float *out, const float *q, const float *cache, int T, int pos0,
                                                    const MlaWeights *w, const MlaDims *m, Error *e) {
    e->msg[0] = 0;
    if (T < 1 || T > SMALL_BATCH || !mla_decode_prepare(m)) return error_set(e, "decode attention: T %d or the shapes do not fit", T);
    Dev *d = twin_dev(T, 1, 1, 1, 1, 1, e);
    if (!d) return -1;
    int n_h = m->n_heads, d_c = m->kv_lora_rank, L = pos0 + T, qk = m->nope + m->rope;
    size_t lat = (size_t)SMALL_BATCH * n_h * d_c, split = (size_t)SMALL_BATCH * MLA_SPLITS * n_h;
    size_t n_q = (size_t)T * n_h * qk, n_c = (size_t)L * mla_cache_width(m), n_out = (size_t)T * n_h * m->v;
    DevLayer layer = {};
    float *dc = NULL;
    int rc = up_tensor(d, &layer.kv_b, &w->kv_b, e) || !(d->q = (float *)dev_alloc(d, sizeof(float) * n_q, e)) ||
             !(dc = (float *)dev_alloc(d, sizeof(float) * n_c, e)) || !(d->attn = (float *)dev_alloc(d, sizeof(float) * n_out, e)) ||
             decode_attn_buffers(d, m, e) || !(d->step_in = (int *)dev_alloc(d, sizeof(int), e));
    if (!rc) {
        cudaMemcpy(d->q, q, sizeof(float) * n_q, cudaMemcpyHostToDevice);
        cudaMemcpy(dc, cache, sizeof(float) * n_c, cudaMemcpyHostToDevice);
        cudaMemcpy(d->step_in, &pos0, sizeof(int), cudaMemcpyHostToDevice);
        float *bufs[] = {d->attn, d->q_lat, d->part_o, d->part_ml};
        size_t ns[] = {n_out, lat, split * d_c, split * 2};
        for (int i = 0; i < 4; i++) cudaMemset(bufs[i], 0xFF, sizeof(float) * ns[i]); /* NaN */
        DevRope no_rope = {NULL, 1.0f, 0, d->step_in}; /* q comes roped */
        mla_attend_absorbed_decode_cuda(d, dc, layer, m, T, no_rope);
        return twin_finish(d, out, d->attn, n_out, e);
    }
    State s = {};
    s.dev = d;
    state_free_device(&s);
    return -1;
}
