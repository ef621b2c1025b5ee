/* test_parity.c - every built-in op against PyTorch.
 *
 * The golden file $FW_GOLDEN_DIR/ops.h5 comes from tests/gen_golden.py (one
 * group per case: inputs, out, R, grad/<input>, attributes with the op's
 * arguments). For each case this builds the same fw graph with every
 * trainable input as a trainable fw_param, forms loss = sum(out * R), runs
 * forward and backward, and compares out and every gradient with torch.
 *
 * Tolerance: |got - exp| <= atol * max(1, max|exp|) + rtol * |exp|, default
 * rtol 1e-5, atol 1e-6. The golden values are float64 results rounded once
 * to f32; fw computes in f32, so a short dot product or reduction is off by
 * a few ulp of its largest terms, which is why the absolute part scales with
 * the tensor's magnitude rather than with each (possibly cancelled) element.
 * Looser cases say why in the table.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define MAX_IN 20

struct pcase {
	struct fwt_h5 *h5;
	const char *name;
	struct fw_ctx *ctx;
	double out_rtol;         /* the output's rtol, if not the entry's */
	int n_in;
	struct {
		char name[64];
		struct fw_tensor *t;
		struct fwt_array a;
	} in[MAX_IN];
};

static struct fwt_h5 *golden;
static char golden_path[4096];

static void golden_open(void)
{
	const char *dir = getenv("FW_GOLDEN_DIR");
	snprintf(golden_path, sizeof(golden_path), "%s/ops.h5", dir ? dir : "golden");
	golden = fwt_h5_open(golden_path);
	ck_assert_msg(golden != NULL,
		      "golden file %s is missing or unreadable (FW_GOLDEN_DIR=%s): "
		      "run `/usr/bin/python3 tests/gen_golden.py %s` first",
		      golden_path, dir ? dir : "(unset)", dir ? dir : "build/golden");
}

static bool is_nograd(struct pcase *c, const char *name)
{
	char list[256], *save = NULL;
	if (fwt_h5_attr_str(c->h5, c->name, "nograd", list, sizeof(list)) < 0)
		return false;
	for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
		if (strcmp(tok, name) == 0)
			return true;
	return false;
}

/* The leaf for dataset <case>/<name>, created on first use; NULL if the case
 * has no such input (optional inputs) */
static struct fw_tensor *in_opt(struct pcase *c, const char *name)
{
	char path[256];
	for (int i = 0; i < c->n_in; i++)
		if (strcmp(c->in[i].name, name) == 0)
			return c->in[i].t;
	snprintf(path, sizeof(path), "%s/%s", c->name, name);
	if (!fwt_h5_exists(c->h5, path))
		return NULL;
	ck_assert_int_lt(c->n_in, MAX_IN);
	int k = c->n_in++;
	snprintf(c->in[k].name, sizeof(c->in[k].name), "%s", name);
	ck_assert_msg(fwt_h5_read(c->h5, path, &c->in[k].a) == 0, "cannot read %s", path);
	struct fwt_array *a = &c->in[k].a;
	if (a->dtype == FW_I32)
		c->in[k].t = fw_input(c->ctx, name, FW_I32, a->ndim, a->ne);
	else if (is_nograd(c, name))
		c->in[k].t = fw_input(c->ctx, name, FW_F32, a->ndim, a->ne);
	else
		c->in[k].t = fw_param(c->ctx, name, FW_F32, a->ndim, a->ne, true);
	ck_assert_msg(c->in[k].t != NULL, "%s: leaf %s: %s", c->name, name,
		      fw_ctx_err(c->ctx)->msg);
	return c->in[k].t;
}

static struct fw_tensor *in(struct pcase *c, const char *name)
{
	struct fw_tensor *t = in_opt(c, name);
	ck_assert_msg(t != NULL, "%s: golden file lacks input '%s'", c->name, name);
	return t;
}

static int attr_n(struct pcase *c, const char *name, double *v, int max)
{
	int n = fwt_h5_attr_f64(c->h5, c->name, name, v, max);
	ck_assert_msg(n >= 1, "%s: golden file lacks attribute '%s'", c->name, name);
	return n;
}

static double attr_f(struct pcase *c, const char *name)
{
	double v;
	attr_n(c, name, &v, 1);
	return v;
}

static int attr_i(struct pcase *c, const char *name)
{
	return (int)attr_f(c, name);
}

/* --- builders, one per op (arguments come from the case's attributes) ----------- */

typedef struct fw_tensor *(*pbuild_fn)(struct pcase *c);

