/* peft_file.h - adapter files and PEFT exports shared by peft/ia3, peft/prompt
 * and peft/prefix (header-only: each plugin stays one self-contained .so).
 *
 * An adapter file is an fw HDF5 tensor file (docs/hdf5-format.md) holding
 * only the tensors the adapter trains, under the model's names, with the
 * root attributes peft/lora's files have (plugins/peft/lora/lora_format.h):
 *
 *     fw_adapter          the plugin's name ("peft/ia3")
 *     fw_adapter_version  "1"
 *     config              the plugin's resolved options as INI; fwrun fills
 *                         unset options from it (--adapter=a.h5 alone works)
 *     MODULES             one attribute describing the adapter's structure
 *                         (its name and lines are the plugin's: ia3_modules,
 *                         prompt_tokens, prefix_layers); compared as text
 *     base_tensors        every base parameter: "NAME\tDTYPE\tD0,D1\n"
 *     base_hash           lora_hash_tensor over them from LORA_HASH_SEED
 *
 * The fingerprint is lora_format.h's, so a base model is recognised the
 * same way by every peft plugin.
 */
#ifndef PEFT_FILE_H
#define PEFT_FILE_H

#include <fnmatch.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "fw/plugin.h"
#include "../lora/lora_format.h"

#define PEFT_FORMAT_VERSION "1"

/* --- text ------------------------------------------------------------------------ */

/* A growing text buffer in host memory; oom sticks. */
struct peft_text {
	const struct fw_host *h;
	char *s;
	size_t n, cap;
	bool oom;
};

static inline void peft_put(struct peft_text *t, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static inline void peft_put(struct peft_text *t, const char *fmt, ...)
{
	va_list ap;
	if (t->oom)
		return;
	va_start(ap, fmt);
	int k = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (k < 0) {
		t->oom = true;
		return;
	}
	if (!t->s || t->n + (size_t)k + 1 > t->cap) {
		size_t nc = (t->cap ? 2 * t->cap : 4096) + (size_t)k + 1;
		char *p = t->h->malloc(nc);
		if (!p) {
			t->oom = true;
			return;
		}
		if (t->s) {
			memcpy(p, t->s, t->n + 1);
			t->h->free(t->s);
		} else {
			p[0] = '\0';
		}
		t->s = p;
		t->cap = nc;
	}
	va_start(ap, fmt);
	vsnprintf(t->s + t->n, t->cap - t->n, fmt, ap);
	va_end(ap);
	t->n += (size_t)k;
}

/* Whether a base list ("NAME\t..." lines, lora_format.h) names name. */
static inline bool peft_listed(const char *list, const char *name)
{
	size_t n = strlen(name);
	for (const char *s = list; s && *s; s = strchr(s, '\n') ? strchr(s, '\n') + 1 : NULL)
		if (!strncmp(s, name, n) && s[n] == '\t')
			return true;
	return false;
}

static inline void peft_text_free(struct peft_text *t)
{
	if (t->s)
		t->h->free(t->s);
	t->s = NULL;
	t->n = t->cap = 0;
}

/* A JSON string literal of s. */
static inline void peft_put_json(struct peft_text *t, const char *s)
{
	peft_put(t, "\"");
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			peft_put(t, "\\%c", c);
		else if (c < 0x20)
			peft_put(t, "\\u%04x", c);
		else
			peft_put(t, "%c", c);
	}
	peft_put(t, "\"");
}

/* "key = value" of [section] in an INI text; false if absent. */
static inline bool peft_ini_get(const char *text, const char *section, const char *key,
				char *out, size_t len)
{
	bool in = false;
	size_t kl = strlen(key), sl = strlen(section);
	for (const char *s = text; s && *s;) {
		const char *eol = strchr(s, '\n');
		size_t n = eol ? (size_t)(eol - s) : strlen(s);
		if (n && s[0] == '[')
			in = n == sl + 2 && !strncmp(s + 1, section, sl) && s[sl + 1] == ']';
		else if (in && n > kl && !strncmp(s, key, kl) && (s[kl] == ' ' || s[kl] == '=')) {
			const char *v = s + kl;
			while (v < s + n && (*v == ' ' || *v == '='))
				v++;
			size_t vl = (size_t)(s + n - v);
			while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\r'))
				vl--;
			snprintf(out, len, "%.*s", (int)(vl < len ? vl : len - 1), v);
			return true;
		}
		s = eol ? eol + 1 : NULL;
	}
	return false;
}

