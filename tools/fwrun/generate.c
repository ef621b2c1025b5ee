/* generate.c - fwrun generate: sample tokens from a model with a KV cache.
 *
 * The decoding is the runtime's (fw/runtime/generate.h: a one-token graph
 * over per-layer KV caches, prefill, penalty and sampler); this file is
 * prompts, stop strings and printing.
 *
 * Prompts are token ids (--prompt-tokens; the output is ids) or text
 * (--prompt, --prompt-file, or one a line on stdin with --interactive; the
 * output is the continuation's text, written token by token as it is
 * sampled). Text needs a tokenizer: the checkpoint's, or --tokenizer.
 * With --chat a text prompt is a user message, or a JSON array of messages,
 * put in --chat-template's format (fw/runtime/chat.h); the tokenizer's EOS
 * and the template's end-of-turn tokens stop the answer.
 */
#define _GNU_SOURCE             /* memmem, getline */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "fwrun.h"

static int parse_tokens(const char *s, int32_t **out, int64_t *n)
{
	int64_t cap = 16;
	*n = 0;
	*out = malloc(sizeof(int32_t) * (size_t)cap);
	while (*out && *s) {
		char *end;
		long v = strtol(s, &end, 10);
		if (end == s || v < 0 || v > 1 << 30)
			return -1;
		if (*n == cap && !(*out = realloc(*out, sizeof(int32_t) * (size_t)(cap *= 2))))
			return -1;
		(*out)[(*n)++] = (int32_t)v;
		s = end;
		if (*s == ',')
			s++;
		else if (*s)
			return -1;
	}
	return *out ? 0 : -1;
}

/* --- stop strings and streamed text ------------------------------------------------ */

struct stops {
	char **s;
	size_t *len;
	int n;
	json_t *json;                     /* owns s[] when --stop is a JSON array */
};

/* --stop: one string, or a JSON array of non-empty strings when it starts
 * with '['. An empty --stop is none. */
static enum fw_status stops_parse(struct stops *st, const char *arg, struct fw_err *err)
{
	memset(st, 0, sizeof(*st));
	if (!*arg)
		return FW_OK;
	if (*arg != '[') {
		st->s = malloc(sizeof(*st->s));
		st->len = malloc(sizeof(*st->len));
		if (!st->s || !st->len)
			return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
		st->s[0] = (char *)arg;
		st->len[0] = strlen(arg);
		st->n = 1;
		return FW_OK;
	}
	json_error_t je;
	st->json = json_loads(arg, 0, &je);
	if (!st->json || !json_is_array(st->json))
		return fw_errorf(err, FW_ERR_INVALID, "--stop: %s (a string, or a JSON array of "
				 "strings such as [\"\\n\\n\", \"END\"])",
				 st->json ? "not an array" : je.text);
	size_t n = json_array_size(st->json);
	st->s = malloc(sizeof(*st->s) * (n ? n : 1));
	st->len = malloc(sizeof(*st->len) * (n ? n : 1));
	if (!st->s || !st->len)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		json_t *v = json_array_get(st->json, i);
		if (!json_is_string(v) || json_string_length(v) == 0)
			return fw_errorf(err, FW_ERR_INVALID, "--stop: element %zu is %s", i,
					 json_is_string(v) ? "an empty string" : "not a string");
		st->s[i] = (char *)json_string_value(v);
		st->len[i] = json_string_length(v);
	}
	st->n = (int)n;
	return FW_OK;
}

static void stops_free(struct stops *st)
{
	free(st->s);
	free(st->len);
	json_decref(st->json);
}

/* Generated text on its way to stdout. Bytes are printed as soon as no stop
 * string can begin in them: held back is only the longest suffix of the
 * pending bytes that is a proper prefix of a stop string. So every match
 * lies wholly inside the pending bytes when it completes, even one that
 * spans tokens or splits a UTF-8 character. */
struct text_out {
	const struct stops *stops;
	char *buf;
	size_t n, cap;
};

static void text_print(struct text_out *t, size_t n)
{
	if (n == 0)
		return;
	fwrite(t->buf, 1, n, stdout);
	memmove(t->buf, t->buf + n, t->n - n);
	t->n -= n;
}

/* Appends one token's bytes; true when the text now holds a stop string
 * (what precedes it has been printed, the rest dropped). */
