/* demo.c - the core engine training a tiny byte-level GPT on English text.
 *
 * A short end-to-end run of the graph engine: build a 2-layer causal
 * transformer from core ops, plan it once, then train with AdamW, evaluate on
 * a held-out tail of the text and sample from the model.
 *
 * usage: fw-demo [--steps N] [--text FILE|DIR] [--seed S] [--threads N]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <dirent.h>
#include <sys/stat.h>

#include "fw/fw.h"

#define V 256                   /* byte vocabulary */

struct cfg {
	int B, T, C, H, L;
	int steps;
	float lr;
	unsigned seed;
	const char *text;
	int threads;
};

struct model {
	struct fw_ctx *ctx;
	struct fw_tensor *ids, *targets, *loss, *logits;
};

/* --- parameter init (GPT-2 style: N(0, 0.02), zero biases, unit gains) --- */

static uint64_t rng_state;

static double rand_uniform(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (double)(rng_state >> 11) / 9007199254740992.0;
}

static float rand_normal(void)
{
	double u = rand_uniform() + 1e-12, v = rand_uniform();
	return (float)(sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v));
}

static struct fw_tensor *param(struct fw_ctx *ctx, const char *name, int nd, int64_t d0,
			       int64_t d1)
{
	int64_t shape[2] = { d0, d1 };
	return fw_param(ctx, name, FW_F32, nd, shape, true);
}

/* --- the model: byte GPT, pre-LayerNorm, causal attention, GELU MLP --- */

static struct fw_tensor *attention(struct fw_ctx *ctx, const struct cfg *c,
				   struct fw_tensor *x, int l)
{
	char n[64];
	int64_t B = c->B, T = c->T, C = c->C, H = c->H, D = C / H;
	snprintf(n, sizeof(n), "h.%d.attn.qkv.weight", l);
	struct fw_tensor *wqkv = param(ctx, n, 2, 3 * C, C);
	snprintf(n, sizeof(n), "h.%d.attn.qkv.bias", l);
	struct fw_tensor *bqkv = param(ctx, n, 1, 3 * C, 0);
	snprintf(n, sizeof(n), "h.%d.attn.proj.weight", l);
	struct fw_tensor *wo = param(ctx, n, 2, C, C);
	snprintf(n, sizeof(n), "h.%d.attn.proj.bias", l);
	struct fw_tensor *bo = param(ctx, n, 1, C, 0);

	struct fw_tensor *qkv = fw_linear(ctx, x, wqkv, bqkv);        /* (B, T, 3C) */
	struct fw_tensor *part[3];
	if (fw_split(ctx, qkv, 2, 3, part) != FW_OK)
		return NULL;
	static const int to_heads[4] = { 0, 2, 1, 3 };                 /* (B, H, T, D) */
	for (int i = 0; i < 3; i++)
		part[i] = fw_permute(ctx, fw_reshape(ctx, fw_cont(ctx, part[i]), 4,
						     (int64_t[]){ B, T, H, D }), to_heads);
	struct fw_tensor *att = fw_matmul(ctx, part[0], part[1], false, true); /* (B,H,T,T) */
	att = fw_softmax(ctx, att, NULL, true, 1.0f / sqrtf((float)D));
	struct fw_tensor *y = fw_matmul(ctx, att, part[2], false, false);      /* (B,H,T,D) */
	y = fw_reshape(ctx, fw_cont(ctx, fw_permute(ctx, y, to_heads)), 3,
		       (int64_t[]){ B, T, C });
	return fw_linear(ctx, y, wo, bo);
}

static struct fw_tensor *mlp(struct fw_ctx *ctx, const struct cfg *c, struct fw_tensor *x,
			     int l)
{
	char n[64];
	int64_t C = c->C;
	snprintf(n, sizeof(n), "h.%d.mlp.fc.weight", l);
	struct fw_tensor *w1 = param(ctx, n, 2, 4 * C, C);
	snprintf(n, sizeof(n), "h.%d.mlp.fc.bias", l);
	struct fw_tensor *b1 = param(ctx, n, 1, 4 * C, 0);
	snprintf(n, sizeof(n), "h.%d.mlp.proj.weight", l);
	struct fw_tensor *w2 = param(ctx, n, 2, C, 4 * C);
	snprintf(n, sizeof(n), "h.%d.mlp.proj.bias", l);
	struct fw_tensor *b2 = param(ctx, n, 1, C, 0);
	return fw_linear(ctx, fw_gelu(ctx, fw_linear(ctx, x, w1, b1), FW_GELU_TANH), w2, b2);
}

