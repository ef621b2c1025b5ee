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
#include "../../plugins/arch/decoder/dims.h"

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

/* A JSON value as it is written, for messages (cut at len). */
static void json_text(const json_t *v, char *out, size_t len)
{
	char *t = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
	snprintf(out, len, "%s", t ? t : "null");
	free(t);
}

/* For a parse error at byte pos of a JSON file: the key whose value it is
 * in ("KEY": <here>), so that a value jansson cannot read (NaN, Infinity, as
 * Python writes them) is named. "" when the error is not in a value. */
static void key_before(const char *path, int pos, char *out, size_t len)
{
	struct fw_err e = { 0 };
	size_t n = 0, colon = 0;
	char *text = pos > 0 ? fw_rt_read_file(path, &n, &e) : NULL;
	*out = 0;
	if (text && (size_t)pos < n)
		n = (size_t)pos;
	for (size_t i = 0; text && i < n; i++) {
		if (text[i] != '"')
			continue;
		size_t b = ++i;
		while (i < n && text[i] != '"')
			i += text[i] == '\\' ? 2 : 1;
		size_t j = i + 1;
		while (j < n && strchr(" \t\r\n", text[j]))
			j++;
		if (i < n && j < n && text[j] == ':') {
			snprintf(out, len, "%.*s", (int)(i - b), text + b);
			colon = j;
		}
	}
	/* after the key's colon, only the start of the value */
	for (size_t i = colon + 1; *out && i < n; i++)
		if (strchr(",{}[]\"", text[i]))
			*out = 0;
	free(text);
}

/* A size key: present and an integer (its range is the decoder's rule). */
static enum fw_status cfg_int(const char *path, const json_t *root, const char *key,
			      int64_t *out, struct fw_err *err)
{
	json_t *v = json_object_get(root, key);
	char t[64];
	if (!v)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: %s is missing", path, key);
	if (!json_is_integer(v)) {
		json_text(v, t, sizeof(t));
		return fw_errorf(err, FW_ERR_FORMAT, "%s: %s %s is not an integer", path, key, t);
	}
	*out = json_integer_value(v);
	return FW_OK;
}

/* The activations that are arch/decoder's GELU, tanh form (Hugging Face's
 * ACT2FN names of that one function); "gelu" is the erf form. */
static const char *const tanh_gelu[] = { "gelu_new", "gelu_pytorch_tanh", "gelu_fast",
					 "gelu_accurate", NULL };

/* GPT-2 switches: a boolean when present; refused when it is not what
 * arch/decoder computes (refuse) with why. reorder_and_upcast_attn only
 * computes attention scores in f32, which fw always does: both values pass. */
static const struct {
	const char *key;
	int refuse;                     /* 0, 1: that value is refused; -1: none is */
	const char *why;
} switches[] = {
	{ "scale_attn_weights", 0, "arch/decoder always scales attention by 1/sqrt(head_dim)" },
	{ "scale_attn_by_inverse_layer_idx", 1, "arch/decoder does not scale attention by "
	  "1/(layer+1)" },
	{ "add_cross_attention", 1, "arch/decoder has no cross-attention" },
	{ "reorder_and_upcast_attn", -1, NULL },
};

/* config.json: every value import reads is checked, the sizes by the rules
 * of arch/decoder (dims.h). The first problem is err, one line naming the
 * file, the key and the value. */
