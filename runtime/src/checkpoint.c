/* checkpoint.c - the checkpoint schema (fw/runtime/checkpoint.h). */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fw/io.h"
#include "fw/runtime/checkpoint.h"
#include "fw/runtime/model.h"

/* "TENSOR PLUGIN\n" per parameter (malloc'd; NULL when out of memory). */
static char *owners_text(struct fw_tensor *const *params, int n,
			 const struct fw_plugin_slots *plugins)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		return NULL;
	for (int i = 0; i < n; i++)
		fprintf(f, "%s %s\n", params[i]->name, fw_rt_param_owner(params[i], plugins));
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	return buf;
}

char *fw_rt_ckpt_owner(const char *path, const char *name)
{
	char *text = NULL, *owner = NULL;
	struct fw_err e = { 0 };
	if (fw_h5_read_attr(path, FW_CKPT_ATTR_OWNERS, &text, &e) != FW_OK)
		return NULL;
	size_t nl = strlen(name);
	for (const char *l = text; l && *l && !owner; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
		if (strncmp(l, name, nl) || l[nl] != ' ')
			continue;
		const char *p = l + nl + 1;
		size_t pl = strcspn(p, "\n");
		if (pl && (owner = fw_malloc(pl + 1))) {
			memcpy(owner, p, pl);
			owner[pl] = '\0';
		}
	}
	fw_free(text);
	return owner;
}

enum fw_status fw_rt_ckpt_save(const char *path, struct fw_tensor *const *params, int n_params,
			       struct fw_tensor *const *state, int n_state,
			       const struct fw_rt_ckpt_meta *meta, struct fw_err *err)
{
	struct fw_tensor **all = malloc(sizeof(*all) * (size_t)(n_params + n_state + 1));
	if (!all)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	if (n_params)
		memcpy(all, params, sizeof(*all) * (size_t)n_params);
	if (n_state)
		memcpy(all + n_params, state, sizeof(*all) * (size_t)n_state);
	char step[32], epoch[32], cursor[32], tokens[32], seed[32], skipped[32];
	char scale[32] = "", growth[32] = "", hyst[32] = "";
	snprintf(step, sizeof(step), "%lld", (long long)meta->step);
	snprintf(epoch, sizeof(epoch), "%lld", (long long)meta->data_epoch);
	snprintf(cursor, sizeof(cursor), "%lld", (long long)meta->data_cursor);
	snprintf(tokens, sizeof(tokens), "%lld", (long long)meta->tokens);
	snprintf(seed, sizeof(seed), "%lld", (long long)meta->seed);
	char *owners = meta->plugins ? owners_text(params, n_params, meta->plugins) : NULL;
	if (meta->plugins && !owners) {
		free(all);
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	}
	snprintf(skipped, sizeof(skipped), "%lld", (long long)meta->skipped);
	const struct fw_rt_grad_scaler *sc = meta->scaler;
	if (sc) {      /* %.9g gives an f32 back exactly */
		snprintf(scale, sizeof(scale), "%.9g", (double)sc->scale);
		snprintf(growth, sizeof(growth), "%lld", (long long)sc->growth_tracker);
		snprintf(hyst, sizeof(hyst), "%lld", (long long)sc->hysteresis_tracker);
	}
	struct fw_h5_attr attrs[14] = {
		{ FW_CKPT_ATTR_MARK, "1" }, { FW_CKPT_ATTR_CONFIG, meta->config ? meta->config : "" },
		{ "step", step }, { "data_epoch", epoch }, { "data_cursor", cursor },
		{ "tokens", tokens }, { "seed", seed },
		{ "optimizer", meta->optimizer ? meta->optimizer : "" }, { "skipped_iters", skipped },
	};
	int n_attrs = 9;
	if (meta->tokenizer)
		attrs[n_attrs++] = (struct fw_h5_attr){ FW_CKPT_ATTR_TOKENIZER, meta->tokenizer };
	if (owners)
		attrs[n_attrs++] = (struct fw_h5_attr){ FW_CKPT_ATTR_OWNERS, owners };
	if (sc) {
		attrs[n_attrs++] = (struct fw_h5_attr){ "loss_scale", scale };
		attrs[n_attrs++] = (struct fw_h5_attr){ "growth_tracker", growth };
		attrs[n_attrs++] = (struct fw_h5_attr){ "hysteresis_tracker", hyst };
	}
	enum fw_status st = fw_h5_save(path, all, n_params + n_state, attrs, n_attrs, err);
	free(owners);
	free(all);
	return st;
}

