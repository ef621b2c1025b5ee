/* tokenizer_hf_models.c - the models of tokenizer.json: BPE, WordPiece, Unigram.
 *
 * Each follows Hugging Face's tokenizers (Rust) step for step:
 *   BPE        characters (with the continuing prefix / end-of-word suffix),
 *              unknown ones as <0xXX> byte tokens (byte_fallback) or unk
 *              (fused when fuse_unk); then merges, lowest (rank, position)
 *              first, from a heap (Word::merge_all). ignore_merges: a piece
 *              that is a vocabulary entry is that token.
 *   WordPiece  greedy longest match, "##" before non-initial parts; a word
 *              with an unmatchable part, or over max_input_chars_per_word
 *              characters, is the unk token.
 *   Unigram    Viterbi over byte positions with the pieces' scores; a
 *              character no piece starts with costs min_score - 10 as unk;
 *              consecutive unks fuse; a fused piece outside the vocabulary is
 *              its <0xXX> bytes (byte_fallback) or unk.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_hf.h"

#define EMPTY UINT64_MAX

static int32_t model_get(const struct hf_tok *h, const char *s, size_t n);

/* --- vocabulary ------------------------------------------------------------------------- */

static uint64_t hash_str(const char *p, size_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
	return h ^ h >> 29;
}

int32_t vocab_get(const struct hf_vocab *v, const char *s, size_t n)
{
	if (!v->tab)
		return -1;
	for (uint64_t i = hash_str(s, n) & v->mask;; i = (i + 1) & v->mask) {
		int32_t id = v->tab[i];
		if (id < 0)
			return -1;
		if (v->len[id] == n && !memcmp(v->blob + v->off[id], s, n))
			return id;
	}
}

static bool vocab_rehash(struct hf_vocab *v, uint64_t size)
{
	int32_t *tab = fw_malloc(size * sizeof(int32_t));
	if (!tab)
		return false;
	memset(tab, 0xff, size * sizeof(int32_t));
	fw_free(v->tab);
	v->tab = tab;
	v->mask = size - 1;
	for (int32_t id = 0; id < v->n; id++) {
		if (v->len[id] == UINT32_MAX)
			continue;
		uint64_t i = hash_str(v->blob + v->off[id], v->len[id]) & v->mask;
		while (tab[i] >= 0)
			i = (i + 1) & v->mask;
		tab[i] = id;
	}
	return true;
}

bool vocab_set(struct hf_vocab *v, int32_t id, const char *s, size_t n)
{
	if (id < 0 || id == INT32_MAX || n >= UINT32_MAX || v->blob_n + n >= UINT32_MAX)
		return false;
	if (id >= v->n) {
		size_t nn = (size_t)id + 1, cap_off = v->cap, cap_len = v->cap;
		if (!tok_grow((void **)&v->off, &cap_off, nn, sizeof(uint32_t)) ||
		    !tok_grow((void **)&v->len, &cap_len, nn, sizeof(uint32_t)))
			return false;   /* (a grown off is kept: cap covers both) */
		v->cap = cap_off < cap_len ? cap_off : cap_len;
		for (size_t i = (size_t)v->n; i < nn; i++)
			v->len[i] = UINT32_MAX;
		v->n = (int32_t)nn;
	}
	if (!tok_grow((void **)&v->blob, &v->blob_cap, v->blob_n + n + 1, 1))
		return false;
	memcpy(v->blob + v->blob_n, s, n);
	v->off[id] = (uint32_t)v->blob_n;
	v->len[id] = (uint32_t)n;
	v->blob_n += n;
	/* Rehash when the table is over half full (counting every id slot). */
	if (!v->tab || 2 * (uint64_t)v->n > v->mask + 1) {
		uint64_t size = 1024;
		while (size < 4 * (uint64_t)v->n)
			size *= 2;
		return vocab_rehash(v, size);
	}
	if (vocab_get(v, s, n) >= 0)
		return true;            /* the first id keeps the string */
	uint64_t i = hash_str(s, n) & v->mask;
	while (v->tab[i] >= 0)
		i = (i + 1) & v->mask;
	v->tab[i] = id;
	return true;
}

const char *vocab_str(const struct hf_vocab *v, int32_t id, size_t *n)
{
	if (id < 0 || id >= v->n || v->len[id] == UINT32_MAX)
		return NULL;
	*n = v->len[id];
	return v->blob + v->off[id];
}

