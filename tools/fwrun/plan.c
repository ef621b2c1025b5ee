/* plan.c - fwrun plan: the memory plan of a configuration, without
 * training, against the rules of thumb. */
#include <stdlib.h>
#include <string.h>

#include "fw/quant.h"
#include "session.h"

static const char plan_usage[] =
	"usage: fwrun plan --plugins=arch/X,optim/Y[,...] [options]\n"
	"Builds the model and its memory plan without training and prints the bytes per category.\n";

static void plan_row(const char *name, double planned, const char *rule, double rule_bytes)
{
	printf("  %-12s %10.2f MiB", name, planned / 1048576.0);
	if (rule)
		printf("   %-26s %10.2f MiB  %+6.1f%%", rule, rule_bytes / 1048576.0,
		       rule_bytes > 0 ? 100.0 * (planned - rule_bytes) / rule_bytes : 0.0);
	printf("\n");
}

static bool is_weight_copy(const struct fw_tensor *t, bool trainable)
{
	return t->op == FW_OP_CAST && t->src[0] && (t->src[0]->flags & FW_FLAG_PARAM) &&
	       !!(t->src[0]->flags & FW_FLAG_TRAINABLE) == trainable;
}

/* Bytes of the half-precision copies of the trainable (or frozen)
 * parameters that --bf16/--fp16's matmuls cast, each parameter once (the
 * eval graph casts tied ones too). */
static double half_weight_copies(const struct fw_ctx *ctx, bool trainable)
{
	double bytes = 0;
	for (int i = 0; i < fw_ctx_n_tensors(ctx); i++) {
		const struct fw_tensor *t = fw_ctx_tensor(ctx, i);
		bool seen = false;
		for (int j = 0; j < i && is_weight_copy(t, trainable) && !seen; j++) {
			const struct fw_tensor *u = fw_ctx_tensor(ctx, j);
			seen = is_weight_copy(u, trainable) && u->src[0] == t->src[0];
		}
		if (is_weight_copy(t, trainable) && !seen)
			bytes += (double)fw_nbytes(t);
	}
	return bytes;
}

/* Bytes of ctx's weights category beyond the parameters themselves: the
 * half copies of parameters its graphs keep across steps (fw/graph.h). */
static double kept_copies(const struct fw_ctx *ctx, size_t weights)
{
	double params = 0;
	for (int i = 0; i < fw_ctx_n_tensors(ctx); i++) {
		const struct fw_tensor *t = fw_ctx_tensor(ctx, i);
		if ((t->flags & FW_FLAG_PARAM) && t->data)
			params += (double)((fw_nbytes(t) + 63) / 64 * 64);
	}
	return (double)weights > params ? (double)weights - params : 0;
}

