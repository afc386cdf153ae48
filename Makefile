# dsv3.c - DeepSeek-V3 in plain C.
#   make            build ./run (release, -O2); never installs: a missing package stops it with the
#                   apt-get line to type
#   make run        install missing Debian packages (root or sudo), build, run the bundled model
#                   (RUN_ARGS="..." runs another command, e.g. RUN_ARGS="inspect models/kjv-v3")
#   make deps       only install the missing packages
#   make test       install missing packages as make run does, build with -Wall -Wextra -Werror,
#                   run every test, then again under ASan+UBSan
#   make test-asan  only the sanitizer pass
#   make test-exhaustive   all 2^32 floats through the FP8 encoders (1-3 minutes)
#   make fuzz       mutated safetensors / config.json / tokenizer.json under ASan+UBSan, longer
#                   than make test does (FUZZ_ITERS per parser, default 200000), then every
#                   libFuzzer target of tests/fuzz for FUZZ_SECONDS each (default 60; clang)
#   make valgrind   memcheck of run generate (bundled model) and the tokenizer tests
#   make cuda       build/cuda/run (--device cuda) and the CUDA tests (nvcc; no GPU needed)
#   make cuda-test  run the CUDA checks (GPU)   make cuda-bench  the GPU speed figures
#   make bench      print the speed figures   make bench-models  write the V2-Lite-shape benchmark models
#   make clean

CC      ?= cc
CSTD    := -std=c11 -D_GNU_SOURCE -fopenmp
OPT     ?= -O2
WARN    := -Wall -Wextra
PKGS    := openblas cmocka libcjson libpcre2-8
# Debian package that provides each pkg-config module, in the same order as PKGS.
DEBS    := libopenblas-dev libcmocka-dev libcjson-dev libpcre2-dev

# --- dependencies: found with pkg-config; installed with apt-get only by make deps / run / test ---
# The stamp records that every package was found. Whoever needs it first decides what a missing one
# does: under `make deps`, `make run` and `make test` (DEPS_INSTALL, inherited by everything those
# goals build) it is installed when we are root or have sudo; under any other goal (a plain `make`,
# one test binary, bench, fuzz) nothing is installed and the build stops with the line to type.
DEPS_STAMP := build/.deps-ok
$(DEPS_STAMP):
	@mkdir -p build
	@missing=""; set -- $(DEBS); for m in $(PKGS); do \
	  pkg-config --exists $$m 2>/dev/null || missing="$$missing $$1"; shift; done; \
	command -v pkg-config >/dev/null || missing="pkg-config $$missing"; \
	if [ -n "$$missing" ]; then \
	  if [ -z "$(DEPS_INSTALL)" ]; then echo "missing packages:$$missing"; \
	    echo "install them with: sudo apt-get install -y$$missing   (or: make deps)"; exit 1; fi; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=sudo; \
	  else echo "missing packages:$$missing"; echo "install them with: sudo apt-get install -y$$missing"; exit 1; fi; \
	  echo "installing:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null \
	    || { echo "apt-get failed; run: sudo apt-get install -y$$missing"; exit 1; }; \
	fi; touch $@
deps: DEPS_INSTALL := 1
deps: $(DEPS_STAMP)

PKG_CFLAGS = $(shell pkg-config --cflags openblas libcjson libpcre2-8 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs openblas libcjson libpcre2-8 2>/dev/null) -lm -lpthread
TEST_LIBS  = $(shell pkg-config --libs cmocka 2>/dev/null)

# run.c and args.c are the command line (they print and exit); every other .c file is library code
# that the tests link.
RUN_SRC  := run.c args.c
LIB_SRC  := $(sort $(filter-out $(RUN_SRC),$(wildcard *.c)))
HDRS     := $(wildcard *.h)
TESTS    := $(sort $(wildcard tests/test_*.c))

