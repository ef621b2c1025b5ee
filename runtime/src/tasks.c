/* tasks.c - encoder tasks: MLM, sequence and token classification rows,
 * BERT's dynamic masking, the padding mask and the metrics
 * (fw/runtime/tasks.h). */
#define _GNU_SOURCE             /* getline */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fw/runtime/sample.h"
#include "fw/runtime/tasks.h"
#include "fw/runtime/trainer.h"

enum fw_rt_task_kind fw_rt_task_of_head(enum fw_head_kind head)
{
	switch (head) {
	case FW_HEAD_MLM:
		return FW_RT_TASK_MLM;
	case FW_HEAD_CLASSIFY:
		return FW_RT_TASK_SEQ_CLS;
	case FW_HEAD_TOKEN_CLASSIFY:
		return FW_RT_TASK_TOKEN_CLS;
	case FW_HEAD_SEQ2SEQ:
		return FW_RT_TASK_SEQ2SEQ;
	default:
		return 0;
	}
}

/* --- special tokens and labels -------------------------------------------------------- */

enum fw_status fw_rt_specials_find(struct fw_tokenizer *tok, struct fw_rt_specials *sp,
				   struct fw_err *err)
{
	static const char *const bert[4] = { "[CLS]", "[SEP]", "[MASK]", "[PAD]" };
	static const char *const roberta[4] = { "<s>", "</s>", "<mask>", "<pad>" };
	int32_t *ids[4] = { &sp->cls, &sp->sep, &sp->mask, &sp->pad };
	const char *const *set = fw_tokenizer_find(tok, bert[0], strlen(bert[0])) < 0 &&
				 fw_tokenizer_find(tok, roberta[0], strlen(roberta[0])) >= 0 ?
				 roberta : bert;
	for (int i = 0; i < 4; i++) {
		*ids[i] = fw_tokenizer_find(tok, set[i], strlen(set[i]));
		if (*ids[i] < 0 && fw_tokenizer_add_special(tok, set[i], strlen(set[i]), ids[i],
							    err) != FW_OK)
			return err->status;
	}
	return FW_OK;
}

static bool labels_add(struct fw_rt_labels *l, const char *name, size_t len)
{
	char **v = realloc(l->names, sizeof(char *) * (size_t)(l->n + 1));
	if (!v)
		return false;
	l->names = v;
	if (!(v[l->n] = strndup(name, len)))
		return false;
	l->n++;
	return true;
}

static int labels_find(const struct fw_rt_labels *l, const char *name)
{
	for (int i = 0; i < l->n; i++)
		if (!strcmp(l->names[i], name))
			return i;
	return -1;
}

enum fw_status fw_rt_labels_parse(struct fw_rt_labels *l, const char *text, struct fw_err *err)
{
	memset(l, 0, sizeof(*l));
	for (const char *p = text; *p;) {
		size_t n = strcspn(p, ",");
		if (!n || labels_find(l, "") >= 0)
			return fw_errorf(err, FW_ERR_INVALID, "labels \"%s\": an empty label", text);
		if (!labels_add(l, p, n))
			return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
		if (labels_find(l, l->names[l->n - 1]) != l->n - 1)
			return fw_errorf(err, FW_ERR_INVALID, "labels \"%s\": \"%s\" twice", text,
					 l->names[l->n - 1]);
		p += n + (p[n] == ',');
	}
	return FW_OK;
}

char *fw_rt_labels_join(const struct fw_rt_labels *l)
{
	size_t len = 1;
	for (int i = 0; i < l->n; i++)
		len += strlen(l->names[i]) + 1;
	char *s = malloc(len), *p = s;
	for (int i = 0; s && i < l->n; i++)
		p += sprintf(p, "%s%s", i ? "," : "", l->names[i]);
	if (s)
		*p = 0;
	return s;
}

void fw_rt_labels_free(struct fw_rt_labels *l)
{
	for (int i = 0; i < l->n; i++)
		free(l->names[i]);
	free(l->names);
	memset(l, 0, sizeof(*l));
}

/* --- masking ----------------------------------------------------------------------------- */

