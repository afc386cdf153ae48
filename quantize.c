/* quantize.c - `run quantize`: a checkpoint to DeepSeek's FP8 layout and back, and the FP8 GEMM switch.
 *
 * What DeepSeek-V3 stores in FP8 (its published checkpoint; V3 report 3.3): the Linear weights of
 * attention and of the FFNs, nearly all of the 671B parameters, as E4M3 codes [out, in] with one FP32
 * `weight_scale_inv` per 128 x 128 block (w ~= code * scale, scale = amax / 448, fp8.c):
 *   self_attn.{q_a_proj, q_b_proj, q_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj}.weight
 *   mlp.{gate,up,down}_proj.weight, mlp.experts.E.*, mlp.shared_experts.*   (every decoder layer,
 *                                                                            the MTP module's too)
 * What stays BF16 (F32 for the correction bias), and why. The report keeps "the embedding module,
 * the output head, MoE gating modules, normalization operators, and attention operators" in their
 * original precision for stable training dynamics, and each is cheap to keep:
 *   - embed_tokens is a lookup, not a GEMM: FP8 would save memory but no compute;
 *   - lm_head (and the MTP's shared_head.head) makes the logits themselves;
 *   - the router (mlp.gate.weight [n_experts, d]) feeds a discrete top-k choice that a small error
 *     can flip; e_score_correction_bias is F32 (vLLM PR 23640, transformers PR 42580) because the
 *     aux-loss-free balancing moves it in 1e-3 steps;
 *   - RMSNorm weights (and the MTP's enorm, hnorm) are vectors of d: no size to save;
 *   - the MTP's eh_proj [d, 2d] is BF16 in deepseek-ai/DeepSeek-V3: the tensor listing in the README
 *     of simpx/model-inspect shows model.layers.61.eh_proj.weight as BF16 with no scale_inv, and
 *     vLLM's deepseek_mtp.py loads it into a plain nn.Linear, which takes no FP8 scales.
 *
 * The conversions (every other tensor is copied as stored):
 *   --to fp8   listed weights: widened to F32 (an FP8 input dequantized), then fp8_quant_block with
 *              --block b and --scale; an E4M3 input already in b x b blocks is copied as it is.
 *   --to bf16  as DeepSeek's fp8_cast_bf16.py: FP8 weights dequantized (code * scale in FP32) and
 *              rounded to BF16, weight_scale_inv dropped; other float tensors rounded to BF16 too,
 *              except e_score_correction_bias.
 *   --to f32   the same, in F32 (exact for BF16, F16 and dequantized FP8).
 */
#include "quantize.h"
#include "outfile.h"
#include "manifest.h"

#include <cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- which tensors are FP8 ----------------------------------------------------------------------- */

int quant_is_fp8_weight(const char *name) { return manifest_kind_of(name) == MK_LINEAR; }

/* ---- one tensor ---------------------------------------------------------------------------------- */

typedef struct {
    const QuantOptions *o;
    StFile st;
    int in_block[2]; /* the input's weight_block_size (for its FP8 weights), [128, 128] by default */
    int in_ue8m0;    /* the input's scales are powers of two already (scale_fmt "ue8m0") */
} Conv;

/* The tensors of one output file: data borrowed from the input's mapping, or owned (own [n_own]). */
typedef struct {
    StWriteTensor *t;
    void **own;
    int n, n_own;
} Batch;

static void *keep(Batch *b, void *p) {
    if (p) b->own[b->n_own++] = p;
    return p;
}

static void add(Batch *b, const char *name, DType dt, int ndim, const int64_t *shape, const void *data) {
    StWriteTensor *w = &b->t[b->n++];
    *w = (StWriteTensor){.name = name, .dtype = dt, .ndim = ndim, .data = data};
    memcpy(w->shape, shape, sizeof(int64_t) * (size_t)ndim);
}

