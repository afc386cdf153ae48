/* generate.c - text generation: the chat prompt, plain decoding, speculative decoding with the MTP
 * module (DeepSeek-V3 report, 2.2 and 5.4.3), and a conversation kept in one latent cache.
 *
 * Plain decoding: one prefill over the prompt, then one forward per new token (T = 1 through the
 * latent cache), each token drawn from softmax(logits / temp) cut to the top-p nucleus (ops.c).
 *
 * Speculative decoding with MTP. The main model's final hidden state h_i and the embedding of token
 * i+1 go through the MTP module, which predicts token i+2: a free draft. Each step feeds the pending
 * token and the draft through the main model in ONE forward (T = 2):
 *   logits[0] verifies the draft (is the token after `pending` the draft?)
 *   logits[1] is, if the draft is kept, the distribution of the token after it: one step saved.
 * Greedy: keep the draft when it is the main model's argmax. Sampling: keep it with probability
 * min(1, p(d) / q(d)); otherwise draw from max(0, p - q) renormalized (Leviathan et al. 2023), so
 * the tokens are distributed exactly as plain decoding's. matmul and the absorbed attention are
 * batch-invariant for T <= SMALL_BATCH (ops.h), so at temp 0 the tokens equal plain greedy's bit
 * for bit. A rejected draft's cache row is overwritten by the next step (rows past pos are unread).
 *
 * A chat session appends each turn to the same cache: the previous reply's last token and EOS, then
 * "<｜User｜>{turn}<｜Assistant｜>", so a reply costs only its own turn's prefill, never the history's.
 * (DeepSeek-R1's template drops past reasoning when it re-renders a conversation; a session keeps
 * it in the cache, since the cache cannot drop rows from the middle.)
 */
#include "generate.h"
#include "device.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * The chat prompt
 */
static const char *USER = "<｜User｜>", *ASSISTANT = "<｜Assistant｜>";

const char *chat_format_name(ChatFormat f) {
    return f == CHAT_R1 ? "DeepSeek-R1" : f == CHAT_V2 ? "DeepSeek-V2-Chat" : "DeepSeek-V3";
}

/* The chat_template string of tokenizer_config.json: a string, or a list of {name, template}
 * (HF's form for several templates), where "default" is the one apply_chat_template uses. */
static const char *template_of(const cJSON *root) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    if (cJSON_IsString(t)) return t->valuestring;
    const cJSON *it;
    cJSON_ArrayForEach(it, t) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(it, "name");
        const cJSON *tmpl = cJSON_GetObjectItemCaseSensitive(it, "template");
        if (cJSON_IsString(name) && !strcmp(name->valuestring, "default") && cJSON_IsString(tmpl))
            return tmpl->valuestring;
    }
    return NULL;
}

int chat_format_detect(ChatFormat *f, const char *dir, const Tokenizer *tok, Error *e) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    char *text = read_file(path, NULL, NULL);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    const char *tmpl = root ? template_of(root) : NULL;
    int has_tokens = tokenizer_token_id(tok, USER) >= 0 && tokenizer_token_id(tok, ASSISTANT) >= 0;
    int rc = 0;
    if (!tmpl) {
        *f = CHAT_V3;
        if (!has_tokens)
            rc = error_set(e, "--chat: %s has no chat_template and the tokenizer has no %s / %s tokens; "
                           "write the prompt yourself with -p", path, USER, ASSISTANT);
    } else if (strstr(tmpl, USER) && strstr(tmpl, ASSISTANT)) {
        /* R1 opens the reply with "<think>\n" in its generation prompt */
        *f = strstr(tmpl, "<｜Assistant｜><think>") ? CHAT_R1 : CHAT_V3;
        if (!has_tokens)
            rc = error_set(e, "--chat: %s writes %s / %s, which the tokenizer does not have as tokens", path, USER, ASSISTANT);
    } else if (strstr(tmpl, "'User: '") && strstr(tmpl, "'Assistant:'")) {
        *f = CHAT_V2;
    } else {
        rc = error_set(e, "--chat: the chat_template in %s is not one of DeepSeek's (V3, R1, V2-Chat); "
                       "write the prompt yourself with -p", path);
    }
    cJSON_Delete(root);
    return rc;
}