/* --- adapter files ------------------------------------------------------------------- */

static inline bool peft_in(struct fw_tensor *const *own, int n, const struct fw_tensor *t)
{
	for (int i = 0; i < n; i++)
		if (own[i] == t)
			return true;
	return false;
}

/* Whether a wrap hook's call for layer name starts another model: another
 * context, or the first layer of the last build met again. The address
 * alone does not tell: a context made after one is freed may get its
 * address (fwrun generate builds, frees and builds again), and the state
 * of the freed model (its tensors) must not be taken for the new one's. */
static inline bool peft_new_model(const struct fw_ctx *have, const struct fw_ctx *ctx,
				  int n_seen, const char *first, const char *name)
{
	return have != ctx || (n_seen > 0 && !strcmp(first, name));
}

/* Grows a host-allocated array to hold one more element. */
static inline bool peft_grow(const struct fw_host *h, void **arr, int n, int *cap, size_t elem)
{
	if (n < *cap)
		return true;
	int nc = *cap ? 2 * *cap : 16;
	void *p = h->malloc((size_t)nc * elem);
	if (!p)
		return false;
	if (*arr) {
		memcpy(p, *arr, (size_t)n * elem);
		h->free(*arr);
	}
	*arr = p;
	*cap = nc;
	return true;
}

/* A task head's parameter name, PEFT's modules_to_save for SEQ_CLS and
 * TOKEN_CLS: PeftModelForSequenceClassification and ...ForTokenClassification
 * add "classifier" and "score", matched as a module (any dotted component
 * above the leaf: RoBERTa's classifier.out_proj.weight). Under every peft
 * method such a head trains fully and is saved with the adapter. */
static inline bool peft_head_part(const char *s, size_t n)
{
	return (n == 10 && !strncmp(s, "classifier", 10)) || (n == 5 && !strncmp(s, "score", 5));
}

/* The length of name's head module (through its classifier / score part);
 * 0 when name is no task head's parameter. */
static inline size_t peft_head_module(const char *name)
{
	for (const char *s = name;;) {
		size_t n = strcspn(s, ".");
		if (!s[n])
			return 0;
		if (peft_head_part(s, n))
			return (size_t)(s - name) + n;
		s += n + 1;
	}
}

static inline bool peft_head_name(const char *name)
{
	return peft_head_module(name) > 0;
}

static inline bool peft_head_param(const struct fw_tensor *t)
{
	return (t->flags & FW_FLAG_PARAM) && !(t->flags & FW_FLAG_STATE) && peft_head_name(t->name);
}

/* What a peft plugin trains: its own tensors and the task heads. */
static inline bool peft_trains(struct fw_tensor *const *own, int n, const struct fw_tensor *t)
{
	return peft_in(own, n, t) || peft_head_param(t);
}

/* A base model parameter: neither the adapter's, a task head nor a plugin's state. */
static inline bool peft_is_base(struct fw_tensor *const *own, int n, const struct fw_tensor *t)
{
	return (t->flags & FW_FLAG_PARAM) && !(t->flags & FW_FLAG_STATE) && !peft_in(own, n, t) &&
	       !peft_head_name(t->name);
}

/* own[0..n) then the model's task-head parameters: what an adapter file
 * holds. NULL when out of memory (h->free it). */
static inline struct fw_tensor **peft_with_heads(const struct fw_host *h, struct fw_ctx *ctx,
						 struct fw_tensor *const *own, int n, int *n_out)
{
	int nt = fw_ctx_n_tensors(ctx);
	struct fw_tensor **all = h->malloc(sizeof(*all) * (size_t)(n + nt + 1));
	if (!all)
		return NULL;
	memcpy(all, own, sizeof(*all) * (size_t)n);
	*n_out = n;
	for (int i = 0; i < nt; i++) {
		struct fw_tensor *t = fw_ctx_tensor(ctx, i);
		if (peft_head_param(t) && !peft_in(own, n, t))
			all[(*n_out)++] = t;
	}
	return all;
}

/* PEFT's list matching: the whole name or a dotted suffix ("c_attn" matches
 * "h.3.attn.c_attn"); with *, ? or [ a glob over the whole name. */
static inline bool peft_match(const char *pat, const char *name)
{
	if (strpbrk(pat, "*?["))
		return fnmatch(pat, name, 0) == 0;
	size_t n = strlen(name), m = strlen(pat);
	return !strcmp(name, pat) || (n > m && name[n - m - 1] == '.' && !strcmp(name + n - m, pat));
}

