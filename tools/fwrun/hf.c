/* hf.c - fwrun import / export: Hugging Face transformers folders <-> fw
 * HDF5, through the arch plugin's Hugging Face map (fw_arch_i.hf_maps): which
 * arch reads a config.json's model_type, its check of that file, the keys
 * that are its options, and each parameter's model.safetensors key, with
 * the weights Hugging Face stores transposed. This file knows no model.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "fw/quant.h"
#include "fwrun.h"

/* An arch plugin, its map and its model at the smallest shape: the
 * parameters' names and shapes, allocated. */
struct hf_model {
	struct fw_loaded *arch, *att;
	const struct fw_hf_map *map;
	struct fw_plugin_slots slots;
	struct fw_ctx *ctx;
	struct fw_model m;
	struct fw_tensor **params;
	int n;
};

static void hf_model_free(struct hf_model *h)
{
	free(h->params);
	fw_ctx_free(h->ctx);
	fw_plugin_close(h->att);
	fw_plugin_close(h->arch);
	memset(h, 0, sizeof(*h));
}

/* The first arch plugin found (fw_plugin_discover's order) with a map of
 * model_type, the map of config.json's architectures[0] (architecture)
 * first; with model_type NULL, the first whose map's check accepts path
 * (for a config.json that names none), else that check's error. */
static enum fw_status find_arch(const char *model_type, const char *architecture,
				const char *path, struct hf_model *h, struct fw_err *err)
{
	char **paths = NULL, types[512] = "";
	int n = 0;
	enum fw_status st = fw_plugin_discover(&paths, &n, err);
	struct fw_err first = { 0 };
	for (int pass = architecture ? 0 : 1; pass < 2 && st == FW_OK && !h->map; pass++) {
		for (int i = 0; i < n && !h->map; i++) {
			struct fw_loaded *p = NULL;
			struct fw_err e = { 0 };
			if (fw_plugin_open(paths[i], FW_KIND_ARCH, &p, &e) != FW_OK)
				continue;
			const struct fw_arch_i *ai = p->desc->iface;
			for (const struct fw_hf_map *const *m = ai->hf_maps; m && *m && !h->map; m++) {
				char quoted[80];
				snprintf(quoted, sizeof(quoted), "\"%s\"", (*m)->model_type);
				if (pass == 1 && !strstr(types, quoted))
					snprintf(types + strlen(types), sizeof(types) - strlen(types),
						 "%s%s", types[0] ? ", " : "", quoted);
				if ((model_type && strcmp((*m)->model_type, model_type)) ||
				    (pass == 0 && strcmp((*m)->architecture, architecture)))
					continue;
				if (!model_type && (*m)->check_config &&
				    (*m)->check_config(path, &e) != FW_OK) {
					if (!first.status)
						first = e;
					continue;
				}
				h->map = *m;
			}
			if (h->map)
				h->arch = p;
			else
				fw_plugin_close(p);
		}
	}
	fw_plugin_paths_free(paths, n);
	if (st != FW_OK || h->map)
		return st;
	if (first.status)
		return *err = first, first.status;
	return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: model_type \"%s\" is not one an arch plugin "
			 "reads (%s)", path, model_type ? model_type : "", types[0] ? types : "none");
}

/* h->arch with its options set: initialised, with attention/mha (which
 * owns no weights) to build its model at (1, 1), parameters allocated. */
static enum fw_status build(struct hf_model *h, struct fw_err *err)
{
	enum fw_status st = fw_options_resolve(h->arch->opts, err);
	if (st == FW_OK)
		st = fw_plugin_init(h->arch, NULL, err);
	if (st == FW_OK)
		st = fw_plugin_open("attention/mha", FW_KIND_ATTENTION, &h->att, err);
	if (st == FW_OK && (st = fw_options_resolve(h->att->opts, err)) == FW_OK)
		st = fw_plugin_init(h->att, NULL, err);
	if (st != FW_OK)
		return st;
	h->slots = (struct fw_plugin_slots){ .arch = h->arch, .attention = h->att };
	struct fw_rt_model_spec spec = { .plugins = &h->slots, .batch = 1, .seq_len = 1 };
	if (!(h->ctx = fw_ctx_new()))
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	if ((st = fw_rt_model_build(&spec, h->ctx, &h->m, err)) != FW_OK)
		return st;
	if ((st = fw_ctx_alloc_params(h->ctx)) != FW_OK)
		return fw_errorf(err, st, "%s", fw_ctx_err(h->ctx)->msg);
	if ((h->n = fw_rt_model_params(h->ctx, &h->params)) < 0)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	return FW_OK;
}

/* A JSON value as it is written, for messages (cut at len). */
static void json_text(const json_t *v, char *out, size_t len)
{
	char *t = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
	snprintf(out, len, "%s", t ? t : "null");
	free(t);
}

/* --- fwrun import --------------------------------------------------------------------------- */

/* config.json's option keys onto the arch's options (the first alias
 * present of each), and the same as the "config" INI text of the file. */
static enum fw_status set_options(struct hf_model *h, const char *path, json_t *root,
				  char **ini, struct fw_err *err)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	fprintf(f, "[%s]\n", h->arch->desc->name);
	enum fw_status st = FW_OK;
	for (int i = 0; st == FW_OK && i < h->map->n_keys; i++) {
		const struct fw_hf_key *k = &h->map->keys[i];
		json_t *v = json_object_get(root, k->key);
		if (!v || fw_options_has(h->arch->opts, k->option))
			continue;
		char text[64], shown[64];
		if (json_is_integer(v))
			snprintf(text, sizeof(text), "%lld", (long long)json_integer_value(v));
		else if (json_is_real(v))
			snprintf(text, sizeof(text), "%.17g", json_real_value(v));
		else if (json_is_boolean(v))
			snprintf(text, sizeof(text), "%s", json_is_true(v) ? "true" : "false");
		else if (json_is_string(v))
			snprintf(text, sizeof(text), "%s", json_string_value(v));
		else
			text[0] = '\0';
		struct fw_err e = { 0 };
		if (!text[0] || fw_options_set(h->arch->opts, k->option, text, &e) != FW_OK) {
			json_text(v, shown, sizeof(shown));
			st = fw_errorf(err, FW_ERR_FORMAT, "%s: %s %s: %s", path, k->key, shown,
				       text[0] ? e.msg : "not a number, boolean or string");
		}
		fprintf(f, "%s = %s\n", k->option, text);
	}
	/* the options that are not one key each, where the keys set none */
	char extra[2048], *save = NULL;
	if (st == FW_OK && FW_HAS(h->map, import_options) && h->map->import_options &&
	    !h->map->import_options(path, extra, sizeof(extra)))
		st = fw_errorf(err, FW_ERR_INTERNAL, "%s: %s's options from it are too long", path,
			       h->arch->desc->name);
	else if (st == FW_OK && FW_HAS(h->map, import_options) && h->map->import_options) {
		for (char *line = strtok_r(extra, "\n", &save); line && st == FW_OK;
		     line = strtok_r(NULL, "\n", &save)) {
			char *eq = strstr(line, " = ");
			struct fw_err e = { 0 };
			if (!eq)
				continue;
			*eq = '\0';
			if (fw_options_has(h->arch->opts, line))
				continue;
			if (fw_options_set(h->arch->opts, line, eq + 3, &e) != FW_OK)
				st = fw_errorf(err, FW_ERR_FORMAT, "%s: %s", path, e.msg);
			fprintf(f, "%s = %s\n", line, eq + 3);
		}
	}
	if (fclose(f) != 0 && st == FW_OK)
		st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	if (st == FW_OK)
		*ini = buf;
	else
		free(buf);
	return st;
}

static void shape_text(int ndim, const int64_t *ne, char *out, size_t len)
{
	size_t n = (size_t)snprintf(out, len, "[");
	for (int i = 0; i < ndim && n < len; i++)
		n += (size_t)snprintf(out + n, len - n, "%s%lld", i ? ", " : "", (long long)ne[i]);
	if (n < len)
		snprintf(out + n, len - n, "]");
}

/* "vocab_size 264, n_embd 32": config.json's integer keys whose value is a
 * size of want (all of them when want is NULL), to say why a shape is. */
