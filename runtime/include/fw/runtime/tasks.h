/* fw/runtime/tasks.h - encoder tasks (arch/encoder): masked-LM pretraining
 * from text, sequence classification and token classification from JSONL,
 * laid out as rows for the loader, and their evaluation metrics.
 *
 * Rows follow BERT's inputs: [CLS] a [SEP] (b [SEP]) then padding. seg is 1
 * on the first segment, 2 on the second (text_pair), 0 on padding; from it
 * fw_rt_encoder_masks fills the model's positions, padding mask and token
 * types. targets: MLM -1 (the loader's masking sets them), sequence
 * classification the label id at position 0, token classification the label
 * of each word's first sub-token (-1 elsewhere).
 */
#ifndef FW_RUNTIME_TASKS_H
#define FW_RUNTIME_TASKS_H

#include "fw/plugin.h"
#include "fw/runtime/data.h"

#ifdef __cplusplus
extern "C" {
#endif

enum fw_rt_task_kind { FW_RT_TASK_MLM = 1, FW_RT_TASK_SEQ_CLS, FW_RT_TASK_TOKEN_CLS,
		       FW_RT_TASK_SEQ2SEQ };

/* Token classification records without "labels" (input to predict): the
 * target of each word's first sub-token, outside every label id, so outside
 * the loss and the metrics, but it marks where the words start. */
#define FW_RT_WORD_START INT32_MAX

/* The task an encoder's head trains on; 0 for a head that is not an
 * encoder's (the causal LM). */
enum fw_rt_task_kind fw_rt_task_of_head(enum fw_head_kind head);

/* [CLS] [SEP] [MASK] [PAD], or RoBERTa's <s> </s> <mask> <pad>: found in
 * tok, else added to it as special tokens (the byte tokenizer). */
struct fw_rt_specials {
	int32_t cls, sep, mask, pad;
};
enum fw_status fw_rt_specials_find(struct fw_tokenizer *tok, struct fw_rt_specials *sp,
				   struct fw_err *err);

/* The label names of a classification task, in id order. */
struct fw_rt_labels {
	char **names;
	int n;
};
/* "a,b,c" into labels (empty text: none). */
enum fw_status fw_rt_labels_parse(struct fw_rt_labels *l, const char *text, struct fw_err *err);
/* The names joined by commas (malloc'd), or NULL when out of memory. */
char *fw_rt_labels_join(const struct fw_rt_labels *l);
void fw_rt_labels_free(struct fw_rt_labels *l);

/* BERT's dynamic masking (DataCollatorForLanguageModeling): each non-padding,
 * non-[CLS]/[SEP] position is chosen with probability prob; a chosen one is
 * the target, and its input becomes [MASK] (80%), a uniformly random token
 * (10%) or stays (10%). The draws are a counter-based hash of (seed, index,
 * position): the same micro-batch index always masks alike, so a resumed
 * run masks as the uninterrupted one. */
struct fw_rt_mlm {
	double prob;                      /* 0.15 */
	int32_t vocab;                    /* random replacements in [0, vocab) */
	struct fw_rt_specials sp;
	uint64_t seed;
};
void fw_rt_mlm_mask(const struct fw_rt_mlm *c, uint64_t index, int32_t *tokens,
		    int32_t *targets, const int32_t *seg, int64_t n);

/* Encoder-decoder (arch/encdec, T5) rows. A seq2seq row is two aligned
 * sequences of T: the decoder's in tokens (the start token, then the target
 * shifted right) and targets (-1 on padding), the encoder's in seg, as id +
 * 1 (0 = padding), so that the loader, its shuffling and resume, and the
 * trainer's per-token weighting serve it as any row. fw_rt_encoder_fill
 * turns seg into the model's enc_tokens and enc_bias.
 * Span corruption (T5's pretraining objective, as Hugging Face's
 * run_t5_mlm_flax): rows of raw_len text tokens (more than T: the corrupted
 * input is shorter) in tokens and, past T, in targets, seg 1; replaced as
 * each micro-batch is served by fw_rt_span_corrupt. */
struct fw_rt_seq2seq {
	int32_t pad, eos, start;          /* T5: <pad> 0, </s> 1, decoder start = pad */
	int32_t sentinel_top;             /* span k (0, 1, ...) becomes sentinel_top - 1 - k */
	double noise_density;             /* 0.15 */
	double mean_span;                 /* 3 */
	int64_t raw_len;                  /* text tokens a span-corruption row */
	uint64_t seed;
	/* {"input", "target"} rows: the encoder's input cut to enc_len tokens
	 * and the target to dec_len (each </s> included; 0 = the row width T,
	 * which must hold both); the loader serves the first dec_len of tokens
	 * and targets and the first enc_len of seg (fw_rt_loader out_T, seg_T). */
	int64_t enc_len, dec_len;
};

/* Hugging Face's compute_input_and_target_lengths: the most text tokens
 * whose corrupted input (kept tokens, a sentinel a span, </s>) fits T, made
 * smaller until the target (noise tokens, a sentinel a span, </s>) fits T
 * too; 0 when none does. */
int64_t fw_rt_span_raw_length(int64_t T, double noise_density, double mean_span);

/* random_spans_noise_mask of Hugging Face's run_t5_mlm_flax for one row of
 * n tokens: noise[i] 1 on the noise tokens. Its two shuffles are
 * Fisher-Yates with draws of splitmix64 keyed by key (see seq2seq.c), in
 * place of numpy's. false: out of memory. */
bool fw_rt_span_noise_mask(int64_t n, double noise_density, double mean_span, uint64_t key,
			   uint8_t *noise);

/* Span corruption of a micro-batch of B rows (index: the micro-batch's
 * index, epoch * n_micro + cursor; row b's mask keyed by (seed, index, b)):
 * each row's raw_len tokens (tokens, then targets past T) become the encoder's input in seg (the
 * kept tokens, noise span k replaced by sentinel k, then </s>) and the
 * target in targets (HF's filter_input_ids on the labels: kept span k
 * replaced by sentinel k, the noise tokens, </s>), with tokens the target
 * shifted right behind the start token. A row whose first token is padding
 * (the loader's fill rows) becomes all padding. */
void fw_rt_span_corrupt(const struct fw_rt_seq2seq *c, uint64_t index, int32_t *tokens,
			int32_t *targets, int32_t *seg, int64_t B, int64_t T);

struct fw_rt_task {
	enum fw_rt_task_kind kind;
	struct fw_rt_specials sp;
	/* Classification: the label list. fixed: records with another label
	 * are refused (a checkpoint's list); else labels not in it are added
	 * (training from scratch collects them). */
	struct fw_rt_labels *labels;
	bool fixed;
	struct fw_rt_mlm mlm;             /* MLM: the masking the loader applies */
	struct fw_rt_seq2seq s2s;         /* seq2seq: special ids, span corruption */
};

/* Opens paths (comma-separated; label names the option) as rows of task:
 * MLM from text (documents separated by blank lines, cut into rows of
 * T - 2 tokens) or JSONL {"text"}; classification JSONL {"text", "label"}
 * or {"text", "text_pair", "label"} (labels strings or integers); token
 * classification {"tokens": [...], "labels": [...]}. A label outside a
 * fixed list, or tokens and labels of different lengths, stops with
 * FW_ERR_INVALID naming the file and line; other bad records are skipped
 * (max_bad, as fw_rt_jsonl_foreach). For MLM the loader masks each
 * micro-batch (l->mlm points into task, which must outlive l). */
enum fw_status fw_rt_task_open(struct fw_rt_loader *l, struct fw_rt_task *task, const char *paths,
			       const char *label, struct fw_tokenizer *tok, int64_t B, int64_t T,
			       bool shuffle, uint64_t seed, int64_t max_bad,
			       const struct fw_rt_log *log, struct fw_err *err);

/* From seg (B, T): positions 0..T-1, the padding mask bias (B, 1, T, T) (0
 * where the key is not padding, -inf where it is; a padding query sees the
 * real keys too, as in Hugging Face), token_types (seg 2 -> 1, else 0; may
 * be NULL) and pool_weights (B, 1, T): 1/n on a row's n real positions
 * (may be NULL). */
void fw_rt_encoder_masks(const int32_t *seg, int64_t B, int64_t T, int32_t *positions,
			 float *bias, int32_t *token_types, float *pool_weights);
/* fw_rt_encoder_masks into m's inputs (those it has); for an
 * encoder-decoder (m->enc_tokens), seg's encoder side (id + 1, 0 = padding)
 * into enc_tokens (padding: id 0, T5's <pad>) and enc_bias (B, 1, 1, Te),
 * seg then (B, Te) with Te the encoder's length (enc_tokens' second
 * dimension). */
void fw_rt_encoder_fill(struct fw_model *m, const int32_t *seg);
void fw_rt_seq2seq_fill(struct fw_model *m, const int32_t *seg);

/* Evaluation of a task over the first n micro-batches of e->data: the
 * per-target mean loss, accuracy, macro-F1 over the labels present in the
 * targets or predictions, and the confusion matrix confusion[true * L +
 * predicted] (classification; malloc'd, caller frees). MLM: accuracy over
 * the masked positions, n_labels 0. */
struct fw_rt_task_metrics {
	double loss, accuracy, macro_f1;
	int64_t targets;
	int n_labels;
	int64_t *confusion;
};
struct fw_rt_eval;
enum fw_status fw_rt_task_evaluate(const struct fw_rt_eval *e, struct fw_rt_task_metrics *out,
				   struct fw_err *err);

#ifdef __cplusplus
}
#endif
#endif