void vocab_free(struct hf_vocab *v)
{
	fw_free(v->off);
	fw_free(v->len);
	fw_free(v->blob);
	fw_free(v->tab);
	memset(v, 0, sizeof(*v));
}

/* --- loading ---------------------------------------------------------------------------------- */

static uint64_t merge_slot(uint64_t key, uint64_t mask)
{
	key = (key ^ key >> 31) * 0x9E3779B97F4A7C15ull;
	return (key ^ key >> 32) & mask;
}

static int32_t merge_get(const struct hf_model *m, int32_t a, int32_t b, int32_t *id)
{
	uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
	for (uint64_t i = merge_slot(key, m->mmask);; i = (i + 1) & m->mmask) {
		if (m->merges[i].key == key) {
			*id = m->merges[i].id;
			return m->merges[i].rank;
		}
		if (m->merges[i].key == EMPTY)
			return -1;
	}
}

static enum fw_status load_merges(json_t *merges, struct hf_tok *h, const char *path,
				  struct fw_err *err)
{
	struct hf_model *m = &h->model;
	size_t n = json_array_size(merges), size = 64;
	while (size < 2 * n + 2)
		size *= 2;
	if (!(m->merges = fw_malloc(size * sizeof(*m->merges))))
		return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
	for (size_t i = 0; i < size; i++)
		m->merges[i].key = EMPTY;
	m->mmask = size - 1;
	struct sbuf cat = { 0 };
	enum fw_status st = FW_OK;
	for (size_t r = 0; r < n && st == FW_OK; r++) {
		json_t *e = json_array_get(merges, r);
		const char *a, *b;
		size_t na, nb;
		if (json_is_string(e)) {
			a = json_string_value(e);
			const char *sp = memchr(a, ' ', json_string_length(e));
			if (!sp || memchr(sp + 1, ' ', json_string_length(e) - (size_t)(sp - a) - 1)) {
				st = fw_errorf(err, FW_ERR_FORMAT, "%s: model.merges[%zu] is not \"A B\"", path,
					       r);
				break;
			}
			na = (size_t)(sp - a);
			b = sp + 1;
			nb = json_string_length(e) - na - 1;
		} else if (json_is_array(e) && json_array_size(e) == 2 &&
			   json_is_string(json_array_get(e, 0)) && json_is_string(json_array_get(e, 1))) {
			a = json_string_value(json_array_get(e, 0));
			na = json_string_length(json_array_get(e, 0));
			b = json_string_value(json_array_get(e, 1));
			nb = json_string_length(json_array_get(e, 1));
		} else {
			st = fw_errorf(err, FW_ERR_FORMAT, "%s: model.merges[%zu] is neither \"A B\" nor "
				       "[\"A\", \"B\"]", path, r);
			break;
		}
		size_t skip = m->n_prefix <= nb ? m->n_prefix : nb;
		cat.n = 0;
		if (!sb_put(&cat, a, na) || !sb_put(&cat, b + skip, nb - skip)) {
			st = fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
			break;
		}
		int32_t ia = vocab_get(&h->vocab, a, na), ib = vocab_get(&h->vocab, b, nb);
		int32_t im = vocab_get(&h->vocab, cat.b, cat.n);
		if (ia < 0 || ib < 0 || im < 0) {
			st = fw_errorf(err, FW_ERR_FORMAT, "%s: model.merges[%zu]: %s token is not in the "
				       "vocabulary", path, r, ia < 0 ? "its left" : ib < 0 ? "its right" :
				       "the merged");
			break;
		}
		uint64_t key = (uint64_t)(uint32_t)ia << 32 | (uint32_t)ib;
		uint64_t i = merge_slot(key, m->mmask);
		while (m->merges[i].key != EMPTY && m->merges[i].key != key)
			i = (i + 1) & m->mmask;
		m->merges[i] = (struct merge_ent){ key, (int32_t)r, im };   /* the last rank wins */
	}
	sb_free(&cat);
	return st;
}

/* A score as the reference reads it. tokenizer.json files are written with
 * the shortest decimal that gives back each f64; Hugging Face reads them with
 * serde_json, which (without its float_roundtrip feature) converts the
 * digits to an f64 first and then multiplies or divides by a power of ten:
 * two roundings, so a 17-digit score can come out one ulp away from the
 * correctly rounded d that jansson gives. Segmentations made of the same
 * pieces in another order tie exactly, and those ulps decide the tie, so
 * fw redoes that conversion from d's shortest decimal. */
