/* outfile.h - output files that appear whole or not at all.
 *
 * Every file a command writes (run quantize's shards, index and config.json, run golden's file, run
 * init's checkpoint, run logits' output) goes to a temporary file beside its final name,
 * ".NAME.tmp-XXXXXX" in the same directory, and is renamed into place only once complete and
 * fsynced (then the directory is fsynced too). A run that fails, or is killed at any instant,
 * leaves the file that was there before untouched and nothing partial under a final name: at most
 * a ".NAME.tmp-*" file, which no reader looks at. notes/robustness.md has the story and the tests.
 */
#ifndef OUTFILE_H
#define OUTFILE_H

#include <stdio.h>

#include "ops.h"

typedef struct {
    FILE *f;         /* write here */
    char path[4096]; /* the final name */
    char tmp[4200];  /* the temporary one */
} OutFile;

/* Creates the temporary file for path (mode 0666 less the umask, as fopen would). */
int outfile_open(OutFile *o, const char *path, Error *e);

/* Flushes, fsyncs, closes and renames into place; on any failure removes the temporary file and
 * returns -1 with e naming the file and the reason. */
int outfile_commit(OutFile *o, Error *e);

/* Closes and removes the temporary file (after an error, or to give up). */
void outfile_discard(OutFile *o);

/* The whole of data [n] as path, through the three calls above. */
int outfile_write(const char *path, const void *data, size_t n, Error *e);

/* 0 when path does not exist or force is set; else -1 with "PATH exists; add --force to replace it". */
int outfile_check_clobber(const char *path, int force, Error *e);

#endif
