/* run.c - the command line. Every subcommand is a small function; all errors end here: library
 * code returns -1 with a one-line message, and this file prints it and exits non-zero.
 *
 *   run inspect DIR                                     config summary, parameters, bytes by dtype
 *   run logits DIR --tokens 5,17,42 --out F.safetensors [--decode] [--naive] [--ctx N]
 *   run generate DIR -p TEXT [-n N] [--temp T] [--top-p P] [--seed S] [--chat] [--system S]
 *   run generate DIR --tokens 5,17,42 [-n 16] [--temp 0] --ids [--ignore-eos] [--ctx N]
 *   run generate ... --mtp                             speculative decoding with the MTP module
 *   run init --config C.json --out DIR [--mtp] [--dtype D] [--force]   a random model (D: f32, bf16, fp8)
 *   run tokenize DIR (-p TEXT | -f FILE) [--ids] [--chat]
 *   run kv [CONFIG.json ...] [--capacity ...]         the KV-cache story (kv_cli.c)
 *   run fp8-error [K [SEED]]                          FP8 GEMM error per mode (fp8_error.c)
 *   run golden ...                                    golden files for GPU kernels (golden.c)
 *   run quantize IN OUT --to fp8|bf16|f32             DeepSeek's FP8 checkpoint layout (quantize.c)
 */
#include "bench.h"
#include "device.h"
#include "fp8_error.h"
#include "generate.h"
#include "golden.h"
#include "init.h"
#include "kv.h"
#include "manifest.h"
#include "mla.h"
#include "model.h"
#include "outfile.h"
#include "quantize.h"
#include "tokenizer.h"

#include <math.h>
#include <signal.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

static const char *USAGE =
    "usage: run <command> [args]\n"
    "\n"
    "commands:\n"
    "  inspect DIR          print the config summary, parameter counts (total and activated per\n"
    "                       token), checkpoint bytes by dtype, and whether an MTP module is present.\n"
    "                       DIR holds config.json and the safetensors (a config.json alone is enough\n"
    "                       for the summary and the counts)\n"
    "  logits DIR --tokens IDS --out F.safetensors [--decode] [--naive] [--fp8-gemm] [--ctx N]\n"
    "                       write tensor `logits` (F32, [T, vocab]) for every position of the\n"
    "                       comma-separated token ids. Default: one prefill over all T tokens.\n"
    "                       --decode feeds them one at a time through the latent cache; --naive uses\n"
    "                       the naive attention form (K and V expanded from the latent) instead of the\n"
    "                       absorbed one. --fp8-gemm (also for generate): FP8 weights multiply as\n"
    "                       DeepSeek's kernels do, activations quantized to E4M3 in 1x128 tiles\n"
    "                       (default: dequantize the weights, FP32 GEMM)\n"
    "  generate DIR (-p TEXT | -f FILE) [-n N] [--temp T] [--top-p P] [--seed S] [--chat] [--system S]\n"
    "                       continue TEXT, streaming the decoded text to stdout as it is produced;\n"
    "                       prompt and generation speed (tok/s) go to stderr. --chat makes TEXT one\n"
    "                       user turn in the chat format of DIR/tokenizer_config.json's chat_template\n"
    "                       (DeepSeek-V3, R1 or V2-Chat; another template is refused), --system S\n"
    "                       before it. Sampling: temperature T (default 0.8; 0 = greedy), nucleus top-p P\n"
    "                       (default 0.9), seed S (default: the time, printed at the end). N: new\n"
    "                       tokens, default 16. Stops at EOS unless --ignore-eos. A prompt is at most\n"
    "                       1 MiB. Ctrl-C stops after the next token and prints the speed so far (exit\n"
    "                       status 130); a closed stdout (| head) ends it quietly (status 141)\n"
    "  generate DIR --tokens IDS [-n N] [--temp 0] --ids [--ignore-eos]\n"
    "                       the same from token ids; --ids prints the new ids on one line of stdout,\n"
    "                       space-separated (greedy unless --temp is given)\n"
    "  generate ... --mtp   speculative decoding with the checkpoint's MTP module as the draft: prints\n"
    "                       the acceptance rate and the speed-up over plain decoding of the same\n"
    "                       prompt; at --temp 0 the tokens equal plain greedy decoding's\n"
    "  chat DIR [--system S] [-n N] [--temp T] [--top-p P] [--seed S] [--ids]\n"
    "                       a conversation: one user turn per line of stdin (a trailing \\ continues\n"
    "                       the turn), each reply generated after the ones before it in the same\n"
    "                       latent cache, in the checkpoint's chat format. N: tokens per reply\n"
    "                       (default 256); --ids prints each reply's ids on one line\n"
    "  init --config CONFIG.json --out DIR [--mtp] [--seed S] [--dtype f32|bf16|fp8]\n"
    "                       write a random model for the config (with an MTP module: --mtp), F32 or\n"
    "                       what run quantize --to bf16 / fp8 makes of it (E4M3, 128 x 128 blocks),\n"
    "                       one tensor at a time (a V2-Lite-sized FP8 model, 17 GB, in < 1 GB of RAM)\n"
    "                       --force replaces a checkpoint already in DIR\n"
    "  tokenize DIR (-p TEXT | -f FILE) [--ids] [--chat [--system S]]\n"
    "                       ids and pieces of TEXT (or FILE's bytes, read as they are); --ids prints\n"
    "                       only the ids, space-separated on one line. DIR needs only tokenizer.json.\n"
    "                       --chat: the prompt ids generate --chat would feed the model\n"
    "  kv [CONFIG.json ...] [--ctx N] [--kv-bits B] [--batch B] [--capacity ...]\n"
    "                       KV cache bytes per token and per sequence for MHA / GQA / MLA models, the\n"
    "                       DeepSeek-V2 paper's 93.3% / 15x, and a serving capacity model\n"
    "                       (run kv --help)\n"
    "  golden (--config C.json | --model DIR) --out G.safetensors [--seed S] [--tokens N]\n"
    "         [--functions LIST] [--shape k=v ...] | --verify G\n"
    "                       every function's inputs and outputs for GPU kernel tests, bit for bit\n"
    "                       reproducible (run golden --help, notes/golden.md)\n"
    "  ppl DIR (--ids-file IDS.safetensors | -f TEXT) [--window 512] [--windows N] [--compare DIR2]\n"
    "                       perplexity over non-overlapping windows [BOS] + 511 tokens, as\n"
    "                       train/train.py computes it with HF (tensor heldout_ids, or a text file).\n"
    "                       --compare DIR2: the same for DIR2 (e.g. its FP8 variant), the change, and\n"
    "                       the change predicted from the logit differences (notes/fp8.md section 7)\n"
    "  bench [DIR [--limits]]  speed figures: with DIR, decode tok/s and bytes per token against the\n"
    "                       read bandwidth, prefill (512 tokens) against sgemm at the same shapes\n"
    "                       (--limits: only these); MLA decode step absorbed vs naive at 1k/4k/16k;\n"
    "                       with DIR, tokenizer MB/s (make bench adds decode tok/s with and without --mtp)\n"
    "  fp8-error [K [SEED]]  relative error of a K-long FP8 dot product (default 4096) per block\n"
    "                       scaling and accumulator (FP32, Hopper-like 14 bits, promotion every 128)\n"
    "  quantize IN OUT --to fp8|bf16|f32 [--block B] [--scale f32|ue8m0] [--force]\n"
    "                       convert a checkpoint to DeepSeek's FP8 layout (E4M3, B x B block scales)\n"
    "                       or back to BF16 / F32 (run quantize --help)\n"
    "\n"
    "common options:\n"
    "  --ctx N              latent cache length (default: min(max_position_embeddings, 4096))\n"
    "  --device cpu|cuda    where the forward runs (default cpu); cuda needs a run built with make cuda\n"
    "                       (build/cuda/run): weights and latent cache on the GPU, notes/cuda.md\n"
    "  --kv f32|bf16|fp8    generate, logits, ppl, chat (and --mtp's own cache): how the latent cache\n"
    "                       stores a token: f32 (default; the exact numbers), bf16, or FlashMLA's FP8\n"
    "                       layout (c_kv in E4M3 with an FP32 scale per 128 values, k_pe in BF16):\n"
    "                       2304 / 1152 / 656 bytes per token per layer in V3. Attention reads the\n"
    "                       stored, rounded rows. CPU only: --device cuda keeps an F32 cache.\n"
    "                       The cost in perplexity and logits: notes/kvcache.md\n"
    "  --threads N          threads for decode (OpenMP; default: OMP_NUM_THREADS, else the cores the\n"
    "                       load average leaves free). Results are bit-identical at any count\n"
    "  -h, --help           this text\n";

