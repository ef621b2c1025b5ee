/* arch/encdec - an encoder-decoder transformer: T5 (v1.0, v1.1, Flan-T5).
 *
 * As Hugging Face's T5ForConditionalGeneration. One embedding table
 * ("shared") feeds both stacks. Each block is pre-norm with T5's LayerNorm
 * (RMS: weight * x / sqrt(mean(x^2) + eps), no mean, no bias) and no biases
 * anywhere. Encoder block: x += SelfAttention(LN(x)) (bidirectional, the
 * encoder's padding mask); x += FFN(LN(x)). Decoder block: x +=
 * SelfAttention(LN(x)) (causal); x += EncDecAttention(LN(x), encoder output)
 * (FW_MASK_CROSS, the encoder's padding mask); x += FFN(LN(x)). Each stack
 * ends with final_layer_norm. Attention scores are not scaled (spec.scale =
 * 1: T5 folds 1/sqrt(d) into the init) and carry a learned relative
 * position bias (FW_POS_RELATIVE): its table lives in the first block of
 * each stack and the (H, Tq, Tk) bias it gives is shared by every block of
 * that stack (op encdec.relbias, buckets of t5_bucket.h). FFN: ReLU (T5
 * v1.0: wo(relu(wi x))), or gated GELU (v1.1, Flan-T5: wo(gelu_tanh(wi_0 x)
 * * wi_1 x)). Head: tied to "shared" with the decoder output scaled by
 * d_model^-0.5, or an untied lm_head.
 *
 * Inputs (FW_HEAD_SEQ2SEQ): enc_tokens (B, T) the encoder's ids; tokens (B,
 * T) the decoder's ids (the host shifts the targets right behind the
 * decoder start token); targets (B, T) (-1: not in the loss); enc_bias (B,
 * 1, 1, T) f32, 0 on a real encoder token and -inf on padding (the host
 * fills it; every encoder query and every decoder query in cross-attention
 * sees the real tokens only). Decoder padding follows the targets, so the
 * causal mask already keeps it from every real position. Parameter names
 * are Hugging Face's keys.
 * Decoding (m->caches, fw_model.enc_len; fw/runtime/seq2seq.h): the encoder
 * pass over enc_len positions ends in each decoder layer's cross-attention K
 * and V (m->cross_out); the one-token decoder step reads them from inputs
 * (m->cross_in), keeps its self-attention keys and values in the caches and
 * takes the relative bias of the query at the cache length.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "fw/plugin.h"
#include "hf_t5.h"
#include "t5_bucket.h"

enum ffn_kind { FFN_RELU = 0, FFN_GATED_GELU, FFN_GATED_RELU, FFN_GELU };

struct encdec {
	const struct fw_host *host;
	int64_t vocab, d_model, d_kv, d_ff, n_enc, n_dec, n_head, buckets, max_distance;
	float dropout, eps;
	enum ffn_kind ffn;
	bool tie, recompute;
	int relbias_op;
};

/* Kernels run without state; the host table of the process (one fw). */
static const struct fw_host *g_host;

/* --- encdec.relbias ---------------------------------------------------------------
 *
 * src0 the table (buckets, H) f32, optional src1 the cache length i32 [1]
 * (query i sits at position len + i + p4.i; else i + p4.i); p0.i Tq, p1.i
 * Tk, p2.i bidirectional, p3.i max_distance, p4.i a fixed query offset (a
 * prefix's keys in front of the real ones). out (H, Tq, Tk) = table[bucket(j - i'),
 * h]; backward adds each out gradient into its bucket's row. */

