/* hf.c - fwrun import / export: Hugging Face GPT-2 folders <-> fw HDF5.
 *
 * A GPT-2 folder is config.json + model.safetensors. GPT-2 stores its linear
 * layers as Conv1D, weight (in, out); fw's arch/decoder uses torch Linear's
 * (out, in), so those four weights per block are transposed on the way in and
 * out. Keys may carry a "transformer." prefix; the attn.bias / attn.masked_bias
 * buffers of older files are causal-mask constants and are skipped.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "fwrun.h"

static const char *const conv1d_suffix[] = { "attn.c_attn.weight", "attn.c_proj.weight",
					     "mlp.c_fc.weight", "mlp.c_proj.weight" };

static bool is_conv1d(const char *name)
{
	size_t n = strlen(name);
	for (int i = 0; i < 4; i++) {
		size_t m = strlen(conv1d_suffix[i]);
		if (n > m && !strcmp(name + n - m, conv1d_suffix[i]) && !strncmp(name, "h.", 2))
			return true;
	}
	return false;
}

struct gpt2_config {
	int64_t n_layer, n_head, n_embd, vocab, n_pos;
	double eps;
	bool tie;
};

static enum fw_status read_config(const char *dir, struct gpt2_config *c, struct fw_err *err)
{
	char path[4200];
	json_error_t je;
	snprintf(path, sizeof(path), "%s/config.json", dir);
	json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
	if (!root)
		return fw_errorf(err, errno == ENOENT && je.line < 0 ? FW_ERR_IO : FW_ERR_FORMAT,
				 "%s: %s", path, je.text);
	const char *keys[] = { "n_layer", "n_head", "n_embd", "vocab_size", "n_positions" };
	int64_t *dst[] = { &c->n_layer, &c->n_head, &c->n_embd, &c->vocab, &c->n_pos };
	enum fw_status s = FW_OK;
	for (int i = 0; i < 5; i++) {
		json_t *v = json_object_get(root, keys[i]);
		if (!v && i == 4)
			v = json_object_get(root, "n_ctx");
		if (!json_is_integer(v) || json_integer_value(v) <= 0) {
			s = fw_errorf(err, FW_ERR_FORMAT, "%s: '%s' missing or not a positive integer",
				      path, keys[i]);
			break;
		}
		*dst[i] = json_integer_value(v);
	}
	json_t *eps = json_object_get(root, "layer_norm_epsilon");
	c->eps = json_is_number(eps) ? json_number_value(eps) : 1e-5;
	json_t *tie = json_object_get(root, "tie_word_embeddings");
	c->tie = tie ? json_is_true(tie) : true;
	json_t *mt = json_object_get(root, "model_type");
	if (s == FW_OK && json_is_string(mt) && strcmp(json_string_value(mt), "gpt2"))
		s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: model_type '%s' is not gpt2", path,
			      json_string_value(mt));
	json_decref(root);
	return s;
}

static char *arch_config(const struct gpt2_config *c)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		return NULL;
	fprintf(f, "[arch/decoder]\nn-layer = %lld\nn-head = %lld\nn-embd = %lld\n"
		"vocab-size = %lld\nn-positions = %lld\nlayer-norm-eps = %.9g\n"
		"tie-embeddings = %s\n", (long long)c->n_layer, (long long)c->n_head,
		(long long)c->n_embd, (long long)c->vocab, (long long)c->n_pos, c->eps,
		c->tie ? "true" : "false");
	fclose(f);
	return buf;
}

/* The tensors a GPT-2 with this config has, in fw names and shapes (f32,
 * data allocated): what import fills and export reads. */
struct gpt2_set {
	int n;
	struct fw_tensor *ts;
	struct fw_tensor **tp;
};

static void gpt2_set_free(struct gpt2_set *g)
{
	for (int i = 0; g->ts && i < g->n; i++)
		free(g->ts[i].data);
	free(g->ts);
	free(g->tp);
	memset(g, 0, sizeof(*g));
}

