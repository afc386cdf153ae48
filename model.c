/* model.c - the whole DeepSeek-V3 forward pass: embedding, pre-norm decoder layers (MLA, then MoE
 * or dense FFN), final norm, lm_head; and the MTP module's draft. Weights are views into the
 * mmapped safetensors (weights.c loads them; init.c writes random ones).
 *
 *   x = embed[token]                                                  [T, d]
 *   for each layer:  x += mla_forward(rmsnorm(x))   (mla.c: q, latent, RoPE, cache, attention, o_proj)
 *                    x += FFN(rmsnorm(x))           (moe.c: MoE, or dense for l < first_k_dense)
 *   logits = lm_head(rmsnorm(x))                                      [T, vocab]
 *
 * T tokens at positions pos .. pos+T-1 in one call, each layer appending T rows to its latent cache;
 * prefill and decode are the same call: decode is T = 1.
 */
#include "model.h"
#include "device.h"

#include <stdlib.h>
#include <string.h>

int state_init(State *s, const Model *m, int ctx, int max_T, Error *e) {
    return state_init_kv(s, m, ctx, max_T, MLA_KV_F32, e);
}

int state_init_kv(State *s, const Model *m, int ctx, int max_T, MlaKvFormat kv, Error *e) {
    const Config *c = &m->cfg;
    memset(s, 0, sizeof *s);
    if (ctx <= 0 || max_T <= 0) return error_set(e, "context length %d and chunk %d must be positive", ctx, max_T);
    size_t width = (size_t)mla_cache_width(&m->mla), d = (size_t)c->hidden_size, T = (size_t)max_T;
    size_t nh = (size_t)c->n_heads, qk = (size_t)(c->qk_nope_head_dim + c->qk_rope_head_dim);
    size_t row = mla_kv_row_bytes(kv, m->mla.kv_lora_rank, m->mla.rope);
    if (row == 0)
        return error_set(e, "latent cache format %s cannot store kv_lora_rank %d, qk_rope_head_dim %d", mla_kv_format_name(kv),
                         m->mla.kv_lora_rank, m->mla.rope);
    s->ctx = ctx;
    s->max_T = max_T;
    s->kv = kv;
    s->kv_row = row;
    s->cache = calloc((size_t)c->n_layers * ctx, row);
    s->x = malloc(sizeof(float) * T * d);
    s->h = malloc(sizeof(float) * T * d);
    s->out = malloc(sizeof(float) * T * d);
    s->q = malloc(sizeof(float) * T * nh * qk);
    s->q_scratch = malloc(sizeof(float) * T * (size_t)(c->q_lora_rank ? c->q_lora_rank : 1));
    s->attn = malloc(sizeof(float) * T * nh * (size_t)c->v_head_dim);
    s->latent = malloc(sizeof(float) * T * width);
    if (kv != MLA_KV_F32) s->rows = malloc(sizeof(float) * (size_t)ctx * width);
    if (m->has_mtp) {
        s->hidden = malloc(sizeof(float) * (size_t)ctx * d);
        s->mtp_cache = calloc((size_t)ctx, row);
        s->mtp_in = malloc(sizeof(float) * T * 2 * d);
    }
    if (!s->cache || !s->x || !s->h || !s->out || !s->q || !s->q_scratch || !s->attn || !s->latent ||
        (kv != MLA_KV_F32 && !s->rows) || (m->has_mtp && (!s->hidden || !s->mtp_cache || !s->mtp_in))) {
        state_free(s);
        return error_set(e, "out of memory for a %d-token latent cache (%.1f MB)", ctx,
                         (double)c->n_layers * ctx * row / 1e6);
    }
    return 0;
}

void state_free(State *s) {
    if (s->dev) state_free_device(s);
    free(s->cache); free(s->x); free(s->h); free(s->out); free(s->q); free(s->q_scratch);
    free(s->attn); free(s->latent); free(s->rows); free(s->hidden); free(s->mtp_cache); free(s->mtp_in);
    memset(s, 0, sizeof *s);
}

int model_layer_forward(const Model *m, State *s, const Layer *L, uint8_t *cache, int T, int pos, AttnForm form,
                        float *after_attn, Error *e) {
    const Config *c = &m->cfg;
    int d = c->hidden_size;
    MlaScratch scratch = {.q = s->q, .q_lora = s->q_scratch, .attn = s->attn, .latent = s->latent, .rows = s->rows};
    MlaCache kv = {.format = s->kv, .rows = cache};
    MlaRope rope = {.inv_freq = m->inv_freq, .attn_factor = m->rope_attn_factor, .interleaved = c->rope.interleaved};
    /* attention */
    rmsnorm(s->h, s->x, L->attn_norm, T, d, c->rms_norm_eps);
    if (mla_forward(s->out, &kv, &scratch, s->h, T, pos, &L->attn, &m->mla, &rope, form, e)) return -1;
    for (size_t i = 0; i < (size_t)T * d; i++) s->x[i] += s->out[i];
    if (after_attn) memcpy(after_attn, s->x, sizeof(float) * (size_t)T * d);
    /* feed-forward */
    rmsnorm(s->h, s->x, L->ffn_norm, T, d, c->rms_norm_eps);
    if (L->is_moe ? moe_forward(s->out, s->h, T, &L->moe, e) : ffn_swiglu(s->out, s->h, T, &L->dense, e)) return -1;
    for (size_t i = 0; i < (size_t)T * d; i++) s->x[i] += s->out[i];
    return 0;
}

