/* safetensors.c - mmap reader (one file or an HF checkpoint directory), writer, FP32 widening.
 *
 * A .safetensors file (https://huggingface.co/docs/safetensors):
 *
 *   [ N: u64 little-endian ][ N bytes of JSON header ][ data region .................. ]
 *     0                8                            8+N                        file size
 *
 *   header = {"__metadata__": {"key": "value", ...},                       (optional, strings only)
 *             "name": {"dtype": "BF16", "shape": [r, c], "data_offsets": [begin, end]}, ...}
 *
 * begin/end are byte offsets into the data region, end - begin = prod(shape) * dtype size, and the
 * elements are row-major, little-endian. A 0-d tensor has shape [] and one element.
 *
 * Reading maps each file read-only and makes every tensor a view into the mapping: opening the
 * 671B checkpoint costs its headers, not its 700 GB. Every number in the header is checked before
 * it is used to form a pointer, so a truncated or hostile file gives an error, never a bad read.
 *
 * Writing follows the safetensors library (safetensors/src/tensor.rs, `prepare`): the header is
 * padded with spaces to a multiple of 8, and tensors are laid out largest element size first, so
 * each one starts at a multiple of its element size and the data region has no holes (the Python
 * reader rejects files whose tensors do not cover the data region exactly). The file is written
 * under a temporary name and renamed into place when complete (outfile.h): a failed or killed
 * write leaves the previous file as it was.
 */
#include "safetensors.h"
#include "outfile.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* JSON numbers are doubles: integers above 2^53 cannot be represented exactly, so refuse them. */
static const double JSON_MAX_EXACT_INT = 9007199254740992.0;

/* A non-negative integer JSON number, or -1. */
static int64_t json_uint(const cJSON *j) {
    if (!cJSON_IsNumber(j)) return -1;
    double v = j->valuedouble;
    if (!(v >= 0 && v <= JSON_MAX_EXACT_INT) || (double)(int64_t)v != v) return -1;
    return (int64_t)v;
}

/* "[64, 32]" ("[]" for a scalar) into buf. */
static const char *shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
    return buf;
}

/* prod(shape), or -1 if a dimension is negative or the product overflows int64. */
static int64_t shape_numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] != 0 && n > INT64_MAX / shape[i]) return -1;
        n *= shape[i];
    }
    return n;
}

static char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* -------------------------------------------------------------------------------------------------
 * Reading one file: map it, parse its header, append its tensors to f->tensors (unsorted).
 */

/* Appends path to f->paths/maps/map_sizes, mapped read-only. */
static int map_file(StFile *f, const char *path, Error *e) {
    int k = f->n_files;
    size_t n = (size_t)k + 1;
    char **paths = realloc(f->paths, sizeof(char *) * n);
    if (paths) f->paths = paths;
    void **maps = realloc(f->maps, sizeof(void *) * n);
    if (maps) f->maps = maps;
    size_t *sizes = realloc(f->map_sizes, sizeof(size_t) * n);
    if (sizes) f->map_sizes = sizes;
    if (!paths || !maps || !sizes) return error_set(e, "%s: out of memory", path);

    int fd = open(path, O_RDONLY);
    if (fd < 0) return error_set(e, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return error_set(e, "%s: expected a regular .safetensors file", path);
    }
    size_t size = (size_t)st.st_size;
    if (size < 8) { /* also keeps us from mmapping 0 bytes, which fails */
        close(fd);
        return error_set(e, "%s: file is %zu bytes, shorter than the 8-byte header length", path,
                         size);
    }
    void *base = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd); /* the mapping stays valid without the descriptor */
    if (base == MAP_FAILED) return error_set(e, "%s: mmap failed: %s", path, strerror(errno));
    f->paths[k] = strdup(path);
    f->maps[k] = base;
    f->map_sizes[k] = size;
    f->n_files = k + 1; /* from here st_close unmaps it */
    if (!f->paths[k]) return error_set(e, "%s: out of memory", path);
    return 0;
}

