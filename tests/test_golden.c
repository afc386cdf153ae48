/* test_golden.c - `run golden` (golden*.c): two runs give identical bytes; every
 * function is in the file under its documented names, dtypes and shapes; the stored inputs fed back
 * through the C functions (by hand here, and by --verify) give the stored outputs bit for bit; the
 * inputs follow the documented generator; with --model the logits are model_forward's, bit for bit;
 * a FlashMLA-sized decode shape; and the errors a user meets (exit status, one line on stderr). */
#include "golden.h"
#include "fp8.h"
#include "mla_kv.h"
#include "testutil.h"

#include <cJSON.h>

#include <unistd.h>

#define YARN FIXTURES "/v3_yarn/config.json"
#define V3 FIXTURES "/configs/deepseek_v3/config.json"

/* Runs golden_main on a space-separated argument line; returns its status, stderr in err (if not
 * NULL; at most 4 KB). */
static int golden(const char *line, char *err) {
    char buf[4096], *argv[64];
    int argc = 0;
    snprintf(buf, sizeof buf, "%s", line);
    for (char *t = strtok(buf, " "); t && argc < 64; t = strtok(NULL, " ")) argv[argc++] = t;
    char path[] = "/tmp/dsv3golden.err.XXXXXX";
    int fd = mkstemp(path), saved = dup(2);
    assert_true(fd >= 0 && saved >= 0);
    fflush(stderr);
    dup2(fd, 2);
    int rc = golden_main(argc, argv);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    lseek(fd, 0, SEEK_SET);
    ssize_t n = read(fd, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    close(fd);
    unlink(path);
    fputs(buf, stderr);
    if (err) strcpy(err, buf);
    return rc;
}

/* A fresh directory (returned; the caller removes it) holding path = DIR/g.safetensors, written by
 * `run golden ARGS --out path`. */
static char *golden_file(char *path, size_t cap, const char *args) {
    char *dir = make_tmpdir(), cmd[1024];
    snprintf(path, cap, "%s/g.safetensors", dir);
    snprintf(cmd, sizeof cmd, "%s --out %s", args, path);
    assert_int_equal(golden(cmd, NULL), 0);
    return dir;
}

/* The whole file (testutil.h's slurp), which must exist. */
static char *read_all(const char *path, size_t *n) {
    char *p = slurp(path, n);
    assert_non_null(p);
    return p;
}

/* The tensor, checked for dtype and shape, copied out (the caller frees). */
static void *get(const StFile *f, const char *name, DType dt, int ndim, const int64_t *shape) {
    const StTensor *t = st_find(f, name);
    if (!t) fail_msg("%s: missing", name);
    if (t->dtype != dt || t->ndim != ndim) fail_msg("%s: %s with %d dims, expected %s with %d", name, dtype_name(t->dtype), t->ndim, dtype_name(dt), ndim);
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != shape[i]) fail_msg("%s: dim %d is %lld, expected %lld", name, i, (long long)t->shape[i], (long long)shape[i]);
    void *p = malloc(t->nbytes + 1);
    memcpy(p, t->data, t->nbytes);
    return p;
}
#define GET(f, name, dt, ...) get(f, name, dt, sizeof((int64_t[]){__VA_ARGS__}) / 8, (int64_t[]){__VA_ARGS__})

static void same_bytes(const char *what, const void *got, const void *want, size_t n) {
    int same = !memcmp(got, want, n);
    printf("%s %s: %s\n", same ? "OK    " : "NOT OK", what, same ? "bit-identical" : "differs");
    assert_true(same);
}

/* The file every test below reads: v3_yarn (d 64, 4 heads, d_c 32, d_R 8, 8 experts top 2, 3 layers),
 * B = 2, T = 3, L = 7, fp8 K = 320 (three blocks, the last partial). */
#define ARGS "--config " YARN " --seed 7 --tokens 3 --shape batch=2 --shape cache=7 --shape gemm_k=320"

static void test_deterministic(void **st) {
    (void)st;
    char *dir = make_tmpdir(), cmd[1024], a[512], b[512];
    snprintf(a, sizeof a, "%s/a.safetensors", dir);
    snprintf(b, sizeof b, "%s/b.safetensors", dir);
    snprintf(cmd, sizeof cmd, ARGS " --out %s", a);
    assert_int_equal(golden(cmd, NULL), 0);
    snprintf(cmd, sizeof cmd, ARGS " --out %s", b);
    assert_int_equal(golden(cmd, NULL), 0);
    size_t na, nb;
    char *fa = read_all(a, &na), *fb = read_all(b, &nb);
    assert_int_equal(na, nb);
    same_bytes("two runs, whole file", fa, fb, na);
    free(fb);
    /* another seed: other bytes; a subset of functions: the same inputs for those (one stream per tensor) */
    snprintf(cmd, sizeof cmd, ARGS " --seed 8 --force --out %s", b); /* replacing a file takes --force */
    assert_int_equal(golden(cmd, NULL), 0);
    fb = read_all(b, &nb);
    assert_true(na != nb || memcmp(fa, fb, na));
    free(fb);
    snprintf(cmd, sizeof cmd, ARGS " --functions moe_gate,rmsnorm --force --out %s", b);
    assert_int_equal(golden(cmd, NULL), 0);
    StFile f1, f2;
    Error e;
    assert_int_equal(st_open(&f1, a, &e), 0);
    assert_int_equal(st_open(&f2, b, &e), 0);
    assert_int_equal(f2.n_tensors, 4 + 5);
    for (int i = 0; i < f2.n_tensors; i++) {
        const StTensor *x = &f2.tensors[i], *y = st_find(&f1, x->name);
        assert_non_null(y);
        assert_int_equal(x->nbytes, y->nbytes);
        same_bytes(x->name, x->data, y->data, x->nbytes);
    }
    st_close(&f1);
    st_close(&f2);
    free(fa);
    rm_rf(dir);
    free(dir);
}

