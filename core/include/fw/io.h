/* fw/io.h - named tensors in HDF5 files (layout in docs/hdf5-format.md).
 *
 * Writes are atomic: data goes to "PATH.tmp.PID", is flushed and fsync'd,
 * then renamed over PATH, so PATH is either the old file or the new one.
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

/* Saves tensors (their name, dtype, shape and data) and string attributes. */
enum fw_status fw_h5_save(const char *path, struct fw_tensor *const *tensors, int n,
			  const struct fw_h5_attr *attrs, int n_attrs, struct fw_err *err);

/* Loads into existing tensors (data allocated): each tensor's name must exist
 * in the file with the same dtype and shape; the first mismatch is named. */
enum fw_status fw_h5_load(const char *path, struct fw_tensor *const *tensors, int n,
			  struct fw_err *err);

/* Reads a string attribute; *value is fw_malloc'd (caller fw_free()s it). */
enum fw_status fw_h5_read_attr(const char *path, const char *name, char **value,
			       struct fw_err *err);

/* Lists the tensors of a file: fills names (fw_malloc'd array of fw_malloc'd
 * strings), dtypes and shapes (arrays of n entries, FW_MAX_DIMS dims each). */
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
