/* hf_bert.c - arch/encoder as Hugging Face's BERT and RoBERTa classes: one
 * map a class (fw_arch_i.hf_maps), which fwrun import and export read.
 *
 * BertModel, BertForMaskedLM, BertForSequenceClassification,
 * BertForTokenClassification (model_type "bert"), RobertaForMaskedLM and
 * RobertaForSequenceClassification (model_type "roberta": positions start at
 * pad_token_id + 1, one token type, the MLM head named lm_head.*, the
 * classifier --seq-cls-head=roberta's classifier.dense / out_proj). fw's names are HF's without the
 * "bert." / "roberta." prefix; RoBERTa's lm_head.dense / layer_norm / bias
 * are fw's cls.predictions.transform.dense / LayerNorm / bias. The decoder
 * tied to the word embeddings (cls.predictions.decoder.*, lm_head.decoder.*)
 * and the position_ids buffer are skipped. A BertModel is a seq-cls model
 * without its classifier (a --finetune run initialises it); export writes
 * one for a seq-cls file that has no classifier.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fw/plugin.h"

#include "hf_bert.h"

enum bert_class { BERT_BASE, BERT_MLM, BERT_SEQ, BERT_TOK, ROBERTA_MLM, ROBERTA_SEQ, N_CLASSES };

static const struct {
	const char *name, *model_type, *head;
} classes[N_CLASSES] = {
	[BERT_BASE] = { "BertModel", "bert", "seq-cls" },
	[BERT_MLM] = { "BertForMaskedLM", "bert", "mlm" },
	[BERT_SEQ] = { "BertForSequenceClassification", "bert", "seq-cls" },
	[BERT_TOK] = { "BertForTokenClassification", "bert", "token-cls" },
	[ROBERTA_MLM] = { "RobertaForMaskedLM", "roberta", "mlm" },
	[ROBERTA_SEQ] = { "RobertaForSequenceClassification", "roberta", "seq-cls" },
};

static bool roberta(enum bert_class c)
{
	return !strcmp(classes[c].model_type, "roberta");
}

/* The class of config.json's architectures[0]; N_CLASSES when none. */
static enum bert_class class_named(const json_t *root)
{
	const char *an = json_string_value(json_array_get(json_object_get(root, "architectures"), 0));
	int k = 0;
	while (an && k < N_CLASSES && strcmp(an, classes[k].name))
		k++;
	return an ? (enum bert_class)k : N_CLASSES;
}

/* The class export writes for these options (BERT_SEQ also stands for a
 * BertModel); N_CLASSES: none (mean pooling, RoBERTa's positions with
 * token classification or BERT's pooler, RoBERTa's classifier on BERT's
 * positions). */
static enum bert_class class_of(const struct fw_options *o)
{
	const char *head = fw_opt_str(o, "head");
	bool rob_pos = fw_opt_int(o, "position-offset") > 0 && fw_opt_int(o, "type-vocab-size") == 1;
	bool rob_head = !strcmp(fw_opt_str(o, "seq-cls-head"), "roberta");
	if (!strcmp(head, "mlm"))
		return rob_pos ? ROBERTA_MLM : fw_opt_int(o, "position-offset") ? N_CLASSES : BERT_MLM;
	if (!strcmp(head, "token-cls"))
		return fw_opt_int(o, "position-offset") ? N_CLASSES : BERT_TOK;
	if (strcmp(fw_opt_str(o, "pooling"), "cls") || rob_pos != rob_head)
		return N_CLASSES;
	return rob_head ? ROBERTA_SEQ : fw_opt_int(o, "position-offset") ? N_CLASSES : BERT_SEQ;
}

/* The model.safetensors key of fw parameter name in class c; false for a
 * BertModel's classifier, which it does not have. */
static bool class_key(enum bert_class c, const char *name, char *out, size_t len)
{
	static const char *const rob[][2] = {
		{ "cls.predictions.transform.dense.", "lm_head.dense." },
		{ "cls.predictions.transform.LayerNorm.", "lm_head.layer_norm." },
		{ "cls.predictions.bias", "lm_head.bias" },
	};
	bool head = !strncmp(name, "cls.", 4) || !strncmp(name, "classifier.", 11);
	if (c == BERT_BASE)
		return !head && snprintf(out, len, "%s", name) < (int)len;
	for (int i = 0; roberta(c) && i < 3; i++)
		if (!strncmp(name, rob[i][0], strlen(rob[i][0])))
			return snprintf(out, len, "%s%s", rob[i][1], name + strlen(rob[i][0])) <
			       (int)len;
	if (head)
		return snprintf(out, len, "%s", name) < (int)len;
	return snprintf(out, len, "%s.%s", classes[c].model_type, name) < (int)len;
}

static void json_text(const json_t *v, char *out, size_t len)
{
	char *t = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
	snprintf(out, len, "%s", t ? t : "null");
	free(t);
}

