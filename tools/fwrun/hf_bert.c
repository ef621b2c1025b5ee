/* hf_bert.c - fwrun import / export of Hugging Face BERT and RoBERTa folders
 * (arch/encoder).
 *
 * Classes: BertModel, BertForMaskedLM, BertForSequenceClassification,
 * BertForTokenClassification (model_type "bert") and RobertaForMaskedLM
 * (model_type "roberta": positions start at pad_token_id + 1, one token
 * type, the MLM head named lm_head.*). fw's names are HF's without the
 * "bert." / "roberta." prefix, RoBERTa's lm_head.dense / layer_norm / bias
 * stored as BERT's cls.predictions.transform.dense / LayerNorm / bias. The
 * decoder weight tied to the word embeddings (cls.predictions.decoder.*,
 * lm_head.decoder.*) is not stored twice; position_ids buffers are skipped.
 * A classifier's id2label becomes the checkpoint's --labels. BertModel
 * becomes a seq-cls model without its classifier, which a --finetune run
 * initialises.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "fwrun.h"

enum bert_class { BERT_BASE, BERT_MLM, BERT_SEQ, BERT_TOK, ROBERTA_MLM };

static const struct {
	const char *name, *model_type, *head;
} classes[] = {
	[BERT_BASE] = { "BertModel", "bert", "seq-cls" },
	[BERT_MLM] = { "BertForMaskedLM", "bert", "mlm" },
	[BERT_SEQ] = { "BertForSequenceClassification", "bert", "seq-cls" },
	[BERT_TOK] = { "BertForTokenClassification", "bert", "token-cls" },
	[ROBERTA_MLM] = { "RobertaForMaskedLM", "roberta", "mlm" },
};
#define N_CLASSES ((int)(sizeof(classes) / sizeof(classes[0])))

struct bert_config {
	enum bert_class cls;
	int64_t L, H, C, F, V, P, types, offset, labels;
	double eps;
	char *label_list;                /* "a,b,c" from id2label, or NULL */
};

struct bert_set {
	int n;
	struct fw_tensor *ts, **tp;
};

static void set_free(struct bert_set *g)
{
	for (int i = 0; g->ts && i < g->n; i++)
		free(g->ts[i].data);
	free(g->ts);
	free(g->tp);
	memset(g, 0, sizeof(*g));
}

static void add(struct bert_set *g, int nd, int64_t a, int64_t b, const char *base,
		const char *suffix)
{
	struct fw_tensor *t = &g->ts[g->n];
	snprintf(t->name, sizeof(t->name), "%s%s", base, suffix);
	t->dtype = FW_F32;
	t->ndim = nd;
	t->ne[0] = a;
	t->ne[1] = b;
	fw_set_contiguous_strides(t);
	g->tp[g->n++] = t;
}

static void add_linear(struct bert_set *g, int64_t out, int64_t in, const char *base)
{
	add(g, 2, out, in, base, ".weight");
	add(g, 1, out, 0, base, ".bias");
}

static void add_norm(struct bert_set *g, int64_t C, const char *base)
{
	add(g, 1, C, 0, base, ".weight");
	add(g, 1, C, 0, base, ".bias");
}

