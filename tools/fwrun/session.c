/* session.c - fwrun train, eval and plan's common part on the runtime
 * library: the plugins of the configuration, the model (fw_rt_model_build)
 * and its graphs, the optimizer (fw_rt_optim), --load's checkpoint (the
 * runtime's checkpoint schema), the tokenizer and the datasets. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fw/chat_template.h"
#include "session.h"

/* A /proc/self/status field in bytes ("VmRSS: %zu kB"); 0 if unknown. */
size_t proc_status_kb(const char *format)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	size_t kb = 0;
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, format, &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb * 1024;
}

/* Resident memory of this process now. */
static size_t rss_now(void)
{
	return proc_status_kb("VmRSS: %zu kB");
}

/* --- model ------------------------------------------------------------------------ */

/* Initialises every plugin (once) and fills the slots the arch sees. */
static enum fw_status init_plugins(struct session *s, struct fw_err *err)
{
	enum fw_status st;
	for (int k = 1; k < FW_KIND_COUNT; k++)
		if (s->cfg.plugin[k] && (st = fw_plugin_init(s->cfg.plugin[k], NULL, err)) != FW_OK)
			return st;
	s->slots = (struct fw_plugin_slots){
		.arch = s->cfg.plugin[FW_KIND_ARCH], .attention = s->cfg.plugin[FW_KIND_ATTENTION],
		.peft = s->cfg.plugin[FW_KIND_PEFT], .optim = s->cfg.plugin[FW_KIND_OPTIM],
	};
	return FW_OK;
}

/* The model spec of this session: its plugins, batch shape and seed. */
static struct fw_rt_model_spec model_spec(const struct session *s,
					  const struct fw_plugin_slots *slots, bool training)
{
	return (struct fw_rt_model_spec){
		.plugins = slots, .batch = s->B, .seq_len = s->T, .training = training,
		.seed = (uint64_t)opt_i(s, "seed"), .enc_len = s->enc_T,
	};
}

/* Plugins and their options checked before any data is read: the model
 * built once without data, with a twin of the peft plugin (whose state
 * belongs to one model), then thrown away. */
static enum fw_status check_model(struct session *s, bool training, struct fw_err *err)
{
	struct fw_model m;
	struct fw_plugin_slots check = s->slots;
	enum fw_status st = FW_OK;
	if (s->slots.peft)
		st = fw_rt_plugin_twin(s->slots.peft, &check.peft, err);
	struct fw_rt_model_spec spec = model_spec(s, &check, training);
	struct fw_ctx *ctx = st == FW_OK ? fw_ctx_new() : NULL;
	if (st == FW_OK && !ctx)
		st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	if (st == FW_OK)
		st = fw_rt_model_build(&spec, ctx, &m, err);
	s->task = st == FW_OK ? fw_rt_task_of_head(m.head) : 0;
	fw_ctx_free(ctx);
	if (check.peft != s->slots.peft)
		fw_plugin_close(check.peft);
	return st;
}

/* An encoder-decoder's lengths (Megatron's T5 flags): the encoder's
 * --encoder-seq-length and the decoder's --decoder-seq-length, each 0 =
 * --seq-length; the flags are refused for other archs. */
static enum fw_status seq2seq_lengths(struct session *s, struct fw_err *err)
{
	int64_t te = opt_i(s, "encoder-seq-length"), td = opt_i(s, "decoder-seq-length");
	if (s->task != FW_RT_TASK_SEQ2SEQ) {
		if (te || td)
			return fw_errorf(err, FW_ERR_INVALID, "--%s-seq-length is for encoder-decoder "
					 "archs (arch/encdec); %s has one --seq-length", te ?
					 "encoder" : "decoder", s->cfg.plugin[FW_KIND_ARCH]->desc->name);
		return FW_OK;
	}
	s->enc_T = te > 0 ? te : s->T;
	s->T = td > 0 ? td : s->T;
	return FW_OK;
}

