/* hf_llama.c - arch/decoder as Hugging Face's Llama family:
 * LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM (RMSNorm,
 * SwiGLU, RoPE with rotate_half halves, GQA, no biases but Qwen2's q/k/v
 * ones). The decoder fuses q_proj, k_proj, v_proj into c_attn and gate_proj,
 * up_proj into c_fc (rows stacked in that order): those are tensor parts.
 * Mistral's sliding_window is the decoder's --sliding-window (null: 0).
 */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "fw/plugin.h"

#include "dims.h"
#include "hf.h"

enum family { LLAMA, MISTRAL, QWEN2 };
static const char *const family_names[] = { "llama", "mistral", "qwen2" };

/* An optional key: absent or null is no error; else a number (a boolean
 * with want_bool) or one line. */
static enum fw_status opt_key(const char *path, const json_t *root, const char *key,
			      bool want_bool, json_t **out, struct fw_err *err)
{
	char t[64];
	json_t *v = json_object_get(root, key);
	*out = json_is_null(v) ? NULL : v;
	if (!*out || (want_bool ? json_is_boolean(v) : json_is_number(v)))
		return FW_OK;
	decoder_hf_json_text(v, t, sizeof(t));
	return fw_errorf(err, FW_ERR_FORMAT, "%s: %s %s is not %s", path, key, t,
			 want_bool ? "true or false" : "a number");
}

/* rope_scaling: null, {"rope_type": "default"} or a llama3 scaling with its
 * four numbers (*llama3 then true, values in f[4]). */
static enum fw_status check_rope_scaling(const char *path, const json_t *rs, bool *llama3,
					 double f[4], struct fw_err *err)
{
	static const char *const keys[4] = { "factor", "low_freq_factor", "high_freq_factor",
					     "original_max_position_embeddings" };
	char t[160];
	*llama3 = false;
	if (!rs || json_is_null(rs))
		return FW_OK;
	json_t *type = json_object_get(rs, "rope_type");
	if (!type)
		type = json_object_get(rs, "type");        /* older files */
	const char *ty = json_string_value(type);
	if (ty && !strcmp(ty, "default"))
		return FW_OK;
	if (!ty || strcmp(ty, "llama3")) {
		decoder_hf_json_text(type, t, sizeof(t));
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: rope_scaling type %s is not supported "
				 "(arch/decoder computes \"default\" and \"llama3\")", path, t);
	}
	for (int i = 0; i < 4; i++) {
		json_t *v = json_object_get(rs, keys[i]);
		if (!json_is_number(v) || (i == 3 && !json_is_integer(v))) {
			decoder_hf_json_text(v, t, sizeof(t));
			return fw_errorf(err, FW_ERR_FORMAT, "%s: rope_scaling %s %s is not %s", path,
					 keys[i], t, i == 3 ? "an integer" : "a number");
		}
		f[i] = json_number_value(v);
	}
	if (!(f[0] >= 1 && f[1] > 0 && f[2] > f[1] && f[3] >= 1)) {
		decoder_hf_json_text(rs, t, sizeof(t));
		return fw_errorf(err, FW_ERR_FORMAT, "%s: rope_scaling %s: needs factor >= 1, "
				 "0 < low_freq_factor < high_freq_factor, original_max_position_"
				 "embeddings >= 1", path, t);
	}
	*llama3 = true;
	return FW_OK;
}

struct llama_config {
	int64_t n_layer, n_head, n_embd, vocab, n_pos, ffn, n_kv;
	int64_t window;
	double eps, theta, scale[4];
	bool tie, llama3;
};

/* Every key the import reads, by the rules of arch/decoder, and the
 * settings it cannot compute refused; the first problem is one line. */
