/* device.h - a State on a GPU: the same model_forward / mtp_forward, run by model.cu.
 *
 * state_init_device("cuda") uploads the weights once at their stored dtype (BF16 2 bytes, FP8 1 byte
 * with its block scales) and keeps the latent cache and every activation on the device; the State
 * then carries an opaque handle (s->dev) and model.c's model_forward / mtp_forward hand the call to
 * the *_device functions below, so generate, chat, logits, ppl and --mtp need no change. A build
 * without CUDA (a plain `make`) links device_none.c instead, where "cuda" is a one-line error.
 */
#ifndef DEVICE_H
#define DEVICE_H

#include "model.h"

/* device NULL or "cpu": state_init. "cuda": the GPU (the device takes chunks of at least 512 tokens,
 * so s->max_T may be larger than asked). Errors: no CUDA in this build, no GPU, out of device memory,
 * a weight the device does not take (--fp8-gemm). */
int state_init_device(State *s, const Model *m, int ctx, int max_T, const char *device, Error *e);
void state_free_device(State *s);

/* model_forward and mtp_forward on s->dev (model.c checked the arguments). */
int model_forward_device(const Model *m, State *s, const int *tokens, int T, int pos, float *logits,
                         int last_only, AttnForm form, Error *e);
int mtp_forward_device(const Model *m, State *s, const int *next_tokens, int T, int pos, float *logits,
                       int last_only, Error *e);

/* model_forward_argmax on s->dev (model.c checked the arguments): the argmax of the last position's
 * logits, first index on ties, as argmax; only the token id comes back, not the logits. */
int model_forward_argmax_device(const Model *m, State *s, const int *tokens, int T, int pos, int *next,
                                Error *e);

/* Host-pointer twins of two device steps, for tests/test_forward_twins.cu: matmul (out [n, rows] =
 * x [n, cols] . W^T, W as stored: the GEMV for n <= 8, widen + cuBLAS above, in tiles of a third of
 * the rows) and moe_forward (out [T, d], decode kernels for T <= 8, grouped by expert above). Every
 * device buffer starts as NaN. CUDA builds only (model.cu). */
int matmul_cuda_host(float *out, const float *x, const Tensor *W, int n, Error *e);
int moe_forward_cuda_host(float *out, const float *x, int T, const Moe *moe, Error *e);
/* mla_attend_absorbed of T <= 8 queries at pos0 through the device's split-KV decode kernels (mla.cu):
 * the same arguments, kv_b as stored (F32, BF16, FP8). */
int mla_attend_absorbed_decode_cuda_host(float *out, const float *q, const float *cache, int T, int pos0,
                                         const MlaWeights *w, const MlaDims *m, Error *e);

#endif
