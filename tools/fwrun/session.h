/* session.h - what fwrun train, eval and plan share: one model from the
 * configuration's plugins, its graphs, optimizer, data and checkpoints
 * (session.c, on the runtime library). Private to those three commands. */
#ifndef FWRUN_SESSION_H
#define FWRUN_SESSION_H

#include "fwrun.h"

struct session {
	struct config cfg;
	struct fw_plugin_slots slots;
	struct fw_model model;
	struct fw_ctx *ctx;
	struct fw_graph *g;           /* training (or eval-only) graph */
	struct fw_graph *eval_g;
	struct fw_rt_optim *optim;    /* training (and plan) only */
	struct fw_rt_loader train, valid;
	bool have_train, have_valid;
	int n_new;                    /* peft tensors --load lacked (a new adapter) */
	bool resumed;                 /* --load restored a checkpoint's whole state */
	struct fw_tokenizer *tok;     /* NULL: token ids only */
	char load_path[4200];         /* --load resolved, or "" */
	int32_t *seg;                 /* (B, T) sequence ids of the batch, when segmented */
	struct fw_lr_schedule sched;
	int64_t B, T, accum, iters;   /* T: an encoder-decoder's decoder length */
	int64_t enc_T;                /* an encoder-decoder's encoder length; 0: none */
	int64_t step;                 /* completed optimizer steps */
	int64_t tokens;               /* tokens consumed so far */
	int64_t skipped;              /* steps skipped on overflow so far */
	enum fw_dtype precision;      /* --bf16: FW_BF16, --fp16: FW_F16, else FW_F32 */
	struct fw_rt_grad_scaler scaler;
	bool have_scaler;             /* --fp16 or --loss-scale */
	int64_t *inject;              /* --debug-inject-overflow steps */
	int n_inject;
	char run_dir[4096], save_dir[4096];
	FILE *metrics;
	struct fw_err err;
	size_t base_rss;              /* before the model: code, libraries */
	enum fw_rt_task_kind task;    /* arch/encoder's task; 0: the causal LM */
	struct fw_rt_task task_cfg;
	struct fw_rt_labels labels;
};

static inline int64_t opt_i(const struct session *s, const char *name)
{
	return fw_opt_int(s->cfg.run, name);
}

static inline double opt_f(const struct session *s, const char *name)
{
	return fw_opt_float(s->cfg.run, name);
}

static inline bool opt_b(const struct session *s, const char *name)
{
	return fw_opt_bool(s->cfg.run, name);
}

static inline const char *opt_s(const struct session *s, const char *name)
{
	return fw_opt_str(s->cfg.run, name);
}

/* --bf16/--fp16 and the loss-scale options checked (FW_ERR_INVALID naming
 * the option) and set into precision, scaler and inject (precision.c). */
enum fw_status precision_setup(struct session *s, struct fw_err *err);

/* What session_open does with --data / --valid-data. */
enum data_use { DATA_NONE, DATA_REQUIRED, DATA_IF_GIVEN };

/* argv and --config into the configuration, the plugins, --load's
 * checkpoint and tokenizer, the data (as use says), the model and its
 * graphs. On failure prints the error, sets *rc (usage or runtime) and
 * returns -1. free_session undoes it either way. */
int session_open(struct session *s, const char *cmd, int argc, char **argv, bool train,
		 enum data_use use, int *rc);
/* What came from --load's checkpoint and which options do nothing, said
 * once the command has everything it needs, so that an error stays one line. */
void session_ready(struct session *s, const char *cmd, int argc, char **argv);
void free_session(struct session *s);
/* The optimizer: state tensors and Megatron's two groups. */
enum fw_status setup_optim(struct session *s, struct fw_err *err);
/* A checkpoint restores everything (full: with the optimizer state and the
 * data position); a plain weights file only the weights. */
enum fw_status load_checkpoint(struct session *s, const char *path, bool full,
			       struct fw_err *err);
enum fw_status save_checkpoint(struct session *s, const char *path, struct fw_err *err);
/* arch/encoder's data (task.c): --data / --valid-data as task rows, the
 * label list collected or checked against --labels. */
enum fw_status task_open_data(struct session *s, bool train, const char *data,
			      const char *valid, struct fw_err *err);
/* eval of a task: its metrics as one JSON object on stdout and --output's
 * predictions. An exit code. */
int task_eval(struct session *s, int64_t iters);

/* The evaluation of the first n validation micro-batches (fw_rt_evaluate). */
struct fw_rt_eval eval_of(struct session *s, int64_t n);
int64_t model_vocab(const struct session *s);
/* A /proc/self/status field in bytes ("VmHWM: %zu kB"); 0 if unknown. */
size_t proc_status_kb(const char *format);

/* s2s_eval.c: fwrun eval --predict-with-generate on an encoder-decoder:
 * each {"input", "target"} record of --valid-data (else --data) generated
 * from sources of enc_len tokens (</s> included) into targets of up to
 * dec_len, and SQuAD v1.1's exact match and F1 (percent, averaged over the
 * records); --output (non-empty) gets one JSON line a record. */
struct s2s_scores {
	double exact_match, f1;
	int64_t records;
};
enum fw_status s2s_eval_generate(struct session *s, int64_t enc_len, int64_t dec_len,
				 const char *output, struct s2s_scores *out, struct fw_err *err);

#endif
