/* fw/runtime/data.h - training data: llm.c token shards, plain text, JSONL
 * (SFT prompt/response and messages records, chat templates), laid out in
 * micro-batches with per-row sequence ids (docs/data-formats.md).
 *
 * A loader serves micro-batches of (B, T) tokens and targets (-1: not in the
 * loss) and, for SFT rows, seg: the sequence each position belongs to (1, 2,
 * ... within a row; 0 = padding). fw_rt_data_masks turns seg into the
 * positions and attention bias a segmented model takes. The order of an
 * epoch is a seeded permutation, so (epoch, cursor) is all a checkpoint
 * needs to resume it exactly.
 */
#ifndef FW_RUNTIME_DATA_H
#define FW_RUNTIME_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "fw/tokenizer.h"
#include "fw/runtime/log.h"

struct fw_chat_template;

#ifdef __cplusplus
extern "C" {
#endif

/* --- token shards ------------------------------------------------------------- */

struct fw_rt_shard {
	char *path;
	int64_t n_tokens;
	uint16_t *tokens;                 /* mmap'd */
	uint32_t *tokens32;               /* version 2 shards: uint32 tokens, tokens NULL */
	size_t map_len;
	void *map;
	int32_t tok_vocab;                /* the tokenizer fwrun tokenize recorded, or 0 */
	uint64_t tok_fingerprint;
};

/* fwrun tokenize records its tokenizer in header words 3..6, which llm.c
 * leaves zero and never reads: FW_SHARD_TOK_MARK, the tokenizer's
 * vocabulary size, and the low and high halves of
 * fw_rt_tokenizer_fingerprint over it. */
#define FW_SHARD_TOK_MARK 0x6e6b6f74  /* "tokn" */
/* FNV-1a over the bytes of tokens 0..n-1 (each preceded by its length):
 * equal for tokenizers that give those ids the same bytes, so a run whose
 * tokenizer adds special tokens after them still matches. */
uint64_t fw_rt_tokenizer_fingerprint(const struct fw_tokenizer *t, int32_t n);

/* --- rows and the loader -------------------------------------------------------- */

/* SFT examples laid out in rows of T positions: tokens and targets (targets
 * -1 = not in the loss: prompt and padding) and seg (above). */
struct fw_rt_mlm;
struct fw_rt_seq2seq;

struct fw_rt_rows {
	int64_t n, T;
	int32_t *tokens, *targets, *seg;
};

struct fw_rt_loader {
	struct fw_rt_shard *shards;
	int n_shards;
	struct fw_rt_rows rows;           /* rows.n > 0: SFT rows instead of shards */
	int64_t B, T;
	bool shuffle;
	uint64_t seed;
	/* position: */
	int64_t epoch, cursor;            /* cursor = micro-batch index in epoch */
	int64_t *order;                   /* micro-batch order of this epoch */
	int64_t n_micro;                  /* micro-batches per epoch */
	/* Masked-LM rows: each micro-batch is masked (fw_rt_mlm_mask, keyed by
	 * its index epoch * n_micro + cursor) as it is served. */
	const struct fw_rt_mlm *mlm;
	/* Span-corruption rows (tasks.h): each micro-batch corrupted as it is
	 * served (fw_rt_span_corrupt), keyed by the same index. */
	const struct fw_rt_seq2seq *span;
	/* Rows (rows.n > 0) served narrower than T: tokens and targets the first
	 * out_T of each row, seg the first seg_T (an encoder-decoder's decoder
	 * and encoder lengths, tasks.h); 0 = T. */
	int64_t out_T, seg_T;
};

/* Token shards (comma-separated paths), micro-batches of B rows of T. */
enum fw_status fw_rt_loader_open(struct fw_rt_loader *l, const char *paths, int64_t B,
				 int64_t T, bool shuffle, uint64_t seed, struct fw_err *err);
void fw_rt_loader_close(struct fw_rt_loader *l);
/* Fills tokens/targets (B, T) i32 with the next micro-batch (wrapping into
 * the next epoch); seg (B, T) may be NULL (all 1 for shards and streams). */
void fw_rt_loader_next(struct fw_rt_loader *l, int32_t *tokens, int32_t *targets,
		       int32_t *seg);
/* A loader over rows (taken over) or over an in-memory token stream
 * (tokens32 taken over, n tokens, named name), B rows a micro-batch. The
 * last micro-batch of an epoch of rows is filled up with padding rows. */
enum fw_status fw_rt_loader_from_rows(struct fw_rt_loader *l, struct fw_rt_rows *rows,
				      int64_t B, bool shuffle, uint64_t seed, struct fw_err *err);
enum fw_status fw_rt_loader_from_stream(struct fw_rt_loader *l, const char *name,
					uint32_t *tokens32, int64_t n, int64_t B, int64_t T,
					bool shuffle, uint64_t seed, struct fw_err *err);
/* Micro-batches left in this epoch before it wraps. */
int64_t fw_rt_loader_left(const struct fw_rt_loader *l);
void fw_rt_loader_seek(struct fw_rt_loader *l, int64_t epoch, int64_t cursor);
/* Every token of the loader's data (and the tokenizer's vocabulary) fits a
 * model of vocab tokens; names the file and position otherwise. */
enum fw_status fw_rt_loader_check_vocab(const struct fw_rt_loader *l,
					const struct fw_tokenizer *tok, int64_t vocab,
					struct fw_err *err);

/* positions (B, T) and attn_bias (B, 1, T, T) for the sequences in seg:
 * each position's place in its own sequence, and 0 where a query may see a
 * key of the same sequence, -inf elsewhere (padding sees nothing). */
void fw_rt_data_masks(const int32_t *seg, int64_t B, int64_t T, int32_t *positions,
		      float *bias);

/* --- records: SFT examples and chat templates ------------------------------------ */

/* A JSONL record tokenized: ids[0..n), of which the ones with loss[i] set
 * are the response (trained on, or scored). */
struct fw_rt_example {
	int32_t *ids;
	uint8_t *loss;
	int64_t n;
};
/* How records become tokens: the tokenizer and the chat template (plain,
 * or chatml with its <|im_start|> and <|im_end|> special tokens, or jinja:
 * a tokenizer_config.json chat_template rendered with jinja_vars, a json_t
 * object of bos_token, eos_token, ...; set after fw_rt_encoder_init, owned
 * by the caller). */
struct fw_rt_encoder {
	struct fw_tokenizer *tok;
	bool chatml;
	int32_t im_start, im_end;
	const struct fw_chat_template *jinja;
	const void *jinja_vars;
};
/* The chat_template of a tokenizer_config.json text (where names it in
 * messages): compiled into *tmpl (fw_chat_template_free), with *vars the
 * variables it is rendered with (a json_t object: bos_token, eos_token,
 * unk_token, pad_token as the config gives them; json_decref). A list of
 * named templates gives its "default" (else its first). No template: both
 * NULL and FW_OK. Damaged JSON or a template fw cannot parse: one line. */
enum fw_status fw_rt_chat_template_from_config(const char *config_json, const char *where,
					       struct fw_chat_template **tmpl, void **vars,
					       struct fw_err *err);
/* chatml adds its two special tokens to tok (kept if it has them, as a
 * checkpoint's tokenizer does). */
enum fw_status fw_rt_encoder_init(struct fw_rt_encoder *e, struct fw_tokenizer *tok,
				  bool chatml, struct fw_err *err);
/* Tokenizes one JSON record (a json_t *): {"prompt", "response"},
 * {"messages": [...]} or {"text"} (all tokens in the loss). On a bad record
 * returns false with why (static text) set. */
bool fw_rt_example_from_json(const struct fw_rt_encoder *enc, const void *json_record,
			     struct fw_rt_example *ex, const char **why);
void fw_rt_example_free(struct fw_rt_example *ex);

struct fw_rt_layout_stats {
	int64_t truncated, dropped, rows, loss_positions;
};
/* Lays examples[0..n) out in rows of T (taken in a seeded shuffled order
 * when shuffle): inputs ids[0..n-1), targets ids[1..n) where in the loss,
 * else -1. packed: consecutive examples share a row; else one a row.
 * Longer than T + 1: cut (truncate, when a loss token is left) or dropped. */
enum fw_status fw_rt_rows_layout(const struct fw_rt_example *examples, int64_t n, int64_t T,
				 bool packed, bool truncate, bool shuffle, uint64_t seed,
				 struct fw_rt_rows *rows, struct fw_rt_layout_stats *stats,
				 struct fw_err *err);

/* Called with each JSON record (a json_t *) of a JSONL file and its line;
 * sets why (static text) to reject the record, returns non-FW_OK to stop. */
typedef enum fw_status (*fw_rt_jsonl_fn)(void *arg, const void *json_record, long line,
					 const char **why, struct fw_err *err);
/* Calls fn for each record of path (blank lines skipped). Invalid JSON and
 * rejected records are logged (warning) "FILE:LINE: why (record skipped)"
 * and counted in *n_bad; one more than max_bad stops with that line and
 * the count. */
enum fw_status fw_rt_jsonl_foreach(const char *path, int64_t max_bad, int64_t *n_bad,
				   fw_rt_jsonl_fn fn, void *arg, const struct fw_rt_log *log,
				   struct fw_err *err);

/* --- datasets ---------------------------------------------------------------------- */

struct fw_rt_data_config {
	const char *format;               /* auto, shards, text, jsonl */
	bool packed;                      /* SFT rows: packed (else padded) */
	bool truncate;                    /* too long: truncate (else drop) */
	bool chatml;                      /* the chatml template (else plain) */
	const struct fw_chat_template *jinja;   /* else this one, if not NULL (see */
	const void *jinja_vars;                 /* struct fw_rt_encoder) */
	int64_t max_bad;                  /* bad JSONL records skipped before failing */
	uint64_t seed;                    /* shuffling of rows and micro-batches */
	bool shuffle;
	int64_t B, T;                     /* micro-batch shape */
};

/* Opens paths (comma-separated; label is the option that named them, for
 * messages) in cfg's format: shards as they are; plain text packed into a
 * token stream with EOS between documents; JSONL prompt/response or
 * messages records as SFT rows (only response tokens in the loss). Logs a
 * one-line summary (info). Token ids are checked against the model by
 * fw_rt_loader_check_vocab. */
enum fw_status fw_rt_dataset_open(struct fw_rt_loader *l, const struct fw_rt_data_config *cfg,
				  const char *paths, const char *label, struct fw_tokenizer *tok,
				  const struct fw_rt_log *log, struct fw_err *err);

/* FW_ERR_UNSUPPORTED, naming the compression, for a gzip, zstd, xz or bzip2
 * file (by its extension or its first bytes): only uncompressed data is read. */
enum fw_status fw_rt_refuse_compressed(const char *path, struct fw_err *err);
/* The bytes of path, NUL-terminated, malloc'd; NULL with err naming the file. */
char *fw_rt_read_file(const char *path, size_t *len, struct fw_err *err);

#ifdef __cplusplus
}
#endif
#endif
