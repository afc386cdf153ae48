/* tokenizer.c - HF tokenizer.json byte-level BPE, the tokenizer of DeepSeek-V3 (and GPT-2).
 *
 * Encoding a text is four steps, each one a section of this file:
 *   1. Added tokens. Special tokens such as <｜User｜> are cut out of the raw text first, by exact
 *      string match, leftmost and then longest first (HF: aho-corasick, LeftmostLongest). Tokens
 *      marked "normalized": false are matched first, then "normalized": true ones in the gaps.
 *   2. Pre-tokenization. The text between added tokens is split by the pre_tokenizer's regexes,
 *      one Split step after another, each step working inside the pieces of the one before; a
 *      Split with behavior "Isolated" keeps every match and every gap as a piece of its own.
 *      DeepSeek-V3 has three steps: digit runs of at most 3, CJK/kana runs, and a GPT-4-like rule
 *      for words, punctuation and whitespace; then ByteLevel (use_regex false) adds no split.
 *      A bare ByteLevel with use_regex true splits with GPT-2's regex. Pieces never merge back.
 *   3. Byte-level alphabet. Each byte of a piece becomes one character, so BPE never meets an
 *      unknown symbol: the printable bytes '!'..'~', '¡'..'¬', '®'..'ÿ' stand for themselves and
 *      the other 68 (controls, space, 0x7F-0xA0, 0xAD) become U+0100.. in order: space is 'Ġ'
 *      (U+0120), newline is 'Ċ' (U+010A). The vocabulary is spelled in this alphabet.
 *   4. BPE. Start from one symbol per byte and merge, again and again, the adjacent pair that
 *      comes first in model.merges (lowest rank; leftmost on ties) until no pair is listed.
 * Worked example with DeepSeek-V3's rules, text "Hi 2024!":
 *   split 1 (\p{N}{1,3})  "Hi " "202" "4" "!"        digits in threes, from the left
 *   split 3 (words, ...)  "Hi" " " "202" "4" "!"     so the space cannot join the number
 * and BPE inside a piece " hello" with merges 0:"l l" 1:"h e" 2:"Ġ he" 3:"ll o" 4:"Ġhe llo":
 *   Ġ h e l l o -> Ġ h e ll o -> Ġ he ll o -> Ġhe ll o -> Ġhe llo -> Ġhello   (one id)
 * Decoding maps each token's characters back to bytes; a token with a character outside the
 * alphabet (like "<｜User｜>") is copied as written, as HF's ByteLevel decoder does.
 *
 * Where HF gives no answer, or where we differ:
 *   - Bytes that are not valid UTF-8 (HF only takes strings) still encode: each maximal run of
 *     them is a piece of its own that no regex sees; decode(encode(s)) == s for any bytes s.
 *   - PCRE2 stands in for HF's Oniguruma. \p{L}, \p{N}, \p{P}, \p{S}, \p{M} agree (up to the
 *     Unicode version) but \s does not (PCRE2 also counts U+180E), so \s and \S are rewritten to
 *     Oniguruma's list before compiling.
 *   - A byte that has no token (and no unk_token) is an error; HF drops it silently.
 *   - Refused at load, naming the field: normalizers, other pre-tokenizers, Split behaviors other
 *     than "Isolated", ByteLevel add_prefix_space, added tokens with lstrip/rstrip/single_word,
 *     subword prefixes/suffixes. BPE dropout is ignored (it only applies in training).
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"

#include <cJSON.h>
#include <math.h>
#include <pcre2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_SPLITS 16

typedef struct {
    char *text;
    int len, id;
    int normalized; /* 0: matched in the raw text first; 1: then in what is left */
} AddedToken;

typedef struct {
    uint64_t key; /* (left id << 32 | right id) + 1; 0 marks an empty slot */
    int rank, id; /* rank in model.merges, id of the merged token */
} Merge;

struct Tokenizer {
    int n_vocab;
    char **piece;            /* [n_vocab] token as spelled in tokenizer.json, NULL in gaps */
    int *piece_len;          /* [n_vocab] */
    char *bytes;             /* what each token decodes to, back to back */
    size_t *bytes_off;       /* [n_vocab + 1] token id is bytes[bytes_off[id] .. bytes_off[id + 1]) */
    unsigned char *special;  /* [n_vocab] */
    int *vocab;              /* open-addressing hash table: spelling -> id, -1 empty */
    Merge *merge;            /* open-addressing hash table: (left, right) -> rank, merged id */
    size_t vocab_mask, merge_mask;
    int byte_id[256];        /* the one-byte token of each byte, -1 if none */
    int byte_cp[256];        /* byte -> code point of its character in the byte-level alphabet */
    int cp_byte[324];        /* code point -> byte, -1 for code points outside the alphabet */
    AddedToken *added;       /* sorted by (normalized, first byte, longest first) */
    int n_added;
    int added_first[2][257]; /* added[added_first[c][b] .. added_first[c][b + 1]): class c, first byte b */
    pcre2_code *split[MAX_SPLITS];
    int n_split;
    int ignore_merges, unk_id, bos_id, eos_id;
};

