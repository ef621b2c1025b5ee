/* tokenizer_hf.c - tokenizer.json: loading, added tokens, post-processors, decoders.
 *
 * Encoding, as Hugging Face's Tokenizer::encode does it:
 *   1. added tokens with normalized=false are cut out of the raw text
 *      (leftmost, longest first; single_word, lstrip, rstrip honoured);
 *   2. the rest is normalized, then added tokens with normalized=true are
 *      cut out of it (matched by their normalized content);
 *   3. the pre-tokenizer splits what is left, the model encodes each piece;
 *   4. with add_special, the post-processor's tokens go around the ids.
 * Without split_special, special added tokens are not matched (their text is
 * ordinary text: Hugging Face's encode_special_tokens).
 */
#include <stdio.h>
#include <string.h>

#include "tokenizer_hf.h"

#define NOMEM(err) fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory")

/* --- post-processors ------------------------------------------------------------------ */

static bool ids_push(int32_t **v, size_t *n, int32_t id)
{
	size_t cap = *n;                /* exact: a few ids at load time */
	if (!tok_grow((void **)v, &cap, *n + 1, sizeof(int32_t)))
		return false;
	(*v)[(*n)++] = id;
	return true;
}

/* A [token, id] pair of BertProcessing/RobertaProcessing. */
static int32_t pair_id(json_t *p)
{
	json_t *id = json_array_get(p, 1);
	return json_is_integer(id) && json_integer_value(id) >= 0 &&
	       json_integer_value(id) < INT32_MAX ? (int32_t)json_integer_value(id) : -1;
}

void tmpl_free(struct hf_tmpl *t)
{
	for (size_t i = 0; i < t->n; i++)
		fw_free(t->v[i].ids);
	fw_free(t->v);
	memset(t, 0, sizeof(*t));
}

/* Appends a piece: a sequence (seq 0 or 1), or the special ids[0..n). */
static bool tmpl_add(struct hf_tmpl *t, int seq, uint32_t type_id, const int32_t *ids, size_t n)
{
	size_t cap = t->n;              /* exact: a few pieces at load time */
	if (!tok_grow((void **)&t->v, &cap, t->n + 1, sizeof(*t->v)))
		return false;
	struct hf_tpiece *p = &t->v[t->n];
	memset(p, 0, sizeof(*p));
	p->seq = seq;
	p->type_id = type_id;
	if (n && !(p->ids = fw_malloc(n * sizeof(int32_t))))
		return false;
	if (n)
		memcpy(p->ids, ids, n * sizeof(int32_t));
	p->n_ids = n;
	t->n++;
	return true;
}

/* BertProcessing: [CLS] A [SEP] (B:1 [SEP]:1); RobertaProcessing: <s> A </s>
 * (</s> B </s>), every type id 0, as the reference gives them. */
static bool tmpl_bert(struct hf_tmpl t[2], int32_t cls, int32_t sep, bool roberta)
{
	uint32_t b = roberta ? 0 : 1;
	return tmpl_add(&t[0], -1, 0, &cls, 1) && tmpl_add(&t[0], 0, 0, NULL, 0) &&
	       tmpl_add(&t[0], -1, 0, &sep, 1) &&
	       tmpl_add(&t[1], -1, 0, &cls, 1) && tmpl_add(&t[1], 0, 0, NULL, 0) &&
	       tmpl_add(&t[1], -1, 0, &sep, 1) &&
	       (!roberta || tmpl_add(&t[1], -1, 0, &sep, 1)) &&
	       tmpl_add(&t[1], 1, b, NULL, 0) && tmpl_add(&t[1], -1, b, &sep, 1);
}

/* One of TemplateProcessing's "single" or "pair" lists. */
static enum fw_status tmpl_parse(json_t *list, json_t *sp, const char *which,
				 struct hf_tmpl *t, const char *path, struct fw_err *err)
{
	bool seen[2] = { false, false };
	if (!json_is_array(list))
		return fw_errorf(err, FW_ERR_FORMAT, "%s: TemplateProcessing: \"%s\" is not a list",
				 path, which);
	for (size_t i = 0; i < json_array_size(list); i++) {
		json_t *e = json_array_get(list, i), *sq = json_object_get(e, "Sequence");
		json_t *st = json_object_get(e, "SpecialToken");
		json_t *piece = sq ? sq : st, *ty = json_object_get(piece, "type_id");
		const char *id = json_string_value(json_object_get(piece, "id"));
		json_int_t type = json_is_integer(ty) ? json_integer_value(ty) : -1;
		if (!id || type < 0 || type > UINT32_MAX)
			return fw_errorf(err, FW_ERR_FORMAT, "%s: TemplateProcessing: %s[%zu] is not a "
					 "Sequence or a SpecialToken with an id and a type_id", path,
					 which, i);
		if (sq) {
			int seq = !strcmp(id, "A") ? 0 : !strcmp(id, "B") ? 1 : -1;
			if (seq < 0 || (seq == 1 && !strcmp(which, "single")))
				return fw_errorf(err, FW_ERR_FORMAT, "%s: TemplateProcessing: %s[%zu] is "
						 "sequence \"%s\"", path, which, i, id);
			seen[seq] = true;
			if (!tmpl_add(t, seq, (uint32_t)type, NULL, 0))
				return NOMEM(err);
			continue;
		}
		json_t *ids = json_object_get(json_object_get(sp, id), "ids");
		if (!json_is_array(ids))
			return fw_errorf(err, FW_ERR_FORMAT, "%s: TemplateProcessing: %s[%zu] (\"%s\") is "
					 "not listed in special_tokens", path, which, i, id);
		int32_t v[64];
		size_t n = json_array_size(ids);
		for (size_t k = 0; k < n; k++) {
			json_t *x = json_array_get(ids, k);
			if (n > 64 || !json_is_integer(x) || json_integer_value(x) < 0 ||
			    json_integer_value(x) >= INT32_MAX)
				return fw_errorf(err, FW_ERR_FORMAT, "%s: TemplateProcessing: special token "
						 "\"%s\" has an id that is not an integer (or over 64 "
						 "ids)", path, id);
			v[k] = (int32_t)json_integer_value(x);
		}
		if (!tmpl_add(t, -1, (uint32_t)type, v, n))
			return NOMEM(err);
	}
	if (!seen[0] || (!strcmp(which, "pair") && !seen[1]))
		return fw_errorf(err, FW_ERR_FORMAT, "%s: TemplateProcessing: \"%s\" has no $%s", path,
				 which, seen[0] ? "B" : "A");
	return FW_OK;
}

