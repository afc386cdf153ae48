/* init.c - `run init`: a random checkpoint for a config.json, every tensor of the manifest
 * (manifest.c: the names and shapes the loader expects), drawn in the manifest's order from one Rng
 * stream (ops.c), so the same seed gives the same bytes on any machine:
 *   Linear weights, router, lm_head, eh_proj   N(0, 1/fan_in), fan_in = cols
 *   embed_tokens                               N(0, 1)
 *   norm weights                               uniform in [0.8, 1.2)
 *   e_score_correction_bias                    uniform in [0.01, 0.11): small and positive
 * (a uniform value takes two draws, as a normal does).
 *
 * --dtype bf16 and fp8 write what `run quantize --to bf16 / fp8` makes of the F32 checkpoint of the
 * same seed, by quantize.c's rules: bf16 rounds every tensor but the correction bias (which stays
 * F32); fp8 stores the Linear weights (MK_LINEAR) as E4M3 codes with one F32 weight_scale_inv per
 * 128 x 128 block, DeepSeek-V3's layout, and keeps the rest F32; config.json gets quantize's
 * quantization_config and torch_dtype. The safetensors file is streamed: its header first, then each
 * tensor drawn, converted, written and freed, so memory holds one tensor (V2-Lite's largest is
 * embed_tokens [102400, 2048], 0.84 GB in F32), not the checkpoint (17.0 GB in FP8 for V2-Lite).
 */
#include "init.h"
#include "outfile.h"

#include "manifest.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define INIT_FP8_BLOCK 128 /* weight blocks of 128 x 128: V3 report 3.3.2 */

/* d [rows * max(cols, 1)]: the values of entry x, the next draws of rng. */
static void draw(float *d, const ManifestEntry *x, Rng *rng) {
    size_t n = (size_t)x->rows * (size_t)(x->cols ? x->cols : 1);
    for (size_t i = 0; i < n; i++) {
        if (x->kind == MK_LINEAR || x->kind == MK_MATRIX || x->kind == MK_EMBED) {
            float gauss = rng_normal(rng);
            d[i] = x->kind == MK_EMBED ? gauss : gauss / sqrtf((float)x->cols);
        } else {
            float u = rng_uniform(rng);
            rng_uniform(rng); /* every value takes two draws, as a normal does */
            d[i] = x->kind == MK_NORM ? 0.8f + 0.4f * u : 0.01f + 0.1f * u;
        }
    }
}

/* The dtype `run quantize --to to` gives an F32 tensor of kind k (quantize.c's target()). */
static DType written_dtype(ManifestKind k, QuantTarget to) {
    if (to == QUANT_TO_BF16) return k == MK_BIAS ? DT_F32 : DT_BF16;
    if (to == QUANT_TO_FP8 && k == MK_LINEAR) return DT_F8_E4M3;
    return DT_F32;
}

static int cdiv(int a, int b) { return (a + b - 1) / b; }

/* config.json: the given one, with num_nextn_predict_layers set to what is written; no
 * quantization_config (f32, as before --dtype existed), or quantize's (bf16, fp8). */
static int write_config(const char *config_path, const char *out_dir, int with_mtp, QuantTarget to, Error *e) {
    char *text = read_file(config_path, NULL, NULL), path[4096];
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    snprintf(path, sizeof path, "%s/config.json", out_dir);
    int rc = -1;
    if (!root) error_set(e, "%s: cannot read", config_path);
    else if (mkdir(out_dir, 0755) && errno != EEXIST) error_set(e, "%s: cannot create the directory", out_dir);
    else {
        cJSON_DeleteItemFromObject(root, "num_nextn_predict_layers");
        cJSON_AddNumberToObject(root, "num_nextn_predict_layers", with_mtp ? 1 : 0);
        cJSON_DeleteItemFromObject(root, "quantization_config");
        QuantOptions o = {.to = to, .block = INIT_FP8_BLOCK, .scale_fmt = FP8_SCALE_F32};
        if (to != QUANT_TO_F32) quant_edit_config(root, &o);
        char *json = cJSON_Print(root), *line = json ? malloc(strlen(json) + 2) : NULL;
        /* whole or not at all, as every output (outfile.h) */
        rc = line ? outfile_write(path, line, (size_t)sprintf(line, "%s\n", json), e) : error_set(e, "%s: out of memory", path);
        free(json);
        free(line);
    }
    cJSON_Delete(root);
    return rc;
}