static bool text_push(struct text_out *t, const char *bytes, size_t n)
{
	if (t->n + n > t->cap) {
		size_t cap = 2 * (t->n + n) + 64;
		char *b = realloc(t->buf, cap);
		if (!b) {               /* out of memory: print it all, stop matching */
			text_print(t, t->n);
			fwrite(bytes, 1, n, stdout);
			return false;
		}
		t->buf = b;
		t->cap = cap;
	}
	memcpy(t->buf + t->n, bytes, n);
	t->n += n;
	const struct stops *st = t->stops;
	size_t first = t->n;
	for (int i = 0; i < st->n; i++) {
		const char *at = st->len[i] > t->n ? NULL :
				 memmem(t->buf, t->n, st->s[i], st->len[i]);
		if (at && (size_t)(at - t->buf) < first)
			first = (size_t)(at - t->buf);
	}
	if (first < t->n) {
		text_print(t, first);
		t->n = 0;
		return true;
	}
	size_t hold = 0;
	for (int i = 0; i < st->n; i++)
		for (size_t k = st->len[i] - 1; k > hold; k--)
			if (k <= t->n && !memcmp(t->buf + t->n - k, st->s[i], k)) {
				hold = k;
				break;
			}
	text_print(t, t->n - hold);
	return false;
}

/* --- the decoding graph and one prompt's completion ----------------------------------- */

struct gen {
	struct fw_rt_decoder d;           /* the decoding model and its caches */
	int64_t n_pos;                    /* the arch's n-positions; 0 = not declared */
	int64_t max_new;
	struct fw_rt_gen_opts opts;       /* sampling */
	struct fw_tokenizer *tok;         /* NULL: print ids */
	struct fw_rt_chat chat;           /* the prompt format and the stop tokens */
	bool chat_prompts;                /* --chat */
	struct text_out text;
	/* one completion's output: */
	int32_t eos, turn_end;
	int printed;
};

/* The arch's n-positions option (an integer), or 0 if it has none. */
static int64_t arch_positions(const struct fw_options *o)
{
	for (int i = 0; i < fw_options_count(o); i++) {
		const struct fw_option_def *d = fw_options_def(o, i);
		if (!strcmp(d->name, "n-positions") && d->type == FW_OPT_INT)
			return fw_opt_int(o, "n-positions");
	}
	return 0;
}

static enum fw_status fits(const struct gen *s, int64_t n_prompt, struct fw_err *err)
{
	int64_t need = n_prompt + s->max_new;
	bool model = s->n_pos > 0 && need > s->n_pos;
	if (model || need > s->d.max_len)
		return fw_errorf(err, FW_ERR_INVALID,
				 "the prompt is %lld tokens; with --max-new-tokens=%lld that is "
				 "%lld positions, more than %s (%lld)",
				 (long long)n_prompt, (long long)s->max_new, (long long)need,
				 model ? "the model's n-positions (less its virtual tokens)" :
				 "the cache holds",
				 (long long)(model ? s->n_pos : s->d.max_len));
	return FW_OK;
}

/* Each generated token: its id, or its text up to a stop string or EOS. */
static enum fw_rt_action print_token(void *user, int32_t tok)
{
	struct gen *s = user;
	if (!s->tok) {
		printf("%s%d", s->printed++ ? "," : "", tok);
	} else {
		size_t nb = 0;
		const char *b = tok == s->eos || tok == s->turn_end ||
				fw_rt_chat_is_stop(&s->chat, tok) ? NULL :
				fw_tokenizer_token(s->tok, tok, &nb);
		if (!b || text_push(&s->text, b, nb))
			return FW_RT_STOP;      /* EOS or a stop string */
	}
	fflush(stdout);
	return FW_RT_CONTINUE;
}

/* Runs prompt[0..n) from an empty cache and prints what follows: ids, or
 * text up to a stop string or EOS, then a newline. The sampling sequence
 * depends only on the seed and the position, so a prompt always gives the
 * same completion. */
static enum fw_status complete(struct gen *s, const int32_t *prompt, int64_t n,
			       struct fw_err *err)
{
	if (fits(s, n, err) != FW_OK)
		return err->status;
	for (int64_t i = 0; i < n; i++)
		if (prompt[i] >= s->d.V)
			return fw_errorf(err, FW_ERR_INVALID, "%s: token %d is outside the "
					 "vocabulary (%d)", s->tok ? "prompt" : "--prompt-tokens",
					 prompt[i], s->d.V);
	s->text.n = 0;
	s->printed = 0;
	s->eos = s->tok ? fw_tokenizer_eos(s->tok) : -1;
	s->turn_end = s->tok ? fw_tokenizer_find(s->tok, "<|im_end|>", 10) : -1;
	if (s->turn_end >= 0 && !fw_tokenizer_is_special(s->tok, s->turn_end))
		s->turn_end = -1;       /* ChatML's end of turn stops like EOS */
	s->opts.max_new = s->max_new;
	enum fw_status st = fw_rt_generate(&s->d, prompt, n, &s->opts, print_token, s, err);
	if (st != FW_OK)
		return st;
	if (s->tok)
		text_print(&s->text, s->text.n);
	printf("\n");
	fflush(stdout);
	return FW_OK;
}

