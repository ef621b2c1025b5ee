/* peft/lora - LoRA as Hugging Face PEFT defines it (Hu et al., 2021).
 *
 * Every targeted linear layer y = x W^T + b becomes
 *
 *     y = x W^T + b + scaling * B(A(dropout(x)))
 *
 * with A (r, in) and B (out, r) trainable, scaling = alpha / r (alpha /
 * sqrt(r) with --lora-use-rslora), A kaiming-uniform(a = sqrt(5)), i.e.
 * U(-1/sqrt(in), 1/sqrt(in)), or N(0, 1/r^2) with --lora-init=gaussian, and
 * B = 0, so a new adapter starts as a no-op. freeze() leaves only A, B (and
 * the biases --lora-bias asks for) trainable: the base weights get no
 * gradient buffer, no optimizer state and no weight-gradient work.
 *
 * The scaling is applied to the rank-r activation x A^T by a scale node,
 * which doubles as the switch of merge(): merging adds scaling * B A to W
 * and sets that node's factor to 0, unmerging does the reverse.
 *
 * Adapter files (save/load) are described in lora_format.h.
 */
#include <fnmatch.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/plugin.h"
#include "fw/quant.h"
#include "lora_format.h"
#include "../common/peft_file.h"

enum bias_mode { BIAS_NONE = 0, BIAS_ALL, BIAS_LORA_ONLY };

/* One entry of a comma-separated list option; value for KEY=VALUE lists. */
struct pattern {
	const char *key;
	double value;
	bool matched;
};

struct lora_layer {
	char name[FW_NAME_MAX];          /* the linear layer: "h.0.attn.c_attn" */
	struct fw_tensor *w, *bias;      /* the base layer's */
	struct fw_tensor *a, *b;         /* lora_A (r, in), lora_B (out, r) */
	struct fw_tensor *gate;          /* scale node on x A^T: scaling, 0 while merged */
	int64_t in, out, r;
	double alpha;
	float scaling;
	bool nf4;                        /* the base weight is 4-bit */
};

/* A 4-bit base weight (--lora-quantize-base=nf4): its three tensors, and
 * while merged the f32 weight that stands in for the codes. */
struct nf4_weight {
	struct fw_tensor *w, *qabsmax, *stats;
	void *codes;                     /* w's q4 data while merged */
	float *dense;                    /* the dequantized weight (+ the update) while merged */
};

struct lora {
	const struct fw_host *host;
	const struct fw_options *opts;
	int64_t r;
	double alpha;
	float dropout;
	bool rslora, gaussian, auto_targets, all_linear, merged, nf4;
	enum bias_mode bias;
	char *text;                      /* the list options, split in place */
	struct pattern *targets, *ranks, *alphas, *saves;
	int n_targets, n_ranks, n_alphas, n_saves;
	bool auto_saves;                 /* --lora-modules-to-save=auto */

	struct fw_ctx *ctx;              /* the model being built */
	struct lora_layer *layers;
	int n_layers, cap_layers;
	char (*linears)[FW_NAME_MAX];    /* every routed linear layer, for messages */
	int n_linears, cap_linears;
	struct nf4_weight *quant;        /* the 4-bit base weights */
	int n_quant, cap_quant;
};

/* PEFT's default targets per model family: GPT-2; Llama; BERT; T5. */
static const char *const auto_names[] = { "c_attn", "q_proj", "v_proj", "query", "value",
					  "q", "v" };
/* Output heads, which all-linear leaves alone (PEFT: the output embedding). */
static const char *const head_names[] = { "lm_head", "output", "head", "score", "classifier" };

static const char *last_part(const char *name)
{
	const char *dot = strrchr(name, '.');
	return dot ? dot + 1 : name;
}

/* PEFT's list matching: the whole name or a dotted suffix of it ("c_attn"
 * matches "h.3.attn.c_attn"); with *, ? or [ a glob over the whole name. */
static bool match(const char *pat, const char *name)
{
	if (strpbrk(pat, "*?["))
		return fnmatch(pat, name, 0) == 0;
	size_t n = strlen(name), m = strlen(pat);
	return !strcmp(name, pat) || (n > m && name[n - m - 1] == '.' && !strcmp(name + n - m, pat));
}

static bool is_head(const char *name)
{
	for (size_t i = 0; i < sizeof(head_names) / sizeof(head_names[0]); i++)
		if (!strcmp(last_part(name), head_names[i]))
			return true;
	return false;
}

static bool targeted(struct lora *l, const char *name)
{
	if (l->all_linear)
		return !is_head(name);
	if (l->auto_targets) {
		for (size_t i = 0; i < sizeof(auto_names) / sizeof(auto_names[0]); i++)
			if (!strcmp(last_part(name), auto_names[i]))
				return true;
		return false;
	}
	bool hit = false;
	for (int i = 0; i < l->n_targets; i++)
		if (match(l->targets[i].key, name))
			hit = l->targets[i].matched = true;
	return hit;
}

static struct fw_tensor *ctx_fail(const struct lora *l, struct fw_ctx *ctx, struct fw_err *err)
{
	const struct fw_err *ce = l->host->ctx_err(ctx);
	l->host->errorf(err, ce->status ? ce->status : FW_ERR_INTERNAL, "peft/lora: %s", ce->msg);
	return NULL;
}

/* --- option lists ---------------------------------------------------------------- */

/* Splits a comma-separated option value (copied into dst) into entries;
 * with values, each entry is KEY=NUMBER. */
