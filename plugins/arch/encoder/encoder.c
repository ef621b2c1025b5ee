/* arch/encoder - a bidirectional encoder: BERT, with RoBERTa's options.
 *
 * As Hugging Face's BertModel: word + position + token-type embeddings,
 * LayerNorm, then post-LayerNorm blocks (x = LN(x + attn(x)); x = LN(x +
 * FFN(x)), FFN = dense(gelu_erf(dense(x)))). Attention is bidirectional
 * (FW_MASK_BIDIRECTIONAL) through the attention plugin; with segmented rows
 * (task batches: padding, sentence pairs) the host fills positions, the
 * padding mask attn_bias (B, 1, T, T) and token_types (B, T) per batch
 * (fw_rt_encoder_masks). Prompt learning as PEFT feeds BertModel: virtual
 * rows (fw_model.n_virtual) in front of the word embeddings, positions over
 * the whole row, type 0 for them, the mask widened; a prefix
 * (fw_model.n_prefix) moves the tokens' positions after it. Heads (--head):
 *   mlm        BertForMaskedLM: dense + GELU + LayerNorm, then a decoder tied
 *              to the word embeddings plus a bias; loss on targets >= 0;
 *   seq-cls    BertForSequenceClassification: tanh pooler on the first token
 *              ([CLS]) and a classifier (--pooling=cls), or the mean of the
 *              non-padding positions and the classifier (--pooling=mean);
 *              --seq-cls-head=roberta: RobertaClassificationHead on the first
 *              token (dropout, classifier.dense, tanh, dropout,
 *              classifier.out_proj); the label is targets[:, 0];
 *   token-cls  BertForTokenClassification: a classifier at every position.
 * Parameter names are HF's without the "bert." prefix; linear weights are
 * torch's (out, in). RoBERTa: --position-offset=2 (positions start after
 * padding_idx), --type-vocab-size=1. The Hugging Face classes: hf_bert.c.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "fw/plugin.h"

#include "hf_bert.h"

enum head { HEAD_MLM = 0, HEAD_SEQ_CLS, HEAD_TOKEN_CLS };

struct encoder {
	const struct fw_host *host;
	int64_t n_layer, n_head, hidden, vocab, n_pos, n_types, ffn, pos_offset, labels;
	float dropout, attn_dropout, eps;
	enum head head;
	bool mean_pool, roberta_head, recompute;
};

static struct fw_tensor *param(const struct encoder *e, struct fw_model *m, int nd, int64_t d0,
			       int64_t d1, const char *name)
{
	int64_t shape[2] = { d0, d1 };
	return e->host->param(m->ctx, name, FW_F32, nd, shape, true);
}

/* LayerNorm "<prefix>.weight" / ".bias" over the width. */
static struct fw_tensor *norm(const struct encoder *e, struct fw_model *m, struct fw_tensor *x,
			      const char *prefix)
{
	char w[FW_NAME_MAX], b[FW_NAME_MAX];
	snprintf(w, sizeof(w), "%s.weight", prefix);
	snprintf(b, sizeof(b), "%s.bias", prefix);
	struct fw_tensor *g = param(e, m, 1, e->hidden, 0, w), *bb = param(e, m, 1, e->hidden, 0, b);
	e->host->init_const(m, g, 1.0f);
	e->host->init_const(m, bb, 0.0f);
	return e->host->layernorm(m->ctx, x, g, bb, e->eps);
}

/* A named linear layer with bias (BERT's init: normal 0.02, bias 0), routed
 * through the host so that a PEFT plugin can wrap it; flags on both
 * parameters (FW_FLAG_TASK_HEAD). */
static struct fw_tensor *linear_flagged(const struct encoder *e, struct fw_model *m,
					struct fw_tensor *x, int64_t in, int64_t out,
					const char *name, uint32_t flags)
{
	char w[FW_NAME_MAX], b[FW_NAME_MAX];
	snprintf(w, sizeof(w), "%s.weight", name);
	snprintf(b, sizeof(b), "%s.bias", name);
	struct fw_tensor *wt = param(e, m, 2, out, in, w), *bt = param(e, m, 1, out, 0, b);
	if (!wt || !bt)
		return NULL;
	wt->flags |= flags;
	bt->flags |= flags;
	e->host->init_normal(m, wt, 0.02f);
	e->host->init_const(m, bt, 0.0f);
	return e->host->linear(m, name, x, wt, bt);
}