static enum fw_status relbias_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *t = out->src[0], *len = out->src[1];
	if (t->ndim != 2 || t->dtype != FW_F32)
		return fw_errorf(err, FW_ERR_SHAPE, "encdec.relbias: the table must be f32 "
				 "(buckets, heads)");
	if (len && (len->dtype != FW_I32 || fw_nelem(len) != 1))
		return fw_errorf(err, FW_ERR_SHAPE, "encdec.relbias: the offset must be i32 [1]");
	out->dtype = FW_F32;
	out->ndim = 3;
	out->ne[0] = t->ne[1];
	out->ne[1] = out->params[0].i;
	out->ne[2] = out->params[1].i;
	return FW_OK;
}

static int relbias_bucket(const struct fw_tensor *out, int64_t i, int64_t j)
{
	int64_t off = (out->src[1] ? fw_i32(out->src[1])[0] : 0) + out->params[4].i;
	return t5_relative_bucket(j - (i + off), out->params[2].i != 0,
				  (int)out->src[0]->ne[0], out->params[3].i);
}

static void relbias_rows(void *arg, int64_t r0, int64_t r1)
{
	struct fw_tensor *out = arg;
	int64_t H = out->ne[0], Tq = out->ne[1], Tk = out->ne[2];
	const float *tab = fw_f32(out->src[0]);
	for (int64_t r = r0; r < r1; r++) {             /* r = h * Tq + i */
		int64_t h = r / Tq, i = r % Tq;
		float *y = fw_f32(out) + r * Tk;
		for (int64_t j = 0; j < Tk; j++)
			y[j] = tab[relbias_bucket(out, i, j) * H + h];
	}
}

static void relbias_grad_heads(void *arg, int64_t h0, int64_t h1)
{
	struct fw_tensor *out = arg;
	int64_t H = out->ne[0], Tq = out->ne[1], Tk = out->ne[2];
	float *dt = fw_f32(out->src[0]->grad);
	for (int64_t h = h0; h < h1; h++)               /* each head owns its column */
		for (int64_t i = 0; i < Tq; i++) {
			const float *dy = fw_f32(out->grad) + (h * Tq + i) * Tk;
			for (int64_t j = 0; j < Tk; j++)
				dt[relbias_bucket(out, i, j) * H + h] += dy[j];
		}
}

static void relbias_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	g_host->parallel_for(out->ne[0] * out->ne[1], relbias_rows, out);
}

static void relbias_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	if (out->src[0]->grad)
		g_host->parallel_for(out->ne[0], relbias_grad_heads, out);
}

static uint32_t relbias_saved(const struct fw_tensor *out)
{
	return out->src[1] ? 1u << 1 : 0;   /* backward reads the offset, not the table */
}

static const struct fw_op_i relbias_op = {
	.size = sizeof(struct fw_op_i),
	.name = "encdec.relbias",
	.infer = relbias_infer,
	.forward = relbias_forward,
	.backward = relbias_backward,
	.saved = relbias_saved,
};

/* --- the model --------------------------------------------------------------------- */

static struct fw_tensor *weight(const struct encdec *e, struct fw_model *m, int nd, int64_t d0,
				int64_t d1, const char *name, float std)
{
	int64_t shape[2] = { d0, d1 };
	struct fw_tensor *w = e->host->param(m->ctx, name, FW_F32, nd, shape, true);
	if (std > 0)
		e->host->init_normal(m, w, std);
	else
		e->host->init_const(m, w, 1.0f);
	return w;
}

/* T5's LayerNorm "<prefix>.weight": RMS, no bias. */
static struct fw_tensor *norm(const struct encdec *e, struct fw_model *m, struct fw_tensor *x,
			      const char *prefix)
{
	char n[FW_NAME_MAX];
	snprintf(n, sizeof(n), "%s.weight", prefix);
	return e->host->rmsnorm(m->ctx, x, weight(e, m, 1, e->d_model, 0, n, 0), e->eps);
}

/* A named bias-free linear "<name>.weight" (out, in), routed through the host
 * so that a PEFT plugin can wrap it; T5's init std. */