static enum fw_status parse_list(struct lora *l, const char *opt, char *dst,
				 struct pattern **out, int *n, bool values, bool is_rank,
				 struct fw_err *err)
{
	const struct fw_host *h = l->host;
	int cap = 1;
	for (const char *s = dst; *s; s++)
		cap += *s == ',';
	*out = h->malloc(sizeof(**out) * (size_t)cap);
	if (!*out)
		return h->errorf(err, FW_ERR_NOMEM, "peft/lora: out of memory");
	*n = 0;
	char *save = NULL;
	for (char *tok = strtok_r(dst, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ')
			tok++;
		char *end = tok + strlen(tok);
		while (end > tok && end[-1] == ' ')
			*--end = '\0';
		if (!*tok)
			continue;
		struct pattern *p = &(*out)[(*n)++];
		*p = (struct pattern){ .key = tok };
		if (!values)
			continue;
		char *eq = strchr(tok, '=');
		if (!eq || eq == tok)
			return h->errorf(err, FW_ERR_INVALID,
					 "peft/lora: --%s: '%s' is not NAME=%s (e.g. c_fc=%s)", opt,
					 tok, is_rank ? "RANK" : "ALPHA", is_rank ? "4" : "16");
		*eq = '\0';
		char *vend;
		p->value = strtod(eq + 1, &vend);
		if (vend == eq + 1 || *vend || !isfinite(p->value) || p->value <= 0 ||
		    (is_rank && (p->value != floor(p->value) || p->value > 65536)))
			return h->errorf(err, FW_ERR_INVALID,
					 "peft/lora: --%s: '%s' for '%s' is not a %s", opt, eq + 1,
					 tok, is_rank ? "rank (an integer 1..65536)" :
					 "positive number");
	}
	return FW_OK;
}

/* --- hooks ----------------------------------------------------------------------- */

static void free_dense(struct lora *l)
{
	for (int i = 0; i < l->n_quant; i++)
		if (l->quant[i].dense) {
			l->host->free(l->quant[i].dense);
			l->quant[i].dense = NULL;
		}
}

static void forget_model(struct lora *l)
{
	free_dense(l);             /* the old model's tensors are not touched */
	l->n_quant = 0;
	l->n_layers = 0;
	l->n_linears = 0;
	l->merged = false;
	for (int i = 0; i < l->n_targets; i++)
		l->targets[i].matched = false;
	for (int i = 0; i < l->n_ranks; i++)
		l->ranks[i].matched = false;
	for (int i = 0; i < l->n_alphas; i++)
		l->alphas[i].matched = false;
}

/* --lora-quantize-base=nf4: the arch's f32 weight becomes the q4 codes of
 * an NF4 weight (fw/quant.h) with its two statistics tensors, filled when
 * the weights load (quantized there from an f32/bf16 file); the layer is
 * the fused dequantize-matmul, plus the bias. */
static struct fw_tensor *nf4_base(struct lora *l, struct fw_model *m, const char *name,
				  struct fw_tensor *x, struct fw_tensor *w, struct fw_tensor *bias,
				  struct fw_err *err)
{
	const struct fw_host *h = l->host;
	char an[FW_NAME_MAX + 16], sn[FW_NAME_MAX + 16];
	if (w->ndim != 2 || w->dtype != FW_F32 || w->data || !(w->flags & FW_FLAG_PARAM)) {
		h->errorf(err, FW_ERR_UNSUPPORTED, "peft/lora: %s: --lora-quantize-base=nf4 needs "
			  "an unallocated 2-D f32 weight parameter, not %s with %d dimensions",
			  name, fw_dtype_name(w->dtype), w->ndim);
		return NULL;
	}
	snprintf(an, sizeof(an), "%s%s", w->name, FW_NF4_ABSMAX_SUFFIX);
	snprintf(sn, sizeof(sn), "%s%s", w->name, FW_NF4_STATS_SUFFIX);
	if (strlen(sn) >= FW_NAME_MAX) {
		h->errorf(err, FW_ERR_INVALID, "peft/lora: %s: name too long for its 4-bit "
			  "statistics", name);
		return NULL;
	}
	int64_t n = fw_nelem(w);
	if (fw_param_set_trainable(m->ctx, w, false) != FW_OK)
		return ctx_fail(l, m->ctx, err);
	w->dtype = FW_Q4;
	struct fw_tensor *qa = h->param(m->ctx, an, FW_Q4, 1,
					(int64_t[]){ 2 * fw_nf4_n_blocks(n) }, false);
	struct fw_tensor *st = h->param(m->ctx, sn, FW_F32, 1, (int64_t[]){ fw_nf4_n_stats(n) },
					false);
	if (!qa || !st)
		return ctx_fail(l, m->ctx, err);
	if (!peft_grow(h, (void **)&l->quant, l->n_quant, &l->cap_quant, sizeof(*l->quant))) {
		h->errorf(err, FW_ERR_NOMEM, "peft/lora: out of memory");
		return NULL;
	}
	l->quant[l->n_quant++] = (struct nf4_weight){ .w = w, .qabsmax = qa, .stats = st };
	struct fw_tensor *y = fw_nf4_linear(m->ctx, x, w, qa, st);
	if (y && bias)
		y = h->add(m->ctx, y, bias);
	return y ? y : ctx_fail(l, m->ctx, err);
}

static struct fw_tensor *lora_wrap_linear(void *state, struct fw_model *m, const char *name,
					  struct fw_tensor *x, struct fw_tensor *w,
					  struct fw_tensor *bias, struct fw_err *err)
{
	struct lora *l = state;
	const struct fw_host *h = l->host;
	struct fw_ctx *ctx = m->ctx;
	char an[FW_NAME_MAX + 16], bn[FW_NAME_MAX + 16];

	if (peft_new_model(l->ctx, ctx, l->n_linears, l->n_linears ? l->linears[0] : "", name)) {
		forget_model(l);
		l->ctx = ctx;
	}
	if (!peft_grow(h, (void **)&l->linears, l->n_linears, &l->cap_linears, FW_NAME_MAX)) {
		h->errorf(err, FW_ERR_NOMEM, "peft/lora: out of memory");
		return NULL;
	}
	snprintf(l->linears[l->n_linears++], FW_NAME_MAX, "%s", name);
	struct fw_tensor *base = NULL;             /* QLoRA: the 4-bit base layer */
	if (l->nf4 && !is_head(name) && !(base = nf4_base(l, m, name, x, w, bias, err)))
		return NULL;
	if (!targeted(l, name))
		return base;
	if (w->ndim != 2 || (w->dtype != FW_F32 && !base)) {
		h->errorf(err, FW_ERR_UNSUPPORTED,
			  "peft/lora: %s: the base weight is %s with %d dimensions; LoRA needs a "
			  "2-D f32 weight", name, fw_dtype_name(w->dtype), w->ndim);
		return NULL;
	}
	int64_t out = w->ne[0], in = w->ne[1], r = l->r;
	double alpha = l->alpha;
	for (int i = 0; i < l->n_ranks; i++)
		if (match(l->ranks[i].key, name)) {
			r = (int64_t)l->ranks[i].value;
			l->ranks[i].matched = true;
			break;
		}
	for (int i = 0; i < l->n_alphas; i++)
		if (match(l->alphas[i].key, name)) {
			alpha = l->alphas[i].value;
			l->alphas[i].matched = true;
			break;
		}
	snprintf(an, sizeof(an), "%s.lora_A.weight", name);
	snprintf(bn, sizeof(bn), "%s.lora_B.weight", name);
	if (strlen(bn) >= FW_NAME_MAX) {
		h->errorf(err, FW_ERR_INVALID, "peft/lora: %s: name too long for its adapter tensors",
			  name);
		return NULL;
	}
	if (!peft_grow(h, (void **)&l->layers, l->n_layers, &l->cap_layers, sizeof(*l->layers))) {
		h->errorf(err, FW_ERR_NOMEM, "peft/lora: out of memory");
		return NULL;
	}
	struct fw_tensor *a = h->param(ctx, an, FW_F32, 2, (int64_t[]){ r, in }, true);
	struct fw_tensor *b = h->param(ctx, bn, FW_F32, 2, (int64_t[]){ out, r }, true);
	if (!a || !b)
		return ctx_fail(l, ctx, err);
	if (l->gaussian)
		h->init_normal(m, a, 1.0f / (float)r);                 /* PEFT "gaussian" */
	else
		fw_param_set_init(a, FW_INIT_UNIFORM, (float)(1.0 / sqrt((double)in)));
	h->init_const(m, b, 0.0f);
	float scaling = (float)(l->rslora ? alpha / sqrt((double)r) : alpha / (double)r);

