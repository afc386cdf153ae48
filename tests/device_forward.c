/* tests/device_forward.c - the forward pass on the GPU (model.cu) against the C forward (model.c).
 * make cuda builds it as build/cuda/test_device (not a tests/test_*.c: make test runs those on CPUs).
 *
 *   make cuda-test            (builds, then runs ./build/cuda/test_device among the CUDA checks)
 *   ./build/cuda/test_device --quick   one fixture and one bundled model, 8 greedy tokens (for
 *                                      compute-sanitizer)
 *
 * For every HF fixture (tests/fixtures/v*) and the bundled models (BF16 and FP8), on the same
 * prompt: the logits of one prefill, of token-by-token decode and of the naive attention form,
 * max|gpu - cpu| / max|cpu| <= 1e-4 (the metric of notes/golden.md); the fixtures' logits against
 * HF's too (test_model.c's tolerance, 1e-4); a greedy continuation of 64 tokens (EOS ignored) must
 * equal C's token for token, and with --mtp (models with an MTP module) the device's speculative
 * greedy must equal it as well. Not a cmocka test: a GPU box may lack cmocka; each check prints
 * "OK" or "NOT OK" and the exit status is 1 when any is NOT OK.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "generate.h"
#include "safetensors.h"
#include "tests/rel_err.h"

#define TOL 1e-4
static int N_GREEDY = 64; /* 8 with --quick */

static int failures = 0;

static void check(const char *what, double err, double tol) {
    int ok = err <= tol;
    printf("%s %s: max rel err %.3g (tol %.0e)\n", ok ? "OK    " : "NOT OK", what, err, tol);
    failures += !ok;
}

static void check_ids(const char *what, const int *got, int n_got, const int *want, int n_want) {
    int differ = n_got != n_want, first = -1;
    for (int i = 0; i < n_got && i < n_want; i++)
        if (got[i] != want[i]) { differ++; if (first < 0) first = i; }
    if (differ) printf("NOT OK %s: %d of %d tokens differ (first at %d)\n", what, differ, n_want, first);
    else printf("OK     %s: %d tokens identical\n", what, n_want);
    failures += differ != 0;
}

static void die_on(int rc, const Error *e) {
    if (rc) {
        printf("NOT OK %s\n", e->msg);
        exit(1);
    }
}

/* logits [T, V] of prompt on a fresh state on `device`: prefill (decode 0) or one token at a time. */
static float *run_logits(const Model *m, const char *device, const int *prompt, int T, int decode, AttnForm form) {
    State s;
    Error e;
    int V = m->cfg.vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)T * V);
    die_on(state_init_device(&s, m, T + 8, 64, device, &e), &e);
    if (decode)
        for (int t = 0; t < T; t++) die_on(model_forward(m, &s, prompt + t, 1, t, logits + (size_t)t * V, 1, form, &e), &e);
    else die_on(model_forward(m, &s, prompt, T, 0, logits, 0, form, &e), &e);
    state_free(&s);
    return logits;
}

static GenResult run_greedy(const Model *m, const char *device, const int *prompt, int T, int mtp) {
    State s;
    Error e;
    GenOptions o = {.temp = 0, .top_p = 1, .n_new = N_GREEDY, .ignore_eos = 1, .eos = -1, .mtp = mtp};
    GenResult r;
    die_on(state_init_device(&s, m, T + N_GREEDY + 8, 64, device, &e), &e);
    die_on(generate(m, &s, NULL, prompt, T, &o, &r, &e), &e);
    state_free(&s);
    return r;
}