/* The spelling of a special token (BOS, EOS), "" when the tokenizer has none. */
static const char *piece_or_empty(const Tokenizer *tok, int id) {
    const char *p = id >= 0 ? tokenizer_piece(tok, id) : NULL;
    return p ? p : "";
}

/* One user turn and the generation prompt after it (the assistant's opening), written at p;
 * returns the bytes written. p must hold strlen(user) + 64. */
static int user_turn_and_prompt(char *p, ChatFormat f, const char *user) {
    if (f == CHAT_V2) return sprintf(p, "User: %s\n\nAssistant:", user);
    return sprintf(p, "%s%s%s%s", USER, user, ASSISTANT, f == CHAT_R1 ? "<think>\n" : "");
}

char *prompt_render(int chat, ChatFormat f, const Tokenizer *tok, const char *system, const char *user) {
    if (chat) return chat_render(f, tok, system, &user, 1);
    const char *bos = piece_or_empty(tok, tokenizer_bos_id(tok));
    size_t len = strlen(bos) + strlen(user) + 1;
    char *text = malloc(len);
    if (text) snprintf(text, len, "%s%s", bos, user);
    return text;
}

char *chat_render(ChatFormat f, const Tokenizer *tok, const char *system, const char *const *turns, int n) {
    const char *bos = piece_or_empty(tok, tokenizer_bos_id(tok)), *eos = piece_or_empty(tok, tokenizer_eos_id(tok));
    size_t len = strlen(bos) + (system ? strlen(system) : 0) + 64;
    for (int i = 0; i < n; i++) len += strlen(turns[i]) + strlen(eos) + 64;
    char *text = malloc(len), *p = text;
    if (!text) return NULL;
    p += sprintf(p, "%s%s%s", bos, system ? system : "", f == CHAT_V2 && system ? "\n\n" : "");
    for (int i = 0; i + 1 < n; i++) { /* the history: user and assistant turns, each reply closed */
        const char *t = turns[i];
        if (i % 2 == 0 && f == CHAT_V2) p += sprintf(p, "User: %s\n\n", t);
        else if (i % 2 == 0) p += sprintf(p, "%s%s", USER, t);
        else if (f == CHAT_V2) p += sprintf(p, "Assistant: %s%s", t, eos);
        else {
            const char *end_think = NULL;
            for (const char *q = t; f == CHAT_R1 && (q = strstr(q, "</think>")); q++) end_think = q;
            p += sprintf(p, "%s%s%s", ASSISTANT, end_think ? end_think + strlen("</think>") : t, eos);
        }
    }
    user_turn_and_prompt(p, f, turns[n - 1]);
    return text;
}

/* ---------------------------------------------------------------------------------------------
 * Decoding
 */
typedef struct {
    const Model *m;
    State *s;
    const Tokenizer *tok;
    const GenOptions *o;
    Rng rng;
    GenResult *r;
    float *probs, *q_probs;  /* [vocab] scratch */
    int *order;              /* [vocab] scratch */
    TokenizerStream stream;
} Gen;

/* Records one token (and prints its text); returns 1 when generation must stop: EOS, N tokens, an
 * interrupt (o->stop set, by run.c's SIGINT handler) or a closed stdout (`| head`). */
static int emit(Gen *g, int id) {
    GenResult *r = g->r;
    r->ids[r->n++] = id;
    if (g->o->stop && *g->o->stop) r->interrupted = 1;
    if (g->o->stream && !tokenizer_is_special(g->tok, id)) {
        char buf[512];
        size_t nb;
        const char *bytes = tokenizer_token_bytes(g->tok, id, &nb);
        for (size_t off = 0; off < nb; off += sizeof buf - 4) {
            size_t chunk = nb - off < sizeof buf - 4 ? nb - off : sizeof buf - 4;
            fwrite(buf, 1, tokenizer_stream_push(&g->stream, buf, bytes + off, chunk), stdout);
        }
        if (fflush(stdout) != 0 || ferror(stdout)) r->closed = 1; /* EPIPE: nobody reads any more */
    }
    r->stopped_at_eos = !g->o->ignore_eos && id == g->o->eos;
    return r->stopped_at_eos || r->n >= g->o->n_new || r->interrupted || r->closed;
}