/* fw's tensors of c, in the order arch/encoder creates them. */
static int bert_tensors(const struct bert_config *c, struct bert_set *g, bool alloc)
{
	int cap = 5 + 16 * (int)c->L + 8;
	int64_t C = c->C;
	char p[32], n[80];
	memset(g, 0, sizeof(*g));
	g->ts = calloc((size_t)cap, sizeof(*g->ts));
	g->tp = calloc((size_t)cap, sizeof(*g->tp));
	if (!g->ts || !g->tp)
		return -1;
	add(g, 2, c->V, C, "embeddings.word_embeddings", ".weight");
	add(g, 2, c->P, C, "embeddings.position_embeddings", ".weight");
	if (c->types)
		add(g, 2, c->types, C, "embeddings.token_type_embeddings", ".weight");
	add_norm(g, C, "embeddings.LayerNorm");
	static const char *const qkv[3] = { "query", "key", "value" };
	for (int l = 0; l < c->L; l++) {
		snprintf(p, sizeof(p), "encoder.layer.%d", l);
		for (int i = 0; i < 3; i++) {
			snprintf(n, sizeof(n), "%s.attention.self.%s", p, qkv[i]);
			add_linear(g, C, C, n);
		}
		snprintf(n, sizeof(n), "%s.attention.output.dense", p);
		add_linear(g, C, C, n);
		snprintf(n, sizeof(n), "%s.attention.output.LayerNorm", p);
		add_norm(g, C, n);
		snprintf(n, sizeof(n), "%s.intermediate.dense", p);
		add_linear(g, c->F, C, n);
		snprintf(n, sizeof(n), "%s.output.dense", p);
		add_linear(g, C, c->F, n);
		snprintf(n, sizeof(n), "%s.output.LayerNorm", p);
		add_norm(g, C, n);
	}
	if (c->cls == BERT_MLM || c->cls == ROBERTA_MLM) {
		add_linear(g, C, C, "cls.predictions.transform.dense");
		add_norm(g, C, "cls.predictions.transform.LayerNorm");
		add(g, 1, c->V, 0, "cls.predictions", ".bias");
	} else if (c->cls == BERT_SEQ || c->cls == BERT_BASE) {
		add_linear(g, C, C, "pooler.dense");
		if (c->cls == BERT_SEQ)
			add_linear(g, c->labels, C, "classifier");
	} else {
		add_linear(g, c->labels, C, "classifier");
	}
	for (int i = 0; alloc && i < g->n; i++)
		if (!(g->ts[i].data = malloc(fw_nbytes(&g->ts[i]))))
			return -1;
	return 0;
}

/* The Hugging Face key of fw tensor name (prefix "bert." or "roberta."). */
static void hf_key(const struct bert_config *c, const char *name, char *out, size_t len)
{
	static const char *const rob[][2] = {
		{ "cls.predictions.transform.dense.", "lm_head.dense." },
		{ "cls.predictions.transform.LayerNorm.", "lm_head.layer_norm." },
		{ "cls.predictions.bias", "lm_head.bias" },
	};
	if (c->cls == ROBERTA_MLM)
		for (int i = 0; i < 3; i++)
			if (!strncmp(name, rob[i][0], strlen(rob[i][0]))) {
				snprintf(out, len, "%s%s", rob[i][1], name + strlen(rob[i][0]));
				return;
			}
	bool head = !strncmp(name, "cls.", 4) || !strncmp(name, "classifier", 10);
	if (head || c->cls == BERT_BASE)
		snprintf(out, len, "%s", name);
	else
		snprintf(out, len, "%s.%s", classes[c->cls].model_type, name);
}

/* --- config.json ------------------------------------------------------------------------ */

static enum fw_status get_int(const char *path, json_t *root, const char *key, int64_t *v,
			      int64_t lo, int64_t hi, struct fw_err *err)
{
	json_t *j = json_object_get(root, key);
	if (!json_is_integer(j))
		return fw_errorf(err, FW_ERR_FORMAT, "%s: %s is %s", path, key,
				 j ? "not an integer" : "missing");
	*v = json_integer_value(j);
	if (*v < lo || *v > hi)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: %s %lld is out of range [%lld, %lld]", path,
				 key, (long long)*v, (long long)lo, (long long)hi);
	return FW_OK;
}

/* id2label {"0": "neg", ...} into "neg,..." in id order. */
static enum fw_status read_labels(const char *path, json_t *root, struct bert_config *c,
				  struct fw_err *err)
{
	json_t *m = json_object_get(root, "id2label");
	if (!json_is_object(m))
		return FW_OK;
	int64_t n = (int64_t)json_object_size(m);
	size_t len = 1;
	for (int64_t i = 0; i < n; i++) {
		char k[32];
		snprintf(k, sizeof(k), "%lld", (long long)i);
		json_t *v = json_object_get(m, k);
		if (!json_is_string(v) || !*json_string_value(v) || strchr(json_string_value(v), ','))
			return fw_errorf(err, FW_ERR_FORMAT, "%s: id2label has no name for id %s (or "
					 "one with a comma)", path, k);
		len += strlen(json_string_value(v)) + 1;
	}
	if (!(c->label_list = calloc(1, len)))
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	for (int64_t i = 0; i < n; i++) {
		char k[32];
		snprintf(k, sizeof(k), "%lld", (long long)i);
		sprintf(c->label_list + strlen(c->label_list), "%s%s", i ? "," : "",
			json_string_value(json_object_get(m, k)));
	}
	c->labels = n;
	return FW_OK;
}

