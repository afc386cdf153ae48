/* golden.h - `run golden`: every component function's inputs and outputs for a config and a seed (or
 * a real checkpoint and a prompt), written to one safetensors file that a PyTorch/CUDA test loads.
 * Tensor names are <function>.<argument>; notes/golden.md lists them with their shapes, the
 * tolerances and a PyTorch example.
 *   golden.c         the command line
 *   golden_record.c  the portable generator and the recorder (inputs drawn or read back, outputs kept)
 *   golden_file.c    running the functions; the file: metadata, writing, verifying
 *   golden_fns.c     the functions recorded: what each one draws, calls and keeps */
#ifndef GOLDEN_H
#define GOLDEN_H

#include "model.h"

/* Written to every file's metadata ("version"); raised when names, shapes or the generator change. */
#define GOLDEN_VERSION "1"

/* The command line after "run golden" (argv[0] is the first option):
 *   --config CONFIG.json --out G.safetensors [--seed S] [--tokens N] [--functions LIST] [--shape k=v]...
 *   --model DIR --tokens 5,17,42 --out G.safetensors [--functions LIST] [--shape k=v]...
 *   --verify G.safetensors [--model DIR] [--exact]
 *   --help
 * Returns the exit status: 0, 1 (an error, one line on stderr), 2 (a usage error). Never exits. */
int golden_main(int argc, char **argv);

/* ---- between the golden files ------------------------------------------------------------------ */

typedef struct {
    int batch, tokens, cache;   /* B sequences, T new tokens each, L cache rows (the T are the last) */
    int gemm_m, gemm_n, gemm_k; /* fp8 functions: x [M, K], w [N, K]; default B*T, intermediate, hidden */
} GoldenShapes;

typedef struct {
    char name[192];             /* <function>.<argument> */
    DType dtype;
    int ndim, output;
    int64_t shape[ST_MAX_DIMS];
    size_t nbytes;
    void *data;
} GoldenTensor;

typedef struct {
    Config cfg;          /* the effective config: the file's, --shape applied */
    GoldenShapes sh;
    uint64_t seed;
    const Model *ckpt;   /* --model: the model function runs this checkpoint */
    const int *ids;      /* --model: the prompt [sh.tokens] */
    const StFile *check; /* --verify: the file whose inputs are read back and outputs compared */
    const char *fn;      /* the function being recorded */
    GoldenTensor *ts;
    int n, cap, failed;  /* failed: an error is in e; later g_* calls return NULL at once */
    double bytes;
    void **tmp;          /* scratch of the current function, freed after it */
    int n_tmp;
    Error *e;
} Golden;

/* golden_record.c. Inputs, each a new tensor <fn>.<arg> [dims...] (ints), drawn from the seed
 * (golden_record.c's header has the generator) or, when verifying, read back from the file. NULL with g->failed on any error.
 *   g_rand   F32 fmaf(scale, u, offset), u uniform on [-1, 1)
 *   g_ids    I32 uniform in [0, n)
 *   g_codes  F8_E4M3 codes, any but NaN
 *   g_given  the given values (a parameter such as eps or pos0); verifying checks the file agrees */
float *g_rand(Golden *g, const char *arg, float offset, float scale, int ndim, ...);
int *g_ids(Golden *g, const char *arg, int n, int ndim, ...);
uint8_t *g_codes(Golden *g, const char *arg, int ndim, ...);
void *g_given(Golden *g, const char *arg, DType dt, const void *values, int ndim, ...);
/* An output, zeroed; kept for the file, or compared with it when verifying. */
void *g_out(Golden *g, const char *arg, DType dt, int ndim, ...);
/* Scratch memory freed when the function is done. */
void *g_tmp(Golden *g, size_t bytes);
/* The function is done: its scratch freed. */
void golden_end_fn(Golden *g);
/* The tensors g->ts [from, n) freed and dropped (n = from). */
void golden_free_tensors(Golden *g, int from);

/* One recorded function: run() draws, declares and computes; 0 or -1 (error in g->e). */
typedef struct {
    const char *name;
    int (*run)(Golden *g);
    double tol;        /* max|got - want| / max|want| per F32 output, for an FP32 GPU twin; 0 = exact */
    int needs_experts;
    const char *calls; /* the C function(s) recorded */
} GoldenFn;

#define GOLDEN_N_FNS 20
extern const GoldenFn GOLDEN_FNS[GOLDEN_N_FNS];

/* golden_file.c. */
/* 0, or -1 with the first shape or config size that no function can run with. */
int golden_check_shapes(const Config *c, const GoldenShapes *s, Error *e);
/* Index in GOLDEN_FNS of the function named name [len] (not NUL-terminated), or -1. */
int golden_find_fn(const char *name, size_t len);
/* Runs the selected [GOLDEN_N_FNS] functions: writes their tensors to out_path (g->check NULL;
 * source names the config or checkpoint in the metadata) or compares their outputs with g->check's
 * (one line per function on stdout; exact: bit for bit). 0, or -1 with the error in g->e. */
int golden_run(Golden *g, const int *selected, const char *out_path, const char *source, int exact);
/* --verify: the config, shapes, seed and functions of the file at path, re-run on its inputs (the
 * model function with model_dir's checkpoint, loaded into *ckpt and g->ckpt set, or skipped
 * without). 0, or -1 with the error in g->e. */
int golden_verify(Golden *g, const char *path, const char *model_dir, int exact, Model *ckpt);

#endif
