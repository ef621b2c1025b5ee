/* weights.c - a model's weights from a file: every parameter by name, new
 * adapter tensors kept at their initialisation, and no tensor of the file
 * silently dropped (fw/runtime/model.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/io.h"
#include "fw/quant.h"
#include "fw/runtime/checkpoint.h"
#include "fw/runtime/ini.h"
#include "fw/runtime/model.h"

/* The owners the file records for foreign[0..n) ("peft/lora", each once);
 * false, with out empty, unless it records one for each. */
static bool recorded_owners(const char *path, char **foreign, int n, char *out, size_t len)
{
	out[0] = '\0';
	for (int i = 0; i < n; i++) {
		char *o = fw_rt_ckpt_owner(path, foreign[i]);
		if (!o) {
			out[0] = '\0';
			return false;
		}
		size_t ol = strlen(o);
		bool listed = false;
		for (const char *p = strstr(out, o); p && !listed; p = strstr(p + 1, o))
			listed = (p == out || p[-1] == ' ') && (!p[ol] || p[ol] == ',');
		if (!listed)
			snprintf(out + strlen(out), len - strlen(out), "%s%s", out[0] ? ", " : "", o);
		fw_free(o);
	}
	return n > 0;
}

/* The plugins that own foreign[0..n): as the file records per tensor, else
 * those its run loaded and this run does not ("peft/lora"), else "a plugin
 * this run does not load". */