static enum fw_status post_parse(json_t *j, struct hf_tok *h, const char *path,
				 struct fw_err *err)
{
	const char *t = json_string_value(json_object_get(j, "type"));
	t = t ? t : "";
	if (!strcmp(t, "Sequence")) {
		json_t *a = json_object_get(j, "processors");
		for (size_t i = 0; i < json_array_size(a); i++) {
			enum fw_status s = post_parse(json_array_get(a, i), h, path, err);
			if (s != FW_OK)
				return s;
		}
		return json_is_array(a) ? FW_OK : fw_errorf(err, FW_ERR_FORMAT, "%s: post_processor "
							       "Sequence without \"processors\"", path);
	}
	bool roberta = !strcmp(t, "RobertaProcessing");
	if (roberta || !strcmp(t, "ByteLevel")) {
		json_t *tr = json_object_get(j, "trim_offsets"), *ap = json_object_get(j, "add_prefix_space");
		if (!json_is_boolean(tr) || json_is_true(tr)) {
			h->trim = true;
			h->trim_prefix = !json_is_boolean(ap) || json_is_true(ap);
		}
		if (!roberta)
			return FW_OK;   /* offsets only */
	}
	struct hf_tmpl tm[2] = { { 0 }, { 0 } };
	enum fw_status st = FW_OK;
	if (!strcmp(t, "BertProcessing") || !strcmp(t, "RobertaProcessing")) {
		int32_t cls = pair_id(json_object_get(j, "cls")), sep = pair_id(json_object_get(j, "sep"));
		if (cls < 0 || sep < 0)
			return fw_errorf(err, FW_ERR_FORMAT, "%s: post_processor %s needs cls and sep as "
					 "[token, id]", path, t);
		if (!tmpl_bert(tm, cls, sep, t[0] == 'R'))
			st = NOMEM(err);
	} else if (!strcmp(t, "TemplateProcessing")) {
		json_t *sp = json_object_get(j, "special_tokens"), *pair = json_object_get(j, "pair");
		st = tmpl_parse(json_object_get(j, "single"), sp, "single", &tm[0], path, err);
		if (st == FW_OK && pair && !json_is_null(pair))
			st = tmpl_parse(pair, sp, "pair", &tm[1], path, err);
	} else {
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: post_processor \"%s\" is not supported",
				 path, t);
	}
	/* Each wraps what the previous ones produced: h->bos = before + h->bos,
	 * h->eos = h->eos + after. */
	int32_t *pre = NULL;
	size_t np = 0;
	bool ok = st == FW_OK, after = false;
	for (size_t i = 0; ok && i < tm[0].n; i++) {
		after |= tm[0].v[i].seq == 0;
		for (size_t k = 0; ok && k < tm[0].v[i].n_ids; k++)
			ok = after ? ids_push(&h->eos, &h->n_eos, tm[0].v[i].ids[k]) :
				     ids_push(&pre, &np, tm[0].v[i].ids[k]);
	}
	for (size_t i = 0; ok && i < h->n_bos; i++)
		ok = ids_push(&pre, &np, h->bos[i]);
	if (ok) {
		fw_free(h->bos);
		h->bos = pre;
		h->n_bos = np;
		pre = NULL;
		/* pairs and type ids follow the first processor that adds tokens */
		if (h->n_adders++ == 0) {
			h->tmpl[0] = tm[0];
			h->tmpl[1] = tm[1];
			memset(tm, 0, sizeof(tm));
		}
	}
	fw_free(pre);
	tmpl_free(&tm[0]);
	tmpl_free(&tm[1]);
	return st != FW_OK ? st : ok ? FW_OK : NOMEM(err);
}

enum fw_status hf_template(const struct hf_tok *h, bool pair, const struct hf_tmpl **t,
			   struct fw_err *err)
{
	*t = NULL;
	if (h->n_adders > 1)
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "tokenizer: a post_processor Sequence with "
				 "%d processors that add tokens: only single texts without type ids "
				 "are supported", h->n_adders);
	if (h->n_adders == 1 && pair && !h->tmpl[1].n)
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "tokenizer: the post_processor has no "
				 "\"pair\" template");
	if (h->n_adders == 1)
		*t = &h->tmpl[pair];
	return FW_OK;
}

/* --- decoders ------------------------------------------------------------------------------ */