	struct fw_tensor *y = base ? base : fw_linear(ctx, x, w, bias);   /* the base layer */
	struct fw_tensor *xd = x;
	if (l->dropout > 0.0f)
		xd = h->dropout(ctx, x, l->dropout, fw_hash_str(name, m->seed ^ 0x4c6f5241ull));
	struct fw_tensor *u = h->matmul(ctx, xd, a, false, true);      /* (..., r) */
	struct fw_tensor *gate = h->scale(ctx, u, scaling);
	struct fw_tensor *d = h->matmul(ctx, gate, b, false, true);    /* (..., out) */
	y = h->add(ctx, y, d);
	if (!y)
		return ctx_fail(l, ctx, err);
	struct lora_layer *ly = &l->layers[l->n_layers++];
	*ly = (struct lora_layer){ .w = w, .bias = bias, .a = a, .b = b, .gate = gate,
				   .in = in, .out = out, .r = r, .alpha = alpha,
				   .scaling = scaling, .nf4 = base != NULL };
	snprintf(ly->name, sizeof(ly->name), "%s", name);
	return y;
}

/* "h.0.attn.c_attn, h.0.attn.c_proj, h.1..." as "h.N.attn.c_attn, ...". */
static void linear_summary(const struct lora *l, char *out, size_t len)
{
	size_t n = 0;
	char seen[32][FW_NAME_MAX];
	int n_seen = 0;
	out[0] = '\0';
	for (int i = 0; i < l->n_linears; i++) {
		char g[FW_NAME_MAX];
		size_t k = 0;
		for (const char *s = l->linears[i]; *s && k + 2 < sizeof(g);) {
			const char *e = s;
			while (*e >= '0' && *e <= '9')
				e++;
			if (e > s && (!*e || *e == '.') && (s == l->linears[i] || s[-1] == '.')) {
				g[k++] = 'N';
				s = e;
			} else {
				g[k++] = *s++;
			}
		}
		g[k] = '\0';
		bool dup = false;
		for (int j = 0; j < n_seen && !dup; j++)
			dup = !strcmp(seen[j], g);
		if (dup)
			continue;
		if (n_seen < 32)
			snprintf(seen[n_seen++], FW_NAME_MAX, "%s", g);
		if (n + strlen(g) + 8 >= len) {
			snprintf(out + n, len - n, ", ...");
			return;
		}
		n += (size_t)snprintf(out + n, len - n, "%s%s", n ? ", " : "", g);
	}
	if (!n)
		snprintf(out, len, "none (the arch routes no linear layer through the host)");
}

/* A target or pattern entry that matched nothing: name what exists. */
static enum fw_status unmatched(const struct lora *l, const char *opt, const char *key,
				bool adapted_only, struct fw_err *err)
{
	char list[320] = "";
	const char *names[64];
	int n = 0;
	if (adapted_only) {
		size_t k = 0;
		for (int i = 0; i < l->n_layers && k + 8 < sizeof(list); i++) {
			if (n < 64)
				names[n++] = l->layers[i].name;
			k += (size_t)snprintf(list + k, sizeof(list) - k, "%s%s", i ? ", " : "",
					      l->layers[i].name);
		}
		if (k >= sizeof(list) - 8)
			snprintf(list + sizeof(list) - 8, 8, ", ...");
	} else {
		for (int i = 0; i < l->n_linears && n < 64; i++)
			names[n++] = last_part(l->linears[i]);
		linear_summary(l, list, sizeof(list));
	}
	const char *near = fw_nearest_name(adapted_only ? key : last_part(key), names, n);
	return l->host->errorf(err, FW_ERR_INVALID,
			       "peft/lora: --%s: '%s' matches no %s%s%s%s; %s: %s", opt, key,
			       adapted_only ? "adapted layer" : "linear layer",
			       near ? " (did you mean '" : "", near ? near : "", near ? "'?)" : "",
			       adapted_only ? "adapted layers" : "linear layers", list);
}

static bool is_own(const struct lora *l, const struct fw_tensor *t)
{
	for (int i = 0; i < l->n_layers; i++)
		if (l->layers[i].a == t || l->layers[i].b == t)
			return true;
	return false;
}

/* Base biases the adapter trains and carries (--lora-bias). */
static bool carried_bias(const struct lora *l, const struct fw_tensor *t)
{
	if (l->bias == BIAS_ALL) {
		size_t n = strlen(t->name);
		return n >= 5 && !strcmp(t->name + n - 5, ".bias");
	}
	if (l->bias == BIAS_LORA_ONLY)
		for (int i = 0; i < l->n_layers; i++)
			if (l->layers[i].bias == t)
				return true;
	return false;
}

/* A parameter of a module that trains fully next to the adapter (PEFT's
 * modules_to_save): its module (the name without ".weight" / ".bias") or a
 * module above it matches, as PEFT wraps a whole module (RoBERTa's
 * classifier holds dense and out_proj). auto is what PEFT adds for SEQ_CLS
 * and TOKEN_CLS: classifier and score. */
static bool saved_module(const struct lora *l, const struct fw_tensor *t)
{
	char mod[FW_NAME_MAX];
	bool hit = false;
	if (l->auto_saves)
		return peft_head_name(t->name);
	snprintf(mod, sizeof(mod), "%s", t->name);
	for (char *dot; !hit && (dot = strrchr(mod, '.'));) {
		*dot = '\0';
		for (int i = 0; i < l->n_saves; i++)
			if (match(l->saves[i].key, mod))
				hit = l->saves[i].matched = true;
	}
	return hit;
}

/* In the adapter file: A, B, the carried biases and the saved modules. */
static bool carried(const struct lora *l, const struct fw_tensor *t)
{
	return (t->flags & FW_FLAG_PARAM) &&
	       (is_own(l, t) || carried_bias(l, t) || saved_module(l, t));
}

static enum fw_status lora_freeze(void *state, struct fw_model *m, struct fw_err *err)
{
	struct lora *l = state;
	const struct fw_host *h = l->host;
	if (l->ctx != m->ctx) {         /* the arch routed no linear layer to us */
		forget_model(l);
		l->ctx = m->ctx;
	}
	for (int i = 0; i < l->n_targets; i++)
		if (!l->targets[i].matched)
			return unmatched(l, "lora-target-modules", l->targets[i].key, false,
					 err);
	if (l->n_layers == 0) {
		char list[320];
		linear_summary(l, list, sizeof(list));
		return h->errorf(err, FW_ERR_INVALID,
				 "peft/lora: no linear layer matches %s; set --lora-target-modules; "
				 "linear layers: %s", l->all_linear ? "all-linear (output heads "
				 "excluded)" : "the default targets (c_attn; q_proj,v_proj; "
				 "query,value; q,v)", list);
	}
	for (int i = 0; i < l->n_ranks; i++)
		if (!l->ranks[i].matched)
			return unmatched(l, "lora-rank-pattern", l->ranks[i].key, true, err);
	for (int i = 0; i < l->n_alphas; i++)
		if (!l->alphas[i].matched)
			return unmatched(l, "lora-alpha-pattern", l->alphas[i].key, true, err);
	int64_t n_train = 0;
	for (int i = 0; i < fw_ctx_n_tensors(m->ctx); i++) {
		struct fw_tensor *t = fw_ctx_tensor(m->ctx, i);
		if (!(t->flags & FW_FLAG_PARAM))
			continue;
		bool on = carried(l, t);
		if (fw_param_set_trainable(m->ctx, t, on) != FW_OK)
			return h->errorf(err, FW_ERR_INVALID, "peft/lora: %s",
					 h->ctx_err(m->ctx)->msg);
		n_train += on ? fw_nelem(t) : 0;
	}
	for (int i = 0; i < l->n_saves; i++)
		if (!l->saves[i].matched)
			return h->errorf(err, FW_ERR_INVALID, "peft/lora: --lora-modules-to-save: '%s' "
					 "matches no module with parameters", l->saves[i].key);
	const struct lora_layer *f = &l->layers[0];
	h->log(FW_LOG_DEBUG, "peft/lora: %d linear layers adapted (first %s: r %lld, scaling %g); "
	       "%lld trainable values", l->n_layers, f->name, (long long)f->r, (double)f->scaling,
	       (long long)n_train);
	return FW_OK;
}

/* --- adapter files ------------------------------------------------------------------ */

/* A growing text buffer in host memory. */
/* The base model: every parameter the adapter does not carry, in model order. */
static int base_tensors(const struct lora *l, struct fw_ctx *ctx, struct fw_tensor **out)
{
	int n = 0;
	for (int i = 0; i < fw_ctx_n_tensors(ctx); i++) {
		struct fw_tensor *t = fw_ctx_tensor(ctx, i);
		if ((t->flags & FW_FLAG_PARAM) && !carried(l, t)) {
			if (out)
				out[n] = t;
			n++;
		}
	}
	return n;
}

static void describe_base(struct peft_text *list, uint64_t *hash, struct fw_tensor **base, int n)
{
	uint64_t hh = LORA_HASH_SEED;
	for (int i = 0; i < n; i++) {
		char shape[96];
		lora_shape_text(base[i], shape, sizeof(shape));
		peft_put(list, "%s\t%s\t%s\n", base[i]->name, fw_dtype_name(base[i]->dtype), shape);
		hh = lora_hash_tensor(hh, base[i]);
	}
	*hash = hh;
}

static enum fw_status lora_save(void *state, struct fw_model *m, const char *path,
				struct fw_err *err)
{
	struct lora *l = state;
	const struct fw_host *h = l->host;
	struct fw_ctx *ctx = m->ctx;
	if (l->merged)
		return h->errorf(err, FW_ERR_INVALID,
				 "peft/lora: %s: cannot save an adapter while it is merged into the "
				 "weights (unmerge first)", path);
	if (l->ctx != ctx || l->n_layers == 0)
		return h->errorf(err, FW_ERR_INVALID, "peft/lora: %s: no adapter was built", path);
	int nt = fw_ctx_n_tensors(ctx);
	struct fw_tensor **own = h->malloc(sizeof(*own) * (size_t)(nt + 1));
	struct fw_tensor **base = h->malloc(sizeof(*base) * (size_t)(nt + 1));
	struct peft_text cfg = { .h = h }, mods = { .h = h }, list = { .h = h };
	enum fw_status st;
	if (!own || !base) {
		st = h->errorf(err, FW_ERR_NOMEM, "peft/lora: out of memory");
		goto out;
	}
	int n_own = 0;
	for (int i = 0; i < nt; i++)
		if (carried(l, fw_ctx_tensor(ctx, i)))
			own[n_own++] = fw_ctx_tensor(ctx, i);
	int n_base = base_tensors(l, ctx, base);

