/* bench.h - `run bench`: the speed figures that do not need a full generation (make bench adds
 * decode tok/s with and without --mtp). */
#ifndef BENCH_H
#define BENCH_H

/* run bench [DIR]: MLA decode step, absorbed vs naive, as the context grows; with DIR, the
 * tokenizer's MB/s. Returns the exit status. */
int bench_main(int argc, char **argv);

#endif
