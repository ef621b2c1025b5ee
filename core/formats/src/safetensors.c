/* safetensors.c - Hugging Face safetensors: validated reading, atomic writing. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "fw/safetensors.h"

static int st_dtype(const char *s)
{
	if (!strcmp(s, "F32")) return FW_F32;
	if (!strcmp(s, "F16")) return FW_F16;
	if (!strcmp(s, "BF16")) return FW_BF16;
	if (!strcmp(s, "I32")) return FW_I32;
	if (!strcmp(s, "U8")) return FW_Q4;     /* bytes, ne counting them */
	return -1;
}

static const char *st_dtype_name(enum fw_dtype t)
{
	switch (t) {
	case FW_F32: return "F32";
	case FW_F16: return "F16";
	case FW_BF16: return "BF16";
	case FW_I32: return "I32";
	case FW_Q4: return "U8";        /* bytes, ne counting them */
	default: return NULL;
	}
}

void fw_st_close(struct fw_st_file *f)
{
	if (f->map)
		munmap(f->map, f->map_len);
	fw_free(f->entries);
	fw_free(f->path);
	memset(f, 0, sizeof(*f));
}

static int by_offset(const void *a, const void *b)
{
	const struct fw_st_entry *x = a, *y = b;
	const char *px = x->data, *py = y->data;
	return px < py ? -1 : px > py;
}

static enum fw_status parse_entry(const char *path, const char *name, json_t *v,
				  const char *data, uint64_t data_len, struct fw_st_entry *e,
				  struct fw_err *err)
{
	json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape");
	json_t *off = json_object_get(v, "data_offsets");
	if (!json_is_object(v) || !json_is_string(dt) || !json_is_array(shape) ||
	    !json_is_array(off) || json_array_size(off) != 2)
		return fw_errorf(err, FW_ERR_FORMAT,
				 "%s: tensor '%s' lacks dtype, shape or data_offsets", path, name);
	if (strlen(name) >= sizeof(e->name))
		return fw_errorf(err, FW_ERR_FORMAT, "%s: tensor name '%.40s...' too long", path, name);
	snprintf(e->name, sizeof(e->name), "%s", name);
	int t = st_dtype(json_string_value(dt));
	if (t < 0)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: tensor '%s' has unsupported dtype %s",
				 path, name, json_string_value(dt));
	e->dtype = t;
	size_t nd = json_array_size(shape);
	if (nd > FW_MAX_DIMS)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: tensor '%s' has %zu dims (max %d)", path,
				 name, nd, FW_MAX_DIMS);
	e->ndim = (int)nd;
	uint64_t count = 1;
	for (size_t i = 0; i < nd; i++) {
		json_t *d = json_array_get(shape, i);
		if (!json_is_integer(d) || json_integer_value(d) < 0 ||
		    json_integer_value(d) > ((json_int_t)1 << 40))
			return fw_errorf(err, FW_ERR_FORMAT, "%s: tensor '%s' has a bad shape",
					 path, name);
		e->ne[i] = json_integer_value(d);
		count *= (uint64_t)e->ne[i];
	}
	json_t *b = json_array_get(off, 0), *en = json_array_get(off, 1);
	if (!json_is_integer(b) || !json_is_integer(en) || json_integer_value(b) < 0 ||
	    json_integer_value(en) < json_integer_value(b))
		return fw_errorf(err, FW_ERR_FORMAT, "%s: tensor '%s' has bad data_offsets", path,
				 name);
	uint64_t begin = (uint64_t)json_integer_value(b), end = (uint64_t)json_integer_value(en);
	if (end > data_len)
		return fw_errorf(err, FW_ERR_FORMAT,
				 "%s: tensor '%s' data [%llu, %llu) runs past the end of the file "
				 "(%llu data bytes)", path, name, (unsigned long long)begin,
				 (unsigned long long)end, (unsigned long long)data_len);
	if (end - begin != count * fw_dtype_size(e->dtype))
		return fw_errorf(err, FW_ERR_FORMAT,
				 "%s: tensor '%s' shape needs %llu bytes but its offsets span %llu",
				 path, name, (unsigned long long)(count * fw_dtype_size(e->dtype)),
				 (unsigned long long)(end - begin));
	e->data = data + begin;
	e->nbytes = end - begin;
	return FW_OK;
}

