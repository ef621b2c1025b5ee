/* fwrun.h - shared between the fwrun command's files. */
#ifndef FWRUN_H
#define FWRUN_H

#include <stdio.h>

#include "fw/fw.h"

/* Exit codes. */
enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

/* --- configuration: run options + plugins + their options ------------------------ */

struct config {
	struct fw_options *run;           /* fwrun's own options (Megatron names) */
	struct fw_loaded *plugin[FW_KIND_COUNT];
	char *config_path;
	char *taken;                      /* what --load's checkpoint filled in, or NULL */
};

/* Parses argv (after the subcommand) and an optional --config INI file,
 * loads the plugins named by --plugins, and resolves every option. With
 * need_plugins, an arch plugin is required. Positional arguments are
 * returned in pos[] (at most max_pos). For cmd (train, eval, generate, plan;
 * NULL for help) a checkpoint named by --load fills what the user left out,
 * and one stderr line says what: its plugins (eval and generate without the
 * optimizer), the plugins' options, and its batch shape and data layout
 * (micro-batch-size, seq-length, packing, chat-template, too-long,
 * calculate-per-token-loss), or, for a resumed training run (no
 * --finetune), every option but load, finetune, overwrite, base-only and
 * the adapter options. --tokenizer=byte sets vocab-size unless it is set. */
enum fw_status config_load(struct config *c, const char *cmd, int argc, char **argv,
			   bool need_plugins, char **pos, int max_pos, int *n_pos,
			   struct fw_err *err);
void config_free(struct config *c);
/* Says on stderr what config_load took from --load's checkpoint, if anything;
 * called once the command is set up, so that an error stays one line. */
void config_report(const struct config *c);
/* Whether option name (of fwrun, or of the plugin whose options are o) does
 * something in cmd (train, eval, generate; plan takes train's). */
bool option_applies(const struct config *c, const struct fw_options *o, const char *name,
		    const char *cmd);
/* One warning line for each option of argv that does nothing in cmd
 * (--temperature in train), or nothing without other options
 * (--eval-interval without --valid-data). */
void warn_unused_options(struct config *c, const char *cmd, int argc, char **argv);
/* 'fwrun CMD --help': usage, then the options of fwrun and of the plugins
 * named in argv that do something in cmd. */
int command_help(const char *cmd, const char *usage, int argc, char **argv);
/* Writes the fully resolved configuration as INI text (malloc'd). */
char *config_dump(const struct config *c);
const struct fw_option_def *run_option_defs(int *n);

/* --- token data (llm.c shards) ---------------------------------------------------- */

