/* tokenizer_hf_text.c - normalizers and pre-tokenizers of tokenizer.json (tokenizer_hf.h).
 *
 * Unicode properties, normalization and case mapping come from ICU; regular
 * expressions from PCRE2. Hugging Face compiles its patterns with Oniguruma,
 * whose \s is [\t-\r\x{85}\p{Z}] and \w is [\p{L}\p{M}\p{Nd}\p{Pc}]: patterns
 * are rewritten to those classes before PCRE2 sees them.
 */
#include <stdio.h>
#include <string.h>

#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include "tokenizer_hf.h"

/* --- strings -------------------------------------------------------------------- */

bool sb_grow(struct sbuf *s, size_t n)
{
	return tok_grow((void **)&s->b, &s->cap, s->n + n + 1, 1);
}

bool sb_cp_slow(struct sbuf *s, uint32_t cp)
{
	char u[4];
	size_t k;
	if (cp < 0x800) {
		u[0] = (char)(0xC0 | cp >> 6);
		u[1] = (char)(0x80 | (cp & 0x3F));
		k = 2;
	} else if (cp < 0x10000) {
		u[0] = (char)(0xE0 | cp >> 12);
		u[1] = (char)(0x80 | (cp >> 6 & 0x3F));
		u[2] = (char)(0x80 | (cp & 0x3F));
		k = 3;
	} else {
		u[0] = (char)(0xF0 | cp >> 18);
		u[1] = (char)(0x80 | (cp >> 12 & 0x3F));
		u[2] = (char)(0x80 | (cp >> 6 & 0x3F));
		u[3] = (char)(0x80 | (cp & 0x3F));
		k = 4;
	}
	return sb_put(s, u, k);
}

void sb_free(struct sbuf *s)
{
	fw_free(s->b);
	s->b = NULL;
	s->n = s->cap = 0;
}

uint32_t u8_next_slow(const char *s, size_t n, size_t *i)
{
	const unsigned char *u = (const unsigned char *)s + *i;
	size_t k = u8_len(u[0]);
	if (*i + k > n)
		k = 1;
	uint32_t cp = k == 1 ? u[0] : k == 2 ? (u[0] & 0x1Fu) : k == 3 ? (u[0] & 0x0Fu) : (u[0] & 7u);
	for (size_t j = 1; j < k; j++)
		cp = cp << 6 | (u[j] & 0x3Fu);
	*i += k;
	return cp;
}

struct pblock {
	struct pblock *next;            /* older blocks */
	size_t used, cap;
	char b[];
};

/* Bytes of a piece of n bytes in a block (blocks hold 8-aligned pieces). */
static size_t room_of(size_t n, bool al)
{
	size_t b = (n + 8) & ~(size_t)7;
	return al ? b + n * sizeof(struct tspan) : b;
}

char *plist_room(struct plist *l, size_t n, bool al)
{
	struct pblock *k = l->blk;
	size_t need = room_of(n, al);
	if (k && k->cap - k->used >= need)
		return k->b + k->used;
	size_t cap = need > 65536 ? need : 65536;
	for (struct pblock **q = &l->blk; *q; q = &(*q)->next)    /* a cleared block that fits */
		if ((*q)->used == 0 && (*q)->cap >= cap) {
			struct pblock *f = *q;
			*q = f->next;
			f->next = l->blk;
			l->blk = f;
			return f->b;
		}
	if (!(k = fw_malloc(sizeof(*k) + cap)))
		return NULL;
	*k = (struct pblock){ l->blk, 0, cap };
	l->blk = k;
	return k->b;
}

bool plist_push(struct plist *l, const char *s, size_t n, const struct tspan *al, int32_t id,
		bool first)
{
	if (!tok_grow((void **)&l->v, &l->cap, l->n + 1, sizeof(*l->v)))
		return false;
	char *c = plist_room(l, n, al != NULL);
	if (!c)
		return false;
	if (c != s)
		memmove(c, s, n);
	c[n] = '\0';
	struct tspan *ca = NULL;
	if (al) {
		ca = (struct tspan *)(void *)(c + room_of(n, false));
		memmove(ca, al, n * sizeof(*ca));
	}
	l->blk->used += room_of(n, al != NULL);
	l->v[l->n++] = (struct piece){ c, n, id, first, ca };
	return true;
}

bool al_to(struct albuf *a, size_t n, struct tspan sp)
{
	if (n > a->n && !tok_grow((void **)&a->v, &a->cap, n, sizeof(*a->v)))
		return false;
	while (a->n < n)
		a->v[a->n++] = sp;
	return true;
}

bool al_put(struct albuf *a, const struct tspan *v, size_t n)
{
	if (!tok_grow((void **)&a->v, &a->cap, a->n + n, sizeof(*a->v)))
		return false;
	if (n)
		memcpy(a->v + a->n, v, n * sizeof(*v));
	a->n += n;
	return true;
}

void al_free(struct albuf *a)
{
	fw_free(a->v);
	memset(a, 0, sizeof(*a));
}

void plist_clear(struct plist *l)
{
	for (struct pblock *k = l->blk; k; k = k->next)
		k->used = 0;
	l->n = 0;
}

void plist_free(struct plist *l)
{
	while (l->blk) {
		struct pblock *k = l->blk;
		l->blk = k->next;
		fw_free(k);
	}
	fw_free(l->v);
	l->v = NULL;
	l->n = l->cap = 0;
}

size_t u8_valid(const unsigned char *s, size_t n, size_t *bad)
{
	size_t i = 0;
	while (i < n) {
		if (i + 8 <= n) {
			uint64_t w;
			memcpy(&w, s + i, 8);
			if (!(w & 0x8080808080808080ull)) {
				i += 8;
				continue;
			}
		}
		unsigned c = s[i];
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t k = 0, j = 1;
		unsigned lo = 0x80, hi = 0xBF;
		if (c >= 0xC2 && c <= 0xDF)
			k = 1;
		else if (c == 0xE0)
			k = 2, lo = 0xA0;
		else if (c == 0xED)
			k = 2, hi = 0x9F;
		else if (c >= 0xE1 && c <= 0xEF)
			k = 2;
		else if (c == 0xF0)
			k = 3, lo = 0x90;
		else if (c == 0xF4)
			k = 3, hi = 0x8F;
		else if (c >= 0xF1 && c <= 0xF3)
			k = 3;
		/* j: how many bytes of the sequence are well-formed */
		while (k && j <= k && i + j < n && s[i + j] >= (j == 1 ? lo : 0x80) &&
		       s[i + j] <= (j == 1 ? hi : 0xBF))
			j++;
		if (!k || j <= k) {
			if (bad)
				*bad = j;
			return i;
		}
		i += k + 1;
	}
	return n;
}

