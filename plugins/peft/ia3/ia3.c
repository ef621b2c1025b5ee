/* peft/ia3 - (IA)^3 as Hugging Face PEFT defines it (Liu et al., 2022).
 *
 * Each targeted linear layer y = x W^T + b gets a learned vector l, all ones
 * at the start (a no-op), in one of two places (PEFT's IA3 Linear):
 *
 *     not feedforward:  y = (x W^T + b) * l      l: ia3_l (out, 1)
 *     feedforward:      y = (x * l) W^T + b      l: ia3_l (1, in)
 *
 * PEFT's GPT-2 defaults target c_attn (the fused q, k, v projection: PEFT
 * scales its whole 3C output, q included, and its bias) and mlp.c_proj
 * (feedforward: the FFN input); Llama's k_proj, v_proj and down_proj
 * (feedforward). freeze() leaves only the vectors trainable.
 *
 * merge() folds the vectors into the base layer as PEFT does (W rows and b
 * scaled by l, or W columns by l for feedforward), keeps the vectors aside
 * and sets them to 1, so the graph computes the merged layer unchanged;
 * unmerge() divides them out again and restores the vectors.
 *
 * Adapter files: ../common/peft_file.h, with the attribute ia3_modules (one
 * line per adapted layer: "NAME\tIN\tOUT\tFF\n", FF 1 for feedforward).
 */
#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/plugin.h"
#include "../common/peft_file.h"

#define IA3_KIND "peft/ia3"

struct pattern {
	const char *key;
	bool matched;
};

struct ia3_layer {
	char name[FW_NAME_MAX];
	struct fw_tensor *w, *bias, *l;
	int64_t in, out;
	bool ff;
	float *saved;                    /* l while merged */
};

struct ia3 {
	const struct fw_host *host;
	const struct fw_options *opts;
	bool auto_targets, auto_ff, merged;
	char *text;
	struct pattern *targets, *ffs;
	int n_targets, n_ffs;

	struct fw_ctx *ctx;
	struct ia3_layer *layers;
	int n_layers, cap_layers;
	int n_linears;
	char first[FW_NAME_MAX];         /* the model's first routed linear layer */
};

/* PEFT's TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING and
 * ..._FEEDFORWARD_MODULES_MAPPING for gpt2, llama and t5. */
static const char *const auto_targets[] = { "c_attn", "mlp.c_proj", "k_proj", "v_proj",
					    "down_proj", "SelfAttention.k", "SelfAttention.v",
					    "EncDecAttention.k", "EncDecAttention.v",
					    "DenseReluDense.wo" };
static const char *const auto_ffs[] = { "mlp.c_proj", "down_proj", "DenseReluDense.wo" };

/* PEFT's list matching: the whole name or a dotted suffix; with *, ? or [ a
 * glob over the whole name. */
static bool match(const char *pat, const char *name)
{
	if (strpbrk(pat, "*?["))
		return fnmatch(pat, name, 0) == 0;
	size_t n = strlen(name), m = strlen(pat);
	return !strcmp(name, pat) || (n > m && name[n - m - 1] == '.' && !strcmp(name + n - m, pat));
}

static bool in_list(struct pattern *p, int n, const char *const *autos, size_t n_auto,
		    bool use_auto, const char *name)
{
	bool hit = false;
	if (use_auto) {
		for (size_t i = 0; i < n_auto; i++)
			hit |= match(autos[i], name);
		return hit;
	}
	for (int i = 0; i < n; i++)
		if (match(p[i].key, name))
			hit = p[i].matched = true;
	return hit;
}

static void forget_model(struct ia3 *s)
{
	for (int i = 0; i < s->n_layers; i++)
		if (s->layers[i].saved)
			s->host->free(s->layers[i].saved);
	s->n_layers = 0;
	s->n_linears = 0;
	s->merged = false;
	for (int i = 0; i < s->n_targets; i++)
		s->targets[i].matched = false;
	for (int i = 0; i < s->n_ffs; i++)
		s->ffs[i].matched = false;
}

static struct fw_tensor *ctx_fail(const struct ia3 *s, struct fw_ctx *ctx, struct fw_err *err)
{
	const struct fw_err *ce = s->host->ctx_err(ctx);
	s->host->errorf(err, ce->status ? ce->status : FW_ERR_INTERNAL, "peft/ia3: %s", ce->msg);
	return NULL;
}

