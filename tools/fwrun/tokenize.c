/* tokenize.c - fwrun tokenize: text or JSONL files to llm.c token shards.
 *
 * Each document becomes the EOS token followed by its tokens (llm.c's
 * convention: the EOS token opens every document, so it also separates
 * them). Documents go, in input order, either to the training stream or,
 * for --valid-fraction=F, evenly spread, to the validation stream: document
 * i (from 0) is a validation document when floor((i+1)F) > floor(iF), which
 * puts exactly floor(nF) of n documents there. A stream is cut into shards
 * of --shard-tokens tokens, PREFIX_train_000000.bin, ..., PREFIX_val_000000.bin.
 *
 * Shards are written as temporary files and renamed only once every input
 * has been read and every shard is complete and synced: a failed run leaves
 * no partial shard under a final name. Vocabularies of up to 65536 tokens
 * give llm.c's version 1 (uint16 tokens), larger ones version 2 (uint32).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "fw/tokenizer.h"
#include "fwrun.h"

#define SHARD_MAGIC 20240520

static const char *const tokenizer_names[] = { "byte", "gpt2", NULL };
static const char *const format_names[] = { "auto", "text", "jsonl", NULL };
static const char *const split_names[] = { "file", "paragraph", "line", NULL };

static const struct fw_option_def tok_defs[] = {
	{ "tokenizer", FW_OPT_CHOICE, "gpt2", 0, -1, tokenizer_names,
	  "byte (256 bytes + <|endoftext|>) or gpt2 (byte-level BPE)" },
	{ "vocab-file", FW_OPT_STRING, "", 0, -1, NULL,
	  "gpt2: vocab.json (Hugging Face) or encoder.json (OpenAI)" },
	{ "merge-file", FW_OPT_STRING, "", 0, -1, NULL,
	  "gpt2: merges.txt (Hugging Face) or vocab.bpe (OpenAI)" },
	{ "out", FW_OPT_STRING, "", 0, -1, NULL,
	  "output prefix: PREFIX_train_NNNNNN.bin and PREFIX_val_NNNNNN.bin" },
	{ "format", FW_OPT_CHOICE, "auto", 0, -1, format_names,
	  "input format (auto: .jsonl files are JSONL, others text)" },
	{ "text-field", FW_OPT_STRING, "text", 0, -1, NULL, "JSONL: the field holding the text" },
	{ "split", FW_OPT_CHOICE, "file", 0, -1, split_names,
	  "text files: one document per file, per blank-line-separated paragraph, or per line" },
	{ "valid-fraction", FW_OPT_FLOAT, "0", 0, 1, NULL,
	  "fraction of documents for the validation shards" },
	{ "shard-tokens", FW_OPT_INT, "100000000", 1024, 2147483647.0, NULL, "tokens per shard" },
	{ "allow-special", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "turn special-token text in the input (<|endoftext|>) into the special token" },
	{ "print-ids", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "print each document's token ids (no EOS) on stdout, one line each; no shards" },
	{ "offsets", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "with --print-ids: each id as ID@START:END, the token's byte offsets in the document "
	  "(Hugging Face's offsets in bytes; (0, 0) for tokens the post-processor adds)" },
	{ "progress", FW_OPT_BOOL, "true", 0, -1, NULL, "progress bar when stderr is a terminal" },
};
#define N_DEFS ((int)(sizeof(tok_defs) / sizeof(tok_defs[0])))

/* One output stream (train or val): its shards, the current one open. */
struct stream {
	const char *name;
	int shard;                       /* number of the open shard */
	FILE *f;
	char *tmp;                       /* the open shard's temporary path */
	int64_t n;                       /* tokens in the open shard */
	int64_t tokens, docs;
};