static struct fw_tensor *b_matmul(struct pcase *c)
{
	return fw_matmul(c->ctx, in(c, "a"), in(c, "b"), attr_i(c, "trans_a"),
			 attr_i(c, "trans_b"));
}

static struct fw_tensor *b_matmul_bf16(struct pcase *c)
{
	struct fw_ctx *x = c->ctx;
	return fw_matmul(x, fw_cast(x, in(c, "a"), FW_BF16), fw_cast(x, in(c, "b"), FW_BF16),
			 attr_i(c, "trans_a"), attr_i(c, "trans_b"));
}

static struct fw_tensor *b_linear(struct pcase *c)
{
	return fw_linear(c->ctx, in(c, "x"), in(c, "w"), in_opt(c, "b"));
}

static struct fw_tensor *b_add(struct pcase *c)
{
	return fw_add(c->ctx, in(c, "a"), in(c, "b"));
}

static struct fw_tensor *b_sub(struct pcase *c)
{
	return fw_sub(c->ctx, in(c, "a"), in(c, "b"));
}

static struct fw_tensor *b_mul(struct pcase *c)
{
	return fw_mul(c->ctx, in(c, "a"), in(c, "b"));
}

static struct fw_tensor *b_scale(struct pcase *c)
{
	return fw_scale(c->ctx, in(c, "x"), (float)attr_f(c, "s"));
}

static struct fw_tensor *b_embedding(struct pcase *c)
{
	return fw_embedding(c->ctx, in(c, "table"), in(c, "ids"));
}

static struct fw_tensor *b_layernorm(struct pcase *c)
{
	return fw_layernorm(c->ctx, in(c, "x"), in_opt(c, "w"), in_opt(c, "b"),
			    (float)attr_f(c, "eps"));
}

static struct fw_tensor *b_rmsnorm(struct pcase *c)
{
	return fw_rmsnorm(c->ctx, in(c, "x"), in_opt(c, "w"), (float)attr_f(c, "eps"));
}

static struct fw_tensor *b_gelu(struct pcase *c)
{
	return fw_gelu(c->ctx, in(c, "x"), attr_i(c, "form"));
}

static struct fw_tensor *b_relu(struct pcase *c)
{
	return fw_relu(c->ctx, in(c, "x"));
}

static struct fw_tensor *b_silu(struct pcase *c)
{
	return fw_silu(c->ctx, in(c, "x"));
}

static struct fw_tensor *b_tanh(struct pcase *c)
{
	return fw_tanh(c->ctx, in(c, "x"));
}

static struct fw_tensor *b_sigmoid(struct pcase *c)
{
	return fw_sigmoid(c->ctx, in(c, "x"));
}

static struct fw_tensor *b_softmax(struct pcase *c)
{
	struct fw_tensor *bias = in_opt(c, "bias");
	if (!bias)
		bias = in_opt(c, "mask");
	return fw_softmax(c->ctx, in(c, "x"), bias, attr_i(c, "causal"),
			  (float)attr_f(c, "scale"));
}

static struct fw_tensor *b_cross_entropy(struct pcase *c)
{
	return fw_cross_entropy(c->ctx, in(c, "logits"), in(c, "targets"), in_opt(c, "mask"),
				attr_i(c, "ignore_index"));
}

static struct fw_tensor *b_concat(struct pcase *c)
{
	return fw_concat(c->ctx, in(c, "a"), in(c, "b"), attr_i(c, "axis"));
}

static struct fw_tensor *b_slice(struct pcase *c)
{
	return fw_slice(c->ctx, in(c, "x"), attr_i(c, "axis"), attr_i(c, "start"),
			attr_i(c, "length"));
}

static struct fw_tensor *b_slice_tanh(struct pcase *c)
{
	return fw_tanh(c->ctx, b_slice(c));
}

static struct fw_tensor *reshape_attr(struct pcase *c, struct fw_tensor *x)
{
	double v[FW_MAX_DIMS];
	int64_t shape[FW_MAX_DIMS];
	int n = attr_n(c, "shape", v, FW_MAX_DIMS);
	for (int i = 0; i < n; i++)
		shape[i] = (int64_t)v[i];
	return fw_reshape(c->ctx, x, n, shape);
}

static struct fw_tensor *permute_attr(struct pcase *c, struct fw_tensor *x)
{
	double v[FW_MAX_DIMS];
	int perm[FW_MAX_DIMS];
	int n = attr_n(c, "perm", v, FW_MAX_DIMS);
	for (int i = 0; i < n; i++)
		perm[i] = (int)v[i];
	return fw_permute(c->ctx, x, perm);
}

static struct fw_tensor *b_reshape(struct pcase *c)
{
	return reshape_attr(c, in(c, "x"));
}