/* Special tokens the task of the model's head adds to a tokenizer that
 * lacks them (tools/fwrun/task.c): [CLS] [SEP] [MASK] [PAD] for the
 * encoder tasks, </s> for seq2seq. */
static long task_specials(enum fw_rt_task_kind k)
{
	return k == FW_RT_TASK_MLM || k == FW_RT_TASK_SEQ_CLS || k == FW_RT_TASK_TOKEN_CLS ? 4 :
	       k == FW_RT_TASK_SEQ2SEQ ? 1 : 0;
}

/* --tokenizer=byte: the vocab-size config_load set grows by the task's
 * special tokens (one the user set must hold them). */
static enum fw_status vocab_for_task(struct session *s, struct fw_err *err)
{
	struct fw_loaded *arch = s->cfg.plugin[FW_KIND_ARCH];
	if (strcmp(opt_s(s, "tokenizer"), "byte") || !arch ||
	    !fw_options_has(arch->opts, "vocab-size"))
		return FW_OK;
	bool chatml = !strcmp(opt_s(s, "chat-template"), "chatml");
	long extra = task_specials(s->task), need = 257 + (chatml ? 2 : 0) + extra;
	const char *what = extra == 4 ? "the task's [CLS] [SEP] [MASK] [PAD]" :
			   extra ? "the task's </s>" : "";
	char with[96];
	snprintf(with, sizeof(with), "%s%s%s", chatml ? "chatml's two special tokens" : "",
		 chatml && extra ? " and " : "", what);
	if (!s->cfg.vocab_auto) {
		long have = (long)fw_opt_int(arch->opts, "vocab-size");
		if (extra && have < need)
			return fw_errorf(err, FW_ERR_INVALID, "the byte tokenizer's %ld tokens (with %s) "
					 "do not fit --vocab-size=%ld; leave --vocab-size out to get %ld",
					 need, with, have, need);
		return FW_OK;
	}
	char v[16];
	snprintf(v, sizeof(v), "%ld", need);
	fprintf(stderr, "fwrun: --vocab-size=%s for --tokenizer=byte%s%s (give --vocab-size to "
		"override)\n", v, *with ? " with " : "", with);
	if (!extra)
		return FW_OK;
	/* the arch read its options at init: a twin takes the new size */
	struct fw_loaded *twin = NULL;
	enum fw_status st = fw_options_set(arch->opts, "vocab-size", v, err);
	if (st == FW_OK)
		st = fw_rt_plugin_twin(arch, &twin, err);
	if (st != FW_OK)
		return st;
	fw_plugin_close(arch);
	s->cfg.plugin[FW_KIND_ARCH] = s->slots.arch = twin;
	return FW_OK;
}

static enum fw_status build_model(struct session *s, bool training, struct fw_err *err)
{
	s->ctx = fw_ctx_new();
	if (!s->ctx)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	fw_ctx_set_autocast(s->ctx, s->precision);      /* --bf16, --fp16: matmuls in half */
	struct fw_rt_model_spec spec = model_spec(s, &s->slots, training);
	spec.segmented = (s->have_train && s->train.rows.n) || (s->have_valid && s->valid.rows.n);
	enum fw_status st = fw_rt_model_build(&spec, s->ctx, &s->model, err);
	if (st != FW_OK)
		return st;
	int64_t seg_T = s->enc_T > s->T ? s->enc_T : s->T;      /* an encoder's may be longer */
	if (spec.segmented && !(s->seg = malloc(sizeof(int32_t) * (size_t)(s->B * seg_T))))
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	return FW_OK;
}