/* Fills t from one header entry {"dtype", "shape", "data_offsets"}; data is the data region. */
static int parse_entry(StTensor *t, const cJSON *j, const char *path, const unsigned char *data,
                       size_t data_size, Error *e) {
    const char *name = j->string;
    if (!cJSON_IsObject(j))
        return error_set(e, "%s: tensor '%s': expected an object {dtype, shape, data_offsets}",
                         path, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(j, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(j, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(j, "data_offsets");
    if (!cJSON_IsString(dt))
        return error_set(e, "%s: tensor '%s': missing string \"dtype\"", path, name);
    if (!cJSON_IsArray(sh))
        return error_set(e, "%s: tensor '%s': missing array \"shape\"", path, name);
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2)
        return error_set(e, "%s: tensor '%s': missing \"data_offsets\" [begin, end]", path, name);

    int dtype = dtype_from_name(dt->valuestring);
    if (dtype < 0)
        return error_set(e,
                         "%s: tensor '%s': unknown dtype \"%s\" (expected F32, F16, BF16, F8_E4M3, "
                         "F8_E5M2, F64, I8, U8, I16, I32, I64 or BOOL)",
                         path, name, dt->valuestring);
    t->dtype = (DType)dtype;

    t->ndim = cJSON_GetArraySize(sh);
    if (t->ndim > ST_MAX_DIMS)
        return error_set(e, "%s: tensor '%s': %d dimensions, at most %d supported", path, name,
                         t->ndim, ST_MAX_DIMS);
    for (int i = 0; i < t->ndim; i++) {
        t->shape[i] = json_uint(cJSON_GetArrayItem(sh, i));
        if (t->shape[i] < 0)
            return error_set(e, "%s: tensor '%s': shape[%d] is not a non-negative integer", path,
                             name, i);
    }
    t->numel = shape_numel(t->ndim, t->shape);
    char s0[128];
    if (t->numel < 0)
        return error_set(e, "%s: tensor '%s': shape %s has more elements than 2^63 (the limit)", path, name,
                         shape_str(s0, sizeof s0, t->ndim, t->shape));

    int64_t begin = json_uint(cJSON_GetArrayItem(off, 0));
    int64_t end = json_uint(cJSON_GetArrayItem(off, 1));
    if (begin < 0 || end < 0)
        return error_set(e, "%s: tensor '%s': data_offsets are not non-negative integers", path,
                         name);
    if (begin > end)
        return error_set(e, "%s: tensor '%s': data_offsets [%lld, %lld] have begin > end", path,
                         name, (long long)begin, (long long)end);
    if ((uint64_t)end > data_size)
        return error_set(e,
                         "%s: tensor '%s': data_offsets [%lld, %lld] run past the data region of "
                         "%zu bytes (the file ends there)",
                         path, name, (long long)begin, (long long)end, data_size);
    char s[128];
    size_t esize = dtype_size(t->dtype);
    if (t->numel < 0 || (uint64_t)t->numel > (uint64_t)(end - begin) / esize ||
        (uint64_t)t->numel * esize != (uint64_t)(end - begin))
        return error_set(e,
                         "%s: tensor '%s': shape %s x %zu bytes (%s) does not match data_offsets "
                         "span of %lld bytes",
                         path, name, shape_str(s, sizeof s, t->ndim, t->shape), esize,
                         dtype_name(t->dtype), (long long)(end - begin));
    t->data = data + begin;
    t->nbytes = (size_t)(end - begin);
    return 0;
}

/* qsort order for the overlap check: by start, then by end, so an empty tensor sitting at the
 * boundary of a non-empty one sorts before it and is not taken for an overlap. */
static int cmp_by_offset(const void *a, const void *b) {
    const StTensor *x = a, *y = b;
    uintptr_t xb = (uintptr_t)x->data, yb = (uintptr_t)y->data;
    if (xb != yb) return xb < yb ? -1 : 1;
    return (x->nbytes > y->nbytes) - (x->nbytes < y->nbytes);
}

/* Sorted by start, each tensor must begin at or after the furthest end seen so far. */
static int check_overlap(StTensor *ts, int n, const char *path, const unsigned char *data,
                         Error *e) {
    qsort(ts, (size_t)n, sizeof(StTensor), cmp_by_offset);
    size_t far_begin = 0, far_end = 0; /* the tensor reaching furthest so far */
    const char *far_name = NULL;
    for (int i = 0; i < n; i++) {
        size_t begin = (size_t)((const unsigned char *)ts[i].data - data);
        size_t end = begin + ts[i].nbytes;
        if (far_name && begin < far_end)
            return error_set(e, "%s: tensors '%s' [%zu, %zu) and '%s' [%zu, %zu) overlap", path,
                             far_name, far_begin, far_end, ts[i].name, begin, end);
        if (!far_name || end > far_end) {
            far_begin = begin;
            far_end = end;
            far_name = ts[i].name;
        }
    }
    return 0;
}

/* __metadata__ must be a string -> string map (the safetensors library rejects anything else). */
static int check_metadata(const cJSON *m, const char *path, Error *e) {
    if (!cJSON_IsObject(m)) return error_set(e, "%s: __metadata__ is not an object", path);
    for (const cJSON *kv = m->child; kv; kv = kv->next)
        if (!cJSON_IsString(kv))
            return error_set(e, "%s: __metadata__ key '%s': expected a string value", path,
                             kv->string);
    return 0;
}

/* Maps path as file number f->n_files and appends its tensors to f->tensors. */
static int add_file(StFile *f, const char *path, Error *e) {
    if (map_file(f, path, e)) return -1;
    int k = f->n_files - 1;
    const unsigned char *base = f->maps[k];
    size_t size = f->map_sizes[k];

    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | base[i]; /* little-endian, whatever the host is */
    if (n > size - 8)
        return error_set(e, "%s: header length %llu is larger than the %zu bytes after it", path,
                         (unsigned long long)n, size - 8);
    const char *text = (const char *)base + 8, *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, (size_t)n, &end, 0);
    if (!root)
        return error_set(e, "%s: header is not valid JSON (error at byte %td of %llu)", path,
                         end ? end - text : 0, (unsigned long long)n);
    for (; end && end < text + n; end++) /* after the object only padding may follow */
        if (*end != ' ' && *end != '\t' && *end != '\n' && *end != '\r' && *end != '\0') {
            cJSON_Delete(root);
            return error_set(e, "%s: header has text after its JSON object at byte %td", path,
                             end - text);
        }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return error_set(e, "%s: header is not a JSON object", path);
    }

    const unsigned char *data = base + 8 + n;
    size_t data_size = size - 8 - (size_t)n;
    int n_entries = cJSON_GetArraySize(root);
    StTensor *ts =
        realloc(f->tensors, sizeof(StTensor) * ((size_t)f->n_tensors + (size_t)n_entries + 1));
    if (!ts) {
        cJSON_Delete(root);
        return error_set(e, "%s: out of memory for %d tensors", path, n_entries);
    }
    f->tensors = ts;
    int first = f->n_tensors, rc = 0;
    for (const cJSON *j = root->child; j && rc == 0; j = j->next) {
        if (strcmp(j->string, "__metadata__") == 0) {
            rc = check_metadata(j, path, e);
            if (rc == 0 && k == 0 && !f->metadata_json)
                f->metadata_json = cJSON_PrintUnformatted(j);
            continue;
        }
        StTensor *t = &f->tensors[f->n_tensors];
        memset(t, 0, sizeof *t);
        t->file = k;
        rc = parse_entry(t, j, path, data, data_size, e);
        if (rc == 0 && !(t->name = strdup(j->string))) rc = error_set(e, "%s: out of memory", path);
        if (rc == 0) f->n_tensors++;
    }
    cJSON_Delete(root);
    return rc ? rc : check_overlap(f->tensors + first, f->n_tensors - first, path, data, e);
}

