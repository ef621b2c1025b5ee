/* ini.c - the INI reader (fw/runtime/ini.h). Hand-written because Debian's
 * libinih (r55) cuts lines at 199 bytes, reads the remainder as another
 * line, and gives its callbacks no line numbers. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/runtime/data.h"
#include "fw/runtime/ini.h"

static char *trim(char *s)
{
	while (*s == ' ' || *s == '\t' || *s == '\r')
		s++;
	size_t n = strlen(s);
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
		s[--n] = '\0';
	return s;
}

/* Cuts s at an inline comment: ';' after whitespace. */
static void cut_comment(char *s)
{
	for (char *p = s; *p; p++)
		if (*p == ';' && p > s && (p[-1] == ' ' || p[-1] == '\t')) {
			*p = '\0';
			return;
		}
}

int fw_rt_ini_parse(const char *text, fw_rt_ini_fn fn, void *arg)
{
	char *section = strdup(""), *buf = NULL;
	size_t cap = 0;
	int first_error = 0, line_no = 0;
	if (!section)
		return -2;
	if (text && !strncmp(text, "\xEF\xBB\xBF", 3))
		text += 3;
	for (const char *l = text; l && *l;) {
		const char *end = strchr(l, '\n');
		size_t n = end ? (size_t)(end - l) : strlen(l);
		if (n + 1 > cap) {
			char *b = realloc(buf, n + 1);
			if (!b) {
				first_error = -2;
				break;
			}
			buf = b;
			cap = n + 1;
		}
		memcpy(buf, l, n);
		buf[n] = '\0';
		l = end ? end + 1 : NULL;
		line_no++;
		char *s = trim(buf);
		bool ok = true;
		if (!*s || *s == ';' || *s == '#')
			continue;
		if (*s == '[') {
			char *close = strchr(s, ']');
			if (close) {
				*close = '\0';
				char *name = strdup(trim(s + 1));
				if (!name) {
					first_error = -2;
					break;
				}
				free(section);
				section = name;
				ok = fn(arg, section, NULL, NULL, line_no) != 0;
			} else {
				ok = false;
			}
		} else {
			char *eq = strpbrk(s, "=:");
			if (eq) {
				*eq = '\0';
				char *value = eq + 1;
				cut_comment(value);
				ok = fn(arg, section, trim(s), trim(value), line_no) != 0;
			} else {
				ok = false;
			}
		}
		if (!ok && !first_error)
			first_error = line_no;
	}
	free(buf);
	free(section);
	return first_error;
}

int fw_rt_ini_parse_file(const char *path, fw_rt_ini_fn fn, void *arg)
{
	struct fw_err err = { 0 };
	size_t len;
	char *text = fw_rt_read_file(path, &len, &err);
	if (!text)
		return err.status == FW_ERR_NOMEM ? -2 : -1;
	int rc = fw_rt_ini_parse(text, fn, arg);
	free(text);
	return rc;
}

struct ini_find {
	const char *section, *key;
	char *value;
};

static int find_cb(void *arg, const char *section, const char *key, const char *value, int line)
{
	struct ini_find *f = arg;
	bool top = !*section || !strcmp(section, "run");
	(void)line;
	if (key && !f->value && !strcmp(key, f->key) &&
	    (!strcmp(f->section, "run") ? top : !strcmp(section, f->section)))
		f->value = strdup(value);
	return 1;
}

char *fw_rt_ini_lookup(const char *text, const char *section, const char *key)
{
	struct ini_find f = { section, key, NULL };
	fw_rt_ini_parse(text, find_cb, &f);
	return f.value;
}