/* Appends s[0..n) with each maximal ill-formed UTF-8 subpart as U+FFFD. */
bool sb_put_lossy(struct sbuf *out, const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	for (size_t i = 0; i < n;) {
		size_t bad = 1, v = u8_valid(u + i, n - i, &bad);
		if (!sb_put(out, s + i, v))
			return false;
		i += v;
		if (i < n) {
			if (!sb_cp(out, 0xFFFD))
				return false;
			i += bad;
		}
	}
	return true;
}

/* --- Unicode properties (Rust's char methods, through ICU) ---------------------- */

bool u_whitespace(uint32_t cp)
{
	return cp == ' ' || (cp >= 9 && cp <= 13) || (cp >= 0x80 && u_isUWhiteSpace((UChar32)cp));
}

bool u_alnum(uint32_t cp)
{
	return u_isUAlphabetic((UChar32)cp) || (U_GET_GC_MASK((UChar32)cp) & U_GC_N_MASK);
}

static bool u_numeric(uint32_t cp)
{
	return U_GET_GC_MASK((UChar32)cp) & U_GC_N_MASK;
}

/* Assigned before Unicode version `before`. The reference takes punctuation,
 * nonspacing marks and format characters from unicode_categories (Unicode
 * 8.0 tables) and StripAccents' marks from unicode-normalization-alignments
 * (9.0): a character assigned later is not one of those there. */
static bool u_old(uint32_t cp, int before)
{
	UVersionInfo v;
	u_charAge((UChar32)cp, v);
	return v[0] < before;
}

/* Rust's is_ascii_punctuation() || unicode_categories' is_punctuation(). */
static bool u_punct(uint32_t cp)
{
	if (cp < 0x80)
		return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) ||
		       (cp >= 123 && cp <= 126);
	return (U_GET_GC_MASK((UChar32)cp) & U_GC_P_MASK) && u_old(cp, 9);
}

/* --- regular expressions ----------------------------------------------------------- */

#define ONIG_S "\\t-\\r\\x{85}\\p{Z}"
#define ONIG_W "\\p{L}\\p{M}\\p{Nd}\\p{Pc}"

struct hf_re *re_new(const char *pat, size_t n, bool literal, const char *where,
		     struct fw_err *err)
{
	struct sbuf p = { 0 };
	bool ok = true, in_class = false;
	for (size_t i = 0; ok && i < n; i++) {
		char c = pat[i];
		if (literal) {          /* every ASCII non-alphanumeric escaped */
			unsigned char u = (unsigned char)c;
			bool esc = u < 0x80 && !((u >= '0' && u <= '9') || ((u | 32) >= 'a' && (u | 32) <= 'z'));
			ok = (!esc || sb_put(&p, "\\", 1)) && sb_put(&p, &c, 1);
			continue;
		}
		if (c == '\\' && i + 1 < n) {
			char d = pat[++i];
			if (d == 's' || d == 'S' || d == 'w' || d == 'W') {
				const char *cls = d == 's' || d == 'S' ? ONIG_S : ONIG_W;
				bool neg = d == 'S' || d == 'W';
				if (in_class && !neg)
					ok = sb_put(&p, cls, strlen(cls));
				else if (in_class)      /* \S inside a class: keep PCRE2's */
					ok = sb_put(&p, "\\", 1) && sb_put(&p, &d, 1);
				else
					ok = sb_put(&p, neg ? "[^" : "[", neg ? 2 : 1) &&
					     sb_put(&p, cls, strlen(cls)) && sb_put(&p, "]", 1);
			} else {
				ok = sb_put(&p, "\\", 1) && sb_put(&p, &d, 1);
			}
			continue;
		}
		if (c == '[' && !in_class) {
			in_class = true;
			ok = sb_put(&p, "[", 1);
			if (i + 1 < n && pat[i + 1] == '^')
				ok = ok && sb_put(&p, "^", 1), i++;
			if (i + 1 < n && pat[i + 1] == ']')
				ok = ok && sb_put(&p, "\\]", 2), i++;
			continue;
		}
		if (c == ']' && in_class)
			in_class = false;
		ok = sb_put(&p, &c, 1);
	}
	struct hf_re *r = ok ? fw_calloc(1, sizeof(*r)) : NULL;
	pcre2_general_context *g = r ? pcre2_general_context_create(pcre_alloc, pcre_free, NULL) :
		NULL;
	pcre2_compile_context *cc = g ? pcre2_compile_context_create(g) : NULL;
	if (!cc) {
		pcre2_general_context_free(g);
		fw_free(r);
		sb_free(&p);
		fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		return NULL;
	}
	int code;
	PCRE2_SIZE at;
	r->re = pcre2_compile((PCRE2_SPTR)(p.b ? p.b : ""), p.n, PCRE2_UTF | PCRE2_UCP, &code, &at,
			      cc);
	pcre2_compile_context_free(cc);
	sb_free(&p);
	if (r->re) {
		r->jit = pcre2_jit_compile(r->re, PCRE2_JIT_COMPLETE) == 0;
		r->md = pcre2_match_data_create_from_pattern(r->re, g);
	}
	pcre2_general_context_free(g);
	if (!r->re || !r->md) {
		PCRE2_UCHAR msg[160] = "out of memory";
		if (!r->re)
			pcre2_get_error_message(code, msg, sizeof(msg));
		if (!r->re && code != PCRE2_ERROR_HEAP_FAILED)
			fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: regular expression not supported: %s",
				  where, (const char *)msg);
		else
			fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		re_free(r);
		return NULL;
	}
	return r;
}

void re_free(struct hf_re *r)
{
	if (!r)
		return;
	pcre2_match_data_free(r->md);
	pcre2_code_free(r->re);
	fw_free(r);
}

/* --- spans: Hugging Face's find_matches and split behaviors -------------------------- */

struct span {
	size_t a, b;
	bool m;
};
struct spans {
	struct span *v;
	size_t n, cap;
};

static bool span_push(struct spans *s, size_t a, size_t b, bool m)
{
	if (!tok_grow((void **)&s->v, &s->cap, s->n + 1, sizeof(*s->v)))
		return false;
	s->v[s->n++] = (struct span){ a, b, m };
	return true;
}