static uint64_t mix(uint64_t x)        /* splitmix64's finaliser */
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static double unit(uint64_t h)          /* [0, 1) from 53 bits */
{
	return (double)(h >> 11) * (1.0 / 9007199254740992.0);
}

void fw_rt_mlm_mask(const struct fw_rt_mlm *c, uint64_t index, int32_t *tokens,
		    int32_t *targets, const int32_t *seg, int64_t n)
{
	uint64_t base = mix(mix(c->seed) ^ index);
	for (int64_t i = 0; i < n; i++) {
		targets[i] = -1;
		int32_t t = tokens[i];
		if ((seg && !seg[i]) || t == c->sp.cls || t == c->sp.sep || t == c->sp.pad)
			continue;
		uint64_t h = mix(base ^ (uint64_t)i);
		if (unit(h) >= c->prob)
			continue;
		targets[i] = t;
		double r = unit(mix(h ^ 0x6d6c6d));
		if (r < 0.8)
			tokens[i] = c->sp.mask;
		else if (r < 0.9)
			tokens[i] = (int32_t)(mix(h ^ 0x72616e64) % (uint64_t)c->vocab);
	}
}

/* --- rows ---------------------------------------------------------------------------------- */

struct builder {
	struct fw_rt_task *task;
	struct fw_tokenizer *tok;
	int64_t T;
	struct fw_rt_rows rows;
	int64_t cap, truncated, records;
	const char *path;
	/* seq2seq: pairs laid out, and span corruption's token stream */
	int64_t pairs;
	int32_t *stream;
	int64_t n_stream, cap_stream;
};

/* A new row of T positions, all padding; NULL when out of memory. */
static int64_t new_row(struct builder *b)
{
	int64_t T = b->T;
	if (b->rows.n == b->cap) {
		int64_t cap = b->cap ? 2 * b->cap : 64;
		int32_t *p[3] = { b->rows.tokens, b->rows.targets, b->rows.seg };
		for (int k = 0; k < 3; k++) {
			int32_t *q = realloc(p[k], sizeof(int32_t) * (size_t)(cap * T));
			if (!q)
				return -1;
			p[k] = q;
			if (k == 0)
				b->rows.tokens = q;
			else if (k == 1)
				b->rows.targets = q;
			else
				b->rows.seg = q;
		}
		b->cap = cap;
	}
	int64_t at = b->rows.n++ * T;
	for (int64_t i = 0; i < T; i++) {
		b->rows.tokens[at + i] = b->task->sp.pad;
		b->rows.targets[at + i] = -1;
		b->rows.seg[at + i] = 0;
	}
	return at;
}

static bool encode(struct builder *b, const char *text, struct fw_token_buf *out)
{
	struct fw_err e = { 0 };
	return fw_tokenizer_encode(b->tok, text, strlen(text), false, out, &e) == FW_OK;
}

/* One MLM document: rows of [CLS] up to T - 2 tokens [SEP]. */
static enum fw_status mlm_document(struct builder *b, const char *text, struct fw_err *err)
{
	struct fw_token_buf tb = { 0 };
	if (!encode(b, text, &tb))
		return fw_errorf(err, FW_ERR_NOMEM, "%s: cannot tokenize", b->path);
	int64_t per = b->T - 2;
	for (size_t i = 0; i < tb.n; i += (size_t)per) {
		int64_t at = new_row(b);
		if (at < 0) {
			fw_token_buf_free(&tb);
			return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
		}
		int64_t n = (int64_t)(tb.n - i) < per ? (int64_t)(tb.n - i) : per;
		b->rows.tokens[at] = b->task->sp.cls;
		for (int64_t k = 0; k < n; k++)
			b->rows.tokens[at + 1 + k] = tb.ids[i + (size_t)k];
		b->rows.tokens[at + 1 + n] = b->task->sp.sep;
		for (int64_t k = 0; k < n + 2; k++)
			b->rows.seg[at + k] = 1;
	}
	fw_token_buf_free(&tb);
	return FW_OK;
}

/* Span corruption: a document's tokens and </s> onto the stream (HF's T5
 * tokenizer ends each text with </s>; the stream is cut into rows later). */
