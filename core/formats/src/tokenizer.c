/* tokenizer.c - byte-level and GPT-2 byte-level BPE tokenizers (fw/tokenizer.h).
 *
 * Tokens are held as raw bytes: GPT-2's byte-to-unicode alphabet is undone
 * once at load time, so encoding never maps bytes to characters. A piece
 * from the regex starts as its byte tokens and is merged by a hash table
 * keyed by the (left id, right id) pair, which gives the merge's rank and
 * result. Merging follows the reference exactly: take the lowest-ranked
 * adjacent pair, merge all its occurrences left to right, repeat. Short
 * pieces do that directly on an array (O(n) per round); long ones (runs of
 * letters or digits) use a heap of pairs ordered by (rank, position), which
 * yields the same merges in O(n log n). Pieces of up to CACHE_KEY_MAX bytes
 * are cached, piece bytes -> ids, in an open-addressing table that is
 * emptied when full.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "fw/tokenizer.h"
#include "tokenizer_hf.h"
#include "tokenizer_internal.h"

#define SMALL_PIECE 128                 /* longer pieces merge with the heap */
#define CACHE_DEFAULT 65536
#define NO_RANK INT32_MAX
#define EMPTY_KEY UINT64_MAX

/* ECMAScript's \s (the reference encoder's): tab..CR, Zs, Zl, Zp, BOM. */
#define WS "\\t-\\r\\p{Z}\\x{FEFF}"
static const char gpt2_pattern[] =
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+"
	"|[" WS "]+(?![^" WS "])|[" WS "]+";

struct tok_str {
	uint32_t off, len;              /* into blob */
};

struct merge_slot {
	uint64_t key;                   /* left << 32 | right; EMPTY_KEY = free */
	int32_t rank, id;
};

struct special {
	int32_t id;
	uint32_t len;
};

struct fw_tokenizer {
	enum fw_tokenizer_kind kind;
	int32_t n_vocab, cap_vocab;
	struct tok_str *tok;
	char *blob;
	size_t blob_len, blob_cap;
	int32_t *vtab;                  /* bytes -> id, open addressing, -1 = free */
	uint64_t vmask;
	int32_t byte_id[256];
	struct merge_slot *merges;
	uint64_t mmask;
	int mshift;
	struct special *specials;       /* in the order they were added */
	size_t n_specials, cap_specials;
	uint8_t *sp_flag;               /* sp_flag[id]: id is special (ids < cap_flag) */
	size_t cap_flag;
	uint32_t *sp_lens;              /* the specials' distinct lengths, longest first */
	size_t n_lens, cap_lens;
	uint8_t special_first[32];      /* bitmap of the specials' first bytes */
	int special_byte;               /* the first byte all specials share, or -1 */
	int32_t eos;
	struct hf_tok *hf;              /* hf: the tokenizer.json pipeline */
	char *config;                   /* tokenizer_config.json's text, or NULL */
	size_t config_len;
	char *src_json;                 /* hf: the file's text, for serialising */
	size_t src_json_len;
	char *src_vocab, *src_merges;   /* gpt2: the files' texts, for serialising */
	size_t src_vocab_len, src_merges_len;
	struct hf_re *re;               /* gpt2: GPT-2's pattern */
	size_t heap_threshold;
	struct piece_cache cache;
};

/* --- small helpers -------------------------------------------------------------- */

uint64_t hash_bytes(const void *p, size_t n)
{
	const unsigned char *s = p;
	uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
	while (n >= 8) {
		uint64_t v;
		memcpy(&v, s, 8);
		h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
		h ^= h >> 31;
		s += 8;
		n -= 8;
	}
	if (n) {
		uint64_t v = 0;
		memcpy(&v, s, n);
		h = (h ^ v) * 0x94d049bb133111ebull;
		h ^= h >> 29;
	}
	h *= 0xbf58476d1ce4e5b9ull;
	return h ^ (h >> 32);
}

/* Grows *p (elements of size elem, capacity *cap) to hold need elements. */
bool tok_grow(void **p, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return true;
	size_t nc = *cap ? *cap : 16;
	while (nc < need)
		nc *= 2;
	if (nc > SIZE_MAX / elem)
		return false;
	void *q = fw_malloc(nc * elem);
	if (!q)
		return false;
	if (*p)
		memcpy(q, *p, *cap * elem);
	fw_free(*p);
	*p = q;
	*cap = nc;
	return true;
}

void fw_token_buf_free(struct fw_token_buf *b)
{
	if (!b)
		return;
	fw_free(b->ids);
	b->ids = NULL;
	b->n = b->cap = 0;
}

static inline bool buf_reserve(struct fw_token_buf *b, size_t more)
{
	if (b->n + more <= b->cap)
		return true;
	return tok_grow((void **)&b->ids, &b->cap, b->n + more, sizeof(int32_t));
}

/* Reads a whole file into an fw_malloc'd, NUL-terminated buffer. */
static enum fw_status read_file(const char *path, char **out, size_t *len, struct fw_err *err)
{
	*out = NULL;
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return fw_errorf(err, FW_ERR_IO, "%s: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return fw_errorf(err, FW_ERR_IO, "%s: not a regular file", path);
	}
	size_t n = (size_t)st.st_size, got = 0;
	char *buf = fw_malloc(n + 1);
	if (!buf) {
		close(fd);
		return fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", path);
	}
	while (got < n) {
		ssize_t r = read(fd, buf + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			int e = errno;
			close(fd);
			fw_free(buf);
			return fw_errorf(err, FW_ERR_IO, "%s: %s", path,
					 r < 0 ? strerror(e) : "file shrank while reading");
		}
		got += (size_t)r;
	}
	close(fd);
	buf[n] = '\0';
	*out = buf;
	*len = n;
	return FW_OK;
}

/* --- vocabulary ------------------------------------------------------------------ */

static int32_t vocab_find(const struct fw_tokenizer *t, const char *b, size_t len)
{
	if (!t->vtab)
		return -1;
	for (uint64_t i = hash_bytes(b, len) & t->vmask;; i = (i + 1) & t->vmask) {
		int32_t id = t->vtab[i];
		if (id < 0)
			return -1;
		if (t->tok[id].len == len && !memcmp(t->blob + t->tok[id].off, b, len))
			return id;
	}
}

static void vocab_insert(struct fw_tokenizer *t, int32_t id)
{
	const struct tok_str *s = &t->tok[id];
	uint64_t i = hash_bytes(t->blob + s->off, s->len) & t->vmask;
	while (t->vtab[i] >= 0)
		i = (i + 1) & t->vmask;
	t->vtab[i] = id;
}

/* Rebuilds the bytes -> id table for the current tokens (first id wins). */
static enum fw_status vocab_index(struct fw_tokenizer *t, struct fw_err *err)
{
	uint64_t size = 64;
	while (size < 2 * (uint64_t)t->n_vocab)
		size *= 2;
	int32_t *tab = fw_malloc(size * sizeof(int32_t));
	if (!tab)
		return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
	memset(tab, 0xff, size * sizeof(int32_t));
	fw_free(t->vtab);
	t->vtab = tab;
	t->vmask = size - 1;
	for (int32_t id = 0; id < t->n_vocab; id++)
		if (vocab_find(t, t->blob + t->tok[id].off, t->tok[id].len) < 0)
			vocab_insert(t, id);
	return FW_OK;
}

/* Appends a token with these bytes as id n_vocab (no index update). */
static enum fw_status vocab_push(struct fw_tokenizer *t, const char *b, size_t len,
				 struct fw_err *err)
{
	size_t cap = (size_t)t->cap_vocab;
	if (t->n_vocab == INT32_MAX || len > UINT32_MAX - t->blob_len ||
	    !tok_grow((void **)&t->tok, &cap, (size_t)t->n_vocab + 1, sizeof(*t->tok)) ||
	    !tok_grow((void **)&t->blob, &t->blob_cap, t->blob_len + len + 1, 1))
		return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
	t->cap_vocab = (int32_t)(cap > INT32_MAX ? INT32_MAX : cap);
	memcpy(t->blob + t->blob_len, b, len);
	t->tok[t->n_vocab++] = (struct tok_str){ (uint32_t)t->blob_len, (uint32_t)len };
	t->blob_len += len;
	return FW_OK;
}