static int cmp_by_name(const void *a, const void *b) {
    return strcmp(((const StTensor *)a)->name, ((const StTensor *)b)->name);
}

/* Sorts the merged table by name for st_find; a name in two files (or twice in one) is an error. */
static int sort_tensors(StFile *f, Error *e) {
    if (f->n_tensors > 0) qsort(f->tensors, (size_t)f->n_tensors, sizeof(StTensor), cmp_by_name);
    for (int i = 1; i < f->n_tensors; i++) {
        const StTensor *a = &f->tensors[i - 1], *b = &f->tensors[i];
        if (strcmp(a->name, b->name) != 0) continue;
        if (a->file == b->file)
            return error_set(e, "%s: tensor '%s' appears twice", f->paths[a->file], a->name);
        return error_set(e, "tensor '%s' appears twice, in %s and in %s", a->name,
                         f->paths[a->file], f->paths[b->file]);
    }
    return 0;
}

/* A failed open leaves nothing allocated. Names and dtypes quoted in the message come from the
 * file, where JSON strings may hold raw control characters: blank them to keep one line. */
static int open_failed(StFile *f, Error *e) {
    st_close(f);
    for (char *c = e ? e->msg : NULL; c && *c; c++)
        if ((unsigned char)*c < 0x20) *c = '?';
    return -1;
}

