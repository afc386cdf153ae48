/* fuzz_safetensors.c - st_open on arbitrary bytes: the 8-byte header length, the JSON header, every
 * dtype, shape and data_offsets pair. An opened file's tensors are all widened (every byte the header
 * claims is read), looked up by name, and checked against their shape. Seeds: small .safetensors
 * files (tests/fuzz/seeds.sh). */
#include "fuzz.h"
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[600];
    fuzz_write(path, sizeof path, "m.safetensors", data, size);
    StFile f;
    Error e = {{0}};
    if (st_open(&f, path, &e)) {
        fuzz_check_msg(&e, "st_open");
        return 0;
    }
    for (int i = 0; i < f.n_tensors; i++) {
        const StTensor *t = &f.tensors[i];
        if (st_find(&f, t->name) != t) abort(); /* names are unique and sorted */
        if (t->nbytes != (size_t)t->numel * dtype_size(t->dtype)) abort();
        free(st_to_f32(t));
        Error e2 = {{0}};
        if (!st_expect(&f, t->name, t->ndim, t->shape, &e2)) abort();
    }
    st_close(&f);
    return 0;
}