static enum fw_status find_regex(const struct hf_re *r, const char *s, size_t n,
				 struct spans *out, struct fw_err *err)
{
	PCRE2_SIZE *ov = pcre2_get_ovector_pointer(r->md), off = 0, prev = 0;
	while (off <= n) {
		int rc = r->jit ? pcre2_jit_match(r->re, (PCRE2_SPTR)s, n, off, 0, r->md, NULL) :
			pcre2_match(r->re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK, r->md, NULL);
		if (rc == PCRE2_ERROR_NOMATCH)
			break;
		if (rc < 0)
			return fw_errorf(err, rc == PCRE2_ERROR_NOMEMORY ? FW_ERR_NOMEM : FW_ERR_INTERNAL,
					 "tokenizer: PCRE2 match failed (%d)", rc);
		size_t a = ov[0], b = ov[1];
		if (prev != a && !span_push(out, prev, a, false))
			return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		if (!span_push(out, a, b, true))
			return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		prev = b;
		off = b > a ? b : b + (b < n ? u8_len((unsigned char)s[b]) : 1);
	}
	if (prev < n && !span_push(out, prev, n, false))
		return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
	return FW_OK;
}

static bool find_char(bool (*pred)(uint32_t, const void *), const void *arg, const char *s,
		      size_t n, struct spans *out)
{
	size_t last = 0;
	for (size_t i = 0; i < n;) {
		size_t b = i;
		uint32_t cp = u8_next(s, n, &i);
		if (pred(cp, arg)) {
			if (last < b && !span_push(out, last, b, false))
				return false;
			if (!span_push(out, b, i, true))
				return false;
			last = i;
		}
	}
	return last >= n || span_push(out, last, n, false);
}

/* Cuts piece p by the spans, per behavior, appending the pieces to out. */
static bool split_by(const struct piece *p, struct spans *sp, enum behavior bh, bool invert,
		     struct plist *out)
{
	struct span *v = sp->v;
	size_t n = sp->n, w = 0;
	bool prev = false;
	for (size_t i = 0; i < n; i++)
		v[i].m ^= invert;
	if (bh == B_NEXT) {
		for (size_t i = n; i-- > 0;) {
			struct span s = v[i];
			bool m = s.m;
			if (m && !prev && w > 0)
				v[n - w].a = s.a;       /* the span after it, already placed */
			else
				v[n - 1 - w++] = (struct span){ s.a, s.b, false };
			prev = m;
		}
		memmove(v, v + n - w, w * sizeof(*v));
	} else {
		for (size_t i = 0; i < n; i++) {
			struct span s = v[i];
			bool merge = bh == B_CONTIGUOUS ? s.m == prev : bh == B_PREV ? s.m && !prev : false;
			if (merge && w > 0)
				v[w - 1].b = s.b;
			else
				v[w++] = (struct span){ s.a, s.b, bh == B_REMOVED && s.m };
			prev = s.m;
		}
	}
	for (size_t i = 0; i < w; i++)
		if (!v[i].m && v[i].b > v[i].a &&
		    !plist_push(out, p->s + v[i].a, v[i].b - v[i].a, p->al ? p->al + v[i].a : NULL, -1,
				p->first && v[i].a == 0))
			return false;
	return true;
}

int name_index(const char *const *names, size_t n, const char *t)
{
	for (size_t k = 0; k < n; k++)
		if (!strcmp(names[k], t))
			return (int)k;
	return -1;
}

/* --- normalizers ----------------------------------------------------------------------- */

static const char *type_of(json_t *j)
{
	const char *t = json_string_value(json_object_get(j, "type"));
	return t ? t : "";
}

static bool bool_field(json_t *j, const char *k, bool def)
{
	json_t *v = json_object_get(j, k);
	return json_is_boolean(v) ? json_is_true(v) : def;
}

static char *str_dup(json_t *s, size_t *n)
{
	*n = json_string_length(s);
	char *p = fw_malloc(*n + 1);
	if (p)
		memcpy(p, json_string_value(s), *n + 1);
	return p;
}

/* A {"String": s} or {"Regex": r} pattern into *lit (String) or *re. */
static enum fw_status pattern_parse(json_t *pat, char **lit, size_t *nlit, struct hf_re **re,
				    bool want_re, const char *path, const char *at,
				    struct fw_err *err)
{
	json_t *s = json_object_get(pat, "String"), *r = json_object_get(pat, "Regex");
	if (json_is_string(s)) {
		if (!(*lit = str_dup(s, nlit)))
			return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		if (want_re && !(*re = re_new(*lit, *nlit, true, path, err)))
			return err->status;
		return FW_OK;
	}
	if (json_is_string(r)) {
		char where[512];
		snprintf(where, sizeof(where), "%s: %s", path, at);
		*re = re_new(json_string_value(r), json_string_length(r), false, where, err);
		return *re ? FW_OK : err->status;
	}
	return fw_errorf(err, FW_ERR_FORMAT, "%s: %s: pattern is neither {\"String\": ...} nor "
			 "{\"Regex\": ...}", path, at);
}

enum fw_status norm_parse(json_t *j, struct hf_norm *n, const char *path, const char *at,
			  struct fw_err *err)
{
	static const char *const names[] = { "NFC", "NFD", "NFKC", "NFKD", "Lowercase",
		"StripAccents", "Replace", "Prepend", "Strip", "BertNormalizer", "Sequence" };
	const char *t = type_of(j);
	int k = name_index(names, sizeof(names) / sizeof(names[0]), t);
	if (k < 0)
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: normalizer %s%s%s is not supported",
				 path, *t ? "\"" : "(no type)", t, *t ? "\"" : "");
	n->kind = (enum norm_kind)k;
	switch (n->kind) {
	case NORM_SEQ: {
		json_t *a = json_object_get(j, "normalizers");
		if (!json_is_array(a))
			return fw_errorf(err, FW_ERR_FORMAT, "%s: %s: Sequence without \"normalizers\"",
					 path, at);
		size_t ns = json_array_size(a);
		if (ns && !(n->sub = fw_calloc(ns, sizeof(*n->sub))))
			return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		n->n_sub = ns;
		for (size_t i = 0; i < n->n_sub; i++) {
			enum fw_status s = norm_parse(json_array_get(a, i), &n->sub[i], path, at, err);
			if (s != FW_OK)
				return s;
		}
		return FW_OK;
	}
	case NORM_REPLACE: {
		json_t *c = json_object_get(j, "content");
		if (!json_is_string(c))
			return fw_errorf(err, FW_ERR_FORMAT, "%s: %s: Replace without a content", path,
					 at);
		if (!(n->b = str_dup(c, &n->nb)))
			return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		return pattern_parse(json_object_get(j, "pattern"), &n->a, &n->na, &n->re, true, path,
				     at, err);
	}
	case NORM_PREPEND: {
		json_t *c = json_object_get(j, "prepend");
		if (!json_is_string(c))
			return fw_errorf(err, FW_ERR_FORMAT, "%s: %s: Prepend without a string", path, at);
		return (n->a = str_dup(c, &n->na)) ? FW_OK :
			fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
	}
	case NORM_STRIP:
		n->left = bool_field(j, "strip_left", true);
		n->right = bool_field(j, "strip_right", true);
		return FW_OK;
	case NORM_BERT: {
		n->clean = bool_field(j, "clean_text", true);
		n->chinese = bool_field(j, "handle_chinese_chars", true);
		n->lower = bool_field(j, "lowercase", true);
		n->strip_accents = bool_field(j, "strip_accents", n->lower);
		return FW_OK;
	}
	default:
		return FW_OK;
	}
}