static struct fw_tensor *linear(const struct encdec *e, struct fw_model *m, struct fw_tensor *x,
				int64_t in, int64_t out, const char *name, float std)
{
	char n[FW_NAME_MAX];
	snprintf(n, sizeof(n), "%s.weight", name);
	return e->host->linear(m, name, x, weight(e, m, 2, out, in, n, std), NULL);
}

static struct fw_tensor *dropout(const struct encdec *e, struct fw_model *m, struct fw_tensor *x,
				 int salt)
{
	if (e->dropout <= 0.0f || !m->training || !x)
		return x;
	return e->host->dropout(m->ctx, x, e->dropout, m->seed * 1000003u + (uint64_t)salt);
}

/* The relative position bias (H, Tq, Tk) of a stack from the table in its
 * first block. */
static struct fw_tensor *position_bias(const struct encdec *e, struct fw_model *m,
				       const char *stack, bool bidirectional, int64_t Tq,
				       int64_t Tk, struct fw_tensor *offset, int64_t prefix)
{
	char n[FW_NAME_MAX];
	snprintf(n, sizeof(n), "%s.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
		 stack);
	struct fw_tensor *tab = weight(e, m, 2, e->buckets, e->n_head, n,
				       1.0f / sqrtf((float)e->d_model));
	union fw_param p[5] = { { .i = (int32_t)Tq }, { .i = (int32_t)(Tk + prefix) },
				{ .i = bidirectional }, { .i = (int32_t)e->max_distance },
				{ .i = (int32_t)prefix } };
	struct fw_tensor *src[2] = { tab, offset };
	return e->host->op(m->ctx, e->relbias_op, src, offset ? 2 : 1, p, 5);
}

/* K or V ("k", "v") of T5Attention at prefix from kv (B, Tk, C), as heads
 * (B, Tk, H, D). */
static struct fw_tensor *kv_heads(const struct encdec *e, struct fw_model *m,
				  struct fw_tensor *kv, const char *prefix, const char *which)
{
	int64_t C = e->d_model, H = e->n_head, D = e->d_kv;
	if (!kv)
		return NULL;
	int64_t shape[4] = { kv->ne[0], kv->ne[1], H, D };
	char n[FW_NAME_MAX];
	snprintf(n, sizeof(n), "%s.%s", prefix, which);
	return e->host->reshape(m->ctx, linear(e, m, kv, C, H * D, n, 1.0f / sqrtf((float)C)), 4,
				shape);
}

/* A decoding model's cross-attention K/V of one decoder layer: the encoder
 * pass ends in *k, *v (cross_out[2l], [2l + 1]); the one-token steps read
 * inputs "cross.<l>.k" / ".v" of their shape (cross_in) instead. */
static void cross_inputs(const struct encdec *e, struct fw_model *m, int l,
			 struct fw_tensor **k, struct fw_tensor **v)
{
	char name[FW_NAME_MAX];
	m->cross_out[2 * l] = *k;
	m->cross_out[2 * l + 1] = *v;
	snprintf(name, sizeof(name), "cross.%d.k", l);
	*k = m->cross_in[2 * l] = e->host->input(m->ctx, name, FW_F32, 4, (*k)->ne);
	snprintf(name, sizeof(name), "cross.%d.v", l);
	*v = m->cross_in[2 * l + 1] = e->host->input(m->ctx, name, FW_F32, 4, (*v)->ne);
}

/* T5Attention at <prefix> (".SelfAttention" or ".EncDecAttention"): queries
 * from x (B, Tq, C); keys and values from kv (B, Tk, C); cache while
 * decoding; cross >= 0: decoder layer cross's cross-attention of a decoding
 * model (cross_inputs). Its linears come in the training model's order,
 * which a peft plugin's adapter file follows. */
