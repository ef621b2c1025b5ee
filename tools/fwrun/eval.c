/* eval.c - fwrun eval: a checkpoint's loss and perplexity on validation
 * data, and the scores of --score-data (JSON on stdout). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fw/chat_template.h"
#include "session.h"

static const char eval_usage[] =
	"usage: fwrun eval --plugins=arch/X[,...] --load=CKPT [--valid-data=FILES [--eval-iters=N]]\n"
	"                  [--score-data=FILE.jsonl]\n"
	"Prints one JSON object on stdout: {\"eval_loss\", \"perplexity\", \"eval_iters\", \"tokens\"}\n"
	"for --valid-data, and the scores of --score-data's prompt/response and multiple-choice\n"
	"records (docs/training.md, \"Eval\"). An arch/encoder model prints its task's metrics\n"
	"(loss, accuracy; macro-F1 and the confusion matrix for classifiers) and --output=FILE\n"
	"writes each record's predicted label, probabilities and logits (docs/data-formats.md).\n";

/* Scoring needs a tokenizer with an EOS token and the logits. */
static enum fw_status eval_can_score(struct session *s, struct fw_err *err)
{
	if (!s->tok)
		return fw_errorf(err, FW_ERR_INVALID, "--score-data needs a tokenizer: a checkpoint "
				 "that stores one, or --tokenizer=byte (or gpt2 with --vocab-file "
				 "and --merge-file)");
	if (fw_tokenizer_eos(s->tok) < 0)
		return fw_errorf(err, FW_ERR_INVALID, "the %s tokenizer has no EOS token "
				 "(<|endoftext|>) to end responses with", fw_tokenizer_name(s->tok));
	struct fw_rt_loader none = { 0 };
	enum fw_status st = fw_rt_loader_check_vocab(&none, s->tok, model_vocab(s), err);
	if (st != FW_OK)
		return st;
	if (!s->model.logits)
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s gives no logits to score with",
				 s->slots.arch->desc->name);
	return FW_OK;
}

static void put_json_num(double x)
{
	if (isfinite(x))
		printf("%.9g", x);
	else
		fputs("null", stdout);
}

int cmd_eval(int argc, char **argv)
{
	struct session s;
	int rc = EXIT_RUNTIME;
	char *scores = NULL;
	if (wants_help(argc, argv))
		return command_help("eval", eval_usage, argc, argv);
	if (session_open(&s, "eval", argc, argv, false, DATA_REQUIRED, &rc) != 0)
		goto out;
	const char *score = opt_s(&s, "score-data");
	if (!*s.load_path) {
		rc = fail(FW_ERR_INVALID, "eval needs --load=CKPT and --valid-data=FILE[,...] or "
			 "--score-data=FILE.jsonl");
		goto out;
	}
	if (*score && eval_can_score(&s, &s.err) != FW_OK) {
		rc = fail(s.err.status, "%s", s.err.msg);
		goto out;
	}
	if (load_checkpoint(&s, s.load_path, false, &s.err) != FW_OK ||
	    adapter_apply(&s.cfg, &s.slots, &s.model, true, &s.err) != FW_OK) {
		rc = fail(s.err.status, "%s", s.err.msg);
		goto out;
	}
	session_ready(&s, "eval", argc, argv);
	double loss = NAN;
	double stats[2] = { 0, NAN };
	int64_t iters = opt_i(&s, "eval-iters");
	if (s.have_valid && (iters == 0 || iters > s.valid.n_micro))
		iters = s.valid.n_micro;          /* the whole validation set, once */
	if (s.task && !*score) {
		rc = task_eval(&s, iters);
		goto out;
	}
	struct fw_rt_eval ev = eval_of(&s, iters);
	if (s.have_valid && fw_rt_evaluate(&ev, &loss, stats, &s.err) != FW_OK) {
		rc = fail(s.err.status, "%s", s.err.msg);
		goto out;
	}
	struct fw_rt_score_config sc = {
		.max_bad = opt_i(&s, "max-bad-records"),
		.chatml = !strcmp(opt_s(&s, "chat-template"), "chatml"),
	};
	/* auto: messages records through the tokenizer's own template, as train's */
	struct fw_chat_template *jinja = NULL;
	void *vars = NULL;
	const char *cfg = *score && s.tok && !strcmp(opt_s(&s, "chat-template"), "auto") ?
		fw_tokenizer_config(s.tok, NULL) : NULL;
	if (cfg && fw_rt_chat_template_from_config(cfg, "the tokenizer's tokenizer_config.json",
						   &jinja, &vars, &s.err) != FW_OK) {
		rc = fail(s.err.status, "%s", s.err.msg);
		goto out;
	}
	sc.jinja = jinja;
	sc.jinja_vars = vars;
	enum fw_status st = *score ? fw_rt_score_file(score, &sc, s.tok, &s.model, s.eval_g,
						      &fwrun_log, &scores, &s.err) : FW_OK;
	fw_chat_template_free(jinja);
	json_decref(vars);
	if (st != FW_OK) {
		rc = fail(s.err.status, "%s", s.err.msg);
		goto out;
	}
	putchar('{');
	if (s.have_valid) {
		fputs("\"eval_loss\": ", stdout);
		put_json_num(loss);
		fputs(", \"perplexity\": ", stdout);
		put_json_num(exp(loss));
		printf(", \"eval_iters\": %lld, \"tokens\": %lld, \"unigram_loss\": ", (long long)iters,
		       (long long)stats[0]);
		put_json_num(stats[1]);
		fputs(scores ? ", " : "", stdout);
	}
	printf("%s}\n", scores ? scores : "");
	rc = EXIT_OK;
out:
	free(scores);
	free_session(&s);
	return rc;
}

