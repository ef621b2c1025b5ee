/* flash_eval - runs one attention plugin's attend() on arrays from files, for
 * tests/flash_parity.py (which checks the results against torch).
 *
 * Usage: flash_eval PLUGIN.so DIR OUT_PREFIX [BLOCK_Q BLOCK_K]
 * DIR/case.txt: "B Tq Tk Hq Hkv D causal pos rope_dim interleaved masks"
 * (pos: 0 none, 1 RoPE, 2 ALiBi; masks 1: the host's bias and positions),
 * optionally followed by "dropout seed step training": the spec's attention
 * dropout and seed, the graph step, and whether the graph trains.
 * Reads DIR/q.f32 (B, Tq, Hq, D), k.f32 and v.f32 (B, Tk, Hkv, D), dy.f32
 * (B, Tq, Hq, D), with masks bias.f32 (B, 1, Tq, Tq) and pos.i32 (B, Tq);
 * writes DIR/OUT_PREFIX{y,dq,dk,dv}.f32: the output and the gradients of
 * sum(y * dy). Exit 2 with one line on a refused spec, 1 on other errors.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/loader.h"
#include "fw/plugin.h"
#include "driver_io.h"

static int io(const char *dir, const char *name, void *data, size_t bytes, bool write)
{
	return driver_io("flash_eval", dir, name, data, bytes, write);
}

int main(int argc, char **argv)
{
	if (argc != 4 && argc != 6) {
		fprintf(stderr, "usage: flash_eval PLUGIN.so DIR OUT_PREFIX [BLOCK_Q BLOCK_K]\n");
		return 1;
	}
	const char *dir = argv[2], *pre = argv[3];
	char path[4200];
	snprintf(path, sizeof(path), "%s/case.txt", dir);
	FILE *f = fopen(path, "r");
	long long B, Tq, Tk, Hq, Hkv, D;
	int causal, pos, rope_dim, inter, masks, training = 1;
	float dropout = 0.0f;
	unsigned long long seed = 0;
	long long step = 0;
	int extra = 0;
	if (!f || fscanf(f, "%lld %lld %lld %lld %lld %lld %d %d %d %d %d", &B, &Tq, &Tk, &Hq,
			 &Hkv, &D, &causal, &pos, &rope_dim, &inter, &masks) != 11 ||
	    ((extra = fscanf(f, "%f %llu %lld %d", &dropout, &seed, &step, &training)) != EOF &&
	     extra != 4)) {
		fprintf(stderr, "flash_eval: %s: bad case file\n", path);
		if (f)
			fclose(f);
		return 1;
	}
	fclose(f);

	struct fw_err err = { 0 };
	struct fw_loaded *p = NULL;
	struct fw_ctx *ctx = NULL;
	struct fw_graph *g = NULL;
	int rc = 1;
	if (fw_plugin_open(argv[1], FW_KIND_ATTENTION, &p, &err) != FW_OK)
		goto fail;
	if (argc == 6 && (fw_options_set(p->opts, "flash-block-q", argv[4], &err) != FW_OK ||
			  fw_options_set(p->opts, "flash-block-k", argv[5], &err) != FW_OK ||
			  fw_options_resolve(p->opts, &err) != FW_OK))
		goto fail;
	if (fw_plugin_init(p, NULL, &err) != FW_OK)
		goto fail;

	ctx = fw_ctx_new();
	int64_t sq[4] = { B, Tq, Hq, D }, sk[4] = { B, Tk, Hkv, D };
	struct fw_tensor *q = fw_param(ctx, "q", FW_F32, 4, sq, true);
	struct fw_tensor *k = fw_param(ctx, "k", FW_F32, 4, sk, true);
	struct fw_tensor *v = fw_param(ctx, "v", FW_F32, 4, sk, true);
	struct fw_tensor *dy = fw_input(ctx, "dy", FW_F32, 4, sq);
	struct fw_tensor *bias = masks ? fw_input(ctx, "bias", FW_F32, 4,
						  (int64_t[]){ B, 1, Tq, Tq }) : NULL;
	struct fw_tensor *positions = masks ? fw_input(ctx, "pos", FW_I32, 2,
						       (int64_t[]){ B, Tq }) : NULL;
	struct fw_model m = { .size = sizeof(m), .ctx = ctx, .host = fw_host_table(), .batch = B,
			      .seq_len = Tq, .training = true, .positions = positions,
			      .segmented = masks != 0 };
	struct fw_attn_spec spec = {
		.size = sizeof(spec), .name = "eval.attn", .n_head = (int)Hq,
		.n_kv_head = (int)Hkv, .head_dim = (int)D,
		.mask = causal ? FW_MASK_CAUSAL : FW_MASK_BIDIRECTIONAL, .bias = bias,
		.pos = pos == 1 ? FW_POS_ROPE : pos == 2 ? FW_POS_ALIBI : FW_POS_NONE,
		.rope_base = 10000.0f, .rope_dim = rope_dim, .rope_interleaved = inter != 0,
		.dropout = dropout, .seed = seed,
	};
	const struct fw_attention_i *ai = p->desc->iface;
	struct fw_tensor *y = ai->attend(p->state, &m, &spec, q, k, v, &err);
	if (!y) {
		rc = 2;
		goto fail;
	}
	struct fw_tensor *loss = fw_sum(ctx, fw_mul(ctx, y, dy), FW_AXIS_ALL, false);
	g = loss ? fw_graph_new(ctx, (struct fw_tensor *[]){ loss, y }, 2,
				&(struct fw_graph_opts){ .backward = true, .training = training != 0 })
		 : NULL;
	if (!g) {
		fprintf(stderr, "flash_eval: %s\n", fw_ctx_err(ctx)->msg);
		goto out;
	}
	fw_graph_set_step(g, step);
	size_t nq = (size_t)(B * Tq * Hq * D) * 4, nk = (size_t)(B * Tk * Hkv * D) * 4;
	if (io(dir, "q.f32", q->data, nq, false) || io(dir, "k.f32", k->data, nk, false) ||
	    io(dir, "v.f32", v->data, nk, false) || io(dir, "dy.f32", dy->data, nq, false) ||
	    (masks && (io(dir, "bias.f32", bias->data, (size_t)(B * Tq * Tq) * 4, false) ||
		       io(dir, "pos.i32", positions->data, (size_t)(B * Tq) * 4, false))))
		goto out;
	if (fw_graph_forward(g) != FW_OK || fw_graph_backward(g) != FW_OK) {
		fprintf(stderr, "flash_eval: %s\n", fw_ctx_err(ctx)->msg);
		goto out;
	}
	char name[256];
	const struct { const char *n; void *d; size_t b; } outs[] = {
		{ "y", y->data, nq }, { "dq", q->grad->data, nq },
		{ "dk", k->grad->data, nk }, { "dv", v->grad->data, nk },
	};
	for (int i = 0; i < 4; i++) {
		snprintf(name, sizeof(name), "%s%s.f32", pre, outs[i].n);
		if (io(dir, name, outs[i].d, outs[i].b, true))
			goto out;
	}
	rc = 0;
	goto out;
fail:
	fprintf(stderr, "flash_eval: %s\n", err.msg);
out:
	fw_graph_free(g);
	fw_ctx_free(ctx);
	fw_plugin_close(p);
	return rc;
}