static enum fw_status check_family(enum family fam, const char *path, struct llama_config *c,
				   struct fw_err *err)
{
	char t[64];
	json_t *root, *v;
	enum fw_status s = decoder_hf_load(path, &root, err);
	if (s != FW_OK)
		return s;
	*c = (struct llama_config){ .eps = 1e-6, .theta = 10000 };
	const char *mt = family_names[fam];
	if ((v = json_object_get(root, "model_type")) &&
	    (!json_is_string(v) || strcmp(json_string_value(v), mt))) {
		decoder_hf_json_text(v, t, sizeof(t));
		s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: model_type %s is not \"%s\"", path, t, mt);
		goto out;
	}
	if ((s = decoder_hf_int(path, root, "num_hidden_layers", &c->n_layer, err)) ||
	    (s = decoder_hf_int(path, root, "num_attention_heads", &c->n_head, err)) ||
	    (s = decoder_hf_int(path, root, "hidden_size", &c->n_embd, err)) ||
	    (s = decoder_hf_int(path, root, "vocab_size", &c->vocab, err)) ||
	    (s = decoder_hf_int(path, root, "max_position_embeddings", &c->n_pos, err)) ||
	    (s = decoder_hf_int(path, root, "intermediate_size", &c->ffn, err)))
		goto out;
	/* HF's defaults: Mistral 8 KV heads, the others one per head */
	c->n_kv = fam == MISTRAL ? 8 : c->n_head;
	if (json_object_get(root, "num_key_value_heads") &&
	    !json_is_null(json_object_get(root, "num_key_value_heads")) &&
	    (s = decoder_hf_int(path, root, "num_key_value_heads", &c->n_kv, err)))
		goto out;
	if ((s = opt_key(path, root, "rms_norm_eps", false, &v, err)))
		goto out;
	if (v)
		c->eps = json_number_value(v);
	static const char *const keys[6] = { "num_hidden_layers", "num_attention_heads",
					     "hidden_size", "vocab_size", "max_position_embeddings",
					     "rms_norm_eps" };
	struct decoder_dims dims = { c->n_layer, c->n_head, c->n_embd, c->vocab, c->n_pos, c->eps };
	char why[200];
	if (!decoder_dims_check(&dims, keys, why, sizeof(why))) {
		s = fw_errorf(err, FW_ERR_FORMAT, "%s: %s", path, why);
		goto out;
	}
	if (c->ffn < 1 || c->ffn > DECODER_EMBD_MAX * DECODER_MLP_MULT) {
		s = fw_errorf(err, FW_ERR_FORMAT, "%s: intermediate_size %lld is out of range [1, %d]",
			      path, (long long)c->ffn, DECODER_EMBD_MAX * DECODER_MLP_MULT);
		goto out;
	}
	if (c->n_kv < 1 || c->n_kv > c->n_head || c->n_head % c->n_kv) {
		s = fw_errorf(err, FW_ERR_FORMAT, "%s: num_key_value_heads %lld does not divide "
			      "num_attention_heads %lld", path, (long long)c->n_kv,
			      (long long)c->n_head);
		goto out;
	}
	if ((c->n_embd / c->n_head) % 2) {
		s = fw_errorf(err, FW_ERR_FORMAT, "%s: hidden_size / num_attention_heads %lld is odd: "
			      "RoPE rotates pairs", path, (long long)(c->n_embd / c->n_head));
		goto out;
	}
	if ((v = json_object_get(root, "head_dim")) && !json_is_null(v) &&
	    (!json_is_integer(v) || json_integer_value(v) != c->n_embd / c->n_head)) {
		decoder_hf_json_text(v, t, sizeof(t));
		s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: head_dim %s is not hidden_size / "
			      "num_attention_heads (%lld), the decoder's head width", path, t,
			      (long long)(c->n_embd / c->n_head));
		goto out;
	}
	if ((s = opt_key(path, root, "rope_theta", false, &v, err)))
		goto out;
	if (v)
		c->theta = json_number_value(v);
	if (!(c->theta >= 1 && c->theta <= 1e12)) {
		s = fw_errorf(err, FW_ERR_FORMAT, "%s: rope_theta %g is out of range [1, 1e12]", path,
			      c->theta);
		goto out;
	}
	if ((s = opt_key(path, root, "tie_word_embeddings", true, &v, err)))
		goto out;
	c->tie = v && json_is_true(v);
	if ((v = json_object_get(root, "hidden_act")) &&
	    (!json_is_string(v) || strcmp(json_string_value(v), "silu"))) {
		decoder_hf_json_text(v, t, sizeof(t));
		s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: hidden_act %s is not \"silu\", the "
			      "decoder's SwiGLU", path, t);
		goto out;
	}
	/* switches that must be off: Llama's attention_bias and mlp_bias, Qwen2's
	 * use_sliding_window */
	static const char *const off[] = { "attention_bias", "mlp_bias", "use_sliding_window" };
	for (int i = 0; i < 3; i++) {
		if ((s = opt_key(path, root, off[i], true, &v, err)))
			goto out;
		if (v && json_is_true(v)) {
			s = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: %s true is not supported by "
				      "arch/decoder", path, off[i]);
			goto out;
		}
	}
	if (fam == MISTRAL) {   /* HF's default window is 4096 */
		v = json_object_get(root, "sliding_window");
		c->window = !v ? 4096 : json_is_integer(v) ? json_integer_value(v) : 0;
		if ((v && !json_is_null(v) && !json_is_integer(v)) || c->window < 0 ||
		    c->window > DECODER_POS_MAX || (json_is_integer(v) && !c->window)) {
			decoder_hf_json_text(v, t, sizeof(t));
			s = fw_errorf(err, FW_ERR_FORMAT, "%s: sliding_window %s is not null or an "
				      "integer in [1, %d]", path, t, DECODER_POS_MAX);
			goto out;
		}
	}
	s = check_rope_scaling(path, json_object_get(root, "rope_scaling"), &c->llama3, c->scale,
			       err);