static void sizes_from(json_t *root, const struct fw_hf_map *map, const int64_t *want, int nd,
		       char *out, size_t len)
{
	out[0] = '\0';
	for (int i = 0; i < map->n_keys; i++) {
		json_t *v = json_object_get(root, map->keys[i].key);
		bool hit = json_is_integer(v) && !want;
		for (int d = 0; json_is_integer(v) && want && d < nd && !hit; d++)
			hit = json_integer_value(v) == want[d];
		if (hit)
			snprintf(out + strlen(out), len - strlen(out), "%s%s %lld", out[0] ? ", " : "",
				 map->keys[i].key, (long long)json_integer_value(v));
	}
}

/* The model.safetensors entry of key, with or without one of the map's
 * prefixes. */
static const struct fw_st_entry *find_key(const struct fw_st_file *f, const struct fw_hf_map *map,
					  const char *key)
{
	const struct fw_st_entry *e = fw_st_find(f, key);
	for (const char *const *p = map->key_prefixes; !e && p && *p; p++) {
		char pref[2 * FW_NAME_MAX];
		if (snprintf(pref, sizeof(pref), "%s%s", *p, key) < (int)sizeof(pref))
			e = fw_st_find(f, pref);
	}
	return e;
}

/* The bitsandbytes tensors of key (import_nf4.c), found as find_key
 * finds them; whether it is a 4-bit weight (it has a quant state). */
static bool bnb_part_of(const struct fw_st_file *f, const struct fw_hf_map *map, const char *key,
			struct bnb_part *p)
{
	memset(p, 0, sizeof(*p));
	p->key = key;
	for (int i = 0; i < BNB_N; i++) {
		char k[3 * FW_NAME_MAX];
		if (snprintf(k, sizeof(k), "%s%s", key, BNB_SUFFIX[i]) < (int)sizeof(k))
			p->t[i] = find_key(f, map, k);
	}
	return p->t[BNB_STATE] || p->t[BNB_STATE_FP4];
}

static bool ends_with(const char *s, const char *end)
{
	size_t n = strlen(s), m = strlen(end);
	return n >= m && !strcmp(s + n - m, end);
}

/* A parameter's Hugging Face tensors: one (tensor_key's, maybe transposed)
 * or parts stacked along dim 0 (the map's tensor_part). */
#define HF_PARTS_MAX 8
struct hf_part {
	char key[2 * FW_NAME_MAX];
	int64_t rows;
};

/* The parts of t (0: no Hugging Face counterpart); *tr: stored (in, out). */
static int parts_of(const struct hf_model *h, const struct fw_tensor *t, struct hf_part *p,
		    bool *tr)
{
	const struct fw_hf_map *m = h->map;
	int n = 0;
	*tr = false;
	while (FW_HAS(m, tensor_part) && m->tensor_part && n < HF_PARTS_MAX &&
	       m->tensor_part(h->arch->opts, t->name, n, p[n].key, sizeof(p[n].key), &p[n].rows))
		n++;
	if (n)
		return n;
	p[0].rows = t->ne[0];
	return m->tensor_key(h->arch->opts, t->name, p[0].key, sizeof(p[0].key), tr) ? 1 : 0;
}

/* The elements before row `row` of t, and in rows rows of it. */
static int64_t row_elems(const struct fw_tensor *t, int64_t rows)
{
	return t->ndim ? fw_nelem(t) / t->ne[0] * rows : rows;
}

/* Every parameter is in st with its shape (transposed where the map says)
 * and a float dtype; every tensor of st is a parameter or a buffer. */
static enum fw_status check_tensors(const struct fw_st_file *st, const char *path,
				    const char *config, json_t *root, struct hf_model *h,
				    struct fw_err *err)
{
	char have[96], want[96], why[256];
	struct hf_part parts[HF_PARTS_MAX];
	bool tr;
	for (int i = 0; i < h->n; i++) {
		const struct fw_tensor *t = h->params[i];
		int np = parts_of(h, t, parts, &tr);
		for (int j = 0; j < np; j++) {
			const char *key = parts[j].key;
			const struct fw_st_entry *e = find_key(st, h->map, key);
			struct bnb_part bp;
			if (bnb_part_of(st, h->map, key, &bp))
				continue;       /* import_nf4_weight checks it */
			if (!e)
				return fw_errorf(err, FW_ERR_FORMAT, "%s: missing tensor '%s'", path,
						 key);
			int64_t ne[FW_MAX_DIMS];
			memcpy(ne, t->ne, sizeof(ne));
			ne[0] = parts[j].rows;
			if (tr && t->ndim == 2)
				ne[0] = t->ne[1], ne[1] = t->ne[0];
			bool same = e->ndim == t->ndim;
			for (int d = 0; same && d < t->ndim; d++)
				same = e->ne[d] == ne[d];
			if (!same) {
				shape_text(e->ndim, e->ne, have, sizeof(have));
				shape_text(t->ndim, ne, want, sizeof(want));
				sizes_from(root, h->map, ne, t->ndim, why, sizeof(why));
				return fw_errorf(err, FW_ERR_FORMAT, "%s: tensor '%s' has shape %s; %s "
						 "(%s) needs %s", path, e->name, have, config, why,
						 want);
			}
			if (e->dtype != FW_F32 && e->dtype != FW_F16 && e->dtype != FW_BF16)
				return fw_errorf(err, FW_ERR_FORMAT, "%s: tensor '%s' has dtype %s, not a "
						 "float type (F32, F16, BF16)%s", path, e->name,
						 e->dtype == FW_Q4 ? "U8" : fw_dtype_name(e->dtype),
						 e->dtype == FW_Q4 ? ", and no bitsandbytes quant state" :
						 "");
		}
	}
	/* the parameters' tensors (with their bitsandbytes statistics) marked once */
	bool *known = calloc((size_t)st->n + 1, sizeof(bool));
	if (!known)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	for (int k = 0; k < h->n; k++) {
		int np = parts_of(h, h->params[k], parts, &tr);
		for (int j = 0; j < np; j++) {
			struct bnb_part bp;      /* t[BNB_WEIGHT]: the key's own tensor */
			bool q4 = bnb_part_of(st, h->map, parts[j].key, &bp);
			for (int b = 0; b < (q4 ? BNB_N : 1); b++)
				if (bp.t[b])
					known[bp.t[b] - st->entries] = true;
		}
	}
	enum fw_status s = FW_OK;
	for (int i = 0; i < st->n && s == FW_OK; i++) {
		const struct fw_st_entry *e = &st->entries[i];
		for (const char *const *b = h->map->buffer_suffixes; b && *b && !known[i]; b++)
			known[i] = ends_with(e->name, *b);
		if (!known[i]) {
			sizes_from(root, h->map, NULL, 0, why, sizeof(why));
			s = fw_errorf(err, FW_ERR_FORMAT, "%s: tensor '%s' is not one of the model %s "
				      "describes (%s)", path, e->name, config, why);
		}
	}
	free(known);
	return s;
}

/* out (R, Cc) = in^T where in is (Cc, R), any float dtype in, f32 out. */
static void transpose_to_f32(float *out, const void *in, enum fw_dtype dt, int64_t rows_in,
			     int64_t cols_in)
{
	float *tmp = malloc(sizeof(float) * (size_t)(rows_in * cols_in));
	if (!tmp)
		return;
	fw_convert(tmp, FW_F32, in, dt, rows_in * cols_in);
	for (int64_t r = 0; r < rows_in; r++)
		for (int64_t c = 0; c < cols_in; c++)
			out[c * rows_in + r] = tmp[r * cols_in + c];
	free(tmp);
}

/* The tokenizer of a Hugging Face folder: tokenizer.json, else vocab.json +
 * merges.txt; NULL with err clear when it has neither. One that fw cannot
 * read is an error (import without it by moving the files away), and so is
 * one with more tokens than config.json's vocab_size. */