static void die(const char *msg) {
    fprintf(stderr, "run: %s\n", msg);
    exit(1);
}

static void die_usage(const char *msg) {
    fprintf(stderr, "run: %s\n(see run --help)\n", msg);
    exit(2);
}

/* "5,17,42" -> ids; exits with a message on anything else. */
static int *parse_ids(const char *s, int *n) {
    int cap = 16, *ids = malloc(sizeof(int) * cap);
    if (!ids) die("--tokens: out of memory");
    *n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > 2147483647L) {
            char msg[160];
            snprintf(msg, sizeof msg, "--tokens: expected comma-separated non-negative integers, found \"%.40s\"", p);
            die_usage(msg);
        }
        if (*n == cap && !(ids = realloc(ids, sizeof(int) * (size_t)(cap *= 2)))) die("--tokens: out of memory");
        ids[(*n)++] = (int)v;
        p = end;
        if (*p == ',') p++;
        else if (*p) die_usage("--tokens: expected comma-separated integers like 5,17,42");
    }
    if (*n == 0) die_usage("--tokens: no token ids given");
    return ids;
}

typedef struct {
    const char *dir, *tokens, *out, *prompt, *file, *system;
    int decode, naive, ids, ignore_eos, n_new, n_new_set, ctx, chat, has_temp, has_seed, mtp, fp8_gemm, n_windows, force;
    int kv_set; /* --kv given (parse_args sets kv_format) */
    const char *config, *ids_file, *compare, *dtype;
    float temp, top_p;
    unsigned long long seed;
} Args;

static int parse_int(const char *flag, const char *v) {
    char *end;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || *end || x < 0 || x > 1 << 30) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s: expected a non-negative integer, found \"%s\"", flag, v ? v : "(nothing)");
        die_usage(msg);
    }
    return (int)x;
}

static MlaKvFormat kv_format; /* --kv: how state_or_die's caches store a token; F32 unless given */

