/* hf_t5.c - arch/encdec as Hugging Face's T5 (T5ForConditionalGeneration):
 * the config.json keys that are its options (T5Config's names), the checks
 * of a config.json it can compute, and its tensor keys, which are the
 * arch's parameter names. The encoder's and decoder's embed_tokens.weight
 * are copies of shared.weight in older files: import skips them. fwrun
 * import and export read this map through fw_arch_i.hf_maps.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fw/plugin.h"

#include "hf_t5.h"

/* The feed_forward_proj values arch/encdec computes (its option's choices). */
static const char *const t5_ffn[] = { "relu", "gated-gelu", "gated-relu", "gelu", NULL };

static void json_text(const json_t *v, char *out, size_t len)
{
	char *t = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
	snprintf(out, len, "%s", t ? t : "null");
	free(t);
}

/* For a parse error at byte pos of the file at path: the key whose value
 * is at or just before it ("KEY": <pos>), so that a value JSON cannot hold (Python's
 * NaN) is named; "" when the error is not at a value. */
static void key_at(const char *path, int pos, char *key, size_t len)
{
	FILE *f = fopen(path, "rb");
	char buf[4096];
	size_t n = f && pos > 0 ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
	if (f)
		fclose(f);
	*key = 0;
	if ((size_t)pos > n)
		return;                   /* past what was read */
	n = (size_t)pos;
	while (n > 0 && !strchr(",{}[]\":", buf[n - 1]))   /* the bad value itself */
		n--;
	if (n < 3 || buf[n - 1] != ':')
		return;
	n--;
	while (n > 0 && strchr(" \t\r\n", buf[n - 1]))
		n--;
	size_t end = n > 0 && buf[n - 1] == '"' ? n - 1 : 0, start = end;
	while (start > 0 && buf[start - 1] != '"')
		start--;
	if (end > start)
		snprintf(key, len, "%.*s: ", (int)(end - start), buf + start);
}

/* An integer key when present; *out keeps its default otherwise. */
static bool int_key(const json_t *root, const char *key, int64_t *out)
{
	json_t *v = json_object_get(root, key);
	if (v && json_is_integer(v))
		*out = json_integer_value(v);
	return !v || json_is_integer(v);
}

/* config.json: the model_type, the FFN, and the bucket rule between two
 * keys; the ranges and types of the option keys are checked as they are set.
 * One line naming the file, the key and the value. */
static enum fw_status t5_check_config(const char *path, struct fw_err *err)
{
	json_error_t je;
	json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je), *v;
	char t[64];
	enum fw_status s = FW_OK;
	if (!root) {
		char key[80];
		key_at(path, je.position, key, sizeof(key));
		return fw_errorf(err, FW_ERR_FORMAT, "%s:%d:%d: %s%s", path, je.line, je.column, key,
				 je.text);
	}
	int64_t buckets = 32, distance = 128;
	if (!json_is_object(root)) {
		s = fw_errorf(err, FW_ERR_FORMAT, "%s: not a JSON object", path);
	} else if ((v = json_object_get(root, "model_type")) &&
		   (!json_is_string(v) || strcmp(json_string_value(v), "t5"))) {
		json_text(v, t, sizeof(t));
		s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: model_type %s is not \"t5\"", path, t);
	} else if ((v = json_object_get(root, "feed_forward_proj"))) {
		int i = 0;
		while (json_is_string(v) && t5_ffn[i] && strcmp(json_string_value(v), t5_ffn[i]))
			i++;
		if (!json_is_string(v) || !t5_ffn[i]) {
			json_text(v, t, sizeof(t));
			s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: feed_forward_proj %s is not one "
				      "arch/encdec computes (relu, gated-gelu, gated-relu, gelu)",
				      path, t);
		}
	}
	if (s == FW_OK && (!int_key(root, "relative_attention_num_buckets", &buckets) ||
			   !int_key(root, "relative_attention_max_distance", &distance)))
		s = fw_errorf(err, FW_ERR_FORMAT, "%s: relative_attention_num_buckets and "
			      "relative_attention_max_distance must be integers", path);
	else if (s == FW_OK && distance <= buckets / 2)
		s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: relative_attention_max_distance %lld "
			      "must exceed half of relative_attention_num_buckets %lld", path,
			      (long long)distance, (long long)buckets);
	json_decref(root);
	return s;
}

/* Defaults of T5Config that differ from the arch's: dropout_rate 0.1. */
static bool t5_import_options(const char *path, char *ini, size_t len)
{
	json_t *root = json_load_file(path, 0, NULL);
	bool dropout = root && json_object_get(root, "dropout_rate");
	json_decref(root);
	return snprintf(ini, len, "%s", dropout ? "" : "dropout-rate = 0.1\n") < (int)len;
}

/* num_decoder_layers as T5Config resolves it (0 is the arch's "same"). */
static bool t5_export_keys(const struct fw_options *o, char *json, size_t len)
{
	int64_t n = fw_opt_int(o, "num-decoder-layers");
	return snprintf(json, len, "{\"num_decoder_layers\": %lld}",
			(long long)(n > 0 ? n : fw_opt_int(o, "num-layers"))) < (int)len;
}

static bool t5_tensor_key(const struct fw_options *opts, const char *param, char *key,
			  size_t len, bool *transpose)
{
	(void)opts;
	*transpose = false;
	return snprintf(key, len, "%s", param) < (int)len;
}

static const struct fw_hf_key t5_keys[] = {
	{ "vocab_size", "vocab-size" }, { "d_model", "d-model" }, { "d_kv", "d-kv" },
	{ "d_ff", "d-ff" }, { "num_layers", "num-layers" },
	{ "num_decoder_layers", "num-decoder-layers" }, { "num_heads", "num-heads" },
	{ "relative_attention_num_buckets", "relative-attention-num-buckets" },
	{ "relative_attention_max_distance", "relative-attention-max-distance" },
	{ "dropout_rate", "dropout-rate" }, { "layer_norm_epsilon", "layer-norm-epsilon" },
	{ "feed_forward_proj", "feed-forward-proj" },
	{ "tie_word_embeddings", "tie-word-embeddings" },
};

static const struct fw_hf_const t5_consts[] = {
	{ "is_encoder_decoder", "true" }, { "decoder_start_token_id", "0" },
	{ "pad_token_id", "0" },
};

static const char *const t5_buffers[] = { "encoder.embed_tokens.weight",
					  "decoder.embed_tokens.weight", NULL };

const struct fw_hf_map encdec_hf_t5 = {
	.size = sizeof(struct fw_hf_map),
	.model_type = "t5",
	.architecture = "T5ForConditionalGeneration",
	.keys = t5_keys,
	.n_keys = (int)(sizeof(t5_keys) / sizeof(t5_keys[0])),
	.consts = t5_consts,
	.n_consts = (int)(sizeof(t5_consts) / sizeof(t5_consts[0])),
	.buffer_suffixes = t5_buffers,
	.check_config = t5_check_config,
	.tensor_key = t5_tensor_key,
	.import_options = t5_import_options,
	.export_keys = t5_export_keys,
};
