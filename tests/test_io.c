/* test_io.c - HDF5 tensor files (fw/io.h): bit-exact round trips of every
 * dtype, attributes, interop with h5py and h5dump, listing, every error case,
 * damaged files, atomic replacement, injected allocation failures, and
 * threads. Files go to a mkdtemp() directory that is removed at the end. */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hdf5.h>

#include "fw/io.h"
#include "harness.h"

#define PY "/usr/bin/python3"

static char root[64];            /* the mkdtemp() directory of this run */

/* Every error message is one line that names the file. */
#define ck_one_line(msg) \
	ck_assert_msg(!strchr(msg, '\n') && (msg)[0], "not one line: '%s'", msg)
#define ck_has(msg, s) \
	ck_assert_msg(strstr(msg, s) != NULL, "'%s' does not contain '%s'", msg, s)
#define ck_status(got, want, err) \
	ck_assert_msg((got) == (want), "status %s, want %s: %s", fw_status_str(got), \
		      fw_status_str(want), (err).msg)

/* --- fixture and helpers ---------------------------------------------------- */

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(p);
}

static void setup_root(void)
{
	snprintf(root, sizeof(root), "/tmp/fw-test-io.XXXXXX");
	if (!mkdtemp(root)) {
		perror("mkdtemp");
		abort();
	}
}

static void teardown_root(void)
{
	nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh directory for one test: ROOT/name. */
static const char *test_dir(const char *name)
{
	static char d[256];
	snprintf(d, sizeof(d), "%s/%s", root, name);
	ck_assert_int_eq(mkdir(d, 0755), 0);
	return d;
}

static char *join(const char *dir, const char *file)
{
	char *p = NULL;
	ck_assert_int_ge(asprintf(&p, "%s/%s", dir, file), 0);
	return p;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

/* A hand-built contiguous tensor with random bytes (every bit pattern,
 * NaN payloads included). Not from a context: tests free it with rm(). */
static struct fw_tensor *mk(const char *name, enum fw_dtype dt, int ndim, ...)
{
	struct fw_tensor *t = calloc(1, sizeof(*t));
	va_list ap;

	ck_assert_ptr_nonnull(t);
	snprintf(t->name, sizeof(t->name), "%s", name);
	t->dtype = dt;
	t->ndim = ndim;
	va_start(ap, ndim);
	for (int i = 0; i < ndim; i++)
		t->ne[i] = va_arg(ap, int64_t);
	va_end(ap);
	fw_set_contiguous_strides(t);
	size_t nb = fw_nbytes(t);
	t->data = malloc(nb ? nb : 1);
	ck_assert_ptr_nonnull(t->data);
	for (size_t i = 0; i < nb; i++)
		((unsigned char *)t->data)[i] = (unsigned char)rnd();
	return t;
}

/* Same name, dtype and shape as t, data zeroed: a load target. */
static struct fw_tensor *like(const struct fw_tensor *t)
{
	struct fw_tensor *u = malloc(sizeof(*u));
	ck_assert_ptr_nonnull(u);
	*u = *t;
	u->data = calloc(1, fw_nbytes(t) ? fw_nbytes(t) : 1);
	ck_assert_ptr_nonnull(u->data);
	return u;
}

static void rm(struct fw_tensor *t)
{
	if (t) {
		free(t->data);
		free(t);
	}
}

static bool same_data(const struct fw_tensor *a, const struct fw_tensor *b)
{
	return fw_nbytes(a) == fw_nbytes(b) && !memcmp(a->data, b->data, fw_nbytes(a));
}

static unsigned char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	unsigned char *buf;
	long n;

	ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc(n ? n : 1);
	ck_assert_ptr_nonnull(buf);
	ck_assert_int_eq(fread(buf, 1, n, f), n);
	fclose(f);
	*len = (size_t)n;
	return buf;
}

static void spit(const char *path, const void *buf, size_t len)
{
	FILE *f = fopen(path, "wb");
	ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
	ck_assert_int_eq(fwrite(buf, 1, len, f), len);
	ck_assert_int_eq(fclose(f), 0);
}

/* How many names in dir contain ".tmp.". */
static int count_tmp(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d)))
		n += strstr(e->d_name, ".tmp.") != NULL;
	closedir(d);
	return n;
}

static int count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d)))
		n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
	closedir(d);
	return n;
}

static int count_fds(void)
{
	return count_entries("/proc/self/fd");
}

