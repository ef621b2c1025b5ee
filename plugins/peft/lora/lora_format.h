/* lora_format.h - the adapter file of peft/lora, shared by the plugin (save,
 * load) and by fwrun (merge, export-adapter, checks of --adapter lists).
 *
 * An adapter is an fw HDF5 tensor file (docs/hdf5-format.md) holding only
 * the tensors the adapter trains, under the model's parameter names:
 *
 *     h.0.attn.c_attn.lora_A.weight   (r, in)
 *     h.0.attn.c_attn.lora_B.weight   (out, r)
 *     h.0.attn.c_attn.bias            (out)   only with --lora-bias=all|lora_only
 *
 * and these root attributes (strings):
 *
 *     fw_adapter          "peft/lora"
 *     fw_adapter_version  "1"
 *     config              the plugin's resolved options as INI ("[peft/lora]\n
 *                         lora-r = 8\n..."): fwrun fills unset options from it
 *     lora_modules        one line per adapted linear layer:
 *                         "NAME\tIN\tOUT\tR\tALPHA\tSCALING\n"
 *     base_tensors        one line per tensor of the base model the adapter
 *                         was trained on (every parameter the file does not
 *                         hold, in model order): "NAME\tDTYPE\tD0,D1,...\n"
 *     base_hash           16 hex digits: lora_hash_tensor over those tensors,
 *                         in that order, starting from LORA_HASH_SEED
 *
 * The hash is a fingerprint (it catches another base, or the same base with
 * other weights), not a cryptographic digest.
 */
#ifndef LORA_FORMAT_H
#define LORA_FORMAT_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/tensor.h"

#define LORA_KIND "peft/lora"
#define LORA_FORMAT_VERSION "1"
#define LORA_HASH_SEED 0xcbf29ce484222325ull

/* 64-bit FNV-style hash, a word at a time. */
static inline uint64_t lora_hash(uint64_t h, const void *p, size_t n)
{
	const unsigned char *s = p;
	while (n >= 8) {
		uint64_t w;
		memcpy(&w, s, 8);
		h = (h ^ w) * 0x100000001b3ull;
		h ^= h >> 32;
		s += 8;
		n -= 8;
	}
	while (n--)
		h = (h ^ *s++) * 0x100000001b3ull;
	return h;
}

/* Name, dtype, shape and the contiguous data of one tensor. */
static inline uint64_t lora_hash_tensor(uint64_t h, const struct fw_tensor *t)
{
	int32_t dt = (int32_t)t->dtype, nd = t->ndim;
	h = lora_hash(h, t->name, strlen(t->name) + 1);
	h = lora_hash(h, &dt, sizeof(dt));
	h = lora_hash(h, &nd, sizeof(nd));
	h = lora_hash(h, t->ne, sizeof(t->ne[0]) * (size_t)t->ndim);
	return lora_hash(h, t->data, fw_nbytes(t));
}

/* "768,2304" */
static inline void lora_shape_text(const struct fw_tensor *t, char *out, size_t len)
{
	size_t n = 0;
	out[0] = '\0';
	for (int i = 0; i < t->ndim && n < len; i++)
		n += (size_t)snprintf(out + n, len - n, "%s%" PRId64, i ? "," : "", t->ne[i]);
}

/* One line of base_tensors. Returns the start of the next line, or NULL at
 * the end; *ok is false for a malformed line. */
struct lora_base_entry {
	char name[FW_NAME_MAX];
	char dtype[16];
	int ndim;
	int64_t ne[FW_MAX_DIMS];
};

static inline const char *lora_base_next(const char *s, struct lora_base_entry *e, bool *ok)
{
	*ok = true;
	if (!s || !*s)
		return NULL;
	const char *eol = strchr(s, '\n');
	size_t len = eol ? (size_t)(eol - s) : strlen(s);
	const char *t1 = memchr(s, '\t', len);
	const char *t2 = t1 ? memchr(t1 + 1, '\t', len - (size_t)(t1 + 1 - s)) : NULL;
	if (!t1 || !t2 || t1 == s || (size_t)(t1 - s) >= sizeof(e->name) ||
	    (size_t)(t2 - t1 - 1) >= sizeof(e->dtype)) {
		*ok = false;
		return NULL;
	}
	memset(e, 0, sizeof(*e));
	memcpy(e->name, s, (size_t)(t1 - s));
	memcpy(e->dtype, t1 + 1, (size_t)(t2 - t1 - 1));
	const char *p = t2 + 1, *end = s + len;
	while (p < end) {
		char *q;
		long long v = strtoll(p, &q, 10);
		if (q == p || v < 0 || e->ndim == FW_MAX_DIMS || (*q != ',' && q != end)) {
			*ok = false;
			return NULL;
		}
		e->ne[e->ndim++] = v;
		p = *q == ',' ? q + 1 : q;
	}
	if (e->ndim == 0)
		*ok = false;
	return eol ? eol + 1 : s + len;
}

/* One line of lora_modules. */
struct lora_module_entry {
	char name[FW_NAME_MAX];
	int64_t in, out, r;
	double alpha, scaling;
};

static inline const char *lora_module_next(const char *s, struct lora_module_entry *e, bool *ok)
{
	*ok = true;
	if (!s || !*s)
		return NULL;
	const char *eol = strchr(s, '\n');
	size_t len = eol ? (size_t)(eol - s) : strlen(s);
	const char *tab = memchr(s, '\t', len);
	char rest[256];
	if (!tab || tab == s || (size_t)(tab - s) >= sizeof(e->name) ||
	    len - (size_t)(tab - s) >= sizeof(rest)) {
		*ok = false;
		return NULL;
	}
	memset(e, 0, sizeof(*e));
	memcpy(e->name, s, (size_t)(tab - s));
	memcpy(rest, tab + 1, len - (size_t)(tab + 1 - s));
	rest[len - (size_t)(tab + 1 - s)] = '\0';
	long long in, out, r;
	int used = 0;
	if (sscanf(rest, "%lld\t%lld\t%lld\t%lf\t%lf%n", &in, &out, &r, &e->alpha, &e->scaling,
		   &used) != 5 || rest[used] || in <= 0 || out <= 0 || r <= 0) {
		*ok = false;
		return NULL;
	}
	e->in = in;
	e->out = out;
	e->r = r;
	return eol ? eol + 1 : s + len;
}

#endif