static struct fw_tokenizer *folder_tokenizer(const char *dir, int64_t vocab, struct fw_err *err)
{
	char tj[4200], vj[4200], mt[4200];
	snprintf(tj, sizeof(tj), "%s/tokenizer.json", dir);
	snprintf(vj, sizeof(vj), "%s/vocab.json", dir);
	snprintf(mt, sizeof(mt), "%s/merges.txt", dir);
	struct fw_tokenizer *t = NULL;
	const char *from = tj;
	if (access(tj, F_OK) == 0)
		t = fw_tokenizer_load_hf_json(tj, err);
	else if (access(vj, F_OK) == 0 && access(mt, F_OK) == 0)
		t = fw_tokenizer_load_bpe(vj, mt, err), from = vj;
	if (t && fw_tokenizer_vocab_size(t) > vocab) {
		fw_errorf(err, FW_ERR_FORMAT, "%s/config.json: vocab_size %lld is less than the %d "
			  "tokens of the folder's tokenizer (%s)", dir, (long long)vocab,
			  fw_tokenizer_vocab_size(t), from);
		fw_tokenizer_free(t);
		t = NULL;
	}
	return t;
}

/* A folder's weights: model.safetensors, else the shards that
 * model.safetensors.index.json's weight_map names, as one list of entries
 * (all; its path is the file read). */
struct hf_weights {
	struct fw_st_file *shards;
	int n;
	struct fw_st_file all;
};

static void weights_close(struct hf_weights *w)
{
	for (int i = 0; i < w->n; i++)
		fw_st_close(&w->shards[i]);
	free(w->shards);
	free(w->all.entries);
	free(w->all.path);
	memset(w, 0, sizeof(*w));
}

/* The shard of the index's weight_map entry (key, file), opened once; the
 * key must be in it. */
static enum fw_status weights_shard(struct hf_weights *w, const char *dir, const char *idx,
				    const char *key, json_t *file, struct fw_err *err)
{
	char path[4200], t[128];
	if (!json_is_string(file) || strchr(json_string_value(file), '/')) {
		json_text(file, t, sizeof(t));
		return fw_errorf(err, FW_ERR_FORMAT, "%s: weight_map '%s': %s is not a file name in "
				 "the folder", idx, key, t);
	}
	snprintf(path, sizeof(path), "%s/%s", dir, json_string_value(file));
	int i = 0;
	while (i < w->n && strcmp(w->shards[i].path, path))
		i++;
	if (i == w->n) {
		struct fw_err e = { 0 };
		enum fw_status st = fw_st_open(path, &w->shards[i], &e);
		if (st != FW_OK)
			return fw_errorf(err, st, "%s (a shard of %s)", e.msg, idx);
		w->n++;
	}
	if (!fw_st_find(&w->shards[i], key))
		return fw_errorf(err, FW_ERR_FORMAT, "%s: weight_map puts '%s' in %s, which has no "
				 "such tensor", idx, key, path);
	return FW_OK;
}

static enum fw_status weights_open(const char *dir, struct hf_weights *w, struct fw_err *err)
{
	char path[4200], idx[4200];
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	snprintf(idx, sizeof(idx), "%s/model.safetensors.index.json", dir);
	json_t *root = NULL, *map = NULL, *file;
	enum fw_status st = FW_OK;
	const char *key, *from = path;
	if (access(path, F_OK) != 0 && access(idx, F_OK) == 0) {
		json_error_t je;
		from = idx;
		if (!(root = json_load_file(idx, JSON_REJECT_DUPLICATES, &je)))
			return fw_errorf(err, FW_ERR_FORMAT, "%s:%d:%d: %s", idx, je.line, je.column,
					 je.text);
		map = json_object_get(root, "weight_map");
		if (!json_is_object(map) || !json_object_size(map)) {
			json_decref(root);
			return fw_errorf(err, FW_ERR_FORMAT, "%s: weight_map is not an object of tensor "
					 "names to shard files", idx);
		}
	}
	if (!(w->shards = calloc(map ? json_object_size(map) : 1, sizeof(*w->shards)))) {
		json_decref(root);
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	}
	if (!map && (st = fw_st_open(path, &w->shards[0], err)) == FW_OK)
		w->n = 1;
	json_object_foreach(map, key, file) {
		if (st == FW_OK)
			st = weights_shard(w, dir, idx, key, file, err);
	}
	int total = 0;
	for (int i = 0; i < w->n; i++)
		total += w->shards[i].n;
	if (st == FW_OK && (!(w->all.path = strdup(from)) ||
			    !(w->all.entries = calloc((size_t)total + 1, sizeof(*w->all.entries)))))
		st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	/* every tensor of a shard is the index's, in that shard */
	for (int i = 0; st == FW_OK && i < w->n; i++) {
		for (int j = 0; st == FW_OK && j < w->shards[i].n; j++) {
			const struct fw_st_entry *e = &w->shards[i].entries[j];
			file = map ? json_object_get(map, e->name) : NULL;
			char at[4200];
			snprintf(at, sizeof(at), "%s/%s", dir, json_string_value(file) ?
				 json_string_value(file) : "");
			if (map && (!file || strcmp(at, w->shards[i].path)))
				st = fw_errorf(err, FW_ERR_FORMAT, "%s: tensor '%s' of %s is %s", idx,
					       e->name, w->shards[i].path, file ? "in weight_map under "
					       "another shard" : "not in weight_map");
			else
				w->all.entries[w->all.n++] = *e;
		}
	}
	json_decref(root);
	if (st != FW_OK)
		weights_close(w);
	return st;
}

/* config.json, parsed: an error names the line and column; the arch's
 * check names key and value. */
static json_t *load_config(const char *path, struct fw_err *err)
{
	json_error_t je;
	json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
	if (!root && errno == ENOENT && je.line < 0)
		fw_errorf(err, FW_ERR_IO, "%s: %s", path, je.text);
	else if (!root)
		fw_errorf(err, FW_ERR_FORMAT, "%s:%d:%d: %s", path, je.line, je.column, je.text);
	else if (!json_is_object(root)) {
		fw_errorf(err, FW_ERR_FORMAT, "%s: not a JSON object", path);
		json_decref(root);
		root = NULL;
	}
	return root;
}

/* config.json's id2label ({"0": "neg", ...}: Hugging Face's class names)
 * as the file's label list, "[run] labels = neg,..." in id order, put
 * before the arch's section of *ini. */
static enum fw_status import_labels(const char *path, json_t *root, char **ini,
				    struct fw_err *err)
{
	json_t *m = json_object_get(root, "id2label");
	if (!m)
		return FW_OK;
	size_t n = json_is_object(m) ? json_object_size(m) : 0, len = strlen(*ini) + 32;
	for (size_t i = 0; i < n; i++) {
		char k[32];
		snprintf(k, sizeof(k), "%zu", i);
		const char *v = json_string_value(json_object_get(m, k));
		if (!v || !*v || strpbrk(v, ",\n"))
			return fw_errorf(err, FW_ERR_FORMAT, "%s: id2label has no name for id %s (or one "
					 "with a comma or a line break)", path, k);
		len += strlen(v) + 1;
	}
	if (!n)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: id2label is not an object of class names",
				 path);
	char *out = malloc(len);
	if (!out)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	size_t at = (size_t)sprintf(out, "[run]\nlabels = ");
	for (size_t i = 0; i < n; i++) {
		char k[32];
		snprintf(k, sizeof(k), "%zu", i);
		at += (size_t)sprintf(out + at, "%s%s", i ? "," : "",
				      json_string_value(json_object_get(m, k)));
	}
	sprintf(out + at, "\n\n%s", *ini);
	free(*ini);
	*ini = out;
	return FW_OK;
}

/* dir/generation_config.json as read, checked (fw/runtime/genconfig.h);
 * NULL with err clear when the folder has none. */
static char *folder_genconfig(const char *dir, struct fw_err *err)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/generation_config.json", dir);
	if (access(path, F_OK) != 0)
		return NULL;
	size_t len;
	struct fw_rt_genconfig g;
	char *text = fw_rt_read_file(path, &len, err);
	if (text && fw_rt_genconfig_parse(text, len, path, &g, err) != FW_OK) {
		free(text);
		return NULL;
	}
	return text;
}

/* config.json's quantization_config, if any: bitsandbytes 4-bit (the
 * tensors say the rest), nothing fw cannot read. */
