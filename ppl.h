/* ppl.h - perplexity, and how it changes between two checkpoints, from the logits of `run ppl`'s
 * windows (run.c loads the models and runs the forward passes; this file is the arithmetic).
 *
 * Windows. The held-out ids are cut into non-overlapping windows of W tokens, each
 * [BOS] + the next W-1 ids, as train/train.py evaluates the model with HF. One prefill over a window
 * gives logits [W, V]; row t predicts win[t+1], so a window holds W-1 predictions (the last row
 * predicts nothing). Per prediction, with y its target and l its logit row,
 *
 *     NLL = -log softmax(l)[y] = log sum_v exp(l_v - m) + m - l_y,   m = max_v l_v,
 *
 * in double (exp(l_v - m) <= 1 cannot overflow); perplexity = exp(mean NLL over all predictions).
 *
 * --compare. A second checkpoint (say the FP8 variant of the first) gives logits l2 on the same
 * windows. With delta = l2 - l (V values per prediction) and p = softmax(l), the change is
 *
 *     d = NLL2 - NLL = log E_p[exp(delta)] - delta_y
 *       = (E_p[delta] - delta_y) + Var_p(delta) / 2 + O(delta^3)
 *
 * (the cumulant expansion of log E_p exp(delta)). The first-order term averages to zero when the
 * logit change is noise unrelated to the target, so its mean is printed with its standard error,
 * sqrt((mean(f^2) - mean(f)^2) / N) over the N predictions; the second-order term is >= 0, the cost
 * to expect. notes/fp8.md section 7 has the bundled model's figures and what they say.
 */
#ifndef PPL_H
#define PPL_H

#include <stdio.h>

/* Running sums over predictions, in the order they are added (a window's rows in order, the windows
 * in order): the printed figures are bit-identical for the same windows. Zero-initialize. */
typedef struct {
    double nll;      /* sum of NLL under the first checkpoint */
    double nll2;     /* with --compare: sum of NLL2 */
    double first;    /* sum of f = E_p[delta] - delta_y */
    double first_sq; /* sum of f^2 (for the standard error) */
    double second;   /* sum of Var_p(delta) / 2 */
} PplSums;

/* Adds one window's W-1 predictions to s. logits [W, V] (row t predicts win[t+1]); logits2 [W, V]
 * the second checkpoint's on the same window, or NULL without --compare (then only s->nll moves);
 * win [W] the window's ids, each in 0 .. V-1. */
void ppl_add_window(PplSums *s, const float *logits, const float *logits2, const int *win, int W, int V);

/* The report of n_win windows of W tokens to out: one line (windows, predictions, mean NLL,
 * perplexity), and with compare (the second checkpoint's name; NULL: none) its mean NLL and
 * perplexity, the change, the expansion's two terms and the change they predict. */
void ppl_print(FILE *out, const PplSums *s, int n_win, int W, const char *compare);

#endif