static enum fw_status build_graphs(struct session *s, bool train, struct fw_err *err)
{
	struct fw_tensor *loss = s->model.loss;
	bool need_eval = !train || *opt_s(s, "valid-data");
	if (train) {
		/* Segments exist only where the arch asked for recomputation. */
		s->g = fw_graph_new(s->ctx, &loss, 1, &(struct fw_graph_opts){
			.backward = true, .training = true, .recompute = true });
		if (!s->g)
			return fw_errorf(err, fw_ctx_err(s->ctx)->status, "graph: %s",
					 fw_ctx_err(s->ctx)->msg);
	}
	if (!need_eval)
		return FW_OK;      /* no memory for an evaluation that never runs */
	/* Scoring (eval --score-data) reads the logits too. */
	struct fw_tensor *out[2] = { loss, s->model.logits };
	bool logits = !train && (*opt_s(s, "score-data") || s->task) && s->model.logits;
	s->eval_g = fw_graph_new(s->ctx, out, logits ? 2 : 1, &(struct fw_graph_opts){ 0 });
	if (!s->eval_g)
		return fw_errorf(err, fw_ctx_err(s->ctx)->status, "graph: %s",
				 fw_ctx_err(s->ctx)->msg);
	return FW_OK;
}

/* The optimizer: state tensors "optim.<param>.<state>", and Megatron's two
 * groups (no weight decay on 1-D tensors). */
enum fw_status setup_optim(struct session *s, struct fw_err *err)
{
	s->optim = fw_rt_optim_new(s->ctx, s->g, s->slots.optim, &(struct fw_rt_optim_config){
		.weight_decay = opt_f(s, "weight-decay") }, err);
	return s->optim ? FW_OK : err->status;
}

void free_session(struct session *s)
{
	if (s->metrics)
		fclose(s->metrics);
	fw_rt_optim_free(s->optim);
	if (s->have_train)
		fw_rt_loader_close(&s->train);
	if (s->have_valid)
		fw_rt_loader_close(&s->valid);
	fw_graph_free(s->eval_g);
	fw_graph_free(s->g);
	fw_ctx_free(s->ctx);
	fw_tokenizer_free(s->tok);
	free(s->seg);
	free(s->inject);
	fw_rt_labels_free(&s->labels);
	config_free(&s->cfg);
}

/* --- checkpoints ---------------------------------------------------------------------- */

enum fw_status save_checkpoint(struct session *s, const char *path, struct fw_err *err)
{
	struct fw_tensor **params = NULL;
	int np = fw_rt_model_params(s->ctx, &params), ns = 0;
	struct fw_tensor **state = s->optim ? fw_rt_optim_state(s->optim, &ns) : NULL;
	char *config = config_dump(&s->cfg);
	char *tok = s->tok ? fw_tokenizer_serialize(s->tok, err) : NULL;
	enum fw_status st;
	if (s->tok && !tok)
		st = err->status;
	else if (np < 0 || !config)
		st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	else
		st = fw_rt_ckpt_save(path, params, np, state, ns, &(struct fw_rt_ckpt_meta){
			.config = config, .tokenizer = tok, .step = s->step, .tokens = s->tokens,
			.optimizer = s->slots.optim ? s->slots.optim->desc->name : "",
			.data_epoch = s->have_train ? s->train.epoch : 0,
			.data_cursor = s->have_train ? s->train.cursor : 0,
			.seed = opt_i(s, "seed"), .plugins = &s->slots, .skipped = s->skipped,
			.scaler = s->have_scaler ? &s->scaler : NULL }, err);
	fw_free(tok);
	free(config);
	free(params);
	return st;
}