	peft_put(&cfg, "[%s]\n", LORA_KIND);
	for (int i = 0; i < fw_options_count(l->opts); i++)
		peft_put(&cfg, "%s = %s\n", fw_options_def(l->opts, i)->name,
		    fw_options_value(l->opts, i));
	for (int i = 0; i < l->n_layers; i++) {
		const struct lora_layer *ly = &l->layers[i];
		peft_put(&mods, "%s\t%lld\t%lld\t%lld\t%.9g\t%.9g\n", ly->name, (long long)ly->in,
		    (long long)ly->out, (long long)ly->r, ly->alpha, (double)ly->scaling);
	}
	uint64_t hash;
	describe_base(&list, &hash, base, n_base);
	peft_put(&list, "%s", "");        /* an empty base still gets a string */
	char hex[24];
	snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)hash);
	if (cfg.oom || mods.oom || list.oom) {
		st = h->errorf(err, FW_ERR_NOMEM, "peft/lora: out of memory");
		goto out;
	}
	struct fw_h5_attr attrs[] = {
		{ "fw_adapter", LORA_KIND }, { "fw_adapter_version", LORA_FORMAT_VERSION },
		{ "config", cfg.s }, { "lora_modules", mods.s }, { "base_tensors", list.s },
		{ "base_hash", hex },
	};
	st = fw_h5_save(path, own, n_own, attrs, (int)(sizeof(attrs) / sizeof(attrs[0])), err);
out:
	peft_text_free(&cfg);
	peft_text_free(&mods);
	peft_text_free(&list);
	if (own)
		h->free(own);
	if (base)
		h->free(base);
	return st;
}


static int bool_value(const char *v)
{
	static const char *const yes[] = { "true", "1", "yes", "on" }, *const no[] = {
		"false", "0", "no", "off" };
	for (int i = 0; i < 4; i++) {
		if (!strcmp(v, yes[i]))
			return 1;
		if (!strcmp(v, no[i]))
			return 0;
	}
	return -1;
}

static bool same_value(const struct fw_option_def *d, const char *a, const char *b)
{
	if (d->type == FW_OPT_INT || d->type == FW_OPT_FLOAT) {
		char *ea, *eb;
		double x = strtod(a, &ea), y = strtod(b, &eb);
		return !*ea && !*eb && fabs(x - y) <= 1e-12 * fmax(fabs(x), fabs(y));
	}
	if (d->type == FW_OPT_BOOL)
		return bool_value(a) == bool_value(b);
	return !strcmp(a, b);
}

/* Options that decide the adapter's shapes and scaling, compared by value;
 * targets and patterns are compared by their effect (check_modules), so
 * "auto" and "c_attn" name the same GPT-2 adapter. */
static const char *const structural[] = { "lora-r", "lora-alpha", "lora-use-rslora",
					  "lora-bias" };

static enum fw_status check_config(const struct lora *l, const char *path, const char *cfg,
				   struct fw_err *err)
{
	for (size_t k = 0; k < sizeof(structural) / sizeof(structural[0]); k++) {
		for (int i = 0; i < fw_options_count(l->opts); i++) {
			const struct fw_option_def *d = fw_options_def(l->opts, i);
			if (strcmp(d->name, structural[k]))
				continue;
			char v[512];
			if (!peft_ini_get(cfg, LORA_KIND, d->name, v, sizeof(v)))
				snprintf(v, sizeof(v), "%s", d->def ? d->def : "");
			const char *here = fw_options_value(l->opts, i);
			if (!same_value(d, v, here))
				return l->host->errorf(err, FW_ERR_INVALID,
						       "peft/lora: %s: the adapter has %s = %s, this "
						       "run %s; leave --%s unset to use the adapter's",
						       path, d->name, v, here, d->name);
		}
	}
	return FW_OK;
}

static enum fw_status check_modules(const struct lora *l, const char *path, const char *mods,
				    struct fw_err *err)
{
	const struct fw_host *h = l->host;
	struct lora_module_entry e;
	bool ok;
	int i = 0;
	for (const char *s = mods, *next; ; s = next, i++) {
		next = lora_module_next(s, &e, &ok);
		if (!ok)
			return h->errorf(err, FW_ERR_FORMAT,
					 "peft/lora: %s: attribute 'lora_modules' is malformed "
					 "(line %d)", path, i + 1);
		if (!next)
			break;
		if (i >= l->n_layers)
			return h->errorf(err, FW_ERR_SHAPE,
					 "peft/lora: %s: the adapter adapts %s, which this model does "
					 "not (it adapts %d layers)", path, e.name, l->n_layers);
		const struct lora_layer *ly = &l->layers[i];
		if (strcmp(e.name, ly->name) || e.in != ly->in || e.out != ly->out || e.r != ly->r ||
		    fabs(e.scaling - ly->scaling) > 1e-6 * fabs((double)ly->scaling))
			return h->errorf(err, FW_ERR_SHAPE,
					 "peft/lora: %s: adapted layer %d is %s (%lld -> %lld, r %lld, "
					 "scaling %g) in the adapter but %s (%lld -> %lld, r %lld, "
					 "scaling %g) here", path, i, e.name, (long long)e.in,
					 (long long)e.out, (long long)e.r, e.scaling, ly->name,
					 (long long)ly->in, (long long)ly->out, (long long)ly->r,
					 (double)ly->scaling);
	}
	if (i < l->n_layers)
		return h->errorf(err, FW_ERR_SHAPE,
				 "peft/lora: %s: the adapter adapts %d layers, this model %d (first "
				 "missing: %s)", path, i, l->n_layers, l->layers[i].name);
	return FW_OK;
}

/* The adapter's base list against this model, by name: every tensor there,
 * with its dtype and shape; with exact, no other base parameter here; the
 * same data. */
static enum fw_status check_base(const struct lora *l, struct fw_ctx *ctx, const char *path,
				 const char *list, const char *want_hash, bool exact,
				 struct fw_err *err)
{
	const struct fw_host *h = l->host;
	struct lora_base_entry e;
	bool ok;
	int n_list = 0;
	uint64_t hh = LORA_HASH_SEED;
	for (const char *s = list, *next; ; s = next, n_list++) {
		next = lora_base_next(s, &e, &ok);
		if (!ok)
			return h->errorf(err, FW_ERR_FORMAT,
					 "peft/lora: %s: attribute 'base_tensors' is malformed "
					 "(line %d)", path, n_list + 1);
		if (!next)
			break;
		struct fw_tensor *t = fw_ctx_find(ctx, e.name);
		if (!t || !(t->flags & FW_FLAG_PARAM) || is_own(l, t))
			return h->errorf(err, FW_ERR_SHAPE,
					 "peft/lora: %s: the adapter was trained on a different base "
					 "model: its base has %s, this model has no such parameter",
					 path, e.name);
		char shape[96], fshape[96];
		struct fw_tensor tmp = { .ndim = e.ndim };
		memcpy(tmp.ne, e.ne, sizeof(tmp.ne));
		lora_shape_text(&tmp, fshape, sizeof(fshape));
		lora_shape_text(t, shape, sizeof(shape));
		if (strcmp(e.dtype, fw_dtype_name(t->dtype)) || strcmp(shape, fshape))
			return h->errorf(err, FW_ERR_SHAPE,
					 "peft/lora: %s: the adapter was trained on a different base "
					 "model: its base has %s %s [%s] where this model has %s [%s]",
					 path, e.name, e.dtype, fshape, fw_dtype_name(t->dtype), shape);
		if (!t->data)
			return h->errorf(err, FW_ERR_INVALID, "peft/lora: %s: weights are not "
					 "allocated", e.name);
		hh = lora_hash_tensor(hh, t);
	}
	/* A base parameter the adapter's base did not have (an untied head...). */
	for (int i = 0; exact && i < fw_ctx_n_tensors(ctx); i++) {
		struct fw_tensor *t = fw_ctx_tensor(ctx, i);
		if (!(t->flags & FW_FLAG_PARAM) || carried(l, t))
			continue;
		size_t n = strlen(t->name);
		bool listed = false;
		for (const char *s = list; s && *s && !listed;) {
			listed = !strncmp(s, t->name, n) && s[n] == '\t';
			s = strchr(s, '\n');
			s = s ? s + 1 : NULL;
		}
		if (!listed)
			return h->errorf(err, FW_ERR_SHAPE,
					 "peft/lora: %s: the adapter was trained on a different base "
					 "model: this model has %s, its base does not", path, t->name);
	}
	char hex[24];
	snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)hh);
	if (strcmp(hex, want_hash))
		return h->errorf(err, FW_ERR_INVALID,
				 "peft/lora: %s: the adapter was trained on a different base model: "
				 "same tensors, other weights (base fingerprint %s here, %.20s in the "
				 "adapter); load the base it was trained on with --load", path, hex,
				 want_hash);
	return FW_OK;
}

