/* run.c - the commands. Every subcommand is a small function; all errors end here: library code
 * returns -1 with a one-line message, and this file (with args.c's die) prints it and exits
 * non-zero. The options, the --help text and die / die_usage are args.c's; ppl's arithmetic is
 * ppl.c's.
 *
 *   run inspect DIR                                     config summary, parameters, bytes by dtype
 *   run logits DIR --tokens 5,17,42 --out F.safetensors [--decode] [--naive] [--ctx N]
 *   run generate DIR -p TEXT [-n N] [--temp T] [--top-p P] [--seed S] [--chat] [--system S]
 *   run generate DIR --tokens 5,17,42 [-n 16] [--temp 0] --ids [--ignore-eos] [--ctx N]
 *   run generate ... --mtp                             speculative decoding with the MTP module
 *   run init --config C.json --out DIR [--mtp] [--dtype D] [--force]   a random model (D: f32, bf16, fp8)
 *   run tokenize DIR (-p TEXT | -f FILE) [--ids] [--chat]
 *   run ppl DIR (--ids-file F | -f TEXT) [--window W] [--compare DIR2]   perplexity (ppl.c)
 *   run kv [CONFIG.json ...] [--capacity ...]         the KV-cache story (kv_cli.c)
 *   run fp8-error [K [SEED]]                          FP8 GEMM error per mode (fp8_error.c)
 *   run golden ...                                    golden files for GPU kernels (golden.c)
 *   run quantize IN OUT --to fp8|bf16|f32             DeepSeek's FP8 checkpoint layout (quantize.c)
 */
#include "args.h"
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
#include "ppl.h"
#include "quantize.h"
#include "tokenizer.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

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

/* --device: NULL or "cpu" (the CPU), or "cuda". The one setting every model command shares that is not in
 * its Args: main takes it out of the line (take_device) before the command parses the rest, and
 * state_or_die reads it. Set once, before any command runs. */
static const char *device;

/* s for m with a ctx-token latent cache (0: min(max_position_embeddings, 4096)) stored as kv_format
 * (--kv, Args.kv), on device; exits with a message when need tokens do not fit, the cache would not fit in memory, or
 * kv_format is not F32 on the GPU. */
static void state_or_die(State *s, const Model *m, int ctx, int need, MlaKvFormat kv_format) {
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
    state_or_die(&s, &m, a.ctx, T, a.kv);
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
    const char *vals[] = {a.decode ? "decode" : "prefill", a.naive ? "naive" : "absorbed", mla_kv_format_name(a.kv)};
    if (st_write(a.out, &out, 1, keys, vals, a.kv == MLA_KV_F32 ? 2 : 3, &e)) die(e.msg); /* "kv" only when not f32 */
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
    state_or_die(&s, &m, a.ctx, T + a.n_new, a.kv);
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
    state_or_die(&s, &m, a.ctx, 1, a.kv);
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
 * run ppl: perplexity over non-overlapping windows, as train/train.py defines it for HF: the ids,
 * the model(s), one prefill per window; ppl.c does the arithmetic and the report
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
    state_or_die(&s, &m, W, W, a.kv);
    if (a.compare) {
        load_or_die(&m2, a.compare);
        if (m2.cfg.vocab_size != V) die("ppl --compare: the two checkpoints have different vocabularies");
        state_or_die(&s2, &m2, W, W, a.kv);
    }
    float *logits = malloc(sizeof(float) * (size_t)W * V), *logits2 = a.compare ? malloc(sizeof(float) * (size_t)W * V) : NULL;
    int *win = malloc(sizeof(int) * (size_t)W);
    if (!logits || !win || (a.compare && !logits2)) die("ppl: out of memory for the window's logits");
    /* the sums of ppl.h, added window by window in order (bit-identical figures for the same windows) */
    PplSums sums = {0};
    double t0 = now_s();
    for (int k = 0; k < n_win; k++) {
        win[0] = bos;
        memcpy(win + 1, ids + (size_t)k * (W - 1), sizeof(int) * (size_t)(W - 1));
        die_on(model_forward(&m, &s, win, W, 0, logits, 0, ATTN_ABSORBED, &e), &e);
        if (a.compare) die_on(model_forward(&m2, &s2, win, W, 0, logits2, 0, ATTN_ABSORBED, &e), &e);
        ppl_add_window(&sums, logits, logits2, win, W, V);
        if (!a.ids && (k + 1) % 10 == 0) fprintf(stderr, "run: %d / %d windows\r", k + 1, n_win);
    }
    ppl_print(stdout, &sums, n_win, W, a.compare);
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

int main(int argc, char **argv) {
    argc = take_threads(argc, argv);
    argc = take_device(argc, argv, &device);
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