static struct fw_tensor *ia3_wrap_linear(void *state, struct fw_model *m, const char *name,
					 struct fw_tensor *x, struct fw_tensor *w,
					 struct fw_tensor *bias, struct fw_err *err)
{
	struct ia3 *s = state;
	const struct fw_host *h = s->host;
	struct fw_ctx *ctx = m->ctx;
	if (peft_new_model(s->ctx, ctx, s->n_linears, s->first, name)) {
		forget_model(s);
		s->ctx = ctx;
	}
	if (s->n_linears++ == 0)
		snprintf(s->first, sizeof(s->first), "%s", name);
	if (!in_list(s->targets, s->n_targets, auto_targets,
		     sizeof(auto_targets) / sizeof(auto_targets[0]), s->auto_targets, name))
		return NULL;
	bool ff = in_list(s->ffs, s->n_ffs, auto_ffs, sizeof(auto_ffs) / sizeof(auto_ffs[0]),
			  s->auto_ff, name);
	if (w->ndim != 2 || w->dtype != FW_F32) {
		h->errorf(err, FW_ERR_UNSUPPORTED, "peft/ia3: %s: the base weight is %s with %d "
			  "dimensions; IA3 needs a 2-D f32 weight", name, fw_dtype_name(w->dtype),
			  w->ndim);
		return NULL;
	}
	int64_t out = w->ne[0], in = w->ne[1], n = ff ? in : out;
	char ln[FW_NAME_MAX + 16];
	if (snprintf(ln, sizeof(ln), "%s.ia3_l", name) >= FW_NAME_MAX) {
		h->errorf(err, FW_ERR_INVALID, "peft/ia3: %s: name too long for its vector", name);
		return NULL;
	}
	if (!peft_grow(h, (void **)&s->layers, s->n_layers, &s->cap_layers, sizeof(*s->layers))) {
		h->errorf(err, FW_ERR_NOMEM, "peft/ia3: out of memory");
		return NULL;
	}
	int64_t shape[2] = { ff ? 1 : out, ff ? in : 1 };      /* PEFT's ia3_l shapes */
	struct fw_tensor *l = h->param(ctx, ln, FW_F32, 2, shape, true);
	if (!l)
		return ctx_fail(s, ctx, err);
	h->init_const(m, l, 1.0f);
	struct fw_tensor *v = h->reshape(ctx, l, 1, &n), *y;
	if (ff)
		y = fw_linear(ctx, h->mul(ctx, x, v), w, bias);
	else
		y = h->mul(ctx, fw_linear(ctx, x, w, bias), v);
	if (!y)
		return ctx_fail(s, ctx, err);
	struct ia3_layer *ly = &s->layers[s->n_layers++];
	*ly = (struct ia3_layer){ .w = w, .bias = bias, .l = l, .in = in, .out = out, .ff = ff };
	snprintf(ly->name, sizeof(ly->name), "%s", name);
	return y;
}

static bool is_own(const struct ia3 *s, const struct fw_tensor *t)
{
	for (int i = 0; i < s->n_layers; i++)
		if (s->layers[i].l == t)
			return true;
	return false;
}

static enum fw_status ia3_freeze(void *state, struct fw_model *m, struct fw_err *err)
{
	struct ia3 *s = state;
	const struct fw_host *h = s->host;
	if (s->ctx != m->ctx) {
		forget_model(s);
		s->ctx = m->ctx;
	}
	for (int i = 0; i < s->n_targets; i++)
		if (!s->targets[i].matched)
			return h->errorf(err, FW_ERR_INVALID, "peft/ia3: --ia3-target-modules: '%s' "
					 "matches no linear layer (GPT-2's are h.N.attn.c_attn, "
					 "h.N.attn.c_proj, h.N.mlp.c_fc, h.N.mlp.c_proj)",
					 s->targets[i].key);
	for (int i = 0; i < s->n_ffs; i++)
		if (!s->ffs[i].matched)
			return h->errorf(err, FW_ERR_INVALID, "peft/ia3: --ia3-feedforward-modules: "
					 "'%s' matches no targeted layer (feedforward modules are a "
					 "subset of the target modules, as in PEFT)", s->ffs[i].key);
	if (s->n_layers == 0)
		return h->errorf(err, FW_ERR_INVALID, "peft/ia3: no linear layer matches %s (%d "
				 "linear layers routed); set --ia3-target-modules",
				 s->auto_targets ? "the default targets (GPT-2 c_attn, mlp.c_proj; "
				 "Llama k_proj, v_proj, down_proj; T5 k, v, wo)" : "the targets",
				 s->n_linears);
	int64_t n_train = 0;
	for (int i = 0; i < fw_ctx_n_tensors(m->ctx); i++) {
		struct fw_tensor *t = fw_ctx_tensor(m->ctx, i);
		if (!(t->flags & FW_FLAG_PARAM))
			continue;
		bool on = is_own(s, t) || peft_head_param(t);
		if (fw_param_set_trainable(m->ctx, t, on) != FW_OK)
			return h->errorf(err, FW_ERR_INVALID, "peft/ia3: %s", h->ctx_err(m->ctx)->msg);
		n_train += on ? fw_nelem(t) : 0;
	}
	h->log(FW_LOG_DEBUG, "peft/ia3: %d linear layers scaled; %lld trainable values",
	       s->n_layers, (long long)n_train);
	return FW_OK;
}

