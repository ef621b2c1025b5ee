/* fw/runtime/score.h - log-likelihoods and multiple choice from JSONL
 * records (docs/training.md, "Eval").
 *
 * A {"prompt", "response"} record (or "messages", or "text") is scored on
 * exactly the tokens the SFT loss uses: the response and the EOS after it.
 * A {"prompt", "choices", "answer"} record gives one sequence per choice,
 * prompt then choice, scored on the choice's tokens (no EOS), as
 * lm-evaluation-harness does; acc and acc_norm (per character) follow.
 */
#ifndef FW_RUNTIME_SCORE_H
#define FW_RUNTIME_SCORE_H

#include "fw/runtime/data.h"

#ifdef __cplusplus
extern "C" {
#endif

struct fw_rt_score_config {
	int64_t max_bad;                  /* bad records skipped before failing */
	bool chatml;                      /* messages records: the chatml template */
	const struct fw_chat_template *jinja;   /* else this one, if not NULL (see */
	const void *jinja_vars;                 /* struct fw_rt_encoder) */
};

/* Scores path's records with g, a forward graph of m whose outputs include
 * m->logits (rows of m->seq_len + 1 tokens at most; longer ones are
 * skipped and counted). *json (malloc'd) gets the results as JSON object
 * members without braces: "score_data", "bad_records", "too_long",
 * "response" {records, tokens, mean_logprob, mean_sum_logprob, perplexity},
 * "choice" {records, acc, acc_norm}, "scores" (one entry a record). Logs a
 * one-line summary (info) and each skipped record (warning). */
enum fw_status fw_rt_score_file(const char *path, const struct fw_rt_score_config *cfg,
				struct fw_tokenizer *tok, struct fw_model *m, struct fw_graph *g,
				const struct fw_rt_log *log, char **json, struct fw_err *err);

#ifdef __cplusplus
}
#endif
#endif
