/* hf_gpt2.c - arch/decoder as Hugging Face's GPT-2 (GPT2LMHeadModel): the
 * config.json keys that are its options, the checks of a config.json it can
 * compute, and its tensors' keys (the four Conv1D weights of a block are
 * stored (in, out), transposed against the decoder's (out, in)). fwrun
 * import and export read this map through fw_arch_i.hf_maps and know no
 * model of their own.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fw/plugin.h"

#include "dims.h"
#include "hf.h"

struct gpt2_config {
	int64_t n_layer, n_head, n_embd, vocab, n_pos;
	double eps;
	bool tie;
};

/* The whole file (malloc'd, NUL-terminated), NULL when unreadable. */
char *decoder_hf_read_text(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t cap = 0;
	*n = 0;
	for (size_t got = 1; f && got;) {
		if (*n + 4096 + 1 > cap) {
			char *nb = realloc(buf, cap = 2 * cap + 4096 + 1);
			if (!nb)
				break;
			buf = nb;
		}
		got = fread(buf + *n, 1, 4096, f);
		*n += got;
	}
	if (f)
		fclose(f);
	if (buf)
		buf[*n] = '\0';
	return buf;
}

/* A JSON value as it is written, for messages (cut at len). */
void decoder_hf_json_text(const json_t *v, char *out, size_t len)
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
	size_t n = 0, colon = 0;
	char *text = pos > 0 ? decoder_hf_read_text(path, &n) : NULL;
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

/* config.json at path parsed into *root, a JSON object; else one line
 * naming the file (and the key of a value jansson cannot read). */
enum fw_status decoder_hf_load(const char *path, json_t **root, struct fw_err *err)
{
	json_error_t je;
	*root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
	if (!*root) {
		if (errno == ENOENT && je.line < 0)
			return fw_errorf(err, FW_ERR_IO, "%s: %s", path, je.text);
		char key[64];
		key_before(path, je.position, key, sizeof(key));
		return fw_errorf(err, FW_ERR_FORMAT, "%s:%d:%d: %s%s%s", path, je.line, je.column,
				 key, *key ? ": " : "", je.text);
	}
	if (!json_is_object(*root)) {
		json_decref(*root);
		*root = NULL;
		return fw_errorf(err, FW_ERR_FORMAT, "%s: not a JSON object", path);
	}
	return FW_OK;
}