static double serde_f64(double d)
{
	char buf[40];
	int prec = 0;
	if (!isfinite(d) || d == 0)
		return d;
	do
		snprintf(buf, sizeof(buf), "%.*e", prec++, d);
	while (prec < 17 && strtod(buf, NULL) != d);
	/* buf: [-]D.DDDDe[+-]XX: digits and a decimal exponent */
	uint64_t sig = 0;
	int digits = 0;
	const char *p = buf + (buf[0] == '-');
	for (; *p && *p != 'e'; p++)
		if (*p >= '0' && *p <= '9') {
			sig = sig * 10 + (uint64_t)(*p - '0');
			digits++;
		}
	int exp10 = atoi(p + 1) - (digits - 1);
	static const double pow10[] = { 1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10,
		1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22 };
	double f = (double)sig;
	if (exp10 < -22 || exp10 > 22)
		return d;               /* not reached by scores; keep jansson's */
	f = exp10 >= 0 ? f * pow10[exp10] : f / pow10[-exp10];
	return d < 0 ? -f : f;
}

static enum fw_status opt_str(json_t *j, const char *k, char **out, size_t *n, struct fw_err *err)
{
	json_t *v = json_object_get(j, k);
	if (!json_is_string(v) || json_string_length(v) == 0)
		return FW_OK;
	*n = json_string_length(v);
	if (!(*out = fw_malloc(*n + 1)))
		return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
	memcpy(*out, json_string_value(v), *n + 1);
	return FW_OK;
}

/* A BPE word can be cut before a code point c that is a token itself and
 * that no token has right after the code point x before it (x != c): no
 * merge can join across such a place, so the parts merge exactly as the
 * whole word would, and each part can be cached. Llama-2's and Gemma's
 * "\u2581" is one (Gemma's but after ">", for its token ">\u2581</"): their
 * normalized text has no pre-tokenizer and is one long word. A code point
 * that follows more than CUT_EXC others in tokens is not a cut. */
#define CUT_EXC 16

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static enum fw_status bpe_cuts(struct hf_tok *h, struct fw_err *err)
{
	struct hf_model *m = &h->model;
	const size_t bytes = (0x10FFFF >> 3) + 1;
	uint8_t *cut = fw_calloc(bytes, 1);
	uint64_t *pair = NULL;
	size_t np = 0, cap = 0, ne = 0;
	bool ok = cut != NULL, any = false;
	for (int pass = 0; ok && pass < 2; pass++) {
		for (int32_t id = 0; ok && id < m->n_model; id++) {
			size_t n, i = 0;
			const char *s = vocab_str(&h->vocab, id, &n);
			uint32_t prev = UINT32_MAX;
			while (ok && s && i < n) {
				uint32_t cp = u8_next(s, n, &i);
				if (cp > 0x10FFFF)
					break;
				if (pass == 0 && i == n && prev == UINT32_MAX)
					cut[cp >> 3] |= (uint8_t)(1u << (cp & 7));     /* a token alone */
				if (pass == 1 && prev != UINT32_MAX && prev != cp &&
				    (cut[cp >> 3] >> (cp & 7) & 1)) {
					ok = tok_grow((void **)&pair, &cap, np + 1, sizeof(*pair));
					if (ok)
						pair[np++] = (uint64_t)prev << 32 | cp;
				}
				prev = cp;
			}
		}
	}
	if (!ok) {
		fw_free(cut);
		fw_free(pair);
		return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
	}
	/* per c, its distinct left neighbours x: (c << 32 | x), sorted */
	for (size_t k = 0; k < np; k++)
		pair[k] = (pair[k] & 0xFFFFFFFFu) << 32 | pair[k] >> 32;
	if (np)
		qsort(pair, np, sizeof(*pair), cmp_u64);
	for (size_t k = 0; k < np;) {
		size_t e = k, d = 0;
		uint32_t c = (uint32_t)(pair[k] >> 32);
		for (; e < np && pair[e] >> 32 == c; e++)
			d += e == k || pair[e] != pair[e - 1];
		if (d > CUT_EXC)
			cut[c >> 3] &= (uint8_t)~(1u << (c & 7));
		else
			for (size_t q = k; q < e; q++)
				if (q == k || pair[q] != pair[q - 1])
					pair[ne++] = pair[q];
		k = e;
	}
	for (size_t k = 0; k < bytes && !any; k++)
		any = cut[k] != 0;
	if (!any) {
		fw_free(cut);
		fw_free(pair);
		return FW_OK;
	}
	m->cut = cut;
	m->cut_exc = pair;
	m->n_cut_exc = ne;
	return FW_OK;
}

