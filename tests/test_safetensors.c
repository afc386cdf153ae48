/* test_safetensors.c - the reader, the writer and the widening, plus every bad input the reader
 * must refuse with one line naming the file or tensor. Fixture files are written at run time into
 * a temporary directory: good ones with st_write, bad ones byte by byte with write_st_raw. */
#include "testutil.h"

#include "safetensors.h"

#include <cJSON.h>
#include <stdint.h>
#include <sys/stat.h>

/* Each test gets a fresh temporary directory as its state; teardown removes it. */
static int setup(void **state) {
    *state = make_tmpdir();
    return 0;
}
static int teardown(void **state) {
    rm_rf(*state);
    free(*state);
    return 0;
}

static char *path_in(const char *dir, const char *name) {
    static char buf[4][512]; /* a few at once, enough for one test's expressions */
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

/* A safetensors file by hand: u64 header length (as declared), the header text, data_len bytes. */
static void write_st_raw(const char *path, uint64_t declared_len, const char *header,
                         size_t data_len) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    for (int i = 0; i < 8; i++) fputc((int)((declared_len >> (8 * i)) & 0xff), fp);
    fputs(header, fp);
    for (size_t i = 0; i < data_len; i++) fputc(i & 0xff, fp);
    fclose(fp);
}
static void write_st(const char *path, const char *header, size_t data_len) {
    write_st_raw(path, strlen(header), header, data_len);
}

/* The error is one line that mentions every string in want (file, tensor, what was found), and the
 * failed open left an empty StFile that st_close accepts. */
static void check_error(int rc, const Error *e, StFile *f, const char *want1, const char *want2) {
    printf("    error: %s\n", e->msg);
    assert_int_equal(rc, -1);
    assert_null(strchr(e->msg, '\n'));
    assert_non_null(strstr(e->msg, want1));
    if (want2) assert_non_null(strstr(e->msg, want2));
    assert_int_equal(f->n_files, 0);
    assert_int_equal(f->n_tensors, 0);
    assert_null(f->tensors);
    st_close(f);
}

static void open_fails(const char *path, const char *want1, const char *want2) {
    StFile f;
    Error e = {{0}};
    check_error(st_open(&f, path, &e), &e, &f, want1, want2);
}

static void open_dir_fails(const char *dir, const char *want1, const char *want2) {
    StFile f;
    Error e = {{0}};
    check_error(st_open_dir(&f, dir, &e), &e, &f, want1, want2);
}

/* -------------------------------------------------------------------------------------------------
 * Round trips
 */