static struct fw_tensor *linear(const struct encoder *e, struct fw_model *m, struct fw_tensor *x,
				int64_t in, int64_t out, const char *name)
{
	return linear_flagged(e, m, x, in, out, name, 0);
}

/* A task head's linear (pooler, classifier): a weights file without it
 * (a BertModel, an MLM model fine-tuned to classify) leaves its init. */
static struct fw_tensor *head_linear(const struct encoder *e, struct fw_model *m,
				     struct fw_tensor *x, int64_t in, int64_t out, const char *name)
{
	return linear_flagged(e, m, x, in, out, name, FW_FLAG_TASK_HEAD);
}

static struct fw_tensor *dropout(const struct encoder *e, struct fw_model *m, struct fw_tensor *x,
				 int salt)
{
	if (e->dropout <= 0.0f || !m->training || !x)
		return x;
	return e->host->dropout(m->ctx, x, e->dropout, m->seed * 1000003u + (uint64_t)salt);
}

/* One block over x (B, N, C): N = T, or P + T with virtual tokens. */
static struct fw_tensor *block(const struct encoder *e, struct fw_model *m, struct fw_tensor *x,
			       struct fw_tensor *bias, int l)
{
	const struct fw_host *h = e->host;
	int64_t B = m->batch, T = x ? x->ne[1] : 0, C = e->hidden, H = e->n_head, D = C / H;
	char p[32], n[96], an[64];
	snprintf(p, sizeof(p), "encoder.layer.%d", l);
	int64_t heads[4] = { B, T, H, D }, flat[3] = { B, T, C };
	struct fw_tensor *qkv[3];
	static const char *const qkv_names[3] = { "query", "key", "value" };
	for (int i = 0; i < 3; i++) {
		snprintf(n, sizeof(n), "%s.attention.self.%s", p, qkv_names[i]);
		qkv[i] = h->reshape(m->ctx, linear(e, m, x, C, C, n), 4, heads);
	}
	snprintf(an, sizeof(an), "%s.attention.self", p);
	struct fw_attn_spec spec = {
		.size = sizeof(spec), .name = an, .layer = l, .n_head = (int)H, .n_kv_head = (int)H,
		.head_dim = (int)D, .mask = FW_MASK_BIDIRECTIONAL, .bias = bias,
		.pos = FW_POS_NONE, .rope_base = 10000.0f,
		.dropout = m->training ? e->attn_dropout : 0.0f, .seed = m->seed * 7919u + (uint64_t)l,
	};
	struct fw_tensor *y = h->attention(m, &spec, qkv[0], qkv[1], qkv[2]);
	y = h->reshape(m->ctx, y, 3, flat);
	snprintf(n, sizeof(n), "%s.attention.output.dense", p);
	y = dropout(e, m, linear(e, m, y, C, C, n), 2 * l);
	snprintf(n, sizeof(n), "%s.attention.output.LayerNorm", p);
	x = norm(e, m, h->add(m->ctx, x, y), n);

	snprintf(n, sizeof(n), "%s.intermediate.dense", p);
	struct fw_tensor *f = h->gelu(m->ctx, linear(e, m, x, C, e->ffn, n), FW_GELU_ERF);
	snprintf(n, sizeof(n), "%s.output.dense", p);
	f = dropout(e, m, linear(e, m, f, e->ffn, C, n), 2 * l + 1);
	snprintf(n, sizeof(n), "%s.output.LayerNorm", p);
	return norm(e, m, h->add(m->ctx, x, f), n);
}

/* Zeros (B, 1, a, b) from finite tensors: x (B, >= a, C) and the
 * position table wpe (>= b, C). */
static struct fw_tensor *zeros4(const struct fw_host *h, struct fw_ctx *c, struct fw_tensor *x,
				struct fw_tensor *wpe, int64_t a, int64_t b)
{
	int64_t B = x->ne[0];
	struct fw_tensor *col = h->reshape(c, h->cont(c, h->slice(c, h->slice(c, x, 1, 0, a), 2, 0, 1)),
					   4, (int64_t[]){ B, 1, a, 1 });
	struct fw_tensor *row = h->reshape(c, h->cont(c, h->slice(c, h->slice(c, wpe, 0, 0, b), 1, 0,
								   1)), 4, (int64_t[]){ 1, 1, 1, b });
	return h->scale(c, h->add(c, col, row), 0.0f);
}