static struct fw_tensor *b_reshape_node(struct pcase *c)
{
	return fw_sigmoid(c->ctx, reshape_attr(c, fw_scale(c->ctx, in(c, "x"), 2.0f)));
}

static struct fw_tensor *b_reshape_of_transpose(struct pcase *c)
{
	return fw_tanh(c->ctx, reshape_attr(c, fw_transpose(c->ctx, in(c, "x"), 0, 1)));
}

static struct fw_tensor *b_reshape_of_slice(struct pcase *c)
{
	return fw_sigmoid(c->ctx, reshape_attr(c, b_slice(c)));
}

static struct fw_tensor *b_concat_of_views(struct pcase *c)
{
	struct fw_tensor *a = permute_attr(c, in(c, "a"));
	struct fw_tensor *b = fw_slice(c->ctx, in(c, "b"), 0, 1, 2);
	return fw_concat(c->ctx, a, b, attr_i(c, "axis"));
}

static struct fw_tensor *b_permute(struct pcase *c)
{
	return permute_attr(c, in(c, "x"));
}

static struct fw_tensor *b_permute_consumer(struct pcase *c)
{
	return fw_tanh(c->ctx, permute_attr(c, in(c, "x")));
}

static struct fw_tensor *b_permute4(struct pcase *c)
{
	return reshape_attr(c, fw_cont(c->ctx, permute_attr(c, in(c, "x"))));
}

static struct fw_tensor *b_transpose_cont(struct pcase *c)
{
	return fw_cont(c->ctx, fw_transpose(c->ctx, in(c, "x"), attr_i(c, "d0"),
					    attr_i(c, "d1")));
}

static struct fw_tensor *b_transpose_matmul(struct pcase *c)
{
	struct fw_tensor *kt = fw_transpose(c->ctx, in(c, "k"), attr_i(c, "d0"), attr_i(c, "d1"));
	return fw_matmul(c->ctx, in(c, "q"), kt, false, false);
}

static struct fw_tensor *b_sum(struct pcase *c)
{
	return fw_sum(c->ctx, in(c, "x"), attr_i(c, "axis"), attr_i(c, "keepdim"));
}

static struct fw_tensor *b_mean(struct pcase *c)
{
	return fw_mean(c->ctx, in(c, "x"), attr_i(c, "axis"), attr_i(c, "keepdim"));
}

static struct fw_tensor *b_cast_bf16(struct pcase *c)
{
	return fw_cast(c->ctx, fw_cast(c->ctx, in(c, "x"), FW_BF16), FW_F32);
}

static struct fw_tensor *b_attention(struct pcase *c)
{
	struct fw_ctx *x = c->ctx;
	struct fw_tensor *s = fw_matmul(x, in(c, "q"), in(c, "k"), false, true);
	struct fw_tensor *p = fw_softmax(x, s, NULL, true, (float)attr_f(c, "scale"));
	return fw_matmul(x, p, in(c, "v"), false, false);
}

static struct fw_tensor *b_mlp_block(struct pcase *c)
{
	struct fw_ctx *x = c->ctx;
	struct fw_tensor *h = fw_layernorm(x, in(c, "x"), in(c, "g"), in(c, "beta"),
					   (float)attr_f(c, "eps"));
	h = fw_gelu(x, fw_linear(x, h, in(c, "w1"), in(c, "b1")), FW_GELU_TANH);
	h = fw_linear(x, h, in(c, "w2"), in(c, "b2"));
	return fw_add(x, h, in(c, "x"));
}

/* --- half-precision activations: cases named *_bf16 or *_f16 --------------------- */

static enum fw_dtype case_half(struct pcase *c)
{
	size_t n = strlen(c->name);
	return n > 5 && !strcmp(c->name + n - 5, "_bf16") ? FW_BF16 : FW_F16;
}

/* Input name rounded to the case's half dtype. */
static struct fw_tensor *hin(struct pcase *c, const char *name)
{
	return fw_cast(c->ctx, in(c, name), case_half(c));
}

static struct fw_tensor *to_f32(struct pcase *c, struct fw_tensor *t)
{
	return t && t->dtype != FW_F32 ? fw_cast(c->ctx, t, FW_F32) : t;
}

static struct fw_tensor *b_gelu_half(struct pcase *c)
{
	return to_f32(c, fw_gelu(c->ctx, hin(c, "x"), attr_i(c, "form")));
}

static struct fw_tensor *b_silu_half(struct pcase *c)
{
	return to_f32(c, fw_silu(c->ctx, hin(c, "x")));
}

static struct fw_tensor *b_tanh_half(struct pcase *c)
{
	return to_f32(c, fw_tanh(c->ctx, hin(c, "x")));
}