/* Makes the token id (len bytes) special; it must not be one yet. */
static enum fw_status special_push(struct fw_tokenizer *t, int32_t id, uint32_t len,
				   struct fw_err *err)
{
	size_t old = t->cap_flag;
	if (!tok_grow((void **)&t->specials, &t->cap_specials, t->n_specials + 1,
		  sizeof(*t->specials)) ||
	    !tok_grow((void **)&t->sp_flag, &t->cap_flag, (size_t)id + 1, 1) ||
	    !tok_grow((void **)&t->sp_lens, &t->cap_lens, t->n_lens + 1, sizeof(uint32_t)))
		return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
	memset(t->sp_flag + old, 0, t->cap_flag - old);
	t->specials[t->n_specials++] = (struct special){ id, len };
	t->sp_flag[id] = 1;
	size_t k = 0;
	while (k < t->n_lens && t->sp_lens[k] > len)
		k++;
	if (k == t->n_lens || t->sp_lens[k] != len) {
		memmove(t->sp_lens + k + 1, t->sp_lens + k, (t->n_lens - k) * sizeof(uint32_t));
		t->sp_lens[k] = len;
		t->n_lens++;
	}
	const char *b = t->blob + t->tok[id].off;
	unsigned char c = (unsigned char)b[0];
	t->special_first[c >> 3] |= (uint8_t)(1u << (c & 7));
	t->special_byte = t->n_specials == 1 || t->special_byte == c ? c : -1;
	if (t->eos < 0 && len == 13 && !memcmp(b, "<|endoftext|>", 13))
		t->eos = id;
	return FW_OK;
}

bool fw_tokenizer_is_special(const struct fw_tokenizer *t, int32_t id)
{
	if (t && t->hf)
		return id >= 0 && (size_t)id < t->hf->n_is_special && t->hf->is_special[id];
	return t && id >= 0 && (size_t)id < t->cap_flag && t->sp_flag[id];
}

static enum fw_status hf_add(struct fw_tokenizer *t, const char *text, size_t len,
			     int32_t *id_out, struct fw_err *err);

enum fw_status fw_tokenizer_add_special(struct fw_tokenizer *t, const char *text, size_t len,
					int32_t *id_out, struct fw_err *err)
{
	if (!t || !text || len == 0 || len > 1024)
		return fw_errorf(err, FW_ERR_INVALID,
				 "tokenizer: a special token needs 1 to 1024 bytes of text");
	if (t->hf)
		return hf_add(t, text, len, id_out, err);
	int32_t id = vocab_find(t, text, len);
	if (id < 0) {
		enum fw_status s = vocab_push(t, text, len, err);
		if (s == FW_OK && 2 * (uint64_t)t->n_vocab > t->vmask + 1)
			s = vocab_index(t, err);
		else if (s == FW_OK)
			vocab_insert(t, t->n_vocab - 1);
		if (s != FW_OK)
			return s;
		id = t->n_vocab - 1;
	}
	if (!fw_tokenizer_is_special(t, id)) {
		enum fw_status s = special_push(t, id, (uint32_t)len, err);
		if (s != FW_OK)
			return s;
	}
	if (id_out)
		*id_out = id;
	return FW_OK;
}

/* hf: a special added to the pipeline, recorded in t->specials for
 * serialising, its bytes in t->tok for fw_tokenizer_token. */
static enum fw_status hf_add(struct fw_tokenizer *t, const char *text, size_t len,
			     int32_t *id_out, struct fw_err *err)
{
	int32_t id;
	bool was = false;
	int32_t old = vocab_get(&t->hf->vocab, text, len);
	if (old >= 0)
		was = fw_tokenizer_is_special(t, old);
	enum fw_status s = hf_add_special(t->hf, text, len, &id, err);
	if (s == FW_OK && id >= t->n_vocab)
		s = vocab_push(t, text, len, err);
	if (s == FW_OK && !was)
		s = special_push(t, id, (uint32_t)len, err);
	if (s == FW_OK && id_out)
		*id_out = id;
	return s;
}

/* --- construction ------------------------------------------------------------------ */

void *pcre_alloc(PCRE2_SIZE n, void *user)
{
	(void)user;
	return fw_malloc(n);
}

void pcre_free(void *p, void *user)
{
	(void)user;
	fw_free(p);
}

static struct fw_tokenizer *tok_new(enum fw_tokenizer_kind kind)
{
	struct fw_tokenizer *t = fw_calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->kind = kind;
	t->eos = -1;
	t->special_byte = -1;
	t->heap_threshold = SMALL_PIECE;
	t->cache.max = CACHE_DEFAULT;
	return t;
}

void fw_tokenizer_free(struct fw_tokenizer *t)
{
	if (!t)
		return;
	re_free(t->re);
	fw_free(t->tok);
	fw_free(t->blob);
	fw_free(t->vtab);
	fw_free(t->merges);
	fw_free(t->specials);
	fw_free(t->sp_flag);
	fw_free(t->sp_lens);
	pcache_set_size(&t->cache, 0);
	fw_free(t->src_vocab);
	fw_free(t->src_merges);
	fw_free(t->src_json);
	fw_free(t->config);
	hf_free(t->hf);
	fw_free(t);
}

struct fw_tokenizer *fw_tokenizer_new_byte(const char *const *specials, int n_specials,
					   struct fw_err *err)
{
	static const char *const def[] = { "<|endoftext|>" };
	if (!specials) {
		specials = def;
		n_specials = 1;
	}
	if (n_specials < 0 || n_specials > 1 << 20) {
		fw_errorf(err, FW_ERR_INVALID, "tokenizer: bad number of special tokens (%d)",
			  n_specials);
		return NULL;
	}
	struct fw_tokenizer *t = tok_new(FW_TOKENIZER_BYTE);
	if (!t) {
		fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		return NULL;
	}
	enum fw_status s = FW_OK;
	for (int b = 0; b < 256 && s == FW_OK; b++) {
		char c = (char)b;
		t->byte_id[b] = b;
		s = vocab_push(t, &c, 1, err);
	}
	if (s == FW_OK)
		s = vocab_index(t, err);
	for (int i = 0; i < n_specials && s == FW_OK; i++) {
		size_t len = specials[i] ? strlen(specials[i]) : 0;
		if (len < 2) {
			s = fw_errorf(err, FW_ERR_INVALID, "tokenizer: special token %d is %s", i,
				      len ? "a single byte, which already is a byte token" : "empty");
			break;
		}
		if (vocab_find(t, specials[i], len) >= 0) {
			s = fw_errorf(err, FW_ERR_INVALID, "tokenizer: special token '%s' given twice",
				      specials[i]);
			break;
		}
		int32_t id;
		s = fw_tokenizer_add_special(t, specials[i], len, &id, err);
		if (s == FW_OK && i == 0)
			t->eos = id;
	}
	if (s != FW_OK) {
		fw_tokenizer_free(t);
		return NULL;
	}
	return t;
}

/* GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves,
 * the other 68 bytes for U+0100... in byte order. */
static void byte_alphabet(uint16_t cp_of[256], int16_t byte_of[324])
{
	int n = 0;
	for (int i = 0; i < 324; i++)
		byte_of[i] = -1;
	for (int b = 0; b < 256; b++) {
		bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) ||
			    (b >= 0xAE && b <= 0xFF);
		cp_of[b] = (uint16_t)(keep ? b : 256 + n++);
		byte_of[cp_of[b]] = (int16_t)b;
	}
}