static Args parse_args(int argc, char **argv) {
    Args a = {.n_new = 16, .ctx = 0, .temp = 0.8f, .top_p = 0.9f};
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(s, "-h") || !strcmp(s, "--help")) { fputs(USAGE, stdout); exit(0); }
        else if (!strcmp(s, "--tokens")) { if (!v) die_usage("--tokens needs a value"); a.tokens = v; i++; }
        else if (!strcmp(s, "--out")) { if (!v) die_usage("--out needs a file name"); a.out = v; i++; }
        else if (!strcmp(s, "-n")) { a.n_new = parse_int(s, v); a.n_new_set = 1; i++; }
        else if (!strcmp(s, "--ctx") || !strcmp(s, "--window")) { a.ctx = parse_int(s, v); i++; }
        else if (!strcmp(s, "--windows")) { a.n_windows = parse_int(s, v); i++; }
        else if (!strcmp(s, "--ids-file")) { if (!v) die_usage("--ids-file needs a file"); a.ids_file = v; i++; }
        else if (!strcmp(s, "--compare")) { if (!v) die_usage("--compare needs a checkpoint directory"); a.compare = v; i++; }
        else if (!strcmp(s, "--temp")) {
            char *end;
            if (!v || (a.temp = strtof(v, &end), *end) || !(a.temp >= 0)) die_usage("--temp: expected a number >= 0");
            a.has_temp = 1;
            i++;
        }
        else if (!strcmp(s, "--top-p")) {
            char *end;
            if (!v || (a.top_p = strtof(v, &end), *end) || !(a.top_p > 0 && a.top_p <= 1))
                die_usage("--top-p: expected a number in (0, 1]");
            i++;
        }
        else if (!strcmp(s, "--seed")) {
            char *end;
            if (!v || (a.seed = strtoull(v, &end, 10), *end) || *v == '-') die_usage("--seed: expected a non-negative integer");
            a.has_seed = 1;
            i++;
        }
        else if (!strcmp(s, "-p")) { if (!v) die_usage("-p needs the prompt text"); a.prompt = v; i++; }
        else if (!strcmp(s, "-f")) { if (!v) die_usage("-f needs a file name"); a.file = v; i++; }
        else if (!strcmp(s, "--system")) { if (!v) die_usage("--system needs the system prompt"); a.system = v; i++; }
        else if (!strcmp(s, "--chat")) a.chat = 1;
        else if (!strcmp(s, "--force")) a.force = 1;
        else if (!strcmp(s, "--mtp")) a.mtp = 1;
        else if (!strcmp(s, "--fp8-gemm")) a.fp8_gemm = 1;
        else if (!strcmp(s, "--config")) { if (!v) die_usage("--config needs a config.json"); a.config = v; i++; }
        else if (!strcmp(s, "--dtype")) { if (!v) die_usage("--dtype needs f32, bf16 or fp8"); a.dtype = v; i++; }
        else if (!strcmp(s, "--kv")) {
            int f = v ? mla_kv_format_from_name(v) : -1;
            if (f < 0) {
                char msg[128];
                snprintf(msg, sizeof msg, "--kv: expected f32, bf16 or fp8, found \"%.40s\"", v ? v : "(nothing)");
                die_usage(msg);
            }
            kv_format = (MlaKvFormat)f;
            a.kv_set = 1;
            i++;
        }
        else if (!strcmp(s, "--decode")) a.decode = 1;
        else if (!strcmp(s, "--naive")) a.naive = 1;
        else if (!strcmp(s, "--ids")) a.ids = 1;
        else if (!strcmp(s, "--ignore-eos")) a.ignore_eos = 1;
        else if (s[0] == '-') {
            char msg[128];
            snprintf(msg, sizeof msg, "unknown option \"%s\"", s);
            die_usage(msg);
        } else if (!a.dir) a.dir = s;
        else {
            char msg[128];
            snprintf(msg, sizeof msg, "unexpected argument \"%s\"", s);
            die_usage(msg);
        }
    }
    return a;
}

static void load_or_die(Model *m, const char *dir) {
    Error e;
    if (!dir) die_usage("missing the checkpoint directory");
    if (model_load(m, dir, &e)) die(e.msg);
}


/* This machine's memory in bytes: what no single buffer may exceed. */
static double memory_bytes(void) {
    long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    return pages > 0 && size > 0 ? (double)pages * (double)size : 1e18;
}

/* Bytes free on the file system where path (or, when it does not exist yet, its parent) would be. */
static double disk_bytes_free(const char *path) {
    struct statvfs v;
    char parent[4096];
    snprintf(parent, sizeof parent, "%s/..", path);
    if (statvfs(path, &v) != 0 && statvfs(parent, &v) != 0 && statvfs(".", &v) != 0) return 1e18;
    return (double)v.f_bavail * (double)v.f_frsize;
}
static const char *device; /* --device: NULL (the CPU) or "cuda" (take_device) */

static void state_or_die(State *s, const Model *m, int ctx, int need) {
    Error e;
    char msg[300];
    int max_pos = m->cfg.max_position_embeddings;
    if (ctx == 0) ctx = max_pos < 4096 ? max_pos : 4096;
    if (need > ctx) {
        snprintf(msg, sizeof msg, "%d tokens (prompt + new) do not fit a %d-token context; raise --ctx", need, ctx);
        die(msg);
    }
    if (kv_format != MLA_KV_F32 && device && strcmp(device, "cpu")) {
        snprintf(msg, sizeof msg, "--kv %s: the CUDA forward keeps an F32 latent cache; use --kv f32 or --device cpu",
                 mla_kv_format_name(kv_format));
        die_usage(msg);
    }
    /* the latent caches (and the MTP's hidden states, and the widened rows of a BF16 / FP8 cache)
     * before anything is allocated */
    double width = mla_cache_width(&m->mla), layers = m->cfg.n_layers + (m->has_mtp ? 1 : 0);
    double row = (double)mla_kv_row_bytes(kv_format, m->mla.kv_lora_rank, m->mla.rope);
    double bytes = ctx * (layers * row + 4.0 * (kv_format != MLA_KV_F32 ? width : 0) +
                          4.0 * (m->has_mtp ? m->cfg.hidden_size : 0)), have = memory_bytes();
    if (bytes > have) {
        snprintf(msg, sizeof msg, "--ctx %d: the latent cache needs %.3g bytes, more than this machine's %.3g bytes of "
                 "memory (the limit); lower --ctx or -n", ctx, bytes, have);
        die(msg);
    }
    if (ctx > max_pos)
        fprintf(stderr, "run: note: --ctx %d is beyond the model's max_position_embeddings %d\n", ctx, max_pos);
    /* prefill in chunks of up to 512 tokens: each expert then sees enough of a prompt's tokens for
     * its GEMM path (matmul.c), and each weight tile is widened once per 512 tokens */
    if (kv_format == MLA_KV_F32 ? state_init_device(s, m, ctx, 512, device, &e)
                                : state_init_kv(s, m, ctx, 512, kv_format, &e))
        die(e.msg);
}

