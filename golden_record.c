/* golden_record.c - the recorder of `run golden` (golden.h): each input a recorded function asks for
 * is a new tensor <function>.<argument>, drawn from the seed by a portable generator, or read back
 * from the file when verifying; each output is a zeroed tensor the function fills, kept for the file
 * or compared with it (golden_file.c). golden_fns.c says what each function draws and keeps.
 *
 * Random inputs, portable (the same seed gives the same input bytes on any machine and compiler).
 * Every input tensor NAME has its own stream, so adding a function never changes another's inputs:
 *     s = seed XOR fnv1a64(NAME);  r_i = splitmix64(s), i = 0, 1, ...
 *     u_i = ((r_i >> 40) - 2^23) * 2^-23         exact: uniform on [-1, 1) in steps of 2^-23
 *     x_i = fmaf(scale, u_i, offset)             one rounding, the same with or without an FMA unit
 *     ids: (r_i >> 32) * n >> 32 in [0, n);   E4M3 codes: r_i & 0xFF, NaN codes 0x7F/0xFF -> 0x7E/0xFE
 * Weights: offset 0, scale 1/sqrt(fan_in); norm weights: 1 +- 0.25; activations and caches: +-1
 * (golden_fns.c's choices). This generator is the file format's, written into every file's
 * metadata, and deliberately not ops.h's Rng: a PyTorch reader can reproduce it from that one line.
 *
 * Memory: every tensor is counted, and the recorder refuses to pass 8 GiB in all: a --shape too
 * large fails at once, naming the tensor that crossed the limit.
 */
#include "golden.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(int) == 4, "I32 outputs are written from int arrays");

#define GOLDEN_MAX_BYTES (8.0 * (1 << 30)) /* refuse files (and memory) beyond 8 GiB */

/* ---- the generator ----------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t fnv1a64(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static float uniform(uint64_t *s) { return (float)((int32_t)(splitmix64(s) >> 40) - (1 << 23)) * 0x1p-23f; }

/* How a new tensor is filled when it is made (and, verifying, what the file's must equal). */
typedef enum { FILL_UNIFORM, FILL_IDS, FILL_CODES, FILL_GIVEN, FILL_OUTPUT } FillKind;
typedef struct {
    FillKind kind;
    float offset, scale; /* FILL_UNIFORM: fmaf(scale, u, offset) */
    int n;               /* FILL_IDS: ids in [0, n) */
    const void *values;  /* FILL_GIVEN: the values (NULL: zeros, or the file's when verifying) */
} Fill;

/* r's elements from r's own stream, as the top of the file writes the generator. */
static void draw(const Golden *g, GoldenTensor *r, Fill f) {
    uint64_t s = g->seed ^ fnv1a64(r->name);
    float *x = r->data;
    int *ids = r->data;
    uint8_t *codes = r->data;
    for (size_t i = 0; i < r->nbytes / dtype_size(r->dtype); i++) {
        if (f.kind == FILL_UNIFORM) x[i] = fmaf(f.scale, uniform(&s), f.offset);
        else if (f.kind == FILL_IDS) ids[i] = (int)(((splitmix64(&s) >> 32) * (uint64_t)f.n) >> 32);
        else {
            uint8_t b = (uint8_t)splitmix64(&s);
            codes[i] = (b & 0x7F) == 0x7F ? b ^ 1 : b; /* any code but NaN */
        }
    }
}

/* ---- inputs drawn (or read back when verifying), outputs kept (or compared) ------------------- */

void *g_tmp(Golden *g, size_t bytes) {
    void *p = malloc(bytes ? bytes : 1), **t = realloc(g->tmp, sizeof(void *) * (size_t)(g->n_tmp + 1));
    if (!p || !t) {
        free(p);
        if (t) g->tmp = t;
        g->failed = 1;
        error_set(g->e, "%s: out of memory (%.3g MB of scratch)", g->fn, bytes / 1e6);
        return NULL;
    }
    g->tmp = t;
    return g->tmp[g->n_tmp++] = p;
}

/* A new tensor <function>.<arg> [dims...], filled as f says; an input is read from the file instead
 * when verifying (a given one must then equal f.values). NULL (and g->failed) on any error. */