/* Writes the adapter: own[0..n), the task heads and the attributes above. */
static inline enum fw_status peft_save(const struct fw_host *h, struct fw_ctx *ctx,
				       const char *path, const char *kind,
				       const struct fw_options *opts, struct fw_tensor *const *own,
				       int n_own, const char *mod_attr, const char *mod_text,
				       struct fw_err *err)
{
	struct peft_text cfg = { .h = h }, list = { .h = h };
	uint64_t hh = LORA_HASH_SEED;
	int n_all = 0;
	struct fw_tensor **all = peft_with_heads(h, ctx, own, n_own, &n_all);
	peft_put(&cfg, "[%s]\n", kind);
	for (int i = 0; i < fw_options_count(opts); i++)
		peft_put(&cfg, "%s = %s\n", fw_options_def(opts, i)->name, fw_options_value(opts, i));
	peft_put(&list, "%s", "");
	for (int i = 0; i < fw_ctx_n_tensors(ctx); i++) {
		struct fw_tensor *t = fw_ctx_tensor(ctx, i);
		if (!peft_is_base(own, n_own, t))
			continue;
		char shape[96];
		lora_shape_text(t, shape, sizeof(shape));
		peft_put(&list, "%s\t%s\t%s\n", t->name, fw_dtype_name(t->dtype), shape);
		hh = lora_hash_tensor(hh, t);
	}
	char hex[24];
	snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)hh);
	enum fw_status st;
	if (cfg.oom || list.oom || !all) {
		st = h->errorf(err, FW_ERR_NOMEM, "%s: out of memory", kind);
	} else {
		struct fw_h5_attr attrs[] = {
			{ "fw_adapter", kind }, { "fw_adapter_version", PEFT_FORMAT_VERSION },
			{ "config", cfg.s }, { mod_attr, mod_text }, { "base_tensors", list.s },
			{ "base_hash", hex },
		};
		st = fw_h5_save(path, all, n_all, attrs, (int)(sizeof(attrs) / sizeof(attrs[0])),
				err);
	}
	if (all)
		h->free(all);
	peft_text_free(&cfg);
	peft_text_free(&list);
	return st;
}

static inline enum fw_status peft_attr(const struct fw_host *h, const char *kind,
				       const char *path, const char *name, char **v,
				       struct fw_err *err)
{
	struct fw_err e = { 0 };
	enum fw_status st = fw_h5_read_attr(path, name, v, &e);
	if (st == FW_ERR_NOT_FOUND)
		return h->errorf(err, FW_ERR_FORMAT, "%s: %s: attribute '%s' missing: not a "
				 "complete %s adapter file", kind, path, name, kind);
	if (st != FW_OK)
		return h->errorf(err, st, "%s: %s", kind, e.msg);
	return FW_OK;
}

/* The file is an adapter of kind: FORMAT for models and checkpoints. */
static inline enum fw_status peft_check_kind(const struct fw_host *h, const char *kind,
					     const char *path, struct fw_err *err)
{
	char *k = NULL;
	struct fw_err e = { 0 };
	enum fw_status st = fw_h5_read_attr(path, "fw_adapter", &k, &e);
	if (st == FW_ERR_NOT_FOUND)
		st = h->errorf(err, FW_ERR_FORMAT, "%s: %s: not an adapter file (no 'fw_adapter' "
			       "attribute); a model or checkpoint goes to --load", kind, path);
	else if (st != FW_OK)
		st = h->errorf(err, st, "%s: %s", kind, e.msg);
	else if (strcmp(k, kind))
		st = h->errorf(err, FW_ERR_INVALID, "%s: %s: an adapter of '%.60s', not %s", kind,
			       path, k, kind);
	fw_free(k);
	return st;
}