/* --- adapter files ------------------------------------------------------------------ */

static enum fw_status modules_text(const struct ia3 *s, struct peft_text *t)
{
	peft_put(t, "%s", "");
	for (int i = 0; i < s->n_layers; i++)
		peft_put(t, "%s\t%lld\t%lld\t%d\n", s->layers[i].name, (long long)s->layers[i].in,
			 (long long)s->layers[i].out, s->layers[i].ff);
	return t->oom ? FW_ERR_NOMEM : FW_OK;
}

static enum fw_status own_list(const struct ia3 *s, struct fw_tensor ***own, struct fw_err *err)
{
	*own = s->host->malloc(sizeof(**own) * (size_t)(s->n_layers + 1));
	if (!*own)
		return s->host->errorf(err, FW_ERR_NOMEM, "peft/ia3: out of memory");
	for (int i = 0; i < s->n_layers; i++)
		(*own)[i] = s->layers[i].l;
	return FW_OK;
}

/* save (true) or load (false) of the adapter file at path. */
static enum fw_status file_io(struct ia3 *s, struct fw_model *m, const char *path, bool saving,
			      struct fw_err *err)
{
	const struct fw_host *h = s->host;
	if (s->merged)
		return h->errorf(err, FW_ERR_INVALID, "peft/ia3: %s: cannot %s an adapter while "
				 "one is merged into the weights (unmerge first)", path,
				 saving ? "save" : "load");
	if (s->ctx != m->ctx || s->n_layers == 0)
		return h->errorf(err, FW_ERR_INVALID, "peft/ia3: %s: no adapter was built", path);
	struct peft_text mods = { .h = h };
	struct fw_tensor **own = NULL;
	enum fw_status st = own_list(s, &own, err);
	if (st == FW_OK && modules_text(s, &mods) != FW_OK)
		st = h->errorf(err, FW_ERR_NOMEM, "peft/ia3: out of memory");
	if (st == FW_OK && saving)
		st = peft_save(h, m->ctx, path, IA3_KIND, s->opts, own, s->n_layers, "ia3_modules",
			       mods.s, err);
	else if (st == FW_OK)
		st = peft_load(h, m->ctx, path, IA3_KIND, s->opts, NULL, 0, own, s->n_layers,
			       "ia3_modules", mods.s, err);
	peft_text_free(&mods);
	if (own)
		h->free(own);
	return st;
}

static enum fw_status ia3_save(void *state, struct fw_model *m, const char *path,
			       struct fw_err *err)
{
	return file_io(state, m, path, true, err);
}

static enum fw_status ia3_load(void *state, struct fw_model *m, const char *path,
			       struct fw_err *err)
{
	return file_io(state, m, path, false, err);
}

/* --- merging -------------------------------------------------------------------------- */

struct fold {
	struct ia3_layer *ly;
	const float *l;
	bool divide;
};

/* Rows [lo, hi) of W (and b): scaled (or divided) by l. */
static void fold_rows(void *arg, int64_t lo, int64_t hi)
{
	const struct fold *f = arg;
	const struct ia3_layer *ly = f->ly;
	float *W = fw_f32(ly->w);
	for (int64_t o = lo; o < hi; o++) {
		float *w = W + o * ly->in;
		if (ly->ff) {
			for (int64_t i = 0; i < ly->in; i++)
				w[i] = f->divide ? w[i] / f->l[i] : w[i] * f->l[i];
		} else {
			for (int64_t i = 0; i < ly->in; i++)
				w[i] = f->divide ? w[i] / f->l[o] : w[i] * f->l[o];
		}
	}
}