static int is_fp8(DType t) { return t == DT_F8_E4M3 || t == DT_F8_E5M2; }
static int is_float(DType t) { return is_fp8(t) || t == DT_F32 || t == DT_BF16 || t == DT_F16 || t == DT_F64; }

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* A weight_scale_inv that belongs to an FP8 weight: written (or dropped) with that weight. */
static int is_scale_of_fp8(const Conv *c, const StTensor *t) {
    if (!ends_with(t->name, "_scale_inv")) return 0;
    char base[512];
    snprintf(base, sizeof base, "%.*s", (int)(strlen(t->name) - 10), t->name);
    const StTensor *w = st_find(&c->st, base);
    return w && is_fp8(w->dtype);
}

/* The scales of FP8 weight t [r, c]: NAME_scale_inv [ceil(r/br), ceil(c/bc)], or NULL with e set. */
static const StTensor *scale_of(const Conv *c, const StTensor *t, Error *e) {
    char name[512];
    if (t->ndim != 2 || t->shape[0] > INT_MAX || t->shape[1] > INT_MAX) {
        error_set(e, "%s: an FP8 tensor must be a 2-D weight [rows, cols]", t->name);
        return NULL;
    }
    snprintf(name, sizeof name, "%s_scale_inv", t->name);
    int64_t shape[2] = {(t->shape[0] + c->in_block[0] - 1) / c->in_block[0],
                        (t->shape[1] + c->in_block[1] - 1) / c->in_block[1]};
    return st_expect(&c->st, name, 2, shape, e);
}

/* The dtype t is written in; *requant = 1 when an FP8 weight must be quantized anew, not copied. */
static DType target(const Conv *c, const StTensor *t, int *requant) {
    const QuantOptions *o = c->o;
    *requant = 0;
    if (!is_float(t->dtype)) return t->dtype;
    if (o->to == QUANT_TO_F32) return DT_F32;
    if (o->to == QUANT_TO_BF16)
        return !is_fp8(t->dtype) && ends_with(t->name, "e_score_correction_bias") ? t->dtype : DT_BF16;
    if (t->ndim != 2 || t->shape[0] > INT_MAX || t->shape[1] > INT_MAX || !quant_is_fp8_weight(t->name)) return t->dtype;
    *requant = !(t->dtype == DT_F8_E4M3 && c->in_block[0] == o->block && c->in_block[1] == o->block &&
                 (o->scale_fmt == FP8_SCALE_F32 || c->in_ue8m0));
    return DT_F8_E4M3;
}

/* t as FP32 values, malloc'ed; an FP8 weight dequantized with its block scales s. */
static float *widen(const Conv *c, const StTensor *t, const StTensor *s) {
    if (!s) return st_to_f32(t);
    float *w = malloc(sizeof(float) * (size_t)t->numel), *sc = st_to_f32(s);
    if (w && sc) {
        Tensor W = {.data = t->data, .dtype = t->dtype, .rows = (int)t->shape[0], .cols = (int)t->shape[1],
                    .scale_inv = sc, .block_r = c->in_block[0], .block_c = c->in_block[1]};
        tensor_rows_f32(w, &W, 0, W.rows);  /* code * scale in FP32, as DeepSeek's weight_dequant */
    } else {
        free(w);
        w = NULL;
    }
    free(sc);
    return w;
}

