/* generate.c - text generation: the chat prompt, plain decoding, and speculative decoding with the
 * MTP module (DeepSeek-V3 report, 2.2 and 5.4.3).
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
 */
#include "generate.h"

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
    size_t n;
    char *text = read_file(path, &n, NULL);
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

char *prompt_render(int chat, ChatFormat f, const Tokenizer *tok, const char *system, const char *user) {
    int bos_id = tokenizer_bos_id(tok);
    const char *bos = bos_id >= 0 && tokenizer_piece(tok, bos_id) ? tokenizer_piece(tok, bos_id) : "";
    const char *sys = system ? system : "";
    size_t len = strlen(bos) + strlen(sys) + strlen(user) + 64;
    char *text = malloc(len);
    if (!chat) snprintf(text, len, "%s%s", bos, user);
    else if (f == CHAT_V2) snprintf(text, len, "%s%s%sUser: %s\n\nAssistant:", bos, sys, system ? "\n\n" : "", user);
    else snprintf(text, len, "%s%s%s%s%s%s", bos, sys, USER, user, ASSISTANT, f == CHAT_R1 ? "<think>\n" : "");
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

/* Records one token (and prints its text); returns 1 when generation must stop (EOS or N). */
static int emit(Gen *g, int id) {
    GenResult *r = g->r;
    r->ids[r->n++] = id;
    if (g->o->stream && !tokenizer_is_special(g->tok, id)) {
        char buf[512];
        size_t nb;
        const char *bytes = tokenizer_token_bytes(g->tok, id, &nb);
        for (size_t off = 0; off < nb; off += sizeof buf - 4) {
            size_t chunk = nb - off < sizeof buf - 4 ? nb - off : sizeof buf - 4;
            fwrite(buf, 1, tokenizer_stream_push(&g->stream, buf, bytes + off, chunk), stdout);
        }
        fflush(stdout);
    }
    r->stopped_at_eos = !g->o->ignore_eos && id == g->o->eos;
    return r->stopped_at_eos || r->n >= g->o->n_new;
}

/* The distribution plain decoding samples from: softmax(logits / temp), cut to the top-p nucleus
 * and renormalized; probs [vocab] (zeros outside the nucleus). */
static void target_probs(const Gen *g, const float *logits, float *probs) {
    int V = g->m->cfg.vocab_size;
    for (int i = 0; i < V; i++) probs[i] = logits[i] / g->o->temp;
    softmax(probs, V);
    int k = nucleus(probs, V, g->o->top_p, g->order);
    float mass = 0.0f;
    for (int i = 0; i < k; i++) mass += probs[g->order[i]];
    for (int i = k; i < V; i++) probs[g->order[i]] = 0.0f;
    for (int i = 0; i < k; i++) probs[g->order[i]] /= mass;
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

static int next_token(Gen *g, const float *logits) {
    return sample(logits, g->m->cfg.vocab_size, g->o->temp, g->o->top_p, &g->rng, g->probs, g->order);
}

/* Plain decoding after the prefill (logits: the prompt's last position): one forward per token. */
static int decode_plain(Gen *g, float *logits, int T, Error *e) {
    for (;;) {
        int next = next_token(g, logits);
        if (emit(g, next)) return 0;
        if (model_forward(g->m, g->s, &next, 1, T + g->r->n - 1, logits, 1, ATTN_ABSORBED, e)) return -1;
    }
}

/* Speculative decoding (the file's header comment). */
static int decode_mtp(Gen *g, float *logits, const int *prompt, int T, Error *e) {
    const Model *m = g->m;
    State *s = g->s;
    GenResult *r = g->r;
    int V = m->cfg.vocab_size, greedy = g->o->temp <= 0.0f, rc = -1;
    float *lv = malloc(sizeof(float) * 2 * V), *lq = malloc(sizeof(float) * V);
    int *nxt = malloc(sizeof(int) * (size_t)T);
    int pending = next_token(g, logits);
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
        else { target_probs(g, q_logits, g->q_probs); draft = draw(g, g->q_probs); }
        int verify[2] = {pending, draft};
        if (model_forward(m, s, verify, 2, pos, lv, 0, ATTN_ABSORBED, e)) goto out;
        r->drafted++;
        int keep, t1;
        if (greedy) {
            t1 = argmax(lv, V);
            keep = t1 == draft;
        } else {
            target_probs(g, lv, g->probs);
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
            int t2 = next_token(g, lv + V);
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
    if (T <= 0 || T + o->n_new > s->ctx)
        return error_set(e, "%d prompt tokens + %d new do not fit the %d-token cache (raise --ctx)", T, o->n_new, s->ctx);
    Gen g = {.m = m, .s = s, .tok = tok, .o = o, .r = r};
    r->ids = malloc(sizeof(int) * (size_t)(o->n_new + 1));
    g.probs = malloc(sizeof(float) * V);
    g.q_probs = malloc(sizeof(float) * V);
    g.order = malloc(sizeof(int) * V);
    float *logits = malloc(sizeof(float) * V);
    rng_seed(&g.rng, o->seed);
    int rc = 0;
    double t0 = now_s();
    if (o->n_new > 0) {
        rc = model_forward(m, s, prompt, T, 0, logits, 1, ATTN_ABSORBED, e);
        double t1 = now_s();
        r->prefill_s = t1 - t0;
        if (!rc) rc = o->mtp ? decode_mtp(&g, logits, prompt, T, e) : decode_plain(&g, logits, T, e);
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