static enum fw_status dec_parse(json_t *j, struct hf_dec *d, const char *path,
				struct fw_err *err)
{
	static const char *const names[] = { "ByteLevel", "Metaspace", "WordPiece", "ByteFallback",
		"Fuse", "Strip", "Replace", "Sequence" };
	const char *t = json_string_value(json_object_get(j, "type"));
	t = t ? t : "";
	int k = name_index(names, 8, t);
	if (k < 0)
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: decoder \"%s\" is not supported", path, t);
	d->kind = (enum dec_kind)k;
	switch (d->kind) {
	case DEC_SEQ: {
		json_t *a = json_object_get(j, "decoders");
		if (!json_is_array(a))
			return fw_errorf(err, FW_ERR_FORMAT, "%s: decoder Sequence without \"decoders\"",
					 path);
		size_t ns = json_array_size(a);
		if (ns && !(d->sub = fw_calloc(ns, sizeof(*d->sub))))
			return NOMEM(err);
		d->n_sub = ns;
		for (size_t i = 0; i < d->n_sub; i++) {
			enum fw_status s = dec_parse(json_array_get(a, i), &d->sub[i], path, err);
			if (s != FW_OK)
				return s;
		}
		return FW_OK;
	}
	case DEC_METASPACE: case DEC_STRIP: {
		json_t *r = json_object_get(j, d->kind == DEC_STRIP ? "content" : "replacement");
		size_t i = 0;
		if (!json_is_string(r) || json_string_length(r) == 0)
			return fw_errorf(err, FW_ERR_FORMAT, "%s: decoder %s needs a character", path, t);
		d->cp = u8_next(json_string_value(r), json_string_length(r), &i);
		const char *ps = json_string_value(json_object_get(j, "prepend_scheme"));
		json_t *aps = json_object_get(j, "add_prefix_space");
		d->never = ps ? !strcmp(ps, "never") : json_is_false(aps);
		json_t *a = json_object_get(j, "start"), *b = json_object_get(j, "stop");
		d->start = json_is_integer(a) ? (int)json_integer_value(a) : 0;
		d->stop = json_is_integer(b) ? (int)json_integer_value(b) : 0;
		return FW_OK;
	}
	case DEC_WORDPIECE: {
		json_t *p = json_object_get(j, "prefix");
		const char *s = json_is_string(p) ? json_string_value(p) : "##";
		d->na = strlen(s);
		if (!(d->a = fw_malloc(d->na + 1)))
			return NOMEM(err);
		memcpy(d->a, s, d->na + 1);
		d->cleanup = !json_is_false(json_object_get(j, "cleanup"));
		return FW_OK;
	}
	case DEC_REPLACE: {
		json_t *pat = json_object_get(j, "pattern"), *c = json_object_get(j, "content");
		json_t *s = json_object_get(pat, "String"), *r = json_object_get(pat, "Regex");
		if (!json_is_string(c) || (!json_is_string(s) && !json_is_string(r)))
			return fw_errorf(err, FW_ERR_FORMAT, "%s: decoder Replace needs a pattern and a "
					 "content", path);
		d->nb = json_string_length(c);
		if (!(d->b = fw_malloc(d->nb + 1)))
			return NOMEM(err);
		memcpy(d->b, json_string_value(c), d->nb + 1);
		json_t *src = json_is_string(s) ? s : r;
		d->re = re_new(json_string_value(src), json_string_length(src), json_is_string(s), path,
			       err);
		return d->re ? FW_OK : err->status;
	}
	default:
		return FW_OK;
	}
}

static void dec_free(struct hf_dec *d)
{
	if (!d)
		return;
	for (size_t i = 0; i < d->n_sub; i++)
		dec_free(&d->sub[i]);
	fw_free(d->sub);
	fw_free(d->a);
	fw_free(d->b);
	re_free(d->re);
}

static const char *const cleanups[][2] = {
	{ " .", "." }, { " ?", "?" }, { " !", "!" }, { " ,", "," }, { " ' ", "'" },
	{ " n't", "n't" }, { " 'm", "'m" }, { " do not", " don't" }, { " 's", "'s" },
	{ " 've", "'ve" }, { " 're", "'re" },
};

static bool replace_lit(struct sbuf *s, const char *a, const char *b)
{
	size_t na = strlen(a), nb = strlen(b);
	struct sbuf o = { 0 };
	bool ok = sb_put(&o, NULL, 0);
	for (size_t i = 0; ok && i < s->n;) {
		if (i + na <= s->n && !memcmp(s->b + i, a, na)) {
			ok = sb_put(&o, b, nb);
			i += na;
		} else {
			ok = sb_put(&o, s->b + i, 1);
			i++;
		}
	}
	sb_free(s);
	*s = o;
	return ok;
}

/* GPT-2's byte alphabet: code point -> byte, -1 outside it. */
static int cp_byte(uint32_t cp)
{
	if ((cp >= '!' && cp <= '~') || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
		return (int)cp;
	if (cp < 256 || cp >= 256 + 68)
		return -1;
	unsigned n = 0;
	for (unsigned b = 0; b < 256; b++)
		if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE)) && n++ == cp - 256)
			return (int)b;
	return -1;
}