static enum fw_status read_attr(const struct lora *l, const char *path, const char *name,
				char **v, struct fw_err *err)
{
	struct fw_err e = { 0 };
	enum fw_status st = fw_h5_read_attr(path, name, v, &e);
	if (st == FW_ERR_NOT_FOUND)
		return l->host->errorf(err, FW_ERR_FORMAT,
				       "peft/lora: %s: attribute '%s' missing: not a complete "
				       "peft/lora adapter file", path, name);
	if (st != FW_OK)
		return l->host->errorf(err, st, "peft/lora: %s", e.msg);
	return FW_OK;
}

static enum fw_status lora_load(void *state, struct fw_model *m, const char *path,
				struct fw_err *err)
{
	struct lora *l = state;
	const struct fw_host *h = l->host;
	struct fw_ctx *ctx = m->ctx;
	char *kind = NULL, *cfg = NULL, *mods = NULL, *list = NULL, *hash = NULL;
	struct fw_tensor **own = NULL;
	struct fw_h5_entry *ents = NULL;
	int n_ents = 0;
	enum fw_status st;
	struct fw_err e = { 0 };

	if (l->merged)
		return h->errorf(err, FW_ERR_INVALID,
				 "peft/lora: %s: cannot load an adapter while one is merged", path);
	if (l->ctx != ctx || l->n_layers == 0)
		return h->errorf(err, FW_ERR_INVALID, "peft/lora: %s: no adapter was built", path);
	st = fw_h5_read_attr(path, "fw_adapter", &kind, &e);
	if (st == FW_ERR_NOT_FOUND) {
		st = h->errorf(err, FW_ERR_FORMAT,
			       "peft/lora: %s: not an adapter file (no 'fw_adapter' attribute); a "
			       "model or checkpoint goes to --load", path);
		goto out;
	}
	if (st != FW_OK) {
		st = h->errorf(err, st, "peft/lora: %s", e.msg);
		goto out;
	}
	if (strcmp(kind, LORA_KIND)) {
		st = h->errorf(err, FW_ERR_INVALID, "peft/lora: %s: an adapter of '%.60s', not %s",
			       path, kind, LORA_KIND);
		goto out;
	}
	if ((st = read_attr(l, path, "config", &cfg, err)) != FW_OK ||
	    (st = read_attr(l, path, "lora_modules", &mods, err)) != FW_OK ||
	    (st = read_attr(l, path, "base_tensors", &list, err)) != FW_OK ||
	    (st = read_attr(l, path, "base_hash", &hash, err)) != FW_OK ||
	    (st = check_config(l, path, cfg, err)) != FW_OK ||
	    (st = check_base(l, ctx, path, list, hash, true, err)) != FW_OK ||
	    (st = check_modules(l, path, mods, err)) != FW_OK)
		goto out;

	int nt = fw_ctx_n_tensors(ctx), n_own = 0;
	own = h->malloc(sizeof(*own) * (size_t)(nt + 1));
	if (!own) {
		st = h->errorf(err, FW_ERR_NOMEM, "peft/lora: out of memory");
		goto out;
	}
	for (int i = 0; i < nt; i++)
		if (carried(l, fw_ctx_tensor(ctx, i)))
			own[n_own++] = fw_ctx_tensor(ctx, i);
	/* Tensors this model would not take are an error, not silently ignored. */
	if ((st = fw_h5_list(path, &ents, &n_ents, &e)) != FW_OK) {
		st = h->errorf(err, st, "peft/lora: %s", e.msg);
		goto out;
	}
	for (int i = 0; i < n_ents; i++) {
		bool known = false;
		for (int k = 0; k < n_own && !known; k++)
			known = !strcmp(own[k]->name, ents[i].name);
		if (!known) {
			st = h->errorf(err, FW_ERR_SHAPE,
				       "peft/lora: %s: tensor '%s' is not a parameter of this adapter",
				       path, ents[i].name);
			goto out;
		}
	}
	if ((st = fw_h5_load(path, own, n_own, &e)) != FW_OK) {
		st = h->errorf(err, st, "peft/lora: %s", e.msg);
		goto out;
	}
out:
	fw_free(kind);
	fw_free(cfg);
	fw_free(mods);
	fw_free(list);
	fw_free(hash);
	fw_free(ents);
	if (own)
		h->free(own);
	return st;
}

/* The adapter's base against model m, whatever the file's rank or targets. */
static enum fw_status lora_check(void *state, struct fw_model *m, const char *path,
				 struct fw_err *err)
{
	struct lora *l = state;
	char *list = NULL, *hash = NULL;
	enum fw_status st;
	if ((st = peft_check_kind(l->host, LORA_KIND, path, err)) == FW_OK &&
	    (st = read_attr(l, path, "base_tensors", &list, err)) == FW_OK &&
	    (st = read_attr(l, path, "base_hash", &hash, err)) == FW_OK)
		st = check_base(l, m->ctx, path, list, hash, false, err);
	fw_free(list);
	fw_free(hash);
	return st;
}

/* --- merging ---------------------------------------------------------------------------- */

struct fold {
	const struct lora_layer *ly;
	float sign;
};

/* Rows [lo, hi) of W += sign * scaling * B A. */
static void fold_rows(void *arg, int64_t lo, int64_t hi)
{
	const struct fold *f = arg;
	const struct lora_layer *ly = f->ly;
	const float *A = fw_f32(ly->a), *B = fw_f32(ly->b);
	float *W = fw_f32(ly->w), s = f->sign * ly->scaling;
	for (int64_t o = lo; o < hi; o++) {
		float *w = W + o * ly->in;
		for (int64_t k = 0; k < ly->r; k++) {
			float c = s * B[o * ly->r + k];
			const float *a = A + k * ly->in;
			if (c != 0.0f)
				for (int64_t i = 0; i < ly->in; i++)
					w[i] += c * a[i];
		}
	}
}

struct dequant {
	const struct nf4_weight *q;
	int64_t in;
};

static void dequant_rows(void *arg, int64_t lo, int64_t hi)
{
	const struct dequant *d = arg;
	const struct nf4_weight *q = d->q;
	fw_nf4_dequantize(q->codes, q->qabsmax->data, fw_f32(q->stats), fw_nelem(q->w),
			  lo * d->in, (hi - lo) * d->in, q->dense + lo * d->in);
}

/* QLoRA's merge: every 4-bit weight becomes its f32 dequantization (the
 * codes stay aside; nf4_linear multiplies an f32 weight as it is), so the
 * update folds in at full precision; unmerging puts the codes back, which
 * restores the 4-bit base exactly. */
