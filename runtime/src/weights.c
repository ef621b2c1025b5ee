/* weights.c - a model's weights from a file: every parameter by name, new
 * adapter tensors kept at their initialisation, and no tensor of the file
 * silently dropped (fw/runtime/model.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/io.h"
#include "fw/runtime/checkpoint.h"
#include "fw/runtime/ini.h"
#include "fw/runtime/model.h"

/* The plugins a file's run loaded that this run does not: "peft/lora", or
 * "a plugin this run does not load" when the file does not say. */
static void missing_plugins(const char *path, const struct fw_plugin_slots *slots, char *out,
			    size_t len)
{
	char *config = NULL, *list = NULL;
	out[0] = '\0';
	if (fw_rt_ckpt_read_config(path, &config, NULL) == FW_OK)
		list = fw_rt_ini_lookup(config, "run", "plugins");
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

enum fw_status fw_rt_check_foreign_tensors(const char *path, struct fw_tensor *const *params,
					   int n, const struct fw_plugin_slots *slots,
					   bool base_only, const struct fw_rt_log *log,
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
			fw_rt_logf(log, FW_LOG_WARN, "--base-only: dropping %d tensor%s of %s that "
				   "no loaded plugin owns (%s; they belong to %s)", nf,
				   nf == 1 ? "" : "s", path, names, need);
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

enum fw_status fw_rt_model_load_weights(const char *path, struct fw_tensor *const *params,
					int n, const struct fw_plugin_slots *slots, bool base_only,
					int *n_new, const struct fw_rt_log *log, struct fw_err *err)
{
	*n_new = 0;
	enum fw_status st = fw_rt_check_foreign_tensors(path, params, n, slots, base_only, log, err);
	if (st != FW_OK)
		return st;
	bool heads = slots->arch && !strcmp(slots->arch->desc->name, "arch/encoder");
	if (!slots->peft && !heads)
		return fw_h5_load(path, params, n, err);
	struct fw_h5_entry *ents = NULL;
	int ne = 0;
	if ((st = fw_h5_list(path, &ents, &ne, err)) != FW_OK)
		return st;
	struct fw_tensor **have = malloc(sizeof(*have) * (size_t)(n + 1));
	if (!have) {
		fw_free(ents);
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	}
	int nh = 0;
	for (int i = 0; i < n; i++) {
		bool in_file = false;
		for (int k = 0; k < ne && !in_file; k++)
			in_file = !strcmp(ents[k].name, params[i]->name);
		/* A trainable tensor the file lacks is new (an adapter's): it keeps
		 * its initialisation. Anything else goes to fw_h5_load, which names
		 * what is missing. */
		/* So is an encoder's task head (HF's classifier / pooler) on a
		 * model the file has no head for (a BertModel, an MLM model). */
		bool head = heads && (!strncmp(params[i]->name, "classifier.", 11) ||
				      !strncmp(params[i]->name, "pooler.", 7));
		if (in_file || !(params[i]->flags & FW_FLAG_TRAINABLE) || (!slots->peft && !head))
			have[nh++] = params[i];
		else
			(*n_new)++;
	}
	st = fw_h5_load(path, have, nh, err);
	free(have);
	fw_free(ents);
	return st;
}

