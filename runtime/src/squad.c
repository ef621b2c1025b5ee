/* squad.c - SQuAD v1.1's answer normalization, exact match and token F1
 * (fw/runtime/squad.h), on ICU's case mapping and character classes. */
#include <stdlib.h>
#include <string.h>

#include <unicode/uchar.h>
#include <unicode/ustring.h>
#include <unicode/utf16.h>

#include "fw/runtime/squad.h"

static bool ascii_punct(UChar32 c)
{
	return c > ' ' && c < 127 && strchr("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", (int)c);
}

/* re's \w for str: letters, numbers and '_'. */
static bool word_char(UChar32 c)
{
	return c == '_' || (U_GET_GC_MASK(c) & (U_GC_L_MASK | U_GC_N_MASK)) != 0;
}

/* str.isspace: Unicode White_Space, and the separators U+001C..U+001F. */
static bool space_char(UChar32 c)
{
	return u_isUWhiteSpace(c) || (c >= 0x1c && c <= 0x1f);
}

/* text as UTF-16 (malloc'd) of *n units, U+FFFD for ill-formed bytes. */
static UChar *utf16(const char *text, size_t len, int32_t *n)
{
	UErrorCode st = U_ZERO_ERROR;
	int32_t n16 = 0;
	u_strFromUTF8WithSub(NULL, 0, &n16, text, (int32_t)len, 0xfffd, NULL, &st);
	UChar *u = malloc(sizeof(UChar) * (size_t)(n16 + 1));
	st = U_ZERO_ERROR;
	if (!u || (u_strFromUTF8WithSub(u, n16 + 1, NULL, text, (int32_t)len, 0xfffd, NULL, &st),
		   U_FAILURE(st))) {
		free(u);
		return NULL;
	}
	*n = n16;
	return u;
}

/* UTF-16 u[0..n) as UTF-8 (malloc'd), or NULL. */
static char *utf8(const UChar *u, int32_t n)
{
	UErrorCode st = U_ZERO_ERROR;
	int32_t n8 = 0;
	u_strToUTF8(NULL, 0, &n8, u, n, &st);
	char *out = malloc((size_t)n8 + 1);
	st = U_ZERO_ERROR;
	if (out)
		u_strToUTF8(out, n8 + 1, NULL, u, n, &st);
	if (out && U_FAILURE(st)) {
		free(out);
		return NULL;
	}
	return out;
}

char *fw_rt_utf8_repair(const char *text, size_t len)
{
	int32_t n = 0;
	UChar *u = utf16(text, len, &n);
	char *out = u ? utf8(u, n) : NULL;
	free(u);
	return out;
}

/* text lowercased, as UTF-16 (malloc'd) of *n units; NULL when out of memory. */
static UChar *lowered(const char *text, size_t len, int32_t *n)
{
	int32_t n16 = 0;
	UChar *u = utf16(text, len, &n16);
	if (!u)
		return NULL;
	UErrorCode st = U_ZERO_ERROR;
	int32_t nl = u_strToLower(NULL, 0, u, n16, "", &st);
	UChar *l = malloc(sizeof(UChar) * (size_t)(nl + 1));
	st = U_ZERO_ERROR;
	if (l)
		u_strToLower(l, nl + 1, u, n16, "", &st);
	free(u);
	if (!l || U_FAILURE(st)) {
		free(l);
		return NULL;
	}
	*n = nl;
	return l;
}

static bool is_article(const UChar *w, int32_t n)
{
	static const char *const articles[] = { "a", "an", "the" };
	for (int i = 0; i < 3; i++) {
		int32_t k = (int32_t)strlen(articles[i]);
		bool same = k == n;
		for (int32_t j = 0; same && j < n; j++)
			same = w[j] == (UChar)articles[i][j];
		if (same)
			return true;
	}
	return false;
}

char *fw_rt_squad_normalize(const char *text, size_t len)
{
	int32_t n = 0, m = 0;
	UChar *l = lowered(text, len, &n);
	UChar *p = l ? malloc(sizeof(UChar) * (size_t)(n + 1)) : NULL;
	if (!p) {
		free(l);
		return NULL;
	}
	for (int32_t i = 0; i < n;) {           /* remove_punc */
		UChar32 c;
		int32_t at = i;
		U16_NEXT(l, i, n, c);
		if (!ascii_punct(c))
			for (int32_t k = at; k < i; k++)
				p[m++] = l[k];
	}
	/* remove_articles, then white_space_fix, code point by code point */
	UChar *o = l;                            /* m units at most */
	int32_t k = 0;
	bool gap = false;
	for (int32_t i = 0; i < m;) {
		UChar32 c;
		int32_t at = i;
		U16_NEXT(p, i, m, c);
		if (word_char(c)) {
			int32_t end = i;
			while (end < m) {
				int32_t nx = end;
				U16_NEXT(p, nx, m, c);
				if (!word_char(c))
					break;
				end = nx;
			}
			if (is_article(p + at, end - at)) {
				gap = true;
			} else {
				if (gap && k)
					o[k++] = ' ';
				gap = false;
				for (int32_t j = at; j < end; j++)
					o[k++] = p[j];
			}
			i = end;
		} else if (space_char(c)) {
			gap = true;
		} else {
			if (gap && k)
				o[k++] = ' ';
			gap = false;
			for (int32_t j = at; j < i; j++)
				o[k++] = p[j];
		}
	}
	char *out = utf8(o, k);
	free(l);
	free(p);
	return out;
}

/* The words of a normalized text (split at ' '), in place: their count. */
static int split_words(char *s, char ***words)
{
	int n = 0, cap = 8;
	*words = malloc(sizeof(char *) * (size_t)cap);
	for (char *w = strtok(s, " "); *words && w; w = strtok(NULL, " ")) {
		if (n == cap) {
			char **more = realloc(*words, sizeof(char *) * (size_t)(cap *= 2));
			if (!more) {
				free(*words);
				*words = NULL;
				break;
			}
			*words = more;
		}
		(*words)[n++] = w;
	}
	return *words ? n : -1;
}

static int by_text(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

enum fw_status fw_rt_squad_score(const char *prediction, size_t pred_len, const char *reference,
				 size_t ref_len, double *exact_match, double *f1,
				 struct fw_err *err)
{
	char *p = fw_rt_squad_normalize(prediction, pred_len);
	char *r = fw_rt_squad_normalize(reference, ref_len);
	char **pw = NULL, **rw = NULL;
	enum fw_status st = FW_OK;
	if (!p || !r) {
		st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
		goto out;
	}
	*exact_match = strcmp(p, r) == 0;
	int np = split_words(p, &pw), nr = split_words(r, &rw);
	if (np < 0 || nr < 0) {
		st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
		goto out;
	}
	/* Counter(pred) & Counter(ref): walk both sorted lists */
	qsort(pw, (size_t)np, sizeof(char *), by_text);
	qsort(rw, (size_t)nr, sizeof(char *), by_text);
	int same = 0;
	for (int i = 0, j = 0; i < np && j < nr;) {
		int c = strcmp(pw[i], rw[j]);
		same += c == 0;
		i += c <= 0;
		j += c >= 0;
	}
	double prec = same ? (double)same / np : 0, rec = same ? (double)same / nr : 0;
	*f1 = same ? 2 * prec * rec / (prec + rec) : 0.0;
out:
	free(pw);
	free(rw);
	free(p);
	free(r);
	return st;
}
