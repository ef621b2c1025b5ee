/* io_h5.c - named tensors in HDF5 files; layout in docs/hdf5-format.md.
 *
 * Files use the HDF5 1.10 format (every metadata block has a checksum) and
 * every non-empty dataset is chunked with a Fletcher-32 checksum, so damage
 * shows up as an error instead of wrong numbers. HDF5's own error printing
 * is switched off on each public call; its most specific message is copied
 * into ours instead.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hdf5.h>

#include "fw/io.h"

#define FW_H5_FORMAT "fw-tensors"
#define FW_H5_VERSION 1
#define FW_H5_GROUP "tensors"
#define CHUNK_BYTES ((hsize_t)4 << 20)  /* largest chunk: bounds read temporaries */
#define DETAIL_MAX 160                  /* one HDF5 message, in ours */

/* The seal: a record at the start of the 512-byte user block (bytes HDF5
 * leaves alone) holding the file length and a hash of bytes [512, covered),
 * the part with HDF5's global heap, which has no checksum of its own. */
#define SEAL_BYTES 512
#define SEAL_REC 48
#define SEAL_MAGIC "fw-h5sum"
#define SEAL_VERSION 1
#define FNV_SEED 0xcbf29ce484222325ull

/* State of one save, shared by the writers below. */
struct writer {
	const char *path;       /* what the caller asked for: named in every error */
	const char *tmp;        /* where the data goes until the rename */
	hid_t file, group;
	hid_t lcpl, acpl;       /* UTF-8 link and attribute names */
	hsize_t covered;        /* end of the objects and attributes: sealed */
	struct fw_err *err;
};

/* HDF5 prints its error stack by default; the setting is per thread in a
 * thread-safe build, so every public call silences it for its own thread. */
static void h5_quiet(void)
{
	H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

static herr_t detail_cb(unsigned n, const H5E_error2_t *e, void *data)
{
	char *buf = data;
	if (n == 0 && e->desc && e->desc[0])
		snprintf(buf, DETAIL_MAX, "%s", e->desc);
	return 0;
}

/* The most specific message on this thread's HDF5 error stack, one line.
 * buf must hold DETAIL_MAX bytes. */
static const char *h5_detail(char *buf)
{
	buf[0] = '\0';
	H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, detail_cb, buf);
	if (!buf[0])
		snprintf(buf, DETAIL_MAX, "HDF5 error");
	for (char *p = buf; *p; p++)
		if (*p == '\n' || *p == '\r' || *p == '\t')
			*p = ' ';
	return buf;
}

static enum fw_status corrupt(const char *path, const char *what, const char *name,
			      struct fw_err *err)
{
	char d[DETAIL_MAX];
	h5_detail(d);
	if (name)
		return fw_errorf(err, FW_ERR_FORMAT,
				 "%s: corrupt or truncated HDF5 file (%s '%s': %s)", path, what,
				 name, d);
	return fw_errorf(err, FW_ERR_FORMAT, "%s: corrupt or truncated HDF5 file (%s)", path, d);
}

static const char *shape_str(int ndim, const int64_t *ne, char *buf, size_t len)
{
	size_t o = snprintf(buf, len, "[");
	for (int i = 0; i < ndim && o < len; i++)
		o += snprintf(buf + o, len - o, i ? ", %lld" : "%lld", (long long)ne[i]);
	if (o < len)
		snprintf(buf + o, len - o, "]");
	return buf;
}

/* A shape fw can hold: 1..4 dims, and a byte count that fits in size_t. */
static bool shape_ok(int ndim, const int64_t *ne)
{
	int64_t n = 1;
	if (ndim < 1 || ndim > FW_MAX_DIMS)
		return false;
	for (int i = 0; i < ndim; i++) {
		if (ne[i] < 0 || (ne[i] && n > (INT64_MAX / 8) / ne[i]))
			return false;
		n *= ne[i];
	}
	return true;
}

/* "tensor 'x' " or "" for messages about attributes. */
static const char *owner(const char *tensor, char *buf, size_t len)
{
	if (!tensor)
		return "";
	snprintf(buf, len, "tensor '%s' ", tensor);
	return buf;
}

/* --- the seal ------------------------------------------------------------- */