typedef struct {
    const char *name;
    DType dt;
    int ndim;
    int64_t shape[4];
} Want;

static void test_complete(void **st) {
    (void)st;
    /* B 2, T 3, L 7, d 64, heads 4, q_lora 48, d_c 32, d_R 8, nope 16, v 16, E 8, k 2, moe_inter 32,
     * inter 96, vocab 256; fp8 M = B*T = 6, N = 96, K = 320 */
    static const Want W[] = {
        {"rmsnorm.x", DT_F32, 3, {2, 3, 64}}, {"rmsnorm.w", DT_F32, 1, {64}}, {"rmsnorm.eps", DT_F32, 1, {1}},
        {"rmsnorm.out", DT_F32, 3, {2, 3, 64}},
        {"rope_table.inv_freq", DT_F32, 1, {4}}, {"rope_table.attn_factor", DT_F32, 1, {1}},
        {"rope_table.softmax_mscale", DT_F32, 1, {1}}, {"rope_table.cos", DT_F32, 2, {7, 4}}, {"rope_table.sin", DT_F32, 2, {7, 4}},
        {"rope.x", DT_F32, 4, {2, 3, 4, 8}}, {"rope.positions", DT_I32, 1, {3}}, {"rope.inv_freq", DT_F32, 1, {4}},
        {"rope.attn_factor", DT_F32, 1, {1}}, {"rope.interleaved", DT_I32, 1, {1}}, {"rope.out", DT_F32, 4, {2, 3, 4, 8}},
        {"mla_query.x", DT_F32, 3, {2, 3, 64}}, {"mla_query.q_a_proj", DT_F32, 2, {48, 64}},
        {"mla_query.q_a_layernorm", DT_F32, 1, {48}}, {"mla_query.q_b_proj", DT_F32, 2, {96, 48}},
        {"mla_query.q", DT_F32, 4, {2, 3, 4, 24}}, {"mla_query.c_q", DT_F32, 3, {2, 3, 48}},
        {"mla_latent.x", DT_F32, 3, {2, 3, 64}}, {"mla_latent.kv_a_proj_with_mqa", DT_F32, 2, {40, 64}},
        {"mla_latent.kv_a_layernorm", DT_F32, 1, {32}}, {"mla_latent.latent", DT_F32, 3, {2, 3, 40}},
        {"mla_naive.out", DT_F32, 4, {2, 3, 4, 16}},
        {"mla_absorbed.q_nope", DT_F32, 4, {2, 3, 4, 16}}, {"mla_absorbed.q_pe", DT_F32, 4, {2, 3, 4, 8}},
        {"mla_absorbed.kv_cache", DT_F32, 3, {2, 7, 40}}, {"mla_absorbed.kv_b_proj", DT_F32, 2, {128, 32}},
        {"mla_absorbed.softmax_scale", DT_F32, 1, {1}}, {"mla_absorbed.pos0", DT_I32, 1, {1}},
        {"mla_absorbed.out", DT_F32, 4, {2, 3, 4, 16}},
        {"mla_decode.q_nope", DT_F32, 4, {2, 1, 4, 16}}, {"mla_decode.kv_cache", DT_F32, 3, {2, 7, 40}},
        {"mla_decode.out", DT_F32, 4, {2, 1, 4, 16}},
        {"moe_gate.logits", DT_F32, 3, {2, 3, 8}}, {"moe_gate.bias", DT_F32, 1, {8}}, {"moe_gate.scores", DT_F32, 3, {2, 3, 8}},
        {"moe_gate.topk_idx", DT_I32, 3, {2, 3, 2}}, {"moe_gate.topk_weight", DT_F32, 3, {2, 3, 2}},
        {"ffn_swiglu.gate_proj", DT_F32, 2, {32, 64}}, {"ffn_swiglu.down_proj", DT_F32, 2, {64, 32}},
        {"ffn_swiglu.out", DT_F32, 3, {2, 3, 64}},
        {"moe.router", DT_F32, 2, {8, 64}}, {"moe.gate_proj", DT_F32, 3, {8, 32, 64}}, {"moe.down_proj", DT_F32, 3, {8, 64, 32}},
        {"moe.shared_up_proj", DT_F32, 2, {32, 64}}, {"moe.out", DT_F32, 3, {2, 3, 64}},
        {"moe.topk_idx", DT_I32, 3, {2, 3, 2}},
        {"fp8_quant_block.w", DT_F32, 2, {96, 320}}, {"fp8_quant_block.q", DT_F8_E4M3, 2, {96, 320}},
        {"fp8_quant_block.scale_inv", DT_F32, 2, {1, 3}},
        {"fp8_dequant_block.q", DT_F8_E4M3, 2, {96, 320}}, {"fp8_dequant_block.w", DT_F32, 2, {96, 320}},
        {"fp8_quant_act.q", DT_F8_E4M3, 2, {6, 320}}, {"fp8_quant_act.scale", DT_F32, 2, {6, 3}},
        {"fp8_dequant_act.x", DT_F32, 2, {6, 320}},
        {"fp8_gemm.x", DT_F32, 2, {6, 320}}, {"fp8_gemm.w", DT_F32, 2, {96, 320}}, {"fp8_gemm.x_q", DT_F8_E4M3, 2, {6, 320}},
        {"fp8_gemm.x_scale", DT_F32, 2, {6, 3}}, {"fp8_gemm.w_q", DT_F8_E4M3, 2, {96, 320}},
        {"fp8_gemm.w_scale_inv", DT_F32, 2, {1, 3}}, {"fp8_gemm.y_fp32", DT_F32, 2, {6, 96}},
        {"fp8_gemm.y_acc14_trunc", DT_F32, 2, {6, 96}}, {"fp8_gemm.y_acc14_nearest", DT_F32, 2, {6, 96}},
        {"fp8_gemm.y_unquantized", DT_F32, 2, {6, 96}},
        {"decoder_layer.x", DT_F32, 3, {2, 3, 64}}, {"decoder_layer.kv_cache", DT_F32, 3, {2, 7, 40}},
        {"decoder_layer.self_attn.kv_b_proj.weight", DT_F32, 2, {128, 32}},
        {"decoder_layer.mlp.experts.7.down_proj.weight", DT_F32, 2, {64, 32}},
        {"decoder_layer.mlp.gate.e_score_correction_bias", DT_F32, 1, {8}},
        {"decoder_layer.after_attn", DT_F32, 3, {2, 3, 64}}, {"decoder_layer.out", DT_F32, 3, {2, 3, 64}},
        {"decoder_layer.kv_cache_out", DT_F32, 3, {2, 7, 40}},
        {"model.tokens", DT_I32, 2, {2, 3}}, {"model.model.embed_tokens.weight", DT_F32, 2, {256, 64}},
        {"model.model.layers.0.mlp.up_proj.weight", DT_F32, 2, {96, 64}},           /* layer 0 is dense */
        {"model.model.layers.2.mlp.experts.3.gate_proj.weight", DT_F32, 2, {32, 64}},
        {"model.lm_head.weight", DT_F32, 2, {256, 64}}, {"model.hidden.embed", DT_F32, 3, {2, 3, 64}},
        {"model.hidden.0.after_attn", DT_F32, 3, {2, 3, 64}}, {"model.hidden.2.after_ffn", DT_F32, 3, {2, 3, 64}},
        {"model.hidden.final_norm", DT_F32, 3, {2, 3, 64}}, {"model.logits", DT_F32, 3, {2, 3, 256}},
    };
    char path[512], *dir = golden_file(path, sizeof path, ARGS);
    StFile f;
    Error e;
    assert_int_equal(st_open(&f, path, &e), 0);
    for (size_t i = 0; i < sizeof W / sizeof W[0]; i++) free(get(&f, W[i].name, W[i].dt, W[i].ndim, W[i].shape));
    printf("OK     %zu documented tensors present with their dtypes and shapes\n", sizeof W / sizeof W[0]);

    /* metadata: every function with its tolerance, calls, inputs and outputs; each tensor listed once */
    cJSON *m = cJSON_Parse(f.metadata_json);
    assert_non_null(m);
    const char *keys[] = {"format", "version", "seed", "source", "config", "shapes", "functions", "fp8_block",
                          "tolerance_metric", "generator"};
    for (int i = 0; i < 10; i++) assert_true(cJSON_IsString(cJSON_GetObjectItem(m, keys[i])));
    assert_string_equal(cJSON_GetObjectItem(m, "version")->valuestring, GOLDEN_VERSION);
    assert_string_equal(cJSON_GetObjectItem(m, "seed")->valuestring, "7");
    /* fp8_gemm's plain FP32 output has its own tolerance, and a note on the 14-bit emulations */
    assert_string_equal(cJSON_GetObjectItem(m, "tolerance.fp8_gemm.y_unquantized")->valuestring, "1e-4");
    assert_non_null(strstr(cJSON_GetObjectItem(m, "tolerance_note.fp8_gemm")->valuestring, "tensor core"));
    int listed = 0;
    for (int i = 0; i < GOLDEN_N_FNS; i++) {
        char k[64];
        const char *kinds[] = {"tolerance", "calls", "inputs", "outputs"};
        for (int j = 0; j < 4; j++) {
            snprintf(k, sizeof k, "%s.%s", kinds[j], GOLDEN_FNS[i].name);
            const cJSON *v = cJSON_GetObjectItem(m, k);
            if (!cJSON_IsString(v)) fail_msg("metadata %s missing", k);
            for (const char *p = v->valuestring; j >= 2 && *p;) {
                size_t n = strcspn(p, ",");
                char name[256];
                snprintf(name, sizeof name, "%s.%.*s", GOLDEN_FNS[i].name, (int)n, p);
                if (!st_find(&f, name)) fail_msg("%s is listed in %s but not in the file", name, k);
                listed++;
                p += n + (p[n] == ',');
            }
        }
        assert_non_null(strstr(cJSON_GetObjectItem(m, "functions")->valuestring, GOLDEN_FNS[i].name));
    }
    assert_int_equal(listed, f.n_tensors);
    printf("OK     metadata lists all %d tensors of %d functions as inputs or outputs\n", listed, GOLDEN_N_FNS);

    /* the config in the metadata reads back (config_parse) to the file's config */
    Config want, got;
    assert_int_equal(config_load(&want, YARN, &e), 0);
    assert_int_equal(config_parse(&got, cJSON_GetObjectItem(m, "config")->valuestring, "meta", &e), 0);
    assert_memory_equal(&got, &want, sizeof got);
    cJSON_Delete(m);
    st_close(&f);
    rm_rf(dir);
    free(dir);
}

