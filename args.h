/* args.h - run's command line: the usage text (run --help), the options of the model commands
 * (inspect, logits, generate, chat, init, tokenize, ppl) parsed into one Args, and the two options
 * main takes out of the line before dispatching (--threads, --device). This is the command line's
 * side of run.c: it prints and exits (die, die_usage), so no library file includes it.
 *
 * Exit statuses: 1 for a failure while running (die), 2 for a bad command line (die_usage, which
 * adds "(see run --help)"). Every message is one line starting with "run: ".
 */
#ifndef ARGS_H
#define ARGS_H

#include "mla_kv.h"

/* The text of run --help (stdout, status 0) and of a bare run (stderr, status 2). */
extern const char *const USAGE;

/* "run: MSG" on stderr, then exit(1). */
_Noreturn void die(const char *msg);
/* "run: MSG" and "(see run --help)" on stderr, then exit(2). */
_Noreturn void die_usage(const char *msg);

/* "5,17,42" -> ids [*n] (malloc'd, n >= 1); exits with a message on anything else. */
int *parse_ids(const char *s, int *n);
/* v as an integer in 0 .. 2^30 for option flag; exits with a message naming flag otherwise. */
int parse_int(const char *flag, const char *v);

/* Every option of the model commands; each command checks the ones it takes. Unset strings are
 * NULL, unset numbers their defaults (n_new 16, ctx 0 = the model's, temp 0.8, top_p 0.9). */
typedef struct {
    const char *dir, *tokens, *out, *prompt, *file, *system;
    int decode, naive, ids, ignore_eos, n_new, n_new_set, ctx, chat, has_temp, has_seed, mtp, fp8_gemm, n_windows, force;
    int kv_set;     /* --kv given */
    MlaKvFormat kv; /* --kv: how the latent caches store a token; F32 unless given */
    const char *config, *ids_file, *compare, *dtype;
    float temp, top_p;
    unsigned long long seed;
} Args;

/* The options in argv [argc] (after the command's name); -h / --help prints USAGE and exits 0,
 * an unknown option or a second positional argument exits 2. */
Args parse_args(int argc, char **argv);

/* --threads N anywhere in argv [argc]: removed from argv (which stays NULL-terminated), OpenMP set
 * up for it; returns the new argc. */
int take_threads(int argc, char **argv);
/* --device cpu|cuda anywhere in argv [argc]: removed as --threads is, its value in *device (left as
 * it was when the option is absent); returns the new argc. */
int take_device(int argc, char **argv, const char **device);

#endif