void norm_free(struct hf_norm *n)
{
	if (!n)
		return;
	for (size_t i = 0; i < n->n_sub; i++)
		norm_free(&n->sub[i]);
	fw_free(n->sub);
	fw_free(n->a);
	fw_free(n->b);
	re_free(n->re);
}

/* Unicode normalization of s[0..len) through UTF-16. */
static enum fw_status unorm_run(enum norm_kind k, const char *s, size_t len, struct sbuf *out,
			    struct fw_err *err)
{
	UErrorCode ec = U_ZERO_ERROR;
	const UNormalizer2 *nz = k == NORM_NFC ? unorm2_getNFCInstance(&ec) :
		k == NORM_NFD ? unorm2_getNFDInstance(&ec) : k == NORM_NFKC ?
		unorm2_getNFKCInstance(&ec) : unorm2_getNFKDInstance(&ec);
	if (U_FAILURE(ec) || len > INT32_MAX / 8)
		return fw_errorf(err, FW_ERR_INTERNAL, "tokenizer: ICU normalizer: %s",
				 u_errorName(ec));
	int32_t n16 = 0;
	UChar *a = fw_malloc((len + 1) * sizeof(UChar)), *b = NULL;
	enum fw_status st = FW_OK;
	if (!a)
		goto nomem;
	u_strFromUTF8(a, (int32_t)len + 1, &n16, s, (int32_t)len, &ec);
	int32_t cap = 3 * n16 + 16, m;
	for (;;) {
		if (!(b = fw_malloc((size_t)cap * sizeof(UChar))))
			goto nomem;
		ec = U_ZERO_ERROR;
		m = unorm2_normalize(nz, a, n16, b, cap, &ec);
		if (ec != U_BUFFER_OVERFLOW_ERROR)
			break;
		fw_free(b);
		b = NULL;
		cap = m + 16;
	}
	int32_t n8 = 0;
	ec = U_ZERO_ERROR;
	u_strToUTF8(NULL, 0, &n8, b, m, &ec);
	ec = U_ZERO_ERROR;
	size_t at = out->n;
	if (!sb_reserve(out, (size_t)n8))
		goto nomem;
	u_strToUTF8(out->b + at, n8 + 1, NULL, b, m, &ec);
	out->n += (size_t)n8;
	out->b[out->n] = '\0';
	if (U_FAILURE(ec) && ec != U_STRING_NOT_TERMINATED_WARNING)
		st = fw_errorf(err, FW_ERR_INTERNAL, "tokenizer: ICU: %s", u_errorName(ec));
	goto out;
nomem:
	st = fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
out:
	fw_free(a);
	fw_free(b);
	return st;
}

static bool u_new(uint32_t cp)
{
	UVersionInfo v;
	u_charAge((UChar32)cp, v);
	return v[0] >= 12;
}

/* One output character of a stretch and its change: 0 stands for an input
 * character, n > 0 is the n-th inserted after one, -n also stands for the
 * n input characters after its own (unicode-normalization-alignments). */
struct uchg {
	UChar32 c;
	int change;
};

/* The reference's (char, change) pairs for s[0..len) (no new characters):
 * each character's full decomposition (0 for the first, 1 for the rest),
 * marks reordered by combining class with their changes, then for NFC and
 * NFKC canonical composition, where a composite's change is its parts'
 * added less one. Returns the count, or -1 when v (room for cap) is short. */
static int32_t unorm_changes(const UNormalizer2 *dec, bool compose, const char *s, size_t len,
			     struct uchg *v, int32_t cap)
{
	int32_t n = 0;
	for (size_t i = 0; i < len;) {
		UChar in[2], d[32];
		int32_t ni = 0, nd, k = 0;
		UErrorCode ec = U_ZERO_ERROR;
		UChar32 cp = (UChar32)u8_next(s, len, &i);   /* (the macro reads it twice) */
		U16_APPEND_UNSAFE(in, ni, cp);
		nd = unorm2_normalize(dec, in, ni, d, 32, &ec);
		if (U_FAILURE(ec))
			return -1;
		for (int first = 1; k < nd; first = 0) {
			UChar32 c;
			U16_NEXT(d, k, nd, c);
			if (n >= cap)
				return -1;
			v[n++] = (struct uchg){ c, first ? 0 : 1 };
		}
	}
	for (int32_t i = 1; i < n; i++) {       /* stable: insertion sort within mark runs */
		uint8_t cc = u_getCombiningClass(v[i].c);
		for (int32_t j = i; cc && j > 0; j--) {
			uint8_t pc = u_getCombiningClass(v[j - 1].c);
			if (!pc || pc <= cc)
				break;
			struct uchg t = v[j];
			v[j] = v[j - 1];
			v[j - 1] = t;
		}
	}
	if (!compose)
		return n;
	UErrorCode ec = U_ZERO_ERROR;
	const UNormalizer2 *nfc = unorm2_getNFCInstance(&ec);
	if (U_FAILURE(ec))
		return -1;
	int32_t w = 0, st = -1, last = -1;     /* starter index in v[0..w); last class, -1 none */
	for (int32_t i = 0; i < n; i++) {
		struct uchg x = v[i];
		int cc = u_getCombiningClass(x.c);
		if (st >= 0 && (last < 0 || last < cc)) {
			UChar32 r = unorm2_composePair(nfc, v[st].c, x.c);
			if (r >= 0) {
				v[st].c = r;
				v[st].change += x.change - 1;
				continue;
			}
		}
		if (cc == 0) {
			st = w;
			last = -1;
		} else if (st >= 0) {
			last = cc;
		}
		v[w++] = x;
	}
	return w;
}