/* One chunk of T <= max_T tokens; the final hidden states (normed) are left in s->h, and copied to
 * s->hidden when there is an MTP module to feed. */
static int forward_chunk(const Model *m, State *s, const int *tokens, int T, int pos, AttnForm form, Error *e) {
    const Config *c = &m->cfg;
    int d = c->hidden_size;
    for (int t = 0; t < T; t++) tensor_rows_f32(s->x + (size_t)t * d, &m->embed, tokens[t], 1);
    for (int l = 0; l < c->n_layers; l++)
        if (model_layer_forward(m, s, &m->layers[l], state_layer_cache(s, l), T, pos, form, NULL, e))
            return -1;
    rmsnorm(s->h, s->x, m->final_norm, T, d, c->rms_norm_eps);
    if (s->hidden) memcpy(s->hidden + (size_t)pos * d, s->h, sizeof(float) * (size_t)T * d);
    return 0;
}

/* tokens [T] at positions pos .. pos+T-1: in the cache, and in the vocabulary. */
static int check_forward(const Model *m, const State *s, const int *tokens, int T, int pos, Error *e) {
    if (T <= 0) return error_set(e, "no tokens to run");
    if (pos < 0 || pos + T > s->ctx)
        return error_set(e, "positions %d..%d do not fit the %d-token cache (raise --ctx)", pos, pos + T - 1, s->ctx);
    for (int t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= m->cfg.vocab_size)
            return error_set(e, "token id %d at index %d is outside the vocabulary [0, %d)", tokens[t], t, m->cfg.vocab_size);
    return 0;
}

int model_forward_argmax(const Model *m, State *s, const int *tokens, int T, int pos, int *next, Error *e) {
    if (check_forward(m, s, tokens, T, pos, e)) return -1;
    if (!s->dev) return error_set(e, "model_forward_argmax: the State is not on a device");
    return model_forward_argmax_device(m, s, tokens, T, pos, next, e);
}

int model_forward(const Model *m, State *s, const int *tokens, int T, int pos, float *logits,
                  int last_only, AttnForm form, Error *e) {
    const Config *c = &m->cfg;
    if (check_forward(m, s, tokens, T, pos, e)) return -1;
    if (s->dev) return model_forward_device(m, s, tokens, T, pos, logits, last_only, form, e);
    for (int done = 0; done < T; done += s->max_T) {
        int n = T - done < s->max_T ? T - done : s->max_T;
        if (forward_chunk(m, s, tokens + done, n, pos + done, form, e)) return -1;
        if (!last_only) {
            if (matmul(logits + (size_t)done * c->vocab_size, s->h, &m->lm_head, n, e)) return -1;
        } else if (done + n == T) {
            if (matmul(logits, s->h + (size_t)(n - 1) * c->hidden_size, &m->lm_head, 1, e)) return -1;
        }
    }
    return 0;
}

int mtp_forward(const Model *m, State *s, const int *next_tokens, int T, int pos, float *logits, int last_only,
                Error *e) {
    const Config *c = &m->cfg;
    const Mtp *mtp = &m->mtp;
    int d = c->hidden_size;
    if (s->dev) return mtp_forward_device(m, s, next_tokens, T, pos, logits, last_only, e);
    if (!m->has_mtp || !s->hidden) return error_set(e, "this checkpoint has no MTP module (no tensors at layer index %d)", c->n_layers);
    if (T <= 0 || T > s->max_T || pos < 0 || pos + T > s->ctx)
        return error_set(e, "MTP positions %d..%d do not fit (chunk %d, cache %d)", pos, pos + T - 1, s->max_T, s->ctx);
    for (int t = 0; t < T; t++) {
        if (next_tokens[t] < 0 || next_tokens[t] >= c->vocab_size)
            return error_set(e, "token id %d is outside the vocabulary [0, %d)", next_tokens[t], c->vocab_size);
        float *in = s->mtp_in + (size_t)t * 2 * d;                     /* [enorm(emb) ; hnorm(h)] */
        tensor_rows_f32(in, &m->embed, next_tokens[t], 1);
        rmsnorm(in, in, mtp->enorm, 1, d, c->rms_norm_eps);
        rmsnorm(in + d, s->hidden + (size_t)(pos + t) * d, mtp->hnorm, 1, d, c->rms_norm_eps);
    }
    if (matmul(s->x, s->mtp_in, &mtp->eh_proj, T, e) ||
        model_layer_forward(m, s, &mtp->layer, s->mtp_cache, T, pos, ATTN_ABSORBED, NULL, e))
        return -1;
    rmsnorm(s->h, s->x, mtp->head_norm, T, d, c->rms_norm_eps);
    if (last_only) return matmul(logits, s->h + (size_t)(T - 1) * d, &mtp->head, 1, e);
    return matmul(logits, s->h, &mtp->head, T, e);
}