/* The base list and fingerprint of an adapter against the model in ctx. */
static inline enum fw_status peft_check_base(const struct fw_host *h, const char *kind,
					     struct fw_ctx *ctx, const char *path,
					     struct fw_tensor *const *own, int n_own,
					     const char *list, const char *want,
					     struct fw_err *err)
{
	struct lora_base_entry e;
	bool ok;
	int n_list = 0;
	uint64_t hh = LORA_HASH_SEED;
	for (const char *s = list, *next; ; s = next, n_list++) {
		next = lora_base_next(s, &e, &ok);
		if (!ok)
			return h->errorf(err, FW_ERR_FORMAT, "%s: %s: attribute 'base_tensors' is "
					 "malformed (line %d)", kind, path, n_list + 1);
		if (!next)
			break;
		struct fw_tensor *t = fw_ctx_find(ctx, e.name);
		if (t && peft_head_param(t))
			return h->errorf(err, FW_ERR_FORMAT, "%s: %s: the adapter keeps the task head "
					 "%s frozen in its base (a file from before heads trained "
					 "with every peft method, PEFT's modules_to_save); train it "
					 "again", kind, path, e.name);
		if (!t || !peft_is_base(own, n_own, t))
			return h->errorf(err, FW_ERR_SHAPE, "%s: %s: the adapter was trained on a "
					 "different base model: its base has %s, this model has no "
					 "such parameter", kind, path, e.name);
		char shape[96], fshape[96];
		struct fw_tensor tmp = { .ndim = e.ndim };
		memcpy(tmp.ne, e.ne, sizeof(tmp.ne));
		lora_shape_text(&tmp, fshape, sizeof(fshape));
		lora_shape_text(t, shape, sizeof(shape));
		if (strcmp(e.dtype, fw_dtype_name(t->dtype)) || strcmp(shape, fshape))
			return h->errorf(err, FW_ERR_SHAPE, "%s: %s: the adapter was trained on a "
					 "different base model: its base has %s %s [%s] where this "
					 "model has %s [%s]", kind, path, e.name, e.dtype, fshape,
					 fw_dtype_name(t->dtype), shape);
		if (!t->data)
			return h->errorf(err, FW_ERR_INVALID, "%s: %s: weights are not allocated",
					 kind, e.name);
		hh = lora_hash_tensor(hh, t);
	}
	int n_base = 0;
	for (int i = 0; i < fw_ctx_n_tensors(ctx); i++) {
		struct fw_tensor *t = fw_ctx_tensor(ctx, i);
		n_base += peft_is_base(own, n_own, t);
	}
	if (n_base != n_list)
		return h->errorf(err, FW_ERR_SHAPE, "%s: %s: the adapter was trained on a "
				 "different base model: %d base tensors there, %d here", kind,
				 path, n_list, n_base);
	char hex[24];
	snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)hh);
	if (strcmp(hex, want))
		return h->errorf(err, FW_ERR_INVALID, "%s: %s: the adapter was trained on a "
				 "different base model: same tensors, other weights (base "
				 "fingerprint %s here, %.20s in the adapter); load the base it was "
				 "trained on with --load", kind, path, hex, want);
	return FW_OK;
}

/* Checks an adapter file against this model and loads own[0..n) and the
 * task heads from it:
 * the kind, the options named in structural[] (as this run resolved them:
 * fwrun fills unset ones from the file), the base, the structure attribute
 * (text equality with what this model would write), the tensor list. */
