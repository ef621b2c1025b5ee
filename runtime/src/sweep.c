/* sweep.c - sweep files, trials, early-stopping rules, aggregates
 * (fw/runtime/sweep.h). */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#include "fw/runtime/data.h"
#include "fw/runtime/ini.h"
#include "fw/runtime/sweep.h"

/* --- small helpers ------------------------------------------------------------------ */

static char *trimmed(const char *s, size_t n)
{
	while (n && isspace((unsigned char)*s))
		s++, n--;
	while (n && isspace((unsigned char)s[n - 1]))
		n--;
	char *r = malloc(n + 1);
	if (r) {
		memcpy(r, s, n);
		r[n] = '\0';
	}
	return r;
}

/* Splits at '|' when s has one, else at ','. NULL when out of memory. */
static char **split_values(const char *s, int *n)
{
	char sep = strchr(s, '|') ? '|' : ',';
	int cap = 1;
	for (const char *p = s; *p; p++)
		cap += *p == sep;
	char **v = calloc((size_t)cap, sizeof(char *));
	*n = 0;
	for (const char *p = s; v;) {
		const char *e = strchr(p, sep);
		size_t len = e ? (size_t)(e - p) : strlen(p);
		if (!(v[*n] = trimmed(p, len)))
			return NULL;
		if (*v[*n])
			(*n)++;
		else
			free(v[*n]);
		if (!e)
			break;
		p = e + 1;
	}
	return v;
}

static bool parse_num(const char *s, double *x)
{
	char *end;
	*x = strtod(s, &end);
	while (isspace((unsigned char)*end))
		end++;
	return end != s && !*end && isfinite(*x);
}

static bool parse_int(const char *s, int64_t *x)
{
	char *end;
	long long v = strtoll(s, &end, 10);
	while (isspace((unsigned char)*end))
		end++;
	*x = v;
	return end != s && !*end;
}

/* --- parsing ----------------------------------------------------------------------------- */

struct parse {
	struct fw_sweep *sw;
	struct fw_err *err;
	bool bad;
	bool repeats;                 /* seeds are offsets from the base run's seed */
};

