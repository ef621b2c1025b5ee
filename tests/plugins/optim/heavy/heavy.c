/* optim/heavy - plain SGD whose init makes many host allocations (a state,
 * a name copy, --heavy-buffers scratch buffers of growing size, a table of
 * them) and undoes all of them when one fails: the plugin the allocation
 * failure tests drive through every failing call. --heavy-fail-step=N makes
 * step N fail after updating the first parameter only (a half-done step),
 * for the tests of what fwrun keeps when a plugin's step fails. */
#include <string.h>

#include "fw/plugin.h"

struct heavy {
	const struct fw_host *host;
	int64_t fail_step;
	char *label;
	void **bufs;
	int n_bufs;
};

static void heavy_free(struct heavy *s)
{
	const struct fw_host *h = s->host;
	for (int i = 0; s->bufs && i < s->n_bufs; i++)
		h->free(s->bufs[i]);
	h->free(s->bufs);
	h->free(s->label);
	h->free(s);
}

static enum fw_status heavy_init(const struct fw_host *host, const struct fw_options *opts,
				 void **state, struct fw_err *err)
{
	static const char label[] = "optim/heavy scratch";
	int n = (int)fw_opt_int(opts, "heavy-buffers");
	struct heavy *s = host->malloc(sizeof(*s));
	if (!s)
		goto nomem;
	memset(s, 0, sizeof(*s));
	s->host = host;
	s->fail_step = fw_opt_int(opts, "heavy-fail-step");
	s->label = host->malloc(sizeof(label));
	if (!s->label)
		goto undo;
	memcpy(s->label, label, sizeof(label));
	s->bufs = host->malloc(sizeof(void *) * (size_t)n);
	if (!s->bufs)
		goto undo;
	for (; s->n_bufs < n; s->n_bufs++) {
		size_t bytes = (size_t)64 << s->n_bufs % 8;
		s->bufs[s->n_bufs] = host->malloc(bytes);
		if (!s->bufs[s->n_bufs])
			goto undo;
		memset(s->bufs[s->n_bufs], 0xa5, bytes);
	}
	*state = s;
	return FW_OK;
undo:
	heavy_free(s);
nomem:
	return host->errorf(err, FW_ERR_NOMEM, "optim/heavy: out of memory");
}

static void heavy_fini(void *state)
{
	if (state)
		heavy_free(state);
}

struct update {
	float *p, *g;
	float lr;
};

static void update_range(void *arg, int64_t begin, int64_t end)
{
	const struct update *u = arg;
	for (int64_t i = begin; i < end; i++)
		u->p[i] -= u->lr * u->g[i];
}

static enum fw_status heavy_step(void *state, const struct fw_optim_group *groups, int n_groups,
				 int64_t step, struct fw_err *err)
{
	const struct heavy *s = state;
	for (int gi = 0; gi < n_groups; gi++) {
		for (int i = 0; i < groups[gi].n_params; i++) {
			struct fw_tensor *p = groups[gi].params[i];
			struct update u = { p->data, p->grad->data, groups[gi].lr };
			s->host->parallel_for(fw_nelem(p), update_range, &u);
			if (step == s->fail_step)
				return s->host->errorf(err, FW_ERR_INTERNAL,
						       "step %lld fails on purpose "
						       "(--heavy-fail-step)", (long long)step);
		}
	}
	return FW_OK;
}

static const struct fw_optim_i iface = {
	.size = sizeof(struct fw_optim_i),
	.n_state = 0,
	.step = heavy_step,
};

static const struct fw_option_def options[] = {
	{ "heavy-buffers", FW_OPT_INT, "6", 1, 64, NULL, "scratch buffers init allocates" },
	{ "heavy-fail-step", FW_OPT_INT, "0", 0, 1e9, NULL,
	  "step that fails half-done (0: none)" },
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_OPTIM,
	.name = "optim/heavy",
	.version = "0.0.1",
	.description = "plain SGD with an allocation-heavy init (allocation failure tests)",
	.options = options,
	.n_options = 2,
	.iface = &iface,
	.init = heavy_init,
	.fini = heavy_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
