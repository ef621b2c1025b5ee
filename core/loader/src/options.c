/* options.c - typed plugin options: parse, validate, suggest, resolve. */
#include <errno.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fw/loader.h"

struct fw_options {
	const struct fw_option_def *defs;
	int n;
	char *owner;
	char **values;               /* text, NULL while unset */
	double *num;                 /* parsed numbers (bool: 0/1) */
};

struct fw_options *fw_options_new(const struct fw_option_def *defs, int n, const char *owner)
{
	struct fw_options *o = fw_calloc(1, sizeof(*o));
	if (!o)
		return NULL;
	o->defs = defs;
	o->n = n;
	o->owner = fw_strdup(owner ? owner : "");
	o->values = fw_calloc((size_t)(n ? n : 1), sizeof(char *));
	o->num = fw_calloc((size_t)(n ? n : 1), sizeof(double));
	if (!o->owner || !o->values || !o->num) {
		fw_options_free(o);
		return NULL;
	}
	return o;
}

void fw_options_free(struct fw_options *o)
{
	if (!o)
		return;
	for (int i = 0; o->values && i < o->n; i++)
		fw_free(o->values[i]);
	fw_free(o->values);
	fw_free(o->num);
	fw_free(o->owner);
	fw_free(o);
}

static int find(const struct fw_options *o, const char *name)
{
	for (int i = 0; i < o->n; i++)
		if (strcmp(o->defs[i].name, name) == 0)
			return i;
	return -1;
}

/* Optimal string alignment distance: insertions, deletions, substitutions
 * and swaps of neighbours ("trian" is one edit from "train"). */
static size_t edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	if (la > 63 || lb > 63)
		return (size_t)-1;      /* too long to be a typo of anything */
	size_t d[64][64];
	for (size_t i = 0; i <= la; i++)
		d[i][0] = i;
	for (size_t j = 0; j <= lb; j++)
		d[0][j] = j;
	for (size_t i = 1; i <= la; i++)
		for (size_t j = 1; j <= lb; j++) {
			size_t best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
			if (d[i - 1][j] + 1 < best)
				best = d[i - 1][j] + 1;
			if (d[i][j - 1] + 1 < best)
				best = d[i][j - 1] + 1;
			if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
			    d[i - 2][j - 2] + 1 < best)
				best = d[i - 2][j - 2] + 1;
			d[i][j] = best;
		}
	return d[la][lb];
}

const char *fw_nearest_name(const char *s, const char *const *names, int n)
{
	const char *best = NULL;
	size_t best_d = (size_t)-1;
	for (int i = 0; i < n; i++) {
		size_t d = edit_distance(s, names[i]);
		if (d < best_d) {
			best_d = d;
			best = names[i];
		}
	}
	/* Close enough to be a typo: one edit per four characters, at least
	 * one ("serve" is not "merge", nor "max-length" "seq-length"). */
	size_t limit = strlen(s) / 4 > 1 ? strlen(s) / 4 : 1;
	return best_d <= limit ? best : NULL;
}

/* x as an integer when it is one ("1048576", not "1.04858e+06"). */
static const char *num_text(double x, char *buf, size_t len)
{
	if (x == (double)(long long)x && x > -1e18 && x < 1e18)
		snprintf(buf, len, "%lld", (long long)x);
	else
		snprintf(buf, len, "%g", x);
	return buf;
}

