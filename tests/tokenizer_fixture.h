/* tokenizer_fixture.h - what test_tokenizer.c and test_tokenizer_hf.c share: a
 * temporary directory per test case (root, setup_root/teardown_root for
 * tcase_add_unchecked_fixture) and checks on error messages. Included once
 * per test program. */
#ifndef FW_TOKENIZER_FIXTURE_H
#define FW_TOKENIZER_FIXTURE_H

#include <check.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char root[64];

#define ck_one_line(msg) \
	ck_assert_msg(!strchr(msg, '\n') && (msg)[0], "not one line: '%s'", msg)
#define ck_has(msg, s) \
	ck_assert_msg(strstr(msg, s) != NULL, "'%s' does not contain '%s'", msg, s)

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(p);
}

static void setup_root(void)
{
	snprintf(root, sizeof(root), "/tmp/fw-test-tok.XXXXXX");
	if (!mkdtemp(root)) {
		perror("mkdtemp");
		abort();
	}
}

static void teardown_root(void)
{
	nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