static struct fw_tensor *b_scale_half(struct pcase *c)
{
	return to_f32(c, fw_scale(c->ctx, hin(c, "x"), (float)attr_f(c, "s")));
}

static struct fw_tensor *b_add_half(struct pcase *c)
{
	return to_f32(c, fw_add(c->ctx, hin(c, "a"), hin(c, "b")));
}

/* f32 + bf16: the result is f32 itself (checked by the harness). */
static struct fw_tensor *b_add_mixed(struct pcase *c)
{
	return fw_add(c->ctx, in(c, "a"), hin(c, "b"));
}

static struct fw_tensor *b_mul_half(struct pcase *c)
{
	return to_f32(c, fw_mul(c->ctx, hin(c, "a"), hin(c, "b")));
}

static struct fw_tensor *b_mul_mixed(struct pcase *c)
{
	return fw_mul(c->ctx, in(c, "a"), hin(c, "b"));
}

static struct fw_tensor *b_sub_half(struct pcase *c)
{
	return to_f32(c, fw_sub(c->ctx, hin(c, "a"), hin(c, "b")));
}

static struct fw_tensor *b_softmax_half(struct pcase *c)
{
	struct fw_tensor *bias = in_opt(c, "bias");
	if (!bias)
		bias = in_opt(c, "mask");
	return to_f32(c, fw_softmax(c->ctx, hin(c, "x"), bias, attr_i(c, "causal"),
				    (float)attr_f(c, "scale")));
}

static struct fw_tensor *b_softmax_shared_half(struct pcase *c)
{
	struct fw_tensor *h = fw_gelu(c->ctx, hin(c, "x"), 1);
	return to_f32(c, fw_add(c->ctx, fw_softmax(c->ctx, h, NULL, attr_i(c, "causal"),
						   (float)attr_f(c, "scale")), h));
}

static struct fw_tensor *b_layernorm_half(struct pcase *c)
{
	return to_f32(c, fw_layernorm(c->ctx, hin(c, "x"), in_opt(c, "w"), in_opt(c, "b"),
				      (float)attr_f(c, "eps")));
}

static struct fw_tensor *b_rmsnorm_half(struct pcase *c)
{
	return to_f32(c, fw_rmsnorm(c->ctx, hin(c, "x"), in_opt(c, "w"), (float)attr_f(c, "eps")));
}

static struct fw_tensor *b_cross_entropy_half(struct pcase *c)
{
	return fw_cross_entropy(c->ctx, hin(c, "logits"), in(c, "targets"), in_opt(c, "mask"),
				attr_i(c, "ignore_index"));
}

/* The f32 builder b under fw_ctx_set_autocast(ctx, the case's dtype). */
static struct fw_tensor *autocast(struct pcase *c, pbuild_fn b)
{
	ck_assert_int_eq(fw_ctx_set_autocast(c->ctx, case_half(c)), FW_OK);
	struct fw_tensor *y = b(c);
	ck_assert_int_eq(fw_ctx_set_autocast(c->ctx, FW_F32), FW_OK);
	return to_f32(c, y);
}

static struct fw_tensor *b_linear_autocast(struct pcase *c)
{
	return autocast(c, b_linear);
}

static struct fw_tensor *b_mlp_block_autocast(struct pcase *c)
{
	return autocast(c, b_mlp_block);
}

static struct fw_tensor *b_attention_autocast(struct pcase *c)
{
	return autocast(c, b_attention);
}

/* One direction of torch.nn.LSTM: the golden case names torch's parameters
 * (weight_ih_l0, ..., _reverse); fw's bias is b_ih + b_hh. */
static struct fw_tensor *lstm_dir(struct pcase *c, struct fw_tensor *x, int layer,
				  bool reverse)
{
	char n[4][40];
	static const char *const what[4] = { "weight_ih", "weight_hh", "bias_ih", "bias_hh" };
	for (int i = 0; i < 4; i++)
		snprintf(n[i], sizeof(n[i]), "%s_l%d%s", what[i], layer, reverse ? "_reverse" : "");
	struct fw_tensor *b = in(c, n[2]), *bh = in_opt(c, n[3]);
	if (bh)
		b = fw_add(c->ctx, b, bh);
	return fw_lstm(c->ctx, x, in(c, n[0]), in(c, n[1]), b, reverse);
}

static struct fw_tensor *b_lstm(struct pcase *c)
{
	return lstm_dir(c, in(c, "x"), 0, attr_i(c, "reverse"));
}

