/* test_rt_checkpoint.c - the checkpoint schema (fw/runtime/checkpoint.h):
 * a round trip of parameters, optimizer state and every attribute; a plain
 * weights file told from a checkpoint; run-directory names and the newest
 * file of a directory. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "fw/runtime.h"

static char dir[] = "/tmp/fw_rt_ckpt.XXXXXX";

/* Two parameters and one "optimizer state" tensor per parameter in a new
 * context, filled from seed. */
static struct fw_ctx *make(uint64_t seed, struct fw_tensor **p, struct fw_tensor **s)
{
	struct fw_ctx *ctx = fw_ctx_new();
	p[0] = fw_param(ctx, "w", FW_F32, 2, (int64_t[]){ 3, 4 }, true);
	p[1] = fw_param(ctx, "b", FW_F32, 1, (int64_t[]){ 4 }, true);
	ck_assert_int_eq(fw_ctx_alloc_params(ctx), FW_OK);
	struct fwt_rng rng = fwt_rng_new(seed);
	for (int i = 0; i < 2; i++) {
		fwt_fill_uniform(p[i]->data, fw_nelem(p[i]), &rng, -1, 1);
		s[i] = calloc(1, sizeof(*s[i]));
		*s[i] = (struct fw_tensor){ .dtype = FW_F32, .ndim = p[i]->ndim };
		memcpy(s[i]->ne, p[i]->ne, sizeof(s[i]->ne));
		fw_set_contiguous_strides(s[i]);
		snprintf(s[i]->name, sizeof(s[i]->name), "optim.%.60s.exp_avg", p[i]->name);
		s[i]->data = fw_ctx_alloc(ctx, fw_nbytes(s[i]), FW_MEM_OPTIMIZER);
		fwt_fill_uniform(s[i]->data, fw_nelem(s[i]), &rng, -1, 1);
	}
	return ctx;
}

START_TEST(test_round_trip)
{
	struct fw_tensor *p[2], *s[2], *q[2], *t[2];
	struct fw_err err = { 0 };
	char path[256];
	snprintf(path, sizeof(path), "%s/ckpt-00000042.h5", dir);
	struct fw_ctx *a = make(1, p, s), *b = make(2, q, t);
	const struct fw_rt_ckpt_meta meta = {
		.config = "[run]\nlr = 0.001\n", .optimizer = "optim/adamw", .tokenizer = "byte",
		.step = 42, .data_epoch = 3, .data_cursor = 17, .tokens = 123456789012, .seed = 7,
	};
	ck_assert_msg(fw_rt_ckpt_save(path, p, 2, s, 2, &meta, &err) == FW_OK, "%s", err.msg);
	/* tensors: parameters and state by name */
	ck_assert_int_eq(fw_h5_load(path, q, 2, &err), FW_OK);
	ck_assert_int_eq(fw_h5_load(path, t, 2, &err), FW_OK);
	for (int i = 0; i < 2; i++) {
		ck_assert(!memcmp(p[i]->data, q[i]->data, fw_nbytes(p[i])));
		ck_assert(!memcmp(s[i]->data, t[i]->data, fw_nbytes(s[i])));
	}
	struct fw_h5_entry *e = NULL;
	int n = 0;
	ck_assert_int_eq(fw_h5_list(path, &e, &n, &err), FW_OK);
	ck_assert_int_eq(n, 4);
	ck_assert_str_eq(e[0].name, "w");                  /* parameters first, then state */
	ck_assert_str_eq(e[2].name, "optim.w.exp_avg");
	fw_free(e);
	/* attributes */
	bool is_ckpt = false;
	ck_assert_int_eq(fw_rt_ckpt_probe(path, &is_ckpt, &err), FW_OK);
	ck_assert(is_ckpt);
	struct fw_rt_ckpt_meta got = { .seed = -1 };
	ck_assert_int_eq(fw_rt_ckpt_read_progress(path, &got, &err), FW_OK);
	ck_assert_int_eq(got.step, 42);
	ck_assert_int_eq(got.data_epoch, 3);
	ck_assert_int_eq(got.data_cursor, 17);
	ck_assert_int_eq(got.tokens, 123456789012);
	ck_assert_int_eq(got.seed, -1);                    /* left as it was */
	char *v = NULL;
	ck_assert_int_eq(fw_rt_ckpt_read_config(path, &v, &err), FW_OK);
	ck_assert_str_eq(v, meta.config);
	fw_free(v);
	static const char *const attrs[][2] = { { "optimizer", "optim/adamw" }, { "seed", "7" },
						{ FW_CKPT_ATTR_TOKENIZER, "byte" },
						{ FW_CKPT_ATTR_MARK, "1" } };
	for (int i = 0; i < 4; i++) {
		ck_assert_int_eq(fw_h5_read_attr(path, attrs[i][0], &v, &err), FW_OK);
		ck_assert_str_eq(v, attrs[i][1]);
		fw_free(v);
	}
	/* without a tokenizer the attribute is absent */
	struct fw_rt_ckpt_meta bare = meta;
	bare.tokenizer = NULL;
	ck_assert_int_eq(fw_rt_ckpt_save(path, p, 2, NULL, 0, &bare, &err), FW_OK);
	ck_assert_int_eq(fw_h5_read_attr(path, FW_CKPT_ATTR_TOKENIZER, &v, &err), FW_ERR_NOT_FOUND);
	unlink(path);
	/* a plain weights file is no checkpoint; a missing file is an error */
	snprintf(path, sizeof(path), "%s/weights.h5", dir);
	ck_assert_int_eq(fw_h5_save(path, p, 2, NULL, 0, &err), FW_OK);
	ck_assert_int_eq(fw_rt_ckpt_probe(path, &is_ckpt, &err), FW_OK);
	ck_assert(!is_ckpt);
	ck_assert_int_eq(fw_rt_ckpt_read_progress(path, &got, &err), FW_ERR_NOT_FOUND);
	unlink(path);
	ck_assert_int_eq(fw_rt_ckpt_probe(path, &is_ckpt, &err), FW_ERR_IO);
	for (int i = 0; i < 2; i++) {
		free(s[i]);
		free(t[i]);
	}
	fw_ctx_free(a);
	fw_ctx_free(b);
}
END_TEST

