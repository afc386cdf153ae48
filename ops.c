/* ops.c - the small shared pieces: errors, dtypes and their exact widening to FP32, rmsnorm,
 * softmax, silu, argmax, and sampling (temperature, top-p) with a portable seeded generator.
 * matmul and dot_f32 are in matmul.c.
 *
 * Everything computes in FP32. Weights may be stored in BF16, F16 or FP8 (with block scales) and
 * stay 1 or 2 bytes per element in memory; tensor_rows_f32 widens rows of them when asked.
 */
#include "ops.h"
#include "fp8.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int error_set(Error *e, const char *fmt, ...) {
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        /* names and values quoted from a file may hold control characters (JSON's "\n"): blank
         * them, so the message stays one line whatever the input (tests/fuzz finds such files) */
        for (char *c = e->msg; *c; c++)
            if ((unsigned char)*c < 0x20) *c = '?';
    }
    return -1;
}

/* Reads in chunks rather than asking ftell for the size, so a pipe or /dev/stdin works too. */
char *read_file(const char *path, size_t *n, Error *e) {
    FILE *f = fopen(path, "rb");
    if (!f) return error_set(e, "%s: cannot open (%s)", path, strerror(errno)), NULL;
    size_t cap = 1 << 16, len = 0, got;
    char *buf = malloc(cap);
    while (buf && (got = fread(buf + len, 1, cap - len - 1, f)) > 0)
        if ((len += got) == cap - 1) {
            char *bigger = realloc(buf, cap *= 2);
            if (!bigger) free(buf);
            buf = bigger;
        }
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        int oom = !buf;
        free(buf);
        return error_set(e, "%s: cannot read%s", path, oom ? " (out of memory)" : ""), NULL;
    }
    buf[len] = 0;
    if (n) *n = len;
    return buf;
}

double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------------------------------------
 * dtypes
 */
static const struct { const char *name; size_t size; } DTYPES[DT_COUNT] = {
    [DT_F32] = {"F32", 4},  [DT_F16] = {"F16", 2},   [DT_BF16] = {"BF16", 2},
    [DT_F8_E4M3] = {"F8_E4M3", 1}, [DT_F8_E5M2] = {"F8_E5M2", 1}, [DT_F64] = {"F64", 8},
    [DT_I8] = {"I8", 1},    [DT_U8] = {"U8", 1},     [DT_I16] = {"I16", 2},
    [DT_I32] = {"I32", 4},  [DT_I64] = {"I64", 8},   [DT_BOOL] = {"BOOL", 1},
};

const char *dtype_name(DType t) { return (unsigned)t < DT_COUNT ? DTYPES[t].name : "?"; }
size_t dtype_size(DType t) { return (unsigned)t < DT_COUNT ? DTYPES[t].size : 0; }

int dtype_from_name(const char *s) {
    for (int t = 0; t < DT_COUNT; t++)
        if (strcmp(s, DTYPES[t].name) == 0) return t;
    return -1;
}

/* BF16 is the top half of an FP32: widening is a shift. */
float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1); /* round to nearest, ties to even */
    return (uint16_t)(u >> 16);
}

/* IEEE half: 1 sign, 5 exponent (bias 15), 10 mantissa. */
float f16_to_f32(uint16_t h) {
    int sign = h >> 15, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    float v;
    if (exp == 0) v = ldexpf((float)man, -24);                      /* subnormal: man * 2^-24 */
    else if (exp == 31) v = man ? NAN : INFINITY;
    else v = ldexpf((float)(man | 0x400), exp - 25);                /* 1.man * 2^(exp-15) */
    return sign ? -v : v;
}

float dtype_load_f32(DType t, const void *p, size_t i) {
    const unsigned char *b = (const unsigned char *)p;
    switch (t) {
    case DT_F32: { float f; memcpy(&f, b + 4 * i, 4); return f; }
    case DT_BF16: { uint16_t h; memcpy(&h, b + 2 * i, 2); return bf16_to_f32(h); }
    case DT_F16: { uint16_t h; memcpy(&h, b + 2 * i, 2); return f16_to_f32(h); }
    case DT_F8_E4M3: return fp8_e4m3_decode(b[i]);
    case DT_F8_E5M2: return fp8_e5m2_decode(b[i]);
    case DT_F64: { double d; memcpy(&d, b + 8 * i, 8); return (float)d; }
    case DT_I8: return (float)(int8_t)b[i];
    case DT_U8: case DT_BOOL: return (float)b[i];
    case DT_I16: { int16_t v; memcpy(&v, b + 2 * i, 2); return (float)v; }
    case DT_I32: { int32_t v; memcpy(&v, b + 4 * i, 4); return (float)v; }
    case DT_I64: { int64_t v; memcpy(&v, b + 8 * i, 8); return (float)v; }
    default: return NAN;
    }
}

