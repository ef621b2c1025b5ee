/* task.c - arch/encoder's tasks in fwrun: masked-LM, sequence and token
 * classification data (fw/runtime/tasks.h), their label list, eval metrics
 * and eval --output predictions. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "session.h"

/* The label list against --num-labels; a list collected from the data goes
 * into --labels, so that the checkpoint stores it. */
static enum fw_status settle_labels(struct session *s, bool collected, struct fw_err *err)
{
	const struct fw_options *ao = s->cfg.plugin[FW_KIND_ARCH]->opts;
	int64_t want = fw_opt_int(ao, "num-labels");
	char *all = fw_rt_labels_join(&s->labels);
	if (!all)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	enum fw_status st = FW_OK;
	if (s->labels.n != want)
		st = fw_errorf(err, FW_ERR_INVALID, "--num-labels=%lld but %s has %d labels (%s): set "
			       "--num-labels=%d", (long long)want, collected ? "--data" : "--labels",
			       s->labels.n, all, s->labels.n);
	else if (collected)
		st = fw_options_set(s->cfg.run, "labels", all, err);
	free(all);
	return st;
}

/* T5's special ids: <pad> (0 when the tokenizer has none: the byte
 * tokenizer's NUL, which text does not hold) as padding and decoder start,
 * </s> (added to a tokenizer without it), sentinels down from <extra_id_0>,
 * else from the top of the model's vocabulary; the span corruption's
 * lengths from --seq-length. */
static enum fw_status seq2seq_specials(struct session *s, struct fw_rt_task *t,
				       struct fw_err *err)
{
	int64_t vocab = fw_opt_int(s->cfg.plugin[FW_KIND_ARCH]->opts, "vocab-size");
	int32_t pad = fw_tokenizer_find(s->tok, "<pad>", 5);
	int32_t eos = fw_tokenizer_find(s->tok, "</s>", 4);
	int32_t x0 = fw_tokenizer_find(s->tok, "<extra_id_0>", 12);
	if (eos < 0 && fw_tokenizer_add_special(s->tok, "</s>", 4, &eos, err) != FW_OK)
		return err->status;
	double density = opt_f(s, "noise-density"), mean = opt_f(s, "mean-noise-span-length");
	t->s2s = (struct fw_rt_seq2seq){
		.pad = pad < 0 ? 0 : pad, .eos = eos, .start = pad < 0 ? 0 : pad,
		.sentinel_top = x0 >= 0 ? x0 + 1 : (int32_t)vocab, .noise_density = density,
		.mean_span = mean, .raw_len = fw_rt_span_raw_length(s->T, density, mean),
		.seed = (uint64_t)opt_i(s, "seed"),
	};
	t->sp = (struct fw_rt_specials){ .cls = -1, .sep = -1, .mask = -1, .pad = t->s2s.pad };
	if (eos >= vocab)
		return fw_errorf(err, FW_ERR_INVALID, "--vocab-size=%lld has no room for </s> (id "
				 "%d in the tokenizer)", (long long)vocab, eos);
	return FW_OK;
}

/* An encoder-decoder's rows served as the model takes them: tokens and
 * targets of the decoder's length, seg of the encoder's. Span corruption
 * derives its target length from --seq-length (run_t5_mlm_flax), so it
 * takes no other lengths. */
static enum fw_status narrow_rows(struct session *s, struct fw_rt_loader *l, struct fw_err *err)
{
	if (s->task != FW_RT_TASK_SEQ2SEQ || (s->enc_T == s->T && l->T == s->T))
		return FW_OK;
	if (l->span)
		return fw_errorf(err, FW_ERR_INVALID, "--encoder-seq-length/--decoder-seq-length: "
				 "span corruption (text data) derives its target length from "
				 "--seq-length, as run_t5_mlm_flax does; give --seq-length alone");
	l->out_T = s->T;
	l->seg_T = s->enc_T;
	return FW_OK;
}