START_TEST(test_names)
{
	ck_assert_int_eq(fw_rt_numbered_name("ckpt-00000042.h5", "ckpt-", ".h5"), 42);
	ck_assert_int_eq(fw_rt_numbered_name("adapter-7.h5", "adapter-", ".h5"), 7);
	static const char *const bad[] = { "ckpt-.h5", "ckpt-+5.h5", "ckpt- 5.h5", "ckpt-5.h5.h5",
					   "ckpt-5.h5.tmp.123", "ckpt-5.h5~", "xckpt-5.h5",
					   "ckpt-99999999999999999999999.h5" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(fw_rt_numbered_name(bad[i], "ckpt-", ".h5") == -1, "%s", bad[i]);
}
END_TEST

START_TEST(test_newest)
{
	static const char *const files[] = { "ckpt-00000002.h5", "ckpt-00000010.h5",
					     "ckpt-00000011.h5.tmp.123", "ckpt-+99.h5",
					     "adapter-00000012.h5" };
	char sub[300], path[400], out[400];
	struct fw_err err = { 0 };
	snprintf(sub, sizeof(sub), "%s/run", dir);
	ck_assert_int_eq(fw_dir_make(sub, &err), FW_OK);
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", sub, files[i]);
		ck_assert_int_eq(fw_file_write_atomic(path, "x", 1, &err), FW_OK);
	}
	snprintf(path, sizeof(path), "%s/ckpt-00000099.h5", sub);   /* a directory: skipped */
	ck_assert_int_eq(mkdir(path, 0777), 0);
	ck_assert_int_eq(fw_rt_newest_file(sub, "ckpt-", out, sizeof(out), &err), FW_OK);
	snprintf(path, sizeof(path), "%s/ckpt-00000010.h5", sub);
	ck_assert_str_eq(out, path);
	ck_assert_int_eq(fw_rt_newest_file(sub, "adapter-", out, sizeof(out), &err), FW_OK);
	snprintf(path, sizeof(path), "%s/adapter-00000012.h5", sub);
	ck_assert_str_eq(out, path);
	ck_assert_int_eq(fw_rt_newest_file(sub, "none-", out, sizeof(out), &err), FW_OK);
	ck_assert_str_eq(out, "");
	ck_assert_int_eq(fw_rt_newest_file(path, "ckpt-", out, sizeof(out), &err), FW_OK);
	ck_assert_str_eq(out, path);                        /* a file is taken as it is */
	snprintf(path, sizeof(path), "%s/missing", sub);
	ck_assert_int_eq(fw_rt_newest_file(path, "ckpt-", out, sizeof(out), &err), FW_ERR_IO);
}
END_TEST

/* The INI text of a stored configuration: keys before any section are
 * [run]'s; comments, blank lines and spaces are skipped. */