/* v (P, C) as rows of every batch row: (B, P, C), x (B, >= P, C) finite. */
static struct fw_tensor *batch_rows(const struct fw_host *h, struct fw_ctx *c, struct fw_tensor *x,
				    struct fw_tensor *v)
{
	return h->add(c, h->scale(c, h->slice(c, x, 1, 0, v->ne[0]), 0.0f), v);
}

/* The padding mask (B, 1, T, T) over P virtual and S prefix rows, as PEFT
 * extends attention_mask with ones: every query sees the P + S extra keys;
 * a virtual query sees what a real one does (the mask is per key). */
static struct fw_tensor *widen_bias(const struct encoder *e, struct fw_model *m,
				    struct fw_tensor *x, struct fw_tensor *wpe, int64_t P, int64_t S)
{
	const struct fw_host *h = e->host;
	struct fw_ctx *c = m->ctx;
	int64_t T = m->seq_len;
	struct fw_tensor *bias = m->attn_bias;
	if (P + S > 0)           /* the keys: (B, 1, T, P + S + T) */
		bias = h->concat(c, zeros4(h, c, x, wpe, T, P + S), bias, 3);
	if (P > 0)               /* the virtual queries: row 0's keys */
		bias = h->concat(c, h->add(c, zeros4(h, c, x, wpe, P, 1), h->slice(c, bias, 2, 0, 1)),
				 bias, 2);
	return bias;
}

/* Word embeddings through host->embed (PEFT's inputs_embeds: P virtual
 * tokens in front, or an S-row key/value prefix), then position and token
 * type embeddings as BertEmbeddings adds them to inputs_embeds: positions
 * S..S+P+T-1 from --position-offset on, type 0 for the virtual rows (PEFT
 * prepends zeros to token_type_ids); LayerNorm, dropout. *bias: the
 * attention mask widened over the extra rows. NULL with err set. */
static struct fw_tensor *embeddings(const struct encoder *e, struct fw_model *m,
				    struct fw_tensor **wte, struct fw_tensor **bias,
				    struct fw_err *err)
{
	const struct fw_host *h = e->host;
	struct fw_ctx *c = m->ctx;
	int64_t T = m->seq_len, C = e->hidden;
	*wte = param(e, m, 2, e->vocab, C, "embeddings.word_embeddings.weight");
	h->init_normal(m, *wte, 0.02f);
	struct fw_tensor *x = h->embed(m, h->embedding(c, *wte, m->tokens));
	if (!x)
		return NULL;
	int64_t P = FW_HAS(m, n_virtual) ? m->n_virtual : 0;
	int64_t S = FW_HAS(m, n_prefix) ? m->n_prefix : 0;
	if (P && m->virtual_at)
		return h->errorf(err, FW_ERR_UNSUPPORTED, "arch/encoder: virtual tokens before token "
				 "%lld: an encoder takes them only in front (PEFT's "
				 "inputs_embeds)", (long long)m->virtual_at), NULL;
	int64_t avail = e->n_pos - e->pos_offset;
	if (P + S > 0 && S + P + T > avail)
		return h->errorf(err, FW_ERR_INVALID, "arch/encoder: --seq-length %lld plus %lld %s "
				 "with --position-offset %lld exceeds --max-position-embeddings %lld",
				 (long long)T, (long long)(P + S), P ? "virtual tokens" :
				 "prefix positions", (long long)e->pos_offset, (long long)e->n_pos),
		       NULL;
	struct fw_tensor *wpe = param(e, m, 2, e->n_pos, C, "embeddings.position_embeddings.weight");
	h->init_normal(m, wpe, 0.02f);
	/* RoBERTa: positions start at padding_idx + 1 = 2 */
	struct fw_tensor *pe = h->slice(c, wpe, 0, e->pos_offset, avail);
	struct fw_tensor *real;                  /* the real tokens' addend: (T, C) or (B, T, C) */
	if (m->positions)
		real = h->embedding(c, h->slice(c, pe, 0, S + P, avail - S - P), m->positions);
	else
		real = S + P + T == avail ? pe : h->slice(c, pe, 0, S + P, T);
	struct fw_tensor *tte = NULL;
	if (e->n_types > 0) {
		tte = param(e, m, 2, e->n_types, C, "embeddings.token_type_embeddings.weight");
		h->init_normal(m, tte, 0.02f);
		int64_t bt[2] = { m->batch, T };
		struct fw_tensor *types = h->input(c, "token_types", FW_I32, 2, bt);
		real = h->add(c, real, h->embedding(c, tte, types));
	}
	if (P > 0) {             /* the virtual rows: positions S..S+P-1, type 0 */
		struct fw_tensor *v = h->slice(c, pe, 0, S, P);
		if (tte)
			v = h->add(c, v, h->slice(c, tte, 0, 0, 1));
		if (real && real->ndim == 2)
			real = batch_rows(h, c, h->slice(c, x, 1, P, T), real);
		real = h->concat(c, batch_rows(h, c, x, v), real, 1);
	}
	*bias = m->attn_bias ? widen_bias(e, m, x, wpe, P, S) : NULL;
	x = norm(e, m, h->add(c, x, real), "embeddings.LayerNorm");
	return dropout(e, m, x, -1);
}