static enum fw_status fold_all(struct ia3 *s, struct fw_model *m, bool merging,
			       struct fw_err *err)
{
	const struct fw_host *h = s->host;
	if (s->ctx != m->ctx || s->n_layers == 0)
		return h->errorf(err, FW_ERR_INVALID, "peft/ia3: no adapter was built");
	if (s->merged == merging)
		return h->errorf(err, FW_ERR_INVALID, "peft/ia3: the adapter is %s",
				 merging ? "already merged" : "not merged");
	for (int i = 0; i < s->n_layers; i++) {
		struct ia3_layer *ly = &s->layers[i];
		int64_t n = fw_nelem(ly->l);
		if (!ly->w->data || !ly->l->data)
			return h->errorf(err, FW_ERR_INVALID, "peft/ia3: %s: weights are not "
					 "allocated", ly->name);
		if (merging) {
			const float *l = fw_f32(ly->l);
			for (int64_t k = 0; k < n; k++)
				if (!(l[k] != 0.0f) || !isfinite(l[k]))
					return h->errorf(err, FW_ERR_INVALID, "peft/ia3: %s: ia3_l[%lld] "
							 "is %g: merging could not be undone", ly->name,
							 (long long)k, (double)l[k]);
			if (!ly->saved && !(ly->saved = h->malloc(sizeof(float) * (size_t)n)))
				return h->errorf(err, FW_ERR_NOMEM, "peft/ia3: out of memory");
		}
	}
	for (int i = 0; i < s->n_layers; i++) {
		struct ia3_layer *ly = &s->layers[i];
		int64_t n = fw_nelem(ly->l);
		float *l = fw_f32(ly->l);
		if (merging)
			memcpy(ly->saved, l, sizeof(float) * (size_t)n);
		struct fold f = { ly, ly->saved, !merging };
		h->parallel_for(ly->out, fold_rows, &f);
		fw_tensor_mark_written(ly->w);
		if (ly->bias && !ly->ff) {
			float *b = fw_f32(ly->bias);
			for (int64_t o = 0; o < ly->out; o++)
				b[o] = merging ? b[o] * ly->saved[o] : b[o] / ly->saved[o];
			fw_tensor_mark_written(ly->bias);
		}
		fw_tensor_mark_written(ly->l);
		for (int64_t k = 0; k < n; k++)
			l[k] = merging ? 1.0f : ly->saved[k];
	}
	s->merged = merging;
	return FW_OK;
}

static enum fw_status ia3_merge(void *state, struct fw_model *m, struct fw_err *err)
{
	return fold_all(state, m, true, err);
}

static enum fw_status ia3_unmerge(void *state, struct fw_model *m, struct fw_err *err)
{
	return fold_all(state, m, false, err);
}

/* --- PEFT export ----------------------------------------------------------------------------- */