static void test_roundtrip_every_dtype(void **state) {
    const char *path = path_in(*state, "all.safetensors");
    double f64[3] = {1.5, -2.25, 1e300};
    float scalar = 3.25f, cube[2 * 3 * 4];
    for (int i = 0; i < 24; i++) cube[i] = 0.5f * (float)i - 3.0f;
    uint16_t f16[4] = {0x3C00, 0x7BFF, 0x0001, 0xC000}, bf16[4] = {0x3F80, 0xC000, 0x3E20, 0x7F7F};
    uint8_t e4m3[6] = {0x38, 0xB8, 0x7E, 0x01, 0x08, 0x00},
            e5m2[5] = {0x3C, 0x7B, 0x01, 0x7C, 0xFC};
    int8_t i8[3] = {-128, 0, 127};
    uint8_t u8[2] = {0, 255}, boolean[3] = {1, 0, 1};
    int16_t i16[2] = {-32768, 32767};
    int32_t i32[2] = {-7, 2147483647};
    int64_t i64[2] = {INT64_MIN, INT64_MAX};
    /* written in no particular order; the writer must lay them out by element size */
    StWriteTensor ts[] = {
        {"u8", DT_U8, 1, {2}, u8},          {"scalar", DT_F32, 0, {0}, &scalar},
        {"f16", DT_F16, 2, {2, 2}, f16},    {"cube", DT_F32, 3, {2, 3, 4}, cube},
        {"bf16", DT_BF16, 1, {4}, bf16},    {"e4m3", DT_F8_E4M3, 2, {2, 3}, e4m3},
        {"e5m2", DT_F8_E5M2, 1, {5}, e5m2}, {"i8", DT_I8, 1, {3}, i8},
        {"i16", DT_I16, 1, {2}, i16},       {"i32", DT_I32, 2, {2, 1}, i32},
        {"i64", DT_I64, 1, {2}, i64},       {"bool", DT_BOOL, 1, {3}, boolean},
        {"f64", DT_F64, 1, {3}, f64},
    };
    int n = (int)(sizeof ts / sizeof ts[0]);
    const char *keys[] = {"format", "seed", "note"},
               *values[] = {"pt", "42", "say \"hi\" \xc3\xbc"};
    Error e = {{0}};
    assert_int_equal(st_write(path, ts, n, keys, values, 3, &e), 0);

    StFile f;
    assert_int_equal(st_open(&f, path, &e), 0);
    assert_int_equal(f.n_files, 1);
    assert_int_equal(f.n_tensors, n);
    const unsigned char *base = f.maps[0];
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | base[i];
    assert_int_equal(hlen % 8, 0); /* padded with spaces to a multiple of 8 */
    assert_int_equal(base[8], '{'); /* the Python reader wants the object first */
    const unsigned char *data = base + 8 + hlen;
    size_t covered = 0, off[sizeof ts / sizeof ts[0]];
    for (int i = 0; i < n; i++) {
        const StTensor *t = st_find(&f, ts[i].name);
        assert_non_null(t);
        assert_int_equal(t->dtype, ts[i].dtype);
        assert_int_equal(t->ndim, ts[i].ndim);
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            assert_int_equal(t->shape[d], ts[i].shape[d]);
            numel *= ts[i].shape[d];
        }
        assert_int_equal(t->numel, numel);
        assert_int_equal(t->nbytes, numel * (int64_t)dtype_size(t->dtype));
        assert_memory_equal(t->data, ts[i].data, t->nbytes);
        off[i] = (size_t)((const unsigned char *)t->data - data);
        assert_int_equal(off[i] % dtype_size(t->dtype), 0); /* aligned to its element size */
        covered += t->nbytes;
    }
    for (int i = 0; i < n; i++) /* larger elements first; equal sizes keep the caller's order */
        for (int j = 0; j < n; j++) {
            size_t si = dtype_size(ts[i].dtype), sj = dtype_size(ts[j].dtype);
            if (si > sj || (si == sj && i < j)) assert_true(off[i] < off[j]);
        }
    assert_int_equal(covered, f.map_sizes[0] - 8 - hlen); /* no holes, nothing after */
    for (int i = 1; i < n; i++) assert_true(strcmp(f.tensors[i - 1].name, f.tensors[i].name) < 0);

    assert_non_null(f.metadata_json);
    cJSON *m = cJSON_Parse(f.metadata_json);
    assert_non_null(m);
    for (int i = 0; i < 3; i++)
        assert_string_equal(cJSON_GetObjectItemCaseSensitive(m, keys[i])->valuestring, values[i]);
    cJSON_Delete(m);
    assert_null(st_find(&f, "nope"));
    st_close(&f);
    st_close(&f); /* twice is harmless */
}

static void test_write_empty_file_and_zero_size_tensor(void **state) {
    const char *empty = path_in(*state, "empty.safetensors"),
               *zero = path_in(*state, "zero.safetensors");
    Error e = {{0}};
    StFile f;
    assert_int_equal(st_write(empty, NULL, 0, NULL, NULL, 0, &e), 0);
    assert_int_equal(st_open(&f, empty, &e), 0);
    assert_int_equal(f.n_tensors, 0);
    assert_null(f.metadata_json);
    assert_null(st_find(&f, "x"));
    st_close(&f);

    float two[2] = {1, 2};
    StWriteTensor ts[] = {{"none", DT_F32, 2, {0, 4}, NULL}, {"two", DT_F32, 1, {2}, two}};
    assert_int_equal(st_write(zero, ts, 2, NULL, NULL, 0, &e), 0);
    assert_int_equal(st_open(&f, zero, &e), 0);
    const StTensor *t = st_find(&f, "none");
    assert_non_null(t);
    assert_int_equal(t->numel, 0);
    assert_int_equal(t->nbytes, 0);
    float *w = st_to_f32(st_find(&f, "two"));
    assert_true(w[0] == 1.0f && w[1] == 2.0f);
    free(w);
    st_close(&f);
}