/* BF16 -> FP32 is a 16-bit shift per element; written so that it vectorizes (this loop is most of
 * a BF16 decode step's time when it does not). */
static void bf16_widen(float *restrict out, const uint16_t *restrict h, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        union { uint32_t u; float f; } v = {.u = (uint32_t)h[i] << 16};
        out[i] = v.f;
    }
}

/* E4M3 -> FP32, times scale, written so that it vectorizes (a table lookup does not). The code's
 * magnitude bits e.eee.m.mm shifted left by 20 are the FP32 with exponent field e and mantissa mmm:
 * 2^(e-127) * 1.mmm, or for e = 0 the FP32 subnormal mmm * 2^-129; times 2^120 (exact) both are the
 * E4M3 value, 2^(e-7) * 1.mmm and mmm * 2^-9. S.1111.111 is NaN. Then the sign, then the scale: one
 * rounding, as decode-then-multiply. Equals fp8_e4m3_decode for all 256 codes (tests/test_ops.c).
 * The subnormal codes rely on FP32 subnormals being honoured (no -ffast-math, no DAZ mode). */
static void e4m3_widen(float *restrict out, const uint8_t *restrict b, size_t n, float scale) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        uint32_t c = b[i], mag = c & 0x7F;
        union { uint32_t u; float f; } v = {.u = mag << 20};
        v.f *= 0x1p120f;
        uint32_t nan = 0u - (uint32_t)(mag == 0x7F);                  /* all ones for NaN */
        v.u = (v.u & ~nan) | (0x7FC00000u & nan) | (c & 0x80) << 24;
        out[i] = v.f * scale;
    }
}

void dtype_to_f32(float *out, DType t, const void *src, size_t i0, size_t n) {
    if (t == DT_F32) {
        memcpy(out, (const char *)src + 4 * i0, 4 * n);
        return;
    }
    if (t == DT_F8_E4M3) {
        e4m3_widen(out, (const uint8_t *)src + i0, n, 1.0f);
        return;
    }
    if (t == DT_F8_E5M2 && n >= 1024) {
        /* a row of FP8 weights: decode each of the 256 codes once, then look up */
        float table[256];
        for (int c = 0; c < 256; c++) table[c] = fp8_e5m2_decode((uint8_t)c);
        const uint8_t *b = (const uint8_t *)src + i0;
        for (size_t i = 0; i < n; i++) out[i] = table[b[i]];
        return;
    }
    if (t == DT_BF16) {
        const unsigned char *b = (const unsigned char *)src + 2 * i0;
        if ((uintptr_t)b % 2 == 0) { /* the usual case */
            bf16_widen(out, (const uint16_t *)(const void *)b, n);
            return;
        }
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, b + 2 * i, 2);
            out[i] = bf16_to_f32(h);
        }
        return;
    }
    for (size_t i = 0; i < n; i++) out[i] = dtype_load_f32(t, src, i0 + i);
}

/* ---------------------------------------------------------------------------------------------
 * Tensors
 */
