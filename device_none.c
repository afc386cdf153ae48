/* device_none.c - device.h in a build without CUDA (a plain `make`): the CPU only. `make cuda`
 * links model.cu in its place. */
#include "device.h"

#include <string.h>

int state_init_device(State *s, const Model *m, int ctx, int max_T, const char *device, Error *e) {
    if (!device || !strcmp(device, "cpu")) return state_init(s, m, ctx, max_T, e);
    if (!strcmp(device, "cuda"))
        return error_set(e, "--device cuda: this run was built without CUDA (build build/cuda/run with make cuda)");
    return error_set(e, "--device %s: expected cpu or cuda", device);
}

/* Never reached: without CUDA no State has a device handle. */
void state_free_device(State *s) { (void)s; }

int model_forward_device(const Model *m, State *s, const int *tokens, int T, int pos, float *logits,
                         int last_only, AttnForm form, Error *e) {
    (void)m; (void)s; (void)tokens; (void)T; (void)pos; (void)logits; (void)last_only; (void)form;
    return error_set(e, "this run was built without CUDA");
}

int mtp_forward_device(const Model *m, State *s, const int *next_tokens, int T, int pos, float *logits,
                       int last_only, Error *e) {
    (void)m; (void)s; (void)next_tokens; (void)T; (void)pos; (void)logits; (void)last_only;
    return error_set(e, "this run was built without CUDA");
}

int model_forward_argmax_device(const Model *m, State *s, const int *tokens, int T, int pos, int *next,
                                Error *e) {
    (void)m; (void)s; (void)tokens; (void)T; (void)pos; (void)next;
    return error_set(e, "this run was built without CUDA");
}