/* A checkpoint restores everything; a plain weights file only the weights. */
enum fw_status load_checkpoint(struct session *s, const char *path, bool full,
				      struct fw_err *err)
{
	struct fw_tensor **params = NULL;
	int np = fw_rt_model_params(s->ctx, &params);
	enum fw_status st;
	if (np < 0)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	bool is_ckpt;
	if ((st = fw_rt_ckpt_probe(path, &is_ckpt, err)) != FW_OK) {
		free(params);
		return st;
	}
	int n_new = 0;
	st = fw_rt_model_load_weights(path, params, np, &s->slots,
				      fw_opt_bool(s->cfg.run, "base-only"), &n_new, &fwrun_log, err);
	s->n_new = n_new;
	free(params);
	if (st == FW_OK && n_new && (full || !s->slots.peft) && !*opt_s(s, "adapter"))
		fprintf(stderr, "fwrun: %d %s tensors are not in %s: they start from their "
			"initialisation\n", n_new, s->slots.peft ? s->slots.peft->desc->name :
			"task head", path);
	if (st != FW_OK || !is_ckpt || !full || !s->optim)
		return st;
	if (fw_opt_bool(s->cfg.run, "finetune"))
		return FW_OK;      /* weights only: step 0, fresh optimizer, data from the start */
	if (n_new)
		return fw_errorf(err, FW_ERR_NOT_FOUND,
				 "%s: this run trains %d tensors the checkpoint has no optimizer "
				 "state for; add --finetune to start from its weights", path, n_new);
	int ns;
	struct fw_tensor **state = fw_rt_optim_state(s->optim, &ns);
	if ((st = fw_h5_load(path, state, ns, err)) != FW_OK)
		return st;
	s->resumed = true;
	struct fw_rt_ckpt_meta meta = { 0 };
	if ((st = fw_rt_ckpt_read_progress(path, &meta, err)) != FW_OK)
		return st;
	s->step = meta.step;
	s->tokens = meta.tokens;
	s->skipped = meta.skipped;
	struct fw_err se = { 0 };
	if (s->have_scaler && (st = fw_rt_ckpt_read_scaler(path, &s->scaler, &se)) != FW_OK &&
	    st != FW_ERR_NOT_FOUND) {      /* none: a run without a scaler, which starts one */
		*err = se;
		return st;
	}
	if (s->have_train)
		fw_rt_loader_seek(&s->train, meta.data_epoch, meta.data_cursor);
	return FW_OK;
}

int64_t model_vocab(const struct session *s)
{
	const struct fw_tensor *lg = s->model.logits;
	if (s->task && s->task != FW_RT_TASK_MLM)     /* logits over labels, not tokens */
		return fw_opt_int(s->cfg.plugin[FW_KIND_ARCH]->opts, "vocab-size");
	return lg ? lg->ne[lg->ndim - 1] : 65536;
}

/* Mean loss of the first n validation micro-batches (fw_rt_evaluate). */
struct fw_rt_eval eval_of(struct session *s, int64_t n)
{
	return (struct fw_rt_eval){
		.m = &s->model, .g = s->eval_g, .data = s->have_valid ? &s->valid : NULL,
		.seg = s->seg, .n = n,
		.per_token = fw_opt_bool(s->cfg.run, "calculate-per-token-loss"),
	};
}

/* --load, the tokenizer, then the data: train reads --data (and
 * --valid-data), eval --valid-data (or --data). */