static enum fw_status import_quant_config(const char *path, json_t *root, struct fw_err *err)
{
	json_t *qc = json_object_get(root, "quantization_config");
	if (!qc)
		return FW_OK;
	const char *m = json_string_value(json_object_get(qc, "quant_method"));
	const char *qt = json_string_value(json_object_get(qc, "bnb_4bit_quant_type"));
	if (!json_is_object(qc) || !m || strcmp(m, "bitsandbytes"))
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: quantization_config's quant_method "
				 "is %s; fw imports bitsandbytes 4-bit weights only", path,
				 m ? m : "missing");
	if (json_is_true(json_object_get(qc, "load_in_8bit")) ||
	    !json_is_true(json_object_get(qc, "load_in_4bit")))
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: quantization_config is not "
				 "load_in_4bit (8-bit bitsandbytes weights are not supported)", path);
	if (qt && strcmp(qt, "nf4"))
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: quantization_config's "
				 "bnb_4bit_quant_type is %s; fw's 4-bit weights are NF4 only", path, qt);
	return FW_OK;
}

int cmd_import(int argc, char **argv)
{
	if (argc >= 1 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"))) {
		printf("usage: fwrun import HF_DIR OUT.h5\nReads a Hugging Face folder (config.json + "
		       "model.safetensors, or shards named by\nmodel.safetensors.index.json; "
		       "F32/F16/BF16) into an fw weights file usable with\nfwrun train/eval/generate "
		       "--load=OUT.h5. The arch plugin whose Hugging Face map\nhas config.json's "
		       "model_type reads it (arch/decoder: gpt2, llama, mistral, qwen2;\narch/encoder: bert, "
		       "roberta; arch/encdec: t5), the map of its architectures[0] first.\nThe folder's "
		       "tokenizer (tokenizer.json, or vocab.json + merges.txt), if any, is stored with\n"
		       "it, with tokenizer_config.json (its chat_template) when the folder has one,\n"
		       "and generation_config.json (fwrun generate's defaults) likewise.\n"
		       "config.json must describe a model the arch computes; nothing is written\n"
		       "otherwise. A BERT or RoBERTa folder (BertModel, BertForMaskedLM,\n"
		       "BertForSequenceClassification, BertForTokenClassification, RobertaForMaskedLM)\n"
		       "becomes an arch/encoder file (plugins/arch/encoder/README.md); a T5 folder\n"
		       "(T5ForConditionalGeneration) an arch/encdec file (plugins/arch/encdec/README.md).\n"
		       "config.json's id2label becomes the file's label list (--labels).\n"
		       "bitsandbytes 4-bit (nf4) weights are kept 4-bit, their codes bit for bit:\n"
		       "load the file with peft/lora --lora-quantize-base=nf4\n"
		       "(plugins/peft/lora/README.md).\n");
		return EXIT_OK;
	}
	if (argc != 2)
		return fail(FW_ERR_INVALID, "import: usage: fwrun import HF_DIR OUT.h5");
	struct fw_err err = { 0 }, perr = { 0 };
	struct hf_weights w = { 0 };
	struct hf_model h = { 0 };
	struct fw_tokenizer *tok = NULL;
	char *tok_json = NULL, *gen_json = NULL, *config = NULL, cpath[4200];
	const char *model_type = NULL, *architecture = NULL;
	int rc = EXIT_RUNTIME, n_q4 = 0, n_requant = 0, n_map = 0;
	struct fw_tensor *q4 = NULL, **save = NULL;
	enum fw_dtype q_dtype = FW_F32;
	json_t *root, *v;
	/* Everything is checked before the output is written (fw_h5_save
	 * writes a temporary file and renames it). */
	snprintf(cpath, sizeof(cpath), "%s/config.json", argv[0]);
	if (!(root = load_config(cpath, &perr)) && perr.status == FW_ERR_IO)
		return fail(perr.status, "%s", perr.msg);
	if (root && (v = json_object_get(root, "model_type"))) {
		char t[64];
		json_text(v, t, sizeof(t));
		if (!json_is_string(v)) {
			json_decref(root);
			return fail(FW_ERR_FORMAT, "%s: model_type %s is not a string", cpath, t);
		}
		model_type = json_string_value(v);
	}
	if (root)
		architecture = json_string_value(json_array_get(json_object_get(root, "architectures"),
								0));
	/* A file that does not parse goes to the archs' checks, which name the
	 * key of a value JSON cannot read (NaN); config.json without a
	 * model_type to the first arch whose check accepts it. */
	if (find_arch(root ? model_type : NULL, architecture, cpath, &h, &err) != FW_OK ||
	    (!root && (err = perr).status) ||
	    (h.map->check_config && h.map->check_config(cpath, &err) != FW_OK) ||
	    set_options(&h, cpath, root, &config, &err) != FW_OK ||
	    import_labels(cpath, root, &config, &err) != FW_OK) {
		rc = fail(err.status, "%s", err.msg);
		goto out;
	}
	int64_t vocab = fw_options_has(h.arch->opts, "vocab-size") ?
			fw_opt_int(h.arch->opts, "vocab-size") : INT64_MAX;
	tok = folder_tokenizer(argv[0], vocab, &err);
	if (!tok && err.status) {
		rc = fail(err.status, "%s", err.msg);
		goto out;
	}
	tok_json = tok ? fw_tokenizer_serialize(tok, &err) : NULL;
	if (!(tok && !tok_json))
		gen_json = folder_genconfig(argv[0], &err);
	if ((tok && !tok_json) || err.status || weights_open(argv[0], &w, &err) != FW_OK ||
	    build(&h, &err) != FW_OK ||
	    check_tensors(&w.all, w.all.path, "config.json", root, &h, &err) != FW_OK) {
		rc = fail(err.status, "%s", err.msg);
		goto out;
	}
	if (import_quant_config(cpath, root, &err) != FW_OK ||
	    !(q4 = calloc((size_t)h.n * 3 + 3, sizeof(*q4))) ||
	    !(save = calloc((size_t)h.n * 3 + 1, sizeof(*save)))) {
		rc = fail(err.status ? err.status : FW_ERR_NOMEM, "%s", err.status ? err.msg :
			  "import: out of memory");
		goto out;
	}
	int n = 0;
	for (int i = 0; i < h.n; i++) {
		struct fw_tensor *t = h.params[i];
		struct hf_part parts[HF_PARTS_MAX];
		bool tr;
		int np = parts_of(&h, t, parts, &tr);
		float *to = t->data;
		struct bnb_part bp[HF_PARTS_MAX];
		int nq = 0;
		for (int j = 0; j < np; j++) {
			nq += bnb_part_of(&w.all, h.map, parts[j].key, &bp[j]);
			bp[j].rows = parts[j].rows;
			bp[j].cols = t->ne[0] ? fw_nelem(t) / t->ne[0] : 0;
		}
		if (nq && (nq != np || t->ndim != 2)) {
			rc = fail(FW_ERR_FORMAT, "%s: '%s' is a 4-bit weight but '%s' %s", w.all.path,
				  bp[0].t[BNB_WEIGHT] ? parts[0].key : parts[np - 1].key, t->name,
				  t->ndim != 2 ? "is not a matrix" : "has parts that are not");
			goto out;
		}
		if (nq) {
			struct import_nf4_info info;
			if (import_nf4_weight(w.all.path, t, bp, np, &q4[n_q4], &info, &err) != FW_OK) {
				rc = fail(err.status, "%s", err.msg);
				goto out;
			}
			if (n_q4 && info.dtype != q_dtype) {
				rc = fail(FW_ERR_FORMAT, "%s: the 4-bit weight '%s' has dtype %s, another "
					  "has %s", w.all.path, parts[0].key,
					  fw_dtype_name(info.dtype), fw_dtype_name(q_dtype));
				goto out;
			}
			q_dtype = info.dtype;
			n_requant += info.requantized;
			n_map += info.map_differs != 0;
			for (int k = 0; k < 3; k++)
				save[n++] = &q4[n_q4++];
			continue;
		}
		for (int j = 0; j < np; j++) {
			const struct fw_st_entry *e = find_key(&w.all, h.map, parts[j].key);
			const void *from = e->data;
			void *copy = NULL;      /* a file whose data is not aligned to its dtype */
			if ((uintptr_t)from % fw_dtype_size(e->dtype)) {
				if (!(copy = malloc(e->nbytes + 1))) {
					rc = fail(FW_ERR_NOMEM, "import: out of memory");
					goto out;
				}
				from = memcpy(copy, from, e->nbytes);
			}
			if (tr && t->ndim == 2)
				transpose_to_f32(to, from, e->dtype, e->ne[0], e->ne[1]);
			else
				fw_convert(to, FW_F32, from, e->dtype, row_elems(t, parts[j].rows));
			free(copy);
			to += row_elems(t, parts[j].rows);
		}
		fw_tensor_mark_written(t);
		if (np)
			save[n++] = t;
	}
	struct fw_h5_attr attrs[6] = { { "fw_arch", h.arch->desc->name }, { "config", config },
				       { "source", argv[0] } };
	int n_attrs = 3;
	if (tok_json)
		attrs[n_attrs++] = (struct fw_h5_attr){ TOKENIZER_ATTR, tok_json };
	if (gen_json)
		attrs[n_attrs++] = (struct fw_h5_attr){ GENCONFIG_ATTR, gen_json };
	if (n_q4)
		attrs[n_attrs++] = (struct fw_h5_attr){ BNB_DTYPE_ATTR, fw_dtype_name(q_dtype) };
	if (n_requant)
		fw_rt_logf(&fwrun_log, FW_LOG_WARN, "%s: %d 4-bit weight%s without double "
			   "quantization or fused from several: 4-bit codes kept, absmax "
			   "double-quantized again by fw", w.all.path, n_requant,
			   n_requant == 1 ? "" : "s");
	if (n_map)
		fw_rt_logf(&fwrun_log, FW_LOG_WARN, "%s: %d 4-bit weight%s with a nested_quant_map "
			   "unlike fw's create_dynamic_map (torch's linspace on another CPU?): fw "
			   "dequantizes their 8-bit absmax codes with its own map", w.all.path, n_map,
			   n_map == 1 ? "" : "s");
	if (fw_h5_save(argv[1], save, n, attrs, n_attrs, &err) != FW_OK) {
		rc = fail(err.status, "%s", err.msg);
		goto out;
	}
	fprintf(stderr, "fwrun: imported %d tensors (%s %s as %s)%s to %s\n", n,
		h.map->model_type, h.map->architecture, h.arch->desc->name,
		tok ? " and the folder's tokenizer" : "", argv[1]);
	if (n_q4)
		fprintf(stderr, "fwrun: %d weights are 4-bit (NF4): load %s with peft/lora "
			"--lora-quantize-base=nf4\n", n_q4 / 3, argv[1]);
	rc = EXIT_OK;
out:
	for (int i = 0; q4 && i < n_q4 + 3; i++)
		free(q4[i].data);
	free(q4);
	free(save);
	json_decref(root);
	fw_free(tok_json);
	free(gen_json);
	fw_tokenizer_free(tok);
	hf_model_free(&h);
	free(config);
	weights_close(&w);
	return rc;
}