/* Decodes a token written in GPT-2's alphabet (UTF-8 text) to its bytes in
 * out (at least len bytes). Returns the byte count, or -1 if a character is
 * outside the alphabet. */
static long unalphabet(const int16_t byte_of[324], const char *s, size_t len, char *out)
{
	const unsigned char *u = (const unsigned char *)s;
	long n = 0;
	for (size_t i = 0; i < len;) {
		unsigned cp;
		if (u[i] < 0x80) {
			cp = u[i++];
		} else if ((u[i] & 0xE0) == 0xC0 && i + 1 < len && (u[i + 1] & 0xC0) == 0x80) {
			cp = (u[i] & 0x1Fu) << 6 | (u[i + 1] & 0x3Fu);
			i += 2;
		} else {
			return -1;
		}
		if (cp >= 324 || byte_of[cp] < 0)
			return -1;
		out[n++] = (char)byte_of[cp];
	}
	return n;
}

static int32_t merge_rank(const struct fw_tokenizer *t, int32_t a, int32_t b, int32_t *id)
{
	uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
	for (uint64_t i = (key * 0x9E3779B97F4A7C15ull) >> t->mshift;; i = (i + 1) & t->mmask) {
		const struct merge_slot *s = &t->merges[i];
		if (s->key == key) {
			*id = s->id;
			return s->rank;
		}
		if (s->key == EMPTY_KEY)
			return NO_RANK;
	}
}

/* Shows at most 40 bytes of a line in an error message. */
static const char *excerpt(const char *s, size_t len, char *buf, size_t cap)
{
	size_t n = len < 40 ? len : 40;
	size_t j = 0;
	for (size_t i = 0; i < n && j + 5 < cap; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f)
			j += (size_t)snprintf(buf + j, cap - j, "\\x%02x", c);
		else
			buf[j++] = (char)c;
	}
	if (n < len && j + 4 < cap)
		j += (size_t)snprintf(buf + j, cap - j, "...");
	buf[j < cap ? j : cap - 1] = '\0';
	return buf;
}

/* The specials of a loaded vocabulary: entries written <|...|>, printable
 * ASCII without spaces (GPT-2's <|endoftext|>, reserved tokens). */
static enum fw_status find_specials(struct fw_tokenizer *t, struct fw_err *err)
{
	enum fw_status s = FW_OK;
	for (int32_t id = 0; id < t->n_vocab && s == FW_OK; id++) {
		const char *b = t->blob + t->tok[id].off;
		size_t l = t->tok[id].len;
		bool sp = l >= 5 && l <= 1024 && !memcmp(b, "<|", 2) && !memcmp(b + l - 2, "|>", 2);
		for (size_t i = 0; sp && i < l; i++)
			sp = (unsigned char)b[i] > ' ' && (unsigned char)b[i] < 0x7f;
		if (sp)
			s = special_push(t, id, (uint32_t)l, err);
	}
	return s;
}

/* The vocabulary JSON text[0..len) read from path (a name for messages). */
static enum fw_status load_vocab(struct fw_tokenizer *t, const char *path, const char *text,
				 size_t len, const int16_t byte_of[324], const uint16_t cp_of[256],
				 struct fw_err *err)
{
	enum fw_status s = FW_OK;
	json_error_t je;
	json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	if (!root)
		return fw_errorf(err, FW_ERR_FORMAT, "%s:%d: not valid JSON: %s", path, je.line,
				 je.text);
	if (!json_is_object(root) || json_object_size(root) == 0) {
		s = fw_errorf(err, FW_ERR_FORMAT,
			      "%s: expected a JSON object of token -> id, got %s", path,
			      json_is_object(root) ? "an empty object" : "another JSON value");
		goto out;
	}
	size_t n = json_object_size(root);
	if (n > (size_t)INT32_MAX / 2) {
		s = fw_errorf(err, FW_ERR_FORMAT, "%s: too many tokens (%zu)", path, n);
		goto out;
	}
	t->tok = fw_calloc(n, sizeof(*t->tok));
	uint8_t *seen = fw_calloc(n, 1);
	if (!t->tok || !seen) {
		fw_free(seen);
		s = fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", path);
		goto out;
	}
	t->cap_vocab = (int32_t)n;
	t->n_vocab = (int32_t)n;
	const char *key;
	size_t klen;
	json_t *val;
	json_object_keylen_foreach(root, key, klen, val) {
		char buf[80];
		json_int_t id = json_is_integer(val) ? json_integer_value(val) : -1;
		if (id < 0 || id >= (json_int_t)n || seen[id]) {
			s = fw_errorf(err, FW_ERR_FORMAT,
				      "%s: token '%s': %s", path, excerpt(key, klen, buf, sizeof(buf)),
				      id >= 0 && id < (json_int_t)n ? "id given to two tokens" :
				      "id is not an integer in [0, number of tokens)");
			break;
		}
		seen[id] = 1;
		if (!tok_grow((void **)&t->blob, &t->blob_cap, t->blob_len + klen + 1, 1)) {
			s = fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", path);
			break;
		}
		long bl = unalphabet(byte_of, key, klen, t->blob + t->blob_len);
		if (bl <= 0) {
			s = fw_errorf(err, FW_ERR_FORMAT,
				      "%s: token '%s' (id %lld) is %s GPT-2's byte alphabet", path,
				      excerpt(key, klen, buf, sizeof(buf)), (long long)id,
				      bl == 0 ? "empty, not in" : "not written in");
			break;
		}
		t->tok[id] = (struct tok_str){ (uint32_t)t->blob_len, (uint32_t)bl };
		t->blob_len += (size_t)bl;
	}
	fw_free(seen);
	if (s == FW_OK)
		s = vocab_index(t, err);
	for (int b = 0; b < 256 && s == FW_OK; b++) {
		char c = (char)b;
		t->byte_id[b] = vocab_find(t, &c, 1);
		if (t->byte_id[b] < 0) {
			char u[3] = { (char)(0xC0 | cp_of[b] >> 6), (char)(0x80 | (cp_of[b] & 0x3F)), 0 };
			if (cp_of[b] < 0x80)
				u[0] = (char)cp_of[b], u[1] = 0;
			s = fw_errorf(err, FW_ERR_FORMAT,
				      "%s: no token for byte 0x%02x ('%s'); a byte-level BPE needs all 256",
				      path, b, u);
		}
	}
	if (s == FW_OK)
		s = find_specials(t, err);
out:
	json_decref(root);
	return s;
}

