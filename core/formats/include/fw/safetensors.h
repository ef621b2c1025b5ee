/* fw/safetensors.h - Hugging Face safetensors files, read and written natively.
 *
 * Layout: an 8-byte little-endian header length N, N bytes of JSON mapping
 * each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (an
 * optional "__metadata__" object of strings), then the raw little-endian data;
 * offsets are relative to the end of the header.
 */
#ifndef FW_SAFETENSORS_H
#define FW_SAFETENSORS_H

#include "fw/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

struct fw_st_entry {
	char name[FW_NAME_MAX * 2];
	enum fw_dtype dtype;        /* F32, F16, BF16 (I32 for "I32", Q4 for "U8": bytes) */
	int ndim;
	int64_t ne[FW_MAX_DIMS];
	const void *data;           /* inside the mapped file */
	size_t nbytes;
};

struct fw_st_file {
	char *path;
	void *map;
	size_t map_len;
	struct fw_st_entry *entries;
	int n;
};

/* Maps and validates a file: header length within the file, valid JSON,
 * known dtypes, shapes matching their byte counts, offsets in range and not
 * overlapping. Any violation is FW_ERR_FORMAT naming the file and tensor. */
enum fw_status fw_st_open(const char *path, struct fw_st_file *f, struct fw_err *err);
void fw_st_close(struct fw_st_file *f);
const struct fw_st_entry *fw_st_find(const struct fw_st_file *f, const char *name);

/* Writes tensors (contiguous; f32/f16/bf16/i32) atomically. metadata may be
 * NULL or pairs of strings (key, value) ending with NULL. An FW_Q4 tensor is
 * written as bytes (U8) whose shape is its ne, one byte an element
 * (bitsandbytes' packed 4-bit weights and byte tensors); a U8 tensor is read
 * so too. */
enum fw_status fw_st_save(const char *path, struct fw_tensor *const *tensors, int n,
			  const char *const *metadata, struct fw_err *err);

#ifdef __cplusplus
}
#endif
#endif
