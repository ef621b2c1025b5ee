/* runs.c - what a checkpoint and a run directory belong to.
 *
 * Tensors of a file that no loaded plugin owns (a LoRA run's adapter loaded
 * without peft/lora) are refused unless --base-only drops them on purpose.
 * A configuration's identity (the INI of config_dump without the options
 * that do not change what is trained) decides whether a run directory or
 * the checkpoints of --load=DIR belong to the run at hand.
 */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fwrun.h"

/* --- INI text: the value of [section] key ------------------------------------------ */

/* Calls fn(section, key, value) for each "key = value" line of an INI text
 * as config_dump writes it (comments and blank lines skipped). */
static void ini_each(const char *text, void (*fn)(void *, const char *, const char *,
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

/* [section] key of an INI text, malloc'd; NULL if absent. */
static char *ini_lookup(const char *text, const char *section, const char *key)
{
	struct ini_find f = { section, key, NULL };
	ini_each(text, find_cb, &f);
	return f.value;
}

/* --- tensors no loaded plugin owns -------------------------------------------------------- */

/* The plugins a file's run loaded that this run does not: "peft/lora", or
 * "a plugin this run does not load" when the file does not say. */
static void missing_plugins(const char *path, const struct fw_plugin_slots *slots, char *out,
			    size_t len)
{
	char *config = NULL, *list = NULL;
	out[0] = '\0';
	if (fw_rt_ckpt_read_config(path, &config, NULL) == FW_OK)
		list = ini_lookup(config, "run", "plugins");
	fw_free(config);
	static const struct fw_plugin_slots none = { 0 };
	const struct fw_plugin_slots *sl = slots ? slots : &none;
	const struct fw_loaded *have[] = { sl->arch, sl->attention, sl->peft, sl->optim };
	for (char *save = NULL, *p = list ? strtok_r(list, ",", &save) : NULL; p;
	     p = strtok_r(NULL, ",", &save)) {
		while (*p == ' ')
			p++;
		bool loaded = false;
		for (size_t i = 0; i < sizeof(have) / sizeof(have[0]); i++)
			loaded |= have[i] && (!strcmp(have[i]->desc->name, p) ||
					      !strcmp(have[i]->path, p));
		/* An optimizer owns no tensor a model loads; without slots (export)
		 * the arch's and attention's tensors are the ones taken. */
		loaded |= !strncmp(p, "optim/", 6) ||
			  (!slots && (!strncmp(p, "arch/", 5) || !strncmp(p, "attention/", 10)));
		if (!loaded && *p)
			snprintf(out + strlen(out), len - strlen(out), "%s%s", out[0] ? ", " : "", p);
	}
	free(list);
	if (!out[0])
		snprintf(out, len, "a plugin this run does not load");
}

/* "a, b, c and 4 more" of the names[0..n). */
static void name_list(char **names, int n, char *out, size_t len)
{
	out[0] = '\0';
	int shown = n < 3 ? n : 3;
	for (int i = 0; i < shown; i++)
		snprintf(out + strlen(out), len - strlen(out), "%s%s", i ? ", " : "", names[i]);
	if (n > shown)
		snprintf(out + strlen(out), len - strlen(out), " and %d more", n - shown);
}

enum fw_status check_foreign_tensors(const char *path, struct fw_tensor **params, int n,
				     const struct fw_plugin_slots *slots, bool base_only,
				     struct fw_err *err)
{
	struct fw_h5_entry *ents = NULL;
	int ne = 0;
	enum fw_status st = fw_h5_list(path, &ents, &ne, err);
	if (st != FW_OK)
		return st;
	char **foreign = malloc(sizeof(char *) * (size_t)(ne + 1));
	int nf = 0;
	if (!foreign) {
		fw_free(ents);
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	}
	for (int k = 0; k < ne; k++) {
		if (!strncmp(ents[k].name, "optim.", 6))
			continue;      /* optimizer state: the optimizer's business */
		bool mine = false;
		for (int i = 0; i < n && !mine; i++)
			mine = !strcmp(params[i]->name, ents[k].name);
		if (!mine)
			foreign[nf++] = ents[k].name;
	}
	if (nf) {
		char names[512], need[512];
		name_list(foreign, nf, names, sizeof(names));
		missing_plugins(path, slots, need, sizeof(need));
		if (base_only)
			fprintf(stderr, "fwrun: --base-only: dropping %d tensor%s of %s that no "
				"loaded plugin owns (%s; they belong to %s)\n", nf, nf == 1 ? "" : "s",
				path, names, need);
		else
			st = fw_errorf(err, FW_ERR_INVALID,
				       "%s holds %d trained tensor%s that no loaded plugin owns (%s); "
				       "they need %s: %s, or pass --base-only to drop them", path, nf,
				       nf == 1 ? "" : "s", names, need, slots ? "add it to --plugins" :
				       "fold them into the weights first (fwrun merge)");
	}
	free(foreign);
	fw_free(ents);
	return st;
}

/* --- configuration identity ------------------------------------------------------------------ */

/* Options of [run] that do not change what a run trains: where it writes,
 * how often it logs, how long it goes on, and other commands' options. */
static const char *const incidental[] = {
	"load", "finetune", "run-dir", "save", "save-interval", "threads", "log-interval",
	"eval-interval", "eval-iters", "valid-data", "train-iters", "overwrite", "base-only",
	"prompt-tokens", "max-new-tokens", "temperature", "top-k", "top-p", "prompt",
	"prompt-file", "repetition-penalty", "stop", "interactive", "score-data",
	"merge-adapter", "max-bad-records", "plugins",
};

struct ident {
	char **key, **value;
	int n, cap;
};

static void ident_cb(void *arg, const char *section, const char *key, const char *value)
{
	struct ident *id = arg;
	bool run = !*section || !strcmp(section, "run");
	char k[300];
	if (run && !key)
		return;
	for (size_t i = 0; run && i < sizeof(incidental) / sizeof(incidental[0]); i++)
		if (!strcmp(key, incidental[i]))
			return;
	if (run)
		snprintf(k, sizeof(k), "--%s", key);
	else if (key)
		snprintf(k, sizeof(k), "--%s (%s)", key, section);
	else
		snprintf(k, sizeof(k), "plugin %s", section);
	if (id->n == id->cap) {
		int cap = id->cap ? 2 * id->cap : 64;
		char **nk = realloc(id->key, sizeof(char *) * (size_t)cap);
		if (nk)
			id->key = nk;
		char **nv = realloc(id->value, sizeof(char *) * (size_t)cap);
		if (nv)
			id->value = nv;
		if (!nk || !nv)
			return;
		id->cap = cap;
	}
	id->key[id->n] = strdup(k);
	id->value[id->n++] = strdup(value ? value : "loaded");
}

static void ident_free(struct ident *id)
{
	for (int i = 0; i < id->n; i++) {
		free(id->key[i]);
		free(id->value[i]);
	}
	free(id->key);
	free(id->value);
}

static const char *ident_get(const struct ident *id, const char *key)
{
	for (int i = 0; i < id->n; i++)
		if (id->key[i] && !strcmp(id->key[i], key))
			return id->value[i];
	return NULL;
}

bool config_same_run(const char *a, const char *b, const char *a_name, const char *b_name,
		     char *why, size_t len)
{
	struct ident x = { 0 }, y = { 0 };
	ini_each(a, ident_cb, &x);
	ini_each(b, ident_cb, &y);
	bool same = true;
	for (int pass = 0; pass < 2 && same; pass++) {
		const struct ident *p = pass ? &y : &x, *q = pass ? &x : &y;
		for (int i = 0; i < p->n && same; i++) {
			if (!p->key[i])
				continue;
			const char *other = ident_get(q, p->key[i]);
			if (other && !strcmp(other, p->value[i]))
				continue;
			same = false;
			const char *va = pass ? other : p->value[i], *vb = pass ? p->value[i] : other;
			snprintf(why, len, "%s is %s%s%s in %s, %s%s%s in %s", p->key[i],
				 va ? "'" : "", va ? va : "not set", va ? "'" : "", a_name,
				 vb ? "'" : "", vb ? vb : "not set", vb ? "'" : "", b_name);
		}
	}
	ident_free(&x);
	ident_free(&y);
	return same;
}

/* --- checkpoints of a directory ------------------------------------------------------------------ */

enum fw_status check_dir_checkpoints(const char *dir, struct fw_err *err)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char *first = NULL, first_path[4400] = "";
	enum fw_status st = FW_OK;
	while (d && st == FW_OK && (e = readdir(d))) {
		char path[4400];
		struct stat fs;
		if (ckpt_step(e->d_name) < 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		char *config = NULL;
		if (stat(path, &fs) != 0 || !S_ISREG(fs.st_mode) ||
		    fw_rt_ckpt_read_config(path, &config, NULL) != FW_OK)
			continue;      /* unreadable ones are reported when loaded */
		char why[600];
		if (!first) {
			first = config;
			snprintf(first_path, sizeof(first_path), "%s", path);
			continue;
		}
		if (!config_same_run(first, config, first_path, path, why, sizeof(why)))
			st = fw_errorf(err, FW_ERR_INVALID,
				       "%s holds checkpoints of different configurations (%s); "
				       "name one with --load=FILE", dir, why);
		fw_free(config);
	}
	if (d)
		closedir(d);
	fw_free(first);
	return st;
}

/* --- merged models ---------------------------------------------------------------------- */

/* config_dump's INI without the peft plugin: its [peft/...] section and its
 * entry in [run] plugins (a merged model needs no peft plugin). malloc'd. */
char *config_without_peft(const char *text)
{
	char *out = malloc(strlen(text) + 1);
	if (!out)
		return NULL;
	out[0] = '\0';
	bool skip = false;
	for (const char *l = text; *l;) {
		const char *end = strchr(l, '\n');
		size_t n = end ? (size_t)(end - l + 1) : strlen(l);
		if (*l == '[')
			skip = !strncmp(l, "[peft/", 6);
		if (!skip && !strncmp(l, "plugins = ", 10)) {
			char line[4400];
			snprintf(line, sizeof(line), "%.*s", (int)(n < sizeof(line) ? n : sizeof(line) - 1),
				 l);
			line[strcspn(line, "\n")] = '\0';
			strcat(out, "plugins = ");
			bool first = true;
			for (char *save = NULL, *p = strtok_r(line + 10, ",", &save); p;
			     p = strtok_r(NULL, ",", &save))
				if (strncmp(p, "peft/", 5)) {
					strcat(out, first ? "" : ",");
					strcat(out, p);
					first = false;
				}
			strcat(out, "\n");
		} else if (!skip) {
			strncat(out, l, n);
		}
		l += n;
	}
	return out;
}

/* --- checkpoints and adapters of a directory (--load, --adapter) ----------------------- */

long long ckpt_step(const char *name)
{
	return fw_rt_numbered_name(name, "ckpt-", ".h5");
}

/* --load=DIR picks the newest complete checkpoint in it. */
enum fw_status resolve_load(const char *arg, char *out, size_t len, struct fw_err *err)
{
	enum fw_status st = fw_rt_newest_file(arg, "ckpt-", out, len, err);
	if (st != FW_OK || strcmp(out, arg) == 0)
		return st;
	if (!out[0])
		return fw_errorf(err, FW_ERR_NOT_FOUND, "%s: no checkpoint (ckpt-*.h5) in directory",
				 arg);
	return check_dir_checkpoints(arg, err);
}

enum fw_status resolve_adapter(const char *arg, char *out, size_t len, struct fw_err *err)
{
	enum fw_status st = fw_rt_newest_file(arg, "adapter-", out, len, err);
	if (st == FW_OK && !out[0])
		st = fw_errorf(err, FW_ERR_NOT_FOUND, "%s: no adapter (adapter-*.h5) in directory",
			       arg);
	return st;
}