/* config.json: a class arch/encoder computes, its model_type, the GELU,
 * absolute positions, the LayerNorm epsilon, the width against the heads
 * and RoBERTa's pad_token_id; the option keys' types and ranges are checked
 * as they are set. One line naming the file, the key and the value. */
static enum fw_status bert_check_config(const char *path, struct fw_err *err)
{
	json_error_t je;
	json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
	if (!root)
		return fw_errorf(err, FW_ERR_FORMAT, "%s:%d:%d: %s", path, je.line, je.column, je.text);
	enum fw_status s = FW_OK;
	enum bert_class c = class_named(root);
	json_t *mt = json_object_get(root, "model_type"), *v;
	json_t *act = json_object_get(root, "hidden_act");
	json_t *pe = json_object_get(root, "position_embedding_type");
	json_t *eps = json_object_get(root, "layer_norm_eps");
	json_t *C = json_object_get(root, "hidden_size"), *H = json_object_get(root, "num_attention_heads");
	char t[64];
	if (c == N_CLASSES) {
		json_text(json_array_get(json_object_get(root, "architectures"), 0), t, sizeof(t));
		s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: architectures[0] %s is not one arch/encoder "
			      "imports (BertModel, BertForMaskedLM, BertForSequenceClassification, "
			      "BertForTokenClassification, RobertaForMaskedLM, "
			      "RobertaForSequenceClassification)", path, t);
	} else if (!json_is_string(mt) || strcmp(json_string_value(mt), classes[c].model_type)) {
		json_text(mt, t, sizeof(t));
		s = fw_errorf(err, FW_ERR_INVALID, "%s: model_type %s disagrees with architectures[0] "
			      "%s (model_type \"%s\")", path, t, classes[c].name, classes[c].model_type);
	} else if (act && (!json_is_string(act) || strcmp(json_string_value(act), "gelu"))) {
		json_text(act, t, sizeof(t));
		s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: hidden_act %s is not \"gelu\" (erf), "
			      "arch/encoder's", path, t);
	} else if (pe && (!json_is_string(pe) || strcmp(json_string_value(pe), "absolute"))) {
		json_text(pe, t, sizeof(t));
		s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: position_embedding_type %s is not "
			      "\"absolute\"", path, t);
	} else if (!json_is_number(eps) || !(json_number_value(eps) > 0 &&
					     json_number_value(eps) <= 1)) {
		s = fw_errorf(err, FW_ERR_FORMAT, "%s: layer_norm_eps is missing or not in (0, 1]", path);
	} else if (json_is_integer(C) && json_is_integer(H) && json_integer_value(H) > 0 &&
		   json_integer_value(C) % json_integer_value(H)) {
		s = fw_errorf(err, FW_ERR_FORMAT, "%s: hidden_size %lld is not a multiple of "
			      "num_attention_heads %lld", path, (long long)json_integer_value(C),
			      (long long)json_integer_value(H));
	} else if (roberta(c) && (!json_is_integer(v = json_object_get(root, "pad_token_id")) ||
				  json_integer_value(v) < 0 ||
				  json_integer_value(v) + 2 > json_integer_value(
					  json_object_get(root, "max_position_embeddings")))) {
		json_text(v, t, sizeof(t));
		s = fw_errorf(err, FW_ERR_FORMAT, "%s: pad_token_id %s is not an integer leaving a "
			      "position below max_position_embeddings (RoBERTa's positions start "
			      "after it)", path, t);
	}
	json_decref(root);
	return s;
}

/* The head of the class, RoBERTa's position offset, the classes from
 * id2label, and BertConfig's dropout defaults (0.1) where the keys are
 * absent. */
static bool bert_import_options(const char *path, char *ini, size_t len)
{
	json_t *root = json_load_file(path, 0, NULL);
	enum bert_class c = class_named(root);
	json_t *labels = json_object_get(root, "id2label");
	size_t n = 0;
	if (c == N_CLASSES) {
		json_decref(root);
		return false;
	}
#define PUT(...) (n < len ? (n += (size_t)snprintf(ini + n, len - n, __VA_ARGS__)) : n)
	PUT("head = %s\n", classes[c].head);
	if (roberta(c))
		PUT("position-offset = %lld\n",
		    (long long)json_integer_value(json_object_get(root, "pad_token_id")) + 1);
	if (c == ROBERTA_SEQ)
		PUT("seq-cls-head = roberta\n");
	if ((c == BERT_SEQ || c == BERT_TOK || c == ROBERTA_SEQ) && json_is_object(labels))
		PUT("num-labels = %zu\n", json_object_size(labels));
	if (!json_object_get(root, "hidden_dropout_prob"))
		PUT("hidden-dropout-prob = 0.1\n");
	if (!json_object_get(root, "attention_probs_dropout_prob"))
		PUT("attention-probs-dropout-prob = 0.1\n");
#undef PUT
	json_decref(root);
	return n < len;
}