static enum fw_status read_config(const char *dir, struct bert_config *c, struct fw_err *err)
{
	char path[4200];
	json_error_t je;
	snprintf(path, sizeof(path), "%s/config.json", dir);
	json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
	if (!root)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: %s", path, je.text);
	enum fw_status s = FW_OK;
	memset(c, 0, sizeof(*c));
	const char *mt = json_string_value(json_object_get(root, "model_type"));
	json_t *archs = json_object_get(root, "architectures");
	const char *an = json_string_value(json_array_get(archs, 0));
	int k = 0;
	while (an && k < N_CLASSES && strcmp(an, classes[k].name))
		k++;
	if (!an || k == N_CLASSES) {
		s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: architectures[0] %s%s%s is not one arch/encoder "
			      "imports (BertModel, BertForMaskedLM, BertForSequenceClassification, "
			      "BertForTokenClassification, RobertaForMaskedLM)", path, an ? "\"" : "",
			      an ? an : "missing", an ? "\"" : "");
		goto out;
	}
	if (!mt || strcmp(mt, classes[k].model_type)) {
		s = fw_errorf(err, FW_ERR_INVALID, "%s: model_type \"%s\" disagrees with "
			      "architectures[0] %s (model_type \"%s\")", path, mt ? mt : "(missing)",
			      classes[k].name, classes[k].model_type);
		goto out;
	}
	c->cls = (enum bert_class)k;
	const char *act = json_string_value(json_object_get(root, "hidden_act"));
	const char *pe = json_string_value(json_object_get(root, "position_embedding_type"));
	double eps = json_number_value(json_object_get(root, "layer_norm_eps"));
	if ((s = get_int(path, root, "num_hidden_layers", &c->L, 1, 1024, err)) ||
	    (s = get_int(path, root, "num_attention_heads", &c->H, 1, 1024, err)) ||
	    (s = get_int(path, root, "hidden_size", &c->C, 1, 65536, err)) ||
	    (s = get_int(path, root, "intermediate_size", &c->F, 1, 262144, err)) ||
	    (s = get_int(path, root, "vocab_size", &c->V, 2, 1 << 24, err)) ||
	    (s = get_int(path, root, "max_position_embeddings", &c->P, 1, 1 << 20, err)) ||
	    (s = get_int(path, root, "type_vocab_size", &c->types, 0, 1024, err)))
		goto out;
	if (c->C % c->H) {
		s = fw_errorf(err, FW_ERR_FORMAT, "%s: hidden_size %lld is not a multiple of "
			      "num_attention_heads %lld", path, (long long)c->C, (long long)c->H);
		goto out;
	}
	if (act && strcmp(act, "gelu")) {
		s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: hidden_act \"%s\" is not \"gelu\" (erf), "
			      "arch/encoder's", path, act);
		goto out;
	}
	if (pe && strcmp(pe, "absolute")) {
		s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: position_embedding_type \"%s\" is not "
			      "\"absolute\"", path, pe);
		goto out;
	}
	if (!(eps > 0 && eps <= 1)) {
		s = fw_errorf(err, FW_ERR_FORMAT, "%s: layer_norm_eps is missing or not in (0, 1]", path);
		goto out;
	}
	c->eps = eps;
	if (c->cls == ROBERTA_MLM) {      /* positions from padding_idx + 1 */
		int64_t pad = 0;
		if ((s = get_int(path, root, "pad_token_id", &pad, 0, c->P - 2, err)))
			goto out;
		c->offset = pad + 1;
	}
	c->labels = 2;
	if (c->cls == BERT_SEQ || c->cls == BERT_TOK)
		s = read_labels(path, root, c, err);
out:
	json_decref(root);
	return s;
}