static struct fw_tensor *layernorm(struct fw_ctx *ctx, struct fw_tensor *x, int64_t C,
				   const char *prefix)
{
	char n[64];
	snprintf(n, sizeof(n), "%s.weight", prefix);
	struct fw_tensor *g = param(ctx, n, 1, C, 0);
	snprintf(n, sizeof(n), "%s.bias", prefix);
	struct fw_tensor *b = param(ctx, n, 1, C, 0);
	return fw_layernorm(ctx, x, g, b, 1e-5f);
}

static enum fw_status build(struct model *m, const struct cfg *c)
{
	struct fw_ctx *ctx = m->ctx;
	char n[64];
	m->ids = fw_input(ctx, "ids", FW_I32, 2, (int64_t[]){ c->B, c->T });
	m->targets = fw_input(ctx, "targets", FW_I32, 2, (int64_t[]){ c->B, c->T });
	struct fw_tensor *wte = param(ctx, "wte", 2, V, c->C);
	struct fw_tensor *wpe = param(ctx, "wpe", 2, c->T, c->C);
	struct fw_tensor *x = fw_add(ctx, fw_embedding(ctx, wte, m->ids), wpe);
	for (int l = 0; l < c->L; l++) {
		fw_ctx_checkpoint_begin(ctx);
		snprintf(n, sizeof(n), "h.%d.ln_1", l);
		x = fw_add(ctx, x, attention(ctx, c, layernorm(ctx, x, c->C, n), l));
		snprintf(n, sizeof(n), "h.%d.ln_2", l);
		x = fw_add(ctx, x, mlp(ctx, c, layernorm(ctx, x, c->C, n), l));
		fw_ctx_checkpoint_end(ctx);
	}
	x = layernorm(ctx, x, c->C, "ln_f");
	m->logits = fw_matmul(ctx, x, wte, false, true);              /* tied head */
	m->loss = fw_cross_entropy(ctx, m->logits, m->targets, NULL, FW_IGNORE_INDEX);
	return m->loss ? FW_OK : fw_ctx_err(ctx)->status;
}

static void init_params(struct fw_ctx *ctx, int L)
{
	for (int i = 0; i < fw_ctx_n_tensors(ctx); i++) {
		struct fw_tensor *t = fw_ctx_tensor(ctx, i);
		if (!(t->flags & FW_FLAG_PARAM))
			continue;
		float *d = t->data;
		int64_t n = fw_nelem(t);
		bool gain = strstr(t->name, "ln_") && strstr(t->name, ".weight");
		/* GPT-2 scales residual projections by 1/sqrt(2L). */
		float std = strstr(t->name, "proj.weight") ? 0.02f / sqrtf(2.0f * L) : 0.02f;
		for (int64_t j = 0; j < n; j++)
			d[j] = t->ndim == 1 ? (gain ? 1.0f : 0.0f) : std * rand_normal();
	}
}

/* --- AdamW (decoupled decay, none on 1-D tensors) --- */

struct adamw {
	float **m, **v;
	int n;
};

static int adamw_init(struct adamw *o, struct fw_ctx *ctx, struct fw_graph *g)
{
	o->n = fw_graph_n_params(g);
	o->m = calloc((size_t)o->n, sizeof(float *));
	o->v = calloc((size_t)o->n, sizeof(float *));
	if (!o->m || !o->v)
		return -1;
	for (int i = 0; i < o->n; i++) {
		size_t b = (size_t)fw_nelem(fw_graph_param(g, i)) * 4;
		o->m[i] = fw_ctx_alloc(ctx, b, FW_MEM_OPTIMIZER);
		o->v[i] = fw_ctx_alloc(ctx, b, FW_MEM_OPTIMIZER);
		if (!o->m[i] || !o->v[i])
			return -1;
	}
	return 0;
}

static void adamw_step(struct adamw *o, struct fw_graph *g, float lr, int t)
{
	const float b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
	float c1 = 1.0f - powf(b1, (float)t), c2 = 1.0f - powf(b2, (float)t);
	for (int i = 0; i < o->n; i++) {
		struct fw_tensor *p = fw_graph_param(g, i);
		float *w = p->data, *gr = p->grad->data, *m = o->m[i], *v = o->v[i];
		float decay = p->ndim >= 2 ? wd : 0.0f;
		int64_t n = fw_nelem(p);
		#pragma omp parallel for schedule(static) if (n > 65536)
		for (int64_t j = 0; j < n; j++) {
			m[j] = b1 * m[j] + (1 - b1) * gr[j];
			v[j] = b2 * v[j] + (1 - b2) * gr[j] * gr[j];
			w[j] -= lr * ((m[j] / c1) / (sqrtf(v[j] / c2) + eps) + decay * w[j]);
		}
	}
}