/* RoBERTa's pad_token_id; a classifier's id2label / label2id as Hugging
 * Face names classes without names (LABEL_i; fwrun puts a file's stored
 * label names over them). */
static bool class_export_keys(enum bert_class c, const struct fw_options *o, char *json,
			      size_t len)
{
	json_t *x = json_object();
	if (roberta(c))
		json_object_set_new(x, "pad_token_id",
				    json_integer(fw_opt_int(o, "position-offset") - 1));
	if (c == BERT_SEQ || c == BERT_TOK || c == ROBERTA_SEQ) {
		json_t *id2 = json_object(), *l2 = json_object();
		for (int64_t i = 0; i < fw_opt_int(o, "num-labels"); i++) {
			char k[32], name[48];
			snprintf(k, sizeof(k), "%lld", (long long)i);
			snprintf(name, sizeof(name), "LABEL_%lld", (long long)i);
			json_object_set_new(id2, k, json_string(name));
			json_object_set_new(l2, name, json_integer(i));
		}
		json_object_set_new(x, "id2label", id2);
		json_object_set_new(x, "label2id", l2);
	}
	char *t = json_dumps(x, JSON_COMPACT);
	json_decref(x);
	bool ok = t && snprintf(json, len, "%s", t) < (int)len;
	free(t);
	return ok;
}

static const struct fw_hf_key bert_keys[] = {
	{ "num_hidden_layers", "num-hidden-layers" },
	{ "num_attention_heads", "num-attention-heads" }, { "hidden_size", "hidden-size" },
	{ "intermediate_size", "intermediate-size" }, { "vocab_size", "vocab-size" },
	{ "max_position_embeddings", "max-position-embeddings" },
	{ "type_vocab_size", "type-vocab-size" }, { "layer_norm_eps", "layer-norm-eps" },
	{ "hidden_dropout_prob", "hidden-dropout-prob" },
	{ "attention_probs_dropout_prob", "attention-probs-dropout-prob" },
};

static const struct fw_hf_const bert_consts[] = {
	{ "hidden_act", "\"gelu\"" }, { "position_embedding_type", "\"absolute\"" },
};

static const char *const bert_buffers[] = { "embeddings.position_ids",
					    "cls.predictions.decoder.weight",
					    "cls.predictions.decoder.bias", "lm_head.decoder.weight",
					    "lm_head.decoder.bias", NULL };
/* a BertModel saved from a task class keeps the prefix */
static const char *const base_prefixes[] = { "bert.", NULL };

#define BERT_MAP(var, cls, mt, an, prefixes)                                                          \
	static bool var##_key(const struct fw_options *o, const char *param, char *key,           \
			      size_t len, bool *transpose)                                         \
	{                                                                                          \
		(void)o;                                                                           \
		*transpose = false;                                                                \
		return class_key(cls, param, key, len);                                            \
	}                                                                                          \
	static bool var##_describes(const struct fw_options *o)                                    \
	{                                                                                          \
		return class_of(o) == (cls == BERT_BASE ? BERT_SEQ : cls);                         \
	}                                                                                          \
	static bool var##_export_keys(const struct fw_options *o, char *json, size_t len)          \
	{                                                                                          \
		return class_export_keys(cls, o, json, len);                                       \
	}                                                                                          \
	const struct fw_hf_map var = {                                                             \
		.size = sizeof(struct fw_hf_map), .model_type = mt,                                  \
		.architecture = an, .keys = bert_keys,                                             \
		.n_keys = (int)(sizeof(bert_keys) / sizeof(bert_keys[0])), .consts = bert_consts,  \
		.n_consts = (int)(sizeof(bert_consts) / sizeof(bert_consts[0])),                   \
		.key_prefixes = prefixes, .buffer_suffixes = bert_buffers,                         \
		.check_config = bert_check_config, .describes = var##_describes,                   \
		.tensor_key = var##_key, .import_options = bert_import_options,                    \
		.export_keys = var##_export_keys,                                                  \
	}

/* Export takes the first that describes a file's options and whose
 * tensors the file has: the classifier's class before BertModel. */
BERT_MAP(encoder_hf_bert_mlm, BERT_MLM, "bert", "BertForMaskedLM", NULL);
BERT_MAP(encoder_hf_bert_seq, BERT_SEQ, "bert", "BertForSequenceClassification", NULL);
BERT_MAP(encoder_hf_bert_tok, BERT_TOK, "bert", "BertForTokenClassification", NULL);
BERT_MAP(encoder_hf_bert_base, BERT_BASE, "bert", "BertModel", base_prefixes);
BERT_MAP(encoder_hf_roberta_mlm, ROBERTA_MLM, "roberta", "RobertaForMaskedLM", NULL);
BERT_MAP(encoder_hf_roberta_seq, ROBERTA_SEQ, "roberta", "RobertaForSequenceClassification",
	 NULL);