/* One decoder over the token strings tk[0..*n) (decode_chain); may shrink *n. */
static bool dec_apply(const struct hf_dec *d, struct sbuf *tk, size_t *n, bool raw)
{
	bool ok = true;
	switch (d->kind) {
	case DEC_SEQ:
		for (size_t i = 0; ok && i < d->n_sub; i++)
			ok = dec_apply(&d->sub[i], tk, n, raw);
		return ok;
	case DEC_FUSE:
		for (size_t i = 1; ok && i < *n; i++) {
			ok = sb_put(&tk[0], tk[i].b, tk[i].n);
			sb_free(&tk[i]);
		}
		*n = *n ? 1 : 0;
		return ok;
	case DEC_BYTELEVEL: {
		struct sbuf bytes = { 0 };
		for (size_t i = 0; ok && i < *n; i++) {
			size_t mark = bytes.n;
			bool inside = true;
			for (size_t k = 0; ok && inside && k < tk[i].n;) {
				int b = cp_byte(u8_next(tk[i].b, tk[i].n, &k));
				char c = (char)b;
				if (b < 0)
					inside = false;
				else
					ok = sb_put(&bytes, &c, 1);
			}
			if (!inside) {
				bytes.n = mark;
				ok = sb_put(&bytes, tk[i].b, tk[i].n);
			}
			sb_free(&tk[i]);
		}
		if (ok && *n) {
			if (raw)
				tk[0] = bytes;
			else {
				ok = sb_put_lossy(&tk[0], bytes.b ? bytes.b : "", bytes.n) && sb_put(&tk[0], NULL, 0);
				sb_free(&bytes);
			}
			*n = 1;
		} else {
			sb_free(&bytes);
		}
		return ok;
	}
	case DEC_BYTEFALLBACK: {
		size_t w = 0;
		struct sbuf pend = { 0 };
		size_t npend = 0;
		for (size_t i = 0; ok && i <= *n; i++) {
			unsigned v;
			char tail;
			bool byte = i < *n && tk[i].n == 6 && sscanf(tk[i].b, "<0x%2X%c", &v, &tail) == 2 &&
				    tail == '>' && tk[i].b[3] != ' ' && tk[i].b[3] != '+' && tk[i].b[3] != '-';
			if (byte) {
				char c = (char)v;
				ok = sb_put(&pend, &c, 1);
				npend++;
				sb_free(&tk[i]);
				continue;
			}
			if (npend) {
				struct sbuf o = { 0 };
				struct sbuf chk = { 0 };
				ok = ok && sb_put_lossy(&chk, pend.b, pend.n);
				bool valid = ok && chk.n == pend.n && !memcmp(chk.b, pend.b, pend.n);
				sb_free(&chk);
				if (valid || raw)
					ok = ok && sb_put(&o, pend.b, pend.n);
				else
					for (size_t k = 0; ok && k < npend; k++)
						ok = sb_cp(&o, 0xFFFD);
				tk[w++] = o;
				pend.n = 0;
				npend = 0;
			}
			if (i < *n) {
				struct sbuf t = tk[i];
				tk[i] = (struct sbuf){ 0 };
				tk[w++] = t;
			}
		}
		sb_free(&pend);
		*n = w;
		return ok;
	}
	default:
		break;
	}
	for (size_t i = 0; ok && i < *n; i++) {
		struct sbuf *t = &tk[i], o = { 0 };
		switch (d->kind) {
		case DEC_METASPACE: {
			for (size_t k = 0; ok && k < t->n;) {
				size_t a = k;
				uint32_t cp = u8_next(t->b, t->n, &k);
				if (cp != d->cp)
					ok = sb_put(&o, t->b + a, k - a);
				else if (!(i == 0 && !d->never && !raw))
					ok = sb_put(&o, " ", 1);
			}
			break;
		}
		case DEC_WORDPIECE:
			if (i != 0 || raw) {
				if (t->n >= d->na && !memcmp(t->b, d->a, d->na))
					ok = sb_put(&o, t->b + d->na, t->n - d->na);
				else
					ok = sb_put(&o, " ", 1) && sb_put(&o, t->b, t->n);
			} else {
				ok = sb_put(&o, t->b, t->n);
			}
			for (size_t k = 0; ok && d->cleanup && k < sizeof(cleanups) / sizeof(cleanups[0]); k++)
				ok = replace_lit(&o, cleanups[k][0], cleanups[k][1]);
			break;
		case DEC_STRIP: {
			size_t a = 0, e = t->n;
			if (raw)
				break;
			for (int k = 0; k < d->start && a < e; k++) {
				size_t q = a;
				if (u8_next(t->b, e, &q) != d->cp)
					break;
				a = q;
			}
			for (int k = 0; k < d->stop && e > a; k++) {
				size_t p = e - 1;
				while (p > a && ((unsigned char)t->b[p] & 0xC0) == 0x80)
					p--;
				size_t q = p;
				if (u8_next(t->b, e, &q) != d->cp)
					break;
				e = p;
			}
			ok = sb_put(&o, t->b + a, e - a);
			break;
		}
		case DEC_REPLACE: {
			/* Its own match data: decoding may run in several threads. */
			pcre2_match_data *md = pcre2_match_data_create_from_pattern(d->re->re, NULL);
			PCRE2_SIZE *ov = md ? pcre2_get_ovector_pointer(md) : NULL;
			size_t off = 0;
			ok = md != NULL;
			while (ok && off <= t->n) {
				int rc = pcre2_match(d->re->re, (PCRE2_SPTR)(t->b ? t->b : ""), t->n, off,
						     PCRE2_NO_UTF_CHECK, md, NULL);
				if (rc < 0)
					break;
				ok = sb_put(&o, t->b + off, ov[0] - off) && sb_put(&o, d->b, d->nb);
				off = ov[1] > ov[0] ? ov[1] : ov[1] + 1;
				if (ov[1] == ov[0] && ov[0] < t->n)
					ok = ok && sb_put(&o, t->b + ov[0], 1);
			}
			if (ok && off < t->n)
				ok = sb_put(&o, t->b + off, t->n - off);
			pcre2_match_data_free(md);
			break;
		}
		default:
			break;
		}
		if (d->kind == DEC_STRIP && raw)
			continue;
		ok = ok && sb_put(&o, NULL, 0);
		sb_free(t);
		*t = o;
	}
	return ok;
}

/* --- added tokens ---------------------------------------------------------------------------- */

static enum fw_status added_push(struct hf_tok *h, int32_t id, const char *s, size_t n,
				 bool special, bool single, bool lstrip, bool rstrip, bool normalized,
				 struct fw_err *err)
{
	if (!tok_grow((void **)&h->added, &h->cap_added, h->n_added + 1, sizeof(*h->added)))
		return NOMEM(err);
	struct hf_added *a = &h->added[h->n_added];
	*a = (struct hf_added){ .id = id, .n = n, .special = special, .single_word = single,
				.lstrip = lstrip, .rstrip = rstrip, .normalized = normalized };
	if (!(a->s = fw_malloc(n + 1)))
		return NOMEM(err);
	memcpy(a->s, s, n);
	a->s[n] = '\0';
	h->n_added++;
	if (normalized && h->norm) {
		struct sbuf o = { 0 };
		enum fw_status st = norm_apply(h->norm, s, n, NULL, &o, NULL, NULL, err);
		if (st != FW_OK) {
			sb_free(&o);
			return st;
		}
		a->ns = o.b;
		a->nn = o.n;
	}
	if (!a->ns) {
		if (!(a->ns = fw_malloc(n + 1)))
			return NOMEM(err);
		memcpy(a->ns, s, n + 1);
		a->nn = n;
	}
	if (a->nn == 0)
		a->id = -1;             /* never matches */
	return FW_OK;
}

static const char *added_text(const struct hf_added *a, size_t *n)
{
	*n = a->normalized ? a->nn : a->n;
	return a->normalized ? a->ns : a->s;
}

static int cmp_u32_desc(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x > y ? -1 : x < y;
}