static enum fw_status span_document(struct builder *b, const char *text, struct fw_err *err)
{
	struct fw_token_buf tb = { 0 };
	if (!encode(b, text, &tb))
		return fw_errorf(err, FW_ERR_NOMEM, "%s: cannot tokenize", b->path);
	if (b->n_stream + (int64_t)tb.n + 1 > b->cap_stream) {
		int64_t cap = 2 * (b->n_stream + (int64_t)tb.n + 1);
		int32_t *p = realloc(b->stream, sizeof(int32_t) * (size_t)cap);
		if (!p) {
			fw_token_buf_free(&tb);
			return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
		}
		b->stream = p;
		b->cap_stream = cap;
	}
	for (size_t i = 0; i < tb.n; i++)
		b->stream[b->n_stream++] = tb.ids[i];
	b->stream[b->n_stream++] = b->task->s2s.eos;
	fw_token_buf_free(&tb);
	return FW_OK;
}

/* A document of the task: MLM rows, or span corruption's stream. */
static enum fw_status document(struct builder *b, const char *text, struct fw_err *err)
{
	if (b->task->kind == FW_RT_TASK_SEQ2SEQ)
		return span_document(b, text, err);
	return mlm_document(b, text, err);
}

/* ids + </s>, cut to T tokens (the last kept token replaced by </s>). */
static int64_t with_eos(struct builder *b, const struct fw_token_buf *tb, int64_t T, int32_t *out)
{
	int64_t n = (int64_t)tb->n + 1 > T ? T - 1 : (int64_t)tb->n;
	for (int64_t i = 0; i < n; i++)
		out[i] = tb->ids[i];
	out[n] = b->task->s2s.eos;
	return n + 1;
}

/* {"input", "target"}: one row; {"text"}: a span-corruption document. */
static enum fw_status seq2seq_record(struct builder *b, json_t *r, const char **why,
				     struct fw_err *err)
{
	json_t *in = json_object_get(r, "input"), *out = json_object_get(r, "target");
	json_t *text = json_object_get(r, "text");
	if (!in && !out && json_is_string(text))
		return span_document(b, json_string_value(text), err);
	if (!json_is_string(in) || !json_is_string(out)) {
		*why = "'input' and 'target' must both be strings (or 'text' alone for span "
		       "corruption)";
		return FW_OK;
	}
	struct fw_token_buf ti = { 0 }, to = { 0 };
	int32_t *ids = malloc(sizeof(int32_t) * (size_t)b->T);
	int64_t at = ids ? new_row(b) : -1;
	if (at < 0 || !encode(b, json_string_value(in), &ti) ||
	    !encode(b, json_string_value(out), &to)) {
		free(ids);
		fw_token_buf_free(&ti);
		fw_token_buf_free(&to);
		return fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", b->path);
	}
	const struct fw_rt_seq2seq *c = &b->task->s2s;
	int64_t Te = c->enc_len > 0 ? c->enc_len : b->T, Td = c->dec_len > 0 ? c->dec_len : b->T;
	b->truncated += (int64_t)ti.n + 1 > Te || (int64_t)to.n + 1 > Td;
	int64_t n = with_eos(b, &ti, Te, ids);
	for (int64_t i = 0; i < n; i++)
		b->rows.seg[at + i] = ids[i] + 1;
	n = with_eos(b, &to, Td, ids);
	for (int64_t i = 0; i < n; i++) {
		b->rows.targets[at + i] = ids[i];
		b->rows.tokens[at + i] = i ? ids[i - 1] : b->task->s2s.start;
	}
	b->pairs++;
	free(ids);
	fw_token_buf_free(&ti);
	fw_token_buf_free(&to);
	return FW_OK;
}

/* The stream cut into rows of raw_len tokens (seg 1), the rest dropped, as
 * run_t5_mlm_flax's group_texts; tokens past T go to the row's targets. */
