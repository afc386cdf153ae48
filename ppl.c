/* ppl.c - the arithmetic of `run ppl`: -log softmax per prediction in double, and with a second
 * checkpoint the change in NLL and its expansion in the logit change (ppl.h has the math).
 */
#include "ppl.h"

#include "ops.h"

#include <math.h>

/* One prediction: l [V] (the first checkpoint's logits), l2 [V] or NULL (the second's), target y. */
static void ppl_add_prediction(PplSums *s, const float *l, const float *l2, int y, int V) {
    double mx = l[argmax(l, V)], z = 0;
    for (int v = 0; v < V; v++) z += exp((double)l[v] - mx);
    s->nll += log(z) + mx - l[y];
    if (!l2) return;
    /* one pass over the vocabulary: l2's normalizer, and E_p[delta], E_p[delta^2] under p = softmax(l) */
    double mx2 = l2[argmax(l2, V)], z2 = 0, e1 = 0, e2 = 0;
    for (int v = 0; v < V; v++) {
        double p = exp((double)l[v] - mx) / z, dl = (double)l2[v] - l[v];
        z2 += exp((double)l2[v] - mx2);
        e1 += p * dl;
        e2 += p * dl * dl;
    }
    s->nll2 += log(z2) + mx2 - l2[y];
    double f = e1 - ((double)l2[y] - l[y]);
    s->first += f;
    s->first_sq += f * f;
    s->second += (e2 - e1 * e1) / 2;
}

void ppl_add_window(PplSums *s, const float *logits, const float *logits2, const int *win, int W, int V) {
    for (int t = 0; t < W - 1; t++)
        ppl_add_prediction(s, logits + (size_t)t * V, logits2 ? logits2 + (size_t)t * V : NULL, win[t + 1], V);
}

void ppl_print(FILE *out, const PplSums *s, int n_win, int W, const char *compare) {
    double N = (double)n_win * (W - 1), mean = s->nll / N;
    fprintf(out, "%d windows of %d tokens ([BOS] + %d), %d predictions: mean NLL %.6f, perplexity %.4f\n", n_win,
            W, W - 1, n_win * (W - 1), mean, exp(mean));
    if (!compare) return;
    double mean2 = s->nll2 / N, f_mean = s->first / N, f_se = sqrt((s->first_sq / N - f_mean * f_mean) / N),
           s_mean = s->second / N;
    fprintf(out, "%s: mean NLL %.6f, perplexity %.4f; change %+.6f (%+.4f%% perplexity)\n", compare, mean2,
            exp(mean2), mean2 - mean, 100 * (exp(mean2 - mean) - 1));
    fprintf(out, "expansion in the logit change: first order %+.6f (standard error %.6f), second order %+.6f, "
            "sum %+.6f\n", f_mean, f_se, s_mean, f_mean + s_mean);
    fprintf(out, "predicted change: %+.6f +- %.6f (second order +- 2 standard errors of the first)\n", s_mean,
            2 * f_se);
}
