/* decode.c - time per generated token against the position, one attention
 * plugin (bench/decode.py runs it per plugin, interleaved with torch, and
 * prints the table).
 *
 * A GPT-2-style arch/decoder with random weights, decoded through the
 * runtime's decoder (fw/runtime/generate.h: one token a step over KV caches
 * of --max-len positions). For each --at position p the step's inputs say
 * p tokens are cached (the row's slot is p; the cache contents do not change
 * the work), and the
 * median of --steps forwards after two warm-ups is that position's time.
 *
 *   decode --plugin attention/flash [--max-len 4096] [--at 128,1024,4000]
 *          [--n-layer 4] [--n-head 8] [--n-embd 512] [--vocab 4096]
 *          [--steps 16] [--threads N] [--bf16 | --fp16]
 *
 * --bf16/--fp16 open the decoder under autocast (fw_rt_decoder_open_as: half
 * KV caches, as `fwrun generate --bf16`). Each position prints the median
 * wall ms and the median process CPU ms a step (CPU time: the machine may
 * be shared).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/runtime/generate.h"
#include "runtime_bench.h"

int main(int argc, char **argv)
{
	const char *plugin = "attention/flash", *at = "128,512,1024,2048,4000";
	const char *layers = "4", *heads = "8", *embd = "512", *vocab = "4096";
	long long max_len = 4096;
	int steps = 16, threads = 0;
	enum fw_dtype precision = FW_F32;
	for (int i = 1; i < argc; i += 2) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--bf16") || !strcmp(a, "--fp16")) {
			precision = a[2] == 'b' ? FW_BF16 : FW_F16;
			i--;
			continue;
		}
		if (!v)
			argc = -1;
		else if (!strcmp(a, "--plugin"))
			plugin = v;
		else if (!strcmp(a, "--max-len"))
			max_len = atoll(v);
		else if (!strcmp(a, "--at"))
			at = v;
		else if (!strcmp(a, "--n-layer"))
			layers = v;
		else if (!strcmp(a, "--n-head"))
			heads = v;
		else if (!strcmp(a, "--n-embd"))
			embd = v;
		else if (!strcmp(a, "--vocab"))
			vocab = v;
		else if (!strcmp(a, "--steps"))
			steps = atoi(v);
		else if (!strcmp(a, "--threads"))
			threads = atoi(v);
		else
			argc = -1;
	}
	if (argc < 0 || steps < 1 || steps > 1000 || max_len < 2) {
		fprintf(stderr, "usage: decode --plugin KIND/NAME [--max-len N] [--at P,P,...] "
			"[--n-layer N] [--n-head N] [--n-embd N] [--vocab N] [--steps N] "
			"[--threads N] [--bf16 | --fp16]\n");
		return 2;
	}
	if (threads > 0)
		fw_set_num_threads(threads);
	char npos[32];
	snprintf(npos, sizeof(npos), "%lld", max_len);
	const char *arch_opts[] = { "n-layer", layers, "n-head", heads, "n-embd", embd,
				    "vocab-size", vocab, "n-positions", npos, NULL };
	struct fw_err err = { 0 };
	struct fw_loaded *arch = bench_plugin("arch/decoder", FW_KIND_ARCH, arch_opts, &err);
	struct fw_loaded *att = arch ? bench_plugin(plugin, FW_KIND_ATTENTION, NULL, &err) : NULL;
	struct fw_plugin_slots slots = { .arch = arch, .attention = att };
	struct fw_rt_decoder d;
	memset(&d, 0, sizeof(d));
	if (!att || fw_rt_decoder_open_as(&d, &slots, 1, max_len, 1, precision, &err) != FW_OK ||
	    fw_ctx_init_params(d.ctx, 1) != FW_OK) {
		fprintf(stderr, "decode: %s\n", err.msg[0] ? err.msg : fw_ctx_err(d.ctx)->msg);
		return 1;
	}
	double t[1000], c[1000];
	printf("{\"plugin\": \"%s\", \"precision\": \"%s\", \"max_len\": %lld, "
	       "\"threads\": %d, \"ms\": {", plugin, fw_dtype_name(precision), max_len,
	       fw_get_num_threads());
	char cpu_ms[4096] = "";
	size_t used = 0;
	int first = 1;
	for (const char *s = at; *s;) {
		char *end;
		long long p = strtoll(s, &end, 10);
		if (end == s || p < 0 || p >= max_len) {
			fprintf(stderr, "decode: --at %s: positions 0..%lld\n", at, max_len - 1);
			return 2;
		}
		s = *end == ',' ? end + 1 : end;
		*(int32_t *)d.slots->data = (int32_t)p;     /* the row's position */
		*(int32_t *)d.m.tokens->data = 1;
		for (int i = -2; i < steps; i++) {
			double t0 = bench_now(), c0 = bench_cpu_now();
			if (fw_graph_forward(d.g) != FW_OK) {
				fprintf(stderr, "decode: %s\n", fw_ctx_err(d.ctx)->msg);
				return 1;
			}
			if (i >= 0) {
				t[i] = bench_now() - t0;
				c[i] = bench_cpu_now() - c0;
			}
		}
		printf("%s\"%lld\": %.4f", first ? "" : ", ", p, bench_median(t, steps) * 1e3);
		used += (size_t)snprintf(cpu_ms + used, used < sizeof(cpu_ms) ? sizeof(cpu_ms) - used : 0,
					 "%s\"%lld\": %.4f", first ? "" : ", ", p,
					 bench_median(c, steps) * 1e3);
		first = 0;
	}
	printf("}, \"cpu_ms\": {%s}}\n", used < sizeof(cpu_ms) ? cpu_ms : "");
	fw_rt_decoder_close(&d);
	fw_plugin_close(att);
	fw_plugin_close(arch);
	return 0;
}