int st_open(StFile *f, const char *path, Error *e) {
    memset(f, 0, sizeof *f);
    if (add_file(f, path, e) || sort_tensors(f, e)) return open_failed(f, e);
    return 0;
}

/* -------------------------------------------------------------------------------------------------
 * Checkpoint directories: model.safetensors, or model.safetensors.index.json + shards.
 */

/* Opens every shard the index names, then checks each tensor is where the index says it is. */
static int open_index(StFile *f, const char *dir, const char *index_path, Error *e) {
    char *text = read_file(index_path, NULL, e);
    if (!text) return -1;
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(root);
        return error_set(e, "%s: expected a JSON object with a \"weight_map\" object", index_path);
    }
    int rc = 0;
    for (const cJSON *j = wm->child; j && rc == 0; j = j->next) {
        if (!cJSON_IsString(j)) {
            rc = error_set(e, "%s: weight_map['%s'] is not a file name", index_path, j->string);
            break;
        }
        char *shard = path_join(dir, j->valuestring);
        if (!shard) {
            rc = error_set(e, "%s: out of memory", index_path);
            break;
        }
        int seen = 0; /* shards repeat once per tensor; open each once */
        for (int i = f->n_files - 1; i >= 0 && !seen; i--) seen = strcmp(f->paths[i], shard) == 0;
        if (!seen) {
            if (access(shard, F_OK) != 0)
                rc = error_set(e, "%s: shard %s (named by %s for tensor '%s') does not exist",
                               shard, j->valuestring, index_path, j->string);
            else
                rc = add_file(f, shard, e);
        }
        free(shard);
    }
    if (rc == 0) rc = sort_tensors(f, e);
    for (const cJSON *j = wm->child; j && rc == 0; j = j->next) {
        const StTensor *t = st_find(f, j->string);
        /* every path is dir + "/" + the shard name the index gave */
        if (!t || strcmp(f->paths[t->file] + strlen(dir) + 1, j->valuestring) != 0)
            rc = error_set(e, "%s: index maps tensor '%s' to %s, which does not contain it",
                           index_path, j->string, j->valuestring);
    }
    cJSON_Delete(root);
    return rc;
}

