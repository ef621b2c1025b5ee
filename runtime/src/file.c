/* file.c - durable file writes (fw/runtime/file.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fw/runtime/file.h"

enum fw_status fw_file_tmp_name(const char *path, char *out, size_t len, struct fw_err *err)
{
	int n = snprintf(out, len, "%s.tmp.%d", path, (int)getpid());
	if (n < 0 || (size_t)n >= len)
		return fw_errorf(err, FW_ERR_INVALID, "%s: path too long", path);
	return FW_OK;
}

/* The directory part of path ("." for a bare name) into out. */
static void dir_of(const char *path, char *out, size_t len)
{
	const char *slash = strrchr(path, '/');
	if (!slash)
		snprintf(out, len, ".");
	else if (slash == path)
		snprintf(out, len, "/");
	else
		snprintf(out, len, "%.*s", (int)(slash - path), path);
}

enum fw_status fw_dir_sync(const char *dir, struct fw_err *err)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return fw_errorf(err, FW_ERR_IO, "%s: %s", dir, strerror(errno));
	int rc = fsync(fd), e = errno;
	close(fd);
	if (rc && e != EINVAL)
		return fw_errorf(err, FW_ERR_IO, "%s: %s", dir, strerror(e));
	return FW_OK;
}

enum fw_status fw_file_commit(const char *tmp, const char *path, struct fw_err *err)
{
	if (rename(tmp, path) != 0) {
		int e = errno;
		unlink(tmp);
		return fw_errorf(err, FW_ERR_IO, "%s: cannot write: %s", path, strerror(e));
	}
	char dir[4096];
	dir_of(path, dir, sizeof(dir));
	struct fw_err e2 = { 0 };
	if (fw_dir_sync(dir, &e2) != FW_OK)
		return fw_errorf(err, FW_ERR_IO, "%s: written, but syncing directory %s failed: %s",
				 path, dir, e2.msg);
	return FW_OK;
}

enum fw_status fw_file_write_atomic(const char *path, const void *data, size_t len,
				    struct fw_err *err)
{
	char tmp[4300];
	enum fw_status st = fw_file_tmp_name(path, tmp, sizeof(tmp), err);
	if (st != FW_OK)
		return st;
	FILE *f = fopen(tmp, "wb");
	if (!f)
		return fw_errorf(err, FW_ERR_IO, "%s: %s", tmp, strerror(errno));
	bool ok = (len == 0 || fwrite(data, 1, len, f) == len) && fflush(f) == 0 &&
		  fsync(fileno(f)) == 0;
	int e = errno;
	if (fclose(f) != 0 && ok) {
		ok = false;
		e = errno;
	}
	if (!ok) {
		unlink(tmp);
		return fw_errorf(err, FW_ERR_IO, "%s: cannot write: %s", path, strerror(e));
	}
	return fw_file_commit(tmp, path, err);
}

enum fw_status fw_dir_make(const char *path, struct fw_err *err)
{
	char tmp[4096];
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s", path) >= sizeof(tmp))
		return fw_errorf(err, FW_ERR_INVALID, "%s: path too long", path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, 0777) != 0 && errno != EEXIST)
			return fw_errorf(err, FW_ERR_IO, "%s: %s", tmp, strerror(errno));
		*p = '/';
	}
	if (mkdir(tmp, 0777) != 0 && errno != EEXIST)
		return fw_errorf(err, FW_ERR_IO, "%s: %s", tmp, strerror(errno));
	return FW_OK;
}
