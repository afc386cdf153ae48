/* generate.h - text generation on top of model.c: the chat prompt, the sampling loop, and
 * speculative decoding with the MTP module as the draft model.
 *
 * ChatFormat   the prompt layouts of DeepSeek's chat templates, recognized in the checkpoint's
 *              tokenizer_config.json (so no Jinja engine is needed) and rendered by concatenation.
 * generate     prefill the prompt, then decode token by token (or two at a time with --mtp),
 *              optionally streaming the decoded text to stdout.
 */
#ifndef GENERATE_H
#define GENERATE_H

#include <signal.h>
#include <stdint.h>
#include <stdio.h>

#include "model.h"
#include "tokenizer.h"

/* One user turn, with an optional system prompt before it, as each template renders it:
 *   CHAT_V3  {bos}{system}<｜User｜>{user}<｜Assistant｜>                 DeepSeek-V3, R1-0528
 *   CHAT_R1  {bos}{system}<｜User｜>{user}<｜Assistant｜><think>\n        DeepSeek-R1
 *   CHAT_V2  {bos}{system}\n\nUser: {user}\n\nAssistant:                 DeepSeek-V2-Chat
 * (CHAT_V2 writes the "\n\n" after the system prompt only when there is one.) */
typedef enum { CHAT_V3, CHAT_R1, CHAT_V2 } ChatFormat;

/* Reads dir/tokenizer_config.json's chat_template and names its format. Without a template the
 * tokens decide: <｜User｜> and <｜Assistant｜> in the vocabulary mean CHAT_V3. A template of
 * another kind, or the V3/R1 format without those tokens, is an error naming the file. */
int chat_format_detect(ChatFormat *f, const char *dir, const Tokenizer *tok, Error *e);
const char *chat_format_name(ChatFormat f);

/* The prompt text, malloc'd: the chat layout above, or (chat = 0) BOS then user. system may be NULL. */
char *prompt_render(int chat, ChatFormat f, const Tokenizer *tok, const char *system, const char *user);

/* A whole conversation as the template renders it with the generation prompt: turns [n] alternate
 * user, assistant, user, ..., ending with a user turn (n odd). Earlier assistant turns are closed
 * with EOS: V3/R1 "<｜Assistant｜>{reply}<｜end▁of▁sentence｜>" (R1 drops a reply's text up to its
 * last "</think>", as its template does), V2 "Assistant: {reply}{eos}". malloc'd. */
char *chat_render(ChatFormat f, const Tokenizer *tok, const char *system, const char *const *turns, int n);

/* A prompt (-p, --system, a chat turn) longer than this is refused before it is encoded: 1 MiB of
 * text is ~250k tokens, past any context this program can hold on one machine. */
#define PROMPT_MAX_BYTES (1u << 20)

typedef struct {
    float temp, top_p;  /* temp 0: greedy; top_p 1: no nucleus cut */
    uint64_t seed;
    int n_new;          /* at most this many new tokens */
    int ignore_eos;     /* go on past the EOS token (HF's generate with eos_token_id=None) */
    int eos;            /* the EOS id, -1 for none */
    int mtp;            /* speculative decoding with the MTP module (m->has_mtp) */
    int stream;         /* print each token's text to stdout as it comes (needs a tokenizer) */
    int pos0;           /* the prompt's first position: 0, or where a conversation has got to */
    const volatile sig_atomic_t *stop; /* when set and nonzero, stop after the next token (Ctrl-C); may be NULL */
} GenOptions;

typedef struct {
    int *ids, n;                 /* the new tokens [n], malloc'd (free with free()) */
    int stopped_at_eos;
    int interrupted;             /* stopped because *o->stop was set */
    int closed;                  /* stopped because stdout is closed (EPIPE: the reader went away) */
    int drafted, accepted;       /* MTP drafts verified and kept */
    double prefill_s, decode_s;  /* wall time of the prompt's forward and of the rest */
} GenResult;

/* Continues prompt [T] (positions pos0..pos0+T-1 of s's cache, which must hold pos0 + T + n_new;
 * rows below pos0 are the conversation so far). The last emitted token is not fed back (the next
 * call's prompt starts with it). Same options and seed give the same tokens; with temp 0, mtp on or
 * off gives the same tokens too (mtp needs pos0 = 0). */
int generate(const Model *m, State *s, const Tokenizer *tok, const int *prompt, int T, const GenOptions *o,
             GenResult *r, Error *e);

/* A conversation read from `in`, one user turn per line (a line ending in a backslash continues),
 * until EOF: each reply is generated into the same cache, after the turns before it, with the
 * template's closing EOS and the next user turn appended (no re-encoding of the history). Replies
 * stream as text (o->stream) or, with o->stream = 0, are written to `out` as ids, one line each.
 * A turn that would not fit the cache is an error. o->mtp must be 0. */
int chat_session(const Model *m, State *s, const Tokenizer *tok, ChatFormat f, const char *system, FILE *in,
                 FILE *out, const GenOptions *o, Error *e);

#endif
