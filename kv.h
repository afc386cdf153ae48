/* kv.h - the KV-cache story, measured: bytes per token for MHA / GQA / MLA from published configs,
 * per-sequence bytes, and a memory-bound serving model; notes/kvcache.md has the worked numbers.
 *   kv.c           the arithmetic: the built-in table, elements and bytes per token, the formulas
 *   kv_capacity.c  the serving model and its report
 *   kv_svg.c       the plot of GB per sequence vs context
 *   kv_cli.c       `run kv`: the options, the table, the V2 report's check */
#ifndef KV_H
#define KV_H

#include <stdio.h>

#include "mla_kv.h"
#include "model.h"
#include "ops.h"

typedef enum { KV_MHA, KV_GQA, KV_MLA } KvKind;

/* One model's attention shape, as far as the cache and the serving model need it. */
typedef struct {
    char key[32];          /* short name for the command line: "67b", "v2", "v3", "llama-70b" */
    char name[64];         /* "DeepSeek LLM 67B" */
    KvKind kind;
    int n_layers;          /* L */
    int n_heads;           /* n_h, query heads (attention FLOPs; MHA variants) */
    int n_kv_heads;        /* n_kv: = n_h for MHA, fewer for GQA, unused (0) for MLA */
    int d_h;               /* per-head dim of K and V (MLA: qk_nope_head_dim, for variants) */
    int d_c, d_R;          /* MLA: kv_lora_rank and qk_rope_head_dim; 0 otherwise */
    double params_total;   /* parameters held in memory */
    double params_active;  /* parameters used per token (= total for dense models) */
} KvModel;

/* A serving setup for the capacity model. Bits may be fractional (6 = DeepSeek-V2's cache). */
typedef struct {
    int gpus;
    double gpu_mem_gb;     /* per GPU, 1 GB = 1e9 bytes */
    double bandwidth_tbs;  /* per GPU, 1 TB/s = 1e12 bytes/s */
    double tflops;         /* per GPU, dense; 0 = leave compute out (memory-bound model only) */
    long ctx;              /* every sequence in the batch holds ctx tokens of cache */
    double weight_bits, kv_bits;
} KvServe;

/* The capacity model's numbers for one model on one setup. */
typedef struct {
    int fits;                 /* weights and at least one sequence fit in memory */
    double mem_bytes;         /* gpus * gpu_mem */
    double weight_bytes;      /* params_total * weight_bits / 8 */
    double seq_bytes;         /* ctx * kv bytes per token */
    long max_batch;           /* floor((mem - weights) / seq_bytes), 0 when it does not fit */
    double step_bytes;        /* weights + max_batch * seq_bytes: read once per decode step */
    double mem_ms;            /* step_bytes / (gpus * bandwidth) */
    double flops_per_token;   /* 2 * params_active + attention FLOPs over ctx cached tokens */
    double compute_ms;        /* max_batch * flops_per_token / (gpus * tflops); 0 when tflops is 0 */
    double step_ms;           /* max(mem_ms, compute_ms) */
    double tokens_per_s;      /* max_batch / step time */
} KvCapacity;

/* The built-in table of well-known configs (see kv.c for each source). */
#define KV_N_BUILTIN 9
int kv_builtin_count(void);
const KvModel *kv_builtin(int i);
/* Built-in row by key (case-insensitive); NULL when none. */
const KvModel *kv_find(const char *key);

/* Cached elements per token, all layers: MHA 2*n_h*d_h*L, GQA 2*n_kv*d_h*L, MLA (d_c + d_R)*L. */
long long kv_elements_per_token(const KvModel *m);
/* Bytes per token with each element stored in `bits` bits (16 BF16, 8 FP8, 6 V2's average). */
double kv_bytes_per_token(const KvModel *m, double bits);
/* Bytes for one sequence of ctx tokens. */
double kv_bytes_per_sequence(const KvModel *m, double bits, long ctx);
/* An MLA model's latent cache as run --kv stores it (mla_kv.h): bytes per token, all layers, L *
 * mla_kv_row_bytes(f, d_c, d_R) (V3: 61 * 2304 / 1152 / 656), and the bits per cached element
 * that makes (32 / 16 / 656 * 8 / 576 = 9.11 for FP8: 8-bit codes plus the scales and the BF16
 * rope part). 0 for a model without a latent (or a format that cannot hold it). */
double kv_format_bytes_per_token(const KvModel *m, MlaKvFormat f);
double kv_format_bits(const KvModel *m, MlaKvFormat f);
/* The formula with this model's numbers, e.g. "(d_c+d_R)*L = (512+64)*60". */
void kv_formula(char *buf, size_t n, const KvModel *m);
const char *kv_kind_name(KvKind k);

/* The same model with another attention: KV_MHA (n_kv = n_h), KV_GQA (n_kv heads of d_h),
 * KV_MLA (keeps d_c, d_R; needs an MLA model). Parameter counts are kept. */
KvModel kv_variant(const KvModel *m, KvKind kind, int n_kv_heads);

/* An MLA row from a DeepSeek config: L = num_hidden_layers, d_c = kv_lora_rank, d_R =
 * qk_rope_head_dim, d_h = qk_nope_head_dim, parameters from config_param_counts (MTP left out).
 * key names the row (a path's last part will do). -1 when the config has no latent cache. */
int kv_from_config(KvModel *m, const Config *c, const char *key, Error *e);

/* How the printers write the numbers: "BF16" / "FP8" / "FP32" / "6 bits on average" (buf [n] holds
 * the last); 1234567 -> "1,234,567" in buf [n] (rounded to an integer); " %*.3f" GB of bytes, or
 * e-notation where that would print 0.000 (the tiny test models). */
const char *kv_bits_name(double bits, char *buf, size_t n);
const char *kv_commas(double v, char *buf, size_t n);
void kv_put_gb(FILE *f, int width, double bytes);

/* kv_capacity.c. The capacity and throughput model (its header explains each line). */
KvCapacity kv_capacity(const KvModel *m, const KvServe *s);
/* The --capacity report: V2 vs 67B as the V2 report deployed them, then MHA / GQA / MLA variants of
 * each of models [n] on the setup s. */
void kv_print_capacity(FILE *f, const KvModel *models, int n, const KvServe *s);

/* kv_svg.c. Cache GB per sequence vs context (1K..128K tokens, log-log), one line per model. */
int kv_write_svg(const char *path, const KvModel *rows, int n, double bits, Error *e);

/* kv_cli.c. `run kv ARGS`: argv holds only the arguments after "kv" (argv[0] is the first of them), so
 * run.c calls `kv_main(argc - 2, argv + 2)`. Prints to stdout; errors are one line on stderr.
 * Returns 0, or 1 on a bad argument or a failed file. Never exits. */
int kv_main(int argc, char **argv);
/* The same with the streams given (tests). */
int kv_run(int argc, char **argv, FILE *out, FILE *err);

#endif
