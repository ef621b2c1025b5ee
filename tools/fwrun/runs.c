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

/* --- configuration identity ------------------------------------------------------------------ */

/* Options of [run] that do not change what a run trains: where it writes,
 * how often it logs, how long it goes on, and other commands' options. */
static const char *const incidental[] = {
	"load", "finetune", "run-dir", "save", "save-interval", "threads", "log-interval",
	"eval-interval", "eval-iters", "valid-data", "train-iters", "overwrite", "base-only",
	"prompt-tokens", "max-new-tokens", "temperature", "top-k", "top-p", "prompt",
	"prompt-file", "repetition-penalty", "stop", "interactive", "chat", "score-data",
	"merge-adapter", "max-bad-records", "plugins",
};

struct ident {
	const struct config *c;      /* for plugin options' defaults; may be NULL */
	char **key, **value;
	const char **def;            /* the option's default; NULL: none known */
	int n, cap;
};

static int ident_cb(void *arg, const char *section, const char *key, const char *value,
		    int line)
{
	struct ident *id = arg;
	(void)line;
	bool run = !*section || !strcmp(section, "run");
	char k[300];
	if (run && !key)
		return 1;
	for (size_t i = 0; run && i < sizeof(incidental) / sizeof(incidental[0]); i++)
		if (!strcmp(key, incidental[i]))
			return 1;
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
		const char **nd = realloc(id->def, sizeof(char *) * (size_t)cap);
		if (nd)
			id->def = nd;
		if (!nk || !nv || !nd)
			return 1;
		id->cap = cap;
	}
	id->key[id->n] = strdup(k);
	id->def[id->n] = key ? config_option_default(id->c, section, key) : NULL;
	id->value[id->n++] = strdup(value ? value : "loaded");
	return 1;
}

static void ident_free(struct ident *id)
{
	for (int i = 0; i < id->n; i++) {
		free(id->key[i]);
		free(id->value[i]);
	}
	free(id->key);
	free(id->value);
	free(id->def);
}

static const char *ident_get(const struct ident *id, const char *key)
{
	for (int i = 0; i < id->n; i++)
		if (id->key[i] && !strcmp(id->key[i], key))
			return id->value[i];
	return NULL;
}

bool config_same_run(const char *a, const char *b, const char *a_name, const char *b_name,
		     const struct config *c, char *why, size_t len)
{
	struct ident x = { .c = c }, y = { .c = c };
	fw_rt_ini_parse(a, ident_cb, &x);
	fw_rt_ini_parse(b, ident_cb, &y);
	bool same = true;
	for (int pass = 0; pass < 2 && same; pass++) {
		const struct ident *p = pass ? &y : &x, *q = pass ? &x : &y;
		for (int i = 0; i < p->n && same; i++) {
			if (!p->key[i])
				continue;
			const char *other = ident_get(q, p->key[i]);
			if (other && !strcmp(other, p->value[i]))
				continue;
			if (!other && p->def[i] && !strcmp(p->def[i], p->value[i]))
				continue;      /* an option newer than the other side, at its default */
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
		if (!config_same_run(first, config, first_path, path, NULL, why, sizeof(why)))
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
enum fw_status file_arch_name(const char *path, char *out, size_t len, struct fw_err *err)
{
	char *config = NULL, *list = NULL, *attr = NULL;
	out[0] = '\0';
	if (fw_rt_ckpt_read_config(path, &config, NULL) == FW_OK)
		list = fw_rt_ini_lookup(config, "run", "plugins");
	for (char *save = NULL, *p = list ? strtok_r(list, ",", &save) : NULL; p;
	     p = strtok_r(NULL, ",", &save)) {
		p += strspn(p, " ");
		if (!strncmp(p, "arch/", 5))
			snprintf(out, len, "%s", p);
	}
	if (!out[0] && fw_h5_read_attr(path, "fw_arch", &attr, NULL) == FW_OK)
		snprintf(out, len, "%s", attr);
	free(list);
	fw_free(config);
	fw_free(attr);
	if (!out[0])
		return fw_errorf(err, FW_ERR_FORMAT, "%s: names no arch plugin (no run "
				 "configuration, no fw_arch attribute)", path);
	return FW_OK;
}

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