static enum fw_status load_merges(struct fw_tokenizer *t, const char *path, const char *text,
				  size_t len, const int16_t byte_of[324], struct fw_err *err)
{
	char *buf = NULL;
	enum fw_status s = FW_OK;
	size_t n_lines = 1;
	for (size_t i = 0; i < len; i++)
		n_lines += text[i] == '\n';
	uint64_t size = 64;
	while (size < 2 * (uint64_t)n_lines)
		size *= 2;
	t->merges = fw_malloc(size * sizeof(*t->merges));
	buf = fw_malloc(len + 1);
	if (!t->merges || !buf) {
		s = fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", path);
		goto out;
	}
	for (uint64_t i = 0; i < size; i++)
		t->merges[i].key = EMPTY_KEY;
	t->mmask = size - 1;
	t->mshift = 64 - __builtin_ctzll(size);
	int32_t rank = 0;
	long line = 0;
	for (size_t p = 0; p < len;) {
		const char *l = text + p, *nl = memchr(l, '\n', len - p);
		size_t ll = nl ? (size_t)(nl - l) : len - p;
		p += ll + 1;
		line++;
		if (ll && l[ll - 1] == '\r')
			ll--;
		if (ll == 0 || (line == 1 && ll >= 8 && !memcmp(l, "#version", 8)))
			continue;
		char ex[80];
		const char *sp = memchr(l, ' ', ll);
		size_t la = sp ? (size_t)(sp - l) : 0, lb = sp ? ll - la - 1 : 0;
		if (!sp || la == 0 || lb == 0 || memchr(sp + 1, ' ', lb)) {
			s = fw_errorf(err, FW_ERR_FORMAT,
				      "%s:%ld: expected two tokens separated by one space, got '%s'",
				      path, line, excerpt(l, ll, ex, sizeof(ex)));
			goto out;
		}
		long ba = unalphabet(byte_of, l, la, buf);
		long bb = ba > 0 ? unalphabet(byte_of, sp + 1, lb, buf + ba) : -1;
		if (bb <= 0) {
			s = fw_errorf(err, FW_ERR_FORMAT,
				      "%s:%ld: '%s' is not written in GPT-2's byte alphabet", path,
				      line, excerpt(l, ll, ex, sizeof(ex)));
			goto out;
		}
		int32_t a = vocab_find(t, buf, (size_t)ba);
		int32_t b = vocab_find(t, buf + ba, (size_t)bb);
		int32_t m = vocab_find(t, buf, (size_t)(ba + bb));
		if (a < 0 || b < 0 || m < 0) {
			s = fw_errorf(err, FW_ERR_FORMAT,
				      "%s:%ld: merge '%s': %s is not in the vocabulary", path, line,
				      excerpt(l, ll, ex, sizeof(ex)),
				      a < 0 ? "the left token" : b < 0 ? "the right token" :
				      "the merged token");
			goto out;
		}
		if (rank == INT32_MAX - 1) {
			s = fw_errorf(err, FW_ERR_FORMAT, "%s: too many merges", path);
			goto out;
		}
		/* A repeated merge takes its last rank, as in the reference. */
		uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
		uint64_t i = (key * 0x9E3779B97F4A7C15ull) >> t->mshift;
		while (t->merges[i].key != EMPTY_KEY && t->merges[i].key != key)
			i = (i + 1) & t->mmask;
		t->merges[i] = (struct merge_slot){ key, rank++, m };
	}
out:
	fw_free(buf);
	return s;
}

/* GPT-2's pattern, JIT-compiled where PCRE2 can (without JIT, unsupported
 * CPU or no executable memory, the interpreter gives the same matches). */
static enum fw_status compile_pattern(struct fw_tokenizer *t, struct fw_err *err)
{
	t->re = re_new(gpt2_pattern, strlen(gpt2_pattern), false, "tokenizer: GPT-2's pattern",
		       err);
	return t->re ? FW_OK : err->status;
}

/* A GPT-2 BPE from the texts of its two files (paths name them in messages).
 * The texts are kept, as they are, for fw_tokenizer_serialize. */
static struct fw_tokenizer *bpe_from_text(const char *vocab_path, char *vocab, size_t vlen,
					  const char *merges_path, char *merges, size_t mlen,
					  struct fw_err *err)
{
	struct fw_tokenizer *t = tok_new(FW_TOKENIZER_GPT2);
	if (!t) {
		fw_free(vocab);
		fw_free(merges);
		fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		return NULL;
	}
	t->src_vocab = vocab;
	t->src_vocab_len = vlen;
	t->src_merges = merges;
	t->src_merges_len = mlen;
	uint16_t cp_of[256];
	int16_t byte_of[324];
	byte_alphabet(cp_of, byte_of);
	enum fw_status s = load_vocab(t, vocab_path, vocab, vlen, byte_of, cp_of, err);
	if (s == FW_OK)
		s = load_merges(t, merges_path, merges, mlen, byte_of, err);
	if (s == FW_OK)
		s = compile_pattern(t, err);
	if (s != FW_OK) {
		fw_tokenizer_free(t);
		return NULL;
	}
	return t;
}

static struct fw_tokenizer *load_bpe(const char *vocab, const char *merges, struct fw_err *err)
{
	if (!vocab || !merges) {
		fw_errorf(err, FW_ERR_INVALID, "tokenizer: GPT-2 BPE needs a vocabulary file and a "
			  "merges file");
		return NULL;
	}
	char *vt = NULL, *mt = NULL;
	size_t vl = 0, ml = 0;
	if (read_file(vocab, &vt, &vl, err) != FW_OK)
		return NULL;
	if (read_file(merges, &mt, &ml, err) != FW_OK) {
		fw_free(vt);
		return NULL;
	}
	return bpe_from_text(vocab, vt, vl, merges, mt, ml, err);
}

struct fw_tokenizer *fw_tokenizer_load_bpe(const char *vocab_json, const char *merges_txt,
					   struct fw_err *err)
{
	return load_bpe(vocab_json, merges_txt, err);
}

struct fw_tokenizer *fw_tokenizer_load_gpt2(const char *encoder_json, const char *vocab_bpe,
					    struct fw_err *err)
{
	return load_bpe(encoder_json, vocab_bpe, err);
}

/* --- Hugging Face tokenizer.json ------------------------------------------------------ */

/* A string field of obj ("" when absent or null). */
static const char *str_field(json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);
	return json_is_string(v) ? json_string_value(v) : "";
}

/* Why tokenizer.json is not GPT-2's byte-level BPE, or NULL when it is. */
static const char *not_gpt2_bpe(json_t *root, json_t *model)
{
	json_t *pre = json_object_get(root, "pre_tokenizer");
	json_t *dec = json_object_get(root, "decoder");
	json_t *norm = json_object_get(root, "normalizer");
	if (!json_is_object(model))
		return "no \"model\" object: not a tokenizer.json (a vocab.json or encoder.json needs "
		       "its merges file too)";
	if (!json_is_object(json_object_get(model, "vocab")) ||
	    !json_is_array(json_object_get(model, "merges")))
		return "no model.vocab object and model.merges array";
	if (*str_field(model, "type") && strcmp(str_field(model, "type"), "BPE"))
		return "model.type is not BPE";
	if (json_is_true(json_object_get(model, "byte_fallback")))
		return "model.byte_fallback (a SentencePiece-style BPE) is not supported";
	if (*str_field(model, "continuing_subword_prefix") || *str_field(model, "end_of_word_suffix"))
		return "subword prefixes/suffixes are not GPT-2's byte-level BPE";
	if (json_is_number(json_object_get(model, "dropout")))
		return "BPE dropout is not supported";
	if (norm && !json_is_null(norm))
		return "a normalizer is not supported";
	json_t *tr = json_object_get(root, "truncation"), *pd = json_object_get(root, "padding");
	if ((tr && !json_is_null(tr)) || (pd && !json_is_null(pd)))
		return "truncation or padding is set";
	if (!json_is_object(pre) || strcmp(str_field(pre, "type"), "ByteLevel"))
		return "the pre-tokenizer is not GPT-2's ByteLevel (another regex, or Metaspace)";
	if (json_is_true(json_object_get(pre, "add_prefix_space")))
		return "ByteLevel add_prefix_space is not supported";
	if (json_is_false(json_object_get(pre, "use_regex")))
		return "ByteLevel without GPT-2's regex is not supported";
	if (dec && !json_is_null(dec) && strcmp(str_field(dec, "type"), "ByteLevel"))
		return "the decoder is not ByteLevel";
	json_t *post = json_object_get(root, "post_processor"), *a;
	if (post && !json_is_null(post) && strcmp(str_field(post, "type"), "ByteLevel"))
		return "a post-processor other than ByteLevel";
	size_t i;
	json_array_foreach(json_object_get(root, "added_tokens"), i, a)
		if (!json_is_true(json_object_get(a, "special")) ||
		    json_is_true(json_object_get(a, "lstrip")) ||
		    json_is_true(json_object_get(a, "rstrip")) ||
		    json_is_true(json_object_get(a, "single_word")))
			return "added tokens other than plain special tokens";
	return NULL;
}