/* Rebuilds atab/lens/lstart (see struct hf_tok). */
static bool added_index(struct hf_tok *h)
{
	uint64_t size = 16;
	while (size < 2 * (uint64_t)h->n_added)
		size *= 2;
	int32_t *tab[2] = { fw_malloc(size * sizeof(int32_t)), fw_malloc(size * sizeof(int32_t)) };
	uint32_t *lens = fw_malloc((h->n_added + 1) * sizeof(uint32_t));
	if (!tab[0] || !tab[1] || !lens) {
		fw_free(tab[0]);
		fw_free(tab[1]);
		fw_free(lens);
		return false;
	}
	memset(tab[0], 0xFF, size * sizeof(int32_t));
	memset(tab[1], 0xFF, size * sizeof(int32_t));
	memset(h->lstart, 0, sizeof(h->lstart));
	uint32_t nl = 0;
	for (int z = 0; z < 2; z++) {
		for (int c = 0; c < 256; c++) {
			h->lstart[z][c] = nl;
			for (size_t k = 0; k < h->n_added; k++) {
				size_t n;
				const char *t = added_text(&h->added[k], &n);
				if (h->added[k].id < 0 || h->added[k].normalized != z ||
				    (unsigned char)t[0] != c)
					continue;
				uint64_t i = hash_bytes(t, n) & (size - 1);
				bool dup = false;
				for (; tab[z][i] >= 0 && !dup; i = (i + 1) & (size - 1)) {
					size_t m;
					const char *u = added_text(&h->added[tab[z][i]], &m);
					dup = m == n && !memcmp(u, t, n);
				}
				if (dup)
					continue;
				tab[z][i] = (int32_t)k;
				bool seen = false;
				for (uint32_t q = h->lstart[z][c]; q < nl && !seen; q++)
					seen = lens[q] == n;
				if (!seen)
					lens[nl++] = (uint32_t)n;
			}
			qsort(lens + h->lstart[z][c], nl - h->lstart[z][c], sizeof(*lens), cmp_u32_desc);
		}
		h->lstart[z][256] = nl;
	}
	for (int z = 0; z < 2; z++) {
		fw_free(h->atab[z]);
		h->atab[z] = tab[z];
	}
	fw_free(h->lens);
	h->lens = lens;
	h->amask = size - 1;
	return true;
}

/* The first added token (of kind z) whose text is s[0..n), or NULL. */
static const struct hf_added *added_find(const struct hf_tok *h, int z, const char *s, size_t n)
{
	for (uint64_t i = hash_bytes(s, n) & h->amask; h->atab[z][i] >= 0; i = (i + 1) & h->amask) {
		const struct hf_added *a = &h->added[h->atab[z][i]];
		size_t m;
		const char *t = added_text(a, &m);
		if (m == n && !memcmp(t, s, n))
			return a;
	}
	return NULL;
}

static bool word_char(uint32_t cp)
{
	return cp == '_' || u_alnum(cp);
}

/* Splits piece p by the added tokens of one kind (normalized or not). */
static bool added_split(const struct hf_tok *h, const struct piece *p, bool normalized,
			bool split_special, struct plist *out)
{
	const char *s = p->s;
	size_t n = p->n, done = 0;
	for (size_t i = 0; i < n;) {
		const struct hf_added *best = NULL;
		unsigned char c0 = (unsigned char)s[i];
		for (uint32_t q = h->lstart[normalized][c0]; q < h->lstart[normalized][c0 + 1] && !best;
		     q++)
			if (h->lens[q] <= n - i)
				best = added_find(h, normalized, s + i, h->lens[q]);
		if (!best) {
			i++;
			continue;
		}
		size_t start = i, stop = i + (normalized ? best->nn : best->n);
		i = stop;
		if (best->special && !split_special)
			continue;
		if (best->single_word) {
			size_t q = start, r = stop;
			bool before = false, after = false;
			if (start > 0) {
				while (q > 0 && ((unsigned char)s[q - 1] & 0xC0) == 0x80)
					q--;
				size_t k = q - 1;
				before = word_char(u8_next(s, n, &k));
			}
			if (r < n)
				after = word_char(u8_next(s, n, &r));
			if (before || after)
				continue;
		}
		if (best->lstrip) {
			size_t a = start;
			while (a > done) {
				size_t q = a - 1;
				while (q > done && ((unsigned char)s[q] & 0xC0) == 0x80)
					q--;
				size_t k = q;
				if (!u_whitespace(u8_next(s, n, &k)))
					break;
				a = q;
			}
			start = a;
		}
		if (best->rstrip) {
			while (stop < n) {
				size_t k = stop;
				if (!u_whitespace(u8_next(s, n, &k)))
					break;
				stop = k;
			}
		}
		const struct tspan *al = p->al;
		if (done < start && !plist_push(out, s + done, start - done, al ? al + done : NULL, -1,
						p->first && done == 0))
			return false;
		if (!plist_push(out, s + start, stop - start, al ? al + start : NULL, best->id, false))
			return false;
		done = stop;
	}
	return done >= n || plist_push(out, s + done, n - done, p->al ? p->al + done : NULL, -1,
				       p->first && done == 0);
}

/* --- loading -------------------------------------------------------------------------------- */

void hf_free(struct hf_tok *h)
{
	if (!h)
		return;
	vocab_free(&h->vocab);
	norm_free(h->norm);
	fw_free(h->norm);
	pre_free(h->pre);
	fw_free(h->pre);
	model_free(&h->model);
	dec_free(h->dec);
	fw_free(h->dec);
	fw_free(h->bos);
	fw_free(h->eos);
	tmpl_free(&h->tmpl[0]);
	tmpl_free(&h->tmpl[1]);
	for (size_t i = 0; i < h->n_added; i++) {
		fw_free(h->added[i].s);
		fw_free(h->added[i].ns);
	}
	fw_free(h->added);
	fw_free(h->atab[0]);
	fw_free(h->atab[1]);
	fw_free(h->lens);
	fw_free(h->is_special);
	fw_free(h);
}

static bool set_special(struct hf_tok *h, int32_t id)
{
	if ((size_t)id >= h->n_is_special) {
		size_t nn = (size_t)h->vocab.n > (size_t)id ? (size_t)h->vocab.n : (size_t)id + 1;
		uint8_t *f = fw_calloc(nn, 1);
		if (!f)
			return false;
		if (h->n_is_special)
			memcpy(f, h->is_special, h->n_is_special);
		fw_free(h->is_special);
		h->is_special = f;
		h->n_is_special = nn;
	}
	h->is_special[id] = 1;
	return true;
}

/* A non-negative integer field of j into *v (absent or null: def). */
static bool size_field(json_t *j, const char *k, size_t def, size_t *v)
{
	json_t *x = json_object_get(j, k);
	*v = def;
	if (!x || json_is_null(x))
		return true;
	if (!json_is_integer(x) || json_integer_value(x) < 0)
		return false;
	*v = (size_t)json_integer_value(x);
	return true;
}