static enum fw_status parse_value(const struct fw_option_def *d, const char *owner,
				  const char *v, double *num, struct fw_err *err)
{
	char *end = NULL;
	switch (d->type) {
	case FW_OPT_BOOL:
		if (!strcasecmp(v, "true") || !strcmp(v, "1") || !strcasecmp(v, "yes") ||
		    !strcasecmp(v, "on")) {
			*num = 1;
		} else if (!strcasecmp(v, "false") || !strcmp(v, "0") || !strcasecmp(v, "no") ||
			   !strcasecmp(v, "off")) {
			*num = 0;
		} else {
			return fw_errorf(err, FW_ERR_INVALID,
					 "%s: option '%s' takes true or false, not '%s'",
					 owner, d->name, v);
		}
		return FW_OK;
	case FW_OPT_INT:
		errno = 0;
		long long ll = strtoll(v, &end, 10);
		if (errno || !*v || *end)
			return fw_errorf(err, FW_ERR_INVALID,
					 "%s: option '%s' takes an integer, not '%s'",
					 owner, d->name, v);
		*num = (double)ll;
		break;
	case FW_OPT_FLOAT:
		errno = 0;
		*num = strtod(v, &end);
		if (errno || !*v || *end || !isfinite(*num))
			return fw_errorf(err, FW_ERR_INVALID,
					 "%s: option '%s' takes a number, not '%s'",
					 owner, d->name, v);
		break;
	case FW_OPT_STRING:
		return FW_OK;
	case FW_OPT_CHOICE:
		for (int i = 0; d->choices && d->choices[i]; i++)
			if (strcmp(v, d->choices[i]) == 0) {
				*num = i;
				return FW_OK;
			}
		{
			char list[256] = "";
			int n = 0;
			for (int i = 0; d->choices && d->choices[i]; i++, n++) {
				strncat(list, i ? ", " : "", sizeof(list) - strlen(list) - 1);
				strncat(list, d->choices[i], sizeof(list) - strlen(list) - 1);
			}
			const char *near = fw_nearest_name(v, d->choices, n);
			return fw_errorf(err, FW_ERR_INVALID,
					 "%s: option '%s' must be one of %s, not '%s'%s%s%s",
					 owner, d->name, list, v, near ? " (did you mean '" : "",
					 near ? near : "", near ? "'?)" : "");
		}
	}
	char lo[32], hi[32];
	if (d->min <= d->max && (*num < d->min || *num > d->max))
		return fw_errorf(err, FW_ERR_INVALID,
				 "%s: option '%s' = %s is out of range [%s, %s]", owner, d->name, v,
				 num_text(d->min, lo, sizeof(lo)), num_text(d->max, hi, sizeof(hi)));
	return FW_OK;
}

enum fw_status fw_options_set(struct fw_options *o, const char *name, const char *value,
			      struct fw_err *err)
{
	int i = find(o, name);
	if (i < 0) {
		const char *names[256];
		int n = o->n < 256 ? o->n : 256;
		for (int k = 0; k < n; k++)
			names[k] = o->defs[k].name;
		const char *near = fw_nearest_name(name, names, n);
		return fw_errorf(err, FW_ERR_NOT_FOUND, "%s: unknown option '%s'%s%s%s", o->owner,
				 name, near ? " (did you mean '" : "", near ? near : "",
				 near ? "'?)" : "");
	}
	double num = 0;
	enum fw_status s = parse_value(&o->defs[i], o->owner, value, &num, err);
	if (s != FW_OK)
		return s;
	char *copy = fw_strdup(value);
	if (!copy)
		return fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", o->owner);
	fw_free(o->values[i]);
	o->values[i] = copy;
	o->num[i] = num;
	return FW_OK;
}

bool fw_options_has(const struct fw_options *o, const char *name)
{
	int i = find(o, name);
	return i >= 0 && o->values[i];
}

enum fw_status fw_options_resolve(struct fw_options *o, struct fw_err *err)
{
	for (int i = 0; i < o->n; i++) {
		if (o->values[i])
			continue;
		if (!o->defs[i].def)
			return fw_errorf(err, FW_ERR_INVALID, "%s: option '%s' is required",
					 o->owner, o->defs[i].name);
		enum fw_status s = fw_options_set(o, o->defs[i].name, o->defs[i].def, err);
		if (s != FW_OK)
			return s;
	}
	return FW_OK;
}

int fw_options_count(const struct fw_options *o)
{
	return o->n;
}

const struct fw_option_def *fw_options_def(const struct fw_options *o, int i)
{
	return &o->defs[i];
}

const char *fw_options_value(const struct fw_options *o, int i)
{
	return o->values[i] ? o->values[i] : "";
}

const char *fw_options_owner(const struct fw_options *o)
{
	return o->owner;
}

/* Typed getters: a wrong name or type is a programmer error. */
static int must_find(const struct fw_options *o, const char *name, enum fw_opt_type t)
{
	int i = find(o, name);
	FW_ASSERT(i >= 0 && "option not declared");
	FW_ASSERT(o->defs[i].type == t && "option read with the wrong type");
	FW_ASSERT(o->values[i] && "options not resolved");
	return i;
}

bool fw_opt_bool(const struct fw_options *o, const char *name)
{
	return o->num[must_find(o, name, FW_OPT_BOOL)] != 0;
}

int64_t fw_opt_int(const struct fw_options *o, const char *name)
{
	return (int64_t)o->num[must_find(o, name, FW_OPT_INT)];
}

double fw_opt_float(const struct fw_options *o, const char *name)
{
	return o->num[must_find(o, name, FW_OPT_FLOAT)];
}

const char *fw_opt_str(const struct fw_options *o, const char *name)
{
	int i = find(o, name);
	FW_ASSERT(i >= 0 && "option not declared");
	FW_ASSERT((o->defs[i].type == FW_OPT_STRING || o->defs[i].type == FW_OPT_CHOICE) &&
		  "option read with the wrong type");
	FW_ASSERT(o->values[i] && "options not resolved");
	return o->values[i];
}