enum fw_status task_open_data(struct session *s, bool train, const char *data,
			      const char *valid, struct fw_err *err)
{
	enum fw_status st;
	if (!s->tok)
		return fw_errorf(err, FW_ERR_INVALID, "%s needs a tokenizer: --tokenizer (byte, or "
				 "gpt2 with --vocab-file=tokenizer.json) or a checkpoint that stores "
				 "one", s->cfg.plugin[FW_KIND_ARCH]->desc->name);
	if ((st = fw_rt_labels_parse(&s->labels, opt_s(s, "labels"), err)) != FW_OK)
		return st;
	bool cls = s->task == FW_RT_TASK_SEQ_CLS || s->task == FW_RT_TASK_TOKEN_CLS;
	bool given = s->labels.n > 0;
	if (cls && !train && !given)
		return fw_errorf(err, FW_ERR_INVALID, "eval of a classifier needs its label list: "
				 "--labels, or a checkpoint trained with one (--load)");
	struct fw_rt_task *t = &s->task_cfg;
	*t = (struct fw_rt_task){ .kind = s->task, .labels = &s->labels, .fixed = given };
	if (s->task == FW_RT_TASK_SEQ2SEQ)
		st = seq2seq_specials(s, t, err);
	else
		st = fw_rt_specials_find(s->tok, &t->sp, err);
	if (st != FW_OK)
		return st;
	t->mlm = (struct fw_rt_mlm){
		.prob = opt_f(s, "mlm-probability"), .sp = t->sp,
		.vocab = (int32_t)fw_opt_int(s->cfg.plugin[FW_KIND_ARCH]->opts, "vocab-size"),
		.seed = (uint64_t)opt_i(s, "seed"),
	};
	int64_t max_bad = opt_i(s, "max-bad-records");
	uint64_t seed = (uint64_t)opt_i(s, "seed");
	/* seq2seq rows hold the encoder's and the decoder's lengths */
	int64_t W = s->enc_T > s->T ? s->enc_T : s->T;
	t->s2s.enc_len = s->enc_T;
	t->s2s.dec_len = s->T;
	if (train) {
		s->have_train = true;
		st = fw_rt_task_open(&s->train, t, data, "data", s->tok, s->B, W,
				     fw_opt_bool(s->cfg.run, "shuffle"), seed, max_bad, &fwrun_log, err);
		if (st != FW_OK || (st = narrow_rows(s, &s->train, err)) != FW_OK)
			return st;
	}
	if (cls && (st = settle_labels(s, train && !given, err)) != FW_OK)
		return st;
	t->fixed = true;          /* validation data: the training labels only */
	if (*valid || (!train && *data)) {
		s->have_valid = true;
		st = fw_rt_task_open(&s->valid, t, *valid ? valid : data,
				     *valid ? "valid-data" : "data", s->tok, s->B, W, false, seed,
				     max_bad, &fwrun_log, err);
		if (st == FW_OK)
			st = narrow_rows(s, &s->valid, err);
	}
	return st;
}

static void put_num(FILE *f, double x)
{
	if (isfinite(x))
		fprintf(f, "%.9g", x);
	else
		fputs("null", f);
}

static void put_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++)
		if (*s == '"' || *s == '\\')
			fprintf(f, "\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			fprintf(f, "\\u%04x", *s);
		else
			fputc(*s, f);
	fputc('"', f);
}

/* One line per validation row: the label, its probabilities and the
 * logits (sequence classification), or the label and logits of each word
 * (token classification). */
static enum fw_status predictions(struct session *s, const char *path, struct fw_err *err)
{
	struct fw_model *m = &s->model;
	struct fw_rt_loader *l = &s->valid;
	int64_t B = m->batch, T = m->seq_len, L = s->labels.n;
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	fw_rt_loader_seek(l, 0, 0);
	enum fw_status st = FW_OK;
	const int32_t *tg = m->targets->data;
	for (int64_t row = 0; st == FW_OK && row < l->rows.n; row += B) {
		fw_rt_batch_next(l, m, s->seg);
		if (fw_graph_forward(s->eval_g) != FW_OK) {
			st = fw_errorf(err, FW_ERR_INTERNAL, "eval: %s", fw_ctx_err(m->ctx)->msg);
			break;
		}
		const float *lg = m->logits->data;
		for (int64_t b = 0; b < B && row + b < l->rows.n; b++) {
			if (s->task == FW_RT_TASK_SEQ_CLS) {
				const float *x = lg + b * L;
				double mx = x[0], z = 0;
				int64_t best = 0;
				for (int64_t c = 1; c < L; c++)
					if (x[c] > x[best])
						best = c, mx = x[c];
				for (int64_t c = 0; c < L; c++)
					z += exp((double)x[c] - mx);
				fputs("{\"label\": ", f);
				put_string(f, s->labels.names[best]);
				fputs(", \"probabilities\": {", f);
				for (int64_t c = 0; c < L; c++) {
					fputs(c ? ", " : "", f);
					put_string(f, s->labels.names[c]);
					fputs(": ", f);
					put_num(f, exp((double)x[c] - mx) / z);
				}
				fputs("}, \"logits\": [", f);
				for (int64_t c = 0; c < L; c++) {
					fputs(c ? ", " : "", f);
					put_num(f, x[c]);
				}
				fputs("]}\n", f);
				continue;
			}
			for (int pass = 0; pass < 2; pass++) {     /* labels, then logits */
				fputs(pass ? ", \"logits\": [" : "{\"labels\": [", f);
				int words = 0;
				for (int64_t t = 0; t < T; t++) {
					if (tg[b * T + t] == -1)      /* not a first sub-token */
						continue;
					const float *x = lg + (b * T + t) * L;
					int64_t best = 0;
					for (int64_t c = 1; c < L; c++)
						if (x[c] > x[best])
							best = c;
					fputs(words++ ? ", " : "", f);
					if (!pass) {
						put_string(f, s->labels.names[best]);
						continue;
					}
					for (int64_t c = 0; c < L; c++) {
						fputs(c ? ", " : "[", f);
						put_num(f, x[c]);
					}
					fputc(']', f);
				}
				fputs(pass ? "]}\n" : "]", f);
			}
		}
	}
	fclose(f);
	if (st == FW_OK)
		st = fw_file_write_atomic(path, buf, len, err);
	free(buf);
	return st;
}