/* The stored inputs through the C functions, called here by hand, give the stored outputs. */
static void test_replay(void **st) {
    (void)st;
    char path[512], *dir = golden_file(path, sizeof path, ARGS);
    StFile f;
    Error e;
    Config c;
    assert_int_equal(st_open(&f, path, &e), 0);
    assert_int_equal(config_load(&c, YARN, &e), 0);

    float *x = GET(&f, "rmsnorm.x", DT_F32, 2, 3, 64), *w = GET(&f, "rmsnorm.w", DT_F32, 64);
    float *want = GET(&f, "rmsnorm.out", DT_F32, 2, 3, 64), got[384];
    rmsnorm(got, x, w, 6, 64, c.rms_norm_eps);
    same_bytes("rmsnorm.out", got, want, sizeof got);
    free(x); free(w); free(want);

    x = GET(&f, "rope.x", DT_F32, 2, 3, 4, 8);
    want = GET(&f, "rope.out", DT_F32, 2, 3, 4, 8);
    int *pos = GET(&f, "rope.positions", DT_I32, 3);
    float inv[4], af = rope_inv_freq(inv, &c.rope, 8);
    assert_int_equal(pos[0], 4); /* pos0 = L - T */
    for (int b = 0; b < 2; b++)
        for (int t = 0; t < 3; t++) rope_rotate(x + (b * 3 + t) * 32, 4, 8, 8, pos[t], inv, af, c.rope.interleaved);
    same_bytes("rope.out", x, want, 2 * 3 * 32 * 4);
    free(x); free(want); free(pos);

    /* absorbed (prefill and decode) and naive attention; the two forms agree to rounding */
    MlaDims md = {.n_heads = 4, .q_lora_rank = 48, .kv_lora_rank = 32, .nope = 16, .rope = 8, .v = 16};
    const char *fns[] = {"mla_absorbed", "mla_decode", "mla_naive"};
    float *outs[3];
    for (int i = 0; i < 3; i++) {
        int T = i == 1 ? 1 : 3;
        char n[64];
        snprintf(n, sizeof n, "%s.q_nope", fns[i]);
        float *qn = GET(&f, n, DT_F32, 2, T, 4, 16);
        snprintf(n, sizeof n, "%s.q_pe", fns[i]);
        float *qp = GET(&f, n, DT_F32, 2, T, 4, 8);
        snprintf(n, sizeof n, "%s.kv_cache", fns[i]);
        float *cache = GET(&f, n, DT_F32, 2, 7, 40);
        snprintf(n, sizeof n, "%s.kv_b_proj", fns[i]);
        float *kvb = GET(&f, n, DT_F32, 128, 32);
        snprintf(n, sizeof n, "%s.softmax_scale", fns[i]);
        float *scale = GET(&f, n, DT_F32, 1);
        snprintf(n, sizeof n, "%s.pos0", fns[i]);
        int *p0 = GET(&f, n, DT_I32, 1);
        snprintf(n, sizeof n, "%s.out", fns[i]);
        outs[i] = GET(&f, n, DT_F32, 2, T, 4, 16);
        assert_int_equal(p0[0], 7 - T);
        md.softmax_scale = scale[0];
        MlaWeights mw = {.kv_b = {.data = kvb, .dtype = DT_F32, .rows = 128, .cols = 32}};
        float q[3 * 4 * 24], o[2 * 3 * 64];
        for (int b = 0; b < 2; b++) {
            for (int th = 0; th < T * 4; th++) {
                memcpy(q + th * 24, qn + (b * T * 4 + th) * 16, 16 * 4);
                memcpy(q + th * 24 + 16, qp + (b * T * 4 + th) * 8, 8 * 4);
            }
            (i == 2 ? mla_attend_naive : mla_attend_absorbed)(o + b * T * 64, q, cache + b * 7 * 40, T, p0[0], &mw, &md, NULL);
        }
        snprintf(n, sizeof n, "%s.out", fns[i]);
        same_bytes(n, o, outs[i], (size_t)2 * T * 64 * 4);
        free(qn); free(qp); free(cache); free(kvb); free(scale); free(p0);
    }
    for (int i = 0; i < 3; i++) free(outs[i]);

    float *logits = GET(&f, "moe_gate.logits", DT_F32, 2, 3, 8), *bias = GET(&f, "moe_gate.bias", DT_F32, 8);
    int *idx = GET(&f, "moe_gate.topk_idx", DT_I32, 2, 3, 2);
    float *wts = GET(&f, "moe_gate.topk_weight", DT_F32, 2, 3, 2);
    MoeGate gate = {.n_experts = 8, .top_k = 2, .n_group = 4, .topk_group = 2, .scoring = SCORE_SIGMOID,
                    .method = TOPK_NOAUX_TC, .norm_topk_prob = 1, .routed_scaling_factor = 2.5f};
    int gi[12];
    float gw[12];
    for (int r = 0; r < 6; r++) moe_gate(gi + 2 * r, gw + 2 * r, logits + 8 * r, bias, &gate);
    same_bytes("moe_gate.topk_idx", gi, idx, sizeof gi);
    same_bytes("moe_gate.topk_weight", gw, wts, sizeof gw);
    free(logits); free(bias); free(idx); free(wts);

    uint8_t *q = GET(&f, "fp8_dequant_block.q", DT_F8_E4M3, 96, 320);
    float *s = GET(&f, "fp8_dequant_block.scale_inv", DT_F32, 1, 3);
    want = GET(&f, "fp8_dequant_block.w", DT_F32, 96, 320);
    float *wd = malloc(sizeof(float) * 96 * 320);
    fp8_dequant_block(wd, q, s, 96, 320, 128, 128);
    same_bytes("fp8_dequant_block.w", wd, want, sizeof(float) * 96 * 320);
    free(q); free(s); free(want); free(wd);

    uint8_t *xq = GET(&f, "fp8_gemm.x_q", DT_F8_E4M3, 6, 320), *wq = GET(&f, "fp8_gemm.w_q", DT_F8_E4M3, 96, 320);
    float *xs = GET(&f, "fp8_gemm.x_scale", DT_F32, 6, 3), *ws = GET(&f, "fp8_gemm.w_scale_inv", DT_F32, 1, 3);
    const char *modes[] = {"fp8_gemm.y_fp32", "fp8_gemm.y_acc14_trunc", "fp8_gemm.y_acc14_nearest"};
    Fp8Accum accs[] = {{0, 0, FP8_ACC_TRUNCATE}, {14, 128, FP8_ACC_TRUNCATE}, {14, 128, FP8_ACC_NEAREST}};
    for (int i = 0; i < 3; i++) {
        float y[6 * 96];
        want = GET(&f, modes[i], DT_F32, 6, 96);
        fp8_gemm(y, xq, xs, wq, ws, 6, 96, 320, 128, 128, accs[i]);
        same_bytes(modes[i], y, want, sizeof y);
        free(want);
    }
    /* and the quantized operands are the quantization of the stored FP32 x */
    float *xf = GET(&f, "fp8_gemm.x", DT_F32, 6, 320), xs2[18];
    uint8_t xq2[6 * 320];
    fp8_quant_act(xq2, xs2, xf, 6, 320, 128, FP8_SCALE_F32);
    same_bytes("fp8_gemm.x_q", xq2, xq, sizeof xq2);
    same_bytes("fp8_gemm.x_scale", xs2, xs, sizeof xs2);
    free(xf); free(xq); free(wq); free(xs); free(ws);
    st_close(&f);
    rm_rf(dir);
    free(dir);
}

