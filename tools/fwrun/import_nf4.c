/* import_nf4.c - fwrun import of bitsandbytes 4-bit weights (a Params4bit
 * as transformers serializes it, the layout export_nf4.c writes) into fw's
 * NF4 storage (fw/quant.h): codes, qabsmax and stats.
 *
 * The 4-bit codes are copied as they are. A whole weight with double
 * quantization (bnb_4bit_use_double_quant) is fw's storage already: its
 * 8-bit absmax codes, nested_absmax and nested_offset are copied too. A
 * weight without nesting (f32 absmax), or one fw fuses from several (Llama's
 * q/k/v into c_attn), gets the f32 absmax of its blocks as bitsandbytes'
 * dequantize_4bit computes them (code2[q] * absmax2, then + offset: two
 * roundings, so this file is built without FMA contraction), then fw's
 * double quantization of those: the codes stay exact, the absmax is coded
 * again in 8 bits.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fw/quant.h"
#include "fwrun.h"

const char *const BNB_SUFFIX[BNB_N] = {
	"", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
	".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4",
};

/* The entry, of dtype dt and n elements, or an error naming what it is. */
static enum fw_status need(const char *path, const struct bnb_part *p, int which,
			   enum fw_dtype dt, int64_t n, struct fw_err *err)
{
	const struct fw_st_entry *e = p->t[which];
	if (!e)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: 4-bit weight '%s' lacks its tensor '%s%s'",
				 path, p->key, p->key, BNB_SUFFIX[which]);
	int64_t have = 1;
	for (int d = 0; d < e->ndim; d++)
		have *= e->ne[d];
	if (e->dtype != dt || have != n)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: '%s' is %s with %lld elements; a %lld x "
				 "%lld 4-bit weight needs %s with %lld", path, e->name,
				 e->dtype == FW_Q4 ? "U8" : fw_dtype_name(e->dtype), (long long)have,
				 (long long)p->rows, (long long)p->cols, dt == FW_Q4 ? "U8" :
				 fw_dtype_name(dt), (long long)n);
	return FW_OK;
}

/* The quant state's fields, checked against fw's NF4 (blocksize 64, nested
 * blocks of 256 in float32) and the part's shape. */
struct qstate {
	enum fw_dtype dtype;
	bool nested;
	float offset;
};

static enum fw_status read_state(const char *path, const struct bnb_part *p, struct qstate *q,
				 struct fw_err *err)
{
	const struct fw_st_entry *e = p->t[BNB_STATE];
	if (!e && p->t[BNB_STATE_FP4])
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: '%s' is an fp4 weight (%s); fw's "
				 "4-bit weights are NF4 only", path, p->key,
				 p->t[BNB_STATE_FP4]->name);
	if (!e)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: 4-bit weight '%s' lacks '%s%s'", path,
				 p->key, p->key, BNB_SUFFIX[BNB_STATE]);
	if (e->dtype != FW_Q4)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: '%s' is %s, not the U8 bytes of a JSON "
				 "object", path, e->name, fw_dtype_name(e->dtype));
	json_error_t je;
	json_t *js = json_loadb(e->data, e->nbytes, 0, &je);
	if (!json_is_object(js)) {
		json_decref(js);
		return fw_errorf(err, FW_ERR_FORMAT, "%s: '%s' is not a JSON object (%s)", path,
				 e->name, js ? "another JSON value" : je.text);
	}
	const char *qt = json_string_value(json_object_get(js, "quant_type"));
	const char *dt = json_string_value(json_object_get(js, "dtype"));
	json_t *bs = json_object_get(js, "blocksize"), *sh = json_object_get(js, "shape");
	json_t *nbs = json_object_get(js, "nested_blocksize");
	const char *ndt = json_string_value(json_object_get(js, "nested_dtype"));
	json_t *off = json_object_get(js, "nested_offset");
	enum fw_status st = FW_OK;
	q->nested = nbs != NULL;
	q->offset = json_is_number(off) ? (float)json_number_value(off) : 0.0f;
	if (!qt || (strcmp(qt, "nf4") && strcmp(qt, "fp4")))
		st = fw_errorf(err, FW_ERR_FORMAT, "%s: '%s': quant_type is %s%s%s, not nf4", path,
			       e->name, qt ? "\"" : "", qt ? qt : "missing or not a string",
			       qt ? "\"" : "");
	else if (strcmp(qt, "nf4"))
		st = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: '%s': quant_type fp4; fw's 4-bit "
			       "weights are NF4 only", path, e->name);
	else if (!json_is_integer(bs) || json_integer_value(bs) != FW_NF4_BLOCK)
		st = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: '%s': blocksize must be %d (fw's NF4 "
			       "blocks)", path, e->name, FW_NF4_BLOCK);
	else if (!dt || export_dtype(dt, &q->dtype) != 0)
		st = fw_errorf(err, FW_ERR_FORMAT, "%s: '%s': dtype %s is not float32, bfloat16 or "
			       "float16", path, e->name, dt ? dt : "missing or not a string");
	else if (!json_is_array(sh) || json_array_size(sh) != 2 ||
		 json_integer_value(json_array_get(sh, 0)) != p->rows ||
		 json_integer_value(json_array_get(sh, 1)) != p->cols)
		st = fw_errorf(err, FW_ERR_FORMAT, "%s: '%s': shape is not [%lld, %lld], the "
			       "model's for '%s'", path, e->name, (long long)p->rows,
			       (long long)p->cols, p->key);
	else if (q->nested && (!json_is_integer(nbs) ||
			       json_integer_value(nbs) != FW_NF4_STATS_BLOCK ||
			       !ndt || strcmp(ndt, "float32") || !json_is_number(off) ||
			       !isfinite(q->offset)))
		st = fw_errorf(err, FW_ERR_FORMAT, "%s: '%s': double quantization needs "
			       "nested_blocksize %d, nested_dtype \"float32\" and a finite "
			       "nested_offset", path, e->name, FW_NF4_STATS_BLOCK);
	json_decref(js);
	return st;
}