static enum fw_status nf4_dense(struct lora *l, bool merging, struct fw_err *err)
{
	const struct fw_host *h = l->host;
	for (int i = 0; merging && i < l->n_quant; i++) {
		struct nf4_weight *q = &l->quant[i];
		if (!q->w->data || !q->qabsmax->data || !q->stats->data)
			return h->errorf(err, FW_ERR_INVALID, "peft/lora: %s: weights are not "
					 "allocated", q->w->name);
		if (!(q->dense = h->malloc(sizeof(float) * (size_t)fw_nelem(q->w)))) {
			free_dense(l);
			return h->errorf(err, FW_ERR_NOMEM, "peft/lora: out of memory for the "
					 "dequantized %s", q->w->name);
		}
	}
	for (int i = 0; i < l->n_quant; i++) {
		struct nf4_weight *q = &l->quant[i];
		if (merging) {
			q->codes = q->w->data;
			struct dequant d = { q, q->w->ne[1] };
			h->parallel_for(q->w->ne[0], dequant_rows, &d);
			q->w->data = q->dense;
			q->w->dtype = FW_F32;
		} else {
			q->w->data = q->codes;
			q->w->dtype = FW_Q4;
		}
	}
	if (!merging)
		free_dense(l);
	return FW_OK;
}

static enum fw_status fold_all(struct lora *l, struct fw_model *m, float sign, bool merging,
			       struct fw_err *err)
{
	if (l->ctx != m->ctx || l->n_layers == 0)
		return l->host->errorf(err, FW_ERR_INVALID, "peft/lora: no adapter was built");
	if (l->merged == merging)
		return l->host->errorf(err, FW_ERR_INVALID, "peft/lora: the adapter is %s",
				       merging ? "already merged" : "not merged");
	for (int i = 0; i < l->n_layers; i++) {
		const struct lora_layer *ly = &l->layers[i];
		if (!ly->w->data || !ly->a->data || !ly->b->data)
			return l->host->errorf(err, FW_ERR_INVALID,
					       "peft/lora: %s: weights are not allocated", ly->name);
	}
	enum fw_status st;
	if (l->nf4 && merging && (st = nf4_dense(l, true, err)) != FW_OK)
		return st;
	for (int i = 0; i < l->n_layers; i++) {
		struct fold f = { &l->layers[i], sign };
		if (merging || !l->layers[i].nf4)    /* a 4-bit weight unmerges by its codes */
			l->host->parallel_for(l->layers[i].out, fold_rows, &f);
		fw_tensor_mark_written(l->layers[i].w);
		l->layers[i].gate->params[0].f = merging ? 0.0f : l->layers[i].scaling;
	}
	if (l->nf4 && !merging)
		nf4_dense(l, false, err);
	l->merged = merging;
	return FW_OK;
}

static enum fw_status lora_merge(void *state, struct fw_model *m, struct fw_err *err)
{
	return fold_all(state, m, 1.0f, true, err);
}

static enum fw_status lora_unmerge(void *state, struct fw_model *m, struct fw_err *err)
{
	return fold_all(state, m, -1.0f, false, err);
}

/* --- life cycle --------------------------------------------------------------------------- */

/* --- PEFT export ----------------------------------------------------------------------------- */

/* One lora_modules line per adapted layer, parsed (h->malloc'd array). */
static enum fw_status read_modules(const struct fw_host *h, const char *path, const char *text,
				   struct lora_module_entry **mods, int *n, struct fw_err *err)
{
	int cap = 1;
	for (const char *s = text; *s; s++)
		cap += *s == '\n';
	*n = 0;
	if (!(*mods = h->malloc(sizeof(**mods) * (size_t)cap)))
		return h->errorf(err, FW_ERR_NOMEM, "peft/lora: out of memory");
	bool ok;
	for (const char *s = text, *next; *n < cap; s = next) {
		next = lora_module_next(s, &(*mods)[*n], &ok);
		if (!ok)
			return h->errorf(err, FW_ERR_FORMAT, "peft/lora: %s: attribute 'lora_modules' "
					 "is malformed (line %d)", path, *n + 1);
		if (!next)
			break;
		if (!isfinite((*mods)[*n].scaling))
			return h->errorf(err, FW_ERR_FORMAT, "peft/lora: %s: %s: scaling %g", path,
					 (*mods)[*n].name, (*mods)[*n].scaling);
		(*n)++;
	}
	if (*n == 0)
		return h->errorf(err, FW_ERR_FORMAT, "peft/lora: %s: the adapter adapts no layer",
				 path);
	return FW_OK;
}

/* The factor NAME.lora_WHICH.weight of the file, f32 (d0, d1). */
static enum fw_status factor(const struct fw_host *h, const char *path,
			     const struct peft_tensors *ts, const char *mod, const char *which,
			     int64_t d0, int64_t d1, struct fw_err *err)
{
	char name[FW_NAME_MAX + 32];
	snprintf(name, sizeof(name), "%s.lora_%s.weight", mod, which);
	const struct fw_tensor *t = peft_tensors_find(ts, name);
	if (!t)
		return h->errorf(err, FW_ERR_FORMAT, "peft/lora: %s: tensor '%s' missing", path,
				 name);
	if (t->ndim != 2 || t->ne[0] != d0 || t->ne[1] != d1)
		return h->errorf(err, FW_ERR_SHAPE, "peft/lora: %s: tensor '%s' is [%lld, %lld], "
				 "expected [%lld, %lld]", path, name, (long long)t->ne[0],
				 (long long)(t->ndim > 1 ? t->ne[1] : 0), (long long)d0,
				 (long long)d1);
	return FW_OK;
}

/* target_modules: a layer kind adapted everywhere in the base is named by
 * its last part ("c_attn"), a partial choice by the layers' Hugging Face
 * paths; with the layers whose rank or alpha differ from the options' in
 * the patterns. */
static void export_targets(const struct lora_module_entry *mods, int n, const char *base_list,
			   const char *task, int64_t r, double alpha, struct peft_text *tg,
			   struct peft_text *rp, struct peft_text *ap)
{
	for (int i = 0; i < n; i++) {
		char nm[2 * FW_NAME_MAX];
		peft_hf_param_name(task, mods[i].name, nm, sizeof(nm));
		const char *dot = strrchr(nm, '.');
		const char *last = dot ? dot + 1 : nm;
		int adapted = 0, total = 0;
		for (int k = 0; k < n; k++) {
			const char *d2 = strrchr(mods[k].name, '.');
			adapted += !strcmp(d2 ? d2 + 1 : mods[k].name, last);
		}
		struct lora_base_entry e;
		bool ok;
		for (const char *s = base_list, *next; (next = lora_base_next(s, &e, &ok)); s = next) {
			size_t el = strlen(e.name), ll = strlen(last);
			total += e.ndim == 2 && el > ll + 8 && !strcmp(e.name + el - 7, ".weight") &&
				 !strncmp(e.name + el - 7 - ll, last, ll) && e.name[el - 8 - ll] == '.';
		}
		const char *entry = adapted == total ? last : nm;
		char quoted[2 * FW_NAME_MAX + 4];
		snprintf(quoted, sizeof(quoted), "\"%s\"", entry);
		if (!tg->s || !strstr(tg->s, quoted)) {
			peft_put(tg, "%s", tg->n ? ", " : "");
			peft_put_json(tg, entry);
		}
		if (mods[i].r != r) {
			peft_put(rp, "%s", rp->n ? ", " : "");
			peft_put_json(rp, nm);
			peft_put(rp, ": %lld", (long long)mods[i].r);
		}
		if (fabs(mods[i].alpha - alpha) > 1e-9 * fabs(alpha)) {
			peft_put(ap, "%s", ap->n ? ", " : "");
			peft_put_json(ap, nm);
			peft_put(ap, ": %.17g", mods[i].alpha);
		}
	}
	peft_put(tg, "%s", "");
	peft_put(rp, "%s", "");
	peft_put(ap, "%s", "");
}

static bool is_factor(const char *name)
{
	size_t l = strlen(name);
	return l > 14 && (!strcmp(name + l - 14, ".lora_A.weight") ||
			  !strcmp(name + l - 14, ".lora_B.weight"));
}