/* --verify re-runs every function on the file's inputs: identical bits here; a changed output or
 * parameter is caught. */
static void test_verify(void **st) {
    (void)st;
    char *dir = make_tmpdir(), cmd[1024], path[512], bad[512], err[4096];
    snprintf(path, sizeof path, "%s/g.safetensors", dir);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
    snprintf(cmd, sizeof cmd, ARGS " --out %s", path);
    assert_int_equal(golden(cmd, NULL), 0);
    snprintf(cmd, sizeof cmd, "--verify %s --exact", path);
    assert_int_equal(golden(cmd, NULL), 0);

    StFile f;
    Error e;
    assert_int_equal(st_open(&f, path, &e), 0);
    size_t off_out = (const char *)st_find(&f, "mla_absorbed.out")->data - (const char *)f.maps[0];
    size_t off_eps = (const char *)st_find(&f, "rmsnorm.eps")->data - (const char *)f.maps[0];
    st_close(&f);
    size_t n;
    char *bytes = read_all(path, &n);
    for (int k = 0; k < 3; k++) {
        char *copy = malloc(n);
        memcpy(copy, bytes, n);
        if (k == 0) copy[off_out + 1] ^= 1;      /* a low mantissa bit: within tolerance, not --exact */
        else if (k == 1) copy[off_out + 3] ^= 0x40; /* an exponent bit: outside tolerance */
        else copy[off_eps + 3] ^= 0x01;           /* eps no longer the config's */
        FILE *o = fopen(bad, "wb");
        fwrite(copy, 1, n, o);
        fclose(o);
        free(copy);
        snprintf(cmd, sizeof cmd, "--verify %s", bad);
        assert_int_equal(golden(cmd, err), k == 0 ? 0 : 1);
        if (k == 1) assert_non_null(strstr(err, "1 of 20 functions outside their tolerance"));
        if (k == 2) assert_non_null(strstr(err, "rmsnorm.eps: the file's value differs"));
        snprintf(cmd, sizeof cmd, "--verify %s --exact", bad);
        assert_int_equal(golden(cmd, NULL), 1);
    }
    free(bytes);
    rm_rf(dir);
    free(dir);
}