static enum fw_status read_config(const char *dir, struct gpt2_config *c, struct fw_err *err)
{
	char path[4200], t[64];
	json_error_t je;
	snprintf(path, sizeof(path), "%s/config.json", dir);
	json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
	if (!root) {
		if (errno == ENOENT && je.line < 0)
			return fw_errorf(err, FW_ERR_IO, "%s: %s", path, je.text);
		char key[64];
		key_before(path, je.position, key, sizeof(key));
		return fw_errorf(err, FW_ERR_FORMAT, "%s:%d:%d: %s%s%s", path, je.line, je.column,
				 key, *key ? ": " : "", je.text);
	}
	enum fw_status s = FW_OK;
	json_t *v;
	*c = (struct gpt2_config){ .eps = 1e-5, .tie = true };
	if (!json_is_object(root)) {
		s = fw_errorf(err, FW_ERR_FORMAT, "%s: not a JSON object", path);
		goto out;
	}
	/* n_positions; older files have n_ctx only */
	const char *pos_key = json_object_get(root, "n_positions") || !json_object_get(root, "n_ctx") ?
			      "n_positions" : "n_ctx";
	if ((v = json_object_get(root, "model_type")) &&
	    (!json_is_string(v) || strcmp(json_string_value(v), "gpt2"))) {
		json_text(v, t, sizeof(t));
		s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: model_type %s is not \"gpt2\"", path, t);
		goto out;
	}
	if ((s = cfg_int(path, root, "n_layer", &c->n_layer, err)) ||
	    (s = cfg_int(path, root, "n_head", &c->n_head, err)) ||
	    (s = cfg_int(path, root, "n_embd", &c->n_embd, err)) ||
	    (s = cfg_int(path, root, "vocab_size", &c->vocab, err)) ||
	    (s = cfg_int(path, root, pos_key, &c->n_pos, err)))
		goto out;
	if ((v = json_object_get(root, "layer_norm_epsilon"))) {
		if (!json_is_number(v)) {
			json_text(v, t, sizeof(t));
			s = fw_errorf(err, FW_ERR_FORMAT, "%s: layer_norm_epsilon %s is not a number",
				      path, t);
			goto out;
		}
		c->eps = json_number_value(v);
	}
	static const char *const keys[6] = { "n_layer", "n_head", "n_embd", "vocab_size", NULL,
					     "layer_norm_epsilon" };
	const char *k6[6];
	memcpy(k6, keys, sizeof(k6));
	k6[4] = pos_key;
	struct decoder_dims dims = { c->n_layer, c->n_head, c->n_embd, c->vocab, c->n_pos, c->eps };
	char why[160];
	if (!decoder_dims_check(&dims, k6, why, sizeof(why))) {
		s = fw_errorf(err, FW_ERR_FORMAT, "%s: %s", path, why);
		goto out;
	}
	if ((v = json_object_get(root, "tie_word_embeddings"))) {
		if (!json_is_boolean(v)) {
			json_text(v, t, sizeof(t));
			s = fw_errorf(err, FW_ERR_FORMAT, "%s: tie_word_embeddings %s is not true or "
				      "false", path, t);
			goto out;
		}
		c->tie = json_is_true(v);
	}
	if ((v = json_object_get(root, "activation_function"))) {
		int i = 0;
		while (json_is_string(v) && tanh_gelu[i] && strcmp(json_string_value(v), tanh_gelu[i]))
			i++;
		if (!json_is_string(v) || !tanh_gelu[i]) {
			json_text(v, t, sizeof(t));
			s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: activation_function %s is not "
				      "arch/decoder's GELU, the tanh form (gelu_new, gelu_pytorch_tanh, "
				      "gelu_fast, gelu_accurate)", path, t);
			goto out;
		}
	}
	if ((v = json_object_get(root, "n_inner")) && !json_is_null(v) &&
	    (!json_is_integer(v) || json_integer_value(v) != DECODER_MLP_MULT * c->n_embd)) {
		json_text(v, t, sizeof(t));
		s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: n_inner %s is not null or %d * n_embd "
			      "(%lld), the MLP width of arch/decoder", path, t, DECODER_MLP_MULT,
			      (long long)(DECODER_MLP_MULT * c->n_embd));
		goto out;
	}
	for (size_t i = 0; i < sizeof(switches) / sizeof(switches[0]); i++) {
		if (!(v = json_object_get(root, switches[i].key)))
			continue;
		json_text(v, t, sizeof(t));
		if (!json_is_boolean(v)) {
			s = fw_errorf(err, FW_ERR_FORMAT, "%s: %s %s is not true or false", path,
				      switches[i].key, t);
			goto out;
		}
		if (json_is_true(v) == switches[i].refuse) {
			s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: %s %s is not supported: %s", path,
				      switches[i].key, t, switches[i].why);
			goto out;
		}
	}
out:
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
 * data allocated with alloc): what import fills and export reads. */
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

static int gpt2_tensors(const struct gpt2_config *c, struct gpt2_set *g, bool alloc)
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
	for (int i = 0; alloc && i < g->n; i++)
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
 * read is an error (import without it by moving the files away), and so is
 * one with more tokens than config.json's vocab_size. */