static struct fw_tensor *b_lstm_bidir_2layer(struct pcase *c)
{
	struct fw_tensor *x = in(c, "x");
	for (int l = 0; l < 2; l++)
		x = fw_concat(c->ctx, lstm_dir(c, x, l, false), lstm_dir(c, x, l, true), 2);
	return x;
}

/* --- the case table ---------------------------------------------------------------- */

struct pentry {
	const char *name;
	pbuild_fn build;
	double rtol, atol;       /* 0, 0: the defaults */
};

#define RTOL 1e-5
#define ATOL 1e-6
#define EXACT -1.0           /* rtol = atol = 0 */
#define BF16_ULP 0x1p-7
#define F16_ULP 0x1p-10

static const struct pentry cases[] = {
	{ "matmul_plain", b_matmul, 0, 0 },
	{ "matmul_ta", b_matmul, 0, 0 },
	{ "matmul_tb", b_matmul, 0, 0 },
	{ "matmul_tab", b_matmul, 0, 0 },
	{ "matmul_b3", b_matmul, 0, 0 },
	{ "matmul_b3_ta", b_matmul, 0, 0 },
	{ "matmul_b4_tb", b_matmul, 0, 0 },
	{ "matmul_b4", b_matmul, 0, 0 },
	{ "matmul_bcast", b_matmul, 0, 0 },
	{ "matmul_bcast_tb", b_matmul, 0, 0 },
	{ "matmul_bcast_ta", b_matmul, 0, 0 },
	{ "matmul_big", b_matmul, 0, 0 },
	/* Operands are bf16 (both sides rounded identically), but a bf16 matmul
	 * may also round the incoming gradient to bf16 in backward (8 bits of
	 * mantissa, 2^-9 relative), as torch's bf16 autograd does. */
	{ "matmul_bf16", b_matmul_bf16, 1e-2, 1e-2 },
	{ "linear_bias", b_linear, 0, 0 },
	{ "linear_nobias", b_linear, 0, 0 },
	{ "add_same", b_add, 0, 0 }, { "add_row", b_add, 0, 0 }, { "add_gen", b_add, 0, 0 },
	{ "add_left", b_add, 0, 0 }, { "add_col", b_add, 0, 0 },
	{ "sub_same", b_sub, 0, 0 }, { "sub_row", b_sub, 0, 0 }, { "sub_gen", b_sub, 0, 0 },
	{ "sub_left", b_sub, 0, 0 }, { "sub_col", b_sub, 0, 0 },
	{ "mul_same", b_mul, 0, 0 }, { "mul_row", b_mul, 0, 0 }, { "mul_gen", b_mul, 0, 0 },
	{ "mul_left", b_mul, 0, 0 }, { "mul_col", b_mul, 0, 0 },
	{ "scale", b_scale, 0, 0 },
	{ "embedding", b_embedding, 0, 0 },
	{ "embedding_oob", b_embedding, 0, 0 },
	{ "layernorm_wb", b_layernorm, 0, 0 },
	{ "layernorm_none", b_layernorm, 0, 0 },
	{ "layernorm_w", b_layernorm, 0, 0 },
	{ "layernorm_b", b_layernorm, 0, 0 },
	{ "rmsnorm_w", b_rmsnorm, 0, 0 },
	{ "rmsnorm_none", b_rmsnorm, 0, 0 },
	{ "gelu_erf", b_gelu, 0, 0 },
	{ "gelu_tanh", b_gelu, 0, 0 },
	{ "relu", b_relu, 0, 0 },
	{ "silu", b_silu, 0, 0 },
	{ "tanh", b_tanh, 0, 0 },
	{ "sigmoid", b_sigmoid, 0, 0 },
	{ "softmax_plain", b_softmax, 0, 0 },
	{ "softmax_scale", b_softmax, 0, 0 },
	{ "softmax_causal", b_softmax, 0, 0 },
	{ "softmax_causal_tq_lt_tk", b_softmax, 0, 0 },
	{ "softmax_bias", b_softmax, 0, 0 },
	{ "softmax_bias_causal", b_softmax, 0, 0 },
	{ "softmax_padmask", b_softmax, 0, 0 },
	{ "softmax_rowmask", b_softmax, 0, 0 },
	{ "softmax_wide", b_softmax, 0, 0 },
	{ "ce_plain", b_cross_entropy, 0, 0 },
	{ "ce_ignore", b_cross_entropy, 0, 0 },
	{ "ce_mask", b_cross_entropy, 0, 0 },
	{ "ce_mask_ignore_oob", b_cross_entropy, 0, 0 },
	{ "ce_custom_ignore", b_cross_entropy, 0, 0 },
	{ "ce_none_counted", b_cross_entropy, 0, 0 },
	{ "ce_wide", b_cross_entropy, 0, 0 },
	{ "concat_axis0", b_concat, 0, 0 },
	{ "concat_last", b_concat, 0, 0 },
	{ "concat_neg", b_concat, 0, 0 },
	{ "slice_mid", b_slice, 0, 0 },
	{ "slice_first", b_slice, 0, 0 },
	{ "slice_neg_tanh", b_slice_tanh, 0, 0 },
	{ "reshape", b_reshape, 0, 0 },
	{ "reshape_node", b_reshape_node, 0, 0 },
	{ "reshape_of_transpose", b_reshape_of_transpose, 0, 0 },
	{ "reshape_of_slice", b_reshape_of_slice, 0, 0 },
	{ "concat_of_views", b_concat_of_views, 0, 0 },
	{ "permute", b_permute, 0, 0 },
	{ "permute_consumer", b_permute_consumer, 0, 0 },
	{ "permute4_cont_reshape", b_permute4, 0, 0 },
	{ "transpose_cont", b_transpose_cont, 0, 0 },
	{ "transpose_matmul", b_transpose_matmul, 0, 0 },
	{ "sum_axis", b_sum, 0, 0 },
	{ "sum_keep_last", b_sum, 0, 0 },
	{ "sum_all", b_sum, 0, 0 },
	{ "sum_all_keep", b_sum, 0, 0 },
	/* 12288 terms in [-1, 1]: f32 summation error grows with the partial
	 * sums' magnitude (~1e2 here), a few ulp of it is ~1e-5 absolute. */
	{ "sum_all_large", b_sum, 1e-5, 5e-5 },
	{ "mean_axis0", b_mean, 0, 0 },
	{ "mean_keep", b_mean, 0, 0 },
	{ "mean_all", b_mean, 0, 0 },
	{ "mean_large_axis", b_mean, 0, 0 },
	/* Rounding to bf16 is exact arithmetic (round to nearest even) and the
	 * gradient is passed through unchanged: bit-exact. */
	{ "cast_bf16", b_cast_bf16, EXACT, EXACT },
	{ "attention", b_attention, 0, 0 },
	{ "mlp_block", b_mlp_block, 0, 0 },
	{ "lstm", b_lstm, 0, 0 },
	{ "lstm_reverse", b_lstm, 0, 0 },
	{ "lstm_bidir_2layer", b_lstm_bidir_2layer, 0, 0 },
};