static enum fw_status span_rows(struct builder *b, const char *label, struct fw_err *err)
{
	int64_t L = b->task->s2s.raw_len;
	if (L < 2 || L > 2 * b->T)
		return fw_errorf(err, FW_ERR_INVALID, "--seq-length %lld is too short for span "
				 "corruption at this noise density and span length",
				 (long long)b->T);
	if (b->pairs)
		return fw_errorf(err, FW_ERR_INVALID, "--%s: text for span corruption and "
				 "{\"input\", \"target\"} records cannot share a data set", label);
	for (int64_t k = 0; k + L <= b->n_stream; k += L) {
		int64_t at = new_row(b);
		if (at < 0)
			return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
		for (int64_t i = 0; i < L; i++) {     /* past T: in targets (L < 2T) */
			if (i < b->T)
				b->rows.tokens[at + i] = b->stream[k + i];
			else
				b->rows.targets[at + i - b->T] = b->stream[k + i];
		}
		for (int64_t i = 0; i < b->T; i++)
			b->rows.seg[at + i] = 1;
	}
	return FW_OK;
}

/* A text file: documents separated by blank lines (or lines of "%", as
 * fortune files). */
static enum fw_status mlm_text(struct builder *b, struct fw_err *err)
{
	size_t len;
	char *text = fw_rt_read_file(b->path, &len, err);
	if (!text)
		return err->status;
	enum fw_status st = FW_OK;
	char *doc = text;
	for (char *p = text; st == FW_OK && p <= text + len;) {
		char *end = strchr(p, '\n');
		if (!end)
			end = text + len;
		bool sep = strspn(p, " \t\r") == (size_t)(end - p) ||
			   (end - p == 1 && *p == '%');
		bool last = end == text + len;
		if (sep || last) {
			char *stop = sep ? p : end;
			char keep = *stop;
			*stop = 0;
			if (strspn(doc, " \t\r\n") < strlen(doc))
				st = document(b, doc, err);
			*stop = keep;
			doc = end + 1;
		}
		if (last)
			break;
		p = end + 1;
	}
	free(text);
	return st;
}

/* The label of a record as text: a string, or an integer's digits. */
static bool label_text(json_t *v, char *buf, size_t len)
{
	if (json_is_string(v))
		return snprintf(buf, len, "%s", json_string_value(v)) < (int)len &&
		       *json_string_value(v) && !strchr(buf, ',');
	if (json_is_integer(v))
		return snprintf(buf, len, "%lld", (long long)json_integer_value(v)) < (int)len;
	return false;
}

/* The id of label v: looked up, or added when the list is not fixed. -1
 * with err set for a label outside a fixed list, -2 (why set) for a value
 * that is no label. */
static int label_id(struct builder *b, json_t *v, long line, const char **why, struct fw_err *err)
{
	char name[256];
	if (!label_text(v, name, sizeof(name))) {
		*why = "the label is not a non-empty string (without commas) or an integer";
		return -2;
	}
	struct fw_rt_labels *l = b->task->labels;
	int id = labels_find(l, name);
	if (id >= 0)
		return id;
	if (b->task->fixed) {
		char *all = fw_rt_labels_join(l);
		fw_errorf(err, FW_ERR_INVALID, "%s:%ld: label \"%s\" is not in the model's label list "
			  "(%s)", b->path, line, name, all ? all : "?");
		free(all);
		return -1;
	}
	if (!labels_add(l, name, strlen(name))) {
		fw_errorf(err, FW_ERR_NOMEM, "out of memory");
		return -1;
	}
	return l->n - 1;
}

/* A classification row from the tokenizer's own post-processor (BERT's,
 * RoBERTa's or a template): Hugging Face's tokenizer(text, text_pair,
 * truncation="longest_first", max_length=T); seg is the type id + 1. */