static char *encoder_config(const struct bert_config *c)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		return NULL;
	if (c->label_list)
		fprintf(f, "[run]\nlabels = %s\n\n", c->label_list);
	fprintf(f, "[arch/encoder]\nnum-hidden-layers = %lld\nnum-attention-heads = %lld\n"
		"hidden-size = %lld\nintermediate-size = %lld\nvocab-size = %lld\n"
		"max-position-embeddings = %lld\ntype-vocab-size = %lld\nposition-offset = %lld\n"
		"layer-norm-eps = %.17g\nhead = %s\nnum-labels = %lld\n", (long long)c->L,
		(long long)c->H, (long long)c->C, (long long)c->F, (long long)c->V, (long long)c->P,
		(long long)c->types, (long long)c->offset, c->eps, classes[c->cls].head,
		(long long)c->labels);
	fclose(f);
	return buf;
}

bool hf_is_encoder_folder(const char *dir)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/config.json", dir);
	json_t *root = json_load_file(path, 0, NULL);
	const char *mt = json_string_value(json_object_get(root, "model_type"));
	const char *an = json_string_value(json_array_get(json_object_get(root, "architectures"), 0));
	bool yes = (mt && (!strcmp(mt, "bert") || !strcmp(mt, "roberta"))) ||
		   (an && (!strncmp(an, "Bert", 4) || !strncmp(an, "Roberta", 7)));
	json_decref(root);
	return yes;
}

int bert_import(const char *dir, const char *out)
{
	struct bert_config c;
	struct fw_err err = { 0 };
	struct fw_st_file st = { 0 };
	struct bert_set g = { 0 };
	char *config = NULL, *tok_json = NULL, path[4200];
	struct fw_tokenizer *tok = NULL;
	int rc = EXIT_RUNTIME;
	if (read_config(dir, &c, &err) != FW_OK)
		return fail(err.status, "%s", err.msg);
	snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
	FILE *probe = fopen(path, "rb");
	if (probe) {
		fclose(probe);
		if (!(tok = fw_tokenizer_load_hf_json(path, &err)) ||
		    !(tok_json = fw_tokenizer_serialize(tok, &err))) {
			rc = fail(err.status ? err.status : FW_ERR_IO, "%s", err.msg);
			goto out;
		}
	}
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	if (fw_st_open(path, &st, &err) != FW_OK) {
		rc = fail(err.status ? err.status : FW_ERR_IO, "%s", err.msg);
		goto out;
	}
	if (!(config = encoder_config(&c)) || bert_tensors(&c, &g, false) != 0) {
		rc = fail(FW_ERR_NOMEM, "import: out of memory");
		goto out;
	}
	for (int i = 0; i < g.n; i++) {
		struct fw_tensor *t = &g.ts[i];
		char key[FW_NAME_MAX * 2];
		hf_key(&c, t->name, key, sizeof(key));
		const struct fw_st_entry *e = fw_st_find(&st, key);
		if (!e && c.cls == BERT_BASE)   /* a BertModel saved with its "bert." prefix */
			e = fw_st_find(&st, (snprintf(key, sizeof(key), "bert.%s", t->name), key));
		if (!e) {
			rc = fail(FW_ERR_FORMAT, "%s: missing tensor '%s' (%s)", path, key,
				 classes[c.cls].name);
			goto out;
		}
		bool shape = e->ndim == t->ndim && e->ne[0] == t->ne[0] &&
			     (t->ndim == 1 || e->ne[1] == t->ne[1]);
		if (!shape || (e->dtype != FW_F32 && e->dtype != FW_F16 && e->dtype != FW_BF16)) {
			rc = fail(FW_ERR_FORMAT, "%s: tensor '%s' has %s %s; config.json needs f32/f16/bf16 "
				 "[%lld%s%lld]", path, key, shape ? "dtype" : "shape",
				 shape ? fw_dtype_name(e->dtype) : "other than", (long long)t->ne[0],
				 t->ndim == 2 ? ", " : "", t->ndim == 2 ? (long long)t->ne[1] : 0LL);
			goto out;
		}
		if (!(t->data = malloc(fw_nbytes(t)))) {
			rc = fail(FW_ERR_NOMEM, "import: out of memory");
			goto out;
		}
		fw_convert(t->data, FW_F32, e->data, e->dtype, fw_nelem(t));
	}
	struct fw_h5_attr attrs[] = { { "fw_arch", "arch/encoder" }, { "config", config },
				      { "source", dir }, { TOKENIZER_ATTR, tok_json } };
	if (fw_h5_save(out, g.tp, g.n, attrs, tok_json ? 4 : 3, &err) != FW_OK) {
		rc = fail(err.status ? err.status : FW_ERR_IO, "%s", err.msg);
		goto out;
	}
	fprintf(stderr, "fwrun: imported %s: %d tensors (%lld layers, width %lld)%s to %s\n",
		classes[c.cls].name, g.n, (long long)c.L, (long long)c.C,
		tok ? " and the folder's tokenizer" : "", out);
	rc = EXIT_OK;
out:
	fw_free(tok_json);
	fw_tokenizer_free(tok);
	set_free(&g);
	free(config);
	free(c.label_list);
	fw_st_close(&st);
	return rc;
}