/* --- fwrun export --------------------------------------------------------------------------- */

/* The arch's section of an fw file's configuration into its options, and
 * its [run] labels. */
struct file_options {
	struct fw_loaded *arch;
	char labels[4096];
};

static int set_arch_option(void *user, const char *section, const char *name, const char *value,
			   int line)
{
	struct file_options *fo = user;
	if (!name)
		return 1;        /* a section line */
	(void)line;
	if (!strcmp(section, fo->arch->desc->name))
		fw_options_set(fo->arch->opts, name, value, NULL);    /* another fw's keys: ignored */
	else if (!strcmp(section, "run") && !strcmp(name, "labels"))
		snprintf(fo->labels, sizeof(fo->labels), "%s", value);
	return 1;
}

/* The arch of an fw file (its run's, or its fw_arch attribute) with the
 * file's options, and its label list (labels, "" when it has none). */
static enum fw_status file_arch(const char *path, struct hf_model *h, char *labels, size_t len,
				struct fw_err *err)
{
	char *config = NULL, arch[256];
	enum fw_status st = fw_rt_ckpt_read_config(path, &config, err);
	if (st == FW_OK && (st = file_arch_name(path, arch, sizeof(arch), err)) == FW_OK &&
	    (st = fw_plugin_open(arch, FW_KIND_ARCH, &h->arch, err)) == FW_OK) {
		struct file_options fo = { .arch = h->arch };
		fw_rt_ini_parse(config, set_arch_option, &fo);
		snprintf(labels, len, "%s", fo.labels);
		st = fw_options_resolve(h->arch->opts, err);
	}
	fw_free(config);
	return st;
}

/* The built model's map for the file at path: the first that describes
 * its options and whose parameters with a Hugging Face key the file has
 * (a classifier's class before the base model's, which has none). */
static enum fw_status file_map(const char *path, struct hf_model *h, struct fw_err *err)
{
	struct fw_h5_entry *e = NULL;
	int ne = 0;
	enum fw_status st = fw_h5_list(path, &e, &ne, err);
	const struct fw_arch_i *ai = h->arch->desc->iface;
	for (const struct fw_hf_map *const *m = ai->hf_maps; st == FW_OK && m && *m && !h->map;
	     m++) {
		if ((*m)->describes && !(*m)->describes(h->arch->opts))
			continue;
		h->map = *m;
		for (int i = 0; i < h->n && h->map; i++) {
			struct hf_part parts[HF_PARTS_MAX];
			bool tr, in_file = false;
			for (int k = 0; k < ne && !in_file; k++)
				in_file = !strcmp(e[k].name, h->params[i]->name);
			if (!in_file && parts_of(h, h->params[i], parts, &tr))
				h->map = NULL;
		}
	}
	fw_free(e);
	if (st == FW_OK && !h->map)
		st = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: %s has no Hugging Face form for these "
			       "options (see its README)", path, h->arch->desc->name);
	return st;
}

/* id2label and label2id of a file's label list ("neg,neutral,pos"). */
static void export_labels(json_t *cfg, const char *labels)
{
	char buf[4096], *save = NULL;
	json_t *id2 = json_object(), *l2 = json_object();
	int id = 0;
	snprintf(buf, sizeof(buf), "%s", labels);
	for (char *p = strtok_r(buf, ",", &save); p; p = strtok_r(NULL, ",", &save), id++) {
		char k[32];
		snprintf(k, sizeof(k), "%d", id);
		json_object_set_new(id2, k, json_string(p));
		json_object_set_new(l2, p, json_integer(id));
	}
	json_object_set_new(cfg, "id2label", id2);
	json_object_set_new(cfg, "label2id", l2);
}

/* config.json: the map's keys from the arch's options, its constants, and
 * the end-of-text id (left out when there is none). */
static json_t *export_config(const struct hf_model *h, json_int_t eos)
{
	json_t *cfg = json_pack("{s:[s], s:s}", "architectures", h->map->architecture,
				"model_type", h->map->model_type);
	for (int i = 0; cfg && i < h->map->n_keys; i++) {
		const char *opt = h->map->keys[i].option;
		const struct fw_option_def *d = NULL;
		for (int k = 0; k < fw_options_count(h->arch->opts) && !d; k++)
			if (!strcmp(fw_options_def(h->arch->opts, k)->name, opt))
				d = fw_options_def(h->arch->opts, k);
		json_t *v = !d ? NULL :
			    d->type == FW_OPT_INT ? json_integer(fw_opt_int(h->arch->opts, opt)) :
			    d->type == FW_OPT_FLOAT ? json_real(fw_opt_float(h->arch->opts, opt)) :
			    d->type == FW_OPT_BOOL ? json_boolean(fw_opt_bool(h->arch->opts, opt)) :
			    json_string(fw_opt_str(h->arch->opts, opt));
		if (v)
			json_object_set_new(cfg, h->map->keys[i].key, v);
	}
	for (int i = 0; cfg && i < h->map->n_consts; i++)
		json_object_set_new(cfg, h->map->consts[i].key,
				    json_loads(h->map->consts[i].json, JSON_DECODE_ANY, NULL));
	char extra[2048];
	if (cfg && FW_HAS(h->map, export_keys) && h->map->export_keys &&
	    h->map->export_keys(h->arch->opts, extra, sizeof(extra))) {
		json_t *x = json_loads(extra, 0, NULL);
		json_object_update(cfg, x);
		json_decref(x);
	}
	if (cfg && eos >= 0) {          /* the end-of-text id for both, as GPT-2 has it */
		json_object_set_new(cfg, "bos_token_id", json_integer(eos));
		json_object_set_new(cfg, "eos_token_id", json_integer(eos));
	}
	return cfg;
}