static struct fw_tokenizer *folder_tokenizer(const char *dir, int64_t vocab, struct fw_err *err)
{
	char tj[4200], vj[4200], mt[4200];
	snprintf(tj, sizeof(tj), "%s/tokenizer.json", dir);
	snprintf(vj, sizeof(vj), "%s/vocab.json", dir);
	snprintf(mt, sizeof(mt), "%s/merges.txt", dir);
	struct fw_tokenizer *t = NULL;
	const char *from = tj;
	if (access(tj, F_OK) == 0)
		t = fw_tokenizer_load_hf_json(tj, err);
	else if (access(vj, F_OK) == 0 && access(mt, F_OK) == 0)
		t = fw_tokenizer_load_bpe(vj, mt, err), from = vj;
	if (t && fw_tokenizer_vocab_size(t) > vocab) {
		fw_errorf(err, FW_ERR_FORMAT, "%s/config.json: vocab_size %lld is less than the %d "
			  "tokens of the folder's tokenizer (%s)", dir, (long long)vocab,
			  fw_tokenizer_vocab_size(t), from);
		fw_tokenizer_free(t);
		t = NULL;
	}
	return t;
}

static void shape_text(int ndim, const int64_t *ne, char *out, size_t len)
{
	size_t n = (size_t)snprintf(out, len, "[");
	for (int i = 0; i < ndim && n < len; i++)
		n += (size_t)snprintf(out + n, len - n, "%s%lld", i ? ", " : "", (long long)ne[i]);
	if (n < len)
		snprintf(out + n, len - n, "]");
}

/* Every tensor of the config is in st with its shape (Conv1D weights
 * transposed) and a float dtype, and no block is past n_layer: err names
 * the tensor and both shapes otherwise. */
static enum fw_status check_tensors(const struct fw_st_file *st, const char *path,
				    const struct gpt2_config *c, const struct gpt2_set *g,
				    struct fw_err *err)
{
	char have[96], want[96], why[96];
	for (int i = 0; i < g->n; i++) {
		const struct fw_tensor *t = &g->ts[i];
		const struct fw_st_entry *e = find_key(st, t->name);
		if (!e)
			return fw_errorf(err, FW_ERR_FORMAT, "%s: missing tensor '%s'", path, t->name);
		int64_t ne[2] = { t->ne[0], t->ne[1] };
		if (is_conv1d(t->name))
			ne[0] = t->ne[1], ne[1] = t->ne[0];
		if (e->ndim != t->ndim || e->ne[0] != ne[0] || (t->ndim == 2 && e->ne[1] != ne[1])) {
			shape_text(e->ndim, e->ne, have, sizeof(have));
			shape_text(t->ndim, ne, want, sizeof(want));
			if (!strcmp(t->name, "wte.weight") || !strcmp(t->name, "lm_head.weight"))
				snprintf(why, sizeof(why), "vocab_size %lld, n_embd %lld",
					 (long long)c->vocab, (long long)c->n_embd);
			else if (!strcmp(t->name, "wpe.weight"))
				snprintf(why, sizeof(why), "n_positions %lld, n_embd %lld",
					 (long long)c->n_pos, (long long)c->n_embd);
			else
				snprintf(why, sizeof(why), "n_embd %lld", (long long)c->n_embd);
			return fw_errorf(err, FW_ERR_FORMAT, "%s: tensor '%s' has shape %s; config.json "
					 "(%s) needs %s", path, e->name, have, why, want);
		}
		if (e->dtype != FW_F32 && e->dtype != FW_F16 && e->dtype != FW_BF16)
			return fw_errorf(err, FW_ERR_FORMAT, "%s: tensor '%s' has dtype %s, not a float "
					 "type (F32, F16, BF16)", path, e->name, fw_dtype_name(e->dtype));
	}
	for (int i = 0; i < st->n; i++) {
		const char *n = st->entries[i].name;
		if (!strncmp(n, "transformer.", 12))
			n += 12;
		char *end = NULL;
		long l = !strncmp(n, "h.", 2) ? strtol(n + 2, &end, 10) : -1;
		if (l >= c->n_layer && end != n + 2 && *end == '.')
			return fw_errorf(err, FW_ERR_FORMAT, "%s: tensor '%s' is past config.json's "
					 "n_layer %lld", path, st->entries[i].name, (long long)c->n_layer);
	}
	return FW_OK;
}