static void missing_plugins(const char *path, const struct fw_plugin_slots *slots,
			    char **foreign, int n, char *out, size_t len)
{
	char *config = NULL, *list = NULL;
	if (recorded_owners(path, foreign, n, out, len))
		return;
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
		missing_plugins(path, slots, foreign, nf, need, sizeof(need));
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

static struct fw_tensor *param_named(struct fw_tensor *const *params, int n, const char *stem,
				      const char *suffix)
{
	size_t ls = strlen(stem);
	for (int i = 0; i < n; i++)
		if (!strncmp(params[i]->name, stem, ls) && !strcmp(params[i]->name + ls, suffix))
			return params[i];
	return NULL;
}

/* An NF4 weight (fw/quant.h: the q4 codes and their two statistics tensors)
 * that the file holds in f32, bf16 or f16 (a plain model, an import) is read
 * and quantized at load; done[] marks the three tensors. */
static enum fw_status quantize_at_load(const char *path, const struct fw_h5_entry *ents, int ne,
				       struct fw_tensor *const *params, int n, bool *done,
				       struct fw_err *err)
{
	for (int i = 0; i < n; i++) {
		struct fw_tensor *c = params[i];
		struct fw_tensor *qa = param_named(params, n, c->name, FW_NF4_ABSMAX_SUFFIX);
		struct fw_tensor *st = param_named(params, n, c->name, FW_NF4_STATS_SUFFIX);
		const struct fw_h5_entry *e = NULL;
		for (int k = 0; k < ne && !e; k++)
			e = !strcmp(ents[k].name, c->name) ? &ents[k] : NULL;
		if (c->dtype != FW_Q4 || !qa || !st || !e || e->dtype == FW_Q4)
			continue;
		struct fw_tensor tmp = { .dtype = e->dtype, .ndim = e->ndim };
		memcpy(tmp.ne, e->ne, sizeof(tmp.ne));
		snprintf(tmp.name, sizeof(tmp.name), "%s", e->name);
		fw_set_contiguous_strides(&tmp);
		if (!fw_same_shape(&tmp, c) || (e->dtype != FW_F32 && e->dtype != FW_BF16 &&
						e->dtype != FW_F16))
			return fw_errorf(err, FW_ERR_SHAPE, "%s: '%s' is %s with another shape than "
					 "this model's 4-bit weight, so it cannot be quantized into "
					 "it", path, e->name, fw_dtype_name(e->dtype));
		int64_t m = fw_nelem(c);
		tmp.data = malloc(fw_nbytes(&tmp) + 1);
		float *w = malloc(sizeof(float) * (size_t)m + 1);
		enum fw_status s = !tmp.data || !w ? fw_errorf(err, FW_ERR_NOMEM, "out of memory") :
				   fw_h5_load(path, (struct fw_tensor *[]){ &tmp }, 1, err);
		if (s == FW_OK) {
			fw_convert(w, FW_F32, tmp.data, tmp.dtype, m);
			fw_nf4_quantize(w, m, c->data, qa->data, fw_f32(st));
			for (int k = 0; k < n; k++)
				done[k] |= params[k] == c || params[k] == qa || params[k] == st;
		}
		free(tmp.data);
		free(w);
		if (s != FW_OK)
			return s;
	}
	return FW_OK;
}

/* An f32 parameter that the file holds in bf16 or f16 (fwrun merge
 * --dtype=bf16) is read and widened; done[] marks it. */
static enum fw_status widen_at_load(const char *path, const struct fw_h5_entry *ents, int ne,
				    struct fw_tensor *const *params, int n, bool *done,
				    struct fw_err *err)
{
	for (int i = 0; i < n; i++) {
		struct fw_tensor *c = params[i];
		const struct fw_h5_entry *e = NULL;
		for (int k = 0; k < ne && !e; k++)
			e = !strcmp(ents[k].name, c->name) ? &ents[k] : NULL;
		if (done[i] || c->dtype != FW_F32 || !e ||
		    (e->dtype != FW_BF16 && e->dtype != FW_F16))
			continue;
		struct fw_tensor tmp = { .dtype = e->dtype, .ndim = e->ndim };
		memcpy(tmp.ne, e->ne, sizeof(tmp.ne));
		snprintf(tmp.name, sizeof(tmp.name), "%s", e->name);
		fw_set_contiguous_strides(&tmp);
		if (!fw_same_shape(&tmp, c))
			continue;               /* fw_h5_load names the mismatch */
		tmp.data = malloc(fw_nbytes(&tmp) + 1);
		enum fw_status s = !tmp.data ? fw_errorf(err, FW_ERR_NOMEM, "out of memory") :
				   fw_h5_load(path, (struct fw_tensor *[]){ &tmp }, 1, err);
		if (s == FW_OK)
			fw_convert(c->data, FW_F32, tmp.data, tmp.dtype, fw_nelem(c));
		fw_tensor_mark_written(c);
		free(tmp.data);
		if (s != FW_OK)
			return s;
		done[i] = true;
	}
	return FW_OK;
}

enum fw_status fw_rt_model_load_weights(const char *path, struct fw_tensor *const *params,
					int n, const struct fw_plugin_slots *slots, bool base_only,
					int *n_new, const struct fw_rt_log *log, struct fw_err *err)
{
	int not_asked;
	if (!n_new)
		n_new = &not_asked;
	*n_new = 0;
	enum fw_status st = fw_rt_check_foreign_tensors(path, params, n, slots, base_only, log, err);
	if (st != FW_OK)
		return st;
	struct fw_h5_entry *ents = NULL;
	int ne = 0;
	if ((st = fw_h5_list(path, &ents, &ne, err)) != FW_OK)
		return st;
	struct fw_tensor **have = malloc(sizeof(*have) * (size_t)(n + 1));
	bool *done = calloc((size_t)n + 1, sizeof(bool));
	if (!have || !done ||
	    (st = quantize_at_load(path, ents, ne, params, n, done, err)) != FW_OK ||
	    (st = widen_at_load(path, ents, ne, params, n, done, err)) != FW_OK) {
		free(have);
		free(done);
		fw_free(ents);
		return st != FW_OK ? st : fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	}
	int nh = 0;
	for (int i = 0; i < n; i++) {
		if (done[i])
			continue;
		bool in_file = false;
		for (int k = 0; k < ne && !in_file; k++)
			in_file = !strcmp(ents[k].name, params[i]->name);
		/* A trainable tensor the file lacks is new (an adapter's): it keeps
		 * its initialisation, as does a plugin's state tensor. Anything else goes to fw_h5_load, which names
		 * what is missing. */
		/* So is a task head the arch marks (BERT's classifier and pooler)
		 * on a model the file has no head for (a BertModel, an MLM model). */
		bool head = params[i]->flags & FW_FLAG_TASK_HEAD;
		if (in_file || !(params[i]->flags & (FW_FLAG_TRAINABLE | FW_FLAG_STATE)) ||
		    (!slots->peft && !head))
			have[nh++] = params[i];
		else if (!(params[i]->flags & FW_FLAG_STATE))
			(*n_new)++;
	}
	st = fw_h5_load(path, have, nh, err);
	free(have);
	free(done);
	fw_free(ents);
	return st;
}