/* A stored tokenizer in dir as Hugging Face has it: tokenizer.json for a
 * tokenizer.json pipeline, vocab.json + merges.txt for GPT-2 BPE, and the
 * tokenizer_config.json imported with it. */
static enum fw_status export_tokenizer(const char *h5, const char *dir, bool *done,
				       struct fw_err *err)
{
	char *stored = NULL, path[4200];
	struct fw_err e = { 0 };
	*done = false;
	if (fw_h5_read_attr(h5, TOKENIZER_ATTR, &stored, &e) != FW_OK)
		return e.status == FW_ERR_NOT_FOUND ? FW_OK : (*err = e, e.status);
	json_t *root = json_loads(stored, 0, NULL);
	json_t *vocab = json_object_get(root, "vocab"), *merges = json_object_get(root, "merges");
	json_t *hf = json_object_get(root, "json"), *cfg = json_object_get(root, "config");
	enum fw_status st = FW_OK;
	if (json_is_string(cfg)) {      /* tokenizer_config.json as imported */
		snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
		st = fw_file_write_atomic(path, json_string_value(cfg), json_string_length(cfg), err);
	}
	if (st != FW_OK) {
	} else if (json_is_string(hf)) {        /* a tokenizer.json pipeline: the file as read */
		snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
		st = fw_file_write_atomic(path, json_string_value(hf), json_string_length(hf), err);
		*done = st == FW_OK;
	} else if (json_is_string(vocab) && json_is_string(merges)) {
		snprintf(path, sizeof(path), "%s/vocab.json", dir);
		st = fw_file_write_atomic(path, json_string_value(vocab), json_string_length(vocab), err);
		snprintf(path, sizeof(path), "%s/merges.txt", dir);
		if (st == FW_OK)
			st = fw_file_write_atomic(path, json_string_value(merges), json_string_length(merges),
					  err);
		*done = st == FW_OK;
	}
	json_decref(root);
	fw_free(stored);
	return st;
}

/* The end-of-text id config.json names: the stored tokenizer's; for a
 * file without one, GPT-2's 50256 when the model is a GPT-2 (an imported
 * one) and none otherwise (another family's id is not GPT-2's); -1 (left
 * out) when the model's vocabulary has no such id. */
static json_int_t export_eos(const char *h5, const char *model_type, int64_t vocab)
{
	char *stored = NULL;
	struct fw_err e = { 0 };
	int32_t eos = -1;
	if (fw_h5_read_attr(h5, TOKENIZER_ATTR, &stored, &e) == FW_OK) {
		struct fw_tokenizer *t = fw_tokenizer_deserialize(stored, strlen(stored), h5, &e);
		if (t)
			eos = fw_tokenizer_eos(t);
		fw_tokenizer_free(t);
		fw_free(stored);
	} else if (e.status == FW_ERR_NOT_FOUND && !strcmp(model_type, "gpt2")) {
		eos = 50256;
	}
	return eos >= 0 && eos < vocab ? eos : -1;
}

/* The file's 4-bit weights (fw/quant.h: codes, qabsmax, stats) among h's
 * parameters: w[i].codes.data set for each (the three tensors allocated
 * for loading); known lists the parameters and those statistics tensors,
 * which the file holds beside them. */
#define NF4_TENSORS_MAX 6       /* export_nf4_part's tensors a part */
struct nf4_set {
	struct nf4_weight {
		struct fw_tensor codes, qabsmax, stats;
	} *w;
	int n_w;
	struct fw_tensor **known;
	int n_known;
};

static void nf4_weights_free(struct nf4_set *s)
{
	for (int i = 0; s->w && i < s->n_w; i++) {
		free(s->w[i].codes.data);
		free(s->w[i].qabsmax.data);
		free(s->w[i].stats.data);
	}
	free(s->known);
	free(s->w);
	memset(s, 0, sizeof(*s));
}

static enum fw_status nf4_weights(const char *path, const struct hf_model *h,
				  struct nf4_set *s, struct fw_err *err)
{
	struct fw_h5_entry *ents = NULL;
	int ne = 0;
	enum fw_status st = fw_h5_list(path, &ents, &ne, err);
	if (st != FW_OK)
		return st;
	s->w = calloc((size_t)h->n + 1, sizeof(*s->w));
	s->known = calloc((size_t)h->n * 3 + 1, sizeof(*s->known));
	if (!s->w || !s->known)
		st = fw_errorf(err, FW_ERR_NOMEM, "export: out of memory");
	else
		s->n_w = h->n;
	for (int i = 0; st == FW_OK && i < h->n; i++) {
		struct fw_tensor *p = h->params[i];
		s->known[s->n_known++] = p;
		const struct fw_h5_entry *e = NULL;
		for (int k = 0; k < ne && !e; k++)
			e = !strcmp(ents[k].name, p->name) && ents[k].dtype == FW_Q4 ? &ents[k] : NULL;
		if (!e)
			continue;
		int64_t n = fw_nelem(p), qa[1] = { 2 * fw_nf4_n_blocks(n) };
		int64_t ns[1] = { fw_nf4_n_stats(n) };
		struct nf4_weight *w = &s->w[i];
		if (!nf4_tensor_new(&w->codes, p->name, "", FW_Q4, p->ndim, p->ne) ||
		    !nf4_tensor_new(&w->qabsmax, p->name, FW_NF4_ABSMAX_SUFFIX, FW_Q4, 1, qa) ||
		    !nf4_tensor_new(&w->stats, p->name, FW_NF4_STATS_SUFFIX, FW_F32, 1, ns))
			st = fw_errorf(err, FW_ERR_NOMEM, "export: %s: out of memory, or its "
				       "statistics' names are over %d bytes", p->name, FW_NAME_MAX - 1);
		s->known[s->n_known++] = &w->qabsmax;
		s->known[s->n_known++] = &w->stats;
	}
	fw_free(ents);
	return st;
}

/* Whether name is one of the bitsandbytes tensors export_nf4_part made
 * (which keep their dtypes under --dtype): a U8 tensor, or a name with its
 * statistics' suffixes. */
static bool is_nf4_output(const char *name, const struct fw_tensor *out, int n)
{
	static const char *const stats[] = { ".absmax", ".quant_map", ".nested_absmax",
					     ".nested_quant_map" };
	size_t ln = strlen(name);
	for (int i = 0; i < n; i++) {
		if (strcmp(out[i].name, name))
			continue;
		if (out[i].dtype == FW_Q4)
			return true;
		for (size_t k = 0; k < sizeof(stats) / sizeof(stats[0]); k++) {
			size_t ls = strlen(stats[k]);
			if (ln > ls && !strcmp(name + ln - ls, stats[k]))
				return true;
		}
	}
	return false;
}

int export_dtype(const char *v, enum fw_dtype *dt)
{
	if (!strcmp(v, "f32") || !strcmp(v, "float32"))
		*dt = FW_F32;
	else if (!strcmp(v, "bf16") || !strcmp(v, "bfloat16"))
		*dt = FW_BF16;
	else if (!strcmp(v, "f16") || !strcmp(v, "float16"))
		*dt = FW_F16;
	else
		return -1;
	return 0;
}