/* Whether a BPE word may be cut between code points x and c. */
static bool cut_between(const struct hf_model *m, uint32_t x, uint32_t c)
{
	if (x == c || c > 0x10FFFF || !(m->cut[c >> 3] >> (c & 7) & 1))
		return false;
	uint64_t key = (uint64_t)c << 32 | x;
	size_t lo = 0, hi = m->n_cut_exc;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (m->cut_exc[mid] < key)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo == m->n_cut_exc || m->cut_exc[lo] != key;
}

enum fw_status model_parse(json_t *j, struct hf_tok *h, const char *path, struct fw_err *err)
{
	struct hf_model *m = &h->model;
	const char *t = json_string_value(json_object_get(j, "type"));
	json_t *vocab = json_object_get(j, "vocab");
	m->unk = -1;
	if (!json_is_object(j))
		return fw_errorf(err, FW_ERR_FORMAT, "%s: no \"model\" object", path);
	if (!t)         /* old files: BPE has merges, WordPiece "##", Unigram a list */
		t = json_is_array(json_object_get(j, "merges")) ? "BPE" : json_is_array(vocab) ?
			"Unigram" : json_object_get(j, "continuing_subword_prefix") ? "WordPiece" : "";
	if (!strcmp(t, "BPE"))
		m->kind = MODEL_BPE;
	else if (!strcmp(t, "WordPiece"))
		m->kind = MODEL_WORDPIECE;
	else if (!strcmp(t, "Unigram"))
		m->kind = MODEL_UNIGRAM;
	else
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: model \"%s\" is not supported (BPE, "
				 "WordPiece and Unigram are)", path, t);
	enum fw_status st = FW_OK;
	if (m->kind == MODEL_UNIGRAM) {
		size_t n = json_array_size(vocab);
		if (!json_is_array(vocab) || n == 0 || n > INT32_MAX / 2)
			return fw_errorf(err, FW_ERR_FORMAT, "%s: Unigram model.vocab is not a list of "
					 "[piece, score]", path);
		if (!(m->score = fw_malloc(n * sizeof(double))))
			return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		m->min_score = INFINITY;
		m->n_score = (int32_t)n;
		for (size_t i = 0; i < n; i++) {
			json_t *e = json_array_get(vocab, i), *p = json_array_get(e, 0);
			json_t *s = json_array_get(e, 1);
			if (!json_is_string(p) || !json_is_number(s))
				return fw_errorf(err, FW_ERR_FORMAT, "%s: Unigram model.vocab[%zu] is not "
						 "[piece, score]", path, i);
			if (vocab_get(&h->vocab, json_string_value(p), json_string_length(p)) >= 0)
				return fw_errorf(err, FW_ERR_FORMAT, "%s: Unigram model.vocab[%zu] repeats a "
						 "piece", path, i);
			if (!vocab_set(&h->vocab, (int32_t)i, json_string_value(p), json_string_length(p)))
				return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
			m->score[i] = serde_f64(json_number_value(s));
			if (m->score[i] < m->min_score)
				m->min_score = m->score[i];
			if (json_string_length(p) > m->max_piece)
				m->max_piece = json_string_length(p);
		}
		json_t *u = json_object_get(j, "unk_id");
		if (json_is_integer(u)) {
			if (json_integer_value(u) < 0 || json_integer_value(u) >= (json_int_t)n)
				return fw_errorf(err, FW_ERR_FORMAT, "%s: Unigram unk_id is outside the "
						 "vocabulary", path);
			m->unk = (int32_t)json_integer_value(u);
		}
		m->byte_fallback = json_is_true(json_object_get(j, "byte_fallback"));
	} else {
		if (!json_is_object(vocab))
			return fw_errorf(err, FW_ERR_FORMAT, "%s: model.vocab is not an object of token -> "
					 "id", path);
		size_t n = json_object_size(vocab);
		const char *k;
		size_t kl;
		json_t *v;
		json_object_keylen_foreach(vocab, k, kl, v) {
			json_int_t id = json_is_integer(v) ? json_integer_value(v) : -1;
			if (id < 0 || id >= (json_int_t)(n + (1u << 20)) ||
			    (id < h->vocab.n && h->vocab.len[id] != UINT32_MAX))
				return fw_errorf(err, FW_ERR_FORMAT, "%s: model.vocab: token id %lld is %s",
						 path, (long long)id, id < 0 ? "not a non-negative integer" :
						 id >= (json_int_t)(n + (1u << 20)) ? "far beyond the vocabulary" :
						 "given twice");
			if (!vocab_set(&h->vocab, (int32_t)id, k, kl))
				return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		}
		json_t *unk = json_object_get(j, "unk_token");
		if (json_is_string(unk)) {
			m->unk = vocab_get(&h->vocab, json_string_value(unk), json_string_length(unk));
			if (m->unk < 0 && m->kind == MODEL_WORDPIECE)
				return fw_errorf(err, FW_ERR_FORMAT, "%s: model.unk_token is not in the "
						 "vocabulary", path);
		}
		st = opt_str(j, "continuing_subword_prefix", &m->prefix, &m->n_prefix, err);
		if (st == FW_OK && m->kind == MODEL_BPE)
			st = opt_str(j, "end_of_word_suffix", &m->suffix, &m->n_suffix, err);
		if (st != FW_OK)
			return st;
		if (m->kind == MODEL_WORDPIECE) {
			json_t *mc = json_object_get(j, "max_input_chars_per_word");
			m->max_chars = json_is_integer(mc) && json_integer_value(mc) >= 0 ?
				(size_t)json_integer_value(mc) : 100;
			if (!m->prefix && !json_object_get(j, "continuing_subword_prefix")) {
				if (!(m->prefix = fw_malloc(3)))
					return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
				memcpy(m->prefix, "##", 3);
				m->n_prefix = 2;
			}
		} else {
			json_t *d = json_object_get(j, "dropout");
			if (json_is_number(d) && json_number_value(d) != 0.0)
				return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: BPE dropout is not supported",
						 path);
			m->fuse_unk = json_is_true(json_object_get(j, "fuse_unk"));
			m->byte_fallback = json_is_true(json_object_get(j, "byte_fallback"));
			m->ignore_merges = json_is_true(json_object_get(j, "ignore_merges"));
			json_t *mg = json_object_get(j, "merges");
			if (!json_is_array(mg))
				return fw_errorf(err, FW_ERR_FORMAT, "%s: BPE model.merges is not a list", path);
			st = load_merges(mg, h, path, err);
		}
	}
	m->n_model = h->vocab.n;
	if (st == FW_OK && m->kind == MODEL_BPE && !m->ignore_merges && !m->n_prefix &&
	    !m->n_suffix)
		st = bpe_cuts(h, err);
	m->all_bytes = true;
	for (int b = 0; b < 256; b++) {
		char name[8];
		snprintf(name, sizeof(name), "<0x%02X>", b);
		m->byte_tok[b] = model_get(h, name, 6);
		m->all_bytes = m->all_bytes && m->byte_tok[b] >= 0;
	}
	return st;
}

