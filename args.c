/* args.c - run's command line: the usage text, the options the model commands parse into Args
 * (bench, golden, kv and quantize parse their own), the id and integer parsers, and the two options
 * main takes out before any command sees the line (--threads, --device). Each check ends in
 * die_usage with a one-line message (exit status 2); args.h lists what is here.
 */
#include "args.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const USAGE =
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

void die(const char *msg) {
    fprintf(stderr, "run: %s\n", msg);
    exit(1);
}

void die_usage(const char *msg) {
    fprintf(stderr, "run: %s\n(see run --help)\n", msg);
    exit(2);
}

/* "5,17,42" -> ids; exits with a message on anything else. */
int *parse_ids(const char *s, int *n) {
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

int parse_int(const char *flag, const char *v) {
    char *end;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || *end || x < 0 || x > 1 << 30) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s: expected a non-negative integer, found \"%s\"", flag, v ? v : "(nothing)");
        die_usage(msg);
    }
    return (int)x;
}

Args parse_args(int argc, char **argv) {
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
            a.kv = (MlaKvFormat)f;
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

/* --threads N anywhere on the line (taken out before the command parses its own options), else
 * OMP_NUM_THREADS, else OpenMP's dynamic adjustment: libgomp then uses the cores the load average
 * leaves free, so a busy machine is not oversubscribed (each parallel loop ends at a barrier, and a
 * barrier waiting for a descheduled thread stalls every layer). No result depends on the count. */
int take_threads(int argc, char **argv) {
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
int take_device(int argc, char **argv, const char **device) {
    int out = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--device")) { argv[out++] = argv[i]; continue; }
        if (i + 1 >= argc || (strcmp(argv[i + 1], "cpu") && strcmp(argv[i + 1], "cuda")))
            die_usage("--device: expected cpu or cuda");
        *device = argv[++i];
    }
    argv[out] = NULL;
    return out;
}