# --- release build -------------------------------------------------------------------------------
# The binary is called `run` (as in llama2.c) and `make run` is also the main job, so the rule for
# the file is swapped for a phony one that builds and then runs it when `run` is a goal.
.DEFAULT_GOAL := all
all: run
BUILD_RUN = $(CC) $(CSTD) $(OPT) $(WARN) $(PKG_CFLAGS) -o run $(RUN_SRC) $(LIB_SRC) $(PKG_LIBS)
RUN_ARGS ?= generate models/kjv-v3 -p "And God said" -n 96 --seed 42
ifeq ($(filter run,$(MAKECMDGOALS)),run)
.PHONY: run
run: DEPS_INSTALL := 1
run: $(DEPS_STAMP)
	$(BUILD_RUN)
	./run $(RUN_ARGS)
else
run: $(LIB_SRC) $(RUN_SRC) $(HDRS) | $(DEPS_STAMP)
	$(BUILD_RUN)
endif

# --- tests ---------------------------------------------------------------------------------------
# Two builds of every test: build/test (-O2 -Werror) and build/asan (ASan + UBSan, -O1 -g).
TEST_FLAGS := $(CSTD) -O2 -g $(WARN) -Werror -I.
ASAN_FLAGS := $(CSTD) -O1 -g $(WARN) -Werror -I. -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

# Each library source is compiled once per flavour into build/<flavour>/obj/, then linked into
# every test binary of that flavour (instead of recompiling all of them for every test).
TEST_OBJS := $(patsubst %.c,build/test/obj/%.o,$(LIB_SRC))
ASAN_OBJS := $(patsubst %.c,build/asan/obj/%.o,$(LIB_SRC))

build/test/obj/%.o: %.c $(HDRS) | $(DEPS_STAMP)
	@mkdir -p build/test/obj
	$(CC) $(TEST_FLAGS) $(PKG_CFLAGS) -c -o $@ $<

build/asan/obj/%.o: %.c $(HDRS) | $(DEPS_STAMP)
	@mkdir -p build/asan/obj
	$(CC) $(ASAN_FLAGS) $(PKG_CFLAGS) -c -o $@ $<

.SECONDARY: $(TEST_OBJS) $(ASAN_OBJS)  # kept between runs, not deleted as intermediates

build/test/%: tests/%.c tests/testutil.h tests/rel_err.h $(TEST_OBJS) $(HDRS) | $(DEPS_STAMP)
	$(CC) $(TEST_FLAGS) $(PKG_CFLAGS) -o $@ $< $(TEST_OBJS) $(TEST_LIBS) $(PKG_LIBS)

build/asan/%: tests/%.c tests/testutil.h tests/rel_err.h $(ASAN_OBJS) $(HDRS) | $(DEPS_STAMP)
	$(CC) $(ASAN_FLAGS) $(PKG_CFLAGS) -o $@ $< $(ASAN_OBJS) $(TEST_LIBS) $(PKG_LIBS)

TEST_BINS := $(patsubst tests/%.c,build/test/%,$(TESTS))
ASAN_BINS := $(patsubst tests/%.c,build/asan/%,$(TESTS))

# These tests exec ./run, so building one also brings ./run up to date; order-only, because a test
# binary does not link run.c / args.c: changing them rebuilds ./run and relinks no test.
RUN_TESTS := test_bundled test_cli test_golden test_mtp test_quantize
$(RUN_TESTS:%=build/test/%) $(RUN_TESTS:%=build/asan/%): | run

test: DEPS_INSTALL := 1
test: $(TEST_BINS) $(ASAN_BINS) run
	@OPENBLAS_NUM_THREADS=1 tests/run_tests.sh build/test $(TEST_BINS)
	@$(MAKE) --no-print-directory test-asan

test-asan: $(ASAN_BINS) run
	@ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 OPENBLAS_NUM_THREADS=1 DSV3_QUICK=1 \
	  tests/run_tests.sh build/asan $(ASAN_BINS)

