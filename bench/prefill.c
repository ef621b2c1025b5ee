/* prefill.c - a prompt read in one forward (the runtime's prefill) against one
 * token a step, and the decoding rate after it, one attention plugin
 * (bench/prefill.py runs it per plugin, with torch, and prints the table).
 *
 * GPT-2 124M shape by default (12 layers, 12 heads, width 768, vocabulary
 * 50257, 1024 positions), random weights, batch 1, a prompt of --prompt
 * random ids:
 *   prefill_ms  fw_rt_generate of the prompt and one new token (prefill
 *               forwards, then one sample);
 *   steps_ms    the same prompt through the one-token decoding graph, a
 *               forward per token at its own position (how prompts were read
 *               before prefill);
 *   decode_ms   per generated token after the prompt: (time for --new + 1
 *               tokens - prefill_ms) / --new.
 * Each is the median of --rounds runs after one warm-up.
 *
 *   prefill --plugin attention/flash [--prompt 512] [--new 32] [--rounds 3]
 *           [--n-layer 12] [--n-head 12] [--n-embd 768] [--vocab 50257]
 *           [--threads N] [--bf16]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/runtime/generate.h"
#include "runtime_bench.h"

/* Seconds for the prompt and n_new tokens through fw_rt_generate. */
static double generate(struct fw_rt_decoder *d, const int32_t *prompt, int64_t n,
		       int64_t n_new)
{
	struct fw_rt_gen_opts o = { .max_new = n_new, .temperature = 0, .top_p = 1,
				    .penalty = 1 };
	struct fw_err err = { 0 };
	double t0 = bench_now();
	if (fw_rt_generate(d, prompt, n, &o, NULL, NULL, &err) != FW_OK) {
		fprintf(stderr, "prefill: %s\n", err.msg);
		exit(1);
	}
	return bench_now() - t0;
}

/* Seconds for the prompt through the one-token graph, a forward a token. */
static double steps(struct fw_rt_decoder *d, const int32_t *prompt, int64_t n)
{
	double t0 = bench_now();
	for (int64_t t = 0; t < n; t++) {
		*(int32_t *)d->m.tokens->data = prompt[t];
		*(int32_t *)d->slots->data = (int32_t)t;
		if (fw_graph_forward(d->g) != FW_OK) {
			fprintf(stderr, "prefill: %s\n", fw_ctx_err(d->ctx)->msg);
			exit(1);
		}
	}
	return bench_now() - t0;
}

int main(int argc, char **argv)
{
	const char *plugin = "attention/flash", *layers = "12", *heads = "12", *embd = "768";
	const char *vocab = "50257";
	int n = 512, n_new = 32, rounds = 3, threads = 0;
	bool bf16 = false;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--bf16")) {
			bf16 = true;
			continue;
		}
		if (!v) {
			argc = -1;
			break;
		}
		i++;
		if (!strcmp(a, "--plugin"))
			plugin = v;
		else if (!strcmp(a, "--prompt"))
			n = atoi(v);
		else if (!strcmp(a, "--new"))
			n_new = atoi(v);
		else if (!strcmp(a, "--rounds"))
			rounds = atoi(v);
		else if (!strcmp(a, "--n-layer"))
			layers = v;
		else if (!strcmp(a, "--n-head"))
			heads = v;
		else if (!strcmp(a, "--n-embd"))
			embd = v;
		else if (!strcmp(a, "--vocab"))
			vocab = v;
		else if (!strcmp(a, "--threads"))
			threads = atoi(v);
		else
			argc = -1;
	}
	if (argc < 0 || n < 1 || n_new < 1 || rounds < 1 || rounds > 100 || n + n_new + 1 > 1024) {
		fprintf(stderr, "usage: prefill --plugin KIND/NAME [--prompt N] [--new N] "
			"[--rounds N] [--n-layer N] [--n-head N] [--n-embd N] [--vocab N] "
			"[--threads N] [--bf16]  (prompt + new + 1 <= 1024)\n");
		return 2;
	}
	if (threads > 0)
		fw_set_num_threads(threads);
	const char *arch_opts[] = { "n-layer", layers, "n-head", heads, "n-embd", embd,
				    "vocab-size", vocab, "n-positions", "1024", NULL };
	struct fw_err err = { 0 };
	struct fw_loaded *arch = bench_plugin("arch/decoder", FW_KIND_ARCH, arch_opts, &err);
	struct fw_loaded *att = arch ? bench_plugin(plugin, FW_KIND_ATTENTION, NULL, &err) : NULL;
	struct fw_plugin_slots slots = { .arch = arch, .attention = att };
	struct fw_rt_decoder d;
	memset(&d, 0, sizeof(d));
	if (!att || fw_rt_decoder_open_as(&d, &slots, 1, 1024, 1, bf16 ? FW_BF16 : FW_F32,
					  &err) != FW_OK ||
	    fw_ctx_init_params(d.ctx, 1) != FW_OK) {
		fprintf(stderr, "prefill: %s\n", err.msg[0] ? err.msg : fw_ctx_err(d.ctx)->msg);
		return 1;
	}
	int32_t *prompt = malloc(sizeof(*prompt) * (size_t)n);
	srand(1);
	for (int i = 0; i < n; i++)
		prompt[i] = rand() % d.V;
	double tp[100], ts[100], td[100];
	generate(&d, prompt, n, 1);             /* warm-up: builds the prefill models */
	steps(&d, prompt, n);
	for (int r = 0; r < rounds; r++) {
		tp[r] = generate(&d, prompt, n, 1);
		ts[r] = steps(&d, prompt, n);
		td[r] = (generate(&d, prompt, n, n_new + 1) - tp[r]) / n_new;
	}
	printf("{\"plugin\": \"%s\", \"prompt\": %d, \"threads\": %d, \"bf16\": %s, "
	       "\"prefill_ms\": %.2f, \"steps_ms\": %.2f, \"decode_ms\": %.3f}\n", plugin, n,
	       fw_get_num_threads(), bf16 ? "true" : "false", bench_median(tp, rounds) * 1e3,
	       bench_median(ts, rounds) * 1e3, bench_median(td, rounds) * 1e3);
	free(prompt);
	fw_rt_decoder_close(&d);
	fw_plugin_close(att);
	fw_plugin_close(arch);
	return 0;
}