/* The distribution plain decoding samples from: softmax(logits / temp), cut to the top-p nucleus
 * and renormalized; probs [vocab] (zeros outside the nucleus). */
/* The message when the nucleus's sort scratch (nucleus, sample: -1) cannot be allocated. */
static int sample_oom(const Gen *g, Error *e) {
    int V = g->m->cfg.vocab_size;
    return error_set(e, "sampling: out of memory (%zu bytes for the nucleus sort of %d tokens)", sizeof(int) * (size_t)V, V);
}

static int target_probs(const Gen *g, const float *logits, float *probs, Error *e) {
    int V = g->m->cfg.vocab_size;
    for (int i = 0; i < V; i++) probs[i] = logits[i] / g->o->temp;
    softmax(probs, V);
    int k = nucleus(probs, V, g->o->top_p, g->order);
    if (k < 0) return sample_oom(g, e);
    float mass = 0.0f;
    for (int i = 0; i < k; i++) mass += probs[g->order[i]];
    for (int i = k; i < V; i++) probs[g->order[i]] = 0.0f;
    for (int i = 0; i < k; i++) probs[g->order[i]] /= mass;
    return 0;
}

static int draw(Gen *g, const float *probs) {
    int V = g->m->cfg.vocab_size;
    float u = rng_uniform(&g->rng), acc = 0.0f;
    int last = 0;
    for (int i = 0; i < V; i++) {
        if (probs[i] <= 0.0f) continue;
        acc += probs[i];
        last = i;
        if (u < acc) return i;
    }
    return last;
}

/* The token drawn from logits, or -1 with e set. */
static int next_token(Gen *g, const float *logits, Error *e) {
    int t = sample(logits, g->m->cfg.vocab_size, g->o->temp, g->o->top_p, &g->rng, g->probs, g->order);
    return t < 0 ? sample_oom(g, e) : t;
}

/* Plain decoding after the prefill (logits: the prompt's last position; end: the position after
 * it): one forward per token. */
static int decode_plain(Gen *g, float *logits, int end, Error *e) {
    int next = next_token(g, logits, e);
    if (next < 0) return -1;
    for (;;) {
        if (emit(g, next)) return 0;
        int pos = end + g->r->n - 1;
        if (g->s->dev && g->o->temp <= 0.0f) { /* greedy on a GPU: only the token comes back */
            if (model_forward_argmax(g->m, g->s, &next, 1, pos, &next, e)) return -1;
            continue;
        }
        if (model_forward(g->m, g->s, &next, 1, pos, logits, 1, ATTN_ABSORBED, e)) return -1;
        if ((next = next_token(g, logits, e)) < 0) return -1;
    }
}

/* Speculative decoding (the file's header comment). */
static int decode_mtp(Gen *g, float *logits, const int *prompt, int T, Error *e) {
    const Model *m = g->m;
    State *s = g->s;
    GenResult *r = g->r;
    int V = m->cfg.vocab_size, greedy = g->o->temp <= 0.0f, rc = -1;
    float *lv = malloc(sizeof(float) * 2 * (size_t)V), *lq = malloc(sizeof(float) * (size_t)V);
    int *nxt = malloc(sizeof(int) * (size_t)T);
    if (!lv || !lq || !nxt) {
        error_set(e, "--mtp: out of memory for the draft's logits (%d tokens)", V);
        goto out;
    }
    int pending = next_token(g, logits, e);
    if (pending < 0) goto out;
    /* the MTP over the prompt: position i pairs h_i with t_{i+1} (the last with the pending token) */
    for (int i = 0; i < T; i++) nxt[i] = i + 1 < T ? prompt[i + 1] : pending;
    for (int done = 0; done < T; done += s->max_T) {
        int last = T - done < s->max_T ? T - done : s->max_T;
        if (mtp_forward(m, s, nxt + done, last, done, lq, 1, e)) goto out; /* the last chunk's last row counts */
    }
    const float *q_logits = lq;
    int pos = T;
    for (;;) {
        if (r->n + 1 >= g->o->n_new) { emit(g, pending); break; } /* no room for a draft */
        int draft;
        if (greedy) draft = argmax(q_logits, V);
        else {
            if (target_probs(g, q_logits, g->q_probs, e)) goto out;
            draft = draw(g, g->q_probs);
        }
        int verify[2] = {pending, draft};
        if (model_forward(m, s, verify, 2, pos, lv, 0, ATTN_ABSORBED, e)) goto out;
        r->drafted++;
        int keep, t1;
        if (greedy) {
            t1 = argmax(lv, V);
            keep = t1 == draft;
        } else {
            if (target_probs(g, lv, g->probs, e)) goto out;
            keep = rng_uniform(&g->rng) * g->q_probs[draft] < g->probs[draft];
            if (keep) t1 = draft;
            else {
                float mass = 0.0f;
                for (int i = 0; i < V; i++) mass += (g->probs[i] = fmaxf(g->probs[i] - g->q_probs[i], 0.0f));
                for (int i = 0; i < V; i++) g->probs[i] /= mass;
                t1 = draw(g, g->probs);
            }
        }
        if (emit(g, pending)) break;
        if (keep) {
            r->accepted++;
            if (emit(g, draft)) break;
            int t2 = next_token(g, lv + V, e);
            if (t2 < 0) goto out;
            int two[2] = {draft, t2};
            if (mtp_forward(m, s, two, 2, pos, lq, 1, e)) goto out;
            q_logits = lq;
            pos += 2;
            pending = t2;
        } else {
            if (mtp_forward(m, s, &t1, 1, pos, lq, 1, e)) goto out;
            q_logits = lq;
            pos += 1;
            pending = t1;
        }
    }
    rc = 0;
out:
    free(lv); free(lq); free(nxt);
    return rc;
}