/* "Left" or "Right" (absent: Right) into *left. */
static bool dir_field(json_t *j, bool *left)
{
	const char *d = json_string_value(json_object_get(j, "direction"));
	*left = d && !strcmp(d, "Left");
	return !json_object_get(j, "direction") || (d && (*left || !strcmp(d, "Right")));
}

/* The file's "truncation": {"max_length", "strategy", "direction", "stride"}.
 * stride only shapes the overflowing encodings, which fw does not return. */
static enum fw_status trunc_parse(json_t *tr, struct fw_encode_options *o, const char *path,
				  struct fw_err *err)
{
	static const char *const names[] = { "LongestFirst", "OnlyFirst", "OnlySecond" };
	if (!tr || json_is_null(tr))
		return FW_OK;
	const char *s = json_string_value(json_object_get(tr, "strategy"));
	int k = s ? name_index(names, 3, s) : 0;
	size_t stride;
	if (!json_is_object(tr) || !json_is_integer(json_object_get(tr, "max_length")) ||
	    !size_field(tr, "max_length", 0, &o->max_length) || !size_field(tr, "stride", 0, &stride) ||
	    !dir_field(tr, &o->truncate_left) || k < 0)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: truncation: needs max_length >= 0, strategy "
				 "LongestFirst, OnlyFirst or OnlySecond, direction Left or Right, "
				 "stride >= 0", path);
	o->truncation = (enum fw_truncation)(FW_TRUNCATE_LONGEST_FIRST + k);
	return FW_OK;
}

/* The file's "padding": {"strategy": "BatchLongest" or {"Fixed": n},
 * "direction", "pad_to_multiple_of", "pad_id", "pad_type_id", "pad_token"}. */
static enum fw_status pad_parse(json_t *pd, struct fw_encode_options *o, const char *path,
				struct fw_err *err)
{
	if (!pd || json_is_null(pd))
		return FW_OK;
	json_t *st = json_object_get(pd, "strategy");
	size_t id, type;
	bool ok = json_is_object(pd) && dir_field(pd, &o->pad_left) &&
		  size_field(pd, "pad_to_multiple_of", 0, &o->pad_multiple) &&
		  size_field(pd, "pad_id", 0, &id) && id < INT32_MAX &&
		  size_field(pd, "pad_type_id", 0, &type) && type <= UINT32_MAX;
	if (ok && json_is_string(st))
		ok = !strcmp(json_string_value(st), "BatchLongest");   /* one text: its own length */
	else if (ok)
		ok = json_is_object(st) && json_object_size(st) == 1 &&
		     size_field(st, "Fixed", 0, &o->pad_length) &&
		     json_is_integer(json_object_get(st, "Fixed"));
	if (!ok)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: padding: needs strategy \"BatchLongest\" or "
				 "{\"Fixed\": n}, direction Left or Right, pad_to_multiple_of, pad_id "
				 "and pad_type_id >= 0", path);
	o->pad_id = (int32_t)id;
	o->pad_type_id = (uint32_t)type;
	/* the reference's Fixed(0) pads nothing, even to a multiple */
	o->pad = !(json_is_object(st) && o->pad_length == 0);
	return FW_OK;
}

struct hf_tok *hf_load(const char *path, const char *text, size_t len, json_t *parsed,
			struct fw_err *err)
{
	json_error_t je;
	json_t *root = parsed ? json_incref(parsed) : json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	struct hf_tok *h = NULL;
	enum fw_status st = FW_OK;
	if (!root) {
		fw_errorf(err, FW_ERR_FORMAT, "%s:%d: not valid JSON: %s", path, je.line, je.text);
		return NULL;
	}
	if (!json_is_object(root) || !json_is_object(json_object_get(root, "model"))) {
		fw_errorf(err, FW_ERR_FORMAT, "%s: not a tokenizer.json: no \"model\" object (a "
			  "vocab.json or encoder.json needs its merges file too)", path);
		goto out;
	}
	if (!(h = fw_calloc(1, sizeof(*h)))) {
		NOMEM(err);
		goto out;
	}
	json_t *n = json_object_get(root, "normalizer"), *p = json_object_get(root, "pre_tokenizer");
	json_t *pp = json_object_get(root, "post_processor"), *d = json_object_get(root, "decoder");
	json_t *tr = json_object_get(root, "truncation"), *pad = json_object_get(root, "padding");
	if ((st = trunc_parse(tr, &h->file, path, err)) != FW_OK ||
	    (st = pad_parse(pad, &h->file, path, err)) != FW_OK)
		goto out;
	if (n && !json_is_null(n)) {
		if (!(h->norm = fw_calloc(1, sizeof(*h->norm))))
			st = NOMEM(err);
		else
			st = norm_parse(n, h->norm, path, "normalizer", err);
	}
	if (st == FW_OK && p && !json_is_null(p)) {
		if (!(h->pre = fw_calloc(1, sizeof(*h->pre))))
			st = NOMEM(err);
		else
			st = pre_parse(p, h->pre, path, "pre_tokenizer", err);
	}
	if (st == FW_OK)
		st = model_parse(json_object_get(root, "model"), h, path, err);
	if (st == FW_OK && pp && !json_is_null(pp))
		st = post_parse(pp, h, path, err);
	if (st == FW_OK && d && !json_is_null(d)) {
		if (!(h->dec = fw_calloc(1, sizeof(*h->dec))))
			st = NOMEM(err);
		else
			st = dec_parse(d, h->dec, path, err);
	}
	json_t *added = json_object_get(root, "added_tokens"), *a;
	size_t i;
	if (st == FW_OK && added && !json_is_array(added))
		st = fw_errorf(err, FW_ERR_FORMAT, "%s: added_tokens is not a list", path);
	json_array_foreach(added, i, a) {
		if (st != FW_OK)
			break;
		json_t *id = json_object_get(a, "id"), *c = json_object_get(a, "content");
		bool special = json_is_true(json_object_get(a, "special"));
		json_t *nz = json_object_get(a, "normalized");
		if (!json_is_integer(id) || json_integer_value(id) < 0 ||
		    json_integer_value(id) >= INT32_MAX / 2 || !json_is_string(c) ||
		    json_string_length(c) == 0) {
			st = fw_errorf(err, FW_ERR_FORMAT, "%s: added_tokens[%zu] needs an id and a "
				       "non-empty content", path, i);
			break;
		}
		int32_t k = (int32_t)json_integer_value(id);
		size_t have_n;
		const char *have = vocab_str(&h->vocab, k, &have_n);
		if (have && (have_n != json_string_length(c) || memcmp(have, json_string_value(c), have_n))) {
			st = fw_errorf(err, FW_ERR_FORMAT, "%s: added_tokens[%zu] (id %d) is another "
				       "token of the vocabulary", path, i, k);
			break;
		}
		if (!have && !vocab_set(&h->vocab, k, json_string_value(c), json_string_length(c))) {
			st = NOMEM(err);
			break;
		}
		st = added_push(h, k, json_string_value(c), json_string_length(c), special,
				json_is_true(json_object_get(a, "single_word")),
				json_is_true(json_object_get(a, "lstrip")),
				json_is_true(json_object_get(a, "rstrip")),
				json_is_boolean(nz) ? json_is_true(nz) : !special, err);
	}
	/* Every id the post-processor and the model's unk use must exist. */
	for (size_t k = 0; st == FW_OK && k < h->n_bos + h->n_eos; k++) {
		int32_t id = k < h->n_bos ? h->bos[k] : h->eos[k - h->n_bos];
		size_t dn;
		if (!vocab_str(&h->vocab, id, &dn))
			st = fw_errorf(err, FW_ERR_FORMAT, "%s: post_processor: token id %d is not in the "
				       "vocabulary", path, id);
	}
	if (st == FW_OK && h->vocab.n > 0 && !set_special(h, h->vocab.n - 1))
		st = NOMEM(err);
	if (st == FW_OK && h->vocab.n > 0)
		h->is_special[h->vocab.n - 1] = 0;      /* set_special only sized it */
	for (size_t k = 0; st == FW_OK && k < h->n_added; k++)
		if (h->added[k].id >= 0)
			h->is_special[h->added[k].id] = h->added[k].special;

