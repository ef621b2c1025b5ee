/* export_nf4.c - fwrun export of 4-bit (NF4) weights as bitsandbytes and
 * transformers serialize a Params4bit: the packed codes under the weight's
 * key, then QuantState.as_dict(packed=True) under "<key>.":
 *
 *   weight                                  U8 (ceil(n / 2), 1): element 2j in
 *                                           the high nibble of byte j
 *   weight.absmax                           U8 (blocks), double-quantized,
 *                                           or F32 (blocks) without nesting
 *   weight.quant_map                        F32 (16): the NF4 table
 *   weight.nested_absmax                    F32 (ceil(blocks / 256))
 *   weight.nested_quant_map                 F32 (256): create_dynamic_map()
 *   weight.quant_state.bitsandbytes__nf4    U8: JSON of quant_type,
 *                                           blocksize, dtype (the model's:
 *                                           float32, bfloat16 or float16,
 *                                           export's --dtype), shape and the
 *                                           nested blocksize, dtype, offset
 *
 * fw stores NF4 exactly so (fw/quant.h), so a whole weight is copied. A part
 * of a fused weight (Llama's q_proj of fw's c_attn) shares its blocks but
 * not its double quantization, whose offset is the whole tensor's mean: it
 * is written without nesting, the absmax of its blocks in f32 as fw
 * dequantizes them, so that bitsandbytes' dequantize_4bit gives back fw's
 * weights exactly either way.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fw/quant.h"
#include "fwrun.h"

static const char *const QS_SUFFIX = ".quant_state.bitsandbytes__nf4";

/* out named key + suffix, of dtype dt and shape ne[0..nd), with fresh data. */
static enum fw_status new_tensor(struct fw_tensor *out, const char *key, const char *suffix,
				 enum fw_dtype dt, int nd, int64_t n0, int64_t n1,
				 struct fw_err *err)
{
	memset(out, 0, sizeof(*out));
	if (snprintf(out->name, sizeof(out->name), "%s%s", key, suffix) >= (int)sizeof(out->name))
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "export: key '%s%s' is longer than %zu "
				 "bytes", key, suffix, sizeof(out->name) - 1);
	out->dtype = dt;
	out->ndim = nd;
	out->ne[0] = n0;
	out->ne[1] = n1;
	fw_set_contiguous_strides(out);
	size_t bytes = dt == FW_Q4 ? (size_t)fw_nelem(out) : fw_nbytes(out);
	if (!(out->data = calloc(bytes + 1, 1)))
		return fw_errorf(err, FW_ERR_NOMEM, "export: out of memory");
	return FW_OK;
}

static const char *torch_dtype_name(enum fw_dtype dt)
{
	return dt == FW_BF16 ? "bfloat16" : dt == FW_F16 ? "float16" : "float32";
}

int export_nf4_part(const char *key, const struct fw_tensor *codes,
		    const struct fw_tensor *qabsmax, const struct fw_tensor *stats, int64_t row0,
		    int64_t rows, enum fw_dtype dtype, struct fw_tensor *out, struct fw_err *err)
{
	int64_t n = fw_nelem(codes), cols = n / codes->ne[0];
	int64_t e0 = row0 * cols, m = rows * cols, nb = fw_nf4_n_blocks(n);
	int64_t b0 = e0 / FW_NF4_BLOCK, pb = fw_nf4_n_blocks(m);
	bool whole = row0 == 0 && rows == codes->ne[0];
	if (!whole && (e0 % FW_NF4_BLOCK || (m % FW_NF4_BLOCK && e0 + m != n)))
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "export: 4-bit weight '%s': its part "
				 "'%s' does not fall on %d-weight blocks, so it cannot be written "
				 "as a bitsandbytes weight of its own", codes->name, key,
				 FW_NF4_BLOCK), -1;
	int k = 0;
	if (new_tensor(&out[k], key, "", FW_Q4, 2, (m + 1) / 2, 1, err) != FW_OK)
		return -1;
	memcpy(out[k++].data, (const uint8_t *)codes->data + e0 / 2, (size_t)(m + 1) / 2);
	if (whole) {
		if (new_tensor(&out[k], key, ".absmax", FW_Q4, 1, nb, 0, err) != FW_OK)
			return -1;
		memcpy(out[k++].data, qabsmax->data, (size_t)nb);
	} else {
		if (new_tensor(&out[k], key, ".absmax", FW_F32, 1, pb, 0, err) != FW_OK)
			return -1;
		fw_nf4_absmax(qabsmax->data, fw_f32(stats), n, b0, pb, fw_f32(&out[k++]));
	}
	if (new_tensor(&out[k], key, ".quant_map", FW_F32, 1, 16, 0, err) != FW_OK)
		return -1;
	memcpy(out[k++].data, fw_nf4_code, sizeof(float) * 16);
	int64_t n2 = fw_nf4_n_stats(n) - 1;
	if (whole) {
		if (new_tensor(&out[k], key, ".nested_absmax", FW_F32, 1, n2, 0, err) != FW_OK)
			return -1;
		memcpy(out[k++].data, stats->data, sizeof(float) * (size_t)n2);
		if (new_tensor(&out[k], key, ".nested_quant_map", FW_F32, 1, 256, 0, err) != FW_OK)
			return -1;
		fw_nf4_dynamic_map(fw_f32(&out[k++]));
	}
	/* QuantState.as_dict's non-tensor items, json.dumps'd in its order */
	char js[512];
	int len = snprintf(js, sizeof(js), "{\"quant_type\": \"nf4\", \"blocksize\": %d, "
			   "\"dtype\": \"%s\", \"shape\": [%lld, %lld]", FW_NF4_BLOCK,
			   torch_dtype_name(dtype), (long long)rows, (long long)cols);
	if (whole)
		len += snprintf(js + len, sizeof(js) - (size_t)len, ", \"nested_blocksize\": %d, "
				"\"nested_dtype\": \"float32\", \"nested_offset\": %.17g",
				FW_NF4_STATS_BLOCK, (double)fw_f32(stats)[n2]);
	len += snprintf(js + len, sizeof(js) - (size_t)len, "}");
	if (new_tensor(&out[k], key, QS_SUFFIX, FW_Q4, 1, len, 0, err) != FW_OK)
		return -1;
	memcpy(out[k++].data, js, (size_t)len);
	return k;
}

json_t *export_nf4_config(enum fw_dtype compute)
{
	const char *cd = torch_dtype_name(compute);
	return json_pack("{s:b, s:b, s:s, s:s, s:s, s:b, s:b, s:b, s:n, s:f, s:b, s:b, s:s}",
			 "_load_in_4bit", 1, "_load_in_8bit", 0, "bnb_4bit_compute_dtype", cd,
			 "bnb_4bit_quant_storage", "uint8", "bnb_4bit_quant_type", "nf4",
			 "bnb_4bit_use_double_quant", 1, "llm_int8_enable_fp32_cpu_offload", 0,
			 "llm_int8_has_fp16_weight", 0, "llm_int8_skip_modules",
			 "llm_int8_threshold", 6.0, "load_in_4bit", 1, "load_in_8bit", 0,
			 "quant_method", "bitsandbytes");
}