/* Appends what t becomes (nothing, itself, a converted copy, or E4M3 codes and their scales). */
static int convert(const Conv *c, const StTensor *t, Batch *b, QuantStats *stats, Error *e) {
    if (is_scale_of_fp8(c, t)) return 0;
    int requant;
    DType want = target(c, t, &requant);
    const StTensor *s = NULL;
    if (is_fp8(t->dtype) && !(s = scale_of(c, t, e))) return -1;
    if (want == t->dtype && !requant) { /* as stored, FP8 with its scales */
        add(b, t->name, t->dtype, t->ndim, t->shape, t->data);
        if (s) add(b, s->name, s->dtype, s->ndim, s->shape, s->data);
        return 0;
    }
    float *w = widen(c, t, s);
    size_t n = (size_t)t->numel;
    if (!w) return error_set(e, "%s: out of memory widening %zu elements to F32", t->name, n);
    stats->n_dequantized += s != NULL;
    if (want == DT_F32) {
        add(b, t->name, DT_F32, t->ndim, t->shape, keep(b, w));
        return 0;
    }
    if (want == DT_BF16) {
        uint16_t *h = keep(b, malloc(2 * (n ? n : 1)));
        for (size_t i = 0; h && i < n; i++) h[i] = f32_to_bf16(w[i]);
        free(w);
        if (!h) return error_set(e, "%s: out of memory", t->name);
        add(b, t->name, DT_BF16, t->ndim, t->shape, h);
        return 0;
    }
    int rows = (int)t->shape[0], cols = (int)t->shape[1], bl = c->o->block;
    int64_t sshape[2] = {(rows + bl - 1) / bl, (cols + bl - 1) / bl};
    uint8_t *q = keep(b, malloc(n ? n : 1));
    float *sc = keep(b, malloc(sizeof(float) * (size_t)(sshape[0] * sshape[1])));
    char *sname = keep(b, malloc(strlen(t->name) + 11));
    if (q && sc && sname) {
        sprintf(sname, "%s_scale_inv", t->name);
        fp8_quant_block(q, sc, w, rows, cols, bl, bl, c->o->scale_fmt);
    }
    free(w);
    if (!q || !sc || !sname) return error_set(e, "%s: out of memory", t->name);
    add(b, t->name, DT_F8_E4M3, 2, t->shape, q);
    add(b, sname, DT_F32, 2, sshape, sc);
    stats->n_quantized++;
    return 0;
}

/* ---- the directory ------------------------------------------------------------------------------- */

/* Writes out/name whole or not at all (outfile.h): a link into the input is replaced, not followed,
 * and a run killed midway leaves the file that was there. */
static int write_file(const char *out, const char *name, const char *data, size_t n, Error *e) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", out, name);
    return outfile_write(path, data, n, e);
}

static int write_json(const char *out, const char *name, cJSON *j, Error *e) {
    char *text = cJSON_Print(j), *line = text ? malloc(strlen(text) + 2) : NULL;
    int rc = line ? write_file(out, name, line, (size_t)sprintf(line, "%s\n", text), e)
                  : error_set(e, "%s/%s: out of memory", out, name);
    free(text);
    free(line);
    return rc;
}