int generate(const Model *m, State *s, const Tokenizer *tok, const int *prompt, int T, const GenOptions *o,
             GenResult *r, Error *e) {
    int V = m->cfg.vocab_size;
    memset(r, 0, sizeof *r);
    if (o->mtp && !m->has_mtp) return error_set(e, "--mtp: the checkpoint has no MTP module");
    if (o->stream && !tok) return error_set(e, "streaming text needs a tokenizer");
    if (o->mtp && o->pos0) return error_set(e, "--mtp: speculative decoding starts at position 0");
    if (T <= 0 || o->pos0 < 0 || o->n_new < 0 || (int64_t)o->pos0 + T + o->n_new > s->ctx)
        return error_set(e, "%d prompt tokens + %d new after position %d do not fit the %d-token cache (raise --ctx)",
                         T, o->n_new, o->pos0, s->ctx);
    Gen g = {.m = m, .s = s, .tok = tok, .o = o, .r = r};
    r->ids = malloc(sizeof(int) * ((size_t)o->n_new + 1));
    g.probs = malloc(sizeof(float) * (size_t)V);
    g.q_probs = malloc(sizeof(float) * (size_t)V);
    g.order = malloc(sizeof(int) * (size_t)V);
    float *logits = malloc(sizeof(float) * (size_t)V);
    rng_seed(&g.rng, o->seed);
    int rc = 0;
    if (!r->ids || !g.probs || !g.q_probs || !g.order || !logits) {
        free(g.probs); free(g.q_probs); free(g.order); free(logits); free(r->ids);
        r->ids = NULL;
        return error_set(e, "out of memory for %d new tokens and the %d-token sampling scratch", o->n_new, V);
    }
    double t0 = now_s();
    if (o->n_new > 0) {
        rc = model_forward(m, s, prompt, T, o->pos0, logits, 1, ATTN_ABSORBED, e);
        double t1 = now_s();
        r->prefill_s = t1 - t0;
        if (!rc) rc = o->mtp ? decode_mtp(&g, logits, prompt, T, e) : decode_plain(&g, logits, o->pos0 + T, e);
        r->decode_s = now_s() - t1;
    }
    if (o->stream) {
        char buf[8];
        fwrite(buf, 1, tokenizer_stream_flush(&g.stream, buf), stdout);
        fflush(stdout);
    }
    free(g.probs); free(g.q_probs); free(g.order); free(logits);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * A conversation in one cache
 */

/* One user turn from `in`: a line without its newline; a line ending in '\\' continues on the next.
 * NULL at EOF, or with e set when the turn passes PROMPT_MAX_BYTES or memory runs out. */
static char *read_turn(FILE *in, int turn, Error *e) {
    size_t cap = 256, n = 0;
    char *buf = malloc(cap);
    int c, got = 0;
    if (!buf) return error_set(e, "turn %d: out of memory", turn), NULL;
    while ((c = fgetc(in)) != EOF) {
        got = 1;
        if (c == '\n') {
            if (n && buf[n - 1] == '\\') { buf[n - 1] = '\n'; continue; }
            break;
        }
        if (n + 2 > cap) {
            char *bigger = cap * 2 <= PROMPT_MAX_BYTES + 2 ? realloc(buf, cap * 2) : NULL;
            if (!bigger) {
                if (cap * 2 > PROMPT_MAX_BYTES + 2)
                    error_set(e, "turn %d: over the limit of %u bytes (1 MiB) for a prompt", turn, PROMPT_MAX_BYTES);
                else error_set(e, "turn %d: out of memory after %zu bytes", turn, n);
                free(buf);
                return NULL;
            }
            buf = bigger;
            cap *= 2;
        }
        buf[n++] = (char)c;
    }
    if (!got) { free(buf); return NULL; }
    buf[n] = 0;
    return buf;
}

int chat_session(const Model *m, State *s, const Tokenizer *tok, ChatFormat f, const char *system, FILE *in,
                 FILE *out, const GenOptions *o, Error *e) {
    if (o->mtp) return error_set(e, "--mtp is not available in a chat session");
    if (o->n_new < 1) return error_set(e, "a chat reply needs -n of at least 1");
    int eos = tokenizer_eos_id(tok), pos = 0, carry = -1, rc = 0, turn = 0;
    char *line;
    e->msg[0] = 0;
    while (!rc && (line = read_turn(in, turn + 1, e))) {
        if (!*line) { free(line); continue; }
        /* the first turn: the template from the start; later ones: the previous reply's last token
         * (emitted, not yet fed), EOS if the reply did not end with it, then the next user turn */
        char *text;
        if (turn == 0) text = chat_render(f, tok, system, (const char *const *)&line, 1);
        else if ((text = malloc(strlen(line) + 64))) user_turn_and_prompt(text, f, line);
        int *enc, n_enc;
        rc = text ? tokenizer_encode(tok, text, strlen(text), &enc, &n_enc, e) : error_set(e, "turn %d: out of memory", turn + 1);
        free(text);
        free(line);
        if (rc) break;
        int *ids = malloc(sizeof(int) * ((size_t)n_enc + 2)), T = 0;
        if (!ids) {
            free(enc);
            rc = error_set(e, "turn %d: out of memory for %d tokens", turn + 1, n_enc);
            break;
        }
        if (carry >= 0) ids[T++] = carry;
        if (carry >= 0 && carry != eos && eos >= 0) ids[T++] = eos;
        memcpy(ids + T, enc, sizeof(int) * (size_t)n_enc);
        T += n_enc;
        free(enc);
        GenOptions turn_o = *o;
        turn_o.pos0 = pos;
        GenResult r;
        if ((int64_t)pos + T + o->n_new > s->ctx)
            rc = error_set(e, "turn %d: the conversation (%d tokens so far, %d more, up to %d new) fills the %d-token "
                           "context (raise --ctx)", turn + 1, pos, T, o->n_new, s->ctx);
        else rc = generate(m, s, tok, ids, T, &turn_o, &r, e);
        free(ids);
        if (rc) break;
        if (o->stream) fputc('\n', stdout), fflush(stdout);
        else {
            for (int i = 0; i < r.n; i++) fprintf(out, "%s%d", i ? " " : "", r.ids[i]);
            fputc('\n', out);
            fflush(out);
        }
        if (r.interrupted || r.closed || ferror(out)) { /* Ctrl-C or a closed stdout: the conversation ends here */
            if (r.interrupted)
                fprintf(stderr, "run chat: interrupted: %d tokens of turn %d's reply in %.3f s (%.1f tok/s)\n", r.n, turn + 1,
                        r.decode_s, r.n > 1 ? (r.n - 1) / r.decode_s : 0.0);
            free(r.ids);
            break;
        }
        pos += T + r.n - 1; /* every emitted token but the last is in the cache */
        carry = r.n ? r.ids[r.n - 1] : -1;
        free(r.ids);
        turn++;
    }
    return rc ? rc : e->msg[0] ? -1 : 0; /* read_turn's error: a turn too long, or out of memory */
}