# Speed figures: MLA decode absorbed vs naive, tokenizer MB/s, decode tok/s with and without MTP;
# with BENCH_LIMITS set (e.g. BENCH_LIMITS="$(BENCH_DIR)/v2lite-4l-bf16 $(BENCH_DIR)/v2lite-4l-fp8"),
# first each one's decode and prefill against the bandwidth and sgemm rate measured in the same
# run, at 1 thread and at all cores (notes/performance.md).
BENCH_MODEL ?= models/kjv-v3/config.json
BENCH_LIMITS ?=
# Decode runs once on one thread and once on every core (OMP_NUM_THREADS unset: OpenMP's default).
BENCH_THREADS ?= 1 $(shell nproc)
bench: run
	@for m in $(BENCH_LIMITS); do for th in $(BENCH_THREADS); do \
	  OMP_NUM_THREADS=$$th OPENBLAS_NUM_THREADS=$$th ./run bench $$m --limits; done; done
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 ./run bench $(dir $(BENCH_MODEL))
	@for m in $(dir $(BENCH_MODEL)) $(patsubst %/,%-fp8/,$(dir $(BENCH_MODEL))); do for th in $(BENCH_THREADS); do \
	  echo "decode, $$m, $$th thread(s):"; \
	  OMP_NUM_THREADS=$$th OPENBLAS_NUM_THREADS=1 ./run generate $$m -p "And God said" -n 256 --temp 0 --ignore-eos >/dev/null; \
	  OMP_NUM_THREADS=$$th OPENBLAS_NUM_THREADS=1 ./run generate $$m -p "And God said" -n 256 --temp 0 --ignore-eos --mtp >/dev/null; \
	done; done

# The memory-bound benchmark model (notes/performance.md): DeepSeek-V2-Lite's published shape,
# BENCH_LAYERS of its 27 layers (every matrix at its shape; 4 layers: 4.5 GB BF16, written one
# tensor at a time, the same bits as quantizing the F32 init, and 2.7 GB FP8 with the lm_head
# kept BF16; 8 layers: 9.2 and 5.0 GB), kept out of the repository in BENCH_DIR.
BENCH_DIR ?= build/bench-models
BENCH_LAYERS ?= 4
bench-models: run
	@mkdir -p $(BENCH_DIR)
	sed 's/"num_hidden_layers": 27/"num_hidden_layers": $(BENCH_LAYERS)/' tests/fixtures/configs/deepseek_v2_lite/config.json > $(BENCH_DIR)/v2lite-$(BENCH_LAYERS)l.json
	./run init --config $(BENCH_DIR)/v2lite-$(BENCH_LAYERS)l.json --out $(BENCH_DIR)/v2lite-$(BENCH_LAYERS)l-bf16 --seed 1 --dtype bf16
	./run quantize $(BENCH_DIR)/v2lite-$(BENCH_LAYERS)l-bf16 $(BENCH_DIR)/v2lite-$(BENCH_LAYERS)l-fp8 --to fp8

# Every one of the 2^32 float bit patterns through both FP8 encoders and both overflow policies,
# against a slower formulation written in the test (1-3 minutes on 2 cores; .ci/run runs it).
test-exhaustive: build/test/exhaustive_fp8
	@tests/run_tests.sh build/test build/test/exhaustive_fp8

# The parsers of untrusted input on seeded mutations (tests/test_fuzz.c; make test runs a few
# thousand per parser): 30000 per parser took 2 minutes on 2 cores under ASan.
FUZZ_ITERS ?= 200000
fuzz: build/asan/test_fuzz
	@DSV3_FUZZ_ITERS=$(FUZZ_ITERS) ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  tests/run_tests.sh fuzz build/asan/test_fuzz
	@$(MAKE) --no-print-directory fuzz-run

# Coverage-guided fuzzing (libFuzzer, Debian's clang; tests/fuzz/, notes/robustness.md): every
# library source again, built by clang with ASan + UBSan and coverage instrumentation (OpenMP from
# libomp, run on one thread), one binary per target. Seeds come from the fixtures (tests/fuzz/seeds.sh);
# the corpus grows in build/fuzz/corpus/TARGET. Each target runs FUZZ_SECONDS (make fuzz: 60;
# FUZZ_SECONDS=600 for the 10-minute runs of the notes); a crash, a leak, a sanitizer report, an
# input slower than 10 s or a single allocation over 512 MB stops it and saves the input under
# build/fuzz/. FUZZ_TARGETS=config runs only one.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= safetensors index config tokenizer_json encode chat_template golden
FUZZ_CFLAGS  := -std=c11 -D_GNU_SOURCE -fopenmp -O1 -g -I. -Wall -Wextra -Werror -Wno-pass-failed \
                -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_OBJS    := $(patsubst %.c,build/fuzz/obj/%.o,$(LIB_SRC))