/* FNV-1a, 64 bit: catches damage, not malice. */
static uint64_t fnv1a(uint64_t h, const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

static void put_le(unsigned char *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/* Hashes bytes [from, to) of fd; -1 with errno set on failure or early EOF. */
static int hash_range(int fd, uint64_t from, uint64_t to, uint64_t *out)
{
	unsigned char buf[16384];
	uint64_t h = FNV_SEED;

	while (from < to) {
		size_t want = to - from < sizeof(buf) ? (size_t)(to - from) : sizeof(buf);
		ssize_t got = pread(fd, buf, want, (off_t)from);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			if (got == 0)
				errno = EIO;
			return -1;
		}
		h = fnv1a(h, buf, (size_t)got);
		from += (uint64_t)got;
	}
	*out = h;
	return 0;
}

/* Verifies the seal of a file fw wrote, before HDF5 parses any of it. Files
 * without one (other writers) rely on HDF5's own checks. */
static enum fw_status check_seal(const char *path, int fd, uint64_t size, struct fw_err *err)
{
	unsigned char rec[SEAL_REC];
	uint64_t len, covered, h;

	if (size < SEAL_BYTES)
		return FW_OK;
	if (pread(fd, rec, sizeof(rec), 0) != (ssize_t)sizeof(rec))
		return fw_errorf(err, FW_ERR_IO, "%s: %s", path, strerror(errno ? errno : EIO));
	if (memcmp(rec, SEAL_MAGIC, 8) || get_le(rec + 8, 4) != SEAL_VERSION)
		return FW_OK;
	len = get_le(rec + 16, 8);
	covered = get_le(rec + 24, 8);
	if (get_le(rec + 40, 8) != fnv1a(FNV_SEED, rec, 40) || covered < SEAL_BYTES ||
	    covered > len)
		return fw_errorf(err, FW_ERR_FORMAT,
				 "%s: corrupt or truncated HDF5 file (damaged fw seal)", path);
	if (len != size)
		return fw_errorf(err, FW_ERR_FORMAT,
				 "%s: corrupt or truncated HDF5 file (%llu bytes, %llu were written)",
				 path, (unsigned long long)size, (unsigned long long)len);
	if (hash_range(fd, SEAL_BYTES, covered, &h))
		return fw_errorf(err, FW_ERR_IO, "%s: %s", path, strerror(errno));
	if (h != get_le(rec + 32, 8))
		return fw_errorf(err, FW_ERR_FORMAT,
				 "%s: corrupt or truncated HDF5 file (checksum mismatch in the first %llu bytes)",
				 path, (unsigned long long)covered);
	return FW_OK;
}

/* --- types ----------------------------------------------------------------- */

/* IEEE binary16 laid out like base (a 32-bit float type), as h5py builds it. */
static hid_t half_type(hid_t base)
{
	hid_t t = H5Tcopy(base);
	if (t < 0)
		return t;
	if (H5Tset_fields(t, 15, 10, 5, 0, 10) < 0 || H5Tset_size(t, 2) < 0 ||
	    H5Tset_ebias(t, 15) < 0) {
		H5Tclose(t);
		return H5I_INVALID_HID;
	}
	return t;
}

/* The stored (file) or in-memory type of a dtype; the caller closes it. */
static hid_t dtype_h5(enum fw_dtype dt, bool file)
{
	switch (dt) {
	case FW_F32: return H5Tcopy(file ? H5T_IEEE_F32LE : H5T_NATIVE_FLOAT);
	case FW_F16: return half_type(file ? H5T_IEEE_F32LE : H5T_NATIVE_FLOAT);
	case FW_I32: return H5Tcopy(file ? H5T_STD_I32LE : H5T_NATIVE_INT32);
	case FW_BF16: return H5Tcopy(file ? H5T_STD_U16LE : H5T_NATIVE_UINT16);
	case FW_Q4: return H5Tcopy(file ? H5T_STD_U8LE : H5T_NATIVE_UINT8);
	default: return H5I_INVALID_HID;
	}
}

/* "f64", "u16", "string": for messages about types fw does not use. */
static const char *type_name(hid_t t, char *buf, size_t len)
{
	size_t bits = 8 * H5Tget_size(t);
	switch (H5Tget_class(t)) {
	case H5T_FLOAT:
		snprintf(buf, len, "f%zu", bits);
		break;
	case H5T_INTEGER:
		snprintf(buf, len, "%c%zu", H5Tget_sign(t) == H5T_SGN_NONE ? 'u' : 'i', bits);
		break;
	case H5T_STRING:
		snprintf(buf, len, "string");
		break;
	default:
		snprintf(buf, len, "a non-numeric type");
		break;
	}
	return buf;
}

/* The dtype a stored type means when a dataset has no fw_dtype tag (files
 * written by other tools); -1 when it has no unambiguous fw dtype. */
static int infer_dtype(hid_t t)
{
	size_t size = H5Tget_size(t);
	switch (H5Tget_class(t)) {
	case H5T_FLOAT:
		return size == 4 ? FW_F32 : size == 2 ? FW_F16 : -1;
	case H5T_INTEGER:
		return size == 4 && H5Tget_sign(t) == H5T_SGN_2 ? FW_I32 : -1;
	default:
		return -1;
	}
}

/* Whether stored type t can hold dtype dt without a value conversion. */
static bool type_fits(hid_t t, enum fw_dtype dt)
{
	H5T_class_t c = H5Tget_class(t);
	size_t size = H5Tget_size(t);
	switch (dt) {
	case FW_F32: return c == H5T_FLOAT && size == 4;
	case FW_F16: return c == H5T_FLOAT && size == 2;
	case FW_I32: return c == H5T_INTEGER && size == 4 && H5Tget_sign(t) == H5T_SGN_2;
	case FW_BF16: return c == H5T_INTEGER && size == 2;
	case FW_Q4: return c == H5T_INTEGER && size == 1;
	default: return false;
	}
}

/* --- attributes -------------------------------------------------------------- */

/* An open attribute with its file type and space; attr_close releases it. */
struct attr {
	hid_t a, ft, sp;
};

static void attr_close(struct attr *at)
{
	if (at->sp >= 0)
		H5Sclose(at->sp);
	if (at->ft >= 0)
		H5Tclose(at->ft);
	if (at->a >= 0)
		H5Aclose(at->a);
	at->a = at->ft = at->sp = H5I_INVALID_HID;
}

/* Opens attribute name of loc (the root, or tensor's dataset). */
static enum fw_status attr_open(const char *path, hid_t loc, const char *tensor,
				const char *name, struct attr *at, struct fw_err *err)
{
	char who[FW_NAME_MAX + 16];
	htri_t ex = H5Aexists(loc, name);

	at->a = at->ft = at->sp = H5I_INVALID_HID;
	if (ex < 0)
		return corrupt(path, "attribute", name, err);
	if (!ex)
		return fw_errorf(err, FW_ERR_NOT_FOUND, "%s: %sattribute '%s' not found", path,
				 owner(tensor, who, sizeof(who)), name);
	at->a = H5Aopen(loc, name, H5P_DEFAULT);
	if (at->a < 0)
		return corrupt(path, "attribute", name, err);
	at->ft = H5Aget_type(at->a);
	at->sp = at->ft < 0 ? H5I_INVALID_HID : H5Aget_space(at->a);
	if (at->sp < 0) {
		enum fw_status s = corrupt(path, "attribute", name, err);
		attr_close(at);
		return s;
	}
	return FW_OK;
}

/* Reads string attribute name of loc (the root, or tensor's dataset) into an
 * fw_malloc'd string. Variable- and fixed-length strings are both accepted. */
static enum fw_status read_str_attr(const char *path, hid_t loc, const char *tensor,
				    const char *name, char **value, struct fw_err *err)
{
	hid_t mt = H5I_INVALID_HID;
	char who[FW_NAME_MAX + 16];
	struct attr at;
	htri_t vl;

	*value = NULL;
	enum fw_status s = attr_open(path, loc, tensor, name, &at, err);
	if (s != FW_OK)
		return s;
	hid_t a = at.a, ft = at.ft;
	if (H5Tget_class(ft) != H5T_STRING || H5Sget_simple_extent_npoints(at.sp) != 1) {
		s = fw_errorf(err, FW_ERR_FORMAT, "%s: %sattribute '%s' is not a single string",
			      path, owner(tensor, who, sizeof(who)), name);
		goto close_attr;
	}
	vl = H5Tis_variable_str(ft);
	if (vl > 0) {
		char *raw = NULL;
		mt = H5Tcopy(H5T_C_S1);
		if (mt < 0 || H5Tset_size(mt, H5T_VARIABLE) < 0 ||
		    H5Tset_cset(mt, H5Tget_cset(ft)) < 0 || H5Aread(a, mt, &raw) < 0) {
			s = corrupt(path, "attribute", name, err);
			goto close_attr;
		}
		*value = fw_strdup(raw ? raw : "");
		H5free_memory(raw);
	} else if (vl == 0) {
		size_t n = H5Tget_size(ft);
		char *buf = fw_malloc(n + 1);
		mt = H5Tcopy(ft);
		if (buf && (mt < 0 || H5Aread(a, mt, buf) < 0)) {
			fw_free(buf);
			s = corrupt(path, "attribute", name, err);
			goto close_attr;
		}
		if (buf) {
			buf[n] = '\0';
			if (H5Tget_strpad(ft) == H5T_STR_SPACEPAD)
				while (n && buf[n - 1] == ' ')
					buf[--n] = '\0';
		}
		*value = buf;
	} else {
		s = corrupt(path, "attribute", name, err);
		goto close_attr;
	}
	if (!*value)
		s = fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory reading attribute '%s'",
			      path, name);
close_attr:
	if (mt >= 0)
		H5Tclose(mt);
	attr_close(&at);
	return s;
}