static void *add(Golden *g, const char *arg, DType dt, Fill f, int ndim, va_list ap) {
    if (g->failed) return NULL;
    if (g->n == g->cap) {
        GoldenTensor *r = realloc(g->ts, sizeof(GoldenTensor) * (size_t)(g->cap = 2 * g->cap + 16));
        if (!r) return g->failed = 1, error_set(g->e, "%s: out of memory", g->fn), NULL;
        g->ts = r;
    }
    GoldenTensor *r = &g->ts[g->n];
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s.%s", g->fn, arg);
    r->dtype = dt;
    r->ndim = ndim;
    r->output = f.kind == FILL_OUTPUT;
    double numel = 1;
    for (int i = 0; i < ndim; i++) numel *= (double)(r->shape[i] = va_arg(ap, int));
    if (g->bytes + numel * dtype_size(dt) > GOLDEN_MAX_BYTES) {
        g->failed = 1;
        error_set(g->e, "%s: the golden file would pass 8 GiB at this tensor (%.3g GB); leave %s out (--functions) "
                  "or shrink it (--shape)", r->name, numel * dtype_size(dt) / 1e9, g->fn);
        return NULL;
    }
    r->nbytes = (size_t)numel * dtype_size(dt);
    if (!(r->data = calloc(r->nbytes ? r->nbytes : 1, 1))) {
        g->failed = 1;
        error_set(g->e, "%s: out of memory (%.3g MB)", r->name, r->nbytes / 1e6);
        return NULL;
    }
    g->bytes += r->nbytes;
    g->n++;
    if (f.kind == FILL_OUTPUT) return r->data;
    if (!g->check) {
        if (f.kind != FILL_GIVEN) draw(g, r, f);
        else if (f.values) memcpy(r->data, f.values, r->nbytes);
        return r->data;
    }
    const StTensor *t = st_find(g->check, r->name);
    int same = t && t->dtype == dt && t->ndim == ndim && t->nbytes == r->nbytes;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == r->shape[i];
    if (!same) {
        g->failed = 1;
        error_set(g->e, "%s: %s in the file, expected %s of %d dims as the metadata's config and shapes give",
                  r->name, t ? "a different dtype or shape" : "missing", dtype_name(dt), ndim);
        return NULL;
    }
    memcpy(r->data, t->data, r->nbytes);
    if (f.kind == FILL_GIVEN && f.values && memcmp(r->data, f.values, r->nbytes)) {
        g->failed = 1;
        error_set(g->e, "%s: the file's value differs from the one its config and shapes give", r->name);
        return NULL;
    }
    return r->data;
}

/* The inputs and outputs of golden.h, each a new tensor of ndim int dims. */
float *g_rand(Golden *g, const char *arg, float offset, float scale, int ndim, ...) {
    va_list ap;
    va_start(ap, ndim);
    float *x = add(g, arg, DT_F32, (Fill){.kind = FILL_UNIFORM, .offset = offset, .scale = scale}, ndim, ap);
    va_end(ap);
    return x;
}

int *g_ids(Golden *g, const char *arg, int n, int ndim, ...) {
    va_list ap;
    va_start(ap, ndim);
    int *x = add(g, arg, DT_I32, (Fill){.kind = FILL_IDS, .n = n}, ndim, ap);
    va_end(ap);
    return x;
}

uint8_t *g_codes(Golden *g, const char *arg, int ndim, ...) {
    va_list ap;
    va_start(ap, ndim);
    uint8_t *x = add(g, arg, DT_F8_E4M3, (Fill){.kind = FILL_CODES}, ndim, ap);
    va_end(ap);
    return x;
}

/* A parameter (eps, pos0, softmax_scale, a prompt): values NULL takes the file's when verifying. */
void *g_given(Golden *g, const char *arg, DType dt, const void *values, int ndim, ...) {
    va_list ap;
    va_start(ap, ndim);
    void *x = add(g, arg, dt, (Fill){.kind = FILL_GIVEN, .values = values}, ndim, ap);
    va_end(ap);
    return x;
}

void *g_out(Golden *g, const char *arg, DType dt, int ndim, ...) {
    va_list ap;
    va_start(ap, ndim);
    void *x = add(g, arg, dt, (Fill){.kind = FILL_OUTPUT}, ndim, ap);
    va_end(ap);
    return x;
}

/* ---- between functions --------------------------------------------------------------------------- */

void golden_end_fn(Golden *g) {
    for (int i = 0; i < g->n_tmp; i++) free(g->tmp[i]);
    g->n_tmp = 0;
}

void golden_free_tensors(Golden *g, int from) {
    for (int i = from; i < g->n; i++) free(g->ts[i].data);
    g->n = from;
}