static enum fw_status seq_template(struct builder *b, const char *sa, const char *sb, int id,
				   long line, struct fw_err *err)
{
	struct fw_encode_options o = { .flags = FW_TOKENIZE_ADD_SPECIAL };
	struct fw_encoding e = { 0 };
	enum fw_status st = fw_tokenizer_encode_pair(b->tok, sa, strlen(sa), sb, sb ? strlen(sb) : 0,
						     &o, &e, err);
	if (st == FW_OK && (int64_t)e.n > b->T) {
		b->truncated++;
		o.truncation = FW_TRUNCATE_LONGEST_FIRST;
		o.max_length = (size_t)b->T;
		st = fw_tokenizer_encode_pair(b->tok, sa, strlen(sa), sb, sb ? strlen(sb) : 0, &o, &e,
					      err);
	}
	int64_t at = st == FW_OK ? new_row(b) : -1;
	if (st == FW_OK && at < 0)
		st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	for (size_t k = 0; st == FW_OK && k < e.n; k++) {
		b->rows.tokens[at + (int64_t)k] = e.ids[k];
		b->rows.seg[at + (int64_t)k] = (int32_t)e.type_ids[k] + 1;
		if (e.type_ids[k] > 1)
			st = fw_errorf(err, FW_ERR_UNSUPPORTED, "the tokenizer's post-processor gives "
				       "type id %u (BERT's token types are 0 and 1)", e.type_ids[k]);
	}
	if (st == FW_OK) {
		b->rows.targets[at] = id;
	} else if (st != FW_ERR_NOMEM) {
		char why[sizeof(err->msg)];
		snprintf(why, sizeof(why), "%s", err->msg);
		fw_errorf(err, st, "%s:%ld: %s", b->path, line, why);
	}
	fw_encoding_free(&e);
	return st;
}

static enum fw_status seq_record(struct builder *b, json_t *r, long line, const char **why,
				 struct fw_err *err)
{
	json_t *text = json_object_get(r, "text"), *pair = json_object_get(r, "text_pair");
	json_t *label = json_object_get(r, "label");
	if (!json_is_string(text) || (pair && !json_is_string(pair))) {
		*why = !json_is_string(text) ? "'text' missing or not a string" :
					       "'text_pair' is not a string";
		return FW_OK;
	}
	int id = -1;
	if (label && (id = label_id(b, label, line, why, err)) < 0)
		return id == -1 ? err->status : FW_OK;
	const char *sa = json_string_value(text), *sb = pair ? json_string_value(pair) : NULL;
	if (fw_tokenizer_n_added(b->tok, pair != NULL) > 0)
		return seq_template(b, sa, sb, id, line, err);
	struct fw_token_buf ta = { 0 }, tb = { 0 };
	if (!encode(b, sa, &ta) || (pair && !encode(b, sb, &tb))) {
		fw_token_buf_free(&ta);
		fw_token_buf_free(&tb);
		return fw_errorf(err, FW_ERR_NOMEM, "%s:%ld: cannot tokenize", b->path, line);
	}
	/* Hugging Face's longest_first truncation to T - 2 (or T - 3 with a pair) */
	int64_t room = b->T - (pair ? 3 : 2), na = (int64_t)ta.n, nb = (int64_t)tb.n;
	if (na + nb > room)
		b->truncated++;
	while (na + nb > room) {
		if (na > nb)
			na--;
		else
			nb--;
	}
	int64_t at = new_row(b);
	if (at < 0) {
		fw_token_buf_free(&ta);
		fw_token_buf_free(&tb);
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	}
	int32_t *tk = b->rows.tokens + at, *sg = b->rows.seg + at;
	int64_t p = 0;
	tk[p] = b->task->sp.cls;
	sg[p++] = 1;
	for (int64_t k = 0; k < na; k++, p++)
		tk[p] = ta.ids[k], sg[p] = 1;
	tk[p] = b->task->sp.sep;
	sg[p++] = 1;
	for (int64_t k = 0; pair && k < nb; k++, p++)
		tk[p] = tb.ids[k], sg[p] = 2;
	if (pair) {
		tk[p] = b->task->sp.sep;
		sg[p++] = 2;
	}
	b->rows.targets[at] = id;
	fw_token_buf_free(&ta);
	fw_token_buf_free(&tb);
	return FW_OK;
}