static struct fw_tensor *attention(const struct encdec *e, struct fw_model *m,
				   struct fw_tensor *x, struct fw_tensor *kv, int cross,
				   const char *prefix, int layer, enum fw_mask_kind mask,
				   struct fw_tensor *bias, struct fw_tensor *pos_bias,
				   struct fw_kv_cache *cache)
{
	const struct fw_host *h = e->host;
	if (!x || !kv)
		return NULL;            /* an earlier step failed: ctx_err has it */
	int64_t B = x->ne[0], Tq = x->ne[1], C = e->d_model, H = e->n_head;
	int64_t D = e->d_kv, inner = H * D;
	char n[FW_NAME_MAX];
	int64_t q_shape[4] = { B, Tq, H, D }, flat[3] = { B, Tq, inner };
	snprintf(n, sizeof(n), "%s.q", prefix);
	struct fw_tensor *q = h->reshape(m->ctx, linear(e, m, x, C, inner, n,
							 1.0f / sqrtf((float)(C * D))), 4, q_shape);
	struct fw_tensor *k = kv_heads(e, m, kv, prefix, "k"), *v = kv_heads(e, m, kv, prefix, "v");
	if (cross >= 0 && k && v)
		cross_inputs(e, m, cross, &k, &v);
	struct fw_attn_spec spec = {
		.size = sizeof(spec), .name = prefix, .layer = layer, .n_head = (int)H,
		.n_kv_head = (int)H, .head_dim = (int)D, .mask = mask, .bias = bias,
		.pos = pos_bias ? FW_POS_RELATIVE : FW_POS_NONE, .pos_bias = pos_bias,
		.rope_base = 10000.0f, .dropout = m->training ? e->dropout : 0.0f,
		.seed = m->seed * 7919u + (uint64_t)layer, .scale = 1.0f, .cache = cache,
	};
	struct fw_tensor *y = h->reshape(m->ctx, h->attention(m, &spec, q, k, v), 3, flat);
	snprintf(n, sizeof(n), "%s.o", prefix);
	return linear(e, m, y, inner, C, n, 1.0f / sqrtf((float)inner));
}

/* T5DenseActDense / T5DenseGatedActDense at <prefix>.DenseReluDense. */
static struct fw_tensor *ffn(const struct encdec *e, struct fw_model *m, struct fw_tensor *x,
			     const char *prefix, int salt)
{
	const struct fw_host *h = e->host;
	int64_t C = e->d_model, Fd = e->d_ff;
	float si = 1.0f / sqrtf((float)C);
	char n[FW_NAME_MAX];
	bool gated = e->ffn == FFN_GATED_GELU || e->ffn == FFN_GATED_RELU;
	snprintf(n, sizeof(n), gated ? "%s.DenseReluDense.wi_0" : "%s.DenseReluDense.wi", prefix);
	struct fw_tensor *a = linear(e, m, x, C, Fd, n, si);
	if (e->ffn == FFN_GATED_GELU)
		a = h->gelu(m->ctx, a, FW_GELU_TANH);       /* gelu_new */
	else if (e->ffn == FFN_GELU)
		a = h->gelu(m->ctx, a, FW_GELU_ERF);
	else
		a = h->relu(m->ctx, a);
	if (gated) {
		snprintf(n, sizeof(n), "%s.DenseReluDense.wi_1", prefix);
		a = h->mul(m->ctx, a, linear(e, m, x, C, Fd, n, si));
	}
	a = dropout(e, m, a, salt);
	snprintf(n, sizeof(n), "%s.DenseReluDense.wo", prefix);
	return linear(e, m, a, Fd, C, n, 1.0f / sqrtf((float)Fd));
}

/* x + dropout(y): a residual branch. */
static struct fw_tensor *residual(const struct encdec *e, struct fw_model *m, struct fw_tensor *x,
				  struct fw_tensor *y, int salt)
{
	return e->host->add(m->ctx, x, dropout(e, m, y, salt));
}