/* Every input file becomes one output file: its tensors converted, written, freed. */
static int write_weights(Conv *c, const char *out, int sharded, QuantStats *stats, Error *e) {
    const StFile *st = &c->st;
    size_t cap = (size_t)st->n_tensors + 1;
    Batch b = {malloc(sizeof(StWriteTensor) * 2 * cap), malloc(sizeof(void *) * 3 * cap), 0, 0};
    cJSON *index = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(index, "metadata");
    cJSON *wmap = cJSON_AddObjectToObject(index, "weight_map");
    const char *meta_k[] = {"format"}, *meta_v[] = {"pt"}; /* transformers loads only "pt" files */
    double done = 0, t0 = now_s(), shown = t0;
    for (int i = 0; i < st->n_tensors; i++) stats->bytes_in += (double)st->tensors[i].nbytes;
    int rc = b.t && b.own && meta && wmap ? 0 : error_set(e, "%s: out of memory", out);
    for (int f = 0; f < st->n_files && !rc; f++) {
        b.n = b.n_own = 0;
        for (int i = 0; i < st->n_tensors && !rc; i++) {
            const StTensor *t = &st->tensors[i];
            if (t->file != f) continue;
            rc = convert(c, t, &b, stats, e);
            stats->n_in++;
            done += (double)t->nbytes;
            if (c->o->progress && now_s() - shown >= 1.0) { /* long conversions only */
                fprintf(c->o->progress, "run quantize: %3.0f%%  %d of %d tensors, %.2f of %.2f GB\n",
                        100 * done / stats->bytes_in, stats->n_in, st->n_tensors, done / 1e9, stats->bytes_in / 1e9);
                shown = now_s();
            }
        }
        const char *slash = strrchr(st->paths[f], '/');
        const char *name = !sharded ? "model.safetensors" : slash ? slash + 1 : st->paths[f];
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", out, name);
        if (!rc && b.n > 0) {
            rc = st_write(path, b.t, b.n, meta_k, meta_v, 1, e); /* a link into the input is replaced */
            stats->n_files++;
        }
        for (int k = 0; k < b.n && !rc; k++) {
            double bytes = (double)dtype_size(b.t[k].dtype);
            for (int d = 0; d < b.t[k].ndim; d++) bytes *= (double)b.t[k].shape[d];
            stats->bytes_out += bytes;
            stats->n_out++;
            cJSON_AddStringToObject(wmap, b.t[k].name, name);
        }
        for (int k = 0; k < b.n_own; k++) free(b.own[k]);
    }
    if (!rc && sharded) {
        cJSON_AddNumberToObject(meta, "total_size", stats->bytes_out);
        rc = write_json(out, "model.safetensors.index.json", index, e);
    }
    if (!rc && c->o->progress)
        fprintf(c->o->progress, "run quantize: %d tensors -> %d in %d file(s): %d weights quantized to E4M3, "
                "%d dequantized; %.2f MB -> %.2f MB in %.2f s\n", stats->n_in, stats->n_out, stats->n_files,
                stats->n_quantized, stats->n_dequantized, stats->bytes_in / 1e6, stats->bytes_out / 1e6, now_s() - t0);
    cJSON_Delete(index);
    free(b.t);
    free(b.own);
    return rc;
}

void quant_edit_config(cJSON *cfg, const QuantOptions *o) {
    cJSON_DeleteItemFromObjectCaseSensitive(cfg, "quantization_config");
    if (o->to == QUANT_TO_FP8) {
        cJSON *q = cJSON_AddObjectToObject(cfg, "quantization_config");
        int bs[2] = {o->block, o->block};
        cJSON_AddStringToObject(q, "activation_scheme", "dynamic");
        cJSON_AddStringToObject(q, "fmt", "e4m3");
        cJSON_AddStringToObject(q, "quant_method", "fp8");
        if (o->scale_fmt == FP8_SCALE_UE8M0) cJSON_AddStringToObject(q, "scale_fmt", "ue8m0");
        cJSON_AddItemToObject(q, "weight_block_size", cJSON_CreateIntArray(bs, 2));
    } else if (cJSON_GetObjectItemCaseSensitive(cfg, "torch_dtype")) {
        const char *dt = o->to == QUANT_TO_BF16 ? "bfloat16" : "float32";
        cJSON_ReplaceItemInObjectCaseSensitive(cfg, "torch_dtype", cJSON_CreateString(dt));
    }
}