void model_free(struct hf_model *m)
{
	fw_free(m->prefix);
	fw_free(m->suffix);
	fw_free(m->merges);
	fw_free(m->score);
	fw_free(m->cut);
	fw_free(m->cut_exc);
}

/* A token of the model's own vocabulary (not an added token beyond it). */
static int32_t model_get(const struct hf_tok *h, const char *s, size_t n)
{
	int32_t id = vocab_get(&h->vocab, s, n);
	return id < h->model.n_model ? id : -1;
}

/* --- BPE ----------------------------------------------------------------------------------- */

bool ids_append(struct fw_token_buf *out, int32_t id)
{
	if (!tok_grow((void **)&out->ids, &out->cap, out->n + 1, sizeof(int32_t)))
		return false;
	out->ids[out->n++] = id;
	return true;
}

/* All bytes of s as <0xXX> tokens, if the vocabulary has them all; with
 * offs, each token's offsets are sp. */
static bool has_byte_tokens(const struct hf_model *m, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (m->byte_tok[(unsigned char)s[i]] < 0)
			return false;
	return true;
}

static bool byte_tokens(const struct hf_model *m, const char *s, size_t n,
			struct fw_token_buf *out, struct albuf *offs, struct tspan sp, bool *nomem)
{
	if (!has_byte_tokens(m, s, n))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!ids_append(out, m->byte_tok[(unsigned char)s[i]]) ||
		    (offs && !al_to(offs, offs->n + 1, sp)))
			return !(*nomem = true);
	return true;
}

