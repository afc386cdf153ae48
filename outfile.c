/* outfile.c - write to a temporary file, fsync, rename: a file appears whole or not at all.
 *
 * rename(2) within one directory is atomic: a reader (or a crash) sees the old file or the new one,
 * never a mix. fsync before the rename puts the data on disk before the name points at it, and fsync
 * of the directory after it makes the new name itself durable (POSIX leaves both to the caller). The
 * temporary file lives in the target's directory, so the rename never crosses file systems. A final
 * name that is a symbolic link is replaced by the file, never written through (run quantize's OUT
 * may hold links into its input).
 */
#include "outfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int outfile_open(OutFile *o, const char *path, Error *e) {
    memset(o, 0, sizeof *o);
    const char *slash = strrchr(path, '/');
    int dir_len = slash ? (int)(slash - path) : 0;
    const char *base = slash ? slash + 1 : path;
    if (strlen(path) >= sizeof o->path || !*base)
        return error_set(e, "%s: not a file name (or longer than %zu bytes)", path, sizeof o->path - 1);
    snprintf(o->path, sizeof o->path, "%s", path);
    snprintf(o->tmp, sizeof o->tmp, "%.*s%s.%s.tmp-XXXXXX", dir_len, path, slash ? "/" : "", base);
    int fd = mkstemp(o->tmp);
    if (fd < 0) return error_set(e, "%s: cannot create: %s", path, strerror(errno));
    mode_t mask = umask(022); /* mkstemp makes 0600; give the file fopen's mode */
    umask(mask);
    if (fchmod(fd, 0666 & ~mask) != 0 || !(o->f = fdopen(fd, "wb"))) {
        int err = errno;
        close(fd);
        unlink(o->tmp);
        return error_set(e, "%s: cannot create: %s", path, strerror(err));
    }
    return 0;
}

void outfile_discard(OutFile *o) {
    if (o->f) fclose(o->f);
    o->f = NULL;
    if (o->tmp[0]) unlink(o->tmp);
    o->tmp[0] = 0;
}

/* fsync of the directory that holds path, so that the rename is on disk too. */
static int sync_dir(const char *path) {
    char dir[4096];
    const char *slash = strrchr(path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) + (slash == path) : 1, slash ? path : ".");
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int outfile_commit(OutFile *o, Error *e) {
    int ok = fflush(o->f) == 0 && fsync(fileno(o->f)) == 0, err = errno;
    if (fclose(o->f) != 0 && ok) ok = 0, err = errno;
    o->f = NULL;
    if (ok && rename(o->tmp, o->path) != 0) ok = 0, err = errno;
    if (!ok) {
        outfile_discard(o);
        return error_set(e, "%s: write failed: %s", o->path, strerror(err));
    }
    o->tmp[0] = 0;
    /* the file is complete under its name; a directory that cannot be synced (some file systems
     * refuse) loses only durability across a power cut, so it is not an error */
    sync_dir(o->path);
    return 0;
}

int outfile_write(const char *path, const void *data, size_t n, Error *e) {
    OutFile o;
    if (outfile_open(&o, path, e)) return -1;
    if (n && fwrite(data, 1, n, o.f) != n) {
        int err = errno;
        outfile_discard(&o);
        return error_set(e, "%s: write failed: %s", path, strerror(err));
    }
    return outfile_commit(&o, e);
}

int outfile_check_clobber(const char *path, int force, Error *e) {
    struct stat st;
    if (force || lstat(path, &st) != 0) return 0;
    return error_set(e, "%s exists; add --force to replace it", path);
}