FUZZ_STAMP   := build/.fuzz-deps-ok
.SECONDARY: $(FUZZ_OBJS)
# clang, its libFuzzer runtime and OpenMP (Debian: clang, libclang-rt-NN-dev, libomp-dev), installed when missing
$(FUZZ_STAMP): | $(DEPS_STAMP)
	@if ! echo 'int LLVMFuzzerTestOneInput(const char *d, long n) { (void)d; (void)n; return 0; }' | \
	    $(FUZZ_CC) -x c -fopenmp -fsanitize=fuzzer - -o build/.fuzz-probe 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=sudo; \
	  else echo "fuzz: needs clang with libFuzzer: sudo apt-get install -y clang libclang-rt-dev libomp-dev"; exit 1; fi; \
	  echo "installing: clang libclang-rt-dev libomp-dev"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq clang libclang-rt-dev libomp-dev >/dev/null; \
	  v=$$(clang --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -1); \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq libclang-rt-$$v-dev >/dev/null 2>&1 || true; \
	  echo 'int LLVMFuzzerTestOneInput(const char *d, long n) { (void)d; (void)n; return 0; }' | \
	    $(FUZZ_CC) -x c -fopenmp -fsanitize=fuzzer - -o build/.fuzz-probe || { echo "fuzz: clang cannot link libFuzzer"; exit 1; }; \
	fi; rm -f build/.fuzz-probe; touch $@

build/fuzz/obj/%.o: %.c $(HDRS) | $(FUZZ_STAMP)
	@mkdir -p build/fuzz/obj
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link $(PKG_CFLAGS) -c -o $@ $<

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h $(FUZZ_OBJS) $(HDRS)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $(PKG_CFLAGS) -o $@ $< $(FUZZ_OBJS) $(PKG_LIBS)

FUZZ_BINS := $(FUZZ_TARGETS:%=build/fuzz/fuzz_%)
fuzz-build: $(FUZZ_BINS) run

# -close_fd_mask=1: run golden --verify prints a line per function to stdout. A target's scratch
# directory (tests/fuzz/fuzz.h) goes under build/fuzz/tmp. The last line counts
# the targets in tests/run_tests.sh's form ("libfuzzer: N passed, N failed") for .ci/run's sum.
fuzz-run: fuzz-build
	@rm -rf build/fuzz/seeds && tests/fuzz/seeds.sh build/fuzz/seeds ./run
	@p=0; f=0; for t in $(FUZZ_TARGETS); do mkdir -p build/fuzz/corpus/$$t build/fuzz/crash/$$t build/fuzz/tmp; \
	  if TMPDIR=$(CURDIR)/build/fuzz/tmp ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
	    build/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
	    -print_final_stats=1 -close_fd_mask=1 -artifact_prefix=build/fuzz/crash/$$t/ \
	    build/fuzz/corpus/$$t build/fuzz/seeds/$$t > build/fuzz/$$t.log 2>&1; then p=$$((p + 1)); \
	    echo "fuzz_$$t: $$(grep -h 'DONE' build/fuzz/$$t.log | sed 's/ *lim:.*//; s/^#/execs /') (corpus $$(ls build/fuzz/corpus/$$t | wc -l) files)"; \
	  else f=$$((f + 1)); tail -40 build/fuzz/$$t.log; \
	    echo "fuzz_$$t: FAILED (build/fuzz/$$t.log, the input in build/fuzz/crash/$$t/)"; fi; done; \
	echo; echo "libfuzzer: $$p passed, $$f failed"; [ $$f -eq 0 ]