/* ---------------------------------------------------------------------------------------------
 * run inspect
 */
static int cmd_inspect(int argc, char **argv) {
    Args a = parse_args(argc, argv);
    if (a.kv_set) die_usage("inspect: --kv goes with generate, logits, ppl and chat");
    if (!a.dir) die_usage("inspect: missing the checkpoint directory");
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", a.dir);
    Config c;
    Error e;
    if (config_load(&c, path, &e)) die(e.msg);
    config_print(stdout, &c);
    StFile st;
    char weights[4200], index[4200];
    snprintf(weights, sizeof weights, "%s/model.safetensors", a.dir);
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", a.dir);
    if (access(weights, F_OK) && access(index, F_OK)) { /* a config.json alone: the summary is all */
        printf("checkpoint      no weights (neither model.safetensors nor an index)\n");
        return 0;
    }
    if (st_open_dir(&st, a.dir, &e)) die(e.msg);
    size_t bytes[DT_COUNT] = {0}, count[DT_COUNT] = {0}, total = 0;
    for (int i = 0; i < st.n_tensors; i++) {
        bytes[st.tensors[i].dtype] += st.tensors[i].nbytes;
        count[st.tensors[i].dtype]++;
        total += st.tensors[i].nbytes;
    }
    printf("checkpoint      %d tensors in %d file(s), %.2f MB:", st.n_tensors, st.n_files, total / 1e6);
    for (int t = 0; t < DT_COUNT; t++)
        if (count[t]) printf(" %s %zu (%.2f MB)", dtype_name((DType)t), count[t], bytes[t] / 1e6);
    printf("\n");
    snprintf(path, sizeof path, "model.layers.%d.eh_proj.weight", c.n_layers);
    printf("mtp             %s\n", st_find(&st, path) ? "present (layer index num_hidden_layers)" : "absent");
    st_close(&st);
    Model m;
    if (model_load(&m, a.dir, &e)) die(e.msg);
    printf("check           every tensor the forward pass needs is present with the right shape\n");
    model_free(&m);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * run logits
 */
static int cmd_logits(int argc, char **argv) {
    Args a = parse_args(argc, argv);
    if (!a.tokens) die_usage("logits: --tokens is required");
    if (!a.out) die_usage("logits: --out is required");
    int T;
    int *ids = parse_ids(a.tokens, &T);
    Model m;
    State s;
    Error e;
    load_or_die(&m, a.dir);
    if (a.fp8_gemm && !quant_use_fp8_gemm(&m, 1)) fprintf(stderr, "run: note: %s has no FP8 E4M3 weights; --fp8-gemm changes nothing\n", a.dir);
    state_or_die(&s, &m, a.ctx, T);
    int V = m.cfg.vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)T * V);
    if (!logits) die("logits: out of memory for the [T, vocab] output");
    AttnForm form = a.naive ? ATTN_NAIVE : ATTN_ABSORBED;
    double t0 = now_s();
    if (a.decode) {
        for (int t = 0; t < T; t++)
            if (model_forward(&m, &s, ids + t, 1, t, logits + (size_t)t * V, 1, form, &e)) die(e.msg);
    } else if (model_forward(&m, &s, ids, T, 0, logits, 0, form, &e)) die(e.msg);
    double dt = now_s() - t0;
    StWriteTensor out = {.name = "logits", .dtype = DT_F32, .ndim = 2, .shape = {T, V}, .data = logits};
    const char *keys[] = {"mode", "attention", "kv"};
    const char *vals[] = {a.decode ? "decode" : "prefill", a.naive ? "naive" : "absorbed", mla_kv_format_name(kv_format)};
    if (st_write(a.out, &out, 1, keys, vals, kv_format == MLA_KV_F32 ? 2 : 3, &e)) die(e.msg); /* "kv" only when not f32 */
    fprintf(stderr, "run: %d tokens (%s, %s attention) in %.3f s, logits [%d, %d] -> %s\n", T,
            vals[0], vals[1], dt, T, V, a.out);
    free(logits);
    free(ids);
    state_free(&s);
    model_free(&m);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * run generate and run tokenize
 */
static Tokenizer *tokenizer_or_die(const char *dir) {
    Tokenizer *t;
    Error e;
    if (tokenizer_load(&t, dir, &e)) die(e.msg);
    return t;
}

/* Ctrl-C during generate / chat: the first one asks generation to stop after the next token
 * (GenOptions.stop); the handler then resets, so a second Ctrl-C kills as usual. A closed stdout
 * (`run generate ... | head`) shows up as EPIPE instead of a fatal SIGPIPE: generation stops at the
 * next token and run exits with status 141 (128 + SIGPIPE, what a shell reports for a killed
 * writer) without a word. An interrupted run exits with 130 (128 + SIGINT) after its speed line. */
static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) { (void)sig; interrupted = 1; }
static void catch_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}
enum { EXIT_INTERRUPTED = 130, EXIT_CLOSED_STDOUT = 141 };

static void die_on(int rc, const Error *e) {
    if (rc) die(e->msg);
}

