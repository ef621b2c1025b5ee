/* tokenizer_pair.c - Hugging Face's Tokenizer.encode(a, b) (fw/tokenizer.h):
 * each text on its own, then truncation, the post-processor's template and
 * padding, as the reference's post_process does them. */
#include <string.h>

#include "tokenizer_hf.h"

#define NOMEM(err) fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory")

void fw_encoding_free(struct fw_encoding *e)
{
	if (!e)
		return;
	fw_free(e->ids);
	fw_free(e->type_ids);
	fw_free(e->attention_mask);
	fw_free(e->special_tokens_mask);
	fw_free(e->offsets);
	memset(e, 0, sizeof(*e));
}

static bool enc_reserve(struct fw_encoding *e, size_t need)
{
	if (need <= e->cap)
		return true;
	/* each array grows to the same capacity; e->cap moves once all have */
	size_t c[5] = { e->cap, e->cap, e->cap, e->cap, e->cap };
	bool ok = tok_grow((void **)&e->ids, &c[0], need, sizeof(*e->ids)) &&
		  tok_grow((void **)&e->type_ids, &c[1], need, sizeof(*e->type_ids)) &&
		  tok_grow((void **)&e->attention_mask, &c[2], need, 1) &&
		  tok_grow((void **)&e->special_tokens_mask, &c[3], need, 1) &&
		  tok_grow((void **)&e->offsets, &c[4], need, sizeof(*e->offsets));
	if (ok)
		e->cap = c[0];
	return ok;
}

/* Appends ids[0..n) with their offsets (NULL: (0, 0)). */
static bool enc_push(struct fw_encoding *e, const int32_t *ids, const struct tspan *off, size_t n,
		     uint32_t type, uint8_t attention, uint8_t special)
{
	if (!enc_reserve(e, e->n + n))
		return false;
	for (size_t i = 0; i < n; i++, e->n++) {
		e->offsets[e->n] = off ? (struct fw_token_span){ off[i].a, off[i].b } :
			(struct fw_token_span){ 0, 0 };
		e->ids[e->n] = ids[i];
		e->type_ids[e->n] = type;
		e->attention_mask[e->n] = attention;
		e->special_tokens_mask[e->n] = special;
	}
	return true;
}

/* A text's tokens and their offsets (o.n == b.n with offsets, else 0). */
struct seq {
	struct fw_token_buf b;
	struct albuf o;
};

/* Keeps n of the tokens: the first n, or the last with left. */
static void cut(struct seq *q, size_t n, bool left)
{
	struct fw_token_buf *b = &q->b;
	if (n >= b->n)
		return;
	if (left)
		memmove(b->ids, b->ids + (b->n - n), n * sizeof(int32_t));
	if (left && q->o.n)
		memmove(q->o.v, q->o.v + (q->o.n - n), n * sizeof(*q->o.v));
	if (q->o.n)
		q->o.n = n;
	b->n = n;
}

/* The reference's truncate_encodings (utils/truncation.rs), stride 0. */
static enum fw_status truncate(struct seq *a, struct seq *b, size_t max,
			       const struct fw_encode_options *o, struct fw_err *err)
{
	bool left = o->truncate_left;
	if (max == 0) {
		cut(a, 0, left);
		if (b)
			cut(b, 0, left);
		return FW_OK;
	}
	size_t total = a->b.n + (b ? b->b.n : 0);
	if (total <= max)
		return FW_OK;
	size_t remove = total - max;
	if (o->truncation == FW_TRUNCATE_LONGEST_FIRST) {
		if (!b) {
			cut(a, max, left);
			return FW_OK;
		}
		/* n1 the shorter: kept whole when the longer can take the rest,
		 * else both halves of max (the second gets the odd one) */
		size_t n1 = a->b.n, n2 = b->b.n;
		bool swap = n1 > n2;
		if (swap) {
			n1 = b->b.n;
			n2 = a->b.n;
		}
		n2 = n1 > max ? n1 : (n1 > max - n1 ? n1 : max - n1);
		if (n1 + n2 > max) {
			n1 = max / 2;
			n2 = n1 + max % 2;
		}
		cut(a, swap ? n2 : n1, left);
		cut(b, swap ? n1 : n2, left);
		return FW_OK;
	}
	bool first = o->truncation == FW_TRUNCATE_ONLY_FIRST;
	struct seq *t = first ? a : b;
	if (!t)
		return fw_errorf(err, FW_ERR_INVALID, "tokenizer: truncation only_second needs a "
				 "second text");
	if (t->b.n <= remove)
		return fw_errorf(err, FW_ERR_INVALID, "tokenizer: the %s text (%zu tokens) is too "
				 "short to cut the pair to max_length %zu with truncation %s",
				 first ? "first" : "second", t->b.n, max,
				 first ? "only_first" : "only_second");
	cut(t, t->b.n - remove, left);
	return FW_OK;
}

static int n_special(const struct hf_tmpl *tm)
{
	size_t n = 0;
	for (size_t i = 0; tm && i < tm->n; i++)
		n += tm->v[i].n_ids;
	return (int)n;
}

int fw_tokenizer_n_added(const struct fw_tokenizer *t, bool pair)
{
	const struct hf_tmpl *tm = NULL;
	struct fw_err e = { 0 };
	struct hf_tok *h = tok_hf(t);
	if (h && hf_template(h, pair, &tm, &e) != FW_OK)
		return -1;
	return n_special(tm);
}