/* Reads integer attribute name (1..max values) into v; *count gets how many. */
static enum fw_status read_int_attr(const char *path, hid_t loc, const char *tensor,
				    const char *name, int64_t *v, int max, int *count,
				    struct fw_err *err)
{
	char who[FW_NAME_MAX + 16];
	struct attr at;
	enum fw_status s = attr_open(path, loc, tensor, name, &at, err);
	if (s != FW_OK)
		return s;
	hssize_t np = H5Sget_simple_extent_npoints(at.sp);
	if (H5Tget_class(at.ft) != H5T_INTEGER || np < 1 || np > max)
		s = fw_errorf(err, FW_ERR_FORMAT, "%s: %sattribute '%s' is not %s", path,
			      owner(tensor, who, sizeof(who)), name,
			      max == 1 ? "an integer" : "a short integer array");
	else if (H5Aread(at.a, H5T_NATIVE_INT64, v) < 0)
		s = corrupt(path, "attribute", name, err);
	else
		*count = (int)np;
	attr_close(&at);
	return s;
}

static enum fw_status write_attr(struct writer *w, hid_t loc, const char *name, hid_t ft,
				 hid_t mt, hid_t sp, const void *buf)
{
	hid_t a = H5Acreate2(loc, name, ft, sp, w->acpl, H5P_DEFAULT);
	char d[DETAIL_MAX];

	if (a < 0 || H5Awrite(a, mt, buf) < 0) {
		h5_detail(d);
		if (a >= 0)
			H5Aclose(a);
		return fw_errorf(w->err, FW_ERR_IO, "%s: cannot write attribute '%s' to %s (%s)",
				 w->path, name, w->tmp, d);
	}
	if (H5Aclose(a) < 0)
		return fw_errorf(w->err, FW_ERR_IO, "%s: cannot write attribute '%s' to %s (%s)",
				 w->path, name, w->tmp, h5_detail(d));
	return FW_OK;
}

/* A scalar variable-length UTF-8 string: what h5py reads back as str. */
static enum fw_status write_str_attr(struct writer *w, hid_t loc, const char *name,
				     const char *value)
{
	hid_t t = H5Tcopy(H5T_C_S1), sp = H5Screate(H5S_SCALAR);
	enum fw_status s;

	if (t < 0 || sp < 0 || H5Tset_size(t, H5T_VARIABLE) < 0 ||
	    H5Tset_cset(t, H5T_CSET_UTF8) < 0) {
		char d[DETAIL_MAX];
		s = fw_errorf(w->err, FW_ERR_INTERNAL, "%s: HDF5 string type (%s)", w->path,
			      h5_detail(d));
		goto close;
	}
	s = write_attr(w, loc, name, t, t, sp, &value);
close:
	if (sp >= 0)
		H5Sclose(sp);
	if (t >= 0)
		H5Tclose(t);
	return s;
}

/* An integer array of n values (a scalar when n is 0), stored as ft. */
static enum fw_status write_int_attr(struct writer *w, hid_t loc, const char *name,
				     hid_t ft, hid_t mt, const void *v, int n)
{
	hsize_t dim = (hsize_t)n;
	hid_t sp = n ? H5Screate_simple(1, &dim, NULL) : H5Screate(H5S_SCALAR);
	enum fw_status s;

	if (sp < 0) {
		char d[DETAIL_MAX];
		return fw_errorf(w->err, FW_ERR_INTERNAL, "%s: HDF5 dataspace (%s)", w->path,
				 h5_detail(d));
	}
	s = write_attr(w, loc, name, ft, mt, sp, v);
	H5Sclose(sp);
	return s;
}

/* --- checks on arguments ------------------------------------------------------ */

/* Control characters would break one-line messages. */
static bool has_control(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return true;
	return false;
}

static enum fw_status check_name(const char *path, const struct fw_tensor *t, int i,
				 struct fw_err *err)
{
	size_t len = strnlen(t->name, FW_NAME_MAX);
	if (len == FW_NAME_MAX)
		return fw_errorf(err, FW_ERR_INVALID, "%s: tensor %d: name is not terminated",
				 path, i);
	if (len == 0)
		return fw_errorf(err, FW_ERR_INVALID, "%s: tensor %d has an empty name", path, i);
	if (strchr(t->name, '/'))
		return fw_errorf(err, FW_ERR_INVALID, "%s: tensor '%s': name contains '/'",
				 path, t->name);
	if (!strcmp(t->name, "."))
		return fw_errorf(err, FW_ERR_INVALID, "%s: tensor '.': name is reserved", path);
	if (has_control(t->name))
		return fw_errorf(err, FW_ERR_INVALID,
				 "%s: tensor %d: name contains a control character", path, i);
	return FW_OK;
}

/* A tensor whose contiguous data can be written or read in place. */
static enum fw_status check_tensor(const char *path, const struct fw_tensor *t, int i,
				   struct fw_err *err)
{
	char shp[96];
	enum fw_status s;