/* ---------------------------------------------------------------------------------- helpers */

/* At s[0..n): 1-4 = length of a valid UTF-8 character; 0 = not valid; -1 = a valid start that
 * the end of the buffer cuts short. Overlongs, surrogates and > U+10FFFF are not valid. */
static int utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0], lo = 0x80, hi = 0xBF;
    int len;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, lo = c == 0xE0 ? 0xA0 : lo, hi = c == 0xED ? 0x9F : hi;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, lo = c == 0xF0 ? 0x90 : lo, hi = c == 0xF4 ? 0x8F : hi;
    else return 0;
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n) return -1;
        if (s[i] < (i == 1 ? lo : 0x80) || s[i] > (i == 1 ? hi : 0xBF)) return 0;
    }
    return len;
}

static int utf8_put(char *out, int cp) { /* cp < 0x800: all the byte alphabet needs */
    if (cp < 0x80) return out[0] = (char)cp, 1;
    out[0] = (char)(0xC0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

static uint64_t hash_bytes(const char *s, size_t n) { /* FNV-1a */
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_u64(uint64_t x) { /* splitmix64's finalizer */
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static size_t table_size(size_t n) { /* a power of two, at most half full */
    size_t c = 16;
    while (c < 2 * n) c *= 2;
    return c;
}

/* The slot of the vocabulary hash table that holds spelling s [n bytes], or the empty one for it. */
static size_t vocab_slot(const Tokenizer *t, const char *s, size_t n) {
    size_t i = hash_bytes(s, n) & t->vocab_mask;
    for (int id; (id = t->vocab[i]) >= 0; i = (i + 1) & t->vocab_mask)
        if ((size_t)t->piece_len[id] == n && memcmp(t->piece[id], s, n) == 0) break;
    return i;
}

static int vocab_find(const Tokenizer *t, const char *s, size_t n) { return t->vocab[vocab_slot(t, s, n)]; }

static uint64_t pair_key(int left, int right) { return ((uint64_t)left << 32 | (uint32_t)right) + 1; }

static size_t merge_slot(const Tokenizer *t, uint64_t key) { /* key's slot, or the empty one for it */
    size_t i = hash_u64(key) & t->merge_mask;
    while (t->merge[i].key != 0 && t->merge[i].key != key) i = (i + 1) & t->merge_mask;
    return i;
}

static const Merge *merge_find(const Tokenizer *t, int left, int right) {
    const Merge *m = &t->merge[merge_slot(t, pair_key(left, right))];
    return m->key ? m : NULL;
}

/* Growable array: *(T **)pp holds *cap elements of `size` bytes; makes room for `need`. */
static int grow(void *pp, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *p;
    memcpy(&p, pp, sizeof p);
    if (!(p = realloc(p, c * size))) return -1;
    memcpy(pp, &p, sizeof p);
    *cap = c;
    return 0;
}

/* ---------------------------------------------------------------------------------- loading */

static const cJSON *json_get(const cJSON *obj, const char *key) { return cJSON_GetObjectItemCaseSensitive(obj, key); }

static const char *json_str(const cJSON *obj, const char *key) { /* NULL when absent or not a string */
    const cJSON *v = json_get(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int json_bool(const cJSON *obj, const char *key, int dflt) {
    const cJSON *v = json_get(obj, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

/* Ids index arrays of the largest id + 1, so they are bounded: TOKENIZER_MAX_ID is 32 times
 * DeepSeek-V3's vocabulary, and a file claiming id 2^31 is refused before anything is sized by it. */
#define TOKENIZER_MAX_ID ((1 << 22) - 1)
static int json_id(const cJSON *v, const char *file, const char *field, const char *name, Error *e) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble != floor(v->valuedouble))
        return error_set(e, "%s: %s \"%s\": expected a non-negative integer id, found something else", file, field, name);
    if (v->valuedouble > TOKENIZER_MAX_ID)
        return error_set(e, "%s: %s \"%s\": id %.0f is past the limit %d (a vocabulary of at most %d tokens)", file,
                         field, name, v->valuedouble, TOKENIZER_MAX_ID, TOKENIZER_MAX_ID + 1);
    return v->valueint;
}

/* Oniguruma (HF's regex engine) reads \s as Unicode White_Space; PCRE2 with UCP also counts
 * U+180E. \s and \S are written out as Oniguruma's list so that both engines split alike. */
#define ONIG_SPACE \
    "\\x{9}-\\x{d}\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"

static int split_compile(Tokenizer *t, const char *pat, int literal, const char *file, Error *e) {
    if (t->n_split == MAX_SPLITS) return error_set(e, "%s: pre_tokenizer: more than %d Split steps", file, MAX_SPLITS);
    size_t n = strlen(pat), k = 0;
    char *p = malloc(n * sizeof ONIG_SPACE + 1);
    if (!p) return error_set(e, "%s: out of memory", file);
    for (size_t i = 0, in_class = 0; i < n; i++) {
        if (literal) {
            p[k++] = pat[i];
        } else if (pat[i] == '\\' && (pat[i + 1] == 's' || pat[i + 1] == 'S')) {
            if (pat[i + 1] == 'S' && in_class)
                return free(p), error_set(e, "%s: pre_tokenizer regex /%s/: \\S inside [] is not supported", file, pat);
            k += (size_t)sprintf(p + k, in_class ? "%s" : pat[i + 1] == 's' ? "[%s]" : "[^%s]", ONIG_SPACE);
            i++;
        } else if (pat[i] == '\\' && pat[i + 1]) {
            p[k++] = pat[i++], p[k++] = pat[i];
        } else if (!in_class && pat[i] == '[') {
            in_class = 1, p[k++] = '[';
            if (pat[i + 1] == '^') p[k++] = pat[++i];
            if (pat[i + 1] == ']') p[k++] = pat[++i]; /* a ']' first in a class is a literal */
        } else if (in_class && pat[i] == '[' && pat[i + 1] == ':' && strstr(pat + i, ":]")) { /* [:alpha:] */
            size_t m = (size_t)(strstr(pat + i, ":]") - (pat + i)) + 2;
            memcpy(p + k, pat + i, m), k += m, i += m - 1;
        } else {
            in_class = in_class && pat[i] != ']';
            p[k++] = pat[i];
        }
    }
    int err;
    PCRE2_SIZE at;
    uint32_t flags = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)p, k, flags, &err, &at, NULL);
    free(p);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return error_set(e, "%s: pre_tokenizer regex /%s/: %s", file, pat, (char *)msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* a speed-up where available; works without */
    t->split[t->n_split++] = re;
    return 0;
}

/* A Sequence of Split steps ending in ByteLevel, or a lone ByteLevel. */
static int load_pre_tokenizer(Tokenizer *t, const cJSON *pt, const char *file, Error *e) {
    const char *gpt2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
    const char *type = json_str(pt, "type");
    const cJSON *steps = type && strcmp(type, "Sequence") == 0 ? json_get(pt, "pretokenizers") : NULL, *s;
    int byte_level = 0;
    for (s = steps ? steps->child : pt; s; s = steps ? s->next : NULL) {
        const char *behavior = json_str(s, "behavior"), *re = json_str(json_get(s, "pattern"), "Regex");
        const char *lit = json_str(json_get(s, "pattern"), "String");
        type = json_str(s, "type") ? json_str(s, "type") : "none";
        if (byte_level)
            return error_set(e, "%s: pre_tokenizer: expected ByteLevel last, found %s after it", file, type);
        if (strcmp(type, "Split") == 0) {
            if (!behavior || strcmp(behavior, "Isolated") != 0)
                return error_set(e, "%s: pre_tokenizer Split.behavior: expected \"Isolated\", found \"%s\"", file,
                                 behavior ? behavior : "none");
            if (!re && !lit)
                return error_set(e, "%s: pre_tokenizer Split.pattern: expected {\"Regex\": ...} or {\"String\": ...}",
                                 file);
            if (split_compile(t, re ? re : lit, !re, file, e)) return -1;
        } else if (strcmp(type, "ByteLevel") == 0) {
            if (json_bool(s, "add_prefix_space", 0))
                return error_set(e, "%s: pre_tokenizer ByteLevel.add_prefix_space: expected false, found true", file);
            if (json_bool(s, "use_regex", 1) && split_compile(t, gpt2, 0, file, e)) return -1;
            byte_level = 1;
        } else {
            return error_set(e, "%s: pre_tokenizer: expected Split or ByteLevel steps, found type %s", file, type);
        }
    }
    if (!byte_level)
        return error_set(e, "%s: pre_tokenizer: expected a ByteLevel step (byte-level BPE), found none", file);
    return 0;
}

/* Parts of tokenizer.json that we do not run must be absent or do nothing. */
static int check_unsupported(const cJSON *root, const cJSON *model, const char *file, Error *e) {
    const char *fields[] = {"continuing_subword_prefix", "end_of_word_suffix"}, *s;
    for (int i = 0; i < 2; i++)
        if ((s = json_str(model, fields[i])) && *s)
            return error_set(e, "%s: model.%s: expected null, found \"%s\"", file, fields[i], s);
    const cJSON *norm = json_get(root, "normalizer"); /* {"type": "Sequence", "normalizers": []} is null too */
    if ((s = json_str(norm, "type")) && (strcmp(s, "Sequence") || cJSON_GetArraySize(json_get(norm, "normalizers"))))
        return error_set(e, "%s: normalizer: expected null, found type %s", file, s);
    if ((s = json_str(json_get(root, "decoder"), "type")) && strcmp(s, "ByteLevel") != 0)
        return error_set(e, "%s: decoder: expected ByteLevel, found type %s", file, s);
    return 0;
}

static int cmp_added(const void *pa, const void *pb) {
    const AddedToken *a = pa, *b = pb;
    int fa = (unsigned char)a->text[0], fb = (unsigned char)b->text[0];
    return a->normalized != b->normalized ? a->normalized - b->normalized : fa != fb ? fa - fb : b->len - a->len;
}

/* model.vocab and added_tokens (ids), then model.merges, then the pre_tokenizer. */
static int load_json(Tokenizer *t, const cJSON *root, const char *file, Error *e) {
    const cJSON *model = json_get(root, "model"), *vocab = json_get(model, "vocab");
    const cJSON *merges = json_get(model, "merges"), *added = json_get(root, "added_tokens"), *v;
    const char *type = json_str(model, "type");
    if (!cJSON_IsObject(model)) return error_set(e, "%s: model: expected an object, found none", file);
    if (type && strcmp(type, "BPE") != 0)
        return error_set(e, "%s: model.type: expected \"BPE\", found \"%s\"", file, type);
    if (!cJSON_IsObject(vocab))
        return error_set(e, "%s: model.vocab: expected an object of token -> id, found none", file);
    if (!cJSON_IsArray(merges)) return error_set(e, "%s: model.merges: expected a list, found none", file);
    if (added && !cJSON_IsArray(added) && !cJSON_IsNull(added))
        return error_set(e, "%s: added_tokens: expected a list", file);
    if (check_unsupported(root, model, file, e)) return -1;

    int max_id = -1, id; /* the vocabulary size is the largest id + 1 */
    cJSON_ArrayForEach(v, vocab) {
        if ((id = json_id(v, file, "model.vocab", v->string, e)) < 0) return -1;
        max_id = id > max_id ? id : max_id;
    }
    cJSON_ArrayForEach(v, added) {
        const char *text = json_str(v, "content"), *flags[] = {"single_word", "lstrip", "rstrip"};
        if (!text || !*text)
            return error_set(e, "%s: added_tokens: expected a non-empty \"content\", found none", file);
        if ((id = json_id(json_get(v, "id"), file, "added_tokens", text, e)) < 0) return -1;
        for (int i = 0; i < 3; i++)
            if (json_bool(v, flags[i], 0))
                return error_set(e, "%s: added_tokens \"%s\".%s: expected false (not supported), found true", file,
                                 text, flags[i]);
        max_id = id > max_id ? id : max_id;
    }
    size_t nv = (size_t)max_id + 1, vcap = table_size(nv), mcap = table_size((size_t)cJSON_GetArraySize(merges));
    t->n_vocab = max_id + 1, t->n_added = cJSON_GetArraySize(added);
    t->piece = calloc(nv + 1, sizeof *t->piece), t->piece_len = calloc(nv + 1, sizeof *t->piece_len);
    t->special = calloc(nv + 1, 1);
    t->added = calloc((size_t)t->n_added + 1, sizeof *t->added);
    t->vocab = malloc(vcap * sizeof *t->vocab), t->merge = calloc(mcap, sizeof *t->merge);
    if (!t->piece || !t->piece_len || !t->special || !t->added || !t->vocab || !t->merge)
        return error_set(e, "%s: out of memory for %d tokens", file, t->n_vocab);
    memset(t->vocab, 0xff, vcap * sizeof *t->vocab);
    t->vocab_mask = vcap - 1, t->merge_mask = mcap - 1;
    for (int pass = 0, k = 0; pass < 2; pass++) { /* the vocabulary first, so that added tokens win */
        const cJSON *list = pass ? added : vocab;
        cJSON_ArrayForEach(v, list) {
            const char *text = pass ? json_str(v, "content") : v->string;
            id = pass ? json_get(v, "id")->valueint : v->valueint;
            free(t->piece[id]);
            if (!(t->piece[id] = strdup(text))) return error_set(e, "%s: out of memory", file);
            t->piece_len[id] = (int)strlen(text);
            t->vocab[vocab_slot(t, text, strlen(text))] = id;
            if (!pass) continue;
            t->special[id] = (unsigned char)json_bool(v, "special", 0);
            t->added[k] = (AddedToken){strdup(text), t->piece_len[id], id, json_bool(v, "normalized", 0)};
            if (!t->added[k++].text) return error_set(e, "%s: out of memory", file);
        }
    }
    const char *unk = json_str(model, "unk_token");
    t->unk_id = unk ? vocab_find(t, unk, strlen(unk)) : -1;
    t->ignore_merges = json_bool(model, "ignore_merges", 0);

    int rank = 0; /* merges: "left right" strings (older files) or ["left", "right"] pairs (newer ones) */
    cJSON_ArrayForEach(v, merges) {
        char both[1024];
        const char *l = NULL, *r = NULL;
        size_t nl = 0, nr;
        if (cJSON_IsString(v) && (r = strchr(v->valuestring, ' '))) l = v->valuestring, nl = (size_t)(r++ - l);
        else if (cJSON_GetArraySize(v) == 2 && cJSON_IsString(v->child) && cJSON_IsString(v->child->next))
            l = v->child->valuestring, r = v->child->next->valuestring, nl = strlen(l);
        if (!l || nl + (nr = strlen(r)) >= sizeof both)
            return error_set(e, "%s: model.merges[%d]: expected \"left right\" or [left, right]", file, rank);
        memcpy(both, l, nl), memcpy(both + nl, r, nr + 1);
        int a = vocab_find(t, l, nl), b = vocab_find(t, r, nr), ab = vocab_find(t, both, nl + nr);
        if (a < 0 || b < 0 || ab < 0)
            return error_set(e, "%s: model.merges[%d]: \"%.*s\" is not in model.vocab", file, rank,
                             (int)(a < 0 ? nl : b < 0 ? nr : nl + nr), a < 0 ? l : b < 0 ? r : both);
        uint64_t key = pair_key(a, b); /* a pair listed twice keeps its last rank, as in HF */
        t->merge[merge_slot(t, key)] = (Merge){key, rank++, ab};
    }
    if (load_pre_tokenizer(t, json_get(root, "pre_tokenizer"), file, e)) return -1;

    qsort(t->added, (size_t)t->n_added, sizeof *t->added, cmp_added);
    for (int c = 0, i = 0; c < 2; c++) /* where each (class, first byte) begins in the sorted list */
        for (int b = 0; b <= 256; b++) {
            while (i < t->n_added && t->added[i].normalized == c && (b == 256 || (uint8_t)t->added[i].text[0] < b))
                i++;
            t->added_first[c][b] = i;
        }
    return 0;
}

/* The byte-level alphabet, each byte's token, and what every token decodes to. */
static int build_bytes(Tokenizer *t, const char *file, Error *e) {
    for (int c = 0; c < 324; c++) t->cp_byte[c] = -1;
    for (int b = 0, extra = 0; b < 256; b++) {
        char s[2];
        t->byte_cp[b] = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE ? b : 256 + extra++;
        t->cp_byte[t->byte_cp[b]] = b;
        t->byte_id[b] = vocab_find(t, s, (size_t)utf8_put(s, t->byte_cp[b]));
    }
    size_t total = 0, k = 0;
    for (int id = 0; id < t->n_vocab; id++) total += (size_t)t->piece_len[id];
    t->bytes = malloc(total + 1), t->bytes_off = malloc(((size_t)t->n_vocab + 1) * sizeof *t->bytes_off);
    if (!t->bytes || !t->bytes_off) return error_set(e, "%s: out of memory", file);
    for (int id = 0; id < t->n_vocab; id++) {
        const unsigned char *p = (const unsigned char *)t->piece[id];
        int n = t->piece_len[id], ok = 1;
        t->bytes_off[id] = k;
        for (int i = 0, len; i < n && ok; i += len) { /* all characters in the alphabet: map them */
            len = utf8_len(p + i, (size_t)(n - i));
            int cp = len == 1 ? p[i] : len == 2 ? (p[i] & 0x1F) << 6 | (p[i + 1] & 0x3F) : 999;
            if ((ok = cp < 324 && t->cp_byte[cp] >= 0)) t->bytes[k++] = (char)t->cp_byte[cp];
        }
        if (!ok) k = t->bytes_off[id], memcpy(t->bytes + k, p, (size_t)n), k += (size_t)n; /* else copy */
    }
    t->bytes_off[t->n_vocab] = k;
    return 0;
}

/* bos_token and eos_token from tokenizer_config.json if there is one (a string or {"content": ...}),
 * else DeepSeek's names. */
static int load_config(Tokenizer *t, const char *dir, Error *e) {
    const char *keys[2] = {"bos_token", "eos_token"};
    const char *names[2] = {"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"};
    int *ids[2] = {&t->bos_id, &t->eos_id};
    char path[4200];
    struct stat st;
    cJSON *cfg = NULL;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (stat(path, &st) == 0) {
        char *text = read_file(path, NULL, e);
        if (!text) return -1;
        cfg = cJSON_Parse(text);
        free(text);
        if (!cfg) return error_set(e, "%s: not valid JSON", path);
    }
    for (int i = 0; i < 2; i++) {
        const cJSON *v = json_get(cfg, keys[i]);
        const char *s = cJSON_IsString(v) ? v->valuestring : json_str(v, "content");
        *ids[i] = s ? tokenizer_token_id(t, s) : -1;
        if (*ids[i] < 0) *ids[i] = tokenizer_token_id(t, names[i]);
    }
    cJSON_Delete(cfg);
    return 0;
}

int tokenizer_load(Tokenizer **out, const char *path, Error *e) {
    char file[4200], dir[4096];
    struct stat st;
    *out = NULL;
    if (strlen(path) >= sizeof dir) return error_set(e, "%s: path too long", path);
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(dir, sizeof dir, "%s", path);
        snprintf(file, sizeof file, "%s/tokenizer.json", path);
    } else {
        const char *slash = strrchr(path, '/');
        snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
        snprintf(file, sizeof file, "%s", path);
    }
    char *text = read_file(file, NULL, e);
    if (!text) return -1;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root) return error_set(e, "%s: not valid JSON", file);
    Tokenizer *t = calloc(1, sizeof *t);
    int rc = t ? load_json(t, root, file, e) : error_set(e, "%s: out of memory", file);
    cJSON_Delete(root);
    if (rc || build_bytes(t, file, e) || load_config(t, dir, e)) return tokenizer_free(t), -1;
    *out = t;
    return 0;
}

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    for (int i = 0; t->piece && i < t->n_vocab; i++) free(t->piece[i]);
    for (int i = 0; t->added && i < t->n_added; i++) free(t->added[i].text);
    for (int i = 0; i < t->n_split; i++) pcre2_code_free(t->split[i]);
    free(t->piece), free(t->piece_len), free(t->bytes), free(t->bytes_off), free(t->special);
    free(t->vocab), free(t->merge), free(t->added), free(t);
}

/* ------------------------------------------------------------------------- pre-tokenization */

typedef struct { int off, len, raw; } Span;    /* a piece text[off .. off + len); raw: not UTF-8 */
typedef struct { int id, prev, next, alive; } Sym; /* a BPE symbol, in a linked list */
typedef struct { int rank, pos, id; } Cand;    /* a candidate merge of sym[pos] with its right side */

typedef struct { /* the scratch space of one encode call */
    Span *span[2];
    size_t n_span[2], cap_span[2];
    Sym *sym;
    Cand *heap;
    size_t cap_sym, cap_heap, n_heap;
    int *ids;
    size_t n_ids, cap_ids;
    pcre2_match_data *md;
} Work;

static int push_span(Work *w, int k, int off, int len, int raw, Error *e) {
    if (grow(&w->span[k], &w->cap_span[k], w->n_span[k] + 1, sizeof(Span)))
        return error_set(e, "tokenizer: out of memory");
    w->span[k][w->n_span[k]++] = (Span){off, len, raw};
    return 0;
}

/* Appends to list k the pieces of span s of text: each regex match and each gap between them.
 * The regex sees only the span, so its lookarounds stop at the span's ends, as in HF. */
static int split_span(const pcre2_code *re, Work *w, int k, const char *text, Span s, Error *e) {
    const unsigned char *p = (const unsigned char *)text + s.off;
    size_t n = (size_t)s.len, pos = 0, prev = 0;
    while (pos < n) {
        int rc = pcre2_match(re, p, n, pos, PCRE2_NO_UTF_CHECK, w->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) return error_set(e, "tokenizer: pre_tokenizer regex failed with PCRE2 error %d", rc);
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(w->md);
        if (ov[1] == ov[0]) { /* an empty match splits nothing: step over one character */
            pos = ov[0] + (ov[0] < n ? (size_t)utf8_len(p + ov[0], n - ov[0]) : 1);
            continue;
        }
        if ((ov[0] > prev && push_span(w, k, s.off + (int)prev, (int)(ov[0] - prev), 0, e)) ||
            push_span(w, k, s.off + (int)ov[0], (int)(ov[1] - ov[0]), 0, e))
            return -1;
        prev = pos = ov[1];
    }
    return prev < n ? push_span(w, k, s.off + (int)prev, (int)(n - prev), 0, e) : 0;
}

/* ------------------------------------------------------------------------------ BPE merges */

static int cand_less(Cand a, Cand b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }

static void heap_push(Work *w, Cand c) { /* the caller has made room */
    size_t i = w->n_heap++;
    for (; i > 0 && cand_less(c, w->heap[(i - 1) / 2]); i = (i - 1) / 2) w->heap[i] = w->heap[(i - 1) / 2];
    w->heap[i] = c;
}

static Cand heap_pop(Work *w) {
    Cand top = w->heap[0], last = w->heap[--w->n_heap];
    size_t i = 0, n = w->n_heap;
    for (size_t c; (c = 2 * i + 1) < n; i = c) {
        if (c + 1 < n && cand_less(w->heap[c + 1], w->heap[c])) c++;
        if (!cand_less(w->heap[c], last)) break;
        w->heap[i] = w->heap[c];
    }
    if (n) w->heap[i] = last;
    return top;
}

static void push_pair(const Tokenizer *t, Work *w, int pos) { /* queue sym[pos] + its right side */
    int r = w->sym[pos].next;
    const Merge *m = r >= 0 ? merge_find(t, w->sym[pos].id, w->sym[r].id) : NULL;
    if (m) heap_push(w, (Cand){m->rank, pos, m->id});
}

/* Appends the ids of one piece p [n bytes]. As HF's Word::merge_all: a min-heap of candidate
 * merges ordered by (rank, position); a candidate whose symbol is gone, or whose pair now makes
 * another token, is stale and skipped; each merge queues the pairs it forms with its neighbours. */
static int bpe(const Tokenizer *t, Work *w, const unsigned char *p, int n, Error *e) {
    size_t m = (size_t)n;
    if (grow(&w->sym, &w->cap_sym, m, sizeof(Sym)) || grow(&w->ids, &w->cap_ids, w->n_ids + m, sizeof(int)) ||
        grow(&w->heap, &w->cap_heap, 3 * m, sizeof(Cand))) /* n - 1 pairs, then at most 2 per merge */
        return error_set(e, "tokenizer: out of memory");
    for (int i = 0; i < n; i++) {
        int id = t->byte_id[p[i]] >= 0 ? t->byte_id[p[i]] : t->unk_id;
        if (id < 0)
            return error_set(e, "tokenizer: byte 0x%02x has no token in model.vocab and there is no unk_token", p[i]);
        w->sym[i] = (Sym){id, i - 1, i + 1 < n ? i + 1 : -1, 1};
    }
    if (t->ignore_merges && n > 1 && n < 256) { /* a piece that is a token skips the merges */
        char s[512];
        int k = 0, id;
        for (int i = 0; i < n; i++) k += utf8_put(s + k, t->byte_cp[p[i]]);
        if ((id = vocab_find(t, s, (size_t)k)) >= 0) return w->ids[w->n_ids++] = id, 0;
    }
    w->n_heap = 0;
    for (int i = 0; i + 1 < n; i++) push_pair(t, w, i);
    while (w->n_heap > 0) {
        Cand c = heap_pop(w);
        Sym *s = &w->sym[c.pos];
        if (!s->alive || s->next < 0) continue;
        Sym *r = &w->sym[s->next];
        const Merge *m = merge_find(t, s->id, r->id);
        if (!m || m->id != c.id) continue; /* stale */
        s->id = c.id, s->next = r->next, r->alive = 0;
        if (s->next >= 0) w->sym[s->next].prev = c.pos;
        if (s->prev >= 0) push_pair(t, w, s->prev);
        push_pair(t, w, c.pos);
    }
    for (int i = 0; i >= 0; i = w->sym[i].next) w->ids[w->n_ids++] = w->sym[i].id;
    return 0;
}

/* ----------------------------------------------------------------------------------- encode */

/* Text free of added tokens: runs of valid UTF-8 and of other bytes, split by each regex in turn
 * (ping-ponging between the two span lists), then BPE on each piece. */
static int encode_text(const Tokenizer *t, Work *w, const char *s, size_t n, Error *e) {
    const unsigned char *u = (const unsigned char *)s;
    int k = 0, len;
    w->n_span[0] = 0;
    for (size_t i = 0, j; i < n; i = j) {
        int raw = utf8_len(u + i, n - i) <= 0;
        for (j = i; j < n && ((len = utf8_len(u + j, n - j)) <= 0) == raw;) j += raw ? 1 : (size_t)len;
        if (push_span(w, 0, (int)i, (int)(j - i), raw, e)) return -1;
    }
    for (int step = 0; step < t->n_split; step++, k ^= 1) {
        w->n_span[k ^ 1] = 0;
        for (size_t i = 0; i < w->n_span[k]; i++) {
            Span sp = w->span[k][i];
            if (sp.raw ? push_span(w, k ^ 1, sp.off, sp.len, 1, e) : split_span(t->split[step], w, k ^ 1, s, sp, e))
                return -1;
        }
    }
    for (size_t i = 0; i < w->n_span[k]; i++)
        if (bpe(t, w, u + w->span[k][i].off, w->span[k][i].len, e)) return -1;
    return 0;
}

/* Cuts out the added tokens of class cls (0: "normalized": false, 1: true), leftmost first and
 * longest first, and hands the text between them to the next class, and at last to encode_text. */
static int encode_added(const Tokenizer *t, Work *w, const char *s, size_t n, int cls, Error *e) {
    if (cls == 2) return encode_text(t, w, s, n, e);
    for (size_t i = 0; i < n; i++) {
        int b = (unsigned char)s[i];
        for (int k = t->added_first[cls][b]; k < t->added_first[cls][b + 1]; k++) {
            const AddedToken *a = &t->added[k];
            if ((size_t)a->len > n - i || memcmp(s + i, a->text, (size_t)a->len) != 0) continue;
            if (encode_added(t, w, s, i, cls + 1, e)) return -1;
            if (grow(&w->ids, &w->cap_ids, w->n_ids + 1, sizeof(int))) return error_set(e, "tokenizer: out of memory");
            w->ids[w->n_ids++] = a->id;
            s += i + (size_t)a->len, n -= i + (size_t)a->len;
            i = (size_t)-1; /* go on with the rest, from its start (i++ wraps to 0) */
            break;
        }
    }
    return encode_added(t, w, s, n, cls + 1, e);
}

int tokenizer_encode(const Tokenizer *t, const char *text, size_t n, int **ids, int *n_ids, Error *e) {
    Work w = {0};
    *ids = NULL, *n_ids = 0;
    if (n > INT32_MAX / 4) return error_set(e, "tokenizer: a text of %zu bytes is too long (max %d)", n, INT32_MAX / 4);
    w.md = pcre2_match_data_create(1, NULL);
    int rc = w.md ? encode_added(t, &w, text, n, 0, e) : error_set(e, "tokenizer: out of memory");
    pcre2_match_data_free(w.md);
    free(w.span[0]), free(w.span[1]), free(w.sym), free(w.heap);
    if (rc) return free(w.ids), -1;
    *ids = w.ids ? w.ids : malloc(sizeof(int)), *n_ids = (int)w.n_ids;
    return *ids ? 0 : error_set(e, "tokenizer: out of memory");
}

/* ----------------------------------------------------------------------------------- decode */

const char *tokenizer_token_bytes(const Tokenizer *t, int id, size_t *n) {
    if (id < 0 || id >= t->n_vocab) return *n = 0, "";
    *n = t->bytes_off[id + 1] - t->bytes_off[id];
    return t->bytes + t->bytes_off[id];
}

int tokenizer_decode(const Tokenizer *t, const int *ids, int n, char **text, size_t *n_text, Error *e) {
    size_t total = 0, k = 0, len;
    *text = NULL, *n_text = 0;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab || !t->piece[ids[i]])
            return error_set(e, "tokenizer: decode: id %d at position %d has no token (vocabulary size %d)", ids[i], i,
                             t->n_vocab);
        tokenizer_token_bytes(t, ids[i], &len), total += len;
    }
    if (!(*text = malloc(total + 1))) return error_set(e, "tokenizer: out of memory");
    for (int i = 0; i < n; i++) {
        const char *b = tokenizer_token_bytes(t, ids[i], &len);
        memcpy(*text + k, b, len), k += len;
    }
    (*text)[k] = 0, *n_text = k;
    return 0;
}

