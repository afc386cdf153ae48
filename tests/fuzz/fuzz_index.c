/* fuzz_index.c - st_open_dir on a sharded checkpoint: model.safetensors.index.json and up to three
 * shards, all taken from one input split at the line "#SHARD#" (index first, then the shards, named
 * model-0000K-of-00003.safetensors). The index may name missing shards, shards may lack the
 * tensors the index puts there, two shards may hold the same name. Seeds: tests/fuzz/seeds.sh. */
#include "fuzz.h"
#include "safetensors.h"

static const char SEP[] = "\n#SHARD#\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[600], name[64];
    const char *p = (const char *)data, *end = p + size;
    const char *dir = fuzz_dir();
    for (int part = 0; part < 4; part++) {
        const char *sep = memmem(p, (size_t)(end - p), SEP, sizeof SEP - 1);
        const char *stop = sep && part < 3 ? sep : end;
        if (part == 0) snprintf(name, sizeof name, "model.safetensors.index.json");
        else snprintf(name, sizeof name, "model-%05d-of-00003.safetensors", part);
        if (part > 0 && p >= end) { /* fewer parts: the shard is absent */
            snprintf(path, sizeof path, "%s/%s", dir, name);
            unlink(path);
            continue;
        }
        fuzz_write(path, sizeof path, name, p, (size_t)(stop - p));
        p = stop < end ? stop + sizeof SEP - 1 : end;
    }
    StFile f;
    Error e = {{0}};
    if (st_open_dir(&f, dir, &e)) {
        fuzz_check_msg(&e, "st_open_dir");
        return 0;
    }
    for (int i = 0; i < f.n_tensors; i++) {
        const StTensor *t = &f.tensors[i];
        if (t->file < 0 || t->file >= f.n_files || st_find(&f, t->name) != t) abort();
        free(st_to_f32(t));
    }
    st_close(&f);
    return 0;
}