static enum fw_status token_record(struct builder *b, json_t *r, long line, const char **why,
				   struct fw_err *err)
{
	json_t *words = json_object_get(r, "tokens"), *labels = json_object_get(r, "labels");
	if (!json_is_array(words) || (labels && !json_is_array(labels))) {
		*why = !json_is_array(words) ? "'tokens' missing or not an array" :
					       "'labels' is not an array";
		return FW_OK;
	}
	if (labels && json_array_size(labels) != json_array_size(words))
		return fw_errorf(err, FW_ERR_INVALID, "%s:%ld: %zu tokens but %zu labels", b->path,
				 line, json_array_size(words), json_array_size(labels));
	int64_t at = new_row(b);
	if (at < 0)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	int32_t *tk = b->rows.tokens + at, *tg = b->rows.targets + at, *sg = b->rows.seg + at;
	int64_t p = 0;
	tk[p] = b->task->sp.cls;
	sg[p++] = 1;
	size_t i;
	json_t *w;
	bool cut = false;
	json_array_foreach(words, i, w) {
		if (!json_is_string(w)) {
			b->rows.n--;
			*why = "a token is not a string";
			return FW_OK;
		}
		int id = -1;
		if (labels && (id = label_id(b, json_array_get(labels, i), line, why, err)) < 0) {
			b->rows.n--;
			return id == -1 ? err->status : FW_OK;
		}
		struct fw_token_buf tb = { 0 };
		if (!encode(b, json_string_value(w), &tb))
			return fw_errorf(err, FW_ERR_NOMEM, "%s:%ld: cannot tokenize", b->path, line);
		for (size_t k = 0; k < tb.n; k++) {
			if (p >= b->T - 1) {
				cut = true;
				break;
			}
			tk[p] = tb.ids[k];
			/* the label on the first sub-token */
			tg[p] = k == 0 ? (labels ? id : FW_RT_WORD_START) : -1;
			sg[p++] = 1;
		}
		fw_token_buf_free(&tb);
	}
	tk[p] = b->task->sp.sep;
	sg[p] = 1;
	b->truncated += cut;
	return FW_OK;
}

static enum fw_status task_record(void *arg, const void *rec, long line, const char **why,
				  struct fw_err *err)
{
	struct builder *b = arg;
	json_t *r = (json_t *)rec;
	b->records++;
	if (!json_is_object(r)) {
		*why = "not a JSON object";
		return FW_OK;
	}
	if (b->task->kind == FW_RT_TASK_SEQ_CLS)
		return seq_record(b, r, line, why, err);
	if (b->task->kind == FW_RT_TASK_TOKEN_CLS)
		return token_record(b, r, line, why, err);
	if (b->task->kind == FW_RT_TASK_SEQ2SEQ)
		return seq2seq_record(b, r, why, err);
	json_t *text = json_object_get(r, "text");
	if (!json_is_string(text)) {
		*why = "'text' missing or not a string";
		return FW_OK;
	}
	return mlm_document(b, json_string_value(text), err);
}

static bool is_jsonl(const char *path)
{
	size_t n = strlen(path);
	return (n > 6 && !strcmp(path + n - 6, ".jsonl")) || (n > 5 && !strcmp(path + n - 5, ".json"));
}

/* Label ids in sorted order of their names (numerically when all are
 * integers), so that a list collected from data does not depend on the
 * order of records. */
static enum fw_status sort_labels(struct builder *b, struct fw_err *err)
{
	struct fw_rt_labels *l = b->task->labels;
	int n = l->n;
	bool numeric = true;
	for (int i = 0; i < n; i++) {
		char *end;
		strtoll(l->names[i], &end, 10);
		numeric = numeric && *end == 0;
	}
	int *order = malloc(sizeof(int) * (size_t)n), *to = malloc(sizeof(int) * (size_t)n);
	char **names = malloc(sizeof(char *) * (size_t)n);
	if (n && (!order || !to || !names)) {
		free(order);
		free(to);
		free(names);
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	}
	for (int i = 0; i < n; i++)
		order[i] = i;
	for (int i = 1; i < n; i++)         /* insertion sort: label lists are short */
		for (int j = i; j > 0; j--) {
			const char *x = l->names[order[j - 1]], *y = l->names[order[j]];
			bool gt = numeric ? strtoll(x, NULL, 10) > strtoll(y, NULL, 10) :
					    strcmp(x, y) > 0;
			if (!gt)
				break;
			int t = order[j];
			order[j] = order[j - 1];
			order[j - 1] = t;
		}
	for (int i = 0; i < n; i++) {
		to[order[i]] = i;
		names[i] = l->names[order[i]];
	}
	for (int i = 0; i < n; i++)
		l->names[i] = names[i];
	int64_t all = b->rows.n * b->T;
	for (int64_t i = 0; i < all; i++)
		if (b->rows.targets[i] >= 0)
			b->rows.targets[i] = to[b->rows.targets[i]];
	free(order);
	free(to);
	free(names);
	return FW_OK;
}

