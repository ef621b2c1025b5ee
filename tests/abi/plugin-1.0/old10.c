/* optim/old10 - a plugin as a plugin author wrote it for fw ABI 1.0, compiled
 * against the frozen 1.0 headers in tests/abi/fw-1.0 (not today's), so that
 * tests/test_plugins.c checks plugin.h's promise: a plugin built for an older
 * minor loads and runs in today's fw.
 *
 * SGD with momentum (torch.optim.SGD, dampening 0): buf = g on step 1, else
 * buf = momentum * buf + g; p -= lr * (buf + wd * p). It uses what a 1.0
 * plugin could: options, the host table (malloc, free, errorf, log,
 * parallel_for) and libfw's public API (fw_opt_float, fw_nelem). */
#include "fw/plugin.h"

#if FW_ABI_MAJOR != 1 || FW_ABI_MINOR != 0
#error "old10.c must be built against the frozen ABI 1.0 headers"
#endif

struct old10 {
	const struct fw_host *host;
	float momentum;
};

struct update {
	float *p, *g, *buf;
	float lr, wd, mom;
	bool first;
};

static void update_range(void *arg, int64_t begin, int64_t end)
{
	const struct update *u = arg;
	for (int64_t i = begin; i < end; i++) {
		float b = u->first ? u->g[i] : u->mom * u->buf[i] + u->g[i];
		u->buf[i] = b;
		u->p[i] -= u->lr * (b + u->wd * u->p[i]);
	}
}

static enum fw_status old10_step(void *state, const struct fw_optim_group *groups,
				 int n_groups, int64_t step, struct fw_err *err)
{
	const struct old10 *s = state;
	if (step < 1)
		return s->host->errorf(err, FW_ERR_INVALID, "optim/old10: step %lld < 1",
				       (long long)step);
	for (int gi = 0; gi < n_groups; gi++) {
		for (int i = 0; i < groups[gi].n_params; i++) {
			struct fw_tensor *p = groups[gi].params[i];
			struct update u = {
				.p = p->data, .g = p->grad->data, .buf = groups[gi].state[i][0],
				.lr = groups[gi].lr, .wd = groups[gi].weight_decay,
				.mom = s->momentum, .first = step == 1,
			};
			s->host->parallel_for(fw_nelem(p), update_range, &u);
		}
	}
	return FW_OK;
}

static enum fw_status old10_init(const struct fw_host *host, const struct fw_options *opts,
				 void **state, struct fw_err *err)
{
	/* A 1.0 plugin may rely on the 1.0 table and nothing after it. */
	if (host->size < sizeof(struct fw_host) || host->abi_major != 1)
		return FW_ERR_UNSUPPORTED;
	struct old10 *s = host->malloc(sizeof(*s));
	if (!s)
		return host->errorf(err, FW_ERR_NOMEM, "optim/old10: out of memory");
	s->host = host;
	s->momentum = (float)fw_opt_float(opts, "old10-momentum");
	host->log(FW_LOG_DEBUG, "optim/old10: momentum %g, host ABI %u.%u", s->momentum,
		  host->abi_major, host->abi_minor);
	*state = s;
	return FW_OK;
}

static void old10_fini(void *state)
{
	struct old10 *s = state;
	if (s)
		s->host->free(s);
}

static const struct fw_option_def options[] = {
	{ "old10-momentum", FW_OPT_FLOAT, "0.5", 0, 1, NULL, "momentum factor" },
};

static const char *const state_names[] = { "momentum_buffer" };

static const struct fw_optim_i iface = {
	.size = sizeof(struct fw_optim_i),
	.n_state = 1,
	.state_names = state_names,
	.step = old10_step,
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_OPTIM,
	.name = "optim/old10",
	.version = "1.0.0",
	.description = "SGD with momentum, built against the frozen ABI 1.0 headers",
	.options = options,
	.n_options = 1,
	.iface = &iface,
	.init = old10_init,
	.fini = old10_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void);
FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