	if (!t)
		return fw_errorf(err, FW_ERR_INVALID, "%s: tensor %d is NULL", path, i);
	if ((s = check_name(path, t, i, err)))
		return s;
	if ((unsigned)t->dtype >= FW_DTYPE_COUNT)
		return fw_errorf(err, FW_ERR_INVALID, "%s: tensor '%s' has unknown dtype %d",
				 path, t->name, (int)t->dtype);
	if (t->ndim < 1 || t->ndim > FW_MAX_DIMS)
		return fw_errorf(err, FW_ERR_INVALID, "%s: tensor '%s' has %d dims (1..%d)",
				 path, t->name, t->ndim, FW_MAX_DIMS);
	if (!shape_ok(t->ndim, t->ne))
		return fw_errorf(err, FW_ERR_INVALID, "%s: tensor '%s' has invalid shape %s",
				 path, t->name, shape_str(t->ndim, t->ne, shp, sizeof(shp)));
	if (!fw_is_contiguous(t))
		return fw_errorf(err, FW_ERR_INVALID, "%s: tensor '%s' is not contiguous",
				 path, t->name);
	if (!t->data && fw_nelem(t) > 0)
		return fw_errorf(err, FW_ERR_INVALID, "%s: tensor '%s' has no data", path,
				 t->name);
	return FW_OK;
}

static enum fw_status check_tensors(const char *path, struct fw_tensor *const *tensors,
				    int n, struct fw_err *err)
{
	enum fw_status s;
	if (n < 0 || (n > 0 && !tensors))
		return fw_errorf(err, FW_ERR_INVALID, "%s: bad tensor list (n = %d)", path, n);
	for (int i = 0; i < n; i++)
		if ((s = check_tensor(path, tensors[i], i, err)))
			return s;
	return FW_OK;
}

static enum fw_status check_attrs(const char *path, const struct fw_h5_attr *attrs, int n,
				  struct fw_err *err)
{
	if (n < 0 || (n > 0 && !attrs))
		return fw_errorf(err, FW_ERR_INVALID, "%s: bad attribute list (n = %d)", path, n);
	for (int i = 0; i < n; i++) {
		const char *name = attrs[i].name;
		if (!name || !name[0])
			return fw_errorf(err, FW_ERR_INVALID, "%s: attribute %d has no name", path,
					 i);
		if (has_control(name))
			return fw_errorf(err, FW_ERR_INVALID,
					 "%s: attribute %d: name contains a control character",
					 path, i);
		if (!strcmp(name, "fw_format") || !strcmp(name, "fw_format_version"))
			return fw_errorf(err, FW_ERR_INVALID,
					 "%s: attribute name '%s' is reserved", path, name);
		if (!attrs[i].value)
			return fw_errorf(err, FW_ERR_INVALID, "%s: attribute '%s' has no value",
					 path, name);
	}
	return FW_OK;
}

/* --- reading --------------------------------------------------------------------- */

static hid_t file_access(void)
{
	hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
	if (fapl < 0)
		return fapl;
	/* 1.10 format: checksummed metadata; strong close: no object outlives us */
	if (H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110) < 0 ||
	    H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) < 0) {
		H5Pclose(fapl);
		return H5I_INVALID_HID;
	}
	return fapl;
}

/* Checks the root attributes fw_format and fw_format_version. */
static enum fw_status check_format(const char *path, hid_t file, struct fw_err *err)
{
	enum fw_status s;
	char *fmt = NULL;
	int64_t version;
	int count;

	s = read_str_attr(path, file, NULL, "fw_format", &fmt, err);
	if (s == FW_ERR_NOT_FOUND)
		return fw_errorf(err, FW_ERR_FORMAT,
				 "%s: attribute 'fw_format' missing: not an fw tensor file", path);
	if (s)
		return s;
	if (strcmp(fmt, FW_H5_FORMAT))
		s = fw_errorf(err, FW_ERR_FORMAT,
			      "%s: attribute 'fw_format' is '%.64s', expected '%s'", path, fmt,
			      FW_H5_FORMAT);
	fw_free(fmt);
	if (s)
		return s;
	s = read_int_attr(path, file, NULL, "fw_format_version", &version, 1, &count, err);
	if (s == FW_ERR_NOT_FOUND)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: attribute 'fw_format_version' missing",
				 path);
	if (s)
		return s;
	if (version < 1)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: attribute 'fw_format_version' is %lld",
				 path, (long long)version);
	if (version > FW_H5_VERSION)
		return fw_errorf(err, FW_ERR_UNSUPPORTED,
				 "%s: fw_format_version %lld is newer than this build reads (%d)",
				 path, (long long)version, FW_H5_VERSION);
	return FW_OK;
}

/* Opens an fw tensor file for reading. Files that are missing, not HDF5, or
 * damaged are told apart before HDF5 parses them. */
static enum fw_status open_file(const char *path, hid_t *file, struct fw_err *err)
{
	struct stat sb;
	enum fw_status s;
	hid_t fapl, f;
	htri_t is;
	int fd;

	*file = H5I_INVALID_HID;
	if (!path || !path[0])
		return fw_errorf(err, FW_ERR_INVALID, "HDF5 file: empty path");
	if (stat(path, &sb))
		return fw_errorf(err, FW_ERR_IO, "%s: %s", path, strerror(errno));
	if (S_ISDIR(sb.st_mode))
		return fw_errorf(err, FW_ERR_IO, "%s: %s", path, strerror(EISDIR));
	if (!S_ISREG(sb.st_mode))
		return fw_errorf(err, FW_ERR_IO, "%s: not a regular file", path);
	fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return fw_errorf(err, FW_ERR_IO, "%s: %s", path, strerror(errno));
	s = check_seal(path, fd, (uint64_t)sb.st_size, err);
	close(fd);
	if (s)
		return s;

	is = H5Fis_hdf5(path);
	if (is <= 0)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: not an HDF5 file", path);
	fapl = file_access();
	if (fapl < 0) {
		char d[DETAIL_MAX];
		return fw_errorf(err, FW_ERR_INTERNAL, "%s: HDF5 file access list (%s)", path,
				 h5_detail(d));
	}
	f = H5Fopen(path, H5F_ACC_RDONLY, fapl);
	if (f < 0) {
		s = corrupt(path, NULL, NULL, err);
		H5Pclose(fapl);
		return s;
	}
	H5Pclose(fapl);
	s = check_format(path, f, err);
	if (s) {
		H5Fclose(f);
		return s;
	}
	*file = f;
	return FW_OK;
}