/* A LoRA adapter file in PEFT's layout: the factors under PEFT's keys (a
 * layer's trained bias is its base_layer.bias), adapter_config.json with
 * the options the adapter was trained with. */
static enum fw_status lora_export(const struct fw_host *h, const char *adapter, const char *dir,
				  const char *base_model, struct fw_err *err)
{
	char *cfg_ini = NULL, *mods_text = NULL, *base_list = NULL;
	struct lora_module_entry *mods = NULL;
	struct peft_tensors ts = { .h = h };
	struct peft_text cfg = { .h = h }, tg = { .h = h }, rp = { .h = h }, ap = { .h = h };
	struct peft_text saves = { .h = h };
	const struct fw_tensor **tp = NULL;
	char **keys = NULL;
	int n_mods = 0;
	enum fw_status st;
	char path[4300];
	if ((st = peft_check_kind(h, LORA_KIND, adapter, err)) != FW_OK ||
	    (st = peft_attr(h, LORA_KIND, adapter, "config", &cfg_ini, err)) != FW_OK ||
	    (st = peft_attr(h, LORA_KIND, adapter, "lora_modules", &mods_text, err)) != FW_OK ||
	    (st = peft_attr(h, LORA_KIND, adapter, "base_tensors", &base_list, err)) != FW_OK ||
	    (st = read_modules(h, adapter, mods_text, &mods, &n_mods, err)) != FW_OK ||
	    (st = peft_tensors_read(h, LORA_KIND, adapter, &ts, err)) != FW_OK)
		goto out;
	for (int i = 0; i < n_mods; i++)
		if ((st = factor(h, adapter, &ts, mods[i].name, "A", mods[i].r, mods[i].in,
				 err)) != FW_OK ||
		    (st = factor(h, adapter, &ts, mods[i].name, "B", mods[i].out, mods[i].r,
				 err)) != FW_OK)
			goto out;
	char r_s[32] = "8", alpha_s[32] = "8", drop_s[32] = "0", bias_s[32] = "none";
	char rs_s[16] = "false", init_s[32] = "kaiming";
	peft_ini_get(cfg_ini, LORA_KIND, "lora-r", r_s, sizeof(r_s));
	peft_ini_get(cfg_ini, LORA_KIND, "lora-alpha", alpha_s, sizeof(alpha_s));
	peft_ini_get(cfg_ini, LORA_KIND, "lora-dropout", drop_s, sizeof(drop_s));
	peft_ini_get(cfg_ini, LORA_KIND, "lora-bias", bias_s, sizeof(bias_s));
	peft_ini_get(cfg_ini, LORA_KIND, "lora-use-rslora", rs_s, sizeof(rs_s));
	peft_ini_get(cfg_ini, LORA_KIND, "lora-init", init_s, sizeof(init_s));
	int64_t r = strtoll(r_s, NULL, 10);
	double alpha = strtod(alpha_s, NULL), drop = strtod(drop_s, NULL);
	const char *task = peft_encoder_task(base_list, &ts);

	tp = h->malloc(sizeof(*tp) * (size_t)(ts.n + 1));
	keys = h->malloc(sizeof(*keys) * (size_t)(ts.n + 1));
	if (!tp || !keys) {
		st = h->errorf(err, FW_ERR_NOMEM, "peft/lora: out of memory");
		goto out;
	}
	memset(keys, 0, sizeof(*keys) * (size_t)(ts.n + 1));
	for (int i = 0; i < ts.n; i++) {
		const char *tn = ts.t[i].name;
		char hf[2 * FW_NAME_MAX], mod[FW_NAME_MAX];
		size_t l = strlen(tn), kl;
		bool adapted_bias = false;
		if (l > 5 && !strcmp(tn + l - 5, ".bias")) {
			snprintf(mod, sizeof(mod), "%.*s", (int)(l - 5), tn);
			for (int k = 0; k < n_mods && !adapted_bias; k++)
				adapted_bias = !strcmp(mods[k].name, mod);
		}
		peft_hf_param_name(task, adapted_bias ? mod : tn, hf, sizeof(hf));
		if (l > 7 && !strcmp(tn + l - 7, ".weight") && !is_factor(tn)) {
			/* a module trained in full next to the adapter (a classifier) */
			char m2[FW_NAME_MAX], hm[2 * FW_NAME_MAX];
			snprintf(m2, sizeof(m2), "%.*s", (int)(l - 7), tn);
			peft_hf_param_name(task, m2, hm, sizeof(hm));
			peft_put(&saves, "%s", saves.n ? ", " : "");
			peft_put_json(&saves, hm);
		}
		kl = strlen(hf) + 40;
		if (!(keys[i] = h->malloc(kl))) {
			st = h->errorf(err, FW_ERR_NOMEM, "peft/lora: out of memory");
			goto out;
		}
		snprintf(keys[i], kl, "base_model.model.%s%s", hf,
			 adapted_bias ? ".base_layer.bias" : "");
		tp[i] = &ts.t[i];
	}
	export_targets(mods, n_mods, base_list, task, r, alpha, &tg, &rp, &ap);
	peft_put(&cfg, "{\n  \"alpha_pattern\": {%s},\n  \"base_model_name_or_path\": ", ap.s);
	if (base_model)
		peft_put_json(&cfg, base_model);
	else
		peft_put(&cfg, "null");
	peft_put(&cfg, ",\n  \"bias\": ");
	peft_put_json(&cfg, bias_s);
	peft_put(&saves, "%s", "");
	peft_put(&cfg, ",\n  \"fan_in_fan_out\": %s,\n  \"inference_mode\": true,\n"
		 "  \"init_lora_weights\": %s,\n  \"layers_pattern\": null,\n"
		 "  \"layers_to_transform\": null,\n", task ? "false" : "true",
		 strcmp(init_s, "gaussian") ? "true" : "\"gaussian\"");
	if (alpha == floor(alpha) && fabs(alpha) < 1e15)
		peft_put(&cfg, "  \"lora_alpha\": %lld,\n", (long long)alpha);
	else
		peft_put(&cfg, "  \"lora_alpha\": %.17g,\n", alpha);
	peft_put(&cfg, "  \"lora_bias\": false,\n  \"lora_dropout\": %.17g%s,\n"
		 "  \"modules_to_save\": %s%s%s,\n  \"peft_type\": \"LORA\",\n  \"r\": %lld,\n"
		 "  \"rank_pattern\": {%s},\n  \"revision\": null,\n  \"target_modules\": [%s],\n"
		 "  \"task_type\": %s,\n  \"use_dora\": false,\n  \"use_rslora\": %s\n}\n",
		 drop, drop == floor(drop) ? ".0" : "", saves.n ? "[" : "null",
		 saves.n ? saves.s : "", saves.n ? "]" : "", (long long)r, rp.s, tg.s,
		 peft_task_json(task),
		 !strcmp(rs_s, "true") ? "true" : "false");
	if (cfg.oom || tg.oom || rp.oom || ap.oom || saves.oom) {
		st = h->errorf(err, FW_ERR_NOMEM, "peft/lora: out of memory");
		goto out;
	}
	if ((st = peft_join(h, LORA_KIND, path, sizeof(path), dir, "adapter_model.safetensors",
			    err)) != FW_OK ||
	    (st = peft_write_safetensors(h, LORA_KIND, path, tp, (const char *const *)keys, ts.n,
					 err)) != FW_OK ||
	    (st = peft_join(h, LORA_KIND, path, sizeof(path), dir, "adapter_config.json",
			    err)) != FW_OK)
		goto out;
	st = peft_write_file(h, LORA_KIND, path, cfg.s, cfg.n, NULL, NULL, 0, err);
out:
	for (int i = 0; keys && i < ts.n; i++)
		if (keys[i])
			h->free(keys[i]);
	if (keys)
		h->free(keys);
	if (tp)
		h->free(tp);
	if (mods)
		h->free(mods);
	peft_text_free(&cfg);
	peft_text_free(&tg);
	peft_text_free(&rp);
	peft_text_free(&ap);
	peft_text_free(&saves);
	peft_tensors_free(&ts);
	fw_free(cfg_ini);
	fw_free(mods_text);
	fw_free(base_list);
	return st;
}