/* Word::merge_all over sym[0..n); the survivors are appended to out (with
 * offs, their offsets: the spans sp[0..n) of the symbols they merge). */
static enum fw_status bpe_merge(const struct hf_model *m, int32_t *sym, struct tspan *sp,
				size_t n, struct fw_token_buf *out, struct albuf *offs,
				struct fw_err *err)
{
	uint32_t *next = fw_malloc((n + 1) * sizeof(uint32_t)), *prev = fw_malloc((n + 1) * sizeof(uint32_t));
	uint8_t *dead = fw_calloc(n + 1, 1);
	struct pair *heap = fw_malloc((3 * n + 2) * sizeof(*heap));
	enum fw_status st = FW_OK;
	if (!next || !prev || !dead || !heap) {
		st = fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		goto out;
	}
	const uint32_t END = UINT32_MAX;
	size_t nh = 0;
	for (size_t i = 0; i < n; i++) {
		next[i] = i + 1 < n ? (uint32_t)i + 1 : END;
		prev[i] = i ? (uint32_t)i - 1 : END;
	}
	for (size_t i = 0; i + 1 < n; i++) {
		struct pair b = { .left = (uint32_t)i };
		if ((b.rank = merge_get(m, sym[i], sym[i + 1], &b.id)) >= 0)
			heap_push(heap, &nh, b);
	}
	while (nh) {
		struct pair t = heap_pop(heap, &nh);
		uint32_t l = t.left, r = next[l];
		int32_t id;
		if (dead[l] || r == END || merge_get(m, sym[l], sym[r], &id) < 0 || id != t.id)
			continue;
		sym[l] = t.id;
		if (sp)
			sp[l].b = sp[r].b;
		dead[r] = 1;
		next[l] = next[r];
		if (next[r] != END)
			prev[next[r]] = l;
		struct pair b = { 0 };
		if (prev[l] != END && (b.rank = merge_get(m, sym[prev[l]], sym[l], &b.id)) >= 0) {
			b.left = prev[l];
			heap_push(heap, &nh, b);
		}
		if (next[l] != END && (b.rank = merge_get(m, sym[l], sym[next[l]], &b.id)) >= 0) {
			b.left = l;
			heap_push(heap, &nh, b);
		}
	}
	for (uint32_t i = 0; n && i != END; i = next[i])
		if (!ids_append(out, sym[i]) || (offs && !al_put(offs, &sp[i], 1))) {
			st = fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
			break;
		}
out:
	fw_free(next);
	fw_free(prev);
	fw_free(dead);
	fw_free(heap);
	return st;
}

/* Appends symbol id of len bytes at *pos (its span to wo, if any). */
static bool sym_add(struct fw_token_buf *w, struct albuf *wo, int32_t id, size_t len, size_t *pos)
{
	struct tspan sp = { *pos, *pos + len };
	*pos += len;
	return ids_append(w, id) && (!wo || al_put(wo, &sp, 1));
}