int quant_convert(const char *in, const char *out, const QuantOptions *o, QuantStats *stats, Error *e) {
    QuantStats local;
    if (!stats) stats = &local;
    memset(stats, 0, sizeof *stats);
    if (o->to == QUANT_TO_FP8 && o->block <= 0)
        return error_set(e, "block size %d: expected a positive integer (128 in DeepSeek-V3)", o->block);
    char rin[PATH_MAX], rout[PATH_MAX], path[4096];
    if (!realpath(in, rin)) return error_set(e, "%s: cannot open checkpoint directory: %s", in, strerror(errno));
    if (realpath(out, rout) && strcmp(rin, rout) == 0)
        return error_set(e, "%s: is the input directory %s; refusing to write over the input", out, in);
    snprintf(path, sizeof path, "%s/config.json", in);
    size_t n;
    char *text = read_file(path, &n, NULL);
    cJSON *cfg = text ? cJSON_Parse(text) : NULL;
    const char *why = !text ? "cannot open (does the directory hold a config.json?)" : "not a JSON object";
    free(text);
    if (!cJSON_IsObject(cfg)) {
        cJSON_Delete(cfg);
        return error_set(e, "%s: %s", path, why);
    }
    /* the input's FP8 layout, to dequantize it: weight_block_size (default 128 x 128), scale_fmt */
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(cfg, "quantization_config");
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(q, "weight_block_size");
    const cJSON *sf = cJSON_GetObjectItemCaseSensitive(q, "scale_fmt");
    Conv c = {.o = o, .in_block = {128, 128}, .in_ue8m0 = cJSON_IsString(sf) && !strcmp(sf->valuestring, "ue8m0")};
    for (int i = 0; i < 2 && cJSON_GetArraySize(bs) == 2; i++)
        if (cJSON_GetArrayItem(bs, i)->valueint > 0) c.in_block[i] = cJSON_GetArrayItem(bs, i)->valueint;
    int rc = st_open_dir(&c.st, in, e);
    struct stat sb;
    if (!rc && mkdir(out, 0755) != 0 && errno != EEXIST) rc = error_set(e, "%s: cannot create: %s", out, strerror(errno));
    else if (!rc && (stat(out, &sb) != 0 || !S_ISDIR(sb.st_mode))) rc = error_set(e, "%s: exists and is not a directory", out);
    snprintf(path, sizeof path, "%s/model.safetensors", in);
    int sharded = access(path, F_OK) != 0; /* st_open_dir read an index and its shards */
    if (!rc) rc = write_weights(&c, out, sharded, stats, e);
    if (!rc && sharded) { /* a single file left in OUT by an earlier run would win over the new index */
        snprintf(path, sizeof path, "%s/model.safetensors", out);
        unlink(path);
    }
    if (!rc) {
        quant_edit_config(cfg, o);
        rc = write_json(out, "config.json", cfg, e);
    }
    static const char *COPIED[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json"};
    for (int i = 0; i < 3 && !rc; i++) {
        snprintf(path, sizeof path, "%s/%s", in, COPIED[i]);
        char *data = read_file(path, &n, NULL);
        if (data) rc = write_file(out, COPIED[i], data, n, e);
        free(data);
    }
    st_close(&c.st);
    cJSON_Delete(cfg);
    return rc;
}

/* ---- the command line ---------------------------------------------------------------------------- */

static const char *USAGE =
    "usage: run quantize IN OUT --to fp8|bf16|f32 [--block B] [--scale f32|ue8m0] [--force]\n"
    "  Converts checkpoint directory IN into OUT (created if missing; never IN itself).\n"
    "  --to fp8   DeepSeek-V3's layout: attention and FFN/expert Linear weights as E4M3 with one FP32\n"
    "             weight_scale_inv per B x B block (default 128); --scale ue8m0 rounds each scale up\n"
    "             to a power of two. Embeddings, lm_head, norms, the router and the MTP's eh_proj stay.\n"
    "  --to bf16  undo it like DeepSeek's fp8_cast_bf16.py: dequantize, round to BF16, drop the\n"
    "             scales (other float tensors become BF16 too, but e_score_correction_bias).\n"
    "  --to f32   the same in F32.\n"
    "  config.json gets the matching quantization_config (or none); tokenizer.json,\n"
    "  tokenizer_config.json and generation_config.json are copied; a sharded IN stays sharded.\n"
    "  --force    replace the checkpoint OUT already holds (without it an OUT with a config.json or\n"
    "             weights is refused). Each file is written under a temporary name and renamed when\n"
    "             complete, so an interrupted run leaves OUT's old files as they were.\n";

static int usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("run quantize: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n(see run quantize --help)\n", stderr);
    va_end(ap);
    return 2;
}