static struct fw_tensor *encoder(const struct encdec *e, struct fw_model *m, struct fw_tensor *x,
				 struct fw_tensor *enc_bias)
{
	const struct fw_host *h = e->host;
	if (!x)
		return NULL;
	int64_t T = x->ne[1];
	struct fw_tensor *pb = position_bias(e, m, "encoder", true, T, T, NULL, 0);
	char p[64], n[96];
	for (int l = 0; l < e->n_enc; l++) {
		if (e->recompute)
			h->checkpoint_begin(m->ctx);
		snprintf(p, sizeof(p), "encoder.block.%d.layer", l);
		snprintf(n, sizeof(n), "%s.0.layer_norm", p);
		struct fw_tensor *y = norm(e, m, x, n);
		snprintf(n, sizeof(n), "%s.0.SelfAttention", p);
		x = residual(e, m, x, attention(e, m, y, y, -1, n, l, FW_MASK_BIDIRECTIONAL,
						enc_bias, pb, NULL), 10 * l);
		snprintf(n, sizeof(n), "%s.1.layer_norm", p);
		y = norm(e, m, x, n);
		snprintf(n, sizeof(n), "%s.1", p);
		x = residual(e, m, x, ffn(e, m, y, n, 10 * l + 1), 10 * l + 2);
		if (e->recompute)
			h->checkpoint_end(m->ctx);
	}
	return dropout(e, m, norm(e, m, x, "encoder.final_layer_norm"), -3);
}

/* The decoder over x (B, T, C), cross-attention K/V from the encoder
 * output enc. Decoding (m->caches, T = 1): self-attention through the
 * caches, the position bias of the query at the cache length, and the
 * cross-attention K/V read from inputs (cross_inputs). */
static struct fw_tensor *decoder(const struct encdec *e, struct fw_model *m, struct fw_tensor *x,
				 struct fw_tensor *enc, struct fw_tensor *enc_bias)
{
	const struct fw_host *h = e->host;
	if (!x)
		return NULL;
	int64_t T = x->ne[1];
	struct fw_kv_cache *caches = m->caches;
	/* a peft prefix (its wrap_embed ran on the encoder's inputs) takes key
	 * positions 0..P-1 of each self-attention, the targets P..; decoding, it
	 * fills the caches' first rows and the cache length counts it */
	int64_t P = FW_HAS(m, n_prefix) && m->n_prefix > 0 ? m->n_prefix : 0;
	struct fw_tensor *pb = caches ?
		position_bias(e, m, "decoder", false, T, caches[0].max_len, caches[0].len, 0) :
		position_bias(e, m, "decoder", false, T, T, NULL, P);
	char p[64], n[96];
	for (int l = 0; l < e->n_dec; l++) {
		int layer = (int)e->n_enc + 2 * l, salt = 10 * layer;
		if (e->recompute)
			h->checkpoint_begin(m->ctx);
		snprintf(p, sizeof(p), "decoder.block.%d.layer", l);
		snprintf(n, sizeof(n), "%s.0.layer_norm", p);
		struct fw_tensor *y = norm(e, m, x, n);
		snprintf(n, sizeof(n), "%s.0.SelfAttention", p);
		x = residual(e, m, x, attention(e, m, y, y, -1, n, layer, FW_MASK_CAUSAL, NULL, pb,
						caches ? &caches[l] : NULL), salt);
		snprintf(n, sizeof(n), "%s.1.layer_norm", p);
		y = norm(e, m, x, n);
		snprintf(n, sizeof(n), "%s.1.EncDecAttention", p);
		x = residual(e, m, x, attention(e, m, y, enc, caches ? l : -1, n, layer + 1,
						FW_MASK_CROSS, enc_bias, NULL, NULL), salt + 1);
		snprintf(n, sizeof(n), "%s.2.layer_norm", p);
		y = norm(e, m, x, n);
		snprintf(n, sizeof(n), "%s.2", p);
		x = residual(e, m, x, ffn(e, m, y, n, salt + 2), salt + 3);
		if (e->recompute)
			h->checkpoint_end(m->ctx);
	}
	return dropout(e, m, norm(e, m, x, "decoder.final_layer_norm"), -4);
}