/* Runs a shell command, its output into out (malloc'd); returns the exit code. */
static int run(const char *cmd, char **out)
{
	char *full = NULL, *outfile = join(root, "cmd.out");
	size_t len;
	int rc;

	ck_assert_int_ge(asprintf(&full, "%s >%s 2>&1", cmd, outfile), 0);
	rc = system(full);
	*out = (char *)slurp(outfile, &len);
	*out = realloc(*out, len + 1);
	(*out)[len] = '\0';
	unlink(outfile);
	free(outfile);
	free(full);
	return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static bool have_h5py(void)
{
	char *out = NULL;
	bool ok = access(PY, X_OK) == 0 && run(PY " -c 'import h5py'", &out) == 0;

	free(out);
	if (!ok)
		fprintf(stderr, "test_io: %s with h5py not available, interop check skipped\n", PY);
	return ok;
}

/* A small file with one tensor of each dtype and a few attributes. */
#define N_SAMPLE 6
static struct fw_tensor *sample[N_SAMPLE];
static const struct fw_h5_attr sample_attrs[] = {
	{ "config", "[model]\nn_layer = 2\n" }, { "step", "42" },
};

static void make_sample(void)
{
	sample[0] = mk("h.0.attn.c_attn.weight", FW_F32, 2, (int64_t)64, (int64_t)48);
	sample[1] = mk("h.0.ln_1.bias", FW_BF16, 1, (int64_t)100);
	sample[2] = mk("wte.q", FW_Q4, 2, (int64_t)3, (int64_t)5);
	sample[3] = mk("ids", FW_I32, 2, (int64_t)5, (int64_t)5);
	sample[4] = mk("lm_head.f16", FW_F16, 3, (int64_t)2, (int64_t)3, (int64_t)4);
	sample[5] = mk("optim.h.0.ln_1.bias.m", FW_F32, 1, (int64_t)100);
}

static void free_sample(void)
{
	for (int i = 0; i < N_SAMPLE; i++) {
		rm(sample[i]);
		sample[i] = NULL;
	}
}

static void save_sample(const char *path)
{
	struct fw_err err = { 0 };
	enum fw_status s = fw_h5_save(path, sample, N_SAMPLE, sample_attrs, 2, &err);
	ck_status(s, FW_OK, err);
}

/* Loads every sample tensor; on FW_OK checks the data is bit-identical. */
static enum fw_status load_sample(const char *path, struct fw_err *err)
{
	struct fw_tensor *got[N_SAMPLE];
	enum fw_status s;

	for (int i = 0; i < N_SAMPLE; i++)
		got[i] = like(sample[i]);
	s = fw_h5_load(path, got, N_SAMPLE, err);
	for (int i = 0; i < N_SAMPLE; i++) {
		if (s == FW_OK)
			ck_assert_msg(same_data(got[i], sample[i]), "%s: '%s' loaded wrong data",
				      path, sample[i]->name);
		rm(got[i]);
	}
	return s;
}

/* --- round trips -------------------------------------------------------------- */

START_TEST(test_roundtrip_dtypes)
{
	const char *dir = test_dir("roundtrip");
	char *path = join(dir, "all.h5");
	struct fw_tensor *t[12], *got[12];
	struct fw_err err = { 0 };
	int n = 0;

	t[n++] = mk("h.0.attn.c_attn.weight", FW_F32, 2, (int64_t)3, (int64_t)4);
	t[n++] = mk("f32.big", FW_F32, 2, (int64_t)1100, (int64_t)1024); /* 2 chunks */
	t[n++] = mk("f32.one", FW_F32, 1, (int64_t)1);
	t[n++] = mk("i32.4d", FW_I32, 4, (int64_t)2, (int64_t)3, (int64_t)4, (int64_t)5);
	t[n++] = mk("f16.all", FW_F16, 1, (int64_t)65536);
	t[n++] = mk("f16.4d", FW_F16, 4, (int64_t)2, (int64_t)1, (int64_t)3, (int64_t)2);
	t[n++] = mk("bf16.all", FW_BF16, 2, (int64_t)256, (int64_t)256);
	t[n++] = mk("q4.odd", FW_Q4, 2, (int64_t)3, (int64_t)5);
	t[n++] = mk("q4.even", FW_Q4, 3, (int64_t)2, (int64_t)4, (int64_t)8);
	t[n++] = mk("f32.empty", FW_F32, 2, (int64_t)0, (int64_t)4);
	/* every f16 and bf16 bit pattern, NaNs and subnormals included */
	for (int i = 0; i < 65536; i++) {
		((uint16_t *)t[4]->data)[i] = (uint16_t)i;
		((uint16_t *)t[6]->data)[i] = (uint16_t)(65535 - i);
	}
	/* f32 specials: -0, inf, a signalling NaN with payload, a subnormal */
	uint32_t sp[4] = { 0x80000000u, 0x7f800000u, 0x7f800001u, 0x00000001u };
	memcpy(t[0]->data, sp, sizeof(sp));

	ck_status(fw_h5_save(path, t, n, NULL, 0, &err), FW_OK, err);
	for (int i = 0; i < n; i++)
		got[i] = like(t[i]);
	ck_status(fw_h5_load(path, got, n, &err), FW_OK, err);
	for (int i = 0; i < n; i++) {
		ck_assert_msg(same_data(got[i], t[i]), "'%s' not bit-exact", t[i]->name);
		rm(got[i]);
	}
	/* a subset, in another order */
	got[0] = like(t[7]);
	got[1] = like(t[0]);
	ck_status(fw_h5_load(path, got, 2, &err), FW_OK, err);
	ck_assert(same_data(got[0], t[7]) && same_data(got[1], t[0]));
	rm(got[0]);
	rm(got[1]);
	for (int i = 0; i < n; i++)
		rm(t[i]);
	ck_assert_int_eq(count_tmp(dir), 0);
	free(path);
}
END_TEST

START_TEST(test_attrs)
{
	const char *dir = test_dir("attrs");
	char *path = join(dir, "a.h5"), *big = malloc(100001), *v = NULL;
	struct fw_tensor *t = mk("w", FW_F32, 1, (int64_t)3);
	struct fw_err err = { 0 };
	enum fw_status s;

	for (int i = 0; i < 100000; i++)
		big[i] = i % 64 == 63 ? '\n' : 'a' + i % 26;
	big[100000] = '\0';
	const struct fw_h5_attr attrs[] = {
		{ "config", big }, { "empty", "" }, { "utf8", "h\xc3\xa9llo \xe2\x9c\x93" },
		{ "step", "42" }, { "optimizer", "optim/adamw" },
	};
	ck_status(fw_h5_save(path, &t, 1, attrs, 5, &err), FW_OK, err);
	for (int i = 0; i < 5; i++) {
		ck_status(fw_h5_read_attr(path, attrs[i].name, &v, &err), FW_OK, err);
		ck_assert_str_eq(v, attrs[i].value);
		fw_free(v);
	}
	ck_status(fw_h5_read_attr(path, "fw_format", &v, &err), FW_OK, err);
	ck_assert_str_eq(v, "fw-tensors");
	fw_free(v);

	/* missing: NOT_FOUND, names the file and the attribute */
	s = fw_h5_read_attr(path, "fw_checkpoint", &v, &err);
	ck_status(s, FW_ERR_NOT_FOUND, err);
	ck_assert_ptr_null(v);
	ck_one_line(err.msg);
	ck_has(err.msg, path);
	ck_has(err.msg, "'fw_checkpoint'");
	/* not a string */
	s = fw_h5_read_attr(path, "fw_format_version", &v, &err);
	ck_status(s, FW_ERR_FORMAT, err);
	ck_has(err.msg, path);
	ck_has(err.msg, "'fw_format_version'");

	/* reserved and repeated names are refused before anything is written */
	char *p2 = join(dir, "b.h5");
	const struct fw_h5_attr reserved[] = { { "fw_format", "x" } };
	s = fw_h5_save(p2, &t, 1, reserved, 1, &err);
	ck_status(s, FW_ERR_INVALID, err);
	ck_has(err.msg, p2);
	ck_has(err.msg, "'fw_format'");
	const struct fw_h5_attr twice[] = { { "step", "1" }, { "step", "2" } };
	s = fw_h5_save(p2, &t, 1, twice, 2, &err);
	ck_status(s, FW_ERR_INVALID, err);
	ck_has(err.msg, p2);
	ck_has(err.msg, "'step'");
	const struct fw_h5_attr null_value[] = { { "step", NULL } };
	s = fw_h5_save(p2, &t, 1, null_value, 1, &err);
	ck_status(s, FW_ERR_INVALID, err);
	ck_has(err.msg, "'step'");
	ck_assert_int_eq(access(p2, F_OK), -1);
	ck_assert_int_eq(count_entries(dir), 1);

	rm(t);
	free(big);
	free(p2);
	free(path);
}
END_TEST

START_TEST(test_list)
{
	const char *dir = test_dir("list");
	char *path = join(dir, "l.h5"), *empty = join(dir, "empty.h5");
	struct fw_h5_entry *e = NULL;
	struct fw_err err = { 0 };
	int n = -1;

	make_sample();
	save_sample(path);
	ck_status(fw_h5_list(path, &e, &n, &err), FW_OK, err);
	ck_assert_int_eq(n, N_SAMPLE);
	/* save order, not alphabetical */
	for (int i = 0; i < N_SAMPLE; i++) {
		ck_assert_str_eq(e[i].name, sample[i]->name);
		ck_assert_int_eq(e[i].dtype, sample[i]->dtype);
		ck_assert_int_eq(e[i].ndim, sample[i]->ndim);
		for (int d = 0; d < e[i].ndim; d++)
			ck_assert_int_eq(e[i].ne[d], sample[i]->ne[d]);
	}
	ck_assert_int_eq(e[2].dtype, FW_Q4);  /* logical shape, not bytes */
	ck_assert_int_eq(e[2].ne[1], 5);
	fw_free(e);

	ck_status(fw_h5_save(empty, NULL, 0, NULL, 0, &err), FW_OK, err);
	ck_status(fw_h5_list(empty, &e, &n, &err), FW_OK, err);
	ck_assert_int_eq(n, 0);
	fw_free(e);
	free_sample();
	free(empty);
	free(path);
}
END_TEST

/* --- other tools read our files, we read theirs ----------------------------------- */

static const char h5py_check[] =
	"import sys, h5py, numpy as np\n"
	"f = h5py.File(sys.argv[1], 'r')\n"
	"a = f.attrs\n"
	"for k, v in [('fw_format', 'fw-tensors'), ('config', 'a=1\\nb=2'), ('name', 'h\\u00e9llo')]:\n"
	"    assert isinstance(a[k], str) and a[k] == v, (k, a[k])\n"
	"assert int(a['fw_format_version']) == 1\n"
	"t = f['tensors']\n"
	"assert sorted(t.keys()) == ['q.q4', 'w.f32', 'x.i32', 'y.f16', 'z.bf16'], list(t.keys())\n"
	"for k in t:\n"
	"    assert isinstance(t[k].attrs['fw_dtype'], str), k\n"
	"d = t['w.f32']\n"
	"assert d.dtype == np.float32 and d.shape == (2, 3) and d.attrs['fw_dtype'] == 'f32'\n"
	"assert (d[()] == np.arange(6, dtype=np.float32).reshape(2, 3)).all()\n"
	"d = t['x.i32']\n"
	"assert d.dtype == np.int32 and list(d[()]) == [-1, 0, 7]\n"
	"d = t['y.f16']\n"
	"assert d.dtype == np.float16 and list(d[()]) == [1.0, -2.5] and d.attrs['fw_dtype'] == 'f16'\n"
	"d = t['z.bf16']\n"
	"assert d.dtype == np.uint16 and d.attrs['fw_dtype'] == 'bf16'\n"
	"assert list((d[()].astype(np.uint32) << 16).view(np.float32)) == [1.0, -2.5]\n"
	"d = t['q.q4']\n"
	"assert d.dtype == np.uint8 and d.shape == (2,) and d.attrs['fw_dtype'] == 'q4'\n"
	"assert d.attrs['fw_shape'].dtype == np.int64 and list(d.attrs['fw_shape']) == [3]\n"
	"assert list(d[()]) == [0x21, 0x03]\n"
	"print('ok')\n";

START_TEST(test_h5py_reads)
{
	const char *dir = test_dir("h5py");
	char *path = join(dir, "py.h5"), *script = join(dir, "check.py"), *cmd, *out;
	struct fw_tensor *t[5];
	struct fw_err err = { 0 };

	if (!have_h5py())
		return;
	t[0] = mk("w.f32", FW_F32, 2, (int64_t)2, (int64_t)3);
	for (int i = 0; i < 6; i++)
		fw_f32(t[0])[i] = (float)i;
	t[1] = mk("x.i32", FW_I32, 1, (int64_t)3);
	fw_i32(t[1])[0] = -1, fw_i32(t[1])[1] = 0, fw_i32(t[1])[2] = 7;
	t[2] = mk("y.f16", FW_F16, 1, (int64_t)2);
	((uint16_t *)t[2]->data)[0] = fw_f32_to_f16(1.0f);
	((uint16_t *)t[2]->data)[1] = fw_f32_to_f16(-2.5f);
	t[3] = mk("z.bf16", FW_BF16, 1, (int64_t)2);
	((uint16_t *)t[3]->data)[0] = fw_f32_to_bf16(1.0f);
	((uint16_t *)t[3]->data)[1] = fw_f32_to_bf16(-2.5f);
	t[4] = mk("q.q4", FW_Q4, 1, (int64_t)3);
	((uint8_t *)t[4]->data)[0] = 0x21, ((uint8_t *)t[4]->data)[1] = 0x03;
	const struct fw_h5_attr attrs[] = { { "config", "a=1\nb=2" }, { "name", "h\xc3\xa9llo" } };
	ck_status(fw_h5_save(path, t, 5, attrs, 2, &err), FW_OK, err);

	spit(script, h5py_check, strlen(h5py_check));
	ck_assert_int_ge(asprintf(&cmd, PY " %s %s", script, path), 0);
	int rc = run(cmd, &out);
	ck_assert_msg(rc == 0 && strstr(out, "ok"), "h5py check failed (%d): %s", rc, out);
	free(out);
	free(cmd);
	for (int i = 0; i < 5; i++)
		rm(t[i]);
	free(script);
	free(path);
}
END_TEST

static const char h5py_write[] =
	"import sys, h5py, numpy as np\n"
	"with h5py.File(sys.argv[1], 'w') as f:\n"
	"    f.attrs['fw_format'] = 'fw-tensors'\n"
	"    f.attrs['fw_format_version'] = 1\n"
	"    f.attrs['fixed'] = np.bytes_(b'fixed-len')\n"
	"    g = f.create_group('tensors')\n"
	"    g['c'] = np.array([0.5, -1], dtype=np.float16)\n"
	"    g['a'] = np.arange(6, dtype=np.float32).reshape(2, 3)\n"
	"    g['b'] = np.array([1, -2, 3], dtype=np.int32)\n"
	"with h5py.File(sys.argv[2], 'w') as f:\n"
	"    f.attrs['fw_format'] = 'fw-tensors'\n"
	"    f.attrs['fw_format_version'] = 1\n"
	"    f.create_group('tensors')['d'] = np.zeros(3)\n";

/* Files written by h5py without fw_dtype tags: dtypes come from HDF5 types. */
START_TEST(test_h5py_writes)
{
	const char *dir = test_dir("h5py-w");
	char *good = join(dir, "good.h5"), *f64 = join(dir, "f64.h5");
	char *script = join(dir, "write.py"), *cmd, *out, *v;
	struct fw_h5_entry *e;
	struct fw_err err = { 0 };
	int n;

	if (!have_h5py())
		return;
	spit(script, h5py_write, strlen(h5py_write));
	ck_assert_int_ge(asprintf(&cmd, PY " %s %s %s", script, good, f64), 0);
	ck_assert_msg(run(cmd, &out) == 0, "h5py failed: %s", out);
	free(out);

	ck_status(fw_h5_list(good, &e, &n, &err), FW_OK, err);
	ck_assert_int_eq(n, 3);  /* no creation order: by name */
	ck_assert_str_eq(e[0].name, "a");
	ck_assert_int_eq(e[0].dtype, FW_F32);
	ck_assert_int_eq(e[0].ndim, 2);
	ck_assert_str_eq(e[1].name, "b");
	ck_assert_int_eq(e[1].dtype, FW_I32);
	ck_assert_str_eq(e[2].name, "c");
	ck_assert_int_eq(e[2].dtype, FW_F16);
	fw_free(e);

	struct fw_tensor *a = mk("a", FW_F32, 2, (int64_t)2, (int64_t)3);
	struct fw_tensor *c = mk("c", FW_F16, 1, (int64_t)2);
	struct fw_tensor *ts[2] = { a, c };
	ck_status(fw_h5_load(good, ts, 2, &err), FW_OK, err);
	for (int i = 0; i < 6; i++)
		ck_assert(fw_f32(a)[i] == (float)i);
	ck_assert(fw_f16_to_f32(((uint16_t *)c->data)[1]) == -1.0f);
	ck_status(fw_h5_read_attr(good, "fixed", &v, &err), FW_OK, err);
	ck_assert_str_eq(v, "fixed-len");
	fw_free(v);

	enum fw_status s = fw_h5_list(f64, &e, &n, &err);
	ck_status(s, FW_ERR_FORMAT, err);
	ck_has(err.msg, f64);
	ck_has(err.msg, "'d'");
	ck_has(err.msg, "f64");
	rm(a);
	rm(c);
	free(cmd);
	free(script);
	free(f64);
	free(good);
}
END_TEST

START_TEST(test_h5dump)
{
	const char *dir = test_dir("h5dump");
	char *path = join(dir, "d.h5"), *cmd, *out;
	static const char *const want[] = {
		"ATTRIBUTE \"fw_format\"", "ATTRIBUTE \"fw_format_version\"", "GROUP \"tensors\"",
		"DATASET \"h.0.attn.c_attn.weight\"", "H5T_IEEE_F32LE", "H5T_STD_I32LE",
		"H5T_STD_U16LE", "H5T_STD_U8LE", "ATTRIBUTE \"fw_dtype\"", "ATTRIBUTE \"fw_shape\"",
		"H5T_CSET_UTF8",
	};

	if (system("command -v h5dump >/dev/null 2>&1") != 0) {
		fprintf(stderr, "test_io: h5dump not found, check skipped\n");
		return;
	}
	make_sample();
	save_sample(path);
	ck_assert_int_ge(asprintf(&cmd, "h5dump -H %s", path), 0);
	int rc = run(cmd, &out);
	ck_assert_msg(rc == 0, "h5dump -H failed (%d): %s", rc, out);
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		ck_has(out, want[i]);
	free(out);
	free(cmd);
	free_sample();
	free(path);
}
END_TEST

/* --- errors --------------------------------------------------------------------------- */

/* Open HDF5 files and objects in them (1.10 cannot count transient types,
 * spaces or property lists): a call that returns must leave none. */
static long h5_ids(void)
{
	return (long)H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
}

typedef enum fw_status (*reader_fn)(const char *path, struct fw_err *err);

static enum fw_status do_load(const char *path, struct fw_err *err)
{
	return load_sample(path, err);
}

static enum fw_status do_list(const char *path, struct fw_err *err)
{
	struct fw_h5_entry *e = NULL;
	int n = 0;
	enum fw_status s = fw_h5_list(path, &e, &n, err);
	if (s == FW_OK)
		fw_free(e);
	else
		ck_assert(e == NULL && n == 0);
	return s;
}

static enum fw_status do_attr(const char *path, struct fw_err *err)
{
	char *v = NULL;
	enum fw_status s = fw_h5_read_attr(path, "config", &v, err);
	if (s == FW_OK)
		fw_free(v);
	else
		ck_assert_ptr_null(v);
	return s;
}

static const reader_fn readers[] = { do_load, do_list, do_attr };
#define N_READERS 3

/* Runs reader r and checks it left no HDF5 identifier open. */
static enum fw_status rd(int r, const char *path, struct fw_err *err)
{
	long ids = h5_ids();
	enum fw_status s = readers[r](path, err);
	ck_assert_msg(h5_ids() == ids, "%s: %ld HDF5 ids leaked (%s)", path, h5_ids() - ids,
		      err->msg);
	return s;
}

START_TEST(test_err_missing)
{
	const char *dir = test_dir("missing");
	char *path = join(dir, "nope.h5"), want[512];
	struct fw_err err;

	make_sample();
	snprintf(want, sizeof(want), "%s: No such file or directory", path);
	for (int r = 0; r < N_READERS; r++) {
		ck_status(rd(r, path, &err), FW_ERR_IO, err);
		ck_assert_str_eq(err.msg, want);
	}
	/* a directory is not a file */
	for (int r = 0; r < N_READERS; r++) {
		ck_status(rd(r, dir, &err), FW_ERR_IO, err);
		ck_has(err.msg, dir);
		ck_one_line(err.msg);
	}
	free_sample();
	free(path);
}
END_TEST

START_TEST(test_err_not_hdf5)
{
	const char *dir = test_dir("not-hdf5");
	char *text = join(dir, "text.h5"), *empty = join(dir, "empty.h5"), want[512];
	const char *files[] = { text, empty };
	struct fw_err err;

	make_sample();
	spit(text, "this is not an HDF5 file at all, just some text\n", 48);
	spit(empty, "", 0);
	for (int f = 0; f < 2; f++) {
		snprintf(want, sizeof(want), "%s: not an HDF5 file", files[f]);
		for (int r = 0; r < N_READERS; r++) {
			ck_status(rd(r, files[f], &err), FW_ERR_FORMAT, err);
			ck_assert_str_eq(err.msg, want);
		}
	}
	free_sample();
	free(empty);
	free(text);
}
END_TEST

START_TEST(test_err_truncated)
{
	const char *dir = test_dir("truncated");
	char *good = join(dir, "good.h5"), *cut = join(dir, "cut.h5");
	struct fw_err err;
	unsigned char *buf;
	size_t len;

	make_sample();
	save_sample(good);
	buf = slurp(good, &len);
	ck_assert_int_gt(len, 4096);
	ck_status(load_sample(good, &err), FW_OK, err);

	/* the named cases give the full message */
	size_t named[] = { len / 2, len * 9 / 10, len - 1 };
	for (int i = 0; i < 3; i++) {
		spit(cut, buf, named[i]);
		for (int r = 0; r < N_READERS; r++) {
			ck_status(rd(r, cut, &err), FW_ERR_FORMAT, err);
			ck_one_line(err.msg);
			ck_has(err.msg, cut);
			ck_has(err.msg, "corrupt or truncated HDF5 file (");
		}
	}
	/* the same without the seal: HDF5's own end-of-file check */
	memset(buf, 0, 8);
	for (int i = 0; i < 3; i++) {
		spit(cut, buf, named[i]);
		for (int r = 0; r < N_READERS; r++) {
			ck_status(rd(r, cut, &err), FW_ERR_FORMAT, err);
			ck_one_line(err.msg);
			ck_has(err.msg, cut);
			ck_has(err.msg, "corrupt or truncated HDF5 file (");
		}
	}
	/* any length: an error, never a crash */
	for (size_t l = 0; l < len; l += len / 61 + 1) {
		spit(cut, buf, l);
		for (int r = 0; r < N_READERS; r++) {
			ck_status(rd(r, cut, &err), FW_ERR_FORMAT, err);
			ck_one_line(err.msg);
			ck_has(err.msg, cut);
		}
	}
	free(buf);
	free_sample();
	free(cut);
	free(good);
}
END_TEST

START_TEST(test_err_corrupt)
{
	const char *dir = test_dir("corrupt");
	char *good = join(dir, "good.h5"), *bad = join(dir, "bad.h5");
	struct fw_err err;
	unsigned char *buf, *copy;
	size_t len;
	int detected = 0, iters = 300;

	if (getenv("FW_TEST_IO_DAMAGE"))  /* more rounds, for a longer hunt */
		iters = atoi(getenv("FW_TEST_IO_DAMAGE"));
	make_sample();
	save_sample(good);
	buf = slurp(good, &len);
	copy = malloc(len);

	/* random bytes in the middle (tensor data): the checksum catches it */
	memcpy(copy, buf, len);
	for (size_t i = len / 2; i < len / 2 + 64; i++)
		copy[i] ^= (unsigned char)(rnd() | 1);
	spit(bad, copy, len);
	ck_status(load_sample(bad, &err), FW_ERR_FORMAT, err);
	ck_one_line(err.msg);
	ck_has(err.msg, bad);
	ck_has(err.msg, "corrupt or truncated HDF5 file (tensor '");

	/* random damage anywhere: an error, or (damage in unused bytes) the
	 * right data; never a crash, never wrong numbers */
	int fds = count_fds();
	for (int k = 0; k < iters; k++) {
		size_t at = rnd() % len, n = 1 + rnd() % 16;
		memcpy(copy, buf, len);
		for (size_t i = at; i < at + n && i < len; i++)
			copy[i] ^= (unsigned char)(rnd() | 1);
		spit(bad, copy, len);
		for (int r = 0; r < N_READERS; r++) {
			enum fw_status s = rd(r, bad, &err);
			ck_assert_msg(s == FW_OK || s == FW_ERR_FORMAT,
				      "damage at %zu+%zu: %s: %s", at, n, fw_status_str(s), err.msg);
			if (s) {
				ck_one_line(err.msg);
				ck_has(err.msg, bad);
			}
			detected += r == 0 && s != FW_OK;
		}
	}
	ck_assert_int_eq(count_fds(), fds);
	ck_assert_int_gt(detected, iters * 2 / 3);
	free(copy);
	free(buf);
	free_sample();
	free(bad);
	free(good);
}
END_TEST

static uint64_t le64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/* The seal in the user block covers every global heap collection (HDF5's
 * unchecksummed part), even when the small strings fill several. */
START_TEST(test_seal)
{
	const char *dir = test_dir("seal");
	char *path = join(dir, "s.h5"), *bad = join(dir, "bad.h5");
	struct fw_tensor *t[300];
	struct fw_err err;
	unsigned char *buf;
	size_t len, first = 0;
	int heaps = 0;

	make_sample();
	for (int i = 0; i < 300; i++) {
		char name[32];
		snprintf(name, sizeof(name), "h.%d.mlp.c_proj.weight", i);
		t[i] = mk(name, i % 2 ? FW_BF16 : FW_F32, 2, (int64_t)4, (int64_t)8);
	}
	ck_status(fw_h5_save(path, t, 300, sample_attrs, 2, &err), FW_OK, err);
	buf = slurp(path, &len);
	ck_assert(!memcmp(buf, "fw-h5sum", 8));
	ck_assert_int_eq(le64(buf + 16), len);
	uint64_t covered = le64(buf + 24);
	ck_assert(covered > 512 && covered < len);
	for (size_t i = 512; i + 16 <= len; i++) {
		if (memcmp(buf + i, "GCOL", 4))
			continue;
		ck_assert_msg(i + le64(buf + i + 8) <= covered, "heap at %zu past %llu", i,
			      (unsigned long long)covered);
		if (!heaps++)
			first = i;
	}
	ck_assert_int_ge(heaps, 2);

	/* a damaged heap object size is caught before HDF5 reads it */
	buf[first + 16 + 8] ^= 0x40;
	spit(bad, buf, len);
	for (int r = 0; r < N_READERS; r++) {
		ck_status(rd(r, bad, &err), FW_ERR_FORMAT, err);
		ck_has(err.msg, bad);
		ck_has(err.msg, "checksum mismatch");
	}
	buf[first + 16 + 8] ^= 0x40;
	/* a damaged seal */
	buf[30] ^= 1;
	spit(bad, buf, len);
	ck_status(do_list(bad, &err), FW_ERR_FORMAT, err);
	ck_has(err.msg, "damaged fw seal");
	buf[30] ^= 1;
	/* a byte too many */
	buf = realloc(buf, len + 1);
	buf[len] = 0;
	spit(bad, buf, len + 1);
	ck_status(do_list(bad, &err), FW_ERR_FORMAT, err);
	ck_has(err.msg, "were written");
	/* no seal (another writer, or bytes 0-7 cleared): HDF5's checks only */
	memset(buf, 0, 8);
	spit(bad, buf, len);
	struct fw_h5_entry *e;
	int n;
	ck_status(fw_h5_list(bad, &e, &n, &err), FW_OK, err);
	ck_assert_int_eq(n, 300);
	fw_free(e);

	for (int i = 0; i < 300; i++)
		rm(t[i]);
	free_sample();
	free(buf);
	free(bad);
	free(path);
}
END_TEST

/* A bare HDF5 file, as another program might write it. */
static void raw_file(const char *path, const char *fmt, int version, bool group)
{
	hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
	ck_assert_int_ge(f, 0);
	if (fmt) {
		hid_t t = H5Tcopy(H5T_C_S1), sp = H5Screate(H5S_SCALAR);
		H5Tset_size(t, H5T_VARIABLE);
		hid_t a = H5Acreate2(f, "fw_format", t, sp, H5P_DEFAULT, H5P_DEFAULT);
		ck_assert_int_ge(H5Awrite(a, t, &fmt), 0);
		H5Aclose(a);
		H5Sclose(sp);
		H5Tclose(t);
	}
	if (version >= 0) {
		hid_t sp = H5Screate(H5S_SCALAR);
		hid_t a = H5Acreate2(f, "fw_format_version", H5T_STD_I32LE, sp, H5P_DEFAULT,
				     H5P_DEFAULT);
		ck_assert_int_ge(H5Awrite(a, H5T_NATIVE_INT, &version), 0);
		H5Aclose(a);
		H5Sclose(sp);
	}
	if (group)
		H5Gclose(H5Gcreate2(f, "tensors", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
	ck_assert_int_ge(H5Fclose(f), 0);
}

START_TEST(test_err_fw_format)
{
	const char *dir = test_dir("fw-format");
	char *path = join(dir, "raw.h5");
	struct fw_err err;

	make_sample();
	raw_file(path, NULL, 1, true);
	for (int r = 0; r < N_READERS; r++) {
		ck_status(rd(r, path, &err), FW_ERR_FORMAT, err);
		ck_one_line(err.msg);
		ck_has(err.msg, path);
		ck_has(err.msg, "'fw_format'");
	}
	raw_file(path, "something-else", 1, true);
	for (int r = 0; r < N_READERS; r++) {
		ck_status(rd(r, path, &err), FW_ERR_FORMAT, err);
		ck_has(err.msg, "'fw_format'");
	}
	raw_file(path, "fw-tensors", -1, true);
	ck_status(do_list(path, &err), FW_ERR_FORMAT, err);
	ck_has(err.msg, "'fw_format_version'");
	raw_file(path, "fw-tensors", 2, true);
	for (int r = 0; r < N_READERS; r++) {
		ck_status(rd(r, path, &err), FW_ERR_UNSUPPORTED, err);
		ck_has(err.msg, path);
		ck_has(err.msg, "fw_format_version 2");
	}
	raw_file(path, "fw-tensors", 1, false);
	ck_status(do_list(path, &err), FW_ERR_FORMAT, err);
	ck_has(err.msg, path);
	ck_has(err.msg, "'/tensors'");
	/* the smallest valid file: no tensors */
	raw_file(path, "fw-tensors", 1, true);
	ck_status(do_list(path, &err), FW_OK, err);
	free_sample();
	free(path);
}
END_TEST

START_TEST(test_err_load_mismatch)
{
	const char *dir = test_dir("mismatch");
	char *path = join(dir, "m.h5"), want[512];
	struct fw_tensor *w = mk("w", FW_F32, 2, (int64_t)3, (int64_t)4);
	struct fw_tensor *b = mk("b", FW_BF16, 1, (int64_t)4);
	struct fw_tensor *q = mk("q", FW_Q4, 2, (int64_t)3, (int64_t)5);
	struct fw_tensor *saved[] = { w, b, q }, *x;
	struct fw_err err;

	ck_status(fw_h5_save(path, saved, 3, NULL, 0, &err), FW_OK, err);

	x = mk("nope", FW_F32, 1, (int64_t)3);
	ck_status(fw_h5_load(path, &x, 1, &err), FW_ERR_NOT_FOUND, err);
	snprintf(want, sizeof(want), "%s: tensor 'nope' not found", path);
	ck_assert_str_eq(err.msg, want);
	rm(x);

	x = mk("b", FW_F32, 1, (int64_t)4);
	ck_status(fw_h5_load(path, &x, 1, &err), FW_ERR_SHAPE, err);
	snprintf(want, sizeof(want), "%s: tensor 'b' is bf16, expected f32", path);
	ck_assert_str_eq(err.msg, want);
	rm(x);

	x = mk("w", FW_F32, 2, (int64_t)4, (int64_t)3);
	ck_status(fw_h5_load(path, &x, 1, &err), FW_ERR_SHAPE, err);
	snprintf(want, sizeof(want), "%s: tensor 'w' has shape [3, 4], expected [4, 3]", path);
	ck_assert_str_eq(err.msg, want);
	rm(x);

	x = mk("w", FW_F32, 1, (int64_t)12);
	ck_status(fw_h5_load(path, &x, 1, &err), FW_ERR_SHAPE, err);
	ck_has(err.msg, "expected [12]");
	rm(x);

	x = mk("q", FW_Q4, 2, (int64_t)5, (int64_t)3);  /* same bytes, other shape */
	ck_status(fw_h5_load(path, &x, 1, &err), FW_ERR_SHAPE, err);
	snprintf(want, sizeof(want), "%s: tensor 'q' has shape [3, 5], expected [5, 3]", path);
	ck_assert_str_eq(err.msg, want);
	rm(x);

	/* the first mismatch is named, and nothing was written before it */
	struct fw_tensor *ok = like(w), *bad1 = mk("b", FW_BF16, 1, (int64_t)5);
	struct fw_tensor *bad2 = mk("missing", FW_F32, 1, (int64_t)1), *req[] = { ok, bad1, bad2 };
	memset(ok->data, 0xab, fw_nbytes(ok));
	ck_status(fw_h5_load(path, req, 3, &err), FW_ERR_SHAPE, err);
	ck_has(err.msg, "'b'");
	for (size_t i = 0; i < fw_nbytes(ok); i++)
		ck_assert_int_eq(((unsigned char *)ok->data)[i], 0xab);
	rm(ok);
	rm(bad1);
	rm(bad2);

	/* a load target needs data and a valid name */
	x = like(w);
	free(x->data);
	x->data = NULL;
	ck_status(fw_h5_load(path, &x, 1, &err), FW_ERR_INVALID, err);
	ck_has(err.msg, path);
	ck_has(err.msg, "'w'");
	rm(x);
	for (int i = 0; i < 3; i++)
		rm(saved[i]);
	free(path);
}
END_TEST

START_TEST(test_err_save_invalid)
{
	const char *dir = test_dir("save-invalid");
	char *path = join(dir, "s.h5");
	struct fw_tensor *good = mk("good", FW_F32, 1, (int64_t)4), *t, *ts[2];
	struct fw_err err;
	static const struct { const char *name, *expect; } cases[] = {
		{ "a/b", "'a/b'" }, { "", "empty name" }, { "nodata", "'nodata'" },
		{ "strided", "'strided'" }, { "dims0", "'dims0'" }, { "dims5", "'dims5'" },
		{ "dtype", "'dtype'" }, { "negative", "'negative'" }, { ".", "'.'" },
		{ "new\nline", "control character" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		t = mk(cases[i].name, FW_F32, 2, (int64_t)2, (int64_t)3);
		if (!strcmp(cases[i].name, "nodata")) {
			free(t->data);
			t->data = NULL;
		} else if (!strcmp(cases[i].name, "strided")) {
			t->nb[0] = 4;
		} else if (!strcmp(cases[i].name, "dims0")) {
			t->ndim = 0;
		} else if (!strcmp(cases[i].name, "dims5")) {
			t->ndim = 5;
		} else if (!strcmp(cases[i].name, "dtype")) {
			t->dtype = (enum fw_dtype)99;
		} else if (!strcmp(cases[i].name, "negative")) {
			t->ne[1] = -3;
		}
		ts[0] = good;
		ts[1] = t;
		enum fw_status s = fw_h5_save(path, ts, 2, NULL, 0, &err);
		ck_status(s, FW_ERR_INVALID, err);
		ck_one_line(err.msg);
		ck_has(err.msg, path);
		ck_has(err.msg, cases[i].expect);
		ck_assert_int_eq(count_entries(dir), 0);
		rm(t);
	}
	ts[0] = NULL;
	ck_status(fw_h5_save(path, ts, 1, NULL, 0, &err), FW_ERR_INVALID, err);
	ck_status(fw_h5_save(path, NULL, 1, NULL, 0, &err), FW_ERR_INVALID, err);
	ck_status(fw_h5_save("", &good, 1, NULL, 0, &err), FW_ERR_INVALID, err);

	/* a directory that does not exist */
	char *nodir = join(dir, "no/such/dir/x.h5");
	ck_status(fw_h5_save(nodir, &good, 1, NULL, 0, &err), FW_ERR_IO, err);
	ck_one_line(err.msg);
	ck_has(err.msg, nodir);
	ck_has(err.msg, "No such file or directory");
	ck_assert_int_eq(count_entries(dir), 0);
	free(nodir);
	rm(good);
	free(path);
}
END_TEST

/* --- atomic replacement ------------------------------------------------------------ */

START_TEST(test_atomic)
{
	const char *dir = test_dir("atomic");
	char *path = join(dir, "ckpt.h5"), *stale;
	struct fw_tensor *w2 = mk("w2", FW_F32, 1, (int64_t)7), *t, *ts[2];
	unsigned char *before, *after;
	size_t lb, la;
	struct fw_err err;

	make_sample();
	save_sample(path);
	before = slurp(path, &lb);

	/* fails on the second tensor: no data, a bad name (checked up front), a
	 * repeated name (found while writing, after the temporary file exists) */
	for (int k = 0; k < 3; k++) {
		t = mk(k == 1 ? "x/y" : k == 2 ? "w2" : "nodata", FW_F32, 1, (int64_t)7);
		if (k == 0) {
			free(t->data);
			t->data = NULL;
		}
		ts[0] = w2;
		ts[1] = t;
		ck_status(fw_h5_save(path, ts, 2, sample_attrs, 2, &err), FW_ERR_INVALID, err);
		ck_has(err.msg, path);
		ck_one_line(err.msg);
		after = slurp(path, &la);
		ck_assert(la == lb && !memcmp(before, after, lb));
		free(after);
		ck_status(load_sample(path, &err), FW_OK, err);
		ck_assert_int_eq(count_tmp(dir), 0);
		ck_assert_int_eq(count_entries(dir), 1);
		rm(t);
	}

	/* a stale temporary file of ours does not get in the way */
	ck_assert_int_ge(asprintf(&stale, "%s.tmp.%d", path, (int)getpid()), 0);
	spit(stale, "junk", 4);
	ck_status(fw_h5_save(path, &w2, 1, NULL, 0, &err), FW_OK, err);
	ck_assert_int_eq(count_tmp(dir), 0);
	t = like(w2);
	ck_status(fw_h5_load(path, &t, 1, &err), FW_OK, err);
	ck_assert(same_data(t, w2));
	ck_status(load_sample(path, &err), FW_ERR_NOT_FOUND, err);
	rm(t);

	/* a relative path (directory ".") */
	char *cwd = getcwd(NULL, 0);
	ck_assert_int_eq(chdir(dir), 0);
	ck_status(fw_h5_save("rel.h5", &w2, 1, NULL, 0, &err), FW_OK, err);
	ck_assert_int_eq(chdir(cwd), 0);
	ck_assert_int_eq(count_tmp(dir), 0);
	ck_assert_int_eq(count_entries(dir), 2);
	free(cwd);
	free(stale);
	free(before);
	rm(w2);
	free_sample();
	free(path);
}
END_TEST

/* --- allocation failures ---------------------------------------------------------- */

static enum fw_status do_save(const char *path, struct fw_err *err)
{
	return fw_h5_save(path, sample, N_SAMPLE, sample_attrs, 2, err);
}

START_TEST(test_alloc_fail)
{
	const char *dir = test_dir("alloc");
	char *path = join(dir, "f.h5");
	static const reader_fn calls[] = { do_save, do_load, do_list, do_attr };
	static const char *const names[] = { "save", "load", "list", "read_attr" };
	unsigned char *before, *after;
	size_t lb, la;
	struct fw_err err;

	make_sample();
	save_sample(path);
	before = slurp(path, &lb);
	int fds = count_fds();
	for (int c = 0; c < 4; c++) {
		int n;
		enum fw_status s = FW_ERR_NOMEM;
		for (n = 1; n < 1000 && s != FW_OK; n++) {
			long ids = h5_ids();
			fwt_fail_alloc_at(n);
			s = calls[c](path, &err);
			ck_assert_int_eq(h5_ids(), ids);
			fwt_alloc_restore();
			ck_assert_msg(s == FW_OK || s == FW_ERR_NOMEM, "%s, failing allocation %d: %s",
				      names[c], n, err.msg);
			ck_assert_msg(fwt_alloc_live() == 0, "%s, failing allocation %d: %d leaked",
				      names[c], n, fwt_alloc_live());
			ck_assert_int_eq(count_tmp(dir), 0);
			if (s) {
				ck_one_line(err.msg);
				ck_has(err.msg, path);
			}
			if (s && c == 0) {  /* a failed save leaves the old file */
				after = slurp(path, &la);
				ck_assert(la == lb && !memcmp(before, after, lb));
				free(after);
			}
		}
		ck_assert_msg(s == FW_OK, "%s never succeeded", names[c]);
		ck_assert_msg(n > 2, "%s made no allocation", names[c]);
	}
	ck_assert_int_eq(count_fds(), fds);
	free(before);
	free_sample();
	free(path);
}
END_TEST

/* --- threads and quiet errors ------------------------------------------------------- */

struct job {
	const char *dir, *shared;
	int id;
	int failures;
	char msg[600];
};

/* Each thread saves, lists and loads its own files, and hits errors. */
static void *worker(void *arg)
{
	struct job *j = arg;
	char path[256], missing[256];
	struct fw_err err;

	snprintf(path, sizeof(path), "%s/t%d.h5", j->dir, j->id);
	snprintf(missing, sizeof(missing), "%s/missing%d.h5", j->dir, j->id);
	for (int k = 0; k < 10; k++) {
		if (do_save(path, &err) || load_sample(path, &err) || do_list(path, &err) ||
		    do_attr(path, &err) || do_list(missing, &err) != FW_ERR_IO ||
		    load_sample(j->shared, &err) || do_list(j->shared, &err)) {
			j->failures++;
			snprintf(j->msg, sizeof(j->msg), "thread %d: %s", j->id, err.msg);
		}
	}
	return NULL;
}

START_TEST(test_threads_quiet)
{
	const char *dir = test_dir("threads");
	char *errlog = join(dir, "stderr.txt"), *junk = join(dir, "junk.h5");
	char *shared = join(dir, "shared.h5");
	struct job jobs[4];
	pthread_t th[4];
	struct fw_err err;
	size_t len;
	int saved;

	make_sample();
	save_sample(shared);
	spit(junk, "\x89HDF\r\n\x1a\n garbage after a signature", 34);
	/* HDF5 must print nothing, on this thread or on new ones */
	fflush(stderr);
	saved = dup(2);
	int fd = open(errlog, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	ck_assert_int_ge(fd, 0);
	dup2(fd, 2);
	close(fd);
	for (int i = 0; i < 4; i++) {
		jobs[i] = (struct job){ .dir = dir, .shared = shared, .id = i };
		ck_assert_int_eq(pthread_create(&th[i], NULL, worker, &jobs[i]), 0);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	enum fw_status s = do_list(junk, &err);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);

	ck_status(s, FW_ERR_FORMAT, err);
	ck_has(err.msg, junk);
	for (int i = 0; i < 4; i++)
		ck_assert_msg(jobs[i].failures == 0, "%s", jobs[i].msg);
	char *out = (char *)slurp(errlog, &len);
	ck_assert_msg(len == 0, "HDF5 printed: %.*s", (int)(len > 300 ? 300 : len), out);
	free(out);
	free_sample();
	free(shared);
	free(junk);
	free(errlog);
}
END_TEST

static Suite *io_suite(void)
{
	Suite *s = suite_create("io");
	TCase *tc;

	tc = tcase_create("roundtrip");
	tcase_add_unchecked_fixture(tc, setup_root, teardown_root);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_roundtrip_dtypes);
	tcase_add_test(tc, test_attrs);
	tcase_add_test(tc, test_list);
	suite_add_tcase(s, tc);

	tc = tcase_create("interop");
	tcase_add_unchecked_fixture(tc, setup_root, teardown_root);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_h5py_reads);
	tcase_add_test(tc, test_h5py_writes);
	tcase_add_test(tc, test_h5dump);
	suite_add_tcase(s, tc);

	tc = tcase_create("errors");
	tcase_add_unchecked_fixture(tc, setup_root, teardown_root);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_err_missing);
	tcase_add_test(tc, test_err_not_hdf5);
	tcase_add_test(tc, test_err_truncated);
	tcase_add_test(tc, test_err_corrupt);
	tcase_add_test(tc, test_seal);
	tcase_add_test(tc, test_err_fw_format);
	tcase_add_test(tc, test_err_load_mismatch);
	tcase_add_test(tc, test_err_save_invalid);
	suite_add_tcase(s, tc);

	tc = tcase_create("robustness");
	tcase_add_unchecked_fixture(tc, setup_root, teardown_root);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_atomic);
	tcase_add_test(tc, test_alloc_fail);
	tcase_add_test(tc, test_threads_quiet);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(io_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