static enum fw_status open_datasets(struct session *s, bool train, enum data_use use,
				    struct fw_err *err)
{
	enum fw_status st;
	const char *load = opt_s(s, "load");
	if (*load && (st = resolve_load(load, s->load_path, sizeof(s->load_path), err)) != FW_OK)
		return st;
	s->tok = run_tokenizer(s->cfg.run, s->load_path, err);
	if (err->status)
		return err->status;
	const char *data = opt_s(s, "data"), *valid = opt_s(s, "valid-data");
	if (use == DATA_IF_GIVEN && !*data && !*valid)
		return FW_OK;
	if (train && !*data)
		return fw_errorf(err, FW_ERR_INVALID, "train needs --data=FILE[,...] (token shards, "
				 "text or JSONL)");
	if (!train && !*valid && !*data && !*opt_s(s, "score-data"))
		return fw_errorf(err, FW_ERR_INVALID, "eval needs --load=CKPT and "
				 "--valid-data=FILE[,...] or --score-data=FILE.jsonl");
	if (s->task)
		return task_open_data(s, train, data, valid, err);
	/* auto: the chat_template of the tokenizer's tokenizer_config.json */
	struct fw_chat_template *jinja = NULL;
	void *jinja_vars = NULL;
	const char *cfg = s->tok && !strcmp(opt_s(s, "chat-template"), "auto") ?
		fw_tokenizer_config(s->tok, NULL) : NULL;
	if (cfg && fw_rt_chat_template_from_config(cfg, "the tokenizer's tokenizer_config.json",
						   &jinja, &jinja_vars, err) != FW_OK)
		return err->status;
	if (jinja && (*data || *valid))
		fprintf(stderr, "fwrun: messages records through the tokenizer's own chat template "
			"(tokenizer_config.json); --chat-template=plain or chatml for fw's\n");
	st = FW_OK;
	struct fw_rt_data_config dc = {
		.format = opt_s(s, "data-format"), .packed = !strcmp(opt_s(s, "packing"), "packed"),
		.truncate = !strcmp(opt_s(s, "too-long"), "truncate"),
		.chatml = !strcmp(opt_s(s, "chat-template"), "chatml"),
		.max_bad = opt_i(s, "max-bad-records"), .seed = (uint64_t)opt_i(s, "seed"),
		.B = s->B, .T = s->T, .jinja = jinja, .jinja_vars = jinja_vars,
	};
	if (train) {
		s->have_train = true;
		dc.shuffle = fw_opt_bool(s->cfg.run, "shuffle");
		st = fw_rt_dataset_open(&s->train, &dc, data, "data", s->tok, &fwrun_log, err);
	}
	if (st == FW_OK && (*valid || (!train && *data))) {
		s->have_valid = true;
		dc.shuffle = false;
		st = fw_rt_dataset_open(&s->valid, &dc, *valid ? valid : data,
					*valid ? "valid-data" : "data", s->tok, &fwrun_log, err);
	}
	fw_chat_template_free(jinja);       /* the records are tokenized by now */
	json_decref(jinja_vars);
	return st;
}

int session_open(struct session *s, const char *cmd, int argc, char **argv, bool train,
			enum data_use use, int *rc)
{
	char *pos[4];
	int np = 0;
	enum fw_status st;
	memset(s, 0, sizeof(*s));
	if (config_load(&s->cfg, cmd, argc, argv, true, pos, 0, &np, &s->err) != FW_OK) {
		*rc = fail(s->err.status, "%s", s->err.msg);
		return -1;
	}
	if (precision_setup(s, &s->err) != FW_OK) {
		*rc = fail(s->err.status, "%s", s->err.msg);
		return -1;
	}
	set_threads((int)opt_i(s, "threads"));
	s->base_rss = rss_now();
	s->B = opt_i(s, "micro-batch-size");
	s->T = opt_i(s, "seq-length");
	if (init_plugins(s, &s->err) != FW_OK || check_model(s, train, &s->err) != FW_OK ||
	    seq2seq_lengths(s, &s->err) != FW_OK || vocab_for_task(s, &s->err) != FW_OK) {
		*rc = fail(s->err.status, "%s",
			  s->err.msg);
		return -1;
	}
	if (use != DATA_NONE && (st = open_datasets(s, train, use, &s->err)) != FW_OK) {
		*rc = fail(st, "%s", s->err.msg);
		return -1;
	}
	if (build_model(s, train, &s->err) != FW_OK || build_graphs(s, train, &s->err) != FW_OK ||
	    (s->have_train && fw_rt_loader_check_vocab(&s->train, s->tok, model_vocab(s), &s->err)) ||
	    (s->have_valid && fw_rt_loader_check_vocab(&s->valid, s->tok, model_vocab(s), &s->err))) {
		/* INVALID: flags that cannot make this model (sizes, --seq-length) */
		*rc = fail(s->err.status, "%s",
			  s->err.msg);
		return -1;
	}
	return 0;
}

/* What came from --load's checkpoint and which options do nothing, said
 * once the command has everything it needs, so that an error stays one line. */
void session_ready(struct session *s, const char *cmd, int argc, char **argv)
{
	config_report(&s->cfg);
	warn_unused_options(&s->cfg, cmd, argc, argv);
}