/* Every check on one checkpoint; hf: its HF logits [T, V] or NULL. */
static void check_model(const char *dir, const int *prompt, int T, const float *hf) {
    Model m;
    Error e;
    char what[600];
    die_on(model_load(&m, dir, &e), &e);
    size_t n = (size_t)T * m.cfg.vocab_size;
    float *cpu = run_logits(&m, "cpu", prompt, T, 0, ATTN_ABSORBED);
    const char *modes[] = {"prefill", "decode", "naive prefill"};
    for (int k = 0; k < 3; k++) {
        AttnForm form = k == 2 ? ATTN_NAIVE : ATTN_ABSORBED;
        float *ref = k == 2 ? run_logits(&m, "cpu", prompt, T, 0, form) : k == 1 ? run_logits(&m, "cpu", prompt, T, 1, form) : cpu;
        float *gpu = run_logits(&m, "cuda", prompt, T, k == 1, form);
        snprintf(what, sizeof what, "%s: %s logits [%d, %d], cuda vs C", dir, modes[k], T, m.cfg.vocab_size);
        check(what, rel_err(gpu, ref, n), TOL);
        if (hf && k == 0) {
            snprintf(what, sizeof what, "%s: prefill logits, cuda vs HF transformers", dir);
            check(what, rel_err(gpu, hf, n), TOL);
        }
        if (ref != cpu) free(ref);
        free(gpu);
    }
    free(cpu);
    GenResult c = run_greedy(&m, "cpu", prompt, T, 0), g = run_greedy(&m, "cuda", prompt, T, 0);
    snprintf(what, sizeof what, "%s: greedy %d tokens, cuda vs C", dir, N_GREEDY);
    check_ids(what, g.ids, g.n, c.ids, c.n);
    if (m.has_mtp) {
        GenResult t = run_greedy(&m, "cuda", prompt, T, 1);
        snprintf(what, sizeof what, "%s: --mtp greedy on cuda vs C plain greedy (%d of %d drafts kept)", dir, t.accepted, t.drafted);
        check_ids(what, t.ids, t.n, c.ids, c.n);
        free(t.ids);
    }
    free(c.ids); free(g.ids);
    model_free(&m);
}

static void check_fixture(const char *name) {
    char dir[256], path[300];
    snprintf(dir, sizeof dir, "tests/fixtures/%s", name);
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    StFile f;
    Error e;
    die_on(st_open(&f, path, &e), &e);
    const StTensor *p = st_find(&f, "prompt"), *l = st_find(&f, "logits");
    if (!p || !l) { printf("NOT OK %s: no prompt / logits\n", path); failures++; st_close(&f); return; }
    int T = (int)p->numel, *prompt = malloc(sizeof(int) * T);
    for (int i = 0; i < T; i++) prompt[i] = (int)dtype_load_f32(p->dtype, p->data, i);
    float *hf = st_to_f32(l);
    check_model(dir, prompt, T, hf);
    free(prompt); free(hf);
    st_close(&f);
}

/* The bundled models on the first 48 held-out ids (after BOS). */
static void check_bundled(const char *dir) {
    StFile f;
    Error e;
    die_on(st_open(&f, "tests/fixtures/bundled/heldout_ids.safetensors", &e), &e);
    const StTensor *t = st_find(&f, "heldout_ids");
    int T = 48, prompt[48];
    prompt[0] = 0; /* the bundled tokenizer's BOS */
    for (int i = 1; i < T; i++) prompt[i] = (int)dtype_load_f32(t->dtype, t->data, (size_t)i - 1);
    st_close(&f);
    check_model(dir, prompt, T, NULL);
}

int main(int argc, char **argv) {
    int quick = argc > 1 && !strcmp(argv[1], "--quick");
    if (quick) N_GREEDY = 8;
    const char *fixtures[] = {"v3_yarn", "v3_fp8", "v3_sharded", "v2_lite", "v2_group", "v2_norm"};
    for (int i = 0; i < (quick ? 1 : 6); i++) check_fixture(fixtures[i]);
    check_bundled("models/kjv-v3");
    if (!quick) check_bundled("models/kjv-v3-fp8");
    printf(failures ? "%d NOT OK\n" : "all OK\n", failures);
    return failures ? 1 : 0;
}