/* unorm with alignments: each stretch that normalizes on its own (it
 * starts at a normalization boundary) is normalized by itself, and its
 * output characters take the ranges of the input characters as the
 * reference's changes say (unorm_changes; where its characters are not
 * ICU's, the k-th output character takes the k-th input's range). */
static enum fw_status unorm_al(enum norm_kind k, const char *s, size_t len,
			       const struct tspan *al, struct sbuf *out, struct albuf *alo,
			       struct fw_err *err)
{
	UErrorCode ec = U_ZERO_ERROR;
	const UNormalizer2 *nz = k == NORM_NFC ? unorm2_getNFCInstance(&ec) :
		k == NORM_NFD ? unorm2_getNFDInstance(&ec) : k == NORM_NFKC ?
		unorm2_getNFKCInstance(&ec) : unorm2_getNFKDInstance(&ec);
	const UNormalizer2 *dec = k == NORM_NFC || k == NORM_NFD ? unorm2_getNFDInstance(&ec) :
		unorm2_getNFKDInstance(&ec);
	if (U_FAILURE(ec))
		return fw_errorf(err, FW_ERR_INTERNAL, "tokenizer: ICU normalizer: %s",
				 u_errorName(ec));
	struct uchg v[64];
	for (size_t i = 0; i < len;) {
		size_t a = i;
		bool fresh = u_new(u8_next(s, len, &i));
		while (!fresh && i < len) {
			size_t q = i;
			uint32_t cp = u8_next(s, len, &q);
			if (unorm2_hasBoundaryBefore(nz, (UChar32)cp) || u_new(cp))
				break;
			i = q;
		}
		size_t o = out->n;
		enum fw_status st = fresh ? (sb_put(out, s + a, i - a) ? FW_OK :
			fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory")) :
			unorm_run(k, s + a, i - a, out, err);
		if (st != FW_OK)
			return st;
		int32_t nv = fresh ? -1 : unorm_changes(dec, k == NORM_NFC || k == NORM_NFKC, s + a,
							 i - a, v, 64);
		for (size_t q = o, j = 0; nv >= 0 && q < out->n; j++) {
			if ((int32_t)j >= nv || u8_next(out->b, out->n, &q) != (uint32_t)v[j].c)
				nv = -1;
			else if (q == out->n && (int32_t)j + 1 != nv)
				nv = -1;
		}
		size_t src = a, last = i - 1;   /* the next input character; the last one */
		while (last > a && ((unsigned char)s[last] & 0xC0) == 0x80)
			last--;
		for (size_t j = 0; o < out->n; j++) {
			o += u8_len((unsigned char)out->b[o]);
			int ch = nv >= 0 ? v[j].change : 0;
			struct tspan sp;
			if (ch > 0) {
				sp = src > 0 ? al[src - 1] : (struct tspan){ 0, 0 };
			} else {
				sp = al[src < i ? src : i - 1];
				for (int e = 0; e <= -ch && src < i; e++)
					src += u8_len((unsigned char)s[src]);
				if (nv < 0 && src >= i)   /* positional: the last one repeats */
					src = last;
			}
			if (!al_to(alo, o, sp))
				return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		}
	}
	return FW_OK;
}

/* The reference's normalization tables are Unicode 11.0's: a character
 * assigned later has no decomposition there and blocks composition across
 * it. Runs of older characters are normalized by ICU, newer ones copied. */
static enum fw_status unorm(enum norm_kind k, const char *s, size_t len, const struct tspan *al,
			    struct sbuf *out, struct albuf *alo, struct fw_err *err)
{
	if (al)
		return unorm_al(k, s, len, al, out, alo, err);
	size_t run = 0;
	for (size_t i = 0; i < len;) {
		size_t a = i;
		uint32_t cp = u8_next(s, len, &i);
		UVersionInfo v;
		if (cp < 0x80)
			continue;
		u_charAge((UChar32)cp, v);
		if (v[0] < 12)
			continue;
		enum fw_status st = a > run ? unorm_run(k, s + run, a - run, out, err) : FW_OK;
		if (st != FW_OK)
			return st;
		if (!sb_put(out, s + a, i - a))
			return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		run = i;
	}
	return len > run ? unorm_run(k, s + run, len - run, out, err) :
		sb_reserve(out, 0) ? FW_OK : fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
}

/* Rust's char::to_lowercase of each code point (no context: final sigma is σ). */
static bool lower_cp(struct sbuf *out, uint32_t cp)
{
	if (cp < 0x80)
		return sb_cp(out, cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
	UChar in[2], o[8];
	int32_t ni = 0, no;
	UErrorCode ec = U_ZERO_ERROR;
	U16_APPEND_UNSAFE(in, ni, (UChar32)cp);
	no = u_strToLower(o, 8, in, ni, "", &ec);
	if (U_FAILURE(ec) || no > 8)
		return sb_cp(out, cp);
	for (int32_t i = 0; i < no;) {
		UChar32 c;
		U16_NEXT(o, i, no, c);
		if (!sb_cp(out, (uint32_t)c))
			return false;
	}
	return true;
}

static bool is_chinese(uint32_t c)
{
	return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
	       (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
	       (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
	       (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/* Applies one code-point filter/map of BertNormalizer or StripAccents.
 * *keep0 becomes false when characters at the start are removed (the text
 * then no longer starts at its original offset 0). */
static enum fw_status map_cps(int step, const char *s, size_t len, const struct tspan *al,
			      struct sbuf *out, struct albuf *alo, bool *keep0, struct fw_err *err)
{
	bool ok = true;
	size_t start = out->n;
	for (size_t i = 0; ok && i < len;) {
		bool first_cp = i == 0;
		if (al && i && !al_to(alo, out->n, al[i - 1]))
			ok = false;     /* the previous character's output */
		unsigned char c = (unsigned char)s[i];
		if (c < 0x80) {         /* ASCII: no marks, Chinese or non-ASCII case */
			i++;
			if (step == 0 && (c == 0x7F || (c < 0x20 && c != '\t' && c != '\n' && c != '\r')))
				;       /* a control character goes */
			else
				ok = sb_cp(out, step == 0 && u_whitespace(c) ? ' ' :
					   step == 4 && c >= 'A' && c <= 'Z' ? c + 32u : c);
			if (first_cp && out->n == start && keep0)
				*keep0 = false;
			continue;
		}
		uint32_t cp = u8_next(s, len, &i);
		uint32_t m = U_GET_GC_MASK((UChar32)cp);
		switch (step) {
		case 0:         /* clean_text: Cc, Co, Cf (Unicode 8.0) and U+FFFD go */
			if (cp == 0 || cp == 0xFFFD || (cp != '\t' && cp != '\n' && cp != '\r' &&
			    ((m & (U_GC_CC_MASK | U_GC_CO_MASK)) || ((m & U_GC_CF_MASK) && u_old(cp, 9)))))
				break;
			ok = sb_cp(out, u_whitespace(cp) ? ' ' : cp);
			break;
		case 1:         /* handle_chinese_chars */
			ok = is_chinese(cp) ? sb_put(out, " ", 1) && sb_cp(out, cp) && sb_put(out, " ", 1)
				: sb_cp(out, cp);
			break;
		case 2:         /* BERT's accent stripping: drop Mn */
			if (!((m & U_GC_MN_MASK) && u_old(cp, 9)))
				ok = sb_cp(out, cp);
			break;
		case 3:         /* StripAccents: drop every mark */
			if (!((m & U_GC_M_MASK) && u_old(cp, 10)))
				ok = sb_cp(out, cp);
			break;
		default:
			ok = lower_cp(out, cp);
		}
		if (first_cp && out->n == start && keep0)
			*keep0 = false;         /* the first character went */
	}
	if (ok && al && len && !al_to(alo, out->n, al[len - 1]))
		ok = false;
	return ok ? FW_OK : fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
}

static enum fw_status replace_all(const struct hf_re *re, const char *s, size_t len,
				  const struct tspan *al, const char *with, size_t nw,
				  struct sbuf *out, struct albuf *alo, bool *keep0, struct fw_err *err)
{
	struct spans sp = { 0 };
	enum fw_status st = find_regex(re, s, len, &sp, err);
	if (st == FW_OK && sp.n && sp.v[0].m && nw == 0 && keep0)
		*keep0 = false;                 /* the start was replaced by nothing */
	for (size_t i = 0; st == FW_OK && i < sp.n; i++) {
		size_t a = sp.v[i].a, b = sp.v[i].b;
		/* the replacement takes the range of the match's last character */
		if (!(sp.v[i].m ? sb_put(out, with, nw) : sb_put(out, s + a, b - a)) ||
		    (al && !(sp.v[i].m ? nw == 0 || al_to(alo, out->n, b > 0 ? al[b - 1] :
							   (struct tspan){ 0, 0 }) :
			     al_put(alo, al + a, b - a))))
			st = fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
	}
	if (st == FW_OK && !sb_put(out, NULL, 0))
		st = fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
	fw_free(sp.v);
	return st;
}

#define NOMEM_ST fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory")

enum fw_status norm_apply(const struct hf_norm *n, const char *s, size_t len,
			  const struct tspan *al, struct sbuf *out, struct albuf *alo, bool *keep0,
			  struct fw_err *err)
{
	struct sbuf a = { 0 }, b = { 0 };
	struct albuf aa = { 0 }, ab = { 0 };
	enum fw_status st = FW_OK;
	switch (n->kind) {
	case NORM_NFC: case NORM_NFD: case NORM_NFKC: case NORM_NFKD:
		return unorm(n->kind, s, len, al, out, alo, err);
	case NORM_LOWER:
		return map_cps(4, s, len, al, out, alo, keep0, err);
	case NORM_STRIP_ACCENTS:
		return map_cps(3, s, len, al, out, alo, keep0, err);
	case NORM_REPLACE:
		return replace_all(n->re, s, len, al, n->b, n->nb, out, alo, keep0, err);
	case NORM_PREPEND:
		/* the prefix takes the first character's range */
		if (len && (!sb_put(out, n->a, n->na) || (al && !al_to(alo, out->n, al[0]))))
			return NOMEM_ST;
		return sb_put(out, s, len) && (!al || al_put(alo, al, len)) ? FW_OK : NOMEM_ST;
	case NORM_STRIP: {
		size_t i = 0, e = len;
		while (n->left && i < len) {
			size_t k = i;
			if (!u_whitespace(u8_next(s, len, &k)))
				break;
			i = k;
		}
		while (n->right && e > i) {
			size_t k = e - 1;
			while (k > i && ((unsigned char)s[k] & 0xC0) == 0x80)
				k--;
			size_t q = k;
			if (!u_whitespace(u8_next(s, len, &q)))
				break;
			e = k;
		}
		if (i > 0 && keep0)
			*keep0 = false;
		return sb_put(out, s + i, e - i) && (!al || al_put(alo, al + i, e - i)) ? FW_OK :
			NOMEM_ST;
	}
	case NORM_BERT: {
		const char *cur = s;
		const struct tspan *cal = al;
		size_t cn = len;
		struct sbuf *bufs[2] = { &a, &b };
		struct albuf *als[2] = { &aa, &ab };
		int k = 0;
		bool steps[2] = { n->clean, n->chinese };
		for (int step = 0; step < 2 && st == FW_OK; step++) {
			if (!steps[step])
				continue;
			bufs[k]->n = als[k]->n = 0;
			st = map_cps(step, cur, cn, cal, bufs[k], als[k], keep0, err);
			cur = bufs[k]->b ? bufs[k]->b : "";
			cal = al ? als[k]->v : NULL;
			cn = bufs[k]->n;
			k ^= 1;
		}
		if (st == FW_OK && n->strip_accents) {
			bufs[k]->n = als[k]->n = 0;
			st = unorm(NORM_NFD, cur, cn, cal, bufs[k], als[k], err);
			struct sbuf *d = bufs[k];
			const struct tspan *dal = al ? als[k]->v : NULL;
			k ^= 1;
			bufs[k]->n = als[k]->n = 0;
			if (st == FW_OK)
				st = map_cps(2, d->b ? d->b : "", d->n, dal, bufs[k], als[k], keep0, err);
			cur = bufs[k]->b ? bufs[k]->b : "";
			cal = al ? als[k]->v : NULL;
			cn = bufs[k]->n;
			k ^= 1;
		}
		if (st == FW_OK)
			st = n->lower ? map_cps(4, cur, cn, cal, out, alo, keep0, err) :
				sb_put(out, cur, cn) && (!al || al_put(alo, cal, cn)) ? FW_OK : NOMEM_ST;
		break;
	}
	case NORM_SEQ: {
		const char *cur = s;
		const struct tspan *cal = al;
		size_t cn = len;
		int k = 0;
		struct sbuf *bufs[2] = { &a, &b };
		struct albuf *als[2] = { &aa, &ab };
		for (size_t i = 0; i < n->n_sub && st == FW_OK; i++) {
			bufs[k]->n = als[k]->n = 0;
			st = norm_apply(&n->sub[i], cur, cn, cal, bufs[k], als[k], keep0, err);
			cur = bufs[k]->b ? bufs[k]->b : "";
			cal = al ? als[k]->v : NULL;
			cn = bufs[k]->n;
			k ^= 1;
		}
		if (st == FW_OK && !(sb_put(out, cur, cn) && (!al || al_put(alo, cal, cn))))
			st = NOMEM_ST;
		break;
	}
	}
	sb_free(&a);
	sb_free(&b);
	al_free(&aa);
	al_free(&ab);
	return st;
}

/* --- pre-tokenizers ---------------------------------------------------------------------- */

/* GPT-2's bytes_to_unicode(): the code point standing for byte b. */
static uint32_t byte_cp(unsigned b)
{
	if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE))
		return b;
	unsigned n = 0;
	for (unsigned c = 0; c < b; c++)
		n += !((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE));
	return 256 + n;
}

static const char gpt2_re[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+"
	"|\\s+(?!\\S)|\\s+";

enum fw_status pre_parse(json_t *j, struct hf_pre *p, const char *path, const char *at,
			 struct fw_err *err)
{
	static const char *const names[] = { "ByteLevel", "Metaspace", "Whitespace",
		"WhitespaceSplit", "BertPreTokenizer", "Punctuation", "Digits", "Split", "Sequence" };
	static const char *const bh[] = { "Removed", "Isolated", "MergedWithPrevious",
		"MergedWithNext", "Contiguous" };
	const char *t = type_of(j);
	int k = name_index(names, sizeof(names) / sizeof(names[0]), t);
	if (k < 0)
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: pre-tokenizer %s%s%s is not supported",
				 path, *t ? "\"" : "(no type)", t, *t ? "\"" : "");
	p->kind = (enum pre_kind)k;
	const char *b = json_string_value(json_object_get(j, "behavior"));
	p->behavior = p->kind == PRE_PUNCT ? B_ISOLATED : B_REMOVED;
	if (b) {
		int i = name_index(bh, 5, b);
		if (i < 0)
			return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: %s: split behavior \"%s\" is not "
					 "supported", path, at, b);
		p->behavior = (enum behavior)i;
	}
	switch (p->kind) {
	case PRE_SEQ: {
		json_t *a = json_object_get(j, "pretokenizers");
		if (!json_is_array(a))
			return fw_errorf(err, FW_ERR_FORMAT, "%s: %s: Sequence without \"pretokenizers\"",
					 path, at);
		size_t ns = json_array_size(a);
		if (ns && !(p->sub = fw_calloc(ns, sizeof(*p->sub))))
			return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		p->n_sub = ns;
		for (size_t i = 0; i < p->n_sub; i++) {
			enum fw_status s = pre_parse(json_array_get(a, i), &p->sub[i], path, at, err);
			if (s != FW_OK)
				return s;
		}
		return FW_OK;
	}
	case PRE_BYTELEVEL:
		p->add_prefix_space = bool_field(j, "add_prefix_space", true);
		p->use_regex = bool_field(j, "use_regex", true);
		for (unsigned c = 0; c < 256; c++) {
			uint32_t cp = byte_cp(c);       /* below U+0800: two bytes at most */
			p->bytes_n[c] = (uint8_t)(cp < 0x80 ? 1 : 2);
			p->bytes[c][0] = (char)(cp < 0x80 ? cp : 0xC0 | cp >> 6);
			p->bytes[c][1] = (char)(0x80 | (cp & 0x3F));
		}
		if (p->use_regex && !(p->re = re_new(gpt2_re, strlen(gpt2_re), false, path, err)))
			return err->status;
		return FW_OK;
	case PRE_WHITESPACE:
		p->re = re_new("\\w+|[^\\w\\s]+", 13, false, path, err);
		return p->re ? FW_OK : err->status;
	case PRE_DIGITS:
		p->individual = bool_field(j, "individual_digits", false);
		return FW_OK;
	case PRE_SPLIT: {
		char *lit = NULL;
		size_t nl;
		enum fw_status s = pattern_parse(json_object_get(j, "pattern"), &lit, &nl, &p->re, true,
						 path, at, err);
		fw_free(lit);
		p->invert = bool_field(j, "invert", false);
		return s;
	}
	case PRE_METASPACE: {
		json_t *r = json_object_get(j, "replacement");
		const char *ps = json_string_value(json_object_get(j, "prepend_scheme"));
		size_t i = 0;
		if (!json_is_string(r) || json_string_length(r) == 0 || json_string_length(r) > 4)
			return fw_errorf(err, FW_ERR_FORMAT, "%s: %s: Metaspace needs a one-character "
					 "replacement", path, at);
		p->repl_n = json_string_length(r);
		memcpy(p->repl, json_string_value(r), p->repl_n);
		p->repl_cp = u8_next(p->repl, p->repl_n, &i);
		p->split = bool_field(j, "split", true);
		if (!ps)        /* older files: add_prefix_space */
			p->prepend = bool_field(j, "add_prefix_space", true) ? 0 : 2;
		else if (!strcmp(ps, "always") || !strcmp(ps, "first") || !strcmp(ps, "never"))
			p->prepend = ps[0] == 'a' ? 0 : ps[0] == 'f' ? 1 : 2;
		else
			return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: %s: Metaspace prepend_scheme \"%s\" "
					 "is not supported", path, at, ps);
		return FW_OK;
	}
	default:
		return FW_OK;
	}
}

void pre_free(struct hf_pre *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->n_sub; i++)
		pre_free(&p->sub[i]);
	fw_free(p->sub);
	re_free(p->re);
}

static bool pred_ws(uint32_t cp, const void *a)
{
	(void)a;
	return u_whitespace(cp);
}

static bool pred_punct(uint32_t cp, const void *a)
{
	(void)a;
	return u_punct(cp);
}

static bool pred_num(uint32_t cp, const void *a)
{
	(void)a;
	return u_numeric(cp);
}

static bool pred_eq(uint32_t cp, const void *a)
{
	return cp == *(const uint32_t *)a;
}

/* Scratch space of pre_one, kept across pieces. */
struct pre_scratch {
	struct spans sp;
	struct sbuf t;
	struct plist tmp;
	struct albuf al, bal;           /* t's alignments; byte_level's */
};

/* Appends s[0..n) to out in GPT-2's byte alphabet. */
static bool byte_level(const struct hf_pre *p, const char *s, size_t n, const struct tspan *al,
		       bool first, struct plist *out, struct albuf *bal)
{
	char *d = plist_room(out, 2 * n, al != NULL);
	if (!d)
		return false;
	size_t m = 0;
	bal->n = 0;
	for (size_t k = 0; k < n; k++) {
		unsigned char c = (unsigned char)s[k];
		d[m] = p->bytes[c][0];
		d[m + 1] = p->bytes[c][1];
		m += p->bytes_n[c];
		if (al && !al_to(bal, m, al[k]))
			return false;
	}
	return plist_push(out, d, m, al ? bal->v : NULL, -1, first);
}

/* One pre-tokenizer (not Sequence) on one piece, appending to out. */
static enum fw_status pre_one(const struct hf_pre *p, const struct piece *pc, struct plist *out,
			      struct pre_scratch *x, struct fw_err *err)
{
	struct spans *sp = &x->sp;
	struct sbuf *t = &x->t;
	enum fw_status st = FW_OK;
	bool ok = true;
	struct albuf *ta = &x->al;
	const struct tspan *al = pc->al;
	/* prepended characters take the range of the first one */
	struct tspan al0 = al && pc->n ? al[0] : (struct tspan){ 0, 0 };
	sp->n = 0;
	t->n = 0;
	ta->n = 0;
	switch (p->kind) {
	case PRE_BYTELEVEL: {
		struct piece q = *pc;
		if (p->add_prefix_space && (pc->n == 0 || pc->s[0] != ' ')) {
			ok = sb_put(t, " ", 1) && sb_put(t, pc->s, pc->n) &&
			     (!al || (al_to(ta, 1, al0) && al_put(ta, al, pc->n)));
			q.s = t->b;
			q.n = t->n;
			q.al = al ? ta->v : NULL;
		}
		if (ok && p->use_regex) {
			st = find_regex(p->re, q.s, q.n, sp, err);
			for (size_t i = 0; ok && st == FW_OK && i < sp->n; i++)
				if (sp->v[i].b > sp->v[i].a)
					ok = byte_level(p, q.s + sp->v[i].a, sp->v[i].b - sp->v[i].a,
							q.al ? q.al + sp->v[i].a : NULL,
							q.first && sp->v[i].a == 0, out, &x->bal);
		} else if (ok && q.n) {
			ok = byte_level(p, q.s, q.n, q.al, q.first, out, &x->bal);
		}
		break;
	}
	case PRE_METASPACE: {
		/* spaces become the replacement, then it is prepended per the scheme
		 * unless the piece starts with it */
		bool pre = p->prepend == 0 || (p->prepend == 1 && pc->first);
		if (pre && !(pc->n && pc->s[0] == ' ') &&
		    !(pc->n >= p->repl_n && !memcmp(pc->s, p->repl, p->repl_n)))
			ok = sb_put(t, p->repl, p->repl_n) && (!al || al_to(ta, t->n, al0));
		for (size_t i = 0; ok && i < pc->n; i++)
			ok = (pc->s[i] == ' ' ? sb_put(t, p->repl, p->repl_n) : sb_put(t, pc->s + i, 1)) &&
			     (!al || al_to(ta, t->n, al[i]));
		struct piece q = { t->b ? t->b : "", t->n, -1, pc->first, al ? ta->v : NULL };
		if (!ok)
			break;
		if (p->split) {
			ok = find_char(pred_eq, &p->repl_cp, q.s, q.n, sp) &&
			     split_by(&q, sp, B_NEXT, false, out);
		} else {
			ok = q.n == 0 || plist_push(out, q.s, q.n, q.al, -1, q.first);
		}
		break;
	}
	case PRE_WHITESPACE:
		st = find_regex(p->re, pc->s, pc->n, sp, err);
		ok = st != FW_OK || split_by(pc, sp, B_REMOVED, true, out);
		break;
	case PRE_WSSPLIT:
		ok = find_char(pred_ws, NULL, pc->s, pc->n, sp) &&
		     split_by(pc, sp, B_REMOVED, false, out);
		break;
	case PRE_BERT: {
		struct plist *tmp = &x->tmp;
		plist_clear(tmp);
		ok = find_char(pred_ws, NULL, pc->s, pc->n, sp) &&
		     split_by(pc, sp, B_REMOVED, false, tmp);
		for (size_t i = 0; ok && i < tmp->n; i++) {
			sp->n = 0;
			ok = find_char(pred_punct, NULL, tmp->v[i].s, tmp->v[i].n, sp) &&
			     split_by(&tmp->v[i], sp, B_ISOLATED, false, out);
		}
		break;
	}
	case PRE_PUNCT:
		ok = find_char(pred_punct, NULL, pc->s, pc->n, sp) &&
		     split_by(pc, sp, p->behavior, false, out);
		break;
	case PRE_DIGITS:
		ok = find_char(pred_num, NULL, pc->s, pc->n, sp) &&
		     split_by(pc, sp, p->individual ? B_ISOLATED : B_CONTIGUOUS, false, out);
		break;
	case PRE_SPLIT:
		st = find_regex(p->re, pc->s, pc->n, sp, err);
		ok = st != FW_OK || split_by(pc, sp, p->behavior, p->invert, out);
		break;
	case PRE_SEQ:
		break;
	}
	if (st == FW_OK && !ok)
		st = fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
	return st;
}

/* Replaces the pieces of l (those without an id) by their pre-tokens; spare
 * is scratch space (its memory is kept for the next call). */
static enum fw_status pre_run(const struct hf_pre *p, struct plist *l, struct plist *spare,
			      struct pre_scratch *x, struct fw_err *err)
{
	if (p->kind == PRE_SEQ) {
		for (size_t i = 0; i < p->n_sub; i++) {
			enum fw_status s = pre_run(&p->sub[i], l, spare, x, err);
			if (s != FW_OK)
				return s;
		}
		return FW_OK;
	}
	struct plist out = *spare;
	enum fw_status st = FW_OK;
	plist_clear(&out);
	for (size_t i = 0; i < l->n && st == FW_OK; i++) {
		if (l->v[i].id >= 0) {
			if (!plist_push(&out, l->v[i].s, l->v[i].n, l->v[i].al, l->v[i].id,
					l->v[i].first))
				st = fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		} else {
			st = pre_one(p, &l->v[i], &out, x, err);
		}
	}
	*spare = *l;
	*l = out;
	return st;
}

enum fw_status pre_apply(const struct hf_pre *p, struct plist *l, struct fw_err *err)
{
	struct pre_scratch x = { 0 };
	struct plist spare = { 0 };
	enum fw_status st = pre_run(p, l, &spare, &x, err);
	plist_free(&spare);
	plist_free(&x.tmp);
	al_free(&x.al);
	al_free(&x.bal);
	fw_free(x.sp.v);
	sb_free(&x.t);
	return st;
}