static enum fw_status ia3_export(const struct fw_host *h, const char *adapter, const char *dir,
				 const char *base_model, struct fw_err *err)
{
	char *mods = NULL, *base_list = NULL;
	struct peft_tensors ts = { .h = h };
	struct peft_text cfg = { .h = h }, tg = { .h = h }, ffl = { .h = h };
	struct peft_heads heads = { .mods = { .h = h } };
	const struct fw_tensor **tp = NULL;
	char **keys = NULL;
	int n = 0;
	enum fw_status st;
	if ((st = peft_check_kind(h, IA3_KIND, adapter, err)) != FW_OK ||
	    (st = peft_attr(h, IA3_KIND, adapter, "ia3_modules", &mods, err)) != FW_OK ||
	    (st = peft_attr(h, IA3_KIND, adapter, "base_tensors", &base_list, err)) != FW_OK ||
	    (st = peft_tensors_read(h, IA3_KIND, adapter, &ts, err)) != FW_OK ||
	    (st = peft_heads_collect_as(h, IA3_KIND, &ts, "base_model.model.", &heads,
					err)) != FW_OK)
		goto out;
	/* a T5's names are PEFT's as they are; an encoder's Linear layers are
	 * not GPT-2's Conv1D (fan_in_fan_out) */
	const char *task = peft_encoder_task(base_list, &ts);
	bool encoder = task && strcmp(task, "seq2seq");
	tp = h->malloc(sizeof(*tp) * (size_t)(ts.n + 1));
	keys = h->malloc(sizeof(*keys) * (size_t)(ts.n + 1));
	if (!tp || !keys) {
		st = h->errorf(err, FW_ERR_NOMEM, "peft/ia3: out of memory");
		goto out;
	}
	memset(keys, 0, sizeof(*keys) * (size_t)(ts.n + 1));
	/* One line per layer: its vector under PEFT's key; the layer names in
	 * target_modules (feedforward ones also in feedforward_modules). */
	for (const char *s = mods; *s; s = strchr(s, '\n') ? strchr(s, '\n') + 1 : s + strlen(s)) {
		char name[FW_NAME_MAX], tn[FW_NAME_MAX + 16], hf[2 * FW_NAME_MAX];
		long long in, out;
		int ff;
		size_t len = strcspn(s, "\t");
		if (len == 0 || len >= sizeof(name) || sscanf(s + len, "\t%lld\t%lld\t%d", &in, &out,
							   &ff) != 3) {
			st = h->errorf(err, FW_ERR_FORMAT, "peft/ia3: %s: attribute 'ia3_modules' is "
				       "malformed", adapter);
			goto out;
		}
		snprintf(name, sizeof(name), "%.*s", (int)len, s);
		snprintf(tn, sizeof(tn), "%s.ia3_l", name);
		struct fw_tensor *t = peft_tensors_find(&ts, tn);
		if (!t || t->ndim != 2 || t->ne[0] != (ff ? 1 : out) || t->ne[1] != (ff ? in : 1) ||
		    n >= ts.n) {
			st = h->errorf(err, FW_ERR_FORMAT, "peft/ia3: %s: tensor '%s' is missing or "
				       "not (%lld, %lld)", adapter, tn, ff ? 1LL : out, ff ? in : 1LL);
			goto out;
		}
		peft_hf_param_name(task, name, hf, sizeof(hf));
		size_t kl = strlen(hf) + 32;
		if (!(keys[n] = h->malloc(kl))) {
			st = h->errorf(err, FW_ERR_NOMEM, "peft/ia3: out of memory");
			goto out;
		}
		snprintf(keys[n], kl, "base_model.model.%s.ia3_l", hf);
		tp[n++] = t;
		peft_put(&tg, "%s", tg.n ? ", " : "");
		peft_put_json(&tg, encoder ? hf : name);
		if (ff) {
			peft_put(&ffl, "%s", ffl.n ? ", " : "");
			peft_put_json(&ffl, encoder ? hf : name);
		}
	}
	if (n + heads.n != ts.n) {
		st = h->errorf(err, FW_ERR_FORMAT, "peft/ia3: %s: %d tensors but %d layers in "
			       "ia3_modules and %d task head tensors", adapter, ts.n, n, heads.n);
		goto out;
	}
	peft_put(&tg, "%s", "");
	peft_put(&ffl, "%s", "");
	peft_put(&cfg, "{\n  \"auto_mapping\": null,\n  \"base_model_name_or_path\": ");
	if (base_model)
		peft_put_json(&cfg, base_model);
	else
		peft_put(&cfg, "null");
	peft_put(&cfg, ",\n  \"fan_in_fan_out\": %s,\n  \"feedforward_modules\": [%s],\n"
		 "  \"inference_mode\": true,\n  \"init_ia3_weights\": true,\n"
		 "  \"modules_to_save\": %s,\n  \"peft_type\": \"IA3\",\n  \"revision\": null,\n"
		 "  \"target_modules\": [%s],\n  \"task_type\": %s\n}\n", task ? "false" : "true",
		 ffl.s, heads.mods.s, tg.s, peft_task_json(task));
	if (cfg.oom || tg.oom || ffl.oom) {
		st = h->errorf(err, FW_ERR_NOMEM, "peft/ia3: out of memory");
		goto out;
	}
	st = peft_write_export(h, IA3_KIND, dir, tp, (const char *const *)keys, n, &heads, &cfg,
			       err);
out:
	for (int i = 0; keys && i < n; i++)
		h->free(keys[i]);
	if (keys)
		h->free(keys);
	if (tp)
		h->free(tp);
	peft_text_free(&cfg);
	peft_text_free(&tg);
	peft_text_free(&ffl);
	peft_heads_free(h, &heads);
	peft_tensors_free(&ts);
	fw_free(mods);
	fw_free(base_list);
	return st;
}

/* --- life cycle ---------------------------------------------------------------------------- */

static void ia3_fini(void *state)
{
	struct ia3 *s = state;
	if (!s)
		return;
	const struct fw_host *h = s->host;
	forget_model(s);
	void *arrays[] = { s->text, s->targets, s->ffs, s->layers };
	for (size_t i = 0; i < sizeof(arrays) / sizeof(arrays[0]); i++)
		if (arrays[i])
			h->free(arrays[i]);
	h->free(s);
}