/* A decoding model's cross_out and cross_in arrays (fw_model's n_cross),
 * filled by cross_inputs. */
static enum fw_status cross_alloc(const struct encdec *e, struct fw_model *m, struct fw_err *err)
{
	const struct fw_host *h = e->host;
	int n = 2 * (int)e->n_dec;
	m->cross_out = h->ctx_alloc(m->ctx, sizeof(struct fw_tensor *) * (size_t)n,
				    FW_MEM_INPUTS);
	m->cross_in = h->ctx_alloc(m->ctx, sizeof(struct fw_tensor *) * (size_t)n,
				   FW_MEM_INPUTS);
	if (!m->cross_out || !m->cross_in)
		return h->errorf(err, FW_ERR_NOMEM, "arch/encdec: out of memory");
	m->n_cross = n;
	return FW_OK;
}

/* The encoder's input embeddings through host->embed, where a peft plugin
 * may add P virtual tokens (prompt tuning, P-tuning: fw_model.n_virtual, at
 * virtual_at), as PEFT's PeftModelForSeq2SeqLM puts them before the
 * encoder's inputs_embeds: the encoder then runs over P + T rows, its
 * relative positions count them, and *enc_bias gains P zero columns where
 * they are (PEFT's prefix_attention_mask of ones), for the encoder and for
 * cross-attention. A decoding model's encoder pass is a whole sequence, so
 * the caches are hidden from host->embed meanwhile. */
static struct fw_tensor *encoder_input(const struct encdec *e, struct fw_model *m,
				       struct fw_tensor *shared, struct fw_tensor **enc_bias)
{
	const struct fw_host *h = e->host;
	struct fw_tensor *w = h->embedding(m->ctx, shared, m->enc_tokens);
	struct fw_kv_cache *caches = m->caches;
	m->caches = NULL;
	struct fw_tensor *x = h->embed(m, w);
	m->caches = caches;
	int64_t P = x && w && FW_HAS(m, n_virtual) ? x->ne[1] - w->ne[1] : 0;
	if (P <= 0)
		return x;
	int64_t B = x->ne[0], T = w->ne[1], at = m->virtual_at > 0 ? m->virtual_at : 0;
	/* zeros (B, 1, 1, P) from the virtual rows' first column */
	int64_t shape[4] = { B, 1, 1, P };
	struct fw_tensor *zero = h->reshape(m->ctx, h->cont(m->ctx, h->scale(m->ctx,
		h->slice(m->ctx, h->slice(m->ctx, x, 1, at, P), 2, 0, 1), 0.0f)), 4, shape);
	struct fw_tensor *b = *enc_bias;
	if (at == 0)
		b = h->concat(m->ctx, zero, b, 3);
	else
		b = h->concat(m->ctx, h->concat(m->ctx, h->slice(m->ctx, b, 3, 0, at), zero, 3),
			      h->slice(m->ctx, b, 3, at, T - at), 3);
	*enc_bias = b;
	return x;
}

static int encdec_layers(void *state, const struct fw_model *m)
{
	const struct encdec *e = state;
	(void)m;
	return (int)e->n_dec;
}

static enum fw_status encdec_build(void *state, struct fw_model *m, struct fw_err *err)
{
	const struct encdec *e = state;
	const struct fw_host *h = e->host;
	int64_t B = m->batch, T = m->seq_len, C = e->d_model;
	/* the encoder runs over enc_len positions when the host sets it (its
	 * --encoder-seq-length; decoding: the source), else T; decoding: the
	 * decoder one */
	int64_t Te = FW_HAS(m, enc_len) && m->enc_len > 0 ? m->enc_len : m->caches ? 0 : T;
	if (m->caches && (!FW_HAS(m, n_cross) || Te <= 0))
		return h->errorf(err, FW_ERR_UNSUPPORTED, "arch/encdec: decoding needs a host that "
				 "sets enc_len and runs the encoder (fw_rt_s2s_decoder)");
	m->head = FW_HEAD_SEQ2SEQ;
	int64_t bt[2] = { B, T }, bte[2] = { B, Te }, b11t[4] = { B, 1, 1, Te };
	m->enc_tokens = h->input(m->ctx, "enc_tokens", FW_I32, 2, bte);
	m->tokens = h->input(m->ctx, "tokens", FW_I32, 2, bt);
	struct fw_tensor *enc_bias = h->input(m->ctx, "enc_bias", FW_F32, 4, b11t);
	struct fw_tensor *shared = weight(e, m, 2, e->vocab, C, "shared.weight", 1.0f);