/* A whole file, byte for byte (-f). */
static char *read_or_die(const char *path, size_t *n) {
    Error e;
    char *text = read_file(path, n, &e);
    if (!text) die(e.msg);
    return text;
}

/* -f FILE as the prompt: its size is checked before it is read (a prompt is at most 1 MiB). */
static const char *prompt_file_or_die(const char *path) {
    struct stat st;
    char msg[4300];
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size > PROMPT_MAX_BYTES) {
        snprintf(msg, sizeof msg, "-f %s: the prompt is %lld bytes, over the limit of %u bytes (1 MiB)", path,
                 (long long)st.st_size, PROMPT_MAX_BYTES);
        die(msg);
    }
    size_t n;
    char *text = read_or_die(path, &n);
    if (n > PROMPT_MAX_BYTES || strlen(text) != n) { /* a pipe, or a NUL inside */
        snprintf(msg, sizeof msg, "-f %s: %s", path, n > PROMPT_MAX_BYTES ? "the prompt is over the limit of 1 MiB" : "the prompt holds a NUL byte");
        die(msg);
    }
    return text;
}

/* The prompt's ids: the chat template's layout with --chat (generate.h), else BOS then the text.
 * Special tokens in the text are matched by the tokenizer, so a template is plain concatenation. */
static int *encode_prompt(const Tokenizer *tok, const Args *a, int *n) {
    if (!a->chat && a->system) die_usage("--system only goes with --chat");
    const char *texts[2] = {a->prompt, a->system}, *flags[2] = {"-p", "--system"};
    for (int i = 0; i < 2; i++)
        if (texts[i] && strlen(texts[i]) > PROMPT_MAX_BYTES) {
            char msg[200];
            snprintf(msg, sizeof msg, "%s: the text is %zu bytes, over the limit of %u bytes (1 MiB)", flags[i],
                     strlen(texts[i]), PROMPT_MAX_BYTES);
            die(msg);
        }
    ChatFormat f = CHAT_V3;
    Error e;
    if (a->chat) die_on(chat_format_detect(&f, a->dir, tok, &e), &e);
    char *text = prompt_render(a->chat, f, tok, a->system, a->prompt);
    if (!text) die("out of memory for the prompt");
    int *ids;
    die_on(tokenizer_encode(tok, text, strlen(text), &ids, n, &e), &e);
    free(text);
    if (*n == 0) die_usage("-p: the prompt is empty");
    return ids;
}

static int cmd_generate(int argc, char **argv) {
    Args a = parse_args(argc, argv);
    if (a.file && !a.prompt) a.prompt = prompt_file_or_die(a.file); /* leaked until exit, as argv */
    else if (a.file) die_usage("generate: give the prompt with -p TEXT or -f FILE, not both");
    if (!a.tokens == !a.prompt) die_usage("generate: give the prompt as text (-p or -f) or as ids (--tokens), one of them");
    if (a.tokens && (a.chat || a.system)) die_usage("--chat and --system go with -p TEXT, not --tokens");
    if (a.ids && !a.has_temp) a.temp = 0.0f; /* scripts asking for ids get greedy unless told */
    Model m;
    State s;
    Error e;
    load_or_die(&m, a.dir);
    if (a.fp8_gemm && !quant_use_fp8_gemm(&m, 1)) fprintf(stderr, "run: note: %s has no FP8 E4M3 weights; --fp8-gemm changes nothing\n", a.dir);
    if (a.mtp && !m.has_mtp) {
        fprintf(stderr, "run: note: %s has no MTP module (no tensors at layer index %d); --mtp is off\n", a.dir, m.cfg.n_layers);
        a.mtp = 0;
    }
    Tokenizer *tok = (a.prompt || !a.ids) ? tokenizer_or_die(a.dir) : NULL;
    int T;
    int *ids = a.prompt ? encode_prompt(tok, &a, &T) : parse_ids(a.tokens, &T);
    state_or_die(&s, &m, a.ctx, T + a.n_new);
    if (!a.has_seed) a.seed = (unsigned long long)time(NULL);
    GenOptions o = {.temp = a.temp, .top_p = a.top_p, .seed = a.seed, .n_new = a.n_new, .ignore_eos = a.ignore_eos,
                    .eos = m.cfg.eos_token_id, .mtp = a.mtp, .stream = !a.ids, .stop = &interrupted};
    catch_signals();
    if (o.eos < 0 && tok) o.eos = tokenizer_eos_id(tok);
    if (!a.ids && !a.chat) { /* echo the prompt text, then stream the continuation */
        fputs(a.prompt, stdout);
        fflush(stdout);
    }
    GenResult r;
    die_on(generate(&m, &s, tok, ids, T, &o, &r, &e), &e);
    if (a.ids)
        for (int i = 0; i < r.n; i++) printf("%s%d", i ? " " : "", r.ids[i]);
    printf("\n");
    if (fflush(stdout) != 0 || ferror(stdout) || r.closed) exit(EXIT_CLOSED_STDOUT); /* quietly: see catch_signals */
    int n = r.n;
    if (n == 0) fprintf(stderr, "run: prompt %d tokens, nothing generated (-n 0)", T);
    else fprintf(stderr, "run: prompt %d tokens in %.3f s (%.1f tok/s), generated %d in %.3f s (%.1f tok/s)%s",
                 T, r.prefill_s, T / r.prefill_s, n, r.decode_s, n > 1 ? (n - 1) / r.decode_s : 0.0,
                 r.stopped_at_eos ? ", stopped at EOS" : r.interrupted ? ", interrupted (Ctrl-C)" : "");
    if (a.temp > 0) fprintf(stderr, "; temp %g, top-p %g, seed %llu", a.temp, a.top_p, a.seed);
    fprintf(stderr, "\n");
    if (r.interrupted) exit(EXIT_INTERRUPTED);
    if (a.mtp && n > 1) {
        /* The same prompt and seed decoded plainly (for the equality at temp 0) and again with MTP,
         * both quietly and in this now warm process, so the speed-up compares like with like. */
        GenOptions po = o, qo = o;
        po.mtp = po.stream = qo.stream = 0;
        GenResult p, q;
        die_on(generate(&m, &s, tok, ids, T, &po, &p, &e), &e);
        die_on(generate(&m, &s, tok, ids, T, &qo, &q, &e), &e);
        int same = p.n == n && !memcmp(p.ids, r.ids, sizeof(int) * n);
        double mtp_rate = (q.n - 1) / q.decode_s, plain_rate = (p.n - 1) / p.decode_s;
        fprintf(stderr, "run: mtp accepted %d of %d drafts (%.1f%%); re-run quietly: %.1f tok/s with MTP vs %.1f plain: %.2fx%s\n",
                r.accepted, r.drafted, r.drafted ? 100.0 * r.accepted / r.drafted : 0.0, mtp_rate, plain_rate,
                mtp_rate / plain_rate,
                a.temp <= 0 ? (same ? "; tokens identical to plain greedy" : "; TOKENS DIFFER FROM PLAIN GREEDY") : "");
        free(p.ids);
        free(q.ids);
    }
    free(r.ids); free(ids);
    if (tok) tokenizer_free(tok);
    state_free(&s);
    model_free(&m);
    return 0;
}

