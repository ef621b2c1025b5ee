/* peft/probe - a test PEFT plugin that implements every peft hook and counts
 * the calls, so tests can see the host call them.
 *
 * Linear layers whose name contains one of --probe-target (comma-separated)
 * get a mini LoRA: y = x w^T + b + scale * (x A^T) B^T with trainable
 * A (r, in) ~ N(0, 0.02^2) and B (out, r) = 0, named NAME.probe_A/.probe_B.
 * freeze() freezes every other parameter. The other hooks only count, except
 * extra_loss (1e-3 * sum of A^2 with --probe-extra-loss) and after_backward
 * (fails at --probe-fail-step). With --probe-log=FILE the counters are
 * written there as "key value" lines when the plugin is closed. */
#include <stdio.h>
#include <string.h>

#include "fw/plugin.h"

#define MAX_WRAPPED 64

struct probe {
	const struct fw_host *host;
	const struct fw_options *opts;
	int64_t rank;
	float scale;
	struct fw_tensor *own[2 * MAX_WRAPPED];   /* A, B pairs */
	int n_own;
	/* counters */
	int64_t linear, wrapped, embed, kv, freeze, frozen, extra_loss, after_backward;
	int64_t last_step, probe_params, io_calls;
};

/* Does name contain one of the comma-separated targets? */
static bool targeted(const char *targets, const char *name)
{
	const char *t = targets;
	while (*t) {
		const char *end = strchr(t, ',');
		size_t n = end ? (size_t)(end - t) : strlen(t);
		for (const char *s = name; n && *s; s++)
			if (!strncmp(s, t, n))
				return true;
		if (!end)
			break;
		t = end + 1;
	}
	return false;
}

static struct fw_tensor *ctx_fail(const struct fw_host *h, struct fw_ctx *ctx,
				  struct fw_err *err)
{
	const struct fw_err *ce = h->ctx_err(ctx);
	h->errorf(err, ce->status ? ce->status : FW_ERR_INTERNAL, "peft/probe: %s", ce->msg);
	return NULL;
}

static struct fw_tensor *probe_wrap_linear(void *state, struct fw_model *m, const char *name,
					   struct fw_tensor *x, struct fw_tensor *w,
					   struct fw_tensor *bias, struct fw_err *err)
{
	struct probe *p = state;
	const struct fw_host *h = p->host;
	struct fw_ctx *ctx = m->ctx;
	char an[FW_NAME_MAX], bn[FW_NAME_MAX];

	p->linear++;
	if (!targeted(fw_opt_str(p->opts, "probe-target"), name))
		return NULL;
	if (p->n_own == 2 * MAX_WRAPPED) {
		h->errorf(err, FW_ERR_UNSUPPORTED, "peft/probe: more than %d wrapped layers",
			  MAX_WRAPPED);
		return NULL;
	}
	int64_t out = w->ne[0], in = w->ne[1], r = p->rank;
	snprintf(an, sizeof(an), "%s.probe_A", name);
	snprintf(bn, sizeof(bn), "%s.probe_B", name);
	struct fw_tensor *a = h->param(ctx, an, FW_F32, 2, (int64_t[]){ r, in }, true);
	struct fw_tensor *b = h->param(ctx, bn, FW_F32, 2, (int64_t[]){ out, r }, true);
	if (!a || !b)
		return ctx_fail(h, ctx, err);
	h->init_normal(m, a, 0.02f);
	h->init_const(m, b, 0.0f);
	p->own[p->n_own++] = a;
	p->own[p->n_own++] = b;

	struct fw_tensor *y = h->matmul(ctx, x, w, false, true);        /* (..., out) */
	if (bias)
		y = h->add(ctx, y, bias);
	struct fw_tensor *d = h->matmul(ctx, x, a, false, true);        /* (..., r) */
	d = h->matmul(ctx, d, b, false, true);                          /* (..., out) */
	y = h->add(ctx, y, h->scale(ctx, d, p->scale));
	if (!y)
		return ctx_fail(h, ctx, err);
	p->wrapped++;
	p->probe_params += r * in + out * r;
	return y;
}

static struct fw_tensor *probe_wrap_embed(void *state, struct fw_model *m, struct fw_tensor *x,
					  struct fw_err *err)
{
	struct probe *p = state;
	p->embed++;
	return x;
}

static enum fw_status probe_wrap_kv(void *state, struct fw_model *m,
				    const struct fw_attn_spec *spec, struct fw_tensor **k,
				    struct fw_tensor **v, struct fw_err *err)
{
	struct probe *p = state;
	p->kv++;
	return FW_OK;
}

static bool is_own(const struct probe *p, const struct fw_tensor *t)
{
	for (int i = 0; i < p->n_own; i++)
		if (p->own[i] == t)
			return true;
	return false;
}

static enum fw_status probe_freeze(void *state, struct fw_model *m, struct fw_err *err)
{
	struct probe *p = state;
	p->freeze++;
	for (int i = 0; i < fw_ctx_n_tensors(m->ctx); i++) {
		struct fw_tensor *t = fw_ctx_tensor(m->ctx, i);
		if (!(t->flags & FW_FLAG_PARAM) || is_own(p, t))
			continue;
		if (fw_param_set_trainable(m->ctx, t, false) != FW_OK)
			return p->host->errorf(err, FW_ERR_INVALID, "peft/probe: %s",
					       p->host->ctx_err(m->ctx)->msg);
		p->frozen++;
	}
	return FW_OK;
}

