/* optim/sgd - stochastic gradient descent with momentum and Nesterov.
 * Matches torch.optim.SGD (dampening 0): g += wd * p (coupled L2 decay);
 * buf = g on the first step, else buf = momentum * buf + g;
 * g = g + momentum * buf (Nesterov) or buf; p -= lr * g. */
#include "fw/plugin.h"

struct sgd {
	const struct fw_host *host;
	float momentum;
	bool nesterov;
};

struct update {
	float *p, *g, *buf;
	float lr, wd, mom;
	bool nesterov, first;
	float grad_scale;                 /* 1: g as is */
	void *half;                       /* the kept half copy to write, or NULL */
	enum fw_dtype half_dtype;
};

static void update_block(void *arg, int64_t at, const float *g, int64_t n)
{
	const struct update *u = arg;
	float *p = u->p + at, *buf = u->buf + at;
	for (int64_t i = 0; i < n; i++) {
		float gi = g[i] + u->wd * p[i];
		if (u->mom != 0.0f) {
			float b = u->first ? gi : u->mom * buf[i] + gi;
			buf[i] = b;
			gi = u->nesterov ? gi + u->mom * b : b;
		}
		p[i] -= u->lr * gi;
	}
}

static void update_range(void *arg, int64_t begin, int64_t end)
{
	const struct update *u = arg;
	fw_optim_fused_range(u->g, u->grad_scale, u->p, u->half, u->half_dtype, begin, end,
			     update_block, arg);
}

/* One update; f NULL: the plain step (gradients as they are, no copies). */
static enum fw_status sgd_update(const struct sgd *s, const struct fw_optim_group *groups,
				 int n_groups, int64_t step, const struct fw_optim_fused *f)
{
	for (int gi = 0; gi < n_groups; gi++) {
		for (int i = 0; i < groups[gi].n_params; i++) {
			struct fw_tensor *p = groups[gi].params[i];
			struct update u = {
				.p = p->data, .g = p->grad->data, .buf = groups[gi].state[i][0],
				.lr = groups[gi].lr, .wd = groups[gi].weight_decay,
				.mom = s->momentum, .nesterov = s->nesterov, .first = step == 1,
				.grad_scale = f ? f->grad_scale : 1.0f,
				.half = f && f->half ? f->half[gi][i] : NULL,
				.half_dtype = f ? f->half_dtype : FW_F32,
			};
			s->host->parallel_for(fw_nelem(p), update_range, &u);
		}
	}
	return FW_OK;
}

static enum fw_status sgd_step(void *state, const struct fw_optim_group *groups, int n_groups,
			       int64_t step, struct fw_err *err)
{
	return sgd_update(state, groups, n_groups, step, NULL);
}

static enum fw_status sgd_step_fused(void *state, const struct fw_optim_group *groups,
				     int n_groups, const struct fw_optim_fused *f,
				     struct fw_err *err)
{
	return sgd_update(state, groups, n_groups, f->step, f);
}

static enum fw_status sgd_init(const struct fw_host *host, const struct fw_options *opts,
			       void **state, struct fw_err *err)
{
	struct sgd *s = host->malloc(sizeof(*s));
	if (!s)
		return host->errorf(err, FW_ERR_NOMEM, "optim/sgd: out of memory");
	s->host = host;
	s->momentum = (float)fw_opt_float(opts, "sgd-momentum");
	s->nesterov = fw_opt_bool(opts, "nesterov");
	if (s->nesterov && s->momentum == 0.0f) {
		host->free(s);
		return host->errorf(err, FW_ERR_INVALID,
				    "optim/sgd: --nesterov needs --sgd-momentum > 0");
	}
	*state = s;
	return FW_OK;
}

static void sgd_fini(void *state)
{
	struct sgd *s = state;
	if (s)
		s->host->free(s);
}

static const char *const state_names[] = { "momentum_buffer" };

static const struct fw_optim_i iface = {
	.size = sizeof(struct fw_optim_i),
	.n_state = 1,
	.state_names = state_names,
	.step = sgd_step,
	.step_fused = sgd_step_fused,
};

static const struct fw_option_def options[] = {
	{ "sgd-momentum", FW_OPT_FLOAT, "0.9", 0, 1, NULL, "momentum factor (0 = plain SGD)" },
	{ "nesterov", FW_OPT_BOOL, "false", 0, -1, NULL, "Nesterov momentum" },
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_OPTIM,
	.name = "optim/sgd",
	.version = "1.0.0",
	.description = "SGD with momentum and Nesterov (torch.optim.SGD semantics)",
	.options = options,
	.n_options = 2,
	.iface = &iface,
	.init = sgd_init,
	.fini = sgd_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