size_t tokenizer_stream_push(TokenizerStream *s, char *out, const char *in, size_t n) {
    size_t total = (size_t)s->n_held, cut;
    memcpy(out, s->held, total);
    if (n) memcpy(out + total, in, n), total += n;
    cut = total; /* hold back the last character if it is a valid start still missing bytes */
    for (size_t j = total; j > 0 && total - j < 3;) {
        unsigned char c = (unsigned char)out[--j];
        if ((c & 0xC0) == 0x80) continue; /* a continuation byte: look further back */
        if (utf8_len((const unsigned char *)out + j, total - j) == -1) cut = j;
        break;
    }
    s->n_held = (int)(total - cut);
    memcpy(s->held, out + cut, total - cut);
    return cut;
}

size_t tokenizer_stream_flush(TokenizerStream *s, char *out) {
    size_t n = (size_t)s->n_held;
    memcpy(out, s->held, n);
    s->n_held = 0;
    return n;
}

/* ---------------------------------------------------------------------------------- lookups */

const char *tokenizer_piece(const Tokenizer *t, int id) { return id >= 0 && id < t->n_vocab ? t->piece[id] : NULL; }
int tokenizer_token_id(const Tokenizer *t, const char *piece) { return vocab_find(t, piece, strlen(piece)); }
int tokenizer_vocab_size(const Tokenizer *t) { return t->n_vocab; }
int tokenizer_bos_id(const Tokenizer *t) { return t->bos_id; }
int tokenizer_eos_id(const Tokenizer *t) { return t->eos_id; }
int tokenizer_is_special(const Tokenizer *t, int id) { return id >= 0 && id < t->n_vocab && t->special[id]; }