enum fw_status fw_rt_task_open(struct fw_rt_loader *l, struct fw_rt_task *task, const char *paths,
			       const char *label, struct fw_tokenizer *tok, int64_t B, int64_t T,
			       bool shuffle, uint64_t seed, int64_t max_bad,
			       const struct fw_rt_log *log, struct fw_err *err)
{
	memset(l, 0, sizeof(*l));
	if (!tok)
		return fw_errorf(err, FW_ERR_INVALID, "--%s: an encoder task needs a tokenizer "
				 "(--tokenizer, or a checkpoint that stores one)", label);
	bool s2s = task->kind == FW_RT_TASK_SEQ2SEQ;
	if (T < 4)
		return fw_errorf(err, FW_ERR_INVALID, "--seq-length %lld is too short for %s",
				 (long long)T, s2s ? "a sequence and </s>" : "[CLS] and [SEP] around text");
	bool cls = task->kind == FW_RT_TASK_SEQ_CLS || task->kind == FW_RT_TASK_TOKEN_CLS;
	bool sorted_before = cls && task->labels && task->labels->n == 0 && !task->fixed;
	struct builder b = { .task = task, .tok = tok, .T = T };
	char *copy = strdup(paths);
	if (!copy)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	enum fw_status st = FW_OK;
	int64_t bad = 0;
	char *save = NULL;
	for (char *p = strtok_r(copy, ",", &save); p && st == FW_OK; p = strtok_r(NULL, ",", &save)) {
		b.path = p;
		if ((st = fw_rt_refuse_compressed(p, err)) != FW_OK)
			break;
		if (is_jsonl(p))
			st = fw_rt_jsonl_foreach(p, max_bad, &bad, task_record, &b, log, err);
		else if (task->kind == FW_RT_TASK_MLM || s2s)
			st = mlm_text(&b, err);
		else
			st = fw_errorf(err, FW_ERR_INVALID, "--%s: %s: classification data must be JSONL "
				       "(.jsonl) records", label, p);
	}
	if (st == FW_OK && sorted_before)
		st = sort_labels(&b, err);
	bool span = s2s && b.n_stream > 0;
	if (st == FW_OK && span)
		st = span_rows(&b, label, err);
	if (st == FW_OK && b.rows.n == 0)
		st = fw_errorf(err, FW_ERR_FORMAT, "--%s: no usable records in %s", label, paths);
	if (st == FW_OK) {
		static const char *const kinds[] = { "", "masked-LM", "classification",
						     "token-classification", "seq2seq" };
		fw_rt_logf(log, FW_LOG_INFO, "%s: %lld %s rows of %lld (%lld records, %lld bad, %lld "
			   "truncated)", label, (long long)b.rows.n,
			   span ? "span-corruption" : kinds[task->kind], (long long)T,
			   (long long)b.records, (long long)bad, (long long)b.truncated);
		b.rows.T = T;
		st = fw_rt_loader_from_rows(l, &b.rows, B, shuffle, seed, err);
		memset(&b.rows, 0, sizeof(b.rows));
		if (task->kind == FW_RT_TASK_MLM)
			l->mlm = &task->mlm;
		if (span)
			l->span = &task->s2s;
	}
	free(b.stream);
	free(b.rows.tokens);
	free(b.rows.targets);
	free(b.rows.seg);
	free(copy);
	return st;
}

/* --- masks --------------------------------------------------------------------------------- */

void fw_rt_encoder_masks(const int32_t *seg, int64_t B, int64_t T, int32_t *positions,
			 float *bias, int32_t *token_types, float *pool_weights)
{
	for (int64_t b = 0; b < B; b++) {
		const int32_t *s = seg + b * T;
		int64_t real = 0;
		for (int64_t k = 0; k < T; k++)
			real += s[k] != 0;
		for (int64_t q = 0; q < T; q++) {
			if (positions)
				positions[b * T + q] = (int32_t)q;
			if (token_types)
				token_types[b * T + q] = s[q] == 2;
			if (pool_weights)
				pool_weights[b * T + q] = s[q] && real ? 1.0f / (float)real : 0.0f;
			float *row = bias ? bias + (b * T + q) * T : NULL;
			for (int64_t k = 0; row && k < T; k++)
				row[k] = s[k] ? 0.0f : -INFINITY;
		}
	}
}

