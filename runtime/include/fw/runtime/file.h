/* fw/runtime/file.h - durable file writes, one way for every writer.
 *
 * Checkpoint metadata (config.ini), adapters, Hugging Face exports and token
 * shards all reach disk the same way: the bytes go to a temporary file
 * PATH.tmp.PID beside PATH, are flushed and fsync'd, renamed over PATH, and
 * the rename is made durable by fsync'ing PATH's directory. A reader sees the
 * old file or the new one, never a part; a crash leaves at most the
 * temporary file, which names the process that wrote it.
 *
 * (HDF5 checkpoints go through fw_h5_save, which follows the same steps inside
 * the formats layer, and safetensors through fw_st_save.)
 *
 * Errors: FW_ERR_IO with one line naming the file and errno's text;
 * FW_ERR_INVALID for a path too long.
 */
#ifndef FW_RUNTIME_FILE_H
#define FW_RUNTIME_FILE_H

#include <stddef.h>

#include "fw/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* data[0..len) to path, atomically and durably (above). On failure the old
 * file is as it was and no temporary file is left. */
enum fw_status fw_file_write_atomic(const char *path, const void *data, size_t len,
				    struct fw_err *err);

/* The temporary name fw_file_write_atomic uses for path: "PATH.tmp.PID"
 * (writers that stream a large file themselves use it, then commit). */
enum fw_status fw_file_tmp_name(const char *path, char *out, size_t len, struct fw_err *err);

/* Renames tmp (written, flushed and fsync'd by the caller) over path and
 * fsyncs path's directory. On a failed rename tmp is removed. */
enum fw_status fw_file_commit(const char *tmp, const char *path, struct fw_err *err);

/* fsyncs directory dir, making renames in it durable; a file system that
 * cannot sync directories (EINVAL) counts as success. */
enum fw_status fw_dir_sync(const char *dir, struct fw_err *err);

/* mkdir -p: path and every missing parent (mode 0777 before umask). */
enum fw_status fw_dir_make(const char *path, struct fw_err *err);

#ifdef __cplusplus
}
#endif
#endif