/* The writer's bytes equal the safetensors library's own, for the vectors in its unit tests
 * (safetensors/src/tensor.rs: test_serialization, test_serialization_forced_alignement,
 * test_empty): same key order, no spaces, padding with ' ' to a multiple of 8. */
static void expect_file_bytes(const char *path, const char *header, const void *data, size_t n) {
    size_t hlen = strlen(header), size = 8 + hlen + n;
    unsigned char want[256], got[257];
    assert_true(size <= sizeof want);
    memset(want, 0, 8);
    want[0] = (unsigned char)hlen;
    memcpy(want + 8, header, hlen);
    if (n) memcpy(want + 8 + hlen, data, n);
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    size_t got_n = fread(got, 1, sizeof got, fp);
    fclose(fp);
    assert_int_equal(got_n, size);
    assert_memory_equal(got, want, size);
}

static void test_write_matches_library_bytes(void **state) {
    const char *p = path_in(*state, "lib.safetensors");
    float x[6] = {0, 1, 2, 3, 4, 5};
    Error e = {{0}};
    StWriteTensor a[] = {{"attn.0", DT_F32, 3, {1, 2, 3}, x}};
    assert_int_equal(st_write(p, a, 1, NULL, NULL, 0, &e), 0);
    expect_file_bytes(p, "{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],"
                         "\"data_offsets\":[0,24]}}", x, sizeof x);
    StWriteTensor b[] = {{"attn0", DT_F32, 4, {1, 1, 2, 3}, x}};
    assert_int_equal(st_write(p, b, 1, NULL, NULL, 0, &e), 0);
    expect_file_bytes(p, "{\"attn0\":{\"dtype\":\"F32\",\"shape\":[1,1,2,3],"
                         "\"data_offsets\":[0,24]}}       ", x, sizeof x);
    assert_int_equal(st_write(p, NULL, 0, NULL, NULL, 0, &e), 0);
    expect_file_bytes(p, "{}      ", NULL, 0);
    const char *k[] = {"framework"}, *v[] = {"pt"};
    assert_int_equal(st_write(p, NULL, 0, k, v, 1, &e), 0);
    expect_file_bytes(p, "{\"__metadata__\":{\"framework\":\"pt\"}}     ", NULL, 0);
}

static void test_open_dir_single_file(void **state) {
    const char *dir = *state;
    float w[6] = {1, 2, 3, 4, 5, 6};
    StWriteTensor ts[] = {{"model.norm.weight", DT_F32, 2, {2, 3}, w}};
    Error e = {{0}};
    write_text(path_in(dir, "config.json"), "{\"model_type\": \"deepseek_v3\"}");
    assert_int_equal(st_write(path_in(dir, "model.safetensors"), ts, 1, NULL, NULL, 0, &e), 0);
    StFile f;
    assert_int_equal(st_open_dir(&f, dir, &e), 0);
    int64_t shape[2] = {2, 3};
    const StTensor *t = st_expect(&f, "model.norm.weight", 2, shape, &e);
    assert_non_null(t);
    assert_memory_equal(t->data, w, sizeof w);
    st_close(&f);
}