out:
	json_decref(root);
	return s;
}

static enum fw_status llama_check(const char *path, struct fw_err *err)
{
	struct llama_config c;
	return check_family(LLAMA, path, &c, err);
}

static enum fw_status mistral_check(const char *path, struct fw_err *err)
{
	struct llama_config c;
	return check_family(MISTRAL, path, &c, err);
}

static enum fw_status qwen2_check(const char *path, struct fw_err *err)
{
	struct llama_config c;
	return check_family(QWEN2, path, &c, err);
}

/* The decoder's switches for the family and the options that are not one
 * config.json key each (HF's defaults where a key is absent). */
static bool family_options(enum family fam, const char *path, char *ini, size_t len)
{
	struct llama_config c;
	struct fw_err e = { 0 };
	if (check_family(fam, path, &c, &e) != FW_OK)   /* check_config said why */
		return false;
	int n = snprintf(ini, len, "normalization = RMSNorm\nswiglu = true\n"
			 "position-embedding-type = rope\ngroup-query-attention = true\n"
			 "disable-bias-linear = true\nadd-qkv-bias = %s\ntie-embeddings = %s\n"
			 "layer-norm-eps = %.17g\nnum-query-groups = %lld\nsliding-window = %lld\n",
			 fam == QWEN2 ? "true" : "false", c.tie ? "true" : "false", c.eps,
			 (long long)c.n_kv, (long long)c.window);
	if (c.llama3 && n > 0 && (size_t)n < len)
		n += snprintf(ini + n, len - (size_t)n, "use-rope-scaling = true\n"
			      "rope-scaling-factor = %.17g\nrope-scaling-low-freq-factor = %.17g\n"
			      "rope-scaling-high-freq-factor = %.17g\n"
			      "rope-scaling-original-max-position-embeddings = %lld\n", c.scale[0],
			      c.scale[1], c.scale[2], (long long)c.scale[3]);
	return n > 0 && (size_t)n < len;
}

static bool llama_options(const char *path, char *ini, size_t len)
{
	return family_options(LLAMA, path, ini, len);
}

static bool mistral_options(const char *path, char *ini, size_t len)
{
	return family_options(MISTRAL, path, ini, len);
}

static bool qwen2_options(const char *path, char *ini, size_t len)
{
	return family_options(QWEN2, path, ini, len);
}

static int64_t kv_heads(const struct fw_options *o)
{
	return fw_opt_bool(o, "group-query-attention") ? fw_opt_int(o, "num-query-groups") :
							 fw_opt_int(o, "n-head");
}

static int64_t ffn_of(const struct fw_options *o)
{
	return decoder_ffn(fw_opt_int(o, "ffn-hidden-size"), fw_opt_int(o, "n-embd"),
			   fw_opt_bool(o, "swiglu"));
}