	struct fw_tensor *x = encoder_input(e, m, shared, &enc_bias);
	struct fw_tensor *enc = encoder(e, m, dropout(e, m, x, -1), enc_bias);
	if (m->caches && cross_alloc(e, m, err) != FW_OK)
		return err->status;
	/* PEFT's num_transformer_submodules 2 (prompt tuning, P-tuning): P2
	 * virtual tokens before the decoder's inputs in training and eval; their
	 * logits are not in the loss (PEFT's labels of -100) */
	x = h->embedding(m->ctx, shared, m->tokens);
	x = m->caches ? x : h->embed(m, x);
	int64_t P2 = x ? x->ne[1] - T : 0;
	x = decoder(e, m, dropout(e, m, x, -2), enc, enc_bias);
	if (P2 > 0)
		x = h->cont(m->ctx, h->slice(m->ctx, x, 1, P2, T));
	if (e->tie)     /* Mesh TensorFlow's rescaling before the tied projection */
		m->logits = h->matmul(m->ctx, h->scale(m->ctx, x, 1.0f / sqrtf((float)C)), shared,
				      false, true);
	else
		m->logits = linear(e, m, x, C, e->vocab, "lm_head", 1.0f);
	if (!m->caches) {
		m->targets = h->input(m->ctx, "targets", FW_I32, 2, bt);
		m->loss = h->cross_entropy(m->ctx, m->logits, m->targets, NULL, FW_IGNORE_INDEX);
	}
	if (!(m->caches ? m->logits : m->loss)) {
		struct fw_err *ce = h->ctx_err(m->ctx);
		return h->errorf(err, ce->status ? ce->status : FW_ERR_INTERNAL, "arch/encdec: %s",
				 ce->msg);
	}
	return FW_OK;
}

static const char *const ffn_kinds[] = { "relu", "gated-gelu", "gated-relu", "gelu", NULL };

static enum fw_status encdec_init(const struct fw_host *host, const struct fw_options *o,
				  void **state, struct fw_err *err)
{
	static int relbias_id = -1;          /* once per process */
	g_host = host;
	if (relbias_id < 0 && (relbias_id = host->op_register(&relbias_op, err)) < 0)
		return err->status;
	struct encdec *e = host->malloc(sizeof(*e));
	if (!e)
		return host->errorf(err, FW_ERR_NOMEM, "arch/encdec: out of memory");
	int f = 0;
	while (ffn_kinds[f + 1] && strcmp(fw_opt_str(o, "feed-forward-proj"), ffn_kinds[f]))
		f++;
	int64_t n_dec = fw_opt_int(o, "num-decoder-layers");
	*e = (struct encdec){
		.host = host, .vocab = fw_opt_int(o, "vocab-size"), .d_model = fw_opt_int(o, "d-model"),
		.d_kv = fw_opt_int(o, "d-kv"), .d_ff = fw_opt_int(o, "d-ff"),
		.n_enc = fw_opt_int(o, "num-layers"), .n_head = fw_opt_int(o, "num-heads"),
		.buckets = fw_opt_int(o, "relative-attention-num-buckets"),
		.max_distance = fw_opt_int(o, "relative-attention-max-distance"),
		.dropout = (float)fw_opt_float(o, "dropout-rate"),
		.eps = (float)fw_opt_float(o, "layer-norm-epsilon"), .ffn = (enum ffn_kind)f,
		.tie = fw_opt_bool(o, "tie-word-embeddings"),
		.recompute = fw_opt_bool(o, "recompute-activations"), .relbias_op = relbias_id,
	};
	e->n_dec = n_dec > 0 ? n_dec : e->n_enc;
	const char *why = NULL;
	/* the decoder's half of the buckets must keep one exact bucket below
	 * max_distance, or the log buckets divide by zero */
	if (e->max_distance <= e->buckets / 2)
		why = "--relative-attention-max-distance must exceed half of "
		      "--relative-attention-num-buckets";
	else if (!(e->eps > 0))
		why = "--layer-norm-epsilon is 0 in float32";
	if (why) {
		host->free(e);
		return host->errorf(err, FW_ERR_INVALID, "arch/encdec: %s", why);
	}
	*state = e;
	return FW_OK;
}

