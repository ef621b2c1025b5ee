/* tokenizer_hf.h - the Hugging Face tokenizer.json pipeline (private to core/formats/src/tokenizer*.c).
 *
 * normalizer -> pre-tokenizer -> model -> post-processor, and the decoder, as
 * Hugging Face's tokenizers library (Rust, 0.2x) runs them, with its offsets:
 *
 *   tokenizer_hf.c         loading tokenizer.json, added tokens, post-processors,
 *                          decoders, encode/decode
 *   tokenizer_hf_text.c    Unicode (ICU), normalizers, pre-tokenizers (PCRE2)
 *   tokenizer_hf_models.c  BPE, WordPiece, Unigram
 *
 * Every component is a small tagged struct read from its JSON object; what
 * is not implemented is refused by name when the file is loaded.
 */
#ifndef FW_TOKENIZER_HF_H
#define FW_TOKENIZER_HF_H

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <jansson.h>

#include "fw/tokenizer.h"

/* --- shared with tokenizer.c ------------------------------------------------------ */

/* Grows *p (elements of size elem, capacity *cap) to hold need elements. */
bool tok_grow(void **p, size_t *cap, size_t need, size_t elem);
/* Length of the longest well-formed UTF-8 prefix of s[0..n) (RFC 3629); with
 * bad, the length of the maximal ill-formed subpart found there (>= 1) when
 * the prefix is not all of s. */
size_t u8_valid(const unsigned char *s, size_t n, size_t *bad);

/* A candidate merge; the heap orders by (rank, left). */
struct pair {
	int32_t rank, id;               /* rank and result of merging left, right */
	uint32_t left, right;           /* node indices */
	uint32_t vl, vr;                /* their versions when queued */
};
void heap_push(struct pair *h, size_t *n, struct pair p);
struct pair heap_pop(struct pair *h, size_t *n);
uint64_t hash_bytes(const void *p, size_t n);

/* Piece bytes -> ids, for pieces of up to CACHE_KEY_MAX bytes: an
 * open-addressing table of at most max entries, emptied when full. */
#define CACHE_KEY_MAX 64
struct cache_slot {
	uint64_t hash;
	uint32_t key_off, ids_off;      /* into keys, ids */
	uint16_t key_len, n_ids;        /* key_len 0 = free */
};
struct piece_cache {
	struct cache_slot *slot;
	uint64_t mask;
	size_t n, max;                  /* max 0: no caching */
	char *keys;
	size_t keys_n, keys_cap;
	int32_t *ids;
	size_t ids_n, ids_cap;
};
/* Empties the cache and frees its memory; max_entries 0 disables it. */
void pcache_set_size(struct piece_cache *c, size_t max_entries);
/* The ids of piece s[0..n) (hash h = hash_bytes(s, n)), or NULL. */
const int32_t *pcache_get(const struct piece_cache *c, const char *s, size_t n, uint64_t h,
			  size_t *n_ids);
/* Best effort: a failed allocation only means the piece is not cached. */
void pcache_put(struct piece_cache *c, const char *s, size_t n, uint64_t h, const int32_t *ids,
		size_t n_ids);
/* PCRE2's memory from fw_malloc. */
void *pcre_alloc(PCRE2_SIZE n, void *user);
void pcre_free(void *p, void *user);
/* The index of t in names[0..n), or -1. */
int name_index(const char *const *names, size_t n, const char *t);

/* The hf pipeline of an hf tokenizer, else NULL (tokenizer.c). */
struct hf_tok *tok_hf(const struct fw_tokenizer *t);
struct tspan;
struct albuf;
/* fw_tokenizer_encode_ex, and each token's byte range in text to offs. */
enum fw_status tok_encode_offsets(struct fw_tokenizer *t, const char *text, size_t len,
				  unsigned flags, struct fw_token_buf *out, struct albuf *offs,
				  struct fw_err *err);

/* --- strings ------------------------------------------------------------------ */

struct sbuf {                           /* growable byte string, fw_malloc'd */
	char *b;
	size_t n, cap;
};
bool sb_grow(struct sbuf *s, size_t n);
bool sb_cp_slow(struct sbuf *s, uint32_t cp);
uint32_t u8_next_slow(const char *s, size_t n, size_t *i);
void sb_free(struct sbuf *s);

