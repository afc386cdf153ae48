/* bench.h - `run bench`: the speed figures that do not need a full generation (make bench adds
 * decode tok/s with and without --mtp). */
#ifndef BENCH_H
#define BENCH_H

#include "model.h"

/* run bench [DIR]: MLA decode step, absorbed vs naive, as the context grows; with DIR, the
 * tokenizer's MB/s. Returns the exit status. */
int bench_main(int argc, char **argv);

/* Bytes of weights one decode token of m reads at stored precision (the floor's numerator for
 * decode tok/s against memory bandwidth; bench_device.cu reads it too). */
double bench_activated_bytes(const Model *m);

#endif