struct job {
	struct fw_tokenizer *tok;
	const char *out, *field;
	int width;                       /* bytes per token: 2 or 4 */
	int64_t shard_tokens;
	double valid;
	bool allow_special, print, offsets, bar;
	struct stream st[2];             /* 0 train, 1 val */
	char **tmps, **finals;           /* completed shards, renamed at the end */
	int n_done, cap_done;
	int64_t doc;                     /* documents seen */
	uint64_t bytes_done, bytes_total;
	double t0, last_bar;
	struct fw_token_buf ids;
	unsigned char *wbuf;
	size_t wcap;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void human(double b, char *buf, size_t n)
{
	if (b >= 1e9)
		snprintf(buf, n, "%.2f GB", b / 1e9);
	else if (b >= 1e6)
		snprintf(buf, n, "%.1f MB", b / 1e6);
	else
		snprintf(buf, n, "%.0f kB", b / 1e3);
}

static void progress(struct job *j, bool final)
{
	if (!j->bar)
		return;
	double t = now_s();
	if (!final && t - j->last_bar < 0.2)
		return;
	j->last_bar = t;
	double el = t - j->t0, frac = j->bytes_total ? (double)j->bytes_done / j->bytes_total : 1;
	double rate = el > 0 ? j->bytes_done / el : 0;
	char done[32], total[32];
	human((double)j->bytes_done, done, sizeof(done));
	human((double)j->bytes_total, total, sizeof(total));
	int w = 30, fill = (int)(frac * w + 0.5);
	char bar[64];
	for (int i = 0; i < w; i++)
		bar[i] = i < fill ? '#' : '.';
	bar[w] = '\0';
	fprintf(stderr, "\r\033[Ktokenize [%s] %3.0f%%  %s/%s  %.1f MB/s  %lld docs  %lld tokens",
		bar, 100 * frac, done, total, rate / 1e6, (long long)j->doc,
		(long long)(j->st[0].tokens + j->st[1].tokens));
	if (!final && rate > 0 && frac < 1)
		fprintf(stderr, "  ETA %.0fs", (double)(j->bytes_total - j->bytes_done) / rate);
	if (final)
		fputc('\n', stderr);
	fflush(stderr);
}

/* --- shards ------------------------------------------------------------------------ */

static char *shard_path(const struct job *j, const struct stream *s)
{
	char *p = NULL;
	if (asprintf(&p, "%s_%s_%06d.bin", j->out, s->name, s->shard) < 0)
		return NULL;
	return p;
}

static int shard_open(struct job *j, struct stream *s)
{
	char *final = shard_path(j, s);
	if (!final || asprintf(&s->tmp, "%s.tmp.%d", final, (int)getpid()) < 0) {
		free(final);
		s->tmp = NULL;
		return fail(FW_ERR_NOMEM, "tokenize: out of memory");
	}
	free(final);
	s->f = fopen(s->tmp, "wb");
	if (!s->f) {
		int rc = fail(FW_ERR_IO, "%s: %s", s->tmp, strerror(errno));
		free(s->tmp);
		s->tmp = NULL;
		return rc;
	}
	int32_t hdr[256] = { 0 };
	s->n = 0;
	if (fwrite(hdr, sizeof(hdr), 1, s->f) != 1)
		return fail(FW_ERR_IO, "%s: %s", s->tmp, strerror(errno));
	return EXIT_OK;
}

/* Writes the header, syncs and closes the open shard; queues its rename. */
static int shard_close(struct job *j, struct stream *s)
{
	int32_t hdr[256] = { SHARD_MAGIC, j->width == 2 ? 1 : 2, (int32_t)s->n };
	int32_t v = fw_tokenizer_vocab_size(j->tok);
	uint64_t fp = fw_rt_tokenizer_fingerprint(j->tok, v);
	hdr[3] = FW_SHARD_TOK_MARK;             /* which tokenizer made the ids */
	hdr[4] = v;
	hdr[5] = (int32_t)(uint32_t)fp;
	hdr[6] = (int32_t)(uint32_t)(fp >> 32);
	FILE *f = s->f;
	s->f = NULL;
	bool ok = fseek(f, 0, SEEK_SET) == 0 && fwrite(hdr, sizeof(hdr), 1, f) == 1 &&
		  fflush(f) == 0 && fsync(fileno(f)) == 0;
	int e = errno;
	ok = (fclose(f) == 0) && ok;
	if (!ok)
		return fail(FW_ERR_IO, "%s: %s", s->tmp, strerror(e ? e : EIO));
	if (j->n_done == j->cap_done) {
		int nc = j->cap_done ? 2 * j->cap_done : 8;
		char **a = realloc(j->tmps, sizeof(char *) * (size_t)nc);
		if (a)
			j->tmps = a;
		char **b = a ? realloc(j->finals, sizeof(char *) * (size_t)nc) : NULL;
		if (b)
			j->finals = b;
		if (!a || !b)
			return fail(FW_ERR_NOMEM, "tokenize: out of memory");
		j->cap_done = nc;
	}
	char *final = shard_path(j, s);
	if (!final)
		return fail(FW_ERR_NOMEM, "tokenize: out of memory");
	j->tmps[j->n_done] = s->tmp;
	j->finals[j->n_done++] = final;
	s->tmp = NULL;
	s->shard++;
	return EXIT_OK;
}

static int stream_write(struct job *j, struct stream *s, const int32_t *ids, size_t n)
{
	int rc;
	while (n > 0) {
		if (!s->f && (rc = shard_open(j, s)) != EXIT_OK)
			return rc;
		size_t k = (size_t)(j->shard_tokens - s->n) < n ? (size_t)(j->shard_tokens - s->n) : n;
		size_t need = k * (size_t)j->width;
		if (need > j->wcap) {
			free(j->wbuf);
			j->wbuf = malloc(need);
			j->wcap = j->wbuf ? need : 0;
			if (!j->wbuf)
				return fail(FW_ERR_NOMEM, "tokenize: out of memory");
		}
		unsigned char *w = j->wbuf;
		for (size_t i = 0; i < k; i++) {           /* little-endian */
			uint32_t v = (uint32_t)ids[i];
			*w++ = (unsigned char)v;
			*w++ = (unsigned char)(v >> 8);
			if (j->width == 4) {
				*w++ = (unsigned char)(v >> 16);
				*w++ = (unsigned char)(v >> 24);
			}
		}
		if (fwrite(j->wbuf, 1, need, s->f) != need)
			return fail(FW_ERR_IO, "%s: %s", s->tmp, strerror(errno));
		s->n += (int64_t)k;
		s->tokens += (int64_t)k;
		ids += k;
		n -= k;
		if (s->n == j->shard_tokens && (rc = shard_close(j, s)) != EXIT_OK)
			return rc;
	}
	return EXIT_OK;
}

/* --- documents ---------------------------------------------------------------------- */

static int document(struct job *j, const char *text, size_t len, const char *where)
{
	struct fw_err err = { 0 };
	j->ids.n = 0;
	if (!j->print) {
		if (!j->ids.cap && !(j->ids.ids = fw_malloc(64 * sizeof(int32_t))))
			return fail(FW_ERR_NOMEM, "tokenize: out of memory");
		j->ids.cap = j->ids.cap ? j->ids.cap : 64;
		j->ids.ids[j->ids.n++] = fw_tokenizer_eos(j->tok);
	}
	if (j->offsets) {
		struct fw_encoding e = { 0 };
		const struct fw_encode_options eo = { .flags = FW_TOKENIZE_OFFSETS |
			(j->allow_special ? FW_TOKENIZE_SPLIT_SPECIAL | FW_TOKENIZE_ADD_SPECIAL : 0) };
		if (fw_tokenizer_encode_pair(j->tok, text, len, NULL, 0, &eo, &e, &err) != FW_OK)
			return fail(err.status, "%s: %s", where, err.msg);
		j->doc++;
		for (size_t k = 0; k < e.n; k++)
			printf(k ? " %d@%zu:%zu" : "%d@%zu:%zu", e.ids[k], e.offsets[k].start,
			       e.offsets[k].end);
		putchar('\n');
		fw_encoding_free(&e);
		return ferror(stdout) ? fail(FW_ERR_IO, "stdout: write error") : EXIT_OK;
	}
	if (fw_tokenizer_encode(j->tok, text, len, j->allow_special, &j->ids, &err) != FW_OK)
		return fail(err.status, "%s: %s", where, err.msg);
	int64_t i = j->doc++;
	if (j->print) {
		for (size_t k = 0; k < j->ids.n; k++)
			printf(k ? " %d" : "%d", j->ids.ids[k]);
		putchar('\n');
		return ferror(stdout) ? fail(FW_ERR_IO, "stdout: write error") : EXIT_OK;
	}
	bool val = floor((double)(i + 1) * j->valid) > floor((double)i * j->valid);
	struct stream *s = &j->st[val];
	s->docs++;
	return stream_write(j, s, j->ids.ids, j->ids.n);
}

static int read_text(struct job *j, const char *path, int split)
{
	struct fw_err zerr = { 0 };
	if (fw_rt_refuse_compressed(path, &zerr) != FW_OK)
		return fail(zerr.status, "%s", zerr.msg);
	FILE *f = fopen(path, "rb");
	if (!f)
		return fail(FW_ERR_IO, "%s: %s", path, strerror(errno));
	char *buf = NULL;
	size_t cap = 0, len = 0;
	int rc = EXIT_OK;
	for (;;) {
		if (len + 65536 > cap) {
			size_t nc = cap ? 2 * cap : 1 << 20;
			char *nb = realloc(buf, nc);
			if (!nb) {
				rc = fail(FW_ERR_NOMEM, "%s: out of memory", path);
				break;
			}
			buf = nb;
			cap = nc;
		}
		size_t r = fread(buf + len, 1, cap - len, f);
		len += r;
		if (r == 0) {
			if (ferror(f))
				rc = fail(FW_ERR_IO, "%s: %s", path, strerror(errno));
			break;
		}
	}
	fclose(f);
	if (rc != EXIT_OK) {
		free(buf);
		return rc;
	}
	if (split == 0) {                                  /* file */
		if (len)
			rc = document(j, buf, len, path);
		j->bytes_done += len;
		progress(j, false);
	}
	for (size_t p = 0; split && p < len && rc == EXIT_OK;) {
		size_t e = p;
		if (split == 2) {                              /* line */
			const char *nl = memchr(buf + p, '\n', len - p);
			e = nl ? (size_t)(nl - buf) : len;
		} else {                                       /* paragraph: up to "\n\n" */
			for (;;) {
				const char *nl = memchr(buf + e, '\n', len - e);
				if (!nl) {
					e = len;
					break;
				}
				e = (size_t)(nl - buf);
				if (e + 1 < len && buf[e + 1] == '\n')
					break;
				e++;
			}
		}
		if (e > p)
			rc = document(j, buf + p, e - p, path);
		while (e < len && buf[e] == '\n')
			e++;
		j->bytes_done += e - p;
		p = e;
		progress(j, false);
	}
	free(buf);
	return rc;
}

static int read_jsonl(struct job *j, const char *path)
{
	struct fw_err zerr = { 0 };
	if (fw_rt_refuse_compressed(path, &zerr) != FW_OK)
		return fail(zerr.status, "%s", zerr.msg);
	FILE *f = fopen(path, "rb");
	if (!f)
		return fail(FW_ERR_IO, "%s: %s", path, strerror(errno));
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	long lineno = 0;
	int rc = EXIT_OK;
	while (rc == EXIT_OK && (n = getline(&line, &cap, f)) >= 0) {
		lineno++;
		j->bytes_done += (uint64_t)n;
		size_t k = 0;
		while (k < (size_t)n && strchr(" \t\r\n", line[k]))
			k++;
		if (k == (size_t)n)
			continue;
		json_error_t je;
		json_t *o = json_loadb(line, (size_t)n, JSON_ALLOW_NUL, &je);
		json_t *v = json_is_object(o) ? json_object_get(o, j->field) : NULL;
		char where[4200];
		snprintf(where, sizeof(where), "%s:%ld", path, lineno);
		if (!o)
			rc = fail(FW_ERR_FORMAT, "%s: invalid JSON: %s", where, je.text);
		else if (!json_is_object(o))
			rc = fail(FW_ERR_FORMAT, "%s: not a JSON object", where);
		else if (!json_is_string(v))
			rc = fail(FW_ERR_FORMAT, "%s: no string field '%s' (see --text-field)", where,
				 j->field);
		else
			rc = document(j, json_string_value(v), json_string_length(v), where);
		json_decref(o);
		progress(j, false);
	}
	if (rc == EXIT_OK && ferror(f))
		rc = fail(FW_ERR_IO, "%s: %s", path, strerror(errno));
	free(line);
	fclose(f);
	return rc;
}

/* --- the command ------------------------------------------------------------------------ */

static void usage(FILE *f)
{
	fprintf(f, "usage: fwrun tokenize [--tokenizer=byte|gpt2] [--vocab-file=vocab.json|encoder.json "
		"--merge-file=merges.txt|vocab.bpe]\n"
		"                      --out=PREFIX [options] FILE...\n"
		"Tokenizes text or JSONL files into llm.c token shards for fwrun train.\n"
		"Every document starts with the EOS token (<|endoftext|>). Shards hold uint16\n"
		"tokens (header version 1), or uint32 (version 2) for vocabularies over 65536.\n\n"
		"options:\n");
	for (int i = 0; i < N_DEFS; i++) {
		char name[64];
		snprintf(name, sizeof(name), "--%s%s", tok_defs[i].name,
			 tok_defs[i].type == FW_OPT_BOOL ? "" : "=X");
		fprintf(f, "  %-20s %s (default %s)\n", name, tok_defs[i].help,
			*tok_defs[i].def ? tok_defs[i].def : "none");
	}
}

static bool is_bool_opt(const char *name)
{
	for (int i = 0; i < N_DEFS; i++)
		if (!strcmp(tok_defs[i].name, name))
			return tok_defs[i].type == FW_OPT_BOOL;
	return false;
}

static int parse(struct fw_options *o, int argc, char **argv, char **files, int *n_files)
{
	struct fw_err err = { 0 };
	*n_files = 0;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		if (strncmp(a, "--", 2) || !a[2]) {
			files[(*n_files)++] = argv[i];
			continue;
		}
		char name[128];
		const char *eq = strchr(a, '='), *value;
		size_t nl = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
		if (nl == 0 || nl >= sizeof(name))
			return fail(FW_ERR_INVALID, "tokenize: malformed option '%s'", a);
		memcpy(name, a + 2, nl);
		name[nl] = '\0';
		if (eq) {
			value = eq + 1;
		} else if (!strncmp(name, "no-", 3) && is_bool_opt(name + 3)) {
			memmove(name, name + 3, strlen(name + 3) + 1);
			value = "false";
		} else if (is_bool_opt(name)) {
			value = "true";
		} else if (i + 1 < argc) {
			value = argv[++i];
		} else {
			value = NULL;
		}
		enum fw_status s = value ? fw_options_set(o, name, value, &err) :
			fw_options_set(o, name, "", &err);
		if (s != FW_OK)
			return fail(FW_ERR_INVALID, "%s", err.msg);   /* names "tokenize" */
		if (!value)
			return fail(FW_ERR_INVALID, "tokenize: option '--%s' needs a value", name);
	}
	if (fw_options_resolve(o, &err) != FW_OK)
		return fail(FW_ERR_INVALID, "%s", err.msg);
	return EXIT_OK;
}