static inline enum fw_status peft_load(const struct fw_host *h, struct fw_ctx *ctx,
				       const char *path, const char *kind,
				       const struct fw_options *opts,
				       const char *const *structural, int n_structural,
				       struct fw_tensor *const *own, int n_own,
				       const char *mod_attr, const char *mod_text,
				       struct fw_err *err)
{
	char *cfg = NULL, *mods = NULL, *list = NULL, *hash = NULL;
	struct fw_h5_entry *ents = NULL;
	int n_ents = 0, n_all = 0;
	struct fw_err e = { 0 };
	enum fw_status st;
	struct fw_tensor **all = peft_with_heads(h, ctx, own, n_own, &n_all);
	if (!all)
		return h->errorf(err, FW_ERR_NOMEM, "%s: out of memory", kind);
	if ((st = peft_check_kind(h, kind, path, err)) != FW_OK ||
	    (st = peft_attr(h, kind, path, "config", &cfg, err)) != FW_OK ||
	    (st = peft_attr(h, kind, path, mod_attr, &mods, err)) != FW_OK ||
	    (st = peft_attr(h, kind, path, "base_tensors", &list, err)) != FW_OK ||
	    (st = peft_attr(h, kind, path, "base_hash", &hash, err)) != FW_OK)
		goto out;
	for (int k = 0; k < n_structural; k++)
		for (int i = 0; i < fw_options_count(opts); i++) {
			const struct fw_option_def *d = fw_options_def(opts, i);
			char v[512];
			if (strcmp(d->name, structural[k]))
				continue;
			if (!peft_ini_get(cfg, kind, d->name, v, sizeof(v)))
				snprintf(v, sizeof(v), "%s", d->def ? d->def : "");
			const char *here = fw_options_value(opts, i);
			bool same = !strcmp(v, here);
			if (!same && (d->type == FW_OPT_INT || d->type == FW_OPT_FLOAT)) {
				char *ea, *eb;
				double x = strtod(v, &ea), y = strtod(here, &eb);
				same = !*ea && !*eb && x == y;
			}
			if (!same) {
				st = h->errorf(err, FW_ERR_INVALID, "%s: %s: the adapter has %s = %s, "
					       "this run %s; leave --%s unset to use the adapter's",
					       kind, path, d->name, v, here, d->name);
				goto out;
			}
		}
	if ((st = peft_check_base(h, kind, ctx, path, own, n_own, list, hash, err)) != FW_OK)
		goto out;
	if (strcmp(mods, mod_text)) {
		const char *a = mods, *b = mod_text;
		while (*a && *a == *b)
			a++, b++;
		while (a > mods && a[-1] != '\n')
			a--, b--;
		st = h->errorf(err, FW_ERR_SHAPE, "%s: %s: the adapter's structure differs from "
			       "this model's: '%.*s' there, '%.*s' here", kind, path,
			       (int)strcspn(a, "\n"), a, (int)strcspn(b, "\n"), b);
		goto out;
	}
	if ((st = fw_h5_list(path, &ents, &n_ents, &e)) != FW_OK) {
		st = h->errorf(err, st, "%s: %s", kind, e.msg);
		goto out;
	}
	for (int i = 0; i < n_ents; i++) {
		bool known = false;
		for (int k = 0; k < n_all && !known; k++)
			known = !strcmp(all[k]->name, ents[i].name);
		if (!known) {
			st = h->errorf(err, FW_ERR_SHAPE, "%s: %s: tensor '%s' is not a parameter of "
				       "this adapter", kind, path, ents[i].name);
			goto out;
		}
	}
	if ((st = fw_h5_load(path, all, n_all, &e)) != FW_OK)
		st = h->errorf(err, st, "%s: %s", kind, e.msg);
out:
	h->free(all);
	fw_free(cfg);
	fw_free(mods);
	fw_free(list);
	fw_free(hash);
	fw_free(ents);
	return st;
}

/* --- reading an adapter file without a model (export) ------------------------------------ */

/* Every tensor of an adapter file, f32, in host memory. */
struct peft_tensors {
	const struct fw_host *h;
	struct fw_tensor *t;
	int n;
};

static inline void peft_tensors_free(struct peft_tensors *s)
{
	for (int i = 0; s->t && i < s->n; i++)
		if (s->t[i].data)
			s->h->free(s->t[i].data);
	if (s->t)
		s->h->free(s->t);
	s->t = NULL;
	s->n = 0;
}

static inline struct fw_tensor *peft_tensors_find(const struct peft_tensors *s, const char *name)
{
	for (int i = 0; i < s->n; i++)
		if (!strcmp(s->t[i].name, name))
			return &s->t[i];
	return NULL;
}

static inline enum fw_status peft_tensors_read(const struct fw_host *h, const char *kind,
					       const char *path, struct peft_tensors *s,
					       struct fw_err *err)
{
	struct fw_h5_entry *ents = NULL;
	struct fw_tensor **ptr = NULL;
	int ne = 0;
	struct fw_err e = { 0 };
	enum fw_status st = fw_h5_list(path, &ents, &ne, &e);
	*s = (struct peft_tensors){ .h = h };
	if (st != FW_OK)
		return h->errorf(err, st, "%s: %s", kind, e.msg);
	s->t = h->malloc(sizeof(*s->t) * (size_t)(ne + 1));
	ptr = h->malloc(sizeof(*ptr) * (size_t)(ne + 1));
	if (!s->t || !ptr) {
		st = h->errorf(err, FW_ERR_NOMEM, "%s: out of memory", kind);
		goto out;
	}
	memset(s->t, 0, sizeof(*s->t) * (size_t)(ne + 1));
	for (int i = 0; i < ne; i++) {
		struct fw_tensor *t = &s->t[s->n];
		if (ents[i].dtype != FW_F32) {
			st = h->errorf(err, FW_ERR_FORMAT, "%s: %s: tensor '%s' is %s, not f32",
				       kind, path, ents[i].name, fw_dtype_name(ents[i].dtype));
			goto out;
		}
		snprintf(t->name, sizeof(t->name), "%s", ents[i].name);
		t->dtype = FW_F32;
		t->ndim = ents[i].ndim;
		memcpy(t->ne, ents[i].ne, sizeof(t->ne));
		fw_set_contiguous_strides(t);
		t->data = h->malloc(fw_nbytes(t) ? fw_nbytes(t) : 1);
		if (!t->data) {
			st = h->errorf(err, FW_ERR_NOMEM, "%s: out of memory", kind);
			goto out;
		}
		ptr[s->n++] = t;
	}
	if ((st = fw_h5_load(path, ptr, s->n, &e)) != FW_OK)
		st = h->errorf(err, st, "%s: %s", kind, e.msg);
out:
	if (ptr)
		h->free(ptr);
	fw_free(ents);
	if (st != FW_OK)
		peft_tensors_free(s);
	return st;
}