# Valgrind memcheck: run generate with the bundled model (a short prompt) and the tokenizer tests;
# any error or definite leak fails (status 99). One thread: libgomp's pool is not a leak.
VALGRIND := valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect
valgrind: run build/test/test_tokenizer
	@command -v valgrind >/dev/null || { echo "valgrind: not installed (apt-get install valgrind)"; exit 1; }
	@p=0; f=0; \
	if OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(VALGRIND) ./run generate models/kjv-v3 -p "And God said" -n 8 --temp 0 --seed 1; \
	then p=$$((p + 1)); else f=$$((f + 1)); echo "valgrind: run generate FAILED"; fi; \
	if OPENBLAS_NUM_THREADS=1 $(VALGRIND) build/test/test_tokenizer > build/valgrind-tokenizer.log 2>&1; \
	then p=$$((p + 1)); grep 'PASSED' build/valgrind-tokenizer.log; \
	else f=$$((f + 1)); tail -40 build/valgrind-tokenizer.log; echo "valgrind: test_tokenizer FAILED"; fi; \
	echo; echo "valgrind: $$p passed, $$f failed"; [ $$f -eq 0 ]

# CUDA (notes/cuda.md). `make cuda` builds, with nvcc and no GPU needed (CI does this):
#   build/cuda/run            run with --device cuda (model.cu: the forward pass on the GPU)
#   build/cuda/test_kernels   every twin of kernels.cu against its C function
#   build/cuda/test_device    the device forward against the C forward (logits, greedy, MTP)
#   build/cuda/test_forward_twins  model.cu's own twins against C, one by one (matmul, moe_forward,
#                             the embedding gather, naive attention, argmax)
#   build/cuda/test_golden_cuda    a `run golden` file's functions through their CUDA twins
#   build/cuda/bench_device   prefill and decode tok/s, the copy bandwidth and the decode's floor
# `make cuda-test` runs the checks on a GPU (sm_90: H100/H200), `make cuda-bench` prints the speed
# figures. The C files are compiled with cc (nvcc would compile .c files as C++), the .cu files
# with -rdc (the device forward, model.cu mla.cu moe.cu ops.cu, launches kernels.cu's kernels). Without OpenBLAS (a bare GPU box) the C
# reference of test_kernels links the naive CBLAS of tests/cblas_shim/.
NVCC      ?= $(shell command -v nvcc || echo /usr/local/cuda/bin/nvcc)
NVCCFLAGS ?= -O2 -std=c++17 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
# --default-stream per-thread: the kernels' launches go to a stream that can be captured as a CUDA
# graph (model.cu's decode step); the legacy default stream cannot be.
NVCC_ALL  := $(NVCCFLAGS) -rdc=true --default-stream per-thread
CUDA_REF  := ops matmul matmul_e4m3 fp8 rope mla_kv mla moe
ifeq ($(shell pkg-config --exists openblas 2>/dev/null && echo yes),yes)
CUDA_BLAS_CFLAGS := $(shell pkg-config --cflags openblas)
CUDA_BLAS_OBJ    :=
CUDA_BLAS_LINK   := $(shell pkg-config --libs openblas)
else
CUDA_BLAS_CFLAGS := -Itests/cblas_shim
CUDA_BLAS_OBJ    := build/cuda/ref/cblas_shim.o
CUDA_BLAS_LINK   :=
endif
CUDA_HDRS := kernels.h kernels.cuh device.cuh gemv_xreg.cuh $(HDRS)
# the device forward: one .cu beside each C file it mirrors (device.cuh is what they share)
CUDA_FWD  := build/cuda/model.o build/cuda/mla.o build/cuda/moe.o build/cuda/ops.o
CUDA_C    := $(filter-out device_none.c,$(LIB_SRC)) $(RUN_SRC)
CUDA_OBJS := $(patsubst %.c,build/cuda/obj/%.o,$(CUDA_C))
# the objects of everything but the command line, for the CUDA tests and benchmark
CUDA_LIB_OBJS := $(filter-out $(RUN_SRC:%.c=build/cuda/obj/%.o),$(CUDA_OBJS))

