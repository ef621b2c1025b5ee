/* fw/io.h - named tensors in HDF5 files (layout in docs/hdf5-format.md).
 *
 * Writes are atomic: data goes to "PATH.tmp.PID", is flushed and fsync'd,
 * then renamed over PATH, so PATH is either the old file or the new one.
 *
 * Errors (every message is one line naming the file, and the tensor or
 * attribute where there is one):
 *   FW_ERR_INVALID      bad argument: tensor name empty, with '/', repeated;
 *                       not contiguous; no data; reserved attribute name
 *   FW_ERR_IO           file missing or unreadable, cannot create or write
 *   FW_ERR_FORMAT       not HDF5, corrupt or truncated, not an fw tensor file
 *   FW_ERR_UNSUPPORTED  written by a newer fw_format_version
 *   FW_ERR_NOT_FOUND    tensor or attribute missing
 *   FW_ERR_SHAPE        dtype or shape differs from the file (load)
 *   FW_ERR_NOMEM        an fw_malloc failed
 * HDF5 prints nothing; each call silences it on the calling thread.
 */
#ifndef FW_IO_H
#define FW_IO_H

#include "fw/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One string attribute of the file (the model config, as JSON or key=value). */
struct fw_h5_attr {
	const char *name;
	const char *value;
};

/* Saves tensors (their name, dtype, shape and contiguous data) and string
 * attributes (UTF-8; "fw_format" and "fw_format_version" are reserved). */
enum fw_status fw_h5_save(const char *path, struct fw_tensor *const *tensors, int n,
			  const struct fw_h5_attr *attrs, int n_attrs, struct fw_err *err);

/* Loads into existing tensors (data allocated): each tensor's name must exist
 * in the file with the same dtype and shape; the first mismatch is named.
 * All tensors are checked before any data is written into them. */
enum fw_status fw_h5_load(const char *path, struct fw_tensor *const *tensors, int n,
			  struct fw_err *err);

/* Reads a root string attribute (variable- or fixed-length); *value is
 * fw_malloc'd (caller fw_free()s it). Missing: FW_ERR_NOT_FOUND. */
enum fw_status fw_h5_read_attr(const char *path, const char *name, char **value,
			       struct fw_err *err);

/* Lists the tensors of a file in save order (by name for files whose writer
 * did not track creation order): *entries is an fw_malloc'd array of *n
 * entries (caller fw_free()s it; NULL and 0 on error). A q4 tensor's shape is
 * its logical shape. */
struct fw_h5_entry {
	char name[FW_NAME_MAX];
	enum fw_dtype dtype;
	int ndim;
	int64_t ne[FW_MAX_DIMS];
};
enum fw_status fw_h5_list(const char *path, struct fw_h5_entry **entries, int *n,
			  struct fw_err *err);

#ifdef __cplusplus
}
#endif
#endif