int st_open_dir(StFile *f, const char *dir, Error *e) {
    memset(f, 0, sizeof *f);
    struct stat st;
    if (stat(dir, &st) != 0)
        return error_set(e, "%s: cannot open checkpoint directory: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return error_set(e, "%s: expected a checkpoint directory, found a file", dir);
    char *single = path_join(dir, "model.safetensors");
    char *index = path_join(dir, "model.safetensors.index.json");
    int rc;
    if (!single || !index)
        rc = error_set(e, "%s: out of memory", dir);
    else if (access(single, F_OK) == 0) /* as in transformers, the single file wins over an index */
        rc = add_file(f, single, e) ? -1 : sort_tensors(f, e);
    else if (access(index, F_OK) == 0)
        rc = open_index(f, dir, index, e);
    else
        rc = error_set(e, "%s: has neither model.safetensors nor model.safetensors.index.json",
                       dir);
    free(single);
    free(index);
    return rc ? open_failed(f, e) : 0;
}

void st_close(StFile *f) {
    for (int i = 0; i < f->n_files; i++) {
        munmap(f->maps[i], f->map_sizes[i]);
        free(f->paths[i]);
    }
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->paths);
    free(f->maps);
    free(f->map_sizes);
    free(f->tensors);
    cJSON_free(f->metadata_json);
    memset(f, 0, sizeof *f); /* closing twice is harmless */
}

/* -------------------------------------------------------------------------------------------------
 * Lookup and widening
 */
static int cmp_key(const void *key, const void *t) {
    return strcmp((const char *)key, ((const StTensor *)t)->name);
}

const StTensor *st_find(const StFile *f, const char *name) {
    if (f->n_tensors == 0) return NULL;
    return bsearch(name, f->tensors, (size_t)f->n_tensors, sizeof(StTensor), cmp_key);
}

const StTensor *st_expect(const StFile *f, const char *name, int ndim, const int64_t *shape,
                          Error *e) {
    char want[128], got[128];
    const StTensor *t = st_find(f, name);
    if (!t) {
        error_set(e, "%s%s: tensor '%s' not found (expected shape %s)",
                  f->n_files ? f->paths[0] : "?", f->n_files > 1 ? " and the other shards" : "",
                  name, shape_str(want, sizeof want, ndim, shape));
        return NULL;
    }
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        error_set(e, "%s: tensor '%s': expected shape %s, found %s", f->paths[t->file], name,
                  shape_str(want, sizeof want, ndim, shape),
                  shape_str(got, sizeof got, t->ndim, t->shape));
        return NULL;
    }
    return t;
}

float *st_to_f32(const StTensor *t) {
    float *out = malloc(sizeof(float) * (size_t)(t->numel > 0 ? t->numel : 1));
    if (out) dtype_to_f32(out, t->dtype, t->data, 0, (size_t)t->numel);
    return out;
}

/* -------------------------------------------------------------------------------------------------
 * Writing
 */

/* A JSON integer printed exactly (cJSON would print a double, and offsets can pass 2^31). */
static cJSON *json_int(int64_t v) {
    char s[32];
    snprintf(s, sizeof s, "%lld", (long long)v);
    return cJSON_CreateRaw(s);
}

/* Builds the header and the layout order: order[] lists tensor indices, largest element first. */
static cJSON *write_header(const StWriteTensor *ts, int n, int *order, const char *const *meta_keys,
                           const char *const *meta_values, int n_meta) {
    cJSON *root = cJSON_CreateObject();
    if (n_meta > 0) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        for (int i = 0; i < n_meta; i++) cJSON_AddStringToObject(m, meta_keys[i], meta_values[i]);
    }
    int n_placed = 0; /* element sizes 8, 4, 2, 1 in turn: a stable sort */
    for (size_t size = 8; size >= 1; size /= 2)
        for (int i = 0; i < n; i++)
            if (dtype_size(ts[i].dtype) == size) order[n_placed++] = i;
    int64_t offset = 0;
    for (int k = 0; k < n; k++) {
        const StWriteTensor *t = &ts[order[k]];
        int64_t nbytes = shape_numel(t->ndim, t->shape) * (int64_t)dtype_size(t->dtype);
        cJSON *o = cJSON_AddObjectToObject(root, t->name);
        cJSON_AddStringToObject(o, "dtype", dtype_name(t->dtype));
        cJSON *shape = cJSON_AddArrayToObject(o, "shape");
        for (int d = 0; d < t->ndim; d++) cJSON_AddItemToArray(shape, json_int(t->shape[d]));
        cJSON *off = cJSON_AddArrayToObject(o, "data_offsets");
        cJSON_AddItemToArray(off, json_int(offset));
        cJSON_AddItemToArray(off, json_int(offset + nbytes));
        offset += nbytes;
    }
    return root;
}