/* Room for n more bytes and a NUL. */
static inline bool sb_reserve(struct sbuf *s, size_t n)
{
	return s->n + n < s->cap || sb_grow(s, n);
}

static inline bool sb_put(struct sbuf *s, const void *p, size_t n)
{
	if (!sb_reserve(s, n))
		return false;
	if (n)
		memcpy(s->b + s->n, p, n);
	s->n += n;
	s->b[s->n] = '\0';
	return true;
}

/* Appends cp as UTF-8. */
static inline bool sb_cp(struct sbuf *s, uint32_t cp)
{
	if (cp >= 0x80 || !sb_reserve(s, 1))
		return cp >= 0x80 && sb_cp_slow(s, cp);
	s->b[s->n++] = (char)cp;
	s->b[s->n] = '\0';
	return true;
}

static inline size_t u8_len(unsigned char lead)
{
	return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

/* The code point at s[*i] (valid UTF-8 assumed); advances *i. */
static inline uint32_t u8_next(const char *s, size_t n, size_t *i)
{
	unsigned char c = (unsigned char)s[*i];
	if (c < 0x80) {
		(*i)++;
		return c;
	}
	return u8_next_slow(s, n, i);
}

/* Where a byte of text came from: the byte range [a, b) of the original
 * input (Hugging Face's NormalizedString alignments: each byte of a
 * character gets the range of the original character it stands for). */
struct tspan {
	size_t a, b;
};
/* A growable array of them, one per byte of a string being built. */
struct albuf {
	struct tspan *v;
	size_t n, cap;
};
/* Extends a to n entries, the new ones sp. */
bool al_to(struct albuf *a, size_t n, struct tspan sp);
/* Appends v[0..n). */
bool al_put(struct albuf *a, const struct tspan *v, size_t n);
void al_free(struct albuf *a);

/* A piece of text on its way through the pipeline. id >= 0: an added token,
 * already final. first: it starts at offset 0 of the original input. al:
 * per byte, where it came from (NULL when offsets are not wanted). */
struct piece {
	char *s;
	size_t n;
	int32_t id;
	bool first;
	struct tspan *al;
};
struct pblock;                          /* the pieces' bytes, in blocks that never move */
struct plist {
	struct piece *v;
	size_t n, cap;
	struct pblock *blk;
};
/* Appends a copy of s[0..n) and, unless NULL, of its alignments al[0..n). */
bool plist_push(struct plist *l, const char *s, size_t n, const struct tspan *al, int32_t id,
		bool first);
/* Room for n bytes (and a NUL, and with al n alignments) at the end of l's
 * current block: fill the bytes, then plist_push the same pointer to keep
 * them without a copy. */
char *plist_room(struct plist *l, size_t n, bool al);
/* Empties l, keeping its memory for reuse. */
void plist_clear(struct plist *l);
void plist_free(struct plist *l);

/* --- vocabulary: strings <-> ids ------------------------------------------------ */

struct hf_vocab {
	uint32_t *off, *len;            /* per id, into blob; len UINT32_MAX = no token */
	int32_t n;                      /* ids 0..n-1 */
	size_t cap;                     /* of off and len */
	char *blob;
	size_t blob_n, blob_cap;
	int32_t *tab;                   /* open addressing, -1 = free */
	uint64_t mask;
};
int32_t vocab_get(const struct hf_vocab *v, const char *s, size_t n);
/* Gives id the string s (the id must have none yet; grows n as needed). */
bool vocab_set(struct hf_vocab *v, int32_t id, const char *s, size_t n);
const char *vocab_str(const struct hf_vocab *v, int32_t id, size_t *n);
void vocab_free(struct hf_vocab *v);

/* --- regular expressions (Hugging Face's are Oniguruma's) --------------------------- */

struct hf_re {
	pcre2_code *re;
	pcre2_match_data *md;
	bool jit;
};
/* Compiles an Oniguruma-syntax pattern (literal: escape it first). */
struct hf_re *re_new(const char *pat, size_t n, bool literal, const char *where,
		     struct fw_err *err);
void re_free(struct hf_re *r);

/* --- components --------------------------------------------------------------------- */

enum norm_kind {
	NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD, NORM_LOWER, NORM_STRIP_ACCENTS, NORM_REPLACE,
	NORM_PREPEND, NORM_STRIP, NORM_BERT, NORM_SEQ
};
struct hf_norm {
	enum norm_kind kind;
	struct hf_norm *sub;            /* Sequence */
	size_t n_sub;
	char *a, *b;                    /* Replace: pattern, content; Prepend: a */
	size_t na, nb;
	struct hf_re *re;               /* Replace with a Regex (or literal) pattern */
	bool left, right;               /* Strip */
	bool clean, chinese, strip_accents, lower;      /* BertNormalizer */
};

enum pre_kind {
	PRE_BYTELEVEL, PRE_METASPACE, PRE_WHITESPACE, PRE_WSSPLIT, PRE_BERT, PRE_PUNCT,
	PRE_DIGITS, PRE_SPLIT, PRE_SEQ
};
enum behavior { B_REMOVED, B_ISOLATED, B_PREV, B_NEXT, B_CONTIGUOUS };
struct hf_pre {
	enum pre_kind kind;
	struct hf_pre *sub;
	size_t n_sub;
	struct hf_re *re;               /* Split, ByteLevel's regex, Whitespace */
	enum behavior behavior;
	bool invert, add_prefix_space, use_regex, split, individual;
	int prepend;                    /* Metaspace: 0 always, 1 first, 2 never */
	char bytes[256][2];             /* ByteLevel: each byte's character, UTF-8 */
	uint8_t bytes_n[256];
	char repl[8];                   /* Metaspace replacement, UTF-8 */
	size_t repl_n;
	uint32_t repl_cp;
};

enum model_kind { MODEL_BPE, MODEL_WORDPIECE, MODEL_UNIGRAM };
struct merge_ent {
	uint64_t key;                   /* left << 32 | right; UINT64_MAX = free */
	int32_t rank, id;
};
struct hf_model {
	enum model_kind kind;
	int32_t unk;                    /* -1: none */
	int32_t n_model;                /* ids below are the model's vocabulary */
	char *prefix, *suffix;          /* BPE / WordPiece continuing prefix, BPE suffix */
	size_t n_prefix, n_suffix;
	bool fuse_unk, byte_fallback, ignore_merges;
	int32_t byte_tok[256];          /* <0xXX> tokens, -1 where missing */
	bool all_bytes;
	struct merge_ent *merges;       /* BPE */
	uint64_t mmask;
	size_t max_chars;               /* WordPiece */
	double *score, min_score;       /* Unigram, per id < n_score */
	int32_t n_score;
	size_t max_piece;               /* Unigram: longest piece in bytes */
	uint8_t *cut;                   /* BPE: bitmap of the code points a word may be cut */
	uint64_t *cut_exc;              /* before, but not after these: (c << 32 | x), sorted */
	size_t n_cut_exc;
};

enum dec_kind {
	DEC_BYTELEVEL, DEC_METASPACE, DEC_WORDPIECE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP,
	DEC_REPLACE, DEC_SEQ
};
struct hf_dec {
	enum dec_kind kind;
	struct hf_dec *sub;
	size_t n_sub;
	char *a, *b;                    /* Replace pattern/content; WordPiece prefix (a) */
	size_t na, nb;
	struct hf_re *re;
	uint32_t cp;                    /* Metaspace replacement; Strip content */
	int start, stop;                /* Strip */
	bool cleanup, never;            /* WordPiece cleanup; Metaspace prepend_scheme never */
};

struct hf_added {
	int32_t id;
	char *s, *ns;                   /* content; normalized content */
	size_t n, nn;
	bool special, single_word, lstrip, rstrip, normalized;
};

/* A post-processor's template: special ids, or a sequence (A or B), each
 * piece with its type id. */
struct hf_tpiece {
	int seq;                        /* -1: the special ids, 0: A, 1: B */
	uint32_t type_id;
	int32_t *ids;
	size_t n_ids;
};
struct hf_tmpl {
	struct hf_tpiece *v;
	size_t n;
};
void tmpl_free(struct hf_tmpl *t);

struct hf_tok {
	struct hf_vocab vocab;          /* model vocabulary and added tokens */
	struct hf_norm *norm;           /* each may be NULL */
	struct hf_pre *pre;
	struct hf_model model;
	struct hf_dec *dec;
	int32_t *bos, *eos;             /* post-processor: ids before and after the text */
	size_t n_bos, n_eos;
	struct hf_tmpl tmpl[2];         /* the first adding processor's single and pair */
	int n_adders;                   /* post-processors that add tokens */
	bool trim, trim_prefix;         /* trim_offsets, with add_prefix_space */
	struct fw_encode_options file;  /* the file's truncation and padding (flags 0) */
	struct hf_added *added;
	size_t n_added, cap_added;
	/* Finding added tokens in text (z: 1 for the normalized ones, matched in
	 * normalized text): atab[z] holds the index of the first added token of
	 * each content; lens[lstart[z][c] .. lstart[z][c + 1]) are the distinct
	 * lengths of those whose first byte is c, longest first. */
	int32_t *atab[2];
	uint64_t amask;
	uint32_t *lens;
	uint32_t lstart[2][257];
	uint8_t *is_special;            /* per id < n_is_special */
	size_t n_is_special;
	const char *path;               /* for messages, during loading only */
};

/* tokenizer_hf.c */
/* From the file's text, or from parsed (its JSON, when already parsed). */
struct hf_tok *hf_load(const char *path, const char *text, size_t len, json_t *parsed,
		       struct fw_err *err);
void hf_free(struct hf_tok *h);
/* cache: the tokenizer's piece cache (model ids per pre-token). */
/* With offs, each token's byte range in text[0..len) is appended to it
 * ((0, 0) for the post-processor's tokens). */
enum fw_status hf_encode(struct hf_tok *h, struct piece_cache *cache, const char *text,
			 size_t len, bool split_special, bool add_special, struct fw_token_buf *out,
			 struct albuf *offs, struct fw_err *err);
/* Trims the offsets of text[0..len)'s tokens as the post-processor says. */
void hf_trim_offsets(const struct hf_tok *h, const int32_t *ids, struct tspan *offs, size_t n,
		     const char *text, size_t len);
/* raw: one token's bytes for fw_tokenizer_token (no UTF-8 repair, not stripped
 * as a first token). */
enum fw_status hf_decode(const struct hf_tok *h, const int32_t *ids, size_t n, bool raw,
			 char **out, size_t *len, struct fw_err *err);
enum fw_status hf_add_special(struct hf_tok *h, const char *s, size_t n, int32_t *id,
			      struct fw_err *err);
int32_t hf_eos(const struct hf_tok *h);
/* The template for single texts or pairs, NULL when no post-processor adds
 * tokens; FW_ERR_UNSUPPORTED when they cannot be applied to them. */
enum fw_status hf_template(const struct hf_tok *h, bool pair, const struct hf_tmpl **t,
			   struct fw_err *err);

/* tokenizer_hf_text.c */
enum fw_status norm_parse(json_t *j, struct hf_norm *n, const char *path, const char *at,
			  struct fw_err *err);
void norm_free(struct hf_norm *n);
/* *keep0 (may be NULL) becomes false when the start of s is removed. With
 * al (s's alignments), alo gets those of out (alo->n == out->n after). */
enum fw_status norm_apply(const struct hf_norm *n, const char *s, size_t len,
			  const struct tspan *al, struct sbuf *out, struct albuf *alo, bool *keep0,
			  struct fw_err *err);
enum fw_status pre_parse(json_t *j, struct hf_pre *p, const char *path, const char *at,
			 struct fw_err *err);
void pre_free(struct hf_pre *p);
enum fw_status pre_apply(const struct hf_pre *p, struct plist *l, struct fw_err *err);
bool u_whitespace(uint32_t cp);
bool u_alnum(uint32_t cp);
/* Rust's String::from_utf8_lossy of s[0..n) appended to out. */
bool sb_put_lossy(struct sbuf *out, const char *s, size_t n);

/* tokenizer_hf_models.c */
enum fw_status model_parse(json_t *j, struct hf_tok *h, const char *path, struct fw_err *err);
void model_free(struct hf_model *m);
bool ids_append(struct fw_token_buf *out, int32_t id);
/* The model's ids for one pre-token, through the piece cache c; with offs,
 * each token's byte range in s[0..n) too. */
enum fw_status model_encode(const struct hf_tok *h, struct piece_cache *c, const char *s,
			    size_t n, struct fw_token_buf *out, struct albuf *offs,
			    struct fw_err *err);

#endif
