/* init.c - `run init`: a random checkpoint for a config.json, with the tensor names and shapes the
 * loader (weights.c) expects. The same seed gives the same bytes on any machine (Rng, ops.c).
 */
#include "init.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    StWriteTensor *t;
    float **data;
    int n, cap;
    Rng rng;
} Manifest;

/* kind: 0 matrix N(0, 1/cols), 1 norm weight in [0.8, 1.2], 2 bias in [0.01, 0.11], 3 embedding N(0, 1) */
static void add(Manifest *f, int kind, int rows, int cols, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void add(Manifest *f, int kind, int rows, int cols, const char *fmt, ...) {
    if (f->n == f->cap) {
        f->cap = f->cap ? 2 * f->cap : 64;
        f->t = realloc(f->t, sizeof(StWriteTensor) * f->cap);
        f->data = realloc(f->data, sizeof(float *) * f->cap);
    }
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    size_t n = (size_t)rows * (cols ? cols : 1);
    float *d = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) {
        if (kind == 0 || kind == 3) {
            float gauss = rng_normal(&f->rng);
            d[i] = kind == 0 ? gauss / sqrtf((float)cols) : gauss;
        } else {
            float u = rng_uniform(&f->rng);
            rng_uniform(&f->rng); /* every value takes two draws, as a normal does */
            d[i] = kind == 1 ? 0.8f + 0.4f * u : 0.01f + 0.1f * u;
        }
    }
    f->data[f->n] = d;
    f->t[f->n] = (StWriteTensor){.name = strdup(name), .dtype = DT_F32, .ndim = cols ? 2 : 1, .shape = {rows, cols}, .data = d};
    f->n++;
}

static void add_ffn(Manifest *f, const char *p, int d, int inter) {
    add(f, 0, inter, d, "%s.gate_proj.weight", p);
    add(f, 0, inter, d, "%s.up_proj.weight", p);
    add(f, 0, d, inter, "%s.down_proj.weight", p);
}

static void add_layer(Manifest *f, const Config *c, int l) {
    int d = c->hidden_size, nh = c->n_heads, qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    char p[300];
    add(f, 1, d, 0, "model.layers.%d.input_layernorm.weight", l);
    add(f, 1, d, 0, "model.layers.%d.post_attention_layernorm.weight", l);
    if (c->q_lora_rank) {
        add(f, 0, c->q_lora_rank, d, "model.layers.%d.self_attn.q_a_proj.weight", l);
        add(f, 1, c->q_lora_rank, 0, "model.layers.%d.self_attn.q_a_layernorm.weight", l);
        add(f, 0, nh * qk, c->q_lora_rank, "model.layers.%d.self_attn.q_b_proj.weight", l);
    } else {
        add(f, 0, nh * qk, d, "model.layers.%d.self_attn.q_proj.weight", l);
    }
    add(f, 0, c->kv_lora_rank + c->qk_rope_head_dim, d, "model.layers.%d.self_attn.kv_a_proj_with_mqa.weight", l);
    add(f, 1, c->kv_lora_rank, 0, "model.layers.%d.self_attn.kv_a_layernorm.weight", l);
    add(f, 0, nh * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank, "model.layers.%d.self_attn.kv_b_proj.weight", l);
    add(f, 0, d, nh * c->v_head_dim, "model.layers.%d.self_attn.o_proj.weight", l);
    if (!config_is_moe_layer(c, l)) {
        snprintf(p, sizeof p, "model.layers.%d.mlp", l);
        add_ffn(f, p, d, c->intermediate_size);
        return;
    }
    add(f, 0, c->n_routed_experts, d, "model.layers.%d.mlp.gate.weight", l);
    if (c->topk_method == TOPK_NOAUX_TC) add(f, 2, c->n_routed_experts, 0, "model.layers.%d.mlp.gate.e_score_correction_bias", l);
    for (int x = 0; x < c->n_routed_experts; x++) {
        snprintf(p, sizeof p, "model.layers.%d.mlp.experts.%d", l, x);
        add_ffn(f, p, d, c->moe_intermediate_size);
    }
    snprintf(p, sizeof p, "model.layers.%d.mlp.shared_experts", l);
    if (c->n_shared_experts) add_ffn(f, p, d, c->n_shared_experts * c->moe_intermediate_size);
}

int model_init_random(const char *config_path, const char *out_dir, uint64_t seed, int with_mtp, Error *e) {
    Config c;
    if (config_load(&c, config_path, e)) return -1;
    Manifest f = {0};
    rng_seed(&f.rng, seed);
    int d = c.hidden_size, L = c.n_layers;
    add(&f, 3, c.vocab_size, d, "model.embed_tokens.weight");
    for (int l = 0; l < L; l++) add_layer(&f, &c, l);
    add(&f, 1, d, 0, "model.norm.weight");
    add(&f, 0, c.vocab_size, d, "lm_head.weight");
    if (with_mtp) {
        add(&f, 1, d, 0, "model.layers.%d.enorm.weight", L);
        add(&f, 1, d, 0, "model.layers.%d.hnorm.weight", L);
        add(&f, 0, d, 2 * d, "model.layers.%d.eh_proj.weight", L);
        add(&f, 1, d, 0, "model.layers.%d.shared_head.norm.weight", L);
        add_layer(&f, &c, L);
    }
    int rc = -1;
    char path[4096];
    /* config.json: the given one, with num_nextn_predict_layers set to what was written */
    char *text = read_file(config_path, NULL, NULL);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    snprintf(path, sizeof path, "%s/config.json", out_dir);
    FILE *out = NULL;
    if (!root) error_set(e, "%s: cannot read", config_path);
    else if (mkdir(out_dir, 0755) && errno != EEXIST) error_set(e, "%s: cannot create the directory", out_dir);
    else if (!(out = fopen(path, "wb"))) error_set(e, "%s: cannot write", path);
    else {
        cJSON_DeleteItemFromObject(root, "num_nextn_predict_layers");
        cJSON_AddNumberToObject(root, "num_nextn_predict_layers", with_mtp ? 1 : 0);
        cJSON_DeleteItemFromObject(root, "quantization_config"); /* the weights written are F32 */
        char *json = cJSON_Print(root);
        fputs(json, out);
        fputc('\n', out);
        free(json);
        fclose(out);
        snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
        const char *keys[] = {"format", "generator"}, *vals[] = {"pt", "dsv3.c run init"};
        rc = st_write(path, f.t, f.n, keys, vals, 2, e);
    }
    cJSON_Delete(root);
    for (int i = 0; i < f.n; i++) {
        free((char *)f.t[i].name);
        free(f.data[i]);
    }
    free(f.t);
    free(f.data);
    return rc;
}