/* -------------------------------------------------------------------------------------------------
 * Streaming writer: the header first, then each tensor at its offset (fseeko), any order.
 */
struct StWriter {
    FILE *fp;             /* out.f: a temporary file beside path, renamed to it by st_write_end */
    OutFile out;
    int open;             /* out holds a temporary file to remove on abort */
    char *path;
    int n, n_done;
    int64_t *at, *nbytes; /* [n]: each tensor's offset in the file, and its size */
    char *done;           /* [n] */
};

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* The arguments' checks, without the data (written later). */
static int check_stream_args(const char *path, const StWriteTensor *ts, int n, const char *const *meta_keys,
                             const char *const *meta_values, int n_meta, Error *e) {
    for (int i = 0; i < n; i++) {
        const StWriteTensor *t = &ts[i];
        if (!t->name || strcmp(t->name, "__metadata__") == 0)
            return error_set(e, "%s: tensor %d has no name or the reserved name __metadata__", path, i);
        if ((unsigned)t->dtype >= DT_COUNT || t->ndim < 0 || t->ndim > ST_MAX_DIMS)
            return error_set(e, "%s: tensor '%s': bad dtype %d or ndim %d (0..%d)", path, t->name, (int)t->dtype,
                             t->ndim, ST_MAX_DIMS);
        int64_t numel = shape_numel(t->ndim, t->shape);
        if (numel < 0 || numel > INT64_MAX / 8)
            return error_set(e, "%s: tensor '%s': shape has a negative or too large dimension", path, t->name);
    }
    /* names and metadata keys unique: sorted copies, so a V3-sized header is not n^2 */
    const char **s = malloc(sizeof(char *) * (size_t)(n + n_meta + 1));
    if (!s) return error_set(e, "%s: out of memory", path);
    for (int i = 0; i < n; i++) s[i] = ts[i].name;
    qsort(s, (size_t)n, sizeof *s, cmp_str);
    int rc = 0;
    for (int i = 1; i < n && !rc; i++)
        if (strcmp(s[i - 1], s[i]) == 0) rc = error_set(e, "%s: tensor '%s' given twice", path, s[i]);
    for (int i = 0; i < n_meta && !rc; i++) {
        if (!meta_keys[i] || !meta_values[i]) rc = error_set(e, "%s: metadata entry %d has a NULL key or value", path, i);
        for (int j = 0; j < i && !rc; j++)
            if (strcmp(meta_keys[j], meta_keys[i]) == 0) rc = error_set(e, "%s: metadata key '%s' given twice", path, meta_keys[i]);
    }
    free(s);
    return rc;
}

void st_write_abort(StWriter *w) {
    if (!w) return;
    if (w->open) outfile_discard(&w->out); /* the temporary file; the file at path is untouched */
    free(w->path);
    free(w->at);
    free(w->nbytes);
    free(w->done);
    free(w);
}