/* --- prompts --------------------------------------------------------------------------- */

/* --chat: a JSON array is the messages, other text one user message. */
static enum fw_status encode_chat(struct gen *s, const char *text, size_t len,
				  struct fw_token_buf *ids, struct fw_err *err)
{
	json_t *msgs = json_loadb(text, len, 0, NULL);
	if (!json_is_array(msgs)) {
		json_decref(msgs);
		msgs = json_pack("[{s:s%, s:s}]", "content", text, len, "role", "user");
	}
	char *m = msgs ? json_dumps(msgs, 0) : NULL;
	enum fw_status st = m ? fw_rt_chat_prompt(&s->chat, m, ids, err) :
		fw_errorf(err, FW_ERR_INVALID, "the prompt is not UTF-8 text");
	free(m);
	json_decref(msgs);
	return st;
}

static enum fw_status encode(struct gen *s, const char *text, size_t len,
			     struct fw_token_buf *ids, struct fw_err *err)
{
	ids->n = 0;
	/* Special-token text in a prompt is the special token, as in Hugging
	 * Face's tokenizers: prompts written in a chat template need it. */
	if (s->chat_prompts ? encode_chat(s, text, len, ids, err) != FW_OK :
	    fw_tokenizer_encode(s->tok, text, len, true, ids, err) != FW_OK)
		return err->status;
	if (ids->n == 0)
		return fw_errorf(err, FW_ERR_INVALID, "the prompt is empty");
	return FW_OK;
}

/* --interactive: a completion for each non-empty line of stdin. A prompt
 * that fails is reported and skipped; returns the number that failed. */
static int interact(struct gen *s)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int failed = 0;
	struct fw_token_buf ids = { 0 };
	bool tty = isatty(STDIN_FILENO);

	for (;;) {
		if (tty) {
			fputs("> ", stderr);
			fflush(stderr);
		}
		if ((n = getline(&line, &cap, stdin)) < 0)
			break;
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			line[--n] = '\0';
		if (n == 0)
			continue;
		struct fw_err err = { 0 };
		if (encode(s, line, (size_t)n, &ids, &err) != FW_OK ||
		    complete(s, ids.ids, (int64_t)ids.n, &err) != FW_OK) {
			say("%s", err.msg);
			failed++;
		}
	}
	free(line);
	fw_token_buf_free(&ids);
	return failed;
}