/* The head on the encoder's output x (B, T, C): m->logits and m->loss. */
static void head(const struct encoder *e, struct fw_model *m, struct fw_tensor *x,
		 struct fw_tensor *wte)
{
	const struct fw_host *h = e->host;
	int64_t B = m->batch, T = m->seq_len, C = e->hidden;
	struct fw_tensor *targets = m->targets;
	/* P virtual rows in front: the first-token heads take row 0 (BertPooler's
	 * hidden_states[:, 0], the first virtual token under PEFT), the others
	 * the real rows only (PEFT's labels padded with -100 for them) */
	int64_t P = x ? x->ne[1] - T : 0;
	bool first_token = e->head == HEAD_SEQ_CLS && !e->mean_pool;
	if (P > 0 && !first_token)
		x = h->cont(m->ctx, h->slice(m->ctx, x, 1, P, T));
	if (e->head == HEAD_MLM) {
		x = linear(e, m, x, C, C, "cls.predictions.transform.dense");
		x = norm(e, m, h->gelu(m->ctx, x, FW_GELU_ERF), "cls.predictions.transform.LayerNorm");
		struct fw_tensor *bias = param(e, m, 1, e->vocab, 0, "cls.predictions.bias");
		h->init_const(m, bias, 0.0f);
		m->logits = h->add(m->ctx, h->matmul(m->ctx, x, wte, false, true), bias);
	} else if (e->head == HEAD_SEQ_CLS) {
		if (e->mean_pool && m->segmented) {  /* 1/n on the n real tokens, from the host */
			int64_t b1t[3] = { B, 1, T };
			struct fw_tensor *w = h->input(m->ctx, "pool_weights", FW_F32, 3, b1t);
			x = h->matmul(m->ctx, w, x, false, false);          /* (B, 1, C) */
		} else if (e->mean_pool) {   /* no padding: every position is a token */
			x = h->scale(m->ctx, h->sum(m->ctx, x, 1, true), 1.0f / (float)T);
		} else if (e->roberta_head) {  /* RobertaClassificationHead on <s> */
			x = dropout(e, m, h->cont(m->ctx, h->slice(m->ctx, x, 1, 0, 1)), -3);
			x = h->tanh(m->ctx, head_linear(e, m, x, C, C, "classifier.dense"));
		} else {
			x = h->slice(m->ctx, x, 1, 0, 1);                   /* [CLS]: (B, 1, C) */
			x = h->tanh(m->ctx, head_linear(e, m, x, C, C, "pooler.dense"));
		}
		x = dropout(e, m, x, -2);
		m->logits = head_linear(e, m, x, C, e->labels, e->roberta_head ?
					"classifier.out_proj" :
				   "classifier");                            /* (B, 1, L) */
		targets = h->cont(m->ctx, h->slice(m->ctx, targets, 1, 0, 1));
	} else {
		x = dropout(e, m, x, -2);
		m->logits = head_linear(e, m, x, C, e->labels, "classifier");   /* (B, T, L) */
	}
	m->loss = h->cross_entropy(m->ctx, m->logits, targets, NULL, FW_IGNORE_INDEX);
}