static enum fw_status open_group(const char *path, hid_t file, hid_t *group,
				 struct fw_err *err)
{
	htri_t ex = H5Lexists(file, FW_H5_GROUP, H5P_DEFAULT);
	if (ex < 0)
		return corrupt(path, "group", "/" FW_H5_GROUP, err);
	if (!ex)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: group '/%s' missing", path,
				 FW_H5_GROUP);
	*group = H5Gopen2(file, FW_H5_GROUP, H5P_DEFAULT);
	if (*group < 0)
		return corrupt(path, "group", "/" FW_H5_GROUP, err);
	return FW_OK;
}

/* Opens the dataset of tensor name; FW_ERR_NOT_FOUND when there is none. */
static enum fw_status open_tensor(const char *path, hid_t group, const char *name,
				  hid_t *dset, struct fw_err *err)
{
	htri_t ex = H5Lexists(group, name, H5P_DEFAULT);
	hid_t o;

	*dset = H5I_INVALID_HID;
	if (ex < 0)
		return corrupt(path, "tensor", name, err);
	if (!ex)
		return fw_errorf(err, FW_ERR_NOT_FOUND, "%s: tensor '%s' not found", path, name);
	o = H5Oopen(group, name, H5P_DEFAULT);
	if (o < 0)
		return corrupt(path, "tensor", name, err);
	if (H5Iget_type(o) != H5I_DATASET) {
		H5Oclose(o);
		return fw_errorf(err, FW_ERR_FORMAT, "%s: tensor '%s' is not a dataset", path,
				 name);
	}
	*dset = o;
	return FW_OK;
}

/* What a dataset holds, in fw terms. */
struct desc {
	enum fw_dtype dtype;
	int ndim;
	int64_t ne[FW_MAX_DIMS];
};

/* Reads the dtype (fw_dtype tag, else the stored type) and the logical shape
 * (fw_shape for q4, else the extent) of a dataset, and checks they agree with
 * what is stored. */
static enum fw_status describe(const char *path, const char *name, hid_t dset,
			       struct desc *out, struct fw_err *err)
{
	hid_t ft = H5Dget_type(dset), sp = ft < 0 ? H5I_INVALID_HID : H5Dget_space(dset);
	hsize_t dims[H5S_MAX_RANK];
	char tn[32], shp[96];
	enum fw_status s = FW_OK;
	char *tag = NULL;
	int rank, dt;
	htri_t ex;

	if (ft < 0 || sp < 0 || (rank = H5Sget_simple_extent_ndims(sp)) < 0 ||
	    H5Sget_simple_extent_dims(sp, dims, NULL) < 0) {
		s = corrupt(path, "tensor", name, err);
		goto close;
	}
	ex = H5Aexists(dset, "fw_dtype");
	if (ex < 0) {
		s = corrupt(path, "tensor", name, err);
		goto close;
	}
	if (ex) {
		if ((s = read_str_attr(path, dset, name, "fw_dtype", &tag, err)))
			goto close;
		dt = fw_dtype_from_name(tag);
		if (dt < 0)
			s = fw_errorf(err, FW_ERR_FORMAT,
				      "%s: tensor '%s' has unknown fw_dtype '%.32s'", path, name, tag);
		fw_free(tag);
		if (s)
			goto close;
		if (!type_fits(ft, dt)) {
			s = fw_errorf(err, FW_ERR_FORMAT,
				      "%s: tensor '%s' is tagged %s but stored as %s", path, name,
				      fw_dtype_name(dt), type_name(ft, tn, sizeof(tn)));
			goto close;
		}
	} else {
		dt = infer_dtype(ft);
		if (dt < 0) {
			s = fw_errorf(err, FW_ERR_FORMAT, "%s: tensor '%s' has unsupported type %s",
				      path, name, type_name(ft, tn, sizeof(tn)));
			goto close;
		}
	}
	out->dtype = dt;

	if (dt == FW_Q4) {
		int64_t n;
		s = read_int_attr(path, dset, name, "fw_shape", out->ne, FW_MAX_DIMS, &out->ndim,
				  err);
		if (s == FW_ERR_NOT_FOUND)
			s = fw_errorf(err, FW_ERR_FORMAT, "%s: q4 tensor '%s' has no fw_shape",
				      path, name);
		if (s)
			goto close;
		if (!shape_ok(out->ndim, out->ne)) {
			s = fw_errorf(err, FW_ERR_FORMAT, "%s: tensor '%s' has invalid fw_shape",
				      path, name);
			goto close;
		}
		n = 1;
		for (int i = 0; i < out->ndim; i++)
			n *= out->ne[i];
		if (rank != 1 || dims[0] != (hsize_t)(n + 1) / 2) {
			s = fw_errorf(err, FW_ERR_FORMAT,
				      "%s: q4 tensor '%s' stores %lld bytes, shape %s needs %lld",
				      path, name, rank == 1 ? (long long)dims[0] : -1LL,
				      shape_str(out->ndim, out->ne, shp, sizeof(shp)),
				      (long long)(n + 1) / 2);
			goto close;
		}
	} else {
		if (rank < 1 || rank > FW_MAX_DIMS) {
			s = fw_errorf(err, FW_ERR_FORMAT, "%s: tensor '%s' has %d dims (1..%d)",
				      path, name, rank, FW_MAX_DIMS);
			goto close;
		}
		out->ndim = rank;
		for (int i = 0; i < rank; i++)
			out->ne[i] = dims[i] > INT64_MAX ? -1 : (int64_t)dims[i];
		if (!shape_ok(out->ndim, out->ne)) {
			s = fw_errorf(err, FW_ERR_FORMAT, "%s: tensor '%s' is too large", path,
				      name);
			goto close;
		}
	}
close:
	if (sp >= 0)
		H5Sclose(sp);
	if (ft >= 0)
		H5Tclose(ft);
	return s;
}