/* --- PEFT's files ---------------------------------------------------------------------------- */

/* Writes text to path through path.tmp and a rename. */
static inline enum fw_status peft_write_file(const struct fw_host *h, const char *kind,
					     const char *path, const void *head, size_t n_head,
					     const void *const *parts, const size_t *sizes,
					     int n_parts, struct fw_err *err)
{
	char tmp[4200];
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return h->errorf(err, FW_ERR_INVALID, "%s: %s: path too long", kind, path);
	FILE *f = fopen(tmp, "wb");
	if (!f)
		return h->errorf(err, FW_ERR_IO, "%s: %s: cannot write", kind, tmp);
	bool ok = fwrite(head, 1, n_head, f) == n_head;
	for (int i = 0; ok && i < n_parts; i++)
		ok = sizes[i] == 0 || fwrite(parts[i], 1, sizes[i], f) == sizes[i];
	ok = (fclose(f) == 0) && ok;
	if (!ok || rename(tmp, path) != 0) {
		remove(tmp);
		return h->errorf(err, FW_ERR_IO, "%s: %s: cannot write", kind, path);
	}
	return FW_OK;
}

/* adapter_model.safetensors: tensors t[0..n) (f32, contiguous) under keys[i],
 * metadata {"format": "pt"}. */
static inline enum fw_status peft_write_safetensors(const struct fw_host *h, const char *kind,
						    const char *path,
						    const struct fw_tensor *const *t,
						    const char *const *keys, int n,
						    struct fw_err *err)
{
	struct peft_text j = { .h = h };
	size_t off = 0;
	const void **all = h->malloc(sizeof(*all) * (size_t)(n + 1));
	size_t *all_n = h->malloc(sizeof(*all_n) * (size_t)(n + 1));
	if (!all || !all_n) {
		if (all)
			h->free(all);
		if (all_n)
			h->free(all_n);
		return h->errorf(err, FW_ERR_NOMEM, "%s: out of memory", kind);
	}
	peft_put(&j, "{\"__metadata__\":{\"format\":\"pt\"}");
	for (int i = 0; i < n; i++) {
		size_t nb = fw_nbytes(t[i]);
		peft_put(&j, ",");
		peft_put_json(&j, keys[i]);
		peft_put(&j, ":{\"dtype\":\"F32\",\"shape\":[");
		for (int d = 0; d < t[i]->ndim; d++)
			peft_put(&j, "%s%lld", d ? "," : "", (long long)t[i]->ne[d]);
		peft_put(&j, "],\"data_offsets\":[%zu,%zu]}", off, off + nb);
		all[i + 1] = t[i]->data;
		all_n[i + 1] = nb;
		off += nb;
	}
	peft_put(&j, "}");
	while (!j.oom && j.n % 8)
		peft_put(&j, " ");
	enum fw_status st;
	if (j.oom) {
		st = h->errorf(err, FW_ERR_NOMEM, "%s: out of memory", kind);
	} else {
		size_t hl = j.n;
		unsigned char head[8];
		for (int b = 0; b < 8; b++)
			head[b] = (unsigned char)(hl >> (8 * b));
		all[0] = j.s;
		all_n[0] = j.n;
		st = peft_write_file(h, kind, path, head, 8, all, all_n, n + 1, err);
	}
	h->free(all);
	h->free(all_n);
	peft_text_free(&j);
	return st;
}

/* OUT_DIR/NAME from dir and name. */
static inline enum fw_status peft_join(const struct fw_host *h, const char *kind, char *out,
				       size_t len, const char *dir, const char *name,
				       struct fw_err *err)
{
	if (snprintf(out, len, "%s/%s", dir, name) >= (int)len)
		return h->errorf(err, FW_ERR_INVALID, "%s: %s: path too long", kind, dir);
	return FW_OK;
}