static enum fw_status encoder_build(void *state, struct fw_model *m, struct fw_err *err)
{
	const struct encoder *e = state;
	const struct fw_host *h = e->host;
	int64_t B = m->batch, T = m->seq_len;
	if (m->caches)
		return h->errorf(err, FW_ERR_UNSUPPORTED, "arch/encoder: an encoder does not "
				 "generate text (no causal decoding)");
	if (T + e->pos_offset > e->n_pos)
		return h->errorf(err, FW_ERR_INVALID, "arch/encoder: --seq-length %lld with "
				 "--position-offset %lld exceeds --n-positions %lld", (long long)T,
				 (long long)e->pos_offset, (long long)e->n_pos);
	static const enum fw_head_kind kinds[] = { FW_HEAD_MLM, FW_HEAD_CLASSIFY,
						   FW_HEAD_TOKEN_CLASSIFY };
	m->head = kinds[e->head];
	int64_t bt[2] = { B, T };
	m->tokens = h->input(m->ctx, "tokens", FW_I32, 2, bt);
	m->targets = h->input(m->ctx, "targets", FW_I32, 2, bt);
	if (m->segmented) {
		int64_t bqk[4] = { B, 1, T, T };
		m->positions = h->input(m->ctx, "positions", FW_I32, 2, bt);
		m->attn_bias = h->input(m->ctx, "attn_bias", FW_F32, 4, bqk);
	}
	struct fw_tensor *wte = NULL, *bias = NULL;
	struct fw_tensor *x = embeddings(e, m, &wte, &bias, err);
	if (!x && err->status)
		return err->status;
	for (int l = 0; l < e->n_layer; l++) {
		if (e->recompute)
			h->checkpoint_begin(m->ctx);
		x = block(e, m, x, bias, l);
		if (e->recompute)
			h->checkpoint_end(m->ctx);
	}
	head(e, m, x, wte);
	if (!m->loss) {
		struct fw_err *ce = h->ctx_err(m->ctx);
		return h->errorf(err, ce->status ? ce->status : FW_ERR_INTERNAL, "arch/encoder: %s",
				 ce->msg);
	}
	return FW_OK;
}

static const char *const heads[] = { "mlm", "seq-cls", "token-cls", NULL };
static const char *const poolings[] = { "cls", "mean", NULL };
static const char *const seq_cls_heads[] = { "pooler", "roberta", NULL };

static enum fw_status encoder_init(const struct fw_host *host, const struct fw_options *o,
				   void **state, struct fw_err *err)
{
	struct encoder *e = host->malloc(sizeof(*e));
	if (!e)
		return host->errorf(err, FW_ERR_NOMEM, "arch/encoder: out of memory");
	int hd = 0;
	while (heads[hd + 1] && strcmp(fw_opt_str(o, "head"), heads[hd]))
		hd++;
	*e = (struct encoder){
		.host = host, .n_layer = fw_opt_int(o, "num-hidden-layers"),
		.n_head = fw_opt_int(o, "num-attention-heads"), .hidden = fw_opt_int(o, "hidden-size"),
		.vocab = fw_opt_int(o, "vocab-size"), .n_pos = fw_opt_int(o, "max-position-embeddings"),
		.n_types = fw_opt_int(o, "type-vocab-size"), .ffn = fw_opt_int(o, "intermediate-size"),
		.pos_offset = fw_opt_int(o, "position-offset"), .labels = fw_opt_int(o, "num-labels"),
		.dropout = (float)fw_opt_float(o, "hidden-dropout-prob"),
		.attn_dropout = (float)fw_opt_float(o, "attention-probs-dropout-prob"),
		.eps = (float)fw_opt_float(o, "layer-norm-eps"), .head = (enum head)hd,
		.mean_pool = !strcmp(fw_opt_str(o, "pooling"), "mean"),
		.roberta_head = !strcmp(fw_opt_str(o, "seq-cls-head"), "roberta"),
		.recompute = fw_opt_bool(o, "recompute-activations"),
	};
	const char *why = NULL;
	if (e->hidden % e->n_head)
		why = "--hidden-size is not a multiple of --num-attention-heads";
	else if (e->pos_offset >= e->n_pos)
		why = "--position-offset leaves no position below --max-position-embeddings";
	else if (!(e->eps > 0))
		why = "--layer-norm-eps is 0 in float32";
	else if (e->roberta_head && e->mean_pool)
		why = "--seq-cls-head=roberta takes the first token: it needs --pooling=cls";
	if (why) {
		host->free(e);
		return host->errorf(err, FW_ERR_INVALID, "arch/encoder: %s", why);
	}
	*state = e;
	return FW_OK;
}