	if (st == FW_OK && !added_index(h))
		st = NOMEM(err);
	if (st == FW_OK && h->vocab.n == 0)
		st = fw_errorf(err, FW_ERR_FORMAT, "%s: the vocabulary is empty", path);
	for (int32_t k = 0; st == FW_OK && k < h->vocab.n; k++)
		if (h->vocab.len[k] == UINT32_MAX)
			st = fw_errorf(err, FW_ERR_FORMAT, "%s: no token has id %d (ids must be 0..%d)",
				       path, k, h->vocab.n - 1);
out:
	json_decref(root);
	if (st != FW_OK || err->status) {
		hf_free(h);
		return NULL;
	}
	return h;
}

enum fw_status hf_add_special(struct hf_tok *h, const char *s, size_t n, int32_t *id,
			      struct fw_err *err)
{
	int32_t k = vocab_get(&h->vocab, s, n);
	if (k < 0) {
		k = h->vocab.n;
		if (!vocab_set(&h->vocab, k, s, n))
			return NOMEM(err);
	}
	if ((size_t)k >= h->n_is_special || !h->is_special[k]) {
		enum fw_status st = added_push(h, k, s, n, true, false, false, false, false, err);
		if (st != FW_OK)
			return st;
		if (!set_special(h, k) || !added_index(h))
			return NOMEM(err);
	}
	if (id)
		*id = k;
	return FW_OK;
}

int32_t hf_eos(const struct hf_tok *h)
{
	static const char *const names[] = { "<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>",
		"[SEP]" };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		int32_t id = vocab_get(&h->vocab, names[i], strlen(names[i]));
		if (id >= 0 && (size_t)id < h->n_is_special && h->is_special[id])
			return id;
	}
	return -1;
}

/* --- encoding and decoding ------------------------------------------------------------------ */

/* Per byte of the text Hugging Face's library sees (text with U+FFFD for
 * each ill-formed subpart, appended to clean), the range of the character
 * of text[0..len) it comes from. */
static bool text_spans(const char *text, size_t len, struct sbuf *clean, struct albuf *al)
{
	const unsigned char *u = (const unsigned char *)text;
	for (size_t i = 0; i < len;) {
		size_t bad = 1, v = u8_valid(u + i, len - i, &bad);
		for (size_t e = i + v; i < e;) {
			size_t k = u8_len(u[i]);
			if (!al_to(al, al->n + k, (struct tspan){ i, i + k }))
				return false;
			i += k;
		}
		if (!sb_put(clean, text + (i - v), v))
			return false;
		if (i < len) {
			if (!sb_cp(clean, 0xFFFD) || !al_to(al, al->n + 3, (struct tspan){ i, i + bad }))
				return false;
			i += bad;
		}
	}
	return sb_put(clean, NULL, 0);
}

/* Offsets of tokens [a, b) of piece p: Hugging Face's convert_offsets. */
static struct tspan piece_span(const struct piece *p, size_t a, size_t b)
{
	if (!p->n)
		return (struct tspan){ 0, 0 };
	a = a < p->n ? a : p->n - 1;
	b = b > a ? b : a + 1;
	return (struct tspan){ p->al[a].a, p->al[b - 1].b };
}

/* Hugging Face's process_offsets (ByteLevel and RobertaProcessing with
 * trim_offsets) on one token of text t[0..tn), offsets o into text[0..len):
 * its leading and trailing spaces leave its offsets, but for a first
 * token's one prefix space with add_prefix_space. The Python and Node
 * bindings (and transformers' offset_mapping) trim offsets already in
 * characters, so a space counts one character of text here, not one byte
 * (they differ where a prefix space stands for a longer character). */
static void trim_span(const struct hf_tok *h, const char *t, size_t tn, bool first,
		      const char *text, size_t len, struct tspan *o)
{
	size_t lead = 0, trail = 0, j = 0;
	bool all = true;
	while (h->trim && t && j < tn) {
		uint32_t cp = u8_next(t, tn, &j);
		bool sp = cp == 0x120 || u_whitespace(cp);
		if (sp && all)
			lead++;
		all = all && sp;
		trail = sp ? trail + 1 : 0;
	}
	if (lead && (first || o->a == 0) && h->trim_prefix && lead == 1)
		lead = 0;
	const unsigned char *u = (const unsigned char *)text;
	for (; lead && o->a < o->b; lead--)
		o->a += o->a < len ? u8_len(u[o->a]) : 1;
	o->a = o->a < o->b ? o->a : o->b;
	size_t b = o->b, k = trail;
	for (; k && b > 0; k--)
		while (--b > 0 && b < len && (u[b] & 0xC0) == 0x80)
			;
	if (trail && !k)        /* the reference: only when trail characters precede the end */
		o->b = b > o->a ? b : o->a;
}

