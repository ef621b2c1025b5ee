/* fw/tokenizer.h - text to token ids and back: byte-level, GPT-2 byte-level BPE,
 * and Hugging Face tokenizer.json (BPE, WordPiece, Unigram) pipelines.
 *
 *     struct fw_err err;
 *     struct fw_tokenizer *tok = fw_tokenizer_load_bpe("vocab.json", "merges.txt", &err);
 *     if (!tok)
 *             fprintf(stderr, "%s\n", err.msg);      // one line, names the file
 *     struct fw_token_buf ids = { 0 };
 *     fw_tokenizer_encode(tok, text, strlen(text), false, &ids, &err);
 *     char *back;
 *     size_t len;
 *     fw_tokenizer_decode(tok, ids.ids, ids.n, &back, &len, &err);  // back == text
 *     fw_free(back);
 *     fw_token_buf_free(&ids);
 *     fw_tokenizer_free(tok);
 *
 * Three kinds:
 *
 *   byte   ids 0..255 are the bytes, then the special tokens (by default one,
 *          <|endoftext|> = 256, which is also the EOS token).
 *   gpt2   GPT-2's byte-level BPE from Hugging Face's vocab.json + merges.txt
 *          or OpenAI's encoder.json + vocab.bpe (the same formats: a JSON
 *          object token -> id, written in GPT-2's byte-to-unicode alphabet,
 *          and one merge "A B" a line, lowest rank first, after an optional
 *          "#version" line). The output equals OpenAI's reference encoder
 *          token for token (tests/bpe_reference.py checks it against the npm
 *          package gpt-3-encoder).
 *   hf     any other Hugging Face tokenizer.json: normalizer, pre-tokenizer,
 *          model (BPE, WordPiece, Unigram), added tokens, post-processor and
 *          decoder as that file describes them, giving the ids and the
 *          decoded text of Hugging Face's tokenizers library
 *          (tests/hf_tokenizers.py checks Llama-2/3, Qwen3, Gemma3, BERT,
 *          T5-style and RoBERTa tokenizers against the npm package
 *          tokenizers). docs/tokenizers.md lists the components and where
 *          fw follows the reference's older Unicode tables. Input that is
 *          not valid UTF-8 is read with U+FFFD for each ill-formed
 *          subpart; decoding returns text (U+FFFD where bytes are not
 *          UTF-8), as the reference does.
 *
 * GPT-2 encoding (gpt2 kind): the text is split into pieces by GPT-2's pattern
 *
 *     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *
 * (PCRE2, UTF + UCP, JIT-compiled where available), and each piece is
 * byte-pair merged in rank order. \s is the reference's (ECMAScript's)
 * whitespace, [\t-\r\p{Z}\x{FEFF}]; OpenAI's Python encoder and tiktoken use
 * Unicode's White_Space instead, which differs from it at U+0085 and U+FEFF
 * only. \p{L} and \p{N} come from PCRE2's Unicode tables (Unicode 14 in
 * PCRE2 10.42): characters assigned in later Unicode versions are symbols
 * here.
 *
 * Invalid UTF-8. Every byte has a token, so any byte string encodes and
 * decodes back to itself. The regex needs valid UTF-8, so the text is cut at
 * each byte that does not begin a well-formed UTF-8 sequence (RFC 3629: no
 * overlong forms, surrogates or code points above U+10FFFF): such a byte
 * becomes its own byte token, unmerged, and the well-formed stretches between
 * them are encoded as separate texts, as if each invalid byte were the end of
 * one text and the start of the next. Valid UTF-8 is never affected.
 *
 * Special tokens. With allow_special, occurrences of a special token's text
 * (the leftmost, longest first) are cut out before the regex runs and become
 * that token; without it, they are encoded as ordinary text, as the reference
 * encoder does. A gpt2 tokenizer's specials are the vocabulary entries of the
 * form <|...|> (GPT-2 has one, <|endoftext|>, the EOS token); others can be
 * added with fw_tokenizer_add_special.
 *
 * Threads. Encoding uses the tokenizer's piece cache and scratch space: one
 * thread at a time may encode with a tokenizer (give each thread its own).
 * Decoding and the lookups only read and may run concurrently with each other.
 *
 * Errors: constructors return NULL and fill err; actions return enum
 * fw_status. FW_ERR_IO: a file is missing or unreadable; FW_ERR_FORMAT: its
 * content is wrong (the message names the file and, for merges, the line);
 * FW_ERR_INVALID: a token id outside the vocabulary; FW_ERR_NOMEM;
 * FW_ERR_INTERNAL: PCRE2 failed. Memory comes from fw_malloc.
 */