/* model.merges as merges.txt text: "A B" strings or ["A", "B"] pairs. */
static char *merges_text(json_t *merges, size_t *len, const char *path, struct fw_err *err)
{
	size_t cap = 64, i;
	json_t *m;
	json_array_foreach(merges, i, m)
		cap += (json_is_string(m) ? json_string_length(m) :
			json_string_length(json_array_get(m, 0)) +
			json_string_length(json_array_get(m, 1))) + 2;
	char *out = fw_malloc(cap);
	if (!out) {
		fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", path);
		return NULL;
	}
	*len = 0;
	json_array_foreach(merges, i, m) {
		json_t *a = json_array_get(m, 0), *b = json_array_get(m, 1);
		bool pair = json_is_array(m) && json_array_size(m) == 2 && json_is_string(a) &&
			    json_is_string(b);
		if (!json_is_string(m) && !pair) {
			fw_free(out);
			fw_errorf(err, FW_ERR_FORMAT, "%s: model.merges[%zu] is neither \"A B\" nor "
				  "[\"A\", \"B\"]", path, i);
			return NULL;
		}
		if (json_is_string(m)) {
			memcpy(out + *len, json_string_value(m), json_string_length(m));
			*len += json_string_length(m);
		} else {
			memcpy(out + *len, json_string_value(a), json_string_length(a));
			*len += json_string_length(a);
			out[(*len)++] = ' ';
			memcpy(out + *len, json_string_value(b), json_string_length(b));
			*len += json_string_length(b);
		}
		out[(*len)++] = '\n';
	}
	out[*len] = '\0';
	return out;
}

/* A tokenizer.json pipeline from the file's text (kept for serialising). */
static struct fw_tokenizer *hf_from_text(const char *path, char *text, size_t len,
					 json_t *parsed, struct fw_err *err)
{
	struct fw_tokenizer *t = tok_new(FW_TOKENIZER_HF);
	if (!t) {
		fw_free(text);
		fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		return NULL;
	}
	t->src_json = text;
	t->src_json_len = len;
	if (!(t->hf = hf_load(path, text, len, parsed, err))) {
		fw_tokenizer_free(t);
		return NULL;
	}
	/* Each token's own bytes, for fw_tokenizer_token. */
	for (int32_t id = 0; id < t->hf->vocab.n; id++) {
		char *b = NULL;
		size_t bl = 0;
		enum fw_status s = hf_decode(t->hf, &id, 1, true, &b, &bl, err);
		if (s == FW_OK)
			s = vocab_push(t, b, bl, err);
		fw_free(b);
		if (s != FW_OK) {
			fw_tokenizer_free(t);
			return NULL;
		}
	}
	t->eos = hf_eos(t->hf);
	return t;
}

static struct fw_tokenizer *load_hf_file(const char *path, struct fw_err *err)
{
	char *text = NULL, *vocab = NULL, *merges = NULL;
	size_t len = 0, vl = 0, ml = 0;
	struct fw_tokenizer *t = NULL;
	if (read_file(path, &text, &len, err) != FW_OK)
		return NULL;
	json_error_t je;
	json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	if (!root) {
		fw_free(text);
		fw_errorf(err, FW_ERR_FORMAT, "%s:%d: not valid JSON: %s", path, je.line, je.text);
		return NULL;
	}
	json_t *model = json_object_get(root, "model"), *added = json_object_get(root, "added_tokens");
	if (!json_is_object(root) || not_gpt2_bpe(root, model)) {
		/* Not GPT-2's byte-level BPE: the general pipeline. */
		t = hf_from_text(path, text, len, root, err);
		json_decref(root);
		return t;
	}
	fw_free(text);
	text = NULL;
	char *dump = json_dumps(json_object_get(model, "vocab"), JSON_COMPACT);
	vl = dump ? strlen(dump) : 0;
	vocab = dump ? fw_malloc(vl + 1) : NULL;
	if (vocab)
		memcpy(vocab, dump, vl + 1);
	free(dump);
	merges = vocab ? merges_text(json_object_get(model, "merges"), &ml, path, err) : NULL;
	if (!vocab && !err->status)
		fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", path);
	if (!merges) {
		fw_free(vocab);
		goto out;
	}
	t = bpe_from_text(path, vocab, vl, path, merges, ml, err);
	/* Added tokens: special ones become specials, at the ids the file gives. */
	size_t i;
	json_t *a;
	json_array_foreach(added, i, a) {
		json_t *id = json_object_get(a, "id"), *content = json_object_get(a, "content");
		if (!t)
			break;
		int32_t got = -1;
		if (!json_is_integer(id) || !json_is_string(content) ||
		    fw_tokenizer_add_special(t, json_string_value(content),
					     json_string_length(content), &got, err) != FW_OK ||
		    got != json_integer_value(id)) {
			if (!err->status || got >= 0)
				fw_errorf(err, FW_ERR_FORMAT, "%s: added_tokens[%zu] %s", path, i,
					  !json_is_integer(id) || !json_is_string(content) ?
					  "needs an integer id and a string content" :
					  "has an id that is neither its vocabulary id nor the next one");
			fw_tokenizer_free(t);
			t = NULL;
		}
	}
out:
	json_decref(root);
	return t;
}

struct fw_tokenizer *fw_tokenizer_load_hf_json(const char *path, struct fw_err *err)
{
	struct fw_tokenizer *t = load_hf_file(path, err);
	if (!t)
		return NULL;
	/* tokenizer_config.json beside it, kept as it is */
	size_t n = strlen(path), d = n;
	while (d && path[d - 1] != '/')
		d--;
	char *cp = fw_malloc(d + sizeof("tokenizer_config.json"));
	if (!cp) {
		fw_tokenizer_free(t);
		fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		return NULL;
	}
	memcpy(cp, path, d);
	memcpy(cp + d, "tokenizer_config.json", sizeof("tokenizer_config.json"));
	if (access(cp, F_OK) == 0 &&
	    (read_file(cp, &t->config, &t->config_len, err) != FW_OK)) {
		fw_tokenizer_free(t);
		t = NULL;
	}
	fw_free(cp);
	return t;
}

const char *fw_tokenizer_config(const struct fw_tokenizer *t, size_t *len)
{
	if (len)
		*len = t->config ? t->config_len : 0;
	return t->config;
}

enum fw_status fw_tokenizer_set_config(struct fw_tokenizer *t, const char *text, size_t len,
				       struct fw_err *err)
{
	char *c = text ? fw_malloc(len + 1) : NULL;
	if (text && !c)
		return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
	if (c) {
		memcpy(c, text, len);
		c[len] = '\0';
	}
	fw_free(t->config);
	t->config = c;
	t->config_len = c ? len : 0;
	return FW_OK;
}

/* --- serialisation: one JSON text that rebuilds the tokenizer ------------------------ */

char *fw_tokenizer_serialize(const struct fw_tokenizer *t, struct fw_err *err)
{
	json_t *root = json_object(), *sp = json_array();
	char *out = NULL;
	bool ok = root && sp && !json_object_set_new(root, "kind",
						     json_string(fw_tokenizer_name(t)));
	for (size_t i = 0; ok && i < t->n_specials; i++) {
		const struct tok_str *ts = &t->tok[t->specials[i].id];
		json_t *str = json_stringn(t->blob + ts->off, ts->len);
		if (!str) {
			fw_errorf(err, FW_ERR_INVALID, "tokenizer: special token %lld is not valid "
				  "UTF-8 and cannot be stored", (long long)t->specials[i].id);
			goto out;
		}
		ok = !json_array_append_new(sp, str);
	}
	ok = ok && !json_object_set(root, "specials", sp);
	if (ok && t->kind == FW_TOKENIZER_GPT2) {
		json_t *v = json_stringn(t->src_vocab, t->src_vocab_len);
		json_t *m = json_stringn(t->src_merges, t->src_merges_len);
		ok = v && m && !json_object_set_new(root, "vocab", v) &&
		     !json_object_set_new(root, "merges", m);
		if (!v || !m) {
			json_decref(v);
			json_decref(m);
		}
	}
	if (ok && t->config) {
		json_t *j = json_stringn(t->config, t->config_len);
		ok = j && !json_object_set_new(root, "config", j);
	}
	if (ok && t->hf) {
		json_t *j = json_stringn(t->src_json, t->src_json_len);
		ok = j && !json_object_set_new(root, "json", j);
	}
	char *dump = ok ? json_dumps(root, JSON_COMPACT) : NULL;
	out = dump ? fw_malloc(strlen(dump) + 1) : NULL;
	if (out)
		memcpy(out, dump, strlen(dump) + 1);
	else
		fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
	free(dump);
out:
	json_decref(sp);
	json_decref(root);
	return out;
}