static void encoder_fini(void *state)
{
	struct encoder *e = state;
	if (e)
		e->host->free(e);
}

static const struct fw_option_def options[] = {
	{ "num-hidden-layers", FW_OPT_INT, "12", 1, 1024, NULL, "encoder blocks" },
	{ "num-attention-heads", FW_OPT_INT, "12", 1, 1024, NULL,
	  "attention heads (a divisor of hidden-size)" },
	{ "hidden-size", FW_OPT_INT, "768", 1, 65536, NULL, "model width" },
	{ "intermediate-size", FW_OPT_INT, "3072", 1, 262144, NULL, "FFN width" },
	{ "vocab-size", FW_OPT_INT, "30522", 2, 1 << 24, NULL, "vocabulary size" },
	{ "max-position-embeddings", FW_OPT_INT, "512", 1, 1 << 20, NULL, "learned positions" },
	{ "type-vocab-size", FW_OPT_INT, "2", 0, 1024, NULL,
	  "token types (sentence A/B); RoBERTa 1; 0 = no token-type embedding" },
	{ "position-offset", FW_OPT_INT, "0", 0, 1 << 20, NULL,
	  "first position id (RoBERTa: padding_idx + 1 = 2)" },
	{ "layer-norm-eps", FW_OPT_FLOAT, "1e-12", 0, 1, NULL, "LayerNorm epsilon (> 0)" },
	{ "hidden-dropout-prob", FW_OPT_FLOAT, "0.0", 0, 0.99, NULL,
	  "dropout on embeddings, block outputs and the pooled vector (BERT used 0.1)" },
	{ "attention-probs-dropout-prob", FW_OPT_FLOAT, "0.0", 0, 0.99, NULL,
	  "dropout on attention probabilities (BERT used 0.1)" },
	{ "head", FW_OPT_CHOICE, "mlm", 0, -1, heads,
	  "mlm (BertForMaskedLM), seq-cls (BertForSequenceClassification) or token-cls "
	  "(BertForTokenClassification)" },
	{ "num-labels", FW_OPT_INT, "2", 2, 1 << 16, NULL, "classes of seq-cls and token-cls" },
	{ "pooling", FW_OPT_CHOICE, "cls", 0, -1, poolings,
	  "seq-cls: cls (tanh pooler on the first token) or mean (mean of non-padding tokens)" },
	{ "seq-cls-head", FW_OPT_CHOICE, "pooler", 0, -1, seq_cls_heads,
	  "seq-cls with --pooling=cls: pooler (BERT's pooler.dense + tanh, then classifier) or "
	  "roberta (RobertaClassificationHead: classifier.dense + tanh, then classifier.out_proj)" },
	{ "recompute-activations", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "recompute each block's activations in backward" },
};

static const struct fw_arch_i iface = {
	.size = sizeof(struct fw_arch_i),
	.build = encoder_build,
	.hf_maps = (const struct fw_hf_map *const[]){ &encoder_hf_bert_mlm, &encoder_hf_bert_seq,
						      &encoder_hf_bert_tok, &encoder_hf_bert_base,
						      &encoder_hf_roberta_mlm, &encoder_hf_roberta_seq,
						      NULL },
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_ARCH,
	.name = "arch/encoder",
	.version = "1.0.0",
	.description = "bidirectional encoder: BERT (MLM, sequence and token classification), "
		       "RoBERTa by options",
	.options = options,
	.n_options = (int)(sizeof(options) / sizeof(options[0])),
	.iface = &iface,
	.init = encoder_init,
	.fini = encoder_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