/* Two shards and an index, as HF writes them for a large checkpoint. */
static void test_open_dir_sharded(void **state) {
    const char *dir = *state;
    uint16_t emb[8] = {0x3F80, 0xC000, 0x3E20, 0x0000, 0x3F80, 0x3F80, 0xC000, 0xC000}; /* BF16 */
    float norm[2] = {0.5f, 0.25f}, head[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    StWriteTensor s1[] = {{"model.embed_tokens.weight", DT_BF16, 2, {4, 2}, emb},
                          {"model.norm.weight", DT_F32, 1, {2}, norm}};
    StWriteTensor s2[] = {{"lm_head.weight", DT_F32, 2, {4, 2}, head}};
    Error e = {{0}};
    assert_int_equal(
        st_write(path_in(dir, "model-00001-of-00002.safetensors"), s1, 2, NULL, NULL, 0, &e), 0);
    assert_int_equal(
        st_write(path_in(dir, "model-00002-of-00002.safetensors"), s2, 1, NULL, NULL, 0, &e), 0);
    write_text(path_in(dir, "config.json"), "{\"model_type\": \"deepseek_v3\"}");
    write_text(path_in(dir, "model.safetensors.index.json"),
               "{\"metadata\": {\"total_size\": 56}, \"weight_map\": {"
               "\"lm_head.weight\": \"model-00002-of-00002.safetensors\", "
               "\"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\", "
               "\"model.norm.weight\": \"model-00001-of-00002.safetensors\"}}");
    StFile f;
    assert_int_equal(st_open_dir(&f, dir, &e), 0);
    assert_int_equal(f.n_files, 2);
    assert_int_equal(f.n_tensors, 3);
    const StTensor *head_t = st_find(&f, "lm_head.weight"),
                   *emb_t = st_find(&f, "model.embed_tokens.weight");
    assert_non_null(head_t);
    assert_non_null(emb_t);
    assert_non_null(strstr(f.paths[head_t->file], "model-00002-of-00002"));
    assert_non_null(strstr(f.paths[emb_t->file], "model-00001-of-00002"));
    float *h = st_to_f32(head_t), *x = st_to_f32(emb_t);
    float want_x[8] = {1, -2, 0.15625f, 0, 1, 1, -2, -2};
    assert_memory_equal(h, head, sizeof head);
    assert_memory_equal(x, want_x, sizeof want_x);
    free(h);
    free(x);
    int64_t shape[1] = {2};
    assert_non_null(st_expect(&f, "model.norm.weight", 1, shape, &e));
    st_close(&f);
}

/* BF16, F16 and both FP8 formats widen exactly; the expected values are worked out by hand from
 * the bit fields (sign | exponent | mantissa). */
static void expect_exact(const char *what, const float *got, const float *want, int n) {
    for (int i = 0; i < n; i++) {
        int ok = isnan(want[i]) ? isnan(got[i])
                                : (got[i] == want[i] && signbit(got[i]) == signbit(want[i]));
        if (!ok) printf("NOT OK %s[%d]: got %.9g, want %.9g\n", what, i, got[i], want[i]);
        assert_true(ok);
    }
    printf("OK     %s: %d values exact\n", what, n);
}

static void test_widen_exact(void **state) {
    const char *path = path_in(*state, "widen.safetensors");
    /* BF16: 1.0, -2.0, 0.15625 (2^-3 x 1.25), largest finite 255 x 2^120, smallest subnormal
     * 2^-133, -0, -inf */
    uint16_t bf16[7] = {0x3F80, 0xC000, 0x3E20, 0x7F7F, 0x0001, 0x8000, 0xFF80};
    float want_bf16[7] = {1, -2, 0.15625f, ldexpf(255, 120), ldexpf(1, -133), -0.0f, -INFINITY};
    /* F16: 1.0, max 65504, smallest subnormal 2^-24, -2.0, 1365/4096 (nearest to 1/3), inf */
    uint16_t f16[6] = {0x3C00, 0x7BFF, 0x0001, 0xC000, 0x3555, 0x7C00};
    float want_f16[6] = {1, 65504, ldexpf(1, -24), -2, 1365.0f / 4096, INFINITY};
    /* E4M3 (bias 7): 1.0, -1.0, max 448 = 1.75 x 2^8, subnormal 2^-9, min normal 2^-6, 0, NaN */
    uint8_t e4m3[7] = {0x38, 0xB8, 0x7E, 0x01, 0x08, 0x00, 0x7F};
    float want_e4m3[7] = {1, -1, 448, ldexpf(1, -9), ldexpf(1, -6), 0, NAN};
    /* E5M2 (bias 15): 1.0, max 57344 = 1.75 x 2^15, subnormal 2^-16, inf, -inf, NaN */
    uint8_t e5m2[6] = {0x3C, 0x7B, 0x01, 0x7C, 0xFC, 0x7E};
    float want_e5m2[6] = {1, 57344, ldexpf(1, -16), INFINITY, -INFINITY, NAN};
    double f64[2] = {1.5, -0.125};
    float want_f64[2] = {1.5f, -0.125f};
    StWriteTensor ts[] = {
        {"bf16", DT_BF16, 1, {7}, bf16},    {"f16", DT_F16, 1, {6}, f16},
        {"e4m3", DT_F8_E4M3, 1, {7}, e4m3}, {"e5m2", DT_F8_E5M2, 1, {6}, e5m2},
        {"f64", DT_F64, 1, {2}, f64},
    };
    const float *want[] = {want_bf16, want_f16, want_e4m3, want_e5m2, want_f64};
    Error e = {{0}};
    assert_int_equal(st_write(path, ts, 5, NULL, NULL, 0, &e), 0);
    StFile f;
    assert_int_equal(st_open(&f, path, &e), 0);
    for (int i = 0; i < 5; i++) {
        float *got = st_to_f32(st_find(&f, ts[i].name));
        expect_exact(ts[i].name, got, want[i], (int)ts[i].shape[0]);
        free(got);
    }
    st_close(&f);
}

/* -------------------------------------------------------------------------------------------------
 * Bad inputs: each one an error of one line naming the file or tensor
 */
static void test_missing_directory(void **state) {
    open_dir_fails(path_in(*state, "no-such-model"), "no-such-model", NULL);
}

static void test_missing_file(void **state) {
    open_fails(path_in(*state, "absent.safetensors"), "absent.safetensors", NULL);
}

static void test_dir_without_weights(void **state) {
    write_text(path_in(*state, "config.json"), "{}");
    open_dir_fails(*state, *state, "neither model.safetensors nor model.safetensors.index.json");
}

static void test_file_shorter_than_length_field(void **state) {
    const char *p = path_in(*state, "short.safetensors");
    write_text(p, "{}");
    open_fails(p, "short.safetensors", "8-byte");
}

static void test_header_longer_than_file(void **state) {
    const char *p = path_in(*state, "trunc.safetensors");
    write_st_raw(p, 1000, "{}", 0);
    open_fails(p, "trunc.safetensors", "header length 1000");
}

static void test_header_not_json(void **state) {
    const char *p = path_in(*state, "bad.safetensors");
    write_st(p, "{\"w\": {\"dtype\": ", 0);
    open_fails(p, "bad.safetensors", "not valid JSON");
}

static void test_header_not_object(void **state) {
    const char *p = path_in(*state, "arr.safetensors");
    write_st(p, "[1, 2]", 0);
    open_fails(p, "arr.safetensors", "not a JSON object");
}

static void test_entry_missing_fields(void **state) {
    const char *p = path_in(*state, "fields.safetensors");
    write_st(p, "{\"w\": {\"shape\": [2], \"data_offsets\": [0, 8]}}", 8);
    open_fails(p, "'w'", "dtype");
    write_st(p, "{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 8]}}", 8);
    open_fails(p, "'w'", "shape");
    write_st(p, "{\"w\": {\"dtype\": \"F32\", \"shape\": [2]}}", 8);
    open_fails(p, "'w'", "data_offsets");
    write_st(p, "{\"w\": 7}", 0);
    open_fails(p, "fields.safetensors", "'w'");
}

static void test_unknown_dtype(void **state) {
    const char *p = path_in(*state, "dtype.safetensors");
    write_st(p, "{\"w\": {\"dtype\": \"F7\", \"shape\": [2], \"data_offsets\": [0, 2]}}", 2);
    open_fails(p, "'w'", "unknown dtype \"F7\"");
    /* a raw newline inside a JSON string (cJSON accepts it) must not break the message's line */
    write_st(p, "{\"w\": {\"dtype\": \"F\n7\", \"shape\": [2], \"data_offsets\": [0, 2]}}", 2);
    open_fails(p, "'w'", "unknown dtype \"F?7\"");
}

static void test_offsets_outside_file(void **state) {
    const char *p = path_in(*state, "outside.safetensors");
    write_st(p, "{\"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}", 8);
    open_fails(p, "'w'", "past the data region of 8 bytes");
}

static void test_offsets_begin_after_end(void **state) {
    const char *p = path_in(*state, "backwards.safetensors");
    write_st(p, "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 0]}}", 8);
    open_fails(p, "'w'", "begin > end");
}

static void test_tensors_overlap(void **state) {
    const char *p = path_in(*state, "overlap.safetensors");
    write_st(p,
             "{\"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}, "
             "\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}",
             12);
    open_fails(p, "'a' [0, 8) and 'b' [4, 12) overlap", "overlap.safetensors");
}

static void test_shape_does_not_match_span(void **state) {
    const char *p = path_in(*state, "span.safetensors");
    write_st(p, "{\"w\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}", 8);
    open_fails(p, "'w'", "shape [3] x 4 bytes");
}

static void test_metadata_not_strings(void **state) {
    const char *p = path_in(*state, "meta.safetensors");
    write_st(p, "{\"__metadata__\": {\"seed\": 42}}", 0);
    open_fails(p, "meta.safetensors", "'seed'");
}

static void test_same_name_twice(void **state) {
    const char *p = path_in(*state, "twice.safetensors");
    write_st(p,
             "{\"w\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}, "
             "\"w\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [1, 2]}}",
             2);
    open_fails(p, "'w' appears twice", "twice.safetensors");
}

static void write_one_shard(const char *dir) {
    float w[2] = {1, 2};
    StWriteTensor ts[] = {{"a.weight", DT_F32, 1, {2}, w}};
    Error e = {{0}};
    assert_int_equal(
        st_write(path_in(dir, "model-00001-of-00002.safetensors"), ts, 1, NULL, NULL, 0, &e), 0);
}

static void test_index_names_missing_shard(void **state) {
    write_one_shard(*state);
    write_text(path_in(*state, "model.safetensors.index.json"),
               "{\"weight_map\": {\"a.weight\": \"model-00001-of-00002.safetensors\", "
               "\"b.weight\": \"model-00002-of-00002.safetensors\"}}");
    open_dir_fails(*state, "model-00002-of-00002.safetensors", "'b.weight'");
}

static void test_index_tensor_missing_from_shard(void **state) {
    write_one_shard(*state);
    write_text(path_in(*state, "model.safetensors.index.json"),
               "{\"weight_map\": {\"a.weight\": \"model-00001-of-00002.safetensors\", "
               "\"ghost.weight\": \"model-00001-of-00002.safetensors\"}}");
    open_dir_fails(*state, "'ghost.weight'", "model-00001-of-00002.safetensors");
}

static void test_index_not_json(void **state) {
    write_one_shard(*state);
    write_text(path_in(*state, "model.safetensors.index.json"), "{\"weight_map\": ");
    open_dir_fails(*state, "model.safetensors.index.json", "weight_map");
}

static void test_expect_missing_and_wrong_shape(void **state) {
    const char *p = path_in(*state, "expect.safetensors");
    static float w[32 * 64];
    StWriteTensor ts[] = {{"w", DT_F32, 2, {32, 64}, w}};
    Error e = {{0}};
    assert_int_equal(st_write(p, ts, 1, NULL, NULL, 0, &e), 0);
    StFile f;
    assert_int_equal(st_open(&f, p, &e), 0);
    int64_t want[2] = {64, 32};
    assert_null(st_expect(&f, "model.missing.weight", 2, want, &e));
    printf("    error: %s\n", e.msg);
    assert_non_null(strstr(e.msg, "'model.missing.weight' not found"));
    assert_non_null(strstr(e.msg, "expect.safetensors"));
    assert_null(st_expect(&f, "w", 2, want, &e));
    printf("    error: %s\n", e.msg);
    assert_non_null(strstr(e.msg, "'w': expected shape [64, 32], found [32, 64]"));
    assert_null(st_expect(&f, "w", 1, want, &e)); /* rank differs too */
    assert_non_null(strstr(e.msg, "expected shape [64], found [32, 64]"));
    st_close(&f);
}

static void test_write_errors(void **state) {
    const char *p = path_in(*state, "w.safetensors");
    float x[2] = {0};
    Error e = {{0}};
    StWriteTensor twice[] = {{"x", DT_F32, 1, {2}, x}, {"x", DT_F32, 1, {2}, x}};
    assert_int_equal(st_write(p, twice, 2, NULL, NULL, 0, &e), -1);
    assert_non_null(strstr(e.msg, "'x' given twice"));
    StWriteTensor deep[] = {{"x", DT_F32, ST_MAX_DIMS + 1, {1}, x}};
    assert_int_equal(st_write(p, deep, 1, NULL, NULL, 0, &e), -1);
    assert_non_null(strstr(e.msg, "'x'"));
    StWriteTensor nodata[] = {{"x", DT_F32, 1, {2}, NULL}};
    assert_int_equal(st_write(p, nodata, 1, NULL, NULL, 0, &e), -1);
    assert_non_null(strstr(e.msg, "data is NULL"));
    assert_int_equal(
        st_write(path_in(*state, "no/such/dir.safetensors"), NULL, 0, NULL, NULL, 0, &e), -1);
    assert_non_null(strstr(e.msg, "no/such/dir.safetensors"));
}

/* The streaming writer gives st_write's bytes, whatever order the tensors come in; a missing tensor,
 * a tensor written twice or an aborted stream leaves no file. */
static void test_stream_writer(void **state) {
    const char *dir = *state, *whole = path_in(dir, "whole.safetensors"), *stream = path_in(dir, "stream.safetensors");
    float a[6] = {1, 2, 3, 4, 5, 6}, s = 7;
    uint16_t b[3] = {0x3f80, 0x4000, 0xc040};
    uint8_t q[4] = {1, 2, 3, 4};
    StWriteTensor ts[] = {{"q", DT_F8_E4M3, 2, {2, 2}, q}, {"a", DT_F32, 2, {2, 3}, a},
                          {"b", DT_BF16, 1, {3}, b},     {"s", DT_F32, 0, {0}, &s}};
    const void *data[] = {q, a, b, &s};
    const char *keys[] = {"format"}, *vals[] = {"pt"};
    Error e = {{0}};
    assert_int_equal(st_write(whole, ts, 4, keys, vals, 1, &e), 0);
    StWriter *w = st_write_begin(stream, ts, 4, keys, vals, 1, &e);
    assert_non_null(w);
    int order[] = {2, 0, 3, 1};
    for (int k = 0; k < 4; k++) assert_int_equal(st_write_tensor(w, order[k], data[order[k]], &e), 0);
    assert_int_equal(st_write_tensor(w, 1, a, &e), -1); /* twice */
    assert_non_null(strstr(e.msg, "written twice"));
    assert_int_equal(st_write_end(w, &e), 0);
    assert_files_equal(whole, stream);
    w = st_write_begin(stream, ts, 4, keys, vals, 1, &e);
    assert_non_null(w);
    assert_int_equal(st_write_tensor(w, 0, q, &e), 0);
    assert_int_equal(st_write_end(w, &e), -1);
    assert_non_null(strstr(e.msg, "3 of 4 tensors were never written"));
    assert_files_equal(whole, stream); /* the complete file written before stays (outfile.h) */
    w = st_write_begin(stream, ts, 4, keys, vals, 1, &e);
    assert_non_null(w);
    st_write_abort(w);
    assert_files_equal(whole, stream);
    remove(stream); /* and with nothing there before, nothing is left */
    w = st_write_begin(stream, ts, 4, keys, vals, 1, &e);
    assert_non_null(w);
    st_write_abort(w);
    assert_int_equal(access(stream, F_OK), -1);
    StWriteTensor dup[] = {{"a", DT_F32, 1, {1}, a}, {"a", DT_F32, 1, {1}, a}};
    assert_null(st_write_begin(stream, dup, 2, NULL, NULL, 0, &e));
    assert_non_null(strstr(e.msg, "given twice"));
    printf("OK     streamed (order 2 0 3 1) == st_write; unwritten, aborted and duplicate streams leave no file\n");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip_every_dtype, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_empty_file_and_zero_size_tensor, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_write_matches_library_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_dir_single_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_dir_sharded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_widen_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_directory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dir_without_weights, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_shorter_than_length_field, setup, teardown),
        cmocka_unit_test_setup_teardown(test_header_longer_than_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_header_not_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_header_not_object, setup, teardown),
        cmocka_unit_test_setup_teardown(test_entry_missing_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_dtype, setup, teardown),
        cmocka_unit_test_setup_teardown(test_offsets_outside_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_offsets_begin_after_end, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tensors_overlap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shape_does_not_match_span, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metadata_not_strings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_name_twice, setup, teardown),
        cmocka_unit_test_setup_teardown(test_index_names_missing_shard, setup, teardown),
        cmocka_unit_test_setup_teardown(test_index_tensor_missing_from_shard, setup, teardown),
        cmocka_unit_test_setup_teardown(test_index_not_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expect_missing_and_wrong_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_writer, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
