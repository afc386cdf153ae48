/* moe.h - DeepSeekMoE: the gate (sigmoid/softmax scores, correction bias for selection only,
 * group-limited top-k, routed scaling), routed + shared experts, and the dense SwiGLU FFN. */
#ifndef MOE_H
#define MOE_H

#include "ops.h"

typedef enum { SCORE_SIGMOID, SCORE_SOFTMAX } ScoringFunc;
/* greedy: plain top-k (V2). group_limited_greedy: V2's group limit, a group scores its max.
 * noaux_tc: V3, a group scores the sum of its top-2 biased scores; bias used for selection only. */
typedef enum { TOPK_GREEDY, TOPK_GROUP_LIMITED_GREEDY, TOPK_NOAUX_TC } TopkMethod;

#define MOE_MAX_EXPERTS 1024
#define MOE_MAX_TOPK 64

typedef struct {
    int n_experts;     /* n_routed_experts, 256 in V3 */
    int top_k;         /* num_experts_per_tok, 8 */
    int n_group;       /* 8 (1 = no group limit) */
    int topk_group;    /* 4 */
    ScoringFunc scoring;
    TopkMethod method;
    int norm_topk_prob; /* renormalize the selected weights to sum 1 */
    float routed_scaling_factor; /* 2.5 */
} MoeGate;

/* Routing of one token. logits [n_experts] = W_gate x (FP32); bias [n_experts] or NULL
 * (e_score_correction_bias). Writes idx [top_k] (by descending selection score; ties to the lower
 * index) and weights [top_k]. Excluded groups' experts can never be chosen (-inf), see moe.c. */
void moe_gate(int *idx, float *weights, const float *logits, const float *bias, const MoeGate *g);

typedef struct {
    Tensor gate, up;   /* [inter, d] */
    Tensor down;       /* [d, inter] */
} Ffn;

/* out [T, d] = down(silu(gate(x)) * up(x)), x [T, d]. Returns 0, or -1 with e set (the function
 * and the bytes) when the hidden [T, 2 inter] cannot be allocated. */
int ffn_swiglu(float *out, const float *x, int T, const Ffn *f, Error *e);

typedef struct {
    MoeGate gate;
    Tensor router;      /* [n_experts, d], multiplied in FP32 */
    const float *bias;  /* [n_experts] or NULL */
    const Ffn *experts; /* [n_experts] */
    Ffn shared;         /* width n_shared * moe_intermediate_size; shared.gate.data NULL if none */
} Moe;

/* out [T, d] = sum_k w_k expert_{idx_k}(x) + shared(x), x [T, d]. Experts are run on the batch of
 * tokens that chose them and added in expert order (as HF does), then the shared experts.
 * Returns 0, or -1 with e set when its scratch (sized by T) cannot be allocated. */
int moe_forward(float *out, const float *x, int T, const Moe *moe, Error *e);

#endif