static char *dup_text(json_t *s, size_t *len)
{
	*len = json_string_length(s);
	char *p = fw_malloc(*len + 1);
	if (p)
		memcpy(p, json_string_value(s), *len + 1);
	return p;
}

struct fw_tokenizer *fw_tokenizer_deserialize(const char *text, size_t len, const char *where,
					      struct fw_err *err)
{
	json_error_t je;
	json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	json_t *kind = json_object_get(root, "kind"), *sp = json_object_get(root, "specials");
	json_t *vocab = json_object_get(root, "vocab"), *merges = json_object_get(root, "merges");
	json_t *hj = json_object_get(root, "json");
	struct fw_tokenizer *t = NULL;
	size_t n = json_array_size(sp), i;
	const char *k = json_string_value(kind);
	bool gpt2 = k && !strcmp(k, "gpt2"), hf = k && !strcmp(k, "hf");
	if (!root || !k || !json_is_array(sp) || (!gpt2 && !hf && strcmp(k, "byte")) ||
	    (gpt2 && (!json_is_string(vocab) || !json_is_string(merges))) ||
	    (hf && !json_is_string(hj))) {
		fw_errorf(err, FW_ERR_FORMAT, "%s: not a stored tokenizer (%s)", where,
			  root ? "expected kind byte, gpt2 or hf with its specials and files" : je.text);
		goto out;
	}
	for (i = 0; i < n; i++)
		if (!json_is_string(json_array_get(sp, i))) {
			fw_errorf(err, FW_ERR_FORMAT, "%s: stored tokenizer: special %zu is not a "
				  "string", where, i);
			goto out;
		}
	if (hf) {
		size_t jl;
		char *jt = dup_text(hj, &jl);
		if (!jt) {
			fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
			goto out;
		}
		t = hf_from_text(where, jt, jl, NULL, err);
	} else if (gpt2) {
		size_t vl, ml;
		char *vt = dup_text(vocab, &vl), *mt = vt ? dup_text(merges, &ml) : NULL;
		if (!mt) {
			fw_free(vt);
			fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
			goto out;
		}
		t = bpe_from_text(where, vt, vl, where, mt, ml, err);
	} else {
		const char **names = fw_calloc(n + 1, sizeof(*names));
		for (i = 0; names && i < n; i++)
			names[i] = json_string_value(json_array_get(sp, i));
		t = names ? fw_tokenizer_new_byte(names, (int)n, err) : NULL;
		if (!names)
			fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		fw_free(names);
	}
	for (i = 0; t && (gpt2 || hf) && i < n; i++) {
		json_t *s = json_array_get(sp, i);
		if (fw_tokenizer_add_special(t, json_string_value(s), json_string_length(s), NULL,
					     err) != FW_OK) {
			fw_tokenizer_free(t);
			t = NULL;
		}
	}
	json_t *cfg = json_object_get(root, "config");
	if (t && json_is_string(cfg) && fw_tokenizer_set_config(t, json_string_value(cfg),
								 json_string_length(cfg), err) != FW_OK) {
		fw_tokenizer_free(t);
		t = NULL;
	}
out:
	json_decref(root);
	return t;
}

/* --- byte-pair merging --------------------------------------------------------------- */

/* Merges sym[0..n) in place, the reference's way; returns the new length. */
static size_t bpe_small(const struct fw_tokenizer *t, int32_t *sym, size_t n)
{
	int32_t rank[SMALL_PIECE], mid[SMALL_PIECE];
	for (size_t i = 0; i + 1 < n; i++)
		rank[i] = merge_rank(t, sym[i], sym[i + 1], &mid[i]);
	while (n > 1) {
		int32_t best = NO_RANK;
		size_t bi = 0;
		for (size_t i = 0; i + 1 < n; i++)
			if (rank[i] < best) {
				best = rank[i];
				bi = i;
			}
		if (best == NO_RANK)
			break;
		/* Every occurrence of the pair, left to right; bi is the first. */
		int32_t a = sym[bi], b = sym[bi + 1], m = mid[bi];
		size_t w = bi;
		for (size_t i = bi; i < n;) {
			if (i + 1 < n && sym[i] == a && sym[i + 1] == b) {
				sym[w++] = m;
				i += 2;
			} else {
				sym[w++] = sym[i++];
			}
		}
		n = w;
		for (size_t i = bi ? bi - 1 : 0; i + 1 < n; i++)
			rank[i] = merge_rank(t, sym[i], sym[i + 1], &mid[i]);
	}
	return n;
}

static inline bool pair_before(const struct pair *x, const struct pair *y)
{
	return x->rank < y->rank || (x->rank == y->rank && x->left < y->left);
}

void heap_push(struct pair *h, size_t *n, struct pair p)
{
	size_t i = (*n)++;
	while (i > 0) {
		size_t up = (i - 1) / 2;
		if (!pair_before(&p, &h[up]))
			break;
		h[i] = h[up];
		i = up;
	}
	h[i] = p;
}

struct pair heap_pop(struct pair *h, size_t *n)
{
	struct pair top = h[0], last = h[--*n];
	size_t i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= *n)
			break;
		if (c + 1 < *n && pair_before(&h[c + 1], &h[c]))
			c++;
		if (!pair_before(&h[c], &last))
			break;
		h[i] = h[c];
		i = c;
	}
	if (*n)
		h[i] = last;
	return top;
}

/* The same merges as bpe_small in O(n log n): lowest (rank, position)
 * first. Merges made while a rank is being applied can create pairs of a
 * lower rank (only with unusual merge lists); the reference applies those in
 * a later round, so they wait in `later` until the current rank is done. */