StWriter *st_write_begin(const char *path, const StWriteTensor *ts, int n, const char *const *meta_keys,
                         const char *const *meta_values, int n_meta, Error *e) {
    if (n < 0 || check_stream_args(path, ts, n, meta_keys, meta_values, n_meta, e)) return NULL;
    StWriter *w = calloc(1, sizeof *w);
    int *order = malloc(sizeof(int) * (size_t)(n + 1));
    cJSON *root = NULL;
    char *json = NULL;
    if (w) {
        w->n = n;
        w->at = malloc(sizeof(int64_t) * (size_t)(n + 1));
        w->nbytes = malloc(sizeof(int64_t) * (size_t)(n + 1));
        w->done = calloc((size_t)n + 1, 1);
    }
    if (w && w->at && w->nbytes && w->done && order) root = write_header(ts, n, order, meta_keys, meta_values, n_meta);
    if (root) json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!json) {
        error_set(e, "%s: out of memory building the header", path);
        free(order);
        st_write_abort(w);
        return NULL;
    }
    size_t len = strlen(json), pad = (8 - len % 8) % 8;
    int64_t offset = 8 + (int64_t)(len + pad);
    for (int k = 0; k < n; k++) { /* the data region's layout: write_header's order */
        const StWriteTensor *t = &ts[order[k]];
        w->at[order[k]] = offset;
        w->nbytes[order[k]] = shape_numel(t->ndim, t->shape) * (int64_t)dtype_size(t->dtype);
        offset += w->nbytes[order[k]];
    }
    free(order);
    unsigned char n8[8];
    for (int i = 0; i < 8; i++) n8[i] = (unsigned char)((uint64_t)(len + pad) >> (8 * i));
    w->path = strdup(path);
    w->open = w->path && outfile_open(&w->out, path, e) == 0;
    w->fp = w->open ? w->out.f : NULL;
    int ok = w->fp && fwrite(n8, 1, 8, w->fp) == 8 && fwrite(json, 1, len, w->fp) == len;
    for (size_t i = 0; i < pad && ok; i++) ok = fputc(' ', w->fp) != EOF;
    cJSON_free(json);
    if (!ok) {
        if (w->open || !w->path) error_set(e, "%s: cannot write: %s", path, w->path ? strerror(errno) : "out of memory");
        st_write_abort(w);
        return NULL;
    }
    return w;
}

int st_write_tensor(StWriter *w, int i, const void *data, Error *e) {
    if (i < 0 || i >= w->n || w->done[i]) return error_set(e, "%s: tensor %d out of range or written twice", w->path, i);
    size_t nbytes = (size_t)w->nbytes[i];
    if (nbytes > 0 && !data) return error_set(e, "%s: tensor %d: data is NULL", w->path, i);
    if (nbytes > 0 && (fseeko(w->fp, (off_t)w->at[i], SEEK_SET) != 0 || fwrite(data, 1, nbytes, w->fp) != nbytes))
        return error_set(e, "%s: write failed: %s", w->path, strerror(errno));
    w->done[i] = 1;
    w->n_done++;
    return 0;
}

int st_write_end(StWriter *w, Error *e) {
    int rc = w->n_done == w->n ? 0 : error_set(e, "%s: %d of %d tensors were never written", w->path, w->n - w->n_done, w->n);
    if (!rc) { /* fsync and rename into place (outfile.h); on failure the temporary is removed */
        w->open = 0;
        rc = outfile_commit(&w->out, e);
    }
    st_write_abort(w);
    return rc;
}

/* The streaming writer below with every tensor at hand: the same checks, header and bytes. */
int st_write(const char *path, const StWriteTensor *ts, int n, const char *const *meta_keys,
             const char *const *meta_values, int n_meta, Error *e) {
    StWriter *w = st_write_begin(path, ts, n, meta_keys, meta_values, n_meta, e);
    if (!w) return -1;
    for (int i = 0; i < n; i++)
        if (st_write_tensor(w, i, ts[i].data, e)) {
            st_write_abort(w); /* no half-written file left behind; the old one stays */
            return -1;
        }
    return st_write_end(w, e);
}