/* The part's tensors (shapes, dtypes, the NF4 table) against its state. */
static enum fw_status check_part(const char *path, const struct bnb_part *p,
				 const struct qstate *q, struct fw_err *err)
{
	int64_t m = p->rows * p->cols, nb = fw_nf4_n_blocks(m);
	enum fw_status st;
	if ((st = need(path, p, BNB_WEIGHT, FW_Q4, (m + 1) / 2, err)) != FW_OK ||
	    (st = need(path, p, BNB_ABSMAX, q->nested ? FW_Q4 : FW_F32, nb, err)) != FW_OK ||
	    (st = need(path, p, BNB_QUANT_MAP, FW_F32, 16, err)) != FW_OK)
		return st;
	if (memcmp(p->t[BNB_QUANT_MAP]->data, fw_nf4_code, sizeof(fw_nf4_code)))
		return fw_errorf(err, FW_ERR_FORMAT, "%s: '%s' is not the NF4 table", path,
				 p->t[BNB_QUANT_MAP]->name);
	if (!q->nested)
		return FW_OK;
	if ((st = need(path, p, BNB_NESTED_ABSMAX, FW_F32,
		       (nb + FW_NF4_STATS_BLOCK - 1) / FW_NF4_STATS_BLOCK, err)) != FW_OK ||
	    (st = need(path, p, BNB_NESTED_MAP, FW_F32, 256, err)) != FW_OK)
		return st;
	return FW_OK;
}

/* Blocks [0, nb) of a part as bitsandbytes' dequantize_4bit sees them. */
static void part_absmax(const struct bnb_part *p, const struct qstate *q, int64_t nb,
			float *out)
{
	if (!q->nested) {
		memcpy(out, p->t[BNB_ABSMAX]->data, sizeof(float) * (size_t)nb);
		return;
	}
	const uint8_t *code8 = p->t[BNB_ABSMAX]->data;
	const char *scales = p->t[BNB_NESTED_ABSMAX]->data;
	float map[256], scale;          /* copied: the file's floats may be unaligned */
	memcpy(map, p->t[BNB_NESTED_MAP]->data, sizeof(map));
	for (int64_t b = 0; b < nb; b++) {
		memcpy(&scale, scales + sizeof(float) * (size_t)(b / FW_NF4_STATS_BLOCK),
		       sizeof(float));
		float scaled = map[code8[b]] * scale;
		out[b] = scaled + q->offset;
	}
}

/* How many of the file's 256 nested map values differ from fw's map. */
static int map_differs(const struct bnb_part *p)
{
	float mine[256];
	fw_nf4_dynamic_map(mine);
	const float *theirs = p->t[BNB_NESTED_MAP]->data;
	int n = 0;
	for (int i = 0; i < 256; i++)
		n += memcmp(&mine[i], &theirs[i], sizeof(float)) != 0;
	return n;
}