/* The inputs are the documented generator's, recomputed here independently. */
static uint64_t sm64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static uint64_t stream(uint64_t seed, const char *name) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *p = name; *p; p++) h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
    return seed ^ h;
}

static void test_generator(void **st) {
    (void)st;
    char path[512], *dir = golden_file(path, sizeof path, "--config " YARN " --functions rmsnorm,moe_gate,model"); /* seed 0 */
    StFile f;
    Error e;
    assert_int_equal(st_open(&f, path, &e), 0);
    float *x = GET(&f, "rmsnorm.x", DT_F32, 1, 4, 64), *w = GET(&f, "rmsnorm.w", DT_F32, 64);
    float *l = GET(&f, "moe_gate.logits", DT_F32, 1, 4, 8);
    int *tok = GET(&f, "model.tokens", DT_I32, 1, 4);
    /* pinned: the first three values of seed 0's "rmsnorm.x" (offset 0, scale 1: u itself) */
    assert_true(x[0] == -3343999 * 0x1p-23f && x[1] == -6146408 * 0x1p-23f && x[2] == 6792021 * 0x1p-23f);
    uint64_t s1 = stream(0, "rmsnorm.x"), s2 = stream(0, "rmsnorm.w"), s3 = stream(0, "moe_gate.logits");
    uint64_t s4 = stream(0, "model.tokens");
    for (int i = 0; i < 256; i++) {
        float u1 = (float)((int64_t)(sm64(&s1) >> 40) - 8388608) / 8388608.0f;
        float u2 = (float)((int64_t)(sm64(&s2) >> 40) - 8388608) / 8388608.0f;
        assert_true(x[i] == u1);
        if (i < 64) assert_true(w[i] == fmaf(0.25f, u2, 1.0f));
        if (i < 32) assert_true(l[i] == fmaf(2.0f, (float)((int64_t)(sm64(&s3) >> 40) - 8388608) / 8388608.0f, 0.0f));
        if (i < 4) assert_int_equal(tok[i], (int)(((sm64(&s4) >> 32) * 256) >> 32));
    }
    printf("OK     inputs follow the documented generator (splitmix64 per tensor name, fmaf)\n");
    free(x); free(w); free(l); free(tok);
    st_close(&f);
    rm_rf(dir);
    free(dir);
}

/* --model: a real checkpoint's per-layer hidden states; its logits are model_forward's bit for bit
 * (and HF's within 1e-4); --verify re-runs it with --model and skips it without. */