/* An arch/encoder (BERT) base, from its adapter's base list and tensors:
 * PEFT's task ("mlm", "seq-cls", "token-cls"); "seq2seq" for a T5 base; NULL
 * for a decoder base. */
static inline const char *peft_encoder_task(const char *base_list, const struct peft_tensors *ts)
{
	if (peft_listed(base_list, "shared.weight") &&
	    peft_listed(base_list, "decoder.final_layer_norm.weight"))
		return "seq2seq";
	bool out_proj = peft_listed(base_list, "classifier.out_proj.weight");
	for (int i = 0; i < ts->n && !out_proj; i++)
		out_proj = !strcmp(ts->t[i].name, "classifier.out_proj.weight");
	if (!peft_listed(base_list, "embeddings.word_embeddings.weight"))
		return NULL;
	if (peft_listed(base_list, "cls.predictions.bias"))
		return "mlm";
	/* BERT's pooler, or RobertaClassificationHead's out_proj (the base's
	 * or, as a trained task head, the adapter's) */
	return out_proj || peft_listed(base_list, "pooler.dense.weight") ? "seq-cls" : "token-cls";
}

/* adapter_config.json's task_type of a task (peft_encoder_task): a decoder
 * CAUSAL_LM; MLM has no PEFT task type (null). */
static inline const char *peft_task_json(const char *task)
{
	return !task ? "\"CAUSAL_LM\"" : !strcmp(task, "mlm") ? "null" :
	       !strcmp(task, "seq2seq") ? "\"SEQ_2_SEQ_LM\"" :
	       !strcmp(task, "seq-cls") ? "\"SEQ_CLS\"" : "\"TOKEN_CLS\"";
}

/* The task heads an adapter file carries (peft_head_name), for a prompt
 * learning export: PEFT's PeftModel holds the Hugging Face model itself as
 * base_model, and saves a modules_to_save module's parameters as
 * base_model.MODULE.PARAM (save_and_load.py: the wrapper's
 * modules_to_save.default is taken out of the key); the heads sit at the top
 * of Hugging Face's task classes under fw's names. mods: the modules as a
 * JSON list, or null. */
struct peft_heads {
	const struct fw_tensor **t;
	char (*keys)[2 * FW_NAME_MAX];
	int n;
	struct peft_text mods;
};

static inline void peft_heads_free(const struct fw_host *h, struct peft_heads *o)
{
	if (o->t)
		h->free(o->t);
	if (o->keys)
		h->free(o->keys);
	peft_text_free(&o->mods);
}

/* prefix: "base_model." for prompt learning, "base_model.model." for the
 * tuners (LoRA, IA3, AdaLoRA: PeftModel.base_model is the tuner model there). */
static inline enum fw_status peft_heads_collect_as(const struct fw_host *h, const char *kind,
						   const struct peft_tensors *ts, const char *prefix,
						   struct peft_heads *o, struct fw_err *err)
{
	*o = (struct peft_heads){ .mods = { .h = h } };
	o->t = h->malloc(sizeof(*o->t) * (size_t)(ts->n + 1));
	o->keys = h->malloc(sizeof(*o->keys) * (size_t)(ts->n + 1));
	if (!o->t || !o->keys)
		return h->errorf(err, FW_ERR_NOMEM, "%s: out of memory", kind);
	struct peft_text seen = { .h = h };
	peft_put(&seen, "\n");
	for (int i = 0; i < ts->n; i++) {
		const char *name = ts->t[i].name;
		if (!peft_head_name(name))
			continue;
		o->t[o->n] = &ts->t[i];
		snprintf(o->keys[o->n++], sizeof(o->keys[0]), "%s%s", prefix, name);
		size_t ml = peft_head_module(name);
		char mod[FW_NAME_MAX + 2];
		snprintf(mod, sizeof(mod), "\n%.*s\n", (int)ml, name);
		if (seen.s && strstr(seen.s, mod))
			continue;
		peft_put(&seen, "%s", mod + 1);
		peft_put(&o->mods, "%s", o->mods.n ? ", " : "[");
		mod[ml + 1] = '\0';
		peft_put_json(&o->mods, mod + 1);
	}
	peft_put(&o->mods, "%s", o->mods.n ? "]" : "null");
	bool oom = seen.oom || o->mods.oom;
	peft_text_free(&seen);
	return oom ? h->errorf(err, FW_ERR_NOMEM, "%s: out of memory", kind) : FW_OK;
}