bool nf4_tensor_new(struct fw_tensor *t, const char *name, const char *suffix, enum fw_dtype dt,
		    int nd, const int64_t *ne)
{
	memset(t, 0, sizeof(*t));
	if (snprintf(t->name, sizeof(t->name), "%s%s", name, suffix) >= (int)sizeof(t->name))
		return false;
	t->dtype = dt;
	t->ndim = nd;
	memcpy(t->ne, ne, sizeof(int64_t) * (size_t)nd);
	fw_set_contiguous_strides(t);
	return (t->data = calloc(fw_nbytes(t) + 1, 1)) != NULL;
}

enum fw_status import_nf4_weight(const char *path, const struct fw_tensor *t,
				 const struct bnb_part *parts, int np, struct fw_tensor out[3],
				 struct import_nf4_info *info, struct fw_err *err)
{
	int64_t n = fw_nelem(t), nb = fw_nf4_n_blocks(n), e0 = 0;
	int64_t qa_ne[1] = { 2 * nb }, st_ne[1] = { fw_nf4_n_stats(n) };
	struct qstate q[HF_NF4_PARTS_MAX];
	enum fw_status st = FW_OK;
	memset(info, 0, sizeof(*info));
	for (int j = 0; j < np; j++) {
		const struct bnb_part *p = &parts[j];
		int64_t m = p->rows * p->cols;
		if ((st = read_state(path, p, &q[j], err)) != FW_OK ||
		    (st = check_part(path, p, &q[j], err)) != FW_OK)
			return st;
		if (j && q[j].dtype != q[0].dtype)
			return fw_errorf(err, FW_ERR_FORMAT, "%s: '%s' has dtype %s but '%s' %s", path,
					 p->key, fw_dtype_name(q[j].dtype), parts[0].key,
					 fw_dtype_name(q[0].dtype));
		if (e0 % FW_NF4_BLOCK || (m % FW_NF4_BLOCK && j + 1 < np))
			return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: '%s' does not fall on %d-weight "
					 "blocks of fw's fused '%s', so its 4-bit codes cannot be "
					 "kept", path, p->key, FW_NF4_BLOCK, t->name);
		e0 += m;
	}
	info->dtype = q[0].dtype;
	if (!nf4_tensor_new(&out[0], t->name, "", FW_Q4, t->ndim, t->ne) ||
	    !nf4_tensor_new(&out[1], t->name, FW_NF4_ABSMAX_SUFFIX, FW_Q4, 1, qa_ne) ||
	    !nf4_tensor_new(&out[2], t->name, FW_NF4_STATS_SUFFIX, FW_F32, 1, st_ne))
		return fw_errorf(err, FW_ERR_NOMEM, "import: %s: out of memory, or its statistics' "
				 "names are over %d bytes", t->name, FW_NAME_MAX - 1);
	e0 = 0;
	for (int j = 0; j < np; j++) {
		int64_t m = parts[j].rows * parts[j].cols;
		memcpy((uint8_t *)out[0].data + e0 / 2, parts[j].t[BNB_WEIGHT]->data,
		       (size_t)(m + 1) / 2);
		e0 += m;
	}
	if (np == 1 && q[0].nested) {           /* fw's storage as it is */
		memcpy(out[1].data, parts[0].t[BNB_ABSMAX]->data, (size_t)nb);
		memcpy(out[2].data, parts[0].t[BNB_NESTED_ABSMAX]->data,
		       sizeof(float) * (size_t)(st_ne[0] - 1));
		fw_f32(&out[2])[st_ne[0] - 1] = q[0].offset;
		info->map_differs = map_differs(&parts[0]);
		return FW_OK;
	}
	float *absmax = malloc(sizeof(float) * (size_t)(nb + 1));
	if (!absmax)
		return fw_errorf(err, FW_ERR_NOMEM, "import: out of memory");
	e0 = 0;
	for (int j = 0; j < np; j++) {
		int64_t m = parts[j].rows * parts[j].cols;
		part_absmax(&parts[j], &q[j], fw_nf4_n_blocks(m), absmax + e0 / FW_NF4_BLOCK);
		e0 += m;
	}
	fw_nf4_quantize_absmax(absmax, nb, out[1].data, fw_f32(&out[2]));
	free(absmax);
	info->requantized = true;
	return st;
}
