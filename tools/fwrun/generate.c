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
 *
 * A generation_config.json (the checkpoint's, kept by fwrun import, else the
 * file beside the checkpoint) gives the defaults of what the command line
 * leaves out, as Hugging Face's generate reads it (docs/tokenizers.md).
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
	struct bytes *kept;               /* non-NULL: text goes here, not to stdout (--prompts) */
};

struct bytes {
	char *p;
	size_t n, cap;
};

/* Appends b[0..n); out of memory drops them. */
static void keep_bytes(struct bytes *k, const char *b, size_t n)
{
	if (k->n + n > k->cap) {
		size_t cap = 2 * (k->n + n) + 64;
		char *p = realloc(k->p, cap);
		if (!p)
			return;
		k->p = p;
		k->cap = cap;
	}
	memcpy(k->p + k->n, b, n);
	k->n += n;
}

static void text_print(struct text_out *t, size_t n)
{
	if (n == 0)
		return;
	if (t->kept)
		keep_bytes(t->kept, t->buf, n);
	else
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
			if (t->kept)
				keep_bytes(t->kept, bytes, n);
			else
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
	int32_t stop_ids[FW_RT_GENCONFIG_MAX_EOS];      /* generation_config's eos_token_id */
	int n_stop_ids;
	struct s2s_gen *s2s;              /* an encoder-decoder's model, in place of d */
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

/* --eos-token-id: ids, comma-separated, at most FW_RT_GENCONFIG_MAX_EOS. */
static enum fw_status eos_ids_parse(struct gen *s, const char *arg, struct fw_err *err)
{
	int32_t *ids = NULL;
	int64_t n = 0;
	enum fw_status st = FW_OK;
	if (parse_tokens(arg, &ids, &n) != 0 || n == 0)
		st = fw_errorf(err, FW_ERR_INVALID, "--eos-token-id: '%s' is not a comma-separated "
			       "list of token ids", arg);
	else if (n > FW_RT_GENCONFIG_MAX_EOS)
		st = fw_errorf(err, FW_ERR_INVALID, "--eos-token-id: %lld ids, at most %d",
			       (long long)n, FW_RT_GENCONFIG_MAX_EOS);
	for (int64_t i = 0; st == FW_OK && i < n; i++)
		s->stop_ids[i] = ids[i];
	if (st == FW_OK)
		s->n_stop_ids = (int)n;
	free(ids);
	return st;
}

/* Whether tok is one of the end-of-sequence ids (generation_config.json's
 * or --eos-token-id). */
static bool is_stop_id(const struct gen *s, int32_t tok)
{
	for (int i = 0; i < s->n_stop_ids; i++)
		if (tok == s->stop_ids[i])
			return true;
	return false;
}

/* The tokenizer's end of text or turn (with a tokenizer only). */
static void stop_ids(struct gen *s)
{
	s->eos = s->tok ? fw_tokenizer_eos(s->tok) : -1;
	s->turn_end = s->tok ? fw_tokenizer_find(s->tok, "<|im_end|>", 10) : -1;
	if (s->turn_end >= 0 && !fw_tokenizer_is_special(s->tok, s->turn_end))
		s->turn_end = -1;       /* ChatML's end of turn stops like EOS */
}

/* The bytes of generated token tok, or NULL when it ends the text (EOS, an
 * end of turn, an id without bytes). */
static const char *token_text(const struct gen *s, int32_t tok, size_t *nb)
{
	*nb = 0;
	return tok == s->eos || tok == s->turn_end || fw_rt_chat_is_stop(&s->chat, tok) ? NULL :
	       fw_tokenizer_token(s->tok, tok, nb);
}

/* Each generated token: its id, or its text up to a stop string or EOS. */
static enum fw_rt_action print_token(void *user, int32_t tok)
{
	struct gen *s = user;
	bool stop = is_stop_id(s, tok); /* ids: printed, as Hugging Face keeps it; text: not */
	if (stop && s->tok)
		return FW_RT_STOP;
	if (!s->tok) {
		printf("%s%d", s->printed++ ? "," : "", tok);
		if (stop)
			return FW_RT_STOP;
	} else {
		size_t nb;
		const char *b = token_text(s, tok, &nb);
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
	s->text.n = 0;
	s->printed = 0;
	if (s->s2s && s2s_gen_complete(s->s2s, prompt, n, print_token, s, err) != FW_OK)
		return err->status;
	if (!s->s2s && fits(s, n, err) != FW_OK)
		return err->status;
	for (int64_t i = 0; !s->s2s && i < n; i++)
		if (prompt[i] >= s->d.V)
			return fw_errorf(err, FW_ERR_INVALID, "%s: token %d is outside the "
					 "vocabulary (%d)", s->tok ? "prompt" : "--prompt-tokens",
					 prompt[i], s->d.V);
	s->opts.max_new = s->max_new;
	enum fw_status st = s->s2s ? FW_OK :
			    fw_rt_generate(&s->d, prompt, n, &s->opts, print_token, s, err);
	if (st != FW_OK)
		return st;
	if (s->tok)
		text_print(&s->text, s->text.n);
	printf("\n");
	fflush(stdout);
	return FW_OK;
}

/* --- generation_config.json ------------------------------------------------------------ */

/* The checkpoint's generation_config (fwrun import keeps the folder's), else
 * generation_config.json beside the checkpoint; *have false when neither. */
static enum fw_status genconfig_load(const char *ckpt, struct fw_rt_genconfig *g, bool *have,
				     char *where, size_t where_len, struct fw_err *err)
{
	char *text = NULL;
	size_t len = 0;
	struct fw_err e = { 0 };
	*have = false;
	if (fw_h5_read_attr(ckpt, GENCONFIG_ATTR, &text, &e) == FW_OK) {
		snprintf(where, where_len, "%s (its generation_config)", ckpt);
		len = strlen(text);
	} else {
		const char *slash = strrchr(ckpt, '/');
		snprintf(where, where_len, "%.*sgeneration_config.json",
			 slash ? (int)(slash - ckpt + 1) : 0, ckpt);
		if (access(where, F_OK) != 0)
			return FW_OK;
		char *t = fw_rt_read_file(where, &len, err);
		if (!t)
			return err->status;
		text = fw_strdup(t);
		free(t);
		if (!text)
			return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	}
	enum fw_status st = fw_rt_genconfig_parse(text, len, where, g, err);
	fw_free(text);
	*have = st == FW_OK;
	return st;
}

/* Hugging Face's generate on that file: do_sample false (or absent) is
 * greedy; sampling takes its temperature, top_k and top_p, else 1.0, 50 and
 * 1.0; max_new_tokens, else max_length less the prompt (n_prompt < 0: an
 * encoder-decoder, less the decoder's start token); eos_token_id stops.
 * Only for what the command line and --config leave out. */
static void genconfig_apply(struct gen *s, const struct fw_rt_genconfig *g,
			    const struct config *c, int64_t n_prompt, const char *where)
{
	char said[256] = "";
	size_t k = 0;
	if (!config_user_set(c, "max-new-tokens") &&
	    (g->max_new_tokens >= 0 || g->max_length >= 0)) {
		/* an encoder-decoder's max_length counts the decoder's ids, its
		 * start token included (Hugging Face's MaxLengthCriteria) */
		int64_t taken = n_prompt < 0 ? 1 : n_prompt;
		s->max_new = g->max_new_tokens >= 0 ? g->max_new_tokens :
			     g->max_length > taken ? g->max_length - taken : 0;
		k += (size_t)snprintf(said + k, sizeof(said) - k, " --max-new-tokens=%lld",
				      (long long)s->max_new);
	}
	if (!config_user_set(c, "temperature")) {
		s->opts.temperature = !g->do_sample ? 0 : g->has_temperature ? g->temperature : 1.0;
		k += (size_t)snprintf(said + k, sizeof(said) - k, " --temperature=%g",
				      s->opts.temperature);
	}
	if (g->do_sample && !config_user_set(c, "top-k")) {
		s->opts.top_k = g->has_top_k ? g->top_k : 50;
		k += (size_t)snprintf(said + k, sizeof(said) - k, " --top-k=%d", s->opts.top_k);
	}
	if (g->do_sample && !config_user_set(c, "top-p")) {
		s->opts.top_p = g->has_top_p ? g->top_p : 1.0;
		k += (size_t)snprintf(said + k, sizeof(said) - k, " --top-p=%g", s->opts.top_p);
	}
	if (g->has_penalty && !config_user_set(c, "repetition-penalty")) {
		s->opts.penalty = g->penalty;
		k += (size_t)snprintf(said + k, sizeof(said) - k, " --repetition-penalty=%g",
				      g->penalty);
	}
	memcpy(s->stop_ids, g->eos, sizeof(g->eos));
	s->n_stop_ids = g->n_eos;
	if (k < sizeof(said) && g->n_eos)
		snprintf(said + k, sizeof(said) - k, " and %d end-of-sequence id%s", g->n_eos,
			 g->n_eos > 1 ? "s" : "");
	fprintf(stderr, "fwrun: generate: from %s:%s\n", where, *said ? said : " nothing");
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

/* --- --prompts: several prompts decoded together ----------------------------------- */

struct prompt_list {
	int32_t **ids;
	int64_t *n;
	int *line;                        /* in the file */
	int count;
	int64_t longest;                  /* the most positions one needs (prompt + new) */
};

static void prompt_list_free(struct prompt_list *pl)
{
	for (int i = 0; i < pl->count; i++)
		free(pl->ids[i]);
	free(pl->ids);
	free(pl->n);
	free(pl->line);
	memset(pl, 0, sizeof(*pl));
}

/* One JSONL record's ids: "tokens" (ids), "prompt" (text) or, with --chat,
 * "messages" (an array); malloc'd into *ids. */
static enum fw_status record_ids(struct gen *s, json_t *rec, int32_t **ids, int64_t *n,
				 struct fw_err *err)
{
	json_t *toks = json_object_get(rec, "tokens"), *text = json_object_get(rec, "prompt");
	json_t *msgs = json_object_get(rec, "messages");
	if (!json_is_object(rec) || !!toks + !!text + !!msgs != 1)
		return fw_errorf(err, FW_ERR_INVALID, "expected an object with one of \"prompt\", "
				 "\"messages\" and \"tokens\"");
	if (toks) {
		size_t k = json_array_size(toks);
		if (!json_is_array(toks) || k == 0)
			return fw_errorf(err, FW_ERR_INVALID, "\"tokens\" must be a non-empty array "
					 "of ids");
		if (!(*ids = malloc(sizeof(**ids) * k)))
			return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
		for (size_t i = 0; i < k; i++) {
			json_t *v = json_array_get(toks, i);
			if (!json_is_integer(v) || json_integer_value(v) < 0 ||
			    json_integer_value(v) > INT32_MAX)
				return fw_errorf(err, FW_ERR_INVALID, "\"tokens\"[%zu] is not a token "
						 "id", i);
			(*ids)[i] = (int32_t)json_integer_value(v);
		}
		*n = (int64_t)k;
		return FW_OK;
	}
	if (!s->tok)
		return fw_errorf(err, FW_ERR_INVALID, "\"%s\" needs a tokenizer: pass --tokenizer or "
				 "use a checkpoint that stores one", text ? "prompt" : "messages");
	if (msgs && !s->chat_prompts)
		return fw_errorf(err, FW_ERR_INVALID, "\"messages\" needs --chat");
	if (text && !json_is_string(text))
		return fw_errorf(err, FW_ERR_INVALID, "\"prompt\" must be a string");
	if (msgs && !json_is_array(msgs))
		return fw_errorf(err, FW_ERR_INVALID, "\"messages\" must be an array");
	char *m = msgs ? json_dumps(msgs, 0) : NULL;
	struct fw_token_buf buf = { 0 };
	enum fw_status st = msgs && !m ? fw_errorf(err, FW_ERR_NOMEM, "out of memory") :
		encode(s, m ? m : json_string_value(text), m ? strlen(m) : json_string_length(text),
		       &buf, err);
	free(m);
	if (st == FW_OK && !(*ids = malloc(sizeof(**ids) * buf.n)))
		st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	if (st == FW_OK) {
		memcpy(*ids, buf.ids, sizeof(**ids) * buf.n);
		*n = (int64_t)buf.n;
	}
	fw_token_buf_free(&buf);
	return st;
}

/* --prompts=PATH: one record a non-empty line. */
static enum fw_status read_prompts(struct gen *s, const char *path, struct prompt_list *pl,
				   struct fw_err *err)
{
	size_t len;
	char *text = fw_rt_read_file(path, &len, err);
	if (!text)
		return fw_errorf(err, err->status, "--prompts: %s", err->msg);
	enum fw_status st = FW_OK;
	int line = 0, cap = 0;
	for (char *at = text, *end; st == FW_OK && at < text + len; at = end + 1) {
		end = memchr(at, '\n', (size_t)(text + len - at));
		if (!end)
			end = text + len;
		line++;
		if (strspn(at, " \t\r") >= (size_t)(end - at))
			continue;
		if (pl->count == cap) {
			cap = cap ? 2 * cap : 16;
			int32_t **ids = realloc(pl->ids, sizeof(*ids) * (size_t)cap);
			int64_t *n = ids ? realloc(pl->n, sizeof(*n) * (size_t)cap) : NULL;
			int *at_line = n ? realloc(pl->line, sizeof(*at_line) * (size_t)cap) : NULL;
			if (ids)
				pl->ids = ids;
			if (n)
				pl->n = n;
			if (!at_line) {
				st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
				break;
			}
			pl->line = at_line;
		}
		json_error_t je;
		json_t *rec = json_loadb(at, (size_t)(end - at), 0, &je);
		struct fw_err e = { 0 };
		pl->ids[pl->count] = NULL;
		pl->line[pl->count] = line;
		if (!rec)
			st = fw_errorf(err, FW_ERR_INVALID, "--prompts: %s:%d: %s", path, line, je.text);
		else if (record_ids(s, rec, &pl->ids[pl->count], &pl->n[pl->count], &e) != FW_OK)
			st = fw_errorf(err, e.status, "--prompts: %s:%d: %s", path, line, e.msg);
		else if (fits(s, pl->n[pl->count], &e) != FW_OK)
			st = fw_errorf(err, e.status, "--prompts: %s:%d: %s", path, line, e.msg);
		pl->count++;
		if (st == FW_OK && pl->n[pl->count - 1] + s->max_new > pl->longest)
			pl->longest = pl->n[pl->count - 1] + s->max_new;
		json_decref(rec);
	}
	free(text);
	if (st == FW_OK && pl->count == 0)
		st = fw_errorf(err, FW_ERR_INVALID, "--prompts: %s has no prompts", path);
	return st;
}

/* Each prompt's ids in the model's vocabulary (known once it is built). */
static enum fw_status prompts_in_vocab(const struct gen *s, const char *path,
				       const struct prompt_list *pl, struct fw_err *err)
{
	for (int i = 0; i < pl->count; i++)
		for (int64_t k = 0; k < pl->n[i]; k++)
			if (pl->ids[i][k] >= s->d.V)
				return fw_errorf(err, FW_ERR_INVALID, "--prompts: %s:%d: token %d is "
						 "outside the vocabulary (%d)", path, pl->line[i],
						 pl->ids[i][k], s->d.V);
	return FW_OK;
}

/* The JSON string of b[0..n), each byte that does not begin a well-formed
 * UTF-8 sequence as U+FFFD (a completion may end inside a character). */
static json_t *text_json(const char *b, size_t n)
{
	json_t *j = json_stringn(b, n);
	if (j)
		return j;
	struct bytes out = { 0 };
	for (size_t i = 0; i < n;) {
		size_t k = 1;
		for (; k <= 4 && i + k <= n; k++)
			if ((j = json_stringn(b + i, k)))
				break;
		if (j) {
			keep_bytes(&out, b + i, k);
			json_decref(j);
			j = NULL;
			i += k;
		} else {
			keep_bytes(&out, "\xef\xbf\xbd", 3);
			i++;
		}
	}
	j = json_stringn(out.p ? out.p : "", out.n);
	free(out.p);
	return j;
}

struct row_out {
	json_t *tokens, *logprobs;
	const char *finish;               /* "eos", "stop"; NULL: "length" */
	struct bytes text;
	struct text_out out;
	bool done;
};

struct rows {
	struct gen *s;
	struct row_out *row;
	int count, printed;               /* prompts; lines written */
	enum fw_status st;
	struct fw_err *err;
};

/* Prints the finished prompts that follow the last line written, in
 * order; with all, the rest too. */
static void print_rows(struct rows *b, bool all)
{
	for (; b->printed < b->count && (all || b->row[b->printed].done); b->printed++) {
		struct row_out *o = &b->row[b->printed];
		json_t *j = json_pack("{s:i, s:O, s:O, s:s}", "index", b->printed, "tokens",
				      o->tokens, "logprobs", o->logprobs, "finish",
				      o->finish ? o->finish : "length");
		if (j && b->s->tok) {
			text_print(&o->out, o->out.n);
			json_object_set_new(j, "text", text_json(o->text.p, o->text.n));
		}
		char *line = j ? json_dumps(j, JSON_PRESERVE_ORDER | JSON_COMPACT) : NULL;
		if (line)
			printf("%s\n", line);
		else if (b->st == FW_OK)
			b->st = fw_errorf(b->err, FW_ERR_NOMEM, "out of memory");
		free(line);
		json_decref(j);
		fflush(stdout);
	}
}

static enum fw_rt_action row_token(void *user, int r, int32_t tok, float logprob)
{
	struct rows *b = user;
	struct row_out *o = &b->row[r];
	enum fw_rt_action act = FW_RT_CONTINUE;
	json_array_append_new(o->tokens, json_integer(tok));
	json_array_append_new(o->logprobs, json_real(logprob));
	bool eos = is_stop_id(b->s, tok);
	size_t nb = 0;
	const char *bytes = b->s->tok && !eos ? token_text(b->s, tok, &nb) : NULL;
	if (eos || (b->s->tok && (!bytes || text_push(&o->out, bytes, nb)))) {
		o->finish = bytes ? "stop" : "eos";
		act = FW_RT_STOP;
	}
	o->done = act == FW_RT_STOP || (int64_t)json_array_size(o->tokens) >= b->s->max_new;
	print_rows(b, false);
	return act;
}

/* Decodes the prompts, d.rows at a time (a finished row takes the next
 * prompt); one JSON line each, in order, as soon as it and those before it
 * are done: {"index", "tokens", "logprobs", "finish" ("eos", "stop",
 * "length"), and with a tokenizer "text" (up to a stop string or EOS)}. */
static enum fw_status run_prompts(struct gen *s, const struct prompt_list *pl,
				  struct fw_err *err)
{
	int N = pl->count;
	struct row_out *row = calloc((size_t)N, sizeof(*row));
	struct fw_rt_gen_row *gr = calloc((size_t)N, sizeof(*gr));
	struct rows b = { .s = s, .row = row, .count = N, .err = err };
	for (int i = 0; row && i < N; i++) {
		row[i] = (struct row_out){ .tokens = json_array(), .logprobs = json_array() };
		row[i].out = (struct text_out){ .stops = s->text.stops, .kept = &row[i].text };
		if (!row[i].tokens || !row[i].logprobs)
			b.st = FW_ERR_NOMEM;
		gr[i] = (struct fw_rt_gen_row){ pl->ids[i], pl->n[i], 0 };
	}
	if (!row || !gr || b.st != FW_OK)
		b.st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	s->opts.max_new = s->max_new;
	if (b.st == FW_OK) {
		b.st = fw_rt_generate_rows(&s->d, gr, N, &s->opts, row_token, &b, err);
		if (b.st == FW_OK)
			print_rows(&b, true);
	}
	for (int i = 0; row && i < N; i++) {
		json_decref(row[i].tokens);
		json_decref(row[i].logprobs);
		free(row[i].text.p);
		free(row[i].out.buf);
	}
	free(row);
	free(gr);
	return b.st;
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
	struct s2s_gen s2s = { 0 };
	struct prompt_list pl = { 0 };

	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			printf("usage: fwrun generate --plugins=arch/X,attention/Y --load=CKPT\n"
			       "         (--prompt=TEXT | --prompt-file=PATH | "
			       "--prompt-tokens=1,2,3 | --interactive |\n"
			       "          --prompts=FILE.jsonl [--batch-size=N])\n"
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
			       "(auto: the tokenizer's own),\nanswered until its end of turn.\n"
			       "--prompts: one {\"prompt\": TEXT}, {\"messages\": [...]} (--chat) or "
			       "{\"tokens\": [IDS]} a line;\n--batch-size of them are decoded "
			       "together, each as if alone, and each gives one JSON line\n"
			       "{\"index\", \"tokens\", \"logprobs\", \"finish\": "
			       "\"eos\"|\"stop\"|\"length\", \"text\" (with a tokenizer)}.\n");
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
	const char *prompts = fw_opt_str(o, "prompts");
	bool interactive = fw_opt_bool(o, "interactive");
	int n_given = !!*text + !!*file + !!*token_list + !!*prompts;
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
			 "stdin; leave out --prompt, --prompt-file, --prompt-tokens and --prompts" :
			 n_given ? "give only one of --prompt, --prompt-file, --prompt-tokens and "
			 "--prompts" : "generate needs a prompt: --prompt=TEXT, --prompt-file=PATH, "
			 "--prompt-tokens=ID,ID,..., --prompts=FILE.jsonl or --interactive");
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
		if (!s.tok && *prompts && *fw_opt_str(o, "stop")) {
			rc = fail(FW_ERR_INVALID, "--stop needs a tokenizer, and %s stores none: pass "
				  "--tokenizer", path);
			goto out;
		}
		if (!s.tok && !*prompts) {
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
	if (!interactive && !*prompts && s.tok) {
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
	s.opts.temperature = fw_opt_float(o, "temperature");
	s.opts.top_p = fw_opt_float(o, "top-p");
	s.opts.top_k = (int)fw_opt_int(o, "top-k");
	s.opts.penalty = fw_opt_float(o, "repetition-penalty");
	struct fw_rt_genconfig gc;
	bool have_gc;
	char gc_where[4400];
	if (genconfig_load(path, &gc, &have_gc, gc_where, sizeof(gc_where), &err) != FW_OK) {
		rc = fail(err.status, "%s", err.msg);
		goto out;
	}
	s.n_pos = arch_positions(slots.arch->opts);
	set_threads((int)fw_opt_int(o, "threads"));
	for (int k = 1; k < FW_KIND_COUNT; k++)
		if (cfg.plugin[k] && fw_plugin_init(cfg.plugin[k], NULL, &err) != FW_OK) {
			rc = fail(err.status, "%s", err.msg);
			goto out;
		}
	bool encdec = seq2seq_arch(&slots);
	if (have_gc)
		genconfig_apply(&s, &gc, &cfg, encdec ? -1 : n_prompt, gc_where);
	if (*fw_opt_str(o, "eos-token-id") && eos_ids_parse(&s, fw_opt_str(o, "eos-token-id"),
							    &err) != FW_OK) {
		rc = fail(FW_ERR_INVALID, "%s", err.msg);
		goto out;
	}
	if (encdec) {     /* an encoder-decoder: seq2seq_gen.c */
		if (*prompts) {
			rc = fail(FW_ERR_UNSUPPORTED, "generate: --prompts is for decoder archs; give "
				  "%s one source (--prompt, --prompt-file, --prompt-tokens or "
				  "--interactive)", slots.arch->desc->name);
			goto out;
		}
		if (s.chat_prompts && !s.chat.jinja &&
		    !strcmp(fw_opt_str(o, "chat-template"), "auto")) {
			rc = fail(FW_ERR_UNSUPPORTED, "generate: --chat: the tokenizer has no chat "
				  "template (tokenizer_config.json chat_template), and %s takes a "
				  "plain source; leave out --chat or pass --chat-template",
				  slots.arch->desc->name);
			goto out;
		}
		/* --interactive: sources up to --encoder-seq-length (else --seq-length)
		 * positions, </s> included */
		int64_t enc_max = fw_opt_int(o, "encoder-seq-length");
		enc_max = enc_max > 0 ? enc_max : fw_opt_int(o, "seq-length");
		int64_t max_source = !interactive ? n_prompt : s.tok && enc_max > 1 ? enc_max - 1 :
				     enc_max;
		/* greedy unless sampling was asked for, as Hugging Face's generate */
		if (!have_gc && !config_user_set(&cfg, "temperature"))
			s.opts.temperature = 0;
		if (fw_opt_int(o, "num-beams") > 1 && s.opts.temperature > 0) {
			rc = fail(FW_ERR_INVALID, "generate: --num-beams is beam search; sampling "
				  "(--temperature > 0) takes one beam");
			goto out;
		}
		if (s2s_gen_open(&s2s, &cfg, &slots, path, s.tok, max_source, s.max_new,
				 &err) != FW_OK) {
			rc = fail(err.status, "%s", err.msg);
			goto out;
		}
		s.s2s = &s2s;
		goto ready;
	}
	if (interactive && s.n_pos <= 0) {
		rc = fail(FW_ERR_INVALID, "--interactive sizes its cache by the arch's n-positions, "
			 "and %s has none", slots.arch->desc->name);
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
	/* --prompts: the longest prompt's, for every row. */
	s.d.max_len = interactive ? s.n_pos : n_prompt + s.max_new;
	if (*prompts) {
		s.d.max_len = s.n_pos > 0 ? s.n_pos : INT64_MAX / 4;  /* what fits checks */
		if (read_prompts(&s, prompts, &pl, &err) != FW_OK) {
			rc = fail(err.status, "%s", err.msg);
			goto out;
		}
		s.d.max_len = pl.longest;
	}
	if (!interactive && !*prompts && fits(&s, n_prompt, &err) != FW_OK) {
		rc = fail(FW_ERR_INVALID, "%s", err.msg);
		goto out;
	}
	int rows = *prompts ? (int)(fw_opt_int(o, "batch-size") < pl.count ?
				    fw_opt_int(o, "batch-size") : pl.count) : 1;
	/* the peft plugin checks its options and marks its own tensors (freeze) */
	if (fw_rt_decoder_open_as(&s.d, &slots, rows, s.d.max_len,
				  (uint64_t)fw_opt_int(o, "seed"), precision, &err) != FW_OK ||
	    (*prompts && prompts_in_vocab(&s, prompts, &pl, &err) != FW_OK)) {
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
ready:
	config_report(&cfg);                                  /* once generation is possible */
	warn_unused_options(&cfg, "generate", argc, argv);
	int model_vocab = s.s2s ? s2s.d.V : s.d.V;
	s.opts.n_sample = model_vocab;
	for (int i = 0; *fw_opt_str(o, "eos-token-id") && i < s.n_stop_ids; i++)
		if (s.stop_ids[i] >= model_vocab) {
			rc = fail(FW_ERR_INVALID, "--eos-token-id: id %d is outside the vocabulary "
				  "(%d)", s.stop_ids[i], model_vocab);
			goto out;
		}
	if (s.tok) {            /* a padded vocabulary: ids past the tokenizer's never come */
		int nv = fw_tokenizer_vocab_size(s.tok);
		if (nv > model_vocab) {
			rc = fail(FW_ERR_INVALID, "the tokenizer has %d tokens, more than the model's "
				 "vocabulary (%d)", nv, model_vocab);
			goto out;
		}
		s.opts.n_sample = nv;
	}
	s.opts.key = fw_hash_str("generate", (uint64_t)fw_opt_int(o, "seed"));
	s.text.stops = &stops;
	stop_ids(&s);
	if (s.s2s) {            /* </s> ends the target; the decoder's sampler */
		s.eos = s2s.o.eos;
		s2s.o.temperature = s.opts.temperature;
		s2s.o.top_k = s.opts.top_k;
		s2s.o.top_p = s.opts.top_p;
		s2s.o.penalty = s.opts.penalty;
		s2s.o.n_sample = s.opts.n_sample;
		s2s.o.key = s.opts.key;
	}
	if (*prompts) {
		rc = run_prompts(&s, &pl, &err) == FW_OK ? EXIT_OK :
		     fail(err.status, "%s", err.msg);
	} else if (interactive) {
		rc = interact(&s) ? EXIT_RUNTIME : EXIT_OK;
	} else if (complete(&s, prompt, n_prompt, &err) != FW_OK) {
		rc = fail(err.status, "%s", err.msg);
	} else {
		rc = EXIT_OK;
	}
	if (rc == EXIT_OK && !s.s2s) {
		enum fw_dtype dt;
		size_t kv = fw_rt_decoder_cache_bytes(&s.d, &dt);
		fprintf(stderr, "fwrun: KV cache %zu bytes (%.1f MiB, %s, %d layers, %d rows)\n",
			kv, (double)kv / 1048576.0, fw_dtype_name(dt), s.d.n_layers, s.d.rows);
	}
out:
	s2s_gen_close(&s2s);
	fw_rt_decoder_close(&s.d);
	free(s.text.buf);
	fw_rt_chat_close(&s.chat);
	fw_tokenizer_free(s.tok);
	free(params);
	if (prompt != ids.ids)
		free(prompt);
	fw_token_buf_free(&ids);
	prompt_list_free(&pl);
	free(file_text);
	stops_free(&stops);
	config_free(&cfg);
	return rc;
}
