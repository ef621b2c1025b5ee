/* attention.c - one attention plugin, one shape: forward and forward+backward
 * time and memory, as one JSON line (bench/attention.py runs it per plugin
 * and T, interleaved with torch, and prints the table).
 *
 * q, k, v (B, T, H, D) f32 parameters -> attend (causal by default) ->
 * loss = sum(y * r). Times: the median of --iters runs after one warm-up;
 * cpu_ms: the process's CPU time (all threads, user + system) per
 * forward+backward over those runs, steadier than wall time on a shared
 * machine.
 * Memory: the graph's planned activations (values and gradients of every node
 * between q, k, v and the loss) and workspace, from fw_graph_memory; peak
 * RSS of the process.
 *
 *   attention --plugin attention/flash --T 1024 [--B 1] [--H 12] [--D 64]
 *             [--iters 5] [--threads N] [--bidirectional] [--opt name=value]...
 *             [--dtype f32|bf16|f16]
 * --dtype bf16/f16: autocast's graph, q, k, v cast to the half dtype before
 * attend (the cast is in the timed forward, as a projection's half output
 * would be written there).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>

#include "fw/fw.h"
#include "fw/loader.h"

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu_seconds(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(double), cmp);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int main(int argc, char **argv)
{
	const char *plugin = "attention/flash";
	long long B = 1, T = 1024, H = 12, D = 64;
	int iters = 5, threads = 0;
	bool causal = true;
	enum fw_dtype dt = FW_F32;
	const char *opts[16];
	int n_opts = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--plugin") && v)
			plugin = argv[++i];
		else if (!strcmp(a, "--T") && v)
			T = atoll(argv[++i]);
		else if (!strcmp(a, "--B") && v)
			B = atoll(argv[++i]);
		else if (!strcmp(a, "--H") && v)
			H = atoll(argv[++i]);
		else if (!strcmp(a, "--D") && v)
			D = atoll(argv[++i]);
		else if (!strcmp(a, "--iters") && v)
			iters = atoi(argv[++i]);
		else if (!strcmp(a, "--threads") && v)
			threads = atoi(argv[++i]);
		else if (!strcmp(a, "--bidirectional"))
			causal = false;
		else if (!strcmp(a, "--dtype") && v && (!strcmp(v, "f32") || !strcmp(v, "bf16") ||
							!strcmp(v, "f16")))
			dt = !strcmp(argv[++i], "f32") ? FW_F32 : v[0] == 'b' ? FW_BF16 : FW_F16;
		else if (!strcmp(a, "--opt") && v && n_opts < 16)
			opts[n_opts++] = argv[++i];
		else {
			fprintf(stderr, "usage: attention --plugin KIND/NAME --T N [--B N] [--H N] "
				"[--D N] [--iters N] [--threads N] [--bidirectional] "
				"[--opt name=value]... [--dtype f32|bf16|f16]\n");
			return 2;
		}
	}
	if (iters < 1 || iters > 1000 || T < 1 || B < 1 || H < 1 || D < 1) {
		fprintf(stderr, "attention: bad sizes\n");
		return 2;
	}
	if (threads > 0)
		fw_set_num_threads(threads);

	struct fw_err err = { 0 };
	struct fw_loaded *p = NULL;
	if (fw_plugin_open(plugin, FW_KIND_ATTENTION, &p, &err) != FW_OK)
		goto fail;
	for (int i = 0; i < n_opts; i++) {
		char name[128];
		const char *eq = strchr(opts[i], '=');
		if (!eq || eq - opts[i] >= (long)sizeof(name)) {
			fprintf(stderr, "attention: --opt %s: want name=value\n", opts[i]);
			return 2;
		}
		snprintf(name, sizeof(name), "%.*s", (int)(eq - opts[i]), opts[i]);
		if (fw_options_set(p->opts, name, eq + 1, &err) != FW_OK)
			goto fail;
	}
	if (fw_options_resolve(p->opts, &err) != FW_OK || fw_plugin_init(p, NULL, &err) != FW_OK)
		goto fail;

	struct fw_ctx *ctx = fw_ctx_new();
	int64_t shape[4] = { B, T, H, D };
	struct fw_tensor *q = fw_param(ctx, "q", FW_F32, 4, shape, true);
	struct fw_tensor *k = fw_param(ctx, "k", FW_F32, 4, shape, true);
	struct fw_tensor *v = fw_param(ctx, "v", FW_F32, 4, shape, true);
	struct fw_tensor *r = fw_input(ctx, "r", FW_F32, 4, shape);
	struct fw_model m = { .size = sizeof(m), .ctx = ctx, .host = fw_host_table(), .batch = B,
			      .seq_len = T, .training = true };
	struct fw_attn_spec spec = {
		.size = sizeof(spec), .name = "bench.attn", .n_head = (int)H, .n_kv_head = (int)H,
		.head_dim = (int)D, .mask = causal ? FW_MASK_CAUSAL : FW_MASK_BIDIRECTIONAL,
	};
	const struct fw_attention_i *ai = p->desc->iface;
	struct fw_tensor *y = NULL;
	if (dt != FW_F32 && fw_ctx_set_autocast(ctx, dt) != FW_OK)
		goto run_fail;
	if (dt == FW_F32)
		y = ai->attend(p->state, &m, &spec, q, k, v, &err);
	else
		y = ai->attend(p->state, &m, &spec, fw_cast(ctx, q, dt), fw_cast(ctx, k, dt),
			       fw_cast(ctx, v, dt), &err);
	if (!y)
		goto fail;
	struct fw_tensor *loss = fw_sum(ctx, fw_mul(ctx, y, r), FW_AXIS_ALL, false);
	struct fw_graph *g = loss ? fw_graph_new(ctx, &loss, 1,
						 &(struct fw_graph_opts){ .backward = true,
									  .training = true })
				  : NULL;
	if (!g) {
		fprintf(stderr, "attention: %s\n", fw_ctx_err(ctx)->msg);
		return 1;
	}
	int64_t n = B * T * H * D;
	unsigned s = 12345;
	float *xs[4] = { fw_f32(q), fw_f32(k), fw_f32(v), fw_f32(r) };
	for (int t = 0; t < 4; t++)
		for (int64_t i = 0; i < n; i++) {
			s = s * 1664525u + 1013904223u;
			xs[t][i] = (float)(s >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
		}
	double fwd[1000], all[1000], cpu0 = 0;
	for (int it = -1; it < iters; it++) {
		if (it == 0)
			cpu0 = cpu_seconds();
		double t0 = now();
		if (fw_graph_forward(g) != FW_OK)
			goto run_fail;
		double t1 = now();
		fw_graph_zero_grad(g);
		if (fw_graph_backward(g) != FW_OK)
			goto run_fail;
		double t2 = now();
		if (it >= 0) {
			fwd[it] = t1 - t0;
			all[it] = t2 - t0;
		}
	}
	double cpu = (cpu_seconds() - cpu0) / iters;
	struct fw_memory_report mr;
	fw_graph_memory(g, &mr);
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("{\"plugin\": \"%s\", \"dtype\": \"%s\", \"B\": %lld, \"T\": %lld, \"H\": %lld, \"D\": %lld, "
	       "\"threads\": %d, \"fwd_ms\": %.3f, \"fwd_bwd_ms\": %.3f, \"cpu_ms\": %.3f, "
	       "\"planned_activations\": %zu, \"workspace\": %zu, \"peak_rss\": %ld}\n",
	       plugin, fw_dtype_name(dt), B, T, H, D, fw_get_num_threads(), median(fwd, iters) * 1e3,
	       median(all, iters) * 1e3, cpu * 1e3, mr.bytes[FW_MEM_ACTIVATIONS],
	       mr.bytes[FW_MEM_WORKSPACE], ru.ru_maxrss * 1024L);
	fw_graph_free(g);
	fw_ctx_free(ctx);
	return 0;
run_fail:
	fprintf(stderr, "attention: %s\n", fw_ctx_err(ctx)->msg);
	return 1;
fail:
	fprintf(stderr, "attention: %s\n", err.msg);
	return 1;
}