static int gpt2_tensors(const struct gpt2_config *c, struct gpt2_set *g)
{
	int cap = 3 + 12 * (int)c->n_layer + 3;
	int64_t C = c->n_embd;
	memset(g, 0, sizeof(*g));
	g->ts = calloc((size_t)cap, sizeof(*g->ts));
	g->tp = calloc((size_t)cap, sizeof(*g->tp));
	if (!g->ts || !g->tp)
		return -1;
#define ADD(nd, a, b, ...) do { struct fw_tensor *t = &g->ts[g->n]; \
	snprintf(t->name, sizeof(t->name), __VA_ARGS__); t->dtype = FW_F32; \
	t->ndim = nd; t->ne[0] = a; t->ne[1] = b; fw_set_contiguous_strides(t); \
	g->tp[g->n++] = t; } while (0)
	ADD(2, c->vocab, C, "wte.weight");
	ADD(2, c->n_pos, C, "wpe.weight");
	for (int l = 0; l < c->n_layer; l++) {
		ADD(1, C, 0, "h.%d.ln_1.weight", l);
		ADD(1, C, 0, "h.%d.ln_1.bias", l);
		ADD(2, 3 * C, C, "h.%d.attn.c_attn.weight", l);
		ADD(1, 3 * C, 0, "h.%d.attn.c_attn.bias", l);
		ADD(2, C, C, "h.%d.attn.c_proj.weight", l);
		ADD(1, C, 0, "h.%d.attn.c_proj.bias", l);
		ADD(1, C, 0, "h.%d.ln_2.weight", l);
		ADD(1, C, 0, "h.%d.ln_2.bias", l);
		ADD(2, 4 * C, C, "h.%d.mlp.c_fc.weight", l);
		ADD(1, 4 * C, 0, "h.%d.mlp.c_fc.bias", l);
		ADD(2, C, 4 * C, "h.%d.mlp.c_proj.weight", l);
		ADD(1, C, 0, "h.%d.mlp.c_proj.bias", l);
	}
	ADD(1, C, 0, "ln_f.weight");
	ADD(1, C, 0, "ln_f.bias");
	if (!c->tie)
		ADD(2, c->vocab, C, "lm_head.weight");
#undef ADD
	for (int i = 0; i < g->n; i++)
		if (!(g->ts[i].data = malloc(fw_nbytes(&g->ts[i]))))
			return -1;
	return 0;
}

/* out (R, Cc) = in^T where in is (Cc, R), any float dtype in, f32 out. */
static void transpose_to_f32(float *out, const void *in, enum fw_dtype dt, int64_t rows_in,
			     int64_t cols_in)
{
	float *tmp = malloc(sizeof(float) * (size_t)(rows_in * cols_in));
	if (!tmp)
		return;
	fw_convert(tmp, FW_F32, in, dt, rows_in * cols_in);
	for (int64_t r = 0; r < rows_in; r++)
		for (int64_t c = 0; c < cols_in; c++)
			out[c * rows_in + r] = tmp[r * cols_in + c];
	free(tmp);
}

static const struct fw_st_entry *find_key(const struct fw_st_file *f, const char *name)
{
	const struct fw_st_entry *e = fw_st_find(f, name);
	if (!e) {
		char pref[FW_NAME_MAX + 16];
		snprintf(pref, sizeof(pref), "transformer.%s", name);
		e = fw_st_find(f, pref);
	}
	return e;
}

/* The tokenizer of a Hugging Face folder: tokenizer.json, else vocab.json +
 * merges.txt; NULL with err clear when it has neither. One that fw cannot
 * read is an error (import without it by moving the files away). */
static struct fw_tokenizer *folder_tokenizer(const char *dir, int64_t vocab, struct fw_err *err)
{
	char tj[4200], vj[4200], mt[4200];
	snprintf(tj, sizeof(tj), "%s/tokenizer.json", dir);
	snprintf(vj, sizeof(vj), "%s/vocab.json", dir);
	snprintf(mt, sizeof(mt), "%s/merges.txt", dir);
	struct fw_tokenizer *t = NULL;
	if (access(tj, F_OK) == 0)
		t = fw_tokenizer_load_hf_json(tj, err);
	else if (access(vj, F_OK) == 0 && access(mt, F_OK) == 0)
		t = fw_tokenizer_load_bpe(vj, mt, err);
	if (t && fw_tokenizer_vocab_size(t) > vocab) {
		fw_errorf(err, FW_ERR_FORMAT, "%s: the tokenizer has %d tokens, more than the "
			  "model's vocab_size %lld", dir, fw_tokenizer_vocab_size(t), (long long)vocab);
		fw_tokenizer_free(t);
		t = NULL;
	}
	return t;
}