void fw_rt_encoder_fill(struct fw_model *m, const int32_t *seg)
{
	if (m->enc_tokens) {
		fw_rt_seq2seq_fill(m, seg);
		return;
	}
	struct fw_tensor *types = fw_ctx_find(m->ctx, "token_types");
	struct fw_tensor *pool = fw_ctx_find(m->ctx, "pool_weights");
	fw_rt_encoder_masks(seg, m->batch, m->seq_len, m->positions ? m->positions->data : NULL,
			    m->attn_bias ? m->attn_bias->data : NULL, types ? types->data : NULL,
			    pool ? pool->data : NULL);
}

/* --- metrics ------------------------------------------------------------------------------- */

enum fw_status fw_rt_task_evaluate(const struct fw_rt_eval *e, struct fw_rt_task_metrics *out,
				   struct fw_err *err)
{
	struct fw_model *m = e->m;
	enum fw_rt_task_kind kind = fw_rt_task_of_head(m->head);
	memset(out, 0, sizeof(*out));
	out->loss = out->accuracy = out->macro_f1 = NAN;
	if (!kind || !m->logits || !e->data || e->n <= 0)
		return FW_OK;
	int64_t B = m->batch, T = m->seq_len, V = m->logits->ne[m->logits->ndim - 1];
	/* MLM and seq2seq: token accuracy over the targets, no confusion matrix */
	int L = kind == FW_RT_TASK_MLM || kind == FW_RT_TASK_SEQ2SEQ ? 0 : (int)V;
	if (L && !(out->confusion = calloc((size_t)L * (size_t)L, sizeof(int64_t))))
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	out->n_labels = L;
	fw_rt_loader_seek(e->data, 0, 0);
	const int32_t *tg = m->targets->data;
	double loss = 0;
	int64_t right = 0;
	for (int64_t it = 0; it < e->n; it++) {
		fw_rt_batch_next(e->data, m, e->seg);
		if (fw_graph_forward(e->g) != FW_OK) {
			free(out->confusion);
			out->confusion = NULL;
			return fw_errorf(err, FW_ERR_INTERNAL, "eval: %s", fw_ctx_err(m->ctx)->msg);
		}
		const float *lg = m->logits->data;
		int64_t here = 0;
		for (int64_t b = 0; b < B; b++)
			for (int64_t t = 0; t < (kind == FW_RT_TASK_SEQ_CLS ? 1 : T); t++) {
				int32_t y = tg[b * T + t];
				if (y < 0 || y >= V)
					continue;
				int64_t row = kind == FW_RT_TASK_SEQ_CLS ? b : b * T + t;
				int64_t p = fw_rt_argmax(lg + row * V, V);
				here++;
				right += p == y;
				if (L)
					out->confusion[(int64_t)y * L + p]++;
			}
		if (here)
			loss += *(float *)m->loss->data * (double)here;
		out->targets += here;
	}
	if (!out->targets)
		return FW_OK;
	out->loss = loss / (double)out->targets;
	out->accuracy = (double)right / (double)out->targets;
	if (!L)
		return FW_OK;
	double f1 = 0;
	int present = 0;
	for (int c = 0; c < L; c++) {     /* sklearn's macro F1 over present labels */
		int64_t tp = out->confusion[(int64_t)c * L + c], row = 0, col = 0;
		for (int k = 0; k < L; k++) {
			row += out->confusion[(int64_t)c * L + k];
			col += out->confusion[(int64_t)k * L + c];
		}
		if (!row && !col)
			continue;
		present++;
		f1 += row + col ? 2.0 * (double)tp / (double)(row + col) : 0.0;
	}
	out->macro_f1 = present ? f1 / present : NAN;
	return FW_OK;
}