int cmd_export(int argc, char **argv)
{
	if (argc >= 1 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"))) {
		printf("usage: fwrun export IN.h5 OUT_DIR [--base-only] [--dtype=f32|bf16|f16]\n"
		       "Writes a Hugging Face folder (config.json + model.safetensors) from an fw\n"
		       "checkpoint or weights file, through its arch plugin's Hugging Face map\n"
		       "(arch/decoder: GPT-2, Llama, Mistral,\n"
		       "Qwen2); fwrun import reads it back bit-exactly. A file with other\n"
		       "trained tensors (a LoRA run's adapter: fwrun merge it first) is refused unless\n"
		       "--base-only drops them. --dtype=bf16 or f16 rounds the (fp32 master) weights to\n"
		       "that dtype (nearest even) and sets config.json's torch_dtype (default f32).\n"
		       "An arch/encoder file becomes the BERT (or RoBERTa) class of its head; a\n"
		       "label list (--labels) becomes id2label. 4-bit (NF4, QLoRA) weights are written\n"
		       "as bitsandbytes serializes them (KEY, KEY.absmax, KEY.quant_map, KEY.nested_*,\n"
		       "KEY.quant_state.bitsandbytes__nf4) with config.json's quantization_config.\n");
		return EXIT_OK;
	}
	bool base_only = false;
	char *pos[2];
	int np = 0;
	enum fw_dtype dt = FW_F32;
	bool dt_given = false;
	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--base-only"))
			base_only = true;
		else if (!strncmp(argv[i], "--dtype=", 8) && export_dtype(argv[i] + 8, &dt) != 0)
			return fail(FW_ERR_INVALID, "export: --dtype=%s: expected f32, bf16 or f16",
				    argv[i] + 8);
		else if (!strncmp(argv[i], "--dtype=", 8))
			dt_given = true;
		else if (!strncmp(argv[i], "--", 2) || np == 2)
			return fail(FW_ERR_INVALID, "export: usage: fwrun export IN.h5 OUT_DIR [--base-only] [--dtype=f32|bf16|f16]");
		else
			pos[np++] = argv[i];
	}
	if (np != 2)
		return fail(FW_ERR_INVALID, "export: usage: fwrun export IN.h5 OUT_DIR [--base-only] [--dtype=f32|bf16|f16]");
	char in[4200], path[4200];
	struct fw_err err = { 0 };
	struct hf_model h = { 0 };
	struct fw_tensor *out = NULL, **op = NULL;
	struct nf4_set nf4 = { 0 };
	int rc = EXIT_RUNTIME, n = 0, n_nf4 = 0;
	if (resolve_load(pos[0], in, sizeof(in), &err) != FW_OK)
		return fail(err.status, "%s", err.msg);
	char *bnb_dt = NULL;                  /* an import's bitsandbytes dtype: the default */
	if (!dt_given && fw_h5_read_attr(in, BNB_DTYPE_ATTR, &bnb_dt, &err) == FW_OK &&
	    export_dtype(bnb_dt, &dt) != 0)
		dt = FW_F32;
	fw_free(bnb_dt);
	err = (struct fw_err){ 0 };
	const char *dir = pos[1];
	char labels[4096];
	if (file_arch(in, &h, labels, sizeof(labels), &err) != FW_OK || build(&h, &err) != FW_OK ||
	    file_map(in, &h, &err) != FW_OK || nf4_weights(in, &h, &nf4, &err) != FW_OK ||
	    fw_rt_check_foreign_tensors(in, nf4.known, nf4.n_known, NULL, base_only, &fwrun_log,
					&err) != FW_OK) {
		rc = fail(err.status, "%s", err.msg);
		goto out;
	}
	/* the parameters with a Hugging Face key (a BertModel has no classifier),
	 * the 4-bit ones as their three tensors */
	if (!(op = calloc((size_t)h.n * 3 + 1, sizeof(*op)))) {
		rc = fail(FW_ERR_NOMEM, "export: out of memory");
		goto out;
	}
	for (int i = 0; i < h.n; i++) {
		struct hf_part parts[HF_PARTS_MAX];
		bool tr;
		if (!parts_of(&h, h.params[i], parts, &tr))
			continue;
		if (nf4.w[i].codes.data) {
			op[n++] = &nf4.w[i].codes;
			op[n++] = &nf4.w[i].qabsmax;
			op[n++] = &nf4.w[i].stats;
		} else {
			op[n++] = h.params[i];
		}
	}
	if (fw_h5_load(in, op, n, &err) != FW_OK) {
		rc = fail(err.status, "%s", err.msg);
		goto out;
	}
	free(op);
	op = NULL;
	n = 0;
	/* Under the map's keys, transposed where Hugging Face stores (in, out),
	 * a parameter of parts as one tensor each. */
	size_t cap = (size_t)h.n * HF_PARTS_MAX * NF4_TENSORS_MAX + 1;
	out = calloc(cap, sizeof(*out));
	op = calloc(cap, sizeof(*op));
	if (!out || !op) {
		rc = fail(FW_ERR_NOMEM, "export: out of memory");
		goto out;
	}
	for (int i = 0; i < h.n; i++) {
		const struct fw_tensor *t = h.params[i];
		struct hf_part parts[HF_PARTS_MAX];
		bool tr;
		int np = parts_of(&h, t, parts, &tr);
		const float *from = t->data;
		for (int j = 0, row0 = 0; nf4.w[i].codes.data && j < np; row0 += (int)parts[j++].rows) {
			/* bitsandbytes' layout, (out, in) as Linear4bit holds it */
			int k = export_nf4_part(parts[j].key, &nf4.w[i].codes, &nf4.w[i].qabsmax,
						&nf4.w[i].stats, row0, parts[j].rows, dt, &out[n],
						&err);
			if (k < 0) {
				rc = fail(err.status, "%s", err.msg);
				goto out;
			}
			for (int e = 0; e < k; e++, n++)
				op[n] = &out[n];
			n_nf4 += k;
		}
		for (int j = 0; !nf4.w[i].codes.data && j < np; j++) {
			struct fw_tensor *o = &out[n];
			size_t kl = strlen(parts[j].key);
			if (kl >= sizeof(o->name)) {
				rc = fail(FW_ERR_UNSUPPORTED, "export: key '%s' is longer than %zu bytes",
					  parts[j].key, sizeof(o->name) - 1);
				goto out;
			}
			memcpy(o->name, parts[j].key, kl + 1);
			o->dtype = FW_F32;
			o->ndim = t->ndim;
			memcpy(o->ne, t->ne, sizeof(o->ne));
			o->ne[0] = parts[j].rows;
			if (tr && t->ndim == 2)
				o->ne[0] = t->ne[1], o->ne[1] = t->ne[0];
			fw_set_contiguous_strides(o);
			if (!(o->data = malloc(fw_nbytes(o) ? fw_nbytes(o) : 1))) {
				rc = fail(FW_ERR_NOMEM, "export: out of memory");
				goto out;
			}
			if (tr && t->ndim == 2)
				transpose_to_f32(o->data, t->data, FW_F32, t->ne[0], t->ne[1]);
			else
				memcpy(o->data, from, fw_nbytes(o));
			from += row_elems(t, parts[j].rows);
			op[n++] = o;
		}
	}
	for (int i = 0; dt != FW_F32 && i < n; i++) {
		struct fw_tensor *t = op[i];
		if (is_nf4_output(t->name, out, n))
			continue;       /* bitsandbytes' statistics stay f32 */
		void *half = malloc((size_t)fw_nelem(t) * 2 + 1);
		if (!half) {
			rc = fail(FW_ERR_NOMEM, "export: out of memory");
			goto out;
		}
		fw_convert(half, dt, t->data, FW_F32, fw_nelem(t));
		free(t->data);
		t->data = half;
		t->dtype = dt;
	}
	if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
		rc = fail(FW_ERR_IO, "%s: %s", dir, strerror(errno));
		goto out;
	}
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	const char *meta[] = { "format", "pt", NULL };
	if (fw_st_save(path, op, n, meta, &err) != FW_OK) {
		rc = fail(err.status, "%s", err.msg);
		goto out;
	}
	int64_t vocab = fw_options_has(h.arch->opts, "vocab-size") ?
			fw_opt_int(h.arch->opts, "vocab-size") : INT64_MAX;
	json_t *cfg = export_config(&h, export_eos(in, h.map->model_type, vocab));
	if (cfg && labels[0])
		export_labels(cfg, labels);
	snprintf(path, sizeof(path), "%s/config.json", dir);
	if (cfg)
		json_object_set_new(cfg, "torch_dtype", json_string(dt == FW_BF16 ? "bfloat16" :
								      dt == FW_F16 ? "float16" :
								      "float32"));
	if (cfg && n_nf4)
		json_object_set_new(cfg, "quantization_config", export_nf4_config(dt));
	struct fw_err werr = { 0 };
	enum fw_status wst = write_json_file(path, cfg, &werr);
	json_decref(cfg);
	if (wst != FW_OK) {
		rc = fail(werr.status, "%s", werr.msg);
		goto out;
	}
	bool with_tok = false;
	char *gen = NULL;
	struct fw_err gerr = { 0 };
	if (fw_h5_read_attr(in, GENCONFIG_ATTR, &gen, &gerr) == FW_OK) {
		snprintf(path, sizeof(path), "%s/generation_config.json", dir);
		enum fw_status gst = fw_file_write_atomic(path, gen, strlen(gen), &err);
		fw_free(gen);
		if (gst != FW_OK) {
			rc = fail(err.status, "%s", err.msg);
			goto out;
		}
	}
	if (export_tokenizer(in, dir, &with_tok, &err) != FW_OK) {
		rc = fail(err.status, "%s", err.msg);
		goto out;
	}
	fprintf(stderr, "fwrun: exported %d tensors%s to %s\n", n,
		with_tok ? " and the tokenizer" : "", dir);
	rc = EXIT_OK;