/* --- data --- */

static unsigned char *read_file(const char *path, long *len);

/* A directory means all its regular files (not links), in name order,
 * concatenated: the default is Debian's licence texts (base-files). */
static int by_name(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

static unsigned char *read_text(const char *path, long *len)
{
	struct stat st;
	if (lstat(path, &st) != 0)
		return NULL;
	if (!S_ISDIR(st.st_mode))
		return read_file(path, len);
	struct dirent **ents = NULL;
	int n = scandir(path, &ents, NULL, by_name);
	unsigned char *all = NULL;
	*len = 0;
	for (int i = 0; i < n; i++) {
		char p[4096];
		long l = 0;
		snprintf(p, sizeof(p), "%s/%s", path, ents[i]->d_name);
		if (lstat(p, &st) == 0 && S_ISREG(st.st_mode)) {
			unsigned char *one = read_file(p, &l);
			unsigned char *grown = one ? realloc(all, (size_t)(*len + l + 1)) : NULL;
			if (grown) {
				all = grown;
				memcpy(all + *len, one, (size_t)l);
				*len += l;
			}
			free(one);
		}
		free(ents[i]);
	}
	free(ents);
	return all;
}

static unsigned char *read_file(const char *path, long *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	*len = ftell(f);
	fseek(f, 0, SEEK_SET);
	unsigned char *buf = malloc((size_t)*len + 1);
	if (buf && fread(buf, 1, (size_t)*len, f) != (size_t)*len) {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	return buf;
}

static void fill_batch(const struct model *m, const struct cfg *c, const unsigned char *text,
		       long lo, long hi)
{
	int32_t *ids = m->ids->data, *tg = m->targets->data;
	for (int b = 0; b < c->B; b++) {
		long off = lo + (long)(rand_uniform() * (double)(hi - lo - c->T - 1));
		for (int t = 0; t < c->T; t++) {
			ids[b * c->T + t] = text[off + t];
			tg[b * c->T + t] = text[off + t + 1];
		}
	}
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int sample(struct model *m, struct fw_graph *eval, const struct cfg *c,
		  const unsigned char *prompt, int plen, int n_new)
{
	int32_t ctx_buf[4096];
	int len = plen < c->T ? plen : c->T;
	for (int i = 0; i < len; i++)
		ctx_buf[i] = prompt[plen - len + i];
	fwrite(prompt + plen - len, 1, (size_t)len, stdout);
	for (int s = 0; s < n_new; s++) {
		int32_t *ids = m->ids->data;
		memset(ids, 0, sizeof(int32_t) * (size_t)c->B * c->T);
		int start = len > c->T ? len - c->T : 0, n = len - start;
		for (int i = 0; i < n; i++)
			ids[i] = ctx_buf[start + i];
		if (fw_graph_forward(eval) != FW_OK)
			return -1;
		const float *lg = (const float *)m->logits->data + (size_t)(n - 1) * V;
		float mx = lg[0], p[V], sum = 0;
		for (int v = 1; v < V; v++)
			mx = lg[v] > mx ? lg[v] : mx;
		for (int v = 0; v < V; v++)
			sum += p[v] = expf((lg[v] - mx) / 0.8f);      /* temperature 0.8 */
		double r = rand_uniform() * sum, acc = 0;
		int tok = V - 1;
		for (int v = 0; v < V; v++) {
			acc += p[v];
			if (acc >= r) {
				tok = v;
				break;
			}
		}
		putchar(tok);
		if (len < (int)(sizeof(ctx_buf) / sizeof(ctx_buf[0])))
			ctx_buf[len++] = tok;
	}
	putchar('\n');
	return 0;
}

int main(int argc, char **argv)
{
	struct cfg c = { .B = 16, .T = 128, .C = 128, .H = 4, .L = 4, .steps = 1000,
			 .lr = 2e-3f, .seed = 1337,
			 .text = "/usr/share/common-licenses", .threads = 0 };
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--steps") && i + 1 < argc)
			c.steps = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--text") && i + 1 < argc)
			c.text = argv[++i];
		else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
			c.seed = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
			c.threads = atoi(argv[++i]);
		else {
			fprintf(stderr, "fw-demo: unknown option '%s'\n"
				"usage: fw-demo [--steps N] [--text FILE|DIR] [--seed S] [--threads N]\n",
				argv[i]);
			return 2;
		}
	}
	if (c.steps < 1) {
		fprintf(stderr, "fw-demo: --steps must be >= 1\n");
		return 2;
	}
	if (c.threads > 0)
		fw_set_num_threads(c.threads);
	rng_state = 0x9E3779B97F4A7C15ull ^ c.seed;

	long len = 0;
	unsigned char *text = read_text(c.text, &len);
	if (!text || len < 4 * c.T + 2) {
		fprintf(stderr, "fw-demo: %s: cannot read enough text\n", c.text);
		free(text);
		return 1;
	}
	long split = len * 9 / 10;              /* last 10% held out */

	struct model m = { .ctx = fw_ctx_new() };
	struct fw_graph *train = NULL, *eval = NULL;
	struct adamw opt = { 0 };
	int rc = 1;
	if (!m.ctx || build(&m, &c) != FW_OK)
		goto fail;
	struct fw_tensor *outs[2] = { m.loss, m.logits };
	train = fw_graph_new(m.ctx, outs, 1, &(struct fw_graph_opts){ .backward = true,
								     .training = true });
	eval = train ? fw_graph_new(m.ctx, outs, 2, &(struct fw_graph_opts){ 0 }) : NULL;
	if (!eval || adamw_init(&opt, m.ctx, train) != 0)
		goto fail;
	init_params(m.ctx, c.L);

	struct fw_memory_report r;
	fw_graph_memory(train, &r);
	printf("fw demo: byte-level GPT, %d layers, %d heads, width %d, context %d, batch %d\n",
	       c.L, c.H, c.C, c.T, c.B);
	printf("text: %s (%ld bytes, last 10%% held out), %lld parameters, %d threads\n",
	       c.text, len, (long long)r.n_params, fw_get_num_threads());
	printf("memory plan (training graph):\n");
	fw_memory_report_print(&r, stdout);

	/* Unigram baseline: entropy of the byte distribution of the training part. */
	double counts[V] = { 0 }, unigram = 0;
	for (long i = 0; i < split; i++)
		counts[text[i]]++;
	for (int v = 0; v < V; v++)
		if (counts[v] > 0)
			unigram -= counts[v] / split * log(counts[v] / split);

	double t0 = now();
	for (int step = 1; step <= c.steps; step++) {
		float lr = c.lr * (step < 100 ? step / 100.0f :
			   0.1f + 0.9f * 0.5f * (1 + cosf((float)M_PI * (step - 100) / (c.steps - 100 + 1))));
		fill_batch(&m, &c, text, 0, split);
		fw_graph_set_step(train, step);
		if (fw_graph_forward(train) != FW_OK || fw_graph_backward(train) != FW_OK)
			goto fail;
		adamw_step(&opt, train, lr, step);
		fw_graph_zero_grad(train);
		if (step % 100 == 0 || step == 1 || step == c.steps) {
			double el = now() - t0;
			printf("step %4d/%d  loss %.4f  lr %.2e  %.0f tok/s\n", step, c.steps,
			       *(float *)m.loss->data, lr, step * (double)c.B * c.T / el);
			fflush(stdout);
		}
	}
	double vl = 0;
	const int eval_batches = 20;
	for (int i = 0; i < eval_batches; i++) {
		fill_batch(&m, &c, text, split, len);
		if (fw_graph_forward(eval) != FW_OK)
			goto fail;
		vl += *(float *)m.loss->data;
	}
	vl /= eval_batches;
	printf("held-out loss %.4f nats/byte (unigram baseline %.4f, uniform %.4f)\n", vl,
	       unigram, log(V));
	printf("sample:\n");
	const char *prompt = "The licenses for most software ";
	if (sample(&m, eval, &c, (const unsigned char *)prompt, (int)strlen(prompt), 300) != 0)
		goto fail;
	rc = 0;
fail:
	if (rc)
		fprintf(stderr, "fw-demo: %s\n", fw_ctx_err(m.ctx)->msg);
	fw_graph_free(eval);
	fw_graph_free(train);
	fw_ctx_free(m.ctx);
	free(opt.m);
	free(opt.v);
	free(text);
	return rc;
}