static void lora_fini(void *state)
{
	struct lora *l = state;
	if (!l)
		return;
	const struct fw_host *h = l->host;
	free_dense(l);
	void *arrays[] = { l->text, l->targets, l->ranks, l->alphas, l->saves, l->layers,
			   l->linears, l->quant };
	for (size_t i = 0; i < sizeof(arrays) / sizeof(arrays[0]); i++)
		if (arrays[i])
			h->free(arrays[i]);
	h->free(l);
}

static enum fw_status lora_init(const struct fw_host *host, const struct fw_options *opts,
				void **state, struct fw_err *err)
{
	struct lora *l = host->malloc(sizeof(*l));
	if (!l)
		return host->errorf(err, FW_ERR_NOMEM, "peft/lora: out of memory");
	const char *bias = fw_opt_str(opts, "lora-bias");
	*l = (struct lora){
		.host = host, .opts = opts, .r = fw_opt_int(opts, "lora-r"),
		.alpha = fw_opt_float(opts, "lora-alpha"),
		.dropout = (float)fw_opt_float(opts, "lora-dropout"),
		.rslora = fw_opt_bool(opts, "lora-use-rslora"),
		.nf4 = !strcmp(fw_opt_str(opts, "lora-quantize-base"), "nf4"),
		.gaussian = !strcmp(fw_opt_str(opts, "lora-init"), "gaussian"),
		.bias = !strcmp(bias, "all") ? BIAS_ALL :
			!strcmp(bias, "lora_only") ? BIAS_LORA_ONLY : BIAS_NONE,
	};
	enum fw_status st = FW_OK;
	const char *tg = fw_opt_str(opts, "lora-target-modules");
	const char *rp = fw_opt_str(opts, "lora-rank-pattern");
	const char *ap = fw_opt_str(opts, "lora-alpha-pattern");
	const char *ms = fw_opt_str(opts, "lora-modules-to-save");
	size_t lt = strlen(tg) + 1, lr = strlen(rp) + 1, la = strlen(ap) + 1, lm = strlen(ms) + 1;
	if (!(l->alpha > 0)) {
		st = host->errorf(err, FW_ERR_INVALID, "peft/lora: --lora-alpha must be > 0, not %g",
				  l->alpha);
		goto fail;
	}
	l->text = host->malloc(lt + lr + la + lm);
	if (!l->text) {
		st = host->errorf(err, FW_ERR_NOMEM, "peft/lora: out of memory");
		goto fail;
	}
	memcpy(l->text, tg, lt);
	memcpy(l->text + lt, rp, lr);
	memcpy(l->text + lt + lr, ap, la);
	memcpy(l->text + lt + lr + la, ms, lm);
	if ((st = parse_list(l, "lora-target-modules", l->text, &l->targets, &l->n_targets,
			     false, false, err)) != FW_OK ||
	    (st = parse_list(l, "lora-rank-pattern", l->text + lt, &l->ranks, &l->n_ranks, true,
			     true, err)) != FW_OK ||
	    (st = parse_list(l, "lora-alpha-pattern", l->text + lt + lr, &l->alphas,
			     &l->n_alphas, true, false, err)) != FW_OK ||
	    (st = parse_list(l, "lora-modules-to-save", l->text + lt + lr + la, &l->saves,
			     &l->n_saves, false, false, err)) != FW_OK)
		goto fail;
	if (l->n_saves == 1 && !strcmp(l->saves[0].key, "auto")) {
		l->auto_saves = true;
		l->n_saves = 0;
	}
	for (int i = 0; i < l->n_targets; i++) {
		const char *k = l->targets[i].key;
		if (strcmp(k, "all-linear") && strcmp(k, "auto"))
			continue;
		if (l->n_targets > 1) {
			st = host->errorf(err, FW_ERR_INVALID,
					  "peft/lora: --lora-target-modules: '%s' stands alone, "
					  "without other names", k);
			goto fail;
		}
		l->all_linear = !strcmp(k, "all-linear");
		l->auto_targets = !l->all_linear;
		l->n_targets = 0;
	}
	if (!l->all_linear && !l->auto_targets && l->n_targets == 0) {
		st = host->errorf(err, FW_ERR_INVALID,
				  "peft/lora: --lora-target-modules is empty (use auto, all-linear, "
				  "or names such as c_attn,c_proj)");
		goto fail;
	}
	*state = l;
	return FW_OK;
fail:
	lora_fini(l);
	return st;
}

static const struct fw_peft_i iface = {
	.size = sizeof(struct fw_peft_i),
	.wrap_linear = lora_wrap_linear,
	.freeze = lora_freeze,
	.save = lora_save,
	.load = lora_load,
	.merge = lora_merge,
	.unmerge = lora_unmerge,
	.export_peft = lora_export,
	.check = lora_check,
};

static const char *const bias_choices[] = { "none", "all", "lora_only", NULL };
static const char *const init_choices[] = { "kaiming", "gaussian", NULL };
static const char *const quant_choices[] = { "none", "nf4", NULL };

static const struct fw_option_def options[] = {
	{ "lora-r", FW_OPT_INT, "8", 1, 65536, NULL, "rank of the adapters (PEFT r)" },
	{ "lora-alpha", FW_OPT_FLOAT, "8", 0, 1e6, NULL,
	  "scaling numerator: scaling = alpha / r (PEFT lora_alpha)" },
	{ "lora-dropout", FW_OPT_FLOAT, "0.0", 0, 0.99, NULL,
	  "dropout on the adapter's input while training (PEFT lora_dropout)" },
	{ "lora-target-modules", FW_OPT_STRING, "auto", 0, -1, NULL,
	  "comma-separated layer names or dotted suffixes (c_attn, h.0.mlp.c_fc), globs "
	  "(h.*.attn.*), all-linear (every linear but the output head), or auto (PEFT's "
	  "defaults: c_attn for GPT-2; q_proj,v_proj; query,value; q,v)" },
	{ "lora-rank-pattern", FW_OPT_STRING, "", 0, -1, NULL,
	  "per-layer ranks, NAME=R,... matched like the targets; the first match wins "
	  "(PEFT rank_pattern)" },
	{ "lora-alpha-pattern", FW_OPT_STRING, "", 0, -1, NULL,
	  "per-layer alphas, NAME=ALPHA,... (PEFT alpha_pattern)" },
	{ "lora-modules-to-save", FW_OPT_STRING, "auto", 0, -1, NULL,
	  "modules that train fully and are saved with the adapter (PEFT modules_to_save), "
	  "matched like the targets; auto: classifier and score where the model has them "
	  "(what PEFT adds for SEQ_CLS and TOKEN_CLS); empty: none" },
	{ "lora-bias", FW_OPT_CHOICE, "none", 0, -1, bias_choices,
	  "biases trained and saved with the adapter: none, all (every .bias), lora_only "
	  "(those of the adapted layers)" },
	{ "lora-init", FW_OPT_CHOICE, "kaiming", 0, -1, init_choices,
	  "init of A: kaiming (uniform, a = sqrt(5), PEFT's default) or gaussian "
	  "(N(0, 1/r^2)); B starts at 0" },
	{ "lora-use-rslora", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "rank-stabilised LoRA: scaling = alpha / sqrt(r)" },
	{ "lora-quantize-base", FW_OPT_CHOICE, "none", 0, -1, quant_choices,
	  "QLoRA: nf4 stores every linear weight of the base but the output head as 4-bit "
	  "NF4 (blocks of 64, double-quantized absmax), quantized when the weights load" },
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_PEFT,
	.name = LORA_KIND,
	.version = "1.0.0",
	.description = "LoRA adapters on linear layers (PEFT semantics): frozen base, "
		       "adapter files, merge/unmerge",
	.options = options,
	.n_options = (int)(sizeof(options) / sizeof(options[0])),
	.iface = &iface,
	.init = lora_init,
	.fini = lora_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
