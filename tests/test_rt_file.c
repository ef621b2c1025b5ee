/* test_rt_file.c - durable writes (fw/runtime/file.h): the new bytes or the
 * old, never a temporary file left behind. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "fw/runtime.h"

static char *read_all(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	char *buf = calloc(1, 4096);
	size_t n = fread(buf, 1, 4095, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

static int n_entries(const char *dir)
{
	DIR *d = opendir(dir);
	int n = 0;
	for (struct dirent *e; d && (e = readdir(d));)
		n += e->d_name[0] != '.';
	if (d)
		closedir(d);
	return n;
}

START_TEST(test_write_replace)
{
	char dir[] = "/tmp/fw_rt_file.XXXXXX", path[512], nested[256];
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(nested, sizeof(nested), "%s/a/b/c", dir);
	struct fw_err err = { 0 };
	ck_assert_int_eq(fw_dir_make(nested, &err), FW_OK);
	ck_assert_int_eq(fw_dir_make(nested, &err), FW_OK);        /* exists: fine */
	snprintf(path, sizeof(path), "%s/config.ini", nested);
	ck_assert_int_eq(fw_file_write_atomic(path, "old\n", 4, &err), FW_OK);
	ck_assert_int_eq(fw_file_write_atomic(path, "new text\n", 9, &err), FW_OK);
	char *got = read_all(path);
	ck_assert_str_eq(got, "new text\n");
	free(got);
	ck_assert_int_eq(n_entries(nested), 1);                    /* no PATH.tmp.PID */
	ck_assert_int_eq(fw_file_write_atomic(path, "", 0, &err), FW_OK);
	got = read_all(path);
	ck_assert_str_eq(got, "");
	free(got);

	char tmp[600];
	ck_assert_int_eq(fw_file_tmp_name(path, tmp, sizeof(tmp), &err), FW_OK);
	char want[600];
	snprintf(want, sizeof(want), "%s.tmp.%d", path, (int)getpid());
	ck_assert_str_eq(tmp, want);
	ck_assert_int_eq(fw_dir_sync(nested, &err), FW_OK);
	unlink(path);
	rmdir(nested);
	snprintf(nested, sizeof(nested), "%s/a/b", dir);
	rmdir(nested);
	snprintf(nested, sizeof(nested), "%s/a", dir);
	rmdir(nested);
	rmdir(dir);
}
END_TEST

START_TEST(test_write_fails_cleanly)
{
	struct fw_err err = { 0 };
	ck_assert_int_eq(fw_file_write_atomic("/nonexistent-dir/x/config.ini", "x", 1, &err),
			 FW_ERR_IO);
	ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent-dir/x/config.ini"));
	ck_assert_int_eq(fw_dir_sync("/nonexistent-dir", &err), FW_ERR_IO);
	/* a commit whose target cannot be made removes the temporary file */
	char dir[] = "/tmp/fw_rt_file.XXXXXX", tmp[256], path[256];
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(tmp, sizeof(tmp), "%s/t.tmp.1", dir);
	FILE *f = fopen(tmp, "w");
	ck_assert_ptr_nonnull(f);
	fclose(f);
	snprintf(path, sizeof(path), "%s/missing/t", dir);
	ck_assert_int_eq(fw_file_commit(tmp, path, &err), FW_ERR_IO);
	ck_assert_int_eq(n_entries(dir), 0);
	rmdir(dir);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("rt_file");
	TCase *tc = fwt_tcase("file", 30);
	tcase_add_test(tc, test_write_replace);
	tcase_add_test(tc, test_write_fails_cleanly);
	suite_add_tcase(s, tc);
	return fwt_run_suite(s);
}