#define N_CASES ((int)(sizeof(cases) / sizeof(cases[0])))

/* Half-precision activations (autocast); out_rtol bounds the output. */
struct hentry {
	struct pentry e;
	double out_rtol;
};

static const struct hentry half_cases[] = {
	/* Half-precision activations: the output may differ from the correctly
	 * rounded one by one rounding (2^-7 relative in bf16, 2^-10 in f16);
	 * gradients are f32 arithmetic on the same half values (defaults). */
	{ { "gelu_tanh_bf16", b_gelu_half, 0, 0 }, BF16_ULP },
	{ { "gelu_erf_f16", b_gelu_half, 0, 0 }, F16_ULP },
	{ { "silu_bf16", b_silu_half, 0, 0 }, BF16_ULP },
	/* backward reads the rounded y: where fw's f32 tanh rounds to the other
	 * neighbour, 1 - y^2 moves by up to 2 ulp(y) = 2^-10 */
	{ { "tanh_f16", b_tanh_half, 0, 0x1p-10 }, F16_ULP },
	{ { "scale_bf16", b_scale_half, 0, 0 }, BF16_ULP },
	{ { "add_row_bf16", b_add_half, 0, 0 }, BF16_ULP },
	{ { "add_mixed_bf16", b_add_mixed, 0, 0 }, 0 },
	{ { "sub_col_f16", b_sub_half, 0, 0 }, F16_ULP },
	{ { "mul_row_bf16", b_mul_half, 0, 0 }, BF16_ULP },
	{ { "mul_mixed_f16", b_mul_mixed, 0, 0 }, 0 },
	{ { "softmax_causal_bias_bf16", b_softmax_half, 0, 0 }, BF16_ULP },
	{ { "softmax_rowmask_f16", b_softmax_half, 0, 0 }, F16_ULP },
	{ { "softmax_wide_bf16", b_softmax_half, 0, 0 }, BF16_ULP },
	{ { "softmax_shared_bf16", b_softmax_shared_half, 0, 0 }, BF16_ULP },
	{ { "layernorm_wb_bf16", b_layernorm_half, 0, 0 }, BF16_ULP },
	{ { "layernorm_none_f16", b_layernorm_half, 0, 0 }, F16_ULP },
	{ { "rmsnorm_w_bf16", b_rmsnorm_half, 0, 0 }, BF16_ULP },
	{ { "ce_wide_bf16", b_cross_entropy_half, 0, 0 }, 0 },
	{ { "ce_mask_f16", b_cross_entropy_half, 0, 0 }, 0 },
	/* Under autocast: chains of bf16 roundings, and matmul backward rounds
	 * the output gradient to bf16 (as matmul_bf16). */
	{ { "linear_autocast_bf16", b_linear_autocast, 1e-2, 1e-2 }, 0 },
	{ { "mlp_block_autocast_bf16", b_mlp_block_autocast, 1e-2, 1e-2 }, 0 },
	{ { "attention_autocast_bf16", b_attention_autocast, 1e-2, 1e-2 }, 0 },
};