/* Opens tensor t's dataset and checks its dtype and shape against t. */
static enum fw_status find_tensor(const char *path, hid_t group, const struct fw_tensor *t,
				  hid_t *dset, struct fw_err *err)
{
	char have[96], want[96];
	struct desc d;
	enum fw_status s;

	if ((s = open_tensor(path, group, t->name, dset, err)))
		return s;
	if ((s = describe(path, t->name, *dset, &d, err)))
		goto close_dset;
	if (d.dtype != t->dtype) {
		s = fw_errorf(err, FW_ERR_SHAPE, "%s: tensor '%s' is %s, expected %s", path,
			      t->name, fw_dtype_name(d.dtype), fw_dtype_name(t->dtype));
		goto close_dset;
	}
	if (d.ndim != t->ndim || memcmp(d.ne, t->ne, sizeof(d.ne[0]) * d.ndim)) {
		s = fw_errorf(err, FW_ERR_SHAPE, "%s: tensor '%s' has shape %s, expected %s",
			      path, t->name, shape_str(d.ndim, d.ne, have, sizeof(have)),
			      shape_str(t->ndim, t->ne, want, sizeof(want)));
		goto close_dset;
	}
	return FW_OK;
close_dset:
	H5Oclose(*dset);
	*dset = H5I_INVALID_HID;
	return s;
}

enum fw_status fw_h5_load(const char *path, struct fw_tensor *const *tensors, int n,
			  struct fw_err *err)
{
	hid_t file, group = H5I_INVALID_HID, dset;
	enum fw_status s;

	h5_quiet();
	if ((s = check_tensors(path ? path : "(null)", tensors, n, err)))
		return s;
	if ((s = open_file(path, &file, err)))
		return s;
	if ((s = open_group(path, file, &group, err)))
		goto close_file;

	/* Check every tensor before writing into any of them. */
	for (int i = 0; i < n; i++) {
		if ((s = find_tensor(path, group, tensors[i], &dset, err)))
			goto close_group;
		H5Oclose(dset);
	}
	for (int i = 0; i < n; i++) {
		struct fw_tensor *t = tensors[i];
		hid_t mt;
		herr_t rc;

		if ((s = find_tensor(path, group, t, &dset, err)))
			goto close_group;
		if (fw_nelem(t) == 0) {
			H5Oclose(dset);
			continue;
		}
		mt = dtype_h5(t->dtype, false);
		rc = mt < 0 ? -1 : H5Dread(dset, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, t->data);
		fw_tensor_mark_written(t);
		if (rc < 0)
			s = corrupt(path, "tensor", t->name, err);
		if (mt >= 0)
			H5Tclose(mt);
		H5Oclose(dset);
		if (s)
			goto close_group;
	}
close_group:
	H5Gclose(group);
close_file:
	H5Fclose(file);
	return s;
}

enum fw_status fw_h5_read_attr(const char *path, const char *name, char **value,
			       struct fw_err *err)
{
	enum fw_status s;
	hid_t file;

	h5_quiet();
	if (!value || !name || !name[0])
		return fw_errorf(err, FW_ERR_INVALID, "%s: bad attribute request",
				 path ? path : "(null)");
	*value = NULL;
	if ((s = open_file(path, &file, err)))
		return s;
	s = read_str_attr(path, file, NULL, name, value, err);
	H5Fclose(file);
	return s;
}

enum fw_status fw_h5_list(const char *path, struct fw_h5_entry **entries, int *n,
			  struct fw_err *err)
{
	hid_t file, group = H5I_INVALID_HID, gcpl, dset;
	H5_index_t order = H5_INDEX_NAME;
	struct fw_h5_entry *e = NULL;
	unsigned crt = 0;
	enum fw_status s;
	H5G_info_t gi;

	h5_quiet();
	if (!entries || !n)
		return fw_errorf(err, FW_ERR_INVALID, "%s: bad list request",
				 path ? path : "(null)");
	*entries = NULL;
	*n = 0;
	if ((s = open_file(path, &file, err)))
		return s;
	if ((s = open_group(path, file, &group, err)))
		goto close_file;
	if (H5Gget_info(group, &gi) < 0) {
		s = corrupt(path, "group", "/" FW_H5_GROUP, err);
		goto close_group;
	}
	if (gi.nlinks > INT_MAX / 2) {
		s = fw_errorf(err, FW_ERR_FORMAT, "%s: %llu tensors is too many", path,
			      (unsigned long long)gi.nlinks);
		goto close_group;
	}
	/* Save order when the writer tracked it (fw does), else by name. */
	gcpl = H5Gget_create_plist(group);
	if (gcpl >= 0 && H5Pget_link_creation_order(gcpl, &crt) >= 0 &&
	    (crt & H5P_CRT_ORDER_INDEXED))
		order = H5_INDEX_CRT_ORDER;
	if (gcpl >= 0)
		H5Pclose(gcpl);

	e = fw_calloc(gi.nlinks ? gi.nlinks : 1, sizeof(*e));
	if (!e) {
		s = fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory listing tensors", path);
		goto close_group;
	}
	for (hsize_t i = 0; i < gi.nlinks; i++) {
		struct desc d;
		ssize_t len = H5Lget_name_by_idx(group, ".", order, H5_ITER_INC, i, e[i].name,
						 FW_NAME_MAX, H5P_DEFAULT);
		if (len < 0) {
			s = corrupt(path, "group", "/" FW_H5_GROUP, err);
			goto free_entries;
		}
		if (len >= FW_NAME_MAX) {
			s = fw_errorf(err, FW_ERR_FORMAT, "%s: tensor name '%s...' is too long",
				      path, e[i].name);
			goto free_entries;
		}
		if ((s = open_tensor(path, group, e[i].name, &dset, err)))
			goto free_entries;
		s = describe(path, e[i].name, dset, &d, err);
		H5Oclose(dset);
		if (s)
			goto free_entries;
		e[i].dtype = d.dtype;
		e[i].ndim = d.ndim;
		memcpy(e[i].ne, d.ne, sizeof(e[i].ne));
	}
	*entries = e;
	*n = (int)gi.nlinks;
	goto close_group;
free_entries:
	fw_free(e);
close_group:
	H5Gclose(group);
close_file:
	H5Fclose(file);
	return s;
}

/* --- writing --------------------------------------------------------------------- */

/* Whole inner rows per chunk, at most CHUNK_BYTES, split evenly along the
 * outermost dimension that does not fit, so no chunk is mostly padding. */