__attribute__((format(printf, 4, 5)))
static int fail(struct parse *p, int line, const char *key, const char *fmt, ...)
{
	char msg[FW_ERR_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (!p->bad)
		fw_errorf(p->err, FW_ERR_INVALID, "%s:%d: %s: %s", p->sw->path, line, key, msg);
	p->bad = true;
	return 0;
}

static bool push_entry(struct fw_sweep_entry **list, int *n, const char *section,
		       const char *key, const char *value, int line)
{
	struct fw_sweep_entry *l = realloc(*list, sizeof(**list) * (size_t)(*n + 1));
	if (!l)
		return false;
	*list = l;
	l[*n] = (struct fw_sweep_entry){ strdup(section), strdup(key), strdup(value), line };
	(*n)++;
	return l[*n - 1].section && l[*n - 1].key && l[*n - 1].value;
}

static struct fw_sweep_axis *new_axis(struct fw_sweep *sw, const char *section)
{
	struct fw_sweep_axis *a = realloc(sw->axis, sizeof(*a) * (size_t)(sw->n_axes + 1));
	if (!a)
		return NULL;
	sw->axis = a;
	a = &a[sw->n_axes++];
	*a = (struct fw_sweep_axis){ .section = strdup(section) };
	return a->section ? a : NULL;
}

static bool axis_add_key(struct fw_sweep_axis *a, const char *key, int line, char **values)
{
	char **k = realloc(a->key, sizeof(char *) * (size_t)(a->n_keys + 1));
	if (k)
		a->key = k;
	int *l = realloc(a->line, sizeof(int) * (size_t)(a->n_keys + 1));
	if (l)
		a->line = l;
	char ***v = realloc(a->value, sizeof(char **) * (size_t)(a->n_keys + 1));
	if (v)
		a->value = v;
	if (!k || !l || !v)
		return false;
	a->key[a->n_keys] = strdup(key);
	a->line[a->n_keys] = line;
	a->value[a->n_keys] = values;
	a->n_keys++;
	return a->key[a->n_keys - 1] != NULL;
}

static void free_values(char **v, int n)
{
	for (int i = 0; v && i < n; i++)
		free(v[i]);
	free(v);
}

/* "name(args)" -> dist and the args text; false if key's value is no call. */
static bool dist_call(const char *v, char *name, size_t nlen, const char **args, size_t *alen)
{
	const char *open = strchr(v, '(');
	size_t vl = strlen(v);
	if (!open || vl < 2 || v[vl - 1] != ')')
		return false;
	snprintf(name, nlen, "%.*s", (int)(open - v), v);
	*args = open + 1;
	*alen = (size_t)(v + vl - 1 - *args);
	return true;
}

static int random_axis(struct parse *p, const char *key, const char *value, int line)
{
	char name[32], *args_text;
	const char *args;
	size_t alen;
	if (!dist_call(value, name, sizeof(name), &args, &alen))
		return fail(p, line, key, "'%s' is no distribution: uniform(a, b), loguniform(a, b), "
			    "int(a, b) or choice(v1, v2, ...)", value);
	static const char *const names[] = { "", "uniform", "loguniform", "int", "choice" };
	int d = 0;
	for (int i = 1; i < 5; i++)
		if (!strcmp(name, names[i]))
			d = i;
	if (!d)
		return fail(p, line, key, "unknown distribution '%s' (uniform, loguniform, int, "
			    "choice)", name);
	if (!(args_text = trimmed(args, alen)))
		return fail(p, line, key, "out of memory");
	int n = 0;
	char **v = split_values(args_text, &n);
	free(args_text);
	struct fw_sweep_axis *a = v ? new_axis(p->sw, "random") : NULL;
	if (!a || !axis_add_key(a, key, line, v)) {
		free_values(v, n);
		return fail(p, line, key, "out of memory");
	}
	a->dist = (enum fw_sweep_dist)d;
	a->n_values = n;
	if (d == FW_SWEEP_CHOICE)
		return n ? 1 : fail(p, line, key, "choice() of no values");
	if (n != 2 || !parse_num(v[0], &a->lo) || !parse_num(v[1], &a->hi))
		return fail(p, line, key, "%s() takes two numbers, low and high", name);
	int64_t i;
	if (d == FW_SWEEP_INT && (!parse_int(v[0], &i) || !parse_int(v[1], &i)))
		return fail(p, line, key, "int() takes two integers");
	if (a->lo >= a->hi)
		return fail(p, line, key, "low %s >= high %s", v[0], v[1]);
	if (d == FW_SWEEP_LOGUNIFORM && a->lo <= 0)
		return fail(p, line, key, "loguniform() needs low > 0 (got %s)", v[0]);
	return 1;
}

static const char *const setting_keys[] = {
	"metric", "direction", "trials", "seed", "repeats", "seeds", "early-stop",
	"grace-steps", "min-trials", "asha-min-steps", "asha-eta",
};

static int setting(struct parse *p, const char *key, const char *value, int line)
{
	struct fw_sweep *sw = p->sw;
	bool known = false;
	for (size_t i = 0; i < sizeof(setting_keys) / sizeof(setting_keys[0]); i++)
		known |= !strcmp(key, setting_keys[i]);
	if (!known)
		return fail(p, line, key, "unknown [sweep] key (metric, direction, trials, seed, "
			    "repeats, seeds, early-stop, grace-steps, min-trials, asha-min-steps, "
			    "asha-eta)");
	if (!push_entry(&sw->setting, &sw->n_setting, "sweep", key, value, line))
		return fail(p, line, key, "out of memory");
	int64_t i = 0;
	double x = 0;
	if (!strcmp(key, "metric")) {
		if (strcmp(value, "eval_loss") && strcmp(value, "loss"))
			return fail(p, line, key, "unknown metric '%s' (eval_loss: the held-out "
				    "loss at eval steps; loss: the training loss)", value);
		snprintf(sw->metric, sizeof(sw->metric), "%s", value);
	} else if (!strcmp(key, "direction")) {
		if (strcmp(value, "min") && strcmp(value, "max"))
			return fail(p, line, key, "'%s' is neither min nor max", value);
		sw->minimize = !strcmp(value, "min");
	} else if (!strcmp(key, "trials")) {
		if (!parse_int(value, &i) || i < 1)
			return fail(p, line, key, "'%s': the number of trials must be >= 1", value);
		sw->draws = i;
	} else if (!strcmp(key, "seed")) {
		if (!parse_int(value, &i) || i < 0)
			return fail(p, line, key, "'%s' is no seed (an integer >= 0)", value);
		sw->draw_seed = (uint64_t)i;
	} else if (!strcmp(key, "repeats") || !strcmp(key, "seeds")) {
		int n = 0;
		char **v = split_values(value, &n);
		bool ok = v && n > 0, repeats = !strcmp(key, "repeats");
		if (repeats && ok && (n != 1 || !parse_int(v[0], &i) || i < 1 || i > 100000))
			ok = false;
		int count = repeats ? (int)i : n;
		int64_t *seeds = ok ? calloc((size_t)count, sizeof(int64_t)) : NULL;
		for (int k = 0; !repeats && seeds && k < n; k++)
			if (!parse_int(v[k], &seeds[k]) || seeds[k] < 0)
				ok = false;
		if (repeats && seeds)         /* offsets: the base seed is added at the end */
			for (int k = 0; k < count; k++)
				seeds[k] = k;
		p->repeats = repeats;
		free_values(v, n);
		if (!ok || !seeds) {
			free(seeds);
			return fail(p, line, key, repeats ? "'%s': repeats must be an integer >= 1" :
				    "'%s': seeds are integers >= 0", value);
		}
		free(sw->seeds);
		sw->seeds = seeds;
		sw->n_seeds = count;
	} else if (!strcmp(key, "early-stop")) {
		sw->rule.kind = !strcmp(value, "none") ? FW_SWEEP_STOP_NONE :
				!strcmp(value, "median") ? FW_SWEEP_STOP_MEDIAN :
				!strcmp(value, "asha") ? FW_SWEEP_STOP_ASHA : (enum fw_sweep_stop)-1;
		if ((int)sw->rule.kind < 0)
			return fail(p, line, key, "'%s' is no rule (none, median, asha)", value);
	} else if (!strcmp(key, "asha-eta")) {
		if (!parse_num(value, &x) || x <= 1)
			return fail(p, line, key, "'%s': eta must be a number > 1", value);
		sw->rule.asha_eta = x;
	} else {
		if (!parse_int(value, &i) || i < (strcmp(key, "asha-min-steps") ? 0 : 1))
			return fail(p, line, key, "'%s' is no %s", value,
				    strcmp(key, "asha-min-steps") ? "integer >= 0" : "integer >= 1");
		if (!strcmp(key, "grace-steps"))
			sw->rule.grace_steps = i;
		else if (!strcmp(key, "min-trials"))
			sw->rule.min_trials = (int)i;
		else
			sw->rule.asha_min_steps = i;
	}
	return 1;
}

static bool axis_key_ok(const char *key)
{
	if (strncmp(key, "plugins", 7))
		return true;
	static const char *const kinds[] = { "arch", "attention", "peft", "optim" };
	for (size_t i = 0; i < 4; i++)
		if (key[7] == '.' && !strcmp(key + 8, kinds[i]))
			return true;
	return false;
}

static int entry(void *user, const char *section, const char *key, const char *value,
		 int line)
{
	struct parse *p = user;
	struct fw_sweep *sw = p->sw;
	if (p->bad)
		return 0;
	if (!key)
		return 1;
	if (!strcmp(section, "sweep"))
		return setting(p, key, value, line);
	bool grid = !strcmp(section, "grid"), link = !strncmp(section, "link", 4) &&
		    (!section[4] || section[4] == ' ' || section[4] == '.');
	if (!strcmp(section, "random") || grid || link) {
		if (!axis_key_ok(key))
			return fail(p, line, key, "plugin axes are plugins.KIND (KIND: arch, "
				    "attention, peft, optim)");
		for (int a = 0; a < sw->n_axes; a++)
			for (int k = 0; k < sw->axis[a].n_keys; k++)
				if (!strcmp(sw->axis[a].key[k], key))
					return fail(p, line, key, "is an axis twice (also line %d)",
						    sw->axis[a].line[k]);
		if (!strcmp(section, "random"))
			return random_axis(p, key, value, line);
		int n = 0;
		char **v = split_values(value, &n);
		if (!v)
			return fail(p, line, key, "out of memory");
		if (!n) {
			free(v);
			return fail(p, line, key, "empty axis (no values)");
		}
		struct fw_sweep_axis *a = NULL;
		for (int i = 0; link && i < sw->n_axes; i++)
			if (!strcmp(sw->axis[i].section, section))
				a = &sw->axis[i];
		if (a && a->n_values != n) {
			free_values(v, n);
			return fail(p, line, key, "%d values where [%s] has %d per key (line %d)",
				    n, section, a->n_values, a->line[0]);
		}
		if (!a)
			a = new_axis(sw, section);
		if (!a || !axis_add_key(a, key, line, v)) {
			free_values(v, n);
			return fail(p, line, key, "out of memory");
		}
		a->n_values = n;
		return 1;
	}
	if (!*section || !strcmp(section, "run") || strchr(section, '/')) {
		if (!push_entry(&sw->base, &sw->n_base, section, key, value, line))
			return fail(p, line, key, "out of memory");
		return 1;
	}
	return fail(p, line, key, "section [%s] is none of sweep, run, grid, random, link "
		    "NAME or a plugin's KIND/NAME", section);
}

enum fw_status fw_sweep_parse_text(const char *text, const char *path, struct fw_sweep *sw,
				   struct fw_err *err)
{
	*sw = (struct fw_sweep){ .path = strdup(path), .minimize = true, .draws = 1,
				 .rule = { FW_SWEEP_STOP_NONE, 0, 3, 1, 3 } };
	snprintf(sw->metric, sizeof(sw->metric), "eval_loss");
	struct parse p = { sw, err, false, false };
	fw_err_clear(err);
	int rc = sw->path ? fw_rt_ini_parse(text, entry, &p) : -2;
	if (rc == -2 && !p.bad)
		fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", path);
	else if (rc > 0 && !p.bad)
		fw_errorf(err, FW_ERR_INVALID, "%s:%d: malformed line", path, rc);
	else if (!p.bad && sw->n_axes == 0)
		fw_errorf(err, FW_ERR_INVALID, "%s:1: sweep: no axes ([grid], [random] or [link "
			  "NAME])", path);
	else if (!p.bad && !fw_sweep_base_value(sw, "plugins"))
		fw_errorf(err, FW_ERR_INVALID, "%s:1: plugins: the base run ([run]) names no "
			  "plugins", path);
	if (err->status == FW_OK && p.repeats) {   /* base seed + r (fwrun's default 1234) */
		const char *b = fw_sweep_base_value(sw, "seed");
		int64_t s0 = 1234;
		if (b && !parse_int(b, &s0))
			fw_errorf(err, FW_ERR_INVALID, "%s: seed: '%s' is no integer", path, b);
		for (int k = 0; k < sw->n_seeds; k++)
			sw->seeds[k] += s0;
	}
	bool has_random = false;
	for (int a = 0; a < sw->n_axes; a++)
		has_random |= sw->axis[a].dist != FW_SWEEP_LIST;
	const char *trials = NULL;
	int tl = 0;
	for (int i = 0; i < sw->n_setting; i++)
		if (!strcmp(sw->setting[i].key, "trials"))
			trials = sw->setting[i].value, tl = sw->setting[i].line;
	if (err->status == FW_OK && trials && !has_random)
		fw_errorf(err, FW_ERR_INVALID, "%s:%d: trials: random draws need a [random] "
			  "section", path, tl);
	if (err->status != FW_OK) {
		fw_sweep_free(sw);
		return err->status;
	}
	return FW_OK;
}

enum fw_status fw_sweep_parse(const char *path, struct fw_sweep *sw, struct fw_err *err)
{
	size_t n;
	char *text = fw_rt_read_file(path, &n, err);
	if (!text) {
		*sw = (struct fw_sweep){ 0 };
		return err->status;
	}
	enum fw_status st = fw_sweep_parse_text(text, path, sw, err);
	free(text);
	return st;
}

static void free_entries(struct fw_sweep_entry *e, int n)
{
	for (int i = 0; i < n; i++) {
		free(e[i].section);
		free(e[i].key);
		free(e[i].value);
	}
	free(e);
}

void fw_sweep_free(struct fw_sweep *sw)
{
	free(sw->path);
	free_entries(sw->base, sw->n_base);
	free_entries(sw->setting, sw->n_setting);
	for (int a = 0; a < sw->n_axes; a++) {
		struct fw_sweep_axis *x = &sw->axis[a];
		for (int k = 0; k < x->n_keys; k++) {
			free(x->key[k]);
			free_values(x->value[k], x->n_values);
		}
		free(x->key);
		free(x->line);
		free(x->value);
		free(x->section);
	}
	free(sw->axis);
	free(sw->seeds);
	*sw = (struct fw_sweep){ 0 };
}

const char *fw_sweep_base_value(const struct fw_sweep *sw, const char *key)
{
	const char *v = NULL;
	for (int i = 0; i < sw->n_base; i++)
		if ((!*sw->base[i].section || !strcmp(sw->base[i].section, "run")) &&
		    !strcmp(sw->base[i].key, key))
			v = sw->base[i].value;
	return v;
}

/* --- trials ------------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t x)
{
	x += 0x9E3779B97F4A7C15ull;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

double fw_sweep_uniform(uint64_t seed, int64_t index, int axis)
{
	uint64_t x = splitmix64(seed ^ ((uint64_t)index * 0x9E3779B97F4A7C15ull) ^
				((uint64_t)axis << 32));
	return (double)(x >> 11) * 0x1.0p-53;
}

static int64_t list_size(const struct fw_sweep_axis *a)
{
	return a->dist == FW_SWEEP_LIST ? a->n_values : 1;
}

int64_t fw_sweep_count(const struct fw_sweep *sw)
{
	int64_t n = sw->draws * (sw->n_seeds ? sw->n_seeds : 1);
	bool random = false;
	for (int a = 0; a < sw->n_axes; a++) {
		n *= list_size(&sw->axis[a]);
		random |= sw->axis[a].dist != FW_SWEEP_LIST;
	}
	return random ? n : n / sw->draws;
}

static bool add_param(struct fw_sweep_trial *t, const char *key, const char *value)
{
	t->key[t->n] = strdup(key);
	t->value[t->n] = strcmp(value, "-") ? strdup(value) : NULL;
	t->n++;
	return t->key[t->n - 1] && (!strcmp(value, "-") || t->value[t->n - 1]);
}

enum fw_status fw_sweep_trial(const struct fw_sweep *sw, int64_t index,
			      struct fw_sweep_trial *t, struct fw_err *err)
{
	*t = (struct fw_sweep_trial){ .index = index, .seed = -1 };
	if (index < 0 || index >= fw_sweep_count(sw))
		return fw_errorf(err, FW_ERR_INVALID, "trial %lld: the sweep has %lld trials "
				 "(0 to %lld)", (long long)index, (long long)fw_sweep_count(sw),
				 (long long)fw_sweep_count(sw) - 1);
	int keys = 0;
	bool random = false;
	for (int a = 0; a < sw->n_axes; a++) {
		keys += sw->axis[a].n_keys;
		random |= sw->axis[a].dist != FW_SWEEP_LIST;
	}
	t->key = calloc((size_t)keys + 1, sizeof(char *));
	t->value = calloc((size_t)keys + 1, sizeof(char *));
	if (!t->key || !t->value)
		goto nomem;
	int n_seeds = sw->n_seeds ? sw->n_seeds : 1;
	t->repeat = (int)(index % n_seeds);
	t->seed = sw->n_seeds ? sw->seeds[t->repeat] : -1;
	int64_t rest = index / n_seeds;
	t->config = rest;
	int64_t draw = random ? rest % sw->draws : 0;
	if (random)
		rest /= sw->draws;
	/* the last list axis varies fastest */
	int64_t pick[64] = { 0 };
	for (int a = sw->n_axes - 1; a >= 0; a--) {
		pick[a < 64 ? a : 63] = rest % list_size(&sw->axis[a]);
		rest /= list_size(&sw->axis[a]);
	}
	for (int a = 0; a < sw->n_axes && a < 64; a++) {
		const struct fw_sweep_axis *x = &sw->axis[a];
		char buf[64];
		const char *v = buf;
		double u = fw_sweep_uniform(sw->draw_seed, draw, a);
		switch (x->dist) {
		case FW_SWEEP_LIST:
			for (int k = 0; k < x->n_keys; k++)
				if (!add_param(t, x->key[k], x->value[k][pick[a]]))
					goto nomem;
			continue;
		case FW_SWEEP_UNIFORM:
			snprintf(buf, sizeof(buf), "%.6g", x->lo + u * (x->hi - x->lo));
			break;
		case FW_SWEEP_LOGUNIFORM:
			snprintf(buf, sizeof(buf), "%.6g",
				 exp(log(x->lo) + u * (log(x->hi) - log(x->lo))));
			break;
		case FW_SWEEP_INT:
			snprintf(buf, sizeof(buf), "%lld",
				 (long long)x->lo + (long long)floor(u * (x->hi - x->lo + 1)));
			break;
		case FW_SWEEP_CHOICE:
			v = x->value[0][(int)floor(u * x->n_values)];
			break;
		}
		if (!add_param(t, x->key[0], v))
			goto nomem;
	}
	/* the id: FNV-1a of "key=value\n" per parameter, then the seed */
	uint64_t h = 0xcbf29ce484222325ull;
	char seed_text[32];
	snprintf(seed_text, sizeof(seed_text), "seed=%lld\n", (long long)t->seed);
	for (int i = 0; i <= t->n; i++) {
		char line[1024];
		if (i < t->n)
			snprintf(line, sizeof(line), "%s=%s\n", t->key[i],
				 t->value[i] ? t->value[i] : "-");
		else
			snprintf(line, sizeof(line), "%s", seed_text);
		for (const char *c = line; *c; c++)
			h = (h ^ (unsigned char)*c) * 0x100000001b3ull;
	}
	snprintf(t->id, sizeof(t->id), "%016llx", (unsigned long long)h);
	return FW_OK;
nomem:
	fw_sweep_trial_free(t);
	return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
}