START_TEST(test_ini)
{
	const char *text = "plugins = arch/decoder, peft/lora\n# comment\n\n[run]\n"
			   "lr = 0.001  \n[peft/lora]\n  lora-r = 8\n; x = 1\n";
	char *v = fw_rt_ini_lookup(text, "run", "plugins");
	ck_assert_str_eq(v, "arch/decoder, peft/lora");
	free(v);
	v = fw_rt_ini_lookup(text, "run", "lr");
	ck_assert_str_eq(v, "0.001");
	free(v);
	v = fw_rt_ini_lookup(text, "peft/lora", "lora-r");
	ck_assert_str_eq(v, "8");
	free(v);
	ck_assert_ptr_null(fw_rt_ini_lookup(text, "peft/lora", "x"));
	ck_assert_ptr_null(fw_rt_ini_lookup(text, "run", "lora-r"));
}
END_TEST

struct ini_seen {
	char got[16][3][1100];
	int line[16];
	int n;
	int refuse_line;            /* the callback refuses this line */
};

static int ini_record(void *arg, const char *section, const char *key, const char *value,
		      int line)
{
	struct ini_seen *s = arg;
	ck_assert_int_lt(s->n, 16);
	snprintf(s->got[s->n][0], 1100, "%s", section);
	snprintf(s->got[s->n][1], 1100, "%s", key ? key : "(section)");
	snprintf(s->got[s->n][2], 1100, "%s", value ? value : "");
	s->line[s->n++] = line;
	return line != s->refuse_line;
}

/* The reader's syntax as fw/runtime/ini.h states it (libinih's): line
 * numbers, section lines, "key: value", inline " ;" comments, a BOM, values
 * far longer than libinih's 199 bytes, and the first bad line's number. */
START_TEST(test_ini_parse)
{
	char long_value[1001];
	memset(long_value, 'x', 1000);
	long_value[1000] = '\0';
	char text[1400];
	snprintf(text, sizeof(text), "\xEF\xBB\xBFtop = 1\r\n[ run ]\nprompt = %s\n"
		 "data: a.txt ; the corpus\nsemi = a;b\n\n  [peft/lora]  \n"
		 "no separator here\nlora-r=8\n[broken\n", long_value);
	struct ini_seen s = { .refuse_line = 0 };
	ck_assert_int_eq(fw_rt_ini_parse(text, ini_record, &s), 8);   /* first bad line */
	ck_assert_int_eq(s.n, 7);
	const char *want[6][3] = { { "", "top", "1" }, { "run", "(section)", "" },
				   { "run", "prompt", long_value }, { "run", "data", "a.txt" },
				   { "run", "semi", "a;b" }, { "peft/lora", "(section)", "" } };
	const int want_line[6] = { 1, 2, 3, 4, 5, 7 };
	for (int i = 0; i < 5; i++) {
		ck_assert_str_eq(s.got[i][0], want[i][0]);
		ck_assert_str_eq(s.got[i][1], want[i][1]);
		ck_assert_str_eq(s.got[i][2], want[i][2]);
		ck_assert_int_eq(s.line[i], want_line[i]);
	}
	ck_assert_str_eq(s.got[5][0], "peft/lora");
	ck_assert_int_eq(s.line[5], 7);
	ck_assert_str_eq(s.got[6][1], "lora-r");      /* read after the bad line 8 */
	ck_assert_str_eq(s.got[6][2], "8");
	ck_assert_int_eq(s.line[6], 9);
	struct ini_seen t = { .refuse_line = 4 };
	ck_assert_int_eq(fw_rt_ini_parse(text, ini_record, &t), 4);   /* refused by the callback */
	ck_assert_int_eq(t.n, 7);
	struct ini_seen u = { 0 };
	char missing[600];
	snprintf(missing, sizeof(missing), "%s/no-such.ini", dir);
	ck_assert_int_eq(fw_rt_ini_parse_file(missing, ini_record, &u), -1);
}
END_TEST

int main(void)
{
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 2;
	}
	Suite *s = suite_create("rt_checkpoint");
	TCase *tc = fwt_tcase("checkpoint", 60);
	tcase_add_test(tc, test_round_trip);
	tcase_add_test(tc, test_names);
	tcase_add_test(tc, test_newest);
	tcase_add_test(tc, test_ini);
	tcase_add_test(tc, test_ini_parse);
	suite_add_tcase(s, tc);
	int rc = fwt_run_suite(s);
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		rc = rc ? rc : 1;
	return rc;
}