#define N_HALF_CASES ((int)(sizeof(half_cases) / sizeof(half_cases[0])))

/* Compares fw's f32 values with the golden dataset at path. */
static int64_t compare(struct pcase *c, const struct pentry *e, const char *what,
		       const float *got, const char *path)
{
	struct fwt_array a;
	ck_assert_msg(fwt_h5_read(c->h5, path, &a) == 0, "cannot read %s", path);
	double rtol = e->rtol ? e->rtol : RTOL, atol = e->atol ? e->atol : ATOL;
	if (c->out_rtol && !strcmp(what, "output"))
		rtol = c->out_rtol;
	if (e->rtol == EXACT) {
		rtol = 0;
		atol = 0;
	}
	char label[256];
	snprintf(label, sizeof(label), "%s: %s", c->name, what);
	int64_t bad = fwt_allclose(label, got, a.data, a.n, rtol,
				   atol * fmax(1.0, fwt_maxabs(a.data, a.n)));
	fwt_array_free(&a);
	return bad;
}

/* Whether t has the golden shape (the difference is printed); a different
 * element count fails at once, a different shape of the same count lets
 * the values still be compared. */
static bool check_shape(struct pcase *c, const struct fw_tensor *t, const char *path)
{
	struct fwt_array a;
	char sh[64], want[64] = "[";
	ck_assert_msg(fwt_h5_read(c->h5, path, &a) == 0, "cannot read %s", path);
	bool same = a.ndim == t->ndim;
	for (int i = 0; i < a.ndim; i++) {
		same = same && a.ne[i] == t->ne[i];
		snprintf(want + strlen(want), sizeof(want) - strlen(want), "%s%lld",
			 i ? ", " : "", (long long)a.ne[i]);
	}
	strcat(want, "]");
	int64_t n = a.n;
	fwt_array_free(&a);
	fw_shape_str(t, sh, sizeof(sh));
	ck_assert_msg(n == fw_nelem(t), "%s: %s has shape %s, torch's is %s", c->name, path,
		      sh, want);
	if (!same)
		fprintf(stderr, "%s: %s has shape %s, torch's is %s\n", c->name, path, sh, want);
	return same;
}