int task_eval(struct session *s, int64_t iters)
{
	const char *out = opt_s(s, "output");
	bool generate = opt_b(s, "predict-with-generate");
	if (generate && s->task != FW_RT_TASK_SEQ2SEQ)
		return fail(FW_ERR_INVALID, "--predict-with-generate is for encoder-decoder archs "
			    "(seq2seq data)");
	if (*out && (s->task == FW_RT_TASK_MLM || (s->task == FW_RT_TASK_SEQ2SEQ && !generate)))
		return fail(FW_ERR_INVALID, "--output: predictions are for classification heads%s, "
			    "not %s", s->task == FW_RT_TASK_MLM ? "" : " and --predict-with-generate",
			    s->task == FW_RT_TASK_MLM ? "--head=mlm" : "seq2seq");
	struct fw_rt_task_metrics mt;
	struct fw_rt_eval ev = eval_of(s, iters);
	if (fw_rt_task_evaluate(&ev, &mt, &s->err) != FW_OK)
		return fail(s->err.status ? s->err.status : FW_ERR_FORMAT, "%s", s->err.msg);
	struct s2s_scores gen = { 0 };
	if (generate && s2s_eval_generate(s, s->enc_T, s->T, out, &gen,
					  &s->err) != FW_OK) {
		free(mt.confusion);
		return fail(s->err.status ? s->err.status : FW_ERR_FORMAT, "%s", s->err.msg);
	}
	if (*out && !generate && predictions(s, out, &s->err) != FW_OK) {
		free(mt.confusion);
		return fail(s->err.status ? s->err.status : FW_ERR_FORMAT, "%s", s->err.msg);
	}
	fputs("{\"eval_loss\": ", stdout);
	put_num(stdout, mt.loss);
	fputs(", \"accuracy\": ", stdout);
	put_num(stdout, mt.accuracy);
	printf(", \"eval_iters\": %lld, \"targets\": %lld", (long long)iters, (long long)mt.targets);
	if (generate) {
		fputs(", \"exact_match\": ", stdout);
		put_num(stdout, gen.exact_match);
		fputs(", \"f1\": ", stdout);
		put_num(stdout, gen.f1);
		printf(", \"generated\": %lld", (long long)gen.records);
	}
	if (mt.n_labels) {
		fputs(", \"macro_f1\": ", stdout);
		put_num(stdout, mt.macro_f1);
		fputs(", \"labels\": [", stdout);
		for (int c = 0; c < s->labels.n; c++) {
			fputs(c ? ", " : "", stdout);
			put_string(stdout, s->labels.names[c]);
		}
		fputs("], \"confusion\": [", stdout);
		for (int r = 0; r < mt.n_labels; r++) {
			fputs(r ? ", [" : "[", stdout);
			for (int c = 0; c < mt.n_labels; c++)
				printf("%s%lld", c ? ", " : "",
				       (long long)mt.confusion[(int64_t)r * mt.n_labels + c]);
			fputc(']', stdout);
		}
		fputc(']', stdout);
	}
	puts("}");
	free(mt.confusion);
	return EXIT_OK;
}