static void check_checkpoint(const char *fx) {
    char *dir = make_tmpdir(), cmd[8192], path[512], ids[4096] = "", mdir[256];
    snprintf(path, sizeof path, "%s/g.safetensors", dir);
    snprintf(mdir, sizeof mdir, FIXTURES "/%s", fx);
    StFile x;
    Error e;
    snprintf(cmd, sizeof cmd, "%s/expected.safetensors", mdir);
    assert_int_equal(st_open(&x, cmd, &e), 0);
    const StTensor *p = st_find(&x, "prompt");
    int T = (int)p->numel, *prompt = malloc(sizeof(int) * T);
    for (int i = 0; i < T; i++) {
        prompt[i] = (int)dtype_load_f32(p->dtype, p->data, i);
        sprintf(ids + strlen(ids), "%s%d", i ? "," : "", prompt[i]);
    }
    float *hf = st_to_f32(st_find(&x, "logits"));
    st_close(&x);
    snprintf(cmd, sizeof cmd, "--model %s --tokens %s --out %s", mdir, ids, path);
    assert_int_equal(golden(cmd, NULL), 0);

    Model m;
    State s;
    assert_int_equal(model_load(&m, mdir, &e), 0);
    int V = m.cfg.vocab_size, d = m.cfg.hidden_size;
    float *logits = malloc(sizeof(float) * T * V);
    assert_int_equal(state_init(&s, &m, T, T, &e), 0); /* one chunk, as golden runs it */
    assert_int_equal(model_forward(&m, &s, prompt, T, 0, logits, 0, ATTN_ABSORBED, &e), 0);
    StFile f;
    assert_int_equal(st_open(&f, path, &e), 0);
    assert_int_equal(f.n_tensors, 1 + 1 + 2 * m.cfg.n_layers + 1 + 1); /* tokens, embed, layers, norm, logits */
    float *got = GET(&f, "model.logits", DT_F32, 1, T, V);
    char what[128];
    snprintf(what, sizeof what, "%s: golden model.logits vs model_forward", fx);
    same_bytes(what, got, logits, sizeof(float) * T * V);
    snprintf(what, sizeof what, "%s: golden model.logits vs HF transformers", fx);
    check_close(what, got, hf, (size_t)T * V, 1e-4);
    char n[64];
    snprintf(n, sizeof n, "model.hidden.%d.after_ffn", m.cfg.n_layers - 1);
    free(GET(&f, n, DT_F32, 1, T, d));
    free(got);
    st_close(&f);
    snprintf(cmd, sizeof cmd, "--verify %s --model %s --exact", path, mdir);
    assert_int_equal(golden(cmd, NULL), 0);
    snprintf(cmd, sizeof cmd, "--verify %s", path); /* without the checkpoint nothing is left to check */
    char err[4096];
    assert_int_equal(golden(cmd, err), 1);
    assert_non_null(strstr(err, "give --model DIR"));
    free(logits); free(hf); free(prompt);
    state_free(&s);
    model_free(&m);
    rm_rf(dir);
    free(dir);
}
static void test_checkpoint(void **st) {
    (void)st;
    check_checkpoint("v3_yarn");
    check_checkpoint("v3_fp8");  /* FP8 weights with block scales */
    check_checkpoint("v2_lite"); /* no query compression, softmax gate */
}

/* mla_kv_rows and mla_paged_decode (V3's latent, ragged lengths over pages): each format's bytes
 * as the definition spells them (BF16: f32_to_bf16; FP8: e4m3(x / (amax / 448)) per 128, the
 * scales, BF16 rope), the pool's rows where the block tables put them, and o_lat / lse recomputed
 * here in double from the widened rows. */
static void test_kv_formats(void **st) {
    (void)st;
    enum { B = 3, L = 130, H = 4, DC = 512, DR = 64, W = DC + DR, PER = 3, NP = B * PER };
    char path[512], *dir = golden_file(path, sizeof path, "--config " V3 " --functions mla_kv_rows,mla_paged_decode "
                                        "--shape batch=3 --shape cache=130 --shape heads=4");
    StFile f;
    Error e;
    assert_int_equal(st_open(&f, path, &e), 0);
    float *lat = GET(&f, "mla_kv_rows.latent", DT_F32, B, L, W), *wide = GET(&f, "mla_kv_rows.fp8_widened", DT_F32, B, L, W);
    uint8_t *bf = GET(&f, "mla_kv_rows.bf16", DT_U8, B, L, 2 * W), *f8 = GET(&f, "mla_kv_rows.fp8", DT_U8, B, L, 656);
    for (int r = 0; r < B * L; r++) {
        const float *x = lat + (size_t)r * W;
        for (int i = 0; i < W; i++) {
            uint16_t h;
            memcpy(&h, bf + (size_t)r * 2 * W + 2 * i, 2);
            assert_int_equal(h, f32_to_bf16(x[i]));
        }
        const uint8_t *row = f8 + (size_t)r * 656;
        for (int g = 0; g < 4; g++) {
            float amax = 0, scale;
            for (int i = 0; i < 128; i++) amax = fmaxf(amax, fabsf(x[g * 128 + i]));
            memcpy(&scale, row + DC + 4 * g, 4);
            assert_true(scale == amax / 448.0f);
            for (int i = g * 128; i < g * 128 + 128; i++) {
                assert_int_equal(row[i], fp8_e4m3_encode(x[i] / scale, FP8_SATURATE));
                assert_true(wide[(size_t)r * W + i] == fp8_e4m3_decode(row[i]) * scale);
            }
        }
        for (int i = 0; i < DR; i++) {
            uint16_t h;
            memcpy(&h, row + DC + 16 + 2 * i, 2);
            assert_int_equal(h, f32_to_bf16(x[DC + i]));
        }
    }
    printf("OK     mla_kv_rows: bf16 and fp8 bytes as the formats define them\n");
    free(lat); free(wide); free(bf); free(f8);

    float *q = GET(&f, "mla_paged_decode.q_abs", DT_F32, B, H, W), *pl = GET(&f, "mla_paged_decode.latent", DT_F32, B, L, W);
    int *lens = GET(&f, "mla_paged_decode.lens", DT_I32, B), *tab = GET(&f, "mla_paged_decode.block_tables", DT_I32, B, PER);
    float *scale = GET(&f, "mla_paged_decode.softmax_scale", DT_F32, 1);
    assert_int_equal(lens[0], 130); assert_int_equal(lens[1], 69); assert_int_equal(lens[2], 8);
    const char *fmt[] = {"f32", "bf16", "fp8"};
    const int rb[] = {4 * W, 2 * W, 656};
    for (int k = 0; k < 3; k++) {
        char n[64];
        snprintf(n, sizeof n, "mla_paged_decode.pool_%s", fmt[k]);
        uint8_t *pool = GET(&f, n, DT_U8, NP, 64, rb[k]);
        snprintf(n, sizeof n, "mla_paged_decode.o_lat_%s", fmt[k]);
        float *o = GET(&f, n, DT_F32, B, H, DC);
        snprintf(n, sizeof n, "mla_paged_decode.lse_%s", fmt[k]);
        float *lse = GET(&f, n, DT_F32, B, H);
        double worst = 0, worst_lse = 0;
        float *rows = malloc(sizeof(float) * L * W);
        for (int b = 0; b < B; b++) {
            for (int t = 0; t < lens[b]; t++) { /* token t of b: row t % 64 of page tab[b][t / 64] */
                uint8_t want[2304];
                const uint8_t *got = pool + ((size_t)tab[b * PER + t / 64] * 64 + t % 64) * rb[k];
                mla_kv_encode_row(want, (MlaKvFormat)k, pl + ((size_t)b * L + t) * W, DC, DR);
                assert_memory_equal(got, want, rb[k]);
                mla_kv_decode_row(rows + (size_t)t * W, (MlaKvFormat)k, got, DC, DR);
            }
            for (int h = 0; h < H; h++) {
                const float *qa = q + ((size_t)b * H + h) * W;
                double sc[L], mx = -INFINITY, z = 0;
                for (int t = 0; t < lens[b]; t++) {
                    sc[t] = 0;
                    for (int i = 0; i < W; i++) sc[t] += (double)qa[i] * rows[(size_t)t * W + i];
                    sc[t] *= scale[0];
                    mx = fmax(mx, sc[t]);
                }
                for (int t = 0; t < lens[b]; t++) z += exp(sc[t] - mx);
                for (int i = 0; i < DC; i++) {
                    double acc = 0;
                    for (int t = 0; t < lens[b]; t++) acc += exp(sc[t] - mx) / z * rows[(size_t)t * W + i];
                    worst = fmax(worst, fabs(acc - o[((size_t)b * H + h) * DC + i])); /* o_lat in [-1, 1] */
                }
                worst_lse = fmax(worst_lse, fabs(mx + log(z) - lse[b * H + h]) / fabs(mx + log(z)));
            }
        }
        printf("OK     mla_paged_decode %s: o_lat max abs err %.3g, lse rel err %.3g vs double (tol 1e-5)\n", fmt[k], worst, worst_lse);
        assert_true(worst <= 1e-5 && worst_lse <= 1e-5);
        free(rows); free(pool); free(o); free(lse);
    }
    free(q); free(pl); free(lens); free(tab); free(scale);
    char *help; /* --help names every recorded function */
    assert_int_equal(sh("./run golden --help", &help), 0);
    for (int i = 0; i < GOLDEN_N_FNS; i++) {
        char word[64];
        snprintf(word, sizeof word, " %s", GOLDEN_FNS[i].name);
        if (!strstr(help, word)) fail_msg("run golden --help does not name %s", GOLDEN_FNS[i].name);
    }
    free(help);
    st_close(&f);
    rm_rf(dir);
    free(dir);
}

