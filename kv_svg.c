/* kv_svg.c - the plot of `run kv --svg`: cache GB per sequence vs context (1K..128K tokens),
 * log-log, so every model is a straight line of slope 1 and the vertical gaps are the ratios of
 * bytes per token (kv.c). Plain SVG written with fprintf, one line and one label per model.
 */
#include "kv.h"

#include <errno.h>
#include <math.h>
#include <string.h>

typedef struct { double left, right, top, bottom, x0, x1, y0, y1; } Axes; /* pixels; log2 x, log10 y */
static double px(const Axes *a, double lx) { return a->left + (lx - a->x0) / (a->x1 - a->x0) * (a->right - a->left); }
static double py(const Axes *a, double ly) { return a->bottom - (ly - a->y0) / (a->y1 - a->y0) * (a->bottom - a->top); }

int kv_write_svg(const char *path, const KvModel *rows, int n, double bits, Error *e) {
    static const char *COLORS[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
    enum { MAX_ROWS = 64 };
    if (n < 1 || n > MAX_ROWS) return error_set(e, "%s: %d rows to plot, expected 1..%d", path, n, MAX_ROWS);
    Axes a = {70, 600, 50, 440, 10, 17, 0, 0}; /* x: 2^10 = 1K .. 2^17 = 128K tokens */
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; i++) {
        double g = kv_bytes_per_token(&rows[i], bits) / 1e9;
        if (!(g > 0)) return error_set(e, "%s: row %s has no cache to plot", path, rows[i].key);
        lo = fmin(lo, log10(g * 1024));
        hi = fmax(hi, log10(g * 131072));
    }
    a.y0 = floor(lo);
    a.y1 = ceil(hi);
    FILE *f = fopen(path, "w");
    if (!f) return error_set(e, "%s: cannot open for writing (%s)", path, strerror(errno));
    char b[32];
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"490\" font-family=\"sans-serif\" "
               "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
               "<text x=\"%.0f\" y=\"25\" font-size=\"15\">KV cache per sequence vs context, %s elements "
               "(written by ./run kv --svg)</text>\n", a.left, kv_bits_name(bits, b, sizeof b));
    for (int k = (int)a.x0; k <= (int)a.x1; k++)
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#ddd\"/>"
                   "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%dK</text>\n",
                px(&a, k), a.top, px(&a, k), a.bottom, px(&a, k), a.bottom + 18, 1 << (k - 10));
    for (int k = (int)a.y0; k <= (int)a.y1; k++)
        fprintf(f, "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                   "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
                a.left, py(&a, k), a.right, py(&a, k), a.left - 6, py(&a, k) + 4, pow(10, k));
    fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#444\"/>\n"
               "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">context length (tokens)</text>\n"
               "<text transform=\"translate(18,%.0f) rotate(-90)\" text-anchor=\"middle\">GB per sequence "
               "(1 GB = 1e9 bytes)</text>\n<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\" fill=\"#444\">"
               "solid: MLA, dashed: GQA, dotted: MHA</text>\n", a.left, a.top, a.right - a.left, a.bottom - a.top,
            (a.left + a.right) / 2, a.bottom + 40, (a.top + a.bottom) / 2, a.right, a.top - 8);
    /* The lines; then a label per line at its right end, sorted top to bottom and pushed apart. */
    double yend[MAX_ROWS];
    int order[MAX_ROWS];
    for (int i = 0; i < n; i++) {
        const char *dash = rows[i].kind == KV_MLA ? "none" : rows[i].kind == KV_GQA ? "8,4" : "2,3";
        double g = kv_bytes_per_token(&rows[i], bits) / 1e9;
        yend[i] = py(&a, log10(g * 131072));
        order[i] = i;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\" "
                   "stroke-dasharray=\"%s\"/>\n", px(&a, a.x0), py(&a, log10(g * 1024)), px(&a, a.x1), yend[i],
                COLORS[i % 10], dash);
    }
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && yend[order[j]] < yend[order[j - 1]]; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    double prev = -1e9;
    for (int i = 0; i < n; i++) {
        int r = order[i];
        double y = fmax(yend[r] + 4, prev + 14);
        prev = y;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>"
                   "<text x=\"%.1f\" y=\"%.1f\" fill=\"%s\">",
                a.right, yend[r], a.right + 8, y - 4, COLORS[r % 10], a.right + 10, y, COLORS[r % 10]);
        for (const char *c = rows[r].name; *c; c++) { /* names from config paths may hold & or < */
            if (*c == '&') fputs("&amp;", f);
            else if (*c == '<') fputs("&lt;", f);
            else fputc(*c, f);
        }
        fprintf(f, ", %s B/token</text>\n", kv_commas(kv_bytes_per_token(&rows[r], bits), b, sizeof b));
    }
    fprintf(f, "</svg>\n");
    if (ferror(f) | fclose(f)) return error_set(e, "%s: write failed (%s)", path, strerror(errno));
    return 0;
}