static struct fw_tensor *probe_extra_loss(void *state, struct fw_model *m, struct fw_err *err)
{
	struct probe *p = state;
	const struct fw_host *h = p->host;
	struct fw_tensor *sum = NULL;

	p->extra_loss++;
	if (!fw_opt_bool(p->opts, "probe-extra-loss"))
		return NULL;
	for (int i = 0; i < p->n_own; i += 2) {        /* the A matrices */
		struct fw_tensor *a = p->own[i];
		struct fw_tensor *s = h->sum(m->ctx, h->mul(m->ctx, a, a), FW_AXIS_ALL, false);
		sum = sum ? h->add(m->ctx, sum, s) : s;
		if (!sum)
			return ctx_fail(h, m->ctx, err);
	}
	return sum ? h->scale(m->ctx, sum, 1e-3f) : NULL;
}

static enum fw_status probe_after_backward(void *state, struct fw_model *m, int64_t step,
					   struct fw_err *err)
{
	struct probe *p = state;
	p->after_backward++;
	p->last_step = step;
	if (step == fw_opt_int(p->opts, "probe-fail-step"))
		return p->host->errorf(err, FW_ERR_INTERNAL,
				       "peft/probe: failing after step %lld as asked by "
				       "--probe-fail-step", (long long)step);
	return FW_OK;
}

static enum fw_status unsupported(void *state, const char *what, struct fw_err *err)
{
	struct probe *p = state;
	p->io_calls++;
	return p->host->errorf(err, FW_ERR_UNSUPPORTED, "peft/probe: %s is not supported", what);
}

static enum fw_status probe_save(void *state, struct fw_model *m, const char *path,
				 struct fw_err *err)
{
	return unsupported(state, "saving adapters", err);
}

static enum fw_status probe_load(void *state, struct fw_model *m, const char *path,
				 struct fw_err *err)
{
	return unsupported(state, "loading adapters", err);
}

static enum fw_status probe_merge(void *state, struct fw_model *m, struct fw_err *err)
{
	return unsupported(state, "merging", err);
}

static enum fw_status probe_unmerge(void *state, struct fw_model *m, struct fw_err *err)
{
	return unsupported(state, "unmerging", err);
}

static enum fw_status probe_init(const struct fw_host *host, const struct fw_options *opts,
				 void **state, struct fw_err *err)
{
	struct probe *p = host->malloc(sizeof(*p));
	if (!p)
		return host->errorf(err, FW_ERR_NOMEM, "peft/probe: out of memory");
	memset(p, 0, sizeof(*p));
	p->host = host;
	p->opts = opts;
	p->rank = fw_opt_int(opts, "probe-rank");
	p->scale = (float)fw_opt_float(opts, "probe-scale");
	*state = p;
	return FW_OK;
}

static void probe_fini(void *state)
{
	struct probe *p = state;
	if (!p)
		return;
	const char *path = fw_opt_str(p->opts, "probe-log");
	FILE *f = *path ? fopen(path, "w") : NULL;
	if (f) {
		fprintf(f, "linear %lld\nwrapped %lld\nembed %lld\nkv %lld\nfreeze %lld\n"
			"frozen %lld\nextra_loss %lld\nafter_backward %lld\nlast_step %lld\n"
			"probe_params %lld\nio_calls %lld\n",
			(long long)p->linear, (long long)p->wrapped, (long long)p->embed,
			(long long)p->kv, (long long)p->freeze, (long long)p->frozen,
			(long long)p->extra_loss, (long long)p->after_backward,
			(long long)p->last_step, (long long)p->probe_params,
			(long long)p->io_calls);
		fclose(f);
	} else if (*path) {
		p->host->log(FW_LOG_WARN, "peft/probe: cannot write %s", path);
	}
	p->host->free(p);
}

static const struct fw_peft_i iface = {
	.size = sizeof(struct fw_peft_i),
	.wrap_linear = probe_wrap_linear,
	.wrap_embed = probe_wrap_embed,
	.wrap_kv = probe_wrap_kv,
	.freeze = probe_freeze,
	.extra_loss = probe_extra_loss,
	.after_backward = probe_after_backward,
	.save = probe_save,
	.load = probe_load,
	.merge = probe_merge,
	.unmerge = probe_unmerge,
};

static const struct fw_option_def options[] = {
	{ "probe-target", FW_OPT_STRING, "mlp.fc", 0, -1, NULL,
	  "comma-separated substrings of the linear layers to wrap" },
	{ "probe-rank", FW_OPT_INT, "4", 1, 256, NULL, "rank r of the probe adapters" },
	{ "probe-scale", FW_OPT_FLOAT, "1.0", 0, 1000, NULL, "scale of the adapter branch" },
	{ "probe-extra-loss", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "add 1e-3 * sum(A^2) to the loss" },
	{ "probe-fail-step", FW_OPT_INT, "0", 0, 1e12, NULL,
	  "after_backward fails at this step (0 = never)" },
	{ "probe-log", FW_OPT_STRING, "", 0, -1, NULL, "write the hook counters to this file" },
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_PEFT,
	.name = "peft/probe",
	.version = "0.0.1",
	.description = "test PEFT: every hook, call counters, a mini LoRA on targeted layers",
	.options = options,
	.n_options = 6,
	.iface = &iface,
	.init = probe_init,
	.fini = probe_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
