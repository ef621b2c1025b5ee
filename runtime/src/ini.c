/* ini.c - INI text of configurations (fw/runtime/ini.h). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/runtime/ini.h"

void fw_rt_ini_each(const char *text, void (*fn)(void *, const char *, const char *,
						     const char *), void *arg)
{
	char section[128] = "";
	for (const char *l = text; l && *l;) {
		const char *end = strchr(l, '\n');
		size_t n = end ? (size_t)(end - l) : strlen(l);
		char line[4400];
		snprintf(line, sizeof(line), "%.*s", (int)(n < sizeof(line) ? n : sizeof(line) - 1), l);
		l = end ? end + 1 : NULL;
		char *s = line;
		while (*s == ' ' || *s == '\t')
			s++;
		if (!*s || *s == '#' || *s == ';')
			continue;
		if (*s == '[') {
			char *close = strchr(s, ']');
			if (close)
				snprintf(section, sizeof(section), "%.*s", (int)(close - s - 1), s + 1);
			fn(arg, section, NULL, NULL);
			continue;
		}
		char *eq = strchr(s, '=');
		if (!eq)
			continue;
		char *k_end = eq;
		while (k_end > s && (k_end[-1] == ' ' || k_end[-1] == '\t'))
			k_end--;
		*k_end = '\0';
		char *v = eq + 1;
		while (*v == ' ' || *v == '\t')
			v++;
		size_t vl = strlen(v);
		while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\r'))
			v[--vl] = '\0';
		fn(arg, section, s, v);
	}
}

struct ini_find {
	const char *section, *key;
	char *value;
};

static void find_cb(void *arg, const char *section, const char *key, const char *value)
{
	struct ini_find *f = arg;
	bool top = !*section || !strcmp(section, "run");
	if (key && !f->value && !strcmp(key, f->key) &&
	    (!strcmp(f->section, "run") ? top : !strcmp(section, f->section)))
		f->value = strdup(value);
}

char *fw_rt_ini_lookup(const char *text, const char *section, const char *key)
{
	struct ini_find f = { section, key, NULL };
	fw_rt_ini_each(text, find_cb, &f);
	return f.value;
}