static enum fw_status bpe_encode(const struct hf_tok *h, const char *s, size_t n,
				 struct fw_token_buf *out, struct albuf *offs, struct fw_err *err)
{
	const struct hf_model *m = &h->model;
	if (m->ignore_merges) {
		int32_t id = model_get(h, s, n);
		if (id >= 0)
			return ids_append(out, id) && (!offs || al_to(offs, offs->n + 1,
								     (struct tspan){ 0, n })) ? FW_OK :
				fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
	}
	struct fw_token_buf w = { 0 };
	struct albuf ws = { 0 };        /* with offs: each symbol's span */
	struct albuf *wo = offs ? &ws : NULL;
	struct sbuf c = { 0 };
	int32_t unk = -1;
	size_t unk_len = 0, pos = 0;
	bool nomem = false;
	for (size_t i = 0; i < n && !nomem;) {
		size_t a = i;
		u8_next(s, n, &i);
		c.n = 0;
		nomem = !((a == 0 || !m->prefix || sb_put(&c, m->prefix, m->n_prefix)) &&
			  sb_put(&c, s + a, i - a) &&
			  (i < n || !m->suffix || sb_put(&c, m->suffix, m->n_suffix)));
		if (nomem)
			break;
		/* offsets as the reference's Word gives them: each symbol the next
		 * len bytes (a byte token one, a pending unk when it is added) */
		int32_t id = model_get(h, c.b, c.n);
		if (id >= 0) {
			if (unk >= 0)
				nomem = !sym_add(&w, wo, unk, unk_len, &pos);
			unk = -1;
			nomem = nomem || !sym_add(&w, wo, id, i - a, &pos);
			continue;
		}
		if (m->byte_fallback && has_byte_tokens(m, c.b, c.n)) {
			for (size_t k = 0; k < c.n && !nomem; k++)
				nomem = !sym_add(&w, wo, m->byte_tok[(unsigned char)c.b[k]], 1, &pos);
			continue;
		}
		if (m->unk >= 0) {
			if (unk >= 0 && !m->fuse_unk) {
				nomem = !sym_add(&w, wo, unk, unk_len, &pos);
				unk = -1;
			}
			unk_len = unk >= 0 ? unk_len + (i - a) : i - a;
			unk = m->unk;
		}
	}
	if (unk >= 0 && !nomem)
		nomem = !sym_add(&w, wo, unk, unk_len, &pos);
	sb_free(&c);
	enum fw_status st = nomem ? fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory") :
		bpe_merge(m, w.ids, wo ? ws.v : NULL, w.n, out, offs, err);
	fw_token_buf_free(&w);
	al_free(&ws);
	return st;
}

/* --- WordPiece ------------------------------------------------------------------------------ */

static enum fw_status wordpiece_encode(const struct hf_tok *h, const char *s, size_t n,
				       struct fw_token_buf *out, struct albuf *offs, struct fw_err *err)
{
	const struct hf_model *m = &h->model;
	size_t chars = 0, start = 0, mark = out->n, omark = offs ? offs->n : 0;
	for (size_t i = 0; i < n; i += u8_len((unsigned char)s[i]))
		chars++;
	bool bad = chars > m->max_chars, nomem = false;
	struct sbuf c = { 0 };
	while (!bad && !nomem && start < n) {
		size_t end = n;
		int32_t found = -1;
		while (start < end) {
			c.n = 0;
			if (!((start == 0 || sb_put(&c, m->prefix, m->n_prefix)) &&
			      sb_put(&c, s + start, end - start))) {
				nomem = true;
				break;
			}
			if ((found = model_get(h, c.b, c.n)) >= 0)
				break;
			do
				end--;
			while (end > start && ((unsigned char)s[end] & 0xC0) == 0x80);
		}
		if (nomem)
			break;
		if (found < 0)
			bad = true;
		else if (!ids_append(out, found) ||
			 (offs && !al_to(offs, offs->n + 1, (struct tspan){ start, end })))
			nomem = true;
		start = end;
	}
	sb_free(&c);
	if (bad) {
		out->n = mark;
		if (offs)
			offs->n = omark;
		nomem = !ids_append(out, m->unk) ||
			(offs && !al_to(offs, offs->n + 1, (struct tspan){ 0, n }));
	}
	return nomem ? fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory") : FW_OK;
}

/* --- Unigram ------------------------------------------------------------------------------- */

struct seg {
	size_t a, b;
	bool unk;
};

struct node {
	double score;
	int64_t start;                  /* -1: not reached */
	int32_t id;
};