int cmd_import(int argc, char **argv)
{
	if (argc >= 1 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"))) {
		printf("usage: fwrun import HF_DIR OUT.h5\nReads a Hugging Face GPT-2 folder "
		       "(config.json + model.safetensors; F32/F16/BF16) into an fw weights file\n"
		       "usable with fwrun train/eval/generate --load=OUT.h5. The folder's tokenizer\n"
		       "(tokenizer.json, or vocab.json + merges.txt), if any, is stored with it.\n");
		return EXIT_OK;
	}
	if (argc != 2)
		return die(EXIT_USAGE, "import: usage: fwrun import HF_DIR OUT.h5");
	struct gpt2_config c;
	struct fw_err err = { 0 };
	struct fw_st_file st;
	char path[4200];
	int rc = EXIT_RUNTIME;
	if (read_config(argv[0], &c, &err) != FW_OK)
		return die(EXIT_RUNTIME, "%s", err.msg);
	snprintf(path, sizeof(path), "%s/model.safetensors", argv[0]);
	if (fw_st_open(path, &st, &err) != FW_OK)
		return die(EXIT_RUNTIME, "%s", err.msg);

	struct gpt2_set g;
	struct fw_tokenizer *tok = NULL;
	char *tok_json = NULL;
	char *config = arch_config(&c);
	if (gpt2_tensors(&c, &g) != 0 || !config) {
		rc = die(EXIT_RUNTIME, "import: out of memory");
		goto out;
	}
	for (int i = 0; i < g.n; i++) {
		struct fw_tensor *t = &g.ts[i];
		const struct fw_st_entry *e = find_key(&st, t->name);
		if (!e) {
			rc = die(EXIT_RUNTIME, "%s: missing tensor '%s'", path, t->name);
			goto out;
		}
		bool conv = is_conv1d(t->name);
		int64_t want0 = conv ? t->ne[1] : t->ne[0];
		int64_t want1 = conv ? t->ne[0] : t->ne[1];
		if (e->ndim != t->ndim || e->ne[0] != want0 || (t->ndim == 2 && e->ne[1] != want1) ||
		    e->dtype == FW_I32) {
			rc = die(EXIT_RUNTIME, "%s: tensor '%s' has the wrong shape or dtype for "
				 "this config", path, e->name);
			goto out;
		}
		if (conv)
			transpose_to_f32(t->data, e->data, e->dtype, e->ne[0], e->ne[1]);
		else
			fw_convert(t->data, FW_F32, e->data, e->dtype, fw_nelem(t));
	}
	tok = folder_tokenizer(argv[0], c.vocab, &err);
	if (!tok && err.status) {
		rc = die(EXIT_RUNTIME, "%s", err.msg);
		goto out;
	}
	tok_json = tok ? fw_tokenizer_serialize(tok, &err) : NULL;
	if (tok && !tok_json) {
		rc = die(EXIT_RUNTIME, "%s", err.msg);
		goto out;
	}
	struct fw_h5_attr attrs[] = { { "fw_arch", "arch/decoder" }, { "config", config },
				      { "source", argv[0] }, { TOKENIZER_ATTR, tok_json } };
	if (fw_h5_save(argv[1], g.tp, g.n, attrs, tok_json ? 4 : 3, &err) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", err.msg);
		goto out;
	}
	fprintf(stderr, "fwrun: imported %d tensors (%lld layers, width %lld)%s to %s\n", g.n,
		(long long)c.n_layer, (long long)c.n_embd,
		tok ? " and the folder's GPT-2 tokenizer" : "", argv[1]);
	rc = EXIT_OK;
out:
	fw_free(tok_json);
	fw_tokenizer_free(tok);
	gpt2_set_free(&g);
	free(config);
	fw_st_close(&st);
	return rc;
}