int cmd_generate(int argc, char **argv)
{
	struct config cfg;
	struct fw_err err = { 0 };
	char *pos[2], *file_text = NULL;
	int np = 0, rc = EXIT_RUNTIME;
	int32_t *prompt = NULL;
	int64_t n_prompt = 0;
	struct fw_token_buf ids = { 0 };
	struct fw_tensor **params = NULL;
	struct stops stops = { 0 };
	struct gen s = { 0 };

	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			printf("usage: fwrun generate --plugins=arch/X,attention/Y --load=CKPT\n"
			       "         (--prompt=TEXT | --prompt-file=PATH | "
			       "--prompt-tokens=1,2,3 | --interactive)\n"
			       "         [--max-new-tokens=N] [--temperature=T] [--top-k=K] "
			       "[--top-p=P] [--repetition-penalty=R] [--seed=S]\n"
			       "         [--stop=STRING | --stop='[\"A\", \"B\"]'] "
			       "[--tokenizer=byte|gpt2 ...]\n"
			       "         [--chat [--chat-template=auto|plain|chatml]]\n"
			       "A text prompt prints the continuation's text as it is produced, "
			       "until EOS, a stop string\n(not printed) or --max-new-tokens; "
			       "--interactive answers each line of stdin. Text needs\nthe "
			       "checkpoint's tokenizer or --tokenizer. --prompt-tokens prints the "
			       "generated ids,\ncomma-separated. --temperature=0 is greedy. --chat: the prompt is a user "
			       "message\n(or a JSON array of messages) in the chat template's format "
			       "(auto: the tokenizer's own),\nanswered until its end of turn.\n");
			return command_help("generate", "", argc, argv);
		}
	}
	if (config_load(&cfg, "generate", argc, argv, true, pos, 0, &np, &err) != FW_OK) {
		rc = fail(err.status, "%s", err.msg);
		config_free(&cfg);
		return rc;
	}
	const struct fw_options *o = cfg.run;
	const char *text = fw_opt_str(o, "prompt"), *file = fw_opt_str(o, "prompt-file");
	const char *token_list = fw_opt_str(o, "prompt-tokens");
	bool interactive = fw_opt_bool(o, "interactive");
	int n_given = !!*text + !!*file + !!*token_list;
	if (!*fw_opt_str(o, "load")) {
		rc = fail(FW_ERR_INVALID, "generate needs --load=CKPT");
		goto out;
	}
	enum fw_dtype precision;       /* --bf16/--fp16: autocast, as train and eval */
	if (precision_choice(fw_opt_bool(o, "bf16"), fw_opt_bool(o, "fp16"), &precision,
			     &err) != FW_OK) {
		rc = fail(err.status, "%s", err.msg);
		goto out;
	}
	if (interactive ? n_given > 0 : n_given != 1) {
		rc = fail(FW_ERR_INVALID, "%s", interactive ? "--interactive reads the prompts from "
			 "stdin; leave out --prompt, --prompt-file and --prompt-tokens" : n_given ?
			 "give only one of --prompt, --prompt-file and --prompt-tokens" :
			 "generate needs a prompt: --prompt=TEXT, --prompt-file=PATH, "
			 "--prompt-tokens=ID,ID,... or --interactive");
		goto out;
	}
	if (*token_list && (parse_tokens(token_list, &prompt, &n_prompt) != 0 || n_prompt == 0)) {
		rc = fail(FW_ERR_INVALID, "--prompt-tokens: expected ID,ID,... (non-negative integers)");
		goto out;
	}
	if (*token_list && *fw_opt_str(o, "stop")) {
		rc = fail(FW_ERR_INVALID, "--stop needs a text prompt (--prompt, --prompt-file or "
			 "--interactive), not --prompt-tokens");
		goto out;
	}
	if (stops_parse(&stops, fw_opt_str(o, "stop"), &err) != FW_OK) {
		rc = fail(FW_ERR_INVALID, "%s", err.msg);
		goto out;
	}
	char path[4200];
	if (resolve_load(fw_opt_str(o, "load"), path, sizeof(path), &err) != FW_OK) {
		rc = fail(err.status, "%s", err.msg);
		goto out;
	}
	if (!*token_list) {             /* text: the checkpoint's tokenizer or --tokenizer */
		s.tok = run_tokenizer(o, path, &err);
		if (!s.tok && err.status) {
			rc = fail(err.status, "%s",
				 err.msg);
			goto out;
		}
		if (!s.tok) {
			rc = fail(FW_ERR_INVALID, "%s needs a tokenizer and %s stores none: pass "
				 "--tokenizer=byte (or gpt2 with --vocab-file and --merge-file), "
				 "or use a checkpoint that stores one", *text ? "--prompt" :
				 *file ? "--prompt-file" : "--interactive", path);
			goto out;
		}
	}
	size_t text_len = strlen(text);
	if (*file && !(text = file_text = fw_rt_read_file(file, &text_len, &err))) {
		rc = fail(FW_ERR_INVALID, "--prompt-file: %s", err.msg);
		goto out;
	}
	s.chat_prompts = fw_opt_bool(o, "chat");
	if (s.chat_prompts && !s.tok) {
		rc = fail(FW_ERR_INVALID, "--chat needs a text prompt (--prompt, --prompt-file or "
			 "--interactive), not --prompt-tokens");
		goto out;
	}
	/* the stop tokens always; --chat's prompts fail on a template fw cannot use */
	if (s.tok && fw_rt_chat_open(&s.chat, s.tok, fw_opt_str(o, "chat-template"), &err) != FW_OK &&
	    (s.chat_prompts || fw_rt_chat_open(&s.chat, s.tok, "plain", &err) != FW_OK)) {
		rc = fail(err.status, "%s", err.msg);
		goto out;
	}
	if (!interactive && s.tok) {
		if (encode(&s, text, text_len, &ids, &err) != FW_OK) {
			rc = fail(FW_ERR_INVALID, "%s%s%s", *file ? file : "", *file ? ": " : "",
				 err.msg);
			goto out;
		}
		prompt = ids.ids;
		n_prompt = (int64_t)ids.n;
	}

	struct fw_plugin_slots slots = {
		.arch = cfg.plugin[FW_KIND_ARCH], .attention = cfg.plugin[FW_KIND_ATTENTION],
		.peft = cfg.plugin[FW_KIND_PEFT],
	};
	s.max_new = fw_opt_int(o, "max-new-tokens");
	s.n_pos = arch_positions(slots.arch->opts);
	if (interactive && s.n_pos <= 0) {
		rc = fail(FW_ERR_INVALID, "--interactive sizes its cache by the arch's n-positions, "
			 "and %s has none", slots.arch->desc->name);
		goto out;
	}
	if (fw_opt_int(o, "threads") > 0)
		fw_set_num_threads((int)fw_opt_int(o, "threads"));
	for (int k = 1; k < FW_KIND_COUNT; k++)
		if (cfg.plugin[k] && fw_plugin_init(cfg.plugin[k], NULL, &err) != FW_OK) {
			rc = fail(err.status, "%s", err.msg);
			goto out;
		}
	/* Virtual tokens (prompt tuning) take positions of their own. */
	int64_t n_virtual = 0;
	if (slots.peft && fw_rt_decoder_virtual(&slots, &n_virtual, &err) != FW_OK) {
		rc = fail(err.status, "%s", err.msg);
		goto out;
	}
	if (s.n_pos > 0)
		s.n_pos = s.n_pos > n_virtual ? s.n_pos - n_virtual : 1;
	/* The cache: one prompt gets just the positions it needs (each step
	 * attends over the whole cache); --interactive, whose prompts come
	 * later, gets the arch's n-positions, the most any prompt may use. */
	s.d.max_len = interactive ? s.n_pos : n_prompt + s.max_new;
	if (!interactive && fits(&s, n_prompt, &err) != FW_OK) {
		rc = fail(FW_ERR_INVALID, "%s", err.msg);
		goto out;
	}
	/* the peft plugin checks its options and marks its own tensors (freeze) */
	if (fw_rt_decoder_open_as(&s.d, &slots, s.d.max_len, (uint64_t)fw_opt_int(o, "seed"),
				  precision, &err) != FW_OK) {
		rc = fail(err.status, "%s", err.msg);
		goto out;
	}
	/* Weights: every parameter by name from the checkpoint. */
	int n_params = fw_rt_model_params(s.d.ctx, &params);
	int n_new;
	if (!params || fw_rt_model_load_weights(path, params, n_params, &slots,
						fw_opt_bool(o, "base-only"), &n_new, &fwrun_log,
						&err) != FW_OK ||
	    adapter_apply(&cfg, &slots, &s.d.m, true, &err) != FW_OK) {
		rc = fail(params ? err.status : FW_ERR_NOMEM, "%s", params ? err.msg : "out of memory");
		goto out;
	}
	config_report(&cfg);                                  /* once generation is possible */
	warn_unused_options(&cfg, "generate", argc, argv);
	s.opts.n_sample = s.d.V;
	if (s.tok) {            /* a padded vocabulary: ids past the tokenizer's never come */
		int nv = fw_tokenizer_vocab_size(s.tok);
		if (nv > s.d.V) {
			rc = fail(FW_ERR_INVALID, "the tokenizer has %d tokens, more than the model's "
				 "vocabulary (%d)", nv, s.d.V);
			goto out;
		}
		s.opts.n_sample = nv;
	}
	s.opts.temperature = fw_opt_float(o, "temperature");
	s.opts.top_p = fw_opt_float(o, "top-p");
	s.opts.top_k = (int)fw_opt_int(o, "top-k");
	s.opts.penalty = fw_opt_float(o, "repetition-penalty");
	s.opts.key = fw_hash_str("generate", (uint64_t)fw_opt_int(o, "seed"));
	s.text.stops = &stops;
	if (interactive) {
		rc = interact(&s) ? EXIT_RUNTIME : EXIT_OK;
	} else if (complete(&s, prompt, n_prompt, &err) != FW_OK) {
		rc = fail(err.status, "%s", err.msg);
	} else {
		rc = EXIT_OK;
	}
out:
	fw_rt_decoder_close(&s.d);
	free(s.text.buf);
	fw_rt_chat_close(&s.chat);
	fw_tokenizer_free(s.tok);
	free(params);
	if (prompt != ids.ids)
		free(prompt);
	fw_token_buf_free(&ids);
	free(file_text);
	stops_free(&stops);
	config_free(&cfg);
	return rc;
}
