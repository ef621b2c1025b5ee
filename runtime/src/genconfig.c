/* genconfig.c - Hugging Face's generation_config.json (fw/runtime/genconfig.h). */
#include <math.h>
#include <string.h>

#include <jansson.h>

#include "fw/runtime/genconfig.h"

/* A token id: an integer in [0, INT32_MAX). */
static bool token_id(json_t *v, int32_t *out)
{
	if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= INT32_MAX)
		return false;
	*out = (int32_t)json_integer_value(v);
	return true;
}

static bool absent(json_t *v)
{
	return !v || json_is_null(v);
}

enum fw_status fw_rt_genconfig_parse(const char *text, size_t len, const char *where,
				     struct fw_rt_genconfig *g, struct fw_err *err)
{
	memset(g, 0, sizeof(*g));
	g->bos = g->pad = -1;
	g->max_new_tokens = g->max_length = -1;
	json_error_t je;
	json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	if (!json_is_object(root)) {
		json_decref(root);
		return root ? fw_errorf(err, FW_ERR_FORMAT, "%s: not a JSON object", where) :
			      fw_errorf(err, FW_ERR_FORMAT, "%s:%d: not valid JSON: %s", where,
					je.line, je.text);
	}
	const char *bad = NULL;
	json_t *v = json_object_get(root, "eos_token_id");
	if (json_is_array(v)) {
		size_t i;
		json_t *x;
		json_array_foreach(v, i, x) {
			if (i >= FW_RT_GENCONFIG_MAX_EOS || !token_id(x, &g->eos[g->n_eos++]))
				bad = "eos_token_id (a token id, or a list of at most 16)";
		}
	} else if (!absent(v) && !token_id(v, &g->eos[g->n_eos++])) {
		bad = "eos_token_id (a token id, or a list of at most 16)";
	}
	if (!absent(v = json_object_get(root, "bos_token_id")) && !token_id(v, &g->bos))
		bad = "bos_token_id (a token id)";
	if (!absent(v = json_object_get(root, "pad_token_id")) && !token_id(v, &g->pad))
		bad = "pad_token_id (a token id)";
	const char *lens[] = { "max_new_tokens", "max_length" };
	int64_t *lv[] = { &g->max_new_tokens, &g->max_length };
	for (int k = 0; k < 2; k++) {
		v = json_object_get(root, lens[k]);
		if (absent(v))
			continue;
		if (!json_is_integer(v) || json_integer_value(v) < 0)
			bad = k ? "max_length (a non-negative integer)" :
				  "max_new_tokens (a non-negative integer)";
		else
			*lv[k] = json_integer_value(v);
	}
	if (!absent(v = json_object_get(root, "do_sample"))) {
		if (!json_is_boolean(v))
			bad = "do_sample (true or false)";
		g->has_do_sample = true;
		g->do_sample = json_is_true(v);
	}
	const char *reals[] = { "temperature", "top_p", "repetition_penalty" };
	double *rv[] = { &g->temperature, &g->top_p, &g->penalty };
	bool *rh[] = { &g->has_temperature, &g->has_top_p, &g->has_penalty };
	for (int k = 0; k < 3; k++) {
		v = json_object_get(root, reals[k]);
		if (absent(v))
			continue;
		double x = json_number_value(v);
		if (!json_is_number(v) || !isfinite(x) || x < 0 || (k == 1 && x > 1) ||
		    (k == 2 && x <= 0))
			bad = k == 0 ? "temperature (a number >= 0)" : k == 1 ?
			      "top_p (a number in [0, 1])" : "repetition_penalty (a number > 0)";
		*rv[k] = x;
		*rh[k] = true;
	}
	if (!absent(v = json_object_get(root, "top_k"))) {
		if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
			bad = "top_k (a non-negative integer)";
		g->top_k = (int)json_integer_value(v);
		g->has_top_k = true;
	}
	json_decref(root);
	return bad ? fw_errorf(err, FW_ERR_FORMAT, "%s: %s", where, bad) : FW_OK;
}