/* Reads "key = value" from the [arch/decoder] section of a config text. */
static bool config_int(const char *text, const char *key, int64_t *v)
{
	const char *sec = strstr(text, "[arch/decoder]");
	if (!sec)
		return false;
	char pat[64];
	snprintf(pat, sizeof(pat), "\n%s = ", key);
	const char *p = strstr(sec, pat);
	if (!p)
		return false;
	*v = strtoll(p + strlen(pat), NULL, 10);
	return true;
}

static bool config_str(const char *text, const char *key, char *out, size_t len)
{
	const char *sec = strstr(text, "[arch/decoder]");
	char pat[64];
	snprintf(pat, sizeof(pat), "\n%s = ", key);
	const char *p = sec ? strstr(sec, pat) : NULL;
	if (!p)
		return false;
	p += strlen(pat);
	size_t n = strcspn(p, "\n");
	snprintf(out, len, "%.*s", (int)(n < len ? n : len - 1), p);
	return true;
}

/* text[0..len) to path through a temporary file and a rename. */
static enum fw_status write_atomic(const char *path, const char *text, size_t len,
				   struct fw_err *err)
{
	char tmp[4300];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	FILE *f = fopen(tmp, "wb");
	bool ok = f && fwrite(text, 1, len, f) == len;
	ok = f && fclose(f) == 0 && ok;
	if (!ok || rename(tmp, path) != 0) {
		unlink(tmp);
		return fw_errorf(err, FW_ERR_IO, "%s: cannot write", path);
	}
	return FW_OK;
}

/* A stored gpt2 tokenizer as Hugging Face's vocab.json + merges.txt in dir. */
static enum fw_status export_tokenizer(const char *h5, const char *dir, bool *done,
				       struct fw_err *err)
{
	char *stored = NULL, path[4200];
	struct fw_err e = { 0 };
	*done = false;
	if (fw_h5_read_attr(h5, TOKENIZER_ATTR, &stored, &e) != FW_OK)
		return e.status == FW_ERR_NOT_FOUND ? FW_OK : (*err = e, e.status);
	json_t *root = json_loads(stored, 0, NULL);
	json_t *vocab = json_object_get(root, "vocab"), *merges = json_object_get(root, "merges");
	enum fw_status st = FW_OK;
	if (json_is_string(vocab) && json_is_string(merges)) {
		snprintf(path, sizeof(path), "%s/vocab.json", dir);
		st = write_atomic(path, json_string_value(vocab), json_string_length(vocab), err);
		snprintf(path, sizeof(path), "%s/merges.txt", dir);
		if (st == FW_OK)
			st = write_atomic(path, json_string_value(merges), json_string_length(merges),
					  err);
		*done = st == FW_OK;
	}
	json_decref(root);
	fw_free(stored);
	return st;
}