void hf_trim_offsets(const struct hf_tok *h, const int32_t *ids, struct tspan *offs, size_t n,
		     const char *text, size_t len)
{
	for (size_t i = 0; h->trim && i < n; i++) {
		size_t tn;
		const char *t = vocab_str(&h->vocab, ids[i], &tn);
		trim_span(h, t, tn, i == 0, text, len, &offs[i]);
	}
}

enum fw_status hf_encode(struct hf_tok *h, struct piece_cache *cache, const char *text,
			 size_t len, bool split_special, bool add_special, struct fw_token_buf *out,
			 struct albuf *offs, struct fw_err *err)
{
	struct sbuf clean = { 0 };
	struct albuf cal = { 0 }, nal = { 0 }, wo = { 0 };
	struct plist a = { 0 }, b = { 0 };
	enum fw_status st = FW_OK;
	size_t mark = out->n, omark = offs ? offs->n : 0;
	const struct tspan none = { 0, 0 };
	/* Invalid UTF-8 becomes U+FFFD, as text reaching the reference would. */
	if (offs ? !text_spans(text, len, &clean, &cal) :
	    !sb_put_lossy(&clean, text, len) || !sb_put(&clean, NULL, 0)) {
		st = NOMEM(err);
		goto out;
	}
	struct piece whole = { clean.b, clean.n, -1, true, offs ? cal.v : NULL };
	if (!added_split(h, &whole, false, split_special, &a)) {
		st = NOMEM(err);
		goto out;
	}
	for (size_t i = 0; i < a.n && st == FW_OK; i++) {
		if (a.v[i].id >= 0) {
			if (!plist_push(&b, a.v[i].s, a.v[i].n, a.v[i].al, a.v[i].id, false))
				st = NOMEM(err);
			continue;
		}
		struct sbuf nz = { 0 };
		bool first = a.v[i].first;
		nal.n = 0;
		if (h->norm)
			st = norm_apply(h->norm, a.v[i].s, a.v[i].n, a.v[i].al, &nz, &nal, &first, err);
		else if (!sb_put(&nz, a.v[i].s, a.v[i].n) ||
			 (offs && !al_put(&nal, a.v[i].al, a.v[i].n)))
			st = NOMEM(err);
		struct piece q = { nz.b ? nz.b : "", nz.n, -1, first, offs ? nal.v : NULL };
		if (st == FW_OK && !added_split(h, &q, true, split_special, &b))
			st = NOMEM(err);
		sb_free(&nz);
	}
	if (st == FW_OK && h->pre)
		st = pre_apply(h->pre, &b, err);
	for (size_t k = 0; st == FW_OK && add_special && k < h->n_bos; k++)
		if (!ids_append(out, h->bos[k]) || (offs && !al_put(offs, &none, 1)))
			st = NOMEM(err);
	for (size_t i = 0; i < b.n && st == FW_OK; i++) {
		const struct piece *p = &b.v[i];
		wo.n = 0;
		if (p->id < 0)
			st = model_encode(h, cache, p->s, p->n, out, offs ? &wo : NULL, err);
		else if (!ids_append(out, p->id) || (offs && !al_to(&wo, 1, (struct tspan){ 0, p->n })))
			st = NOMEM(err);
		for (size_t k = 0; st == FW_OK && offs && k < wo.n; k++) {
			struct tspan sp = piece_span(p, wo.v[k].a, wo.v[k].b);
			/* an added token's text there is what it matched, with the
			 * spaces lstrip and rstrip took */
			if (p->id >= 0)
				trim_span(h, p->s, p->n, out->n == mark + 1, text, len, &sp);
			if (!al_put(offs, &sp, 1))
				st = NOMEM(err);
		}
	}
	for (size_t k = 0; st == FW_OK && add_special && k < h->n_eos; k++)
		if (!ids_append(out, h->eos[k]) || (offs && !al_put(offs, &none, 1)))
			st = NOMEM(err);
out:
	if (st != FW_OK) {
		out->n = mark;
		if (offs)
			offs->n = omark;
	}
	sb_free(&clean);
	al_free(&cal);
	al_free(&nal);
	al_free(&wo);
	plist_free(&a);
	plist_free(&b);
	return st;
}

enum fw_status hf_decode(const struct hf_tok *h, const int32_t *ids, size_t n, bool raw,
			 char **out, size_t *len, struct fw_err *err)
{
	struct sbuf *tk = fw_calloc(n + 1, sizeof(*tk));
	size_t m = 0;
	*out = NULL;
	bool ok = tk != NULL;
	for (size_t i = 0; ok && i < n; i++) {
		size_t sn;
		const char *s = vocab_str(&h->vocab, ids[i], &sn);
		if (!s) {
			for (size_t k = 0; k < m; k++)
				sb_free(&tk[k]);
			fw_free(tk);
			return fw_errorf(err, FW_ERR_INVALID, "tokenizer: token %lld at position %zu is "
					 "outside the vocabulary (%d)", (long long)ids[i], i, h->vocab.n);
		}
		ok = sb_put(&tk[m++], s, sn);
	}
	struct sbuf o = { 0 };
	if (ok && h->dec)
		ok = dec_apply(h->dec, tk, &m, raw);
	for (size_t i = 0; ok && i < m; i++)
		ok = (h->dec || i == 0 || sb_put(&o, " ", 1)) && sb_put(&o, tk[i].b, tk[i].n);
	ok = ok && sb_put(&o, NULL, 0);
	for (size_t i = 0; tk && i < n + 1; i++)
		sb_free(&tk[i]);
	fw_free(tk);
	if (!ok) {
		sb_free(&o);
		return NOMEM(err);
	}
	*out = o.b;
	if (len)
		*len = o.n;
	return FW_OK;
}
