/* tokenizer.h - HF tokenizer.json byte-level BPE (DeepSeek-V3's tokenizer), encode and decode.
 *
 * Tokenizer        loaded from tokenizer.json (a directory holding it is enough); read-only after
 *                  loading, so one Tokenizer may be shared by threads.
 * encode           text bytes -> token ids, as HF `tokenizer.encode(text, add_special_tokens=False)`:
 *                  no BOS is added; callers prepend tokenizer_bos_id() themselves.
 * decode           token ids -> bytes. Any byte string, valid UTF-8 or not, round-trips:
 *                  decode(encode(s)) == s.
 * TokenizerStream  holds back an incomplete UTF-8 character between tokens, for printing text
 *                  while it is generated.
 * See tokenizer.c for the algorithm.
 */
#ifndef TOKENIZER_H
#define TOKENIZER_H

#include <stddef.h>

#include "ops.h"

typedef struct Tokenizer Tokenizer;

/* Loads path (a tokenizer.json, or a directory that holds one). The BOS/EOS ids come from
 * tokenizer_config.json beside it when present, else from DeepSeek's token names. On failure
 * returns -1, *t = NULL, and e names the file and field. */
int tokenizer_load(Tokenizer **t, const char *path, Error *e);
void tokenizer_free(Tokenizer *t);

/* ids = encode(text [n bytes]); *ids is malloc'd (caller frees), *n_ids its length (0 for n = 0).
 * Fails only when a byte has no token in the vocabulary (and there is no unk_token) or on
 * memory/regex errors. */
int tokenizer_encode(const Tokenizer *t, const char *text, size_t n, int **ids, int *n_ids, Error *e);

/* *text = the bytes of ids [n], malloc'd and NUL-terminated (*n_text excludes the NUL).
 * Fails on an id with no token (outside [0, vocab size) or a gap in the vocabulary). */
int tokenizer_decode(const Tokenizer *t, const int *ids, int n, char **text, size_t *n_text, Error *e);

/* The bytes token id decodes to (*n of them, not NUL-terminated); "" with *n = 0 when id has no
 * token, so a sampler that picks an id past the tokenizer's vocabulary prints nothing. */
const char *tokenizer_token_bytes(const Tokenizer *t, int id, size_t *n);

/* The token as spelled in tokenizer.json ("Ġthe" for " the"), or NULL when id has none. */
const char *tokenizer_piece(const Tokenizer *t, int id);

/* The id of a token spelled as in tokenizer.json ("<｜begin▁of▁sentence｜>", "Ġthe"), -1 if absent. */
int tokenizer_token_id(const Tokenizer *t, const char *piece);

int tokenizer_vocab_size(const Tokenizer *t); /* largest id + 1 (the model's may be larger) */
int tokenizer_bos_id(const Tokenizer *t);     /* -1 when unknown */
int tokenizer_eos_id(const Tokenizer *t);     /* -1 when unknown */
int tokenizer_is_special(const Tokenizer *t, int id); /* 1 for added tokens marked "special" */

/* Streaming output. Start from TokenizerStream s = {0}. push appends in [n bytes] to what the
 * stream holds back and writes to out every byte that can be printed now: complete UTF-8
 * characters and bytes that can never become one; only the start of a character that is still
 * missing bytes (at most 3) is kept. out must hold n + 4 bytes. Returns the count written.
 * flush writes what is held back (out holds 4 bytes) and empties the stream. */
typedef struct {
    unsigned char held[4];
    int n_held;
} TokenizerStream;
size_t tokenizer_stream_push(TokenizerStream *s, char *out, const char *in, size_t n);
size_t tokenizer_stream_flush(TokenizerStream *s, char *out);

#endif