#ifndef FW_TOKENIZER_H
#define FW_TOKENIZER_H

#include "fw/status.h"

#ifdef __cplusplus
extern "C" {
#endif

struct fw_tokenizer;                 /* opaque */

enum fw_tokenizer_kind { FW_TOKENIZER_BYTE = 1, FW_TOKENIZER_GPT2, FW_TOKENIZER_HF };

/* A growable array of token ids; zero-initialise it. Encoding appends. */
struct fw_token_buf {
	int32_t *ids;                /* fw_malloc'd */
	size_t n, cap;
};
void fw_token_buf_free(struct fw_token_buf *b);

/* Byte-level: 256 byte tokens, then specials[0..n_specials) as ids 256...
 * specials == NULL gives the default { "<|endoftext|>" }; the first special
 * is the EOS token (none when n_specials == 0 with specials != NULL). */
struct fw_tokenizer *fw_tokenizer_new_byte(const char *const *specials, int n_specials,
					   struct fw_err *err);
/* GPT-2 BPE from Hugging Face files. Every byte must have a token; every
 * merge's parts and result must be in the vocabulary; ids must be 0..n-1. */
struct fw_tokenizer *fw_tokenizer_load_bpe(const char *vocab_json, const char *merges_txt,
					   struct fw_err *err);
/* A Hugging Face tokenizer.json. GPT-2's byte-level BPE (model BPE, merges
 * as "A B" or ["A", "B"], ByteLevel pre-tokenizer with GPT-2's regex and no
 * prefix space, no normalizer, a ByteLevel or no post-processor, no
 * truncation or padding, plain special added tokens) is a gpt2 tokenizer,
 * its added_tokens specials at
 * their ids; every other file is an hf tokenizer. A component fw does not
 * implement is FW_ERR_UNSUPPORTED, damaged content FW_ERR_FORMAT, in one
 * line naming the file and the component. The hf kind's EOS token is the
 * first special added token among <|endoftext|>, <|end_of_text|>, </s>,
 * <eos>, [SEP]. */
struct fw_tokenizer *fw_tokenizer_load_hf_json(const char *path, struct fw_err *err);
/* The tokenizer_config.json that came with it (fw_tokenizer_load_hf_json
 * reads the one beside tokenizer.json, if any; fw_tokenizer_serialize keeps
 * it): its text as read, NUL-terminated, or NULL. */
const char *fw_tokenizer_config(const struct fw_tokenizer *t, size_t *len);
/* Replaces it (text NULL: none). */
enum fw_status fw_tokenizer_set_config(struct fw_tokenizer *t, const char *text, size_t len,
				       struct fw_err *err);
/* GPT-2 BPE from OpenAI's encoder.json + vocab.bpe. */
struct fw_tokenizer *fw_tokenizer_load_gpt2(const char *encoder_json, const char *vocab_bpe,
					    struct fw_err *err);
void fw_tokenizer_free(struct fw_tokenizer *t);

/* The whole tokenizer as one JSON text, to store with a model (fwrun keeps
 * it in the checkpoint's "tokenizer" attribute): {"kind": "byte"|"gpt2"|"hf",
 * "specials": [text, ...] in the order they were added (hf: those added
 * after loading), for gpt2 "vocab" and "merges", the files' texts as loaded,
 * for hf "json", the tokenizer.json text as loaded}. fw_malloc'd; NULL and
 * err on failure (a special token that is not valid UTF-8). */
char *fw_tokenizer_serialize(const struct fw_tokenizer *t, struct fw_err *err);
/* Rebuilds a tokenizer from that text; where names its origin in messages. */
struct fw_tokenizer *fw_tokenizer_deserialize(const char *text, size_t len, const char *where,
					      struct fw_err *err);

/* Appends the tokens of text[0..len) to out. Any bytes are accepted (see
 * the header comment for invalid UTF-8). On error out keeps what it had. */
enum fw_status fw_tokenizer_encode(struct fw_tokenizer *t, const char *text, size_t len,
				   bool allow_special, struct fw_token_buf *out,
				   struct fw_err *err);
/* Flags of fw_tokenizer_encode_ex. SPLIT_SPECIAL: special tokens' text in
 * the input becomes those tokens (otherwise it is ordinary text; added tokens
 * that are not special are always matched, as in Hugging Face's library).
 * ADD_SPECIAL: a tokenizer.json's post-processor adds its tokens (BOS/EOS,
 * [CLS]/[SEP]), Hugging Face's add_special_tokens. fw_tokenizer_encode with
 * allow_special is both flags, without it neither. OFFSETS (encode_pair
 * only): fill fw_encoding's offsets. FILE_OPTIONS (encode_pair only): the
 * truncation and padding of the tokenizer.json (its "truncation" and
 * "padding", as Hugging Face's Tokenizer.encode applies them; none for the
 * byte and gpt2 kinds) instead of the options' own. */
enum {
	FW_TOKENIZE_SPLIT_SPECIAL = 1, FW_TOKENIZE_ADD_SPECIAL = 2, FW_TOKENIZE_OFFSETS = 4,
	FW_TOKENIZE_FILE_OPTIONS = 8
};
enum fw_status fw_tokenizer_encode_ex(struct fw_tokenizer *t, const char *text, size_t len,
				      unsigned flags, struct fw_token_buf *out,
				      struct fw_err *err);
/* A token's place in the text it came from: bytes [start, end). */
struct fw_token_span {
	size_t start, end;
};
/* Hugging Face's Encoding of a text or a pair of texts: n tokens, each with
 * its id, type id (segment), attention mask bit (0 on padding) and special
 * tokens mask bit (1 on what the post-processor or padding added; special
 * tokens found in the text are 0, as in the reference). Zero-initialise it;
 * encoding replaces what it held.
 *
 * offsets (with FW_TOKENIZE_OFFSETS; else all (0, 0)): Hugging Face's
 * Encoding.offsets in bytes of the token's own text (a or b) as given,
 * through normalizers that change its length, pre-tokenizers and
 * byte_fallback: a token covers the original characters that its
 * normalized bytes came from, from the first one's start to the last one's
 * end (a piece of a character, as a byte-level or <0xXX> token, covers the
 * whole character; an inserted character, as Metaspace's or Prepend's
 * "\u2581", the character it was inserted at). The post-processor's tokens
 * and padding are (0, 0); a ByteLevel or RobertaProcessing post-processor
 * with trim_offsets leaves spaces out as the reference does. The Python and
 * Node bindings report the same offsets in characters (Unicode scalar
 * values), not bytes. byte and gpt2 tokenizers: each token's bytes, widened
 * to whole characters. */
struct fw_encoding {
	int32_t *ids;                /* fw_malloc'd, as the others */
	uint32_t *type_ids;
	uint8_t *attention_mask, *special_tokens_mask;
	size_t n, cap;
	struct fw_token_span *offsets;
};
void fw_encoding_free(struct fw_encoding *e);

/* Hugging Face's truncation strategies (TruncationStrategy). */
enum fw_truncation {
	FW_TRUNCATE_NONE = 0, FW_TRUNCATE_LONGEST_FIRST, FW_TRUNCATE_ONLY_FIRST,
	FW_TRUNCATE_ONLY_SECOND
};
struct fw_encode_options {
	unsigned flags;                 /* FW_TOKENIZE_* */
	/* With a strategy, the encoding keeps at most max_length tokens, the
	 * post-processor's included: the texts are cut to max_length less those
	 * (fewer than them is FW_ERR_INVALID; the reference wraps around there),
	 * from the end, or from the start with truncate_left. */
	enum fw_truncation truncation;
	size_t max_length;
	bool truncate_left;
	/* With pad, the encoding is padded to pad_length tokens (0: its own
	 * length), rounded up to a multiple of pad_multiple (0: none), with
	 * pad_id and pad_type_id, at the end or, with pad_left, the start. */
	bool pad, pad_left;
	size_t pad_length, pad_multiple;
	int32_t pad_id;
	uint32_t pad_type_id;
};
/* Hugging Face's Tokenizer.encode(a, b): each text is encoded (specials in
 * it matched with FW_TOKENIZE_SPLIT_SPECIAL), truncated, then the
 * post-processor's single or pair template (TemplateProcessing,
 * BertProcessing, RobertaProcessing) puts its tokens around them with
 * FW_TOKENIZE_ADD_SPECIAL, and gives the type ids (with or without that
 * flag; with no such post-processor, and for the byte and gpt2 kinds: a's
 * tokens 0, b's 1). b == NULL: a single text. A post_processor Sequence
 * with two processors that add tokens, or a template without "pair" for
 * a pair, is FW_ERR_UNSUPPORTED. Truncation errors are the reference's:
 * FW_ERR_INVALID when only_second has no b, or the text to cut is too
 * short. o may be NULL (no flags, no truncation, no padding). */
enum fw_status fw_tokenizer_encode_pair(struct fw_tokenizer *t, const char *a, size_t na,
					const char *b, size_t nb,
					const struct fw_encode_options *o,
					struct fw_encoding *out, struct fw_err *err);
/* The tokenizer.json's truncation and padding as options (flags 0; all
 * zero when it sets neither, and for the byte and gpt2 kinds). Its
 * "stride" only shapes Hugging Face's overflowing encodings, which fw does
 * not return; "pad_token" is not read (pad_id is the token). */
void fw_tokenizer_file_options(const struct fw_tokenizer *t, struct fw_encode_options *o);
/* The number of tokens the post-processor adds to a single text or a pair
 * (Hugging Face's num_special_tokens_to_add), or -1 where encode_pair
 * refuses. */
int fw_tokenizer_n_added(const struct fw_tokenizer *t, bool pair);

/* The bytes of ids[0..n), concatenated, into *out (fw_malloc'd, with a NUL
 * after the *len bytes; caller fw_free()s it). An id outside the vocabulary
 * is FW_ERR_INVALID and *out is NULL. */
enum fw_status fw_tokenizer_decode(const struct fw_tokenizer *t, const int32_t *ids, size_t n,
				   char **out, size_t *len, struct fw_err *err);

/* The bytes of one token (not NUL-terminated), or NULL outside the vocabulary.
 * hf: the decoder applied to that token alone, as raw bytes (Llama-2's
 * "\u2581hi" is " hi", a <0xC3> byte token the byte 0xC3). */
const char *fw_tokenizer_token(const struct fw_tokenizer *t, int32_t id, size_t *len);
/* The id of the token whose bytes are exactly bytes[0..len), or -1 (hf: the
 * token as the vocabulary writes it, e.g. "\u2581hi"). */
int32_t fw_tokenizer_find(const struct fw_tokenizer *t, const char *bytes, size_t len);
int32_t fw_tokenizer_vocab_size(const struct fw_tokenizer *t);
/* The end-of-text token (<|endoftext|>), or -1 if the vocabulary has none. */
int32_t fw_tokenizer_eos(const struct fw_tokenizer *t);
enum fw_tokenizer_kind fw_tokenizer_kind(const struct fw_tokenizer *t);
/* "byte", "gpt2" or "hf" (fwrun reads an hf tokenizer with --tokenizer=gpt2
 * --vocab-file=tokenizer.json). */
const char *fw_tokenizer_name(const struct fw_tokenizer *t);
bool fw_tokenizer_is_special(const struct fw_tokenizer *t, int32_t id);

/* Makes text[0..len) a special token: an existing token of those bytes, or
 * a new one appended to the vocabulary. Its id goes to *id (may be NULL).
 * hf: it becomes a special added token (matched before normalization). */
enum fw_status fw_tokenizer_add_special(struct fw_tokenizer *t, const char *text, size_t len,
					int32_t *id, struct fw_err *err);

/* Caps the piece cache at max_entries pieces (0 disables it; the default is
 * 65536). The cache only saves time: results are the same with any size.
 * (gpt2: regex pieces -> ids; hf: pre-tokens -> the model's ids.) */
void fw_tokenizer_set_cache_size(struct fw_tokenizer *t, size_t max_entries);

#ifdef __cplusplus
}
#endif
#endif