void fw_sweep_trial_free(struct fw_sweep_trial *t)
{
	for (int i = 0; i < t->n; i++) {
		free(t->key[i]);
		free(t->value[i]);
	}
	free(t->key);
	free(t->value);
	*t = (struct fw_sweep_trial){ 0 };
}

/* Appends to a growing string; false when out of memory (the string is freed). */
__attribute__((format(printf, 3, 4)))
static bool append(char **s, size_t *len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	char *r = n >= 0 ? realloc(*s, *len + (size_t)n + 1) : NULL;
	if (!r) {
		free(*s);
		*s = NULL;
		return false;
	}
	va_start(ap, fmt);
	vsnprintf(r + *len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	*s = r;
	*len += (size_t)n;
	return true;
}

static const char *plugin_kind_end(const char *name)
{
	const char *slash = strchr(name, '/');
	return slash && !strchr(slash + 1, '/') && !strstr(name, ".so") ? slash : NULL;
}

char *fw_sweep_trial_plugins(const struct fw_sweep *sw, const struct fw_sweep_trial *t)
{
	const char *base = fw_sweep_base_value(sw, "plugins");
	int n = 0;
	char **list = split_values(base ? base : "", &n);
	char *out = NULL;
	size_t len = 0;
	if (!list || !append(&out, &len, "%s", ""))
		goto done;
	bool *used = calloc((size_t)t->n + 1, sizeof(bool));
	if (!used) {
		free(out);
		out = NULL;
		goto done;
	}
	for (int i = 0; i < n && out; i++) {
		const char *name = list[i], *slash = plugin_kind_end(name);
		for (int k = 0; slash && k < t->n; k++)
			if (!strncmp(t->key[k], "plugins.", 8) && t->value[k] &&
			    strlen(t->key[k] + 8) == (size_t)(slash - name) &&
			    !strncmp(t->key[k] + 8, name, (size_t)(slash - name))) {
				name = t->value[k];
				used[k] = true;
			}
		if (strcmp(name, "none"))
			append(&out, &len, "%s%s", len ? "," : "", name);
	}
	for (int k = 0; k < t->n && out; k++)   /* kinds the base has none of */
		if (!strncmp(t->key[k], "plugins.", 8) && t->value[k] && !used[k] &&
		    strcmp(t->value[k], "none"))
			append(&out, &len, "%s%s", len ? "," : "", t->value[k]);
	free(used);
done:
	free_values(list, n);
	return out;
}

static bool plugin_in(const char *plugins, const char *name)
{
	size_t nl = strlen(name);
	for (const char *p = plugins; (p = strstr(p, name)); p += nl)
		if ((p == plugins || p[-1] == ',') && (!p[nl] || p[nl] == ','))
			return true;
	return false;
}

char *fw_sweep_trial_ini(const struct fw_sweep *sw, const struct fw_sweep_trial *t)
{
	char *plugins = fw_sweep_trial_plugins(sw, t), *out = NULL;
	size_t len = 0;
	if (!plugins || !append(&out, &len, "# trial %lld (%s) of %s\n[run]\nplugins = %s\n",
				(long long)t->index, t->id, sw->path, plugins))
		goto done;
	const char *section = "run";
	for (int i = 0; i < sw->n_base && out; i++) {
		const struct fw_sweep_entry *e = &sw->base[i];
		const char *s = *e->section ? e->section : "run";
		bool run = !strcmp(s, "run");
		if ((run && !strcmp(e->key, "plugins")) || (!run && !plugin_in(plugins, s)))
			continue;
		if (strcmp(s, section)) {
			append(&out, &len, "[%s]\n", s);
			section = s;
		}
		if (out)
			append(&out, &len, "%s = %s\n", e->key, e->value);
	}
	if (out)
		append(&out, &len, "[run]\n");
	for (int k = 0; k < t->n && out; k++)
		if (strncmp(t->key[k], "plugins.", 8) && t->value[k])
			append(&out, &len, "%s = %s\n", t->key[k], t->value[k]);
	if (out && t->seed >= 0)
		append(&out, &len, "seed = %lld\n", (long long)t->seed);
done:
	free(plugins);
	return out;
}

/* --- a sweep directory going on with a changed file ---------------------------------------- */

__attribute__((format(printf, 5, 6)))
static bool differ(char *why, size_t len, const char *path, int line, const char *fmt, ...)
{
	char msg[600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(why, len, "%s:%d: %s", path, line, msg);
	return false;
}

static const struct fw_sweep_entry *find_entry(const struct fw_sweep_entry *e, int n,
					       const char *section, const char *key)
{
	for (int i = 0; i < n; i++)
		if (!strcmp(e[i].section, section) && !strcmp(e[i].key, key))
			return &e[i];
	return NULL;
}

static bool same_entries(const struct fw_sweep_entry *old, int n_old,
			 const struct fw_sweep_entry *new, int n_new, const char *path,
			 const char *grows, char *why, size_t len)
{
	for (int i = 0; i < n_new; i++) {
		const struct fw_sweep_entry *o = find_entry(old, n_old, new[i].section, new[i].key);
		if (grows && strstr(grows, new[i].key) && o)
			continue;          /* checked by the caller */
		if (!o || strcmp(o->value, new[i].value))
			return differ(why, len, path, new[i].line, "%s: [%s] %s changed (was %s)",
				      new[i].key, *new[i].section ? new[i].section : "run",
				      o ? "value" : "key", o ? o->value : "not set");
	}
	for (int i = 0; i < n_old; i++)
		if (!find_entry(new, n_new, old[i].section, old[i].key))
			return differ(why, len, path, 1, "%s: [%s] key removed (was %s)", old[i].key,
				      *old[i].section ? old[i].section : "run", old[i].value);
	return true;
}

bool fw_sweep_compatible(const struct fw_sweep *old, const struct fw_sweep *sw, char *why,
			 size_t len)
{
	const char *p = sw->path;
	if (!same_entries(old->base, old->n_base, sw->base, sw->n_base, p, NULL, why, len) ||
	    !same_entries(old->setting, old->n_setting, sw->setting, sw->n_setting, p,
			  "trials repeats seeds", why, len))
		return false;
	for (int i = 0; i < sw->n_setting; i++) {
		const struct fw_sweep_entry *e = &sw->setting[i];
		const char *k = e->key;
		if (!strcmp(k, "trials") && sw->draws < old->draws)
			return differ(why, len, p, e->line, "trials: fewer than before (%lld < %lld)",
				      (long long)sw->draws, (long long)old->draws);
		if (!strcmp(k, "repeats") || !strcmp(k, "seeds")) {
			bool prefix = sw->n_seeds >= old->n_seeds;
			for (int s = 0; prefix && s < old->n_seeds; s++)
				prefix = sw->seeds[s] == old->seeds[s];
			if (!prefix)
				return differ(why, len, p, e->line, "%s: the seeds changed (they may "
					      "only grow)", k);
		}
	}
	if (old->n_axes != sw->n_axes)
		return differ(why, len, p, sw->n_axes ? sw->axis[0].line[0] : 1,
			      "%s: the sweep had %d axes, now %d", sw->n_axes ? sw->axis[0].key[0] :
			      "axes", old->n_axes, sw->n_axes);
	for (int a = 0; a < sw->n_axes; a++) {
		const struct fw_sweep_axis *x = &sw->axis[a], *o = &old->axis[a];
		bool same = !strcmp(x->section, o->section) && x->n_keys == o->n_keys &&
			    x->dist == o->dist && x->lo == o->lo && x->hi == o->hi;
		for (int k = 0; same && k < x->n_keys; k++)
			same = !strcmp(x->key[k], o->key[k]);
		if (!same)
			return differ(why, len, p, x->line[0], "%s: axis changed (was [%s] %s)",
				      x->key[0], o->section, o->key[0]);
		if (x->dist != FW_SWEEP_LIST && x->dist != FW_SWEEP_CHOICE)
			continue;
		/* values may be added, never changed or removed; a choice keeps its list */
		for (int v = 0; v < o->n_values; v++) {
			int found = -1;
			for (int w = 0; w < x->n_values && found < 0; w++) {
				bool eq = true;
				for (int k = 0; k < x->n_keys; k++)
					eq &= !strcmp(x->value[k][w], o->value[k][v]);
				if (eq)
					found = w;
			}
			if (found < 0 || (x->dist == FW_SWEEP_CHOICE && x->n_values != o->n_values))
				return differ(why, len, p, x->line[0], "%s: value %s changed or removed "
					      "(values may only be added)", x->key[0], o->value[0][v]);
		}
	}
	return true;
}

/* --- early stopping ------------------------------------------------------------------------ */

double fw_sweep_quantile(const double *x, int n, double q)
{
	if (n <= 0)
		return NAN;
	double *s = malloc(sizeof(double) * (size_t)n);
	if (!s)
		return NAN;
	memcpy(s, x, sizeof(double) * (size_t)n);
	for (int i = 1; i < n; i++)    /* insertion sort: rungs are small */
		for (int j = i; j > 0 && s[j - 1] > s[j]; j--) {
			double t = s[j];
			s[j] = s[j - 1];
			s[j - 1] = t;
		}
	double pos = q * (n - 1);
	int lo = (int)floor(pos);
	int hi = lo + 1 < n ? lo + 1 : lo;
	double r = s[lo] + (s[hi] - s[lo]) * (pos - lo);
	free(s);
	return r;
}

void fw_sweep_mean_std(const double *x, int n, double *mean, double *std)
{
	double m = 0, ss = 0;
	for (int i = 0; i < n; i++)
		m += x[i];
	m = n ? m / n : NAN;
	for (int i = 0; i < n; i++)
		ss += (x[i] - m) * (x[i] - m);
	*mean = m;
	*std = n > 1 ? sqrt(ss / (n - 1)) : 0;
}

bool fw_sweep_median_stop(const struct fw_sweep_rule *r, bool minimize,
			  const struct fw_sweep_curve *self, int64_t t,
			  const struct fw_sweep_curve *done, int n_done)
{
	if (t < r->grace_steps)
		return false;
	double best = NAN;
	for (int i = 0; i < self->n && self->step[i] <= t; i++)
		if (isnan(best) || (minimize ? self->value[i] < best : self->value[i] > best))
			best = self->value[i];
	if (isnan(best))
		return false;
	double *means = malloc(sizeof(double) * (size_t)(n_done + 1));
	int n = 0;
	for (int j = 0; means && j < n_done; j++) {
		double sum = 0;
		int k = 0;
		for (; k < done[j].n && done[j].step[k] <= t; k++)
			sum += done[j].value[k];
		if (k)
			means[n++] = sum / k;
	}
	bool stop = false;
	if (means && n >= r->min_trials && n > 0) {
		double median = fw_sweep_quantile(means, n, 0.5);
		stop = minimize ? best > median : best < median;
	}
	free(means);
	return stop;
}

void fw_sweep_asha_init(struct fw_sweep_asha *a, const struct fw_sweep_rule *r, bool minimize,
			int64_t max_steps)
{
	*a = (struct fw_sweep_asha){ .rule = *r, .minimize = minimize };
	double m = (double)r->asha_min_steps;
	while (m < (double)max_steps && a->n_rungs < 48) {
		a->milestone[a->n_rungs++] = (int64_t)m;
		m *= r->asha_eta;
	}
}

bool fw_sweep_asha_report(struct fw_sweep_asha *a, int64_t trial, int64_t step, double value)
{
	double v = a->minimize ? -value : value;     /* larger is better from here on */
	for (int r = a->n_rungs - 1; r >= 0; r--) {
		bool seen = false;
		for (int i = 0; i < a->n_rec[r]; i++)
			seen |= a->owner[r][i] == trial;
		if (step < a->milestone[r] || seen)
			continue;
		bool stop = a->n_rec[r] > 0 &&
			    v < fw_sweep_quantile(a->rec[r], a->n_rec[r], 1 - 1 / a->rule.asha_eta);
		if (a->n_rec[r] == a->cap[r]) {
			int cap = a->cap[r] ? 2 * a->cap[r] : 16;
			double *rec = realloc(a->rec[r], sizeof(double) * (size_t)cap);
			if (rec)
				a->rec[r] = rec;
			int64_t *own = realloc(a->owner[r], sizeof(int64_t) * (size_t)cap);
			if (own)
				a->owner[r] = own;
			if (!rec || !own)
				return stop;
			a->cap[r] = cap;
		}
		a->rec[r][a->n_rec[r]] = v;
		a->owner[r][a->n_rec[r]++] = trial;
		return stop;
	}
	return false;
}

void fw_sweep_asha_free(struct fw_sweep_asha *a)
{
	for (int r = 0; r < 48; r++) {
		free(a->rec[r]);
		free(a->owner[r]);
	}
	*a = (struct fw_sweep_asha){ 0 };
}