/* The keys whose value is not one option's: the effective KV heads, tying
 * and MLP width, and rope_scaling. */
static bool llama_keys(const struct fw_options *o, char *json, size_t len)
{
	bool tie = fw_opt_bool(o, "tie-embeddings") &&
		   !fw_opt_bool(o, "untie-embeddings-and-output-weights");
	json_t *k = json_pack("{s:I, s:b, s:I}", "num_key_value_heads", (json_int_t)kv_heads(o),
			      "tie_word_embeddings", tie, "intermediate_size",
			      (json_int_t)ffn_of(o));
	json_t *rs = json_null();
	if (fw_opt_bool(o, "use-rope-scaling"))
		rs = json_pack("{s:s, s:f, s:f, s:f, s:I}", "rope_type", "llama3", "factor",
			       fw_opt_float(o, "rope-scaling-factor"), "low_freq_factor",
			       fw_opt_float(o, "rope-scaling-low-freq-factor"), "high_freq_factor",
			       fw_opt_float(o, "rope-scaling-high-freq-factor"),
			       "original_max_position_embeddings",
			       (json_int_t)fw_opt_int(o, "rope-scaling-original-max-position-"
						      "embeddings"));
	json_object_set_new(k, "rope_scaling", rs);
	if (fw_opt_int(o, "sliding-window"))
		json_object_set_new(k, "sliding_window", json_integer(fw_opt_int(o, "sliding-window")));
	char *t = json_dumps(k, JSON_COMPACT);
	json_decref(k);
	bool ok = t && strlen(t) < len;
	if (ok)
		memcpy(json, t, strlen(t) + 1);
	free(t);
	return ok;
}


/* RMSNorm, SwiGLU, RoPE over whole heads in halves, no biases but
 * optionally q/k/v ones (Qwen2: qkv_bias true), a sliding window or not
 * (Mistral: window true). */
static bool family_describes(const struct fw_options *o, bool qkv_bias, bool window)
{
	bool bias = fw_opt_bool(o, "bias") && !fw_opt_bool(o, "disable-bias-linear");
	return (!strcmp(fw_opt_str(o, "norm"), "rmsnorm") ||
		!strcmp(fw_opt_str(o, "normalization"), "RMSNorm")) &&
	       fw_opt_bool(o, "swiglu") && !bias && fw_opt_bool(o, "add-qkv-bias") == qkv_bias &&
	       !strcmp(fw_opt_str(o, "position-embedding-type"), "rope") &&
	       !fw_opt_bool(o, "rotary-interleaved") && fw_opt_float(o, "rotary-percent") == 1.0 &&
	       (fw_opt_int(o, "sliding-window") > 0) == window;
}

static bool llama_describes(const struct fw_options *o)
{
	return family_describes(o, false, false);
}

static bool mistral_describes(const struct fw_options *o)
{
	return family_describes(o, false, true);
}

static bool qwen2_describes(const struct fw_options *o)
{
	return family_describes(o, true, false);
}

/* fw names -> model.layers.N.*; c_attn and c_fc are parts. */
static const struct {
	const char *fw, *hf;
} names[] = {
	{ "wte.weight", "model.embed_tokens.weight" },
	{ "ln_f.weight", "model.norm.weight" },
	{ "lm_head.weight", "lm_head.weight" },
	{ "ln_1.weight", "input_layernorm.weight" },
	{ "ln_2.weight", "post_attention_layernorm.weight" },
	{ "attn.c_proj.weight", "self_attn.o_proj.weight" },
	{ "mlp.c_proj.weight", "mlp.down_proj.weight" },
};

/* "h.N.rest": N and rest; false for a name outside the blocks. */
static bool block_name(const char *param, int *layer, const char **rest)
{
	int used = 0;
	if (sscanf(param, "h.%d.%n", layer, &used) != 1 || !used)
		return false;
	*rest = param + used;
	return true;
}