static enum fw_status bpe_heap(const struct fw_tokenizer *t, int32_t *sym, size_t *np,
			       struct fw_err *err)
{
	size_t n = *np;
	uint32_t *next = fw_malloc(n * sizeof(uint32_t)), *prev = fw_malloc(n * sizeof(uint32_t));
	uint32_t *ver = fw_calloc(n, sizeof(uint32_t));
	struct pair *heap = fw_malloc(3 * n * sizeof(struct pair));
	struct pair *later = fw_malloc(2 * n * sizeof(struct pair));
	enum fw_status s = FW_OK;
	if (!next || !prev || !ver || !heap || !later) {
		s = fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		goto out;
	}
	const uint32_t END = UINT32_MAX;
	size_t nh = 0, nl = 0;
	for (size_t i = 0; i < n; i++) {
		next[i] = i + 1 < n ? (uint32_t)i + 1 : END;
		prev[i] = i ? (uint32_t)i - 1 : END;
	}
	for (size_t i = 0; i + 1 < n; i++) {
		struct pair p = { .left = (uint32_t)i, .right = (uint32_t)i + 1 };
		p.rank = merge_rank(t, sym[i], sym[i + 1], &p.id);
		if (p.rank != NO_RANK)
			heap_push(heap, &nh, p);
	}
	int32_t cur = -1;
	for (;;) {
		if (nl && (nh == 0 || heap[0].rank != cur)) {
			for (size_t i = 0; i < nl; i++)
				heap_push(heap, &nh, later[i]);
			nl = 0;
		}
		if (nh == 0)
			break;
		struct pair p = heap_pop(heap, &nh);
		uint32_t l = p.left, r = p.right;
		/* ver is odd once a node has been merged away. */
		if (next[l] != r || ver[l] != p.vl || ver[r] != p.vr || (ver[l] & 1))
			continue;
		cur = p.rank;
		sym[l] = p.id;
		ver[l] += 2;
		ver[r] |= 1;
		next[l] = next[r];
		if (next[r] != END)
			prev[next[r]] = l;
		uint32_t side[2][2] = { { prev[l], l }, { l, next[l] } };
		for (int k = 0; k < 2; k++) {
			uint32_t a = side[k][0], b = side[k][1];
			if (a == END || b == END)
				continue;
			struct pair q = { .left = a, .right = b, .vl = ver[a], .vr = ver[b] };
			q.rank = merge_rank(t, sym[a], sym[b], &q.id);
			if (q.rank == NO_RANK)
				continue;
			if (q.rank <= cur)
				later[nl++] = q;
			else
				heap_push(heap, &nh, q);
		}
	}
	size_t w = 0;
	for (uint32_t i = 0; i != END; i = next[i])
		sym[w++] = sym[i];
	*np = w;
out:
	fw_free(next);
	fw_free(prev);
	fw_free(ver);
	fw_free(heap);
	fw_free(later);
	return s;
}

/* --- piece cache -------------------------------------------------------------------- */

void fw_tokenizer_set_cache_size(struct fw_tokenizer *t, size_t max_entries)
{
	pcache_set_size(&t->cache, max_entries);
}

void pcache_set_size(struct piece_cache *c, size_t max_entries)
{
	fw_free(c->slot);
	fw_free(c->keys);
	fw_free(c->ids);
	*c = (struct piece_cache){ .max = max_entries > (1u << 26) ? (1u << 26) : max_entries };
}

static void cache_clear(struct piece_cache *c)
{
	memset(c->slot, 0, (c->mask + 1) * sizeof(*c->slot));
	c->n = c->keys_n = c->ids_n = 0;
}

const int32_t *pcache_get(const struct piece_cache *c, const char *s, size_t n, uint64_t h,
			  size_t *n_ids)
{
	if (!c->slot)
		return NULL;
	for (uint64_t i = h & c->mask;; i = (i + 1) & c->mask) {
		const struct cache_slot *e = &c->slot[i];
		if (e->key_len == 0)
			return NULL;
		if (e->hash == h && e->key_len == n && !memcmp(c->keys + e->key_off, s, n)) {
			*n_ids = e->n_ids;
			return c->ids + e->ids_off;
		}
	}
}

void pcache_put(struct piece_cache *c, const char *s, size_t n, uint64_t h, const int32_t *ids,
		size_t n_ids)
{
	if (n == 0 || n > CACHE_KEY_MAX || n_ids > UINT16_MAX || c->max == 0)
		return;
	if (!c->slot) {
		uint64_t size = 64;
		while (size < 2 * (uint64_t)c->max)
			size *= 2;
		c->slot = fw_calloc(size, sizeof(*c->slot));
		if (!c->slot)
			return;
		c->mask = size - 1;
	}
	if (c->n >= c->max)
		cache_clear(c);
	if (!tok_grow((void **)&c->keys, &c->keys_cap, c->keys_n + n, 1) ||
	    !tok_grow((void **)&c->ids, &c->ids_cap, c->ids_n + n_ids, sizeof(int32_t)) ||
	    c->ids_n + n_ids > UINT32_MAX || c->keys_n + n > UINT32_MAX)
		return;
	uint64_t i = h & c->mask;
	while (c->slot[i].key_len)
		i = (i + 1) & c->mask;
	c->slot[i] = (struct cache_slot){ h, (uint32_t)c->keys_n, (uint32_t)c->ids_n, (uint16_t)n,
					  (uint16_t)n_ids };
	memcpy(c->keys + c->keys_n, s, n);
	memcpy(c->ids + c->ids_n, ids, n_ids * sizeof(int32_t));
	c->keys_n += n;
	c->ids_n += n_ids;
	c->n++;
}

/* --- encoding ----------------------------------------------------------------------- */

static enum fw_status encode_piece(struct fw_tokenizer *t, const char *s, size_t n,
				   struct fw_token_buf *out, struct fw_err *err)
{
	if (!buf_reserve(out, n))
		return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
	int32_t *sym = out->ids + out->n;
	if (n == 1) {
		sym[0] = t->byte_id[(unsigned char)s[0]];
		out->n++;
		return FW_OK;
	}
	uint64_t h = 0;
	bool cacheable = n <= CACHE_KEY_MAX && t->cache.max > 0;
	if (cacheable) {
		h = hash_bytes(s, n);
		size_t nc;
		const int32_t *c = pcache_get(&t->cache, s, n, h, &nc);
		if (c) {
			memcpy(sym, c, nc * sizeof(int32_t));
			out->n += nc;
			return FW_OK;
		}
	}
	for (size_t i = 0; i < n; i++)
		sym[i] = t->byte_id[(unsigned char)s[i]];
	size_t m = n;
	if (n <= t->heap_threshold && n <= SMALL_PIECE) {
		m = bpe_small(t, sym, n);
	} else {
		enum fw_status st = bpe_heap(t, sym, &m, err);
		if (st != FW_OK)
			return st;
	}
	if (cacheable)
		pcache_put(&t->cache, s, n, h, sym, m);
	out->n += m;
	return FW_OK;
}

/* Well-formed UTF-8 text, no specials: the regex's pieces, merged. */
static enum fw_status encode_valid(struct fw_tokenizer *t, const char *s, size_t n,
				   struct fw_token_buf *out, struct fw_err *err)
{
	PCRE2_SIZE off = 0;
	const struct hf_re *re = t->re;
	PCRE2_SIZE *ov = pcre2_get_ovector_pointer(re->md);
	while (off < n) {
		int rc = re->jit ? pcre2_jit_match(re->re, (PCRE2_SPTR)s, n, off, 0, re->md, NULL)
				 : pcre2_match(re->re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK, re->md,
					      NULL);
		if (rc < 0) {
			PCRE2_UCHAR msg[160];
			pcre2_get_error_message(rc, msg, sizeof(msg));
			return fw_errorf(err, rc == PCRE2_ERROR_NOMEMORY ? FW_ERR_NOMEM :
					 FW_ERR_INTERNAL, "tokenizer: PCRE2 match failed at byte %zu: %s",
					 (size_t)off, (const char *)msg);
		}
		PCRE2_SIZE a = ov[0], b = ov[1];
		enum fw_status st = FW_OK;
		/* The pattern matches every character, so a == off; be safe anyway. */
		if (a > off && a <= n)
			st = encode_piece(t, s + off, a - off, out, err);
		if (b <= a || b > n) {
			for (b = a + 1; b < n && ((unsigned char)s[b] & 0xC0) == 0x80; b++)
				;
		}
		if (st == FW_OK)
			st = encode_piece(t, s + a, b - a, out, err);
		if (st != FW_OK)
			return st;
		off = b;
	}
	return FW_OK;
}

/* Text without specials: bytes that do not start well-formed UTF-8 are
 * byte tokens, the stretches between them are encoded separately. */