static void chunk_dims(int rank, const hsize_t *dims, hsize_t esize, hsize_t *chunk)
{
	hsize_t inner = esize;
	for (int d = rank - 1; d >= 0; d--) {
		hsize_t fit = CHUNK_BYTES / inner;
		if (dims[d] <= fit) {
			chunk[d] = dims[d];
			inner *= dims[d];
			continue;
		}
		hsize_t pieces = (dims[d] + fit - 1) / fit;
		chunk[d] = (dims[d] + pieces - 1) / pieces;
		while (--d >= 0)
			chunk[d] = 1;
		break;
	}
}

/* Creates the dataset of t and its attributes, without data. */
static enum fw_status create_tensor(struct writer *w, const struct fw_tensor *t)
{
	hid_t ft, sp = H5I_INVALID_HID, dcpl = H5I_INVALID_HID, d = H5I_INVALID_HID;
	hsize_t dims[FW_MAX_DIMS], chunk[FW_MAX_DIMS];
	int64_t n = fw_nelem(t);
	enum fw_status s = FW_OK;
	int rank = t->ndim;
	char why[DETAIL_MAX];
	htri_t ex;

	ex = H5Lexists(w->group, t->name, H5P_DEFAULT);
	if (ex > 0)
		return fw_errorf(w->err, FW_ERR_INVALID, "%s: tensor '%s' given twice", w->path,
				 t->name);
	if (t->dtype == FW_Q4) {
		rank = 1;
		dims[0] = (hsize_t)(n + 1) / 2;
	} else {
		for (int i = 0; i < rank; i++)
			dims[i] = (hsize_t)t->ne[i];
	}
	ft = ex < 0 ? H5I_INVALID_HID : dtype_h5(t->dtype, true);
	if (ft < 0)
		goto fail;
	sp = H5Screate_simple(rank, dims, NULL);
	dcpl = H5Pcreate(H5P_DATASET_CREATE);
	if (sp < 0 || dcpl < 0 || H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) < 0)
		goto fail;
	if (n > 0) {
		/* chunks are allocated when written, i.e. after every heap string */
		chunk_dims(rank, dims, H5Tget_size(ft), chunk);
		if (H5Pset_chunk(dcpl, rank, chunk) < 0 || H5Pset_fletcher32(dcpl) < 0 ||
		    H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_INCR) < 0)
			goto fail;
	}
	d = H5Dcreate2(w->group, t->name, ft, sp, w->lcpl, dcpl, H5P_DEFAULT);
	if (d < 0)
		goto fail;
	if ((s = write_str_attr(w, d, "fw_dtype", fw_dtype_name(t->dtype))))
		goto close;
	if (t->dtype == FW_Q4 && (s = write_int_attr(w, d, "fw_shape", H5T_STD_I64LE,
						     H5T_NATIVE_INT64, t->ne, t->ndim)))
		goto close;
	if (H5Dclose(d) < 0) {
		d = H5I_INVALID_HID;
		goto fail;
	}
	d = H5I_INVALID_HID;
	goto close;
fail:
	s = fw_errorf(w->err, FW_ERR_IO, "%s: cannot create tensor '%s' in %s (%s)", w->path,
		      t->name, w->tmp, h5_detail(why));
close:
	if (d >= 0)
		H5Dclose(d);
	if (dcpl >= 0)
		H5Pclose(dcpl);
	if (sp >= 0)
		H5Sclose(sp);
	if (ft >= 0)
		H5Tclose(ft);
	return s;
}

static enum fw_status write_data(struct writer *w, const struct fw_tensor *t)
{
	hid_t d, mt = H5I_INVALID_HID;
	char why[DETAIL_MAX];

	if (fw_nelem(t) == 0)
		return FW_OK;
	d = H5Dopen2(w->group, t->name, H5P_DEFAULT);
	if (d < 0)
		goto fail;
	mt = dtype_h5(t->dtype, false);
	if (mt < 0 || H5Dwrite(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, t->data) < 0)
		goto fail;
	H5Tclose(mt);
	if (H5Dclose(d) < 0)
		return fw_errorf(w->err, FW_ERR_IO, "%s: cannot write tensor '%s' to %s (%s)",
				 w->path, t->name, w->tmp, h5_detail(why));
	return FW_OK;
fail:
	h5_detail(why);
	if (mt >= 0)
		H5Tclose(mt);
	if (d >= 0)
		H5Dclose(d);
	return fw_errorf(w->err, FW_ERR_IO, "%s: cannot write tensor '%s' to %s (%s)", w->path,
			 t->name, w->tmp, why);
}

/* Writes the whole file to w->tmp and closes it. Objects and attributes come
 * first, raw data after, and w->covered is where the first part ends. */
static enum fw_status write_file(struct writer *w, struct fw_tensor *const *tensors, int n,
				 const struct fw_h5_attr *attrs, int n_attrs)
{
	hid_t fapl, fcpl, gcpl = H5I_INVALID_HID;
	const int32_t version = FW_H5_VERSION;
	enum fw_status s;
	char why[DETAIL_MAX];

	w->lcpl = H5Pcreate(H5P_LINK_CREATE);
	w->acpl = H5Pcreate(H5P_ATTRIBUTE_CREATE);
	if (w->lcpl < 0 || w->acpl < 0 || H5Pset_char_encoding(w->lcpl, H5T_CSET_UTF8) < 0 ||
	    H5Pset_char_encoding(w->acpl, H5T_CSET_UTF8) < 0) {
		s = fw_errorf(w->err, FW_ERR_INTERNAL, "%s: HDF5 property lists (%s)", w->path,
			      h5_detail(why));
		goto close_plists;
	}
	fapl = file_access();
	fcpl = H5Pcreate(H5P_FILE_CREATE);
	if (fapl >= 0 && fcpl >= 0 && H5Pset_userblock(fcpl, SEAL_BYTES) >= 0)
		w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, fcpl, fapl);
	if (w->file < 0)
		h5_detail(why);
	if (fcpl >= 0)
		H5Pclose(fcpl);
	if (fapl >= 0)
		H5Pclose(fapl);
	if (w->file < 0) {
		s = fw_errorf(w->err, FW_ERR_IO, "%s: cannot create %s (%s)", w->path, w->tmp,
			      why);
		goto close_plists;
	}
	if ((s = write_str_attr(w, w->file, "fw_format", FW_H5_FORMAT)))
		goto close_file;
	if ((s = write_int_attr(w, w->file, "fw_format_version", H5T_STD_I32LE,
				H5T_NATIVE_INT32, &version, 0)))
		goto close_file;
	for (int i = 0; i < n_attrs; i++) {
		if (H5Aexists(w->file, attrs[i].name) > 0) {
			s = fw_errorf(w->err, FW_ERR_INVALID, "%s: attribute '%s' given twice",
				      w->path, attrs[i].name);
			goto close_file;
		}
		if ((s = write_str_attr(w, w->file, attrs[i].name, attrs[i].value)))
			goto close_file;
	}

	gcpl = H5Pcreate(H5P_GROUP_CREATE);
	if (gcpl < 0 || H5Pset_link_creation_order(gcpl, H5P_CRT_ORDER_TRACKED |
						   H5P_CRT_ORDER_INDEXED) < 0 ||
	    (w->group = H5Gcreate2(w->file, FW_H5_GROUP, w->lcpl, gcpl, H5P_DEFAULT)) < 0) {
		s = fw_errorf(w->err, FW_ERR_IO, "%s: cannot create group '/%s' in %s (%s)",
			      w->path, FW_H5_GROUP, w->tmp, h5_detail(why));
		goto close_file;
	}
	for (int i = 0; i < n; i++)
		if ((s = create_tensor(w, tensors[i])))
			goto close_group;
	/* Every variable-length string (HDF5's global heap, which has no
	 * checksum of its own) now lies below the end of the file. */
	if (H5Fget_filesize(w->file, &w->covered) < 0) {
		s = fw_errorf(w->err, FW_ERR_IO, "%s: cannot write %s (%s)", w->path, w->tmp,
			      h5_detail(why));
		goto close_group;
	}
	for (int i = 0; i < n; i++)
		if ((s = write_data(w, tensors[i])))
			goto close_group;