/* run chat: a conversation on stdin, one user turn per line, in one latent cache (generate.h). */
static int cmd_chat(int argc, char **argv) {
    Args a = parse_args(argc, argv);
    if (a.prompt || a.tokens || a.mtp) die_usage("chat: the turns come from stdin, one per line (no -p, --tokens or --mtp)");
    Model m;
    State s;
    Error e;
    load_or_die(&m, a.dir);
    Tokenizer *tok = tokenizer_or_die(a.dir);
    ChatFormat f;
    die_on(chat_format_detect(&f, a.dir, tok, &e), &e);
    state_or_die(&s, &m, a.ctx, 1);
    if (!a.has_seed) a.seed = (unsigned long long)time(NULL);
    GenOptions o = {.temp = a.temp, .top_p = a.top_p, .seed = a.seed, .n_new = a.n_new_set ? a.n_new : 256,
                    .ignore_eos = a.ignore_eos, .eos = tokenizer_eos_id(tok), .stream = !a.ids, .stop = &interrupted};
    catch_signals();
    if (isatty(0)) fprintf(stderr, "run: %s chat format, %d-token context; one turn per line, Ctrl-D ends\n",
                           chat_format_name(f), s.ctx);
    die_on(chat_session(&m, &s, tok, f, a.system, stdin, stdout, &o, &e), &e);
    if (fflush(stdout) != 0 || ferror(stdout)) exit(EXIT_CLOSED_STDOUT);
    if (interrupted) exit(EXIT_INTERRUPTED);
    tokenizer_free(tok);
    state_free(&s);
    model_free(&m);
    return 0;
}

static int cmd_init(int argc, char **argv) {
    Args a = parse_args(argc, argv);
    if (a.kv_set) die_usage("init: --kv goes with generate, logits, ppl and chat");
    if (!a.config || !a.out) die_usage("init: --config CONFIG.json and --out DIR are required");
    if (a.dir) die_usage("init: unexpected argument (use --config and --out)");
    const char *dt = a.dtype ? a.dtype : "f32";
    QuantTarget to = !strcmp(dt, "f32") ? QUANT_TO_F32 : !strcmp(dt, "bf16") ? QUANT_TO_BF16 : QUANT_TO_FP8;
    if (strcmp(dt, "f32") && strcmp(dt, "bf16") && strcmp(dt, "fp8")) die_usage("init: --dtype: expected f32, bf16 or fp8");
    Error e;
    Config c;
    char msg[600];
    if (config_load(&c, a.config, &e)) die(e.msg);
    /* run init draws one tensor at a time (init.c): the largest must fit in memory as F32, and the
     * whole checkpoint on the disk that holds OUT */
    Manifest mf = {0};
    if (manifest_model(&mf, &c, a.mtp, &e)) die(e.msg);
    double largest = 0, total = 0, elem = to == QUANT_TO_F32 ? 4 : to == QUANT_TO_BF16 ? 2 : 1;
    for (int i = 0; i < mf.n; i++) {
        double n = (double)mf.e[i].rows * (mf.e[i].cols ? mf.e[i].cols : 1);
        largest = n > largest ? n : largest;
        total += n * elem;
    }
    manifest_free(&mf);
    double have = memory_bytes(), disk = disk_bytes_free(a.out);
    if (4 * largest > have) {
        snprintf(msg, sizeof msg, "init: %s's largest tensor needs %.3g bytes in F32, more than this machine's %.3g "
                 "bytes of memory (the limit)", a.config, 4 * largest, have);
        die(msg);
    }
    if (total > disk) {
        snprintf(msg, sizeof msg, "init: %s's checkpoint needs %.3g bytes (%s), more than the %.3g bytes free where "
                 "%s goes (the limit)", a.config, total, dt, disk, a.out);
        die(msg);
    }
    const char *finals[] = {"config.json", "model.safetensors"};
    for (int i = 0; i < 2; i++) { /* an existing checkpoint in OUT is replaced only when asked */
        snprintf(msg, sizeof msg, "%s/%s", a.out, finals[i]);
        if (outfile_check_clobber(msg, a.force, &e)) die(e.msg);
    }
    if (model_init_random(a.config, a.out, a.has_seed ? a.seed : 0, a.mtp, to, &e)) die(e.msg);
    fprintf(stderr, "run: wrote a random %s model%s to %s\n", dt, a.mtp ? " with an MTP module" : "", a.out);
    return 0;
}