int cmd_import(int argc, char **argv)
{
	if (argc >= 1 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"))) {
		printf("usage: fwrun import HF_DIR OUT.h5\nReads a Hugging Face GPT-2 folder "
		       "(config.json + model.safetensors; F32/F16/BF16) into an fw weights file\n"
		       "usable with fwrun train/eval/generate --load=OUT.h5. The folder's tokenizer\n"
		       "(tokenizer.json, or vocab.json + merges.txt), if any, is stored with it.\n"
		       "config.json must describe a model arch/decoder computes; nothing is written\n"
		       "otherwise. A BERT or RoBERTa folder (BertModel, BertForMaskedLM,\n"
		       "BertForSequenceClassification, BertForTokenClassification, RobertaForMaskedLM)\n"
		       "becomes an arch/encoder file (plugins/arch/encoder/README.md).\n");
		return EXIT_OK;
	}
	if (argc != 2)
		return die(EXIT_USAGE, "import: usage: fwrun import HF_DIR OUT.h5");
	if (hf_is_encoder_folder(argv[0]))          /* BERT, RoBERTa: hf_bert.c */
		return bert_import(argv[0], argv[1]);
	struct gpt2_config c;
	struct fw_err err = { 0 };
	struct fw_st_file st = { 0 };
	struct gpt2_set g = { 0 };
	struct fw_tokenizer *tok = NULL;
	char *tok_json = NULL, *config = NULL;
	char path[4200];
	int rc = EXIT_RUNTIME;
	/* Everything is checked before the output is written (fw_h5_save
	 * writes a temporary file and renames it). */
	if (read_config(argv[0], &c, &err) != FW_OK)
		return die(EXIT_RUNTIME, "%s", err.msg);
	tok = folder_tokenizer(argv[0], c.vocab, &err);
	if (!tok && err.status)
		return die(EXIT_RUNTIME, "%s", err.msg);
	tok_json = tok ? fw_tokenizer_serialize(tok, &err) : NULL;
	if (tok && !tok_json) {
		rc = die(EXIT_RUNTIME, "%s", err.msg);
		goto out;
	}
	snprintf(path, sizeof(path), "%s/model.safetensors", argv[0]);
	if (fw_st_open(path, &st, &err) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", err.msg);
		goto out;
	}
	config = arch_config(&c);
	if (gpt2_tensors(&c, &g, false) != 0 || !config) {
		rc = die(EXIT_RUNTIME, "import: out of memory");
		goto out;
	}
	if (check_tensors(&st, path, &c, &g, &err) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", err.msg);
		goto out;
	}
	for (int i = 0; i < g.n; i++) {
		struct fw_tensor *t = &g.ts[i];
		const struct fw_st_entry *e = find_key(&st, t->name);
		if (!(t->data = malloc(fw_nbytes(t)))) {
			rc = die(EXIT_RUNTIME, "import: out of memory");
			goto out;
		}
		if (is_conv1d(t->name))
			transpose_to_f32(t->data, e->data, e->dtype, e->ne[0], e->ne[1]);
		else
			fw_convert(t->data, FW_F32, e->data, e->dtype, fw_nelem(t));
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

/* A stored tokenizer in dir as Hugging Face has it: tokenizer.json for a
 * tokenizer.json pipeline, vocab.json + merges.txt for GPT-2 BPE. */
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
	json_t *hf = json_object_get(root, "json");
	enum fw_status st = FW_OK;
	if (json_is_string(hf)) {       /* a tokenizer.json pipeline: the file as read */
		snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
		st = fw_file_write_atomic(path, json_string_value(hf), json_string_length(hf), err);
		*done = st == FW_OK;
	} else if (json_is_string(vocab) && json_is_string(merges)) {
		snprintf(path, sizeof(path), "%s/vocab.json", dir);
		st = fw_file_write_atomic(path, json_string_value(vocab), json_string_length(vocab), err);
		snprintf(path, sizeof(path), "%s/merges.txt", dir);
		if (st == FW_OK)
			st = fw_file_write_atomic(path, json_string_value(merges), json_string_length(merges),
					  err);
		*done = st == FW_OK;
	}
	json_decref(root);
	fw_free(stored);
	return st;
}

/* The end-of-text id config.json names: the stored tokenizer's, GPT-2's
 * 50256 for a file without one (an imported GPT-2), and -1 (left out) when
 * the model's vocabulary has no such id. */
static json_int_t export_eos(const char *h5, int64_t vocab)
{
	char *stored = NULL;
	struct fw_err e = { 0 };
	int32_t eos = -1;
	if (fw_h5_read_attr(h5, TOKENIZER_ATTR, &stored, &e) == FW_OK) {
		struct fw_tokenizer *t = fw_tokenizer_deserialize(stored, strlen(stored), h5, &e);
		if (t)
			eos = fw_tokenizer_eos(t);
		fw_tokenizer_free(t);
		fw_free(stored);
	} else if (e.status == FW_ERR_NOT_FOUND) {
		eos = 50256;
	}
	return eos >= 0 && eos < vocab ? eos : -1;
}

int cmd_export(int argc, char **argv)
{
	if (argc >= 1 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"))) {
		printf("usage: fwrun export IN.h5 OUT_DIR [--base-only]\nWrites a Hugging Face GPT-2 "
		       "folder (config.json + model.safetensors, F32) from an fw checkpoint or "
		       "weights\nfile of arch/decoder; fwrun import reads it back bit-exactly. A "
		       "file with other\ntrained tensors (a LoRA run's adapter: fwrun merge it "
		       "first) is refused unless\n--base-only drops them. An arch/encoder file "
		       "becomes the BERT (or RoBERTa)\nclass of its head.\n");
		return EXIT_OK;
	}
	bool base_only = false;
	char *pos[2];
	int np = 0;
	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--base-only"))
			base_only = true;
		else if (!strncmp(argv[i], "--", 2) || np == 2)
			return die(EXIT_USAGE, "export: usage: fwrun export IN.h5 OUT_DIR [--base-only]");
		else
			pos[np++] = argv[i];
	}
	if (np != 2)
		return die(EXIT_USAGE, "export: usage: fwrun export IN.h5 OUT_DIR [--base-only]");
	char in_path[4200];
	struct fw_err err = { 0 };
	if (resolve_load(pos[0], in_path, sizeof(in_path), &err) != FW_OK)
		return die(EXIT_RUNTIME, "%s", err.msg);
	pos[0] = in_path;           /* a run directory: its newest checkpoint */
	argv = pos;
	char *config = NULL;
	if (fw_rt_ckpt_read_config(argv[0], &config, &err) != FW_OK)
		return die(EXIT_RUNTIME, "%s", err.msg);
	if (!strncmp(config, "[arch/encoder]", 14) || strstr(config, "\n[arch/encoder]")) {    /* BERT, RoBERTa: hf_bert.c */
		int rc = bert_export(argv[0], argv[1], config, base_only);
		fw_free(config);
		return rc;
	}
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
	if (gpt2_tensors(&c, &g, true) != 0) {
		rc = die(EXIT_RUNTIME, "export: out of memory");
		goto out;
	}
	if (fw_rt_check_foreign_tensors(argv[0], g.tp, g.n, NULL, base_only, &fwrun_log,
					&err) != FW_OK ||
	    fw_h5_load(argv[0], g.tp, g.n, &err) != FW_OK) {
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
				"attn_pdrop", 0.0, "bos_token_id", (json_int_t)0,
				"eos_token_id", (json_int_t)0);
	json_int_t eos = export_eos(argv[0], c.vocab);
	if (cfg && eos >= 0) {          /* GPT-2 uses its end-of-text id for both */
		json_object_set_new(cfg, "bos_token_id", json_integer(eos));
		json_object_set_new(cfg, "eos_token_id", json_integer(eos));
	} else if (cfg) {
		json_object_del(cfg, "bos_token_id");
		json_object_del(cfg, "eos_token_id");
	}
	snprintf(path, sizeof(path), "%s/config.json", argv[1]);
	struct fw_err werr = { 0 };
	enum fw_status wst = write_json_file(path, cfg, &werr);
	if (wst != FW_OK) {
		json_decref(cfg);
		rc = die(EXIT_RUNTIME, "%s", werr.msg);
		goto out;
	}
	json_decref(cfg);
	bool with_tok = false;
	if (export_tokenizer(argv[0], argv[1], &with_tok, &err) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", err.msg);
		goto out;
	}
	fprintf(stderr, "fwrun: exported %d tensors%s to %s\n", g.n,
		with_tok ? " and the tokenizer" : "", argv[1]);
	rc = EXIT_OK;
out:
	gpt2_set_free(&g);
	return rc;
}