close_group:
	H5Gclose(w->group);
close_file:
	if (gcpl >= 0)
		H5Pclose(gcpl);
	/* Closing flushes everything: a failure here is a failed write. */
	if (H5Fclose(w->file) < 0 && !s)
		s = fw_errorf(w->err, FW_ERR_IO, "%s: cannot write %s (%s)", w->path, w->tmp,
			      h5_detail(why));
close_plists:
	if (w->acpl >= 0)
		H5Pclose(w->acpl);
	if (w->lcpl >= 0)
		H5Pclose(w->lcpl);
	return s;
}

/* Writes the seal into the user block of the closed file tmp and fsyncs it. */
static int seal_file(const char *tmp, uint64_t covered)
{
	unsigned char rec[SEAL_REC];
	struct stat sb;
	uint64_t h;
	int fd, e;

	fd = open(tmp, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -1;
	if (fstat(fd, &sb) || hash_range(fd, SEAL_BYTES, covered, &h))
		goto close_fd;
	memset(rec, 0, sizeof(rec));
	memcpy(rec, SEAL_MAGIC, 8);
	put_le(rec + 8, SEAL_VERSION, 4);
	put_le(rec + 16, (uint64_t)sb.st_size, 8);
	put_le(rec + 24, covered, 8);
	put_le(rec + 32, h, 8);
	put_le(rec + 40, fnv1a(FNV_SEED, rec, 40), 8);
	if (pwrite(fd, rec, sizeof(rec), 0) != (ssize_t)sizeof(rec)) {
		if (!errno)
			errno = EIO;
		goto close_fd;
	}
	if (fsync(fd))
		goto close_fd;
	return close(fd);
close_fd:
	e = errno;
	close(fd);
	errno = e;
	return -1;
}

/* fsyncs a directory; EINVAL means its file system cannot. */
static int sync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int rc, e;

	if (fd < 0)
		return -1;
	rc = fsync(fd);
	e = errno;
	close(fd);
	if (rc && e == EINVAL)
		return 0;
	errno = e;
	return rc;
}

/* The directory part of path: "." when there is none. */
static char *dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');
	size_t len = !slash ? 1 : slash == path ? 1 : (size_t)(slash - path);
	char *d = fw_malloc(len + 1);

	if (!d)
		return NULL;
	memcpy(d, slash ? path : ".", len);
	d[len] = '\0';
	return d;
}

enum fw_status fw_h5_save(const char *path, struct fw_tensor *const *tensors, int n,
			  const struct fw_h5_attr *attrs, int n_attrs, struct fw_err *err)
{
	struct writer w = { .path = path, .err = err, .file = H5I_INVALID_HID,
			    .group = H5I_INVALID_HID };
	char *tmp, *dir = NULL;
	enum fw_status s;
	size_t len;
	int fd;

	h5_quiet();
	if (!path || !path[0])
		return fw_errorf(err, FW_ERR_INVALID, "HDF5 file: empty path");
	if ((s = check_tensors(path, tensors, n, err)) ||
	    (s = check_attrs(path, attrs, n_attrs, err)))
		return s;

	len = strlen(path) + 32;
	tmp = fw_malloc(len);
	if (!tmp)
		return fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", path);
	snprintf(tmp, len, "%s.tmp.%d", path, (int)getpid());
	w.tmp = tmp;
	/* Create it ourselves first, for a plain errno message when we cannot. */
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
	if (fd < 0) {
		s = fw_errorf(err, FW_ERR_IO, "%s: cannot create %s: %s", path, tmp,
			      strerror(errno));
		goto free_tmp;
	}
	close(fd);

	if ((s = write_file(&w, tensors, n, attrs, n_attrs)))
		goto unlink_tmp;
	errno = 0;
	if (seal_file(tmp, w.covered)) {
		s = fw_errorf(err, FW_ERR_IO, "%s: cannot write %s: %s", path, tmp,
			      strerror(errno));
		goto unlink_tmp;
	}
	dir = dir_of(path);
	if (!dir) {
		s = fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", path);
		goto unlink_tmp;
	}
	if (rename(tmp, path)) {
		s = fw_errorf(err, FW_ERR_IO, "%s: cannot rename %s to it: %s", path, tmp,
			      strerror(errno));
		goto unlink_tmp;
	}
	/* The new file is in place; this makes the rename itself durable. */
	if (sync_dir(dir))
		s = fw_errorf(err, FW_ERR_IO, "%s: written, but syncing directory %s failed: %s",
			      path, dir, strerror(errno));
	goto free_dir;
unlink_tmp:
	unlink(tmp);
free_dir:
	fw_free(dir);
free_tmp:
	fw_free(tmp);
	return s;
}