build/cuda/%.o: %.cu $(CUDA_HDRS)
	@mkdir -p build/cuda
	$(NVCC) $(NVCC_ALL) -I. -c $< -o $@
build/cuda/obj/%.o: %.c $(HDRS) | $(DEPS_STAMP)
	@mkdir -p build/cuda/obj
	$(CC) $(CSTD) $(OPT) $(WARN) $(PKG_CFLAGS) -c -o $@ $<
build/cuda/ref/%.o: %.c $(HDRS)
	@mkdir -p build/cuda/ref
	$(CC) $(CSTD) $(OPT) -I. $(CUDA_BLAS_CFLAGS) -c -o $@ $<
build/cuda/ref/cblas_shim.o: tests/cblas_shim/cblas_shim.c tests/cblas_shim/cblas.h
	@mkdir -p build/cuda/ref
	$(CC) $(CSTD) $(OPT) -c -o $@ $<

build/cuda/test_kernels: tests/test_kernels.cu build/cuda/kernels.o $(CUDA_REF:%=build/cuda/ref/%.o) $(CUDA_BLAS_OBJ) $(CUDA_HDRS)
	$(NVCC) $(NVCC_ALL) -I. $(CUDA_BLAS_CFLAGS) -o $@ $< build/cuda/kernels.o $(CUDA_REF:%=build/cuda/ref/%.o) \
	  $(CUDA_BLAS_OBJ) $(CUDA_BLAS_LINK) -lgomp -lm
build/cuda/run: $(CUDA_OBJS) build/cuda/kernels.o $(CUDA_FWD)
	$(NVCC) $(NVCC_ALL) -o $@ $^ -lcublas $(PKG_LIBS) -lgomp
build/cuda/test_device: tests/device_forward.c tests/rel_err.h $(CUDA_LIB_OBJS) build/cuda/kernels.o $(CUDA_FWD)
	$(CC) $(CSTD) $(OPT) $(WARN) -I. $(PKG_CFLAGS) -c -o build/cuda/obj/test_device.o $<
	$(NVCC) $(NVCC_ALL) -o $@ build/cuda/obj/test_device.o $(filter-out $< %.h,$^) -lcublas $(PKG_LIBS) -lgomp

build/cuda/test_forward_twins: tests/test_forward_twins.cu tests/rel_err.h tests/twin_dev.cuh $(CUDA_HDRS) $(CUDA_LIB_OBJS) build/cuda/kernels.o $(CUDA_FWD)
	$(NVCC) $(NVCC_ALL) -I. $(PKG_CFLAGS) -o $@ $< $(filter-out $< %.h %.cuh,$^) -lcublas $(PKG_LIBS) -lgomp
build/cuda/test_golden_cuda: tests/test_golden_cuda.cu tests/rel_err.h tests/twin_dev.cuh $(CUDA_HDRS) $(CUDA_LIB_OBJS) build/cuda/kernels.o $(CUDA_FWD)
	$(NVCC) $(NVCC_ALL) -I. $(PKG_CFLAGS) -o $@ $< $(filter-out $< %.h %.cuh,$^) -lcublas $(PKG_LIBS) -lgomp
build/cuda/bench_fp8_gemv: tests/bench_fp8_gemv.cu tests/copy_bandwidth.cuh $(CUDA_HDRS)
	$(NVCC) $(NVCCFLAGS) -I. -o $@ $<
build/cuda/bench_device: tests/bench_device.cu tests/copy_bandwidth.cuh $(CUDA_LIB_OBJS) build/cuda/kernels.o $(CUDA_FWD)
	$(NVCC) $(NVCC_ALL) -I. $(PKG_CFLAGS) -o $@ $< $(filter-out $< %.cuh,$^) -lcublas $(PKG_LIBS) -lgomp

cuda:
	@echo "cuda: $(NVCC), OpenBLAS $(if $(CUDA_BLAS_OBJ),not found: the naive CBLAS of tests/cblas_shim,found)"
	@$(MAKE) --no-print-directory build/cuda/test_kernels build/cuda/run build/cuda/test_device build/cuda/test_forward_twins \
	  build/cuda/test_golden_cuda build/cuda/bench_device build/cuda/bench_fp8_gemv
	@$(MAKE) --no-print-directory mla-decode

