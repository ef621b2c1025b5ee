/* t5_driver - fw's side of tests/t5_parity.py: one forward and backward of
 * arch/encdec on arrays from files, and the buckets of t5_bucket.h.
 *
 *   t5_driver ARCH.so ATTENTION.so DIR [OPTION=VALUE ...]
 *
 * DIR/case.txt "B T training"; DIR/weights.h5 (an fw tensors file);
 * DIR/enc.i32, dec.i32, tgt.i32 (B, T) and enc_bias.f32 (B, 1, 1, T). Writes
 * DIR/loss.f32, logits.f32 (B, T, V), grads.f32 (every parameter's gradient
 * in creation order) and names.txt ("name elements" a line).
 *
 *   t5_driver --generate ARCH.so ATTENTION.so DIR [OPTION=VALUE ...]
 *
 * DIR/gen.txt "beams enc_len max_new length_penalty start eos pad" and
 * DIR/src.i32 (the source ids); writes DIR/out.i32 (fw_rt_s2s_generate's
 * ids). Weights from DIR/weights.h5.
 *
 *   t5_driver --buckets LO HI BIDIRECTIONAL NUM_BUCKETS MAX_DISTANCE
 *
 * prints the bucket of each relative position in [LO, HI], one a line.
 *
 *   t5_driver --spans LENGTH KEY DENSITY MEAN
 *
 * prints fw_rt_span_noise_mask of a row of LENGTH tokens as 0s and 1s.
 *
 *   t5_driver --squad FILE
 *
 * FILE holds NUL-terminated texts, prediction then reference, pair after
 * pair; prints fw_rt_squad_score's "EM F1" of each pair, one a line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/loader.h"
#include "fw/runtime/model.h"
#include "fw/runtime/seq2seq.h"
#include "fw/runtime/squad.h"
#include "fw/runtime/tasks.h"
#include "../plugins/arch/encdec/t5_bucket.h"
#include "driver_io.h"

static int io(const char *dir, const char *name, void *data, size_t bytes, bool write)
{
	return driver_io("t5_driver", dir, name, data, bytes, write);
}

static int buckets(char **argv)
{
	long lo = atol(argv[2]), hi = atol(argv[3]);
	for (long r = lo; r <= hi; r++)
		printf("%d\n", t5_relative_bucket(r, atoi(argv[4]) != 0, atoi(argv[5]),
						  atoi(argv[6])));
	return 0;
}

static int spans(char **argv)
{
	int64_t n = atoll(argv[2]);
	uint8_t *noise = malloc((size_t)n);
	if (n < 2 || !noise)
		return 2;
	fw_rt_span_noise_mask(n, atof(argv[4]), atof(argv[5]), strtoull(argv[3], NULL, 10), noise);
	for (int64_t i = 0; i < n; i++)
		putchar('0' + noise[i]);
	putchar('\n');
	free(noise);
	return 0;
}

static enum fw_status open_arch(const char *so, char **opts, int n, struct fw_loaded **p,
				struct fw_err *err)
{
	enum fw_status st = fw_plugin_open(so, FW_KIND_ARCH, p, err);
	for (int i = 0; st == FW_OK && i < n; i++) {
		char name[128];
		const char *eq = strchr(opts[i], '=');
		if (!eq || (size_t)(eq - opts[i]) >= sizeof(name))
			return fw_errorf(err, FW_ERR_INVALID, "bad option %s", opts[i]);
		memcpy(name, opts[i], (size_t)(eq - opts[i]));
		name[eq - opts[i]] = 0;
		st = fw_options_set((*p)->opts, name, eq + 1, err);
	}
	if (st == FW_OK)
		st = fw_options_resolve((*p)->opts, err);
	return st == FW_OK ? fw_plugin_init(*p, NULL, err) : st;
}

static int generate(char **argv, int argc)
{
	const char *dir = argv[4];
	char path[4200];
	snprintf(path, sizeof(path), "%s/gen.txt", dir);
	FILE *f = fopen(path, "r");
	long long beams, enc_len, max_new, start, eos, pad;
	double lp;
	if (!f || fscanf(f, "%lld %lld %lld %lf %lld %lld %lld", &beams, &enc_len, &max_new, &lp,
			 &start, &eos, &pad) != 7) {
		fprintf(stderr, "t5_driver: %s: bad case file\n", path);
		return 1;
	}
	fclose(f);
	snprintf(path, sizeof(path), "%s/src.i32", dir);
	f = fopen(path, "rb");
	int32_t src[4096], out[4096];
	int64_t n_src = f ? (int64_t)fread(src, 4, 4096, f) : 0, n_out = 0;
	if (f)
		fclose(f);
	struct fw_err err = { 0 };
	struct fw_plugin_slots slots = { 0 };
	struct fw_rt_s2s_decoder d = { 0 };
	struct fw_tensor **params = NULL;
	int n = 0, n_new = 0, rc = 1;
	struct fw_rt_s2s_opts o = { .max_new = max_new, .num_beams = (int)beams,
				    .length_penalty = lp, .start = (int32_t)start,
				    .eos = (int32_t)eos, .pad = (int32_t)pad };
	snprintf(path, sizeof(path), "%s/weights.h5", dir);
	if (open_arch(argv[2], argv + 5, argc - 5, &slots.arch, &err) != FW_OK ||
	    fw_plugin_open(argv[3], FW_KIND_ATTENTION, &slots.attention, &err) != FW_OK ||
	    fw_plugin_init(slots.attention, NULL, &err) != FW_OK ||
	    fw_rt_s2s_decoder_open(&d, &slots, beams, enc_len, max_new, 1, &err) != FW_OK ||
	    (n = fw_rt_model_params(d.ctx, &params)) < 0 ||
	    fw_rt_model_load_weights(path, params, n, &slots, false, &n_new, NULL, &err) ||
	    fw_rt_s2s_generate(&d, src, n_src, &o, out, &n_out, &err) != FW_OK)
		fprintf(stderr, "t5_driver: %s\n", err.msg);
	else
		rc = io(dir, "out.i32", out, (size_t)n_out * 4, true) ? 1 : 0;
	free(params);
	fw_rt_s2s_decoder_close(&d);
	fw_plugin_close(slots.arch);
	fw_plugin_close(slots.attention);
	return rc;
}

static int squad(const char *path)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t len = 0, cap = 0;
	int c;
	while (f && (c = fgetc(f)) != EOF) {
		if (len == cap && !(buf = realloc(buf, cap = 2 * cap + 4096)))
			return 1;
		buf[len++] = (char)c;
	}
	if (f)
		fclose(f);
	int rc = f ? 0 : 1;
	for (size_t at = 0; !rc && at < len;) {
		const char *p = buf + at, *r = p + strlen(p) + 1;
		double em, f1;
		struct fw_err err = { 0 };
		if (fw_rt_squad_score(p, strlen(p), r, strlen(r), &em, &f1, &err) != FW_OK) {
			fprintf(stderr, "t5_driver: %s\n", err.msg);
			rc = 1;
		}
		printf("%.0f %.17g\n", em, f1);
		at = (size_t)(r - buf) + strlen(r) + 1;
	}
	free(buf);
	return rc;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "--squad"))
		return squad(argv[2]);
	if (argc >= 5 && !strcmp(argv[1], "--generate"))
		return generate(argv, argc);
	if (argc == 7 && !strcmp(argv[1], "--buckets"))
		return buckets(argv);
	if (argc == 6 && !strcmp(argv[1], "--spans"))
		return spans(argv);
	if (argc < 4) {
		fprintf(stderr, "usage: t5_driver ARCH.so ATTENTION.so DIR [OPTION=VALUE ...]\n");
		return 2;
	}
	const char *dir = argv[3];
	char path[4200];
	snprintf(path, sizeof(path), "%s/case.txt", dir);
	FILE *f = fopen(path, "r");
	long long B, T;
	int training;
	if (!f || fscanf(f, "%lld %lld %d", &B, &T, &training) != 3) {
		fprintf(stderr, "t5_driver: %s: bad case file\n", path);
		return 1;
	}
	fclose(f);
	struct fw_err err = { 0 };
	struct fw_plugin_slots slots = { 0 };
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_graph *g = NULL;
	struct fw_tensor **params = NULL;
	struct fw_model m;
	int rc = 1, n = 0, n_new = 0;
	if (open_arch(argv[1], argv + 4, argc - 4, &slots.arch, &err) != FW_OK ||
	    fw_plugin_open(argv[2], FW_KIND_ATTENTION, &slots.attention, &err) != FW_OK ||
	    fw_plugin_init(slots.attention, NULL, &err) != FW_OK)
		goto fail;
	struct fw_rt_model_spec spec = { .plugins = &slots, .batch = B, .seq_len = T, .seed = 1,
					 .training = training != 0 };
	if (fw_rt_model_build(&spec, ctx, &m, &err) != FW_OK)
		goto fail;
	g = fw_graph_new(ctx, (struct fw_tensor *[]){ m.loss, m.logits }, 2,
			 &(struct fw_graph_opts){ .backward = true, .training = training != 0 });
	if (!g) {
		fprintf(stderr, "t5_driver: %s\n", fw_ctx_err(ctx)->msg);
		goto out;
	}
	n = fw_rt_model_params(ctx, &params);
	snprintf(path, sizeof(path), "%s/weights.h5", dir);
	if (n < 0 || fw_rt_model_load_weights(path, params, n, &slots, false, &n_new, NULL, &err))
		goto fail;
	size_t bt = (size_t)(B * T) * 4;
	if (io(dir, "enc.i32", m.enc_tokens->data, bt, false) ||
	    io(dir, "dec.i32", m.tokens->data, bt, false) ||
	    io(dir, "tgt.i32", m.targets->data, bt, false) ||
	    io(dir, "enc_bias.f32", fw_ctx_find(ctx, "enc_bias")->data, bt, false))
		goto out;
	fw_graph_zero_grad(g);
	if (fw_graph_forward(g) != FW_OK || fw_graph_backward(g) != FW_OK) {
		fprintf(stderr, "t5_driver: %s\n", fw_ctx_err(ctx)->msg);
		goto out;
	}
	snprintf(path, sizeof(path), "%s/names.txt", dir);
	FILE *names = fopen(path, "w");
	snprintf(path, sizeof(path), "%s/grads.f32", dir);
	FILE *grads = fopen(path, "wb");
	if (!names || !grads) {
		fprintf(stderr, "t5_driver: cannot write in %s\n", dir);
		goto out;
	}
	for (int i = 0; i < n; i++) {
		size_t k = (size_t)fw_nelem(params[i]);
		fprintf(names, "%s %zu\n", params[i]->name, k);
		fwrite(params[i]->grad->data, 4, k, grads);
	}
	fclose(names);
	fclose(grads);
	if (io(dir, "loss.f32", m.loss->data, 4, true) ||
	    io(dir, "logits.f32", m.logits->data, (size_t)fw_nelem(m.logits) * 4, true))
		goto out;
	rc = 0;
	goto out;
fail:
	fprintf(stderr, "t5_driver: %s\n", err.msg);
out:
	free(params);
	fw_graph_free(g);
	fw_ctx_free(ctx);
	fw_plugin_close(slots.arch);
	fw_plugin_close(slots.attention);
	return rc;
}
