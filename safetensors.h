/* safetensors.h - read and write safetensors files, and open HF checkpoint directories.
 *
 * File format (https://huggingface.co/docs/safetensors): 8 bytes little-endian u64 N, then N bytes
 * of JSON {"name": {"dtype": "BF16", "shape": [r, c], "data_offsets": [begin, end]}, ...,
 * "__metadata__": {"key": "value"}}, then the data region; offsets are relative to its start.
 *
 * A checkpoint directory holds config.json plus either model.safetensors or
 * model.safetensors.index.json ({"weight_map": {"tensor name": "shard file name"}}) and its shards.
 * Every file is mmapped read-only; tensors are views into the mapping (never copied).
 */
#ifndef SAFETENSORS_H
#define SAFETENSORS_H

#include "ops.h"

#define ST_MAX_DIMS 8

typedef struct {
    char *name;
    DType dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    const void *data; /* into the mmapped file; may be unaligned */
    size_t nbytes;
    int file;         /* index of the shard that holds it */
} StTensor;

typedef struct {
    int n_files;
    char **paths;       /* [n_files] */
    void **maps;        /* [n_files] mmapped bases */
    size_t *map_sizes;  /* [n_files] */
    int n_tensors;
    StTensor *tensors;  /* sorted by name */
    char *metadata_json; /* the __metadata__ object of the first file, as JSON text, or NULL */
} StFile;

/* Open one .safetensors file. Validates: header length within the file, JSON, every dtype known,
 * shape x dtype size == data_offsets span, offsets inside the data region, no two tensors
 * overlapping. Returns 0, or -1 with e set (naming the file and the tensor). */
int st_open(StFile *f, const char *path, Error *e);

/* Open a checkpoint directory's weights: model.safetensors, or model.safetensors.index.json and
 * every shard it names (a missing shard is an error naming it). Tensors of all shards are merged
 * into one sorted table; a tensor the index maps to a shard that lacks it is an error. */
int st_open_dir(StFile *f, const char *dir, Error *e);

void st_close(StFile *f);

/* Lookup by exact name (binary search). NULL when absent. */
const StTensor *st_find(const StFile *f, const char *name);

/* Like st_find, but an absent tensor or one whose shape is not [d0, d1, ...] (ndim given) is an
 * error naming the tensor, the expected and the found shape. */
const StTensor *st_expect(const StFile *f, const char *name, int ndim, const int64_t *shape, Error *e);

/* Widen a float tensor (F32/F16/BF16/F8/F64) to a freshly malloc'ed FP32 array. */
float *st_to_f32(const StTensor *t);

/* Writer. Data is borrowed, not copied. The header is padded with spaces to a multiple of 8 and
 * tensors are laid out by element size, largest first (stable otherwise), so every tensor is
 * aligned and the data region has no holes, as the safetensors library itself does.
 * Metadata: n_meta key/value string pairs (may be 0). */
typedef struct {
    const char *name;
    DType dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} StWriteTensor;

/* The file appears whole or not at all: written under a temporary name beside path, fsynced and
 * renamed (outfile.h); on failure the file that was at path is left as it was. */
int st_write(const char *path, const StWriteTensor *ts, int n, const char *const *meta_keys,
             const char *const *meta_values, int n_meta, Error *e);

/* Streaming writer, for files larger than memory: st_write_begin writes the header of tensors ts [n]
 * (their data pointers are not read), then st_write_tensor writes tensor i's bytes, in any order, and
 * st_write_end checks that every tensor was written and closes. The file has the bytes st_write
 * would give for the same tensors. After an error from st_write_tensor, call st_write_abort.
 * st_write_end and st_write_abort free w. The bytes go to a temporary file beside path that st_write_end
 * fsyncs and renames into place (outfile.h); abort, or an error from end, removes it and leaves the
 * file that was at path as it was. */
typedef struct StWriter StWriter;
StWriter *st_write_begin(const char *path, const StWriteTensor *ts, int n, const char *const *meta_keys,
                         const char *const *meta_values, int n_meta, Error *e);
int st_write_tensor(StWriter *w, int i, const void *data, Error *e);
int st_write_end(StWriter *w, Error *e);
void st_write_abort(StWriter *w);

#endif