struct shard {
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
 * leaves zero and never reads: SHARD_TOK_MARK, the tokenizer's vocabulary
 * size, and the low and high halves of tokenizer_fingerprint over it. */
#define SHARD_TOK_MARK 0x6e6b6f74     /* "tokn" */
/* FNV-1a over the bytes of tokens 0..n-1 (each preceded by its length):
 * equal for tokenizers that give those ids the same bytes, so a run whose
 * tokenizer adds special tokens after them still matches. */
uint64_t tokenizer_fingerprint(const struct fw_tokenizer *t, int32_t n);

/* SFT examples laid out in rows of T positions (dataset.c): tokens and
 * targets (targets -1 = not in the loss: prompt and padding) and seg, the
 * example each position belongs to (1, 2, ... within the row; 0 = padding). */
struct rows {
	int64_t n, T;
	int32_t *tokens, *targets, *seg;
};

struct loader {
	struct shard *shards;
	int n_shards;
	struct rows rows;                 /* rows.n > 0: SFT rows instead of shards */
	int64_t B, T;
	bool shuffle;
	uint64_t seed;
	/* position: */
	int64_t epoch, cursor;            /* cursor = micro-batch index in epoch */
	int64_t *order;                   /* micro-batch order of this epoch */
	int64_t n_micro;                  /* micro-batches per epoch */
};

enum fw_status loader_open(struct loader *l, const char *paths, int64_t B, int64_t T,
			   bool shuffle, uint64_t seed, struct fw_err *err);
void loader_close(struct loader *l);
/* Fills tokens/targets (B, T) i32 with the next micro-batch; for SFT rows
 * also seg (B, T) (may be NULL otherwise). */
void loader_next(struct loader *l, int32_t *tokens, int32_t *targets, int32_t *seg);
/* A loader over rows (taken over) or over an in-memory token stream
 * (tokens32 taken over, n tokens, named name), B rows a micro-batch. */
enum fw_status loader_from_rows(struct loader *l, struct rows *rows, int64_t B, bool shuffle,
				uint64_t seed, struct fw_err *err);
enum fw_status loader_from_stream(struct loader *l, const char *name, uint32_t *tokens32,
				  int64_t n, int64_t B, int64_t T, bool shuffle, uint64_t seed,
				  struct fw_err *err);

/* --- datasets: shards, plain text and JSONL (dataset.c) ------------------------------- */

/* Opens paths (comma-separated; label is the option that named them) in
 * --data-format: shards as they are; plain text packed into a token stream
 * with EOS between documents; JSONL prompt/response or messages records as
 * SFT rows (only response tokens in the loss). Prints a one-line summary
 * on stderr. Token ids are checked against the model by loader_check_vocab. */
enum fw_status dataset_open(struct loader *l, const struct fw_options *run, const char *paths,
			    const char *label, bool shuffle, struct fw_tokenizer *tok, int64_t B,
			    int64_t T, struct fw_err *err);
/* Every token of the loader's data (and the tokenizer's vocabulary) fits a
 * model of vocab tokens; names the file and position otherwise. */
enum fw_status loader_check_vocab(const struct loader *l, const struct fw_tokenizer *tok,
				  int64_t vocab, struct fw_err *err);
/* UNSUPPORTED, naming the compression, for a gzip, zstd, xz or bzip2 file (by
 * its extension or its first bytes): fwrun reads uncompressed data only. */
enum fw_status refuse_compressed(const char *path, struct fw_err *err);
/* The bytes of path, NUL-terminated, malloc'd; NULL with err naming the file. */
char *read_whole_file(const char *path, size_t *len, struct fw_err *err);
/* positions (B, T) and attn_bias (B, 1, T, T) for the sequences in seg. */
void dataset_masks(const int32_t *seg, int64_t B, int64_t T, int32_t *positions, float *bias);

/* A JSONL record of an SFT or scoring file, tokenized: ids[0..n), of which
 * the ones with loss[i] set are the response (trained on, or scored). */
struct example {
	int32_t *ids;
	uint8_t *loss;
	int64_t n;
};
/* How records become tokens: the tokenizer and --chat-template (plain, or
 * chatml with its <|im_start|> and <|im_end|> special tokens). */
struct encoder {
	struct fw_tokenizer *tok;
	bool chatml;
	int32_t im_start, im_end;
};
/* Reads --chat-template; chatml adds its two special tokens to tok (kept if
 * it has them, as a checkpoint's tokenizer does). */
enum fw_status encoder_init(struct encoder *e, struct fw_tokenizer *tok,
			    const struct fw_options *run, struct fw_err *err);
/* Tokenizes one JSON record: {"prompt", "response"}, {"messages": [...]}
 * or {"text"} (all tokens in the loss). On a bad record returns false with
 * why (static text) set. */
bool example_from_json(const struct encoder *enc, const void *json_record, struct example *ex,
		       const char **why);
void example_free(struct example *ex);

/* Called with each JSON record (a json_t *) of a JSONL file and its line; sets
 * why (static text) to reject the record, returns non-FW_OK to stop. */
typedef enum fw_status (*jsonl_fn)(void *arg, const void *json_record, long line,
				   const char **why, struct fw_err *err);
/* Calls fn for each record of path (blank lines skipped). Invalid JSON and
 * rejected records are reported "fwrun: FILE:LINE: why (record skipped)" and
 * counted in *n_bad; one more than max_bad stops with that line and the count. */
enum fw_status jsonl_foreach(const char *path, int64_t max_bad, int64_t *n_bad,
			     jsonl_fn fn, void *arg, struct fw_err *err);

/* --- tokenizer (tok.c) ------------------------------------------------------------- */

#define TOKENIZER_ATTR "tokenizer"
/* The checkpoint's stored tokenizer (ckpt may be NULL or a file without
 * one), else the one --tokenizer names; NULL with err clear when neither
 * gives one. Both given and different is an error. */
struct fw_tokenizer *run_tokenizer(const struct fw_options *run, const char *ckpt,
				   struct fw_err *err);
/* Micro-batches left in this epoch before it wraps. */
int64_t loader_left(const struct loader *l);
void loader_seek(struct loader *l, int64_t epoch, int64_t cursor);

/* --- learning-rate schedule (Megatron semantics) ---------------------------------- */

struct lr_schedule {
	double max_lr, min_lr, init_lr;
	int64_t warmup, decay;            /* iterations */
	int style;                        /* index into lr_styles */
	int wsd_style;
	int64_t wsd_decay;
};
extern const char *const lr_styles[];
extern const char *const wsd_styles[];
/* lr for iteration n (1-based): warmup is n/warmup, reaching max at n = warmup. */
double lr_at(const struct lr_schedule *s, int64_t n);

/* --load=DIR means the newest ckpt-*.h5 in it; a file is taken as it is. A
 * directory holding checkpoints of different configurations is refused. */
enum fw_status resolve_load(const char *arg, char *out, size_t len, struct fw_err *err);
/* The step of a complete checkpoint's file name, exactly ckpt-<digits>.h5; -1
 * for anything else. */
long long ckpt_step(const char *name);

/* --- what checkpoints and run directories belong to (runs.c) ------------------------ */

/* Refuses (INVALID, one line naming the first few and the plugins they need)
 * the tensors of path that are neither in params[0..n) nor optimizer state:
 * trained tensors this run would silently drop. With base_only, says which
 * it drops and returns FW_OK. slots NULL: the arch's tensors only (export). */
enum fw_status check_foreign_tensors(const char *path, struct fw_tensor **params, int n,
				     const struct fw_plugin_slots *slots, bool base_only,
				     struct fw_err *err);
/* Whether two resolved configurations (config_dump's INI) train the same run:
 * equal but for where a run writes, how often it logs or evaluates, how long
 * it goes on, and other commands' options. If not, why names the first
 * option that differs, with a_name and b_name for the two sides. */
bool config_same_run(const char *a, const char *b, const char *a_name, const char *b_name,
		     char *why, size_t len);
/* INVALID if dir's checkpoints were written by different configurations. */
enum fw_status check_dir_checkpoints(const char *dir, struct fw_err *err);
/* A directory's newest adapter-<digits>.h5 (a file is taken as it is). */
enum fw_status resolve_adapter(const char *arg, char *out, size_t len, struct fw_err *err);
/* config_dump's INI text without the peft plugin's section and plugins
 * entry (malloc'd; NULL when out of memory). */
char *config_without_peft(const char *text);

/* --- subcommands ------------------------------------------------------------------- */

int cmd_list(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_import(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);

/* --- PEFT adapters (adapter.c) ------------------------------------------------------- */

int cmd_merge(int argc, char **argv);
int cmd_export_adapter(int argc, char **argv);
/* Fills the peft plugin's unset options from the config of the adapter that
 * --adapter (spec) and --adapter-name (name) choose; silent on bad files. */
void adapter_config_defaults(struct config *c, const char *spec, const char *name);
/* fw_h5_load of every parameter; with a peft plugin, trainable parameters the
 * file lacks (new adapter tensors) keep their initialisation and are counted.
 * Tensors of the file that no parameter takes are refused (check_foreign_tensors)
 * unless base_only. */
enum fw_status load_params(const char *path, struct fw_tensor **params, int n,
			   const struct fw_plugin_slots *slots, bool base_only, int *n_new,
			   struct fw_err *err);
/* Checks every --adapter file against the model's base and applies the one
 * --adapter-name picks with the peft plugin's load hook (merge with
 * --merge-adapter, allowed only when inference). */
enum fw_status adapter_apply(const struct config *c, const struct fw_plugin_slots *slots,
			     struct fw_model *m, bool inference, struct fw_err *err);
/* DIR/adapter-NNNNNNNN.h5 through the peft plugin's save hook (if any). */
enum fw_status adapter_save(const struct fw_plugin_slots *slots, struct fw_model *m,
			    const char *dir, int64_t step, struct fw_err *err);

/* x as text: an integer when it is one ("1048576", not "1.04858e+06"). */
const char *num_text(double x, char *buf, size_t len);
/* Prints "fwrun: MSG" on stderr (once, even if MSG starts with it), returns code. */
int die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* --- scoring JSONL records (score.c) ------------------------------------------------- */

/* fwrun eval --score-data (docs/training.md, "Eval"): scores path's prompt/
 * response and multiple-choice records with g, an eval graph of m whose
 * outputs include m->logits. *json (malloc'd) gets the results as JSON
 * object members, without braces. */
enum fw_status score_file(const char *path, const struct fw_options *run, struct fw_tokenizer *tok,
			  struct fw_model *m, struct fw_graph *g, char **json, struct fw_err *err);

#endif