static enum fw_status pad(struct fw_encoding *e, const struct fw_encode_options *o,
			  struct fw_err *err)
{
	size_t want = o->pad_length ? o->pad_length : e->n;
	if (o->pad_multiple && want % o->pad_multiple)
		want += o->pad_multiple - want % o->pad_multiple;
	if (want <= e->n)
		return FW_OK;
	size_t k = want - e->n, n = e->n;
	if (!enc_reserve(e, want))
		return NOMEM(err);
	if (o->pad_left) {
		memmove(e->ids + k, e->ids, n * sizeof(*e->ids));
		memmove(e->type_ids + k, e->type_ids, n * sizeof(*e->type_ids));
		memmove(e->attention_mask + k, e->attention_mask, n);
		memmove(e->special_tokens_mask + k, e->special_tokens_mask, n);
		memmove(e->offsets + k, e->offsets, n * sizeof(*e->offsets));
	}
	size_t at = o->pad_left ? 0 : n;
	for (size_t i = at; i < at + k; i++) {
		e->ids[i] = o->pad_id;
		e->type_ids[i] = o->pad_type_id;
		e->attention_mask[i] = 0;
		e->special_tokens_mask[i] = 1;
		e->offsets[i] = (struct fw_token_span){ 0, 0 };
	}
	e->n = want;
	return FW_OK;
}

enum fw_status fw_tokenizer_encode_pair(struct fw_tokenizer *t, const char *a, size_t na,
					const char *b, size_t nb,
					const struct fw_encode_options *o,
					struct fw_encoding *out, struct fw_err *err)
{
	static const struct fw_encode_options none;
	if (!t || !out || (!a && na))
		return fw_errorf(err, FW_ERR_INVALID, "tokenizer: encode_pair needs a tokenizer, text "
				 "and an output");
	o = o ? o : &none;
	struct hf_tok *h = tok_hf(t);
	struct fw_encode_options fo;
	if ((o->flags & FW_TOKENIZE_FILE_OPTIONS) && h) {
		fo = h->file;
		fo.flags = o->flags;
		o = &fo;
	} else if (o->flags & FW_TOKENIZE_FILE_OPTIONS) {
		fo = (struct fw_encode_options){ .flags = o->flags };
		o = &fo;
	}
	if (o->truncation > FW_TRUNCATE_ONLY_SECOND)
		return fw_errorf(err, FW_ERR_INVALID, "tokenizer: unknown truncation strategy %d",
				 (int)o->truncation);
	out->n = 0;
	bool add = o->flags & FW_TOKENIZE_ADD_SPECIAL;
	unsigned flags = o->flags & FW_TOKENIZE_SPLIT_SPECIAL;
	const struct hf_tmpl *tm = NULL;
	enum fw_status st = h ? hf_template(h, b != NULL, &tm, err) : FW_OK;
	if (st != FW_OK)
		return st;
	bool want = o->flags & FW_TOKENIZE_OFFSETS;
	struct seq q[2] = { 0 };
	st = tok_encode_offsets(t, a ? a : "", na, flags, &q[0].b, want ? &q[0].o : NULL, err);
	if (st == FW_OK && b)
		st = tok_encode_offsets(t, b, nb, flags, &q[1].b, want ? &q[1].o : NULL, err);
	size_t added = add ? (size_t)n_special(tm) : 0;
	if (st == FW_OK && o->truncation && o->max_length < added)
		st = fw_errorf(err, FW_ERR_INVALID, "tokenizer: max_length %zu is less than the %zu "
			       "special tokens the post-processor adds", o->max_length, added);
	if (st == FW_OK && o->truncation)
		st = truncate(&q[0], b ? &q[1] : NULL, o->max_length - added, o, err);
	for (int k = 0; st == FW_OK && want && h && k < 2; k++)
		hf_trim_offsets(h, q[k].b.ids, q[k].o.v, q[k].b.n, k ? b : a, k ? nb : na);
	const struct tspan *off[2] = { want ? q[0].o.v : NULL, want ? q[1].o.v : NULL };
	if (st == FW_OK && tm) {
		for (size_t i = 0; st == FW_OK && i < tm->n; i++) {
			const struct hf_tpiece *p = &tm->v[i];
			const struct seq *s = p->seq < 0 ? NULL : &q[p->seq];
			bool ok = !s ? !add || enc_push(out, p->ids, NULL, p->n_ids, p->type_id, 1, 1) :
				  enc_push(out, s->b.ids, off[p->seq], s->b.n, p->type_id, 1, 0);
			if (!ok)
				st = NOMEM(err);
		}
	} else if (st == FW_OK) {
		if (!enc_push(out, q[0].b.ids, off[0], q[0].b.n, 0, 1, 0) ||
		    (b && !enc_push(out, q[1].b.ids, off[1], q[1].b.n, 1, 1, 0)))
			st = NOMEM(err);
	}
	if (st == FW_OK && o->pad)
		st = pad(out, o, err);
	if (st != FW_OK)
		out->n = 0;
	for (int k = 0; k < 2; k++) {
		fw_token_buf_free(&q[k].b);
		al_free(&q[k].o);
	}
	return st;
}

void fw_tokenizer_file_options(const struct fw_tokenizer *t, struct fw_encode_options *o)
{
	struct hf_tok *h = tok_hf(t);
	*o = h ? h->file : (struct fw_encode_options){ 0 };
}