/* Splits a comma-separated list (in dst) into entries; "auto" alone sets *is_auto. */
static enum fw_status parse_list(struct ia3 *s, const char *opt, char *dst, struct pattern **out,
				 int *n, bool *is_auto, struct fw_err *err)
{
	const struct fw_host *h = s->host;
	int cap = 1;
	for (const char *p = dst; *p; p++)
		cap += *p == ',';
	*out = h->malloc(sizeof(**out) * (size_t)cap);
	if (!*out)
		return h->errorf(err, FW_ERR_NOMEM, "peft/ia3: out of memory");
	*n = 0;
	*is_auto = false;
	char *save = NULL;
	for (char *tok = strtok_r(dst, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ')
			tok++;
		char *end = tok + strlen(tok);
		while (end > tok && end[-1] == ' ')
			*--end = '\0';
		if (*tok)
			(*out)[(*n)++] = (struct pattern){ .key = tok };
	}
	for (int i = 0; i < *n; i++)
		if (!strcmp((*out)[i].key, "auto")) {
			if (*n > 1)
				return h->errorf(err, FW_ERR_INVALID, "peft/ia3: --%s: 'auto' stands "
						 "alone, without other names", opt);
			*is_auto = true;
			*n = 0;
		}
	return FW_OK;
}

static enum fw_status ia3_init(const struct fw_host *host, const struct fw_options *opts,
			       void **state, struct fw_err *err)
{
	struct ia3 *s = host->malloc(sizeof(*s));
	if (!s)
		return host->errorf(err, FW_ERR_NOMEM, "peft/ia3: out of memory");
	*s = (struct ia3){ .host = host, .opts = opts };
	const char *tg = fw_opt_str(opts, "ia3-target-modules");
	const char *ff = fw_opt_str(opts, "ia3-feedforward-modules");
	size_t lt = strlen(tg) + 1, lf = strlen(ff) + 1;
	enum fw_status st;
	s->text = host->malloc(lt + lf);
	if (!s->text) {
		st = host->errorf(err, FW_ERR_NOMEM, "peft/ia3: out of memory");
		goto fail;
	}
	memcpy(s->text, tg, lt);
	memcpy(s->text + lt, ff, lf);
	if ((st = parse_list(s, "ia3-target-modules", s->text, &s->targets, &s->n_targets,
			     &s->auto_targets, err)) != FW_OK ||
	    (st = parse_list(s, "ia3-feedforward-modules", s->text + lt, &s->ffs, &s->n_ffs,
			     &s->auto_ff, err)) != FW_OK)
		goto fail;
	if (!s->auto_targets && s->n_targets == 0) {
		st = host->errorf(err, FW_ERR_INVALID, "peft/ia3: --ia3-target-modules is empty "
				  "(use auto, or names such as c_attn,mlp.c_proj)");
		goto fail;
	}
	*state = s;
	return FW_OK;
fail:
	ia3_fini(s);
	return st;
}

static const struct fw_peft_i iface = {
	.size = sizeof(struct fw_peft_i),
	.wrap_linear = ia3_wrap_linear,
	.freeze = ia3_freeze,
	.save = ia3_save,
	.load = ia3_load,
	.merge = ia3_merge,
	.unmerge = ia3_unmerge,
	.export_peft = ia3_export,
};

static const struct fw_option_def options[] = {
	{ "ia3-target-modules", FW_OPT_STRING, "auto", 0, -1, NULL,
	  "layers that get a vector: comma-separated names or dotted suffixes (c_attn, "
	  "mlp.c_proj), globs (h.*.attn.*), or auto (PEFT's defaults: c_attn, mlp.c_proj for "
	  "GPT-2; k_proj, v_proj, down_proj for Llama; k, v, wo for T5) (PEFT target_modules)" },
	{ "ia3-feedforward-modules", FW_OPT_STRING, "auto", 0, -1, NULL,
	  "targeted layers whose input is scaled instead of their output, matched the same "
	  "way; auto: mlp.c_proj (GPT-2), down_proj (Llama), wo (T5) (PEFT feedforward_modules)" },
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_PEFT,
	.name = IA3_KIND,
	.version = "1.0.0",
	.description = "(IA)^3 scaling vectors on linear layers (PEFT semantics): frozen base, "
		       "adapter files, merge/unmerge, PEFT export",
	.options = options,
	.n_options = (int)(sizeof(options) / sizeof(options[0])),
	.iface = &iface,
	.init = ia3_init,
	.fini = ia3_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