int quantize_main(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *to = NULL, *block = NULL, *scale = NULL;
    int force = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--force")) { force = 1; continue; }
        const char **v = !strcmp(a, "--to") ? &to : !strcmp(a, "--block") ? &block : !strcmp(a, "--scale") ? &scale : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return fputs(USAGE, stdout), 0;
        if (v && i + 1 >= argc) return usage_error("%s needs a value", a);
        if (v) *v = argv[++i];
        else if (a[0] == '-') return usage_error("unknown option \"%s\"", a);
        else if (!in || !out) *(in ? &out : &in) = a;
        else return usage_error("unexpected argument \"%s\"", a);
    }
    if (!in || !out) return usage_error("expected the input and output directories: run quantize IN OUT --to fp8|bf16|f32");
    if (!to) return usage_error("--to is required: fp8, bf16 or f32");
    QuantOptions o = {.block = 128, .scale_fmt = FP8_SCALE_F32, .progress = stderr};
    if (!strcmp(to, "fp8")) o.to = QUANT_TO_FP8;
    else if (!strcmp(to, "bf16")) o.to = QUANT_TO_BF16;
    else if (!strcmp(to, "f32")) o.to = QUANT_TO_F32;
    else return usage_error("--to: expected fp8, bf16 or f32, found \"%s\"", to);
    if ((block || scale) && o.to != QUANT_TO_FP8) return usage_error("--block and --scale go with --to fp8 only");
    char *end;
    long b = block ? strtol(block, &end, 10) : 128;
    if (block && (!*block || *end || b < 1 || b > 65536))
        return usage_error("--block: expected a positive integer up to 65536 (128 in DeepSeek-V3), found \"%s\"", block);
    o.block = (int)b;
    if (scale && strcmp(scale, "f32") && strcmp(scale, "ue8m0"))
        return usage_error("--scale: expected f32 or ue8m0, found \"%s\"", scale);
    if (scale && !strcmp(scale, "ue8m0")) o.scale_fmt = FP8_SCALE_UE8M0;
    Error e;
    static const char *FINAL[] = {"config.json", "model.safetensors", "model.safetensors.index.json"};
    char rin[PATH_MAX], rout[PATH_MAX];
    int same = realpath(in, rin) && realpath(out, rout) && !strcmp(rin, rout); /* quant_convert refuses it */
    for (int i = 0; i < 3 && !same; i++) { /* an existing checkpoint in OUT is replaced only when asked */
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", out, FINAL[i]);
        if (outfile_check_clobber(path, force, &e)) {
            fprintf(stderr, "run quantize: %s\n", e.msg);
            return 1;
        }
    }
    if (quant_convert(in, out, &o, NULL, &e)) {
        fprintf(stderr, "run quantize: %s\n", e.msg);
        return 1;
    }
    return 0;
}

/* ---- the FP8 GEMM path --------------------------------------------------------------------------- */

static int flag(Tensor *t, int on) {
    if (t->dtype != DT_F8_E4M3 || !t->scale_inv) return 0;
    t->fp8_gemm = on;
    return 1;
}

static int flag_ffn(Ffn *f, int on) { return flag(&f->gate, on) + flag(&f->up, on) + flag(&f->down, on); }

static int flag_layer(const Config *c, Layer *L, int on) {
    MlaWeights *a = &L->attn;
    int n = flag(&a->q_a, on) + flag(&a->q_b, on) + flag(&a->q, on) + flag(&a->kv_a, on) + flag(&a->kv_b, on) +
            flag(&a->o, on) + (L->is_moe ? flag(&L->moe.router, on) + flag_ffn(&L->moe.shared, on) : flag_ffn(&L->dense, on));
    for (int x = 0; L->is_moe && x < c->n_routed_experts; x++) n += flag_ffn(&L->experts[x], on);
    return n;
}

int quant_use_fp8_gemm(Model *m, int on) {
    int n = flag(&m->embed, on) + flag(&m->lm_head, on);
    for (int l = 0; l < m->cfg.n_layers; l++) n += flag_layer(&m->cfg, &m->layers[l], on);
    if (m->has_mtp) n += flag(&m->mtp.eh_proj, on) + flag(&m->mtp.head, on) + flag_layer(&m->cfg, &m->mtp.layer, on);
    return n;
}
