/* moe.c - DeepSeekMoE (V2 report 2.2, V3 report 2.1.2).
 *
 * Each MoE layer has many small routed experts and a few shared ones, all SwiGLU FFNs:
 *     expert(x) = W_down (silu(W_gate x) * W_up x)
 *     y = shared(x) + sum_{i in topk} g_i * expert_i(x)
 * V3: 256 routed experts of width 2048, 8 chosen per token, 1 shared expert.
 *
 * The gate, for one token (logits = W_g x in FP32, one per expert):
 *   s      = sigmoid(logits)  (V3)   or softmax(logits)  (V2)
 *   s'     = s + b            b = e_score_correction_bias (V3). The bias steers WHICH experts are
 *                             chosen (auxiliary-loss-free load balancing: training nudges b_i down
 *                             for overloaded experts) but never how much they weigh.
 *   groups: experts split into n_group equal groups (V3: 8 groups of 32, one per node); a group
 *           scores the sum of its two best s' (noaux_tc) or its best s (V2 group_limited_greedy);
 *           only the topk_group best groups (V3: 4) stay eligible, so a token touches at most 4 nodes.
 *   pick   top_k experts by s' among the eligible ones
 *   g_i    = s_i (UNBIASED), / sum_j s_j if norm_topk_prob, then * routed_scaling_factor (V3: 2.5)
 *
 * Excluded experts: DeepSeek's code gives them -inf, HF transformers gives them 0.0. They differ
 * only when some eligible biased score is below 0 (then HF may pick an excluded expert, since 0
 * beats it). We use -inf, the intended semantics; tests/test_moe.c shows a case where they differ.
 * Ties (equal scores) go to the lower expert or group index.
 */
#include "moe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Indices of the k largest of v [n], in descending order of value, ties to the lower index. */
static void top_k_indices(int *out, const float *v, int n, int k) {
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

void moe_gate(int *idx, float *weights, const float *logits, const float *bias, const MoeGate *g) {
    int n = g->n_experts;
    float scores[MOE_MAX_EXPERTS], choice[MOE_MAX_EXPERTS];
    memcpy(scores, logits, sizeof(float) * n);
    if (g->scoring == SCORE_SOFTMAX) softmax(scores, n);
    else for (int i = 0; i < n; i++) scores[i] = 1.0f / (1.0f + expf(-scores[i]));
    for (int i = 0; i < n; i++) choice[i] = scores[i] + (bias && g->method == TOPK_NOAUX_TC ? bias[i] : 0.0f);

    if (g->n_group > 1 && g->method != TOPK_GREEDY) {
        int per = n / g->n_group, keep[MOE_MAX_EXPERTS];
        float group_score[MOE_MAX_EXPERTS];
        for (int gi = 0; gi < g->n_group; gi++) {
            const float *c = (g->method == TOPK_NOAUX_TC ? choice : scores) + gi * per;
            int best2[2];
            if (g->method == TOPK_NOAUX_TC) {
                top_k_indices(best2, c, per, per < 2 ? per : 2);
                group_score[gi] = c[best2[0]] + (per < 2 ? 0.0f : c[best2[1]]);
            } else {
                top_k_indices(best2, c, per, 1);
                group_score[gi] = c[best2[0]];
            }
        }
        top_k_indices(keep, group_score, g->n_group, g->topk_group);
        for (int gi = 0; gi < g->n_group; gi++) {
            int kept = 0;
            for (int j = 0; j < g->topk_group; j++) kept |= keep[j] == gi;
            if (!kept)
                for (int i = gi * per; i < (gi + 1) * per; i++) choice[i] = -INFINITY;
        }
    }
    top_k_indices(idx, choice, n, g->top_k);

    float sum = 0.0f;
    for (int j = 0; j < g->top_k; j++) {
        weights[j] = scores[idx[j]];
        sum += weights[j];
    }
    for (int j = 0; j < g->top_k; j++) {
        if (g->norm_topk_prob) weights[j] /= sum + 1e-20f;
        weights[j] *= g->routed_scaling_factor;
    }
}

int ffn_swiglu(float *out, const float *x, int T, const Ffn *f, Error *e) {
    int inter = f->gate.rows;
    float *h = malloc(sizeof(float) * (size_t)T * inter * 2);  /* [T, inter] twice */
    if (!h) return error_set(e, "ffn_swiglu: out of memory (%zu bytes for %d tokens' hidden)", sizeof(float) * (size_t)T * inter * 2, T);
    float *u = h + (size_t)T * inter;
    int rc = matmul(h, x, &f->gate, T, e) || matmul(u, x, &f->up, T, e);
    if (!rc) {
        silu(h, T * inter);
        for (size_t i = 0; i < (size_t)T * inter; i++) h[i] *= u[i];
        rc = matmul(out, h, &f->down, T, e);
    }
    free(h);
    return rc ? -1 : 0;
}

int moe_forward(float *out, const float *x, int T, const Moe *moe, Error *e) {
    const MoeGate *g = &moe->gate;
    int d = moe->router.cols, E = g->n_experts, K = g->top_k;
    float *logits = malloc(sizeof(float) * (size_t)T * E);       /* [T, E] */
    int *idx = malloc(sizeof(int) * (size_t)T * K);               /* [T, K] */
    float *wts = malloc(sizeof(float) * (size_t)T * K);           /* [T, K] */
    float *xb = malloc(sizeof(float) * (size_t)T * d);            /* tokens routed to one expert */
    float *yb = malloc(sizeof(float) * (size_t)T * d);
    int *tok = malloc(sizeof(int) * (size_t)T);
    float *tw = malloc(sizeof(float) * (size_t)T);
    int rc = 0;
    if (!logits || !idx || !wts || !xb || !yb || !tok || !tw) {
        rc = error_set(e, "moe_forward: out of memory (%zu bytes of routing scratch for %d tokens)",
                       (sizeof(float) * ((size_t)E + K + 2 * (size_t)d + 1) + sizeof(int) * ((size_t)K + 1)) * T, T);
        goto done;
    }
    if ((rc = matmul(logits, x, &moe->router, T, e))) goto done;
    for (int t = 0; t < T; t++)
        moe_gate(idx + (size_t)t * K, wts + (size_t)t * K, logits + (size_t)t * E, moe->bias, g);

    memset(out, 0, sizeof(float) * (size_t)T * d);
    for (int ex = 0; ex < E; ex++) {
        int n = 0;
        for (int t = 0; t < T; t++)
            for (int k = 0; k < K; k++)
                if (idx[(size_t)t * K + k] == ex) {
                    tok[n] = t;
                    tw[n] = wts[(size_t)t * K + k];
                    memcpy(xb + (size_t)n * d, x + (size_t)t * d, sizeof(float) * d);
                    n++;
                }
        if (n == 0) continue;
        if ((rc = ffn_swiglu(yb, xb, n, &moe->experts[ex], e))) goto done;
        /* out[t] += w * y with our axpy, not cblas_saxpy, whose kernel (FMA or not) OpenBLAS
         * picks by CPU, so the same inputs could round differently on two machines */
        for (int i = 0; i < n; i++) axpy(out + (size_t)tok[i] * d, tw[i], yb + (size_t)i * d, d);
    }
    if (moe->shared.gate.data) {
        if ((rc = ffn_swiglu(yb, x, T, &moe->shared, e))) goto done;
        for (size_t i = 0; i < (size_t)T * d; i++) out[i] += yb[i];
    }
done:
    free(logits); free(idx); free(wts); free(xb); free(yb); free(tok); free(tw);
    return rc ? -1 : 0;
}