static enum fw_status unigram_encode(const struct hf_tok *h, const char *s, size_t n,
				     struct fw_token_buf *out, struct albuf *offs, struct fw_err *err)
{
	const struct hf_model *m = &h->model;
	struct node *best = fw_malloc((n + 1) * sizeof(*best));
	struct seg *seg = fw_malloc((n + 1) * sizeof(*seg));
	if (!best || !seg) {
		fw_free(best);
		fw_free(seg);
		return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
	}
	for (size_t i = 0; i <= n; i++)
		best[i] = (struct node){ 0, -1, -1 };
	best[0].start = 0;
	double unk_score = m->min_score - 10.0;
	enum fw_status st = FW_OK;
	for (size_t at = 0; at < n;) {
		double here = best[at].score;
		size_t mb = u8_len((unsigned char)s[at]);
		if (at + mb > n)
			mb = n - at;
		bool single = false;
		for (size_t len = 1; len <= m->max_piece && at + len <= n; len++) {
			int32_t id = vocab_get(&h->vocab, s + at, len);
			if (id < 0 || id >= m->n_score)
				continue;
			double sc = m->score[id];
			struct node *t = &best[at + len];
			if (t->start < 0 || here + sc > t->score)
				*t = (struct node){ here + sc, (int64_t)at, id };
			single = single || len == mb;
		}
		if (!single) {
			if (m->unk < 0) {
				st = fw_errorf(err, FW_ERR_INVALID, "tokenizer: a character has no piece and "
					       "the Unigram model has no unk_id");
				goto out;
			}
			struct node *t = &best[at + mb];
			if (t->start < 0 || here + unk_score > t->score)
				*t = (struct node){ here + unk_score, (int64_t)at, m->unk };
		}
		at += mb;
	}
	/* Back from the end, consecutive unks fused into one piece. */
	size_t ns = 0;
	for (size_t e = n; e > 0;) {
		size_t a = (size_t)best[e].start;
		bool u = m->unk >= 0 && best[e].id == m->unk;
		if (u && ns && seg[ns - 1].unk) {
			seg[ns - 1].a = a;
		} else {
			seg[ns++] = (struct seg){ a, e, u };
		}
		e = a;
	}
	for (size_t k = ns; k-- > 0 && st == FW_OK;) {
		size_t a = seg[k].a, b = seg[k].b;
		int32_t id = vocab_get(&h->vocab, s + a, b - a);
		bool nomem = false;
		if (id >= m->n_score)
			id = -1;
		/* byte tokens: each with the whole piece's offsets */
		if (id < 0 && m->byte_fallback &&
		    byte_tokens(m, s + a, b - a, out, offs, (struct tspan){ a, b }, &nomem))
			continue;
		if (nomem || !ids_append(out, id >= 0 ? id : m->unk) ||
		    (offs && !al_to(offs, offs->n + 1, (struct tspan){ a, b })))
			st = fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
	}
out:
	fw_free(best);
	fw_free(seg);
	return st;
}

static enum fw_status model_word(const struct hf_tok *h, const char *s, size_t n,
				 struct fw_token_buf *out, struct albuf *offs, struct fw_err *err)
{
	switch (h->model.kind) {
	case MODEL_BPE:
		return bpe_encode(h, s, n, out, offs, err);
	case MODEL_WORDPIECE:
		return wordpiece_encode(h, s, n, out, offs, err);
	default:
		return unigram_encode(h, s, n, out, offs, err);
	}
}

/* (The cache holds ids only: with offsets, the model runs.) */
static enum fw_status model_cached(const struct hf_tok *h, struct piece_cache *c, const char *s,
				   size_t n, struct fw_token_buf *out, struct albuf *offs,
				   size_t base, struct fw_err *err)
{
	if (offs) {
		size_t k = offs->n;
		enum fw_status st = model_word(h, s, n, out, offs, err);
		for (; st == FW_OK && k < offs->n; k++) {
			offs->v[k].a += base;
			offs->v[k].b += base;
		}
		return st;
	}
	if (n > CACHE_KEY_MAX || !c || !c->max)
		return model_word(h, s, n, out, NULL, err);
	uint64_t hs = hash_bytes(s, n);
	size_t k;
	const int32_t *ids = pcache_get(c, s, n, hs, &k);
	if (ids) {
		if (!tok_grow((void **)&out->ids, &out->cap, out->n + k, sizeof(int32_t)))
			return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		memcpy(out->ids + out->n, ids, k * sizeof(int32_t));
		out->n += k;
		return FW_OK;
	}
	size_t mark = out->n;
	enum fw_status st = model_word(h, s, n, out, NULL, err);
	if (st == FW_OK)
		pcache_put(c, s, n, hs, out->ids + mark, out->n - mark);
	return st;
}

enum fw_status model_encode(const struct hf_tok *h, struct piece_cache *c, const char *s,
			    size_t n, struct fw_token_buf *out, struct albuf *offs, struct fw_err *err)
{
	size_t a = 0;
	uint32_t prev = UINT32_MAX;
	for (size_t i = 0; h->model.cut && i < n;) {
		size_t at = i;
		uint32_t cp = u8_next(s, n, &i);
		if (at > a && cut_between(&h->model, prev, cp)) {
			enum fw_status st = model_cached(h, c, s + a, at - a, out, offs, a, err);
			if (st != FW_OK)
				return st;
			a = at;
		}
		prev = cp;
	}
	return n > a ? model_cached(h, c, s + a, n - a, out, offs, a, err) : FW_OK;
}