/* A size key: present and an integer (its range is the decoder's rule). */
enum fw_status decoder_hf_int(const char *path, const json_t *root, const char *key,
			     int64_t *out, struct fw_err *err)
{
	json_t *v = json_object_get(root, key);
	char t[64];
	if (!v)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: %s is missing", path, key);
	if (!json_is_integer(v)) {
		decoder_hf_json_text(v, t, sizeof(t));
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
static enum fw_status gpt2_check_config(const char *path, struct fw_err *err)
{
	char t[64];
	struct gpt2_config cfg, *c = &cfg;
	json_t *root;
	enum fw_status s = decoder_hf_load(path, &root, err);
	if (s != FW_OK)
		return s;
	json_t *v;
	*c = (struct gpt2_config){ .eps = 1e-5, .tie = true };
	/* n_positions; older files have n_ctx only */
	const char *pos_key = json_object_get(root, "n_positions") || !json_object_get(root, "n_ctx") ?
			      "n_positions" : "n_ctx";
	if ((v = json_object_get(root, "model_type")) &&
	    (!json_is_string(v) || strcmp(json_string_value(v), "gpt2"))) {
		decoder_hf_json_text(v, t, sizeof(t));
		s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: model_type %s is not \"gpt2\"", path, t);
		goto out;
	}
	if ((s = decoder_hf_int(path, root, "n_layer", &c->n_layer, err)) ||
	    (s = decoder_hf_int(path, root, "n_head", &c->n_head, err)) ||
	    (s = decoder_hf_int(path, root, "n_embd", &c->n_embd, err)) ||
	    (s = decoder_hf_int(path, root, "vocab_size", &c->vocab, err)) ||
	    (s = decoder_hf_int(path, root, pos_key, &c->n_pos, err)))
		goto out;
	if ((v = json_object_get(root, "layer_norm_epsilon"))) {
		if (!json_is_number(v)) {
			decoder_hf_json_text(v, t, sizeof(t));
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
			decoder_hf_json_text(v, t, sizeof(t));
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
			decoder_hf_json_text(v, t, sizeof(t));
			s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: activation_function %s is not "
				      "arch/decoder's GELU, the tanh form (gelu_new, gelu_pytorch_tanh, "
				      "gelu_fast, gelu_accurate)", path, t);
			goto out;
		}
	}
	if ((v = json_object_get(root, "n_inner")) && !json_is_null(v) &&
	    (!json_is_integer(v) || json_integer_value(v) != DECODER_MLP_MULT * c->n_embd)) {
		decoder_hf_json_text(v, t, sizeof(t));
		s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: n_inner %s is not null or %d * n_embd "
			      "(%lld), the MLP width of arch/decoder", path, t, DECODER_MLP_MULT,
			      (long long)(DECODER_MLP_MULT * c->n_embd));
		goto out;
	}
	for (size_t i = 0; i < sizeof(switches) / sizeof(switches[0]); i++) {
		if (!(v = json_object_get(root, switches[i].key)))
			continue;
		decoder_hf_json_text(v, t, sizeof(t));
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


static const char *const conv1d_suffix[] = { "attn.c_attn.weight", "attn.c_proj.weight",
					     "mlp.c_fc.weight", "mlp.c_proj.weight" };

/* fw's names are GPT-2's; a block's Conv1D weights are transposed. */
static bool gpt2_tensor_key(const struct fw_options *opts, const char *param, char *key,
			    size_t len, bool *transpose)
{
	(void)opts;
	size_t n = strlen(param);
	*transpose = false;
	for (int i = 0; i < 4 && !strncmp(param, "h.", 2); i++) {
		size_t m = strlen(conv1d_suffix[i]);
		*transpose |= n > m && !strcmp(param + n - m, conv1d_suffix[i]);
	}
	return snprintf(key, len, "%s", param) < (int)len;
}

/* GPT-2: LayerNorm, biases, learned positions, a GELU MLP of 4 * n_embd,
 * multi-head attention. */
static bool gpt2_describes(const struct fw_options *o)
{
	return !strcmp(fw_opt_str(o, "norm"), "layernorm") &&
	       !strcmp(fw_opt_str(o, "normalization"), "LayerNorm") && fw_opt_bool(o, "bias") &&
	       !fw_opt_bool(o, "disable-bias-linear") && !fw_opt_bool(o, "swiglu") &&
	       !fw_opt_bool(o, "group-query-attention") && fw_opt_int(o, "ffn-hidden-size") == 0 &&
	       fw_opt_int(o, "sliding-window") == 0 &&
	       !strcmp(fw_opt_str(o, "position-embedding-type"), "learned_absolute");
}

static const struct fw_hf_key gpt2_keys[] = {
	{ "n_layer", "n-layer" }, { "n_head", "n-head" }, { "n_embd", "n-embd" },
	{ "vocab_size", "vocab-size" }, { "n_positions", "n-positions" },
	{ "n_ctx", "n-positions" }, { "layer_norm_epsilon", "layer-norm-eps" },
	{ "tie_word_embeddings", "tie-embeddings" },
};

static const struct fw_hf_const gpt2_consts[] = {
	{ "activation_function", "\"gelu_new\"" }, { "resid_pdrop", "0.0" },
	{ "embd_pdrop", "0.0" }, { "attn_pdrop", "0.0" },
};

static const char *const gpt2_prefixes[] = { "transformer.", NULL };
/* the causal-mask constants of older files */
static const char *const gpt2_buffers[] = { ".attn.bias", ".attn.masked_bias", NULL };

const struct fw_hf_map decoder_hf_gpt2 = {
	.size = sizeof(struct fw_hf_map),
	.model_type = "gpt2",
	.architecture = "GPT2LMHeadModel",
	.keys = gpt2_keys,
	.n_keys = (int)(sizeof(gpt2_keys) / sizeof(gpt2_keys[0])),
	.consts = gpt2_consts,
	.n_consts = (int)(sizeof(gpt2_consts) / sizeof(gpt2_consts[0])),
	.key_prefixes = gpt2_prefixes,
	.buffer_suffixes = gpt2_buffers,
	.check_config = gpt2_check_config,
	.describes = gpt2_describes,
	.tensor_key = gpt2_tensor_key,
};