int cmd_plan(int argc, char **argv)
{
	struct session s;
	int rc = EXIT_RUNTIME;
	if (wants_help(argc, argv))
		return command_help("plan", plan_usage, argc, argv);
	if (session_open(&s, "plan", argc, argv, true, DATA_IF_GIVEN, &rc) != 0)
		goto out;
	if (s.slots.optim && setup_optim(&s, &s.err) != FW_OK) {
		rc = fail(s.err.status, "%s", s.err.msg);
		goto out;
	}
	session_ready(&s, "plan", argc, argv);
	struct fw_memory_report mr, me = { 0 };
	fw_graph_memory(s.g, &mr);
	if (s.eval_g)
		fw_graph_memory(s.eval_g, &me);
	double P = (double)mr.n_params, Tr = (double)mr.n_trainable;
	int n_state = s.optim ? fw_rt_optim_n_state(s.optim) : 0;
	printf("parameters: %lld total, %lld trainable (%.2f%%)\n", (long long)mr.n_params,
	       (long long)mr.n_trainable, P > 0 ? 100.0 * Tr / P : 0.0);
	const char *mode = s.precision == FW_F32 ? "f32" : s.precision == FW_BF16 ?
			   "--bf16 (fp32 master, bf16 matmuls and activations)" :
			   "--fp16 (fp32 master, f16 matmuls and activations)";
	printf("memory plan for training, %s, micro-batch %lld x %lld tokens, from the real "
	       "graph:\n", mode, (long long)s.B, (long long)s.T);
	printf("  %-12s %14s   %-26s %14s  %7s\n", "category", "planned", "rule of thumb", "",
	       "diff");
	double kept = s.precision == FW_F32 ? 0 : kept_copies(s.ctx, mr.bytes[FW_MEM_WEIGHTS]);
	plan_row("weights", (double)mr.bytes[FW_MEM_WEIGHTS], "4 B/param (fp32)", 4 * P);
	if (kept > 0)
		printf("  (weights hold the %s copies of the parameters the matmuls read, kept "
		       "across steps: %.2f MiB)\n", fw_dtype_name(s.precision), kept / 1048576.0);
	plan_row("gradients", (double)mr.bytes[FW_MEM_GRADIENTS], "4 B/trainable param", 4 * Tr);
	char rule[64];
	snprintf(rule, sizeof(rule), "%d x 4 B/trainable param", n_state);
	plan_row("optimizer", (double)mr.bytes[FW_MEM_OPTIMIZER], rule, 4.0 * n_state * Tr);
	plan_row("activations", (double)mr.bytes[FW_MEM_ACTIVATIONS], NULL, 0);
	double copies = s.precision == FW_F32 ? 0 : half_weight_copies(s.ctx, true) +
			half_weight_copies(s.ctx, false);
	if (copies - kept > 0)
		printf("  (activations hold the %s copies of the weights the matmuls read: %.2f MiB, "
		       "cast each step)\n", fw_dtype_name(s.precision), (copies - kept) / 1048576.0);
	if (s.eval_g)
		plan_row("eval acts", (double)me.bytes[FW_MEM_ACTIVATIONS], NULL, 0);
	plan_row("inputs", (double)mr.bytes[FW_MEM_INPUTS], NULL, 0);
	plan_row("workspace", (double)(mr.bytes[FW_MEM_WORKSPACE] + me.bytes[FW_MEM_WORKSPACE]),
		 NULL, 0);
	double total = (double)mr.total + (double)me.bytes[FW_MEM_ACTIVATIONS] +
		       (double)me.bytes[FW_MEM_WORKSPACE];
	plan_row("total", total, "16 B/trainable+4 B/frozen", 16 * Tr + 4 * (P - Tr));
	plan_row("process", (double)s.base_rss, NULL, 0);
	printf("  %-12s %10.1f MiB   (plan + process; compare with 'fwrun train's peak RSS)\n",
	       "expected", (total + (double)s.base_rss) / 1048576.0);
	double per = Tr > 0 ? 4.0 + 4 + 4.0 * n_state : 0;
	printf("rules of thumb (docs): fp32 weights 4 B/param = %.1f MiB, fp16/bf16 2 B/param = "
	       "%.1f MiB;\nmixed-precision Adam 16-20 B/param = %.1f-%.1f MiB (fw: fp32 master 4 + "
	       "fp32 grads 4 + optimizer %d x 4", 4 * P / 1048576.0, 2 * P / 1048576.0,
	       16 * P / 1048576.0, 20 * P / 1048576.0, n_state);
	if (copies > 0)
		printf(" + %s copy %.1f = %.1f B/trainable param here).\n",
		       fw_dtype_name(s.precision), copies / P, per + copies / P);
	else
		printf(" = %.0f B/trainable param here%s).\n", per,
		       s.precision == FW_F32 ? "; --bf16 adds a 2 B/param weight copy" : "");
	/* QLoRA: the storage of the 4-bit weights, statistics included. */
	int64_t q_n = 0;
	double q_bytes = 0;
	for (int i = 0; i < fw_ctx_n_tensors(s.ctx); i++) {
		const struct fw_tensor *t = fw_ctx_tensor(s.ctx, i);
		size_t l = strlen(t->name), la = strlen(FW_NF4_ABSMAX_SUFFIX),
		       ls = strlen(FW_NF4_STATS_SUFFIX);
		bool stat = (l > la && !strcmp(t->name + l - la, FW_NF4_ABSMAX_SUFFIX)) ||
			    (l > ls && !strcmp(t->name + l - ls, FW_NF4_STATS_SUFFIX));
		if (!(t->flags & FW_FLAG_PARAM) || (t->dtype != FW_Q4 && !stat))
			continue;
		q_n += stat ? 0 : fw_nelem(t);
		q_bytes += (double)fw_nbytes(t);
	}
	if (q_n)
		printf("4-bit weights: %lld in %.2f MiB with their statistics: %.3f bits a weight\n",
		       (long long)q_n, q_bytes / 1048576.0, 8.0 * q_bytes / (double)q_n);
	printf("activations without reuse would take %.1f MiB (the planner shares buffers "
	       "whose lifetimes do not overlap)\n", mr.activations_unplanned / 1048576.0);
	rc = EXIT_OK;
out:
	free_session(&s);
	return rc;
}