static bool llama_tensor_key(const struct fw_options *o, const char *param, char *key,
			     size_t len, bool *transpose)
{
	int layer;
	const char *rest;
	bool in_block = block_name(param, &layer, &rest);
	(void)o;
	*transpose = false;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (i < 3 && !in_block && !strcmp(param, names[i].fw))
			return snprintf(key, len, "%s", names[i].hf) < (int)len;
		if (i >= 3 && in_block && !strcmp(rest, names[i].fw))
			return snprintf(key, len, "model.layers.%d.%s", layer, names[i].hf) < (int)len;
	}
	return false;
}

static bool llama_tensor_part(const struct fw_options *o, const char *param, int part,
			      char *key, size_t len, int64_t *rows)
{
	static const char *const qkv[3] = { "q_proj", "k_proj", "v_proj" };
	static const char *const mlp[2] = { "gate_proj", "up_proj" };
	int layer;
	const char *rest;
	if (!block_name(param, &layer, &rest) || part < 0)
		return false;
	int64_t C = fw_opt_int(o, "n-embd"), D = C / fw_opt_int(o, "n-head");
	if (!strncmp(rest, "attn.c_attn.", 12) && part < 3) {
		*rows = part ? kv_heads(o) * D : C;
		return snprintf(key, len, "model.layers.%d.self_attn.%s.%s", layer, qkv[part],
				rest + 12) < (int)len;
	}
	if (!strcmp(rest, "mlp.c_fc.weight") && part < 2) {
		*rows = ffn_of(o);
		return snprintf(key, len, "model.layers.%d.mlp.%s.weight", layer, mlp[part]) <
		       (int)len;
	}
	return false;
}

static const struct fw_hf_key family_hf_keys[] = {
	{ "num_hidden_layers", "n-layer" }, { "num_attention_heads", "n-head" },
	{ "hidden_size", "n-embd" }, { "vocab_size", "vocab-size" },
	{ "max_position_embeddings", "n-positions" }, { "intermediate_size", "ffn-hidden-size" },
	{ "rms_norm_eps", "layer-norm-eps" }, { "rope_theta", "rotary-base" },
	{ "tie_word_embeddings", "tie-embeddings" },
};

static const struct fw_hf_const llama_consts[] = {
	{ "hidden_act", "\"silu\"" }, { "attention_bias", "false" }, { "mlp_bias", "false" },
	{ "attention_dropout", "0.0" }, { "torch_dtype", "\"float32\"" },
};

static const struct fw_hf_const mistral_consts[] = {
	{ "hidden_act", "\"silu\"" }, { "attention_dropout", "0.0" },
	{ "torch_dtype", "\"float32\"" },
};

static const struct fw_hf_const qwen2_consts[] = {
	{ "hidden_act", "\"silu\"" }, { "use_sliding_window", "false" },
	{ "attention_dropout", "0.0" }, { "torch_dtype", "\"float32\"" },
};

/* older files keep RoPE's inverse frequencies */
static const char *const family_buffers[] = { ".rotary_emb.inv_freq", NULL };

#define FAMILY_MAP(fam_, type_, arch_, consts_, describes_, keys_)                              \
	{ .size = sizeof(struct fw_hf_map), .model_type = type_, .architecture = arch_,         \
	  .keys = family_hf_keys,                                                               \
	  .n_keys = (int)(sizeof(family_hf_keys) / sizeof(family_hf_keys[0])),                  \
	  .consts = consts_, .n_consts = (int)(sizeof(consts_) / sizeof(consts_[0])),           \
	  .buffer_suffixes = family_buffers, .check_config = fam_##_check,                      \
	  .describes = describes_, .tensor_key = llama_tensor_key,                              \
	  .tensor_part = llama_tensor_part, .import_options = fam_##_options,                   \
	  .export_keys = keys_ }

const struct fw_hf_map decoder_hf_llama = FAMILY_MAP(llama, "llama", "LlamaForCausalLM",
						     llama_consts, llama_describes, llama_keys);
const struct fw_hf_map decoder_hf_qwen2 = FAMILY_MAP(qwen2, "qwen2", "Qwen2ForCausalLM",
						     qwen2_consts, qwen2_describes, llama_keys);
/* A Mistral without a window is a Llama: export writes the Llama map. */
const struct fw_hf_map decoder_hf_mistral = FAMILY_MAP(mistral, "mistral", "MistralForCausalLM",
						       mistral_consts, mistral_describes,
						       llama_keys);