static inline enum fw_status peft_heads_collect(const struct fw_host *h, const char *kind,
						const struct peft_tensors *ts,
						struct peft_heads *o, struct fw_err *err)
{
	return peft_heads_collect_as(h, kind, ts, "base_model.", o, err);
}

/* An export's files: adapter_model.safetensors with the n tensors tp under
 * keys and the task heads, adapter_config.json cfg. */
static inline enum fw_status peft_write_export(const struct fw_host *h, const char *kind,
					       const char *dir, const struct fw_tensor *const *tp,
					       const char *const *keys, int n,
					       const struct peft_heads *heads,
					       const struct peft_text *cfg, struct fw_err *err)
{
	char path[4300];
	const struct fw_tensor **all = h->malloc(sizeof(*all) * (size_t)(n + heads->n + 1));
	const char **all_keys = h->malloc(sizeof(*all_keys) * (size_t)(n + heads->n + 1));
	enum fw_status st;
	if (!all || !all_keys) {
		st = h->errorf(err, FW_ERR_NOMEM, "%s: out of memory", kind);
		goto out;
	}
	for (int i = 0; i < n; i++) {
		all[i] = tp[i];
		all_keys[i] = keys[i];
	}
	for (int i = 0; i < heads->n; i++) {
		all[n + i] = heads->t[i];
		all_keys[n + i] = heads->keys[i];
	}
	if ((st = peft_join(h, kind, path, sizeof(path), dir, "adapter_model.safetensors",
			    err)) != FW_OK ||
	    (st = peft_write_safetensors(h, kind, path, all, all_keys, n + heads->n,
					 err)) != FW_OK ||
	    (st = peft_join(h, kind, path, sizeof(path), dir, "adapter_config.json", err)) != FW_OK)
		goto out;
	st = peft_write_file(h, kind, path, cfg->s, cfg->n, NULL, NULL, 0, err);
out:
	if (all)
		h->free(all);
	if (all_keys)
		h->free(all_keys);
	return st;
}

/* A prompt learning export's files: prompt_embeddings (emb) and the heads. */
static inline enum fw_status peft_write_prompt_export(const struct fw_host *h, const char *kind,
						      const char *dir, const struct fw_tensor *emb,
						      const struct peft_heads *heads,
						      const struct peft_text *cfg,
						      struct fw_err *err)
{
	const char *key = "prompt_embeddings";
	return peft_write_export(h, kind, dir, &emb, &key, 1, heads, cfg, err);
}

/* fw's GPT-2 names (arch/decoder) to Hugging Face GPT2LMHeadModel's modules. */
static inline void peft_hf_name(const char *fw, char *out, size_t len)
{
	snprintf(out, len, "%s%s", strncmp(fw, "lm_head", 7) ? "transformer." : "", fw);
}

/* Whether the adapter file was made for a T5 (arch/encdec) base, from its
 * base_tensors: PEFT's task_type SEQ_2_SEQ_LM, and the base's fw names are
 * Hugging Face's as they are. */
static inline bool peft_seq2seq_file(const char *path)
{
	char *list = NULL;
	struct fw_err e = { 0 };
	bool yes = fw_h5_read_attr(path, "base_tensors", &list, &e) == FW_OK &&
		   peft_listed(list, "shared.weight") &&
		   peft_listed(list, "decoder.final_layer_norm.weight");
	fw_free(list);
	return yes;
}

/* PEFT's module name of fw's: GPT-2's (peft_hf_name), or a T5's as it is. */
static inline void peft_module_name(bool seq2seq, const char *fw, char *out, size_t len)
{
	if (seq2seq)
		snprintf(out, len, "%s", fw);
	else
		peft_hf_name(fw, out, len);
}

/* Hugging Face's name of an fw parameter or module for a base of task
 * (peft_encoder_task): GPT-2's (peft_hf_name), T5's (fw's own), or BERT's
 * ("bert." + name, heads as they are; fwrun export-adapter --base renames
 * them through the base's Hugging Face map, RoBERTa's "roberta."). */
static inline void peft_hf_param_name(const char *task, const char *fw, char *out, size_t len)
{
	if (!task || !strcmp(task, "seq2seq"))
		peft_module_name(task != NULL, fw, out, len);
	else if (!strncmp(fw, "cls.", 4) || !strncmp(fw, "classifier", 10))
		snprintf(out, len, "%s", fw);
	else
		snprintf(out, len, "bert.%s", fw);
}

#endif