static int cmd_tokenize(int argc, char **argv) {
    Args a = parse_args(argc, argv);
    if (a.kv_set) die_usage("tokenize: --kv goes with generate, logits, ppl and chat");
    if (!a.dir) die_usage("tokenize: missing the directory that holds tokenizer.json");
    if (!a.prompt == !a.file) die_usage("tokenize: give the text with -p TEXT or -f FILE, one of them");
    Tokenizer *tok = tokenizer_or_die(a.dir);
    size_t n;
    char *text = a.file ? read_or_die(a.file, &n) : strdup(a.prompt);
    if (!text) die("tokenize: out of memory");
    if (!a.file) n = strlen(text);
    int *ids, n_ids;
    Error e;
    if (a.chat || a.system) { /* the prompt ids generate --chat would feed the model */
        if (a.file) die_usage("tokenize: --chat goes with -p TEXT");
        ids = encode_prompt(tok, &a, &n_ids);
    } else if (tokenizer_encode(tok, text, n, &ids, &n_ids, &e)) die(e.msg);
    for (int i = 0; i < n_ids; i++) {
        if (a.ids) {
            printf("%s%d", i ? " " : "", ids[i]);
            continue;
        }
        const char *piece = tokenizer_piece(tok, ids[i]);
        printf("%6d  %s\n", ids[i], piece ? piece : "?");
    }
    if (a.ids) printf("\n");
    else fprintf(stderr, "run: %zu bytes -> %d tokens\n", n, n_ids);
    free(ids);
    free(text);
    tokenizer_free(tok);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * run ppl: perplexity over non-overlapping windows, as train/train.py defines it for HF
 */
static int cmd_ppl(int argc, char **argv) {
    Args a = parse_args(argc, argv);
    if (!a.dir) die_usage("ppl: missing the checkpoint directory");
    if (!a.ids_file == !a.file) die_usage("ppl: give --ids-file F.safetensors (tensor heldout_ids) or -f TEXTFILE");
    Model m;
    Error e;
    load_or_die(&m, a.dir);
    int n, *ids;
    if (a.file) {
        Tokenizer *tok = tokenizer_or_die(a.dir);
        size_t nb;
        char *text = read_or_die(a.file, &nb);
        if (tokenizer_encode(tok, text, nb, &ids, &n, &e)) die(e.msg);
        free(text);
        tokenizer_free(tok);
    } else {
        StFile f;
        if (st_open(&f, a.ids_file, &e)) die(e.msg);
        const StTensor *t = st_find(&f, "heldout_ids");
        if (!t || t->ndim != 1) die("ppl: the file has no 1-D tensor heldout_ids");
        n = (int)t->numel;
        if (!(ids = malloc(sizeof(int) * ((size_t)n + 1)))) die("ppl: out of memory for the ids");
        for (int i = 0; i < n; i++) ids[i] = (int)dtype_load_f32(t->dtype, t->data, (size_t)i);
        st_close(&f);
    }
    /* window k = [BOS] + ids[k*(W-1) .. (k+1)*(W-1)), every full window (or the first --windows) */
    int W = a.ctx ? a.ctx : 512, V = m.cfg.vocab_size, bos = m.cfg.bos_token_id >= 0 ? m.cfg.bos_token_id : 0;
    int n_win = n / (W - 1);
    if (a.n_windows > 0 && a.n_windows < n_win) n_win = a.n_windows;
    if (n_win == 0) die("ppl: fewer tokens than one window");
    State s, s2;
    Model m2;
    state_or_die(&s, &m, W, W);
    if (a.compare) {
        load_or_die(&m2, a.compare);
        if (m2.cfg.vocab_size != V) die("ppl --compare: the two checkpoints have different vocabularies");
        state_or_die(&s2, &m2, W, W);
    }
    float *logits = malloc(sizeof(float) * (size_t)W * V), *logits2 = a.compare ? malloc(sizeof(float) * (size_t)W * V) : NULL;
    int *win = malloc(sizeof(int) * (size_t)W);
    if (!logits || !win || (a.compare && !logits2)) die("ppl: out of memory for the window's logits");
    /* with --compare: per prediction, d = NLL2 - NLL1 and its expansion in the logit change
     * delta = l2 - l1 under p = softmax(l1): d = (E_p delta - delta_y) + Var_p(delta) / 2 + O(delta^3) */
    double nll = 0, nll2 = 0, first = 0, first_sq = 0, second = 0, t0 = now_s();
    for (int k = 0; k < n_win; k++) {
        win[0] = bos;
        memcpy(win + 1, ids + (size_t)k * (W - 1), sizeof(int) * (size_t)(W - 1));
        die_on(model_forward(&m, &s, win, W, 0, logits, 0, ATTN_ABSORBED, &e), &e);
        if (a.compare) die_on(model_forward(&m2, &s2, win, W, 0, logits2, 0, ATTN_ABSORBED, &e), &e);
        for (int t = 0; t < W - 1; t++) { /* -log softmax(logits[t])[win[t+1]], in double */
            const float *l = logits + (size_t)t * V;
            int y = win[t + 1];
            double mx = l[argmax(l, V)], z = 0;
            for (int v = 0; v < V; v++) z += exp((double)l[v] - mx);
            nll += log(z) + mx - l[y];
            if (!a.compare) continue;
            const float *l2 = logits2 + (size_t)t * V;
            double mx2 = l2[argmax(l2, V)], z2 = 0, e1 = 0, e2 = 0;
            for (int v = 0; v < V; v++) {
                double p = exp((double)l[v] - mx) / z, dl = (double)l2[v] - l[v];
                z2 += exp((double)l2[v] - mx2);
                e1 += p * dl;
                e2 += p * dl * dl;
            }
            nll2 += log(z2) + mx2 - l2[y];
            double f = e1 - ((double)l2[y] - l[y]);
            first += f;
            first_sq += f * f;
            second += (e2 - e1 * e1) / 2;
        }
        if (!a.ids && (k + 1) % 10 == 0) fprintf(stderr, "run: %d / %d windows\r", k + 1, n_win);
    }
    double N = (double)n_win * (W - 1), mean = nll / N;
    printf("%d windows of %d tokens ([BOS] + %d), %d predictions: mean NLL %.6f, perplexity %.4f\n", n_win, W,
           W - 1, n_win * (W - 1), mean, exp(mean));
    if (a.compare) {
        double f_mean = first / N, f_se = sqrt((first_sq / N - f_mean * f_mean) / N), s_mean = second / N;
        printf("%s: mean NLL %.6f, perplexity %.4f; change %+.6f (%+.4f%% perplexity)\n", a.compare, nll2 / N,
               exp(nll2 / N), nll2 / N - mean, 100 * (exp(nll2 / N - mean) - 1));
        printf("expansion in the logit change: first order %+.6f (standard error %.6f), second order %+.6f, "
               "sum %+.6f\n", f_mean, f_se, s_mean, f_mean + s_mean);
        printf("predicted change: %+.6f +- %.6f (second order +- 2 standard errors of the first)\n", s_mean, 2 * f_se);
    }
    fprintf(stderr, "run: %.1f s, %.0f tok/s prefill\n", now_s() - t0, n_win * (double)W * (a.compare ? 2 : 1) / (now_s() - t0));
    free(win); free(logits); free(logits2); free(ids);
    state_free(&s);
    model_free(&m);
    if (a.compare) {
        state_free(&s2);
        model_free(&m2);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * run fp8-error: the error of an FP8 dot product per scaling and accumulation mode (notes/fp8.md)
 */
static int cmd_fp8_error(int argc, char **argv) {
    int K = argc > 0 ? parse_int("K", argv[0]) : 4096;
    unsigned long long seed = argc > 1 ? (unsigned long long)parse_int("seed", argv[1]) : 1234;
    if (argc > 2) die_usage("fp8-error takes at most K and a seed");
    if (K < 128 || K % 128) die_usage("fp8-error: K must be a positive multiple of 128");
    Fp8ErrorRow r[FP8_ERROR_ROWS];
    int n = fp8_error_table(r, FP8_ERROR_ROWS, K, seed);
    if (n < 0) die("fp8-error: out of memory");
    printf("K = %d, seed %llu: relative error of y = x . W^T\n", K, seed);
    fp8_error_print(stdout, r, n);
    return 0;
}

/* --threads N anywhere on the line (taken out before the command parses its own options), else
 * OMP_NUM_THREADS, else OpenMP's dynamic adjustment: libgomp then uses the cores the load average
 * leaves free, so a busy machine is not oversubscribed (each parallel loop ends at a barrier, and a
 * barrier waiting for a descheduled thread stalls every layer). No result depends on the count. */
static int take_threads(int argc, char **argv) {
    int out = 0, n = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--threads")) { argv[out++] = argv[i]; continue; }
        char *end;
        long v = i + 1 < argc ? strtol(argv[i + 1], &end, 10) : 0;
        if (i + 1 >= argc || *end || v < 1 || v > 1024) die_usage("--threads: expected a count in 1..1024");
        n = (int)v;
        i++;
    }
    if (n) {
        omp_set_dynamic(0);
        omp_set_num_threads(n);
    } else if (!getenv("OMP_NUM_THREADS") && !getenv("OMP_DYNAMIC")) {
        omp_set_dynamic(1);
    }
    argv[out] = NULL;
    return out;
}

/* --device cpu|cuda anywhere on the line, taken out as --threads is. */
static int take_device(int argc, char **argv) {
    int out = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--device")) { argv[out++] = argv[i]; continue; }
        if (i + 1 >= argc || (strcmp(argv[i + 1], "cpu") && strcmp(argv[i + 1], "cuda")))
            die_usage("--device: expected cpu or cuda");
        device = argv[++i];
    }
    argv[out] = NULL;
    return out;
}

int main(int argc, char **argv) {
    argc = take_threads(argc, argv);
    argc = take_device(argc, argv);
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "inspect")) return cmd_inspect(argc - 2, argv + 2);
    if (!strcmp(cmd, "logits")) return cmd_logits(argc - 2, argv + 2);
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 2, argv + 2);
    if (!strcmp(cmd, "chat")) return cmd_chat(argc - 2, argv + 2);
    if (!strcmp(cmd, "tokenize")) return cmd_tokenize(argc - 2, argv + 2);
    if (!strcmp(cmd, "init")) return cmd_init(argc - 2, argv + 2);
    if (!strcmp(cmd, "bench")) return bench_main(argc - 2, argv + 2);
    if (!strcmp(cmd, "ppl")) return cmd_ppl(argc - 2, argv + 2);
    if (!strcmp(cmd, "golden")) return golden_main(argc - 2, argv + 2);
    if (!strcmp(cmd, "kv")) return kv_main(argc - 2, argv + 2);
    if (!strcmp(cmd, "fp8-error")) return cmd_fp8_error(argc - 2, argv + 2);
    if (!strcmp(cmd, "quantize")) return quantize_main(argc - 2, argv + 2);
    fprintf(stderr, "run: unknown command \"%s\"\n(see run --help)\n", cmd);
    return 2;
}