static enum fw_status encode_plain(struct fw_tokenizer *t, const char *s, size_t n,
				   struct fw_token_buf *out, struct fw_err *err)
{
	if (t->kind == FW_TOKENIZER_BYTE) {
		if (!buf_reserve(out, n))
			return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		for (size_t i = 0; i < n; i++)
			out->ids[out->n++] = (unsigned char)s[i];
		return FW_OK;
	}
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0;
	while (i < n) {
		size_t v = u8_valid(u + i, n - i, NULL);
		if (v == 0) {
			if (!buf_reserve(out, 1))
				return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
			out->ids[out->n++] = t->byte_id[u[i++]];
			continue;
		}
		enum fw_status st = encode_valid(t, s + i, v, out, err);
		if (st != FW_OK)
			return st;
		i += v;
	}
	return FW_OK;
}

/* The leftmost special in s[0..n) (the longest at that position): its id,
 * or -1; *at is its offset (n when none), *len its length. */
static int32_t find_special(const struct fw_tokenizer *t, const char *s, size_t n, size_t *at,
			    size_t *len)
{
	const unsigned char *u = (const unsigned char *)s;
	for (size_t i = 0; i < n; i++) {
		if (t->special_byte >= 0) {
			const unsigned char *q = memchr(u + i, t->special_byte, n - i);
			if (!q)
				break;
			i = (size_t)(q - u);
		} else if (!(t->special_first[u[i] >> 3] & (1u << (u[i] & 7)))) {
			continue;
		}
		for (size_t k = 0; k < t->n_lens; k++) {
			if (t->sp_lens[k] > n - i)
				continue;
			int32_t id = vocab_find(t, s + i, t->sp_lens[k]);
			if (fw_tokenizer_is_special(t, id)) {
				*at = i;
				*len = t->sp_lens[k];
				return id;
			}
		}
	}
	*at = n;
	return -1;
}

enum fw_status fw_tokenizer_encode(struct fw_tokenizer *t, const char *text, size_t len,
				   bool allow_special, struct fw_token_buf *out,
				   struct fw_err *err)
{
	return fw_tokenizer_encode_ex(t, text, len, allow_special ? FW_TOKENIZE_SPLIT_SPECIAL |
				      FW_TOKENIZE_ADD_SPECIAL : 0, out, err);
}

enum fw_status fw_tokenizer_encode_ex(struct fw_tokenizer *t, const char *text, size_t len,
				      unsigned flags, struct fw_token_buf *out, struct fw_err *err)
{
	if (!t || !out || (!text && len))
		return fw_errorf(err, FW_ERR_INVALID, "tokenizer: encode needs a tokenizer, text "
				 "and an output buffer");
	bool allow_special = flags & FW_TOKENIZE_SPLIT_SPECIAL;
	if (t->hf)
		return hf_encode(t->hf, &t->cache, text ? text : "", len, allow_special,
				 flags & FW_TOKENIZE_ADD_SPECIAL, out, NULL, err);
	size_t start = out->n;
	enum fw_status s = FW_OK;
	while (len > 0 && s == FW_OK) {
		size_t at = len, sl = 0;
		int32_t sp = allow_special && t->n_specials ?
			find_special(t, text, len, &at, &sl) : -1;
		s = encode_plain(t, text, at, out, err);
		if (s == FW_OK && sp >= 0) {
			if (!buf_reserve(out, 1)) {
				s = fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
				break;
			}
			out->ids[out->n++] = sp;
			at += sl;
		}
		text += at;
		len -= at;
	}
	if (s != FW_OK)
		out->n = start;
	return s;
}

/* The end of the character (or ill-formed subpart) that starts at u[c]. */
static size_t char_end(const unsigned char *u, size_t len, size_t c)
{
	size_t bad = 1, v = u8_valid(u + c, len - c, &bad);
	return c + (v ? u8_len(u[c]) : bad);
}

enum fw_status tok_encode_offsets(struct fw_tokenizer *t, const char *text, size_t len,
				  unsigned flags, struct fw_token_buf *out, struct albuf *offs,
				  struct fw_err *err)
{
	if (t && t->hf)
		return hf_encode(t->hf, &t->cache, text ? text : "", len,
				 flags & FW_TOKENIZE_SPLIT_SPECIAL, flags & FW_TOKENIZE_ADD_SPECIAL, out,
				 offs, err);
	size_t start = out ? out->n : 0;
	enum fw_status s = fw_tokenizer_encode_ex(t, text, len, flags, out, err);
	if (!offs || s != FW_OK)
		return s;
	/* byte and gpt2 tokens are the text's bytes in order: each token's
	 * bytes, widened to whole characters (an ill-formed subpart is one) */
	const unsigned char *u = (const unsigned char *)text;
	size_t at = 0, cs = 0, ce = 0;  /* the character [cs, ce) that holds byte at */
	for (size_t i = start; s == FW_OK && i < out->n; i++) {
		size_t n = t->tok[out->ids[i]].len;
		struct tspan sp = { at, at };
		if (n) {
			while (ce <= at)
				cs = ce, ce = char_end(u, len, cs);
			size_t xe = ce;
			while (xe < at + n)
				xe = char_end(u, len, xe);
			sp = (struct tspan){ cs, xe };
		}
		if (!al_put(offs, &sp, 1))
			s = fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
		at += n;
	}
	if (s != FW_OK && out)
		out->n = start;
	return s;
}

/* --- decoding and lookups -------------------------------------------------------------- */

enum fw_status fw_tokenizer_decode(const struct fw_tokenizer *t, const int32_t *ids, size_t n,
				   char **out, size_t *len, struct fw_err *err)
{
	*out = NULL;
	if (len)
		*len = 0;
	if (t->hf)
		return hf_decode(t->hf, ids, n, false, out, len, err);
	size_t total = 0;
	for (size_t i = 0; i < n; i++) {
		if (ids[i] < 0 || ids[i] >= t->n_vocab)
			return fw_errorf(err, FW_ERR_INVALID,
					 "tokenizer: token %lld at position %zu is outside the "
					 "vocabulary (%d)", (long long)ids[i], i, t->n_vocab);
		total += t->tok[ids[i]].len;
	}
	char *b = fw_malloc(total + 1);
	if (!b)
		return fw_errorf(err, FW_ERR_NOMEM, "tokenizer: out of memory");
	size_t w = 0;
	for (size_t i = 0; i < n; i++) {
		memcpy(b + w, t->blob + t->tok[ids[i]].off, t->tok[ids[i]].len);
		w += t->tok[ids[i]].len;
	}
	b[w] = '\0';
	*out = b;
	if (len)
		*len = w;
	return FW_OK;
}

const char *fw_tokenizer_token(const struct fw_tokenizer *t, int32_t id, size_t *len)
{
	if (!t || id < 0 || id >= t->n_vocab)
		return NULL;
	if (len)
		*len = t->tok[id].len;
	return t->blob + t->tok[id].off;
}

int32_t fw_tokenizer_find(const struct fw_tokenizer *t, const char *bytes, size_t len)
{
	if (t && bytes && t->hf)
		return vocab_get(&t->hf->vocab, bytes, len);
	return t && bytes ? vocab_find(t, bytes, len) : -1;
}

int32_t fw_tokenizer_vocab_size(const struct fw_tokenizer *t)
{
	return t->n_vocab;
}

int32_t fw_tokenizer_eos(const struct fw_tokenizer *t)
{
	return t->eos;
}

struct hf_tok *tok_hf(const struct fw_tokenizer *t)
{
	return t ? t->hf : NULL;
}

enum fw_tokenizer_kind fw_tokenizer_kind(const struct fw_tokenizer *t)
{
	return t->kind;
}

const char *fw_tokenizer_name(const struct fw_tokenizer *t)
{
	return t->kind == FW_TOKENIZER_BYTE ? "byte" : t->kind == FW_TOKENIZER_HF ? "hf" : "gpt2";
}

void fw_tokenizer_set_heap_threshold(struct fw_tokenizer *t, size_t n)
{
	t->heap_threshold = n;
}

bool fw_tokenizer_uses_jit(const struct fw_tokenizer *t)
{
	return t->re && t->re->jit;
}