out:
	for (int i = 0; out && i < n; i++)
		free(out[i].data);
	free(out);
	free(op);
	nf4_weights_free(&nf4);
	hf_model_free(&h);
	return rc;
}

/* --- fwrun export-adapter --base ------------------------------------------------------------ */

/* rest, a PEFT key less "base_model.model." as the peft plugin wrote it
 * ([PREFIX.]MODULE.TAIL, MODULE an fw parameter's module), with MODULE at its
 * path in h's map (RoBERTa's roberta.encoder..., lm_head.dense); where the
 * map adds no prefix the plugin's path stands (GPT-2's transformer.h...).
 * 0: no parameter's module is in rest; -1: out is too short. */
static int adapter_key(const struct hf_model *h, const char *rest, char *out, size_t len)
{
	const char *dot = strchr(rest, '.');
	size_t best = 0;
	int n = 0;
	for (int i = 0; i < h->n; i++) {
		const char *name = h->params[i]->name, *last = strrchr(name, '.'), *at = NULL;
		struct hf_part parts[HF_PARTS_MAX];
		bool tr;
		if (!last || parts_of(h, h->params[i], parts, &tr) != 1 || !ends_with(parts[0].key, last))
			continue;
		size_t ml = (size_t)(last - name), hm = strlen(parts[0].key) - strlen(last);
		if (!strncmp(rest, name, ml) && rest[ml] == '.')
			at = rest;
		else if (dot && !strncmp(dot + 1, name, ml) && dot[1 + ml] == '.')
			at = dot + 1;
		if (!at || ml <= best)
			continue;
		best = ml;
		n = hm == ml && !strncmp(parts[0].key, name, ml) ?
		    snprintf(out, len, "%s", rest) :
		    snprintf(out, len, "%.*s%s", (int)hm, parts[0].key, at + ml);
	}
	return !best ? 0 : n < 0 || (size_t)n >= len ? -1 : 1;
}

/* A module path of adapter_config.json (target_modules, modules_to_save,
 * IA3's feedforward_modules, rank_pattern...) at its Hugging Face path: its weight's key through
 * adapter_key, less ".weight"; a module without a weight of its own (a
 * suffix such as "query", RoBERTa's classifier) stays. */
static json_t *module_hf(const struct hf_model *h, const char *mod)
{
	char in[2 * FW_NAME_MAX], out[2 * FW_NAME_MAX];
	size_t n;
	if (!strchr(mod, '.') || snprintf(in, sizeof(in), "%s.weight", mod) >= (int)sizeof(in) ||
	    adapter_key(h, in, out, sizeof(out)) <= 0 || (n = strlen(out)) < 7)
		return json_string(mod);
	out[n - 7] = '\0';
	return json_string(out);
}

/* adapter_config.json's module names under h's Hugging Face paths. */
static enum fw_status config_hf_modules(const struct hf_model *h, const char *dir,
					struct fw_err *err)
{
	char path[4400];
	snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
	json_error_t je;
	json_t *cfg = json_load_file(path, 0, &je);
	if (!json_is_object(cfg)) {
		json_decref(cfg);
		return fw_errorf(err, FW_ERR_FORMAT, "%s: not a JSON object (%s)", path, je.text);
	}
	static const char *const lists[] = { "target_modules", "modules_to_save",
					     "feedforward_modules" };
	for (size_t k = 0; k < 3; k++) {
		json_t *a = json_object_get(cfg, lists[k]), *v;
		size_t i;
		json_array_foreach(a, i, v)
			if (json_is_string(v))
				json_array_set_new(a, i, module_hf(h, json_string_value(v)));
	}
	static const char *const maps[] = { "rank_pattern", "alpha_pattern" };
	for (size_t k = 0; k < 2; k++) {
		json_t *o = json_object_get(cfg, maps[k]), *renamed = json_object(), *v;
		const char *key;
		if (!json_is_object(o) || !renamed) {
			json_decref(renamed);
			continue;
		}
		json_object_foreach(o, key, v) {
			json_t *hk = module_hf(h, key);
			json_object_set(renamed, json_string_value(hk), v);
			json_decref(hk);
		}
		json_object_set_new(cfg, maps[k], renamed);
	}
	enum fw_status st = write_json_file(path, cfg, err);
	json_decref(cfg);
	return st;
}

/* An export's keys under --base's Hugging Face names: LoRA's
 * base_model.model.MODULE..., prompt learning's base_model.MODULE... (PEFT's
 * PeftModel holds the model itself there); prompt_embeddings stays. */
enum fw_status adapter_hf_keys(const char *base, const char *dir, struct fw_err *err)
{
	static const char lora_pre[] = "base_model.model.", prompt_pre[] = "base_model.";
	struct hf_model h = { 0 };
	struct fw_st_file f = { 0 };
	struct fw_tensor *t = NULL, **tp = NULL;
	char labels[4096], path[4400];
	enum fw_status st = file_arch(base, &h, labels, sizeof(labels), err);
	if (st == FW_OK && (st = build(&h, err)) == FW_OK && (st = file_map(base, &h, err)) == FW_OK) {
		snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
		st = fw_st_open(path, &f, err);
	}
	if (st == FW_OK && (!(t = calloc((size_t)f.n + 1, sizeof(*t))) ||
			    !(tp = calloc((size_t)f.n + 1, sizeof(*tp)))))
		st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	for (int i = 0; st == FW_OK && i < f.n; i++) {
		const struct fw_st_entry *e = &f.entries[i];
		const char *pre = !strncmp(e->name, lora_pre, sizeof(lora_pre) - 1) ? lora_pre :
				  !strncmp(e->name, prompt_pre, sizeof(prompt_pre) - 1) ? prompt_pre : "";
		size_t pl = strlen(pre);
		int k = !pl && !strchr(e->name, '.') ? snprintf(t[i].name, sizeof(t[i].name), "%s",
								e->name) > 0 :
			!pl ? 0 : adapter_key(&h, e->name + pl, t[i].name + pl,
					      sizeof(t[i].name) - pl);
		if (k <= 0) {
			st = fw_errorf(err, FW_ERR_INVALID, "%s: key '%s' %s", path, e->name,
				       k ? "is too long under the base's Hugging Face names" :
				       "names no module of --base's model");
			break;
		}
		memcpy(t[i].name, pre, pl);
		t[i].dtype = e->dtype;
		t[i].ndim = e->ndim;
		memcpy(t[i].ne, e->ne, sizeof(t[i].ne));
		fw_set_contiguous_strides(&t[i]);
		t[i].data = (void *)e->data;
		tp[i] = &t[i];
	}
	const char *meta[] = { "format", "pt", NULL };
	if (st == FW_OK)
		st = fw_st_save(path, tp, f.n, meta, err);
	if (st == FW_OK)
		st = config_hf_modules(&h, dir, err);
	free(tp);
	free(t);
	fw_st_close(&f);
	hf_model_free(&h);
	return st;
}