static void encdec_fini(void *state)
{
	struct encdec *e = state;
	if (e)
		e->host->free(e);
}

/* Defaults are t5-small's (T5Config's defaults). */
static const struct fw_option_def options[] = {
	{ "vocab-size", FW_OPT_INT, "32128", 2, 1 << 24, NULL, "vocabulary size" },
	{ "d-model", FW_OPT_INT, "512", 1, 65536, NULL, "model width" },
	{ "d-kv", FW_OPT_INT, "64", 1, 4096, NULL,
	  "width of each attention head (num-heads * d-kv need not equal d-model)" },
	{ "d-ff", FW_OPT_INT, "2048", 1, 262144, NULL, "FFN width" },
	{ "num-layers", FW_OPT_INT, "6", 1, 1024, NULL, "encoder blocks" },
	{ "num-decoder-layers", FW_OPT_INT, "0", 0, 1024, NULL,
	  "decoder blocks; 0 = num-layers" },
	{ "num-heads", FW_OPT_INT, "8", 1, 1024, NULL, "attention heads" },
	{ "relative-attention-num-buckets", FW_OPT_INT, "32", 4, 4096, NULL,
	  "relative position buckets (half for each direction in the encoder)" },
	{ "relative-attention-max-distance", FW_OPT_INT, "128", 2, 1 << 20, NULL,
	  "distance from which all positions share the last bucket" },
	{ "dropout-rate", FW_OPT_FLOAT, "0.0", 0, 0.99, NULL,
	  "dropout on embeddings, residual branches, FFN and attention (T5 used 0.1)" },
	{ "layer-norm-epsilon", FW_OPT_FLOAT, "1e-6", 0, 1, NULL, "T5 LayerNorm epsilon (> 0)" },
	{ "feed-forward-proj", FW_OPT_CHOICE, "relu", 0, -1, ffn_kinds,
	  "relu (T5 v1.0), gated-gelu (T5 v1.1, Flan-T5: gelu_new gate), gated-relu, gelu" },
	{ "tie-word-embeddings", FW_OPT_BOOL, "true", 0, -1, NULL,
	  "head tied to shared (decoder output scaled by d-model^-0.5); false: lm_head" },
	{ "recompute-activations", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "recompute each block's activations in backward" },
};

static const struct fw_arch_i iface = {
	.size = sizeof(struct fw_arch_i),
	.build = encdec_build,
	.n_layers = encdec_layers,
	.hf_maps = (const struct fw_hf_map *const[]){ &encdec_hf_t5, NULL },
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_ARCH,
	.name = "arch/encdec",
	.version = "1.0.0",
	.description = "encoder-decoder transformer: T5 (ReLU or gated-GELU FFN, relative "
		       "position bias, tied or untied head)",
	.options = options,
	.n_options = (int)(sizeof(options) / sizeof(options[0])),
	.iface = &iface,
	.init = encdec_init,
	.fini = encdec_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