/* The same options, rules and messages as fwrun train's (tok.c). */
static int load_tokenizer(const struct fw_options *o, struct fw_tokenizer **tok)
{
	struct fw_err err = { 0 };
	*tok = run_tokenizer(o, NULL, &err);
	if (!*tok)
		return fail(err.status, "tokenize: %s",
			   err.msg);
	return EXIT_OK;
}

static bool has_suffix(const char *s, const char *suf)
{
	size_t n = strlen(s), m = strlen(suf);
	return n >= m && !strcmp(s + n - m, suf);
}

int cmd_tokenize(int argc, char **argv)
{
	for (int i = 0; i < argc; i++)
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return EXIT_OK;
		}
	struct fw_options *o = fw_options_new(tok_defs, N_DEFS, "tokenize");
	char **files = malloc(sizeof(char *) * (size_t)(argc + 1));
	struct job j = { .st = { { .name = "train" }, { .name = "val" } } };
	int n_files = 0, rc;
	if (!o || !files) {
		rc = fail(FW_ERR_NOMEM, "tokenize: out of memory");
		goto out;
	}
	if ((rc = parse(o, argc, argv, files, &n_files)) != EXIT_OK)
		goto out;
	j.print = fw_opt_bool(o, "print-ids");
	j.offsets = fw_opt_bool(o, "offsets");
	if (j.offsets && !j.print) {
		rc = fail(FW_ERR_INVALID, "tokenize: --offsets needs --print-ids");
		goto out;
	}
	j.out = fw_opt_str(o, "out");
	if (n_files == 0 || (!*j.out && !j.print)) {
		rc = fail(FW_ERR_INVALID, "tokenize: needs --out=PREFIX and at least one input file (see "
			 "fwrun tokenize --help)");
		goto out;
	}
	if ((rc = load_tokenizer(o, &j.tok)) != EXIT_OK)
		goto out;
	if (!j.print && fw_tokenizer_eos(j.tok) < 0) {
		rc = fail(FW_ERR_FORMAT, "tokenize: the vocabulary has no <|endoftext|> token to "
			 "separate documents");
		goto out;
	}
	j.width = fw_tokenizer_vocab_size(j.tok) <= 65536 ? 2 : 4;
	j.field = fw_opt_str(o, "text-field");
	j.shard_tokens = fw_opt_int(o, "shard-tokens");
	j.valid = fw_opt_float(o, "valid-fraction");
	j.allow_special = fw_opt_bool(o, "allow-special");
	j.bar = fw_opt_bool(o, "progress") && isatty(fileno(stderr));
	const char *fmt = fw_opt_str(o, "format"), *split = fw_opt_str(o, "split");
	int split_i = !strcmp(split, "file") ? 0 : !strcmp(split, "paragraph") ? 1 : 2;
	for (int i = 0; i < n_files; i++) {
		struct stat st;
		if (stat(files[i], &st) != 0) {
			rc = fail(FW_ERR_IO, "%s: %s", files[i], strerror(errno));
			goto out;
		}
		j.bytes_total += (uint64_t)st.st_size;
	}
	j.t0 = now_s();
	for (int i = 0; i < n_files && rc == EXIT_OK; i++) {
		bool jsonl = !strcmp(fmt, "jsonl") ||
			     (!strcmp(fmt, "auto") && has_suffix(files[i], ".jsonl"));
		rc = jsonl ? read_jsonl(&j, files[i]) : read_text(&j, files[i], split_i);
	}
	if (rc != EXIT_OK)
		goto out;
	if (j.print) {
		rc = fflush(stdout) == 0 ? EXIT_OK : fail(FW_ERR_IO, "stdout: write error");
		goto out;
	}
	if (j.st[0].tokens + j.st[1].tokens == 0) {
		rc = fail(FW_ERR_FORMAT, "tokenize: the input holds no documents");
		goto out;
	}
	for (int k = 0; k < 2 && rc == EXIT_OK; k++)
		if (j.st[k].f)
			rc = shard_close(&j, &j.st[k]);
	for (int i = 0; i < j.n_done && rc == EXIT_OK; i++) {
		struct fw_err cerr = { 0 };
		if (fw_file_commit(j.tmps[i], j.finals[i], &cerr) != FW_OK) {
			rc = fail(cerr.status, "%s", cerr.msg);
			break;
		}
		free(j.tmps[i]);
		j.tmps[i] = NULL;
	}
	if (rc != EXIT_OK)
		goto out;
	progress(&j, true);
	double el = now_s() - j.t0;
	fprintf(stderr, "fwrun: tokenized %lld documents, %.1f MB in %.1fs (%.1f MB/s) with %s "
		"(vocabulary %d): train %lld tokens in %d shards, val %lld tokens in %d shards, "
		"%s_*.bin\n", (long long)j.doc, j.bytes_done / 1e6, el,
		el > 0 ? j.bytes_done / 1e6 / el : 0.0, fw_tokenizer_name(j.tok),
		fw_tokenizer_vocab_size(j.tok), (long long)j.st[0].tokens, j.st[0].shard,
		(long long)j.st[1].tokens, j.st[1].shard, j.out);
out:
	if (j.bar && rc != EXIT_OK)
		fputc('\n', stderr);
	for (int k = 0; k < 2; k++) {
		if (j.st[k].f)
			fclose(j.st[k].f);
		if (j.st[k].tmp)
			unlink(j.st[k].tmp);
		free(j.st[k].tmp);
	}
	for (int i = 0; i < j.n_done; i++) {
		if (j.tmps[i])
			unlink(j.tmps[i]);
		free(j.tmps[i]);
		free(j.finals[i]);
	}
	free(j.tmps);
	free(j.finals);
	free(j.wbuf);
	fw_token_buf_free(&j.ids);
	fw_tokenizer_free(j.tok);
	fw_options_free(o);
	free(files);
	return rc;
}