int cmd_export(int argc, char **argv)
{
	if (argc >= 1 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"))) {
		printf("usage: fwrun export IN.h5 OUT_DIR\nWrites a Hugging Face GPT-2 folder "
		       "(config.json + model.safetensors, F32) from an fw checkpoint or weights\n"
		       "file of arch/decoder; fwrun import reads it back bit-exactly.\n");
		return EXIT_OK;
	}
	if (argc != 2)
		return die(EXIT_USAGE, "export: usage: fwrun export IN.h5 OUT_DIR");
	struct fw_err err = { 0 };
	char *config = NULL;
	if (fw_h5_read_attr(argv[0], "config", &config, &err) != FW_OK)
		return die(EXIT_RUNTIME, "%s", err.msg);
	struct gpt2_config c = { .eps = 1e-5, .tie = true };
	char tie[16] = "true", eps[32] = "1e-5";
	bool ok = config_int(config, "n-layer", &c.n_layer) &&
		  config_int(config, "n-head", &c.n_head) &&
		  config_int(config, "n-embd", &c.n_embd) &&
		  config_int(config, "vocab-size", &c.vocab) &&
		  config_int(config, "n-positions", &c.n_pos);
	config_str(config, "tie-embeddings", tie, sizeof(tie));
	config_str(config, "layer-norm-eps", eps, sizeof(eps));
	char normv[32] = "layernorm", biasv[16] = "true";
	config_str(config, "norm", normv, sizeof(normv));
	config_str(config, "bias", biasv, sizeof(biasv));
	fw_free(config);
	if (!ok)
		return die(EXIT_RUNTIME, "%s: no arch/decoder configuration in its 'config' attribute",
			   argv[0]);
	if (strcmp(normv, "layernorm") || strcmp(biasv, "true"))
		return die(EXIT_RUNTIME, "%s: only GPT-2 models (layernorm, biases) export to a "
			   "GPT-2 folder", argv[0]);
	c.tie = !strcmp(tie, "true");
	c.eps = strtod(eps, NULL);

	int rc = EXIT_RUNTIME;
	struct gpt2_set g;
	if (gpt2_tensors(&c, &g) != 0) {
		rc = die(EXIT_RUNTIME, "export: out of memory");
		goto out;
	}
	if (fw_h5_load(argv[0], g.tp, g.n, &err) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", err.msg);
		goto out;
	}
	/* Back to Conv1D layout: (out, in) -> (in, out). */
	for (int i = 0; i < g.n; i++) {
		struct fw_tensor *t = &g.ts[i];
		if (!is_conv1d(t->name))
			continue;
		float *tr = malloc(fw_nbytes(t));
		if (!tr) {
			rc = die(EXIT_RUNTIME, "export: out of memory");
			goto out;
		}
		transpose_to_f32(tr, t->data, FW_F32, t->ne[0], t->ne[1]);
		free(t->data);
		t->data = tr;
		int64_t x = t->ne[0];
		t->ne[0] = t->ne[1];
		t->ne[1] = x;
		fw_set_contiguous_strides(t);
	}
	if (mkdir(argv[1], 0777) != 0 && errno != EEXIST) {
		rc = die(EXIT_RUNTIME, "%s: %s", argv[1], strerror(errno));
		goto out;
	}
	char path[4200];
	snprintf(path, sizeof(path), "%s/model.safetensors", argv[1]);
	const char *meta[] = { "format", "pt", NULL };
	if (fw_st_save(path, g.tp, g.n, meta, &err) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", err.msg);
		goto out;
	}
	json_t *cfg = json_pack("{s:[s], s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:b, "
				"s:f, s:f, s:f, s:I, s:I}",
				"architectures", "GPT2LMHeadModel", "model_type", "gpt2",
				"activation_function", "gelu_new", "n_layer", (json_int_t)c.n_layer,
				"n_head", (json_int_t)c.n_head, "n_embd", (json_int_t)c.n_embd,
				"vocab_size", (json_int_t)c.vocab, "n_positions", (json_int_t)c.n_pos,
				"n_ctx", (json_int_t)c.n_pos, "layer_norm_epsilon", c.eps,
				"tie_word_embeddings", c.tie, "resid_pdrop", 0.0, "embd_pdrop", 0.0,
				"attn_pdrop", 0.0, "bos_token_id", (json_int_t)50256,
				"eos_token_id", (json_int_t)50256);
	snprintf(path, sizeof(path), "%s/config.json", argv[1]);
	char tmp[4300];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	if (!cfg || json_dump_file(cfg, tmp, JSON_INDENT(2) | JSON_SORT_KEYS) != 0 ||
	    rename(tmp, path) != 0) {
		json_decref(cfg);
		unlink(tmp);
		rc = die(EXIT_RUNTIME, "%s: cannot write", path);
		goto out;
	}
	json_decref(cfg);
	bool with_tok = false;
	if (export_tokenizer(argv[0], argv[1], &with_tok, &err) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", err.msg);
		goto out;
	}
	fprintf(stderr, "fwrun: exported %d tensors%s to %s\n", g.n,
		with_tok ? " and the GPT-2 tokenizer (vocab.json, merges.txt)" : "", argv[1]);
	rc = EXIT_OK;
out:
	gpt2_set_free(&g);
	return rc;
}