# The checks: the twins, golden files of `run golden` read by the twins (tests/cuda_golden.sh), the
# device forward against C (tests/device_forward.c), perplexity and the CLI's --device cuda against
# the CPU (tests/cuda_checks.sh), memcheck on the quick runs.
cuda-test: cuda
	./build/cuda/test_kernels
	./build/cuda/test_forward_twins
	tests/cuda_golden.sh
	./build/cuda/test_device
	tests/cuda_checks.sh
	./$(MLA_DEC_DIR)/test_mla_decode

# Speed: decode (batch 1, 256 tokens) and prefill (512) tok/s, tests/cuda_bench.sh.
cuda-bench: cuda
	./build/cuda/bench_fp8_gemv
	tests/cuda_bench.sh
	python3 tests/bench_mla_decode.py $(MLA_DEC_DIR)/libmla_decode.so

clean:
	rm -rf build run

.PHONY: all deps test test-asan test-exhaustive fuzz fuzz-build fuzz-run valgrind clean cuda cuda-test cuda-bench bench bench-models

# Batched paged MLA decode on the GPU (mla_decode.cu, notes/mla_decode.md): `make mla-decode` builds
# the kernel, its test against the C twin (mla_paged.c) and libmla_decode.so for the PyTorch bench;
# `make mla-decode-test` runs the test, `make mla-decode-bench` the benchmark (an sm_90 GPU, torch).
MLA_DEC_DIR := build/mla_decode
MLA_DEC_REF := ops matmul matmul_e4m3 fp8 mla_kv mla_paged
MLA_DEC_CU  := mla_decode mla_decode_pair mla_decode_fp8
# mla_decode_pair.cu's variant 2 uses wgmma, which only sm_90a (H100/H200) has: that file is built
# for sm_90a alone, the other with NVCCFLAGS
MLA_DEC_PAIR_FLAGS := $(filter-out -gencode arch=%,$(NVCCFLAGS)) -gencode arch=compute_90a,code=sm_90a
mla-decode: $(CUDA_BLAS_OBJ)
	@mkdir -p $(MLA_DEC_DIR)
	for f in $(MLA_DEC_CU); do flags="$(NVCCFLAGS)"; [ $$f = mla_decode_pair ] && flags="$(MLA_DEC_PAIR_FLAGS)"; \
	  $(NVCC) $$flags -Xptxas -v -I. -Xcompiler -fPIC -c $$f.cu -o $(MLA_DEC_DIR)/$$f.o \
	  > $(MLA_DEC_DIR)/$$f.ptxas 2>&1 || { cat $(MLA_DEC_DIR)/$$f.ptxas; exit 1; }; \
	  grep -E "spill|registers|warning" $(MLA_DEC_DIR)/$$f.ptxas; done
	$(NVCC) $(NVCCFLAGS) -shared -o $(MLA_DEC_DIR)/libmla_decode.so $(MLA_DEC_CU:%=$(MLA_DEC_DIR)/%.o)
	for f in $(MLA_DEC_REF); do $(CC) $(CSTD) $(OPT) -I. $(CUDA_BLAS_CFLAGS) -c $$f.c -o $(MLA_DEC_DIR)/$$f.o || exit 1; done
	$(NVCC) $(NVCCFLAGS) -I. -o $(MLA_DEC_DIR)/test_mla_decode tests/test_mla_decode.cu $(MLA_DEC_CU:%=$(MLA_DEC_DIR)/%.o) \
	  $(MLA_DEC_REF:%=$(MLA_DEC_DIR)/%.o) $(CUDA_BLAS_OBJ) $(CUDA_BLAS_LINK) -lgomp -lm

mla-decode-test: mla-decode
	./$(MLA_DEC_DIR)/test_mla_decode

mla-decode-bench: mla-decode
	python3 tests/bench_mla_decode.py $(MLA_DEC_DIR)/libmla_decode.so

.PHONY: mla-decode mla-decode-test mla-decode-bench