void tensor_rows_f32(float *out, const Tensor *W, int r0, int n) {
    size_t cols = (size_t)W->cols;
    if (W->scale_inv && W->dtype == DT_F8_E4M3) { /* decode and scale in one pass, block by block */
        int n_cb = (W->cols + W->block_c - 1) / W->block_c;
        for (int i = 0; i < n; i++) {
            const float *s = W->scale_inv + (size_t)((r0 + i) / W->block_r) * n_cb;
            const uint8_t *q = (const uint8_t *)W->data + (size_t)(r0 + i) * cols;
            for (int cb = 0; cb < n_cb; cb++) {
                int c0 = cb * W->block_c, c1 = c0 + W->block_c < W->cols ? c0 + W->block_c : W->cols;
                e4m3_widen(out + (size_t)i * cols + c0, q + c0, (size_t)(c1 - c0), s[cb]);
            }
        }
        return;
    }
    dtype_to_f32(out, W->dtype, W->data, (size_t)r0 * cols, (size_t)n * cols);
    if (!W->scale_inv) return;
    /* FP8 block scales: W[r][c] = q[r][c] * scale_inv[r / block_r][c / block_c] */
    int n_cb = (W->cols + W->block_c - 1) / W->block_c;
    for (int i = 0; i < n; i++) {
        const float *s = W->scale_inv + (size_t)((r0 + i) / W->block_r) * n_cb;
        float *row = out + (size_t)i * cols;
        for (int cb = 0; cb < n_cb; cb++) {
            int c1 = (cb + 1) * W->block_c < W->cols ? (cb + 1) * W->block_c : W->cols;
            for (int c = cb * W->block_c; c < c1; c++) row[c] *= s[cb];
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Numerics
 */
void rmsnorm(float *out, const float *x, const float *w, int n, int d, float eps) {
    for (int t = 0; t < n; t++) {
        const float *xt = x + (size_t)t * d;
        float *ot = out + (size_t)t * d;
        float ss = 0.0f;
        for (int i = 0; i < d; i++) ss += xt[i] * xt[i];
        float r = 1.0f / sqrtf(ss / (float)d + eps);
        for (int i = 0; i < d; i++) ot[i] = w[i] * (xt[i] * r);
    }
}

void axpy(float *restrict y, float a, const float *restrict x, int n) {
#pragma omp simd
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

void softmax(float *x, int n) {
    float max = -INFINITY;
    for (int i = 0; i < n; i++)
        if (x[i] > max) max = x[i];
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = x[i] == -INFINITY ? 0.0f : expf(x[i] - max);
        sum += x[i];
    }
    for (int i = 0; i < n; i++) x[i] /= sum;
}

void silu(float *x, int n) {
    for (int i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-x[i]));
}

int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* ---------------------------------------------------------------------------------------------
 * Sampling
 */
void rng_seed(Rng *r, uint64_t seed) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull; /* splitmix64: no seed gives the all-zero state */
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    r->s = (z ^ (z >> 31)) | 1;
}

uint64_t rng_next(Rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1Dull;
}

float rng_uniform(Rng *r) { return (float)(rng_next(r) >> 40) / 16777216.0f; }

float rng_normal(Rng *r) {
    float u = rng_uniform(r), v = rng_uniform(r);
    return sqrtf(-2.0f * logf(1.0f - u)) * cosf(6.2831853f * v);
}

/* order [n] sorted by descending p, ties by ascending index: insertion into a heap would be faster;
 * qsort_r is not portable C11, so a plain merge sort over indices. */
static void sort_desc(int *order, int *tmp, const float *p, int n) {
    if (n < 2) return;
    int h = n / 2;
    sort_desc(order, tmp, p, h);
    sort_desc(order + h, tmp, p, n - h);
    int i = 0, j = h, k = 0;
    while (i < h || j < n) {
        int take_left = j >= n || (i < h && (p[order[i]] > p[order[j]] ||
                                             (p[order[i]] == p[order[j]] && order[i] < order[j])));
        tmp[k++] = take_left ? order[i++] : order[j++];
    }
    memcpy(order, tmp, sizeof(int) * (size_t)n);
}

int nucleus(const float *p, int n, float top_p, int *order) {
    for (int i = 0; i < n; i++) order[i] = i;
    int *tmp = malloc(sizeof(int) * (size_t)n);
    if (!tmp) return -1;
    sort_desc(order, tmp, p, n);
    free(tmp);
    if (top_p >= 1.0f) return n;
    float mass = 0.0f;
    int k = 0;
    while (k < n && mass < top_p) mass += p[order[k++]];
    return k;
}

int sample(const float *logits, int n, float temp, float top_p, Rng *rng, float *probs, int *order) {
    if (temp <= 0.0f) return argmax(logits, n);
    for (int i = 0; i < n; i++) probs[i] = logits[i] / temp;
    softmax(probs, n);
    int k = n;
    if (top_p > 0.0f && top_p < 1.0f) {
        if ((k = nucleus(probs, n, top_p, order)) < 0) return -1;
    } else {
        for (int i = 0; i < n; i++) order[i] = i;
    }
    float mass = 0.0f;
    for (int i = 0; i < k; i++) mass += probs[order[i]];
    float u = rng_uniform(rng) * mass, acc = 0.0f;
    for (int i = 0; i < k; i++) {
        acc += probs[order[i]];
        if (u < acc) return order[i];
    }
    return order[k - 1]; /* u within rounding of the total */
}