/* --- export ------------------------------------------------------------------------------ */

/* "key = value" of section sec in an INI text, into out. */
static bool ini_value(const char *text, const char *sec, const char *key, char *out, size_t len)
{
	char head[64], pat[96];
	snprintf(head, sizeof(head), "[%s]", sec);
	const char *s = strstr(text, head);
	snprintf(pat, sizeof(pat), "\n%s = ", key);
	const char *p = s ? strstr(s, pat) : NULL;
	const char *next = s ? strstr(s + 1, "\n[") : NULL;
	if (!p || (next && p > next))
		return false;
	p += strlen(pat);
	size_t n = strcspn(p, "\n");
	snprintf(out, len, "%.*s", (int)(n < len ? n : len - 1), p);
	return true;
}

static bool has_tensor(const char *path, const char *name)
{
	struct fw_h5_entry *e = NULL;
	int n = 0;
	struct fw_err err = { 0 };
	bool found = false;
	if (fw_h5_list(path, &e, &n, &err) == FW_OK)
		for (int i = 0; i < n && !found; i++)
			found = !strcmp(e[i].name, name);
	fw_free(e);
	return found;
}

int bert_export(const char *in, const char *dir, const char *config, bool base_only)
{
	struct bert_config c = { 0 };
	char v[4096], head[32] = "", labels[4096] = "";
	static const char *const keys[] = { "num-hidden-layers", "num-attention-heads",
					    "hidden-size", "intermediate-size", "vocab-size",
					    "max-position-embeddings", "type-vocab-size",
					    "position-offset", "num-labels" };
	int64_t *dst[] = { &c.L, &c.H, &c.C, &c.F, &c.V, &c.P, &c.types, &c.offset, &c.labels };
	for (int i = 0; i < 9; i++) {
		if (!ini_value(config, "arch/encoder", keys[i], v, sizeof(v)))
			return fail(FW_ERR_FORMAT, "%s: its configuration has no arch/encoder %s", in,
				   keys[i]);
		*dst[i] = strtoll(v, NULL, 10);
	}
	ini_value(config, "arch/encoder", "layer-norm-eps", v, sizeof(v));
	c.eps = strtod(v, NULL);
	ini_value(config, "arch/encoder", "head", head, sizeof(head));
	ini_value(config, "run", "labels", labels, sizeof(labels));
	ini_value(config, "arch/encoder", "pooling", v, sizeof(v));
	if (!strcmp(v, "mean"))
		return fail(FW_ERR_FORMAT, "%s: --pooling=mean has no Hugging Face BERT class", in);
	bool roberta = c.offset > 0;
	if (roberta && (strcmp(head, "mlm") || c.types != 1))
		return fail(FW_ERR_FORMAT, "%s: --position-offset=%lld exports only as "
			   "RobertaForMaskedLM (--head=mlm, --type-vocab-size=1)", in,
			   (long long)c.offset);
	c.cls = roberta ? ROBERTA_MLM : !strcmp(head, "mlm") ? BERT_MLM :
		!strcmp(head, "seq-cls") ? BERT_SEQ : BERT_TOK;
	struct bert_set g;
	struct fw_err err = { 0 };
	if (c.cls == BERT_SEQ && !has_tensor(in, "classifier.weight"))
		c.cls = BERT_BASE;      /* an imported BertModel, no classifier yet */
	int rc = EXIT_RUNTIME;
	json_t *cfg = NULL;
	if (bert_tensors(&c, &g, true) != 0) {
		rc = fail(FW_ERR_NOMEM, "export: out of memory");
		goto out;
	}
	if (fw_rt_check_foreign_tensors(in, g.tp, g.n, NULL, base_only, &fwrun_log, &err) != FW_OK ||
	    fw_h5_load(in, g.tp, g.n, &err) != FW_OK) {
		rc = fail(err.status ? err.status : FW_ERR_IO, "%s", err.msg);
		goto out;
	}
	for (int i = 0; i < g.n; i++) {     /* Hugging Face's keys */
		char key[sizeof(g.ts[i].name)];
		hf_key(&c, g.ts[i].name, key, sizeof(key));
		memcpy(g.ts[i].name, key, sizeof(key));
	}
	if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
		rc = fail(FW_ERR_FORMAT, "%s: %s", dir, strerror(errno));
		goto out;
	}
	char path[4200];
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	const char *meta[] = { "format", "pt", NULL };
	if (fw_st_save(path, g.tp, g.n, meta, &err) != FW_OK) {
		rc = fail(err.status ? err.status : FW_ERR_IO, "%s", err.msg);
		goto out;
	}
	cfg = json_pack("{s:[s], s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:s, s:s, s:f, s:f}",
			"architectures", classes[c.cls].name, "model_type",
			classes[c.cls].model_type, "num_hidden_layers", (json_int_t)c.L,
			"num_attention_heads", (json_int_t)c.H, "hidden_size", (json_int_t)c.C,
			"intermediate_size", (json_int_t)c.F, "vocab_size", (json_int_t)c.V,
			"max_position_embeddings", (json_int_t)c.P, "type_vocab_size",
			(json_int_t)c.types, "layer_norm_eps", c.eps, "hidden_act", "gelu",
			"position_embedding_type", "absolute", "hidden_dropout_prob", 0.0,
			"attention_probs_dropout_prob", 0.0);
	if (cfg && roberta)
		json_object_set_new(cfg, "pad_token_id", json_integer(c.offset - 1));
	if (cfg && (c.cls == BERT_SEQ || c.cls == BERT_TOK)) {
		json_t *id2 = json_object(), *l2 = json_object();
		char *save = NULL;
		int id = 0;
		for (char *p = strtok_r(labels, ",", &save); p; p = strtok_r(NULL, ",", &save), id++) {
			char k[32];
			snprintf(k, sizeof(k), "%d", id);
			json_object_set_new(id2, k, json_string(p));
			json_object_set_new(l2, p, json_integer(id));
		}
		for (; id < c.labels; id++) {   /* no list stored: LABEL_i as HF names them */
			char k[32], n[48];
			snprintf(k, sizeof(k), "%d", id);
			snprintf(n, sizeof(n), "LABEL_%d", id);
			json_object_set_new(id2, k, json_string(n));
			json_object_set_new(l2, n, json_integer(id));
		}
		json_object_set_new(cfg, "id2label", id2);
		json_object_set_new(cfg, "label2id", l2);
	}
	snprintf(path, sizeof(path), "%s/config.json", dir);
	if (write_json_file(path, cfg, &err) != FW_OK) {
		rc = fail(err.status ? err.status : FW_ERR_IO, "%s", err.msg);
		goto out;
	}
	fprintf(stderr, "fwrun: exported %s: %d tensors to %s\n", classes[c.cls].name, g.n, dir);
	rc = EXIT_OK;
out:
	json_decref(cfg);
	set_free(&g);
	return rc;
}

/* --- PEFT adapters of arch/encoder models ------------------------------------------------- */

static bool listed(const char *list, const char *name)
{
	size_t n = strlen(name);
	for (const char *s = list; s && *s; s = strchr(s, '\n') ? strchr(s, '\n') + 1 : NULL)
		if (!strncmp(s, name, n) && s[n] == '\t')
			return true;
	return false;
}

const char *bert_adapter_task(const char *base_list)
{
	if (!base_list || !listed(base_list, "embeddings.word_embeddings.weight"))
		return NULL;
	if (listed(base_list, "cls.predictions.bias"))
		return "mlm";
	return listed(base_list, "pooler.dense.weight") ? "seq-cls" : "token-cls";
}

void bert_peft_name(const char *task, const char *name, char *out, size_t len)
{
	struct bert_config c = { .cls = !strcmp(task, "mlm") ? BERT_MLM :
				 !strcmp(task, "seq-cls") ? BERT_SEQ : BERT_TOK };
	hf_key(&c, name, out, len);
}
