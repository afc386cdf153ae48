/* test_oom.c - an out-of-memory in a hot path is an Error, not a crash: each function is asked for
 * a shape whose scratch (computed from its arguments) cannot be allocated, terabytes, and must
 * return -1 with a message naming itself and the bytes it asked for, having read none of its
 * inputs (the buffers passed are a few floats). The shared-flag path inside OpenMP regions is
 * taken by attend_absorbed_small (mla.c) and matmul's small-batch path (two row blocks, so two
 * threads where there are two cores). No global in the library: the shapes alone make it fail.
 * Under ASan, allocator_may_return_null (below) makes a refused allocation a NULL, as glibc's. */
#include "mla.h"
#include "mla_paged.h"
#include "moe.h"
#include "testutil.h"

/* Read by the ASan runtime only (the plain build never calls it). */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1:max_allocation_size_mb=65536"; }

static float dummy[64];                 /* the inputs, never read: the allocation fails first */

/* e holds "<fn>: out of memory (<bytes> ..." */
static void assert_oom(int rc, const Error *e, const char *fn, size_t bytes) {
    char want[160];
    snprintf(want, sizeof want, "%s: out of memory (%zu bytes", fn, bytes);
    printf("  %s\n", e->msg);
    assert_int_equal(rc, -1);
    assert_non_null(strstr(e->msg, want));
}

/* kv_b's widened head [nope + v, d_c] alone is 2^44 bytes. */
static const MlaDims HUGE_HEAD = {.n_heads = 2, .kv_lora_rank = 1 << 20, .nope = 1 << 21, .rope = 2, .v = 1 << 21,
                                  .softmax_scale = 1.0f};

static void test_mla(void **st) {
    (void)st;
    const MlaDims *m = &HUGE_HEAD;
    MlaWeights w = {.kv_b = {.data = dummy, .dtype = DT_F32, .rows = 2 * (m->nope + m->v), .cols = m->kv_lora_rank}};
    size_t head = (size_t)(m->nope + m->v) * m->kv_lora_rank, d_c = (size_t)m->kv_lora_rank;
    Error e = {{0}};
    /* one query (decode): the OpenMP region, every thread's w_h refused */
    int rc = mla_attend_absorbed(dummy, dummy, dummy, 1, 0, &w, m, &e);
    assert_oom(rc, &e, "mla_attend_absorbed", sizeof(float) * (head + 2 * d_c + 1));
    /* nine queries: the BLAS path */
    rc = mla_attend_absorbed(dummy, dummy, dummy, 9, 0, &w, m, &e);
    assert_oom(rc, &e, "mla_attend_absorbed", sizeof(float) * (head + 2 * 9 * d_c + 81));
    rc = mla_attend_naive(dummy, dummy, dummy, 9, 0, &w, m, &e);
    assert_oom(rc, &e, "mla_attend_naive", sizeof(float) * ((size_t)(m->nope + m->v) * (d_c + 9) + 81));
}

/* the paged decode gathers a sequence's rows [L, d_c + d_R] first: 2^12 rows of 2^30 + 2 floats */
static void test_mla_paged(void **st) {
    (void)st;
    Error e = {{0}};
    MlaPagedCache c = {.format = MLA_KV_F32, .d_c = 1 << 30, .d_R = 2};
    int lens[1] = {1 << 12}, tables[1] = {0};
    int rc = mla_paged_decode_latent(dummy, NULL, dummy, &c, tables, 1, lens, 1, 2, 1.0f, &e);
    assert_oom(rc, &e, "mla_paged_decode_latent", sizeof(float) * ((size_t)1 << 12) * ((1u << 30) + 2));
}

static void test_matmul(void **st) {
    (void)st;
    Error e = {{0}};
    int cols = (1u << 31) - 1; /* F16 goes the plain way: each thread widens 64 rows, 512 GB */
    Tensor f16 = {.data = dummy, .dtype = DT_F16, .rows = 128, .cols = cols};
    int rc = matmul(dummy, dummy, &f16, 1, &e);
    assert_oom(rc, &e, "matmul", sizeof(float) * 64 * (size_t)cols);
    /* nine tokens: the tile of 256 rows widened for sgemm, 2 TB */
    Tensor tiled = {.data = dummy, .dtype = DT_F16, .rows = 256, .cols = cols};
    rc = matmul(dummy, dummy, &tiled, 9, &e);
    assert_oom(rc, &e, "matmul", sizeof(float) * 256 * (size_t)cols);
    /* the FP8 GEMM: 2^30 tokens of 2^30 columns quantized, 2^60 bytes */
    Tensor fp8 = {.data = dummy, .dtype = DT_F8_E4M3, .rows = 1, .cols = 1 << 30, .scale_inv = dummy,
                  .block_r = 128, .block_c = 128, .fp8_gemm = 1};
    int n = 1 << 30;
    rc = matmul(dummy, dummy, &fp8, n, &e);
    assert_oom(rc, &e, "matmul", (size_t)n * (1u << 30) + sizeof(float) * (size_t)n * ((1 << 30) / 128));
}

static void test_moe(void **st) {
    (void)st;
    Error e = {{0}};
    /* the hidden [T, 2 inter]: 2^12 tokens, inter 2^30 */
    Ffn f = {.gate = {.data = dummy, .dtype = DT_F32, .rows = 1 << 30, .cols = 1}};
    int rc = ffn_swiglu(dummy, dummy, 1 << 12, &f, &e);
    assert_oom(rc, &e, "ffn_swiglu", sizeof(float) * ((size_t)1 << 43));
    /* the router logits [T, E]: 2^20 tokens, 2^22 experts */
    int T = 1 << 20, E = 1 << 22;
    Moe moe = {.gate = {.n_experts = E, .top_k = 1}, .router = {.data = dummy, .dtype = DT_F32, .rows = E, .cols = 1}};
    rc = moe_forward(dummy, dummy, T, &moe, &e);
    assert_oom(rc, &e, "moe_forward", (sizeof(float) * ((size_t)E + 1 + 2 + 1) + sizeof(int) * 2) * T);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mla), cmocka_unit_test(test_mla_paged), cmocka_unit_test(test_matmul), cmocka_unit_test(test_moe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