/* A FlashMLA-like decode from V3's config without building the model: 128 heads, d_c 512 + d_R 64. */
static void test_flashmla_shape(void **st) {
    (void)st;
    char cmd[1024], path[512], *dir = golden_file(path, sizeof path, "--config " V3 " --functions mla_decode --shape batch=2 --shape cache=1024");
    StFile f;
    Error e;
    assert_int_equal(st_open(&f, path, &e), 0);
    free(GET(&f, "mla_decode.q_nope", DT_F32, 2, 1, 128, 128));
    free(GET(&f, "mla_decode.q_pe", DT_F32, 2, 1, 128, 64));
    free(GET(&f, "mla_decode.kv_cache", DT_F32, 2, 1024, 576));
    free(GET(&f, "mla_decode.kv_b_proj", DT_F32, 128 * 256, 512));
    free(GET(&f, "mla_decode.out", DT_F32, 2, 1, 128, 128));
    int *p0 = GET(&f, "mla_decode.pos0", DT_I32, 1);
    float *scale = GET(&f, "mla_decode.softmax_scale", DT_F32, 1);
    double m = 0.1 * log(40.0) + 1; /* YaRN mscale, V3: factor 40, mscale_all_dim 1 */
    printf("softmax_scale %.7f, expected 192^-0.5 * %.4f^2 = %.7f\n", scale[0], m, m * m / sqrt(192.0));
    assert_int_equal(p0[0], 1023);
    assert_true(fabs(scale[0] - m * m / sqrt(192.0)) < 1e-6);
    free(p0); free(scale);
    st_close(&f);
    snprintf(cmd, sizeof cmd, "--verify %s --exact", path);
    assert_int_equal(golden(cmd, NULL), 0);
    rm_rf(dir);
    free(dir);
}

/* Default function lists: all but the MoE ones for a dense config; only `model` with --model. */
static void test_defaults(void **st) {
    (void)st;
    char cmd[1024], path[512], *dir = golden_file(path, sizeof path, "--config " YARN " --shape experts=0");
    StFile f;
    Error e;
    assert_int_equal(st_open(&f, path, &e), 0);
    assert_null(st_find(&f, "moe_gate.logits"));
    assert_null(st_find(&f, "moe.out"));
    assert_non_null(st_find(&f, "decoder_layer.mlp.down_proj.weight")); /* a dense layer */
    assert_non_null(st_find(&f, "model.logits"));
    st_close(&f);
    snprintf(cmd, sizeof cmd, "--verify %s --exact", path);
    assert_int_equal(golden(cmd, NULL), 0);
    rm_rf(dir);
    free(dir);
}

static void expect(const char *args, int status, const char *needle) {
    char err[4096];
    printf("$ run golden %s\n", args);
    int rc = golden(args, err);
    assert_int_equal(rc, status);
    if (!strstr(err, needle)) fail_msg("expected \"%s\" in: %s", needle, err);
    assert_int_equal(strncmp(err, "run golden: ", 12), 0);
    if (status == 1) assert_int_equal(strchr(err, '\n') - err, (long)strlen(err) - 1); /* one line */
}