static void run_case(const struct pentry *e, double out_rtol)
{
	struct pcase c = { .name = e->name, .out_rtol = out_rtol };
	char path[256];

	golden_open();
	c.h5 = golden;
	ck_assert_msg(fwt_h5_exists(golden, e->name),
		      "%s: no such case in %s: regenerate it with tests/gen_golden.py",
		      e->name, golden_path);
	c.ctx = fw_ctx_new();
	ck_assert_ptr_nonnull(c.ctx);

	struct fw_tensor *out = e->build(&c);
	ck_assert_msg(out != NULL, "%s: building the op failed: %s", e->name,
		      fw_ctx_err(c.ctx)->msg);
	snprintf(path, sizeof(path), "%s/out", e->name);
	bool shape_ok = check_shape(&c, out, path);
	ck_assert_msg(out->dtype == FW_F32, "%s: output is %s", e->name,
		      fw_dtype_name(out->dtype));

	/* Every input the golden case stores must be one the builder used. */
	char *names[64];
	int nn = fwt_h5_list(golden, e->name, names, 64), unused = 0;
	for (int i = 0; i < nn; i++) {
		bool used = !strcmp(names[i], "out") || !strcmp(names[i], "R") ||
			    !strcmp(names[i], "grad");
		for (int k = 0; k < c.n_in && !used; k++)
			used = strcmp(c.in[k].name, names[i]) == 0;
		if (!used)
			fprintf(stderr, "%s: golden input %s not used by the builder\n",
				e->name, names[i]);
		unused += !used;
		free(names[i]);
	}
	ck_assert_msg(unused == 0, "%s: the builder ignores %d golden inputs", e->name, unused);
	struct fw_tensor *r = fw_input(c.ctx, "parity.R", FW_F32, out->ndim, out->ne);
	struct fw_tensor *loss = fw_sum(c.ctx, fw_mul(c.ctx, out, r), FW_AXIS_ALL, false);
	ck_assert_msg(loss != NULL, "%s: loss: %s", e->name, fw_ctx_err(c.ctx)->msg);
	struct fw_tensor *outs[2] = { loss, out };
	struct fw_graph *g = fw_graph_new(c.ctx, outs, 2, &(struct fw_graph_opts){
		.backward = true, .training = true });
	ck_assert_msg(g != NULL, "%s: graph: %s", e->name, fw_ctx_err(c.ctx)->msg);

	struct fwt_array ra;
	snprintf(path, sizeof(path), "%s/R", e->name);
	ck_assert_int_eq(fwt_h5_read(golden, path, &ra), 0);
	ck_assert_int_eq(ra.n, fw_nelem(r));
	fwt_write(r, ra.data);
	fwt_array_free(&ra);
	for (int i = 0; i < c.n_in; i++)
		fwt_write(c.in[i].t, c.in[i].a.data);

	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);

	int64_t bad = 0, n = fw_nelem(out);
	float *buf = malloc((size_t)n * sizeof(float));
	fwt_read_f32(out, buf);
	snprintf(path, sizeof(path), "%s/out", e->name);
	bad += compare(&c, e, "output", buf, path);
	free(buf);

	int n_grads = 0;
	for (int i = 0; i < c.n_in; i++) {
		struct fw_tensor *t = c.in[i].t;
		char what[96];
		snprintf(path, sizeof(path), "%s/grad/%s", e->name, c.in[i].name);
		bool want = fwt_h5_exists(golden, path);
		bool trainable = (t->flags & FW_FLAG_TRAINABLE) != 0;
		ck_assert_msg(want == trainable, "%s: input %s: trainable %d but golden grad %d",
			      e->name, c.in[i].name, trainable, want);
		if (!want)
			continue;
		ck_assert_msg(t->grad && t->grad->data, "%s: input %s has no gradient",
			      e->name, c.in[i].name);
		snprintf(what, sizeof(what), "grad %s", c.in[i].name);
		bad += compare(&c, e, what, fw_f32(t->grad), path);
		n_grads++;
	}
	ck_assert_msg(n_grads > 0, "%s: no gradient compared", e->name);

	for (int i = 0; i < c.n_in; i++)
		fwt_array_free(&c.in[i].a);
	fw_graph_free(g);
	fw_ctx_free(c.ctx);
	fwt_h5_close(golden);
	ck_assert_msg(bad == 0, "%s: %lld values differ from torch (details on stderr)",
		      e->name, (long long)bad);
	ck_assert_msg(shape_ok, "%s: values match torch but the output shape differs "
		      "(details on stderr)", e->name);
}

START_TEST(test_case)
{
	run_case(&cases[_i], 0);
}
END_TEST

START_TEST(test_half_case)
{
	run_case(&half_cases[_i].e, half_cases[_i].out_rtol);
}
END_TEST

/* The golden file and this table cover the same cases. */
START_TEST(test_coverage)
{
	char *names[512];
	golden_open();
	int n = fwt_h5_list(golden, "/", names, 512);
	int missing = 0;
	for (int i = 0; i < n; i++) {
		bool found = false;
		for (int k = 0; k < N_CASES && !found; k++)
			found = strcmp(cases[k].name, names[i]) == 0;
		for (int k = 0; k < N_HALF_CASES && !found; k++)
			found = strcmp(half_cases[k].e.name, names[i]) == 0;
		if (!found) {
			fprintf(stderr, "golden case %s has no builder in test_parity.c\n",
				names[i]);
			missing++;
		}
		free(names[i]);
	}
	fwt_h5_close(golden);
	ck_assert_msg(missing == 0, "%d golden cases are not tested", missing);
	ck_assert_msg(n >= N_CASES + N_HALF_CASES,
		      "the golden file has %d cases, the tables %d: regenerate it", n,
		      N_CASES + N_HALF_CASES);
}
END_TEST

int main(void)
{
	fw_machine_report(stdout);      /* which matmul kernel each dtype runs on */
	Suite *s = suite_create("parity");
	TCase *tc = fwt_tcase("golden", 120);
	tcase_add_test(tc, test_coverage);
	tcase_add_loop_test(tc, test_case, 0, N_CASES);
	tcase_add_loop_test(tc, test_half_case, 0, N_HALF_CASES);
	suite_add_tcase(s, tc);
	return fwt_run_suite(s);
}