enum fw_status fw_st_open(const char *path, struct fw_st_file *f, struct fw_err *err)
{
	struct stat st;
	json_t *root = NULL;
	enum fw_status s = FW_OK;
	memset(f, 0, sizeof(*f));

	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return fw_errorf(err, FW_ERR_IO, "%s: %s", path, strerror(errno));
	if (fstat(fd, &st) != 0 || st.st_size < 8) {
		close(fd);
		return fw_errorf(err, FW_ERR_FORMAT, "%s: too short for a safetensors file", path);
	}
	f->map_len = (size_t)st.st_size;
	f->map = mmap(NULL, f->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (f->map == MAP_FAILED) {
		f->map = NULL;
		return fw_errorf(err, FW_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
	}
	const unsigned char *p = f->map;
	uint64_t hlen = 0;
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | p[i];
	if (hlen > (uint64_t)st.st_size - 8) {
		s = fw_errorf(err, FW_ERR_FORMAT,
			      "%s: header length %llu runs past the end of the file (%lld bytes)",
			      path, (unsigned long long)hlen, (long long)st.st_size);
		goto fail;
	}
	json_error_t je;
	root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
	if (!root || !json_is_object(root)) {
		s = fw_errorf(err, FW_ERR_FORMAT, "%s: header is not a JSON object (%s at %d:%d)",
			      path, root ? "not an object" : je.text, je.line, je.column);
		goto fail;
	}
	f->path = fw_strdup(path);
	f->entries = fw_calloc(json_object_size(root) + 1, sizeof(*f->entries));
	if (!f->path || !f->entries) {
		s = fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", path);
		goto fail;
	}
	const char *data = (const char *)p + 8 + hlen;
	uint64_t data_len = (uint64_t)st.st_size - 8 - hlen;
	const char *key;
	json_t *v;
	json_object_foreach(root, key, v) {
		if (!strcmp(key, "__metadata__"))
			continue;
		s = parse_entry(path, key, v, data, data_len, &f->entries[f->n], err);
		if (s != FW_OK)
			goto fail;
		f->n++;
	}
	/* Overlapping tensors would alias each other's data. */
	struct fw_st_entry *sorted = fw_malloc(sizeof(*sorted) * (size_t)(f->n + 1));
	if (!sorted) {
		s = fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", path);
		goto fail;
	}
	memcpy(sorted, f->entries, sizeof(*sorted) * (size_t)f->n);
	qsort(sorted, (size_t)f->n, sizeof(*sorted), by_offset);
	for (int i = 1; i < f->n; i++) {
		if ((const char *)sorted[i - 1].data + sorted[i - 1].nbytes >
		    (const char *)sorted[i].data) {
			s = fw_errorf(err, FW_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap", path,
				      sorted[i - 1].name, sorted[i].name);
			break;
		}
	}
	fw_free(sorted);
	if (s != FW_OK)
		goto fail;
	json_decref(root);
	return FW_OK;
fail:
	json_decref(root);
	fw_st_close(f);
	return s;
}

const struct fw_st_entry *fw_st_find(const struct fw_st_file *f, const char *name)
{
	for (int i = 0; i < f->n; i++)
		if (!strcmp(f->entries[i].name, name))
			return &f->entries[i];
	return NULL;
}

/* Bytes of t in the file: an FW_Q4 tensor is bytes (U8), one an element. */
static size_t st_nbytes(const struct fw_tensor *t)
{
	return t->dtype == FW_Q4 ? (size_t)fw_nelem(t) : fw_nbytes(t);
}

/* Bytes of one element of t in the file. */
static size_t st_elem(const struct fw_tensor *t)
{
	return t->dtype == FW_Q4 ? 1 : fw_dtype_size(t->dtype);
}

enum fw_status fw_st_save(const char *path, struct fw_tensor *const *tensors, int n,
			  const char *const *metadata, struct fw_err *err)
{
	json_t *root = json_object();
	char *header = NULL, tmp[4096];
	FILE *out = NULL;
	enum fw_status s = FW_OK;
	uint64_t off = 0;
	/* The data in order of element size, widest first (as the safetensors
	 * library sorts it), so every tensor is aligned to its element. */
	int *order = malloc(sizeof(int) * (size_t)(n + 1)), k = 0;

	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
	if (!root || !order) {
		json_decref(root);
		free(order);
		return fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", path);
	}
	for (size_t size = 8; size >= 1; size /= 2)
		for (int i = 0; i < n; i++)
			if (st_elem(tensors[i]) == size)
				order[k++] = i;
	for (int i = 0; i < n && k < n; i++)
		if (st_elem(tensors[i]) > 8 || st_elem(tensors[i]) == 0 ||
		    (st_elem(tensors[i]) & (st_elem(tensors[i]) - 1)))
			order[k++] = i;
	if (metadata && metadata[0]) {
		json_t *md = json_object();
		for (int i = 0; metadata[i] && metadata[i + 1]; i += 2)
			json_object_set_new(md, metadata[i], json_string(metadata[i + 1]));
		json_object_set_new(root, "__metadata__", md);
	}
	for (int j = 0; j < n; j++) {
		const struct fw_tensor *t = tensors[order[j]];
		const char *dt = st_dtype_name(t->dtype);
		if (!dt || !fw_is_contiguous(t) || !t->data) {
			s = fw_errorf(err, FW_ERR_INVALID,
				      "%s: tensor '%s' is not a contiguous f32/f16/bf16/i32/u8 tensor",
				      path, t->name);
			goto out;
		}
		json_t *shape = json_array(), *offs = json_array();
		for (int d = 0; d < t->ndim; d++)
			json_array_append_new(shape, json_integer(t->ne[d]));
		json_array_append_new(offs, json_integer((json_int_t)off));
		off += st_nbytes(t);
		json_array_append_new(offs, json_integer((json_int_t)off));
		json_object_set_new(root, t->name,
				    json_pack("{s:s, s:o, s:o}", "dtype", dt, "shape", shape,
					      "data_offsets", offs));
	}
	header = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
	if (!header) {
		s = fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", path);
		goto out;
	}
	/* Pad the header with spaces so the data starts 8-byte aligned. */
	size_t hl = strlen(header), padded = (hl + 8 + 7) / 8 * 8 - 8;
	out = fopen(tmp, "wb");
	if (!out) {
		s = fw_errorf(err, FW_ERR_IO, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	unsigned char len8[8];
	for (int i = 0; i < 8; i++)
		len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
	bool ok = fwrite(len8, 1, 8, out) == 8 && fwrite(header, 1, hl, out) == hl;
	for (size_t i = hl; ok && i < padded; i++)
		ok = fputc(' ', out) != EOF;
	for (int j = 0; ok && j < n; j++) {
		const struct fw_tensor *t = tensors[order[j]];
		ok = fwrite(t->data, 1, st_nbytes(t), out) == st_nbytes(t);
	}
	ok = ok && fflush(out) == 0 && fsync(fileno(out)) == 0;
	ok = (fclose(out) == 0) && ok;
	out = NULL;
	if (!ok || rename(tmp, path) != 0) {
		s = fw_errorf(err, FW_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
		unlink(tmp);
	}
out:
	if (out) {
		fclose(out);
		unlink(tmp);
	}
	free(header);
	free(order);
	json_decref(root);
	return s;
}