/* Command lines run golden must refuse: the exit status (2 usage, 1 runtime) and what it says. */
#define REFUSED_OUT " --out build/refused.safetensors" /* the refused lines' output path, in build/ (not /tmp: another session's file there changed the error seen) */
static const struct {
    const char *args;
    int status;
    const char *needle;
} bad_args[] = {
    {"", 2, "give one of --config"},
    {"--config " YARN " --model " FIXTURES "/v3_yarn" REFUSED_OUT, 2, "give one of"},
    {"--config " YARN, 2, "--out G.safetensors is required"},
    {"--config " YARN " --out", 2, "--out needs a value"},
    {"--config " YARN " --bogus" REFUSED_OUT, 2, "unknown option \"--bogus\""},
    {"--config " YARN " --seed -1" REFUSED_OUT, 2, "--seed: expected a decimal integer"},
    {"--config " YARN " --seed 0x10" REFUSED_OUT, 2, "--seed: expected a decimal integer"},
    {"--config " YARN " --seed 99999999999999999999999" REFUSED_OUT, 2, "in 0..2^64-1"},
    {"--config " YARN " --functions rmsnorm," REFUSED_OUT, 1, "expected comma-separated names"},
    {"--model " FIXTURES "/v3_yarn --tokens 5 --shape hidden=32" REFUSED_OUT, 1, "the checkpoint sets the model's sizes"},
    {"--model " FIXTURES "/v3_yarn --tokens 5 --shape batch=2" REFUSED_OUT, 1, "batch is 1"},
    {"--config " YARN " --tokens 0" REFUSED_OUT, 2, "--tokens: expected a count"},
    {"--config /nonexistent.json" REFUSED_OUT, 1, "/nonexistent.json: cannot open"},
    {"--config " YARN " --functions rmsnorm,nope" REFUSED_OUT, 1, "unknown function \"nope\""},
    {"--config " YARN " --shape foo=3" REFUSED_OUT, 1, "name one of: batch tokens cache"},
    {"--config " YARN " --shape rope=7" REFUSED_OUT, 1, "rope must be even"},
    {"--config " YARN " --shape cache=2" REFUSED_OUT, 1, "cache >= tokens"},
    {"--config " YARN " --shape heads=x" REFUSED_OUT, 1, "expected a non-negative integer"},
    {"--config " YARN " --shape experts=0 --functions moe" REFUSED_OUT, 1, "moe needs routed experts"},
    {"--model " FIXTURES "/v3_yarn --tokens 5,x" REFUSED_OUT, 2, "comma-separated ids"},
    {"--model " FIXTURES "/v3_yarn --tokens 5,999" REFUSED_OUT, 1, "id 999 is outside the vocabulary [0, 256)"},
    {"--model /nonexistent --tokens 5" REFUSED_OUT, 1, "/nonexistent/config.json: cannot open"},
    {"--verify " FIXTURES "/v3_yarn/expected.safetensors", 1, "not a golden file"},
    {"--verify build/refused-in.safetensors" REFUSED_OUT, 2, "--verify takes only"},
};

static void test_errors(void **st) {
    (void)st;
    for (size_t i = 0; i < sizeof bad_args / sizeof *bad_args; i++) expect(bad_args[i].args, bad_args[i].status, bad_args[i].needle);
    /* V3's whole MoE layer is 45 GB of FP32 weights: refused before any memory is touched, no file */
    char *dir = make_tmpdir(), args[1024], path[512];
    snprintf(path, sizeof path, "%s/big.safetensors", dir);
    snprintf(args, sizeof args, "--config " V3 " --functions moe --out %s", path);
    expect(args, 1, "moe.gate_proj: the golden file would pass 8 GiB");
    assert_int_not_equal(access(path, F_OK), 0);
    rm_rf(dir);
    free(dir);
    assert_int_equal(golden_main(1, (char *[]){"--help", NULL}), 0);
}

/* Two separate processes, then cmp: the bytes of a golden file do not depend on the run. And a file
 * made from a checkpoint cannot be verified without it (rather than passing with nothing checked). */
static void test_two_runs_cmp(void **st) {
    (void)st;
    char *dir = make_tmpdir(), cmd[2048], *out;
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=%d ./run golden --config " YARN " --seed 11 --out %s/g%d.safetensors", 1 + i, dir, i);
        assert_int_equal(sh(cmd, &out), 0);
        free(out);
    }
    snprintf(cmd, sizeof cmd, "cmp %s/g0.safetensors %s/g1.safetensors", dir, dir);
    assert_int_equal(sh(cmd, &out), 0);
    free(out);
    printf("two processes (1 and 2 OpenMP threads): identical golden files\n");
    snprintf(cmd, sizeof cmd, "./run golden --model " FIXTURES "/v3_yarn --tokens 5,17 --out %s/m.safetensors && "
             "./run golden --verify %s/m.safetensors", dir, dir);
    assert_int_equal(sh(cmd, &out), 1);
    assert_non_null(strstr(out, "nothing to verify without the checkpoint"));
    free(out);
    assert_int_equal(sh("./run golden --config " YARN " --functions '' --out /tmp/dsv3-none.safetensors", &out), 1);
    assert_non_null(strstr(out, "expected comma-separated names"));
    free(out);
    rm_rf(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deterministic), cmocka_unit_test(test_complete),   cmocka_unit_test(test_replay),
        cmocka_unit_test(test_verify),        cmocka_unit_test(test_generator),  cmocka_unit_test(test_checkpoint),
        cmocka_unit_test(test_flashmla_shape), cmocka_unit_test(test_defaults),  cmocka_unit_test(test_errors),
        cmocka_unit_test(test_two_runs_cmp),  cmocka_unit_test(test_kv_formats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