/* Entry x drawn and written as tensor k (and its scales as k + 1 for E4M3). */
static int write_entry(StWriter *w, int k, const ManifestEntry *x, DType dt, Rng *rng, Error *e) {
    size_t n = (size_t)x->rows * (size_t)(x->cols ? x->cols : 1);
    float *v = malloc(sizeof(float) * (n ? n : 1));
    if (!v) return error_set(e, "%s: out of memory for %zu floats", x->name, n);
    draw(v, x, rng);
    int rc;
    if (dt == DT_F32) rc = st_write_tensor(w, k, v, e);
    else if (dt == DT_BF16) {
        uint16_t *h = malloc(2 * (n ? n : 1));
        for (size_t i = 0; h && i < n; i++) h[i] = f32_to_bf16(v[i]);
        rc = h ? st_write_tensor(w, k, h, e) : error_set(e, "%s: out of memory", x->name);
        free(h);
    } else {
        uint8_t *q = malloc(n ? n : 1);
        float *s = malloc(sizeof(float) * (size_t)cdiv(x->rows, INIT_FP8_BLOCK) * (size_t)cdiv(x->cols, INIT_FP8_BLOCK));
        if (q && s) fp8_quant_block(q, s, v, x->rows, x->cols, INIT_FP8_BLOCK, INIT_FP8_BLOCK, FP8_SCALE_F32);
        rc = !q || !s ? error_set(e, "%s: out of memory", x->name)
                      : st_write_tensor(w, k, q, e) || st_write_tensor(w, k + 1, s, e) ? -1 : 0;
        free(q);
        free(s);
    }
    free(v);
    return rc;
}

int model_init_random(const char *config_path, const char *out_dir, uint64_t seed, int with_mtp, QuantTarget to,
                      Error *e) {
    Config c;
    Manifest mf;
    if (config_load(&c, config_path, e) || manifest_model(&mf, &c, with_mtp, e)) return -1;
    /* what the file holds: every entry but the optional ones, an E4M3 weight followed by its scales */
    StWriteTensor *ts = calloc((size_t)2 * mf.n + 1, sizeof *ts);
    char (*snames)[sizeof mf.e[0].name + 16] = calloc((size_t)mf.n + 1, sizeof *snames);
    int n = 0, rc = ts && snames ? 0 : error_set(e, "out of memory for %d tensors", mf.n);
    for (int i = 0; i < mf.n && !rc; i++) {
        const ManifestEntry *x = &mf.e[i];
        if (x->optional) continue;
        DType dt = written_dtype(x->kind, to);
        ts[n++] = (StWriteTensor){.name = x->name, .dtype = dt, .ndim = x->cols ? 2 : 1, .shape = {x->rows, x->cols}};
        if (dt != DT_F8_E4M3) continue;
        snprintf(snames[i], sizeof snames[i], "%s_scale_inv", x->name);
        ts[n++] = (StWriteTensor){.name = snames[i], .dtype = DT_F32, .ndim = 2,
                                  .shape = {cdiv(x->rows, INIT_FP8_BLOCK), cdiv(x->cols, INIT_FP8_BLOCK)}};
    }
    if (!rc) rc = write_config(config_path, out_dir, with_mtp, to, e);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
    const char *keys[] = {"format", "generator"}, *vals[] = {"pt", "dsv3.c run init"};
    StWriter *w = rc ? NULL : st_write_begin(path, ts, n, keys, vals, 2, e);
    if (!rc && !w) rc = -1;
    Rng rng;
    rng_seed(&rng, seed);
    for (int i = 0, k = 0; i < mf.n && !rc; i++) {
        const ManifestEntry *x = &mf.e[i];
        if (x->optional) continue;
        rc = write_entry(w, k, x, ts[k].dtype, &rng, e);
        k += ts[k].dtype == DT_F8_E4M3 ? 2 : 1;
    }
    if (w && rc) st_write_abort(w);
    else if (w) rc = st_write_end(w, e);
    free(ts);
    free(snames);
    manifest_free(&mf);
    return rc;
}