enum fw_status fw_rt_ckpt_probe(const char *path, bool *is_ckpt, struct fw_err *err)
{
	char *mark = NULL;
	struct fw_err e = { 0 };
	*is_ckpt = fw_h5_read_attr(path, FW_CKPT_ATTR_MARK, &mark, &e) == FW_OK;
	fw_free(mark);
	if (!*is_ckpt && (e.status == FW_ERR_IO || e.status == FW_ERR_FORMAT)) {
		if (err)
			*err = e;
		return e.status;
	}
	return FW_OK;
}

static enum fw_status attr_int(const char *path, const char *name, int64_t *out,
			       struct fw_err *err)
{
	char *v = NULL;
	enum fw_status st = fw_h5_read_attr(path, name, &v, err);
	if (st != FW_OK)
		return st;
	char *end;
	long long x = strtoll(v, &end, 10);
	if (*end || !*v)
		st = fw_errorf(err, FW_ERR_FORMAT, "%s: attribute '%s' is not an integer", path,
			       name);
	else
		*out = x;
	fw_free(v);
	return st;
}

enum fw_status fw_rt_ckpt_read_progress(const char *path, struct fw_rt_ckpt_meta *meta,
					struct fw_err *err)
{
	enum fw_status st;
	if ((st = attr_int(path, "step", &meta->step, err)) != FW_OK ||
	    (st = attr_int(path, "data_epoch", &meta->data_epoch, err)) != FW_OK ||
	    (st = attr_int(path, "data_cursor", &meta->data_cursor, err)) != FW_OK ||
	    (st = attr_int(path, "tokens", &meta->tokens, err)) != FW_OK)
		return st;
	struct fw_err e = { 0 };
	meta->skipped = 0;          /* older checkpoints: none */
	if ((st = attr_int(path, "skipped_iters", &meta->skipped, &e)) != FW_OK &&
	    st != FW_ERR_NOT_FOUND) {
		*err = e;
		return st;
	}
	return FW_OK;
}

enum fw_status fw_rt_ckpt_read_scaler(const char *path, struct fw_rt_grad_scaler *s,
				      struct fw_err *err)
{
	char *v = NULL;
	enum fw_status st = fw_h5_read_attr(path, "loss_scale", &v, err);
	if (st != FW_OK)
		return st;
	char *end;
	float scale = strtof(v, &end);
	bool bad = !*v || *end || !(scale > 0);
	fw_free(v);
	if (bad)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: attribute 'loss_scale' is not a positive "
				 "number", path);
	int64_t growth = 0, hyst = 0;
	if ((st = attr_int(path, "growth_tracker", &growth, err)) != FW_OK ||
	    (st = attr_int(path, "hysteresis_tracker", &hyst, err)) != FW_OK)
		return st;
	s->scale = scale;
	s->growth_tracker = growth;
	s->hysteresis_tracker = hyst;
	return FW_OK;
}

enum fw_status fw_rt_ckpt_read_config(const char *path, char **config, struct fw_err *err)
{
	return fw_h5_read_attr(path, FW_CKPT_ATTR_CONFIG, config, err);
}

long long fw_rt_numbered_name(const char *s, const char *prefix, const char *suffix)
{
	size_t len = strlen(s), np = strlen(prefix), ns = strlen(suffix), i = np;
	long long n = 0;
	if (len < np + 1 + ns || strncmp(s, prefix, np) || strncmp(s + len - ns, suffix, ns))
		return -1;
	for (; i < len - ns; i++) {
		if (!isdigit((unsigned char)s[i]) || n > (LLONG_MAX - 9) / 10)
			return -1;
		n = n * 10 + (s[i] - '0');
	}
	return n;
}

enum fw_status fw_rt_newest_file(const char *arg, const char *prefix, char *out, size_t len,
				 struct fw_err *err)
{
	struct stat st;
	out[0] = '\0';
	if (stat(arg, &st) != 0)
		return fw_errorf(err, FW_ERR_IO, "%s: %s", arg, strerror(errno));
	if (!S_ISDIR(st.st_mode)) {
		snprintf(out, len, "%s", arg);
		return FW_OK;
	}
	long long best = -1;
	DIR *d = opendir(arg);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		long long n = fw_rt_numbered_name(e->d_name, prefix, ".h5");
		char path[4400];
		struct stat fs;
		if (n <= best)
			continue;
		snprintf(path, sizeof(path), "%s/%s", arg, e->d_name);
		if (stat(path, &fs) == 0 && S_ISREG(fs.st_mode)) {
			best = n;
			snprintf(out, len, "%s", path);
		}
	}
	if (d)
		closedir(d);
	return FW_OK;
}
